//! The house's clocks, in one place.
//!
//! Room: the foundation; it imports nothing of ours. Wall time (Unix
//! seconds and milliseconds) is for records, reports, registrations and
//! nonces; deadlines are monotonic: [`std::time::Instant`]s, or for the
//! desk, which counts in milliseconds, [`steady_ms`]; [`wall_of`] turns a
//! steady time into wall time where it is written down. [`sleep_until`]
//! is how a task waits for a deadline (or for nothing).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Unix milliseconds now (records and reports).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch (the registrar's and nonces' clock).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// When the process first asked for steady time: that instant, and the
/// wall clock then.
fn steady_origin() -> &'static (Instant, u64) {
    static ORIGIN: OnceLock<(Instant, u64)> = OnceLock::new();
    ORIGIN.get_or_init(|| (Instant::now(), now_ms()))
}

/// Steady milliseconds: Unix milliseconds as the wall clock read when the
/// process started, moved on by the monotonic clock since. Deadlines kept
/// in it (the desk's wrap-up ends, max waits, ring times) never move when
/// the wall clock is stepped (NTP, an operator's `date`).
pub fn steady_ms() -> u64 {
    let (at, wall) = steady_origin();
    wall + at.elapsed().as_millis() as u64
}

/// The wall time (Unix ms) of `steady`, a time on [`steady_ms`]'s clock, as
/// the wall clock reads now: for what is written down or shown.
pub fn wall_of(steady: u64) -> u64 {
    let (wall, now) = (now_ms(), steady_ms());
    if steady <= now {
        wall.saturating_sub(now - steady)
    } else {
        wall.saturating_add(steady - now)
    }
}

/// Sleeps until `deadline`, or forever without one.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clocks_agree() {
        let (ms, s) = (now_ms(), now_unix());
        assert!(
            ms / 1000 >= s.saturating_sub(1) && ms / 1000 <= s + 1,
            "{ms} ms vs {s} s"
        );
        assert!(s > 1_700_000_000, "the clock reads a plausible date: {s}");
    }

    #[test]
    fn steady_time_reads_as_wall_time_and_only_moves_on() {
        let (a, b) = (steady_ms(), steady_ms());
        assert!(b >= a);
        // On a machine whose clock is not stepped during the test, the two
        // read the same to within a second.
        let wall = now_ms();
        assert!(a.abs_diff(wall) < 1000, "steady {a} vs wall {wall}");
        assert!(wall_of(a).abs_diff(wall) < 1000);
        // A time 5 s ahead is 5 s ahead on the wall too.
        let ahead = wall_of(b + 5000);
        assert!((4000..6000).contains(&ahead.saturating_sub(now_ms())));
    }
}

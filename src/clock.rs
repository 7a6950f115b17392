//! The house's clocks, in one place.
//!
//! Room: the foundation; it imports nothing of ours. Wall time (Unix
//! seconds and milliseconds) is for records, reports, registrations and
//! nonces; deadlines are monotonic [`std::time::Instant`]s, and
//! [`sleep_until`] is how a task waits for one (or for nothing).

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
}

//! The service manager's intercom: systemd's notify protocol (sd_notify(3)).
//!
//! Room: the porter's lodge by the front door. It tells the manager that
//! named it in `$NOTIFY_SOCKET` when the server is ready (SIP and the API
//! listening), when it starts to drain, and, while `$WATCHDOG_USEC` asks
//! for it, that the house is alive: a `WATCHDOG=1` only when the media
//! engine's pacing clock and the async runtime both moved since the last
//! one, so a wedged server is restarted. It touches nothing but that one
//! datagram socket; without `$NOTIFY_SOCKET` every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

/// Where the manager listens, if it asked to be told.
fn socket_address() -> Option<std::os::unix::net::SocketAddr> {
    let name = std::env::var_os("NOTIFY_SOCKET")?;
    let name = name.to_str()?;
    if let Some(abstract_name) = name.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).ok()
    } else if name.starts_with('/') {
        std::os::unix::net::SocketAddr::from_pathname(name).ok()
    } else {
        None
    }
}

/// Sends `state` (newline-separated `KEY=VALUE` lines); whether it went.
pub fn notify(state: &str) -> bool {
    let Some(addr) = socket_address() else {
        return false;
    };
    let sent = UnixDatagram::unbound().and_then(|s| s.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = &sent {
        tracing::warn!(error = %e, "could not notify the service manager");
    }
    sent.is_ok()
}

/// Ready: SIP (and the API, when configured) are listening.
pub fn ready(status: &str) {
    notify(&format!(
        "READY=1\nSTATUS={status}\nMAINPID={}",
        std::process::id()
    ));
}

/// Draining: new calls are refused, calls in progress may finish.
pub fn stopping(status: &str) {
    notify(&format!("STOPPING=1\nSTATUS={status}"));
}

/// The watchdog period the manager asked for (`$WATCHDOG_USEC`, for this
/// process when `$WATCHDOG_PID` names one).
pub fn watchdog_period() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str()?.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Whether a counter moved since it was last looked at (sans-IO: the
/// watchdog task feeds it the engine's pass count).
#[derive(Debug, Default)]
pub struct Progress {
    last: Option<u64>,
}

impl Progress {
    /// True when `now` differs from the value seen last time (the first
    /// look counts as progress).
    pub fn moved(&mut self, now: u64) -> bool {
        let moved = self.last != Some(now);
        self.last = Some(now);
        moved
    }
}

/// While the manager asks for it, pings the watchdog at half its period,
/// each time only if `engine_passes` moved (the task running at all shows
/// the runtime is alive).
pub fn spawn_watchdog(engine_passes: Arc<dyn Fn() -> u64 + Send + Sync>) {
    let Some(period) = watchdog_period() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut progress = Progress::default();
        let mut warned = false;
        loop {
            tick.tick().await;
            if progress.moved(engine_passes()) {
                notify("WATCHDOG=1");
                warned = false;
            } else if !warned {
                tracing::error!("the media engine's clock stopped: the watchdog is no longer fed");
                warned = true;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_a_counter_that_moved() {
        let mut p = Progress::default();
        assert!(p.moved(7), "the first look");
        assert!(!p.moved(7));
        assert!(p.moved(8));
        assert!(!p.moved(8));
    }
}

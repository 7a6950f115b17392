//! Overload control: the bounds on what traffic may make us hold, and the
//! decision to refuse a new call with 503 before it takes any state.
//!
//! Room: the front door's doorman. It reads figures the other rooms keep
//! (calls alive, the depth of a SIP worker's queue of new requests, how late
//! the runtime's timers fire) and keeps its own: calls per agent and per trunk
//! source, and what was shed and why. It owns no socket and sends nothing:
//! the SIP workers ask [`Overload::admit`] and answer 503 themselves. Every
//! decision is a pure function of the figures it is given, so unit tests drive
//! it without a runtime.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::media::engine::MediaPressure;

/// `[limits]`: the bounds, each with a sane default in the shipped config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Calls alive at once; past it new calls get 503.
    pub max_calls: usize,
    /// Calls one agent's phone may have placed at once (consultations,
    /// supervision, feature codes).
    pub max_calls_per_agent: usize,
    /// Calls from one trunk address at once (0 = only `max_calls`).
    pub max_calls_per_trunk_source: usize,
    /// New requests waiting for one SIP worker; past it new calls get 503
    /// (in-dialog requests have their own lane and are served first).
    pub worker_backlog: usize,
    /// Milliseconds the runtime's timers may run late before new calls get 503.
    pub max_lag_ms: u64,
    /// Milliseconds the media engine's passes may start late (their p90 over
    /// a window, on the worst thread with calls) before new calls get 503:
    /// past it every caller's audio is breaking up (0 = no limit).
    pub max_media_late_ms: u64,
    /// Percent of the wall clock the busiest media thread may spend working
    /// before new calls get 503 (0 or 100 = no limit).
    pub max_media_busy_pct: u64,
    /// The machine's idle CPU, percent over the last second, below which new
    /// calls get 503, like FreeSWITCH's min-idle-cpu (0 = off; Linux only).
    pub min_idle_cpu_pct: u64,
    /// Seconds in the Retry-After of every 503 we shed with.
    #[serde(deserialize_with = "crate::text::seconds")]
    pub retry_after: u32,
    /// TCP connections at once; more are refused at accept.
    pub max_tcp_connections: usize,
}

/// Why a new call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// SIGTERM: draining.
    Draining,
    /// `max_calls` reached.
    Calls,
    /// The worker's backlog of new requests is past `worker_backlog`.
    Backlog,
    /// Timers late by more than `max_lag_ms`.
    Lag,
    /// Media passes late by more than `max_media_late_ms`.
    MediaLate,
    /// A media thread busier than `max_media_busy_pct`.
    MediaBusy,
    /// The machine's idle CPU under `min_idle_cpu_pct`.
    IdleCpu,
    /// The worker's transaction table is full (`[sip] max_transactions`).
    Transactions,
    /// The agent has `max_calls_per_agent` calls.
    AgentCalls,
    /// The trunk address has `max_calls_per_trunk_source` calls.
    SourceCalls,
}

impl Shed {
    const ALL: [Shed; 10] = [
        Shed::Draining,
        Shed::Calls,
        Shed::Backlog,
        Shed::Lag,
        Shed::MediaLate,
        Shed::MediaBusy,
        Shed::IdleCpu,
        Shed::Transactions,
        Shed::AgentCalls,
        Shed::SourceCalls,
    ];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Shed::Draining => "draining",
            Shed::Calls => "max_calls",
            Shed::Backlog => "worker_backlog",
            Shed::Lag => "lag",
            Shed::MediaLate => "media_late",
            Shed::MediaBusy => "media_busy",
            Shed::IdleCpu => "idle_cpu",
            Shed::Transactions => "max_transactions",
            Shed::AgentCalls => "max_calls_per_agent",
            Shed::SourceCalls => "max_calls_per_trunk_source",
        }
    }
}

/// What the engine is doing now, as far as admission cares.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    /// Calls alive.
    pub live_calls: usize,
    /// New requests queued for the worker asking.
    pub backlog: usize,
    /// The media engine's pressure (its worst thread's).
    pub media: MediaPressure,
}

/// Who a new call counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Holder {
    /// An agent's phone placed it.
    Agent(String),
    /// It came in from this trunk address.
    Source(IpAddr),
}

/// The doorman: limits, per-holder counts and counters.
#[derive(Debug)]
pub struct Overload {
    limits: LimitSettings,
    /// Timer lateness, microseconds, decaying (see [`Overload::note_lateness`]).
    lag_us: AtomicU64,
    /// The worst lateness seen since start, microseconds.
    max_lag_us: AtomicU64,
    /// The machine's idle CPU over the last measurement, percent (100 until measured).
    idle_cpu_pct: AtomicU64,
    shed: [AtomicU64; Shed::ALL.len()],
    held: Mutex<HashMap<Holder, usize>>,
}

impl Overload {
    /// A doorman with these limits.
    pub fn new(limits: LimitSettings) -> Arc<Overload> {
        Arc::new(Overload {
            limits,
            lag_us: AtomicU64::new(0),
            max_lag_us: AtomicU64::new(0),
            idle_cpu_pct: AtomicU64::new(100),
            shed: Default::default(),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// The limits.
    pub fn limits(&self) -> &LimitSettings {
        &self.limits
    }

    /// Whether a new call may start under `load`. Emergency calls never ask.
    pub fn admit(&self, load: Load) -> Result<(), Shed> {
        let l = &self.limits;
        if load.live_calls >= l.max_calls {
            return Err(Shed::Calls);
        }
        if load.backlog > l.worker_backlog {
            return Err(Shed::Backlog);
        }
        if self.lag_us.load(Relaxed) > l.max_lag_ms * 1000 {
            return Err(Shed::Lag);
        }
        if l.max_media_late_ms > 0 && load.media.late_p90_us > l.max_media_late_ms * 1000 {
            return Err(Shed::MediaLate);
        }
        if l.max_media_busy_pct > 0 && load.media.busy_pct > l.max_media_busy_pct {
            return Err(Shed::MediaBusy);
        }
        if self.idle_cpu_pct.load(Relaxed) < l.min_idle_cpu_pct {
            return Err(Shed::IdleCpu);
        }
        Ok(())
    }

    /// Counts a shed call.
    pub fn record(&self, why: Shed) {
        if let Some(i) = Shed::ALL.iter().position(|s| *s == why) {
            self.shed[i].fetch_add(1, Relaxed);
        }
    }

    /// How many calls were shed for `why`.
    pub fn shed_count(&self, why: Shed) -> u64 {
        Shed::ALL
            .iter()
            .position(|s| *s == why)
            .map_or(0, |i| self.shed[i].load(Relaxed))
    }

    /// Takes one of `holder`'s call slots, or says which limit is reached.
    /// The slot is given back when the returned guard drops.
    pub fn hold(self: &Arc<Self>, holder: Holder) -> Result<CallSlot, Shed> {
        let (limit, why) = match holder {
            Holder::Agent(_) => (self.limits.max_calls_per_agent, Shed::AgentCalls),
            Holder::Source(_) => (self.limits.max_calls_per_trunk_source, Shed::SourceCalls),
        };
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(holder.clone()).or_default();
        if limit > 0 && *count >= limit {
            return Err(why);
        }
        *count += 1;
        Ok(CallSlot {
            owner: Some((self.clone(), holder)),
        })
    }

    /// Calls `holder` has now.
    pub fn holding(&self, holder: &Holder) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(holder).copied().unwrap_or(0)
    }

    fn release(&self, holder: &Holder) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(holder) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(holder);
            }
        }
    }

    /// Takes one measurement of timer lateness. The figure admission reads
    /// jumps up at once and decays by an eighth per measurement, so one late
    /// tick sheds for a few ticks, not for good.
    pub fn note_lateness(&self, late: Duration) {
        let us = late.as_micros().min(u64::MAX as u128) as u64;
        let old = self.lag_us.load(Relaxed);
        self.lag_us.store(us.max(old - old / 8), Relaxed);
        self.max_lag_us.fetch_max(us, Relaxed);
    }

    /// Measures the runtime's timer lateness every `period`, for ever.
    pub async fn watch_lag(self: Arc<Self>, period: Duration) {
        loop {
            let asked = Instant::now();
            tokio::time::sleep(period).await;
            self.note_lateness(asked.elapsed().saturating_sub(period));
        }
    }

    /// Takes one measurement of the machine's idle CPU, percent.
    pub fn note_idle_cpu(&self, pct: u64) {
        self.idle_cpu_pct.store(pct.min(100), Relaxed);
    }

    /// Measures the machine's idle CPU every `period` from `/proc/stat`, for
    /// ever; returns at once where there is no such file (not Linux).
    pub async fn watch_idle_cpu(self: Arc<Self>, period: Duration) {
        let read = || std::fs::read_to_string("/proc/stat").ok();
        let Some(mut before) = read().as_deref().and_then(cpu_times) else {
            tracing::warn!("min_idle_cpu_pct is set but /proc/stat cannot be read: not applied");
            return;
        };
        loop {
            tokio::time::sleep(period).await;
            let Some(now) = read().as_deref().and_then(cpu_times) else {
                continue;
            };
            if let Some(pct) = idle_share(before, now) {
                self.note_idle_cpu(pct);
            }
            before = now;
        }
    }

    /// Bounds, current figures and shed counts, for `yihaotong status`.
    pub fn snapshot(&self, load: Load) -> serde_json::Value {
        let l = &self.limits;
        let shed: serde_json::Map<String, serde_json::Value> = Shed::ALL
            .iter()
            .map(|s| (s.label().to_string(), self.shed_count(*s).into()))
            .collect();
        serde_json::json!({
            "max_calls": l.max_calls,
            "live_calls": load.live_calls,
            "max_calls_per_agent": l.max_calls_per_agent,
            "max_calls_per_trunk_source": l.max_calls_per_trunk_source,
            "worker_backlog": l.worker_backlog,
            "backlog_now": load.backlog,
            "max_lag_ms": l.max_lag_ms,
            "lag_ms_now": self.lag_us.load(Relaxed) as f64 / 1000.0,
            "lag_ms_worst": self.max_lag_us.load(Relaxed) as f64 / 1000.0,
            "max_media_late_ms": l.max_media_late_ms,
            "media_late_p90_ms_now": load.media.late_p90_us as f64 / 1000.0,
            "max_media_busy_pct": l.max_media_busy_pct,
            "media_busy_pct_now": load.media.busy_pct,
            "min_idle_cpu_pct": l.min_idle_cpu_pct,
            "idle_cpu_pct_now": self.idle_cpu_pct.load(Relaxed),
            "max_tcp_connections": l.max_tcp_connections,
            "shed": shed,
        })
    }
}

/// The machine's idle and total CPU time (jiffies, summed over cores) from
/// the first line of `/proc/stat` (`cpu user nice system idle iowait irq
/// softirq steal …`): idle counts `idle` and `iowait`.
pub fn cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if values.len() < 4 {
        return None;
    }
    let idle = values[3] + values.get(4).copied().unwrap_or(0);
    Some((idle, values.iter().sum()))
}

/// Idle share between two readings of [`cpu_times`], percent; `None` when no
/// time passed (or the counters went back).
pub fn idle_share(before: (u64, u64), now: (u64, u64)) -> Option<u64> {
    let total = now.1.checked_sub(before.1).filter(|t| *t > 0)?;
    let idle = now.0.checked_sub(before.0)?;
    Some((idle * 100 / total).min(100))
}

/// One call's place in its holder's count; given back on drop.
#[derive(Debug, Default)]
pub struct CallSlot {
    owner: Option<(Arc<Overload>, Holder)>,
}

impl CallSlot {
    /// A slot that counts against nobody (trunk calls with no per-source limit).
    pub fn none() -> CallSlot {
        CallSlot { owner: None }
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        if let Some((overload, holder)) = self.owner.take() {
            overload.release(&holder);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitSettings {
        LimitSettings {
            max_calls: 10,
            max_calls_per_agent: 2,
            max_calls_per_trunk_source: 3,
            worker_backlog: 100,
            max_lag_ms: 50,
            max_media_late_ms: 20,
            max_media_busy_pct: 90,
            min_idle_cpu_pct: 10,
            retry_after: 5,
            max_tcp_connections: 16,
        }
    }

    #[test]
    fn admission_follows_calls_backlog_and_lag() {
        let o = Overload::new(limits());
        let calm = Load {
            live_calls: 9,
            backlog: 100,
            media: MediaPressure {
                late_p90_us: 20_000,
                busy_pct: 90,
            },
        };
        assert_eq!(o.admit(calm), Ok(()));
        let full = Load {
            live_calls: 10,
            ..calm
        };
        assert_eq!(o.admit(full), Err(Shed::Calls));
        let swamped = Load {
            backlog: 101,
            ..calm
        };
        assert_eq!(o.admit(swamped), Err(Shed::Backlog));
        o.note_lateness(Duration::from_millis(80));
        assert_eq!(o.admit(calm), Err(Shed::Lag));
        // On-time ticks bring the figure back under the bound within a few.
        let mut ticks = 0;
        while o.admit(calm).is_err() {
            o.note_lateness(Duration::ZERO);
            ticks += 1;
            assert!(ticks < 10, "lag never decays");
        }
        assert!(ticks >= 2, "one on-time tick should not clear an 80 ms lag");
        o.record(Shed::Lag);
        o.record(Shed::Lag);
        let snap = o.snapshot(calm);
        assert_eq!(snap["shed"]["lag"], 2);
        assert_eq!(snap["shed"]["max_calls"], 0);
        assert_eq!(snap["lag_ms_worst"], 80.0);
    }

    #[test]
    fn admission_follows_media_pressure_and_idle_cpu() {
        let o = Overload::new(limits());
        let calm = Load::default();
        assert_eq!(o.admit(calm), Ok(()));
        let pressed = |late_p90_us, busy_pct| Load {
            media: MediaPressure {
                late_p90_us,
                busy_pct,
            },
            ..calm
        };
        let late = pressed(20_001, 10);
        assert_eq!(o.admit(late), Err(Shed::MediaLate));
        let busy = pressed(100, 91);
        assert_eq!(o.admit(busy), Err(Shed::MediaBusy));
        // 0 turns the media limits off.
        let off = Overload::new(LimitSettings {
            max_media_late_ms: 0,
            max_media_busy_pct: 0,
            min_idle_cpu_pct: 0,
            ..limits()
        });
        assert_eq!(off.admit(late), Ok(()));
        assert_eq!(off.admit(busy), Ok(()));
        off.note_idle_cpu(0);
        assert_eq!(off.admit(calm), Ok(()));
        // Idle CPU: 100 until measured; under the floor sheds, at it admits.
        o.note_idle_cpu(9);
        assert_eq!(o.admit(calm), Err(Shed::IdleCpu));
        o.note_idle_cpu(10);
        assert_eq!(o.admit(calm), Ok(()));
        let snap = o.snapshot(late);
        assert_eq!(snap["media_late_p90_ms_now"], 20.001);
        assert_eq!(snap["idle_cpu_pct_now"], 10);
        assert_eq!(snap["shed"]["media_late"], 0);
    }

    #[test]
    fn idle_cpu_comes_from_two_readings_of_proc_stat() {
        let first = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n";
        let second = "cpu  250 0 100 850 50 0 0 0 0 0\nintr 1\n";
        let a = cpu_times(first).expect("first");
        let b = cpu_times(second).expect("second");
        assert_eq!(a, (850, 1000));
        assert_eq!(b, (900, 1250));
        // 250 jiffies went by, 50 of them idle.
        assert_eq!(idle_share(a, b), Some(20));
        assert_eq!(idle_share(a, a), None, "no time passed");
        assert_eq!(idle_share(b, a), None, "counters went back");
        // Older kernels print only four fields; anything else is refused.
        assert_eq!(cpu_times("cpu 1 2 3 4\n"), Some((4, 10)));
        assert_eq!(cpu_times("cpu 1 2 3\n"), None);
        assert_eq!(cpu_times("cpu0 1 2 3 4\n"), None);
        assert_eq!(cpu_times("cpu 1 x 3 4\n"), None);
        assert_eq!(cpu_times(""), None);
    }

    #[test]
    fn slots_count_per_holder_and_come_back_on_drop() {
        let o = Overload::new(limits());
        let agent = Holder::Agent("1001".into());
        let a = o.hold(agent.clone()).expect("first");
        let b = o.hold(agent.clone()).expect("second");
        assert_eq!(o.hold(agent.clone()).err(), Some(Shed::AgentCalls));
        // Another agent is not affected.
        let other = o.hold(Holder::Agent("1002".into())).expect("other agent");
        drop(a);
        assert_eq!(o.holding(&agent), 1);
        let c = o.hold(agent.clone()).expect("a slot came back");
        drop((b, c, other));
        assert_eq!(o.holding(&agent), 0);
        let source = Holder::Source("127.0.0.1".parse().expect("ip"));
        let slots: Vec<CallSlot> = (0..3)
            .map(|_| o.hold(source.clone()).expect("slot"))
            .collect();
        assert_eq!(o.hold(source.clone()).err(), Some(Shed::SourceCalls));
        drop(slots);
        assert_eq!(o.holding(&source), 0);
    }

    #[test]
    fn zero_means_no_per_source_limit() {
        let o = Overload::new(LimitSettings {
            max_calls_per_trunk_source: 0,
            ..limits()
        });
        let source = Holder::Source("127.0.0.1".parse().expect("ip"));
        let slots: Vec<CallSlot> = (0..50)
            .map(|_| o.hold(source.clone()).expect("slot"))
            .collect();
        assert_eq!(o.holding(&source), 50);
        drop(slots);
    }
}

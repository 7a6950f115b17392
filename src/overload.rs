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
    /// Seconds in the Retry-After of every 503 we shed with.
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
    /// The worker's transaction table is full (`[sip] max_transactions`).
    Transactions,
    /// The agent has `max_calls_per_agent` calls.
    AgentCalls,
    /// The trunk address has `max_calls_per_trunk_source` calls.
    SourceCalls,
}

impl Shed {
    const ALL: [Shed; 7] = [
        Shed::Draining,
        Shed::Calls,
        Shed::Backlog,
        Shed::Lag,
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
            "max_tcp_connections": l.max_tcp_connections,
            "shed": shed,
        })
    }
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

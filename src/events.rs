//! The CTI event stream: what happens to calls and agents, in order, for
//! the ticket system's screen pop and supervisors' boards.
//!
//! Room: the switchboard's ticker. Every event gets the next sequence
//! number under one short lock, so the order subscribers see is the order
//! of the numbers, and it is kept in a bounded backlog: a client that
//! reconnects with `since=SEQ` is given what it missed, or told it is too
//! far behind and must resync. Live delivery goes through a broadcast
//! channel of bounded size: a consumer that falls further behind than that
//! is cut off with the reason, and never slows a call (publishing never
//! waits). The events themselves are plain data ([`Event`]); the calls, the
//! desk and the records office publish them. It touches nothing else.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

/// Events kept for reconnecting clients.
pub const BACKLOG: usize = 10_000;
/// Events a live consumer may be behind before it is cut off.
pub const LAG: usize = 1_024;

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Its place in the stream (from 1, no gaps).
    pub seq: u64,
    /// Unix ms.
    pub at: u64,
    /// `call.offered`, `call.queued`, `agent.ringing`, `call.answered`,
    /// `call.transferred`, `call.ended`, `agent.state`, `queue.stats`…
    pub kind: &'static str,
    /// The queue it concerns, if any (for filters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The agent it concerns, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The hotline it concerns, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hotline: Option<String>,
    /// What happened.
    pub data: Value,
}

/// What a new event is about (the filterable parts).
#[derive(Debug, Clone, Default)]
pub struct About {
    /// Queue.
    pub queue: Option<String>,
    /// Agent.
    pub agent: Option<String>,
    /// Hotline.
    pub hotline: Option<String>,
}

/// Which events a subscriber wants (`None`: any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this queue's.
    pub queue: Option<String>,
    /// Only this agent's.
    pub agent: Option<String>,
    /// Only this hotline's.
    pub hotline: Option<String>,
}

impl Filter {
    /// Whether `e` passes.
    pub fn wants(&self, e: &Event) -> bool {
        let ok = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        ok(&self.queue, &e.queue) && ok(&self.agent, &e.agent) && ok(&self.hotline, &e.hotline)
    }
}

/// A reconnecting client asked for events the backlog no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooFarBehind {
    /// The oldest sequence number still held.
    pub oldest: u64,
}

struct Inner {
    next: u64,
    backlog: VecDeque<Arc<Event>>,
}

/// The stream's one publisher side.
pub struct EventBus {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Arc<Event>>,
    backlog: usize,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(BACKLOG, LAG)
    }
}

impl EventBus {
    /// A bus keeping `backlog` events, letting consumers fall `lag` behind.
    pub fn new(backlog: usize, lag: usize) -> EventBus {
        EventBus {
            inner: Mutex::new(Inner {
                next: 1,
                backlog: VecDeque::with_capacity(backlog.min(1024)),
            }),
            live: broadcast::channel(lag.max(1)).0,
            backlog: backlog.max(1),
        }
    }

    /// Publishes an event now; never waits for a consumer.
    pub fn publish(&self, kind: &'static str, about: About, data: Value) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let e = Arc::new(Event {
            seq: inner.next,
            at: crate::clock::now_ms(),
            kind,
            queue: about.queue,
            agent: about.agent,
            hotline: about.hotline,
            data,
        });
        inner.next += 1;
        if inner.backlog.len() == self.backlog {
            inner.backlog.pop_front();
        }
        inner.backlog.push_back(e.clone());
        // Sent under the lock, so live order is sequence order.
        let _ = self.live.send(e);
    }

    /// The events after `since` still held (all held ones for `None`) and a
    /// receiver for everything after them, taken together so nothing falls
    /// between. `Err` when `since` is older than the backlog.
    #[allow(clippy::type_complexity)]
    pub fn subscribe(
        &self,
        since: Option<u64>,
    ) -> Result<(Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>), TooFarBehind> {
        let inner = self.inner.lock().map_err(|_| TooFarBehind { oldest: 0 })?;
        let oldest = inner.backlog.front().map_or(inner.next, |e| e.seq);
        let replay = match since {
            None => Vec::new(),
            Some(s) if s + 1 < oldest => return Err(TooFarBehind { oldest }),
            Some(s) => inner
                .backlog
                .iter()
                .filter(|e| e.seq > s)
                .cloned()
                .collect(),
        };
        Ok((replay, self.live.subscribe()))
    }

    /// The last sequence number given out (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.inner.lock().map_or(0, |i| i.next - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn about(queue: &str) -> About {
        About {
            queue: Some(queue.into()),
            ..About::default()
        }
    }

    #[test]
    fn events_are_numbered_in_order_and_replayed_after_since() {
        let bus = EventBus::new(4, 8);
        for i in 0..6 {
            bus.publish("call.offered", about("main"), serde_json::json!({ "i": i }));
        }
        assert_eq!(bus.last_seq(), 6);
        // The backlog holds 3..=6.
        let (replay, _) = bus.subscribe(Some(3)).expect("held");
        assert_eq!(replay.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5, 6]);
        let (replay, _) = bus.subscribe(Some(2)).expect("2 is just before the oldest");
        assert_eq!(replay.len(), 4);
        assert_eq!(
            bus.subscribe(Some(1)).err(),
            Some(TooFarBehind { oldest: 3 })
        );
        let (replay, _) = bus.subscribe(None).expect("live only");
        assert!(replay.is_empty());
    }

    #[test]
    fn a_live_receiver_sees_what_comes_after_its_replay_and_a_slow_one_lags() {
        let bus = EventBus::new(100, 2);
        bus.publish("a", About::default(), Value::Null);
        let (replay, mut rx) = bus.subscribe(Some(0)).expect("held");
        assert_eq!(replay.len(), 1);
        bus.publish("b", About::default(), Value::Null);
        assert_eq!(rx.try_recv().map(|e| e.seq).ok(), Some(2));
        for _ in 0..3 {
            bus.publish("c", About::default(), Value::Null);
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }

    #[test]
    fn filters_pass_only_what_they_name() {
        let bus = EventBus::new(10, 10);
        bus.publish(
            "agent.ringing",
            About {
                queue: Some("main".into()),
                agent: Some("1001".into()),
                hotline: Some("12345".into()),
            },
            Value::Null,
        );
        let (all, _) = bus.subscribe(Some(0)).expect("held");
        let e = &all[0];
        assert!(Filter::default().wants(e));
        let agent = |a: &str| Filter {
            agent: Some(a.into()),
            ..Filter::default()
        };
        assert!(agent("1001").wants(e));
        assert!(!agent("1002").wants(e));
        let queue = Filter {
            queue: Some("hrss".into()),
            ..Filter::default()
        };
        assert!(!queue.wants(e));
    }
}

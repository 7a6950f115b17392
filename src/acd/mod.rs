//! The ACD seam: who gets the next call.
//!
//! Room: the queue desk. For the call-path stage this is the simple queue the
//! issue asks for — every registered agent listed in the queue, longest idle
//! first, one at a time — behind the [`Distributor`] trait, so the full ACD
//! (strategies, skills, states, wrap-up) can replace it without touching the
//! call code. A seat can only be offered a call through a [`Reservation`],
//! which only [`Distributor::reserve`] makes, so one seat is never rung for
//! two calls at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::sip::{Peer, TransportKind};
use crate::store::Store;

/// Where to ring an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatContact {
    /// Agent id.
    pub agent: String,
    /// Registered Contact URI (the Request-URI of our INVITE).
    pub uri: String,
    /// Where the registration came from: where we send.
    pub peer: Peer,
}

/// Proof that a seat was reserved for one call. Not clonable, not constructible outside.
#[derive(Debug)]
pub struct Reservation {
    agent: String,
}

impl Reservation {
    /// The reserved agent.
    pub fn agent(&self) -> &str {
        &self.agent
    }
}

/// Chooses agents for queue calls.
pub trait Distributor: Send + Sync {
    /// Agents that could take a call for `queue` now, best first.
    fn candidates(&self, queue: &str, now_unix: u64) -> Vec<SeatContact>;
    /// Reserves an agent for one call; `None` if it is busy.
    fn reserve(&self, agent: &str) -> Option<Reservation>;
    /// Gives the seat back (the call ended, or the agent did not answer).
    fn release(&self, reservation: Reservation);
}

#[derive(Debug)]
struct SeatState {
    busy: bool,
    idle_since: Instant,
}

/// Queue members and their bindings, read from the store once per change
/// (not once per call: a sled scan of every agent per call capped the call
/// rate at a few hundred per second with 400 agents).
#[derive(Default)]
struct Directory {
    generation: Option<u64>,
    by_queue: HashMap<String, Vec<(String, Vec<crate::store::Binding>)>>,
}

/// The call-path stage's queue: longest idle first, no states beyond busy.
pub struct SimpleQueue {
    store: Store,
    seats: Mutex<HashMap<String, SeatState>>,
    directory: Mutex<Directory>,
    started: Instant,
}

impl SimpleQueue {
    /// A queue over the agents in `store`.
    pub fn new(store: Store) -> SimpleQueue {
        SimpleQueue {
            store,
            seats: Mutex::new(HashMap::new()),
            directory: Mutex::new(Directory::default()),
            started: Instant::now(),
        }
    }
}

impl Distributor for SimpleQueue {
    fn candidates(&self, queue: &str, now_unix: u64) -> Vec<SeatContact> {
        let Ok(mut directory) = self.directory.lock() else {
            return Vec::new();
        };
        let generation = self.store.generation();
        if directory.generation != Some(generation) {
            let mut by_queue: HashMap<String, Vec<_>> = HashMap::new();
            for agent in self.store.agents().unwrap_or_default() {
                let bindings = self.store.bindings(&agent.id).unwrap_or_default();
                for q in &agent.queues {
                    by_queue
                        .entry(q.clone())
                        .or_default()
                        .push((agent.id.clone(), bindings.clone()));
                }
            }
            *directory = Directory {
                generation: Some(generation),
                by_queue,
            };
        }
        let Some(members) = directory.by_queue.get(queue) else {
            return Vec::new();
        };
        let Ok(seats) = self.seats.lock() else {
            return Vec::new();
        };
        let mut out: Vec<(Instant, SeatContact)> = Vec::new();
        for (agent, bindings) in members {
            let state = seats.get(agent);
            if state.is_some_and(|s| s.busy) {
                continue;
            }
            // The newest live binding is where the agent sits now.
            let Some(b) = bindings
                .iter()
                .filter(|b| b.expires_at > now_unix)
                .max_by_key(|b| b.expires_at)
            else {
                continue;
            };
            let transport = if b.transport == "TCP" {
                TransportKind::Tcp
            } else {
                TransportKind::Udp
            };
            out.push((
                state.map_or(self.started, |s| s.idle_since),
                SeatContact {
                    agent: agent.clone(),
                    uri: b.contact.clone(),
                    peer: Peer::new(b.received, transport, b.conn),
                },
            ));
        }
        out.sort_by(|(ia, a), (ib, b)| ia.cmp(ib).then_with(|| a.agent.cmp(&b.agent)));
        out.into_iter().map(|(_, c)| c).collect()
    }

    fn reserve(&self, agent: &str) -> Option<Reservation> {
        let mut seats = self.seats.lock().ok()?;
        let seat = seats.entry(agent.to_string()).or_insert(SeatState {
            busy: false,
            idle_since: self.started,
        });
        if seat.busy {
            return None;
        }
        seat.busy = true;
        Some(Reservation {
            agent: agent.to_string(),
        })
    }

    fn release(&self, reservation: Reservation) {
        if let Ok(mut seats) = self.seats.lock() {
            seats.insert(
                reservation.agent,
                SeatState {
                    busy: false,
                    idle_since: Instant::now(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::auth::Credentials;
    use crate::store::{Agent, Binding};

    #[test]
    fn longest_idle_first_and_no_double_reservation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        for id in ["1001", "1002"] {
            store
                .put_agent(&Agent {
                    id: id.into(),
                    name: id.into(),
                    queues: vec!["main".into()],
                    credentials: Credentials::new(id, "r", "p"),
                })
                .expect("agent");
            store
                .put_bindings(
                    id,
                    &[Binding {
                        contact: format!("sip:{id}@127.0.0.1:6000"),
                        received: "127.0.0.1:6000".parse().expect("addr"),
                        transport: "UDP".into(),
                        conn: 0,
                        expires_at: 2_000,
                        call_id: "c".into(),
                        cseq: 1,
                    }],
                )
                .expect("binding");
        }
        let q = SimpleQueue::new(store);
        let names = |q: &SimpleQueue| {
            q.candidates("main", 1_000)
                .into_iter()
                .map(|c| c.agent)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&q), vec!["1001", "1002"]);
        let r = q.reserve("1001").expect("free");
        assert!(q.reserve("1001").is_none(), "one seat, one call");
        assert_eq!(names(&q), vec!["1002"]);
        q.release(r);
        // 1001 just finished a call, so 1002 has been idle longer.
        assert_eq!(names(&q), vec!["1002", "1001"]);
        assert!(
            q.candidates("main", 3_000).is_empty(),
            "expired bindings are not rung"
        );
        assert!(q.candidates("other", 1_000).is_empty());
    }
}

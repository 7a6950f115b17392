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
    /// Picks the best free agent of `queue` that this call has not tried yet,
    /// reserves it (choice and reservation are one step, so two calls cannot
    /// both take it), and says where to ring it.
    fn reserve_next(
        &self,
        queue: &str,
        now_unix: u64,
        tried: &[String],
    ) -> Option<(Reservation, SeatContact)>;
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
    fn reserve_next(
        &self,
        queue: &str,
        now_unix: u64,
        tried: &[String],
    ) -> Option<(Reservation, SeatContact)> {
        let mut directory = self.directory.lock().ok()?;
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
        let members = directory.by_queue.get(queue)?;
        let mut seats = self.seats.lock().ok()?;
        // One pass, no allocation: the free member idle longest (ties by id).
        let mut best: Option<(Instant, &str, &crate::store::Binding)> = None;
        for (agent, bindings) in members {
            let state = seats.get(agent.as_str());
            if state.is_some_and(|s| s.busy) || tried.iter().any(|t| t == agent) {
                continue;
            }
            // The newest live binding is where the agent sits now.
            let Some(binding) = bindings
                .iter()
                .filter(|b| b.expires_at > now_unix)
                .max_by_key(|b| b.expires_at)
            else {
                continue;
            };
            let idle = state.map_or(self.started, |s| s.idle_since);
            if best.is_none_or(|(bi, ba, _)| (idle, agent.as_str()) < (bi, ba)) {
                best = Some((idle, agent, binding));
            }
        }
        let (idle_since, agent, b) = best?;
        seats.insert(
            agent.to_string(),
            SeatState {
                busy: true,
                idle_since,
            },
        );
        let transport = if b.transport == "TCP" {
            TransportKind::Tcp
        } else {
            TransportKind::Udp
        };
        Some((
            Reservation {
                agent: agent.to_string(),
            },
            SeatContact {
                agent: agent.to_string(),
                uri: b.contact.clone(),
                peer: Peer::new(b.received, transport, b.conn),
            },
        ))
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
    fn longest_idle_first_tried_skipped_and_no_double_reservation() {
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
        let next = |q: &SimpleQueue, now: u64, tried: &[String]| q.reserve_next("main", now, tried);
        let (r1, c1) = next(&q, 1_000, &[]).expect("free seat");
        assert_eq!(c1.agent, "1001", "equally idle: by id");
        assert_eq!(c1.uri, "sip:1001@127.0.0.1:6000");
        let (r2, c2) = next(&q, 1_000, &[]).expect("second seat");
        assert_eq!(c2.agent, "1002", "one seat, one call: 1001 is taken");
        assert!(next(&q, 1_000, &[]).is_none(), "everyone is busy");
        q.release(r2);
        q.release(r1);
        // 1002 was released first, so it has been idle longest.
        let (r, c) = next(&q, 1_000, &[]).expect("free again");
        assert_eq!(c.agent, "1002");
        q.release(r);
        let (r, c) = next(&q, 1_000, &["1001".to_string()]).expect("not tried yet");
        assert_eq!(c.agent, "1002");
        q.release(r);
        assert!(
            next(&q, 3_000, &[]).is_none(),
            "expired bindings are not rung"
        );
        assert!(q.reserve_next("other", 1_000, &[]).is_none());
    }
}

//! The ACD: who gets the next call, and the record of every second.
//!
//! Room: the queue desk's clerk. [`desk::Desk`] decides; this module runs it
//! as one tokio task (the actor) that owns it, feeds it messages from calls,
//! the registrar and the admin socket, sleeps until its next deadline, and
//! carries its outputs out: ring messages to call tasks, queue-log lines to
//! [`records`], presence to the store. Calls hold a [`Ticket`]; dropping it
//! (however the call ended, even a panicking task) tells the desk, so no
//! agent can stay "on call" after a lost BYE.

pub mod desk;
pub mod queue_log;
pub mod records;
pub mod report;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::clock::{now_unix, steady_ms, wall_of};
use crate::config::{QueueDef, Settings};
use crate::sip::{Peer, TransportKind};
use crate::store::{Presence, Rank, Store};
use desk::{
    AgentSpec, AgentView, CallRef, ClaimRefusal, Desk, ExitReason, HungUp, Joining, OfferOutcome,
    Output, QueueView, Refusal, Rules,
};
use records::Records;

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

/// What the desk tells a waiting call.
#[derive(Debug)]
pub enum ToCall {
    /// Ring these agents (several only under ring-all), each for `ring_timeout`.
    Ring {
        /// Where.
        agents: Vec<SeatContact>,
        /// How long.
        ring_timeout: Duration,
    },
    /// Leave the line: no agent.
    Exit(ExitReason),
}

enum Msg {
    Enter {
        joining: Joining,
        to_call: crate::boxed::UnboundedSender<ToCall>,
        reply: oneshot::Sender<Result<usize, Refusal>>,
    },
    Result {
        call: CallRef,
        agent: String,
        outcome: OfferOutcome,
        /// Told once the result's queue-log lines (and their events) are out.
        settled: Option<oneshot::Sender<()>>,
    },
    Leave {
        call: CallRef,
        by: HungUp,
    },
    Presence {
        agent: String,
        presence: Presence,
        reply: oneshot::Sender<Result<(), String>>,
    },
    EndWrapUp {
        agent: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Touch {
        agent: String,
        came_online: bool,
    },
    Position {
        call: CallRef,
        reply: oneshot::Sender<Option<(usize, u64)>>,
    },
    Views {
        reply: oneshot::Sender<(Vec<AgentView>, Vec<QueueView>)>,
    },
    Claim {
        call: CallRef,
        call_id: String,
        agent: String,
        queue: Option<String>,
        reply: oneshot::Sender<Result<SeatContact, ClaimRefusal>>,
    },
    Transferred {
        call: CallRef,
        to: String,
    },
    ToCallback {
        call: CallRef,
        reply: oneshot::Sender<bool>,
    },
    SetQueue {
        name: String,
        rules: Rules,
    },
    RemoveQueue {
        name: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// Handle to the ACD actor. Cloning is cheap.
#[derive(Clone)]
pub struct Acd {
    tx: mpsc::UnboundedSender<Msg>,
    tickets: Arc<AtomicU64>,
}

/// The resolved rules of a queue (its own keys over `[queue]`'s; `None`:
/// `[queue]`'s alone).
pub fn queue_rules(settings: &Settings, q: Option<&QueueDef>) -> Rules {
    let d = &settings.queue;
    let q = q.cloned().unwrap_or_default();
    let ms = |v: u64| v.saturating_mul(1000);
    Rules {
        strategy: q.strategy.unwrap_or(d.strategy),
        ring_timeout: ms(q.ring_timeout.unwrap_or(d.ring_timeout).max(1)),
        wrap_up: ms(q.wrap_up.unwrap_or(d.wrap_up)),
        max_wait: ms(q.max_wait.unwrap_or(d.max_wait)),
        max_waiting: q.max_waiting.unwrap_or(d.max_waiting),
        join_empty: q.join_empty.unwrap_or_else(|| d.join_empty.clone()),
        leave_empty: q.leave_empty.unwrap_or_else(|| d.leave_empty.clone()),
        retry: ms(q.retry.unwrap_or(d.retry)),
        max_no_answer: q.max_no_answer.unwrap_or(d.max_no_answer),
        tier_wait: ms(q.tier_wait.unwrap_or(d.tier_wait)),
        resume_window: ms(q.resume_window.unwrap_or(d.resume_window)),
    }
}

/// The newest live registration of an agent, as a seat contact and its expiry (ms).
fn seat_contact(store: &Store, id: &str, now_unix: u64) -> Option<(SeatContact, u64)> {
    let bindings = store.bindings(id).unwrap_or_default();
    let b = bindings
        .iter()
        .filter(|b| b.expires_at > now_unix)
        .max_by_key(|b| b.expires_at)?;
    let transport = if b.transport == "TCP" {
        TransportKind::Tcp
    } else {
        TransportKind::Udp
    };
    Some((
        SeatContact {
            agent: id.to_string(),
            uri: b.contact.clone(),
            peer: Peer::new(b.received, transport, b.conn),
        },
        b.expires_at.saturating_mul(1000),
    ))
}

/// A call's place at the desk. Dropping it tells the desk the call is over.
pub struct Ticket {
    acd: Acd,
    call: CallRef,
    /// Who ended the call (set before the drop; the caller by default).
    pub by: HungUp,
}

impl Ticket {
    /// Reports how an offer to `agent` ended.
    pub fn result(&self, agent: &str, outcome: OfferOutcome) {
        self.send_result(agent, outcome, None);
    }

    /// Reports that `agent` answered, and returns once the desk has logged
    /// it (CONNECT, the `call.answered` event): whatever the call does next,
    /// its hang-up included, comes after the answer in every event stream.
    pub async fn answered(&self, agent: &str) {
        let (settled, rx) = oneshot::channel();
        if self.send_result(agent, OfferOutcome::Answered, Some(settled)) {
            let _ = rx.await;
        }
    }

    /// Sends an offer's result; whether the desk is there to take it.
    fn send_result(
        &self,
        agent: &str,
        outcome: OfferOutcome,
        settled: Option<oneshot::Sender<()>>,
    ) -> bool {
        self.acd
            .tx
            .send(Msg::Result {
                call: self.call,
                agent: agent.to_string(),
                outcome,
                settled,
            })
            .is_ok()
    }

    /// The waiting caller booked a callback: they keep their place without
    /// the queue's limits. `false` if they are not waiting now.
    pub async fn to_callback(&self) -> bool {
        let (reply, rx) = oneshot::channel();
        if self
            .acd
            .tx
            .send(Msg::ToCallback {
                call: self.call,
                reply,
            })
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// The caller's position (1 = next) and the queue's recent hold time (ms).
    pub async fn position(&self) -> Option<(usize, u64)> {
        let (reply, rx) = oneshot::channel();
        self.acd
            .tx
            .send(Msg::Position {
                call: self.call,
                reply,
            })
            .ok()?;
        rx.await.ok().flatten()
    }
}

impl Ticket {
    /// The agent handed the call on to `to`: the desk logs TRANSFER and the
    /// agent goes to wrap-up. The call goes on under the target's ticket.
    pub fn transferred(self, to: &str) {
        let _ = self.acd.tx.send(Msg::Transferred {
            call: self.call,
            to: to.to_string(),
        });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let _ = self.acd.tx.send(Msg::Leave {
            call: self.call,
            by: self.by,
        });
    }
}

impl Acd {
    /// Starts the actor with `queues` (their rules over `settings`'
    /// `[queue]`) and every agent of `store`.
    pub fn start(
        settings: &Settings,
        queues: &crate::config::Queues,
        store: Store,
        records: Records,
    ) -> Acd {
        let queues = queues
            .iter()
            .map(|(name, def)| (name.clone(), queue_rules(settings, Some(def))));
        let mut desk = Desk::new(queues);
        // The desk's clock is steady time (its deadlines do not move when
        // the wall clock is stepped); what it writes down is turned into
        // wall time as it leaves (`carry_out`, `Msg::Views`).
        let now = steady_ms();
        let mut out = Vec::new();
        for agent in store.agents().unwrap_or_default() {
            let presence = store
                .presence(&agent.id)
                .ok()
                .flatten()
                .unwrap_or(Presence::LoggedOut);
            let contact = seat_contact(&store, &agent.id, now_unix());
            desk.upsert_agent(spec_of(&agent), presence, contact, false, now, &mut out);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let acd = Acd {
            tx,
            tickets: Arc::new(AtomicU64::new(1)),
        };
        let mut actor = Actor {
            desk,
            store,
            records,
            calls: HashMap::new(),
            settled: Vec::new(),
        };
        actor.carry_out(out);
        tokio::spawn(actor.run(rx));
        acd
    }

    /// Puts a caller, or a booked callback (`callback`), in line. The
    /// ticket must live as long as the call.
    pub async fn enter(
        &self,
        call_id: &str,
        queue: &str,
        rank: Rank,
        number: &str,
        to_call: crate::boxed::UnboundedSender<ToCall>,
        callback: bool,
    ) -> (Ticket, Result<usize, Refusal>) {
        let ticket = self.ticket();
        let call = ticket.call;
        let (reply, rx) = oneshot::channel();
        let joining = Joining {
            call,
            call_id: call_id.to_string(),
            queue: queue.to_string(),
            rank,
            number: number.to_string(),
            callback,
        };
        let sent = self.tx.send(Msg::Enter {
            joining,
            to_call,
            reply,
        });
        let answer = match sent {
            Ok(()) => rx.await.unwrap_or(Err(Refusal::UnknownQueue)),
            Err(_) => Err(Refusal::UnknownQueue),
        };
        (ticket, answer)
    }

    /// A fresh place at the desk.
    fn ticket(&self) -> Ticket {
        Ticket {
            acd: self.clone(),
            call: self.tickets.fetch_add(1, Ordering::Relaxed),
            by: HungUp::Caller,
        }
    }

    /// Reserves one agent by name for a call (a transfer, a consultation).
    /// The ticket must live as long as the call; offers go through it as
    /// for a queue.
    pub async fn claim(
        &self,
        call_id: &str,
        agent: &str,
        queue: Option<&str>,
    ) -> (Ticket, Result<SeatContact, String>) {
        let ticket = self.ticket();
        let call = ticket.call;
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Msg::Claim {
            call,
            call_id: call_id.to_string(),
            agent: agent.to_string(),
            queue: queue.map(str::to_string),
            reply,
        });
        let answer = match sent {
            Ok(()) => match rx.await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("the ACD has stopped".to_string()),
            },
            Err(_) => Err("the ACD has stopped".to_string()),
        };
        (ticket, answer)
    }

    /// The agent's account or registration changed: read it again from the
    /// store. `came_online`: a REGISTER just gave it its first live contact.
    pub fn touch(&self, agent: &str, came_online: bool) {
        let _ = self.tx.send(Msg::Touch {
            agent: agent.to_string(),
            came_online,
        });
    }

    /// Sets an agent's presence.
    pub async fn set_presence(&self, agent: &str, presence: Presence) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Presence {
                agent: agent.to_string(),
                presence,
                reply,
            })
            .map_err(|_| "the ACD has stopped".to_string())?;
        rx.await.map_err(|_| "the ACD has stopped".to_string())?
    }

    /// Ends an agent's wrap-up now.
    pub async fn end_wrap_up(&self, agent: &str) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::EndWrapUp {
                agent: agent.to_string(),
                reply,
            })
            .map_err(|_| "the ACD has stopped".to_string())?;
        rx.await.map_err(|_| "the ACD has stopped".to_string())?
    }

    /// Adds a queue or gives one new rules; agents whose accounts name it
    /// join it at once.
    pub fn set_queue(&self, name: &str, rules: Rules) {
        let _ = self.tx.send(Msg::SetQueue {
            name: name.to_string(),
            rules,
        });
    }

    /// Removes a queue, refused while callers wait in it or agents serve it.
    pub async fn remove_queue(&self, name: &str) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::RemoveQueue {
                name: name.to_string(),
                reply,
            })
            .map_err(|_| "the ACD has stopped".to_string())?;
        rx.await.map_err(|_| "the ACD has stopped".to_string())?
    }

    /// Every agent's and queue's state now.
    pub async fn views(&self) -> (Vec<AgentView>, Vec<QueueView>) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Views { reply }).is_err() {
            return Default::default();
        }
        rx.await.unwrap_or_default()
    }
}

/// The desk's view of a store account.
pub fn spec_of(agent: &crate::store::Agent) -> AgentSpec {
    AgentSpec {
        id: agent.id.clone(),
        queues: agent.memberships(),
        wrap_up: agent.wrap_up.map(|s| s.saturating_mul(1000)),
        auto_login: agent.auto_login,
    }
}

struct Actor {
    desk: Desk,
    store: Store,
    records: Records,
    calls: HashMap<CallRef, crate::boxed::UnboundedSender<ToCall>>,
    /// Callers waiting to hear that their message's outputs are carried out.
    settled: Vec<oneshot::Sender<()>>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        loop {
            let deadline = self.desk.next_deadline();
            let wait = deadline.map(|at| Duration::from_millis(at.saturating_sub(steady_ms())));
            let msg = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => Some(m),
                    None => return,
                },
                _ = sleep_opt(wait) => None,
            };
            let now = steady_ms();
            let mut out = Vec::new();
            match msg {
                None => self.desk.tick(now, &mut out),
                Some(m) => self.handle(m, now, &mut out),
            }
            // Deadlines that passed while handling come due now too.
            self.desk.tick(now, &mut out);
            self.carry_out(out);
            for settled in self.settled.drain(..) {
                let _ = settled.send(());
            }
        }
    }

    fn handle(&mut self, msg: Msg, now: u64, out: &mut Vec<Output>) {
        match msg {
            Msg::Enter {
                joining,
                to_call,
                reply,
            } => {
                let call = joining.call;
                self.calls.insert(call, to_call);
                let answer = self.desk.enter(joining, now, out);
                if answer.is_err() {
                    self.calls.remove(&call);
                }
                let _ = reply.send(answer);
            }
            Msg::Result {
                call,
                agent,
                outcome,
                settled,
            } => {
                self.desk.offer_result(call, &agent, outcome, now, out);
                self.settled.extend(settled);
            }
            Msg::Leave { call, by } => {
                self.calls.remove(&call);
                self.desk.leave(call, by, now, out);
            }
            Msg::Claim {
                call,
                call_id,
                agent,
                queue,
                reply,
            } => {
                let r = self
                    .desk
                    .claim(call, &call_id, &agent, queue.as_deref(), now);
                let _ = reply.send(r);
            }
            Msg::Transferred { call, to } => self.desk.transferred(call, &to, now, out),
            Msg::ToCallback { call, reply } => {
                let _ = reply.send(self.desk.to_callback(call, now, out));
            }
            Msg::Presence {
                agent,
                presence,
                reply,
            } => {
                let r = self
                    .desk
                    .set_presence(&agent, presence, now, out)
                    .map_err(|e| format!("agent {agent:?}: {e}"));
                let _ = reply.send(r);
            }
            Msg::EndWrapUp { agent, reply } => {
                let r = self
                    .desk
                    .end_wrap_up(&agent, now, out)
                    .map_err(|e| format!("agent {agent:?}: {e}"));
                let _ = reply.send(r);
            }
            Msg::Touch { agent, came_online } => match self.store.agent(&agent) {
                Ok(Some(account)) => {
                    let presence = self
                        .store
                        .presence(&agent)
                        .ok()
                        .flatten()
                        .unwrap_or(Presence::LoggedOut);
                    let contact = seat_contact(&self.store, &agent, now_unix());
                    self.desk.upsert_agent(
                        spec_of(&account),
                        presence,
                        contact,
                        came_online,
                        now,
                        out,
                    );
                }
                Ok(None) => self.desk.remove_agent(&agent, now, out),
                Err(e) => tracing::error!(error = %e, agent, "cannot read agent account"),
            },
            Msg::Position { call, reply } => {
                let _ = reply.send(self.desk.position(call));
            }
            Msg::Views { reply } => {
                let mut agents = self.desk.agent_views(now);
                for agent in &mut agents {
                    agent.since = wall_of(agent.since);
                }
                let _ = reply.send((agents, self.desk.queue_views(now)));
            }
            Msg::SetQueue { name, rules } => self.desk.set_queue(&name, rules, now, out),
            Msg::RemoveQueue { name, reply } => {
                let _ = reply.send(self.desk.remove_queue(&name));
            }
        }
    }

    fn carry_out(&mut self, mut out: Vec<Output>) {
        while !out.is_empty() {
            let mut more = Vec::new();
            for o in out {
                match o {
                    Output::Ring {
                        call,
                        agents,
                        ring_timeout,
                    } => {
                        let sent = self.calls.get(&call).is_some_and(|tx| {
                            tx.send(ToCall::Ring {
                                agents,
                                ring_timeout: Duration::from_millis(ring_timeout),
                            })
                            .is_ok()
                        });
                        if !sent {
                            // The call is gone: its agents are free again.
                            self.calls.remove(&call);
                            self.desk
                                .leave(call, HungUp::Caller, steady_ms(), &mut more);
                        }
                    }
                    Output::Exit { call, reason } => {
                        if let Some(tx) = self.calls.remove(&call) {
                            let _ = tx.send(ToCall::Exit(reason));
                        }
                    }
                    Output::Log(mut line) => {
                        line.at = wall_of(line.at);
                        tracing::info!(event = %line.event, queue = %line.queue, agent = %line.agent, call_id = %line.call_id, data = ?line.event.fields(), "queue");
                        self.records.log(line);
                    }
                    Output::Persist { agent, presence } => {
                        if let Err(e) = self.store.put_presence(&agent, &presence) {
                            tracing::error!(error = %e, agent, "cannot save agent presence");
                        }
                    }
                }
            }
            out = more;
        }
    }
}

async fn sleep_opt(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

//! The queue desk: the one owner of every agent's state and every waiting caller.
//!
//! Room: the ACD, sans-IO. [`Desk`] is a plain state machine: it is told
//! what happened (a caller entered, an agent did not answer, a call ended,
//! an agent paused, the clock reached a deadline) with the time in
//! milliseconds on a clock that only moves on (the actor gives it
//! `clock::steady_ms`, and turns the times it writes down into wall time),
//! and it answers with [`Output`]s (ring these agents, this
//! caller leaves the line, a queue_log line, a state to persist). It touches
//! no socket, no clock and no database, so a unit test drives every race
//! with a fake clock. The actor in `acd/mod.rs` feeds it and carries its
//! outputs out; calls talk to it only through that actor, so an agent can
//! never be offered two calls, and no caller can be forgotten in a line.
//!
//! Choosing is O(log agents): each queue keeps its free members in a
//! `BTreeSet` ordered by (level, strategy key, id) and its callers in one
//! ordered by (priority rank, arrival); an agent's state change moves it in
//! or out of the sets of its own queues only.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use super::queue_log::LogLine;
use super::queue_log::{LeftLine, QueueEvent, Talk};
use super::SeatContact;
use crate::config::{EmptyWhen, Strategy};
use crate::store::{Presence, Rank};

/// A caller's ticket number at the desk.
pub type CallRef = u64;

/// Callers looked at per dispatch when the first ones cannot take the free
/// agents (they rang them moments ago); later callers get them in turn.
const DISPATCH_SCAN: usize = 64;
/// Agents rung at once by `ring-all`.
const RING_ALL_MAX: usize = 64;
/// Abandoned callers remembered for `resume_window`.
const RESUME_MAX: usize = 10_000;

/// A queue's rules, in milliseconds.
#[derive(Debug, Clone)]
pub struct Rules {
    /// How agents are chosen.
    pub strategy: Strategy,
    /// Ring time per offer.
    pub ring_timeout: u64,
    /// Wrap-up after each call (an agent may override it).
    pub wrap_up: u64,
    /// Longest wait in line (0: no limit).
    pub max_wait: u64,
    /// Most callers in line (0: no limit).
    pub max_waiting: usize,
    /// A caller may not join while every member is in one of these.
    pub join_empty: Vec<EmptyWhen>,
    /// Waiting callers leave when every member falls into one of these.
    pub leave_empty: Vec<EmptyWhen>,
    /// Before an agent who missed a caller is offered that caller again.
    pub retry: u64,
    /// Consecutive misses before the agent is put on break (0: never).
    pub max_no_answer: u32,
    /// Skills: wait per level step (0: pure tiers).
    pub tier_wait: u64,
    /// An abandoning caller who calls again within this gets their old place (0: off).
    pub resume_window: u64,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            strategy: Strategy::LongestIdle,
            ring_timeout: 15_000,
            wrap_up: 0,
            max_wait: 0,
            max_waiting: 0,
            join_empty: vec![EmptyWhen::Unavailable],
            leave_empty: Vec::new(),
            retry: 5_000,
            max_no_answer: 3,
            tier_wait: 0,
            resume_window: 0,
        }
    }
}

/// What the agent is doing (never persisted: calls do not survive a restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Idle,
    Reserved(CallRef),
    OnCall(CallRef),
    WrapUp(u64),
}

/// For join/leave-empty counts: one bucket per agent per queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bucket {
    Free = 0,
    Unavailable = 1,
    Paused = 2,
    Inuse = 3,
    Ringing = 4,
    Wrapup = 5,
}

impl Bucket {
    fn matches(self, when: EmptyWhen) -> bool {
        matches!(
            (self, when),
            (Bucket::Unavailable, EmptyWhen::Unavailable)
                | (Bucket::Paused, EmptyWhen::Paused)
                | (Bucket::Inuse, EmptyWhen::Inuse)
                | (Bucket::Ringing, EmptyWhen::Ringing)
                | (Bucket::Wrapup, EmptyWhen::Wrapup)
        )
    }
}

/// An agent's account as the desk needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    /// Agent id.
    pub id: String,
    /// (queue, level): level 1 is the first tier (penalty 0 in Asterisk terms).
    pub queues: Vec<(String, u32)>,
    /// Wrap-up overriding the queues' (ms).
    pub wrap_up: Option<u64>,
    /// A fresh registration logs the agent in.
    pub auto_login: bool,
}

#[derive(Debug)]
struct Member {
    queue: usize,
    level: u32,
    /// Key in the queue's free set while the agent is in it.
    key: Option<FreeKey>,
    bucket: Bucket,
    calls: u64,
}

type FreeKey = (u32, u64, Arc<str>);

#[derive(Debug)]
struct Agent {
    id: Arc<str>,
    spec: AgentSpec,
    presence: Presence,
    work: Work,
    contact: Option<SeatContact>,
    contact_expires: u64,
    idle_since: u64,
    misses: u32,
    last_offer: u64,
    members: Vec<Member>,
    /// When the current offer or call started (for RINGNOANSWER and CONNECT).
    work_since: u64,
    /// The state last shown ([`Agent::state_name`]) and since when (the
    /// desk's ms): a wallboard's "time in state".
    shown: (&'static str, u64),
}

impl Agent {
    fn reachable(&self, now: u64) -> bool {
        self.contact.is_some() && self.contact_expires > now
    }

    fn bucket(&self, now: u64) -> Bucket {
        match (&self.work, &self.presence) {
            (Work::Reserved(_), _) => Bucket::Ringing,
            (Work::OnCall(_), _) => Bucket::Inuse,
            (Work::WrapUp(_), _) => Bucket::Wrapup,
            (Work::Idle, Presence::LoggedOut) => Bucket::Unavailable,
            (Work::Idle, _) if !self.reachable(now) => Bucket::Unavailable,
            (Work::Idle, Presence::OnBreak(_)) => Bucket::Paused,
            (Work::Idle, Presence::Available) => Bucket::Free,
        }
    }

    /// The state name shown to people.
    fn state_name(&self) -> &'static str {
        match (&self.work, &self.presence) {
            (Work::Reserved(_), _) => "ringing",
            (Work::OnCall(_), _) => "on-call",
            (Work::WrapUp(_), _) => "wrap-up",
            (Work::Idle, Presence::LoggedOut) => "logged-out",
            (Work::Idle, Presence::OnBreak(_)) => "on-break",
            (Work::Idle, Presence::Available) => "available",
        }
    }
}

/// A caller joining a queue.
#[derive(Debug, Clone)]
pub struct Joining {
    /// Ticket.
    pub call: CallRef,
    /// The caller's SIP Call-ID (for the queue log).
    pub call_id: String,
    /// Queue name.
    pub queue: String,
    /// Priority.
    pub rank: Rank,
    /// Calling number (for returning callers).
    pub number: String,
    /// A booked callback (the caller hung up and is called back when their
    /// turn comes): it waits without `max_wait`, `join_empty` or `leave_empty`.
    pub callback: bool,
}

type LineKey = (Rank, u64, CallRef);

#[derive(Debug)]
struct Caller {
    call_id: String,
    queue: usize,
    key: LineKey,
    number: String,
    entered: u64,
    first_position: usize,
    /// Agents being rung for this caller (empty: waiting).
    ringing: Vec<Arc<str>>,
    /// Agents who missed this caller, and until when they are not offered it again.
    tried: Vec<(Arc<str>, u64)>,
    /// max_wait passed while agents rang; leaves if none answers.
    timed_out: bool,
    /// A booked callback: patient, whatever the queue's limits.
    callback: bool,
}

#[derive(Debug)]
struct Connected {
    call_id: String,
    queue: usize,
    agent: Arc<str>,
    entered: u64,
    answered: u64,
    first_position: usize,
    /// Reached by name, not through the line: no queue-log lines.
    direct: bool,
}

impl Connected {
    /// The call's figures when it ends (or is transferred) at `now`.
    fn talk(&self, now: u64) -> Talk {
        Talk {
            hold_s: self.answered.saturating_sub(self.entered) / 1000,
            talk_s: now.saturating_sub(self.answered) / 1000,
            first_position: self.first_position,
        }
    }
}

/// A call offered to one agent by name (a transfer, a consultation), not
/// through a line.
#[derive(Debug)]
struct Direct {
    call_id: String,
    queue: usize,
    agent: Arc<str>,
    since: u64,
}

/// Why an agent cannot be claimed by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimRefusal {
    /// No such agent.
    UnknownAgent,
    /// The agent is not free (the state they are in).
    Busy(&'static str),
    /// The agent is in no queue (nothing to account the call to).
    NoQueue,
}

impl std::fmt::Display for ClaimRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimRefusal::UnknownAgent => write!(f, "no such agent"),
            ClaimRefusal::Busy(state) => write!(f, "agent is {state}"),
            ClaimRefusal::NoQueue => write!(f, "agent is in no queue"),
        }
    }
}

#[derive(Debug)]
struct Queue {
    name: String,
    rules: Rules,
    /// Everyone in line, in order.
    line: BTreeSet<LineKey>,
    /// Those in line not being rung now.
    ready: BTreeSet<LineKey>,
    /// Members who could take a call now.
    free: BTreeSet<FreeKey>,
    members: u32,
    buckets: [u32; 6],
    /// Recent hold time (answered callers), ms, Asterisk-style (3×old+new)/4.
    hold_ewma: u64,
    /// Removed by an admin: no longer found by name, kept only so indexes
    /// held elsewhere stay valid (it has no members and no callers).
    retired: bool,
}

impl Queue {
    fn empty_by(&self, when: &[EmptyWhen]) -> bool {
        if when.is_empty() {
            return false;
        }
        let stuck: u32 = [
            Bucket::Unavailable,
            Bucket::Paused,
            Bucket::Inuse,
            Bucket::Ringing,
            Bucket::Wrapup,
        ]
        .iter()
        .filter(|b| when.iter().any(|w| b.matches(*w)))
        .map(|b| self.buckets[*b as usize])
        .sum();
        stuck >= self.members
    }

    fn strategy_key(&self, agent: &Agent, member: &Member) -> u64 {
        match self.rules.strategy {
            Strategy::LongestIdle | Strategy::Skills => agent.idle_since,
            Strategy::RoundRobin => agent.last_offer,
            Strategy::FewestCalls => member.calls,
            Strategy::Linear | Strategy::RingAll => 0,
        }
    }
}

/// Why a caller could not join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such queue.
    UnknownQueue,
    /// `max_waiting` callers already wait.
    Full,
    /// Every member is in a `join_empty` condition.
    Empty,
}

/// Why a waiting caller leaves the line without an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// `max_wait` passed.
    Timeout,
    /// Every member fell into a `leave_empty` condition.
    Empty,
}

/// How an offer to an agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferOutcome {
    /// 2xx: the caller is connected.
    Answered,
    /// Rang out `ring_timeout`.
    NoAnswer,
    /// 486/603/other final refusal.
    Declined,
    /// Transport failure, Timer B, or a 2xx we could not use.
    Unreachable,
    /// We could not place the offer (no RTP port): not the agent's miss.
    LocalFailure,
}

/// Who ended a connected call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HungUp {
    /// The caller (or the trunk).
    Caller,
    /// The agent.
    Agent,
}

/// What the desk wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Ring these agents for this caller (several only under ring-all).
    Ring {
        /// Ticket.
        call: CallRef,
        /// Where.
        agents: Vec<SeatContact>,
        /// For how long (ms).
        ring_timeout: u64,
    },
    /// The caller leaves the line without an agent.
    Exit {
        /// Ticket.
        call: CallRef,
        /// Why.
        reason: ExitReason,
    },
    /// Append to the queue log.
    Log(LogLine),
    /// Persist an agent's presence.
    Persist {
        /// Agent.
        agent: String,
        /// Presence.
        presence: Presence,
    },
}

/// An agent as shown by `agents list` and status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentView {
    /// Id.
    pub id: String,
    /// logged-out, available, on-break, ringing, on-call, wrap-up.
    pub state: &'static str,
    /// Break reason.
    pub reason: Option<String>,
    /// Has a live registration.
    pub registered: bool,
    /// Consecutive missed offers.
    pub misses: u32,
    /// Queues and levels.
    pub queues: Vec<(String, u32)>,
    /// When the agent entered `state` (the desk's ms; Unix ms once the
    /// actor hands the view out).
    pub since: u64,
}

/// A queue as shown by status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueView {
    /// Name.
    pub name: String,
    /// Strategy.
    pub strategy: &'static str,
    /// Callers in line (including those being rung).
    pub waiting: usize,
    /// Members free now.
    pub free: usize,
    /// Members.
    pub members: u32,
    /// Longest current wait, ms.
    pub longest_wait_ms: u64,
    /// Recent hold time, ms.
    pub hold_estimate_ms: u64,
    /// Members being rung.
    pub ringing: u32,
    /// Members on a call.
    pub on_call: u32,
    /// Members in wrap-up.
    pub wrap_up: u32,
    /// Members on a break.
    pub on_break: u32,
    /// Members logged out, or with no live registration.
    pub unavailable: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    WrapUp(Arc<str>),
    MaxWait(CallRef),
    Redispatch(usize),
    ContactExpiry(Arc<str>),
}

/// Errors from agent commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeskError {
    /// No such agent.
    UnknownAgent,
    /// The agent is not in wrap-up.
    NotInWrapUp,
}

impl std::fmt::Display for DeskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeskError::UnknownAgent => f.write_str("no such agent"),
            DeskError::NotInWrapUp => f.write_str("the agent is not in wrap-up"),
        }
    }
}

/// The ACD state machine.
#[derive(Debug, Default)]
pub struct Desk {
    queues: Vec<Queue>,
    queue_index: HashMap<String, usize>,
    agents: HashMap<Arc<str>, Agent>,
    callers: HashMap<CallRef, Caller>,
    connected: HashMap<CallRef, Connected>,
    direct: HashMap<CallRef, Direct>,
    timers: BinaryHeap<Reverse<(u64, Timer)>>,
    /// Arrival counter: a caller's place in every line.
    seq: u64,
    /// Offer counter (round-robin memory).
    offers: u64,
    /// (queue, number) → (place, when they left), for returning callers.
    resume: HashMap<(usize, String), (Rank, u64, u64)>,
    resume_order: VecDeque<(u64, usize, String)>,
    /// Queues whose members changed buckets during the current input.
    touched: Vec<usize>,
}

impl Desk {
    /// A desk with these queues.
    pub fn new(queues: impl IntoIterator<Item = (String, Rules)>) -> Desk {
        let mut desk = Desk::default();
        for (name, rules) in queues {
            desk.add_queue(name, rules);
        }
        desk
    }

    fn add_queue(&mut self, name: String, rules: Rules) -> usize {
        let qi = self.queues.len();
        self.queue_index.insert(name.clone(), qi);
        self.queues.push(Queue {
            name,
            rules,
            line: BTreeSet::new(),
            ready: BTreeSet::new(),
            free: BTreeSet::new(),
            members: 0,
            buckets: [0; 6],
            hold_ewma: 0,
            retired: false,
        });
        qi
    }

    /// Adds a queue, or gives one new rules (its callers stay in line;
    /// the next offer follows the new rules). Agents whose accounts name
    /// it are its members at once.
    pub fn set_queue(&mut self, name: &str, rules: Rules, now: u64, out: &mut Vec<Output>) {
        match self.queue_index.get(name) {
            Some(&qi) => self.queues[qi].rules = rules,
            None => {
                self.add_queue(name.to_string(), rules);
            }
        }
        // Membership keys depend on the strategy: join afresh.
        let named: Vec<(Arc<str>, AgentSpec)> = self
            .agents
            .values()
            .filter(|a| a.spec.queues.iter().any(|(q, _)| q == name))
            .map(|a| (a.id.clone(), a.spec.clone()))
            .collect();
        for (id, spec) in &named {
            self.set_members(id, spec, now);
            self.refresh(id, now);
        }
        for (id, _) in &named {
            self.agent_free(id, now, out);
        }
        self.settle(now, out);
    }

    /// Removes a queue nobody waits in and no agent serves; the refusal
    /// says which.
    pub fn remove_queue(&mut self, name: &str) -> Result<(), String> {
        let Some(&qi) = self.queue_index.get(name) else {
            return Ok(());
        };
        let q = &self.queues[qi];
        if !q.line.is_empty() {
            return Err(format!(
                "queue `{name}` has {} caller(s) waiting; remove it when they are served",
                q.line.len()
            ));
        }
        if q.members > 0 {
            return Err(format!(
                "queue `{name}` still has {} member agent(s)",
                q.members
            ));
        }
        self.queue_index.remove(name);
        self.queues[qi].retired = true;
        Ok(())
    }

    /// A queue's rules.
    pub fn rules(&self, queue: &str) -> Option<&Rules> {
        self.queue_index.get(queue).map(|&q| &self.queues[q].rules)
    }

    /// The earliest deadline the desk waits for.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    fn timer(&mut self, at: u64, timer: Timer) {
        self.timers.push(Reverse((at, timer)));
    }

    fn log(
        out: &mut Vec<Output>,
        at: u64,
        call_id: &str,
        queue: &str,
        agent: &str,
        event: QueueEvent,
    ) {
        out.push(Output::Log(LogLine {
            at,
            call_id: call_id.to_string(),
            queue: queue.to_string(),
            agent: agent.to_string(),
            event,
        }));
    }

    // ----- agents -------------------------------------------------------

    /// Adds or updates an agent's account and registration. `presence` is
    /// used for a new agent (what the store kept); `came_online` says a
    /// REGISTER just took the agent from no live contact to one (the
    /// registrar knows; an `auto_login` account logs in then).
    pub fn upsert_agent(
        &mut self,
        spec: AgentSpec,
        presence: Presence,
        contact: Option<(SeatContact, u64)>,
        came_online: bool,
        now: u64,
        out: &mut Vec<Output>,
    ) {
        let id: Arc<str> = Arc::from(spec.id.as_str());
        if !self.agents.contains_key(&id) {
            self.agents.insert(
                id.clone(),
                Agent {
                    id: id.clone(),
                    spec: spec.clone(),
                    presence,
                    work: Work::Idle,
                    contact: None,
                    contact_expires: 0,
                    idle_since: now,
                    misses: 0,
                    last_offer: 0,
                    members: Vec::new(),
                    work_since: now,
                    shown: ("", now),
                },
            );
        }
        // Leave the old memberships, then join the new ones.
        self.set_members(&id, &spec, now);
        if let Some(agent) = self.agents.get_mut(&id) {
            agent.spec = spec;
            match contact {
                Some((c, expires)) if expires > now => {
                    agent.contact = Some(c);
                    agent.contact_expires = expires;
                    self.timers
                        .push(Reverse((expires, Timer::ContactExpiry(id.clone()))));
                }
                _ => {
                    agent.contact = None;
                    agent.contact_expires = 0;
                }
            }
        }
        let login = self.agents.get(&id).is_some_and(|a| {
            came_online
                && a.reachable(now)
                && a.spec.auto_login
                && a.presence == Presence::LoggedOut
        });
        if login {
            self.change_presence(&id, Presence::Available, now, out);
        }
        self.refresh(&id, now);
        self.agent_free(&id, now, out);
        self.settle(now, out);
    }

    fn set_members(&mut self, id: &Arc<str>, spec: &AgentSpec, now: u64) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        for m in agent.members.drain(..) {
            let q = &mut self.queues[m.queue];
            if let Some(k) = m.key {
                q.free.remove(&k);
            }
            q.members -= 1;
            q.buckets[m.bucket as usize] -= 1;
            self.touched.push(m.queue);
        }
        let bucket = agent.bucket(now);
        for (queue, level) in &spec.queues {
            let Some(&qi) = self.queue_index.get(queue) else {
                continue;
            };
            if agent.members.iter().any(|m| m.queue == qi) {
                continue;
            }
            let q = &mut self.queues[qi];
            q.members += 1;
            q.buckets[bucket as usize] += 1;
            agent.members.push(Member {
                queue: qi,
                level: (*level).max(1),
                key: None,
                bucket,
                calls: 0,
            });
            self.touched.push(qi);
        }
    }

    /// Removes an agent (account deleted). A call in progress goes on; the
    /// desk just forgets the agent.
    pub fn remove_agent(&mut self, id: &str, now: u64, out: &mut Vec<Output>) {
        let id: Arc<str> = Arc::from(id);
        let empty = AgentSpec {
            id: id.to_string(),
            queues: Vec::new(),
            wrap_up: None,
            auto_login: false,
        };
        self.set_members(&id, &empty, now);
        self.agents.remove(&id);
        self.settle(now, out);
    }

    /// Sets an agent's presence (feature code, CLI, or the desk itself).
    pub fn set_presence(
        &mut self,
        id: &str,
        presence: Presence,
        now: u64,
        out: &mut Vec<Output>,
    ) -> Result<(), DeskError> {
        let id: Arc<str> = Arc::from(id);
        if !self.agents.contains_key(&id) {
            return Err(DeskError::UnknownAgent);
        }
        self.change_presence(&id, presence, now, out);
        self.refresh(&id, now);
        self.agent_free(&id, now, out);
        self.settle(now, out);
        Ok(())
    }

    /// Ends an agent's wrap-up early (`*24`).
    pub fn end_wrap_up(
        &mut self,
        id: &str,
        now: u64,
        out: &mut Vec<Output>,
    ) -> Result<(), DeskError> {
        let id: Arc<str> = Arc::from(id);
        let agent = self.agents.get_mut(&id).ok_or(DeskError::UnknownAgent)?;
        if !matches!(agent.work, Work::WrapUp(_)) {
            return Err(DeskError::NotInWrapUp);
        }
        agent.work = Work::Idle;
        agent.idle_since = now;
        self.refresh(&id, now);
        self.agent_free(&id, now, out);
        self.settle(now, out);
        Ok(())
    }

    fn change_presence(
        &mut self,
        id: &Arc<str>,
        presence: Presence,
        now: u64,
        out: &mut Vec<Output>,
    ) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        if agent.presence == presence {
            return;
        }
        let old = std::mem::replace(&mut agent.presence, presence.clone());
        if presence == Presence::Available {
            agent.misses = 0;
            if agent.work == Work::Idle {
                agent.idle_since = now;
            }
        }
        let event = match (&old, &presence) {
            (Presence::LoggedOut, _) if presence != Presence::LoggedOut => QueueEvent::AgentLogin,
            (_, Presence::LoggedOut) => QueueEvent::AgentLogoff,
            (_, Presence::OnBreak(reason)) => QueueEvent::Pause {
                reason: reason.clone(),
            },
            _ => QueueEvent::Unpause,
        };
        Self::log(out, now, "NONE", "NONE", id, event);
        // A login that lands on a break logs both.
        if old == Presence::LoggedOut {
            if let Presence::OnBreak(reason) = &presence {
                let pause = QueueEvent::Pause {
                    reason: reason.clone(),
                };
                Self::log(out, now, "NONE", "NONE", id, pause);
            }
        }
        out.push(Output::Persist {
            agent: id.to_string(),
            presence,
        });
    }

    /// Recomputes an agent's bucket and free-set keys in each of its queues.
    fn refresh(&mut self, id: &Arc<str>, now: u64) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        let bucket = agent.bucket(now);
        let name = agent.state_name();
        if agent.shown.0 != name {
            agent.shown = (name, now);
        }
        let mut members = std::mem::take(&mut agent.members);
        for m in &mut members {
            let q = &mut self.queues[m.queue];
            if m.bucket != bucket {
                q.buckets[m.bucket as usize] -= 1;
                q.buckets[bucket as usize] += 1;
                m.bucket = bucket;
                self.touched.push(m.queue);
            }
            let key = (bucket == Bucket::Free)
                .then(|| (m.level, q.strategy_key(agent, m), agent.id.clone()));
            if m.key != key {
                if let Some(k) = m.key.take() {
                    q.free.remove(&k);
                }
                if let Some(k) = &key {
                    q.free.insert(k.clone());
                }
                m.key = key;
            }
        }
        agent.members = members;
    }

    /// The agent may have become free: give them the best caller of their queues.
    fn agent_free(&mut self, id: &Arc<str>, now: u64, out: &mut Vec<Output>) {
        let Some(agent) = self.agents.get(id) else {
            return;
        };
        if agent.bucket(now) != Bucket::Free {
            return;
        }
        // The best ready caller across the agent's queues that may take them:
        // highest rank, then earliest arrival.
        let mut best: Option<(LineKey, usize)> = None;
        for m in &agent.members {
            let q = &self.queues[m.queue];
            for key in q.ready.iter().take(DISPATCH_SCAN) {
                let Some(caller) = self.callers.get(&key.2) else {
                    continue;
                };
                if self.may_offer(q, caller, m.level, id, now, false) {
                    if best
                        .as_ref()
                        .is_none_or(|(b, _)| (key.0, key.1) < (b.0, b.1))
                    {
                        best = Some((*key, m.queue));
                    }
                    break;
                }
            }
        }
        if let Some((key, q)) = best {
            // Ring-all takes every free member, not just this one.
            let agents = if self.queues[q].rules.strategy == Strategy::RingAll {
                let caller = &self.callers[&key.2];
                self.pick(q, caller, now)
            } else {
                vec![id.clone()]
            };
            if !agents.is_empty() {
                self.ring(key.2, agents, now, out);
            }
        }
    }

    /// Whether `agent` (at `level`) may be offered `caller` now: not within
    /// `retry` of missing them, and with tiers, only once its level is open.
    /// `untried_only` also skips agents who missed this caller at all.
    fn may_offer(
        &self,
        q: &Queue,
        caller: &Caller,
        level: u32,
        agent: &Arc<str>,
        now: u64,
        untried_only: bool,
    ) -> bool {
        if caller
            .tried
            .iter()
            .any(|(a, until)| a == agent && *until > now)
        {
            return false;
        }
        if untried_only && caller.tried.iter().any(|(a, _)| a == agent) {
            return false;
        }
        if q.rules.strategy == Strategy::Skills && q.rules.tier_wait > 0 {
            let waited = now.saturating_sub(caller.entered);
            if u64::from(level - 1) * q.rules.tier_wait > waited {
                return false;
            }
        }
        true
    }

    /// The agents to ring for `caller` in queue `q` now (empty: none).
    /// Agents who have not missed this caller come first; those who did are
    /// offered again only when nobody else is free (after `retry`).
    fn pick(&self, q: usize, caller: &Caller, now: u64) -> Vec<Arc<str>> {
        let first = self.pick_pass(q, caller, now, true);
        if first.is_empty() && !caller.tried.is_empty() {
            return self.pick_pass(q, caller, now, false);
        }
        first
    }

    fn pick_pass(&self, q: usize, caller: &Caller, now: u64, untried_only: bool) -> Vec<Arc<str>> {
        let queue = &self.queues[q];
        let all = queue.rules.strategy == Strategy::RingAll;
        let mut chosen = Vec::new();
        for (level, _, id) in &queue.free {
            if !self.may_offer(queue, caller, *level, id, now, untried_only) {
                // Tiers are ordered: a level not yet open closes all above it.
                if queue.rules.strategy == Strategy::Skills
                    && queue.rules.tier_wait > 0
                    && u64::from(level - 1) * queue.rules.tier_wait
                        > now.saturating_sub(caller.entered)
                {
                    break;
                }
                continue;
            }
            if !self.agents.get(id).is_some_and(|a| a.reachable(now)) {
                continue;
            }
            chosen.push(id.clone());
            if !all || chosen.len() >= RING_ALL_MAX {
                break;
            }
        }
        chosen
    }

    /// Offers waiting callers of queue `q` to its free agents while both exist.
    fn dispatch(&mut self, q: usize, now: u64, out: &mut Vec<Output>) {
        loop {
            if self.queues[q].free.is_empty() {
                return;
            }
            let mut found = None;
            for key in self.queues[q].ready.iter().take(DISPATCH_SCAN) {
                let Some(caller) = self.callers.get(&key.2) else {
                    continue;
                };
                let agents = self.pick(q, caller, now);
                if !agents.is_empty() {
                    found = Some((key.2, agents));
                    break;
                }
            }
            let Some((call, agents)) = found else {
                return;
            };
            self.ring(call, agents, now, out);
        }
    }

    fn ring(&mut self, call: CallRef, agents: Vec<Arc<str>>, now: u64, out: &mut Vec<Output>) {
        let Some(caller) = self.callers.get_mut(&call) else {
            return;
        };
        let q = caller.queue;
        self.queues[q].ready.remove(&caller.key);
        caller.ringing = agents.clone();
        let mut contacts = Vec::with_capacity(agents.len());
        for id in &agents {
            self.offers += 1;
            if let Some(agent) = self.agents.get_mut(id) {
                agent.work = Work::Reserved(call);
                agent.work_since = now;
                agent.last_offer = self.offers;
                if let Some(c) = &agent.contact {
                    contacts.push(c.clone());
                }
            }
            self.refresh(id, now);
        }
        out.push(Output::Ring {
            call,
            agents: contacts,
            ring_timeout: self.queues[q].rules.ring_timeout,
        });
    }

    // ----- callers ------------------------------------------------------

    /// A caller asks to join a queue. On success returns their position (1 = next).
    pub fn enter(
        &mut self,
        joining: Joining,
        now: u64,
        out: &mut Vec<Output>,
    ) -> Result<usize, Refusal> {
        let q = *self
            .queue_index
            .get(&joining.queue)
            .ok_or(Refusal::UnknownQueue)?;
        let queue = &self.queues[q];
        if queue.rules.max_waiting > 0 && queue.line.len() >= queue.rules.max_waiting {
            return Err(Refusal::Full);
        }
        if !joining.callback && queue.empty_by(&queue.rules.join_empty) {
            return Err(Refusal::Empty);
        }
        // A returning caller takes back the place they left.
        let window = queue.rules.resume_window;
        let resumed = if window > 0 {
            self.resume
                .remove(&(q, joining.number.clone()))
                .filter(|(_, _, left)| now.saturating_sub(*left) <= window)
        } else {
            None
        };
        let key = match resumed {
            Some((rank, seq, _)) => (rank.min(joining.rank), seq, joining.call),
            None => {
                self.seq += 1;
                (joining.rank, self.seq, joining.call)
            }
        };
        let queue = &mut self.queues[q];
        queue.line.insert(key);
        queue.ready.insert(key);
        let position = queue.line.range(..key).count() + 1;
        let max_wait = queue.rules.max_wait;
        let name = queue.name.clone();
        Self::log(
            out,
            now,
            &joining.call_id,
            &name,
            "NONE",
            QueueEvent::EnterQueue {
                caller: joining.number.clone(),
                position,
                resumed: resumed.is_some(),
            },
        );
        self.callers.insert(
            joining.call,
            Caller {
                call_id: joining.call_id,
                queue: q,
                key,
                number: joining.number,
                entered: now,
                first_position: position,
                ringing: Vec::new(),
                tried: Vec::new(),
                timed_out: false,
                callback: joining.callback,
            },
        );
        if max_wait > 0 && !joining.callback {
            self.timer(now + max_wait, Timer::MaxWait(joining.call));
        }
        // Skills with tier_wait: look again as each higher level opens.
        let rules = &self.queues[q].rules;
        if rules.strategy == Strategy::Skills && rules.tier_wait > 0 {
            let step = rules.tier_wait;
            let top = self
                .agents
                .values()
                .flat_map(|a| a.members.iter())
                .filter(|m| m.queue == q)
                .map(|m| m.level)
                .max()
                .unwrap_or(1)
                .min(10);
            for level in 2..=top {
                self.timer(now + u64::from(level - 1) * step, Timer::Redispatch(q));
            }
        }
        self.dispatch(q, now, out);
        self.settle(now, out);
        Ok(position)
    }

    /// A caller's position (1 = next) and the queue's recent hold time (ms).
    pub fn position(&self, call: CallRef) -> Option<(usize, u64)> {
        let caller = self.callers.get(&call)?;
        let q = &self.queues[caller.queue];
        Some((q.line.range(..caller.key).count() + 1, q.hold_ewma))
    }

    /// How an offer ended.
    pub fn offer_result(
        &mut self,
        call: CallRef,
        agent_id: &str,
        outcome: OfferOutcome,
        now: u64,
        out: &mut Vec<Output>,
    ) {
        let id: Arc<str> = Arc::from(agent_id);
        let reserved_here = self
            .agents
            .get(&id)
            .is_some_and(|a| a.work == Work::Reserved(call));
        if self.direct.get(&call).is_some_and(|d| d.agent == id) {
            if reserved_here {
                self.direct_result(call, outcome, now, out);
            }
            return;
        }
        let Some(caller) = self.callers.get_mut(&call) else {
            // The caller already left (their hang-up crossed the agent's
            // answer); the agent's state was settled then.
            return;
        };
        if !reserved_here || !caller.ringing.contains(&id) {
            return;
        }
        let q = caller.queue;
        let ring_ms = self
            .agents
            .get(&id)
            .map_or(0, |a| now.saturating_sub(a.work_since));
        let queue_name = self.queues[q].name.clone();
        match outcome {
            OfferOutcome::Answered => {
                let Some(caller) = self.callers.remove(&call) else {
                    return;
                };
                let queue = &mut self.queues[q];
                queue.line.remove(&caller.key);
                queue.ready.remove(&caller.key);
                let hold = now.saturating_sub(caller.entered);
                queue.hold_ewma = if queue.hold_ewma == 0 {
                    hold
                } else {
                    (queue.hold_ewma * 3 + hold) / 4
                };
                // Ring-all: the others stop ringing (the call cancels them).
                for other in caller.ringing.iter().filter(|a| **a != id) {
                    if let Some(a) = self.agents.get_mut(other) {
                        if a.work == Work::Reserved(call) {
                            a.work = Work::Idle;
                        }
                    }
                    self.refresh(other, now);
                }
                if let Some(agent) = self.agents.get_mut(&id) {
                    agent.work = Work::OnCall(call);
                    agent.work_since = now;
                    agent.misses = 0;
                    if let Some(m) = agent.members.iter_mut().find(|m| m.queue == q) {
                        m.calls += 1;
                    }
                }
                self.refresh(&id, now);
                Self::log(
                    out,
                    now,
                    &caller.call_id,
                    &queue_name,
                    &id,
                    QueueEvent::Connect {
                        hold_s: hold / 1000,
                        bridged: caller.call_id.clone(),
                        ring_s: ring_ms / 1000,
                    },
                );
                self.connected.insert(
                    call,
                    Connected {
                        call_id: caller.call_id,
                        queue: q,
                        agent: id.clone(),
                        entered: caller.entered,
                        answered: now,
                        first_position: caller.first_position,
                        direct: false,
                    },
                );
                let others: Vec<Arc<str>> =
                    caller.ringing.into_iter().filter(|a| *a != id).collect();
                for other in others {
                    self.agent_free(&other, now, out);
                }
            }
            OfferOutcome::NoAnswer
            | OfferOutcome::Declined
            | OfferOutcome::Unreachable
            | OfferOutcome::LocalFailure => {
                let retry = self.queues[q].rules.retry;
                let max_no_answer = self.queues[q].rules.max_no_answer;
                caller.ringing.retain(|a| *a != id);
                caller.tried.retain(|(a, _)| *a != id);
                if caller.tried.len() >= RING_ALL_MAX {
                    caller.tried.remove(0);
                }
                caller.tried.push((id.clone(), now + retry));
                let still_ringing = !caller.ringing.is_empty();
                let timed_out = caller.timed_out;
                let call_id = caller.call_id.clone();
                let key = caller.key;
                Self::log(
                    out,
                    now,
                    &call_id,
                    &queue_name,
                    &id,
                    QueueEvent::RingNoAnswer { ring_ms },
                );
                let mut pause = false;
                if let Some(agent) = self.agents.get_mut(&id) {
                    agent.work = Work::Idle;
                    if matches!(outcome, OfferOutcome::NoAnswer | OfferOutcome::Unreachable) {
                        agent.misses += 1;
                        pause = max_no_answer > 0 && agent.misses >= max_no_answer;
                    }
                }
                if pause {
                    self.change_presence(&id, Presence::OnBreak("no-answer".into()), now, out);
                }
                self.refresh(&id, now);
                if !still_ringing {
                    if timed_out {
                        self.exit(call, ExitReason::Timeout, now, out);
                    } else {
                        self.queues[q].ready.insert(key);
                        self.timer(now + retry, Timer::Redispatch(q));
                    }
                }
                self.agent_free(&id, now, out);
                self.dispatch(q, now, out);
            }
        }
        self.settle(now, out);
    }

    /// The caller's call is over (hung up, cancelled, or ended after being
    /// connected). Idempotent: calling it for an unknown ticket does nothing.
    pub fn leave(&mut self, call: CallRef, by: HungUp, now: u64, out: &mut Vec<Output>) {
        if let Some(caller) = self.callers.remove(&call) {
            let q = caller.queue;
            let queue = &mut self.queues[q];
            let position = queue.line.range(..caller.key).count() + 1;
            queue.line.remove(&caller.key);
            queue.ready.remove(&caller.key);
            if queue.rules.resume_window > 0 {
                self.resume.insert(
                    (q, caller.number.clone()),
                    (caller.key.0, caller.key.1, now),
                );
                self.resume_order.push_back((now, q, caller.number.clone()));
                self.prune_resume(now);
            }
            let name = self.queues[q].name.clone();
            Self::log(
                out,
                now,
                &caller.call_id,
                &name,
                "NONE",
                QueueEvent::Abandon(LeftLine {
                    position,
                    first_position: caller.first_position,
                    wait_s: now.saturating_sub(caller.entered) / 1000,
                }),
            );
            for id in &caller.ringing {
                if let Some(a) = self.agents.get_mut(id) {
                    if a.work == Work::Reserved(call) {
                        a.work = Work::Idle;
                    }
                }
                self.refresh(id, now);
            }
            for id in &caller.ringing {
                self.agent_free(id, now, out);
            }
            self.settle(now, out);
            return;
        }
        if let Some(d) = self.direct.remove(&call) {
            self.unreserve(&d.agent, call, now, out);
            self.settle(now, out);
            return;
        }
        self.release_connected(
            call,
            |c, now| match by {
                HungUp::Caller => QueueEvent::CompleteCaller(c.talk(now)),
                HungUp::Agent => QueueEvent::CompleteAgent(c.talk(now)),
            },
            now,
            out,
        );
    }

    /// The agent of a connected call handed it on (`to`: the transfer
    /// target): TRANSFER in the queue log, and the agent goes to wrap-up.
    /// The call itself goes on, under another ticket.
    pub fn transferred(&mut self, call: CallRef, to: &str, now: u64, out: &mut Vec<Output>) {
        self.release_connected(
            call,
            |c, now| QueueEvent::Transfer {
                to: to.to_string(),
                talk: c.talk(now),
            },
            now,
            out,
        );
    }

    /// Ends a connected call at the desk: its queue-log line (made by
    /// `line`, except for calls reached by name), then wrap-up or idle.
    fn release_connected(
        &mut self,
        call: CallRef,
        line: impl FnOnce(&Connected, u64) -> QueueEvent,
        now: u64,
        out: &mut Vec<Output>,
    ) {
        let Some(c) = self.connected.remove(&call) else {
            return;
        };
        if !c.direct {
            let name = self.queues[c.queue].name.clone();
            let event = line(&c, now);
            Self::log(out, now, &c.call_id, &name, &c.agent, event);
        }
        let wrap_up_rule = self.queues[c.queue].rules.wrap_up;
        if let Some(agent) = self.agents.get_mut(&c.agent) {
            if agent.work == Work::OnCall(call) {
                let wrap = agent.spec.wrap_up.unwrap_or(wrap_up_rule);
                if wrap > 0 {
                    agent.work = Work::WrapUp(now + wrap);
                    self.timers
                        .push(Reverse((now + wrap, Timer::WrapUp(c.agent.clone()))));
                } else {
                    agent.work = Work::Idle;
                    agent.idle_since = now;
                }
            }
        }
        self.refresh(&c.agent, now);
        self.agent_free(&c.agent, now, out);
        self.settle(now, out);
    }

    /// A waiting caller books a callback: they keep their place but wait
    /// without the queue's limits. `false` if they are not waiting now (not
    /// in line, or an agent is being rung for them).
    pub fn to_callback(&mut self, call: CallRef, now: u64, out: &mut Vec<Output>) -> bool {
        let Some(caller) = self.callers.get_mut(&call) else {
            return false;
        };
        if !caller.ringing.is_empty() {
            return false;
        }
        caller.callback = true;
        let call_id = caller.call_id.clone();
        let name = self.queues[caller.queue].name.clone();
        let position = self.queues[caller.queue].line.range(..caller.key).count() + 1;
        Self::log(
            out,
            now,
            &call_id,
            &name,
            "NONE",
            QueueEvent::Callback { position },
        );
        true
    }

    /// Reserves `agent` for a call offered to them by name (a transfer, a
    /// consultation): only an available, idle, registered agent can be
    /// claimed. The call counts against `queue` if the agent is a member,
    /// else the agent's first queue (its wrap-up applies).
    pub fn claim(
        &mut self,
        call: CallRef,
        call_id: &str,
        agent: &str,
        queue: Option<&str>,
        now: u64,
    ) -> Result<SeatContact, ClaimRefusal> {
        let id: Arc<str> = Arc::from(agent);
        let a = self.agents.get(&id).ok_or(ClaimRefusal::UnknownAgent)?;
        if a.bucket(now) != Bucket::Free {
            return Err(ClaimRefusal::Busy(a.state_name()));
        }
        let contact = a
            .contact
            .clone()
            .ok_or(ClaimRefusal::Busy("unregistered"))?;
        let wanted = queue.and_then(|q| self.queue_index.get(q).copied());
        let q = a
            .members
            .iter()
            .map(|m| m.queue)
            .find(|q| Some(*q) == wanted)
            .or_else(|| a.members.first().map(|m| m.queue))
            .ok_or(ClaimRefusal::NoQueue)?;
        if let Some(a) = self.agents.get_mut(&id) {
            a.work = Work::Reserved(call);
            a.work_since = now;
        }
        self.refresh(&id, now);
        self.direct.insert(
            call,
            Direct {
                call_id: call_id.to_string(),
                queue: q,
                agent: id,
                since: now,
            },
        );
        Ok(contact)
    }

    /// How an offer to an agent claimed by name ended.
    fn direct_result(
        &mut self,
        call: CallRef,
        outcome: OfferOutcome,
        now: u64,
        out: &mut Vec<Output>,
    ) {
        let Some(d) = self.direct.remove(&call) else {
            return;
        };
        if outcome != OfferOutcome::Answered {
            // A transfer target not answering is not a queue miss.
            self.unreserve(&d.agent, call, now, out);
            self.settle(now, out);
            return;
        }
        if let Some(agent) = self.agents.get_mut(&d.agent) {
            agent.work = Work::OnCall(call);
            agent.work_since = now;
        }
        self.refresh(&d.agent, now);
        self.connected.insert(
            call,
            Connected {
                call_id: d.call_id,
                queue: d.queue,
                agent: d.agent,
                entered: d.since,
                answered: now,
                first_position: 0,
                direct: true,
            },
        );
        self.settle(now, out);
    }

    /// An agent reserved for `call` is idle again (and may take the next caller).
    fn unreserve(&mut self, id: &Arc<str>, call: CallRef, now: u64, out: &mut Vec<Output>) {
        if let Some(a) = self.agents.get_mut(id) {
            if a.work == Work::Reserved(call) {
                a.work = Work::Idle;
            }
        }
        self.refresh(id, now);
        self.agent_free(id, now, out);
    }

    /// The caller is taken out of the line without an agent.
    fn exit(&mut self, call: CallRef, reason: ExitReason, now: u64, out: &mut Vec<Output>) {
        let Some(caller) = self.callers.remove(&call) else {
            return;
        };
        let queue = &mut self.queues[caller.queue];
        let position = queue.line.range(..caller.key).count() + 1;
        queue.line.remove(&caller.key);
        queue.ready.remove(&caller.key);
        let name = queue.name.clone();
        Self::log(out, now, &caller.call_id, &name, "NONE", {
            let left = LeftLine {
                position,
                first_position: caller.first_position,
                wait_s: now.saturating_sub(caller.entered) / 1000,
            };
            match reason {
                ExitReason::Timeout => QueueEvent::ExitWithTimeout(left),
                ExitReason::Empty => QueueEvent::ExitEmpty(left),
            }
        });
        out.push(Output::Exit { call, reason });
    }

    fn prune_resume(&mut self, now: u64) {
        while let Some((at, q, number)) = self.resume_order.front().cloned() {
            let window = self.queues[q].rules.resume_window;
            if self.resume_order.len() <= RESUME_MAX && now.saturating_sub(at) <= window {
                break;
            }
            self.resume_order.pop_front();
            if self
                .resume
                .get(&(q, number.clone()))
                .is_some_and(|(_, _, left)| *left == at)
            {
                self.resume.remove(&(q, number));
            }
        }
    }

    /// After an input: callers of queues that became empty by `leave_empty` leave.
    fn settle(&mut self, now: u64, out: &mut Vec<Output>) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for q in touched {
            let queue = &self.queues[q];
            if !queue.empty_by(&queue.rules.leave_empty) {
                continue;
            }
            let leaving: Vec<CallRef> = queue
                .ready
                .iter()
                .map(|k| k.2)
                .filter(|c| self.callers.get(c).is_some_and(|c| !c.callback))
                .collect();
            for call in leaving {
                self.exit(call, ExitReason::Empty, now, out);
            }
        }
    }

    /// Fires every deadline up to `now`.
    pub fn tick(&mut self, now: u64, out: &mut Vec<Output>) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, timer))) = self.timers.pop() else {
                break;
            };
            match timer {
                Timer::WrapUp(id) => {
                    let due = self
                        .agents
                        .get(&id)
                        .is_some_and(|a| matches!(a.work, Work::WrapUp(until) if until <= now));
                    if due {
                        if let Some(a) = self.agents.get_mut(&id) {
                            a.work = Work::Idle;
                            a.idle_since = at;
                        }
                        self.refresh(&id, now);
                        self.agent_free(&id, now, out);
                    }
                }
                Timer::MaxWait(call) => {
                    let Some(caller) = self.callers.get_mut(&call).filter(|c| !c.callback) else {
                        continue;
                    };
                    if caller.ringing.is_empty() {
                        self.exit(call, ExitReason::Timeout, now, out);
                    } else {
                        // Let the ring finish: an answer still connects.
                        caller.timed_out = true;
                    }
                }
                Timer::Redispatch(q) => self.dispatch(q, now, out),
                Timer::ContactExpiry(id) => {
                    if self
                        .agents
                        .get(&id)
                        .is_some_and(|a| a.contact_expires <= now)
                    {
                        if let Some(a) = self.agents.get_mut(&id) {
                            a.contact = None;
                        }
                        self.refresh(&id, now);
                    }
                }
            }
        }
        self.settle(now, out);
    }

    // ----- views --------------------------------------------------------

    /// Every agent, by id.
    pub fn agent_views(&self, now: u64) -> Vec<AgentView> {
        let mut v: Vec<AgentView> = self
            .agents
            .values()
            .map(|a| AgentView {
                id: a.id.to_string(),
                state: a.state_name(),
                reason: match &a.presence {
                    Presence::OnBreak(r) => Some(r.clone()),
                    _ => None,
                },
                registered: a.reachable(now),
                misses: a.misses,
                queues: a
                    .members
                    .iter()
                    .map(|m| (self.queues[m.queue].name.clone(), m.level))
                    .collect(),
                since: a.shown.1,
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Every queue, in config order.
    pub fn queue_views(&self, now: u64) -> Vec<QueueView> {
        self.queues
            .iter()
            .filter(|q| !q.retired)
            .map(|q| QueueView {
                name: q.name.clone(),
                strategy: q.rules.strategy.name(),
                waiting: q.line.len(),
                free: q.free.len(),
                members: q.members,
                longest_wait_ms: q
                    .line
                    .iter()
                    .filter_map(|k| self.callers.get(&k.2))
                    .map(|c| now.saturating_sub(c.entered))
                    .max()
                    .unwrap_or(0),
                hold_estimate_ms: q.hold_ewma,
                ringing: q.buckets[Bucket::Ringing as usize],
                on_call: q.buckets[Bucket::Inuse as usize],
                wrap_up: q.buckets[Bucket::Wrapup as usize],
                on_break: q.buckets[Bucket::Paused as usize],
                unavailable: q.buckets[Bucket::Unavailable as usize],
            })
            .collect()
    }

    /// Checks the desk's own bookkeeping (for tests and `debug_assert`s):
    /// every bucket count and free set agrees with the agents.
    pub fn check_invariants(&self, now: u64) -> Result<(), String> {
        for (qi, q) in self.queues.iter().enumerate() {
            let mut buckets = [0u32; 6];
            let mut free = 0;
            let mut members = 0;
            for a in self.agents.values() {
                for m in a.members.iter().filter(|m| m.queue == qi) {
                    members += 1;
                    let b = a.bucket(now);
                    buckets[b as usize] += 1;
                    if b == Bucket::Free {
                        free += 1;
                        if !m.key.as_ref().is_some_and(|k| q.free.contains(k)) {
                            return Err(format!(
                                "{}: free agent {} not in the free set",
                                q.name, a.id
                            ));
                        }
                    }
                }
            }
            if free != q.free.len() || members != q.members || buckets != q.buckets {
                return Err(format!(
                    "{}: counts disagree (free {free}/{}, members {members}/{}, buckets {buckets:?}/{:?})",
                    q.name,
                    q.free.len(),
                    q.members,
                    q.buckets
                ));
            }
            if q.ready.iter().any(|k| !q.line.contains(k)) {
                return Err(format!("{}: a ready caller is not in line", q.name));
            }
        }
        let mut held: HashMap<&Arc<str>, CallRef> = HashMap::new();
        for (call, c) in &self.callers {
            for a in &c.ringing {
                if held.insert(a, *call).is_some() {
                    return Err(format!("agent {a} rung for two callers"));
                }
                if self.agents.get(a).map(|x| x.work) != Some(Work::Reserved(*call)) {
                    return Err(format!("agent {a} rung but not reserved"));
                }
            }
        }
        for a in self.agents.values() {
            if let Work::Reserved(call) = a.work {
                let by_name = self.direct.get(&call).is_some_and(|d| d.agent == a.id);
                if !by_name
                    && !self
                        .callers
                        .get(&call)
                        .is_some_and(|c| c.ringing.contains(&a.id))
                {
                    return Err(format!(
                        "agent {} reserved for a caller not ringing them",
                        a.id
                    ));
                }
            }
            if let Work::OnCall(call) = a.work {
                if self.connected.get(&call).map(|c| &c.agent) != Some(&a.id) {
                    return Err(format!("agent {} on a call the desk does not know", a.id));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{Peer, TransportKind};

    const S: u64 = 1000;

    fn contact(id: &str) -> SeatContact {
        SeatContact {
            agent: id.to_string(),
            uri: format!("sip:{id}@127.0.0.1:6000"),
            peer: Peer::new(
                "127.0.0.1:6000".parse().expect("addr"),
                TransportKind::Udp,
                0,
            ),
        }
    }

    fn rules(strategy: Strategy) -> Rules {
        Rules {
            strategy,
            ..Rules::default()
        }
    }

    fn desk(strategy: Strategy) -> Desk {
        desk_with(rules(strategy))
    }

    fn desk_with(rules: Rules) -> Desk {
        Desk::new([("main".to_string(), rules)])
    }

    /// Adds an available, registered agent at `now`.
    fn agent(d: &mut Desk, id: &str, level: u32, now: u64) -> Vec<Output> {
        let mut out = Vec::new();
        d.upsert_agent(
            AgentSpec {
                id: id.into(),
                queues: vec![("main".into(), level)],
                wrap_up: None,
                auto_login: true,
            },
            Presence::Available,
            Some((contact(id), now + 3600 * S)),
            false,
            now,
            &mut out,
        );
        out
    }

    fn caller(
        d: &mut Desk,
        call: CallRef,
        rank: Rank,
        now: u64,
    ) -> (Result<usize, Refusal>, Vec<Output>) {
        let mut out = Vec::new();
        let r = d.enter(
            Joining {
                call,
                call_id: format!("c{call}"),
                queue: "main".into(),
                rank,
                number: format!("1380000{call:04}"),
                callback: false,
            },
            now,
            &mut out,
        );
        (r, out)
    }

    fn rings(out: &[Output]) -> Vec<(CallRef, Vec<String>)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Ring { call, agents, .. } => {
                    Some((*call, agents.iter().map(|a| a.agent.clone()).collect()))
                }
                _ => None,
            })
            .collect()
    }

    fn events(out: &[Output]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Output::Log(l) => Some(format!("{} {}", l.event, l.agent)),
                _ => None,
            })
            .collect()
    }

    fn result(
        d: &mut Desk,
        call: CallRef,
        agent: &str,
        outcome: OfferOutcome,
        now: u64,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        d.offer_result(call, agent, outcome, now, &mut out);
        d.check_invariants(now).expect("invariants");
        out
    }

    fn leave(d: &mut Desk, call: CallRef, by: HungUp, now: u64) -> Vec<Output> {
        let mut out = Vec::new();
        d.leave(call, by, now, &mut out);
        d.check_invariants(now).expect("invariants");
        out
    }

    fn state(d: &Desk, id: &str) -> &'static str {
        d.agent_views(0)
            .into_iter()
            .find(|a| a.id == id)
            .map_or("none", |a| a.state)
    }

    /// One call answered by `agent` and ended at `end`.
    fn take_call(d: &mut Desk, call: CallRef, now: u64, end: u64) -> String {
        let (_, out) = caller(d, call, Rank::Normal, now);
        let (_, agents) = rings(&out).pop().expect("rang someone");
        let a = agents[0].clone();
        result(d, call, &a, OfferOutcome::Answered, now + S);
        leave(d, call, HungUp::Caller, end);
        a
    }

    #[test]
    fn queues_come_and_go_while_the_desk_runs() {
        let mut d = Desk::new([]);
        agent(&mut d, "a", 1, 0);
        agent(&mut d, "b", 1, 0);
        // The agents' accounts name `main`, which does not exist yet.
        assert_eq!(
            caller(&mut d, 1, Rank::Normal, S).0,
            Err(Refusal::UnknownQueue)
        );
        let mut out = Vec::new();
        d.set_queue("main", rules(Strategy::Linear), 2 * S, &mut out);
        d.check_invariants(2 * S).expect("invariants");
        let views = d.queue_views(2 * S);
        assert_eq!((views.len(), views[0].members, views[0].free), (1, 2, 2));
        // New rules reach the members' keys: ring-all rings both.
        d.set_queue("main", rules(Strategy::RingAll), 3 * S, &mut out);
        d.check_invariants(3 * S).expect("invariants");
        let (joined, out) = caller(&mut d, 2, Rank::Normal, 4 * S);
        assert_eq!(joined, Ok(1));
        assert_eq!(rings(&out).pop().map(|(_, a)| a.len()), Some(2));
        // Not while a caller waits, nor while agents serve it.
        assert!(d.remove_queue("main").is_err_and(|e| e.contains("waiting")));
        leave(&mut d, 2, HungUp::Caller, 5 * S);
        assert!(d.remove_queue("main").is_err_and(|e| e.contains("member")));
        let mut out = Vec::new();
        d.remove_agent("a", 6 * S, &mut out);
        d.remove_agent("b", 6 * S, &mut out);
        assert_eq!(d.remove_queue("main"), Ok(()));
        assert!(d.queue_views(7 * S).is_empty());
        assert_eq!(
            caller(&mut d, 3, Rank::Normal, 7 * S).0,
            Err(Refusal::UnknownQueue)
        );
        // Back under the same name: a fresh queue the agents join again.
        agent(&mut d, "a", 1, 8 * S);
        d.set_queue("main", rules(Strategy::LongestIdle), 8 * S, &mut out);
        d.check_invariants(8 * S).expect("invariants");
        assert_eq!(d.queue_views(8 * S)[0].members, 1);
        assert_eq!(take_call(&mut d, 4, 9 * S, 10 * S), "a");
    }

    #[test]
    fn longest_idle_goes_first() {
        let mut d = desk(Strategy::LongestIdle);
        agent(&mut d, "b", 1, 20 * S);
        agent(&mut d, "a", 1, 30 * S);
        agent(&mut d, "c", 1, 10 * S);
        assert_eq!(take_call(&mut d, 1, 100 * S, 110 * S), "c");
        // c is idle since 110 s now; b (20 s) is next, then a, then c.
        assert_eq!(take_call(&mut d, 2, 120 * S, 130 * S), "b");
        assert_eq!(take_call(&mut d, 3, 140 * S, 150 * S), "a");
        assert_eq!(take_call(&mut d, 4, 160 * S, 170 * S), "c");
    }

    #[test]
    fn round_robin_rotates_with_memory() {
        let mut d = desk(Strategy::RoundRobin);
        for id in ["a", "b", "c"] {
            agent(&mut d, id, 1, 0);
        }
        let order: Vec<String> = (1..=5)
            .map(|i| take_call(&mut d, i, i * 10 * S, i * 10 * S + 1))
            .collect();
        assert_eq!(order, ["a", "b", "c", "a", "b"]);
    }

    #[test]
    fn fewest_calls_and_linear() {
        let mut d = desk(Strategy::FewestCalls);
        for id in ["a", "b"] {
            agent(&mut d, id, 1, 0);
        }
        // a answers, then b, then the one with fewer again.
        assert_eq!(take_call(&mut d, 1, S, 2 * S), "a");
        assert_eq!(take_call(&mut d, 2, 3 * S, 4 * S), "b");
        assert_eq!(take_call(&mut d, 3, 5 * S, 6 * S), "a");
        assert_eq!(take_call(&mut d, 4, 7 * S, 8 * S), "b");

        let mut d = desk(Strategy::Linear);
        agent(&mut d, "z", 1, 0);
        agent(&mut d, "y", 2, 0);
        agent(&mut d, "a", 2, 0);
        for i in 1..=3 {
            assert_eq!(take_call(&mut d, i, i * 10 * S, i * 10 * S + 1), "z");
        }
        // z busy: the next in line order is level 2's first id.
        let (_, out) = caller(&mut d, 9, Rank::Normal, 100 * S);
        result(&mut d, 9, "z", OfferOutcome::Answered, 101 * S);
        let (_, out2) = caller(&mut d, 10, Rank::Normal, 102 * S);
        assert_eq!(rings(&out)[0].1, ["z"]);
        assert_eq!(rings(&out2)[0].1, ["a"]);
    }

    #[test]
    fn ring_all_rings_every_free_agent_and_the_first_answer_takes_it() {
        let mut d = desk(Strategy::RingAll);
        for id in ["a", "b", "c"] {
            agent(&mut d, id, 1, 0);
        }
        let (_, out) = caller(&mut d, 1, Rank::Normal, S);
        assert_eq!(
            rings(&out),
            [(1, vec!["a".to_string(), "b".into(), "c".into()])]
        );
        // A second caller meanwhile finds nobody free.
        let (_, out) = caller(&mut d, 2, Rank::Normal, S);
        assert!(rings(&out).is_empty());
        // b declines and is free at once: caller 2 rings b.
        let out = result(&mut d, 1, "b", OfferOutcome::Declined, 2 * S);
        assert_eq!(rings(&out), [(2, vec!["b".to_string()])]);
        // c answers caller 1: a stops ringing and is free (caller 2 rings already).
        let out = result(&mut d, 1, "c", OfferOutcome::Answered, 3 * S);
        assert_eq!(state(&d, "c"), "on-call");
        assert!(rings(&out).is_empty());
        assert_eq!(state(&d, "a"), "available");
        // a's late "no answer" for caller 1 changes nothing.
        result(&mut d, 1, "a", OfferOutcome::NoAnswer, 4 * S);
        assert_eq!(state(&d, "a"), "available");
        // b misses caller 2: the next round rings every free agent, a and c? c talks.
        let out = result(&mut d, 2, "b", OfferOutcome::NoAnswer, 5 * S);
        assert_eq!(rings(&out), [(2, vec!["a".to_string()])]);
    }

    #[test]
    fn skills_lowest_tier_first_and_higher_tiers_after_tier_wait() {
        let mut d = desk_with(Rules {
            strategy: Strategy::Skills,
            tier_wait: 20 * S,
            ..Rules::default()
        });
        agent(&mut d, "expert", 1, 0);
        agent(&mut d, "generalist", 2, 0);
        let (_, out) = caller(&mut d, 1, Rank::Normal, 100 * S);
        assert_eq!(rings(&out)[0].1, ["expert"]);
        result(&mut d, 1, "expert", OfferOutcome::Answered, 101 * S);
        // The expert is busy: the next caller waits for tier 2's turn.
        let (_, out) = caller(&mut d, 2, Rank::Normal, 102 * S);
        assert!(rings(&out).is_empty());
        assert!(rings(&d_next(&mut d, 121 * S)).is_empty());
        assert_eq!(d.next_deadline(), Some(122 * S));
        assert_eq!(
            rings(&d_next(&mut d, 122 * S)),
            [(2, vec!["generalist".to_string()])]
        );
    }

    fn d_next(d: &mut Desk, now: u64) -> Vec<Output> {
        let mut out = Vec::new();
        d.tick(now, &mut out);
        out
    }

    #[test]
    fn priorities_go_first_then_arrival_order() {
        let mut d = desk(Strategy::LongestIdle);
        agent(&mut d, "a", 1, 0);
        let (_, out) = caller(&mut d, 1, Rank::Normal, S);
        assert_eq!(rings(&out)[0].0, 1);
        result(&mut d, 1, "a", OfferOutcome::Answered, 2 * S);
        assert_eq!(caller(&mut d, 2, Rank::Normal, 3 * S).0, Ok(1));
        assert_eq!(caller(&mut d, 3, Rank::Normal, 4 * S).0, Ok(2));
        assert_eq!(caller(&mut d, 4, Rank::Priority, 5 * S).0, Ok(1));
        assert_eq!(caller(&mut d, 5, Rank::Emergency, 6 * S).0, Ok(1));
        assert_eq!(d.position(2), Some((3, 1000)));
        let mut order = Vec::new();
        let mut now = 10 * S;
        let mut current = 1;
        for _ in 0..4 {
            let out = leave(&mut d, current, HungUp::Agent, now);
            let (call, _) = rings(&out)[0].clone();
            order.push(call);
            result(&mut d, call, "a", OfferOutcome::Answered, now + S);
            current = call;
            now += 10 * S;
        }
        assert_eq!(order, [5, 4, 2, 3]);
    }

    #[test]
    fn no_answer_moves_on_and_repeated_misses_put_the_agent_on_break() {
        let mut d = desk_with(Rules {
            max_no_answer: 2,
            retry: 5 * S,
            ..Rules::default()
        });
        agent(&mut d, "sleepy", 1, 0);
        agent(&mut d, "awake", 1, 10 * S);
        let (_, out) = caller(&mut d, 1, Rank::Normal, 20 * S);
        assert_eq!(rings(&out)[0].1, ["sleepy"]);
        let out = result(&mut d, 1, "sleepy", OfferOutcome::NoAnswer, 35 * S);
        assert_eq!(rings(&out), [(1, vec!["awake".to_string()])]);
        assert!(events(&out).contains(&"RINGNOANSWER sleepy".to_string()));
        // awake misses too; sleepy is not offered caller 1 again before retry.
        let out = result(&mut d, 1, "awake", OfferOutcome::NoAnswer, 38 * S);
        assert!(rings(&out).is_empty(), "{out:?}");
        // Retry passes: sleepy (idle longest) gets caller 1 again and misses a second time.
        let out = d_next(&mut d, 40 * S);
        assert_eq!(rings(&out), [(1, vec!["sleepy".to_string()])]);
        let out = result(&mut d, 1, "sleepy", OfferOutcome::NoAnswer, 55 * S);
        assert_eq!(state(&d, "sleepy"), "on-break");
        assert!(events(&out).contains(&"PAUSE sleepy".to_string()));
        assert!(out.contains(&Output::Persist {
            agent: "sleepy".into(),
            presence: Presence::OnBreak("no-answer".into())
        }));
        // awake's exclusion has passed: it rings at once. A decline is not a miss.
        assert_eq!(rings(&out), [(1, vec!["awake".to_string()])]);
        result(&mut d, 1, "awake", OfferOutcome::Declined, 101 * S);
        assert_eq!(state(&d, "awake"), "available");
    }

    #[test]
    fn every_free_agent_is_tried_before_one_who_missed_is_tried_again() {
        let mut d = desk(Strategy::LongestIdle);
        agent(&mut d, "a", 1, 0);
        agent(&mut d, "b", 1, 10 * S);
        agent(&mut d, "c", 1, 20 * S);
        let (_, out) = caller(&mut d, 1, Rank::Normal, 30 * S);
        assert_eq!(rings(&out)[0].1, ["a"]);
        let out = result(&mut d, 1, "a", OfferOutcome::Declined, 31 * S);
        assert_eq!(rings(&out)[0].1, ["b"]);
        // a's retry has long passed, but c has not been tried yet.
        let out = result(&mut d, 1, "b", OfferOutcome::NoAnswer, 46 * S);
        assert_eq!(rings(&out)[0].1, ["c"]);
        // Everyone missed: the one idle longest, once its retry passed.
        let out = result(&mut d, 1, "c", OfferOutcome::Declined, 47 * S);
        assert_eq!(rings(&out)[0].1, ["a"]);
    }

    #[test]
    fn caller_hanging_up_while_ringing_frees_the_agent_and_a_late_answer_is_ignored() {
        let mut d = desk(Strategy::LongestIdle);
        agent(&mut d, "a", 1, 0);
        let _ = caller(&mut d, 1, Rank::Normal, S);
        assert_eq!(state(&d, "a"), "ringing");
        let out = leave(&mut d, 1, HungUp::Caller, 2 * S);
        assert!(events(&out).contains(&"ABANDON NONE".to_string()));
        assert_eq!(state(&d, "a"), "available");
        // The agent's 200 crossed the caller's CANCEL.
        result(&mut d, 1, "a", OfferOutcome::Answered, 3 * S);
        assert_eq!(state(&d, "a"), "available");
        // And the ticket's own drop after that is harmless.
        leave(&mut d, 1, HungUp::Caller, 4 * S);
        let (_, out) = caller(&mut d, 2, Rank::Normal, 5 * S);
        assert_eq!(rings(&out), [(2, vec!["a".to_string()])]);
    }

    #[test]
    fn one_agent_is_never_offered_two_calls() {
        let mut d = desk(Strategy::LongestIdle);
        agent(&mut d, "a", 1, 0);
        let (_, o1) = caller(&mut d, 1, Rank::Normal, S);
        let (_, o2) = caller(&mut d, 2, Rank::Emergency, S);
        assert_eq!(rings(&o1).len() + rings(&o2).len(), 1);
        d.check_invariants(S).expect("invariants");
        // Logging the agent in again while ringing does not make them free.
        let mut out = Vec::new();
        d.set_presence("a", Presence::Available, S, &mut out)
            .expect("known");
        assert!(rings(&out).is_empty());
        // A re-registration neither.
        let out = agent(&mut d, "a", 1, S);
        assert!(rings(&out).is_empty());
        d.check_invariants(S).expect("invariants");
    }

    #[test]
    fn a_queue_view_counts_its_members_by_state() {
        let mut d = desk_with(Rules {
            wrap_up: 30 * S,
            ..Rules::default()
        });
        for id in ["a", "b", "c", "d"] {
            agent(&mut d, id, 1, 0);
        }
        let mut out = Vec::new();
        d.set_presence("c", Presence::OnBreak("lunch".into()), S, &mut out)
            .expect("known");
        d.set_presence("d", Presence::LoggedOut, S, &mut out)
            .expect("known");
        let counts = |d: &Desk| {
            let q = d.queue_views(10 * S).remove(0);
            (
                q.free,
                q.ringing,
                q.on_call,
                q.wrap_up,
                q.on_break,
                q.unavailable,
            )
        };
        assert_eq!(counts(&d), (2, 0, 0, 0, 1, 1));
        let (_, out) = caller(&mut d, 1, Rank::Normal, 2 * S);
        let (_, rung) = rings(&out).pop().expect("rang someone");
        assert_eq!(counts(&d), (1, 1, 0, 0, 1, 1));
        result(&mut d, 1, &rung[0], OfferOutcome::Answered, 3 * S);
        assert_eq!(counts(&d), (1, 0, 1, 0, 1, 1));
        leave(&mut d, 1, HungUp::Caller, 4 * S);
        assert_eq!(counts(&d), (1, 0, 0, 1, 1, 1));
        // Each agent's time in state counts from its last change.
        let since = |id: &str| {
            d.agent_views(5 * S)
                .into_iter()
                .find(|a| a.id == id)
                .map(|a| (a.state, a.since))
        };
        assert_eq!(since(&rung[0]), Some(("wrap-up", 4 * S)));
        assert_eq!(since("c"), Some(("on-break", S)));
    }

    #[test]
    fn a_lost_bye_cannot_strand_an_agent_on_call_and_wrap_up_ends_by_timer_or_code() {
        let mut d = desk_with(Rules {
            wrap_up: 30 * S,
            ..Rules::default()
        });
        agent(&mut d, "a", 1, 0);
        let _ = caller(&mut d, 1, Rank::Normal, S);
        result(&mut d, 1, "a", OfferOutcome::Answered, 2 * S);
        assert_eq!(state(&d, "a"), "on-call");
        // The call's end is reported by its ticket whatever ended it (BYE,
        // RTP timeout, a task that died): here the agent's BYE was lost and
        // the caller's RTP timed out.
        let out = leave(&mut d, 1, HungUp::Caller, 100 * S);
        assert!(events(&out).contains(&"COMPLETECALLER a".to_string()));
        assert_eq!(state(&d, "a"), "wrap-up");
        let (_, out) = caller(&mut d, 2, Rank::Normal, 101 * S);
        assert!(rings(&out).is_empty());
        let out = d_next(&mut d, 130 * S);
        assert_eq!(rings(&out), [(2, vec!["a".to_string()])]);
        result(&mut d, 2, "a", OfferOutcome::Answered, 131 * S);
        leave(&mut d, 2, HungUp::Agent, 140 * S);
        let mut out = Vec::new();
        assert_eq!(d.end_wrap_up("a", 141 * S, &mut out), Ok(()));
        assert_eq!(state(&d, "a"), "available");
        assert_eq!(
            d.end_wrap_up("a", 142 * S, &mut out),
            Err(DeskError::NotInWrapUp)
        );
        // The old wrap-up timer firing later changes nothing.
        let _ = d_next(&mut d, 170 * S);
        assert_eq!(state(&d, "a"), "available");
    }

    #[test]
    fn a_transfer_claims_the_target_by_name_and_sends_the_transferor_to_wrap_up() {
        let mut d = desk_with(Rules {
            wrap_up: 30 * S,
            ..Rules::default()
        });
        agent(&mut d, "a", 1, 0);
        agent(&mut d, "b", 1, S);
        let _ = caller(&mut d, 1, Rank::Normal, 2 * S);
        result(&mut d, 1, "a", OfferOutcome::Answered, 3 * S);
        // Agent a transfers caller 1 to agent b by name (call ref 2).
        assert_eq!(
            d.claim(2, "c1", "b", Some("main"), 10 * S).map(|c| c.agent),
            Ok("b".into())
        );
        d.check_invariants(10 * S).expect("invariants");
        assert_eq!(state(&d, "b"), "ringing");
        // A claimed agent is offered nothing from the line, and cannot be claimed twice.
        let (_, out) = caller(&mut d, 3, Rank::Normal, 11 * S);
        assert!(rings(&out).is_empty());
        assert_eq!(
            d.claim(4, "c4", "b", None, 11 * S),
            Err(ClaimRefusal::Busy("ringing"))
        );
        assert_eq!(
            d.claim(4, "c4", "a", None, 11 * S),
            Err(ClaimRefusal::Busy("on-call"))
        );
        assert_eq!(
            d.claim(4, "c4", "zz", None, 11 * S),
            Err(ClaimRefusal::UnknownAgent)
        );
        leave(&mut d, 3, HungUp::Caller, 12 * S);
        let out = result(&mut d, 2, "b", OfferOutcome::Answered, 12 * S);
        assert!(events(&out).is_empty(), "{:?}", events(&out));
        assert_eq!(state(&d, "b"), "on-call");
        let mut out = Vec::new();
        d.transferred(1, "b", 12 * S, &mut out);
        assert_eq!(events(&out), ["TRANSFER a"]);
        assert_eq!(state(&d, "a"), "wrap-up");
        // The transferred call ends: b is released, without queue-log lines.
        let out = leave(&mut d, 2, HungUp::Caller, 60 * S);
        assert!(!events(&out).iter().any(|e| e.starts_with("COMPLETE")));
        assert_eq!(state(&d, "b"), "wrap-up");
        // A claim that is not answered leaves the agent free for the line.
        let _ = d_next(&mut d, 91 * S);
        assert_eq!(
            d.claim(5, "c5", "a", None, 92 * S).map(|c| c.agent),
            Ok("a".into())
        );
        let (_, out) = caller(&mut d, 6, Rank::Normal, 93 * S);
        assert_eq!(rings(&out), [(6, vec!["b".to_string()])]);
        result(&mut d, 5, "a", OfferOutcome::NoAnswer, 100 * S);
        assert_eq!(state(&d, "a"), "available");
        assert_eq!(
            d.agent_views(100 * S)
                .iter()
                .find(|v| v.id == "a")
                .map(|v| v.misses),
            Some(0)
        );
    }

    #[test]
    fn max_wait_waits_for_a_ring_in_progress() {
        let mut d = desk_with(Rules {
            max_wait: 60 * S,
            ..Rules::default()
        });
        agent(&mut d, "a", 1, 0);
        let _ = caller(&mut d, 1, Rank::Normal, S);
        result(&mut d, 1, "a", OfferOutcome::Answered, 2 * S);
        let _ = caller(&mut d, 2, Rank::Normal, 10 * S);
        let _ = caller(&mut d, 3, Rank::Normal, 11 * S);
        // Caller 2 gets a at 60 s; max_wait (70 s) passes while it rings.
        let out = leave(&mut d, 1, HungUp::Caller, 60 * S);
        assert_eq!(rings(&out)[0].0, 2);
        let out = d_next(&mut d, 71 * S);
        let exits: Vec<_> = out
            .iter()
            .filter(|o| matches!(o, Output::Exit { .. }))
            .collect();
        assert_eq!(
            exits,
            [&Output::Exit {
                call: 3,
                reason: ExitReason::Timeout
            }]
        );
        // Caller 2 is still connected by a late answer.
        result(&mut d, 2, "a", OfferOutcome::Answered, 72 * S);
        assert_eq!(state(&d, "a"), "on-call");
        // Had it been missed, caller 2 would have left then.
        let mut d2 = desk_with(Rules {
            max_wait: 10 * S,
            ..Rules::default()
        });
        agent(&mut d2, "a", 1, 0);
        let _ = caller(&mut d2, 1, Rank::Normal, 0);
        let _ = d_next(&mut d2, 11 * S);
        let out = result(&mut d2, 1, "a", OfferOutcome::NoAnswer, 15 * S);
        assert!(out.contains(&Output::Exit {
            call: 1,
            reason: ExitReason::Timeout
        }));
        assert!(events(&out).contains(&"EXITWITHTIMEOUT NONE".to_string()));
    }

    #[test]
    fn join_empty_leave_empty_and_max_waiting() {
        let mut d = desk_with(Rules {
            join_empty: vec![EmptyWhen::Unavailable, EmptyWhen::Paused],
            leave_empty: vec![EmptyWhen::Unavailable],
            max_waiting: 2,
            ..Rules::default()
        });
        assert_eq!(caller(&mut d, 1, Rank::Normal, 0).0, Err(Refusal::Empty));
        agent(&mut d, "a", 1, 0);
        let mut out = Vec::new();
        d.set_presence("a", Presence::OnBreak("lunch".into()), S, &mut out)
            .expect("known");
        assert_eq!(caller(&mut d, 2, Rank::Normal, S).0, Err(Refusal::Empty));
        d.set_presence("a", Presence::Available, 2 * S, &mut out)
            .expect("known");
        let _ = caller(&mut d, 3, Rank::Normal, 2 * S);
        result(&mut d, 3, "a", OfferOutcome::Answered, 3 * S);
        // On a call, the queue is not empty: callers join, up to max_waiting.
        assert_eq!(caller(&mut d, 4, Rank::Normal, 4 * S).0, Ok(1));
        assert_eq!(caller(&mut d, 5, Rank::Normal, 4 * S).0, Ok(2));
        assert_eq!(caller(&mut d, 6, Rank::Normal, 4 * S).0, Err(Refusal::Full));
        // The agent logs out after the call: everyone still waiting leaves.
        d.set_presence("a", Presence::LoggedOut, 5 * S, &mut out)
            .expect("known");
        let out = leave(&mut d, 3, HungUp::Agent, 6 * S);
        let exits = out
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Output::Exit {
                        reason: ExitReason::Empty,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(exits, 2);
    }

    #[test]
    fn a_returning_caller_gets_their_old_place() {
        let mut d = desk_with(Rules {
            resume_window: 60 * S,
            ..Rules::default()
        });
        agent(&mut d, "a", 1, 0);
        let _ = caller(&mut d, 1, Rank::Normal, 0);
        result(&mut d, 1, "a", OfferOutcome::Answered, S);
        let _ = caller(&mut d, 2, Rank::Normal, 2 * S);
        let _ = caller(&mut d, 3, Rank::Normal, 3 * S);
        leave(&mut d, 2, HungUp::Caller, 10 * S);
        // Caller 2 (same number) calls again as call 12, ahead of 3.
        let mut out = Vec::new();
        let pos = d.enter(
            Joining {
                call: 12,
                call_id: "c12".into(),
                queue: "main".into(),
                rank: Rank::Normal,
                number: "13800000002".into(),
                callback: false,
            },
            20 * S,
            &mut out,
        );
        assert_eq!(pos, Ok(1));
        // Too late: a new place.
        leave(&mut d, 12, HungUp::Caller, 30 * S);
        let pos = d.enter(
            Joining {
                call: 13,
                call_id: "c13".into(),
                queue: "main".into(),
                rank: Rank::Normal,
                number: "13800000002".into(),
                callback: false,
            },
            100 * S,
            &mut out,
        );
        assert_eq!(pos, Ok(2));
    }

    #[test]
    fn coming_online_logs_in_an_auto_login_agent_but_a_refresh_does_not() {
        let mut d = desk(Strategy::LongestIdle);
        let spec = AgentSpec {
            id: "a".into(),
            queues: vec![("main".into(), 1)],
            wrap_up: None,
            auto_login: true,
        };
        let mut out = Vec::new();
        d.upsert_agent(spec.clone(), Presence::LoggedOut, None, false, 0, &mut out);
        assert_eq!(state(&d, "a"), "logged-out");
        d.upsert_agent(
            spec.clone(),
            Presence::LoggedOut,
            Some((contact("a"), 600 * S)),
            true,
            S,
            &mut out,
        );
        assert_eq!(state(&d, "a"), "available");
        assert!(events(&out).contains(&"AGENTLOGIN a".to_string()));
        d.set_presence("a", Presence::LoggedOut, 2 * S, &mut out)
            .expect("known");
        // The phone refreshes its registration (not "came online"): still logged out.
        d.upsert_agent(
            spec,
            Presence::LoggedOut,
            Some((contact("a"), 900 * S)),
            false,
            300 * S,
            &mut out,
        );
        assert_eq!(state(&d, "a"), "logged-out");
        // Registration lapses: unavailable even when logged in.
        d.set_presence("a", Presence::Available, 301 * S, &mut out)
            .expect("known");
        let _ = d_next(&mut d, 901 * S);
        assert!(!d.agent_views(901 * S)[0].registered);
        assert_eq!(
            caller(&mut d, 1, Rank::Normal, 902 * S).0,
            Err(Refusal::Empty)
        );
    }

    /// Many agents, many callers, random events in random order: the desk's
    /// books always balance, no agent is held by two callers, and every
    /// caller ends connected, abandoned or timed out.
    #[test]
    fn random_storm_keeps_every_invariant() {
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for strategy in [
            Strategy::LongestIdle,
            Strategy::RoundRobin,
            Strategy::FewestCalls,
            Strategy::RingAll,
            Strategy::Linear,
            Strategy::Skills,
        ] {
            let mut d = Desk::new([
                (
                    "main".to_string(),
                    Rules {
                        strategy,
                        wrap_up: 3 * S,
                        max_wait: 120 * S,
                        max_no_answer: 3,
                        tier_wait: 5 * S,
                        ..Rules::default()
                    },
                ),
                (
                    "other".to_string(),
                    Rules {
                        strategy,
                        ..Rules::default()
                    },
                ),
            ]);
            for i in 0..50 {
                let mut out = Vec::new();
                let mut queues = vec![("main".to_string(), 1 + (i % 3) as u32)];
                if i % 4 == 0 {
                    queues.push(("other".into(), 1));
                }
                d.upsert_agent(
                    AgentSpec {
                        id: format!("{i}"),
                        queues,
                        wrap_up: None,
                        auto_login: true,
                    },
                    Presence::Available,
                    Some((contact(&format!("{i}")), 1_000_000 * S)),
                    false,
                    0,
                    &mut out,
                );
            }
            let mut ringing: Vec<(CallRef, String)> = Vec::new();
            let mut talking: Vec<CallRef> = Vec::new();
            let mut now = S;
            let mut call = 0;
            let mut transfers: CallRef = 100_000;
            for _ in 0..5000 {
                now += next(2000);
                let mut out = Vec::new();
                match next(10) {
                    0..=2 if call < 200 => {
                        call += 1;
                        let queue = if next(5) == 0 { "other" } else { "main" };
                        let rank =
                            [Rank::Normal, Rank::Priority, Rank::Emergency][next(3) as usize];
                        let _ = d.enter(
                            Joining {
                                call,
                                call_id: format!("c{call}"),
                                queue: queue.into(),
                                rank,
                                number: format!("{}", next(50)),
                                callback: false,
                            },
                            now,
                            &mut out,
                        );
                    }
                    3 | 4 if !ringing.is_empty() => {
                        let (c, a) = ringing.swap_remove(next(ringing.len() as u64) as usize);
                        let outcome = [
                            OfferOutcome::Answered,
                            OfferOutcome::NoAnswer,
                            OfferOutcome::Declined,
                            OfferOutcome::Unreachable,
                        ][next(4) as usize];
                        d.offer_result(c, &a, outcome, now, &mut out);
                        if outcome == OfferOutcome::Answered {
                            talking.push(c);
                        }
                    }
                    5 if !talking.is_empty() && next(3) == 0 => {
                        // The agent transfers the call to another agent by name.
                        let c = talking.swap_remove(next(talking.len() as u64) as usize);
                        transfers += 1;
                        let target = format!("{}", next(50));
                        if d.claim(transfers, "t", &target, Some("main"), now).is_ok() {
                            ringing.push((transfers, target.clone()));
                        }
                        d.transferred(c, &target, now, &mut out);
                    }
                    5 if !talking.is_empty() => {
                        let c = talking.swap_remove(next(talking.len() as u64) as usize);
                        d.leave(
                            c,
                            if next(2) == 0 {
                                HungUp::Caller
                            } else {
                                HungUp::Agent
                            },
                            now,
                            &mut out,
                        );
                    }
                    6 if call > 0 => d.leave(1 + next(call), HungUp::Caller, now, &mut out),
                    7 => {
                        let id = format!("{}", next(50));
                        let p = [
                            Presence::Available,
                            Presence::OnBreak("x".into()),
                            Presence::LoggedOut,
                            Presence::Available,
                        ][next(4) as usize]
                            .clone();
                        let _ = d.set_presence(&id, p, now, &mut out);
                    }
                    8 => {
                        let _ = d.end_wrap_up(&format!("{}", next(50)), now, &mut out);
                    }
                    _ => d.tick(now, &mut out),
                }
                for o in &out {
                    if let Output::Ring { call, agents, .. } = o {
                        for a in agents {
                            ringing.push((*call, a.agent.clone()));
                        }
                    }
                }
                if let Err(e) = d.check_invariants(now) {
                    panic!("{strategy:?}: {e}");
                }
            }
        }
    }
}

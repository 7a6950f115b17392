//! The SIP endpoint's vocabulary: what a SIP worker is told, what a call
//! hears from its worker, and which worker owns a Call-ID.
//!
//! Room: the SIP desks, below the calls. A [`Worker`] (one per core) is the
//! thin async driver of one sans-IO transaction table: it feeds it
//! messages and timeouts, sends what it asks through the sockets, hands
//! in-dialog traffic to the call that owns its Call-ID, and gives requests
//! no call owns to its [`Door`] (admission, above). Calls talk to it only
//! with [`WorkerInput`]s and hear it only as [`CallEvent`]s; [`shard`] says
//! which worker owns a Call-ID. It imports only the SIP protocol, the
//! clock and the boxed channels.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::clock::sleep_until;
use crate::sip::message::{Message, Method, Request, Response};
use crate::sip::random_token;
use crate::sip::transaction::{TimerConfig, Transactions, TxEvent, TxKey};
use crate::sip::transport::SipSockets;
use crate::sip::Peer;

/// Methods we implement, for Allow headers.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE";

/// What a worker is told.
#[derive(Debug)]
pub enum WorkerInput {
    /// A message from the network.
    Incoming(Box<Message>, Peer),
    /// A call answers one of its server transactions.
    Respond {
        /// Transaction.
        key: TxKey,
        /// Status in `bytes`.
        status: u16,
        /// The response.
        bytes: Bytes,
    },
    /// A call starts a client transaction; its events go to `owner`.
    Request {
        /// Method.
        method: Method,
        /// Branch in the request's Via.
        branch: String,
        /// The request.
        bytes: Bytes,
        /// Destination.
        peer: Peer,
        /// The call.
        owner: crate::boxed::Sender<CallEvent>,
    },
    /// Bytes outside any transaction (ACK for 2xx).
    Stateless {
        /// Destination.
        peer: Peer,
        /// Bytes.
        bytes: Bytes,
    },
    /// Route messages of this Call-ID to a call.
    Bind {
        /// Call-ID.
        call_id: String,
        /// The call.
        owner: crate::boxed::Sender<CallEvent>,
    },
    /// Stop routing this Call-ID.
    Unbind {
        /// Call-ID.
        call_id: String,
    },
}

/// What a call hears from its worker.
#[derive(Debug)]
pub enum CallEvent {
    /// A request in one of the call's dialogs (or a retransmitted INVITE).
    Request {
        /// Server transaction to answer on. (Keys are boxed: a call's
        /// event channel allocates a block of 32 events up front, so the
        /// event's size is paid 32 times per call.)
        key: Box<TxKey>,
        /// The request.
        request: Box<Request>,
        /// Source.
        peer: Peer,
    },
    /// The caller ACKed our 2xx.
    Ack,
    /// The caller cancelled the INVITE.
    Cancelled,
    /// A response to a request we sent (`key` is `None` for a stray 2xx retransmission).
    Response {
        /// The client transaction, if it still exists.
        key: Option<Box<TxKey>>,
        /// The response.
        response: Box<Response>,
    },
    /// One of our requests got no answer (Timer B/F).
    Timeout {
        /// The client transaction.
        key: Box<TxKey>,
    },
    /// The caller never ACKed our 2xx.
    AckTimeout,
}

/// FNV-1a of the Call-ID, modulo the worker count.
pub fn shard(call_id: &str, n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in call_id.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    (h % n.max(1) as u64) as usize
}

/// What a worker asks of the house above it: the requests no call owns
/// (REGISTER, OPTIONS, a new INVITE, a stray in-dialog request), whether
/// a stranger is heard at all, and the refusal when its table is full.
pub trait Door: Send + Sync {
    /// A request no running call owns: answer it through `worker`, or
    /// start a call and [`Worker::bind`] its Call-ID.
    fn new_request(&self, worker: &mut Worker, key: TxKey, req: Request, peer: Peer);
    /// Whether an out-of-dialog request (not REGISTER, ACK or CANCEL) from
    /// `peer` is heard; `false`: it is dropped without an answer.
    fn hears(&self, req: &Request, peer: &Peer) -> bool;
    /// The worker's transaction table is full: refuse `req` without taking
    /// state (and count it).
    fn refuse_full(&self, req: &Request, peer: Peer);
}

/// One SIP worker: a transaction table, the calls that own its Call-IDs,
/// and the client transactions they started.
pub struct Worker {
    index: usize,
    /// Where requests no call owns go, and who decides about strangers.
    door: Arc<dyn Door>,
    sockets: Arc<SipSockets>,
    /// This worker's live transactions, as of its last input (for status).
    live_transactions: Arc<AtomicUsize>,
    txs: Transactions,
    /// Running calls by Call-ID (both legs).
    calls: HashMap<String, crate::boxed::Sender<CallEvent>>,
    /// Owners of client transactions started by calls.
    owners: HashMap<TxKey, crate::boxed::Sender<CallEvent>>,
    /// New requests waiting in this worker's fresh lane, as of the last input.
    backlog: usize,
    /// Dialogs whose call ended in the last [`ENDED_DIALOG_MEMORY`]: a BYE
    /// crossing ours (glare, RFC 5407 §3.1.2) gets 200, not 481.
    ended: EndedDialogs,
}

/// How long a worker remembers an ended call's Call-ID: 64×T1, as long as
/// a BYE crossing ours can still be retransmitted.
const ENDED_DIALOG_MEMORY: Duration = Duration::from_secs(32);

/// Call-IDs of calls that ended lately, oldest first.
#[derive(Default)]
struct EndedDialogs {
    order: std::collections::VecDeque<(Instant, String)>,
    ids: std::collections::HashSet<String>,
}

impl EndedDialogs {
    fn insert(&mut self, now: Instant, call_id: String) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < ENDED_DIALOG_MEMORY {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        if self.ids.insert(call_id.clone()) {
            self.order.push_back((now, call_id));
        }
    }

    fn contains(&self, call_id: &str) -> bool {
        self.ids.contains(call_id)
    }
}

impl Worker {
    /// A worker with an empty transaction table (at most `max_transactions`).
    pub fn new(
        index: usize,
        door: Arc<dyn Door>,
        sockets: Arc<SipSockets>,
        live_transactions: Arc<AtomicUsize>,
        max_transactions: usize,
    ) -> Worker {
        Worker {
            index,
            door,
            sockets,
            live_transactions,
            txs: Transactions::new(TimerConfig::default(), max_transactions),
            calls: HashMap::new(),
            owners: HashMap::new(),
            backlog: 0,
            ended: EndedDialogs::default(),
        }
    }

    /// Which worker this is.
    pub fn index(&self) -> usize {
        self.index
    }

    /// New requests waiting in this worker's lane of them, as of the last input.
    pub fn backlog(&self) -> usize {
        self.backlog
    }

    /// Routes this Call-ID's in-dialog traffic to `owner` (a new call).
    pub fn bind(&mut self, call_id: &str, owner: crate::boxed::Sender<CallEvent>) {
        self.calls.insert(call_id.to_string(), owner);
    }

    /// The call with this Call-ID ended lately, or is ending (its task is
    /// gone): a BYE for it crossed ours.
    pub fn just_ended(&self, call_id: &str) -> bool {
        self.ended.contains(call_id) || self.calls.get(call_id).is_some_and(|c| c.is_closed())
    }

    /// Serves the in-dialog lane first, then due timers, then one new
    /// request at a time: BYE, ACK and re-INVITEs never wait behind a surge
    /// of INVITEs.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<WorkerInput>,
        mut fresh: mpsc::Receiver<WorkerInput>,
    ) {
        loop {
            let deadline = self.txs.poll_timeout();
            tokio::select! {
                biased;
                input = rx.recv() => match input {
                    Some(input) => self.handle_input(input),
                    None => return,
                },
                _ = sleep_until(deadline) => self.txs.handle_timeout(Instant::now()),
                Some(input) = fresh.recv() => {
                    self.backlog = fresh.len();
                    self.handle_input(input);
                }
            }
            self.drain();
            self.live_transactions.store(self.txs.len(), Relaxed);
        }
    }

    fn drain(&mut self) {
        while let Some(t) = self.txs.poll_transmit() {
            self.sockets.send(t.peer, t.bytes);
        }
        while let Some(event) = self.txs.poll_event() {
            self.handle_event(event);
            while let Some(t) = self.txs.poll_transmit() {
                self.sockets.send(t.peer, t.bytes);
            }
        }
    }

    fn handle_input(&mut self, input: WorkerInput) {
        let now = Instant::now();
        match input {
            WorkerInput::Incoming(msg, peer) => {
                let new_request = matches!(&*msg, Message::Request(r) if r.method != Method::Ack);
                if new_request && self.txs.is_full() {
                    if let Message::Request(req) = &*msg {
                        self.door.refuse_full(req, peer);
                    }
                    return;
                }
                if let Message::Request(req) = &*msg {
                    let stranger_request = req.core.to.tag.is_none()
                        && !matches!(req.method, Method::Register | Method::Ack | Method::Cancel);
                    if stranger_request && !self.door.hears(req, &peer) {
                        // A scanner learns nothing: no response, no state.
                        tracing::debug!(source = %peer.addr, method = req.method.as_str(), "request from a stranger ignored");
                        return;
                    }
                }
                self.txs.handle_message(now, *msg, peer);
            }
            WorkerInput::Respond { key, status, bytes } => {
                if let Err(e) = self.txs.respond(now, &key, status, bytes) {
                    tracing::debug!(error = %e, status, "response not sent");
                }
            }
            WorkerInput::Request {
                method,
                branch,
                bytes,
                peer,
                owner,
            } => {
                let key = self.txs.request(now, method, &branch, bytes, peer);
                self.owners.insert(key, owner);
            }
            WorkerInput::Stateless { peer, bytes } => self.txs.send_stateless(peer, bytes),
            WorkerInput::Bind { call_id, owner } => {
                self.calls.insert(call_id, owner);
            }
            WorkerInput::Unbind { call_id } => {
                self.calls.remove(&call_id);
                self.owners.retain(|_, o| !o.is_closed());
                self.ended.insert(Instant::now(), call_id);
            }
        }
    }

    /// Hands `event` to the call owning `call_id`; gives it back if there is
    /// no such call (or it is gone).
    fn deliver(&mut self, call_id: &str, event: CallEvent) -> Option<CallEvent> {
        match self.calls.get(call_id) {
            Some(call) => call.try_send(event).err().map(|e| match e {
                mpsc::error::TrySendError::Full(ev) | mpsc::error::TrySendError::Closed(ev) => ev,
            }),
            None => Some(event),
        }
    }

    fn handle_event(&mut self, event: TxEvent) {
        match event {
            TxEvent::Request { key, request, peer } => {
                let call_id = request.core.call_id.clone();
                if let Some(CallEvent::Request { key, request, .. }) = self.deliver(
                    &call_id,
                    CallEvent::Request {
                        key: Box::new(key),
                        request,
                        peer,
                    },
                ) {
                    let door = self.door.clone();
                    door.new_request(self, *key, *request, peer);
                }
            }
            TxEvent::Ack { request, .. } => {
                let call_id = request.core.call_id.clone();
                let _ = self.deliver(&call_id, CallEvent::Ack);
            }
            TxEvent::Cancelled { invite, request } => {
                let call_id = request.core.call_id.clone();
                if self.deliver(&call_id, CallEvent::Cancelled).is_some() {
                    let resp = request.response(487, Some(&random_token()), &[], b"");
                    let _ = self
                        .txs
                        .respond(Instant::now(), &invite, 487, Bytes::from(resp));
                }
            }
            TxEvent::Response { key, response } => {
                let final_response = response.status >= 200;
                let owner = if final_response {
                    self.owners.remove(&key)
                } else {
                    self.owners.get(&key).cloned()
                };
                let call_id = response.core.call_id.clone();
                let event = CallEvent::Response {
                    key: Some(Box::new(key)),
                    response,
                };
                match owner {
                    Some(o) => {
                        let _ = o.try_send(event);
                    }
                    None => {
                        let _ = self.deliver(&call_id, event);
                    }
                }
            }
            TxEvent::Stray { response, .. } => {
                let call_id = response.core.call_id.clone();
                let _ = self.deliver(
                    &call_id,
                    CallEvent::Response {
                        key: None,
                        response,
                    },
                );
            }
            TxEvent::Timeout { key } => {
                if let Some(o) = self.owners.remove(&key) {
                    let _ = o.try_send(CallEvent::Timeout { key: Box::new(key) });
                }
            }
            TxEvent::AckTimeout { call_id, .. } => {
                let _ = self.deliver(&call_id, CallEvent::AckTimeout);
            }
        }
    }

    /// Answers `req` on its server transaction with `status` and `headers`.
    pub fn respond(
        &mut self,
        key: &TxKey,
        req: &Request,
        status: u16,
        headers: &[(&'static str, String)],
    ) {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let bytes = req.response(status, Some(&random_token()), &headers, b"");
        let _ = self
            .txs
            .respond(Instant::now(), key, status, Bytes::from(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_dialogs_are_remembered_for_64_t1_then_forgotten() {
        let t0 = Instant::now();
        let mut ended = EndedDialogs::default();
        ended.insert(t0, "a".into());
        ended.insert(t0 + Duration::from_secs(10), "b".into());
        ended.insert(t0 + Duration::from_secs(10), "b".into());
        assert!(ended.contains("a") && ended.contains("b"));
        assert_eq!(ended.order.len(), 2, "a Call-ID is kept once");
        // The next end after 32 s forgets `a` (ended at t0), not `b`.
        ended.insert(t0 + ENDED_DIALOG_MEMORY, "c".into());
        assert!(!ended.contains("a") && ended.contains("b") && ended.contains("c"));
        ended.insert(t0 + Duration::from_secs(60), "d".into());
        assert!(!ended.contains("b") && ended.contains("c") && ended.contains("d"));
        assert_eq!((ended.ids.len(), ended.order.len()), (2, 2));
    }
}

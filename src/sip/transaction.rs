//! RFC 3261 transactions, sans-IO.
//!
//! Room: the SIP house's middle floor. [`Transactions`] owns every client and
//! server transaction of one SIP worker. It is fed parsed messages, commands
//! from the transaction user (the registrar, a call) and the time; it answers
//! with bytes to send ([`Transmit`]), events for the transaction user
//! ([`TxEvent`]) and the instant it next wants to be woken
//! ([`Transactions::poll_timeout`]). It never reads a clock or touches a socket.
//!
//! Run loop (as in str0m and quinn-proto): after any `handle_*` call or
//! command, drain [`Transactions::poll_transmit`] and [`Transactions::poll_event`],
//! then sleep until [`Transactions::poll_timeout`].
//!
//! Timers, RFC 3261 Table 4 (T1 = 500 ms, T2 = 4 s, T4 = 5 s), plus RFC 6026:
//!
//! | timer | value                | meaning                                        |
//! |-------|----------------------|------------------------------------------------|
//! | A     | T1, doubling         | INVITE request retransmit (UDP only)           |
//! | B     | 64·T1                | INVITE transaction timeout → 408 to the TU     |
//! | D     | 32 s UDP, 0 reliable | wait for response retransmits (client INVITE)  |
//! | E     | T1 doubling to T2    | non-INVITE request retransmit (UDP only)       |
//! | F     | 64·T1                | non-INVITE transaction timeout → 408           |
//! | G     | T1 doubling to T2    | INVITE response retransmit (UDP only)          |
//! | H     | 64·T1                | wait for ACK receipt                           |
//! | I     | T4 UDP, 0 reliable   | wait for ACK retransmits                       |
//! | J     | 64·T1 UDP, 0 reliable| wait for non-INVITE request retransmits        |
//! | K     | T4 UDP, 0 reliable   | wait for non-INVITE response retransmits       |
//! | L     | 64·T1                | RFC 6026 server Accepted: absorb INVITE retransmits, await ACK |
//! | M     | 64·T1                | RFC 6026 client Accepted: pass 2xx retransmits up |
//!
//! One deliberate merge: RFC 3261 §13.3.1.4 makes the UAS *core* retransmit a
//! 2xx until the ACK arrives. Here the server INVITE transaction does it in its
//! Accepted state (Timer G schedule, over every transport, as the RFC wants
//! for 2xx), because it already holds the bytes and the timers. An ACK for a
//! 2xx carries a new branch, so it is matched by Call-ID and CSeq instead of
//! by key, stops the retransmissions and is passed up as [`TxEvent::Ack`].
//! If no ACK comes before Timer L, the TU gets [`TxEvent::AckTimeout`] (and
//! should send BYE, §13.3.1.4).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::message::{self, Message, Method, Request, Response};
use super::Peer;

/// Protocol timer base values.
#[derive(Debug, Clone, Copy)]
pub struct TimerConfig {
    /// RTT estimate, 500 ms by default.
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses.
    pub t2: Duration,
    /// Maximum time a message remains in the network.
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// The RFC 3261 timers, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum Timer {
    A,
    B,
    D,
    E,
    F,
    G,
    H,
    I,
    J,
    K,
    L,
    M,
}

const TIMER_COUNT: usize = 12;

/// One transaction's pending timers: an array of deadlines, as in quinn-proto.
#[derive(Debug, Default, Clone)]
struct TimerTable([Option<Instant>; TIMER_COUNT]);

impl TimerTable {
    fn get(&self, t: Timer) -> Option<Instant> {
        self.0[t as usize]
    }
    fn stop(&mut self, t: Timer) {
        self.0[t as usize] = None;
    }
    fn stop_all(&mut self) {
        self.0 = [None; TIMER_COUNT];
    }
}

/// Timers to arm once the transaction's borrow ends: at most two per step,
/// kept on the stack (this runs for every message).
#[derive(Debug, Default)]
struct Arms {
    timers: [Option<(Timer, Instant)>; 2],
}

impl Arms {
    fn push(&mut self, timer: (Timer, Instant)) {
        // Every step arms at most two timers (G and L; G and H); a third
        // would be a bug in this file, caught by the timer tests.
        if let Some(slot) = self.timers.iter_mut().find(|t| t.is_none()) {
            *slot = Some(timer);
        } else {
            debug_assert!(false, "more than two timers armed in one step");
        }
    }

    fn iter(&self) -> impl Iterator<Item = (Timer, Instant)> + '_ {
        self.timers.iter().flatten().copied()
    }
}

/// Which side of the transaction we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// We sent the request.
    Client,
    /// We received the request.
    Server,
}

/// Transaction key (RFC 3261 §17.1.3, §17.2.3). ACK shares the INVITE's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TxKey {
    /// Client or server side.
    pub role: Role,
    /// The branch (or an RFC 2543 fallback built from other headers).
    pub branch: String,
    /// `sent-by` of the top Via (server side only; empty for client keys).
    pub sent_by: String,
    /// The method, ACK folded into INVITE.
    pub method: Method,
    /// Server side: Call-ID, CSeq number and Request-URI too. RFC 3261
    /// matches on branch alone, trusting clients to make branches unique;
    /// broken clients reuse them. A retransmission, the ACK of a non-2xx and
    /// a CANCEL all repeat these three (§17.1.1.3, §9.1), so nothing that
    /// should match is lost.
    pub request: Option<(String, u32, String)>,
}

impl TxKey {
    fn server(req: &Request) -> TxKey {
        let via = req.core.top_via();
        let method = match req.method {
            Method::Ack => Method::Invite,
            ref m => m.clone(),
        };
        let branch = if via.is_rfc3261() {
            via.branch.clone().unwrap_or_default()
        } else {
            // RFC 2543 fallback: Request-URI, tags, Call-ID, CSeq number and top Via.
            format!(
                "2543;{};{};{};{};{}",
                req.uri,
                req.core.from.tag.as_deref().unwrap_or(""),
                req.core.call_id,
                req.core.cseq,
                via.raw
            )
        };
        TxKey {
            role: Role::Server,
            branch,
            sent_by: via.sent_by.to_ascii_lowercase(),
            method,
            request: Some((req.core.call_id.clone(), req.core.cseq, req.uri.clone())),
        }
    }

    /// The key of a client transaction we start with `branch`.
    pub fn client_for(branch: &str, method: Method) -> TxKey {
        TxKey {
            role: Role::Client,
            branch: branch.to_string(),
            sent_by: String::new(),
            method,
            request: None,
        }
    }

    fn client(resp: &Response) -> Option<TxKey> {
        let branch = resp.core.top_via().branch.clone()?;
        Some(TxKey::client_for(&branch, resp.core.cseq_method.clone()))
    }

    /// The key of the INVITE a CANCEL refers to.
    fn invite_of_cancel(&self) -> TxKey {
        TxKey {
            method: Method::Invite,
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InviteClient,
    NonInviteClient,
    InviteServer,
    NonInviteServer,
}

/// Transaction states of RFC 3261 §17 and RFC 6026.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Client INVITE sent, no response yet.
    Calling,
    /// Non-INVITE: request sent or received, no response yet.
    Trying,
    /// A provisional response was sent or received.
    Proceeding,
    /// A final (non-2xx for INVITE) response was sent or received.
    Completed,
    /// Server INVITE: the ACK for a non-2xx arrived.
    Confirmed,
    /// RFC 6026: a 2xx to an INVITE was sent or received.
    Accepted,
    /// Done; the transaction is about to be removed.
    Terminated,
}

/// What to put on the wire.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// Where to: always the address a request came from, for responses.
    pub peer: Peer,
    /// The bytes.
    pub bytes: Bytes,
}

/// What the transaction user must hear about.
#[derive(Debug, Clone)]
pub enum TxEvent {
    /// A new request: a server transaction exists for it under `key`; the TU
    /// must answer with [`Transactions::respond`]. (ACKs never come this way.)
    Request {
        /// Transaction to answer on.
        key: TxKey,
        /// The request.
        request: Box<Request>,
        /// Where it came from.
        peer: Peer,
    },
    /// An ACK for a 2xx (its own transaction-less request).
    Ack {
        /// The ACK.
        request: Box<Request>,
        /// Where it came from.
        peer: Peer,
    },
    /// A CANCEL matched a pending server INVITE. The layer already answered
    /// the CANCEL with 200; the TU should answer the INVITE with 487.
    Cancelled {
        /// The INVITE's key.
        invite: TxKey,
        /// The CANCEL, for its Reason header.
        request: Box<Request>,
    },
    /// A response to one of our requests (2xx retransmissions included, for
    /// INVITE, so the TU can ACK again).
    Response {
        /// The client transaction.
        key: TxKey,
        /// The response.
        response: Box<Response>,
    },
    /// A response that matches no transaction (a late 2xx retransmission).
    Stray {
        /// The response.
        response: Box<Response>,
        /// Where it came from.
        peer: Peer,
    },
    /// Timer B or F fired: treat as 408 (RFC 3261 §8.1.3.1).
    Timeout {
        /// The client transaction.
        key: TxKey,
    },
    /// A 2xx we sent was never acknowledged (Timer L in Accepted).
    AckTimeout {
        /// The server INVITE transaction.
        key: TxKey,
        /// Its Call-ID, to find the call.
        call_id: String,
    },
}

/// A refusal of a TU command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// No such transaction (ended, or never existed).
    #[error("no such transaction")]
    NoTransaction,
    /// The transaction already sent a final response.
    #[error("transaction already answered")]
    AlreadyFinal,
}

/// What a client INVITE needs to write the ACK for a non-2xx response.
#[derive(Debug)]
struct AckParts {
    uri: String,
    via: String,
    from: String,
    call_id: String,
    cseq: u32,
    routes: Vec<String>,
}

#[derive(Debug)]
struct Tx {
    kind: Kind,
    state: State,
    peer: Peer,
    /// The request, for client retransmissions.
    request: Bytes,
    /// The last response sent, for server retransmissions.
    response: Option<Bytes>,
    /// The ACK we sent for a non-2xx, for client retransmissions.
    ack: Option<Bytes>,
    ack_parts: Option<AckParts>,
    timers: TimerTable,
    /// Current retransmit interval (Timers A, E, G).
    interval: Duration,
    /// For 2xx-ACK matching: (Call-ID, CSeq) of a server INVITE.
    dialog_id: Option<(String, u32)>,
}

/// All the transactions of one SIP worker.
#[derive(Debug)]
pub struct Transactions {
    config: TimerConfig,
    next_id: u64,
    by_key: HashMap<TxKey, u64>,
    txs: HashMap<u64, (TxKey, Tx)>,
    /// (Call-ID, CSeq) of server INVITEs in Accepted, for 2xx ACK matching.
    accepted: HashMap<(String, u32), u64>,
    /// Deadlines: (when, sequence) → (transaction, timer). Entries are checked
    /// against the transaction's table when they fire, so stopping a timer
    /// costs nothing here.
    deadlines: BTreeMap<(Instant, u64), (u64, Timer)>,
    seq: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
    /// Bound on live transactions (overload protection).
    max_transactions: usize,
}

impl Transactions {
    /// A new, empty layer.
    pub fn new(config: TimerConfig, max_transactions: usize) -> Transactions {
        Transactions {
            config,
            next_id: 0,
            by_key: HashMap::new(),
            txs: HashMap::new(),
            accepted: HashMap::new(),
            deadlines: BTreeMap::new(),
            seq: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            max_transactions,
        }
    }

    /// Live transactions.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Whether no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Whether the table is full (new requests should get 503).
    pub fn is_full(&self) -> bool {
        self.txs.len() >= self.max_transactions
    }

    /// The state of a transaction, if it still exists.
    pub fn state(&self, key: &TxKey) -> Option<State> {
        let id = self.by_key.get(key)?;
        self.txs.get(id).map(|(_, tx)| tx.state)
    }

    /// Next bytes to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event for the transaction user.
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }

    /// When [`Transactions::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(at, _)| *at)
    }

    fn arm(&mut self, id: u64, timer: Timer, at: Instant) {
        if let Some((_, tx)) = self.txs.get_mut(&id) {
            tx.timers.0[timer as usize] = Some(at);
            self.seq += 1;
            self.deadlines.insert((at, self.seq), (id, timer));
        }
    }

    fn send(&mut self, peer: Peer, bytes: Bytes) {
        self.transmits.push_back(Transmit { peer, bytes });
    }

    fn insert(&mut self, key: TxKey, tx: Tx) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.by_key.insert(key.clone(), id);
        self.txs.insert(id, (key, tx));
        id
    }

    fn remove(&mut self, id: u64) {
        if let Some((key, tx)) = self.txs.remove(&id) {
            self.by_key.remove(&key);
            if let Some(d) = tx.dialog_id {
                if self.accepted.get(&d) == Some(&id) {
                    self.accepted.remove(&d);
                }
            }
        }
    }

    /// Feeds one message received from `peer`. `raw` is only used for logging
    /// by callers; the layer works on the parsed form.
    pub fn handle_message(&mut self, now: Instant, msg: Message, peer: Peer) {
        match msg {
            Message::Request(req) => self.handle_request(now, req, peer),
            Message::Response(resp) => self.handle_response(now, resp, peer),
        }
    }

    fn handle_request(&mut self, now: Instant, req: Request, peer: Peer) {
        let key = TxKey::server(&req);
        if let Some(&id) = self.by_key.get(&key) {
            // A retransmission, or the ACK of a non-2xx final response.
            self.server_retransmission(now, id, req);
            return;
        }
        match req.method {
            Method::Ack => {
                // An ACK with its own branch: the ACK for a 2xx, matched by dialog.
                let dialog = (req.core.call_id.clone(), req.core.cseq);
                if let Some(id) = self.accepted.remove(&dialog) {
                    if let Some((_, tx)) = self.txs.get_mut(&id) {
                        tx.timers.stop(Timer::G);
                        tx.dialog_id = None;
                        // Acknowledged: it only absorbs INVITE retransmissions now.
                        tx.response = None;
                    }
                }
                self.events.push_back(TxEvent::Ack {
                    request: Box::new(req),
                    peer,
                });
            }
            Method::Cancel => {
                let invite = key.invite_of_cancel();
                let pending = self
                    .by_key
                    .get(&invite)
                    .and_then(|id| self.txs.get(id))
                    .is_some_and(|(_, tx)| tx.state == State::Proceeding);
                let status = if self.by_key.contains_key(&invite) {
                    200
                } else {
                    481
                };
                let response =
                    Bytes::from(req.response(status, Some(&local_tag_for(&req)), &[], b""));
                let id = self.new_server(now, key, Kind::NonInviteServer, peer);
                self.respond_id(now, id, status, response);
                if pending {
                    self.events.push_back(TxEvent::Cancelled {
                        invite,
                        request: Box::new(req),
                    });
                }
            }
            Method::Invite => {
                let id = self.new_server(now, key.clone(), Kind::InviteServer, peer);
                if let Some((_, tx)) = self.txs.get_mut(&id) {
                    tx.dialog_id = Some((req.core.call_id.clone(), req.core.cseq));
                    tx.state = State::Proceeding;
                }
                // 100 Trying at once: we are a B2BUA and the final answer may take long.
                let trying = Bytes::from(req.response(100, None, &[], b""));
                self.respond_id(now, id, 100, trying);
                self.events.push_back(TxEvent::Request {
                    key,
                    request: Box::new(req),
                    peer,
                });
            }
            _ => {
                self.new_server(now, key.clone(), Kind::NonInviteServer, peer);
                self.events.push_back(TxEvent::Request {
                    key,
                    request: Box::new(req),
                    peer,
                });
            }
        }
    }

    fn new_server(&mut self, _now: Instant, key: TxKey, kind: Kind, peer: Peer) -> u64 {
        self.insert(
            key,
            Tx {
                kind,
                state: State::Trying,
                peer,
                request: Bytes::new(),
                response: None,
                ack: None,
                ack_parts: None,
                timers: TimerTable::default(),
                interval: self.config.t1,
                dialog_id: None,
            },
        )
    }

    fn server_retransmission(&mut self, now: Instant, id: u64, req: Request) {
        let Some((_, tx)) = self.txs.get_mut(&id) else {
            return;
        };
        let is_ack = req.method == Method::Ack;
        match (tx.kind, tx.state, is_ack) {
            (Kind::InviteServer, State::Completed, true) => {
                tx.state = State::Confirmed;
                tx.response = None;
                tx.timers.stop(Timer::G);
                tx.timers.stop(Timer::H);
                let wait = if tx.peer.reliable() {
                    Duration::ZERO
                } else {
                    self.config.t4
                };
                self.arm(id, Timer::I, now + wait);
            }
            (Kind::InviteServer, State::Accepted, true) => {
                // RFC 6026: an ACK with the INVITE's branch (RFC 2543 peers) in Accepted.
                tx.timers.stop(Timer::G);
                tx.dialog_id = None;
                let peer = tx.peer;
                self.events.push_back(TxEvent::Ack {
                    request: Box::new(req),
                    peer,
                });
            }
            (_, State::Confirmed | State::Terminated, _) | (_, _, true) => {}
            (_, State::Accepted, false) => {
                // RFC 6026 §7.1: INVITE retransmits in Accepted are absorbed.
            }
            _ => {
                if let Some(resp) = tx.response.clone() {
                    let peer = tx.peer;
                    self.send(peer, resp);
                }
            }
        }
    }

    /// Sends a response on server transaction `key`. `status` must be the
    /// status inside `bytes`.
    pub fn respond(
        &mut self,
        now: Instant,
        key: &TxKey,
        status: u16,
        bytes: Bytes,
    ) -> Result<(), TxError> {
        let id = *self.by_key.get(key).ok_or(TxError::NoTransaction)?;
        let (_, tx) = self.txs.get(&id).ok_or(TxError::NoTransaction)?;
        match tx.state {
            State::Trying | State::Proceeding => {}
            State::Accepted if (200..300).contains(&status) => {}
            _ => return Err(TxError::AlreadyFinal),
        }
        self.respond_id(now, id, status, bytes);
        Ok(())
    }

    fn respond_id(&mut self, now: Instant, id: u64, status: u16, bytes: Bytes) {
        let t1 = self.config.t1;
        let Some((_, tx)) = self.txs.get_mut(&id) else {
            return;
        };
        let peer = tx.peer;
        let reliable = peer.reliable();
        tx.response = Some(bytes.clone());
        let mut arm = Arms::default();
        match (tx.kind, status) {
            (_, 100..=199) => {
                tx.state = State::Proceeding;
            }
            (Kind::InviteServer, 200..=299) => {
                if tx.state != State::Accepted {
                    tx.state = State::Accepted;
                    tx.interval = t1;
                    arm.push((Timer::G, now + t1));
                    arm.push((Timer::L, now + 64 * t1));
                    if let Some(d) = tx.dialog_id.clone() {
                        self.accepted.insert(d, id);
                    }
                }
            }
            (Kind::InviteServer, _) => {
                tx.state = State::Completed;
                tx.dialog_id = None;
                if !reliable {
                    tx.interval = t1;
                    arm.push((Timer::G, now + t1));
                }
                arm.push((Timer::H, now + 64 * t1));
            }
            (_, _) => {
                tx.state = State::Completed;
                let wait = if reliable { Duration::ZERO } else { 64 * t1 };
                arm.push((Timer::J, now + wait));
            }
        }
        for (t, at) in arm.iter() {
            self.arm(id, t, at);
        }
        self.send(peer, bytes);
    }

    fn handle_response(&mut self, now: Instant, resp: Response, peer: Peer) {
        let Some(key) = TxKey::client(&resp) else {
            return;
        };
        let Some(&id) = self.by_key.get(&key) else {
            self.events.push_back(TxEvent::Stray {
                response: Box::new(resp),
                peer,
            });
            return;
        };
        let t1 = self.config.t1;
        let t4 = self.config.t4;
        let Some((_, tx)) = self.txs.get_mut(&id) else {
            return;
        };
        let reliable = tx.peer.reliable();
        let status = resp.status;
        let mut arm = Arms::default();
        let mut deliver = true;
        match (tx.kind, tx.state, status) {
            (Kind::InviteClient, State::Calling | State::Proceeding, 100..=199) => {
                tx.state = State::Proceeding;
                tx.timers.stop(Timer::A);
            }
            (
                Kind::InviteClient,
                State::Calling | State::Proceeding | State::Accepted,
                200..=299,
            ) => {
                // 2xx (and its retransmissions): the TU ACKs; RFC 6026 Accepted.
                if tx.state != State::Accepted {
                    tx.state = State::Accepted;
                    tx.timers.stop(Timer::A);
                    tx.timers.stop(Timer::B);
                    // No more retransmissions: keep only the key (memory under load).
                    tx.request = Bytes::new();
                    tx.ack_parts = None;
                    arm.push((Timer::M, now + 64 * t1));
                }
            }
            (Kind::InviteClient, State::Calling | State::Proceeding, _) => {
                tx.state = State::Completed;
                tx.timers.stop(Timer::A);
                tx.timers.stop(Timer::B);
                let ack = tx
                    .ack_parts
                    .as_ref()
                    .map(|p| Bytes::from(write_ack(p, &resp)));
                tx.ack = ack.clone();
                if let Some(ack) = ack {
                    self.transmits.push_back(Transmit {
                        peer: tx.peer,
                        bytes: ack,
                    });
                }
                let wait = if reliable {
                    Duration::ZERO
                } else {
                    Duration::from_secs(32)
                };
                arm.push((Timer::D, now + wait));
            }
            (Kind::InviteClient, State::Completed, 300..=699) => {
                // A retransmitted final response: ACK again, tell nobody.
                if let Some(ack) = tx.ack.clone() {
                    self.transmits.push_back(Transmit {
                        peer: tx.peer,
                        bytes: ack,
                    });
                }
                deliver = false;
            }
            (Kind::NonInviteClient, State::Trying | State::Proceeding, 100..=199) => {
                tx.state = State::Proceeding;
            }
            (Kind::NonInviteClient, State::Trying | State::Proceeding, _) => {
                tx.state = State::Completed;
                tx.timers.stop(Timer::E);
                tx.timers.stop(Timer::F);
                tx.request = Bytes::new();
                let wait = if reliable { Duration::ZERO } else { t4 };
                arm.push((Timer::K, now + wait));
            }
            _ => deliver = false,
        }
        for (t, at) in arm.iter() {
            self.arm(id, t, at);
        }
        if deliver {
            self.events.push_back(TxEvent::Response {
                key,
                response: Box::new(resp),
            });
        }
    }

    /// Starts a client transaction for `bytes` (a request we wrote, whose top
    /// Via carries `branch`) towards `peer`. ACKs are not transactions: send
    /// them with [`Transactions::send_stateless`].
    pub fn request(
        &mut self,
        now: Instant,
        method: Method,
        branch: &str,
        bytes: Bytes,
        peer: Peer,
    ) -> TxKey {
        let key = TxKey::client_for(branch, method.clone());
        let t1 = self.config.t1;
        let invite = method == Method::Invite;
        let ack_parts = if invite { ack_parts_of(&bytes) } else { None };
        let id = self.insert(
            key.clone(),
            Tx {
                kind: if invite {
                    Kind::InviteClient
                } else {
                    Kind::NonInviteClient
                },
                state: if invite {
                    State::Calling
                } else {
                    State::Trying
                },
                peer,
                request: bytes.clone(),
                response: None,
                ack: None,
                ack_parts,
                timers: TimerTable::default(),
                interval: t1,
                dialog_id: None,
            },
        );
        if !peer.reliable() {
            self.arm(id, if invite { Timer::A } else { Timer::E }, now + t1);
        }
        self.arm(id, if invite { Timer::B } else { Timer::F }, now + 64 * t1);
        self.send(peer, bytes);
        key
    }

    /// Sends bytes outside any transaction (ACK for a 2xx, stateless replies).
    pub fn send_stateless(&mut self, peer: Peer, bytes: Bytes) {
        self.send(peer, bytes);
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((at, _), (id, timer)) = entry.remove_entry();
            let live = self
                .txs
                .get(&id)
                .is_some_and(|(_, tx)| tx.timers.get(timer) == Some(at));
            if live {
                self.fire(now, id, timer);
            }
        }
    }

    fn fire(&mut self, now: Instant, id: u64, timer: Timer) {
        let t2 = self.config.t2;
        let Some((key, tx)) = self.txs.get_mut(&id) else {
            return;
        };
        tx.timers.stop(timer);
        match timer {
            Timer::A | Timer::E => {
                let active = matches!(tx.state, State::Calling | State::Trying)
                    || (timer == Timer::E && tx.state == State::Proceeding);
                if active {
                    tx.interval = if timer == Timer::A {
                        tx.interval * 2
                    } else if tx.state == State::Proceeding {
                        t2
                    } else {
                        (tx.interval * 2).min(t2)
                    };
                    let (peer, bytes, next) = (tx.peer, tx.request.clone(), now + tx.interval);
                    self.send(peer, bytes);
                    self.arm(id, timer, next);
                }
            }
            Timer::G => {
                if matches!(tx.state, State::Completed | State::Accepted) {
                    if let Some(resp) = tx.response.clone() {
                        tx.interval = (tx.interval * 2).min(t2);
                        let (peer, next) = (tx.peer, now + tx.interval);
                        self.send(peer, resp);
                        self.arm(id, timer, next);
                    }
                }
            }
            Timer::B | Timer::F => {
                if matches!(tx.state, State::Calling | State::Trying | State::Proceeding) {
                    let key = key.clone();
                    self.events.push_back(TxEvent::Timeout { key });
                    self.remove(id);
                }
            }
            Timer::L => {
                if let Some((call_id, _)) = tx.dialog_id.clone() {
                    let key = key.clone();
                    self.events.push_back(TxEvent::AckTimeout { key, call_id });
                }
                self.remove(id);
            }
            Timer::H => {
                // No ACK for our non-2xx final response: give up quietly.
                tx.timers.stop_all();
                self.remove(id);
            }
            Timer::D | Timer::I | Timer::J | Timer::K | Timer::M => {
                tx.state = State::Terminated;
                self.remove(id);
            }
        }
    }
}

/// The To tag the layer itself uses for stateless answers (CANCEL): stable per
/// request so that retransmissions get the same tag.
fn local_tag_for(req: &Request) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in req.core.call_id.bytes().chain(req.core.cseq.to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:x}")
}

fn ack_parts_of(bytes: &[u8]) -> Option<AckParts> {
    let Ok(Message::Request(req)) = message::parse(bytes) else {
        return None;
    };
    Some(AckParts {
        uri: req.uri.clone(),
        via: req.core.top_via().raw.clone(),
        from: req.core.from.raw.clone(),
        call_id: req.core.call_id.clone(),
        cseq: req.core.cseq,
        routes: req.headers.get_all("route").map(str::to_string).collect(),
    })
}

/// RFC 3261 §17.1.1.3: the ACK for a non-2xx final response.
fn write_ack(parts: &AckParts, resp: &Response) -> Vec<u8> {
    let routes: Vec<(&str, &str)> = parts.routes.iter().map(|r| ("Route", r.as_str())).collect();
    let via = parts.via.strip_prefix("SIP/2.0/").unwrap_or(&parts.via);
    message::OutgoingRequest {
        method: &Method::Ack,
        uri: &parts.uri,
        via,
        from: &parts.from,
        to: &resp.core.to.raw,
        call_id: &parts.call_id,
        cseq: parts.cseq,
        extra: &routes,
        body: b"",
    }
    .write()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse;
    use crate::sip::{Peer, TransportKind};

    fn peer() -> Peer {
        Peer::new(
            "127.0.0.1:5070".parse().expect("addr"),
            TransportKind::Udp,
            0,
        )
    }

    fn invite_bytes(branch: &str) -> Bytes {
        Bytes::from(format!(
            "INVITE sip:1001@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={branch};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:12345@127.0.0.1>;tag=a1\r\nTo: <sip:1001@127.0.0.1>\r\n\
Call-ID: call-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    fn request(bytes: &[u8]) -> Request {
        match parse(bytes) {
            Ok(Message::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn response_to(bytes: &[u8], status: u16) -> Message {
        let req = request(bytes);
        parse(&req.response(status, Some("b1"), &[], b"")).expect("own response parses")
    }

    fn drain(tx: &mut Transactions) -> Vec<Transmit> {
        std::iter::from_fn(|| tx.poll_transmit()).collect()
    }

    /// Drives the layer to each wakeup until `end`, returning (time since start, bytes) sent.
    fn run_until(
        tx: &mut Transactions,
        start: Instant,
        end: Duration,
    ) -> Vec<(Duration, Transmit)> {
        let mut sent = Vec::new();
        while let Some(at) = tx.poll_timeout() {
            if at > start + end {
                break;
            }
            tx.handle_timeout(at);
            for t in drain(tx) {
                sent.push((at - start, t));
            }
        }
        sent
    }

    /// A new INVITE reaches a server transaction; returns its bytes, key and
    /// the request as the TU sees it.
    fn server_invite(
        tx: &mut Transactions,
        now: Instant,
        branch: &str,
    ) -> (Bytes, TxKey, Box<Request>) {
        let bytes = invite_bytes(branch);
        tx.handle_message(now, Message::Request(request(&bytes)), peer());
        drain(tx);
        match tx.poll_event() {
            Some(TxEvent::Request { key, request, .. }) => (bytes, key, request),
            other => panic!("the TU must see the INVITE, got {other:?}"),
        }
    }

    /// The TU answers `req` with `status`.
    fn answer(tx: &mut Transactions, now: Instant, key: &TxKey, req: &Request, status: u16) {
        let bytes = Bytes::from(req.response(status, Some("t"), &[], b""));
        tx.respond(now, key, status, bytes).expect("respond");
        drain(tx);
    }

    #[test]
    fn invite_retransmits_at_half_second_doublings_then_times_out_at_32s() {
        let start = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default(), 100);
        let key = tx.request(
            start,
            Method::Invite,
            "z9hG4bKa",
            invite_bytes("z9hG4bKa"),
            peer(),
        );
        assert_eq!(drain(&mut tx).len(), 1);
        let sent = run_until(&mut tx, start, Duration::from_secs(40));
        let times: Vec<f64> = sent.iter().map(|(d, _)| d.as_secs_f64()).collect();
        assert_eq!(times, vec![0.5, 1.5, 3.5, 7.5, 15.5, 31.5]);
        let events: Vec<_> = std::iter::from_fn(|| tx.poll_event()).collect();
        assert!(matches!(&events[..], [TxEvent::Timeout { key: k }] if *k == key));
        assert!(tx.is_empty());
    }

    #[test]
    fn non_invite_retransmits_cap_at_t2_and_timer_f_fires() {
        let start = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default(), 100);
        let bytes = Bytes::from(
            String::from_utf8_lossy(&invite_bytes("z9hG4bKo"))
                .replace("INVITE", "OPTIONS")
                .into_bytes(),
        );
        tx.request(start, Method::Options, "z9hG4bKo", bytes, peer());
        drain(&mut tx);
        let sent = run_until(&mut tx, start, Duration::from_secs(40));
        let times: Vec<f64> = sent.iter().map(|(d, _)| d.as_secs_f64()).collect();
        assert_eq!(&times[..5], &[0.5, 1.5, 3.5, 7.5, 11.5]);
        assert!(times.iter().all(|t| *t < 32.0));
        assert!(matches!(tx.poll_event(), Some(TxEvent::Timeout { .. })));
    }

    #[test]
    fn reliable_transport_never_retransmits() {
        let start = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default(), 100);
        let tcp = Peer::new(
            "127.0.0.1:5070".parse().expect("addr"),
            TransportKind::Tcp,
            7,
        );
        tx.request(
            start,
            Method::Invite,
            "z9hG4bKt",
            invite_bytes("z9hG4bKt"),
            tcp,
        );
        drain(&mut tx);
        assert!(run_until(&mut tx, start, Duration::from_secs(40)).is_empty());
        assert!(matches!(tx.poll_event(), Some(TxEvent::Timeout { .. })));
    }

    #[test]
    fn non_2xx_final_is_acked_by_the_transaction_and_retransmission_reacked() {
        let start = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default(), 100);
        let bytes = invite_bytes("z9hG4bKn");
        tx.request(start, Method::Invite, "z9hG4bKn", bytes.clone(), peer());
        drain(&mut tx);
        tx.handle_message(start, response_to(&bytes, 486), peer());
        let acks = drain(&mut tx);
        assert_eq!(acks.len(), 1);
        let ack = request(&acks[0].bytes);
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(ack.core.to.tag.as_deref(), Some("b1"));
        assert_eq!(ack.core.top_via().branch.as_deref(), Some("z9hG4bKn"));
        assert!(
            matches!(tx.poll_event(), Some(TxEvent::Response { ref response, .. }) if response.status == 486)
        );
        // The 486 again: ACK again, TU not told twice.
        tx.handle_message(start, response_to(&bytes, 486), peer());
        assert_eq!(drain(&mut tx).len(), 1);
        assert!(tx.poll_event().is_none());
        // Timer D ends it after 32 s.
        run_until(&mut tx, start, Duration::from_secs(33));
        assert!(tx.is_empty());
    }

    #[test]
    fn server_invite_sends_trying_and_retransmits_final_until_ack() {
        let start = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default(), 100);
        let bytes = invite_bytes("z9hG4bKs");
        tx.handle_message(start, Message::Request(request(&bytes)), peer());
        let trying = drain(&mut tx);
        assert_eq!(trying.len(), 1);
        assert!(trying[0].bytes.starts_with(b"SIP/2.0 100"));
        let Some(TxEvent::Request {
            key, request: req, ..
        }) = tx.poll_event()
        else {
            panic!("TU must see the INVITE");
        };
        // Retransmitted INVITE: the 100 again, no new event.
        tx.handle_message(start, Message::Request(request(&bytes)), peer());
        assert_eq!(drain(&mut tx).len(), 1);
        assert!(tx.poll_event().is_none());
        let busy = Bytes::from(req.response(486, Some("t"), &[], b""));
        tx.respond(start, &key, 486, busy).expect("respond");
        drain(&mut tx);
        let sent = run_until(&mut tx, start, Duration::from_secs(3));
        let times: Vec<f64> = sent.iter().map(|(d, _)| d.as_secs_f64()).collect();
        assert_eq!(times, vec![0.5, 1.5]);
        // ACK (same branch) stops Timer G and moves to Confirmed.
        let ack = String::from_utf8_lossy(&bytes)
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 ACK");
        tx.handle_message(
            start + Duration::from_secs(3),
            Message::Request(request(ack.as_bytes())),
            peer(),
        );
        assert_eq!(tx.state(&key), Some(State::Confirmed));
        assert!(run_until(&mut tx, start, Duration::from_secs(60)).is_empty());
        assert!(tx.is_empty());
    }

    #[test]
    fn server_2xx_is_retransmitted_until_ack_and_unacked_2xx_is_reported() {
        let start = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default(), 100);
        let (_, key, req) = server_invite(&mut tx, start, "z9hG4bK2");
        answer(&mut tx, start, &key, &req, 200);
        let sent = run_until(&mut tx, start, Duration::from_secs(40));
        let times: Vec<f64> = sent.iter().map(|(d, _)| d.as_secs_f64()).collect();
        assert_eq!(&times[..4], &[0.5, 1.5, 3.5, 7.5]);
        assert!(matches!(tx.poll_event(), Some(TxEvent::AckTimeout { .. })));
        assert!(tx.is_empty());
    }

    #[test]
    fn ack_for_2xx_with_new_branch_stops_retransmission() {
        let start = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default(), 100);
        let (bytes, key, req) = server_invite(&mut tx, start, "z9hG4bK3");
        answer(&mut tx, start, &key, &req, 200);
        let ack = String::from_utf8_lossy(&bytes)
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 ACK")
            .replace("z9hG4bK3", "z9hG4bKack");
        tx.handle_message(start, Message::Request(request(ack.as_bytes())), peer());
        assert!(matches!(tx.poll_event(), Some(TxEvent::Ack { .. })));
        assert!(run_until(&mut tx, start, Duration::from_secs(40)).is_empty());
        assert!(tx.poll_event().is_none());
    }

    #[test]
    fn cancel_race_with_200() {
        // CANCEL arrives after the TU already sent 200: CANCEL gets 200 (the
        // transaction exists) but the TU is not told to stop (RFC 3261 §9.2).
        let start = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default(), 100);
        let (bytes, key, req) = server_invite(&mut tx, start, "z9hG4bKc");
        answer(&mut tx, start, &key, &req, 200);
        let cancel = String::from_utf8_lossy(&bytes)
            .replace("INVITE sip", "CANCEL sip")
            .replace("1 INVITE", "1 CANCEL");
        tx.handle_message(start, Message::Request(request(cancel.as_bytes())), peer());
        let out = drain(&mut tx);
        assert_eq!(out.len(), 1);
        assert!(out[0].bytes.starts_with(b"SIP/2.0 200"));
        assert!(
            tx.poll_event().is_none(),
            "an answered INVITE is not cancelled"
        );

        // Before the answer: the TU hears Cancelled and can still send 487.
        let (bytes, key, req) = server_invite(&mut tx, start, "z9hG4bKd");
        let cancel = String::from_utf8_lossy(&bytes)
            .replace("INVITE sip", "CANCEL sip")
            .replace("1 INVITE", "1 CANCEL");
        tx.handle_message(start, Message::Request(request(cancel.as_bytes())), peer());
        drain(&mut tx);
        assert!(
            matches!(tx.poll_event(), Some(TxEvent::Cancelled { ref invite, .. }) if *invite == key)
        );
        tx.respond(
            start,
            &key,
            487,
            Bytes::from(req.response(487, Some("t"), &[], b"")),
        )
        .expect("487 goes out");
        // A CANCEL for nothing gets 481.
        let stray = cancel.replace("z9hG4bKd", "z9hG4bKnone");
        tx.handle_message(start, Message::Request(request(stray.as_bytes())), peer());
        let out = drain(&mut tx);
        assert!(out.iter().any(|t| t.bytes.starts_with(b"SIP/2.0 481")));
    }

    #[test]
    fn client_sees_2xx_retransmissions_in_accepted() {
        let start = Instant::now();
        let mut tx = Transactions::new(TimerConfig::default(), 100);
        let bytes = invite_bytes("z9hG4bKm");
        tx.request(start, Method::Invite, "z9hG4bKm", bytes.clone(), peer());
        drain(&mut tx);
        tx.handle_message(start, response_to(&bytes, 180), peer());
        tx.handle_message(start, response_to(&bytes, 200), peer());
        tx.handle_message(start, response_to(&bytes, 200), peer());
        let statuses: Vec<u16> = std::iter::from_fn(|| tx.poll_event())
            .filter_map(|e| match e {
                TxEvent::Response { response, .. } => Some(response.status),
                _ => None,
            })
            .collect();
        assert_eq!(statuses, vec![180, 200, 200]);
        // No retransmission of the INVITE after a provisional.
        assert!(run_until(&mut tx, start, Duration::from_secs(40)).is_empty());
        assert!(tx.is_empty(), "Timer M ends the transaction");
    }
}

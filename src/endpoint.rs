//! The SIP endpoint's vocabulary: what a SIP worker is told, what a call
//! hears from its worker, and which worker owns a Call-ID.
//!
//! Room: the switchboard's wiring diagram, below the calls. A worker (today
//! in `server/worker.rs`) owns a transaction table and the map from
//! Call-ID to the call that owns it; calls talk to it only with
//! [`WorkerInput`]s and hear it only as [`CallEvent`]s, and [`shard`] says
//! which worker owns a Call-ID. It imports only the SIP protocol and the
//! boxed channels.

use bytes::Bytes;

use crate::sip::message::{Message, Method, Request, Response};
use crate::sip::transaction::TxKey;
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

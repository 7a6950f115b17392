//! What a call says on SIP, as data.
//!
//! Room: the call. A call's machines hold no socket and no worker's sender:
//! they write the bytes of a response, a request or an ACK and hand them out
//! as a [`SipOut`]; the driver passes each to the SIP worker that owns its
//! Call-ID ([`deliver`]). What our SDP and Contact say about us on a call is
//! a [`Voice`]. May touch: `sip` (messages, dialogs), `endpoint` (the
//! worker's inputs), `media::sdp`.

use std::net::SocketAddr;

use bytes::Bytes;

use super::House;
use crate::endpoint::{CallEvent, WorkerInput};
use crate::media::sdp::{self, Direction};
use crate::sip::dialog::Dialog;
use crate::sip::message::{Echo, Method, Request};
use crate::sip::transaction::TxKey;
use crate::sip::Peer;

/// One thing a call sends.
#[derive(Debug, Clone)]
pub(super) enum SipOut {
    /// Answer a server transaction.
    Respond {
        /// The dialog's Call-ID (which worker holds the transaction).
        call_id: String,
        /// The transaction.
        key: TxKey,
        /// The status written in `bytes`.
        status: u16,
        /// The response.
        bytes: Bytes,
    },
    /// Start a client transaction; its answers come back to the call.
    Request {
        /// Call-ID.
        call_id: String,
        /// Method.
        method: Method,
        /// The branch in its Via (its transaction's key).
        branch: String,
        /// The request.
        bytes: Bytes,
        /// Where it goes.
        peer: Peer,
    },
    /// Bytes outside any transaction (the ACK of a 2xx).
    Stateless {
        /// Call-ID.
        call_id: String,
        /// Where it goes.
        peer: Peer,
        /// The ACK.
        bytes: Bytes,
    },
}

impl SipOut {
    /// `status` to `req` on its transaction `key`, with our `tag` in To.
    pub(super) fn respond(
        key: &TxKey,
        req: &Request,
        tag: &str,
        status: u16,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> SipOut {
        SipOut::respond_to(key, &req.echo(), tag, status, extra, body)
    }

    /// `status` to the request whose answering values `echo` holds (kept
    /// to be answered later), on its transaction `key`.
    pub(super) fn respond_to(
        key: &TxKey,
        echo: &Echo,
        tag: &str,
        status: u16,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> SipOut {
        SipOut::Respond {
            call_id: echo.call_id.clone(),
            key: key.clone(),
            status,
            bytes: Bytes::from(echo.response(status, Some(tag), extra, body)),
        }
    }

    /// The ACK of a 2xx with CSeq `cseq` in `dialog`.
    pub(super) fn ack(host: &str, dialog: &mut Dialog, cseq: u32, peer: Peer) -> SipOut {
        let (bytes, _, _) = dialog.request(
            &Method::Ack,
            host,
            peer.transport.via_token(),
            Some(cseq),
            &[],
            b"",
        );
        SipOut::Stateless {
            call_id: dialog.call_id.clone(),
            peer,
            bytes: Bytes::from(bytes),
        }
    }

    /// The next request in `dialog`; with its client transaction's key and
    /// its CSeq.
    pub(super) fn in_dialog(
        host: &str,
        dialog: &mut Dialog,
        peer: Peer,
        method: Method,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> (SipOut, TxKey, u32) {
        let (bytes, branch, cseq) =
            dialog.request(&method, host, peer.transport.via_token(), None, extra, body);
        let key = TxKey::client_for(&branch, method.clone());
        let out = SipOut::Request {
            call_id: dialog.call_id.clone(),
            method,
            branch,
            bytes: Bytes::from(bytes),
            peer,
        };
        (out, key, cseq)
    }

    /// BYE in `dialog`.
    pub(super) fn bye(host: &str, dialog: &mut Dialog, peer: Peer) -> SipOut {
        SipOut::in_dialog(host, dialog, peer, Method::Bye, &[], b"").0
    }

    /// The Call-ID it belongs to.
    pub(super) fn call_id(&self) -> &str {
        match self {
            SipOut::Respond { call_id, .. }
            | SipOut::Request { call_id, .. }
            | SipOut::Stateless { call_id, .. } => call_id,
        }
    }

    /// The worker's input for it; answers to a request go to `owner`
    /// (`None` only for what starts no transaction).
    fn into_input(self, owner: Option<&crate::boxed::Sender<CallEvent>>) -> Option<WorkerInput> {
        Some(match self {
            SipOut::Respond {
                key, status, bytes, ..
            } => WorkerInput::Respond { key, status, bytes },
            SipOut::Request {
                method,
                branch,
                bytes,
                peer,
                ..
            } => WorkerInput::Request {
                method,
                branch,
                bytes,
                peer,
                owner: owner?.clone(),
            },
            SipOut::Stateless { peer, bytes, .. } => WorkerInput::Stateless { peer, bytes },
        })
    }
}

/// Hands `out` to the worker that owns its Call-ID (where its transactions
/// live; a leg taken over from another call may live on another worker).
/// Answers to a request go to `owner`; a request without one is a bug here
/// and is dropped. A full worker drops it too, as the network would: SIP's
/// retransmissions recover.
pub(super) fn deliver(house: &House, owner: Option<&crate::boxed::Sender<CallEvent>>, out: SipOut) {
    let worker = &house.workers[house.worker_of(out.call_id())];
    match out.into_input(owner) {
        Some(input) => {
            let _ = worker.try_send(input);
        }
        None => tracing::error!("a request with nobody to hear its answers was not sent"),
    }
}

/// What our SDP says on every leg of one call: its session, and the codec
/// both legs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Voice {
    /// `o=` session id.
    pub session_id: u64,
    /// The payload type both legs use.
    pub codec: u8,
    /// RFC 4733 telephone-event's payload type, if offered.
    pub telephone_event: Option<u8>,
}

impl Voice {
    /// Our SDP: `media` as our address, `version` as `o=`'s version.
    pub(super) fn sdp(&self, media: SocketAddr, version: u64, direction: Direction) -> String {
        sdp::write(
            self.session_id,
            version,
            media,
            &[self.codec],
            self.telephone_event,
            direction,
        )
    }
}

/// Our Contact facing `peer`.
pub(super) fn contact(host: &str, peer: &Peer) -> String {
    format!(
        "<sip:yihaotong@{host};transport={}>",
        peer.transport.via_token().to_ascii_lowercase()
    )
}

/// The SDP offer in `req`; or the 488 that refuses it, with the reason in
/// a Warning.
pub(super) fn offer_in(
    key: &TxKey,
    req: &Request,
    tag: &str,
) -> Result<sdp::AudioOffer, Box<SipOut>> {
    sdp::parse_audio(&req.body).map_err(|e| {
        tracing::info!(error = %e, "SDP offer refused");
        let warning = crate::sip::warning_coded(e.warn_code(), &e.to_string());
        Box::new(SipOut::respond(
            key,
            req,
            tag,
            488,
            &[("Warning", &warning)],
            b"",
        ))
    })
}

/// 405 or 501 to `req`, with the methods we do take.
pub(super) fn allow_only(key: &TxKey, req: &Request, tag: &str, status: u16) -> SipOut {
    SipOut::respond(
        key,
        req,
        tag,
        status,
        &[("Allow", crate::endpoint::ALLOW)],
        b"",
    )
}

/// The 500 with Retry-After that refuses the in-dialog request `req` when
/// its CSeq is out of order (RFC 3261 §12.2.2); `None` when `dialog` takes
/// it (and applies its target refresh).
pub(super) fn out_of_order(dialog: &mut Dialog, key: &TxKey, req: &Request) -> Option<SipOut> {
    if dialog.accept_request(req) {
        return None;
    }
    let tag = dialog.local_tag.clone();
    Some(SipOut::respond(
        key,
        req,
        &tag,
        500,
        &[("Retry-After", "1")],
        b"",
    ))
}

/// What a test sees of a [`SipOut`].
#[cfg(test)]
pub(super) mod seen {
    use super::SipOut;
    use crate::sip::message::{parse, Message, Method};

    /// A [`SipOut`] in a word a test can compare, its bytes parsed back
    /// and checked to say the same.
    #[derive(Debug, PartialEq, Eq)]
    pub(in crate::call) enum Sent {
        /// A response: its status and Call-ID.
        Answer(u16, String),
        /// A request: its method and Call-ID.
        Ask(Method, String),
        /// An ACK outside a transaction: its Call-ID.
        Ack(String),
    }

    /// What `out` is.
    pub(in crate::call) fn sent(out: &SipOut) -> Sent {
        let (bytes, call_id) = match out {
            SipOut::Respond { bytes, call_id, .. }
            | SipOut::Request { bytes, call_id, .. }
            | SipOut::Stateless { bytes, call_id, .. } => (bytes, call_id),
        };
        let message = parse(bytes).unwrap_or_else(|e| panic!("we wrote bad SIP: {e:?}"));
        let said_id = match &message {
            Message::Request(r) => &r.core.call_id,
            Message::Response(r) => &r.core.call_id,
        };
        assert_eq!(said_id, call_id, "the bytes name another call");
        match (out, message) {
            (SipOut::Respond { status, .. }, Message::Response(r)) if r.status == *status => {
                Sent::Answer(r.status, r.core.call_id)
            }
            (SipOut::Request { method, .. }, Message::Request(r)) if r.method == *method => {
                Sent::Ask(r.method, r.core.call_id)
            }
            (SipOut::Stateless { .. }, Message::Request(r)) if r.method == Method::Ack => {
                Sent::Ack(r.core.call_id)
            }
            (out, message) => panic!("{out:?} says something else: {message:?}"),
        }
    }
}

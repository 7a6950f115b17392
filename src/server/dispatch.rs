//! Received bytes to the worker that owns their Call-ID, in one of its
//! two lanes: in-dialog traffic first, new requests after.
//!
//! Room: the switchboard's sorting table. It runs on the socket tasks:
//! parses, answers what RFC 3261 wants answered statelessly, and sheds a
//! new INVITE statelessly when its worker's lane is full.

use super::*;

/// Parses one received message and hands it to its worker. Malformed requests
/// get a stateless answer here, when RFC 3261 wants one.
pub(super) fn dispatch(shared: &Arc<Shared>, bytes: &[u8], peer: Peer) {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return; // keep-alive
    }
    match message::parse(bytes) {
        Ok(msg) => {
            let w = shared.worker_of(&msg.core().call_id);
            // New requests (and the CANCELs that must follow their INVITE)
            // wait in their own lane; responses and in-dialog requests go
            // ahead of them.
            let fresh = matches!(&msg, Message::Request(r) if r.core.to.tag.is_none() && r.method != Method::Ack);
            let new_invite = matches!(&msg, Message::Request(r) if r.method == Method::Invite && r.core.to.tag.is_none());
            let lane = if fresh {
                &shared.fresh
            } else {
                &shared.workers
            };
            let sent = lane[w].try_send(WorkerInput::Incoming(Box::new(msg), peer));
            if let Err(mpsc::error::TrySendError::Full(WorkerInput::Incoming(msg, _))) = sent {
                // The worker is swamped past its backlog bound: shed new
                // calls statelessly. An in-dialog request is retransmitted.
                if let (true, Message::Request(req)) = (new_invite, &*msg) {
                    shared.shed_statelessly(req, peer, crate::overload::Shed::Backlog);
                }
            }
        }
        Err(rej) => {
            tracing::debug!(peer = %peer.addr, reason = %rej.reason, status = ?rej.status, "refused message");
            if let (Some(status), Some(echo)) = (rej.status, rej.echo.as_ref()) {
                let reason = if status == 400 {
                    Some(rej.reason.as_str())
                } else {
                    None
                };
                let resp =
                    message::write_response(echo, status, reason, Some(&random_token()), &[], b"");
                shared.sockets.send(peer, Bytes::from(resp));
            }
        }
    }
}

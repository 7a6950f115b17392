//! Attended transfer from the API: the agent consults the target first.
//!
//! Room: the call, at its door, like [`super::transfer`]. `POST
//! /api/v1/calls/{id}/transfer {"to", "attended": true}` puts the caller on
//! music (out of the relay, into the media engine, as a blind transfer
//! does) and rings the target on a socket of its own, while the agent's
//! socket is set aside. When the target answers, a second relay joins the
//! agent and the target: they talk, the caller hears music. Then, as an
//! Asterisk user expects of `atxfer`:
//!
//! - `…/transfer/complete`, or the agent hanging up: the consultation's
//!   relay gives its sockets back, the agent's port is freed and the caller
//!   is relayed to the target's socket; no re-INVITE is needed, both phones
//!   keep the addresses we gave them. The agent gets BYE (if still there).
//! - `…/transfer/cancel`, the target hanging up or declining, or the target
//!   ringing out: the target gets BYE (or CANCEL), its port is freed, the
//!   caller goes back to the agent.
//! - The agent hanging up while the target still rings: the transfer goes
//!   on blind (the target's answer takes the caller; a failure puts them
//!   back in line, or ends the call with the busy notice).
//! - The caller hanging up during the consultation: the agent and the
//!   target go on talking until one of them hangs up (or the API cancels);
//!   then the call ends, the other one gets BYE.
//!
//! It may touch the call's legs, the port pool and the desk tickets the
//! call holds; nothing else.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::control::{Control, ControlReq};
use super::ivr::CallerSaid;
use super::transfer::{After, Reached, Target};
use super::{in_order, offer_or_488, respond, Call, CallEvent, End, Leg};
use crate::acd::Ticket;
use crate::media::player::Law;
use crate::media::ports::PortPool;
use crate::media::relay::{Relay, RelayCmd, Side};
use crate::sip::message::{Method, Request};
use crate::sip::transaction::TxKey;

/// An attended transfer being consulted.
pub(super) struct Consultation {
    /// The consulting agent (shown on the call beside the target).
    pub(super) agent: String,
    /// Our socket facing the agent's phone, set aside while the target is
    /// rung on a socket of its own; the consultation's relay holds it once
    /// the target answered.
    agent_socket: Option<UdpSocket>,
    /// Its address (the agent's SDP names it).
    agent_addr: SocketAddr,
    /// Where the agent's phone takes RTP.
    agent_remote: SocketAddr,
    /// Agent (side A) and target (side B), once the target answered.
    relay: Option<Relay>,
    /// The consultation's relay reports silence here.
    silent: mpsc::Receiver<Side>,
    silent_tx: mpsc::Sender<Side>,
    /// The call was being recorded (it goes on when the caller is back).
    was_recording: bool,
    pool: Arc<PortPool>,
}

impl Drop for Consultation {
    /// A socket still set aside gives its port back (a running relay gives
    /// back its own when dropped).
    fn drop(&mut self) {
        if let Some(s) = self.agent_socket.take() {
            release(&self.pool, s);
        }
    }
}

/// Closes `socket` and returns its port to the pool.
fn release(pool: &PortPool, socket: UdpSocket) {
    if let Ok(addr) = socket.local_addr() {
        drop(socket);
        pool.release(addr.port());
    }
}

/// How a consultation ends.
enum Outcome {
    /// The caller goes to the target.
    Complete,
    /// The caller goes back to the agent (the status for the log).
    Cancel(&'static str),
    /// The call is over.
    Ended(End),
}

/// Which party an in-dialog request came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Party {
    Caller,
    Agent,
    Target,
}

impl Call {
    /// `POST …/transfer {"attended": true}` on the bridge of the caller and
    /// the agent on `b`.
    pub(super) async fn consult(
        &mut self,
        b: Leg,
        ticket: Option<Ticket>,
        user: &str,
        req: ControlReq,
    ) -> After {
        let tag = b.dialog.local_tag.clone();
        let shared = self.ctx.shared.clone();
        let target = match self.transfer_target(user) {
            Ok(Target::Queue(q)) => Err(format!(
                "{q} is a queue: an attended transfer needs someone to consult (an agent or a number); transfer to a queue blind"
            )),
            other => other,
        };
        let target = match target {
            Ok(t) => t,
            Err(why) => {
                info!(to = %user, reason = %why, "attended transfer refused");
                self.refuse(super::transfer::Asker::Api(req), &tag, 403, &why);
                return After::Bridge(Box::new(b), ticket);
            }
        };
        let Some(law) = Law::from_pt(self.voice.codec) else {
            req.answer(Err((409, "transfer needs PCMU or PCMA".into())));
            return After::Bridge(Box::new(b), ticket);
        };
        // The target's own port, before anything moves.
        let Some(target_socket) = shared.ports.bind() else {
            req.answer(Err((503, "no RTP port for the consultation".into())));
            return After::Bridge(Box::new(b), ticket);
        };
        let Ok(target_addr) = target_socket.local_addr() else {
            release(&shared.ports, target_socket);
            req.answer(Err((503, "no RTP port for the consultation".into())));
            return After::Bridge(Box::new(b), ticket);
        };
        let label = target.label().to_string();
        req.answer(Ok(
            serde_json::json!({ "transfer": label, "state": "consulting" }),
        ));
        info!(agent = %self.agent_on_call(), to = %label, "attended transfer: consulting");
        let was_recording = self.recording_on;
        self.show_state("transferring");
        if self.unbridge(law).await.is_none() {
            warn!("the relay could not be taken apart; ending the call");
            release(&shared.ports, target_socket);
            let mut b = b;
            self.bye(&mut b.dialog, b.peer);
            self.bye_caller();
            return After::Ended(End::Refused);
        }
        self.take_off_hold();
        let queue = self.cdr.queue.clone();
        self.music_on_hold(&queue);
        let (silent_tx, silent) = mpsc::channel(2);
        self.consult = Some(Consultation {
            agent: self.agent_on_call().to_string(),
            agent_socket: self.b_socket.take(),
            agent_addr: self.b_addr,
            agent_remote: b.remote_media,
            relay: None,
            silent,
            silent_tx,
            was_recording,
            pool: shared.ports.clone(),
        });
        self.b_socket = Some(target_socket);
        self.b_addr = target_addr;
        self.refer_subscribed = false;
        self.transferor = Some(b);
        let offer = self.bridge_offer();
        let ring = Duration::from_secs(shared.settings.queue.ring_timeout.max(1));
        let on_queue = (!queue.is_empty()).then_some(queue.as_str());
        // Popped again if the caller goes back to the agent.
        self.cdr.transfers.push(label.clone());
        self.keep_record();
        match self.reach_target(&target, ring, &offer, on_queue).await {
            Reached::Answered(leg, new_ticket) => {
                let agent_target = new_ticket.is_some();
                match self.consulting(*leg, &label, agent_target).await {
                    (Outcome::Complete, Some(leg)) => {
                        self.complete(leg, ticket, new_ticket, &label).await
                    }
                    (Outcome::Ended(end), _) => self.consult_ended(end),
                    (outcome, leg) => {
                        let why = match outcome {
                            Outcome::Cancel(why) => why,
                            _ => "the target's leg is gone",
                        };
                        info!(
                            reason = why,
                            "attended transfer called off: the caller goes back to the agent"
                        );
                        drop(new_ticket);
                        self.cancel(leg, ticket, &queue).await
                    }
                }
            }
            Reached::CallerGone => {
                self.release_transferor(487);
                self.consult_ended(End::CallerHungUp)
            }
            Reached::Failed(status) => {
                info!(to = %label, status, "attended transfer: the target was not reached");
                self.cancel(None, ticket, &queue).await
            }
        }
    }

    /// The call ended during the consultation, without a transfer.
    fn consult_ended(&mut self, end: End) -> After {
        self.consult = None;
        self.cdr.transfers.pop();
        if self.cdr.hung_up_by.is_empty() {
            self.cdr.hung_up_by = match end {
                End::CallerHungUp => "caller",
                End::ApiHangup => "api",
                _ => "system",
            }
            .into();
        }
        After::Ended(end)
    }

    /// The answered target joins the agent in the consultation's relay.
    /// `false`: it could not be started (the target is hung up).
    pub(super) async fn consult_media(&mut self, target_remote: SocketAddr) -> bool {
        let timeout = self.rtp_timeout();
        let Some(consult) = self.consult.as_mut() else {
            return false;
        };
        let (Some(agent), Some(target)) = (consult.agent_socket.take(), self.b_socket.take())
        else {
            return false;
        };
        let Some(relay) = self.ctx.shared.engine.bridge(
            consult.pool.clone(),
            agent,
            target,
            None,
            timeout,
            consult.silent_tx.clone(),
        ) else {
            return false;
        };
        for cmd in [
            RelayCmd::Remote(Side::A, consult.agent_remote),
            RelayCmd::Remote(Side::B, target_remote),
            RelayCmd::Watch(true),
        ] {
            let _ = relay.cmd.send(cmd).await;
        }
        consult.relay = Some(relay);
        true
    }

    /// The agent and the target talk until the consultation ends; the
    /// target's leg comes back unless it hung up.
    async fn consulting(
        &mut self,
        mut target: Leg,
        label: &str,
        agent_target: bool,
    ) -> (Outcome, Option<Leg>) {
        self.show_state("consulting");
        self.show_consultation(&target, label, agent_target);
        if self.transferor.is_none() {
            info!("the agent hung up while the target rang: the transfer completes");
            return (Outcome::Complete, Some(target));
        }
        loop {
            let consult_silent = async {
                match self.consult.as_mut() {
                    Some(c) => c.silent.recv().await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                e = self.events.recv() => e,
                side = consult_silent => {
                    warn!(side = ?side, "no RTP in the consultation for rtp_timeout");
                    if side == Some(Side::A) {
                        // The agent's phone is gone: nobody to go back to.
                        if let Some(mut t) = self.transferor.take() {
                            self.bye(&mut t.dialog, t.peer);
                        }
                        return self.consultation_over(Party::Agent, target);
                    }
                    self.bye(&mut target.dialog, target.peer);
                    return self.consultation_over(Party::Target, target);
                }
                _ = self.silent.recv(), if !self.caller_gone => {
                    warn!("no RTP from the caller on hold for rtp_timeout; the caller is gone");
                    self.bye_caller();
                    self.caller_left(&target, label, agent_target);
                    continue;
                }
                Some(req) = self.control.recv() => {
                    match self.consult_control(req, &mut target) {
                        Some(outcome) => {
                            let leg = matches!(outcome, Outcome::Complete).then_some(target);
                            return (outcome, leg);
                        }
                        None => continue,
                    }
                }
            };
            let Some(event) = event else {
                return (Outcome::Ended(End::Refused), None);
            };
            match event {
                CallEvent::Request { key, request, peer } => {
                    let call_id = request.core.call_id.as_str();
                    let party = if call_id == target.dialog.call_id {
                        Party::Target
                    } else if self
                        .transferor
                        .as_ref()
                        .is_some_and(|t| t.dialog.call_id == call_id)
                    {
                        Party::Agent
                    } else if call_id == self.invite.core.call_id {
                        Party::Caller
                    } else {
                        self.stray(CallEvent::Request { key, request, peer });
                        continue;
                    };
                    if party == Party::Caller {
                        if let CallerSaid::Bye = self.caller_request(*key, request) {
                            info!("the caller hung up during the consultation; agent and target go on");
                            self.caller_left(&target, label, agent_target);
                        }
                        continue;
                    }
                    let bye = self
                        .consult_request(party, *key, request, &mut target)
                        .await;
                    if bye {
                        return self.consultation_over(party, target);
                    }
                }
                CallEvent::Response { response, .. }
                    if response.core.call_id == target.dialog.call_id =>
                {
                    // A 2xx to our INVITE again: its ACK was lost.
                    if response.core.cseq_method == Method::Invite
                        && (200..300).contains(&response.status)
                    {
                        self.ack(&mut target.dialog, response.core.cseq, target.peer);
                    }
                }
                CallEvent::Timeout { .. } | CallEvent::Ack | CallEvent::Cancelled => {}
                other => self.stray(other),
            }
        }
    }

    /// The agent (`Party::Agent`) or the target hung up (the request is
    /// answered): what that means depends on whether the caller is still here.
    fn consultation_over(&mut self, party: Party, mut target: Leg) -> (Outcome, Option<Leg>) {
        if party == Party::Agent {
            // Gone: no BYE to send it.
            self.transferor = None;
        }
        if self.caller_gone {
            // Nobody to transfer: whoever is left is hung up.
            if party == Party::Target {
                if let Some(mut t) = self.transferor.take() {
                    self.bye(&mut t.dialog, t.peer);
                }
            } else {
                self.bye(&mut target.dialog, target.peer);
            }
            self.cdr.hung_up_by = "caller".into();
            return (Outcome::Ended(End::CallerHungUp), None);
        }
        match party {
            Party::Agent => {
                info!("the agent hung up during the consultation: the transfer completes");
                (Outcome::Complete, Some(target))
            }
            _ => (Outcome::Cancel("the target hung up"), None),
        }
    }

    /// An API request during the consultation. `Some`: it ends so.
    fn consult_control(&mut self, req: ControlReq, target: &mut Leg) -> Option<Outcome> {
        match &req.control {
            Control::TransferComplete if self.caller_gone => {
                req.answer(Err((
                    409,
                    "the caller hung up; there is nobody to transfer (cancel ends the consultation)"
                        .into(),
                )));
                None
            }
            Control::TransferComplete => {
                info!("attended transfer completed through the API");
                req.answer(Ok(serde_json::json!({ "state": "transferred" })));
                Some(Outcome::Complete)
            }
            Control::TransferCancel => {
                info!("attended transfer cancelled through the API");
                self.bye(&mut target.dialog, target.peer);
                req.answer(Ok(serde_json::json!({ "state": "cancelled" })));
                if self.caller_gone {
                    if let Some(mut t) = self.transferor.take() {
                        self.bye(&mut t.dialog, t.peer);
                    }
                    self.cdr.hung_up_by = "caller".into();
                    return Some(Outcome::Ended(End::CallerHungUp));
                }
                Some(Outcome::Cancel("cancelled through the API"))
            }
            Control::Hangup => {
                info!("hung up through the API during the consultation");
                self.cdr.hung_up_by = "api".into();
                if !self.caller_gone {
                    self.bye_caller();
                }
                self.bye(&mut target.dialog, target.peer);
                if let Some(mut t) = self.transferor.take() {
                    self.bye(&mut t.dialog, t.peer);
                }
                req.answer(Ok(
                    serde_json::json!({ "hung_up": self.invite.core.call_id }),
                ));
                Some(Outcome::Ended(End::ApiHangup))
            }
            Control::SetData(data) => {
                let result = self.set_data(data.clone());
                req.answer(result);
                None
            }
            _ => {
                req.not_now("consulting");
                None
            }
        }
    }

    /// A request in the agent's or the target's dialog while they consult.
    /// `true`: it was a BYE (answered).
    async fn consult_request(
        &mut self,
        party: Party,
        key: TxKey,
        req: Box<Request>,
        target: &mut Leg,
    ) -> bool {
        if party == Party::Target {
            return self.consult_leg_request(target, Side::B, key, req).await;
        }
        let Some(mut agent) = self.transferor.take() else {
            return false;
        };
        let bye = self
            .consult_leg_request(&mut agent, Side::A, key, req)
            .await;
        self.transferor = Some(agent);
        bye
    }

    /// A request in `leg`'s dialog (`side` of the consultation's relay).
    async fn consult_leg_request(
        &mut self,
        leg: &mut Leg,
        side: Side,
        key: TxKey,
        req: Box<Request>,
    ) -> bool {
        if !in_order(&self.ctx, &mut leg.dialog, &key, &req) {
            return false;
        }
        let tag = leg.dialog.local_tag.clone();
        match req.method {
            Method::Bye => {
                respond(&self.ctx, &key, &req, &tag, 200, &[], b"");
                true
            }
            Method::Invite | Method::Update => {
                // A hold or a new address from one phone: our side of the
                // consultation follows it and answers with our own SDP.
                let mut direction = crate::media::sdp::Direction::SendRecv;
                if !req.body.is_empty() {
                    let Some(offer) = offer_or_488(&self.ctx, &key, &req, &tag) else {
                        return false;
                    };
                    leg.remote_media = offer.addr;
                    direction = offer.direction.reversed();
                    if let Some(relay) = self.consult.as_ref().and_then(|c| c.relay.as_ref()) {
                        let _ = relay.cmd.send(RelayCmd::Remote(side, offer.addr)).await;
                        let _ = relay.cmd.send(RelayCmd::Watch(!direction.is_hold())).await;
                    }
                }
                self.answer_with_sdp(leg, &key, &req, direction);
                false
            }
            Method::Info | Method::Options => {
                respond(&self.ctx, &key, &req, &tag, 200, &[], b"");
                false
            }
            _ => {
                respond(&self.ctx, &key, &req, &tag, 403, &[], b"");
                false
            }
        }
    }

    /// The caller goes to the consulted target.
    async fn complete(
        &mut self,
        target: Leg,
        ticket: Option<Ticket>,
        new_ticket: Option<Ticket>,
        label: &str,
    ) -> After {
        let mut target = target;
        let Some((agent_socket, target_socket, _)) = self.end_consultation().await else {
            self.bye(&mut target.dialog, target.peer);
            return After::Ended(End::Refused);
        };
        if let Some(s) = agent_socket {
            release(&self.ctx.shared.ports, s);
        }
        self.b_socket = target_socket;
        if !self.bridge_media().await {
            warn!("the caller could not be bridged to the target; ending the call");
            self.bye(&mut target.dialog, target.peer);
            self.release_transferor(503);
            self.bye_caller();
            return After::Ended(End::Refused);
        }
        self.relay_cmd(RelayCmd::Remote(Side::B, target.remote_media))
            .await;
        self.release_transferor(200);
        if let Some(t) = ticket {
            t.transferred(label);
        }
        self.b_agent = if new_ticket.is_some() {
            label.to_string()
        } else {
            String::new()
        };
        info!(to = %label, "attended transfer complete");
        if new_ticket.is_some() && self.ctx.shared.settings.recording.enabled {
            self.start_recording().await;
        }
        After::Bridge(Box::new(target), new_ticket)
    }

    /// The consultation is over without a transfer: the target's port goes
    /// back, the agent's socket faces the far side again and the caller
    /// goes back to the agent (or, if the agent left while the target
    /// rang, back in line).
    async fn cancel(&mut self, target: Option<Leg>, ticket: Option<Ticket>, queue: &str) -> After {
        if let Some(mut t) = target {
            self.bye(&mut t.dialog, t.peer);
        }
        let Some((agent_socket, target_socket, consult)) = self.end_consultation().await else {
            return After::Ended(End::Refused);
        };
        if let Some(s) = target_socket {
            release(&self.ctx.shared.ports, s);
        }
        self.b_socket = agent_socket;
        self.b_addr = consult.agent_addr;
        let resume_recording = consult.was_recording;
        let offer = self.bridge_offer();
        let after = self.transfer_failed(487, ticket, &offer, queue).await;
        if resume_recording && matches!(after, After::Bridge(..)) {
            self.start_recording().await;
        }
        after
    }

    /// The caller hung up during the consultation: their stream stops and
    /// its port goes back; the agent and the target go on.
    fn caller_left(&mut self, target: &Leg, label: &str, agent_target: bool) {
        self.caller_gone = true;
        if let Some(ivr) = self.ivr.take() {
            drop(ivr.stream);
            release(&self.ctx.shared.ports, ivr.socket);
        }
        self.show_consultation(target, label, agent_target);
    }

    /// Ends the consultation: its relay (if the target answered) gives back
    /// the agent's and the target's sockets, which are otherwise where they
    /// were set aside. `None`: there was none.
    async fn end_consultation(
        &mut self,
    ) -> Option<(Option<UdpSocket>, Option<UdpSocket>, Consultation)> {
        let mut consult = self.consult.take()?;
        let sockets = match consult.relay.take() {
            Some(relay) => {
                let (tx, rx) = oneshot::channel();
                let _ = relay.cmd.send(RelayCmd::Release(tx)).await;
                match rx.await {
                    Ok(released) => (Some(released.a), Some(released.b)),
                    // The relay ended on its own and gave its ports back.
                    Err(_) => (None, None),
                }
            }
            None => (consult.agent_socket.take(), self.b_socket.take()),
        };
        Some((sockets.0, sockets.1, consult))
    }

    /// Shows the consultation: the agent and the target (an agent's ID is
    /// shown with the consulting agent's, so both may see the call), their
    /// legs, and the caller's while they are on hold.
    fn show_consultation(&self, target: &Leg, label: &str, agent_target: bool) {
        let Some(consult) = &self.consult else {
            return;
        };
        let mut agents = consult.agent.clone();
        if agent_target {
            agents = format!("{agents},{label}");
        }
        let mut legs = Vec::new();
        if !self.caller_gone {
            legs.push(self.caller_leg_view());
        }
        if let Some(t) = &self.transferor {
            legs.push(super::control::leg_view(
                "agent",
                &consult.agent,
                &t.dialog.call_id,
                &t.peer,
                t.remote_media,
            ));
        }
        let role = if agent_target { "agent" } else { "far" };
        legs.push(super::control::leg_view(
            role,
            label,
            &target.dialog.call_id,
            &target.peer,
            target.remote_media,
        ));
        self.show(|v| {
            v.agent = agents;
            v.legs = legs;
        });
    }
}

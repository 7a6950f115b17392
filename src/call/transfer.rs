//! Transfers: an agent hands the caller on from its phone.
//!
//! Room: the call, at its door. A REFER from the agent's leg (RFC 3515)
//! names where the caller goes: another agent (by ID), a queue (by name, or
//! a number the plan routes to one), a peer centre from `[transfer.centres]`
//! (一键互转), or an emergency number, which goes out through the trunk.
//!
//! - Blind: the REFER gets 202 and a NOTIFY "100 Trying"; the caller leaves
//!   the relay for the media engine and hears music while the target rings;
//!   the agent's phone hears the outcome in a final NOTIFY (RFC 3515
//!   §2.4.5, message/sipfrag). An answer bridges the caller to the target
//!   and hangs up the agent; a failure gives the caller back to the agent,
//!   or, if the agent already hung up, to the call's queue.
//! - Attended (RFC 3891 Replaces): the agent already talks to the target on
//!   a consultation call it placed through us. That call hands its far leg
//!   over (its dialog, and its desk ticket), hangs up the agent's
//!   consultation leg and ends; this call re-INVITEs the target to its own
//!   relay.
//!
//! It may touch the call's legs, the desk (claims and transfer records) and
//! its door in the registry of live calls ([`super::LiveCalls`]); nothing
//! else.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::ivr::IvrMedia;
use super::queue::Unserved;
use super::sip_out::SipOut;
use super::House;
use super::{respond, Call, CallCtx, CallEvent, End, Leg, Offer};
use crate::acd::{SeatContact, Ticket};
use crate::media::engine::{MediaEvent, StreamSetup};
use crate::media::player::Law;
use crate::media::relay::{RelayCmd, Side};
use crate::media::sdp::{AudioOffer, Direction};
use crate::routing::Route;
use crate::sip::dialog::Dialog;
use crate::sip::message::{Method, Request};
use crate::sip::transaction::TxKey;
use crate::sip::{random_token, Peer, SipTarget};

/// Where a transfer (or an agent's own call) goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// An agent, by ID.
    Agent(String),
    /// A queue, by name.
    Queue(String),
    /// Out through the trunk or to a SIP URI.
    Out {
        /// What the agent dialed (for the records).
        label: String,
        /// Where.
        target: SipTarget,
        /// What kind of number it is, for an agent's own call's CDR
        /// (`emergency`, `centre`, or an [`crate::outbound::Class`]);
        /// empty for a flow's targets.
        class: &'static str,
    },
}

impl Target {
    pub(super) fn label(&self) -> &str {
        match self {
            Target::Agent(id) => id,
            Target::Queue(q) => q,
            Target::Out { label, .. } => label,
        }
    }
}

/// A consultation call's far leg, handed to the call that replaces it.
pub(super) struct Handed {
    pub(super) dialog: Dialog,
    pub(super) peer: Peer,
    pub(super) remote_media: SocketAddr,
    pub(super) ticket: Option<Ticket>,
    pub(super) agent: String,
}

/// A request to a consultation call: give your far leg to the asking call.
pub(super) struct Takeover {
    /// The agent asking (only the agent who placed the consultation may).
    pub(super) agent: String,
    pub(super) reply: oneshot::Sender<Handed>,
}

/// Who asked for a blind transfer.
pub(super) enum Asker {
    /// The agent's phone, by REFER (answered 202, then NOTIFYs).
    Refer(TxKey, Box<Request>),
    /// The API (answered at once; the outcome shows in events and the call).
    Api(super::control::ControlReq),
}

/// What happens after a transfer attempt.
pub(super) enum After {
    /// Bridge the caller to this leg (the new target, or the agent again).
    Bridge(Box<Leg>, Option<Ticket>),
    /// The call is over.
    Ended(End),
}

/// The dialog a `Replaces` names (RFC 3891).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Replaces {
    call_id: String,
}

/// A number sent out through `[trunk] outbound`, unless it would come
/// straight back: the trunk delivers every number our own plan routes to
/// us, so sending one out is a hairpin (two trunk channels per turn, each
/// billed, round and round). Emergency numbers always go. `None` (logged
/// with the reason) when the number may not or cannot go out.
pub(super) fn outbound(shared: &House, number: &str) -> Option<SipTarget> {
    let settings = &shared.settings;
    let Some(gateway) = SipTarget::parse(&settings.trunk.outbound) else {
        warn!(number, "no [trunk] outbound: the number cannot be called");
        return None;
    };
    if let Some(route) = hairpin(shared, number) {
        warn!(
            number,
            route = %route,
            "refused: the number routes back to us (hairpin through the trunk)"
        );
        return None;
    }
    let mut t = gateway;
    t.uri = format!("sip:{number}@{}", t.peer.addr);
    t.user = Some(number.to_string());
    Some(t)
}

/// The route of our own plan `number` would arrive on if sent out through
/// the trunk (emergency numbers are never held back).
fn hairpin(shared: &House, number: &str) -> Option<String> {
    let settings = &shared.settings;
    if settings.transfer.emergency.iter().any(|n| n == number) {
        return None;
    }
    let normalized = crate::routing::normalize(number, &settings.trunk.normalize)?;
    match shared.store.route_for(&normalized) {
        Ok(route) => route.map(|r| r.number),
        // Unknown is not safe: a plan we cannot read may hold it.
        Err(e) => {
            warn!(error = %e, "number plan lookup failed");
            Some(normalized)
        }
    }
}

/// Decodes %XX escapes (URI headers carry `;` and `=` escaped).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The user part of a Refer-To URI and its `Replaces`, if any:
/// `<sip:1002@host;transport=udp?Replaces=abc%40h%3Bto-tag%3D1%3Bfrom-tag%3D2>`.
pub(super) fn parse_refer_to(value: &str) -> Option<(String, Option<Replaces>)> {
    let value = value.trim();
    let uri = match value.find('<') {
        Some(open) => {
            let rest = &value[open + 1..];
            &rest[..rest.find('>')?]
        }
        // Without brackets, parameters after `;` belong to the header.
        None => value.split(';').next()?,
    };
    let (uri, headers) = match uri.split_once('?') {
        Some((u, h)) => (u, Some(h)),
        None => (uri, None),
    };
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .or_else(|| uri.strip_prefix("tel:"))?;
    let user = match rest.split_once('@') {
        Some((user, _)) => user,
        None if uri.starts_with("tel:") => rest,
        None => return None,
    };
    let user = percent_decode(user.split(';').next().unwrap_or_default());
    if user.is_empty() || user.len() > 64 || user.chars().any(|c| c.is_control() || c == ' ') {
        return None;
    }
    let replaces = headers.and_then(|h| {
        h.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            if !k.eq_ignore_ascii_case("replaces") {
                return None;
            }
            let v = percent_decode(v);
            let call_id = v.split(';').next()?.trim().to_string();
            (!call_id.is_empty()).then_some(Replaces { call_id })
        })
    });
    Some((user, replaces))
}

/// Where `user` (from a Refer-To, or dialed by an agent) leads, if anywhere
/// an agent may send a call: emergency numbers first, then peer centres,
/// agents, queues by name, and numbers the plan routes to a queue.
pub(super) fn resolve(shared: &House, user: &str) -> Option<Target> {
    let settings = &shared.settings;
    if settings.transfer.emergency.iter().any(|n| n == user) {
        return outbound(shared, user).map(|target| Target::Out {
            label: user.to_string(),
            target,
            class: "emergency",
        });
    }
    if let Some(to) = settings.transfer.centres.get(user) {
        let target = if to.starts_with("sip:") {
            SipTarget::parse(to)
        } else {
            outbound(shared, to)
        };
        return target.map(|target| Target::Out {
            label: user.to_string(),
            target,
            class: "centre",
        });
    }
    if matches!(shared.store.agent(user), Ok(Some(_))) {
        return Some(Target::Agent(user.to_string()));
    }
    if shared.queues().contains_key(user) {
        return Some(Target::Queue(user.to_string()));
    }
    let number = crate::routing::normalize(user, &settings.trunk.normalize)?;
    match shared.store.route_for(&number) {
        Ok(Some(route)) if route.flow.is_empty() && !route.queue.is_empty() => {
            Some(Target::Queue(route.queue))
        }
        _ => None,
    }
}

/// What an agent's phone reaches by dialing a number.
pub enum AgentDial {
    /// Straight to a target outside the number plan.
    Direct(DirectTarget),
    /// Through the number plan, as any caller's call would go.
    Plan,
    /// Not permitted: a Forbidden, with this reason.
    Refused(String),
}

/// Where an agent's own call goes when the number plan is not asked.
pub struct DirectTarget(pub(super) Target);

/// What agent `agent` reaches by dialing `dialed` from its phone: another
/// agent, an emergency number or a peer centre straight; a number our plan
/// routes through the plan; any other number out through the trunk when
/// the agent's dialing permissions allow it (callbacks, 回访).
pub fn agent_dial(shared: &House, agent: &str, dialed: &str) -> AgentDial {
    if dialed == agent {
        return AgentDial::Plan;
    }
    match resolve(shared, dialed) {
        Some(t @ (Target::Agent(_) | Target::Out { .. })) => {
            return AgentDial::Direct(DirectTarget(t))
        }
        Some(Target::Queue(_)) => return AgentDial::Plan,
        None => {}
    }
    let settings = &shared.settings;
    let dialable = crate::outbound::dialable(dialed, &settings.trunk.normalize, &settings.outbound);
    let Some(number) = dialable else {
        return AgentDial::Plan;
    };
    if settings.trunk.outbound.is_empty() || !matches!(shared.store.route_for(&number), Ok(None)) {
        return AgentDial::Plan;
    }
    match permitted(shared, agent, &number) {
        Ok(t) => AgentDial::Direct(DirectTarget(t)),
        Err(why) => AgentDial::Refused(why),
    }
}

/// `number` (normalized) out through the trunk for agent `agent`, if its
/// dialing permissions (its own list, or `[outbound] allow`) allow it and
/// the number may go out at all (no hairpins).
fn permitted(shared: &House, agent: &str, number: &str) -> Result<Target, String> {
    let settings = &shared.settings;
    let list = match shared.store.agent(agent) {
        Ok(a) => a.and_then(|a| a.dial),
        Err(e) => {
            warn!(agent, error = %e, "agent record unreadable; dialing refused");
            return Err(format!("agent {agent}'s permissions cannot be read"));
        }
    };
    let class = match crate::outbound::decide(
        number,
        agent,
        list.as_deref(),
        &settings.outbound,
        &settings.transfer.emergency,
    ) {
        crate::outbound::Verdict::Allowed(class) => class,
        crate::outbound::Verdict::Refused(class, why) => {
            info!(
                agent,
                number,
                class = class.label(),
                "outbound dial refused: {why}"
            );
            return Err(why);
        }
    };
    let target = outbound(shared, number).ok_or_else(|| format!("{number} cannot go out"))?;
    Ok(Target::Out {
        label: number.to_string(),
        target,
        class: class.label(),
    })
}

/// Short reason phrases for the NOTIFY bodies.
fn phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        486 => "Busy Here",
        487 => "Request Terminated",
        _ => "Service Unavailable",
    }
}

/// A call an agent's phone placed to another agent, a centre or an
/// emergency number. While it runs, an attended transfer by the same agent
/// may take over its far leg.
#[allow(clippy::too_many_arguments)]
pub(super) async fn call_target(
    ctx: CallCtx,
    events: crate::boxed::Receiver<CallEvent>,
    a_key: TxKey,
    invite: Request,
    a_peer: Peer,
    route: &Route,
    agent: String,
    target: Target,
) -> End {
    let a_tag = random_token();
    let Some(offer) = super::offer_or_488(&ctx, &a_key, &invite, &a_tag) else {
        return End::RefusedAtSetup(488);
    };
    let shared = ctx.shared.clone();
    let call_id = invite.core.call_id.clone();
    let mut call = Call::new(ctx, events, a_key, invite, a_tag, a_peer, &offer, route);
    call.caller_agent = Some(agent.clone());
    call.cdr.hotline = "agent call".into();
    if let Target::Out { class, .. } = &target {
        // Its own CDR, apart from the citizens' calls in the report.
        call.cdr.hotline = "outbound".into();
        call.cdr.outbound = class.to_string();
    }
    call.keep_record();
    let (tx, rx) = mpsc::channel(1);
    shared.calls.open_takeover(&call_id, tx);
    call.takeover = Some(rx);
    info!(agent = %agent, to = %target.label(), "agent call");
    let ring = Duration::from_secs(shared.settings.queue.ring_timeout.max(1));
    let end = match call.reach_target(&target, ring, &offer, None).await {
        Reached::Answered(leg, ticket) => {
            call.cdr.disposition = crate::store::Disposition::Answered;
            let a_dialog = Dialog::uas(&call.invite, &call.a_tag);
            call.bridge_to_end(a_dialog, *leg, ticket).await
        }
        Reached::Failed(status) => {
            call.a_respond(status, &[], b"");
            End::NoAgent
        }
        Reached::CallerGone => End::CallerCancelled,
    };
    call.note_end(&end);
    end
}

/// A number out through the trunk for `agent` (`""`: by `[outbound] allow`
/// alone): dialable, not one our own plan routes (it would come straight
/// back), and within the agent's dialing permissions.
pub(super) fn outside_target(shared: &House, agent: &str, user: &str) -> Result<Target, String> {
    let settings = &shared.settings;
    let refused = || format!("{user} is not a number that may be called out");
    let number = crate::outbound::dialable(user, &settings.trunk.normalize, &settings.outbound)
        .ok_or_else(refused)?;
    if settings.trunk.outbound.is_empty() {
        return Err("no [trunk] outbound is configured".into());
    }
    if !matches!(shared.store.route_for(&number), Ok(None)) {
        return Err(format!("{number} is one of our own numbers"));
    }
    permitted(shared, agent, &number)
}

/// How ringing a target ended.
pub(super) enum Reached {
    Answered(Box<Leg>, Option<Ticket>),
    Failed(u16),
    CallerGone,
}

impl Call {
    /// Rings an agent or an outside target for the caller (`queue`: the
    /// queue the call is accounted to, for an agent claimed by name).
    pub(super) async fn reach_target(
        &mut self,
        target: &Target,
        ring: Duration,
        offer: &AudioOffer,
        queue: Option<&str>,
    ) -> Reached {
        let shared = self.ctx.shared.clone();
        let route = self.route.clone();
        let (seat, ticket) = match target {
            Target::Agent(id) => {
                let (ticket, claimed) =
                    shared.acd.claim(&self.invite.core.call_id, id, queue).await;
                match claimed {
                    Ok(seat) => (seat, Some(ticket)),
                    Err(e) => {
                        info!(agent = %id, reason = %e, "target agent cannot take the call");
                        let status = if e.contains("on-call")
                            || e.contains("ringing")
                            || e.contains("wrap-up")
                        {
                            486
                        } else {
                            480
                        };
                        return Reached::Failed(status);
                    }
                }
            }
            Target::Out { label, target, .. } => (
                SeatContact {
                    agent: label.clone(),
                    uri: target.uri.clone(),
                    peer: target.peer,
                },
                None,
            ),
            Target::Queue(_) => return Reached::Failed(480),
        };
        let uri = seat.uri.clone();
        match self
            .offer_to(&[(seat, uri)], ring, offer, &route, ticket.as_ref())
            .await
        {
            Offer::Answered(leg) => Reached::Answered(leg, ticket),
            Offer::Next => Reached::Failed(480),
            Offer::CallerGone => Reached::CallerGone,
        }
    }

    /// Where a transfer to `user` goes: an agent (not the one on the call),
    /// a queue, a centre, an emergency number, or a number out through the
    /// trunk when the transferring agent may dial it.
    pub(super) fn transfer_target(&self, user: &str) -> Result<Target, String> {
        let shared = &self.ctx.shared;
        let agent = self.agent_on_call();
        match resolve(shared, user) {
            Some(Target::Agent(id)) if id == agent => {
                Err(format!("agent {agent} cannot transfer a call to itself"))
            }
            Some(t) => Ok(t),
            None => outside_target(shared, agent, user),
        }
    }

    /// Sends a NOTIFY for the REFER on `leg` with the target's progress.
    pub(super) fn notify(&self, leg: &mut Leg, status: u16, done: bool) {
        let state = if done {
            "terminated;reason=noresource"
        } else {
            "active;expires=60"
        };
        let body = format!("SIP/2.0 {status} {}\r\n", phrase(status));
        let contact = self.contact(&leg.peer);
        let (out, _, _) = SipOut::in_dialog(
            &self.ctx.shared.host,
            &mut leg.dialog,
            leg.peer,
            Method::Notify,
            &[
                ("Event", "refer"),
                ("Subscription-State", state),
                ("Contact", &contact),
                ("Content-Type", "message/sipfrag;version=2.0"),
            ],
            body.as_bytes(),
        );
        self.send(out);
    }

    /// The final NOTIFY of a transfer, for an agent whose REFER asked for it.
    fn tell_transferor(&self, leg: &mut Leg, status: u16) {
        if self.refer_subscribed {
            self.notify(leg, status, true);
        }
    }

    /// Refuses a transfer: a SIP answer to the REFER (with a Warning), or
    /// the API's (422 for a target it may not reach, 409 otherwise).
    pub(super) fn refuse(&self, asker: Asker, tag: &str, status: u16, why: &str) {
        match asker {
            Asker::Refer(key, req) => {
                let warning = crate::sip::warning(why);
                respond(
                    &self.ctx,
                    &key,
                    &req,
                    tag,
                    status,
                    &[("Warning", &warning)],
                    b"",
                );
            }
            Asker::Api(req) => {
                let http = if status == 403 { 422 } else { 409 };
                req.answer(Err((http, why.to_string())));
            }
        }
    }

    /// The transferring agent's leg learns the outcome and is hung up.
    pub(super) fn release_transferor(&mut self, status: u16) {
        if let Some(mut t) = self.transferor.take() {
            self.tell_transferor(&mut t, status);
            self.bye(&mut t.dialog, t.peer);
        }
    }

    /// An agent's REFER on its leg `b`. The caller's dialog is in
    /// `self.a_dialog`.
    pub(super) async fn transfer(
        &mut self,
        b: Leg,
        ticket: Option<Ticket>,
        key: TxKey,
        req: Box<Request>,
    ) -> After {
        let tag = b.dialog.local_tag.clone();
        let refer_to = req.headers.get("refer-to").and_then(parse_refer_to);
        let Some((user, replaces)) = refer_to else {
            info!("REFER without a usable Refer-To");
            respond(&self.ctx, &key, &req, &tag, 400, &[], b"");
            return After::Bridge(Box::new(b), ticket);
        };
        if let Some(replaces) = replaces {
            return self.attended(b, ticket, key, req, &user, replaces).await;
        }
        if let Some(flow) = self.ctx.shared.settings.transfer.flows.get(&user).cloned() {
            return self
                .send_into_flow(b, ticket, &flow, Asker::Refer(key, req))
                .await;
        }
        self.blind(b, ticket, &user, Asker::Refer(key, req)).await
    }

    /// The agent on `b` sends the caller into `flow` (a rating) and leaves:
    /// the agent's leg ends and wrap-up starts, as when the agent hangs up
    /// with an after-call flow set; the records count no transfer.
    pub(super) async fn send_into_flow(
        &mut self,
        mut b: Leg,
        ticket: Option<Ticket>,
        flow: &str,
        asker: Asker,
    ) -> After {
        let tag = b.dialog.local_tag.clone();
        if !self.after_call_ok || ticket.is_none() {
            self.refuse(
                asker,
                &tag,
                403,
                "only a queue call's caller can be sent into a flow",
            );
            return After::Bridge(Box::new(b), ticket);
        }
        if !self.ctx.shared.catalog().flows.contains_key(flow) {
            self.refuse(asker, &tag, 403, &format!("flow {flow} is not loaded"));
            return After::Bridge(Box::new(b), ticket);
        }
        if Law::from_pt(self.voice.codec).is_none() {
            self.refuse(asker, &tag, 488, "a flow needs PCMU or PCMA");
            return After::Bridge(Box::new(b), ticket);
        }
        match asker {
            Asker::Refer(key, req) => {
                respond(&self.ctx, &key, &req, &tag, 202, &[], b"");
                self.notify(&mut b, 200, true);
            }
            Asker::Api(req) => {
                req.answer(Ok(serde_json::json!({ "flow": flow, "state": "ivr" })));
            }
        }
        info!(agent = %self.agent_on_call(), flow, "the agent sends the caller into a flow and leaves");
        self.bye(&mut b.dialog, b.peer);
        let b_call_id = b.dialog.call_id.clone();
        let _ = self
            .worker_for(&b_call_id)
            .send(crate::endpoint::WorkerInput::Unbind { call_id: b_call_id })
            .await;
        self.cdr.hung_up_by = "agent".into();
        self.after_call = Some(flow.to_string());
        After::Ended(self.caller_to_after_call(ticket).await)
    }

    /// A blind transfer of the caller from the agent on `b` to `user` (an
    /// agent ID, a queue, a centre, a number), asked by the agent's REFER or
    /// by the API.
    pub(super) async fn blind(
        &mut self,
        mut b: Leg,
        ticket: Option<Ticket>,
        user: &str,
        asker: Asker,
    ) -> After {
        let tag = b.dialog.local_tag.clone();
        let shared = self.ctx.shared.clone();
        let target = match self.transfer_target(user) {
            Ok(t) => t,
            Err(why) => {
                info!(to = %user, reason = %why, "transfer refused");
                self.refuse(asker, &tag, 403, &why);
                return After::Bridge(Box::new(b), ticket);
            }
        };
        let Some(law) = Law::from_pt(self.voice.codec) else {
            self.refuse(asker, &tag, 488, "transfer needs PCMU or PCMA");
            return After::Bridge(Box::new(b), ticket);
        };
        self.refer_subscribed = match asker {
            Asker::Refer(key, req) => {
                respond(&self.ctx, &key, &req, &tag, 202, &[], b"");
                self.notify(&mut b, 100, false);
                true
            }
            Asker::Api(req) => {
                req.answer(Ok(
                    serde_json::json!({ "transfer": target.label(), "state": "transferring" }),
                ));
                false
            }
        };
        info!(agent = %self.agent_on_call(), to = %target.label(), by = if self.refer_subscribed { "REFER" } else { "API" }, "blind transfer");
        self.show_state("transferring");
        if self.unbridge(law).await.is_none() {
            warn!("the relay could not be taken apart; ending the call");
            self.tell_transferor(&mut b, 503);
            self.bye(&mut b.dialog, b.peer);
            self.bye_caller();
            return After::Ended(End::Refused);
        }
        self.take_off_hold();
        let queue = self.cdr.queue.clone();
        self.music_on_hold(&queue);
        self.transferor = Some(b);
        let offer = self.bridge_offer();
        let label = target.label().to_string();
        self.cdr.transfers.push(label.clone());
        self.keep_record();
        if let Target::Queue(q) = &target {
            // Into a queue the transfer is done once the caller is in line
            // (`transfer_joined`); a queue that will not take them gives
            // them back to the agent.
            self.transfer_pending = Some((ticket, label));
            return self.requeue(&offer, q).await;
        }
        let ring = Duration::from_secs(shared.settings.queue.ring_timeout.max(1));
        let on_queue = (!queue.is_empty()).then_some(queue.as_str());
        match self.reach_target(&target, ring, &offer, on_queue).await {
            Reached::Answered(leg, new_ticket) => {
                info!(to = %label, "transfer answered");
                self.release_transferor(200);
                if let Some(t) = ticket {
                    t.transferred(&label);
                }
                if new_ticket.is_some() && shared.settings.recording.enabled {
                    self.start_recording().await;
                }
                After::Bridge(leg, new_ticket)
            }
            Reached::CallerGone => {
                self.release_transferor(487);
                After::Ended(End::CallerHungUp)
            }
            Reached::Failed(status) => {
                info!(to = %label, status, "transfer failed");
                self.transfer_failed(status, ticket, &offer, &queue).await
            }
        }
    }

    /// A transfer did not reach its target: the caller goes back to the
    /// agent, or, if the agent left, back in `queue` (or hears the busy
    /// notice when the call had none).
    pub(super) async fn transfer_failed(
        &mut self,
        status: u16,
        ticket: Option<Ticket>,
        offer: &AudioOffer,
        queue: &str,
    ) -> After {
        match self.back_to_transferor(status, ticket).await {
            Ok(after) => after,
            Err(()) if queue.is_empty() => {
                self.busy_notice_and_hangup().await;
                After::Ended(End::NoAgent)
            }
            // The agent left: the caller goes back to the queue.
            Err(()) => self.requeue(offer, queue).await,
        }
    }

    /// A transfer failed: the caller goes back to the transferring agent,
    /// who hears `status` in the final NOTIFY. `Err` if the agent already
    /// hung up (their ticket is dropped: the desk releases them).
    async fn back_to_transferor(
        &mut self,
        status: u16,
        ticket: Option<Ticket>,
    ) -> Result<After, ()> {
        self.cdr.transfers.pop();
        let Some(mut agent) = self.transferor.take() else {
            drop(ticket);
            return Err(());
        };
        self.tell_transferor(&mut agent, status);
        if !self.bridge_media().await {
            self.bye(&mut agent.dialog, agent.peer);
            self.bye_caller();
            return Ok(After::Ended(End::Refused));
        }
        self.relay_cmd(RelayCmd::Remote(Side::B, agent.remote_media))
            .await;
        Ok(After::Bridge(Box::new(agent), ticket))
    }

    /// The transferred caller is in the target queue's line: the transfer
    /// is complete for the agent who made it.
    pub(super) fn transfer_joined(&mut self) {
        if let Some((ticket, label)) = self.transfer_pending.take() {
            self.release_transferor(200);
            if let Some(t) = ticket {
                t.transferred(&label);
            }
        }
    }

    /// Puts the answered caller in `queue` after a transfer.
    async fn requeue(&mut self, offer: &AudioOffer, queue: &str) -> After {
        let route = self.route.clone();
        let rank = self.rank(0);
        match self.wait_for_agent(offer, &route, queue, rank).await {
            Ok((leg, ticket)) => {
                if self.ctx.shared.settings.recording.enabled {
                    self.start_recording().await;
                }
                After::Bridge(Box::new(leg), Some(ticket))
            }
            Err(Unserved::CallerGone) => {
                if self.transfer_pending.take().is_some() {
                    self.release_transferor(487);
                }
                After::Ended(End::CallerHungUp)
            }
            Err(_) => {
                // The target queue would not take the caller at all.
                if let Some((ticket, _)) = self.transfer_pending.take() {
                    info!("the target queue does not take the caller; transfer failed");
                    if let Ok(after) = self.back_to_transferor(480, ticket).await {
                        return after;
                    }
                }
                self.busy_notice_and_hangup().await;
                After::Ended(End::NoAgent)
            }
        }
    }

    /// An attended transfer: the consultation call `replaces` names gives
    /// its far leg to this call.
    async fn attended(
        &mut self,
        mut b: Leg,
        ticket: Option<Ticket>,
        key: TxKey,
        req: Box<Request>,
        user: &str,
        replaces: Replaces,
    ) -> After {
        let tag = b.dialog.local_tag.clone();
        let shared = self.ctx.shared.clone();
        let Some(consult) = shared.calls.takeover_of(&replaces.call_id) else {
            info!(call_id = %replaces.call_id, "Replaces names no consultation call");
            respond(&self.ctx, &key, &req, &tag, 481, &[], b"");
            return After::Bridge(Box::new(b), ticket);
        };
        respond(&self.ctx, &key, &req, &tag, 202, &[], b"");
        self.notify(&mut b, 100, false);
        let (reply, handed) = oneshot::channel();
        let asked = consult
            .send(Takeover {
                agent: self.agent_on_call().to_string(),
                reply,
            })
            .await;
        let handed = match asked {
            Ok(()) => tokio::time::timeout(Duration::from_secs(5), handed)
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        let Some(handed) = handed else {
            info!("the consultation call did not hand over its leg (not answered yet?)");
            self.notify(&mut b, 481, true);
            return After::Bridge(Box::new(b), ticket);
        };
        let Handed {
            dialog,
            peer,
            remote_media,
            ticket: new_ticket,
            agent: new_agent,
        } = handed;
        self.b_agent = new_agent.clone();
        let label = if new_agent.is_empty() {
            user.to_string()
        } else {
            new_agent.clone()
        };
        info!(agent = %self.agent_on_call(), to = %label, "attended transfer");
        // The target's dialog is ours from now on.
        let _ = self
            .worker_for(&dialog.call_id)
            .send(crate::endpoint::WorkerInput::Bind {
                call_id: dialog.call_id.clone(),
                owner: self.ctx.events_tx.clone(),
            })
            .await;
        let mut target = Leg {
            side: Side::B,
            dialog,
            peer,
            media: self.b_addr,
            sdp_version: 100,
            pending: None,
            our_reinvite: None,
            remote_media,
        };
        // The target now talks to our relay's far side.
        self.relay_cmd(RelayCmd::Remote(Side::B, remote_media))
            .await;
        let (key, _, cseq) = self.send_invite(
            &mut target.dialog,
            target.peer,
            target.media,
            target.sdp_version,
            Direction::SendRecv,
        );
        target.our_reinvite = Some((key, cseq));
        self.notify(&mut b, 200, true);
        self.bye(&mut b.dialog, b.peer);
        let _ = self
            .worker_for(&b.dialog.call_id)
            .send(crate::endpoint::WorkerInput::Unbind {
                call_id: b.dialog.call_id.clone(),
            })
            .await;
        if let Some(t) = ticket {
            t.transferred(&label);
        }
        self.cdr.transfers.push(label);
        self.keep_record();
        self.take_off_hold();
        After::Bridge(Box::new(target), new_ticket)
    }

    /// The offer we make targets: the caller's codec (the caller is answered).
    pub(super) fn bridge_offer(&self) -> AudioOffer {
        AudioOffer {
            addr: self.a_remote,
            codecs: vec![self.voice.codec],
            telephone_event: self.voice.telephone_event,
            direction: Direction::SendRecv,
        }
    }

    /// A caller the agent put on hold is taken off it (a transfer moves them on).
    pub(super) fn take_off_hold(&mut self) {
        if !self.a_direction.is_hold() {
            return;
        }
        let Some(mut dialog) = self.a_dialog.take() else {
            return;
        };
        self.a_sdp_version += 1;
        self.send_invite(
            &mut dialog,
            self.a_peer,
            self.a_media(),
            self.a_sdp_version,
            Direction::SendRecv,
        );
        self.a_direction = Direction::SendRecv;
        self.a_dialog = Some(dialog);
    }

    /// Takes the relay apart: the caller's socket goes back to the media
    /// engine (continuing the stream they heard), the far socket waits for
    /// the next leg. Returns where the caller's keys and prompt ends come.
    pub(super) async fn unbridge(&mut self, law: Law) -> Option<mpsc::Receiver<MediaEvent>> {
        let relay = self.relay.take()?;
        // Released, the relay closes any recording.
        self.recording_on = false;
        let (tx, rx) = oneshot::channel();
        if relay.cmd.send(RelayCmd::Release(tx)).await.is_err() {
            return None;
        }
        let released = rx.await.ok()?;
        drop(relay);
        let pool = self.ctx.shared.ports.clone();
        let remote = released.a_remote.unwrap_or(self.a_remote);
        let (media_tx, media_rx) = mpsc::channel(64);
        let stream = released.a.try_clone().and_then(|dup| {
            self.ctx.shared.engine.add(StreamSetup {
                socket: dup,
                remote,
                law,
                telephone_event: self.voice.telephone_event,
                events: media_tx,
                silence: Some((self.silent_tx.clone(), self.rtp_timeout())),
                continuing: Some(released.numbering),
            })
        });
        match stream {
            Ok(stream) => {
                self.a_remote = remote;
                self.ivr = Some(IvrMedia {
                    stream,
                    socket: released.a,
                });
                self.b_socket = Some(released.b);
                Some(media_rx)
            }
            Err(e) => {
                warn!(error = %e, "media engine refused the caller's stream");
                for s in [&released.a, &released.b] {
                    if let Ok(addr) = s.local_addr() {
                        pool.release(addr.port());
                    }
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refer_to_gives_the_user_and_the_replaced_dialog() {
        assert_eq!(
            parse_refer_to("<sip:1002@12345.hotline;transport=udp>"),
            Some(("1002".into(), None))
        );
        assert_eq!(
            parse_refer_to("sip:110@127.0.0.1;method=INVITE"),
            Some(("110".into(), None))
        );
        assert_eq!(parse_refer_to("<tel:120>"), Some(("120".into(), None)));
        assert_eq!(
            parse_refer_to(
                "<sip:agent2@127.0.0.1?Replaces=abc%40phone%3Bto-tag%3D12%3Bfrom-tag%3D34&Require=replaces>"
            ),
            Some((
                "agent2".into(),
                Some(Replaces {
                    call_id: "abc@phone".into()
                })
            ))
        );
        assert_eq!(parse_refer_to("<sip:127.0.0.1>"), None);
        assert_eq!(parse_refer_to("<sip:@host>"), None);
        assert_eq!(parse_refer_to("<http://x>"), None);
        assert_eq!(parse_refer_to("<sip:a b@host>"), None);
        assert_eq!(parse_refer_to("<sip:%zz@h>"), Some(("%zz".into(), None)));
        assert_eq!(parse_refer_to("<sip:x@h?Replaces=%"), None);
    }
}

//! The B2BUA: one task per call, owning both legs.
//!
//! Room: the call. A call task owns the caller's leg (A, the trunk side), the
//! agent's leg (B), their dialogs and the media relay. It hears about its
//! legs only through [`CallEvent`]s from its SIP worker, and speaks only by
//! sending [`WorkerInput`]s back, so no lock is shared with anyone. Its life:
//!
//! 1. ringing: the caller hears 180 while agents of the route's queue are
//!    tried one at a time, longest idle first, each for `ring_timeout`
//!    (486, 480, no answer or a transport timeout → the next agent);
//! 2. answered: the agent's 200 is ACKed, the caller gets 200 with our SDP,
//!    and the relay carries RTP both ways;
//! 3. ended: by BYE from either side (the other leg gets BYE), CANCEL from the
//!    caller before answer (the agent's INVITE is cancelled), silence on a
//!    leg for `rtp_timeout`, or a 2xx the caller never ACKed.
//!
//! re-INVITEs (hold and resume) are passed across: the other leg gets our
//! offer with the same direction, and the answer comes back the same way.
//!
//! Phases move, one at a time, into sans-IO machines that this task drives
//! (ARCHITECTURE.md, "the call machine"): `caller` (the answered caller's
//! requests before the bridge), `ringing` (a round of offers and the late
//! answers of forks given up on) and `bridge` (two answered legs). They
//! write what they send as data (`sip_out::SipOut`) and own no socket,
//! channel or timer.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, info_span, warn, Instrument};

mod bridge;
mod callback;
mod caller;
mod consult;
mod control;
mod house;
mod ivr;
mod queue;
mod ringing;
mod sip_out;
mod supervise;
mod transfer;

pub use supervise::{parse_code as supervision_code, supervise};

pub use callback::{originate, resume_callbacks, Originate};

pub use control::{check_data, CallView, Control, ControlResult, LegView, LiveCalls, CALL_STATES};

pub use house::House;
use transfer::Takeover;

use bridge::{Bridge, Exit, Leg, MediaOut};
use ringing::{Fork, Ringing, RoundEnd};
use sip_out::{deliver, SipOut, Voice};

use crate::acd::desk::OfferOutcome;
use crate::acd::{SeatContact, Ticket};
use crate::clock::now_ms;
use crate::endpoint::{CallEvent, WorkerInput};
use crate::media::player::Law;
use crate::media::relay::{Relay, RelayCmd, Side};
use crate::media::sdp::{self, AudioOffer, Direction};
use crate::routing::Route;

use crate::sip::dialog::Dialog;
use crate::sip::message::{Method, Request, Response};
use crate::sip::transaction::TxKey;
use crate::sip::{random_token, Peer};
use crate::store::Cdr;

/// What a call needs from the server.
pub struct CallCtx {
    /// What every call shares.
    pub shared: Arc<House>,
    /// Our worker.
    pub worker: mpsc::Sender<WorkerInput>,
    /// Its index (new Call-IDs must hash to it).
    pub worker_index: usize,
    /// Our own event sender (given to the worker for our requests).
    pub events_tx: crate::boxed::Sender<CallEvent>,
    /// Flow variables set before the flow starts.
    pub flow_vars: Vec<(String, String)>,
}

/// Why the call ended, for the log line.
#[derive(Debug, Clone, Copy)]
enum End {
    /// The flow said hangup.
    FlowHangup,
    CallerHungUp,
    AgentHungUp,
    CallerCancelled,
    NoAgent,
    RtpTimeout,
    AckTimeout,
    Refused,
    /// Refused with this status before the call was set up (bad SDP, no
    /// G.711, a flow gone, no RTP port): no `Call` wrote a record yet.
    RefusedAtSetup(u16),
    /// The far leg went to another call (attended transfer).
    Transferred,
    /// A backend handed the caller back (its REFER): the flow's fallback
    /// takes them, with the call data so far.
    HandedBack,
    /// The API hung the call up.
    ApiHangup,
    /// The agent hung up first and the caller stays for the after-call
    /// flow (`after_call_flow`): its keys are in `returned_media`, its name
    /// in `after_call`.
    AfterCall,
}

struct Call {
    ctx: CallCtx,
    events: crate::boxed::Receiver<CallEvent>,
    silent: mpsc::Receiver<Side>,
    silent_tx: mpsc::Sender<Side>,
    /// The relay, once media is bridged (from the start on the direct path).
    relay: Option<Relay>,
    /// Our media address facing the far leg (agent, backend).
    b_addr: SocketAddr,
    /// Where the caller's SDP said to send RTP.
    a_remote: SocketAddr,
    /// The far leg's socket until the relay takes it.
    b_socket: Option<std::net::UdpSocket>,
    /// The caller's stream in the media engine, until the relay takes it.
    ivr: Option<ivr::IvrMedia>,
    /// The caller already has our 2xx (an IVR answered first).
    answered: bool,
    /// Call data for the far leg: `X-` headers (flow variables, keys).
    call_data: Vec<(String, String)>,
    /// On an `interconnect` route: the peer centre's call data (`X-Peer-…`),
    /// passed to every far leg after ours.
    peer_data: Vec<(String, String)>,
    /// The caller's dialog once answered before bridging (IVR path).
    a_dialog: Option<Dialog>,
    /// The caller's INVITE transaction and the INVITE.
    a_key: TxKey,
    invite: Request,
    a_tag: String,
    /// What our SDP says (the codec both legs use is the agent's answer's).
    voice: Voice,
    /// Where the caller's INVITE came from.
    a_peer: Peer,
    /// The caller cancelled while agents were ringing.
    caller_gone: bool,
    /// The offers to seats, and those given up on while they rang (a late
    /// 2xx from one is ACKed and hung up).
    ringing: Ringing,
    /// The unanswered caller has heard 180.
    rang_caller: bool,
    /// The call's record, written when the call is dropped.
    cdr: Cdr,
    /// The number-plan entry the call came in on.
    route: Route,
    /// The version of the last SDP we sent the caller, and its direction
    /// (a transfer takes a held caller off hold).
    a_sdp_version: u64,
    a_direction: Direction,
    /// An agent's leg that transferred the call away, until it hangs up or
    /// the transfer ends (it gets the NOTIFYs).
    transferor: Option<Leg>,
    /// The agent whose phone placed this call, if one did.
    caller_agent: Option<String>,
    /// Requests from another call to take over this call's far leg (an
    /// attended transfer replacing this consultation call).
    takeover: Option<mpsc::Receiver<Takeover>>,
    /// Keys and prompt ends from the media engine while a flow's caller
    /// waits in line (the callback key).
    keys: Option<mpsc::Receiver<crate::media::engine::MediaEvent>>,
    /// The agent on the far leg now (after transfers, not the first one).
    b_agent: String,
    /// A blind transfer into a queue, until the caller is in line: the
    /// transferring agent's desk ticket and the target's name.
    transfer_pending: Option<(Option<Ticket>, String)>,
    /// Supervisors asking to join, while an agent's call is bridged.
    supervised: Option<mpsc::Receiver<Box<supervise::MonitorReq>>>,
    /// The far leg is a backend a flow handed the caller to: its REFER
    /// hands them back (一键互转 from the other side).
    handing_off: bool,
    /// While handing off: the keys that bring the caller back from the
    /// backend (`[backends.NAME] return_keys`).
    return_keys: Option<crate::media::dtmf::KeySequence>,
    /// The caller's keys and prompt ends once a backend handed them back to
    /// the media engine (the flow listens on these from then on).
    returned_media: Option<mpsc::Receiver<crate::media::engine::MediaEvent>>,
    /// An attended transfer from the API being consulted: the agent's
    /// socket set aside, then the agent–target relay ([`consult`]).
    consult: Option<consult::Consultation>,
    /// Requests from the API ([`control`]).
    control: crate::boxed::Receiver<control::ControlReq>,
    /// Held through the API: the caller is in the media engine hearing
    /// music (these are its keys), the agent's leg waits.
    held: Option<mpsc::Receiver<crate::media::engine::MediaEvent>>,
    /// A recording is being written now.
    recording_on: bool,
    /// The recording paused with a hold starts again (a new file) at resume.
    resume_recording: bool,
    /// The transferring agent's leg subscribed to the transfer's progress
    /// (its REFER): it gets NOTIFYs. A transfer the API asked for has none.
    refer_subscribed: bool,
    /// Whoever bridges this call runs an after-call flow on
    /// [`End::AfterCall`] (the queue paths do).
    after_call_ok: bool,
    /// The after-call flow to walk once the agent has gone.
    after_call: Option<String>,
}

/// How a bridge ended.
enum Bridged {
    /// The call is over.
    Ended(End),
    /// The agent asked for a transfer.
    Refer(TxKey, Box<Request>),
    /// Another call takes over the far leg (this was a consultation call).
    TakenOver(tokio::sync::oneshot::Sender<transfer::Handed>),
    /// The caller goes back from the backend on the far leg: the backend's
    /// REFER, or the caller's `return_keys` (no request).
    HandBack(Option<(TxKey, Box<Request>)>),
    /// The API asked for a transfer to this target (blind, or attended).
    ApiTransfer {
        to: String,
        attended: bool,
        req: control::ControlReq,
    },
    /// The API asked to send the caller into this flow as the agent leaves.
    ApiToFlow {
        flow: String,
        req: control::ControlReq,
    },
}

impl From<Exit> for Bridged {
    fn from(exit: Exit) -> Bridged {
        match exit {
            Exit::Ended(end) => Bridged::Ended(end),
            Exit::Refer(key, req) => Bridged::Refer(key, req),
            Exit::HandBack(refer) => Bridged::HandBack(refer),
        }
    }
}

/// A new call as the SIP worker hands it over.
pub struct Arrival {
    /// The INVITE's server transaction.
    pub key: TxKey,
    /// The INVITE.
    pub invite: Request,
    /// Where it came from.
    pub peer: Peer,
    /// The number-plan entry it matched.
    pub route: Route,
    /// The dialed number, normalized.
    pub dialed: String,
    /// The authenticated agent, when an agent's phone placed it.
    pub caller_agent: Option<String>,
    /// For an agent's own call outside the number plan: where it goes
    /// ([`agent_dial`]).
    pub direct: Option<DirectTarget>,
    /// Its place in its agent's or trunk address's count (overload control),
    /// held until the call ends.
    pub slot: crate::overload::CallSlot,
}

pub use transfer::{agent_dial, AgentDial, DirectTarget};

/// Runs a call from the caller's INVITE to its end.
pub fn run(
    ctx: CallCtx,
    events: crate::boxed::Receiver<CallEvent>,
    arrival: Arrival,
) -> impl std::future::Future<Output = ()> {
    // Boxed before the future is made: an async fn's argument keeps its
    // place in the future for the whole call, even once its fields have
    // moved out (960 bytes a call).
    run_boxed(ctx, events, Box::new(arrival))
}

async fn run_boxed(ctx: CallCtx, events: crate::boxed::Receiver<CallEvent>, arrival: Box<Arrival>) {
    let Arrival {
        key: a_key,
        mut invite,
        peer: a_peer,
        route,
        dialed,
        caller_agent,
        direct,
        slot: _slot,
    } = *arrival;
    // One number everywhere: the dialed number as routing normalized it
    // (`+8612345`, `008612345`, `02812345`, or a trunk that names it only
    // in To) is what the CDR, the events, X-Dialed and History-Info say.
    invite.uri_user = Some(dialed.clone());
    let span = info_span!("call", call_id = %invite.core.call_id, dialed = %dialed, queue = %route.queue, flow = %route.flow);
    async move {
        let shared = ctx.shared.clone();
        shared.live_calls.fetch_add(1, Ordering::Relaxed);
        let a_call_id = invite.core.call_id.clone();
        let caller = invite.core.from.user.clone().unwrap_or_default();
        info!(caller = %caller, hotline = %route.hotline, source = %a_peer.addr, agent_caller = ?caller_agent, "call offered");
        crate::meters::call_offered(&route.hotline, route.mode.as_str());
        shared.records.events().publish(
            "call.offered",
            crate::events::About {
                queue: (!route.queue.is_empty()).then(|| route.queue.clone()),
                agent: caller_agent.clone(),
                hotline: Some(route.hotline.clone()),
            },
            serde_json::json!({
                "call_id": a_call_id,
                "caller": caller,
                "dialed": dialed,
                "hotline": route.hotline,
                "mode": route.mode.as_str(),
                "flow": route.flow,
                "queue": route.queue,
            }),
        );
        let worker = ctx.worker.clone();
        let arrived = ArrivedCall {
            call_id: a_call_id.clone(),
            dialed: invite.uri_user.clone().unwrap_or_default(),
            caller: caller.clone(),
            at: now_ms(),
        };
        let end = if let (Some(DirectTarget(target)), Some(agent)) = (direct, caller_agent.clone())
        {
            transfer::call_target(ctx, events, a_key, invite, a_peer, &route, agent, target).await
        } else if route.flow.is_empty() {
            start(ctx, events, a_key, invite, a_peer, &route).await
        } else {
            ivr::start_flow(ctx, events, a_key, invite, a_peer, &route).await
        };
        info!(reason = ?end, "call ended");
        if let End::RefusedAtSetup(status) = end {
            refused_record(&shared, arrived, &route, status);
        }
        let _ = worker.send(WorkerInput::Unbind { call_id: a_call_id }).await;
        shared.live_calls.fetch_sub(1, Ordering::Relaxed);
    }
    .instrument(span)
    .await
}

/// What is known of a call as it arrives, for its record if it is refused
/// before a `Call` (which keeps its own) exists.
struct ArrivedCall {
    call_id: String,
    dialed: String,
    caller: String,
    /// Unix ms.
    at: u64,
}

/// The record of a call refused before it was set up: every INVITE that
/// reached routing ends in exactly one CDR (disposition `failed`, hung up
/// by `system`, the status it got), so offered = ended in `/metrics` and
/// reports.
fn refused_record(shared: &House, call: ArrivedCall, route: &Route, status: u16) {
    shared.records.cdr(Cdr {
        call_id: call.call_id,
        hotline: route.hotline.clone(),
        mode: route.mode.to_string(),
        dialed: call.dialed,
        caller: call.caller,
        arrived: call.at,
        ended: now_ms(),
        flow: route.flow.clone(),
        queue: if route.flow.is_empty() {
            route.queue.clone()
        } else {
            String::new()
        },
        disposition: crate::store::Disposition::Failed,
        hung_up_by: "system".into(),
        refused: status,
        ..Cdr::default()
    });
}

fn respond(
    ctx: &CallCtx,
    key: &TxKey,
    req: &Request,
    tag: &str,
    status: u16,
    extra: &[(&str, &str)],
    body: &[u8],
) {
    let out = SipOut::respond(key, req, tag, status, extra, body);
    deliver(&ctx.shared, None, out);
}

/// After a call ends, offers it gave up on may still answer (a 200 can cross
/// our CANCEL; a phone that never rang may ring late): for 64×T1 the call's
/// [`Ringing`] settles each, so no agent is left talking to nobody. It reads
/// the call's own event channel, which the forks stay bound to, so nothing
/// that arrived as the call ended is lost.
async fn linger(
    shared: Arc<House>,
    worker: mpsc::Sender<WorkerInput>,
    mut ringing: Ringing,
    mut rx: crate::boxed::Receiver<CallEvent>,
    tx: crate::boxed::Sender<CallEvent>,
) {
    let ids = ringing.abandoned_call_ids();
    let deadline = Instant::now() + Duration::from_secs(32);
    while !ringing.is_settled() {
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = tokio::time::sleep_until(deadline) => None,
        };
        let Some(event) = event else { break };
        if let Err(CallEvent::Request { key, request, .. }) = ringing.handle(event) {
            answer_gone(&shared, &key, &request);
        }
        while let Some(out) = ringing.poll_output() {
            // Their routes go all at once, below.
            if let ringing::Out::Sip(out) = out {
                deliver(&shared, Some(&tx), out);
            }
        }
    }
    // Give the BYEs' answers a moment to arrive before the routes go.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for call_id in ids {
        let _ = worker.send(WorkerInput::Unbind { call_id }).await;
    }
}

/// Answers a request that reached a call which has ended: a BYE crossing
/// ours (glare, RFC 3261 §15.1.2, RFC 5407 §3.1.2) gets 200, anything else
/// in a dialog that is gone 481.
fn answer_gone(shared: &House, key: &TxKey, req: &Request) {
    let status = if req.method == Method::Bye { 200 } else { 481 };
    let out = SipOut::respond(key, req, &random_token(), status, &[], b"");
    deliver(shared, None, out);
}

/// Whether `dialog` takes the in-dialog request `req` (its CSeq in order);
/// one it does not is answered 500 with Retry-After (RFC 3261 §12.2.2).
fn in_order(ctx: &CallCtx, dialog: &mut Dialog, key: &TxKey, req: &Request) -> bool {
    match sip_out::out_of_order(dialog, key, req) {
        None => true,
        Some(refusal) => {
            deliver(&ctx.shared, None, refusal);
            false
        }
    }
}

/// The SDP offer in `req`, or a 488 with the reason in a Warning.
fn offer_or_488(ctx: &CallCtx, key: &TxKey, req: &Request, tag: &str) -> Option<AudioOffer> {
    match sip_out::offer_in(key, req, tag) {
        Ok(offer) => Some(offer),
        Err(refusal) => {
            deliver(&ctx.shared, None, *refusal);
            None
        }
    }
}

fn no_ports(ctx: &CallCtx, a_key: &TxKey, invite: &Request, a_tag: &str) {
    warn!("no RTP ports left");
    respond(
        ctx,
        a_key,
        invite,
        a_tag,
        503,
        &[("Retry-After", "10")],
        b"",
    );
}

async fn start(
    ctx: CallCtx,
    events: crate::boxed::Receiver<CallEvent>,
    a_key: TxKey,
    invite: Request,
    a_peer: Peer,
    route: &Route,
) -> End {
    let a_tag = random_token();
    let Some(offer) = offer_or_488(&ctx, &a_key, &invite, &a_tag) else {
        return End::RefusedAtSetup(488);
    };
    let mut call = Call::new(ctx, events, a_key, invite, a_tag, a_peer, &offer, route);
    call.keep_record();
    let end = call.queue_to_end(&offer, route, &route.queue, 0).await;
    call.note_end(&end);
    end
}

/// The outcome of offering the call to one agent.
enum Offer {
    Answered(Box<Leg>),
    Next,
    CallerGone,
}

impl Call {
    /// Keeps the call's record as it stands now beside the finished ones
    /// (written with the next batch): a crash closes the call out with all
    /// of it (queue, times, agent, recording, the flow's keys and data).
    /// Called wherever the record learns something; a placeholder that is
    /// not yet a call (a callback's place in line) has none until it is.
    fn keep_record(&self) {
        self.ctx.shared.records.began(&self.cdr);
    }

    /// Fills in who hung up, where the path that ended the call did not
    /// say: every record names it.
    fn note_end(&mut self, end: &End) {
        if self.cdr.hung_up_by.is_empty() {
            self.cdr.hung_up_by = match end {
                End::CallerHungUp | End::CallerCancelled => "caller",
                End::AgentHungUp => "agent",
                End::ApiHangup => "api",
                End::Transferred => "transfer",
                _ => "system",
            }
            .into();
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        ctx: CallCtx,
        events: crate::boxed::Receiver<CallEvent>,
        a_key: TxKey,
        invite: Request,
        a_tag: String,
        a_peer: Peer,
        offer: &AudioOffer,
        route: &Route,
    ) -> Call {
        let (silent_tx, silent) = mpsc::channel(2);
        // Only a peer centre's trunk may bring call data in; anyone else's
        // X- headers are not ours to pass on.
        let peer_data = if route.mode == crate::routing::Mode::Interconnect {
            crate::sip::message::peer_call_data(&invite.headers)
        } else {
            Vec::new()
        };
        let cdr = Cdr {
            peer_data: peer_data.iter().cloned().collect(),
            call_id: invite.core.call_id.clone(),
            hotline: route.hotline.clone(),
            mode: route.mode.to_string(),
            dialed: invite.uri_user.clone().unwrap_or_default(),
            caller: invite.core.from.user.clone().unwrap_or_default(),
            arrived: now_ms(),
            ..Cdr::default()
        };
        let control = ctx.shared.calls.insert(control::CallView {
            call_id: cdr.call_id.clone(),
            caller: cdr.caller.clone(),
            dialed: cdr.dialed.clone(),
            hotline: cdr.hotline.clone(),
            mode: cdr.mode.clone(),
            state: "arriving",
            arrived: cdr.arrived,
            state_since: cdr.arrived,
            flow: route.flow.clone(),
            queue: route.queue.clone(),
            data: cdr.peer_data.clone(),
            ..control::CallView::default()
        });
        let ringing = Ringing::new(&ctx.shared.host);
        Call {
            ctx,
            events,
            silent,
            silent_tx,
            relay: None,
            b_addr: offer.addr,
            a_remote: offer.addr,
            b_socket: None,
            ivr: None,
            answered: false,
            call_data: Vec::new(),
            peer_data,
            a_dialog: None,
            a_key,
            invite,
            a_tag,
            voice: Voice {
                session_id: rand::random::<u32>() as u64,
                codec: offer.codecs[0],
                telephone_event: offer.telephone_event,
            },
            a_peer,
            caller_gone: false,
            ringing,
            rang_caller: false,
            cdr,
            route: route.clone(),
            a_sdp_version: 1,
            a_direction: Direction::SendRecv,
            transferor: None,
            caller_agent: None,
            takeover: None,
            keys: None,
            b_agent: String::new(),
            supervised: None,
            transfer_pending: None,
            handing_off: false,
            return_keys: None,
            returned_media: None,
            after_call_ok: false,
            after_call: None,
            consult: None,
            control,
            held: None,
            recording_on: false,
            resume_recording: false,
            refer_subscribed: false,
        }
    }

    /// The agent on the far leg now (after transfers), else the one who
    /// answered the call.
    fn agent_on_call(&self) -> &str {
        if self.b_agent.is_empty() {
            &self.cdr.agent
        } else {
            &self.b_agent
        }
    }

    fn rtp_timeout(&self) -> Duration {
        Duration::from_secs(self.ctx.shared.settings.rtp.rtp_timeout.max(1))
    }

    /// Runs the bridge of the caller and `b_leg` until one side ends it.
    /// An agent's REFER hands the caller on (the bridge resumes with the
    /// new far leg); a consultation call may hand its far leg to the call
    /// that replaces it.
    async fn bridge_to_end(&mut self, a_dialog: Dialog, b_leg: Leg, ticket: Option<Ticket>) -> End {
        let mut a_dialog = Some(a_dialog);
        let mut b = b_leg;
        let mut ticket = ticket;
        if ticket.is_some() && self.ctx.shared.settings.recording.enabled {
            self.start_recording().await;
        }
        loop {
            let Some(dialog) = a_dialog.take().or_else(|| self.a_dialog.take()) else {
                self.bye(&mut b.dialog, b.peer);
                return End::Refused;
            };
            let a = Leg {
                side: Side::A,
                dialog,
                peer: self.a_peer,
                media: self.a_media(),
                sdp_version: self.a_sdp_version,
                pending: None,
                our_reinvite: None,
                remote_media: self.a_remote,
            };
            // While an agent is on the far leg, supervisors can find the call.
            let supervision = ticket.is_some() && !self.b_agent.is_empty();
            if supervision {
                let (tx, rx) = mpsc::channel(2);
                let call_id = &self.invite.core.call_id;
                self.ctx
                    .shared
                    .calls
                    .open_monitor(call_id, &self.b_agent, tx);
                self.supervised = Some(rx);
            }
            // An agent's call whose caller may stay for an after-call flow
            // when the agent hangs up first.
            let transfers = ticket.is_some();
            let rules = bridge::Rules {
                transfers,
                hand_back: self.handing_off && !transfers,
                return_keys: self.return_keys.clone(),
                caller_may_stay: self.after_call_ok
                    && transfers
                    && Law::from_pt(self.voice.codec).is_some(),
            };
            let host = &self.ctx.shared.host;
            let mut bridge = Bridge::new(a, b, host, self.voice, rules, self.a_direction);
            let outcome = self.bridged(&mut bridge, transfers).await;
            if supervision {
                self.ctx
                    .shared
                    .calls
                    .close_monitor(&self.invite.core.call_id);
                self.supervised = None;
            }
            // The agent left first and the caller's leg is up: the
            // after-call flow takes them, or they get BYE too.
            if bridge.caller_left_up {
                self.after_call = self.after_call_flow();
                if self.after_call.is_none() {
                    bridge.bye(Side::A);
                }
            }
            if matches!(outcome, Bridged::Ended(_)) {
                bridge.end_pending();
                self.carry_out(&mut bridge).await;
            }
            self.a_direction = bridge.a_direction;
            self.return_keys = bridge.return_keys().cloned();
            let (mut a, taken_b) = bridge.into_legs();
            b = taken_b;
            self.a_sdp_version = a.sdp_version;
            let b_call_id = b.dialog.call_id.clone();
            match outcome {
                Bridged::ApiTransfer { to, attended, req } => {
                    self.a_dialog = Some(a.dialog);
                    let after = if attended {
                        Box::pin(self.consult(b, ticket, &to, req)).await
                    } else {
                        Box::pin(self.blind(b, ticket, &to, transfer::Asker::Api(req))).await
                    };
                    match after {
                        transfer::After::Bridge(leg, t) => {
                            b = *leg;
                            ticket = t;
                            continue;
                        }
                        transfer::After::Ended(end) => return end,
                    }
                }
                Bridged::ApiToFlow { flow, req } => {
                    self.a_dialog = Some(a.dialog);
                    let asker = transfer::Asker::Api(req);
                    match Box::pin(self.send_into_flow(b, ticket, &flow, asker)).await {
                        transfer::After::Bridge(leg, t) => {
                            b = *leg;
                            ticket = t;
                            continue;
                        }
                        transfer::After::Ended(end) => return end,
                    }
                }
                Bridged::Refer(key, req) => {
                    self.a_dialog = Some(a.dialog);
                    match Box::pin(self.transfer(b, ticket, key, req)).await {
                        transfer::After::Bridge(leg, t) => {
                            b = *leg;
                            ticket = t;
                            continue;
                        }
                        transfer::After::Ended(end) => return end,
                    }
                }
                Bridged::HandBack(refer) => {
                    let tag = b.dialog.local_tag.clone();
                    let law = Law::from_pt(self.voice.codec);
                    let media = match law {
                        Some(law) => self.unbridge(law).await,
                        None => None,
                    };
                    let Some(media) = media else {
                        warn!("the caller was to go back from the backend, but the relay could not be taken apart");
                        if let Some((key, req)) = &refer {
                            respond(&self.ctx, key, req, &tag, 503, &[], b"");
                        }
                        self.a_dialog = Some(a.dialog);
                        continue;
                    };
                    if let Some((key, req)) = &refer {
                        respond(&self.ctx, key, req, &tag, 202, &[], b"");
                        self.notify(&mut b, 200, true);
                    }
                    self.bye(&mut b.dialog, b.peer);
                    let _ = self
                        .worker_for(&b_call_id)
                        .send(WorkerInput::Unbind {
                            call_id: b_call_id.clone(),
                        })
                        .await;
                    let by = if refer.is_some() {
                        "the backend's REFER"
                    } else {
                        "the caller's return keys"
                    };
                    info!(by, "the caller goes back from the backend");
                    self.a_dialog = Some(a.dialog);
                    self.returned_media = Some(media);
                    return End::HandedBack;
                }
                Bridged::TakenOver(reply) => {
                    info!("consultation replaced: the far leg goes to the transferred call");
                    self.bye(&mut a.dialog, a.peer);
                    let handed = transfer::Handed {
                        dialog: b.dialog,
                        peer: b.peer,
                        remote_media: b.remote_media,
                        ticket,
                        agent: self.b_agent.clone(),
                    };
                    if let Err(back) = reply.send(handed) {
                        // The other call is gone: this leg is nobody's, hang it up.
                        let mut back = back;
                        self.bye(&mut back.dialog, back.peer);
                    }
                    self.cdr.hung_up_by = "transfer".into();
                    return End::Transferred;
                }
                Bridged::Ended(end) => {
                    self.cdr.hung_up_by = match end {
                        End::AgentHungUp => "agent",
                        End::CallerHungUp => "caller",
                        End::ApiHangup => "api",
                        _ => "system",
                    }
                    .to_string();
                    if let Some(t) = ticket.as_mut() {
                        t.by = if matches!(end, End::AgentHungUp) {
                            crate::acd::desk::HungUp::Agent
                        } else {
                            crate::acd::desk::HungUp::Caller
                        };
                    }
                    let _ = self
                        .worker_for(&b_call_id)
                        .send(WorkerInput::Unbind {
                            call_id: b_call_id.clone(),
                        })
                        .await;
                    if matches!(end, End::AgentHungUp) && self.after_call.is_some() {
                        self.a_dialog = Some(a.dialog);
                        return self.caller_to_after_call(ticket).await;
                    }
                    return end;
                }
            }
        }
    }

    /// The agent has left (its `ticket` goes: wrap-up starts now); the
    /// caller, whose dialog is back in `a_dialog`, goes back to the media
    /// engine for the after-call flow: [`End::AfterCall`], or if the relay
    /// cannot be taken apart, BYE and [`End::AgentHungUp`].
    async fn caller_to_after_call(&mut self, ticket: Option<Ticket>) -> End {
        if let Some(mut t) = ticket {
            t.by = crate::acd::desk::HungUp::Agent;
        }
        let media = match Law::from_pt(self.voice.codec) {
            Some(law) => self.unbridge(law).await,
            None => None,
        };
        if let Some(media) = media {
            self.returned_media = Some(media);
            return End::AfterCall;
        }
        warn!("the caller was to stay for the after-call flow, but the relay could not be taken apart; hanging up");
        self.after_call = None;
        self.bye_caller();
        End::AgentHungUp
    }

    /// The after-call flow for this call when its agent hangs up: the
    /// queue's `after_call_flow`, else the route's; `None` if neither names
    /// one, or it is not loaded (said in the log).
    fn after_call_flow(&self) -> Option<String> {
        let queue = self
            .ctx
            .shared
            .queue(&self.cdr.queue)
            .and_then(|q| q.after_call_flow)
            .filter(|f| !f.is_empty());
        let name =
            queue.or_else(|| Some(self.route.after_call_flow.clone()).filter(|f| !f.is_empty()))?;
        if self.ctx.shared.catalog().flows.contains_key(&name) {
            Some(name)
        } else {
            warn!(flow = %name, queue = %self.cdr.queue, "the after-call flow is not loaded; the caller is hung up with the agent");
            None
        }
    }

    /// Records the bridged call (an agent call) from now on.
    async fn start_recording(&mut self) {
        let shared = self.ctx.shared.clone();
        let path = crate::media::recording::path_for(
            &shared.settings.recordings_dir(),
            shared.settings.local_now(),
            &self.invite.core.call_id,
        );
        let codec = self.voice.codec;
        let file = path.clone();
        // Creating folders and the file is blocking I/O: off the runtime.
        let created = tokio::task::spawn_blocking(move || {
            crate::media::recording::Recorder::create(&file, codec)
        })
        .await;
        match created {
            Ok(Ok(Some(recorder))) => {
                // The name may have been numbered (a restart within a second).
                let path = recorder.path().display().to_string();
                self.relay_cmd(RelayCmd::Record(Box::new(recorder))).await;
                self.recording_on = self.relay.is_some();
                info!(path, "recording");
                self.cdr.recording = Some(path.clone());
                self.keep_record();
                let shown = path.clone();
                self.show(|v| v.recording = Some(shown));
                shared.records.recording(crate::store::RecordingMeta {
                    path,
                    call_id: self.invite.core.call_id.clone(),
                    agent: self.agent_on_call().to_string(),
                    queue: self.cdr.queue.clone(),
                    started: now_ms(),
                });
            }
            Ok(Ok(None)) => info!(codec, "not recorded: only G.711 calls can be"),
            Ok(Err(e)) => {
                tracing::error!(path = %path.display(), error = %e, "cannot create the recording")
            }
            Err(e) => tracing::error!(error = %e, "recording task failed"),
        }
    }

    async fn relay_cmd(&self, cmd: RelayCmd) {
        if let Some(relay) = &self.relay {
            let _ = relay.cmd.send(cmd).await;
        }
    }

    /// Our media address facing the caller.
    fn a_media(&self) -> SocketAddr {
        match (&self.relay, &self.ivr) {
            (Some(r), _) => r.a_addr,
            (None, Some(ivr)) => ivr.stream.local,
            (None, None) => self.b_addr,
        }
    }

    fn a_respond(&self, status: u16, extra: &[(&str, &str)], body: &[u8]) {
        respond(
            &self.ctx,
            &self.a_key,
            &self.invite,
            &self.a_tag,
            status,
            extra,
            body,
        );
    }

    fn contact(&self, peer: &Peer) -> String {
        sip_out::contact(&self.ctx.shared.host, peer)
    }

    fn our_sdp(&self, media: SocketAddr, version: u64, direction: Direction) -> String {
        self.voice.sdp(media, version, direction)
    }

    /// A Call-ID that our own worker owns, so the agent's replies come to us.
    fn new_call_id(&self) -> String {
        let n = self.ctx.shared.workers.len();
        loop {
            let id = format!("{}-b@yihaotong", random_token());
            if crate::endpoint::shard(&id, n) == self.ctx.worker_index {
                return id;
            }
        }
    }

    /// Sends an INVITE for the caller to `seat` and returns the fork to watch.
    async fn invite_seat(
        &mut self,
        seat: &SeatContact,
        to_uri: &str,
        offer: &AudioOffer,
        route: &Route,
    ) -> Fork {
        let shared = self.ctx.shared.clone();
        let call_id = self.new_call_id();
        let caller = self
            .invite
            .core
            .from
            .user
            .clone()
            .unwrap_or_else(|| "anonymous".into());
        let local_uri = format!("<sip:{}@{}>", caller, shared.host);
        let remote_uri = format!("<{to_uri}>");
        let dialog = Dialog::uac(call_id.clone(), local_uri, remote_uri, seat.uri.clone());
        let _ = self
            .ctx
            .worker
            .send(WorkerInput::Bind {
                call_id,
                owner: self.ctx.events_tx.clone(),
            })
            .await;
        let sdp_offer = sdp::write(
            self.voice.session_id,
            1,
            self.b_addr,
            &offer.codecs,
            offer.telephone_event,
            Direction::SendRecv,
        );
        let contact = self.contact(&seat.peer);
        let dialed = self.invite.uri_user.clone().unwrap_or_default();
        let max_forwards = self.invite.onward_max_forwards().to_string();
        // The number as dialed travels on (a backend, a seat or a peer knows
        // which hotline the caller reached): RFC 7044 and RFC 5806.
        let dialed_uri = format!("sip:{dialed}@{}", shared.host);
        let came_with = |name| self.invite.headers.get_all(name).collect::<Vec<_>>();
        let history =
            crate::sip::message::history_info(&came_with("history-info"), &dialed_uri, to_uri);
        let diversion = crate::sip::message::diversion(&came_with("diversion"), &dialed_uri);
        let queue = if self.cdr.queue.is_empty() {
            route.queue.as_str()
        } else {
            self.cdr.queue.as_str()
        };
        let mut headers = vec![
            ("Contact", contact.as_str()),
            ("Content-Type", "application/sdp"),
            ("X-Hotline", route.hotline.as_str()),
            ("X-Dialed", dialed.as_str()),
            ("X-Caller-Call-ID", self.invite.core.call_id.as_str()),
            ("Max-Forwards", max_forwards.as_str()),
            ("History-Info", history.as_str()),
            ("Diversion", diversion.as_str()),
        ];
        if !queue.is_empty() {
            headers.push(("X-Queue", queue));
        }
        headers.extend(self.call_data.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        headers.extend(self.peer_data.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut dialog = dialog;
        let (bytes, branch, cseq) = dialog.request(
            &Method::Invite,
            &shared.host,
            seat.peer.transport.via_token(),
            None,
            &headers,
            sdp_offer.as_bytes(),
        );
        let key = TxKey::client_for(&branch, Method::Invite);
        let _ = self
            .ctx
            .worker
            .send(WorkerInput::Request {
                method: Method::Invite,
                branch: branch.clone(),
                bytes: Bytes::from(bytes),
                peer: seat.peer,
                owner: self.ctx.events_tx.clone(),
            })
            .await;
        info!(agent = %seat.agent, contact = %seat.uri, "ringing");
        if matches!(shared.store.agent(&seat.agent), Ok(Some(_))) {
            self.screen_pop(seat, &dialed, route, queue);
        }
        Fork {
            seat: seat.clone(),
            dialog,
            key,
            branch,
            cseq,
            early: false,
            done: false,
        }
    }

    /// `agent.ringing`: everything known about the call so far, for the
    /// ticket system's screen pop before the agent says hello.
    fn screen_pop(&self, seat: &SeatContact, dialed: &str, route: &Route, queue: &str) {
        let data: serde_json::Map<String, serde_json::Value> = self
            .call_data
            .iter()
            .chain(self.peer_data.iter())
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        self.ctx.shared.records.events().publish(
            "agent.ringing",
            crate::events::About {
                queue: (!queue.is_empty()).then(|| queue.to_string()),
                agent: Some(seat.agent.clone()),
                hotline: Some(route.hotline.clone()),
            },
            serde_json::json!({
                "call_id": self.invite.core.call_id,
                "agent": seat.agent,
                "caller": self.cdr.caller,
                "dialed": dialed,
                "hotline": route.hotline,
                "mode": route.mode.as_str(),
                "queue": queue,
                "flow_path": self.cdr.path,
                "keys": self.cdr.keys,
                "data": data,
            }),
        );
    }

    /// Gives up on a fork still ringing: CANCEL it, and remember its dialog
    /// so a late 2xx is ACKed and hung up.
    fn drop_fork(&mut self, fork: &mut Fork) {
        self.ringing.abandon(fork);
        self.carry_out_ringing(None);
    }

    /// Does what the ringing said, in order; offers' outcomes go to the
    /// desk through `ticket`.
    fn carry_out_ringing(&mut self, ticket: Option<&Ticket>) {
        while let Some(out) = self.ringing.poll_output() {
            match out {
                ringing::Out::Sip(out) => self.send(out),
                ringing::Out::Outcome { agent, outcome } => {
                    if let Some(t) = ticket {
                        t.result(&agent, outcome);
                    }
                }
                ringing::Out::Unbind(call_id) => {
                    let _ = self.ctx.worker.try_send(WorkerInput::Unbind { call_id });
                }
            }
        }
    }

    /// Offers the call to `seats` at once (one, or every free agent under
    /// ring-all) for `ring`; the first to answer takes it and the others are
    /// cancelled. Each offer's end goes to the desk through `ticket`.
    async fn offer_to(
        &mut self,
        seats: &[(SeatContact, String)],
        ring: Duration,
        offer: &AudioOffer,
        route: &Route,
        ticket: Option<&Ticket>,
    ) -> Offer {
        if !self.far_port() {
            // Our failure, not the agents': it does not count as their miss.
            for (seat, _) in seats {
                if let Some(t) = ticket {
                    t.result(&seat.agent, OfferOutcome::LocalFailure);
                }
            }
            return Offer::Next;
        }
        // An attended transfer's target rings for the consulting agent, who
        // stays on the call (and may cancel).
        let consulting = self.consult.as_ref().map(|c| c.agent.clone());
        let rung: Vec<String> = consulting
            .into_iter()
            .chain(seats.iter().map(|(s, _)| s.agent.clone()))
            .collect();
        self.show_state("ringing");
        self.show(|v| v.agent = rung.join(","));
        let mut forks = Vec::with_capacity(seats.len());
        for (seat, to_uri) in seats {
            forks.push(self.invite_seat(seat, to_uri, offer, route).await);
        }
        if self.cdr.offered.is_none() {
            self.cdr.offered = Some(now_ms());
        }
        // The caller hears ringing from the moment a seat is offered the call,
        // whether or not the phone itself sends 180 (many answer straight away).
        self.ring_caller();

        let ends = std::time::Instant::now() + ring;
        if self.ringing.begin(forks, ends).is_some() {
            self.carry_out_ringing(ticket);
            return Offer::Next;
        }
        loop {
            let Some(deadline) = self.ringing.poll_timeout() else {
                return Offer::Next;
            };
            let event = tokio::select! {
                e = self.events.recv() => e,
                _ = tokio::time::sleep_until(Instant::from_std(deadline)) => {
                    let end = self.ringing.handle_timeout(std::time::Instant::now());
                    self.carry_out_ringing(ticket);
                    if end.is_some() {
                        return Offer::Next;
                    }
                    continue;
                }
                // An IVR-answered caller whose RTP stopped (dead trunk) while waiting.
                _ = self.silent.recv(), if self.ivr.is_some() => {
                    warn!("no RTP from the waiting caller for rtp_timeout; hanging up");
                    self.stop_ringing();
                    self.bye_caller();
                    self.caller_gone = true;
                    return Offer::CallerGone;
                }
                Some(req) = self.control.recv() => {
                    if self.consult.is_some() && req.control == control::Control::TransferCancel {
                        info!("attended transfer cancelled through the API while the target rang");
                        req.answer(Ok(serde_json::json!({ "state": "cancelled" })));
                        self.stop_ringing();
                        return Offer::Next;
                    }
                    if self.control_unbridged(req, "ringing") {
                        self.stop_ringing();
                        return Offer::CallerGone;
                    }
                    continue;
                }
            };
            let Some(event) = event else {
                self.stop_ringing();
                return Offer::CallerGone;
            };
            let event = match self.ringing.handle(event) {
                Ok(end) => {
                    self.carry_out_ringing(ticket);
                    match end {
                        None => continue,
                        Some(RoundEnd::NoneTook) => return Offer::Next,
                        Some(RoundEnd::Answered(fork, response)) => {
                            let agent = fork.seat.agent.clone();
                            return match self.answered_by(*fork, &response).await {
                                Some(leg) => {
                                    if let Some(t) = ticket {
                                        t.answered(&agent).await;
                                    }
                                    Offer::Answered(Box::new(leg))
                                }
                                None => {
                                    if let Some(t) = ticket {
                                        t.result(&agent, OfferOutcome::Unreachable);
                                    }
                                    Offer::Next
                                }
                            };
                        }
                    }
                }
                Err(event) => event,
            };
            match event {
                CallEvent::Request { key, request, .. }
                    if self.answered && request.core.call_id == self.invite.core.call_id =>
                {
                    if let ivr::CallerSaid::Bye = self.caller_request(*key, request) {
                        info!("caller hung up while agents rang");
                        self.stop_ringing();
                        self.caller_gone = true;
                        return Offer::CallerGone;
                    }
                }
                CallEvent::Cancelled => {
                    info!("caller cancelled");
                    self.stop_ringing();
                    self.a_respond(487, &[], b"");
                    self.caller_gone = true;
                    return Offer::CallerGone;
                }
                CallEvent::AckTimeout if self.answered => {
                    self.stop_ringing();
                    self.bye_caller();
                    self.caller_gone = true;
                    return Offer::CallerGone;
                }
                other => self.stray(other),
            }
        }
    }

    /// Stops ringing the round's seats (CANCEL where one may be sent).
    fn stop_ringing(&mut self) {
        self.ringing.give_up();
        self.carry_out_ringing(None);
    }

    /// The caller, if not yet answered, hears ringing (once).
    fn ring_caller(&mut self) {
        if !self.rang_caller && !self.answered {
            self.rang_caller = true;
            self.a_respond(180, &[], b"");
        }
    }

    /// A fork's 2xx: ACK it, bridge media, answer the caller. `None` if the
    /// answer is unusable (the leg is hung up).
    async fn answered_by(&mut self, fork: Fork, response: &Response) -> Option<Leg> {
        let Fork {
            seat,
            mut dialog,
            cseq,
            ..
        } = fork;
        dialog.confirm(response);
        self.ack(&mut dialog, cseq, seat.peer);
        let answer = match sdp::parse_audio(&response.body) {
            Ok(a) => a,
            Err(e) => {
                warn!(agent = %seat.agent, error = %e, "agent answered with unusable SDP");
                self.bye(&mut dialog, seat.peer);
                return None;
            }
        };
        let mut leg = Leg {
            side: Side::B,
            dialog,
            peer: seat.peer,
            media: self.b_addr,
            sdp_version: 1,
            pending: None,
            our_reinvite: None,
            remote_media: answer.addr,
        };
        if self.consult.is_some() {
            // An attended transfer's target: it talks to the agent first.
            if !self.consult_media(answer.addr).await {
                warn!("no relay for the consultation; hanging the target up");
                self.bye(&mut leg.dialog, leg.peer);
                return None;
            }
            info!(agent = %seat.agent, "the consulted target answered");
            return Some(leg);
        }
        if !self.bridge_media().await {
            warn!("no relay for the answered leg; hanging it up");
            self.bye(&mut leg.dialog, leg.peer);
            return None;
        }
        self.relay_cmd(RelayCmd::Remote(Side::B, answer.addr)).await;
        self.b_agent = seat.agent.clone();
        // A transfer's target does not change who answered the call, or when.
        if self.cdr.answered.is_none() {
            self.cdr.answered = Some(now_ms());
            self.cdr.agent = seat.agent.clone();
            // A crash from now on is closed out with the agent and answer known.
            self.keep_record();
        }
        // Shown talking before the caller hears the answer.
        self.show_bridge(&leg);
        if !self.answered {
            self.voice.codec = answer.codecs[0];
            if answer.telephone_event.is_none() {
                self.voice.telephone_event = None;
            }
            let body = self.our_sdp(self.a_media(), 1, answer.direction);
            let contact = self.contact(&self.a_peer);
            self.a_respond(
                200,
                &[("Contact", &contact), ("Content-Type", "application/sdp")],
                body.as_bytes(),
            );
            self.answered = true;
        }
        info!(agent = %seat.agent, "answered; media bridged");
        Some(leg)
    }

    /// Events that do not belong to the current step: answer what must be answered.
    fn stray(&mut self, event: CallEvent) {
        match event {
            // The agent who transferred the call hangs up (or asks anything
            // else) while the target rings.
            CallEvent::Request { key, request, .. }
                if self
                    .transferor
                    .as_ref()
                    .is_some_and(|t| t.dialog.call_id == request.core.call_id) =>
            {
                let Some(t) = self.transferor.as_mut() else {
                    return;
                };
                let tag = t.dialog.local_tag.clone();
                let status = if !t.dialog.accept_request(&request) {
                    500
                } else {
                    match request.method {
                        Method::Bye | Method::Info | Method::Options => 200,
                        Method::Invite | Method::Update => 491,
                        _ => 403,
                    }
                };
                respond(&self.ctx, &key, &request, &tag, status, &[], b"");
                if request.method == Method::Bye && status == 200 {
                    info!("the transferring agent hung up");
                    self.transferor = None;
                }
            }
            // A 2xx to our re-INVITE of the answered caller (taking them off hold).
            CallEvent::Response { response, .. }
                if response.core.call_id == self.invite.core.call_id
                    && self.a_dialog.is_some()
                    && response.core.cseq_method == Method::Invite
                    && (200..300).contains(&response.status) =>
            {
                if let Some(mut d) = self.a_dialog.take() {
                    self.ack(&mut d, response.core.cseq, self.a_peer);
                    self.a_dialog = Some(d);
                }
            }
            CallEvent::Request { key, request, .. } => {
                // Before answer only CANCEL is meaningful from the caller; other requests
                // (INFO keep-alives, an early re-INVITE) get the answers RFC 3261 expects.
                let status = match request.method {
                    Method::Invite => 491,
                    Method::Info | Method::Options => 200,
                    // A far leg's BYE crossing ours (glare, RFC 5407
                    // §3.1.2): its dialog is over either way.
                    Method::Bye if request.core.call_id != self.invite.core.call_id => 200,
                    _ => 481,
                };
                respond(&self.ctx, &key, &request, &random_token(), status, &[], b"");
            }
            // From an offer we already gave up on (anything else is nobody's).
            response @ CallEvent::Response { .. } => {
                let _ = self.ringing.handle(response);
                self.carry_out_ringing(None);
            }
            _ => {}
        }
    }

    /// Sends an INVITE (or re-INVITE) with our SDP (`media`, `version`,
    /// `direction`) in `dialog`; returns its client transaction, branch and CSeq.
    fn send_invite(
        &self,
        dialog: &mut Dialog,
        peer: Peer,
        media: SocketAddr,
        version: u64,
        direction: Direction,
    ) -> (TxKey, String, u32) {
        let body = self.our_sdp(media, version, direction);
        let contact = self.contact(&peer);
        let (out, key, cseq) = SipOut::in_dialog(
            &self.ctx.shared.host,
            dialog,
            peer,
            Method::Invite,
            &[("Contact", &contact), ("Content-Type", "application/sdp")],
            body.as_bytes(),
        );
        self.send(out);
        (key.clone(), key.branch, cseq)
    }

    /// The worker that owns `call_id` (where its transactions live).
    fn worker_for(&self, call_id: &str) -> &mpsc::Sender<WorkerInput> {
        &self.ctx.shared.workers[self.ctx.shared.worker_of(call_id)]
    }

    /// Sends `out`; answers to a request come back to this call.
    fn send(&self, out: SipOut) {
        deliver(&self.ctx.shared, Some(&self.ctx.events_tx), out);
    }

    fn ack(&self, dialog: &mut Dialog, cseq: u32, peer: Peer) {
        self.send(SipOut::ack(&self.ctx.shared.host, dialog, cseq, peer));
    }

    fn bye(&self, dialog: &mut Dialog, peer: Peer) {
        self.send(SipOut::bye(&self.ctx.shared.host, dialog, peer));
    }

    /// Drives the bridged phase ([`bridge`]) until it ends: the SIP
    /// worker's events, the relay's silence and return keys go to the
    /// machine and what it says is sent; the API, supervisors and takeovers
    /// are heard here.
    async fn bridged(&mut self, bridge: &mut Bridge, transfers: bool) -> Bridged {
        self.relay_cmd(RelayCmd::Watch(true)).await;
        self.show_bridge(&bridge.b);
        // With a backend on the far leg, the caller's return keys (RFC 4733
        // from the relay; SIP INFO goes to the machine) bring them back.
        let mut return_keys = None;
        if let (true, Some(_), Some(pt)) = (
            self.handing_off,
            bridge.return_keys(),
            self.voice.telephone_event,
        ) {
            let (tx, rx) = mpsc::channel(16);
            self.relay_cmd(RelayCmd::Keys { pt, to: tx }).await;
            return_keys = Some(rx);
        }
        loop {
            let takeover = async {
                match self.takeover.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let key = async {
                match return_keys.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let input = tokio::select! {
                e = self.events.recv() => match e {
                    Some(event) => bridge::Input::Sip(event),
                    None => return Bridged::Ended(End::Refused),
                },
                k = key => match k {
                    Some(k) => bridge::Input::Key(k),
                    None => {
                        return_keys = None;
                        continue;
                    }
                },
                s = self.silent.recv() => bridge::Input::Silent(s.unwrap_or(Side::A)),
                Some(req) = async {
                    match self.supervised.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    Box::pin(self.let_supervisor_in(req)).await;
                    continue;
                }
                Some(req) = self.control.recv() => {
                    let (a, b) = (&mut bridge.a, &mut bridge.b);
                    if let Some(end) = Box::pin(self.control_bridged(req, a, b, transfers)).await {
                        return end;
                    }
                    continue;
                }
                // Held: the caller's keys in the media engine are not the
                // call's business (its return keys come from the relay).
                Some(_) = async {
                    match self.held.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => continue,
                t = takeover => {
                    match t {
                        Some(Takeover { agent, reply }) if self.caller_agent.as_deref() == Some(agent.as_str()) => {
                            return Bridged::TakenOver(reply);
                        }
                        Some(_) => {
                            warn!("another agent tried to take over this consultation; refused");
                            continue;
                        }
                        None => {
                            self.takeover = None;
                            continue;
                        }
                    }
                }
            };
            let exit = bridge.handle(input, std::time::Instant::now());
            self.carry_out(bridge).await;
            if let Some(exit) = exit {
                return exit.into();
            }
        }
    }

    /// Sends what the bridge said, in order.
    async fn carry_out(&mut self, bridge: &mut Bridge) {
        while let Some(out) = bridge.poll_output() {
            match out {
                bridge::Out::Sip(out) => self.send(out),
                bridge::Out::Media(MediaOut::Remote(side, addr)) => {
                    self.relay_cmd(RelayCmd::Remote(side, addr)).await
                }
                bridge::Out::Media(MediaOut::Watch(on)) => {
                    self.relay_cmd(RelayCmd::Watch(on)).await
                }
                bridge::Out::Stray(event) => self.stray(event),
            }
        }
    }

    /// Answers an INVITE or UPDATE in `leg`'s dialog with 200 and our SDP
    /// for that leg (its next version), in `direction`.
    fn answer_with_sdp(&self, leg: &mut Leg, key: &TxKey, req: &Request, direction: Direction) {
        let echo = req.echo();
        let out = leg.answer(&self.ctx.shared.host, &self.voice, key, &echo, direction);
        self.send(out);
    }
}

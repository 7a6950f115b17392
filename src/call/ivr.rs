//! The IVR part of a call: answer, walk the flow, then queue, hand off or
//! transfer.
//!
//! Room: the call, in its IVR phase. The caller is answered at once with our
//! SDP; their RTP socket goes to the media engine (prompts out, keys in). A
//! [`Session`] decides what happens; this code carries its effects out: it
//! plays, arms the one timer, and when the flow ends in a queue, a backend
//! or a transfer, it offers the call there with the flow's data as `X-`
//! headers. When the far leg answers, the engine lets go of the caller's
//! socket and the relay carries on the same RTP stream.

use std::sync::Arc;
use std::time::Duration;

use chrono::{FixedOffset, NaiveDateTime};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::queue::Unserved;
use super::{no_ports, offer_or_488, respond, Call, CallCtx, CallEvent, End};
use crate::ivr::session::{Effect, Facts, Input, Session};
use crate::ivr::Catalog;
use crate::media::engine::{MediaEvent, Stream, StreamSetup};
use crate::media::player::Law;
use crate::media::sdp::{AudioOffer, Direction};
use crate::routing::Route;
use crate::sip::dialog::Dialog;
use crate::sip::message::Request;
use crate::sip::transaction::TxKey;
use crate::sip::{random_token, Peer, SipTarget};
use crate::store::Disposition;
use crate::store::Store;

/// Prompt played when no seat answered within `[queue] max_wait`.
pub(crate) const ALL_BUSY: &str = "common/all-busy";
/// Longest pause between the keys of a backend's `return_keys`.
const RETURN_KEY_GAP: Duration = Duration::from_secs(3);

/// Most `X-IVR-Var-*` headers passed on.
const MAX_VAR_HEADERS: usize = 20;

/// The caller's media while the engine holds it.
pub(super) struct IvrMedia {
    pub(super) stream: Stream,
    pub(super) socket: std::net::UdpSocket,
}

/// Facts from the store and the clock.
struct Live<'a> {
    store: &'a Store,
    offset: FixedOffset,
}

impl Facts for Live<'_> {
    fn now(&self) -> NaiveDateTime {
        crate::config::local_now(self.offset)
    }

    fn in_list(&self, list: &str, number: &str) -> bool {
        self.store.in_list(list, number).unwrap_or(false)
    }

    fn flag(&self, name: &str) -> bool {
        self.store.switch(name).unwrap_or(false)
    }
}

pub(super) use super::caller::CallerSaid;

/// What the queue phase left for the flow.
enum AfterQueue {
    /// The call is over.
    Ended(End),
    /// The queue overflowed to this flow.
    Flow(String),
}

/// Where a hand-off went.
enum Reached {
    /// It answered; the call ran to its end.
    Ended(End),
    /// It did not take the call.
    Failed,
    /// The caller left meanwhile.
    CallerGone,
}

/// Runs a call whose route names a flow.
pub(super) async fn start_flow(
    ctx: CallCtx,
    events: crate::boxed::Receiver<CallEvent>,
    a_key: TxKey,
    invite: Request,
    a_peer: Peer,
    route: &Route,
) -> End {
    let a_tag = random_token();
    let Some(mut offer) = offer_or_488(&ctx, &a_key, &invite, &a_tag) else {
        return End::RefusedAtSetup(488);
    };
    // Prompts are G.711; the first law the caller offered is ours.
    let Some(law) = offer.codecs.iter().find_map(|pt| Law::from_pt(*pt)) else {
        info!(codecs = ?offer.codecs, "caller offered no G.711");
        respond(
            &ctx,
            &a_key,
            &invite,
            &a_tag,
            488,
            &[("Warning", "399 yihaotong \"IVR needs PCMU or PCMA\"")],
            b"",
        );
        return End::RefusedAtSetup(488);
    };
    offer.codecs = vec![law.pt()];
    let catalog = ctx.shared.catalog();
    let Some(flow) = catalog.flows.get(&route.flow).cloned() else {
        // Removed by hand since the route was set: the caller gets a clear
        // answer, the operator the name.
        warn!(flow = %route.flow, number = %route.number, "route names a flow that is not loaded; the caller gets 480");
        let why = format!("flow {} is not loaded", route.flow);
        respond(
            &ctx,
            &a_key,
            &invite,
            &a_tag,
            480,
            &[
                ("Reason", &format!("SIP;cause=480;text=\"{why}\"")),
                ("Warning", &crate::sip::warning(&why)),
            ],
            b"",
        );
        return End::RefusedAtSetup(480);
    };
    let Some(a) = ctx.shared.ports.bind() else {
        no_ports(&ctx, &a_key, &invite, &a_tag);
        return End::RefusedAtSetup(503);
    };
    let mut call = Call::new(ctx, events, a_key, invite, a_tag, a_peer, &offer, route);
    call.keep_record();
    call.a_remote = offer.addr;
    let Some(media_rx) = call.caller_into_engine(a, law) else {
        no_ports(&call.ctx, &call.a_key, &call.invite, &call.a_tag);
        return End::Refused;
    };
    let body = call.our_sdp(call.a_media(), 1, Direction::SendRecv);
    let contact = call.contact(&call.a_peer);
    call.a_respond(
        200,
        &[("Contact", &contact), ("Content-Type", "application/sdp")],
        body.as_bytes(),
    );
    call.answered = true;
    call.a_dialog = Some(Dialog::uas(&call.invite, &call.a_tag));
    info!(flow = %flow.name, "answered by the flow");
    let end = call
        .walk_flow(flow, &catalog, media_rx, &offer, route)
        .await;
    call.note_end(&end);
    end
}

impl Call {
    /// The answered caller's media goes to the media engine on our socket
    /// `a` (to `self.a_remote`, in `law`): their keys and prompt ends come
    /// on the returned receiver. `None` (the port is freed): the engine
    /// would not take it.
    pub(super) fn caller_into_engine(
        &mut self,
        a: std::net::UdpSocket,
        law: Law,
    ) -> Option<mpsc::Receiver<MediaEvent>> {
        let (media_tx, media_rx) = mpsc::channel(64);
        let stream = a.try_clone().and_then(|dup| {
            self.ctx.shared.engine.add(StreamSetup {
                socket: dup,
                remote: self.a_remote,
                law,
                telephone_event: self.voice.telephone_event,
                events: media_tx,
                silence: Some((self.silent_tx.clone(), self.rtp_timeout())),
                continuing: None,
            })
        });
        match stream {
            Ok(stream) => {
                self.ivr = Some(IvrMedia { stream, socket: a });
                Some(media_rx)
            }
            Err(e) => {
                warn!(error = %e, "media engine refused the stream");
                if let Ok(addr) = a.local_addr() {
                    self.ctx.shared.ports.release(addr.port());
                }
                None
            }
        }
    }

    /// The agent hung up first: the caller walks the after-call flow (a
    /// rating) on the media the relay handed back. The call's record stays
    /// the agent's (answered, hung up by the agent); the flow's `rating`
    /// lands on it, in the queue log and on the event stream.
    pub(super) async fn after_call(&mut self, offer: &AudioOffer, route: &Route) -> End {
        let catalog = self.ctx.shared.catalog();
        let flow = self
            .after_call
            .as_ref()
            .and_then(|name| catalog.flows.get(name).cloned());
        let (Some(flow), Some(media)) = (flow, self.returned_media.take()) else {
            self.bye_caller();
            return End::AgentHungUp;
        };
        info!(flow = %flow.name, "the agent hung up; the caller stays for the after-call flow");
        self.show_state("ivr");
        let session = self.session(&catalog, flow);
        let end = self.walk(session, media, &catalog, offer, route).await;
        // However the flow ended, the agent was first to go.
        self.cdr.hung_up_by = "agent".into();
        end
    }

    /// Walks `flow` with the answered caller, whose keys come on `media`.
    pub(super) async fn walk_flow(
        &mut self,
        flow: Arc<crate::ivr::flow::Flow>,
        catalog: &Arc<Catalog>,
        media: mpsc::Receiver<MediaEvent>,
        offer: &AudioOffer,
        route: &Route,
    ) -> End {
        self.cdr.flow = route.flow.clone();
        let (name, answered) = (route.flow.clone(), self.cdr.answered);
        self.show(|v| {
            v.flow = name;
            v.answered = answered;
        });
        let session = self.session(catalog, flow);
        self.walk(session, media, catalog, offer, route).await
    }

    /// A fresh session of `flow` for this call's caller, with the call's
    /// starting variables.
    fn session(&self, catalog: &Arc<Catalog>, flow: Arc<crate::ivr::flow::Flow>) -> Session {
        Session::new(
            catalog.clone(),
            flow,
            &self.cdr.caller,
            self.ctx.shared.settings.ivr.max_steps,
        )
        .with_vars(&self.ctx.flow_vars)
    }

    pub(super) fn play(
        &self,
        catalog: &Catalog,
        id: u64,
        names: &[String],
        barge_in: bool,
        looped: bool,
    ) {
        let prompts = names
            .iter()
            .filter_map(|n| catalog.prompts.get(n))
            .collect();
        if let Some(ivr) = &self.ivr {
            ivr.stream.play(id, prompts, barge_in, looped);
        }
    }

    async fn walk(
        &mut self,
        mut session: Session,
        mut media: mpsc::Receiver<MediaEvent>,
        catalog: &Arc<Catalog>,
        offer: &AudioOffer,
        route: &Route,
    ) -> End {
        let shared = self.ctx.shared.clone();
        let offset = crate::config::utc_offset(shared.settings.ivr.utc_offset_minutes);
        let facts = Live {
            store: &shared.store,
            offset,
        };
        let mut timer: Option<(u64, Instant)> = None;
        let mut input = Some(Input::Start);
        let mut next_flow: Option<String> = None;
        let caller = self.invite.core.from.user.clone().unwrap_or_default();
        loop {
            if let Some(i) = input.take() {
                for effect in session.handle(i, &facts) {
                    match effect {
                        Effect::Play {
                            id,
                            prompts,
                            barge_in,
                        } => self.play(catalog, id, &prompts, barge_in, false),
                        Effect::Stop => {
                            if let Some(ivr) = &self.ivr {
                                ivr.stream.stop();
                            }
                        }
                        Effect::Timer { id, after } => timer = Some((id, Instant::now() + after)),
                        Effect::Queue { queue, priority } => {
                            self.flow_done(&session);
                            info!(queue = %queue, priority, keys = session.keys(), path = %session.position(), "flow queued the call");
                            // The queue hears the callback key from the media engine.
                            self.keys = Some(media);
                            let after = self.queue(offer, route, &queue, priority).await;
                            media = match self.keys.take() {
                                Some(m) => m,
                                None => mpsc::channel(1).1,
                            };
                            match after {
                                AfterQueue::Ended(End::AfterCall) => {
                                    return Box::pin(self.after_call(offer, route)).await;
                                }
                                AfterQueue::Ended(end) => return end,
                                AfterQueue::Flow(name) => {
                                    next_flow = Some(name);
                                    break;
                                }
                            }
                        }
                        Effect::Handoff { backend } => {
                            let Some(def) = shared.settings.backends.get(&backend) else {
                                input = Some(Input::Failed);
                                continue;
                            };
                            // Down or full: not tried; the fallback runs at once.
                            let handoff = match shared.backends.take(&backend, rand::random()) {
                                Ok(h) => h,
                                Err(why) => {
                                    info!(backend = %backend, reason = why.label(), "backend not tried; fallback");
                                    input = Some(Input::Failed);
                                    continue;
                                }
                            };
                            let _slot = handoff.slot;
                            let ring = Duration::from_secs(def.answer_timeout.max(1));
                            self.flow_done(&session);
                            self.handing_off = true;
                            self.return_keys = crate::media::dtmf::KeySequence::new(
                                &def.return_keys,
                                RETURN_KEY_GAP,
                            );
                            // Each target that is up, in turn, until one
                            // takes the call (or the caller leaves).
                            // A target URI without a user is a gateway:
                            // it is asked for the number dialed.
                            let dialed = self.invite.uri_user.as_deref().and_then(|u| {
                                crate::routing::normalize(u, &shared.settings.trunk.normalize)
                            });
                            let mut reached = Reached::Failed;
                            for uri in &handoff.targets {
                                info!(backend = %backend, uri = %uri, "handing off");
                                let target = SipTarget::parse(uri)
                                    .map(|t| t.or_user(dialed.as_deref().unwrap_or_default()));
                                reached = self.reach(target, ring, offer).await;
                                if !matches!(reached, Reached::Failed) {
                                    break;
                                }
                                info!(backend = %backend, uri = %uri, "backend target did not take the call");
                            }
                            self.handing_off = false;
                            self.return_keys = None;
                            match reached {
                                Reached::Ended(End::HandedBack) => {
                                    // Back in the flow: its fallback, with the
                                    // keys and data so far; the caller's keys
                                    // now come from the returned stream.
                                    if let Some(returned) = self.returned_media.take() {
                                        media = returned;
                                    }
                                    input = Some(Input::Failed);
                                }
                                Reached::Ended(end) => {
                                    self.cdr.disposition = Disposition::Handoff;
                                    return end;
                                }
                                Reached::CallerGone => {
                                    // Gave up while the backend rang.
                                    self.cdr.disposition = Disposition::Abandoned;
                                    return End::CallerHungUp;
                                }
                                Reached::Failed => {
                                    info!(backend = %backend, "backend did not take the call; fallback");
                                    input = Some(Input::Failed);
                                }
                            }
                        }
                        Effect::Transfer { to } => {
                            let target = if to.starts_with("sip:") {
                                SipTarget::parse(&to)
                            } else {
                                super::transfer::outbound(&shared, &to)
                            };
                            let ring =
                                Duration::from_secs(shared.settings.queue.ring_timeout.max(1));
                            info!(to = %to, "transferring");
                            self.flow_done(&session);
                            match self.reach(target, ring, offer).await {
                                Reached::Ended(end) => {
                                    self.cdr.disposition = Disposition::Transfer;
                                    return end;
                                }
                                Reached::CallerGone => {
                                    // Gave up while the transfer target rang.
                                    self.cdr.disposition = Disposition::Abandoned;
                                    return End::CallerHungUp;
                                }
                                Reached::Failed => input = Some(Input::Failed),
                            }
                        }
                        Effect::Hangup => {
                            info!(keys = session.keys(), path = %session.position(), "flow hung up");
                            self.flow_done(&session);
                            if self.cdr.queued.is_none() {
                                self.cdr.disposition = Disposition::SelfService;
                            }
                            self.bye_caller();
                            return End::FlowHangup;
                        }
                    }
                }
                // A queue overflowed into a flow: that flow takes the caller from its start.
                if let Some(name) = next_flow.take() {
                    let Some(flow) = catalog.flows.get(&name).cloned() else {
                        warn!(flow = %name, "overflow names a flow that is not loaded; hanging up");
                        self.bye_caller();
                        return End::NoAgent;
                    };
                    self.cdr.flow = name;
                    session = Session::new(
                        catalog.clone(),
                        flow,
                        &caller,
                        shared.settings.ivr.max_steps,
                    );
                    input = Some(Input::Start);
                }
                continue;
            }
            let deadline = timer.map(|(_, at)| at);
            // Waiting on the caller in the flow: what the API shows.
            let (keys, path) = (session.keys().to_string(), recent_path(&session));
            self.show_state("ivr");
            self.show(|v| {
                v.keys = keys;
                v.path = path;
            });
            tokio::select! {
                e = self.events.recv() => match e {
                    None => return End::Refused,
                    Some(CallEvent::Request { key, request, .. }) => {
                        match self.caller_request(*key, request) {
                            CallerSaid::Bye => {
                                info!(keys = session.keys(), path = %session.position(), "caller hung up in the flow");
                                self.flow_done(&session);
                                if self.cdr.queued.is_none() {
                                    self.cdr.disposition = Disposition::IvrHangup;
                                }
                                return End::CallerHungUp;
                            }
                            CallerSaid::Key(c) => input = Some(Input::Digit(c)),
                            CallerSaid::Nothing => {}
                        }
                    }
                    Some(CallEvent::AckTimeout) => {
                        warn!("caller never acknowledged the answer; hanging up");
                        self.bye_caller();
                        return End::AckTimeout;
                    }
                    Some(other) => self.stray(other),
                },
                Some(req) = self.control.recv() => {
                    if self.control_unbridged(req, "in a flow") {
                        self.flow_done(&session);
                        if self.cdr.queued.is_none() {
                            self.cdr.disposition = Disposition::IvrHangup;
                        }
                        return End::ApiHangup;
                    }
                }
                _ = self.silent.recv() => {
                    warn!(path = %session.position(), "no RTP from the caller for rtp_timeout; hanging up");
                    self.bye_caller();
                    return End::RtpTimeout;
                }
                m = media.recv() => match m {
                    Some(MediaEvent::Digit(c)) => input = Some(Input::Digit(c)),
                    Some(MediaEvent::PlayDone(id)) => input = Some(Input::PlayDone(id)),
                    None => {
                        warn!("media engine stream gone; hanging up");
                        self.bye_caller();
                        return End::Refused;
                    }
                },
                _ = crate::clock::sleep_until(deadline.map(Instant::into_std)) => {
                    if let Some((id, _)) = timer.take() {
                        input = Some(Input::Timer(id));
                    }
                }
            }
        }
    }

    pub(super) fn bye_caller(&mut self) {
        if let Some(mut d) = self.a_dialog.take() {
            self.bye(&mut d, self.a_peer);
            self.a_dialog = Some(d);
        }
    }

    /// An in-dialog request from the caller before bridging.
    pub(super) fn caller_request(&mut self, key: TxKey, req: Box<Request>) -> CallerSaid {
        if req.core.call_id != self.invite.core.call_id {
            // Another leg's (an agent who transferred, a far leg that is
            // over): not the caller's.
            self.stray(CallEvent::Request {
                key: Box::new(key),
                request: req,
                peer: self.a_peer,
            });
            return CallerSaid::Nothing;
        }
        let host = self.ctx.shared.host.clone();
        let (voice, media, peer) = (self.voice, self.a_media(), self.a_peer);
        let Some(dialog) = self.a_dialog.as_mut() else {
            self.stray(CallEvent::Request {
                key: Box::new(key),
                request: req,
                peer: self.a_peer,
            });
            return CallerSaid::Nothing;
        };
        let facing = super::caller::Facing {
            host: &host,
            voice: &voice,
            media,
            peer: &peer,
        };
        let heard = super::caller::hear(dialog, &key, &req, &facing);
        self.send(heard.answer);
        if let (Some(addr), Some(ivr)) = (heard.media_to, &self.ivr) {
            ivr.stream.remote(addr);
        }
        heard.said
    }

    /// Waits until `until`, answering the caller; `false` if they hung up.
    pub(super) async fn hold(&mut self, until: Instant) -> bool {
        loop {
            let event = tokio::select! {
                e = self.events.recv() => e,
                _ = tokio::time::sleep_until(until) => return true,
                _ = self.silent.recv(), if self.ivr.is_some() => {
                    warn!("no RTP from the waiting caller for rtp_timeout; hanging up");
                    self.bye_caller();
                    self.caller_gone = true;
                    return false;
                }
            };
            match event {
                None => return false,
                Some(CallEvent::Request { key, request, .. }) => {
                    if let CallerSaid::Bye = self.caller_request(*key, request) {
                        info!("caller hung up while waiting");
                        self.caller_gone = true;
                        return false;
                    }
                }
                Some(CallEvent::AckTimeout) => {
                    self.bye_caller();
                    self.caller_gone = true;
                    return false;
                }
                Some(other) => self.stray(other),
            }
        }
    }

    /// The flow queued the call: music while in line, then bridged until the end.
    async fn queue(
        &mut self,
        offer: &AudioOffer,
        route: &Route,
        queue: &str,
        priority: u32,
    ) -> AfterQueue {
        let rank = self.rank(priority);
        match self.wait_for_agent(offer, route, queue, rank).await {
            Ok((leg, ticket)) => {
                let Some(a_dialog) = self.a_dialog.take() else {
                    return AfterQueue::Ended(End::Refused);
                };
                self.after_call_ok = true;
                AfterQueue::Ended(self.bridge_to_end(a_dialog, leg, Some(ticket)).await)
            }
            Err(Unserved::CallerGone) => AfterQueue::Ended(End::CallerHungUp),
            Err(Unserved::Flow(flow)) => AfterQueue::Flow(flow),
            Err(_) => {
                self.busy_notice_and_hangup().await;
                AfterQueue::Ended(End::NoAgent)
            }
        }
    }

    /// No agent for an answered caller: the busy notice, then hang-up.
    pub(super) async fn busy_notice_and_hangup(&mut self) {
        info!("no agent: the busy notice, then hang-up");
        self.notice_and_hangup(ALL_BUSY).await;
    }

    /// Plays `prompt` to the answered caller, then hangs up (unless they
    /// hung up first).
    pub(super) async fn notice_and_hangup(&mut self, prompt: &str) {
        let catalog = self.ctx.shared.catalog();
        self.play(&catalog, 1, &[prompt.to_string()], false, false);
        let frames = catalog.prompts.get(prompt).map_or(0, |p| p.frames());
        let notice = Duration::from_millis(20 * frames as u64 + 300);
        if self.hold(Instant::now() + notice).await {
            self.bye_caller();
        }
    }

    /// Offers the answered caller to a SIP target (a backend, a transfer).
    async fn reach(
        &mut self,
        target: Option<SipTarget>,
        ring: Duration,
        offer: &AudioOffer,
    ) -> Reached {
        let Some(target) = target else {
            return Reached::Failed;
        };
        let label = target.user.clone().unwrap_or_else(|| "backend".into());
        let target = super::transfer::Target::Out {
            label,
            target,
            class: "",
        };
        match self.reach_target(&target, ring, offer, None).await {
            super::transfer::Reached::Answered(leg, ticket) => {
                let Some(a_dialog) = self.a_dialog.take() else {
                    return Reached::Ended(End::Refused);
                };
                Reached::Ended(self.bridge_to_end(a_dialog, *leg, ticket).await)
            }
            super::transfer::Reached::Failed(_) => Reached::Failed,
            super::transfer::Reached::CallerGone => Reached::CallerGone,
        }
    }

    /// Binds the far leg's port when the flow first offers the call out (an
    /// IVR caller who never gets that far never holds a second port).
    pub(super) fn far_port(&mut self) -> bool {
        if self.relay.is_some() || self.b_socket.is_some() {
            return true;
        }
        let Some(b) = self.ctx.shared.ports.bind() else {
            warn!("no RTP port for the far leg");
            return false;
        };
        let Ok(addr) = b.local_addr() else {
            return false;
        };
        self.b_addr = addr;
        self.b_socket = Some(b);
        true
    }

    /// Starts the relay of the bridge (once): on the IVR path the caller's
    /// socket comes from the media engine and the relay carries on its
    /// numbering; on the direct path the caller's side is bound now, so a
    /// caller waiting unanswered holds no port.
    pub(super) async fn bridge_media(&mut self) -> bool {
        if self.relay.is_some() {
            return true;
        }
        let Some(b) = self.b_socket.take() else {
            return false;
        };
        let pool = self.ctx.shared.ports.clone();
        let (a, numbering, remote) = match self.ivr.take() {
            Some(ivr) => {
                let detached = ivr.stream.detach().await;
                let remote = detached.as_ref().map_or(self.a_remote, |d| d.remote);
                (ivr.socket, detached.map(|d| d.numbering), remote)
            }
            None => match pool.bind() {
                Some(a) => (a, None, self.a_remote),
                None => {
                    if let Ok(addr) = b.local_addr() {
                        pool.release(addr.port());
                    }
                    return false;
                }
            },
        };
        let Some(relay) = self.ctx.shared.engine.bridge(
            pool,
            a,
            b,
            numbering,
            self.rtp_timeout(),
            self.silent_tx.clone(),
        ) else {
            return false;
        };
        let _ = relay
            .cmd
            .send(crate::media::relay::RelayCmd::Remote(
                crate::media::relay::Side::A,
                remote,
            ))
            .await;
        self.relay = Some(relay);
        true
    }
}

impl Drop for Call {
    /// Ports of sockets no relay took go back to the pool, and the call's
    /// record goes to the records office (whatever ended the call).
    fn drop(&mut self) {
        self.ctx.shared.calls.remove(&self.invite.core.call_id);
        // Requests that came as the call ended are answered, not dropped
        // (a BYE crossing ours gets 200). With forks given up on, `linger`
        // takes the events instead: their late answers are among them.
        if self.ringing.is_settled() {
            while let Ok(event) = self.events.try_recv() {
                if let CallEvent::Request { key, request, .. } = event {
                    super::answer_gone(&self.ctx.shared, &key, &request);
                }
            }
        }
        let mut cdr = std::mem::take(&mut self.cdr);
        cdr.ended = crate::clock::now_ms();
        if cdr.hung_up_by == "api"
            && self
                .ctx
                .shared
                .drain_cut
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            // The stop's drain ran out and hung the call up.
            cdr.hung_up_by = "system".into();
            cdr.disposition = crate::store::Disposition::Drained;
        }
        if let Some(relay) = &self.relay {
            cdr.rtp_caller = relay.stats.a_quality.load();
            cdr.rtp_far = relay.stats.b_quality.load();
        }
        crate::meters::rtp_quality(&cdr);
        self.ctx.shared.records.cdr(cdr);
        if !self.ringing.is_settled() {
            let (_, closed) = crate::boxed::channel(1);
            tokio::spawn(super::linger(
                self.ctx.shared.clone(),
                self.ctx.worker.clone(),
                std::mem::take(&mut self.ringing),
                std::mem::replace(&mut self.events, closed),
                self.ctx.events_tx.clone(),
            ));
        }
        let pool = &self.ctx.shared.ports;
        let ivr = self.ivr.take().map(|i| i.socket);
        for s in ivr.iter().chain(self.b_socket.iter()) {
            if let Ok(addr) = s.local_addr() {
                pool.release(addr.port());
            }
        }
    }
}

impl Call {
    /// The flow has finished its part: keep its data for the far leg and the CDR.
    fn flow_done(&mut self, session: &Session) {
        if self.after_call.is_some() {
            // The after-call flow: only its rating is kept; the record's
            // flow data stay those of the flow before the agent.
            self.rated(session.vars().get("rating").map(String::as_str));
            return;
        }
        // Call data the API set stays with the call.
        let api_data: Vec<(String, String)> = self
            .call_data
            .iter()
            .filter(|(h, _)| h.starts_with("X-Data-"))
            .cloned()
            .collect();
        self.call_data = call_data(session);
        self.call_data.extend(api_data);
        let vars = session.vars().clone();
        let (keys, path) = (session.keys().to_string(), recent_path(session));
        self.show(|v| {
            v.keys.clone_from(&keys);
            v.path.clone_from(&path);
        });
        self.ctx.shared.records.events().publish(
            "call.ivr",
            crate::events::About {
                queue: None,
                agent: None,
                hotline: Some(self.cdr.hotline.clone()),
            },
            serde_json::json!({
                "call_id": self.invite.core.call_id,
                "flow": self.cdr.flow,
                "keys": keys,
                "path": path,
                "vars": vars,
            }),
        );
        self.cdr.ivr_end = Some(crate::clock::now_ms());
        self.cdr.keys = session.keys().to_string();
        self.cdr.path = recent_path(session);
        self.cdr.vars = session
            .vars()
            .iter()
            .take(MAX_VAR_HEADERS)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.keep_record();
    }
}

impl Call {
    /// The after-call flow ended with `rating` (`None`: no key, not rated):
    /// it goes on the call's record, into the queue log (RATED) and out as
    /// `call.rated`.
    fn rated(&mut self, rating: Option<&str>) {
        let Some(rating) = rating.filter(|r| RATINGS.contains(r)) else {
            info!("the caller did not rate the call");
            return;
        };
        info!(rating, agent = %self.cdr.agent, "the caller rated the call");
        self.cdr.rating = rating.to_string();
        self.keep_record();
        self.ctx.shared.records.log(crate::acd::queue_log::LogLine {
            at: crate::clock::now_ms(),
            call_id: self.invite.core.call_id.clone(),
            queue: self.cdr.queue.clone(),
            agent: self.cdr.agent.clone(),
            event: crate::acd::queue_log::QueueEvent::Rated {
                rating: rating.to_string(),
            },
        });
    }
}

/// The ratings a caller can give (the flow's variable `rating`); anything
/// else is no rating.
pub(crate) const RATINGS: [&str; 3] = ["satisfied", "fair", "unsatisfied"];

/// The last flow nodes visited, for the CDR, the far leg and the API.
fn recent_path(session: &Session) -> String {
    let trail = session.trail();
    trail[trail.len().saturating_sub(16)..].join(",")
}

/// The flow's data as `X-` headers for the far leg.
fn call_data(session: &Session) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !session.keys().is_empty() {
        out.push(("X-IVR-Keys".to_string(), session.keys().to_string()));
    }
    out.push(("X-IVR-Path".to_string(), recent_path(session)));
    for (k, v) in session.vars().iter().take(MAX_VAR_HEADERS) {
        out.push((format!("X-IVR-Var-{k}"), v.clone()));
    }
    out
}

//! Callbacks instead of waiting: the caller leaves the line and keeps their
//! place; when it comes, an agent is connected first and then the citizen
//! is called through the trunk.
//!
//! Room: the call, and the calls we place ourselves. Booking happens in the
//! caller's call (the key after `queue/callback-offer`): the desk marks the
//! place patient, the booking is written to the database before the caller hears
//! `queue/callback-booked`, and the place (its desk ticket and ring channel)
//! passes to a task that waits for it. That task builds a [`Call`] of its
//! own whose "caller" is the citizen: the desk rings agents for it as for
//! anyone in line (the agent's phone shows the citizen's number and
//! `X-Callback`), and once an agent answers, the citizen's phone is rung
//! through `[trunk] outbound`, showing the hotline's number. Unanswered, it is
//! tried again after `callback_retry`, up to `callback_attempts` times. Bookings
//! left at a stop are put back in line, oldest first, at the next start.
//! It may touch the desk, the store's `callbacks` tree, and its own call.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, info_span, warn, Instrument};

use super::queue::{Waited, CALLBACK_BOOKED};
use super::House;
use super::{respond, Call, CallCtx, CallEvent, Fork, Leg};
use crate::acd::{SeatContact, Ticket, ToCall};
use crate::clock::now_ms;
use crate::endpoint::WorkerInput;
use crate::media::player::Law;
use crate::media::relay::{RelayCmd, Side};
use crate::media::sdp::{self, AudioOffer, Direction};
use crate::routing::Route;
use crate::sip::dialog::Dialog;
use crate::sip::message::{Message, Method};
use crate::sip::transaction::TxKey;
use crate::sip::{random_token, Peer};
use crate::store::CallbackBooking;
use crate::store::Disposition;
use crate::store::Rank;

/// How ringing the citizen ended.
enum Citizen {
    Answered(Dialog),
    NoAnswer,
    /// The agent hung up first.
    AgentGone,
}

/// How one callback attempt ended.
enum Attempt {
    Done,
    Unanswered,
    AgentGone,
    /// The line let the booking go (queue removed, server stopping): it
    /// stays booked for the next start.
    Stopped,
}

impl Call {
    /// The waiting caller pressed the callback key and the desk made their
    /// place patient: save the booking, hand the place to a task that waits
    /// for it, tell the caller and hang up.
    pub(super) async fn book_callback(
        &mut self,
        ticket: Ticket,
        desk: crate::boxed::UnboundedReceiver<ToCall>,
        queue: &str,
        rank: Rank,
    ) {
        let shared = self.ctx.shared.clone();
        let store = shared.store.clone();
        let mut booking = CallbackBooking {
            id: 0,
            call_id: self.invite.core.call_id.clone(),
            number: self.cdr.caller.clone(),
            queue: queue.to_string(),
            rank,
            hotline: self.route.hotline.clone(),
            dialed: self.cdr.dialed.clone(),
            requested: now_ms(),
            attempts: 0,
            call_data: self.call_data.clone(),
        };
        let saved = tokio::task::spawn_blocking(move || {
            booking.id = store.next_callback_id()?;
            store.put_callback(&booking)?;
            anyhow::Ok(booking)
        })
        .await;
        match saved {
            Ok(Ok(booking)) => {
                info!(id = booking.id, number = %booking.number, queue, "callback booked");
                tokio::spawn(pending(shared, booking, ticket, desk));
                self.notice_and_hangup(CALLBACK_BOOKED).await;
            }
            Ok(Err(e)) => {
                error!(error = %e, "cannot save the callback booking; the caller is let go");
                self.busy_notice_and_hangup().await;
            }
            Err(e) => {
                error!(error = %e, "callback booking task failed");
                self.busy_notice_and_hangup().await;
            }
        }
    }

    /// Rings the citizen through the trunk, offering our `media` address,
    /// for the answered agent on `agent` (or for a flow: no agent).
    async fn ring_citizen(
        &mut self,
        mut agent: Option<&mut Leg>,
        media: std::net::SocketAddr,
        ring: Duration,
    ) -> Citizen {
        let shared = self.ctx.shared.clone();
        let number = self.cdr.caller.clone();
        let Some(target) = super::transfer::outbound(&shared, &number) else {
            return Citizen::NoAnswer;
        };
        // The booking's place in line was no call; this is one from now on.
        self.keep_record();
        let local = format!("<sip:{}@{}>", self.cdr.dialed, shared.host);
        let dialog = Dialog::uac(
            self.invite.core.call_id.clone(),
            local,
            format!("<{}>", target.uri),
            target.uri.clone(),
        );
        let mut fork = Fork {
            seat: SeatContact {
                agent: number,
                uri: target.uri.clone(),
                peer: target.peer,
            },
            dialog,
            key: TxKey::client_for("", Method::Invite),
            branch: String::new(),
            cseq: 0,
            early: false,
            done: false,
        };
        let (key, branch, cseq) =
            self.send_invite(&mut fork.dialog, target.peer, media, 1, Direction::SendRecv);
        (fork.key, fork.branch, fork.cseq) = (key, branch, cseq);
        info!(uri = %target.uri, "calling the citizen back");
        let deadline = Instant::now() + ring;
        loop {
            let event = tokio::select! {
                e = self.events.recv() => e,
                _ = tokio::time::sleep_until(deadline) => {
                    info!("the citizen did not answer in time");
                    self.drop_fork(&mut fork);
                    return Citizen::NoAnswer;
                }
            };
            match event {
                None => {
                    self.drop_fork(&mut fork);
                    return Citizen::AgentGone;
                }
                Some(CallEvent::Response {
                    key: Some(k),
                    response,
                }) if *k == fork.key => match response.status {
                    100 => {}
                    101..=199 => {
                        fork.early = true;
                        fork.dialog.confirm(&response);
                    }
                    200..=299 => {
                        let mut dialog = fork.dialog;
                        dialog.confirm(&response);
                        self.ack(&mut dialog, response.core.cseq, fork.seat.peer);
                        match sdp::parse_audio(&response.body) {
                            Ok(answer) => {
                                self.a_remote = answer.addr;
                                self.relay_cmd(RelayCmd::Remote(Side::A, answer.addr)).await;
                            }
                            Err(e) => warn!(error = %e, "the citizen's answer has unusable SDP"),
                        }
                        return Citizen::Answered(dialog);
                    }
                    status => {
                        info!(status, "the citizen's line refused the call");
                        return Citizen::NoAnswer;
                    }
                },
                Some(CallEvent::Timeout { key }) if *key == fork.key => {
                    info!("the trunk did not answer the callback INVITE");
                    return Citizen::NoAnswer;
                }
                Some(CallEvent::Request { key, request, .. })
                    if agent
                        .as_ref()
                        .is_some_and(|a| a.dialog.call_id == request.core.call_id) =>
                {
                    let Some(agent) = agent.as_deref_mut() else {
                        continue;
                    };
                    if !super::in_order(&self.ctx, &mut agent.dialog, &key, &request) {
                        continue;
                    }
                    let tag = agent.dialog.local_tag.clone();
                    let status = match request.method {
                        Method::Bye | Method::Info | Method::Options => 200,
                        _ => 491,
                    };
                    respond(&self.ctx, &key, &request, &tag, status, &[], b"");
                    if request.method == Method::Bye {
                        info!("the agent hung up before the citizen answered");
                        self.drop_fork(&mut fork);
                        return Citizen::AgentGone;
                    }
                }
                Some(other) => self.stray(other),
            }
        }
    }
}

/// Puts every saved booking back in line, oldest first (at start).
pub async fn resume_callbacks(shared: Arc<House>) {
    let store = shared.store.clone();
    let bookings = match tokio::task::spawn_blocking(move || store.callbacks()).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            error!(error = %e, "cannot read the callback bookings");
            return;
        }
        Err(e) => {
            error!(error = %e, "callback bookings task failed");
            return;
        }
    };
    if !bookings.is_empty() {
        info!(
            count = bookings.len(),
            "callbacks booked before the restart go back in line"
        );
    }
    for booking in bookings {
        if let Some((ticket, desk)) = rejoin(&shared, &booking).await {
            tokio::spawn(pending(shared.clone(), booking, ticket, desk));
        }
    }
}

/// A booking's place in line again (after a restart or a retry).
async fn rejoin(
    shared: &House,
    booking: &CallbackBooking,
) -> Option<(Ticket, crate::boxed::UnboundedReceiver<ToCall>)> {
    let (tx, rx) = crate::boxed::unbounded_channel();
    let (ticket, joined) = shared
        .acd
        .enter(
            &booking.call_id,
            &booking.queue,
            booking.rank,
            &booking.number,
            tx,
            true,
        )
        .await;
    match joined {
        Ok(position) => {
            info!(id = booking.id, queue = %booking.queue, position, "callback waiting in line");
            Some((ticket, rx))
        }
        Err(refusal) => {
            error!(id = booking.id, queue = %booking.queue, ?refusal, "callback cannot wait in its queue; kept for the next start");
            None
        }
    }
}

/// One booking from its place in line until the citizen is reached or the
/// attempts run out. (Boxed with its type named: a callback call can be
/// transferred into a queue where its caller could book again, so the
/// future would otherwise contain itself.)
fn pending(
    shared: Arc<House>,
    mut booking: CallbackBooking,
    ticket: Ticket,
    desk: crate::boxed::UnboundedReceiver<ToCall>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    let span =
        info_span!("callback", id = booking.id, number = %booking.number, queue = %booking.queue);
    Box::pin(
        async move {
            let settings = &shared.settings.queue;
            let mut place = Some((ticket, desk));
            loop {
                let Some((ticket, mut desk)) = place.take() else {
                    return;
                };
                match attempt(&shared, &booking, ticket, &mut desk).await {
                    Attempt::Done => {
                        forget(&shared, booking.id).await;
                        return;
                    }
                    Attempt::Stopped => return,
                    Attempt::AgentGone => {}
                    Attempt::Unanswered => {
                        booking.attempts += 1;
                        if booking.attempts >= settings.callback_attempts.max(1) {
                            info!(
                                attempts = booking.attempts,
                                "callback given up: the citizen never answered"
                            );
                            forget(&shared, booking.id).await;
                            return;
                        }
                        let store = shared.store.clone();
                        let saved = booking.clone();
                        let _ =
                            tokio::task::spawn_blocking(move || store.put_callback(&saved)).await;
                        tokio::time::sleep(Duration::from_secs(settings.callback_retry)).await;
                    }
                }
                place = rejoin(&shared, &booking).await;
            }
        }
        .instrument(span),
    )
}

/// A call the API places (回访): the citizen's number, and who takes it.
#[derive(Debug, Clone)]
pub struct Originate {
    /// The citizen's number, as dialed.
    pub number: String,
    /// This agent takes it (rung first, by name), within its dial rights...
    pub agent: Option<String>,
    /// ...or whoever this queue offers, within `[outbound] allow`...
    pub queue: Option<String>,
    /// ...or this flow, once the citizen answers (a satisfaction survey,
    /// a notice), within `[outbound] allow`.
    pub flow: Option<String>,
    /// The hotline number the citizen sees.
    pub hotline: String,
    /// Call data for the agent's screen (`X-Data-NAME`) and the CDR.
    pub data: std::collections::BTreeMap<String, String>,
}

/// Places a call for the API: an agent (the one named, or the queue's
/// next) is rung first, then the citizen through `[trunk] outbound`, and
/// the two are bridged and recorded as any agent call; or the citizen is
/// rung and, once they answer, walks a flow as a caller would (its keys,
/// path and variables in the CDR; its queue nodes put them in line).
/// Checks what can be checked at once (the number may go out, the agent,
/// queue or flow exists) and returns the new call's Call-ID; how it goes
/// shows in the call's view, the event stream and its CDR (hotline
/// `outbound`).
pub async fn originate(shared: &Arc<House>, o: Originate) -> Result<String, String> {
    if !o.data.is_empty() {
        super::control::check_data(&o.data)?;
    }
    let agent_id = o.agent.clone().unwrap_or_default();
    let class = match super::transfer::outside_target(shared, &agent_id, &o.number)? {
        super::transfer::Target::Out { class, .. } => class,
        _ => return Err(format!("{} cannot be called out", o.number)),
    };
    let queue = match (&o.agent, &o.queue, &o.flow) {
        (Some(id), None, None) => match shared.store.agent(id) {
            Ok(Some(_)) => String::new(),
            Ok(None) => return Err(format!("agent: no agent {id:?}")),
            Err(e) => return Err(format!("agent: {e:#}")),
        },
        (None, Some(q), None) if shared.queues().contains_key(q) => q.clone(),
        (None, Some(q), None) => return Err(format!("queue: no queue {q:?}")),
        (None, None, Some(f)) if shared.catalog().flows.contains_key(f) => String::new(),
        (None, None, Some(f)) => return Err(format!("flow: no flow {f:?} is loaded")),
        _ => return Err("name one of an agent, a queue or a flow".into()),
    };
    let number = crate::outbound::dialable(
        &o.number,
        &shared.settings.trunk.normalize,
        &shared.settings.outbound,
    )
    .unwrap_or(o.number.clone());
    let booking = CallbackBooking {
        id: 0,
        call_id: String::new(),
        number,
        queue,
        rank: Rank::Normal,
        hotline: "outbound".into(),
        dialed: o.hotline.clone(),
        requested: now_ms(),
        attempts: 0,
        call_data: Vec::new(),
    };
    let Some((mut call, offer, route)) = callback_call(shared, &booking).await else {
        return Err(format!("{} cannot be called out", o.number));
    };
    // Not a booking's second half: an outbound call of its own.
    call.call_data.retain(|(k, _)| k != "X-Callback");
    call.call_data.push(("X-Originated".into(), "api".into()));
    // Placed now: a call from the start (a booking's place is not).
    call.keep_record();
    if !o.data.is_empty() {
        // Checked above: a fresh call cannot hold too many entries.
        if let Err((_, why)) = call.set_data(o.data.clone()) {
            warn!(why, "call data not taken");
        }
    }
    call.cdr.callback_for.clear();
    call.cdr.hotline = "outbound".into();
    call.cdr.outbound = class.to_string();
    call.cdr.disposition = Disposition::Failed;
    if booking.queue.is_empty() {
        call.cdr.queue.clear();
        call.cdr.queued = None;
    }
    let call_id = call.invite.core.call_id.clone();
    info!(call_id, number = %booking.number, agent = ?o.agent, queue = %booking.queue, flow = ?o.flow, "originating a call for the API");
    let shared = shared.clone();
    let span = info_span!("originate", call_id = %call_id);
    tokio::spawn(
        async move {
            shared.live_calls.fetch_add(1, Ordering::Relaxed);
            let ring = Duration::from_secs(shared.settings.queue.ring_timeout.max(1));
            let seated = match (&o.agent, &o.flow) {
                (_, Some(flow)) => {
                    call.citizen_into_flow(flow).await;
                    None
                }
                (Some(id), None) => {
                    let target = super::transfer::Target::Agent(id.clone());
                    match call.reach_target(&target, ring, &offer, None).await {
                        super::transfer::Reached::Answered(leg, ticket) => Some((leg, ticket)),
                        _ => None,
                    }
                }
                (None, None) => match rejoin(&shared, &booking).await {
                    Some((ticket, mut desk)) => {
                        match call.wait_in_line(&ticket, &mut desk, &offer, &route).await {
                            Waited::Connected(leg) => Some((leg, Some(ticket))),
                            _ => None,
                        }
                    }
                    None => None,
                },
            };
            if let Some((mut leg, ticket)) = seated {
                let ring = Duration::from_secs(shared.settings.queue.callback_ring.max(1));
                // Answered means the citizen answered (the report's out_ans),
                // not the agent.
                let media = call.a_media();
                match call.ring_citizen(Some(&mut leg), media, ring).await {
                    Citizen::Answered(a_dialog) => {
                        info!("citizen answered: the originated call is connected");
                        call.cdr.answered = Some(now_ms());
                        call.cdr.disposition = Disposition::Answered;
                        call.bridge_to_end(a_dialog, *leg, ticket).await;
                    }
                    Citizen::NoAnswer => {
                        call.cdr.answered = None;
                        call.bye(&mut leg.dialog, leg.peer);
                    }
                    Citizen::AgentGone => call.cdr.answered = None,
                }
            }
            let call_id = call.invite.core.call_id.clone();
            if !call.ringing.is_abandoned(&call_id) {
                let _ = call
                    .worker_for(&call_id)
                    .send(WorkerInput::Unbind { call_id })
                    .await;
            }
            shared.live_calls.fetch_sub(1, Ordering::Relaxed);
        }
        .instrument(span),
    );
    Ok(call_id)
}

impl Call {
    /// Rings the citizen for `flow` and, once they answer, walks it with
    /// them as with a caller.
    async fn citizen_into_flow(&mut self, flow: &str) {
        let shared = self.ctx.shared.clone();
        let catalog = shared.catalog();
        let (Some(found), Some(law)) = (
            catalog.flows.get(flow).cloned(),
            Law::from_pt(self.voice.codec),
        ) else {
            warn!(
                flow,
                "the flow is gone (or the codec is not G.711); nothing placed"
            );
            return;
        };
        // Our socket for the citizen's media: its address goes in the offer.
        let Some(socket) = shared.ports.bind() else {
            warn!("no RTP port for the citizen; nothing placed");
            return;
        };
        let Ok(media) = socket.local_addr() else {
            return;
        };
        let ring = Duration::from_secs(shared.settings.queue.callback_ring.max(1));
        let Citizen::Answered(dialog) = self.ring_citizen(None, media, ring).await else {
            drop(socket);
            shared.ports.release(media.port());
            return;
        };
        info!(flow, "citizen answered: the flow takes the call");
        self.cdr.answered = Some(now_ms());
        self.cdr.disposition = Disposition::Answered;
        self.a_dialog = Some(dialog);
        let Some(keys) = self.caller_into_engine(socket, law) else {
            self.bye_caller();
            return;
        };
        self.route.flow = flow.to_string();
        let route = self.route.clone();
        let offer = self.bridge_offer();
        let end = self.walk_flow(found, &catalog, keys, &offer, &route).await;
        info!(reason = ?end, "the flow let the citizen go");
    }
}

async fn forget(shared: &House, id: u64) {
    let store = shared.store.clone();
    match tokio::task::spawn_blocking(move || store.remove_callback(id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(id, error = %e, "cannot remove the callback booking"),
        Err(e) => error!(id, error = %e, "callback removal task failed"),
    }
}

/// Waits for the place to come, rings agents, then the citizen.
async fn attempt(
    shared: &Arc<House>,
    booking: &CallbackBooking,
    ticket: Ticket,
    desk: &mut crate::boxed::UnboundedReceiver<ToCall>,
) -> Attempt {
    let Some((mut call, offer, route)) = callback_call(shared, booking).await else {
        return Attempt::Stopped;
    };
    let call_id = call.invite.core.call_id.clone();
    let outcome = match call.wait_in_line(&ticket, desk, &offer, &route).await {
        Waited::Connected(agent) => {
            let mut agent = *agent;
            shared.live_calls.fetch_add(1, Ordering::Relaxed);
            let ring = Duration::from_secs(shared.settings.queue.callback_ring.max(1));
            let media = call.a_media();
            let outcome = match call.ring_citizen(Some(&mut agent), media, ring).await {
                Citizen::Answered(a_dialog) => {
                    info!("citizen answered: callback connected");
                    forget(shared, booking.id).await;
                    call.cdr.disposition = Disposition::CallbackCompleted;
                    call.bridge_to_end(a_dialog, agent, Some(ticket)).await;
                    Attempt::Done
                }
                Citizen::NoAnswer => {
                    call.bye(&mut agent.dialog, agent.peer);
                    call.cdr.disposition = Disposition::CallbackUnanswered;
                    Attempt::Unanswered
                }
                Citizen::AgentGone => {
                    call.cdr.disposition = Disposition::CallbackUnanswered;
                    Attempt::AgentGone
                }
            };
            shared.live_calls.fetch_sub(1, Ordering::Relaxed);
            outcome
        }
        _ => Attempt::Stopped,
    };
    // A given-up INVITE to the citizen stays routed to the call until
    // `linger` settles it; otherwise the Call-ID is released now.
    if !call.ringing.is_abandoned(&call_id) {
        let _ = call
            .worker_for(&call_id)
            .send(WorkerInput::Unbind {
                call_id: call_id.clone(),
            })
            .await;
    }
    outcome
}

/// A call of our own for a booking: its "caller" is the citizen.
async fn callback_call(
    shared: &Arc<House>,
    booking: &CallbackBooking,
) -> Option<(Call, AudioOffer, Route)> {
    let call_id = format!("{}-cb@yihaotong", random_token());
    let index = shared.worker_of(&call_id);
    let worker = shared.workers[index].clone();
    let target = super::transfer::outbound(shared, &booking.number)?;
    // The INVITE the citizen would have sent: it names the call for the
    // agent's screen and the records. Nothing answers it.
    let branch = format!("z9hG4bK{}", random_token());
    let text = format!(
        "INVITE sip:{dialed}@{host} SIP/2.0\r\nVia: SIP/2.0/UDP {host};branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:{number}@{host}>;tag={tag}\r\nTo: <sip:{dialed}@{host}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        dialed = booking.dialed,
        host = shared.host,
        number = booking.number,
        tag = random_token(),
    );
    let Ok(Message::Request(invite)) = crate::sip::message::parse(text.as_bytes()) else {
        warn!(number = %booking.number, "callback number does not make a valid request");
        return None;
    };
    let route = Route {
        number: booking.dialed.clone(),
        queue: booking.queue.clone(),
        flow: String::new(),
        hotline: booking.hotline.clone(),
        ..Default::default()
    };
    // Agents are offered PCMU, the codec the citizen is then offered too:
    // the relay passes packets as they are.
    let offer = AudioOffer {
        addr: target.peer.addr,
        codecs: vec![0],
        telephone_event: Some(101),
        direction: Direction::SendRecv,
    };
    // Bound last: nothing above can leave a stale route behind.
    let (events_tx, events) = crate::boxed::channel(64);
    worker
        .send(WorkerInput::Bind {
            call_id: call_id.clone(),
            owner: events_tx.clone(),
        })
        .await
        .ok()?;
    let ctx = CallCtx {
        shared: shared.clone(),
        worker,
        worker_index: index,
        events_tx,
        flow_vars: Vec::new(),
    };
    let peer = Peer::new(target.peer.addr, target.peer.transport, 0);
    let key = TxKey::client_for(&branch, Method::Invite);
    let mut call = Call::new(
        ctx,
        events,
        key,
        invite,
        random_token(),
        peer,
        &offer,
        &route,
    );
    call.answered = true;
    call.call_data = booking.call_data.clone();
    call.call_data
        .push(("X-Callback".into(), booking.call_id.clone()));
    call.cdr.callback_for = booking.call_id.clone();
    call.cdr.queue = booking.queue.clone();
    call.cdr.queued = Some(now_ms());
    call.cdr.disposition = Disposition::CallbackUnanswered;
    Some((call, offer, route))
}

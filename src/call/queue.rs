//! The queue part of a call: wait in line at the desk, ring whom it offers,
//! follow the queue's overflow.
//!
//! Room: the call, in its queue phase. The call joins the desk's line with
//! a [`Ticket`] and then only reacts: the desk says whom to ring (or that the
//! wait is over), the caller may hang up, the agents answer or not. Each
//! offer's end goes back to the desk at once, so the desk, not the call,
//! decides who is tried next. An answered caller hears the queue's music
//! meanwhile; one not yet answered (a route straight to a queue) hears
//! ringing.

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{ivr::CallerSaid, Call, CallEvent, Leg, Offer};
use crate::acd::desk::{ExitReason, Rank, Refusal};
use crate::acd::records::Disposition;
use crate::acd::{now_ms, SeatContact, Ticket, ToCall};
use crate::config::Overflow;
use crate::media::sdp::AudioOffer;
use crate::store::Route;

/// Most overflows one call follows (a ring of queues overflowing into each
/// other ends here).
const MAX_OVERFLOWS: usize = 4;

/// Why the queue phase ended without an agent.
pub(super) enum Unserved {
    /// The caller hung up (or their line died).
    CallerGone,
    /// `max_wait` passed.
    Timeout,
    /// The queue was full, empty, or unknown.
    NoAgent,
    /// The queue overflows to this flow.
    Flow(String),
}

enum Waited {
    Connected(Box<Leg>),
    CallerGone,
    Exit(ExitReason),
}

impl Call {
    /// The caller's rank: the flow's priority (0 normal, 1 priority, 2 or
    /// more emergency), raised to priority for callers on `[queue] priority_list`.
    pub(super) fn rank(&self, flow_priority: u32) -> Rank {
        let by_flow = match flow_priority {
            0 => Rank::Normal,
            1 => Rank::Priority,
            _ => Rank::Emergency,
        };
        let list = &self.ctx.shared.settings.queue.priority_list;
        let number = self.invite.core.from.user.as_deref().unwrap_or_default();
        let listed = !list.is_empty()
            && !number.is_empty()
            && self.ctx.shared.store.in_list(list, number).unwrap_or(false);
        if listed {
            by_flow.min(Rank::Priority)
        } else {
            by_flow
        }
    }

    /// Waits in `queue` (then its overflows) until an agent answers.
    pub(super) async fn wait_for_agent(
        &mut self,
        offer: &AudioOffer,
        route: &Route,
        first_queue: &str,
        rank: Rank,
    ) -> Result<(Leg, Ticket), Unserved> {
        let shared = self.ctx.shared.clone();
        let mut queue = first_queue.to_string();
        let caller = self.invite.core.from.user.clone().unwrap_or_default();
        self.cdr.priority = format!("{rank:?}").to_lowercase();
        for hop in 0..=MAX_OVERFLOWS {
            if self.cdr.queued.is_none() {
                self.cdr.queued = Some(now_ms());
                self.cdr.service_level = shared.settings.service_level(&queue);
            }
            self.cdr.queue = queue.clone();
            if self.ivr.is_some() {
                let catalog = shared.catalog();
                self.play(
                    &catalog,
                    0,
                    &[shared.settings.moh(&queue).to_string()],
                    false,
                    true,
                );
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let (ticket, joined) = shared
                .acd
                .enter(&self.invite.core.call_id, &queue, rank, &caller, tx)
                .await;
            let why = match joined {
                Ok(position) => {
                    info!(queue = %queue, position, "waiting for an agent");
                    self.ring_caller();
                    match self.wait_in_line(&ticket, rx, offer, route).await {
                        Waited::Connected(leg) => {
                            self.cdr.disposition = Disposition::Answered;
                            return Ok((*leg, ticket));
                        }
                        Waited::CallerGone => {
                            self.cdr.disposition = Disposition::Abandoned;
                            return Err(Unserved::CallerGone);
                        }
                        Waited::Exit(ExitReason::Timeout) => Unserved::Timeout,
                        Waited::Exit(ExitReason::Empty) => Unserved::NoAgent,
                    }
                }
                Err(Refusal::UnknownQueue) => {
                    warn!(queue = %queue, "the call names a queue that is not configured");
                    Unserved::NoAgent
                }
                Err(refusal) => {
                    info!(queue = %queue, ?refusal, "the queue does not take the caller");
                    Unserved::NoAgent
                }
            };
            let overflow = shared
                .settings
                .queues
                .get(&queue)
                .and_then(|q| q.overflow.clone());
            match overflow {
                Some(Overflow::Queue(next)) if hop < MAX_OVERFLOWS => {
                    info!(from = %queue, to = %next, "overflow to another queue");
                    self.cdr
                        .overflowed_from
                        .push(std::mem::replace(&mut queue, next));
                }
                Some(Overflow::Flow(flow)) => {
                    info!(from = %queue, flow = %flow, "overflow to a flow");
                    self.cdr.overflowed_from.push(queue.clone());
                    return Err(Unserved::Flow(flow));
                }
                _ => {
                    self.cdr.disposition = match why {
                        Unserved::Timeout => Disposition::Timeout,
                        _ => Disposition::NoAgent,
                    };
                    return Err(why);
                }
            }
        }
        self.cdr.disposition = Disposition::NoAgent;
        Err(Unserved::NoAgent)
    }

    /// In line: ring whom the desk offers until one answers, the desk lets
    /// the caller go, or the caller leaves.
    async fn wait_in_line(
        &mut self,
        ticket: &Ticket,
        mut desk: mpsc::UnboundedReceiver<ToCall>,
        offer: &AudioOffer,
        route: &Route,
    ) -> Waited {
        let domain = self.ctx.shared.settings.sip.domain.clone();
        loop {
            tokio::select! {
                m = desk.recv() => match m {
                    Some(ToCall::Ring { agents, ring_timeout }) => {
                        let seats: Vec<(SeatContact, String)> = agents
                            .into_iter()
                            .map(|s| {
                                let to = format!("sip:{}@{domain}", s.agent);
                                (s, to)
                            })
                            .collect();
                        match self.offer_to(&seats, ring_timeout, offer, route, Some(ticket)).await {
                            Offer::Answered(leg) => return Waited::Connected(leg),
                            Offer::Next => {}
                            Offer::CallerGone => return Waited::CallerGone,
                        }
                    }
                    Some(ToCall::Exit(reason)) => return Waited::Exit(reason),
                    None => return Waited::Exit(ExitReason::Empty),
                },
                e = self.events.recv() => match e {
                    None => return Waited::CallerGone,
                    Some(CallEvent::Request { key, request, .. }) => {
                        if let CallerSaid::Bye = self.caller_request(key, request) {
                            info!("caller hung up while waiting");
                            self.caller_gone = true;
                            return Waited::CallerGone;
                        }
                    }
                    Some(CallEvent::Cancelled) if !self.answered => {
                        info!("caller cancelled while waiting");
                        self.a_respond(487, &[], b"");
                        self.caller_gone = true;
                        return Waited::CallerGone;
                    }
                    Some(CallEvent::AckTimeout) => {
                        self.bye_caller();
                        self.caller_gone = true;
                        return Waited::CallerGone;
                    }
                    Some(other) => self.stray(other),
                },
                _ = self.silent.recv(), if self.ivr.is_some() => {
                    warn!("no RTP from the waiting caller for rtp_timeout; hanging up");
                    self.bye_caller();
                    self.caller_gone = true;
                    return Waited::CallerGone;
                }
            }
        }
    }

    /// The direct path (a route straight to a queue): wait, then bridge.
    pub(super) async fn queue_to_end(
        &mut self,
        offer: &AudioOffer,
        route: &Route,
        queue: &str,
        flow_priority: u32,
    ) -> super::End {
        let rank = self.rank(flow_priority);
        match self.wait_for_agent(offer, route, queue, rank).await {
            Ok((leg, ticket)) => {
                let a_dialog = self
                    .a_dialog
                    .take()
                    .unwrap_or_else(|| crate::sip::dialog::Dialog::uas(&self.invite, &self.a_tag));
                self.bridge_to_end(a_dialog, leg, Some(ticket)).await
            }
            Err(Unserved::CallerGone) => super::End::CallerCancelled,
            Err(unserved) => {
                if let Unserved::Flow(flow) = unserved {
                    // Not yet answered: flows run on answered calls only.
                    warn!(flow = %flow, "overflow to a flow needs an answered caller; refusing instead");
                }
                info!("no agent answered");
                self.a_respond(
                    480,
                    &[("Reason", "SIP;cause=480;text=\"No agent available\"")],
                    b"",
                );
                super::End::NoAgent
            }
        }
    }
}

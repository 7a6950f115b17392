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

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::{ivr::CallerSaid, Call, CallEvent, Leg, Offer};
use crate::acd::desk::{ExitReason, Refusal};
use crate::acd::{SeatContact, Ticket, ToCall};
use crate::clock::now_ms;
use crate::config::{Announcements, Overflow};
use crate::media::engine::MediaEvent;
use crate::media::sdp::AudioOffer;
use crate::routing::Route;
use crate::store::Disposition;
use crate::store::Rank;

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

pub(super) enum Waited {
    Connected(Box<Leg>),
    CallerGone,
    Exit(ExitReason),
    /// The caller pressed the callback key after the offer.
    Callback,
}

/// Which announcements are due.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Due {
    position: bool,
    wait: bool,
    periodic: bool,
    callback: bool,
}

/// When a waiting caller hears what: the schedule of one queue's
/// announcements, and when the music comes back after one.
#[derive(Debug)]
struct Announcer {
    every: Announcements,
    next_position: Option<Instant>,
    next_wait: Option<Instant>,
    next_periodic: Option<Instant>,
    next_callback: Option<Instant>,
    /// The callback offer was made: the key books it from now on.
    callback_open: bool,
    /// The music resumes then (an announcement is playing).
    resume_music: Option<Instant>,
}

/// "To keep your place and be called back, press 1."
const CALLBACK_OFFER: &str = "queue/callback-offer";
/// "Your callback is booked; we will call this number when it is your turn."
pub(super) const CALLBACK_BOOKED: &str = "queue/callback-booked";

/// The first announcement comes this long after joining (a caller an agent
/// takes at once hears none).
const FIRST_ANNOUNCEMENT: Duration = Duration::from_secs(2);

impl Announcer {
    fn new(every: Announcements, joined: Instant) -> Announcer {
        let first = |period: Duration| (!period.is_zero()).then_some(joined + FIRST_ANNOUNCEMENT);
        Announcer {
            next_position: first(every.position),
            next_wait: first(every.wait),
            next_periodic: (!every.periodic.is_empty() && !every.periodic_every.is_zero())
                .then(|| joined + every.periodic_every),
            next_callback: (!every.callback.is_zero()).then(|| joined + every.callback),
            callback_open: false,
            every,
            resume_music: None,
        }
    }

    /// The next moment something is to be done.
    fn deadline(&self) -> Option<Instant> {
        [
            self.next_position,
            self.next_wait,
            self.next_periodic,
            self.next_callback,
            self.resume_music,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// What is due at `now` (and when it comes again). Nothing new starts
    /// while an announcement plays; it waits for the music to come back.
    fn take_due(&mut self, now: Instant) -> Due {
        if self.resume_music.is_some() {
            return Due::default();
        }
        let take = |next: &mut Option<Instant>, period: Duration| {
            let due = next.is_some_and(|at| at <= now);
            if due {
                *next = Some(now + period);
            }
            due
        };
        Due {
            position: take(&mut self.next_position, self.every.position),
            wait: take(&mut self.next_wait, self.every.wait),
            periodic: take(&mut self.next_periodic, self.every.periodic_every),
            callback: take(&mut self.next_callback, self.every.callback),
        }
    }
}

/// The prompts for "N callers ahead of you" (1 = "you are next").
fn position_prompts(position: usize) -> Vec<String> {
    match position {
        0 | 1 => vec!["queue/next".into()],
        n @ 2..=21 => vec![
            "queue/ahead".into(),
            format!("number/{}", n - 1),
            "queue/callers".into(),
        ],
        _ => vec!["queue/many".into()],
    }
}

/// The prompts for "about N minutes" from the recent hold time (ms).
fn wait_prompts(hold_ms: u64) -> Vec<String> {
    let minutes = hold_ms.div_ceil(60_000).max(1);
    if minutes > 20 {
        return vec!["queue/wait-long".into()];
    }
    vec![
        "queue/wait".into(),
        format!("number/{minutes}"),
        "queue/minutes".into(),
    ]
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

    /// The answered caller hears `queue`'s music, looped (a caller not yet
    /// answered hears ringing instead).
    pub(super) fn music_on_hold(&self, queue: &str) {
        if self.ivr.is_some() {
            let shared = &self.ctx.shared;
            let catalog = shared.catalog();
            self.play(
                &catalog,
                0,
                &[shared.settings.moh(shared.queue(queue).as_ref())],
                false,
                true,
            );
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
                self.cdr.service_level =
                    shared.settings.service_level(shared.queue(&queue).as_ref());
            }
            self.cdr.queue = queue.clone();
            self.keep_record();
            self.show_state("queued");
            self.show(|v| v.queue.clone_from(&queue));
            self.music_on_hold(&queue);
            let (tx, mut rx) = crate::boxed::unbounded_channel();
            let (ticket, joined) = shared
                .acd
                .enter(&self.invite.core.call_id, &queue, rank, &caller, tx, false)
                .await;
            let why = match joined {
                Ok(position) => {
                    info!(queue = %queue, position, "waiting for an agent");
                    self.transfer_joined();
                    self.ring_caller();
                    loop {
                        match self.wait_in_line(&ticket, &mut rx, offer, route).await {
                            Waited::Connected(leg) => {
                                self.cdr.disposition = Disposition::Answered;
                                return Ok((*leg, ticket));
                            }
                            Waited::CallerGone => {
                                self.cdr.disposition = Disposition::Abandoned;
                                return Err(Unserved::CallerGone);
                            }
                            Waited::Callback => {
                                if !ticket.to_callback().await {
                                    // Being rung for right now: the key came too late.
                                    continue;
                                }
                                Box::pin(self.book_callback(ticket, rx, &queue, rank)).await;
                                self.cdr.disposition = Disposition::CallbackBooked;
                                return Err(Unserved::CallerGone);
                            }
                            Waited::Exit(ExitReason::Timeout) => break Unserved::Timeout,
                            Waited::Exit(ExitReason::Empty) => break Unserved::NoAgent,
                        }
                    }
                }
                Err(Refusal::UnknownQueue) => {
                    warn!(queue = %queue, "the call names a queue that does not exist (removed, or never added)");
                    Unserved::NoAgent
                }
                Err(refusal) => {
                    info!(queue = %queue, ?refusal, "the queue does not take the caller");
                    Unserved::NoAgent
                }
            };
            let overflow = shared.queue(&queue).and_then(|q| q.overflow);
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
    pub(super) async fn wait_in_line(
        &mut self,
        ticket: &Ticket,
        desk: &mut crate::boxed::UnboundedReceiver<ToCall>,
        offer: &AudioOffer,
        route: &Route,
    ) -> Waited {
        let domain = self.ctx.shared.settings.sip.domain.clone();
        let queue = self.cdr.queue.clone();
        let mut announcer = Announcer::new(
            self.ctx
                .shared
                .settings
                .announcements(self.ctx.shared.queue(&queue).as_ref()),
            Instant::now(),
        );
        let callback_key = self.ctx.shared.settings.queue.callback_key;
        loop {
            let deadline = announcer.deadline().filter(|_| self.ivr.is_some());
            let keys = self.keys.as_mut();
            let media_key = async move {
                match keys {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let mut pressed = None;
            tokio::select! {
                m = media_key => match m {
                    Some(MediaEvent::Digit(c)) => pressed = Some(c),
                    Some(MediaEvent::PlayDone(_)) => {}
                    None => self.keys = None,
                },
                _ = crate::clock::sleep_until(deadline.map(Instant::into_std)) => {
                    self.announce(&mut announcer, ticket, &queue).await;
                }
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
                            Offer::Next => self.show_state("queued"),
                            Offer::CallerGone => return Waited::CallerGone,
                        }
                    }
                    Some(ToCall::Exit(reason)) => return Waited::Exit(reason),
                    None => return Waited::Exit(ExitReason::Empty),
                },
                e = self.events.recv() => match e {
                    None => return Waited::CallerGone,
                    Some(CallEvent::Request { key, request, .. }) => {
                        match self.caller_request(*key, request) {
                            CallerSaid::Bye => {
                                info!("caller hung up while waiting");
                                self.caller_gone = true;
                                return Waited::CallerGone;
                            }
                            CallerSaid::Key(c) => pressed = Some(c),
                            CallerSaid::Nothing => {}
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
                Some(req) = self.control.recv() => {
                    if self.control_unbridged(req, "in line") {
                        return Waited::CallerGone;
                    }
                }
            }
            if pressed == Some(callback_key) && announcer.callback_open {
                info!("caller books a callback");
                return Waited::Callback;
            }
        }
    }

    /// Plays what is due to the waiting caller, or brings the music back.
    async fn announce(&mut self, announcer: &mut Announcer, ticket: &Ticket, queue: &str) {
        let now = Instant::now();
        let shared = self.ctx.shared.clone();
        let catalog = shared.catalog();
        if announcer.resume_music.is_some_and(|at| at <= now) {
            announcer.resume_music = None;
            self.play(
                &catalog,
                0,
                &[shared.settings.moh(shared.queue(queue).as_ref())],
                false,
                true,
            );
        }
        let due = announcer.take_due(now);
        let mut names = Vec::new();
        if due.position || due.wait {
            if let Some((position, hold_ms)) = ticket.position().await {
                if due.position {
                    names.extend(position_prompts(position));
                }
                // No estimate before anyone was answered: say nothing rather than guess.
                if due.wait && hold_ms > 0 {
                    names.extend(wait_prompts(hold_ms));
                }
            }
        }
        if due.periodic {
            names.push(announcer.every.periodic.clone());
        }
        if due.callback {
            names.push(CALLBACK_OFFER.to_string());
            announcer.callback_open = true;
        }
        if names.is_empty() {
            return;
        }
        let frames: usize = names
            .iter()
            .filter_map(|n| catalog.prompts.get(n))
            .map(|p| p.frames())
            .sum();
        self.play(&catalog, 2, &names, false, false);
        announcer.resume_music = Some(now + Duration::from_millis(20 * frames as u64 + 300));
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
                self.after_call_ok = true;
                match self.bridge_to_end(a_dialog, leg, Some(ticket)).await {
                    super::End::AfterCall => Box::pin(self.after_call(offer, route)).await,
                    end => end,
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_come_on_schedule_and_wait_for_the_music() {
        let t0 = Instant::now();
        let every = Announcements {
            position: Duration::from_secs(30),
            wait: Duration::from_secs(60),
            periodic: "hotline/urgent-notice".into(),
            periodic_every: Duration::from_secs(45),
            callback: Duration::from_secs(50),
        };
        let mut a = Announcer::new(every, t0);
        assert_eq!(a.deadline(), Some(t0 + FIRST_ANNOUNCEMENT));
        assert_eq!(a.take_due(t0), Due::default());
        let d = a.take_due(t0 + FIRST_ANNOUNCEMENT);
        assert!(d.position && d.wait && !d.periodic);
        // While an announcement plays nothing else starts.
        a.resume_music = Some(t0 + Duration::from_secs(40));
        assert_eq!(a.take_due(t0 + Duration::from_secs(35)), Due::default());
        a.resume_music = None;
        let d = a.take_due(t0 + Duration::from_secs(46));
        assert!(d.position && !d.wait && d.periodic);
        assert!(!a.callback_open);
        let d = a.take_due(t0 + Duration::from_secs(63));
        assert!(!d.position && d.wait && !d.periodic && d.callback);
        // Turned off: never.
        let off = Announcements {
            position: Duration::ZERO,
            wait: Duration::ZERO,
            periodic: String::new(),
            periodic_every: Duration::from_secs(10),
            callback: Duration::ZERO,
        };
        assert_eq!(Announcer::new(off, t0).deadline(), None);
    }

    #[test]
    fn what_the_caller_hears() {
        assert_eq!(position_prompts(1), ["queue/next"]);
        assert_eq!(
            position_prompts(4),
            ["queue/ahead", "number/3", "queue/callers"]
        );
        assert_eq!(position_prompts(30), ["queue/many"]);
        assert_eq!(
            wait_prompts(10_000),
            ["queue/wait", "number/1", "queue/minutes"]
        );
        assert_eq!(
            wait_prompts(150_000),
            ["queue/wait", "number/3", "queue/minutes"]
        );
        assert_eq!(wait_prompts(3_600_000), ["queue/wait-long"]);
    }
}

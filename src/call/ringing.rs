//! The ringing phase of a call, as a state machine: offers and the races
//! of their answers.
//!
//! Room: the call. A round offers the call to one seat, or to every free
//! seat at once under ring-all (each INVITE is a [`Fork`]), until one
//! answers, all refuse or the ring time runs out. The first 2xx wins and the
//! others are cancelled. A fork the call gives up on (the caller cancelled,
//! another seat answered, the time ran out) is remembered, because SIP lets
//! it answer anyway: a CANCEL can only follow a provisional (RFC 3261 §9.1),
//! so the first 1xx after giving up gets the CANCEL then; a 2xx that crossed
//! the CANCEL is ACKed and hung up (§15), so no agent is left talking to
//! nobody; a final refusal settles it. The same machine outlives the call
//! for those late answers (`linger`).
//!
//! Sans-IO: [`Ringing::handle`] takes one of the worker's events and says
//! whether it was the ringing's; [`Ringing::poll_timeout`] and
//! [`Ringing::handle_timeout`] are the ring time; what to send and what
//! the desk is to hear come out of [`Ringing::poll_output`]. Placing the
//! INVITEs (ports, headers, the screen pop) and using the winner's answer
//! (media, the caller's 200) stay with the driver, `Call::offer_to`. May
//! touch: `sip`, `acd` (the seat and the offer's outcome), and the call's
//! [`SipOut`].

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use tracing::info;

use super::sip_out::SipOut;
use crate::acd::desk::OfferOutcome;
use crate::acd::SeatContact;
use crate::endpoint::CallEvent;
use crate::sip::dialog::Dialog;
use crate::sip::message::{Method, OutgoingRequest, Response};
use crate::sip::transaction::TxKey;

/// One INVITE of an offer (several at once under ring-all).
#[derive(Debug, Clone)]
pub(super) struct Fork {
    pub seat: SeatContact,
    pub dialog: Dialog,
    pub key: TxKey,
    pub branch: String,
    pub cseq: u32,
    /// A provisional response came (a CANCEL is needed to stop it).
    pub early: bool,
    /// Answered, refused, or given up.
    pub done: bool,
}

impl Fork {
    /// The CANCEL of this fork's INVITE (§9.1: same branch, Request-URI,
    /// Call-ID, From, To without tag, CSeq number).
    fn cancel(&self, host: &str) -> SipOut {
        let peer = self.seat.peer;
        let via = format!(
            "{} {host};branch={};rport",
            peer.transport.via_token(),
            self.branch
        );
        let from = format!("{};tag={}", self.dialog.local_uri, self.dialog.local_tag);
        let bytes = OutgoingRequest {
            method: &Method::Cancel,
            uri: &self.seat.uri,
            via: &via,
            from: &from,
            to: &self.dialog.remote_uri,
            call_id: &self.dialog.call_id,
            cseq: self.cseq,
            extra: &[],
            body: b"",
        }
        .write();
        SipOut::Request {
            call_id: self.dialog.call_id.clone(),
            method: Method::Cancel,
            branch: self.branch.clone(),
            bytes: Bytes::from(bytes),
            peer,
        }
    }
}

/// What the ringing wants done.
#[derive(Debug)]
pub(super) enum Out {
    /// A SIP message (CANCEL, ACK, BYE).
    Sip(SipOut),
    /// How the offer to a seat ended, for the desk.
    Outcome {
        /// The seat's agent.
        agent: String,
        /// What happened.
        outcome: OfferOutcome,
    },
    /// This fork's Call-ID is nobody's any more: stop routing it to the call.
    Unbind(String),
}

/// How a round ended.
#[derive(Debug)]
pub(super) enum RoundEnd {
    /// This fork answered (2xx, not yet ACKed): the caller goes to it.
    Answered(Box<Fork>, Box<Response>),
    /// Every seat refused, was unreachable or rang out.
    NoneTook,
}

/// The ringing of one call: the round under way, and the forks given up on.
#[derive(Debug, Default)]
pub(super) struct Ringing {
    /// Our host, for the CANCEL's Via and the ACK and BYE.
    host: String,
    /// The round's forks.
    live: Vec<Fork>,
    /// When the round rings out.
    deadline: Option<Instant>,
    /// Given up while they rang: a late answer is still settled.
    abandoned: Vec<Fork>,
    out: VecDeque<Out>,
}

impl Ringing {
    /// The ringing of a call on `host`.
    pub(super) fn new(host: &str) -> Ringing {
        Ringing {
            host: host.to_string(),
            ..Ringing::default()
        }
    }

    /// A round: `forks` (their INVITEs sent) ring until `deadline`. Its
    /// end already if none rings.
    pub(super) fn begin(&mut self, forks: Vec<Fork>, deadline: Instant) -> Option<RoundEnd> {
        self.live = forks;
        self.deadline = Some(deadline);
        self.all_refused()
    }

    /// When the round rings out; `None` when no fork of a round still rings.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.deadline.filter(|_| self.live.iter().any(|f| !f.done))
    }

    /// The next thing to do, in order.
    pub(super) fn poll_output(&mut self) -> Option<Out> {
        self.out.pop_front()
    }

    /// Whether no fork given up on may still answer.
    pub(super) fn is_settled(&self) -> bool {
        self.abandoned.is_empty()
    }

    /// Whether the fork with this Call-ID was given up on and may still answer.
    pub(super) fn is_abandoned(&self, call_id: &str) -> bool {
        self.abandoned.iter().any(|f| f.dialog.call_id == call_id)
    }

    /// The Call-IDs of the forks given up on.
    pub(super) fn abandoned_call_ids(&self) -> Vec<String> {
        self.abandoned
            .iter()
            .map(|f| f.dialog.call_id.clone())
            .collect()
    }

    /// The ring time has come at `now`: every fork still ringing is given
    /// up (no answer) and the round ends.
    pub(super) fn handle_timeout(&mut self, now: Instant) -> Option<RoundEnd> {
        let due = self.poll_timeout().is_some_and(|at| now >= at);
        if !due {
            return None;
        }
        self.abandon_round(Some(OfferOutcome::NoAnswer));
        Some(self.end_round(None))
    }

    /// The call stops ringing these seats (the caller left, the transfer
    /// was cancelled): each fork still ringing is given up, and the round
    /// ends. The desk hears no outcome: the seats did nothing wrong.
    pub(super) fn give_up(&mut self) {
        self.abandon_round(None);
        self.end_round(None);
    }

    /// Gives up on every fork of the round still ringing; the desk hears
    /// `told` for each, if anything (the ring time ran out).
    fn abandon_round(&mut self, told: Option<OfferOutcome>) {
        let mut forks = std::mem::take(&mut self.live);
        for fork in forks.iter_mut().filter(|f| !f.done) {
            if let Some(outcome) = told {
                info!(agent = %fork.seat.agent, "agent did not answer in time");
                self.outcome(fork, outcome);
            }
            self.abandon(fork);
        }
        self.live = forks;
    }

    /// Gives up on one fork still ringing: CANCEL it if it may be, and
    /// remember it so a late answer is settled.
    pub(super) fn abandon(&mut self, fork: &mut Fork) {
        if fork.done {
            return;
        }
        fork.done = true;
        if fork.early {
            self.out.push_back(Out::Sip(fork.cancel(&self.host)));
        }
        self.abandoned.push(fork.clone());
    }

    /// One of the worker's events at `now`: `Ok` when it was the
    /// ringing's (with the round's end, if this ended it), `Err` with the
    /// event when it is not.
    pub(super) fn handle(&mut self, event: CallEvent) -> Result<Option<RoundEnd>, CallEvent> {
        match event {
            CallEvent::Response {
                key: Some(key),
                response,
            } if self.live.iter().any(|f| f.key == *key && !f.done) => {
                Ok(self.answer(&key, response))
            }
            CallEvent::Timeout { key } if self.live.iter().any(|f| f.key == *key && !f.done) => {
                if let Some(i) = self.live.iter().position(|f| f.key == *key) {
                    info!(agent = %self.live[i].seat.agent, "agent unreachable");
                    self.live[i].done = true;
                    let fork = self.live[i].clone();
                    self.outcome(&fork, OfferOutcome::Unreachable);
                }
                Ok(self.all_refused())
            }
            CallEvent::Response { response, .. }
                if response.core.cseq_method == Method::Invite
                    && self.is_abandoned(&response.core.call_id) =>
            {
                self.late_answer(&response);
                Ok(None)
            }
            other => Err(other),
        }
    }

    /// A response to the INVITE of a fork of the round.
    fn answer(&mut self, key: &TxKey, response: Box<Response>) -> Option<RoundEnd> {
        let i = self.live.iter().position(|f| f.key == *key)?;
        match response.status {
            100 => None,
            101..=199 => {
                self.live[i].early = true;
                self.live[i].dialog.confirm(&response);
                None
            }
            200..=299 => {
                let mut winner = self.live.swap_remove(i);
                winner.done = true;
                self.abandon_round(None);
                Some(self.end_round(Some((winner, response))))
            }
            status => {
                info!(agent = %self.live[i].seat.agent, status, "agent declined");
                self.live[i].done = true;
                let fork = self.live[i].clone();
                self.outcome(&fork, OfferOutcome::Declined);
                self.all_refused()
            }
        }
    }

    /// The round's end if no fork still rings.
    fn all_refused(&mut self) -> Option<RoundEnd> {
        self.live
            .iter()
            .all(|f| f.done)
            .then(|| self.end_round(None))
    }

    /// Ends the round: forks that neither won nor may still answer stop
    /// being routed to the call (given-up ones stay bound until settled).
    fn end_round(&mut self, winner: Option<(Fork, Box<Response>)>) -> RoundEnd {
        self.deadline = None;
        for fork in std::mem::take(&mut self.live) {
            if !self.is_abandoned(&fork.dialog.call_id) {
                self.out.push_back(Out::Unbind(fork.dialog.call_id));
            }
        }
        match winner {
            Some((fork, response)) => RoundEnd::Answered(Box::new(fork), response),
            None => RoundEnd::NoneTook,
        }
    }

    /// A response to the INVITE of a fork given up on: a first provisional
    /// gets the CANCEL that could not be sent before it; a 2xx that crossed
    /// the CANCEL is ACKed and hung up; a final refusal settles it.
    fn late_answer(&mut self, response: &Response) {
        let Some(i) = self
            .abandoned
            .iter()
            .position(|f| f.dialog.call_id == response.core.call_id)
        else {
            return;
        };
        match response.status {
            101..=199 if !self.abandoned[i].early => {
                self.abandoned[i].early = true;
                let cancel = self.abandoned[i].cancel(&self.host);
                self.out.push_back(Out::Sip(cancel));
            }
            200..=299 => {
                let mut fork = self.abandoned.swap_remove(i);
                fork.dialog.confirm(response);
                info!(call_id = %fork.dialog.call_id, "late answer from an offer the call gave up: ACK and BYE");
                let peer = fork.seat.peer;
                let ack = SipOut::ack(&self.host, &mut fork.dialog, response.core.cseq, peer);
                let bye = SipOut::bye(&self.host, &mut fork.dialog, peer);
                self.out.push_back(Out::Sip(ack));
                self.out.push_back(Out::Sip(bye));
                self.out.push_back(Out::Unbind(fork.dialog.call_id));
            }
            300.. => {
                let fork = self.abandoned.swap_remove(i);
                self.out.push_back(Out::Unbind(fork.dialog.call_id));
            }
            _ => {}
        }
    }

    fn outcome(&mut self, fork: &Fork, outcome: OfferOutcome) {
        self.out.push_back(Out::Outcome {
            agent: fork.seat.agent.clone(),
            outcome,
        });
    }
}

#[cfg(test)]
mod tests {
    //! Each race of an offer, with made-up answers and instants; what the
    //! machine sends is parsed back as SIP.
    use super::*;
    use crate::call::sip_out::seen::{sent, Sent};
    use crate::sip::message::{parse, Message, Request};
    use crate::sip::{Peer, TransportKind};
    use std::net::SocketAddr;
    use std::time::Duration;

    const HOST: &str = "127.0.0.1:5060";

    /// A fork to `agent` (on its own port) whose INVITE we "sent"; with
    /// that INVITE, for its answers.
    fn fork(agent: &str, port: u16) -> (Fork, Request) {
        let peer = Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            transport: TransportKind::Udp,
            conn: 0,
        };
        let uri = format!("sip:{agent}@127.0.0.1:{port}");
        let mut dialog = Dialog::uac(
            format!("{agent}-b@yihaotong"),
            format!("<sip:13800000000@{HOST}>"),
            format!("<{uri}>"),
            uri.clone(),
        );
        let (bytes, branch, cseq) = dialog.request(&Method::Invite, HOST, "UDP", None, &[], b"");
        let Ok(Message::Request(invite)) = parse(&bytes) else {
            panic!("we wrote a bad INVITE")
        };
        let fork = Fork {
            seat: SeatContact {
                agent: agent.into(),
                uri,
                peer,
            },
            dialog,
            key: TxKey::client_for(&branch, Method::Invite),
            branch,
            cseq,
            early: false,
            done: false,
        };
        (fork, invite)
    }

    /// The seat's `status` to its INVITE, as the worker hands it over (the
    /// transaction already gone for a late one: no key).
    fn answer(fork: &Fork, invite: &Request, status: u16, late: bool) -> CallEvent {
        let tag = format!("{}-tag", fork.seat.agent);
        let bytes = invite.response(status, Some(&tag), &[], b"");
        let Ok(Message::Response(response)) = parse(&bytes) else {
            panic!("not a response")
        };
        CallEvent::Response {
            key: (!late).then(|| Box::new(fork.key.clone())),
            response: Box::new(response),
        }
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Did {
        Sip(Sent),
        Told(String, OfferOutcome),
        Unbound(String),
    }

    #[allow(non_snake_case)]
    fn Asked(method: Method, call_id: String) -> Did {
        Did::Sip(Sent::Ask(method, call_id))
    }

    #[allow(non_snake_case)]
    fn Acked(call_id: String) -> Did {
        Did::Sip(Sent::Ack(call_id))
    }

    fn did(ringing: &mut Ringing) -> Vec<Did> {
        let mut all = Vec::new();
        while let Some(out) = ringing.poll_output() {
            all.push(match out {
                Out::Sip(out) => match sent(&out) {
                    Sent::Answer(..) => panic!("the ringing answers nothing: {out:?}"),
                    other => Did::Sip(other),
                },
                Out::Outcome { agent, outcome } => Did::Told(agent, outcome),
                Out::Unbind(call_id) => Did::Unbound(call_id),
            });
        }
        all
    }

    fn id(agent: &str) -> String {
        format!("{agent}-b@yihaotong")
    }

    #[test]
    fn under_ring_all_the_first_2xx_wins_and_the_rest_are_cancelled() {
        let now = Instant::now();
        let (f1, inv1) = fork("1001", 5081);
        let (f2, inv2) = fork("1002", 5082);
        let (f3, inv3) = fork("1003", 5083);
        let mut ringing = Ringing::new(HOST);
        assert!(ringing
            .begin(
                vec![f1.clone(), f2.clone(), f3.clone()],
                now + Duration::from_secs(15)
            )
            .is_none());
        // 1001 rings; 1002 has only said 100; 1003 answers.
        for event in [
            answer(&f1, &inv1, 180, false),
            answer(&f2, &inv2, 100, false),
        ] {
            assert!(matches!(ringing.handle(event), Ok(None)));
        }
        let end = ringing.handle(answer(&f3, &inv3, 200, false));
        let Ok(Some(RoundEnd::Answered(winner, response))) = end else {
            panic!("the 2xx did not win: {end:?}")
        };
        assert_eq!((winner.seat.agent.as_str(), response.status), ("1003", 200));
        // Only the one that rang can be cancelled (RFC 3261 §9.1); both are
        // remembered, and stay bound for their late answers.
        assert_eq!(did(&mut ringing), [Asked(Method::Cancel, id("1001"))]);
        assert!(ringing.is_abandoned(&id("1001")) && ringing.is_abandoned(&id("1002")));
        assert_eq!(ringing.poll_timeout(), None);

        // 1002 rings after all: its CANCEL goes now. Then it answers anyway
        // (the 200 crossed the CANCEL): ACK and BYE, and it is settled.
        assert!(ringing.handle(answer(&f2, &inv2, 180, true)).is_ok());
        assert_eq!(did(&mut ringing), [Asked(Method::Cancel, id("1002"))]);
        assert!(ringing.handle(answer(&f2, &inv2, 200, true)).is_ok());
        assert_eq!(
            did(&mut ringing),
            [
                Acked(id("1002")),
                Asked(Method::Bye, id("1002")),
                Did::Unbound(id("1002"))
            ]
        );
        // 1001 takes its CANCEL: 487 settles it.
        assert!(ringing.handle(answer(&f1, &inv1, 487, true)).is_ok());
        assert_eq!(did(&mut ringing), [Did::Unbound(id("1001"))]);
        assert!(ringing.is_settled());
    }

    #[test]
    fn the_caller_cancels_as_the_agent_answers() {
        let now = Instant::now();
        let (f, inv) = fork("1001", 5081);
        let mut ringing = Ringing::new(HOST);
        ringing.begin(vec![f.clone()], now + Duration::from_secs(15));
        assert!(ringing.handle(answer(&f, &inv, 180, false)).is_ok());
        // The caller's CANCEL is the call's business; the call gives up.
        assert!(matches!(
            ringing.handle(CallEvent::Cancelled),
            Err(CallEvent::Cancelled)
        ));
        ringing.give_up();
        assert_eq!(did(&mut ringing), [Asked(Method::Cancel, id("1001"))]);
        assert!(!ringing.is_settled());
        // The agent's 200 crossed our CANCEL: the agent is not left talking
        // to nobody. No outcome for the desk: the seat did nothing wrong.
        assert!(matches!(
            ringing.handle(answer(&f, &inv, 200, false)),
            Ok(None)
        ));
        assert_eq!(
            did(&mut ringing),
            [
                Acked(id("1001")),
                Asked(Method::Bye, id("1001")),
                Did::Unbound(id("1001"))
            ]
        );
        assert!(ringing.is_settled());
        // Its 200 again (our ACK lost) is nobody's now.
        assert!(ringing.handle(answer(&f, &inv, 200, true)).is_err());
    }

    #[test]
    fn seats_that_ring_out_are_told_no_answer() {
        let start = Instant::now();
        let ring = Duration::from_secs(15);
        let (f1, inv1) = fork("1001", 5081);
        let (f2, _) = fork("1002", 5082);
        let mut ringing = Ringing::new(HOST);
        ringing.begin(vec![f1.clone(), f2], start + ring);
        ringing.handle(answer(&f1, &inv1, 183, false)).ok();
        assert_eq!(ringing.poll_timeout(), Some(start + ring));
        // Not yet.
        assert!(ringing
            .handle_timeout(start + ring - Duration::from_millis(1))
            .is_none());
        assert!(did(&mut ringing).is_empty());
        let end = ringing.handle_timeout(start + ring);
        assert!(matches!(end, Some(RoundEnd::NoneTook)));
        assert_eq!(
            did(&mut ringing),
            [
                Did::Told("1001".into(), OfferOutcome::NoAnswer),
                Asked(Method::Cancel, id("1001")),
                Did::Told("1002".into(), OfferOutcome::NoAnswer),
            ]
        );
        assert_eq!(ringing.poll_timeout(), None);
    }

    #[test]
    fn refusals_and_silence_end_the_round_when_the_last_seat_has_spoken() {
        let now = Instant::now();
        let (f1, inv1) = fork("1001", 5081);
        let (f2, _) = fork("1002", 5082);
        let mut ringing = Ringing::new(HOST);
        ringing.begin(vec![f1.clone(), f2.clone()], now + Duration::from_secs(15));
        assert!(matches!(
            ringing.handle(answer(&f1, &inv1, 486, false)),
            Ok(None)
        ));
        let timeout = CallEvent::Timeout {
            key: Box::new(f2.key.clone()),
        };
        assert!(matches!(
            ringing.handle(timeout),
            Ok(Some(RoundEnd::NoneTook))
        ));
        assert_eq!(
            did(&mut ringing),
            [
                Did::Told("1001".into(), OfferOutcome::Declined),
                Did::Told("1002".into(), OfferOutcome::Unreachable),
                Did::Unbound(id("1001")),
                Did::Unbound(id("1002")),
            ]
        );
        assert!(ringing.is_settled());
        // A round with no fork left ringing ends as it begins.
        let mut done = f1.clone();
        done.done = true;
        assert!(matches!(
            ringing.begin(vec![done], now),
            Some(RoundEnd::NoneTook)
        ));
    }

    #[test]
    fn what_is_not_an_offers_goes_back() {
        let now = Instant::now();
        let (f, inv) = fork("1001", 5081);
        let (other, other_inv) = fork("2001", 5090);
        let mut ringing = Ringing::new(HOST);
        ringing.begin(vec![f.clone()], now + Duration::from_secs(15));
        assert!(ringing
            .handle(answer(&other, &other_inv, 200, false))
            .is_err());
        assert!(ringing.handle(CallEvent::AckTimeout).is_err());
        let stray_timeout = CallEvent::Timeout {
            key: Box::new(other.key.clone()),
        };
        assert!(ringing.handle(stray_timeout).is_err());
        // A response to our BYE or CANCEL is not an offer's answer.
        let cancel_ok = {
            let bytes = inv
                .response(200, Some("t"), &[], b"")
                .into_iter()
                .collect::<Vec<u8>>();
            let text = String::from_utf8(bytes)
                .expect("utf8")
                .replace(" INVITE", " CANCEL");
            let Ok(Message::Response(r)) = parse(text.as_bytes()) else {
                panic!()
            };
            CallEvent::Response {
                key: None,
                response: Box::new(r),
            }
        };
        ringing.give_up();
        assert!(ringing.handle(cancel_ok).is_err());
        assert!(
            did(&mut ringing).is_empty(),
            "nothing rang, nothing to cancel"
        );
    }
}

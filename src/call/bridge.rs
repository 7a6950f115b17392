//! The bridged phase of a call, as a state machine.
//!
//! Room: the call. Two answered legs talk: the caller's (A, the trunk side)
//! and the far leg (B: an agent, a backend, an outside number). This is what
//! their in-dialog requests mean meanwhile: a BYE ends the call (the other
//! leg gets ours), a re-INVITE or UPDATE with an offer is passed across with
//! our own SDP (hold and resume) and its answer comes back the same way, an
//! offerless one is answered with our current SDP, INFO and OPTIONS get 200,
//! an agent's REFER transfers, a backend's REFER or the caller's return keys
//! hand the caller back; and what silence, a 2xx never ACKed or a re-INVITE
//! never answered mean.
//!
//! Sans-IO in the style of `sip::transaction`: [`Bridge::handle`] takes one
//! [`Input`] and the instant it happened; what to send comes out of
//! [`Bridge::poll_output`] as data ([`SipOut`], [`MediaOut`]); the end of
//! the phase is what `handle` returns. It owns no socket, channel or timer,
//! so each race is a unit test with made-up instants (below). The driver is
//! `Call::bridged` (`call/mod.rs`), which also hears the API, supervisors
//! and takeovers. May touch: `sip`, `media::sdp`, `media::dtmf`, and the
//! call's [`SipOut`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use tracing::{info, warn};

use super::sip_out::{self, contact, SipOut, Voice};
use super::End;
use crate::endpoint::CallEvent;
use crate::media::dtmf::KeySequence;
use crate::media::relay::Side;
use crate::media::sdp::{self, Direction};
use crate::sip::dialog::Dialog;
use crate::sip::message::{Echo, Method, Request, Response};
use crate::sip::transaction::TxKey;
use crate::sip::Peer;

/// One answered leg of the call. Plain data: it can be written down and
/// read back (serde), as can the whole [`Bridge`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Leg {
    pub side: Side,
    pub dialog: Dialog,
    pub peer: Peer,
    /// Our media address facing this leg.
    pub media: SocketAddr,
    /// SDP version we last sent this leg.
    pub sdp_version: u64,
    /// A re-INVITE from this leg waiting for the other leg's answer: its
    /// transaction, and what answering it needs.
    pub pending: Option<(TxKey, Echo)>,
    /// Key and CSeq of our own re-INVITE to this leg, while it is outstanding.
    pub our_reinvite: Option<(TxKey, u32)>,
    /// Where this leg's SDP says to send its RTP.
    pub remote_media: SocketAddr,
}

impl Leg {
    /// 200 with our SDP for this leg (its next version), in `direction`,
    /// to the INVITE or UPDATE in its dialog that `echo` answers.
    pub(super) fn answer(
        &mut self,
        host: &str,
        voice: &Voice,
        key: &TxKey,
        echo: &Echo,
        direction: Direction,
    ) -> SipOut {
        self.sdp_version += 1;
        let body = voice.sdp(self.media, self.sdp_version, direction);
        let contact = contact(host, &self.peer);
        SipOut::respond_to(
            key,
            echo,
            &self.dialog.local_tag,
            200,
            &[("Contact", &contact), ("Content-Type", "application/sdp")],
            body.as_bytes(),
        )
    }

    /// `status` to `req` in this leg's dialog.
    fn respond(&self, key: &TxKey, req: &Request, status: u16) -> SipOut {
        SipOut::respond(key, req, &self.dialog.local_tag, status, &[], b"")
    }

    /// `status` to a request of this leg's kept to be answered later.
    fn respond_later(&self, key: &TxKey, echo: &Echo, status: u16) -> SipOut {
        SipOut::respond_to(key, echo, &self.dialog.local_tag, status, &[], b"")
    }
}

/// What the bridge is told.
#[derive(Debug)]
pub(super) enum Input {
    /// What the SIP worker says about the call's dialogs.
    Sip(CallEvent),
    /// No RTP from this side for `rtp_timeout` (the relay's watch).
    Silent(Side),
    /// A key the caller pressed (RFC 4733, reported by the relay while a
    /// backend has them).
    Key(char),
}

/// What the bridge asks of the media relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MediaOut {
    /// Send this side's RTP here from now on (its new SDP).
    Remote(Side, SocketAddr),
    /// Watch for silence (talking), or stop (on hold).
    Watch(bool),
}

/// What the bridge wants done.
#[derive(Debug)]
pub(super) enum Out {
    /// A SIP message.
    Sip(SipOut),
    /// A relay command.
    Media(MediaOut),
    /// An event about neither leg (a transferring agent's leg, an offer the
    /// call gave up on): the call's other business.
    Stray(CallEvent),
}

/// How the bridged phase ended.
#[derive(Debug)]
pub(super) enum Exit {
    /// The call is over (the other leg has its BYE where one is due).
    Ended(End),
    /// The agent asked for a transfer (its REFER, not yet answered).
    Refer(TxKey, Box<Request>),
    /// The caller goes back from the backend on the far leg: its REFER
    /// (not yet answered), or the caller's return keys (no request).
    HandBack(Option<(TxKey, Box<Request>)>),
}

/// What the far leg may do, fixed when the bridge starts.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Rules {
    /// The far leg is an agent's: its REFER transfers the caller.
    pub transfers: bool,
    /// The far leg is a backend a flow handed the caller to: its REFER,
    /// or the caller's return keys (RFC 4733 or INFO), hand them back.
    pub hand_back: bool,
    /// The keys that hand the caller back (`[backends.NAME] return_keys`).
    pub return_keys: Option<KeySequence>,
    /// When the agent hangs up first, the caller may stay (for an
    /// after-call flow): the driver, not the bridge, sends their BYE if no
    /// flow is to run ([`Bridge::caller_left_up`]).
    pub caller_may_stay: bool,
}

/// Two answered legs, talking.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Bridge {
    /// The caller's leg.
    pub a: Leg,
    /// The far leg.
    pub b: Leg,
    /// Our host, for Via and Contact.
    host: String,
    /// What our SDP says.
    voice: Voice,
    rules: Rules,
    /// The caller's direction in the last SDP they were sent (a held
    /// caller is taken off hold by whoever takes them next).
    pub a_direction: Direction,
    /// The agent hung up and the caller's leg was left up (see
    /// [`Rules::caller_may_stay`]): it gets BYE unless an after-call flow
    /// takes it.
    pub caller_left_up: bool,
    /// What to send: carried out before the bridge is written down.
    #[serde(skip)]
    out: VecDeque<Out>,
}

impl Bridge {
    /// The bridge of `a` and `b`.
    pub(super) fn new(
        a: Leg,
        b: Leg,
        host: &str,
        voice: Voice,
        rules: Rules,
        a_direction: Direction,
    ) -> Bridge {
        Bridge {
            a,
            b,
            host: host.to_string(),
            voice,
            rules,
            a_direction,
            caller_left_up: false,
            out: VecDeque::new(),
        }
    }

    /// The two legs back (the phase is over).
    pub(super) fn into_legs(self) -> (Leg, Leg) {
        (self.a, self.b)
    }

    /// The next thing to send, in order.
    pub(super) fn poll_output(&mut self) -> Option<Out> {
        self.out.pop_front()
    }

    /// The return keys as they stand (how much of them was pressed).
    pub(super) fn return_keys(&self) -> Option<&KeySequence> {
        self.rules.return_keys.as_ref()
    }

    /// What `input` at `now` means; `Some` when the bridged phase is over.
    pub(super) fn handle(&mut self, input: Input, now: Instant) -> Option<Exit> {
        match input {
            Input::Key(key) => self.return_key(key, now).then_some(Exit::HandBack(None)),
            Input::Silent(side) => {
                warn!(?side, "no RTP for rtp_timeout; hanging up");
                Some(self.hang_up_both(End::RtpTimeout))
            }
            Input::Sip(event) => self.sip(event, now),
        }
    }

    /// BYE to both legs (the call ends for a reason of ours).
    pub(super) fn hang_up_both(&mut self, end: End) -> Exit {
        self.bye(Side::A);
        self.bye(Side::B);
        Exit::Ended(end)
    }

    /// BYE to one leg.
    pub(super) fn bye(&mut self, side: Side) {
        let leg = match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        };
        let out = SipOut::bye(&self.host, &mut leg.dialog, leg.peer);
        self.out.push_back(Out::Sip(out));
    }

    /// The call has ended: a re-INVITE still waiting for the other leg's
    /// answer (a BYE crossed it, RFC 5407 §3.5) gets its final answer, 487,
    /// not silence.
    pub(super) fn end_pending(&mut self) {
        for leg in [&mut self.a, &mut self.b] {
            if let Some((key, echo)) = leg.pending.take() {
                let answer = leg.respond_later(&key, &echo, 487);
                self.out.push_back(Out::Sip(answer));
            }
        }
    }

    fn send(&mut self, out: SipOut) {
        self.out.push_back(Out::Sip(out));
    }

    fn media(&mut self, out: MediaOut) {
        self.out.push_back(Out::Media(out));
    }

    /// A key the caller pressed: whether it completes the return keys.
    fn return_key(&mut self, key: char, now: Instant) -> bool {
        self.rules
            .return_keys
            .as_mut()
            .is_some_and(|seq| seq.key(key, now))
    }

    fn sip(&mut self, event: CallEvent, now: Instant) -> Option<Exit> {
        match event {
            CallEvent::Request { key, request, peer } => {
                let from_a = request.core.call_id == self.a.dialog.call_id;
                let from_b = request.core.call_id == self.b.dialog.call_id;
                if !from_a && !from_b {
                    self.out
                        .push_back(Out::Stray(CallEvent::Request { key, request, peer }));
                    return None;
                }
                if from_a {
                    self.caller_request(*key, request, now)
                } else {
                    self.far_leg_request(*key, request)
                }
            }
            CallEvent::Response { key, response }
                if response.core.call_id != self.a.dialog.call_id
                    && response.core.call_id != self.b.dialog.call_id =>
            {
                self.out
                    .push_back(Out::Stray(CallEvent::Response { key, response }));
                None
            }
            CallEvent::Response { key, response } => {
                let side = if response.core.call_id == self.a.dialog.call_id {
                    Side::A
                } else {
                    Side::B
                };
                self.reinvite_answer(key.map(|k| *k), &response, side);
                None
            }
            CallEvent::Timeout { key } => {
                // A re-INVITE the other side never answered: give up on the call.
                let ours = [&self.a, &self.b]
                    .iter()
                    .any(|l| l.our_reinvite.as_ref().is_some_and(|(k, _)| *k == *key));
                if ours {
                    warn!("re-INVITE timed out; hanging up");
                    return Some(self.hang_up_both(End::Refused));
                }
                None
            }
            CallEvent::AckTimeout => {
                warn!("caller never acknowledged the answer; hanging up");
                Some(self.hang_up_both(End::AckTimeout))
            }
            CallEvent::Ack | CallEvent::Cancelled => None,
        }
    }

    /// A request in the caller's dialog. While a backend has them, an INFO
    /// key may complete their return keys.
    fn caller_request(&mut self, key: TxKey, req: Box<Request>, now: Instant) -> Option<Exit> {
        if self.rules.hand_back && req.method == Method::Info {
            let content_type = req.headers.get("content-type").unwrap_or_default();
            let pressed = crate::media::dtmf::info_key(content_type, &req.body);
            if pressed.is_some_and(|k| self.return_key(k, now))
                && self.a.dialog.accept_request(&req)
            {
                let answer = self.a.respond(&key, &req, 200);
                self.send(answer);
                return Some(Exit::HandBack(None));
            }
        }
        self.in_dialog(key, req, Side::A)
    }

    /// A request in the far leg's dialog: an agent's REFER transfers, a
    /// backend's hands the caller back.
    fn far_leg_request(&mut self, key: TxKey, req: Box<Request>) -> Option<Exit> {
        if req.method == Method::Refer && (self.rules.transfers || self.rules.hand_back) {
            if let Some(refusal) = sip_out::out_of_order(&mut self.b.dialog, &key, &req) {
                self.send(refusal);
                return None;
            }
            return Some(if self.rules.hand_back {
                Exit::HandBack(Some((key, req)))
            } else {
                Exit::Refer(key, req)
            });
        }
        self.in_dialog(key, req, Side::B)
    }

    /// The two legs as (the one on `side`, the other).
    fn legs(&mut self, side: Side) -> (&mut Leg, &mut Leg) {
        match side {
            Side::A => (&mut self.a, &mut self.b),
            Side::B => (&mut self.b, &mut self.a),
        }
    }

    /// A request in the dialog of the leg on `side`.
    fn in_dialog(&mut self, key: TxKey, req: Box<Request>, side: Side) -> Option<Exit> {
        let (this, _) = self.legs(side);
        if let Some(refusal) = sip_out::out_of_order(&mut this.dialog, &key, &req) {
            self.send(refusal);
            return None;
        }
        match req.method {
            Method::Bye => {
                let ok = this.respond(&key, &req, 200);
                self.send(ok);
                // The agent left first: the caller stays for the after-call
                // flow (a rating), if one is to run.
                if side == Side::B && self.rules.caller_may_stay {
                    self.caller_left_up = true;
                } else {
                    self.bye(other_side(side));
                }
                Some(Exit::Ended(match side {
                    Side::A => End::CallerHungUp,
                    Side::B => End::AgentHungUp,
                }))
            }
            Method::Invite | Method::Update if !req.body.is_empty() => {
                self.pass_offer(key, req, side);
                None
            }
            Method::Invite | Method::Update => {
                // An offerless re-INVITE/UPDATE (session refresh): answer
                // with our current SDP.
                let (host, voice) = (self.host.clone(), self.voice);
                let (this, _) = self.legs(side);
                let answer = this.answer(&host, &voice, &key, &req.echo(), Direction::SendRecv);
                self.send(answer);
                None
            }
            Method::Info | Method::Options => {
                let ok = this.respond(&key, &req, 200);
                self.send(ok);
                None
            }
            // Only an agent may transfer (the caller, a backend or an
            // outside number may not send us elsewhere).
            Method::Refer => {
                info!(?side, "REFER refused: this leg may not transfer");
                let refusal = this.respond(&key, &req, 403);
                self.send(refusal);
                None
            }
            Method::Other(_) => {
                let refusal = sip_out::allow_only(&key, &req, &this.dialog.local_tag, 501);
                self.send(refusal);
                None
            }
            _ => {
                let refusal = sip_out::allow_only(&key, &req, &this.dialog.local_tag, 405);
                self.send(refusal);
                None
            }
        }
    }

    /// An offer (re-INVITE or UPDATE) from the leg on `side`: the other
    /// leg gets our re-INVITE with the same direction; the asking leg's
    /// answer waits for theirs. One offer at a time (491, RFC 3261 §14.1).
    fn pass_offer(&mut self, key: TxKey, req: Box<Request>, side: Side) {
        let host = self.host.clone();
        let voice = self.voice;
        let (this, other) = self.legs(side);
        if this.pending.is_some() || other.our_reinvite.is_some() || this.our_reinvite.is_some() {
            let glare = this.respond(&key, &req, 491);
            self.send(glare);
            return;
        }
        let offer = match sip_out::offer_in(&key, &req, &this.dialog.local_tag) {
            Ok(offer) => offer,
            Err(refusal) => {
                self.send(*refusal);
                return;
            }
        };
        this.remote_media = offer.addr;
        other.sdp_version += 1;
        let body = voice.sdp(other.media, other.sdp_version, offer.direction);
        let contact = contact(&host, &other.peer);
        let (invite, invite_key, cseq) = SipOut::in_dialog(
            &host,
            &mut other.dialog,
            other.peer,
            Method::Invite,
            &[("Contact", &contact), ("Content-Type", "application/sdp")],
            body.as_bytes(),
        );
        other.our_reinvite = Some((invite_key, cseq));
        this.pending = Some((key, req.echo()));
        if side == Side::B {
            self.a_direction = offer.direction;
        }
        info!(
            ?side,
            direction = offer.direction.token(),
            "re-INVITE passed across"
        );
        self.media(MediaOut::Remote(side, offer.addr));
        self.send(invite);
    }

    /// A response in the dialog of the leg on `side`: the answer to a
    /// re-INVITE we passed to it is ACKed, and the leg that asked gets
    /// its answer.
    fn reinvite_answer(&mut self, key: Option<TxKey>, resp: &Response, side: Side) {
        if resp.core.cseq_method != Method::Invite || resp.status < 200 {
            return;
        }
        let host = self.host.clone();
        let voice = self.voice;
        let (this, other) = self.legs(side);
        let ack = (200..300)
            .contains(&resp.status)
            // Always ACK a 2xx, also a retransmission (its ACK may have been lost).
            .then(|| SipOut::ack(&host, &mut this.dialog, resp.core.cseq, this.peer));
        let ours = matches!(&this.our_reinvite, Some((k, _)) if key.as_ref() == Some(k));
        if ours {
            this.our_reinvite = None;
        }
        let answered = if ours { other.pending.take() } else { None };
        let Some((pkey, pecho)) = answered else {
            if let Some(ack) = ack {
                self.send(ack);
            }
            return;
        };
        if !(200..300).contains(&resp.status) {
            let refusal = other.respond_later(&pkey, &pecho, resp.status);
            self.send(refusal);
            return;
        }
        let (direction, remote) = match sdp::parse_audio(&resp.body) {
            Ok(answer) => {
                this.remote_media = answer.addr;
                (answer.direction, Some(answer.addr))
            }
            Err(_) => (Direction::SendRecv, None),
        };
        let answer = other.answer(&host, &voice, &pkey, &pecho, direction);
        let other_side = other.side;
        if let Some(ack) = ack {
            self.send(ack);
        }
        if let Some(addr) = remote {
            self.media(MediaOut::Remote(side, addr));
        }
        self.media(MediaOut::Watch(!direction.is_hold()));
        if other_side == Side::A {
            self.a_direction = direction;
        }
        self.send(answer);
    }
}

/// The side across from `side`.
fn other_side(side: Side) -> Side {
    match side {
        Side::A => Side::B,
        Side::B => Side::A,
    }
}

#[cfg(test)]
mod tests {
    //! Each race of a bridged call, driven with made-up messages and
    //! instants; what the machine sends is parsed back as SIP.
    use super::*;
    use crate::call::sip_out::seen::{sent, Sent};
    use crate::sip::message::{parse, Message};
    use crate::sip::TransportKind;
    use std::time::Duration;

    const HOST: &str = "127.0.0.1:5060";
    const A_CALL: &str = "a-call@trunk";
    const B_CALL: &str = "b-call@yihaotong";

    fn voice() -> Voice {
        Voice {
            session_id: 7,
            codec: 0,
            telephone_event: Some(101),
        }
    }

    fn peer(port: u16) -> Peer {
        Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            transport: TransportKind::Udp,
            conn: 0,
        }
    }

    fn request(text: &str) -> Request {
        match parse(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn message(bytes: &[u8]) -> Message {
        parse(bytes).unwrap_or_else(|e| panic!("we wrote bad SIP: {e:?}"))
    }

    fn sdp_body(port: u16, direction: Direction) -> String {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        sdp::write(99, 2, addr, &[0], Some(101), direction)
    }

    /// The caller's leg: the trunk's INVITE, answered with our tag `a`.
    fn caller_leg() -> Leg {
        let invite = request(&format!(
            "INVITE sip:12345@{HOST} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa0\r\n\
             From: <sip:13800000000@trunk>;tag=caller\r\nTo: <sip:12345@{HOST}>\r\nCall-ID: {A_CALL}\r\n\
             CSeq: 1 INVITE\r\nContact: <sip:13800000000@127.0.0.1:5070>\r\nContent-Length: 0\r\n\r\n"
        ));
        Leg {
            side: Side::A,
            dialog: Dialog::uas(&invite, "a"),
            peer: peer(5070),
            media: SocketAddr::from(([127, 0, 0, 1], 20000)),
            sdp_version: 1,
            pending: None,
            our_reinvite: None,
            remote_media: SocketAddr::from(([127, 0, 0, 1], 4000)),
        }
    }

    /// The agent's leg: our INVITE with tag `b`, answered by tag `agent`.
    fn agent_leg() -> Leg {
        let mut dialog = Dialog::uac(
            B_CALL.into(),
            format!("<sip:13800000000@{HOST}>"),
            "<sip:1001@127.0.0.1:5080>".into(),
            "sip:1001@127.0.0.1:5080".into(),
        );
        dialog.local_tag = "b".into();
        dialog.remote_tag = "agent".into();
        Leg {
            side: Side::B,
            dialog,
            peer: peer(5080),
            media: SocketAddr::from(([127, 0, 0, 1], 20002)),
            sdp_version: 1,
            pending: None,
            our_reinvite: None,
            remote_media: SocketAddr::from(([127, 0, 0, 1], 6000)),
        }
    }

    fn bridge(rules: Rules) -> Bridge {
        Bridge::new(
            caller_leg(),
            agent_leg(),
            HOST,
            voice(),
            rules,
            Direction::SendRecv,
        )
    }

    fn agent_rules() -> Rules {
        Rules {
            transfers: true,
            ..Rules::default()
        }
    }

    /// A request from `side`'s far end in its dialog.
    fn from(side: Side, method: &str, cseq: u32, extra: &str, body: &str) -> Input {
        let (call_id, from, to, port) = match side {
            Side::A => (
                A_CALL,
                "<sip:13800000000@trunk>;tag=caller",
                "<sip:12345@127.0.0.1:5060>;tag=a",
                5070,
            ),
            Side::B => (
                B_CALL,
                "<sip:1001@127.0.0.1:5080>;tag=agent",
                "<sip:13800000000@127.0.0.1:5060>;tag=b",
                5080,
            ),
        };
        let branch = format!("z9hG4bK{method}{cseq}{port}");
        let text = format!(
            "{method} sip:yihaotong@{HOST} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch={branch}\r\n\
             From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
             Contact: <sip:x@127.0.0.1:{port}>\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let method = request(&text).method;
        Input::Sip(CallEvent::Request {
            key: Box::new(TxKey::client_for(&branch, method)),
            request: Box::new(request(&text)),
            peer: peer(port),
        })
    }

    fn reinvite(side: Side, cseq: u32, direction: Direction) -> Input {
        from(
            side,
            "INVITE",
            cseq,
            "Content-Type: application/sdp\r\n",
            &sdp_body(if side == Side::A { 4002 } else { 6002 }, direction),
        )
    }

    /// What one output is, in a word we can compare.
    #[derive(Debug, PartialEq, Eq)]
    enum Said {
        Sip(Sent),
        Media(MediaOut),
        Stray,
    }

    #[allow(non_snake_case)]
    fn Answer(status: u16, call_id: String) -> Said {
        Said::Sip(Sent::Answer(status, call_id))
    }

    #[allow(non_snake_case)]
    fn Ask(method: Method, call_id: String) -> Said {
        Said::Sip(Sent::Ask(method, call_id))
    }

    #[allow(non_snake_case)]
    fn Ack(call_id: String) -> Said {
        Said::Sip(Sent::Ack(call_id))
    }

    fn said(bridge: &mut Bridge) -> Vec<Said> {
        let mut all = Vec::new();
        while let Some(out) = bridge.poll_output() {
            all.push(match out {
                Out::Sip(out) => Said::Sip(sent(&out)),
                Out::Media(m) => Said::Media(m),
                Out::Stray(_) => Said::Stray,
            });
        }
        all
    }

    /// The last request the bridge sent, parsed (with its output).
    fn sent_request(outs: &mut Bridge) -> (Request, TxKey) {
        let mut found = None;
        while let Some(out) = outs.poll_output() {
            if let Out::Sip(SipOut::Request {
                bytes,
                branch,
                method,
                ..
            }) = out
            {
                if let Message::Request(r) = message(&bytes) {
                    found = Some((r, TxKey::client_for(&branch, method)));
                }
            }
        }
        found.expect("the bridge sent no request")
    }

    /// The far end's answer to our `req`.
    fn answer_to(req: &Request, key: Option<&TxKey>, status: u16, body: &str) -> Input {
        let extra: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("Content-Type", "application/sdp")]
        };
        let bytes = req.response(status, Some("far"), extra, body.as_bytes());
        let Message::Response(response) = message(&bytes) else {
            panic!("not a response")
        };
        Input::Sip(CallEvent::Response {
            key: key.map(|k| Box::new(k.clone())),
            response: Box::new(response),
        })
    }

    fn a() -> String {
        A_CALL.to_string()
    }

    fn b() -> String {
        B_CALL.to_string()
    }

    #[test]
    fn the_caller_hangs_up_and_the_agent_gets_bye() {
        let now = Instant::now();
        let mut bridge = bridge(agent_rules());
        let exit = bridge.handle(from(Side::A, "BYE", 2, "", ""), now);
        assert!(matches!(exit, Some(Exit::Ended(End::CallerHungUp))));
        assert_eq!(said(&mut bridge), [Answer(200, a()), Ask(Method::Bye, b())]);
    }

    #[test]
    fn the_agent_hangs_up_and_the_caller_gets_bye_unless_they_stay() {
        let now = Instant::now();
        let mut bridge = bridge(agent_rules());
        let exit = bridge.handle(from(Side::B, "BYE", 2, "", ""), now);
        assert!(matches!(exit, Some(Exit::Ended(End::AgentHungUp))));
        assert_eq!(said(&mut bridge), [Answer(200, b()), Ask(Method::Bye, a())]);
        assert!(!bridge.caller_left_up);

        let mut staying = self::bridge(Rules {
            caller_may_stay: true,
            ..agent_rules()
        });
        let exit = staying.handle(from(Side::B, "BYE", 2, "", ""), now);
        assert!(matches!(exit, Some(Exit::Ended(End::AgentHungUp))));
        assert_eq!(said(&mut staying), [Answer(200, b())]);
        assert!(staying.caller_left_up);
        // No after-call flow after all: the driver hangs the caller up.
        staying.bye(Side::A);
        assert_eq!(said(&mut staying), [Ask(Method::Bye, a())]);
        // Only the agent's BYE leaves the caller up; the caller's own
        // ends it as ever.
        let mut caller_first = self::bridge(Rules {
            caller_may_stay: true,
            ..agent_rules()
        });
        caller_first.handle(from(Side::A, "BYE", 2, "", ""), now);
        assert_eq!(
            said(&mut caller_first),
            [Answer(200, a()), Ask(Method::Bye, b())]
        );
    }

    #[test]
    fn hold_passes_across_and_the_answer_comes_back() {
        let now = Instant::now();
        let mut bridge = bridge(agent_rules());
        // The agent holds: the caller gets our re-INVITE, sendonly.
        assert!(bridge
            .handle(reinvite(Side::B, 2, Direction::SendOnly), now)
            .is_none());
        let (ours, key) = sent_request(&mut bridge);
        assert_eq!(ours.core.call_id, A_CALL);
        assert_eq!(ours.method, Method::Invite);
        let offer = sdp::parse_audio(&ours.body).expect("our SDP");
        assert_eq!(offer.direction, Direction::SendOnly);
        assert_eq!(offer.addr, bridge.a.media);
        assert_eq!(bridge.b.remote_media.port(), 6002);
        assert_eq!(bridge.a_direction, Direction::SendOnly);

        // The caller answers recvonly: ACKed, and the agent gets its 200.
        let answer = sdp_body(4004, Direction::RecvOnly);
        bridge.handle(answer_to(&ours, Some(&key), 200, &answer), now);
        assert_eq!(
            said(&mut bridge),
            [
                Ack(a()),
                Said::Media(MediaOut::Remote(
                    Side::A,
                    SocketAddr::from(([127, 0, 0, 1], 4004))
                )),
                Said::Media(MediaOut::Watch(false)),
                Answer(200, b()),
            ]
        );
        assert!(bridge.a.our_reinvite.is_none() && bridge.b.pending.is_none());

        // The 200 again (our ACK was lost): ACKed again, nothing else.
        bridge.handle(answer_to(&ours, None, 200, &answer), now);
        assert_eq!(said(&mut bridge), [Ack(a())]);
    }

    #[test]
    fn the_agents_answer_to_the_callers_offer_goes_back_with_our_sdp() {
        let now = Instant::now();
        let mut bridge = bridge(agent_rules());
        bridge.handle(reinvite(Side::A, 2, Direction::SendOnly), now);
        let (ours, key) = sent_request(&mut bridge);
        assert_eq!(ours.core.call_id, B_CALL);
        let answer = sdp_body(6004, Direction::RecvOnly);
        let reply = {
            let bytes = ours.response(
                200,
                None,
                &[("Content-Type", "application/sdp")],
                answer.as_bytes(),
            );
            let Message::Response(r) = message(&bytes) else {
                panic!()
            };
            r
        };
        bridge.handle(
            Input::Sip(CallEvent::Response {
                key: Some(Box::new(key)),
                response: Box::new(reply),
            }),
            now,
        );
        let mut answered = None;
        while let Some(out) = bridge.poll_output() {
            if let Out::Sip(SipOut::Respond { bytes, call_id, .. }) = out {
                assert_eq!(call_id, A_CALL);
                if let Message::Response(r) = message(&bytes) {
                    answered = Some(r);
                }
            }
        }
        let answered = answered.expect("the caller's re-INVITE was answered");
        let ours = sdp::parse_audio(&answered.body).expect("our SDP");
        assert_eq!(
            ours.addr, bridge.a.media,
            "the caller sees only our address"
        );
        assert_eq!(ours.direction, Direction::RecvOnly);
        assert_eq!(bridge.a_direction, Direction::RecvOnly);
    }

    #[test]
    fn one_offer_at_a_time_glare_gets_491() {
        let now = Instant::now();
        let mut bridge = bridge(agent_rules());
        bridge.handle(reinvite(Side::A, 2, Direction::SendOnly), now);
        let _ = said(&mut bridge);
        // The agent's own offer crosses ours to it; the caller tries again.
        bridge.handle(reinvite(Side::B, 2, Direction::SendOnly), now);
        bridge.handle(reinvite(Side::A, 3, Direction::SendRecv), now);
        assert_eq!(said(&mut bridge), [Answer(491, b()), Answer(491, a())]);
    }

    #[test]
    fn a_refused_offer_is_refused_back_with_the_same_status() {
        let now = Instant::now();
        let mut bridge = bridge(agent_rules());
        bridge.handle(reinvite(Side::A, 2, Direction::SendOnly), now);
        let (ours, key) = sent_request(&mut bridge);
        bridge.handle(answer_to(&ours, Some(&key), 488, ""), now);
        // No ACK from us: the transaction ACKs a non-2xx.
        assert_eq!(said(&mut bridge), [Answer(488, a())]);
        // And the next offer is taken.
        bridge.handle(reinvite(Side::A, 3, Direction::SendRecv), now);
        assert!(matches!(
            said(&mut bridge).as_slice(),
            [Said::Media(_), Said::Sip(Sent::Ask(Method::Invite, _))]
        ));
    }

    #[test]
    fn a_bye_crossing_a_passed_offer_leaves_it_487() {
        let now = Instant::now();
        let mut bridge = bridge(agent_rules());
        bridge.handle(reinvite(Side::A, 2, Direction::SendOnly), now);
        let _ = said(&mut bridge);
        let exit = bridge.handle(from(Side::B, "BYE", 2, "", ""), now);
        assert!(matches!(exit, Some(Exit::Ended(End::AgentHungUp))));
        bridge.end_pending();
        assert_eq!(
            said(&mut bridge),
            [Answer(200, b()), Ask(Method::Bye, a()), Answer(487, a())]
        );
    }

    #[test]
    fn a_passed_offer_never_answered_ends_the_call() {
        let now = Instant::now();
        let mut bridge = bridge(agent_rules());
        bridge.handle(reinvite(Side::A, 2, Direction::SendOnly), now);
        let (_, key) = sent_request(&mut bridge);
        // Someone else's timeout is not ours.
        let other = TxKey::client_for("z9hG4bKother", Method::Invite);
        let timeout = |key: TxKey| Input::Sip(CallEvent::Timeout { key: Box::new(key) });
        assert!(bridge.handle(timeout(other), now).is_none());
        assert!(said(&mut bridge).is_empty());
        let exit = bridge.handle(timeout(key), now);
        assert!(matches!(exit, Some(Exit::Ended(End::Refused))));
        bridge.end_pending();
        assert_eq!(
            said(&mut bridge),
            [
                Ask(Method::Bye, a()),
                Ask(Method::Bye, b()),
                Answer(487, a())
            ]
        );
    }

    #[test]
    fn no_ack_or_no_rtp_hangs_both_up() {
        let now = Instant::now();
        for (input, end) in [
            (Input::Sip(CallEvent::AckTimeout), End::AckTimeout),
            (Input::Silent(Side::B), End::RtpTimeout),
        ] {
            let mut bridge = bridge(agent_rules());
            let exit = bridge.handle(input, now);
            assert!(
                matches!(exit, Some(Exit::Ended(e)) if std::mem::discriminant(&e) == std::mem::discriminant(&end))
            );
            assert_eq!(
                said(&mut bridge),
                [Ask(Method::Bye, a()), Ask(Method::Bye, b())]
            );
        }
        // A late ACK or CANCEL means nothing once bridged.
        let mut bridge = bridge(agent_rules());
        assert!(bridge.handle(Input::Sip(CallEvent::Ack), now).is_none());
        assert!(bridge
            .handle(Input::Sip(CallEvent::Cancelled), now)
            .is_none());
        assert!(said(&mut bridge).is_empty());
    }

    #[test]
    fn a_request_out_of_order_gets_500_and_changes_nothing() {
        let now = Instant::now();
        let mut bridge = bridge(agent_rules());
        // The caller's dialog began at CSeq 1: 1 again is old.
        assert!(bridge
            .handle(from(Side::A, "BYE", 1, "", ""), now)
            .is_none());
        assert_eq!(said(&mut bridge), [Answer(500, a())]);
        assert!(bridge
            .handle(from(Side::A, "INFO", 5, "", ""), now)
            .is_none());
        assert_eq!(said(&mut bridge), [Answer(200, a())]);
    }

    #[test]
    fn who_may_refer() {
        let now = Instant::now();
        let refer = |side| from(side, "REFER", 3, "Refer-To: <sip:1002@h>\r\n", "");
        // The agent's REFER transfers.
        let mut bridge = bridge(agent_rules());
        assert!(matches!(
            bridge.handle(refer(Side::B), now),
            Some(Exit::Refer(..))
        ));
        assert!(said(&mut bridge).is_empty(), "the transfer answers it");
        // The caller's is refused; so is an outside number's.
        let mut bridge = self::bridge(agent_rules());
        assert!(bridge.handle(refer(Side::A), now).is_none());
        let mut outside = self::bridge(Rules::default());
        assert!(outside.handle(refer(Side::B), now).is_none());
        assert_eq!(said(&mut bridge), [Answer(403, a())]);
        assert_eq!(said(&mut outside), [Answer(403, b())]);
        // A backend's hands the caller back.
        let mut backend = self::bridge(Rules {
            hand_back: true,
            ..Rules::default()
        });
        assert!(matches!(
            backend.handle(refer(Side::B), now),
            Some(Exit::HandBack(Some(_)))
        ));
    }

    #[test]
    fn return_keys_hand_the_caller_back_within_the_gap() {
        let start = Instant::now();
        let rules = || Rules {
            hand_back: true,
            return_keys: KeySequence::new("*0", Duration::from_secs(3)),
            ..Rules::default()
        };
        let info = |cseq, key: &str| {
            from(
                Side::A,
                "INFO",
                cseq,
                "Content-Type: application/dtmf-relay\r\n",
                &format!("Signal={key}\r\nDuration=160\r\n"),
            )
        };
        // By SIP INFO, in time.
        let mut bridge = bridge(rules());
        assert!(bridge.handle(info(2, "*"), start).is_none());
        let exit = bridge.handle(info(3, "0"), start + Duration::from_secs(2));
        assert!(matches!(exit, Some(Exit::HandBack(None))));
        assert_eq!(said(&mut bridge), [Answer(200, a()), Answer(200, a())]);
        // Too slow: the sequence starts over.
        let mut bridge = self::bridge(rules());
        bridge.handle(info(2, "*"), start);
        assert!(bridge
            .handle(info(3, "0"), start + Duration::from_secs(4))
            .is_none());
        // By RFC 4733 through the relay.
        let mut bridge = self::bridge(rules());
        assert!(bridge.handle(Input::Key('*'), start).is_none());
        assert!(matches!(
            bridge.handle(Input::Key('0'), start),
            Some(Exit::HandBack(None))
        ));
        // An agent's call has no return keys.
        let mut agent = self::bridge(agent_rules());
        agent.handle(Input::Key('*'), start);
        assert!(agent.handle(Input::Key('0'), start).is_none());
    }

    #[test]
    fn refreshes_and_odd_requests_get_what_rfc_3261_says() {
        let now = Instant::now();
        let mut bridge = bridge(agent_rules());
        // An offerless re-INVITE (a session refresh): our SDP, sendrecv.
        bridge.handle(from(Side::A, "INVITE", 2, "", ""), now);
        bridge.handle(from(Side::A, "OPTIONS", 3, "", ""), now);
        bridge.handle(from(Side::A, "SUBSCRIBE", 4, "Event: dialog\r\n", ""), now);
        bridge.handle(from(Side::A, "FROB", 5, "", ""), now);
        // An offer we cannot read.
        bridge.handle(
            from(
                Side::B,
                "UPDATE",
                2,
                "Content-Type: application/sdp\r\n",
                "v=0\r\n",
            ),
            now,
        );
        assert_eq!(
            said(&mut bridge),
            [
                Answer(200, a()),
                Answer(200, a()),
                Answer(405, a()),
                Answer(501, a()),
                Answer(488, b()),
            ]
        );
        assert_eq!(bridge.a.sdp_version, 2, "a refresh is a new version");
    }

    #[test]
    fn a_bridge_written_down_and_read_back_goes_on_where_it_was() {
        let start = Instant::now();
        let mut bridge = bridge(Rules {
            hand_back: true,
            return_keys: KeySequence::new("*0", Duration::from_secs(3)),
            ..Rules::default()
        });
        // Mid-hold: the far leg's offer waits for the caller's answer, and
        // the caller has pressed the first return key.
        bridge.handle(reinvite(Side::B, 2, Direction::SendOnly), start);
        let (ours, key) = sent_request(&mut bridge);
        assert!(bridge.handle(Input::Key('*'), start).is_none());
        let written = serde_json::to_string(&bridge).expect("the bridge is data");
        let mut read: Bridge = serde_json::from_str(&written).expect("and reads back");
        assert_eq!(read.a.dialog, bridge.a.dialog);
        assert_eq!(read.b.pending, bridge.b.pending);
        assert_eq!(read.a.our_reinvite, bridge.a.our_reinvite);

        // The caller's answer reaches the bridge read back: the far leg's
        // re-INVITE gets its 200 with our SDP, from the kept values.
        let answer = sdp_body(4004, Direction::RecvOnly);
        read.handle(answer_to(&ours, Some(&key), 200, &answer), start);
        let mut answered = None;
        while let Some(out) = read.poll_output() {
            if let Out::Sip(SipOut::Respond { bytes, .. }) = out {
                answered = Some(message(&bytes));
            }
        }
        let Some(Message::Response(r)) = answered else {
            panic!("the kept re-INVITE was not answered")
        };
        assert_eq!((r.status, r.core.call_id.as_str()), (200, B_CALL));
        assert_eq!(r.core.cseq, 2);
        assert_eq!(r.core.to.tag.as_deref(), Some("b"));
        // The first return key was pressed before: the second completes
        // them (the first one's instant is not written down, so no gap is
        // held against it).
        assert!(matches!(
            read.handle(Input::Key('0'), start + Duration::from_secs(10)),
            Some(Exit::HandBack(None))
        ));
        // And the next request in each dialog follows the last CSeq.
        read.hang_up_both(End::ApiHangup);
        let byes: Vec<Request> = std::iter::from_fn(|| read.poll_output())
            .filter_map(|out| match out {
                Out::Sip(SipOut::Request { bytes, .. }) => match message(&bytes) {
                    Message::Request(r) => Some(r),
                    Message::Response(_) => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(byes.len(), 2);
        assert_eq!(
            byes[0].core.cseq,
            ours.core.cseq + 1,
            "the caller's dialog goes on"
        );
    }

    #[test]
    fn what_is_about_neither_leg_goes_to_the_call() {
        let now = Instant::now();
        let mut bridge = bridge(agent_rules());
        let Input::Sip(CallEvent::Request {
            key,
            mut request,
            peer,
        }) = from(Side::B, "BYE", 2, "", "")
        else {
            unreachable!()
        };
        request.core.call_id = "transferor@yihaotong".into();
        let exit = bridge.handle(Input::Sip(CallEvent::Request { key, request, peer }), now);
        assert!(exit.is_none());
        assert_eq!(said(&mut bridge), [Said::Stray]);
    }
}

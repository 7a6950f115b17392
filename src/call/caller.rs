//! The answered caller's dialog before the bridge.
//!
//! Room: the call. While a flow, the line or ringing agents keep an
//! answered caller (the IVR answered them), their in-dialog requests are
//! answered here: BYE ends the call, INFO may carry a key (RFC 2976 with
//! `application/dtmf-relay` or `application/dtmf`), a re-INVITE or UPDATE
//! is answered with our SDP (a new offer moves where their RTP goes),
//! OPTIONS is a keep-alive, and anything else gets 405 with what we take.
//! A request out of order gets 500 (RFC 3261 §12.2.2).
//!
//! Sans-IO: [`hear`] is a function of the dialog and the request; what to
//! send comes back as a [`SipOut`], what it means as a [`CallerSaid`]. The
//! phases that hold an answered caller (`ivr.rs`, `queue.rs`, the ringing
//! in `mod.rs`, consultation) call it through `Call::caller_request`. May
//! touch: `sip`, `media::sdp`, `media::dtmf`, and the call's [`SipOut`].

use std::net::SocketAddr;

use super::sip_out::{self, contact, SipOut, Voice};
use crate::media::dtmf::info_key;
use crate::media::sdp::Direction;
use crate::sip::dialog::Dialog;
use crate::sip::message::{Method, Request};
use crate::sip::transaction::TxKey;
use crate::sip::Peer;

/// What the caller's request means for the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallerSaid {
    /// They hung up.
    Bye,
    /// They pressed this key (SIP INFO).
    Key(char),
    /// Nothing the call acts on.
    Nothing,
}

/// Where we are, facing the caller: what our answers say.
#[derive(Debug, Clone, Copy)]
pub(super) struct Facing<'a> {
    /// Our host.
    pub host: &'a str,
    /// Our SDP's session and codec.
    pub voice: &'a Voice,
    /// Our RTP address facing the caller.
    pub media: SocketAddr,
    /// The caller's transport (for our Contact).
    pub peer: &'a Peer,
}

/// What one request from the caller comes to.
#[derive(Debug)]
pub(super) struct Heard {
    /// The answer to send.
    pub answer: SipOut,
    /// What it means.
    pub said: CallerSaid,
    /// A new offer: the caller's RTP goes here from now on.
    pub media_to: Option<SocketAddr>,
}

/// The caller's in-dialog request `req` (on transaction `key`) in `dialog`.
pub(super) fn hear(dialog: &mut Dialog, key: &TxKey, req: &Request, facing: &Facing) -> Heard {
    let heard = |answer, said| Heard {
        answer,
        said,
        media_to: None,
    };
    if let Some(refusal) = sip_out::out_of_order(dialog, key, req) {
        return heard(refusal, CallerSaid::Nothing);
    }
    let tag = dialog.local_tag.as_str();
    let plain = |status| SipOut::respond(key, req, tag, status, &[], b"");
    match req.method {
        Method::Bye => heard(plain(200), CallerSaid::Bye),
        Method::Info => {
            let content_type = req.headers.get("content-type").unwrap_or_default();
            let pressed = info_key(content_type, &req.body);
            // 200 for a key or an empty keep-alive; 415 for a body we cannot read.
            let status = if pressed.is_some() || req.body.is_empty() {
                200
            } else {
                415
            };
            heard(
                plain(status),
                pressed.map_or(CallerSaid::Nothing, CallerSaid::Key),
            )
        }
        Method::Invite | Method::Update => {
            let media_to = if req.body.is_empty() {
                None
            } else {
                match sip_out::offer_in(key, req, tag) {
                    Ok(offer) => Some(offer.addr),
                    Err(refusal) => return heard(*refusal, CallerSaid::Nothing),
                }
            };
            let body = facing.voice.sdp(facing.media, 2, Direction::SendRecv);
            let contact = contact(facing.host, facing.peer);
            let answer = SipOut::respond(
                key,
                req,
                tag,
                200,
                &[("Contact", &contact), ("Content-Type", "application/sdp")],
                body.as_bytes(),
            );
            Heard {
                answer,
                said: CallerSaid::Nothing,
                media_to,
            }
        }
        Method::Options => heard(plain(200), CallerSaid::Nothing),
        _ => heard(sip_out::allow_only(key, req, tag, 405), CallerSaid::Nothing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::sip_out::seen::{sent, Sent};
    use crate::media::sdp;
    use crate::sip::message::{parse, Message};
    use crate::sip::TransportKind;

    const CALL: &str = "caller@trunk";

    fn request(text: &str) -> Request {
        match parse(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    /// The caller's dialog as the IVR answered it (their INVITE was CSeq 1).
    fn dialog() -> Dialog {
        Dialog::uas(
            &request(&format!(
                "INVITE sip:12345@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
                 From: <sip:138@trunk>;tag=c\r\nTo: <sip:12345@127.0.0.1>\r\nCall-ID: {CALL}\r\n\
                 CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            )),
            "ivr",
        )
    }

    fn from_caller(method: &str, cseq: u32, extra: &str, body: &str) -> Request {
        request(&format!(
            "{method} sip:yihaotong@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{method}{cseq}\r\n\
             From: <sip:138@trunk>;tag=c\r\nTo: <sip:12345@127.0.0.1>;tag=ivr\r\nCall-ID: {CALL}\r\n\
             CSeq: {cseq} {method}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    /// Hears `req` in `dialog`: the status answered, and what it meant.
    fn hear_it(
        dialog: &mut Dialog,
        req: &Request,
    ) -> (u16, CallerSaid, Option<SocketAddr>, SipOut) {
        let voice = Voice {
            session_id: 3,
            codec: 8,
            telephone_event: Some(101),
        };
        let peer = Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], 5070)),
            transport: TransportKind::Udp,
            conn: 0,
        };
        let facing = Facing {
            host: "127.0.0.1:5060",
            voice: &voice,
            media: SocketAddr::from(([127, 0, 0, 1], 30000)),
            peer: &peer,
        };
        let key = TxKey::client_for("z9hG4bKtest", req.method.clone());
        let heard = hear(dialog, &key, req, &facing);
        let Sent::Answer(status, call_id) = sent(&heard.answer) else {
            panic!("the caller was not answered: {:?}", heard.answer)
        };
        assert_eq!(call_id, CALL);
        (status, heard.said, heard.media_to, heard.answer)
    }

    #[test]
    fn bye_and_keys_are_what_the_call_hears() {
        let mut d = dialog();
        let relay = "Content-Type: application/dtmf-relay\r\n";
        let info = from_caller("INFO", 2, relay, "Signal=5\r\nDuration=160\r\n");
        assert_eq!(hear_it(&mut d, &info).0, 200);
        assert_eq!(
            hear_it(&mut d, &from_caller("INFO", 3, relay, "Signal=#\r\n")).1,
            CallerSaid::Key('#')
        );
        // A keep-alive, and a body we cannot read.
        let (status, said, ..) = hear_it(&mut d, &from_caller("INFO", 4, "", ""));
        assert_eq!((status, said), (200, CallerSaid::Nothing));
        let odd = from_caller("INFO", 5, "Content-Type: text/plain\r\n", "hello");
        assert_eq!(hear_it(&mut d, &odd).0, 415);
        let (status, said, ..) = hear_it(&mut d, &from_caller("BYE", 6, "", ""));
        assert_eq!((status, said), (200, CallerSaid::Bye));
    }

    #[test]
    fn a_new_offer_moves_their_rtp_and_gets_our_sdp() {
        let mut d = dialog();
        let theirs = sdp::write(
            9,
            2,
            SocketAddr::from(([127, 0, 0, 1], 4010)),
            &[8],
            None,
            Direction::SendRecv,
        );
        let offer = from_caller("INVITE", 2, "Content-Type: application/sdp\r\n", &theirs);
        let (status, said, media_to, answer) = hear_it(&mut d, &offer);
        assert_eq!((status, said), (200, CallerSaid::Nothing));
        assert_eq!(media_to, Some(SocketAddr::from(([127, 0, 0, 1], 4010))));
        let SipOut::Respond { bytes, .. } = answer else {
            unreachable!()
        };
        let Ok(Message::Response(r)) = parse(&bytes) else {
            panic!()
        };
        let ours = sdp::parse_audio(&r.body).expect("our SDP");
        assert_eq!(ours.addr, SocketAddr::from(([127, 0, 0, 1], 30000)));
        assert_eq!(ours.codecs, vec![8]);
        // A session refresh: our SDP again, their RTP stays.
        let (status, _, media_to, _) = hear_it(&mut d, &from_caller("UPDATE", 3, "", ""));
        assert_eq!((status, media_to), (200, None));
        // An offer we cannot read.
        let bad = from_caller("INVITE", 4, "Content-Type: application/sdp\r\n", "v=0\r\n");
        assert_eq!(hear_it(&mut d, &bad).0, 488);
    }

    #[test]
    fn the_rest_is_refused_plainly() {
        let mut d = dialog();
        assert_eq!(hear_it(&mut d, &from_caller("OPTIONS", 2, "", "")).0, 200);
        assert_eq!(
            hear_it(
                &mut d,
                &from_caller("REFER", 3, "Refer-To: <sip:1@h>\r\n", "")
            )
            .0,
            405
        );
        // CSeq 3 again is out of order: 500, and it means nothing, even a BYE.
        let (status, said, ..) = hear_it(&mut d, &from_caller("BYE", 3, "", ""));
        assert_eq!((status, said), (500, CallerSaid::Nothing));
    }
}

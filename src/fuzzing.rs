//! Entry points for the fuzz targets in `fuzz/`, and for the test that
//! replays their corpus and every crash they found (`tests/fuzz_corpus.rs`).
//!
//! Room: the test bench beside the house. Each function takes arbitrary bytes
//! and drives one parser or sans-IO core the way the network or an operator
//! would; none may panic, whatever the bytes. They touch no socket, file or
//! clock: time is a fake `Instant` advanced by the input itself.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::sip::message::{self, Message, Method};
use crate::sip::transaction::{TimerConfig, Transactions, TxEvent};
use crate::sip::{Peer, TransportKind};

fn peer(transport: TransportKind) -> Peer {
    let addr = SocketAddr::from(([127, 0, 0, 1], 5070));
    Peer::new(addr, transport, u64::from(transport == TransportKind::Tcp))
}

/// The SIP parser and our facade: datagram parse, stream framing, and the
/// answers we would write (stateless refusals, responses echoing a request).
pub fn sip_message(data: &[u8]) {
    match message::parse(data) {
        Ok(Message::Request(req)) => {
            let _ = req.response(200, Some("fz"), &[("Contact", "<sip:f@127.0.0.1>")], b"");
            let _ = req.core.top_via().is_rfc3261();
            let _ = req.headers.get_all("contact").count();
            let _ = req.headers.get_all("accept").count();
        }
        Ok(Message::Response(resp)) => {
            let _ = resp.headers.get_all("via").count();
        }
        Err(rej) => {
            if let (Some(status), Some(echo)) = (rej.status, rej.echo.as_ref()) {
                let _ =
                    message::write_response(echo, status, Some(&rej.reason), Some("fz"), &[], b"");
            }
        }
    }
    match message::frame_length(data) {
        Ok(Some(n)) => {
            let _ = message::parse(&data[..n]);
        }
        Ok(None) => {}
        Err(why) => {
            let _ = message::unframeable_answer(data, why);
        }
    }
}

/// The transaction layer fed a sequence of messages, split at `0xff` bytes
/// (never valid in SIP text). The first byte of each piece moves the fake
/// clock on by that many 50 ms steps and picks how the TU answers requests;
/// timers fire as the clock passes them. One client INVITE is started first,
/// so responses have something to match.
pub fn sip_transactions(data: &[u8]) {
    let start = Instant::now();
    let mut now = start;
    let mut txs = Transactions::new(TimerConfig::default(), 256);
    let udp = peer(TransportKind::Udp);
    let invite = "INVITE sip:1001@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKfuzzclient\r\nMax-Forwards: 70\r\nFrom: <sip:12345@hotline>;tag=f\r\nTo: <sip:1001@127.0.0.1>\r\nCall-ID: fuzz-client\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    txs.request(
        now,
        Method::Invite,
        "z9hG4bKfuzzclient",
        Bytes::from_static(invite.as_bytes()),
        udp,
    );
    for piece in data.split(|b| *b == 0xff).take(256) {
        let Some((&control, bytes)) = piece.split_first() else {
            continue;
        };
        now += Duration::from_millis(u64::from(control % 64) * 50);
        txs.handle_timeout(now);
        if let Ok(msg) = message::parse(bytes) {
            let transport = if control & 0x80 != 0 {
                TransportKind::Tcp
            } else {
                TransportKind::Udp
            };
            txs.handle_message(now, msg, peer(transport));
        }
        while let Some(event) = txs.poll_event() {
            if let TxEvent::Request { key, request, .. } = event {
                let status = [100, 180, 200, 486, 503][usize::from(control) % 5];
                let bytes = request.response(status, Some("fz"), &[], b"");
                let _ = txs.respond(now, &key, status, Bytes::from(bytes));
                if status < 200 {
                    let bytes = request.response(487, Some("fz"), &[], b"");
                    let _ = txs.respond(now, &key, 487, Bytes::from(bytes));
                }
            }
        }
        while txs.poll_transmit().is_some() {}
        let _ = txs.poll_timeout();
    }
    // Let every timer run out: the table must empty without a panic.
    now += Duration::from_secs(64);
    txs.handle_timeout(now);
    while txs.poll_event().is_some() || txs.poll_transmit().is_some() {}
}

/// SDP offer parsing and the answer we would write back to it.
pub fn sdp(data: &[u8]) {
    if let Ok(offer) = crate::media::sdp::parse_audio(data) {
        let _ = crate::media::sdp::write(
            1,
            1,
            offer.addr,
            &offer.codecs,
            offer.telephone_event,
            offer.direction.reversed(),
        );
    }
}

/// RTP, RTCP-shaped packets and telephone events: the media engine's header
/// walk, RFC 4733 payloads, the relay's rewrite, the supervision mixer and
/// the in-band detector, all on the same bytes.
pub fn rtp(data: &[u8]) {
    use crate::media::dtmf::{Detector, EventReceiver, TelephoneEvent};
    use crate::media::monitor::{Mixer, Mode};
    use crate::media::player::Law;
    use crate::media::relay::Side;
    if let Some((_, timestamp, payload)) = crate::media::engine::rtp_payload(data) {
        let _ = TelephoneEvent::parse(payload);
        let _ = EventReceiver::default().handle(timestamp, payload);
    }
    let mut packet = data.to_vec();
    let mut rewriter = crate::media::relay::Rewriter::new(0x1234_5678);
    let _ = rewriter.rewrite(&mut packet);
    let _ = rewriter.rewrite(&mut packet);
    for mode in [Mode::Listen, Mode::Whisper, Mode::Barge] {
        let mut mixer = Mixer::new(mode, Law::Pcmu);
        let mut a = data.to_vec();
        let _ = mixer.relayed(Side::A, &mut a);
        let _ = mixer.from_supervisor(data);
        let mut b = data.to_vec();
        let _ = mixer.relayed(Side::B, &mut b);
    }
    let samples: Vec<i16> = data
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    let _ = Detector::new().feed(&samples);
    let _ = crate::media::dtmf::info_key("application/dtmf-relay", data);
}

/// The flow-file loader: parse and check one file against a small catalog.
pub fn flow_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut known = crate::ivr::flow::Known::default();
    for p in ["common/welcome", "common/invalid", "common/goodbye"] {
        known.prompts.insert(p.to_string());
    }
    known.queues.insert("main".to_string());
    known.backends.insert("hrss".to_string());
    known.flows.insert("fuzz".to_string());
    known.flows.insert("12345".to_string());
    let (_, diagnostics) = crate::ivr::flow::parse("fuzz", "ivr-flows/fuzz.toml", text, &known);
    for d in diagnostics {
        let _ = d.to_string();
    }
}

/// The config loader: a settings file over the built-in defaults.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::config::Settings::from_text(Some((text, std::path::Path::new("fuzz.toml"))));
}

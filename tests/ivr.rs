//! IVR end to end: real SIP and RTP over loopback against the real binary,
//! with the bundled flows and prompts. The caller checks what it hears by
//! correlating it with the decoded source file, presses keys three ways
//! (RFC 4733, SIP INFO, in-band tones), and the call must land where the
//! flow says: a backend UAS, or an agent with the flow's data as headers.

mod common;

use common::{Phone, RtpIn, TestServer};
use yihaotong::sip::auth::Algorithm;

/// μ-law payloads in arrival order, decoded to linear samples.
fn decode_pcmu(packets: &[RtpIn]) -> Vec<f64> {
    packets
        .iter()
        .filter(|p| p.pt == 0)
        .flat_map(|p| p.payload.iter())
        .map(|b| audio_codec_algorithms::decode_ulaw(*b) as f64)
        .collect()
}

/// Normalized cross-correlation of `heard` against `source` at lag 0 over
/// the shorter length (the stream starts with the prompt's first frame).
fn correlation(heard: &[f64], source: &[i16]) -> f64 {
    let n = heard.len().min(source.len());
    assert!(n > 4000, "too little audio to compare: {n} samples");
    let (mut xy, mut xx, mut yy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (x, y) = (heard[i], source[i] as f64);
        xy += x * y;
        xx += x * x;
        yy += y * y;
    }
    xy / (xx.sqrt() * yy.sqrt()).max(1.0)
}

fn source(name: &str) -> Vec<i16> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sounds")
        .join(format!("{name}.flac"));
    yihaotong::media::prompts::decode_to_8k(&path).expect("bundled prompt decodes")
}

fn answer_ivr(
    server: &TestServer,
    trunk: &mut Phone,
    number: &str,
    sdp: Option<&str>,
) -> common::PhoneDialog {
    let mut d = match sdp {
        Some(s) => trunk.invite_sdp(server.sip, number, s),
        None => trunk.invite(server.sip, number),
    };
    let ok = trunk
        .response(&d.call_id, "INVITE", 200, 5.0)
        .expect("the flow answers");
    assert_eq!(ok.status, 200);
    trunk.ack(server.sip, &mut d, &ok);
    d
}

#[test]
fn welcome_is_the_right_prompt_and_key_1_by_rfc4733_reaches_the_backend() {
    let mut backend = Phone::new("12333");
    let backend_uri = format!("sip:12333@{}", backend.addr);
    let server = TestServer::start_with(&[("YIHAOTONG_BACKENDS__HRSS__URI", &backend_uri)]);
    let mut trunk = Phone::new("13800000001");
    let mut d = answer_ivr(&server, &mut trunk, "12333", None);
    let media = d.remote_rtp.expect("our RTP address");

    // Two seconds of the welcome: PCMU (first offered), one SSRC, marker on
    // the first packet only, sequence and timestamp in 20 ms steps.
    let heard = trunk.record_rtp(2.0);
    assert!(heard.len() >= 80, "only {} packets in 2 s", heard.len());
    assert!(heard.iter().all(|p| p.pt == 0 && p.ssrc == heard[0].ssrc));
    assert!(heard[0].marker && heard[1..].iter().all(|p| !p.marker));
    for w in heard.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
        assert_eq!(w[1].ts, w[0].ts.wrapping_add(160));
    }
    let samples = decode_pcmu(&heard);
    let welcome = correlation(&samples, &source("hrss/welcome"));
    let other = correlation(&samples, &source("market/welcome"));
    assert!(welcome > 0.95, "welcome correlation {welcome}");
    assert!(other < 0.5, "a different prompt correlates {other}");

    // Press 1 during the welcome: typed ahead, the menu takes it as soon as
    // the welcome (about 9 s of it) ends.
    trunk.press_rfc4733(media, '1', 101, 777_000);
    let inv = backend.request("INVITE", 15.0).expect("backend reached");
    assert_eq!(inv.headers.get("x-ivr-keys"), Some("1"));
    assert!(inv
        .headers
        .get("x-ivr-path")
        .is_some_and(|p| p.ends_with("12333/self-service")));
    assert!(
        String::from_utf8_lossy(&inv.body).contains("RTP/AVP 0 101"),
        "only the caller's law is offered"
    );
    backend.reply(server.sip, &inv, 200, "be");
    backend.request("ACK", 3.0).expect("backend's 200 ACKed");
    let bd = Phone::uas_dialog(&inv, "be");

    // Media now goes caller ↔ backend through the relay; the caller's stream
    // keeps its SSRC across the hand-over.
    let to_backend = bd.remote_rtp.expect("backend has our address");
    let (c, b) = std::thread::scope(|s| {
        let c = s.spawn(|| trunk.exchange_rtp(media, 40, 0x1111));
        let b = s.spawn(|| backend.exchange_rtp(to_backend, 40, 0x2222));
        (c.join().expect("caller"), b.join().expect("backend"))
    });
    assert!(c >= 30 && b >= 30, "relayed {c} / {b}");

    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    assert_eq!(trunk.final_status(&d.call_id, "BYE", 3.0), Some(200));
    let bye = backend.request("BYE", 3.0).expect("backend gets BYE");
    backend.reply(server.sip, &bye, 200, "be");
    server.assert_idle();
}

#[test]
fn sip_info_key_0_queues_to_the_seats_with_the_call_data() {
    let server = TestServer::start();
    server.add_agent("2001", "s3cret", "hrss");
    let mut agent = Phone::new("2001");
    assert_eq!(agent.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let mut trunk = Phone::new("13800000002");
    let mut d = answer_ivr(&server, &mut trunk, "12333", None);
    trunk.in_dialog_typed(
        server.sip,
        &mut d,
        "INFO",
        "application/dtmf-relay",
        "Signal=0\r\nDuration=160\r\n",
    );
    assert_eq!(trunk.final_status(&d.call_id, "INFO", 3.0), Some(200));
    let inv = agent
        .request("INVITE", 15.0)
        .expect("agent rung after the welcome");
    assert_eq!(inv.headers.get("x-ivr-keys"), Some("0"));
    assert_eq!(inv.headers.get("x-queue"), Some("hrss"));
    // While it rings the caller hears music on hold, not silence.
    let moh = trunk.record_rtp(0.6);
    assert!(moh.len() >= 20, "music on hold: {} packets", moh.len());
    agent.reply(server.sip, &inv, 200, "agt");
    agent.request("ACK", 3.0).expect("ACK");
    let ad = Phone::uas_dialog(&inv, "agt");
    let media = d.remote_rtp.expect("addr");
    let to_agent = ad.remote_rtp.expect("addr");
    let (c, a) = std::thread::scope(|s| {
        let c = s.spawn(|| trunk.exchange_rtp(media, 40, 0x1111));
        let a = s.spawn(|| agent.exchange_rtp(to_agent, 40, 0x2222));
        (c.join().expect("caller"), a.join().expect("agent"))
    });
    assert!(c >= 30 && a >= 30, "relayed {c} / {a}");
    let mut ad = ad;
    agent.in_dialog(server.sip, &mut ad, "BYE", "");
    let bye = trunk.request("BYE", 3.0).expect("caller gets BYE");
    trunk.reply(server.sip, &bye, 200, "x");
    server.assert_idle();
}

#[test]
fn inband_tone_on_a_retired_line_reaches_the_duty_office() {
    let server = TestServer::start();
    server.add_agent("3001", "s3cret", "duty");
    let mut agent = Phone::new("3001");
    assert_eq!(agent.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let mut trunk = Phone::new("13800000003");
    // An old trunk: PCMU only, no telephone-event, keys as tones in the audio.
    let rtp = trunk.rtp.local_addr().expect("addr");
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
        rtp.port()
    );
    let mut d = answer_ivr(&server, &mut trunk, "86012345", Some(&sdp));
    let media = d.remote_rtp.expect("addr");
    let heard = trunk.record_rtp(1.0);
    let c = correlation(&decode_pcmu(&heard), &source("legacy/line-retired"));
    assert!(c > 0.95, "retired-line notice correlation {c}");
    trunk.press_inband(media, '2');
    let inv = agent.request("INVITE", 5.0).expect("duty office rung");
    assert_eq!(inv.headers.get("x-ivr-keys"), Some("2"));
    assert_eq!(inv.headers.get("x-queue"), Some("duty"));
    agent.reply(server.sip, &inv, 486, "agt");
    // The caller hangs up while waiting for another seat.
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    assert_eq!(trunk.final_status(&d.call_id, "BYE", 3.0), Some(200));
    server.assert_idle();
}

#[test]
fn a_backend_that_refuses_falls_back_to_the_seats() {
    let mut backend = Phone::new("12333");
    let backend_uri = format!("sip:12333@{}", backend.addr);
    let server = TestServer::start_with(&[("YIHAOTONG_BACKENDS__HRSS__URI", &backend_uri)]);
    server.add_agent("2002", "s3cret", "hrss");
    let mut agent = Phone::new("2002");
    assert_eq!(agent.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let mut trunk = Phone::new("13800000004");
    let mut d = answer_ivr(&server, &mut trunk, "12333", None);
    trunk.press_rfc4733(d.remote_rtp.expect("addr"), '1', 101, 5);
    let inv = backend
        .request("INVITE", 15.0)
        .expect("backend tried after the welcome");
    backend.reply(server.sip, &inv, 503, "be");
    let inv = agent.request("INVITE", 5.0).expect("fallback to the seats");
    assert_eq!(inv.headers.get("x-ivr-keys"), Some("1"));
    assert!(inv
        .headers
        .get("x-ivr-path")
        .is_some_and(|p| p.ends_with("12333/self-service,12333/seats")));
    agent.reply(server.sip, &inv, 200, "agt");
    agent.request("ACK", 3.0).expect("ACK");
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    assert_eq!(trunk.final_status(&d.call_id, "BYE", 3.0), Some(200));
    let bye = agent.request("BYE", 3.0).expect("agent gets BYE");
    agent.reply(server.sip, &bye, 200, "agt");
    server.assert_idle();
}

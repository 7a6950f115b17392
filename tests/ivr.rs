//! IVR end to end: real SIP and RTP over loopback against the real binary,
//! with the bundled flows and prompts. The caller checks what it hears by
//! correlating it with the decoded source file, presses keys three ways
//! (RFC 4733, SIP INFO, in-band tones), and the call must land where the
//! flow says: a backend UAS, or an agent with the flow's data as headers.

use yihaotong_testkit as common;

use common::{
    answer, answer_ivr, decode_pcmu, prompt_correlation, prompt_source, Phone, RtpIn, TestServer,
};
use yihaotong::sip::auth::Algorithm;

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
    let welcome = prompt_correlation(&samples, "hrss/welcome", 0);
    let other = prompt_correlation(&samples, "market/welcome", 0);
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
    // The caller's number, and the number dialed (RFC 7044, RFC 5806).
    assert_eq!(
        inv.headers
            .get("from")
            .map(|f| f.contains("sip:13800000001@")),
        Some(true)
    );
    let dialed = format!("sip:12333@{}", server.sip);
    assert_eq!(
        inv.headers.get("history-info"),
        Some(format!("<{dialed}>;index=1, <{backend_uri}>;index=1.1;rc=1").as_str())
    );
    assert_eq!(
        inv.headers.get("diversion"),
        Some(format!("<{dialed}>;reason=unconditional;counter=1").as_str())
    );
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
    assert_eq!(trunk.press_info(server.sip, &mut d, '0'), Some(200));
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
fn inband_tone_on_a_retired_line_reaches_the_duty_desk_then_the_duty_seats() {
    // The departments' duty desks sit behind one gateway, asked for the
    // number dialed (a backend URI without a user).
    let mut desk = Phone::new("gateway");
    let desk_uri = format!("sip:{}", desk.addr);
    let server = TestServer::start_with(&[("YIHAOTONG_BACKENDS__DUTY_DESK__URI", &desk_uri)]);
    server.add_agent("3001", "s3cret", "duty");
    let mut agent = Phone::new("3001");
    assert_eq!(agent.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let mut trunk = Phone::new("13800000003");
    // An old trunk: PCMU only, no telephone-event, keys as tones in the audio.
    let sdp = trunk.sdp_pcmu_only();
    let mut d = answer_ivr(&server, &mut trunk, "86012345", Some(&sdp));
    let media = d.remote_rtp.expect("addr");
    let heard = trunk.record_rtp(1.0);
    let c = prompt_correlation(&decode_pcmu(&heard), "legacy/line-retired", 0);
    assert!(c > 0.95, "retired-line notice correlation {c}");
    trunk.press_inband(media, '2');
    let inv = desk.request("INVITE", 5.0).expect("the duty desk is asked");
    assert_eq!(inv.uri, format!("sip:86012345@{}", desk.addr));
    assert_eq!(inv.headers.get("x-ivr-keys"), Some("2"));
    // Busy: the caller hears that a person will take the call, and the
    // duty seats are rung with the same data.
    desk.reply(server.sip, &inv, 486, "desk");
    assert!(
        heard_prompt(&trunk.record_rtp(3.0), "common/to-agent"),
        "the caller is told a person will take the call"
    );
    let inv = agent.request("INVITE", 10.0).expect("duty seats rung");
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
    let inv = agent
        .request("INVITE", 12.0)
        .expect("fallback to the seats");
    assert_eq!(inv.headers.get("x-ivr-keys"), Some("1"));
    assert!(inv
        .headers
        .get("x-ivr-path")
        .is_some_and(|p| p.ends_with("12333/self-service,12333/to-seats,12333/seats")));
    answered_then_caller_hangs_up(&server, &mut trunk, &mut d, &mut agent, &inv);
    server.assert_idle();
}

/// A caller who hangs up while the self-service backend rings: the
/// backend is cancelled, and the call's one record says the caller gave up.
#[test]
fn a_caller_who_hangs_up_while_the_backend_rings_is_recorded_as_abandoned_by_the_caller() {
    let mut backend = Phone::new("12333");
    let backend_uri = format!("sip:12333@{}", backend.addr);
    let server = TestServer::start_with(&[("YIHAOTONG_BACKENDS__HRSS__URI", &backend_uri)]);
    let mut trunk = Phone::new("13800000014");
    let mut d = answer_ivr(&server, &mut trunk, "12333", None);
    trunk.press_rfc4733(d.remote_rtp.expect("addr"), '1', 101, 5);
    let inv = backend
        .request("INVITE", 15.0)
        .expect("backend tried after the welcome");
    backend.reply(server.sip, &inv, 180, "be");
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    assert_eq!(trunk.final_status(&d.call_id, "BYE", 3.0), Some(200));
    let cancel = backend
        .request("CANCEL", 3.0)
        .expect("the backend is cancelled");
    backend.reply(server.sip, &cancel, 200, "be");
    backend.reply(server.sip, &inv, 487, "be");
    server.assert_idle();
    let cdr = server.wait_cdr(&d.call_id);
    assert_eq!(cdr["disposition"], "abandoned", "{cdr}");
    assert_eq!(cdr["hung_up_by"], "caller", "{cdr}");
}

/// `far` answers `inv` (the call's INVITE to it), then the caller on `d`
/// hangs up and `far` gets the BYE.
fn answered_then_caller_hangs_up(
    server: &TestServer,
    trunk: &mut Phone,
    d: &mut common::PhoneDialog,
    far: &mut Phone,
    inv: &yihaotong::sip::message::Request,
) {
    far.reply(server.sip, inv, 200, "far");
    far.request("ACK", 3.0).expect("ACK");
    trunk.in_dialog(server.sip, d, "BYE", "");
    assert_eq!(trunk.final_status(&d.call_id, "BYE", 3.0), Some(200));
    let bye = far.request("BYE", 3.0).expect("BYE passed on");
    far.reply(server.sip, &bye, 200, "far");
}

/// A temp folder holding a copy of the bundled flows, to edit in a test.
fn bundled_flows_copy() -> tempfile::TempDir {
    let flows = tempfile::tempdir().expect("tempdir");
    let bundled = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ivr-flows");
    for entry in std::fs::read_dir(&bundled).expect("flows") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(&path, flows.path().join(path.file_name().expect("name"))).expect("copy");
        }
    }
    flows
}

/// A server with the bundled flows plus `extra` (name, text), and an
/// outbound gateway phone.
fn with_gateway_and_flows(extra: &[(&str, &str)]) -> (tempfile::TempDir, Phone, TestServer) {
    let flows = bundled_flows_copy();
    for (name, text) in extra {
        std::fs::write(flows.path().join(format!("{name}.toml")), text).expect("write");
    }
    let gateway = Phone::new("gateway");
    let outbound = format!("sip:{}", gateway.addr);
    let dir = flows.path().display().to_string();
    let server = TestServer::start_with(&[
        ("YIHAOTONG_FLOWS_DIR", &dir),
        ("YIHAOTONG_TRUNK__OUTBOUND", &outbound),
    ]);
    (flows, gateway, server)
}

fn catalog_version(server: &TestServer) -> u64 {
    let (ok, out) = server.cli(&["status"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("status is JSON");
    v["catalog_version"].as_u64().expect("catalog_version")
}

fn wait_version_at_least(server: &TestServer, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v = catalog_version(server);
        if v >= want {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reload seen (version {v})"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_reload_reaches_new_calls_only_and_a_bad_edit_is_refused() {
    let flows = bundled_flows_copy();
    let dir = flows.path().display().to_string();
    let server = TestServer::start_with(&[("YIHAOTONG_FLOWS_DIR", &dir)]);
    server.add_agent("4001", "s3cret", "hrss");
    server.add_agent("4002", "s3cret", "duty");
    let mut old_seat = Phone::new("4001");
    let mut new_seat = Phone::new("4002");
    assert_eq!(old_seat.register(server.sip, "s3cret", Algorithm::Md5), 200);
    assert_eq!(new_seat.register(server.sip, "s3cret", Algorithm::Md5), 200);

    // Call A starts on the shipped 12333 flow.
    let mut a = Phone::new("13800000011");
    let mut da = answer_ivr(&server, &mut a, "12333", None);

    // A new version: another greeting, then the duty queue.
    let new_flow = "start = \"hello\"\n[nodes.hello]\nplay = \"housing/welcome\"\nnext = \"seats\"\n[nodes.seats]\nqueue = \"duty\"\n";
    std::fs::write(flows.path().join("12333.toml"), new_flow).expect("write");
    let version = wait_version_at_least(&server, 1);

    // Call B gets it: the new greeting, the new path.
    let mut b = Phone::new("13800000012");
    let mut db = answer_ivr(&server, &mut b, "12333", None);
    let heard = b.record_rtp(1.5);
    let c = prompt_correlation(&decode_pcmu(&heard), "housing/welcome", 0);
    assert!(c > 0.95, "new greeting correlation {c}");
    let inv_b = new_seat
        .request("INVITE", 10.0)
        .expect("B reaches the duty seat");
    assert_eq!(
        inv_b.headers.get("x-ivr-path"),
        Some("12333/hello,12333/seats")
    );

    // Call A still walks the version it started with.
    a.in_dialog_typed(server.sip, &mut da, "INFO", "application/dtmf", "0");
    let inv_a = old_seat
        .request("INVITE", 15.0)
        .expect("A reaches the hrss seat");
    assert_eq!(
        inv_a.headers.get("x-ivr-path"),
        Some("12333/welcome,12333/menu,12333/seats")
    );

    // A bad edit is refused, by the file watch and by `yihaotong reload`,
    // with the file and line; the last good version stays.
    std::fs::write(
        flows.path().join("12333.toml"),
        "start = \"hello\"\n[nodes.hello]\nplya = \"x\"\n",
    )
    .expect("write");
    std::thread::sleep(std::time::Duration::from_millis(800));
    let (ok, out) = server.cli(&["reload"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("12333.toml:3:1: unknown field `plya`"),
        "{out}"
    );
    server.signal("HUP");
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert_eq!(
        catalog_version(&server),
        version,
        "refused reloads change nothing"
    );
    let mut c3 = Phone::new("13800000013");
    let mut dc = answer_ivr(&server, &mut c3, "12333", None);
    let inv_c = new_seat
        .request("INVITE", 10.0)
        .expect("C still gets the good new version");
    assert_eq!(
        inv_c.headers.get("x-ivr-path"),
        Some("12333/hello,12333/seats")
    );

    for (phone, d) in [(&mut a, &mut da), (&mut b, &mut db), (&mut c3, &mut dc)] {
        phone.in_dialog(server.sip, d, "BYE", "");
        assert_eq!(phone.final_status(&d.call_id, "BYE", 3.0), Some(200));
    }
    server.assert_idle();
}

#[test]
fn check_names_the_file_line_and_column_of_each_flow_error() {
    let server = TestServer::start();
    let flows = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        flows.path().join("broken.toml"),
        "start = \"menu\"\n[nodes.menu]\nmenu = \"hrss/menu\"\nkeys = { \"1\" = \"nowhere\" }\ntimeout = \"5 s\"\n",
    )
    .expect("write");
    let dir = flows.path().display().to_string();
    let mut env = vec!["--config".to_string()];
    let cfg = server.dir.path().join("y.toml");
    std::fs::write(&cfg, format!("flows_dir = \"{dir}\"\n")).expect("write");
    env.push(cfg.display().to_string());
    env.push("check".into());
    let args: Vec<&str> = env.iter().map(String::as_str).collect();
    let (ok, out) = server.cli(&args);
    assert!(!ok, "{out}");
    let file = flows.path().join("broken.toml").display().to_string();
    assert!(
        out.contains(&format!(
            "{file}:4:16: node `menu`: key \"1\": unknown node `nowhere`"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{file}:5:11: node `menu`: field `timeout`: \"5 s\" is not a duration"
        )),
        "{out}"
    );
    // The routes of the shipped plan now name flows this folder lacks.
    assert!(
        out.contains("route 12345: flow `12345` does not exist"),
        "{out}"
    );
}

#[test]
fn collected_digits_travel_with_a_transfer_and_the_notice_switch_speaks_first() {
    let mut duty = Phone::new("duty");
    let case_line = format!(
        "start = \"ask\"\n\
         [nodes.ask]\ncollect = \"common/invalid\"\ninto = \"case\"\nmin_digits = 4\nmax_digits = 4\nnext = \"out\"\n\
         [nodes.out]\ntransfer = \"sip:duty@{}\"\nfallback = \"sorry\"\n\
         [nodes.sorry]\nplay = \"common/all-busy\"\nnext = \"hangup\"\n",
        duty.addr
    );
    let police = "start = \"out\"\n[nodes.out]\ntransfer = \"110\"\n";
    let (_flows, mut gateway, server) =
        with_gateway_and_flows(&[("case-line", &case_line), ("police", police)]);
    // A number goes out through the outbound gateway.
    let (ok, out) = server.cli(&["routes", "set", "5556", "--flow", "police"]);
    assert!(ok, "{out}");
    let mut caller = Phone::new("13800000020");
    let mut dp = answer_ivr(&server, &mut caller, "5556", None);
    let inv = gateway.request("INVITE", 5.0).expect("out via the gateway");
    assert_eq!(inv.uri, format!("sip:110@{}", gateway.addr));
    gateway.reply(server.sip, &inv, 503, "gw");
    // No fallback given: the flow hangs up when the transfer fails.
    let bye = caller.request("BYE", 5.0).expect("flow hangs up");
    caller.reply(server.sip, &bye, 200, "c");
    let _ = &mut dp;

    let (ok, out) = server.cli(&["routes", "set", "5555", "--flow", "case-line"]);
    assert!(ok, "{out}");
    let (ok, out) = server.cli(&["routes", "list"]);
    assert!(ok && out.contains("case-line"), "{out}");

    let mut trunk = Phone::new("13800000021");
    let mut d = answer_ivr(&server, &mut trunk, "5555", None);
    let media = d.remote_rtp.expect("addr");
    for (i, k) in "1234".chars().enumerate() {
        trunk.press_rfc4733(media, k, 101, 10_000 + 2_000 * i as u32);
    }
    let inv = duty.request("INVITE", 5.0).expect("transferred");
    assert_eq!(inv.headers.get("x-ivr-var-case"), Some("1234"));
    assert_eq!(inv.headers.get("x-ivr-keys"), Some("1234"));
    answered_then_caller_hangs_up(&server, &mut trunk, &mut d, &mut duty, &inv);

    // The operator's switch puts the urgent notice in front of 12345's greeting.
    let (ok, out) = server.cli(&["switch", "on", "urgent-notice"]);
    assert!(ok, "{out}");
    let mut citizen = Phone::new("13800000022");
    let mut dc = answer_ivr(&server, &mut citizen, "12345", None);
    let heard = citizen.record_rtp(1.5);
    let c = prompt_correlation(&decode_pcmu(&heard), "hotline/urgent-notice", 0);
    assert!(c > 0.95, "urgent notice correlation {c}");
    citizen.in_dialog(server.sip, &mut dc, "BYE", "");
    assert_eq!(citizen.final_status(&dc.call_id, "BYE", 3.0), Some(200));
    let (ok, _) = server.cli(&["switch", "off", "urgent-notice"]);
    assert!(ok);
    let mut later = Phone::new("13800000023");
    let mut dl = answer_ivr(&server, &mut later, "12345", None);
    let heard = later.record_rtp(1.5);
    let c = prompt_correlation(&decode_pcmu(&heard), "hotline/welcome", 0);
    assert!(c > 0.95, "plain greeting correlation {c}");
    later.in_dialog(server.sip, &mut dl, "BYE", "");
    assert_eq!(later.final_status(&dl.call_id, "BYE", 3.0), Some(200));
    server.assert_idle();
}

#[test]
fn a_caller_whose_rtp_stops_is_hung_up_in_the_flow() {
    let server = TestServer::start_with(&[("YIHAOTONG_RTP__RTP_TIMEOUT", "2")]);
    let mut trunk = Phone::new("13800000031");
    // 12333's menu would wait for keys; a dead trunk sends nothing at all.
    let d = answer_ivr(&server, &mut trunk, "12333", None);
    let bye = trunk
        .request("BYE", 6.0)
        .expect("hung up after rtp_timeout");
    assert_eq!(bye.core.call_id, d.call_id);
    trunk.reply(server.sip, &bye, 200, "x");
    server.assert_idle();
}

/// Whether `heard` (μ-law payloads in order) contains a stretch of the
/// prompt `name` byte for byte (the engine sends the prompt's frames as is).
fn heard_prompt(heard: &[RtpIn], name: &str) -> bool {
    let bytes: Vec<u8> = heard
        .iter()
        .filter(|p| p.pt == 0)
        .flat_map(|p| p.payload.iter().copied())
        .collect();
    let prompt: Vec<u8> = prompt_source(name)
        .iter()
        .map(|s| audio_codec_algorithms::encode_ulaw(*s))
        .collect();
    // Half a second in (or the middle of a shorter prompt).
    let at = (prompt.len() / 2).min(4000);
    let needle = &prompt[at..(at + 320).min(prompt.len())];
    bytes.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_waiting_caller_hears_the_music_and_their_place_in_line() {
    let server = TestServer::start_with(&[
        ("YIHAOTONG_QUEUE__ANNOUNCE_POSITION", "4"),
        ("YIHAOTONG_QUEUE__ANNOUNCE_WAIT", "0"),
    ]);
    server.add_agent("1001", "s3cret", "main");
    let mut agent = Phone::new("1001");
    assert_eq!(agent.register(server.sip, "s3cret", Algorithm::Md5), 200);
    // The only agent is busy with a first caller.
    let mut first = Phone::new("13800000041");
    let mut d1 = first.invite(server.sip, "123450");
    let inv = agent.request("INVITE", 5.0).expect("agent rung");
    agent.reply(server.sip, &inv, 200, "a");
    agent.request("ACK", 3.0).expect("ACK");
    let ok = first
        .response(&d1.call_id, "INVITE", 200, 3.0)
        .expect("answered");
    first.ack(server.sip, &mut d1, &ok);
    // A 12345 caller: greeting, then the line, where the music plays and,
    // every 4 s, "you are next".
    let mut citizen = Phone::new("13800000042");
    let mut d = answer_ivr(&server, &mut citizen, "12345", None);
    let heard = citizen.record_rtp(16.0);
    assert!(heard_prompt(&heard, "hotline/welcome"), "the greeting");
    assert!(heard_prompt(&heard, "common/hold-music"), "the music");
    assert!(heard_prompt(&heard, "queue/next"), "the place in line");
    citizen.in_dialog(server.sip, &mut d, "BYE", "");
    assert_eq!(citizen.final_status(&d.call_id, "BYE", 3.0), Some(200));
    first.in_dialog(server.sip, &mut d1, "BYE", "");
    let bye = agent.request("BYE", 3.0).expect("BYE");
    agent.reply(server.sip, &bye, 200, "a");
    server.assert_idle();
}

#[test]
fn a_trunk_call_never_goes_back_out_through_the_trunk_and_loops_run_out_of_hops() {
    // 12315 is in the shipped plan: the trunk would hand it straight back.
    let hairpin = "start = \"out\"\n\
         [nodes.out]\ntransfer = \"12315\"\nfallback = \"sorry\"\n\
         [nodes.sorry]\nplay = \"common/all-busy\"\nnext = \"hangup\"\n";
    let duty = "start = \"out\"\n[nodes.out]\ntransfer = \"66001234\"\n";
    let (_flows, mut gateway, server) =
        with_gateway_and_flows(&[("hairpin", hairpin), ("duty", duty)]);
    // `check` names the node that would hairpin, and only that one.
    let (ok, out) = server.cli(&["check"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("hairpin.toml:2:")
            && out.contains("transfer to 12315 would come straight back"),
        "{out}"
    );
    assert!(out.contains("1 error(s)"), "{out}");
    for (number, flow) in [("5557", "hairpin"), ("5558", "duty")] {
        let (ok, out) = server.cli(&["routes", "set", number, "--flow", flow]);
        assert!(ok, "{out}");
    }

    // Refused per call as well: nothing reaches the gateway, the fallback
    // speaks, the flow hangs up.
    let mut trunk = Phone::new("13800000031");
    let d = answer_ivr(&server, &mut trunk, "5557", None);
    let bye = trunk
        .request("BYE", 15.0)
        .expect("the fallback ends the call");
    assert_eq!(bye.core.call_id, d.call_id);
    trunk.reply(server.sip, &bye, 200, "t");
    assert!(
        gateway.request("INVITE", 0.5).is_none(),
        "a hairpin reached the gateway"
    );

    // A number outside the plan goes out, one hop less than it came in.
    let d = {
        let mut d = trunk.invite_hops(server.sip, "5558", 5);
        let ok = trunk
            .response(&d.call_id, "INVITE", 200, 5.0)
            .expect("answered");
        trunk.ack(server.sip, &mut d, &ok);
        d
    };
    let inv = gateway.request("INVITE", 5.0).expect("out via the gateway");
    assert_eq!(inv.uri, format!("sip:66001234@{}", gateway.addr));
    assert_eq!(inv.headers.get("max-forwards"), Some("4"));
    gateway.reply(server.sip, &inv, 503, "gw");
    let bye = trunk.request("BYE", 5.0).expect("flow hangs up");
    assert_eq!(bye.core.call_id, d.call_id);
    trunk.reply(server.sip, &bye, 200, "t");

    // A call with no hops left is a loop: 483, and no call.
    let d = trunk.invite_hops(server.sip, "5558", 0);
    assert_eq!(trunk.final_status(&d.call_id, "INVITE", 3.0), Some(483));
    server.assert_idle();
}

/// The server's local time (UTC+8, the shipped `[ivr] utc_offset_minutes`)
/// `secs` from now.
fn local_in(secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 8 * 3600
        + secs;
    chrono::DateTime::from_timestamp(now as i64, 0)
        .expect("time")
        .naive_utc()
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

#[test]
fn a_transition_line_switches_flows_at_its_cutover_without_a_reload() {
    let mut desk = Phone::new("desk");
    let before = format!(
        "start = \"out\"\n[nodes.out]\ntransfer = \"sip:before@{}\"\n",
        desk.addr
    );
    let after = format!(
        "start = \"out\"\n[nodes.out]\ntransfer = \"sip:after@{}\"\n",
        desk.addr
    );
    let (flows, _gateway, server) =
        with_gateway_and_flows(&[("before", &before), ("after", &after)]);
    let _ = flows;
    // The shipped plan carries a transition line; its after_flow exists.
    let (ok, out) = server.cli(&["routes", "test", "96123", "--at", "2027-06-30 23:59:59"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        (v["mode"].as_str(), v["flow"].as_str()),
        (Some("transition"), Some("transition-notice")),
        "{out}"
    );
    let (ok, out) = server.cli(&["routes", "test", "+8696123", "--at", "2027-07-01 00:00"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        (v["flow"].as_str(), v["after_cutover"].as_bool()),
        (Some("dial-12345"), Some(true)),
        "{out}"
    );
    // Mistakes are named by field.
    let set = |extra: &[&str]| {
        let mut args = vec!["routes", "set", "96999", "--flow", "before"];
        args.extend_from_slice(extra);
        server.cli(&args)
    };
    let (ok, out) = set(&["--mode", "transition"]);
    assert!(!ok && out.contains("cutover"), "{out}");
    let (ok, out) = set(&["--cutover", "2027-01-01 00:00"]);
    assert!(!ok && out.contains("belong to mode `transition`"), "{out}");

    // The instant lies a few seconds ahead; a call before it and a call
    // after it, with nothing done in between.
    let cutover = local_in(5);
    let (ok, out) = set(&[
        "--mode",
        "transition",
        "--cutover",
        &cutover,
        "--after-flow",
        "after",
    ]);
    assert!(ok, "{out}");
    let mut trunk = Phone::new("13800000041");
    let mut reached = Vec::new();
    for call in 0..2 {
        if call == 1 {
            while local_in(0) <= cutover {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        let d = answer_ivr(&server, &mut trunk, "96999", None);
        let inv = desk.request("INVITE", 5.0).expect("the flow transfers");
        reached.push(inv.uri.split('@').next().unwrap_or_default().to_string());
        desk.reply(server.sip, &inv, 486, "desk");
        let bye = trunk.request("BYE", 5.0).expect("the flow ends the call");
        assert_eq!(bye.core.call_id, d.call_id);
        trunk.reply(server.sip, &bye, 200, "t");
    }
    assert_eq!(reached, ["sip:before", "sip:after"]);
    // Both CDRs carry the route's mode, and the flow that ran.
    let (ok, out) = server.cli(&["cdrs", "--since", "1h"]);
    assert!(ok, "{out}");
    let cdrs: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let mine: Vec<(&str, &str)> = cdrs
        .as_array()
        .expect("array")
        .iter()
        .filter(|c| c["dialed"] == "96999")
        .map(|c| {
            (
                c["mode"].as_str().unwrap_or(""),
                c["flow"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        mine,
        [("transition", "before"), ("transition", "after")],
        "{out}"
    );
    server.assert_idle();
}

/// The running server's figures for backend `name`.
fn backend_status(server: &TestServer, name: &str) -> serde_json::Value {
    let (ok, out) = server.cli(&["status"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    v["backends"][name].clone()
}

/// An agent of queue hrss (12333's seats, the hand-off's fallback), registered.
fn hrss_seat(server: &TestServer) -> Phone {
    server.add_agent("2002", "s3cret", "hrss");
    let mut agent = Phone::new("2002");
    assert_eq!(agent.register(server.sip, "s3cret", Algorithm::Md5), 200);
    agent
}

/// A 12333 caller who pressed 1 and reached the fallback seat instead of
/// the backend: the seat answers, the caller hangs up.
fn pressed_1_and_reached_the_seat(server: &TestServer, trunk: &mut Phone, agent: &mut Phone) {
    let mut d = answer_ivr(server, trunk, "12333", None);
    trunk.press_rfc4733(d.remote_rtp.expect("addr"), '1', 101, 5);
    let inv = agent
        .request("INVITE", 15.0)
        .expect("fallback to the seats");
    assert_eq!(inv.headers.get("x-ivr-keys"), Some("1"));
    answered_then_caller_hangs_up(server, trunk, &mut d, agent, &inv);
}

#[test]
fn a_full_backend_is_not_tried_the_second_caller_goes_to_the_seats() {
    let mut backend = Phone::new("12333");
    let backend_uri = format!("sip:12333@{}", backend.addr);
    let server = TestServer::start_with(&[
        ("YIHAOTONG_BACKENDS__HRSS__URI", &backend_uri),
        ("YIHAOTONG_BACKENDS__HRSS__MAX_CALLS", "1"),
    ]);
    let mut agent = hrss_seat(&server);
    // The first caller is handed off and stays.
    let mut first = Phone::new("13800000051");
    let mut d1 = answer_ivr(&server, &mut first, "12333", None);
    first.press_rfc4733(d1.remote_rtp.expect("addr"), '1', 101, 5);
    let inv = backend.request("INVITE", 15.0).expect("handed off");
    backend.reply(server.sip, &inv, 200, "be");
    backend.request("ACK", 3.0).expect("ACK");
    assert_eq!(backend_status(&server, "hrss")["calls"], 1);
    // The second finds it full: straight to the seats.
    let mut second = Phone::new("13800000052");
    pressed_1_and_reached_the_seat(&server, &mut second, &mut agent);
    assert!(
        backend.request("INVITE", 0.5).is_none(),
        "a full backend was tried"
    );
    assert_eq!(backend_status(&server, "hrss")["skipped_full"], 1);
    // The first call ends; its slot comes back.
    first.in_dialog(server.sip, &mut d1, "BYE", "");
    assert_eq!(first.final_status(&d1.call_id, "BYE", 3.0), Some(200));
    let bye = backend.request("BYE", 3.0).expect("backend gets BYE");
    backend.reply(server.sip, &bye, 200, "be");
    server.assert_idle();
    assert_eq!(backend_status(&server, "hrss")["calls"], 0);
}

#[test]
fn a_backend_that_stops_answering_its_probes_is_marked_down_then_up_again() {
    let mut backend = Phone::new("12333");
    let backend_uri = format!("sip:12333@{}", backend.addr);
    let server = TestServer::start_with(&[
        ("YIHAOTONG_BACKENDS__HRSS__URI", &backend_uri),
        ("YIHAOTONG_BACKENDS__HRSS__HEALTH_INTERVAL", "1"),
        ("YIHAOTONG_BACKENDS__HRSS__DOWN_AFTER", "2"),
        ("YIHAOTONG_BACKENDS__HRSS__UP_AFTER", "1"),
    ]);
    let mut agent = hrss_seat(&server);
    // Probes are OPTIONS to the backend's URI.
    let probe = backend.request("OPTIONS", 5.0).expect("a probe");
    assert_eq!(probe.uri, backend_uri);
    backend.reply(server.sip, &probe, 200, "be");
    // Silence: down after two probes go unanswered.
    let mut down = false;
    for _ in 0..50 {
        if backend_status(&server, "hrss")["up"] == false {
            down = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(down, "{}", backend_status(&server, "hrss"));
    let (ok, out) = server.cli(&["routes", "test", "12333"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["mode"], "handoff", "{out}");
    assert_eq!(
        (
            v["backends"][0]["backend"].as_str(),
            &v["backends"][0]["up"]
        ),
        (Some("hrss"), &serde_json::Value::Bool(false)),
        "{out}"
    );
    // `routes list` says it too, beside each route's mode and flow.
    let (ok, out) = server.cli(&["routes", "list"]);
    assert!(ok, "{out}");
    let routes: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let r12333 = routes
        .as_array()
        .and_then(|r| r.iter().find(|r| r["number"] == "12333"))
        .expect("12333 listed");
    assert_eq!(r12333["mode"], "handoff", "{out}");
    assert_eq!(r12333["backends"][0]["up"], false, "{out}");
    // A caller meanwhile is not made to wait on it.
    let mut trunk = Phone::new("13800000053");
    pressed_1_and_reached_the_seat(&server, &mut trunk, &mut agent);
    assert!(
        backend.request("INVITE", 0.2).is_none(),
        "a down backend was tried"
    );
    assert_eq!(backend_status(&server, "hrss")["skipped_down"], 1);
    // It answers again: up after one good probe (the probes it let pass
    // are long over; only a fresh one counts).
    while backend.request("OPTIONS", 0.0).is_some() {}
    let mut up = false;
    for _ in 0..20 {
        if let Some(p) = backend.request("OPTIONS", 3.0) {
            backend.reply(server.sip, &p, 200, "be");
        }
        if backend_status(&server, "hrss")["up"] == true {
            up = true;
            break;
        }
    }
    assert!(up, "{}", backend_status(&server, "hrss"));
    server.assert_idle();
}

/// A server whose 12333 backend is `backend` and seat `agent`; `caller`
/// presses 1 on 12333 and the backend is offered the call (`inv`).
fn handed_off_to_the_backend(
    caller: &str,
) -> (
    TestServer,
    Phone,
    Phone,
    Phone,
    common::PhoneDialog,
    yihaotong::sip::message::Request,
) {
    let mut backend = Phone::new("12333");
    let backend_uri = format!("sip:12333@{}", backend.addr);
    let server = TestServer::start_with(&[("YIHAOTONG_BACKENDS__HRSS__URI", &backend_uri)]);
    let agent = hrss_seat(&server);
    let mut trunk = Phone::new(caller);
    let d = answer_ivr(&server, &mut trunk, "12333", None);
    trunk.press_rfc4733(d.remote_rtp.expect("addr"), '1', 101, 5);
    let inv = backend.request("INVITE", 15.0).expect("handed off");
    (server, backend, agent, trunk, d, inv)
}

#[test]
fn a_backend_hands_the_caller_back_to_the_seats_with_a_refer() {
    let (server, mut backend, mut agent, mut trunk, mut d, inv) =
        handed_off_to_the_backend("13800000054");
    backend.reply(server.sip, &inv, 200, "be");
    backend.request("ACK", 3.0).expect("ACK");
    assert_eq!(backend_status(&server, "hrss")["calls"], 1);
    // The 12333 system cannot help: it sends the caller back (一键互转).
    let mut bd = Phone::uas_dialog(&inv, "be");
    let refer_to = format!("Refer-To: <sip:12345@{}>\r\n", server.sip);
    backend.in_dialog_with(server.sip, &mut bd, "REFER", &refer_to, "", "");
    assert_eq!(backend.final_status(&bd.call_id, "REFER", 3.0), Some(202));
    let notify = backend.request("NOTIFY", 3.0).expect("NOTIFY");
    assert!(String::from_utf8_lossy(&notify.body).starts_with("SIP/2.0 200"));
    backend.reply(server.sip, &notify, 200, "be");
    let bye = backend.request("BYE", 3.0).expect("the backend leg ends");
    backend.reply(server.sip, &bye, 200, "be");
    back_at_the_seat(&server, &mut trunk, &mut d, &mut agent);
    assert_eq!(backend_status(&server, "hrss")["calls"], 0);
}

/// The caller on `d`, handed back from a backend, reaches the seat `agent`
/// through the flow's fallback with the keys and path so far, talks, and
/// hangs up; nothing stays up.
fn back_at_the_seat(
    server: &TestServer,
    trunk: &mut Phone,
    d: &mut common::PhoneDialog,
    agent: &mut Phone,
) {
    let media = d.remote_rtp.expect("addr");
    let seat = agent.request("INVITE", 12.0).expect("back to the seats");
    assert_eq!(seat.headers.get("x-ivr-keys"), Some("1"));
    assert!(
        seat.headers
            .get("x-ivr-path")
            .is_some_and(|p| p.ends_with("12333/self-service,12333/to-seats,12333/seats")),
        "{:?}",
        seat.headers.get("x-ivr-path")
    );
    // Media flows caller ↔ seat through the relay again.
    agent.reply(server.sip, &seat, 200, "agt");
    agent.request("ACK", 3.0).expect("ACK");
    let ad = Phone::uas_dialog(&seat, "agt");
    let to_seat = ad.remote_rtp.expect("our address");
    let (c, a) = std::thread::scope(|s| {
        let c = s.spawn(|| trunk.exchange_rtp(media, 40, 0x3333));
        let a = s.spawn(|| agent.exchange_rtp(to_seat, 40, 0x4444));
        (c.join().expect("caller"), a.join().expect("agent"))
    });
    assert!(c >= 30 && a >= 30, "relayed {c} / {a}");
    trunk.in_dialog(server.sip, d, "BYE", "");
    assert_eq!(trunk.final_status(&d.call_id, "BYE", 3.0), Some(200));
    let bye = agent.request("BYE", 3.0).expect("BYE passed on");
    agent.reply(server.sip, &bye, 200, "agt");
    server.assert_idle();
}

#[test]
fn the_callers_return_keys_bring_them_back_from_the_backend_to_the_seats() {
    let (server, mut backend, mut agent, mut trunk, mut d, inv) =
        handed_off_to_the_backend("13800000055");
    let media = d.remote_rtp.expect("addr");
    let _backend_leg = answer(&server, &mut backend, &inv, "be");
    // The backend's own menu keys pass through and change nothing.
    trunk.press_rfc4733(media, '3', 101, 9_000);
    let heard = backend.record_rtp(0.5);
    assert!(
        heard.iter().any(|p| p.pt == 101),
        "the caller's keys reach the backend"
    );
    // The shipped return keys, *0: '*' by RFC 4733, '0' by SIP INFO.
    trunk.press_rfc4733(media, '*', 101, 12_000);
    assert_eq!(trunk.press_info(server.sip, &mut d, '0'), Some(200));
    let bye = backend.request("BYE", 5.0).expect("the backend leg ends");
    backend.reply(server.sip, &bye, 200, "be");
    back_at_the_seat(&server, &mut trunk, &mut d, &mut agent);
    assert_eq!(backend_status(&server, "hrss")["calls"], 0);
}

/// A settings file for a test server (YIHAOTONG_CONFIG), kept in `dir`.
fn settings_file(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("yihaotong.toml");
    std::fs::write(&path, text).expect("write settings");
    path.display().to_string()
}

#[test]
fn a_backend_with_standby_targets_fails_over_in_order_then_to_the_seats() {
    let mut primary = Phone::new("12333");
    let mut slow = Phone::new("12333");
    let mut standby = Phone::new("12333");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = settings_file(
        dir.path(),
        &format!(
            "[backends.hrss]\nuri = \"\"\nselect = \"order\"\nanswer_timeout = 1\ntargets = [\n  {{ uri = \"sip:12333@{}\" }},\n  {{ uri = \"sip:12333@{}\" }},\n  {{ uri = \"sip:12333@{}\" }},\n]\n",
            primary.addr, slow.addr, standby.addr
        ),
    );
    let server = TestServer::start_with(&[("YIHAOTONG_CONFIG", &config)]);
    let targets = backend_status(&server, "hrss")["targets"].clone();
    assert_eq!(targets.as_array().map(Vec::len), Some(3), "{targets}");
    let mut agent = hrss_seat(&server);

    // The primary errs, the second rings but never answers (let go after
    // answer_timeout), the third takes the call.
    let mut trunk = Phone::new("13800000061");
    let mut d = answer_ivr(&server, &mut trunk, "12333", None);
    trunk.press_rfc4733(d.remote_rtp.expect("addr"), '1', 101, 5);
    let inv = primary.request("INVITE", 15.0).expect("the primary first");
    primary.reply(server.sip, &inv, 503, "p");
    let inv = slow.request("INVITE", 5.0).expect("then the second target");
    slow.reply(server.sip, &inv, 180, "s");
    let cancel = slow
        .request("CANCEL", 5.0)
        .expect("let go after answer_timeout");
    slow.reply(server.sip, &cancel, 200, "s");
    slow.reply(server.sip, &inv, 487, "s");
    let inv = standby.request("INVITE", 5.0).expect("then the third");
    assert_eq!(inv.headers.get("x-ivr-keys"), Some("1"));
    answered_then_caller_hangs_up(&server, &mut trunk, &mut d, &mut standby, &inv);
    assert!(
        agent.request("INVITE", 0.3).is_none(),
        "the seats were not needed"
    );

    // Every target fails: the caller reaches the seats, nothing lost.
    let mut trunk = Phone::new("13800000062");
    let mut d = answer_ivr(&server, &mut trunk, "12333", None);
    trunk.press_rfc4733(d.remote_rtp.expect("addr"), '1', 101, 5);
    let inv = primary.request("INVITE", 15.0).expect("the primary first");
    primary.reply(server.sip, &inv, 500, "p");
    let inv = slow.request("INVITE", 5.0).expect("the second");
    slow.reply(server.sip, &inv, 486, "s");
    let inv = standby.request("INVITE", 5.0).expect("the third");
    standby.reply(server.sip, &inv, 603, "t");
    let inv = agent
        .request("INVITE", 12.0)
        .expect("fallback to the seats");
    assert_eq!(inv.headers.get("x-ivr-keys"), Some("1"));
    answered_then_caller_hangs_up(&server, &mut trunk, &mut d, &mut agent, &inv);
    server.assert_idle();

    // The first call's CDR says a backend took it; the second, the seats.
    let (ok, out) = server.cli(&["cdrs"]);
    assert!(ok, "{out}");
    let cdrs: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
    let of = |caller: &str| {
        cdrs.iter()
            .find(|c| c["caller"] == caller)
            .map(|c| c["disposition"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(of("13800000061").as_deref(), Some("handoff"), "{out}");
    assert_eq!(of("13800000062").as_deref(), Some("answered"), "{out}");
}

#[test]
fn a_parallel_line_greets_in_its_own_name_reaches_its_skill_and_reports_apart() {
    let server = TestServer::start();
    server.add_agent("4001", "s3cret", "health");
    let mut agent = Phone::new("4001");
    assert_eq!(agent.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let (ok, out) = server.cli(&["routes", "test", "12320"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        (v["mode"].as_str(), v["flow"].as_str()),
        (Some("parallel"), Some("12320")),
        "{out}"
    );
    // 双号并行: the old number's own greeting, then 12345's seats with its skill.
    let mut trunk = Phone::new("13800000081");
    let mut d = answer_ivr(&server, &mut trunk, "12320", None);
    assert!(
        heard_prompt(&trunk.record_rtp(2.0), "health/welcome"),
        "the 12320 greeting"
    );
    let inv = agent.request("INVITE", 15.0).expect("a health seat rung");
    assert_eq!(inv.headers.get("x-hotline"), Some("12320 health"));
    assert_eq!(inv.headers.get("x-queue"), Some("health"));
    answered_then_caller_hangs_up(&server, &mut trunk, &mut d, &mut agent, &inv);
    server.assert_idle();
    // Its figures are its own row, apart from 12345's.
    let (ok, out) = server.cli(&["report", "--by", "hotline", "--format", "json"]);
    assert!(ok, "{out}");
    let rows: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let rows = rows.as_array().expect("rows");
    let row = rows
        .iter()
        .find(|r| r["key"] == "12320 health")
        .expect("a 12320 row");
    assert_eq!(
        (row["calls"].as_u64(), row["answered"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(
        rows.iter()
            .all(|r| r["key"] == "12320 health" || r["key"] == "total"),
        "{out}"
    );
}

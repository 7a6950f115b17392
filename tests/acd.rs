//! The ACD against the real server: agents' phones and the trunk speak real
//! SIP over loopback; states, CDRs and the queue log land in a real sled
//! database. Each known race of queue systems has its test here.

use yihaotong_testkit as common;

use std::time::Duration;

use common::{answer, connected_call, Phone, TestServer};
use yihaotong::sip::auth::Algorithm;
use yihaotong::sip::message::Request;

fn agent(server: &TestServer, id: &str) -> Phone {
    let mut phone = Phone::new(id);
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    phone
}

/// The agent's state as `agents list` shows it.
fn state(server: &TestServer, id: &str) -> (String, Option<String>) {
    let (ok, out) = server.cli(&["agents", "list"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let a = v
        .as_array()
        .and_then(|l| l.iter().find(|a| a["id"] == id).cloned())
        .expect("listed");
    (
        a["state"].as_str().unwrap_or_default().to_string(),
        a["reason"].as_str().map(String::from),
    )
}

/// Waits (up to 5 s) for the agent to reach `want`.
fn wait_state(server: &TestServer, id: &str, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (s, _) = state(server, id);
        if s == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} is {s}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The next INVITE offering a call not seen before (UDP retransmissions of
/// earlier offers are skipped).
fn next_offer(phone: &mut Phone, seen: &mut Vec<String>, secs: f64) -> Option<Request> {
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(secs);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let inv = phone.request("INVITE", left.as_secs_f64())?;
        if !seen.contains(&inv.core.call_id) {
            seen.push(inv.core.call_id.clone());
            return Some(inv);
        }
    }
    None
}

#[test]
fn ring_all_rings_every_free_agent_and_the_first_answer_cancels_the_rest() {
    let server = TestServer::start_with(&[("YIHAOTONG_QUEUE__STRATEGY", "ring-all")]);
    for id in ["1001", "1002", "1003"] {
        server.add_agent(id, "s3cret", "main");
    }
    let mut phones: Vec<Phone> = ["1001", "1002", "1003"]
        .iter()
        .map(|id| agent(&server, id))
        .collect();
    let mut trunk = Phone::new("13800000000");
    let mut d = trunk.invite(server.sip, "123450");
    let invites: Vec<_> = phones
        .iter_mut()
        .map(|p| p.request("INVITE", 5.0).expect("every agent rung at once"))
        .collect();
    for (p, inv) in phones.iter().zip(&invites) {
        p.reply(server.sip, inv, 180, "ring");
    }
    // The second agent answers first.
    let _agent_dialog = answer(&server, &mut phones[1], &invites[1], "win");
    for i in [0, 2] {
        let cancel = phones[i]
            .request("CANCEL", 3.0)
            .expect("the others are cancelled");
        phones[i].reply(server.sip, &cancel, 200, "ring");
        phones[i].reply(server.sip, &invites[i], 487, "ring");
    }
    let ok = trunk
        .response(&d.call_id, "INVITE", 200, 3.0)
        .expect("caller answered");
    assert_eq!(ok.status, 200);
    trunk.ack(server.sip, &mut d, &ok);
    wait_state(&server, "1002", "on-call");
    assert_eq!(state(&server, "1001").0, "available");
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    let bye = phones[1].request("BYE", 3.0).expect("BYE to the agent");
    phones[1].reply(server.sip, &bye, 200, "win");
    wait_state(&server, "1002", "available");
    server.assert_idle();
}

#[test]
fn a_caller_who_hangs_up_while_the_agent_rings_leaves_the_agent_free() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let mut phone = agent(&server, "1001");
    let mut trunk = Phone::new("13800000000");
    let mut seen = Vec::new();

    // 1. The caller cancels while the phone rings.
    let d = trunk.invite(server.sip, "123450");
    let inv = next_offer(&mut phone, &mut seen, 5.0).expect("rung");
    phone.reply(server.sip, &inv, 180, "a");
    wait_state(&server, "1001", "ringing");
    trunk.cancel(server.sip, &d);
    assert_eq!(trunk.final_status(&d.call_id, "INVITE", 3.0), Some(487));
    let cancel = phone
        .request("CANCEL", 3.0)
        .expect("CANCEL reaches the agent");
    phone.reply(server.sip, &cancel, 200, "a");
    phone.reply(server.sip, &inv, 487, "a");
    wait_state(&server, "1001", "available");

    // 2. The agent's answer crosses the caller's CANCEL: the agent's leg is
    //    ACKed and hung up, and the agent is not left "on call".
    let d = trunk.invite(server.sip, "123450");
    let inv = next_offer(&mut phone, &mut seen, 5.0).expect("rung again");
    phone.reply(server.sip, &inv, 180, "b");
    trunk.cancel(server.sip, &d);
    let cancel = phone.request("CANCEL", 3.0).expect("CANCEL");
    phone.reply(server.sip, &inv, 200, "b");
    phone.reply(server.sip, &cancel, 200, "b");
    phone.request("ACK", 3.0).expect("the late 2xx is ACKed");
    let bye = phone.request("BYE", 3.0).expect("and hung up");
    phone.reply(server.sip, &bye, 200, "b");
    wait_state(&server, "1001", "available");

    // 3. The next caller reaches the same agent at once.
    let (mut d, _) = connected_call(&server, &mut trunk, &mut phone, "c");
    common::caller_hangs_up(&server, &mut trunk, &mut d, &mut phone, "c");
    server.assert_idle();
}

#[test]
fn breaks_wrap_up_and_states_survive_a_crash() {
    let mut server = TestServer::start_with(&[("YIHAOTONG_QUEUE__WRAP_UP", "30")]);
    server.add_agent("1001", "s3cret", "main");
    let mut phone = agent(&server, "1001");
    assert_eq!(
        state(&server, "1001").0,
        "available",
        "auto-login on registering"
    );

    // On break: callers wait, the phone is not rung.
    let (ok, out) = server.cli(&["agents", "state", "1001", "break", "--reason", "lunch"]);
    assert!(ok, "{out}");
    assert_eq!(
        state(&server, "1001"),
        ("on-break".into(), Some("lunch".into()))
    );
    let mut trunk = Phone::new("13800000000");
    let d = trunk.invite(server.sip, "123450");
    assert!(
        phone.request("INVITE", 1.5).is_none(),
        "an agent on break is not rung"
    );
    trunk.cancel(server.sip, &d);
    assert_eq!(trunk.final_status(&d.call_id, "INVITE", 3.0), Some(487));

    // kill -9 and start again: still on break, with the reason.
    server.restart();
    assert_eq!(
        state(&server, "1001"),
        ("on-break".into(), Some("lunch".into()))
    );
    let (ok, out) = server.cli(&["agents", "state", "1001", "available"]);
    assert!(ok, "{out}");

    // A call, then 30 s wrap-up: the next caller waits until it ends early.
    let (mut d, _) = connected_call(&server, &mut trunk, &mut phone, "x");
    common::caller_hangs_up(&server, &mut trunk, &mut d, &mut phone, "x");
    wait_state(&server, "1001", "wrap-up");
    let d2 = trunk.invite(server.sip, "123450");
    assert!(
        phone.request("INVITE", 1.5).is_none(),
        "no call during wrap-up"
    );
    let (ok, out) = server.cli(&["agents", "state", "1001", "end-wrap-up"]);
    assert!(ok, "{out}");
    let inv = phone
        .request("INVITE", 3.0)
        .expect("rung once wrap-up ended");
    phone.reply(server.sip, &inv, 486, "y");
    trunk.cancel(server.sip, &d2);
    assert_eq!(trunk.final_status(&d2.call_id, "INVITE", 3.0), Some(487));

    // Unknown agents and states are refused with a reason.
    let (ok, out) = server.cli(&["agents", "state", "1999", "available"]);
    assert!(!ok && out.contains("no such agent"), "{out}");
    let (ok, out) = server.cli(&["agents", "state", "1001", "asleep"]);
    assert!(!ok && out.contains("unknown state"), "{out}");
    server.assert_idle();
}

#[test]
fn an_agent_who_keeps_missing_calls_is_put_on_break() {
    let server = TestServer::start_with(&[
        ("YIHAOTONG_QUEUE__MAX_NO_ANSWER", "2"),
        ("YIHAOTONG_QUEUE__RING_TIMEOUT", "1"),
    ]);
    server.add_agent("1001", "s3cret", "main");
    let mut phone = agent(&server, "1001");
    let mut trunk = Phone::new("13800000000");
    let d = trunk.invite(server.sip, "123450");
    let mut seen = Vec::new();
    for round in 0..2 {
        let inv = next_offer(&mut phone, &mut seen, 5.0).unwrap_or_else(|| panic!("offer {round}"));
        if round == 0 {
            phone.reply(server.sip, &inv, 180, "z");
            let cancel = phone.request("CANCEL", 3.0).expect("rang out");
            phone.reply(server.sip, &cancel, 200, "z");
        } else {
            // A phone that says nothing until after ring_timeout: the CANCEL
            // may only follow its first provisional (RFC 3261 §9.1).
            std::thread::sleep(Duration::from_millis(1_500));
            phone.reply(server.sip, &inv, 180, "z");
            let cancel = phone
                .request("CANCEL", 3.0)
                .expect("cancelled once it rang");
            phone.reply(server.sip, &cancel, 200, "z");
        }
        phone.reply(server.sip, &inv, 487, "z");
    }
    wait_state(&server, "1001", "on-break");
    assert_eq!(state(&server, "1001").1.as_deref(), Some("no-answer"));
    assert!(
        next_offer(&mut phone, &mut seen, 1.5).is_none(),
        "an agent on break is not offered calls"
    );
    trunk.cancel(server.sip, &d);
    assert_eq!(trunk.final_status(&d.call_id, "INVITE", 3.0), Some(487));
    server.assert_idle();
}

#[test]
fn priority_callers_are_served_first_and_every_second_is_recorded() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let (ok, out) = server.cli(&["lists", "add", "elderly", "13900000002"]);
    assert!(ok, "{out}");
    let mut phone = agent(&server, "1001");
    let mut first = Phone::new("13900000000");
    let mut normal = Phone::new("13900000001");
    let mut elderly = Phone::new("13900000002");

    // The agent takes a first call; a normal caller, then an elderly one wait.
    let (_, mut agent_leg) = connected_call(&server, &mut first, &mut phone, "one");
    let dn = normal.invite(server.sip, "123450");
    std::thread::sleep(Duration::from_millis(300));
    let mut de = elderly.invite(server.sip, "123450");
    std::thread::sleep(Duration::from_millis(300));
    // The agent hangs up: the elderly caller, who came later, is next.
    phone.in_dialog(server.sip, &mut agent_leg, "BYE", "");
    let bye = first.request("BYE", 3.0).expect("BYE to the caller");
    first.reply(server.sip, &bye, 200, "t");
    let inv = phone.request("INVITE", 5.0).expect("next offer");
    assert_eq!(inv.core.from.user.as_deref(), Some("13900000002"));
    let _ = answer(&server, &mut phone, &inv, "two");
    let ok = elderly
        .response(&de.call_id, "INVITE", 200, 3.0)
        .expect("answered");
    elderly.ack(server.sip, &mut de, &ok);
    // The normal caller gives up after waiting.
    std::thread::sleep(Duration::from_millis(6_000));
    normal.cancel(server.sip, &dn);
    assert_eq!(normal.final_status(&dn.call_id, "INVITE", 3.0), Some(487));
    common::caller_hangs_up(&server, &mut elderly, &mut de, &mut phone, "two");
    server.assert_idle();

    // A clean stop writes everything; the report reads the database offline.
    server.signal("TERM");
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, out) = server.cli(&["report", "--by", "queue", "--format", "json"]);
    assert!(ok, "{out}");
    let rows: serde_json::Value = serde_json::from_str(&out).expect(&out);
    let main = &rows[0];
    assert_eq!(main["key"], "main");
    assert_eq!(main["offered"], 3);
    assert_eq!(main["answered"], 2);
    assert_eq!(
        main["abandoned"], 1,
        "waited about 6.6 s: not a short abandon"
    );
    assert_eq!(main["abandoned_short"], 0);
    let rate = main["connection_rate"].as_f64().unwrap_or(0.0);
    assert!((rate - 2.0 / 3.0).abs() < 1e-9, "{rate}");
    assert_eq!(main["in_sl"], 2);

    let (ok, log) = server.cli(&["--format", "table", "queue-log"]);
    assert!(ok, "{log}");
    let events: Vec<&str> = log.lines().filter_map(|l| l.split('|').nth(4)).collect();
    for e in [
        "AGENTLOGIN",
        "ENTERQUEUE",
        "CONNECT",
        "COMPLETEAGENT",
        "COMPLETECALLER",
        "ABANDON",
    ] {
        assert!(events.contains(&e), "{e} missing from:\n{log}");
    }
    let (ok, table) = server.cli(&["report", "--by", "hotline", "--format", "table"]);
    assert!(ok && table.starts_with("group"), "{table}");
}

#[test]
fn fifty_agents_and_two_hundred_callers_leave_no_agent_stuck() {
    // Fifty calls at once need a hundred RTP ports: a range of its own.
    let base = 52_000 + (std::process::id() % 10) as u16 * 1_000;
    let (lo, hi) = (base.to_string(), (base + 999).to_string());
    let server = TestServer::start_with(&[
        ("YIHAOTONG_RTP__PORT_MIN", lo.as_str()),
        ("YIHAOTONG_RTP__PORT_MAX", hi.as_str()),
    ]);
    let json = server.dir.path().join("load.json");
    let sip = server.sip.to_string();
    let json_arg = json.display().to_string();
    let (ok, out) = server.cli(&[
        "load",
        "--server",
        &sip,
        "--json",
        &json_arg,
        "--provision",
        // Kept, to see every one of them free again afterwards.
        "--keep-accounts",
        "--agents",
        "50",
        "--calls",
        "200",
        "--cps",
        "200",
        "--concurrency",
        "200",
        "--talk-ms",
        "400",
        "--ring-ms",
        "50",
        "--abandon",
        "0.1",
        "--check",
    ]);
    assert!(ok, "load run failed:\n{out}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("JSON");
    let completed = r["completed"].as_u64().unwrap_or(0);
    let abandoned = r["abandoned"].as_u64().unwrap_or(0);
    assert_eq!(completed + abandoned, 200, "{r}");
    server.assert_idle();
    let (ok, out) = server.cli(&["status"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["agents"]["available"], 50, "every agent free again: {v}");
    let main = v["queues"]
        .as_array()
        .and_then(|q| q.iter().find(|q| q["name"] == "main").cloned())
        .expect("main queue");
    assert_eq!(main["waiting"], 0, "{main}");
}

#[test]
fn feature_codes_from_the_agent_phone_change_its_state_and_say_so() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    // Outside the trunk ACL (127.0.0.1), so its INVITEs are an agent's, challenged.
    let mut phone = Phone::bind("1001", "127.0.0.3");
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    // (code, state after); *24 outside wrap-up fails and says so.
    for (code, want) in [
        ("*2205", "on-break"),
        ("*21", "available"),
        ("*23", "logged-out"),
        ("*24", "logged-out"),
    ] {
        let mut d = phone.invite_as_agent(server.sip, code, "s3cret");
        let ok = phone
            .response(&d.call_id, "INVITE", 200, 3.0)
            .expect("answered by the confirmation");
        assert_eq!(ok.status, 200, "{code}");
        phone.ack(server.sip, &mut d, &ok);
        let heard = phone.record_rtp(0.6);
        assert!(!heard.is_empty(), "{code}: the confirmation is played");
        let bye = phone.request("BYE", 8.0).expect("hung up after the prompt");
        phone.reply(server.sip, &bye, 200, "f");
        assert_eq!(state(&server, "1001").0, want, "{code}");
    }
    assert_eq!(state(&server, "1001"), ("logged-out".into(), None));
    // The phone refreshes its registration: that is not a new login.
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    assert_eq!(state(&server, "1001").0, "logged-out");
    let (ok, log) = server.cli(&["--format", "table", "queue-log"]);
    assert!(ok, "{log}");
    assert!(log.contains("|1001|PAUSE|05"), "{log}");
    // Unknown codes get 404; a phone that is not an agent is challenged, never obeyed.
    let d = phone.invite_as_agent(server.sip, "*99", "s3cret");
    assert_eq!(phone.final_status(&d.call_id, "INVITE", 3.0), Some(404));
    let mut stranger = Phone::bind("1001", "127.0.0.2");
    let d = stranger.invite(server.sip, "*21");
    assert_eq!(stranger.final_status(&d.call_id, "INVITE", 3.0), Some(407));
    server.assert_idle();
}

#[test]
fn agent_calls_are_recorded_caller_left_agent_right() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let mut phone = agent(&server, "1001");
    let mut trunk = Phone::new("13800000000");
    let mut d = trunk.invite(server.sip, "123450");
    let inv = phone.request("INVITE", 5.0).expect("rung");
    let to_server_from_agent = yihaotong::media::sdp::parse_audio(&inv.body)
        .expect("our SDP")
        .addr;
    let _ = answer(&server, &mut phone, &inv, "rec");
    let ok = trunk
        .response(&d.call_id, "INVITE", 200, 3.0)
        .expect("answered");
    trunk.ack(server.sip, &mut d, &ok);
    let to_server_from_caller = d.remote_rtp.expect("our SDP to the caller");
    let loud = audio_codec_algorithms::encode_ulaw(8000);
    let quiet = audio_codec_algorithms::encode_ulaw(-300);
    std::thread::scope(|s| {
        let c = s.spawn(|| trunk.exchange_rtp_of(to_server_from_caller, 50, 0x1111, loud));
        let a = s.spawn(|| phone.exchange_rtp_of(to_server_from_agent, 50, 0x2222, quiet));
        assert!(c.join().expect("caller") > 40);
        assert!(a.join().expect("agent") > 40);
    });
    common::caller_hangs_up(&server, &mut trunk, &mut d, &mut phone, "rec");
    server.assert_idle();
    // The CDR names the file; the file is stereo with the caller on the left.
    let (ok, out) = server.cli(&["cdrs", "--since", "1h"]);
    assert!(ok, "{out}");
    let cdrs: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let cdr = &cdrs[0];
    assert_eq!(cdr["disposition"], "answered");
    assert_eq!(cdr["agent"], "1001");
    let path = cdr["recording"]
        .as_str()
        .expect("recording path")
        .to_string();
    assert!(
        path.contains("/recordings/") && path.ends_with(".wav"),
        "{path}"
    );
    let bytes = std::fs::read(&path).expect("recording on disk");
    assert_eq!(&bytes[..4], b"RIFF");
    assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 2, "stereo");
    let frames: Vec<(i16, i16)> = bytes[44..]
        .chunks_exact(4)
        .map(|c| {
            (
                i16::from_le_bytes([c[0], c[1]]),
                i16::from_le_bytes([c[2], c[3]]),
            )
        })
        .collect();
    let caller_loud = frames.iter().filter(|(l, _)| *l > 7000).count();
    let agent_quiet = frames
        .iter()
        .filter(|(_, r)| (-400..-200).contains(r))
        .count();
    assert!(
        caller_loud >= 40 * 160,
        "caller samples on the left: {caller_loud}"
    );
    assert!(
        agent_quiet >= 40 * 160,
        "agent samples on the right: {agent_quiet}"
    );
    assert!(
        frames.iter().all(|(l, r)| *l <= 0 || *r >= -400),
        "no side leaks into the other"
    );
}

#[test]
fn calls_cut_by_kill_9_are_closed_out_as_crashed_at_the_next_start() {
    let mut server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let mut phone = agent(&server, "1001");
    let mut trunk = Phone::new("13800000011");
    // One call ends normally; the next is up when the server is killed.
    let (mut d, _) = connected_call(&server, &mut trunk, &mut phone, "a");
    common::caller_hangs_up(&server, &mut trunk, &mut d, &mut phone, "a");
    let (cut, _) = connected_call(&server, &mut trunk, &mut phone, "b");
    std::thread::sleep(Duration::from_millis(1500));
    server.restart();
    let (ok, out) = server.cli(&["cdrs", "--since", "1h"]);
    assert!(ok, "{out}");
    let cdrs: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let cdrs = cdrs.as_array().cloned().unwrap_or_default();
    assert_eq!(cdrs.len(), 2, "{cdrs:?}");
    let crashed = cdrs
        .iter()
        .find(|c| c["call_id"] == cut.call_id.as_str())
        .expect("the cut call has a CDR");
    assert_eq!(crashed["disposition"], "crashed");
    assert_eq!(crashed["agent"], "1001", "what was known when it was cut");
    assert!(cdrs
        .iter()
        .any(|c| c["call_id"] == d.call_id.as_str() && c["disposition"] == "answered"));
    // Closed out once: another restart adds nothing.
    server.restart();
    let (_, out) = server.cli(&["cdrs", "--since", "1h"]);
    let again: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(again.as_array().map(Vec::len), Some(2));
}

//! Transfers from the agent's phone against the real server: REFER (blind,
//! with NOTIFY sipfrag progress) and REFER with Replaces (attended), with the
//! caller, the agents and an emergency desk speaking real SIP and RTP over
//! loopback.

use yihaotong_testkit as common;

use common::{answer, connected_call, talk, Phone, PhoneDialog, TestServer};
use yihaotong::sip::auth::Algorithm;

fn agent(server: &TestServer, id: &str) -> Phone {
    let mut phone = Phone::bind(id, "127.0.0.3");
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    phone
}

/// The agent's phone sends REFER; returns the final status of the REFER.
fn refer(server: &TestServer, phone: &mut Phone, leg: &mut PhoneDialog, refer_to: &str) -> u16 {
    common::refer(server, phone, leg, refer_to).status
}

/// The next NOTIFY on `phone`: answered 200; returns (sipfrag status line, subscription state).
fn notify(server: &TestServer, phone: &mut Phone) -> (String, String) {
    let n = phone.request("NOTIFY", 5.0).expect("NOTIFY");
    phone.reply(server.sip, &n, 200, "n");
    assert_eq!(n.headers.get("event"), Some("refer"));
    assert!(n
        .headers
        .get("content-type")
        .is_some_and(|c| c.starts_with("message/sipfrag")));
    let body = String::from_utf8_lossy(&n.body).trim().to_string();
    let state = n
        .headers
        .get("subscription-state")
        .unwrap_or_default()
        .to_string();
    (body, state)
}

/// The CDRs as JSON.
fn cdrs(server: &TestServer) -> Vec<serde_json::Value> {
    let (ok, out) = server.cli(&["cdrs"]);
    assert!(ok, "{out}");
    serde_json::from_str::<serde_json::Value>(&out)
        .expect("JSON")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn blind_transfer_to_another_agent_reports_progress_and_bridges_the_caller() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    server.add_agent("1002", "s3cret", "hrss");
    let mut a1 = agent(&server, "1001");
    let mut a2 = agent(&server, "1002");
    let mut trunk = Phone::new("13800000001");
    let (mut d, mut leg1) = connected_call(&server, &mut trunk, &mut a1, "a1");

    // A target agents may not reach is refused and the call goes on.
    assert_eq!(
        refer(&server, &mut a1, &mut leg1, "<sip:99999@127.0.0.1>"),
        403
    );
    // To agent 1002 (in another queue).
    assert_eq!(
        refer(&server, &mut a1, &mut leg1, "<sip:1002@127.0.0.1>"),
        202
    );
    assert_eq!(notify(&server, &mut a1).0, "SIP/2.0 100 Trying");
    let inv = a2.request("INVITE", 5.0).expect("the target agent rings");
    assert_eq!(
        inv.headers.get("x-caller-call-id"),
        Some(d.call_id.as_str())
    );
    // Meanwhile the caller hears music, not silence.
    let heard = trunk.record_rtp(0.5);
    assert!(
        heard.len() > 10,
        "only {} packets while the target rang",
        heard.len()
    );
    let mut leg2 = answer(&server, &mut a2, &inv, "a2");
    let (frag, state) = notify(&server, &mut a1);
    assert_eq!(frag, "SIP/2.0 200 OK");
    assert!(state.starts_with("terminated"), "{state}");
    let bye = a1
        .request("BYE", 3.0)
        .expect("the transferring agent is hung up");
    a1.reply(server.sip, &bye, 200, "a1");

    // Caller and target talk through us.
    let to_caller_side = d.remote_rtp.expect("caller's media");
    let to_agent_side = leg2.remote_rtp.expect("target's media");
    let (caller_got, agent_got) = talk(&trunk, to_caller_side, &a2, to_agent_side);
    assert!(
        caller_got > 30 && agent_got > 30,
        "caller {caller_got}, agent {agent_got}"
    );

    a2.in_dialog(server.sip, &mut leg2, "BYE", "");
    let bye = trunk.request("BYE", 3.0).expect("BYE to the caller");
    trunk.reply(server.sip, &bye, 200, "c");
    let _ = &mut d;

    // The record: one CDR with the transfer; TRANSFER in the queue log.
    let (ok, log) = server.cli(&["--format", "table", "queue-log"]);
    assert!(ok, "{log}");
    assert!(
        log.lines().any(|l| l.contains("|1001|TRANSFER|1002")),
        "{log}"
    );
    let all = cdrs(&server);
    let cdr = all
        .iter()
        .find(|c| c["call_id"] == d.call_id.as_str())
        .expect("CDR");
    assert_eq!(cdr["transfers"], serde_json::json!(["1002"]));
    assert_eq!(cdr["agent"], "1001");
    server.assert_idle();
}

#[test]
fn a_failed_blind_transfer_gives_the_caller_back_to_the_agent() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    server.add_agent("1002", "s3cret", "hrss");
    let mut a1 = agent(&server, "1001");
    let mut a2 = agent(&server, "1002");
    let mut trunk = Phone::new("13800000002");
    let (mut d, mut leg1) = connected_call(&server, &mut trunk, &mut a1, "a1");
    assert_eq!(
        refer(&server, &mut a1, &mut leg1, "<sip:1002@127.0.0.1>"),
        202
    );
    assert_eq!(notify(&server, &mut a1).0, "SIP/2.0 100 Trying");
    let inv = a2.request("INVITE", 5.0).expect("the target agent rings");
    a2.reply(server.sip, &inv, 486, "a2");
    let (frag, state) = notify(&server, &mut a1);
    assert!(frag.starts_with("SIP/2.0 4"), "{frag}");
    assert!(state.starts_with("terminated"), "{state}");
    // Into a queue with nobody logged in (join_empty = unavailable): refused
    // before the caller is in line, so the caller stays with the agent too.
    assert_eq!(
        refer(&server, &mut a1, &mut leg1, "<sip:tax@127.0.0.1>"),
        202
    );
    assert_eq!(notify(&server, &mut a1).0, "SIP/2.0 100 Trying");
    let (frag, state) = notify(&server, &mut a1);
    assert_eq!(frag, "SIP/2.0 480 Temporarily Unavailable");
    assert!(state.starts_with("terminated"), "{state}");
    // Back with agent 1001, both ways.
    let (caller_got, agent_got) = talk(
        &trunk,
        d.remote_rtp.expect("caller's media"),
        &a1,
        leg1.remote_rtp.expect("agent's media"),
    );
    assert!(
        caller_got > 30 && agent_got > 30,
        "caller {caller_got}, agent {agent_got}"
    );
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    let bye = a1.request("BYE", 3.0).expect("BYE to the agent");
    a1.reply(server.sip, &bye, 200, "a1");
    server.assert_idle();
}

#[test]
fn blind_transfer_to_an_emergency_number_goes_out_through_the_trunk() {
    let mut psap = Phone::new("110");
    let outbound = format!("sip:{}", psap.addr);
    let server = TestServer::start_with(&[("YIHAOTONG_TRUNK__OUTBOUND", outbound.as_str())]);
    server.add_agent("1001", "s3cret", "main");
    let mut a1 = agent(&server, "1001");
    let mut trunk = Phone::new("13800000003");
    let (mut d, mut leg1) = connected_call(&server, &mut trunk, &mut a1, "a1");
    // The agent holds the caller first, as phones do before a transfer.
    a1.in_dialog(server.sip, &mut leg1, "INVITE", &a1.sdp_dir("sendonly"));
    let reinv = trunk
        .request("INVITE", 3.0)
        .expect("hold passed to the caller");
    assert!(String::from_utf8_lossy(&reinv.body).contains("a=sendonly"));
    trunk.reply(server.sip, &reinv, 200, "c");
    let ok = a1
        .response(&leg1.call_id, "INVITE", 200, 3.0)
        .expect("hold answered");
    a1.ack(server.sip, &mut leg1, &ok);

    assert_eq!(
        refer(&server, &mut a1, &mut leg1, "<sip:110@127.0.0.1>"),
        202
    );
    assert_eq!(notify(&server, &mut a1).0, "SIP/2.0 100 Trying");
    // The caller is taken off hold (music now, then the call).
    let resume = trunk.request("INVITE", 3.0).expect("caller taken off hold");
    assert!(String::from_utf8_lossy(&resume.body).contains("a=sendrecv"));
    trunk.reply(server.sip, &resume, 200, "c");
    let inv = psap
        .request("INVITE", 5.0)
        .expect("the emergency desk rings");
    assert!(inv.uri.to_string().starts_with("sip:110@"), "{}", inv.uri);
    let mut desk = answer(&server, &mut psap, &inv, "psap");
    assert_eq!(notify(&server, &mut a1).0, "SIP/2.0 200 OK");
    let bye = a1.request("BYE", 3.0).expect("the agent is hung up");
    a1.reply(server.sip, &bye, 200, "a1");
    let (caller_got, desk_got) = talk(
        &trunk,
        d.remote_rtp.expect("caller's media"),
        &psap,
        desk.remote_rtp.expect("desk's media"),
    );
    assert!(
        caller_got > 30 && desk_got > 30,
        "caller {caller_got}, desk {desk_got}"
    );
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    let bye = psap.request("BYE", 3.0).expect("BYE to the desk");
    psap.reply(server.sip, &bye, 200, "psap");
    let _ = &mut desk;
    server.assert_idle();
}

#[test]
fn attended_transfer_replaces_the_consultation_call() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    server.add_agent("1002", "s3cret", "hrss");
    let mut a1 = agent(&server, "1001");
    let mut a2 = agent(&server, "1002");
    let mut trunk = Phone::new("13800000004");
    let (mut d, mut leg1) = connected_call(&server, &mut trunk, &mut a1, "a1");

    // Agent 1001 consults agent 1002 from its phone.
    let mut consult = a1.invite_as_agent(server.sip, "1002", "s3cret");
    let inv = a2.request("INVITE", 5.0).expect("1002 rings");
    let mut leg2 = answer(&server, &mut a2, &inv, "a2");
    let ok = a1
        .response(&consult.call_id, "INVITE", 200, 3.0)
        .expect("consultation answered");
    a1.ack(server.sip, &mut consult, &ok);
    let (got1, got2) = talk(
        &a1,
        consult.remote_rtp.expect("media"),
        &a2,
        leg2.remote_rtp.expect("media"),
    );
    assert!(got1 > 30 && got2 > 30, "consultation: {got1}, {got2}");

    // Transfer: REFER on the caller's leg, replacing the consultation.
    let to_tag = ok.core.to.tag.clone().expect("to-tag");
    let from_tag = consult
        .local
        .split("tag=")
        .nth(1)
        .expect("from-tag")
        .to_string();
    let refer_to = format!(
        "<sip:1002@127.0.0.1?Replaces={}%3Bto-tag%3D{to_tag}%3Bfrom-tag%3D{from_tag}>",
        consult.call_id.replace('@', "%40")
    );
    assert_eq!(refer(&server, &mut a1, &mut leg1, &refer_to), 202);
    // 1002 is re-INVITEd to the caller's relay, in the dialog it already has.
    let reinv = a2.request("INVITE", 5.0).expect("target re-INVITEd");
    assert_eq!(reinv.core.call_id, leg2.call_id);
    a2.reply(server.sip, &reinv, 200, "a2");
    a2.request("ACK", 3.0).expect("ACK for the re-INVITE");
    leg2.remote_rtp = yihaotong::media::sdp::parse_audio(&reinv.body)
        .ok()
        .map(|a| a.addr);
    // 1001 hears the outcome and loses both its legs.
    let mut frags = Vec::new();
    while frags.last().map(String::as_str) != Some("SIP/2.0 200 OK") {
        frags.push(notify(&server, &mut a1).0);
    }
    for _ in 0..2 {
        let bye = a1.request("BYE", 3.0).expect("agent 1001 hung up");
        assert!(
            bye.core.call_id == leg1.call_id || bye.core.call_id == consult.call_id,
            "{}",
            bye.core.call_id
        );
        a1.reply(server.sip, &bye, 200, "a1");
    }
    let (caller_got, agent_got) = talk(
        &trunk,
        d.remote_rtp.expect("caller's media"),
        &a2,
        leg2.remote_rtp.expect("relay address"),
    );
    assert!(
        caller_got > 30 && agent_got > 30,
        "caller {caller_got}, agent {agent_got}"
    );
    // The caller hangs up: 1002 gets the BYE in its original dialog.
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    let bye = a2.request("BYE", 3.0).expect("BYE to 1002");
    assert_eq!(bye.core.call_id, leg2.call_id);
    a2.reply(server.sip, &bye, 200, "a2");
    server.assert_idle();
    let (ok, log) = server.cli(&["--format", "table", "queue-log"]);
    assert!(ok, "{log}");
    assert!(
        log.lines().any(|l| l.contains("|1001|TRANSFER|1002")),
        "{log}"
    );
}

#[test]
fn blind_transfer_to_a_queue_puts_the_caller_in_line_with_the_call_data() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    server.add_agent("1002", "s3cret", "hrss");
    let mut a1 = agent(&server, "1001");
    let mut a2 = agent(&server, "1002");
    let (ok, out) = server.cli(&["agents", "state", "1002", "break"]);
    assert!(ok, "{out}");
    let mut trunk = Phone::new("13800000005");
    let (mut d, mut leg1) = connected_call(&server, &mut trunk, &mut a1, "a1");
    assert_eq!(
        refer(&server, &mut a1, &mut leg1, "<sip:hrss@127.0.0.1>"),
        202
    );
    // Into a queue, the transfer is complete once the caller is in line.
    assert_eq!(notify(&server, &mut a1).0, "SIP/2.0 100 Trying");
    assert_eq!(notify(&server, &mut a1).0, "SIP/2.0 200 OK");
    let bye = a1.request("BYE", 3.0).expect("the agent is hung up");
    a1.reply(server.sip, &bye, 200, "a1");
    // The queue's agent comes back from a break and gets the waiting
    // caller, who hears music meanwhile.
    assert!(trunk.record_rtp(0.5).len() > 10, "music while in line");
    let (ok, out) = server.cli(&["agents", "state", "1002", "available"]);
    assert!(ok, "{out}");
    let inv = a2.request("INVITE", 5.0).expect("the queue's agent rings");
    assert_eq!(inv.headers.get("x-queue"), Some("hrss"));
    assert_eq!(inv.headers.get("x-dialed"), Some("123450"));
    assert_eq!(
        inv.headers.get("x-caller-call-id"),
        Some(d.call_id.as_str())
    );
    let leg2 = answer(&server, &mut a2, &inv, "a2");
    let (caller_got, agent_got) = talk(
        &trunk,
        d.remote_rtp.expect("caller's media"),
        &a2,
        leg2.remote_rtp.expect("agent's media"),
    );
    assert!(
        caller_got > 30 && agent_got > 30,
        "caller {caller_got}, agent {agent_got}"
    );
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    let bye = a2.request("BYE", 3.0).expect("BYE to the agent");
    a2.reply(server.sip, &bye, 200, "a2");
    server.assert_idle();
    let cdr = cdrs(&server)
        .into_iter()
        .find(|c| c["call_id"] == d.call_id.as_str())
        .expect("CDR");
    assert_eq!(cdr["transfers"], serde_json::json!(["hrss"]));
    assert_eq!(cdr["queue"], "hrss");
}

#[test]
fn a_peer_centres_call_data_reaches_the_seat_and_goes_back_with_a_transfer_to_it() {
    let mut centre = Phone::new("12345");
    let centre_uri = format!("sip:12345@{}", centre.addr);
    let server = TestServer::start_with(&[("YIHAOTONG_TRANSFER__CENTRES__12399", &centre_uri)]);
    let (ok, out) = server.cli(&[
        "routes",
        "set",
        "1234501",
        "--queue",
        "main",
        "--mode",
        "interconnect",
        "--hotline",
        "centre A",
    ]);
    assert!(ok, "{out}");
    server.add_agent("1001", "s3cret", "main");
    let mut a1 = agent(&server, "1001");

    // Anyone else's X- headers stay outside.
    let mut citizen = Phone::new("13800000071");
    let d = citizen.invite_with(server.sip, "123450", "X-Ticket: forged\r\n");
    let inv = a1.request("INVITE", 5.0).expect("agent rung");
    assert_eq!(inv.headers.get("x-peer-ticket"), None);
    assert_eq!(inv.headers.get("x-ticket"), None);
    a1.reply(server.sip, &inv, 486, "busy");
    citizen.cancel(server.sip, &d);
    assert_eq!(citizen.final_status(&d.call_id, "INVITE", 5.0), Some(487));

    // The peer centre's call: its data arrives at the seat as X-Peer-*.
    let mut peer = Phone::new("13800000072");
    let mut d = peer.invite_with(
        server.sip,
        "1234501",
        "X-IVR-Keys: 3\r\nX-Ticket: T-1001\r\nX-Caller-Call-ID: a-centre-call\r\n",
    );
    let inv = loop {
        let inv = a1
            .request("INVITE", 10.0)
            .expect("agent rung for the peer's call");
        if inv.headers.get("x-hotline") == Some("centre A") {
            break inv;
        }
        a1.reply(server.sip, &inv, 486, "busy");
    };
    assert_eq!(inv.headers.get("x-peer-ticket"), Some("T-1001"));
    assert_eq!(inv.headers.get("x-peer-ivr-keys"), Some("3"));
    assert_eq!(
        inv.headers.get("x-peer-caller-call-id"),
        Some("a-centre-call")
    );
    let mut leg = answer(&server, &mut a1, &inv, "a1");
    let ok = peer
        .response(&d.call_id, "INVITE", 200, 5.0)
        .expect("the peer's call answered");
    peer.ack(server.sip, &mut d, &ok);

    // The agent sends the caller back to the centre (一键互转): the data
    // goes with them.
    assert_eq!(
        refer(&server, &mut a1, &mut leg, "<sip:12399@127.0.0.1>"),
        202
    );
    let back = centre.request("INVITE", 5.0).expect("the centre is rung");
    assert_eq!(back.headers.get("x-peer-ticket"), Some("T-1001"));
    assert_eq!(back.headers.get("x-hotline"), Some("centre A"));
    let _centre_leg = answer(&server, &mut centre, &back, "c");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut hung_up = false;
    while std::time::Instant::now() < deadline && !hung_up {
        if let Some(n) = a1.request("NOTIFY", 0.2) {
            a1.reply(server.sip, &n, 200, "a1");
        }
        if let Some(bye) = a1.request("BYE", 0.2) {
            a1.reply(server.sip, &bye, 200, "a1");
            hung_up = true;
        }
        while let Some(reinv) = peer.request("INVITE", 0.0) {
            peer.reply(server.sip, &reinv, 200, "p");
        }
    }
    assert!(hung_up, "the agent is hung up after the transfer");
    peer.in_dialog(server.sip, &mut d, "BYE", "");
    let bye = centre.request("BYE", 5.0).expect("BYE to the centre");
    centre.reply(server.sip, &bye, 200, "c");
    server.assert_idle();
    // The CDR keeps what the peer sent.
    let cdr = cdrs(&server)
        .into_iter()
        .find(|c| c["dialed"] == "1234501")
        .expect("the peer call's CDR");
    assert_eq!(cdr["mode"], "interconnect");
    assert_eq!(cdr["peer_data"]["X-Peer-Ticket"], "T-1001");
}

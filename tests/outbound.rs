//! Agents dialing out through `[trunk] outbound` against the real server:
//! a callback (回访) to a citizen's mobile within the default permissions,
//! premium and international numbers refused unless listed, emergency
//! numbers always allowed, the same rules on a transfer (REFER), and each
//! outbound call's own CDR. The gateway, the agents and the caller speak
//! real SIP and RTP over loopback.

use yihaotong_testkit as common;

use std::time::{Duration, Instant};

use common::{answer, connected_call, Phone, TestServer};
use yihaotong::sip::auth::Algorithm;

fn agent(server: &TestServer, id: &str, dial: Option<&str>) -> Phone {
    let mut args = vec![
        "agents",
        "add",
        id,
        "--password",
        "s3cret",
        "--queues",
        "main",
    ];
    if let Some(list) = dial {
        args.extend(["--dial", list]);
    }
    let (ok, out) = server.cli(&args);
    assert!(ok, "agents add: {out}");
    let mut phone = Phone::bind(id, "127.0.0.3");
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    phone
}

/// The agent dials `number`; the answer must be a 403 whose Warning
/// contains `why`, and the gateway must not ring.
fn refused(server: &TestServer, phone: &mut Phone, gateway: &mut Phone, number: &str, why: &str) {
    let d = phone.invite_as_agent(server.sip, number, "s3cret");
    let r = phone
        .response(&d.call_id, "INVITE", 200, 5.0)
        .expect("the INVITE is answered");
    assert_eq!(r.status, 403, "{number}");
    let warning = r.headers.get("warning").unwrap_or_default().to_string();
    assert!(
        warning.starts_with("399 ") && warning.contains(why),
        "{number}: {warning}"
    );
    assert!(
        gateway.request("INVITE", 0.3).is_none(),
        "{number} must not go out"
    );
}

/// The agent dials `number`; the gateway is rung for it and answers busy.
fn goes_out_busy(server: &TestServer, phone: &mut Phone, gateway: &mut Phone, number: &str) {
    let d = phone.invite_as_agent(server.sip, number, "s3cret");
    let inv = gateway
        .request("INVITE", 5.0)
        .unwrap_or_else(|| panic!("{number} goes out through the trunk"));
    assert!(
        inv.uri.to_string().starts_with(&format!("sip:{number}@")),
        "{}",
        inv.uri
    );
    gateway.reply(server.sip, &inv, 486, "gw");
    let status = phone.final_status(&d.call_id, "INVITE", 5.0);
    assert!(status.is_some_and(|s| s >= 400), "{number}: {status:?}");
}

/// The CDRs as JSON, once `n` with a non-empty `outbound` are stored.
fn outbound_cdrs(server: &TestServer, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) = server.cli(&["cdrs"]);
        assert!(ok, "{out}");
        let all: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
        let out: Vec<_> = all
            .into_iter()
            .filter(|c| c["outbound"].as_str().is_some_and(|s| !s.is_empty()))
            .collect();
        if out.len() >= n || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn agents_dial_out_within_their_permissions_and_never_to_premium_or_abroad_unlisted() {
    let mut gateway = Phone::new("gateway");
    let outbound = format!("sip:{}", gateway.addr);
    let server = TestServer::start_with(&[("YIHAOTONG_TRUNK__OUTBOUND", outbound.as_str())]);
    let mut a1 = agent(&server, "1001", None);
    let mut a2 = agent(&server, "1002", Some("none"));
    let mut a3 = agent(&server, "1003", Some("mobile,0044"));

    // A callback (回访) to a citizen's mobile: out through the trunk,
    // answered, media both ways, hung up by the agent.
    let mut d = a1.invite_as_agent(server.sip, "13800000001", "s3cret");
    let inv = gateway.request("INVITE", 5.0).expect("the trunk is rung");
    assert!(
        inv.uri.to_string().starts_with("sip:13800000001@"),
        "{}",
        inv.uri
    );
    let citizen = answer(&server, &mut gateway, &inv, "gw");
    let ok = a1
        .response(&d.call_id, "INVITE", 200, 5.0)
        .expect("the agent's call is answered");
    assert_eq!(ok.status, 200);
    a1.ack(server.sip, &mut d, &ok);
    let (agent_got, citizen_got) = std::thread::scope(|s| {
        let other =
            s.spawn(|| gateway.exchange_rtp_of(citizen.remote_rtp.expect("sdp"), 50, 0xc17, 0x55));
        let mine = a1.exchange_rtp_of(d.remote_rtp.expect("sdp"), 50, 0xa9e, 0x77);
        (mine, other.join().expect("thread"))
    });
    assert!(
        agent_got > 30 && citizen_got > 30,
        "agent {agent_got}, citizen {citizen_got}"
    );
    a1.in_dialog(server.sip, &mut d, "BYE", "");
    let bye = gateway.request("BYE", 3.0).expect("BYE to the citizen");
    gateway.reply(server.sip, &bye, 200, "gw");
    assert_eq!(a1.final_status(&d.call_id, "BYE", 3.0), Some(200));

    // Premium-rate and international numbers are refused by default.
    refused(
        &server,
        &mut a1,
        &mut gateway,
        "16812345",
        "premium numbers are refused unless listed",
    );
    refused(
        &server,
        &mut a1,
        &mut gateway,
        "+442071234567",
        "international numbers are refused unless listed",
    );
    refused(
        &server,
        &mut a1,
        &mut gateway,
        "12*9",
        "not a number the trunk dials",
    );
    // An agent with no permissions reaches nothing outside, but an
    // emergency number always goes.
    refused(
        &server,
        &mut a2,
        &mut gateway,
        "13800000001",
        "agent 1002 may not dial mobile",
    );
    goes_out_busy(&server, &mut a2, &mut gateway, "120");
    // A listed prefix opens exactly those international numbers.
    goes_out_busy(&server, &mut a3, &mut gateway, "00442071234567");
    refused(
        &server,
        &mut a3,
        &mut gateway,
        "00332071234567",
        "international",
    );
    refused(
        &server,
        &mut a3,
        &mut gateway,
        "01087654321",
        "agent 1003 may not dial national",
    );

    // Each call that went out has its own CDR with the number's class;
    // refusals placed no call.
    let cdrs = outbound_cdrs(&server, 3);
    let classes: Vec<(&str, &str, &str)> = cdrs
        .iter()
        .map(|c| {
            (
                c["dialed"].as_str().unwrap_or_default(),
                c["outbound"].as_str().unwrap_or_default(),
                c["disposition"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(classes.len(), 3, "{classes:?}");
    assert!(
        classes.contains(&("13800000001", "mobile", "answered")),
        "{classes:?}"
    );
    assert!(
        classes.contains(&("120", "emergency", "failed")),
        "{classes:?}"
    );
    assert!(
        classes.contains(&("00442071234567", "international", "failed")),
        "{classes:?}"
    );
    assert!(cdrs.iter().all(|c| c["hotline"] == "outbound"), "{cdrs:?}");
    // The report keeps them apart from citizens' calls.
    let (ok, out) = server.cli(&["report", "--since", "1d", "--format", "json"]);
    assert!(ok, "{out}");
    let rows: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["key"] == "outbound"))
        .expect("an outbound row");
    assert_eq!(
        (row["calls"].as_u64(), row["outbound"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(row["outbound_answered"].as_u64(), Some(1));
    server.assert_idle();
}

#[test]
fn a_transfer_to_an_outside_number_needs_the_transferring_agents_permission() {
    let mut gateway = Phone::new("gateway");
    let outbound = format!("sip:{}", gateway.addr);
    let server = TestServer::start_with(&[("YIHAOTONG_TRUNK__OUTBOUND", outbound.as_str())]);
    let mut a1 = agent(&server, "1001", Some("none"));
    let mut trunk = Phone::new("13800000003");
    let (mut d, mut leg) = connected_call(&server, &mut trunk, &mut a1, "a1");

    // Agent 1001 may not dial mobiles: its REFER is refused with the reason
    // and the caller stays with it.
    let r = common::refer(&server, &mut a1, &mut leg, "<sip:13900000009@127.0.0.1>");
    assert_eq!(r.status, 403);
    assert!(
        r.headers
            .get("warning")
            .is_some_and(|w| w.contains("agent 1001 may not dial mobile")),
        "{:?}",
        r.headers.get("warning")
    );
    assert!(gateway.request("INVITE", 0.3).is_none());
    let (caller_got, agent_got) = std::thread::scope(|s| {
        let other = s.spawn(|| a1.exchange_rtp_of(leg.remote_rtp.expect("sdp"), 50, 0xa1, 0x55));
        let mine = trunk.exchange_rtp_of(d.remote_rtp.expect("sdp"), 50, 0xc1, 0x77);
        (mine, other.join().expect("thread"))
    });
    assert!(
        caller_got > 30 && agent_got > 30,
        "still bridged: {caller_got}, {agent_got}"
    );

    // With the permission granted (the account rewritten while the server
    // runs), the same transfer goes out through the trunk.
    let (ok, out) = server.cli(&[
        "agents",
        "add",
        "1001",
        "--password",
        "s3cret",
        "--queues",
        "main",
        "--dial",
        "mobile",
    ]);
    assert!(ok, "{out}");
    let r = common::refer(&server, &mut a1, &mut leg, "<sip:13900000009@127.0.0.1>");
    assert_eq!(r.status, 202);
    let inv = gateway.request("INVITE", 5.0).expect("the trunk is rung");
    assert!(
        inv.uri.to_string().starts_with("sip:13900000009@"),
        "{}",
        inv.uri
    );
    // The caller is taken off the agent (re-INVITEs for music) meanwhile.
    while let Some(reinv) = trunk.request("INVITE", 0.5) {
        trunk.reply(server.sip, &reinv, 200, "c");
    }
    let _far = answer(&server, &mut gateway, &inv, "gw");
    // The agent hears NOTIFYs and is hung up.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut hung_up = false;
    while Instant::now() < deadline && !hung_up {
        if let Some(req) = a1.request("NOTIFY", 0.2) {
            a1.reply(server.sip, &req, 200, "a1");
        }
        if let Some(bye) = a1.request("BYE", 0.2) {
            a1.reply(server.sip, &bye, 200, "a1");
            hung_up = true;
        }
    }
    assert!(hung_up, "the transferring agent is hung up");
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    let bye = gateway
        .request("BYE", 3.0)
        .expect("BYE to the outside number");
    gateway.reply(server.sip, &bye, 200, "gw");
    server.assert_idle();
}

//! Call control through the HTTP API on real calls: the trunk caller, the
//! agents' phones and the server speak real SIP and RTP over loopback, the
//! ticket system speaks HTTP. Live calls are listed with their legs and
//! state; data, hold, resume, recording, transfer and hang-up each act on
//! the call, are audited, and end in the CDR; roles and an agent's own
//! calls are enforced; a call in a flow or still ringing can be hung up.

use yihaotong_testkit as common;

use common::{answer, assert_talking, connected_call, talk, Phone, TestServer};
use serde_json::json;
use yihaotong::sip::auth::Algorithm;

fn agent(server: &TestServer, id: &str) -> Phone {
    let mut phone = Phone::bind(id, "127.0.0.3");
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    phone
}

fn post(server: &TestServer, path: &str, token: &str, body: &str) -> (u16, serde_json::Value) {
    server.http("POST", path, Some(token), Some(body))
}

#[test]
fn a_live_call_is_shown_and_controlled_from_data_to_hang_up() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    server.add_agent("1002", "s3cret", "hrss");
    let tickets = server.token("tickets", "ticketing", None);
    let floor = server.token("floor", "supervisor", None);
    let own = server.token("desk-1001", "agent", Some("1001"));
    let other = server.token("desk-1002", "agent", Some("1002"));
    let mut a1 = agent(&server, "1001");
    let mut a2 = agent(&server, "1002");
    let mut trunk = Phone::new("13800000011");
    let (mut d, mut leg1) = connected_call(&server, &mut trunk, &mut a1, "a1");
    let call = format!("/api/v1/calls/{}", d.call_id);
    // The recording starts just after the answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !server.http("GET", &call, Some(&tickets), None).1["recording"].is_string()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // Listed, talking, with both legs.
    let (code, list) = server.http("GET", "/api/v1/calls", Some(&tickets), None);
    assert_eq!(code, 200, "{list}");
    let calls = list.as_array().expect("a list");
    assert_eq!(calls.len(), 1, "{list}");
    let c = &calls[0];
    assert_eq!(c["call_id"], d.call_id.as_str());
    assert_eq!(
        (c["state"].as_str(), c["agent"].as_str()),
        (Some("talking"), Some("1001"))
    );
    assert_eq!(c["caller"], "13800000011");
    let roles: Vec<&str> = c["legs"]
        .as_array()
        .expect("legs")
        .iter()
        .filter_map(|l| l["role"].as_str())
        .collect();
    assert_eq!(roles, ["caller", "agent"], "{c}");
    assert!(c["recording"].is_string(), "agent calls are recorded: {c}");
    // Filters, and an agent sees only its own calls.
    let (_, none) = server.http("GET", "/api/v1/calls?queue=hrss", Some(&tickets), None);
    assert_eq!(none, json!([]));
    let (_, mine) = server.http("GET", "/api/v1/calls?state=talking", Some(&own), None);
    assert_eq!(mine.as_array().map(Vec::len), Some(1));
    let (code, refused) = server.http("GET", "/api/v1/calls?state=dancing", Some(&own), None);
    assert_eq!(code, 400, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("state") && e.contains("talking")),
        "{refused}"
    );
    let (_, theirs) = server.http("GET", "/api/v1/calls", Some(&other), None);
    assert_eq!(theirs, json!([]));
    assert_eq!(server.http("GET", &call, Some(&other), None).0, 404);
    assert_eq!(post(&server, &format!("{call}/hangup"), &other, "").0, 404);
    // A supervisor may transfer but not hang up; nobody without a token.
    assert_eq!(post(&server, &format!("{call}/hangup"), &floor, "").0, 403);
    assert_eq!(
        server.http("POST", &format!("{call}/hangup"), None, None).0,
        401
    );
    assert_eq!(
        post(&server, "/api/v1/calls/no-such-call/hangup", &tickets, "").0,
        404
    );

    // Call data: checked by field, then kept.
    let (code, e) = post(
        &server,
        &format!("{call}/data"),
        &tickets,
        r#"{"data":{"a b":"1"}}"#,
    );
    assert_eq!(code, 400, "{e}");
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|m| m.starts_with("data.a b")),
        "{e}"
    );
    let (code, e) = post(
        &server,
        &format!("{call}/data"),
        &tickets,
        r#"{"ticket":"x"}"#,
    );
    assert_eq!(code, 400, "{e}");
    assert!(
        e["error"].as_str().is_some_and(|m| m.starts_with("body")),
        "{e}"
    );
    let (code, set) = post(
        &server,
        &format!("{call}/data"),
        &tickets,
        r#"{"data":{"ticket":"GD-2026-0001"}}"#,
    );
    assert_eq!(code, 200, "{set}");
    let (_, shown) = server.http("GET", &call, Some(&own), None);
    assert_eq!(shown["data"]["ticket"], "GD-2026-0001", "{shown}");

    // Hold: the caller hears music, the agent nothing; then resume.
    let (code, held) = post(&server, &format!("{call}/hold"), &own, "");
    assert_eq!(code, 200, "{held}");
    let heard = trunk.record_rtp(0.6);
    assert!(
        heard.len() > 10,
        "the held caller got {} packets",
        heard.len()
    );
    let (_, shown) = server.http("GET", &call, Some(&tickets), None);
    assert_eq!(shown["state"], "held");
    assert_eq!(post(&server, &format!("{call}/hold"), &tickets, "").0, 409);
    assert_eq!(
        post(
            &server,
            &format!("{call}/recording"),
            &tickets,
            r#"{"record":false}"#
        )
        .0,
        409
    );
    assert_eq!(
        post(&server, &format!("{call}/resume"), &tickets, "").0,
        200
    );
    assert_eq!(
        post(&server, &format!("{call}/resume"), &tickets, "").0,
        409
    );
    let (caller_got, agent_got) = talk(
        &trunk,
        d.remote_rtp.expect("caller's media"),
        &a1,
        leg1.remote_rtp.expect("agent's media"),
    );
    assert!(
        caller_got > 30 && agent_got > 30,
        "after resume: caller {caller_got}, agent {agent_got}"
    );

    // Recording: stop, refuse a second stop, start again (a new file).
    let (code, stopped) = post(
        &server,
        &format!("{call}/recording"),
        &tickets,
        r#"{"record":false}"#,
    );
    assert_eq!(code, 200, "{stopped}");
    assert_eq!(
        post(
            &server,
            &format!("{call}/recording"),
            &tickets,
            r#"{"record":false}"#
        )
        .0,
        409
    );
    assert_eq!(
        post(
            &server,
            &format!("{call}/recording"),
            &tickets,
            r#"{"recrd":true}"#
        )
        .0,
        400
    );
    let (code, started) = post(
        &server,
        &format!("{call}/recording"),
        &tickets,
        r#"{"record":true}"#,
    );
    assert_eq!(code, 200, "{started}");
    let file = started["recording"].as_str().expect("the file").to_string();
    assert!(std::path::Path::new(&file).exists(), "{file}");

    // Transfer: a target this call may not reach is refused, 1002 is rung
    // (with the call data), answers, and 1001 is let go without NOTIFYs.
    let (code, e) = post(
        &server,
        &format!("{call}/transfer"),
        &floor,
        r#"{"to":"99999"}"#,
    );
    assert_eq!(code, 422, "{e}");
    assert_eq!(
        post(
            &server,
            &format!("{call}/transfer"),
            &floor,
            r#"{"to":"a b"}"#
        )
        .0,
        400
    );
    let (code, t) = post(
        &server,
        &format!("{call}/transfer"),
        &floor,
        r#"{"to":"1002"}"#,
    );
    assert_eq!(code, 200, "{t}");
    let inv = a2.request("INVITE", 5.0).expect("the target agent rings");
    assert_eq!(inv.headers.get("x-data-ticket"), Some("GD-2026-0001"));
    let mut leg2 = answer(&server, &mut a2, &inv, "a2");
    let bye = a1.request("BYE", 3.0).expect("the first agent is let go");
    a1.reply(server.sip, &bye, 200, "a1");
    let _ = &mut leg1;
    let (_, shown) = server.http("GET", &call, Some(&tickets), None);
    assert_eq!(
        (shown["state"].as_str(), shown["agent"].as_str()),
        (Some("talking"), Some("1002")),
        "{shown}"
    );
    let (caller_got, agent_got) = talk(
        &trunk,
        d.remote_rtp.expect("caller's media"),
        &a2,
        leg2.remote_rtp.expect("target's media"),
    );
    assert!(
        caller_got > 30 && agent_got > 30,
        "after transfer: caller {caller_got}, agent {agent_got}"
    );

    // Hang up: both legs get BYE; the call is gone from the list.
    let (code, h) = post(&server, &format!("{call}/hangup"), &tickets, "");
    assert_eq!(code, 200, "{h}");
    let bye = trunk.request("BYE", 3.0).expect("BYE to the caller");
    trunk.reply(server.sip, &bye, 200, "c");
    let bye = a2.request("BYE", 3.0).expect("BYE to the agent");
    a2.reply(server.sip, &bye, 200, "a2");
    let _ = (&mut d, &mut leg2);
    server.assert_idle();
    assert_eq!(server.http("GET", &call, Some(&tickets), None).0, 404);

    // The CDR carries the data, the transfer, and who hung up.
    let (ok, out) = server.cli(&["cdrs"]);
    assert!(ok, "{out}");
    let all: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let cdr = all
        .as_array()
        .and_then(|a| a.iter().find(|c| c["call_id"] == d.call_id.as_str()))
        .expect("the CDR");
    assert_eq!(cdr["data"]["ticket"], "GD-2026-0001", "{cdr}");
    assert_eq!(cdr["transfers"], json!(["1002"]));
    assert_eq!(cdr["hung_up_by"], "api");
    // Every action is in the audit log, with who did it.
    let admin = server.token("ops", "admin", None);
    let (_, audit) = server.http("GET", "/api/v1/audit", Some(&admin), None);
    let actions: Vec<(String, String)> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_string(),
                e["who"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for (action, who) in [
        ("call.data", "tickets (ticketing)"),
        ("call.hold", "desk-1001 (agent)"),
        ("call.resume", "tickets (ticketing)"),
        ("call.record.stop", "tickets (ticketing)"),
        ("call.record.start", "tickets (ticketing)"),
        ("call.transfer", "floor (supervisor)"),
        ("call.hangup", "tickets (ticketing)"),
    ] {
        assert!(
            actions.iter().any(|(a, w)| a == action && w == who),
            "{action} by {who} not in {actions:?}"
        );
    }
}

#[test]
fn a_call_in_a_flow_or_still_ringing_can_be_hung_up() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let tickets = server.token("tickets", "ticketing", None);
    let mut a1 = agent(&server, "1001");

    // In the greeting flow: answered by the flow, so it gets BYE.
    let mut trunk = Phone::new("13800000012");
    let mut d = trunk.invite(server.sip, "12345");
    let ok = trunk
        .response(&d.call_id, "INVITE", 200, 3.0)
        .expect("the flow answers");
    trunk.ack(server.sip, &mut d, &ok);
    let call = format!("/api/v1/calls/{}", d.call_id);
    let (_, shown) = server.http("GET", &call, Some(&tickets), None);
    assert_eq!(shown["state"], "ivr", "{shown}");
    assert_eq!(shown["flow"], "12345", "{shown}");
    // Hold needs an agent on the call.
    assert_eq!(post(&server, &format!("{call}/hold"), &tickets, "").0, 409);
    assert_eq!(
        post(&server, &format!("{call}/hangup"), &tickets, "").0,
        200
    );
    let bye = trunk
        .request("BYE", 3.0)
        .expect("BYE to the caller in the flow");
    trunk.reply(server.sip, &bye, 200, "c");

    // Ringing an agent, unanswered: the caller gets 480, the agent CANCEL.
    let mut trunk = Phone::new("13800000013");
    let d = trunk.invite(server.sip, "123450");
    let inv = a1.request("INVITE", 5.0).expect("the agent rings");
    a1.reply(server.sip, &inv, 180, "a1");
    let call = format!("/api/v1/calls/{}", d.call_id);
    let (_, shown) = server.http("GET", &call, Some(&tickets), None);
    assert_eq!(
        (shown["state"].as_str(), shown["agent"].as_str()),
        (Some("ringing"), Some("1001")),
        "{shown}"
    );
    assert_eq!(
        post(&server, &format!("{call}/hangup"), &tickets, "").0,
        200
    );
    let cancel = a1.request("CANCEL", 3.0).expect("CANCEL to the agent");
    a1.reply(server.sip, &cancel, 200, "a1");
    a1.reply(server.sip, &inv, 487, "a1");
    assert_eq!(trunk.final_status(&d.call_id, "INVITE", 3.0), Some(480));
    server.assert_idle();
    let (ok, out) = server.cli(&["cdrs"]);
    assert!(ok, "{out}");
    let all: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let by: Vec<&str> = all
        .as_array()
        .expect("CDRs")
        .iter()
        .filter_map(|c| c["hung_up_by"].as_str())
        .collect();
    assert_eq!(by.iter().filter(|b| **b == "api").count(), 2, "{all}");
}

/// Polls the API's CDRs until the one for `call_id` is stored.
fn cdr_of(server: &TestServer, token: &str, call_id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, page) = server.http("GET", "/api/v1/cdrs?since=1h&limit=1000", Some(token), None);
        let found = page["items"]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["call_id"] == call_id).cloned());
        if let Some(c) = found {
            return c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no CDR for {call_id}: {page}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn the_api_places_a_callback_for_an_agent_or_a_queue_through_the_trunk() {
    let mut gateway = Phone::new("gateway");
    let outbound = format!("sip:{}", gateway.addr);
    let server = TestServer::start_with(&[("YIHAOTONG_TRUNK__OUTBOUND", outbound.as_str())]);
    server.add_agent("1001", "s3cret", "main");
    let tickets = server.token("tickets", "ticketing", None);
    let floor = server.token("floor", "supervisor", None);
    let own = server.token("desk-1001", "agent", Some("1001"));
    let mut a1 = agent(&server, "1001");

    // For agent 1001: the agent rings first, the ticket on its screen...
    let (code, placed) = post(
        &server,
        "/api/v1/calls",
        &tickets,
        r#"{"to": "13800000021", "agent": "1001", "data": {"ticket": "GD-2026-0042"}}"#,
    );
    assert_eq!(code, 202, "{placed}");
    let call_id = placed["call_id"].as_str().expect("a Call-ID").to_string();
    let inv = a1.request("INVITE", 5.0).expect("the agent rings");
    assert_eq!(inv.headers.get("x-data-ticket"), Some("GD-2026-0042"));
    assert_eq!(inv.headers.get("x-originated"), Some("api"));
    let mut leg = answer(&server, &mut a1, &inv, "a1");
    // ...then the citizen through the trunk, shown the hotline's number.
    let out = gateway.request("INVITE", 5.0).expect("the trunk is rung");
    assert!(
        out.uri.to_string().starts_with("sip:13800000021@"),
        "{}",
        out.uri
    );
    assert!(
        out.headers
            .get("from")
            .is_some_and(|f| f.contains("sip:12345@")),
        "{:?}",
        out.headers.get("from")
    );
    let citizen = answer(&server, &mut gateway, &out, "gw");
    let (agent_got, citizen_got) = talk(
        &a1,
        leg.remote_rtp.expect("agent's media"),
        &gateway,
        citizen.remote_rtp.expect("citizen's media"),
    );
    assert!(
        agent_got > 30 && citizen_got > 30,
        "{agent_got} {citizen_got}"
    );
    let (_, shown) = server.http(
        "GET",
        &format!("/api/v1/calls/{call_id}"),
        Some(&tickets),
        None,
    );
    assert_eq!(shown["state"], "talking", "{shown}");
    a1.in_dialog(server.sip, &mut leg, "BYE", "");
    let bye = gateway.request("BYE", 3.0).expect("BYE to the citizen");
    gateway.reply(server.sip, &bye, 200, "gw");
    let cdr = cdr_of(&server, &tickets, &call_id);
    assert_eq!(cdr["hotline"], "outbound", "{cdr}");
    assert_eq!(cdr["outbound"], "mobile", "{cdr}");
    assert_eq!(cdr["agent"], "1001", "{cdr}");
    assert_eq!(cdr["disposition"], "answered", "{cdr}");
    assert_eq!(cdr["data"]["ticket"], "GD-2026-0042", "{cdr}");

    // For a queue: its next free agent (an agent token may place calls
    // only for itself); the citizen does not answer: not answered.
    let (code, placed) = post(
        &server,
        "/api/v1/calls",
        &own,
        r#"{"to": "13800000022", "hotline": "12319"}"#,
    );
    assert_eq!(code, 202, "{placed}");
    let second = placed["call_id"].as_str().expect("a Call-ID").to_string();
    let inv = a1.request("INVITE", 5.0).expect("the agent rings");
    let mut leg = answer(&server, &mut a1, &inv, "a2");
    let out = gateway.request("INVITE", 5.0).expect("the trunk is rung");
    assert!(out
        .headers
        .get("from")
        .is_some_and(|f| f.contains("sip:12319@")));
    gateway.reply(server.sip, &out, 486, "gw");
    let bye = a1.request("BYE", 5.0).expect("the agent is let go");
    a1.reply(server.sip, &bye, 200, "a2");
    let _ = &mut leg;
    let cdr = cdr_of(&server, &tickets, &second);
    assert!(
        cdr["answered"].is_null(),
        "the citizen never answered: {cdr}"
    );
    let (code, placed) = post(
        &server,
        "/api/v1/calls",
        &tickets,
        r#"{"to": "13800000023", "queue": "main"}"#,
    );
    assert_eq!(code, 202, "{placed}");
    let inv = a1.request("INVITE", 5.0).expect("the queue's agent rings");
    a1.reply(server.sip, &inv, 486, "a3");
    assert!(
        gateway.request("INVITE", 0.5).is_none(),
        "no agent, no call to the citizen"
    );

    // Refusals, each naming why.
    for (token, body, status, why) in [
        (
            &tickets,
            r#"{"to": "16800000000", "agent": "1001"}"#,
            422,
            "premium",
        ),
        (
            &tickets,
            r#"{"to": "12345", "agent": "1001"}"#,
            422,
            "our own",
        ),
        (
            &tickets,
            r#"{"to": "13800000024", "agent": "9999"}"#,
            422,
            "agent",
        ),
        (
            &tickets,
            r#"{"to": "13800000024", "queue": "nowhere"}"#,
            422,
            "queue",
        ),
        (&tickets, r#"{"to": "13800000024"}"#, 400, "agent"),
        (
            &tickets,
            r#"{"to": "13800000024", "agent": "1001", "data": {"bad name": "x"}}"#,
            400,
            "data",
        ),
        (&tickets, r#"{"number": "13800000024"}"#, 400, "body"),
        (
            &own,
            r#"{"to": "13800000024", "agent": "1002"}"#,
            403,
            "own",
        ),
        (
            &floor,
            r#"{"to": "13800000024", "agent": "1001"}"#,
            403,
            "supervisor",
        ),
    ] {
        let (code, answer) = post(&server, "/api/v1/calls", token, body);
        assert_eq!(code, status, "{body}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains(why)),
            "{body}: {answer}"
        );
    }
    assert!(
        gateway.request("INVITE", 0.3).is_none(),
        "nothing refused went out"
    );
    let (_, audit) = server.http(
        "GET",
        "/api/v1/audit?since=1h",
        Some(&server.token("ops", "admin", None)),
        None,
    );
    let placed = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "call.originate")
        .count();
    assert!(placed >= 3, "{audit}");
}

/// Waits (up to 3 s) until the call's view is in `state`; returns the view.
fn view_in(server: &TestServer, token: &str, call: &str, state: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let (_, v) = server.http("GET", call, Some(token), None);
        if v["state"] == state || std::time::Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The ticket system (`token`) asks for an attended transfer of `call` to
/// `to`; the target's `phone` rings and answers; the call is consulting.
/// Returns the target's dialog.
fn consult_answered(
    server: &TestServer,
    call: &str,
    token: &str,
    to: &str,
    phone: &mut Phone,
    tag: &str,
) -> common::PhoneDialog {
    let body = format!(r#"{{"to":"{to}","attended":true}}"#);
    let (code, t) = post(server, &format!("{call}/transfer"), token, &body);
    assert_eq!(
        (code, t["state"].as_str()),
        (200, Some("consulting")),
        "{t}"
    );
    let inv = phone.request("INVITE", 5.0).expect("the target rings");
    let leg = answer(server, phone, &inv, tag);
    let shown = view_in(server, token, call, "consulting");
    assert_eq!(shown["state"], "consulting", "{shown}");
    leg
}

/// The call is talking again with `agent` on it, and the caller and the
/// agent's phone hear each other.
#[allow(clippy::too_many_arguments)]
fn talking_with(
    server: &TestServer,
    token: &str,
    call: &str,
    agent: &str,
    caller: (&Phone, std::net::SocketAddr),
    phone: (&Phone, std::net::SocketAddr),
    what: &str,
) {
    let shown = view_in(server, token, call, "talking");
    assert_eq!(
        (shown["state"].as_str(), shown["agent"].as_str()),
        (Some("talking"), Some(agent)),
        "{what}: {shown}"
    );
    assert_talking(caller.0, caller.1, phone.0, phone.1, what);
}

#[test]
fn an_attended_transfer_consults_the_target_before_the_caller_is_handed_over() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    server.add_agent("1002", "s3cret", "hrss");
    server.add_agent("1003", "s3cret", "hrss");
    let tickets = server.token("tickets", "ticketing", None);
    let own = server.token("desk-1001", "agent", Some("1001"));
    let target_token = server.token("desk-1002", "agent", Some("1002"));
    let mut a1 = agent(&server, "1001");
    let mut a2 = agent(&server, "1002");
    let mut a3 = agent(&server, "1003");
    let mut trunk = Phone::new("13800000012");
    let (mut d, mut leg1) = connected_call(&server, &mut trunk, &mut a1, "a1");
    let caller_media = d.remote_rtp.expect("caller's media");
    let a1_media = leg1.remote_rtp.expect("agent's media");
    let call = format!("/api/v1/calls/{}", d.call_id);
    let transfer = format!("{call}/transfer");
    let attended = |to: &str| format!(r#"{{"to":"{to}","attended":true}}"#);

    // Nothing to complete or cancel yet; a queue cannot be consulted.
    assert_eq!(
        post(&server, &format!("{transfer}/complete"), &own, "").0,
        409
    );
    assert_eq!(
        post(&server, &format!("{transfer}/cancel"), &own, "").0,
        409
    );
    let (code, e) = post(&server, &transfer, &own, &attended("hrss"));
    assert_eq!(code, 422, "{e}");
    assert!(
        e["error"].as_str().is_some_and(|m| m.contains("queue")),
        "{e}"
    );

    // 1) Consult 1002, then cancel: the caller is back with 1001.
    let mut leg2 = consult_answered(&server, &call, &own, "1002", &mut a2, "a2");
    let heard = trunk.record_rtp(0.5);
    assert!(heard.len() > 10, "the caller hears music: {}", heard.len());
    let (_, shown) = server.http("GET", &call, Some(&tickets), None);
    assert_eq!(shown["agent"], "1001,1002", "{shown}");
    let roles: Vec<&str> = shown["legs"]
        .as_array()
        .expect("legs")
        .iter()
        .filter_map(|l| l["role"].as_str())
        .collect();
    assert_eq!(roles, ["caller", "agent", "agent"], "{shown}");
    // The consulted agent sees the call too (it may be given it).
    assert_eq!(server.http("GET", &call, Some(&target_token), None).0, 200);
    let a2_media = leg2.remote_rtp.expect("target's media");
    assert_talking(&a1, a1_media, &a2, a2_media, "agent and target consult");
    assert_eq!(post(&server, &transfer, &own, &attended("1003")).0, 409);
    let (code, c) = post(&server, &format!("{transfer}/cancel"), &own, "");
    assert_eq!(code, 200, "{c}");
    let bye = a2.request("BYE", 3.0).expect("the target is let go");
    a2.reply(server.sip, &bye, 200, "a2");
    let _ = &mut leg2;
    talking_with(
        &server,
        &tickets,
        &call,
        "1001",
        (&trunk, caller_media),
        (&a1, a1_media),
        "back with the agent after cancel",
    );

    // 2) Consult 1003, whose phone declines: back with 1001.
    assert_eq!(post(&server, &transfer, &own, &attended("1003")).0, 200);
    let inv = a3.request("INVITE", 5.0).expect("1003 rings");
    a3.reply(server.sip, &inv, 486, "a3");
    let _ = a3.request("ACK", 3.0);
    talking_with(
        &server,
        &tickets,
        &call,
        "1001",
        (&trunk, caller_media),
        (&a1, a1_media),
        "back with the agent after a decline",
    );

    // 3) Consult 1002 again and complete through the API: 1001 is let go,
    // the caller talks to 1002 on the addresses both phones already have.
    let mut leg2 = consult_answered(&server, &call, &tickets, "1002", &mut a2, "a2b");
    let a2_media = leg2.remote_rtp.expect("target's media");
    let (code, c) = post(&server, &format!("{transfer}/complete"), &target_token, "");
    assert_eq!(code, 200, "{c}");
    let bye = a1.request("BYE", 3.0).expect("the first agent is let go");
    a1.reply(server.sip, &bye, 200, "a1");
    let _ = &mut leg1;
    talking_with(
        &server,
        &tickets,
        &call,
        "1002",
        (&trunk, caller_media),
        (&a2, a2_media),
        "the caller with 1002 after complete",
    );

    // 4) 1002 consults 1003 and hangs up: that completes the transfer.
    let leg3 = consult_answered(&server, &call, &tickets, "1003", &mut a3, "a3b");
    a2.in_dialog(server.sip, &mut leg2, "BYE", "");
    assert_eq!(a2.final_status(&leg2.call_id, "BYE", 3.0), Some(200));
    talking_with(
        &server,
        &tickets,
        &call,
        "1003",
        (&trunk, caller_media),
        (&a3, leg3.remote_rtp.expect("1003's media")),
        "the caller with 1003 after 1002 hung up",
    );

    // 5) 1003 consults 1001; the caller hangs up meanwhile: 1003 and 1001
    // go on talking until 1001 hangs up, then 1003 gets BYE.
    let mut leg1 = consult_answered(&server, &call, &tickets, "1001", &mut a1, "a1c");
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    assert_eq!(trunk.final_status(&d.call_id, "BYE", 3.0), Some(200));
    assert_eq!(
        post(&server, &format!("{transfer}/complete"), &tickets, "").0,
        409,
        "nobody left to transfer"
    );
    assert_talking(
        &a3,
        leg3.remote_rtp.expect("1003's media"),
        &a1,
        leg1.remote_rtp.expect("1001's media"),
        "the consultation outlives the caller",
    );
    a1.in_dialog(server.sip, &mut leg1, "BYE", "");
    assert_eq!(a1.final_status(&leg1.call_id, "BYE", 3.0), Some(200));
    let bye = a3.request("BYE", 3.0).expect("1003 is let go");
    a3.reply(server.sip, &bye, 200, "a3b");
    server.assert_idle();

    // The CDR has the two transfers that happened, and who hung up.
    let cdr = cdr_of(&server, &tickets, &d.call_id);
    assert_eq!(cdr["transfers"], json!(["1002", "1003"]), "{cdr}");
    assert_eq!(cdr["hung_up_by"], "caller", "{cdr}");
    let actions = server.audit_actions();
    for action in [
        "call.transfer.attended",
        "call.transfer.cancel",
        "call.transfer.complete",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} not in {actions:?}"
        );
    }
}

#[test]
fn an_attended_transfer_is_cancelled_while_ringing_or_goes_on_blind_when_the_agent_leaves() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    server.add_agent("1002", "s3cret", "hrss");
    let tickets = server.token("tickets", "ticketing", None);
    let mut a1 = agent(&server, "1001");
    let mut a2 = agent(&server, "1002");
    let mut trunk = Phone::new("13800000013");
    let (mut d, mut leg1) = connected_call(&server, &mut trunk, &mut a1, "a1");
    let caller_media = d.remote_rtp.expect("caller's media");
    let a1_media = leg1.remote_rtp.expect("agent's media");
    let call = format!("/api/v1/calls/{}", d.call_id);
    let attended = r#"{"to":"1002","attended":true}"#;

    // Cancelled while the target rings: it gets CANCEL, the caller is back.
    assert_eq!(
        post(&server, &format!("{call}/transfer"), &tickets, attended).0,
        200
    );
    let inv = a2.request("INVITE", 5.0).expect("the target rings");
    a2.reply(server.sip, &inv, 180, "a2");
    let _ = view_in(&server, &tickets, &call, "ringing");
    let (code, c) = post(&server, &format!("{call}/transfer/cancel"), &tickets, "");
    assert_eq!(code, 200, "{c}");
    let cancel = a2.request("CANCEL", 3.0).expect("CANCEL to the target");
    a2.reply(server.sip, &cancel, 200, "a2");
    a2.reply(server.sip, &inv, 487, "a2");
    assert!(a2.request("ACK", 3.0).is_some(), "the 487 is acknowledged");
    talking_with(
        &server,
        &tickets,
        &call,
        "1001",
        (&trunk, caller_media),
        (&a1, a1_media),
        "back with the agent after a cancel while ringing",
    );

    // The agent hangs up while the target rings: the transfer goes on
    // blind, and the target's answer takes the caller.
    assert_eq!(
        post(&server, &format!("{call}/transfer"), &tickets, attended).0,
        200
    );
    let inv = a2.request("INVITE", 5.0).expect("the target rings again");
    a2.reply(server.sip, &inv, 180, "a2b");
    let _ = view_in(&server, &tickets, &call, "ringing");
    a1.in_dialog(server.sip, &mut leg1, "BYE", "");
    assert_eq!(a1.final_status(&leg1.call_id, "BYE", 3.0), Some(200));
    let leg2 = answer(&server, &mut a2, &inv, "a2b");
    talking_with(
        &server,
        &tickets,
        &call,
        "1002",
        (&trunk, caller_media),
        (&a2, leg2.remote_rtp.expect("target's media")),
        "the caller with the target after the agent left",
    );
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    assert_eq!(trunk.final_status(&d.call_id, "BYE", 3.0), Some(200));
    let bye = a2.request("BYE", 3.0).expect("the target is let go");
    a2.reply(server.sip, &bye, 200, "a2b");
    server.assert_idle();
    let cdr = cdr_of(&server, &tickets, &d.call_id);
    assert_eq!(cdr["transfers"], json!(["1002"]), "{cdr}");
    assert_eq!(cdr["hung_up_by"], "caller", "{cdr}");
}

#[test]
fn the_api_calls_a_citizen_into_a_satisfaction_survey_flow() {
    let mut gateway = Phone::new("gateway");
    let outbound = format!("sip:{}", gateway.addr);
    let server = TestServer::start_with(&[("YIHAOTONG_TRUNK__OUTBOUND", outbound.as_str())]);
    server.add_agent("1001", "s3cret", "main");
    let tickets = server.token("tickets", "ticketing", None);
    let own = server.token("desk-1001", "agent", Some("1001"));
    let survey =
        r#"{"to": "13800000031", "flow": "callback-survey", "data": {"ticket": "GD-2026-0077"}}"#;

    // Refused: a flow that is not loaded, two targets, an agent token.
    let (code, e) = post(
        &server,
        "/api/v1/calls",
        &tickets,
        r#"{"to": "13800000031", "flow": "no-such-flow"}"#,
    );
    assert_eq!(code, 422, "{e}");
    assert!(
        e["error"].as_str().is_some_and(|m| m.contains("flow")),
        "{e}"
    );
    let (code, e) = post(
        &server,
        "/api/v1/calls",
        &tickets,
        r#"{"to": "13800000031", "flow": "callback-survey", "queue": "main"}"#,
    );
    assert_eq!(code, 400, "{e}");
    assert_eq!(post(&server, "/api/v1/calls", &own, survey).0, 403);

    // The citizen is rung showing 12345, answers, hears the question and
    // presses 1 (RFC 4733): thanked and let go.
    let (code, placed) = post(&server, "/api/v1/calls", &tickets, survey);
    assert_eq!(code, 202, "{placed}");
    let call_id = placed["call_id"].as_str().expect("a Call-ID").to_string();
    let out = gateway.request("INVITE", 5.0).expect("the trunk is rung");
    assert!(
        out.uri.to_string().starts_with("sip:13800000031@"),
        "{}",
        out.uri
    );
    assert!(out
        .headers
        .get("from")
        .is_some_and(|f| f.contains("sip:12345@")));
    let citizen = answer(&server, &mut gateway, &out, "gw");
    let media = citizen.remote_rtp.expect("our media address");
    let heard = gateway.record_rtp(0.6);
    assert!(heard.len() > 15, "the question is played: {}", heard.len());
    let shown = view_in(
        &server,
        &tickets,
        &format!("/api/v1/calls/{call_id}"),
        "ivr",
    );
    assert_eq!(shown["flow"], "callback-survey", "{shown}");
    gateway.press_rfc4733(media, '1', 101, 160_000);
    let bye = gateway.request("BYE", 10.0).expect("thanked, then BYE");
    gateway.reply(server.sip, &bye, 200, "gw");
    server.assert_idle();
    let cdr = cdr_of(&server, &tickets, &call_id);
    assert_eq!(cdr["hotline"], "outbound", "{cdr}");
    assert_eq!(cdr["flow"], "callback-survey", "{cdr}");
    assert_eq!(cdr["keys"], "1", "{cdr}");
    assert_eq!(cdr["vars"]["satisfaction"], "satisfied", "{cdr}");
    assert_eq!(cdr["data"]["ticket"], "GD-2026-0077", "{cdr}");
    assert!(cdr["answered"].is_u64(), "the citizen answered: {cdr}");
}

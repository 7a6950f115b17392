//! The HTTP admin and CTI API against the real server: bearer tokens made by
//! the CLI and kept hashed in sled, each role against each endpoint, the
//! token lifecycle, pagination, bad input named by field, an agent state
//! change reaching the desk and the audit log.

use yihaotong_testkit as common;

use common::{connected_call, Phone, TestServer};
use yihaotong::sip::auth::Algorithm;

/// A trunk call from `caller` answered by `phone`'s agent; the caller hangs up.
fn answered_and_hung_up(server: &TestServer, phone: &mut Phone, caller: &str) {
    let mut trunk = Phone::new(caller);
    let (mut d, _leg) = connected_call(server, &mut trunk, phone, "a1");
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    let bye = phone.request("BYE", 3.0).expect("BYE to the agent");
    phone.reply(server.sip, &bye, 200, "a1");
    assert_eq!(trunk.final_status(&d.call_id, "BYE", 3.0), Some(200));
}

/// A trunk call from `trunk` answered by `phone`'s agent, with RTP both
/// ways through the relay (50 packets each); the caller's dialog.
fn talking_call(server: &TestServer, trunk: &mut Phone, phone: &mut Phone) -> common::PhoneDialog {
    let (d, leg) = connected_call(server, trunk, phone, "a1");
    let (caller_got, agent_got) = common::talk(
        trunk,
        d.remote_rtp.expect("caller's media"),
        phone,
        leg.remote_rtp.expect("agent's media"),
    );
    assert!(
        caller_got > 30 && agent_got > 30,
        "{caller_got} {agent_got}"
    );
    d
}

#[test]
fn health_and_readiness_need_no_token_everything_else_does() {
    let server = TestServer::start();
    assert_eq!(server.http("GET", "/healthz", None, None).0, 200);
    let (code, ready) = server.http("GET", "/readyz", None, None);
    assert_eq!(
        (code, &ready["ready"]),
        (200, &serde_json::json!(true)),
        "{ready}"
    );
    for path in [
        "/api/v1/status",
        "/api/v1/agents",
        "/api/v1/routes",
        "/api/v1/cdrs",
    ] {
        let (code, body) = server.http("GET", path, None, None);
        assert_eq!(code, 401, "{path}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("bearer")),
            "{body}"
        );
        let (code, _) = server.http("GET", path, Some("yht_made-up"), None);
        assert_eq!(code, 401, "{path} with a made-up token");
    }
    assert_eq!(server.http("GET", "/api/v1/nothing", None, None).0, 404);
    // The OpenAPI document describes every operation, with the bearer scheme.
    let (code, doc) = server.http("GET", "/openapi.json", None, None);
    assert_eq!(code, 200);
    for path in [
        "/readyz",
        "/metrics",
        "/events",
        "/api/v1/status",
        "/api/v1/agents",
        "/api/v1/agents/{id}/state",
        "/api/v1/routes",
        "/api/v1/cdrs",
        "/api/v1/audit",
        "/api/v1/report",
        "/api/v1/queue-log",
        "/api/v1/queues",
        "/api/v1/flows",
        "/api/v1/flows/validate",
        "/api/v1/flows/reload",
        "/api/v1/recordings",
        "/api/v1/recordings/{id}",
        "/api/v1/calls",
        "/api/v1/calls/{id}",
        "/api/v1/calls/{id}/hangup",
        "/api/v1/calls/{id}/hold",
        "/api/v1/calls/{id}/resume",
        "/api/v1/calls/{id}/recording",
        "/api/v1/calls/{id}/transfer",
        "/api/v1/calls/{id}/data",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the document"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[test]
fn each_role_reaches_what_it_may_and_is_refused_the_rest() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    server.add_agent("1002", "s3cret", "main");
    let admin = server.token("ops", "admin", None);
    let supervisor = server.token("floor", "supervisor", None);
    let ticketing = server.token("tickets", "ticketing", None);
    let agent = server.token("seat-1001", "agent", Some("1001"));
    // An agent token must name a real agent; names are unique.
    let (ok, out) = server.cli(&["tokens", "add", "x", "--role", "agent"]);
    assert!(!ok && out.contains("--agent"), "{out}");
    let (ok, out) = server.cli(&["tokens", "add", "ops", "--role", "admin"]);
    assert!(!ok && out.contains("exists"), "{out}");

    // (path, admin, supervisor, ticketing, agent): the status each gets.
    let matrix = [
        ("/api/v1/status", [200, 200, 403, 403]),
        ("/api/v1/agents", [200, 200, 403, 200]),
        ("/api/v1/routes", [200, 200, 200, 403]),
        ("/api/v1/cdrs", [200, 200, 200, 200]),
        ("/api/v1/audit", [200, 403, 403, 403]),
    ];
    for (path, want) in matrix {
        for (token, code) in [&admin, &supervisor, &ticketing, &agent].iter().zip(want) {
            let (got, body) = server.http("GET", path, Some(token), None);
            assert_eq!(got, code, "{path}: {body}");
            if code == 403 {
                assert!(
                    body["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("may not")),
                    "{body}"
                );
            }
        }
    }
    // An agent sees itself only.
    let (_, list) = server.http("GET", "/api/v1/agents", Some(&agent), None);
    let ids: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert_eq!(ids, ["1001"]);
    let (_, list) = server.http("GET", "/api/v1/agents", Some(&supervisor), None);
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    // The number plan as the CLI lists it.
    let (_, routes) = server.http("GET", "/api/v1/routes", Some(&ticketing), None);
    assert!(routes
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["number"] == "12345")));

    // Agent states: supervisors for anyone, an agent for itself only, and
    // each change is in the audit log with who made it.
    let body = r#"{"state":"break","reason":"lunch"}"#;
    let (code, out) = server.http(
        "POST",
        "/api/v1/agents/1002/state",
        Some(&agent),
        Some(body),
    );
    assert_eq!(code, 403, "{out}");
    let (code, out) = server.http(
        "POST",
        "/api/v1/agents/1002/state",
        Some(&ticketing),
        Some(body),
    );
    assert_eq!(code, 403, "{out}");
    let (code, out) = server.http(
        "POST",
        "/api/v1/agents/1002/state",
        Some(&supervisor),
        Some(body),
    );
    assert_eq!(code, 200, "{out}");
    let (code, out) = server.http(
        "POST",
        "/api/v1/agents/1001/state",
        Some(&agent),
        Some(r#"{"state":"available"}"#),
    );
    assert_eq!(code, 200, "{out}");
    let (_, list) = server.http("GET", "/api/v1/agents", Some(&admin), None);
    let state_of = |id: &str| {
        list.as_array()
            .and_then(|l| l.iter().find(|a| a["id"] == id))
            .map(|a| {
                (
                    a["state"].as_str().unwrap_or("").to_string(),
                    a["reason"].clone(),
                )
            })
    };
    assert_eq!(
        state_of("1002"),
        Some(("on-break".into(), serde_json::json!("lunch"))),
        "{list}"
    );
    let (_, audit) = server.http("GET", "/api/v1/audit", Some(&admin), None);
    let entries: Vec<(&str, &str, &str)> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| {
            (
                e["who"].as_str().unwrap_or(""),
                e["action"].as_str().unwrap_or(""),
                e["target"].as_str().unwrap_or(""),
            )
        })
        .collect();
    // The set-up above went through the CLI, audited as such.
    assert!(
        entries
            .iter()
            .any(|(who, action, target)| who.starts_with("cli:")
                && *action == "agent.set"
                && *target == "1001"),
        "{entries:?}"
    );
    let by_tokens: Vec<_> = entries
        .iter()
        .filter(|(who, _, _)| !who.starts_with("cli:"))
        .cloned()
        .collect();
    assert_eq!(
        by_tokens,
        [
            ("floor (supervisor)", "agent.state", "1002"),
            ("seat-1001 (agent)", "agent.state", "1001")
        ],
        "refusals change nothing and are not actions"
    );

    // Bad input is a 400 naming the field.
    let cases = [
        (r#"{"state":"napping"}"#, "state: "),
        (r#"{"state":"break","reason":"a b"}"#, "reason: "),
        (r#"{"state":"break","colour":"red"}"#, "body: "),
        ("not json", "body: "),
    ];
    for (body, field) in cases {
        let (code, out) = server.http(
            "POST",
            "/api/v1/agents/1001/state",
            Some(&admin),
            Some(body),
        );
        assert_eq!(code, 400, "{body}: {out}");
        assert!(
            out["error"].as_str().is_some_and(|e| e.starts_with(field)),
            "{body}: {out}"
        );
    }
    let (code, out) = server.http("GET", "/api/v1/cdrs?since=yesterday", Some(&admin), None);
    assert_eq!(code, 400);
    assert!(
        out["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("since: ")),
        "{out}"
    );
    let (code, out) = server.http("GET", "/api/v1/cdrs?limit=100000", Some(&admin), None);
    assert_eq!(code, 400);
    assert!(
        out["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("limit: ")),
        "{out}"
    );

    // Revoked: the next request is refused; the others still work.
    let (ok, out) = server.cli(&["tokens", "revoke", "floor"]);
    assert!(ok, "{out}");
    assert_eq!(
        server
            .http("GET", "/api/v1/agents", Some(&supervisor), None)
            .0,
        401
    );
    assert_eq!(
        server.http("GET", "/api/v1/agents", Some(&admin), None).0,
        200
    );
    let (ok, out) = server.cli(&["tokens", "list"]);
    assert!(ok, "{out}");
    assert!(!out.contains("yht_"), "secrets are never listed: {out}");
    let names: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(names.as_array().map(Vec::len), Some(3), "{out}");
}

#[test]
fn call_records_come_in_pages_and_an_agent_reads_only_its_own() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let admin = server.token("ops", "admin", None);
    server.add_agent("1002", "s3cret", "main");
    let own = server.token("seat-1002", "agent", Some("1002"));
    let mut phone = Phone::bind("1001", "127.0.0.3");
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let _ = server.cli(&["agents", "state", "1002", "logged-out"]);
    // Three calls answered by 1001.
    for i in 0..3 {
        answered_and_hung_up(&server, &mut phone, &format!("1380000009{i}"));
    }
    server.assert_idle();
    let (code, page) = server.http("GET", "/api/v1/cdrs?since=1h&limit=2", Some(&admin), None);
    assert_eq!(code, 200, "{page}");
    assert_eq!(
        (
            page["total"].as_u64(),
            page["items"].as_array().map(Vec::len)
        ),
        (Some(3), Some(2))
    );
    let (_, next) = server.http(
        "GET",
        "/api/v1/cdrs?since=1h&limit=2&offset=2",
        Some(&admin),
        None,
    );
    assert_eq!(next["items"].as_array().map(Vec::len), Some(1), "{next}");
    let first = page["items"][0]["call_id"].clone();
    assert!(next["items"]
        .as_array()
        .expect("items")
        .iter()
        .all(|c| c["call_id"] != first));
    // The KPI report as JSON: by agent, 1001 answered all three.
    let (code, rows) = server.http(
        "GET",
        "/api/v1/report?since=1h&by=agent",
        Some(&admin),
        None,
    );
    assert_eq!(code, 200, "{rows}");
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["key"] == "1001"))
        .expect("a row for 1001");
    assert_eq!(row["answered"].as_u64(), Some(3), "{rows}");
    let (code, out) = server.http("GET", "/api/v1/report?by=weekday", Some(&admin), None);
    assert_eq!(code, 400);
    assert!(
        out["error"].as_str().is_some_and(|e| e.starts_with("by: ")),
        "{out}"
    );
    assert_eq!(
        server.http("GET", "/api/v1/report", Some(&own), None).0,
        403
    );
    // 1002 answered none of them.
    let (code, mine) = server.http("GET", "/api/v1/cdrs?since=1h", Some(&own), None);
    assert_eq!(code, 200);
    assert_eq!(mine["total"].as_u64(), Some(0), "{mine}");

    // The queue log: three CONNECTs by 1001, as JSON lines, filtered and paged.
    let (code, log) = server.http(
        "GET",
        "/api/v1/queue-log?since=1h&agent=1001&limit=1000",
        Some(&admin),
        None,
    );
    assert_eq!(code, 200, "{log}");
    let lines = log["items"].as_array().expect("items");
    let connects = lines.iter().filter(|l| l["event"] == "CONNECT").count();
    assert_eq!(connects, 3, "{log}");
    assert!(lines.iter().all(|l| l["agent"] == "1001"), "{log}");
    let (_, one) = server.http(
        "GET",
        "/api/v1/queue-log?since=1h&limit=1",
        Some(&admin),
        None,
    );
    assert_eq!(one["items"].as_array().map(Vec::len), Some(1), "{one}");
    let (_, theirs) = server.http(
        "GET",
        "/api/v1/queue-log?since=1h&agent=1001",
        Some(&own),
        None,
    );
    assert!(
        theirs["items"]
            .as_array()
            .is_some_and(|l| l.iter().all(|l| l["agent"] == "1002")),
        "an agent reads only its own lines: {theirs}"
    );
    assert_eq!(
        server
            .http("GET", "/api/v1/queue-log?limit=x", Some(&admin), None)
            .0,
        400
    );
}

#[test]
fn metrics_count_calls_by_hotline_and_show_agents_and_queues() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let mut phone = Phone::bind("1001", "127.0.0.3");
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    // A call that talks both ways; while it is up, it shows by state.
    let mut trunk = Phone::new("13800000095");
    let mut d = talking_call(&server, &mut trunk, &mut phone);
    let (_, during) = server.http_text("GET", "/metrics", None, None);
    for want in [
        "yihaotong_calls{state=\"talking\"} 1",
        "yihaotong_calls{state=\"queued\"} 0",
    ] {
        assert!(
            during.lines().any(|l| l == want),
            "missing {want:?} in:\n{during}"
        );
    }
    assert!(
        during
            .lines()
            .any(|l| l.starts_with("yihaotong_sip_transactions ") && !l.ends_with(" 0")),
        "{during}"
    );
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    let bye = phone.request("BYE", 3.0).expect("BYE to the agent");
    phone.reply(server.sip, &bye, 200, "a1");
    assert_eq!(trunk.final_status(&d.call_id, "BYE", 3.0), Some(200));
    server.assert_idle();
    // Records reach sled in batches (record_flush, 1 s): wait for one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let page = loop {
        let (code, page) = server.http_text("GET", "/metrics", None, None);
        assert_eq!(code, 200);
        if page.contains("yihaotong_records_flush_seconds_count")
            || std::time::Instant::now() > deadline
        {
            break page;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let has = |line: &str| page.lines().any(|l| l.starts_with(line));
    for want in [
        "yihaotong_calls_offered_total{hotline=\"12345 seats, no greeting\",mode=\"direct\"} 1",
        "yihaotong_calls_ended_total{disposition=\"answered\"} 1",
        "yihaotong_call_setup_seconds_count 1",
        "yihaotong_queue_wait_seconds_count{queue=\"main\",answered=\"yes\"} 1",
        "yihaotong_calls_live 0",
        "yihaotong_agents{state=\"available\"} 1",
        "yihaotong_queue_waiting{queue=\"main\"} 0",
        "yihaotong_backend_up{backend=\"hrss\"} 1",
        "yihaotong_records_flush_seconds_count",
        "yihaotong_rtp_jitter_seconds_count{side=\"caller\"} 1",
        "yihaotong_rtp_loss_ratio_count{side=\"far\"} 1",
        "yihaotong_rtp_packets_lost_total{side=\"caller\"} 0",
    ] {
        assert!(has(want), "missing {want:?} in:\n{page}");
    }
    // Each side's packets as they reached the relay, in the CDR too.
    let received = |side: &str| {
        page.lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "yihaotong_rtp_packets_received_total{{side=\"{side}\"}} "
                ))
            })
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(received("caller") >= 30 && received("far") >= 30, "{page}");
    metrics_page_is_well_formed(&page);
    let (_, cdrs) = server.http(
        "GET",
        "/api/v1/cdrs?since=1h",
        Some(&server.token("ops", "admin", None)),
        None,
    );
    let cdr = &cdrs["items"][0];
    assert!(cdr["rtp_caller"]["received"].as_u64() >= Some(30), "{cdr}");
    assert_eq!(cdr["rtp_far"]["lost"], 0, "{cdr}");
    assert!(cdr["rtp_far"]["jitter_us"].is_u64(), "{cdr}");
}

/// Follows `/events` (server-sent events) in a thread: each event's JSON
/// arrives on the channel as the server sends it; a `cut-off` event or the
/// end of the stream ends it.
fn follow(
    server: &TestServer,
    token: &str,
    query: &str,
) -> std::sync::mpsc::Receiver<serde_json::Value> {
    use std::io::{BufRead, Write};
    let mut conn = std::net::TcpStream::connect(server.http).expect("connect");
    write!(
        conn,
        "GET /events{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("send");
    let (tx, rx) = std::sync::mpsc::channel();
    // The server subscribes before it answers: once the status line is
    // here, no later event can be missed.
    let mut lines = std::io::BufReader::new(conn).lines();
    let status = lines.next().and_then(Result::ok).unwrap_or_default();
    if !status.contains(" 200 ") {
        let _ = tx.send(serde_json::json!({ "http": status }));
        return rx;
    }
    std::thread::spawn(move || {
        while let Some(Ok(line)) = lines.next() {
            // Each event is one chunk, so its data line arrives whole.
            if let Some(data) = line.strip_prefix("data: ") {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(data) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Events from `rx` up to and including the first of `kind`.
fn until(rx: &std::sync::mpsc::Receiver<serde_json::Value>, kind: &str) -> Vec<serde_json::Value> {
    let mut got = Vec::new();
    while let Ok(e) = rx.recv_timeout(std::time::Duration::from_secs(10)) {
        let done = e["kind"] == kind;
        got.push(e);
        if done {
            return got;
        }
    }
    panic!("no {kind} event; got {got:?}");
}

#[test]
fn a_calls_events_arrive_in_order_and_a_reconnect_gets_what_it_missed() {
    let server = TestServer::start_with(&[("YIHAOTONG_ADMIN__EVENT_BACKLOG", "12")]);
    server.add_agent("1001", "s3cret", "main");
    let tickets = server.token("tickets", "ticketing", None);
    let seat = server.token("seat-1001", "agent", Some("1001"));
    let mut phone = Phone::bind("1001", "127.0.0.3");
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let all = follow(&server, &tickets, "?hotline=12345%20seats,%20no%20greeting");
    let mine = follow(&server, &seat, "");

    answered_and_hung_up(&server, &mut phone, "13800000097");

    let events = until(&all, "call.ended");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["call.offered", "agent.ringing", "call.ended"],
        "only this hotline's events (the queue-log ones carry no hotline)"
    );
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // The screen pop: who calls, what they dialed, which hotline, which queue.
    let pop = &events[1]["data"];
    assert_eq!(pop["caller"], "13800000097");
    assert_eq!(pop["dialed"], "123450");
    assert_eq!(pop["queue"], "main");
    assert_eq!(pop["agent"], "1001");
    assert_eq!(events[2]["data"]["disposition"], "answered");

    // The agent's own stream: its events only, queue-log ones included.
    let own = until(&mine, "call.ended");
    let kinds: Vec<&str> = own.iter().filter_map(|e| e["kind"].as_str()).collect();
    for want in ["agent.ringing", "call.answered", "call.ended"] {
        assert!(kinds.contains(&want), "{want} missing from {kinds:?}");
    }
    assert!(own.iter().all(|e| e["agent"] == "1001"), "{own:?}");
    let answered = own
        .iter()
        .find(|e| e["kind"] == "call.answered")
        .and_then(|e| e["seq"].as_u64())
        .expect("answered");

    // Reconnecting after call.answered: what came after it, in order.
    let again = follow(&server, &seat, &format!("?since={answered}"));
    let replay = until(&again, "call.ended");
    assert!(
        replay.iter().all(|e| e["seq"].as_u64() > Some(answered)),
        "{replay:?}"
    );
    // An agent token cannot follow another agent.
    let refused = follow(&server, &seat, "?agent=1002");
    let first = refused
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("answer");
    assert!(
        first["http"].as_str().is_some_and(|l| l.contains(" 403 ")),
        "{first}"
    );
    // Too far back for the backlog (12 events): told to resync.
    for i in 0..2 {
        answered_and_hung_up(&server, &mut phone, &format!("1380000098{i}"));
    }
    until(&all, "call.ended");
    until(&all, "call.ended");
    let (code, body) = server.http("GET", "/events?since=1", Some(&tickets), None);
    assert_eq!(code, 410, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("since: too far behind")),
        "{body}"
    );
    let (code, body) = server.http("GET", "/events?since=soon", Some(&tickets), None);
    assert_eq!(code, 400, "{body}");
}

#[test]
fn the_event_stream_also_comes_over_a_websocket() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let tickets = server.token("tickets", "ticketing", None);
    let mut phone = Phone::bind("1001", "127.0.0.3");
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let connect = |token: &str| common::events_socket(&server, token, "queue=main");
    // A made-up token is refused before the upgrade.
    assert_eq!(connect("yht_made-up").err(), Some(401));
    let (mut socket, status) = connect(&tickets).expect("upgraded");
    assert_eq!(status, 101);
    answered_and_hung_up(&server, &mut phone, "13800000096");
    let mut kinds = Vec::new();
    let mut seqs = Vec::new();
    while !kinds.contains(&"call.ended".to_string()) {
        let frame = socket.read().expect("a frame");
        if let tungstenite::Message::Text(text) = frame {
            let event: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON");
            assert_eq!(event["queue"], "main", "filtered by queue: {event}");
            seqs.push(event["seq"].as_u64().expect("seq"));
            kinds.push(event["kind"].as_str().unwrap_or_default().to_string());
        }
    }
    for want in ["call.queued", "agent.ringing", "call.answered"] {
        assert!(
            kinds.iter().any(|k| k == want),
            "{want} missing from {kinds:?}"
        );
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let _ = socket.close(None);
}

#[test]
fn recordings_are_listed_and_downloaded_in_ranges_by_those_who_may_hear_them() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    server.add_agent("1002", "s3cret", "main");
    let admin = server.token("ops", "admin", None);
    let floor = server.token("floor", "supervisor", None);
    let tickets = server.token("tickets", "ticketing", None);
    let own = server.token("desk-1001", "agent", Some("1001"));
    let other = server.token("desk-1002", "agent", Some("1002"));
    let mut phone = Phone::bind("1001", "127.0.0.3");
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let mut trunk = Phone::new("13800000077");
    let mut d = talking_call(&server, &mut trunk, &mut phone);
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    let bye = phone.request("BYE", 3.0).expect("BYE to the agent");
    phone.reply(server.sip, &bye, 200, "a1");
    assert_eq!(trunk.final_status(&d.call_id, "BYE", 3.0), Some(200));

    // Listed (metadata is written with the records, each second), with its
    // size now: the recording is closed a moment after the call ends (its
    // last samples are written then), so wait until two looks agree.
    let list_path = format!("/api/v1/recordings?since=1h&call_id={}", d.call_id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut last_size = None;
    let listed = loop {
        let (code, page) = server.http("GET", &list_path, Some(&admin), None);
        assert_eq!(code, 200, "{page}");
        let size = page["items"][0]["bytes"].as_u64();
        if (page["total"] == 1 && size.is_some() && size == last_size)
            || std::time::Instant::now() > deadline
        {
            break page;
        }
        last_size = size;
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let rec = &listed["items"][0];
    assert_eq!(rec["agent"], "1001", "{listed}");
    assert_eq!(rec["queue"], "main", "{listed}");
    let audio = rec["audio"].as_str().expect("a download path").to_string();
    let bytes = rec["bytes"].as_u64().expect("its size");
    assert!(bytes > 44 + 32_000 / 2, "a second of talk or so: {listed}");

    // The whole file: a WAV; then a range, and a range past the end.
    let (code, head, body) = server.http_raw("GET", &audio, Some(&floor), "", "");
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("content-type: audio/wav"), "{head}");
    assert!(head.contains("accept-ranges: bytes"), "{head}");
    assert_eq!(body.len() as u64, bytes);
    assert_eq!(&body[..4], b"RIFF");
    assert_eq!(&body[8..12], b"WAVE");
    let (code, head, part) =
        server.http_raw("GET", &audio, Some(&own), "Range: bytes=44-1043\r\n", "");
    assert_eq!(code, 206, "{head}");
    assert!(
        head.contains(&format!("content-range: bytes 44-1043/{bytes}")),
        "{head}"
    );
    assert_eq!(part, body[44..1044]);
    let (code, head, _) = server.http_raw(
        "GET",
        &audio,
        Some(&admin),
        &format!("Range: bytes={}-\r\n", bytes + 10),
        "",
    );
    assert_eq!(code, 416, "{head}");

    // Who may: another agent learns nothing, ticketing may not listen.
    let (_, theirs) = server.http("GET", "/api/v1/recordings?since=1h", Some(&other), None);
    assert_eq!(theirs["total"], 0, "{theirs}");
    assert_eq!(server.http("GET", &audio, Some(&other), None).0, 404);
    assert_eq!(server.http("GET", &audio, Some(&tickets), None).0, 403);
    assert_eq!(server.http("GET", &audio, None, None).0, 401);
    // Only files the store knows are served: no way out of the folder.
    for hostile in [
        "/api/v1/recordings/..%2F..%2Fdata%2Fdb",
        "/api/v1/recordings/../../data/conf",
        "/api/v1/recordings/2026/01/01/nothing.wav",
        "/api/v1/recordings/%2Fetc%2Fpasswd",
    ] {
        let code = server.http("GET", hostile, Some(&admin), None).0;
        assert!(code == 404 || code == 400, "{hostile}: {code}");
    }
    // Each listening is in the audit log once, the ranges after it not.
    let (_, audit) = server.http("GET", "/api/v1/audit?since=1h", Some(&admin), None);
    let downloads: Vec<&serde_json::Value> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "recording.download")
        .collect();
    assert_eq!(downloads.len(), 1, "{audit}");
    assert_eq!(downloads[0]["target"], d.call_id.as_str());
    assert!(downloads[0]["who"]
        .as_str()
        .is_some_and(|w| w.starts_with("floor")));
}

#[test]
fn queues_show_their_figures_and_flows_are_validated_before_a_reload() {
    // The flows in a folder of the test's own, so one can be broken.
    let work = tempfile::tempdir().expect("tempdir");
    let flows = work.path().join("flows");
    copy_dir(std::path::Path::new("ivr-flows"), &flows);
    let flows_env = flows.display().to_string();
    let server = TestServer::start_with(&[("YIHAOTONG_FLOWS_DIR", &flows_env)]);
    server.add_agent("1001", "s3cret", "main");
    server.add_agent("1002", "s3cret", "main");
    let admin = server.token("ops", "admin", None);
    let floor = server.token("floor", "supervisor", None);
    let own = server.token("desk-1001", "agent", Some("1001"));
    let mut phone = Phone::bind("1001", "127.0.0.3");
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let mut trunk = Phone::new("13800000078");
    let (_d, _leg) = connected_call(&server, &mut trunk, &mut phone, "a1");

    let (code, queues) = server.http("GET", "/api/v1/queues", Some(&floor), None);
    assert_eq!(code, 200, "{queues}");
    let main = queues
        .as_array()
        .and_then(|q| q.iter().find(|q| q["name"] == "main"))
        .expect("the main queue")
        .clone();
    assert_eq!(main["on_call"], 1, "{main}");
    assert_eq!(main["unavailable"], 1, "1002 never registered: {main}");
    assert_eq!(main["waiting"], 0, "{main}");
    assert!(main["description"].is_string(), "{main}");
    assert_eq!(
        server.http("GET", "/api/v1/queues", Some(&own), None).0,
        403
    );

    let (code, listed) = server.http("GET", "/api/v1/flows", Some(&floor), None);
    assert_eq!(code, 200, "{listed}");
    let names: Vec<&str> = listed["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(
        names.contains(&"12345") && names.contains(&"12333"),
        "{names:?}"
    );
    let version = listed["version"].clone();
    let (code, fine) = server.http("POST", "/api/v1/flows/validate", Some(&admin), None);
    assert_eq!(
        (code, &fine["ok"]),
        (200, &serde_json::json!(true)),
        "{fine}"
    );
    assert_eq!(
        server
            .http("POST", "/api/v1/flows/validate", Some(&floor), None)
            .0,
        403
    );

    // A broken flow: named with its file and line by validate, and a
    // reload refused with the running flows kept.
    std::fs::write(
        flows.join("broken.toml"),
        "description = \"a typo\"\nstart = \"hello\"\n\n[nodes.hello]\nplay = \"common/welcome\"\nnext = \"nowhere\"\n",
    )
    .expect("write");
    let (code, found) = server.http("POST", "/api/v1/flows/validate", Some(&admin), None);
    assert_eq!(code, 200, "{found}");
    assert_eq!(found["ok"], false, "{found}");
    let diag = found["diagnostics"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["warning"] == false))
        .expect("an error")
        .clone();
    assert!(
        diag["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("broken.toml"))
            && diag["line"].as_u64() > Some(0),
        "{diag}"
    );
    let (code, refused) = server.http("POST", "/api/v1/flows/reload", Some(&admin), None);
    assert_eq!(code, 422, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("broken.toml")),
        "{refused}"
    );
    let (_, after) = server.http("GET", "/api/v1/flows", Some(&floor), None);
    assert_eq!(after["version"], version, "the running flows stay");
    // Mended, it reloads.
    std::fs::remove_file(flows.join("broken.toml")).expect("remove");
    let (code, reloaded) = server.http("POST", "/api/v1/flows/reload", Some(&admin), None);
    assert_eq!(code, 200, "{reloaded}");
    let (_, audit) = server.http("GET", "/api/v1/audit?since=1h", Some(&admin), None);
    let reloads = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "flows.reload")
        .count();
    assert_eq!(reloads, 2, "{audit}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn admins_write_routes_and_agent_accounts_that_serve_the_next_call() {
    let server = TestServer::start();
    let admin = server.token("ops", "admin", None);
    let floor = server.token("floor", "supervisor", None);
    let put =
        |path: &str, token: &str, body: &str| server.http("PUT", path, Some(token), Some(body));
    // An account made over the API registers; a route made over the API
    // brings it the next call.
    let (code, made) = put(
        "/api/v1/agents/1007",
        &admin,
        r#"{"password": "s3cret-7", "name": "Wang", "queues": ["hrss"]}"#,
    );
    assert_eq!(code, 200, "{made}");
    let mut phone = Phone::bind("1007", "127.0.0.3");
    assert_eq!(phone.register(server.sip, "s3cret-7", Algorithm::Md5), 200);
    let (code, set) = put(
        "/api/v1/routes/96555",
        &admin,
        r#"{"queue": "hrss", "hotline": "96555 pilot", "mode": "parallel"}"#,
    );
    assert_eq!(code, 200, "{set}");
    let (_, routes) = server.http("GET", "/api/v1/routes", Some(&floor), None);
    let route = routes
        .as_array()
        .and_then(|r| r.iter().find(|r| r["number"] == "96555"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&route["queue"], &route["hotline"], &route["mode"]),
        (
            &serde_json::json!("hrss"),
            &serde_json::json!("96555 pilot"),
            &serde_json::json!("parallel")
        ),
        "{routes}"
    );
    let mut trunk = Phone::new("13800000066");
    let mut d = trunk.invite(server.sip, "96555");
    let inv = phone
        .request("INVITE", 5.0)
        .expect("the new agent is rung for the new route");
    let _leg = common::answer(&server, &mut phone, &inv, "a7");
    let ok = trunk
        .response(&d.call_id, "INVITE", 200, 3.0)
        .expect("caller answered");
    trunk.ack(server.sip, &mut d, &ok);
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    let bye = phone.request("BYE", 3.0).expect("BYE to the agent");
    phone.reply(server.sip, &bye, 200, "a7");

    // Refusals name the field; only admins write.
    for (path, token, body, status, why) in [
        (
            "/api/v1/routes/96556",
            &admin,
            r#"{"queue": "hrss", "flow": "12345"}"#,
            400,
            "queue: ",
        ),
        (
            "/api/v1/routes/96556",
            &admin,
            r#"{"queue": "hrss", "colour": "red"}"#,
            400,
            "body: ",
        ),
        (
            "/api/v1/routes/96556",
            &admin,
            r#"{"queue": "hrss", "mode": "sideways"}"#,
            400,
            "body: ",
        ),
        (
            "/api/v1/routes/not-a-number",
            &admin,
            r#"{"queue": "hrss"}"#,
            422,
            "dialable",
        ),
        (
            "/api/v1/routes/96556",
            &admin,
            r#"{"queue": "nosuch"}"#,
            422,
            "queue `nosuch` does not exist (known: ",
        ),
        (
            "/api/v1/routes/96556",
            &admin,
            r#"{"flow": "nosuchflow"}"#,
            422,
            "flow `nosuchflow` does not exist (known: ",
        ),
        (
            "/api/v1/agents/1008",
            &admin,
            r#"{"password": "s3cret-8", "queues": ["hrss", "nosuch:2"]}"#,
            422,
            "queue `nosuch` does not exist",
        ),
        (
            "/api/v1/routes/96556",
            &floor,
            r#"{"queue": "hrss"}"#,
            403,
            "supervisor",
        ),
        (
            "/api/v1/agents/1008",
            &admin,
            r#"{"password": "short", "queues": ["hrss"]}"#,
            400,
            "password: ",
        ),
        (
            "/api/v1/agents/1008",
            &admin,
            r#"{"queues": ["hrss"]}"#,
            400,
            "body: ",
        ),
        (
            "/api/v1/agents/1008",
            &floor,
            r#"{"password": "s3cret-8", "queues": ["hrss"]}"#,
            403,
            "supervisor",
        ),
    ] {
        let (code, answer) = put(path, token, body);
        assert_eq!(code, status, "{path} {body}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains(why)),
            "{path} {body}: {answer}"
        );
    }

    // Removed: the route is gone, the phone can no longer register.
    let (code, gone) = server.http("DELETE", "/api/v1/routes/96555", Some(&admin), None);
    assert_eq!(code, 200, "{gone}");
    let (_, routes) = server.http("GET", "/api/v1/routes", Some(&floor), None);
    assert!(
        routes
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["number"] != "96555")),
        "{routes}"
    );
    let (code, gone) = server.http("DELETE", "/api/v1/agents/1007", Some(&admin), None);
    assert_eq!(code, 200, "{gone}");
    assert_ne!(phone.register(server.sip, "s3cret-7", Algorithm::Md5), 200);
    assert_eq!(
        server
            .http("DELETE", "/api/v1/agents/1007", Some(&admin), None)
            .0,
        422
    );

    // Audited, and the password never is.
    let (_, audit) = server.http("GET", "/api/v1/audit?since=1h", Some(&admin), None);
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for want in ["agent.set", "route.set", "route.remove", "agent.remove"] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }
    assert!(!audit.to_string().contains("s3cret-7"), "{audit}");
}

/// Every family on the page has its `# HELP` and `# TYPE`, and Prometheus's
/// own linter (`promtool check metrics`, Debian `prometheus`) finds nothing.
fn metrics_page_is_well_formed(page: &str) {
    let described = |prefix: &str| -> Vec<String> {
        page.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|rest| rest.split_whitespace().next().map(str::to_string))
            .collect()
    };
    let (helped, typed) = (described("# HELP "), described("# TYPE "));
    for line in page
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name = line.split(['{', ' ']).next().expect("a sample has a name");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|f| typed.iter().any(|t| t == f))
            })
            .unwrap_or(name);
        assert!(
            helped.iter().any(|h| h == family),
            "no # HELP for {family}:\n{page}"
        );
        assert!(
            typed.iter().any(|t| t == family),
            "no # TYPE for {family}:\n{page}"
        );
    }
    assert!(
        page.contains("# TYPE process_cpu_seconds_total counter"),
        "{page}"
    );
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut promtool) = promtool else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool must be installed under CI (.ci/run installs prometheus)"
        );
        eprintln!("SKIPPED: promtool not installed (apt-get install prometheus)");
        return;
    };
    use std::io::Write;
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("page to promtool");
    let out = promtool.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{page}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

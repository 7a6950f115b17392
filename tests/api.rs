//! The HTTP admin and CTI API against the real server: bearer tokens made by
//! the CLI and kept hashed in sled, each role against each endpoint, the
//! token lifecycle, pagination, bad input named by field, an agent state
//! change reaching the desk and the audit log.

mod common;

use common::{connected_call, Phone, TestServer};
use yihaotong::sip::auth::Algorithm;

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
    assert_eq!(
        entries,
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
        let mut trunk = Phone::new(&format!("1380000009{i}"));
        let (mut d, _leg) = connected_call(&server, &mut trunk, &mut phone, "a1");
        trunk.in_dialog(server.sip, &mut d, "BYE", "");
        let bye = phone.request("BYE", 3.0).expect("BYE to the agent");
        phone.reply(server.sip, &bye, 200, "a1");
        assert_eq!(trunk.final_status(&d.call_id, "BYE", 3.0), Some(200));
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
    // 1002 answered none of them.
    let (code, mine) = server.http("GET", "/api/v1/cdrs?since=1h", Some(&own), None);
    assert_eq!(code, 200);
    assert_eq!(mine["total"].as_u64(), Some(0), "{mine}");
}

#[test]
fn metrics_count_calls_by_hotline_and_show_agents_and_queues() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let mut phone = Phone::bind("1001", "127.0.0.3");
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let mut trunk = Phone::new("13800000095");
    let (mut d, _leg) = connected_call(&server, &mut trunk, &mut phone, "a1");
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    let bye = phone.request("BYE", 3.0).expect("BYE to the agent");
    phone.reply(server.sip, &bye, 200, "a1");
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
    ] {
        assert!(has(want), "missing {want:?} in:\n{page}");
    }
}

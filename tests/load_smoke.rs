//! A seconds-long run of the load harness against the real server, so the
//! harness cannot rot. It asserts correctness (every call completed or was
//! abandoned as asked, audio arrived both ways, nothing leaked), never speed.

use yihaotong_testkit as common;

use common::TestServer;

fn report(server: &TestServer, args: &[&str]) -> serde_json::Value {
    let json = server.dir.path().join("report.json");
    let sip = server.sip.to_string();
    let mut all = vec!["load", "--server", &sip, "--json"];
    let json_arg = json.display().to_string();
    all.push(&json_arg);
    all.extend_from_slice(args);
    let (ok, out) = server.cli(&all);
    assert!(ok, "load run failed:\n{out}");
    serde_json::from_str(&std::fs::read_to_string(&json).expect("report written"))
        .expect("report is JSON")
}

#[test]
fn queue_and_register_scenarios_complete_with_audio() {
    let server = TestServer::start();
    let r = report(
        &server,
        &[
            "--provision",
            "--agents",
            "6",
            "--calls",
            "12",
            "--cps",
            "6",
            "--talk-ms",
            "600",
            "--ring-ms",
            "50",
            "--abandon",
            "0.25",
            "--check",
        ],
    );
    assert_eq!(r["attempted"], 12);
    assert_eq!(
        r["completed"].as_u64().unwrap_or(0) + r["abandoned"].as_u64().unwrap_or(0),
        12,
        "{r}"
    );
    assert!(r["completed"].as_u64().unwrap_or(0) > 0, "{r}");
    for side in ["caller_rtp", "agent_rtp"] {
        assert!(
            r[side]["received"].as_u64().unwrap_or(0) > 0,
            "no audio at {side}: {r}"
        );
    }
    assert!(r["setup_200_ms"]["count"].as_u64().unwrap_or(0) > 0);
    // The server's own accounting, read through its admin socket: the CPU
    // it spent and its resident memory around the run.
    let cost = &r["server"];
    assert!(cost["cpu_seconds"].as_f64() > Some(0.0), "{r}");
    assert!(cost["cpu_ms_per_call"].as_f64() > Some(0.0), "{r}");
    assert!(cost["rss_before_mib"].as_f64() > Some(1.0), "{r}");
    assert!(cost["peak_live_calls"].as_u64() >= Some(1), "{r}");

    // What --provision made is gone again after the run.
    let (ok, agents) = server.cli(&["agents", "list"]);
    assert!(ok && !agents.contains("\"9000\""), "{agents}");

    let r = report(
        &server,
        &[
            "--scenario",
            "register",
            "--provision",
            "--agents",
            "6",
            "--calls",
            "200",
            "--concurrency",
            "20",
            "--check",
        ],
    );
    assert_eq!(r["completed"], 200, "{r}");

    // A real account in the range is never overwritten unless asked.
    server.add_agent("9003", "seat-password", "main");
    let (ok, out) = server.cli(&[
        "load",
        "--server",
        &server.sip.to_string(),
        "--scenario",
        "register",
        "--provision",
        "--agents",
        "6",
        "--calls",
        "1",
    ]);
    assert!(
        !ok && out.contains("would overwrite existing agent accounts 9003"),
        "{out}"
    );
    let (_, agents) = server.cli(&["agents", "list"]);
    assert!(
        agents.contains("\"9003\"") && !agents.contains("\"9000\""),
        "{agents}"
    );
    let (ok, out) = server.cli(&["agents", "remove", "9003"]);
    assert!(ok, "{out}");

    // IVR callers on 12345: answered by the flow, prompts arrive evenly.
    let r = report(
        &server,
        &[
            "--scenario",
            "ivr",
            "--calls",
            "8",
            "--concurrency",
            "8",
            "--talk-ms",
            "1000",
            "--check",
        ],
    );
    assert_eq!(r["completed"], 8, "{r}");
    let heard = r["caller_rtp"]["received"].as_u64().unwrap_or(0);
    assert!(heard >= 8 * 30, "prompt packets at the callers: {r}");
    server.assert_idle();
}

#[test]
fn the_mixed_scenario_reaches_seats_self_service_and_notices() {
    // The harness plays the social-insurance system where the server's
    // [backends.hrss] sends key 1 of 12333.
    let backend = format!("127.0.0.1:{}", common::free_port());
    let uri = format!("sip:12333@{backend}");
    let server = TestServer::start_with(&[("YIHAOTONG_BACKENDS__HRSS__URI", uri.as_str())]);
    let r = report(
        &server,
        &[
            "--scenario",
            "mixed",
            "--backend",
            &backend,
            // Seats without the greeting, so a short run reaches them.
            "--number",
            "123450",
            "--provision",
            "--agents",
            "6",
            "--calls",
            "10",
            "--cps",
            "5",
            // Self-service callers press 1 during the welcome (type-ahead)
            // and reach the backend after the ~8 s of prompts.
            "--talk-ms",
            "11000",
            "--notice-ms",
            "1500",
            "--ring-ms",
            "50",
            "--check",
        ],
    );
    assert_eq!(r["completed"], 10, "{r}");
    // 60/25/15 over ten calls, spread: each kind is there.
    for class in ["seats", "self-service", "notice"] {
        let c = &r["classes"][class];
        assert!(c["attempted"].as_u64() > Some(0), "no {class} calls: {r}");
        assert_eq!(c["attempted"], c["completed"], "{class}: {r}");
    }
    // Every seat call and every hand-off rang something of ours: seats
    // (time in line measured) and the backend (its RTP counted with theirs).
    let seats = r["classes"]["seats"]["attempted"].as_u64().unwrap_or(0);
    let handed = r["classes"]["self-service"]["attempted"]
        .as_u64()
        .unwrap_or(0);
    assert!(r["to_seat_ms"]["count"].as_u64() >= Some(seats), "{r}");
    assert!(
        r["agent_rtp"]["streams"].as_u64() >= Some(seats + handed),
        "seats and backend calls carried audio: {r}"
    );
    server.assert_idle();
}

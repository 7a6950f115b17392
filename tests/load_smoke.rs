//! A seconds-long run of the load harness against the real server, so the
//! harness cannot rot. It asserts correctness (every call completed or was
//! abandoned as asked, audio arrived both ways, nothing leaked), never speed.

mod common;

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

    let r = report(
        &server,
        &[
            "--scenario",
            "register",
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

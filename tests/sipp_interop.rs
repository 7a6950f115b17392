//! Interop with an independent peer: SIPp (Debian `sip-tester`) as the agent
//! softphone (REGISTER with digest, answers, echoes RTP) and as the trunk
//! (places a call to 123450, the no-greeting seat line, plays RTP from a
//! pcap, hangs up); and as trunk and backend of the 12333 IVR: the trunk
//! presses 1 with SIPp's own RFC 2833 pcap and the backend UAS must receive
//! the hand-off with that key in its headers; and as three agents that
//! answer after random delays while a SIPp trunk sends more callers than
//! there are agents, so callers wait in line; and as an agent that
//! blind-transfers its caller by REFER to another SIPp agent.
//!
//! Without `sipp` on PATH the test says so and passes, except under CI
//! (`CI` set), where `.ci/run` installs it and its absence is a failure.

use yihaotong_testkit as common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, media_port, TestServer};

fn sipp_available() -> bool {
    common::installed("sipp", "-v", "sip-tester")
}

fn scenario(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(name)
        .display()
        .to_string()
}

/// Runs SIPp to completion (bounded) in `dir`; returns (exit code, error log).
fn sipp(dir: &Path, server: &TestServer, args: &[&str], limit: Duration) -> (i32, String) {
    let mut child = Command::new("sipp")
        .arg(server.sip.to_string())
        .args([
            "-i",
            "127.0.0.1",
            "-m",
            "1",
            "-nostdin",
            "-trace_err",
            "-timeout",
            "20s",
        ])
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sipp");
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break -2;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut errors = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().contains("errors") {
                errors.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    (code, errors)
}

/// Registers agent `id` (password s3cret) with SIPp, its Contact at `agent_port`.
fn sipp_register(work: &Path, server: &TestServer, id: &str, agent_port: &str) {
    let dir = work.join(format!("register-{id}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let reg_port = free_port().to_string();
    let (code, errors) = sipp(
        &dir,
        server,
        &[
            "-sf",
            &scenario("agent_register.xml"),
            "-s",
            id,
            "-au",
            id,
            "-ap",
            "s3cret",
            "-set",
            "agent_port",
            agent_port,
            "-p",
            &reg_port,
        ],
        Duration::from_secs(25),
    );
    assert_eq!(code, 0, "SIPp registration of {id} failed: {errors}");
}

/// A SIPp trunk calling `number` with `trunk_call.xml`; `extra` adds options
/// (-m, -r…). Returns (exit code, error log).
fn sipp_trunk(
    work: &Path,
    server: &TestServer,
    number: &str,
    extra: &[&str],
    limit: Duration,
) -> (i32, String) {
    let dir = work.join("trunk");
    std::fs::create_dir_all(&dir).expect("dir");
    let trunk_port = free_port().to_string();
    let trunk_media = media_port().to_string();
    let mut args = vec![
        "-sf".to_string(),
        scenario("trunk_call.xml"),
        "-s".into(),
        number.into(),
        "-p".into(),
        trunk_port,
        "-mi".into(),
        "127.0.0.1".into(),
        "-mp".into(),
        trunk_media,
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sipp(&dir, server, &args, limit)
}

#[test]
fn sipp_agent_registers_and_answers_a_sipp_trunk_call() {
    if !sipp_available() {
        return;
    }
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let work = tempfile::tempdir().expect("tempdir");
    let agent_port = free_port().to_string();
    let agent_media = media_port().to_string();
    // The agent's answering instance runs in the background for the whole call.
    let agent_dir = work.path().join("agent");
    std::fs::create_dir_all(&agent_dir).expect("dir");
    let answer_server = &server;
    let agent_dir2 = agent_dir.clone();
    let (agent_port2, agent_media2) = (agent_port.clone(), agent_media.clone());
    std::thread::scope(|s| {
        let answering = s.spawn(move || {
            sipp(
                &agent_dir2,
                answer_server,
                &[
                    "-sf",
                    &scenario("agent_answer.xml"),
                    "-p",
                    &agent_port2,
                    "-mi",
                    "127.0.0.1",
                    "-mp",
                    &agent_media2,
                    "-rtp_echo",
                ],
                Duration::from_secs(40),
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        sipp_register(work.path(), &server, "1001", &agent_port);
        let (ok, list) = server.cli(&["agents", "list"]);
        assert!(
            ok && list.contains(&format!("127.0.0.1:{agent_port}")),
            "registered contact listed: {list}"
        );

        let (code, errors) =
            sipp_trunk(work.path(), &server, "123450", &[], Duration::from_secs(30));
        assert_eq!(code, 0, "SIPp trunk call failed: {errors}");
        let (code, errors) = answering.join().expect("agent thread");
        assert_eq!(code, 0, "SIPp agent failed: {errors}");
    });
}

#[test]
fn sipp_trunk_presses_1_on_12333_and_lands_on_a_sipp_backend() {
    if !sipp_available() {
        return;
    }
    let backend_port = free_port().to_string();
    let backend_uri = format!("sip:12333@127.0.0.1:{backend_port}");
    let server = TestServer::start_with(&[("YIHAOTONG_BACKENDS__HRSS__URI", &backend_uri)]);
    let work = tempfile::tempdir().expect("tempdir");
    let backend_dir = work.path().join("backend");
    let trunk_dir = work.path().join("trunk");
    for d in [&backend_dir, &trunk_dir] {
        std::fs::create_dir_all(d).expect("dir");
    }
    let backend_media = media_port().to_string();
    std::thread::scope(|s| {
        let backend = s.spawn(|| {
            sipp(
                &backend_dir,
                &server,
                &[
                    "-sf",
                    &scenario("backend_answer.xml"),
                    "-p",
                    &backend_port,
                    "-mi",
                    "127.0.0.1",
                    "-mp",
                    &backend_media,
                    "-rtp_echo",
                ],
                Duration::from_secs(45),
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        let trunk_port = free_port().to_string();
        let trunk_media = media_port().to_string();
        let (code, errors) = sipp(
            &trunk_dir,
            &server,
            &[
                "-sf",
                &scenario("trunk_ivr.xml"),
                "-s",
                "12333",
                "-p",
                &trunk_port,
                "-mi",
                "127.0.0.1",
                "-mp",
                &trunk_media,
            ],
            Duration::from_secs(40),
        );
        assert_eq!(code, 0, "SIPp trunk failed: {errors}");
        let (code, errors) = backend.join().expect("backend thread");
        assert_eq!(
            code, 0,
            "SIPp backend failed (no hand-off with X-IVR-Keys: 1?): {errors}"
        );
    });
    server.assert_idle();
}

#[test]
fn sipp_agents_answering_after_random_delays_serve_a_queue_of_sipp_callers() {
    if !sipp_available() {
        return;
    }
    let server = TestServer::start_with(&[("YIHAOTONG_QUEUE__RING_TIMEOUT", "5")]);
    let work = tempfile::tempdir().expect("tempdir");
    let mut agents = Vec::new();
    for id in ["1001", "1002", "1003"] {
        server.add_agent(id, "s3cret", "main");
        let dir = work.path().join(format!("agent-{id}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let port = free_port().to_string();
        let media = media_port().to_string();
        // Each seat answers as many calls as it gets, each after 0.3-2.5 s.
        let child = Command::new("sipp")
            .arg(server.sip.to_string())
            .args(["-i", "127.0.0.1", "-nostdin", "-trace_err", "-rtp_echo"])
            .args(["-sf", &scenario("agent_answer_delayed.xml")])
            .args(["-p", &port, "-mi", "127.0.0.1", "-mp", &media])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sipp agent");
        agents.push(child);
        sipp_register(work.path(), &server, id, &port);
    }
    // Nine callers, three a second, each talking 1.5 s: more than the seats.
    let (code, errors) = sipp_trunk(
        work.path(),
        &server,
        "123450",
        &["-m", "9", "-r", "3", "-timeout", "60s"],
        Duration::from_secs(70),
    );
    for mut a in agents {
        let _ = a.kill();
        let _ = a.wait();
    }
    assert_eq!(code, 0, "SIPp trunk calls failed: {errors}");
    server.assert_idle();
    let (ok, out) = server.cli(&["report", "--by", "queue", "--format", "json"]);
    assert!(ok, "{out}");
    let rows: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(rows[0]["key"], "main");
    assert_eq!(rows[0]["offered"], 9, "{rows}");
    assert_eq!(rows[0]["answered"], 9, "{rows}");
    assert!(
        rows[0]["asa"].as_f64().unwrap_or(0.0) >= 0.3,
        "agents took their time: {rows}"
    );
    let (ok, out) = server.cli(&["report", "--by", "agent", "--format", "json"]);
    assert!(ok, "{out}");
    let by_agent: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let served = by_agent.as_array().map_or(0, |r| {
        r.iter()
            .filter(|a| a["key"] != "total" && a["answered"].as_u64().unwrap_or(0) > 0)
            .count()
    });
    assert_eq!(served, 3, "every seat took calls: {by_agent}");
}

#[test]
fn sipp_agent_blind_transfers_a_sipp_trunk_call_to_another_sipp_agent() {
    if !sipp_available() {
        return;
    }
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    server.add_agent("1002", "s3cret", "duty");
    let work = tempfile::tempdir().expect("tempdir");
    std::thread::scope(|s| {
        // 1001 answers the call and REFERs it to 1002, which answers and
        // waits for the caller's BYE.
        let seats: Vec<_> = [
            (
                "1001",
                "agent_blind_transfer.xml",
                vec!["-set", "target", "1002"],
            ),
            ("1002", "agent_answer.xml", vec![]),
        ]
        .into_iter()
        .map(|(id, file, extra)| {
            let dir = work.path().join(format!("agent-{id}"));
            std::fs::create_dir_all(&dir).expect("dir");
            let port = free_port().to_string();
            let media = media_port().to_string();
            let server = &server;
            let listen = port.clone();
            let handle = s.spawn(move || {
                let mut args = vec!["-sf".to_string(), scenario(file)];
                for a in [
                    "-p",
                    &listen,
                    "-mi",
                    "127.0.0.1",
                    "-mp",
                    &media,
                    "-rtp_echo",
                ] {
                    args.push(a.to_string());
                }
                args.extend(extra.iter().map(|a| a.to_string()));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                sipp(&dir, server, &args, Duration::from_secs(40))
            });
            (id, port, handle)
        })
        .collect();
        std::thread::sleep(Duration::from_millis(500));
        for (id, port, _) in &seats {
            sipp_register(work.path(), &server, id, port);
        }
        let (code, errors) =
            sipp_trunk(work.path(), &server, "123450", &[], Duration::from_secs(30));
        assert_eq!(code, 0, "SIPp trunk call failed: {errors}");
        for (id, _, handle) in seats {
            let (code, errors) = handle.join().expect("agent thread");
            assert_eq!(code, 0, "SIPp agent {id} failed: {errors}");
        }
    });
    server.assert_idle();
    let (ok, log) = server.cli(&["--format", "table", "queue-log"]);
    assert!(ok, "{log}");
    assert!(log.contains("|1001|TRANSFER|1002"), "{log}");
}

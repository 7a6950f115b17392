//! What an operator meets around the call path, against the real binary:
//! log lines fit for a file or a shipper.

use yihaotong_testkit as common;

use common::{Phone, TestServer};

fn wait_for_line(path: &std::path::Path, what: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(what) || std::time::Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn logs_into_a_file_carry_no_colour_and_json_lines_parse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text_log = dir.path().join("text.log");
    {
        let server = TestServer::start_logging(&[], Some(&text_log));
        let mut trunk = Phone::new("13800138000");
        let d = trunk.invite(server.sip, "99999999999");
        assert_eq!(trunk.final_status(&d.call_id, "INVITE", 3.0), Some(404));
        let text = wait_for_line(&text_log, "no route for dialed number");
        assert!(text.contains("SIP listening"), "{text}");
        assert!(text.contains("no route for dialed number"), "{text}");
        assert!(
            !text.contains('\u{1b}'),
            "ANSI escapes in a log file: {text}"
        );
    }

    let json_log = dir.path().join("json.log");
    let server = TestServer::start_logging(&[("YIHAOTONG_LOG__FORMAT", "json")], Some(&json_log));
    let mut trunk = Phone::new("13800138000");
    let d = trunk.invite(server.sip, "99999999999");
    assert_eq!(trunk.final_status(&d.call_id, "INVITE", 3.0), Some(404));
    let text = wait_for_line(&json_log, "no route for dialed number");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect();
    let refused = lines
        .iter()
        .find(|l| l["fields"]["message"] == "no route for dialed number")
        .unwrap_or_else(|| panic!("no such line in {text}"));
    assert_eq!(refused["level"], "INFO", "{refused}");
    assert_eq!(
        refused["fields"]["call_id"],
        d.call_id.as_str(),
        "{refused}"
    );
    assert!(refused["timestamp"].is_string(), "{refused}");

    // A level that is not a filter is refused with the field named.
    let (ok, out) = server.cli(&["check"]);
    assert!(ok, "{out}");
    let bad = std::process::Command::new(common::bin())
        .arg("check")
        .envs(server.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("YIHAOTONG_LOG__LEVEL", "yihaotong=loud")
        .output()
        .expect("check");
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(said.contains("[log] level"), "{said}");
}

/// A copy of a bundled folder (flows with their calendars, or sounds).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// `yihaotong check` with these settings in the environment: (success, output).
fn check(env: &[(&str, &std::path::Path)]) -> (bool, String) {
    let out = std::process::Command::new(common::bin())
        .arg("check")
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .env_remove("RUST_LOG")
        .output()
        .expect("check runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_names_each_cause_once_in_our_words_and_writes_nothing() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    let (flows, sounds, data) = (
        dir.path().join("flows"),
        dir.path().join("sounds"),
        dir.path().join("data"),
    );
    copy_tree(&root.join("ivr-flows"), &flows);
    copy_tree(&root.join("sounds"), &sounds);
    let env = [
        ("YIHAOTONG_FLOWS_DIR", flows.as_path()),
        ("YIHAOTONG_SOUNDS_DIR", sounds.as_path()),
        ("YIHAOTONG_DATA_DIR", data.as_path()),
    ];
    let (ok, out) = check(&env);
    assert!(ok, "{out}");

    // One typo in a flow a route names: one error, the flow's own.
    let flow = flows.join("12333.toml");
    let text = std::fs::read_to_string(&flow).expect("flow");
    std::fs::write(
        &flow,
        text.replace("timeout = \"5s\"", "timeout = \"5 secs\""),
    )
    .expect("write");
    let (ok, out) = check(&env);
    assert!(!ok, "{out}");
    assert!(
        out.contains("12333.toml:11:") && out.contains("timeout"),
        "{out}"
    );
    assert!(out.contains("1 error(s)"), "counted once: {out}");
    assert!(!out.contains("route 12333"), "{out}");
    std::fs::write(&flow, text).expect("restore");

    // A prompt that does not decode: our message with its file, nothing
    // from the decoder's own log.
    std::fs::write(sounds.join("common/broken.wav"), [0x52u8; 100]).expect("write");
    let (ok, out) = check(&env);
    assert!(!ok, "{out}");
    assert!(
        out.contains("broken.wav:1:1: prompt does not decode"),
        "{out}"
    );
    assert!(!out.to_lowercase().contains("symphonia"), "{out}");

    assert!(!data.exists(), "check created {}", data.display());
}

/// The server run as a user who may not write `data_dir`: `check` says so
/// first, and `run` says so too, never "is a server already running?". As
/// root the test runs the binary as `nobody` (setpriv), from a copy that
/// user may execute.
#[test]
fn a_data_dir_this_user_cannot_write_is_named_by_check_and_run() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let data = locked.join("data");
    let root = nix::unistd::getuid().is_root();
    let bin = if root {
        let copy = dir.path().join("yihaotong");
        std::fs::copy(common::bin(), &copy).expect("copy the binary");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        copy
    } else {
        common::bin().into()
    };
    let as_user = |args: &[&str]| {
        let mut cmd = if root {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&bin);
            c
        } else {
            std::process::Command::new(&bin)
        };
        let out = cmd
            .args(args)
            .current_dir(dir.path())
            .env("YIHAOTONG_DATA_DIR", &data)
            .env(
                "YIHAOTONG_SIP__LISTEN",
                format!("127.0.0.1:{}", common::free_port()),
            )
            .env("YIHAOTONG_ADMIN__LISTEN", "")
            .env(
                "YIHAOTONG_FLOWS_DIR",
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ivr-flows"),
            )
            .env(
                "YIHAOTONG_SOUNDS_DIR",
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sounds"),
            )
            .env_remove("RUST_LOG")
            .output()
            .expect("the binary runs");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = as_user(&["check"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("is not writable by this user") && out.contains(&data.display().to_string()),
        "{out}"
    );
    let (ok, out) = as_user(&["run"]);
    assert!(!ok, "{out}");
    assert!(out.contains("not writable by this user"), "{out}");
    assert!(!out.contains("already running"), "{out}");
}

/// systemd's notify protocol, with a datagram socket of our own as the
/// manager: READY=1 once SIP answers, WATCHDOG=1 at half the period asked
/// for while the engine's clock runs, STOPPING=1 when SIGTERM starts the
/// drain.
#[test]
fn the_service_manager_hears_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let manager = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
    manager
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .expect("timeout");
    let socket = path.display().to_string();
    let server = TestServer::start_with(&[
        ("NOTIFY_SOCKET", socket.as_str()),
        ("WATCHDOG_USEC", "200000"),
    ]);
    let mut heard: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    // Reads what the server says until `enough` holds (10 s at most).
    let mut until = |heard: &mut Vec<String>, enough: &dyn Fn(&[String]) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !enough(heard) && std::time::Instant::now() < deadline {
            if let Ok(n) = manager.recv(&mut buf) {
                heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    };
    let count = |heard: &[String], what: &str| heard.iter().filter(|m| m.starts_with(what)).count();
    until(&mut heard, &|h| count(h, "READY=1") > 0);
    let ready = heard
        .iter()
        .find(|m| m.starts_with("READY=1"))
        .unwrap_or_else(|| panic!("{heard:?}"));
    assert!(
        ready.contains(&format!("STATUS=SIP on {}", server.sip)),
        "{ready}"
    );
    until(&mut heard, &|h| count(h, "WATCHDOG=1") >= 2);
    assert!(count(&heard, "WATCHDOG=1") >= 2, "{heard:?}");
    server.signal("TERM");
    until(&mut heard, &|h| count(h, "STOPPING=1") > 0);
    assert_eq!(count(&heard, "STOPPING=1"), 1, "{heard:?}");
}

/// A route, plan or account naming a queue or flow nobody declared is
/// refused by the CLI and by `check`, naming what is missing and what
/// exists, and nothing is written; a flow removed by hand afterwards costs
/// its callers a clear 480 with a Reason, not a 500.
#[test]
fn provisioning_refuses_names_nobody_declared() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let flows = tempfile::tempdir().expect("tempdir");
    copy_tree(&root.join("ivr-flows"), flows.path());
    let flows_dir = flows.path().display().to_string();
    let server = TestServer::start_with(&[("YIHAOTONG_FLOWS_DIR", flows_dir.as_str())]);
    for (args, missing, one_known) in [
        (
            vec!["routes", "set", "778", "--queue", "nosuch"],
            "queue `nosuch`",
            "main",
        ),
        (
            vec!["routes", "set", "778", "--flow", "nosuchflow"],
            "flow `nosuchflow`",
            "12345",
        ),
        (
            vec![
                "agents",
                "add",
                "1009",
                "--password",
                "s3cret",
                "--queues",
                "main,nosuch:2",
            ],
            "queue `nosuch`",
            "hrss",
        ),
    ] {
        let (ok, out) = server.cli(&args);
        assert!(!ok, "{args:?}: {out}");
        assert!(
            out.contains(&format!("{missing} does not exist (known: "))
                && out.contains(one_known)
                && out.contains("nothing was changed"),
            "{args:?}: {out}"
        );
    }
    let (_, routes) = server.cli(&["routes", "list"]);
    assert!(!routes.contains("\"778\""), "{routes}");
    let (_, agents) = server.cli(&["agents", "list"]);
    assert!(!agents.contains("\"1009\""), "{agents}");

    // A plan: import refuses it whole, check names the file and line.
    let plan = server.dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "[[route]]\nnumber = \"96601\"\nqueue = \"main\"\n\n[[route]]\nnumber = \"96602\"\nqueue = \"nosuch\"\n",
    )
    .expect("plan");
    let plan_arg = plan.display().to_string();
    let (ok, out) = server.cli(&["routes", "import", &plan_arg]);
    assert!(
        !ok && out.contains("plan.toml:6: route 96602: queue `nosuch`"),
        "{out}"
    );
    let (_, routes) = server.cli(&["routes", "list"]);
    assert!(!routes.contains("96601"), "nothing imported: {routes}");
    let (ok, out) = server.cli(&["check", "--plan", &plan_arg]);
    assert!(
        !ok && out.contains("plan.toml:6: route 96602: queue `nosuch`"),
        "{out}"
    );

    // A flow set up properly, then removed by hand and reloaded.
    std::fs::copy(
        flows.path().join("12345.toml"),
        flows.path().join("pilot.toml"),
    )
    .expect("a flow");
    let (ok, out) = server.cli(&["reload"]);
    assert!(ok, "{out}");
    let (ok, out) = server.cli(&["routes", "set", "96603", "--flow", "pilot"]);
    assert!(ok, "{out}");
    std::fs::remove_file(flows.path().join("pilot.toml")).expect("remove");
    let (ok, out) = server.cli(&["reload"]);
    assert!(ok, "{out}");
    let mut trunk = Phone::new("13800138009");
    let d = trunk.invite(server.sip, "96603");
    let r = trunk
        .response(&d.call_id, "INVITE", 200, 3.0)
        .expect("an answer");
    assert_eq!(r.status, 480, "{r:?}");
    let reason = r.headers.get("reason").unwrap_or_default();
    assert!(
        reason.contains("cause=480") && reason.contains("flow pilot is not loaded"),
        "{reason}"
    );
    // Its record says so.
    let cdr = server.wait_cdr(&d.call_id);
    assert_eq!(
        (&cdr["refused"], &cdr["disposition"]),
        (&serde_json::json!(480), &serde_json::json!("failed")),
        "{cdr}"
    );
}

/// Every INVITE that reached routing ends in exactly one CDR, the refused
/// ones too (a flow gone, an offer we cannot answer): `/metrics` offered
/// equals ended once the calls are over.
#[test]
fn calls_refused_at_setup_leave_one_record_each() {
    let server = TestServer::start();
    let mut trunk = Phone::new("13800138010");
    let sdes = trunk.sdp().replace("RTP/AVP", "RTP/SAVP");
    let mut refused = Vec::new();
    for number in ["12345", "123450"] {
        let d = trunk.invite_sdp(server.sip, number, &sdes);
        let r = trunk
            .response(&d.call_id, "INVITE", 200, 3.0)
            .expect("an answer");
        assert_eq!(r.status, 488, "{r:?}");
        refused.push(d.call_id);
    }
    let no_g711 = trunk.sdp().replace("RTP/AVP 0 8 101", "RTP/AVP 101");
    let d = trunk.invite_sdp(server.sip, "12345", &no_g711);
    assert_eq!(trunk.final_status(&d.call_id, "INVITE", 3.0), Some(488));
    refused.push(d.call_id);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let cdrs = loop {
        let (ok, out) = server.cli(&["cdrs"]);
        assert!(ok, "{out}");
        let cdrs: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
        if cdrs.len() >= refused.len() || std::time::Instant::now() > deadline {
            break cdrs;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    for call_id in &refused {
        let mine: Vec<&serde_json::Value> = cdrs
            .iter()
            .filter(|c| c["call_id"] == call_id.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "one record for {call_id}: {cdrs:?}");
        let cdr = mine[0];
        assert_eq!(cdr["disposition"], "failed", "{cdr}");
        assert_eq!(cdr["hung_up_by"], "system", "{cdr}");
        assert_eq!(cdr["refused"], 488, "{cdr}");
        assert!(
            cdr["hotline"].as_str().is_some_and(|h| !h.is_empty()),
            "{cdr}"
        );
    }
    let (_, page) = server.http_text("GET", "/metrics", None, None);
    let total = |family: &str| -> u64 {
        page.lines()
            .filter(|l| l.starts_with(family))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(
        total("yihaotong_calls_offered_total"),
        total("yihaotong_calls_ended_total"),
        "{page}"
    );
    assert_eq!(
        total("yihaotong_calls_ended_total"),
        refused.len() as u64,
        "{page}"
    );
}

/// From a folder with no server's data, reading commands say where they
/// looked and how to point them, and create nothing.
#[test]
fn the_cli_elsewhere_says_where_it_looked_and_creates_nothing() {
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::bin())
            .args(args)
            .current_dir(elsewhere.path())
            .env_remove("YIHAOTONG_DATA_DIR")
            .env_remove("YIHAOTONG_CONFIG")
            .env_remove("RUST_LOG")
            .output()
            .expect("runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for args in [
        &["agents", "list"][..],
        &["cdrs"],
        &["routes", "list"],
        &["report"],
    ] {
        let (ok, err) = run(args);
        assert!(!ok, "{args:?}: {err}");
        assert!(
            err.contains("no database at data/db") && err.contains("YIHAOTONG_DATA_DIR"),
            "{args:?}: {err}"
        );
    }
    let (ok, err) = run(&["status"]);
    assert!(
        !ok && err.contains("no admin socket at data/admin.sock"),
        "{err}"
    );
    assert!(
        !elsewhere.path().join("data").exists(),
        "a database was made"
    );
}

/// `calls list` and `calls hangup` from the command line (Asterisk's `core
/// show channels` and `channel request hangup`), and every change made on
/// the command line in the audit log, with the user who made it, whether
/// the server runs or not.
#[test]
fn the_cli_lists_and_hangs_up_calls_and_its_changes_are_audited() {
    let mut server = TestServer::start();
    let mut trunk = Phone::new("13800138011");
    let d = common::answer_ivr(&server, &mut trunk, "12345", None);
    let (ok, out) = server.cli(&["calls", "list"]);
    assert!(ok, "{out}");
    let calls: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
    assert_eq!(calls.len(), 1, "{out}");
    assert_eq!(calls[0]["call_id"], d.call_id.as_str(), "{out}");
    assert_eq!(calls[0]["caller"], "13800138011", "{out}");
    let (ok, out) = server.cli(&["calls", "hangup", &d.call_id]);
    assert!(ok, "{out}");
    let bye = trunk.request("BYE", 3.0).expect("the caller gets BYE");
    trunk.reply(server.sip, &bye, 200, "x");
    let (ok, out) = server.cli(&["calls", "hangup", "no-such-call"]);
    assert!(!ok && out.contains("no-such-call"), "{out}");
    let (ok, out) = server.cli(&["routes", "set", "96700", "--queue", "main"]);
    assert!(ok, "{out}");

    // With the server stopped, the CLI writes the database itself.
    let _ = server.child.kill();
    let _ = server.child.wait();
    let (ok, out) = server.cli(&[
        "agents",
        "add",
        "1010",
        "--password",
        "s3cret-10",
        "--queues",
        "main",
    ]);
    assert!(ok, "{out}");
    server.restart();

    let admin = server.token("auditor", "admin", None);
    let (_, audit) = server.http("GET", "/api/v1/audit?since=1h", Some(&admin), None);
    let items = audit["items"].as_array().cloned().unwrap_or_default();
    for (action, target) in [
        ("call.hangup", d.call_id.as_str()),
        ("route.set", "96700"),
        ("agent.set", "1010"),
    ] {
        let entry = items
            .iter()
            .find(|e| e["action"] == action && e["target"] == target)
            .unwrap_or_else(|| panic!("no {action} {target} in {audit}"));
        assert!(
            entry["who"].as_str().is_some_and(|w| w.starts_with("cli:")),
            "{entry}"
        );
    }
    let agent = items
        .iter()
        .find(|e| e["action"] == "agent.set")
        .expect("agent.set");
    assert!(
        agent["detail"].get("password").is_none(),
        "the password is never audited: {agent}"
    );
    assert!(
        !items
            .iter()
            .any(|e| e["action"] == "call.hangup" && e["target"] == "no-such-call"),
        "a refused command is not a change: {audit}"
    );
}

/// One number everywhere: however the trunk writes the number (with +86,
/// 0086 or the 028 area code, or only in To), the seat's X-Dialed and
/// History-Info, the live call and the CDR all say the normalized number.
#[test]
fn the_dialed_number_is_the_normalized_one_everywhere() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let mut phone = Phone::bind("1001", "127.0.0.3");
    assert_eq!(
        phone.register(server.sip, "s3cret", yihaotong::sip::auth::Algorithm::Md5),
        200
    );
    let mut trunk = Phone::new("13800138012");
    let mut call_ids = Vec::new();
    for (i, written) in ["+86123450", "0086123450", "028123450", "to-only"]
        .iter()
        .enumerate()
    {
        let mut d = if *written == "to-only" {
            trunk.invite_to_only(server.sip, "123450")
        } else {
            trunk.invite(server.sip, written)
        };
        let inv = phone
            .request("INVITE", 5.0)
            .unwrap_or_else(|| panic!("{written}: seat rung"));
        assert_eq!(inv.headers.get("x-dialed"), Some("123450"), "{written}");
        let history = inv.headers.get("history-info").unwrap_or_default();
        assert!(history.contains("sip:123450@"), "{written}: {history}");
        let (_, live) = server.cli(&["calls", "list"]);
        let live: Vec<serde_json::Value> = serde_json::from_str(&live).expect("JSON");
        assert_eq!(live[0]["dialed"], "123450", "{written}: {live:?}");
        let tag = format!("a{i}");
        let mut leg = common::answer(&server, &mut phone, &inv, &tag);
        let ok = trunk
            .response(&d.call_id, "INVITE", 200, 3.0)
            .expect("caller answered");
        trunk.ack(server.sip, &mut d, &ok);
        phone.in_dialog(server.sip, &mut leg, "BYE", "");
        let bye = trunk.request("BYE", 3.0).expect("BYE to the caller");
        trunk.reply(server.sip, &bye, 200, "x");
        call_ids.push(d.call_id.clone());
        server.assert_idle();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, out) = server.cli(&["cdrs"]);
        let cdrs: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
        let ours: Vec<&serde_json::Value> = cdrs
            .iter()
            .filter(|c| call_ids.iter().any(|id| c["call_id"] == id.as_str()))
            .collect();
        if ours.len() == call_ids.len() {
            assert!(ours.iter().all(|c| c["dialed"] == "123450"), "{out}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "CDRs missing: {out}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Queues live in the store beside routes and agents: one added through
/// the CLI serves its first call without a restart, its removal is
/// refused while anything names it, the API does the same (audited), and
/// the settings' `[queues.NAME]` are there as seeds.
#[test]
fn queues_are_added_and_removed_while_the_server_runs() {
    let server = TestServer::start();
    let list = |server: &TestServer| -> Vec<serde_json::Value> {
        let (ok, out) = server.cli(&["queues", "list"]);
        assert!(ok, "{out}");
        serde_json::from_str(&out).expect("JSON")
    };
    // The settings' queues are there, with their figures now.
    let seeded = list(&server);
    let main = seeded
        .iter()
        .find(|q| q["name"] == "main")
        .expect("main seeded");
    assert_eq!(main["waiting"], 0, "{main}");

    let (ok, out) = server.cli(&[
        "queues",
        "add",
        "water",
        "--strategy",
        "ring-all",
        "--ring-timeout",
        "20s",
        "--description",
        "Water supply",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = server.cli(&["queues", "add", "water"]);
    assert!(!ok && out.contains("exists"), "{out}");
    let (ok, out) = server.cli(&["queues", "add", "gas", "--strategy", "random"]);
    assert!(
        !ok && out.contains("unknown variant `random`") && out.contains("ring-all"),
        "{out}"
    );
    let (ok, out) = server.cli(&["queues", "add", "gas", "--overflow", "queue:nosuch"]);
    assert!(!ok && out.contains("nothing was changed"), "{out}");
    let water = list(&server)
        .into_iter()
        .find(|q| q["name"] == "water")
        .expect("water listed");
    assert_eq!(
        (
            &water["keys"]["ring_timeout"],
            &water["strategy"],
            &water["description"]
        ),
        (
            &serde_json::json!(20),
            &serde_json::json!("ring-all"),
            &serde_json::json!("Water supply")
        ),
        "{water}"
    );

    // An agent and a route may name it now, and its first call reaches
    // the agent: the desk learned it without a restart.
    let (ok, out) = server.cli(&[
        "agents",
        "add",
        "1009",
        "--password",
        "s3cret",
        "--queues",
        "water",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = server.cli(&["routes", "set", "96800", "--queue", "water"]);
    assert!(ok, "{out}");
    let mut seat = Phone::bind("1009", "127.0.0.3");
    assert_eq!(
        seat.register(server.sip, "s3cret", yihaotong::sip::auth::Algorithm::Md5),
        200
    );
    let mut trunk = Phone::new("13800138020");
    let d = trunk.invite(server.sip, "96800");
    let offer = seat
        .request("INVITE", 5.0)
        .expect("the water queue rings its agent");
    seat.reply(server.sip, &offer, 486, "busy");

    // Removal is refused while a route, a caller or an agent is there.
    let (ok, out) = server.cli(&["queues", "remove", "water"]);
    assert!(!ok && out.contains("route(s) 96800"), "{out}");
    let (ok, out) = server.cli(&["routes", "remove", "96800"]);
    assert!(ok, "{out}");
    let (ok, out) = server.cli(&["queues", "remove", "water"]);
    assert!(!ok && out.contains("agent(s) 1009"), "{out}");
    let (ok, out) = server.cli(&["agents", "remove", "1009"]);
    assert!(ok, "{out}");
    let (ok, out) = server.cli(&["queues", "remove", "water"]);
    assert!(!ok && out.contains("1 caller(s) waiting"), "{out}");
    trunk.cancel(server.sip, &d);
    server.assert_idle();
    // A flow naming a queue keeps it too.
    let (ok, out) = server.cli(&["queues", "remove", "main"]);
    assert!(!ok && out.contains("flow(s)"), "{out}");

    // The API: made, refused field by field, listed, removed, audited.
    let admin = server.token("ops", "admin", None);
    let (code, body) = server.http(
        "PUT",
        "/api/v1/queues/gas",
        Some(&admin),
        Some(r#"{"strategy":"linear","wrap_up":"1m"}"#),
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = server.http(
        "PUT",
        "/api/v1/queues/gas",
        Some(&admin),
        Some(r#"{"strategy":"random"}"#),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = server.http(
        "PUT",
        "/api/v1/queues/gas",
        Some(&admin),
        Some(r#"{"moh":"no/such-prompt"}"#),
    );
    assert_eq!(code, 422, "{body}");
    let (_, queues) = server.http("GET", "/api/v1/queues", Some(&admin), None);
    let gas = queues
        .as_array()
        .and_then(|q| q.iter().find(|q| q["name"] == "gas"))
        .expect("gas listed")
        .clone();
    assert_eq!(
        (&gas["keys"]["wrap_up"], &gas["strategy"]),
        (&serde_json::json!(60), &serde_json::json!("linear")),
        "{gas}"
    );
    let (code, body) = server.http("DELETE", "/api/v1/queues/gas", Some(&admin), None);
    assert_eq!(code, 200, "{body}");
    let (code, body) = server.http("DELETE", "/api/v1/queues/gas", Some(&admin), None);
    assert_eq!(code, 422, "{body}");
    let (ok, out) = server.cli(&["queues", "remove", "water"]);
    assert!(ok, "{out}");
    let (ok, out) = server.cli(&["routes", "set", "96801", "--queue", "water"]);
    assert!(!ok && out.contains("queue `water` does not exist"), "{out}");
    let names: Vec<String> = list(&server)
        .iter()
        .filter_map(|q| q["name"].as_str().map(String::from))
        .collect();
    assert!(!names.contains(&"water".to_string()) && !names.contains(&"gas".to_string()));

    let (_, audit) = server.http("GET", "/api/v1/audit?since=1h", Some(&admin), None);
    let items = audit["items"].as_array().cloned().unwrap_or_default();
    for (action, target, who) in [
        ("queue.set", "water", "cli:"),
        ("queue.remove", "water", "cli:"),
        ("queue.set", "gas", "ops"),
        ("queue.remove", "gas", "ops"),
    ] {
        assert!(
            items.iter().any(|e| e["action"] == action
                && e["target"] == target
                && e["who"].as_str().is_some_and(|w| w.starts_with(who))),
            "no {action} {target} by {who} in {audit}"
        );
    }
}

/// With no server running the CLI keeps the same rules: a queue added
/// then is served at the next start, and the settings' seeds are there.
#[test]
fn queues_added_with_the_server_stopped_are_served_at_start() {
    let mut server = TestServer::start();
    let _ = server.child.kill();
    let _ = server.child.wait();
    let (ok, out) = server.cli(&["queues", "add", "heating", "--strategy", "linear"]);
    assert!(ok, "{out}");
    let (ok, out) = server.cli(&[
        "agents",
        "add",
        "1011",
        "--password",
        "s3cret",
        "--queues",
        "heating",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = server.cli(&["queues", "remove", "heating"]);
    assert!(!ok && out.contains("agent(s) 1011"), "{out}");
    server.restart();
    let (ok, out) = server.cli(&["queues", "list"]);
    assert!(ok, "{out}");
    let queues: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
    let heating = queues
        .iter()
        .find(|q| q["name"] == "heating")
        .expect("heating served");
    assert_eq!(
        (&heating["members"], &heating["strategy"]),
        (&serde_json::json!(1), &serde_json::json!("linear")),
        "{heating}"
    );
}

/// Lists print as tables for people, times in the city's local time;
/// `--format json` gives scripts what the API gives, `--format csv` rows.
#[test]
fn lists_are_tables_with_local_times_and_json_for_scripts() {
    let server = TestServer::start_with(&[("YIHAOTONG_IVR__UTC_OFFSET_MINUTES", "480")]);
    server.add_agent("1001", "s3cret", "main");
    let mut seat = Phone::bind("1001", "127.0.0.3");
    assert_eq!(
        seat.register(server.sip, "s3cret", yihaotong::sip::auth::Algorithm::Md5),
        200
    );
    let mut trunk = Phone::new("13800138030");
    let d = common::answer_ivr(&server, &mut trunk, "12345", None);
    let (ok, out) = server.cli(&["calls", "list", "--format", "table"]);
    assert!(
        ok && out.contains(&d.call_id) && out.contains("13800138030"),
        "{out}"
    );
    let (ok, out) = server.cli(&["calls", "hangup", &d.call_id]);
    assert!(ok, "{out}");
    let bye = trunk.request("BYE", 3.0).expect("the caller gets BYE");
    trunk.reply(server.sip, &bye, 200, "x");
    let cdr = server.wait_cdr(&d.call_id);
    // The city's date and hour now, as the tables must show them.
    let local_now =
        yihaotong::admin::tables::local_time(yihaotong::clock::now_ms(), 480)[..14].to_string();

    let (ok, agents) = server.cli(&["agents", "list", "--format", "table"]);
    assert!(ok, "{agents}");
    let lines: Vec<&str> = agents.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("SINCE"),
        "{agents}"
    );
    let row = lines
        .iter()
        .find(|l| l.starts_with("1001"))
        .expect("1001's row");
    assert!(
        row.contains("available") && row.contains(&local_now),
        "{agents}"
    );
    assert!(!agents.contains('{'), "no JSON in a table: {agents}");

    let (ok, cdrs) = server.cli(&["cdrs", "--format", "table"]);
    assert!(ok, "{cdrs}");
    let row = cdrs
        .lines()
        .find(|l| l.contains(cdr["call_id"].as_str().unwrap_or("?")))
        .unwrap_or_else(|| panic!("the call's row: {cdrs}"));
    assert!(
        row.starts_with(&local_now) && row.contains("13800138030"),
        "{row}"
    );

    let (ok, status) = server.cli(&["status", "--format", "table"]);
    assert!(ok, "{status}");
    assert!(
        status.contains("rtp ports")
            && status.contains("available 1")
            && status.lines().count() < 40,
        "{status}"
    );
    let (ok, csv) = server.cli(&["queues", "list", "--format", "csv"]);
    assert!(ok, "{csv}");
    assert!(csv.starts_with("QUEUE,STRATEGY,WAITING"), "{csv}");
    assert!(csv.lines().any(|l| l.starts_with("main,")), "{csv}");

    // Scripts: the default of TestServer::cli is `--format json`.
    let (ok, json) = server.cli(&["agents", "list"]);
    assert!(ok, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert!(v[0]["since"].is_u64(), "{v}");
}

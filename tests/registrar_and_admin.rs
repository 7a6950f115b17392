//! Registrar persistence, live administration through the admin socket, and
//! the first agent-selection rules of the ACD, all against the real server.

use yihaotong_testkit as common;

use common::{Phone, TestServer};
use yihaotong::sip::auth::Algorithm;

#[test]
fn bindings_survive_a_restart_and_routes_change_live() {
    let mut server = TestServer::start();
    server.add_agent("1001", "s3cret", "hrss");
    let mut agent = Phone::new("1001");
    assert_eq!(agent.register(server.sip, "s3cret", Algorithm::Md5), 200);
    // Route a number live, while the server runs (through the admin socket).
    let (ok, out) = server.cli(&[
        "routes",
        "set",
        "12333",
        "--queue",
        "hrss",
        "--hotline",
        "social insurance",
    ]);
    assert!(ok, "{out}");
    server.restart();
    // After the restart the binding is still there: the call reaches the phone.
    let mut trunk = Phone::new("13800000000");
    let d = trunk.invite(server.sip, "12333");
    let inv = agent
        .request("INVITE", 5.0)
        .expect("agent rung after restart");
    assert_eq!(inv.headers.get("x-hotline"), Some("social insurance"));
    agent.reply(server.sip, &inv, 486, "busy");
    // The only agent was busy: the caller waits in line (ringing) and is
    // offered to the same agent again after `retry` (1 s in tests).
    let again = agent
        .request("INVITE", 5.0)
        .expect("offered again after retry");
    agent.reply(server.sip, &again, 486, "busy");
    trunk.cancel(server.sip, &d);
    assert_eq!(trunk.final_status(&d.call_id, "INVITE", 3.0), Some(487));
    // Remove the route: the next call is refused with 404.
    let (ok, out) = server.cli(&["routes", "remove", "12333"]);
    assert!(ok, "{out}");
    let d = trunk.invite(server.sip, "12333");
    assert_eq!(trunk.final_status(&d.call_id, "INVITE", 3.0), Some(404));
}

#[test]
fn busy_agent_passes_the_call_to_the_next_and_no_answer_times_out() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    server.add_agent("1002", "s3cret", "main");
    server.add_agent("1003", "s3cret", "main");
    let mut a1 = Phone::new("1001");
    let mut a2 = Phone::new("1002");
    let mut a3 = Phone::new("1003");
    for a in [&mut a1, &mut a2, &mut a3] {
        assert_eq!(a.register(server.sip, "s3cret", Algorithm::Md5), 200);
    }
    let mut trunk = Phone::new("13800000000");
    let d = trunk.invite(server.sip, "123450");
    // All idle equally long: tried in id order. 1001 is busy, 1002 never answers
    // (ring_timeout is 3 s in tests: its INVITE is cancelled), 1003 answers.
    let inv1 = a1.request("INVITE", 5.0).expect("1001 rung first");
    a1.reply(server.sip, &inv1, 486, "a1");
    let inv2 = a2.request("INVITE", 5.0).expect("1002 rung next");
    a2.reply(server.sip, &inv2, 180, "a2");
    let cancel = a2
        .request("CANCEL", 6.0)
        .expect("1002 cancelled after ring_timeout");
    a2.reply(server.sip, &cancel, 200, "a2");
    a2.reply(server.sip, &inv2, 487, "a2");
    let inv3 = a3.request("INVITE", 5.0).expect("1003 rung last");
    a3.reply(server.sip, &inv3, 200, "a3");
    a3.request("ACK", 3.0).expect("ACK");
    let ok = trunk
        .response(&d.call_id, "INVITE", 200, 3.0)
        .expect("answered");
    assert_eq!(ok.status, 200);
}

#[test]
fn cli_validates_input_and_check_reports_file_line() {
    let server = TestServer::start();
    let (ok, out) = server.cli(&["agents", "add", "bad id!", "--password", "xxxxxx"]);
    assert!(!ok && out.contains("agent id"), "{out}");
    // One password rule for the CLI and the API.
    let (ok, out) = server.cli(&["agents", "add", "1009", "--password", "abcd"]);
    assert!(
        !ok && out.contains("password must be 6 to 128 characters"),
        "{out}"
    );
    let admin = server.token("ops", "admin", None);
    for short in ["abcd", "abc\u{7}def"] {
        let (code, body) = server.http(
            "PUT",
            "/api/v1/agents/1009",
            Some(&admin),
            Some(&serde_json::json!({ "password": short, "queues": ["main"] }).to_string()),
        );
        assert_eq!(code, 400, "{body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("password")),
            "{body}"
        );
    }
    let (ok, out) = server.cli(&["agents", "add", "1009", "--password", "abc\u{7}def"]);
    assert!(!ok && out.contains("control characters"), "{out}");
    let plan = server.dir.path().join("plan.toml");
    std::fs::write(&plan, "[[route]]\nnumber = \"12345\"\nqueue = \"main\"\n[[route]]\nnumber = \"1x\"\nqueue = \"q\"\n").expect("write");
    let (ok, out) = server.cli(&["routes", "import", &plan.display().to_string()]);
    assert!(!ok && out.contains("plan.toml:4"), "{out}");
    let (ok, out) = server.cli(&["check", "--plan", &plan.display().to_string()]);
    assert!(!ok && out.contains("plan.toml:4"), "{out}");
    let cfg = server.dir.path().join("y.toml");
    std::fs::write(&cfg, "[rtp]\nport_mn = 1\n").expect("write");
    let (ok, out) = server.cli(&["--config", &cfg.display().to_string(), "check"]);
    assert!(
        !ok && out.contains("y.toml:2") && out.contains("port_mn"),
        "{out}"
    );
    // Queue settings: a strategy that does not exist names its line; a hold
    // prompt or an overflow flow that does not exist is named by its key.
    std::fs::write(&cfg, "[queues.main]\nstrategy = \"random\"\n").expect("write");
    let (ok, out) = server.cli(&["--config", &cfg.display().to_string(), "check"]);
    assert!(!ok && out.contains("random"), "{out}");
    std::fs::write(
        &cfg,
        "[queues.main]\nmoh = \"common/nope\"\noverflow = { flow = \"nope\" }\n[queues.duty]\noverflow = { queue = \"nowhere\" }\n",
    )
    .expect("write");
    let (ok, out) = server.cli(&["--config", &cfg.display().to_string(), "check"]);
    assert!(!ok && out.contains("[queues.duty] overflow"), "{out}");
    std::fs::write(
        &cfg,
        "[queues.main]\nmoh = \"common/nope\"\noverflow = { flow = \"nope\" }\n",
    )
    .expect("write");
    let (ok, out) = server.cli(&["--config", &cfg.display().to_string(), "check"]);
    assert!(
        !ok && out.contains("[queues.main] moh")
            && out.contains("[queues.main] overflow: flow `nope`"),
        "{out}"
    );
}

#[test]
fn a_seat_that_moves_is_rung_where_it_registered_last() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let mut trunk = Phone::new("13800000000");
    for _ in 0..2 {
        // The same seat registers from a new phone (new address) each round;
        // the call must reach the new one, not the one before.
        let mut phone = Phone::new("1001");
        assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
        let d = trunk.invite(server.sip, "123450");
        let inv = phone
            .request("INVITE", 5.0)
            .expect("the newest registration is rung");
        phone.reply(server.sip, &inv, 486, "busy");
        trunk.cancel(server.sip, &d);
        assert_eq!(trunk.final_status(&d.call_id, "INVITE", 5.0), Some(487));
        assert_eq!(
            phone.register_expires(server.sip, "s3cret", Algorithm::Md5, 0),
            200
        );
    }
}

#[test]
fn strangers_get_silence_when_so_configured_while_trunk_and_agents_are_answered() {
    let server = TestServer::start_with(&[("YIHAOTONG_SIP__ANSWER_STRANGERS", "false")]);
    server.add_agent("1001", "s3cret", "main");
    // A scanner on another address: OPTIONS and INVITE get nothing at all.
    let mut scanner = Phone::bind("scan", "127.0.0.2");
    assert_eq!(scanner.options(server.sip), None);
    let d = scanner.invite(server.sip, "12345");
    assert_eq!(scanner.final_status(&d.call_id, "INVITE", 1.0), None);
    // The trunk is answered.
    assert_eq!(Phone::new("trunk").options(server.sip), Some(200));
    // An agent's phone registers from its own address and is answered after.
    let mut agent = Phone::bind("1001", "127.0.0.3");
    assert_eq!(
        agent.options(server.sip),
        None,
        "not known before registering"
    );
    assert_eq!(agent.register(server.sip, "s3cret", Algorithm::Md5), 200);
    assert_eq!(agent.options(server.sip), Some(200));
    server.assert_idle();
}

/// Scanners learn nothing about what answers: no Server or User-Agent header
/// unless `[sip] product` names one.
#[test]
fn server_and_user_agent_headers_are_off_unless_configured() {
    for (product, expected) in [("", None), ("yihaotong-test", Some("yihaotong-test"))] {
        let server = TestServer::start_with(&[("YIHAOTONG_SIP__PRODUCT", product)]);
        let mut probe = Phone::new("probe");
        probe.out_of_dialog(server.sip, "OPTIONS", "SIP/2.0", "product-probe", "");
        let ok = probe
            .response("product-probe", "OPTIONS", 200, 2.0)
            .expect("OPTIONS answered");
        assert_eq!(ok.headers.get("server"), expected, "product {product:?}");
        // The same for a stateless refusal and for the challenge to a REGISTER.
        probe.out_of_dialog(server.sip, "OPTIONS", "SIP/3.0", "product-505", "");
        let refused = probe
            .response("product-505", "OPTIONS", 505, 2.0)
            .expect("505 answered");
        assert_eq!(refused.status, 505);
        assert_eq!(refused.headers.get("server"), expected);
        assert!(refused.headers.get("user-agent").is_none());
    }
}

#[test]
fn a_server_starting_on_a_held_database_waits_and_status_never_holds_it() {
    // `status` with no server running is refused without opening (or even
    // creating) the database: a monitoring loop cannot keep a server from
    // starting.
    let mut server = TestServer::start();
    let elsewhere = server.dir.path().join("never-opened");
    let out = std::process::Command::new(common::bin())
        .arg("status")
        .envs(server.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("YIHAOTONG_DATA_DIR", &elsewhere)
        .output()
        .expect("run status");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
    assert!(
        !yihaotong::store::db_exists(&elsewhere),
        "status opened the database"
    );

    // A second server on the same data dir waits for the database instead
    // of failing, and takes over once the first has stopped.
    let mut second = common::spawn_server(&server.env);
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        matches!(second.try_wait(), Ok(None)),
        "the second server gave up while the first held the database"
    );
    server.signal("TERM");
    let _ = server.child.wait();
    let probe = Phone::new("probe");
    let mut answered = None;
    for _ in 0..100 {
        answered = probe.options(server.sip);
        if answered.is_some() {
            break;
        }
        assert!(
            matches!(second.try_wait(), Ok(None)),
            "the second server exited"
        );
    }
    assert_eq!(answered, Some(200), "the second server did not come up");
    let _ = second.kill();
    let _ = second.wait();
}

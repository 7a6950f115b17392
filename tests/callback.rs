//! Callback instead of waiting, against the real server: the caller books it
//! with a key while waiting, hangs up, and is called back through the trunk
//! once an agent is on the line, also across a kill -9 and restart.

use yihaotong_testkit as common;

use std::time::{Duration, Instant};

use common::{answer, Phone, PhoneDialog, TestServer};
use yihaotong::sip::auth::Algorithm;

/// A server whose queues offer callbacks after 1 s, calling back through
/// `citizen`'s address, with agent 1001 registered but on a break.
fn server_for(citizen: &Phone) -> (TestServer, Phone) {
    let outbound = format!("sip:{}", citizen.addr);
    let server = TestServer::start_with(&[
        ("YIHAOTONG_TRUNK__OUTBOUND", outbound.as_str()),
        ("YIHAOTONG_QUEUE__CALLBACK_AFTER", "1"),
        ("YIHAOTONG_QUEUE__CALLBACK_RING", "5"),
        ("YIHAOTONG_QUEUE__CALLBACK_RETRY", "1"),
    ]);
    server.add_agent("1001", "s3cret", "main");
    let mut agent = Phone::bind("1001", "127.0.0.3");
    assert_eq!(agent.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let (ok, out) = server.cli(&["agents", "state", "1001", "break"]);
    assert!(ok, "{out}");
    (server, agent)
}

/// The citizen calls 12345 (a flow answers, then the queue), presses 1
/// after the callback offer, and is told goodbye.
fn book(server: &TestServer, citizen: &mut Phone) -> String {
    let mut d = citizen.invite(server.sip, "12345");
    let ok = citizen
        .response(&d.call_id, "INVITE", 200, 3.0)
        .expect("answered by the flow");
    citizen.ack(server.sip, &mut d, &ok);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the callback was never booked");
        press(server, citizen, &mut d, '1');
        if let Some(bye) = citizen.recv_where(1.0, |m| {
            matches!(m, yihaotong::sip::message::Message::Request(r) if r.method.as_str() == "BYE")
        }) {
            let yihaotong::sip::message::Message::Request(bye) = bye else {
                unreachable!("filtered");
            };
            citizen.reply(server.sip, &bye, 200, "c");
            return d.call_id;
        }
    }
}

fn press(server: &TestServer, phone: &Phone, d: &mut PhoneDialog, key: char) {
    phone.in_dialog_typed(
        server.sip,
        d,
        "INFO",
        "application/dtmf-relay",
        &format!("Signal={key}\r\nDuration=160\r\n"),
    );
}

/// The booked callback comes: the agent is rung first (with the citizen's
/// number and the booking call), then the citizen; they talk; the citizen
/// hangs up.
fn called_back(server: &TestServer, agent: &mut Phone, citizen: &mut Phone, booked: &str) {
    // (Already available after a retry: then this changes nothing.)
    let _ = server.cli(&["agents", "state", "1001", "available"]);
    let inv = agent
        .request("INVITE", 10.0)
        .expect("the agent is rung first");
    assert_eq!(inv.headers.get("x-callback"), Some(booked));
    assert_eq!(inv.core.from.user.as_deref(), Some("13800000009"));
    let leg = answer(server, agent, &inv, "a");
    let call = citizen
        .request("INVITE", 5.0)
        .expect("the citizen is called through the trunk");
    assert_eq!(call.uri.split('@').next(), Some("sip:13800000009"));
    assert_eq!(call.core.from.user.as_deref(), Some("12345"));
    let mut d = answer(server, citizen, &call, "c");
    std::thread::scope(|s| {
        let a = s.spawn(|| agent.exchange_rtp_of(leg.remote_rtp.expect("media"), 50, 1, 0x55));
        let c = citizen.exchange_rtp_of(d.remote_rtp.expect("media"), 50, 2, 0x77);
        let a = a.join().expect("agent");
        assert!(a > 30 && c > 30, "agent {a}, citizen {c}");
    });
    citizen.in_dialog(server.sip, &mut d, "BYE", "");
    let bye = agent.request("BYE", 3.0).expect("BYE to the agent");
    agent.reply(server.sip, &bye, 200, "a");
    server.assert_idle();
}

fn report_row(server: &TestServer) -> serde_json::Value {
    let (ok, out) = server.cli(&["report", "--format", "json"]);
    assert!(ok, "{out}");
    let rows: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    rows.as_array()
        .and_then(|r| r.iter().find(|r| r["key"] == "total").cloned())
        .expect("total row")
}

#[test]
fn a_booked_callback_connects_an_agent_then_calls_the_citizen() {
    let mut citizen = Phone::new("13800000009");
    let (server, mut agent) = server_for(&citizen);
    let booked = book(&server, &mut citizen);
    called_back(&server, &mut agent, &mut citizen, &booked);
    let (ok, out) = server.cli(&["cdrs"]);
    assert!(ok, "{out}");
    let cdrs: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let cdrs = cdrs.as_array().cloned().unwrap_or_default();
    assert!(cdrs
        .iter()
        .any(|c| c["call_id"] == booked.as_str() && c["disposition"] == "callback-booked"));
    assert!(cdrs
        .iter()
        .any(|c| c["callback_for"] == booked.as_str() && c["disposition"] == "callback-completed"));
    let total = report_row(&server);
    assert_eq!(total["callbacks_requested"], 1);
    assert_eq!(total["callbacks_completed"], 1);
    let (ok, log) = server.cli(&["--format", "table", "queue-log"]);
    assert!(ok, "{log}");
    assert!(log.contains("|CALLBACK|"), "{log}");
}

#[test]
fn a_booked_callback_survives_kill_9_and_an_unanswered_attempt() {
    let mut citizen = Phone::new("13800000009");
    let (mut server, mut agent) = server_for(&citizen);
    let booked = book(&server, &mut citizen);
    // The booking's place in line is no call: kills and restarts close
    // nothing out for it, however many.
    std::thread::sleep(Duration::from_millis(1500));
    let records = |server: &TestServer| -> Vec<serde_json::Value> {
        let (ok, out) = server.cli(&["cdrs"]);
        assert!(ok, "{out}");
        serde_json::from_str(&out).expect("JSON")
    };
    let before = records(&server);
    for _ in 0..3 {
        server.restart();
    }
    let after = records(&server);
    assert_eq!(after.len(), before.len(), "{after:?}");
    assert!(
        after.iter().all(|c| c["disposition"] != "crashed"),
        "{after:?}"
    );
    // After the restart the booking is back in line; the agent (still on
    // break, as saved) comes back, and the first call to the citizen goes
    // unanswered.
    let (ok, out) = server.cli(&["agents", "state", "1001", "available"]);
    assert!(ok, "{out}");
    let inv = agent.request("INVITE", 10.0).expect("the agent is rung");
    assert_eq!(inv.headers.get("x-callback"), Some(booked.as_str()));
    let _leg = answer(&server, &mut agent, &inv, "a");
    let call = citizen
        .request("INVITE", 5.0)
        .expect("the citizen is called");
    citizen.reply(server.sip, &call, 486, "c");
    let bye = agent.request("BYE", 5.0).expect("the agent is released");
    agent.reply(server.sip, &bye, 200, "a");
    server.assert_idle();
    // The second attempt, after callback_retry, reaches the citizen.
    called_back(&server, &mut agent, &mut citizen, &booked);
}

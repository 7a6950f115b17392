//! After the call: the caller rates the service (满意度评价). Real phones
//! over loopback against the real binary: when the agent hangs up first,
//! the caller stays, hears the bundled `rating` flow (checked by
//! correlating what arrives with the prompt's file), presses a key (RFC
//! 4733 or an in-band tone), and the rating lands on the call's own CDR,
//! in the queue log, on the event stream and in the report. When the caller
//! hangs up first, nothing runs.

use yihaotong_testkit as common;

use std::time::Duration;

use common::{answer, decode_pcmu, prompt_correlation, Phone, TestServer};
use yihaotong::sip::auth::Algorithm;

/// Agent 1001 of queue main, registered; and a route (`route`: the number
/// and any more of `routes set`'s options) to main whose after-call flow
/// is `flow`.
fn seat_and_route(server: &TestServer, route: &[&str], flow: &str) -> Phone {
    server.add_agent("1001", "s3cret", "main");
    let mut args = vec!["routes", "set"];
    args.extend(route);
    args.extend(["--queue", "main", "--after-call-flow", flow]);
    let (ok, out) = server.cli(&args);
    assert!(ok, "{out}");
    let mut seat = Phone::bind("1001", "127.0.0.3");
    assert_eq!(seat.register(server.sip, "s3cret", Algorithm::Md5), 200);
    seat
}

/// A queue call to `number` answered by `seat`: (caller's dialog, agent's dialog).
fn answered(
    server: &TestServer,
    trunk: &mut Phone,
    seat: &mut Phone,
    number: &str,
) -> (common::PhoneDialog, common::PhoneDialog) {
    let mut d = trunk.invite(server.sip, number);
    let inv = seat.request("INVITE", 10.0).expect("the agent is rung");
    let agent_leg = answer(server, seat, &inv, "agent-tag");
    let ok = trunk
        .response(&d.call_id, "INVITE", 200, 10.0)
        .expect("the caller is answered");
    trunk.ack(server.sip, &mut d, &ok);
    (d, agent_leg)
}

/// The agent hangs up; the caller gets no BYE but the rating prompt.
fn agent_hangs_up_and_rating_is_heard(
    server: &TestServer,
    trunk: &mut Phone,
    seat: &mut Phone,
    agent_leg: &mut common::PhoneDialog,
) {
    // What the caller heard before (the flow's welcome, the hold music)
    // is read off first.
    let _ = trunk.record_rtp(0.5);
    seat.in_dialog(server.sip, agent_leg, "BYE", "");
    assert_eq!(seat.final_status(&agent_leg.call_id, "BYE", 3.0), Some(200));
    hears_the_rating(trunk);
}

/// The caller, alone on the line now, hears the rating's question (and no
/// BYE): 2.5 s of it, checked against the prompt's file.
fn hears_the_rating(trunk: &mut Phone) {
    let heard = trunk.record_rtp(2.5);
    assert!(
        trunk.request("BYE", 0.2).is_none(),
        "the caller stays on the line for the rating"
    );
    let rating = prompt_correlation(&decode_pcmu(&heard), "rating/ask", 50);
    let other = prompt_correlation(&decode_pcmu(&heard), "survey/ask", 50);
    assert!(rating > 0.9, "the rating prompt correlates {rating}");
    assert!(other < 0.5, "another prompt correlates {other}");
}

/// The caller presses `key` (RFC 4733) and is thanked and hung up.
fn rates(server: &TestServer, trunk: &mut Phone, d: &common::PhoneDialog, key: char, ts: u32) {
    trunk.press_rfc4733(d.remote_rtp.expect("media"), key, 101, ts);
    let bye = trunk
        .request("BYE", 15.0)
        .expect("thanks, then the flow hangs up");
    trunk.reply(server.sip, &bye, 200, "x");
}

fn report_total(server: &TestServer, by: &str) -> Vec<serde_json::Value> {
    let (ok, out) = server.cli(&["report", "--by", by]);
    assert!(ok, "{out}");
    serde_json::from_str(&out).expect("report JSON")
}

#[test]
fn the_caller_rates_the_agent_after_the_agent_hangs_up() {
    let server = TestServer::start();
    let mut seat = seat_and_route(&server, &["96900", "--hotline", "rated line"], "rating");

    // 1. A straight-to-queue route: the key by RFC 4733.
    let mut trunk = Phone::new("13800139001");
    let (mut d, mut agent_leg) = answered(&server, &mut trunk, &mut seat, "96900");
    // Half a second of talk each way.
    trunk.exchange_rtp(d.remote_rtp.expect("media"), 25, 0x1111);
    seat.exchange_rtp(agent_leg.remote_rtp.expect("media"), 25, 0x2222);
    agent_hangs_up_and_rating_is_heard(&server, &mut trunk, &mut seat, &mut agent_leg);
    // The caller's line is not silent during the rating either.
    trunk.exchange_rtp(d.remote_rtp.expect("media"), 75, 0x1111);
    rates(&server, &mut trunk, &d, '1', 900_000);
    let cdr = server.wait_cdr(&d.call_id);
    assert_eq!(
        (
            &cdr["rating"],
            &cdr["agent"],
            &cdr["disposition"],
            &cdr["hung_up_by"]
        ),
        (
            &serde_json::json!("satisfied"),
            &serde_json::json!("1001"),
            &serde_json::json!("answered"),
            &serde_json::json!("agent")
        ),
        "{cdr}"
    );
    // The recording stopped when the agent left: the second and a half
    // the caller spoke into the rating is not in it as agent talk.
    let path = cdr["recording"].as_str().expect("agent calls are recorded");
    let mut secs = 0.0;
    for _ in 0..50 {
        if let Ok(samples) = yihaotong::media::prompts::decode_to_8k(std::path::Path::new(path)) {
            secs = samples.len() as f64 / 8000.0;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(secs > 0.3 && secs < 1.5, "{secs} s recorded: {path}");
    let (_, cdrs) = server.cli(&["cdrs"]);
    let records: Vec<serde_json::Value> = serde_json::from_str(&cdrs).expect("JSON");
    assert_eq!(
        records
            .iter()
            .filter(|c| c["call_id"] == d.call_id.as_str())
            .count(),
        1,
        "one record for the call and its rating: {cdrs}"
    );
    let (ok, log) = server.cli(&["--format", "table", "queue-log"]);
    assert!(ok, "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains(&d.call_id) && l.contains("|main|1001|RATED|satisfied")),
        "{log}"
    );

    // 2. Through the 12345 flow (its queue names the rating now), the key
    // as an in-band tone.
    let (ok, out) = server.cli(&[
        "queues",
        "set",
        "main",
        "--description",
        "12345 general seats",
        "--after-call-flow",
        "rating",
    ]);
    assert!(ok, "{out}");
    // An old trunk: PCMU only, no telephone-event, keys as tones in the audio.
    let mut trunk2 = Phone::new("13800139002");
    let sdp = trunk2.sdp_pcmu_only();
    d = common::answer_ivr(&server, &mut trunk2, "12345", Some(&sdp));
    let inv = seat
        .request("INVITE", 20.0)
        .expect("the flow queues to main");
    agent_leg = answer(&server, &mut seat, &inv, "agent-tag-2");
    agent_hangs_up_and_rating_is_heard(&server, &mut trunk2, &mut seat, &mut agent_leg);
    trunk2.press_inband(d.remote_rtp.expect("media"), '2');
    let bye = trunk2.request("BYE", 15.0).expect("the flow hangs up");
    trunk2.reply(server.sip, &bye, 200, "x");
    let cdr = server.wait_cdr(&d.call_id);
    assert_eq!(cdr["rating"], "fair", "{cdr}");
    assert_eq!(
        cdr["flow"], "12345",
        "the record keeps the call's own flow: {cdr}"
    );

    // 3. The caller hangs up first: the agent gets BYE, nothing is rated.
    let mut trunk3 = Phone::new("13800139003");
    let (mut d3, _agent_leg3) = answered(&server, &mut trunk3, &mut seat, "96900");
    trunk3.in_dialog(server.sip, &mut d3, "BYE", "");
    assert_eq!(trunk3.final_status(&d3.call_id, "BYE", 3.0), Some(200));
    let bye = seat.request("BYE", 3.0).expect("the agent gets BYE");
    seat.reply(server.sip, &bye, 200, "x");
    let cdr = server.wait_cdr(&d3.call_id);
    assert!(cdr.get("rating").is_none(), "{cdr}");
    assert_eq!(cdr["hung_up_by"], "caller", "{cdr}");

    // 4. The caller hangs up during the rating: not rated (never "unsatisfied").
    let mut trunk4 = Phone::new("13800139004");
    let (mut d4, mut agent_leg4) = answered(&server, &mut trunk4, &mut seat, "96900");
    agent_hangs_up_and_rating_is_heard(&server, &mut trunk4, &mut seat, &mut agent_leg4);
    trunk4.in_dialog(server.sip, &mut d4, "BYE", "");
    assert_eq!(trunk4.final_status(&d4.call_id, "BYE", 3.0), Some(200));
    let cdr = server.wait_cdr(&d4.call_id);
    assert!(cdr.get("rating").is_none(), "{cdr}");
    assert_eq!(cdr["hung_up_by"], "agent", "{cdr}");
    server.assert_idle();

    // The report: rated 2 of 4 answered, one satisfied, one fair.
    let rows = report_total(&server, "agent");
    let agent = rows
        .iter()
        .find(|r| r["key"] == "1001")
        .expect("1001's row");
    assert_eq!(
        (
            &agent["answered"],
            &agent["rated"],
            &agent["satisfied"],
            &agent["fair"]
        ),
        (
            &serde_json::json!(4),
            &serde_json::json!(2),
            &serde_json::json!(1),
            &serde_json::json!(1)
        ),
        "{agent}"
    );
    assert_eq!(agent["satisfaction"], 1.0, "{agent}");
    let rows = report_total(&server, "hotline");
    let line = rows
        .iter()
        .find(|r| r["key"] == "rated line")
        .expect("the route's row");
    assert_eq!(
        (&line["rated"], &line["satisfied"]),
        (&serde_json::json!(1), &serde_json::json!(1)),
        "{line}"
    );

    let (_, metrics) = server.http_text("GET", "/metrics", None, None);
    for want in [
        "yihaotong_calls_rated_total{rating=\"satisfied\"} 1",
        "yihaotong_calls_rated_total{rating=\"fair\"} 1",
    ] {
        assert!(metrics.contains(want), "{want} in:\n{metrics}");
    }

    // The event stream replays `call.rated` with the agent and the rating.
    let admin = server.token("ops", "admin", None);
    let rated = rated_events(&server, &admin, 2);
    assert!(
        rated.iter().any(|e| e["agent"] == "1001"
            && e["queue"] == "main"
            && e["data"]["rating"] == "satisfied"),
        "{rated:?}"
    );
}

/// The first `n` `call.rated` events from the start of the backlog.
fn rated_events(server: &TestServer, token: &str, n: usize) -> Vec<serde_json::Value> {
    let (mut socket, _) = common::events_socket(server, token, "since=0").expect("upgraded");
    let mut rated = Vec::new();
    while rated.len() < n {
        let frame = socket.read().expect("a frame within 5 s");
        if let tungstenite::Message::Text(text) = frame {
            let event: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON");
            if event["kind"] == "call.rated" {
                rated.push(event);
            }
        }
    }
    rated
}

/// An agent sends the caller to the rating on purpose: by the feature code
/// `*88` in a REFER from the phone, or through the API. The agent's leg
/// ends, the caller rates, and no transfer is counted.
#[test]
fn an_agent_sends_the_caller_to_the_rating_by_code_or_api() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let admin = server.token("desk", "admin", None);
    let mut seat = Phone::bind("1001", "127.0.0.3");
    assert_eq!(seat.register(server.sip, "s3cret", Algorithm::Md5), 200);

    // By the phone: REFER to *88 (no after_call_flow is set anywhere).
    let mut trunk = Phone::new("13800139011");
    let (d, mut agent_leg) = answered(&server, &mut trunk, &mut seat, "123450");
    let _ = trunk.record_rtp(0.3);
    let to = format!("<sip:*88@{}>", server.sip);
    let r = common::refer(&server, &mut seat, &mut agent_leg, &to);
    assert_eq!(r.status, 202, "{r:?}");
    let bye = seat.request("BYE", 3.0).expect("the agent's leg ends");
    seat.reply(server.sip, &bye, 200, "x");
    hears_the_rating(&mut trunk);
    rates(&server, &mut trunk, &d, '1', 910_000);
    let cdr = server.wait_cdr(&d.call_id);
    assert_eq!(
        (&cdr["rating"], &cdr["hung_up_by"], &cdr["agent"]),
        (
            &serde_json::json!("satisfied"),
            &serde_json::json!("agent"),
            &serde_json::json!("1001")
        ),
        "{cdr}"
    );
    assert!(
        cdr["transfers"].as_array().is_none_or(|t| t.is_empty()),
        "{cdr}"
    );

    // Through the API: refused for a call in a flow, done for a bridged one.
    let mut trunk2 = Phone::new("13800139012");
    let ivr = common::answer_ivr(&server, &mut trunk2, "12345", None);
    let path = format!("/api/v1/calls/{}/transfer", ivr.call_id);
    let (code, body) = server.http("POST", &path, Some(&admin), Some(r#"{"flow":"rating"}"#));
    assert_eq!(code, 409, "{body}");
    let (code, body) = server.http(
        "POST",
        &path,
        Some(&admin),
        Some(r#"{"flow":"rating","to":"1002"}"#),
    );
    assert_eq!(code, 400, "{body}");
    let inv = seat
        .request("INVITE", 20.0)
        .expect("the flow queues to main");
    let mut agent_leg2 = answer(&server, &mut seat, &inv, "agent-tag-2");
    let (code, body) = server.http("POST", &path, Some(&admin), Some(r#"{"flow":"nosuch"}"#));
    assert_eq!(code, 422, "{body}");
    let _ = trunk2.record_rtp(0.3);
    let (code, body) = server.http("POST", &path, Some(&admin), Some(r#"{"flow":"rating"}"#));
    assert_eq!(code, 200, "{body}");
    let bye = seat.request("BYE", 3.0).expect("the agent's leg ends");
    seat.reply(server.sip, &bye, 200, "x");
    hears_the_rating(&mut trunk2);
    rates(&server, &mut trunk2, &ivr, '3', 920_000);
    let cdr = server.wait_cdr(&ivr.call_id);
    assert_eq!(cdr["rating"], "unsatisfied", "{cdr}");
    let _ = &mut agent_leg2;
    server.assert_idle();
    let rows = report_total(&server, "agent");
    let agent = rows
        .iter()
        .find(|r| r["key"] == "1001")
        .expect("1001's row");
    assert_eq!(
        (&agent["rated"], &agent["satisfaction"]),
        (&serde_json::json!(2), &serde_json::json!(0.5)),
        "{agent}"
    );
}

/// No key within the flow's time is no rating, never "unsatisfied": the
/// flow gives up, the caller is hung up, and nothing is counted. (The
/// bundled flow's question is 11 s long and waits 6 s twice; this one asks
/// briefly and waits a second, with the same keys and the same ending.)
#[test]
fn no_key_in_time_is_no_rating() {
    let flows = tempfile::tempdir().expect("tempdir");
    let bundled = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ivr-flows/rating.toml"),
    )
    .expect("the bundled rating flow");
    let quick = bundled
        .replace(
            r#"menu = ["rating/ask", "english/rating-ask"]"#,
            r#"menu = "silence/500ms""#,
        )
        .replace(r#"timeout = "6s""#, r#"timeout = "1s""#)
        .replace("retries = 1", "retries = 0");
    assert_ne!(quick, bundled);
    std::fs::write(flows.path().join("quick-rating.toml"), quick).expect("write");
    let flows_dir = flows.path().display().to_string();
    let server = TestServer::start_with(&[("YIHAOTONG_FLOWS_DIR", flows_dir.as_str())]);
    let mut seat = seat_and_route(&server, &["96901"], "quick-rating");
    let mut trunk = Phone::new("13800139021");
    let (d, mut agent_leg) = answered(&server, &mut trunk, &mut seat, "96901");
    seat.in_dialog(server.sip, &mut agent_leg, "BYE", "");
    assert_eq!(seat.final_status(&agent_leg.call_id, "BYE", 3.0), Some(200));
    let bye = trunk
        .request("BYE", 10.0)
        .expect("the flow gives up and hangs up");
    trunk.reply(server.sip, &bye, 200, "x");
    let cdr = server.wait_cdr(&d.call_id);
    assert!(cdr.get("rating").is_none(), "{cdr}");
    assert_eq!(cdr["hung_up_by"], "agent", "{cdr}");
    let (_, log) = server.cli(&["--format", "table", "queue-log"]);
    assert!(!log.contains("RATED"), "{log}");
    let rows = report_total(&server, "hotline");
    assert_eq!(
        rows.last().map(|r| &r["rated"]),
        Some(&serde_json::json!(0))
    );
}

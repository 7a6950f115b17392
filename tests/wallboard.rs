//! The wallboard in a real browser: Debian's Chromium, headless, driven over
//! its DevTools protocol (a WebSocket) from here. Real calls go through the
//! server and the test waits for the numbers on the page to follow: a ring,
//! an answer, the day's connection rate, a caller waiting. It keeps a
//! screenshot as an artifact at `target/artifacts/wallboard.png`.
//!
//! Chromium must be installed under CI (`.ci/run` installs it); elsewhere the
//! test says it was skipped.

use yihaotong_testkit as common;
use yihaotong_testkit::browser;

use std::time::Duration;

use browser::{chromium, Browser};
use common::{answer, connected_call, Phone, TestServer};
use serde_json::json;
use std::path::Path;
use yihaotong::sip::auth::Algorithm;

#[test]
fn the_wallboard_follows_real_calls_in_a_real_browser() {
    let Some(bin) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium must be installed under CI (.ci/run installs it)"
        );
        eprintln!("SKIPPED: chromium not installed (apt-get install chromium)");
        return;
    };
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    server.add_agent("1002", "s3cret", "main");
    let floor = server.token("wall", "supervisor", None);
    let mut phone = Phone::bind("1001", "127.0.0.3");
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);

    let mut browser = Browser::launch(&bin);
    browser.call("Page.enable", json!({}));
    browser.call(
        "Page.navigate",
        json!({ "url": format!("http://{}/wallboard#token={floor}", server.http) }),
    );
    // Live, with nothing yet: no calls today, main's agents as they are.
    browser.wait_text("[data-test=\"live\"]", "实时 · live");
    browser.wait_text("[data-test=\"calls\"]", "0");
    browser.wait_text("[data-queue=\"main\"] [data-test=\"available\"]", "1");
    browser.wait_text("[data-queue=\"main\"] [data-test=\"on-call\"]", "0");
    browser.wait_agent("1001", "available");
    browser.wait_agent("1002", "logged-out");
    assert_eq!(
        browser.eval("location.hash"),
        "",
        "the token leaves the address bar"
    );

    // A call rings 1001, is answered, and ends: the page follows each step.
    let mut trunk = Phone::new("13800000091");
    let mut d = trunk.invite(server.sip, "123450");
    let inv = phone.request("INVITE", 5.0).expect("agent rung");
    browser.wait_text("[data-queue=\"main\"] [data-test=\"ringing\"]", "1");
    browser.wait_agent("1001", "ringing");
    // Offered today counts the calls alive, not only the finished ones.
    browser.wait_text("[data-test=\"calls\"]", "1");
    let _leg = answer(&server, &mut phone, &inv, "a1");
    let ok = trunk
        .response(&d.call_id, "INVITE", 200, 3.0)
        .expect("caller answered");
    trunk.ack(server.sip, &mut d, &ok);
    browser.wait_text("[data-queue=\"main\"] [data-test=\"on-call\"]", "1");
    browser.wait_agent("1001", "on-call");
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    let bye = phone.request("BYE", 3.0).expect("BYE to the agent");
    phone.reply(server.sip, &bye, 200, "a1");
    browser.wait_text("[data-test=\"calls\"]", "1");
    browser.wait_text("[data-test=\"answered\"]", "1");
    browser.wait_text("[data-test=\"connection-rate\"]", "100.0%");
    browser.wait_text("[data-test=\"within-15s\"]", "100.0%");
    browser.wait_text("[data-test=\"satisfaction\"]", "–");
    browser.wait_agent("1001", "available");
    assert_eq!(
        browser.eval("document.getElementById('kpi-connected').className"),
        "kpi ok"
    );

    // 1001 takes a second call and a third caller waits for a seat.
    let mut second = Phone::new("13800000092");
    let (d2, _leg2) = connected_call(&server, &mut second, &mut phone, "a2");
    let mut third = Phone::new("13800000093");
    let d3 = third.invite(server.sip, "123450");
    browser.wait_text("[data-queue=\"main\"] [data-test=\"waiting\"]", "1");
    browser.wait_text("[data-queue=\"main\"] [data-test=\"on-call\"]", "1");
    browser.wait_text("[data-test=\"calls\"]", "3");
    // The longest wait ticks on the page between snapshots (each second:
    // what is read may be a second old, so give it two and a half).
    std::thread::sleep(Duration::from_millis(2500));
    let waited = browser.text("[data-queue=\"main\"] [data-test=\"longest-wait\"]");
    assert!(
        waited
            .as_str()
            .is_some_and(|w| w.starts_with("0:0") && w != "0:00"),
        "{waited}; the API says {}; the page's state: {}",
        server.http("GET", "/api/v1/queues", Some(&floor), None).1,
        browser.eval("JSON.stringify({q: board.queues.find(q => q.name === 'main'), at: board.fetchedAt, now: Date.now()})")
    );
    let in_state = browser.text("[data-agent=\"1001\"] [data-test=\"in-state\"]");
    assert!(
        in_state.as_str().is_some_and(|t| t.starts_with("0:")),
        "{in_state}"
    );

    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts/wallboard.png");
    let bytes = browser.screenshot(&shot);
    assert!(bytes > 10_000, "a real picture of the board: {bytes} bytes");
    eprintln!("wallboard screenshot: {}", shot.display());

    // The waiting caller gives up; the agent sends the second caller to
    // the rating and leaves; the caller rates "fairly satisfied": back to
    // quiet, with today's satisfaction beside the connection rate.
    third.cancel(server.sip, &d3);
    let desk = server.token("desk", "admin", None);
    let path = format!("/api/v1/calls/{}/transfer", d2.call_id);
    let (code, body) = server.http("POST", &path, Some(&desk), Some(r#"{"flow":"rating"}"#));
    assert_eq!(code, 200, "{body}");
    let bye = phone.request("BYE", 3.0).expect("BYE to the agent");
    phone.reply(server.sip, &bye, 200, "a2");
    std::thread::sleep(Duration::from_millis(300));
    second.press_rfc4733(d2.remote_rtp.expect("media"), '2', 101, 930_000);
    let bye = second
        .request("BYE", 15.0)
        .expect("the rating ends the call");
    second.reply(server.sip, &bye, 200, "x");
    browser.wait_text("[data-queue=\"main\"] [data-test=\"waiting\"]", "0");
    browser.wait_text("[data-queue=\"main\"] [data-test=\"on-call\"]", "0");
    browser.wait_text("[data-test=\"calls\"]", "3");
    browser.wait_text("[data-test=\"satisfaction\"]", "100.0%");
    browser.wait_text("[data-test=\"rated\"]", "评价 rated 1");
}

//! The wallboard in a real browser: Debian's Chromium, headless, driven over
//! its DevTools protocol (a WebSocket) from here. Real calls go through the
//! server and the test waits for the numbers on the page to follow: a ring,
//! an answer, the day's connection rate, a caller waiting. It keeps a
//! screenshot as an artifact at `target/artifacts/wallboard.png`.
//!
//! Chromium must be installed under CI (`.ci/run` installs it); elsewhere the
//! test says it was skipped.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{answer, connected_call, Phone, TestServer};
use serde_json::{json, Value};
use yihaotong::sip::auth::Algorithm;

fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        if found.is_some() {
            return found;
        }
    }
    None
}

/// A headless Chromium and one page of it, attached over the DevTools protocol.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    socket: tungstenite::WebSocket<TcpStream>,
    session: String,
    next_id: u64,
}

impl Browser {
    fn launch(bin: &Path) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // Chromium writes the port it took, and the browser's WebSocket
        // path, to DevToolsActivePort in the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break (port.trim().to_string(), path.trim().to_string());
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let tcp = TcpStream::connect(format!("127.0.0.1:{port}")).expect("DevTools port");
        tcp.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (socket, _) = tungstenite::client(url.as_str(), tcp).expect("DevTools WebSocket");
        let mut browser = Browser {
            child,
            _profile: profile,
            socket,
            session: String::new(),
            next_id: 1,
        };
        let target = browser.call("Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].as_str().expect("a target").to_string();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session")
            .to_string();
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1440, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
        );
        browser
    }

    /// One DevTools command (on the page once attached); its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = self.session.clone().into();
        }
        self.socket
            .send(tungstenite::Message::Text(message.to_string().into()))
            .expect("send to DevTools");
        loop {
            let frame = self.socket.read().expect("a DevTools message");
            let tungstenite::Message::Text(text) = frame else {
                continue;
            };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// A JavaScript expression's value in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }

    /// The text of the element `selector` finds (`null` when none).
    fn text(&mut self, selector: &str) -> Value {
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({}); return e ? e.textContent.trim() : null; }})()",
            json!(selector)
        ))
    }

    /// Waits (up to 15 s) until `selector`'s text is `want`; fails with the
    /// page's text.
    fn wait_text(&mut self, selector: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.text(selector) == want {
                return;
            }
            if Instant::now() > deadline {
                let page = self.eval("document.body.innerText");
                panic!(
                    "{selector} never showed {want:?} (shows {}); the page:\n{}",
                    self.text(selector),
                    page.as_str().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until agent `id`'s card shows `state`.
    fn wait_agent(&mut self, id: &str, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let read = format!(
            "(() => {{ const e = document.querySelector('[data-agent=\"{id}\"]'); return e ? e.dataset.state : null; }})()"
        );
        loop {
            if self.eval(&read) == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent {id} never showed {state}; the page:\n{}",
                self.eval("document.body.innerText")
                    .as_str()
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The whole page (not just the window) as a PNG at `to`; its size.
    fn screenshot(&mut self, to: &Path) -> usize {
        let size = self.call("Page.getLayoutMetrics", json!({}))["cssContentSize"].clone();
        let shot = self.call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": { "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1 },
            }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("image data"))
            .expect("base64");
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).expect("artifacts dir");
        }
        std::fs::write(to, &png).expect("write screenshot");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        png.len()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    browser.wait_agent("1001", "available");
    assert_eq!(
        browser.eval("document.getElementById('kpi-connected').className"),
        "kpi ok"
    );

    // 1001 takes a second call and a third caller waits for a seat.
    let mut second = Phone::new("13800000092");
    let (mut d2, _leg2) = connected_call(&server, &mut second, &mut phone, "a2");
    let mut third = Phone::new("13800000093");
    let d3 = third.invite(server.sip, "123450");
    browser.wait_text("[data-queue=\"main\"] [data-test=\"waiting\"]", "1");
    browser.wait_text("[data-queue=\"main\"] [data-test=\"on-call\"]", "1");
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

    // The waiting caller gives up, the second call ends: back to quiet.
    third.cancel(server.sip, &d3);
    second.in_dialog(server.sip, &mut d2, "BYE", "");
    let bye = phone.request("BYE", 3.0).expect("BYE to the agent");
    phone.reply(server.sip, &bye, 200, "a2");
    browser.wait_text("[data-queue=\"main\"] [data-test=\"waiting\"]", "0");
    browser.wait_text("[data-queue=\"main\"] [data-test=\"on-call\"]", "0");
    browser.wait_text("[data-test=\"calls\"]", "3");
}

//! Webhooks against the real server: a receiver on loopback that fails the
//! first POSTs, then takes them; each request's HMAC checked here; only the
//! kinds a hook asked for; retries keep the delivery ID; a hook whose
//! receiver is gone turns its events into dead letters, counted in
//! `status` and `/metrics`.

use yihaotong_testkit as common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{connected_call, free_port, Phone, TestServer};
use hmac::Mac;
use yihaotong::sip::auth::Algorithm;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: Vec<u8>,
    answered: u16,
}

/// A small HTTP/1.1 server (keep-alive) that answers the first `fail`
/// requests 500 and the rest 200, and keeps every request.
fn receiver(fail: usize) -> (u16, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let keep = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let got = keep.clone();
            std::thread::spawn(move || {
                let mut writer = conn.try_clone().expect("clone");
                let mut reader = BufReader::new(conn);
                loop {
                    let mut headers = HashMap::new();
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    let len = headers
                        .get("content-length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let answered = {
                        let mut got = got.lock().expect("lock");
                        let answered = if got.len() < fail { 500 } else { 200 };
                        got.push(Received {
                            headers,
                            body,
                            answered,
                        });
                        answered
                    };
                    let reply = format!("HTTP/1.1 {answered} X\r\nContent-Length: 2\r\n\r\nok");
                    if writer.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, got)
}

fn status(server: &TestServer) -> serde_json::Value {
    let (ok, out) = server.cli(&["status"]);
    assert!(ok, "status: {out}");
    serde_json::from_str(&out).expect("status JSON")
}

/// Polls `status` until `done` holds for it (15 s at most).
fn status_until(
    server: &TestServer,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(server);
        if done(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn events_reach_their_hooks_signed_retried_and_dead_letters_are_counted() {
    const SECRET: &str = "test-secret-0123456789";
    let (port, got) = receiver(2);
    let gone = free_port();
    let work = tempfile::tempdir().expect("tempdir");
    let config = work.path().join("hooks.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[webhook]
timeout = 2
attempts = 3
backoff = 1
max_backoff = 1

[webhooks.tickets]
url = "http://127.0.0.1:{port}/yihaotong"
events = ["call.ended", "agent.*"]
secret = "{SECRET}"

[webhooks.gone]
url = "http://127.0.0.1:{gone}/nobody"
events = ["call.ended"]
secret = "another-secret-9876543210"
"#
        ),
    )
    .expect("write config");
    let config = config.display().to_string();
    let server = TestServer::start_with(&[("YIHAOTONG_CONFIG", &config)]);
    server.add_agent("1001", "s3cret", "main");
    let mut phone = Phone::bind("1001", "127.0.0.3");
    // The registration logs 1001 in: an agent.state event.
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let mut trunk = Phone::new("13800000055");
    let (mut d, _leg) = connected_call(&server, &mut trunk, &mut phone, "a1");
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    let bye = phone.request("BYE", 3.0).expect("BYE to the agent");
    phone.reply(server.sip, &bye, 200, "a1");

    // The login's agent.state event(s) and the call's end arrive; the first
    // POST is refused twice, then taken.
    let s = status_until(&server, |s| {
        s["webhooks"]["tickets"]["pending"] == 0
            && s["webhooks"]["tickets"]["delivered"].as_u64() >= Some(2)
            && s["webhooks"]["gone"]["dead_letters"].as_u64() >= Some(1)
    });
    let got = got.lock().expect("lock").clone();
    let tickets = &s["webhooks"]["tickets"];
    assert_eq!(tickets["failed_attempts"], 2, "{s}");
    assert_eq!(tickets["dead_letters"], 0, "{s}");
    assert_eq!(
        tickets["delivered"].as_u64(),
        Some(got.len() as u64 - 2),
        "{s}"
    );
    assert_eq!(
        tickets["last_error"], "answered 500 Internal Server Error",
        "{s}"
    );
    let gone_hook = &s["webhooks"]["gone"];
    assert_eq!(gone_hook["dead_letters"], 1, "{s}");
    assert_eq!(gone_hook["failed_attempts"], 3, "{s}");
    assert!(
        gone_hook["last_error"]
            .as_str()
            .is_some_and(|e| e.to_ascii_lowercase().contains("refused")),
        "{s}"
    );

    // Retries keep the delivery ID; in order; only the kinds asked for.
    let deliveries: Vec<(u64, &str, u16)> = got
        .iter()
        .map(|r| {
            (
                r.headers["x-yihaotong-delivery"].parse().expect("a number"),
                r.headers["x-yihaotong-event"].as_str(),
                r.answered,
            )
        })
        .collect();
    let first = deliveries[0].0;
    assert_eq!(deliveries[0], (first, "agent.state", 500), "{deliveries:?}");
    assert_eq!(deliveries[1], (first, "agent.state", 500), "{deliveries:?}");
    assert_eq!(deliveries[2], (first, "agent.state", 200), "{deliveries:?}");
    assert!(
        deliveries.windows(2).skip(2).all(|w| w[0].0 < w[1].0),
        "in order, each once after the retries: {deliveries:?}"
    );
    assert!(
        deliveries
            .iter()
            .all(|(_, kind, _)| *kind == "call.ended" || kind.starts_with("agent.")),
        "{deliveries:?}"
    );
    let last = got.last().expect("a request");
    assert_eq!(
        last.headers["x-yihaotong-event"], "call.ended",
        "{deliveries:?}"
    );
    for r in &got {
        // The signature: HMAC-SHA256 of "<t>.<body>" with the hook's secret.
        let sig = &r.headers["x-yihaotong-signature"];
        let (t, v1) = sig
            .strip_prefix("t=")
            .and_then(|rest| rest.split_once(",v1="))
            .expect("t=…,v1=…");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
        mac.update(format!("{t}.").as_bytes());
        mac.update(&r.body);
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            v1, want,
            "signature of {}",
            r.headers["x-yihaotong-delivery"]
        );
        assert_eq!(r.headers["content-type"], "application/json");
        let event: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
        assert_eq!(
            event["seq"].to_string(),
            r.headers["x-yihaotong-delivery"],
            "{event}"
        );
    }
    let ended: serde_json::Value = serde_json::from_slice(&last.body).expect("JSON");
    assert_eq!(ended["kind"], "call.ended");
    assert_eq!(
        ended["data"]["call_id"],
        d.call_id.as_str(),
        "the CDR: {ended}"
    );

    // The figures in /metrics too.
    let (code, page) = server.http_text("GET", "/metrics", None, None);
    assert_eq!(code, 200);
    assert!(
        page.contains("yihaotong_webhook_dead_letters_total{hook=\"gone\"} 1"),
        "{page}"
    );
    assert!(
        page.contains(&format!(
            "yihaotong_webhook_delivered_total{{hook=\"tickets\"}} {}",
            got.len() - 2
        )),
        "{page}"
    );
}

#[test]
fn a_bad_hook_is_refused_at_start_naming_its_field() {
    let work = tempfile::tempdir().expect("tempdir");
    let config = work.path().join("bad.toml");
    std::fs::write(
        &config,
        "[webhooks.tickets]\nurl = \"https://tickets.example/hook\"\nevents = [\"call.ended\"]\nsecret = \"0123456789abcdef\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_yihaotong"))
        .args(["--config", &config.display().to_string(), "check"])
        .output()
        .expect("run check");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("[webhooks.tickets] url:"), "{text}");
}

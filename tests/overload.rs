//! Overload control against the real server: calls past `[limits]` get 503
//! with Retry-After and take no state, while calls already up keep their
//! dialogs and emergency numbers still go out. Real SIP over loopback.

use yihaotong_testkit as common;

use common::{Phone, TestServer};
use yihaotong::sip::auth::Algorithm;

fn agent(server: &TestServer, id: &str) -> Phone {
    let mut phone = Phone::bind(id, "127.0.0.3");
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    phone
}

/// A trunk call a flow answers; returns the caller's dialog.
fn flow_call(server: &TestServer, trunk: &mut Phone) -> common::PhoneDialog {
    let mut d = trunk.invite(server.sip, "12345");
    let ok = trunk
        .response(&d.call_id, "INVITE", 200, 5.0)
        .expect("the flow answers");
    assert_eq!(
        ok.status,
        200,
        "shed? overload figures: {}",
        status(server)["overload"]
    );
    trunk.ack(server.sip, &mut d, &ok);
    d
}

fn status(server: &TestServer) -> serde_json::Value {
    let (ok, out) = server.cli(&["status"]);
    assert!(ok, "status failed: {out}");
    serde_json::from_str(&out).expect("status is JSON")
}

#[test]
fn calls_past_max_calls_get_503_while_calls_up_and_emergencies_go_on() {
    let mut psap = Phone::new("110");
    let outbound = format!("sip:{}", psap.addr);
    let server = TestServer::start_with(&[
        ("YIHAOTONG_LIMITS__MAX_CALLS", "2"),
        // This test is about max_calls: a disk or CPU stall on a busy test
        // machine must not shed its first calls for timer lag.
        ("YIHAOTONG_LIMITS__MAX_LAG_MS", "5000"),
        ("YIHAOTONG_LIMITS__RETRY_AFTER", "7"),
        ("YIHAOTONG_TRUNK__OUTBOUND", outbound.as_str()),
    ]);
    server.add_agent("1001", "s3cret", "main");
    let mut a1 = agent(&server, "1001");
    let mut first = Phone::new("13800000001");
    let mut second = Phone::new("13800000002");
    let mut third = Phone::new("13800000003");
    let mut d1 = flow_call(&server, &mut first);
    let mut d2 = flow_call(&server, &mut second);

    // The third caller is shed: 503 with the configured Retry-After, no call.
    let d3 = third.invite(server.sip, "12345");
    let refused = third
        .response(&d3.call_id, "INVITE", 503, 3.0)
        .expect("the third call is answered");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.headers.get("retry-after"), Some("7"));
    assert_eq!(status(&server)["live_calls"], 2);

    // An agent dialing an emergency number is never shed.
    let dial = a1.invite_as_agent(server.sip, "110", "s3cret");
    let inv = psap
        .request("INVITE", 5.0)
        .expect("the emergency desk rings although the server is full");
    assert!(inv.uri.to_string().starts_with("sip:110@"), "{}", inv.uri);
    psap.reply(server.sip, &inv, 486, "psap");
    assert!(a1
        .final_status(&dial.call_id, "INVITE", 5.0)
        .is_some_and(|s| s >= 400));

    // Calls already up keep their dialogs: BYE is served.
    first.in_dialog(server.sip, &mut d1, "BYE", "");
    assert_eq!(first.final_status(&d1.call_id, "BYE", 3.0), Some(200));
    // And with room again a new call is taken.
    let mut d4 = flow_call(&server, &mut third);

    let s = status(&server);
    assert_eq!(s["overload"]["max_calls"], 2);
    assert_eq!(s["overload"]["shed"]["max_calls"], 1, "{s}");
    second.in_dialog(server.sip, &mut d2, "BYE", "");
    third.in_dialog(server.sip, &mut d4, "BYE", "");
    assert_eq!(second.final_status(&d2.call_id, "BYE", 3.0), Some(200));
    assert_eq!(third.final_status(&d4.call_id, "BYE", 3.0), Some(200));
    server.assert_idle();
}

#[test]
fn an_agent_phone_has_at_most_max_calls_per_agent_calls() {
    let server = TestServer::start_with(&[("YIHAOTONG_LIMITS__MAX_CALLS_PER_AGENT", "1")]);
    server.add_agent("1001", "s3cret", "main");
    server.add_agent("1002", "s3cret", "main");
    server.add_agent("1003", "s3cret", "main");
    let mut a1 = agent(&server, "1001");
    let mut a2 = agent(&server, "1002");
    let _a3 = agent(&server, "1003");

    // 1001 calls 1002: it rings.
    let first = a1.invite_as_agent(server.sip, "1002", "s3cret");
    let ring = a2.request("INVITE", 5.0).expect("1002 rings");
    // A second call from the same phone while the first is up is shed.
    let second = a1.invite_as_agent(server.sip, "1003", "s3cret");
    let refused = a1
        .response(&second.call_id, "INVITE", 503, 3.0)
        .expect("the second call is answered");
    assert_eq!(refused.status, 503);
    assert!(refused.headers.get("retry-after").is_some());
    let s = status(&server);
    assert_eq!(s["overload"]["shed"]["max_calls_per_agent"], 1, "{s}");

    // When the first call ends, the slot comes back.
    a2.reply(server.sip, &ring, 486, "a2");
    assert!(a1
        .final_status(&first.call_id, "INVITE", 5.0)
        .is_some_and(|st| st >= 400));
    server.assert_idle();
    let third = a1.invite_as_agent(server.sip, "1002", "s3cret");
    let ring = a2.request("INVITE", 5.0).expect("1002 rings again");
    a2.reply(server.sip, &ring, 486, "a2");
    assert!(a1
        .final_status(&third.call_id, "INVITE", 5.0)
        .is_some_and(|st| st >= 400));
    server.assert_idle();
}

/// Burns every core at SCHED_IDLE until dropped: the machine shows no idle
/// CPU, yet anything else that wants a core (the server, other tests) gets it.
struct Burner {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Burner {
    fn start() -> Burner {
        use std::sync::atomic::{AtomicBool, Ordering};
        use thread_priority::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadPriority, ThreadSchedulePolicy,
        };
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let _ = set_thread_priority_and_policy(
                        thread_native_id(),
                        ThreadPriority::Min,
                        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
                    );
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                })
            })
            .collect();
        Burner { stop, threads }
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn new_calls_are_shed_while_the_machine_has_no_idle_cpu_and_taken_again_after() {
    let server = TestServer::start_with(&[
        ("YIHAOTONG_LIMITS__MIN_IDLE_CPU_PCT", "40"),
        ("YIHAOTONG_LIMITS__MAX_LAG_MS", "5000"),
    ]);
    let mut caller = Phone::new("13800000009");
    // Idle: the first call is taken.
    let mut d = flow_call(&server, &mut caller);
    caller.in_dialog(server.sip, &mut d, "BYE", "");
    assert_eq!(caller.final_status(&d.call_id, "BYE", 3.0), Some(200));

    let burner = Burner::start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let refused = loop {
        let mut d = caller.invite(server.sip, "12345");
        let answer = caller
            .response(&d.call_id, "INVITE", 200, 5.0)
            .expect("an answer");
        if answer.status == 503 {
            break true;
        }
        if answer.status == 200 {
            // Taken before the server measured a busy second: hang up, try again.
            caller.ack(server.sip, &mut d, &answer);
            caller.in_dialog(server.sip, &mut d, "BYE", "");
            let _ = caller.final_status(&d.call_id, "BYE", 3.0);
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let s = status(&server);
    drop(burner);
    assert!(
        refused,
        "no call shed with every core busy: {}",
        s["overload"]
    );
    assert!(s["overload"]["shed"]["idle_cpu"].as_u64() >= Some(1), "{s}");
    assert!(s["overload"]["idle_cpu_pct_now"].as_u64() < Some(40), "{s}");

    // The burner stopped: within a few measurements calls are taken again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut d = caller.invite(server.sip, "12345");
        let answer = caller.response(&d.call_id, "INVITE", 200, 2.0);
        if let Some(ok) = answer.filter(|r| r.status == 200) {
            caller.ack(server.sip, &mut d, &ok);
            caller.in_dialog(server.sip, &mut d, "BYE", "");
            assert_eq!(caller.final_status(&d.call_id, "BYE", 3.0), Some(200));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "calls still shed after the machine cooled: {}",
            status(&server)["overload"]
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    server.assert_idle();
}

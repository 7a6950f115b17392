//! Supervisors listening to, whispering to and barging into an agent's call
//! from their own phones (*31/*32/*33 + agent), with real SIP and RTP.

use yihaotong_testkit as common;

use common::{connected_call, Phone, PhoneDialog, TestServer};
use yihaotong::sip::auth::Algorithm;

fn phone(server: &TestServer, id: &str) -> Phone {
    let mut p = Phone::bind(id, "127.0.0.3");
    assert_eq!(p.register(server.sip, "s3cret", Algorithm::Md5), 200);
    p
}

/// The supervisor dials `code` (again while the agent's call is still
/// being set up: 480); returns the answered dialog.
fn join(server: &TestServer, sup: &mut Phone, code: &str) -> PhoneDialog {
    for _ in 0..20 {
        let mut d = sup.invite_as_agent(server.sip, code, "s3cret");
        let ok = sup
            .response(&d.call_id, "INVITE", 200, 3.0)
            .expect("supervision answered");
        if ok.status == 480 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        assert_eq!(ok.status, 200);
        sup.ack(server.sip, &mut d, &ok);
        return d;
    }
    panic!("the agent's call never became supervisable");
}

fn leave(server: &TestServer, sup: &mut Phone, d: &mut PhoneDialog) {
    sup.in_dialog(server.sip, d, "BYE", "");
    assert_eq!(sup.final_status(&d.call_id, "BYE", 3.0), Some(200));
}

/// Packets each of (caller, agent, supervisor) receive while the ones in
/// `talking` send 50 packets each.
fn round(
    caller: (&Phone, std::net::SocketAddr),
    agent: (&Phone, std::net::SocketAddr),
    sup: (&Phone, std::net::SocketAddr),
    talking: [bool; 3],
) -> [usize; 3] {
    let parties = [caller, agent, sup];
    std::thread::scope(|s| {
        let handles: Vec<_> = parties
            .iter()
            .zip(talking)
            .enumerate()
            .map(|(i, ((p, to), talks))| {
                s.spawn(move || {
                    if talks {
                        p.exchange_rtp_of(*to, 50, 100 + i as u32, 0x55)
                    } else {
                        // (A phone that hears nothing sends more slowly
                        // than one packet per 20 ms: listen long enough.)
                        p.record_rtp(3.2).len()
                    }
                })
            })
            .collect();
        let got: Vec<usize> = handles
            .into_iter()
            .map(|h| h.join().expect("party"))
            .collect();
        [got[0], got[1], got[2]]
    })
}

#[test]
fn a_supervisor_listens_whispers_and_barges_from_the_phone() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    server.add_agent("1002", "s3cret", "duty");
    let (ok, out) = server.cli(&[
        "agents",
        "add",
        "9001",
        "--password",
        "s3cret",
        "--queues",
        "duty",
        "--supervisor",
    ]);
    assert!(ok, "{out}");
    let mut agent = phone(&server, "1001");
    let mut other = phone(&server, "1002");
    let mut sup = phone(&server, "9001");
    let mut trunk = Phone::new("13800000007");
    let (mut d, leg) = connected_call(&server, &mut trunk, &mut agent, "a");
    let caller = (&trunk, d.remote_rtp.expect("caller media"));

    // Only supervisors; only agents on a call.
    let x = other.invite_as_agent(server.sip, "*311001", "s3cret");
    assert_eq!(other.final_status(&x.call_id, "INVITE", 3.0), Some(403));
    let x = sup.invite_as_agent(server.sip, "*311002", "s3cret");
    assert_eq!(sup.final_status(&x.call_id, "INVITE", 3.0), Some(480));

    let agent_media = leg.remote_rtp.expect("agent media");
    // The supervisor joins with `code`; everyone in `talking` talks.
    let session = |sup: &mut Phone, code: &str, talking: [bool; 3]| {
        let s = join(&server, sup, code);
        let sup_media = s.remote_rtp.expect("supervisor media");
        let got = round(caller, (&agent, agent_media), (sup, sup_media), talking);
        (got, s)
    };

    // Listen: the supervisor hears the conversation; nobody hears them.
    let ([c, a, heard], mut s) = session(&mut sup, "*311001", [true, true, true]);
    assert!(heard > 30, "supervisor heard {heard}");
    assert!(
        c <= 60 && a <= 60,
        "caller {c}, agent {a}: the supervisor was let through"
    );
    leave(&server, &mut sup, &mut s);

    // Whisper: only the supervisor talks; the agent hears them, the caller does not.
    let ([c, a, _], mut s) = session(&mut sup, "*321001", [false, false, true]);
    assert!(a > 30, "agent heard {a} whispered packets");
    assert_eq!(c, 0, "the caller heard the whisper");
    leave(&server, &mut sup, &mut s);

    // Barge: both hear the supervisor.
    let ([c, a, _], mut s) = session(&mut sup, "*331001", [false, false, true]);
    assert!(c > 30 && a > 30, "caller {c}, agent {a}");

    // The call ends: the supervisor's call ends with it.
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    let bye = agent.request("BYE", 3.0).expect("BYE to the agent");
    agent.reply(server.sip, &bye, 200, "a");
    let bye = sup.request("BYE", 3.0).expect("BYE to the supervisor");
    assert_eq!(bye.core.call_id, s.call_id);
    sup.reply(server.sip, &bye, 200, "s");
    let _ = &mut s;
    server.assert_idle();
}

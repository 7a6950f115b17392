//! A secure offer is never answered in the clear. Until encrypted media is
//! built, an offer in a profile we cannot meet (RTP/SAVP with SDES keys,
//! UDP/TLS/RTP/SAVPF from a browser) gets 488 with a Warning naming the
//! profile, on every leg: a trunk call answered by a flow or sent straight
//! to a queue, an agent's phone that insists on SRTP, and a re-INVITE in a
//! call that is up. The offers come from the real stacks: Chromium's
//! WebRTC and baresip's `mediaenc=srtp-mand`.

use yihaotong_testkit as common;
use yihaotong_testkit::baresip;
use yihaotong_testkit::browser;

use baresip::Baresip;
use common::{assert_talking, connected_call, Phone, TestServer};
use yihaotong::sip::auth::Algorithm;

/// The 488 for `call_id` and its Warning.
fn refused(trunk: &mut Phone, call_id: &str) -> String {
    let r = trunk
        .response(call_id, "INVITE", 200, 5.0)
        .expect("a final answer");
    assert_eq!(r.status, 488, "{r:?}");
    r.headers.get("warning").unwrap_or_default().to_string()
}

#[test]
fn a_browser_offer_gets_488_naming_its_profile() {
    let Some(bin) = browser::chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium must be installed under CI (.ci/run installs it)"
        );
        eprintln!("SKIPPED: chromium not installed (apt-get install chromium)");
        return;
    };
    let mut browser = browser::Browser::launch(&bin);
    let offer = browser.eval_async(
        "(async () => { const pc = new RTCPeerConnection(); pc.addTransceiver('audio'); \
         const o = await pc.createOffer(); pc.close(); return o.sdp; })()",
    );
    let offer = offer.as_str().expect("Chromium made an offer").to_string();
    assert!(offer.contains("UDP/TLS/RTP/SAVPF"), "{offer}");
    assert!(offer.contains("a=fingerprint:"), "{offer}");

    let server = TestServer::start();
    let mut trunk = Phone::new("13800138000");
    // Answered by the 12345 flow, and routed straight to a queue.
    for number in ["12345", "123450"] {
        let d = trunk.invite_sdp(server.sip, number, &offer);
        let warning = refused(&mut trunk, &d.call_id);
        assert!(
            warning.starts_with("302 ") && warning.contains("UDP/TLS/RTP/SAVPF"),
            "{number}: {warning}"
        );
    }
    server.assert_idle();
}

#[test]
fn an_sdes_caller_gets_488_and_an_srtp_only_seat_is_never_bridged_in_the_clear() {
    if !baresip::available() {
        return;
    }
    let server = TestServer::start();

    // The trunk side: baresip dials 12345 insisting on SRTP (RTP/SAVP with
    // an a=crypto key).
    let caller = Baresip::start(
        &format!(
            "<sip:13800138000@{}>;regint=0;mediaenc=srtp-mand",
            server.sip
        ),
        &[&format!("/dial sip:12345@{}", server.sip)],
    );
    assert!(
        caller.wait_for("488 ", 10),
        "no 488 for the SDES offer:\n{}",
        caller.log()
    );
    let log = caller.log();
    assert!(
        log.contains("RTP/SAVP") && log.contains("a=crypto:"),
        "{log}"
    );
    assert!(log.contains("Warning: 302 "), "{log}");
    assert!(!log.contains("Call established"), "{log}");
    drop(caller);

    // The seat side: an agent's baresip that takes SRTP only is offered
    // plain RTP (it declines it with a 488 of its own); the caller must
    // never be connected to it in the clear.
    server.add_agent("1001", "s3cret-pw", "main");
    let seat = Baresip::start(
        &format!(
            "<sip:1001@{}>;auth_pass=s3cret-pw;answermode=auto;regint=300;mediaenc=srtp-mand",
            server.sip
        ),
        &[],
    );
    assert!(seat.wait_for("200 OK", 10), "{}", seat.log());
    let mut trunk = Phone::new("13800138001");
    let d = trunk.invite(server.sip, "123450");
    assert!(
        seat.wait_for("INVITE sip:1001", 5),
        "the seat was not rung:\n{}",
        seat.log()
    );
    let answered = trunk.recv_where(4.0, |m| match m {
        yihaotong::sip::message::Message::Response(r) => {
            r.core.call_id == d.call_id && (200..300).contains(&r.status)
        }
        _ => false,
    });
    assert!(
        answered.is_none(),
        "the caller was connected to an SRTP-only seat:\n{}",
        seat.log()
    );
    trunk.cancel(server.sip, &d);
    let status = trunk.final_status(&d.call_id, "INVITE", 5.0);
    assert_eq!(status, Some(487));
    drop(seat);
    server.assert_idle();
}

/// A seat whose 200 answers our plain offer in RTP/SAVP (against RFC 3264)
/// is hung up, never bridged: its audio would not be what we relay.
#[test]
fn a_seat_answering_in_savp_is_hung_up_not_bridged() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let mut phone = Phone::bind("1001", "127.0.0.3");
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let mut trunk = Phone::new("13800138003");
    let d = trunk.invite(server.sip, "123450");
    let inv = phone.request("INVITE", 5.0).expect("seat rung");
    let savp = phone.sdp().replace("RTP/AVP", "RTP/SAVP");
    phone.reply_sdp(server.sip, &inv, 200, "s1", &savp);
    assert!(phone.request("ACK", 3.0).is_some(), "the 200 is ACKed");
    assert!(phone.request("BYE", 3.0).is_some(), "and the seat hung up");
    let answered = trunk.recv_where(2.0, |m| match m {
        yihaotong::sip::message::Message::Response(r) => {
            r.core.call_id == d.call_id && (200..300).contains(&r.status)
        }
        _ => false,
    });
    assert!(
        answered.is_none(),
        "the caller was bridged to a SAVP answer"
    );
    trunk.cancel(server.sip, &d);
    assert_eq!(trunk.final_status(&d.call_id, "INVITE", 5.0), Some(487));
}

#[test]
fn an_sdes_reinvite_in_a_call_gets_488_and_the_call_goes_on() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let mut phone = Phone::bind("1001", "127.0.0.3");
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let mut trunk = Phone::new("13800138002");
    let (mut caller, agent_leg) = connected_call(&server, &mut trunk, &mut phone, "a1");
    let sdes = trunk.sdp().replace("RTP/AVP", "RTP/SAVP").replace(
        "a=sendrecv",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\na=sendrecv",
    );
    trunk.in_dialog(server.sip, &mut caller, "INVITE", &sdes);
    let r = trunk
        .response(&caller.call_id, "INVITE", 200, 3.0)
        .expect("the re-INVITE answered");
    assert_eq!(r.status, 488, "{r:?}");
    let warning = r.headers.get("warning").unwrap_or_default();
    assert!(
        warning.starts_with("302 ") && warning.contains("RTP/SAVP"),
        "{warning}"
    );
    let caller_media = caller.remote_rtp.expect("caller media");
    let agent_media = agent_leg.remote_rtp.expect("agent media");
    assert_talking(
        &trunk,
        caller_media,
        &phone,
        agent_media,
        "after the refused re-INVITE",
    );
}

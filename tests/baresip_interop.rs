//! Interop with Debian's baresip 1.0, a softphone nobody here wrote: it
//! registers as an agent with the default digest challenge (it gives up on a
//! 401 that also offers SHA-256), is rung for a queue call and answers it,
//! and loops what it hears back (aubridge: its player feeds its source), so
//! the trunk hearing its own audio come back proves RTP both ways through
//! the relay and through baresip's own decoder and encoder.
//!
//! Without `baresip` on PATH the test says so and passes, except under CI
//! (`CI` set), where `.ci/run` installs it and its absence is a failure.

use yihaotong_testkit as common;
use yihaotong_testkit::baresip;

use baresip::Baresip;
use common::{Phone, TestServer};

#[test]
fn baresip_registers_as_an_agent_and_takes_a_queue_call_both_ways() {
    if !baresip::available() {
        return;
    }
    let server = TestServer::start();
    server.add_agent("1001", "s3cret-pw", "main");
    let phone = Baresip::start(
        &format!(
            "<sip:1001@{}>;auth_pass=s3cret-pw;answermode=auto;regint=300",
            server.sip
        ),
        &[],
    );
    assert!(
        phone.wait_for("200 OK", 10),
        "baresip did not register:\n{}",
        phone.log()
    );
    assert!(
        !phone.log().contains("Function not implemented"),
        "{}",
        phone.log()
    );

    let mut trunk = Phone::new("13800138000");
    let mut d = trunk.invite(server.sip, "123450");
    let ok = trunk
        .response(&d.call_id, "INVITE", 200, 10.0)
        .unwrap_or_else(|| panic!("baresip did not answer:\n{}", phone.log()));
    trunk.ack(server.sip, &mut d, &ok);
    let media = d.remote_rtp.expect("answer SDP");
    assert!(phone.wait_for("Call established", 5), "{}", phone.log());

    // µ-law 0x55 decodes to one linear value and encodes back to 0x55:
    // what baresip heard, looped to its microphone, comes back unchanged.
    let heard: Vec<Vec<u8>> = trunk
        .exchange_rtp_heard(media, 150, 0x7e57, 0x55)
        .into_iter()
        .filter(|p| p.pt == 0)
        .map(|p| p.payload)
        .collect();
    let echoed = heard
        .iter()
        .filter(|p| p.iter().filter(|b| **b == 0x55).count() > p.len() * 9 / 10)
        .count();
    assert!(
        heard.len() > 100 && echoed > 50,
        "{} packets came back, {echoed} of them our own audio\n{}",
        heard.len(),
        phone.log()
    );

    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    assert_eq!(trunk.final_status(&d.call_id, "BYE", 3.0), Some(200));
    assert!(phone.wait_for("terminated", 5), "{}", phone.log());
    server.assert_idle();
    let (ok, out) = server.cli(&["cdrs"]);
    assert!(ok, "{out}");
    let cdrs: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let cdr = cdrs
        .as_array()
        .and_then(|all| all.iter().find(|c| c["call_id"] == d.call_id.as_str()))
        .unwrap_or_else(|| panic!("no CDR for the call: {out}"));
    assert_eq!(cdr["agent"], "1001", "{cdr}");
    assert_eq!(cdr["disposition"], "answered", "{cdr}");
}

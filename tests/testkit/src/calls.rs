//! Calls through the server in a few steps: answer a flow, answer a seat's
//! INVITE, hang up, transfer with REFER, a caller bridged to an agent.

use yihaotong::sip::message::{Request, Response};

use crate::{Phone, PhoneDialog, TestServer};

/// The agent's phone sends REFER to `refer_to` (a name-addr) on `leg`;
/// returns the final response to the REFER.
pub fn refer(
    server: &TestServer,
    phone: &mut Phone,
    leg: &mut PhoneDialog,
    refer_to: &str,
) -> Response {
    phone.in_dialog_with(
        server.sip,
        leg,
        "REFER",
        &format!(
            "Refer-To: {refer_to}\r\nReferred-By: <sip:{}@127.0.0.3>\r\n",
            phone.user
        ),
        "",
        "",
    );
    phone
        .response(&leg.call_id, "REFER", 200, 3.0)
        .expect("REFER answered")
}

/// A call to `number` that a flow answers (with our offer `sdp`, or the
/// phone's usual one), ACKed: the caller's dialog.
pub fn answer_ivr(
    server: &TestServer,
    trunk: &mut Phone,
    number: &str,
    sdp: Option<&str>,
) -> PhoneDialog {
    let mut d = match sdp {
        Some(s) => trunk.invite_sdp(server.sip, number, s),
        None => trunk.invite(server.sip, number),
    };
    let ok = trunk
        .response(&d.call_id, "INVITE", 200, 5.0)
        .expect("the flow answers");
    assert_eq!(ok.status, 200);
    trunk.ack(server.sip, &mut d, &ok);
    d
}

/// Answers `inv` on `phone`, expects the ACK, and returns the callee's dialog.
pub fn answer(server: &TestServer, phone: &mut Phone, inv: &Request, tag: &str) -> PhoneDialog {
    phone.reply(server.sip, inv, 200, tag);
    phone.request("ACK", 3.0).expect("ACK for the answer");
    Phone::uas_dialog(inv, tag)
}

/// The caller hangs up; the agent's phone gets and answers the BYE.
pub fn caller_hangs_up(
    server: &TestServer,
    trunk: &mut Phone,
    d: &mut PhoneDialog,
    phone: &mut Phone,
    tag: &str,
) {
    trunk.in_dialog(server.sip, d, "BYE", "");
    let bye = phone.request("BYE", 3.0).expect("BYE to the agent");
    phone.reply(server.sip, &bye, 200, tag);
}

/// A trunk call to 123450 answered by `phone`: (caller's dialog, agent's dialog).
pub fn connected_call(
    server: &TestServer,
    trunk: &mut Phone,
    phone: &mut Phone,
    tag: &str,
) -> (PhoneDialog, PhoneDialog) {
    let mut d = trunk.invite(server.sip, "123450");
    let inv = phone.request("INVITE", 5.0).expect("agent rung");
    let agent_leg = answer(server, phone, &inv, tag);
    let ok = trunk
        .response(&d.call_id, "INVITE", 200, 3.0)
        .expect("caller answered");
    trunk.ack(server.sip, &mut d, &ok);
    (d, agent_leg)
}

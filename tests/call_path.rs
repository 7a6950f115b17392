//! The call path end to end: the real server on loopback, phones speaking
//! real SIP and RTP, a real sled database in a temp folder.

use yihaotong_testkit as common;

use common::{Phone, TestServer};
use yihaotong::sip::auth::Algorithm;

#[test]
fn options_unknown_method_and_garbage() {
    let server = TestServer::start();
    let mut phone = Phone::new("1");
    assert_eq!(phone.options(server.sip), Some(200));
    phone.out_of_dialog(server.sip, "FROBNICATE", "SIP/2.0", "frob", "");
    assert_eq!(phone.final_status("frob", "FROBNICATE", 2.0), Some(501));
    phone.out_of_dialog(
        server.sip,
        "OPTIONS",
        "SIP/2.0",
        "req",
        "Require: 100rel, foo\r\n",
    );
    let r = phone
        .response("req", "OPTIONS", 200, 2.0)
        .expect("answered");
    assert_eq!(r.status, 420);
    assert!(r
        .headers
        .get("unsupported")
        .is_some_and(|u| u.contains("foo")));
    // Bytes that are not SIP: silence, and the server lives on.
    phone.send(server.sip, "\u{0}\u{1}garbage\r\n\r\n");
    phone.out_of_dialog(server.sip, "INVITE", "SIP/7.0", "v7", "");
    assert_eq!(phone.final_status("v7", "INVITE", 2.0), Some(505));
    assert_eq!(phone.options(server.sip), Some(200));
}

#[test]
fn register_with_digest_both_algorithms_and_lockout() {
    let server = TestServer::start_with(&[("YIHAOTONG_SIP__DIGEST_ALGORITHMS", "SHA-256,MD5")]);
    server.add_agent("1001", "s3cret", "main");
    let mut phone = Phone::new("1001");
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Md5), 200);
    assert_eq!(phone.register(server.sip, "s3cret", Algorithm::Sha256), 200);
    let (ok, list) = server.cli(&["agents", "list"]);
    assert!(ok, "{list}");
    assert!(
        list.contains(&phone.addr.to_string()),
        "binding listed: {list}"
    );
    // An unknown account is answered like a wrong password.
    let mut stranger = Phone::new("9999");
    assert_eq!(stranger.register(server.sip, "s3cret", Algorithm::Md5), 401);
    // Repeated failures for one account from one source end in 403.
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(phone.register(server.sip, "wrong", Algorithm::Md5));
    }
    assert_eq!(codes[0], 401);
    assert_eq!(*codes.last().expect("codes"), 403, "{codes:?}");
    // The account is blocked at that source only: from another source it
    // unregisters fine.
    let mut other = Phone::bind("1001", "127.0.0.3");
    assert_eq!(
        other.register_expires(server.sip, "s3cret", Algorithm::Md5, 0),
        200
    );
    let (ok, out) = server.cli(&["status"]);
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status is JSON");
    let auth = &status["auth"];
    assert_eq!(auth["sources_blocked_now"], 0, "{auth}");
    assert_eq!(auth["account_blocks_since_start"], 1, "{auth}");
    assert_eq!(auth["accounts_blocked_now"][0]["account"], "1001", "{auth}");
    assert_eq!(
        auth["accounts_blocked_now"][0]["source"], "127.0.0.1",
        "{auth}"
    );
    let by_account = auth["failures_by_account"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(by_account[0]["account"], "1001", "{auth}");
    assert_eq!(
        by_account[0]["failures"], 5,
        "five wrong answers blocked 1001 here; the sixth was refused unheard: {auth}"
    );
    assert!(
        by_account
            .iter()
            .any(|a| a["account"] == "9999" && a["failures"] == 1),
        "{auth}"
    );
}

/// Seats behind one NAT share a source address: a phone with a wrong
/// password locks only its own account there, while guessing across many
/// account names (real or made up alike) locks the whole source. A nonce
/// from before a restart gets `stale=true`, never a failure.
#[test]
fn lockout_spares_colleagues_behind_one_address_and_survives_a_restart() {
    let mut server = TestServer::start();
    for id in ["1001", "1002", "1003"] {
        server.add_agent(id, "s3cret", "main");
    }
    let mut wrong = Phone::bind("1001", "127.0.0.5");
    let mut colleague = Phone::bind("1002", "127.0.0.5");
    let codes: Vec<u16> = (0..6)
        .map(|_| wrong.register(server.sip, "typo", Algorithm::Md5))
        .collect();
    assert_eq!(codes[..4], [401; 4], "{codes:?}");
    assert_eq!(codes[5], 403, "{codes:?}");
    assert_eq!(
        colleague.register(server.sip, "s3cret", Algorithm::Md5),
        200,
        "the colleague behind the same address still registers"
    );
    assert_eq!(
        wrong.register(server.sip, "s3cret", Algorithm::Md5),
        403,
        "the guessed account stays locked at that source for the block"
    );
    // Five names from one source (made-up ones count like real ones): the
    // whole source is blocked, real accounts with the right password too.
    let guesser_ip = "127.0.0.7";
    let codes: Vec<u16> = ["2001", "2002", "2003", "1003", "2005"]
        .iter()
        .map(|name| Phone::bind(name, guesser_ip).register(server.sip, "guess", Algorithm::Md5))
        .collect();
    assert_eq!(codes, [401, 401, 401, 401, 403]);
    assert_eq!(
        Phone::bind("1003", guesser_ip).register(server.sip, "s3cret", Algorithm::Md5),
        403
    );

    // A restart: every phone comes back with the nonce it had.
    let mut phones: Vec<Phone> = (0..6).map(|_| Phone::bind("1003", "127.0.0.8")).collect();
    for p in &mut phones {
        assert_eq!(p.register(server.sip, "s3cret", Algorithm::Md5), 200);
    }
    server.restart();
    for p in &mut phones {
        let answer = p.register_with_last_nonce(server.sip, "s3cret");
        assert_eq!(answer.status, 401);
        let challenge = answer.headers.get("www-authenticate").unwrap_or_default();
        assert!(challenge.contains("stale=true"), "{challenge}");
        assert_eq!(p.register(server.sip, "s3cret", Algorithm::Md5), 200);
    }
    let (ok, out) = server.cli(&["status"]);
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status is JSON");
    assert_eq!(
        status["auth"]["failures_by_account"],
        serde_json::json!([]),
        "stale nonces are not failures"
    );
}

#[test]
fn unknown_number_gets_404_and_outsider_must_authenticate() {
    let server = TestServer::start();
    let mut trunk = Phone::new("13800000000");
    let d = trunk.invite(server.sip, "99999");
    assert_eq!(trunk.final_status(&d.call_id, "INVITE", 3.0), Some(404));
    // 127.0.0.2 is outside the trunk ACL (127.0.0.1/32): challenged, never rung.
    let mut outsider = Phone::bind("13900000000", "127.0.0.2");
    let d = outsider.invite(server.sip, "123450");
    let r = outsider
        .response(&d.call_id, "INVITE", 200, 3.0)
        .expect("answered");
    assert_eq!(r.status, 407);
    assert!(r.headers.get("proxy-authenticate").is_some());
}

#[test]
fn no_agent_gets_480_with_reason() {
    let server = TestServer::start();
    let mut trunk = Phone::new("13800000000");
    let d = trunk.invite(server.sip, "123450");
    let r = trunk
        .response(&d.call_id, "INVITE", 200, 3.0)
        .expect("answered");
    assert_eq!(r.status, 480);
    assert!(r.headers.get("reason").is_some());
}

/// Registers an agent, places a trunk call to 12345 and answers it.
/// Returns (trunk, caller dialog, agent, agent dialog).
fn answered_call(server: &TestServer) -> (Phone, common::PhoneDialog, Phone, common::PhoneDialog) {
    let mut agent = Phone::new("1001");
    assert_eq!(agent.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let mut trunk = Phone::new("13800000000");
    let mut d = trunk.invite(server.sip, "+86123450");
    let inv = agent.request("INVITE", 5.0).expect("agent rung");
    // The number as routing normalized it (+86 stripped), as everywhere.
    assert_eq!(inv.headers.get("x-dialed"), Some("123450"));
    assert_eq!(inv.headers.get("x-queue"), Some("main"));
    agent.reply(server.sip, &inv, 180, "agt");
    let ringing = trunk
        .response(&d.call_id, "INVITE", 180, 3.0)
        .expect("caller hears ringing");
    assert_eq!(ringing.status, 180);
    agent.reply(server.sip, &inv, 200, "agt");
    let ack = agent.request("ACK", 3.0).expect("agent's 200 ACKed");
    assert_eq!(ack.core.call_id, inv.core.call_id);
    let ok = trunk
        .response(&d.call_id, "INVITE", 200, 3.0)
        .expect("caller answered");
    assert_eq!(ok.status, 200);
    trunk.ack(server.sip, &mut d, &ok);
    let ad = Phone::uas_dialog(&inv, "agt");
    (trunk, d, agent, ad)
}

fn talk(
    trunk: &Phone,
    d: &common::PhoneDialog,
    agent: &Phone,
    ad: &common::PhoneDialog,
) -> (usize, usize) {
    let to_server_from_caller = d.remote_rtp.expect("caller has our RTP address");
    let to_server_from_agent = ad.remote_rtp.expect("agent has our RTP address");
    std::thread::scope(|s| {
        let c = s.spawn(|| trunk.exchange_rtp(to_server_from_caller, 50, 0x1111));
        let a = s.spawn(|| agent.exchange_rtp(to_server_from_agent, 50, 0x2222));
        (c.join().expect("caller rtp"), a.join().expect("agent rtp"))
    })
}

#[test]
fn trunk_call_rings_agent_media_both_ways_caller_hangs_up() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let (mut trunk, mut d, mut agent, _ad) = answered_call(&server);
    let (caller_got, agent_got) = talk(&trunk, &d, &agent, &_ad);
    assert!(
        caller_got >= 45,
        "caller received {caller_got} of 50 packets"
    );
    assert!(agent_got >= 45, "agent received {agent_got} of 50 packets");
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    assert_eq!(trunk.final_status(&d.call_id, "BYE", 3.0), Some(200));
    let bye = agent.request("BYE", 3.0).expect("agent gets BYE");
    agent.reply(server.sip, &bye, 200, "agt");
    server.assert_idle();
}

#[test]
fn agent_hangs_up_and_caller_gets_bye() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let (mut trunk, d, mut agent, mut ad) = answered_call(&server);
    agent.in_dialog(server.sip, &mut ad, "BYE", "");
    assert_eq!(
        agent
            .response(&ad.call_id, "BYE", 200, 3.0)
            .map(|r| r.status),
        Some(200)
    );
    let bye = trunk.request("BYE", 3.0).expect("caller gets BYE");
    assert_eq!(bye.core.call_id, d.call_id);
    trunk.reply(server.sip, &bye, 200, "x");
    server.assert_idle();
}

#[test]
fn caller_cancels_while_agent_rings() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let mut agent = Phone::new("1001");
    assert_eq!(agent.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let mut trunk = Phone::new("13800000000");
    let d = trunk.invite(server.sip, "123450");
    let inv = agent.request("INVITE", 5.0).expect("agent rung");
    agent.reply(server.sip, &inv, 180, "agt");
    trunk
        .response(&d.call_id, "INVITE", 180, 3.0)
        .expect("ringing");
    trunk.cancel(server.sip, &d);
    assert_eq!(trunk.final_status(&d.call_id, "CANCEL", 3.0), Some(200));
    assert_eq!(trunk.final_status(&d.call_id, "INVITE", 3.0), Some(487));
    let cancel = agent
        .request("CANCEL", 3.0)
        .expect("agent's INVITE cancelled");
    agent.reply(server.sip, &cancel, 200, "agt");
    agent.reply(server.sip, &inv, 487, "agt");
    let ack = agent
        .request("ACK", 3.0)
        .expect("487 ACKed by the transaction");
    assert_eq!(ack.core.call_id, inv.core.call_id);
}

#[test]
fn hold_and_resume_pass_across() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let (mut trunk, mut d, mut agent, _ad) = answered_call(&server);
    for (offer, answer) in [("sendonly", "recvonly"), ("sendrecv", "sendrecv")] {
        let sdp = trunk.sdp_dir(offer);
        trunk.in_dialog(server.sip, &mut d, "INVITE", &sdp);
        let reinvite = agent
            .request("INVITE", 3.0)
            .expect("re-INVITE passed to the agent");
        let seen = yihaotong::media::sdp::parse_audio(&reinvite.body).expect("our offer parses");
        assert_eq!(seen.direction.token(), offer);
        // The agent answers with the mirrored direction.
        let body = agent.sdp_dir(answer);
        let contact = format!("<sip:1001@{}>", agent.addr);
        let bytes = reinvite.response(
            200,
            Some("agt"),
            &[("Contact", &contact), ("Content-Type", "application/sdp")],
            body.as_bytes(),
        );
        agent.sock.send_to(&bytes, server.sip).expect("send");
        agent
            .request("ACK", 3.0)
            .expect("agent's re-INVITE answer ACKed");
        let ok = trunk
            .response(&d.call_id, "INVITE", 200, 3.0)
            .expect("caller's re-INVITE answered");
        assert_eq!(ok.status, 200);
        let back = yihaotong::media::sdp::parse_audio(&ok.body).expect("answer parses");
        assert_eq!(back.direction.token(), answer);
        trunk.ack(server.sip, &mut d, &ok);
    }
}

#[test]
fn silent_leg_is_hung_up_after_rtp_timeout() {
    let server = TestServer::start_with(&[("YIHAOTONG_RTP__RTP_TIMEOUT", "2")]);
    server.add_agent("1001", "s3cret", "main");
    let (mut trunk, d, mut agent, ad) = answered_call(&server);
    // Nobody sends RTP: both sides get BYE.
    let bye = trunk
        .request("BYE", 6.0)
        .expect("caller hung up on silence");
    assert_eq!(bye.core.call_id, d.call_id);
    let bye = agent.request("BYE", 3.0).expect("agent hung up on silence");
    assert_eq!(bye.core.call_id, ad.call_id);
    server.assert_idle();
}

#[test]
fn agent_registered_over_tcp_is_rung_on_its_connection() {
    use std::io::{Read, Write};
    use yihaotong::sip::auth::{challenge_params, DigestClient};
    use yihaotong::sip::message::{frame_length, parse, Message};

    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let mut tcp = std::net::TcpStream::connect(server.sip).expect("connect");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    let local = tcp.local_addr().expect("addr");
    let mut buf: Vec<u8> = Vec::new();
    let mut next = |tcp: &mut std::net::TcpStream| -> Message {
        loop {
            if let Ok(Some(n)) = frame_length(&buf) {
                let msg = parse(&buf[..n]).expect("server sends valid SIP");
                buf.drain(..n);
                return msg;
            }
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).expect("read");
            assert!(n > 0, "server closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let register = |auth: &str, cseq: u32| {
        format!(
            "REGISTER sip:{s} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKtcp{cseq}\r\nMax-Forwards: 70\r\nFrom: <sip:1001@{s}>;tag=t\r\nTo: <sip:1001@{s}>\r\nCall-ID: tcp-reg\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:1001@{local};transport=tcp>\r\n{auth}Content-Length: 0\r\n\r\n",
            s = server.sip
        )
    };
    tcp.write_all(register("", 1).as_bytes()).expect("write");
    let Message::Response(challenge) = next(&mut tcp) else {
        panic!("response expected")
    };
    assert_eq!(challenge.status, 401);
    let (realm, nonce, _) = challenge_params(
        challenge
            .headers
            .get("www-authenticate")
            .expect("challenge"),
    )
    .expect("params");
    let client = DigestClient {
        alg: Algorithm::Md5,
        user: "1001",
        password: "s3cret",
        realm: &realm,
        nonce: &nonce,
        cnonce: "c",
    };
    let auth = client.authorization("REGISTER", &format!("sip:{}", server.sip), 1);
    tcp.write_all(register(&format!("Authorization: {auth}\r\n"), 2).as_bytes())
        .expect("write");
    let Message::Response(ok) = next(&mut tcp) else {
        panic!("response expected")
    };
    assert_eq!(ok.status, 200);

    let mut trunk = Phone::new("13800000000");
    let d = trunk.invite(server.sip, "123450");
    let Message::Request(inv) = next(&mut tcp) else {
        panic!("INVITE expected on the TCP connection")
    };
    assert_eq!(inv.method.as_str(), "INVITE");
    assert_eq!(inv.core.top_via().transport, "TCP");
    tcp.write_all(&inv.response(486, Some("busy"), &[], b""))
        .expect("write");
    let Message::Request(ack) = next(&mut tcp) else {
        panic!("ACK expected")
    };
    assert_eq!(ack.method.as_str(), "ACK");
    trunk.cancel(server.sip, &d);
    assert_eq!(trunk.final_status(&d.call_id, "INVITE", 3.0), Some(487));
}

#[test]
fn sigterm_refuses_new_calls_lets_the_call_in_progress_finish_then_exits() {
    let mut server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let (mut trunk, mut d, mut agent, ad) = answered_call(&server);
    server.signal("TERM");
    std::thread::sleep(std::time::Duration::from_millis(300));
    // New calls are refused at once, with a hint to retry.
    let mut late = Phone::new("13900000000");
    let d2 = late.invite(server.sip, "123450");
    let refused = late
        .response(&d2.call_id, "INVITE", 200, 3.0)
        .expect("answered while draining");
    assert_eq!(refused.status, 503);
    assert!(refused.headers.get("retry-after").is_some());
    // The call in progress keeps its media and ends normally.
    let (caller_got, agent_got) = talk(&trunk, &d, &agent, &ad);
    assert!(
        caller_got >= 45 && agent_got >= 45,
        "{caller_got} / {agent_got}"
    );
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    assert_eq!(trunk.final_status(&d.call_id, "BYE", 3.0), Some(200));
    let bye = agent.request("BYE", 3.0).expect("agent gets BYE");
    agent.reply(server.sip, &bye, 200, "agt");
    // Then the server stops by itself, cleanly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server still running after its last call"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}

/// A drain that runs out loses nothing: at `drain_timeout` both legs of a
/// bridged call get BYE, a caller still waiting gets 480, their records are
/// written as `drained` before the process ends, and the next start closes
/// nothing out as crashed.
#[test]
fn a_drain_that_runs_out_hangs_up_both_legs_and_records_the_calls() {
    let mut server = TestServer::start_with(&[("YIHAOTONG_DRAIN_TIMEOUT", "1")]);
    server.add_agent("1001", "s3cret", "main");
    let (mut trunk, d, mut agent, _ad) = answered_call(&server);
    let mut waiting = Phone::new("13900000001");
    let dw = waiting.invite(server.sip, "123450");
    std::thread::sleep(std::time::Duration::from_millis(300));
    server.signal("TERM");
    let bye = trunk.request("BYE", 5.0).expect("the caller gets BYE");
    trunk.reply(server.sip, &bye, 200, "c");
    let bye = agent.request("BYE", 3.0).expect("the agent gets BYE");
    agent.reply(server.sip, &bye, 200, "agt");
    assert_eq!(waiting.final_status(&dw.call_id, "INVITE", 3.0), Some(480));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "still running");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    server.restart();
    let (ok, out) = server.cli(&["cdrs"]);
    assert!(ok, "{out}");
    let cdrs: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
    assert_eq!(cdrs.len(), 2, "{out}");
    for (id, answered) in [(&d.call_id, true), (&dw.call_id, false)] {
        let cdr = cdrs
            .iter()
            .find(|c| c["call_id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id}: {out}"));
        assert_eq!(
            (&cdr["disposition"], &cdr["hung_up_by"]),
            (&serde_json::json!("drained"), &serde_json::json!("system")),
            "{cdr}"
        );
        assert_eq!(cdr["answered"].is_u64(), answered, "{cdr}");
    }
    // The answered one counts as answered; the one in line as offered.
    let (_, report) = server.cli(&["report"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&report).expect("JSON");
    let total = rows.last().expect("total");
    assert_eq!(
        (&total["offered"], &total["answered"]),
        (&serde_json::json!(2), &serde_json::json!(1)),
        "{total}"
    );
}

/// BYE glare (RFC 5407 §3.1.2): the caller hangs up, the server's BYE goes
/// to the agent, and the agent's own BYE crosses it. The server answers
/// the agent's BYE with 200 (and again for its retransmission), whether
/// the call is still ending or gone.
#[test]
fn a_bye_crossing_ours_gets_200() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    for pause_ms in [0, 600] {
        let (mut trunk, mut d, mut agent, mut ad) = answered_call(&server);
        trunk.in_dialog(server.sip, &mut d, "BYE", "");
        assert_eq!(trunk.final_status(&d.call_id, "BYE", 3.0), Some(200));
        let ours = agent.request("BYE", 3.0).expect("the server's BYE");
        // The agent does not answer it yet: its own BYE was on the way.
        std::thread::sleep(std::time::Duration::from_millis(pause_ms));
        agent.in_dialog(server.sip, &mut ad, "BYE", "");
        assert_eq!(
            agent.final_status(&ad.call_id, "BYE", 3.0),
            Some(200),
            "after {pause_ms} ms"
        );
        agent.reply(server.sip, &ours, 200, "agt");
        server.assert_idle();
    }
}

/// A re-INVITE crossing a BYE (RFC 5407 §3.5): the caller puts the call on
/// hold, the server passes the re-INVITE to the agent, and the agent hangs
/// up instead of answering it. The agent's BYE gets 200, the caller gets
/// BYE, and the caller's re-INVITE its final answer (487), not silence.
#[test]
fn a_reinvite_crossing_a_bye_gets_its_final_answer() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let (mut trunk, mut d, mut agent, mut ad) = answered_call(&server);
    let sdp = trunk.sdp_dir("sendonly");
    trunk.in_dialog(server.sip, &mut d, "INVITE", &sdp);
    let _reinvite = agent
        .request("INVITE", 3.0)
        .expect("re-INVITE passed to the agent");
    agent.in_dialog(server.sip, &mut ad, "BYE", "");
    assert_eq!(agent.final_status(&ad.call_id, "BYE", 3.0), Some(200));
    assert_eq!(trunk.final_status(&d.call_id, "INVITE", 3.0), Some(487));
    let bye = trunk.request("BYE", 3.0).expect("the caller gets BYE");
    trunk.reply(server.sip, &bye, 200, "c");
    server.assert_idle();
}

/// A CANCEL crossing our 200 (RFC 3261 §9.2, RFC 5407 §3.1.1): the caller
/// cancels just as the agent answers. The INVITE is answered already, so
/// the CANCEL changes nothing: it gets 200, the caller ACKs, and the call
/// goes on until someone hangs up.
#[test]
fn a_cancel_crossing_our_200_changes_nothing() {
    let server = TestServer::start();
    server.add_agent("1001", "s3cret", "main");
    let mut agent = Phone::new("1001");
    assert_eq!(agent.register(server.sip, "s3cret", Algorithm::Md5), 200);
    let mut trunk = Phone::new("13800000000");
    let mut d = trunk.invite(server.sip, "123450");
    let inv = agent.request("INVITE", 5.0).expect("agent rung");
    agent.reply(server.sip, &inv, 200, "agt");
    agent.request("ACK", 3.0).expect("the agent's 200 ACKed");
    let ok = trunk
        .response(&d.call_id, "INVITE", 200, 3.0)
        .expect("the caller's 200");
    trunk.cancel(server.sip, &d);
    assert_eq!(trunk.final_status(&d.call_id, "CANCEL", 3.0), Some(200));
    trunk.ack(server.sip, &mut d, &ok);
    assert!(
        agent.request("BYE", 0.5).is_none(),
        "the call goes on after the CANCEL"
    );
    let ad = Phone::uas_dialog(&inv, "agt");
    let (caller_got, agent_got) = talk(&trunk, &d, &agent, &ad);
    assert!(
        caller_got > 30 && agent_got > 30,
        "{caller_got} / {agent_got}"
    );
    trunk.in_dialog(server.sip, &mut d, "BYE", "");
    assert_eq!(trunk.final_status(&d.call_id, "BYE", 3.0), Some(200));
    let bye = agent.request("BYE", 3.0).expect("the agent gets BYE");
    agent.reply(server.sip, &bye, 200, "agt");
    server.assert_idle();
}

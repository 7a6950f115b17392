//! Hot paths of signalling: parse an INVITE, route its dialed number through
//! the number plan in the store, write the 100 Trying; one transaction step; and a
//! REGISTER with a wrong password, for a real account and for a made-up one
//! (the two must cost the same, or timing enumerates accounts).
//! Run: `cargo bench --bench sip_path`.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use yihaotong::routing;
use yihaotong::routing::Route;
use yihaotong::sip::message::{parse, Message};
use yihaotong::sip::transaction::{TimerConfig, Transactions};
use yihaotong::sip::{Peer, TransportKind};
use yihaotong::store::Store;

const INVITE: &str = "INVITE sip:+8612345@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:12345@127.0.0.1>\r\n\
From: \"Citizen\" <sip:13800000000@127.0.0.1:5070>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@127.0.0.1\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:13800000000@127.0.0.1:5070>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 129\r\n\r\n\
v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    store.seed_plan().expect("seed");
    // A realistic plan size: the shipped numbers plus 10,000 department lines.
    for i in 0..10_000u32 {
        store
            .put_route(&Route {
                flow: String::new(),
                number: format!("8{:07}", i * 7),
                queue: "dept".into(),
                hotline: String::new(),
                ..Default::default()
            })
            .expect("route");
    }
    let prefixes = vec!["+86".to_string(), "0086".to_string(), "028".to_string()];
    let bytes = INVITE.as_bytes();

    c.bench_function("sip/parse_invite", |b| {
        b.iter(|| black_box(parse(black_box(bytes)).is_ok()))
    });

    c.bench_function("sip/parse_route_respond", |b| {
        b.iter(|| {
            let Ok(Message::Request(req)) = parse(black_box(bytes)) else {
                unreachable!("valid INVITE")
            };
            let dialed = req.uri_user.as_deref().unwrap_or_default();
            let number = routing::normalize(dialed, &prefixes).unwrap_or_default();
            let route = store.route_for(&number).ok().flatten();
            let resp = req.response(100, None, &[], b"");
            black_box((route, resp))
        })
    });

    let peer = Peer::new(
        "127.0.0.1:5070".parse().expect("addr"),
        TransportKind::Udp,
        0,
    );
    c.bench_function("sip/transaction_invite_100_180_200", |b| {
        let mut txs = Transactions::new(TimerConfig::default(), 1_000_000);
        let now = Instant::now();
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            let text = INVITE.replace("z9hG4bK776asdhds", &format!("z9hG4bK{n}"));
            let Ok(msg) = parse(text.as_bytes()) else {
                unreachable!("valid INVITE")
            };
            txs.handle_message(now, msg, peer);
            while txs.poll_transmit().is_some() {}
            if let Some(yihaotong::sip::transaction::TxEvent::Request { key, request, .. }) =
                txs.poll_event()
            {
                let ringing = Bytes::from(request.response(180, Some("t"), &[], b""));
                let _ = txs.respond(now, &key, 180, ringing);
            }
            while txs.poll_transmit().is_some() {}
        })
    });
}

/// A REGISTER for `user`, with `auth` (an Authorization value) if given.
fn register(user: &str, auth: Option<&str>) -> yihaotong::sip::message::Request {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let text = format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKreg\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@127.0.0.1>;tag=r\r\nTo: <sip:{user}@127.0.0.1>\r\n\
         Call-ID: reg-{user}\r\nCSeq: 2 REGISTER\r\nContact: <sip:{user}@127.0.0.2:5060>\r\n{auth}\
         Content-Length: 0\r\n\r\n"
    );
    match parse(text.as_bytes()) {
        Ok(Message::Request(r)) => r,
        other => unreachable!("valid REGISTER: {other:?}"),
    }
}

fn enumeration(c: &mut Criterion) {
    use yihaotong::registrar::Registrar;
    use yihaotong::sip::auth::Credentials;
    use yihaotong::store::Agent;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let mut settings = yihaotong::config::Settings::from_text(None).expect("settings");
    // Measure the check itself, not the lock-out that would follow.
    settings.sip.auth_fail_limit = u32::MAX;
    let realm = settings.sip.domain.clone();
    for i in 0..1_000 {
        let id = format!("{}", 1_000 + i);
        let creds = Credentials::new(&id, &realm, "the-right-password");
        let agent = Agent::new(&id, "Agent", vec!["main".into(), "tax".into()], creds);
        store.put_agent(&agent).expect("agent");
    }
    let mut registrar = Registrar::new(store, settings.sip.clone());
    let peer = Peer::new(
        "127.0.0.2:5060".parse().expect("addr"),
        TransportKind::Udp,
        0,
    );
    let challenge = registrar.register(1_000, &register("1500", None), &peer);
    let nonce = challenge
        .headers
        .iter()
        .find_map(|(_, v)| v.split("nonce=\"").nth(1)?.split('"').next())
        .expect("a challenge with a nonce")
        .to_string();
    let wrong = |user: &str| {
        let auth = format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", \
             uri=\"sip:127.0.0.1\", response=\"0123456789abcdef0123456789abcdef\", algorithm=MD5"
        );
        register(user, Some(&auth))
    };
    let known = wrong("1500");
    let unknown = wrong("7500");
    // Both benches do the same work, a known and an unknown attempt in
    // turn, and each times only its own half: drift and cache state fall
    // on both alike.
    for (name, timed, other) in [
        ("known_account", &known, &unknown),
        ("unknown_account", &unknown, &known),
    ] {
        assert_eq!(registrar.register(1_001, timed, &peer).status, 401);
        c.bench_function(&format!("registrar/wrong_password_{name}"), |b| {
            b.iter_custom(|iters| {
                let mut spent = std::time::Duration::ZERO;
                for _ in 0..iters {
                    black_box(registrar.register(1_001, black_box(other), &peer).status);
                    let start = Instant::now();
                    black_box(registrar.register(1_001, black_box(timed), &peer).status);
                    spent += start.elapsed();
                }
                spent
            })
        });
    }
}

criterion_group!(benches, bench, enumeration);
criterion_main!(benches);

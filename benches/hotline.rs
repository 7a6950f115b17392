//! Hot paths of the hotline's own rooms, one call's worth each: the ACD
//! desk choosing among 1,000 agents, an IVR walk through the 12333 menu,
//! the number plan at 100,000 routes, G.711 encoding of one frame, and
//! writing an INVITE.
//! Run: `cargo bench --bench hotline`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use yihaotong::acd::desk::{AgentSpec, Desk, HungUp, Joining, OfferOutcome, Output, Rules};
use yihaotong::acd::SeatContact;
use yihaotong::config::Strategy;
use yihaotong::ivr::session::{Effect, Facts, Input, Session};
use yihaotong::media::player::Law;
use yihaotong::routing::Route;
use yihaotong::sip::message::{Method, OutgoingRequest};
use yihaotong::sip::{Peer, TransportKind};
use yihaotong::store::{Presence, Rank, Store};

const AGENTS: usize = 1_000;
const QUEUES: [&str; 4] = ["main", "hrss", "tax", "health"];

/// A desk of 1,000 available agents, each in two of four queues at levels
/// 1–3, with `strategy` everywhere.
fn desk(strategy: Strategy) -> Desk {
    let rules = Rules {
        strategy,
        ..Rules::default()
    };
    let mut desk = Desk::new(QUEUES.iter().map(|q| (q.to_string(), rules.clone())));
    let mut out = Vec::new();
    for i in 0..AGENTS {
        let id = format!("{}", 1_000 + i);
        let peer = Peer::new(
            "127.0.0.3:6000".parse().expect("addr"),
            TransportKind::Udp,
            0,
        );
        let contact = SeatContact {
            agent: id.clone(),
            uri: format!("sip:{id}@127.0.0.3:6000"),
            peer,
        };
        let queues = vec![
            (QUEUES[i % 4].to_string(), 1 + (i % 3) as u32),
            (QUEUES[(i + 1) % 4].to_string(), 2),
        ];
        let spec = AgentSpec {
            id,
            queues,
            wrap_up: None,
            auto_login: true,
        };
        desk.upsert_agent(
            spec,
            Presence::Available,
            Some((contact, u64::MAX / 2)),
            false,
            0,
            &mut out,
        );
    }
    desk
}

/// One call through the desk: join, ring the chosen agent, answered, hung
/// up by the caller. Returns how many agents were rung.
fn one_call(desk: &mut Desk, call: u64, now: u64, out: &mut Vec<Output>) -> usize {
    out.clear();
    let joining = Joining {
        call,
        call_id: format!("c{call}"),
        queue: QUEUES[call as usize % 4].to_string(),
        rank: Rank::Normal,
        number: "13800000000".into(),
        callback: false,
    };
    let _ = desk.enter(joining, now, out);
    let rung: Vec<String> = out
        .iter()
        .filter_map(|o| match o {
            Output::Ring { agents, .. } => agents.first().map(|a| a.agent.clone()),
            _ => None,
        })
        .collect();
    for agent in &rung {
        desk.offer_result(call, agent, OfferOutcome::Answered, now + 1, out);
    }
    desk.leave(call, HungUp::Caller, now + 2, out);
    desk.tick(now + 3, out);
    rung.len()
}

fn acd(c: &mut Criterion) {
    for (name, strategy) in [
        ("longest_idle", Strategy::LongestIdle),
        ("skills", Strategy::Skills),
        ("round_robin", Strategy::RoundRobin),
    ] {
        let mut d = desk(strategy);
        let mut out = Vec::new();
        let (mut call, mut now) = (0u64, 1_000u64);
        assert_eq!(
            one_call(&mut d, call, now, &mut out),
            1,
            "{name}: no agent rung"
        );
        let (mut calls, mut rung) = (0usize, 0usize);
        c.bench_function(&format!("acd/one_call_1000_agents_{name}"), |b| {
            b.iter(|| {
                call += 1;
                now += 10;
                calls += 1;
                rung += black_box(one_call(&mut d, call, now, &mut out));
            })
        });
        assert_eq!(rung, calls, "{name}: every call rang exactly one agent");
        d.check_invariants(now + 10)
            .expect("desk consistent after the bench");
    }
}

struct Weekday;

impl Facts for Weekday {
    fn now(&self) -> chrono::NaiveDateTime {
        chrono::NaiveDate::from_ymd_opt(2026, 11, 30)
            .and_then(|d| d.and_hms_opt(10, 0, 0))
            .expect("a valid time")
    }
    fn in_list(&self, _: &str, _: &str) -> bool {
        false
    }
    fn flag(&self, _: &str) -> bool {
        false
    }
}

/// The 12333 caller's whole walk: welcome, menu, key 1, hand-off.
fn walk_12333(
    catalog: &Arc<yihaotong::ivr::Catalog>,
    flow: &Arc<yihaotong::ivr::flow::Flow>,
) -> bool {
    let mut session = Session::new(catalog.clone(), flow.clone(), "13800000000", 200);
    let mut effects = session.handle(Input::Start, &Weekday);
    for _ in 0..8 {
        let played = effects.iter().find_map(|e| match e {
            Effect::Play { id, .. } => Some(*id),
            _ => None,
        });
        if effects.iter().any(|e| matches!(e, Effect::Handoff { .. })) {
            return true;
        }
        effects = match played {
            Some(id) => session.handle(Input::PlayDone(id), &Weekday),
            None => session.handle(Input::Digit('1'), &Weekday),
        };
    }
    false
}

fn ivr(c: &mut Criterion) {
    let settings = yihaotong::config::Settings::from_text(None).expect("settings");
    let loaded = yihaotong::ivr::load(&settings, &settings.queues);
    let catalog = Arc::new(loaded.catalog);
    let flow = catalog.flows.get("12333").expect("the 12333 flow").clone();
    assert!(walk_12333(&catalog, &flow), "the walk reaches the hand-off");
    c.bench_function("ivr/walk_12333_menu_to_handoff", |b| {
        b.iter(|| black_box(walk_12333(&catalog, &flow)))
    });
}

fn plan_and_wire(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    store.seed_plan().expect("seed");
    for i in 0..100_000u32 {
        let route = Route {
            number: format!("8{:07}", i * 97),
            queue: "dept".into(),
            flow: String::new(),
            hotline: String::new(),
            ..Default::default()
        };
        store.put_route(&route).expect("route");
    }
    let mut i = 0u32;
    c.bench_function("routing/longest_prefix_100k_routes", |b| {
        b.iter(|| {
            i = i.wrapping_add(7_919);
            let number = format!("8{:07}", i % 10_000_000);
            black_box(store.route_for(&number).ok().flatten().is_some())
        })
    });

    let samples: Vec<i16> = (0..160)
        .map(|n| ((n as f32 * 0.3).sin() * 12_000.0) as i16)
        .collect();
    for law in [Law::Pcmu, Law::Pcma] {
        c.bench_function(&format!("media/g711_encode_20ms_{law:?}"), |b| {
            let mut frame = [0u8; 160];
            b.iter(|| {
                for (out, s) in frame.iter_mut().zip(black_box(&samples)) {
                    *out = law.encode(*s);
                }
                black_box(frame[80])
            })
        });
    }

    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    c.bench_function("sip/write_invite_to_agent", |b| {
        b.iter(|| {
            let extra = [
                ("Contact", "<sip:yihaotong@127.0.0.1:5060>"),
                ("Content-Type", "application/sdp"),
                ("X-Hotline", "12345 citizen hotline"),
                ("X-Dialed", "12345"),
                ("Max-Forwards", "69"),
            ];
            let bytes = OutgoingRequest {
                method: &Method::Invite,
                uri: "sip:1001@127.0.0.3:6000",
                via: "UDP 127.0.0.1:5060;branch=z9hG4bKabcdef;rport",
                from: "<sip:13800000000@127.0.0.1>;tag=abc",
                to: "<sip:1001@127.0.0.3:6000>",
                call_id: "0123456789abcdef@127.0.0.1",
                cseq: 1,
                extra: black_box(&extra),
                body: sdp.as_bytes(),
            }
            .write();
            black_box(bytes.len())
        })
    });
}

criterion_group!(benches, acd, ivr, plan_and_wire);
criterion_main!(benches);

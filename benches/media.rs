//! Media hot paths: in-band DTMF detection on one 20 ms frame, the relay's
//! per-packet rewrite, the IVR player's frame generation, the media
//! engine's RTP payload parse, and a recorded call's packets into its WAV;
//! and the floor under all of them, the kernel's cost of one datagram over
//! loopback (send + receive). Run: `cargo bench --bench media`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use std::time::{Duration, Instant};
use yihaotong::media::dtmf::Detector;
use yihaotong::media::engine::rtp_payload;
use yihaotong::media::player::{Law, Player, PACKET};
use yihaotong::media::prompts::{Prompt, FRAME};
use yihaotong::media::recording::{dropped_bytes, settled, Recorder};
use yihaotong::media::relay::{Rewriter, Side};

fn bench(c: &mut Criterion) {
    // 20 ms of speech-band noise at 8 kHz.
    let mut x: u32 = 1;
    let frame: Vec<i16> = (0..160)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            ((x >> 16) as i16) / 4
        })
        .collect();
    let mut detector = Detector::new();
    c.bench_function("media/dtmf_detect_20ms_frame", |b| {
        b.iter(|| black_box(detector.feed(black_box(&frame))))
    });

    let mut packet = vec![0u8; 172];
    packet[0] = 0x80;
    let mut rewriter = Rewriter::new(0x1234_5678);
    let mut seq: u16 = 0;
    c.bench_function("media/relay_rewrite_packet", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            packet[2..4].copy_from_slice(&seq.to_be_bytes());
            black_box(rewriter.rewrite(black_box(&mut packet)))
        })
    });
}

fn player(c: &mut Criterion) {
    // A 60 s looped prompt (music on hold): every tick writes one packet.
    let prompt = Arc::new(Prompt::from_linear("moh", &vec![1000i16; 3000 * FRAME]));
    let mut player = Player::new(Law::Pcma, 7, 0, 0);
    player.play(1, vec![prompt], false, true);
    let mut buf = [0u8; PACKET];
    c.bench_function("media/player_tick_one_frame", |b| {
        b.iter(|| black_box(player.tick(black_box(&mut buf))))
    });
    c.bench_function("media/engine_rtp_payload_parse", |b| {
        b.iter(|| black_box(rtp_payload(black_box(&buf))))
    });
}

fn recording(c: &mut Criterion) {
    // One 20 ms PCMU packet from each side, as a recorded bridged call's
    // relay hands them over: decoded, paired into stereo frames and packed;
    // every 6th pair fills a chunk that goes to the
    // recordings writer thread (a real file).
    let dir = tempfile::tempdir().expect("temp dir");
    let mut recorder = Recorder::create(&dir.path().join("bench.wav"), 0)
        .expect("create")
        .expect("PCMU is recorded");
    let mut a = vec![0x80u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    a.extend_from_slice(&[0x55; 160]);
    let mut b = a.clone();
    b[11] = 2;
    b[12..].fill(0x2a);
    let mut seq: u16 = 0;
    let mut pair = |recorder: &mut Recorder| {
        seq = seq.wrapping_add(1);
        for p in [&mut a, &mut b] {
            p[2..4].copy_from_slice(&seq.to_be_bytes());
        }
        recorder.push(Side::A, black_box(&a)).expect("write");
        recorder.push(Side::B, black_box(&b)).expect("write");
    };
    // What the engine thread spends: the writer is let catch up between
    // chunks, outside the timing, so nothing is dropped.
    c.bench_function("media/recording_push_one_packet_each_side", |bench| {
        bench.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = (iters - done).min(6);
                let t = Instant::now();
                for _ in 0..n {
                    pair(&mut recorder);
                }
                spent += t.elapsed();
                done += n;
                settled();
            }
            spent
        })
    });
    // The whole cost, the disk write on the writer thread included: the
    // process's CPU time (all threads), not the wall clock, which would
    // count the writer's sleep between its takes.
    let cpu = || {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
            .map(Duration::from)
            .expect("process CPU clock")
    };
    c.bench_function(
        "media/recording_push_and_write_one_packet_each_side",
        |bench| {
            bench.iter_custom(|iters| {
                let t = cpu();
                for i in 0..iters {
                    pair(&mut recorder);
                    // Far faster than calls send: let the writer catch up
                    // now and then (its sleep costs no CPU) so none is dropped.
                    if i % 1024 == 1023 {
                        settled();
                    }
                }
                settled();
                cpu() - t
            })
        },
    );
    assert_eq!(dropped_bytes(), 0, "the writer kept up: nothing dropped");
}

/// What the kernel alone charges for one RTP packet over loopback: a
/// `sendto` (which on loopback also runs the delivery into the receiving
/// socket) and a `recvfrom`, round-robin over 1,000 socket pairs as the
/// engine's streams are. A relayed packet costs the server one of each, and
/// the harness the same again; no user space in it.
fn kernel_floor(c: &mut Criterion) {
    let pairs: Vec<(
        std::net::UdpSocket,
        std::net::UdpSocket,
        std::net::SocketAddr,
    )> = (0..1000)
        .map(|_| {
            let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            rx.set_nonblocking(true).expect("nonblocking");
            let to = rx.local_addr().expect("addr");
            (tx, rx, to)
        })
        .collect();
    let packet = [0x80u8; 172];
    let mut buf = [0u8; 2048];
    let mut i = 0;
    c.bench_function("media/loopback_udp_send_and_receive_one_packet", |b| {
        b.iter(|| {
            let (tx, rx, to) = &pairs[i % pairs.len()];
            i += 1;
            let _ = tx.send_to(black_box(&packet), to);
            black_box(rx.recv_from(&mut buf).ok())
        })
    });
}

criterion_group!(benches, bench, player, recording, kernel_floor);
criterion_main!(benches);

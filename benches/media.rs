//! Media hot paths: in-band DTMF detection on one 20 ms frame, and the relay's
//! per-packet rewrite. Run: `cargo bench --bench media`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use yihaotong::media::dtmf::Detector;
use yihaotong::media::relay::Rewriter;

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

criterion_group!(benches, bench);
criterion_main!(benches);

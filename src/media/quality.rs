//! How well one side's RTP arrives: packets received and lost, and the
//! RFC 3550 interarrival jitter.
//!
//! Room: a meter on one pipe of the relay. Sans-IO: the relay hands it each
//! packet it accepts with the moment it arrived; it keeps RFC 3550's
//! appendix A.1 sequence bookkeeping (extended highest sequence, cycles,
//! a new source starting its own count) and A.8's jitter estimate in
//! timestamp units at 8 kHz. Telephone-event packets (RFC 4733) count for
//! loss but not for jitter: their timestamps stand still for an event.
//! It touches nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// G.711's clock: timestamp units per second.
const CLOCK: f64 = 8000.0;

/// A summary: what the CDR and the metrics take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quality {
    /// Packets received.
    pub received: u64,
    /// Packets expected from the sequence numbers, less those received:
    /// RFC 3550's cumulative count, floored at 0 (a duplicate makes up for
    /// a loss, as in RTCP's own figure).
    pub lost: u64,
    /// RFC 3550 interarrival jitter at the end, microseconds.
    pub jitter_us: u64,
    /// The largest jitter estimate seen, microseconds.
    pub max_jitter_us: u64,
}

impl Quality {
    /// Lost over expected (0 when nothing was expected).
    pub fn loss_ratio(&self) -> f64 {
        let expected = self.received + self.lost;
        if expected == 0 {
            0.0
        } else {
            self.lost as f64 / expected as f64
        }
    }
}

/// A [`Quality`] one task writes (per packet, relaxed stores) and another
/// reads: no lock on the packet path.
#[derive(Debug, Default)]
pub struct QualityCell {
    received: AtomicU64,
    lost: AtomicU64,
    jitter_us: AtomicU64,
    max_jitter_us: AtomicU64,
}

impl QualityCell {
    /// Publishes `q`.
    pub fn store(&self, q: &Quality) {
        self.received.store(q.received, Ordering::Relaxed);
        self.lost.store(q.lost, Ordering::Relaxed);
        self.jitter_us.store(q.jitter_us, Ordering::Relaxed);
        self.max_jitter_us.store(q.max_jitter_us, Ordering::Relaxed);
    }

    /// The last published figures (`None`: nothing arrived).
    pub fn load(&self) -> Option<Quality> {
        let q = Quality {
            received: self.received.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            jitter_us: self.jitter_us.load(Ordering::Relaxed),
            max_jitter_us: self.max_jitter_us.load(Ordering::Relaxed),
        };
        (q.received > 0).then_some(q)
    }
}

/// One source's sequence bookkeeping.
#[derive(Debug, Clone)]
struct Source {
    ssrc: u32,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    received: u64,
}

impl Source {
    fn new(ssrc: u32, seq: u16) -> Source {
        Source {
            ssrc,
            base_seq: u32::from(seq),
            max_seq: seq,
            cycles: 0,
            received: 0,
        }
    }

    fn expected(&self) -> u64 {
        let extended = u64::from(self.cycles) + u64::from(self.max_seq);
        (extended + 1).saturating_sub(u64::from(self.base_seq))
    }

    fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }
}

/// Largest forward jump of the sequence still taken as the same stream.
const MAX_DROPOUT: u16 = 3000;

/// One side's RTP meter.
#[derive(Debug, Clone, Default)]
pub struct StreamQuality {
    source: Option<Source>,
    /// What earlier sources (before an SSRC change) added up to.
    earlier_received: u64,
    earlier_lost: u64,
    /// RFC 3550 A.8: the last packet's transit time, in timestamp units.
    last_transit: Option<f64>,
    /// Jitter estimate, timestamp units.
    jitter: f64,
    max_jitter: f64,
    /// When the first packet arrived (the origin of arrival times).
    origin: Option<Instant>,
}

impl StreamQuality {
    /// A packet of payload type `pt` with `seq`, `ts` and `ssrc` arrived at `now`.
    pub fn packet(&mut self, pt: u8, seq: u16, ts: u32, ssrc: u32, now: Instant) {
        if self.source.as_ref().is_none_or(|s| s.ssrc != ssrc) {
            // A new source (another agent, a re-INVITE): its own count.
            if let Some(old) = self.source.take() {
                self.earlier_received += old.received;
                self.earlier_lost += old.lost();
            }
            self.source = Some(Source::new(ssrc, seq));
            self.last_transit = None;
        }
        let Some(source) = self.source.as_mut() else {
            return;
        };
        let delta = seq.wrapping_sub(source.max_seq);
        if delta < MAX_DROPOUT {
            if seq < source.max_seq {
                // Wrapped around: another cycle of 2^16.
                source.cycles = source.cycles.wrapping_add(1 << 16);
            }
            source.max_seq = seq;
        } else if delta <= u16::MAX - 100 {
            // A large jump: the sender restarted its numbering; start over.
            let (earlier_received, earlier_lost) = (source.received, source.lost());
            self.earlier_received += earlier_received;
            self.earlier_lost += earlier_lost;
            *source = Source::new(ssrc, seq);
        }
        // (Otherwise a late or duplicate packet: counted, max unchanged.)
        source.received += 1;
        // Jitter over audio only: events hold their timestamp for an event.
        if pt >= 96 {
            return;
        }
        let origin = *self.origin.get_or_insert(now);
        let arrival = now.saturating_duration_since(origin).as_secs_f64() * CLOCK;
        let transit = arrival - f64::from(ts);
        if let Some(last) = self.last_transit {
            let mut d = (transit - last).abs();
            // Timestamps are modulo 2^32: a wrap is not a 9-hour delay.
            if d > f64::from(u32::MAX) / 2.0 {
                d = (d - f64::from(u32::MAX) - 1.0).abs();
            }
            self.jitter += (d - self.jitter) / 16.0;
            self.max_jitter = self.max_jitter.max(self.jitter);
        }
        self.last_transit = Some(transit);
    }

    /// What has arrived so far.
    pub fn summary(&self) -> Quality {
        let (received, lost) = self
            .source
            .as_ref()
            .map_or((0, 0), |s| (s.received, s.lost()));
        Quality {
            received: self.earlier_received + received,
            lost: self.earlier_lost + lost,
            jitter_us: (self.jitter / CLOCK * 1e6) as u64,
            max_jitter_us: (self.max_jitter / CLOCK * 1e6) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `n` packets of 20 ms from `first_seq`, each arriving `late(i)` ms
    /// after its due time; those for which `drop(i)` holds never arrive.
    fn stream(
        q: &mut StreamQuality,
        t0: Instant,
        first_seq: u16,
        n: u32,
        late: impl Fn(u32) -> u64,
        drop: impl Fn(u32) -> bool,
    ) {
        for i in 0..n {
            if drop(i) {
                continue;
            }
            let at = t0 + Duration::from_millis(u64::from(i) * 20 + late(i));
            q.packet(0, first_seq.wrapping_add(i as u16), 1000 + i * 160, 7, at);
        }
    }

    #[test]
    fn an_even_stream_has_no_jitter_and_no_loss() {
        let mut q = StreamQuality::default();
        stream(&mut q, Instant::now(), 100, 500, |_| 0, |_| false);
        let s = q.summary();
        assert_eq!((s.received, s.lost), (500, 0));
        assert_eq!(s.jitter_us, 0, "{s:?}");
        assert_eq!(s.loss_ratio(), 0.0);
    }

    #[test]
    fn losses_are_counted_across_a_sequence_wrap() {
        let mut q = StreamQuality::default();
        // From 65,000 through the wrap; every tenth packet lost.
        stream(&mut q, Instant::now(), 65_000, 1000, |_| 0, |i| i % 10 == 3);
        let s = q.summary();
        assert_eq!((s.received, s.lost), (900, 100), "{s:?}");
        assert!((s.loss_ratio() - 0.1).abs() < 1e-9);
    }

    #[test]
    fn alternating_lateness_converges_to_rfc_3550_jitter() {
        // Every other packet 10 ms late: |D| = 10 ms each time, so the
        // estimate J += (|D| - J)/16 converges on 10 ms.
        let mut q = StreamQuality::default();
        stream(
            &mut q,
            Instant::now(),
            0,
            400,
            |i| if i % 2 == 1 { 10 } else { 0 },
            |_| false,
        );
        let s = q.summary();
        assert!(s.jitter_us.abs_diff(10_000) < 100, "{s:?}");
        assert!(s.max_jitter_us >= s.jitter_us);
    }

    #[test]
    fn a_new_source_keeps_the_old_counts_and_events_do_not_make_jitter() {
        let t0 = Instant::now();
        let mut q = StreamQuality::default();
        stream(&mut q, t0, 10, 50, |_| 0, |i| i == 20);
        // An RFC 4733 event: the same timestamp for 5 packets, 20 ms apart.
        for i in 0..5u16 {
            q.packet(
                101,
                60 + i,
                9000,
                7,
                t0 + Duration::from_millis(1000 + u64::from(i) * 20),
            );
        }
        assert_eq!(q.summary().jitter_us, 0, "{:?}", q.summary());
        // Another agent's phone: a new SSRC starting anywhere.
        for i in 0..10u16 {
            q.packet(
                0,
                40_000 + i,
                77 + u32::from(i) * 160,
                9,
                t0 + Duration::from_millis(2000 + u64::from(i) * 20),
            );
        }
        let s = q.summary();
        assert_eq!((s.received, s.lost), (49 + 5 + 10, 1), "{s:?}");
        // A late packet of the current source moves nothing back.
        q.packet(0, 40_003, 77 + 3 * 160, 9, t0 + Duration::from_millis(2300));
        assert_eq!(q.summary().received, 65);
    }
}

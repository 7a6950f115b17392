//! The harness's RTP: one pacing clock for every stream, and per-stream
//! receive statistics (loss, RFC 3550 jitter, inter-arrival deviation).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use rtc_shared::marshal::Unmarshal;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Samples per 20 ms G.711 frame.
const FRAME_SAMPLES: u32 = 160;
const FRAME: Duration = Duration::from_millis(20);

/// Receive statistics of one or more streams.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamStats {
    /// Streams measured.
    pub streams: u64,
    /// Packets received.
    pub received: u64,
    /// Packets the sequence numbers say were sent.
    pub expected: u64,
    /// Largest RFC 3550 interarrival jitter seen on any stream, ms.
    pub max_jitter_ms: f64,
    /// 99th percentile over all packets of |D|, RFC 3550's per-packet
    /// transit difference (arrival spacing minus timestamp spacing), from
    /// kernel receive timestamps (SO_TIMESTAMPNS), ms.
    pub interarrival_dev_p99_ms: f64,
    #[serde(skip)]
    dev_us: Option<Histogram<u64>>,
}

impl StreamStats {
    /// Lost packets as a percentage of expected.
    pub fn loss_percent(&self) -> f64 {
        if self.expected == 0 {
            return 0.0;
        }
        self.expected.saturating_sub(self.received) as f64 * 100.0 / self.expected as f64
    }

    /// The 99th percentile inter-arrival deviation, ms.
    pub fn interarrival_dev_p99_ms(&self) -> f64 {
        self.interarrival_dev_p99_ms
    }

    /// Adds another stream's figures.
    pub fn merge(&mut self, other: &StreamStats) {
        self.streams += other.streams;
        self.received += other.received;
        self.expected += other.expected;
        self.max_jitter_ms = self.max_jitter_ms.max(other.max_jitter_ms);
        if let Some(o) = &other.dev_us {
            match &mut self.dev_us {
                Some(h) => {
                    let _ = h.add(o);
                }
                None => self.dev_us = Some(o.clone()),
            }
        }
        if let Some(h) = &self.dev_us {
            self.interarrival_dev_p99_ms = h.value_at_quantile(0.99) as f64 / 1000.0;
        }
    }
}

struct Stream {
    socket: std::net::UdpSocket,
    dest: SocketAddr,
    seq: u16,
    timestamp: u32,
    ssrc: u32,
    stop: Arc<AtomicBool>,
}

/// One clock for every outgoing stream, on its own OS thread: it sleeps to
/// absolute 20 ms deadlines (so lateness does not accumulate) and sends one
/// frame on each live stream from one reused buffer. A thread rather than a
/// tokio timer, so the harness's own scheduling does not show up as jitter in
/// what it measures; how late each tick fired is recorded as well.
pub(crate) struct Pacer {
    add: std::sync::Mutex<std::sync::mpsc::Sender<Stream>>,
    /// How late ticks fired, µs.
    pub(crate) lateness_us: Arc<std::sync::Mutex<Histogram<u64>>>,
}

impl Pacer {
    pub(crate) fn start() -> Arc<Pacer> {
        let (add, new_streams) = std::sync::mpsc::channel::<Stream>();
        let lateness_us = Arc::new(std::sync::Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).expect("valid")),
        ));
        let late = lateness_us.clone();
        std::thread::spawn(move || {
            let mut streams: Vec<Stream> = Vec::new();
            let mut packet = [0xffu8; 12 + 160];
            let mut next = std::time::Instant::now() + FRAME;
            loop {
                let now = std::time::Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
                let fired = std::time::Instant::now();
                if let Ok(mut h) = late.lock() {
                    let _ =
                        h.record((fired.saturating_duration_since(next).as_micros() as u64).max(1));
                }
                // Keep the schedule absolute; after a long stall, skip ahead rather than burst.
                next += FRAME;
                if fired > next + FRAME * 5 {
                    next = fired + FRAME;
                }
                loop {
                    match new_streams.try_recv() {
                        Ok(s) => streams.push(s),
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                            if streams.is_empty() {
                                return;
                            }
                            break;
                        }
                    }
                }
                streams.retain(|s| !s.stop.load(Ordering::Relaxed));
                for s in &mut streams {
                    packet[0] = 0x80;
                    packet[1] = if s.seq == 0 { 0x80 } else { 0 }; // marker on the first, PT 0 (PCMU)
                    packet[2..4].copy_from_slice(&s.seq.to_be_bytes());
                    packet[4..8].copy_from_slice(&s.timestamp.to_be_bytes());
                    packet[8..12].copy_from_slice(&s.ssrc.to_be_bytes());
                    let _ = s.socket.send_to(&packet, s.dest);
                    s.seq = s.seq.wrapping_add(1);
                    s.timestamp = s.timestamp.wrapping_add(FRAME_SAMPLES);
                }
            }
        });
        Arc::new(Pacer {
            add: std::sync::Mutex::new(add),
            lateness_us,
        })
    }

    /// Starts sending on `socket` to `dest`; set the returned flag to stop.
    pub(crate) fn send(&self, socket: std::net::UdpSocket, dest: SocketAddr) -> Arc<AtomicBool> {
        let stop = Arc::new(AtomicBool::new(false));
        if let Ok(add) = self.add.lock() {
            let _ = add.send(Stream {
                socket,
                dest,
                seq: 0,
                timestamp: rand::random(),
                ssrc: rand::random(),
                stop: stop.clone(),
            });
        }
        stop
    }
}

/// Receives on `socket` until `stop` is set; returns the stream's statistics
/// and when its first packet arrived.
pub(crate) async fn receive(
    socket: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
) -> (StreamStats, Option<Instant>) {
    use nix::sys::socket::{
        recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
    };
    use std::os::fd::AsRawFd;
    // Kernel arrival times: what the harness's own scheduling does to the
    // task that reads the socket does not show up as the server's jitter.
    let kernel_stamps = setsockopt(&*socket, sockopt::ReceiveTimestampns, &true).is_ok();
    let fd = socket.as_raw_fd();
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut buf = [0u8; 2048];
    let mut first: Option<Instant> = None;
    let mut first_seq: Option<u16> = None;
    let mut highest: i64 = 0;
    let mut cycles: i64 = 0;
    let mut last_seq: u16 = 0;
    let mut received = 0u64;
    let mut jitter = 0.0f64;
    let epoch = Instant::now();
    let mut prev: Option<(f64, u32)> = None;
    // One per stream, so kept small: two significant figures up to 10 s is
    // 18 KiB (three figures up to 60 s was 139 KiB, 400 MiB of the harness's
    // memory at 3,000 streams, and a cache miss per packet).
    let mut dev = Histogram::<u64>::new_with_bounds(1, 10_000_000, 2).ok();
    while !stop.load(Ordering::Relaxed) {
        let read = socket.async_io(tokio::io::Interest::READABLE, || {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
                .map_err(std::io::Error::from)?;
            let mut stamp = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmTimestampns(ts) = c {
                        stamp = Some(ts.tv_sec() as f64 + ts.tv_nsec() as f64 * 1e-9);
                    }
                }
            }
            Ok((msg.bytes, stamp))
        });
        let Ok(Ok((n, stamp))) = tokio::time::timeout(Duration::from_millis(50), read).await else {
            continue;
        };
        let now = Instant::now();
        // Seconds on one clock per stream: the kernel's when it stamps.
        let at = match (kernel_stamps, stamp) {
            (true, Some(t)) => t,
            _ => now.duration_since(epoch).as_secs_f64(),
        };
        let mut view = &buf[..n];
        let Ok(h) = rtc_rtp::header::Header::unmarshal(&mut view) else {
            continue;
        };
        received += 1;
        first.get_or_insert(now);
        let base = *first_seq.get_or_insert(h.sequence_number);
        if received > 1 && h.sequence_number < last_seq && last_seq - h.sequence_number > 0x8000 {
            cycles += 1 << 16;
        }
        last_seq = h.sequence_number;
        highest = highest.max(cycles + h.sequence_number as i64 - base as i64);
        if let Some((t, ts)) = prev {
            // RFC 3550 §6.4.1: D = (Rj − Ri) − (Sj − Si), in timestamp units (8 kHz).
            let arrival = (at - t) * 8000.0;
            let sent = h.timestamp.wrapping_sub(ts) as i32 as f64;
            let d = (arrival - sent).abs();
            jitter += (d - jitter) / 16.0;
            // The same D per packet, in µs: how far this packet's spacing
            // strayed from the spacing its timestamps promise (a pause
            // between prompts is in both, so it is not counted).
            if let Some(h) = dev.as_mut() {
                let _ = h.record(((d / 8000.0 * 1e6) as u64).max(1));
            }
        }
        prev = Some((at, h.timestamp));
    }
    let mut stats = StreamStats {
        streams: 1,
        received,
        expected: if received == 0 { 0 } else { highest as u64 + 1 },
        max_jitter_ms: jitter / 8.0,
        interarrival_dev_p99_ms: 0.0,
        dev_us: None,
    };
    let single = StreamStats {
        dev_us: dev,
        ..Default::default()
    };
    stats.merge(&single);
    (stats, first)
}

/// The RFC 4733 packets of one key press (payload type `pt`): three while
/// the key is held, the first with the marker bit, then the end packet three
/// times (§2.5.1.4), all with the event's `timestamp`; to be sent 20 ms
/// apart. `None` for a character that is not a key.
pub(crate) fn key_press(
    key: char,
    pt: u8,
    ssrc: u32,
    first_seq: u16,
    timestamp: u32,
) -> Option<Vec<Vec<u8>>> {
    let event = (0u8..16).find(|e| crate::media::dtmf::key_of_event(*e) == Some(key))?;
    let packets = (0..6u16)
        .map(|i| {
            let end = i >= 3;
            let payload = crate::media::dtmf::TelephoneEvent {
                event,
                end,
                volume: 10,
                duration: 160 * (i.min(3) + 1),
            }
            .write();
            let marker = if i == 0 { 0x80 } else { 0 };
            let mut p = Vec::with_capacity(16);
            p.extend_from_slice(&[0x80, pt | marker]);
            p.extend_from_slice(&first_seq.wrapping_add(i).to_be_bytes());
            p.extend_from_slice(&timestamp.to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.extend_from_slice(&payload);
            p
        })
        .collect();
    Some(packets)
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn a_key_press_is_read_back_once_by_the_servers_event_receiver() {
        let packets = key_press('7', 101, 0xabc, 65_534, 8000).expect("a key");
        assert_eq!(packets.len(), 6);
        let mut rx = crate::media::dtmf::EventReceiver::default();
        let mut keys = Vec::new();
        for p in &packets {
            assert_eq!(p[1] & 0x7f, 101);
            let ts = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
            keys.extend(rx.handle(ts, &p[12..]));
        }
        assert_eq!(keys, ['7'], "one press, however many packets");
        assert_eq!(packets[0][1] & 0x80, 0x80, "the marker on the first");
        assert_eq!(
            &packets[5][2..4],
            &3u16.to_be_bytes(),
            "seq wraps: 65534 + 5"
        );
        assert!(key_press('x', 101, 1, 1, 1).is_none());
        let star = key_press('*', 101, 1, 1, 1).expect("star");
        assert_eq!(star[0][12], 10);
    }
}

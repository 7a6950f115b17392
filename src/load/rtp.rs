//! The harness's RTP: one pacing clock for every stream, one receiving
//! thread for every stream, and per-stream receive statistics (loss, RFC
//! 3550 jitter, inter-arrival deviation).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use rtc_shared::marshal::Unmarshal;
use serde::Serialize;
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
    /// Packets the harness's own sockets dropped because their receive
    /// buffers were full (SO_RXQ_OVFL): lost by the harness, not the
    /// server. Part of the loss, which counts them too.
    pub dropped_by_harness: u64,
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
        self.dropped_by_harness += other.dropped_by_harness;
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
    /// The receiving side's thread.
    listener: Arc<Listener>,
    /// How late ticks fired, µs.
    pub(crate) lateness_us: Arc<std::sync::Mutex<Histogram<u64>>>,
}

impl Pacer {
    pub(crate) fn start() -> std::io::Result<Arc<Pacer>> {
        let listener = Listener::start()?;
        let (add, new_streams) = std::sync::mpsc::channel::<Stream>();
        let lateness_us = Arc::new(std::sync::Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).expect("valid")),
        ));
        let late = lateness_us.clone();
        std::thread::spawn(move || {
            // The same real-time priority as the server's media threads,
            // where allowed: a pacer that starts its ticks late sends bursts,
            // and the jitter the callers then measure is the harness's own.
            let _ = crate::media::engine::make_realtime();
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
        Ok(Arc::new(Pacer {
            add: std::sync::Mutex::new(add),
            listener,
            lateness_us,
        }))
    }

    /// Measures what arrives on `socket` until `stop` is set (the
    /// [`Listener`]'s thread); the figures come back on the returned channel.
    pub(crate) fn receive(
        &self,
        socket: &std::net::UdpSocket,
        stop: Arc<AtomicBool>,
    ) -> tokio::sync::oneshot::Receiver<Measured> {
        self.listener.receive(socket, stop)
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

/// What a stream's measurement gives back: its statistics, and when its
/// first packet arrived.
pub(crate) type Measured = (StreamStats, Option<Instant>);

/// One stream's receive measurement, fed packet by packet (sans-IO).
struct Meter {
    first: Option<Instant>,
    first_seq: Option<u16>,
    highest: i64,
    cycles: i64,
    last_seq: u16,
    received: u64,
    jitter: f64,
    /// The previous packet's arrival (s) and RTP timestamp.
    prev: Option<(f64, u32)>,
    dev: Option<Histogram<u64>>,
    /// The socket's drop counter, as the kernel last reported it.
    dropped: u32,
}

impl Meter {
    fn new() -> Meter {
        Meter {
            first: None,
            first_seq: None,
            highest: 0,
            cycles: 0,
            last_seq: 0,
            received: 0,
            jitter: 0.0,
            prev: None,
            // One per stream, so kept small: two significant figures up to
            // 10 s is 18 KiB (three figures up to 60 s was 139 KiB, 400 MiB
            // of the harness's memory at 3,000 streams, and a cache miss per
            // packet).
            dev: Histogram::<u64>::new_with_bounds(1, 10_000_000, 2).ok(),
            dropped: 0,
        }
    }

    /// A datagram arrived `at` (seconds on the stream's one clock) and was
    /// read `now`; anything that is not RTP is ignored.
    fn packet(&mut self, pkt: &[u8], at: f64, now: Instant) {
        let mut view = pkt;
        let Ok(h) = rtc_rtp::header::Header::unmarshal(&mut view) else {
            return;
        };
        self.received += 1;
        self.first.get_or_insert(now);
        let base = *self.first_seq.get_or_insert(h.sequence_number);
        if self.received > 1
            && h.sequence_number < self.last_seq
            && self.last_seq - h.sequence_number > 0x8000
        {
            self.cycles += 1 << 16;
        }
        self.last_seq = h.sequence_number;
        self.highest = self
            .highest
            .max(self.cycles + h.sequence_number as i64 - base as i64);
        if let Some((t, ts)) = self.prev {
            // RFC 3550 §6.4.1: D = (Rj − Ri) − (Sj − Si), in timestamp units (8 kHz).
            let arrival = (at - t) * 8000.0;
            let sent = h.timestamp.wrapping_sub(ts) as i32 as f64;
            let d = (arrival - sent).abs();
            self.jitter += (d - self.jitter) / 16.0;
            // The same D per packet, in µs: how far this packet's spacing
            // strayed from the spacing its timestamps promise (a pause
            // between prompts is in both, so it is not counted).
            if let Some(hist) = self.dev.as_mut() {
                let _ = hist.record(((d / 8000.0 * 1e6) as u64).max(1));
            }
        }
        self.prev = Some((at, h.timestamp));
    }

    fn finish(self) -> Measured {
        let mut stats = StreamStats {
            streams: 1,
            received: self.received,
            expected: if self.received == 0 {
                0
            } else {
                self.highest as u64 + 1
            },
            max_jitter_ms: self.jitter / 8.0,
            interarrival_dev_p99_ms: 0.0,
            dropped_by_harness: self.dropped.into(),
            dev_us: None,
        };
        let single = StreamStats {
            dev_us: self.dev,
            ..Default::default()
        };
        stats.merge(&single);
        (stats, self.first)
    }
}

/// A stream handed to the [`Listener`].
struct Watch {
    socket: std::net::UdpSocket,
    stop: Arc<AtomicBool>,
    done: tokio::sync::oneshot::Sender<Measured>,
}

/// How often the [`Listener`] reads what arrived.
const LISTEN_TICK: Duration = Duration::from_millis(2);

/// One thread that receives every stream, as the [`Pacer`] sends them: the
/// sockets sit in one readiness poll (mio), taken every 2 ms; each datagram
/// is read with its kernel arrival time (SO_TIMESTAMPNS) and measured at
/// once. A task per stream with a timeout per packet cost the harness a
/// timer and a task wake-up per packet, and at 1,500 streams the harness,
/// not the server, was what the jitter figures measured. The thread is
/// real-time like the pacer: at normal priority, beside the server's
/// real-time media threads, it was starved at ~1,200 bridged calls and its
/// own sockets dropped 3% of what the server had relayed.
pub(crate) struct Listener {
    add: std::sync::Mutex<std::sync::mpsc::Sender<Watch>>,
}

impl Listener {
    pub(crate) fn start() -> std::io::Result<Arc<Listener>> {
        let poll = mio::Poll::new()?;
        let (add, watches) = std::sync::mpsc::channel::<Watch>();
        std::thread::Builder::new()
            .name("load-listener".into())
            .spawn(move || listen(poll, watches))?;
        Ok(Arc::new(Listener {
            add: std::sync::Mutex::new(add),
        }))
    }

    /// Measures what arrives on (a duplicate of) `socket` until `stop` is
    /// set; the figures come back on the returned channel.
    pub(crate) fn receive(
        &self,
        socket: &std::net::UdpSocket,
        stop: Arc<AtomicBool>,
    ) -> tokio::sync::oneshot::Receiver<Measured> {
        let (done, measured) = tokio::sync::oneshot::channel();
        match socket.try_clone() {
            Ok(socket) => {
                if let Ok(add) = self.add.lock() {
                    let _ = add.send(Watch { socket, stop, done });
                }
            }
            Err(_) => {
                let _ = done.send(Meter::new().finish());
            }
        }
        measured
    }
}

fn listen(mut poll: mio::Poll, watches: std::sync::mpsc::Receiver<Watch>) {
    use nix::sys::socket::{
        recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
    };
    use std::os::fd::AsRawFd;
    let _ = crate::media::engine::make_realtime();
    let mut events = mio::Events::with_capacity(4096);
    let mut streams: std::collections::HashMap<usize, (Watch, Meter, bool)> =
        std::collections::HashMap::new();
    let mut next_token = 0usize;
    let mut buf = [0u8; 2048];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec, u32);
    let epoch = Instant::now();
    let mut last_sweep = std::time::Instant::now();
    let mut tick = std::time::Instant::now();
    loop {
        // Sleep to the next tick, then take every socket that became readable
        // meanwhile in one zero-timeout poll (as the server's media engine
        // does): nobody waits in epoll, so the server's `sendto` does not
        // also pay for waking this thread up, packet by packet, which a
        // real trunk's network card would not cost it. Arrival times come
        // from the kernel, so reading late does not change them.
        tick += LISTEN_TICK;
        let now = std::time::Instant::now();
        if tick > now {
            std::thread::sleep(tick - now);
        } else if now - tick > FRAME {
            tick = now;
        }
        if let Err(e) = poll.poll(&mut events, Some(Duration::ZERO)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return;
            }
        }
        for ev in events.iter() {
            let Some((watch, meter, kernel_stamps)) = streams.get_mut(&ev.token().0) else {
                continue;
            };
            let fd = watch.socket.as_raw_fd();
            // Edge-triggered: read until the socket is empty.
            let mut errors = 0;
            loop {
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let msg = match recvmsg::<SockaddrStorage>(
                    fd,
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                ) {
                    Ok(msg) => msg,
                    Err(nix::errno::Errno::EAGAIN) => break,
                    // An ICMP error reported on the socket: read on, a few times.
                    Err(_) if errors < 8 => {
                        errors += 1;
                        continue;
                    }
                    Err(_) => break,
                };
                let mut stamp = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        match c {
                            ControlMessageOwned::ScmTimestampns(ts) => {
                                stamp = Some(ts.tv_sec() as f64 + ts.tv_nsec() as f64 * 1e-9)
                            }
                            // The socket's own count of datagrams it had no room for.
                            ControlMessageOwned::RxqOvfl(dropped) => meter.dropped = dropped,
                            _ => {}
                        }
                    }
                }
                let n = msg.bytes;
                let now = Instant::now();
                // Seconds on one clock per stream: the kernel's when it stamps.
                let at = match (*kernel_stamps, stamp) {
                    (true, Some(t)) => t,
                    _ => now.duration_since(epoch).as_secs_f64(),
                };
                meter.packet(&buf[..n], at, now);
            }
        }
        // New streams.
        loop {
            match watches.try_recv() {
                Ok(watch) => {
                    // Kernel arrival times: what this thread's own scheduling
                    // does to the reads does not show up as the server's jitter.
                    let stamps =
                        setsockopt(&watch.socket, sockopt::ReceiveTimestampns, &true).is_ok();
                    // And the socket's drop count, so loss the harness caused
                    // by reading too late is told apart from the server's.
                    let _ = setsockopt(&watch.socket, sockopt::RxqOvfl, &1);
                    // Read until empty, never wait in a read.
                    if watch.socket.set_nonblocking(true).is_err() {
                        let _ = watch.done.send(Meter::new().finish());
                        continue;
                    }
                    let token = next_token;
                    next_token += 1;
                    let registered = poll.registry().register(
                        &mut mio::unix::SourceFd(&watch.socket.as_raw_fd()),
                        mio::Token(token),
                        mio::Interest::READABLE,
                    );
                    if registered.is_err() {
                        let _ = watch.done.send(Meter::new().finish());
                        continue;
                    }
                    streams.insert(token, (watch, Meter::new(), stamps));
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    if streams.is_empty() {
                        return;
                    }
                    break;
                }
            }
        }
        // Streams told to stop: their figures go back (once a frame).
        if last_sweep.elapsed() >= FRAME {
            last_sweep = std::time::Instant::now();
            let stopped: Vec<usize> = streams
                .iter()
                .filter(|(_, (w, _, _))| w.stop.load(Ordering::Relaxed))
                .map(|(t, _)| *t)
                .collect();
            for token in stopped {
                if let Some((watch, meter, _)) = streams.remove(&token) {
                    let _ = poll
                        .registry()
                        .deregister(&mut mio::unix::SourceFd(&watch.socket.as_raw_fd()));
                    let _ = watch.done.send(meter.finish());
                }
            }
        }
    }
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
mod tests {
    use super::*;

    fn rtp(seq: u16, timestamp: u32) -> [u8; 172] {
        let mut p = [0xffu8; 172];
        p[0] = 0x80;
        p[1] = 0;
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&timestamp.to_be_bytes());
        p[8..12].copy_from_slice(&7u32.to_be_bytes());
        p
    }

    #[test]
    fn a_meter_counts_loss_across_a_sequence_wrap_and_measures_jitter() {
        let mut m = Meter::new();
        let now = Instant::now();
        // 65,530 … 65,535, 0 … 9, with 65,534 and 3 lost; every packet on
        // time (20 ms, 160 samples) except one 4 ms late.
        let mut at = 0.0;
        let mut sent = 0;
        for i in 0..16u16 {
            let seq = 65_530u16.wrapping_add(i);
            at += 0.020;
            if seq == 65_534 || seq == 3 {
                continue;
            }
            let late = if seq == 6 { 0.004 } else { 0.0 };
            m.packet(&rtp(seq, u32::from(i) * 160), at + late, now);
            sent += 1;
        }
        m.packet(b"not rtp", at, now);
        let (stats, first) = m.finish();
        assert_eq!(first, Some(now));
        assert_eq!(stats.received, sent);
        assert_eq!(stats.expected, 16);
        assert!((stats.loss_percent() - 12.5).abs() < 1e-9);
        // One 4 ms stray, then 4 ms back: RFC 3550's running estimate stays
        // well under the stray itself.
        assert!(
            stats.max_jitter_ms > 0.0 && stats.max_jitter_ms < 1.0,
            "{stats:?}"
        );
        assert!(
            (stats.interarrival_dev_p99_ms() - 4.0).abs() < 0.1,
            "{stats:?}"
        );
    }

    #[tokio::test]
    async fn the_listener_measures_each_stream_until_it_is_stopped() {
        let listener = Listener::start().expect("listener");
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (stop_a, stop_b) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let measured_a = listener.receive(&a, stop_a.clone());
        let measured_b = listener.receive(&b, stop_b.clone());
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        // The listener takes new streams at its next wake-up.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for seq in 0..10u16 {
            let to = if seq % 2 == 0 { &a } else { &b };
            sender
                .send_to(
                    &rtp(seq, u32::from(seq) * 160),
                    to.local_addr().expect("addr"),
                )
                .expect("send");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop_a.store(true, Ordering::Relaxed);
        let (stats_a, first_a) = measured_a.await.expect("a's figures");
        assert_eq!(stats_a.received, 5);
        assert_eq!(
            stats_a.expected, 9,
            "seq 0, 2 … 8: the odd ones count as lost here"
        );
        assert!(first_a.is_some());
        // b is still measured: a packet after a stopped is counted.
        sender
            .send_to(&rtp(11, 11 * 160), b.local_addr().expect("addr"))
            .expect("send");
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop_b.store(true, Ordering::Relaxed);
        let (stats_b, _) = measured_b.await.expect("b's figures");
        assert_eq!(stats_b.received, 6);
    }

    #[tokio::test]
    async fn what_the_harnesss_own_socket_had_no_room_for_is_counted_apart() {
        use nix::sys::socket::{setsockopt, sockopt};
        let listener = Listener::start().expect("listener");
        let slow = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        // The smallest receive buffer the kernel allows: a few datagrams.
        setsockopt(&slow, sockopt::RcvBuf, &1).expect("SO_RCVBUF");
        let to = slow.local_addr().expect("addr");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        // A burst before anyone reads: most of it has no room.
        let burst = 200u16;
        for seq in 0..burst {
            sender
                .send_to(&rtp(seq, u32::from(seq) * 160), to)
                .expect("send");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let measured = listener.receive(&slow, stop.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        // One more, read after the listener asked for the drop count.
        sender
            .send_to(&rtp(burst, u32::from(burst) * 160), to)
            .expect("send");
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.store(true, Ordering::Relaxed);
        let (stats, _) = measured.await.expect("figures");
        assert!(stats.dropped_by_harness > 0, "{stats:?}");
        assert_eq!(
            stats.received + stats.dropped_by_harness,
            u64::from(burst) + 1,
            "every datagram was either read or counted as dropped here: {stats:?}"
        );
        assert_eq!(stats.expected, u64::from(burst) + 1);
    }

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

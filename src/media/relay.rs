//! The RTP relay of one bridged call: two sockets, packets across, both ways.
//!
//! Room: one call's media anchor. The sans-IO part is [`Rewriter`]: it gives
//! the packets leaving one side a single SSRC and continuous sequence numbers
//! and timestamps, even when the far side's stream changes (another agent, a
//! re-INVITE). The edge is [`spawn`]: a task owning the two sockets, latching
//! each side to the first source that sends to it (symmetric RTP, for phones
//! behind NAT), and reporting a side that falls silent for `rtp_timeout`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtc_shared::marshal::Unmarshal;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ports::PortPool;

/// Rewrites SSRC, sequence number and timestamp of packets leaving one side.
#[derive(Debug, Clone)]
pub struct Rewriter {
    out_ssrc: u32,
    in_ssrc: Option<u32>,
    seq_offset: u16,
    ts_offset: u32,
    last_out_seq: u16,
    last_out_ts: u32,
}

impl Rewriter {
    /// A rewriter that sends with `out_ssrc`.
    pub fn new(out_ssrc: u32) -> Rewriter {
        Rewriter {
            out_ssrc,
            in_ssrc: None,
            seq_offset: 0,
            ts_offset: 0,
            last_out_seq: rand::random(),
            last_out_ts: rand::random(),
        }
    }

    /// Where this side's outgoing numbering stands (for the next sender).
    pub fn numbering(&self) -> crate::media::player::Numbering {
        crate::media::player::Numbering {
            ssrc: self.out_ssrc,
            next_seq: self.last_out_seq.wrapping_add(1),
            next_ts: self.last_out_ts.wrapping_add(160),
        }
    }

    /// A rewriter that continues a stream we already sent (the IVR player's),
    /// so the caller's phone sees one stream across the hand-over.
    pub fn continuing(numbering: crate::media::player::Numbering) -> Rewriter {
        Rewriter {
            out_ssrc: numbering.ssrc,
            in_ssrc: None,
            seq_offset: 0,
            ts_offset: 0,
            last_out_seq: numbering.next_seq.wrapping_sub(1),
            last_out_ts: numbering.next_ts.wrapping_sub(160),
        }
    }

    /// Rewrites `pkt` in place. Returns `false` (leave the packet alone and
    /// drop it) when it is not a well-formed RTP packet.
    pub fn rewrite(&mut self, pkt: &mut [u8]) -> bool {
        let mut view: &[u8] = pkt;
        if rtc_rtp::header::Header::unmarshal(&mut view).is_err() || pkt[0] >> 6 != 2 {
            return false;
        }
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let ts = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        if self.in_ssrc != Some(ssrc) {
            // A new source: continue our numbering from where we left off.
            self.in_ssrc = Some(ssrc);
            self.seq_offset = self.last_out_seq.wrapping_add(1).wrapping_sub(seq);
            self.ts_offset = self.last_out_ts.wrapping_add(160).wrapping_sub(ts);
            pkt[1] |= 0x80; // marker: a new talk spurt for the receiver's jitter buffer
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = ts.wrapping_add(self.ts_offset);
        // Only move "last" forward (reordered packets keep their place).
        if out_seq.wrapping_sub(self.last_out_seq) < 0x8000 {
            self.last_out_seq = out_seq;
            self.last_out_ts = out_ts;
        }
        pkt[2..4].copy_from_slice(&out_seq.to_be_bytes());
        pkt[4..8].copy_from_slice(&out_ts.to_be_bytes());
        pkt[8..12].copy_from_slice(&self.out_ssrc.to_be_bytes());
        true
    }
}

/// Which side of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The caller (trunk) side.
    A,
    /// The agent side.
    B,
}

/// Commands to a running relay.
#[derive(Debug)]
pub enum RelayCmd {
    /// Where a side's RTP should go (from its SDP); resets latching.
    Remote(Side, SocketAddr),
    /// Start watching for silence (after answer) or stop (on hold).
    Watch(bool),
    /// Record both sides from now on (ended when the relay ends).
    Record(Box<super::recording::Recorder>),
    /// Finish the recording being written (the call goes on unrecorded).
    StopRecording,
    /// Stop relaying and hand both sockets back (a transfer: the caller goes
    /// back to the media engine while the next far leg is found). The ports
    /// stay taken: their owner now is whoever receives them.
    Release(tokio::sync::oneshot::Sender<Released>),
    /// A supervisor joins (listen, whisper or barge); replaces one already there.
    Monitor(Box<Supervisor>),
    /// Report the caller's (side A's) RFC 4733 keys of payload type `pt` to
    /// `to` (they are still relayed): a key sequence that hands the caller
    /// back from a backend. Replaces an earlier watch.
    Keys {
        /// The telephone-event payload type the caller sends.
        pt: u8,
        /// Where each new key goes (dropped when full).
        to: mpsc::Sender<char>,
    },
}

/// A supervisor's phone joining the call's media.
#[derive(Debug)]
pub struct Supervisor {
    /// Our socket facing the supervisor's phone (bound from the pool; the
    /// relay returns its port when the supervisor leaves or the call ends).
    pub socket: std::net::UdpSocket,
    /// Where the supervisor's SDP said to send.
    pub remote: SocketAddr,
    /// What they may do, and the call's codec.
    pub mixer: super::monitor::Mixer,
    /// Dropped by the supervisor's call when the supervisor hangs up.
    pub stop: tokio::sync::oneshot::Receiver<()>,
    /// Dropped here when the monitoring ends (the call ended or moved on).
    pub ended: tokio::sync::oneshot::Sender<()>,
}

/// A supervisor being served by a running relay.
struct Listening {
    socket: UdpSocket,
    remote: SocketAddr,
    mixer: super::monitor::Mixer,
    stop: tokio::sync::oneshot::Receiver<()>,
    _ended: tokio::sync::oneshot::Sender<()>,
}

enum FromSupervisor {
    Packet(std::io::Result<(usize, SocketAddr)>),
    Left,
}

/// What a released relay hands back.
#[derive(Debug)]
pub struct Released {
    /// Our socket facing the caller.
    pub a: std::net::UdpSocket,
    /// Our socket facing the far leg.
    pub b: std::net::UdpSocket,
    /// Where the caller's RTP came from (or was to go).
    pub a_remote: Option<SocketAddr>,
    /// What the caller was last sent, so whoever speaks to them next
    /// continues the same stream.
    pub numbering: super::player::Numbering,
}

/// Packet counters, readable while the relay runs.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Packets relayed from A to B.
    pub a_to_b: AtomicU64,
    /// Packets relayed from B to A.
    pub b_to_a: AtomicU64,
    /// Packets dropped (not RTP, wrong source, or no destination yet).
    pub dropped: AtomicU64,
    /// How the caller's (side A's) packets arrive.
    pub a_quality: super::quality::QualityCell,
    /// How the far leg's (side B's) packets arrive.
    pub b_quality: super::quality::QualityCell,
}

/// A running relay: its ports, a command channel, its counters.
#[derive(Debug)]
pub struct Relay {
    /// Our port facing the caller.
    pub a_addr: SocketAddr,
    /// Our port facing the agent.
    pub b_addr: SocketAddr,
    /// Commands.
    pub cmd: mpsc::Sender<RelayCmd>,
    /// Counters.
    pub stats: Arc<RelayStats>,
}

struct SideState {
    socket: UdpSocket,
    remote: Option<SocketAddr>,
    latched: bool,
    last_rx: Instant,
    /// Rewrites what we send out of this side.
    rewriter: Rewriter,
    /// How this side's packets arrive.
    quality: super::quality::StreamQuality,
}

impl SideState {
    /// Accepts a packet from `src`: latch on the first one, then only that source.
    fn accept(&mut self, src: SocketAddr, now: Instant) -> bool {
        if !self.latched {
            self.remote = Some(src);
            self.latched = true;
        }
        if self.remote == Some(src) {
            self.last_rx = now;
            true
        } else {
            false
        }
    }
}

/// Binds two ports and starts the relay task. `silent` receives the side that
/// stopped sending for `timeout` while watching.
pub fn spawn(pool: Arc<PortPool>, timeout: Duration, silent: mpsc::Sender<Side>) -> Option<Relay> {
    let a = pool.bind()?;
    let Some(b) = pool.bind() else {
        if let Ok(addr) = a.local_addr() {
            pool.release(addr.port());
        }
        return None;
    };
    spawn_with(pool, a, b, None, timeout, silent)
}

/// Starts the relay task on two sockets already bound from `pool` (they go
/// back to it when the relay ends). `continuing` carries on side A's outgoing
/// numbering from whoever sent to the caller before.
pub fn spawn_with(
    pool: Arc<PortPool>,
    a: std::net::UdpSocket,
    b: std::net::UdpSocket,
    continuing: Option<crate::media::player::Numbering>,
    timeout: Duration,
    silent: mpsc::Sender<Side>,
) -> Option<Relay> {
    let (Ok(a_addr), Ok(b_addr)) = (a.local_addr(), b.local_addr()) else {
        for s in [&a, &b] {
            if let Ok(addr) = s.local_addr() {
                pool.release(addr.port());
            }
        }
        return None;
    };
    let make = |s: std::net::UdpSocket| -> Option<UdpSocket> {
        s.set_nonblocking(true).ok()?;
        UdpSocket::from_std(s).ok()
    };
    let (Some(a), Some(b)) = (make(a), make(b)) else {
        pool.release(a_addr.port());
        pool.release(b_addr.port());
        return None;
    };
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let stats = Arc::new(RelayStats::default());
    let now = Instant::now();
    let side = move |socket, rewriter| SideState {
        socket,
        remote: None,
        latched: false,
        last_rx: now,
        rewriter,
        quality: Default::default(),
    };
    let a_rewriter = continuing.map_or_else(|| Rewriter::new(rand::random()), Rewriter::continuing);
    let task_stats = stats.clone();
    tokio::spawn(async move {
        let released = run(
            side(a, a_rewriter),
            side(b, Rewriter::new(rand::random())),
            cmd_rx,
            timeout,
            silent,
            &task_stats,
            &pool,
        )
        .await;
        if !released {
            pool.release(a_addr.port());
            pool.release(b_addr.port());
        }
    });
    Some(Relay {
        a_addr,
        b_addr,
        cmd: cmd_tx,
        stats,
    })
}

/// Runs until the call drops its handle (`false`) or asks for the sockets
/// back (`true`: they were handed over, their ports are not ours to free).
async fn run(
    mut a: SideState,
    mut b: SideState,
    mut cmd: mpsc::Receiver<RelayCmd>,
    timeout: Duration,
    silent: mpsc::Sender<Side>,
    stats: &RelayStats,
    pool: &PortPool,
) -> bool {
    let mut buf_a = vec![0u8; 2048];
    let mut buf_b = vec![0u8; 2048];
    let mut buf_s = vec![0u8; 2048];
    let mut supervisor: Option<Listening> = None;
    // Whatever way the relay ends, the supervisor's port goes back.
    struct PortBack<'a>(&'a PortPool, Option<u16>);
    impl Drop for PortBack<'_> {
        fn drop(&mut self) {
            if let Some(port) = self.1.take() {
                self.0.release(port);
            }
        }
    }
    let mut port_back = PortBack(pool, None);
    let mut watching = false;
    let mut recorder: Option<Box<super::recording::Recorder>> = None;
    let mut keys: Option<(u8, super::dtmf::EventReceiver, mpsc::Sender<char>)> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(timeout));
    loop {
        let from_supervisor = async {
            match supervisor.as_mut() {
                Some(s) => tokio::select! {
                    r = s.socket.recv_from(&mut buf_s) => FromSupervisor::Packet(r),
                    _ = &mut s.stop => FromSupervisor::Left,
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = a.socket.recv_from(&mut buf_a) => {
                let Ok((n, src)) = r else { continue };
                let pkt = &mut buf_a[..n];
                if let Some((pt, receiver, to)) = keys.as_mut() {
                    let key = match super::engine::rtp_payload(pkt) {
                        Some((p, ts, payload)) if p == *pt => receiver.handle(ts, payload),
                        _ => None,
                    };
                    if let Some(k) = key {
                        let _ = to.try_send(k);
                    }
                }
                let heard = supervised(&mut supervisor, Side::A, pkt, &recorder).await;
                if forward(&mut a, &mut b, pkt, src, &stats.a_to_b, &stats.dropped, &stats.a_quality).await {
                    record(&mut recorder, Side::A, heard.as_deref().unwrap_or(pkt));
                }
            }
            r = b.socket.recv_from(&mut buf_b) => {
                let Ok((n, src)) = r else { continue };
                let pkt = &mut buf_b[..n];
                let heard = supervised(&mut supervisor, Side::B, pkt, &recorder).await;
                if forward(&mut b, &mut a, pkt, src, &stats.b_to_a, &stats.dropped, &stats.b_quality).await {
                    record(&mut recorder, Side::B, heard.as_deref().unwrap_or(pkt));
                }
            }
            s = from_supervisor => match s {
                FromSupervisor::Packet(Ok((n, src))) => {
                    let Some(sup) = supervisor.as_mut() else { continue };
                    if src.ip() != sup.remote.ip() {
                        continue;
                    }
                    for (side, mut p) in sup.mixer.from_supervisor(&buf_s[..n]) {
                        let to = if side == Side::A { &mut a } else { &mut b };
                        if let Some(dest) = to.remote {
                            if to.rewriter.rewrite(&mut p) {
                                let _ = to.socket.send_to(&p, dest).await;
                            }
                        }
                    }
                }
                FromSupervisor::Packet(Err(_)) => {}
                FromSupervisor::Left => {
                    tracing::info!("supervisor left");
                    supervisor = None;
                    if let Some(port) = port_back.1.take() {
                        pool.release(port);
                    }
                }
            },
            c = cmd.recv() => match c {
                // The call dropped its handle: the call is over.
                None => {
                    close_recording(&mut recorder);
                    return false;
                }
                Some(RelayCmd::Release(reply)) => {
                    close_recording(&mut recorder);
                    let numbering = a.rewriter.numbering();
                    let a_remote = a.remote;
                    let (Ok(a_std), Ok(b_std)) = (a.socket.into_std(), b.socket.into_std()) else {
                        // Sockets that cannot be converted are closed here: free their ports.
                        return false;
                    };
                    let released = Released { a: a_std, b: b_std, a_remote, numbering };
                    if let Err(back) = reply.send(released) {
                        // Nobody took them: they close now, and their ports go back.
                        drop(back);
                        return false;
                    }
                    return true;
                }
                Some(RelayCmd::Record(r)) => {
                    close_recording(&mut recorder);
                    recorder = Some(r);
                }
                Some(RelayCmd::StopRecording) => close_recording(&mut recorder),
                Some(RelayCmd::Keys { pt, to }) => keys = Some((pt, Default::default(), to)),
                Some(RelayCmd::Monitor(sup)) => {
                    let Supervisor { socket, remote, mixer, stop, ended } = *sup;
                    let port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
                    let tokio_socket = socket
                        .set_nonblocking(true)
                        .and_then(|()| UdpSocket::from_std(socket));
                    // A supervisor already there leaves (its port goes back).
                    supervisor = None;
                    if let Some(old) = port_back.1.take() {
                        pool.release(old);
                    }
                    match tokio_socket {
                        Ok(socket) => {
                            tracing::info!(mode = mixer.mode().name(), %remote, "supervisor joined");
                            port_back.1 = Some(port);
                            supervisor = Some(Listening { socket, remote, mixer, stop, _ended: ended });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "supervisor socket unusable");
                            pool.release(port);
                        }
                    }
                }
                Some(RelayCmd::Remote(which, addr)) => {
                    let s = if which == Side::A { &mut a } else { &mut b };
                    s.remote = Some(addr);
                    s.latched = false;
                }
                Some(RelayCmd::Watch(on)) => {
                    watching = on;
                    let now = Instant::now();
                    a.last_rx = now;
                    b.last_rx = now;
                }
            },
            _ = tick.tick() => {
                if let Some(r) = recorder.as_mut() {
                    if let Err(e) = r.checkpoint() {
                        tracing::error!(path = %r.path().display(), error = %e, "recording stopped");
                        recorder = None;
                    }
                }
                if watching {
                    let now = Instant::now();
                    for (which, s) in [(Side::A, &a), (Side::B, &b)] {
                        if now.duration_since(s.last_rx) >= timeout {
                            let _ = silent.try_send(which);
                            watching = false;
                        }
                    }
                }
            }
        }
    }
}

/// Hands a packet about to be relayed to the supervisor's mixer (which may
/// mix the supervisor into it) and sends the supervisor what they hear now.
/// Returns the packet as it came, for the recording, when the mixer changed it.
async fn supervised(
    supervisor: &mut Option<Listening>,
    from: Side,
    pkt: &mut [u8],
    recorder: &Option<Box<super::recording::Recorder>>,
) -> Option<Vec<u8>> {
    let sup = supervisor.as_mut()?;
    let original = recorder.as_ref().map(|_| pkt.to_vec());
    for p in sup.mixer.relayed(from, pkt) {
        let _ = sup.socket.send_to(&p, sup.remote).await;
    }
    original
}

/// Finishes the recording, if one runs.
fn close_recording(recorder: &mut Option<Box<super::recording::Recorder>>) {
    if let Some(r) = recorder.take() {
        // Closing syncs the file to disk (fsync): never on a runtime thread,
        // where at 100 calls a second it held up every task behind it (the
        // timer lag that made overload control shed calls with recording
        // on). One closer thread takes them all, in order: a pool would
        // grow a thread (and its allocator heap) per concurrent fsync.
        if let Err(back) = closer().send(r) {
            finish_recording(*back.0);
        }
    }
}

/// The recordings closer: one thread, started with the first recording.
fn closer() -> &'static std::sync::mpsc::Sender<Box<super::recording::Recorder>> {
    static CLOSER: std::sync::OnceLock<std::sync::mpsc::Sender<Box<super::recording::Recorder>>> =
        std::sync::OnceLock::new();
    CLOSER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Box<super::recording::Recorder>>();
        let spawned = std::thread::Builder::new()
            .name("recordings".into())
            .spawn(move || {
                for r in rx {
                    finish_recording(*r);
                }
            });
        if let Err(e) = spawned {
            // Without the thread the receiver is gone: sends fail and each
            // recording is closed where it ends, as before.
            tracing::error!(error = %e, "no recordings closer thread");
        }
        tx
    })
}

/// Writes what is pending, the final sizes, and syncs the file.
fn finish_recording(r: super::recording::Recorder) {
    let path = r.path().display().to_string();
    match r.finish() {
        Ok(secs) => tracing::info!(path, seconds = secs, "recording closed"),
        Err(e) => tracing::error!(path, error = %e, "recording could not be closed"),
    }
}

/// Feeds a relayed packet to the recorder; a write error ends the recording.
fn record(recorder: &mut Option<Box<super::recording::Recorder>>, side: Side, pkt: &[u8]) {
    if let Some(r) = recorder.as_mut() {
        if let Err(e) = r.push(side, pkt) {
            tracing::error!(path = %r.path().display(), error = %e, "recording stopped");
            *recorder = None;
        }
    }
}

/// Relays one packet; `true` when it was a well-formed packet from the
/// side's source (relayed, or at least worth recording).
async fn forward(
    from: &mut SideState,
    to: &mut SideState,
    pkt: &mut [u8],
    src: SocketAddr,
    counter: &AtomicU64,
    dropped: &AtomicU64,
    quality: &super::quality::QualityCell,
) -> bool {
    let now = Instant::now();
    if !from.accept(src, now) {
        dropped.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    // Measured as it arrived, before it is renumbered.
    if pkt.len() >= 12 && pkt[0] >> 6 == 2 {
        from.quality.packet(
            pkt[1] & 0x7f,
            u16::from_be_bytes([pkt[2], pkt[3]]),
            u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]),
            u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]),
            now.into_std(),
        );
        quality.store(&from.quality.summary());
    }
    let Some(dest) = to.remote else {
        dropped.fetch_add(1, Ordering::Relaxed);
        return true;
    };
    if !to.rewriter.rewrite(pkt) {
        dropped.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    if to.socket.send_to(pkt, dest).await.is_ok() {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_shared::marshal::Marshal;

    fn packet(ssrc: u32, seq: u16, ts: u32) -> Vec<u8> {
        let p = rtc_rtp::packet::Packet {
            header: rtc_rtp::header::Header {
                version: 2,
                payload_type: 0,
                sequence_number: seq,
                timestamp: ts,
                ssrc,
                ..Default::default()
            },
            payload: bytes::Bytes::from(vec![0xffu8; 160]),
        };
        p.marshal().expect("marshal").to_vec()
    }

    fn fields(pkt: &[u8]) -> (u32, u16, u32) {
        let mut view = pkt;
        let h = rtc_rtp::header::Header::unmarshal(&mut view).expect("valid RTP");
        (h.ssrc, h.sequence_number, h.timestamp)
    }

    #[test]
    fn ssrc_switch_keeps_sequence_and_timestamp_continuous() {
        let mut r = Rewriter::new(0xabcd);
        let mut out = Vec::new();
        for i in 0..3u16 {
            let mut p = packet(1, 100 + i, 1000 + 160 * i as u32);
            assert!(r.rewrite(&mut p));
            out.push(fields(&p));
        }
        // The far side changes stream (new SSRC, unrelated numbers).
        let mut p = packet(2, 7, 555);
        assert!(r.rewrite(&mut p));
        out.push(fields(&p));
        assert!(out.iter().all(|(s, _, _)| *s == 0xabcd));
        for w in out.windows(2) {
            assert_eq!(w[1].1, w[0].1.wrapping_add(1));
            assert_eq!(w[1].2, w[0].2.wrapping_add(160));
        }
    }

    #[test]
    fn garbage_is_refused() {
        let mut r = Rewriter::new(1);
        assert!(!r.rewrite(&mut [0u8; 5]));
        let mut v1 = packet(1, 1, 1);
        v1[0] = (v1[0] & 0x3f) | 0x40; // version 1
        assert!(!r.rewrite(&mut v1));
    }
}

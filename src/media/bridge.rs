//! A bridged call's RTP relay, living in a media engine thread.
//!
//! Room: the sound room's machinery, beside the IVR streams. A [`Bridge`] owns
//! the two RTP sockets of one bridged call (and a supervisor's, when one
//! listens in); the engine thread that holds it reads them after each 2 ms
//! sleep, in the same readiness poll as its prompt streams, and forwards what
//! came straight away: one thread serves a thousand calls with a few hundred
//! wake-ups a second, where a task per call woke once per packet.
//!
//! It touches its own sockets, the port pool (ports go back when it ends), its
//! recording, and the call's channels (`try_send` only: an engine thread never
//! waits on a call). The call drives it with [`RelayCmd`]s on the channel of
//! its [`Relay`] handle; the engine reads each bridge's commands once per
//! 20 ms, in the bridge's own slot, and the bridge ends when the call drops
//! the handle.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use tokio::sync::mpsc;

use super::dtmf::EventReceiver;
use super::monitor::Mixer;
use super::ports::PortPool;
use super::quality::{QualityCell, StreamQuality};
use super::recording::Recorder;
use super::relay::{close_recording, RelayCmd, RelayStats, Released, Rewriter, Side, Supervisor};

/// Tokens of bridge sockets have this bit; the rest is `id << 2 | part`.
pub(super) const BRIDGE_BIT: usize = 1 << 62;
/// Packets read from one socket per readiness event: a burst larger than
/// this waits for the socket's next packet (edge-triggered readiness).
const READ_BURST: usize = 64;

/// Which socket of a bridge a token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    Caller,
    Far,
    Supervisor,
}

/// The token of `part` of bridge `id`.
pub(super) fn token(id: u64, part: Part) -> Token {
    let p = match part {
        Part::Caller => 0,
        Part::Far => 1,
        Part::Supervisor => 2,
    };
    Token(BRIDGE_BIT | ((id as usize) << 2) | p)
}

/// The bridge and part a token names (`None` for a stream's token).
pub(super) fn part_of(token: Token) -> Option<(u64, Part)> {
    if token.0 & BRIDGE_BIT == 0 {
        return None;
    }
    let id = ((token.0 & !BRIDGE_BIT) >> 2) as u64;
    let part = match token.0 & 3 {
        0 => Part::Caller,
        1 => Part::Far,
        2 => Part::Supervisor,
        _ => return None,
    };
    Some((id, part))
}

struct Leg {
    socket: UdpSocket,
    port: u16,
    remote: Option<SocketAddr>,
    latched: bool,
    last_rx: Instant,
    /// Rewrites what we send out of this side.
    rewriter: Rewriter,
    /// How this side's packets arrive.
    quality: StreamQuality,
}

impl Leg {
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

/// A supervisor being served.
struct Listening {
    socket: UdpSocket,
    port: u16,
    remote: SocketAddr,
    mixer: Mixer,
    stop: tokio::sync::oneshot::Receiver<()>,
    _ended: tokio::sync::oneshot::Sender<()>,
}

/// One bridged call's media, owned by an engine thread.
pub(super) struct Bridge {
    a: Leg,
    b: Leg,
    cmd: crate::boxed::Receiver<RelayCmd>,
    timeout: Duration,
    silent: mpsc::Sender<Side>,
    stats: Arc<RelayStats>,
    pool: Arc<PortPool>,
    supervisor: Option<Listening>,
    watching: bool,
    recorder: Option<Box<Recorder>>,
    keys: Option<(u8, EventReceiver, mpsc::Sender<char>)>,
    next_checkpoint: Instant,
    /// Which of the engine's slots this bridge's housekeeping runs in.
    pub(super) slot: u32,
}

/// What ends a bridge.
pub(super) enum End {
    /// The call dropped its handle: the call is over.
    Over,
    /// The call asked for the sockets back.
    Release(tokio::sync::oneshot::Sender<Released>),
}

impl Bridge {
    /// A bridge over two sockets bound from `pool`; `None` (ports given
    /// back) if they cannot be made non-blocking.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        pool: Arc<PortPool>,
        a: UdpSocket,
        b: UdpSocket,
        continuing: Option<super::player::Numbering>,
        timeout: Duration,
        silent: mpsc::Sender<Side>,
        cmd: crate::boxed::Receiver<RelayCmd>,
        stats: Arc<RelayStats>,
    ) -> Option<Bridge> {
        let port = |s: &UdpSocket| s.local_addr().map(|a| a.port()).unwrap_or(0);
        let (a_port, b_port) = (port(&a), port(&b));
        if a.set_nonblocking(true).is_err() || b.set_nonblocking(true).is_err() {
            pool.release(a_port);
            pool.release(b_port);
            return None;
        }
        let now = Instant::now();
        let leg = |socket, port, rewriter| Leg {
            socket,
            port,
            remote: None,
            latched: false,
            last_rx: now,
            rewriter,
            quality: Default::default(),
        };
        let a_rewriter =
            continuing.map_or_else(|| Rewriter::new(rand::random()), Rewriter::continuing);
        Some(Bridge {
            a: leg(a, a_port, a_rewriter),
            b: leg(b, b_port, Rewriter::new(rand::random())),
            cmd,
            timeout,
            silent,
            stats,
            pool,
            supervisor: None,
            watching: false,
            recorder: None,
            keys: None,
            next_checkpoint: now + Duration::from_secs(1),
            slot: 0,
        })
    }

    /// Registers both sockets with the engine thread's poll.
    pub(super) fn register(&self, registry: &Registry, id: u64) -> std::io::Result<()> {
        registry.register(
            &mut SourceFd(&self.a.socket.as_raw_fd()),
            token(id, Part::Caller),
            Interest::READABLE,
        )?;
        registry.register(
            &mut SourceFd(&self.b.socket.as_raw_fd()),
            token(id, Part::Far),
            Interest::READABLE,
        )
    }

    /// Reads what `part`'s socket holds and forwards it.
    pub(super) fn receive(&mut self, part: Part, buf: &mut [u8]) {
        for _ in 0..READ_BURST {
            let socket = match part {
                Part::Caller => &self.a.socket,
                Part::Far => &self.b.socket,
                Part::Supervisor => match &self.supervisor {
                    Some(s) => &s.socket,
                    None => return,
                },
            };
            let (n, src) = match socket.recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                // An ICMP error for an earlier send, or the like: read on.
                Err(_) => continue,
            };
            let pkt = &mut buf[..n];
            match part {
                Part::Caller => self.relay(Side::A, pkt, src),
                Part::Far => self.relay(Side::B, pkt, src),
                Part::Supervisor => self.supervisor_spoke(pkt, src),
            }
        }
    }

    /// A packet from side `from`: keys watched, the supervisor served, then
    /// relayed to the other side and recorded.
    fn relay(&mut self, from: Side, pkt: &mut [u8], src: SocketAddr) {
        if from == Side::A {
            if let Some((pt, receiver, to)) = self.keys.as_mut() {
                let key = match super::engine::rtp_payload(pkt) {
                    Some((p, ts, payload)) if p == *pt => receiver.handle(ts, payload),
                    _ => None,
                };
                if let Some(k) = key {
                    let _ = to.try_send(k);
                }
            }
        }
        // What the recording hears is the packet as it came, before a
        // supervisor's whisper is mixed into it.
        let heard = match self.supervisor.as_mut() {
            Some(sup) => {
                let original = self.recorder.as_ref().map(|_| pkt.to_vec());
                for p in sup.mixer.relayed(from, pkt) {
                    let _ = sup.socket.send_to(&p, sup.remote);
                }
                original
            }
            None => None,
        };
        let stats = &*self.stats;
        let (leg_from, leg_to, counter, quality) = match from {
            Side::A => (&mut self.a, &mut self.b, &stats.a_to_b, &stats.a_quality),
            Side::B => (&mut self.b, &mut self.a, &stats.b_to_a, &stats.b_quality),
        };
        if forward(leg_from, leg_to, pkt, src, counter, &stats.dropped, quality) {
            if let Some(r) = self.recorder.as_mut() {
                if let Err(e) = r.push(from, heard.as_deref().unwrap_or(pkt)) {
                    tracing::error!(path = %r.path().display(), error = %e, "recording stopped");
                    self.recorder = None;
                }
            }
        }
    }

    /// A packet from the supervisor's phone: mixed into what a side hears
    /// (whisper, barge), or sent alone to a side whose partner is silent.
    fn supervisor_spoke(&mut self, pkt: &[u8], src: SocketAddr) {
        let Some(sup) = self.supervisor.as_mut() else {
            return;
        };
        if src.ip() != sup.remote.ip() {
            return;
        }
        for (side, mut p) in sup.mixer.from_supervisor(pkt) {
            let to = if side == Side::A {
                &mut self.a
            } else {
                &mut self.b
            };
            if let Some(dest) = to.remote {
                if to.rewriter.rewrite(&mut p) {
                    let _ = to.socket.send_to(&p, dest);
                }
            }
        }
    }

    /// The bridge's housekeeping, once per 20 ms: the call's commands, a
    /// supervisor leaving, silence, the recording's checkpoint. Returns what
    /// ends the bridge, if something does.
    pub(super) fn housekeeping(
        &mut self,
        registry: &Registry,
        id: u64,
        now: Instant,
    ) -> Option<End> {
        loop {
            let cmd = match self.cmd.try_recv() {
                Ok(cmd) => cmd,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return Some(End::Over),
            };
            match cmd {
                RelayCmd::Release(reply) => return Some(End::Release(reply)),
                RelayCmd::Record(r) => {
                    close_recording(&mut self.recorder);
                    self.recorder = Some(r);
                }
                RelayCmd::StopRecording => close_recording(&mut self.recorder),
                RelayCmd::Keys { pt, to } => self.keys = Some((pt, Default::default(), to)),
                RelayCmd::Monitor(sup) => self.monitor(*sup, registry, id),
                RelayCmd::Remote(which, addr) => {
                    let leg = if which == Side::A {
                        &mut self.a
                    } else {
                        &mut self.b
                    };
                    leg.remote = Some(addr);
                    leg.latched = false;
                }
                RelayCmd::Watch(on) => {
                    self.watching = on;
                    self.a.last_rx = now;
                    self.b.last_rx = now;
                }
            }
        }
        if let Some(sup) = self.supervisor.as_mut() {
            if let Err(tokio::sync::oneshot::error::TryRecvError::Closed) = sup.stop.try_recv() {
                tracing::info!("supervisor left");
                self.drop_supervisor(registry);
            }
        }
        if self.watching {
            for (which, leg) in [(Side::A, &self.a), (Side::B, &self.b)] {
                if now.duration_since(leg.last_rx) >= self.timeout {
                    let _ = self.silent.try_send(which);
                    self.watching = false;
                }
            }
        }
        if now >= self.next_checkpoint {
            self.next_checkpoint = now + Duration::from_secs(1);
            if let Some(r) = self.recorder.as_mut() {
                if let Err(e) = r.checkpoint() {
                    tracing::error!(path = %r.path().display(), error = %e, "recording stopped");
                    self.recorder = None;
                }
            }
        }
        None
    }

    /// A supervisor joins; one already there leaves (its port goes back).
    fn monitor(&mut self, sup: Supervisor, registry: &Registry, id: u64) {
        let Supervisor {
            socket,
            remote,
            mixer,
            stop,
            ended,
        } = sup;
        self.drop_supervisor(registry);
        let port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
        let ready = socket.set_nonblocking(true).and_then(|()| {
            registry.register(
                &mut SourceFd(&socket.as_raw_fd()),
                token(id, Part::Supervisor),
                Interest::READABLE,
            )
        });
        match ready {
            Ok(()) => {
                tracing::info!(mode = mixer.mode().name(), %remote, "supervisor joined");
                self.supervisor = Some(Listening {
                    socket,
                    port,
                    remote,
                    mixer,
                    stop,
                    _ended: ended,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "supervisor socket unusable");
                self.pool.release(port);
            }
        }
    }

    fn drop_supervisor(&mut self, registry: &Registry) {
        if let Some(old) = self.supervisor.take() {
            let _ = registry.deregister(&mut SourceFd(&old.socket.as_raw_fd()));
            drop(old.socket);
            self.pool.release(old.port);
        }
    }

    /// Ends the bridge: its sockets leave the poll, its recording closes, and
    /// its ports go back to the pool, unless the call takes the caller's and
    /// the far leg's sockets back (a transfer).
    pub(super) fn end(mut self, registry: &Registry, end: End) {
        self.drop_supervisor(registry);
        close_recording(&mut self.recorder);
        for leg in [&self.a, &self.b] {
            let _ = registry.deregister(&mut SourceFd(&leg.socket.as_raw_fd()));
        }
        let (a_port, b_port) = (self.a.port, self.b.port);
        if let End::Release(reply) = end {
            let released = Released {
                numbering: self.a.rewriter.numbering(),
                a_remote: self.a.remote,
                a: self.a.socket,
                b: self.b.socket,
            };
            if reply.send(released).is_ok() {
                return;
            }
            // Nobody took them: they closed with the refused message.
        }
        self.pool.release(a_port);
        self.pool.release(b_port);
    }
}

/// Relays one packet; `true` when it was a well-formed packet from the
/// side's source (relayed, or at least worth recording).
fn forward(
    from: &mut Leg,
    to: &mut Leg,
    pkt: &mut [u8],
    src: SocketAddr,
    counter: &AtomicU64,
    dropped: &AtomicU64,
    quality: &QualityCell,
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
            now,
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
    if to.socket.send_to(pkt, dest).is_ok() {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_bridge_and_part_and_never_a_stream() {
        for id in [1u64, 2, 77, (1 << 40) + 3] {
            for part in [Part::Caller, Part::Far, Part::Supervisor] {
                assert_eq!(part_of(token(id, part)), Some((id, part)));
            }
        }
        assert_eq!(part_of(Token(5)), None);
        assert_eq!(part_of(Token(BRIDGE_BIT | 3)), None);
    }
}

//! The media engine: a few threads that play prompts to many callers and hear
//! their keys, on one clock per thread.
//!
//! Room: the sound room's machinery. Each engine thread owns a share of the
//! IVR streams (a caller's RTP socket, a [`Player`], DTMF receivers). Its
//! clock ticks every 2 ms: it sleeps to the tick, takes every socket that
//! became readable meanwhile from one readiness poll (mio, edge-triggered),
//! sends, and drains them; so its wake-ups do not grow with the packet rate.
//! Each stream belongs to one of the
//! ten slots of a 20 ms period, and at a slot's deadline one frame goes out
//! for every playing stream of that slot in a single pass (one clock for all
//! streams, not a timer each; short, even passes instead of one burst per
//! 20 ms). It records how late each pass started. Keys come from RFC 4733
//! telephone-events (the payload type the caller's SDP chose) or, when the
//! caller offered none, from in-band tones (Goertzel). A key stops a
//! barge-in prompt at once, in this thread, before the call task hears it.
//!
//! Calls talk to their stream through a [`Stream`] handle (commands over a
//! channel, taken at the next 2 ms tick) and hear [`MediaEvent`]s on a tokio
//! channel. When the call is bridged, [`Stream::detach`] returns the socket's
//! numbering so the relay continues the same RTP stream.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::{mpsc, oneshot};

use super::bridge::{Bridge, End};
use super::dtmf::{Detector, EventReceiver};
use super::player::{Law, Numbering, Player, PACKET};
use super::ports::PortPool;
use super::prompts::Prompt;
use super::relay::{Relay, RelayStats, Side};

/// Upper bounds (µs) of the lateness buckets in [`EngineStats`].
pub const LATE_BOUNDS_US: [u64; 8] = [100, 250, 500, 1000, 2000, 5000, 10000, 20000];

impl EngineStats {
    /// The lateness below which a fraction `q` of passes started, as the
    /// upper bound of its bucket in µs (`None` past the last bound, or with
    /// no passes yet).
    pub fn late_quantile_us(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .late_buckets
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return LATE_BOUNDS_US.get(i).copied();
            }
        }
        None
    }
}

/// The pacing interval.
pub const PTIME: Duration = Duration::from_millis(20);
/// Each 20 ms is cut into this many slots, and every stream sends in its own
/// slot: a pass sends a tenth of the packets, so it is short and the same
/// length every time, and the machine sees an even flow instead of one burst
/// per 20 ms.
pub const SLOTS: u32 = 10;
const SLOT: Duration = Duration::from_millis(20 / SLOTS as u64);
const WAKE: Token = Token(usize::MAX);
/// Packets read from one socket per readiness event (fairness).
const READ_BURST: usize = 32;

/// What a stream tells its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaEvent {
    /// A key the caller pressed.
    Digit(char),
    /// A play request finished (not sent for one a key or `stop` ended).
    PlayDone(u64),
}

/// How a new stream is set up.
#[derive(Debug)]
pub struct StreamSetup {
    /// The caller's RTP socket (the engine keeps a duplicate of it).
    pub socket: std::net::UdpSocket,
    /// Where to send (the caller's SDP); replaced by the first source heard.
    pub remote: SocketAddr,
    /// Codec.
    pub law: Law,
    /// The telephone-event payload type from the caller's offer.
    pub telephone_event: Option<u8>,
    /// Events for the call.
    pub events: mpsc::Sender<MediaEvent>,
    /// Told once when the caller has sent nothing for the given time (a
    /// dead trunk or a vanished phone), as the relay tells of a silent side.
    pub silence: Option<(mpsc::Sender<super::relay::Side>, Duration)>,
    /// Continue this numbering (the stream the caller heard before), or start a new one.
    pub continuing: Option<Numbering>,
}

enum Cmd {
    Add(u64, Box<StreamSetup>),
    Play {
        id: u64,
        play_id: u64,
        prompts: Vec<Arc<Prompt>>,
        barge_in: bool,
        looped: bool,
    },
    Stop(u64),
    Remote(u64, SocketAddr),
    /// Takes a stream out; with a reply, says where its numbering stands.
    Remove(u64, Option<oneshot::Sender<Detached>>),
    /// A bridged call's relay moves in.
    Bridge(u64, Box<Bridge>),
    /// A bridge's call let go of it: end it now, not at its next housekeeping.
    LetGo(u64),
}

/// A stream's state handed to whoever takes the socket over.
#[derive(Debug, Clone, Copy)]
pub struct Detached {
    /// The player's numbering, to continue.
    pub numbering: Numbering,
    /// Where the caller's RTP came from (or its SDP address if none came).
    pub remote: SocketAddr,
}

/// Figures of the engine, readable while it runs.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Streams now.
    pub streams: AtomicUsize,
    /// Bridged calls relayed now.
    pub bridges: AtomicUsize,
    /// Pacing passes run.
    pub ticks: AtomicU64,
    /// Passes that started more than 2 ms late.
    pub late_ticks: AtomicU64,
    /// Latest start of a pass, microseconds after its deadline.
    pub max_late_us: AtomicU64,
    /// Passes by lateness: up to each of [`LATE_BOUNDS_US`], and beyond the last.
    pub late_buckets: [AtomicU64; LATE_BOUNDS_US.len() + 1],
    /// Packets sent.
    pub sent: AtomicU64,
    /// Keys heard.
    pub digits: AtomicU64,
    /// Each thread's pressure over its last window (overload control).
    pub threads: Box<[ThreadPressure]>,
}

/// How hard one engine thread is pressed, over its last [`PRESSURE_WINDOW`]
/// with work (streams or bridges); zero while it has none.
#[derive(Debug, Default)]
pub struct ThreadPressure {
    /// The lateness 90% of its passes started within, µs.
    pub late_p90_us: AtomicU64,
    /// Its share of the wall clock spent working, not sleeping, in percent.
    pub busy_pct: AtomicU64,
}

/// The media figures admission reads: the worst thread's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaPressure {
    /// The highest per-thread p90 pass lateness, µs.
    pub late_p90_us: u64,
    /// The highest per-thread busy share, percent.
    pub busy_pct: u64,
}

impl EngineStats {
    /// The worst thread's pressure.
    pub fn pressure(&self) -> MediaPressure {
        self.threads
            .iter()
            .fold(MediaPressure::default(), |worst, t| MediaPressure {
                late_p90_us: worst.late_p90_us.max(t.late_p90_us.load(Ordering::Relaxed)),
                busy_pct: worst.busy_pct.max(t.busy_pct.load(Ordering::Relaxed)),
            })
    }
}

/// The span a thread's pressure is measured over.
pub const PRESSURE_WINDOW: Duration = Duration::from_millis(500);

/// One thread's measure of its pressure, published once a window.
struct Pressure {
    since: Instant,
    busy: Duration,
    /// Each pass's lateness in this window, µs.
    lateness: Vec<u32>,
    had_work: bool,
}

impl Pressure {
    fn new(now: Instant) -> Pressure {
        Pressure {
            since: now,
            busy: Duration::ZERO,
            // A pass a slot (250 a window), and up to 100 more catching up
            // after a stall: room for all without growing on the packet path.
            lateness: Vec::with_capacity(512),
            had_work: false,
        }
    }

    /// At the end of a window, publishes its figures into `out` and starts the next.
    fn publish_if_due(&mut self, now: Instant, out: Option<&ThreadPressure>) {
        let span = now.duration_since(self.since);
        if span < PRESSURE_WINDOW {
            return;
        }
        let (late, busy) = if self.had_work {
            window_figures(&mut self.lateness, self.busy, span)
        } else {
            (0, 0)
        };
        if let Some(out) = out {
            out.late_p90_us.store(late, Ordering::Relaxed);
            out.busy_pct.store(busy, Ordering::Relaxed);
        }
        self.since = now;
        self.busy = Duration::ZERO;
        self.lateness.clear();
        self.had_work = false;
    }
}

/// A window's p90 pass lateness (µs) and busy share (percent, at most 100).
fn window_figures(lateness: &mut [u32], busy: Duration, span: Duration) -> (u64, u64) {
    let late = if lateness.is_empty() {
        0
    } else {
        let at = (lateness.len() * 9).div_ceil(10) - 1;
        *lateness.select_nth_unstable(at).1 as u64
    };
    let busy_pct = (busy.as_secs_f64() * 100.0 / span.as_secs_f64().max(1e-9)).min(100.0);
    (late, busy_pct.round() as u64)
}

#[derive(Clone)]
struct Shard {
    tx: std_mpsc::Sender<Cmd>,
    waker: Arc<Waker>,
}

impl Shard {
    fn send(&self, cmd: Cmd) {
        if self.tx.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// The engine: its threads and a way to add streams.
pub struct Engine {
    shards: Vec<Shard>,
    next_id: AtomicU64,
    /// Figures.
    pub stats: Arc<EngineStats>,
}

impl Engine {
    /// Starts `threads` engine threads (at least one). With `realtime` each
    /// asks for SCHED_FIFO; without the privilege it says so once and runs at
    /// normal priority.
    pub fn start(threads: usize, realtime: bool) -> std::io::Result<Engine> {
        let threads = threads.max(1);
        let stats = Arc::new(EngineStats {
            threads: (0..threads).map(|_| ThreadPressure::default()).collect(),
            ..EngineStats::default()
        });
        let mut shards = Vec::new();
        for i in 0..threads {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
            let (tx, rx) = std_mpsc::channel();
            let st = stats.clone();
            std::thread::Builder::new()
                .name(format!("media-{i}"))
                .spawn(move || {
                    if realtime {
                        if let Err(e) = make_realtime() {
                            if i == 0 {
                                tracing::warn!(error = %e, "media threads run at normal priority (no SCHED_FIFO: needs CAP_SYS_NICE)");
                            }
                        }
                    }
                    run(poll, rx, &st, i)
                })?;
            shards.push(Shard { tx, waker });
        }
        Ok(Engine {
            shards,
            next_id: AtomicU64::new(1),
            stats,
        })
    }

    /// Adds a stream; the handle controls it and removes it when dropped.
    pub fn add(&self, setup: StreamSetup) -> std::io::Result<Stream> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shard = self.shards[(id as usize) % self.shards.len()].clone();
        let local = setup.socket.local_addr()?;
        shard.send(Cmd::Add(id, Box::new(setup)));
        Ok(Stream {
            shard,
            id,
            local,
            detached: false,
        })
    }

    /// Relays a bridged call between `a` (facing the caller) and `b` (facing
    /// the far leg), two sockets bound from `pool`, in one of the engine's
    /// threads. Their ports go back to the pool when the call drops the
    /// handle. `continuing` carries on side A's outgoing numbering from
    /// whoever sent to the caller before; `silent` hears of a side that sent
    /// nothing for `timeout` while watching.
    pub fn bridge(
        &self,
        pool: Arc<PortPool>,
        a: std::net::UdpSocket,
        b: std::net::UdpSocket,
        continuing: Option<Numbering>,
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
        let (cmd_tx, cmd_rx) = crate::boxed::channel(16);
        let stats = Arc::new(RelayStats::default());
        let bridge = Bridge::new(
            pool,
            a,
            b,
            continuing,
            timeout,
            silent,
            cmd_rx,
            stats.clone(),
        )?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shard = self.shards[(id as usize) % self.shards.len()].clone();
        shard.send(Cmd::Bridge(id, Box::new(bridge)));
        Some(Relay {
            a_addr,
            b_addr,
            cmd: cmd_tx,
            stats,
            held: BridgeHold { shard, id },
        })
    }
}

/// The call's hold on its bridge. Dropped after the call's command sender
/// (it is the relay handle's last field), it tells the engine thread, which
/// then finds the channel closed and ends the bridge at once: the recording
/// is closed and the ports go back within a slot of the call ending.
pub struct BridgeHold {
    shard: Shard,
    id: u64,
}

impl Drop for BridgeHold {
    fn drop(&mut self) {
        self.shard.send(Cmd::LetGo(self.id));
    }
}

impl std::fmt::Debug for BridgeHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeHold").field("id", &self.id).finish()
    }
}

/// A call's handle on its stream.
pub struct Stream {
    shard: Shard,
    id: u64,
    /// Our RTP address for this caller.
    pub local: SocketAddr,
    detached: bool,
}

impl Stream {
    /// Plays prompts (replacing what plays); `looped` repeats them until stopped.
    pub fn play(&self, play_id: u64, prompts: Vec<Arc<Prompt>>, barge_in: bool, looped: bool) {
        self.shard.send(Cmd::Play {
            id: self.id,
            play_id,
            prompts,
            barge_in,
            looped,
        });
    }

    /// Stops what plays.
    pub fn stop(&self) {
        self.shard.send(Cmd::Stop(self.id));
    }

    /// Where to send (after a re-INVITE).
    pub fn remote(&self, addr: SocketAddr) {
        self.shard.send(Cmd::Remote(self.id, addr));
    }

    /// Takes the stream out of the engine; the answer says where its RTP
    /// numbering stands. The caller's socket stays with whoever kept the original.
    pub async fn detach(mut self) -> Option<Detached> {
        let (tx, rx) = oneshot::channel();
        self.detached = true;
        self.shard.send(Cmd::Remove(self.id, Some(tx)));
        rx.await.ok()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.detached {
            self.shard.send(Cmd::Remove(self.id, None));
        }
    }
}

/// The streams of one engine thread, in a stable order: a pacing pass
/// visits them in the same order every 20 ms, so each stream's packet leaves
/// at the same offset into the pass (a hash map's order changes when it
/// grows, which would move streams around inside the pass).
#[derive(Default)]
struct Streams {
    entries: Vec<Entry>,
    ids: Vec<u64>,
    index: HashMap<u64, usize>,
    /// Streams per slot, to give a new stream the emptiest.
    per_slot: [usize; SLOTS as usize],
}

impl Streams {
    fn get_mut(&mut self, id: &u64) -> Option<&mut Entry> {
        let i = *self.index.get(id)?;
        self.entries.get_mut(i)
    }

    fn insert(&mut self, id: u64, mut entry: Entry) {
        if self.index.contains_key(&id) {
            return;
        }
        let slot = (0..SLOTS)
            .min_by_key(|s| self.per_slot[*s as usize])
            .unwrap_or(0);
        self.per_slot[slot as usize] += 1;
        entry.slot = slot;
        self.index.insert(id, self.entries.len());
        self.entries.push(entry);
        self.ids.push(id);
    }

    /// Removes a stream; the last one takes its place (one stream moves).
    fn remove(&mut self, id: &u64) -> Option<Entry> {
        let i = self.index.remove(id)?;
        let entry = self.entries.swap_remove(i);
        self.ids.swap_remove(i);
        self.per_slot[entry.slot as usize] -= 1;
        if let Some(moved) = self.ids.get(i) {
            self.index.insert(*moved, i);
        }
        Some(entry)
    }
}

/// The bridged calls of one engine thread, and which slot does each one's
/// housekeeping (commands, silence, checkpoints: once per 20 ms each).
#[derive(Default)]
struct Bridges {
    by_id: HashMap<u64, Bridge>,
    slots: [Vec<u64>; SLOTS as usize],
}

impl Bridges {
    fn insert(&mut self, id: u64, mut bridge: Bridge) {
        if self.by_id.contains_key(&id) {
            return;
        }
        let slot = (0..SLOTS)
            .min_by_key(|s| self.slots[*s as usize].len())
            .unwrap_or(0);
        bridge.slot = slot;
        self.slots[slot as usize].push(id);
        self.by_id.insert(id, bridge);
    }

    /// Housekeeping for the bridges of `slot`; ends those whose call is over
    /// or wants its sockets back.
    fn housekeeping(
        &mut self,
        slot: u32,
        registry: &mio::Registry,
        stats: &EngineStats,
        now: Instant,
    ) {
        let mut ended = Vec::new();
        for id in &self.slots[slot as usize] {
            if let Some(b) = self.by_id.get_mut(id) {
                if let Some(end) = b.housekeeping(registry, *id, now) {
                    ended.push((*id, end));
                }
            }
        }
        for (id, end) in ended {
            self.end(id, end, registry, stats);
        }
    }

    /// Housekeeping for one bridge at once (its call let go of the handle).
    fn housekeep_one(&mut self, id: u64, registry: &mio::Registry, stats: &EngineStats) {
        let Some(b) = self.by_id.get_mut(&id) else {
            return;
        };
        if let Some(end) = b.housekeeping(registry, id, Instant::now()) {
            self.end(id, end, registry, stats);
        }
    }

    fn end(&mut self, id: u64, end: End, registry: &mio::Registry, stats: &EngineStats) {
        if let Some(b) = self.by_id.remove(&id) {
            self.slots[b.slot as usize].retain(|i| *i != id);
            b.end(registry, end);
            // Each thread counts its own into the shared figure.
            stats.bridges.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

struct Entry {
    /// Which of the [`SLOTS`] in each 20 ms this stream sends in.
    slot: u32,
    /// When the caller's last packet came (or the stream started).
    last_rx: Instant,
    silence: Option<(mpsc::Sender<super::relay::Side>, Duration)>,
    socket: UdpSocket,
    remote: SocketAddr,
    latched: bool,
    law: Law,
    telephone_event: Option<u8>,
    player: Player,
    events: mpsc::Sender<MediaEvent>,
    rfc4733: EventReceiver,
    inband: Option<Box<Detector>>,
}

impl Entry {
    fn emit(&self, ev: MediaEvent) {
        // A full channel means the call is stuck; losing a frame-level event
        // is better than blocking every other stream of this thread.
        let _ = self.events.try_send(ev);
    }

    fn receive(&mut self, buf: &mut [u8], stats: &EngineStats) {
        for _ in 0..READ_BURST {
            let (n, src) = match self.socket.recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            if !self.latched {
                self.remote = src;
                self.latched = true;
            } else if src != self.remote {
                continue;
            }
            self.last_rx = Instant::now();
            let Some((pt, ts, payload)) = rtp_payload(&buf[..n]) else {
                continue;
            };
            let mut keys = Vec::new();
            if Some(pt) == self.telephone_event {
                keys.extend(self.rfc4733.handle(ts, payload));
            } else if pt == self.law.pt() {
                if let Some(det) = self.inband.as_mut() {
                    let mut pcm = [0i16; 512];
                    let len = payload.len().min(pcm.len());
                    for (o, b) in pcm.iter_mut().zip(&payload[..len]) {
                        *o = self.law.decode(*b);
                    }
                    keys = det.feed(&pcm[..len]);
                }
            }
            for k in keys {
                stats.digits.fetch_add(1, Ordering::Relaxed);
                if self.player.barge_in() {
                    self.player.stop();
                }
                self.emit(MediaEvent::Digit(k));
            }
        }
    }
}

/// Payload type, timestamp and payload of an RTP packet (RFC 3550 §5.1),
/// or `None` for anything else.
pub fn rtp_payload(pkt: &[u8]) -> Option<(u8, u32, &[u8])> {
    if pkt.len() < 12 || pkt[0] >> 6 != 2 {
        return None;
    }
    let cc = (pkt[0] & 0x0f) as usize;
    let mut start = 12 + 4 * cc;
    if pkt[0] & 0x10 != 0 {
        let ext = pkt.get(start + 2..start + 4)?;
        start += 4 + 4 * u16::from_be_bytes([ext[0], ext[1]]) as usize;
    }
    let mut end = pkt.len();
    if pkt[0] & 0x20 != 0 {
        let pad = *pkt.last()? as usize;
        end = end.checked_sub(pad)?;
    }
    if start > end {
        return None;
    }
    let ts = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
    Some((pkt[1] & 0x7f, ts, &pkt[start..end]))
}

/// Asks for SCHED_FIFO at a modest real-time priority for the calling thread. The
/// thread sleeps in its poll between passes, so it cannot starve the machine.
pub fn make_realtime() -> Result<(), String> {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, RealtimeThreadSchedulePolicy,
        ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
    };
    let value = ThreadPriorityValue::try_from(20u8).map_err(|e| e.to_string())?;
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(value),
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    )
    .map_err(|e| format!("{e:?}"))
}

fn run(mut poll: Poll, rx: std_mpsc::Receiver<Cmd>, stats: &EngineStats, thread: usize) {
    let mut pressure = Pressure::new(Instant::now());
    let mut events = Events::with_capacity(1024);
    let mut streams = Streams::default();
    let mut bridges = Bridges::default();
    let mut buf = vec![0u8; 2048];
    let mut clock = Clock {
        deadline: Instant::now() + SLOT,
        slot: 0,
    };
    loop {
        // Sleep to the slot's deadline, then take every socket that became
        // readable meanwhile in one poll: a few hundred wake-ups a second
        // per thread, however many packets arrive. Keys wait at most a slot.
        let wait = clock.deadline.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let woke = Instant::now();
        pressure.publish_if_due(woke, stats.threads.get(thread));
        if let Err(e) = poll.poll(&mut events, Some(Duration::ZERO)) {
            if e.kind() != ErrorKind::Interrupted {
                tracing::error!(error = %e, "media engine poll failed");
                std::thread::sleep(PTIME);
            }
        }
        let slot_before = clock.slot;
        pressure.had_work |= !streams.entries.is_empty() || !bridges.by_id.is_empty();
        if let Some(late) = pace(&mut streams, &mut clock, stats, Instant::now()) {
            pressure.lateness.push(late);
        }
        for ev in events.iter() {
            if ev.token() == WAKE {
                continue;
            }
            if let Some((id, part)) = super::bridge::part_of(ev.token()) {
                if let Some(bridge) = bridges.by_id.get_mut(&id) {
                    bridge.receive(part, &mut buf);
                }
            } else if let Some(entry) = streams.get_mut(&(ev.token().0 as u64)) {
                entry.receive(&mut buf, stats);
            }
        }
        // Commands (the waker only interrupts the poll; the channel is the truth).
        loop {
            match rx.try_recv() {
                Ok(cmd) => command(cmd, &mut streams, &mut bridges, &poll, stats),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => return,
            }
        }
        if let Some(late) = pace(&mut streams, &mut clock, stats, Instant::now()) {
            pressure.lateness.push(late);
        }
        // Each slot that went by: its bridges' housekeeping.
        let mut slot = slot_before;
        while slot != clock.slot {
            bridges.housekeeping(slot, poll.registry(), stats, Instant::now());
            slot = (slot + 1) % SLOTS;
        }
        pressure.busy += woke.elapsed();
    }
}

/// The thread's pacing clock: the next slot's deadline and which slot it is.
struct Clock {
    deadline: Instant,
    slot: u32,
}

/// If the slot's deadline has come by `now` (the caller reads the clock,
/// so a test can hand in made-up instants): one frame for every playing
/// stream of that slot, in one pass, and the next deadline one slot later
/// (absolute, so lateness does not accumulate). Returns how late the pass
/// started (µs), if one ran.
fn pace(
    streams: &mut Streams,
    clock: &mut Clock,
    stats: &EngineStats,
    now: Instant,
) -> Option<u32> {
    if now < clock.deadline {
        return None;
    }
    let late = now.duration_since(clock.deadline);
    stats.ticks.fetch_add(1, Ordering::Relaxed);
    if late > Duration::from_millis(2) {
        stats.late_ticks.fetch_add(1, Ordering::Relaxed);
    }
    let late_us = late.as_micros() as u64;
    stats.max_late_us.fetch_max(late_us, Ordering::Relaxed);
    let bucket = LATE_BOUNDS_US
        .iter()
        .position(|b| late_us <= *b)
        .unwrap_or(LATE_BOUNDS_US.len());
    stats.late_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    let mut frame = [0u8; PACKET];
    let mut sent = 0;
    for entry in streams.entries.iter_mut().filter(|e| e.slot == clock.slot) {
        if let Some((tx, limit)) = &entry.silence {
            if now.duration_since(entry.last_rx) >= *limit {
                let _ = tx.try_send(super::relay::Side::A);
                entry.silence = None;
            }
        }
        let t = entry.player.tick(&mut frame);
        if let Some(n) = t.packet {
            if entry.socket.send_to(&frame[..n], entry.remote).is_ok() {
                sent += 1;
            }
        }
        if let Some(id) = t.done {
            entry.emit(MediaEvent::PlayDone(id));
        }
    }
    stats.sent.fetch_add(sent, Ordering::Relaxed);
    clock.deadline += SLOT;
    clock.slot = (clock.slot + 1) % SLOTS;
    // After a stall (a suspended machine), do not burst to catch up.
    if now.duration_since(clock.deadline) > Duration::from_millis(200) {
        clock.deadline = now + SLOT;
    }
    Some(late_us.min(u32::MAX as u64) as u32)
}

fn command(
    cmd: Cmd,
    streams: &mut Streams,
    bridges: &mut Bridges,
    poll: &Poll,
    stats: &EngineStats,
) {
    match cmd {
        Cmd::Bridge(id, bridge) => {
            if let Err(e) = bridge.register(poll.registry(), id) {
                tracing::error!(error = %e, "bridged call's sockets cannot be polled");
                bridge.end(poll.registry(), End::Over);
                return;
            }
            bridges.insert(id, *bridge);
            stats.bridges.fetch_add(1, Ordering::Relaxed);
        }
        Cmd::LetGo(id) => bridges.housekeep_one(id, poll.registry(), stats),
        Cmd::Add(id, setup) => {
            let Ok(dup) = setup.socket.try_clone() else {
                return;
            };
            if dup.set_nonblocking(true).is_err() {
                return;
            }
            let mut socket = UdpSocket::from_std(dup);
            if poll
                .registry()
                .register(&mut socket, Token(id as usize), Interest::READABLE)
                .is_err()
            {
                return;
            }
            let inband = setup
                .telephone_event
                .is_none()
                .then(|| Box::new(Detector::new()));
            streams.insert(
                id,
                Entry {
                    slot: 0,
                    last_rx: Instant::now(),
                    silence: setup.silence,
                    socket,
                    remote: setup.remote,
                    latched: false,
                    law: setup.law,
                    telephone_event: setup.telephone_event,
                    player: match setup.continuing {
                        Some(n) => Player::new(setup.law, n.ssrc, n.next_seq, n.next_ts),
                        None => {
                            Player::new(setup.law, rand::random(), rand::random(), rand::random())
                        }
                    },
                    events: setup.events,
                    rfc4733: EventReceiver::default(),
                    inband,
                },
            );
            stats.streams.fetch_add(1, Ordering::Relaxed);
        }
        Cmd::Play {
            id,
            play_id,
            prompts,
            barge_in,
            looped,
        } => {
            if let Some(e) = streams.get_mut(&id) {
                e.player.play(play_id, prompts, barge_in, looped);
            }
        }
        Cmd::Stop(id) => {
            if let Some(e) = streams.get_mut(&id) {
                e.player.stop();
            }
        }
        Cmd::Remote(id, addr) => {
            if let Some(e) = streams.get_mut(&id) {
                e.remote = addr;
                e.latched = false;
            }
        }
        Cmd::Remove(id, reply) => {
            if let Some(mut e) = streams.remove(&id) {
                stats.streams.fetch_sub(1, Ordering::Relaxed);
                let _ = poll.registry().deregister(&mut e.socket);
                if let Some(reply) = reply {
                    let _ = reply.send(Detached {
                        numbering: e.player.numbering(),
                        remote: e.remote,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::dtmf::TelephoneEvent;
    use crate::media::prompts::FRAME;
    use crate::media::relay::RelayCmd;

    fn pair() -> (std::net::UdpSocket, std::net::UdpSocket) {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        b.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        (a, b)
    }

    fn rtp(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn stream(
        engine: &Engine,
        law: Law,
        telephone_event: Option<u8>,
    ) -> (Stream, std::net::UdpSocket, mpsc::Receiver<MediaEvent>) {
        let (ours, caller) = pair();
        let (tx, rx) = mpsc::channel(16);
        let stream = engine
            .add(StreamSetup {
                socket: ours,
                remote: caller.local_addr().expect("addr"),
                law,
                telephone_event,
                events: tx,
                silence: None,
                continuing: None,
            })
            .expect("add");
        (stream, caller, rx)
    }

    /// Reads until a packet comes from `from` (others are skipped), or panics after 2 s.
    fn recv_from_addr(socket: &std::net::UdpSocket, from: SocketAddr) -> Vec<u8> {
        let mut buf = [0u8; 2048];
        loop {
            let (n, src) = socket.recv_from(&mut buf).expect("a packet within 2 s");
            if src == from {
                return buf[..n].to_vec();
            }
        }
    }

    #[tokio::test]
    async fn a_bridge_relays_both_ways_latches_gives_sockets_back_and_hears_silence() {
        let engine = Engine::start(1, false).expect("engine");
        let pool = Arc::new(PortPool::new(
            "127.0.0.1".parse().expect("ip"),
            47100,
            47140,
        ));
        let all = pool.available();
        let (a, b) = (pool.bind().expect("a"), pool.bind().expect("b"));
        let (silent_tx, mut silent_rx) = mpsc::channel(4);
        let relay = engine
            .bridge(
                pool.clone(),
                a,
                b,
                None,
                Duration::from_millis(200),
                silent_tx,
            )
            .expect("bridge");
        let (caller, agent) = pair();
        agent
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        caller
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        for cmd in [
            RelayCmd::Remote(Side::A, caller.local_addr().expect("addr")),
            RelayCmd::Remote(Side::B, agent.local_addr().expect("addr")),
        ] {
            relay.cmd.send(cmd).await.expect("bridge alive");
        }
        // Commands are taken within 20 ms: the caller speaks until the agent hears.
        let mut heard = None;
        for seq in 0..40u16 {
            caller
                .send_to(
                    &rtp(0, seq, u32::from(seq) * 160, &[0xff; 160]),
                    relay.a_addr,
                )
                .expect("send");
            let mut buf = [0u8; 2048];
            if let Ok((n, src)) = agent.recv_from(&mut buf) {
                assert_eq!(src, relay.b_addr);
                heard = Some(buf[..n].to_vec());
                break;
            }
        }
        let heard = heard.expect("the agent hears the caller");
        assert_eq!(heard.len(), 12 + 160);
        assert_ne!(
            &heard[8..12],
            &[0, 0, 0, 9],
            "the caller's SSRC is rewritten"
        );
        agent
            .send_to(&rtp(0, 1, 160, &[0x7f; 160]), relay.b_addr)
            .expect("send");
        let back = recv_from_addr(&caller, relay.a_addr);
        assert_eq!(&back[12..], &[0x7f; 160][..]);
        // Latched: a stranger sending to the caller's port is dropped.
        let stranger = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        stranger
            .send_to(&rtp(0, 7, 0, &[0; 160]), relay.a_addr)
            .expect("send");
        while relay.stats.dropped.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(relay.stats.a_to_b.load(Ordering::Relaxed) >= 1);
        assert_eq!(relay.stats.b_to_a.load(Ordering::Relaxed), 1);

        // A transfer takes the very sockets back; their ports stay taken.
        let (tx, rx) = oneshot::channel();
        relay.cmd.send(RelayCmd::Release(tx)).await.expect("alive");
        let released = rx.await.expect("sockets back");
        assert_eq!(released.a.local_addr().expect("addr"), relay.a_addr);
        assert_eq!(released.b.local_addr().expect("addr"), relay.b_addr);
        assert_eq!(released.a_remote, Some(caller.local_addr().expect("addr")));
        assert_eq!(pool.available(), all - 2);

        // The next bridge on them continues the caller's stream; it watches
        // for silence, and when the call drops it the ports go back.
        let (silent_tx2, mut silent_rx2) = mpsc::channel(4);
        let next = engine
            .bridge(
                pool.clone(),
                released.a,
                released.b,
                Some(released.numbering),
                Duration::from_millis(100),
                silent_tx2,
            )
            .expect("bridge");
        next.cmd.send(RelayCmd::Watch(true)).await.expect("alive");
        let side = silent_rx2.recv().await.expect("silence reported");
        assert!(side == Side::A || side == Side::B);
        assert!(
            silent_rx.try_recv().is_err(),
            "the first bridge was not watching"
        );
        drop(next);
        drop(relay);
        while pool.available() != all {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(engine.stats.bridges.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn plays_frames_and_hears_rfc4733_with_barge_in() {
        let engine = Engine::start(1, false).expect("engine");
        let (stream, caller, mut rx) = stream(&engine, Law::Pcmu, Some(96));
        let prompt = Arc::new(Prompt::from_linear("t", &vec![1234i16; 50 * FRAME]));
        stream.play(1, vec![prompt.clone()], true, false);
        let mut buf = [0u8; 2048];
        let (n, from) = caller.recv_from(&mut buf).expect("a frame");
        assert_eq!(from, stream.local);
        assert_eq!(n, PACKET);
        assert_eq!(buf[1], 0x80, "marker + PCMU on the first packet");
        assert_eq!(&buf[12..n], &prompt.pcmu[..FRAME]);
        // Press 5 (event 5), with the usual three end retransmissions.
        for (i, end) in [false, false, true, true, true].into_iter().enumerate() {
            let ev = TelephoneEvent {
                event: 5,
                end,
                volume: 10,
                duration: 160 * (i as u16 + 1),
            };
            caller
                .send_to(&rtp(96, i as u16, 4242, &ev.write()), stream.local)
                .expect("send");
        }
        let ev = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        assert_eq!(ev.expect("in time"), Some(MediaEvent::Digit('5')));
        // Barge-in stopped the prompt: no PlayDone, and frames stop coming.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err(), "one key, reported once");
        caller
            .set_read_timeout(Some(Duration::from_millis(10)))
            .expect("timeout");
        while caller.recv_from(&mut buf).is_ok() {}
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(caller.recv_from(&mut buf).is_err(), "prompt stopped");
        let detached = stream.detach().await.expect("detached");
        assert_eq!(detached.remote, caller.local_addr().expect("addr"));
    }

    #[tokio::test]
    async fn inband_tones_when_no_telephone_event() {
        let engine = Engine::start(1, false).expect("engine");
        let (stream, caller, mut rx) = stream(&engine, Law::Pcma, None);
        // 60 ms of "9" (852 + 1477 Hz) then silence, as A-law frames.
        let tone: Vec<i16> = (0..FRAME * 8)
            .map(|i| {
                if i < 480 {
                    let t = i as f32 / 8000.0;
                    let w = |f: f32| (2.0 * std::f32::consts::PI * f * t).sin();
                    (6000.0 * (w(852.0) + w(1477.0))) as i16
                } else {
                    0
                }
            })
            .collect();
        for (i, chunk) in tone.chunks(FRAME).enumerate() {
            let payload: Vec<u8> = chunk
                .iter()
                .map(|s| audio_codec_algorithms::encode_alaw(*s))
                .collect();
            caller
                .send_to(&rtp(8, i as u16, 160 * i as u32, &payload), stream.local)
                .expect("send");
        }
        let ev = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        assert_eq!(ev.expect("in time"), Some(MediaEvent::Digit('9')));
        drop(stream);
    }

    #[test]
    fn window_figures_take_the_p90_lateness_and_the_busy_share() {
        let mut late: Vec<u32> = (1..=100).collect();
        let half = Duration::from_millis(250);
        assert_eq!(
            window_figures(&mut late, half, PRESSURE_WINDOW),
            (90, 50),
            "90% of passes started within 90 µs; busy half the window"
        );
        // Ten passes a stall made very late are the tenth that p90 leaves out;
        // eleven are not.
        let mut late: Vec<u32> = [vec![100; 90], vec![30_000; 10]].concat();
        assert_eq!(window_figures(&mut late, half, PRESSURE_WINDOW).0, 100);
        let mut late: Vec<u32> = [vec![100; 89], vec![30_000; 11]].concat();
        assert_eq!(window_figures(&mut late, half, PRESSURE_WINDOW).0, 30_000);
        assert_eq!(
            window_figures(&mut [], Duration::ZERO, PRESSURE_WINDOW),
            (0, 0)
        );
        // Busy is clamped: a thread cannot work more than the wall clock.
        assert_eq!(
            window_figures(&mut [5], PRESSURE_WINDOW * 2, PRESSURE_WINDOW).1,
            100
        );
    }

    #[test]
    fn a_thread_publishes_pressure_only_for_windows_with_work() {
        let start = Instant::now();
        let out = ThreadPressure::default();
        let mut p = Pressure::new(start);
        p.lateness.extend([40_000u32; 20]);
        p.busy = Duration::from_millis(400);
        // Idle: whatever the clock did, nobody's audio suffered.
        p.publish_if_due(start + PRESSURE_WINDOW, Some(&out));
        assert_eq!(out.late_p90_us.load(Ordering::Relaxed), 0);
        assert_eq!(out.busy_pct.load(Ordering::Relaxed), 0);
        p.had_work = true;
        p.lateness.extend([40_000u32; 20]);
        p.busy = Duration::from_millis(400);
        // Not due yet: nothing changes.
        p.publish_if_due(start + PRESSURE_WINDOW + PRESSURE_WINDOW / 2, Some(&out));
        assert_eq!(out.late_p90_us.load(Ordering::Relaxed), 0);
        p.publish_if_due(start + PRESSURE_WINDOW * 2, Some(&out));
        assert_eq!(out.late_p90_us.load(Ordering::Relaxed), 40_000);
        assert_eq!(out.busy_pct.load(Ordering::Relaxed), 80);
        let stats = EngineStats {
            threads: vec![ThreadPressure::default(), out].into_boxed_slice(),
            ..EngineStats::default()
        };
        assert_eq!(
            stats.pressure(),
            MediaPressure {
                late_p90_us: 40_000,
                busy_pct: 80
            }
        );
        // The next window starts empty.
        assert!(p.lateness.is_empty() && !p.had_work && p.busy.is_zero());
    }

    #[test]
    fn rtp_payload_bounds() {
        assert_eq!(rtp_payload(&[0x80; 11]), None);
        let mut p = rtp(0, 1, 2, &[1, 2, 3]);
        assert_eq!(rtp_payload(&p), Some((0, 2, &[1u8, 2, 3][..])));
        p[0] |= 0x20; // padding longer than the packet
        *p.last_mut().expect("byte") = 200;
        assert_eq!(rtp_payload(&p), None);
        let mut x = rtp(0, 1, 2, &[]);
        x[0] |= 0x10; // extension header missing
        assert_eq!(rtp_payload(&x), None);
        x[0] = 0x8f; // 15 CSRCs, none present
        assert_eq!(rtp_payload(&x), None);
    }

    #[test]
    fn the_pacing_clock_keeps_absolute_deadlines_and_does_not_burst_after_a_stall() {
        let stats = EngineStats::default();
        let mut streams = Streams::default();
        let t0 = Instant::now();
        let mut clock = Clock {
            deadline: t0 + SLOT,
            slot: 0,
        };
        // Before the deadline: nothing.
        assert_eq!(pace(&mut streams, &mut clock, &stats, t0), None);
        // 3 ms late: one pass, counted late; the next deadline is one slot
        // after the last one, not after now.
        let late = pace(
            &mut streams,
            &mut clock,
            &stats,
            t0 + SLOT + Duration::from_millis(3),
        );
        assert_eq!(late, Some(3_000));
        assert_eq!((clock.slot, clock.deadline), (1, t0 + 2 * SLOT));
        assert_eq!(stats.ticks.load(Ordering::Relaxed), 1);
        assert_eq!(stats.late_ticks.load(Ordering::Relaxed), 1);
        // On time: not counted late.
        assert_eq!(
            pace(&mut streams, &mut clock, &stats, t0 + 2 * SLOT),
            Some(0)
        );
        assert_eq!(stats.late_ticks.load(Ordering::Relaxed), 1);
        // A stall of a second: one pass, then the clock starts again from
        // now instead of running fifty passes to catch up.
        let woke = t0 + Duration::from_secs(1);
        assert!(pace(&mut streams, &mut clock, &stats, woke).is_some());
        assert_eq!(clock.deadline, woke + SLOT);
        assert_eq!(pace(&mut streams, &mut clock, &stats, woke), None);
        // The slot goes round.
        for i in 0..SLOTS {
            let at = clock.deadline;
            assert!(
                pace(&mut streams, &mut clock, &stats, at).is_some(),
                "pass {i}"
            );
        }
        assert_eq!(clock.slot, 3, "three passes, then a whole round");
    }
}

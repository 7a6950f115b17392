//! The load harness: `yihaotong load` drives a running server with real SIP
//! and RTP over loopback and measures what it gets back.
//!
//! Room: the test bench, outside the server. It plays both ends of the
//! hotline: callers on the trunk side (one UDP socket for all their
//! signalling) and agent seats (one UDP socket; each seat registers with
//! digest auth under its own user and is told apart by the Request-URI). Each
//! call gets its own RTP sockets on both ends; all streams are paced by one
//! 20 ms clock ([`pacer`]) and every received stream is measured (loss,
//! RFC 3550 jitter, inter-arrival deviation). Every run is bounded in calls
//! and seconds and stops by itself.

mod rtp;
mod ua;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

pub use rtp::StreamStats;

/// Which traffic to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// A storm of REGISTERs with digest auth.
    Register,
    /// The full path: trunk call → queue → agent answers → talk → hang up.
    Queue,
    /// IVR callers: dial a flow number (default 12345), listen to its prompts
    /// and hold music for --talk-ms while sending RTP, hang up. Measures how
    /// evenly the server's media engine paces many prompt streams.
    Ivr,
    /// The city's mix (`--mix`, 60/25/15 by default): callers to the seats
    /// (12345: greeting, line, an agent, talk), to self-service (12333: key
    /// 1 hands them to the social-insurance system, which the harness plays
    /// at `--backend`), and to a retired line's notice (85123456: listen,
    /// hang up).
    Mixed,
}

/// The kinds of call in the mixed scenario, in `--mix` order.
pub const CLASSES: [&str; 3] = ["seats", "self-service", "notice"];

/// Keys a caller presses (RFC 4733), each at its time after the answer:
/// `1@1500,0@4000` (milliseconds).
pub fn parse_keys(s: &str) -> Result<Vec<(char, Duration)>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|item| {
            let (key, at) = item
                .split_once('@')
                .ok_or_else(|| format!("{item:?}: write KEY@MILLISECONDS, as 1@1500"))?;
            let mut chars = key.chars();
            let (Some(k), None) = (chars.next(), chars.next()) else {
                return Err(format!("{item:?}: one key (0-9, *, #)"));
            };
            if !(k.is_ascii_digit() || k == '*' || k == '#') {
                return Err(format!("{item:?}: one key (0-9, *, #)"));
            }
            let ms: u64 = at
                .parse()
                .map_err(|_| format!("{item:?}: the time is whole milliseconds"))?;
            Ok((k, Duration::from_millis(ms)))
        })
        .collect()
}

/// `--mix 60,25,15`: weights of the mixed scenario's kinds of call.
pub fn parse_mix(s: &str) -> Result<[u32; 3], String> {
    let parts: Vec<u32> = s
        .split(',')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?}: three whole weights, as 60,25,15"))?;
    match parts.as_slice() {
        [a, b, c] if a + b + c > 0 => Ok([*a, *b, *c]),
        _ => Err(format!(
            "{s:?}: three whole weights (seats, self-service, notice), not all 0"
        )),
    }
}

/// The kind of the `i`th call of a mix: spread evenly (a golden-ratio
/// sequence), so a short run has the mix's proportions too.
pub fn class_of(i: u64, mix: [u32; 3]) -> usize {
    let total: u32 = mix.iter().sum();
    let x = (i as f64 * 0.618_033_988_749_895).fract() * f64::from(total.max(1));
    let mut upto = 0.0;
    for (k, w) in mix.iter().enumerate() {
        upto += f64::from(*w);
        if x < upto {
            return k;
        }
    }
    mix.iter().rposition(|w| *w > 0).unwrap_or(0)
}

/// What one caller does.
#[derive(Debug, Clone)]
pub(crate) struct CallPlan {
    /// Its kind (a [`CLASSES`] name, or the scenario's).
    pub(crate) class: &'static str,
    /// The number dialed.
    pub(crate) number: String,
    /// How long after the answer it hangs up.
    pub(crate) talk: Duration,
    /// Keys it presses after the answer.
    pub(crate) keys: Vec<(char, Duration)>,
    /// It hangs up (CANCEL) while it rings.
    pub(crate) abandon: bool,
}

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadOptions {
    /// The server's SIP address.
    #[arg(long, default_value = "127.0.0.1:5060")]
    pub server: SocketAddr,
    /// Traffic to generate.
    #[arg(long, value_enum, default_value = "queue")]
    pub scenario: Scenario,
    /// Calls (or registrations) to attempt in all.
    #[arg(long, default_value_t = 100)]
    pub calls: u64,
    /// Open loop: new calls per second. Ignored when --concurrency is given.
    #[arg(long, default_value_t = 10.0)]
    pub cps: f64,
    /// Closed loop: keep this many calls in flight instead of a fixed rate.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Hard limit on the whole run, seconds.
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
    /// Agent seats to register (ids agent_base, agent_base+1, ...).
    #[arg(long, default_value_t = 10)]
    pub agents: u32,
    /// First agent id.
    #[arg(long, default_value_t = 9000)]
    pub agent_base: u32,
    /// The agents' password.
    #[arg(long, default_value = "load-test")]
    pub password: String,
    /// Create the agent accounts first (through the server's admin socket),
    /// and remove them when the run ends. Refused where an account with one
    /// of those IDs exists, unless `--reuse-accounts`.
    #[arg(long)]
    pub provision: bool,
    /// With `--provision`: overwrite accounts that exist in the ID range
    /// (they are kept afterwards, with the load password).
    #[arg(long)]
    pub reuse_accounts: bool,
    /// With `--provision`: keep the accounts it made after the run.
    #[arg(long)]
    pub keep_accounts: bool,
    /// Queue the provisioned agents serve.
    #[arg(long, default_value = "main")]
    pub queue: String,
    /// Number the callers dial (default: 123450, the no-greeting seat line,
    /// for `queue`; 12345, a flow, for `ivr`).
    #[arg(long)]
    pub number: Option<String>,
    /// Milliseconds an agent rings before answering.
    #[arg(long, default_value_t = 200)]
    pub ring_ms: u64,
    /// Milliseconds of talk (RTP both ways) before the caller hangs up.
    #[arg(long, default_value_t = 2000)]
    pub talk_ms: u64,
    /// Fraction of callers who hang up (CANCEL) while the agent rings.
    #[arg(long, default_value_t = 0.0)]
    pub abandon: f64,
    /// Keys every caller presses after the answer, RFC 4733: `1@1500,0@4000`
    /// (key @ milliseconds). In `mixed`, self-service callers press 1@1000
    /// unless this is given.
    #[arg(long, value_parser = parse_keys)]
    pub keys: Option<Vec<(char, Duration)>>,
    /// `mixed`: weights of seats, self-service and notice calls.
    #[arg(long, value_parser = parse_mix, default_value = "60,25,15")]
    pub mix: [u32; 3],
    /// `mixed`: the self-service number (its flow hands key 1 to a backend).
    #[arg(long, default_value = "12333")]
    pub self_service_number: String,
    /// `mixed`: a retired line whose flow says the new number.
    #[arg(long, default_value = "85123456")]
    pub notice_number: String,
    /// `mixed`: milliseconds a notice caller listens before hanging up.
    #[arg(long, default_value_t = 4000)]
    pub notice_ms: u64,
    /// `mixed`: where the harness answers as the self-service backend (the
    /// server's `[backends.hrss] uri`; the shipped settings say
    /// 127.0.0.1:5091).
    #[arg(long, default_value = "127.0.0.1:5091")]
    pub backend: SocketAddr,
    /// Local address for our sockets (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Exit non-zero unless every call completed and audio arrived both ways.
    #[arg(long)]
    pub check: bool,
}

impl LoadOptions {
    /// The number the callers dial.
    pub fn dialed(&self) -> String {
        self.number.clone().unwrap_or_else(|| {
            if matches!(self.scenario, Scenario::Ivr | Scenario::Mixed) {
                "12345".into()
            } else {
                "123450".into()
            }
        })
    }

    /// What the `i`th caller does.
    pub(crate) fn plan(&self, i: u64) -> CallPlan {
        let talk = Duration::from_millis(self.talk_ms);
        let keys = self.keys.clone().unwrap_or_default();
        let abandon = rand::random::<f64>() < self.abandon;
        if self.scenario != Scenario::Mixed {
            let class = if self.scenario == Scenario::Ivr {
                "ivr"
            } else {
                "queue"
            };
            return CallPlan {
                class,
                number: self.dialed(),
                talk,
                keys,
                abandon,
            };
        }
        let k = class_of(i, self.mix);
        let (number, talk, keys) = match k {
            0 => (self.dialed(), talk, keys),
            1 => {
                let keys = match &self.keys {
                    Some(k) => k.clone(),
                    None => vec![('1', Duration::from_millis(1000))],
                };
                (self.self_service_number.clone(), talk, keys)
            }
            _ => (
                self.notice_number.clone(),
                Duration::from_millis(self.notice_ms),
                Vec::new(),
            ),
        };
        CallPlan {
            class: CLASSES[k],
            number,
            talk,
            keys,
            // Only a caller who rings a seat can hang up while it rings.
            abandon: abandon && k == 0,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Shared counters and histograms, filled by every call.
pub(crate) struct Metrics {
    pub(crate) attempted: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) active: AtomicU64,
    pub(crate) failed: Mutex<BTreeMap<String, u64>>,
    pub(crate) setup_180: Mutex<Histogram<u64>>,
    pub(crate) setup_200: Mutex<Histogram<u64>>,
    pub(crate) first_audio: Mutex<Histogram<u64>>,
    pub(crate) caller_rtp: Mutex<StreamStats>,
    pub(crate) agent_rtp: Mutex<StreamStats>,
    /// Calls an agent or the backend is answering now: their RTP figures
    /// are merged at their end, a moment after the caller's call ends, so
    /// the report waits for them.
    pub(crate) answering: AtomicU64,
    /// Caller's INVITE → the seat's INVITE for it (by `X-Caller-Call-ID`).
    pub(crate) to_seat: Mutex<Histogram<u64>>,
    /// When each caller's INVITE left, until a seat is rung for it.
    pub(crate) invited: Mutex<HashMap<String, Instant>>,
    /// Attempted and completed calls by kind.
    pub(crate) classes: Mutex<BTreeMap<&'static str, ClassCount>>,
}

/// Calls of one kind.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ClassCount {
    /// Started.
    pub attempted: u64,
    /// Finished as planned.
    pub completed: u64,
}

fn histogram() -> Mutex<Histogram<u64>> {
    // 1 µs .. 10 min, 3 significant digits. The bounds are constants that
    // hdrhistogram accepts, so this cannot fail.
    Mutex::new(
        Histogram::new_with_bounds(1, 600_000_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).expect("3 digits is valid")),
    )
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            attempted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            active: AtomicU64::new(0),
            failed: Mutex::new(BTreeMap::new()),
            setup_180: histogram(),
            setup_200: histogram(),
            first_audio: histogram(),
            caller_rtp: Mutex::new(StreamStats::default()),
            agent_rtp: Mutex::new(StreamStats::default()),
            answering: AtomicU64::new(0),
            to_seat: histogram(),
            invited: Mutex::new(HashMap::new()),
            classes: Mutex::new(BTreeMap::new()),
        }
    }

    /// A call of kind `class` started (`done: false`) or finished as planned.
    pub(crate) fn count(&self, class: &'static str, done: bool) {
        if let Ok(mut c) = self.classes.lock() {
            let c = c.entry(class).or_default();
            if done {
                c.completed += 1;
            } else {
                c.attempted += 1;
            }
        }
    }

    /// A seat is rung for the caller whose call is `caller_call_id`.
    pub(crate) fn seat_rung(&self, caller_call_id: &str) {
        let sent = self
            .invited
            .lock()
            .ok()
            .and_then(|mut m| m.remove(caller_call_id));
        if let Some(sent) = sent {
            Metrics::record(&self.to_seat, sent.elapsed());
        }
    }

    pub(crate) fn fail(&self, why: impl Into<String>) {
        if let Ok(mut f) = self.failed.lock() {
            *f.entry(why.into()).or_default() += 1;
        }
    }

    pub(crate) fn record(h: &Mutex<Histogram<u64>>, d: Duration) {
        if let Ok(mut h) = h.lock() {
            let _ = h.record((d.as_micros() as u64).max(1));
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario.
    pub scenario: Scenario,
    /// Calls (registrations) started.
    pub attempted: u64,
    /// Finished as planned.
    pub completed: u64,
    /// Callers who hung up while ringing, as asked.
    pub abandoned: u64,
    /// Failures by reason (SIP status or "timeout").
    pub failed: BTreeMap<String, u64>,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Attempts per second achieved while launching (first to last start).
    pub achieved_cps: f64,
    /// INVITE → 180 (or REGISTER → 200 for the register scenario).
    pub setup_180_ms: Percentiles,
    /// INVITE → 200.
    pub setup_200_ms: Percentiles,
    /// 200 → first RTP packet at the caller.
    pub first_audio_ms: Percentiles,
    /// Caller's INVITE → the first seat's (or backend's) INVITE for it:
    /// the time in line, plus any greeting before it.
    pub to_seat_ms: Percentiles,
    /// Calls by kind (`mixed`: seats, self-service, notice).
    pub classes: BTreeMap<String, ClassCount>,
    /// RTP as received by the callers (sent by agents, relayed by the server).
    pub caller_rtp: StreamStats,
    /// RTP as received by the agents.
    pub agent_rtp: StreamStats,
    /// How late the harness's own 20 ms pacing ticks fired: the part of any
    /// measured jitter that is the harness's, not the server's.
    pub pacer_late_ms: Percentiles,
    /// What the server spent, from its own accounting (when its admin
    /// socket answers: same machine, same data folder).
    pub server: Option<ServerCost>,
    /// UDP datagrams this machine's kernel dropped for a full receive
    /// buffer during the run, on every socket (`RcvbufErrors` in
    /// `/proc/net/snmp`): the harness's own share is in the RTP figures'
    /// `dropped_by_harness`; the rest were the server's (or another
    /// process's) sockets.
    pub udp_receive_buffer_drops: Option<u64>,
}

/// The kernel's count of UDP datagrams dropped for a full receive buffer
/// (`Udp: … RcvbufErrors` in `/proc/net/snmp`), machine-wide.
pub fn udp_receive_buffer_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    rcvbuf_errors_of(&snmp)
}

fn rcvbuf_errors_of(snmp: &str) -> Option<u64> {
    // Two lines per protocol: the names, then the values.
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let column = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

/// One sample of the server's `status`: calls alive, resident memory, CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Calls alive.
    pub live_calls: u64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// CPU time so far (user + system), seconds.
    pub cpu_seconds: f64,
}

impl Sample {
    /// From `yihaotong status` (`None` without the process figures).
    pub fn of(status: &serde_json::Value) -> Option<Sample> {
        let p = &status["process"];
        Some(Sample {
            live_calls: status["live_calls"].as_u64().unwrap_or(0),
            rss_bytes: p["rss_bytes"].as_u64()?,
            cpu_seconds: p["cpu_seconds"].as_f64()?,
        })
    }
}

/// The server's cost of a run: CPU per call, and resident memory per call
/// alive at the busiest sample.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerCost {
    /// CPU seconds the server used during the run.
    pub cpu_seconds: f64,
    /// Of those, per call attempted, milliseconds.
    pub cpu_ms_per_call: f64,
    /// Resident memory before, MiB.
    pub rss_before_mib: f64,
    /// Resident memory after, MiB.
    pub rss_after_mib: f64,
    /// Most calls alive at one sample.
    pub peak_live_calls: u64,
    /// At that sample: resident memory above the start, per call alive, KiB.
    pub kib_per_live_call: f64,
}

impl ServerCost {
    /// From the samples before, during (four a second) and after a run
    /// of `calls` attempts.
    pub fn from_samples(
        before: &Sample,
        during: &[Sample],
        after: &Sample,
        calls: u64,
    ) -> ServerCost {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let cpu = (after.cpu_seconds - before.cpu_seconds).max(0.0);
        let busiest = during.iter().max_by_key(|s| s.live_calls).copied();
        let (peak, per_call) = match busiest {
            Some(s) if s.live_calls > 0 => (
                s.live_calls,
                s.rss_bytes.saturating_sub(before.rss_bytes) as f64 / 1024.0 / s.live_calls as f64,
            ),
            _ => (0, 0.0),
        };
        ServerCost {
            cpu_seconds: cpu,
            cpu_ms_per_call: if calls == 0 {
                0.0
            } else {
                cpu * 1000.0 / calls as f64
            },
            rss_before_mib: mib(before.rss_bytes),
            rss_after_mib: mib(after.rss_bytes),
            peak_live_calls: peak,
            kib_per_live_call: per_call,
        }
    }
}

impl Report {
    /// Whether every attempt completed (or was abandoned as asked) and, for
    /// calls, audio arrived at both ends.
    pub fn all_good(&self) -> bool {
        let done = self.completed + self.abandoned == self.attempted && self.failed.is_empty();
        let audio = match self.scenario {
            Scenario::Register => true,
            _ if self.completed == 0 => true,
            Scenario::Queue | Scenario::Mixed => {
                self.caller_rtp.received > 0 && self.agent_rtp.received > 0
            }
            Scenario::Ivr => self.caller_rtp.received > 0,
        };
        done && audio
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, k: &str, v: String| out.push_str(&format!("{k:<28} {v}\n"));
        line(&mut out, "scenario", format!("{:?}", self.scenario));
        line(&mut out, "attempted", self.attempted.to_string());
        line(&mut out, "completed", self.completed.to_string());
        line(&mut out, "abandoned (asked)", self.abandoned.to_string());
        line(&mut out, "failed", format!("{:?}", self.failed));
        line(&mut out, "seconds", format!("{:.2}", self.seconds));
        line(
            &mut out,
            "achieved cps",
            format!("{:.1}", self.achieved_cps),
        );
        let p = |p: &Percentiles| {
            format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms (n={})",
                p.p50, p.p90, p.p99, p.p999, p.max, p.count
            )
        };
        let first = if self.scenario == Scenario::Register {
            "REGISTER → 200"
        } else {
            "INVITE → 180"
        };
        line(&mut out, first, p(&self.setup_180_ms));
        if self.scenario != Scenario::Register {
            line(&mut out, "INVITE → 200", p(&self.setup_200_ms));
            line(&mut out, "200 → first audio", p(&self.first_audio_ms));
            if self.to_seat_ms.count > 0 {
                line(&mut out, "INVITE → seat/backend rung", p(&self.to_seat_ms));
            }
            for (class, c) in &self.classes {
                line(
                    &mut out,
                    &format!("calls: {class}"),
                    format!("{} of {} completed", c.completed, c.attempted),
                );
            }
            line(&mut out, "harness pacer lateness", p(&self.pacer_late_ms));
            let agents = [("RTP at agents, backends", &self.agent_rtp)];
            let streams = [("RTP at callers", &self.caller_rtp)].into_iter().chain(
                agents
                    .into_iter()
                    .filter(|_| matches!(self.scenario, Scenario::Queue | Scenario::Mixed)),
            );
            for (name, s) in streams {
                line(
                    &mut out,
                    name,
                    format!(
                        "{} streams, {} pkts, loss {:.4}% ({} dropped at the harness's sockets), jitter(3550) max {:.2} ms, inter-arrival dev p99 {:.2} ms",
                        s.streams,
                        s.received,
                        s.loss_percent(),
                        s.dropped_by_harness,
                        s.max_jitter_ms,
                        s.interarrival_dev_p99_ms()
                    ),
                );
            }
        }
        if let Some(drops) = self.udp_receive_buffer_drops {
            line(
                &mut out,
                "UDP receive-buffer drops",
                format!("{drops} on this machine (every socket) during the run"),
            );
        }
        if let Some(c) = &self.server {
            line(
                &mut out,
                "server CPU",
                format!(
                    "{:.2} s, {:.3} ms per call",
                    c.cpu_seconds, c.cpu_ms_per_call
                ),
            );
            line(
                &mut out,
                "server resident memory",
                format!(
                    "{:.1} → {:.1} MiB; {} calls alive at most, {:.1} KiB per call",
                    c.rss_before_mib, c.rss_after_mib, c.peak_live_calls, c.kib_per_live_call
                ),
            );
        }
        out
    }
}

/// Runs a load test to its end (bounded by calls and `max_seconds`).
pub async fn run(opts: LoadOptions) -> anyhow::Result<Report> {
    anyhow::ensure!(
        opts.server.ip().is_loopback() && opts.bind.is_loopback(),
        "the load harness only sends to loopback addresses"
    );
    let metrics = Arc::new(Metrics::new());
    let pacer = anyhow::Context::context(rtp::Pacer::start(), "the harness's RTP threads")?;
    let agents = ua::Seats::start(&opts, metrics.clone(), pacer.clone(), None).await?;
    let registered = if opts.scenario == Scenario::Ivr {
        0
    } else {
        agents.register_all(&opts).await
    };
    // The self-service system the mixed callers are handed to.
    let _backend = match opts.scenario {
        Scenario::Mixed => {
            let at = Some(opts.backend);
            let backend = ua::Seats::start(&opts, metrics.clone(), pacer.clone(), at).await;
            Some(backend.map_err(|e| {
                anyhow::anyhow!("--backend {}: {e} (is something else there?)", opts.backend)
            })?)
        }
        _ => None,
    };
    if matches!(opts.scenario, Scenario::Queue | Scenario::Mixed) {
        anyhow::ensure!(
            registered > 0,
            "no agent could register (are the accounts provisioned? try --provision)"
        );
    }
    let callers = ua::Callers::start(&opts, metrics.clone(), pacer.clone()).await?;
    let drops_before = udp_receive_buffer_errors();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(opts.max_seconds);
    let progress = indicatif::ProgressBar::new(opts.calls);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut tasks = tokio::task::JoinSet::new();
    let interval = Duration::from_secs_f64(1.0 / opts.cps.max(0.01));
    let mut next_start = Instant::now();
    let mut last_progress = Instant::now();
    for i in 0..opts.calls {
        if Instant::now() >= deadline {
            break;
        }
        match opts.concurrency {
            Some(c) => {
                while tasks.len() >= c.max(1) {
                    let _ = tasks.join_next().await;
                }
            }
            None => {
                tokio::time::sleep_until(next_start).await;
                next_start += interval;
            }
        }
        while tasks.try_join_next().is_some() {}
        metrics.attempted.fetch_add(1, Ordering::Relaxed);
        match opts.scenario {
            Scenario::Register => {
                let a = agents.clone();
                let o = opts.clone();
                tasks.spawn(async move { a.register_one(&o, i).await });
            }
            Scenario::Queue | Scenario::Ivr | Scenario::Mixed => {
                let c = callers.clone();
                let plan = opts.plan(i);
                tasks.spawn(async move { c.call(i, plan).await });
            }
        }
        if last_progress.elapsed() > Duration::from_millis(250) {
            last_progress = Instant::now();
            progress.set_position(i + 1);
            progress.set_message(format!(
                "completed {} failed {} active {}",
                metrics.completed.load(Ordering::Relaxed),
                metrics
                    .failed
                    .lock()
                    .map(|f| f.values().sum::<u64>())
                    .unwrap_or(0),
                metrics.active.load(Ordering::Relaxed)
            ));
        }
    }
    let launch_seconds = started.elapsed().as_secs_f64();
    // Let the calls in flight finish, within the deadline.
    let drain = tokio::time::timeout_at(
        deadline.max(Instant::now() + Duration::from_secs(1)),
        async { while tasks.join_next().await.is_some() {} },
    )
    .await;
    if drain.is_err() {
        let left = tasks.len() as u64;
        tasks.abort_all();
        for _ in 0..left {
            metrics.fail("unfinished at max_seconds");
        }
    }
    // The far ends' figures come in as their calls end (after the BYE
    // the caller saw answered): wait a little for the last of them.
    let far_ends = Instant::now() + Duration::from_secs(2);
    while metrics.answering.load(Ordering::Relaxed) > 0 && Instant::now() < far_ends {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    progress.finish_and_clear();
    if registered > 0 {
        agents.unregister_all(&opts).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let attempted = metrics.attempted.load(Ordering::Relaxed);
    let get = |h: &Mutex<Histogram<u64>>| h.lock().map(|h| Percentiles::of(&h)).unwrap_or_default();
    let report = Report {
        scenario: opts.scenario,
        attempted,
        completed: metrics.completed.load(Ordering::Relaxed),
        abandoned: metrics.abandoned.load(Ordering::Relaxed),
        failed: metrics.failed.lock().map(|f| f.clone()).unwrap_or_default(),
        seconds,
        // Over the launch period: the drain at the end is not part of the rate.
        achieved_cps: attempted.saturating_sub(1) as f64 / launch_seconds.max(1e-9),
        setup_180_ms: get(&metrics.setup_180),
        setup_200_ms: get(&metrics.setup_200),
        first_audio_ms: get(&metrics.first_audio),
        to_seat_ms: get(&metrics.to_seat),
        classes: metrics
            .classes
            .lock()
            .map(|c| c.iter().map(|(k, v)| (k.to_string(), *v)).collect())
            .unwrap_or_default(),
        caller_rtp: metrics
            .caller_rtp
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default(),
        agent_rtp: metrics
            .agent_rtp
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default(),
        pacer_late_ms: get(&pacer.lateness_us),
        server: None,
        udp_receive_buffer_drops: drops_before
            .zip(udp_receive_buffer_errors())
            .map(|(before, after)| after.saturating_sub(before)),
    };
    Ok(report)
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    #[test]
    fn the_kernels_receive_buffer_drops_are_read_by_column_name() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
            Udp: 253145759 808857 3109277 258072674 3109270 0\n\
            UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
            UdpLite: 0 0 0 0 5 0\n";
        assert_eq!(rcvbuf_errors_of(snmp), Some(3_109_270));
        assert_eq!(rcvbuf_errors_of("Udp: RcvbufErrors\n"), None);
        assert_eq!(rcvbuf_errors_of("Udp: RcvbufErrors\nUdp: many\n"), None);
        assert!(
            udp_receive_buffer_errors().is_some(),
            "Linux has /proc/net/snmp"
        );
    }

    #[test]
    fn keys_and_mixes_are_read_with_errors_that_say_what_to_write() {
        assert_eq!(
            parse_keys("1@1500,#@4000"),
            Ok(vec![
                ('1', Duration::from_millis(1500)),
                ('#', Duration::from_millis(4000))
            ])
        );
        assert_eq!(parse_keys(""), Ok(vec![]));
        for bad in ["1", "12@5", "x@5", "1@soon"] {
            let e = parse_keys(bad).expect_err(bad);
            assert!(e.starts_with(&format!("{bad:?}")), "{e}");
        }
        assert_eq!(parse_mix("60,25,15"), Ok([60, 25, 15]));
        assert!(parse_mix("0,0,0").is_err());
        assert!(parse_mix("60,40").is_err());
    }

    #[test]
    fn a_mix_is_spread_evenly_over_the_calls() {
        let mut seen = [0u32; 3];
        for i in 0..1000 {
            seen[class_of(i, [60, 25, 15])] += 1;
        }
        for (got, want) in seen.iter().zip([600, 250, 150]) {
            assert!(got.abs_diff(want) <= 5, "{seen:?}");
        }
        // Ten calls already hold every kind.
        let first: std::collections::BTreeSet<usize> =
            (0..10).map(|i| class_of(i, [60, 25, 15])).collect();
        assert_eq!(first.len(), 3);
        // A kind of weight 0 never comes.
        assert!((0..100).all(|i| class_of(i, [0, 1, 0]) == 1));
    }
}

#[cfg(test)]
mod cost_tests {
    use super::*;

    #[test]
    fn the_server_cost_is_cpu_per_call_and_memory_per_call_alive_at_the_peak() {
        let mib = 1024 * 1024;
        let at = |live_calls, rss_mib: u64, cpu_seconds| Sample {
            live_calls,
            rss_bytes: rss_mib * mib,
            cpu_seconds,
        };
        let before = at(0, 40, 10.0);
        let during = [at(100, 45, 11.0), at(400, 60, 12.0), at(200, 55, 13.0)];
        let after = at(0, 50, 14.0);
        let c = ServerCost::from_samples(&before, &during, &after, 2000);
        assert!((c.cpu_seconds - 4.0).abs() < 1e-9);
        assert!((c.cpu_ms_per_call - 2.0).abs() < 1e-9);
        assert_eq!(c.peak_live_calls, 400);
        // 20 MiB over 400 calls.
        assert!((c.kib_per_live_call - 51.2).abs() < 1e-9, "{c:?}");
        assert!((c.rss_before_mib - 40.0).abs() < 1e-9);
        // No samples with calls: no per-call memory claimed.
        let c = ServerCost::from_samples(&before, &[], &after, 0);
        assert_eq!(
            (c.peak_live_calls, c.kib_per_live_call, c.cpu_ms_per_call),
            (0, 0.0, 0.0)
        );
        let status = serde_json::json!({ "live_calls": 3, "process": { "rss_bytes": 5, "cpu_seconds": 1.5 } });
        assert_eq!(
            Sample::of(&status),
            Some(Sample {
                live_calls: 3,
                rss_bytes: 5,
                cpu_seconds: 1.5
            })
        );
        assert_eq!(Sample::of(&serde_json::json!({})), None);
    }
}

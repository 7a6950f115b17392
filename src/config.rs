//! Settings: built-in defaults, then a TOML file, then `YIHAOTONG_*` variables.
//!
//! Room: the front hall. It reads configuration once at start (and at
//! `yihaotong check`) and hands out a plain [`Settings`] value; nothing else
//! reads files or the environment for settings. Errors name the layer, and
//! for the file the line and column.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::text::seconds;
use anyhow::{bail, Context};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The defaults, compiled in so `yihaotong run` works from any folder.
pub const DEFAULTS: &str = include_str!("../config/yihaotong.toml");

/// All settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Folder for the database (db.redb), the admin socket and the archive.
    pub data_dir: PathBuf,
    /// Folder of prompt files.
    pub sounds_dir: PathBuf,
    /// Folder of IVR flow files (and `calendars/`).
    pub flows_dir: PathBuf,
    /// Seconds calls in progress may take to finish after SIGTERM.
    #[serde(deserialize_with = "seconds")]
    pub drain_timeout: u64,
    /// `[sip]`
    pub sip: SipSettings,
    /// `[rtp]`
    pub rtp: RtpSettings,
    /// `[trunk]`
    pub trunk: TrunkSettings,
    /// `[queue]`
    pub queue: QueueSettings,
    /// `[ivr]`
    pub ivr: IvrSettings,
    /// `[recording]`
    pub recording: RecordingSettings,
    /// `[store]`: the database itself.
    pub store: StoreSettings,
    /// `[records]`: how long CDRs, the queue log and the audit log stay in
    /// the database, and where older days go.
    pub records: RecordsSettings,
    /// `[transfer]`
    pub transfer: TransferSettings,
    /// `[outbound]`: what agents may dial through the trunk.
    pub outbound: crate::outbound::OutboundSettings,
    /// `[admin]`: the HTTP API.
    pub admin: AdminSettings,
    /// `[limits]`
    pub limits: crate::overload::LimitSettings,
    /// `[queues.NAME]`: the agent queues flows and routes may name.
    pub queues: BTreeMap<String, QueueDef>,
    /// `[backends.NAME]`: systems a flow can hand calls to.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendDef>,
    /// `[webhook]`: how every webhook is delivered.
    pub webhook: WebhookSettings,
    /// `[webhooks.NAME]`: where events go by HTTP POST.
    #[serde(default)]
    pub webhooks: BTreeMap<String, WebhookDef>,
    /// `[log]`: what the process logs and how.
    pub log: LogSettings,
}

/// `[log]`: the process's log lines.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` (for people) or `json` (one object per line, for shippers).
    #[serde(deserialize_with = "choice")]
    pub format: LogFormat,
    /// An `EnvFilter` directive (`info`, `yihaotong=debug,warn`); `RUST_LOG`
    /// overrides it.
    pub level: String,
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Plain lines; coloured only on a terminal and without `NO_COLOR`.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[webhook]`: delivery rules every webhook follows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Seconds one POST may take (connect, send, answer).
    #[serde(deserialize_with = "seconds")]
    pub timeout: u64,
    /// Tries per event before it is a dead letter.
    pub attempts: u32,
    /// Seconds before the first retry; doubled for each one after.
    #[serde(deserialize_with = "seconds")]
    pub backoff: u64,
    /// Longest wait between tries, seconds.
    #[serde(deserialize_with = "seconds")]
    pub max_backoff: u64,
    /// Undelivered events a hook may hold; more are dead letters.
    pub max_pending: usize,
}

/// `[webhooks.NAME]`: one receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDef {
    /// Where to POST (`http://host:port/path`).
    pub url: String,
    /// Event kinds it wants: `call.ended`, `call.*`, or `*`.
    pub events: Vec<String>,
    /// The HMAC-SHA256 key its requests are signed with.
    pub secret: String,
}

impl WebhookDef {
    /// Checks one hook's settings; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        let hook = self;
        let uri: axum::http::Uri = hook
            .url
            .parse()
            .map_err(|e| format!("url: {:?} is not a URL: {e}", hook.url))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(format!(
                "url: {:?} must be http://host[:port]/path (https is not supported: put a TLS proxy in front)",
                hook.url
            ));
        }
        if hook.events.is_empty() {
            return Err("events: name at least one event kind (or \"*\")".into());
        }
        if let Some(bad) = hook.events.iter().find(|p| !valid_pattern(p)) {
            return Err(format!(
                "events: {bad:?} is not an event kind, a prefix like \"call.*\", or \"*\""
            ));
        }
        if hook.secret.chars().count() < 16 {
            return Err("secret: must be at least 16 characters".into());
        }
        Ok(())
    }
}

/// Whether `pattern` (`call.ended`, `call.*`, `*`) is well formed.
pub(crate) fn valid_pattern(pattern: &str) -> bool {
    let name = pattern.strip_suffix(".*").unwrap_or(pattern);
    pattern == "*"
        || (!name.is_empty()
            && name.len() <= 64
            && name
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')))
}

/// `[ivr]`: the flow interpreter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IvrSettings {
    /// Local time for `branch` time and date tests, minutes east of UTC.
    pub utc_offset_minutes: i32,
    /// Node steps one call may take before its flow's `exhausted` path.
    pub max_steps: u32,
    /// Media engine threads (each paces and polls its share of IVR streams).
    pub media_threads: usize,
    /// Ask for SCHED_FIFO for the media threads.
    pub media_realtime: bool,
}

/// The fixed offset `minutes` east of UTC (UTC when out of range; settings
/// validation keeps it within ±14 h).
pub fn utc_offset(minutes: i32) -> chrono::FixedOffset {
    chrono::FixedOffset::east_opt(minutes.saturating_mul(60))
        .unwrap_or(chrono::FixedOffset::east_opt(0).expect("UTC is a valid offset"))
}

/// Wall-clock time now at `offset`, to the second.
pub fn local_now(offset: chrono::FixedOffset) -> chrono::NaiveDateTime {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    chrono::DateTime::from_timestamp(now.as_secs() as i64, 0)
        .unwrap_or_default()
        .with_timezone(&offset)
        .naive_local()
}

/// `[admin]`: the HTTP admin and CTI API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Address the API listens on (empty: no API).
    pub listen: String,
    /// Events kept for clients reconnecting with `since`.
    pub event_backlog: usize,
    /// Events a live consumer may fall behind before it is cut off.
    pub event_lag: usize,
    /// Seconds between `queue.stats` events (0: none).
    #[serde(deserialize_with = "seconds")]
    pub queue_stats_every: u64,
}

impl AdminSettings {
    /// The address to serve on, if any (validated at load).
    pub fn address(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

/// `[recording]`: agent calls recorded for supervision.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingSettings {
    /// Record every call an agent answers.
    pub enabled: bool,
    /// Where (empty: `data_dir/recordings`).
    pub dir: String,
    /// Days a recording is kept (0: forever).
    pub retention_days: u64,
}

/// `[store]`: the embedded database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// redb's page cache, MiB: the most of the database kept in memory.
    pub cache_mb: u64,
}

/// `[records]`: record retention in the database and the daily archive.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsSettings {
    /// Days CDRs, queue-log lines and audit entries stay in the database
    /// (0: for ever); older whole days are archived, then removed.
    pub keep_days: u64,
    /// Where archived days go (empty: `data_dir/archive`).
    pub archive_dir: String,
}

impl Settings {
    /// The records archive folder.
    pub fn archive_dir(&self) -> PathBuf {
        if self.records.archive_dir.is_empty() {
            self.data_dir.join("archive")
        } else {
            PathBuf::from(&self.records.archive_dir)
        }
    }

    /// Local wall-clock time (`[ivr] utc_offset_minutes`).
    pub fn local_now(&self) -> chrono::NaiveDateTime {
        local_now(utc_offset(self.ivr.utc_offset_minutes))
    }

    /// The recordings folder.
    pub fn recordings_dir(&self) -> PathBuf {
        if self.recording.dir.is_empty() {
            self.data_dir.join("recordings")
        } else {
            PathBuf::from(&self.recording.dir)
        }
    }
}

/// One agent queue: every key but `description` and `overflow` defaults to `[queue]`'s.
/// `[queues.NAME]` seeds the store's queues; `yihaotong queues` and
/// `/api/v1/queues` keep them (written as JSON, keys left out when unset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDef {
    /// What it serves.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// How agents are chosen.
    #[serde(
        default,
        deserialize_with = "opt_choice",
        skip_serializing_if = "Option::is_none"
    )]
    pub strategy: Option<Strategy>,
    /// Ring time per offer, seconds.
    #[serde(
        default,
        deserialize_with = "opt_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub ring_timeout: Option<u64>,
    /// Wrap-up after each call, seconds.
    #[serde(
        default,
        deserialize_with = "opt_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub wrap_up: Option<u64>,
    /// Longest wait in line, seconds (0: no limit).
    #[serde(
        default,
        deserialize_with = "opt_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_wait: Option<u64>,
    /// Where callers go when `max_wait` passes or the queue empties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<Overflow>,
    /// A flow the caller walks when the agent hangs up first (the bundled
    /// `rating`: 满意度评价); it overrides the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_call_flow: Option<String>,
    /// Most callers in line (0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_waiting: Option<usize>,
    /// Member conditions under which callers may not join.
    #[serde(
        default,
        deserialize_with = "opt_choices",
        skip_serializing_if = "Option::is_none"
    )]
    pub join_empty: Option<Vec<EmptyWhen>>,
    /// Member conditions under which waiting callers leave.
    #[serde(
        default,
        deserialize_with = "opt_choices",
        skip_serializing_if = "Option::is_none"
    )]
    pub leave_empty: Option<Vec<EmptyWhen>>,
    /// Prompt looped while callers wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moh: Option<String>,
    /// Seconds between telling a waiting caller their place (0: never).
    #[serde(
        default,
        deserialize_with = "opt_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub announce_position: Option<u64>,
    /// Seconds between telling a waiting caller the expected wait (0: never).
    #[serde(
        default,
        deserialize_with = "opt_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub announce_wait: Option<u64>,
    /// A prompt played to waiting callers every `periodic_announce_every` seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periodic_announce: Option<String>,
    /// Seconds between periodic announcements (0: never).
    #[serde(
        default,
        deserialize_with = "opt_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub periodic_announce_every: Option<u64>,
    /// Overrides `[queue] callback_after`.
    #[serde(
        default,
        deserialize_with = "opt_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub callback_after: Option<u64>,
    /// Seconds within which an answer counts as in service level.
    #[serde(
        default,
        deserialize_with = "opt_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_level: Option<u64>,
    /// Seconds before an agent who missed a caller is offered them again.
    #[serde(
        default,
        deserialize_with = "opt_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry: Option<u64>,
    /// Consecutive missed offers before an agent goes on break (0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_no_answer: Option<u32>,
    /// Skills: seconds per level step before a higher level is offered the caller.
    #[serde(
        default,
        deserialize_with = "opt_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub tier_wait: Option<u64>,
    /// Seconds within which an abandoning caller who calls again gets their place.
    #[serde(
        default,
        deserialize_with = "opt_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub resume_window: Option<u64>,
}

/// Where a queue sends callers it cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Overflow {
    /// Another queue (the caller keeps their call data).
    Queue(String),
    /// An IVR flow.
    Flow(String),
}

/// One backend system reached over SIP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendDef {
    /// Its SIP URI (literal IP address): its only target, or the first.
    #[serde(default)]
    pub uri: String,
    /// More targets (or all of them, without `uri`): each a URI and, for
    /// `select = "weight"`, a weight.
    #[serde(default)]
    pub targets: Vec<BackendTarget>,
    /// How a hand-off picks among the targets that are up: `order` (the
    /// first, then the next on failure) or `weight` (drawn by weight per
    /// call, then the others).
    #[serde(default, deserialize_with = "choice")]
    pub select: Select,
    /// Seconds to wait for a target to answer before the next one (or the
    /// flow's fallback).
    #[serde(default = "default_backend_timeout", deserialize_with = "seconds")]
    pub answer_timeout: u64,
    /// Seconds between OPTIONS probes of each target (0: not probed, always up).
    #[serde(default, deserialize_with = "seconds")]
    pub health_interval: u64,
    /// Failed probes in a row that mark a target down.
    #[serde(default = "default_down_after")]
    pub down_after: u32,
    /// Good probes in a row that mark a target up again.
    #[serde(default = "default_up_after")]
    pub up_after: u32,
    /// Calls the backend may hold at once, over all its targets (0: no
    /// limit of ours).
    #[serde(default)]
    pub max_calls: usize,
    /// Keys the caller presses while with the backend to come back to the
    /// hand-off's fallback (the seats) with the data so far, e.g. `*0`
    /// (RFC 4733 or SIP INFO; still relayed). Empty: none.
    #[serde(default)]
    pub return_keys: String,
}

/// One target of a backend.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTarget {
    /// SIP URI with a literal IP address.
    pub uri: String,
    /// Share of calls under `select = "weight"` (1 or more).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// How a backend's targets are tried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Select {
    /// In the order given (primary, then standby).
    #[default]
    Order,
    /// Drawn by weight for each call; the rest follow, drawn the same way.
    Weight,
}

impl BackendDef {
    /// Every target: `uri` first (weight 1), then `targets`.
    pub fn target_list(&self) -> Vec<BackendTarget> {
        let first = (!self.uri.is_empty()).then(|| BackendTarget {
            uri: self.uri.clone(),
            weight: 1,
        });
        first
            .into_iter()
            .chain(self.targets.iter().cloned())
            .collect()
    }
}

fn default_weight() -> u32 {
    1
}

fn default_down_after() -> u32 {
    3
}

fn default_up_after() -> u32 {
    2
}

fn default_backend_timeout() -> u64 {
    8
}

/// `[sip]`: signalling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipSettings {
    /// UDP and TCP listen address.
    pub listen: SocketAddr,
    /// Digest realm.
    pub domain: String,
    /// Address for Via/Contact/SDP; empty means the listen address.
    pub advertise: String,
    /// Transaction bound per worker.
    pub max_transactions: usize,
    /// Nonce lifetime, seconds.
    #[serde(deserialize_with = "seconds")]
    pub nonce_lifetime: u64,
    /// Digest challenges sent, in order of preference (RFC 7616/8760).
    #[serde(deserialize_with = "choices")]
    pub digest_algorithms: Vec<crate::sip::auth::Algorithm>,
    /// Shortest registration accepted, seconds.
    pub min_expires: u32,
    /// Longest registration granted, seconds.
    pub max_expires: u32,
    /// Registration interval when the phone names none, seconds.
    pub default_expires: u32,
    /// Failures for one account from one source before that account is
    /// refused from that source.
    pub auth_fail_limit: u32,
    /// Accounts failing from one source before the whole source is refused.
    pub auth_fail_accounts: u32,
    /// Window the failures are counted in, seconds.
    #[serde(deserialize_with = "seconds")]
    pub auth_fail_window: u64,
    /// First block period, seconds (doubles while failures go on).
    #[serde(deserialize_with = "seconds")]
    pub auth_block: u64,
    /// Contacts per agent.
    pub max_contacts: usize,
    /// SIP workers (0 = cores).
    pub workers: usize,
    /// Answer out-of-dialog requests from sources that are neither a trunk
    /// nor a registered agent (false: silence, so scanners find nothing).
    pub answer_strangers: bool,
    /// OPTIONS from strangers: as `answer_strangers`, or decided on their own.
    #[serde(deserialize_with = "choice")]
    pub stranger_options: StrangerOptions,
    /// `Server` / `User-Agent` header value; empty sends neither.
    pub product: String,
}

/// `[sip] stranger_options`: what an OPTIONS from a stranger gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrangerOptions {
    /// As `answer_strangers` says.
    Same,
    /// Always a 200.
    Answer,
    /// Never an answer.
    Ignore,
}

impl SipSettings {
    /// Whether an out-of-dialog `method` from a stranger gets any answer.
    pub fn answers_stranger(&self, method: &crate::sip::message::Method) -> bool {
        match (method, self.stranger_options) {
            (crate::sip::message::Method::Options, StrangerOptions::Answer) => true,
            (crate::sip::message::Method::Options, StrangerOptions::Ignore) => false,
            _ => self.answer_strangers,
        }
    }
}

/// `[rtp]`: media.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtpSettings {
    /// Media address.
    pub address: IpAddr,
    /// Lowest RTP port.
    pub port_min: u16,
    /// Highest RTP port.
    pub port_max: u16,
    /// Silence on an answered leg before hang-up, seconds.
    #[serde(deserialize_with = "seconds")]
    pub rtp_timeout: u64,
}

/// `[trunk]`: the PSTN side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkSettings {
    /// Trusted trunk sources.
    pub allow: Vec<IpNet>,
    /// Dialed-number prefixes to strip.
    pub normalize: Vec<String>,
    /// Gateway for transfers to plain numbers (a SIP URI; empty = none).
    #[serde(default)]
    pub outbound: String,
}

impl TrunkSettings {
    /// Whether `ip` is one of the trusted trunk sources.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|net| net.contains(&ip))
    }
}

/// `[transfer]`: where agents may send a call from their phones besides
/// other agents and queues.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferSettings {
    /// Emergency numbers: sent out through `[trunk] outbound` ahead of any limit.
    pub emergency: Vec<String>,
    /// One-key transfer targets (一键互转) by the name agents dial: a number
    /// (sent out through `[trunk] outbound`) or a `sip:` URI.
    #[serde(default)]
    pub centres: BTreeMap<String, String>,
    /// Codes an agent transfers to that send the caller into a flow as
    /// the agent leaves (`"*88" = "rating"`: 满意度评价 on purpose).
    #[serde(default)]
    pub flows: BTreeMap<String, String>,
}

/// `[queue]`: what every queue does unless its `[queues.NAME]` says otherwise.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// How agents are chosen.
    #[serde(deserialize_with = "choice")]
    pub strategy: Strategy,
    /// Ring time per agent, seconds.
    #[serde(deserialize_with = "seconds")]
    pub ring_timeout: u64,
    /// Wrap-up after each call, seconds.
    #[serde(deserialize_with = "seconds")]
    pub wrap_up: u64,
    /// Longest wait in line, seconds (0: no limit).
    #[serde(deserialize_with = "seconds")]
    pub max_wait: u64,
    /// Most callers in line (0: no limit).
    pub max_waiting: usize,
    /// Member conditions under which callers may not join.
    #[serde(deserialize_with = "choices")]
    pub join_empty: Vec<EmptyWhen>,
    /// Member conditions under which waiting callers leave.
    #[serde(deserialize_with = "choices")]
    pub leave_empty: Vec<EmptyWhen>,
    /// Prompt looped while callers wait.
    pub moh: String,
    /// Seconds between telling a waiting caller their place (0: never).
    #[serde(deserialize_with = "seconds")]
    pub announce_position: u64,
    /// Seconds between telling a waiting caller the expected wait (0: never).
    #[serde(deserialize_with = "seconds")]
    pub announce_wait: u64,
    /// A prompt played to waiting callers now and then ("" = none).
    pub periodic_announce: String,
    /// Seconds between periodic announcements (0: never).
    #[serde(deserialize_with = "seconds")]
    pub periodic_announce_every: u64,
    /// Seconds within which an answer counts as in service level.
    #[serde(deserialize_with = "seconds")]
    pub service_level: u64,
    /// Seconds before an agent who missed a caller is offered them again.
    #[serde(deserialize_with = "seconds")]
    pub retry: u64,
    /// Consecutive missed offers before an agent goes on break (0: never).
    pub max_no_answer: u32,
    /// Skills: seconds per level step.
    #[serde(deserialize_with = "seconds")]
    pub tier_wait: u64,
    /// Seconds within which an abandoning caller who calls again gets their place.
    #[serde(deserialize_with = "seconds")]
    pub resume_window: u64,
    /// Caller list (see `yihaotong lists`) whose callers wait with priority
    /// in every queue; empty = none.
    pub priority_list: String,
    /// Seconds between flushes of CDRs and queue-log lines to disk (a kill -9
    /// loses at most this much; a clean stop loses nothing).
    #[serde(deserialize_with = "seconds")]
    pub record_flush: u64,
    /// Seconds of waiting before a caller a flow answered is offered a
    /// callback (0: never); the offer repeats at this period.
    #[serde(deserialize_with = "seconds")]
    pub callback_after: u64,
    /// The key that books the callback.
    pub callback_key: char,
    /// Times the citizen is called back before the callback is given up.
    pub callback_attempts: u32,
    /// Seconds before a callback the citizen did not answer is tried again.
    #[serde(deserialize_with = "seconds")]
    pub callback_retry: u64,
    /// Seconds the citizen's phone rings on a callback.
    #[serde(deserialize_with = "seconds")]
    pub callback_ring: u64,
}

/// How a queue picks among its free agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The agent free for the longest time.
    #[default]
    LongestIdle,
    /// The agent offered a call least recently (rotation with memory).
    RoundRobin,
    /// The agent who answered fewest calls from this queue.
    FewestCalls,
    /// Every free agent at once; the first to answer takes it.
    RingAll,
    /// Always in the same order: level, then agent id.
    Linear,
    /// Lowest skill level first (longest idle within a level); with
    /// `tier_wait`, level L is offered the caller only after (L-1)×tier_wait.
    Skills,
}

impl Strategy {
    /// Config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::LongestIdle => "longest-idle",
            Strategy::RoundRobin => "round-robin",
            Strategy::FewestCalls => "fewest-calls",
            Strategy::RingAll => "ring-all",
            Strategy::Linear => "linear",
            Strategy::Skills => "skills",
        }
    }
}

/// Member conditions under which a queue counts as empty (Asterisk's
/// `joinempty`/`leaveempty` reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmptyWhen {
    /// Logged out, or no live registration.
    Unavailable,
    /// On break.
    Paused,
    /// On a call.
    Inuse,
    /// Reserved or ringing for another caller.
    Ringing,
    /// In wrap-up.
    Wrapup,
}

/// The queues in service by name: the store's, which `[queues.NAME]` seeded.
pub type Queues = BTreeMap<String, QueueDef>;

impl Settings {
    /// Service level of a queue, seconds.
    pub fn service_level(&self, q: Option<&QueueDef>) -> u64 {
        q.and_then(|q| q.service_level)
            .unwrap_or(self.queue.service_level)
    }

    /// Hold prompt of a queue.
    pub fn moh(&self, q: Option<&QueueDef>) -> String {
        q.and_then(|q| q.moh.clone())
            .unwrap_or_else(|| self.queue.moh.clone())
    }

    /// What a queue tells its waiting callers, and how often.
    pub fn announcements(&self, q: Option<&QueueDef>) -> Announcements {
        let d = &self.queue;
        let secs = |v: Option<u64>, dflt: u64| std::time::Duration::from_secs(v.unwrap_or(dflt));
        Announcements {
            position: secs(q.and_then(|q| q.announce_position), d.announce_position),
            wait: secs(q.and_then(|q| q.announce_wait), d.announce_wait),
            periodic: q
                .and_then(|q| q.periodic_announce.clone())
                .unwrap_or_else(|| d.periodic_announce.clone()),
            periodic_every: secs(
                q.and_then(|q| q.periodic_announce_every),
                d.periodic_announce_every,
            ),
            callback: secs(q.and_then(|q| q.callback_after), d.callback_after),
        }
    }
}

/// What one queue's definition may be, whether from `[queues.NAME]` or the
/// CLI and API: a plain name, an overflow to another of `queues`, callbacks
/// only with an outbound trunk (`outbound`), a one-line description.
pub fn check_queue(
    name: &str,
    q: &QueueDef,
    queues: &std::collections::BTreeSet<String>,
    outbound: bool,
) -> Result<(), String> {
    if !crate::text::is_plain_name(name) || name.len() > 64 {
        return Err(format!(
            "queue name {name:?} must be 1-64 letters, digits, - and _"
        ));
    }
    if let Some(Overflow::Queue(to)) = &q.overflow {
        if to == name || !queues.contains(to) {
            return Err(format!(
                "overflow names queue {to:?}, which is not another queue (known: {})",
                queues.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    // A week bounds every span: beyond it a timer means a typo (and the
    // desk's clock arithmetic stays far from overflow).
    const WEEK: u64 = 7 * 86_400;
    for (key, secs) in [
        ("ring_timeout", q.ring_timeout),
        ("wrap_up", q.wrap_up),
        ("max_wait", q.max_wait),
        ("announce_position", q.announce_position),
        ("announce_wait", q.announce_wait),
        ("periodic_announce_every", q.periodic_announce_every),
        ("callback_after", q.callback_after),
        ("service_level", q.service_level),
        ("retry", q.retry),
        ("tier_wait", q.tier_wait),
        ("resume_window", q.resume_window),
    ] {
        if secs.is_some_and(|s| s > WEEK) {
            return Err(format!("{key} must be at most 168h (a week)"));
        }
    }
    if q.callback_after.is_some_and(|s| s > 0) && !outbound {
        return Err(
            "callback_after needs [trunk] outbound (callbacks go out through the trunk)".into(),
        );
    }
    if q.description.chars().count() > 256 || q.description.chars().any(char::is_control) {
        return Err("description must be one line of at most 256 characters".into());
    }
    Ok(())
}

/// A queue's announcements to waiting callers (a zero period: never).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcements {
    /// Period of "N callers ahead of you".
    pub position: std::time::Duration,
    /// Period of "about N minutes".
    pub wait: std::time::Duration,
    /// A prompt of the queue's own ("" = none).
    pub periodic: String,
    /// Its period.
    pub periodic_every: std::time::Duration,
    /// When (and how often) the callback offer is made.
    pub callback: std::time::Duration,
}

impl Settings {
    /// Loads defaults, then `file` (if any; `config/yihaotong.toml` is not read
    /// implicitly unless given), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        let text = match file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?,
            ),
            None => None,
        };
        Settings::from_text(text.as_deref().zip(file))
    }

    /// Like [`Settings::load`], with the file's text already read (`path`
    /// names it in messages).
    pub fn from_text(file: Option<(&str, &Path)>) -> anyhow::Result<Settings> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some((text, path)) = file {
            check_file(text, path)?;
            builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
        }
        let text_of_file = file.map(|(text, _)| text);
        let file = file.map(|(_, path)| path);
        // YIHAOTONG_CONFIG names the file (the command line reads it); it
        // is not a setting.
        let vars: config::Map<String, String> = std::env::vars()
            .filter(|(k, _)| k != "YIHAOTONG_CONFIG")
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("YIHAOTONG")
                .source(Some(vars))
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("sip.digest_algorithms")
                .with_list_parse_key("trunk.allow")
                .with_list_parse_key("trunk.normalize")
                .with_list_parse_key("queue.join_empty")
                .with_list_parse_key("queue.leave_empty")
                .with_list_parse_key("outbound.allow")
                .with_list_parse_key("outbound.premium")
                .try_parsing(true)
                .ignore_empty(true),
        );
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| {
                let e = e.to_string();
                // Where the file sets the key, say its line.
                let place = file.zip(text_of_file).and_then(|(path, text)| {
                    let key = e.split("for key `").nth(1)?.split('`').next()?;
                    let (section, name) = key.rsplit_once('.')?;
                    let line = find_line(text, section, name)?;
                    Some(format!("{}:{line}: ", path.display()))
                });
                anyhow::anyhow!(
                    "{}settings: {e} (layers: built-in defaults{}, YIHAOTONG_<SECTION>__<KEY> environment)",
                    place.unwrap_or_default(),
                    file.map(|p| format!(", {}", p.display())).unwrap_or_default()
                )
            })?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let w = &self.webhook;
        if w.timeout == 0 || w.attempts == 0 || w.max_pending == 0 || w.backoff > w.max_backoff {
            bail!("settings: [webhook] timeout, attempts and max_pending must be at least 1, and backoff at most max_backoff");
        }
        for (name, hook) in &self.webhooks {
            hook.check()
                .map_err(|e| anyhow::anyhow!("settings: [webhooks.{name}] {e}"))?;
        }
        if self.rtp.port_min >= self.rtp.port_max || self.rtp.port_max - self.rtp.port_min < 4 {
            bail!(
                "settings: [rtp] port_min must be below port_max with room for at least two calls"
            );
        }
        for (field, pct) in [
            ("max_media_busy_pct", self.limits.max_media_busy_pct),
            ("min_idle_cpu_pct", self.limits.min_idle_cpu_pct),
        ] {
            if pct > 100 {
                bail!("settings: [limits] {field} = {pct} is a percent: 0 to 100");
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            bail!(
                "settings: [log] level = {:?} is not a filter: give a level (error, warn, info, debug, trace) or target=level pairs",
                self.log.level
            );
        }
        if !(4..=65_536).contains(&self.store.cache_mb) {
            bail!(
                "settings: [store] cache_mb = {} is out of range: give 4 to 65536 (MiB)",
                self.store.cache_mb
            );
        }
        if self.sip.digest_algorithms.is_empty() {
            bail!("settings: [sip] digest_algorithms names no algorithm: give \"MD5\", \"SHA-256\" or both");
        }
        if self.sip.auth_fail_limit == 0 || self.sip.auth_fail_accounts == 0 {
            bail!("settings: [sip] auth_fail_limit and auth_fail_accounts must be at least 1");
        }
        if self.sip.min_expires > self.sip.max_expires {
            bail!("settings: [sip] min_expires is above max_expires");
        }
        if self.sip.domain.is_empty() || self.sip.domain.contains(['"', ' ']) {
            bail!("settings: [sip] domain must be a plain host name");
        }
        if !self.trunk.outbound.is_empty()
            && crate::sip::SipTarget::parse(&self.trunk.outbound).is_none()
        {
            bail!(
                "settings: [trunk] outbound {:?} must be a sip: URI with an IP address",
                self.trunk.outbound
            );
        }
        // (A queue's own callback_after is checked with the queue.)
        if self.queue.callback_after > 0 && self.trunk.outbound.is_empty() {
            bail!("settings: [queue] callback_after needs [trunk] outbound (callbacks go out through the trunk)");
        }
        if !self.queue.callback_key.is_ascii_digit()
            && !matches!(self.queue.callback_key, '*' | '#')
        {
            bail!("settings: [queue] callback_key must be one of 0-9 * #");
        }
        for (name, to) in &self.transfer.centres {
            let usable = if to.starts_with("sip:") {
                crate::sip::SipTarget::parse(to).is_some()
            } else {
                !to.is_empty()
                    && to.bytes().all(|b| b.is_ascii_digit())
                    && !self.trunk.outbound.is_empty()
            };
            if !usable {
                bail!(
                    "settings: [transfer.centres] {name} = {to:?} must be a sip: URI with an IP address, or digits with [trunk] outbound set"
                );
            }
        }
        for (name, b) in &self.backends {
            let keys_ok = b.return_keys.len() <= 8
                && b.return_keys
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '*' || c == '#');
            if !keys_ok {
                bail!(
                    "settings: [backends.{name}] return_keys {:?} must be up to 8 of 0-9 * #",
                    b.return_keys
                );
            }
            let targets = b.target_list();
            if targets.is_empty() {
                bail!("settings: [backends.{name}] needs a uri or targets");
            }
            for t in &targets {
                if crate::sip::SipTarget::parse(&t.uri).is_none() {
                    bail!(
                        "settings: [backends.{name}] uri {:?} must be a sip: URI with an IP address",
                        t.uri
                    );
                }
                if t.weight == 0 {
                    bail!(
                        "settings: [backends.{name}] target {:?}: weight must be 1 or more",
                        t.uri
                    );
                }
            }
        }
        for name in self.backends.keys() {
            if !crate::text::is_plain_name(name) {
                bail!("settings: backend name {name:?} must use letters, digits, - and _");
            }
        }
        let seeded: std::collections::BTreeSet<String> = self.queues.keys().cloned().collect();
        for (name, q) in &self.queues {
            if let Err(e) = check_queue(name, q, &seeded, !self.trunk.outbound.is_empty()) {
                bail!("settings: [queues.{name}] {e}");
            }
        }
        if !self.admin.listen.is_empty() && self.admin.address().is_none() {
            bail!(
                "settings: [admin] listen {:?} must be an IP address and port (or empty for no API)",
                self.admin.listen
            );
        }
        for entry in &self.outbound.allow {
            if let Err(e) = crate::outbound::check_entry(entry) {
                bail!("settings: [outbound] allow: {e}");
            }
        }
        for p in &self.outbound.premium {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                bail!("settings: [outbound] premium: {p:?} must be a prefix of digits");
            }
        }
        if self.queue.moh.is_empty() {
            bail!("settings: [queue] moh must name a prompt");
        }
        if self.ivr.utc_offset_minutes.abs() > 14 * 60 {
            bail!("settings: [ivr] utc_offset_minutes must be within ±840");
        }
        Ok(())
    }

    /// The address we write into Via, Contact and SDP.
    pub fn advertised_host(&self) -> String {
        if self.sip.advertise.is_empty() {
            self.sip.listen.to_string()
        } else {
            self.sip.advertise.clone()
        }
    }
}

/// Checks a settings file on its own, so an unknown key or bad value is
/// reported with the file's name, line and column.
fn check_file(text: &str, path: &Path) -> anyhow::Result<()> {
    // Every field optional, unknown keys refused: the file is a partial layer.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Partial {
        data_dir: Option<PathBuf>,
        sounds_dir: Option<PathBuf>,
        flows_dir: Option<PathBuf>,
        drain_timeout: Option<u64>,
        sip: Option<toml::Table>,
        ivr: Option<toml::Table>,
        queues: Option<toml::Table>,
        backends: Option<toml::Table>,
        rtp: Option<toml::Table>,
        trunk: Option<toml::Table>,
        queue: Option<toml::Table>,
        recording: Option<toml::Table>,
        transfer: Option<toml::Table>,
        outbound: Option<toml::Table>,
        limits: Option<toml::Table>,
        admin: Option<toml::Table>,
        webhook: Option<toml::Table>,
        webhooks: Option<toml::Table>,
        log: Option<toml::Table>,
    }
    let defaults: toml::Table = toml::from_str(DEFAULTS).context("built-in defaults")?;
    let partial: Partial =
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let sections = [
        ("sip", &partial.sip),
        ("rtp", &partial.rtp),
        ("trunk", &partial.trunk),
        ("queue", &partial.queue),
        ("ivr", &partial.ivr),
        ("recording", &partial.recording),
        ("transfer", &partial.transfer),
        ("outbound", &partial.outbound),
        ("limits", &partial.limits),
        ("admin", &partial.admin),
        ("webhook", &partial.webhook),
        ("log", &partial.log),
    ];
    for (name, table) in sections {
        let Some(table) = table else { continue };
        let known = defaults.get(name).and_then(|v| v.as_table());
        for key in table.keys() {
            if !known.is_some_and(|k| k.contains_key(key)) {
                let line = find_line(text, name, key);
                bail!(
                    "{}:{}: unknown key `{key}` in [{name}]",
                    path.display(),
                    line.map_or("?".into(), |l| l.to_string())
                );
            }
        }
    }
    Ok(())
}

/// [`seconds`] for a setting a queue may leave to `[queue]`.
fn opt_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    seconds(d).map(Some)
}

/// Deserializes an enum from its name with serde's own message, which lists
/// the names allowed (the config crate's says only "does not have variant
/// constructor").
pub(crate) fn choice<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error;
    named(&String::deserialize(d)?).map_err(D::Error::custom)
}

/// The enum value `name` names, or serde's message listing the names.
fn named<T: serde::de::DeserializeOwned>(name: &str) -> Result<T, serde::de::value::Error> {
    T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(name))
}

/// [`choice`] for a setting a queue may leave to `[queue]`.
fn opt_choice<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    choice(d).map(Some)
}

/// [`choice`] for each name of a list.
fn choices<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error;
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|name| named(name).map_err(D::Error::custom))
        .collect()
}

/// [`choices`] for a list a queue may leave to `[queue]`.
fn opt_choices<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    choices(d).map(Some)
}

fn find_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut in_section = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            in_section = t.trim_matches(['[', ']']).trim() == section;
        } else if in_section && t.split('=').next().map(str::trim) == Some(key) {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load() {
        let s = Settings::load(None).expect("defaults are valid");
        assert_eq!(s.sip.domain, "12345.hotline");
        assert!(s
            .trunk
            .allow
            .iter()
            .any(|n| n.contains(&"127.0.0.1".parse::<IpAddr>().expect("ip"))));
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("y.toml");
        std::fs::write(&path, "[sip]\ndomain = \"x\"\nlisen = \"1.2.3.4:5\"\n").expect("write");
        let err = Settings::load(Some(&path))
            .expect_err("typo must fail")
            .to_string();
        assert!(err.contains("y.toml:3"), "{err}");
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn a_file_may_set_every_section_of_the_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("y.toml");
        let text = "[recording]\nretention_days = 7\n[transfer]\nemergency = [\"110\"]\n\
                    [limits]\nmax_calls = 10\n[outbound]\nallow = [\"mobile\", \"0044\"]\n\
                    [log]\nformat = \"json\"\n";
        std::fs::write(&path, text).expect("write");
        let s = Settings::load(Some(&path)).expect("every section loads");
        assert_eq!(s.recording.retention_days, 7);
        assert_eq!(s.limits.max_calls, 10);
        assert_eq!(s.outbound.allow, ["mobile", "0044"]);
        assert_eq!(s.log.format, LogFormat::Json);
        std::fs::write(&path, "[limits]\nmax_call = 10\n").expect("write");
        let err = Settings::load(Some(&path)).expect_err("typo").to_string();
        assert!(
            err.contains("y.toml:2") && err.contains("max_call"),
            "{err}"
        );
    }

    #[test]
    fn backend_targets_are_checked_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("y.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).expect("write");
            Settings::load(Some(&path)).map_err(|e| e.to_string())
        };
        let s = load("[backends.hrss]\ntargets = [{ uri = \"sip:a@127.0.0.2:5060\", weight = 3 }]\nselect = \"weight\"\n")
            .expect("a pool loads");
        let list = s.backends["hrss"].target_list();
        assert_eq!(list.len(), 2, "the default uri first, then the pool");
        assert_eq!(
            (list[1].weight, s.backends["hrss"].select),
            (3, Select::Weight)
        );
        let err = load("[backends.hrss]\nuri = \"\"\n").expect_err("no target");
        assert!(
            err.contains("[backends.hrss] needs a uri or targets"),
            "{err}"
        );
        let err = load("[backends.hrss]\ntargets = [{ uri = \"sip:a@127.0.0.2\", weight = 0 }]\n")
            .expect_err("weight 0");
        assert!(
            err.contains("[backends.hrss]") && err.contains("weight must be 1"),
            "{err}"
        );
        let err = load("[backends.hrss]\ntargets = [{ uri = \"sip:a@host.example\" }]\n")
            .expect_err("a name");
        assert!(
            err.contains("must be a sip: URI with an IP address"),
            "{err}"
        );
    }

    #[test]
    fn durations_take_one_form_everywhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("y.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).expect("write");
            Settings::load(Some(&path)).map_err(|e| e.to_string())
        };
        let s = load(
            "[queue]\nring_timeout = \"15s\"\nmax_wait = \"5m\"\nwrap_up = 10\n\
                      [queues.hrss]\nretry = \"2m\"\n[sip]\nauth_block = \"1h\"\n\
                      [limits]\nretry_after = \"30s\"\n",
        )
        .expect("durations with units");
        assert_eq!(
            (s.queue.ring_timeout, s.queue.max_wait, s.queue.wrap_up),
            (15, 300, 10)
        );
        assert_eq!(s.queues["hrss"].retry, Some(120));
        assert_eq!(s.sip.auth_block, 3600);
        assert_eq!(s.limits.retry_after, 30);
        let err = load("[queue]\nring_timeout = \"15 seconds\"\n").expect_err("no such unit");
        assert!(
            err.starts_with(&format!("{}:2:", path.display()))
                && err.contains("queue.ring_timeout")
                && err.contains("\"15s\""),
            "{err}"
        );
        let err = load("[queue]\nring_timeout = \"1500ms\"\n").expect_err("not whole");
        assert!(err.contains("whole number of seconds"), "{err}");
    }

    #[test]
    fn a_value_not_allowed_is_named_with_the_values_allowed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("y.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).expect("write");
            Settings::load(Some(&path)).map_err(|e| e.to_string())
        };
        let err = load("[queue]\nstrategy = \"random\"\n").expect_err("random");
        assert!(
            err.starts_with(&format!("{}:2:", path.display()))
                && err.contains("`random`")
                && err.contains("`longest-idle`")
                && err.contains("`skills`"),
            "{err}"
        );
        let err = load("[queues.hrss]\ndescription = \"x\"\nstrategy = \"random\"\n")
            .expect_err("random");
        assert!(
            err.starts_with(&format!("{}:3:", path.display()))
                && err.contains("queues.hrss.strategy"),
            "{err}"
        );
        let err = load("[queue]\njoin_empty = [\"paused\", \"asleep\"]\n").expect_err("asleep");
        assert!(
            err.contains("`asleep`") && err.contains("`wrapup`"),
            "{err}"
        );
        let err = load("[sip]\ndigest_algorithms = [\"SHA-512\"]\n").expect_err("512");
        assert!(
            err.contains("`SHA-512`") && err.contains("`SHA-256`"),
            "{err}"
        );
        assert!(load("[queues.hrss]\nstrategy = \"ring-all\"\njoin_empty = []\n").is_ok());
        let err = load("[queues.hrss]\nretry = \"200h\"\n").expect_err("200 hours");
        assert!(
            err.contains("[queues.hrss] retry must be at most 168h"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_outbound_entry_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("y.toml");
        std::fs::write(&path, "[outbound]\nallow = [\"mobile\", \"bogus\"]\n").expect("write");
        let err = Settings::load(Some(&path)).expect_err("bogus").to_string();
        assert!(
            err.contains("[outbound] allow") && err.contains("bogus"),
            "{err}"
        );
    }

    #[test]
    fn a_hook_is_checked_field_by_field() {
        let hook = |url: &str, events: &[&str], secret: &str| WebhookDef {
            url: url.into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            secret: secret.into(),
        };
        let secret = "0123456789abcdef";
        assert_eq!(
            hook("http://127.0.0.1:8088/h", &["call.*"], secret).check(),
            Ok(())
        );
        let err = |h| WebhookDef::check(&h).err().unwrap_or_default();
        assert!(err(hook("https://x/h", &["*"], secret)).starts_with("url: "));
        assert!(err(hook("not a url", &["*"], secret)).starts_with("url: "));
        assert!(err(hook("http://x/h", &[], secret)).starts_with("events: "));
        assert!(err(hook("http://x/h", &["Call"], secret)).starts_with("events: "));
        assert!(err(hook("http://x/h", &["*"], "short")).starts_with("secret: "));
    }
}

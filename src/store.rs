//! The embedded database: agent accounts, registrations, the number plan.
//!
//! Room: the cellar. [`Store`] wraps one sled database and is the only code
//! that knows its trees and encodings (JSON values, so `sled` dumps stay
//! readable). Route writes are flushed at once (sled recovers to the last
//! flush after a crash); bindings are flushed by sled's own interval.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::QueueDef;
use crate::sip::auth::Credentials;

/// An agent (seat) account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    /// Login and SIP user name, e.g. "1001".
    pub id: String,
    /// Display name.
    pub name: String,
    /// Queues the agent serves.
    pub queues: Vec<String>,
    /// Digest HA1 values; never the password.
    pub credentials: Credentials,
    /// Level (skill tier, or penalty) per queue; 1 when not listed.
    #[serde(default)]
    pub levels: std::collections::BTreeMap<String, u32>,
    /// Wrap-up seconds after each call, overriding the queues'.
    #[serde(default)]
    pub wrap_up: Option<u64>,
    /// A fresh registration of the phone logs the agent in.
    #[serde(default = "yes")]
    pub auto_login: bool,
    /// May listen to, whisper to and barge into other agents' calls.
    #[serde(default)]
    pub supervisor: bool,
    /// What the agent may dial out through the trunk (classes and prefixes,
    /// see [`crate::outbound`]); `None`: `[outbound] allow`.
    #[serde(default)]
    pub dial: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

impl Agent {
    /// A new account: level 1 everywhere, queue wrap-up, auto-login.
    pub fn new(id: &str, name: &str, queues: Vec<String>, credentials: Credentials) -> Agent {
        Agent {
            id: id.to_string(),
            name: name.to_string(),
            queues,
            credentials,
            levels: Default::default(),
            wrap_up: None,
            auto_login: true,
            supervisor: false,
            dial: None,
        }
    }

    /// (queue, level) pairs.
    pub fn memberships(&self) -> Vec<(String, u32)> {
        self.queues
            .iter()
            .map(|q| (q.clone(), self.levels.get(q).copied().unwrap_or(1)))
            .collect()
    }
}

/// One registered contact of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// Contact URI as registered.
    pub contact: String,
    /// Where the REGISTER really came from (NAT: we send there).
    pub received: std::net::SocketAddr,
    /// "UDP" or "TCP".
    pub transport: String,
    /// TCP connection the REGISTER came on (0 = open a new one).
    #[serde(default)]
    pub conn: u64,
    /// Unix seconds when the binding lapses.
    pub expires_at: u64,
    /// Call-ID of the REGISTER that made it (RFC 3261 §10.3 ordering).
    pub call_id: String,
    /// CSeq of that REGISTER.
    pub cseq: u32,
}

/// A number-plan entry: dialed number (or prefix) → target, and how the
/// number joined 12345 (see [`crate::routing::Mode`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Normalized number or prefix.
    pub number: String,
    /// Queue the call goes to (when no flow is set).
    #[serde(default)]
    pub queue: String,
    /// IVR flow that takes the call (empty: straight to `queue`).
    #[serde(default)]
    pub flow: String,
    /// Hotline label for reports ("12345", "12315 market regulation").
    #[serde(default)]
    pub hotline: String,
    /// How the number joined 12345 (records written before modes existed
    /// read as `direct`).
    #[serde(default)]
    pub mode: crate::routing::Mode,
    /// `transition` only: local time (`YYYY-MM-DD HH:MM[:SS]`) from which
    /// `after_flow` takes the line's calls instead of `flow`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cutover: String,
    /// `transition` only: the flow after the cut-over.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub after_flow: String,
    /// A flow the caller walks when the agent hangs up first (a queue's
    /// own `after_call_flow` wins).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub after_call_flow: String,
}

/// The database handle. Cloning is cheap (sled trees are reference-counted).
#[derive(Clone)]
pub struct Store {
    /// Bumped on every agent or binding write, so readers can cache the
    /// directory and notice changes without a sled scan per call.
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Bumped on every account write only (not on registrations).
    accounts_generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    db: sled::Db,
    agents: sled::Tree,
    bindings: sled::Tree,
    routes: sled::Tree,
    /// Agent queues by name (JSON [`QueueDef`]); `[queues.NAME]` seeds them.
    queues: sled::Tree,
    meta: sled::Tree,
    /// Named caller lists for flows (`caller_in`): key `list\0number`.
    lists: sled::Tree,
    /// Operator switches for flows (`flag`): key = name, present = on.
    switches: sled::Tree,
    /// Agents' chosen presence (logged out, available, on break).
    presence: sled::Tree,
    /// Queue log lines, keyed by time (see [`record_key`]).
    queue_log: sled::Tree,
    /// Call detail records, keyed by end time.
    cdrs: sled::Tree,
    /// Recording metadata, keyed by file path.
    recordings: sled::Tree,
    callbacks: sled::Tree,
    live_calls: sled::Tree,
    /// API tokens by the SHA-256 of the secret (the secret is never kept).
    tokens: sled::Tree,
    /// API control actions, in time order (who, what, when).
    audit: sled::Tree,
    /// Sequence for audit keys within one millisecond.
    audit_seq: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

/// Changes to the `live_calls` tree in one batch of records.
#[derive(Debug, Default)]
pub struct LiveChanges {
    /// (Call-ID, the call's record so far) of calls that began.
    pub began: Vec<(Vec<u8>, Vec<u8>)>,
    /// Call-IDs of calls whose CDR is in the same batch.
    pub ended: Vec<Vec<u8>>,
}

impl LiveChanges {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.began.is_empty() && self.ended.is_empty()
    }
}

/// A callback a waiting caller booked: kept until the citizen is reached
/// or the attempts run out, so it survives a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackBooking {
    /// Key in the tree; bookings are served in this order after a restart.
    pub id: u64,
    /// Call-ID of the call that booked it.
    pub call_id: String,
    /// The citizen's number.
    pub number: String,
    /// Queue whose line it waits in.
    pub queue: String,
    /// Priority rank.
    pub rank: crate::acd::desk::Rank,
    /// Hotline label and dialed number of the original call.
    pub hotline: String,
    /// Dialed number.
    pub dialed: String,
    /// When it was booked (unix ms).
    pub requested: u64,
    /// Calls to the citizen so far.
    pub attempts: u32,
    /// The original call's data (`X-` headers) for the agent's screen.
    pub call_data: Vec<(String, String)>,
}

/// What is known about one recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingMeta {
    /// The WAV file.
    pub path: String,
    /// The caller's Call-ID (the CDR's).
    pub call_id: String,
    /// Agent recorded.
    pub agent: String,
    /// Queue the call came from.
    pub queue: String,
    /// Unix ms when recording started.
    pub started: u64,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Read everything; change agent states, monitor and transfer.
    Supervisor,
    /// Its own agent's state and calls.
    Agent,
    /// The work-order system: events, call data and call control.
    Ticketing,
}

impl Role {
    /// Its name in tokens and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Supervisor => "supervisor",
            Role::Agent => "agent",
            Role::Ticketing => "ticketing",
        }
    }
}

/// An API token's record (kept under the SHA-256 of its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Unique name, for listing and revoking.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// For the agent role: whose state and calls.
    #[serde(default)]
    pub agent: Option<String>,
    /// Unix seconds when it was made.
    pub created: u64,
}

/// One control action taken through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unix ms.
    pub at: u64,
    /// The token's name and role.
    pub who: String,
    /// What was done (`agent.state`…).
    pub action: String,
    /// To what (an agent ID, a call).
    pub target: String,
    /// The request's parameters.
    pub detail: serde_json::Value,
}

/// A time-ordered, unique key: Unix ms (big-endian) then a sequence number.
pub fn record_key(at_ms: u64, seq: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&at_ms.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Whether opening failed because another process holds the database lock
/// (sled 0.34 reports it as an `Other` I/O error with this text).
fn is_locked(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<sled::Error>(),
            Some(sled::Error::Io(io)) if io.to_string().starts_with("could not acquire lock")
        )
    })
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Whether this user may make and write the database under `data_dir`
/// (the folder, or the nearest folder above it that exists), without
/// writing anything: what `check` asks before `run` would fail.
pub fn writable(data_dir: &Path) -> anyhow::Result<()> {
    use nix::unistd::{access, AccessFlags};
    let db = data_dir.join("db");
    let probe = [db.as_path(), data_dir]
        .into_iter()
        .chain(data_dir.ancestors().skip(1))
        .find(|p| p.exists());
    let Some(probe) = probe else {
        return Ok(());
    };
    access(probe, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
        anyhow::anyhow!(
            "data_dir {}: {} is not writable by this user (uid {}): {e}; give it to the user the server runs as, or point data_dir (YIHAOTONG_DATA_DIR) elsewhere",
            data_dir.display(),
            probe.display(),
            nix::unistd::getuid()
        )
    })
}

impl Store {
    /// Opens the database, waiting up to `patience` while another process
    /// holds it (a command run offline a moment before, or a server that is
    /// stopping): the server does not fail to start over a brief overlap.
    pub fn open_waiting(data_dir: &Path, patience: std::time::Duration) -> anyhow::Result<Store> {
        let deadline = std::time::Instant::now() + patience;
        let mut told = false;
        loop {
            match Self::open(data_dir) {
                Err(e) if is_locked(&e) && std::time::Instant::now() < deadline => {
                    if !told {
                        tracing::info!(data_dir = %data_dir.display(), "the database is held by another process; waiting");
                        told = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// Opens (creating) the database under `data_dir`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Store> {
        writable(data_dir)?;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data_dir {}", data_dir.display()))?;
        let path = data_dir.join("db");
        let db = sled::open(&path).map_err(|e| {
            let io = match &e {
                sled::Error::Io(io) => Some(io),
                _ => None,
            };
            let why = if io.is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied) {
                format!(
                    "cannot open the database {}: this user (uid {}) may not write there; give data_dir to the user the server runs as, or point data_dir (YIHAOTONG_DATA_DIR) elsewhere",
                    path.display(),
                    nix::unistd::getuid()
                )
            } else if io.is_some_and(|io| io.to_string().starts_with("could not acquire lock")) {
                format!(
                    "cannot open the database {}: another process holds it (is a server already running on it?)",
                    path.display()
                )
            } else {
                format!("cannot open the database {}", path.display())
            };
            // The sled error stays in the chain: `open_waiting` reads it.
            anyhow::Error::new(e).context(why)
        })?;
        Ok(Store {
            generation: Default::default(),
            accounts_generation: Default::default(),
            agents: db.open_tree("agents")?,
            bindings: db.open_tree("bindings")?,
            routes: db.open_tree("routes")?,
            queues: db.open_tree("queues")?,
            meta: db.open_tree("meta")?,
            lists: db.open_tree("lists")?,
            switches: db.open_tree("switches")?,
            presence: db.open_tree("presence")?,
            queue_log: db.open_tree("queue_log")?,
            cdrs: db.open_tree("cdrs")?,
            recordings: db.open_tree("recordings")?,
            callbacks: db.open_tree("callbacks")?,
            live_calls: db.open_tree("live_calls")?,
            tokens: db.open_tree("tokens")?,
            audit: db.open_tree("audit")?,
            audit_seq: Default::default(),
            db,
        })
    }

    /// The directory generation (see the field).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The accounts generation: changes when an agent is added, changed or
    /// removed.
    pub fn accounts_generation(&self) -> u64 {
        self.accounts_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn bump_accounts(&self) {
        self.accounts_generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        self.bump();
    }

    fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// An agent's saved presence.
    pub fn presence(&self, id: &str) -> anyhow::Result<Option<crate::acd::desk::Presence>> {
        Self::get(&self.presence, id)
    }

    /// Saves an agent's presence (flushed at once: it must survive a crash).
    pub fn put_presence(&self, id: &str, p: &crate::acd::desk::Presence) -> anyhow::Result<()> {
        self.presence
            .insert(id.as_bytes(), serde_json::to_vec(p)?)?;
        self.presence.flush()?;
        Ok(())
    }

    /// Closes out calls a crash cut: every call that began and has no CDR
    /// gets one with disposition `crashed`, ended `now` (unix ms). Returns
    /// how many. Run at start, before any call.
    pub fn close_crashed_calls(&self, now: u64) -> anyhow::Result<usize> {
        let mut closed = 0;
        for (i, item) in self.live_calls.iter().enumerate() {
            let (k, v) = item?;
            let mut cdr: crate::acd::records::Cdr = match serde_json::from_slice(&v) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "unreadable live-call record dropped");
                    self.live_calls.remove(k)?;
                    continue;
                }
            };
            cdr.ended = now.max(cdr.arrived);
            cdr.disposition = crate::acd::records::Disposition::Crashed;
            if cdr.hung_up_by.is_empty() {
                cdr.hung_up_by = "system".into();
            }
            let key = record_key(cdr.ended, u32::MAX - i as u32);
            self.cdrs.insert(key, serde_json::to_vec(&cdr)?)?;
            self.live_calls.remove(k)?;
            closed += 1;
        }
        self.db.flush()?;
        Ok(closed)
    }

    /// A fresh id for a callback booking (increasing across restarts).
    pub fn next_callback_id(&self) -> anyhow::Result<u64> {
        Ok(self.db.generate_id()?)
    }

    /// Saves a callback booking, on disk when this returns.
    pub fn put_callback(&self, booking: &CallbackBooking) -> anyhow::Result<()> {
        self.callbacks
            .insert(booking.id.to_be_bytes(), serde_json::to_vec(booking)?)?;
        self.callbacks.flush()?;
        Ok(())
    }

    /// Forgets a callback booking (done or given up).
    pub fn remove_callback(&self, id: u64) -> anyhow::Result<()> {
        self.callbacks.remove(id.to_be_bytes())?;
        self.callbacks.flush()?;
        Ok(())
    }

    /// Every pending callback, oldest first (unreadable entries are skipped
    /// and logged, never fatal).
    pub fn callbacks(&self) -> anyhow::Result<Vec<CallbackBooking>> {
        let mut out = Vec::new();
        for item in self.callbacks.iter() {
            let (_, v) = item?;
            match serde_json::from_slice::<CallbackBooking>(&v) {
                Ok(b) => out.push(b),
                Err(e) => tracing::error!(error = %e, "unreadable callback booking skipped"),
            }
        }
        Ok(out)
    }

    /// Appends queue-log lines, CDRs and recording metadata (already keyed)
    /// in one batch per tree, then flushes: what returns Ok is on disk.
    pub fn append_records(
        &self,
        log: &[(Vec<u8>, Vec<u8>)],
        cdrs: &[(Vec<u8>, Vec<u8>)],
        recordings: &[(Vec<u8>, Vec<u8>)],
        live: &LiveChanges,
    ) -> anyhow::Result<()> {
        for (tree, rows) in [
            (&self.queue_log, log),
            (&self.cdrs, cdrs),
            (&self.recordings, recordings),
        ] {
            if rows.is_empty() {
                continue;
            }
            let mut batch = sled::Batch::default();
            for (k, v) in rows {
                batch.insert(k.as_slice(), v.as_slice());
            }
            tree.apply_batch(batch)?;
        }
        // Calls that began, then those that ended (a call may do both in
        // one batch: it leaves no trace here).
        if !live.is_empty() {
            let mut batch = sled::Batch::default();
            for (k, v) in &live.began {
                batch.insert(k.as_slice(), v.as_slice());
            }
            for k in &live.ended {
                batch.remove(k.as_slice());
            }
            self.live_calls.apply_batch(batch)?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Deletes recordings that started before `cutoff_ms` (file and metadata).
    /// Returns how many went.
    pub fn expire_recordings(&self, cutoff_ms: u64) -> anyhow::Result<usize> {
        let mut gone = 0;
        for item in self.recordings.iter() {
            let (key, value) = item?;
            let Ok(meta) = serde_json::from_slice::<RecordingMeta>(&value) else {
                continue;
            };
            if meta.started >= cutoff_ms {
                continue;
            }
            match std::fs::remove_file(&meta.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = meta.path, error = %e, "cannot delete an expired recording");
                    continue;
                }
            }
            self.recordings.remove(key)?;
            gone += 1;
        }
        self.recordings.flush()?;
        Ok(gone)
    }

    /// A recording's metadata.
    pub fn recording(&self, path: &str) -> anyhow::Result<Option<RecordingMeta>> {
        Self::get(&self.recordings, path)
    }

    /// Recordings that started in [since, until) Unix ms, oldest first. The
    /// tree is keyed by path, so this reads it whole: the retention sweep
    /// keeps it to `retention_days` of calls. An unreadable entry is logged
    /// and skipped.
    pub fn recordings_between(
        &self,
        since_ms: u64,
        until_ms: u64,
    ) -> anyhow::Result<Vec<RecordingMeta>> {
        let mut out = Vec::new();
        for item in self.recordings.iter() {
            let (key, value) = item?;
            match serde_json::from_slice::<RecordingMeta>(&value) {
                Ok(m) if (since_ms..until_ms).contains(&m.started) => out.push(m),
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    key = %String::from_utf8_lossy(&key),
                    error = %e,
                    "unreadable recording metadata skipped"
                ),
            }
        }
        out.sort_by(|a, b| (a.started, &a.path).cmp(&(b.started, &b.path)));
        Ok(out)
    }

    /// Records of one kind with keys in [since, until) Unix ms, oldest first.
    pub fn records(
        &self,
        cdrs: bool,
        since_ms: u64,
        until_ms: u64,
    ) -> impl Iterator<Item = anyhow::Result<Vec<u8>>> {
        let tree = if cdrs { &self.cdrs } else { &self.queue_log };
        tree.range(record_key(since_ms, 0)..record_key(until_ms, 0))
            .values()
            .map(|v| Ok(v?.to_vec()))
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.db.flush()?;
        Ok(())
    }

    fn get<T: for<'de> Deserialize<'de>>(
        tree: &sled::Tree,
        key: &str,
    ) -> anyhow::Result<Option<T>> {
        match tree.get(key.as_bytes())? {
            Some(v) => Ok(Some(
                serde_json::from_slice(&v).with_context(|| format!("corrupt record {key}"))?,
            )),
            None => Ok(None),
        }
    }

    fn list<T: for<'de> Deserialize<'de>>(tree: &sled::Tree) -> anyhow::Result<Vec<T>> {
        tree.iter()
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    /// Adds a token under the hash of its secret; refused when the name is taken.
    pub fn put_token(&self, hash: &str, token: &ApiToken) -> anyhow::Result<()> {
        if self
            .tokens()
            .is_ok_and(|all| all.iter().any(|(_, t)| t.name == token.name))
        {
            anyhow::bail!("a token named {:?} exists: revoke it first", token.name);
        }
        self.tokens
            .insert(hash.as_bytes(), serde_json::to_vec(token)?)?;
        self.tokens.flush()?;
        Ok(())
    }

    /// The token whose secret hashes to `hash`.
    pub fn token(&self, hash: &str) -> anyhow::Result<Option<ApiToken>> {
        Self::get(&self.tokens, hash)
    }

    /// Every token with its hash.
    pub fn tokens(&self) -> anyhow::Result<Vec<(String, ApiToken)>> {
        self.tokens
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    serde_json::from_slice(&v)?,
                ))
            })
            .collect()
    }

    /// Revokes the token named `name`; whether there was one.
    pub fn revoke_token(&self, name: &str) -> anyhow::Result<bool> {
        let Some((hash, _)) = self.tokens()?.into_iter().find(|(_, t)| t.name == name) else {
            return Ok(false);
        };
        self.tokens.remove(hash.as_bytes())?;
        self.tokens.flush()?;
        Ok(true)
    }

    /// Writes an audit entry at once (a control action is never unrecorded).
    pub fn audit(&self, entry: &AuditEntry) -> anyhow::Result<()> {
        let seq = self
            .audit_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.audit
            .insert(record_key(entry.at, seq), serde_json::to_vec(entry)?)?;
        self.audit.flush()?;
        Ok(())
    }

    /// Audit entries in [since, until) Unix ms, oldest first.
    pub fn audit_entries(&self, since_ms: u64, until_ms: u64) -> anyhow::Result<Vec<AuditEntry>> {
        self.audit
            .range(record_key(since_ms, 0)..record_key(until_ms, 0))
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    /// Adds or replaces an agent.
    pub fn put_agent(&self, agent: &Agent) -> anyhow::Result<()> {
        self.agents
            .insert(agent.id.as_bytes(), serde_json::to_vec(agent)?)?;
        self.agents.flush()?;
        self.bump_accounts();
        Ok(())
    }

    /// One agent.
    pub fn agent(&self, id: &str) -> anyhow::Result<Option<Agent>> {
        Self::get(&self.agents, id)
    }

    /// All agents, by id.
    pub fn agents(&self) -> anyhow::Result<Vec<Agent>> {
        Self::list(&self.agents)
    }

    /// Removes an agent and its bindings; `false` if there was none.
    pub fn remove_agent(&self, id: &str) -> anyhow::Result<bool> {
        let existed = self.agents.remove(id.as_bytes())?.is_some();
        self.bindings.remove(id.as_bytes())?;
        self.agents.flush()?;
        self.bump_accounts();
        Ok(existed)
    }

    /// An agent's bindings (possibly expired ones; callers filter by time).
    pub fn bindings(&self, id: &str) -> anyhow::Result<Vec<Binding>> {
        Ok(Self::get(&self.bindings, id)?.unwrap_or_default())
    }

    /// Replaces an agent's bindings.
    pub fn put_bindings(&self, id: &str, bindings: &[Binding]) -> anyhow::Result<()> {
        if bindings.is_empty() {
            self.bindings.remove(id.as_bytes())?;
        } else {
            self.bindings
                .insert(id.as_bytes(), serde_json::to_vec(bindings)?)?;
        }
        self.bump();
        Ok(())
    }

    /// Adds or replaces a route.
    pub fn put_route(&self, route: &Route) -> anyhow::Result<()> {
        self.routes
            .insert(route.number.as_bytes(), serde_json::to_vec(route)?)?;
        self.routes.flush()?;
        Ok(())
    }

    /// Removes a route; `false` if there was none.
    pub fn remove_route(&self, number: &str) -> anyhow::Result<bool> {
        let existed = self.routes.remove(number.as_bytes())?.is_some();
        self.routes.flush()?;
        Ok(existed)
    }

    /// All routes, by number.
    pub fn routes(&self) -> anyhow::Result<Vec<Route>> {
        Self::list(&self.routes)
    }

    /// Longest-prefix match of a normalized number.
    pub fn route_for(&self, number: &str) -> anyhow::Result<Option<Route>> {
        for end in (1..=number.len()).rev() {
            if !number.is_char_boundary(end) {
                continue;
            }
            if let Some(route) = Self::get(&self.routes, &number[..end])? {
                return Ok(Some(route));
            }
        }
        Ok(None)
    }

    /// Adds or replaces a queue.
    pub fn put_queue(&self, name: &str, def: &QueueDef) -> anyhow::Result<()> {
        self.queues
            .insert(name.as_bytes(), serde_json::to_vec(def)?)?;
        self.queues.flush()?;
        Ok(())
    }

    /// Removes a queue; `false` if there was none.
    pub fn remove_queue(&self, name: &str) -> anyhow::Result<bool> {
        let existed = self.queues.remove(name.as_bytes())?.is_some();
        self.queues.flush()?;
        Ok(existed)
    }

    /// Every queue by name. One that no longer reads (written by a later
    /// version) is left out, with a warning, rather than stopping the server.
    pub fn queues(&self) -> anyhow::Result<crate::config::Queues> {
        let mut all = crate::config::Queues::new();
        for entry in self.queues.iter() {
            let (k, v) = entry?;
            let name = String::from_utf8_lossy(&k).into_owned();
            match serde_json::from_slice(&v) {
                Ok(def) => {
                    all.insert(name, def);
                }
                Err(e) => tracing::warn!(queue = %name, error = %e, "skipping an unreadable queue"),
            }
        }
        Ok(all)
    }

    /// Seeds the queues from `[queues.NAME]`, as the shipped plan seeds the
    /// routes, and keeps later edits of the settings flowing in: a queue
    /// the settings declare for the first time is added; one whose
    /// `[queues.NAME]` changed since it was last seeded follows the change
    /// unless it was changed (or removed) through the CLI or API meanwhile,
    /// which wins and is said in the returned warnings.
    pub fn seed_queues(&self, seeds: &crate::config::Queues) -> anyhow::Result<Vec<String>> {
        let mut warnings = Vec::new();
        for (name, def) in seeds {
            let key = format!("queue_seed/{name}");
            let last: Option<QueueDef> = Self::get(&self.meta, &key).unwrap_or(None);
            if last.as_ref() == Some(def) {
                continue;
            }
            let stored: Option<QueueDef> = Self::get(&self.queues, name)?;
            match (&last, &stored) {
                (None, None) => self.put_queue(name, def)?,
                (Some(l), Some(s)) if l == s => self.put_queue(name, def)?,
                (_, Some(s)) if s == def => {}
                (None, Some(_)) | (Some(_), Some(_)) => warnings.push(format!(
                    "[queues.{name}] differs from queue {name} as changed through `yihaotong queues` or the API; that one stays (the settings' change is not applied)"
                )),
                (Some(_), None) => warnings.push(format!(
                    "[queues.{name}] names a queue removed through `yihaotong queues` or the API; it stays removed"
                )),
            }
            self.meta.insert(key.as_bytes(), serde_json::to_vec(def)?)?;
        }
        self.meta.flush()?;
        Ok(warnings)
    }

    /// A flag in the meta tree (e.g. "the shipped plan was imported").
    pub fn flag(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self.meta.get(name.as_bytes())?.is_some())
    }

    /// Whether `number` is in the caller list `list`.
    pub fn in_list(&self, list: &str, number: &str) -> anyhow::Result<bool> {
        Ok(self.lists.contains_key(list_key(list, number))?)
    }

    /// Adds (or removes) numbers to a caller list; returns how many changed.
    pub fn edit_list(&self, list: &str, numbers: &[String], add: bool) -> anyhow::Result<usize> {
        let mut changed = 0;
        for n in numbers {
            let key = list_key(list, n);
            let was = if add {
                self.lists.insert(key, b"".to_vec())?
            } else {
                self.lists.remove(key)?
            };
            changed += usize::from(was.is_some() != add);
        }
        self.lists.flush()?;
        Ok(changed)
    }

    /// The numbers in a caller list.
    pub fn list_members(&self, list: &str) -> anyhow::Result<Vec<String>> {
        let prefix = list_key(list, "");
        self.lists
            .scan_prefix(&prefix)
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?[prefix.len()..]).into_owned()))
            .collect()
    }

    /// Whether an operator switch is on.
    pub fn switch(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self.switches.contains_key(name.as_bytes())?)
    }

    /// Turns an operator switch on or off.
    pub fn set_switch(&self, name: &str, on: bool) -> anyhow::Result<()> {
        if on {
            self.switches.insert(name.as_bytes(), b"1".to_vec())?;
        } else {
            self.switches.remove(name.as_bytes())?;
        }
        self.switches.flush()?;
        Ok(())
    }

    /// Switches that are on.
    pub fn switches_on(&self) -> anyhow::Result<Vec<String>> {
        self.switches
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    /// Sets a meta flag.
    pub fn set_flag(&self, name: &str) -> anyhow::Result<()> {
        self.meta.insert(name.as_bytes(), b"1".to_vec())?;
        self.meta.flush()?;
        Ok(())
    }
}

fn list_key(list: &str, number: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(list.len() + 1 + number.len());
    k.extend_from_slice(list.as_bytes());
    k.push(0);
    k.extend_from_slice(number.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_seed_queues_and_later_edits_follow_unless_the_api_changed_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let def = |d: &str, ring: u64| QueueDef {
            description: d.into(),
            ring_timeout: Some(ring),
            ..QueueDef::default()
        };
        let seeds = |hrss: QueueDef, main: QueueDef| {
            crate::config::Queues::from([("hrss".to_string(), hrss), ("main".to_string(), main)])
        };
        // First start: both seeded.
        let first = seeds(def("social", 15), def("general", 15));
        assert!(store.seed_queues(&first).expect("seed").is_empty());
        assert_eq!(store.queues().expect("read"), first);
        // An admin changes hrss through the API and removes main.
        store
            .put_queue("hrss", &def("social (API)", 20))
            .expect("put");
        store.remove_queue("main").expect("remove");
        // The same settings again: nothing moves, nothing to say.
        assert!(store.seed_queues(&first).expect("seed").is_empty());
        // Edited settings: neither change is applied, and each is said.
        let edited = seeds(def("social", 30), def("general", 30));
        let warnings = store.seed_queues(&edited).expect("seed");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("[queues.hrss]") && warnings[1].contains("removed"));
        let now = store.queues().expect("read");
        assert_eq!(now.len(), 1);
        assert_eq!(now["hrss"], def("social (API)", 20));
        // A queue nobody touched since its seed follows the settings.
        store.put_queue("water", &def("water", 10)).expect("put");
        let with_water = |ring| {
            let mut q = edited.clone();
            q.insert("water".into(), def("water", ring));
            q
        };
        store.seed_queues(&with_water(10)).expect("seed");
        assert!(store.seed_queues(&with_water(25)).expect("seed").is_empty());
        assert_eq!(store.queues().expect("read")["water"], def("water", 25));
    }

    #[test]
    fn expired_recordings_go_file_and_metadata_and_fresh_ones_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db")).expect("open");
        let mut rows = Vec::new();
        for (name, started) in [("old", 1_000u64), ("new", 9_000), ("gone", 500)] {
            let path = dir.path().join(format!("{name}.wav"));
            if name != "gone" {
                std::fs::write(&path, b"RIFF").expect("write");
            }
            let meta = RecordingMeta {
                path: path.display().to_string(),
                call_id: name.into(),
                agent: "1001".into(),
                queue: "main".into(),
                started,
            };
            rows.push((
                meta.path.clone().into_bytes(),
                serde_json::to_vec(&meta).expect("json"),
            ));
        }
        store
            .append_records(&[], &[], &rows, &LiveChanges::default())
            .expect("append");
        assert_eq!(store.expire_recordings(5_000).expect("expire"), 2);
        assert!(!dir.path().join("old.wav").exists());
        assert!(dir.path().join("new.wav").exists());
        let new = dir.path().join("new.wav").display().to_string();
        assert!(store.recording(&new).expect("read").is_some());
        let old = dir.path().join("old.wav").display().to_string();
        assert!(store.recording(&old).expect("read").is_none());
    }

    #[test]
    fn longest_prefix_wins_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            for (n, q) in [("8", "legacy"), ("8123", "dept"), ("12345", "main")] {
                store
                    .put_route(&Route {
                        number: n.into(),
                        queue: q.into(),
                        flow: String::new(),
                        hotline: n.into(),
                        ..Default::default()
                    })
                    .expect("put");
            }
        }
        let store = Store::open(dir.path()).expect("reopen");
        let q = |n: &str| store.route_for(n).expect("lookup").map(|r| r.queue);
        assert_eq!(q("81234567").as_deref(), Some("dept"));
        assert_eq!(q("88888888").as_deref(), Some("legacy"));
        assert_eq!(q("12345").as_deref(), Some("main"));
        assert_eq!(q("1234"), None);
        assert!(store.remove_route("8").expect("remove"));
        assert_eq!(q("88888888"), None);
    }
}

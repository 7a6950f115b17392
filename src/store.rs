//! The embedded database: agent accounts, registrations, the number plan.
//!
//! Room: the cellar. [`Store`] wraps one redb database (`data_dir/db.redb`)
//! and is the only code that knows its trees (tables) and encodings (JSON
//! values). Every change is one transaction; accounts, routes, presence
//! and records are on disk when the call returns, registrations are
//! committed without waiting for the disk ([`Store::put_bindings`]).
//! Records older than `[records] keep_days` move to the [`archive`];
//! [`Store::backup`] and [`Store::restore`] copy the whole database; an old
//! sled database is moved over once by [`migrate`].

pub mod archive;
pub mod backup;
mod migrate;
mod records;

use std::path::{Path, PathBuf};

pub use archive::RecordKind;
pub use records::{Cdr, Disposition, Presence, Rank};

use anyhow::Context;
use redb::{Durability, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};

use crate::config::QueueDef;
use crate::routing::Route;
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

/// The database handle. Cloning is cheap (one shared redb database).
#[derive(Clone)]
pub struct Store {
    /// Bumped on every agent or binding write, so readers can cache the
    /// directory and notice changes without a read per call.
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Bumped on every account write only (not on registrations).
    accounts_generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// `None` once [`Store::close`] ran: then every call is an error.
    db: std::sync::Arc<std::sync::RwLock<Option<redb::Database>>>,
    /// Sequence for audit keys within one millisecond.
    audit_seq: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// Where archived days of records are (`[records] archive_dir`).
    archive_root: PathBuf,
    /// Set by a registration committed without a sync, until
    /// [`Store::sync_registrations`] makes it durable.
    unsynced: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// One tree (a redb table of bytes to bytes; values are JSON).
type Tree = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// Agent accounts by id.
const AGENTS: Tree = TableDefinition::new("agents");
/// An agent's registrations (JSON list of [`Binding`]) by agent id.
const BINDINGS: Tree = TableDefinition::new("bindings");
/// The number plan by number.
const ROUTES: Tree = TableDefinition::new("routes");
/// Agent queues by name (JSON [`QueueDef`]); `[queues.NAME]` seeds them.
const QUEUES: Tree = TableDefinition::new("queues");
/// Flags, seeds and counters.
const META: Tree = TableDefinition::new("meta");
/// Named caller lists for flows (`caller_in`): key `list\0number`.
const LISTS: Tree = TableDefinition::new("lists");
/// Operator switches for flows (`flag`): key = name, present = on.
const SWITCHES: Tree = TableDefinition::new("switches");
/// Agents' chosen presence (logged out, available, on break).
const PRESENCE: Tree = TableDefinition::new("presence");
/// Queue log lines, keyed by time (see [`record_key`]).
const QUEUE_LOG: Tree = TableDefinition::new("queue_log");
/// Call detail records, keyed by end time.
const CDRS: Tree = TableDefinition::new("cdrs");
/// Recording metadata, keyed by file path.
const RECORDINGS: Tree = TableDefinition::new("recordings");
/// The same recordings by start time: key = start (Unix ms, big-endian)
/// then the path; value empty. What time ranges and expiry read.
const RECORDINGS_BY_TIME: Tree = TableDefinition::new("recordings_by_time");
/// Booked callbacks by id (big-endian).
const CALLBACKS: Tree = TableDefinition::new("callbacks");
/// Calls that began and have no CDR yet, by Call-ID.
const LIVE_CALLS: Tree = TableDefinition::new("live_calls");
/// API tokens by the SHA-256 of the secret (the secret is never kept).
const TOKENS: Tree = TableDefinition::new("tokens");
/// API control actions, in time order (who, what, when).
const AUDIT: Tree = TableDefinition::new("audit");

/// The meta key of the next callback id.
const CALLBACK_SEQ: &[u8] = b"callback_seq";

/// The database file under `data_dir`.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("db.redb")
}

/// Whether `data_dir` holds a database (or a sled one still to migrate).
pub fn db_exists(data_dir: &Path) -> bool {
    db_path(data_dir).exists() || data_dir.join("db").join("conf").exists()
}

/// The hex SHA-256 of a token's secret: what the store keeps.
pub fn token_hash(secret: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How the database is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// redb's page cache, MiB.
    pub cache_mb: u64,
    /// The records archive (`None`: `data_dir/archive`).
    pub archive_dir: Option<PathBuf>,
}

impl StoreOptions {
    /// How the settings say the store is opened: cache and archive folder.
    pub fn of(settings: &crate::config::Settings) -> StoreOptions {
        StoreOptions {
            cache_mb: settings.store.cache_mb,
            archive_dir: Some(settings.archive_dir()),
        }
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_mb: 64,
            archive_dir: None,
        }
    }
}

/// The trees a database holds: what a backup copies and a restore accepts.
const TREES: [Tree; 16] = [
    AGENTS,
    BINDINGS,
    ROUTES,
    QUEUES,
    META,
    LISTS,
    SWITCHES,
    PRESENCE,
    QUEUE_LOG,
    CDRS,
    RECORDINGS,
    RECORDINGS_BY_TIME,
    CALLBACKS,
    LIVE_CALLS,
    TOKENS,
    AUDIT,
];

/// What a backup wrote.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    /// The file.
    pub path: String,
    /// Entries per tree.
    pub trees: std::collections::BTreeMap<String, u64>,
    /// Entries in all.
    pub entries: u64,
    /// The file's size.
    pub bytes: u64,
}

/// One day of one kind moved to the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedDay {
    /// What kind of records.
    pub kind: RecordKind,
    /// The UTC day (days since 1970-01-01).
    pub day: u64,
    /// Records that left the database.
    pub removed: usize,
    /// Of those, records the archive did not hold yet.
    pub written: usize,
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
    pub rank: Rank,
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

/// The time (Unix ms) at the front of a record key; 0 for a short key.
fn key_time(key: &[u8]) -> u64 {
    key.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// The time-index key of a recording's metadata (JSON): its start, then
/// its path.
fn recording_time_key(meta: &[u8]) -> Option<Vec<u8>> {
    let meta: RecordingMeta = serde_json::from_slice(meta).ok()?;
    let mut k = meta.started.to_be_bytes().to_vec();
    k.extend_from_slice(meta.path.as_bytes());
    Some(k)
}

/// Opens (creating) the redb file at `path` with `cache_mb` of page cache.
/// After an unclean stop redb walks the file to rebuild its free-space map
/// first; that is logged with its progress.
fn open_redb(path: &Path, cache_mb: u64) -> Result<redb::Database, redb::DatabaseError> {
    let shown = path.display().to_string();
    let last_told = std::sync::atomic::AtomicU64::new(u64::MAX);
    redb::Builder::new()
        .set_cache_size(usize::try_from(cache_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX))
        .set_repair_callback(move |session| {
            let percent = (session.progress() * 100.0) as u64;
            let tenth = percent / 10;
            if last_told.swap(tenth, std::sync::atomic::Ordering::Relaxed) != tenth {
                tracing::info!(db = %shown, percent, "repairing the database after an unclean stop");
            }
        })
        .create(path)
}

/// Whether opening failed because another process holds the database
/// (redb's file lock, or sled's while an old database waits to migrate).
fn is_locked(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<redb::DatabaseError>(),
            Some(redb::DatabaseError::DatabaseAlreadyOpen)
        ) || matches!(
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

/// The nearest of `paths` (then `paths`' last one's ancestors) that exists,
/// when this user may not write it (and enter it, for a folder): that path
/// and why.
fn not_writable(paths: &[&Path]) -> Option<(PathBuf, nix::Error)> {
    use nix::unistd::{access, AccessFlags};
    let last = paths.last()?;
    let probe = paths
        .iter()
        .copied()
        .chain(last.ancestors().skip(1))
        .find(|p| p.exists())?;
    // A folder must be entered as well as written; a file only written.
    let flags = if probe.is_dir() {
        AccessFlags::W_OK | AccessFlags::X_OK
    } else {
        AccessFlags::W_OK
    };
    access(probe, flags).err().map(|e| (probe.to_path_buf(), e))
}

/// Whether this user may make and write the database under `data_dir`
/// (the folder, or the nearest folder above it that exists), without
/// writing anything: what `check` asks before `run` would fail.
pub fn writable(data_dir: &Path) -> anyhow::Result<()> {
    match not_writable(&[&db_path(data_dir), data_dir]) {
        None => Ok(()),
        Some((probe, e)) => Err(anyhow::anyhow!(
            "data_dir {}: {} is not writable by this user (uid {}): {e}; give it to the user the server runs as, or point data_dir (YIHAOTONG_DATA_DIR) elsewhere",
            data_dir.display(),
            probe.display(),
            nix::unistd::getuid()
        )),
    }
}

/// Whether this user may make and write the records archive at `dir`
/// (`[records] archive_dir`), without writing anything.
pub fn archive_writable(dir: &Path) -> anyhow::Result<()> {
    match not_writable(&[dir]) {
        None => Ok(()),
        Some((probe, e)) => Err(anyhow::anyhow!(
            "[records] archive_dir {}: {} is not writable by this user (uid {}): {e}; records past keep_days would stay in the database",
            dir.display(),
            probe.display(),
            nix::unistd::getuid()
        )),
    }
}

impl Store {
    /// Opens the database, waiting up to `patience` while another process
    /// holds it (a command run offline a moment before, or a server that is
    /// stopping): the server does not fail to start over a brief overlap.
    pub fn open_waiting(
        data_dir: &Path,
        options: &StoreOptions,
        patience: std::time::Duration,
    ) -> anyhow::Result<Store> {
        let deadline = std::time::Instant::now() + patience;
        let mut told = false;
        loop {
            match Self::open_with(data_dir, options) {
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

    /// Opens (creating) the database under `data_dir` with the default
    /// options.
    pub fn open(data_dir: &Path) -> anyhow::Result<Store> {
        Self::open_with(data_dir, &StoreOptions::default())
    }

    /// Opens (creating) the database under `data_dir`. A sled database
    /// from before the move to redb (`data_dir/db/`) is first copied into
    /// the redb file once (see [`migrate`]).
    pub fn open_with(data_dir: &Path, options: &StoreOptions) -> anyhow::Result<Store> {
        writable(data_dir)?;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data_dir {}", data_dir.display()))?;
        migrate::from_sled(data_dir, options.cache_mb)?;
        let path = db_path(data_dir);
        let db = open_redb(&path, options.cache_mb).map_err(|e| open_error(&path, e))?;
        let store = Store {
            generation: Default::default(),
            accounts_generation: Default::default(),
            db: std::sync::Arc::new(std::sync::RwLock::new(Some(db))),
            audit_seq: Default::default(),
            archive_root: options
                .archive_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("archive")),
            unsynced: Default::default(),
        };
        store.create_trees()?;
        store.with_recordings_indexed()
    }

    /// Every tree exists from the start, so reads never meet a missing one.
    fn create_trees(&self) -> anyhow::Result<()> {
        self.write(Durability::Immediate, |txn| {
            for tree in TREES {
                txn.open_table(tree)?;
            }
            Ok(())
        })
    }

    /// A database from before the time index gets it once, at open.
    fn with_recordings_indexed(self) -> anyhow::Result<Store> {
        self.write(Durability::Immediate, |txn| {
            let recordings = txn.open_table(RECORDINGS)?;
            let mut index = txn.open_table(RECORDINGS_BY_TIME)?;
            if index.is_empty()? && !recordings.is_empty()? {
                for kv in recordings.iter()? {
                    let (_, v) = kv?;
                    if let Some(k) = recording_time_key(v.value()) {
                        index.insert(k.as_slice(), [].as_slice())?;
                    }
                }
            }
            Ok(())
        })?;
        Ok(self)
    }

    /// Runs `f` with the open database (it may begin transactions; they
    /// end before [`Store::close`] can close it). Never nested.
    fn with_db<R>(
        &self,
        f: impl FnOnce(&redb::Database) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        let held = self
            .db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match held.as_ref() {
            Some(db) => f(db),
            None => anyhow::bail!("the database is closed (the server is stopping)"),
        }
    }

    /// Closes the database now, whoever else holds this store: redb saves
    /// its free-space map, so the next open needs no repair walk. Waits for
    /// transactions under way; later calls are errors.
    pub fn close(&self) {
        let db = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        drop(db);
    }

    /// Runs `f` on one tree in a read transaction (a consistent snapshot).
    fn read<R>(
        &self,
        tree: Tree,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static [u8], &'static [u8]>) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        self.with_db(|db| f(&db.begin_read()?.open_table(tree)?))
    }

    /// Runs `f` in one write transaction and commits it: all of it lands or
    /// none. `Immediate` is on disk when this returns; `None` is seen by
    /// every later transaction but lost by a crash until a later
    /// `Immediate` commit.
    fn write<R>(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        self.with_db(|db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(durability);
            let out = f(&txn)?;
            txn.commit()?;
            Ok(out)
        })
    }

    /// Puts one entry, durably; whether the key was there before.
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> anyhow::Result<bool> {
        self.write(Durability::Immediate, |txn| {
            Ok(txn.open_table(tree)?.insert(key, value)?.is_some())
        })
    }

    /// Removes one entry, durably; whether it was there.
    fn delete(&self, tree: Tree, key: &[u8]) -> anyhow::Result<bool> {
        self.write(Durability::Immediate, |txn| {
            Ok(txn.open_table(tree)?.remove(key)?.is_some())
        })
    }

    /// Whether a key is in a tree.
    fn contains(&self, tree: Tree, key: &[u8]) -> anyhow::Result<bool> {
        self.read(tree, |t| Ok(t.get(key)?.is_some()))
    }

    /// Every (key, value) of a tree, in key order.
    fn entries(&self, tree: Tree) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.read(tree, |t| {
            t.iter()?
                .map(|kv| {
                    let (k, v) = kv?;
                    Ok((k.value().to_vec(), v.value().to_vec()))
                })
                .collect()
        })
    }

    fn tree_of(kind: RecordKind) -> Tree {
        match kind {
            RecordKind::Cdrs => CDRS,
            RecordKind::QueueLog => QUEUE_LOG,
            RecordKind::Audit => AUDIT,
        }
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
    pub fn presence(&self, id: &str) -> anyhow::Result<Option<Presence>> {
        self.get(PRESENCE, id)
    }

    /// Saves an agent's presence (on disk at once: it must survive a crash).
    pub fn put_presence(&self, id: &str, p: &Presence) -> anyhow::Result<()> {
        self.put(PRESENCE, id.as_bytes(), &serde_json::to_vec(p)?)?;
        Ok(())
    }

    /// Closes out calls a crash cut: every call that began and has no CDR
    /// gets one with disposition `crashed`, ended `now` (unix ms). Returns
    /// how many. Run at start, before any call; one transaction.
    pub fn close_crashed_calls(&self, now: u64) -> anyhow::Result<usize> {
        self.write(Durability::Immediate, |txn| {
            let mut live = txn.open_table(LIVE_CALLS)?;
            let mut cdrs = txn.open_table(CDRS)?;
            let mut closed = 0;
            let cut: Vec<(Vec<u8>, Vec<u8>)> = live
                .iter()?
                .map(|kv| {
                    let (k, v) = kv?;
                    Ok((k.value().to_vec(), v.value().to_vec()))
                })
                .collect::<anyhow::Result<_>>()?;
            for (i, (k, v)) in cut.iter().enumerate() {
                live.remove(k.as_slice())?;
                let mut cdr: Cdr = match serde_json::from_slice(v) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "unreadable live-call record dropped");
                        continue;
                    }
                };
                cdr.ended = now.max(cdr.arrived);
                cdr.disposition = Disposition::Crashed;
                if cdr.hung_up_by.is_empty() {
                    cdr.hung_up_by = "system".into();
                }
                let key = record_key(cdr.ended, u32::MAX - i as u32);
                cdrs.insert(key.as_slice(), serde_json::to_vec(&cdr)?.as_slice())?;
                closed += 1;
            }
            Ok(closed)
        })
    }

    /// A fresh id for a callback booking (increasing across restarts).
    pub fn next_callback_id(&self) -> anyhow::Result<u64> {
        self.write(Durability::Immediate, |txn| {
            let mut meta = txn.open_table(META)?;
            let next = meta
                .get(CALLBACK_SEQ)?
                .and_then(|v| v.value().try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(1);
            meta.insert(
                CALLBACK_SEQ,
                next.saturating_add(1).to_be_bytes().as_slice(),
            )?;
            Ok(next)
        })
    }

    /// Saves a callback booking, on disk when this returns.
    pub fn put_callback(&self, booking: &CallbackBooking) -> anyhow::Result<()> {
        self.put(
            CALLBACKS,
            &booking.id.to_be_bytes(),
            &serde_json::to_vec(booking)?,
        )?;
        Ok(())
    }

    /// Forgets a callback booking (done or given up).
    pub fn remove_callback(&self, id: u64) -> anyhow::Result<()> {
        self.delete(CALLBACKS, &id.to_be_bytes())?;
        Ok(())
    }

    /// Every pending callback, oldest first (unreadable entries are skipped
    /// and logged, never fatal).
    pub fn callbacks(&self) -> anyhow::Result<Vec<CallbackBooking>> {
        let mut out = Vec::new();
        for (_, v) in self.entries(CALLBACKS)? {
            match serde_json::from_slice::<CallbackBooking>(&v) {
                Ok(b) => out.push(b),
                Err(e) => tracing::error!(error = %e, "unreadable callback booking skipped"),
            }
        }
        Ok(out)
    }

    /// Appends queue-log lines, CDRs and recording metadata (already keyed)
    /// and the live-call changes in one transaction: what returns Ok is on
    /// disk, and a crash leaves all of it or none.
    pub fn append_records(
        &self,
        log: &[(Vec<u8>, Vec<u8>)],
        cdrs: &[(Vec<u8>, Vec<u8>)],
        recordings: &[(Vec<u8>, Vec<u8>)],
        live: &LiveChanges,
    ) -> anyhow::Result<()> {
        self.write(Durability::Immediate, |txn| {
            if !recordings.is_empty() {
                let mut index = txn.open_table(RECORDINGS_BY_TIME)?;
                for k in recordings.iter().filter_map(|(_, v)| recording_time_key(v)) {
                    index.insert(k.as_slice(), [].as_slice())?;
                }
            }
            for (tree, rows) in [(QUEUE_LOG, log), (CDRS, cdrs), (RECORDINGS, recordings)] {
                if rows.is_empty() {
                    continue;
                }
                let mut table = txn.open_table(tree)?;
                for (k, v) in rows {
                    table.insert(k.as_slice(), v.as_slice())?;
                }
            }
            // Calls that began, then those that ended (a call may do both
            // in one batch: it leaves no trace here).
            if !live.is_empty() {
                let mut table = txn.open_table(LIVE_CALLS)?;
                for (k, v) in &live.began {
                    table.insert(k.as_slice(), v.as_slice())?;
                }
                for k in &live.ended {
                    table.remove(k.as_slice())?;
                }
            }
            Ok(())
        })
    }

    /// Deletes recordings that started before `cutoff_ms` (file and metadata).
    /// Returns how many went. Reads only the index up to the cutoff.
    pub fn expire_recordings(&self, cutoff_ms: u64) -> anyhow::Result<usize> {
        let cut = cutoff_ms.to_be_bytes();
        let due: Vec<(Vec<u8>, Option<RecordingMeta>)> = self.with_db(|db| {
            let txn = db.begin_read()?;
            let index = txn.open_table(RECORDINGS_BY_TIME)?;
            let recordings = txn.open_table(RECORDINGS)?;
            index
                .range(..cut.as_slice())?
                .map(|kv| {
                    let (index_key, _) = kv?;
                    let index_key = index_key.value().to_vec();
                    let path = index_key.get(8..).unwrap_or_default();
                    let meta = recordings
                        .get(path)?
                        .and_then(|v| serde_json::from_slice::<RecordingMeta>(v.value()).ok());
                    Ok((index_key, meta))
                })
                .collect()
        })?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut gone = Vec::new();
        for (index_key, meta) in due {
            if let Some(meta) = &meta {
                match std::fs::remove_file(&meta.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = meta.path, error = %e, "cannot delete an expired recording");
                        continue;
                    }
                }
            }
            gone.push((index_key, meta.is_some()));
        }
        self.write(Durability::Immediate, |txn| {
            let mut index = txn.open_table(RECORDINGS_BY_TIME)?;
            let mut recordings = txn.open_table(RECORDINGS)?;
            for (index_key, _) in &gone {
                index.remove(index_key.as_slice())?;
                recordings.remove(index_key.get(8..).unwrap_or_default())?;
            }
            Ok(())
        })?;
        Ok(gone.iter().filter(|(_, had_meta)| *had_meta).count())
    }

    /// A recording's metadata.
    pub fn recording(&self, path: &str) -> anyhow::Result<Option<RecordingMeta>> {
        self.get(RECORDINGS, path)
    }

    /// Recordings that started in [since, until) Unix ms, oldest first,
    /// read through the time index. An unreadable entry is logged and
    /// skipped.
    pub fn recordings_between(
        &self,
        since_ms: u64,
        until_ms: u64,
    ) -> anyhow::Result<Vec<RecordingMeta>> {
        let (since, until) = (since_ms.to_be_bytes(), until_ms.to_be_bytes());
        self.with_db(|db| Self::recordings_in(db, &since, &until))
    }

    fn recordings_in(
        db: &redb::Database,
        since: &[u8],
        until: &[u8],
    ) -> anyhow::Result<Vec<RecordingMeta>> {
        let txn = db.begin_read()?;
        let index = txn.open_table(RECORDINGS_BY_TIME)?;
        let recordings = txn.open_table(RECORDINGS)?;
        let mut out = Vec::new();
        for item in index.range(since..until)? {
            let (index_key, _) = item?;
            let path = index_key.value().get(8..).unwrap_or_default();
            let Some(value) = recordings.get(path)? else {
                continue;
            };
            match serde_json::from_slice::<RecordingMeta>(value.value()) {
                Ok(m) => out.push(m),
                Err(e) => tracing::warn!(
                    key = %String::from_utf8_lossy(path),
                    error = %e,
                    "unreadable recording metadata skipped"
                ),
            }
        }
        Ok(out)
    }

    /// Records of one kind with times in [since, until) Unix ms, oldest
    /// first: the archive's for the days it holds, the database's for the
    /// rest (a record in both, in the moment between a day's archiving and
    /// its removal, counts once).
    pub fn records(
        &self,
        kind: RecordKind,
        since_ms: u64,
        until_ms: u64,
    ) -> anyhow::Result<Vec<Vec<u8>>> {
        if since_ms >= until_ms {
            return Ok(Vec::new());
        }
        self.with_db(|db| self.records_in(db, kind, since_ms, until_ms))
    }

    fn records_in(
        &self,
        db: &redb::Database,
        kind: RecordKind,
        since_ms: u64,
        until_ms: u64,
    ) -> anyhow::Result<Vec<Vec<u8>>> {
        let txn = db.begin_read()?;
        let tree = txn.open_table(Self::tree_of(kind))?;
        let in_tree = |from: u64, to: u64| -> anyhow::Result<Vec<Vec<u8>>> {
            if from >= to {
                return Ok(Vec::new());
            }
            tree.range(record_key(from, 0).as_slice()..record_key(to, 0).as_slice())?
                .map(|kv| Ok(kv?.1.value().to_vec()))
                .collect()
        };
        let archive = archive::Archive::new(&self.archive_root, kind);
        let (first, last) = (archive::day_of(since_ms), archive::day_of(until_ms - 1));
        let days: Vec<u64> = archive
            .days()?
            .into_iter()
            .filter(|d| (first..=last).contains(d))
            .collect();
        let mut out = Vec::new();
        let mut from = since_ms;
        for day in days {
            let (start, end) = (
                (day * archive::DAY_MS).max(since_ms),
                ((day + 1) * archive::DAY_MS).min(until_ms),
            );
            out.extend(in_tree(from, start)?);
            // Each archived record's time is read once: to keep it in the
            // range, then to order the day's parts (and any rows the tree
            // still holds) by it.
            let mut rows: Vec<(u64, Vec<u8>)> = archive
                .read_day(day)?
                .into_iter()
                .filter_map(|r| Some((kind.time_of(&r)?, r)))
                .filter(|(t, _)| (start..end).contains(t))
                .collect();
            let still_in_tree = in_tree(start, end)?;
            if !still_in_tree.is_empty() {
                let held: std::collections::HashSet<&[u8]> =
                    rows.iter().map(|(_, r)| r.as_slice()).collect();
                let fresh: Vec<(u64, Vec<u8>)> = still_in_tree
                    .into_iter()
                    .filter(|r| !held.contains(r.as_slice()))
                    .map(|r| (kind.time_of(&r).unwrap_or(start), r))
                    .collect();
                rows.extend(fresh);
            }
            rows.sort_by_key(|(t, _)| *t);
            out.extend(rows.into_iter().map(|(_, r)| r));
            from = end;
        }
        out.extend(in_tree(from, until_ms)?);
        Ok(out)
    }

    /// Moves every whole UTC day of records that ends by `cutoff_ms` to the
    /// archive: each day is read from a snapshot and written (and synced)
    /// there first, then exactly the rows written leave the database in one
    /// transaction (a late row of that day stays for the next sweep).
    /// `progress` hears of each day as it goes.
    pub fn archive_before(
        &self,
        cutoff_ms: u64,
        progress: &mut dyn FnMut(&ArchivedDay),
    ) -> anyhow::Result<Vec<ArchivedDay>> {
        let mut done = Vec::new();
        for kind in RecordKind::ALL {
            let tree = Self::tree_of(kind);
            let archive = archive::Archive::new(&self.archive_root, kind);
            loop {
                let due = self.with_db(|db| {
                    let table = db.begin_read()?.open_table(tree)?;
                    let Some(first) = table.first()?.map(|(k, _)| key_time(k.value())) else {
                        return Ok(None);
                    };
                    let day = archive::day_of(first);
                    if (day + 1) * archive::DAY_MS > cutoff_ms {
                        return Ok(None);
                    }
                    // Keys shorter than a time sort first and count as day 0.
                    let start: &[u8] = if day == 0 {
                        &[]
                    } else {
                        &record_key(day * archive::DAY_MS, 0)
                    };
                    let end = record_key((day + 1) * archive::DAY_MS, 0);
                    let mut keys = Vec::new();
                    let rows = table.range(start..end.as_slice())?.map(|kv| {
                        let (k, v) = kv?;
                        keys.push(k.value().to_vec());
                        Ok(v.value().to_vec())
                    });
                    let written = archive.write_day(day, rows)?;
                    Ok(Some((day, keys, written)))
                })?;
                let Some((day, keys, written)) = due else {
                    break;
                };
                self.write(Durability::Immediate, |txn| {
                    let mut table = txn.open_table(tree)?;
                    for k in &keys {
                        table.remove(k.as_slice())?;
                    }
                    Ok(())
                })?;
                let moved = ArchivedDay {
                    kind,
                    day,
                    removed: keys.len(),
                    written,
                };
                progress(&moved);
                done.push(moved);
            }
        }
        Ok(done)
    }

    /// Writes a backup of the whole database to `path` (which must not
    /// exist) while the server runs. It reads one snapshot (a read
    /// transaction), so every transaction is in it whole or not at all and
    /// nothing waits for it. The file appears under its name only when
    /// complete and synced.
    pub fn backup(&self, path: &Path) -> anyhow::Result<BackupSummary> {
        if path.exists() {
            anyhow::bail!("{} exists: give a new file name", path.display());
        }
        let name = path
            .file_name()
            .ok_or_else(|| anyhow::anyhow!("{} is not a file name", path.display()))?
            .to_string_lossy()
            .into_owned();
        let temp = path.with_file_name(format!(".{name}.partial"));
        let file = std::fs::File::create(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        let mut trees = std::collections::BTreeMap::new();
        let written = (|| -> anyhow::Result<u64> {
            let mut w = backup::Writer::new(std::io::BufWriter::new(file))?;
            self.with_db(|db| {
                let snapshot = db.begin_read()?;
                for tree in TREES {
                    w.tree(tree.name())?;
                    let mut n = 0;
                    for kv in snapshot.open_table(tree)?.iter()? {
                        let (k, v) = kv?;
                        w.entry(k.value(), v.value())?;
                        n += 1;
                    }
                    trees.insert(tree.name().to_string(), n);
                }
                Ok(())
            })?;
            let (out, entries) = w.finish()?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            Ok(entries)
        })();
        let entries = match written.and_then(|n| {
            std::fs::rename(&temp, path)?;
            Ok(n)
        }) {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e.context(format!("cannot write the backup {}", path.display())));
            }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(BackupSummary {
            path: path.display().to_string(),
            trees,
            entries,
            bytes: std::fs::metadata(path)?.len(),
        })
    }

    /// Restores a backup into `data_dir` (no server may hold it): the whole
    /// file is read and checked into a new database first, then the old one
    /// is set aside as `db.redb.before-restore-UNIXSECONDS` and the new one
    /// takes its place. A damaged backup changes nothing. `progress` hears
    /// the number of entries read so far, every 100,000. Returns the
    /// entries per tree and where the old database went.
    pub fn restore(
        data_dir: &Path,
        file: &Path,
        options: &StoreOptions,
        progress: &mut dyn FnMut(u64),
    ) -> anyhow::Result<(std::collections::BTreeMap<String, u64>, Option<PathBuf>)> {
        if db_exists(data_dir) {
            // Held by a running server: refused with the open's own words.
            // (An old sled database is migrated here, then set aside.)
            drop(Self::open_with(data_dir, options).context("restore needs the server stopped")?);
        }
        let live = db_path(data_dir);
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data_dir {}", data_dir.display()))?;
        let input = std::fs::File::open(file)
            .with_context(|| format!("cannot open the backup {}", file.display()))?;
        let staging = data_dir.join("db.redb.restoring");
        let counts = (|| -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
            remove_if_there(&staging)?;
            let db = open_redb(&staging, options.cache_mb)?;
            let mut reader = backup::Reader::new(std::io::BufReader::new(input))?;
            let mut counts = std::collections::BTreeMap::new();
            let mut current: Option<Tree> = None;
            let mut chunk: Vec<(Tree, Vec<u8>, Vec<u8>)> = Vec::new();
            let mut read = 0u64;
            while let Some(item) = reader.next_item()? {
                match item {
                    backup::Item::Tree(name) => {
                        let Some(tree) = TREES.into_iter().find(|t| t.name() == name) else {
                            anyhow::bail!(
                                "the backup holds a tree {name:?} this version does not know"
                            );
                        };
                        current = Some(tree);
                        counts.insert(name, 0);
                    }
                    backup::Item::Entry(k, v) => {
                        let Some(tree) = current else {
                            anyhow::bail!("the backup is damaged: an entry before any tree");
                        };
                        chunk.push((tree, k, v));
                        read += 1;
                        *counts.entry(tree.name().to_string()).or_insert(0) += 1;
                        if chunk.len() == 10_000 {
                            // Made durable by the last commit.
                            insert_chunk(&db, &mut chunk, Durability::None)?;
                        }
                        if read % 100_000 == 0 {
                            progress(read);
                        }
                    }
                }
            }
            insert_chunk(&db, &mut chunk, Durability::Immediate)?;
            Ok(counts)
        })();
        let counts = match counts {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&staging);
                return Err(e.context(format!(
                    "cannot restore {}; the database was not changed",
                    file.display()
                )));
            }
        };
        let mut set_aside = None;
        if live.exists() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let aside = data_dir.join(format!("db.redb.before-restore-{now}"));
            std::fs::rename(&live, &aside)
                .with_context(|| format!("cannot move {} aside", live.display()))?;
            set_aside = Some(aside);
        }
        std::fs::rename(&staging, &live)
            .with_context(|| format!("cannot move the restored database to {}", live.display()))?;
        std::fs::File::open(data_dir)?.sync_all()?;
        Ok((counts, set_aside))
    }

    /// Makes every commit so far durable (registrations too).
    pub fn flush(&self) -> anyhow::Result<()> {
        self.write(Durability::Immediate, |_| Ok(()))
    }

    /// One JSON value by its text key.
    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        tree: Tree,
        key: &str,
    ) -> anyhow::Result<Option<T>> {
        self.read(tree, |t| match t.get(key.as_bytes())? {
            Some(v) => Ok(Some(
                serde_json::from_slice(v.value())
                    .with_context(|| format!("corrupt record {key}"))?,
            )),
            None => Ok(None),
        })
    }

    /// Every value of a tree, decoded, in key order.
    fn list<T: for<'de> Deserialize<'de>>(&self, tree: Tree) -> anyhow::Result<Vec<T>> {
        self.read(tree, |t| {
            t.iter()?
                .map(|kv| Ok(serde_json::from_slice(kv?.1.value())?))
                .collect()
        })
    }

    /// Adds a token under the hash of its secret; refused when the name is taken.
    pub fn put_token(&self, hash: &str, token: &ApiToken) -> anyhow::Result<()> {
        if self
            .tokens()
            .is_ok_and(|all| all.iter().any(|(_, t)| t.name == token.name))
        {
            anyhow::bail!("a token named {:?} exists: revoke it first", token.name);
        }
        self.put(TOKENS, hash.as_bytes(), &serde_json::to_vec(token)?)?;
        Ok(())
    }

    /// The token whose secret hashes to `hash`.
    pub fn token(&self, hash: &str) -> anyhow::Result<Option<ApiToken>> {
        self.get(TOKENS, hash)
    }

    /// Every token with its hash.
    pub fn tokens(&self) -> anyhow::Result<Vec<(String, ApiToken)>> {
        self.entries(TOKENS)?
            .into_iter()
            .map(|(k, v)| {
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
        self.delete(TOKENS, hash.as_bytes())
    }

    /// Writes an audit entry at once (a control action is never unrecorded).
    pub fn audit(&self, entry: &AuditEntry) -> anyhow::Result<()> {
        let seq = self
            .audit_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.put(
            AUDIT,
            &record_key(entry.at, seq),
            &serde_json::to_vec(entry)?,
        )?;
        Ok(())
    }

    /// Audit entries in [since, until) Unix ms, oldest first.
    pub fn audit_entries(&self, since_ms: u64, until_ms: u64) -> anyhow::Result<Vec<AuditEntry>> {
        self.records(RecordKind::Audit, since_ms, until_ms)?
            .iter()
            .map(|v| Ok(serde_json::from_slice(v)?))
            .collect()
    }

    /// Adds or replaces an agent.
    pub fn put_agent(&self, agent: &Agent) -> anyhow::Result<()> {
        self.put(AGENTS, agent.id.as_bytes(), &serde_json::to_vec(agent)?)?;
        self.bump_accounts();
        Ok(())
    }

    /// One agent.
    pub fn agent(&self, id: &str) -> anyhow::Result<Option<Agent>> {
        self.get(AGENTS, id)
    }

    /// All agents, by id.
    pub fn agents(&self) -> anyhow::Result<Vec<Agent>> {
        self.list(AGENTS)
    }

    /// Removes an agent and its bindings; `false` if there was none.
    pub fn remove_agent(&self, id: &str) -> anyhow::Result<bool> {
        let existed = self.write(Durability::Immediate, |txn| {
            txn.open_table(BINDINGS)?.remove(id.as_bytes())?;
            Ok(txn.open_table(AGENTS)?.remove(id.as_bytes())?.is_some())
        })?;
        self.bump_accounts();
        Ok(existed)
    }

    /// An agent's bindings (possibly expired ones; callers filter by time).
    pub fn bindings(&self, id: &str) -> anyhow::Result<Vec<Binding>> {
        Ok(self.get(BINDINGS, id)?.unwrap_or_default())
    }

    /// Replaces an agent's bindings. Committed without a sync (a REGISTER
    /// storm does not sync per request, and redb's `Eventual` syncs on
    /// Linux too): the server makes it durable within half a second
    /// ([`Store::sync_registrations`]), as does any durable commit; a
    /// crash loses at most that, which the phones' next REGISTER puts back.
    pub fn put_bindings(&self, id: &str, bindings: &[Binding]) -> anyhow::Result<()> {
        let value = if bindings.is_empty() {
            None
        } else {
            Some(serde_json::to_vec(bindings)?)
        };
        self.write(Durability::None, |txn| {
            let mut table = txn.open_table(BINDINGS)?;
            match &value {
                Some(v) => table.insert(id.as_bytes(), v.as_slice())?,
                None => table.remove(id.as_bytes())?,
            };
            Ok(())
        })?;
        self.unsynced
            .store(true, std::sync::atomic::Ordering::Release);
        self.bump();
        Ok(())
    }

    /// Makes registrations committed since the last call durable (one
    /// synced commit, which also lets redb reuse the pages they freed);
    /// whether there were any. The server runs it every half second.
    pub fn sync_registrations(&self) -> anyhow::Result<bool> {
        if !self
            .unsynced
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return Ok(false);
        }
        self.flush().inspect_err(|_| {
            self.unsynced
                .store(true, std::sync::atomic::Ordering::Release)
        })?;
        Ok(true)
    }

    /// Imports a plan file into the store; returns how many routes were written.
    pub fn import_plan_file(&self, path: &Path) -> anyhow::Result<usize> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        self.import_plan(&text, &path.display().to_string())
    }

    /// Imports plan text (all or nothing: it is parsed before anything is written).
    pub fn import_plan(&self, text: &str, name: &str) -> anyhow::Result<usize> {
        let routes = crate::routing::parse_plan(text, name)?;
        for r in &routes {
            self.put_route(r)?;
        }
        Ok(routes.len())
    }

    /// On first start, imports the shipped plan.
    pub fn seed_plan(&self) -> anyhow::Result<()> {
        if !self.flag("plan_seeded")? {
            let n = self.import_plan(crate::routing::SHIPPED_PLAN, "config/numbers.toml")?;
            self.set_flag("plan_seeded")?;
            tracing::info!(routes = n, "imported the shipped number plan");
        }
        Ok(())
    }

    /// Adds or replaces a route.
    pub fn put_route(&self, route: &Route) -> anyhow::Result<()> {
        self.put(ROUTES, route.number.as_bytes(), &serde_json::to_vec(route)?)?;
        Ok(())
    }

    /// Removes a route; `false` if there was none.
    pub fn remove_route(&self, number: &str) -> anyhow::Result<bool> {
        self.delete(ROUTES, number.as_bytes())
    }

    /// All routes, by number.
    pub fn routes(&self) -> anyhow::Result<Vec<Route>> {
        self.list(ROUTES)
    }

    /// Longest-prefix match of a normalized number (one snapshot).
    pub fn route_for(&self, number: &str) -> anyhow::Result<Option<Route>> {
        self.read(ROUTES, |t| {
            for end in (1..=number.len()).rev() {
                if !number.is_char_boundary(end) {
                    continue;
                }
                if let Some(v) = t.get(&number.as_bytes()[..end])? {
                    let route = serde_json::from_slice(v.value())
                        .with_context(|| format!("corrupt record {}", &number[..end]))?;
                    return Ok(Some(route));
                }
            }
            Ok(None)
        })
    }

    /// Adds or replaces a queue.
    pub fn put_queue(&self, name: &str, def: &QueueDef) -> anyhow::Result<()> {
        self.put(QUEUES, name.as_bytes(), &serde_json::to_vec(def)?)?;
        Ok(())
    }

    /// Removes a queue; `false` if there was none.
    pub fn remove_queue(&self, name: &str) -> anyhow::Result<bool> {
        self.delete(QUEUES, name.as_bytes())
    }

    /// Every queue by name. One that no longer reads (written by a later
    /// version) is left out, with a warning, rather than stopping the server.
    pub fn queues(&self) -> anyhow::Result<crate::config::Queues> {
        let mut all = crate::config::Queues::new();
        for (k, v) in self.entries(QUEUES)? {
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
            let last: Option<QueueDef> = self.get(META, &key).unwrap_or(None);
            if last.as_ref() == Some(def) {
                continue;
            }
            let stored: Option<QueueDef> = self.get(QUEUES, name)?;
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
            self.put(META, key.as_bytes(), &serde_json::to_vec(def)?)?;
        }
        Ok(warnings)
    }

    /// A flag in the meta tree (e.g. "the shipped plan was imported").
    pub fn flag(&self, name: &str) -> anyhow::Result<bool> {
        self.contains(META, name.as_bytes())
    }

    /// Whether `number` is in the caller list `list`.
    pub fn in_list(&self, list: &str, number: &str) -> anyhow::Result<bool> {
        self.contains(LISTS, &list_key(list, number))
    }

    /// Adds (or removes) numbers to a caller list, in one transaction;
    /// returns how many changed.
    pub fn edit_list(&self, list: &str, numbers: &[String], add: bool) -> anyhow::Result<usize> {
        self.write(Durability::Immediate, |txn| {
            let mut table = txn.open_table(LISTS)?;
            let mut changed = 0;
            for n in numbers {
                let key = list_key(list, n);
                let was = if add {
                    table.insert(key.as_slice(), [].as_slice())?.is_some()
                } else {
                    table.remove(key.as_slice())?.is_some()
                };
                changed += usize::from(was != add);
            }
            Ok(changed)
        })
    }

    /// The numbers in a caller list.
    pub fn list_members(&self, list: &str) -> anyhow::Result<Vec<String>> {
        let prefix = list_key(list, "");
        self.read(LISTS, |t| {
            let mut out = Vec::new();
            for kv in t.range(prefix.as_slice()..)? {
                let (k, _) = kv?;
                let Some(number) = k.value().strip_prefix(prefix.as_slice()) else {
                    break;
                };
                out.push(String::from_utf8_lossy(number).into_owned());
            }
            Ok(out)
        })
    }

    /// Whether an operator switch is on.
    pub fn switch(&self, name: &str) -> anyhow::Result<bool> {
        self.contains(SWITCHES, name.as_bytes())
    }

    /// Turns an operator switch on or off.
    pub fn set_switch(&self, name: &str, on: bool) -> anyhow::Result<()> {
        if on {
            self.put(SWITCHES, name.as_bytes(), b"1")?;
        } else {
            self.delete(SWITCHES, name.as_bytes())?;
        }
        Ok(())
    }

    /// Switches that are on.
    pub fn switches_on(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .entries(SWITCHES)?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect())
    }

    /// Sets a meta flag.
    pub fn set_flag(&self, name: &str) -> anyhow::Result<()> {
        self.put(META, name.as_bytes(), b"1")?;
        Ok(())
    }
}

/// Inserts a restore's chunk of entries (grouped by tree, in file order)
/// in one transaction, and empties it.
fn insert_chunk(
    db: &redb::Database,
    chunk: &mut Vec<(Tree, Vec<u8>, Vec<u8>)>,
    durability: Durability,
) -> anyhow::Result<()> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability);
    for tree in TREES {
        txn.open_table(tree)?;
    }
    let mut rest = chunk.as_slice();
    while let Some((tree, ..)) = rest.first() {
        let run = rest
            .iter()
            .position(|(t, ..)| t.name() != tree.name())
            .unwrap_or(rest.len());
        let mut table = txn.open_table(*tree)?;
        for (_, k, v) in &rest[..run] {
            table.insert(k.as_slice(), v.as_slice())?;
        }
        rest = &rest[run..];
    }
    txn.commit()?;
    chunk.clear();
    Ok(())
}

/// Removes a file left by an earlier attempt.
fn remove_if_there(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow::Error::new(e).context(format!("cannot remove {}", path.display())))
        }
        _ => Ok(()),
    }
}

/// What an operator reads when the database does not open.
fn open_error(path: &Path, e: redb::DatabaseError) -> anyhow::Error {
    let io = match &e {
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => Some(io),
        _ => None,
    };
    let why = if io.is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied) {
        format!(
            "cannot open the database {}: this user (uid {}) may not write there; give data_dir to the user the server runs as, or point data_dir (YIHAOTONG_DATA_DIR) elsewhere",
            path.display(),
            nix::unistd::getuid()
        )
    } else if matches!(e, redb::DatabaseError::DatabaseAlreadyOpen) {
        format!(
            "cannot open the database {}: another process holds it (is a server already running on it?)",
            path.display()
        )
    } else {
        format!("cannot open the database {}", path.display())
    };
    // The redb error stays in the chain: `open_waiting` reads it.
    anyhow::Error::new(e).context(why)
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
    fn tokens_are_kept_as_their_sha256() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

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
        let listed = |store: &Store| -> Vec<String> {
            store
                .recordings_between(0, u64::MAX)
                .expect("list")
                .into_iter()
                .map(|m| m.path)
                .collect()
        };
        assert_eq!(listed(&store), vec![new.clone()]);
        assert!(store.recordings_between(0, 9_000).expect("list").is_empty());
        // A database from before the time index gets it at open.
        store
            .write(Durability::Immediate, |txn| {
                txn.open_table(RECORDINGS_BY_TIME)?.retain(|_, _| false)?;
                Ok(())
            })
            .expect("clear");
        drop(store);
        let store = Store::open(&dir.path().join("db")).expect("reopen");
        assert_eq!(listed(&store), vec![new]);
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

    /// Four days of records: CDRs, queue-log lines and audit entries, some
    /// on the days' first and last milliseconds.
    fn four_days(store: &Store, first_day: u64) {
        let mut seq = 0;
        let mut key = |at: u64| {
            seq += 1;
            record_key(at, seq).to_vec()
        };
        let (mut cdrs, mut log) = (Vec::new(), Vec::new());
        for day in first_day..first_day + 4 {
            let start = day * archive::DAY_MS;
            for at in [start, start + 3_600_000, start + archive::DAY_MS - 1] {
                let cdr = Cdr {
                    call_id: format!("c{at}"),
                    ended: at,
                    ..Cdr::default()
                };
                cdrs.push((key(at), serde_json::to_vec(&cdr).expect("json")));
                let line = serde_json::json!({ "at": at, "call_id": format!("c{at}"), "event": "ENTERQUEUE" });
                log.push((key(at), serde_json::to_vec(&line).expect("json")));
                store
                    .audit(&AuditEntry {
                        at,
                        who: "test".into(),
                        action: "route.set".into(),
                        target: format!("{at}"),
                        detail: serde_json::Value::Null,
                    })
                    .expect("audit");
            }
        }
        store
            .append_records(&log, &cdrs, &[], &LiveChanges::default())
            .expect("append");
    }

    #[test]
    fn old_days_move_to_the_archive_whole_and_read_back_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let d0 = 20_790;
        four_days(&store, d0);
        let all = |kind| store.records(kind, 0, u64::MAX).expect("read");
        let before: Vec<Vec<Vec<u8>>> = RecordKind::ALL.iter().map(|k| all(*k)).collect();
        assert_eq!(before[0].len(), 12);
        // Keep from the middle of the third day: the first two go.
        let cutoff = (d0 + 2) * archive::DAY_MS + 7_200_000;
        let mut heard = Vec::new();
        let moved = store
            .archive_before(cutoff, &mut |d| heard.push(d.clone()))
            .expect("archive");
        assert_eq!(moved, heard);
        assert_eq!(moved.len(), 6, "{moved:?}");
        assert!(moved.iter().all(|d| d.removed == 3 && d.written == 3));
        for kind in RecordKind::ALL {
            let held = store.read(Store::tree_of(kind), |t| Ok(t.len()?));
            assert_eq!(held.expect("len"), 6, "{kind:?}");
        }
        assert!(dir.path().join("archive/cdrs/2026-12-03.jsonl.gz").exists());
        let after: Vec<Vec<Vec<u8>>> = RecordKind::ALL.iter().map(|k| all(*k)).collect();
        assert_eq!(after, before);
        // A range across the archive's edge, and one inside an archived day.
        let time = |r: &Vec<u8>| RecordKind::Cdrs.time_of(r).expect("time");
        for (since, until) in [
            (
                (d0 + 1) * archive::DAY_MS + 1,
                (d0 + 2) * archive::DAY_MS + 3_600_001,
            ),
            (d0 * archive::DAY_MS, d0 * archive::DAY_MS + 3_600_000),
        ] {
            let want: Vec<Vec<u8>> = before[0]
                .iter()
                .filter(|r| (since..until).contains(&time(r)))
                .cloned()
                .collect();
            assert_eq!(
                store.records(RecordKind::Cdrs, since, until).expect("read"),
                want
            );
        }
        assert_eq!(store.audit_entries(0, u64::MAX).expect("audit").len(), 12);
        // Nothing more is due.
        assert!(store
            .archive_before(cutoff, &mut |_| {})
            .expect("again")
            .is_empty());
        // A crash after the third day's file was written, before its rows
        // left the database: read once, and the next sweep only removes.
        let third = d0 + 2;
        let rows = store
            .records(
                RecordKind::Cdrs,
                third * archive::DAY_MS,
                (third + 1) * archive::DAY_MS,
            )
            .expect("read");
        archive::Archive::new(&dir.path().join("archive"), RecordKind::Cdrs)
            .write_day(third, rows.into_iter().map(Ok))
            .expect("write");
        assert_eq!(all(RecordKind::Cdrs), before[0]);
        let moved = store
            .archive_before((third + 1) * archive::DAY_MS, &mut |_| {})
            .expect("archive");
        let cdr_day = moved
            .iter()
            .find(|d| d.kind == RecordKind::Cdrs)
            .expect("cdrs");
        assert_eq!((cdr_day.removed, cdr_day.written), (3, 0));
        assert_eq!(all(RecordKind::Cdrs), before[0]);
    }

    type Contents = Vec<(&'static str, Vec<(Vec<u8>, Vec<u8>)>)>;

    fn contents(store: &Store) -> Contents {
        TREES
            .iter()
            .map(|tree| (tree.name(), store.entries(*tree).expect("read")))
            .collect()
    }

    #[test]
    fn a_backup_restores_every_tree_and_a_damaged_one_changes_nothing() {
        let (from, to) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let store = Store::open(from.path()).expect("open");
        four_days(&store, 20_000);
        let agent = Agent::new(
            "1001",
            "Li",
            vec!["main".into()],
            Credentials::new("1001", "r", "pw"),
        );
        store.put_agent(&agent).expect("agent");
        store.set_switch("urgent-notice", true).expect("switch");
        let file = from.path().join("db.backup");
        let summary = store.backup(&file).expect("backup");
        assert_eq!(summary.trees["cdrs"], 12);
        assert_eq!(summary.trees["agents"], 1);
        let again = format!("{:#}", store.backup(&file).expect_err("exists"));
        assert!(again.contains("exists"), "{again}");
        let want = contents(&store);

        // Into an empty folder.
        let options = StoreOptions::default();
        let (counts, aside) =
            Store::restore(to.path(), &file, &options, &mut |_| {}).expect("restore");
        assert_eq!(counts.values().sum::<u64>(), summary.entries);
        assert!(aside.is_none());
        let restored = Store::open(to.path()).expect("open restored");
        assert_eq!(contents(&restored), want);

        // Not while something holds the database.
        let held = format!(
            "{:#}",
            Store::restore(to.path(), &file, &options, &mut |_| {}).expect_err("held")
        );
        assert!(held.contains("server stopped"), "{held}");
        drop(restored);

        // A cut backup: refused, and the database is as it was.
        let bytes = std::fs::read(&file).expect("read");
        let cut = from.path().join("cut.backup");
        std::fs::write(&cut, &bytes[..bytes.len() - 100]).expect("write");
        let damaged = format!(
            "{:#}",
            Store::restore(to.path(), &cut, &options, &mut |_| {}).expect_err("damaged")
        );
        assert!(damaged.contains("was not changed"), "{damaged}");
        assert!(!to.path().join("db.redb.restoring").exists());
        assert_eq!(contents(&Store::open(to.path()).expect("open")), want);

        // Over an existing database: the old one is kept aside.
        let (_, aside) = Store::restore(to.path(), &file, &options, &mut |_| {}).expect("again");
        assert!(aside.is_some_and(|p| p.is_file()));
    }

    #[test]
    fn registrations_are_synced_once_and_kept_across_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        assert!(!store.sync_registrations().expect("nothing to sync"));
        let binding: Binding = serde_json::from_value(serde_json::json!({
            "contact": "sip:1001@127.0.0.3:5062",
            "received": "127.0.0.3:5062",
            "transport": "udp",
            "expires_at": 4_000_000_000_000u64,
            "call_id": "r1",
            "cseq": 1
        }))
        .expect("binding");
        store
            .put_bindings("1001", std::slice::from_ref(&binding))
            .expect("put");
        assert_eq!(store.bindings("1001").expect("read"), vec![binding.clone()]);
        assert!(store.sync_registrations().expect("sync"));
        assert!(!store.sync_registrations().expect("synced already"));
        drop(store);
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.bindings("1001").expect("read"), vec![binding]);
    }

    #[test]
    fn a_sled_database_moves_to_redb_once_with_every_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = Agent::new(
            "1001",
            "Li",
            vec!["main".into()],
            Credentials::new("1001", "r", "pw"),
        );
        let route = Route {
            number: "12345".into(),
            queue: "main".into(),
            hotline: "12345".into(),
            ..Default::default()
        };
        let cdr = Cdr {
            call_id: "c1".into(),
            ended: 1_800_000_000_000,
            ..Default::default()
        };
        let booking = CallbackBooking {
            id: 7,
            call_id: "c1".into(),
            number: "13800000000".into(),
            queue: "main".into(),
            rank: Rank::Normal,
            hotline: "12345".into(),
            dialed: "12345".into(),
            requested: 1,
            attempts: 0,
            call_data: Vec::new(),
        };
        // What the sled store wrote: the same trees, keys and JSON values.
        let sled_dir = dir.path().join("db");
        {
            let old = sled::open(&sled_dir).expect("sled");
            let put = |tree: &str, k: &[u8], v: Vec<u8>| {
                old.open_tree(tree)
                    .expect("tree")
                    .insert(k, v)
                    .expect("insert");
            };
            put("agents", b"1001", serde_json::to_vec(&agent).expect("json"));
            put(
                "routes",
                b"12345",
                serde_json::to_vec(&route).expect("json"),
            );
            put(
                "cdrs",
                &record_key(cdr.ended, 0),
                serde_json::to_vec(&cdr).expect("json"),
            );
            put(
                "callbacks",
                &7u64.to_be_bytes(),
                serde_json::to_vec(&booking).expect("json"),
            );
            put("switches", b"urgent-notice", b"1".to_vec());
            // Held by another process (here: this sled handle): refused as
            // held, so the server waits instead of failing.
            let held = Store::open(dir.path()).expect_err("held");
            assert!(is_locked(&held), "{held:#}");
            old.flush().expect("flush");
        }
        let store = Store::open(dir.path()).expect("migrate");
        assert_eq!(store.agent("1001").expect("agent"), Some(agent));
        assert_eq!(store.route_for("12345").expect("route"), Some(route));
        let cdrs = store.records(RecordKind::Cdrs, 0, u64::MAX).expect("cdrs");
        assert_eq!(cdrs, vec![serde_json::to_vec(&cdr).expect("json")]);
        assert_eq!(store.callbacks().expect("callbacks"), vec![booking]);
        assert!(store.switch("urgent-notice").expect("switch"));
        assert!(store.next_callback_id().expect("id") > 7);
        assert!(!sled_dir.exists());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("db.sled-migrated-")
            })
            .collect();
        assert_eq!(aside.len(), 1);
        assert!(!dir.path().join("db.redb.migrating").exists());
        // Once: the next open finds only redb, with what was written since.
        store.set_switch("night-mode", true).expect("switch");
        drop(store);
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.switches_on().expect("switches").len(), 2);
    }
}

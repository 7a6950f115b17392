//! The server: sockets, SIP workers, and the requests that start things.
//!
//! Room: the switchboard. [`Server::start`] binds the sockets and starts one
//! SIP worker per core. Received messages are parsed on the socket tasks and
//! handed to the worker that owns their Call-ID (a hash), so a call's
//! messages are always handled in order by one task, and SIP work spreads
//! over the cores. A worker is the thin async driver of one sans-IO
//! [`Transactions`] table: it feeds it messages and timeouts, sends what it
//! asks to send, and turns its events into registrar answers, OPTIONS
//! answers, new calls, or messages to a running call's task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::acd::records::Records;
use crate::acd::Acd;
use crate::admin::AdminCommand;
use crate::call::{self, CallEvent};
use crate::clock::{now_unix, sleep_until};
use crate::config::Settings;
use crate::ivr::Catalog;
use crate::media::engine::Engine;
use crate::media::ports::PortPool;
use crate::registrar::{Answer, AuthOutcome, Registrar};
use crate::routing;
use crate::sip::message::{self, Message, Method, Request};
use crate::sip::transaction::{TimerConfig, Transactions, TxEvent, TxKey};
use crate::sip::transport::SipSockets;
use crate::sip::{random_token, Peer};
use crate::store::Store;
use std::sync::atomic::Ordering::Relaxed;

/// Methods we implement, for Allow headers.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE";

/// Depth of each worker's in-dialog lane (responses, in-dialog requests,
/// what its calls ask it to send). Its lane of new requests is
/// `[limits] worker_backlog` deep plus room to answer the excess with 503.
const WORKER_QUEUE: usize = 8192;

/// How often the machine's idle CPU is measured (overload control, when
/// `min_idle_cpu_pct` is set): FreeSWITCH's min-idle-cpu also looks at the
/// last second.
const IDLE_CPU_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);
/// How often the runtime's timer lateness is measured (overload control).
const LAG_PERIOD: std::time::Duration = std::time::Duration::from_millis(10);

/// What a worker is told.
#[derive(Debug)]
pub enum WorkerInput {
    /// A message from the network.
    Incoming(Box<Message>, Peer),
    /// A call answers one of its server transactions.
    Respond {
        /// Transaction.
        key: TxKey,
        /// Status in `bytes`.
        status: u16,
        /// The response.
        bytes: Bytes,
    },
    /// A call starts a client transaction; its events go to `owner`.
    Request {
        /// Method.
        method: Method,
        /// Branch in the request's Via.
        branch: String,
        /// The request.
        bytes: Bytes,
        /// Destination.
        peer: Peer,
        /// The call.
        owner: crate::boxed::Sender<CallEvent>,
    },
    /// Bytes outside any transaction (ACK for 2xx).
    Stateless {
        /// Destination.
        peer: Peer,
        /// Bytes.
        bytes: Bytes,
    },
    /// Route messages of this Call-ID to a call.
    Bind {
        /// Call-ID.
        call_id: String,
        /// The call.
        owner: crate::boxed::Sender<CallEvent>,
    },
    /// Stop routing this Call-ID.
    Unbind {
        /// Call-ID.
        call_id: String,
    },
}

/// State every worker and call shares. Each part is either immutable or
/// behind a short lock that is never held across an await.
pub struct Shared {
    /// Settings.
    pub settings: Settings,
    /// Database.
    pub store: Store,
    /// Registrar and authenticator.
    pub registrar: Mutex<Registrar>,
    /// The ACD: agent states and waiting callers.
    pub acd: Acd,
    /// CDRs and the queue log.
    pub records: Records,
    /// RTP ports.
    pub ports: Arc<PortPool>,
    /// Sockets.
    pub sockets: Arc<SipSockets>,
    /// Worker inputs, by index: in-dialog traffic and what calls send.
    pub workers: Vec<mpsc::Sender<WorkerInput>>,
    /// Each worker's lane of new out-of-dialog requests from the network,
    /// served only when its in-dialog lane is empty.
    fresh: Vec<mpsc::Sender<WorkerInput>>,
    /// Overload control: limits, per-holder counts, what was shed.
    pub overload: Arc<crate::overload::Overload>,
    /// The backends' health and the calls each holds.
    pub backends: Arc<crate::backends::Backends>,
    /// host:port for Via and Contact.
    pub host: String,
    /// Calls alive now.
    pub live_calls: AtomicUsize,
    /// Flows, prompts and calendars: the version new calls get.
    pub catalog: std::sync::RwLock<Arc<Catalog>>,
    /// The queues in service (the store's): the version new calls get.
    queues: std::sync::RwLock<Arc<crate::config::Queues>>,
    /// Plays prompts and hears keys for IVR calls.
    pub engine: Engine,
    /// Catalog versions taken since start (0 = the one loaded at start).
    pub catalog_version: std::sync::atomic::AtomicU64,
    /// Serializes reloads (a file watch and a SIGHUP at once).
    reloading: Mutex<()>,
    /// Set on SIGTERM/Ctrl-C: new calls get 503 while calls in progress finish.
    pub draining: std::sync::atomic::AtomicBool,
    /// Set when the drain ends the calls still up: their hang-ups are the
    /// drain's (disposition `drained`).
    pub drain_cut: std::sync::atomic::AtomicBool,
    /// Calls placed by agents' phones (attended transfers replace them).
    pub consults: crate::call::Consults,
    /// Agents' bridged calls, for supervisors.
    pub supervision: crate::call::Supervision,
    /// Every call alive now, with what it is doing, for the API's call control.
    pub calls: Arc<crate::call::LiveCalls>,
    /// Each webhook's delivery figures (its task writes them).
    pub webhooks: crate::webhooks::Figures,
    /// Each SIP worker's live transactions, as of its last input.
    pub transactions: Vec<AtomicUsize>,
    /// Source addresses of registered agents, as of a store generation.
    agent_sources: Mutex<(u64, Arc<std::collections::HashSet<std::net::IpAddr>>)>,
}

impl Shared {
    /// Admin commands that need the running server (status, reload, agent
    /// states) or must reach the ACD after the store; `None`: the store alone
    /// answers. Runs on a blocking thread.
    pub fn live(self: &Arc<Self>, cmd: &AdminCommand) -> Option<Result<serde_json::Value, String>> {
        // A route, plan or account naming a queue or flow nobody declared
        // is refused before anything is written.
        if cmd.names_things() {
            if let Err(e) = self.names(cmd).check(cmd) {
                return Some(Err(format!("{e}; nothing was changed")));
            }
        }
        let runtime = tokio::runtime::Handle::current();
        match cmd {
            AdminCommand::Status => {
                let mut v = self.status();
                let (agents, queues) = runtime.block_on(self.acd.views());
                let mut states = std::collections::BTreeMap::<&str, usize>::new();
                for a in &agents {
                    *states.entry(a.state).or_default() += 1;
                }
                v["agents"] = serde_json::json!(states);
                v["queues"] = serde_json::json!(queues);
                Some(Ok(v))
            }
            AdminCommand::Reload => Some(self.reload()),
            AdminCommand::Originate {
                number,
                agent,
                queue,
                flow,
                hotline,
                data,
            } => {
                let placed = runtime.block_on(crate::call::originate(
                    self,
                    crate::call::Originate {
                        number: number.clone(),
                        agent: agent.clone(),
                        queue: queue.clone(),
                        flow: flow.clone(),
                        hotline: hotline.clone(),
                        data: data.clone(),
                    },
                ));
                Some(placed.map(|call_id| serde_json::json!({ "call_id": call_id })))
            }
            AdminCommand::FlowsValidate => {
                let loaded = crate::ivr::load(&self.settings, &self.queues());
                Some(Ok(serde_json::json!({
                    "ok": loaded.errors() == 0,
                    "errors": loaded.errors(),
                    "warnings": loaded.diagnostics.len() - loaded.errors(),
                    "flows": loaded.catalog.flows.len(),
                    "prompts": loaded.catalog.prompts.len(),
                    "calendars": loaded.catalog.calendars.len(),
                    "diagnostics": loaded.diagnostics,
                })))
            }
            AdminCommand::Flows => {
                let catalog = self.catalog();
                let mut flows: Vec<_> = catalog.flows.values().collect();
                flows.sort_by(|a, b| a.name.cmp(&b.name));
                let flows: Vec<_> = flows
                    .into_iter()
                    .map(|f| {
                        serde_json::json!({
                            "name": f.name,
                            "file": f.file,
                            "description": f.description,
                            "nodes": f.nodes.len(),
                        })
                    })
                    .collect();
                Some(Ok(serde_json::json!({
                    "version": self.catalog_version.load(Relaxed),
                    "flows": flows,
                })))
            }
            AdminCommand::CallsList => Some(Ok(serde_json::json!(self.calls.list()))),
            AdminCommand::CallsHangup { id } => Some(
                runtime
                    .block_on(self.calls.send(id, crate::call::Control::Hangup))
                    .map_err(|(_, why)| why),
            ),
            AdminCommand::QueuesList => {
                // The store's keys beside the desk's figures now.
                let (_, views) = runtime.block_on(self.acd.views());
                Some(self.execute(cmd).map(|mut list| {
                    for q in list.as_array_mut().into_iter().flatten() {
                        let live = views.iter().find(|v| q["name"] == v.name.as_str());
                        if let (Some(fields), Some(live)) = (q.as_object_mut(), live) {
                            if let serde_json::Value::Object(figures) = serde_json::json!(live) {
                                // `strategy` here is the one in force.
                                fields.extend(figures);
                            }
                        }
                    }
                    list
                }))
            }
            AdminCommand::QueuesSet { name, .. } => Some(self.execute_queue(cmd, name)),
            AdminCommand::QueuesRemove { name } => {
                // The store's refusals first, then the desk's (callers in
                // line), then the store's removal.
                let queues = self.queues();
                let in_use = crate::admin::queue_in_use(&self.store, &queues, name);
                match in_use {
                    Err(e) => return Some(Err(format!("{e:#}"))),
                    Ok(Some(why)) => return Some(Err(why)),
                    Ok(None) => {}
                }
                if queues.contains_key(name) {
                    if let Err(why) = runtime.block_on(self.acd.remove_queue(name)) {
                        return Some(Err(why));
                    }
                }
                Some(self.execute_queue(cmd, name))
            }
            AdminCommand::Report { .. }
            | AdminCommand::Cdrs { .. }
            | AdminCommand::QueueLog { .. } => {
                // Read what happened up to now: write the pending batch first.
                runtime.block_on(self.records.flush());
                None
            }
            AdminCommand::AgentsAdd { id, .. } | AdminCommand::AgentsRemove { id } => {
                let r = self.execute(cmd);
                self.acd.touch(id, false);
                Some(r)
            }
            AdminCommand::AgentsState { id, state, reason } => {
                let r = match crate::admin::presence_of(state, reason.clone()) {
                    Err(e) => Err(format!("{e:#}")),
                    Ok(Some(p)) => runtime.block_on(self.acd.set_presence(id, p)),
                    Ok(None) => runtime.block_on(self.acd.end_wrap_up(id)),
                };
                Some(r.map(|()| serde_json::json!({ "agent": id, "state": state })))
            }
            AdminCommand::AgentsList => {
                let listed = self.execute(cmd);
                let (agents, _) = runtime.block_on(self.acd.views());
                Some(listed.map(|mut v| {
                    // The desk knows the live state (ringing, on-call, wrap-up).
                    if let Some(list) = v.as_array_mut() {
                        for entry in list {
                            let id = entry["id"].as_str().unwrap_or_default().to_string();
                            if let Some(a) = agents.iter().find(|a| a.id == id) {
                                entry["state"] = a.state.into();
                                entry["reason"] = a.reason.clone().into();
                                entry["misses"] = a.misses.into();
                                entry["since"] = a.since.into();
                                entry["registered"] = a.registered.into();
                            }
                        }
                    }
                    v
                }))
            }
            _ => None,
        }
    }

    /// Live figures for `yihaotong status`.
    pub fn status(&self) -> serde_json::Value {
        let load = crate::overload::Load {
            live_calls: self.live_calls.load(Relaxed),
            backlog: self
                .fresh
                .iter()
                .map(|f| f.max_capacity() - f.capacity())
                .max()
                .unwrap_or(0),
            media: self.engine.stats.pressure(),
        };
        serde_json::json!({
            "overload": self.overload.snapshot(load),
            "backends": self.backends.snapshot(),
            "tcp_connections": self.sockets.open_connections(),
            "calls_by_state": self.calls.count_by_state(),
            "process": crate::meters::process_figures(),
            "transactions": self.transactions.iter().map(|t| t.load(Relaxed)).sum::<usize>(),
            "webhooks": self
                .webhooks
                .lock()
                .map(|w| serde_json::json!(*w))
                .unwrap_or_default(),
            "auth": self
                .registrar
                .lock()
                .map(|r| r.auth_figures(now_unix()))
                .unwrap_or_default(),
            "live_calls": self.live_calls.load(std::sync::atomic::Ordering::Relaxed),
            "draining": self.draining.load(Relaxed),
            "rtp_ports_free": self.ports.available(),
            "rtp_ports_total": self.ports.total(),
            "flows": self.catalog().flows.len(),
            "catalog_version": self.catalog_version.load(Relaxed),
            "prompts": self.catalog().prompts.len(),
            "media": {
                "streams": self.engine.stats.streams.load(Relaxed),
                "bridges": self.engine.stats.bridges.load(Relaxed),
                "ticks": self.engine.stats.ticks.load(Relaxed),
                "late_ticks_over_2ms": self.engine.stats.late_ticks.load(Relaxed),
                "max_late_us": self.engine.stats.max_late_us.load(Relaxed),
                "late_p50_us_at_most": self.engine.stats.late_quantile_us(0.5),
                "late_p99_us_at_most": self.engine.stats.late_quantile_us(0.99),
                "late_p999_us_at_most": self.engine.stats.late_quantile_us(0.999),
                "packets_sent": self.engine.stats.sent.load(Relaxed),
                "keys_heard": self.engine.stats.digits.load(Relaxed),
                "recording_queued_bytes": crate::media::recording::queued_bytes(),
                "recording_dropped_bytes": crate::media::recording::dropped_bytes(),
            },
        })
    }

    /// Loads flows, prompts and calendars again and, if nothing has an
    /// error, makes them the version new calls get. Calls in progress keep
    /// theirs. On any error the running version stays and the errors are
    /// logged and returned.
    pub fn reload(&self) -> Result<serde_json::Value, String> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let loaded = crate::ivr::load(&self.settings, &self.queues());
        for d in &loaded.diagnostics {
            tracing::warn!("{d}");
        }
        if loaded.errors() > 0 {
            tracing::error!(
                errors = loaded.errors(),
                "reload refused; the running flows stay"
            );
            let list: Vec<String> = loaded
                .diagnostics
                .iter()
                .filter(|d| !d.warning)
                .map(|d| d.to_string())
                .collect();
            return Err(format!(
                "reload refused, the running flows stay:\n{}",
                list.join("\n")
            ));
        }
        let c = loaded.catalog;
        let summary = serde_json::json!({
            "flows": c.flows.len(),
            "prompts": c.prompts.len(),
            "calendars": c.calendars.len(),
            "warnings": loaded.diagnostics.len(),
            "millis": started.elapsed().as_millis() as u64,
        });
        match self.catalog.write() {
            Ok(mut slot) => *slot = Arc::new(c),
            Err(p) => *p.into_inner() = Arc::new(c),
        }
        let version = self.catalog_version.fetch_add(1, Relaxed) + 1;
        tracing::info!(version, %summary, "flows and prompts reloaded");
        Ok(summary)
    }

    /// Whether `ip` is a trunk or the source of a registered agent's phone
    /// (rebuilt from the store when a registration changes; a binding that
    /// lapsed without a write still counts until the next one).
    pub fn is_known_source(&self, ip: std::net::IpAddr) -> bool {
        if self.settings.trunk.allow.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        let generation = self.store.generation();
        let Ok(mut cache) = self.agent_sources.lock() else {
            return false;
        };
        if cache.0 != generation {
            let now = now_unix();
            let mut ips = std::collections::HashSet::new();
            for agent in self.store.agents().unwrap_or_default() {
                for b in self.store.bindings(&agent.id).unwrap_or_default() {
                    if b.expires_at > now {
                        ips.insert(b.received.ip());
                    }
                }
            }
            *cache = (generation, Arc::new(ips));
        }
        cache.1.contains(&ip)
    }

    /// The queues new calls get.
    pub fn queues(&self) -> Arc<crate::config::Queues> {
        match self.queues.read() {
            Ok(q) => q.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// One queue's definition, if it is in service.
    pub fn queue(&self, name: &str) -> Option<crate::config::QueueDef> {
        self.queues().get(name).cloned()
    }

    /// Carries out `cmd` against the store, as the CLI would with no server.
    fn execute(&self, cmd: &AdminCommand) -> Result<serde_json::Value, String> {
        crate::admin::execute(
            &self.store,
            &self.settings.sip.domain,
            cmd.clone(),
            now_unix(),
        )
        .map_err(|e| format!("{e:#}"))
    }

    /// Carries out a change of queue `name`, then serves whatever the store
    /// holds now (the change, or on an error what was there).
    fn execute_queue(&self, cmd: &AdminCommand, name: &str) -> Result<serde_json::Value, String> {
        let r = self.execute(cmd);
        let read = self.queues_changed(name);
        r.and_then(|v| read.map(|()| v))
    }

    /// Reads the queues from the store again after a change; the desk is
    /// told of `changed` (set or gone).
    fn queues_changed(&self, changed: &str) -> Result<(), String> {
        let queues = self.store.queues().map_err(|e| format!("{e:#}"))?;
        if let Some(def) = queues.get(changed) {
            self.acd
                .set_queue(changed, crate::acd::queue_rules(&self.settings, Some(def)));
        }
        match self.queues.write() {
            Ok(mut slot) => *slot = Arc::new(queues),
            Err(p) => *p.into_inner() = Arc::new(queues),
        }
        Ok(())
    }

    /// The queues, flows and prompts in service: what `cmd` may name. The
    /// flow files are parsed for the queues they name, and the prompt names
    /// gathered, only for the commands whose check reads them.
    pub fn names(&self, cmd: &AdminCommand) -> crate::admin::Names {
        let catalog = self.catalog();
        crate::admin::Names {
            queues: self.queues().keys().cloned().collect(),
            flows: catalog.flows.keys().cloned().collect(),
            flow_queues: if cmd.checks_flow_queues() {
                crate::ivr::flow_queue_refs(&self.settings.flows_dir)
            } else {
                Default::default()
            },
            prompts: if cmd.checks_prompts() {
                catalog.prompts.names().into_iter().collect()
            } else {
                Default::default()
            },
            outbound: !self.settings.trunk.outbound.is_empty(),
        }
    }

    /// The catalog new calls get.
    pub fn catalog(&self) -> Arc<Catalog> {
        match self.catalog.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Refuses a request for overload without taking any state: a counted
    /// 503 with `[limits] retry_after`, sent straight to `peer`.
    fn shed_statelessly(&self, req: &Request, peer: Peer, why: crate::overload::Shed) {
        self.overload.record(why);
        let retry = self.settings.limits.retry_after.to_string();
        let resp = req.response(503, Some(&random_token()), &[("Retry-After", &retry)], b"");
        self.sockets.send(peer, Bytes::from(resp));
    }

    /// Which worker owns a Call-ID.
    pub fn worker_of(&self, call_id: &str) -> usize {
        shard(call_id, self.workers.len())
    }
}

/// 415 for an offer that is not SDP, 406 when the caller's Accept rules out
/// SDP answers; `None` when the INVITE's content is acceptable.
fn content_refusal(req: &Request) -> Option<(u16, Vec<(&'static str, String)>)> {
    let is_sdp = |media: &str| {
        let media = media.split(';').next().unwrap_or_default().trim();
        ["application/sdp", "application/*", "*/*"]
            .iter()
            .any(|m| media.eq_ignore_ascii_case(m))
    };
    if let Some(ct) = req.headers.get("content-type") {
        let ct = ct.split(';').next().unwrap_or_default().trim();
        if !req.body.is_empty() && !ct.eq_ignore_ascii_case("application/sdp") {
            return Some((415, vec![("Accept", "application/sdp".to_string())]));
        }
    }
    if req.headers.contains("accept") && !req.headers.get_all("accept").any(is_sdp) {
        return Some((406, vec![("Accept", "application/sdp".to_string())]));
    }
    None
}

/// FNV-1a of the Call-ID, modulo the worker count.
pub fn shard(call_id: &str, n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in call_id.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    (h % n.max(1) as u64) as usize
}

/// A running server.
pub struct Server {
    /// Shared state (for tests and the admin endpoint).
    pub shared: Arc<Shared>,
}

impl Server {
    /// Opens the store, seeds the plan, binds the sockets and starts the workers.
    pub async fn start(settings: Settings, store: Store) -> anyhow::Result<Server> {
        store.seed_plan()?;
        for w in store.seed_queues(&settings.queues)? {
            tracing::warn!("{w}");
        }
        let queues = store.queues()?;
        let loaded = crate::ivr::load(&settings, &queues);
        for d in &loaded.diagnostics {
            tracing::warn!("{d}");
        }
        if loaded.errors() > 0 {
            tracing::error!(
                errors = loaded.errors(),
                "flows, prompts or calendars with errors were left out (listed above; `yihaotong check` shows them too)"
            );
        }
        let catalog = loaded.catalog;
        tracing::info!(
            flows = catalog.flows.len(),
            prompts = catalog.prompts.len(),
            calendars = catalog.calendars.len(),
            "flows and prompts loaded"
        );
        let media_threads = match settings.ivr.media_threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let engine = Engine::start(media_threads, settings.ivr.media_realtime)
            .map_err(|e| anyhow::anyhow!("cannot start the media engine: {e}"))?;
        let (sockets, listener) =
            SipSockets::bind(settings.sip.listen, settings.limits.max_tcp_connections)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot listen on {} ([sip] listen): {e}",
                        settings.sip.listen
                    )
                })?;
        let local = sockets.local_addr();
        let n = if settings.sip.workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            settings.sip.workers
        };
        let mut senders = Vec::with_capacity(n);
        let mut receivers = Vec::with_capacity(n);
        let mut fresh = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::channel(WORKER_QUEUE);
            // Past worker_backlog new INVITEs are answered 503 by the worker;
            // the extra room lets it say so instead of dropping them.
            let (fresh_tx, fresh_rx) = mpsc::channel(settings.limits.worker_backlog.max(1) * 2);
            senders.push(tx);
            fresh.push(fresh_tx);
            receivers.push((rx, fresh_rx));
        }
        crate::sip::message::set_product(&settings.sip.product);
        let overload = crate::overload::Overload::new(settings.limits.clone());
        tokio::spawn(overload.clone().watch_lag(LAG_PERIOD));
        if settings.limits.min_idle_cpu_pct > 0 {
            tokio::spawn(overload.clone().watch_idle_cpu(IDLE_CPU_PERIOD));
        }
        let host = if settings.sip.advertise.is_empty() {
            local.to_string()
        } else {
            settings.sip.advertise.clone()
        };
        // Calls a crash cut get their CDR now, before any new call.
        match store.close_crashed_calls(crate::clock::now_ms()) {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                calls = n,
                "calls cut by an unclean stop closed out as crashed"
            ),
            Err(e) => tracing::error!(error = %e, "cannot close out calls cut by an unclean stop"),
        }
        let events = Arc::new(crate::events::EventBus::new(
            settings.admin.event_backlog,
            settings.admin.event_lag,
        ));
        let records = Records::start(
            store.clone(),
            std::time::Duration::from_secs(settings.queue.record_flush),
            events,
        );
        let shared = Arc::new(Shared {
            registrar: Mutex::new(Registrar::new(store.clone(), settings.sip.clone())),
            acd: Acd::start(&settings, &queues, store.clone(), records.clone()),
            queues: std::sync::RwLock::new(Arc::new(queues)),
            records,
            ports: Arc::new(PortPool::new(
                settings.rtp.address,
                settings.rtp.port_min,
                settings.rtp.port_max,
            )),
            sockets: sockets.clone(),
            workers: senders,
            fresh,
            overload,
            backends: Arc::new(crate::backends::Backends::new(&settings.backends)),
            host,
            live_calls: AtomicUsize::new(0),
            catalog: std::sync::RwLock::new(Arc::new(catalog)),
            engine,
            catalog_version: Default::default(),
            reloading: Mutex::new(()),
            draining: Default::default(),
            drain_cut: Default::default(),
            agent_sources: Mutex::new((u64::MAX, Arc::default())),
            consults: Default::default(),
            supervision: Default::default(),
            calls: Default::default(),
            webhooks: Default::default(),
            transactions: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            store,
            settings,
        });
        for (index, (rx, fresh_rx)) in receivers.into_iter().enumerate() {
            let worker = Worker {
                index,
                shared: shared.clone(),
                txs: Transactions::new(
                    TimerConfig::default(),
                    shared.settings.sip.max_transactions,
                ),
                calls: HashMap::new(),
                owners: HashMap::new(),
                backlog: 0,
                ended: EndedDialogs::default(),
            };
            tokio::spawn(worker.run(rx, fresh_rx));
        }
        tokio::spawn(housekeeping(shared.clone()));
        tokio::spawn(sync_registrations(shared.store.clone()));
        // Callbacks booked before a stop go back in line.
        tokio::spawn(crate::call::resume_callbacks(shared.clone()));
        shared
            .backends
            .spawn_probes(shared.workers.clone(), shared.host.clone());
        if shared.settings.admin.queue_stats_every > 0 {
            tokio::spawn(queue_stats(shared.clone()));
        }
        crate::webhooks::start(
            &shared.settings.webhooks,
            &shared.settings.webhook,
            shared.records.events(),
            &shared.webhooks,
        );
        let inbound_shared = shared.clone();
        sockets.start(
            listener,
            n,
            Arc::new(move |bytes: &[u8], peer: Peer| dispatch(&inbound_shared, bytes, peer)),
        );
        tracing::info!(%local, workers = n, "SIP listening on UDP and TCP");
        Ok(Server { shared })
    }

    /// The SIP address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.sockets.local_addr()
    }
}

/// Parses one received message and hands it to its worker. Malformed requests
/// get a stateless answer here, when RFC 3261 wants one.
fn dispatch(shared: &Arc<Shared>, bytes: &[u8], peer: Peer) {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return; // keep-alive
    }
    match message::parse(bytes) {
        Ok(msg) => {
            let w = shared.worker_of(&msg.core().call_id);
            // New requests (and the CANCELs that must follow their INVITE)
            // wait in their own lane; responses and in-dialog requests go
            // ahead of them.
            let fresh = matches!(&msg, Message::Request(r) if r.core.to.tag.is_none() && r.method != Method::Ack);
            let new_invite = matches!(&msg, Message::Request(r) if r.method == Method::Invite && r.core.to.tag.is_none());
            let lane = if fresh {
                &shared.fresh
            } else {
                &shared.workers
            };
            let sent = lane[w].try_send(WorkerInput::Incoming(Box::new(msg), peer));
            if let Err(mpsc::error::TrySendError::Full(WorkerInput::Incoming(msg, _))) = sent {
                // The worker is swamped past its backlog bound: shed new
                // calls statelessly. An in-dialog request is retransmitted.
                if let (true, Message::Request(req)) = (new_invite, &*msg) {
                    shared.shed_statelessly(req, peer, crate::overload::Shed::Backlog);
                }
            }
        }
        Err(rej) => {
            tracing::debug!(peer = %peer.addr, reason = %rej.reason, status = ?rej.status, "refused message");
            if let (Some(status), Some(echo)) = (rej.status, rej.echo.as_ref()) {
                let reason = if status == 400 {
                    Some(rej.reason.as_str())
                } else {
                    None
                };
                let resp =
                    message::write_response(echo, status, reason, Some(&random_token()), &[], b"");
                shared.sockets.send(peer, Bytes::from(resp));
            }
        }
    }
}

struct Worker {
    index: usize,
    shared: Arc<Shared>,
    txs: Transactions,
    /// Running calls by Call-ID (both legs).
    calls: HashMap<String, crate::boxed::Sender<CallEvent>>,
    /// Owners of client transactions started by calls.
    owners: HashMap<TxKey, crate::boxed::Sender<CallEvent>>,
    /// New requests waiting in this worker's fresh lane, as of the last input.
    backlog: usize,
    /// Dialogs whose call ended in the last [`ENDED_DIALOG_MEMORY`]: a BYE
    /// crossing ours (glare, RFC 5407 §3.1.2) gets 200, not 481.
    ended: EndedDialogs,
}

/// How long a worker remembers an ended call's Call-ID: 64×T1, as long as
/// a BYE crossing ours can still be retransmitted.
const ENDED_DIALOG_MEMORY: Duration = Duration::from_secs(32);

/// Call-IDs of calls that ended lately, oldest first.
#[derive(Default)]
struct EndedDialogs {
    order: std::collections::VecDeque<(Instant, String)>,
    ids: std::collections::HashSet<String>,
}

impl EndedDialogs {
    fn insert(&mut self, now: Instant, call_id: String) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < ENDED_DIALOG_MEMORY {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        if self.ids.insert(call_id.clone()) {
            self.order.push_back((now, call_id));
        }
    }

    fn contains(&self, call_id: &str) -> bool {
        self.ids.contains(call_id)
    }
}

impl Worker {
    /// Serves the in-dialog lane first, then due timers, then one new
    /// request at a time: BYE, ACK and re-INVITEs never wait behind a surge
    /// of INVITEs.
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<WorkerInput>,
        mut fresh: mpsc::Receiver<WorkerInput>,
    ) {
        loop {
            let deadline = self.txs.poll_timeout();
            tokio::select! {
                biased;
                input = rx.recv() => match input {
                    Some(input) => self.handle_input(input),
                    None => return,
                },
                _ = sleep_until(deadline) => self.txs.handle_timeout(Instant::now()),
                Some(input) = fresh.recv() => {
                    self.backlog = fresh.len();
                    self.handle_input(input);
                }
            }
            self.drain();
            self.shared.transactions[self.index].store(self.txs.len(), Relaxed);
        }
    }

    fn drain(&mut self) {
        while let Some(t) = self.txs.poll_transmit() {
            self.shared.sockets.send(t.peer, t.bytes);
        }
        while let Some(event) = self.txs.poll_event() {
            self.handle_event(event);
            while let Some(t) = self.txs.poll_transmit() {
                self.shared.sockets.send(t.peer, t.bytes);
            }
        }
    }

    fn handle_input(&mut self, input: WorkerInput) {
        let now = Instant::now();
        match input {
            WorkerInput::Incoming(msg, peer) => {
                let new_request = matches!(&*msg, Message::Request(r) if r.method != Method::Ack);
                if new_request && self.txs.is_full() {
                    if let Message::Request(req) = &*msg {
                        let why = crate::overload::Shed::Transactions;
                        self.shared.shed_statelessly(req, peer, why);
                    }
                    return;
                }
                if let Message::Request(req) = &*msg {
                    let stranger_request = req.core.to.tag.is_none()
                        && !matches!(req.method, Method::Register | Method::Ack | Method::Cancel);
                    if stranger_request
                        && !self.shared.settings.sip.answers_stranger(&req.method)
                        && !self.shared.is_known_source(peer.addr.ip())
                    {
                        // A scanner learns nothing: no response, no state.
                        tracing::debug!(source = %peer.addr, method = req.method.as_str(), "request from a stranger ignored");
                        return;
                    }
                }
                self.txs.handle_message(now, *msg, peer);
            }
            WorkerInput::Respond { key, status, bytes } => {
                if let Err(e) = self.txs.respond(now, &key, status, bytes) {
                    tracing::debug!(error = %e, status, "response not sent");
                }
            }
            WorkerInput::Request {
                method,
                branch,
                bytes,
                peer,
                owner,
            } => {
                let key = self.txs.request(now, method, &branch, bytes, peer);
                self.owners.insert(key, owner);
            }
            WorkerInput::Stateless { peer, bytes } => self.txs.send_stateless(peer, bytes),
            WorkerInput::Bind { call_id, owner } => {
                self.calls.insert(call_id, owner);
            }
            WorkerInput::Unbind { call_id } => {
                self.calls.remove(&call_id);
                self.owners.retain(|_, o| !o.is_closed());
                self.ended.insert(Instant::now(), call_id);
            }
        }
    }

    /// Hands `event` to the call owning `call_id`; gives it back if there is
    /// no such call (or it is gone).
    fn deliver(&mut self, call_id: &str, event: CallEvent) -> Option<CallEvent> {
        match self.calls.get(call_id) {
            Some(call) => call.try_send(event).err().map(|e| match e {
                mpsc::error::TrySendError::Full(ev) | mpsc::error::TrySendError::Closed(ev) => ev,
            }),
            None => Some(event),
        }
    }

    fn handle_event(&mut self, event: TxEvent) {
        match event {
            TxEvent::Request { key, request, peer } => {
                let call_id = request.core.call_id.clone();
                if let Some(CallEvent::Request { key, request, .. }) = self.deliver(
                    &call_id,
                    CallEvent::Request {
                        key: Box::new(key),
                        request,
                        peer,
                    },
                ) {
                    self.new_request(*key, *request, peer);
                }
            }
            TxEvent::Ack { request, .. } => {
                let call_id = request.core.call_id.clone();
                let _ = self.deliver(&call_id, CallEvent::Ack);
            }
            TxEvent::Cancelled { invite, request } => {
                let call_id = request.core.call_id.clone();
                if self.deliver(&call_id, CallEvent::Cancelled).is_some() {
                    let resp = request.response(487, Some(&random_token()), &[], b"");
                    let _ = self
                        .txs
                        .respond(Instant::now(), &invite, 487, Bytes::from(resp));
                }
            }
            TxEvent::Response { key, response } => {
                let final_response = response.status >= 200;
                let owner = if final_response {
                    self.owners.remove(&key)
                } else {
                    self.owners.get(&key).cloned()
                };
                let call_id = response.core.call_id.clone();
                let event = CallEvent::Response {
                    key: Some(Box::new(key)),
                    response,
                };
                match owner {
                    Some(o) => {
                        let _ = o.try_send(event);
                    }
                    None => {
                        let _ = self.deliver(&call_id, event);
                    }
                }
            }
            TxEvent::Stray { response, .. } => {
                let call_id = response.core.call_id.clone();
                let _ = self.deliver(
                    &call_id,
                    CallEvent::Response {
                        key: None,
                        response,
                    },
                );
            }
            TxEvent::Timeout { key } => {
                if let Some(o) = self.owners.remove(&key) {
                    let _ = o.try_send(CallEvent::Timeout { key: Box::new(key) });
                }
            }
            TxEvent::AckTimeout { call_id, .. } => {
                let _ = self.deliver(&call_id, CallEvent::AckTimeout);
            }
        }
    }

    fn answer(&mut self, key: &TxKey, req: &Request, answer: &Answer) {
        let headers: Vec<(&str, &str)> = answer
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        let bytes = req.response(answer.status, Some(&random_token()), &headers, b"");
        let _ = self
            .txs
            .respond(Instant::now(), key, answer.status, Bytes::from(bytes));
    }

    fn simple(
        &mut self,
        key: &TxKey,
        req: &Request,
        status: u16,
        headers: &[(&'static str, String)],
    ) {
        self.answer(
            key,
            req,
            &Answer {
                status,
                headers: headers.to_vec(),
                came_online: false,
            },
        );
    }

    fn new_request(&mut self, key: TxKey, req: Request, peer: Peer) {
        // We support no extensions: any Require gets 420 (RFC 3261 §8.2.2.3).
        let required: Vec<&str> = req.headers.get_all("require").collect();
        if !required.is_empty() && req.method != Method::Cancel {
            let unsupported = required.join(", ");
            self.simple(&key, &req, 420, &[("Unsupported", unsupported)]);
            return;
        }
        match &req.method {
            Method::Register => {
                let answer = match self.shared.registrar.lock() {
                    Ok(mut r) => r.register(now_unix(), &req, &peer),
                    Err(_) => Answer::plain(500),
                };
                if answer.status == 200 {
                    if let Some(agent) = &req.core.to.user {
                        self.shared.acd.touch(agent, answer.came_online);
                    }
                }
                self.answer(&key, &req, &answer);
            }
            Method::Options => {
                let headers = [
                    ("Allow", ALLOW.to_string()),
                    ("Accept", "application/sdp".to_string()),
                ];
                self.simple(&key, &req, 200, &headers);
            }
            Method::Invite if req.core.to.tag.is_some() => self.simple(&key, &req, 481, &[]),
            Method::Invite => self.new_call(key, req, peer),
            // A BYE crossing ours for a call that is ending or just ended
            // (its task is gone or going): 200, as RFC 3261 §15.1.2 and
            // RFC 5407 §3.1.2 want; its retransmissions hit the transaction.
            Method::Bye
                if self.ended.contains(&req.core.call_id)
                    || self
                        .calls
                        .get(&req.core.call_id)
                        .is_some_and(|c| c.is_closed()) =>
            {
                self.simple(&key, &req, 200, &[])
            }
            Method::Bye
            | Method::Info
            | Method::Update
            | Method::Refer
            | Method::Notify
            | Method::Prack => self.simple(&key, &req, 481, &[]),
            Method::Subscribe | Method::Message | Method::Publish => {
                self.simple(&key, &req, 405, &[("Allow", ALLOW.to_string())])
            }
            Method::Other(_) => self.simple(&key, &req, 501, &[("Allow", ALLOW.to_string())]),
            Method::Ack | Method::Cancel => {}
        }
    }

    fn new_call(&mut self, key: TxKey, req: Request, peer: Peer) {
        use crate::overload::{Holder, Load, Shed};
        if self.shared.draining.load(Relaxed) {
            // Shutting down: no new state; the trunk retries elsewhere or later.
            self.shared.overload.record(Shed::Draining);
            self.simple(&key, &req, 503, &[("Retry-After", "30".to_string())]);
            return;
        }
        // A call that has run out of hops is going round a loop (through a
        // gateway and back): 483, as a proxy would (RFC 3261 §16.3 step 3),
        // for every call leg we would place carries one hop less.
        if req
            .headers
            .get("max-forwards")
            .map(|m| m.trim().parse::<u8>())
            == Some(Ok(0))
        {
            tracing::info!(source = %peer.addr, call_id = %req.core.call_id, "INVITE out of hops (Max-Forwards 0): a loop");
            self.simple(&key, &req, 483, &[]);
            return;
        }
        let dialed_raw = req
            .uri_user
            .clone()
            .or_else(|| req.core.to.user.clone())
            .unwrap_or_default();
        // Emergency numbers are never shed (an agent's phone dials them).
        let emergency = self
            .shared
            .settings
            .transfer
            .emergency
            .contains(&dialed_raw);
        let load = Load {
            live_calls: self.shared.live_calls.load(Relaxed),
            backlog: self.backlog,
            media: self.shared.engine.stats.pressure(),
        };
        if let (false, Err(why)) = (emergency, self.shared.overload.admit(load)) {
            self.shed(&key, &req, why);
            return;
        }
        // Bodies and answers we cannot deal in are refused before anything
        // else (RFC 3261 §8.2.3, §21.4.7): only SDP is spoken here.
        if let Some((status, headers)) = content_refusal(&req) {
            self.simple(&key, &req, status, &headers);
            return;
        }
        let settings = &self.shared.settings;
        let trunk = settings
            .trunk
            .allow
            .iter()
            .any(|net| net.contains(&peer.addr.ip()));
        let caller_agent = if trunk {
            None
        } else {
            let outcome = match self.shared.registrar.lock() {
                Ok(mut r) => r.authenticate(now_unix(), &req, &peer),
                Err(_) => AuthOutcome::Refuse(Answer::plain(500)),
            };
            match outcome {
                AuthOutcome::Agent(id) => Some(id),
                AuthOutcome::Refuse(answer) => {
                    if answer.status == 403 {
                        tracing::info!(source = %peer.addr, "INVITE from outside the trunk ACL refused");
                    }
                    self.answer(&key, &req, &answer);
                    return;
                }
            }
        };
        // One slot per call against its agent, or its trunk address when
        // that has a limit; given back when the call ends.
        let holder = match &caller_agent {
            Some(_) if emergency => None,
            Some(agent) => Some(Holder::Agent(agent.clone())),
            None if settings.limits.max_calls_per_trunk_source > 0 => {
                Some(Holder::Source(peer.addr.ip()))
            }
            None => None,
        };
        let slot = match holder.map(|h| self.shared.overload.hold(h)) {
            None => crate::overload::CallSlot::none(),
            Some(Ok(slot)) => slot,
            Some(Err(why)) => {
                tracing::info!(source = %peer.addr, agent = ?caller_agent, limit = why.label(), "call refused: per-holder limit");
                self.shed(&key, &req, why);
                return;
            }
        };
        if let (Some(agent), Some(code)) = (&caller_agent, dialed_raw.strip_prefix('*')) {
            self.feature_code(key, req, peer, agent.clone(), code.to_string(), slot);
            return;
        }
        // An agent's phone reaches another agent, a peer centre, an
        // emergency number or, within its dialing permissions, an outside
        // number straight, not through the number plan.
        let direct = match caller_agent.as_deref() {
            Some(agent) => match call::agent_dial(&self.shared, agent, &dialed_raw) {
                call::AgentDial::Direct(target) => Some(target),
                call::AgentDial::Plan => None,
                call::AgentDial::Refused(why) => {
                    let warning = crate::sip::warning(&why);
                    self.simple(&key, &req, 403, &[("Warning", warning)]);
                    return;
                }
            },
            None => None,
        };
        let (dialed, route) = if direct.is_some() {
            let route = crate::routing::Route {
                number: dialed_raw.clone(),
                queue: String::new(),
                flow: String::new(),
                hotline: "agent call".into(),
                ..Default::default()
            };
            (dialed_raw, route)
        } else {
            let Some(dialed) = routing::normalize(&dialed_raw, &settings.trunk.normalize) else {
                tracing::info!(dialed = %dialed_raw, "INVITE for a number that is not dialable");
                self.simple(&key, &req, 404, &[]);
                return;
            };
            match self.shared.store.route_for(&dialed) {
                Ok(Some(route)) => (dialed, route.serving_now(|| settings.local_now())),
                Ok(None) => {
                    tracing::info!(dialed = %dialed, call_id = %req.core.call_id, "no route for dialed number");
                    self.simple(&key, &req, 404, &[]);
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "number plan lookup failed");
                    self.simple(&key, &req, 500, &[]);
                    return;
                }
            }
        };
        let (ctx, rx) = self.call_ctx(&req.core.call_id);
        let arrival = call::Arrival {
            key,
            invite: req,
            peer,
            route,
            dialed,
            caller_agent,
            direct,
            slot,
        };
        tokio::spawn(call::run(ctx, rx, arrival));
    }

    /// Refuses a new call for overload: 503 with Retry-After, counted.
    fn shed(&mut self, key: &TxKey, req: &Request, why: crate::overload::Shed) {
        self.shared.overload.record(why);
        tracing::debug!(call_id = %req.core.call_id, reason = why.label(), "new call shed");
        let retry = self.shared.settings.limits.retry_after.to_string();
        self.simple(key, req, 503, &[("Retry-After", retry)]);
    }

    /// A new call's context: its events come from this worker.
    fn call_ctx(&mut self, call_id: &str) -> (call::CallCtx, crate::boxed::Receiver<CallEvent>) {
        let (tx, rx) = crate::boxed::channel(64);
        self.calls.insert(call_id.to_string(), tx.clone());
        let ctx = call::CallCtx {
            shared: self.shared.clone(),
            worker: self.shared.workers[self.index].clone(),
            worker_index: self.index,
            events_tx: tx,
            flow_vars: Vec::new(),
        };
        (ctx, rx)
    }

    /// An agent's phone dialed `*CODE`: *21 log in (available), *22[REASON]
    /// break, *23 log out, *24 end wrap-up. The state changes at the desk;
    /// the phone is answered by the `agent-feature` flow, which says how it
    /// went (flow variable `result`: logged-in, on-break, logged-out, ready
    /// or failed).
    fn feature_code(
        &mut self,
        key: TxKey,
        req: Request,
        peer: Peer,
        agent: String,
        code: String,
        slot: crate::overload::CallSlot,
    ) {
        use crate::store::Presence;
        // *31/*32/*33 + agent: listen, whisper, barge (supervisors only).
        if let Some((mode, target)) = call::supervision_code(&code) {
            let allowed = matches!(self.shared.store.agent(&agent), Ok(Some(a)) if a.supervisor);
            if !allowed {
                tracing::info!(
                    agent,
                    code,
                    "supervision code from an account that is not a supervisor"
                );
                self.simple(&key, &req, 403, &[]);
                return;
            }
            let target = target.to_string();
            let (ctx, rx) = self.call_ctx(&req.core.call_id);
            tokio::spawn(async move {
                let _slot = slot;
                call::supervise(ctx, rx, key, req, peer, agent, target, mode).await
            });
            return;
        }
        enum Change {
            To(Presence, &'static str),
            EndWrapUp,
        }
        let change = match code.get(..2) {
            Some("21") if code.len() == 2 => Some(Change::To(Presence::Available, "logged-in")),
            Some("22") if code[2..].chars().all(|c| c.is_ascii_digit()) && code.len() <= 8 => {
                let reason = if code.len() > 2 {
                    code[2..].to_string()
                } else {
                    "break".to_string()
                };
                Some(Change::To(Presence::OnBreak(reason), "on-break"))
            }
            Some("23") if code.len() == 2 => Some(Change::To(Presence::LoggedOut, "logged-out")),
            Some("24") if code.len() == 2 => Some(Change::EndWrapUp),
            _ => None,
        };
        let Some(change) = change else {
            tracing::info!(agent, code, "unknown feature code");
            self.simple(&key, &req, 404, &[]);
            return;
        };
        let route = crate::routing::Route {
            number: format!("*{code}"),
            queue: String::new(),
            flow: "agent-feature".into(),
            hotline: "agent-feature".into(),
            ..Default::default()
        };
        // Ask the desk first, then answer the phone with the outcome.
        let acd = self.shared.acd.clone();
        let (ctx, rx) = self.call_ctx(&req.core.call_id);
        let arrival = call::Arrival {
            key,
            invite: req,
            peer,
            route,
            dialed: format!("*{code}"),
            caller_agent: Some(agent.clone()),
            direct: None,
            slot,
        };
        tokio::spawn(async move {
            let outcome = match change {
                Change::To(p, word) => acd.set_presence(&agent, p).await.map(|()| word),
                Change::EndWrapUp => acd.end_wrap_up(&agent).await.map(|()| "ready"),
            };
            let result = match outcome {
                Ok(word) => word.to_string(),
                Err(e) => {
                    tracing::info!(agent, error = %e, "feature code failed");
                    "failed".to_string()
                }
            };
            tracing::info!(agent, result, "feature code");
            let ctx = call::CallCtx {
                flow_vars: vec![("result".into(), result)],
                ..ctx
            };
            call::run(ctx, rx, arrival).await;
        });
    }
}

/// `queue.stats` events: every `queue_stats_every` seconds, each queue
/// whose figures changed since it was last told (quiet queues say nothing,
/// so they do not push call events out of the backlog).
async fn queue_stats(shared: Arc<Shared>) {
    let period = std::time::Duration::from_secs(shared.settings.admin.queue_stats_every);
    let mut ticker = tokio::time::interval(period);
    let mut told: HashMap<String, serde_json::Value> = HashMap::new();
    loop {
        ticker.tick().await;
        let (_, queues) = shared.acd.views().await;
        for q in queues {
            let figures = serde_json::json!(q);
            if told.get(&q.name) == Some(&figures) {
                continue;
            }
            let about = crate::events::About {
                queue: Some(q.name.clone()),
                ..Default::default()
            };
            shared
                .records
                .events()
                .publish("queue.stats", about, figures.clone());
            told.insert(q.name, figures);
        }
    }
}

/// Every half second, makes the registrations committed since durable
/// (they are committed without a sync, so a REGISTER storm does not wait
/// for the disk per request).
async fn sync_registrations(store: crate::store::Store) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.sync_registrations()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "cannot sync registrations"),
            Err(e) => tracing::error!(error = %e, "registration sync task failed"),
        }
    }
}

/// At start and hourly: deletes recordings past `[recording]
/// retention_days`, and moves whole days of records older than `[records]
/// keep_days` to the archive (each day logged as it goes).
async fn housekeeping(shared: Arc<Shared>) {
    let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        hourly.tick().await;
        let now = crate::clock::now_ms();
        let recording = &shared.settings.recording;
        if recording.enabled && recording.retention_days > 0 {
            let days = recording.retention_days;
            let cutoff = now.saturating_sub(days.saturating_mul(86_400_000));
            let store = shared.store.clone();
            match tokio::task::spawn_blocking(move || store.expire_recordings(cutoff)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(deleted = n, days, "expired recordings deleted"),
                Ok(Err(e)) => tracing::error!(error = %e, "cannot expire recordings"),
                Err(e) => tracing::error!(error = %e, "recording expiry task failed"),
            }
        }
        let keep_days = shared.settings.records.keep_days;
        if keep_days > 0 {
            let cutoff = now.saturating_sub(keep_days.saturating_mul(86_400_000));
            let store = shared.store.clone();
            let archived = tokio::task::spawn_blocking(move || {
                store.archive_before(cutoff, &mut |d| {
                    tracing::info!(
                        kind = d.kind.name(),
                        day = crate::store::archive::date_of(d.day),
                        removed = d.removed,
                        written = d.written,
                        keep_days,
                        "a day of records moved to the archive"
                    )
                })
            })
            .await;
            match archived {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot archive old records; they stay in the database")
                }
                Err(e) => tracing::error!(error = %e, "records archive task failed"),
            }
        }
    }
}

/// Reloads on SIGHUP and when anything under `flows_dir` or `sounds_dir`
/// changes (after a 300 ms quiet period, so an editor's burst of writes is
/// one reload).
pub fn watch_reloads(shared: Arc<Shared>) -> anyhow::Result<()> {
    use notify::Watcher;
    let (tx, mut rx) = mpsc::channel::<&'static str>(8);
    let file_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| !e.kind.is_access()) {
            let _ = file_tx.try_send("file change");
        }
    })?;
    for dir in [&shared.settings.flows_dir, &shared.settings.sounds_dir] {
        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::Recursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "not watching for changes (SIGHUP and `yihaotong reload` still work)");
        }
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if tx.send("SIGHUP").await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let _watcher = watcher; // lives as long as this task
        while let Some(why) = rx.recv().await {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            while rx.try_recv().is_ok() {}
            tracing::info!(why, "reloading flows and prompts");
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || s.reload()).await;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_dialogs_are_remembered_for_64_t1_then_forgotten() {
        let t0 = Instant::now();
        let mut ended = EndedDialogs::default();
        ended.insert(t0, "a".into());
        ended.insert(t0 + Duration::from_secs(10), "b".into());
        ended.insert(t0 + Duration::from_secs(10), "b".into());
        assert!(ended.contains("a") && ended.contains("b"));
        assert_eq!(ended.order.len(), 2, "a Call-ID is kept once");
        // The next end after 32 s forgets `a` (ended at t0), not `b`.
        ended.insert(t0 + ENDED_DIALOG_MEMORY, "c".into());
        assert!(!ended.contains("a") && ended.contains("b") && ended.contains("c"));
        ended.insert(t0 + Duration::from_secs(60), "d".into());
        assert!(!ended.contains("b") && ended.contains("c") && ended.contains("d"));
        assert_eq!((ended.ids.len(), ended.order.len()), (2, 2));
    }
}

//! The server: sockets, SIP workers, and the requests that start things,
//! put together.
//!
//! Room: the switchboard's wiring. [`Server::start`] binds the sockets,
//! builds the calls' [`House`] and the server's [`Shared`] around it, and
//! starts one SIP worker ([`Worker`], in `endpoint`) per core. Received
//! messages are parsed on the socket tasks and handed to the worker that
//! owns their Call-ID (a hash), so a call's messages are always handled in
//! order by one task, and SIP work spreads over the cores.
//!
//! Its parts: `dispatch` (bytes to the worker owning the Call-ID, in one
//! of two lanes), `admission` (the workers' door: what a new request
//! meets, decided by `admit`, then a registrar answer, a feature code or a
//! call task), `live` (the admin commands only the running server answers:
//! status, reload, agent states, queue changes) and `tasks` (queue figures,
//! registration syncs, housekeeping, reload watching).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::acd::records::Records;
use crate::acd::Acd;
use crate::admin::AdminCommand;
use crate::call::{self, House};
use crate::clock::now_unix;
use crate::config::Settings;
use crate::endpoint::{CallEvent, Worker, WorkerInput, ALLOW};

use crate::media::engine::Engine;
use crate::media::ports::PortPool;
use crate::registrar::{Answer, AuthOutcome, Registrar};
use crate::routing;
use crate::sip::message::{self, Message, Method, Request};
use crate::sip::transaction::TxKey;
use crate::sip::transport::SipSockets;
use crate::sip::{random_token, Peer};
use crate::store::Store;
use std::sync::atomic::Ordering::Relaxed;

mod admission;
mod dispatch;
mod live;
mod tasks;

use dispatch::dispatch;
pub use tasks::watch_reloads;
use tasks::{housekeeping, meters_upkeep, queue_stats, sync_registrations};

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

/// State every worker shares: the calls' [`House`], and what only the
/// switchboard needs (the registrar, sockets, the lanes of new requests,
/// overload control, reload and drain flags, figures). Each part is either
/// immutable or behind a short lock that is never held across an await.
/// It reads as the house too (`Deref`), so the switchboard's code says
/// `shared.settings` as the calls say `house.settings`.
pub struct Shared {
    /// What calls share.
    pub house: Arc<House>,
    /// Registrar and authenticator.
    pub registrar: Mutex<Registrar>,
    /// Sockets.
    pub sockets: Arc<SipSockets>,
    /// Each worker's lane of new out-of-dialog requests from the network,
    /// served only when its in-dialog lane is empty.
    fresh: Vec<mpsc::Sender<WorkerInput>>,
    /// Overload control: limits, per-holder counts, what was shed.
    pub overload: Arc<crate::overload::Overload>,
    /// Catalog versions taken since start (0 = the one loaded at start).
    pub catalog_version: std::sync::atomic::AtomicU64,
    /// Serializes reloads (a file watch and a SIGHUP at once).
    reloading: Mutex<()>,
    /// Set on SIGTERM/Ctrl-C: new calls get 503 while calls in progress finish.
    pub draining: std::sync::atomic::AtomicBool,
    /// Each webhook's delivery figures (its task writes them).
    pub webhooks: crate::webhooks::Figures,
    /// Each SIP worker's live transactions, as of its last input.
    pub transactions: Vec<Arc<AtomicUsize>>,
    /// Source addresses of registered agents, as of a store generation.
    agent_sources: Mutex<(u64, Arc<std::collections::HashSet<std::net::IpAddr>>)>,
}

impl std::ops::Deref for Shared {
    type Target = House;

    fn deref(&self) -> &House {
        &self.house
    }
}

impl Shared {
    /// Whether `ip` is a trunk or the source of a registered agent's phone
    /// (rebuilt from the store when a registration changes; a binding that
    /// lapsed without a write still counts until the next one).
    pub fn is_known_source(&self, ip: std::net::IpAddr) -> bool {
        if self.settings.trunk.allows(ip) {
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

    /// Refuses a request for overload without taking any state: a counted
    /// 503 with `[limits] retry_after`, sent straight to `peer`.
    fn shed_statelessly(&self, req: &Request, peer: Peer, why: crate::overload::Shed) {
        self.overload.record(why);
        let retry = self.settings.limits.retry_after.to_string();
        let resp = req.response(503, Some(&random_token()), &[("Retry-After", &retry)], b"");
        self.sockets.send(peer, Bytes::from(resp));
    }
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
        let registrar = Mutex::new(Registrar::new(store.clone(), settings.sip.clone()));
        let house = Arc::new(House {
            acd: Acd::start(&settings, &queues, store.clone(), records.clone()),
            queues: std::sync::RwLock::new(Arc::new(queues)),
            records,
            ports: Arc::new(PortPool::new(
                settings.rtp.address,
                settings.rtp.port_min,
                settings.rtp.port_max,
            )),
            workers: senders,
            backends: Arc::new(crate::backends::Backends::new(&settings.backends)),
            host,
            live_calls: AtomicUsize::new(0),
            catalog: std::sync::RwLock::new(Arc::new(catalog)),
            engine,
            drain_cut: Default::default(),
            calls: Default::default(),
            store,
            settings,
        });
        let shared = Arc::new(Shared {
            house,
            registrar,
            sockets: sockets.clone(),
            fresh,
            overload,
            catalog_version: Default::default(),
            reloading: Mutex::new(()),
            draining: Default::default(),
            agent_sources: Mutex::new((u64::MAX, Arc::default())),
            webhooks: Default::default(),
            transactions: (0..n).map(|_| Arc::new(AtomicUsize::new(0))).collect(),
        });
        for (index, (rx, fresh_rx)) in receivers.into_iter().enumerate() {
            let worker = Worker::new(
                index,
                Arc::new(admission::Switchboard {
                    shared: shared.clone(),
                }),
                shared.sockets.clone(),
                shared.transactions[index].clone(),
                shared.settings.sip.max_transactions,
            );
            tokio::spawn(worker.run(rx, fresh_rx));
        }
        tokio::spawn(housekeeping(shared.clone()));
        tokio::spawn(meters_upkeep());
        tokio::spawn(sync_registrations(shared.store.clone()));
        // Callbacks booked before a stop go back in line.
        tokio::spawn(crate::call::resume_callbacks(shared.house.clone()));
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

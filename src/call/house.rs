//! The house the calls live in: what every call shares, and nothing the
//! switchboard alone needs.
//!
//! Room: the call's surroundings. A call reaches the settings, the
//! database, the desk, the records office, RTP ports, the media engine,
//! the backends, the flows and queues in service, the SIP workers (by
//! message), and the registries of live calls through one [`House`]; the
//! server builds it at start and holds it inside its own shared state.
//! Each part is immutable or behind a short lock never held across an
//! await.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use crate::acd::records::Records;
use crate::acd::Acd;
use crate::config::{QueueDef, Queues, Settings};
use crate::endpoint::{shard, WorkerInput};
use crate::ivr::Catalog;
use crate::media::engine::Engine;
use crate::media::ports::PortPool;
use crate::store::Store;

/// What every call shares.
pub struct House {
    /// Settings.
    pub settings: Settings,
    /// Database.
    pub store: Store,
    /// The ACD: agent states and waiting callers.
    pub acd: Acd,
    /// CDRs and the queue log.
    pub records: Records,
    /// RTP ports.
    pub ports: Arc<PortPool>,
    /// Worker inputs, by index: in-dialog traffic and what calls send.
    pub workers: Vec<mpsc::Sender<WorkerInput>>,
    /// The backends' health and the calls each holds.
    pub backends: Arc<crate::backends::Backends>,
    /// host:port for Via and Contact.
    pub host: String,
    /// Calls alive now.
    pub live_calls: AtomicUsize,
    /// Flows, prompts and calendars: the version new calls get.
    pub catalog: RwLock<Arc<Catalog>>,
    /// The queues in service (the store's): the version new calls get.
    pub queues: RwLock<Arc<Queues>>,
    /// Plays prompts and hears keys for IVR calls.
    pub engine: Engine,
    /// Set when the drain ends the calls still up: their hang-ups are the
    /// drain's (disposition `drained`).
    pub drain_cut: AtomicBool,
    /// Every call alive now, with what it is doing, for the API's call control.
    pub calls: Arc<super::LiveCalls>,
}

impl House {
    /// The queues in service (the version new calls get).
    pub fn queues(&self) -> Arc<Queues> {
        match self.queues.read() {
            Ok(q) => q.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// One queue's definition, if it is in service.
    pub fn queue(&self, name: &str) -> Option<QueueDef> {
        self.queues().get(name).cloned()
    }

    /// The catalog new calls get.
    pub fn catalog(&self) -> Arc<Catalog> {
        match self.catalog.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The index of the worker that owns `call_id`.
    pub fn worker_of(&self, call_id: &str) -> usize {
        shard(call_id, self.workers.len())
    }
}

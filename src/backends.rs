//! The backends: the self-service systems (12333's, 12329's) flows hand
//! calls to, and whether each can take one now.
//!
//! Room: the hand-off desk. Each `[backends.NAME]` has a health state (up
//! until its OPTIONS probes say otherwise: down after `down_after` failed
//! probes in a row, up again after `up_after` good ones; a 2xx–4xx answer is
//! good, a 5xx, 6xx or silence is not) and a count of calls it holds, bounded
//! by `max_calls`. A hand-off asks [`Backends::take`] first: a backend that
//! is down or full is not tried at all, and the flow's fallback runs at once.
//! The probe loop sends through the SIP workers like any request of ours; the
//! decisions ([`Health::record`]) are plain state, unit-tested without a
//! network. It may touch the workers' inputs; nothing else.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::call::CallEvent;
use crate::config::BackendDef;
use crate::server::WorkerInput;
use crate::sip::dialog::Dialog;
use crate::sip::message::Method;
use crate::sip::transaction::TxKey;
use crate::sip::{random_token, SipTarget};

/// One backend's health and load.
#[derive(Debug, Default)]
pub struct Health {
    /// Marked down by its probes.
    down: AtomicBool,
    /// Failed probes in a row (while up) or good ones in a row (while down).
    streak: AtomicU32,
    /// Calls handed to it and not yet over.
    in_flight: AtomicUsize,
    /// Probes sent, and how many failed.
    probes: AtomicU64,
    probes_failed: AtomicU64,
    /// Hand-offs not tried because it was down, or full.
    skipped_down: AtomicU64,
    skipped_full: AtomicU64,
    /// Status of the last probe's answer (0: none came).
    last_status: AtomicU32,
}

impl Health {
    /// Whether it is marked up.
    pub fn is_up(&self) -> bool {
        !self.down.load(Relaxed)
    }

    /// Counts a probe's outcome (`status` 0: no answer). Returns the new
    /// state when this probe changed it.
    pub fn record(&self, status: u16, def: &BackendDef) -> Option<bool> {
        self.probes.fetch_add(1, Relaxed);
        self.last_status.store(u32::from(status), Relaxed);
        let good = (200..500).contains(&status);
        if !good {
            self.probes_failed.fetch_add(1, Relaxed);
        }
        let down = self.down.load(Relaxed);
        // A streak counts what would change the state; anything else resets it.
        if good == down {
            let streak = self.streak.fetch_add(1, Relaxed) + 1;
            let needed = if down { def.up_after } else { def.down_after };
            if streak >= needed.max(1) {
                self.down.store(!down, Relaxed);
                self.streak.store(0, Relaxed);
                return Some(down);
            }
        } else {
            self.streak.store(0, Relaxed);
        }
        None
    }
}

/// Why a backend was not tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// No such backend in the settings.
    Unknown,
    /// Its probes marked it down.
    Down,
    /// It holds `max_calls` calls.
    Full,
}

impl Unavailable {
    /// For logs.
    pub fn label(self) -> &'static str {
        match self {
            Unavailable::Unknown => "unknown",
            Unavailable::Down => "down",
            Unavailable::Full => "full",
        }
    }
}

/// A call held by a backend; given back when dropped.
pub struct BackendSlot {
    health: Arc<Health>,
}

impl Drop for BackendSlot {
    fn drop(&mut self) {
        self.health.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Every backend's state, by name.
pub struct Backends {
    defs: BTreeMap<String, BackendDef>,
    health: BTreeMap<String, Arc<Health>>,
}

impl Backends {
    /// All up, none holding a call.
    pub fn new(defs: &BTreeMap<String, BackendDef>) -> Backends {
        Backends {
            defs: defs.clone(),
            health: defs
                .keys()
                .map(|k| (k.clone(), Arc::new(Health::default())))
                .collect(),
        }
    }

    /// A slot on backend `name` for one call, unless it is down or full.
    pub fn take(&self, name: &str) -> Result<BackendSlot, Unavailable> {
        let (Some(def), Some(health)) = (self.defs.get(name), self.health.get(name)) else {
            return Err(Unavailable::Unknown);
        };
        if !health.is_up() {
            health.skipped_down.fetch_add(1, Relaxed);
            return Err(Unavailable::Down);
        }
        let held = health.in_flight.fetch_add(1, Relaxed);
        if def.max_calls > 0 && held >= def.max_calls {
            health.in_flight.fetch_sub(1, Relaxed);
            health.skipped_full.fetch_add(1, Relaxed);
            return Err(Unavailable::Full);
        }
        Ok(BackendSlot {
            health: health.clone(),
        })
    }

    /// Whether `name` is marked up (`None`: no such backend).
    pub fn is_up(&self, name: &str) -> Option<bool> {
        self.health.get(name).map(|h| h.is_up())
    }

    /// For `yihaotong status` and `routes test`.
    pub fn snapshot(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (name, h) in &self.health {
            let def = &self.defs[name];
            out.insert(
                name.clone(),
                serde_json::json!({
                    "uri": def.uri,
                    "up": h.is_up(),
                    "calls": h.in_flight.load(Relaxed),
                    "max_calls": def.max_calls,
                    "health_interval": def.health_interval,
                    "probes": h.probes.load(Relaxed),
                    "probes_failed": h.probes_failed.load(Relaxed),
                    "last_probe_status": h.last_status.load(Relaxed),
                    "skipped_down": h.skipped_down.load(Relaxed),
                    "skipped_full": h.skipped_full.load(Relaxed),
                }),
            );
        }
        serde_json::Value::Object(out)
    }

    /// Starts one probe loop per backend with a `health_interval`.
    pub fn spawn_probes(self: &Arc<Self>, workers: Vec<mpsc::Sender<WorkerInput>>, host: String) {
        for (name, def) in &self.defs {
            if def.health_interval == 0 {
                continue;
            }
            let Some(target) = SipTarget::parse(&def.uri) else {
                continue;
            };
            let health = self.health[name].clone();
            let (name, def, workers, host) =
                (name.clone(), def.clone(), workers.clone(), host.clone());
            tokio::spawn(async move {
                probe_loop(name, def, target, health, workers, host).await;
            });
        }
    }
}

/// Sends an OPTIONS every `health_interval` seconds and waits up to that
/// long (at most 5 s) for its answer.
async fn probe_loop(
    name: String,
    def: BackendDef,
    target: SipTarget,
    health: Arc<Health>,
    workers: Vec<mpsc::Sender<WorkerInput>>,
    host: String,
) {
    let period = Duration::from_secs(def.health_interval.max(1));
    let wait = period.min(Duration::from_secs(5));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let call_id = format!("{}-probe@yihaotong", random_token());
        let worker = &workers[crate::server::shard(&call_id, workers.len())];
        let mut dialog = Dialog::uac(
            call_id,
            format!("<sip:ping@{host}>"),
            format!("<{}>", target.uri),
            target.uri.clone(),
        );
        let (bytes, branch, _) = dialog.request(
            &Method::Options,
            &host,
            target.peer.transport.via_token(),
            None,
            &[("Accept", "application/sdp")],
            b"",
        );
        let (tx, mut rx) = mpsc::channel(4);
        let key = TxKey::client_for(&branch, Method::Options);
        let sent = worker
            .send(WorkerInput::Request {
                method: Method::Options,
                branch,
                bytes: Bytes::from(bytes),
                peer: target.peer,
                owner: tx,
            })
            .await;
        if sent.is_err() {
            return; // the server is stopping
        }
        let status = tokio::time::timeout(wait, async {
            while let Some(event) = rx.recv().await {
                match event {
                    CallEvent::Response { key: k, response }
                        if k.as_ref() == Some(&key) && response.status >= 200 =>
                    {
                        return response.status;
                    }
                    CallEvent::Timeout { .. } => return 0,
                    _ => {}
                }
            }
            0
        })
        .await
        .unwrap_or(0);
        match health.record(status, &def) {
            Some(true) => tracing::info!(backend = %name, status, "backend up again"),
            Some(false) => {
                tracing::warn!(backend = %name, status, "backend down: hand-offs go to their fallback")
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(max_calls: usize) -> BackendDef {
        BackendDef {
            uri: "sip:12333@127.0.0.1:5091".into(),
            answer_timeout: 8,
            health_interval: 10,
            down_after: 3,
            up_after: 2,
            max_calls,
        }
    }

    #[test]
    fn down_after_three_failures_in_a_row_up_after_two_good_answers() {
        let d = def(0);
        let h = Health::default();
        assert!(h.is_up());
        assert_eq!(h.record(0, &d), None);
        assert_eq!(h.record(503, &d), None);
        // A good answer between resets the streak.
        assert_eq!(h.record(200, &d), None);
        assert_eq!(h.record(0, &d), None);
        assert_eq!(h.record(0, &d), None);
        assert_eq!(h.record(500, &d), Some(false));
        assert!(!h.is_up());
        // A 404 or 405 still proves it is alive and answering.
        assert_eq!(h.record(405, &d), None);
        assert_eq!(h.record(0, &d), None);
        assert_eq!(h.record(200, &d), None);
        assert_eq!(h.record(404, &d), Some(true));
        assert!(h.is_up());
        assert_eq!(h.probes.load(Relaxed), 10);
        assert_eq!(h.probes_failed.load(Relaxed), 6);
    }

    #[test]
    fn down_or_full_backends_are_not_tried_and_slots_come_back() {
        let defs: BTreeMap<String, BackendDef> = [("hrss".to_string(), def(2))].into();
        let b = Backends::new(&defs);
        assert_eq!(b.take("nope").err(), Some(Unavailable::Unknown));
        let one = b.take("hrss").expect("first");
        let two = b.take("hrss").expect("second");
        assert_eq!(b.take("hrss").err(), Some(Unavailable::Full));
        drop(one);
        let three = b.take("hrss").expect("a slot came back");
        for _ in 0..3 {
            b.health["hrss"].record(0, &defs["hrss"]);
        }
        assert_eq!(b.is_up("hrss"), Some(false));
        drop((two, three));
        assert_eq!(b.take("hrss").err(), Some(Unavailable::Down));
        let snap = b.snapshot();
        assert_eq!(snap["hrss"]["calls"], 0);
        assert_eq!(snap["hrss"]["skipped_full"], 1);
        assert_eq!(snap["hrss"]["skipped_down"], 1);
    }
}

//! The backends: the self-service systems (12333's, 12329's) flows hand
//! calls to, and whether each can take one now.
//!
//! Room: the hand-off desk. A `[backends.NAME]` has one or more targets
//! (primary and standby machines, or a pool), each with a health state: up
//! until its OPTIONS probes say otherwise, down after `down_after` failed
//! probes in a row, up again after `up_after` good ones (a 2xx–4xx answer
//! is good, a 5xx, 6xx or silence is not). The backend counts the calls it
//! holds over all its targets, bounded by `max_calls`. A hand-off asks
//! [`Backends::take`] first: a backend that is full, or whose targets are
//! all down, is not tried at all and the flow's fallback runs at once;
//! otherwise it gets the targets that are up in the order to try them
//! (`select = "order"`: as configured; `"weight"`: drawn by weight for each
//! call). The probe loops send through the SIP workers like any request of
//! ours; the decisions ([`Health::record`], [`try_order`]) are plain state
//! and arithmetic, unit-tested without a network. It may touch the
//! workers' inputs; nothing else.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::config::{BackendDef, BackendTarget, Select};
use crate::endpoint::CallEvent;
use crate::endpoint::WorkerInput;
use crate::sip::dialog::Dialog;
use crate::sip::message::Method;
use crate::sip::transaction::TxKey;
use crate::sip::{random_token, SipTarget};

/// One target's health, from its probes.
#[derive(Debug, Default)]
pub struct Health {
    /// Marked down by its probes.
    down: AtomicBool,
    /// Failed probes in a row (while up) or good ones in a row (while down).
    streak: AtomicU32,
    /// Probes sent, and how many failed.
    probes: AtomicU64,
    probes_failed: AtomicU64,
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

/// A backend's calls, and the hand-offs it turned away.
#[derive(Debug, Default)]
struct Load {
    /// Calls handed to it and not yet over.
    in_flight: AtomicUsize,
    /// Hand-offs not tried because every target was down, or it was full.
    skipped_down: AtomicU64,
    skipped_full: AtomicU64,
}

/// Why a backend was not tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// No such backend in the settings.
    Unknown,
    /// Its probes marked every target down.
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
    load: Arc<Load>,
}

impl Drop for BackendSlot {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A hand-off the backend may take: its slot, and the URIs of the targets
/// that are up, in the order to try them.
pub struct Handoff {
    /// Held while the call is with the backend (or being offered to it).
    pub slot: BackendSlot,
    /// Target URIs, first to try first.
    pub targets: Vec<String>,
}

/// One backend's targets and load.
struct Backend {
    def: BackendDef,
    targets: Vec<(BackendTarget, Arc<Health>)>,
    load: Arc<Load>,
}

/// Every backend's state, by name.
pub struct Backends {
    backends: BTreeMap<String, Backend>,
}

/// The order to try targets of `weights` in, for one call: by `select`,
/// given the call's random `draw`. Under `Weight`, each place is drawn
/// among the targets left in proportion to their weights.
pub fn try_order(weights: &[u32], select: Select, draw: u64) -> Vec<usize> {
    let mut left: Vec<usize> = (0..weights.len()).collect();
    if select == Select::Order {
        return left;
    }
    let mut state = draw | 1;
    let mut out = Vec::with_capacity(left.len());
    while !left.is_empty() {
        // xorshift64: enough spread for picking a machine, no dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let total: u64 = left.iter().map(|&i| u64::from(weights[i].max(1))).sum();
        let mut at = state % total;
        let mut pick = 0;
        for (k, &i) in left.iter().enumerate() {
            let w = u64::from(weights[i].max(1));
            if at < w {
                pick = k;
                break;
            }
            at -= w;
        }
        out.push(left.remove(pick));
    }
    out
}

impl Backends {
    /// Every target up, no backend holding a call.
    pub fn new(defs: &BTreeMap<String, BackendDef>) -> Backends {
        let backends = defs
            .iter()
            .map(|(name, def)| {
                let targets = def
                    .target_list()
                    .into_iter()
                    .map(|t| (t, Arc::new(Health::default())))
                    .collect();
                let b = Backend {
                    def: def.clone(),
                    targets,
                    load: Arc::default(),
                };
                (name.clone(), b)
            })
            .collect();
        Backends { backends }
    }

    /// A slot on backend `name` for one call and the targets to try, unless
    /// it is full or every target is down. `draw` is the call's random
    /// number for a weighted choice.
    pub fn take(&self, name: &str, draw: u64) -> Result<Handoff, Unavailable> {
        let Some(b) = self.backends.get(name) else {
            return Err(Unavailable::Unknown);
        };
        let up: Vec<&BackendTarget> = b
            .targets
            .iter()
            .filter(|(_, h)| h.is_up())
            .map(|(t, _)| t)
            .collect();
        if up.is_empty() {
            b.load.skipped_down.fetch_add(1, Relaxed);
            return Err(Unavailable::Down);
        }
        let held = b.load.in_flight.fetch_add(1, Relaxed);
        let slot = BackendSlot {
            load: b.load.clone(),
        };
        if b.def.max_calls > 0 && held >= b.def.max_calls {
            drop(slot);
            b.load.skipped_full.fetch_add(1, Relaxed);
            return Err(Unavailable::Full);
        }
        let weights: Vec<u32> = up.iter().map(|t| t.weight).collect();
        let targets = try_order(&weights, b.def.select, draw)
            .into_iter()
            .map(|i| up[i].uri.clone())
            .collect();
        Ok(Handoff { slot, targets })
    }

    /// Whether any target of `name` is marked up (`None`: no such backend).
    pub fn is_up(&self, name: &str) -> Option<bool> {
        let b = self.backends.get(name)?;
        Some(b.targets.iter().any(|(_, h)| h.is_up()))
    }

    /// For `yihaotong status` and `routes test`: each backend's state, its
    /// probe figures summed, and each target's own.
    pub fn snapshot(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (name, b) in &self.backends {
            let sum = |f: fn(&Health) -> u64| b.targets.iter().map(|(_, h)| f(h)).sum::<u64>();
            let targets: Vec<serde_json::Value> = b
                .targets
                .iter()
                .map(|(t, h)| {
                    serde_json::json!({
                        "uri": t.uri,
                        "weight": t.weight,
                        "up": h.is_up(),
                        "probes": h.probes.load(Relaxed),
                        "probes_failed": h.probes_failed.load(Relaxed),
                        "last_probe_status": h.last_status.load(Relaxed),
                    })
                })
                .collect();
            out.insert(
                name.clone(),
                serde_json::json!({
                    "uri": b.targets.first().map(|(t, _)| t.uri.as_str()),
                    "select": match b.def.select { Select::Order => "order", Select::Weight => "weight" },
                    "up": self.is_up(name),
                    "calls": b.load.in_flight.load(Relaxed),
                    "max_calls": b.def.max_calls,
                    "health_interval": b.def.health_interval,
                    "probes": sum(|h| h.probes.load(Relaxed)),
                    "probes_failed": sum(|h| h.probes_failed.load(Relaxed)),
                    "skipped_down": b.load.skipped_down.load(Relaxed),
                    "skipped_full": b.load.skipped_full.load(Relaxed),
                    "targets": targets,
                }),
            );
        }
        serde_json::Value::Object(out)
    }

    /// Starts one probe loop per target of each backend with a
    /// `health_interval`.
    pub fn spawn_probes(self: &Arc<Self>, workers: Vec<mpsc::Sender<WorkerInput>>, host: String) {
        for (name, b) in &self.backends {
            if b.def.health_interval == 0 {
                continue;
            }
            for (t, health) in &b.targets {
                let Some(target) = SipTarget::parse(&t.uri) else {
                    continue;
                };
                let (name, def, health) = (name.clone(), b.def.clone(), health.clone());
                let (workers, host) = (workers.clone(), host.clone());
                tokio::spawn(async move {
                    probe_loop(name, def, target, health, workers, host).await;
                });
            }
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
        let worker = &workers[crate::endpoint::shard(&call_id, workers.len())];
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
        let (tx, mut rx) = crate::boxed::channel(4);
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
                        if k.as_deref() == Some(&key) && response.status >= 200 =>
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
            Some(true) => {
                tracing::info!(backend = %name, target = %target.uri, status, "backend target up again")
            }
            Some(false) => {
                tracing::warn!(backend = %name, target = %target.uri, status, "backend target down: hand-offs skip it (all down: their fallback)")
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
            targets: Vec::new(),
            select: Select::Order,
            answer_timeout: 8,
            health_interval: 10,
            down_after: 3,
            up_after: 2,
            max_calls,
            return_keys: String::new(),
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
        assert_eq!(b.take("nope", 1).err(), Some(Unavailable::Unknown));
        let one = b.take("hrss", 1).expect("first");
        assert_eq!(one.targets, ["sip:12333@127.0.0.1:5091"]);
        let two = b.take("hrss", 1).expect("second");
        assert_eq!(b.take("hrss", 1).err(), Some(Unavailable::Full));
        drop(one);
        let three = b.take("hrss", 1).expect("a slot came back");
        for _ in 0..3 {
            b.backends["hrss"].targets[0].1.record(0, &defs["hrss"]);
        }
        assert_eq!(b.is_up("hrss"), Some(false));
        drop((two, three));
        assert_eq!(b.take("hrss", 1).err(), Some(Unavailable::Down));
        let snap = b.snapshot();
        assert_eq!(snap["hrss"]["calls"], 0);
        assert_eq!(snap["hrss"]["skipped_full"], 1);
        assert_eq!(snap["hrss"]["skipped_down"], 1);
    }

    fn pool(select: Select) -> BackendDef {
        let t = |port: u16, weight| BackendTarget {
            uri: format!("sip:12333@127.0.0.1:{port}"),
            weight,
        };
        BackendDef {
            uri: String::new(),
            targets: vec![t(5091, 3), t(5092, 1), t(5093, 1)],
            select,
            ..def(0)
        }
    }

    #[test]
    fn targets_are_tried_in_order_and_a_down_one_is_skipped() {
        let defs: BTreeMap<String, BackendDef> = [("hrss".to_string(), pool(Select::Order))].into();
        let b = Backends::new(&defs);
        let ports = |h: &Handoff| -> Vec<String> {
            h.targets
                .iter()
                .map(|u| u[u.len() - 4..].to_string())
                .collect()
        };
        assert_eq!(
            ports(&b.take("hrss", 7).expect("up")),
            ["5091", "5092", "5093"]
        );
        for _ in 0..3 {
            b.backends["hrss"].targets[0].1.record(0, &defs["hrss"]);
        }
        // The primary is down: the standbys, in order; the backend is up.
        assert_eq!(ports(&b.take("hrss", 7).expect("up")), ["5092", "5093"]);
        assert_eq!(b.is_up("hrss"), Some(true));
        let snap = b.snapshot();
        assert_eq!(snap["hrss"]["targets"][0]["up"], false);
        assert_eq!(snap["hrss"]["targets"][1]["up"], true);
        assert_eq!(snap["hrss"]["probes_failed"], 3);
    }

    #[test]
    fn weighted_draws_follow_the_weights_and_try_every_target_once() {
        let weights = [3, 1, 1];
        let mut first = [0u32; 3];
        for draw in 0..5000u64 {
            let order = try_order(
                &weights,
                Select::Weight,
                draw.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2], "each target once: {order:?}");
            first[order[0]] += 1;
        }
        // 3:1:1 → 60% / 20% / 20% first choices.
        assert!((2800..=3200).contains(&first[0]), "{first:?}");
        assert!((800..=1200).contains(&first[1]), "{first:?}");
        assert!((800..=1200).contains(&first[2]), "{first:?}");
        assert_eq!(try_order(&weights, Select::Order, 99), [0, 1, 2]);
        assert!(try_order(&[], Select::Weight, 5).is_empty());
    }
}

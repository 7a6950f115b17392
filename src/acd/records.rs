//! Call detail records and the queue log: written in batches, never lost on a clean stop.
//!
//! Room: the records office. Calls hand their [`Cdr`] here when they end and
//! the desk hands its queue-log lines; both go into an in-memory batch that
//! one task writes to the database (one transaction, synced) every
//! `[queue] record_flush` seconds and on [`Records::flush`], which the
//! server awaits at shutdown. A kill -9 loses at most one interval.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use super::desk::LogLine;
use crate::store::{record_key, RecordingMeta, Store};

/// How a call ended, for the KPIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Disposition {
    /// An agent answered.
    Answered,
    /// The caller hung up while waiting for an agent.
    Abandoned,
    /// `max_wait` passed with no agent (and no overflow took the call).
    Timeout,
    /// The queue was full or empty and nothing took the call.
    NoAgent,
    /// The flow ended the call itself (self-service, notices).
    SelfService,
    /// A backend system answered.
    Handoff,
    /// A transfer target answered.
    Transfer,
    /// The caller hung up in the IVR before asking for anyone.
    IvrHangup,
    /// Refused or failed before anything else (bad SDP, no ports, errors).
    #[default]
    Failed,
    /// The caller booked a callback and hung up, keeping their place.
    CallbackBooked,
    /// A callback: an agent was connected and the citizen answered.
    CallbackCompleted,
    /// A callback attempt the citizen did not answer.
    CallbackUnanswered,
    /// The server stopped without a clean shutdown while the call was up;
    /// closed out at the next start (`ended` is that start).
    Crashed,
    /// A stop's `drain_timeout` ran out with the call still up: both legs
    /// got BYE and the record was written before the process ended.
    Drained,
}

/// One call's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cdr {
    /// The caller's Call-ID.
    pub call_id: String,
    /// Hotline label of the route.
    pub hotline: String,
    /// Dialed number (normalized).
    pub dialed: String,
    /// Calling number.
    pub caller: String,
    /// Unix ms: INVITE received.
    pub arrived: u64,
    /// Unix ms: the flow finished (queue, hand-off, transfer or hangup).
    pub ivr_end: Option<u64>,
    /// Unix ms: entered the (first) queue.
    pub queued: Option<u64>,
    /// Unix ms: first offered to an agent.
    pub offered: Option<u64>,
    /// Unix ms: an agent (or backend, transfer target) answered.
    pub answered: Option<u64>,
    /// Unix ms: the call ended.
    pub ended: u64,
    /// Flow that took the call, if any.
    pub flow: String,
    /// Flow nodes visited (last ones).
    pub path: String,
    /// Keys pressed in the flow.
    pub keys: String,
    /// The flow's variables when it let the caller go (a survey's answer,
    /// digits collected), at most 20.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub vars: std::collections::BTreeMap<String, String>,
    /// Queue the call waited in last.
    pub queue: String,
    /// Queues it overflowed from, in order.
    #[serde(default)]
    pub overflowed_from: Vec<String>,
    /// Agent (or backend/transfer target) who answered.
    pub agent: String,
    /// How it ended.
    pub disposition: Disposition,
    /// "caller", "agent", or "system".
    pub hung_up_by: String,
    /// The SIP status a call refused at setup got (488 for an offer we
    /// cannot answer, 480 for a flow gone, 503 for no RTP port); 0 otherwise.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused: u16,
    /// The caller's rating in the after-call flow: satisfied, fair or
    /// unsatisfied; empty when not rated (or no such flow ran).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rating: String,
    /// Recording file, when recorded.
    pub recording: Option<String>,
    /// Service level of the queue at the time, seconds.
    pub service_level: u64,
    /// Priority rank in the queue.
    pub priority: String,
    /// Where agents transferred the call, in order (agent IDs, queues, numbers).
    #[serde(default)]
    pub transfers: Vec<String>,
    /// For a callback call: the Call-ID of the call that booked it.
    #[serde(default)]
    pub callback_for: String,
    /// How the dialed number joined 12345 (the route's mode).
    #[serde(default)]
    pub mode: String,
    /// For a call an agent's phone placed out of the hotline (through the
    /// trunk or to a peer centre): what it dialed, `emergency`, `centre`,
    /// or the number's class (`mobile`, `local`…). Empty for citizens'
    /// calls and calls between agents.
    #[serde(default)]
    pub outbound: String,
    /// For a call a peer centre sent on an `interconnect` route: the call
    /// data it sent (`X-Peer-…` names), passed on to our seats.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub peer_data: std::collections::BTreeMap<String, String>,
    /// Call data the ticket system set through the API (a ticket number…).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub data: std::collections::BTreeMap<String, String>,
    /// How the caller's RTP reached us while bridged (received, lost,
    /// RFC 3550 jitter), from the call's last relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtp_caller: Option<crate::media::quality::Quality>,
    /// How the far leg's (agent's, backend's) RTP reached us while bridged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtp_far: Option<crate::media::quality::Quality>,
}

enum RecordMsg {
    /// A call began: kept in the `live_calls` tree until its CDR is written.
    Began(Box<Cdr>),
    Log(LogLine),
    Cdr(Box<Cdr>),
    Recording(RecordingMeta),
    Flush(oneshot::Sender<()>),
}

/// Handle to the records writer. Cloning is cheap.
#[derive(Clone)]
pub struct Records {
    tx: mpsc::UnboundedSender<RecordMsg>,
    /// The CTI event stream: queue-log lines and CDRs are its events too.
    events: std::sync::Arc<crate::events::EventBus>,
}

impl Records {
    /// Starts the writer task.
    pub fn start(
        store: Store,
        interval: Duration,
        events: std::sync::Arc<crate::events::EventBus>,
    ) -> Records {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(
            store,
            rx,
            interval.max(Duration::from_millis(50)),
        ));
        Records { tx, events }
    }

    /// The CTI event stream.
    pub fn events(&self) -> &std::sync::Arc<crate::events::EventBus> {
        &self.events
    }

    /// Queues a queue-log line (and publishes it as an event).
    pub fn log(&self, line: LogLine) {
        let (kind, about, data) = event_of(&line);
        self.events.publish(kind, about, data);
        let _ = self.tx.send(RecordMsg::Log(line));
    }

    /// A call began, or was answered (its record so far), so a crash can be
    /// accounted for.
    pub fn began(&self, cdr: &Cdr) {
        let _ = self.tx.send(RecordMsg::Began(Box::new(cdr.clone())));
    }

    /// Queues a CDR.
    pub fn cdr(&self, cdr: Cdr) {
        crate::meters::call_ended(&cdr);
        let about = crate::events::About {
            queue: (!cdr.queue.is_empty()).then(|| cdr.queue.clone()),
            agent: (!cdr.agent.is_empty()).then(|| cdr.agent.clone()),
            hotline: Some(cdr.hotline.clone()),
        };
        self.events.publish(
            "call.ended",
            about,
            serde_json::to_value(&cdr).unwrap_or_default(),
        );
        let _ = self.tx.send(RecordMsg::Cdr(Box::new(cdr)));
    }

    /// Queues a recording's metadata.
    pub fn recording(&self, meta: RecordingMeta) {
        let _ = self.tx.send(RecordMsg::Recording(meta));
    }

    /// Writes everything queued so far; returns when it is on disk.
    pub async fn flush(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(RecordMsg::Flush(reply)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// A queue-log line as a CTI event: its kind, what it is about, its data.
fn event_of(line: &LogLine) -> (&'static str, crate::events::About, serde_json::Value) {
    let kind = match line.event.as_str() {
        "ENTERQUEUE" => "call.queued",
        "CONNECT" => "call.answered",
        "RINGNOANSWER" => "agent.no_answer",
        "ABANDON" => "call.abandoned",
        "EXITWITHTIMEOUT" | "EXITEMPTY" => "call.left_queue",
        "TRANSFER" => "call.transferred",
        "CALLBACK" => "call.callback_booked",
        "RATED" => "call.rated",
        "COMPLETECALLER" | "COMPLETEAGENT" => "call.completed",
        "AGENTLOGIN" | "AGENTLOGOFF" | "PAUSE" | "UNPAUSE" => "agent.state",
        _ => "queue.event",
    };
    let known = |v: &str| (v != "NONE" && !v.is_empty()).then(|| v.to_string());
    let state = match line.event.as_str() {
        "AGENTLOGIN" | "UNPAUSE" => Some("available"),
        "AGENTLOGOFF" => Some("logged-out"),
        "PAUSE" => Some("on-break"),
        _ => None,
    };
    let mut data = serde_json::json!({
        "call_id": known(&line.call_id),
        "queue_log": line.event,
        "fields": line.data,
    });
    if let Some(s) = state {
        data["state"] = s.into();
    }
    if line.event == "RATED" {
        data["rating"] = line.data.first().cloned().unwrap_or_default().into();
    }
    let about = crate::events::About {
        queue: known(&line.queue),
        agent: known(&line.agent),
        hotline: None,
    };
    (kind, about, data)
}

#[derive(Default)]
struct Batch {
    seq: u32,
    log: Vec<(Vec<u8>, Vec<u8>)>,
    cdrs: Vec<(Vec<u8>, Vec<u8>)>,
    recordings: Vec<(Vec<u8>, Vec<u8>)>,
    /// Calls that began (Call-ID → record so far), and calls that ended.
    live: crate::store::LiveChanges,
}

impl Batch {
    fn key(&mut self, at: u64) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        record_key(at, self.seq).to_vec()
    }

    /// Puts records a failed write took back in front of what came since.
    fn put_back(&mut self, mut taken: Batch) {
        taken.log.append(&mut self.log);
        taken.cdrs.append(&mut self.cdrs);
        taken.recordings.append(&mut self.recordings);
        taken.live.began.append(&mut self.live.began);
        taken.live.ended.append(&mut self.live.ended);
        self.log = taken.log;
        self.cdrs = taken.cdrs;
        self.recordings = taken.recordings;
        self.live = taken.live;
    }

    fn is_empty(&self) -> bool {
        self.log.is_empty()
            && self.cdrs.is_empty()
            && self.recordings.is_empty()
            && self.live.is_empty()
    }

    fn add(&mut self, msg: RecordMsg, waiting: &mut Vec<oneshot::Sender<()>>) {
        match msg {
            RecordMsg::Began(cdr) => {
                if let Ok(v) = serde_json::to_vec(&cdr) {
                    self.live.began.push((cdr.call_id.into_bytes(), v));
                }
            }
            RecordMsg::Log(line) => {
                let k = self.key(line.at);
                if let Ok(v) = serde_json::to_vec(&line) {
                    self.log.push((k, v));
                }
            }
            RecordMsg::Cdr(cdr) => {
                self.live.ended.push(cdr.call_id.clone().into_bytes());
                let k = self.key(cdr.ended);
                if let Ok(v) = serde_json::to_vec(&cdr) {
                    self.cdrs.push((k, v));
                }
            }
            RecordMsg::Recording(meta) => {
                if let Ok(v) = serde_json::to_vec(&meta) {
                    self.recordings.push((meta.path.into_bytes(), v));
                }
            }
            RecordMsg::Flush(reply) => waiting.push(reply),
        }
    }
}

async fn write_loop(store: Store, mut rx: mpsc::UnboundedReceiver<RecordMsg>, interval: Duration) {
    let mut batch = Batch::default();
    let mut waiting = Vec::new();
    let mut last = tokio::time::Instant::now();
    loop {
        let closed = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => {
                    batch.add(m, &mut waiting);
                    // Take whatever else is queued without waiting.
                    while let Ok(m) = rx.try_recv() {
                        batch.add(m, &mut waiting);
                    }
                    false
                }
                None => true,
            },
            _ = tokio::time::sleep_until(last + interval) => false,
        };
        if !(closed || !waiting.is_empty() || last.elapsed() >= interval) {
            continue;
        }
        last = tokio::time::Instant::now();
        if !batch.is_empty() {
            let taken = std::mem::take(&mut batch);
            batch.seq = taken.seq;
            let s = store.clone();
            let started = std::time::Instant::now();
            let written = tokio::task::spawn_blocking(move || {
                let r = s.append_records(&taken.log, &taken.cdrs, &taken.recordings, &taken.live);
                (r, taken)
            })
            .await;
            crate::meters::records_flushed(started.elapsed().as_secs_f64());
            match written {
                Ok((Ok(()), _)) => {}
                // A full or failing disk: the records stay queued, ahead of
                // what came since, and are tried again at the next flush.
                Ok((Err(e), taken)) => {
                    tracing::error!(error = %format!("{e:#}"), kept = taken.cdrs.len() + taken.log.len(), "cannot write CDRs and queue log; kept in memory and tried again at the next flush");
                    batch.put_back(taken);
                }
                Err(e) => tracing::error!(error = %e, "records writer task failed"),
            }
        }
        for w in waiting.drain(..) {
            let _ = w.send(());
        }
        if closed {
            return;
        }
    }
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_a_failed_write_took_go_back_ahead_of_newer_ones() {
        let row = |k: u8| (vec![k], vec![k]);
        let mut taken = Batch::default();
        taken.log.push(row(1));
        taken.cdrs.push(row(1));
        taken.live.began.push(row(1));
        taken.live.ended.push(vec![1]);
        let mut batch = Batch::default();
        batch.log.push(row(2));
        batch.cdrs.push(row(2));
        batch.recordings.push(row(2));
        batch.live.began.push(row(2));
        batch.put_back(taken);
        assert_eq!(batch.log, vec![row(1), row(2)]);
        assert_eq!(batch.cdrs, vec![row(1), row(2)]);
        assert_eq!(batch.recordings, vec![row(2)]);
        assert_eq!(batch.live.began, vec![row(1), row(2)]);
        assert_eq!(batch.live.ended, vec![vec![1]]);
    }
}

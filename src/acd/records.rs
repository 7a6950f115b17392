//! Call detail records and the queue log: written in batches, never lost on a clean stop.
//!
//! Room: the records office. Calls hand their [`Cdr`] here when they end and
//! the desk hands its queue-log lines; both go into an in-memory batch that
//! one task writes to the database (one transaction, synced) every
//! `[queue] record_flush` seconds and on [`Records::flush`], which the
//! server awaits at shutdown. A kill -9 loses at most one interval.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::queue_log::LogLine;
use crate::store::{record_key, Cdr, RecordingMeta, Store};

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
        let (kind, about, data) = line.cti_event();
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

//! Webhooks: the CTI event stream delivered as signed HTTP POSTs, for
//! systems that cannot hold `/events` open.
//!
//! Room: the switchboard's post room. Each `[webhooks.NAME]` has one
//! [`Outbox`] (sans-IO: events in, "send this now" out, the result back, a
//! deadline for the next retry; driven by a fake clock in the tests) and
//! one task that carries it out over HTTP. Events go one at a time and in
//! order; a failed POST is retried with doubling back-off, and an event
//! that fails `attempts` times, or finds the outbox full, is a dead letter:
//! counted, logged with the reason, and never retried. Delivery never
//! slows a call: the task reads the event bus like any other subscriber,
//! and what it misses by falling behind is counted as dead letters too.
//! It may read the event bus and write its own figures; nothing else.
//!
//! Each request carries the event as JSON and
//! `X-Yihaotong-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>`; `X-Yihaotong-Event` (the kind) and
//! `X-Yihaotong-Delivery` (the event's sequence number, the same on every
//! retry, for the receiver to drop duplicates).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::Mac;
use serde::Serialize;

use crate::config::{WebhookDef, WebhookSettings};
use crate::events::{Event, EventBus};

/// Whether an event of `kind` matches any of `patterns`.
pub fn wants(patterns: &[String], kind: &str) -> bool {
    patterns.iter().any(|p| {
        p == "*"
            || p == kind
            || p.strip_suffix(".*").is_some_and(|prefix| {
                kind.strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('.'))
            })
    })
}

/// The `X-Yihaotong-Signature` value for `body` sent at `unix_seconds`.
pub fn signature(secret: &str, unix_seconds: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length: new_from_slice cannot fail for it.
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts any key length");
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={unix_seconds},v1={hex}")
}

/// One hook's figures, as `yihaotong status` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HookFigures {
    /// Events delivered (a 2xx answer).
    pub delivered: u64,
    /// POSTs that failed (each retry counts).
    pub failed_attempts: u64,
    /// Events given up on: out of attempts, the outbox full, or missed.
    pub dead_letters: u64,
    /// Events waiting now.
    pub pending: usize,
    /// Why the last POST failed, if one did.
    pub last_error: Option<String>,
}

/// One hook's queue of events, its retry schedule and figures. Sans-IO:
/// [`Outbox::offer`] events, take the next to send from
/// [`Outbox::poll_send`], report its result with [`Outbox::sent`], and
/// come back at [`Outbox::poll_timeout`].
#[derive(Debug)]
pub struct Outbox {
    rules: WebhookSettings,
    pending: VecDeque<Arc<Event>>,
    /// Failed tries of the head event so far.
    attempt: u32,
    /// The head may not be sent before this (back-off after a failure).
    not_before: Option<Instant>,
    /// The head is being sent.
    in_flight: bool,
    /// The outbox is full and that was logged (once, until it drains).
    full_logged: bool,
    figures: HookFigures,
}

impl Outbox {
    /// An empty outbox following `rules`.
    pub fn new(rules: WebhookSettings) -> Outbox {
        Outbox {
            rules,
            pending: VecDeque::new(),
            attempt: 0,
            not_before: None,
            in_flight: false,
            full_logged: false,
            figures: HookFigures::default(),
        }
    }

    /// A new event for this hook; a dead letter if the outbox is full.
    pub fn offer(&mut self, event: Arc<Event>) {
        if self.pending.len() >= self.rules.max_pending {
            self.figures.dead_letters += 1;
            if !self.full_logged {
                self.full_logged = true;
                tracing::warn!(
                    seq = event.seq,
                    kind = event.kind,
                    "webhook outbox full: new events are dead letters until it drains"
                );
            }
        } else {
            self.pending.push_back(event);
            self.full_logged = false;
        }
        self.figures.pending = self.pending.len();
    }

    /// Events that went by unread (the task fell behind the bus).
    pub fn missed(&mut self, n: u64) {
        self.figures.dead_letters += n;
    }

    /// The event to send now, if one is due and none is in flight.
    pub fn poll_send(&mut self, now: Instant) -> Option<Arc<Event>> {
        if self.in_flight || self.not_before.is_some_and(|t| t > now) {
            return None;
        }
        let head = self.pending.front()?.clone();
        self.in_flight = true;
        Some(head)
    }

    /// The in-flight event's outcome (`Err`: why it failed).
    pub fn sent(&mut self, outcome: Result<(), String>, now: Instant) {
        if !self.in_flight {
            return;
        }
        self.in_flight = false;
        match outcome {
            Ok(()) => {
                self.pending.pop_front();
                self.figures.delivered += 1;
                self.attempt = 0;
                self.not_before = None;
            }
            Err(why) => {
                self.figures.failed_attempts += 1;
                self.attempt += 1;
                if self.attempt >= self.rules.attempts {
                    if let Some(e) = self.pending.pop_front() {
                        tracing::warn!(seq = e.seq, kind = e.kind, attempts = self.attempt, error = %why, "webhook gave up: dead letter");
                    }
                    self.figures.dead_letters += 1;
                    self.attempt = 0;
                    self.not_before = None;
                } else {
                    let doubled = self
                        .rules
                        .backoff
                        .saturating_mul(1u64 << (self.attempt - 1).min(20));
                    let wait = doubled.min(self.rules.max_backoff);
                    self.not_before = Some(now + Duration::from_secs(wait));
                }
                self.figures.last_error = Some(why);
            }
        }
        self.figures.pending = self.pending.len();
    }

    /// When to call [`Outbox::poll_send`] again (a retry's back-off ends).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.in_flight || self.pending.is_empty() {
            return None;
        }
        self.not_before
    }

    /// Its figures now.
    pub fn figures(&self) -> &HookFigures {
        &self.figures
    }
}

/// Every hook's figures, shared with `status` (a short lock, never held
/// across an await).
pub type Figures = Arc<Mutex<BTreeMap<String, HookFigures>>>;

/// Starts one delivery task per configured hook, reading `bus`.
pub fn start(
    hooks: &BTreeMap<String, WebhookDef>,
    rules: &WebhookSettings,
    bus: &Arc<EventBus>,
    figures: &Figures,
) {
    if hooks.is_empty() {
        return;
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for (name, hook) in hooks {
        // Subscribed before the task runs, so no event falls between.
        let Ok((_, live)) = bus.subscribe(None) else {
            tracing::error!(hook = name, "cannot subscribe to the event bus");
            continue;
        };
        if let Ok(mut f) = figures.lock() {
            f.insert(name.clone(), HookFigures::default());
        }
        tokio::spawn(deliver(
            name.clone(),
            hook.clone(),
            rules.clone(),
            live,
            client.clone(),
            figures.clone(),
        ));
    }
}

/// A POST under way: its outcome when it ends.
type Posting = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// One hook's task: moves the events it wants into its outbox and carries
/// the outbox's sends out, one at a time, while still reading the bus.
async fn deliver(
    name: String,
    hook: WebhookDef,
    rules: WebhookSettings,
    mut live: tokio::sync::broadcast::Receiver<Arc<Event>>,
    client: Client,
    figures: Figures,
) {
    use tokio::sync::broadcast::error::RecvError;
    let timeout = Duration::from_secs(rules.timeout);
    let mut outbox = Outbox::new(rules);
    let mut in_flight: Option<Posting> = None;
    loop {
        if in_flight.is_none() {
            if let Some(event) = outbox.poll_send(Instant::now()) {
                in_flight = Some(Box::pin(post(client.clone(), hook.clone(), event, timeout)));
            }
        }
        let wake = outbox.poll_timeout();
        tokio::select! {
            received = live.recv() => match received {
                Ok(e) if wants(&hook.events, e.kind) => outbox.offer(e),
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(hook = name, missed = n, "webhook fell behind the event bus: dead letters");
                    outbox.missed(n);
                }
                Err(RecvError::Closed) => return,
            },
            outcome = async {
                match in_flight.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            } => {
                in_flight = None;
                if let Err(why) = &outcome {
                    tracing::info!(hook = name, error = %why, "webhook POST failed");
                }
                outbox.sent(outcome, Instant::now());
            }
            () = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        if let Ok(mut f) = figures.lock() {
            f.insert(name.clone(), outbox.figures().clone());
        }
    }
}

/// One POST of `event` to `hook`; `Err` says why it did not get a 2xx.
async fn post(
    client: Client,
    hook: WebhookDef,
    event: Arc<Event>,
    timeout: Duration,
) -> Result<(), String> {
    let body = serde_json::to_vec(&*event).map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let request = axum::http::Request::post(&hook.url)
        .header("content-type", "application/json")
        .header("user-agent", "yihaotong-webhook")
        .header("x-yihaotong-event", event.kind)
        .header("x-yihaotong-delivery", event.seq)
        .header("x-yihaotong-signature", signature(&hook.secret, now, &body))
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(timeout, async {
        let response = client.request(request).await.map_err(|e| {
            // The connector's error says why (refused, reset…) in its source.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why = format!("{why}: {s}");
                source = s.source();
            }
            why
        })?;
        let status = response.status();
        // Read (and drop) the body, so the connection can be reused.
        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
        Ok::<_, String>(status)
    })
    .await
    .map_err(|_| format!("no answer within {} s", timeout.as_secs()))??;
    if answer.is_success() {
        Ok(())
    } else {
        Err(format!("answered {answer}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::valid_pattern;

    fn rules() -> WebhookSettings {
        WebhookSettings {
            timeout: 5,
            attempts: 4,
            backoff: 1,
            max_backoff: 3,
            max_pending: 3,
        }
    }

    fn event(seq: u64) -> Arc<Event> {
        Arc::new(Event {
            seq,
            at: 0,
            kind: "call.ended",
            queue: None,
            agent: None,
            hotline: None,
            data: serde_json::Value::Null,
        })
    }

    #[test]
    fn patterns_name_kinds_prefixes_or_everything() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(wants(&p(&["call.ended"]), "call.ended"));
        assert!(!wants(&p(&["call.ended"]), "call.offered"));
        assert!(wants(&p(&["call.*"]), "call.offered"));
        assert!(!wants(&p(&["call.*"]), "callx.offered"));
        assert!(!wants(&p(&["call.*"]), "agent.state"));
        assert!(wants(&p(&["agent.*", "queue.stats"]), "queue.stats"));
        assert!(wants(&p(&["*"]), "anything"));
        for good in [
            "*",
            "call.ended",
            "call.*",
            "queue.stats",
            "agent.no_answer",
        ] {
            assert!(valid_pattern(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "call.",
            "Call.ended",
            "call.*.x",
            "*.ended",
            "call ended",
        ] {
            assert!(!valid_pattern(bad), "{bad}");
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_over_time_and_body() {
        // Computed apart from this code, by Python's hmac module:
        // hmac.new(b"Jefe", b"1700000000.what do ya want for nothing?",
        // hashlib.sha256).hexdigest()
        assert_eq!(
            signature("Jefe", 1_700_000_000, b"what do ya want for nothing?"),
            "t=1700000000,v1=1cdd0650c8be1cb0974b1788d458b1e781206cfef59b85faafc582d2e182c57e"
        );
        // Same secret and body, another time: another signature.
        assert_ne!(signature("k", 1, b"x"), signature("k", 2, b"x"));
    }

    #[test]
    fn events_go_in_order_and_a_failure_waits_doubling_then_gives_up() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut o = Outbox::new(rules());
        o.offer(event(1));
        o.offer(event(2));
        // One at a time.
        assert_eq!(o.poll_send(s(0)).map(|e| e.seq), Some(1));
        assert_eq!(o.poll_send(s(0)), None);
        o.sent(Ok(()), s(0));
        assert_eq!(o.figures().delivered, 1);
        // The second fails: retried after 1, 2, 3 (capped) seconds.
        assert_eq!(o.poll_send(s(0)).map(|e| e.seq), Some(2));
        o.sent(Err("answered 500".into()), s(0));
        assert_eq!(o.poll_timeout(), Some(s(1)));
        assert_eq!(o.poll_send(s(0)), None, "not before the back-off");
        assert_eq!(o.poll_send(s(1)).map(|e| e.seq), Some(2));
        o.sent(Err("answered 500".into()), s(1));
        assert_eq!(o.poll_timeout(), Some(s(3)));
        assert_eq!(o.poll_send(s(3)).map(|e| e.seq), Some(2));
        o.sent(Err("no answer within 5 s".into()), s(3));
        assert_eq!(o.poll_timeout(), Some(s(6)), "capped at max_backoff");
        // The fourth failure is the last: a dead letter, and the next event goes.
        o.offer(event(3));
        assert_eq!(o.poll_send(s(6)).map(|e| e.seq), Some(2));
        o.sent(Err("answered 503".into()), s(6));
        let f = o.figures().clone();
        assert_eq!(
            (f.delivered, f.failed_attempts, f.dead_letters, f.pending),
            (1, 4, 1, 1)
        );
        assert_eq!(f.last_error.as_deref(), Some("answered 503"));
        assert_eq!(o.poll_timeout(), None, "the next event is due at once");
        assert_eq!(o.poll_send(s(6)).map(|e| e.seq), Some(3));
        o.sent(Ok(()), s(6));
        assert_eq!(o.figures().pending, 0);
    }

    #[test]
    fn a_full_outbox_and_missed_events_are_dead_letters() {
        let mut o = Outbox::new(rules());
        for seq in 1..=5 {
            o.offer(event(seq));
        }
        o.missed(7);
        let f = o.figures();
        assert_eq!((f.pending, f.dead_letters), (3, 2 + 7));
        // A result with nothing in flight changes nothing.
        o.sent(Ok(()), Instant::now());
        assert_eq!(o.figures().delivered, 0);
    }
}

//! A SIP worker: its inbox, the dispatch of received messages by Call-ID,
//! and the thin driver of one sans-IO transaction table.
//!
//! Room: the switchboard's SIP desks. A worker feeds its [`Transactions`]
//! messages and timeouts, sends what they ask, hands in-dialog traffic to
//! the call that owns its Call-ID, and gives new requests to admission. It
//! touches its sockets (through [`SipSockets`]), its table and its map of
//! calls.

use super::*;

/// Parses one received message and hands it to its worker. Malformed requests
/// get a stateless answer here, when RFC 3261 wants one.
pub(super) fn dispatch(shared: &Arc<Shared>, bytes: &[u8], peer: Peer) {
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

pub(super) struct Worker {
    pub(super) index: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) txs: Transactions,
    /// Running calls by Call-ID (both legs).
    pub(super) calls: HashMap<String, crate::boxed::Sender<CallEvent>>,
    /// Owners of client transactions started by calls.
    pub(super) owners: HashMap<TxKey, crate::boxed::Sender<CallEvent>>,
    /// New requests waiting in this worker's fresh lane, as of the last input.
    pub(super) backlog: usize,
    /// Dialogs whose call ended in the last [`ENDED_DIALOG_MEMORY`]: a BYE
    /// crossing ours (glare, RFC 5407 §3.1.2) gets 200, not 481.
    pub(super) ended: EndedDialogs,
}

/// How long a worker remembers an ended call's Call-ID: 64×T1, as long as
/// a BYE crossing ours can still be retransmitted.
const ENDED_DIALOG_MEMORY: Duration = Duration::from_secs(32);

/// Call-IDs of calls that ended lately, oldest first.
#[derive(Default)]
pub(super) struct EndedDialogs {
    order: std::collections::VecDeque<(Instant, String)>,
    ids: std::collections::HashSet<String>,
}

impl EndedDialogs {
    pub(super) fn insert(&mut self, now: Instant, call_id: String) {
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

    pub(super) fn contains(&self, call_id: &str) -> bool {
        self.ids.contains(call_id)
    }
}

impl Worker {
    /// Serves the in-dialog lane first, then due timers, then one new
    /// request at a time: BYE, ACK and re-INVITEs never wait behind a surge
    /// of INVITEs.
    pub(super) async fn run(
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
    pub(super) fn deliver(&mut self, call_id: &str, event: CallEvent) -> Option<CallEvent> {
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

    pub(super) fn answer(&mut self, key: &TxKey, req: &Request, answer: &Answer) {
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

    pub(super) fn simple(
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

//! What a new request meets: REGISTER and OPTIONS answers, and for an
//! INVITE, draining, loops, overload, content, the trunk's ACL or an
//! agent's digest, per-holder slots, feature codes, the number plan; then
//! a call task.
//!
//! Room: the switchboard's door. It runs on the worker that got the
//! request and touches the registrar, the number plan, the overload
//! figures and the worker's map of calls.

use super::*;

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

impl Worker {
    pub(super) fn new_request(&mut self, key: TxKey, req: Request, peer: Peer) {
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
            shared: self.shared.house.clone(),
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

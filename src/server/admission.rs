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

/// What a new INVITE becomes.
pub(super) enum Admit {
    /// Answered at once; `Some(why)`: a call shed, counted under `why`.
    Answer(Answer, Option<crate::overload::Shed>),
    /// An agent's phone dialed a feature code (`*21`…).
    FeatureCode(FeatureDial),
    /// A call to set up.
    Call {
        /// The number-plan entry (or an agent's own call's stand-in),
        /// boxed: it is most of the answer's size.
        route: Box<crate::routing::Route>,
        /// The dialed number, normalized (as dialed for an agent's own call).
        dialed: String,
        /// The authenticated agent, when an agent's phone placed it.
        caller_agent: Option<String>,
        /// Where an agent's own call goes outside the number plan.
        direct: Option<call::DirectTarget>,
        /// Its place in its agent's or trunk address's count.
        slot: crate::overload::CallSlot,
    },
}

/// An agent's phone dialed `*CODE`.
pub(super) struct FeatureDial {
    /// The authenticated agent.
    agent: String,
    /// What followed the `*`.
    code: String,
    /// Its place in the agent's count of calls.
    slot: crate::overload::CallSlot,
}

/// What admission asks of the house. Two of them change something: the
/// registrar counts a wrong password, and a held slot counts against its
/// holder until the call ends; the rest only read. A test hands in made-up
/// facts.
pub(super) trait Facts {
    /// SIGTERM came: the server is draining.
    fn draining(&self) -> bool;
    /// Whether the load admits one more call, or why not.
    fn load(&self) -> Result<(), crate::overload::Shed>;
    /// The number is one of `[transfer] emergency` (never shed).
    fn is_emergency(&self, dialed: &str) -> bool;
    /// `peer` is in `[trunk] allow`.
    fn is_trunk(&self, peer: &Peer) -> bool;
    /// An agent's digest on an INVITE from outside the trunk.
    fn authenticate(&self, req: &Request, peer: &Peer) -> AuthOutcome;
    /// `[limits] max_calls_per_trunk_source` is set.
    fn per_source_limit(&self) -> bool;
    /// Takes one of `holder`'s call slots.
    fn hold(
        &self,
        holder: crate::overload::Holder,
    ) -> Result<crate::overload::CallSlot, crate::overload::Shed>;
    /// Where an agent's phone reaches by dialing `dialed`.
    fn agent_dial(&self, agent: &str, dialed: &str) -> call::AgentDial;
    /// The dialed number normalized by `[trunk] normalize`.
    fn normalize(&self, dialed: &str) -> Option<String>;
    /// The route serving `dialed` now.
    fn route_for(&self, dialed: &str) -> anyhow::Result<Option<crate::routing::Route>>;
    /// `[limits] retry_after`, seconds.
    fn retry_after(&self) -> u32;
}

/// Decides what a new INVITE becomes, in order: draining (503), a loop
/// (483, Max-Forwards 0), overload (503; an emergency number never),
/// content that is not SDP (415, 406), the trunk's ACL or an agent's
/// digest (401, 403), the per-agent or per-source slot (503), a feature
/// code, an agent's own call (403 outside its permissions), the number
/// plan (404, 500).
pub(super) fn admit(req: &Request, peer: &Peer, facts: &impl Facts) -> Admit {
    use crate::overload::{Holder, Shed};
    let plain = |status: u16, headers: Vec<(&'static str, String)>| {
        Admit::Answer(
            Answer {
                status,
                headers,
                came_online: false,
            },
            None,
        )
    };
    let shed = |why: Shed, retry: u32| {
        Admit::Answer(
            Answer {
                status: 503,
                headers: vec![("Retry-After", retry.to_string())],
                came_online: false,
            },
            Some(why),
        )
    };
    if facts.draining() {
        // Shutting down: no new state; the trunk retries elsewhere or later.
        return shed(Shed::Draining, 30);
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
        return plain(483, Vec::new());
    }
    let dialed_raw = req
        .uri_user
        .clone()
        .or_else(|| req.core.to.user.clone())
        .unwrap_or_default();
    // Emergency numbers are never shed (an agent's phone dials them).
    let emergency = facts.is_emergency(&dialed_raw);
    if let (false, Err(why)) = (emergency, facts.load()) {
        return shed(why, facts.retry_after());
    }
    // Bodies and answers we cannot deal in are refused before anything
    // else (RFC 3261 §8.2.3, §21.4.7): only SDP is spoken here.
    if let Some((status, headers)) = content_refusal(req) {
        return plain(status, headers);
    }
    let caller_agent = if facts.is_trunk(peer) {
        None
    } else {
        match facts.authenticate(req, peer) {
            AuthOutcome::Agent(id) => Some(id),
            AuthOutcome::Refuse(answer) => {
                if answer.status == 403 {
                    tracing::info!(source = %peer.addr, "INVITE from outside the trunk ACL refused");
                }
                return Admit::Answer(answer, None);
            }
        }
    };
    // One slot per call against its agent, or its trunk address when
    // that has a limit; given back when the call ends.
    let holder = match &caller_agent {
        Some(_) if emergency => None,
        Some(agent) => Some(Holder::Agent(agent.clone())),
        None if facts.per_source_limit() => Some(Holder::Source(peer.addr.ip())),
        None => None,
    };
    let slot = match holder.map(|h| facts.hold(h)) {
        None => crate::overload::CallSlot::none(),
        Some(Ok(slot)) => slot,
        Some(Err(why)) => {
            tracing::info!(source = %peer.addr, agent = ?caller_agent, limit = why.label(), "call refused: per-holder limit");
            return shed(why, facts.retry_after());
        }
    };
    if let (Some(agent), Some(code)) = (&caller_agent, dialed_raw.strip_prefix('*')) {
        return Admit::FeatureCode(FeatureDial {
            agent: agent.clone(),
            code: code.to_string(),
            slot,
        });
    }
    // An agent's phone reaches another agent, a peer centre, an
    // emergency number or, within its dialing permissions, an outside
    // number straight, not through the number plan.
    let direct = match caller_agent.as_deref() {
        Some(agent) => match facts.agent_dial(agent, &dialed_raw) {
            call::AgentDial::Direct(target) => Some(target),
            call::AgentDial::Plan => None,
            call::AgentDial::Refused(why) => {
                return plain(403, vec![("Warning", crate::sip::warning(&why))]);
            }
        },
        None => None,
    };
    let (dialed, route) = if direct.is_some() {
        let route = crate::routing::Route {
            number: dialed_raw.clone(),
            hotline: "agent call".into(),
            ..Default::default()
        };
        (dialed_raw, route)
    } else {
        let Some(dialed) = facts.normalize(&dialed_raw) else {
            tracing::info!(dialed = %dialed_raw, "INVITE for a number that is not dialable");
            return plain(404, Vec::new());
        };
        match facts.route_for(&dialed) {
            Ok(Some(route)) => (dialed, route),
            Ok(None) => {
                tracing::info!(dialed = %dialed, call_id = %req.core.call_id, "no route for dialed number");
                return plain(404, Vec::new());
            }
            Err(e) => {
                tracing::error!(error = %e, "number plan lookup failed");
                return plain(500, Vec::new());
            }
        }
    };
    Admit::Call {
        route: Box::new(route),
        dialed,
        caller_agent,
        direct,
        slot,
    }
}

/// The facts of the running house, as a worker sees them.
struct HouseFacts<'a> {
    shared: &'a Arc<Shared>,
    /// New requests waiting in the worker's fresh lane.
    backlog: usize,
}

impl Facts for HouseFacts<'_> {
    fn draining(&self) -> bool {
        self.shared.draining.load(Relaxed)
    }

    fn load(&self) -> Result<(), crate::overload::Shed> {
        self.shared.overload.admit(crate::overload::Load {
            live_calls: self.shared.live_calls.load(Relaxed),
            backlog: self.backlog,
            media: self.shared.engine.stats.pressure(),
        })
    }

    fn is_emergency(&self, dialed: &str) -> bool {
        self.shared
            .settings
            .transfer
            .emergency
            .iter()
            .any(|e| e == dialed)
    }

    fn is_trunk(&self, peer: &Peer) -> bool {
        self.shared.settings.trunk.allows(peer.addr.ip())
    }

    fn authenticate(&self, req: &Request, peer: &Peer) -> AuthOutcome {
        match self.shared.registrar.lock() {
            Ok(mut r) => r.authenticate(now_unix(), req, peer),
            Err(_) => AuthOutcome::Refuse(Answer::plain(500)),
        }
    }

    fn per_source_limit(&self) -> bool {
        self.shared.settings.limits.max_calls_per_trunk_source > 0
    }

    fn hold(
        &self,
        holder: crate::overload::Holder,
    ) -> Result<crate::overload::CallSlot, crate::overload::Shed> {
        self.shared.overload.hold(holder)
    }

    fn agent_dial(&self, agent: &str, dialed: &str) -> call::AgentDial {
        call::agent_dial(self.shared, agent, dialed)
    }

    fn normalize(&self, dialed: &str) -> Option<String> {
        routing::normalize(dialed, &self.shared.settings.trunk.normalize)
    }

    fn route_for(&self, dialed: &str) -> anyhow::Result<Option<crate::routing::Route>> {
        let settings = &self.shared.settings;
        Ok(self
            .shared
            .store
            .route_for(dialed)?
            .map(|route| route.serving_now(|| settings.local_now())))
    }

    fn retry_after(&self) -> u32 {
        self.shared.settings.limits.retry_after
    }
}

/// Answers `req` with the registrar's (or admission's) answer.
fn reply(w: &mut Worker, key: &TxKey, req: &Request, answer: &Answer) {
    w.respond(key, req, answer.status, &answer.headers);
}

/// Admission as the workers' door: the server's shared state behind it.
pub(super) struct Switchboard {
    pub(super) shared: Arc<Shared>,
}

impl crate::endpoint::Door for Switchboard {
    fn new_request(&self, w: &mut Worker, key: TxKey, req: Request, peer: Peer) {
        // We support no extensions: any Require gets 420 (RFC 3261 §8.2.2.3).
        let required: Vec<&str> = req.headers.get_all("require").collect();
        if !required.is_empty() && req.method != Method::Cancel {
            let unsupported = required.join(", ");
            w.respond(&key, &req, 420, &[("Unsupported", unsupported)]);
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
                reply(w, &key, &req, &answer);
            }
            Method::Options => {
                let headers = [
                    ("Allow", ALLOW.to_string()),
                    ("Accept", "application/sdp".to_string()),
                ];
                w.respond(&key, &req, 200, &headers);
            }
            Method::Invite if req.core.to.tag.is_some() => w.respond(&key, &req, 481, &[]),
            Method::Invite => self.new_call(w, key, req, peer),
            // A BYE crossing ours for a call that is ending or just ended
            // (its task is gone or going): 200, as RFC 3261 §15.1.2 and
            // RFC 5407 §3.1.2 want; its retransmissions hit the transaction.
            Method::Bye if w.just_ended(&req.core.call_id) => w.respond(&key, &req, 200, &[]),
            Method::Bye
            | Method::Info
            | Method::Update
            | Method::Refer
            | Method::Notify
            | Method::Prack => w.respond(&key, &req, 481, &[]),
            Method::Subscribe | Method::Message | Method::Publish => {
                w.respond(&key, &req, 405, &[("Allow", ALLOW.to_string())])
            }
            Method::Other(_) => w.respond(&key, &req, 501, &[("Allow", ALLOW.to_string())]),
            Method::Ack | Method::Cancel => {}
        }
    }

    fn hears(&self, req: &Request, peer: &Peer) -> bool {
        self.shared.settings.sip.answers_stranger(&req.method)
            || self.shared.is_known_source(peer.addr.ip())
    }

    fn refuse_full(&self, req: &Request, peer: Peer) {
        self.shared
            .shed_statelessly(req, peer, crate::overload::Shed::Transactions);
    }
}

impl Switchboard {
    fn new_call(&self, w: &mut Worker, key: TxKey, req: Request, peer: Peer) {
        let facts = HouseFacts {
            shared: &self.shared,
            backlog: w.backlog(),
        };
        match admit(&req, &peer, &facts) {
            Admit::Answer(answer, shed) => {
                if let Some(why) = shed {
                    self.shared.overload.record(why);
                    tracing::debug!(call_id = %req.core.call_id, reason = why.label(), "new call shed");
                }
                reply(w, &key, &req, &answer);
            }
            Admit::FeatureCode(dial) => self.feature_code(w, key, req, peer, dial),
            Admit::Call {
                route,
                dialed,
                caller_agent,
                direct,
                slot,
            } => {
                let (ctx, rx) = self.call_ctx(w, &req.core.call_id);
                let arrival = call::Arrival {
                    key,
                    invite: req,
                    peer,
                    route: *route,
                    dialed,
                    caller_agent,
                    direct,
                    slot,
                };
                tokio::spawn(call::run(ctx, rx, arrival));
            }
        }
    }

    /// A new call's context: its events come from this worker.
    fn call_ctx(
        &self,
        w: &mut Worker,
        call_id: &str,
    ) -> (call::CallCtx, crate::boxed::Receiver<CallEvent>) {
        let (tx, rx) = crate::boxed::channel(64);
        w.bind(call_id, tx.clone());
        let ctx = call::CallCtx {
            shared: self.shared.house.clone(),
            worker: self.shared.workers[w.index()].clone(),
            worker_index: w.index(),
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
        &self,
        w: &mut Worker,
        key: TxKey,
        req: Request,
        peer: Peer,
        dial: FeatureDial,
    ) {
        use crate::store::Presence;
        let FeatureDial { agent, code, slot } = dial;
        // *31/*32/*33 + agent: listen, whisper, barge (supervisors only).
        if let Some((mode, target)) = call::supervision_code(&code) {
            let allowed = matches!(self.shared.store.agent(&agent), Ok(Some(a)) if a.supervisor);
            if !allowed {
                tracing::info!(
                    agent,
                    code,
                    "supervision code from an account that is not a supervisor"
                );
                w.respond(&key, &req, 403, &[]);
                return;
            }
            let target = target.to_string();
            let (ctx, rx) = self.call_ctx(w, &req.core.call_id);
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
            w.respond(&key, &req, 404, &[]);
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
        let (ctx, rx) = self.call_ctx(w, &req.core.call_id);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overload::{CallSlot, Holder, Shed};
    use crate::sip::TransportKind;
    use std::cell::RefCell;

    /// Made-up facts: a trunk at 10.0.0.1, agent 1001 (password checked
    /// by the test's say), routes for 12345, and a record of what was held.
    #[derive(Default)]
    struct Made {
        draining: bool,
        load: Option<Shed>,
        agent: Option<&'static str>,
        per_source: bool,
        full_holder: bool,
        dial: Option<&'static str>,
        held: RefCell<Vec<String>>,
        authenticated: RefCell<usize>,
    }

    impl Facts for Made {
        fn draining(&self) -> bool {
            self.draining
        }
        fn load(&self) -> Result<(), Shed> {
            self.load.map_or(Ok(()), Err)
        }
        fn is_emergency(&self, dialed: &str) -> bool {
            dialed == "110"
        }
        fn is_trunk(&self, peer: &Peer) -> bool {
            peer.addr.ip().to_string() == "10.0.0.1"
        }
        fn authenticate(&self, _req: &Request, _peer: &Peer) -> AuthOutcome {
            *self.authenticated.borrow_mut() += 1;
            match self.agent {
                Some(id) => AuthOutcome::Agent(id.to_string()),
                None => AuthOutcome::Refuse(Answer::plain(401)),
            }
        }
        fn per_source_limit(&self) -> bool {
            self.per_source
        }
        fn hold(&self, holder: Holder) -> Result<CallSlot, Shed> {
            self.held.borrow_mut().push(format!("{holder:?}"));
            if self.full_holder {
                Err(Shed::AgentCalls)
            } else {
                Ok(CallSlot::none())
            }
        }
        fn agent_dial(&self, _agent: &str, _dialed: &str) -> call::AgentDial {
            match self.dial {
                Some(why) => call::AgentDial::Refused(why.to_string()),
                None => call::AgentDial::Plan,
            }
        }
        fn normalize(&self, dialed: &str) -> Option<String> {
            crate::routing::normalize(dialed, &["+86".to_string(), "028".to_string()])
        }
        fn route_for(&self, dialed: &str) -> anyhow::Result<Option<crate::routing::Route>> {
            Ok(
                (dialed == "12345" || dialed == "110").then(|| crate::routing::Route {
                    number: dialed.to_string(),
                    queue: "main".into(),
                    ..Default::default()
                }),
            )
        }
        fn retry_after(&self) -> u32 {
            5
        }
    }

    fn invite(number: &str, extra: &str) -> Request {
        invite_with(number, extra, "")
    }

    fn invite_with(number: &str, extra: &str, body: &str) -> Request {
        let text = format!(
            "INVITE sip:{number}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa\r\n\
             From: <sip:13800138000@10.0.0.1>;tag=f\r\nTo: <sip:{number}@127.0.0.1>\r\nCall-ID: c1\r\n\
             CSeq: 1 INVITE\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        match crate::sip::message::parse(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn peer(ip: &str) -> Peer {
        Peer::new(
            format!("{ip}:5060").parse().expect("an address"),
            TransportKind::Udp,
            0,
        )
    }

    /// The status (and shed reason) an admission answered with, or what it let through.
    fn outcome(admit: Admit) -> String {
        match admit {
            Admit::Answer(a, None) => a.status.to_string(),
            Admit::Answer(a, Some(why)) => format!("{} {}", a.status, why.label()),
            Admit::FeatureCode(d) => format!("feature {} {}", d.agent, d.code),
            Admit::Call {
                dialed,
                caller_agent,
                route,
                ..
            } => format!("call {dialed} {:?} {}", caller_agent, route.queue),
        }
    }

    #[test]
    fn a_trunk_call_is_normalized_and_routed() {
        let facts = Made::default();
        let trunk = peer("10.0.0.1");
        for written in ["12345", "+8612345", "02812345"] {
            let got = outcome(admit(&invite(written, ""), &trunk, &facts));
            assert_eq!(got, "call 12345 None main", "{written}");
        }
        assert_eq!(outcome(admit(&invite("99999", ""), &trunk, &facts)), "404");
        assert_eq!(outcome(admit(&invite("abc", ""), &trunk, &facts)), "404");
        assert_eq!(
            *facts.authenticated.borrow(),
            0,
            "the trunk is never challenged"
        );
        assert!(facts.held.borrow().is_empty(), "no per-source limit set");
    }

    #[test]
    fn draining_loops_and_overload_come_before_anything_else() {
        let trunk = peer("10.0.0.1");
        let draining = Made {
            draining: true,
            ..Made::default()
        };
        assert_eq!(
            outcome(admit(&invite("12345", ""), &trunk, &draining)),
            "503 draining"
        );
        let facts = Made::default();
        let looped = invite("12345", "Max-Forwards: 0\r\n");
        assert_eq!(outcome(admit(&looped, &trunk, &facts)), "483");
        let busy = Made {
            load: Some(Shed::Calls),
            ..Made::default()
        };
        let shed = admit(&invite("12345", ""), &trunk, &busy);
        let Admit::Answer(answer, Some(Shed::Calls)) = shed else {
            panic!("shed");
        };
        assert_eq!(answer.status, 503);
        assert_eq!(answer.headers, vec![("Retry-After", "5".to_string())]);
        // An emergency number is never shed.
        assert_eq!(
            outcome(admit(&invite("110", ""), &trunk, &busy)),
            "call 110 None main"
        );
        // Overload is decided before anyone is challenged.
        let stranger = peer("192.168.1.9");
        assert_eq!(
            outcome(admit(&invite("12345", ""), &stranger, &busy)),
            "503 max_calls"
        );
        assert_eq!(*busy.authenticated.borrow(), 0);
    }

    #[test]
    fn content_that_is_not_sdp_is_refused_before_the_challenge() {
        let facts = Made::default();
        let stranger = peer("192.168.1.9");
        let text = invite_with("12345", "Content-Type: text/plain\r\n", "hello");
        assert_eq!(outcome(admit(&text, &stranger, &facts)), "415");
        let accept = invite("12345", "Accept: text/html\r\n");
        assert_eq!(outcome(admit(&accept, &stranger, &facts)), "406");
        assert_eq!(*facts.authenticated.borrow(), 0);
    }

    #[test]
    fn outside_the_trunk_only_an_agent_gets_in_and_holds_a_slot() {
        let stranger = peer("192.168.1.9");
        let nobody = Made::default();
        assert_eq!(
            outcome(admit(&invite("12345", ""), &stranger, &nobody)),
            "401"
        );
        let agent = Made {
            agent: Some("1001"),
            ..Made::default()
        };
        assert_eq!(
            outcome(admit(&invite("12345", ""), &stranger, &agent)),
            "call 12345 Some(\"1001\") main"
        );
        assert_eq!(*agent.held.borrow(), vec!["Agent(\"1001\")".to_string()]);
        // A feature code goes to the feature flow, with its slot.
        assert_eq!(
            outcome(admit(&invite("*22lunch", ""), &stranger, &agent)),
            "feature 1001 22lunch"
        );
        // An agent at its limit is shed; for an emergency number no slot is taken.
        let full = Made {
            agent: Some("1001"),
            full_holder: true,
            ..Made::default()
        };
        assert_eq!(
            outcome(admit(&invite("12345", ""), &stranger, &full)),
            "503 max_calls_per_agent"
        );
        assert_eq!(
            outcome(admit(&invite("110", ""), &stranger, &full)),
            "call 110 Some(\"1001\") main"
        );
        // Outside its dialing permissions: 403 with the reason.
        let barred = Made {
            agent: Some("1001"),
            dial: Some("premium-rate numbers are not permitted"),
            ..Made::default()
        };
        let Admit::Answer(answer, None) = admit(&invite("16812345", ""), &stranger, &barred) else {
            panic!("refused");
        };
        assert_eq!(answer.status, 403);
        assert!(
            answer.headers[0].1.contains("premium-rate"),
            "{:?}",
            answer.headers
        );
    }

    #[test]
    fn a_trunk_source_with_a_limit_holds_a_slot_by_address() {
        let limited = Made {
            per_source: true,
            ..Made::default()
        };
        let _ = admit(&invite("12345", ""), &peer("10.0.0.1"), &limited);
        assert_eq!(*limited.held.borrow(), vec!["Source(10.0.0.1)".to_string()]);
    }
}

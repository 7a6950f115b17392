//! Call control from the API: the calls alive now, what each is doing, and
//! the requests the ticket system or a supervisor sends them.
//!
//! Room: the call's window onto the front desk. Each [`super::Call`] puts
//! its [`CallView`] in [`LiveCalls`] when it begins, keeps it current as it
//! moves (flow, line, ringing, talking, held), and takes it out when it is
//! dropped. A control request ([`Control`]) goes to the call's own task
//! through a small channel and is answered by that task, which alone owns
//! the legs; the registry's lock is held only to copy a view or clone a
//! sender, never across an await. The same rows carry the doors a
//! supervisor (by agent) and an attended transfer (by Call-ID) knock on: one
//! registry of live calls. It may touch the registry and nothing else; what
//! a request does to the call is the call's business.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::supervise::MonitorReq;
use super::transfer::Takeover;

/// Most call data entries a call carries from the API.
pub(super) const MAX_DATA: usize = 16;
/// How long the API waits for a call to take a request.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// One leg of a live call.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LegView {
    /// `caller`, `agent` or `far` (a backend, a number outside).
    pub role: &'static str,
    /// The leg's SIP Call-ID.
    pub call_id: String,
    /// Who is on it (the agent ID, the number), when known.
    pub party: String,
    /// Its signalling address.
    pub signalling: String,
    /// Where its RTP goes.
    pub media: String,
}

/// Every state a live call's view can be in.
pub const CALL_STATES: &[&str] = &[
    "arriving",
    "ivr",
    "queued",
    "ringing",
    "talking",
    "held",
    "handoff",
    "transferring",
    "consulting",
];

/// What a live call is doing, as the API shows it.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct CallView {
    /// The caller's Call-ID (the CDR's).
    pub call_id: String,
    /// Calling number.
    pub caller: String,
    /// Dialed number.
    pub dialed: String,
    /// Hotline label of the route.
    pub hotline: String,
    /// The route's mode.
    pub mode: String,
    /// `arriving`, `ivr`, `queued`, `ringing`, `talking`, `held`,
    /// `handoff`, `transferring` or `consulting` (the agent talks to an
    /// attended transfer's target while the caller hears music).
    pub state: &'static str,
    /// Unix ms the call came in.
    pub arrived: u64,
    /// Unix ms it entered its present state.
    pub state_since: u64,
    /// Unix ms an agent or backend answered.
    pub answered: Option<u64>,
    /// The flow that took it.
    pub flow: String,
    /// Flow nodes visited (the last ones).
    pub path: String,
    /// Keys pressed in the flow.
    pub keys: String,
    /// The queue it waits or waited in.
    pub queue: String,
    /// The agent on it (or rung for it).
    pub agent: String,
    /// The recording being written, if one is.
    pub recording: Option<String>,
    /// Call data set through the API (a ticket number…); it travels in the
    /// CDR and, as `X-Data-<name>`, to every later leg.
    pub data: BTreeMap<String, String>,
    /// The legs now.
    pub legs: Vec<LegView>,
}

/// What the API asks a call to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// End the call (both legs).
    Hangup,
    /// Merge call data.
    SetData(BTreeMap<String, String>),
    /// The caller hears music; the agent hears nothing.
    Hold,
    /// Back to talking.
    Resume,
    /// Start (true) or stop recording.
    Record(bool),
    /// Transfer to an agent ID, a queue, or a number: blind, or attended
    /// (the agent consults the target first, the caller hears music).
    Transfer {
        /// Where.
        to: String,
        /// Consult first.
        attended: bool,
    },
    /// Complete the attended transfer being consulted: caller to target.
    TransferComplete,
    /// Cancel the attended transfer: the caller back with the agent.
    TransferCancel,
    /// Send the caller into a flow (a rating) as the agent leaves.
    ToFlow(String),
}

impl Control {
    /// The action's name in the audit log and in refusals.
    pub fn name(&self) -> &'static str {
        match self {
            Control::Hangup => "hangup",
            Control::SetData(_) => "data",
            Control::Hold => "hold",
            Control::Resume => "resume",
            Control::Record(true) => "record.start",
            Control::Record(false) => "record.stop",
            Control::Transfer {
                attended: false, ..
            } => "transfer",
            Control::Transfer { attended: true, .. } => "transfer.attended",
            Control::TransferComplete => "transfer.complete",
            Control::TransferCancel => "transfer.cancel",
            Control::ToFlow(_) => "transfer.flow",
        }
    }
}

/// A call's answer: what it did, or an HTTP status and why not.
pub type ControlResult = Result<Value, (u16, String)>;

/// A request on its way to a call.
#[derive(Debug)]
pub struct ControlReq {
    /// What to do.
    pub control: Control,
    /// Where the answer goes.
    pub reply: oneshot::Sender<ControlResult>,
}

impl ControlReq {
    /// Answers the request (the API may have stopped waiting: then nobody hears).
    pub fn answer(self, result: ControlResult) {
        let _ = self.reply.send(result);
    }

    /// Refuses: the call cannot do this in its present state.
    pub fn not_now(self, state: &str) {
        let why = format!(
            "the call is {state}; {} needs a call in another state",
            self.control.name()
        );
        self.answer(Err((409, why)));
    }
}

/// One live call's row: what the API shows, and the doors into the call.
struct Entry {
    view: CallView,
    /// The API's requests.
    control: crate::boxed::Sender<ControlReq>,
    /// While an agent's call is bridged: the agent, and where a
    /// supervisor's request to join goes.
    monitor: Option<(String, mpsc::Sender<Box<MonitorReq>>)>,
    /// A call an agent's phone placed: where the attended transfer that
    /// replaces it (RFC 3891) asks for its far leg.
    takeover: Option<mpsc::Sender<Takeover>>,
}

/// The one registry of live calls: every call by its caller's Call-ID
/// (for the API), with the agents whose calls are bridged (for
/// supervisors) and the calls agents' phones placed (for attended
/// transfers) as doors on the same rows, under one lock.
#[derive(Default)]
pub struct LiveCalls {
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    calls: HashMap<String, Entry>,
    /// Agent → the Call-ID of the bridged call a supervisor joins (the
    /// newest, if an agent shows on two for a moment).
    by_agent: HashMap<String, String>,
}

impl Registry {
    /// Forgets `call_id`'s supervision door, and the agent's index to it.
    fn close_monitor(&mut self, call_id: &str) {
        let Some((agent, _)) = self.calls.get_mut(call_id).and_then(|e| e.monitor.take()) else {
            return;
        };
        if self.by_agent.get(&agent).is_some_and(|id| id == call_id) {
            self.by_agent.remove(&agent);
        }
    }
}

impl LiveCalls {
    /// A call begins; the receiver is where its requests come.
    pub fn insert(&self, view: CallView) -> crate::boxed::Receiver<ControlReq> {
        let (tx, rx) = crate::boxed::channel(4);
        if let Ok(mut reg) = self.inner.lock() {
            let entry = Entry {
                view,
                control: tx,
                monitor: None,
                takeover: None,
            };
            reg.calls.insert(entry.view.call_id.clone(), entry);
        }
        rx
    }

    /// Changes a call's view (a no-op for a call that is gone).
    pub fn update(&self, call_id: &str, change: impl FnOnce(&mut CallView)) {
        if let Ok(mut reg) = self.inner.lock() {
            if let Some(e) = reg.calls.get_mut(call_id) {
                change(&mut e.view);
            }
        }
    }

    /// A call ended.
    pub fn remove(&self, call_id: &str) {
        if let Ok(mut reg) = self.inner.lock() {
            reg.close_monitor(call_id);
            reg.calls.remove(call_id);
        }
    }

    /// Every live call, oldest first.
    pub fn list(&self) -> Vec<CallView> {
        let mut out: Vec<CallView> = match self.inner.lock() {
            Ok(reg) => reg.calls.values().map(|e| e.view.clone()).collect(),
            Err(_) => Vec::new(),
        };
        out.sort_by(|a, b| (a.arrived, &a.call_id).cmp(&(b.arrived, &b.call_id)));
        out
    }

    /// How many live calls are in each state (no views copied).
    pub fn count_by_state(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut counts = std::collections::BTreeMap::new();
        if let Ok(reg) = self.inner.lock() {
            for e in reg.calls.values() {
                *counts.entry(e.view.state).or_default() += 1;
            }
        }
        counts
    }

    /// One call.
    pub fn get(&self, call_id: &str) -> Option<CallView> {
        Some(self.inner.lock().ok()?.calls.get(call_id)?.view.clone())
    }

    /// `call_id`'s agent `agent` is bridged: supervisors asking for the
    /// agent reach the call through `door`.
    pub(super) fn open_monitor(
        &self,
        call_id: &str,
        agent: &str,
        door: mpsc::Sender<Box<MonitorReq>>,
    ) {
        if let Ok(mut reg) = self.inner.lock() {
            reg.close_monitor(call_id);
            if let Some(e) = reg.calls.get_mut(call_id) {
                e.monitor = Some((agent.to_string(), door));
                reg.by_agent.insert(agent.to_string(), call_id.to_string());
            }
        }
    }

    /// `call_id` is no longer bridged to its agent.
    pub(super) fn close_monitor(&self, call_id: &str) {
        if let Ok(mut reg) = self.inner.lock() {
            reg.close_monitor(call_id);
        }
    }

    /// Where a supervisor's request to join `agent`'s bridged call goes.
    pub(super) fn monitor_of(&self, agent: &str) -> Option<mpsc::Sender<Box<MonitorReq>>> {
        let reg = self.inner.lock().ok()?;
        let call_id = reg.by_agent.get(agent)?;
        Some(reg.calls.get(call_id)?.monitor.as_ref()?.1.clone())
    }

    /// `call_id` was placed by an agent's phone: an attended transfer that
    /// replaces it asks through `door`.
    pub(super) fn open_takeover(&self, call_id: &str, door: mpsc::Sender<Takeover>) {
        if let Ok(mut reg) = self.inner.lock() {
            if let Some(e) = reg.calls.get_mut(call_id) {
                e.takeover = Some(door);
            }
        }
    }

    /// Where a transfer replacing `call_id` asks for its far leg.
    pub(super) fn takeover_of(&self, call_id: &str) -> Option<mpsc::Sender<Takeover>> {
        self.inner.lock().ok()?.calls.get(call_id)?.takeover.clone()
    }

    /// Sends `control` to the call and waits for its answer: 404 when there
    /// is no such call, 409 when it cannot take the request now.
    pub async fn send(&self, call_id: &str, control: Control) -> ControlResult {
        let tx = self
            .inner
            .lock()
            .ok()
            .and_then(|reg| reg.calls.get(call_id).map(|e| e.control.clone()));
        let Some(tx) = tx else {
            return Err((404, format!("no live call {call_id:?}")));
        };
        let (reply, answer) = oneshot::channel();
        let name = control.name();
        match tx.try_send(ControlReq { control, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err((404, format!("no live call {call_id:?}")))
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err((409, "the call has requests waiting; try again".into()))
            }
        }
        match tokio::time::timeout(ANSWER_WITHIN, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err((404, format!("the call ended before it took {name}"))),
            Err(_) => Err((
                409,
                format!("the call could not take {name} where it is now (ringing a backend or a number); try again"),
            )),
        }
    }
}

/// Checks call data from the API: names of letters, digits and `-`/`_`
/// (1–32), values of printable characters (up to 256, no line breaks), at
/// most [`MAX_DATA`] with what the call holds. The message names the field.
pub fn check_data(data: &BTreeMap<String, String>) -> Result<(), String> {
    if data.is_empty() {
        return Err("data: give at least one name and value".into());
    }
    if data.len() > MAX_DATA {
        return Err(format!("data: at most {MAX_DATA} entries"));
    }
    for (name, value) in data {
        if name.is_empty()
            || name.len() > 32
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "data.{name}: a name is 1-32 letters, digits, '-' or '_'"
            ));
        }
        if value.chars().count() > 256 || value.chars().any(char::is_control) {
            return Err(format!(
                "data.{name}: a value is up to 256 characters without control characters"
            ));
        }
    }
    Ok(())
}

/// The SIP header a call data entry travels in.
pub(super) fn data_header(name: &str) -> String {
    format!("X-Data-{name}")
}

impl super::Call {
    /// Changes this call's view in the registry.
    pub(super) fn show(&self, change: impl FnOnce(&mut CallView)) {
        self.ctx
            .shared
            .calls
            .update(&self.invite.core.call_id, change);
    }

    /// The call enters `state`.
    pub(super) fn show_state(&self, state: &'static str) {
        let now = crate::clock::now_ms();
        self.show(|v| {
            if v.state != state {
                v.state = state;
                v.state_since = now;
            }
        });
    }

    /// Shows the bridge: the agent (or backend) on the far leg `b`, both legs.
    pub(super) fn show_bridge(&self, b: &super::Leg) {
        let state = if self.held.is_some() {
            "held"
        } else if self.handing_off {
            "handoff"
        } else {
            "talking"
        };
        self.show_state(state);
        let agent = self.agent_on_call().to_string();
        let far_role = if self.b_agent.is_empty() {
            "far"
        } else {
            "agent"
        };
        let legs = vec![
            self.caller_leg_view(),
            leg_view(far_role, &agent, &b.dialog.call_id, &b.peer, b.remote_media),
        ];
        let answered = self.cdr.answered;
        let recording = self
            .recording_on
            .then(|| self.cdr.recording.clone())
            .flatten();
        self.show(|v| {
            v.agent = agent;
            v.legs = legs;
            v.answered = answered;
            v.recording = recording;
            v.queue.clone_from(&self.cdr.queue);
        });
    }

    /// The caller's leg as the API shows it.
    pub(super) fn caller_leg_view(&self) -> LegView {
        let a_call_id = match &self.a_dialog {
            Some(d) => d.call_id.as_str(),
            None => self.invite.core.call_id.as_str(),
        };
        leg_view(
            "caller",
            &self.cdr.caller,
            a_call_id,
            &self.a_peer,
            self.a_remote,
        )
    }

    /// Merges call data from the API: into the CDR, the view, and the
    /// `X-Data-` headers later legs get.
    pub(super) fn set_data(&mut self, data: BTreeMap<String, String>) -> ControlResult {
        let mut merged = self.cdr.data.clone();
        merged.extend(data.clone());
        if merged.len() > MAX_DATA {
            return Err((
                422,
                format!(
                    "data: the call would hold {} entries; at most {MAX_DATA}",
                    merged.len()
                ),
            ));
        }
        for (name, value) in &data {
            let header = data_header(name);
            self.call_data
                .retain(|(h, _)| !h.eq_ignore_ascii_case(&header));
            self.call_data.push((header, value.clone()));
        }
        tracing::info!(entries = ?data, "call data set through the API");
        self.cdr.data = merged.clone();
        let shown = merged.clone();
        self.show(|v| v.data = shown);
        Ok(serde_json::json!({ "data": merged }))
    }

    /// Hangs up by the API a call that is not bridged: the answered caller
    /// gets BYE, the unanswered one 480 (with a Warning saying who).
    pub(super) fn api_hangup(&mut self) {
        tracing::info!("hung up through the API");
        self.cdr.hung_up_by = "api".into();
        if self.answered {
            self.bye_caller();
        } else {
            let warning = crate::sip::warning("hung up by the hotline's operator");
            self.a_respond(480, &[("Warning", &warning)], b"");
        }
    }

    /// A request while the call is not bridged (in a flow, in line,
    /// ringing): hang up and call data are taken, the rest waits for a
    /// talking call. `true`: the call is hung up (the caller is released;
    /// the caller of this goes the way of a caller who left).
    pub(super) fn control_unbridged(&mut self, req: ControlReq, state: &str) -> bool {
        match &req.control {
            Control::Hangup => {
                self.api_hangup();
                self.caller_gone = true;
                req.answer(Ok(
                    serde_json::json!({ "hung_up": self.invite.core.call_id }),
                ));
                true
            }
            Control::SetData(data) => {
                let result = self.set_data(data.clone());
                req.answer(result);
                false
            }
            _ => {
                req.not_now(state);
                false
            }
        }
    }
}

impl super::Call {
    /// A request while the caller is bridged to `b`. `agent_call`: an agent
    /// (not a backend or an outside number) is on the far leg, which hold,
    /// recording and transfer need. `Some`: the bridge ends so.
    pub(super) async fn control_bridged(
        &mut self,
        req: ControlReq,
        a: &mut super::Leg,
        b: &mut super::Leg,
        agent_call: bool,
    ) -> Option<super::Bridged> {
        use crate::media::relay::{RelayCmd, Side};
        let state = if self.held.is_some() {
            "held"
        } else {
            "talking"
        };
        match req.control.clone() {
            Control::Hangup => {
                tracing::info!("hung up through the API");
                self.bye(&mut a.dialog, a.peer);
                self.bye(&mut b.dialog, b.peer);
                req.answer(Ok(
                    serde_json::json!({ "hung_up": self.invite.core.call_id }),
                ));
                return Some(super::Bridged::Ended(super::End::ApiHangup));
            }
            Control::SetData(data) => {
                let result = self.set_data(data);
                req.answer(result);
                return None;
            }
            _ if !agent_call => {
                let why = "only a call with an agent on it can be held, recorded or transferred";
                req.answer(Err((409, why.into())));
                return None;
            }
            Control::Hold if self.held.is_some() => {
                req.answer(Err((409, "the call is already held".into())))
            }
            Control::Hold => {
                let Some(law) = crate::media::player::Law::from_pt(self.voice.codec) else {
                    req.answer(Err((
                        409,
                        "only a G.711 call can hear music on hold".into(),
                    )));
                    return None;
                };
                let recording = self.recording_on;
                match self.unbridge(law).await {
                    Some(media) => {
                        tracing::info!("held through the API: the caller hears music");
                        self.recording_on = false;
                        self.resume_recording = recording;
                        let queue = self.cdr.queue.clone();
                        self.music_on_hold(&queue);
                        self.held = Some(media);
                        self.show_bridge(b);
                        req.answer(Ok(serde_json::json!({ "state": "held" })));
                    }
                    None => {
                        // The relay is gone (it failed): nothing to hold.
                        req.answer(Err((
                            409,
                            "the call's media could not be taken apart".into(),
                        )));
                    }
                }
            }
            Control::Resume if self.held.is_none() => {
                req.answer(Err((409, "the call is not held".into())))
            }
            Control::Resume => {
                self.held = None;
                if !self.bridge_media().await {
                    tracing::warn!("the call could not be bridged again after hold; ending it");
                    self.bye(&mut a.dialog, a.peer);
                    self.bye(&mut b.dialog, b.peer);
                    req.answer(Err((
                        500,
                        "the call's media could not be bridged again; it ended".into(),
                    )));
                    return Some(super::Bridged::Ended(super::End::Refused));
                }
                self.relay_cmd(RelayCmd::Remote(Side::B, b.remote_media))
                    .await;
                self.relay_cmd(RelayCmd::Watch(true)).await;
                if std::mem::take(&mut self.resume_recording) {
                    self.start_recording().await;
                }
                tracing::info!("resumed through the API");
                self.show_bridge(b);
                req.answer(Ok(serde_json::json!({ "state": "talking" })));
            }
            Control::Record(_) if self.held.is_some() => req.not_now(state),
            Control::Record(true) if self.recording_on => {
                req.answer(Err((409, "the call is already being recorded".into())))
            }
            Control::Record(true) => {
                self.start_recording().await;
                if self.recording_on {
                    self.show_bridge(b);
                    req.answer(Ok(serde_json::json!({ "recording": self.cdr.recording })));
                } else {
                    req.answer(Err((409, "the call cannot be recorded (only G.711 calls can, and the file must open)".into())));
                }
            }
            Control::Record(false) if !self.recording_on => {
                req.answer(Err((409, "the call is not being recorded".into())))
            }
            Control::Record(false) => {
                self.relay_cmd(RelayCmd::StopRecording).await;
                self.recording_on = false;
                tracing::info!("recording stopped through the API");
                self.show_bridge(b);
                req.answer(Ok(serde_json::json!({ "recording": null })));
            }
            Control::Transfer { .. } if self.held.is_some() => {
                req.answer(Err((409, "resume the call before transferring it".into())))
            }
            Control::Transfer { to, attended } => {
                return Some(super::Bridged::ApiTransfer { to, attended, req })
            }
            Control::ToFlow(_) if self.held.is_some() => req.answer(Err((
                409,
                "resume the call before sending the caller on".into(),
            ))),
            Control::ToFlow(flow) => return Some(super::Bridged::ApiToFlow { flow, req }),
            Control::TransferComplete | Control::TransferCancel => req.answer(Err((
                409,
                "no attended transfer is being consulted on this call".into(),
            ))),
        }
        None
    }
}

/// A leg as the API shows it.
pub(super) fn leg_view(
    role: &'static str,
    party: &str,
    call_id: &str,
    peer: &crate::sip::Peer,
    media: std::net::SocketAddr,
) -> LegView {
    LegView {
        role,
        call_id: call_id.to_string(),
        party: party.to_string(),
        signalling: format!(
            "{} {}",
            peer.transport.via_token().to_ascii_lowercase(),
            peer.addr
        ),
        media: media.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, arrived: u64) -> CallView {
        CallView {
            call_id: id.into(),
            arrived,
            state: "ivr",
            ..CallView::default()
        }
    }

    #[tokio::test]
    async fn a_request_reaches_the_call_and_its_answer_comes_back() {
        let live = LiveCalls::default();
        let mut rx = live.insert(view("b", 2));
        let _other = live.insert(view("a", 1));
        let ids: Vec<String> = live.list().into_iter().map(|v| v.call_id).collect();
        assert_eq!(ids, ["a", "b"], "oldest first");
        let call = tokio::spawn(async move {
            let req = rx.recv().await.expect("a request");
            assert_eq!(req.control, Control::Hold);
            req.not_now("ringing");
        });
        let got = live.send("b", Control::Hold).await;
        call.await.expect("call task");
        match got {
            Err((409, why)) => assert!(why.contains("ringing") && why.contains("hold"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            live.send("zz", Control::Hangup).await.err().map(|e| e.0),
            Some(404)
        );
        live.update("b", |v| v.state = "talking");
        assert_eq!(live.get("b").map(|v| v.state), Some("talking"));
        live.remove("b");
        assert!(live.get("b").is_none());
    }

    #[tokio::test]
    async fn a_call_gone_before_answering_is_404() {
        let live = LiveCalls::default();
        let rx = live.insert(view("c", 1));
        let sent = tokio::spawn(async move {
            let live = live;
            live.send("c", Control::Hangup).await
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(sent.await.expect("task").err().map(|e| e.0), Some(404));
    }

    #[test]
    fn call_data_is_checked_by_name() {
        let ok: BTreeMap<String, String> = [("ticket".to_string(), "GD-2026-1".to_string())].into();
        assert!(check_data(&ok).is_ok());
        let bad_name: BTreeMap<String, String> = [("tic ket".to_string(), "1".to_string())].into();
        assert!(check_data(&bad_name)
            .unwrap_err()
            .starts_with("data.tic ket"));
        let bad_value: BTreeMap<String, String> =
            [("t".to_string(), "a\r\nVia: x".to_string())].into();
        assert!(check_data(&bad_value).unwrap_err().starts_with("data.t:"));
        assert!(check_data(&BTreeMap::new()).is_err());
        let many: BTreeMap<String, String> = (0..17)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert!(check_data(&many).is_err());
    }
}

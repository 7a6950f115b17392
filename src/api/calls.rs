//! Live calls and call control over HTTP: list and get calls with their
//! legs, flow path and call data; hang up, hold, resume, record, transfer,
//! and set call data.
//!
//! Room: the front desk's call-control counter. Every action is checked
//! (token, role, an agent's own call, the body's fields), written to the
//! audit log, and only then handed to the call's own task through
//! [`crate::call::LiveCalls`], whose answer is the HTTP answer. It may touch
//! the registry and the audit log; nothing else.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{authorize, bad, record_action, Api, Caller, ErrorBody, Failure};
use crate::call::{CallView, Control};
use crate::store::Role;

/// Who may read live calls: everyone, an agent only its own.
const READERS: &[Role] = &[Role::Admin, Role::Supervisor, Role::Ticketing, Role::Agent];
/// Who may control a call: the ticket system, admins, and an agent on its own call.
const CONTROLLERS: &[Role] = &[Role::Admin, Role::Ticketing, Role::Agent];
/// Who may transfer: the controllers and supervisors.
const TRANSFERRERS: &[Role] = &[Role::Admin, Role::Ticketing, Role::Agent, Role::Supervisor];

/// `?queue=…&agent=…&hotline=…&state=…`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct CallFilter {
    /// Only calls in (or last in) this queue.
    queue: Option<String>,
    /// Only calls with this agent on them (or ringing).
    agent: Option<String>,
    /// Only calls to this hotline label.
    hotline: Option<String>,
    /// Only calls in this state (`ivr`, `queued`, `ringing`, `talking`, `held`…).
    state: Option<String>,
}

/// Whether an agent token may see `call`: it is on it or rung for it.
fn involves(call: &CallView, agent: &str) -> bool {
    call.agent.split(',').any(|a| a == agent)
}

#[utoipa::path(get, path = "/api/v1/calls", tag = "calls", security(("bearer" = [])),
    params(CallFilter),
    responses((status = 200, description = "the live calls, oldest first (an agent token: its own)", body = [CallView]),
        (status = 400, description = "a filter names a state that is not one", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody)))]
pub(super) async fn list(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(filter): Query<CallFilter>,
) -> Result<Json<Vec<CallView>>, Failure> {
    let caller = authorize(&api, &headers, READERS, "read live calls")?;
    if let Some(state) = filter
        .state
        .as_deref()
        .filter(|s| !crate::call::CALL_STATES.contains(s))
    {
        return Err(bad(
            "state",
            format!(
                "{state:?} is not a call state; one of {}",
                crate::call::CALL_STATES.join(", ")
            ),
        ));
    }
    let mut calls = api.calls.list();
    calls.retain(|c| {
        caller.own_agent().is_none_or(|own| involves(c, own))
            && filter.queue.as_ref().is_none_or(|q| &c.queue == q)
            && filter.agent.as_ref().is_none_or(|a| involves(c, a))
            && filter.hotline.as_ref().is_none_or(|h| &c.hotline == h)
            && filter.state.as_ref().is_none_or(|s| c.state == s)
    });
    Ok(Json(calls))
}

/// The call `id`, if it lives and the caller may see it (404 either way:
/// an agent does not learn of others' calls).
fn visible(api: &Api, caller: &Caller, id: &str) -> Result<CallView, Failure> {
    let gone = || Failure(StatusCode::NOT_FOUND, format!("no live call {id:?}"));
    let call = api.calls.get(id).ok_or_else(gone)?;
    if caller.own_agent().is_some_and(|own| !involves(&call, own)) {
        return Err(gone());
    }
    Ok(call)
}

#[utoipa::path(get, path = "/api/v1/calls/{id}", tag = "calls", security(("bearer" = [])),
    params(("id" = String, Path, description = "the caller's Call-ID")),
    responses((status = 200, description = "the call: state, legs, flow path, call data", body = CallView),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody),
        (status = 404, description = "no such live call", body = ErrorBody)))]
pub(super) async fn one(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<CallView>, Failure> {
    let caller = authorize(&api, &headers, READERS, "read live calls")?;
    Ok(Json(visible(&api, &caller, &id)?))
}

/// How a control request may be refused, besides its own 400s and 422s.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum CallRefusals {
    /// No valid bearer token.
    #[response(status = 401, description = "no valid bearer token")]
    Unauthorized(ErrorBody),
    /// The token's role may not, or it is not the agent's own call.
    #[response(status = 403, description = "the token's role may not")]
    Forbidden(ErrorBody),
    /// No such live call (or not one an agent token may see).
    #[response(status = 404, description = "no such live call")]
    NotFound(ErrorBody),
    /// The call cannot do it in its present state (the message says why).
    #[response(
        status = 409,
        description = "the call cannot take it in its present state (not a talking agent call, already held…)"
    )]
    Conflict(ErrorBody),
}

/// Checks, audits, and sends `control` to call `id`.
async fn act(
    api: &Api,
    headers: &HeaderMap,
    id: String,
    roles: &[Role],
    control: Control,
    detail: Value,
) -> Result<Json<Value>, Failure> {
    let what = format!("{} calls", control.name());
    let caller = authorize(api, headers, roles, &what)?;
    visible(api, &caller, &id)?;
    record_action(
        api,
        &caller,
        &format!("call.{}", control.name()),
        &id,
        detail,
    )
    .await?;
    match api.calls.send(&id, control).await {
        Ok(v) => Ok(Json(v)),
        Err((status, why)) => Err(Failure(
            StatusCode::from_u16(status).unwrap_or(StatusCode::CONFLICT),
            why,
        )),
    }
}

/// Reads a JSON body of type `T`; a 400 names what is wrong.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(bytes).map_err(|e| bad("body", e))
}

#[utoipa::path(post, path = "/api/v1/calls/{id}/hangup", tag = "calls", security(("bearer" = [])),
    params(("id" = String, Path, description = "the caller's Call-ID")),
    responses((status = 200, description = "hung up (and audited): both legs get BYE, an unanswered caller 480", body = Object),
        CallRefusals))]
pub(super) async fn hangup(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, Failure> {
    act(
        &api,
        &headers,
        id,
        CONTROLLERS,
        Control::Hangup,
        Value::Null,
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/calls/{id}/hold", tag = "calls", security(("bearer" = [])),
    params(("id" = String, Path, description = "the caller's Call-ID")),
    responses((status = 200, description = "held: the caller hears the queue's music, the agent silence", body = Object),
        CallRefusals))]
pub(super) async fn hold(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, Failure> {
    act(&api, &headers, id, CONTROLLERS, Control::Hold, Value::Null).await
}

#[utoipa::path(post, path = "/api/v1/calls/{id}/resume", tag = "calls", security(("bearer" = [])),
    params(("id" = String, Path, description = "the caller's Call-ID")),
    responses((status = 200, description = "talking again (a recording paused by the hold goes on in a new file)", body = Object),
        CallRefusals))]
pub(super) async fn resume(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, Failure> {
    act(
        &api,
        &headers,
        id,
        CONTROLLERS,
        Control::Resume,
        Value::Null,
    )
    .await
}

/// `POST /api/v1/calls/{id}/recording` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RecordingSwitch {
    /// true: start recording; false: stop.
    record: bool,
}

#[utoipa::path(post, path = "/api/v1/calls/{id}/recording", tag = "calls", security(("bearer" = [])),
    params(("id" = String, Path, description = "the caller's Call-ID")),
    request_body = RecordingSwitch,
    responses((status = 200, description = "recording started (its file) or stopped", body = Object),
        (status = 400, description = "the body is wrong; the message names the field", body = ErrorBody),
        CallRefusals))]
pub(super) async fn recording(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, Failure> {
    authorize(&api, &headers, CONTROLLERS, "record calls")?;
    let switch: RecordingSwitch = body(&bytes)?;
    let detail = json!({ "record": switch.record });
    act(
        &api,
        &headers,
        id,
        CONTROLLERS,
        Control::Record(switch.record),
        detail,
    )
    .await
}

/// `POST /api/v1/calls/{id}/transfer` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TransferTo {
    /// An agent ID, a queue name, a peer centre, or a number the agent on
    /// the call may dial (as its phone's REFER would name it). Or give
    /// `flow`.
    #[serde(default)]
    to: String,
    /// Or a flow the caller walks as the agent leaves (`rating`: 满意度
    /// 评价 on purpose); the agent's leg ends, and no transfer is counted.
    #[serde(default)]
    flow: Option<String>,
    /// Consult first: the caller hears music while the agent talks to the
    /// target; then `…/transfer/complete` (or the agent hanging up) hands
    /// the caller over, `…/transfer/cancel` (or the target hanging up)
    /// brings them back. Not to a queue.
    #[serde(default)]
    attended: bool,
}

#[utoipa::path(post, path = "/api/v1/calls/{id}/transfer", tag = "calls", security(("bearer" = [])),
    params(("id" = String, Path, description = "the caller's Call-ID")),
    request_body = TransferTo,
    responses((status = 200, description = "the caller hears music while the target rings; the outcome comes as call.transferred (or the caller back with the agent); with `flow`, the caller walks the flow and the agent is let go", body = Object),
        (status = 400, description = "the body is wrong; the message names the field", body = ErrorBody),
        CallRefusals,
        (status = 422, description = "not a target this call may be transferred to", body = ErrorBody)))]
pub(super) async fn transfer(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, Failure> {
    authorize(&api, &headers, TRANSFERRERS, "transfer calls")?;
    let to: TransferTo = body(&bytes)?;
    if let Some(flow) = to.flow {
        if !to.to.is_empty() || to.attended {
            return Err(bad(
                "flow",
                "give `to` or `flow`, not both (and a flow is not attended)",
            ));
        }
        if !crate::text::is_plain_name(&flow) || flow.len() > 64 {
            return Err(bad("flow", "a flow's name: letters, digits, - and _"));
        }
        let detail = json!({ "flow": flow });
        return act(
            &api,
            &headers,
            id,
            TRANSFERRERS,
            Control::ToFlow(flow),
            detail,
        )
        .await;
    }
    if to.to.is_empty()
        || to.to.len() > 64
        || !to
            .to
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-_.*#".contains(c))
    {
        return Err(bad(
            "to",
            "an agent ID, a queue or a number: 1-64 letters, digits and + - _ . * #",
        ));
    }
    let detail = json!({ "to": to.to, "attended": to.attended });
    let control = Control::Transfer {
        to: to.to,
        attended: to.attended,
    };
    act(&api, &headers, id, TRANSFERRERS, control, detail).await
}

#[utoipa::path(post, path = "/api/v1/calls/{id}/transfer/complete", tag = "calls", security(("bearer" = [])),
    params(("id" = String, Path, description = "the caller's Call-ID")),
    responses((status = 200, description = "the attended transfer is done: the caller talks to the consulted target, the agent is let go (call.transferred follows)", body = Object),
        CallRefusals))]
pub(super) async fn transfer_complete(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, Failure> {
    let control = Control::TransferComplete;
    act(&api, &headers, id, TRANSFERRERS, control, Value::Null).await
}

#[utoipa::path(post, path = "/api/v1/calls/{id}/transfer/cancel", tag = "calls", security(("bearer" = [])),
    params(("id" = String, Path, description = "the caller's Call-ID")),
    responses((status = 200, description = "the attended transfer is called off: the target gets BYE (or CANCEL while it rings), the caller is back with the agent", body = Object),
        CallRefusals))]
pub(super) async fn transfer_cancel(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, Failure> {
    let control = Control::TransferCancel;
    act(&api, &headers, id, TRANSFERRERS, control, Value::Null).await
}

/// `POST /api/v1/calls` body: a call to place (回访).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewCall {
    /// The citizen's number (`13800000001`, `+8613800000001`…).
    to: String,
    /// The agent to connect (rung first); an agent token: itself.
    #[serde(default)]
    agent: Option<String>,
    /// Or the queue whose next free agent takes the call.
    #[serde(default)]
    queue: Option<String>,
    /// Or the flow the citizen walks once they answer (a satisfaction
    /// survey such as the bundled `callback-survey`; their keys and
    /// variables land in the CDR).
    #[serde(default)]
    flow: Option<String>,
    /// The number the citizen sees (default 12345).
    #[serde(default)]
    hotline: Option<String>,
    /// Call data for the agent's screen and the CDR (`{"ticket": "GD-2026-0001"}`).
    #[serde(default)]
    data: BTreeMap<String, String>,
}

#[utoipa::path(post, path = "/api/v1/calls", tag = "calls", security(("bearer" = [])),
    request_body = NewCall,
    responses((status = 202, description = "placed: the agent (or the queue's next) is rung, then the citizen through the trunk (with a flow: the citizen first, then the flow); follow it by its call_id in /api/v1/calls, the event stream and its CDR (hotline outbound)", body = Object),
        (status = 400, description = "the body is wrong; the message names the field", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not, or an agent token names another agent", body = ErrorBody),
        (status = 422, description = "the number may not be called out (premium, abroad, one of ours, no trunk), or no such agent or queue", body = ErrorBody)))]
pub(super) async fn originate(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), Failure> {
    let caller = authorize(&api, &headers, CONTROLLERS, "place calls")?;
    let mut call: NewCall = body(&bytes)?;
    if let Some(own) = caller.own_agent() {
        if call.agent.as_deref().is_some_and(|a| a != own)
            || call.queue.is_some()
            || call.flow.is_some()
        {
            return Err(Failure(
                StatusCode::FORBIDDEN,
                "an agent token may place calls only for its own agent".into(),
            ));
        }
        call.agent = Some(own.to_string());
    }
    if call.to.is_empty() || call.to.len() > 32 {
        return Err(bad(
            "to",
            "a telephone number is needed (at most 32 characters)",
        ));
    }
    let named = [&call.agent, &call.queue, &call.flow];
    if named.iter().filter(|n| n.is_some()).count() != 1 {
        return Err(bad(
            "agent",
            "name an agent, a queue or a flow (one of them)",
        ));
    }
    let hotline = call.hotline.unwrap_or_else(|| "12345".into());
    if hotline.is_empty() || hotline.len() > 32 || !hotline.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("hotline", "must be digits"));
    }
    if !call.data.is_empty() {
        crate::call::check_data(&call.data).map_err(|e| Failure(StatusCode::BAD_REQUEST, e))?;
    }
    let detail = json!({ "to": call.to, "agent": call.agent, "queue": call.queue, "flow": call.flow, "hotline": hotline, "data": call.data });
    record_action(&api, &caller, "call.originate", &call.to, detail).await?;
    let cmd = crate::admin::AdminCommand::Originate {
        number: call.to,
        agent: call.agent,
        queue: call.queue,
        flow: call.flow,
        hotline,
        data: call.data,
    };
    let placed = super::run(&api, cmd).await?;
    Ok((StatusCode::ACCEPTED, Json(placed)))
}

/// `POST /api/v1/calls/{id}/data` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CallData {
    /// Names and values merged into the call's data (`{"ticket": "GD-2026-0001"}`).
    data: BTreeMap<String, String>,
}

#[utoipa::path(post, path = "/api/v1/calls/{id}/data", tag = "calls", security(("bearer" = [])),
    params(("id" = String, Path, description = "the caller's Call-ID")),
    request_body = CallData,
    responses((status = 200, description = "the call's data now; it goes in the CDR and, as X-Data-<name>, to every later leg", body = Object),
        (status = 400, description = "a name or value is wrong; the message names it", body = ErrorBody),
        CallRefusals,
        (status = 422, description = "the call would hold too many entries", body = ErrorBody)))]
pub(super) async fn data(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, Failure> {
    authorize(&api, &headers, CONTROLLERS, "set call data")?;
    let d: CallData = body(&bytes)?;
    crate::call::check_data(&d.data).map_err(|e| Failure(StatusCode::BAD_REQUEST, e))?;
    let detail = json!({ "data": d.data });
    act(
        &api,
        &headers,
        id,
        CONTROLLERS,
        Control::SetData(d.data),
        detail,
    )
    .await
}

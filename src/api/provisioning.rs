//! Writing the number plan and the agent accounts over HTTP: what
//! `yihaotong routes set|remove` and `agents add|remove` do, for an admin's
//! tools.
//!
//! Room: the front desk's records counter. Admin tokens only; every change
//! is checked field by field (a 400 names the field), written to the audit
//! log (an agent's password never is), and carried out by the same admin
//! command the CLI sends, so a new route or account serves the next call.
//! It may touch the admin dispatch and the audit log; nothing else.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{audited, authorize, bad, Api, ErrorBody, Failure};
use crate::admin::AdminCommand;
use crate::store::Role;

/// `PUT /api/v1/routes/{number}` body: where the number goes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteBody {
    /// A queue the calls wait in (or give `flow`).
    #[serde(default)]
    queue: Option<String>,
    /// An IVR flow the calls run (or give `queue`).
    #[serde(default)]
    flow: Option<String>,
    /// The hotline's label in reports.
    #[serde(default)]
    hotline: Option<String>,
    /// How the number joined 12345: direct, parallel, transition, legacy,
    /// handoff or interconnect.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    mode: Option<crate::routing::Mode>,
    /// `transition`: the local time of the cut-over (`2027-07-01 00:00`).
    #[serde(default)]
    cutover: Option<String>,
    /// `transition`: the flow after the cut-over.
    #[serde(default)]
    after_flow: Option<String>,
    /// The flow the caller walks when the agent hangs up first (a queue's
    /// own `after_call_flow` wins).
    #[serde(default)]
    after_call_flow: Option<String>,
}

#[utoipa::path(put, path = "/api/v1/routes/{number}", tag = "routing", security(("bearer" = [])),
    params(("number" = String, Path, description = "the number or prefix dialed")),
    request_body = RouteBody,
    responses((status = 200, description = "set (and audited): the next call to the number follows it", body = Object),
        (status = 400, description = "the body is wrong; the message names the field", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody),
        (status = 422, description = "refused (not a dialable number, no such queue or flow…)", body = ErrorBody)))]
pub(super) async fn set_route(
    State(api): State<Arc<Api>>,
    Path(number): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Failure> {
    let caller = authorize(&api, &headers, &[Role::Admin], "change the number plan")?;
    let route: RouteBody = serde_json::from_slice(&body).map_err(|e| bad("body", e))?;
    if route.queue.is_some() == route.flow.is_some() {
        return Err(bad("queue", "give a queue or a flow (one of them)"));
    }
    let detail = json!({
        "queue": route.queue, "flow": route.flow, "hotline": route.hotline,
        "mode": route.mode, "cutover": route.cutover, "after_flow": route.after_flow, "after_call_flow": route.after_call_flow,
    });
    let target = number.clone();
    let cmd = AdminCommand::RoutesSet {
        number,
        queue: route.queue,
        flow: route.flow,
        hotline: route.hotline,
        mode: route.mode.unwrap_or_default(),
        cutover: route.cutover,
        after_flow: route.after_flow,
        after_call_flow: route.after_call_flow,
    };
    audited(&api, &caller, "route.set", &target, detail, cmd).await
}

#[utoipa::path(delete, path = "/api/v1/routes/{number}", tag = "routing", security(("bearer" = [])),
    params(("number" = String, Path, description = "the number or prefix")),
    responses((status = 200, description = "removed (and audited)", body = Object),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody),
        (status = 422, description = "no such route", body = ErrorBody)))]
pub(super) async fn remove_route(
    State(api): State<Arc<Api>>,
    Path(number): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, Failure> {
    let caller = authorize(&api, &headers, &[Role::Admin], "change the number plan")?;
    let target = number.clone();
    let cmd = AdminCommand::RoutesRemove { number };
    audited(&api, &caller, "route.remove", &target, Value::Null, cmd).await
}

/// `PUT /api/v1/agents/{id}` body: an agent account, made or replaced.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AgentBody {
    /// The SIP password (kept only as digest HA1; never logged).
    password: String,
    /// Display name.
    #[serde(default)]
    name: Option<String>,
    /// Queues served, each `queue` or `queue:level` (level 1 first).
    queues: Vec<String>,
    /// Wrap-up seconds, overriding the queues'.
    #[serde(default)]
    wrap_up: Option<u64>,
    /// A fresh registration logs the agent in (default true).
    #[serde(default)]
    auto_login: Option<bool>,
    /// May listen, whisper and barge (*31/*32/*33).
    #[serde(default)]
    supervisor: bool,
    /// What the agent may dial out (number classes and prefixes, or
    /// `none`); absent: `[outbound] allow`.
    #[serde(default)]
    dial: Option<Vec<String>>,
}

#[utoipa::path(put, path = "/api/v1/agents/{id}", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, description = "agent ID (the SIP user)")),
    request_body = AgentBody,
    responses((status = 200, description = "made or replaced (and audited, without the password): the next registration and call use it", body = Object),
        (status = 400, description = "the body is wrong; the message names the field", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody),
        (status = 422, description = "refused (a bad ID, an unknown queue…)", body = ErrorBody)))]
pub(super) async fn set_agent(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Failure> {
    let caller = authorize(&api, &headers, &[Role::Admin], "change agent accounts")?;
    let agent: AgentBody = serde_json::from_slice(&body).map_err(|e| bad("body", e))?;
    crate::admin::check_password(&agent.password).map_err(|e| bad("password", e))?;
    let detail = json!({
        "name": agent.name, "queues": agent.queues, "wrap_up": agent.wrap_up,
        "auto_login": agent.auto_login, "supervisor": agent.supervisor, "dial": agent.dial,
    });
    let target = id.clone();
    let cmd = AdminCommand::AgentsAdd {
        id,
        password: agent.password,
        name: agent.name,
        queues: agent.queues,
        wrap_up: agent.wrap_up,
        auto_login: agent.auto_login,
        supervisor: agent.supervisor,
        dial: agent.dial,
    };
    audited(&api, &caller, "agent.set", &target, detail, cmd).await
}

#[utoipa::path(delete, path = "/api/v1/agents/{id}", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, description = "agent ID")),
    responses((status = 200, description = "removed (and audited): its phone can no longer register or take calls", body = Object),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody),
        (status = 422, description = "no such agent", body = ErrorBody)))]
pub(super) async fn remove_agent(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, Failure> {
    let caller = authorize(&api, &headers, &[Role::Admin], "change agent accounts")?;
    let target = id.clone();
    let cmd = AdminCommand::AgentsRemove { id };
    audited(&api, &caller, "agent.remove", &target, Value::Null, cmd).await
}

#[utoipa::path(put, path = "/api/v1/queues/{name}", tag = "routing", security(("bearer" = [])),
    params(("name" = String, Path, description = "the queue's name (letters, digits, - and _)")),
    request_body(content = Object, description = "the queue's keys, as `[queues.NAME]` takes them (description, strategy, ring_timeout, wrap_up, max_wait, overflow, max_waiting, join_empty, leave_empty, moh, announce_position, announce_wait, periodic_announce, periodic_announce_every, callback_after, service_level, retry, max_no_answer, tier_wait, resume_window); those left out follow `[queue]`"),
    responses((status = 200, description = "made or replaced (and audited): the next caller and every agent serving it follow it", body = Object),
        (status = 400, description = "the body is wrong; the message names the field", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody),
        (status = 422, description = "refused (a bad name, an overflow or prompt that does not exist…)", body = ErrorBody)))]
pub(super) async fn set_queue(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Failure> {
    let caller = authorize(&api, &headers, &[Role::Admin], "change the queues")?;
    let def: crate::config::QueueDef = serde_json::from_slice(&body).map_err(|e| bad("body", e))?;
    let detail = json!(def);
    let target = name.clone();
    let cmd = AdminCommand::QueuesSet {
        name,
        def: Box::new(def),
        replace: true,
    };
    audited(&api, &caller, "queue.set", &target, detail, cmd).await
}

#[utoipa::path(delete, path = "/api/v1/queues/{name}", tag = "routing", security(("bearer" = [])),
    params(("name" = String, Path, description = "the queue's name")),
    responses((status = 200, description = "removed (and audited)", body = Object),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody),
        (status = 422, description = "no such queue, or a route, flow, agent or overflow still names it, or callers wait in it", body = ErrorBody)))]
pub(super) async fn remove_queue(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, Failure> {
    let caller = authorize(&api, &headers, &[Role::Admin], "change the queues")?;
    let target = name.clone();
    let cmd = AdminCommand::QueuesRemove { name };
    audited(&api, &caller, "queue.remove", &target, Value::Null, cmd).await
}

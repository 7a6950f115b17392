//! The HTTP admin and CTI API (`[admin] listen`, loopback by default).
//!
//! Room: the front desk for programs: the work-order (ticket) system,
//! supervisors' tools, operators' scripts. Every request but `/healthz`, `/readyz`
//! and `/metrics` carries `Authorization: Bearer <token>`; tokens are made by
//! `yihaotong tokens add`, kept in the database as the SHA-256 of their secret, and
//! carry a role ([`Role`]). A request without a valid token gets 401, one
//! whose role may not do it 403; bad input gets 400 with a message naming
//! the field. Answers come from the same dispatch as the admin socket
//! ([`crate::admin::answer`]), so the CLI and the API take one code path.
//! Control actions are written to the audit log before they are answered.
//! It may touch the store (tokens, audit) and the admin dispatch; nothing
//! else.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::{AdminCommand, LiveFn};

mod calls;
mod provisioning;
mod recordings;
use crate::store::{ApiToken, AuditEntry, Role, Store};

/// Largest request body taken (agent state changes are a few dozen bytes).
const MAX_BODY: usize = 16 * 1024;
/// Most records one page may hold.
const MAX_PAGE: usize = 1000;

/// What the handlers share: what the running server lends the API.
#[derive(Clone)]
pub struct Api {
    /// The database (tokens, audit, records).
    pub store: Store,
    /// The CTI event stream.
    pub events: Arc<crate::events::EventBus>,
    /// The digest realm (for agent passwords the admin dispatch hashes).
    pub realm: String,
    /// What only the running server answers.
    pub live: LiveFn,
    /// Local time, minutes east of UTC, for `since`/`until`.
    pub utc_offset_minutes: i32,
    /// The live calls, for call control.
    pub calls: Arc<crate::call::LiveCalls>,
    /// `[recording] dir`: recordings are named by their path under it.
    pub recordings_dir: std::path::PathBuf,
}

/// Every error's body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ErrorBody {
    /// What was wrong; for bad input, the field first (`since: …`).
    error: String,
}

/// A page of records.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct PageBody {
    /// Records in the whole window.
    total: usize,
    /// Skipped.
    offset: usize,
    /// Asked for.
    limit: usize,
    /// This page's records.
    items: Vec<Value>,
}

/// The OpenAPI document, derived from the handlers and types here.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "yihaotong admin and CTI API", description = "12345 hotline telephony: status, agents, routes, records, events"),
    paths(readyz, metrics_page, status, agents, agent_state, provisioning::set_agent, provisioning::remove_agent,
        routes, provisioning::set_route, provisioning::remove_route, queues, provisioning::set_queue, provisioning::remove_queue, flows, flows_validate, flows_reload,
        cdrs, audit, report, event_stream, queue_log, recordings::list, recordings::audio, calls::list, calls::originate, calls::one, calls::hangup, calls::hold, calls::resume, calls::recording, calls::transfer, calls::transfer_complete, calls::transfer_cancel, calls::data),
    components(schemas(ErrorBody, PageBody, StateChange, crate::call::CallView, crate::call::LegView,
        calls::RecordingSwitch, calls::TransferTo, calls::CallData, calls::NewCall,
        provisioning::RouteBody, provisioning::AgentBody)),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// Declares the bearer-token scheme the paths name.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as JSON.
pub fn openapi_json() -> String {
    use utoipa::OpenApi;
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

/// An error answer: a status and a sentence.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        }
        r
    }
}

fn bad(field: &str, why: impl std::fmt::Display) -> Failure {
    Failure(StatusCode::BAD_REQUEST, format!("{field}: {why}"))
}

/// The caller, from its bearer token.
struct Caller(ApiToken);

impl Caller {
    /// Refuses (403) unless the caller's role is one of `roles`.
    fn may(&self, roles: &[Role], what: &str) -> Result<(), Failure> {
        if roles.contains(&self.0.role) {
            return Ok(());
        }
        Err(Failure(
            StatusCode::FORBIDDEN,
            format!("a {} token may not {what}", self.0.role.as_str()),
        ))
    }

    /// For the agent role: its agent (`None` for the others, who see all).
    fn own_agent(&self) -> Option<&str> {
        (self.0.role == Role::Agent).then(|| self.0.agent.as_deref().unwrap_or_default())
    }

    fn who(&self) -> String {
        format!("{} ({})", self.0.name, self.0.role.as_str())
    }
}

fn authenticate(api: &Api, headers: &HeaderMap) -> Result<Caller, Failure> {
    let unauthorized = |why: &str| Failure(StatusCode::UNAUTHORIZED, why.to_string());
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("a bearer token is needed (Authorization: Bearer …)"))?;
    let secret = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
    match api.store.token(&crate::store::token_hash(secret)) {
        Ok(Some(t)) => Ok(Caller(t)),
        Ok(None) => Err(unauthorized("unknown or revoked token")),
        Err(e) => Err(Failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("token store: {e:#}"),
        )),
    }
}

/// The caller, if its token is valid (401) and its role one of `roles` (403).
fn authorize(
    api: &Api,
    headers: &HeaderMap,
    roles: &[Role],
    what: &str,
) -> Result<Caller, Failure> {
    let caller = authenticate(api, headers)?;
    caller.may(roles, what)?;
    Ok(caller)
}

/// An audited change: the action (name, and what it acts on) is recorded
/// with its detail before the command runs; the command's answer is the reply.
async fn audited(
    api: &Api,
    caller: &Caller,
    action: &str,
    target: &str,
    detail: Value,
    cmd: AdminCommand,
) -> Result<Json<Value>, Failure> {
    record_action(api, caller, action, target, detail).await?;
    Ok(Json(run(api, cmd).await?))
}

async fn run(api: &Api, cmd: AdminCommand) -> Result<Value, Failure> {
    crate::admin::answer(&api.store, &api.realm, &api.live, cmd)
        .await
        .map_err(|e| Failure(StatusCode::UNPROCESSABLE_ENTITY, e))
}

/// Serves the API on `listen` until the process ends. Binding fails loudly.
pub async fn serve(listen: SocketAddr, api: Api) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], openapi_json()) }),
        )
        .route("/api/v1/status", get(status))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/agents/{id}/state", post(agent_state))
        .route(
            "/api/v1/agents/{id}",
            put(provisioning::set_agent).delete(provisioning::remove_agent),
        )
        .route("/api/v1/routes", get(routes))
        .route(
            "/api/v1/routes/{number}",
            put(provisioning::set_route).delete(provisioning::remove_route),
        )
        .route("/api/v1/queues", get(queues))
        .route(
            "/api/v1/queues/{name}",
            put(provisioning::set_queue).delete(provisioning::remove_queue),
        )
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/flows/validate", post(flows_validate))
        .route("/api/v1/flows/reload", post(flows_reload))
        .route("/api/v1/recordings", get(recordings::list))
        .route("/api/v1/recordings/{*id}", get(recordings::audio))
        .route("/api/v1/cdrs", get(cdrs))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/queue-log", get(queue_log))
        .route("/api/v1/report", get(report))
        .route("/api/v1/calls", get(calls::list).post(calls::originate))
        .route("/api/v1/calls/{id}", get(calls::one))
        .route("/api/v1/calls/{id}/hangup", post(calls::hangup))
        .route("/api/v1/calls/{id}/hold", post(calls::hold))
        .route("/api/v1/calls/{id}/resume", post(calls::resume))
        .route("/api/v1/calls/{id}/recording", post(calls::recording))
        .route("/api/v1/calls/{id}/transfer", post(calls::transfer))
        .route(
            "/api/v1/calls/{id}/transfer/complete",
            post(calls::transfer_complete),
        )
        .route(
            "/api/v1/calls/{id}/transfer/cancel",
            post(calls::transfer_cancel),
        )
        .route("/api/v1/calls/{id}/data", post(calls::data))
        .route("/events", get(event_stream))
        .route(
            "/wallboard",
            get(|| wallboard_file("text/html; charset=utf-8", WALLBOARD_HTML)),
        )
        .route(
            "/wallboard/app.js",
            get(|| wallboard_file("text/javascript; charset=utf-8", WALLBOARD_JS)),
        )
        .route(
            "/wallboard/style.css",
            get(|| wallboard_file("text/css; charset=utf-8", WALLBOARD_CSS)),
        )
        .fallback(|| async { Failure(StatusCode::NOT_FOUND, "no such resource".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Arc::new(api));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("[admin] listen {listen}: {e}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP API stopped");
        }
    });
    Ok(bound)
}

/// The wallboard's page, script and style, compiled in (no build step; the
/// page holds no data until its token reads the API).
const WALLBOARD_HTML: &str = include_str!("api/wallboard/index.html");
const WALLBOARD_JS: &str = include_str!("api/wallboard/app.js");
const WALLBOARD_CSS: &str = include_str!("api/wallboard/style.css");

/// One of the wallboard's files, with a policy that lets it load only
/// itself and talk only to this server.
async fn wallboard_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            ),
        ],
        body,
    )
        .into_response()
}

/// Ready: the store answers and the server's own figures come (it is
/// listening); 503 otherwise.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "listening, and the store answers"),
              (status = 503, description = "not ready")))]
async fn readyz(State(api): State<Arc<Api>>) -> Response {
    let store_ok = blocking(&api.store, |s| s.routes().map(drop)).await.is_ok();
    let live_ok = run(&api, AdminCommand::Status).await.is_ok();
    let body = json!({ "ready": store_ok && live_ok, "store": store_ok, "sip": live_ok });
    let status = if store_ok && live_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The Prometheus page (no token: it says how much, never who).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics_page(State(api): State<Arc<Api>>) -> Response {
    let status = run(&api, AdminCommand::Status).await.unwrap_or_default();
    let page = crate::meters::render(&status, crate::call::CALL_STATES);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        page,
    )
        .into_response()
}

#[utoipa::path(get, path = "/api/v1/status", tag = "server", security(("bearer" = [])),
    responses((status = 200, description = "as `yihaotong status`", body = Object),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody)))]
async fn status(State(api): State<Arc<Api>>, headers: HeaderMap) -> Result<Json<Value>, Failure> {
    authorize(
        &api,
        &headers,
        &[Role::Admin, Role::Supervisor],
        "read the server's status",
    )?;
    Ok(Json(run(&api, AdminCommand::Status).await?))
}

#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", security(("bearer" = [])),
    responses((status = 200, description = "agents and their live state (an agent token: itself)", body = [Object]),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody)))]
async fn agents(State(api): State<Arc<Api>>, headers: HeaderMap) -> Result<Json<Value>, Failure> {
    let caller = authorize(
        &api,
        &headers,
        &[Role::Admin, Role::Supervisor, Role::Agent],
        "list agents",
    )?;
    let mut list = run(&api, AdminCommand::AgentsList).await?;
    if let (Some(own), Some(all)) = (caller.own_agent(), list.as_array_mut()) {
        all.retain(|a| a["id"] == own);
    }
    Ok(Json(list))
}

#[utoipa::path(get, path = "/api/v1/routes", tag = "routing", security(("bearer" = [])),
    responses((status = 200, description = "the number plan", body = [Object]),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody)))]
async fn routes(State(api): State<Arc<Api>>, headers: HeaderMap) -> Result<Json<Value>, Failure> {
    authorize(
        &api,
        &headers,
        &[Role::Admin, Role::Supervisor, Role::Ticketing],
        "read the number plan",
    )?;
    Ok(Json(run(&api, AdminCommand::RoutesList).await?))
}

#[utoipa::path(get, path = "/api/v1/queues", tag = "routing", security(("bearer" = [])),
    responses((status = 200, description = "each queue: name, description, the keys set (`keys`; the others follow `[queue]`), the strategy in force and its figures now: waiting, longest_wait_ms, free, ringing, on_call, wrap_up, on_break, unavailable, members, hold_estimate_ms", body = [Object]),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody)))]
async fn queues(State(api): State<Arc<Api>>, headers: HeaderMap) -> Result<Json<Value>, Failure> {
    authorize(
        &api,
        &headers,
        &[Role::Admin, Role::Supervisor, Role::Ticketing],
        "read the queues",
    )?;
    Ok(Json(run(&api, AdminCommand::QueuesList).await?))
}

#[utoipa::path(get, path = "/api/v1/flows", tag = "flows", security(("bearer" = [])),
    responses((status = 200, description = "the flows in service (name, file, description, nodes) and the catalog's version", body = Object),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody)))]
async fn flows(State(api): State<Arc<Api>>, headers: HeaderMap) -> Result<Json<Value>, Failure> {
    authorize(
        &api,
        &headers,
        &[Role::Admin, Role::Supervisor],
        "read the flows",
    )?;
    Ok(Json(run(&api, AdminCommand::Flows).await?))
}

#[utoipa::path(post, path = "/api/v1/flows/validate", tag = "flows", security(("bearer" = [])),
    responses((status = 200, description = "what a reload would find: ok, errors, warnings, and each diagnostic with its file, line, column and message; nothing is put in service", body = Object),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody)))]
async fn flows_validate(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
) -> Result<Json<Value>, Failure> {
    authorize(&api, &headers, &[Role::Admin], "validate flows")?;
    Ok(Json(run(&api, AdminCommand::FlowsValidate).await?))
}

#[utoipa::path(post, path = "/api/v1/flows/reload", tag = "flows", security(("bearer" = [])),
    responses((status = 200, description = "reloaded: flows, prompts, calendars, warnings", body = Object),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody),
        (status = 422, description = "refused: the errors, each with file:line:column; the running flows stay", body = ErrorBody)))]
async fn flows_reload(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
) -> Result<Json<Value>, Failure> {
    let caller = authorize(&api, &headers, &[Role::Admin], "reload flows")?;
    audited(
        &api,
        &caller,
        "flows.reload",
        "flows",
        Value::Null,
        AdminCommand::Reload,
    )
    .await
}

/// `POST /api/v1/agents/{id}/state` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct StateChange {
    /// available, break, logged-out or end-wrap-up.
    state: String,
    /// Break reason code.
    #[serde(default)]
    reason: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/agents/{id}/state", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, description = "agent ID")),
    request_body = StateChange,
    responses((status = 200, description = "changed (and audited)", body = Object),
        (status = 400, description = "a field is wrong; the message names it", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody),
        (status = 422, description = "the desk refused (no such agent…)", body = ErrorBody)))]
async fn agent_state(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Failure> {
    let caller = authorize(
        &api,
        &headers,
        &[Role::Admin, Role::Supervisor, Role::Agent],
        "change agents' states",
    )?;
    if caller.own_agent().is_some_and(|own| own != id) {
        return Err(Failure(
            StatusCode::FORBIDDEN,
            format!("an agent token may change only its own agent's state, not {id:?}'s"),
        ));
    }
    let change: StateChange = serde_json::from_slice(&body).map_err(|e| bad("body", e))?;
    if let Some(r) = &change.reason {
        if r.len() > 32 || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(bad("reason", "up to 32 letters, digits and dashes"));
        }
    }
    let wanted = crate::admin::SeatChange::read(&change.state, change.reason.clone())
        .map_err(|e| bad("state", format!("{e:#}")))?;
    record_action(
        &api,
        &caller,
        "agent.state",
        &id,
        json!({ "state": change.state, "reason": change.reason }),
    )
    .await?;
    let cmd = AdminCommand::AgentsState { id, change: wanted };
    Ok(Json(run(&api, cmd).await?))
}

/// `?since=…&until=…&offset=…&limit=…` for record lists.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// From: `2026-11-28`, `"2026-11-28 09:00"` (local), Unix seconds, or `24h`/`7d` back (default 24h).
    since: Option<String>,
    /// To (exclusive), same forms; default now.
    until: Option<String>,
    /// Records to skip (default 0).
    offset: Option<String>,
    /// Records in the page, up to 1000 (default 100).
    limit: Option<String>,
}

/// A checked [`Page`]: times in Unix ms.
#[derive(Debug, PartialEq, Eq)]
struct Window {
    since: u64,
    until: u64,
    offset: usize,
    limit: usize,
}

impl Page {
    /// The window asked for, each parameter checked by name.
    fn read(&self, utc_offset_minutes: i32) -> Result<Window, Failure> {
        let now = crate::clock::now_ms();
        let time = |field: &str, v: &Option<String>, default: u64| match v {
            None => Ok(default),
            Some(t) => crate::acd::report::parse_time(t, utc_offset_minutes, now)
                .map_err(|e| bad(field, e)),
        };
        let since = time("since", &self.since, now.saturating_sub(24 * 3600 * 1000))?;
        let until = time("until", &self.until, now.saturating_add(1))?;
        if since >= until {
            return Err(bad("until", "must be after since"));
        }
        let number = |field: &str, v: &Option<String>, default: usize, max: usize| match v {
            None => Ok(default),
            Some(n) => match n.parse::<usize>() {
                Ok(n) if n <= max => Ok(n),
                _ => Err(bad(field, format!("must be a whole number up to {max}"))),
            },
        };
        let offset = number("offset", &self.offset, 0, usize::MAX / 2)?;
        let limit = number("limit", &self.limit, 100, MAX_PAGE)?;
        Ok(Window {
            since,
            until,
            offset,
            limit,
        })
    }
}

fn page_of(items: Vec<Value>, w: &Window) -> Value {
    let total = items.len();
    let items: Vec<Value> = items.into_iter().skip(w.offset).take(w.limit).collect();
    json!({ "total": total, "offset": w.offset, "limit": w.limit, "items": items })
}

/// Writes a control action to the audit log (who, what, to what), before
/// it is carried out.
async fn record_action(
    api: &Api,
    caller: &Caller,
    action: &str,
    target: &str,
    detail: Value,
) -> Result<(), Failure> {
    let entry = AuditEntry {
        at: crate::clock::now_ms(),
        who: caller.who(),
        action: action.to_string(),
        target: target.to_string(),
        detail,
    };
    blocking(&api.store, move |s| s.audit(&entry)).await
}

/// Runs a store call off the async threads; its errors are 500s.
async fn blocking<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Failure> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("store: {e:#}")))
}

#[utoipa::path(get, path = "/api/v1/cdrs", tag = "records", security(("bearer" = [])),
    params(Page),
    responses((status = 200, description = "a page of CDRs (an agent token: its own calls)", body = PageBody),
        (status = 400, description = "a parameter is wrong; the message names it", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody)))]
async fn cdrs(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> Result<Json<Value>, Failure> {
    let caller = authorize(
        &api,
        &headers,
        &[Role::Admin, Role::Supervisor, Role::Ticketing, Role::Agent],
        "read call records",
    )?;
    let w = page.read(api.utc_offset_minutes)?;
    let cmd = AdminCommand::Cdrs {
        since: w.since,
        until: w.until,
    };
    let own = caller.own_agent().map(str::to_string);
    record_page(&api, cmd, &w, |c| {
        own.as_ref().is_none_or(|a| c["agent"] == a.as_str())
    })
    .await
}

/// A page of the records `cmd` lists, those `keep` accepts.
async fn record_page(
    api: &Api,
    cmd: AdminCommand,
    w: &Window,
    keep: impl Fn(&Value) -> bool,
) -> Result<Json<Value>, Failure> {
    let mut items = match run(api, cmd).await? {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    items.retain(keep);
    Ok(Json(page_of(items, w)))
}

/// `?queue=…&agent=…` for the queue log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LogFilter {
    /// Only this queue's lines.
    queue: Option<String>,
    /// Only this agent's lines.
    agent: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/queue-log", tag = "records", security(("bearer" = [])),
    params(Page, LogFilter),
    responses((status = 200, description = "a page of queue-log lines (at, call_id, queue, agent, event, data: Asterisk's queue_log events); an agent token: its own", body = PageBody),
        (status = 400, description = "a parameter is wrong; the message names it", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody)))]
async fn queue_log(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(page): Query<Page>,
    Query(filter): Query<LogFilter>,
) -> Result<Json<Value>, Failure> {
    let caller = authorize(
        &api,
        &headers,
        &[Role::Admin, Role::Supervisor, Role::Ticketing, Role::Agent],
        "read the queue log",
    )?;
    let w = page.read(api.utc_offset_minutes)?;
    let cmd = AdminCommand::QueueLog {
        since: w.since,
        until: w.until,
        json: true,
    };
    let agent = caller.own_agent().map(str::to_string).or(filter.agent);
    record_page(&api, cmd, &w, |l| {
        agent.as_ref().is_none_or(|a| l["agent"] == a.as_str())
            && filter
                .queue
                .as_ref()
                .is_none_or(|q| l["queue"] == q.as_str())
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "records", security(("bearer" = [])),
    params(Page),
    responses((status = 200, description = "a page of control actions: who, what, when", body = PageBody),
        (status = 400, description = "a parameter is wrong; the message names it", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody)))]
async fn audit(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> Result<Json<Value>, Failure> {
    authorize(&api, &headers, &[Role::Admin], "read the audit log")?;
    let w = page.read(api.utc_offset_minutes)?;
    let (since, until) = (w.since, w.until);
    let entries = blocking(&api.store, move |s| s.audit_entries(since, until)).await?;
    let items = entries
        .into_iter()
        .map(|e| serde_json::to_value(e).unwrap_or_default())
        .collect();
    Ok(Json(page_of(items, &w)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_consumer_that_does_not_read_is_cut_off_with_the_reason() {
        use crate::events::{About, EventBus, Filter};
        let bus = EventBus::new(1000, 1000);
        bus.publish("call.offered", About::default(), Value::Null);
        let (replay, live) = bus.subscribe(Some(0)).expect("held");
        let (tx, mut rx) = tokio::sync::mpsc::channel(FEED);
        let task = tokio::spawn(forward(replay, live, Filter::default(), tx));
        for _ in 0..FEED + 10 {
            bus.publish("call.offered", About::default(), Value::Null);
        }
        task.await.expect("the forwarder ends by itself");
        let mut got = Vec::new();
        while let Ok(item) = rx.try_recv() {
            got.push(item);
        }
        assert_eq!(got.len(), FEED, "the feed filled, then the reason");
        let seqs: Vec<u64> = got
            .iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some(e.seq),
                Item::CutOff(_) => None,
            })
            .collect();
        assert_eq!(
            seqs,
            (1..FEED as u64).collect::<Vec<_>>(),
            "in order, none lost before the cut"
        );
        match got.last() {
            Some(Item::CutOff(why)) => {
                assert!(
                    why.contains("too slow") && why.contains("since=255"),
                    "{why}"
                )
            }
            other => panic!("no reason last: {other:?}"),
        }
        // A lagging receiver (the bus outran its forwarder) is told too.
        let bus = EventBus::new(1000, 2);
        let (replay, live) = bus.subscribe(None).expect("live");
        for _ in 0..5 {
            bus.publish("call.offered", About::default(), Value::Null);
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(FEED);
        forward(replay, live, Filter::default(), tx).await;
        let mut last = None;
        while let Ok(item) = rx.try_recv() {
            last = Some(item);
        }
        assert!(
            matches!(&last, Some(Item::CutOff(why)) if why.contains("passed you by")),
            "{last:?}"
        );
    }

    #[test]
    fn a_page_names_its_bad_field() {
        let page = |since: Option<&str>, limit: Option<&str>| Page {
            since: since.map(String::from),
            until: None,
            offset: None,
            limit: limit.map(String::from),
        };
        let err = |p: Page| p.read(480).err().map(|f| (f.0, f.1)).expect("refused");
        let (code, why) = err(page(Some("yesterday"), None));
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(why.starts_with("since: "), "{why}");
        let (_, why) = err(page(None, Some("5000")));
        assert!(why.starts_with("limit: ") && why.contains("1000"), "{why}");
        let (_, why) = err(page(None, Some("-1")));
        assert!(why.starts_with("limit: "), "{why}");
        let ok = page(Some("1h"), Some("10")).read(480).ok().expect("fine");
        assert_eq!((ok.offset, ok.limit), (0, 10));
        assert!(ok.since < ok.until);
        let w = Window {
            since: 0,
            until: 1,
            offset: 1,
            limit: 1,
        };
        assert_eq!(
            page_of(vec![json!(1), json!(2), json!(3)], &w),
            json!({ "total": 3, "offset": 1, "limit": 1, "items": [2] })
        );
    }
}

/// `GET /api/v1/report?since=…&until=…&by=…`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ReportQuery {
    /// From, as for the record lists (default 24h back).
    since: Option<String>,
    /// To (exclusive); default now.
    until: Option<String>,
    /// Grouping: hotline (default), queue, agent or hour.
    by: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/report", tag = "records", security(("bearer" = [])),
    params(ReportQuery),
    responses((status = 200, description = "the KPI rows (connection rate, service level, abandonment, ASA, AHT…) and a total, as `yihaotong report --format json`", body = [Object]),
        (status = 400, description = "a parameter is wrong; the message names it", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody)))]
async fn report(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(q): Query<ReportQuery>,
) -> Result<Json<Value>, Failure> {
    authorize(
        &api,
        &headers,
        &[Role::Admin, Role::Supervisor, Role::Ticketing],
        "read the KPI report",
    )?;
    let by = q.by.unwrap_or_else(|| "hotline".into());
    if !["hotline", "queue", "agent", "hour"].contains(&by.as_str()) {
        return Err(bad("by", "must be hotline, queue, agent or hour"));
    }
    let page = Page {
        since: q.since,
        until: q.until,
        offset: None,
        limit: None,
    };
    let w = page.read(api.utc_offset_minutes)?;
    let cmd = AdminCommand::Report {
        since: w.since,
        until: w.until,
        by,
        format: "json".into(),
        utc_offset_minutes: api.utc_offset_minutes,
    };
    Ok(Json(run(&api, cmd).await?))
}

/// `GET /events?since=SEQ&queue=…&agent=…&hotline=…`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EventQuery {
    /// The last sequence number seen: replay what came after it.
    since: Option<String>,
    /// Only this queue's events.
    queue: Option<String>,
    /// Only this agent's events.
    agent: Option<String>,
    /// Only this hotline's events.
    hotline: Option<String>,
}

/// Events a client's connection may hold unsent before it is cut off.
const FEED: usize = 256;

/// The event stream over a WebSocket, or as server-sent events (`id` =
/// sequence number, `event` = kind, `data` = the event as JSON). A reconnecting client sends the
/// last `id` it saw as `since`; a client too slow to keep up is sent a
/// `cut-off` event saying why, and the stream ends.
#[utoipa::path(get, path = "/events", tag = "events", security(("bearer" = [])),
    params(EventQuery),
    responses((status = 101, description = "a WebSocket (with Upgrade: websocket): one text frame per event, the event as JSON"),
        (status = 200, description = "server-sent events: id = sequence, event = kind, data = the event", content_type = "text/event-stream"),
        (status = 400, description = "since is not a number", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody),
        (status = 410, description = "since is older than the backlog: resync", body = ErrorBody)))]
async fn event_stream(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(q): Query<EventQuery>,
    upgrade: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Result<Response, Failure> {
    use axum::response::sse::{KeepAlive, Sse};
    let asks_websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let upgrade = match upgrade {
        Ok(u) => Some(u),
        Err(e) if asks_websocket => return Err(bad("upgrade", e.body_text())),
        Err(_) => None,
    };
    let caller = authorize(
        &api,
        &headers,
        &[Role::Admin, Role::Supervisor, Role::Ticketing, Role::Agent],
        "follow events",
    )?;
    let since = match &q.since {
        None => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| bad("since", "must be an event sequence number"))?,
        ),
    };
    let mut filter = crate::events::Filter {
        queue: q.queue,
        agent: q.agent,
        hotline: q.hotline,
    };
    if let Some(own) = caller.own_agent() {
        if filter.agent.as_deref().is_some_and(|a| a != own) {
            return Err(Failure(
                StatusCode::FORBIDDEN,
                "an agent token may follow only its own agent's events".into(),
            ));
        }
        filter.agent = Some(own.to_string());
    }
    let (replay, live) = api.events.subscribe(since).map_err(|b| {
        Failure(
            StatusCode::GONE,
            format!(
                "since: too far behind (the oldest event held is {}): resync the state, then reconnect without since",
                b.oldest
            ),
        )
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel(FEED);
    tokio::spawn(forward(replay, live, filter, tx));
    if let Some(upgrade) = upgrade {
        return Ok(upgrade
            .max_message_size(4096)
            .on_upgrade(move |socket| websocket_feed(socket, rx)));
    }
    Ok(Sse::new(Feed(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Longest a WebSocket client may leave a frame unread before it is let go.
const WS_SEND_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The event stream over a WebSocket: each event a text frame holding the
/// event as JSON (as SSE's `data`); a cut-off is a last text frame
/// `{"kind": "cut-off", "error": …}` and a close frame (1008) with the
/// reason. What the client sends is not read, beyond close and ping.
async fn websocket_feed(
    mut socket: axum::extract::ws::WebSocket,
    mut rx: tokio::sync::mpsc::Receiver<Item>,
) {
    use axum::extract::ws::{CloseFrame, Message};
    loop {
        tokio::select! {
            item = rx.recv() => {
                let (text, last) = match item {
                    None => return,
                    Some(Item::Event(e)) => (serde_json::to_string(&*e).unwrap_or_default(), None),
                    Some(Item::CutOff(why)) => {
                        let text = json!({ "kind": "cut-off", "error": why }).to_string();
                        (text, Some(why))
                    }
                };
                let sent = tokio::time::timeout(WS_SEND_WITHIN, socket.send(Message::Text(text.into()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
                if let Some(why) = last {
                    // A close reason is at most 123 bytes.
                    let mut reason = why;
                    while reason.len() > 120 {
                        reason.pop();
                    }
                    let close = Message::Close(Some(CloseFrame { code: 1008, reason: reason.into() }));
                    let _ = tokio::time::timeout(WS_SEND_WITHIN, socket.send(close)).await;
                    return;
                }
            }
            m = socket.recv() => match m {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// What a subscriber's feed carries.
#[derive(Debug, PartialEq)]
enum Item {
    /// An event.
    Event(Arc<crate::events::Event>),
    /// The last thing said before the stream ends: why.
    CutOff(String),
}

/// An SSE body fed from a channel.
struct Feed(tokio::sync::mpsc::Receiver<Item>);

impl futures_core::Stream for Feed {
    type Item = Result<axum::response::sse::Event, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|item| {
            item.map(|item| {
                Ok(match item {
                    Item::Event(e) => sse_of(&e),
                    Item::CutOff(why) => axum::response::sse::Event::default()
                        .event("cut-off")
                        .data(json!({ "error": why }).to_string()),
                })
            })
        })
    }
}

fn sse_of(e: &crate::events::Event) -> axum::response::sse::Event {
    axum::response::sse::Event::default()
        .id(e.seq.to_string())
        .event(e.kind)
        .data(serde_json::to_string(e).unwrap_or_default())
}

/// Moves one subscriber's events (the replay, then live ones) into its
/// connection's feed, filtered. Publishing never waits for it: when it
/// falls `event_lag` behind the bus, or its feed is full, it gets a
/// `cut-off` event with the reason and the last sequence it was given.
async fn forward(
    replay: Vec<Arc<crate::events::Event>>,
    mut live: tokio::sync::broadcast::Receiver<Arc<crate::events::Event>>,
    filter: crate::events::Filter,
    tx: tokio::sync::mpsc::Sender<Item>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut last = 0;
    let cut = |tx: &tokio::sync::mpsc::Sender<Item>, why: String| {
        let _ = tx.try_send(Item::CutOff(why));
    };
    let offer = |e: &Arc<crate::events::Event>, last: &mut u64| -> bool {
        if e.seq <= *last {
            return true;
        }
        *last = e.seq;
        if !filter.wants(e) {
            return true;
        }
        if tx.capacity() <= 1 {
            cut(
                &tx,
                format!(
                    "too slow: {FEED} events unread; reconnect with since={}",
                    e.seq - 1
                ),
            );
            return false;
        }
        tx.try_send(Item::Event(e.clone())).is_ok()
    };
    for e in &replay {
        if !offer(e, &mut last) {
            return;
        }
    }
    loop {
        match live.recv().await {
            Ok(e) => {
                if !offer(&e, &mut last) {
                    return;
                }
            }
            Err(RecvError::Lagged(n)) => {
                cut(
                    &tx,
                    format!("too slow: {n} events passed you by; reconnect with since={last}"),
                );
                return;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

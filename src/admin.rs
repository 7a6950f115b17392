//! Administration: the commands behind `yihaotong agents|routes`, and the
//! admin socket through which they reach a running server.
//!
//! Room: the back office. redb lets one process open a database, so while the
//! server runs the CLI cannot open it; instead it sends the same
//! [`AdminCommand`] over a Unix socket under `data_dir` (mode 0600), and the
//! server executes it with the same [`execute`]. One code path either way,
//! and a change takes effect for the next call, with no restart.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::routing;
use crate::routing::Route;
use crate::sip::auth::Credentials;
use crate::store::Presence;
use crate::store::{Agent, RecordKind, Store};

pub mod tables;

/// Longest command line accepted on the socket.
const MAX_COMMAND_BYTES: u64 = 4 * 1024 * 1024;

/// One admin operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminCommand {
    /// Add or replace an agent account.
    AgentsAdd {
        /// Agent id (SIP user).
        id: String,
        /// Password (hashed at once; never stored).
        password: String,
        /// Display name.
        name: Option<String>,
        /// Queues served, each optionally `queue:level` (level 1 = first tier).
        queues: Vec<String>,
        /// Wrap-up seconds overriding the queues'.
        #[serde(default)]
        wrap_up: Option<u64>,
        /// A fresh registration logs the agent in (default true).
        #[serde(default)]
        auto_login: Option<bool>,
        /// May supervise other agents' calls (*31/*32/*33).
        #[serde(default)]
        supervisor: bool,
        /// What the agent may dial out through the trunk (classes and
        /// prefixes); absent: `[outbound] allow`.
        #[serde(default)]
        dial: Option<Vec<String>>,
    },
    /// List agents (without credentials) and their live registrations.
    AgentsList,
    /// KPI report over stored CDRs.
    Report {
        /// From (Unix ms, inclusive).
        since: u64,
        /// To (Unix ms, exclusive).
        until: u64,
        /// hotline, queue, agent or hour.
        by: String,
        /// table, csv or json.
        format: String,
        /// Local time for `hour` groups, minutes east of UTC.
        utc_offset_minutes: i32,
    },
    /// CDRs of a time range (by end time), as JSON.
    Cdrs {
        /// From (Unix ms, inclusive).
        since: u64,
        /// To (Unix ms, exclusive).
        until: u64,
    },
    /// Queue-log lines in Asterisk's layout.
    QueueLog {
        /// From (Unix ms, inclusive).
        since: u64,
        /// To (Unix ms, exclusive).
        until: u64,
        /// The lines as JSON objects (`at`, `call_id`, `queue`, `agent`,
        /// `event`, `data`) rather than text.
        #[serde(default)]
        json: bool,
    },
    /// Set an agent's state: available, break (with a reason), logged-out,
    /// or end-wrap-up.
    AgentsState {
        /// Agent id.
        id: String,
        /// What is asked of the seat (read once, where the word was typed).
        change: SeatChange,
    },
    /// Remove an agent.
    AgentsRemove {
        /// Agent id.
        id: String,
    },
    /// Add or replace a route.
    RoutesSet {
        /// Number or prefix.
        number: String,
        /// Queue (or give `flow`).
        #[serde(default)]
        queue: Option<String>,
        /// IVR flow (or give `queue`).
        #[serde(default)]
        flow: Option<String>,
        /// Hotline label.
        hotline: Option<String>,
        /// How the number joined 12345.
        #[serde(default)]
        mode: crate::routing::Mode,
        /// `transition`: local time of the cut-over.
        #[serde(default)]
        cutover: Option<String>,
        /// `transition`: the flow after the cut-over.
        #[serde(default)]
        after_flow: Option<String>,
        /// The flow the caller walks when the agent hangs up first.
        #[serde(default)]
        after_call_flow: Option<String>,
    },
    /// What a dialed number reaches at a local time, without a call.
    RoutesTest {
        /// As dialed.
        number: String,
        /// Local time (`YYYY-MM-DD HH:MM[:SS]`).
        at: String,
        /// `[trunk] normalize` prefixes, as the server strips them.
        prefixes: Vec<String>,
    },
    /// Remove a route.
    RoutesRemove {
        /// Number or prefix.
        number: String,
    },
    /// List routes.
    RoutesList,
    /// Add numbers to (or remove them from) a caller list flows test with `caller_in`.
    ListsEdit {
        /// List name.
        list: String,
        /// Numbers (normalized as dialed numbers are).
        numbers: Vec<String>,
        /// Add (true) or remove.
        add: bool,
    },
    /// Show a caller list.
    ListsShow {
        /// List name.
        list: String,
    },
    /// Turn an operator switch (a flow's `flag`) on or off.
    SwitchSet {
        /// Switch name.
        name: String,
        /// On or off.
        on: bool,
    },
    /// Switches that are on.
    SwitchList,
    /// Make an API token; its secret is in the answer and nowhere else.
    TokensAdd {
        /// Unique name (who holds it).
        name: String,
        /// What it may do.
        role: crate::store::Role,
        /// For the agent role: the agent ID.
        #[serde(default)]
        agent: Option<String>,
    },
    /// API tokens (names, roles, agents, when made; never the secrets).
    TokensList,
    /// Revoke the API token named `name`.
    TokensRevoke {
        /// Its name.
        name: String,
    },
    /// Live figures of the running server (calls, free RTP ports).
    Status,
    /// Copy the whole database to a new file (an absolute path, written by
    /// the process that holds the database: the running server, or the CLI
    /// when none runs).
    Backup {
        /// Where (must not exist).
        path: String,
    },
    /// Reload flows, prompts and calendars in the running server (as SIGHUP does).
    Reload,
    /// Load flows, prompts and calendars as a reload would, and say what is
    /// wrong, without putting them in service (the running server's settings).
    FlowsValidate,
    /// The flows the running server uses (name, file, description, nodes).
    Flows,
    /// Add a queue (refused when one has the name, unless `replace`).
    QueuesSet {
        /// Queue name.
        name: String,
        /// Its keys (any left out follow `[queue]`).
        #[serde(default)]
        def: Box<crate::config::QueueDef>,
        /// Replace a queue of that name rather than refuse.
        #[serde(default)]
        replace: bool,
    },
    /// Remove a queue; refused while a route, flow, agent or another
    /// queue's overflow names it, or callers wait in it.
    QueuesRemove {
        /// Queue name.
        name: String,
    },
    /// The queues: name, description and the keys set (`keys`; the others
    /// follow `[queue]`), and from a running server their figures now.
    QueuesList,
    /// The live calls of the running server (Asterisk's `core show channels`).
    CallsList,
    /// Hang up a live call (Asterisk's `channel request hangup`): both legs
    /// get BYE, an unanswered caller 480.
    CallsHangup {
        /// The caller's Call-ID.
        id: String,
    },
    /// Place a call (回访): `agent` (or the next of `queue`) is rung, then
    /// `number` through the trunk, showing `hotline`; `data` travels with
    /// it. With `flow`: the citizen is rung first and walks the flow.
    Originate {
        /// The citizen's number.
        number: String,
        /// The agent to connect.
        #[serde(default)]
        agent: Option<String>,
        /// Or the queue whose next agent takes it.
        #[serde(default)]
        queue: Option<String>,
        /// Or the flow the citizen walks once they answer.
        #[serde(default)]
        flow: Option<String>,
        /// The number the citizen sees.
        hotline: String,
        /// Call data (name → value).
        #[serde(default)]
        data: std::collections::BTreeMap<String, String>,
    },
    /// Import a plan file's text.
    RoutesImport {
        /// The file's name, for error messages.
        name: String,
        /// Its content.
        text: String,
    },
}

impl AdminCommand {
    /// What only a running server can answer (its live state, its loaded
    /// flows): never answered by opening the database.
    pub fn needs_server(&self) -> bool {
        matches!(
            self,
            AdminCommand::Status
                | AdminCommand::Reload
                | AdminCommand::FlowsValidate
                | AdminCommand::Flows
                | AdminCommand::CallsList
                | AdminCommand::CallsHangup { .. }
                | AdminCommand::Originate { .. }
        )
    }

    /// Whether it names queues or flows ([`Names::check`] has something
    /// to check).
    pub fn names_things(&self) -> bool {
        matches!(
            self,
            AdminCommand::RoutesSet { .. }
                | AdminCommand::RoutesImport { .. }
                | AdminCommand::AgentsAdd { .. }
                | AdminCommand::QueuesSet { .. }
                | AdminCommand::QueuesRemove { .. }
        )
    }

    /// Whether its check reads the queues each flow file names (removing a
    /// queue a flow still names is refused).
    pub fn checks_flow_queues(&self) -> bool {
        matches!(self, AdminCommand::QueuesRemove { .. })
    }

    /// Whether its check reads the prompt names (a queue's music and
    /// announcement must exist).
    pub fn checks_prompts(&self) -> bool {
        matches!(self, AdminCommand::QueuesSet { .. })
    }

    /// For a command that changes something, the audit log's action and
    /// target (the names the API writes); `None` for one that only reads.
    pub fn audit(&self) -> Option<(&'static str, String)> {
        Some(match self {
            AdminCommand::AgentsAdd { id, .. } => ("agent.set", id.clone()),
            AdminCommand::AgentsRemove { id } => ("agent.remove", id.clone()),
            AdminCommand::AgentsState { id, .. } => ("agent.state", id.clone()),
            AdminCommand::RoutesSet { number, .. } => ("route.set", number.clone()),
            AdminCommand::RoutesRemove { number } => ("route.remove", number.clone()),
            AdminCommand::RoutesImport { name, .. } => ("routes.import", name.clone()),
            AdminCommand::QueuesSet { name, .. } => ("queue.set", name.clone()),
            AdminCommand::QueuesRemove { name } => ("queue.remove", name.clone()),
            AdminCommand::ListsEdit { list, .. } => ("list.edit", list.clone()),
            AdminCommand::SwitchSet { name, .. } => ("switch.set", name.clone()),
            AdminCommand::TokensAdd { name, .. } => ("token.add", name.clone()),
            AdminCommand::TokensRevoke { name } => ("token.revoke", name.clone()),
            AdminCommand::Reload => ("flows.reload", String::new()),
            AdminCommand::Originate { number, .. } => ("call.originate", number.clone()),
            AdminCommand::CallsHangup { id } => ("call.hangup", id.clone()),
            AdminCommand::Backup { path } => ("store.backup", path.clone()),
            _ => return None,
        })
    }

    /// What only reads: with no server running and no database yet, it
    /// says where it looked instead of making an empty database there.
    pub fn only_reads(&self) -> bool {
        matches!(
            self,
            AdminCommand::AgentsList
                | AdminCommand::Report { .. }
                | AdminCommand::Cdrs { .. }
                | AdminCommand::QueueLog { .. }
                | AdminCommand::RoutesTest { .. }
                | AdminCommand::RoutesList
                | AdminCommand::QueuesList
                | AdminCommand::ListsShow { .. }
                | AdminCommand::SwitchList
                | AdminCommand::TokensList
        )
    }
}

/// How to point the CLI at the right data folder, for messages that did
/// not find one.
const POINT_IT: &str =
    "give the server's settings with --config FILE (or YIHAOTONG_CONFIG), or its data_dir with YIHAOTONG_DATA_DIR";

fn valid_name(kind: &str, s: &str) -> anyhow::Result<()> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("{kind} {s:?} must be 1-64 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// The queues, flows and prompts that exist: what a route, a plan, an
/// agent account or a queue may name. The server knows them from its
/// store and loaded catalog; the CLI from the store, the flow files and
/// the sounds on disk.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// The store's queues.
    pub queues: std::collections::BTreeSet<String>,
    /// Flows by name (a flow file's stem).
    pub flows: std::collections::BTreeSet<String>,
    /// Queues each flow file names (flow → queues), whether or not it loads.
    pub flow_queues: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Prompt names.
    pub prompts: std::collections::BTreeSet<String>,
    /// Whether an outbound trunk is set (callbacks need one).
    pub outbound: bool,
}

impl Names {
    /// Whether `cmd` names only queues and flows that exist. The refusal
    /// names the missing one and lists the ones there are; nothing of the
    /// command is carried out then.
    pub fn check(&self, cmd: &AdminCommand) -> Result<(), String> {
        match cmd {
            AdminCommand::RoutesSet {
                queue,
                flow,
                after_flow,
                after_call_flow,
                ..
            } => {
                if let Some(q) = queue.as_deref().filter(|q| !q.is_empty()) {
                    self.queue(q)?;
                }
                for f in [flow, after_flow, after_call_flow].into_iter().flatten() {
                    if !f.is_empty() {
                        self.flow(f)?;
                    }
                }
                Ok(())
            }
            AdminCommand::AgentsAdd { queues, .. } => queues.iter().try_for_each(|q| {
                self.queue(q.split_once(':').map_or(q.as_str(), |(name, _)| name))
            }),
            AdminCommand::QueuesSet { name, def, .. } => {
                crate::config::check_queue(name, def, &self.queues, self.outbound)?;
                if let Some(crate::config::Overflow::Flow(f)) = &def.overflow {
                    self.flow(f).map_err(|e| format!("overflow: {e}"))?;
                }
                if let Some(f) = def.after_call_flow.as_deref().filter(|f| !f.is_empty()) {
                    self.flow(f).map_err(|e| format!("after_call_flow: {e}"))?;
                }
                for (key, prompt) in [
                    ("moh", &def.moh),
                    ("periodic_announce", &def.periodic_announce),
                ] {
                    if let Some(p) = prompt.as_deref().filter(|p| !p.is_empty()) {
                        if crate::media::prompts::silence_frames(p).is_none()
                            && !self.prompts.contains(p)
                        {
                            return Err(format!("{key}: prompt `{p}` does not exist"));
                        }
                    }
                }
                Ok(())
            }
            AdminCommand::QueuesRemove { name } => {
                let naming: Vec<&str> = self
                    .flow_queues
                    .iter()
                    .filter(|(_, queues)| queues.contains(name))
                    .map(|(flow, _)| flow.as_str())
                    .collect();
                if naming.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "queue `{name}` is named by flow(s) {}; change them first",
                        naming.join(", ")
                    ))
                }
            }
            AdminCommand::RoutesImport { name, text } => {
                let routes = routing::parse_plan(text, name).map_err(|e| format!("{e:#}"))?;
                for r in &routes {
                    self.route(r).map_err(|e| {
                        // The line that names the route's number.
                        let line = text
                            .lines()
                            .position(|l| l.contains(&format!("\"{}\"", r.number)))
                            .map_or(String::new(), |i| format!(":{}", i + 1));
                        format!("{name}{line}: route {}: {e}", r.number)
                    })?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Whether a route's queue or flows exist.
    pub fn route(&self, r: &Route) -> Result<(), String> {
        if r.flow.is_empty() {
            self.queue(&r.queue)?;
        } else {
            self.flow(&r.flow)?;
        }
        for f in [&r.after_flow, &r.after_call_flow] {
            if !f.is_empty() {
                self.flow(f)?;
            }
        }
        Ok(())
    }

    fn queue(&self, name: &str) -> Result<(), String> {
        known("queue", name, &self.queues)
    }

    fn flow(&self, name: &str) -> Result<(), String> {
        known("flow", name, &self.flows)
    }
}

fn known(kind: &str, name: &str, names: &std::collections::BTreeSet<String>) -> Result<(), String> {
    if names.contains(name) {
        return Ok(());
    }
    let list: Vec<&str> = names.iter().map(String::as_str).collect();
    Err(format!(
        "{kind} `{name}` does not exist (known: {})",
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    ))
}

/// What in the store still names queue `name` (a route, an agent account,
/// a booked callback, another queue's overflow), said as a refusal;
/// `None`: nothing does.
pub fn queue_in_use(
    store: &Store,
    queues: &crate::config::Queues,
    name: &str,
) -> anyhow::Result<Option<String>> {
    let routes: Vec<String> = store
        .routes()?
        .into_iter()
        .filter(|r| r.flow.is_empty() && r.queue == name)
        .map(|r| r.number)
        .collect();
    if !routes.is_empty() {
        return Ok(Some(format!(
            "queue `{name}` is named by route(s) {}; change them first",
            routes.join(", ")
        )));
    }
    let agents: Vec<String> = store
        .agents()?
        .into_iter()
        .filter(|a| a.memberships().iter().any(|(q, _)| q == name))
        .map(|a| a.id)
        .collect();
    if !agents.is_empty() {
        return Ok(Some(format!(
            "queue `{name}` is served by agent(s) {}; change their queues first",
            agents.join(", ")
        )));
    }
    let booked = store
        .callbacks()?
        .iter()
        .filter(|b| b.queue == name)
        .count();
    if booked > 0 {
        return Ok(Some(format!(
            "queue `{name}` has {booked} callback(s) booked; remove it when they are served"
        )));
    }
    let overflowing: Vec<&str> = queues
        .iter()
        .filter(|(_, q)| q.overflow == Some(crate::config::Overflow::Queue(name.to_string())))
        .map(|(n, _)| n.as_str())
        .collect();
    if !overflowing.is_empty() {
        return Ok(Some(format!(
            "queue `{name}` takes the overflow of queue(s) {}; change them first",
            overflowing.join(", ")
        )));
    }
    Ok(None)
}

/// The one rule for an agent's SIP password, wherever it is set (the CLI,
/// the API): 6 to 128 characters, none of them a control character (a
/// phone's keypad or settings page cannot enter one).
pub fn check_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if !(6..=128).contains(&n) {
        return Err(format!("must be 6 to 128 characters (this one has {n})"));
    }
    if password.chars().any(char::is_control) {
        return Err("must not hold control characters".into());
    }
    Ok(())
}

/// Executes a command against the store. `realm` is the digest realm the
/// password is hashed for.
pub fn execute(
    store: &Store,
    realm: &str,
    cmd: AdminCommand,
    now_unix: u64,
) -> anyhow::Result<Value> {
    match cmd {
        AdminCommand::AgentsAdd {
            id,
            password,
            name,
            queues,
            wrap_up,
            auto_login,
            supervisor,
            dial,
        } => {
            valid_name("agent id", &id)?;
            for entry in dial.iter().flatten() {
                crate::outbound::check_entry(entry).map_err(|e| anyhow::anyhow!("--dial: {e}"))?;
            }
            check_password(&password).map_err(|e| anyhow::anyhow!("password {e}"))?;
            let mut names = Vec::new();
            let mut levels = std::collections::BTreeMap::new();
            for q in &queues {
                let (queue, level) = match q.split_once(':') {
                    Some((queue, level)) => match level.parse::<u32>() {
                        Ok(l) if (1..=99).contains(&l) => (queue, l),
                        _ => {
                            bail!("queue {q:?}: the level after ':' must be a number from 1 to 99")
                        }
                    },
                    None => (q.as_str(), 1),
                };
                valid_name("queue", queue)?;
                if level != 1 {
                    levels.insert(queue.to_string(), level);
                }
                names.push(queue.to_string());
            }
            let mut agent = Agent::new(
                &id,
                name.as_deref().unwrap_or(&id),
                names,
                Credentials::new(&id, realm, &password),
            );
            agent.levels = levels;
            agent.wrap_up = wrap_up;
            agent.auto_login = auto_login.unwrap_or(true);
            agent.supervisor = supervisor;
            agent.dial = dial;
            store.put_agent(&agent)?;
            Ok(json!({ "added": id }))
        }
        AdminCommand::Report {
            since,
            until,
            by,
            format,
            utc_offset_minutes,
        } => {
            use crate::acd::report::{self, By, Format};
            use clap::ValueEnum;
            let by = By::from_str(&by, true)
                .map_err(|_| anyhow::anyhow!("--by must be hotline, queue, agent or hour"))?;
            let format = Format::from_str(&format, true)
                .map_err(|_| anyhow::anyhow!("--format must be table, csv or json"))?;
            let mut cdrs = Vec::new();
            for v in store.records(RecordKind::Cdrs, since, until)? {
                match serde_json::from_slice(&v) {
                    Ok(c) => cdrs.push(c),
                    Err(e) => tracing::warn!(error = %e, "skipping an unreadable CDR"),
                }
            }
            let mut log = Vec::new();
            if by == By::Agent {
                for v in store.records(RecordKind::QueueLog, since, until)? {
                    if let Ok(l) = serde_json::from_slice::<crate::acd::queue_log::LogLine>(&v) {
                        log.push(l);
                    }
                }
            }
            let rows = report::compute(&cdrs, &log, by, utc_offset_minutes);
            Ok(match format {
                Format::Json => serde_json::to_value(&rows)?,
                f => Value::String(report::render(&rows, f)),
            })
        }
        AdminCommand::Cdrs { since, until } => records_json(store, RecordKind::Cdrs, since, until),
        AdminCommand::QueueLog {
            since,
            until,
            json: true,
        } => records_json(store, RecordKind::QueueLog, since, until),
        AdminCommand::QueueLog { since, until, .. } => {
            let mut text = String::new();
            for v in store.records(RecordKind::QueueLog, since, until)? {
                if let Ok(l) = serde_json::from_slice::<crate::acd::queue_log::LogLine>(&v) {
                    text.push_str(&l.queue_log_line());
                    text.push('\n');
                }
            }
            Ok(Value::String(text))
        }
        AdminCommand::AgentsState { id, change } => {
            if store.agent(&id)?.is_none() {
                bail!("no agent {id:?}");
            }
            match &change {
                SeatChange::Presence(p) => store.put_presence(&id, p)?,
                SeatChange::EndWrapUp => bail!("end-wrap-up needs the running server"),
            }
            Ok(json!({ "agent": id, "state": change.word() }))
        }
        AdminCommand::AgentsList => {
            let mut out = Vec::new();
            for a in store.agents()? {
                let live: Vec<Value> = store
                    .bindings(&a.id)?
                    .into_iter()
                    .filter(|b| b.expires_at > now_unix)
                    .map(|b| json!({ "contact": b.contact, "received": b.received.to_string(), "transport": b.transport, "expires_in": b.expires_at - now_unix }))
                    .collect();
                let presence = store.presence(&a.id)?.unwrap_or(Presence::LoggedOut);
                let (state, reason) = match presence {
                    Presence::LoggedOut => ("logged-out", None),
                    Presence::Available => ("available", None),
                    Presence::OnBreak(r) => ("on-break", Some(r)),
                };
                out.push(json!({ "id": a.id, "name": a.name, "queues": a.memberships(), "dial": a.dial, "state": state, "reason": reason, "registrations": live }));
            }
            Ok(Value::Array(out))
        }
        AdminCommand::AgentsRemove { id } => {
            if !store.remove_agent(&id)? {
                bail!("no agent {id:?}");
            }
            Ok(json!({ "removed": id }))
        }
        AdminCommand::RoutesSet {
            number,
            queue,
            flow,
            hotline,
            mode,
            cutover,
            after_flow,
            after_call_flow,
        } => {
            let Some(normalized) = routing::normalize(&number, &[]) else {
                bail!("{number:?} is not a dialable number");
            };
            if queue.is_some() == flow.is_some() {
                bail!("give exactly one of --queue or --flow");
            }
            let route = Route {
                number: normalized.clone(),
                queue: queue.unwrap_or_default(),
                flow: flow.unwrap_or_default(),
                hotline: hotline.unwrap_or_else(|| normalized.clone()),
                mode,
                cutover: cutover.unwrap_or_default(),
                after_flow: after_flow.unwrap_or_default(),
                after_call_flow: after_call_flow.unwrap_or_default(),
            };
            route.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            store.put_route(&route)?;
            Ok(json!({ "set": normalized, "mode": mode }))
        }
        AdminCommand::RoutesTest {
            number,
            at,
            prefixes,
        } => {
            let Some(when) = routing::parse_local_time(&at) else {
                bail!("--at {at:?}: give a local time, YYYY-MM-DD HH:MM[:SS]");
            };
            let Some(normalized) = routing::normalize(&number, &prefixes) else {
                return Ok(json!({ "dialed": number, "answer": "404: not a dialable number" }));
            };
            let Some(route) = store.route_for(&normalized)? else {
                return Ok(
                    json!({ "dialed": number, "normalized": normalized, "answer": "404: no route" }),
                );
            };
            let (flow, after_cutover) = route.flow_at(when);
            let mut out = json!({
                "dialed": number,
                "normalized": normalized,
                "at": when.format("%Y-%m-%d %H:%M:%S").to_string(),
                "route": route.number,
                "mode": route.mode,
                "hotline": route.hotline,
            });
            if flow.is_empty() {
                out["queue"] = json!(route.queue);
            } else {
                out["flow"] = json!(flow);
            }
            if route.mode == routing::Mode::Transition {
                out["cutover"] = json!(route.cutover);
                out["after_cutover"] = json!(after_cutover);
            }
            Ok(out)
        }
        AdminCommand::QueuesSet { name, def, replace } => {
            let existed = store.queues()?.contains_key(&name);
            if existed && !replace {
                bail!("queue `{name}` exists; `yihaotong queues set` (or PUT /api/v1/queues/{name}) changes it");
            }
            store.put_queue(&name, &def)?;
            Ok(json!({ "queue": name, "replaced": existed }))
        }
        AdminCommand::QueuesRemove { name } => {
            let queues = store.queues()?;
            if !queues.contains_key(&name) {
                bail!("no queue `{name}`");
            }
            if let Some(why) = queue_in_use(store, &queues, &name)? {
                bail!("{why}");
            }
            store.remove_queue(&name)?;
            Ok(json!({ "removed": name }))
        }
        AdminCommand::QueuesList => {
            let list: Vec<Value> = store
                .queues()?
                .into_iter()
                .map(|(name, def)| json!({ "name": name, "description": def.description, "keys": def }))
                .collect();
            Ok(Value::Array(list))
        }
        AdminCommand::RoutesRemove { number } => {
            if !store.remove_route(&number)? {
                bail!("no route {number:?}");
            }
            Ok(json!({ "removed": number }))
        }
        AdminCommand::RoutesList => Ok(serde_json::to_value(store.routes()?)?),
        AdminCommand::ListsEdit { list, numbers, add } => {
            valid_name("list", &list)?;
            let mut normalized = Vec::with_capacity(numbers.len());
            for n in &numbers {
                match routing::normalize(n, &[]) {
                    Some(x) => normalized.push(x),
                    None => bail!("{n:?} is not a phone number"),
                }
            }
            let changed = store.edit_list(&list, &normalized, add)?;
            Ok(json!({ "list": list, if add { "added" } else { "removed" }: changed }))
        }
        AdminCommand::ListsShow { list } => {
            Ok(json!({ "list": list, "numbers": store.list_members(&list)? }))
        }
        AdminCommand::SwitchSet { name, on } => {
            valid_name("switch", &name)?;
            store.set_switch(&name, on)?;
            Ok(json!({ "switch": name, "on": on }))
        }
        AdminCommand::SwitchList => Ok(json!({ "on": store.switches_on()? })),
        AdminCommand::TokensAdd { name, role, agent } => {
            valid_name("token name", &name)?;
            match (role, &agent) {
                (crate::store::Role::Agent, None) => {
                    bail!("--agent: an agent token names its agent")
                }
                (crate::store::Role::Agent, Some(id)) if store.agent(id)?.is_none() => {
                    bail!("--agent: no agent {id:?}")
                }
                (crate::store::Role::Agent, Some(_)) => {}
                (_, Some(_)) => bail!("--agent belongs to the agent role only"),
                (_, None) => {}
            }
            // 256 random bits; only their hash is kept.
            let secret: String = std::iter::once("yht_".to_string())
                .chain((0..4).map(|_| crate::sip::random_token()))
                .collect();
            let token = crate::store::ApiToken {
                name: name.clone(),
                role,
                agent,
                created: now_unix,
            };
            store.put_token(&crate::store::token_hash(&secret), &token)?;
            Ok(json!({ "name": name, "role": role, "token": secret }))
        }
        AdminCommand::TokensList => {
            let list: Vec<Value> = store
                .tokens()?
                .into_iter()
                .map(|(_, t)| json!({ "name": t.name, "role": t.role, "agent": t.agent, "created": t.created }))
                .collect();
            Ok(Value::Array(list))
        }
        AdminCommand::TokensRevoke { name } => {
            if !store.revoke_token(&name)? {
                bail!("no token named {name:?}");
            }
            Ok(json!({ "revoked": name }))
        }
        AdminCommand::Status
        | AdminCommand::Reload
        | AdminCommand::FlowsValidate
        | AdminCommand::Flows
        | AdminCommand::CallsList
        | AdminCommand::CallsHangup { .. }
        | AdminCommand::Originate { .. } => bail!("the server is not running (no admin socket)"),
        AdminCommand::RoutesImport { name, text } => {
            let n = store.import_plan(&text, &name)?;
            Ok(json!({ "imported": n }))
        }
        AdminCommand::Backup { path } => {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                bail!("the backup file must be an absolute path (the server's working folder is not yours)");
            }
            let started = std::time::Instant::now();
            tracing::info!(path = %path.display(), "backup started");
            let summary = store.backup(&path)?;
            tracing::info!(path = %path.display(), entries = summary.entries, bytes = summary.bytes, seconds = started.elapsed().as_secs_f64(), "backup written");
            Ok(serde_json::to_value(summary)?)
        }
    }
}

/// Records of one kind (CDRs, queue-log lines) in [since, until) as JSON
/// values, oldest first; an unreadable record is logged and skipped.
fn records_json(store: &Store, kind: RecordKind, since: u64, until: u64) -> anyhow::Result<Value> {
    let mut out = Vec::new();
    for v in store.records(kind, since, until)? {
        match serde_json::from_slice::<Value>(&v) {
            Ok(r) => out.push(r),
            Err(e) => {
                tracing::warn!(error = %e, kind = kind.name(), "skipping an unreadable record")
            }
        }
    }
    Ok(Value::Array(out))
}

/// What an `agents state` change asks of a seat: a presence (take calls,
/// a break with its reason, logged out), or the end of its wrap-up. Read
/// once from the word where it was typed (the CLI, the API's body, a
/// phone's feature code); from there on it travels as this value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeatChange {
    /// The seat's chosen presence.
    Presence(Presence),
    /// End the wrap-up now and take the next call.
    EndWrapUp,
}

impl SeatChange {
    /// The change a word asks for: `available`, `break` (or `on-break`, with
    /// `reason`, `break` when none), `logged-out` (or `logout`), `end-wrap-up`.
    pub fn read(state: &str, reason: Option<String>) -> anyhow::Result<SeatChange> {
        Ok(SeatChange::Presence(match state {
            "available" => Presence::Available,
            "break" | "on-break" => {
                let reason = reason.unwrap_or_else(|| "break".to_string());
                valid_name("break reason", &reason)?;
                Presence::OnBreak(reason)
            }
            "logged-out" | "logout" => Presence::LoggedOut,
            "end-wrap-up" => return Ok(SeatChange::EndWrapUp),
            other => {
                bail!("unknown state {other:?}: use available, break, logged-out or end-wrap-up")
            }
        }))
    }

    /// The state's name in answers, as `agents list` shows states.
    pub fn word(&self) -> &'static str {
        match self {
            SeatChange::Presence(Presence::Available) => "available",
            SeatChange::Presence(Presence::OnBreak(_)) => "on-break",
            SeatChange::Presence(Presence::LoggedOut) => "logged-out",
            SeatChange::EndWrapUp => "end-wrap-up",
        }
    }
}

/// The admin socket's path.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// Commands only the running server can answer (status, reload); `None` for
/// the others, which go to the store.
pub type LiveFn =
    std::sync::Arc<dyn Fn(&AdminCommand) -> Option<Result<Value, String>> + Send + Sync>;

/// Answers one command as the running server does, for the admin socket and
/// the HTTP API alike: what only the live server knows first, else the store
/// (database calls may block briefly, so both run off the async threads).
pub async fn answer(
    store: &Store,
    realm: &str,
    live: &LiveFn,
    cmd: AdminCommand,
) -> Result<Value, String> {
    let (live, for_live) = (live.clone(), cmd.clone());
    let live_answer = tokio::task::spawn_blocking(move || live(&for_live))
        .await
        .unwrap_or_else(|e| Some(Err(e.to_string())));
    if let Some(answer) = live_answer {
        return answer;
    }
    let (store, realm) = (store.clone(), realm.to_string());
    let now = crate::clock::now_unix();
    match tokio::task::spawn_blocking(move || execute(&store, &realm, cmd, now)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes the audit entry of a command `who` gave on the command line (the
/// admin socket, or the database directly), as the API writes its own: the
/// parameters without the password, a plan's text as its size.
pub fn audit_cli(store: &Store, who: &str, cmd: &AdminCommand) {
    let Some((action, target)) = cmd.audit() else {
        return;
    };
    let mut detail = serde_json::to_value(cmd).unwrap_or_default();
    if let Some(fields) = detail.as_object_mut() {
        fields.remove("op");
        fields.remove("password");
        if let Some(text) = fields.remove("text") {
            fields.insert("bytes".into(), text.as_str().map_or(0, str::len).into());
        }
    }
    let entry = crate::store::AuditEntry {
        at: crate::clock::now_ms(),
        who: who.to_string(),
        action: action.to_string(),
        target,
        detail,
    };
    if let Err(e) = store.audit(&entry) {
        tracing::error!(error = %e, action, "the audit entry of a command-line change could not be written");
    }
}

/// `cli:NAME (uid N)` for the user `uid`.
pub fn cli_user(uid: u32) -> String {
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| "?".to_string(), |u| u.name);
    format!("cli:{name} (uid {uid})")
}

/// Serves the admin socket (one JSON command per line, one JSON answer per line).
pub async fn serve(path: PathBuf, store: Store, realm: String, live: LiveFn) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot create admin socket {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let store = store.clone();
            let realm = realm.clone();
            let live = live.clone();
            tokio::spawn(async move {
                // Who is on the other end (the socket is 0600: the server's
                // user or root), for the audit log.
                let who = stream
                    .peer_cred()
                    .map_or_else(|_| "cli:?".to_string(), |c| cli_user(c.uid()));
                let (r, mut w) = stream.into_split();
                let mut lines = tokio::io::BufReader::new(r.take(MAX_COMMAND_BYTES)).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let answer = match serde_json::from_str::<AdminCommand>(&line) {
                        Ok(cmd) => {
                            let audit = cmd.audit().is_some().then(|| cmd.clone());
                            match answer(&store, &realm, &live, cmd).await {
                                Ok(v) => {
                                    if let Some(cmd) = audit {
                                        let (store, who) = (store.clone(), who.clone());
                                        let _ = tokio::task::spawn_blocking(move || {
                                            audit_cli(&store, &who, &cmd)
                                        })
                                        .await;
                                    }
                                    json!({ "ok": true, "result": v })
                                }
                                Err(e) => json!({ "ok": false, "error": e }),
                            }
                        }
                        Err(e) => {
                            json!({ "ok": false, "error": format!("bad admin command: {e}") })
                        }
                    };
                    let mut text = answer.to_string();
                    text.push('\n');
                    if w.write_all(text.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

/// Runs a command: through the running server's socket if there is one,
/// else directly on the database.
pub fn run_command(data_dir: &Path, realm: &str, cmd: AdminCommand) -> anyhow::Result<Value> {
    run_command_with(data_dir, realm, cmd, None)
}

/// What the CLI knows without a server: the settings' queue seeds and
/// where the flows and sounds are on disk.
#[derive(Debug, Clone, Default)]
pub struct Offline {
    /// `[queues.NAME]` of the settings.
    pub seeds: crate::config::Queues,
    /// `flows_dir`.
    pub flows_dir: PathBuf,
    /// `sounds_dir`.
    pub sounds_dir: PathBuf,
    /// Whether `[trunk] outbound` is set.
    pub outbound: bool,
    /// How the database is opened (`[store]`, `[records] archive_dir`).
    pub store: crate::store::StoreOptions,
}

impl Offline {
    /// What `cmd` may name as the disk has it (queues: the seeds'). The
    /// flow files are parsed for the queues they name, and the sounds
    /// listed, only for the commands whose check reads them.
    pub fn names(&self, cmd: Option<&AdminCommand>) -> Names {
        Names {
            queues: self.seeds.keys().cloned().collect(),
            flows: crate::ivr::flow_file_names(&self.flows_dir),
            flow_queues: if cmd.is_some_and(AdminCommand::checks_flow_queues) {
                crate::ivr::flow_queue_refs(&self.flows_dir)
            } else {
                Default::default()
            },
            prompts: if cmd.is_some_and(AdminCommand::checks_prompts) {
                crate::media::prompts::names_on_disk(&self.sounds_dir)
            } else {
                Default::default()
            },
            outbound: self.outbound,
        }
    }
}

/// [`run_command`], and with no server running, first seeds the store's
/// queues as the server would and refuses a command naming a queue, flow
/// or prompt that does not exist (the running server checks its own).
pub fn run_command_with(
    data_dir: &Path,
    realm: &str,
    cmd: AdminCommand,
    offline: Option<&Offline>,
) -> anyhow::Result<Value> {
    let path = socket_path(data_dir);
    if let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&path) {
        let mut line = serde_json::to_string(&cmd)?;
        line.push('\n');
        stream.write_all(line.as_bytes())?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer)?;
        let v: Value =
            serde_json::from_str(&answer).context("bad answer from the server's admin socket")?;
        if v["ok"] == Value::Bool(true) {
            return Ok(v["result"].clone());
        }
        bail!(
            "{}",
            v["error"].as_str().unwrap_or("server refused the command")
        );
    }
    // What only a running server can answer never opens the database: a
    // monitoring loop polling `status` must not hold the lock a starting
    // server needs.
    if cmd.needs_server() {
        bail!(
            "the server is not running: no admin socket at {}; if it runs elsewhere, {POINT_IT}",
            path.display()
        );
    }
    if cmd.only_reads() && !crate::store::db_exists(data_dir) {
        bail!(
            "no database at {} (and no server's admin socket at {}): nothing to read here; {POINT_IT}",
            crate::store::db_path(data_dir).display(),
            path.display()
        );
    }
    let store = Store::open_with(
        data_dir,
        &offline.map(|o| o.store.clone()).unwrap_or_default(),
    )?;
    if let Some(offline) = offline {
        for w in store.seed_queues(&offline.seeds)? {
            eprintln!("warning: {w}");
        }
        if cmd.names_things() {
            let mut names = offline.names(Some(&cmd));
            names.queues = store.queues()?.into_keys().collect();
            names
                .check(&cmd)
                .map_err(|e| anyhow::anyhow!("{e}; nothing was changed"))?;
        }
    }
    let audit = cmd.audit().is_some().then(|| cmd.clone());
    let v = execute(&store, realm, cmd, crate::clock::now_unix())?;
    if let Some(cmd) = audit {
        audit_cli(&store, &cli_user(nix::unistd::getuid().as_raw()), &cmd);
    }
    store.flush()?;
    Ok(v)
}

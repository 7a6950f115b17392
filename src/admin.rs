//! Administration: the commands behind `yihaotong agents|routes`, and the
//! admin socket through which they reach a running server.
//!
//! Room: the back office. sled lets one process open a database, so while the
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
use crate::sip::auth::Credentials;
use crate::store::{Agent, Route, Store};

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
        /// Queues served.
        queues: Vec<String>,
    },
    /// List agents (without credentials) and their live registrations.
    AgentsList,
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
    /// Live figures of the running server (calls, free RTP ports).
    Status,
    /// Reload flows, prompts and calendars in the running server (as SIGHUP does).
    Reload,
    /// Import a plan file's text.
    RoutesImport {
        /// The file's name, for error messages.
        name: String,
        /// Its content.
        text: String,
    },
}

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
        } => {
            valid_name("agent id", &id)?;
            if password.len() < 4 {
                bail!("password must be at least 4 characters");
            }
            for q in &queues {
                valid_name("queue", q)?;
            }
            store.put_agent(&Agent {
                credentials: Credentials::new(&id, realm, &password),
                name: name.unwrap_or_else(|| id.clone()),
                id: id.clone(),
                queues,
            })?;
            Ok(json!({ "added": id }))
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
                out.push(json!({ "id": a.id, "name": a.name, "queues": a.queues, "registrations": live }));
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
        } => {
            let Some(normalized) = routing::normalize(&number, &[]) else {
                bail!("{number:?} is not a dialable number");
            };
            let (queue, flow) = match (queue, flow) {
                (Some(q), None) => (q, String::new()),
                (None, Some(f)) => (String::new(), f),
                _ => bail!("give exactly one of --queue or --flow"),
            };
            valid_name("target", if flow.is_empty() { &queue } else { &flow })?;
            store.put_route(&Route {
                number: normalized.clone(),
                queue,
                flow,
                hotline: hotline.unwrap_or_else(|| normalized.clone()),
            })?;
            Ok(json!({ "set": normalized }))
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
        AdminCommand::Status | AdminCommand::Reload => {
            bail!("the server is not running (no admin socket)")
        }
        AdminCommand::RoutesImport { name, text } => {
            let n = routing::import_text(store, &text, &name)?;
            Ok(json!({ "imported": n }))
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
                let (r, mut w) = stream.into_split();
                let mut lines = tokio::io::BufReader::new(r.take(MAX_COMMAND_BYTES)).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let parsed = serde_json::from_str::<AdminCommand>(&line);
                    let live_answer = match &parsed {
                        Ok(cmd) => {
                            let (live, cmd) = (live.clone(), cmd.clone());
                            tokio::task::spawn_blocking(move || live(&cmd))
                                .await
                                .unwrap_or_else(|e| Some(Err(e.to_string())))
                        }
                        Err(_) => None,
                    };
                    let answer = match (parsed, live_answer) {
                        (_, Some(Ok(v))) => json!({ "ok": true, "result": v }),
                        (_, Some(Err(e))) => json!({ "ok": false, "error": e }),
                        (Ok(cmd), None) => {
                            let store = store.clone();
                            let realm = realm.clone();
                            let now = crate::server::now_unix();
                            // sled calls may block briefly: keep them off the async threads.
                            match tokio::task::spawn_blocking(move || {
                                execute(&store, &realm, cmd, now)
                            })
                            .await
                            {
                                Ok(Ok(v)) => json!({ "ok": true, "result": v }),
                                Ok(Err(e)) => json!({ "ok": false, "error": format!("{e:#}") }),
                                Err(e) => json!({ "ok": false, "error": e.to_string() }),
                            }
                        }
                        (Err(e), None) => {
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
    let store = Store::open(data_dir)?;
    let v = execute(&store, realm, cmd, crate::server::now_unix())?;
    store.flush()?;
    Ok(v)
}

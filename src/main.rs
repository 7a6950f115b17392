//! The `yihaotong` command: run the server, check settings, manage agents and routes.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use yihaotong::admin::{self, AdminCommand};
use yihaotong::config::Settings;
use yihaotong::server::Server;
use yihaotong::store::Store;

/// The allocator (see Cargo.toml for why); the `system-alloc` feature
/// leaves the system's, for heap profilers.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "yihaotong",
    version,
    about = "一号通: the 12345 citizen hotline's telephony core"
)]
struct Cli {
    /// Settings file layered over the built-in defaults (then YIHAOTONG_* variables).
    #[arg(long, global = true, env = "YIHAOTONG_CONFIG")]
    config: Option<PathBuf>,
    /// Output: tables with local times for people, JSON for scripts, or
    /// CSV (lists, cdrs and report).
    #[arg(long, global = true, value_enum, default_value = "table")]
    format: yihaotong::acd::report::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Run,
    /// KPI report from the stored CDRs: offered, answered, connection rate,
    /// service level, abandonment, ASA, AHT.
    Report {
        /// From: 2026-11-28, "2026-11-28 09:00" (local), Unix seconds, or 24h/7d back.
        #[arg(long, default_value = "24h")]
        since: String,
        /// To (exclusive); default now.
        #[arg(long)]
        until: Option<String>,
        /// Grouping.
        #[arg(long, value_enum, default_value = "hotline")]
        by: yihaotong::acd::report::By,
    },
    /// Call detail records (JSON) for a time range, by end time.
    Cdrs {
        /// From (as for `report`).
        #[arg(long, default_value = "24h")]
        since: String,
        /// To (exclusive); default now.
        #[arg(long)]
        until: Option<String>,
    },
    /// Queue-log lines (Asterisk's queue_log layout) for a time range.
    QueueLog {
        /// From (as for `report`).
        #[arg(long, default_value = "24h")]
        since: String,
        /// To (exclusive); default now.
        #[arg(long)]
        until: Option<String>,
    },
    /// Validate settings and the shipped number plan, then exit.
    Check {
        /// Also validate a number-plan file.
        #[arg(long)]
        plan: Option<PathBuf>,
    },
    /// Agent (seat) accounts.
    Agents {
        #[command(subcommand)]
        action: AgentsAction,
    },
    /// Live figures of the running server.
    Status,
    /// Copy the whole database (accounts, number plan, queues, records,
    /// bookings) to a new file, while the server runs (it writes the file)
    /// or not. Archived days and recordings are files: copy those folders.
    Backup {
        /// The backup file to write (must not exist).
        file: PathBuf,
    },
    /// Replace the database with a backup (the server must be stopped).
    /// The backup is checked whole first; the old database is kept beside
    /// it as db.redb.before-restore-UNIXSECONDS.
    Restore {
        /// A file `yihaotong backup` wrote.
        file: PathBuf,
    },
    /// Reload flows, prompts and calendars now (the server also reloads on
    /// SIGHUP and when files change). A bad edit is refused; the old version stays.
    Reload,
    /// Drive a running server with SIP and RTP load over loopback and report.
    Load(yihaotong::load::LoadOptions),
    /// The number plan.
    Routes {
        #[command(subcommand)]
        action: RoutesAction,
    },
    /// Agent queues: a department's queue added, changed or removed
    /// without a restart (`[queues.NAME]` in the settings seeds them).
    Queues {
        #[command(subcommand)]
        action: QueuesAction,
    },
    /// Named caller lists that flows test with `caller_in` (e.g. elderly).
    Lists {
        #[command(subcommand)]
        action: ListsAction,
    },
    /// Live calls of the running server: list them, hang one up.
    Calls {
        #[command(subcommand)]
        action: CallsAction,
    },
    /// Operator switches that flows test with `flag` (e.g. urgent-notice).
    Switch {
        #[command(subcommand)]
        action: SwitchAction,
    },
    /// Bearer tokens for the HTTP API ([admin] listen).
    Tokens {
        #[command(subcommand)]
        action: TokensAction,
    },
}

#[derive(Subcommand)]
enum TokensAction {
    /// Make a token; its secret is printed once and kept only as a hash.
    Add {
        /// Unique name: who or what holds it.
        name: String,
        /// admin (everything), supervisor (read all, change agent states),
        /// agent (its own state and calls), ticketing (events, call data
        /// and control).
        #[arg(long, value_enum)]
        role: yihaotong::store::Role,
        /// For --role agent: the agent ID.
        #[arg(long)]
        agent: Option<String>,
    },
    /// Tokens by name and role (never their secrets).
    List,
    /// Revoke a token: the next request with it gets 401.
    Revoke {
        /// Its name.
        name: String,
    },
}

#[derive(Subcommand)]
enum ListsAction {
    /// Add numbers to a list.
    Add {
        /// List name.
        list: String,
        /// Numbers.
        #[arg(required = true)]
        numbers: Vec<String>,
    },
    /// Remove numbers from a list.
    Remove {
        /// List name.
        list: String,
        /// Numbers.
        #[arg(required = true)]
        numbers: Vec<String>,
    },
    /// Show a list.
    Show {
        /// List name.
        list: String,
    },
}

#[derive(Subcommand)]
enum CallsAction {
    /// Every live call: state, caller, dialed, queue, agent, legs (like
    /// Asterisk's `core show channels`).
    List,
    /// Hang a call up by its Call-ID: both legs get BYE, an unanswered
    /// caller 480 (audited, like the API's).
    Hangup {
        /// The caller's Call-ID (from `calls list`).
        id: String,
    },
}

#[derive(Subcommand)]
enum SwitchAction {
    /// Turn a switch on.
    On {
        /// Switch name.
        name: String,
    },
    /// Turn a switch off.
    Off {
        /// Switch name.
        name: String,
    },
    /// Switches that are on.
    List,
}

#[derive(Subcommand)]
enum AgentsAction {
    /// Add or replace an agent.
    Add {
        /// Agent id: the SIP user name the phone registers with.
        id: String,
        /// Password (stored only as digest HA1).
        #[arg(long)]
        password: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Queues the agent serves, comma-separated, each optionally with a
        /// level (skill tier or penalty; 1 is first): main,hrss:2.
        #[arg(long, value_delimiter = ',', default_value = "main")]
        queues: Vec<String>,
        /// Wrap-up seconds after each call, overriding the queues'.
        #[arg(long)]
        wrap_up: Option<u64>,
        /// Do not log the agent in when the phone registers.
        #[arg(long)]
        no_auto_login: bool,
        /// A supervisor: may listen to (*31ID), whisper to (*32ID) and barge
        /// into (*33ID) agents' calls from the phone.
        #[arg(long)]
        supervisor: bool,
        /// What the agent may dial out through the trunk, comma-separated:
        /// classes (local, mobile, national, service, premium,
        /// international), digit prefixes (0044, 8), or none. Without it,
        /// `[outbound] allow`. Emergency numbers always go.
        #[arg(long, value_delimiter = ',')]
        dial: Option<Vec<String>>,
    },
    /// Set an agent's state (also by phone: *21 log in, *22 break, *23 log
    /// out, *24 end wrap-up).
    State {
        /// Agent id.
        id: String,
        /// available, break, logged-out, or end-wrap-up.
        state: String,
        /// Break reason code (with `break`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// List agents and their registrations.
    List,
    /// Remove an agent.
    Remove {
        /// Agent id.
        id: String,
    },
}

#[derive(Subcommand)]
enum QueuesAction {
    /// Add a queue; refused when one has the name.
    Add(QueueArgs),
    /// Add or replace a queue (keys not given follow `[queue]`).
    Set(QueueArgs),
    /// The queues with their keys, and, from a running server, their
    /// figures now (waiting, free, members…).
    List,
    /// Remove a queue; refused while a route, a flow, an agent or another
    /// queue's overflow names it, or callers wait in it.
    Remove {
        /// Queue name.
        name: String,
    },
}

/// A queue's keys on the command line; the others follow `[queue]`.
#[derive(clap::Args)]
struct QueueArgs {
    /// Queue name (letters, digits, - and _).
    name: String,
    /// What it serves (shown in lists and on the wallboard).
    #[arg(long)]
    description: Option<String>,
    /// longest-idle, round-robin, fewest-calls, ring-all, linear or skills.
    #[arg(long)]
    strategy: Option<String>,
    /// Ring time per offer (`15`, `15s`, `1m`).
    #[arg(long)]
    ring_timeout: Option<String>,
    /// Wrap-up after each call.
    #[arg(long)]
    wrap_up: Option<String>,
    /// Longest wait in line (0: no limit).
    #[arg(long)]
    max_wait: Option<String>,
    /// Answered within this counts as in service level.
    #[arg(long)]
    service_level: Option<String>,
    /// Prompt looped while callers wait.
    #[arg(long)]
    moh: Option<String>,
    /// Where callers go when max_wait passes or the queue empties:
    /// `queue:NAME` or `flow:NAME`.
    #[arg(long)]
    overflow: Option<String>,
    /// The flow the caller walks when the agent hangs up first (e.g.
    /// `rating`, 满意度评价).
    #[arg(long)]
    after_call_flow: Option<String>,
}

impl QueueArgs {
    /// The command: the keys read exactly as `[queues.NAME]` reads them
    /// (the same durations, the same messages for a wrong strategy).
    fn command(self, replace: bool) -> anyhow::Result<AdminCommand> {
        let mut keys = serde_json::Map::new();
        for (key, value) in [
            ("description", self.description),
            ("strategy", self.strategy),
            ("ring_timeout", self.ring_timeout),
            ("wrap_up", self.wrap_up),
            ("max_wait", self.max_wait),
            ("service_level", self.service_level),
            ("moh", self.moh),
            ("after_call_flow", self.after_call_flow),
        ] {
            if let Some(v) = value {
                keys.insert(key.into(), v.into());
            }
        }
        if let Some(o) = self.overflow {
            let Some((kind @ ("queue" | "flow"), name)) = o.split_once(':') else {
                anyhow::bail!("--overflow {o:?} must be queue:NAME or flow:NAME");
            };
            keys.insert("overflow".into(), serde_json::json!({ kind: name }));
        }
        let def = serde_json::from_value(serde_json::Value::Object(keys))
            .map_err(|e| anyhow::anyhow!("queue {}: {e}", self.name))?;
        Ok(AdminCommand::QueuesSet {
            name: self.name,
            def,
            replace,
        })
    }
}

#[derive(Subcommand)]
enum RoutesAction {
    /// Route a number (or prefix) to a queue or an IVR flow.
    Set {
        /// Dialed number or prefix.
        number: String,
        /// Target queue (straight to the seats).
        #[arg(long, conflicts_with = "flow", required_unless_present = "flow")]
        queue: Option<String>,
        /// Target IVR flow (a file stem in ivr-flows/).
        #[arg(long)]
        flow: Option<String>,
        /// Hotline label for reports.
        #[arg(long)]
        hotline: Option<String>,
        /// How the number joined 12345.
        #[arg(long, value_enum, default_value_t = yihaotong::routing::Mode::Direct)]
        mode: yihaotong::routing::Mode,
        /// `transition`: local time the old number's service ends
        /// (`YYYY-MM-DD HH:MM[:SS]`, `[ivr] utc_offset_minutes`).
        #[arg(long)]
        cutover: Option<String>,
        /// `transition`: the flow that takes its calls after the cut-over.
        #[arg(long)]
        after_flow: Option<String>,
        /// The flow the caller walks when the agent hangs up first (e.g.
        /// `rating`, 满意度评价); a queue's own after_call_flow wins.
        #[arg(long)]
        after_call_flow: Option<String>,
    },
    /// What a dialed number reaches, without placing a call: the route
    /// and its mode, the flow (or queue) and the backends that flow hands to.
    Test {
        /// The number as a caller would dial it.
        number: String,
        /// Local time to ask about (default: now), `YYYY-MM-DD HH:MM[:SS]`.
        #[arg(long)]
        at: Option<String>,
    },
    /// Remove a route.
    Remove {
        /// Number or prefix.
        number: String,
    },
    /// List routes.
    List,
    /// Import a TOML plan: [[route]] number=… queue=… hotline=…
    Import {
        /// The plan file.
        file: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The queue seeds of the settings, and where the flows and sounds are:
/// what the CLI's provisioning may name when no server answers.
fn offline(settings: &Settings) -> admin::Offline {
    admin::Offline {
        seeds: settings.queues.clone(),
        flows_dir: settings.flows_dir.clone(),
        sounds_dir: settings.sounds_dir.clone(),
        outbound: !settings.trunk.outbound.is_empty(),
        store: yihaotong::store::StoreOptions::of(settings),
    }
}

/// Starts the log: `[log]` says the format and level, `RUST_LOG` overrides
/// the level; colour only on a terminal and never with `NO_COLOR` set.
fn init_log(log: &yihaotong::config::LogSettings) {
    use std::io::IsTerminal;
    // The audio decoder's own diagnostics repeat what our prompt errors say
    // (with the file and line); they show only when asked for by name.
    let level = if log.level.contains("symphonia") {
        log.level.clone()
    } else {
        format!("{},symphonia_core=off,symphonia=off", log.level)
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match log.format {
        yihaotong::config::LogFormat::Json => builder.json().with_current_span(true).init(),
        yihaotong::config::LogFormat::Text => {
            let colour = std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).init()
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    init_log(&settings.log);
    let realm = settings.sip.domain.clone();
    let data_dir = settings.data_dir.clone();
    let offset = settings.ivr.utc_offset_minutes;
    let format = cli.format;
    // Lists as tables with local times (or CSV) for people, JSON for scripts.
    let show = |v: serde_json::Value, view: Option<admin::tables::View>| -> anyhow::Result<()> {
        use yihaotong::acd::report::Format;
        match (v, view) {
            (serde_json::Value::String(text), _) => print!("{text}"),
            (v, Some(view)) if format != Format::Json => {
                print!(
                    "{}",
                    admin::tables::render(view, &v, offset, format == Format::Csv)
                );
            }
            (v, _) => println!("{}", serde_json::to_string_pretty(&v)?),
        }
        Ok(())
    };
    let run_admin = |cmd: AdminCommand| -> anyhow::Result<()> {
        let view = admin::tables::view_of(&cmd);
        // Nothing that names a queue or flow nobody declared is written.
        let v = admin::run_command_with(&data_dir, &realm, cmd, Some(&offline(&settings)))?;
        show(v, view)
    };
    let range = |since: &str, until: Option<&str>| -> anyhow::Result<(u64, u64)> {
        let now = yihaotong::clock::now_ms();
        let parse = |t: &str, what: &str| {
            yihaotong::acd::report::parse_time(t, offset, now)
                .map_err(|e| anyhow::anyhow!("--{what}: {e}"))
        };
        let since = parse(since, "since")?;
        let until = match until {
            Some(u) => parse(u, "until")?,
            None => now + 1,
        };
        if since >= until {
            anyhow::bail!("--since must be before --until");
        }
        Ok((since, until))
    };
    match cli.command {
        Command::Run => run(settings),
        Command::Check { plan } => {
            yihaotong::routing::parse_plan(
                yihaotong::routing::SHIPPED_PLAN,
                "config/numbers.toml",
            )?;
            let mut plan_text = None;
            if let Some(p) = plan {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                let n = yihaotong::routing::parse_plan(&text, &p.display().to_string())?.len();
                println!("{}: {n} routes read", p.display());
                plan_text = Some((p.display().to_string(), text));
            }
            println!(
                "settings OK: SIP {} (realm {}), RTP {}:{}-{}",
                settings.sip.listen,
                settings.sip.domain,
                settings.rtp.address,
                settings.rtp.port_min,
                settings.rtp.port_max
            );
            // Every route must reach a queue or a flow that exists.
            let mut routes = yihaotong::routing::parse_plan(
                yihaotong::routing::SHIPPED_PLAN,
                "config/numbers.toml",
            )?;
            // The queues: the settings' seeds and what the store holds.
            // `check` writes nothing: a database is read only where one
            // exists (and no server holds it), and an old sled one is left
            // for the server to migrate.
            let mut queues = settings.queues.clone();
            let db = yihaotong::store::db_path(&settings.data_dir);
            if !db.exists() && yihaotong::store::db_exists(&settings.data_dir) {
                println!(
                    "{}: a sled database; the next start copies it to {} once (routes and queues it holds are not checked here)",
                    settings.data_dir.join("db").display(),
                    db.display()
                );
            }
            if db.exists() {
                // The running server's, or the database's with none running.
                let ask = |cmd| admin::run_command(&data_dir, &realm, cmd).ok();
                if let Some(list) = ask(AdminCommand::RoutesList) {
                    routes.extend(serde_json::from_value::<Vec<_>>(list).unwrap_or_default());
                }
                for q in ask(AdminCommand::QueuesList)
                    .and_then(|l| l.as_array().cloned())
                    .into_iter()
                    .flatten()
                {
                    if let (Some(name), Ok(def)) = (
                        q["name"].as_str(),
                        serde_json::from_value(q["keys"].clone()),
                    ) {
                        // The settings' own edit is what is checked.
                        queues.entry(name.to_string()).or_insert(def);
                    }
                }
            }
            let loaded = yihaotong::ivr::load(&settings, &queues);
            for d in &loaded.diagnostics {
                eprintln!("{d}");
            }
            let mut errors = loaded.errors();
            if let Err(e) = yihaotong::store::writable(&settings.data_dir) {
                eprintln!("{e:#}");
                errors += 1;
            }
            if settings.records.keep_days > 0 {
                if let Err(e) = yihaotong::store::archive_writable(&settings.archive_dir()) {
                    eprintln!("{e:#}");
                    errors += 1;
                }
            }
            // A flow whose file is there but did not load has had its own
            // errors reported; the routes naming it do not count again.
            let mut names = offline(&settings).names(None);
            names.queues = queues.keys().cloned().collect();
            names.flows.extend(loaded.catalog.flows.keys().cloned());
            for r in &routes {
                if let Err(e) = names.route(r) {
                    eprintln!("route {}: {e}", r.number);
                    errors += 1;
                }
            }
            if let Some((name, text)) = &plan_text {
                let import = AdminCommand::RoutesImport {
                    name: name.clone(),
                    text: text.clone(),
                };
                if let Err(e) = names.check(&import) {
                    eprintln!("{e}");
                    errors += 1;
                }
            }
            // No flow may send a number out through the trunk that the
            // trunk would hand straight back (the server refuses it per call).
            for flow in loaded.catalog.flows.values() {
                for node in &flow.nodes {
                    let yihaotong::ivr::flow::Action::Transfer { to, .. } = &node.action else {
                        continue;
                    };
                    if settings.transfer.emergency.contains(to) {
                        continue;
                    }
                    let Some(number) = yihaotong::routing::normalize(to, &settings.trunk.normalize)
                    else {
                        continue;
                    };
                    let back = routes
                        .iter()
                        .filter(|r| number.starts_with(&r.number))
                        .max_by_key(|r| r.number.len());
                    if let Some(r) = back {
                        eprintln!(
                            "{}:{}: node `{}`: transfer to {to} would come straight back: the plan routes it ({}) — a hairpin through the trunk",
                            flow.file, node.line, node.name, r.number
                        );
                        errors += 1;
                    }
                }
            }
            anyhow::ensure!(errors == 0, "{errors} error(s); nothing was changed");
            println!(
                "flows OK: {} from {}; prompts OK: {} from {}; calendars: {}",
                loaded.catalog.flows.len(),
                settings.flows_dir.display(),
                loaded.catalog.prompts.len(),
                settings.sounds_dir.display(),
                loaded.catalog.calendars.len()
            );
            Ok(())
        }
        Command::Status => run_admin(AdminCommand::Status),
        Command::Backup { file } => {
            let path = std::path::absolute(&file)
                .with_context(|| format!("cannot name {} absolutely", file.display()))?;
            run_admin(AdminCommand::Backup {
                path: path.display().to_string(),
            })
        }
        Command::Restore { file } => {
            let (trees, aside) = yihaotong::store::Store::restore(
                &settings.data_dir,
                &file,
                &yihaotong::store::StoreOptions::of(&settings),
                &mut |n| eprintln!("… {n} entries read"),
            )?;
            let entries: u64 = trees.values().sum();
            println!(
                "restored {entries} entries from {} into {}",
                file.display(),
                yihaotong::store::db_path(&settings.data_dir).display()
            );
            for (tree, n) in &trees {
                println!("  {tree}: {n}");
            }
            if let Some(aside) = aside {
                println!("the database it replaced is kept at {}", aside.display());
            }
            Ok(())
        }
        Command::Report { since, until, by } => {
            use clap::ValueEnum;
            let (since, until) = range(&since, until.as_deref())?;
            let name = |v: Option<clap::builder::PossibleValue>| {
                v.map(|p| p.get_name().to_string()).unwrap_or_default()
            };
            run_admin(AdminCommand::Report {
                since,
                until,
                by: name(by.to_possible_value()),
                format: name(format.to_possible_value()),
                utc_offset_minutes: offset,
            })
        }
        Command::Cdrs { since, until } => {
            let (since, until) = range(&since, until.as_deref())?;
            run_admin(AdminCommand::Cdrs { since, until })
        }
        Command::QueueLog { since, until } => {
            let (since, until) = range(&since, until.as_deref())?;
            run_admin(AdminCommand::QueueLog {
                since,
                until,
                json: format == yihaotong::acd::report::Format::Json,
            })
        }
        Command::Reload => run_admin(AdminCommand::Reload),
        Command::Load(opts) => load(opts, &data_dir, &realm),
        Command::Agents { action } => run_admin(match action {
            AgentsAction::Add {
                id,
                password,
                name,
                queues,
                wrap_up,
                no_auto_login,
                supervisor,
                dial,
            } => AdminCommand::AgentsAdd {
                id,
                password,
                name,
                queues,
                wrap_up,
                auto_login: Some(!no_auto_login),
                supervisor,
                dial,
            },
            AgentsAction::State { id, state, reason } => AdminCommand::AgentsState {
                id,
                change: admin::SeatChange::read(&state, reason)?,
            },
            AgentsAction::List => AdminCommand::AgentsList,
            AgentsAction::Remove { id } => AdminCommand::AgentsRemove { id },
        }),
        Command::Queues { action } => run_admin(match action {
            QueuesAction::Add(args) => args.command(false)?,
            QueuesAction::Set(args) => args.command(true)?,
            QueuesAction::List => AdminCommand::QueuesList,
            QueuesAction::Remove { name } => AdminCommand::QueuesRemove { name },
        }),
        Command::Routes { action } => run_admin(match action {
            RoutesAction::Set {
                number,
                queue,
                flow,
                hotline,
                mode,
                cutover,
                after_flow,
                after_call_flow,
            } => AdminCommand::RoutesSet {
                number,
                queue,
                flow,
                hotline,
                mode,
                cutover,
                after_flow,
                after_call_flow,
            },
            RoutesAction::Test { number, at } => {
                let at = at.unwrap_or_else(|| {
                    settings.local_now().format("%Y-%m-%d %H:%M:%S").to_string()
                });
                let cmd = AdminCommand::RoutesTest {
                    number,
                    at,
                    prefixes: settings.trunk.normalize.clone(),
                };
                let mut answer = admin::run_command(&data_dir, &realm, cmd)?;
                let loaded = yihaotong::ivr::load(&settings, &settings.queues);
                let live = admin::run_command(&data_dir, &realm, AdminCommand::Status).ok();
                if let Some(flow) = answer.get("flow").and_then(|f| f.as_str()) {
                    let flows = [flow.to_string()];
                    answer["backends"] = backends_up(&loaded.catalog, &settings, &flows, &live);
                }
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            RoutesAction::Remove { number } => AdminCommand::RoutesRemove { number },
            RoutesAction::List => {
                // Each route with the backends its flows hand to (before and
                // after a cut-over) and whether each is up.
                let mut answer = admin::run_command(&data_dir, &realm, AdminCommand::RoutesList)?;
                let loaded = yihaotong::ivr::load(&settings, &settings.queues);
                let live = admin::run_command(&data_dir, &realm, AdminCommand::Status).ok();
                for route in answer.as_array_mut().into_iter().flatten() {
                    let flows: Vec<String> = ["flow", "after_flow"]
                        .iter()
                        .filter_map(|k| route.get(*k).and_then(|f| f.as_str()))
                        .filter(|f| !f.is_empty())
                        .map(String::from)
                        .collect();
                    route["backends"] = backends_up(&loaded.catalog, &settings, &flows, &live);
                }
                return show(answer, Some(admin::tables::View::Routes));
            }
            RoutesAction::Import { file } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                AdminCommand::RoutesImport {
                    name: file.display().to_string(),
                    text,
                }
            }
        }),
        Command::Lists { action } => run_admin(match action {
            ListsAction::Add { list, numbers } => AdminCommand::ListsEdit {
                list,
                numbers,
                add: true,
            },
            ListsAction::Remove { list, numbers } => AdminCommand::ListsEdit {
                list,
                numbers,
                add: false,
            },
            ListsAction::Show { list } => AdminCommand::ListsShow { list },
        }),
        Command::Calls { action } => run_admin(match action {
            CallsAction::List => AdminCommand::CallsList,
            CallsAction::Hangup { id } => AdminCommand::CallsHangup { id },
        }),
        Command::Switch { action } => run_admin(match action {
            SwitchAction::On { name } => AdminCommand::SwitchSet { name, on: true },
            SwitchAction::Off { name } => AdminCommand::SwitchSet { name, on: false },
            SwitchAction::List => AdminCommand::SwitchList,
        }),
        Command::Tokens { action } => run_admin(match action {
            TokensAction::Add { name, role, agent } => {
                AdminCommand::TokensAdd { name, role, agent }
            }
            TokensAction::List => AdminCommand::TokensList,
            TokensAction::Revoke { name } => AdminCommand::TokensRevoke { name },
        }),
    }
}

/// The backends `flows` hand to, from the flow files, each with whether it
/// is up (the running server's probes say; `live` is its status).
fn backends_up(
    catalog: &yihaotong::ivr::Catalog,
    settings: &Settings,
    flows: &[String],
    live: &Option<serde_json::Value>,
) -> serde_json::Value {
    let mut backends: Vec<serde_json::Value> = flows
        .iter()
        .flat_map(|flow| backends_of(catalog, settings, flow))
        .collect();
    for b in &mut backends {
        let name = b["backend"].as_str().unwrap_or_default().to_string();
        b["up"] = match live {
            Some(status) => status["backends"][&name]["up"].clone(),
            None => "unknown: the server is not running".into(),
        };
    }
    serde_json::Value::Array(backends)
}

/// The backends `flow` (and the flows it goes on to) hands calls to, with
/// their URIs from the settings.
fn backends_of(
    catalog: &yihaotong::ivr::Catalog,
    settings: &Settings,
    flow: &str,
) -> Vec<serde_json::Value> {
    use yihaotong::ivr::flow::Action;
    let mut seen = vec![flow.to_string()];
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(name) = seen.get(i).cloned() {
        i += 1;
        let Some(f) = catalog.flows.get(&name) else {
            continue;
        };
        for node in &f.nodes {
            match &node.action {
                Action::Handoff { backend, .. } => out.push(serde_json::json!({
                    "backend": backend,
                    "targets": settings.backends.get(backend).map(|b| {
                        b.target_list().into_iter().map(|t| t.uri).collect::<Vec<_>>()
                    }),
                    "flow": name,
                    "node": node.name,
                })),
                Action::GotoFlow(next) if !seen.contains(next) => seen.push(next.clone()),
                _ => {}
            }
        }
    }
    out
}

fn load(
    opts: yihaotong::load::LoadOptions,
    data_dir: &std::path::Path,
    realm: &str,
) -> anyhow::Result<()> {
    // The accounts `--provision` made, removed again when the run ends.
    let mut provisioned = Vec::new();
    if opts.provision {
        // Never overwrite an account that is there: it may be a real seat.
        let existing = admin::run_command(data_dir, realm, AdminCommand::AgentsList)
            .context("listing agent accounts before provisioning")?;
        let taken: Vec<String> = existing
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["id"].as_str().map(str::to_string))
            .filter(|id| {
                id.parse::<u32>().is_ok_and(|n| {
                    (opts.agent_base..opts.agent_base.saturating_add(opts.agents)).contains(&n)
                })
            })
            .collect();
        if !taken.is_empty() && !opts.reuse_accounts {
            anyhow::bail!(
                "--provision would overwrite existing agent accounts {}: pick another --agent-base, drop --provision to use them as they are, or give --reuse-accounts",
                taken.join(", ")
            );
        }
        for i in 0..opts.agents {
            let id = (opts.agent_base + i).to_string();
            if !taken.contains(&id) {
                provisioned.push(id.clone());
            }
            let cmd = AdminCommand::AgentsAdd {
                id,
                password: opts.password.clone(),
                name: None,
                queues: vec![opts.queue.clone()],
                wrap_up: None,
                auto_login: None,
                supervisor: false,
                dial: None,
            };
            admin::run_command(data_dir, realm, cmd).context("provisioning load agents")?;
        }
    }
    let keep = opts.keep_accounts;
    let outcome = run_load(opts, data_dir, realm);
    if !keep {
        for id in &provisioned {
            if let Err(e) = admin::run_command(
                data_dir,
                realm,
                AdminCommand::AgentsRemove { id: id.clone() },
            ) {
                eprintln!("could not remove load account {id}: {e:#}");
            }
        }
        if !provisioned.is_empty() {
            eprintln!(
                "removed the {} load accounts --provision made",
                provisioned.len()
            );
        }
    }
    outcome
}

fn run_load(
    opts: yihaotong::load::LoadOptions,
    data_dir: &std::path::Path,
    realm: &str,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let json = opts.json.clone();
    let check = opts.check;
    // The server's own accounting, sampled four times a second through its admin
    // socket when it runs on this data folder (else no server figures).
    let sample = {
        let (data_dir, realm) = (data_dir.to_path_buf(), realm.to_string());
        move || {
            admin::run_command(&data_dir, &realm, AdminCommand::Status)
                .ok()
                .and_then(|v| yihaotong::load::Sample::of(&v))
        }
    };
    let before = sample();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = before.map(|_| {
        let (stop, sample) = (stop.clone(), sample.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                samples.extend(sample());
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            samples
        })
    });
    let mut report = runtime.block_on(yihaotong::load::run(opts))?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = sampler.and_then(|t| t.join().ok()).unwrap_or_default();
    if let (Some(before), Some(after)) = (before, sample()) {
        report.server = Some(yihaotong::load::ServerCost::from_samples(
            &before,
            &during,
            &after,
            report.attempted,
        ));
    }
    print!("{}", report.table());
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if check && !report.all_good() {
        anyhow::bail!("load check failed: not every call completed with audio both ways");
    }
    Ok(())
}

/// Graceful stop: new calls get 503 at once; calls in progress may finish
/// for up to `drain_timeout` seconds (a second signal ends the wait). The
/// caller then flushes the store.
async fn drain(shared: &yihaotong::server::Shared, why: &str) {
    use std::sync::atomic::Ordering::Relaxed;
    shared.draining.store(true, Relaxed);
    yihaotong::notify::stopping(&format!(
        "draining: {} calls in progress",
        shared.live_calls.load(Relaxed)
    ));
    let limit = std::time::Duration::from_secs(shared.settings.drain_timeout);
    let started = tokio::time::Instant::now();
    let mut last_report = started;
    tracing::info!(
        signal = why,
        calls = shared.live_calls.load(Relaxed),
        drain_timeout = limit.as_secs(),
        "stopping: new calls refused (503), waiting for calls in progress"
    );
    let mut again = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        let live = shared.live_calls.load(Relaxed);
        if live == 0 {
            return;
        }
        if started.elapsed() >= limit {
            tracing::warn!(
                calls = live,
                "drain_timeout reached; hanging up the calls still up"
            );
            return end_calls(shared).await;
        }
        if last_report.elapsed() >= std::time::Duration::from_secs(5) {
            last_report = tokio::time::Instant::now();
            tracing::info!(
                calls = live,
                left_seconds = (limit.saturating_sub(started.elapsed())).as_secs(),
                "draining"
            );
        }
        let second = async {
            match again.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        let stop_now = tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => false,
            _ = tokio::signal::ctrl_c() => true,
            _ = second => true,
        };
        if stop_now {
            tracing::warn!("second signal; hanging up the calls still up now");
            return end_calls(shared).await;
        }
    }
}

/// The drain's end: every call still up is hung up (both legs get BYE, an
/// unanswered caller 480) and its record written with disposition
/// `drained`, so a stop loses nothing and the next start closes nothing
/// out as crashed. Waits up to 3 s for the calls to finish.
async fn end_calls(shared: &yihaotong::server::Shared) {
    use std::sync::atomic::Ordering::Relaxed;
    shared.drain_cut.store(true, Relaxed);
    let calls = shared.calls.list();
    for call in &calls {
        let hangup = shared
            .calls
            .send(&call.call_id, yihaotong::call::Control::Hangup);
        if tokio::time::timeout(std::time::Duration::from_secs(1), hangup)
            .await
            .is_err()
        {
            tracing::warn!(call_id = %call.call_id, "the call did not answer the drain's hang-up");
        }
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while shared.live_calls.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tracing::info!(
        calls = calls.len(),
        left = shared.live_calls.load(Relaxed),
        "the calls still up at the drain's end were hung up"
    );
}

fn run(settings: Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        yihaotong::meters::install();
        let store = Store::open_waiting(
            &settings.data_dir,
            &yihaotong::store::StoreOptions::of(&settings),
            std::time::Duration::from_secs(10),
        )?;
        let socket = admin::socket_path(&settings.data_dir);
        let realm = settings.sip.domain.clone();
        let server = Server::start(settings, store.clone()).await?;
        let shared = server.shared.clone();
        yihaotong::server::watch_reloads(shared.clone())?;
        let live: admin::LiveFn = std::sync::Arc::new(move |cmd| shared.live(cmd));
        admin::serve(socket.clone(), store.clone(), realm.clone(), live.clone()).await?;
        tracing::info!(sip = %server.local_addr(), "yihaotong ready: SIP on UDP and TCP");
        if let Some(listen) = server.shared.settings.admin.address() {
            let offset = server.shared.settings.ivr.utc_offset_minutes;
            let events = server.shared.records.events().clone();
            let api = yihaotong::api::Api {
                store: store.clone(),
                events,
                realm,
                live,
                utc_offset_minutes: offset,
                calls: server.shared.calls.clone(),
                recordings_dir: server.shared.settings.recordings_dir(),
            };
            let bound = yihaotong::api::serve(listen, api).await?;
            tracing::info!(api = %format!("http://{bound}"), "HTTP API listening");
        }
        yihaotong::notify::ready(&format!("SIP on {}", server.local_addr()));
        let engine = server.shared.engine.stats.clone();
        yihaotong::notify::spawn_watchdog(std::sync::Arc::new(move || {
            engine.ticks.load(std::sync::atomic::Ordering::Relaxed)
        }));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupt",
                _ = term.recv() => "SIGTERM",
            }
        };
        let why = stop.await;
        drain(&server.shared, why).await;
        // Ended calls' bridges close their recordings in the engine threads
        // (within a slot or two); then the writer finishes every file.
        let engine = &server.shared.engine.stats;
        for _ in 0..100 {
            if engine.bridges.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let _ = tokio::task::spawn_blocking(yihaotong::media::recording::settled).await;
        server.shared.records.flush().await;
        store.flush()?;
        // Closed here, not when the last task lets go of it: a clean close
        // spares the next start redb's repair walk.
        store.close();
        let _ = std::fs::remove_file(socket);
        tracing::info!("stopped");
        Ok(())
    })
}

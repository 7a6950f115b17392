//! The IVR: flow files, their checks, and the interpreter that walks a caller
//! through them.
//!
//! Room: the IVR wing. `flow` parses and checks one file; `session` is the
//! sans-IO interpreter; this module loads everything a call needs into one
//! [`Catalog`] (flows, prompts, holiday calendars) that calls share by `Arc`.
//! A reload builds a whole new catalog and swaps it in only if it has no
//! errors; calls in progress keep the one they started with.

pub mod flow;
pub mod session;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use serde::Deserialize;

use crate::config::Settings;
use crate::media::prompts::PromptCache;
use flow::{Diagnostic, Flow, Known};

/// Everything flows need, one consistent version.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Flows by name.
    pub flows: HashMap<String, Arc<Flow>>,
    /// Prompts by name.
    pub prompts: Arc<PromptCache>,
    /// Holiday calendars by name.
    pub calendars: HashMap<String, BTreeSet<NaiveDate>>,
}

/// The result of loading: the catalog of everything that loaded cleanly
/// (flows with errors left out), and every finding. A reload takes it only
/// when there are no errors; a start takes it anyway, so one bad file does
/// not keep the hotline from answering.
#[derive(Debug, Default)]
pub struct Loaded {
    /// What loaded cleanly.
    pub catalog: Catalog,
    /// Errors and warnings, each naming its file (and line and column where known).
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// Number of errors (warnings not counted).
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| !d.warning).count()
    }
}

fn file_error(path: &Path, message: String) -> Diagnostic {
    Diagnostic {
        file: path.display().to_string(),
        line: 1,
        column: 1,
        warning: false,
        message,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CalendarFile {
    #[serde(default)]
    description: String,
    dates: Vec<toml::Spanned<String>>,
}

/// `calendars/NAME.toml`: `dates = ["2026-10-01", …]`.
fn load_calendar(path: &Path, text: &str, out: &mut Vec<Diagnostic>) -> BTreeSet<NaiveDate> {
    let file = path.display().to_string();
    let at = |offset: usize| crate::text::line_col(text, offset);
    let cal: CalendarFile = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            let (line, column) = at(e.span().map_or(0, |s| s.start));
            out.push(Diagnostic {
                file,
                line,
                column,
                warning: false,
                message: e.message().to_string(),
            });
            return BTreeSet::new();
        }
    };
    let _ = cal.description;
    let mut dates = BTreeSet::new();
    for d in cal.dates {
        match d.get_ref().parse::<NaiveDate>() {
            Ok(date) => {
                dates.insert(date);
            }
            Err(_) => {
                let (line, column) = at(d.span().start);
                out.push(Diagnostic {
                    file: file.clone(),
                    line,
                    column,
                    warning: false,
                    message: format!(
                        "field `dates`: {:?} is not a date (write e.g. \"2026-10-01\")",
                        d.get_ref()
                    ),
                });
            }
        }
    }
    dates
}

/// `*.toml` directly in `dir`, sorted, as (stem, path).
fn toml_files(dir: &Path, out: &mut Vec<Diagnostic>) -> Vec<(String, std::path::PathBuf)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            out.push(file_error(dir, format!("cannot read folder: {e}")));
            return Vec::new();
        }
    };
    let mut files: Vec<(String, std::path::PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_string(), p.clone())))
        .collect();
    files.sort();
    files
}

/// The flows a folder holds by name (each `*.toml` file's stem), loaded
/// or not: what routes may name even while a flow has an error of its own.
pub fn flow_file_names(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let path = e.path();
                    (path.extension()? == "toml")
                        .then(|| path.file_stem()?.to_str().map(str::to_string))
                        .flatten()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The queues each flow file under `dir` names (`queue = "…"` in any
/// node), read from the TOML alone: what `queues remove` must not take
/// away, whether or not the flow loads.
pub fn flow_queue_refs(
    dir: &std::path::Path,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    fn walk(v: &toml::Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    match v {
                        toml::Value::String(q) if k == "queue" => {
                            out.insert(q.clone());
                        }
                        v => walk(v, out),
                    }
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut refs = std::collections::BTreeMap::new();
    for name in flow_file_names(dir) {
        let path = dir.join(format!("{name}.toml"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut queues = std::collections::BTreeSet::new();
        if let Ok(v) = text.parse::<toml::Table>() {
            walk(&toml::Value::Table(v), &mut queues);
        }
        refs.insert(name, queues);
    }
    refs
}

/// Loads and checks prompts, calendars and flows as `settings` names them,
/// against the queues in service.
pub fn load(settings: &Settings, queues: &crate::config::Queues) -> Loaded {
    let mut diagnostics = Vec::new();
    let (prompts, prompt_errors) = PromptCache::load(&settings.sounds_dir);
    for e in prompt_errors {
        diagnostics.push(file_error(
            &e.path,
            format!("prompt does not decode: {}", e.reason),
        ));
    }
    let mut calendars = HashMap::new();
    for (name, path) in toml_files(&settings.flows_dir.join("calendars"), &mut diagnostics) {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let dates = load_calendar(&path, &text, &mut diagnostics);
                calendars.insert(name, dates);
            }
            Err(e) => diagnostics.push(file_error(&path, format!("cannot read: {e}"))),
        }
    }
    let files = toml_files(&settings.flows_dir, &mut diagnostics);
    let known = Known {
        prompts: prompts.names().into_iter().collect(),
        queues: queues.keys().cloned().collect(),
        backends: settings.backends.keys().cloned().collect(),
        calendars: calendars.keys().cloned().collect(),
        flows: files.iter().map(|(n, _)| n.clone()).collect(),
        outbound: !settings.trunk.outbound.is_empty(),
    };
    let mut flows = HashMap::new();
    for (name, path) in &files {
        let text = match std::fs::read(path) {
            Ok(bytes) if bytes.len() > flow::MAX_FILE_BYTES => {
                diagnostics.push(file_error(
                    path,
                    format!(
                        "file is {} bytes; the limit is {}",
                        bytes.len(),
                        flow::MAX_FILE_BYTES
                    ),
                ));
                continue;
            }
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => {
                    diagnostics.push(file_error(path, "not UTF-8 text".into()));
                    continue;
                }
            },
            Err(e) => {
                diagnostics.push(file_error(path, format!("cannot read: {e}")));
                continue;
            }
        };
        let (f, found) = flow::parse(name, &path.display().to_string(), &text, &known);
        diagnostics.extend(found);
        if let Some(f) = f {
            flows.insert(name.clone(), Arc::new(f));
        }
    }
    // Queues name prompts and flows too: check them with the catalog.
    let mut setting_error = |message: String| {
        diagnostics.push(Diagnostic {
            file: "settings".into(),
            line: 1,
            column: 1,
            warning: false,
            message,
        })
    };
    if prompts.get(&settings.queue.moh).is_none() {
        setting_error(format!(
            "[queue] moh: prompt `{}` does not exist under {}",
            settings.queue.moh,
            settings.sounds_dir.display()
        ));
    }
    // Queues that announce place or wait need the words for it.
    let announcing = queues
        .values()
        .map(|q| settings.announcements(Some(q)))
        .any(|a| !a.position.is_zero() || !a.wait.is_zero());
    if announcing {
        let mut words: Vec<String> = ["queue/next", "queue/ahead", "queue/callers", "queue/many"]
            .into_iter()
            .chain(["queue/wait", "queue/minutes", "queue/wait-long"])
            .map(String::from)
            .collect();
        words.extend((1..=20).map(|n| format!("number/{n}")));
        for w in words.iter().filter(|w| prompts.get(w).is_none()) {
            setting_error(format!(
                "[queue] announce_position/announce_wait: prompt `{w}` does not exist under {}",
                settings.sounds_dir.display()
            ));
        }
    }
    let offering = queues
        .values()
        .any(|q| !settings.announcements(Some(q)).callback.is_zero());
    if offering {
        for w in ["queue/callback-offer", "queue/callback-booked"] {
            if prompts.get(w).is_none() {
                setting_error(format!(
                    "[queue] callback_after: prompt `{w}` does not exist under {}",
                    settings.sounds_dir.display()
                ));
            }
        }
    }
    let said = &settings.queue.periodic_announce;
    if !said.is_empty() && prompts.get(said).is_none() {
        setting_error(format!(
            "[queue] periodic_announce: prompt `{said}` does not exist under {}",
            settings.sounds_dir.display()
        ));
    }
    for (name, q) in queues {
        let own = q.periodic_announce.as_ref().filter(|p| !p.is_empty());
        if let Some(p) = own.filter(|p| prompts.get(p).is_none()) {
            setting_error(format!(
                "[queues.{name}] periodic_announce: prompt `{p}` does not exist under {}",
                settings.sounds_dir.display()
            ));
        }
        if let Some(moh) = q.moh.as_ref().filter(|m| prompts.get(m).is_none()) {
            setting_error(format!(
                "[queues.{name}] moh: prompt `{moh}` does not exist under {}",
                settings.sounds_dir.display()
            ));
        }
        if let Some(crate::config::Overflow::Flow(f)) = &q.overflow {
            if !flows.contains_key(f) {
                setting_error(format!(
                    "[queues.{name}] overflow: flow `{f}` is not loaded from {}",
                    settings.flows_dir.display()
                ));
            }
        }
        if let Some(f) = q.after_call_flow.as_ref().filter(|f| !f.is_empty()) {
            if !flows.contains_key(f) {
                setting_error(format!(
                    "[queues.{name}] after_call_flow: flow `{f}` is not loaded from {}",
                    settings.flows_dir.display()
                ));
            }
        }
    }
    Loaded {
        catalog: Catalog {
            flows,
            prompts: Arc::new(prompts),
            calendars,
        },
        diagnostics,
    }
}

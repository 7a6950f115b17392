//! Flow files: `ivr-flows/*.toml` read, checked and turned into a [`Flow`].
//!
//! Room: the IVR's drafting table. Pure: text in, a checked flow or a list of
//! [`Diagnostic`]s out, each with `file:line:column`. What a flow refers to
//! outside itself (prompts, queues, backends, calendars, other flows) is
//! checked against a [`Known`] list handed in, so this module reads no
//! files and touches no store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use chrono::{NaiveTime, Weekday};
use serde::Deserialize;
use toml::Spanned;

use crate::text::{is_plain_name, DurationText};

/// Largest flow file accepted.
pub const MAX_FILE_BYTES: usize = 256 * 1024;
/// Most nodes in one flow.
pub const MAX_NODES: usize = 500;
/// Longest digit string a `collect` may ask for.
pub const MAX_COLLECT: u32 = 32;
/// Built-in node names.
pub const HANGUP: &str = "hangup";

/// One finding about a flow file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// File as given (e.g. `ivr-flows/12333.toml`).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// A warning does not stop a flow from loading.
    pub warning: bool,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}{}",
            self.file,
            self.line,
            self.column,
            if self.warning { "warning: " } else { "" },
            self.message
        )
    }
}

/// Names a flow may refer to.
#[derive(Debug, Default, Clone)]
pub struct Known {
    /// Prompt names (`common/invalid`).
    pub prompts: BTreeSet<String>,
    /// Queue names from the settings.
    pub queues: BTreeSet<String>,
    /// Backend names from the settings.
    pub backends: BTreeSet<String>,
    /// Holiday calendars.
    pub calendars: BTreeSet<String>,
    /// Every flow name (for `goto_flow`).
    pub flows: BTreeSet<String>,
    /// Whether plain numbers can be transferred (an outbound gateway is set).
    pub outbound: bool,
}

/// Where a node goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A node of the same flow, by index.
    Node(usize),
    /// The built-in `hangup`.
    Hangup,
}

/// One test inside a `branch` entry; an entry's tests all have to hold.
#[derive(Debug, Clone)]
pub enum Condition {
    /// Local time of day in `[from, to)`; `to` before `from` wraps midnight.
    Time {
        /// Start.
        from: NaiveTime,
        /// End.
        to: NaiveTime,
    },
    /// Local weekday is one of these.
    Weekdays(Vec<Weekday>),
    /// Today is listed in this calendar.
    Dates(String),
    /// The caller's number is in this named list (kept in the database).
    CallerIn(String),
    /// An operator switch (kept in the database) is on.
    Flag(String),
    /// A variable equals a value.
    Equals {
        /// Variable.
        var: String,
        /// Value.
        value: String,
    },
    /// A variable matches a regular expression.
    Matches {
        /// Variable.
        var: String,
        /// Expression (anchored as written).
        regex: regex::Regex,
    },
}

/// What a node does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Play prompts, then go on.
    Play {
        /// Prompt names.
        prompts: Vec<String>,
        /// Next node.
        next: Target,
    },
    /// Play a menu with barge-in and wait for one key.
    Menu {
        /// Prompt names.
        prompts: Vec<String>,
        /// Key → node.
        keys: Vec<(char, Target)>,
        /// Wait after the prompt ends.
        timeout: Duration,
        /// Failures (wrong key or timeout) allowed before `exhausted`.
        retries: u32,
        /// Played after a wrong key.
        invalid: Vec<String>,
        /// Where to go when retries are spent.
        exhausted: Target,
    },
    /// Collect several digits into a variable.
    Collect {
        /// Prompt names.
        prompts: Vec<String>,
        /// Variable.
        into: String,
        /// Fewest digits accepted.
        min_digits: u32,
        /// Most digits; reaching it ends the input.
        max_digits: u32,
        /// Key that ends the input (not stored).
        terminator: Option<char>,
        /// Wait for the first digit after the prompt.
        timeout: Duration,
        /// Wait between digits.
        inter_digit_timeout: Duration,
        /// Failures (too few digits) allowed before `exhausted`.
        retries: u32,
        /// Played after too few digits.
        invalid: Vec<String>,
        /// Where to go when retries are spent.
        exhausted: Target,
        /// Where to go with the digits.
        next: Target,
    },
    /// The first entry whose conditions hold.
    Branch {
        /// Conditions → node.
        when: Vec<(Vec<Condition>, Target)>,
        /// Where to go when none holds.
        otherwise: Target,
    },
    /// Set variables.
    Set {
        /// Name → value.
        vars: Vec<(String, String)>,
        /// Next node.
        next: Target,
    },
    /// Into an agent queue.
    Queue {
        /// Queue name.
        queue: String,
        /// Higher is served first.
        priority: u32,
    },
    /// To a backend system; to `fallback` when it fails.
    Handoff {
        /// Backend name.
        backend: String,
        /// Node to go to when the backend does not take the call.
        fallback: Target,
    },
    /// To a number (via the outbound gateway) or a SIP URI.
    Transfer {
        /// Number or `sip:` URI.
        to: String,
        /// Where to go when the transfer fails.
        fallback: Target,
    },
    /// Start another flow.
    GotoFlow(String),
    /// End the call.
    Hangup,
}

impl Action {
    /// Whether the node waits for the caller's keys.
    pub fn takes_input(&self) -> bool {
        matches!(self, Action::Menu { .. } | Action::Collect { .. })
    }

    fn targets(&self) -> Vec<Target> {
        match self {
            Action::Play { next, .. } | Action::Set { next, .. } => vec![*next],
            Action::Menu {
                keys, exhausted, ..
            } => keys.iter().map(|(_, t)| *t).chain([*exhausted]).collect(),
            Action::Collect {
                next, exhausted, ..
            } => vec![*next, *exhausted],
            Action::Branch { when, otherwise } => {
                when.iter().map(|(_, t)| *t).chain([*otherwise]).collect()
            }
            Action::Handoff { fallback, .. } | Action::Transfer { fallback, .. } => {
                vec![*fallback]
            }
            Action::Queue { .. } | Action::GotoFlow(_) | Action::Hangup => Vec::new(),
        }
    }
}

/// A checked node.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its name.
    pub name: String,
    /// What it does.
    pub action: Action,
    /// Line in the file, for logs.
    pub line: usize,
}

/// A checked flow.
#[derive(Debug, Clone)]
pub struct Flow {
    /// File stem.
    pub name: String,
    /// The file, for logs.
    pub file: String,
    /// What the flow is for.
    pub description: String,
    /// First node.
    pub start: Target,
    /// Where the guards send a call that loops or runs too long.
    pub exhausted: Target,
    /// Nodes by index.
    pub nodes: Vec<Node>,
}

impl Flow {
    /// A node's index by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
}

/// A string or a list of strings (`play = "a"` or `play = ["a", "b"]`).
/// (Not `#[serde(untagged)]`: that buffers the value and loses the spans.)
enum OneOrMany {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a prompt name or a list of prompt names")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut v = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    v.push(item);
                }
                Ok(OneOrMany::Many(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Items of a spanned [`OneOrMany`] with their spans.
fn items(list: &Spanned<OneOrMany>) -> Vec<(String, Range<usize>)> {
    match list.get_ref() {
        OneOrMany::One(s) => vec![(s.clone(), list.span())],
        OneOrMany::Many(v) => v.iter().map(|s| (s.get_ref().clone(), s.span())).collect(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlow {
    #[serde(default)]
    description: String,
    start: Spanned<String>,
    exhausted: Option<Spanned<String>>,
    #[serde(default)]
    nodes: BTreeMap<Spanned<String>, Spanned<RawNode>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNode {
    play: Option<Spanned<OneOrMany>>,
    menu: Option<Spanned<OneOrMany>>,
    collect: Option<Spanned<OneOrMany>>,
    branch: Option<Spanned<Vec<Spanned<RawWhen>>>>,
    set: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
    queue: Option<Spanned<String>>,
    handoff: Option<Spanned<String>>,
    transfer: Option<Spanned<String>>,
    goto_flow: Option<Spanned<String>>,
    hangup: Option<Spanned<bool>>,
    next: Option<Spanned<String>>,
    keys: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
    timeout: Option<Spanned<DurationText>>,
    retries: Option<Spanned<u32>>,
    invalid: Option<Spanned<OneOrMany>>,
    exhausted: Option<Spanned<String>>,
    into: Option<Spanned<String>>,
    min_digits: Option<Spanned<u32>>,
    max_digits: Option<Spanned<u32>>,
    terminator: Option<Spanned<String>>,
    inter_digit_timeout: Option<Spanned<DurationText>>,
    #[serde(rename = "else")]
    otherwise: Option<Spanned<String>>,
    priority: Option<Spanned<u32>>,
    fallback: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWhen {
    time: Option<Spanned<String>>,
    weekdays: Option<Spanned<Vec<Spanned<String>>>>,
    dates: Option<Spanned<String>>,
    caller_in: Option<Spanned<String>>,
    flag: Option<Spanned<String>>,
    var: Option<Spanned<String>>,
    equals: Option<Spanned<String>>,
    matches: Option<Spanned<String>>,
    goto: Spanned<String>,
}

/// Collects diagnostics with positions.
struct Report<'a> {
    text: &'a str,
    file: &'a str,
    found: Vec<Diagnostic>,
}

impl Report<'_> {
    fn at(&mut self, span: Range<usize>, warning: bool, message: String) {
        let (line, column) = crate::text::line_col(self.text, span.start);
        self.found.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            warning,
            message,
        });
    }

    fn error(&mut self, span: Range<usize>, message: String) {
        self.at(span, false, message);
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        crate::text::line_col(self.text, span.start).0
    }
}

/// A flow's wait (a menu's or a collect's timeout): as every duration is
/// written ([`crate::text::parse_duration`]: `5`, `"5s"`, `"500ms"`,
/// `"2m"`), from 1 ms to 60 minutes.
pub fn flow_duration(d: &DurationText) -> Result<Duration, String> {
    let parsed = d.duration()?;
    if parsed.is_zero() || parsed > Duration::from_secs(3600) {
        return Err(format!("{d} must be between 1ms and 60m"));
    }
    Ok(parsed)
}

fn is_key(c: char) -> bool {
    c.is_ascii_digit() || c == '*' || c == '#'
}

/// Parses and checks one flow file. `name` is the file stem, `file` the path
/// for messages. Returns the flow (if it has no errors) and every finding.
pub fn parse(name: &str, file: &str, text: &str, known: &Known) -> (Option<Flow>, Vec<Diagnostic>) {
    let mut report = Report {
        text,
        file,
        found: Vec::new(),
    };
    if text.len() > MAX_FILE_BYTES {
        report.error(
            0..0,
            format!(
                "file is {} bytes; the limit is {MAX_FILE_BYTES}",
                text.len()
            ),
        );
        return (None, report.found);
    }
    if !is_plain_name(name) {
        report.error(
            0..0,
            "a flow's file name must be a plain name (letters, digits, - and _)".into(),
        );
    }
    let raw: RawFlow = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            report.error(e.span().unwrap_or(0..0), e.message().to_string());
            return (None, report.found);
        }
    };
    if raw.nodes.len() > MAX_NODES {
        report.error(
            0..0,
            format!("{} nodes; the limit is {MAX_NODES}", raw.nodes.len()),
        );
        return (None, report.found);
    }
    let names: Vec<String> = raw.nodes.keys().map(|k| k.get_ref().clone()).collect();
    for key in raw.nodes.keys() {
        if key.get_ref() == HANGUP {
            report.error(
                key.span(),
                "`hangup` is a built-in node name; choose another".into(),
            );
        } else if !is_plain_name(key.get_ref()) {
            report.error(
                key.span(),
                format!(
                    "node name {:?}: use letters, digits, - and _",
                    key.get_ref()
                ),
            );
        }
    }
    let resolve = |report: &mut Report, s: &Spanned<String>, what: &str| -> Target {
        let n = s.get_ref();
        if n == HANGUP {
            return Target::Hangup;
        }
        match names.iter().position(|x| x == n) {
            Some(i) => Target::Node(i),
            None => {
                report.error(s.span(), format!("{what}: unknown node `{n}`"));
                Target::Hangup
            }
        }
    };
    let start = resolve(&mut report, &raw.start, "start");
    let exhausted = raw
        .exhausted
        .as_ref()
        .map_or(Target::Hangup, |e| resolve(&mut report, e, "exhausted"));
    let mut nodes = Vec::with_capacity(names.len());
    for (key, node) in &raw.nodes {
        let ctx = NodeCtx {
            name: key.get_ref(),
            span: key.span(),
            known,
        };
        let action = ctx.action(&mut report, node.get_ref(), &|r, s, w| resolve(r, s, w));
        let line = report.line_of(&key.span());
        nodes.push(Node {
            name: key.get_ref().clone(),
            action,
            line,
        });
    }
    let flow = Flow {
        name: name.to_string(),
        file: file.to_string(),
        description: raw.description.clone(),
        start,
        exhausted,
        nodes,
    };
    graph_checks(&flow, &raw, &mut report);
    report.found.sort_by_key(|d| (d.line, d.column, d.warning));
    let ok = !report.found.iter().any(|d| !d.warning);
    (ok.then_some(flow), report.found)
}

type Resolver<'r> = dyn Fn(&mut Report, &Spanned<String>, &str) -> Target + 'r;

struct NodeCtx<'k> {
    name: &'k str,
    span: Range<usize>,
    known: &'k Known,
}

impl NodeCtx<'_> {
    fn action(&self, r: &mut Report, n: &RawNode, resolve: &Resolver) -> Action {
        let present: Vec<&str> = [
            ("play", n.play.is_some()),
            ("menu", n.menu.is_some()),
            ("collect", n.collect.is_some()),
            ("branch", n.branch.is_some()),
            ("set", n.set.is_some()),
            ("queue", n.queue.is_some()),
            ("handoff", n.handoff.is_some()),
            ("transfer", n.transfer.is_some()),
            ("goto_flow", n.goto_flow.is_some()),
            ("hangup", n.hangup.is_some()),
        ]
        .iter()
        .filter(|(_, p)| *p)
        .map(|(k, _)| *k)
        .collect();
        let node = self.name;
        if present.len() != 1 {
            let msg = if present.is_empty() {
                format!("node `{node}` has no action: give it one of play, menu, collect, branch, set, queue, handoff, transfer, goto_flow, hangup")
            } else {
                format!(
                    "node `{node}` has {} actions ({}); a node does exactly one thing",
                    present.len(),
                    present.join(", ")
                )
            };
            r.error(self.span.clone(), msg);
            return Action::Hangup;
        }
        let kind = present[0];
        // Fields each action may carry besides its own key.
        let allowed: &[&str] = match kind {
            "play" | "set" => &["next"],
            "menu" => &["keys", "timeout", "retries", "invalid", "exhausted"],
            "collect" => &[
                "into",
                "min_digits",
                "max_digits",
                "terminator",
                "timeout",
                "inter_digit_timeout",
                "retries",
                "invalid",
                "exhausted",
                "next",
            ],
            "branch" => &["else"],
            "queue" => &["priority"],
            "handoff" | "transfer" => &["fallback"],
            _ => &[],
        };
        let extras: [(&str, Option<Range<usize>>); 14] = [
            ("next", n.next.as_ref().map(|s| s.span())),
            ("keys", n.keys.as_ref().map(|s| s.span())),
            ("timeout", n.timeout.as_ref().map(|s| s.span())),
            ("retries", n.retries.as_ref().map(|s| s.span())),
            ("invalid", n.invalid.as_ref().map(|s| s.span())),
            ("exhausted", n.exhausted.as_ref().map(|s| s.span())),
            ("into", n.into.as_ref().map(|s| s.span())),
            ("min_digits", n.min_digits.as_ref().map(|s| s.span())),
            ("max_digits", n.max_digits.as_ref().map(|s| s.span())),
            ("terminator", n.terminator.as_ref().map(|s| s.span())),
            (
                "inter_digit_timeout",
                n.inter_digit_timeout.as_ref().map(|s| s.span()),
            ),
            ("else", n.otherwise.as_ref().map(|s| s.span())),
            ("priority", n.priority.as_ref().map(|s| s.span())),
            ("fallback", n.fallback.as_ref().map(|s| s.span())),
        ];
        for (field, span) in extras {
            if let Some(span) = span {
                if !allowed.contains(&field) {
                    r.error(
                        span,
                        format!(
                            "node `{node}`: field `{field}` does not belong to a `{kind}` node"
                        ),
                    );
                }
            }
        }
        let required = |r: &mut Report, f: &Option<Spanned<String>>, field: &str| -> Target {
            match f {
                Some(s) => resolve(r, s, &format!("node `{node}`: field `{field}`")),
                None => {
                    r.error(
                        self.span.clone(),
                        format!("node `{node}`: a `{kind}` node needs `{field}`"),
                    );
                    Target::Hangup
                }
            }
        };
        let optional = |r: &mut Report, f: &Option<Spanned<String>>, field: &str| -> Target {
            f.as_ref().map_or(Target::Hangup, |s| {
                resolve(r, s, &format!("node `{node}`: field `{field}`"))
            })
        };
        let duration = |r: &mut Report,
                        f: &Option<Spanned<DurationText>>,
                        field: &str,
                        default: u64| match f {
            None => Duration::from_secs(default),
            Some(s) => flow_duration(s.get_ref()).unwrap_or_else(|e| {
                r.error(s.span(), format!("node `{node}`: field `{field}`: {e}"));
                Duration::from_secs(default)
            }),
        };
        match kind {
            "play" => Action::Play {
                prompts: self.prompts(r, n.play.as_ref(), "play"),
                next: required(r, &n.next, "next"),
            },
            "menu" => {
                let mut keys = Vec::new();
                if let Some(k) = &n.keys {
                    for (key, target) in k.get_ref() {
                        let mut chars = key.get_ref().chars();
                        match (chars.next(), chars.next()) {
                            (Some(c), None) if is_key(c) => keys.push((
                                c,
                                resolve(r, target, &format!("node `{node}`: key \"{c}\"")),
                            )),
                            _ => r.error(
                                key.span(),
                                format!(
                                    "node `{node}`: key {:?} must be one of 0-9, * or #",
                                    key.get_ref()
                                ),
                            ),
                        }
                    }
                }
                if keys.is_empty() {
                    r.error(
                        n.keys.as_ref().map_or(self.span.clone(), |k| k.span()),
                        format!("node `{node}`: a menu needs `keys` with at least one key"),
                    );
                }
                Action::Menu {
                    prompts: self.prompts(r, n.menu.as_ref(), "menu"),
                    keys,
                    timeout: duration(r, &n.timeout, "timeout", 5),
                    retries: self.retries(r, n),
                    invalid: self.prompts(r, n.invalid.as_ref(), "invalid"),
                    exhausted: optional(r, &n.exhausted, "exhausted"),
                }
            }
            "collect" => {
                let into = match &n.into {
                    Some(v) if is_plain_name(v.get_ref()) => v.get_ref().clone(),
                    Some(v) => {
                        r.error(
                            v.span(),
                            format!(
                                "node `{node}`: field `into`: {:?} is not a plain variable name",
                                v.get_ref()
                            ),
                        );
                        String::new()
                    }
                    None => {
                        r.error(
                            self.span.clone(),
                            format!("node `{node}`: a `collect` node needs `into`"),
                        );
                        String::new()
                    }
                };
                let min = n.min_digits.as_ref().map_or(1, |s| *s.get_ref());
                let max = n.max_digits.as_ref().map_or(MAX_COLLECT, |s| *s.get_ref());
                if max == 0 || max > MAX_COLLECT || min > max {
                    let span = n
                        .max_digits
                        .as_ref()
                        .or(n.min_digits.as_ref())
                        .map_or(self.span.clone(), |s| s.span());
                    r.error(
                        span,
                        format!("node `{node}`: need 0 <= min_digits <= max_digits <= {MAX_COLLECT} and max_digits >= 1 (got {min}..{max})"),
                    );
                }
                let terminator = match &n.terminator {
                    None => Some('#'),
                    Some(t) if t.get_ref().is_empty() => None,
                    Some(t) => {
                        let mut c = t.get_ref().chars();
                        match (c.next(), c.next()) {
                            (Some(k), None) if is_key(k) => Some(k),
                            _ => {
                                r.error(
                                    t.span(),
                                    format!("node `{node}`: field `terminator`: {:?} must be one key (usually \"#\") or \"\"", t.get_ref()),
                                );
                                None
                            }
                        }
                    }
                };
                Action::Collect {
                    prompts: self.prompts(r, n.collect.as_ref(), "collect"),
                    into,
                    min_digits: min,
                    max_digits: max,
                    terminator,
                    timeout: duration(r, &n.timeout, "timeout", 5),
                    inter_digit_timeout: duration(
                        r,
                        &n.inter_digit_timeout,
                        "inter_digit_timeout",
                        3,
                    ),
                    retries: self.retries(r, n),
                    invalid: self.prompts(r, n.invalid.as_ref(), "invalid"),
                    exhausted: optional(r, &n.exhausted, "exhausted"),
                    next: required(r, &n.next, "next"),
                }
            }
            "branch" => {
                let mut when = Vec::new();
                if let Some(b) = &n.branch {
                    for entry in b.get_ref() {
                        let conds = self.conditions(r, entry);
                        let target = resolve(
                            r,
                            &entry.get_ref().goto,
                            &format!("node `{node}`: field `goto`"),
                        );
                        when.push((conds, target));
                    }
                }
                Action::Branch {
                    when,
                    otherwise: required(r, &n.otherwise, "else"),
                }
            }
            "set" => {
                let mut vars = Vec::new();
                if let Some(s) = &n.set {
                    for (k, v) in s.get_ref() {
                        if !is_plain_name(k.get_ref()) {
                            r.error(
                                k.span(),
                                format!(
                                    "node `{node}`: variable {:?} must be a plain name",
                                    k.get_ref()
                                ),
                            );
                        } else if v.get_ref().len() > 256
                            || v.get_ref().chars().any(|c| c.is_control())
                        {
                            r.error(v.span(), format!("node `{node}`: the value of `{}` must be one line of at most 256 bytes", k.get_ref()));
                        } else {
                            vars.push((k.get_ref().clone(), v.get_ref().clone()));
                        }
                    }
                }
                Action::Set {
                    vars,
                    next: required(r, &n.next, "next"),
                }
            }
            "queue" => {
                let q = n.queue.as_ref().map(|q| (q.get_ref().clone(), q.span()));
                let (queue, span) = q.unwrap_or_default();
                if !self.known.queues.contains(&queue) {
                    r.error(
                        span,
                        format!(
                            "node `{node}`: queue `{queue}` does not exist (known: {})",
                            list(&self.known.queues)
                        ),
                    );
                }
                if let Some(p) = n.priority.as_ref().filter(|p| *p.get_ref() > 2) {
                    r.error(
                        p.span(),
                        format!(
                            "node `{node}`: priority {} is not 0 (normal), 1 (priority) or 2 (emergency)",
                            p.get_ref()
                        ),
                    );
                }
                Action::Queue {
                    queue,
                    priority: n.priority.as_ref().map_or(0, |p| *p.get_ref()),
                }
            }
            "handoff" => {
                let (backend, span) = n
                    .handoff
                    .as_ref()
                    .map(|q| (q.get_ref().clone(), q.span()))
                    .unwrap_or_default();
                if !self.known.backends.contains(&backend) {
                    r.error(
                        span,
                        format!(
                            "node `{node}`: backend `{backend}` does not exist (known: {})",
                            list(&self.known.backends)
                        ),
                    );
                }
                Action::Handoff {
                    backend,
                    fallback: required(r, &n.fallback, "fallback"),
                }
            }
            "transfer" => {
                let (to, span) = n
                    .transfer
                    .as_ref()
                    .map(|q| (q.get_ref().clone(), q.span()))
                    .unwrap_or_default();
                let number =
                    !to.is_empty() && to.len() <= 32 && to.chars().all(|c| c.is_ascii_digit());
                let uri = crate::sip::SipTarget::parse(&to).is_some();
                if !number && !uri {
                    r.error(
                        span,
                        format!("node `{node}`: transfer target {to:?} must be digits or a sip: URI with an IP address"),
                    );
                } else if number && !self.known.outbound {
                    r.error(
                        span,
                        format!("node `{node}`: transfer to the number {to} needs an outbound gateway ([trunk] outbound)"),
                    );
                }
                Action::Transfer {
                    to,
                    fallback: optional(r, &n.fallback, "fallback"),
                }
            }
            "goto_flow" => {
                let (flow, span) = n
                    .goto_flow
                    .as_ref()
                    .map(|q| (q.get_ref().clone(), q.span()))
                    .unwrap_or_default();
                if !self.known.flows.contains(&flow) {
                    r.error(
                        span,
                        format!(
                            "node `{node}`: flow `{flow}` does not exist (known: {})",
                            list(&self.known.flows)
                        ),
                    );
                }
                Action::GotoFlow(flow)
            }
            _ => {
                if let Some(h) = &n.hangup {
                    if !*h.get_ref() {
                        r.error(
                            h.span(),
                            format!("node `{node}`: write `hangup = true` (false means nothing)"),
                        );
                    }
                }
                Action::Hangup
            }
        }
    }

    fn prompts(
        &self,
        r: &mut Report,
        list: Option<&Spanned<OneOrMany>>,
        field: &str,
    ) -> Vec<String> {
        let Some(list) = list else { return Vec::new() };
        let items = items(list);
        if items.is_empty() && field != "invalid" {
            r.error(
                list.span(),
                format!(
                    "node `{}`: field `{field}`: name at least one prompt",
                    self.name
                ),
            );
        }
        let mut out = Vec::new();
        for (p, span) in items {
            if self.known.prompts.contains(&p)
                || crate::media::prompts::silence_frames(&p).is_some()
            {
                out.push(p);
            } else if p.starts_with(crate::media::prompts::SILENCE) {
                r.error(
                    span,
                    format!(
                        "node `{}`: field `{field}`: `{p}`: silence is written silence/500ms or silence/2s (1 ms to 60 s)",
                        self.name,
                    ),
                );
            } else {
                r.error(
                    span,
                    format!(
                        "node `{}`: field `{field}`: unknown prompt `{p}` (no sounds/{p}.wav/.mp3/.flac/.ogg)",
                        self.name,
                    ),
                );
            }
        }
        out
    }

    fn retries(&self, r: &mut Report, n: &RawNode) -> u32 {
        match &n.retries {
            None => 3,
            Some(v) if *v.get_ref() <= 20 => *v.get_ref(),
            Some(v) => {
                r.error(
                    v.span(),
                    format!("node `{}`: field `retries`: at most 20", self.name),
                );
                3
            }
        }
    }

    fn conditions(&self, r: &mut Report, entry: &Spanned<RawWhen>) -> Vec<Condition> {
        let w = entry.get_ref();
        let node = self.name;
        let mut out = Vec::new();
        let given = [
            w.time.is_some(),
            w.weekdays.is_some(),
            w.dates.is_some(),
            w.caller_in.is_some(),
            w.flag.is_some(),
            w.var.is_some(),
            w.equals.is_some(),
            w.matches.is_some(),
        ];
        if let Some(t) = &w.time {
            match parse_time_range(t.get_ref()) {
                Ok((from, to)) => out.push(Condition::Time { from, to }),
                Err(e) => r.error(t.span(), format!("node `{node}`: field `time`: {e}")),
            }
        }
        if let Some(days) = &w.weekdays {
            let mut v = Vec::new();
            for d in days.get_ref() {
                match d.get_ref().parse::<Weekday>() {
                    Ok(day) => v.push(day),
                    Err(_) => r.error(
                        d.span(),
                        format!("node `{node}`: field `weekdays`: {:?} is not a weekday (mon, tue, … sun)", d.get_ref()),
                    ),
                }
            }
            out.push(Condition::Weekdays(v));
        }
        if let Some(c) = &w.dates {
            if self.known.calendars.contains(c.get_ref()) {
                out.push(Condition::Dates(c.get_ref().clone()));
            } else {
                r.error(
                    c.span(),
                    format!(
                        "node `{node}`: field `dates`: calendar `{}` does not exist (known: {})",
                        c.get_ref(),
                        list(&self.known.calendars)
                    ),
                );
            }
        }
        for (field, value, make) in [
            (
                "caller_in",
                &w.caller_in,
                Condition::CallerIn as fn(String) -> Condition,
            ),
            ("flag", &w.flag, Condition::Flag as fn(String) -> Condition),
        ] {
            if let Some(v) = value {
                if is_plain_name(v.get_ref()) {
                    out.push(make(v.get_ref().clone()));
                } else {
                    r.error(
                        v.span(),
                        format!(
                            "node `{node}`: field `{field}`: {:?} is not a plain name",
                            v.get_ref()
                        ),
                    );
                }
            }
        }
        match (&w.var, &w.equals, &w.matches) {
            (None, None, None) => {}
            (Some(var), Some(value), None) => out.push(Condition::Equals {
                var: var.get_ref().clone(),
                value: value.get_ref().clone(),
            }),
            (Some(var), None, Some(re)) => {
                match regex::RegexBuilder::new(re.get_ref())
                    .size_limit(1 << 16)
                    .build()
                {
                    Ok(regex) => out.push(Condition::Matches {
                        var: var.get_ref().clone(),
                        regex,
                    }),
                    Err(e) => r.error(
                        re.span(),
                        format!(
                            "node `{node}`: field `matches`: bad regular expression: {}",
                            e.to_string().lines().last().unwrap_or("")
                        ),
                    ),
                }
            }
            (Some(var), _, _) => r.error(
                var.span(),
                format!("node `{node}`: field `var` needs exactly one of `equals` or `matches`"),
            ),
            (None, Some(s), _) | (None, None, Some(s)) => r.error(
                s.span(),
                format!("node `{node}`: `equals`/`matches` need `var`"),
            ),
        }
        if !given.contains(&true) {
            r.error(
                entry.span(),
                format!("node `{node}`: a `branch` entry needs a condition (time, weekdays, dates, caller_in, flag, var); use `else` for the default"),
            );
        }
        out
    }
}

fn list(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "none".into()
    } else {
        set.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// `08:00-20:00` (to before from wraps past midnight).
fn parse_time_range(s: &str) -> Result<(NaiveTime, NaiveTime), String> {
    let bad = || format!("{s:?} is not a time range (write e.g. \"08:00-20:00\")");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let t = |x: &str| NaiveTime::parse_from_str(x.trim(), "%H:%M").map_err(|_| bad());
    let (from, to) = (t(a)?, t(b)?);
    if from == to {
        return Err(format!("{s:?} is empty"));
    }
    Ok((from, to))
}

/// Unreachable nodes (warnings) and cycles that take no input (errors).
fn graph_checks(flow: &Flow, raw: &RawFlow, r: &mut Report) {
    let spans: Vec<Range<usize>> = raw.nodes.keys().map(|k| k.span()).collect();
    let n = flow.nodes.len();
    let mut reached = vec![false; n];
    let mut stack: Vec<usize> = Vec::new();
    for t in [flow.start, flow.exhausted] {
        if let Target::Node(i) = t {
            stack.push(i);
        }
    }
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut reached[i], true) {
            continue;
        }
        for t in flow.nodes[i].action.targets() {
            if let Target::Node(j) = t {
                stack.push(j);
            }
        }
    }
    for (i, node) in flow.nodes.iter().enumerate() {
        if !reached[i] {
            r.at(
                spans[i].clone(),
                true,
                format!("node `{}` is unreachable from `start`", node.name),
            );
        }
    }
    // A cycle through nodes that never wait for a key would spin forever.
    // Colour-marking DFS over the edges between input-less nodes.
    let mut colour = vec![0u8; n]; // 0 new, 1 on stack, 2 done
    let mut reported: HashMap<usize, ()> = HashMap::new();
    for root in 0..n {
        if colour[root] != 0 || flow.nodes[root].action.takes_input() {
            continue;
        }
        let mut path: Vec<(usize, Vec<usize>)> = vec![(root, next_silent(flow, root))];
        colour[root] = 1;
        while let Some((node, rest)) = path.last_mut() {
            let node = *node;
            if let Some(j) = rest.pop() {
                match colour[j] {
                    0 => {
                        colour[j] = 1;
                        let next = next_silent(flow, j);
                        path.push((j, next));
                    }
                    1 if reported.insert(j, ()).is_none() => {
                        let start = path.iter().position(|(x, _)| *x == j).unwrap_or(0);
                        let cycle: Vec<&str> = path[start..]
                            .iter()
                            .map(|(x, _)| flow.nodes[*x].name.as_str())
                            .chain([flow.nodes[j].name.as_str()])
                            .collect();
                        r.error(
                            spans[j].clone(),
                            format!(
                                "cycle with no input: {} (a caller would loop forever; put a menu or collect in it)",
                                cycle.join(" → ")
                            ),
                        );
                    }
                    _ => {}
                }
            } else {
                colour[node] = 2;
                path.pop();
            }
        }
    }
}

fn next_silent(flow: &Flow, i: usize) -> Vec<usize> {
    flow.nodes[i]
        .action
        .targets()
        .into_iter()
        .filter_map(|t| match t {
            Target::Node(j) if !flow.nodes[j].action.takes_input() => Some(j),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Known {
        Known {
            prompts: [
                "hrss/welcome",
                "hrss/menu",
                "common/invalid",
                "common/closed",
            ]
            .map(String::from)
            .into(),
            queues: ["hrss".to_string()].into(),
            backends: ["hrss".to_string()].into(),
            calendars: ["holidays".to_string()].into(),
            flows: ["other".to_string()].into(),
            outbound: false,
        }
    }

    const GOOD: &str = r#"
description = "Social insurance"
start = "welcome"

[nodes.welcome]
play = ["hrss/welcome"]
next = "menu"

[nodes.menu]
menu = "hrss/menu"
keys = { "1" = "self-service", "0" = "seats", "*" = "menu" }
timeout = "5s"
retries = 3
invalid = "common/invalid"
exhausted = "seats"

[nodes.self-service]
handoff = "hrss"
fallback = "seats"

[nodes.seats]
queue = "hrss"
"#;

    fn errors(text: &str) -> Vec<String> {
        parse("t", "t.toml", text, &known())
            .1
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn the_issue_example_loads() {
        let (flow, diags) = parse("hrss", "hrss.toml", GOOD, &known());
        assert!(diags.is_empty(), "{diags:?}");
        let flow = flow.expect("flow");
        assert_eq!(flow.nodes.len(), 4);
        let menu = &flow.nodes[flow.index("menu").expect("menu")];
        let Action::Menu { keys, timeout, .. } = &menu.action else {
            panic!("menu")
        };
        assert_eq!(keys.len(), 3);
        assert_eq!(*timeout, Duration::from_secs(5));
    }

    #[test]
    fn unknown_node_is_located() {
        let text = GOOD.replace("fallback = \"seats\"", "fallback = \"seets\"");
        assert_eq!(
            errors(&text),
            ["t.toml:19:12: node `self-service`: field `fallback`: unknown node `seets`"]
        );
    }

    #[test]
    fn unknown_prompt_is_located() {
        let text = GOOD.replace("[\"hrss/welcome\"]", "[\"hrss/welcom\"]");
        assert_eq!(
            errors(&text),
            ["t.toml:6:9: node `welcome`: field `play`: unknown prompt `hrss/welcom` (no sounds/hrss/welcom.wav/.mp3/.flac/.ogg)"]
        );
    }

    #[test]
    fn two_actions_or_none() {
        let text = GOOD.replace("queue = \"hrss\"", "queue = \"hrss\"\nhangup = true");
        assert_eq!(
            errors(&text),
            ["t.toml:21:8: node `seats` has 2 actions (queue, hangup); a node does exactly one thing"]
        );
        let text = GOOD.replace("queue = \"hrss\"", "");
        assert_eq!(
            errors(&text),
            ["t.toml:21:8: node `seats` has no action: give it one of play, menu, collect, branch, set, queue, handoff, transfer, goto_flow, hangup"]
        );
    }

    #[test]
    fn bad_duration_queue_backend() {
        let text = GOOD
            .replace("\"5s\"", "\"5 seconds\"")
            .replace("queue = \"hrss\"", "queue = \"hrs\"")
            .replace("handoff = \"hrss\"", "handoff = \"12333\"");
        assert_eq!(
            errors(&text),
            [
                "t.toml:12:11: node `menu`: field `timeout`: \"5 seconds\" is not a duration: write 15 (seconds), \"500ms\", \"15s\", \"2m\" or \"1h\"",
                "t.toml:18:11: node `self-service`: backend `12333` does not exist (known: hrss)",
                "t.toml:22:9: node `seats`: queue `hrs` does not exist (known: hrss)",
            ]
        );
    }

    #[test]
    fn unreachable_is_a_warning_and_still_loads() {
        let text = format!("{GOOD}\n[nodes.closed]\nplay = \"common/closed\"\nnext = \"hangup\"\n");
        let (flow, diags) = parse("t", "t.toml", &text, &known());
        assert!(flow.is_some());
        assert_eq!(
            diags.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            ["t.toml:24:8: warning: node `closed` is unreachable from `start`"]
        );
    }

    #[test]
    fn cycle_without_input_is_an_error() {
        let text = r#"
start = "a"
[nodes.a]
play = "common/closed"
next = "b"
[nodes.b]
set = { x = "1" }
next = "a"
"#;
        let e = errors(text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:3:8: cycle with no input: a → b → a"),
            "{e:?}"
        );
        // The same loop through a menu is fine: the caller is asked each time.
        let text = GOOD.replace("\"*\" = \"menu\"", "\"*\" = \"welcome\"");
        assert!(errors(&text).is_empty());
    }

    #[test]
    fn fields_must_belong_to_their_action() {
        let text = GOOD.replace(
            "next = \"menu\"",
            "next = \"menu\"\nkeys = { \"1\" = \"seats\" }",
        );
        assert_eq!(
            errors(&text),
            ["t.toml:8:8: node `welcome`: field `keys` does not belong to a `play` node"]
        );
    }

    #[test]
    fn syntax_and_unknown_fields_are_located() {
        let e = errors("start = \"a\"\n[nodes.a]\nplya = \"x\"\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("t.toml:3:1: unknown field `plya`"),
            "{e:?}"
        );
        let e = errors("start = \n");
        assert!(e[0].starts_with("t.toml:1:"), "{e:?}");
    }

    #[test]
    fn branch_conditions() {
        let text = r#"
start = "hours"
[nodes.hours]
branch = [
  { time = "08:00-20:00", weekdays = ["mon", "tue"], goto = "seats" },
  { dates = "holidays", goto = "closed" },
  { var = "id", matches = "^[0-9]{18}$", goto = "seats" },
  { caller_in = "elderly", goto = "seats" },
  { flag = "urgent-notice", goto = "closed" },
]
else = "closed"
[nodes.closed]
play = "common/closed"
next = "hangup"
[nodes.seats]
queue = "hrss"
"#;
        assert!(errors(text).is_empty(), "{:?}", errors(text));
        let bad = text
            .replace("08:00-20:00", "8h-20h")
            .replace("\"tue\"", "\"tues\"")
            .replace("[0-9]{18}$", "[0-9")
            .replace("holidays", "feasts");
        let e = errors(&bad);
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].contains("field `time`: \"8h-20h\" is not a time range"));
        assert!(e[1].contains("\"tues\" is not a weekday"));
        assert!(e[2].contains("calendar `feasts` does not exist"));
        assert!(e[3].contains("bad regular expression"));
    }

    #[test]
    fn collect_and_transfer() {
        let text = r#"
start = "id"
[nodes.id]
collect = "hrss/menu"
into = "id"
min_digits = 4
max_digits = 2
next = "police"
[nodes.police]
transfer = "110"
"#;
        let e = errors(text);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:7:14: node `id`: need 0 <= min_digits"),
            "{e:?}"
        );
        assert!(e[1].contains("needs an outbound gateway"), "{e:?}");
    }

    #[test]
    fn silence_is_a_prompt() {
        let text = GOOD.replace(
            "[\"hrss/welcome\"]",
            "[\"silence/300ms\", \"hrss/welcome\"]",
        );
        assert!(errors(&text).is_empty(), "{:?}", errors(&text));
        let text = GOOD.replace("[\"hrss/welcome\"]", "[\"silence/forever\"]");
        assert_eq!(
            errors(&text),
            ["t.toml:6:9: node `welcome`: field `play`: `silence/forever`: silence is written silence/500ms or silence/2s (1 ms to 60 s)"]
        );
    }

    #[test]
    fn durations() {
        let text = |t: &str| DurationText::Text(t.into());
        assert_eq!(
            flow_duration(&text("500ms")),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(flow_duration(&text("2m")), Ok(Duration::from_secs(120)));
        assert_eq!(
            flow_duration(&DurationText::Seconds(5)),
            Ok(Duration::from_secs(5)),
            "an integer is seconds, as in the settings"
        );
        assert!(flow_duration(&text("0s")).is_err());
        assert!(flow_duration(&DurationText::Seconds(7200)).is_err());
        assert!(flow_duration(&text("99999999999999999999s")).is_err());
        assert!(flow_duration(&text("5")).is_err());
    }
}

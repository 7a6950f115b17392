//! The flow interpreter: one caller's walk through a flow, as a state machine.
//!
//! Room: the IVR's brain, sans-IO. It takes [`Input`]s (the call started, a
//! prompt finished, a key, a timer, a hand-off failed) and returns
//! [`Effect`]s (play these prompts, start a timer, queue the call, hang up).
//! It owns no socket and no clock: the call task plays, times and routes, and
//! tests drive it with plain values. What it needs from the world (local
//! time, named caller lists, operator switches) comes through [`Facts`].
//!
//! Guards: at most `max_steps` node steps per call, and a bound on steps
//! without any input from the caller; either sends the call to its flow's
//! `exhausted` node once, then hangs up. A flow version is fixed for the
//! call's life (the session holds its catalog by `Arc`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{Datelike, NaiveDateTime};

use super::flow::{Action, Condition, Flow, Target};
use super::Catalog;

/// What the interpreter needs to know about the world.
pub trait Facts {
    /// Local date and time.
    fn now(&self) -> NaiveDateTime;
    /// Whether `number` is in the named caller list.
    fn in_list(&self, list: &str, number: &str) -> bool;
    /// Whether an operator switch is on.
    fn flag(&self, name: &str) -> bool;
}

/// Something that happened to the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The caller is connected: run the flow.
    Start,
    /// A play request finished (or was stopped).
    PlayDone(u64),
    /// The caller pressed a key (RFC 4733, SIP INFO or in-band).
    Digit(char),
    /// A timer fired.
    Timer(u64),
    /// The hand-off or transfer the session asked for did not take the call.
    Failed,
}

/// What the call must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Play prompts in order; report [`Input::PlayDone`] with `id`. With
    /// `barge_in` the media engine stops the prompt at the first key.
    Play {
        /// Play id.
        id: u64,
        /// Prompt names.
        prompts: Vec<String>,
        /// Whether a key stops it.
        barge_in: bool,
    },
    /// Stop whatever is playing (a key came by SIP INFO).
    Stop,
    /// Report [`Input::Timer`] with `id` after `after`; replaces any earlier timer.
    Timer {
        /// Timer id.
        id: u64,
        /// Delay.
        after: Duration,
    },
    /// Queue the call for an agent.
    Queue {
        /// Queue name.
        queue: String,
        /// Priority.
        priority: u32,
    },
    /// Hand the call to a backend; report [`Input::Failed`] if it does not take it.
    Handoff {
        /// Backend name.
        backend: String,
    },
    /// Transfer the call; report [`Input::Failed`] if it does not connect.
    Transfer {
        /// Number or SIP URI.
        to: String,
    },
    /// End the call.
    Hangup,
}

/// Why the walk stopped being interactive (for logs and the CDR).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wait {
    Nothing,
    Playing,
    MenuPrompt,
    MenuKey,
    CollectPrompt,
    CollectDigits,
    Handing,
    Done,
}

/// Most keys remembered per call (they travel to the agent and the CDR).
const MAX_KEYS: usize = 128;
/// Most keys typed ahead during a plain prompt.
const MAX_TYPEAHEAD: usize = 32;
/// Most entries in the visited-node trail.
const MAX_TRAIL: usize = 64;

/// One caller's walk through the flows.
pub struct Session {
    catalog: Arc<Catalog>,
    flow: Arc<Flow>,
    node: Option<usize>,
    wait: Wait,
    vars: BTreeMap<String, String>,
    keys: String,
    typeahead: VecDeque<char>,
    digits: String,
    failures: u32,
    steps: u32,
    silent_steps: u32,
    max_steps: u32,
    exhausted_used: bool,
    next_id: u64,
    play_id: u64,
    timer_id: u64,
    caller: String,
    trail: Vec<String>,
}

impl Session {
    /// A session at the start of `flow` (which must be in `catalog`).
    pub fn new(catalog: Arc<Catalog>, flow: Arc<Flow>, caller: &str, max_steps: u32) -> Session {
        Session {
            catalog,
            flow,
            node: None,
            wait: Wait::Nothing,
            vars: BTreeMap::new(),
            keys: String::new(),
            typeahead: VecDeque::new(),
            digits: String::new(),
            failures: 0,
            steps: 0,
            silent_steps: 0,
            max_steps: max_steps.max(1),
            exhausted_used: false,
            next_id: 0,
            play_id: u64::MAX,
            timer_id: u64::MAX,
            caller: caller.to_string(),
            trail: Vec::new(),
        }
    }

    /// The session with variables set before the flow starts (the server's
    /// facts about the call, e.g. a feature code's result).
    pub fn with_vars(mut self, vars: &[(String, String)]) -> Session {
        for (k, v) in vars {
            self.vars.insert(k.clone(), v.clone());
        }
        self
    }

    /// Variables set so far (`set`, `collect`).
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    /// Every key the caller pressed, in order.
    pub fn keys(&self) -> &str {
        &self.keys
    }

    /// `flow/node` names visited, oldest first (bounded).
    pub fn trail(&self) -> &[String] {
        &self.trail
    }

    /// The current flow and node, for logs.
    pub fn position(&self) -> String {
        match self.node {
            Some(i) => format!("{}/{}", self.flow.name, self.flow.nodes[i].name),
            None => format!("{}/-", self.flow.name),
        }
    }

    /// Whether the walk has ended (queued, hung up).
    pub fn is_done(&self) -> bool {
        self.wait == Wait::Done
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Feeds one input; returns what the call must do, in order.
    pub fn handle(&mut self, input: Input, facts: &dyn Facts) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.wait == Wait::Done {
            return out;
        }
        let next = match input {
            Input::Start => Some(self.flow.start),
            Input::PlayDone(id) if id == self.play_id => self.play_done(&mut out),
            Input::PlayDone(_) => None,
            Input::Digit(c) => {
                self.silent_steps = 0;
                if self.keys.len() < MAX_KEYS {
                    self.keys.push(c);
                }
                self.digit(c, &mut out)
            }
            Input::Timer(id) if id == self.timer_id => {
                self.silent_steps = 0;
                self.timer(&mut out)
            }
            Input::Timer(_) => None,
            Input::Failed if self.wait == Wait::Handing => self.fallback(),
            Input::Failed => None,
        };
        if let Some(target) = next {
            self.run(target, facts, &mut out);
        }
        out
    }

    fn current(&self) -> Option<&Action> {
        self.node.map(|i| &self.flow.nodes[i].action)
    }

    fn fallback(&self) -> Option<Target> {
        match self.current() {
            Some(Action::Handoff { fallback, .. }) | Some(Action::Transfer { fallback, .. }) => {
                Some(*fallback)
            }
            _ => Some(Target::Hangup),
        }
    }

    fn play_done(&mut self, out: &mut Vec<Effect>) -> Option<Target> {
        match (self.wait.clone(), self.current()?.clone()) {
            (Wait::Playing, Action::Play { next, .. }) => Some(next),
            (Wait::MenuPrompt, Action::Menu { timeout, .. }) => {
                self.wait = Wait::MenuKey;
                self.arm(timeout, out);
                None
            }
            (
                Wait::CollectPrompt,
                Action::Collect {
                    timeout,
                    inter_digit_timeout,
                    ..
                },
            ) => {
                self.wait = Wait::CollectDigits;
                let after = if self.digits.is_empty() {
                    timeout
                } else {
                    inter_digit_timeout
                };
                self.arm(after, out);
                None
            }
            _ => None,
        }
    }

    fn arm(&mut self, after: Duration, out: &mut Vec<Effect>) {
        self.timer_id = self.id();
        out.push(Effect::Timer {
            id: self.timer_id,
            after,
        });
    }

    fn play(&mut self, prompts: Vec<String>, barge_in: bool, out: &mut Vec<Effect>) {
        self.play_id = self.id();
        // A new prompt makes any armed timer stale.
        self.timer_id = u64::MAX;
        out.push(Effect::Play {
            id: self.play_id,
            prompts,
            barge_in,
        });
    }

    fn digit(&mut self, c: char, out: &mut Vec<Effect>) -> Option<Target> {
        match self.wait {
            Wait::Playing | Wait::Nothing => {
                if self.typeahead.len() < MAX_TYPEAHEAD {
                    self.typeahead.push_back(c);
                }
                None
            }
            Wait::MenuPrompt | Wait::CollectPrompt => {
                out.push(Effect::Stop);
                self.play_id = u64::MAX;
                self.key(c, out)
            }
            Wait::MenuKey | Wait::CollectDigits => self.key(c, out),
            Wait::Handing | Wait::Done => None,
        }
    }

    /// A key in a menu or collect node.
    fn key(&mut self, c: char, out: &mut Vec<Effect>) -> Option<Target> {
        match self.current()?.clone() {
            Action::Menu {
                keys,
                invalid,
                prompts,
                ..
            } => match keys.iter().find(|(k, _)| *k == c) {
                Some((_, t)) => Some(*t),
                None => self.fail(invalid.into_iter().chain(prompts).collect(), out),
            },
            Action::Collect {
                terminator,
                min_digits,
                max_digits,
                inter_digit_timeout,
                ..
            } => {
                if Some(c) == terminator {
                    return self.finish_collect(min_digits, out);
                }
                self.digits.push(c);
                if self.digits.len() >= max_digits as usize {
                    return self.finish_collect(min_digits, out);
                }
                self.wait = Wait::CollectDigits;
                self.arm(inter_digit_timeout, out);
                None
            }
            _ => None,
        }
    }

    fn finish_collect(&mut self, min_digits: u32, out: &mut Vec<Effect>) -> Option<Target> {
        let Some(Action::Collect {
            into,
            next,
            invalid,
            prompts,
            ..
        }) = self.current().cloned()
        else {
            return None;
        };
        if self.digits.len() < min_digits as usize {
            return self.fail(invalid.into_iter().chain(prompts).collect(), out);
        }
        self.vars.insert(into, std::mem::take(&mut self.digits));
        Some(next)
    }

    fn timer(&mut self, out: &mut Vec<Effect>) -> Option<Target> {
        match (self.wait.clone(), self.current()?.clone()) {
            (Wait::MenuKey, Action::Menu { prompts, .. }) => self.fail(prompts, out),
            (Wait::CollectDigits, Action::Collect { min_digits, .. }) => {
                self.finish_collect(min_digits, out)
            }
            _ => None,
        }
    }

    /// A wrong key, a timeout or too few digits: replay, or give up.
    fn fail(&mut self, replay: Vec<String>, out: &mut Vec<Effect>) -> Option<Target> {
        let (retries, exhausted, menu) = match self.current()? {
            Action::Menu {
                retries, exhausted, ..
            } => (*retries, *exhausted, true),
            Action::Collect {
                retries, exhausted, ..
            } => (*retries, *exhausted, false),
            _ => return None,
        };
        self.failures += 1;
        self.digits.clear();
        if self.failures > retries {
            return Some(exhausted);
        }
        self.wait = if menu {
            Wait::MenuPrompt
        } else {
            Wait::CollectPrompt
        };
        self.play(replay, true, out);
        None
    }

    /// Walks from `target` until a node waits or the walk ends.
    fn run(&mut self, mut target: Target, facts: &dyn Facts, out: &mut Vec<Effect>) {
        loop {
            self.steps += 1;
            self.silent_steps += 1;
            let too_many = self.steps > self.max_steps
                || self.silent_steps > 2 * self.flow.nodes.len() as u32 + 16;
            if too_many {
                target = match (self.exhausted_used, self.flow.exhausted) {
                    (false, Target::Node(i)) => {
                        tracing::warn!(flow = %self.flow.name, "flow guard tripped; going to its exhausted node");
                        self.exhausted_used = true;
                        self.steps = self.max_steps.saturating_sub(32);
                        self.silent_steps = 0;
                        Target::Node(i)
                    }
                    _ => {
                        tracing::warn!(flow = %self.flow.name, "flow guard tripped; hanging up");
                        Target::Hangup
                    }
                };
            }
            let i = match target {
                Target::Hangup => {
                    self.finish(Effect::Hangup, out);
                    return;
                }
                Target::Node(i) => i,
            };
            self.node = Some(i);
            if self.trail.len() < MAX_TRAIL {
                self.trail
                    .push(format!("{}/{}", self.flow.name, self.flow.nodes[i].name));
            }
            let action = self.flow.nodes[i].action.clone();
            match action {
                Action::Play { prompts, .. } => {
                    self.wait = Wait::Playing;
                    self.play(prompts, false, out);
                    return;
                }
                Action::Menu { prompts, .. } => {
                    self.failures = 0;
                    self.wait = Wait::MenuPrompt;
                    if let Some(c) = self.typeahead.pop_front() {
                        match self.key(c, out) {
                            Some(t) => {
                                target = t;
                                continue;
                            }
                            None if self.wait == Wait::MenuPrompt && self.play_id != u64::MAX => {
                                return
                            }
                            None => {}
                        }
                    }
                    self.play(prompts, true, out);
                    return;
                }
                Action::Collect { prompts, .. } => {
                    self.failures = 0;
                    self.digits.clear();
                    self.wait = Wait::CollectPrompt;
                    let mut went = None;
                    while let Some(c) = self.typeahead.pop_front() {
                        if let Some(t) = self.key(c, out) {
                            went = Some(t);
                            break;
                        }
                    }
                    if let Some(t) = went {
                        target = t;
                        continue;
                    }
                    if self.digits.is_empty() {
                        self.wait = Wait::CollectPrompt;
                        self.play(prompts, true, out);
                    }
                    return;
                }
                Action::Branch { when, otherwise } => {
                    target = when
                        .iter()
                        .find(|(conds, _)| conds.iter().all(|c| self.holds(c, facts)))
                        .map_or(otherwise, |(_, t)| *t);
                }
                Action::Set { vars, next } => {
                    for (k, v) in vars {
                        self.vars.insert(k, v);
                    }
                    target = next;
                }
                Action::Queue { queue, priority } => {
                    self.finish(Effect::Queue { queue, priority }, out);
                    return;
                }
                Action::Handoff { backend, .. } => {
                    self.wait = Wait::Handing;
                    out.push(Effect::Handoff { backend });
                    return;
                }
                Action::Transfer { to, .. } => {
                    self.wait = Wait::Handing;
                    out.push(Effect::Transfer { to });
                    return;
                }
                Action::GotoFlow(name) => match self.catalog.flows.get(&name) {
                    Some(f) => {
                        self.flow = f.clone();
                        target = f.start;
                    }
                    None => target = Target::Hangup,
                },
                Action::Hangup => target = Target::Hangup,
            }
        }
    }

    fn finish(&mut self, effect: Effect, out: &mut Vec<Effect>) {
        self.wait = Wait::Done;
        out.push(effect);
    }

    fn holds(&self, c: &Condition, facts: &dyn Facts) -> bool {
        let now = facts.now();
        match c {
            Condition::Time { from, to } => {
                let t = now.time();
                if from < to {
                    *from <= t && t < *to
                } else {
                    t >= *from || t < *to
                }
            }
            Condition::Weekdays(days) => days.contains(&now.weekday()),
            Condition::Dates(cal) => self
                .catalog
                .calendars
                .get(cal)
                .is_some_and(|d| d.contains(&now.date())),
            Condition::CallerIn(list) => facts.in_list(list, &self.caller),
            Condition::Flag(name) => facts.flag(name),
            Condition::Equals { var, value } => self.vars.get(var) == Some(value),
            Condition::Matches { var, regex } => {
                self.vars.get(var).is_some_and(|v| regex.is_match(v))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::flow::{self, Known};
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    struct World {
        now: NaiveDateTime,
        elderly: Vec<String>,
        notice: bool,
    }

    impl Facts for World {
        fn now(&self) -> NaiveDateTime {
            self.now
        }
        fn in_list(&self, list: &str, number: &str) -> bool {
            list == "elderly" && self.elderly.iter().any(|n| n == number)
        }
        fn flag(&self, name: &str) -> bool {
            name == "notice" && self.notice
        }
    }

    fn world() -> World {
        World {
            now: "2026-11-30T10:00:00".parse().expect("time"),
            elderly: vec!["13800000001".into()],
            notice: false,
        }
    }

    fn catalog(files: &[(&str, &str)]) -> Arc<Catalog> {
        let known = Known {
            prompts: ["welcome", "menu", "invalid", "closed", "id", "notice"]
                .map(String::from)
                .into(),
            queues: ["main".to_string(), "hrss".to_string()].into(),
            backends: ["hrss".to_string()].into(),
            calendars: ["holidays".to_string()].into(),
            flows: files.iter().map(|(n, _)| n.to_string()).collect(),
            outbound: true,
        };
        let mut flows = HashMap::new();
        for (name, text) in files {
            let (f, d) = flow::parse(name, name, text, &known);
            assert!(d.iter().all(|d| d.warning), "{d:?}");
            flows.insert(name.to_string(), Arc::new(f.expect("flow")));
        }
        let holidays: BTreeSet<chrono::NaiveDate> = ["2026-10-01".parse().expect("date")].into();
        Arc::new(Catalog {
            flows,
            prompts: Arc::default(),
            calendars: [("holidays".to_string(), holidays)].into(),
        })
    }

    fn session(cat: &Arc<Catalog>, flow: &str, caller: &str) -> Session {
        let f = cat.flows.get(flow).expect("flow").clone();
        Session::new(cat.clone(), f, caller, 1000)
    }

    const HRSS: &str = r#"
start = "welcome"
[nodes.welcome]
play = "welcome"
next = "menu"
[nodes.menu]
menu = "menu"
keys = { "1" = "self", "0" = "seats", "*" = "menu" }
timeout = "5s"
retries = 2
invalid = "invalid"
exhausted = "seats"
[nodes.self]
handoff = "hrss"
fallback = "seats"
[nodes.seats]
queue = "hrss"
priority = 1
"#;

    fn played(effects: &[Effect]) -> Option<(u64, Vec<String>, bool)> {
        effects.iter().find_map(|e| match e {
            Effect::Play {
                id,
                prompts,
                barge_in,
            } => Some((*id, prompts.clone(), *barge_in)),
            _ => None,
        })
    }

    #[test]
    fn menu_key_goes_to_handoff_then_fallback() {
        let cat = catalog(&[("hrss", HRSS)]);
        let w = world();
        let mut s = session(&cat, "hrss", "1");
        let e = s.handle(Input::Start, &w);
        let (id, prompts, barge) = played(&e).expect("welcome");
        assert_eq!((prompts, barge), (vec!["welcome".to_string()], false));
        let e = s.handle(Input::PlayDone(id), &w);
        let (_, prompts, barge) = played(&e).expect("menu");
        assert_eq!((prompts, barge), (vec!["menu".to_string()], true));
        // Barge-in: a key during the menu prompt stops it and is taken.
        let e = s.handle(Input::Digit('1'), &w);
        assert_eq!(
            e,
            [
                Effect::Stop,
                Effect::Handoff {
                    backend: "hrss".into()
                }
            ]
        );
        let e = s.handle(Input::Failed, &w);
        assert_eq!(
            e,
            [Effect::Queue {
                queue: "hrss".into(),
                priority: 1
            }]
        );
        assert!(s.is_done());
        assert_eq!(s.keys(), "1");
        assert_eq!(
            s.trail(),
            ["hrss/welcome", "hrss/menu", "hrss/self", "hrss/seats"]
        );
    }

    #[test]
    fn wrong_keys_and_timeouts_spend_retries() {
        let cat = catalog(&[("hrss", HRSS)]);
        let w = world();
        let mut s = session(&cat, "hrss", "1");
        let e = s.handle(Input::Start, &w);
        let (id, _, _) = played(&e).expect("welcome");
        let e = s.handle(Input::PlayDone(id), &w);
        let (id, _, _) = played(&e).expect("menu");
        let e = s.handle(Input::PlayDone(id), &w);
        let Some(Effect::Timer { id: t, after }) = e.first().cloned() else {
            panic!("{e:?}")
        };
        assert_eq!(after, Duration::from_secs(5));
        // Timeout: failure 1, the menu is replayed.
        let e = s.handle(Input::Timer(t), &w);
        let (id, prompts, _) = played(&e).expect("replay");
        assert_eq!(prompts, ["menu"]);
        // A stale timer is ignored.
        assert!(s.handle(Input::Timer(t), &w).is_empty());
        // Wrong key: failure 2, invalid + menu.
        let e = s.handle(Input::Digit('7'), &w);
        assert_eq!(e[0], Effect::Stop);
        let (_, prompts, _) = played(&e).expect("invalid");
        assert_eq!(prompts, ["invalid", "menu"]);
        assert!(
            s.handle(Input::PlayDone(id), &w).is_empty(),
            "stale play id"
        );
        // Failure 3 > retries 2: exhausted → seats.
        let e = s.handle(Input::Digit('9'), &w);
        assert_eq!(
            e.last(),
            Some(&Effect::Queue {
                queue: "hrss".into(),
                priority: 1
            })
        );
        assert_eq!(s.keys(), "79");
    }

    #[test]
    fn typeahead_during_welcome_answers_the_menu() {
        let cat = catalog(&[("hrss", HRSS)]);
        let w = world();
        let mut s = session(&cat, "hrss", "1");
        let e = s.handle(Input::Start, &w);
        let (id, _, _) = played(&e).expect("welcome");
        assert!(s.handle(Input::Digit('0'), &w).is_empty());
        let e = s.handle(Input::PlayDone(id), &w);
        assert_eq!(
            e,
            [Effect::Queue {
                queue: "hrss".into(),
                priority: 1
            }]
        );
    }

    #[test]
    fn collect_with_terminator_min_and_inter_digit_timeout() {
        let text = r#"
start = "ask"
[nodes.ask]
collect = "id"
into = "id"
min_digits = 3
max_digits = 6
retries = 1
exhausted = "hangup"
next = "check"
[nodes.check]
branch = [ { var = "id", matches = "^12", goto = "seats" } ]
else = "ask"
[nodes.seats]
queue = "main"
"#;
        let cat = catalog(&[("c", text)]);
        let w = world();
        let mut s = session(&cat, "c", "1");
        let e = s.handle(Input::Start, &w);
        assert!(played(&e).is_some());
        // Too few digits then #: failure, prompt again.
        s.handle(Input::Digit('1'), &w);
        let e = s.handle(Input::Digit('#'), &w);
        let (_, prompts, _) = played(&e).expect("replay");
        assert_eq!(prompts, ["id"]);
        // Three digits then the inter-digit timer ends the input.
        s.handle(Input::Digit('1'), &w);
        s.handle(Input::Digit('2'), &w);
        let e = s.handle(Input::Digit('3'), &w);
        let Some(Effect::Timer { id, after }) = e.last().cloned() else {
            panic!("{e:?}")
        };
        assert_eq!(after, Duration::from_secs(3));
        let e = s.handle(Input::Timer(id), &w);
        assert_eq!(
            e,
            [Effect::Queue {
                queue: "main".into(),
                priority: 0
            }]
        );
        assert_eq!(s.vars().get("id").map(String::as_str), Some("123"));
    }

    #[test]
    fn branch_on_time_holiday_list_and_flag() {
        let text = r#"
start = "check"
[nodes.check]
branch = [
  { flag = "notice", goto = "notice" },
  { dates = "holidays", goto = "closed" },
  { caller_in = "elderly", goto = "priority" },
  { time = "22:00-06:00", goto = "closed" },
  { time = "08:00-20:00", weekdays = ["sat", "sun"], goto = "closed" },
]
else = "seats"
[nodes.notice]
play = "notice"
next = "seats"
[nodes.closed]
play = "closed"
next = "hangup"
[nodes.priority]
queue = "main"
priority = 2
[nodes.seats]
queue = "main"
"#;
        let cat = catalog(&[("b", text)]);
        let first = |w: &World, caller: &str| {
            let mut s = session(&cat, "b", caller);
            s.handle(Input::Start, w)
        };
        let mut w = world(); // Monday 10:00
        assert_eq!(
            first(&w, "1"),
            [Effect::Queue {
                queue: "main".into(),
                priority: 0
            }]
        );
        assert_eq!(
            first(&w, "13800000001"),
            [Effect::Queue {
                queue: "main".into(),
                priority: 2
            }]
        );
        w.now = "2026-11-30T23:30:00".parse().expect("t");
        assert_eq!(
            played(&first(&w, "1")).map(|p| p.1),
            Some(vec!["closed".into()])
        );
        w.now = "2026-11-29T10:00:00".parse().expect("t"); // Sunday
        assert_eq!(
            played(&first(&w, "1")).map(|p| p.1),
            Some(vec!["closed".into()])
        );
        w.now = "2026-10-01T10:00:00".parse().expect("t"); // holiday
        assert_eq!(
            played(&first(&w, "1")).map(|p| p.1),
            Some(vec!["closed".into()])
        );
        w.notice = true;
        assert_eq!(
            played(&first(&w, "1")).map(|p| p.1),
            Some(vec!["notice".into()])
        );
    }

    #[test]
    fn goto_flow_and_step_guard() {
        let a = r#"
start = "go"
exhausted = "bye"
[nodes.bye]
play = "closed"
next = "hangup"
[nodes.go]
set = { from = "a" }
next = "jump"
[nodes.jump]
goto_flow = "b"
"#;
        let b = r#"
start = "back"
exhausted = "bye"
[nodes.back]
goto_flow = "a"
[nodes.bye]
play = "closed"
next = "hangup"
"#;
        // a → b → a → … takes no input: each file is fine alone (the check
        // cannot see across files), so the run-time guard must end it.
        let cat = catalog(&[("a", a), ("b", b)]);
        let w = world();
        let mut s = session(&cat, "a", "1");
        let e = s.handle(Input::Start, &w);
        assert_eq!(played(&e).map(|p| p.1), Some(vec!["closed".into()]));
        let (id, _, _) = played(&e).expect("bye");
        assert_eq!(s.handle(Input::PlayDone(id), &w), [Effect::Hangup]);
        assert_eq!(s.vars().get("from").map(String::as_str), Some("a"));
    }
}

//! The number plan: normalization of dialed numbers and the import format.
//!
//! Room: the switchboard's directory. Lookups go to the store
//! (longest prefix); this module owns what a "number" is and how the shipped
//! plan (`config/numbers.toml`) and `routes import FILE` are read, with
//! file:line errors.

use anyhow::bail;
use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};

/// The shipped number plan, imported on first start.
pub const SHIPPED_PLAN: &str = include_str!("../config/numbers.toml");

/// Normalizes a dialed number: drops visual separators, then the longest
/// matching configured prefix ("+86", "0086", "028") when digits remain.
/// Returns `None` for something that is not a dialable number.
pub fn normalize(dialed: &str, prefixes: &[String]) -> Option<String> {
    let cleaned: String = dialed
        .chars()
        .filter(|c| !matches!(c, '-' | '.' | ' ' | '(' | ')'))
        .collect();
    if cleaned.is_empty() || cleaned.len() > 32 {
        return None;
    }
    let (plus, digits) = match cleaned.strip_prefix('+') {
        Some(rest) => ("+", rest),
        None => ("", cleaned.as_str()),
    };
    if !digits
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
        || digits.is_empty()
    {
        return None;
    }
    let full = format!("{plus}{digits}");
    let mut best: Option<&str> = None;
    for p in prefixes {
        if full.starts_with(p.as_str())
            && full.len() > p.len()
            && best.is_none_or(|b| p.len() > b.len())
        {
            best = Some(p);
        }
    }
    let stripped = match best {
        Some(p) => full[p.len()..].to_string(),
        None => full,
    };
    Some(stripped.trim_start_matches('+').to_string())
}

/// How a number joined 12345: the 一号通 programme merges hotlines in
/// stages, and each route says which stage its number is at.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// 12345 itself, or merged into it outright.
    #[default]
    Direct,
    /// 双号并行: the old number stays beside 12345, with its own greeting;
    /// reports keep it apart.
    Parallel,
    /// Merged, old number to be cancelled: `flow` until `cutover`, then
    /// `after_flow` (decided per call).
    Transition,
    /// An ordinary department number: callers are pointed to 12345.
    Legacy,
    /// A self-service line whose own system still answers (12333, 12329).
    Handoff,
    /// A peer centre (分中心) on a SIP trunk both ways.
    Interconnect,
}

impl Mode {
    /// Its name in plans, on the command line and in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Parallel => "parallel",
            Mode::Transition => "transition",
            Mode::Legacy => "legacy",
            Mode::Handoff => "handoff",
            Mode::Interconnect => "interconnect",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A local wall-clock time as plans and the command line write it:
/// `YYYY-MM-DD HH:MM[:SS]`, with a space or a `T`.
pub fn parse_local_time(text: &str) -> Option<NaiveDateTime> {
    let t = text.trim();
    [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
}

/// A number-plan entry: dialed number (or prefix) → target, and how the
/// number joined 12345 (see [`Mode`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Normalized number or prefix.
    pub number: String,
    /// Queue the call goes to (when no flow is set).
    #[serde(default)]
    pub queue: String,
    /// IVR flow that takes the call (empty: straight to `queue`).
    #[serde(default)]
    pub flow: String,
    /// Hotline label for reports ("12345", "12315 market regulation").
    #[serde(default)]
    pub hotline: String,
    /// How the number joined 12345 (records written before modes existed
    /// read as `direct`).
    #[serde(default)]
    pub mode: Mode,
    /// `transition` only: local time (`YYYY-MM-DD HH:MM[:SS]`) from which
    /// `after_flow` takes the line's calls instead of `flow`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cutover: String,
    /// `transition` only: the flow after the cut-over.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub after_flow: String,
    /// A flow the caller walks when the agent hangs up first (a queue's
    /// own `after_call_flow` wins).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub after_call_flow: String,
}

impl Route {
    /// The flow that takes a call arriving at local time `at` (empty: the
    /// route goes straight to its queue), and whether the cut-over has
    /// passed. A `transition` route switches at its cut-over by itself: no
    /// reload, no restart.
    pub fn flow_at(&self, at: NaiveDateTime) -> (&str, bool) {
        let after = self.mode == Mode::Transition
            && parse_local_time(&self.cutover).is_some_and(|cutover| at >= cutover);
        if after {
            (&self.after_flow, true)
        } else {
            (&self.flow, false)
        }
    }

    /// The route as a call arriving now is served: past a transition's
    /// cut-over, `after_flow` in place of `flow` (`local_now` is asked only
    /// for transition routes).
    pub fn serving_now(mut self, local_now: impl FnOnce() -> NaiveDateTime) -> Route {
        if self.mode == Mode::Transition {
            let (flow, after) = self.flow_at(local_now());
            if after {
                self.flow = flow.to_string();
            }
        }
        self
    }

    /// Checks the fields that go together; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = |n: &str| crate::text::is_plain_name(n);
        match (self.queue.is_empty(), self.flow.is_empty()) {
            (false, true) if !name_ok(&self.queue) => {
                return Err(format!(
                    "field `queue`: {:?} must be a plain name",
                    self.queue
                ))
            }
            (true, false) if !name_ok(&self.flow) => {
                return Err(format!(
                    "field `flow`: {:?} must be a plain name",
                    self.flow
                ))
            }
            (false, true) | (true, false) => {}
            _ => return Err("a route needs exactly one of `queue` or `flow`".into()),
        }
        if self.mode == Mode::Transition {
            if parse_local_time(&self.cutover).is_none() {
                return Err(format!(
                    "field `cutover`: {:?} must be a local time, YYYY-MM-DD HH:MM[:SS] (a transition route needs one)",
                    self.cutover
                ));
            }
            if !name_ok(&self.after_flow) {
                return Err(format!(
                    "field `after_flow`: {:?} must name the flow that serves after the cut-over",
                    self.after_flow
                ));
            }
        } else if !self.cutover.is_empty() || !self.after_flow.is_empty() {
            return Err(format!(
                "fields `cutover` and `after_flow` belong to mode `transition`, not `{}`",
                self.mode
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    #[serde(default)]
    route: Vec<toml::Spanned<PlanRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanRoute {
    number: String,
    queue: Option<String>,
    flow: Option<String>,
    #[serde(default)]
    hotline: String,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    cutover: String,
    #[serde(default)]
    after_flow: String,
    #[serde(default)]
    after_call_flow: String,
}

/// Parses a plan file's text; errors say `name:line:column`.
pub fn parse_plan(text: &str, name: &str) -> anyhow::Result<Vec<Route>> {
    let plan: PlanFile = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| crate::text::line_col(text, s.start))
            .map(|(l, c)| format!("{l}:{c}"))
            .unwrap_or_default();
        anyhow::anyhow!("{name}:{at}: {}", e.message())
    })?;
    let mut routes = Vec::with_capacity(plan.route.len());
    for spanned in plan.route {
        let (line, _) = crate::text::line_col(text, spanned.span().start);
        let r = spanned.into_inner();
        let Some(number) = normalize(&r.number, &[]) else {
            bail!(
                "{name}:{line}: field `number`: {:?} is not a dialable number",
                r.number
            );
        };
        if r.queue.is_some() == r.flow.is_some() {
            bail!("{name}:{line}: a route needs exactly one of `queue` or `flow`");
        }
        let route = Route {
            number,
            queue: r.queue.unwrap_or_default(),
            flow: r.flow.unwrap_or_default(),
            hotline: r.hotline,
            mode: r.mode,
            cutover: r.cutover,
            after_flow: r.after_flow,
            after_call_flow: r.after_call_flow,
        };
        if let Err(e) = route.validate() {
            bail!("{name}:{line}: {e}");
        }
        routes.push(route);
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        let p = vec!["+86".to_string(), "0086".to_string(), "028".to_string()];
        assert_eq!(normalize("+8612345", &p).as_deref(), Some("12345"));
        assert_eq!(normalize("008612345", &p).as_deref(), Some("12345"));
        assert_eq!(normalize("028-12345", &p).as_deref(), Some("12345"));
        assert_eq!(normalize("12345", &p).as_deref(), Some("12345"));
        assert_eq!(normalize("028", &p).as_deref(), Some("028"));
        assert_eq!(normalize("abc", &p), None);
        assert_eq!(normalize("", &p), None);
    }

    #[test]
    fn shipped_plan_parses() {
        let routes = parse_plan(SHIPPED_PLAN, "numbers.toml").expect("shipped plan is valid");
        assert!(routes.iter().any(|r| r.number == "12345"));
    }

    #[test]
    fn a_transition_route_changes_flow_at_its_cutover() {
        let plan = "[[route]]\nnumber = \"96123\"\nmode = \"transition\"\nflow = \"notice\"\n\
                    cutover = \"2027-07-01 00:00\"\nafter_flow = \"dial\"\n";
        let route = parse_plan(plan, "p.toml").expect("valid").remove(0);
        let at = |t: &str| parse_local_time(t).expect("time");
        assert_eq!(route.flow_at(at("2027-06-30 23:59:59")), ("notice", false));
        assert_eq!(route.flow_at(at("2027-07-01T00:00")), ("dial", true));
        let served = route.clone().serving_now(|| at("2027-07-02 08:00"));
        assert_eq!((served.flow.as_str(), served.queue.as_str()), ("dial", ""));
        // Other modes never switch, and never ask the time.
        let direct = Route {
            mode: Mode::Direct,
            cutover: String::new(),
            after_flow: String::new(),
            ..route
        };
        assert_eq!(direct.clone().serving_now(|| unreachable!()).flow, "notice");
        // Shipped: every route has a mode; the transition line validates.
        let shipped = parse_plan(SHIPPED_PLAN, "numbers.toml").expect("shipped");
        assert!(shipped
            .iter()
            .any(|r| r.mode == Mode::Transition && r.number == "96123"));
        assert!(shipped
            .iter()
            .any(|r| r.mode == Mode::Handoff && r.number == "12333"));
    }

    #[test]
    fn mode_fields_are_checked_by_name() {
        let base = "[[route]]\nnumber = \"96123\"\nflow = \"notice\"\n";
        let err = |extra: &str| {
            parse_plan(&format!("{base}{extra}"), "p.toml")
                .expect_err("invalid")
                .to_string()
        };
        let e = err("mode = \"transition\"\nafter_flow = \"dial\"\n");
        assert!(
            e.starts_with("p.toml:1:") && e.contains("field `cutover`"),
            "{e}"
        );
        let e = err("mode = \"transition\"\ncutover = \"July\"\nafter_flow = \"dial\"\n");
        assert!(
            e.contains("field `cutover`") && e.contains("\"July\""),
            "{e}"
        );
        let e = err("mode = \"transition\"\ncutover = \"2027-07-01 00:00\"\n");
        assert!(e.contains("field `after_flow`"), "{e}");
        let e = err("cutover = \"2027-07-01 00:00\"\n");
        assert!(
            e.contains("belong to mode `transition`, not `direct`"),
            "{e}"
        );
        let e = err("mode = \"merged\"\n");
        assert!(e.contains("p.toml:4") && e.contains("merged"), "{e}");
    }

    #[test]
    fn plan_errors_name_line_and_field() {
        let text = "[[route]]\nnumber = \"12345\"\nqueue = \"main\"\n\n[[route]]\nnumber = \"x1\"\nqueue = \"q\"\n";
        let err = parse_plan(text, "p.toml")
            .expect_err("bad number")
            .to_string();
        assert!(
            err.starts_with("p.toml:5") && err.contains("number"),
            "{err}"
        );
        let err = parse_plan("[[route]]\nnumbr = \"1\"\n", "p.toml")
            .expect_err("typo")
            .to_string();
        assert!(err.contains("p.toml:2"), "{err}");
    }
}

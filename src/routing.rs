//! The number plan: normalization of dialed numbers and the import format.
//!
//! Room: the switchboard's directory. Lookups go to [`crate::store::Store`]
//! (longest prefix); this module owns what a "number" is and how the shipped
//! plan (`config/numbers.toml`) and `routes import FILE` are read, with
//! file:line errors.

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::store::{Route, Store};

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
}

/// Parses a plan file's text; errors say `name:line:column`.
pub fn parse_plan(text: &str, name: &str) -> anyhow::Result<Vec<Route>> {
    let plan: PlanFile = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| crate::config::line_col(text, s.start))
            .map(|(l, c)| format!("{l}:{c}"))
            .unwrap_or_default();
        anyhow::anyhow!("{name}:{at}: {}", e.message())
    })?;
    let mut routes = Vec::with_capacity(plan.route.len());
    for spanned in plan.route {
        let (line, _) = crate::config::line_col(text, spanned.span().start);
        let r = spanned.into_inner();
        let Some(number) = normalize(&r.number, &[]) else {
            bail!(
                "{name}:{line}: field `number`: {:?} is not a dialable number",
                r.number
            );
        };
        let (field, target) = match (&r.queue, &r.flow) {
            (Some(q), None) => ("queue", q),
            (None, Some(f)) => ("flow", f),
            _ => bail!("{name}:{line}: a route needs exactly one of `queue` or `flow`"),
        };
        if !crate::ivr::flow::is_plain_name(target) {
            bail!("{name}:{line}: field `{field}`: {target:?} must be a plain name");
        }
        routes.push(Route {
            number,
            queue: r.queue.unwrap_or_default(),
            flow: r.flow.unwrap_or_default(),
            hotline: r.hotline,
        });
    }
    Ok(routes)
}

/// Imports a plan file into the store; returns how many routes were written.
pub fn import_file(store: &Store, path: &Path) -> anyhow::Result<usize> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    import_text(store, &text, &path.display().to_string())
}

/// Imports plan text (all or nothing: it is parsed before anything is written).
pub fn import_text(store: &Store, text: &str, name: &str) -> anyhow::Result<usize> {
    let routes = parse_plan(text, name)?;
    for r in &routes {
        store.put_route(r)?;
    }
    Ok(routes.len())
}

/// On first start, imports the shipped plan.
pub fn seed(store: &Store) -> anyhow::Result<()> {
    if !store.flag("plan_seeded")? {
        let n = import_text(store, SHIPPED_PLAN, "config/numbers.toml")?;
        store.set_flag("plan_seeded")?;
        tracing::info!(routes = n, "imported the shipped number plan");
    }
    Ok(())
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

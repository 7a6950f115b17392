//! Output for people: the CLI's lists and figures as text tables, times in
//! the city's local time (`[ivr] utc_offset_minutes`), spans as `m:ss`.
//!
//! Room: the back office's printer. It reads the JSON the admin commands
//! answer (the same the API gives and `--format json` prints) and touches
//! nothing else; a field it does not know is left out, never an error.

use crate::text::Table;
use serde_json::Value;

/// Unix ms as local `YYYY-MM-DD HH:MM:SS`; 0 or absent is blank.
pub fn local_time(ms: u64, utc_offset_minutes: i32) -> String {
    if ms == 0 {
        return String::new();
    }
    let offset = crate::config::utc_offset(utc_offset_minutes);
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| {
            t.with_timezone(&offset)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}

/// A span of ms as `m:ss` (`h:mm:ss` from an hour).
pub fn span(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// What a command's answer is, for choosing its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// `status`.
    Status,
    /// `agents list`.
    Agents,
    /// `routes list`.
    Routes,
    /// `queues list`.
    Queues,
    /// `cdrs`.
    Cdrs,
    /// `calls list`.
    Calls,
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Which table shows the answer to `cmd`; `None`: it is printed as it
/// comes (JSON, or the text it is).
pub fn view_of(cmd: &super::AdminCommand) -> Option<View> {
    use super::AdminCommand as C;
    Some(match cmd {
        C::Status => View::Status,
        C::AgentsList => View::Agents,
        C::RoutesList => View::Routes,
        C::QueuesList => View::Queues,
        C::Cdrs { .. } => View::Cdrs,
        C::CallsList => View::Calls,
        _ => return None,
    })
}

/// The answer `v` of a command as text for people (`csv`: as CSV; the
/// status, which is no list, stays text).
pub fn render(view: View, v: &Value, utc_offset_minutes: i32, csv: bool) -> String {
    match table(view, v, utc_offset_minutes) {
        Some(t) if csv => t.csv(),
        Some(t) => t.render(),
        None => status(v),
    }
}

fn table(view: View, v: &Value, utc_offset_minutes: i32) -> Option<Table> {
    let at = |v: &Value| local_time(v.as_u64().unwrap_or(0), utc_offset_minutes);
    let items = v.as_array().cloned().unwrap_or_default();
    Some(match view {
        View::Status => return None,
        View::Agents => {
            let mut t = Table::new(&["ID", "NAME", "STATE", "SINCE", "PHONE", "QUEUES"]);
            for a in &items {
                let state = match a["reason"].as_str() {
                    Some(r) if !r.is_empty() => format!("{} ({r})", text(&a["state"])),
                    _ => text(&a["state"]),
                };
                let phone = a["registrations"]
                    .as_array()
                    .and_then(|r| r.first())
                    .map(|r| text(&r["received"]))
                    .unwrap_or_else(|| "-".into());
                let queues: Vec<String> = a["queues"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|q| match q[1].as_u64() {
                        Some(l) if l > 1 => format!("{}:{l}", text(&q[0])),
                        _ => text(&q[0]),
                    })
                    .collect();
                t.row(vec![
                    text(&a["id"]),
                    text(&a["name"]),
                    state,
                    at(&a["since"]),
                    phone,
                    queues.join(","),
                ]);
            }
            t
        }
        View::Routes => {
            let mut t = Table::new(&[
                "NUMBER", "GOES TO", "HOTLINE", "MODE", "CUT-OVER", "BACKENDS",
            ]);
            for r in &items {
                let to = if text(&r["flow"]).is_empty() {
                    format!("queue {}", text(&r["queue"]))
                } else {
                    format!("flow {}", text(&r["flow"]))
                };
                let cutover = match (text(&r["cutover"]), text(&r["after_flow"])) {
                    (c, _) if c.is_empty() => String::new(),
                    (c, f) => format!("{c} → flow {f}"),
                };
                // `routes list` adds the backends its flows hand to.
                let backends: Vec<String> = r["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| match b["up"].as_bool() {
                        Some(true) => format!("{} up", text(&b["backend"])),
                        Some(false) => format!("{} DOWN", text(&b["backend"])),
                        None => text(&b["backend"]),
                    })
                    .collect();
                let backends = backends.join(", ");
                t.row(vec![
                    text(&r["number"]),
                    to,
                    text(&r["hotline"]),
                    text(&r["mode"]),
                    cutover,
                    backends,
                ]);
            }
            t
        }
        View::Queues => {
            let mut t = Table::new(&[
                "QUEUE",
                "STRATEGY",
                "WAITING>",
                "LONGEST>",
                "FREE>",
                "MEMBERS>",
                "DESCRIPTION",
            ]);
            for q in &items {
                // Without a running server only the keys set are known.
                let strategy = q
                    .get("strategy")
                    .or_else(|| q["keys"].get("strategy"))
                    .map_or_else(|| "(default)".into(), text);
                let live = q.get("waiting").is_some();
                let figure = |k: &str| if live { text(&q[k]) } else { "-".into() };
                t.row(vec![
                    text(&q["name"]),
                    strategy,
                    figure("waiting"),
                    if live {
                        span(q["longest_wait_ms"].as_u64().unwrap_or(0))
                    } else {
                        "-".into()
                    },
                    figure("free"),
                    figure("members"),
                    text(&q["description"]),
                ]);
            }
            t
        }
        View::Cdrs => {
            let mut t = Table::new(&[
                "ENDED", "CALLER", "DIALED", "QUEUE", "AGENT", "WAIT>", "TALK>", "OUTCOME",
                "CALL-ID",
            ]);
            for c in &items {
                let ms = |k: &str| c[k].as_u64();
                let wait = match (ms("queued"), ms("answered").or(ms("ended"))) {
                    (Some(q), Some(e)) => span(e.saturating_sub(q)),
                    _ => String::new(),
                };
                let talk = match (ms("answered"), ms("ended")) {
                    (Some(a), Some(e)) => span(e.saturating_sub(a)),
                    _ => String::new(),
                };
                let outcome = match text(&c["hung_up_by"]) {
                    by if by.is_empty() => text(&c["disposition"]),
                    by => format!("{} ({by})", text(&c["disposition"])),
                };
                t.row(vec![
                    at(&c["ended"]),
                    text(&c["caller"]),
                    text(&c["dialed"]),
                    text(&c["queue"]),
                    text(&c["agent"]),
                    wait,
                    talk,
                    outcome,
                    text(&c["call_id"]),
                ]);
            }
            t
        }
        View::Calls => {
            let mut t = Table::new(&[
                "CALL-ID", "CALLER", "DIALED", "STATE", "FOR>", "QUEUE", "AGENT", "FLOW",
            ]);
            let now = crate::clock::now_ms();
            for c in &items {
                t.row(vec![
                    text(&c["call_id"]),
                    text(&c["caller"]),
                    text(&c["dialed"]),
                    text(&c["state"]),
                    span(now.saturating_sub(c["state_since"].as_u64().unwrap_or(now))),
                    text(&c["queue"]),
                    text(&c["agent"]),
                    text(&c["flow"]),
                ]);
            }
            t
        }
    })
}

/// `status`: the few lines an admin reads first, then the queues and the
/// agents by state; everything else is in `--format json`.
fn status(v: &Value) -> String {
    let mut s = String::new();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let line = |s: &mut String, k: &str, v: String| s.push_str(&format!("{k:<16}{v}\n"));
    line(
        &mut s,
        "calls",
        format!(
            "{} live{}",
            n(&v["live_calls"]),
            if v["draining"] == Value::Bool(true) {
                " (draining: new calls get 503)"
            } else {
                ""
            }
        ),
    );
    if let Some(states) = v["calls_by_state"].as_object().filter(|m| !m.is_empty()) {
        let parts: Vec<String> = states.iter().map(|(k, c)| format!("{k} {c}")).collect();
        line(&mut s, "  by state", parts.join(", "));
    }
    if let Some(agents) = v["agents"].as_object() {
        let parts: Vec<String> = agents.iter().map(|(k, c)| format!("{k} {c}")).collect();
        line(
            &mut s,
            "agents",
            if parts.is_empty() {
                "none".into()
            } else {
                parts.join(", ")
            },
        );
    }
    line(
        &mut s,
        "rtp ports",
        format!(
            "{} free of {}",
            n(&v["rtp_ports_free"]),
            n(&v["rtp_ports_total"])
        ),
    );
    line(
        &mut s,
        "flows",
        format!(
            "{} flows, {} prompts (catalog version {})",
            n(&v["flows"]),
            n(&v["prompts"]),
            n(&v["catalog_version"])
        ),
    );
    if let Some(backends) = v["backends"].as_object().filter(|b| !b.is_empty()) {
        let parts: Vec<String> = backends
            .iter()
            .map(|(name, b)| match b["up"].as_bool() {
                Some(true) => format!("{name} up ({} calls)", n(&b["calls"])),
                Some(false) => format!("{name} DOWN"),
                None => name.clone(),
            })
            .collect();
        line(&mut s, "backends", parts.join(", "));
    }
    let auth = &v["auth"];
    if auth.is_object() {
        line(
            &mut s,
            "auth",
            format!(
                "{} sources and {} accounts locked out now",
                n(&auth["sources_blocked_now"]),
                auth["accounts_blocked_now"].as_array().map_or(0, Vec::len)
            ),
        );
    }
    if let Some(queues) = v["queues"].as_array().filter(|q| !q.is_empty()) {
        s.push('\n');
        s.push_str(&render(
            View::Queues,
            &Value::Array(queues.clone()),
            0,
            false,
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_local_and_spans_read_as_clocks() {
        // 2026-12-07 06:40:07 UTC is 14:40:07 in Beijing (UTC+8).
        assert_eq!(local_time(1_796_625_607_000, 480), "2026-12-07 14:40:07");
        assert_eq!(local_time(1_796_625_607_000, 0), "2026-12-07 06:40:07");
        assert_eq!(local_time(0, 480), "");
        assert_eq!(span(65_000), "1:05");
        assert_eq!(span(3_725_000), "1:02:05");
    }

    #[test]
    fn a_queue_without_a_server_shows_its_keys_and_no_figures() {
        let v = serde_json::json!([
            {"name": "water", "description": "供水", "keys": {"strategy": "ring-all"}},
            {"name": "main", "description": "", "keys": {}, "strategy": "longest-idle",
             "waiting": 2, "longest_wait_ms": 75_000, "free": 1, "members": 4}
        ]);
        let text = render(View::Queues, &v, 480, false);
        assert!(text.contains("water  ring-all"), "{text}");
        assert!(text.contains("main   longest-idle"), "{text}");
        assert!(text.contains("1:15"), "{text}");
    }
}

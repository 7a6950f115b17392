//! The house's imports point down: each top-level module of `src/` sits in
//! a layer (ARCHITECTURE.md, "Layers"), and may use modules of its own layer
//! or below, never above; and no two top-level modules use each other,
//! directly or around a circle.
//!
//! Read from the source text: every `crate::name` outside comments and
//! outside a file's `#[cfg(test)] mod tests`, and every name in a
//! `use crate::{…}` group. A known exception is listed with the work that
//! removes it; an exception that no longer occurs fails too, so the list
//! only shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom to top. A module may use its own layer and those before it.
const LAYERS: &[(&str, &[&str])] = &[
    ("foundation", &["boxed", "clock", "text", "notify"]),
    ("protocol", &["sip", "media"]),
    ("SIP endpoint", &["endpoint"]),
    (
        "number plan and limits",
        &["routing", "outbound", "overload"],
    ),
    ("settings", &["config"]),
    ("records and instruments", &["store", "events", "meters"]),
    ("calls", &["registrar", "ivr", "acd", "call", "backends"]),
    ("back office", &["admin", "api", "webhooks"]),
    ("wiring and tools", &["server", "fuzzing", "load"]),
];

/// Uses that still climb, each with what removes it. Empty: keep it so.
const KNOWN_CLIMBS: &[(&str, &str)] = &[];

/// The top-level modules each top-level module uses.
fn uses() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in files {
        let rel = path.strip_prefix(&src).expect("under src");
        let first = rel
            .components()
            .next()
            .expect("a path")
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if first == "lib" || first == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a source file");
        let text = match text.find("#[cfg(test)]\nmod tests") {
            Some(at) => &text[..at],
            None => &text[..],
        };
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let used = graph.entry(first.clone()).or_default();
        for name in crate_paths(&code) {
            if name != first {
                used.insert(name);
            }
        }
    }
    graph
}

/// The first name after each `crate::`, and each name opening a path in a
/// `crate::{…}` group.
fn crate_paths(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        start = true;
                        continue;
                    }
                    _ => {}
                }
                if start && !c.is_whitespace() && depth == 0 {
                    names.push(ident(&group[i..]));
                    start = false;
                }
            }
        } else {
            names.push(ident(rest));
        }
    }
    names.retain(|n| !n.is_empty() && n != "self");
    names
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

#[test]
fn every_module_has_a_layer_and_uses_only_its_own_or_lower_ones() {
    let graph = uses();
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("lib.rs");
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_string())
        .collect();
    let unplaced: Vec<&String> = declared.iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "modules with no layer in tests/layers.rs (and ARCHITECTURE.md): {unplaced:?}"
    );
    let mut climbs = Vec::new();
    let mut seen_known = BTreeSet::new();
    for (from, used) in &graph {
        for to in used {
            let (Some(a), Some(b)) = (layer_of(from), layer_of(to)) else {
                continue;
            };
            if b > a {
                if KNOWN_CLIMBS.contains(&(from.as_str(), to.as_str())) {
                    seen_known.insert((from.clone(), to.clone()));
                } else {
                    climbs.push(format!(
                        "{from} ({}) uses {to} ({})",
                        LAYERS[a].0, LAYERS[b].0
                    ));
                }
            }
        }
    }
    assert!(
        climbs.is_empty(),
        "imports that point up:\n  {}",
        climbs.join("\n  ")
    );
    let gone: Vec<_> = KNOWN_CLIMBS
        .iter()
        .filter(|(a, b)| !seen_known.contains(&(a.to_string(), b.to_string())))
        .collect();
    assert!(
        gone.is_empty(),
        "these known climbs no longer happen; take them off KNOWN_CLIMBS: {gone:?}"
    );
}

#[test]
fn no_two_modules_use_each_other_around_a_circle() {
    let mut graph = uses();
    for (from, to) in KNOWN_CLIMBS {
        if let Some(used) = graph.get_mut(*from) {
            used.remove(*to);
        }
    }
    // Depth-first search for a back edge; report the circle it closes.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(circle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("modules use each other: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn the_reader_sees_paths_and_groups() {
    let code = "use crate::a::b;\nlet x = crate::c::d();\nuse crate::{e::f, g, h::{i, j}, self};";
    assert_eq!(crate_paths(code), ["a", "c", "e", "g", "h"]);
}

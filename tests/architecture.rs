//! The layering rules of `docs/architecture.md`, checked on the source text: every `crate::`
//! path in `src/` (the binaries aside) is an arrow from its top-level module to another, and
//! - no arrow runs up the layers (domain → store, auth → metrics → hub → http → commands);
//! - the top-level modules import each other in no circle;
//! - the hub never imports `http` (nor hyper), the store never imports `auth`, and `domain`
//!   does no I/O (no `std::fs`, `std::net`, tokio, hyper or redb).
//!
//! The checker is plain text scanning, so it is tested on made-up sources too: each rule is
//! shown to fail on a file that breaks it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, ground up. An arrow may stay within a layer or go down, never up.
const LAYERS: &[(&str, u8)] = &[
    ("domain", 0),
    ("store", 1),
    ("auth", 1),
    ("tls", 1),
    ("metrics", 2),
    ("hub", 3),
    // Cluster mode: above the store (its writer's replicator) and metrics, below http (which
    // forwards writes and answers /readyz from it). The only user of async-nats.
    ("cluster", 3),
    ("http", 4),
    ("client", 4),
    ("cli", 5),
    ("config", 6),
    ("run", 7),
    ("demo", 7),
    ("watch", 7),
    ("db", 7),
    ("testing", 8),
];

/// (folder under `src/`, text that must not appear in its code, why).
const NEVER: &[(&str, &str, &str)] = &[
    ("hub", "crate::http", "the hub never imports http"),
    (
        "hub",
        "hyper::",
        "the hub is no HTTP server: http/ upgrades and hands it a stream",
    ),
    ("store", "crate::auth", "the store never imports auth"),
    (
        "store",
        "async_nats",
        "the store knows the cluster's log only as a Replicator",
    ),
    ("hub", "async_nats", "NATS is the cluster module's"),
    ("http", "async_nats", "NATS is the cluster module's"),
    ("domain", "std::fs", "domain has no I/O"),
    ("domain", "std::net", "domain has no I/O"),
    ("domain", "tokio", "domain has no I/O"),
    ("domain", "hyper", "domain has no I/O"),
    ("domain", "redb", "domain has no I/O"),
];

/// One source file: its top-level module and its code with comments removed.
struct Source {
    path: String,
    module: String,
    code: String,
}

/// Drops `//` comments (doc comments included) so prose that names a path is not an arrow.
/// String literals are kept whole: a `//` inside one does not start a comment.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = '\0';
        let mut cut = line.len();
        for (i, c) in line.char_indices() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            }
            if !in_str && c == '/' && prev == '/' {
                cut = i - 1;
                break;
            }
            prev = c;
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

/// The top-level modules named by `crate::` paths in `code`, `crate::{a, b::c}` included.
fn crate_imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `$crate::` or `mycrate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(ident(&group[start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(&group[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.remove("");
    found
}

/// The library's sources: `src/**/*.rs` without `lib.rs`, `main.rs` and `src/bin/`.
fn library_sources(root: &Path) -> Vec<Source> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read src/")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    let src = root.join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&src).expect("under src/").to_path_buf();
            let first = rel.components().next()?.as_os_str().to_str()?.to_string();
            if first == "bin" || rel == Path::new("lib.rs") || rel == Path::new("main.rs") {
                return None;
            }
            let module = first.trim_end_matches(".rs").to_string();
            let text = std::fs::read_to_string(&p).expect("read source");
            Some(Source {
                path: format!("src/{}", rel.display()),
                module,
                code: strip_comments(&text),
            })
        })
        .collect()
}

/// Every broken rule, one line each.
fn violations(sources: &[Source]) -> Vec<String> {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut problems = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in sources {
        let Some(&from) = layer.get(s.module.as_str()) else {
            problems.push(format!(
                "{}: module `{}` is in no layer (add it to LAYERS and docs/architecture.md)",
                s.path, s.module
            ));
            continue;
        };
        for (dir, text, why) in NEVER {
            if s.module == *dir && s.code.contains(text) {
                problems.push(format!("{}: uses `{text}`: {why}", s.path));
            }
        }
        for target in crate_imports(&s.code) {
            if target == s.module {
                continue;
            }
            match layer.get(target.as_str()) {
                None => problems.push(format!(
                    "{}: imports `crate::{target}`, a module in no layer",
                    s.path
                )),
                Some(&to) if to > from => problems.push(format!(
                    "{}: `{}` (layer {from}) imports `crate::{target}` (layer {to}): an arrow up",
                    s.path, s.module
                )),
                Some(_) => {}
            }
            graph.entry(s.module.clone()).or_default().insert(target);
        }
    }
    problems.extend(circles(&graph));
    problems
}

/// The import circles between top-level modules, each as `a -> b -> a`.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut BTreeSet<String>,
    ) {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            found.insert(format!("import circle: {}", cycle.join(" -> ")));
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done, found);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut found = BTreeSet::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found.into_iter().collect()
}

#[test]
fn the_source_tree_keeps_the_layering_rules() {
    let sources = library_sources(Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(
        sources.len() > 20 && sources.iter().any(|s| s.module == "hub"),
        "the checker found the sources"
    );
    let problems = violations(&sources);
    assert!(
        problems.is_empty(),
        "layering rules broken (docs/architecture.md):\n{}",
        problems.join("\n")
    );
}

fn fake(path: &str, code: &str) -> Source {
    let module = path
        .trim_start_matches("src/")
        .split('/')
        .next()
        .unwrap_or("")
        .trim_end_matches(".rs")
        .to_string();
    Source {
        path: path.into(),
        module,
        code: strip_comments(code),
    }
}

#[test]
fn each_rule_fails_on_a_tree_that_breaks_it() {
    let clean = [
        fake("src/domain/order.rs", "use super::status::Action;"),
        fake("src/store/mod.rs", "use crate::domain::{Order, Principal};"),
        fake(
            "src/hub/mod.rs",
            "use crate::{domain::OrderEvent, store::Store};",
        ),
        fake(
            "src/http/hubs.rs",
            "use crate::hub::Hubs;\nuse hyper::Request;",
        ),
    ];
    assert_eq!(violations(&clean), Vec::<String>::new());

    let broken = |extra: Source| {
        let mut tree: Vec<Source> = clean.iter().map(|s| fake(&s.path, &s.code)).collect();
        tree.push(extra);
        violations(&tree)
    };
    let hub_up = broken(fake("src/hub/connection.rs", "use crate::http::App;"));
    assert!(
        hub_up
            .iter()
            .any(|p| p.contains("the hub never imports http")),
        "{hub_up:?}"
    );
    assert!(
        hub_up.iter().any(|p| p.contains("an arrow up")),
        "{hub_up:?}"
    );
    assert!(
        hub_up.iter().any(|p| p.contains("import circle: ")),
        "{hub_up:?}"
    );
    let store_auth = broken(fake("src/store/writer.rs", "use crate::auth::Principal;"));
    assert!(
        store_auth
            .iter()
            .any(|p| p.contains("store never imports auth")),
        "{store_auth:?}"
    );
    let io = broken(fake(
        "src/domain/time.rs",
        "fn now() { std::fs::read(\"x\"); }",
    ));
    assert!(io.iter().any(|p| p.contains("domain has no I/O")), "{io:?}");
    let grouped = broken(fake(
        "src/domain/event.rs",
        "use crate::{hub::{Group, Hubs}};",
    ));
    assert!(
        grouped.iter().any(|p| p.contains("an arrow up")),
        "{grouped:?}"
    );
    let stranger = broken(fake("src/extra.rs", "fn f() {}"));
    assert!(
        stranger.iter().any(|p| p.contains("in no layer")),
        "{stranger:?}"
    );
    let prose = broken(fake(
        "src/domain/money.rs",
        "/// Unlike crate::http, this is pure.\nlet s = \"//\"; // crate::hub",
    ));
    assert_eq!(prose, Vec::<String>::new(), "comments are not arrows");
}

//! The module graph of `src/` matches the design: `core` is a leaf (it uses nothing of
//! the crate but `error`), no two modules import each other through any path (the graph
//! is acyclic), and each actor imports only the actors downstream of it.
//!
//! A module here is a top-level module of the library (`core`, `wal`, `snapshot`, …),
//! except under `src/actor/`, where each file is its own (`actor::appender`, …;
//! `actor/mod.rs` is `actor`). An edge is any `crate::<module>` path in a module's code
//! (its `#[cfg(test)]` part left out), or `super::<name>` inside `actor/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

fn unit_of(rel: &str) -> Option<String> {
    let rel = rel.strip_suffix(".rs")?;
    let parts: Vec<&str> = rel.split('/').collect();
    match parts.as_slice() {
        ["lib"] | ["main"] | ["main", ..] | ["bin", ..] => None,
        ["actor", "mod"] => Some("actor".into()),
        ["actor", file] => Some(format!("actor::{file}")),
        // An actor split into a directory is one module: `actor/appender/*.rs`.
        ["actor", dir, _] => Some(format!("actor::{dir}")),
        [first, ..] => Some(first.to_string()),
        [] => None,
    }
}

/// The code of a file without comments and without its test module.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

fn idents_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    code.match_indices(prefix)
        .map(|(i, _)| {
            let rest = &code[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|s| !s.is_empty())
        .collect()
}

fn expand_braces(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::{") {
        out.push_str(&rest[..i]);
        let inner = &rest[i + "crate::{".len()..];
        let end = inner.find('}').unwrap_or(inner.len());
        for item in inner[..end].split(',') {
            out.push_str(&format!(" crate::{} ", item.trim()));
        }
        rest = &inner[(end + 1).min(inner.len())..];
    }
    out.push_str(rest);
    out
}

/// The names `lib.rs` re-exports at the crate root, and the module each comes from.
fn root_reexports(src: &Path) -> BTreeMap<String, String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let mut out = BTreeMap::new();
    for item in lib.split("pub use ").skip(1) {
        let item = &item[..item.find(';').unwrap()];
        let module = item.split("::").next().unwrap().trim().to_string();
        let names = item.rsplit("::").next().unwrap();
        for name in names.trim_matches(|c| c == '{' || c == '}').split(',') {
            let name = name.split(" as ").last().unwrap().trim();
            if !name.is_empty() {
                out.insert(name.to_string(), module.clone());
            }
        }
    }
    out
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let roots = root_reexports(&src);
    let mut graph = Graph::new();
    for (rel, code) in library_files() {
        let Some(unit) = unit_of(&rel) else { continue };
        let deps = graph.entry(unit.clone()).or_default();
        // `crate::actor::x` names the actor file `x`, other paths their top module.
        // `crate::{a, b::c}` stands for `crate::a` and `crate::b::c`.
        let code = expand_braces(&code);
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let first = idents_after(rest, "").first().copied().unwrap_or_default();
            let dep = if first == "actor" {
                let sub = rest.strip_prefix("actor::").map(|r| idents_after(r, "")[0]);
                match sub {
                    Some(s) if is_actor(&src, s) => {
                        format!("actor::{s}")
                    }
                    _ => "actor".to_string(),
                }
            } else {
                first.to_string()
            };
            // `crate::Result` and the like: the module the root re-exports it from.
            let dep = roots.get(&dep).cloned().unwrap_or(dep);
            if !dep.is_empty() && dep != unit {
                deps.insert(dep);
            }
        }
        if unit.starts_with("actor") {
            for name in idents_after(&code, "super::") {
                let dep = if is_actor(&src, name) {
                    format!("actor::{name}")
                } else {
                    "actor".to_string()
                };
                if dep != unit {
                    deps.insert(dep);
                }
            }
        }
    }
    graph
}

/// Whether `actor/<name>` is an actor module (a file or a directory).
fn is_actor(src: &Path, name: &str) -> bool {
    src.join("actor").join(format!("{name}.rs")).exists() || src.join("actor").join(name).is_dir()
}

/// A cycle in `graph`, if there is one, as the list of modules around it.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(1) => {
                let start = path.iter().position(|n| n == node).unwrap();
                let mut c = path[start..].to_vec();
                c.push(node.to_string());
                return Some(c);
            }
            Some(_) => return None,
            None => {}
        }
        state.insert(node.to_string(), 1);
        path.push(node.to_string());
        for dep in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(dep, graph, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn core_is_a_leaf() {
    let graph = graph();
    let deps = &graph["core"];
    let outside: Vec<_> = deps.iter().filter(|d| *d != "error").collect();
    assert!(
        outside.is_empty(),
        "core uses {outside:?}: it may use nothing of the crate but `error`"
    );
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    assert!(graph.len() > 10, "too few modules found: {graph:?}");
    if let Some(c) = cycle(&graph) {
        panic!("import cycle: {}", c.join(" -> "));
    }
}

#[test]
fn actors_import_only_what_sits_downstream() {
    let graph = graph();
    let order = [
        "actor::appender",
        "actor::snapshotter",
        "actor::compactor",
        "actor::uploader",
    ];
    for (i, actor) in order.iter().enumerate() {
        for upstream in &order[..i] {
            assert!(
                !graph[*actor].contains(*upstream),
                "{actor} imports {upstream}, which sits upstream of it"
            );
        }
    }
}

#[test]
fn the_checker_finds_a_planted_cycle() {
    let mut graph = graph();
    graph
        .get_mut("core")
        .unwrap()
        .insert("actor::appender".into());
    assert!(cycle(&graph).is_some());
}

/// The files of the library, with their code (comments and test modules left out),
/// by path under `src/`.
fn library_files() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(&src)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                out.insert(rel, code(&std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out
}

/// Only the edge speaks JSON: the router (the protocol, and the stdin/stdout
/// transport's peer codec), and what is JSON by nature: the store's manifest,
/// `inspect`'s report and the binaries. The actors, the cluster and consensus
/// hand typed values to whoever encodes them, so that a transport can use another codec.
#[test]
fn json_is_spoken_only_at_the_edge() {
    let allowed = |f: &str| {
        f.starts_with("router/")
            || f.starts_with("bin/")
            || f.starts_with("main/")
            || ["main.rs", "client.rs", "inspect.rs", "store/mod.rs"].contains(&f)
    };
    let speaking: Vec<_> = library_files()
        .into_iter()
        .filter(|(f, code)| code.contains("serde_json") && !allowed(f))
        .map(|(f, _)| f)
        .collect();
    assert!(
        speaking.is_empty(),
        "these files speak JSON, which only the router, the client and the binaries may: \
         {speaking:?}"
    );
}

/// The files of one directory of `src/` as modules: an edge from a file to each
/// sibling it names (`super::x`, `crate::<dir>::x`, or inside `use super::{…}`), with
/// `mod.rs`, which holds what the files share, left out as the hub they all use. A
/// subdirectory is one module (its files' `super::` is its own `mod.rs`: only
/// `crate::<dir>::x` and `super::super::x` name a sibling from them).
fn inner_graph(dir: &str) -> Graph {
    let files = library_files();
    let prefix = format!("{dir}/");
    // Each sibling module with its files' code, and whether a file is in a
    // subdirectory below `mod.rs`.
    let mut modules: BTreeMap<String, Vec<(bool, &String)>> = BTreeMap::new();
    for (f, code) in &files {
        let Some(rest) = f.strip_prefix(&prefix) else {
            continue;
        };
        let parts: Vec<&str> = rest.trim_end_matches(".rs").split('/').collect();
        match parts.as_slice() {
            ["mod"] => {}
            [name] => modules
                .entry(name.to_string())
                .or_default()
                .push((false, code)),
            [name, "mod"] => modules
                .entry(name.to_string())
                .or_default()
                .push((false, code)),
            [name, ..] => modules
                .entry(name.to_string())
                .or_default()
                .push((true, code)),
            [] => {}
        }
    }
    let mut graph = Graph::new();
    for (name, codes) in &modules {
        let deps = graph.entry(name.clone()).or_default();
        for (below, code) in codes {
            let code = expand_braces(code)
                .replace("super::super::", "SIBLING::")
                .replace("super::{", "super::{ ");
            let mut named: Vec<&str> = idents_after(&code, "SIBLING::");
            named.extend(idents_after(&code, &format!("crate::{dir}::")));
            if !below {
                named.extend(idents_after(&code, "super::"));
                // `use super::{a, b::c}`: each item in the braces.
                for (i, _) in code.match_indices("super::{") {
                    let inner = &code[i + "super::{".len()..];
                    let inner = &inner[..inner.find('}').unwrap_or(inner.len())];
                    named.extend(
                        inner
                            .split(',')
                            .map(|s| s.trim().split("::").next().unwrap_or("")),
                    );
                }
            }
            for n in named {
                if modules.contains_key(n) && n != name {
                    deps.insert(n.to_string());
                }
            }
        }
    }
    graph
}

/// Inside the replicated wing and the router, files form layers too: no two files of
/// one directory import each other through any path.
#[test]
fn the_files_inside_each_wing_have_no_cycle() {
    for dir in [
        "cluster",
        "consensus",
        "raftlog",
        "router",
        "store",
        "transport",
    ] {
        let graph = inner_graph(dir);
        assert!(graph.len() >= 2, "too few files found in {dir}: {graph:?}");
        if let Some(c) = cycle(&graph) {
            panic!("import cycle inside {dir}: {}", c.join(" -> "));
        }
    }
    // The check sees the edges it must: the consensus actor drives the snapshotter,
    // which carries out the transfer's state machines (from a file of its directory).
    let cluster = inner_graph("cluster");
    assert!(cluster["manage"].contains("snapshotter"));
    assert!(cluster["snapshotter"].contains("transfer"));
    assert!(!cluster["transfer"].contains("snapshotter"), "{cluster:?}");
}

/// No file of the library is longer than 800 lines, the two simulations excepted (a
/// file that long does several jobs: split it where they part).
#[test]
fn no_library_file_is_longer_than_800_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let long: Vec<(String, usize)> = library_files()
        .into_keys()
        .filter(|f| !f.starts_with("bin/") && f != "main.rs" && !f.starts_with("main/"))
        .filter(|f| !["consensus/sim.rs", "fs/sim.rs"].contains(&f.as_str()))
        .map(|f| {
            let lines = std::fs::read_to_string(src.join(&f))
                .unwrap()
                .lines()
                .count();
            (f, lines)
        })
        .filter(|(_, lines)| *lines > 800)
        .collect();
    assert!(long.is_empty(), "library files over 800 lines: {long:?}");
}

/// The Raft core is pure: `consensus` (its simulation and hand-driven tests aside)
/// uses nothing of the crate but `core` and `error`; the Raft log's disk is `raftlog`,
/// below the cluster and beside the store, and never imports what drives it.
#[test]
fn the_raft_core_does_no_io_and_its_disk_imports_nothing_above_it() {
    let graph = graph();
    let files = library_files();
    for (file, code) in &files {
        let Some(rest) = file.strip_prefix("consensus/") else {
            continue;
        };
        if rest == "sim.rs" || rest.starts_with("rules/") {
            continue;
        }
        let code = expand_braces(code);
        for dep in idents_after(&code, "crate::") {
            assert!(
                ["core", "error", "consensus"].contains(&dep),
                "consensus/{rest} uses crate::{dep}: the Raft core does no I/O and knows \
                 nothing above it (its disk is `raftlog`)"
            );
        }
    }
    for above in ["cluster", "router", "store", "actor", "node", "inspect"] {
        assert!(
            !graph["raftlog"].iter().any(|d| d.starts_with(above)),
            "raftlog imports {above}, which sits above it"
        );
    }
    assert!(graph["raftlog"].contains("consensus"));
}

//! The order of syscalls, checked with strace on the real binary.
//!
//! Under a load with segment rolls, snapshots and compactions, the trace must show:
//! every `wal_append_ok` written to stdout after an fdatasync of the segment holding
//! that entry (which completed after the entry's pwrite), and after the directory
//! fsync that made that segment's name durable; every snapshot rename after an
//! fdatasync of its temp file and followed by a directory fsync before any segment is
//! unlinked and before the snapshot is acknowledged; every segment unlink after the new
//! first offset (`log.meta`) was renamed into place and its directory synced.
//! Skipped, saying why, where strace is missing or not permitted.

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::support::{init, lines, msg};

#[derive(Debug, Clone)]
struct Call {
    name: String,
    args: Vec<Arg>,
    ret: i64,
    /// Line where the call started and where it completed.
    start: usize,
    end: usize,
}

#[derive(Debug, Clone)]
enum Arg {
    Bytes(Vec<u8>),
    Other(String),
}

impl Arg {
    fn bytes(&self) -> &[u8] {
        match self {
            Arg::Bytes(b) => b,
            Arg::Other(o) => panic!("expected a string argument, got {o}"),
        }
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }
    fn int(&self) -> i64 {
        match self {
            Arg::Other(o) => o.trim().parse().unwrap_or(-1),
            Arg::Bytes(_) => -1,
        }
    }
}

/// Splits `a, "\x41\x42", 3` into arguments, decoding `-xx` strings.
fn parse_args(s: &str) -> Vec<Arg> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        if b[i] == b'"' {
            let mut bytes = Vec::new();
            i += 1;
            while i < b.len() && b[i] != b'"' {
                // -xx prints every byte as \xHH
                let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
                bytes.push(u8::from_str_radix(hex, 16).unwrap());
                i += 4;
            }
            i += 1;
            if b.get(i..i + 3) == Some(b"...") {
                i += 3;
            }
            out.push(Arg::Bytes(bytes));
        } else {
            let start = i;
            let mut depth = 0;
            while i < b.len() && !(b[i] == b',' && depth == 0) {
                match b[i] {
                    b'[' | b'{' | b'(' => depth += 1,
                    b']' | b'}' | b')' => depth -= 1,
                    _ => {}
                }
                i += 1;
            }
            out.push(Arg::Other(s[start..i].trim().to_string()));
        }
    }
    out
}

fn parse_trace(text: &str) -> Vec<Call> {
    let mut pending: HashMap<String, (String, usize)> = HashMap::new();
    let mut calls = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let Some((pid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let (full, start) = if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid.to_string(), (head.to_string(), idx));
            continue;
        } else if let Some(tail) = rest.strip_prefix("<... ") {
            let Some((_, after)) = tail.split_once("resumed>") else {
                continue;
            };
            let Some((head, start)) = pending.remove(pid) else {
                continue;
            };
            (format!("{head}{after}"), start)
        } else {
            (rest.to_string(), idx)
        };
        // `name(args) = ret`, where strace pads short calls with spaces before `=`.
        let Some(open) = full.find('(') else { continue };
        let Some(eq) = full.rfind(" = ") else {
            continue;
        };
        let Some(args) = full[open + 1..eq].trim_end().strip_suffix(')') else {
            continue;
        };
        let ret = full[eq + 3..]
            .split_whitespace()
            .next()
            .unwrap_or("-1")
            .parse()
            .unwrap_or(-1);
        calls.push(Call {
            name: full[..open].to_string(),
            args: parse_args(args),
            ret,
            start,
            end: idx,
        });
    }
    calls
}

/// Offsets of the records in a pwrite to a segment.
fn record_offsets(mut data: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    while data.len() >= 16 {
        // The top bit of the length field is the after-sync flag.
        let len = (u32::from_le_bytes(data[4..8].try_into().unwrap())
            & !flintlog::wal::record::AFTER_SYNC) as usize;
        out.push(u64::from_le_bytes(data[8..16].try_into().unwrap()));
        data = &data[(16 + len).min(data.len())..];
    }
    out
}

fn workload() -> Vec<u8> {
    workload_with(true)
}

/// The 600 appends, with the admin's snapshots and compactions when `admin`.
fn workload_with(admin: bool) -> Vec<u8> {
    let mut input = vec![init(1)];
    let mut sent = 0u64;
    for n in 0..600u64 {
        let src = format!("c{}", n % 3);
        input.push(msg(
            &src,
            json!({"type": "wal_append", "msg_id": n, "payload": format!("set k{n}=value-{n}")}),
        ));
        sent += 1;
        if admin && n % 50 == 49 {
            input.push(msg("adm", json!({"type": "wal_snapshot", "msg_id": n})));
        }
        if admin && n % 120 == 119 {
            input.push(msg("adm", json!({"type": "wal_compact", "msg_id": n + 10_000, "snapshot_at_offset": sent - 100})));
        }
    }
    lines(&input)
}

/// The first path argument of a call (the `*at` forms start with a descriptor).
fn first_path(c: &Call) -> String {
    c.args
        .iter()
        .find(|a| matches!(a, Arg::Bytes(_)))
        .expect("a path argument")
        .text()
}

/// What one traced run found.
struct Traced {
    calls: usize,
    acks: usize,
    snapshot_renames: usize,
    segment_unlinks: usize,
    violations: Vec<String>,
}

/// Runs the node under `strace` with `args` on `input` and checks the trace; `None`
/// when strace cannot run here (reported through `cannot_run`).
fn trace(args: &[&str], input: Vec<u8>) -> Option<Traced> {
    if Command::new("strace").arg("-V").output().is_err() {
        crate::support::cannot_run(
            "syscall order",
            "strace is not installed (.ci/run installs it)",
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let trace_path = dir.path().join("trace");
    let mut child = Command::new("strace")
        .args(["-f", "-xx", "-s", "1000000", "-o"])
        .arg(&trace_path)
        .args(["-e", "trace=openat,close,pwrite64,write,fdatasync,fsync,rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat"])
        .arg(crate::support::binary())
        .args(args)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success()
        && (stderr.contains("PTRACE") || stderr.contains("Operation not permitted"))
    {
        let why = format!(
            "strace may not trace here: {}",
            stderr.lines().next().unwrap_or("")
        );
        crate::support::cannot_run("syscall order", &why);
        return None;
    }
    assert!(out.status.success(), "{stderr}");
    let calls = parse_trace(&std::fs::read_to_string(&trace_path).unwrap());

    // Replay the trace: paths of descriptors, and the events worth checking.
    let mut fd_path: HashMap<i64, String> = HashMap::new();
    let mut record_written: BTreeMap<u64, (usize, String)> = BTreeMap::new();
    let mut datasyncs: Vec<(usize, String)> = Vec::new();
    let mut dir_syncs: Vec<(usize, String)> = Vec::new();
    let mut renames: Vec<(usize, String, String)> = Vec::new();
    let mut unlinks: Vec<(usize, String)> = Vec::new();
    let mut mkdirs: Vec<(usize, String)> = Vec::new();
    let mut last_write: HashMap<String, usize> = HashMap::new();
    let mut replies: Vec<(usize, Value)> = Vec::new();
    // A close releases its descriptor as it starts, so another thread's open may
    // complete (and be printed) before the close returns: replay closes at their
    // start, everything else at its completion.
    let mut ordered: Vec<(usize, &Call)> = calls
        .iter()
        .map(|c| (if c.name == "close" { c.start } else { c.end }, c))
        .collect();
    ordered.sort_by_key(|(at, _)| *at);
    for (_, c) in ordered {
        match c.name.as_str() {
            "openat" if c.ret >= 0 => {
                fd_path.insert(c.ret, c.args[1].text());
            }
            "close" => {
                fd_path.remove(&c.args[0].int());
            }
            "pwrite64" if c.ret >= 0 => {
                let path = fd_path.get(&c.args[0].int()).cloned().unwrap_or_default();
                last_write.insert(path.clone(), c.end);
                if path.ends_with(".log") && c.args[3].int() >= 32 {
                    for o in record_offsets(c.args[1].bytes()) {
                        record_written.insert(o, (c.end, path.clone()));
                    }
                }
            }
            "fdatasync" if c.ret == 0 => {
                datasyncs.push((
                    c.end,
                    fd_path.get(&c.args[0].int()).cloned().unwrap_or_default(),
                ));
            }
            "fsync" if c.ret == 0 => dir_syncs.push((
                c.end,
                fd_path.get(&c.args[0].int()).cloned().unwrap_or_default(),
            )),
            "rename" | "renameat" | "renameat2" if c.ret == 0 => {
                let strings: Vec<String> = c
                    .args
                    .iter()
                    .filter(|a| matches!(a, Arg::Bytes(_)))
                    .map(Arg::text)
                    .collect();
                renames.push((c.end, strings[0].clone(), strings[1].clone()));
            }
            "mkdir" | "mkdirat" if c.ret == 0 => mkdirs.push((c.end, first_path(c))),
            "unlink" | "unlinkat" if c.ret == 0 => unlinks.push((c.end, first_path(c))),
            "write" if c.args[0].int() == 1 => {
                for line in c.args[1].text().lines() {
                    replies.push((
                        c.start,
                        serde_json::from_str(line).expect("a protocol line"),
                    ));
                }
            }
            _ => {}
        }
    }
    let synced_between = |path: &str, after: usize, before: usize| {
        datasyncs
            .iter()
            .any(|(i, p)| p == path && *i > after && *i < before)
    };
    // A directory sync counts for a file only if it is of the directory holding it.
    let dir_synced_between = |file: &str, after: usize, before: usize| {
        let dir = std::path::Path::new(file)
            .parent()
            .unwrap_or(std::path::Path::new(""));
        dir_syncs
            .iter()
            .any(|(i, p)| std::path::Path::new(p) == dir && *i > after && *i < before)
    };
    let mut violations = Vec::new();

    let mut acks = 0;
    for (at, r) in &replies {
        let body = &r["body"];
        if body["type"] == "wal_append_ok" {
            acks += 1;
            let o = body["offset"].as_u64().unwrap();
            let Some((written, path)) = record_written.get(&o) else {
                violations.push(format!("offset {o} acknowledged but never written"));
                continue;
            };
            if !synced_between(path, *written, *at) {
                violations.push(format!(
                    "offset {o} acknowledged before an fdatasync of {path}"
                ));
            }
            match renames.iter().rfind(|(_, _, to)| to == path) {
                Some((r, _, _)) if dir_synced_between(path, *r, *at) => {}
                _ => violations.push(format!(
                    "offset {o} acknowledged before {path} was durable in its directory"
                )),
            }
        }
    }
    // A directory the node created must have its entry made durable (a sync of its
    // parent) before anything in it is acknowledged.
    let first_ack = replies
        .iter()
        .find(|(_, r)| r["body"]["type"] == "wal_append_ok")
        .map_or(usize::MAX, |(at, _)| *at);
    let node_dir_created = mkdirs.iter().any(|(_, p)| p.ends_with("/n1"));
    for (m, path) in &mkdirs {
        if !dir_synced_between(path, *m, first_ack) {
            violations.push(format!(
                "{path} created, but its parent was not synced before the first acknowledgement"
            ));
        }
    }
    let mut snapshot_renames = 0;
    // Full snapshots and deltas follow the same recipe.
    let snapshot_temp = |f: &str| f.ends_with(".snap.tmp") || f.ends_with(".delta.tmp");
    for (r, from, to) in renames.iter().filter(|(_, f, _)| snapshot_temp(f)) {
        snapshot_renames += 1;
        if !synced_between(from, last_write.get(from).copied().unwrap_or(0).min(*r), *r) {
            violations.push(format!("{to} renamed before its temp file was synced"));
        }
        let next_unlink = unlinks
            .iter()
            .find(|(u, p)| u > r && p.ends_with(".log"))
            .map_or(usize::MAX, |(u, _)| *u);
        let ack = replies
            .iter()
            .filter(|(at, reply)| at > r && reply["body"]["type"] == "wal_snapshot_ok")
            .map(|(at, _)| *at)
            .next()
            .unwrap_or(usize::MAX);
        if !dir_synced_between(to, *r, next_unlink.min(ack)) {
            violations.push(format!(
                "{to}: no directory fsync between its rename and the next unlink or acknowledgement"
            ));
        }
    }
    let mut segment_unlinks = 0;
    for (u, path) in unlinks.iter().filter(|(_, p)| p.ends_with(".log")) {
        segment_unlinks += 1;
        match renames
            .iter()
            .rfind(|(r, from, _)| r < u && from.ends_with("log.meta.tmp"))
        {
            Some((m, to, _)) if dir_synced_between(to, *m, *u) => {}
            _ => violations.push(format!(
                "{path} unlinked before the new first offset was durable"
            )),
        }
    }
    assert!(
        node_dir_created,
        "the trace must show the node's directory being created"
    );
    Some(Traced {
        calls: calls.len(),
        acks,
        snapshot_renames,
        segment_unlinks,
        violations,
    })
}

#[test]
fn syscalls_happen_in_the_durable_order() {
    let args = ["--fsync", "always", "--max-segment-bytes", "8192"];
    let Some(t) = trace(&args, workload()) else {
        return;
    };
    println!(
        "syscall order: {} syscalls traced, {} acknowledgements, {} snapshot renames, \
         {} segment unlinks checked, {} violations",
        t.calls,
        t.acks,
        t.snapshot_renames,
        t.segment_unlinks,
        t.violations.len()
    );
    assert!(
        t.acks == 600 && t.snapshot_renames > 0 && t.segment_unlinks > 0,
        "the workload must exercise every rule"
    );
    assert!(
        t.violations.is_empty(),
        "{}",
        t.violations[..t.violations.len().min(10)].join("\n")
    );
}

/// The check of the checker: under `--fsync never`, with no snapshot, compaction or
/// segment roll to sync the log, no append is synced before shutdown, so every
/// acknowledgement must be flagged, however the replies were grouped into writes.
#[test]
fn the_order_check_catches_acknowledgements_before_their_sync() {
    let args = ["--fsync", "never", "--max-segment-bytes", "16777216"];
    let Some(t) = trace(&args, workload_with(false)) else {
        return;
    };
    let unsynced = t
        .violations
        .iter()
        .filter(|v| v.contains("acknowledged before"))
        .count();
    println!(
        "syscall order, negative control: {unsynced} of {} acknowledgements flagged under --fsync never",
        t.acks
    );
    assert_eq!(t.acks, 600);
    assert_eq!(
        unsynced,
        t.acks,
        "only {unsynced} of {} unsynced acknowledgements were caught: {:?}",
        t.acks,
        &t.violations[..t.violations.len().min(5)]
    );
}

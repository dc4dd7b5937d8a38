//! Protocol conversations from `testdata/`, checked byte for byte.
//!
//! `testdata/NAME.jsonl` holds the input lines. Lines that are objects with a
//! `"harness"` key are directions to this harness, not input:
//! `{"harness": {"args": [...]}}` sets the node's arguments, `{"harness": "data-dir"}`
//! gives the conversation a persistent data directory, and `{"harness": "restart"}`
//! ends the input there and starts the node again (on the same directory, if any).
//! `testdata/NAME.out.jsonl` holds every line the node writes, across restarts.
//! `UPDATE_EXPECT=1 cargo test` rewrites the expected files (review the diff!).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde_json::Value;

use crate::support;

struct Conversation {
    args: Vec<String>,
    data_dir: bool,
    runs: Vec<Vec<String>>,
}

fn parse(text: &str) -> Conversation {
    let mut conv = Conversation {
        args: Vec::new(),
        data_dir: false,
        runs: vec![Vec::new()],
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let directive = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v.get("harness").cloned());
        match directive {
            None => conv.runs.last_mut().unwrap().push(line.to_string()),
            Some(Value::String(s)) if s == "restart" => conv.runs.push(Vec::new()),
            Some(Value::String(s)) if s == "data-dir" => conv.data_dir = true,
            Some(Value::Object(o)) if o.contains_key("args") => {
                conv.args = o["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect();
            }
            Some(other) => panic!("unknown harness direction {other}"),
        }
    }
    conv
}

/// Whether the node answers `line`: a JSON object with a string `src` whose body has
/// an integer `msg_id` (every other line only gets a warning on stderr).
fn answered(line: &str) -> bool {
    serde_json::from_str::<Value>(line)
        .is_ok_and(|v| v["src"].is_string() && v["body"]["msg_id"].is_u64())
}

/// Runs one conversation in lockstep, as a Maelstrom client does: each line that gets
/// an answer waits for it before the next is sent. (Sizes on disk depend on how
/// appends group into commits, so a pipelined conversation would not be repeatable;
/// pipelining is tested by the programmatic tests.) Returns every output line.
fn play(conv: &Conversation) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = conv.data_dir.then(|| dir.path());
    let args: Vec<&str> = conv.args.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for input in &conv.runs {
        let mut child = support::spawn(&args, data_dir);
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in input {
            writeln!(stdin, "{line}").unwrap();
            stdin.flush().unwrap();
            if answered(line) {
                out.push(stdout.next().expect("an answer").unwrap());
            }
        }
        drop(stdin);
        out.extend(stdout.map(Result::unwrap));
        let status = child.wait().unwrap();
        assert!(status.success(), "node exited badly: {status}");
    }
    out
}

fn check(name: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let input = std::fs::read_to_string(root.join(format!("{name}.jsonl"))).unwrap();
    let expected_path = root.join(format!("{name}.out.jsonl"));
    let actual = play(&parse(&input));
    let mut actual_text = actual.join("\n");
    actual_text.push('\n');
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&expected_path, &actual_text).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
        panic!(
            "{} missing: run with UPDATE_EXPECT=1",
            expected_path.display()
        )
    });
    if expected != actual_text {
        let first_diff = expected
            .lines()
            .zip(actual_text.lines())
            .position(|(e, a)| e != a);
        panic!(
            "conversation {name} differs (first differing line: {first_diff:?})\n--- expected\n{expected}\n--- actual\n{actual_text}"
        );
    }
    actual
}

const CONVERSATIONS: &[&str] = &[
    "init",
    "log",
    "kv",
    "errors",
    "segments",
    "restart",
    "fresh",
    "fsync_never",
    "snapshot",
];

#[test]
fn every_conversation_matches_its_expected_replies_byte_for_byte() {
    let mut all = Vec::new();
    for name in CONVERSATIONS {
        all.extend(check(name));
    }
    support::assert_python_round_trip(&all);
}

#[test]
fn every_testdata_conversation_is_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    for entry in std::fs::read_dir(root).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(stem) = name
            .strip_suffix(".out.jsonl")
            .or_else(|| name.strip_suffix(".jsonl"))
        {
            assert!(
                CONVERSATIONS.contains(&stem) || stem.starts_with("demo"),
                "testdata/{name} is not in CONVERSATIONS"
            );
        }
    }
}

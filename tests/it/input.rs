//! Hostile input: bad lines interleaved with a valid workload, and a burst of a
//! million requests.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde_json::{Value, json};

use crate::support::{self, init, msg};

/// A line, and the error code it must get (`None`: no reply, only a warning), with
/// the msg_id of the reply when the line is not JSON that says it.
struct Bad {
    line: Vec<u8>,
    code: Option<u64>,
    id: Option<u64>,
}

fn bad(line: impl Into<Vec<u8>>, code: Option<u64>) -> Bad {
    Bad {
        line: line.into(),
        code,
        id: None,
    }
}

/// A line that is not JSON (or too long to read) but shows its `src` and `msg_id`:
/// it gets error 12 all the same.
fn salvaged(line: impl Into<Vec<u8>>, id: u64) -> Bad {
    Bad {
        line: line.into(),
        code: Some(12),
        id: Some(id),
    }
}

/// An init with a node id that cannot name a directory: error 12, and the node stays
/// up (it is initialized already when these come; before it, the same holds).
fn with_init_id(id: u64, node_id: &str) -> Bad {
    bad(
        msg(
            "c9",
            json!({"type": "init", "msg_id": id, "node_id": node_id, "node_ids": [node_id]}),
        ),
        Some(12),
    )
}

/// Bad lines of every kind; those with `src` and `msg_id` use msg_ids from `id`.
fn bad_lines(id: &mut u64) -> Vec<Bad> {
    let mut next = || {
        *id += 1;
        *id
    };
    let (a, b, c, d) = (next(), next(), next(), next());
    let mut v = vec![
        bad("not json at all", None),
        bad(
            "{\"src\": \"c9\", \"dest\": \"n1\", \"body\": {\"type\": \"wal_append\", \"msg_",
            None,
        ),
        salvaged(
            [
                &b"{\"src\": \"c9\", \"body\": {\"type\": \"wal_append\", \"msg_id\": "[..],
                a.to_string().as_bytes(),
                b", \"payload\": \"\xff\xfe\"}}",
            ]
            .concat(),
            a,
        ),
        salvaged(
            format!(
                "{{\"src\": \"c9\", \"body\": {{\"type\": \"wal_append\", \"msg_id\": {b}, \"payload\": \"a\\ud800b\"}}}}"
            ),
            b,
        ),
        bad(&b"\xc3\x28\xa0\xa1"[..], None),
        bad("[1, 2, 3]", None),
        bad("42", None),
        bad("\"src\"", None),
        bad("null", None),
        bad(
            "{\"dest\": \"n1\", \"body\": {\"type\": \"wal_info\", \"msg_id\": 1}}",
            None,
        ),
        bad(
            "{\"src\": 7, \"body\": {\"type\": \"wal_info\", \"msg_id\": 1}}",
            None,
        ),
        bad(
            "{\"src\": \"c9\", \"body\": {\"type\": \"wal_info\"}}",
            None,
        ),
        bad(
            "{\"src\": \"c9\", \"body\": {\"type\": \"wal_info\", \"msg_id\": -3}}",
            None,
        ),
        bad(
            "{\"src\": \"c9\", \"body\": {\"type\": \"wal_info\", \"msg_id\": 2.5}}",
            None,
        ),
        bad("{\"src\": \"c9\", \"body\": [\"wal_info\"]}", None),
        bad("[".repeat(100_000), None),
        salvaged(
            format!(
                "{{\"src\": \"c9\", \"body\": {{\"type\": \"wal_info\", \"msg_id\": {c}, \"x\": {}}}}}",
                "[".repeat(100_000)
            ),
            c,
        ),
        // Over the line limit: answered from the line's head...
        salvaged(
            format!(
                "{{\"src\": \"c9\", \"body\": {{\"type\": \"wal_append\", \"msg_id\": {d}, \"payload\": \"{}\"}}}}",
                "x".repeat(7 * 1024 * 1024)
            ),
            d,
        ),
    ];
    // ... or its tail, when msg_id comes after the payload.
    let e = next();
    v.push(salvaged(format!("{{\"src\": \"c9\", \"body\": {{\"type\": \"wal_append\", \"payload\": \"{}\", \"msg_id\": {e}}}}}", "x".repeat(7 * 1024 * 1024)), e));
    // Without a msg_id anywhere, an over-long line gets only a warning.
    v.push(bad(
        format!(
            "{{\"src\": \"c9\", \"body\": {{\"type\": \"wal_append\", \"payload\": \"{}\"}}}}",
            "x".repeat(7 * 1024 * 1024)
        ),
        None,
    ));
    v.push(with_init_id(next(), &"n".repeat(300)));
    v.push(with_init_id(next(), "n/1"));
    let with_id = |id: u64, body: Value, code: u64| {
        bad(
            msg("c9", {
                let mut b = body;
                b["msg_id"] = json!(id);
                b
            }),
            Some(code),
        )
    };
    for body in [
        json!({"type": "no_such_request"}),
        json!({"type": "echo", "echo": "hi"}),
        json!({"type": "broadcast", "message": 1}),
    ] {
        v.push(with_id(next(), body, 10));
    }
    for body in [
        json!({}),
        json!({"type": 5}),
        json!({"type": null}),
        json!({"type": "wal_append"}),
        json!({"type": "wal_append", "payload": 5}),
        json!({"type": "wal_append", "payload": ["x"]}),
        json!({"type": "wal_append", "payload": "x".repeat(1024 * 1024 + 1)}),
        json!({"type": "wal_read"}),
        json!({"type": "wal_read", "offset": -1}),
        json!({"type": "wal_read", "offset": 1.5}),
        json!({"type": "wal_read", "offset": 1e30}),
        json!({"type": "wal_read", "offset": "3"}),
        json!({"type": "wal_compact"}),
        json!({"type": "wal_compact", "snapshot_at_offset": -9}),
        json!({"type": "wal_segment_config", "max_segment_bytes": 0}),
        json!({"type": "wal_segment_config", "max_segment_bytes": true}),
        json!({"type": "read"}),
        json!({"type": "read", "key": "has space"}),
        json!({"type": "write", "key": "k"}),
        json!({"type": "write", "key": "a=b", "value": 1}),
        json!({"type": "cas", "key": "k", "from": 1}),
        json!({"type": "init", "node_id": 5, "node_ids": []}),
    ] {
        v.push(with_id(next(), body, 12));
    }
    v.push(bad(
        format!(
            "{{\"src\": \"c9\", \"body\": {{\"type\": \"wal_read\", \"msg_id\": {}, \"offset\": 123456789012345678901234567890}}}}",
            next()
        ),
        Some(12),
    ));
    v
}

/// The valid workload: appends, key-value writes, a snapshot and a compaction.
fn valid_workload() -> Vec<String> {
    let mut lines = Vec::new();
    for i in 0..300u64 {
        let body = match i % 5 {
            0 => json!({"type": "write", "msg_id": i, "key": format!("k{}", i % 40), "value": i}),
            1 => {
                json!({"type": "wal_append", "msg_id": i, "payload": format!("set p{}=x{i}", i % 30)})
            }
            2 => json!({"type": "read", "msg_id": i, "key": format!("k{}", i % 40)}),
            3 if i == 153 => json!({"type": "wal_snapshot", "msg_id": i}),
            3 if i == 248 => json!({"type": "wal_compact", "msg_id": i, "snapshot_at_offset": 100}),
            _ => json!({"type": "wal_append", "msg_id": i, "payload": format!("note {i}")}),
        };
        lines.push(msg("c1", body));
    }
    lines
}

fn final_state_probe() -> Vec<String> {
    let mut lines = vec![msg("c1", json!({"type": "wal_info", "msg_id": 10_000}))];
    for k in 0..40 {
        lines.push(msg(
            "c1",
            json!({"type": "read", "msg_id": 10_001 + k, "key": format!("k{k}")}),
        ));
    }
    for o in 0..250 {
        lines.push(msg(
            "c1",
            json!({"type": "wal_read", "msg_id": 20_000 + o, "offset": o}),
        ));
    }
    lines
}

fn join(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

#[test]
fn bad_lines_get_exactly_their_errors_and_change_nothing() {
    // Reference: the valid workload alone.
    let mut reference: Vec<Vec<u8>> = vec![init(1).into_bytes()];
    reference.extend(valid_workload().into_iter().map(String::into_bytes));
    reference.extend(final_state_probe().into_iter().map(String::into_bytes));
    let clean = support::run(&[], None, &join(&reference));
    assert_eq!(clean.code, Some(0), "{}", clean.stderr);

    // The same, with bad lines before init and between every valid line.
    let mut id = 1_000_000;
    let mut expected: BTreeMap<u64, u64> = BTreeMap::new();
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut bad_count = 0;
    for pre in 0..5u64 {
        id += 1;
        lines.push(
            msg(
                "c9",
                json!({"type": "wal_append", "msg_id": id, "payload": format!("early {pre}")}),
            )
            .into_bytes(),
        );
        expected.insert(id, 11);
        bad_count += 1;
    }
    lines.push(init(1).into_bytes());
    let valid = valid_workload();
    let mut round = 0;
    while bad_count < 1200 {
        for b in bad_lines(&mut id) {
            if let Some(code) = b.code {
                let id = b.id.unwrap_or_else(|| {
                    let parsed: Value = serde_json::from_slice(&b.line).unwrap();
                    parsed["body"]["msg_id"].as_u64().unwrap()
                });
                expected.insert(id, code);
            }
            lines.push(b.line);
            bad_count += 1;
            if let Some(v) = valid.get(round) {
                lines.push(v.clone().into_bytes());
            }
            round += 1;
        }
    }
    lines.extend(valid.iter().skip(round).map(|v| v.clone().into_bytes()));
    lines.extend(final_state_probe().into_iter().map(String::into_bytes));
    let noisy = support::run(&[], None, &join(&lines));
    assert_eq!(noisy.code, Some(0), "{}", noisy.stderr);
    assert!(!noisy.stderr.contains("panicked"), "{}", noisy.stderr);

    let mut got: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for r in noisy.replies() {
        if r["dest"] == "c9" {
            let code = r["body"]["code"]
                .as_u64()
                .unwrap_or_else(|| panic!("a bad line was accepted: {r}"));
            got.entry(r["body"]["in_reply_to"].as_u64().unwrap())
                .or_default()
                .push(code);
        }
    }
    for (id, code) in &expected {
        assert_eq!(
            got.get(id),
            Some(&vec![*code]),
            "msg_id {id}: expected exactly one error {code}"
        );
    }
    assert_eq!(
        got.len(),
        expected.len(),
        "replies to lines that should only warn"
    );
    let c1 = |run: &support::Run| -> Vec<Value> {
        run.replies()
            .iter()
            .filter(|r| r["dest"] == "c1")
            .map(|r| r["body"].clone())
            .collect()
    };
    let (a, b) = (c1(&clean), c1(&noisy));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        // msg_id counts every line written (errors included); total_bytes and
        // bytes_freed count the padding between group commits, which depends on
        // timing: none of them is state.
        let strip = |v: &Value| {
            let mut v = v.clone();
            v.as_object_mut().unwrap().remove("msg_id");
            v.as_object_mut().unwrap().remove("total_bytes");
            v.as_object_mut().unwrap().remove("bytes_freed");
            v
        };
        assert_eq!(
            strip(x),
            strip(y),
            "the valid workload's answers must not change"
        );
    }
    println!(
        "bad input: {bad_count} bad lines, {} answered with an error, the rest warned about",
        expected.len()
    );
    support::assert_python_round_trip(&noisy.lines);
}

/// Peak resident memory of a node fed `n` requests as fast as it reads them.
fn peak_rss_kib(n: u64) -> u64 {
    let mut child = support::spawn(&[], None);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let pid = child.id();
    // The reader says when every request (init and the n others) has its reply; the
    // node is then still running, waiting for input, and its peak is readable.
    let (answered_tx, answered) = crossbeam_channel::bounded::<()>(1);
    let reader = std::thread::spawn(move || {
        let mut sink = [0u8; 1 << 16];
        let (mut total, mut lines) = (0u64, 0u64);
        while let Ok(k) = stdout.read(&mut sink) {
            if k == 0 {
                break;
            }
            total += k as u64;
            lines += sink[..k].iter().filter(|&&b| b == b'\n').count() as u64;
            if lines == n + 1 {
                let _ = answered_tx.send(());
            }
        }
        total
    });
    let writer = std::thread::spawn(move || {
        let mut buf = Vec::with_capacity(1 << 20);
        writeln!(buf, "{}", init(1)).unwrap();
        for i in 0..n {
            writeln!(buf, "{{\"src\": \"c1\", \"dest\": \"n1\", \"body\": {{\"type\": \"wal_info\", \"msg_id\": {i}}}}}").unwrap();
            if buf.len() > (1 << 20) - 256 {
                stdin.write_all(&buf).unwrap();
                buf.clear();
            }
        }
        stdin.write_all(&buf).unwrap();
        stdin
    });
    let stdin = writer.join().unwrap();
    answered.recv().expect("every request is answered");
    // VmHWM is the peak resident size the kernel kept track of all along.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|kib| kib.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let bytes = reader.join().unwrap();
    assert!(bytes > n * 60, "every request was answered");
    peak
}

#[test]
fn memory_stays_bounded_under_a_million_requests() {
    let small = peak_rss_kib(100_000);
    let large = peak_rss_kib(1_000_000);
    println!("peak RSS: {small} KiB after 100k requests, {large} KiB after 1M");
    assert!(small > 0 && large > 0, "could not read VmHWM");
    assert!(
        large < 2 * small + 16 * 1024,
        "memory grows with the number of requests: {small} KiB -> {large} KiB"
    );
}

//! Real node processes in a Raft group, run by the cluster harness (`flintlog-cluster`)
//! under partitions, kills, pauses and message loss; every run must pass its checks
//! (linearizable history, no acknowledged append lost, replicas agreeing).

use std::process::Command;

use serde_json::{Value, json};

use crate::support;

fn harness(name: &str, args: &[&str]) -> Value {
    support::say(&format!(
        "cluster: {name} under faults, as real processes (about 15 s)"
    ));
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flintlog-cluster"))
        .args(args)
        .arg("--node")
        .arg(support::binary())
        .arg("--out")
        .arg(out_dir.path())
        .env("RUST_LOG", "info")
        .output()
        .expect("run flintlog-cluster");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{name}:\n{stdout}");
    let report: Value = serde_json::from_slice(
        &std::fs::read(out_dir.path().join("report.json")).unwrap_or_else(|e| {
            panic!(
                "{name}: no report ({e}); stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        }),
    )
    .unwrap();
    if !out.status.success() {
        let logs: String = (1..=5)
            .filter_map(|i| std::fs::read_to_string(out_dir.path().join(format!("n{i}.log"))).ok())
            .map(|l| l.lines().rev().take(30).collect::<Vec<_>>().join("\n"))
            .collect::<Vec<_>>()
            .join("\n---\n");
        panic!(
            "{name} failed:\n{stdout}\n{}\nlast node log lines:\n{logs}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        out_dir.path().join("latency.svg").exists(),
        "{name}: no plot"
    );
    let svg = std::fs::read_to_string(out_dir.path().join("latency.svg")).unwrap();
    for label in [
        "latency (ms, log scale)",
        "partition:",
        "kill -9 until restart:",
        "SIGSTOP pause:",
        "acknowledged (",
        "failed for sure",
        "unknown outcome",
    ] {
        assert!(
            svg.contains(label),
            "{name}: the plot's legend lacks {label:?}"
        );
    }
    report
}

#[test]
fn three_nodes_under_partitions_kills_pauses_and_loss() {
    let r = harness(
        "3 nodes",
        &[
            "--nodes",
            "3",
            "--duration",
            "14",
            "--nemesis",
            "partition,kill,pause",
            "--nemesis-every",
            "2",
            "--loss",
            "0.1",
            "--seed",
            "7",
            // Snapshots and compactions happen all through the run, and a follower
            // that missed more than 20 entries catches up from a snapshot.
            "--snapshot-entries",
            "50",
            "--trailing-entries",
            "20",
            // A node loses its disk: refused under its old id, then replaced.
            "--replace",
        ],
    );
    assert_eq!(r["pass"], true);
    let rep = &r["replacement"];
    assert_eq!(rep["done"], true, "{r}");
    assert!(rep["refused_messages"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["members"].as_array().unwrap().len(), 3, "{r}");
    let total = |field: &str| -> u64 {
        r[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum()
    };
    assert!(total("snapshots_written") >= 3, "{r}");
    assert!(total("compactions") >= 1, "{r}");
    assert!(r["nemesis"].as_array().unwrap().len() >= 3, "{r}");
    assert!(r["requests"]["ok"].as_u64().unwrap() > 100, "{r}");
    assert!(r["appends"]["acknowledged"].as_u64().unwrap() > 10, "{r}");
}

/// The leader cut off from the others again and again, with clients still sending it
/// requests: while it believes it leads, the others elect a leader and commit writes.
/// A read it answered on its own would return a value from before them, and the
/// history would not be linearizable.
#[test]
fn a_leader_cut_off_with_clients_on_both_sides_serves_no_stale_read() {
    let r = harness(
        "the leader isolated",
        &[
            "--nodes",
            "3",
            "--duration",
            "10",
            "--nemesis",
            "isolate-leader",
            "--nemesis-every",
            "2",
            "--loss",
            "0",
            "--seed",
            "3",
        ],
    );
    assert_eq!(r["pass"], true);
    let isolated = r["nemesis"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f.to_string().contains("leader isolated"))
        .count();
    assert!(isolated >= 2, "{r}");
    assert!(r["requests"]["ok"].as_u64().unwrap() > 100, "{r}");
}

#[test]
fn five_nodes_under_partitions_and_kills() {
    let r = harness(
        "5 nodes",
        &[
            "--nodes",
            "5",
            "--duration",
            "12",
            "--nemesis",
            "partition,kill",
            "--nemesis-every",
            "2",
            "--loss",
            "0.1",
            "--seed",
            "11",
            "--replace",
            // Every node copies its snapshots to a store; the new member starts from it.
            "--store",
        ],
    );
    assert_eq!(r["pass"], true);
    assert_eq!(r["replacement"]["done"], true, "{r}");
    assert_eq!(r["replacement"]["bootstrapped_from_store"], true, "{r}");
    assert_eq!(r["members"].as_array().unwrap().len(), 5, "{r}");
    assert!(r["requests"]["ok"].as_u64().unwrap() > 100, "{r}");
}

#[test]
fn bad_raft_lines_are_dropped_and_the_node_keeps_serving() {
    use std::io::{BufRead, BufReader, Write};
    let data = tempfile::tempdir().unwrap();
    let mut child = support::spawn(&[], Some(data.path()));
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let init = r#"{"src": "c1", "dest": "n1", "body": {"type": "init", "msg_id": 1, "node_id": "n1", "node_ids": ["n1", "n2", "n3"]}}"#;
    let mut lines = vec![init.to_string()];
    let bad_bodies = [
        r#"{"t": 99}"#,
        r#"{"t": -1}"#,
        r#"{"t": 3, "term": "x"}"#,
        r#"{"t": 3, "e": [{"d": "not base64!"}]}"#,
        r#"{"t": 3, "e": {}}"#,
        r#"{"t": 7, "term": 5}"#,
        r#"{"t": 0}"#,
        r#"[]"#,
        r#""raft""#,
    ];
    for (i, b) in bad_bodies.iter().enumerate() {
        lines.push(format!(
            r#"{{"src": "n2", "dest": "n1", "body": {{"type": "raft", "msg": {b}, "msg_id": {i}}}}}"#
        ));
    }
    // From a node outside the group, and addressed to another node.
    lines.push(
        r#"{"src": "n9", "dest": "n1", "body": {"type": "raft", "msg": {"t": 8, "term": 1}}}"#
            .into(),
    );
    lines.push(
        r#"{"src": "n2", "dest": "n3", "body": {"type": "raft", "msg": {"t": 8, "term": 1}}}"#
            .into(),
    );
    lines
        .push(r#"{"src": "c1", "dest": "n1", "body": {"type": "wal_status", "msg_id": 2}}"#.into());
    for l in &lines {
        writeln!(stdin, "{l}").unwrap();
    }
    stdin.flush().unwrap();
    let mut status = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["dest"] == "c1" && v["body"]["in_reply_to"] == 2 {
            status = Some(v);
            break;
        }
    }
    drop(stdin);
    let _ = child.wait();
    let status = status.expect("wal_status answered");
    assert_eq!(status["body"]["type"], "wal_status_ok", "{status}");
    let role = &status["body"]["status"]["role"];
    assert!(
        role == "follower" || role == "pre_candidate" || role == "candidate",
        "{status}"
    );
    assert!(status["body"]["status"]["poisoned"].is_null(), "{status}");
}

#[test]
fn log_management_requests_act_on_the_cluster_node_that_receives_them() {
    use std::io::{BufRead, BufReader, Write};
    let data = tempfile::tempdir().unwrap();
    let mut child = support::spawn(&[], Some(data.path()));
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    // Alone, n1 never has a leader: these requests need none.
    let lines = [
        r#"{"src": "c1", "dest": "n1", "body": {"type": "init", "msg_id": 1, "node_id": "n1", "node_ids": ["n1", "n2", "n3"]}}"#,
        r#"{"src": "c1", "dest": "n1", "body": {"type": "wal_policy", "msg_id": 2, "snapshot_entries": 77}}"#,
        r#"{"src": "c1", "dest": "n1", "body": {"type": "wal_segment_config", "msg_id": 3, "max_segment_bytes": 8192}}"#,
        r#"{"src": "c1", "dest": "n1", "body": {"type": "wal_segment_info", "msg_id": 4}}"#,
        r#"{"src": "c1", "dest": "n1", "body": {"type": "wal_snapshot", "msg_id": 5}}"#,
        r#"{"src": "c1", "dest": "n1", "body": {"type": "wal_compact", "msg_id": 6, "snapshot_at_offset": 5}}"#,
    ];
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    stdin.flush().unwrap();
    let mut replies = std::collections::BTreeMap::new();
    for line in stdout.lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["dest"] != "c1" {
            continue;
        }
        let id = v["body"]["in_reply_to"].as_u64().unwrap();
        replies.insert(id, v["body"].clone());
        if replies.len() == lines.len() {
            break;
        }
    }
    drop(stdin);
    let _ = child.wait();
    assert_eq!(replies[&2]["type"], "wal_policy_ok", "{:?}", replies[&2]);
    assert_eq!(replies[&2]["policy"]["snapshot_entries"], 77);
    assert_eq!(replies[&3]["max_segment_bytes"], 8192);
    assert_eq!(
        replies[&4]["type"], "wal_segment_info_ok",
        "{:?}",
        replies[&4]
    );
    assert_eq!(replies[&5]["type"], "wal_snapshot_ok", "{:?}", replies[&5]);
    assert_eq!(replies[&5]["snapshot_offset"], 0);
    // Offset 5 is past the end of an empty log: 22, nothing done.
    assert_eq!(replies[&6]["code"], 22, "{:?}", replies[&6]);
}

#[test]
fn a_joining_node_learns_its_raft_id_from_the_group_and_asks_for_a_snapshot() {
    use std::io::{BufRead, BufReader, Write};
    let data = tempfile::tempdir().unwrap();
    for run in 0..2 {
        let mut child = support::spawn(&[], Some(data.path()));
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next = |want: &str| -> Value {
            loop {
                let v: Value = serde_json::from_str(&stdout.next().unwrap().unwrap()).unwrap();
                if v["dest"] == want {
                    return v;
                }
            }
        };
        let mut send = |l: &str| {
            writeln!(stdin, "{l}").unwrap();
            stdin.flush().unwrap();
        };
        send(
            r#"{"src": "c1", "dest": "n4", "body": {"type": "init", "msg_id": 1, "node_id": "n4", "node_ids": ["n1", "n2", "n3", "n4"], "join": true}}"#,
        );
        assert_eq!(next("c1")["body"]["type"], "init_ok");
        if run == 0 {
            send(
                r#"{"src": "c1", "dest": "n4", "body": {"type": "read", "msg_id": 2, "key": "k"}}"#,
            );
            let r = next("c1");
            assert_eq!(r["body"]["code"], 11, "{r}");
            assert!(
                r["body"]["text"]
                    .as_str()
                    .unwrap()
                    .contains("not a member yet")
            );
            // The leader's first append names the new member's Raft id; having no
            // configuration, it asks for a snapshot instead of taking entries.
            send(
                r#"{"src": "n1", "dest": "n4", "body": {"type": "raft", "fr": 1, "to": 4, "inc": 77, "msg": {"t": 3, "term": 2, "i": 300, "lt": 2, "c": 300}, "msg_id": 9}}"#,
            );
            let ask = next("n1");
            assert_eq!(ask["body"]["type"], "raft", "{ask}");
            assert_eq!(
                (&ask["body"]["fr"], &ask["body"]["to"]),
                (&json!(4), &json!(1))
            );
            assert_eq!(ask["body"]["msg"]["t"], 4, "an append response: {ask}");
            assert_eq!(ask["body"]["msg"]["rj"], true, "{ask}");
            assert!(ask["body"]["msg"]["rs"].as_u64().unwrap() > 0, "{ask}");
        }
        send(r#"{"src": "c1", "dest": "n4", "body": {"type": "wal_status", "msg_id": 3}}"#);
        let s = next("c1");
        // Started again, its directory says who it is.
        assert_eq!(s["body"]["status"]["raft_id"], 4, "run {run}: {s}");
        assert_eq!(s["body"]["status"]["voters"], json!([]), "{s}");
        drop(stdin);
        let _ = child.wait();
    }
}

#[test]
fn a_directory_is_refused_for_another_group_or_member() {
    use std::io::{BufRead, BufReader, Write};
    let data = tempfile::tempdir().unwrap();
    let init = |ids: &str| {
        let mut child = support::spawn(&[], Some(data.path()));
        let mut stdin = child.stdin.take().unwrap();
        writeln!(
            stdin,
            r#"{{"src": "c1", "dest": "n1", "body": {{"type": "init", "msg_id": 1, "node_id": "n1", "node_ids": {ids}}}}}"#
        )
        .unwrap();
        drop(stdin);
        let line = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .next()
            .unwrap()
            .unwrap();
        let _ = child.wait();
        serde_json::from_str::<Value>(&line).unwrap()
    };
    assert_eq!(init(r#"["n1", "n2", "n3"]"#)["body"]["type"], "init_ok");
    for other in [r#"["n1", "n2", "n3", "n4", "n5"]"#, r#"["n0", "n1", "n2"]"#] {
        let r = init(other);
        assert_eq!(r["body"]["code"], 13, "{other}: {r}");
        assert!(
            r["body"]["text"]
                .as_str()
                .unwrap()
                .contains("belongs to Raft member 1")
        );
    }
    assert_eq!(init(r#"["n1", "n2", "n3"]"#)["body"]["type"], "init_ok");
    // inspect tells who the directory belongs to.
    let dir = data.path().join("n1");
    let out = Command::new(support::binary())
        .args(["inspect", dir.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["raft_member"]["raft_id"], 1, "{v}");
    assert_eq!(v["raft_member"]["founders"], json!([1, 2, 3]), "{v}");
    assert_eq!(
        v["raft_member"]["incarnation"].as_str().unwrap().len(),
        16,
        "{v}"
    );
}

/// The same group served over TCP (`flintlog serve`): peers dial each other through
/// a proxy per link, which the harness cuts for partitions; members are killed,
/// restarted and paused; snapshots are small and frequent, so that a member that was
/// down or cut off comes back by snapshot, over its snapshot connection.
#[test]
fn three_served_members_over_tcp_under_partitions_kills_and_pauses() {
    let r = harness(
        "3 served members over TCP",
        &[
            "--transport",
            "tcp",
            "--nodes",
            "3",
            "--duration",
            "14",
            "--nemesis",
            "partition,kill,pause",
            "--nemesis-every",
            "2",
            "--seed",
            "11",
            "--snapshot-entries",
            "50",
            "--trailing-entries",
            "20",
        ],
    );
    assert_eq!(r["pass"], true);
    assert!(r["nemesis"].as_array().unwrap().len() >= 3, "{r}");
    assert!(r["requests"]["ok"].as_u64().unwrap() > 1000, "{r}");
    assert!(r["appends"]["acknowledged"].as_u64().unwrap() > 100, "{r}");
    // A member down for seconds misses thousands of entries: it comes back by snapshot.
    assert!(
        r["snapshot_transfers"]["completed"].as_u64().unwrap() >= 1,
        "{r}"
    );
}

//! The log-management policy, end to end: snapshots and compactions that happen on
//! their own, retention, and `wal_policy` over the wire. (When exactly a trigger fires
//! is tested on the pure functions in `src/core/policy.rs`, with an injected clock.)

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flintlog::clock::ManualClock;
use flintlog::core::policy::SnapshotMode;
use flintlog::{Config, Node, Policy, PolicyUpdate, Status};
use serde_json::{Value, json};

use crate::support::{self, init, lines, msg, node_dir};

fn config(dir: &Path, policy: Policy) -> Config {
    let mut c = Config::new(dir);
    c.segment_bytes_max = 32 * 1024;
    c.segment_prefill = false;
    c.delete_pause = Duration::ZERO;
    c.policy = policy;
    c
}

/// Waits until the policy has nothing in flight or due (`settle`), then checks that
/// `done` holds: the policy acts in the background, and settling waits for all of it.
fn wait_for(node: &Node, what: &str, done: impl Fn(&Status) -> bool) -> Status {
    node.appender().settle().unwrap();
    let s = node.appender().status().unwrap();
    assert!(
        done(&s),
        "the policy settled without {what}; status: {s:#?}"
    );
    s
}

fn snapshot_files(dir: &Path) -> Vec<String> {
    // Full snapshots and deltas, in offset order.
    support::files(dir)
        .into_iter()
        .filter(|n| n.ends_with(".snap") || n.ends_with(".delta"))
        .collect()
}

fn append_all(node: &Node, from: u64, to: u64) {
    let (tx, rx) = crossbeam_channel::unbounded();
    for i in from..to {
        let tx = tx.clone();
        node.appender().append_with(
            format!("set k{}={i}", i % 500).into_bytes(),
            flintlog::Reply::new(move |r| {
                let _ = tx.send(r);
            }),
        );
    }
    for _ in from..to {
        rx.recv().unwrap().unwrap();
    }
}

/// Appends entries `300 * round .. 300 * (round + 1)` and waits for the automatic
/// snapshot at the end of them (policies here cut one every 300 entries); returns its
/// offset.
fn round_of_300(node: &Node, round: u64) -> u64 {
    append_all(node, round * 300, (round + 1) * 300);
    let want = (round + 1) * 300;
    wait_for(node, "the automatic snapshot", |s| {
        s.latest_snapshot.as_ref().is_some_and(|l| l.offset == want)
    });
    want
}

#[test]
fn with_no_request_from_anyone_the_log_stays_bounded_and_recovers_whole() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("n1");
    let policy = Policy {
        snapshot_entries: 2_000,
        trailing_entries: 500,
        jitter_percent: 0,
        ..Policy::default()
    };
    let node = Node::open(config(&dir, policy)).unwrap();
    let mut most_live = 0;
    for round in 0..20 {
        append_all(&node, round * 1_000, (round + 1) * 1_000);
        // What the policy leaves once it has caught up (under load it runs behind).
        node.appender().settle().unwrap();
        most_live = most_live.max(node.appender().status().unwrap().entries);
    }
    // A snapshot is cut at the end of the batch in which the trigger fires, so where
    // the cuts land depends on how appends were batched: the last one is within one
    // interval of the end, and compaction followed it to its trailing entries.
    let s = wait_for(&node, "the last automatic compaction", |s| {
        s.latest_snapshot
            .as_ref()
            .is_some_and(|l| l.offset.get() + 2_000 > 20_000)
            && s.first_offset.get() + 500 >= s.latest_snapshot.as_ref().unwrap().offset.get()
    });
    let last_snapshot = s.latest_snapshot.clone().unwrap().offset;
    // One snapshot per 2,000 entries, none before the first 2,000: at least 9 in
    // 20,000 when the cuts land past the multiples, each followed by a compaction.
    assert!(s.counters.snapshots >= 9, "{s:#?}");
    assert!(s.counters.compactions >= 8, "{s:#?}");
    // At most one snapshot interval, the trailing entries and a segment of slack
    // (a segment goes only once all of it is behind the compaction point).
    assert!(
        most_live <= 2_000 + 500 + 1_000 + 2_000,
        "{most_live} live entries"
    );
    // Two chains at most (a full snapshot and up to 8 deltas each).
    let kept = snapshot_files(&dir);
    assert!(
        kept.iter().filter(|n| n.ends_with(".snap")).count() <= 2 && kept.len() <= 18,
        "{kept:?}"
    );
    node.shutdown().unwrap();

    let node = Node::open(config(&dir, policy)).unwrap();
    let r = node.recovery().clone();
    assert_eq!(r.snapshot.as_ref().unwrap().offset, last_snapshot);
    assert_eq!(r.entries_replayed, 20_000 - last_snapshot.get());
    for k in 0..500 {
        // The last write of key k was entry 19_500 + k.
        assert_eq!(
            node.appender().kv_get(&format!("k{k}")).unwrap(),
            (19_500 + k).to_string()
        );
    }
    node.shutdown().unwrap();
}

#[test]
fn retention_keeps_the_newest_snapshots_and_never_the_last_one() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("n1");
    let policy = Policy {
        snapshot_entries: 300,
        jitter_percent: 0,
        retain_snapshots: 1,
        max_chain: 0, // every snapshot full; chains below
        ..Policy::default()
    };
    let node = Node::open(config(&dir, policy)).unwrap();
    for round in 0..5 {
        let want = round_of_300(&node, round);
        assert_eq!(
            snapshot_files(&dir),
            vec![format!("{want:020}.snap")],
            "only the newest snapshot is kept"
        );
    }
    // Keeping three from now on: the next snapshots accumulate up to three.
    node.appender()
        .set_policy(PolicyUpdate {
            retain_snapshots: Some(3),
            ..PolicyUpdate::default()
        })
        .unwrap();
    for round in 5..9 {
        round_of_300(&node, round);
    }
    let kept = snapshot_files(&dir);
    assert_eq!(
        kept,
        [
            "00000000000000002100.snap",
            "00000000000000002400.snap",
            "00000000000000002700.snap"
        ]
    );
    let s = node.appender().status().unwrap();
    let chain: Vec<_> = s
        .management
        .snapshots
        .iter()
        .map(|k| k.file.clone())
        .collect();
    assert_eq!(chain, kept, "wal_status lists every snapshot kept");
    node.shutdown().unwrap();
}

#[test]
fn the_age_trigger_cuts_a_snapshot_of_pending_entries_on_its_own() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("n1");
    let policy = Policy {
        snapshot_entries: 0,
        snapshot_bytes: 0,
        snapshot_age_ms: 200,
        jitter_percent: 0,
        ..Policy::default()
    };
    let clock = Arc::new(ManualClock::new());
    let mut config = config(&dir, policy);
    config.clock = clock.clone();
    let node = Node::open(config).unwrap();
    // Nothing pending: no snapshot however long the node idles.
    clock.advance(Duration::from_millis(400));
    node.appender().settle().unwrap();
    assert_eq!(node.appender().status().unwrap().counters.snapshots, 0);
    // The node has been up longer than the age threshold: the first commit fires it
    // (whatever part of the three it held); the rest waits for the age to pass again.
    append_all(&node, 0, 3);
    let first = wait_for(&node, "the first age-triggered snapshot", |s| {
        s.counters.snapshots == 1
    });
    let cut = first.latest_snapshot.as_ref().unwrap().offset.get();
    assert!((1..=3).contains(&cut), "{first:#?}");
    if cut < 3 {
        clock.advance(Duration::from_millis(199));
        wait_for(&node, "no snapshot before the age passes", |s| {
            s.counters.snapshots == 1
        });
        clock.advance(Duration::from_millis(1));
        wait_for(&node, "the age trigger", |s| {
            s.latest_snapshot.as_ref().is_some_and(|l| l.offset == 3)
        });
    }
    let done = node.appender().status().unwrap().counters.snapshots;
    clock.advance(Duration::from_millis(400));
    wait_for(&node, "nothing cut with nothing pending", |s| {
        s.counters.snapshots == done
    });
    node.shutdown().unwrap();
}

fn policy_req(id: u64, fields: Value) -> String {
    let mut body = json!({"type": "wal_policy", "msg_id": id});
    body.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    msg("c1", body)
}

#[test]
fn wal_policy_changes_some_fields_answers_the_whole_policy_and_refuses_bad_values_whole() {
    let data = tempfile::tempdir().unwrap();
    let mut input = vec![
        init(1),
        policy_req(
            2,
            json!({"snapshot_entries": 50, "jitter_percent": 0, "trailing_entries": 10}),
        ),
        // One bad field refuses the whole request: snapshot_entries stays 50.
        policy_req(3, json!({"snapshot_entries": 7, "jitter_percent": 95})),
        policy_req(4, json!({"retain_snapshots": 0})),
        policy_req(5, json!({"auto_compact": "yes"})),
        policy_req(6, json!({"snapshot_bytes": -1})),
        policy_req(7, json!({})),
    ];
    for i in 0..120u64 {
        input.push(msg(
            "c2",
            json!({"type": "wal_append", "msg_id": 100 + i, "payload": format!("set k{i}=v")}),
        ));
    }
    // The status goes in once the last append is answered: the appender checks its
    // policy after each batch, but not after one that ends with end of input.
    let status = [msg("c2", json!({"type": "wal_status", "msg_id": 999}))];
    let r = support::run_after_answer(
        &[],
        Some(data.path()),
        &lines(&input),
        ("c2", 219),
        &lines(&status),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let want = json!({"snapshot_entries": 50, "snapshot_bytes": 67108864, "snapshot_age_ms": 0,
                      "jitter_percent": 0, "auto_compact": true, "trailing_entries": 10,
                      "retain_snapshots": 2, "max_chain": 8, "delta_share_percent": 50});
    let ok = r.reply_to("c1", 2);
    assert_eq!(ok["type"], "wal_policy_ok");
    assert_eq!(ok["policy"], want);
    for id in [3, 4, 5, 6] {
        let e = r.reply_to("c1", id);
        assert_eq!(
            (e["type"].as_str(), e["code"].as_u64()),
            (Some("error"), Some(12)),
            "{e}"
        );
    }
    assert!(
        r.reply_to("c1", 3)["text"]
            .as_str()
            .unwrap()
            .contains("jitter_percent")
    );
    assert_eq!(r.reply_to("c1", 7)["policy"], want, "nothing changed");
    // The new policy acted: a snapshot was cut on its own once 50 entries were in.
    let s = &r.reply_to("c2", 999)["status"];
    assert_eq!(s["policy"]["log_management"], want);
    let snaps = snapshot_files(&node_dir(data.path()));
    let newest: u64 = snaps.last().expect("an automatic snapshot")[..20]
        .parse()
        .unwrap();
    assert!(newest >= 50, "{snaps:?}");
}

#[test]
fn retention_keeps_whole_chains_of_deltas() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("n1");
    let policy = Policy {
        snapshot_entries: 300,
        jitter_percent: 0,
        retain_snapshots: 1,
        max_chain: 2,
        delta_share_percent: 1000,
        ..Policy::default()
    };
    let node = Node::open(config(&dir, policy)).unwrap();
    let mut seen = Vec::new();
    for round in 0..5 {
        round_of_300(&node, round);
        seen.push(snapshot_files(&dir));
    }
    // 300 full, 600 and 900 deltas on it, 1200 full (the chain had 2 deltas), 1500 a
    // delta on that: the older chain went once the newer full snapshot was durable.
    let delta = |o: u64| format!("{o:020}.delta");
    let full = |o: u64| format!("{o:020}.snap");
    assert_eq!(seen[2], [full(300), delta(600), delta(900)]);
    assert_eq!(seen[3], [full(1200)]);
    assert_eq!(seen[4], [full(1200), delta(1500)]);
    node.shutdown().unwrap();
    let node = Node::open(config(&dir, policy)).unwrap();
    assert_eq!(node.recovery().snapshot.as_ref().unwrap().file, delta(1500));
    assert_eq!(node.appender().kv_get("k499").unwrap(), "1499");
    node.shutdown().unwrap();
}

/// Snapshots and compactions only when asked; every snapshot after the first may be
/// a delta, whatever its size.
fn snapshots_when_asked() -> Policy {
    Policy {
        snapshot_entries: 0,
        snapshot_bytes: 0,
        auto_compact: false,
        delta_share_percent: 1000,
        ..Policy::default()
    }
}

#[test]
fn the_first_delta_after_a_restart_holds_the_entries_replayed_at_recovery() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("n1");
    let policy = snapshots_when_asked();
    let node = Node::open(config(&dir, policy)).unwrap();
    for k in 0..100 {
        node.appender().kv_set(&format!("k{k}"), "a").unwrap();
    }
    node.snapshotter()
        .snapshot_mode(SnapshotMode::Full)
        .unwrap();
    for k in 0..50 {
        node.appender().kv_set(&format!("k{k}"), "b").unwrap();
    }
    node.shutdown().unwrap();

    // Those 50 writes come back from the log; the delta cut next must carry them.
    let node = Node::open(config(&dir, policy)).unwrap();
    assert_eq!(node.recovery().entries_replayed, 50);
    node.appender().kv_set("k60", "c").unwrap();
    let delta = node
        .snapshotter()
        .snapshot_mode(SnapshotMode::Incremental)
        .unwrap();
    assert!(delta.file.ends_with(".delta"), "{delta:?}");
    node.compactor().compact(delta.offset).unwrap();
    node.shutdown().unwrap();

    let node = Node::open(config(&dir, policy)).unwrap();
    assert_eq!(node.recovery().snapshot.as_ref().unwrap().file, delta.file);
    assert_eq!(node.recovery().entries_replayed, 0);
    for k in 0..100 {
        let want = match k {
            0..50 => "b",
            60 => "c",
            _ => "a",
        };
        assert_eq!(
            node.appender().kv_get(&format!("k{k}")).unwrap(),
            want,
            "k{k}"
        );
    }
    node.shutdown().unwrap();
}

#[test]
fn a_delta_after_more_writes_than_the_appender_keeps_is_still_whole() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("n1");
    let policy = snapshots_when_asked();
    let node = Node::open(config(&dir, policy)).unwrap();
    node.appender().kv_set("first", "1").unwrap();
    node.snapshotter()
        .snapshot_mode(SnapshotMode::Full)
        .unwrap();
    // More distinct keys than the appender keeps writes for (4096): it stops keeping
    // them, and the delta must come from comparing the maps.
    append_all(&node, 0, 6_000);
    let key = |i: u64| format!("k{}", i % 500);
    for i in 0..6_000u64 {
        node.appender()
            .kv_set(&format!("d{i}"), &i.to_string())
            .unwrap();
    }
    let delta = node
        .snapshotter()
        .snapshot_mode(SnapshotMode::Incremental)
        .unwrap();
    assert!(delta.file.ends_with(".delta"), "{delta:?}");
    node.compactor().compact(delta.offset).unwrap();
    node.shutdown().unwrap();

    let node = Node::open(config(&dir, policy)).unwrap();
    assert_eq!(node.recovery().snapshot.as_ref().unwrap().file, delta.file);
    assert_eq!(node.appender().kv_get("first").unwrap(), "1");
    assert_eq!(node.appender().kv_get(&key(5_999)).unwrap(), "5999");
    for i in (0..6_000u64).step_by(97) {
        assert_eq!(
            node.appender().kv_get(&format!("d{i}")).unwrap(),
            i.to_string()
        );
    }
    node.shutdown().unwrap();
}

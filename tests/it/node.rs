//! The real binary: compaction, ordering, restarts, the lock, and damaged directories.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{self, files, flip_byte, init, lines, msg, node_dir, run};

fn append(id: u64, payload: &str) -> String {
    msg(
        "c1",
        json!({"type": "wal_append", "msg_id": id, "payload": payload}),
    )
}

fn req(id: u64, kind: &str, extra: Value) -> String {
    let mut body = json!({"type": kind, "msg_id": id});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    msg("c1", body)
}

/// Disk space of the node's segment files: their allocated blocks.
fn segment_space(dir: &Path) -> HashMap<String, u64> {
    use std::os::unix::fs::MetadataExt;
    files(dir)
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .map(|n| {
            let blocks = std::fs::metadata(dir.join(&n)).unwrap().blocks();
            (n, blocks * 512)
        })
        .collect()
}

/// Space the segment files gave back between two listings.
fn space_freed(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> u64 {
    before
        .iter()
        .map(|(n, b)| b - after.get(n).copied().unwrap_or(0))
        .sum()
}

/// `first`, then the protocol's compaction example: appends 0-499 (msg_id 10-509), a
/// `wal_snapshot` (msg_id 600), appends 500-999 (msg_id 610-1109).
fn the_protocol_example(mut input: Vec<String>) -> Vec<String> {
    for i in 0..500 {
        input.push(append(10 + i, &format!("set k{i}=v{i}")));
    }
    input.push(req(600, "wal_snapshot", json!({})));
    for i in 500..1000 {
        input.push(append(10 + i + 100, &format!("set k{i}=v{i}")));
    }
    input
}

#[test]
fn compacting_inside_the_active_segment_frees_its_blocks_and_reports_them() {
    // The protocol's example with default flags: every entry in one 16 MiB segment.
    let data = tempfile::tempdir().unwrap();
    let input = the_protocol_example(vec![init(1)]);
    let r = run(&[], Some(data.path()), &lines(&input));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.reply_to("c1", 600)["snapshot_offset"], 500);
    let dir = node_dir(data.path());
    let before = segment_space(&dir);
    assert_eq!(before.len(), 1, "one segment expected: {before:?}");

    let input = vec![
        init(1),
        req(2, "wal_info", json!({})),
        req(3, "wal_compact", json!({"snapshot_at_offset": 500})),
        req(4, "wal_info", json!({})),
        req(5, "wal_read", json!({"offset": 499})),
        req(6, "wal_read", json!({"offset": 500})),
        req(7, "wal_read", json!({"offset": 999})),
    ];
    let r = run(&[], Some(data.path()), &lines(&input));
    let c = r.reply_to("c1", 3);
    assert_eq!(c["type"], "wal_compact_ok", "{c}");
    assert_eq!(c["entries_after"], 500);
    let freed = space_freed(&before, &segment_space(&dir));
    assert!(freed > 0, "no block was freed");
    assert_eq!(
        c["bytes_freed"], freed,
        "bytes_freed must be the blocks the filesystem released"
    );
    let total = |id| r.reply_to("c1", id)["total_bytes"].as_u64().unwrap();
    assert_eq!(
        total(2) - total(4),
        freed,
        "total_bytes follows the same rule"
    );
    assert_eq!(r.reply_to("c1", 5)["code"], 20);
    assert_eq!(r.reply_to("c1", 6)["payload"], "set k500=v500");
    assert_eq!(r.reply_to("c1", 7)["payload"], "set k999=v999");

    // The freed blocks read as zeros: recovery starts at the first live record.
    let out = std::process::Command::new(support::binary())
        .arg("verify")
        .arg(&dir)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut input = vec![init(1), req(2, "wal_info", json!({}))];
    for i in 0..1000 {
        input.push(req(10 + i, "read", json!({"key": format!("k{i}")})));
    }
    input.push(append(2000, "set after=restart"));
    let r = run(&[], Some(data.path()), &lines(&input));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.reply_to("c1", 2)["entries"], 500);
    for i in 0..1000 {
        assert_eq!(r.reply_to("c1", 10 + i)["value"], format!("v{i}"));
    }
    assert_eq!(r.reply_to("c1", 2000)["offset"], 1000);
}

#[test]
fn the_protocol_compaction_example_frees_whole_segments_and_survives_restart() {
    let data = tempfile::tempdir().unwrap();
    let input = the_protocol_example(vec![
        init(1),
        req(2, "wal_segment_config", json!({"max_segment_bytes": 4096})),
    ]);
    let r = run(&[], Some(data.path()), &lines(&input));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.reply_to("c1", 600)["snapshot_offset"], 500);
    assert_eq!(r.reply_to("c1", 1109)["offset"], 999);
    let before = segment_space(&node_dir(data.path()));
    assert!(before.len() > 2, "small segments expected: {before:?}");

    let input = vec![
        init(1),
        req(2, "wal_compact", json!({"snapshot_at_offset": 500})),
        req(3, "wal_read", json!({"offset": 499})),
        req(4, "wal_read", json!({"offset": 500})),
        req(5, "wal_info", json!({})),
    ];
    let r = run(&[], Some(data.path()), &lines(&input));
    let c = r.reply_to("c1", 2);
    assert_eq!(c["type"], "wal_compact_ok", "{c}");
    assert_eq!(c["snapshot_offset"], 500);
    assert_eq!(c["entries_before"], 1000);
    assert_eq!(c["entries_after"], 500);
    let after = segment_space(&node_dir(data.path()));
    assert!(before.keys().any(|n| !after.contains_key(n)), "{after:?}");
    let freed = space_freed(&before, &after);
    assert!(freed > 0);
    assert_eq!(
        c["bytes_freed"], freed,
        "bytes_freed must be the blocks the filesystem released"
    );
    assert_eq!(r.reply_to("c1", 3)["code"], 20);
    assert_eq!(r.reply_to("c1", 4)["payload"], "set k500=v500");
    assert_eq!(r.reply_to("c1", 5)["entries"], 500);

    // After a restart: compacted entries stay gone, every key is there.
    let mut input = vec![
        init(1),
        req(2, "wal_read", json!({"offset": 499})),
        req(3, "wal_info", json!({})),
    ];
    for i in 0..1000 {
        input.push(req(10 + i, "read", json!({"key": format!("k{i}")})));
    }
    let r = run(&[], Some(data.path()), &lines(&input));
    assert_eq!(r.reply_to("c1", 2)["code"], 20);
    assert_eq!(r.reply_to("c1", 3)["entries"], 500);
    for i in 0..1000 {
        assert_eq!(r.reply_to("c1", 10 + i)["value"], format!("v{i}"));
    }
}

#[test]
fn compacting_with_no_snapshot_takes_one_first() {
    let mut input = vec![init(1)];
    for i in 0..10 {
        input.push(append(10 + i, &format!("set k{i}=v{i}")));
    }
    input.push(req(30, "wal_compact", json!({"snapshot_at_offset": 5})));
    input.push(req(31, "wal_status", json!({})));
    let r = run(&[], None, &lines(&input));
    let c = r.reply_to("c1", 30);
    assert_eq!(c["type"], "wal_compact_ok", "{c}");
    assert_eq!(c["snapshot_offset"], 10);
    assert_eq!(
        (c["entries_before"].as_u64(), c["entries_after"].as_u64()),
        (Some(10), Some(5))
    );
    let status = &r.reply_to("c1", 31)["status"];
    assert_eq!(status["latest_snapshot"]["offset"], 10);
    assert_eq!(status["first_offset"], 5);
}

#[test]
fn replies_keep_per_source_order_and_msg_ids_count_up_by_one() {
    let mut input = vec![init(1)];
    let sources = ["a", "b", "c"];
    let mut sent: HashMap<&str, Vec<u64>> = HashMap::new();
    for i in 0..3000u64 {
        let src = sources[(i % 3) as usize];
        let body = match i % 500 {
            7 => json!({"type": "wal_snapshot", "msg_id": i}),
            9 => json!({"type": "wal_compact", "msg_id": i, "snapshot_at_offset": i / 2}),
            13 => json!({"type": "wal_status", "msg_id": i}),
            17 => json!({"type": "nonsense", "msg_id": i}),
            _ => {
                json!({"type": "write", "msg_id": i, "key": format!("{src}{}", i % 50), "value": i})
            }
        };
        input.push(msg(src, body));
        sent.entry(src).or_default().push(i);
    }
    let r = run(&[], None, &lines(&input));
    assert_eq!(r.code, Some(0));
    let replies = r.replies();
    assert_eq!(replies.len(), 3001, "exactly one reply per request");
    let mut got: HashMap<String, Vec<u64>> = HashMap::new();
    for (n, reply) in replies.iter().enumerate() {
        assert_eq!(reply["body"]["msg_id"], n as u64, "msg_id must count lines");
        assert_eq!(reply["src"], "n1");
        got.entry(reply["dest"].as_str().unwrap().to_string())
            .or_default()
            .push(reply["body"]["in_reply_to"].as_u64().unwrap());
    }
    for src in sources {
        assert_eq!(got[src], sent[src], "replies to {src} out of request order");
    }
    support::assert_python_round_trip(&r.lines);
}

#[test]
fn a_second_process_on_the_same_directory_fails_fast_naming_it() {
    let data = tempfile::tempdir().unwrap();
    let mut first = support::spawn(&[], Some(data.path()));
    let mut first_in = first.stdin.take().unwrap();
    writeln!(first_in, "{}", init(1)).unwrap();
    let mut first_out = BufReader::new(first.stdout.take().unwrap());
    let mut line = String::new();
    first_out.read_line(&mut line).unwrap();
    assert!(line.contains("init_ok"), "{line}");

    let mut second = support::spawn(&[], Some(data.path()));
    let (tx, rx) = std::sync::mpsc::channel();
    let mut stdin = second.stdin.take().unwrap();
    // Keep the second node's stdin open: it must exit on its own, not at end of input.
    writeln!(stdin, "{}", init(1)).unwrap();
    std::thread::spawn(move || {
        let _ = tx.send(second.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("second process must exit, not wait")
        .unwrap();
    drop(stdin);
    let r = support::finish(out);
    assert_eq!(r.code, Some(1), "stderr: {}", r.stderr);
    let dir = node_dir(data.path());
    assert!(
        r.stderr.contains(&dir.display().to_string()) && r.stderr.contains("locked by process"),
        "{}",
        r.stderr
    );
    assert_eq!(r.reply_to("c0", 1)["code"], 13);

    drop(first_in);
    assert!(first.wait().unwrap().success());
}

/// Writes `input` through a node on `data`, expecting a clean run.
fn run_ok(data: &Path, args: &[&str], input: &[String]) -> support::Run {
    let r = run(args, Some(data), &lines(input));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    r
}

#[test]
fn a_torn_tail_is_cut_off_and_kept_in_a_broken_file() {
    let data = tempfile::tempdir().unwrap();
    run_ok(
        data.path(),
        &[],
        &[
            init(1),
            append(2, "set a=1"),
            append(3, "set b=2"),
            append(4, "set c=3"),
        ],
    );
    let seg = node_dir(data.path()).join("00000000000000000000.log");
    // A torn fourth record right after the data (where it lands depends on how the
    // three appends were grouped into commits).
    let end = data_end(&node_dir(data.path()), "00000000000000000000.log") as usize;
    let torn = b"\x11\x22\x33\x44\x07\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00set";
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[end..end + torn.len()].copy_from_slice(torn);
    std::fs::write(&seg, &bytes).unwrap();

    let r = run_ok(
        data.path(),
        &[],
        &[
            init(1),
            req(5, "wal_read", json!({"offset": 2})),
            req(6, "wal_read", json!({"offset": 3})),
            append(7, "set d=4"),
            req(8, "wal_status", json!({})),
        ],
    );
    assert_eq!(r.reply_to("c1", 5)["payload"], "set c=3");
    assert_eq!(r.reply_to("c1", 6)["code"], 20);
    assert_eq!(r.reply_to("c1", 7)["offset"], 3);
    let rec = &r.reply_to("c1", 8)["status"]["last_recovery"];
    assert_eq!(rec["bytes_truncated"], torn.len());
    let broken = rec["broken_file"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read(node_dir(data.path()).join(&broken)).unwrap(),
        torn
    );
    assert!(r.stderr.contains("torn tail"), "{}", r.stderr);

    let r = run_ok(
        data.path(),
        &[],
        &[
            init(1),
            req(9, "read", json!({"key": "d"})),
            req(10, "wal_status", json!({})),
        ],
    );
    assert_eq!(r.reply_to("c1", 9)["value"], 4);
    assert_eq!(
        r.reply_to("c1", 10)["status"]["last_recovery"]["bytes_truncated"],
        0
    );
}

#[test]
fn leftover_temp_files_are_removed_and_foreign_files_left_alone() {
    let data = tempfile::tempdir().unwrap();
    run_ok(data.path(), &[], &[init(1), append(2, "set a=1")]);
    let dir = node_dir(data.path());
    for name in [
        "00000000000000000007.snap.tmp",
        "log.meta.tmp",
        "00000000000000000009.log.tmp",
        "notes.txt",
    ] {
        std::fs::write(dir.join(name), b"leftover").unwrap();
    }
    let r = run_ok(
        data.path(),
        &[],
        &[
            init(1),
            req(3, "wal_status", json!({})),
            req(4, "read", json!({"key": "a"})),
        ],
    );
    let rec = &r.reply_to("c1", 3)["status"]["last_recovery"];
    assert_eq!(rec["temp_files_removed"], 3);
    assert_eq!(rec["foreign_files"], json!(["notes.txt"]));
    assert_eq!(r.reply_to("c1", 4)["value"], 1);
    assert_eq!(
        files(&dir),
        ["00000000000000000000.log", "LOCK", "notes.txt"]
    );
}

/// Where every batch of records starts: a 4 KiB boundary.
const ALIGN: usize = flintlog::wal::BATCH_ALIGN_BYTES as usize;

/// The end of a segment's data, as `inspect` reports it.
fn data_end(dir: &Path, segment: &str) -> u64 {
    let (_, out) = offline(&["inspect", "--json"], dir);
    let doc: Value = serde_json::from_str(&out).unwrap();
    doc["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["file"] == segment)
        .unwrap()["size_bytes"]
        .as_u64()
        .unwrap()
}

/// Twelve entries, one per segment (the limit is below one 4 KiB block), with a
/// snapshot at 8.
fn several_segments(data: &Path) {
    let mut input = vec![
        init(1),
        req(2, "wal_segment_config", json!({"max_segment_bytes": 100})),
    ];
    for i in 0..12 {
        input.push(append(10 + i, &format!("set k{i}=value{i:02}")));
        if i == 7 {
            input.push(req(50, "wal_snapshot", json!({})));
        }
    }
    run_ok(data, &[], &input);
}

fn refused(data: &Path) -> String {
    let r = run(&[], Some(data), &lines(&[init(1)]));
    assert_eq!(
        r.code,
        Some(1),
        "the node must refuse to start; stderr: {}",
        r.stderr
    );
    assert_eq!(r.reply_to("c0", 1)["code"], 13);
    r.stderr
}

#[test]
fn corruption_in_a_sealed_segment_refuses_to_start_naming_file_and_offset() {
    let data = tempfile::tempdir().unwrap();
    several_segments(data.path());
    // One record per segment: the sealed segment of offset 3.
    let seg = node_dir(data.path()).join("00000000000000000003.log");
    flip_byte(&seg, ALIGN as isize + 16 + 2, 0x01); // inside the payload of offset 3
    let stderr = refused(data.path());
    assert!(
        stderr.contains("00000000000000000003.log") && stderr.contains("offset 3"),
        "{stderr}"
    );
}

#[test]
fn a_missing_middle_segment_refuses_to_start() {
    let data = tempfile::tempdir().unwrap();
    several_segments(data.path());
    let dir = node_dir(data.path());
    let segs: Vec<String> = files(&dir)
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .collect();
    assert!(segs.len() >= 4, "{segs:?}");
    std::fs::remove_file(dir.join(&segs[1])).unwrap();
    let stderr = refused(data.path());
    assert!(
        stderr.contains("gap") && stderr.contains(&segs[0]) && stderr.contains(&segs[2]),
        "{stderr}"
    );
}

/// Ways to damage a snapshot file.
fn damage_snapshot(path: &Path, how: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    match how {
        "flipped byte" => {
            let n = bytes.len();
            bytes[n - 3] ^= 0xff;
        }
        "truncated" => bytes.truncate(bytes.len() - 7),
        "wrong version" => {
            // A valid header of format version 2.
            bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
            let crc = crc32c::crc32c(&bytes[0..36]);
            bytes[36..40].copy_from_slice(&crc.to_le_bytes());
        }
        _ => unreachable!(),
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_an_older_one_the_log_still_reaches() {
    for how in ["flipped byte", "truncated", "wrong version"] {
        let data = tempfile::tempdir().unwrap();
        several_segments(data.path());
        run_ok(
            data.path(),
            &[],
            &[init(1), req(60, "wal_snapshot", json!({"mode": "full"}))],
        );
        let dir = node_dir(data.path());
        damage_snapshot(&dir.join("00000000000000000012.snap"), how);

        let mut input = vec![init(1), req(2, "wal_status", json!({}))];
        for i in 0..12 {
            input.push(req(10 + i, "read", json!({"key": format!("k{i}")})));
        }
        let r = run_ok(data.path(), &[], &input);
        let rec = &r.reply_to("c1", 2)["status"]["last_recovery"];
        assert_eq!(rec["snapshot_offset"], 8, "{how}");
        assert_eq!(rec["entries_replayed"], 4, "{how}");
        let skipped = rec["snapshots_skipped"][0].as_str().unwrap();
        assert!(
            skipped.contains("00000000000000000012.snap"),
            "{how}: {rec}"
        );
        if how == "wrong version" {
            assert!(
                skipped.contains("unsupported snapshot format version 2"),
                "{skipped}"
            );
        }
        for i in 0..12 {
            assert_eq!(
                r.reply_to("c1", 10 + i)["value"],
                format!("value{i:02}"),
                "{how}"
            );
        }
        let names = files(&dir);
        assert!(
            names.contains(&"00000000000000000012.snap.broken".to_string()),
            "{names:?}"
        );
        assert!(
            !names.contains(&"00000000000000000012.snap".to_string()),
            "{names:?}"
        );
    }
}

/// Snapshot 8 (full), then deltas at 12 and 16 on it.
fn a_chain_of_two_deltas(data: &Path) {
    several_segments(data);
    let mut input = vec![
        init(1),
        req(60, "wal_snapshot", json!({"mode": "incremental"})),
    ];
    for i in 12..16 {
        input.push(append(10 + i, &format!("set k{i}=value{i:02}")));
    }
    input.push(req(61, "wal_snapshot", json!({"mode": "incremental"})));
    let r = run_ok(data, &[], &input);
    assert_eq!(r.reply_to("c1", 61)["snapshot_offset"], 16);
    let names = files(&node_dir(data));
    for f in [
        "00000000000000000008.snap",
        "00000000000000000012.delta",
        "00000000000000000016.delta",
    ] {
        assert!(names.contains(&f.to_string()), "{names:?}");
    }
}

#[test]
fn recovery_loads_a_chain_and_a_damaged_delta_falls_back_to_the_verified_prefix() {
    let data = tempfile::tempdir().unwrap();
    a_chain_of_two_deltas(data.path());
    let status = |data: &Path| {
        let mut input = vec![init(1), req(2, "wal_status", json!({}))];
        for i in 0..16 {
            input.push(req(10 + i, "read", json!({"key": format!("k{i}")})));
        }
        let r = run_ok(data, &[], &input);
        for i in 0..16 {
            assert_eq!(r.reply_to("c1", 10 + i)["value"], format!("value{i:02}"));
        }
        r.reply_to("c1", 2)["status"].clone()
    };
    // Whole chain: base, both deltas, nothing to replay.
    let s = status(data.path());
    assert_eq!(s["last_recovery"]["snapshot"], "00000000000000000016.delta");
    assert_eq!(s["last_recovery"]["entries_replayed"], 0);
    let kinds: Vec<&str> = s["log_management"]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["full", "delta", "delta"]);
    let sizes = s["log_management"]["snapshots"].as_array().unwrap();
    assert!(
        sizes
            .iter()
            .all(|k| k["size_bytes"].as_u64().is_some_and(|b| b > 40)),
        "every file of the loaded chain has its size: {sizes:?}"
    );
    // The offline view knows the chain too.
    let (code, out) = offline(&["inspect", "--json"], &node_dir(data.path()));
    assert_eq!(code, Some(0), "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc["log_management"]["snapshot_chain"],
        json!([
            "00000000000000000008.snap",
            "00000000000000000012.delta",
            "00000000000000000016.delta"
        ])
    );
    assert_eq!(doc["snapshots"][1]["kind"], "delta");
    assert!(doc["log_management"]["oldest_segment"]["kept_because"].is_string());

    // The first delta damaged: the base alone, the log replayed from 8; both deltas
    // (the second builds on the first) are moved aside.
    let dir = node_dir(data.path());
    damage_snapshot(&dir.join("00000000000000000012.delta"), "flipped byte");
    let s = status(data.path());
    let rec = &s["last_recovery"];
    assert_eq!(rec["snapshot"], "00000000000000000008.snap", "{rec}");
    assert_eq!(rec["entries_replayed"], 8);
    let skipped = rec["snapshots_skipped"].to_string();
    assert!(
        skipped.contains("00000000000000000012.delta: body")
            && skipped.contains("00000000000000000016.delta: builds on"),
        "{skipped}"
    );
    let names = files(&dir);
    assert!(
        names.contains(&"00000000000000000012.delta.broken".to_string())
            && names.contains(&"00000000000000000016.delta.broken".to_string()),
        "{names:?}"
    );
}

#[test]
fn a_damaged_delta_the_compacted_log_depends_on_refuses_to_start() {
    let data = tempfile::tempdir().unwrap();
    a_chain_of_two_deltas(data.path());
    run_ok(
        data.path(),
        &[],
        &[
            init(1),
            req(2, "wal_compact", json!({"snapshot_at_offset": 16})),
        ],
    );
    damage_snapshot(
        &node_dir(data.path()).join("00000000000000000012.delta"),
        "truncated",
    );
    let stderr = refused(data.path());
    assert!(
        stderr.contains("compacted to offset 16") && stderr.contains("00000000000000000012.delta"),
        "{stderr}"
    );
}

#[test]
fn overlapping_segments_refuse_to_start_naming_both() {
    let data = tempfile::tempdir().unwrap();
    several_segments(data.path());
    let dir = node_dir(data.path());
    // Segment 2 (offset 2) gains, in the next block, the record of segment 3.
    let record = 16 + "set k2=value02".len();
    let two = std::fs::read(dir.join("00000000000000000002.log")).unwrap();
    let three = std::fs::read(dir.join("00000000000000000003.log")).unwrap();
    let mut merged = two[..ALIGN + record].to_vec();
    merged.resize(2 * ALIGN, 0);
    merged.extend_from_slice(&three[ALIGN..ALIGN + record]);
    std::fs::write(dir.join("00000000000000000002.log"), merged).unwrap();
    let stderr = refused(data.path());
    assert!(
        stderr.contains("overlap")
            && stderr.contains("00000000000000000002.log")
            && stderr.contains("00000000000000000003.log"),
        "{stderr}"
    );
}

#[test]
fn a_damaged_snapshot_the_compacted_log_depends_on_refuses_to_start() {
    let data = tempfile::tempdir().unwrap();
    several_segments(data.path());
    run_ok(
        data.path(),
        &[],
        &[
            init(1),
            req(60, "wal_compact", json!({"snapshot_at_offset": 8})),
        ],
    );
    let snap = node_dir(data.path()).join("00000000000000000008.snap");
    flip_byte(&snap, 45, 0x01);
    let stderr = refused(data.path());
    assert!(
        stderr.contains("compacted to offset 8") && stderr.contains("00000000000000000008.snap"),
        "{stderr}"
    );
}

#[test]
fn wal_status_reports_offsets_policy_counters_and_recovery() {
    let data = tempfile::tempdir().unwrap();
    several_segments(data.path());
    let r = run_ok(
        data.path(),
        &["--fsync", "batch=5", "--max-payload-bytes", "1000"],
        &[
            init(1),
            append(2, "noise"),
            req(3, "wal_compact", json!({"snapshot_at_offset": 4})),
            req(4, "wal_status", json!({})),
        ],
    );
    let s = &r.reply_to("c1", 4)["status"];
    assert_eq!(s["first_offset"], 4);
    assert_eq!(s["next_offset"], 13);
    assert_eq!(s["entries"], 9);
    assert_eq!(s["keys"], 12);
    assert_eq!(s["other_payloads"], 1);
    assert_eq!(
        s["policy"],
        json!({"fsync": "batch=5", "max_segment_bytes": 16777216, "max_payload_bytes": 1000,
               "log_management": {"snapshot_entries": 10000, "snapshot_bytes": 67108864,
                                  "snapshot_age_ms": 0, "jitter_percent": 25,
                                  "auto_compact": true, "trailing_entries": 5000,
                                  "retain_snapshots": 2, "max_chain": 8,
                                  "delta_share_percent": 50}})
    );
    let m = &s["log_management"];
    let entries = &m["triggers"]["entries"];
    let threshold = entries["threshold"].as_u64().unwrap();
    assert!((7_500..=12_500).contains(&threshold), "{m}");
    assert_eq!(entries["current"], 1, "one append since the node opened");
    assert_eq!(entries["remaining"], threshold - 1);
    assert_eq!(
        m["triggers"]["age_ms"]["threshold"],
        Value::Null,
        "off by default"
    );
    let chain = m["snapshots"].as_array().unwrap();
    assert_eq!(
        chain.last().unwrap()["file"],
        "00000000000000000008.snap",
        "{m}"
    );
    assert_eq!(chain.last().unwrap()["kind"], "full");
    assert_eq!(m["replay_entries"], 13 - 8);
    assert!(m["replay_estimate_ms"].is_u64() && m["bytes_reclaimable"].is_u64());
    assert_eq!(
        m["oldest_segment"]["kept_because"], "it holds trailing entries kept behind the snapshot",
        "{m}"
    );
    // The snapshot at 8 already covers offset 4: no new one is cut.
    assert_eq!(s["latest_snapshot"]["offset"], 8);
    assert_eq!(s["counters"]["appends"], 1);
    assert_eq!(s["counters"]["compactions"], 1);
    assert_eq!(s["last_recovery"]["snapshot"], "00000000000000000008.snap");
    assert_eq!(s["last_recovery"]["entries_replayed"], 4);
    assert!(s["active_segment"].as_str().unwrap().ends_with(".log"));
}

/// Runs an offline command; returns (exit code, stdout).
fn offline(args: &[&str], dir: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(support::binary())
        .args(args)
        .arg(dir)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

/// Every file's bytes, to show a command changed nothing.
fn snapshot_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    files(dir)
        .into_iter()
        .map(|n| (n.clone(), std::fs::read(dir.join(&n)).unwrap()))
        .collect()
}

#[test]
fn verify_and_inspect_report_a_healthy_directory() {
    let data = tempfile::tempdir().unwrap();
    several_segments(data.path());
    let dir = node_dir(data.path());
    let (code, out) = offline(&["verify"], &dir);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("12 segments, offsets [0, 12) (12 live entries)")
            && out.contains("replay 4 entries: 12 keys")
            && out.contains("00000000000000000008.snap")
            && out.ends_with("OK\n"),
        "{out}"
    );
    let (code, out) = offline(&["inspect", "--json"], &dir);
    assert_eq!(code, Some(0));
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["next_offset"], 12);
    assert_eq!(doc["keys"], 12);
    assert_eq!(doc["segments"].as_array().unwrap().len(), 12);
    assert_eq!(doc["snapshots"][0]["used_by_recovery"], true);
    let (code, out) = offline(&["inspect"], &dir);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("offsets       [0, 12) (12 live entries)")
            && out.contains("SEGMENT")
            && out.contains("verified, used by recovery"),
        "{out}"
    );
}

/// `verify` and `inspect` on a path that is not a node directory say what it is.
#[test]
fn offline_commands_name_a_missing_path_or_a_file() {
    let data = tempfile::tempdir().unwrap();
    for cmd in ["verify", "inspect"] {
        let run = |path: &Path| {
            let out = std::process::Command::new(support::binary())
                .arg(cmd)
                .arg(path)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.code(), text)
        };
        let (code, out) = run(&data.path().join("nope"));
        assert_eq!(code, Some(1));
        assert!(
            out.contains("No such file or directory") && !out.contains("DAMAGED"),
            "{out}"
        );
        let file = data.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let (code, out) = run(&file);
        assert_eq!(code, Some(1));
        assert!(out.contains("not a directory"), "{out}");
    }
}

/// On the directory of a running node, `verify` says it is in use and by whom, and
/// does not call the node's prepared next segment a leftover.
#[test]
fn verify_on_a_running_node_says_it_is_in_use() {
    use std::io::{BufRead, BufReader, Write};
    let data = tempfile::tempdir().unwrap();
    let mut child = support::spawn(&[], Some(data.path()));
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    writeln!(stdin, "{}", init(1)).unwrap();
    writeln!(stdin, "{}", append(2, "set a=1")).unwrap();
    assert!(stdout.next().unwrap().unwrap().contains("init_ok"));
    assert!(stdout.next().unwrap().unwrap().contains("wal_append_ok"));
    let (code, out) = offline(&["verify"], &node_dir(data.path()));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "in use by a running node (process {})",
            child.id()
        )) && !out.contains("leftover"),
        "{out}"
    );
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn verify_says_what_recovery_would_repair_and_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    run_ok(data.path(), &[], &[init(1), append(2, "set a=1")]);
    let dir = node_dir(data.path());
    let seg = dir.join("00000000000000000000.log");
    let end = data_end(&dir, "00000000000000000000.log") as usize;
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[end..end + 5].copy_from_slice(b"junk!");
    std::fs::write(&seg, &bytes).unwrap();
    std::fs::write(
        dir.join("00000000000000000001.snap.tmp"),
        b"half a snapshot",
    )
    .unwrap();
    let before = snapshot_of(&dir);
    let (code, out) = offline(&["verify"], &dir);
    assert_eq!(code, Some(0), "crash debris is not damage: {out}");
    assert!(
        out.contains("torn tail of 5 bytes") && out.contains("00000000000000000001.snap.tmp"),
        "{out}"
    );
    assert_eq!(
        snapshot_of(&dir),
        before,
        "verify must not change the directory"
    );
}

#[test]
fn verify_fails_on_damage_naming_it() {
    let data = tempfile::tempdir().unwrap();
    several_segments(data.path());
    let dir = node_dir(data.path());
    flip_byte(&dir.join("00000000000000000008.snap"), -1, 0x20);
    let (code, out) = offline(&["verify"], &dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("damaged snapshot 00000000000000000008.snap") && out.ends_with("DAMAGED\n"),
        "{out}"
    );
    flip_byte(
        &dir.join("00000000000000000002.log"),
        ALIGN as isize + 16 + 3,
        0x01,
    );
    let (code, out) = offline(&["verify"], &dir);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("refuse") && out.contains("00000000000000000002.log"),
        "{out}"
    );
}

#[test]
fn a_pipelining_client_sees_its_own_compaction_in_its_next_requests() {
    let mut input = vec![init(1)];
    for i in 0..20 {
        input.push(append(10 + i, &format!("set k{i}=v{i}")));
    }
    input.push(req(40, "wal_compact", json!({"snapshot_at_offset": 15})));
    input.push(req(41, "wal_read", json!({"offset": 14})));
    input.push(req(42, "wal_info", json!({})));
    input.push(req(43, "wal_segment_info", json!({})));
    // All sent at once, without waiting for any answer.
    let r = run(&[], None, &lines(&input));
    assert_eq!(r.reply_to("c1", 40)["type"], "wal_compact_ok");
    assert_eq!(
        r.reply_to("c1", 41)["code"],
        20,
        "a read after the compaction must not see compacted entries"
    );
    assert_eq!(r.reply_to("c1", 42)["entries"], 5);
}

/// Replies go out in batches, but never wait in a buffer while the node waits for
/// input: a client that sends one request and waits gets its answer with stdin open.
#[test]
fn a_reply_is_written_before_the_node_waits_for_more_input() {
    use std::io::{BufRead, BufReader, Write};
    let data = tempfile::tempdir().unwrap();
    let mut child = support::spawn(&[], Some(data.path()));
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let wait = std::time::Duration::from_secs(20);
    writeln!(stdin, "{}", init(1)).unwrap();
    assert!(rx.recv_timeout(wait).unwrap().contains("init_ok"));
    for i in 0..3 {
        writeln!(stdin, "{}", append(10 + i, "set a=1")).unwrap();
        let reply = rx
            .recv_timeout(wait)
            .expect("the reply must come while stdin is open");
        assert!(reply.contains("wal_append_ok"), "{reply}");
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// An init the client can fix (a node id that cannot name a directory) gets error 12
/// and the node stays up: the valid init sent next is answered.
#[test]
fn a_malformed_init_is_refused_and_the_next_init_answered() {
    let data = tempfile::tempdir().unwrap();
    let bad = |id: u64, node_id: &str| {
        msg(
            "c0",
            json!({"type": "init", "msg_id": id, "node_id": node_id, "node_ids": [node_id]}),
        )
    };
    let r = run(
        &[],
        Some(data.path()),
        &lines(&[
            bad(1, &"n".repeat(300)),
            bad(2, "../n1"),
            bad(3, ""),
            init(4),
            append(5, "set a=1"),
        ]),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    for id in 1..=3 {
        assert_eq!(r.reply_to("c0", id)["code"], 12, "init {id}");
    }
    assert_eq!(r.reply_to("c0", 4)["type"], "init_ok");
    assert_eq!(r.reply_to("c1", 5)["offset"], 0);
}

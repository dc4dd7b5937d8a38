//! Crash-point enumeration over the simulated disk, and directed crash windows.
//!
//! A sequential workload runs against a node on a [`SimFs`] that fails every
//! operation from operation `k` on (a power cut at `k`). For every `k`, and every crash
//! mode and seed, the disk a power cut could leave is recovered and checked against
//! the oracle in [`check`]. Failures print `seed=S op=K mode=M`; `OP=K` runs one crash
//! point, `SEED=S` one seed, `SEEDS=N` runs N seeds per random mode (default 2).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use flintlog::core::kv::KvState;
use flintlog::core::policy::SnapshotMode;
use flintlog::fs::sim::{CrashMode, Faults, OpRecord, SimFs};
use flintlog::{Config, Node, Offset};

const DIR: &str = "/sim/n1";

fn config() -> Config {
    let mut c = Config::new(DIR);
    // About ten records per segment: each sequential append is a batch of its own,
    // and every batch starts on a 4 KiB boundary.
    c.segment_bytes_max = 11 * flintlog::wal::BATCH_ALIGN_BYTES;
    c.inbox_capacity = 64;
    // A helper thread preparing segments would make operation counts vary between runs.
    c.segment_prefill = false;
    // Compaction shrinks segments in steps before unlinking them: crash between any two.
    c.delete_chunk_bytes = 2 * flintlog::wal::BATCH_ALIGN_BYTES;
    c.delete_pause = std::time::Duration::ZERO;
    // Snapshots after the first are deltas (the workload's few keys all change between
    // two snapshots, which the default size share would answer with full snapshots).
    c.policy.delta_share_percent = 1000;
    // Chains of a full snapshot and two deltas, one kept: the workload's third full
    // snapshot retires the first chain (rename, directory fsync, shrink, unlink).
    c.policy.max_chain = 2;
    c.policy.retain_snapshots = 1;
    c
}

/// What the workload submitted (in offset order) and what was acknowledged.
#[derive(Debug, Default, Clone)]
struct Outcome {
    submitted: Vec<Vec<u8>>,
    acked: BTreeMap<u64, Vec<u8>>,
    /// The furthest compaction point asked for (acknowledged or not): nothing below
    /// the first offset may go further.
    compacted_to: u64,
    /// The newest snapshot a request was answered for: it was promised durable.
    snapshot_acked: u64,
    /// Storage operations done before the node was shut down.
    ops_before_shutdown: u64,
    /// Whether the node refused writes at the end of the workload.
    poisoned: bool,
}

fn payload(i: u64) -> Vec<u8> {
    match i % 7 {
        0 => format!("del k{}", i % 23),
        3 => format!("noise {i}"),
        _ => format!("set k{}=v{i}", i % 23),
    }
    .into_bytes()
}

/// 400 appends, a snapshot every 60 (6), a compaction every 60 (7; the first with no
/// snapshot covering it). Stops at the first error: after a power cut nothing works.
fn workload(fs: &SimFs) -> Outcome {
    run_workload(fs, false).0
}

/// The workload; with `keep_going`, it goes on after errors and returns the result of
/// every request that changes something (appends, snapshots, compactions), in order.
fn run_workload(fs: &SimFs, keep_going: bool) -> (Outcome, Vec<flintlog::Result<()>>) {
    let mut out = Outcome::default();
    let mut results = Vec::new();
    let Ok(node) = Node::open_with_fs(config(), Arc::new(fs.clone())) else {
        return (out, results);
    };
    for i in 0..400u64 {
        let p = payload(i);
        out.submitted.push(p.clone());
        let appended = node.appender().append(p.clone());
        if let Ok(offset) = appended {
            assert_eq!(offset, i, "offsets are consecutive");
            out.acked.insert(offset.get(), p);
        }
        results.push(appended.map(drop));
        if i % 60 == 50 {
            let snap = node.snapshotter().snapshot();
            if let Ok(s) = &snap {
                out.snapshot_acked = out.snapshot_acked.max(s.offset.get());
            }
            results.push(snap.map(drop));
        }
        if i % 60 == 20 {
            out.compacted_to = out.compacted_to.max(i - 15);
            results.push(node.compactor().compact(Offset::new(i - 15)).map(drop));
        }
        if !keep_going && results.iter().any(|r| r.is_err()) {
            break;
        }
    }
    // Whether the node refuses writes, asked before shutdown's own final sync.
    out.ops_before_shutdown = fs.ops();
    out.poisoned = node
        .appender()
        .status()
        .map_or(true, |s| s.poisoned.is_some());
    let _ = node.shutdown();
    (out, results)
}

/// Recovers `disk` and checks the oracle; returns the recovered (next offset, keys).
fn check(disk: &SimFs, outcome: &Outcome) -> Result<(u64, usize), String> {
    let node = Node::open_with_fs(config(), Arc::new(disk.clone()))
        .map_err(|e| format!("recovery refused: {e}"))?;
    let result = verify(&node, outcome);
    node.shutdown().map_err(|e| format!("shutdown: {e}"))?;
    result
}

fn verify(node: &Node, outcome: &Outcome) -> Result<(u64, usize), String> {
    let a = node.appender();
    let status = a.status().map_err(|e| e.to_string())?;
    let (first, next) = (status.first_offset.get(), status.next_offset.get());
    let loaded = status
        .latest_snapshot
        .as_ref()
        .map_or(0, |s| s.offset.get());
    if loaded < outcome.snapshot_acked {
        return Err(format!(
            "the snapshot at {} was answered as durable, but recovery found none past {loaded}",
            outcome.snapshot_acked
        ));
    }
    if first > outcome.compacted_to {
        return Err(format!(
            "the log starts at {first}, past every compaction asked for (the furthest: {})",
            outcome.compacted_to
        ));
    }
    if next > outcome.submitted.len() as u64 {
        return Err(format!(
            "log ends at {next}, but only {} entries were ever sent",
            outcome.submitted.len()
        ));
    }
    if let Some((&lost, _)) = outcome.acked.range(next..).next() {
        return Err(format!(
            "acknowledged entry {lost} lost (log ends at {next})"
        ));
    }
    for offset in first..next {
        let entry = a
            .read(Offset::new(offset))
            .map_err(|e| format!("reading {offset}: {e}"))?;
        if !entry.checksum_valid || entry.payload != outcome.submitted[offset as usize] {
            return Err(format!("entry {offset} is not what was sent"));
        }
    }
    let mut model = KvState::default();
    outcome.submitted[..next as usize]
        .iter()
        .for_each(|p| model.apply(p));
    if status.keys != model.map.len() as u64 || status.other_payloads != model.other_payloads {
        return Err(format!(
            "state has {} keys and {} other payloads, a replay of [0, {next}) has {} and {}",
            status.keys,
            status.other_payloads,
            model.map.len(),
            model.other_payloads
        ));
    }
    for (k, v) in model.map.iter() {
        match a.kv_get(k) {
            Ok(got) if *got == **v => {}
            other => return Err(format!("key {k}: expected {v}, got {other:?}")),
        }
    }
    Ok((next, model.map.len()))
}

/// A second recovery of the recovered disk changes no file and finds the same state.
fn check_twice(disk: &SimFs, outcome: &Outcome) -> Result<(), String> {
    let first = check(disk, outcome)?;
    let settled = disk.clean_copy();
    let before = settled.contents();
    let second = check(&settled, outcome)?;
    if first != second {
        return Err(format!(
            "second recovery found {second:?}, the first {first:?}"
        ));
    }
    if settled.contents() != before {
        return Err("a second recovery changed the files".into());
    }
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

fn seeds(mode: CrashMode) -> Vec<u64> {
    if let Some(seed) = env_u64("SEED") {
        return vec![seed];
    }
    let n = if mode.is_random() {
        env_u64("SEEDS").unwrap_or(2)
    } else {
        1
    };
    (0..n).collect()
}

/// Recovers every disk a power cut now could leave (every mode, the configured
/// seeds) and checks each; returns how many were checked and what failed, each
/// failure labelled `seed=S op=K mode=M`.
fn check_every_crash(fs: &SimFs, outcome: &Outcome, op: u64) -> (u64, Vec<String>) {
    let (mut states, mut failures) = (0, Vec::new());
    for mode in CrashMode::ALL {
        for seed in seeds(mode) {
            states += 1;
            if let Err(why) = check_twice(&fs.crash(seed, mode), outcome) {
                failures.push(format!("seed={seed} op={op} mode={mode:?}: {why}"));
            }
        }
    }
    (states, failures)
}

#[test]
fn every_crash_point_in_every_mode_keeps_every_acknowledged_entry() {
    crate::support::say(
        "crash enumeration: a power cut at each of ~1,450 storage operations, every crash mode, each disk recovered twice (about a minute)",
    );
    let clean = SimFs::new();
    let full = workload(&clean);
    assert_eq!(
        full.acked.len(),
        400,
        "the workload runs clean without faults"
    );
    let total_ops = clean.ops();
    let points: Vec<u64> = match env_u64("OP") {
        Some(k) => vec![k],
        None => (0..=total_ops).collect(),
    };
    let mut states = 0u64;
    let mut failures = Vec::new();
    for &k in &points {
        let fs = SimFs::new();
        fs.set_faults(Faults {
            crash_at: Some(k),
            ..Faults::default()
        });
        let outcome = workload(&fs);
        let (n, failed) = check_every_crash(&fs, &outcome, k);
        states += n;
        failures.extend(failed);
    }
    println!(
        "crash enumeration: K={total_ops} storage operations, {} crash points, {states} crash states checked, {} failures",
        points.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures, first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    if env_u64("OP").is_none() {
        assert!(
            points.len() >= 1000,
            "the workload must have at least 1000 crash points, has {}",
            points.len()
        );
    }
}

// Directed crash windows: each test finds its moment in the trace of a clean run of
// the same workload, crashes there, and checks every mode and seed.

fn clean_trace() -> Vec<OpRecord> {
    let fs = SimFs::new();
    workload(&fs);
    fs.trace()
}

fn name_ends(path: &Path, suffix: &str) -> bool {
    path.to_string_lossy().ends_with(suffix)
}

/// Crashes the workload at operation `k` and checks every crash state.
fn crash_window(window: &str, k: u64) {
    let fs = SimFs::new();
    fs.set_faults(Faults {
        crash_at: Some(k),
        ..Faults::default()
    });
    let outcome = workload(&fs);
    let (_, failed) = check_every_crash(&fs, &outcome, k);
    if let Some(first) = failed.first() {
        panic!("window {window:?}: {first}");
    }
}

/// The first operation matching `pred` (at or after `from`).
fn find(trace: &[OpRecord], from: usize, pred: impl Fn(&OpRecord) -> bool) -> usize {
    trace[from..]
        .iter()
        .position(pred)
        .map(|i| i + from)
        .expect("the window occurs in the workload")
}

#[test]
fn crash_after_the_snapshot_temp_write() {
    let t = clean_trace();
    let i = find(&t, 0, |r| {
        r.kind == "fdatasync" && name_ends(&r.path, ".snap.tmp")
    });
    assert_eq!(t[i - 1].kind, "write", "the temp file was just written");
    crash_window("after the snapshot temp write, before its fsync", t[i].op);
}

#[test]
fn crash_after_the_snapshot_fsync_before_rename() {
    let t = clean_trace();
    let i = find(&t, 0, |r| {
        r.kind == "rename" && name_ends(&r.path, ".snap.tmp")
    });
    assert_eq!(t[i - 1].kind, "fdatasync");
    crash_window("after the snapshot fsync, before the rename", t[i].op);
}

#[test]
fn crash_after_the_snapshot_rename_before_the_directory_fsync() {
    let t = clean_trace();
    let i = find(&t, 0, |r| {
        r.kind == "rename" && name_ends(&r.path, ".snap.tmp")
    });
    assert_eq!(t[i + 1].kind, "fsync(dir)");
    crash_window(
        "after the snapshot rename, before the directory fsync",
        t[i + 1].op,
    );
}

#[test]
fn crash_while_a_delta_is_written_and_after_its_rename() {
    let t = clean_trace();
    let i = find(&t, 0, |r| {
        r.kind == "rename" && name_ends(&r.path, ".delta.tmp")
    });
    crash_window("before a delta's rename", t[i].op);
    crash_window(
        "after a delta's rename, before the directory fsync",
        t[i + 1].op,
    );
    let w = find(&t, 0, |r| {
        r.kind == "write" && name_ends(&r.path, ".delta.tmp")
    });
    crash_window("after a delta's first write", t[w + 1].op);
}

#[test]
fn crash_while_an_old_snapshot_is_retired() {
    let t = clean_trace();
    let i = find(&t, 0, |r| {
        r.kind == "rename"
            && r.to
                .as_deref()
                .is_some_and(|to| name_ends(to, ".retired.tmp"))
    });
    assert_eq!(t[i + 1].kind, "fsync(dir)");
    crash_window("after a retired snapshot's rename", t[i + 1].op);
    crash_window("after a retired snapshot's directory fsync", t[i + 2].op);
}

#[test]
fn crash_after_the_snapshot_directory_fsync() {
    let t = clean_trace();
    let i = find(&t, 0, |r| {
        r.kind == "rename" && name_ends(&r.path, ".snap.tmp")
    });
    crash_window("after the snapshot's directory fsync", t[i + 2].op);
}

/// The first compaction that deletes at least two segments: index of its first unlink.
/// (Compaction shrinks each segment with `set_len` steps before unlinking it.)
fn multi_segment_deletion(t: &[OpRecord]) -> usize {
    (0..t.len() - 1)
        .find(|&i| {
            t[i].kind == "unlink"
                && name_ends(&t[i].path, ".log")
                && t[i + 1..]
                    .iter()
                    .find(|r| r.kind != "set_len")
                    .is_some_and(|r| r.kind == "unlink")
        })
        .expect("a compaction deletes two segments or more")
}

#[test]
fn crash_while_a_compacted_segment_is_being_shrunk() {
    let t = clean_trace();
    let i = find(&t, 0, |r| r.kind == "set_len" && name_ends(&r.path, ".log"));
    assert_eq!(
        t[i + 1].kind,
        "set_len",
        "a segment shrinks in several steps"
    );
    assert_eq!(t[i + 1].path, t[i].path);
    crash_window("while a compacted segment is being shrunk", t[i + 1].op);
}

#[test]
fn crash_between_two_segment_deletions() {
    let t = clean_trace();
    let i = multi_segment_deletion(&t);
    crash_window("between two segment deletions", t[i + 1].op);
}

#[test]
fn crash_after_the_segment_deletions_before_the_directory_fsync() {
    let t = clean_trace();
    let i = multi_segment_deletion(&t);
    let j = find(&t, i, |r| r.kind != "unlink" && r.kind != "set_len");
    assert_eq!(t[j].kind, "fsync(dir)");
    crash_window(
        "after the segment deletions, before the directory fsync",
        t[j].op,
    );
}

#[test]
fn crash_around_freeing_the_compacted_blocks_of_a_live_segment() {
    let t = clean_trace();
    let i = find(&t, 0, |r| r.kind == "punch_hole");
    // The new start of the log is durable first: log.meta renamed, directory synced.
    let meta = (0..i)
        .rev()
        .find(|&j| {
            t[j].kind == "rename"
                && t[j]
                    .to
                    .as_deref()
                    .is_some_and(|to| name_ends(to, "log.meta"))
        })
        .expect("log.meta is written before blocks are freed");
    assert_eq!(t[meta + 1].kind, "fsync(dir)");
    crash_window("before freeing the compacted blocks", t[i].op);
    crash_window("after freeing the compacted blocks", t[i + 1].op);
}

#[test]
fn crash_after_a_new_segment_is_created_before_its_directory_sync() {
    let t = clean_trace();
    // Skip the first segment (created at open); take a roll under load.
    let i = find(&t, 10, |r| {
        r.kind == "rename" && name_ends(&r.path, ".log.tmp")
    });
    assert_eq!(t[i + 1].kind, "fsync(dir)");
    crash_window(
        "after a new segment is created, before its directory sync",
        t[i + 1].op,
    );
    crash_window("after a new segment is created, before its rename", t[i].op);
}

#[test]
fn crash_in_the_middle_of_recovery_then_recover_again() {
    // A disk whose recovery has work to do: a compaction cut between two deletions
    // (recovery finishes it) and a torn tail (recovery cuts it into a .broken file).
    let t = clean_trace();
    let i = multi_segment_deletion(&t);
    let fs = SimFs::new();
    fs.set_faults(Faults {
        crash_at: Some(t[i + 1].op),
        ..Faults::default()
    });
    let outcome = workload(&fs);
    let mut recovery_points = 0;
    for seed in seeds(CrashMode::Garbage) {
        let base = fs.crash(seed, CrashMode::Garbage);
        // Garbage after the data of the last segment: a torn tail to cut.
        let (last, bytes) = base
            .contents()
            .into_iter()
            .rfind(|(p, _)| name_ends(p, ".log"))
            .unwrap();
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let mut torn = bytes.clone();
        torn.resize(torn.len().max(end + 40), 0);
        torn[end..end + 40].fill(0xAB);
        base.overwrite(&last, torn);
        let clean_ops = {
            let probe = base.clean_copy();
            check(&probe, &outcome).unwrap_or_else(|why| panic!("seed={seed}: {why}"));
            probe.ops()
        };
        assert!(
            clean_ops > 8,
            "recovery must finish deletions and cut a tail here ({clean_ops} operations)"
        );
        for r in 0..clean_ops {
            let attempt = base.clean_copy();
            attempt.set_faults(Faults {
                crash_at: Some(r),
                ..Faults::default()
            });
            if let Ok(node) = Node::open_with_fs(config(), Arc::new(attempt.clone())) {
                let _ = node.shutdown();
            }
            for mode in CrashMode::ALL {
                for s in seeds(mode) {
                    recovery_points += 1;
                    if let Err(why) = check_twice(&attempt.crash(s, mode), &outcome) {
                        panic!(
                            "crash during recovery: seed={seed}/{s} recovery op={r} mode={mode:?}: {why}"
                        );
                    }
                }
            }
        }
    }
    println!("crash during recovery: {recovery_points} crash states checked");
}

#[test]
fn a_failed_sync_anywhere_is_fail_stop() {
    crate::support::say(
        "failed syncs: each of ~540 fdatasync/fsync operations fails once, every crash state checked",
    );
    let syncs: Vec<u64> = clean_trace()
        .iter()
        .filter(|r| r.kind == "fdatasync" || r.kind == "fsync(dir)")
        .map(|r| r.op)
        .collect();
    let mut states = 0;
    for &k in &syncs {
        let fs = SimFs::new();
        fs.set_faults(Faults {
            eio_at: Some(k),
            ..Faults::default()
        });
        let (outcome, results) = run_workload(&fs, true);
        // Fail-stop: a failed sync anywhere, reported to a request or not, leaves the
        // node refusing writes; one whose error was swallowed does not.
        if k < outcome.ops_before_shutdown {
            assert!(
                outcome.poisoned,
                "sync op={k} ({}) failed, yet the node still accepts writes",
                clean_trace()[k as usize].path.display()
            );
        }
        if let Some(first) = results.iter().position(|r| r.is_err()) {
            match &results[first] {
                Err(flintlog::Error::Crashed(_)) => {}
                other => panic!(
                    "sync op={k}: the request waiting on the failed sync got {other:?}, not error 13"
                ),
            }
            if let Some(late) = results[first..].iter().position(|r| r.is_ok()) {
                panic!(
                    "sync op={k}: request {} was acknowledged after the failed sync",
                    first + late
                );
            }
        }
        let (n, failed) = check_every_crash(&fs, &outcome, k);
        states += n;
        if let Some(first) = failed.first() {
            panic!("after a failed sync: {first}");
        }
    }
    println!(
        "failed syncs: {} sync operations failed one at a time, {states} crash states checked",
        syncs.len()
    );
}

#[test]
fn a_short_write_anywhere_keeps_every_acknowledged_entry() {
    crate::support::say("short writes: each of ~470 writes cut in half, every crash state checked");
    let writes: Vec<u64> = clean_trace()
        .iter()
        .filter(|r| r.kind == "write")
        .map(|r| r.op)
        .collect();
    let mut states = 0;
    for &k in &writes {
        let fs = SimFs::new();
        fs.set_faults(Faults {
            short_write_at: Some(k),
            ..Faults::default()
        });
        let outcome = workload(&fs);
        let (n, failed) = check_every_crash(&fs, &outcome, k);
        states += n;
        if let Some(first) = failed.first() {
            panic!("after a short write: {first}");
        }
        // Without a power cut too: the node reopens from what the page cache holds.
        if let Err(why) = check_twice(&fs.clean_copy(), &outcome) {
            panic!("after a short write, clean restart: op={k}: {why}");
        }
    }
    println!(
        "short writes: {} write operations cut in half one at a time, {states} crash states checked",
        writes.len()
    );
}

#[test]
fn short_reads_change_nothing() {
    let fs = SimFs::new();
    fs.set_faults(Faults {
        short_reads: true,
        ..Faults::default()
    });
    let outcome = workload(&fs);
    assert_eq!(outcome.acked.len(), 400);
    let disk = fs.crash(1, CrashMode::DropAll);
    disk.set_faults(Faults {
        short_reads: true,
        ..Faults::default()
    });
    check(&disk, &outcome).unwrap();
}

/// Appends, with a snapshot or a compaction requested now and then, while `policy`
/// cuts snapshots, compacts and deletes old snapshots on its own. Stops at the first
/// error.
fn policy_workload(fs: &SimFs, policy: flintlog::Policy, ops: &[u8]) -> Outcome {
    let mut out = Outcome::default();
    let mut c = config();
    c.policy = policy;
    let Ok(node) = Node::open_with_fs(c, Arc::new(fs.clone())) else {
        return out;
    };
    for (i, op) in ops.iter().enumerate() {
        let done = match op % 16 {
            0 => {
                let mode = [
                    SnapshotMode::Auto,
                    SnapshotMode::Full,
                    SnapshotMode::Incremental,
                ][(op / 16 % 3) as usize];
                node.snapshotter().snapshot_mode(mode).map(|s| {
                    out.snapshot_acked = out.snapshot_acked.max(s.offset.get());
                })
            }
            1 => {
                let next = out.submitted.len() as u64;
                out.compacted_to = out.compacted_to.max(next / 2);
                node.compactor().compact(Offset::new(next / 2)).map(drop)
            }
            _ => {
                let p = payload(i as u64);
                out.submitted.push(p.clone());
                node.appender().append(p.clone()).map(|offset| {
                    out.acked.insert(offset.get(), p);
                })
            }
        };
        if done.is_err() {
            break;
        }
    }
    let _ = node.shutdown();
    if policy.auto_compact {
        // The policy compacts on its own, up to its trailing entries behind a snapshot,
        // which covers at most what was sent.
        let own = (out.submitted.len() as u64).saturating_sub(policy.trailing_entries);
        out.compacted_to = out.compacted_to.max(own);
    }
    out
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: env_u64("POLICY_CASES").unwrap_or(24) as u32,
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Random policies, random operations, a power cut at a random storage operation
    /// in a random mode: recovery gives what replaying the log from offset 0 gives,
    /// with every acknowledged entry.
    #[test]
    fn random_policies_and_a_random_crash_recover_what_a_full_replay_gives(
        snapshot_entries in 0u64..40,
        trailing_entries in 0u64..30,
        retain_snapshots in 1u64..4,
        auto_compact in proptest::bool::ANY,
        jitter_percent in 0u64..60,
        max_chain in 0u64..5,
        delta_share_percent in 1u64..200,
        ops in proptest::collection::vec(proptest::num::u8::ANY, 20..160),
        crash_at in 0.0f64..1.0,
        seed in proptest::num::u64::ANY,
        mode in 0usize..CrashMode::ALL.len(),
    ) {
        let policy = flintlog::Policy {
            snapshot_entries,
            snapshot_bytes: 0,
            snapshot_age_ms: 0,
            jitter_percent,
            auto_compact,
            trailing_entries,
            retain_snapshots,
            max_chain,
            delta_share_percent,
        };
        // A clean run counts the storage operations; the cut lands among them.
        let clean = SimFs::new();
        let full = policy_workload(&clean, policy, &ops);
        proptest::prop_assert_eq!(full.acked.len(), full.submitted.len());
        let fs = SimFs::new();
        fs.set_faults(Faults {
            crash_at: Some((clean.ops() as f64 * crash_at) as u64),
            ..Faults::default()
        });
        let outcome = policy_workload(&fs, policy, &ops);
        let disk = fs.crash(seed, CrashMode::ALL[mode]);
        if let Err(why) = check_twice(&disk, &outcome) {
            proptest::prop_assert!(false, "{policy:?}, mode {:?}: {why}", CrashMode::ALL[mode]);
        }
    }
}

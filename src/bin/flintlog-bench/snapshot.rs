//! Snapshots: end to end against serializing in memory; deltas; recovery from a chain.

use super::*;

pub(crate) fn big_state(keys: u64) -> KvState {
    let mut s = KvState::default();
    for i in 0..keys {
        s.apply(format!("set key{i:010}=value-{i:010}-0123456789abcdef").as_bytes());
    }
    s
}

pub(crate) fn bench_snapshot(args: &Args, r: &mut Report) {
    r.section(
        &format!("c. Snapshot of {} keys, end to end", args.keys),
        "Serialize (on an encoder thread under SCHED_IDLE, beside the writing thread), write \
         as a node with nothing appended does (at full speed, each \
         `snapshot_sync_chunk_bytes`, 256 KiB, written back with no cache flush), fsync, \
         rename and fsync the directory, against serializing the same state (same format, \
         same encoder) into a Vec in memory on one thread.",
    );
    let state = big_state(args.keys);
    let d = fresh(&args.dir, "c");
    let fs = flintlog::fs::RealFs;
    let to_memory = |state: &KvState| {
        let started = Instant::now();
        let bytes = flintlog::snapshot::to_bytes(1, state);
        std::hint::black_box(bytes);
        started.elapsed().as_secs_f64()
    };
    to_memory(&state);
    let (mut disk, mut mem, mut size) = (vec![], vec![], 0);
    for _ in 0..args.runs {
        let started = Instant::now();
        let chunk = &config(&d).snapshot_pace(flintlog::wal::SyncCount::default());
        let snap =
            flintlog::snapshot::write(&fs, &d, Offset::new(1), &state, chunk).expect("snapshot");
        disk.push(started.elapsed().as_secs_f64());
        size = snap.size_bytes;
        mem.push(to_memory(&state));
    }
    let (disk, mem) = (median(disk), median(mem));
    r.target(
        "snapshot end to end vs in-memory serialize",
        format!("{:.2}x", mem / disk),
        ">= 0.7x",
        mem / disk >= 0.7,
    );
    r.target(
        &format!("snapshot of {} keys, end to end", args.keys),
        format!("{disk:.3} s"),
        "<= 0.6 s",
        disk <= 0.6,
    );
    r.table(
        &[
            "keys",
            "snapshot bytes",
            "end to end (s)",
            "in memory (s)",
            "in-memory / end-to-end",
        ],
        &[vec![
            args.keys.to_string(),
            size.to_string(),
            format!("{disk:.3}"),
            format!("{mem:.3}"),
            format!("{:.2}x", mem / disk),
        ]],
    );
}

/// Appends `n` entries through the library, pipelined; each sets one of `keys` keys.
/// The state after changing every hundredth key of `state` (1%), round `round`, and
/// the keys written.
pub(crate) fn changed(state: &KvState, round: u64) -> (KvState, Written) {
    let mut s = state.clone();
    let mut written = Written::new();
    let keys = state.map.len() as u64;
    for i in (round % 100..keys).step_by(100) {
        let value = format!("changed-in-round-{round}");
        s.apply(format!("set key{i:010}={value}").as_bytes());
        written.insert(format!("key{i:010}").into(), Some(value.into()));
    }
    (s, written)
}

pub(crate) fn bench_delta(args: &Args, r: &mut Report) {
    r.section(
        &format!(
            "g. Incremental snapshot of {} keys after 1% changed",
            args.keys
        ),
        "A delta against a full snapshot of the same state, both written end to end (write, \
         fsync, rename, directory fsync). The delta is made as the node makes it: from the keys \
         the appender saw written since the parent's cut. The first delta after a restart \
         (whose replayed log the appender did not see written) diffs the two persistent maps \
         instead; that diff's time is shown too.",
    );
    let base = big_state(args.keys);
    let d = fresh(&args.dir, "g");
    let fs = flintlog::fs::RealFs;
    let chunk = &flintlog::snapshot::WritePace::unpaced(config(&d).snapshot_sync_chunk_bytes);
    let parent = flintlog::snapshot::write(&fs, &d, Offset::new(1), &base, chunk).expect("base");
    let (mut tf, mut td, mut sf, mut sd, mut n) = (vec![], vec![], 0, 0, 0);
    let mut tdiff = vec![];
    for run in 0..args.runs as u64 + 1 {
        let (next, written) = changed(&base, run);
        let started = Instant::now();
        let full = flintlog::snapshot::write(&fs, &d, Offset::new(2), &next, chunk).expect("full");
        let t_full = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let diffed = base.changes_to(&next);
        let t_diff = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let changes = changes_of(&written);
        assert_eq!(changes, diffed, "both ways find the same changes");
        let delta = flintlog::snapshot::write_delta(
            &fs,
            &d,
            Offset::new(2),
            &parent,
            &changes,
            next.other_payloads,
            chunk,
        )
        .expect("delta");
        let t_delta = started.elapsed().as_secs_f64();
        if run > 0 {
            // run 0 is the warm-up
            tf.push(t_full);
            td.push(t_delta);
            tdiff.push(t_diff);
        }
        (sf, sd, n) = (full.size_bytes, delta.size_bytes, changes.len());
    }
    let (tf, td) = (median(tf), median(td));
    let (bytes, time) = (sd as f64 / sf as f64, td / tf);
    r.target(
        "delta bytes vs full, 1% changed",
        format!("{:.2}%", bytes * 100.0),
        "<= 5%",
        bytes <= 0.05,
    );
    r.target(
        "delta time vs full, 1% changed",
        format!("{:.2}%", time * 100.0),
        "<= 10%",
        time <= 0.10,
    );
    let tdiff = median(tdiff);
    if time > 0.10 {
        r.note(format!(
            "A delta takes {:.1}% of a full snapshot's time, not 10% ({:.1} ms against \
             {:.1} ms, for {:.2}% of the bytes). Its fixed costs (two fdatasyncs, a rename and \
             a directory fsync) weigh more as the full snapshot gets faster.",
            time * 100.0,
            td * 1e3,
            tf * 1e3,
            bytes * 100.0
        ));
    }
    r.table(
        &[
            "keys changed",
            "full bytes",
            "delta bytes",
            "bytes ratio",
            "full (s)",
            "delta (s)",
            "diff of the maps (s)",
            "time ratio",
        ],
        &[vec![
            n.to_string(),
            sf.to_string(),
            sd.to_string(),
            format!("{:.2}%", bytes * 100.0),
            format!("{tf:.3}"),
            format!("{td:.4}"),
            format!("{tdiff:.4}"),
            format!("{:.2}%", time * 100.0),
        ]],
    );
}

pub(crate) fn bench_chain_recovery(args: &Args, r: &mut Report) {
    r.section(
        "h. Recovery from a chain of deltas",
        &format!(
            "Opening a node whose state ({k} keys) is a full snapshot plus 8 deltas (1% of \
             the keys changed before each), against a node with the same entries and one full \
             snapshot of the same final state; both logs compacted to the snapshot.",
            k = args.keys
        ),
    );
    let build = |name: &str, deltas: bool| {
        let d = fresh(&args.dir, name);
        let node = Node::open(config(&d)).expect("open");
        fill(&node, args.keys, args.keys);
        let mut at = args.keys;
        if deltas {
            node.snapshotter()
                .snapshot_mode(SnapshotMode::Full)
                .expect("base");
        }
        for _ in 0..8 {
            // 1% of the keys: entry i sets key i % keys, so a run of keys/100 entries.
            fill_range(&node, at, at + args.keys / 100, args.keys);
            at += args.keys / 100;
            if deltas {
                node.snapshotter()
                    .snapshot_mode(SnapshotMode::Incremental)
                    .expect("delta");
            }
        }
        let snap = node
            .snapshotter()
            .snapshot_mode(if deltas {
                SnapshotMode::Incremental
            } else {
                SnapshotMode::Full
            })
            .expect("snapshot");
        node.compactor().compact(snap.offset).expect("compact");
        node.shutdown().expect("shutdown");
        d
    };
    let chain = build("h-chain", true);
    let full = build("h-full", false);
    open_time(&chain);
    open_time(&full);
    let (mut tc, mut tf, mut lc, mut lf) = (vec![], vec![], vec![], vec![]);
    for _ in 0..args.runs {
        let (t, _, load, _) = open_time(&chain);
        tc.push(t);
        lc.push(load);
        let (t, _, load, _) = open_time(&full);
        tf.push(t);
        lf.push(load);
    }
    let (tc, tf) = (median(tc), median(tf));
    r.target(
        "recovery from base + 8 deltas vs one full snapshot",
        format!("{:.2}x", tc / tf),
        "<= 1.2x",
        tc / tf <= 1.2,
    );
    r.table(
        &["directory", "open (s)", "snapshot load (s)", "ratio"],
        &[
            vec![
                "full snapshot + 8 deltas".into(),
                format!("{tc:.3}"),
                format!("{:.3}", median(lc)),
                format!("{:.2}x", tc / tf),
            ],
            vec![
                "one full snapshot".into(),
                format!("{tf:.3}"),
                format!("{:.3}", median(lf)),
                "1.00x".into(),
            ],
        ],
    );
    let _ = std::fs::remove_dir_all(&chain);
    let _ = std::fs::remove_dir_all(&full);
}

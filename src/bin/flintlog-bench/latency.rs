//! Append latency while a snapshot is written and while a compaction frees segments.

use super::*;

/// Latencies of appends by 8 writers: (idle histogram, histogram while `during` runs,
/// duration of `during`).
pub(crate) fn latency_around(
    node: &Node,
    idle: Duration,
    during: impl FnOnce(),
) -> (Histogram<u64>, Histogram<u64>, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(std::sync::atomic::AtomicU8::new(0)); // 0 warm-up, 1 idle, 2 during, 3 after
    let hists = Arc::new(Mutex::new((
        Histogram::<u64>::new(3).unwrap(),
        Histogram::<u64>::new(3).unwrap(),
    )));
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (a, stop, phase, hists) = (
                node.appender().clone(),
                stop.clone(),
                phase.clone(),
                hists.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    a.append(PAYLOAD).expect("append");
                    let us = t.elapsed().as_micros().max(1) as u64;
                    match phase.load(Ordering::Relaxed) {
                        1 => hists.lock().unwrap().0.record(us).ok(),
                        2 => hists.lock().unwrap().1.record(us).ok(),
                        _ => None,
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    phase.store(1, Ordering::Relaxed);
    std::thread::sleep(idle);
    phase.store(2, Ordering::Relaxed);
    let started = Instant::now();
    during();
    let took = started.elapsed().as_secs_f64();
    phase.store(3, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    writers.into_iter().for_each(|w| w.join().expect("writer"));
    let h = hists.lock().unwrap();
    (h.0.clone(), h.1.clone(), took)
}

pub(crate) fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub(crate) fn bench_appends_during_snapshot(args: &Args, r: &mut Report) {
    r.section(
        &format!("b. Appends during a snapshot of {} keys", args.keys),
        "Eight writers append continuously; latency while the snapshotter writes a snapshot \
         of the large state, against the idle period just before it. The hand-off pause is \
         what the append path spends giving the state to the snapshotter: a clone of the \
         persistent map and a channel send, measured directly. The body is encoded on a \
         thread under SCHED_IDLE; while the log syncs, the snapshotter writes it at most at \
         `snapshot_busy_bytes_per_sec` (128 MiB/s). The raw log \
         beside it is the disk's own share: one thread writing and fdatasyncing 4 records \
         at a time into a zero-filled file, timed per sync, idle and then while another \
         thread writes a file of the snapshot's size as the snapshotter does (same writes, \
         same write-back chunks, rename, directory sync), at full speed and then at the \
         node's rate, each run right after the node's. Median of 5 runs or more: one run's \
         idle second alone can be twice another's on this shared disk.",
    );
    let d = fresh(&args.dir, "b");
    let node = Node::open(config(&d)).expect("open");
    fill(&node, args.keys, args.keys);
    let mut rows = Vec::new();
    let (mut idle99, mut snap99, mut idlemax, mut snapmax) = (vec![], vec![], vec![], vec![]);
    let (mut raw_ratio, mut raw_max, mut raw_paced) = (vec![], vec![], vec![]);
    let chunk = config(&d).snapshot_sync_chunk_bytes;
    let rate = config(&d).snapshot_busy_bytes_per_sec;
    for _ in 0..args.runs.max(5) {
        let mut bytes = 0;
        let (idle, during, took) = latency_around(&node, Duration::from_secs(1), || {
            bytes = node.snapshotter().snapshot().expect("snapshot").size_bytes;
        });
        idle99.push(ms(&idle, 0.99));
        snap99.push(ms(&during, 0.99));
        idlemax.push(idle.max() as f64 / 1000.0);
        snapmax.push(during.max() as f64 / 1000.0);
        rows.push(took);
        let (idle, during, _) = raw_latency_around(&d, 4, Duration::from_secs(1), || {
            write_like_a_snapshot(&d, bytes, chunk, 0)
        });
        raw_ratio.push(ms(&during, 0.99) / ms(&idle, 0.99));
        raw_max.push(during.max() as f64 / 1000.0);
        let (idle, during, _) = raw_latency_around(&d, 4, Duration::from_secs(1), || {
            write_like_a_snapshot(&d, bytes, chunk, rate)
        });
        raw_paced.push(ms(&during, 0.99) / ms(&idle, 0.99));
    }
    let (raw_ratio, raw_max, raw_paced) = (median(raw_ratio), median(raw_max), median(raw_paced));
    node.shutdown().expect("shutdown");
    let state = big_state(args.keys);
    let (tx, rx) = crossbeam_channel::bounded(1);
    let mut pauses = vec![];
    for _ in 0..args.runs.max(3) {
        let t = Instant::now();
        tx.send(state.clone()).expect("send");
        pauses.push(t.elapsed().as_secs_f64() * 1e6);
        drop(rx.recv());
    }
    let (i99, s99) = (median(idle99), median(snap99));
    let (smax, pause) = (median(snapmax.clone()), median(pauses.clone()));
    r.target(
        "append p99 during a snapshot vs idle",
        format!("{:.2}x", s99 / i99),
        "<= 1.5x",
        s99 / i99 <= 1.5,
    );
    if s99 / i99 > 1.5 {
        r.note(format!(
            "Append p99 during a snapshot is {:.2}x idle ({s99:.2} ms against {i99:.2} ms; \
             the worst append {smax:.1} ms). The hand-off is not the cause ({pause:.1} µs): \
             the snapshot's writes share the one disk with the log: each log fdatasync \
             flushes the disk's cache, and with it the snapshot bytes written since the one \
             before. The same I/O without flintlog, a raw log beside a file written as the \
             snapshot is, measured {raw_ratio:.2}x at full speed (worst sync {raw_max:.1} ms) \
             and {raw_paced:.2}x at the node's {} MiB/s: that is the disk's share; the rest \
             is CPU on the two cores the writers use: the snapshotter's own writing thread, \
             and the body's encoder wherever no core is idle; {}.",
            s99 / i99,
            rate >> 20,
            disk_facts(&args.dir)
        ));
    }
    r.target(
        "append max during a snapshot",
        format!("{smax:.1} ms"),
        "<= 20 ms",
        smax <= 20.0,
    );
    r.target(
        "hand-off pause",
        format!("{pause:.1} µs"),
        "<= 10 ms",
        pause <= 10_000.0,
    );
    r.table(
        &[
            "p99 idle (ms)",
            "p99 during (ms)",
            "p99 ratio",
            "max idle (ms)",
            "max during (ms)",
            "snapshot (s)",
            "hand-off pause (µs)",
            "raw log p99 ratio",
            "raw log max during (ms)",
            "raw log p99 ratio, writer at the node's rate",
        ],
        &[vec![
            format!("{i99:.2}"),
            format!("{s99:.2}"),
            format!("{:.2}x", s99 / i99),
            format!("{:.2}", median(idlemax)),
            format!("{:.2}", median(snapmax)),
            format!("{:.2}", median(rows)),
            format!("{:.1}", median(pauses)),
            format!("{raw_ratio:.2}x"),
            format!("{raw_max:.2}"),
            format!("{raw_paced:.2}x"),
        ]],
    );
}

pub(crate) fn bench_appends_during_compaction(args: &Args, r: &mut Report) {
    r.section(
        "e. Appends while compaction deletes segments",
        "Eight writers append continuously; latency while a compaction deletes the 4 million \
         entries of sealed 16 MiB segments a durable snapshot covers, against the idle \
         period just before it. The raw log beside it is the disk's own share: one thread \
         writing and fdatasyncing 4 records at a time, timed per sync, idle and then while \
         another thread frees as many 16 MiB files as the compactor does (same steps, same \
         pauses), each run right after the node's.",
    );
    let (mut i99, mut c99, mut cmax, mut freed) = (vec![], vec![], vec![], 0);
    let (mut raw_ratio, mut raw_max) = (vec![], vec![]);
    let (step, pause) = (
        config(&args.dir).delete_chunk_bytes,
        config(&args.dir).delete_pause,
    );
    for _ in 0..args.runs {
        let d = fresh(&args.dir, "e");
        let mut c = config(&d);
        c.segment_bytes_max = 16 * 1024 * 1024;
        let node = Node::open(c).expect("open");
        fill(&node, 4_000_000, 100_000);
        let snap = node.snapshotter().snapshot().expect("snapshot");
        let (idle, during, _) = latency_around(&node, Duration::from_secs(1), || {
            freed = node
                .compactor()
                .compact(snap.offset)
                .expect("compact")
                .bytes_freed;
        });
        i99.push(ms(&idle, 0.99));
        c99.push(ms(&during, 0.99).max(ms(&idle, 0.5)));
        cmax.push(during.max() as f64 / 1000.0);
        node.shutdown().expect("shutdown");
        let size = 16 * 1024 * 1024;
        let files = segments_to_free(&d, (freed / size).max(1) as usize, size);
        let (idle, during, _) = raw_latency_around(&d, 4, Duration::from_secs(1), || {
            free_like_compaction(&files, size, step, pause)
        });
        raw_ratio.push(ms(&during, 0.99).max(ms(&idle, 0.5)) / ms(&idle, 0.99));
        raw_max.push(during.max() as f64 / 1000.0);
    }
    let (raw_ratio, raw_max) = (median(raw_ratio), median(raw_max));
    let (i, c) = (median(i99), median(c99));
    r.target(
        "append p99 while compacting vs idle",
        format!("{:.2}x", c / i),
        "<= 1.2x",
        c / i <= 1.2,
    );
    if c / i > 1.2 {
        r.note(format!(
            "Append p99 while compacting is {:.2}x idle ({c:.2} ms against {i:.2} ms). \
             Compaction frees {freed} bytes by truncating each segment {} KiB at a time, \
             {} ms apart; each step frees blocks that the log's next fdatasync can queue \
             behind. The same frees without flintlog, beside a raw log, measured \
             {raw_ratio:.2}x (worst sync {raw_max:.1} ms): that is the disk's share; {}. \
             See the dated notes below for what unpaced unlinking measured.",
            c / i,
            step / 1024,
            pause.as_millis(),
            disk_facts(&args.dir)
        ));
    }
    r.table(
        &[
            "bytes freed",
            "p99 idle (ms)",
            "p99 during (ms)",
            "ratio",
            "max during (ms)",
            "raw log p99 ratio",
            "raw log max during (ms)",
        ],
        &[vec![
            freed.to_string(),
            format!("{i:.2}"),
            format!("{c:.2}"),
            format!("{:.2}x", c / i),
            format!("{:.2}", median(cmax)),
            format!("{raw_ratio:.2}x"),
            format!("{raw_max:.2}"),
        ]],
    );
}

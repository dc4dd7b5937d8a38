//! The log shipped to the store (SeaweedFS started here, as for section j): a node's
//! appends with shipping on against off, interleaved; the recovery point's age while
//! it writes; and a restore of a chain plus its shipped log against `weed download` of
//! the same bytes.

use flintlog::store::{self, Point, StoreConfig};

use super::store::store_config;
use super::*;

/// Appends by `writers` threads for `seconds` on `node`; appends/s, and the recovery
/// point's age (ms) sampled every 20 ms meanwhile: how long ago the oldest entry not yet
/// in the store was written (0 when every durable entry is shipped), bounded from above
/// by the last sample before that entry existed.
fn appends_with_age(node: &Node, writers: usize, seconds: f64) -> (f64, Vec<f64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles = append_writers(node, writers, &stop);
    let mut ages = Vec::new();
    // When the log's end was where: (time, next offset), oldest first.
    let mut history: Vec<(Instant, u64)> = Vec::new();
    while started.elapsed().as_secs_f64() < seconds {
        let s = node.appender().status().expect("status");
        let now = Instant::now();
        if let Some(u) = s.store.filter(|u| u.shipping) {
            let shipped_end = u.shipped_offset.map_or(0, |o| o + 1);
            let age = match u.unshipped_entries {
                Some(0) => Some(0.0),
                _ => history
                    .iter()
                    .rev()
                    .find(|(_, next)| *next <= shipped_end)
                    .map(|(at, _)| now.duration_since(*at).as_secs_f64() * 1000.0),
            };
            ages.extend(age);
        }
        history.push((now, s.next_offset.get()));
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let total: u64 = handles.into_iter().map(|h| h.join().expect("writer")).sum();
    (total as f64 / started.elapsed().as_secs_f64(), ages)
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

pub(crate) fn bench_shipping(args: &Args, r: &mut Report) {
    const WRITERS: usize = 64;
    r.section(
        "l. The log shipped",
        &format!(
            "A real SeaweedFS (`weed server -s3`, loopback, on the same cores). A node with \
             `--snapshot-store` writes {WRITERS} writers' appends for {} s with \
             `--ship-log` (interval 1 s) and without, interleaved, {} runs each; the \
             recovery point's age (how long ago the oldest entry not yet in the store was \
             written; 0 when all is shipped) sampled every 20 ms during the runs with it. Then the log those runs shipped restored with `restore --to-offset` \
             (each object downloaded, every record verified, written and synced) against \
             the same objects fetched through the same client into a file and synced \
             (the ceiling: the restore's work without its checks), and against `weed download` of a file of the same bytes \
             (SeaweedFS's own client, which starts a process per run).",
            args.seconds, args.runs
        ),
    );
    let Some(base) = store_config(&format!("bench-ship-{}", std::process::id())) else {
        r.target(
            "log shipping benchmarks",
            "SeaweedFS did not start".into(),
            "run",
            false,
        );
        return;
    };
    let open = |dir: &Path, ship: bool| {
        let mut c = config(dir);
        let mut s: StoreConfig = base.clone();
        s.url.push_str(if ship { "-on" } else { "-off" });
        s.ship_log = ship;
        c.snapshot_store = Some(s);
        Node::open(c).expect("open")
    };
    let (on_dir, off_dir) = (fresh(&args.dir, "l-on"), fresh(&args.dir, "l-off"));
    let (on, off) = (open(&on_dir, true), open(&off_dir, false));
    let (mut with, mut without, mut ages) = (vec![], vec![], vec![]);
    for _ in 0..args.runs {
        let (rate, a) = appends_with_age(&on, WRITERS, args.seconds);
        with.push(rate);
        ages.extend(a);
        without.push(appends_with_age(&off, WRITERS, args.seconds).0);
    }
    off.shutdown().expect("shutdown");
    // The chain the restore starts from: at 0, with no file (a history shipped from its
    // first entry), so that the restore is the shipped log alone.
    let shipped_to = on.appender().status().expect("status").next_offset.get();
    on.shutdown().expect("shutdown");
    let mut ship_store = base.clone();
    ship_store.url.push_str("-on");
    let s = store::open(&ship_store).expect("store");
    let objects = store::shipped::list(&*s, "n1").expect("list");
    let log_bytes: u64 = objects.iter().map(|o| o.size).sum();
    let target = fresh(&args.dir, "l-restore");
    let (mut restores, mut weeds, mut gets, mut fixed) = (vec![], vec![], vec![], vec![]);
    let all = target.join("objects");
    {
        let mut f = std::fs::File::create(&all).expect("scratch file");
        for o in &objects {
            s.get(&o.object, &mut f).expect("get");
        }
    }
    // The checks alone: every object decoded and verified in memory.
    let in_memory: Vec<(store::shipped::ShippedRange, Vec<u8>)> = objects
        .iter()
        .map(|o| {
            let mut b = Vec::new();
            s.get(&o.object, &mut b).expect("get");
            (o.clone(), b)
        })
        .collect();
    let mut checks = vec![];
    for run in 0..args.runs {
        let started = Instant::now();
        for (o, b) in &in_memory {
            store::shipped::decode(o, b).expect("verifies");
        }
        checks.push(started.elapsed().as_secs_f64());
        let dir = target.join(format!("n1-{run}"));
        let started = Instant::now();
        let restored = store::restore_to(
            &*s,
            &flintlog::fs::RealFs,
            &dir,
            Some("n1"),
            Point::Offset(shipped_to),
        )
        .expect("restore");
        restores.push(started.elapsed().as_secs_f64());
        assert_eq!(restored.log.next, shipped_to);
        let _ = std::fs::remove_dir_all(&dir);
        // The same restore to offset 0: no object fetched, the directory made durable
        // alone (its fixed cost: a segment, log.meta, the renames, each synced).
        let empty = target.join(format!("empty-{run}"));
        let started = Instant::now();
        store::restore_to(
            &*s,
            &flintlog::fs::RealFs,
            &empty,
            Some("n1"),
            Point::Offset(0),
        )
        .expect("restore");
        fixed.push(started.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(&empty);
        // `weed upload` then `weed download` of the same bytes: the download's time.
        weeds.push(super::store::weed_ceiling(&all, &target.join(format!("weed-{run}"))).1);
        // The same objects fetched through the same client into one file, synced: the
        // restore's work without its checks and decoding (the ceiling).
        let copy = target.join(format!("copy-{run}"));
        let started = Instant::now();
        {
            let mut f = std::fs::File::create(&copy).expect("scratch file");
            for o in &objects {
                s.get(&o.object, &mut f).expect("get");
            }
            f.sync_data().expect("sync");
        }
        gets.push(started.elapsed().as_secs_f64());
        let _ = std::fs::remove_file(&copy);
    }
    let (on_rate, off_rate) = (median(with.clone()), median(without.clone()));
    let ratio = on_rate / off_rate;
    let mb = log_bytes as f64 / 1e6;
    let restore_rate = mb / median(restores.clone());
    let weed_rate = mb / median(weeds.clone());
    let get_rate = mb / median(gets.clone());
    let p99 = quantile(ages.clone(), 0.99);
    r.table(
        &["", "median", "runs"],
        &[
            vec![
                format!("appends/s, {WRITERS} writers, `--ship-log`"),
                format!("{on_rate:.0}"),
                format!("{:.0?}", with),
            ],
            vec![
                format!("appends/s, {WRITERS} writers, chains only"),
                format!("{off_rate:.0}"),
                format!("{:.0?}", without),
            ],
            vec![
                "shipping on / off".into(),
                format!("{ratio:.2}x"),
                String::new(),
            ],
            vec![
                format!(
                    "recovery point's age, ms ({} samples): p50 / p99 / max",
                    ages.len()
                ),
                format!(
                    "{:.0} / {p99:.0} / {:.0}",
                    quantile(ages.clone(), 0.5),
                    quantile(ages.clone(), 1.0)
                ),
                String::new(),
            ],
            vec![
                format!(
                    "restore of {shipped_to} shipped entries ({mb:.1} MB, {} objects), MB/s",
                    objects.len()
                ),
                format!("{restore_rate:.1}"),
                format!("{:.2?} s", restores),
            ],
            vec![
                "restore of no entry (the directory made durable alone), s".into(),
                format!("{:.3}", median(fixed.clone())),
                format!("{:.3?} s", fixed),
            ],
            vec![
                "restore without that fixed cost, MB/s".into(),
                format!(
                    "{:.1}",
                    mb / (median(restores.clone()) - median(fixed.clone())).max(1e-6)
                ),
                String::new(),
            ],
            vec![
                "the checks alone (every record's checksum and offset, in memory), s".into(),
                format!("{:.3}", median(checks.clone())),
                format!("{:.3?} s", checks),
            ],
            vec![
                "the same objects fetched into a file, synced (no checks), MB/s".into(),
                format!("{get_rate:.1}"),
                format!("{:.2?} s", gets),
            ],
            vec![
                "`weed download` of a file of the same bytes (a process per run), MB/s".into(),
                format!("{weed_rate:.1}"),
                format!("{:.2?} s", weeds),
            ],
            vec![
                "restore / fetched and synced".into(),
                format!("{:.2}x", restore_rate / get_rate),
                String::new(),
            ],
            vec![
                "restore / `weed download`".into(),
                format!("{:.2}x", restore_rate / weed_rate),
                String::new(),
            ],
        ],
    );
    r.target(
        "appends with the log shipped / chains only",
        format!("{ratio:.2}x"),
        ">= 0.9x",
        ratio >= 0.9,
    );
    r.target(
        "the recovery point's age, p99 (interval 1 s)",
        format!("{p99:.0} ms"),
        "< 2000 ms",
        p99 < 2000.0,
    );
    r.target(
        "restore of shipped log / the same objects fetched and synced",
        format!("{:.2}x", restore_rate / get_rate),
        ">= 0.8x",
        restore_rate / get_rate >= 0.8,
    );
    let _ = std::fs::remove_dir_all(&target);
}

//! The log shipped to the store (SeaweedFS started here, as for section j): a node's
//! appends with shipping on against off, interleaved; the recovery point's age while
//! it writes; and a restore of a chain plus its shipped log against `weed download` of
//! the same bytes.

use flintlog::store::{self, Point, StoreConfig};

use super::store::store_config;
use super::*;

/// Appends by `writers` threads for `seconds` on `node`; appends/s, and the shipped
/// log's age (ms) sampled every 20 ms meanwhile.
fn appends_with_age(node: &Node, writers: usize, seconds: f64) -> (f64, Vec<f64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let a = node.appender().clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    a.append(PAYLOAD).expect("append");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut ages = Vec::new();
    while started.elapsed().as_secs_f64() < seconds {
        std::thread::sleep(Duration::from_millis(20));
        let s = node.appender().status().expect("status");
        if let Some(age) = s
            .store
            .and_then(|u| u.shipped_at_ms)
            .map(|at| now_ms().saturating_sub(at))
        {
            ages.push(age as f64);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let total: u64 = handles.into_iter().map(|h| h.join().expect("writer")).sum();
    (total as f64 / started.elapsed().as_secs_f64(), ages)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Seconds `weed upload` then `weed download` take for `file`.
fn weed_download(file: &Path, scratch: &Path) -> f64 {
    super::store::weed_ceiling(file, scratch).1
}

pub(crate) fn bench_shipping(args: &Args, r: &mut Report) {
    const WRITERS: usize = 64;
    r.section(
        "l. The log shipped",
        &format!(
            "A real SeaweedFS (`weed server -s3`, loopback, on the same cores). A node with \
             `--snapshot-store` writes {WRITERS} writers' appends for {} s with \
             `--ship-log` (interval 1 s) and without, interleaved, {} runs each; the \
             shipped log's age (`shipped_age_ms`) sampled every 20 ms during the runs with \
             it. Then the log those runs shipped restored with `restore --to-offset` \
             (each object downloaded, every record verified, written and synced) against \
             `weed download` of a file of the same bytes (SeaweedFS's own client: the \
             ceiling).",
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
    let (mut restores, mut weeds) = (vec![], vec![]);
    let all = target.join("objects");
    {
        let mut f = std::fs::File::create(&all).expect("scratch file");
        for o in &objects {
            s.get(&o.object, &mut f).expect("get");
        }
    }
    for run in 0..args.runs {
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
        weeds.push(weed_download(&all, &target.join(format!("weed-{run}"))));
    }
    let (on_rate, off_rate) = (median(with.clone()), median(without.clone()));
    let ratio = on_rate / off_rate;
    let mb = log_bytes as f64 / 1e6;
    let restore_rate = mb / median(restores.clone());
    let weed_rate = mb / median(weeds.clone());
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
                    "shipped log's age, ms ({} samples): p50 / p99 / max",
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
                "`weed download` of the same bytes, MB/s".into(),
                format!("{weed_rate:.1}"),
                format!("{:.2?} s", weeds),
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
        "the shipped log's age, p99 (interval 1 s)",
        format!("{p99:.0} ms"),
        "< 2000 ms",
        p99 < 2000.0,
    );
    r.target(
        "restore of shipped log / `weed download`",
        format!("{:.2}x", restore_rate / weed_rate),
        ">= 0.8x",
        restore_rate / weed_rate >= 0.8,
    );
    let _ = std::fs::remove_dir_all(&target);
}

//! The snapshot store on a real SeaweedFS started here (the same launcher as the
//! tests'): a 1M-key snapshot uploaded by the node's uploader and restored by
//! `restore`, against SeaweedFS's own `weed upload` / `weed download` of the same bytes
//! (the ceiling), and a node's append latency while its uploader ships a snapshot
//! against idle, side by side.

use flintlog::store::{self, Credentials, StoreConfig};

use super::*;

#[path = "../../../tests/it/weed.rs"]
#[allow(dead_code)]
mod weed;

fn store_config(prefix: &str) -> Option<StoreConfig> {
    let w = match weed::weed() {
        Ok(w) => w,
        Err(why) => {
            eprintln!("j: SeaweedFS cannot run here: {why}");
            return None;
        }
    };
    let mut c = StoreConfig::new(format!("s3://{}/{prefix}", weed::BUCKET));
    c.endpoint = Some(w.endpoint.clone());
    c.credentials = Some(Credentials {
        access_key_id: weed::ACCESS_KEY.into(),
        secret_access_key: weed::SECRET_KEY.into(),
    });
    Some(c)
}

/// Seconds `weed upload` then `weed download` take for `file` (SeaweedFS's own client,
/// straight to its volume server).
fn weed_ceiling(file: &Path, scratch: &Path) -> (f64, f64) {
    let w = weed::weed().expect("started");
    let started = Instant::now();
    let out = std::process::Command::new(&w.binary)
        .args(["upload", &format!("-master=127.0.0.1:{}", w.master_port)])
        .arg(file)
        .output()
        .expect("weed upload");
    let up = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let fid = text
        .split("\"fid\":\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap_or_else(|| panic!("no fid in weed upload's answer: {text}"))
        .to_string();
    std::fs::create_dir_all(scratch).unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(&w.binary)
        .args(["download", &format!("-server=127.0.0.1:{}", w.master_port)])
        .arg(format!("-dir={}", scratch.display()))
        .arg(&fid)
        .output()
        .expect("weed download");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (up, started.elapsed().as_secs_f64())
}

pub(crate) fn bench_store(args: &Args, r: &mut Report) {
    let keys = args.keys;
    r.section(
        "j. The snapshot store",
        &format!(
            "A real SeaweedFS (`weed server -s3`, one process on this machine, loopback). \
             A full snapshot of {keys} keys uploaded by the node's uploader (checksum, \
             multipart in 8 MiB parts, manifest) and restored by `restore` (download, \
             checksums, full verification of the file, the log started), against `weed \
             upload` / `weed download` of the same file (SeaweedFS's own client: the \
             ceiling). Then a node's append latency (8 writers) while its uploader ships \
             that snapshot, against the same node idle. Median of {} runs, interleaved.",
            args.runs
        ),
    );
    let Some(base_config) = store_config(&format!("bench-{}", std::process::id())) else {
        r.target(
            "snapshot store benchmarks",
            "SeaweedFS did not start".into(),
            "run",
            false,
        );
        return;
    };
    let d = fresh(&args.dir, "j");
    // The node, its state, its snapshot: written once.
    let mut config = config(&d);
    config.snapshot_store = Some(base_config.clone());
    let node = Node::open(config).expect("open");
    fill(&node, keys);
    let (mut ups, mut restores, mut weed_ups, mut weed_downs) = (vec![], vec![], vec![], vec![]);
    let (mut idle, mut during) = (vec![], vec![]);
    let mut size = 0;
    for run in 0..args.runs {
        // The uploader ships each new snapshot: timed from the durable snapshot to its
        // manifest in the store, with appends measured meanwhile.
        let before = writers_p99(&node, Duration::from_millis(1500), || false);
        let snap = node
            .snapshotter()
            .snapshot_mode(SnapshotMode::Full)
            .expect("snapshot");
        size = snap.size_bytes;
        let started = Instant::now();
        let uploaded = || {
            node.appender()
                .status()
                .expect("status")
                .store
                .expect("store")
                .uploaded_index
                == Some(snap.offset.get())
        };
        let while_up = writers_p99(&node, Duration::from_secs(60), uploaded);
        while !uploaded() {
            std::thread::sleep(Duration::from_millis(1));
        }
        ups.push(started.elapsed().as_secs_f64());
        idle.push(before);
        during.push(while_up);
        let file = d.join("n1").join(&snap.file);
        let (wu, wd) = weed_ceiling(&file, &d.join(format!("weed-{run}")));
        weed_ups.push(wu);
        weed_downs.push(wd);
        let target = d.join(format!("restored-{run}"));
        let s = store::open(&base_config).expect("store");
        let started = Instant::now();
        let restored = store::restore(&*s, &flintlog::fs::RealFs, &target, Some(snap.offset.get()))
            .expect("restore");
        restores.push(started.elapsed().as_secs_f64());
        assert_eq!(restored.bytes, snap.size_bytes);
        let _ = std::fs::remove_dir_all(&target);
        // A new write, so the next run's snapshot is a new chain.
        node.appender()
            .kv_set("bench-run", &run.to_string())
            .expect("write");
    }
    node.shutdown().expect("shutdown");
    let mb = size as f64 / 1e6;
    let rate = |v: &[f64]| mb / median(v.to_vec());
    let secs = |v: &[f64]| format!("{:.2?}", v);
    r.table(
        &[
            "",
            "MB/s (median)",
            "seconds per run",
            "vs SeaweedFS's own client",
        ],
        &[
            vec![
                format!("upload by the uploader ({mb:.1} MB)"),
                format!("{:.1}", rate(&ups)),
                secs(&ups),
                format!("{:.2}x", rate(&ups) / rate(&weed_ups)),
            ],
            vec![
                "`weed upload`".into(),
                format!("{:.1}", rate(&weed_ups)),
                secs(&weed_ups),
                String::new(),
            ],
            vec![
                "restore (download, verify, start the log)".into(),
                format!("{:.1}", rate(&restores)),
                secs(&restores),
                format!("{:.2}x", rate(&restores) / rate(&weed_downs)),
            ],
            vec![
                "`weed download`".into(),
                format!("{:.1}", rate(&weed_downs)),
                secs(&weed_downs),
                String::new(),
            ],
        ],
    );
    let (pi, pd) = (median(idle.clone()), median(during.clone()));
    r.table(
        &[
            "append p99 (ms), 8 writers",
            "idle",
            "while uploading",
            "ratio",
            "runs (idle / during)",
        ],
        &[vec![
            String::new(),
            format!("{pi:.2}"),
            format!("{pd:.2}"),
            format!("{:.2}x", pd / pi),
            format!("{:.2?} / {:.2?}", idle, during),
        ]],
    );
    r.target(
        "append p99 while uploading a snapshot vs idle",
        format!("{:.2}x", pd / pi),
        "≤ 1.2x",
        pd / pi <= 1.2,
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// Writes `keys` distinct keys through 8 pipelined writers.
fn fill(node: &Node, keys: u64) {
    let app = node.appender().clone();
    let app = &app;
    let next = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(256, Ordering::Relaxed);
                    if i >= keys {
                        break;
                    }
                    let (tx, rx) = crossbeam_channel::unbounded();
                    for k in i..(i + 256).min(keys) {
                        let tx = tx.clone();
                        app.kv_set_with(
                            format!("key{k:08}"),
                            format!("value-{k}"),
                            Reply::new(move |r| drop(tx.send(r))),
                        );
                    }
                    drop(tx);
                    for r in rx {
                        r.expect("write");
                    }
                }
            });
        }
    });
}

/// The p99 (ms) of appends by 8 writers, one at a time each, until `done` or `limit`.
fn writers_p99(node: &Node, limit: Duration, done: impl Fn() -> bool) -> f64 {
    let app = node.appender().clone();
    let app = &app;
    let stop = AtomicBool::new(false);
    let lat = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for w in 0..8 {
            let (stop, lat) = (&stop, &lat);
            s.spawn(move || {
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    app.append(format!("w{w} {PAYLOAD}")).expect("append");
                    mine.push(t.elapsed().as_secs_f64() * 1e3);
                }
                lat.lock().unwrap().extend(mine);
            });
        }
        while started.elapsed() < limit
            && !(started.elapsed() > Duration::from_millis(20) && done())
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let mut v = lat.into_inner().unwrap();
    v.sort_by(f64::total_cmp);
    v.get((v.len() * 99 / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

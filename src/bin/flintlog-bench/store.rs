//! The snapshot store on a real SeaweedFS started here (the same launcher as the
//! tests'): a 1M-key snapshot uploaded by the node's uploader and restored by
//! `restore`, against SeaweedFS's own `weed upload` / `weed download` of the same bytes
//! (the ceiling), the same upload and restore with every object encrypted against in
//! the clear, and a node's append latency while its uploader ships a snapshot against
//! idle, side by side.

use flintlog::store::seal::StoreKey;
use flintlog::store::{self, Credentials, StoreConfig};

use super::*;

#[path = "../../../tests/it/weed.rs"]
#[allow(dead_code)]
mod weed;

pub(crate) fn store_config(prefix: &str) -> Option<StoreConfig> {
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
pub(crate) fn weed_ceiling(file: &Path, scratch: &Path) -> (f64, f64) {
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
             ceiling); the same upload and restore with `--store-key-file` (every object \
             encrypted and authenticated), by a second node filled alike. Then a node's \
             append latency (8 writers) while its uploader ships that snapshot, against \
             the same node idle. Median of {} runs, interleaved.",
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
    let sealed_dir = fresh(&args.dir, "j-sealed");
    // The same work with every object encrypted (its own prefix and node).
    let mut sealed_config = base_config.clone();
    sealed_config.url.push_str("-sealed");
    let key = StoreKey::generate().expect("a key");
    sealed_config.keys = vec![StoreKey::from_hex(&key).expect("a key")];
    let open_at = |dir: &Path, store: &StoreConfig, rate: u64| {
        let mut config = config(dir);
        // No snapshot retired during the runs: a snapshot's answer comes when it is
        // durable, not after retention freed an old one, so the upload is timed from
        // there.
        config.policy.retain_snapshots = 100;
        let mut store = store.clone();
        store.upload_bytes_per_sec = rate;
        config.snapshot_store = Some(store);
        Node::open(config).expect("open")
    };
    let open = |rate: u64| open_at(&d, &base_config, rate);
    // Throughput: the uploader unpaced, in the clear and encrypted, interleaved.
    let node = open(0);
    fill(&node, keys, keys);
    let sealed_node = open_at(&sealed_dir, &sealed_config, 0);
    fill(&sealed_node, keys, keys);
    let (mut ups, mut restores, mut weed_ups, mut weed_downs) = (vec![], vec![], vec![], vec![]);
    let (mut sealed_ups, mut sealed_restores) = (vec![], vec![]);
    let mut size = 0;
    let restore_timed = |config: &StoreConfig, target: &Path, snap: &flintlog::SnapshotFile| {
        let s = store::open(config).expect("store");
        let started = Instant::now();
        let restored = store::restore(
            &*s,
            &flintlog::fs::RealFs,
            target,
            None,
            Some(snap.offset.get()),
        )
        .expect("restore");
        let took = started.elapsed().as_secs_f64();
        assert_eq!(restored.bytes, snap.size_bytes);
        let _ = std::fs::remove_dir_all(target);
        took
    };
    for run in 0..args.runs {
        let (snap, took, _) = snapshot_and_upload(&node, false);
        size = snap.size_bytes;
        ups.push(took);
        let file = d.join("n1").join(&snap.file);
        let (wu, wd) = weed_ceiling(&file, &d.join(format!("weed-{run}")));
        weed_ups.push(wu);
        weed_downs.push(wd);
        restores.push(restore_timed(
            &base_config,
            &d.join(format!("restored-{run}")),
            &snap,
        ));
        let (snap, took, _) = snapshot_and_upload(&sealed_node, false);
        sealed_ups.push(took);
        sealed_restores.push(restore_timed(
            &sealed_config,
            &sealed_dir.join(format!("restored-{run}")),
            &snap,
        ));
    }
    node.shutdown().expect("shutdown");
    sealed_node.shutdown().expect("shutdown");
    // Latency: the same node at the uploader's default rate, and unpaced.
    let rate = store::DEFAULT_UPLOAD_RATE;
    let node = open(rate);
    let (mut idle, mut during, mut paced_secs) = (vec![], vec![], vec![]);
    for _ in 0..args.runs {
        idle.push(writers_p99(&node, Duration::from_millis(1500), || false));
        let (_, took, p99) = snapshot_and_upload(&node, true);
        during.push(p99);
        paced_secs.push(took);
    }
    node.shutdown().expect("shutdown");
    let node = open(0);
    let (mut idle0, mut during0) = (vec![], vec![]);
    for _ in 0..args.runs {
        idle0.push(writers_p99(&node, Duration::from_millis(1500), || false));
        during0.push(snapshot_and_upload(&node, true).2);
    }
    node.shutdown().expect("shutdown");

    let mb = size as f64 / 1e6;
    let per_s = |v: &[f64]| mb / median(v.to_vec());
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
                format!("upload by the uploader, unpaced ({mb:.1} MB)"),
                format!("{:.1}", per_s(&ups)),
                secs(&ups),
                format!("{:.2}x", per_s(&ups) / per_s(&weed_ups)),
            ],
            vec![
                "`weed upload`".into(),
                format!("{:.1}", per_s(&weed_ups)),
                secs(&weed_ups),
                String::new(),
            ],
            vec![
                "restore (download, verify, start the log)".into(),
                format!("{:.1}", per_s(&restores)),
                secs(&restores),
                format!("{:.2}x", per_s(&restores) / per_s(&weed_downs)),
            ],
            vec![
                "`weed download`".into(),
                format!("{:.1}", per_s(&weed_downs)),
                secs(&weed_downs),
                String::new(),
            ],
        ],
    );
    let (up_ratio, restore_ratio) = (
        per_s(&sealed_ups) / per_s(&ups),
        per_s(&sealed_restores) / per_s(&restores),
    );
    r.table(
        &[
            "encrypted (--store-key-file)",
            "MB/s (median)",
            "seconds per run",
            "vs in the clear, same runs",
        ],
        &[
            vec![
                "upload by the uploader, unpaced".into(),
                format!("{:.1}", per_s(&sealed_ups)),
                secs(&sealed_ups),
                format!("{up_ratio:.2}x"),
            ],
            vec![
                "restore (download, open and authenticate, verify)".into(),
                format!("{:.1}", per_s(&sealed_restores)),
                secs(&sealed_restores),
                format!("{restore_ratio:.2}x"),
            ],
        ],
    );
    r.target(
        "encrypted upload vs in the clear",
        format!("{up_ratio:.2}x"),
        "≥ 0.8x",
        up_ratio >= 0.8,
    );
    r.target(
        "encrypted restore vs in the clear",
        format!("{restore_ratio:.2}x"),
        "≥ 0.8x",
        restore_ratio >= 0.8,
    );
    let (pi, pd) = (median(idle.clone()), median(during.clone()));
    let (pi0, pd0) = (median(idle0.clone()), median(during0.clone()));
    r.table(
        &[
            "append p99 (ms), 8 writers",
            "idle",
            "while uploading",
            "ratio",
            "runs (idle / during)",
        ],
        &[
            vec![
                format!(
                    "uploader at its default {} MiB/s ({:.1} s per upload)",
                    rate / 1024 / 1024,
                    median(paced_secs.clone())
                ),
                format!("{pi:.2}"),
                format!("{pd:.2}"),
                format!("{:.2}x", pd / pi),
                format!("{idle:.2?} / {during:.2?}"),
            ],
            vec![
                "uploader unpaced".into(),
                format!("{pi0:.2}"),
                format!("{pd0:.2}"),
                format!("{:.2}x", pd0 / pi0),
                format!("{idle0:.2?} / {during0:.2?}"),
            ],
        ],
    );
    r.target(
        "append p99 while uploading a snapshot vs idle (default rate)",
        format!("{:.2}x", pd / pi),
        "≤ 1.2x",
        pd / pi <= 1.2,
    );
    if pd / pi > 1.2 {
        r.note(format!(
            "append p99 while uploading: {:.2}x idle at the default rate, {:.2}x unpaced; the \
             store runs on the same two cores and disk as the node here",
            pd / pi,
            pd0 / pi0
        ));
    }
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&sealed_dir);
}

/// Cuts a full snapshot and waits for the uploader to put it in the store: the
/// snapshot, the seconds from its answer to its manifest, and (with `measure`) the
/// append p99 meanwhile.
fn snapshot_and_upload(node: &Node, measure: bool) -> (flintlog::SnapshotFile, f64, f64) {
    // A new write first, so that each snapshot is a new chain.
    node.appender()
        .kv_set("bench-run", &format!("{:?}", Instant::now()))
        .expect("write");
    let snap = node
        .snapshotter()
        .snapshot_mode(SnapshotMode::Full)
        .expect("snapshot");
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
    let p99 = if measure {
        writers_p99(node, Duration::from_secs(120), uploaded)
    } else {
        0.0
    };
    while !uploaded() {
        std::thread::sleep(Duration::from_millis(1));
    }
    (snap, started.elapsed().as_secs_f64(), p99)
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
    super::transfer::p99(lat.into_inner().unwrap())
}

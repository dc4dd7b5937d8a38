//! The snapshot store, against a real SeaweedFS (started once for the test binary, see
//! `weed.rs`) and the local-directory store, with the same tests: chains uploaded and
//! restored equal, a wiped node restored, a damaged or missing object detected with a
//! fallback, a store that is down while the node goes on, retention in the store,
//! compaction that waits for the store, and credentials kept out of logs and status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flintlog::core::policy::SnapshotMode;
use flintlog::fs::RealFs;
use flintlog::store::seal::StoreKey;
use flintlog::store::{self, Credentials, SnapshotStore, StoreConfig};
use flintlog::{Config, Node, Offset, Policy};

use crate::support::{binary, cannot_run};
use crate::weed::{self, ACCESS_KEY, BUCKET, Proxy, SECRET_KEY};

/// A store for one test: a local directory, or a prefix of the shared bucket.
struct Backend {
    name: &'static str,
    config: StoreConfig,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    fn open(&self) -> Box<dyn SnapshotStore> {
        store::open(&self.config).unwrap()
    }
}

fn s3_config(prefix: &str, port: u16) -> StoreConfig {
    let mut c = StoreConfig::new(format!("s3://{BUCKET}/{prefix}"));
    // Some tests take the store away: a stop waits for it only briefly.
    c.shutdown_wait = Duration::from_secs(2);
    c.endpoint = Some(format!("http://127.0.0.1:{port}"));
    c.credentials = Some(Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
    });
    c
}

/// Both stores (SeaweedFS only where it can run; under CI it must).
fn backends(test: &str) -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let mut local = StoreConfig::new(dir.path().join("store").display().to_string());
    local.shutdown_wait = Duration::from_secs(2);
    let mut all = vec![Backend {
        name: "local directory",
        config: local,
        _dir: Some(dir),
    }];
    match weed::weed() {
        Ok(w) => all.push(Backend {
            name: "SeaweedFS",
            config: s3_config(&format!("{test}-{}", std::process::id()), w.s3_port),
            _dir: None,
        }),
        Err(why) => cannot_run("snapshot store on SeaweedFS", &why),
    }
    all
}

/// A node that snapshots only when asked and never compacts on its own.
fn config(dir: &Path, store: &StoreConfig) -> Config {
    let mut c = Config::new(dir);
    c.policy = Policy {
        snapshot_entries: 0,
        snapshot_bytes: 0,
        snapshot_age_ms: 0,
        auto_compact: false,
        retain_snapshots: 3,
        ..Policy::default()
    };
    c.snapshot_store = Some(store.clone());
    c
}

fn wait_uploaded(node: &Node, index: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = node.appender().status().unwrap().store.expect("a store");
        if s.uploaded_index == Some(index) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the chain at {index} was not uploaded in 60 s: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `n` keys from `from`, with values tagged `tag`, to the node and the model.
fn write(node: &Node, model: &mut BTreeMap<String, String>, from: usize, n: usize, tag: &str) {
    for i in from..from + n {
        let (k, v) = (format!("key{i:06}"), format!("{tag}-{i}"));
        node.appender().kv_set(&k, &v).unwrap();
        model.insert(k, v);
    }
}

/// The node holds exactly the model's state.
fn assert_state(node: &Node, model: &BTreeMap<String, String>, what: &str) {
    let status = node.appender().status().unwrap();
    assert_eq!(status.keys, model.len() as u64, "{what}: key count");
    for (k, v) in model {
        assert_eq!(&node.appender().kv_get(k).unwrap(), v, "{what}: {k}");
    }
}

#[test]
fn a_chain_uploaded_restores_a_wiped_node_to_the_same_state() {
    for b in backends("roundtrip") {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("n1");
        let node = Node::open(config(&dir, &b.config)).unwrap();
        let mut model = BTreeMap::new();
        write(&node, &mut model, 0, 2000, "a");
        let full = node
            .snapshotter()
            .snapshot_mode(SnapshotMode::Full)
            .unwrap();
        assert_eq!(full.offset, Offset::new(2000));
        wait_uploaded(&node, 2000);
        let at_full = model.clone();
        write(&node, &mut model, 1500, 800, "b");
        let delta = node
            .snapshotter()
            .snapshot_mode(SnapshotMode::Incremental)
            .unwrap();
        assert!(delta.file.ends_with(".delta"), "{delta:?}");
        wait_uploaded(&node, 2800);
        let at_delta = model.clone();
        write(&node, &mut model, 9000, 50, "c");
        node.shutdown().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        let store = b.open();
        let r = store::restore(&*store, &RealFs, &dir, None, None).unwrap();
        assert_eq!(r.manifest.index, 2800, "{}", b.name);
        assert_eq!(r.manifest.files.len(), 2, "{}: base and delta", b.name);
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        let node = Node::open(Config::new(&dir)).unwrap();
        assert_state(
            &node,
            &at_delta,
            &format!("{}: restored from the delta chain", b.name),
        );
        assert_eq!(
            node.appender().status().unwrap().next_offset,
            Offset::new(2800)
        );
        node.appender().kv_set("after", "restore").unwrap();
        node.shutdown().unwrap();

        let older = base.path().join("older");
        let r = store::restore(&*store, &RealFs, &older, None, Some(2000)).unwrap();
        assert_eq!(r.manifest.files.len(), 1);
        let node = Node::open(Config::new(&older)).unwrap();
        assert_state(
            &node,
            &at_full,
            &format!("{}: restored at index 2000", b.name),
        );
        node.shutdown().unwrap();

        let err = store::restore(&*store, &RealFs, &older, None, None).unwrap_err();
        assert!(err.contains("already holds"), "{err}");
        let verdicts = store::verify(&*store, &mut |_| {}).unwrap();
        assert_eq!(verdicts.len(), 2);
        assert!(verdicts.iter().all(|v| v.problem.is_none()), "{verdicts:?}");
    }
}

/// The object name of the first file of the newest chain in the store.
fn newest_base(store: &dyn SnapshotStore) -> (u64, String) {
    let (all, _) = store::manifests(store).unwrap();
    (all[0].index, all[0].files[0].object.clone())
}

#[test]
fn a_damaged_or_missing_object_is_detected_and_restore_falls_back_to_an_older_chain() {
    for b in backends("damage") {
        let base = tempfile::tempdir().unwrap();
        let node = Node::open(config(&base.path().join("n1"), &b.config)).unwrap();
        let mut model = BTreeMap::new();
        write(&node, &mut model, 0, 500, "a");
        node.snapshotter()
            .snapshot_mode(SnapshotMode::Full)
            .unwrap();
        wait_uploaded(&node, 500);
        let at_500 = model.clone();
        write(&node, &mut model, 0, 700, "b");
        node.snapshotter()
            .snapshot_mode(SnapshotMode::Full)
            .unwrap();
        wait_uploaded(&node, 1200);
        node.shutdown().unwrap();
        let store = b.open();
        let (index, object) = newest_base(&*store);
        assert_eq!(index, 1200);

        // One byte flipped in the newest chain's file.
        let mut bytes = Vec::new();
        store.get(&object, &mut bytes).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        store
            .put(&object, &mut &bytes[..], bytes.len() as u64)
            .unwrap();
        let dir = base.path().join("damaged");
        let r = store::restore(&*store, &RealFs, &dir, None, None).unwrap();
        assert_eq!(r.manifest.index, 500, "{}: fell back", b.name);
        assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
        assert!(r.skipped[0].1.contains("checksum"), "{:?}", r.skipped);
        let node = Node::open(Config::new(&dir)).unwrap();
        assert_state(
            &node,
            &at_500,
            &format!("{}: after a damaged object", b.name),
        );
        node.shutdown().unwrap();
        let verdicts = store::verify(&*store, &mut |_| {}).unwrap();
        let damaged: Vec<_> = verdicts.iter().filter(|v| v.problem.is_some()).collect();
        assert_eq!(damaged.len(), 1, "{verdicts:?}");
        assert_eq!(damaged[0].index, Some(1200));

        // The object gone altogether.
        store.delete(&object).unwrap();
        let dir = base.path().join("missing");
        let r = store::restore(&*store, &RealFs, &dir, None, None).unwrap();
        assert_eq!(r.manifest.index, 500, "{}: fell back", b.name);
        assert!(
            r.skipped[0].1.contains("not in the store"),
            "{:?}",
            r.skipped
        );
        assert!(
            std::fs::read_dir(base.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".restoring")),
            "a restore leaves no staging directory"
        );
    }
}

#[test]
fn retention_in_the_store_keeps_the_newest_chains_and_what_they_list() {
    for b in backends("retention") {
        let base = tempfile::tempdir().unwrap();
        let mut config = config(&base.path().join("n1"), &b.config);
        config.snapshot_store.as_mut().unwrap().retain = 2;
        let node = Node::open(config).unwrap();
        let mut model = BTreeMap::new();
        let mut tips = Vec::new();
        for round in 0..4 {
            write(&node, &mut model, round * 100, 300, "r");
            let mode = if round == 2 {
                SnapshotMode::Incremental
            } else {
                SnapshotMode::Full
            };
            let s = node.snapshotter().snapshot_mode(mode).unwrap();
            wait_uploaded(&node, s.offset.get());
            tips.push(s.offset.get());
        }
        node.shutdown().unwrap();
        let store = b.open();
        let (all, unreadable) = store::manifests(&*store).unwrap();
        assert!(unreadable.is_empty());
        let kept: Vec<u64> = all.iter().map(|m| m.index).collect();
        assert_eq!(kept, vec![tips[3], tips[2]], "{}", b.name);
        let mut listed: Vec<String> = all
            .iter()
            .flat_map(|m| m.files.iter().map(|f| f.object.clone()))
            .collect();
        listed.sort();
        listed.dedup();
        let files: Vec<String> = store
            .list("n1/files/")
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(
            files, listed,
            "{}: only the files the kept chains list",
            b.name
        );
    }
}

/// Makes a store unreachable and reachable again.
enum Outage {
    /// The local store's root replaced by a plain file.
    Local(PathBuf),
    /// SeaweedFS behind a proxy that refuses connections.
    Proxy(Proxy),
}

impl Outage {
    fn set_down(&self, down: bool) {
        match self {
            Outage::Local(root) => {
                let away = root.with_extension("away");
                if down {
                    std::fs::rename(root, &away).unwrap();
                    std::fs::write(root, b"not a directory").unwrap();
                } else {
                    std::fs::remove_file(root).unwrap();
                    std::fs::rename(&away, root).unwrap();
                }
            }
            Outage::Proxy(p) => p.set_up(!down),
        }
    }
}

#[test]
fn a_store_that_is_down_holds_back_uploads_and_compaction_never_writes() {
    for b in backends("outage") {
        let (outage, store_config) = match b.name {
            "SeaweedFS" => {
                let proxy = Proxy::new(weed::weed().unwrap().s3_port);
                let mut c = b.config.clone();
                c.endpoint = Some(format!("http://127.0.0.1:{}", proxy.port));
                (Outage::Proxy(proxy), c)
            }
            _ => {
                std::fs::create_dir_all(&b.config.url).unwrap();
                (
                    Outage::Local(PathBuf::from(&b.config.url)),
                    b.config.clone(),
                )
            }
        };
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("n1");
        let mut config = config(&dir, &store_config);
        config.policy.auto_compact = true;
        config.policy.trailing_entries = 0;
        config.segment_bytes_max = 16 * 1024;
        config.snapshot_store.as_mut().unwrap().compact_after_upload = true;
        let node = Node::open(config).unwrap();
        let mut model = BTreeMap::new();
        outage.set_down(true);
        write(&node, &mut model, 0, 1000, "a");
        let s = node.snapshotter().snapshot().unwrap();
        assert_eq!(s.offset, Offset::new(1000));
        write(&node, &mut model, 1000, 200, "b");
        // The store is down: appends go on, the upload waits, nothing is compacted.
        let deadline = Instant::now() + Duration::from_secs(30);
        let failing = loop {
            let st = node.appender().status().unwrap();
            let up = st.store.clone().unwrap();
            if up.failures >= 2 {
                break st;
            }
            assert!(Instant::now() < deadline, "no failed upload seen: {up:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let up = failing.store.unwrap();
        assert_eq!(up.uploaded_index, None, "{}", b.name);
        assert!(up.last_error.is_some());
        assert_eq!(up.queued, 1);
        node.compactor().compact(Offset::new(1000)).unwrap();
        node.appender().settle().unwrap();
        assert_eq!(
            node.appender().status().unwrap().first_offset,
            Offset::ZERO,
            "{}: the log was compacted behind a snapshot the store does not have",
            b.name
        );
        write(&node, &mut model, 1200, 100, "c");
        // Back up: the upload lands, then the policy compacts behind it.
        outage.set_down(false);
        wait_uploaded(&node, 1000);
        let deadline = Instant::now() + Duration::from_secs(30);
        while node.appender().status().unwrap().first_offset == Offset::ZERO {
            assert!(
                Instant::now() < deadline,
                "{}: no compaction after the upload",
                b.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let up = node.appender().status().unwrap().store.unwrap();
        assert_eq!(up.last_error, None);
        assert!(node.appender().status().unwrap().first_offset <= Offset::new(1000));
        assert_state(&node, &model, b.name);
        node.shutdown().unwrap();
    }
}

#[test]
fn credentials_never_reach_the_log_or_the_status() {
    let w = match weed::weed() {
        Ok(w) => w,
        Err(why) => return cannot_run("snapshot store on SeaweedFS", &why),
    };
    let prefix = format!("creds-{}", std::process::id());
    let mut lines = vec![
        r#"{"src":"c0","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1"]}}"#.to_string(),
    ];
    for i in 0..20 {
        lines.push(format!(
            r#"{{"src":"c0","dest":"n1","body":{{"type":"write","msg_id":{},"key":"k{i}","value":"v"}}}}"#,
            i + 2
        ));
    }
    lines.push(r#"{"src":"c0","dest":"n1","body":{"type":"wal_snapshot","msg_id":100}}"#.into());
    // A node process on the store at `endpoint`, with the key pair in its environment.
    let node = |endpoint: &str| {
        let data = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(binary());
        cmd.args(["--data-dir", &data.path().display().to_string()])
            .args(["--snapshot-store", &format!("s3://{BUCKET}/{prefix}")])
            .args(["--store-endpoint", endpoint])
            .args(["--store-shutdown-wait", "2"])
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("RUST_LOG", "trace")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        (data, cmd)
    };
    use std::io::{BufRead, Write};
    // A store that does not answer: refused at init, the secret nowhere.
    let (_data, mut cmd) = node("http://127.0.0.1:9");
    let out = cmd
        .spawn()
        .and_then(|mut child| {
            let mut stdin = child.stdin.take().unwrap();
            writeln!(stdin, "{}", lines[0])?;
            drop(stdin);
            child.wait_with_output()
        })
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("\"code\": 13") && stdout.contains("cannot reach http://127.0.0.1:9"),
        "{stdout}{stderr}"
    );
    assert!(!stdout.contains(SECRET_KEY) && !stderr.contains(SECRET_KEY));
    // A working store: the secret is not in the replies, the status or the log.
    let (_data, mut cmd) = node(&w.endpoint);
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in &lines {
        writeln!(stdin, "{l}").unwrap();
    }
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut msg_id = 1000;
    loop {
        msg_id += 1;
        writeln!(
            stdin,
            r#"{{"src":"c0","dest":"n1","body":{{"type":"wal_status","msg_id":{msg_id}}}}}"#
        )
        .unwrap();
        let status = loop {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            seen.push_str(&line);
            if line.contains(&format!("\"in_reply_to\": {msg_id}")) {
                break line;
            }
        };
        let v: serde_json::Value = serde_json::from_str(&status).unwrap();
        let store = &v["body"]["status"]["snapshot_store"];
        if store["uploaded_index"].as_u64() == Some(20) {
            assert!(!store["url"].as_str().unwrap().contains(ACCESS_KEY));
            break;
        }
        assert!(Instant::now() < deadline, "{}: {store}", w.endpoint);
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    seen.push_str(&rest);
    let result = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!seen.contains(SECRET_KEY), "the secret is in the replies");
    assert!(!stderr.contains(SECRET_KEY), "the secret is in the log");
    assert!(
        stderr.contains("snapshots are copied to"),
        "the log says where snapshots go: {stderr}"
    );
}

#[test]
fn both_stores_keep_the_same_contract() {
    for b in backends("contract") {
        let s = b.open();
        let big: Vec<u8> = (0..(store::PART_BYTES + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        s.put("n1/files/big", &mut &big[..], big.len() as u64)
            .unwrap();
        s.put("n1/files/small", &mut &b"abc"[..], 3).unwrap();
        let mut got = Vec::new();
        assert_eq!(s.get("n1/files/big", &mut got).unwrap(), big.len() as u64);
        assert!(got == big, "{}: the multipart object reads back", b.name);
        // A reader that ends early stores nothing under the name.
        let err = s.put("n1/files/short", &mut &b"ab"[..], 3);
        assert!(err.is_err(), "{}", b.name);
        assert!(matches!(
            s.get("n1/files/short", &mut Vec::new()),
            Err(store::StoreError::NotFound(_))
        ));
        // Create-if-absent.
        assert!(s.put_new("n1/manifests/m", b"first".to_vec()).unwrap());
        assert!(
            !s.put_new("n1/manifests/m", b"second".to_vec()).unwrap(),
            "{}",
            b.name
        );
        let mut got = Vec::new();
        s.get("n1/manifests/m", &mut got).unwrap();
        assert_eq!(
            got, b"first",
            "{}: create-if-absent replaced the object",
            b.name
        );
        let names: Vec<(String, u64)> = s
            .list("n1/")
            .unwrap()
            .into_iter()
            .map(|l| (l.name, l.size))
            .collect();
        assert_eq!(
            names,
            vec![
                ("n1/files/big".to_string(), big.len() as u64),
                ("n1/files/small".to_string(), 3),
                ("n1/manifests/m".to_string(), 5),
            ],
            "{}",
            b.name
        );
        assert_eq!(
            s.list("n1/files/s").unwrap().len(),
            1,
            "{}: a string prefix",
            b.name
        );
        s.delete("n1/files/small").unwrap();
        s.delete("n1/files/small").unwrap();
        assert_eq!(s.list("n1/files/").unwrap().len(), 1);
    }
}

#[test]
fn a_node_stops_promptly_in_the_middle_of_a_slow_upload() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StoreConfig::new(dir.path().join("store").display().to_string());
    // 64 KiB/s: the snapshot below would take about a minute to upload; the stop
    // waits 1 s for it, then gives up.
    store.upload_bytes_per_sec = 64 * 1024;
    store.shutdown_wait = Duration::from_secs(1);
    let node = Node::open(config(&dir.path().join("n1"), &store)).unwrap();
    let mut model = BTreeMap::new();
    write(&node, &mut model, 0, 2_000, &"v".repeat(1000));
    let s = node.snapshotter().snapshot().unwrap();
    assert!(s.size_bytes > 2_000_000, "{s:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while node
        .appender()
        .status()
        .unwrap()
        .store
        .and_then(|u| u.uploading)
        != Some(s.offset.get())
    {
        assert!(Instant::now() < deadline, "the upload never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    node.shutdown().unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1) && started.elapsed() < Duration::from_secs(10),
        "shutdown waited {:?} for the upload, told 1 s",
        started.elapsed()
    );
    let left = store::open(&store).unwrap();
    assert!(
        store::manifests(&*left).unwrap().0.is_empty(),
        "an upload cut short is no chain"
    );
}

/// `flintlog restore` run as a user would against SeaweedFS, with two single nodes
/// shipping under one prefix: `--data-dir` means what it means for the node (the chain
/// goes to DATA_DIR/<node_id>/), `--node-id` chooses whose chain (required when the
/// store holds several), the old spelling (the node's own directory) is refused with the
/// command to type, and a node that finds its files one level too high refuses to start.
#[test]
fn restore_takes_the_named_nodes_chain_into_the_data_dir_the_node_is_started_with() {
    let w = match weed::weed() {
        Ok(w) => w,
        Err(why) => return cannot_run("restore from SeaweedFS", &why),
    };
    let prefix = format!("restore-cli-{}", std::process::id());
    let store = s3_config(&prefix, w.s3_port);
    let url = format!("s3://{BUCKET}/{prefix}");
    let root = tempfile::tempdir().unwrap();
    for name in ["n1", "n2"] {
        let node = Node::open(config(&root.path().join("src").join(name), &store)).unwrap();
        for i in 0..30 {
            node.appender()
                .kv_set(&format!("{name}-k{i}"), "v")
                .unwrap();
        }
        let snap = node.snapshotter().snapshot().unwrap();
        wait_uploaded(&node, snap.offset.get());
        node.shutdown().unwrap();
    }
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(binary())
            .arg("restore")
            .args(["--from", &url, "--store-endpoint", &w.endpoint])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let data = root.path().join("data");
    let data_arg = data.display().to_string();

    // Two nodes' chains: whose must be said, and nothing is written.
    let (code, text) = cli(&["--data-dir", &data_arg]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("n1, n2") && text.contains("--node-id"),
        "{text}"
    );
    assert!(!data.join("n1").exists() && !data.join("n2").exists());
    let (code, text) = cli(&["--data-dir", &data_arg, "--node-id", "n9"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("no chain of n9") && text.contains("n1, n2"),
        "{text}"
    );

    // The old spelling: the node's own directory. Refused, with the command to type.
    let own = data.join("n1").display().to_string();
    let (code, text) = cli(&["--data-dir", &own, "--node-id", "n1"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains(&format!("--data-dir {data_arg} --node-id n1")),
        "{text}"
    );
    assert!(!data.join("n1").exists(), "nothing restored on a refusal");

    // The same --data-dir on both commands brings back n1's state, not n2's.
    let (code, text) = cli(&["--data-dir", &data_arg, "--node-id", "n1"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("restored n1's chain"), "{text}");
    let input = crate::support::lines(&[
        crate::support::init(1),
        crate::support::msg(
            "c1",
            serde_json::json!({"type": "read", "msg_id": 2, "key": "n1-k7"}),
        ),
        crate::support::msg(
            "c1",
            serde_json::json!({"type": "read", "msg_id": 3, "key": "n2-k7"}),
        ),
    ]);
    let run = crate::support::run(&[], Some(&data), &input);
    assert_eq!(run.reply_to("c0", 1)["type"], "init_ok", "{}", run.stderr);
    assert_eq!(run.reply_to("c1", 2)["value"], "v", "n1's key is back");
    assert_eq!(run.reply_to("c1", 3)["code"], 20, "n2's keys are not n1's");

    // The files one level too high (as the old spelling made them): refused at init,
    // naming where they belong, instead of an empty node beside them.
    let high = root.path().join("high");
    std::fs::create_dir_all(&high).unwrap();
    for f in std::fs::read_dir(data.join("n1")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), high.join(f.file_name())).unwrap();
    }
    let run = crate::support::run(
        &[],
        Some(&high),
        &crate::support::lines(&[crate::support::init(1)]),
    );
    let reply = run.reply_to("c0", 1);
    assert_eq!(reply["code"], 13, "{reply}");
    let text = reply["text"].as_str().unwrap();
    assert!(
        text.contains(&high.join("n1").display().to_string()) && text.contains("directly"),
        "{text}"
    );
    assert_eq!(run.code, Some(1));
    assert!(
        !high.join("n1").exists(),
        "no empty node made beside the files"
    );
}

/// End of input right after a `wal_snapshot` of 200,000 entries: the node waits for
/// the upload before it exits (it used to cut it short, "the node is stopping", and
/// exit 0 with the store far behind), so a restore then has every entry.
#[test]
fn end_of_input_waits_for_the_newest_chain_to_reach_the_store() {
    let w = match weed::weed() {
        Ok(w) => w,
        Err(why) => return cannot_run("snapshot store on SeaweedFS", &why),
    };
    const N: u64 = 200_000;
    let prefix = format!("exit-{}", std::process::id());
    let url = format!("s3://{BUCKET}/{prefix}");
    let root = tempfile::tempdir().unwrap();
    let mut lines = vec![crate::support::init(1)];
    for i in 0..N {
        lines.push(crate::support::msg(
            "c1",
            serde_json::json!({"type": "wal_append", "msg_id": i + 2, "payload": format!("set k{}=v{i}", i % 50_000)}),
        ));
    }
    lines.push(crate::support::msg(
        "c1",
        serde_json::json!({"type": "wal_snapshot", "msg_id": N + 2}),
    ));
    let store_args = [
        "--store-endpoint",
        w.endpoint.as_str(),
        "--snapshot-entries",
        "0",
        "--snapshot-bytes",
        "0",
    ];
    let mut args = vec!["--snapshot-store", url.as_str()];
    args.extend(store_args);
    let mut child = std::process::Command::new(binary())
        .args(&args)
        .arg("--data-dir")
        .arg(root.path().join("data"))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = crate::support::lines(&lines);
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let run = crate::support::finish(out);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.reply_to("c1", N + 2)["snapshot_offset"],
        N,
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("reached the store") || run.stderr.contains("uploaded"),
        "{}",
        run.stderr
    );
    let restored = std::process::Command::new(binary())
        .args(["restore", "--from", &url, "--store-endpoint", &w.endpoint])
        .arg("--data-dir")
        .arg(root.path().join("back"))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&restored.stdout).to_string()
        + &String::from_utf8_lossy(&restored.stderr);
    assert!(restored.status.success(), "{text}");
    assert!(
        text.contains(&format!("chain at index {N} ")),
        "the store must hold the chain of every entry: {text}"
    );
}

/// Every object of the store as it holds it (sealed or not).
fn raw_objects(raw: &dyn SnapshotStore) -> Vec<(String, Vec<u8>)> {
    raw.list("")
        .unwrap()
        .into_iter()
        .map(|l| {
            let mut bytes = Vec::new();
            raw.get(&l.name, &mut bytes).unwrap();
            (l.name, bytes)
        })
        .collect()
}

fn with_keys(config: &StoreConfig, keys: &[&StoreKey]) -> Box<dyn SnapshotStore> {
    let mut c = config.clone();
    c.keys = keys.iter().map(|k| (*k).clone()).collect();
    store::open(&c).unwrap()
}

#[test]
fn an_encrypted_store_holds_nothing_in_the_clear_and_refuses_what_its_node_did_not_write() {
    for b in backends("sealed") {
        let key_a = StoreKey::from_hex(&StoreKey::generate().unwrap()).unwrap();
        let key_b = StoreKey::from_hex(&StoreKey::generate().unwrap()).unwrap();
        let mut sealed = b.config.clone();
        sealed.keys = vec![key_a.clone()];
        let base = tempfile::tempdir().unwrap();
        let node = Node::open(config(&base.path().join("n1"), &sealed)).unwrap();
        let mut model = BTreeMap::new();
        write(&node, &mut model, 0, 500, "secret");
        node.snapshotter()
            .snapshot_mode(SnapshotMode::Full)
            .unwrap();
        wait_uploaded(&node, 500);
        let sent = || {
            node.appender()
                .status()
                .unwrap()
                .store
                .unwrap()
                .bytes_uploaded
        };
        let base_sent = sent();
        let at_500 = model.clone();
        write(&node, &mut model, 400, 300, "secret");
        node.snapshotter()
            .snapshot_mode(SnapshotMode::Incremental)
            .unwrap();
        wait_uploaded(&node, 800);
        // The delta's chain holds the base, which the store has (sealed): not sent again.
        assert!(
            sent() - base_sent < base_sent,
            "{}: {} bytes sent for the delta's chain, {base_sent} for the base",
            b.name,
            sent() - base_sent
        );
        node.shutdown().unwrap();

        // Snapshots, deltas and manifests: sealed, no key or value in the clear.
        let raw = store::open_unsealed(&b.config).unwrap();
        let objects = raw_objects(&*raw);
        assert_eq!(objects.len(), 4, "{}: two files, two manifests", b.name);
        for (name, bytes) in &objects {
            assert!(bytes.starts_with(store::seal::MAGIC), "{}: {name}", b.name);
            for clear in [&b"secret-4"[..], b"key0004", b"\"files\""] {
                assert!(
                    !bytes.windows(clear.len()).any(|w| w == clear),
                    "{}: {name} holds {:?} in the clear",
                    b.name,
                    String::from_utf8_lossy(clear)
                );
            }
        }
        let restore = |store: &dyn SnapshotStore, to: &str| {
            store::restore(store, &RealFs, &base.path().join(to), None, None)
        };
        // No key, another key: refused, naming the key the store needs.
        let e = restore(&*with_keys(&b.config, &[]), "no-key").unwrap_err();
        assert!(
            e.contains(&format!("encrypted with key id {}", key_a.id()))
                && e.contains("--store-key-file"),
            "{}: {e}",
            b.name
        );
        let e = restore(&*with_keys(&b.config, &[&key_b]), "wrong-key").unwrap_err();
        assert!(e.contains("no key given has that id"), "{}: {e}", b.name);
        // The key: the newest chain, whole.
        let keyed = with_keys(&b.config, &[&key_a]);
        let r = restore(&*keyed, "restored").unwrap();
        assert_eq!((r.manifest.index, r.skipped.len()), (800, 0), "{}", b.name);
        let node = Node::open(Config::new(base.path().join("restored"))).unwrap();
        assert_state(&node, &model, &format!("{}: restored sealed", b.name));
        node.shutdown().unwrap();

        // The delta's object damaged, cut short, or replaced by the node's own older
        // file (its base) under the delta's name: refused, and restore falls back.
        let file = |index: &str| {
            objects
                .iter()
                .find(|(n, _)| n.contains("/files/") && n.contains(index))
                .expect("the chain's file")
        };
        let ((delta_name, delta), (_, base_bytes)) = (file("800"), file("500"));
        let mut flipped = delta.clone();
        flipped[delta.len() / 2] ^= 0x40;
        let cut = delta[..delta.len() - 20].to_vec();
        for (what, bytes) in [
            ("a flipped byte", flipped),
            ("cut short", cut),
            ("the base under the delta's name", base_bytes.clone()),
        ] {
            raw.put(delta_name, &mut &bytes[..], bytes.len() as u64)
                .unwrap();
            let r = restore(&*keyed, &format!("fallback-{}", what.len())).unwrap();
            assert_eq!(r.manifest.index, 500, "{}: {what}: fell back", b.name);
            assert!(
                r.skipped
                    .iter()
                    .any(|(_, why)| why.contains("failed authentication")),
                "{}: {what}: {:?}",
                b.name,
                r.skipped
            );
        }
        raw.put(delta_name, &mut &delta[..], delta.len() as u64)
            .unwrap();

        // Rotation: key B seals from now on; chains sealed with A still open with both.
        let mut rotated = b.config.clone();
        rotated.keys = vec![key_b.clone(), key_a.clone()];
        let node = Node::open(config(&base.path().join("restored"), &rotated)).unwrap();
        write(&node, &mut model, 2000, 100, "secret");
        node.snapshotter()
            .snapshot_mode(SnapshotMode::Full)
            .unwrap();
        wait_uploaded(&node, 900);
        node.shutdown().unwrap();
        let both = with_keys(&b.config, &[&key_b, &key_a]);
        let r = restore(&*both, "rotated").unwrap();
        assert_eq!(r.manifest.index, 900, "{}", b.name);
        let r = store::restore(&*both, &RealFs, &base.path().join("old"), None, Some(500)).unwrap();
        let node = Node::open(Config::new(base.path().join("old"))).unwrap();
        assert_state(
            &node,
            &at_500,
            &format!("{}: an old chain after rotation", b.name),
        );
        node.shutdown().unwrap();
        assert_eq!(r.manifest.index, 500);
        // With A alone, the newest chain (sealed with B) is refused, naming B.
        let r = restore(&*keyed, "a-only").unwrap();
        assert_eq!(r.manifest.index, 800, "{}", b.name);
        assert!(
            r.skipped.iter().any(|(_, why)| why.contains(&key_b.id())),
            "{:?}",
            r.skipped
        );
    }
}

/// A store that cannot work is said at start, in words, and the node does not start:
/// a bucket that does not exist, an endpoint nobody answers on, no credentials, a
/// local store whose directory is a file. Nothing is created in the node's directory.
#[test]
fn a_misconfigured_store_is_refused_at_start_with_its_cause() {
    let root = tempfile::tempdir().unwrap();
    let refused = |store: StoreConfig| {
        let dir = root.path().join(format!("n{}", store.url.len()));
        let e = Node::open(config(&dir, &store))
            .err()
            .unwrap_or_else(|| panic!("{}: the node started", store.url));
        assert!(
            !dir.exists(),
            "{}: the node made {}",
            store.url,
            dir.display()
        );
        e.to_string()
    };
    // No credentials: said without asking a cloud instance's metadata service.
    let mut none = StoreConfig::new(format!("s3://{BUCKET}/nocreds"));
    none.endpoint = Some("http://127.0.0.1:9".into());
    if std::env::var("AWS_ACCESS_KEY_ID").is_err() {
        let e = refused(none.clone());
        assert!(
            e.contains("no credentials") && e.contains("AWS_ACCESS_KEY_ID"),
            "{e}"
        );
    }
    // Nobody answers on the endpoint.
    let mut closed = s3_config("closed", 9);
    closed.url = format!("s3://{BUCKET}/closed");
    let e = refused(closed);
    assert!(e.contains("cannot reach http://127.0.0.1:9"), "{e}");
    // A local store whose directory is a file.
    let file = root.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let e = refused(StoreConfig::new(file.display().to_string()));
    assert!(e.contains("the snapshot store does not work"), "{e}");
    match weed::weed() {
        Ok(w) => {
            let mut missing = s3_config("x", w.s3_port);
            missing.url = "s3://no-such-bucket-here/x".into();
            let e = refused(missing);
            assert!(
                e.contains("bucket no-such-bucket-here does not exist"),
                "{e}"
            );
            // And a store that works: the node starts, nothing left of the check.
            let ok = s3_config("check", w.s3_port);
            let node = Node::open(config(&root.path().join("ok"), &ok)).unwrap();
            node.shutdown().unwrap();
            let left = store::open(&ok).unwrap().list("").unwrap();
            assert!(left.is_empty(), "{left:?}");
        }
        Err(why) => cannot_run("snapshot store on SeaweedFS", &why),
    }
}

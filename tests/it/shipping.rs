//! The shipped log: a node's durable entries in the store beside its chains, and
//! restores to the newest shipped entry, to an offset, to a time; a damaged or missing
//! object stops a restore, never skipped; retention keeps the log a kept chain needs;
//! and a node killed with SIGKILL, its disk wiped, comes back from SeaweedFS with every
//! entry shipped before the kill.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flintlog::fs::RealFs;
use flintlog::store::{self, Point, SnapshotStore, StoreConfig};
use flintlog::{Config, Node, Offset, Policy};

use crate::support::{binary, cannot_run};
use crate::weed::{self, ACCESS_KEY, BUCKET, SECRET_KEY};

/// A node with a local store that ships its log every 20 ms, snapshots only when
/// asked, and compacts behind its snapshots.
fn config(dir: &Path, store: &StoreConfig) -> Config {
    let mut c = Config::new(dir);
    c.policy = Policy {
        snapshot_entries: 0,
        snapshot_bytes: 0,
        snapshot_age_ms: 0,
        auto_compact: true,
        trailing_entries: 0,
        retain_snapshots: 2,
        ..Policy::default()
    };
    let mut s = store.clone();
    s.ship_log = true;
    s.ship_interval = Duration::from_millis(20);
    s.shutdown_wait = Duration::from_secs(10);
    c.snapshot_store = Some(s);
    c
}

fn local_store(dir: &Path) -> StoreConfig {
    StoreConfig::new(dir.display().to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the entry at `offset` is shipped.
fn wait_shipped(node: &Node, offset: u64) {
    wait_for(&format!("entry {offset} shipped"), || {
        let s = node.appender().status().unwrap().store.unwrap();
        assert_eq!(s.ship_error, None);
        s.shipped_offset >= Some(offset)
    });
}

fn wait_uploaded(node: &Node, index: u64) {
    wait_for(&format!("the chain at {index} uploaded"), || {
        node.appender()
            .status()
            .unwrap()
            .store
            .unwrap()
            .uploaded_index
            == Some(index)
    });
}

fn write(node: &Node, from: u64, to: u64) {
    for i in from..to {
        let at = node
            .appender()
            .kv_set(&format!("k{i:05}"), &format!("v{i}"))
            .unwrap();
        assert_eq!(at, Offset::new(i));
    }
}

/// The restored directory opens on keys `0..n` exactly, and goes on at `n`.
fn assert_restored(dir: &Path, n: u64) {
    let node = Node::open(Config::new(dir)).unwrap();
    let status = node.appender().status().unwrap();
    assert_eq!(status.next_offset, Offset::new(n), "{}", dir.display());
    assert_eq!(status.keys, n);
    for i in [0, n / 2, n.saturating_sub(1)]
        .into_iter()
        .filter(|i| *i < n)
    {
        assert_eq!(
            node.appender().kv_get(&format!("k{i:05}")).unwrap(),
            format!("v{i}")
        );
    }
    node.shutdown().unwrap();
}

/// Entries 0..2500 of one node: a chain at 1000 and one at 2000, the log shipped to
/// 2499; returns the time after entry 1999 was shipped and before 2000 was written.
fn shipped_node(data: &Path, store: &StoreConfig) -> u64 {
    let node = Node::open(config(data, store)).unwrap();
    write(&node, 0, 1000);
    wait_shipped(&node, 999);
    node.snapshotter().snapshot().unwrap();
    wait_uploaded(&node, 1000);
    write(&node, 1000, 2000);
    wait_shipped(&node, 1999);
    node.snapshotter().snapshot().unwrap();
    wait_uploaded(&node, 2000);
    std::thread::sleep(Duration::from_millis(30));
    let between = now_ms();
    std::thread::sleep(Duration::from_millis(30));
    // In two objects at least, so that one can go missing with another after it.
    write(&node, 2000, 2250);
    wait_shipped(&node, 2249);
    write(&node, 2250, 2500);
    wait_shipped(&node, 2499);
    node.shutdown().unwrap();
    between
}

#[test]
fn a_restore_reaches_the_last_shipped_entry_an_offset_or_a_time_and_refuses_what_it_cannot() {
    let root = tempfile::tempdir().unwrap();
    let store_config = local_store(&root.path().join("store"));
    let between = shipped_node(&root.path().join("n1"), &store_config);
    let store = store::open(&store_config).unwrap();
    let restore = |to: &str, point| {
        let dir = root.path().join(to);
        store::restore_to(&*store, &RealFs, &dir, None, point).map(|r| (dir, r))
    };

    // The newest: the chain at 2000, then the 500 entries shipped after it.
    let (dir, r) = restore("newest", Point::Newest).unwrap();
    assert_eq!(
        (r.manifest.index, r.log.entries, r.log.next),
        (2000, 500, 2500)
    );
    assert_eq!(r.log.stopped, None);
    assert_restored(&dir, 2500);

    // In the middle of what was shipped after the older chain.
    let (dir, r) = restore("offset", Point::Offset(1500)).unwrap();
    assert_eq!((r.manifest.index, r.log.next), (1000, 1500));
    assert_restored(&dir, 1500);
    let (dir, r) = restore("exact", Point::Offset(2000)).unwrap();
    assert_eq!((r.manifest.index, r.log.entries), (2000, 0));
    assert_restored(&dir, 2000);

    // A time: what the store held then.
    let (dir, r) = restore("time", Point::Time(between)).unwrap();
    assert_eq!(r.log.next, 2000, "{r:?}");
    assert_restored(&dir, 2000);

    // Before the oldest chain, past the newest entry: refused, naming what is reachable.
    let err = restore("early", Point::Offset(999)).unwrap_err();
    assert!(err.contains("oldest") && err.contains("1000"), "{err}");
    let err = restore("late", Point::Offset(2501)).unwrap_err();
    assert!(err.contains("newest") && err.contains("2500"), "{err}");
    let err = restore("ancient", Point::Time(1)).unwrap_err();
    assert!(err.contains("nothing in the store"), "{err}");
    assert!(!root.path().join("early").exists() && !root.path().join("late").exists());
}

/// The shipped objects of the only node in `store`, by first offset.
fn shipped(store: &dyn SnapshotStore) -> Vec<store::shipped::ShippedRange> {
    let mut all = store::shipped::list(store, "n1").unwrap();
    all.sort_by_key(|r| r.first);
    all
}

#[test]
fn a_damaged_or_missing_shipped_object_stops_a_restore_before_it() {
    let root = tempfile::tempdir().unwrap();
    let store_dir = root.path().join("store");
    let store_config = local_store(&store_dir);
    shipped_node(&root.path().join("n1"), &store_config);
    let store = store::open(&store_config).unwrap();
    // An object after the chain at 2000, not the last one.
    let objects = shipped(&*store);
    let last = objects.last().unwrap().first;
    let victim = objects
        .iter()
        .find(|o| o.first >= 2000 && o.first < last)
        .expect("several objects after 2000")
        .clone();
    let path = store_dir.join(&victim.object);
    let good = std::fs::read(&path).unwrap();

    let mut damaged = good.clone();
    let at = damaged.len() - 3;
    damaged[at] ^= 0x40;
    std::fs::write(&path, &damaged).unwrap();
    let dir = root.path().join("damaged");
    let r = store::restore_to(&*store, &RealFs, &dir, None, Point::Newest).unwrap();
    assert_eq!(r.log.next, victim.first, "stops before the damaged object");
    let why = r.log.stopped.clone().expect("says why it stopped");
    assert!(
        why.contains(&victim.object) && why.contains("does not verify"),
        "{why}"
    );
    assert_restored(&dir, victim.first);
    let err = store::restore_to(
        &*store,
        &RealFs,
        &root.path().join("x"),
        None,
        Point::Offset(2500),
    )
    .unwrap_err();
    assert!(err.contains(&victim.object), "{err}");

    std::fs::remove_file(&path).unwrap();
    let dir = root.path().join("missing");
    let r = store::restore_to(&*store, &RealFs, &dir, None, Point::Newest).unwrap();
    assert_eq!(r.log.next, victim.first, "never skips the gap: {r:?}");
    let why = r.log.stopped.expect("says why it stopped");
    assert!(
        why.contains(&format!("no shipped object holds offset {}", victim.first)),
        "{why}"
    );
    assert_restored(&dir, victim.first);
    let listed = store::ls::listing(&*store).unwrap();
    assert_eq!(
        listed[0].histories[0].gaps,
        vec![(victim.first, victim.last + 1)]
    );
    assert_eq!(listed[0].newest.map(|(o, _)| o), Some(victim.first));
}

#[test]
fn retention_keeps_the_log_from_the_oldest_chain_kept_and_nothing_older() {
    let root = tempfile::tempdir().unwrap();
    let mut store_config = local_store(&root.path().join("store"));
    store_config.retain = 2;
    let node = Node::open(config(&root.path().join("n1"), &store_config)).unwrap();
    // Each snapshot once its entries are shipped: compaction right behind it does not
    // wait for the shipper (without --compact-after-upload).
    for round in 0..6u64 {
        write(&node, round * 400, (round + 1) * 400);
        wait_shipped(&node, (round + 1) * 400 - 1);
        node.snapshotter().snapshot().unwrap();
        wait_uploaded(&node, (round + 1) * 400);
    }
    // Retention runs after each upload: one more chain, then look.
    write(&node, 2400, 2500);
    wait_shipped(&node, 2499);
    node.snapshotter().snapshot().unwrap();
    wait_uploaded(&node, 2500);
    node.shutdown().unwrap();

    let store = store::open(&store_config).unwrap();
    let (chains, _) = store::manifests(&*store).unwrap();
    let kept: Vec<u64> = chains.iter().map(|m| m.index).collect();
    assert_eq!(kept, vec![2500, 2400]);
    let objects = shipped(&*store);
    assert!(
        objects.iter().all(|o| o.last >= 2400),
        "log below the oldest chain kept: {objects:?}"
    );
    assert!(
        objects.first().is_some_and(|o| o.first <= 2400),
        "the log from the oldest chain kept is gone: {objects:?}"
    );
    let listed = store::ls::listing(&*store).unwrap();
    assert_eq!(listed[0].histories.len(), 1);
    assert!(listed[0].histories[0].gaps.is_empty(), "{listed:?}");
    assert_eq!(listed[0].newest.map(|(o, _)| o), Some(2500));
    assert_eq!(listed[0].oldest, Some(2400));
    // From the oldest chain kept, along the log, to a point between the two.
    let dir = root.path().join("restored");
    let r = store::restore_to(&*store, &RealFs, &dir, None, Point::Offset(2450)).unwrap();
    assert_eq!(r.manifest.index, 2400);
    assert_restored(&dir, 2450);
}

#[test]
fn a_restored_directory_ships_under_a_history_of_its_own() {
    let root = tempfile::tempdir().unwrap();
    let store_config = local_store(&root.path().join("store"));
    shipped_node(&root.path().join("n1"), &store_config);
    let store = store::open(&store_config).unwrap();
    let dir = root.path().join("again").join("n1");
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    store::restore_to(&*store, &RealFs, &dir, None, Point::Offset(1500)).unwrap();
    assert!(
        !dir.join("ship.id").exists(),
        "a restore brings no history along"
    );
    // The restored node writes other entries at the offsets the old one shipped, under
    // a history that lists before any other (so that a restore that looked at every
    // history's objects would find this one's first).
    std::fs::write(dir.join("ship.id"), "0000000000000000\n").unwrap();
    let node = Node::open(config(&dir, &store_config)).unwrap();
    for i in 1500..1600u64 {
        node.appender()
            .kv_set(&format!("k{i:05}"), "other")
            .unwrap();
    }
    wait_shipped(&node, 1599);
    // The chain it was restored from, uploaded again under the new line.
    wait_uploaded(&node, 1000);
    node.shutdown().unwrap();
    let listed = store::ls::listing(&*store).unwrap();
    assert_eq!(listed[0].histories.len(), 2, "{listed:?}");
    assert_eq!(listed[0].chains.len(), 3, "{listed:?}");
    assert_eq!(listed[0].newest.map(|(o, _)| o), Some(1600));
    // A restore follows each chain's own history: the newest state is the new line's,
    // whatever the old line's indexes; a point only the old line reaches is the old
    // line's, from its chain at 1000 along its own objects.
    for (to, point, next, index, value) in [
        ("newest", Point::Newest, 1600, 1000, "other"),
        ("old", Point::Offset(1700), 1700, 1000, "v1550"),
        ("old-newest", Point::Offset(2500), 2500, 2000, "v1550"),
    ] {
        let dir = root.path().join(to);
        let r = store::restore_to(&*store, &RealFs, &dir, Some("n1"), point).unwrap();
        assert_eq!((r.log.next, r.manifest.index), (next, index), "{to}");
        let node = Node::open(Config::new(&dir)).unwrap();
        assert_eq!(node.appender().kv_get("k01550").unwrap(), value, "{to}");
        node.shutdown().unwrap();
    }
}

/// What the writer saw acknowledged: offset, key, and when.
type Acks = Arc<Mutex<BTreeMap<u64, (String, Instant)>>>;

#[test]
fn a_node_killed_and_its_disk_wiped_comes_back_with_every_entry_shipped_before() {
    let w = match weed::weed() {
        Ok(w) => w,
        Err(why) => return cannot_run("log shipping to SeaweedFS", &why),
    };
    let prefix = format!("shipping-kill-{}", std::process::id());
    let url = format!("s3://{BUCKET}/{prefix}");
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let interval = Duration::from_millis(200);
    let log_file = std::fs::File::create(root.path().join("node.log")).unwrap();
    let mut child = Command::new(binary())
        .args(["--data-dir", &data.display().to_string()])
        .args(["--snapshot-store", &url, "--store-endpoint", &w.endpoint])
        .args([
            "--ship-log",
            "--ship-interval",
            "0.2",
            // No snapshot in the run: what comes back came by the shipped log alone.
            "--snapshot-entries",
            "100000000",
        ])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let acks: Acks = Arc::default();
    let reader = {
        let acks = acks.clone();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let body = &v["body"];
                if body["type"] == "wal_append_ok" {
                    let i = body["in_reply_to"].as_u64().unwrap() - 2;
                    let offset = body["offset"].as_u64().unwrap();
                    acks.lock()
                        .unwrap()
                        .insert(offset, (format!("k{i}"), Instant::now()));
                }
            }
        })
    };
    writeln!(stdin, "{}", crate::support::init(1)).unwrap();
    // Once the node answers (its store checked), writes in windows of 64 in flight
    // for three seconds, then SIGKILL.
    let body = serde_json::json!({"type": "wal_append", "msg_id": 2, "payload": "set k0=v0"});
    writeln!(stdin, "{}", crate::support::msg("c1", body)).unwrap();
    stdin.flush().unwrap();
    wait_for("the node's first answer", || {
        !acks.lock().unwrap().is_empty()
    });
    let started = Instant::now();
    let mut sent = 1u64;
    while started.elapsed() < Duration::from_secs(3) {
        while sent < acks.lock().unwrap().len() as u64 + 64 {
            let body = serde_json::json!({
                "type": "wal_append", "msg_id": sent + 2, "payload": format!("set k{sent}=v{sent}"),
            });
            writeln!(stdin, "{}", crate::support::msg("c1", body)).unwrap();
            sent += 1;
        }
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let killed = Instant::now();
    child.wait().unwrap();
    reader.join().unwrap();
    let acks = acks.lock().unwrap().clone();
    assert!(
        acks.len() > 1000,
        "only {} writes acknowledged; the node said:\n{}",
        acks.len(),
        std::fs::read_to_string(root.path().join("node.log")).unwrap()
    );
    std::fs::remove_dir_all(&data).unwrap();

    let out = Command::new(binary())
        .args(["restore", "--from", &url, "--store-endpoint", &w.endpoint])
        .args(["--data-dir", &data.display().to_string(), "--node-id", "n1"])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("restored n1 from the start of its shipped log"),
        "{text}"
    );

    let node = Node::open(Config::new(data.join("n1"))).unwrap();
    let next = node.appender().status().unwrap().next_offset.get();
    for (offset, (key, _)) in acks.range(..next) {
        let i = &key[1..];
        assert_eq!(
            node.appender().kv_get(key).unwrap(),
            format!("v{i}"),
            "acknowledged entry {offset} lost though the restore reaches {next}"
        );
    }
    // What was lost was acknowledged in the last ship interval or so before the kill.
    assert!(
        next > acks.len() as u64 / 2,
        "only {next} of {} acknowledged entries came back",
        acks.len()
    );
    let lost: Vec<Duration> = acks
        .range(next..)
        .map(|(_, (_, at))| killed.duration_since(*at))
        .collect();
    let oldest_lost = lost.iter().max().copied().unwrap_or_default();
    println!(
        "{} acknowledged, restored to offset {next}: {} lost, the oldest acknowledged {} ms \
         before the kill (interval {} ms)",
        acks.len(),
        lost.len(),
        oldest_lost.as_millis(),
        interval.as_millis()
    );
    assert!(
        // Loosely: the shipper runs below the log's priority, and the tests beside
        // this one keep the cores busy.
        oldest_lost <= interval * 2 + Duration::from_secs(3),
        "an entry acknowledged {} ms before the kill was not in the store",
        oldest_lost.as_millis()
    );
    node.shutdown().unwrap();
}

#[test]
fn a_node_that_stops_ships_what_is_left_before_it_exits() {
    let root = tempfile::tempdir().unwrap();
    let store_config = local_store(&root.path().join("store"));
    let mut c = config(&root.path().join("n1"), &store_config);
    // An interval far longer than the wait at shutdown: only shipping at once serves.
    let s = c.snapshot_store.as_mut().unwrap();
    s.ship_interval = Duration::from_secs(600);
    s.shutdown_wait = Duration::from_secs(5);
    let node = Node::open(c).unwrap();
    write(&node, 0, 300);
    let stopping = Instant::now();
    node.shutdown().unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "waited out the shutdown wait"
    );
    let store = store::open(&store_config).unwrap();
    let dir = root.path().join("restored");
    let r = store::restore_to(&*store, &RealFs, &dir, None, Point::Newest).unwrap();
    assert_eq!((r.manifest.files.len(), r.log.next), (0, 300), "{r:?}");
    assert_restored(&dir, 300);
    // The history file is the node's own, not a stranger's.
    let again = Node::open(Config::new(root.path().join("n1"))).unwrap();
    assert!(root.path().join("n1").join("ship.id").exists());
    assert_eq!(again.recovery().foreign_files, Vec::<String>::new());
    again.shutdown().unwrap();
}

#[test]
fn store_ls_and_restore_on_the_command_line_say_what_a_restore_reaches() {
    let root = tempfile::tempdir().unwrap();
    let store_dir = root.path().join("store");
    shipped_node(&root.path().join("n1"), &local_store(&store_dir));
    let url = store_dir.display().to_string();
    let cli = |args: &[&str]| {
        let out = Command::new(binary()).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };

    let (code, text) = cli(&["store", "ls", &url]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("node n1"), "{text}");
    assert!(
        text.contains("chain at         2000") && text.contains("chain at         1000"),
        "{text}"
    );
    // Retention dropped the log below the oldest chain kept.
    assert!(text.contains("offsets 1000..=2499"), "{text}");
    assert!(
        text.contains("a restore reaches offset 2500 at newest"),
        "{text}"
    );
    let (code, text) = cli(&["store", "ls", &url, "--json"]);
    assert_eq!(code, Some(0), "{text}");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let n1 = &doc["nodes"][0];
    assert_eq!(n1["node"], "n1");
    assert_eq!(n1["newest_point"]["offset"], 2500);
    assert_eq!(n1["oldest_point"], 1000);
    assert_eq!(n1["chains"].as_array().unwrap().len(), 2);
    assert_eq!(n1["shipped_log"][0]["last_offset"], 2499);

    let data = root.path().join("data").display().to_string();
    let (code, text) = cli(&[
        "restore",
        "--from",
        &url,
        "--data-dir",
        &data,
        "--to-offset",
        "2100",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("chain at index 2000")
            && text.contains("+ 100 shipped entries")
            && text.contains("offset 2100"),
        "{text}"
    );
    assert_restored(&root.path().join("data").join("n1"), 2100);
    let other = root.path().join("other").display().to_string();
    let (code, text) = cli(&[
        "restore",
        "--from",
        &url,
        "--data-dir",
        &other,
        "--to-time",
        "yesterday",
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("RFC 3339"), "{text}");
    let (code, text) = cli(&[
        "restore",
        "--from",
        &url,
        "--data-dir",
        &other,
        "--to-offset",
        "9999",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("past the newest point") && text.contains("2500"),
        "{text}"
    );
}

#[test]
fn with_compaction_waiting_for_the_store_no_entry_goes_before_it_is_shipped() {
    let root = tempfile::tempdir().unwrap();
    let store_config = local_store(&root.path().join("store"));
    let mut c = config(&root.path().join("n1"), &store_config);
    let s = c.snapshot_store.as_mut().unwrap();
    s.compact_after_upload = true;
    // Nothing is shipped until the node stops.
    s.ship_interval = Duration::from_secs(600);
    let node = Node::open(c).unwrap();
    write(&node, 0, 500);
    node.snapshotter().snapshot().unwrap();
    wait_uploaded(&node, 500);
    node.compactor().compact(Offset::new(500)).unwrap();
    node.appender().settle().unwrap();
    // The shipper's first pass, as it started, may have shipped the first entries;
    // none since.
    let status = node.appender().status().unwrap();
    let store_status = status.store.unwrap();
    let shipped_end = store_status.shipped_offset.map_or(0, |o| o + 1);
    assert!(shipped_end < 500, "shipped to {shipped_end}");
    assert_eq!(store_status.unshipped_entries, Some(500 - shipped_end));
    assert!(
        status.first_offset.get() <= shipped_end,
        "compacted to {} entries the store's log lacks (it has them up to {shipped_end})",
        status.first_offset
    );
    node.shutdown().unwrap();
    // The node stopping shipped the rest; compaction may now go on at its next start.
    let store = store::open(&store_config).unwrap();
    let dir = root.path().join("restored");
    let r = store::restore_to(&*store, &RealFs, &dir, None, Point::Newest).unwrap();
    assert_eq!((r.manifest.index, r.log.next), (500, 500));
    assert_restored(&dir, 500);
}

#[test]
fn with_a_key_the_shipped_log_is_sealed_and_restores_only_with_it() {
    let root = tempfile::tempdir().unwrap();
    let mut store_config = local_store(&root.path().join("store"));
    let key = store::seal::StoreKey::from_hex(&store::seal::StoreKey::generate().unwrap()).unwrap();
    store_config.keys = vec![key];
    shipped_node(&root.path().join("n1"), &store_config);
    // Every log object, as the store holds it, shows no payload in the clear.
    let raw = store::open_unsealed(&store_config).unwrap();
    let logs = raw.list("n1/log/").unwrap();
    assert!(!logs.is_empty());
    for o in &logs {
        let mut bytes = Vec::new();
        raw.get(&o.name, &mut bytes).unwrap();
        assert!(
            !bytes.windows(6).any(|w| w == b"k02100"),
            "{} holds a key in the clear",
            o.name
        );
    }
    let sealed = store::open(&store_config).unwrap();
    let dir = root.path().join("restored");
    let r = store::restore_to(&*sealed, &RealFs, &dir, None, Point::Offset(2100)).unwrap();
    assert_eq!(r.log.next, 2100);
    assert_restored(&dir, 2100);
    let mut keyless = store_config.clone();
    keyless.keys.clear();
    let err = store::restore_to(
        &*store::open(&keyless).unwrap(),
        &RealFs,
        &root.path().join("without"),
        None,
        Point::Offset(2100),
    )
    .unwrap_err();
    assert!(err.contains("key"), "{err}");
}

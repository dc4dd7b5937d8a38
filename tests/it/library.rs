//! The library through its handles, over a filesystem that can stall or fail.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use flintlog::fs::{File, FileSystem, Lock, RealFs};
use flintlog::{Config, Error, Node, Offset, Reply};

/// The real filesystem, with four knobs: snapshot temp files can be held at creation
/// until a gate opens, every `sync_data` can be made to fail or to wait at a gate
/// (whether it fails is read before it waits), and creating a file whose name ends
/// with a given suffix can panic (in whichever actor does it).
#[derive(Default)]
struct HookFs {
    gate: Mutex<Option<Receiver<()>>>,
    fail_syncs: Arc<AtomicBool>,
    sync_gate: Arc<Mutex<Option<Receiver<()>>>>,
    syncs_started: Arc<std::sync::atomic::AtomicUsize>,
    panic_on: Mutex<&'static [&'static str]>,
    /// Directory syncs still allowed before every later one fails (`usize::MAX`: all).
    dir_syncs_left: std::sync::atomic::AtomicUsize,
}

struct HookFile {
    inner: Box<dyn File>,
    fail_syncs: Arc<AtomicBool>,
    sync_gate: Arc<Mutex<Option<Receiver<()>>>>,
    syncs_started: Arc<std::sync::atomic::AtomicUsize>,
}

impl File for HookFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }
    fn write_all_at(&mut self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, pos)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        let fail = self.fail_syncs.load(Ordering::SeqCst);
        self.syncs_started.fetch_add(1, Ordering::SeqCst);
        let gate = self.sync_gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            let _ = gate.recv();
        }
        if fail {
            return Err(io::Error::other("injected EIO"));
        }
        self.inner.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        self.inner.allocate(len)
    }
    fn punch_hole(&mut self, pos: u64, len: u64) -> io::Result<()> {
        self.inner.punch_hole(pos, len)
    }
    fn allocated_bytes(&self) -> io::Result<u64> {
        self.inner.allocated_bytes()
    }
    fn write_back(&mut self, pos: u64, len: u64) -> io::Result<()> {
        self.inner.write_back(pos, len)
    }
}

impl HookFs {
    fn new() -> HookFs {
        HookFs {
            dir_syncs_left: usize::MAX.into(),
            ..HookFs::default()
        }
    }

    fn wrap(&self, inner: Box<dyn File>) -> Box<dyn File> {
        Box::new(HookFile {
            inner,
            fail_syncs: self.fail_syncs.clone(),
            sync_gate: self.sync_gate.clone(),
            syncs_started: self.syncs_started.clone(),
        })
    }
}

impl FileSystem for HookFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealFs.create_dir_all(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn File>> {
        let panic_on = *self.panic_on.lock().unwrap();
        if panic_on.iter().any(|s| path.to_string_lossy().ends_with(s)) {
            panic!("injected panic creating {}", path.display());
        }
        if path.to_string_lossy().ends_with(".snap.tmp") {
            let gate = self.gate.lock().unwrap().clone();
            if let Some(gate) = gate {
                let _ = gate.recv();
            }
        }
        Ok(self.wrap(RealFs.create(path)?))
    }
    fn open(&self, path: &Path, writable: bool) -> io::Result<Box<dyn File>> {
        Ok(self.wrap(RealFs.open(path, writable)?))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        RealFs.remove(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealFs.list(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let left = self.dir_syncs_left.load(Ordering::SeqCst);
        if left == 0 {
            return Err(io::Error::other("injected EIO"));
        }
        if left != usize::MAX {
            self.dir_syncs_left.store(left - 1, Ordering::SeqCst);
        }
        RealFs.sync_dir(dir)
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Lock>> {
        RealFs.lock(path)
    }
}

fn dir() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("node");
    (t, p)
}

fn collect<T: Send + 'static>(tx: &Sender<(usize, flintlog::Result<T>)>, i: usize) -> Reply<T> {
    let tx = tx.clone();
    Reply::new(move |r| {
        let _ = tx.send((i, r));
    })
}

#[test]
fn a_stalled_snapshot_does_not_delay_appends() {
    let (_t, path) = dir();
    let fs = Arc::new(HookFs::new());
    let (open_gate, gate) = crossbeam_channel::bounded::<()>(0);
    *fs.gate.lock().unwrap() = Some(gate);
    let node = Node::open_with_fs(Config::new(&path), fs.clone()).unwrap();
    for i in 0..10 {
        node.appender().kv_set(&format!("k{i}"), "v").unwrap();
    }
    let (tx, snapshot_done) = crossbeam_channel::unbounded();
    node.snapshotter().snapshot_with(collect(&tx, 0));
    // The snapshot is stuck creating its file; appends go on regardless.
    let (atx, appended) = crossbeam_channel::unbounded();
    for i in 10..200 {
        node.appender()
            .append_with(format!("set k{i}=v").into_bytes(), collect(&atx, i));
        let (_, offset) = appended
            .recv_timeout(Duration::from_secs(10))
            .expect("an append waited for the stalled snapshot");
        assert_eq!(offset.unwrap(), i as u64);
    }
    assert!(
        snapshot_done.try_recv().is_err(),
        "the snapshot cannot have finished yet"
    );
    drop(open_gate);
    let (_, snap) = snapshot_done.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(
        snap.unwrap().offset,
        10,
        "the cut is taken when the request arrives"
    );
    node.shutdown().unwrap();
}

#[test]
fn shutdown_finishes_every_submitted_request_and_state_survives_reopen() {
    let (_t, path) = dir();
    let node = Node::open(Config::new(&path)).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    for i in 0..2000 {
        node.appender()
            .append_with(format!("set k{i}={i}").into_bytes(), collect(&tx, i));
    }
    let (snap_tx, snap_rx) = crossbeam_channel::unbounded();
    node.snapshotter().snapshot_with(collect(&snap_tx, 0));
    node.shutdown().unwrap();
    drop(tx);
    assert_eq!(snap_rx.recv().unwrap().1.unwrap().offset, 2000);
    let mut offsets: Vec<(usize, u64)> = rx.iter().map(|(i, r)| (i, r.unwrap().get())).collect();
    offsets.sort();
    assert_eq!(
        offsets,
        (0..2000).map(|i| (i, i as u64)).collect::<Vec<_>>()
    );

    let node = Node::open(Config::new(&path)).unwrap();
    assert_eq!(node.recovery().snapshot.as_ref().unwrap().offset, 2000);
    assert_eq!(node.recovery().entries_replayed, 0);
    assert_eq!(node.appender().kv_get("k1999").unwrap(), "1999");
    assert_eq!(
        node.appender().read(Offset::new(7)).unwrap().payload,
        b"set k7=7"
    );
    node.shutdown().unwrap();
}

#[test]
fn handles_used_after_shutdown_get_an_error_not_a_hang() {
    let (_t, path) = dir();
    let node = Node::open(Config::new(&path)).unwrap();
    let appender = node.appender().clone();
    let compactor = node.compactor().clone();
    node.shutdown().unwrap();
    assert!(matches!(appender.append("x"), Err(Error::Crashed(_))));
    assert!(matches!(
        compactor.compact(Offset::ZERO),
        Err(Error::Crashed(_))
    ));
}

#[test]
fn a_failed_fsync_is_never_acknowledged_and_poisons_writes() {
    let (_t, path) = dir();
    let fs = Arc::new(HookFs::new());
    let node = Node::open_with_fs(Config::new(&path), fs.clone()).unwrap();
    node.appender().kv_set("a", "1").unwrap();
    fs.fail_syncs.store(true, Ordering::SeqCst);
    assert!(matches!(
        node.appender().kv_set("a", "2"),
        Err(Error::Crashed(_))
    ));
    fs.fail_syncs.store(false, Ordering::SeqCst);
    // Even with the disk healthy again, nothing more is acknowledged.
    assert!(matches!(
        node.appender().append("later"),
        Err(Error::Crashed(_))
    ));
    assert!(matches!(
        node.snapshotter().snapshot(),
        Err(Error::Crashed(_))
    ));
    // Reads only see what was durable.
    assert_eq!(node.appender().kv_get("a").unwrap(), "1");
    assert!(node.appender().status().unwrap().poisoned.is_some());
    node.shutdown().unwrap();

    // After reopening, the entry whose sync failed may or may not be there (its
    // outcome was reported unknown); the acknowledged one is, and writes work again.
    let node = Node::open(Config::new(&path)).unwrap();
    let a = node.appender().kv_get("a").unwrap();
    assert!(a == "1" || a == "2", "{a}");
    node.appender().append("after reopen").unwrap();
    node.shutdown().unwrap();
}

#[test]
fn a_batch_whose_sync_fails_is_taken_back_out_of_what_reads_see() {
    // A batch large enough to be applied beside its sync (on the apply thread) fails
    // that sync: the node is poisoned, and reads still see only what was durable.
    let (_t, path) = dir();
    let fs = Arc::new(HookFs::new());
    let node = Node::open_with_fs(Config::new(&path), fs.clone()).unwrap();
    let a = node.appender();
    for i in 0..100 {
        a.kv_set(&format!("k{i}"), "old").unwrap();
    }
    // The next sync waits at the gate; what comes meanwhile makes one batch.
    let (open_gate, gate) = crossbeam_channel::bounded::<()>(0);
    *fs.sync_gate.lock().unwrap() = Some(gate);
    let started = fs.syncs_started.load(Ordering::SeqCst);
    let (tx, rx) = crossbeam_channel::unbounded();
    a.kv_set_with("first".into(), "1".into(), collect(&tx, 0));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fs.syncs_started.load(Ordering::SeqCst) == started {
        assert!(
            std::time::Instant::now() < deadline,
            "the first write syncs"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut n = 1;
    for i in 0..40 {
        a.kv_set_with(format!("k{i}"), "new".into(), collect(&tx, n));
        n += 1;
    }
    for i in 40..50 {
        a.append_with(format!("del k{i}").into_bytes(), collect(&tx, n));
        n += 1;
    }
    for i in 0..10 {
        a.kv_set_with(format!("n{i}"), "new".into(), collect(&tx, n));
        a.append_with(b"noise".to_vec(), collect(&tx, n + 1));
        n += 2;
    }
    fs.fail_syncs.store(true, Ordering::SeqCst);
    drop(open_gate);
    *fs.sync_gate.lock().unwrap() = None;
    let mut answers: Vec<(usize, flintlog::Result<Offset>)> = rx.iter().take(n).collect();
    answers.sort_by_key(|(i, _)| *i);
    assert!(answers[0].1.is_ok(), "{:?}", answers[0]);
    for (i, r) in &answers[1..] {
        assert!(matches!(r, Err(Error::Crashed(_))), "{i}: {r:?}");
    }
    assert!(a.status().unwrap().poisoned.is_some());
    for i in 0..50 {
        assert_eq!(a.kv_get(&format!("k{i}")).unwrap(), "old", "k{i}");
    }
    for i in 0..10 {
        assert!(
            matches!(a.kv_get(&format!("n{i}")), Err(Error::NotFound(_))),
            "n{i}"
        );
    }
    assert_eq!(a.kv_get("first").unwrap(), "1");
}

#[test]
fn many_blocked_writers_each_get_their_own_answer_and_keep_it_after_reopening() {
    // Enough writers that batches wake more of them than the appender answers in place:
    // their answers go through the replier thread.
    let (_t, path) = dir();
    let node = Node::open(Config::new(&path)).unwrap();
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let a = node.appender().clone();
            std::thread::spawn(move || {
                let mut offsets = Vec::new();
                for i in 0..200 {
                    offsets.push(a.kv_set(&format!("w{w}"), &i.to_string()).unwrap());
                }
                offsets
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in writers {
        let offsets = w.join().unwrap();
        assert!(offsets.windows(2).all(|p| p[0] < p[1]), "{offsets:?}");
        all.extend(offsets);
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 32 * 200, "every write has an offset of its own");
    let counters = node.appender().status().unwrap().counters;
    assert!(
        counters.appends as f64 / counters.batches as f64 > 2.0,
        "the writers shared batches: {counters:?}"
    );
    node.shutdown().unwrap();
    let node = Node::open(Config::new(&path)).unwrap();
    for w in 0..32 {
        assert_eq!(node.appender().kv_get(&format!("w{w}")).unwrap(), "199");
    }
    node.shutdown().unwrap();
}

#[test]
fn compare_and_set_is_atomic_across_threads() {
    let (_t, path) = dir();
    let node = Node::open(Config::new(&path)).unwrap();
    node.appender().kv_set("counter", "0").unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let a = node.appender().clone();
            std::thread::spawn(move || {
                let mut won = 0;
                for _ in 0..100 {
                    let cur = a.kv_get("counter").unwrap();
                    let next = (cur.parse::<u64>().unwrap() + 1).to_string();
                    match a.kv_cas("counter", &cur, &next) {
                        Ok(_) => won += 1,
                        Err(Error::PreconditionFailed(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                won
            })
        })
        .collect();
    let won: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(won > 0);
    assert_eq!(node.appender().kv_get("counter").unwrap(), won.to_string());
    node.shutdown().unwrap();
}

#[test]
fn a_locked_directory_is_refused_with_a_clear_error() {
    let (_t, path) = dir();
    let node = Node::open(Config::new(&path)).unwrap();
    match Node::open(Config::new(&path)) {
        Err(Error::Open(msg)) => assert!(
            msg.contains("locked") && msg.contains(&path.display().to_string()),
            "{msg}"
        ),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second node on a locked directory must be refused"),
    }
    node.shutdown().unwrap();
}

#[test]
fn a_batch_ending_just_before_a_block_boundary_reads_back_after_restart() {
    // The first batch starts at 4096; a record of 16 + 4075 bytes ends 5 bytes before
    // 8192, where the next batch starts: the padding is shorter than a record header.
    let (_t, path) = dir();
    let node = Node::open(Config::new(&path)).unwrap();
    let big = "x".repeat(4075);
    assert_eq!(node.appender().append(big.clone()).unwrap(), 0);
    assert_eq!(node.appender().append("set a=1").unwrap(), 1);
    node.shutdown().unwrap();
    let node = Node::open(Config::new(&path)).expect("recovery must read across short padding");
    assert_eq!(
        node.appender().read(Offset::ZERO).unwrap().payload,
        big.as_bytes()
    );
    assert_eq!(node.appender().kv_get("a").unwrap(), "1");
    node.shutdown().unwrap();
}

#[test]
fn reads_racing_a_paced_compaction_get_their_entry_or_not_found() {
    let (_t, path) = dir();
    let mut config = Config::new(&path);
    config.segment_bytes_max = 64 * 1024;
    config.segment_prefill = false;
    // Segments shrink 4 KiB at a time, slowly: reads have every chance to land on a
    // file being truncated.
    config.delete_chunk_bytes = 4096;
    config.delete_pause = Duration::from_millis(1);
    let node = Node::open(config).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let n = 20_000;
    for i in 0..n {
        node.appender()
            .append_with(format!("set k{i}={i}").into_bytes(), collect(&tx, i));
    }
    for _ in 0..n {
        rx.recv().unwrap().1.unwrap();
    }
    let at = node.snapshotter().snapshot().unwrap().offset.get();
    assert_eq!(at, n as u64);
    let stop = Arc::new(AtomicBool::new(false));
    let (started_tx, started) = crossbeam_channel::bounded::<()>(1);
    let reader = {
        let (appender, stop) = (node.appender().clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut found, mut gone) = (0u64, 0u64);
            let mut offset = 0u64;
            while !stop.load(Ordering::SeqCst) {
                // The compaction starts once reads are under way.
                if found == 100 {
                    let _ = started_tx.try_send(());
                }
                match appender.read(Offset::new(offset)) {
                    Ok(e) => {
                        assert!(e.checksum_valid, "offset {offset} read back damaged");
                        assert_eq!(e.payload, format!("set k{offset}={offset}").into_bytes());
                        found += 1;
                    }
                    Err(Error::NotFound(_)) => gone += 1,
                    Err(e) => panic!("offset {offset}: {e}"),
                }
                offset = (offset + 997) % at;
            }
            (found, gone)
        })
    };
    started.recv().unwrap();
    let compaction = node.compactor().compact(Offset::new(at - 100)).unwrap();
    stop.store(true, Ordering::SeqCst);
    let (found, gone) = reader.join().unwrap();
    assert!(compaction.bytes_freed > 0);
    assert!(found > 0 && gone > 0, "found {found}, gone {gone}");
    assert_eq!(
        node.appender().read(Offset::new(at - 1)).unwrap().payload,
        format!("set k{}={}", at - 1, at - 1).into_bytes()
    );
    node.shutdown().unwrap();
}

/// A panic in `actor` (injected where it creates a file ending in one of `suffixes`, during
/// `trigger`) poisons the node: the next write gets `Crashed` (error 13), `wal_status`
/// names the cause, and shutdown joins every thread and reports the panic.
fn a_panic_poisons_the_node(
    suffixes: &'static [&'static str],
    actor: &str,
    trigger: impl FnOnce(&Node) -> flintlog::Result<()>,
) {
    let (_t, path) = dir();
    let fs = Arc::new(HookFs::new());
    let node = Node::open_with_fs(Config::new(&path), fs.clone()).unwrap();
    for i in 0..10 {
        node.appender().append(format!("set k{i}=v")).unwrap();
    }
    node.snapshotter().snapshot().unwrap();
    *fs.panic_on.lock().unwrap() = suffixes;
    assert!(matches!(trigger(&node), Err(Error::Crashed(_))));
    *fs.panic_on.lock().unwrap() = &[];
    // The poison reaches the appender before its next request.
    match node.appender().append("set after=panic") {
        Err(Error::Crashed(why)) => {
            assert!(
                why.contains(&format!("the {actor} thread panicked")),
                "{why}"
            )
        }
        other => panic!("a write after the {actor} panicked: {other:?}"),
    }
    let status = node.appender().status().unwrap();
    let why = status.poisoned.expect("wal_status names the cause");
    assert!(
        why.contains(&format!("the {actor} thread panicked")),
        "{why}"
    );
    // Reads keep answering from the durable state.
    assert_eq!(node.appender().kv_get("k3").unwrap(), "v");
    let acknowledged = status.next_offset;
    match node.shutdown() {
        Err(Error::Crashed(why)) => assert!(why.contains(actor), "{why}"),
        other => panic!("shutdown must report the panicked {actor}: {other:?}"),
    }
    // Every thread was joined and the lock released: the directory opens again.
    let node = Node::open(Config::new(&path)).unwrap();
    assert_eq!(node.appender().status().unwrap().next_offset, acknowledged);
    node.shutdown().unwrap();
}

#[test]
fn a_panic_in_the_snapshotter_poisons_the_node() {
    a_panic_poisons_the_node(&[".snap.tmp", ".delta.tmp"], "snapshotter", |node| {
        node.appender().append("set more=1")?;
        node.snapshotter().snapshot().map(drop)
    });
}

#[test]
fn a_panic_in_the_compactor_poisons_the_node() {
    a_panic_poisons_the_node(&["log.meta.tmp"], "compactor", |node| {
        node.compactor().compact(Offset::new(5)).map(drop)
    });
}

#[test]
fn dropping_a_node_without_shutdown_joins_its_threads_and_frees_the_directory() {
    let (_t, path) = dir();
    let node = Node::open(Config::new(&path)).unwrap();
    let appender = node.appender().clone();
    appender.append("set a=1").unwrap();
    drop(node);
    // A handle that outlived the node gets an error, not a hang.
    assert!(matches!(appender.append("set b=2"), Err(Error::Crashed(_))));
    let node = Node::open(Config::new(&path)).unwrap();
    assert_eq!(node.appender().kv_get("a").unwrap(), "1");
    node.shutdown().unwrap();
}

/// A compaction is reported done (to the appender's counters, and to the client) only
/// after the directory sync that makes its deletions durable: when that sync fails,
/// the client gets error 13 and `wal_status` counts no compaction and no bytes freed.
#[test]
fn a_compaction_counts_as_done_only_after_its_directory_sync() {
    let (_t, path) = dir();
    let fs = Arc::new(HookFs::new());
    let mut config = Config::new(&path);
    config.segment_bytes_max = 8192;
    config.policy.auto_compact = false;
    let node = Node::open_with_fs(config, fs.clone()).unwrap();
    for i in 0..20 {
        node.appender().append(format!("set k{i}=v")).unwrap();
    }
    node.snapshotter().snapshot().unwrap();
    let before = node.appender().status().unwrap().segments;
    assert!(before > 2, "the workload must seal segments to delete");
    // log.meta's own directory sync passes; the one after the deletions fails.
    fs.dir_syncs_left.store(1, Ordering::SeqCst);
    assert!(matches!(
        node.compactor().compact(Offset::new(15)),
        Err(Error::Crashed(_))
    ));
    let logs = std::fs::read_dir(&path)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("log".as_ref()))
        .count();
    assert!(
        logs < before,
        "the compactor deleted segments before the failed sync"
    );
    let status = node.appender().status().unwrap();
    assert_eq!(status.counters.compactions, 0);
    assert_eq!(status.counters.bytes_freed, 0);
    assert!(status.poisoned.is_some());
    fs.dir_syncs_left.store(usize::MAX, Ordering::SeqCst);
    let _ = node.shutdown();
}

/// A node whose policy takes no snapshot of its own, with `keys` keys of 100-byte
/// values written (about 120 bytes of snapshot each).
fn node_with_keys(path: &Path, keys: usize, busy_bytes_per_sec: u64) -> Node {
    let mut c = Config::new(path);
    c.snapshot_busy_bytes_per_sec = busy_bytes_per_sec;
    c.policy = flintlog::Policy {
        snapshot_entries: 0,
        snapshot_bytes: 0,
        snapshot_age_ms: 0,
        auto_compact: false,
        ..flintlog::Policy::default()
    };
    let node = Node::open(c).unwrap();
    let (tx, done) = crossbeam_channel::unbounded();
    let value = "v".repeat(100);
    for i in 0..keys {
        node.appender()
            .kv_set_with(format!("key-{i:08}"), value.clone(), collect(&tx, i));
    }
    for _ in 0..keys {
        let (_, r) = done.recv_timeout(Duration::from_secs(60)).unwrap();
        r.unwrap();
    }
    node
}

#[test]
fn a_snapshot_written_while_the_log_syncs_keeps_to_the_busy_rate() {
    let (_t, path) = dir();
    let rate = 1 << 20;
    let node = node_with_keys(&path, 20_000, rate);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (appender, stop) = (node.appender().clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                appender.kv_set("busy", &i.to_string()).unwrap();
                i += 1;
            }
            i
        })
    };
    let started = std::time::Instant::now();
    let snap = node.snapshotter().snapshot().unwrap();
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let appends = writer.join().unwrap();
    // The first write may go before any sync of the log was seen.
    let paced = snap.size_bytes.saturating_sub(512 * 1024);
    assert!(paced > 1 << 20, "the state is too small to show pacing");
    let least = Duration::from_secs_f64(paced as f64 / rate as f64);
    assert!(
        took >= least,
        "a {} byte snapshot took {took:?} beside {appends} synced appends; at {rate} bytes/s \
         it takes at least {least:?}",
        snap.size_bytes
    );
    node.shutdown().unwrap();
}

#[test]
fn a_snapshot_written_while_the_log_is_idle_is_not_paced() {
    let (_t, path) = dir();
    // At this rate, a paced snapshot of this state would take over half an hour.
    let node = node_with_keys(&path, 20_000, 1024);
    let (tx, done) = crossbeam_channel::unbounded();
    node.snapshotter().snapshot_with(collect(&tx, 0));
    let Ok((_, snap)) = done.recv_timeout(Duration::from_secs(60)) else {
        // Shutting the node down would wait for the paced snapshot: leave it.
        std::mem::forget(node);
        panic!("a snapshot with no appends beside it was paced");
    };
    assert!(snap.unwrap().size_bytes > 2 << 20);
    node.shutdown().unwrap();
}

//! Catching a follower up in a group: by a snapshot sent in chunks, against by the
//! leader's log, side by side in one run. Three cluster nodes in this process, on the
//! bench directory's disk, connected by channels (no network latency): the follower is
//! cut off while the state is written, then let back, and timed until it has applied
//! what the leader has.

use std::collections::HashSet;
use std::sync::RwLock;

use flintlog::cluster::transfer::Part;
use flintlog::cluster::{ClusterNode, ClusterStatus, Transport};
use flintlog::consensus::{Command, Effect};
use raft::eraftpb::Message;

use super::*;

#[derive(Clone, Default)]
struct Net {
    nodes: Arc<RwLock<Vec<Option<Arc<ClusterNode>>>>>,
    cut: Arc<Mutex<HashSet<u64>>>,
    /// Bytes of snapshot chunks delivered.
    chunk_bytes: Arc<std::sync::atomic::AtomicU64>,
}

struct Link {
    from: u64,
    net: Net,
}

impl Link {
    fn to(&self, to: u64) -> Option<Arc<ClusterNode>> {
        let cut = self.net.cut.lock().expect("cut");
        if cut.contains(&self.from) || cut.contains(&to) {
            return None;
        }
        drop(cut);
        self.net.nodes.read().expect("nodes")[to as usize - 1].clone()
    }
}

impl Transport for Link {
    fn send(&self, msg: Message) {
        let me = self.net.nodes.read().expect("nodes")[self.from as usize - 1].clone();
        if let (Some(n), Some(me)) = (self.to(msg.to), me) {
            n.step(msg, me.incarnation());
        }
    }
    fn send_part(&self, to: u64, part: Part) {
        if let Some(n) = self.to(to) {
            if let Part::Chunk { data, .. } = &part {
                self.net
                    .chunk_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            n.step_part(self.from, part);
        }
    }
}

fn status(n: &ClusterNode) -> ClusterStatus {
    let (tx, rx) = crossbeam_channel::bounded(1);
    n.status_with(Reply::new(move |r| drop(tx.send(r))));
    rx.recv().expect("answer").expect("status")
}

/// What one catch-up measured.
struct CatchUp {
    /// Seconds until the follower applied everything.
    took: f64,
    /// Bytes of snapshot chunks sent.
    sent: u64,
    /// Entries the leader's log held when the follower came back.
    held: u64,
    /// The leader's write latency p99 (ms) in the second before, and while catching up.
    p99_idle: f64,
    p99_during: f64,
    /// Seconds from restarting the caught-up follower to its first linearizable read.
    restart_to_read: f64,
    /// Where the snapshot's time went on the follower (by snapshot only).
    phases: Option<flintlog::cluster::manage::Phases>,
    /// By snapshot only: the follower cut off again while a tenth as many keys were
    /// written, the leader's next snapshot a delta on the chain the follower holds:
    /// seconds to catch up, bytes of chunks sent, bytes held and not sent.
    again: Option<(f64, u64, u64)>,
}

/// Stops node `id` (once the links that may hold it for a moment let go).
fn stop_node(net: &Net, id: u64) {
    let mut n = net.nodes.write().expect("nodes")[id as usize - 1]
        .take()
        .expect("up");
    loop {
        match Arc::try_unwrap(n) {
            Ok(n) => return n.shutdown(),
            Err(back) => {
                n = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// The node among `ids` that leads, waiting for one.
fn leader_among(node: &dyn Fn(u64) -> Arc<ClusterNode>, ids: &[u64]) -> u64 {
    loop {
        if let Some(&id) = ids.iter().find(|&&id| status(&node(id)).role == "leader") {
            return id;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `keys` distinct keys through `leader`, 1,024 in flight.
fn write_keys(leader: &ClusterNode, keys: u64) {
    write_keys_as(leader, keys, "key");
}

/// Writes `keys` distinct keys named `<prefix><number>`, 1,024 in flight.
fn write_keys_as(leader: &ClusterNode, keys: u64, prefix: &str) {
    let (tx, rx) = crossbeam_channel::bounded::<flintlog::Result<Effect>>(2048);
    let mut in_flight = 0;
    for i in 0..keys {
        if in_flight >= 1024 {
            rx.recv().expect("answer").expect("write");
            in_flight -= 1;
        }
        let tx = tx.clone();
        leader.propose_with(
            Command::Append(
                format!("set {prefix}{i:010}=value-{i:010}-0123456789abcdef").into_bytes(),
            ),
            Reply::new(move |r| drop(tx.send(r))),
        );
        in_flight += 1;
    }
    for _ in 0..in_flight {
        rx.recv().expect("answer").expect("write");
    }
}

pub(crate) fn p99(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

fn catch_up(
    dir: &Path,
    keys: u64,
    by_snapshot: bool,
    rate: u64,
    store: Option<&flintlog::store::StoreConfig>,
) -> CatchUp {
    let net = Net::default();
    *net.nodes.write().expect("nodes") = vec![None, None, None];
    let config = |id: u64| {
        let mut c = Config::new(dir.join(format!("n{id}")));
        c.segment_bytes_max = 64 * 1024 * 1024;
        c.snapshot_send_bytes_per_sec = rate;
        c.policy = flintlog::Policy {
            // One snapshot, cut when the state is written; compaction behind it
            // keeps nothing for the follower only when catching up by snapshot.
            snapshot_entries: if by_snapshot { keys } else { 0 },
            jitter_percent: 0,
            auto_compact: by_snapshot,
            trailing_entries: 0,
            ..flintlog::Policy::default()
        };
        c.snapshot_store = store.cloned();
        c
    };
    for id in 1..=3u64 {
        let link = Box::new(Link {
            from: id,
            net: net.clone(),
        });
        let node =
            ClusterNode::open(&config(id), id, &[1, 2, 3], Arc::default(), link).expect("open");
        net.nodes.write().expect("nodes")[id as usize - 1] = Some(Arc::new(node));
    }
    let node = |id: u64| {
        net.nodes.read().expect("nodes")[id as usize - 1]
            .clone()
            .expect("up")
    };
    // A leader among n1 and n2, with n3 cut off.
    net.cut.lock().expect("cut").insert(3);
    let leader = leader_among(&node, &[1, 2]);
    // The state: `keys` writes, 1,024 in flight.
    write_keys(&node(leader), keys);
    // Wait for the snapshot and the compaction (or for nothing, without them).
    let target = status(&node(leader));
    if by_snapshot {
        while status(&node(leader)).first_index <= 2 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let held = target.last_index - status(&node(leader)).first_index + 1;
    // With a store: the leader's snapshot in it before the follower comes back.
    while store.is_some() && {
        let s = status(&node(leader));
        s.store.expect("store").uploaded_index != s.management.snapshot.map(|f| f.offset.get())
    } {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Four writers through the leader, one write at a time each, timed: a second
    // before the follower is let back, and while it catches up.
    let stop = Arc::new(AtomicBool::new(false));
    let clock = Instant::now();
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (leader, stop) = (node(leader), stop.clone());
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (tx, rx) = crossbeam_channel::bounded(1);
                    let at = Instant::now();
                    leader.propose_with(
                        Command::Append(format!("set w{w}k{}=v{i}", i % 1000).into_bytes()),
                        Reply::new(move |r| drop(tx.send(r))),
                    );
                    rx.recv().expect("answer").expect("write");
                    samples.push((
                        at.duration_since(clock).as_secs_f64(),
                        at.elapsed().as_secs_f64() * 1000.0,
                    ));
                    i += 1;
                }
                samples
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let healed = started.duration_since(clock).as_secs_f64();
    net.cut.lock().expect("cut").remove(&3);
    while status(&node(3)).applied < target.applied {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let samples: Vec<(f64, f64)> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    let window = |from: f64, to: f64| -> Vec<f64> {
        samples
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, l)| *l)
            .collect()
    };
    let (p99_idle, p99_during) = (
        p99(window(healed - 1.0, healed)),
        p99(window(healed, healed + took)),
    );
    let t3 = status(&node(3)).management.transfers;
    assert_eq!(
        t3.completed > 0,
        by_snapshot,
        "caught up {} a snapshot",
        if by_snapshot { "without" } else { "with" }
    );
    if store.is_some() {
        assert_eq!(
            t3.from_store, 1,
            "the follower fetched the snapshot from the store"
        );
    }
    let sent = net.chunk_bytes.load(Ordering::Relaxed);
    let again = (by_snapshot && store.is_none()).then(|| {
        // Cut off until the leader stops counting it as active, a tenth as many keys
        // written, a snapshot (a delta on the chain) and a compaction past it asked of
        // the leader, then let back.
        net.cut.lock().expect("cut").insert(3);
        std::thread::sleep(Duration::from_millis(1500));
        let l = node(leader);
        write_keys_as(&l, keys / 10, "again");
        let (tx, rx) = crossbeam_channel::bounded(1);
        l.snapshot_with(Reply::new(move |r| drop(tx.send(r))));
        let tip = rx.recv().expect("answer").expect("snapshot");
        assert!(tip.file.ends_with(".rdelta"), "a delta: {tip:?}");
        let (tx, rx) = crossbeam_channel::bounded(1);
        l.compact_with(tip.offset, Reply::new(move |r| drop(tx.send(r))));
        rx.recv().expect("answer").expect("compaction");
        let target = status(&l);
        let before = (
            net.chunk_bytes.load(Ordering::Relaxed),
            status(&node(3)).management.transfers,
        );
        let started = Instant::now();
        net.cut.lock().expect("cut").remove(&3);
        while status(&node(3)).applied < target.applied {
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = started.elapsed().as_secs_f64();
        let t = status(&node(3)).management.transfers;
        assert_eq!(
            t.completed,
            before.1.completed + 1,
            "caught up by a snapshot"
        );
        (
            took,
            net.chunk_bytes.load(Ordering::Relaxed) - before.0,
            t.bytes_held - before.1.bytes_held,
        )
    });
    // A restart of the caught-up follower, its disk intact: until it serves a read.
    let restart_to_read = {
        stop_node(&net, 3);
        let started = Instant::now();
        let link = Box::new(Link {
            from: 3,
            net: net.clone(),
        });
        let n3 = Arc::new(
            ClusterNode::open(&config(3), 3, &[1, 2, 3], Arc::default(), link).expect("reopen"),
        );
        net.nodes.write().expect("nodes")[2] = Some(n3.clone());
        loop {
            let (tx, rx) = crossbeam_channel::bounded(1);
            n3.read_with(
                flintlog::cluster::ReadQuery::Key("key0000000000".into()),
                Reply::new(move |r| drop(tx.send(r))),
            );
            if rx.recv().expect("answer").is_ok() {
                break started.elapsed().as_secs_f64();
            }
        }
    };
    for id in 1..=3 {
        stop_node(&net, id);
    }
    CatchUp {
        took,
        sent,
        held,
        p99_idle,
        p99_during,
        restart_to_read,
        phases: t3.last,
        again,
    }
}

pub(crate) fn bench_transfer(args: &Args, r: &mut Report) {
    let keys = args.transfer_keys;
    r.section(
        "i. Catching a follower up",
        &format!(
            "Three cluster nodes in one process (channels between them, no network \
             latency), a follower cut off while {keys} writes of distinct keys go through \
             the leader, then let back: the time until it has applied everything, when the \
             leader compacted behind a snapshot (the follower receives the snapshot in \
             256 KiB chunks, verifies and installs it) and when the leader kept its whole \
             log (the follower replays it through Raft); the leader sends at most {} \
             bytes/s (`--snapshot-send-bytes-per-sec`, 0: no limit). Median of {} runs, \
             interleaved.",
            args.transfer_rate, args.runs
        ),
    );
    let (mut snap, mut log, mut stored) = (Vec::new(), Vec::new(), Vec::new());
    let store = super::store::store_config(&format!("bench-i-{}", std::process::id()));
    for run in 0..args.runs {
        let d = fresh(&args.dir, &format!("i-snapshot-{run}"));
        snap.push(catch_up(&d, keys, true, args.transfer_rate, None));
        let _ = std::fs::remove_dir_all(&d);
        let d = fresh(&args.dir, &format!("i-log-{run}"));
        log.push(catch_up(&d, keys, false, args.transfer_rate, None));
        let _ = std::fs::remove_dir_all(&d);
        if let Some(store) = &store {
            let d = fresh(&args.dir, &format!("i-store-{run}"));
            stored.push(catch_up(&d, keys, true, args.transfer_rate, Some(store)));
            let _ = std::fs::remove_dir_all(&d);
        }
    }
    let med = |v: &[CatchUp], f: fn(&CatchUp) -> f64| median(v.iter().map(f).collect());
    let (ts, tl) = (med(&snap, |c| c.took), med(&log, |c| c.took));
    let mb = snap.last().map_or(0, |c| c.sent) as f64 / 1e6;
    let held = log.last().map_or(0, |c| c.held);
    let runs = |v: &[CatchUp]| format!("{:.2?}", v.iter().map(|c| c.took).collect::<Vec<_>>());
    r.table(
        &[
            "catch-up",
            "seconds (median)",
            "runs",
            "sent",
            "leader write p99 before / during (ms)",
            "restart to first read (s)",
        ],
        &[
            vec![
                "by snapshot".into(),
                format!("{ts:.2}"),
                runs(&snap),
                format!("{mb:.1} MB of snapshot, {:.1} MB/s", mb / ts),
                format!(
                    "{:.2} / {:.2}",
                    med(&snap, |c| c.p99_idle),
                    med(&snap, |c| c.p99_during)
                ),
                format!("{:.2}", med(&snap, |c| c.restart_to_read)),
            ],
            vec![
                "by the log".into(),
                format!("{tl:.2}"),
                runs(&log),
                format!("{held} entries"),
                format!(
                    "{:.2} / {:.2}",
                    med(&log, |c| c.p99_idle),
                    med(&log, |c| c.p99_during)
                ),
                format!("{:.2}", med(&log, |c| c.restart_to_read)),
            ],
        ]
        .into_iter()
        .chain(snap.iter().all(|c| c.again.is_some()).then(|| {
            let again: Vec<(f64, u64, u64)> = snap.iter().filter_map(|c| c.again).collect();
            let t = median(again.iter().map(|a| a.0).collect());
            let (sent, held) = again.last().map_or((0, 0), |a| (a.1, a.2));
            vec![
                format!(
                    "by snapshot again, {} more keys: the follower holds the base, receives the delta",
                    keys / 10
                ),
                format!("{t:.2}"),
                format!("{:.2?}", again.iter().map(|a| a.0).collect::<Vec<_>>()),
                format!(
                    "{:.1} MB of delta ({:.1} MB held, not sent)",
                    sent as f64 / 1e6,
                    held as f64 / 1e6
                ),
                "-".into(),
                "-".into(),
            ]
        }))
        .chain((!stored.is_empty()).then(|| {
            let t = med(&stored, |c| c.took);
            vec![
                "by snapshot, fetched from the store (SeaweedFS)".into(),
                format!("{t:.2}"),
                runs(&stored),
                format!(
                    "{} bytes from the leader",
                    stored.last().map_or(0, |c| c.sent)
                ),
                format!(
                    "{:.2} / {:.2}",
                    med(&stored, |c| c.p99_idle),
                    med(&stored, |c| c.p99_during)
                ),
                format!("{:.2}", med(&stored, |c| c.restart_to_read)),
            ]
        }))
        .collect::<Vec<_>>(),
    );
    let ratio = med(&snap, |c| c.p99_during) / med(&snap, |c| c.p99_idle).max(1e-9);
    r.target(
        "leader write p99 while it sends a snapshot vs before",
        format!("{ratio:.2}x"),
        "<= 1.5x",
        ratio <= 1.5,
    );
    bench_new_member(args, r);
    let line = format!(
        "catch-up by snapshot vs by the log ({keys} keys): {:.2}x the time",
        ts / tl
    );
    println!("{line}");
    r.md.push_str(&format!("{line}\n\n"));
    let phases: Vec<_> = snap.iter().filter_map(|c| c.phases).collect();
    if !phases.is_empty() {
        let med_ms = |f: fn(&flintlog::cluster::manage::Phases) -> u64| {
            median(phases.iter().map(|p| f(p) as f64).collect())
        };
        let (t, v, i) = (
            med_ms(|p| p.transfer_ms),
            med_ms(|p| p.verify_ms),
            med_ms(|p| p.install_ms),
        );
        let all = (t + v + i).max(1.0);
        let line = format!(
            "the snapshot on the follower (median): transfer {t:.0} ms ({:.0}%), verification \
             {v:.0} ms ({:.0}%), install {i:.0} ms ({:.0}%); {:.1} MB/s for the three together",
            100.0 * t / all,
            100.0 * v / all,
            100.0 * i / all,
            phases[0].bytes as f64 / 1e6 / (all / 1000.0)
        );
        println!("{line}");
        r.md.push_str(&format!("{line}\n\n"));
    }
}

/// A new member added to a group of three that holds `keys` writes (compacted behind a
/// snapshot in the store): seconds from starting it to its first linearizable read,
/// loading the snapshot from the store (`bootstrap`) or receiving the leader's.
fn new_member(dir: &Path, keys: u64, store: &flintlog::store::StoreConfig, bootstrap: bool) -> f64 {
    let net = Net::default();
    *net.nodes.write().expect("nodes") = vec![None, None, None, None];
    let config = |id: u64, with_store: bool| {
        let mut c = Config::new(dir.join(format!("n{id}")));
        c.segment_bytes_max = 64 * 1024 * 1024;
        c.policy = flintlog::Policy {
            snapshot_entries: keys,
            jitter_percent: 0,
            auto_compact: true,
            trailing_entries: 0,
            ..flintlog::Policy::default()
        };
        c.snapshot_store = with_store.then(|| store.clone());
        c
    };
    for id in 1..=3u64 {
        let link = Box::new(Link {
            from: id,
            net: net.clone(),
        });
        let node = ClusterNode::open(&config(id, true), id, &[1, 2, 3], Arc::default(), link)
            .expect("open");
        net.nodes.write().expect("nodes")[id as usize - 1] = Some(Arc::new(node));
    }
    let node = |id: u64| {
        net.nodes.read().expect("nodes")[id as usize - 1]
            .clone()
            .expect("up")
    };
    let leader = leader_among(&node, &[1, 2, 3]);
    write_keys(&node(leader), keys);
    // The leader compacted behind its snapshot, and that snapshot is in the store.
    while {
        let s = status(&node(leader));
        s.first_index <= 2
            || s.store.expect("store").uploaded_index
                != s.management.snapshot.map(|f| f.offset.get())
    } {
        std::thread::sleep(Duration::from_millis(20));
    }
    let added = loop {
        let (tx, rx) = crossbeam_channel::bounded(1);
        node(leader).change_with(
            flintlog::consensus::Change::AddLearner("n4".into()),
            Reply::new(move |r| drop(tx.send(r))),
        );
        match rx.recv().expect("answer") {
            Ok(flintlog::consensus::Changed::Done { id, .. }) => break id,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let started = Instant::now();
    let link = Box::new(Link {
        from: added,
        net: net.clone(),
    });
    let n4 = Arc::new(
        ClusterNode::open(&config(added, bootstrap), added, &[], Arc::default(), link)
            .expect("join"),
    );
    net.nodes.write().expect("nodes")[added as usize - 1] = Some(n4.clone());
    let took = loop {
        let (tx, rx) = crossbeam_channel::bounded(1);
        n4.read_with(
            flintlog::cluster::ReadQuery::Key(format!("key{:010}", keys - 1)),
            Reply::new(move |r| drop(tx.send(r))),
        );
        if let Ok(flintlog::cluster::ReadAnswer::Value(Some(_))) = rx.recv().expect("answer") {
            break started.elapsed().as_secs_f64();
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let t = status(&n4).management.transfers;
    assert_eq!(
        (t.completed, t.started),
        if bootstrap { (0, 0) } else { (1, 1) },
        "the new member {} the leader's snapshot",
        if bootstrap {
            "received"
        } else {
            "did not receive"
        }
    );
    drop(n4);
    for id in 1..=added {
        stop_node(&net, id);
    }
    took
}

/// Section i's last table: a new member's time to its first read.
pub(crate) fn bench_new_member(args: &Args, r: &mut Report) {
    let Some(store) = super::store::store_config(&format!("bench-m-{}", std::process::id())) else {
        return;
    };
    let keys = args.transfer_keys;
    let (mut from_store, mut from_leader) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let mut store = store.clone();
        store.url = format!("{}-{run}", store.url);
        let d = fresh(&args.dir, &format!("i-member-store-{run}"));
        from_store.push(new_member(&d, keys, &store, true));
        let _ = std::fs::remove_dir_all(&d);
        let d = fresh(&args.dir, &format!("i-member-leader-{run}"));
        from_leader.push(new_member(&d, keys, &store, false));
        let _ = std::fs::remove_dir_all(&d);
    }
    r.table(
        &[
            "a new member, started to first read",
            "seconds (median)",
            "runs",
        ],
        &[
            vec![
                "loading the group's snapshot from the store".into(),
                format!("{:.2}", median(from_store.clone())),
                format!("{from_store:.2?}"),
            ],
            vec![
                "receiving the leader's snapshot".into(),
                format!("{:.2}", median(from_leader.clone())),
                format!("{from_leader:.2?}"),
            ],
        ],
    );
}

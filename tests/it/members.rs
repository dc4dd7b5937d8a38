//! Membership changes: a node that lost its data directory is refused under its old
//! identity, and is replaced by a new member that catches up from a snapshot.

use std::time::{Duration, Instant};

use flintlog::Config;
use flintlog::consensus::{Change, Changed};

use crate::group::Group;

fn small(c: &mut Config) {
    crate::group::small(c);
    // Enough kept behind each snapshot that a new member, once it installed one,
    // continues from the log.
    c.policy.trailing_entries = 200;
}

fn write_batch(g: &Group, via: u64, from: u64, n: u64) -> Vec<(flintlog::Offset, u64)> {
    let ids: Vec<u64> = (from..from + n).collect();
    let offsets = g.append_many(
        via,
        ids.iter()
            .map(|i| format!("set k{}=v{i}", i % 41))
            .collect(),
    );
    offsets.into_iter().zip(ids).collect()
}

/// Until `f` holds (or 20 s: a failure).
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until every one of n1..n3 has applied the group's record of the incarnation
/// of each of them: from then on, a member that comes back with an empty directory is
/// another incarnation, refused.
fn wait_until_recorded(g: &Group) {
    wait_until("incarnations recorded", || {
        (1..=3).all(|id| {
            let s = g.status(id);
            s.refused_messages == 0 && s.recorded_incarnations.len() == 3
        })
    });
}

#[test]
fn a_lost_disk_is_refused_under_its_old_id_and_replaced_by_a_new_member() {
    let _ = env_logger::builder().is_test(true).try_init();
    let g = Group::start(small);
    let mut acked = write_batch(&g, 1, 0, 200);
    // Every member's incarnation is recorded once the leader has heard from it.
    wait_until_recorded(&g);

    // n2 loses its disk and comes back, empty, under its old identity.
    g.down(2);
    std::fs::remove_dir_all(&g.dirs[1]).unwrap();
    g.up(2);
    acked.extend(write_batch(&g, 1, 200, 100));
    // The group hears from the new incarnation of n2 and refuses it; meanwhile, and
    // after, n2 holds nothing.
    wait_until("the new incarnation of n2 refused", || {
        let s2 = g.status(2);
        assert_eq!(
            s2.applied, 0,
            "n2 came back with an empty directory and was let in: {s2:#?}"
        );
        [1, 3]
            .iter()
            .map(|&id| g.status(id).refused_messages)
            .sum::<u64>()
            > 0
    });
    let s2 = g.status(2);
    assert_eq!(s2.applied, 0, "n2 was let in once refused: {s2:#?}");

    // The replacement, step by step: remove n2, add n4 as a learner, start it with
    // an empty directory as a joining member, let it catch up, promote it.
    g.down(2);
    let removed = g.change(&[1, 3], Change::Remove(2)).unwrap();
    assert!(
        matches!(&removed, Changed::Done { voters, .. } if *voters == [1, 3]),
        "{removed:?}"
    );
    let added = g.change(&[1, 3], Change::AddLearner("n4".into())).unwrap();
    let Changed::Done {
        id: new_id,
        learners,
        ..
    } = added
    else {
        panic!("n4 not added: {added:?}");
    };
    assert_eq!((new_id, learners), (4, vec![4]));
    // A promotion before it caught up is refused.
    assert!(g.change(&[1, 3], Change::Promote(4)).is_err());
    let dir4 = g.dirs[0].parent().unwrap().join("n4");
    g.join(4, &dir4);
    // It catches up from a snapshot while writes go on.
    for batch in 0..5 {
        acked.extend(write_batch(&g, 1 + 2 * (batch % 2), 300 + batch * 40, 40));
    }
    let target = g.status(g.leader(&[1, 3])).commit;
    wait_until("n4 caught up", || {
        let s = g.status(4);
        s.management.transfers.completed >= 1 && s.applied >= target
    });
    let s4 = g.status(4);
    assert!(
        s4.first_index > 1,
        "n4 did not start from a snapshot: {s4:#?}"
    );
    // One snapshot, and one that names it: an older one would be refused on arrival.
    let t = s4.management.transfers;
    assert_eq!(
        (t.started, t.completed, t.restarted),
        (1, 1, 0),
        "n4 needed more than one snapshot: {s4:#?}"
    );
    // Where its time went is reported, for the snapshot it installed.
    assert!(t.last.is_some_and(|p| p.bytes > 0), "{s4:#?}");
    let promoted = g.change(&[1, 3], Change::Promote(4)).unwrap();
    assert!(
        matches!(&promoted, Changed::Done { voters, learners, .. } if *voters == [1, 3, 4] && learners.is_empty()),
        "{promoted:?}"
    );
    // n4 now counts: with n3 cut off, n1 and n4 are a majority of {1, 3, 4}.
    g.cut_off(3, true);
    acked.extend(write_batch(&g, 1, 600, 30));
    g.cut_off(3, false);
    let all = g.converge(&[1, 3, 4]);
    assert_eq!(all[0].voters, vec![1, 3, 4]);
    // Every acknowledged write is on the new member: read back, or compacted
    // behind its snapshot (whose state the digest shows equal); the newest are read.
    for (n, (offset, i)) in acked.iter().rev().enumerate() {
        match g.read(4, flintlog::cluster::ReadQuery::Entry(*offset)) {
            Ok(flintlog::cluster::ReadAnswer::Entry(e)) => {
                assert_eq!(e.payload, format!("set k{}=v{i}", i % 41).into_bytes())
            }
            Err(flintlog::Error::NotFound(why)) if n >= 10 && why.contains("compacted") => {}
            other => panic!("offset {offset} on n4: {other:?}"),
        }
    }
    // n4 restarts as the member it joined as.
    g.down(4);
    g.join(4, &dir4);
    g.converge(&[1, 3, 4]);
}

/// The danger the incarnation check prevents: a node that lost its disk votes again
/// with an empty log, and a candidate that lacks acknowledged writes wins with its
/// vote. Here n3 misses 100 acknowledged writes (cut off), n2 (which holds them) loses
/// its disk and comes back empty, n1 (which holds them too) is down: n3 must not lead
/// with n2's vote. When n1 is back, every acknowledged write is still there.
#[test]
fn a_node_that_lost_its_disk_cannot_elect_a_leader_that_lacks_acknowledged_writes() {
    let _ = env_logger::builder().is_test(true).try_init();
    let g = Group::start(|_| {});
    let mut acked = write_batch(&g, 1, 0, 30);
    g.converge(&[1, 2, 3]);
    wait_until_recorded(&g);
    g.cut_off(3, true);
    let leader = g.leader(&[1, 2]);
    acked.extend(write_batch(&g, leader, 30, 100));
    let acked_in = g.status(leader).term;
    let other = 3 - leader;
    // The node that led keeps the writes; the other one of {n1, n2} loses its disk.
    g.down(other);
    std::fs::remove_dir_all(&g.dirs[other as usize - 1]).unwrap();
    g.down(leader);
    g.up(other);
    g.cut_off(3, false);
    // For three seconds (several election timeouts), neither may be elected (n3 may
    // still believe itself the leader of a term before the writes, until it hears of
    // a newer one or its check-quorum deposes it: it can commit nothing there).
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for id in [other, 3] {
            let s = g.status(id);
            assert!(
                s.role != "leader" || s.term < acked_in,
                "n{id} leads with the vote of a node that lost its disk: {s:#?}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    g.up(leader);
    // The new leader commits the old term's entries with its first own entry.
    wait_until("the writes committed again", || {
        let s = g.converge(&[leader, 3]);
        s.iter().all(|s| s.next_offset.get() >= 130)
    });
    for (offset, i) in &acked {
        match g.read(3, flintlog::cluster::ReadQuery::Entry(*offset)) {
            Ok(flintlog::cluster::ReadAnswer::Entry(e)) => {
                assert_eq!(e.payload, format!("set k{}=v{i}", i % 41).into_bytes())
            }
            other => panic!("acknowledged offset {offset} lost: {other:?}"),
        }
    }
}

/// A new member needs a snapshot that names it, even when nothing else would make the
/// leader write one (an idle group, no policy snapshot due).
#[test]
fn a_member_added_to_an_idle_group_catches_up() {
    let _ = env_logger::builder().is_test(true).try_init();
    let g = Group::start(|_| {});
    write_batch(&g, 1, 0, 20);
    g.converge(&[1, 2, 3]);
    let added = g
        .change(&[1, 2, 3], Change::AddLearner("n4".into()))
        .unwrap();
    assert!(matches!(added, Changed::Done { id: 4, .. }), "{added:?}");
    // The leader's snapshot predates the change: it cuts one that holds it, on its own,
    // before the new member has asked for anything.
    let leader = g.leader(&[1, 2, 3]);
    let changed_at = g.status(leader).commit;
    wait_until("the leader's snapshot holds the new configuration", || {
        g.status(leader)
            .management
            .snapshot
            .is_some_and(|s| s.offset.get() >= changed_at)
    });
    let dir4 = g.dirs[0].parent().unwrap().join("n4");
    g.join(4, &dir4);
    let target = g.status(g.leader(&[1, 2, 3])).commit;
    wait_until("n4 caught up", || g.status(4).applied >= target);
    // The leader learns of it with n4's next acknowledgement.
    let mut promoted = None;
    wait_until("n4 promoted", || {
        match g.change(&[1, 2, 3], Change::Promote(4)) {
            Ok(c) => promoted = Some(c),
            Err(flintlog::Error::PreconditionFailed(why)) if why.contains("caught up") => {}
            Err(e) => panic!("promote: {e}"),
        }
        promoted.is_some()
    });
    let promoted = promoted.unwrap();
    assert!(
        matches!(&promoted, Changed::Done { voters, .. } if *voters == [1, 2, 3, 4]),
        "{promoted:?}"
    );
    for i in 20..40u64 {
        let cmd = flintlog::consensus::Command::Append(format!("set k{i}=v{i}").into_bytes());
        if let Err(e) = crate::group::call(|r| g.node(4).propose_with(cmd, r)) {
            let s: Vec<_> = (1..=4).map(|id| g.status(id)).collect();
            panic!("write {i} through n4: {e}: {s:#?}");
        }
    }
    g.converge(&[1, 2, 3, 4]);
}

static STORE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

fn with_store(c: &mut Config) {
    small(c);
    let mut store = flintlog::store::StoreConfig::new(STORE.get().unwrap().display().to_string());
    // The test takes the store away: a stop waits for it only briefly.
    store.shutdown_wait = Duration::from_secs(1);
    c.snapshot_store = Some(store);
}

/// Adds a learner, once the change before it is done.
fn add(g: &Group, name: &str) -> Changed {
    let mut added = None;
    wait_until("the learner added", || {
        match g.change(&[1, 2, 3], Change::AddLearner(name.into())) {
            Ok(c) => added = Some(c),
            Err(flintlog::Error::PreconditionFailed(why)) if why.contains("one at a time") => {}
            Err(e) => panic!("add {name}: {e}"),
        }
        added.is_some()
    });
    added.unwrap()
}

#[test]
fn a_new_member_bootstraps_from_the_store_and_catches_up_from_the_log() {
    let _ = env_logger::builder().is_test(true).try_init();
    let store = tempfile::tempdir().unwrap();
    let root = store.path().join("bucket");
    STORE.set(root.clone()).unwrap();
    let g = Group::start(with_store);
    write_batch(&g, 1, 0, 50);
    g.converge(&[1, 2, 3]);
    for from in [50, 200, 350] {
        write_batch(&g, 1, from, 150);
    }
    g.converge(&[1, 2, 3]);
    // Every member has cut the last snapshot these writes call for (its policy cuts
    // one every 100 entries: none is due) and it is in the store. Waiting for uploads
    // alone let a loaded machine go on while a member was still to cut its last one:
    // n4 then started from an older chain than the leader's newest, the leader
    // compacted past it, and n4 needed a snapshot after all.
    wait_until("the last snapshots cut and uploaded", || {
        (1..=3).all(|id| {
            let s = g.status(id);
            let snap = s.management.snapshot.as_ref().map(|f| f.offset.get());
            snap.is_some_and(|o| o + 100 > s.next_offset.get())
                && s.store.unwrap().uploaded_index == snap
        })
    });
    let added = add(&g, "n4");
    assert!(matches!(added, Changed::Done { id: 4, .. }), "{added:?}");
    let dir4 = g.dirs[0].parent().unwrap().join("n4");
    g.join(4, &dir4);
    let s = g.converge(&[1, 2, 3, 4]);
    let n4 = &s[3];
    assert_eq!(
        n4.management.transfers.started, 0,
        "n4 loaded the store's snapshot: the leader sent none: {n4:?}"
    );
    assert!(
        n4.first_index > 1,
        "n4 started from a snapshot, not from the log's start: {n4:?}"
    );

    // A directory made by `restore` from the store: a new member that continues from
    // the leader's log.
    let dir5 = g.dirs[0].parent().unwrap().join("n5");
    let local = flintlog::store::LocalStore::open(&root).unwrap();
    let r = flintlog::store::restore(&local, &flintlog::fs::RealFs, &dir5, None, None).unwrap();
    assert!(
        r.manifest.files[0].name.ends_with(".rsnap"),
        "{:?}",
        r.manifest
    );
    let added = add(&g, "n5");
    assert!(matches!(added, Changed::Done { id: 5, .. }), "{added:?}");
    g.join(5, &dir5);
    let s = g.converge(&[1, 2, 3, 4, 5]);
    assert_eq!(s[4].management.transfers.started, 0, "{:?}", s[4]);

    // The store down: a new member refuses to start, saying why.
    std::fs::rename(&root, root.with_extension("away")).unwrap();
    std::fs::write(&root, b"not a directory").unwrap();
    write_batch(&g, 1, 450, 50);
    let added = add(&g, "n6");
    assert!(matches!(added, Changed::Done { id: 6, .. }), "{added:?}");
    let dir6 = g.dirs[0].parent().unwrap().join("n6");
    let refused = g.try_join(6, &dir6).unwrap_err().to_string();
    assert!(
        refused.contains("the snapshot store does not work"),
        "{refused}"
    );
    // A store that works but holds no chain of the group: the new member falls back
    // to the leader's snapshot.
    std::fs::remove_file(&root).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    g.join(6, &dir6);
    let s = g.converge(&[1, 2, 3, 4, 5, 6]);
    assert_eq!(s[5].management.transfers.completed, 1, "{:?}", s[5]);
}

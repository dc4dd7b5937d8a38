//! Raft's log on the simulated disk: entries, suffix truncation and the hard state,
//! with a power cut at every storage operation of a workload, in every crash mode.

use std::collections::BTreeSet;
use std::sync::Arc;

use flintlog::consensus::LogStore;
use flintlog::fs::FileSystem;
use flintlog::fs::sim::{CrashMode, Faults, SimFs};
use flintlog::raftlog::RaftLog;
use flintlog::wal::LogOptions;
use raft::Storage;
use raft::eraftpb::{Entry, HardState};

const DIR: &str = "/sim/n1";
const VOTERS: [u64; 3] = [1, 2, 3];

fn options() -> LogOptions {
    LogOptions {
        dir: DIR.into(),
        // A few entries per segment, so that truncation crosses segments.
        segment_bytes_max: 3 * 4096,
        preallocate_bytes_max: 3 * 4096,
        prefill: false,
    }
}

fn open(fs: &SimFs) -> flintlog::Result<RaftLog> {
    fs.create_dir_all(std::path::Path::new(DIR)).unwrap();
    RaftLog::open(Arc::new(fs.clone()), &options(), 1, &VOTERS)
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("entry {index} of term {term}").into_bytes().into(),
        ..Entry::default()
    }
}

/// The log as a list of (index, term, data).
fn contents(log: &RaftLog) -> Vec<(u64, u64, Vec<u8>)> {
    let last = log.last_index();
    if last == 0 {
        return Vec::new();
    }
    log.entries(1, last + 1, None, raft::GetEntriesContext::empty(false))
        .unwrap()
        .into_iter()
        .map(|e| (e.index, e.term, e.data.to_vec()))
        .collect()
}

/// What the workload made durable, and what it ever wrote.
#[derive(Default, Clone)]
struct Oracle {
    /// The log and hard state at the last sync that returned.
    durable: Vec<(u64, u64, Vec<u8>)>,
    durable_state: HardState,
    /// The lowest index a truncation after that sync started at.
    truncated_from: Option<u64>,
    /// Every (index, term, data) ever written.
    written: BTreeSet<(u64, u64, Vec<u8>)>,
}

/// Term 1: entries 1-12, a sync every 4; term 2 (a new leader): entries from 7 replace
/// the old suffix (across segments), then 7-15; term 3: from 14. The vote changes with
/// each term. Stops at the first error.
fn workload(fs: &SimFs) -> Oracle {
    let mut o = Oracle::default();
    let Ok(mut log) = open(fs) else {
        return o;
    };
    let write = |log: &mut RaftLog, o: &mut Oracle, entries: Vec<Entry>| -> bool {
        let first = entries[0].index;
        if first <= log.last_index() {
            o.truncated_from = Some(o.truncated_from.map_or(first, |t| t.min(first)));
        }
        for e in &entries {
            o.written.insert((e.index, e.term, e.data.to_vec()));
        }
        log.write_entries(&entries).is_ok()
    };
    let sync = |log: &mut RaftLog, o: &mut Oracle| -> bool {
        if log.sync().is_err() {
            return false;
        }
        o.durable = contents(log);
        o.durable_state = log.hard_state().clone();
        o.truncated_from = None;
        true
    };
    let mut hs = HardState {
        term: 1,
        vote: 1,
        commit: 0,
        ..HardState::default()
    };
    if log.write_hard_state(&hs).is_err() {
        return o;
    }
    for chunk in (1..=12u64).collect::<Vec<_>>().chunks(4) {
        if !write(
            &mut log,
            &mut o,
            chunk.iter().map(|&i| entry(i, 1)).collect(),
        ) {
            return o;
        }
        // Raft never truncates a committed entry: commit stays below the truncations.
        hs.commit = chunk[0].min(5);
        if log.write_hard_state(&hs).is_err() || !sync(&mut log, &mut o) {
            return o;
        }
    }
    for (term, from, to) in [(2, 7, 15), (3, 14, 16)] {
        hs = HardState {
            term,
            vote: term,
            commit: hs.commit,
            ..HardState::default()
        };
        if log.write_hard_state(&hs).is_err() || !sync(&mut log, &mut o) {
            return o;
        }
        if !write(
            &mut log,
            &mut o,
            (from..=to).map(|i| entry(i, term)).collect(),
        ) || !sync(&mut log, &mut o)
        {
            return o;
        }
    }
    o
}

/// Recovers `disk` and checks it against the oracle.
fn check(disk: &SimFs, o: &Oracle) -> Result<(), String> {
    let log = open(disk).map_err(|e| format!("recovery refused: {e}"))?;
    let got = contents(&log);
    for (k, e) in got.iter().enumerate() {
        if e.0 != k as u64 + 1 {
            return Err(format!("entry {} at position {k}", e.0));
        }
        if !o.written.contains(e) {
            return Err(format!("entry {} of term {} was never written", e.0, e.1));
        }
    }
    // Log matching: an entry of a new leader's term follows exactly what that leader
    // sent before it (its whole write, from the first index), never a stale suffix.
    for e in &got {
        let first_of_term = o.written.iter().find(|w| w.1 == e.1).map_or(1, |w| w.0);
        if let Some(stale) = got[first_of_term as usize - 1..e.0 as usize]
            .iter()
            .find(|x| x.1 != e.1)
        {
            return Err(format!(
                "entry {} of term {} follows a stale entry {} of term {}",
                e.0, e.1, stale.0, stale.1
            ));
        }
    }
    // Every durable entry is there, but those a later truncation was removing.
    let keep = o.truncated_from.unwrap_or(u64::MAX);
    for e in o.durable.iter().filter(|e| e.0 < keep) {
        if got.get(e.0 as usize - 1) != Some(e) {
            return Err(format!("durable entry {} of term {} lost", e.0, e.1));
        }
    }
    let hs = log.hard_state();
    if hs.term < o.durable_state.term
        || (hs.term == o.durable_state.term && hs.vote != o.durable_state.vote)
    {
        return Err(format!(
            "hard state went back: term {} vote {}, durable was term {} vote {}",
            hs.term, hs.vote, o.durable_state.term, o.durable_state.vote
        ));
    }
    Ok(())
}

#[test]
fn entries_truncation_and_hard_state_survive_a_restart() {
    let fs = SimFs::new();
    let o = workload(&fs);
    assert_eq!(o.durable.len(), 16);
    assert_eq!(o.durable[6].1, 2, "entry 7 replaced in term 2");
    assert_eq!(o.durable[13].1, 3, "entry 14 replaced in term 3");
    let log = open(&fs.clean_copy()).unwrap();
    assert_eq!(contents(&log), o.durable);
    assert_eq!(log.hard_state().term, 3);
    assert_eq!(log.term(6).unwrap(), 1);
    assert_eq!(log.term(13).unwrap(), 2);
    assert_eq!(log.term(16).unwrap(), 3);
}

#[test]
fn a_power_cut_at_every_operation_keeps_what_was_durable() {
    let clean = SimFs::new();
    workload(&clean);
    sweep("Raft log", clean.ops(), 2, workload, check);
}

/// Runs `workload` with a power cut at each of its `ops` operations, recovers every
/// crash state (every mode, `seeds` seeds), checks each, and fails on any failure.
fn sweep<O>(
    what: &str,
    ops: u64,
    seeds: u64,
    workload: fn(&SimFs) -> O,
    check: fn(&SimFs, &O) -> Result<(), String>,
) {
    let (mut states, mut failures) = (0, Vec::new());
    for k in 0..=ops {
        let (n, failed) = cut_with(k, seeds, workload, check);
        states += n;
        failures.extend(failed.into_iter().map(|f| format!("op={k} {f}")));
    }
    println!(
        "{what}: {ops} operations, {states} crash states, {} failures",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures, first: {}",
        failures.len(),
        failures[0]
    );
}

#[test]
fn a_single_node_directory_is_refused_with_what_to_do() {
    let fs = SimFs::new();
    let node =
        flintlog::Node::open_with_fs(flintlog::Config::new(DIR), Arc::new(fs.clone())).unwrap();
    node.appender().append(b"set a=1".to_vec()).unwrap();
    node.shutdown().unwrap();
    let err = open(&fs).err().expect("refused").to_string();
    assert!(
        err.contains("single node's log") && err.contains("new directory"),
        "{err}"
    );
}

#[test]
fn a_vote_alone_is_made_durable_by_sync() {
    // A node that learned of term 3 from a message (no vote yet) and then votes in it:
    // only the vote changes, and it must survive a power cut once synced.
    let fs = SimFs::new();
    let mut log = open(&fs).unwrap();
    let hs = |vote| HardState {
        term: 3,
        vote,
        commit: 0,
        ..HardState::default()
    };
    log.write_hard_state(&hs(0)).unwrap();
    log.sync().unwrap();
    log.write_hard_state(&hs(2)).unwrap();
    log.sync().unwrap();
    let after = open(&fs.crash(0, CrashMode::DropAll)).unwrap();
    assert_eq!((after.hard_state().term, after.hard_state().vote), (3, 2));
}

/// Runs the workload with a power cut at operation `k`, recovers every crash state
/// (every mode, `seeds` seeds) and checks it: how many, and what failed.
fn cut_at(k: u64, seeds: u64) -> (u64, Vec<String>) {
    cut_with(k, seeds, workload, check)
}

/// [`cut_at`] for any workload and its check.
fn cut_with<O>(
    k: u64,
    seeds: u64,
    workload: fn(&SimFs) -> O,
    check: fn(&SimFs, &O) -> Result<(), String>,
) -> (u64, Vec<String>) {
    let fs = SimFs::new();
    fs.set_faults(Faults {
        crash_at: Some(k),
        ..Faults::default()
    });
    let o = workload(&fs);
    let (mut states, mut failures) = (0, Vec::new());
    for mode in CrashMode::ALL {
        for seed in 0..seeds {
            states += 1;
            if let Err(why) = check(&fs.crash(seed, mode), &o) {
                failures.push(format!("mode={mode:?} seed={seed}: {why}"));
            }
        }
    }
    (states, failures)
}

/// Crashes the workload at operation `k` and checks every crash state.
fn crash_window(window: &str, k: u64) {
    if let Some(first) = cut_at(k, 4).1.first() {
        panic!("window {window:?}, {first}");
    }
}

#[test]
fn crash_windows_of_a_suffix_truncation_and_a_hard_state_write() {
    let clean = SimFs::new();
    workload(&clean);
    let t = clean.trace();
    let ends =
        |r: &flintlog::fs::sim::OpRecord, suffix: &str| r.path.to_string_lossy().ends_with(suffix);
    // The first truncation crosses segments: unlinks, the directory sync, the cut
    // (set_len), the re-extension, the sync.
    let unlink = t
        .iter()
        .position(|r| r.kind == "unlink" && ends(r, ".log"))
        .expect("a segment deleted by a truncation");
    let cut = (unlink..t.len())
        .find(|&i| t[i].kind == "set_len" && ends(&t[i], ".log"))
        .expect("the cut");
    assert!(
        t[unlink..cut].iter().any(|r| r.kind == "fsync(dir)"),
        "the deletions are synced before the cut"
    );
    crash_window("after deleting a later segment", t[unlink + 1].op);
    crash_window("at the cut", t[cut].op);
    crash_window("after the cut, before its sync", t[cut + 1].op);
    // A hard state written (the first rename creates the file at open; the second
    // records term 1's vote): temp file, sync, rename, directory sync.
    let rename = (0..t.len())
        .filter(|&i| {
            t[i].kind == "rename"
                && t[i]
                    .to
                    .as_deref()
                    .is_some_and(|to| to.ends_with("raft.state"))
        })
        .nth(1)
        .expect("raft.state rewritten");
    crash_window("before raft.state's rename", t[rename].op);
    crash_window(
        "after raft.state's rename, before the directory sync",
        t[rename + 1].op,
    );
}

#[test]
fn verify_knows_a_raft_log_and_checks_its_records() {
    let fs = SimFs::new();
    let o = workload(&fs);
    let ex = flintlog::inspect::examine(&fs, std::path::Path::new(DIR));
    assert!(ex.raft_log);
    assert!(ex.refusal.is_none(), "{:?}", ex.refusal);
    assert_eq!(ex.next_offset, o.durable.len() as u64);
    assert_eq!(ex.keys, 0, "Raft entries are not replayed as commands");
    assert!(flintlog::inspect::verify_report(&ex).contains("Raft log"));
}

/// What the install workload made durable.
#[derive(Default)]
struct Installed {
    /// The old log: entries 1 to this, of term 1.
    old_last: u64,
    /// The snapshot's index (its term is 2).
    at: u64,
    /// The old log was synced.
    old_synced: bool,
    /// `install` returned: the log continues from the snapshot at 40.
    done: bool,
    /// Entries after the snapshot that a sync made durable.
    synced_after: u64,
}

/// A lagging follower: entries 1-10 of term 1, durable; then the log is replaced by a
/// snapshot at index 40 of term 2 (whose file the caller made durable first), then
/// entries 41-45 of term 2 are written, synced after 43 and 45. Stops at the first
/// error.
fn install_workload(fs: &SimFs) -> Installed {
    install_over(fs, 10, 40)
}

/// A follower whose log runs past the snapshot with entries of an old term that the
/// group never committed (entries 1-25 of term 1; the snapshot at 15, term 2): the
/// whole suffix goes, and entries 16-20 of term 2 follow the snapshot.
fn install_over_a_conflicting_suffix(fs: &SimFs) -> Installed {
    install_over(fs, 25, 15)
}

/// Entries 1 to `old_last` of term 1, synced; the snapshot at `at` (term 2) installed;
/// then five entries of term 2, synced after the third and the fifth.
fn install_over(fs: &SimFs, old_last: u64, at: u64) -> Installed {
    let mut o = Installed {
        old_last,
        at,
        ..Installed::default()
    };
    let Ok(mut log) = open(fs) else { return o };
    if log
        .write_entries(&(1..=old_last).map(|i| entry(i, 1)).collect::<Vec<_>>())
        .is_err()
        || log.sync().is_err()
    {
        return o;
    }
    o.old_synced = true;
    if log.install(at, 2).is_err() {
        return o;
    }
    o.done = true;
    for (from, to) in [(at + 1, at + 3), (at + 4, at + 5)] {
        if log
            .write_entries(&(from..=to).map(|i| entry(i, 2)).collect::<Vec<_>>())
            .is_err()
            || log.sync().is_err()
        {
            return o;
        }
        o.synced_after = to - at;
    }
    o
}

fn check_install(disk: &SimFs, o: &Installed) -> Result<(), String> {
    let log = open(disk).map_err(|e| format!("recovery refused: {e}"))?;
    let first = log.first_index();
    if first == 1 {
        // The install had not begun durably: the old log, whole once it was synced.
        if o.done {
            return Err("the install returned, but the old log came back".into());
        }
        let old: Vec<_> = (1..=o.old_last)
            .map(|i| (i, 1, entry(i, 1).data.to_vec()))
            .collect();
        let got = contents(&log);
        if got.len() > old.len() || got[..] != old[..got.len()] || (o.old_synced && got != old) {
            return Err(format!("the old log came back changed: {got:?}"));
        }
        return Ok(());
    }
    let at = o.at;
    if first != at + 1 || log.term(at) != Ok(2) {
        return Err(format!(
            "first index {first}, term of {at} {:?}",
            log.term(at)
        ));
    }
    let last = log.last_index();
    if last < at + o.synced_after {
        return Err(format!("synced entries lost: the log ends at {last}"));
    }
    if last > at {
        let got = log
            .entries(
                at + 1,
                last + 1,
                None,
                raft::GetEntriesContext::empty(false),
            )
            .map_err(|e| e.to_string())?;
        for e in got {
            if e.term != 2 || e.data != entry(e.index, 2).data {
                return Err(format!("entry {} is not what was written", e.index));
            }
        }
    }
    Ok(())
}

#[test]
fn replacing_the_log_by_a_snapshot_survives_a_power_cut_at_every_operation() {
    let clean = SimFs::new();
    let o = install_workload(&clean);
    assert!(o.done && o.synced_after == 5);
    let log = open(&clean.clean_copy()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (41, 45));
    sweep(
        "Raft log install",
        clean.ops(),
        3,
        install_workload,
        check_install,
    );
}

/// hashicorp/raft PR #704, openraft PR #559: a snapshot installed on a follower whose
/// log holds a conflicting suffix past the snapshot's index replaces that suffix too,
/// and a power cut at any point of the install leaves either the old log or the new
/// one, never the snapshot followed by entries of the old term.
#[test]
fn a_snapshot_over_a_conflicting_suffix_replaces_it_across_a_power_cut_at_every_operation() {
    let clean = SimFs::new();
    let o = install_over_a_conflicting_suffix(&clean);
    assert!(o.done && o.synced_after == 5);
    let log = open(&clean.clean_copy()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (16, 20));
    assert_eq!(log.term(20), Ok(2));
    sweep(
        "Raft log install over a conflicting suffix",
        clean.ops(),
        3,
        install_over_a_conflicting_suffix,
        check_install,
    );
}

/// `raft.state` written before it recorded the node's identity (version 1: hard state
/// and voters only) opens as the founder it names, and is rewritten with the Raft id
/// and an incarnation; a directory is then refused to another member, or to a node
/// that joins, and its identity stays the same across opens.
#[test]
fn a_version_1_state_is_upgraded_and_the_identity_then_holds() {
    use flintlog::raftlog::read_identity;
    let fs = SimFs::new();
    fs.create_dir_all(std::path::Path::new(DIR)).unwrap();
    // Version 1: magic, version, term, vote, commit, n, voters, crc32c.
    let mut v1 = b"FLNTRAFT".to_vec();
    v1.extend_from_slice(&1u32.to_le_bytes());
    for v in [4u64, 2, 0] {
        v1.extend_from_slice(&v.to_le_bytes());
    }
    v1.extend_from_slice(&3u32.to_le_bytes());
    for v in VOTERS {
        v1.extend_from_slice(&v.to_le_bytes());
    }
    let crc = crc32c::crc32c(&v1);
    v1.extend_from_slice(&crc.to_le_bytes());
    flintlog::fs::create_durably(&fs, std::path::Path::new(DIR), "raft.state", |f| {
        f.write_all_at(&v1, 0)
    })
    .unwrap();
    let log = open(&fs).unwrap();
    assert_eq!((log.hard_state().term, log.hard_state().vote), (4, 2));
    let who = log.identity().clone();
    assert_eq!((who.id, who.founders.as_slice()), (1, &VOTERS[..]));
    assert_ne!(who.incarnation, 0);
    drop(log);
    let dir = std::path::Path::new(DIR);
    assert_eq!(read_identity(&fs, dir).unwrap(), Some(who.clone()));
    // Another member, or a joining node, is refused this directory.
    assert!(RaftLog::open(Arc::new(fs.clone()), &options(), 2, &VOTERS).is_err());
    assert!(RaftLog::open(Arc::new(fs.clone()), &options(), 1, &[]).is_err());
    // The same member again: the same identity (the incarnation is not drawn again).
    let log = open(&fs).unwrap();
    assert_eq!(log.identity(), &who);
}

/// A suffix replaced after the segment size was made smaller (as `wal_segment_config`
/// does at run time): the segment cut grows back to the length its header says it was
/// named with, not to today's smaller size, or the next start would take it for a
/// segment cut short (damage).
#[test]
fn a_suffix_replaced_after_the_segment_size_shrank_leaves_a_log_that_opens() {
    let fs = SimFs::new();
    let mut log = open(&fs).unwrap();
    log.write_entries(&(1..=12).map(|i| entry(i, 1)).collect::<Vec<_>>())
        .unwrap();
    log.sync().unwrap();
    drop(log);
    let small = LogOptions {
        segment_bytes_max: 10000,
        preallocate_bytes_max: 10000,
        ..options()
    };
    let mut log = RaftLog::open(Arc::new(fs.clone()), &small, 1, &VOTERS).unwrap();
    log.write_entries(&(7..=9).map(|i| entry(i, 2)).collect::<Vec<_>>())
        .unwrap();
    log.sync().unwrap();
    let expected = contents(&log);
    drop(log);
    let log = open(&fs.clean_copy()).unwrap_or_else(|e| panic!("the log does not open: {e}"));
    assert_eq!(contents(&log), expected);
    assert_eq!(log.term(9).unwrap(), 2);
}

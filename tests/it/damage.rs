//! Damaged media, separate from crashes: a flipped bit or a zeroed block in data that
//! was synced and acknowledged. A power cut can only tear the last unsynced write, so
//! damage with a later synced write after it must refuse to start (and `verify` must
//! call it damage), never be cut off as a torn tail.

use std::path::Path;
use std::sync::Arc;

use flintlog::fs::sim::SimFs;
use flintlog::wal::BATCH_ALIGN_BYTES;
use flintlog::{Config, Node, inspect};

const DIR: &str = "/sim/n1";
const SEGMENT: &str = "/sim/n1/00000000000000000000.log";
const ENTRIES: u64 = 20;

fn config() -> Config {
    let mut c = Config::new(DIR);
    // One segment holds every entry: the damage is in the active segment.
    c.segment_bytes_max = 64 * BATCH_ALIGN_BYTES;
    c.segment_prefill = false;
    c
}

/// A clean disk with `ENTRIES` acknowledged appends, each its own group commit (so
/// entry `i` is the only record of the block `i + 1`).
fn written() -> SimFs {
    let fs = SimFs::new();
    let node = Node::open_with_fs(config(), Arc::new(fs.clone())).unwrap();
    for i in 0..ENTRIES {
        let offset = node.appender().append(format!("set k{i}=v{i}")).unwrap();
        assert_eq!(offset, i);
    }
    node.shutdown().unwrap();
    fs.clean_copy()
}

/// The byte where the record of `offset` starts, checked against its header.
fn record_at(bytes: &[u8], offset: u64) -> usize {
    let pos = ((offset + 1) * BATCH_ALIGN_BYTES) as usize;
    let stored = u64::from_le_bytes(bytes[pos + 8..pos + 16].try_into().unwrap());
    assert_eq!(
        stored, offset,
        "record layout changed: offset {offset} not at {pos}"
    );
    pos
}

fn damaged(change: impl Fn(&mut Vec<u8>)) -> SimFs {
    let disk = written();
    let mut bytes = disk.contents()[Path::new(SEGMENT)].clone();
    change(&mut bytes);
    disk.overwrite(Path::new(SEGMENT), bytes);
    disk
}

/// Opening must refuse, naming the segment and the damaged offset; `verify` agrees.
fn assert_refused(disk: &SimFs, offset: u64) {
    let err = match Node::open_with_fs(config(), Arc::new(disk.clone())) {
        Ok(node) => {
            let next = node.appender().status().unwrap().next_offset;
            node.shutdown().unwrap();
            panic!("damage at offset {offset} was taken for a torn tail: log now ends at {next}");
        }
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("00000000000000000000.log")
            && err.contains(&format!("(offset {offset})"))
            && err.contains("damage"),
        "{err}"
    );
    let ex = inspect::examine(disk, Path::new(DIR));
    assert!(ex.damaged(), "verify must report the damage");
    let report = inspect::verify_report(&ex);
    assert!(report.contains("00000000000000000000.log"), "{report}");
}

#[test]
fn a_flipped_bit_in_a_synced_record_of_the_active_segment_refuses_to_start() {
    for offset in [0, 1, 7, ENTRIES - 2] {
        for (byte, bit) in [(0, 0), (5, 3), (12, 7), (20, 1)] {
            let disk = damaged(|b| {
                let pos = record_at(b, offset);
                b[pos + byte] ^= 1 << bit;
            });
            assert_refused(&disk, offset);
        }
    }
}

#[test]
fn a_zeroed_block_of_synced_data_in_the_active_segment_refuses_to_start() {
    for offset in [0, 3, ENTRIES - 2] {
        let disk = damaged(|b| {
            let pos = record_at(b, offset);
            b[pos..pos + BATCH_ALIGN_BYTES as usize].fill(0);
        });
        assert_refused(&disk, offset);
    }
}

#[test]
fn a_zeroed_sector_inside_a_record_refuses_to_start() {
    let disk = damaged(|b| {
        let pos = record_at(b, 4);
        b[pos..pos + 512].fill(0);
    });
    assert_refused(&disk, 4);
}

/// The limit of what can be told apart: the newest write has nothing written after it,
/// so damage to it looks exactly like a write torn by a power cut. Recovery cuts it
/// and keeps the bytes in a `.broken` file; RELIABILITY.md states this bound (the
/// entries of one group commit).
#[test]
fn damage_to_the_newest_write_is_indistinguishable_from_a_torn_one() {
    let last = ENTRIES - 1;
    let disk = damaged(|b| {
        let pos = record_at(b, last);
        b[pos + 20] ^= 0x01;
    });
    let node = Node::open_with_fs(config(), Arc::new(disk.clone())).unwrap();
    let status = node.appender().status().unwrap();
    assert_eq!(status.next_offset, last);
    assert!(status.recovery.broken_file.is_some());
    node.shutdown().unwrap();
}

/// A kill -9 leaves writes in the page cache that were never synced; the next run reads
/// them as valid entries. Its first write must not claim "everything before me is
/// synced" until that is true, or a power cut that keeps the new write and loses the
/// old one would look like damage and refuse to start. So the node syncs the active
/// segment when it opens: no crash state after that refuses.
#[test]
fn a_restart_after_kill_then_a_power_cut_never_looks_like_damage() {
    let mut c = config();
    c.fsync = flintlog::FsyncPolicy::Never;
    let fs = SimFs::new();
    let node = Node::open_with_fs(c.clone(), Arc::new(fs.clone())).unwrap();
    node.appender().append("set a=1").unwrap();
    node.appender().append("set b=2").unwrap();
    // Killed: the node never gets to sync; the page cache keeps its writes.
    let killed = fs.clone();
    std::mem::forget(node);
    let fs = killed.after_kill();
    let node = Node::open_with_fs(config(), Arc::new(fs.clone())).unwrap();
    assert_eq!(node.appender().status().unwrap().next_offset, 2);
    // A power cut between the next write and its sync (the write is the next storage
    // operation, the sync the one after).
    fs.set_faults(flintlog::fs::sim::Faults {
        crash_at: Some(fs.ops() + 1),
        ..Default::default()
    });
    assert!(node.appender().append("set c=3").is_err());
    let mut refused = Vec::new();
    for mode in flintlog::fs::sim::CrashMode::ALL {
        for seed in 0..20 {
            let disk = fs.crash(seed, mode);
            if let Err(e) = Node::open_with_fs(config(), Arc::new(disk)) {
                refused.push(format!("{mode:?} seed {seed}: {e}"));
            }
        }
    }
    assert!(refused.is_empty(), "{refused:#?}");
}

/// The active segment cut short in the middle (a copy that stopped early, a
/// truncation by hand, a filesystem that lost the end of a file): the cut looks like
/// the end of the log or a torn write, but a crash never makes a named segment
/// shorter than it was preallocated to, so recovery refuses instead of cutting the
/// acknowledged entries after it and reusing their offsets.
#[test]
fn an_active_segment_cut_short_refuses_to_start() {
    let full = written().contents()[Path::new(SEGMENT)].len();
    for offset in [1, 7, ENTRIES - 2] {
        // At a record's first byte (the log seems to end there) and inside it (a torn
        // write, it seems).
        for inside in [0, 20] {
            let disk = damaged(|b| {
                let pos = record_at(b, offset);
                b.truncate(pos + inside);
            });
            let err = match Node::open_with_fs(config(), Arc::new(disk.clone())) {
                Ok(node) => {
                    let next = node.appender().status().unwrap().next_offset;
                    node.shutdown().unwrap();
                    panic!(
                        "a segment cut at offset {offset} (+{inside} bytes) was taken for the \
                         end of the log: it now ends at {next}, {ENTRIES} were acknowledged"
                    );
                }
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains("00000000000000000000.log")
                    && err.contains("cut short")
                    && err.contains(&format!("{full} bytes")),
                "{err}"
            );
            let ex = inspect::examine(&disk, Path::new(DIR));
            assert!(ex.damaged(), "verify must report the cut");
            let report = inspect::verify_report(&ex);
            assert!(
                report.contains("DAMAGED") && report.contains("00000000000000000000.log"),
                "{report}"
            );
        }
    }
}

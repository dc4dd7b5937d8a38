//! The names of a node directory's files: the one place that makes and parses them.
//!
//! ```text
//! <node dir>/
//!   LOCK                              flock'd by the running node; holds its pid
//!   raft.state, raft.install          a cluster node's hard state; its install marker
//!   raft.group                        the id of the group a served node belongs to
//!   ship.id                           the history its shipped log belongs to (--ship-log)
//!   log.meta                          the first live offset after compaction
//!   00000000000000000000.log          a segment: entries from offset 0
//!   00000000000000001000.snap         a full snapshot covering [0, 1000)
//!   00000000000000001500.delta        a delta on the chain, covering [0, 1500)
//!   00000000000000002000.rsnap        a cluster node's snapshot: its state machine at
//!                                     Raft index 2000 (entries [0, 2000) of its log)
//!   00000000000000002500.rdelta       a cluster node's delta on its chain, at index 2500
//!   <index>.rsnap.<crc>.part          a cluster snapshot being received (kept: resumed)
//!   *.tmp                             an interrupted write (spare.log.tmp: the
//!                                     next segment being prepared); removed at open
//!   *.broken                          bytes moved aside by recovery; left alone
//!   <segment>.cut                     the segment is being cut shorter and grown back
//!                                     (a torn tail, a replaced suffix); removed after
//! ```
//!
//! Offsets are written in 20 digits, so names sort like offsets.

/// Name of the directory lock file.
pub const LOCK: &str = "LOCK";
/// Name of the log's metadata file.
pub const META: &str = "log.meta";
/// Name of a cluster node's Raft state: the group's voters and the hard state (term,
/// vote, commit). Its presence marks the directory's log as a Raft log.
pub const RAFT_STATE: &str = "raft.state";
/// Name of a cluster node's install marker: present while the log is being replaced by
/// a snapshot received from the leader (recovery finishes the replacement).
pub const RAFT_INSTALL: &str = "raft.install";
/// Name of the file that pins a node served over the network to its group: the
/// group's id, checked against every start's flags and every peer's hello.
pub const RAFT_GROUP: &str = "raft.group";
/// Name of the file holding the directory's shipping history id (`--ship-log`: the
/// line of entries its shipped log objects belong to; see `store::shipped`).
pub const SHIP_ID: &str = "ship.id";
/// Name of the next segment while it is prepared, zero-filled, in advance.
pub const SPARE_SEGMENT: &str = "spare.log.tmp";
/// Suffix of segment files.
pub const SEGMENT_SUFFIX: &str = ".log";
/// Suffix of full snapshot files.
pub const SNAPSHOT_SUFFIX: &str = ".snap";
/// Suffix of a cluster node's snapshot files (the replicated state machine at a Raft
/// index).
pub const RAFT_SNAPSHOT_SUFFIX: &str = ".rsnap";
/// Suffix of a cluster node's deltas (what changed since the cluster snapshot or
/// delta before it).
pub const RAFT_DELTA_SUFFIX: &str = ".rdelta";
/// Suffix of delta files (incremental snapshots).
pub const DELTA_SUFFIX: &str = ".delta";
/// Suffix of a file being written; recovery removes every such file.
pub const TEMP_SUFFIX: &str = ".tmp";
/// Suffix of bytes recovery moved aside.
pub const BROKEN_SUFFIX: &str = ".broken";
/// Suffix of the marker of a segment being cut shorter and grown back.
pub const CUT_SUFFIX: &str = ".cut";

fn offset_name(offset: u64, suffix: &str) -> String {
    format!("{offset:020}{suffix}")
}

/// Parses `<20 digits><suffix>`.
fn parse_offset_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The file name of the segment starting at `start`.
pub fn segment(start: u64) -> String {
    offset_name(start, SEGMENT_SUFFIX)
}

/// The start offset a segment file name stands for, if it is one.
pub fn parse_segment(name: &str) -> Option<u64> {
    parse_offset_name(name, SEGMENT_SUFFIX)
}

/// The file name of the full snapshot covering `[0, offset)`.
pub fn snapshot(offset: u64) -> String {
    offset_name(offset, SNAPSHOT_SUFFIX)
}

/// The file name of the delta covering `[0, offset)`.
pub fn delta(offset: u64) -> String {
    offset_name(offset, DELTA_SUFFIX)
}

/// The offset a snapshot or delta file name stands for, if it is one.
pub fn parse_snapshot(name: &str) -> Option<u64> {
    parse_offset_name(name, SNAPSHOT_SUFFIX).or_else(|| parse_offset_name(name, DELTA_SUFFIX))
}

/// The file name of a cluster node's snapshot at Raft index `index`.
pub fn raft_snapshot(index: u64) -> String {
    offset_name(index, RAFT_SNAPSHOT_SUFFIX)
}

/// The file name of a cluster node's delta at Raft index `index`.
pub fn raft_delta(index: u64) -> String {
    offset_name(index, RAFT_DELTA_SUFFIX)
}

/// The Raft index a cluster snapshot's or delta's file name stands for, if it is one.
pub fn parse_raft_snapshot(name: &str) -> Option<u64> {
    parse_offset_name(name, RAFT_SNAPSHOT_SUFFIX)
        .or_else(|| parse_offset_name(name, RAFT_DELTA_SUFFIX))
}

/// Whether a file name (or path) is a cluster delta's.
pub fn is_raft_delta(name: &str) -> bool {
    name.ends_with(RAFT_DELTA_SUFFIX)
}

/// Suffix of a snapshot being received from another member.
pub const PART_SUFFIX: &str = ".part";

/// Where a member keeps the part of snapshot `file` (body checksum `checksum`) it
/// received so far.
pub fn snapshot_part(file: &str, checksum: u32) -> String {
    format!("{file}.{checksum:08x}{PART_SUFFIX}")
}

/// Whether a snapshot file name is a delta's.
pub fn is_delta(name: &str) -> bool {
    name.ends_with(DELTA_SUFFIX) && !is_raft_delta(name)
}

/// The temp name a file is written under before its rename.
pub fn temp(name: &str) -> String {
    format!("{name}{TEMP_SUFFIX}")
}

/// The temp name a retired snapshot is renamed to before it is freed.
pub fn retired(name: &str) -> String {
    format!("{name}.retired{TEMP_SUFFIX}")
}

/// Where a damaged snapshot is moved aside.
pub fn broken_snapshot(name: &str) -> String {
    format!("{name}{BROKEN_SUFFIX}")
}

/// The marker present, durably, while segment `name` is cut shorter and grown back to
/// its length: the one time a crash can leave the last segment shorter than the length
/// it was named with (`wal::segment`).
pub fn cut_marker(name: &str) -> String {
    format!("{name}{CUT_SUFFIX}")
}

/// Where the torn tail of segment `name`, cut from byte `from`, is kept.
pub fn broken_tail(name: &str, from: u64) -> String {
    format!("{name}.{from}{BROKEN_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_like_offsets_and_parse_back() {
        assert_eq!(segment(0), "00000000000000000000.log");
        assert_eq!(segment(u64::MAX), "18446744073709551615.log");
        assert!(segment(9) < segment(10));
        assert_eq!(parse_segment(&segment(123)), Some(123));
        assert_eq!(parse_snapshot(&snapshot(7)), Some(7));
        assert_eq!(parse_snapshot(&delta(8)), Some(8));
        assert!(is_delta(&delta(8)) && !is_delta(&snapshot(8)));
        for bad in [
            "0.log",
            "0000000000000000000a.log",
            "00000000000000000000.snap",
            "99999999999999999999.log",
        ] {
            assert_eq!(parse_segment(bad), None, "{bad}");
        }
        assert_eq!(parse_snapshot("00000000000000000001.log"), None);
        assert_eq!(parse_raft_snapshot(&raft_snapshot(42)), Some(42));
        assert_eq!(parse_snapshot(&raft_snapshot(42)), None);
        assert_eq!(parse_raft_snapshot(&raft_delta(43)), Some(43));
        assert!(is_raft_delta(&raft_delta(43)) && !is_raft_delta(&raft_snapshot(42)));
        assert_eq!(parse_snapshot(&raft_delta(43)), None);
    }

    #[test]
    fn temp_and_broken_names_are_recognised_by_their_suffix() {
        for t in [
            temp(&snapshot(5)),
            retired(&snapshot(5)),
            SPARE_SEGMENT.into(),
        ] {
            assert!(t.ends_with(TEMP_SUFFIX), "{t}");
        }
        for b in [broken_snapshot(&delta(5)), broken_tail(&segment(0), 4096)] {
            assert!(b.ends_with(BROKEN_SUFFIX), "{b}");
        }
    }
}

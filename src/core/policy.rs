//! Log-management policy: when to cut a snapshot on its own, how far to compact behind
//! it, how many snapshots to keep. Every decision here is a pure function of the
//! policy, the node's progress and a clock reading passed in, so that it is tested
//! directly; the appender only gathers the inputs and carries out the answer.

use crate::core::position::Offset;
use crate::error::{Error, Result};

/// The policy an operator reads and changes (`Config::policy`, CLI flags, the
/// `wal_policy` request). A threshold of 0 turns its trigger off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Cut a snapshot once this many entries were appended since the last cut.
    pub snapshot_entries: u64,
    /// Cut a snapshot once this many bytes of log were written since the last cut.
    pub snapshot_bytes: u64,
    /// Cut a snapshot once the last one is this old (milliseconds) and entries are
    /// pending.
    pub snapshot_age_ms: u64,
    /// Each threshold is drawn anew for every snapshot within ± this percentage of its
    /// value (0 to 90), from a per-node seed, so replicas do not snapshot together.
    pub jitter_percent: u64,
    /// Compact the log after each durable snapshot.
    pub auto_compact: bool,
    /// Entries kept behind the snapshot when compacting on its own, for followers
    /// that catch up from the log.
    pub trailing_entries: u64,
    /// Snapshot chains kept (the newest ones; a chain is a full snapshot and the
    /// deltas building on it); at least 1.
    pub retain_snapshots: u64,
    /// Most deltas in a chain before the next snapshot is a full one (0: every
    /// snapshot is full).
    pub max_chain: u64,
    /// A full snapshot is also cut once the chain's deltas together pass this
    /// percentage of the full snapshot's size.
    pub delta_share_percent: u64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            snapshot_entries: 10_000,
            snapshot_bytes: 64 * 1024 * 1024,
            snapshot_age_ms: 0,
            jitter_percent: 25,
            auto_compact: true,
            trailing_entries: 5_000,
            retain_snapshots: 2,
            max_chain: 8,
            delta_share_percent: 50,
        }
    }
}

/// A change to some of the policy's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyUpdate {
    pub snapshot_entries: Option<u64>,
    pub snapshot_bytes: Option<u64>,
    pub snapshot_age_ms: Option<u64>,
    pub jitter_percent: Option<u64>,
    pub auto_compact: Option<bool>,
    pub trailing_entries: Option<u64>,
    pub retain_snapshots: Option<u64>,
    pub max_chain: Option<u64>,
    pub delta_share_percent: Option<u64>,
}

impl Policy {
    /// Checks every value against its range.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the first value out of range.
    pub fn validate(&self) -> Result<()> {
        if self.jitter_percent > 90 {
            return Err(Error::InvalidArgument(format!(
                "jitter_percent must be between 0 and 90, not {}",
                self.jitter_percent
            )));
        }
        if self.retain_snapshots < 1 {
            return Err(Error::InvalidArgument(
                "retain_snapshots must be at least 1: the newest snapshot is never deleted".into(),
            ));
        }
        Ok(())
    }

    /// This policy with `update` applied, or an error and no change.
    ///
    /// # Errors
    /// As [`Policy::validate`] on the result.
    pub fn with(&self, update: &PolicyUpdate) -> Result<Policy> {
        let p = Policy {
            snapshot_entries: update.snapshot_entries.unwrap_or(self.snapshot_entries),
            snapshot_bytes: update.snapshot_bytes.unwrap_or(self.snapshot_bytes),
            snapshot_age_ms: update.snapshot_age_ms.unwrap_or(self.snapshot_age_ms),
            jitter_percent: update.jitter_percent.unwrap_or(self.jitter_percent),
            auto_compact: update.auto_compact.unwrap_or(self.auto_compact),
            trailing_entries: update.trailing_entries.unwrap_or(self.trailing_entries),
            retain_snapshots: update.retain_snapshots.unwrap_or(self.retain_snapshots),
            max_chain: update.max_chain.unwrap_or(self.max_chain),
            delta_share_percent: update
                .delta_share_percent
                .unwrap_or(self.delta_share_percent),
        };
        p.validate()?;
        Ok(p)
    }

    /// The thresholds for snapshot number `round` of the node seeded `seed`: each
    /// within ± `jitter_percent` of the policy's value, different per round and seed.
    pub fn thresholds(&self, seed: u64, round: u64) -> Thresholds {
        let jitter = |value: u64, which: u64| -> u64 {
            if value == 0 || self.jitter_percent == 0 {
                return value;
            }
            // A uniform draw in [-1, 1], then scaled to the allowed spread.
            let r = mix(seed ^ mix(round.wrapping_mul(4).wrapping_add(which)));
            let unit = (r >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            let spread = value as f64 * self.jitter_percent as f64 / 100.0;
            ((value as f64 + unit * spread).round() as u64).max(1)
        };
        Thresholds {
            entries: jitter(self.snapshot_entries, 1),
            bytes: jitter(self.snapshot_bytes, 2),
            age_ms: jitter(self.snapshot_age_ms, 3),
        }
    }
}

/// splitmix64's finalizer: a well-spread 64-bit hash of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A node's jitter seed, from its id (FNV-1a).
pub fn seed_of(node_id: &str) -> u64 {
    node_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The jittered thresholds in force for the next snapshot (0: trigger off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub entries: u64,
    pub bytes: u64,
    pub age_ms: u64,
}

/// What the node did since its last snapshot cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Entries appended since the last cut.
    pub entries: u64,
    /// Bytes of log written since the last cut.
    pub bytes: u64,
    /// Milliseconds since the last cut (or since the node opened).
    pub age_ms: u64,
}

/// Why a snapshot is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Entries,
    Bytes,
    Age,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Entries => "entries",
            Trigger::Bytes => "bytes",
            Trigger::Age => "age",
        }
    }
}

/// The trigger that fires now, if any. Nothing fires without pending entries.
pub fn due(t: &Thresholds, p: &Progress) -> Option<Trigger> {
    if p.entries == 0 {
        return None;
    }
    if t.entries > 0 && p.entries >= t.entries {
        Some(Trigger::Entries)
    } else if t.bytes > 0 && p.bytes >= t.bytes {
        Some(Trigger::Bytes)
    } else if t.age_ms > 0 && p.age_ms >= t.age_ms {
        Some(Trigger::Age)
    } else {
        None
    }
}

/// How far one snapshot trigger is from firing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerStatus {
    /// `entries`, `bytes` or `age_ms`.
    pub name: &'static str,
    /// The jittered threshold in force; `None` when the trigger is off.
    pub threshold: Option<u64>,
    /// The progress since the last snapshot cut.
    pub current: u64,
    /// What is left before it fires (0: due).
    pub remaining: Option<u64>,
}

/// How far each trigger is from firing (`threshold` and `remaining` are `None` for
/// triggers that are off).
pub fn distances(t: &Thresholds, p: &Progress) -> [TriggerStatus; 3] {
    let d = |name, threshold: u64, current: u64| TriggerStatus {
        name,
        threshold: (threshold > 0).then_some(threshold),
        current,
        remaining: (threshold > 0).then(|| threshold.saturating_sub(current)),
    };
    [
        d("entries", t.entries, p.entries),
        d("bytes", t.bytes, p.bytes),
        d("age_ms", t.age_ms, p.age_ms),
    ]
}

/// Where to compact after a durable snapshot at `snapshot_offset`, keeping
/// `trailing` entries behind it: `None` if that does not move the first offset.
pub fn compaction_target(
    snapshot_offset: Offset,
    trailing: u64,
    first_offset: Offset,
) -> Option<Offset> {
    let at = snapshot_offset.saturating_minus(trailing);
    (at > first_offset).then_some(at)
}

/// How far behind its snapshot a leader keeps its log for a follower that is still
/// catching up, in multiples of `trailing_entries` (at least [`FOLLOWER_KEEP_MIN`]
/// entries); a follower further behind is past what the log is kept for.
pub const FOLLOWER_KEEP_FACTOR: u64 = 8;
/// The least a leader keeps for a follower catching up, in entries.
pub const FOLLOWER_KEEP_MIN: u64 = 10_000;

/// The first Raft index a cluster node keeps after a durable snapshot at `snapshot`:
/// `trailing` entries behind it, and on a leader further back to the match index of
/// the slowest follower heard from recently (`followers`: match index, recently
/// active), so that it catches up from the log, unless that follower is more than
/// `FOLLOWER_KEEP_FACTOR × trailing` (at least `FOLLOWER_KEEP_MIN`) entries behind
/// the snapshot. Never past the snapshot: its entry stays, so its term is known.
pub fn raft_keep_from(snapshot: u64, trailing: u64, followers: &[(u64, bool)]) -> u64 {
    let mut keep = snapshot.saturating_sub(trailing).max(1);
    let bound = (FOLLOWER_KEEP_FACTOR * trailing).max(FOLLOWER_KEEP_MIN);
    for &(matched, active) in followers {
        if active && snapshot.saturating_sub(matched) <= bound {
            keep = keep.min(matched + 1);
        }
    }
    keep
}

/// Which snapshot files retention deletes: given every snapshot and delta on disk as
/// (offset, name), everything older than the `retain` newest chains (a chain starts
/// at a full snapshot, a name ending in `.snap`) — never the newest chain.
pub fn retention(on_disk: &[(Offset, String)], retain: u64) -> Vec<(Offset, String)> {
    let mut sorted = on_disk.to_vec();
    sorted.sort();
    let bases: Vec<usize> = (0..sorted.len())
        .filter(|&i| sorted[i].1.ends_with(crate::core::layout::SNAPSHOT_SUFFIX))
        .collect();
    let keep = retain.max(1) as usize;
    if bases.len() <= keep {
        return Vec::new();
    }
    sorted.truncate(bases[bases.len() - keep]);
    sorted
}

/// How a snapshot request wants the snapshot written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotMode {
    /// The policy decides (full or delta).
    #[default]
    Auto,
    Full,
    Incremental,
}

impl SnapshotMode {
    /// `full` or `incremental`, as the protocol spells them.
    pub fn parse(text: &str) -> Option<SnapshotMode> {
        match text {
            "full" => Some(SnapshotMode::Full),
            "incremental" => Some(SnapshotMode::Incremental),
            _ => None,
        }
    }
}

/// The chain the next snapshot would extend: its deltas and sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainSize {
    pub deltas: u64,
    pub deltas_bytes: u64,
    pub base_bytes: u64,
}

/// Whether the next snapshot is a delta on `chain` (with no chain, it is full).
pub fn next_is_delta(mode: SnapshotMode, chain: Option<ChainSize>, policy: &Policy) -> bool {
    let Some(c) = chain else {
        return false;
    };
    match mode {
        SnapshotMode::Full => false,
        SnapshotMode::Incremental => true,
        SnapshotMode::Auto => {
            c.deltas < policy.max_chain
                && c.deltas_bytes.saturating_mul(100)
                    <= policy.delta_share_percent.saturating_mul(c.base_bytes)
        }
    }
}

/// Why the oldest live segment is still on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keeper {
    /// It is the active segment.
    Active,
    /// No durable snapshot covers all its entries.
    NoSnapshot,
    /// A snapshot covers it, but it holds some of the trailing entries kept for
    /// followers.
    TrailingEntries,
    /// A snapshot covers it and it is beyond the trailing entries, but auto-compaction
    /// is off (or has not run yet).
    AwaitingCompaction,
}

impl Keeper {
    pub fn reason(self) -> &'static str {
        match self {
            Keeper::Active => "it is the active segment",
            Keeper::NoSnapshot => "no durable snapshot covers all its entries",
            Keeper::TrailingEntries => "it holds trailing entries kept behind the snapshot",
            Keeper::AwaitingCompaction => "a snapshot covers it; it goes at the next compaction",
        }
    }
}

/// Why a segment holding entries `[start, end)` stays, given the newest durable
/// snapshot's offset and the trailing entries kept behind it.
pub fn keeper(sealed: bool, end: Offset, snapshot: Option<Offset>, trailing: u64) -> Keeper {
    match snapshot {
        _ if !sealed => Keeper::Active,
        None => Keeper::NoSnapshot,
        Some(s) if end > s => Keeper::NoSnapshot,
        Some(s) if end > s.saturating_minus(trailing) => Keeper::TrailingEntries,
        Some(_) => Keeper::AwaitingCompaction,
    }
}

/// A segment as the policy's figures see it: entries `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentView {
    pub sealed: bool,
    pub start: Offset,
    pub end: Offset,
    pub size_bytes: u64,
}

/// Replay cost per entry and per snapshot key assumed before a recovery has measured
/// one (from `make bench`: ~0.6 µs each on the reference machine).
pub const REPLAY_NS_DEFAULT: u64 = 600;

/// What the log costs now: space a compaction would free, and work a restart would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Costs {
    /// Bytes of sealed segments wholly below the newest snapshot.
    pub bytes_reclaimable: u64,
    /// Entries a restart would replay on top of the newest snapshot.
    pub replay_entries: u64,
    /// Estimated restart time: loading `keys` and replaying those entries.
    pub replay_estimate_ms: u64,
}

/// [`Costs`] of a log of `segments` from `first_offset` to `next_offset` holding a
/// state of `keys` keys, with the newest durable snapshot at `snapshot`. `measured`
/// is the last recovery's `(entries replayed, milliseconds)`: its per-entry cost is
/// used when it replayed enough (10,000 entries) to measure one.
pub fn costs(
    segments: &[SegmentView],
    snapshot: Option<Offset>,
    first_offset: Offset,
    next_offset: Offset,
    keys: u64,
    measured: (u64, u64),
) -> Costs {
    let bytes_reclaimable = segments
        .iter()
        .filter(|s| s.sealed && s.end > s.start && snapshot.is_some_and(|snap| s.end <= snap))
        .map(|s| s.size_bytes)
        .sum();
    let replay_entries = next_offset.since(snapshot.unwrap_or(first_offset));
    let (entries, ms) = measured;
    let per_entry_ns = if entries >= 10_000 {
        ms * 1_000_000 / entries
    } else {
        REPLAY_NS_DEFAULT
    };
    Costs {
        bytes_reclaimable,
        replay_entries,
        replay_estimate_ms: (replay_entries * per_entry_ns + keys * REPLAY_NS_DEFAULT) / 1_000_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(n: u64) -> Offset {
        Offset::new(n)
    }

    fn thresholds(entries: u64, bytes: u64, age_ms: u64) -> Thresholds {
        Thresholds {
            entries,
            bytes,
            age_ms,
        }
    }

    #[test]
    fn each_trigger_fires_exactly_at_its_threshold() {
        let t = thresholds(100, 1000, 5000);
        let p = |entries, bytes, age_ms| Progress {
            entries,
            bytes,
            age_ms,
        };
        assert_eq!(due(&t, &p(99, 999, 4999)), None);
        assert_eq!(due(&t, &p(100, 0, 0)), Some(Trigger::Entries));
        assert_eq!(due(&t, &p(1, 1000, 0)), Some(Trigger::Bytes));
        assert_eq!(due(&t, &p(1, 0, 5000)), Some(Trigger::Age));
        // Age alone never fires without pending entries.
        assert_eq!(due(&t, &p(0, 0, 1_000_000)), None);
        // Off triggers never fire.
        let off = thresholds(0, 0, 0);
        assert_eq!(due(&off, &p(u64::MAX, u64::MAX, u64::MAX)), None);
    }

    #[test]
    fn distances_count_down_to_zero() {
        let t = thresholds(100, 0, 5000);
        let p = Progress {
            entries: 40,
            bytes: 7,
            age_ms: 6000,
        };
        let d = distances(&t, &p);
        let row = |s: &TriggerStatus| (s.name, s.threshold, s.current, s.remaining);
        assert_eq!(row(&d[0]), ("entries", Some(100), 40, Some(60)));
        assert_eq!(row(&d[1]), ("bytes", None, 7, None));
        assert_eq!(row(&d[2]), ("age_ms", Some(5000), 6000, Some(0)));
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_differs_between_nodes() {
        let policy = Policy {
            snapshot_entries: 10_000,
            snapshot_bytes: 64 << 20,
            snapshot_age_ms: 60_000,
            jitter_percent: 25,
            ..Policy::default()
        };
        let (a, b) = (seed_of("n1"), seed_of("n2"));
        let mut differ = 0;
        let mut seen = std::collections::BTreeSet::new();
        for round in 0..1000 {
            let (ta, tb) = (policy.thresholds(a, round), policy.thresholds(b, round));
            for t in [ta, tb] {
                assert!((7_500..=12_500).contains(&t.entries), "{t:?}");
                assert!((48 << 20..=80 << 20).contains(&t.bytes), "{t:?}");
                assert!((45_000..=75_000).contains(&t.age_ms), "{t:?}");
            }
            differ += usize::from(ta.entries != tb.entries);
            seen.insert(ta.entries);
        }
        assert!(differ > 990, "two nodes drew the same threshold too often");
        // The draws spread over the whole range, not a corner of it.
        assert!(*seen.first().unwrap() < 7_600 && *seen.last().unwrap() > 12_400);
        // Deterministic per (seed, round); no jitter gives the value itself.
        assert_eq!(policy.thresholds(a, 7), policy.thresholds(a, 7));
        let exact = Policy {
            jitter_percent: 0,
            ..policy
        };
        assert_eq!(exact.thresholds(a, 3), thresholds(10_000, 64 << 20, 60_000));
        // An off trigger stays off whatever the jitter.
        let off = Policy {
            snapshot_age_ms: 0,
            ..policy
        };
        assert_eq!(off.thresholds(a, 3).age_ms, 0);
    }

    #[test]
    fn updates_apply_some_fields_and_refuse_bad_values_whole() {
        let p = Policy::default();
        let q = p
            .with(&PolicyUpdate {
                snapshot_entries: Some(5),
                auto_compact: Some(false),
                ..PolicyUpdate::default()
            })
            .unwrap();
        assert_eq!(q.snapshot_entries, 5);
        assert!(!q.auto_compact);
        assert_eq!(q.trailing_entries, p.trailing_entries);
        for bad in [
            PolicyUpdate {
                jitter_percent: Some(91),
                ..PolicyUpdate::default()
            },
            PolicyUpdate {
                snapshot_entries: Some(1),
                retain_snapshots: Some(0),
                ..PolicyUpdate::default()
            },
        ] {
            assert!(matches!(p.with(&bad), Err(Error::InvalidArgument(_))));
        }
    }

    #[test]
    fn compaction_keeps_the_trailing_entries_and_never_moves_backwards() {
        assert_eq!(compaction_target(o(10_000), 5_000, o(0)), Some(o(5_000)));
        assert_eq!(compaction_target(o(10_000), 5_000, o(5_000)), None);
        assert_eq!(compaction_target(o(4_000), 5_000, o(0)), None);
        assert_eq!(compaction_target(o(10_000), 0, o(9_999)), Some(o(10_000)));
    }

    #[test]
    fn a_chain_grows_until_its_length_or_size_limit_then_a_full_one_is_cut() {
        let p = Policy::default(); // 8 deltas, 50 %
        let c = |deltas, deltas_bytes| {
            Some(ChainSize {
                deltas,
                deltas_bytes,
                base_bytes: 1000,
            })
        };
        assert!(!next_is_delta(SnapshotMode::Auto, None, &p), "no chain yet");
        assert!(next_is_delta(SnapshotMode::Auto, c(0, 0), &p));
        assert!(next_is_delta(SnapshotMode::Auto, c(7, 500), &p));
        assert!(
            !next_is_delta(SnapshotMode::Auto, c(8, 10), &p),
            "max_chain"
        );
        assert!(!next_is_delta(SnapshotMode::Auto, c(2, 501), &p), "share");
        assert!(next_is_delta(SnapshotMode::Incremental, c(8, 5000), &p));
        assert!(!next_is_delta(SnapshotMode::Incremental, None, &p));
        assert!(!next_is_delta(SnapshotMode::Full, c(0, 0), &p));
        let off = Policy { max_chain: 0, ..p };
        assert!(!next_is_delta(SnapshotMode::Auto, c(0, 0), &off));
    }

    #[test]
    fn retention_keeps_whole_chains() {
        let files: Vec<(Offset, String)> = [
            (10, "10.snap"),
            (15, "15.delta"),
            (20, "20.snap"),
            (25, "25.delta"),
            (27, "27.delta"),
            (30, "30.snap"),
            (35, "35.delta"),
        ]
        .iter()
        .map(|(n_, name)| (o(*n_), name.to_string()))
        .collect();
        let names =
            |v: Vec<(Offset, String)>| v.into_iter().map(|(n, _)| n.get()).collect::<Vec<_>>();
        assert_eq!(names(retention(&files, 2)), vec![10, 15]);
        assert_eq!(names(retention(&files, 1)), vec![10, 15, 20, 25, 27]);
        assert!(retention(&files, 3).is_empty());
        // Deltas whose full snapshot is gone go with the older chains.
        assert_eq!(names(retention(&files[1..], 1)), vec![15, 20, 25, 27]);
    }

    #[test]
    fn retention_never_deletes_the_newest_snapshot() {
        let snaps: Vec<(Offset, String)> = [30, 10, 20]
            .iter()
            .map(|n| (o(*n), format!("{n}.snap")))
            .collect();
        let names =
            |v: Vec<(Offset, String)>| v.into_iter().map(|(n, _)| n.get()).collect::<Vec<_>>();
        assert_eq!(names(retention(&snaps, 2)), vec![10]);
        assert_eq!(names(retention(&snaps, 1)), vec![10, 20]);
        assert_eq!(names(retention(&snaps, 0)), vec![10, 20], "0 acts as 1");
        assert!(retention(&snaps, 5).is_empty());
        assert!(retention(&[], 1).is_empty());
    }

    #[test]
    fn each_kept_segment_has_its_reason() {
        assert_eq!(keeper(false, o(0), Some(o(100)), 0), Keeper::Active);
        assert_eq!(keeper(true, o(50), None, 0), Keeper::NoSnapshot);
        assert_eq!(keeper(true, o(150), Some(o(100)), 0), Keeper::NoSnapshot);
        assert_eq!(
            keeper(true, o(80), Some(o(100)), 30),
            Keeper::TrailingEntries
        );
        assert_eq!(
            keeper(true, o(70), Some(o(100)), 30),
            Keeper::AwaitingCompaction
        );
    }

    #[test]
    fn costs_count_sealed_segments_below_the_snapshot_and_estimate_the_replay() {
        let seg = |sealed, start, end| SegmentView {
            sealed,
            start: o(start),
            end: o(end),
            size_bytes: 1000,
        };
        let segments = [seg(true, 0, 10), seg(true, 10, 20), seg(false, 20, 25)];
        // A snapshot at 15 covers only the first segment whole.
        let c = costs(&segments, Some(o(15)), o(0), o(25), 0, (0, 0));
        assert_eq!(c.bytes_reclaimable, 1000);
        assert_eq!(c.replay_entries, 10);
        // A snapshot at 20 covers both sealed ones; the active one never counts.
        assert_eq!(
            costs(&segments, Some(o(25)), o(0), o(25), 0, (0, 0)).bytes_reclaimable,
            2000
        );
        // No snapshot: nothing reclaimable, the whole live log to replay.
        let c = costs(&segments, None, o(5), o(25), 0, (0, 0));
        assert_eq!((c.bytes_reclaimable, c.replay_entries), (0, 20));
        // The default cost until a recovery measured one on enough entries.
        let c = costs(&segments, None, o(0), o(2_000_000), 1_000_000, (9_999, 1));
        assert_eq!(
            c.replay_estimate_ms,
            (2_000_000 + 1_000_000) * 600 / 1_000_000
        );
        let c = costs(&segments, None, o(0), o(2_000_000), 0, (1_000_000, 500));
        assert_eq!(c.replay_estimate_ms, 1_000);
    }

    #[test]
    fn a_cluster_node_keeps_its_log_for_followers_catching_up_within_a_bound() {
        // Alone (a follower, or no follower behind): trailing entries behind the snapshot.
        assert_eq!(raft_keep_from(50_000, 5_000, &[]), 45_000);
        assert_eq!(raft_keep_from(100, 5_000, &[]), 1);
        assert_eq!(raft_keep_from(50_000, 0, &[]), 50_000);
        // A follower at 30,000: its next entry stays.
        assert_eq!(
            raft_keep_from(50_000, 5_000, &[(30_000, true), (49_999, true)]),
            30_001
        );
        // Not heard from recently: not waited for.
        assert_eq!(raft_keep_from(50_000, 5_000, &[(30_000, false)]), 45_000);
        // Too far behind (more than 8 x 5,000): not waited for either.
        assert_eq!(raft_keep_from(50_000, 5_000, &[(9_999, true)]), 45_000);
        assert_eq!(raft_keep_from(50_000, 5_000, &[(10_000, true)]), 10_001);
        // The bound is at least 10,000 entries.
        assert_eq!(raft_keep_from(50_000, 0, &[(40_000, true)]), 40_001);
        assert_eq!(raft_keep_from(50_000, 0, &[(39_999, true)]), 50_000);
    }
}

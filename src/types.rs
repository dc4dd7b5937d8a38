//! Result types of the node's requests.

use std::time::Duration;

pub use crate::core::policy::TriggerStatus;
pub use crate::core::position::Offset;
use crate::error::{Error, Result};

/// When an appended entry counts as durable and may be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fdatasync before every acknowledgement; concurrent appends share one sync.
    Always,
    /// Acknowledge after the write; sync every given interval.
    Batch(Duration),
    /// Acknowledge after the write; the operating system decides when data reaches disk.
    Never,
}

impl FsyncPolicy {
    /// Parses `always`, `batch=MS` (MS ≥ 1) or `never`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for anything else.
    pub fn parse(text: &str) -> Result<FsyncPolicy> {
        match text {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => {
                let ms = text
                    .strip_prefix("batch=")
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .filter(|&ms| ms >= 1)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "fsync policy must be always, batch=MS (MS >= 1) or never, not {text:?}"
                        ))
                    })?;
                Ok(FsyncPolicy::Batch(Duration::from_millis(ms)))
            }
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Batch(every) => write!(f, "batch={}", every.as_millis()),
            FsyncPolicy::Never => f.write_str("never"),
        }
    }
}

/// A snapshot (full or delta) made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// File name (`.snap` for a full snapshot, `.delta` for a delta).
    pub file: String,
    /// Entries `[0, offset)` are covered.
    pub offset: Offset,
    /// Size of the file.
    pub size_bytes: u64,
    /// The body checksum: the file's identity, which a delta names its parent by.
    pub checksum: u32,
}

/// What the log knows about one segment, as reported to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// File name.
    pub file: String,
    /// Offset of its first entry.
    pub start_offset: Offset,
    /// Offset of its last entry, `None` when empty.
    pub end_offset: Option<Offset>,
    /// Bytes of data (header and records, not the preallocated zeros).
    pub size_bytes: u64,
    /// Whether it is sealed (every segment but the active one).
    pub sealed: bool,
}

/// An entry read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    /// The payload bytes as stored.
    pub payload: Vec<u8>,
    /// Whether the record's checksum verified.
    pub checksum_valid: bool,
}

/// Answer to an info request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Live entries.
    pub entries: u64,
    /// Bytes of log data on disk.
    pub total_bytes: u64,
    /// Whether every acknowledged entry is durable.
    pub fsynced: bool,
}

/// Answer to a segment listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentList {
    /// Every live segment in offset order, the active one last.
    pub segments: Vec<SegmentInfo>,
    /// File name of the active segment.
    pub active_segment: String,
}

/// Answer to a compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// Offset of the durable snapshot that covers the compaction.
    pub snapshot_offset: Offset,
    /// Live entries before.
    pub entries_before: u64,
    /// Live entries after.
    pub entries_after: u64,
    /// Bytes the filesystem got back (sizes of the deleted segment files).
    pub bytes_freed: u64,
}

/// Figures from opening a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The snapshot loaded, if any.
    pub snapshot: Option<SnapshotFile>,
    /// Snapshots that did not verify (newer than the one loaded), with the reason.
    pub snapshots_skipped: Vec<String>,
    /// Entries replayed from the log on top of the snapshot.
    pub entries_replayed: u64,
    /// Bytes of a torn tail cut off the last segment.
    pub bytes_truncated: u64,
    /// Where those bytes were kept.
    pub broken_file: Option<String>,
    /// Leftover temporary files removed.
    pub temp_files_removed: usize,
    /// Segments below the first offset removed (a compaction finished).
    pub segments_deleted: usize,
    /// Files in the directory that are not the node's.
    pub foreign_files: Vec<String>,
    /// Wall time of recovery.
    pub duration_ms: u64,
    /// Of which: choosing, verifying and loading the snapshot.
    pub snapshot_load_ms: u64,
    /// Of which: scanning the log and replaying its entries on top of the snapshot.
    pub replay_ms: u64,
}

/// Counters since the node opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Entries appended (including key-value writes).
    pub appends: u64,
    /// Group commits: batches written together.
    pub batches: u64,
    /// fdatasync calls on the log.
    pub fsyncs: u64,
    /// Snapshots made durable.
    pub snapshots: u64,
    /// Compactions that deleted something or moved the first offset.
    pub compactions: u64,
    /// Bytes freed by compactions.
    pub bytes_freed: u64,
}

/// Everything an operator wants at a glance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// First live offset.
    pub first_offset: Offset,
    /// Offset of the next entry.
    pub next_offset: Offset,
    /// Live entries.
    pub entries: u64,
    /// Bytes of log data on disk.
    pub total_bytes: u64,
    /// Live segments.
    pub segments: usize,
    /// File name of the active segment.
    pub active_segment: String,
    /// Keys in the state machine.
    pub keys: u64,
    /// Applied payloads that were not commands.
    pub other_payloads: u64,
    /// Durability policy.
    pub fsync: FsyncPolicy,
    /// Whether every acknowledged entry is durable.
    pub fsynced: bool,
    /// Segment size limit.
    pub segment_bytes_max: u64,
    /// Payload size limit.
    pub payload_bytes_max: u64,
    /// The newest durable snapshot.
    pub latest_snapshot: Option<SnapshotFile>,
    /// How long the last snapshot took, end to end.
    pub last_snapshot_ms: Option<u64>,
    /// Counters since the node opened.
    pub counters: Counters,
    /// Why the node refuses writes, if it does.
    pub poisoned: Option<String>,
    /// What recovery did when the node opened.
    pub recovery: RecoveryReport,
    /// The log-management policy and where the node stands against it.
    pub management: Management,
    /// The uploads to the snapshot store, if one is configured.
    pub store: Option<UploadStatus>,
}

/// One snapshot file kept on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptSnapshot {
    pub file: String,
    /// `full` or `delta`.
    pub kind: &'static str,
    pub offset: Offset,
    /// Known for snapshots written or loaded since the node opened.
    pub size_bytes: Option<u64>,
    /// Milliseconds since it became durable, for those written since the node opened.
    pub age_ms: Option<u64>,
}

/// The log-management view of `wal_status`: policy, triggers, what is kept and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Management {
    pub policy: crate::core::policy::Policy,
    pub triggers: Vec<TriggerStatus>,
    /// Snapshots on disk, oldest first.
    pub snapshots: Vec<KeptSnapshot>,
    /// Bytes of the last snapshot written since the node opened.
    pub last_snapshot_bytes: Option<u64>,
    /// Bytes a compaction to the newest snapshot would free now.
    pub bytes_reclaimable: u64,
    /// Entries a restart would replay on top of the newest snapshot.
    pub replay_entries: u64,
    /// Estimated recovery time on restart (snapshot load plus replay).
    pub replay_estimate_ms: u64,
    /// The oldest live segment and why it cannot be deleted yet.
    pub oldest_segment: Option<(String, &'static str)>,
}

/// What the uploader reports (the `snapshot_store` part of `wal_status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadStatus {
    /// The store (never a credential).
    pub url: String,
    /// The index of the newest chain in the store uploaded by this node.
    pub uploaded_index: Option<u64>,
    /// When it was uploaded (milliseconds since the Unix epoch).
    pub uploaded_at_ms: Option<u64>,
    /// Chains and bytes uploaded since the node started.
    pub chains_uploaded: u64,
    pub bytes_uploaded: u64,
    /// Offers waiting.
    pub queued: usize,
    /// The index of the chain being uploaded now, if one is.
    pub uploading: Option<u64>,
    /// Failed attempts since the node started, and the latest failure's message (cleared
    /// by the next success).
    pub failures: u64,
    pub last_error: Option<String>,
    /// Whether the log is shipped too (see [`crate::store::shipped`]).
    pub shipping: bool,
    /// The offset of the newest entry shipped (this run or an earlier one), and when
    /// the object holding it was written (milliseconds since the Unix epoch).
    pub shipped_offset: Option<u64>,
    pub shipped_at_ms: Option<u64>,
    /// Durable entries not yet in the store (what a lost disk would lose now).
    pub unshipped_entries: Option<u64>,
    /// Log objects and bytes shipped since the node started.
    pub log_objects_shipped: u64,
    pub log_bytes_shipped: u64,
    /// Times entries were compacted away before they could be shipped.
    pub log_gaps: u64,
    /// Failed shipping attempts, and the latest one's message (cleared by a success).
    pub ship_failures: u64,
    pub ship_error: Option<String>,
}

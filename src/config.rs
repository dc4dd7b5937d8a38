//! Every limit and policy of a node, in one place.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};

use crate::core::policy::Policy;
use crate::error::{Error, Result};
use crate::snapshot::WritePace;
pub use crate::types::FsyncPolicy;
use crate::wal::{LogOptions, SyncCount};

pub use crate::wal::record::RECORD_PAYLOAD_MAX_BYTES;

/// What a node reports the duration of (see [`Config::observer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measured {
    /// One sync of the Raft log (its segments' fdatasync, then `raft.state`).
    Fsync,
    /// One snapshot, from the cut to the file durable.
    Snapshot,
    /// One compaction of the log behind a snapshot.
    Compaction,
}

/// Receives durations (called on the thread that measured them: keep it short).
#[derive(Clone)]
pub struct Observer(pub Arc<dyn Fn(Measured, Duration) + Send + Sync>);

impl Observer {
    /// Reports that `what` took `took`.
    pub fn saw(&self, what: Measured, took: Duration) {
        (self.0)(what, took);
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// Configuration of one node. [`Config::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node's own directory (the binary uses `DATA_DIR/<node_id>`). Created if missing.
    pub dir: PathBuf,
    /// Durability policy of appends.
    pub fsync: FsyncPolicy,
    /// Size at which the active segment is sealed and a new one opened (≥ 1). A record
    /// never spans segments: one larger than this gets a segment of its own.
    pub segment_bytes_max: u64,
    /// Largest payload accepted by an append (≤ [`RECORD_PAYLOAD_MAX_BYTES`]).
    pub payload_bytes_max: u64,
    /// Segment files are preallocated to `min(segment_bytes_max, this)` so that a sync
    /// does not have to grow the file.
    pub segment_preallocate_bytes_max: u64,
    /// Capacity of each actor's inbox.
    pub inbox_capacity: usize,
    /// Most requests the appender takes into one group commit.
    pub batch_entries_max: usize,
    /// A snapshot being written is handed to the disk every this many bytes, so that
    /// its data never reaches the disk as one burst that the log's fdatasync queues
    /// behind: written back without a cache flush when paced (see
    /// [`Config::snapshot_busy_bytes_per_sec`]), fdatasynced when not. With an
    /// fdatasync each, in `make bench` (1M keys, 8 writers), 256 KiB kept the worst
    /// append under a snapshot to ~3-11 ms against 9-11 ms with 4 MiB.
    pub snapshot_sync_chunk_bytes: u64,
    /// While the log is syncing, a snapshot file is written at most this many bytes
    /// per second (0: no limit, each chunk then fdatasynced); while it is not, at full
    /// speed. Each of the log's fdatasyncs flushes whatever snapshot bytes were written
    /// since the one before.
    pub snapshot_busy_bytes_per_sec: u64,
    /// When snapshots and compactions happen on their own, and how many snapshots
    /// are kept; changeable at run time with `wal_policy`.
    pub policy: Policy,
    /// Seed of the policy's jitter: differs between nodes so that replicas do not
    /// snapshot together. The binary derives it from the node id.
    pub jitter_seed: u64,
    /// Prepare the next segment zero-filled on a helper thread while the active one
    /// fills, so that syncs never convert unwritten extents (a journal commit each on
    /// ext4). Off, segments are preallocated with fallocate when they are opened; the
    /// simulated-disk tests turn it off to keep operation counts deterministic.
    pub segment_prefill: bool,
    /// Compaction frees a segment by truncating it this many bytes at a time, pausing
    /// [`Config::delete_pause`] between steps, before it unlinks the empty file: freeing
    /// a large file at once lands on the disk as one burst that the log's next fdatasync
    /// waits behind (with online discard, inside a journal commit). 0: unlink at once.
    pub delete_chunk_bytes: u64,
    /// The pause between two truncation steps of a compacted segment (20 ms: 1 MiB
    /// every 10 ms still doubled the log's p99 on a disk that syncs in about 30 µs).
    pub delete_pause: std::time::Duration,
    /// Most bytes per second a cluster node sends of its snapshots to members that
    /// catch up from one (0: no limit). In `make bench` (section i, 2 cores, three
    /// nodes in one process) the leader's write p99 while sending was 6.5x idle at
    /// 16 MiB/s and about 2x at 8 MiB/s and below, where the rest of the catch-up
    /// (the follower's install and replay on the same cores) sets the floor.
    pub snapshot_send_bytes_per_sec: u64,
    /// The clock the log-management policy reads (its age trigger, the ages in
    /// `wal_status`); tests substitute a [`crate::clock::ManualClock`].
    pub clock: Arc<dyn Clock>,
    /// Told how long each sync of a cluster node's Raft log, each snapshot and each
    /// compaction took (metrics); `None`: nobody.
    pub observer: Option<Observer>,
    /// Where durable snapshots are copied off the node (`None`: nowhere). The node's
    /// name in the store is the last component of [`Config::dir`].
    pub snapshot_store: Option<crate::store::StoreConfig>,
    /// In a group: the consensus actor's timers, queues and transfer pace.
    pub cluster: ClusterLimits,
}

impl Config {
    /// The node's name in a snapshot store: the last component of its directory.
    pub fn store_name(&self) -> String {
        self.dir
            .file_name()
            .map_or_else(|| "node".to_string(), |n| n.to_string_lossy().into_owned())
    }

    /// How this node writes its snapshot files, paced by the syncs of `log`.
    pub fn snapshot_pace(&self, log: SyncCount) -> WritePace {
        WritePace {
            sync_chunk: self.snapshot_sync_chunk_bytes,
            busy_bytes_per_sec: self.snapshot_busy_bytes_per_sec,
            log: Some(log),
        }
    }

    /// What the log needs of this configuration.
    pub fn log_options(&self) -> LogOptions {
        LogOptions {
            dir: self.dir.clone(),
            segment_bytes_max: self.segment_bytes_max,
            preallocate_bytes_max: self.segment_preallocate_bytes_max,
            prefill: self.segment_prefill,
        }
    }

    /// The defaults, for a node living in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        let dir: PathBuf = dir.into();
        Config {
            jitter_seed: crate::core::policy::seed_of(&dir.to_string_lossy()),
            dir,
            fsync: FsyncPolicy::Always,
            segment_bytes_max: 16 * 1024 * 1024,
            payload_bytes_max: 1024 * 1024,
            segment_preallocate_bytes_max: 64 * 1024 * 1024,
            inbox_capacity: 4096,
            batch_entries_max: 4096,
            snapshot_sync_chunk_bytes: 256 * 1024,
            snapshot_busy_bytes_per_sec: 128 * 1024 * 1024,
            policy: Policy::default(),
            segment_prefill: true,
            delete_chunk_bytes: 1024 * 1024,
            delete_pause: std::time::Duration::from_millis(20),
            snapshot_send_bytes_per_sec: 8 * 1024 * 1024,
            clock: Arc::new(SystemClock),
            observer: None,
            snapshot_store: None,
            cluster: ClusterLimits::default(),
        }
    }

    /// Checks every value against its range.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the first value out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::InvalidArgument(what.to_string()));
        if self.segment_bytes_max < 1 {
            return bad("max segment bytes must be at least 1");
        }
        if self.payload_bytes_max > RECORD_PAYLOAD_MAX_BYTES {
            return bad("max payload bytes must be at most 268435456 (256 MiB)");
        }
        if self.inbox_capacity < 1 || self.batch_entries_max < 1 {
            return bad("inbox capacity and batch size must be at least 1");
        }
        if self.snapshot_sync_chunk_bytes < 4096 {
            return bad("snapshot sync chunk must be at least 4096 bytes");
        }
        if self.snapshot_store.as_ref().is_some_and(|s| s.retain < 1) {
            return bad("the snapshot store must keep at least 1 chain");
        }
        self.policy.validate()?;
        self.cluster.validate()?;
        Ok(())
    }
}

/// The limits of a group member, each with its reason. [`ClusterLimits::default`] gives
/// what the binary runs with; tests on a loaded machine lengthen the deadlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLimits {
    /// Time per Raft tick. Fine-grained, so that two followers rarely time out in the
    /// same tick and split the vote (each election timeout is drawn among
    /// `election_ticks` ticks). 10 ms.
    pub tick: Duration,
    /// Ticks without hearing a leader before a follower campaigns (randomized up to
    /// twice as many): 50, so 0.5 to 1 s.
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats: 10, so 100 ms, a fifth of the shortest
    /// election timeout.
    pub heartbeat_ticks: usize,
    /// How long a request waits for a leader to be known before it is answered error
    /// 11 (nothing was done). 2 s: four election timeouts at most.
    pub leader_wait: Duration,
    /// How long a request waits for its outcome before a write is answered error 13
    /// (it may or may not be committed later) and a read error 11. 3 s: long enough
    /// for an election and a retry, short enough that a client stuck behind a lost
    /// quorum hears of it. Tests that load a busy machine raise it: the error is
    /// correct there too, but it is not what they check.
    pub request_timeout: Duration,
    /// How long a leader waits before it proposes again to record a member's
    /// incarnation: 2 s, longer than a commit takes on a healthy group.
    pub record_again: Duration,
    /// Requests and peer messages waiting for the consensus actor: at least 1024,
    /// whatever `inbox_capacity` says, so that a burst of peer messages (appends after a
    /// partition heals, many followers' answers) is not dropped.
    pub inbox_min: usize,
    /// Snapshot work (cuts, asks for chunks to serve, offers) waiting for the cluster
    /// snapshotter; beyond it transfer work is dropped and asked again (a cut waits
    /// for the next trigger). 64: sixteen windows of asks.
    pub snapshot_jobs: usize,
    /// Received chunks waiting for the cluster snapshotter, which takes them straight
    /// from the transport; beyond it a chunk is dropped and asked again. 16: four
    /// windows (4 MiB) while a snapshot is being written, and no more memory than that.
    pub chunks_queued: usize,
    /// Chunks a receiver asks for at once: 4, so 1 MiB in flight per transfer, which
    /// keeps a link busy without crowding a peer's queue.
    pub transfer_window: u32,
    /// A transfer that made no progress for this long asks again from its durable
    /// length: 400 ms, a few round trips with a window written and synced.
    pub ask_again: Duration,
    /// How long a sender keeps a snapshot it offered (and the log behind it) after its
    /// last ask: 30 s, so a receiver that restarts mid-transfer finds it still there.
    pub pin: Duration,
}

impl Default for ClusterLimits {
    fn default() -> ClusterLimits {
        ClusterLimits {
            tick: Duration::from_millis(10),
            election_ticks: 50,
            heartbeat_ticks: 10,
            leader_wait: Duration::from_secs(2),
            request_timeout: Duration::from_secs(3),
            record_again: Duration::from_secs(2),
            inbox_min: 1024,
            snapshot_jobs: 64,
            chunks_queued: 16,
            transfer_window: 4,
            ask_again: Duration::from_millis(400),
            pin: Duration::from_secs(30),
        }
    }
}

impl ClusterLimits {
    /// Checks every value against its range.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the first value out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::InvalidArgument(what.to_string()));
        if self.tick.is_zero() {
            return bad("the Raft tick must be longer than zero");
        }
        if self.heartbeat_ticks < 1 || self.election_ticks <= self.heartbeat_ticks {
            return bad(
                "the election timeout must be longer than the heartbeat, itself a tick or more",
            );
        }
        if self.snapshot_jobs < 1
            || self.chunks_queued < 1
            || self.transfer_window < 1
            || self.inbox_min < 1
        {
            return bad("the cluster's queues and transfer window must hold at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_policy_parses_and_prints_back() {
        for text in ["always", "never", "batch=5"] {
            assert_eq!(FsyncPolicy::parse(text).unwrap().to_string(), text);
        }
        for bad in ["", "batch=", "batch=0", "batch=-1", "sometimes", "Always"] {
            assert!(FsyncPolicy::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}

//! The snapshotter's and the compactor's public handles. Both are façades on the
//! appender's inbox: a snapshot or compaction request enters there, so that the cut
//! it takes includes every write submitted before it, and then travels down the DAG
//! (appender → snapshotter → compactor). They live here, above the appender, so that
//! no actor module imports one upstream of it.

use crate::actor::appender::{AppenderHandle, AppenderMsg};
use crate::actor::{Reply, call};
use crate::core::policy::SnapshotMode;
use crate::core::position::Offset;
use crate::error::Result;
use crate::types::{Compaction, SnapshotFile};

/// Handle to snapshotting. A request enters through the appender's inbox, so the cut
/// it takes includes every write submitted before it; the snapshot itself is written
/// by the snapshotter thread.
#[derive(Clone)]
pub struct SnapshotterHandle {
    pub(crate) appender: AppenderHandle,
}

impl SnapshotterHandle {
    /// Cuts a snapshot of the state and returns it once the file is durable.
    ///
    /// # Errors
    /// [`Error::Unavailable`](crate::Error::Unavailable) if writing it failed (the previous snapshot stays);
    /// [`Error::Crashed`](crate::Error::Crashed) if the node refuses writes.
    pub fn snapshot(&self) -> Result<SnapshotFile> {
        call(|reply| self.snapshot_with(reply))
    }

    /// Non-blocking [`SnapshotterHandle::snapshot`].
    pub fn snapshot_with(&self, reply: Reply<SnapshotFile>) {
        self.snapshot_mode_with(SnapshotMode::Auto, reply);
    }

    /// [`SnapshotterHandle::snapshot`], written full or as a delta on the current
    /// chain as `mode` asks (`Auto`: as the policy decides).
    ///
    /// # Errors
    /// As [`SnapshotterHandle::snapshot`].
    pub fn snapshot_mode(&self, mode: SnapshotMode) -> Result<SnapshotFile> {
        call(|reply| self.snapshot_mode_with(mode, reply))
    }

    /// Non-blocking [`SnapshotterHandle::snapshot_mode`].
    pub fn snapshot_mode_with(&self, mode: SnapshotMode, reply: Reply<SnapshotFile>) {
        self.appender.submit(AppenderMsg::Snapshot { mode, reply });
    }
}

/// Handle to compaction. A request enters through the appender's inbox (which knows
/// the log's end and cuts a snapshot if none covers the offset), passes the
/// snapshotter, and is carried out by the compactor thread.
#[derive(Clone)]
pub struct CompactorHandle {
    pub(crate) appender: AppenderHandle,
}

impl CompactorHandle {
    /// Removes every entry below `at`, after a durable snapshot covers it (taking one
    /// first if needed). Compacting to an offset already compacted succeeds and frees
    /// nothing.
    ///
    /// # Errors
    /// [`Error::PreconditionFailed`](crate::Error::PreconditionFailed) if `at` is past the log's end;
    /// [`Error::Unavailable`](crate::Error::Unavailable) if the snapshot or the metadata could not be written
    /// (nothing was deleted).
    pub fn compact(&self, at: Offset) -> Result<Compaction> {
        call(|reply| self.compact_with(at, reply))
    }

    /// Non-blocking [`CompactorHandle::compact`].
    pub fn compact_with(&self, at: Offset, reply: Reply<Compaction>) {
        self.appender.submit(AppenderMsg::Compact { at, reply });
    }
}

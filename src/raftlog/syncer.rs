//! What the syncer thread runs: the sync jobs the Raft log hands out, made durable in
//! groups.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use raft::eraftpb::HardState;

use super::state::{Identity, write_state};
use crate::fs::{FileSystem, join, sync_failed};

/// What one sync must make durable: see [`RaftLog::take_sync_job`](super::RaftLog::take_sync_job).
#[derive(Debug, Default)]
pub struct SyncJob {
    /// Writes made before the job was taken (see [`RaftLog::synced_through`](super::RaftLog::synced_through)).
    pub writes: u64,
    /// Segment files written since the previous job.
    pub segments: std::collections::BTreeSet<String>,
    /// The hard state to record in `raft.state`.
    pub state: Option<HardState>,
}

/// Carries out [`SyncJob`]s on its own thread: an fdatasync of each segment written
/// (through a handle of its own: a sync covers the file's writes whoever made them),
/// then `raft.state`. Jobs waiting together share one sync of each file: group commit.
pub struct Syncer {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    who: Identity,
}

impl Syncer {
    /// A syncer for the log in `dir` of node `who`.
    pub fn new(fs: Arc<dyn FileSystem>, dir: PathBuf, who: Identity) -> Syncer {
        Syncer { fs, dir, who }
    }

    /// Makes the jobs durable, in order.
    ///
    /// # Errors
    /// The I/O error: fail-stop for the caller.
    pub fn run(&mut self, jobs: &[SyncJob]) -> io::Result<()> {
        let segments: std::collections::BTreeSet<&String> =
            jobs.iter().flat_map(|j| j.segments.iter()).collect();
        for name in segments {
            // Opened by name each time: a truncation may have deleted the file, and a
            // roll created another under the same name, since the last job.
            match self.fs.open(&join(&self.dir, name), false) {
                Ok(mut file) => file.sync_data().map_err(sync_failed)?,
                // Deleted by a truncation since: what it held is gone on purpose.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(hs) = jobs.iter().rev().find_map(|j| j.state.as_ref()) {
            write_state(&*self.fs, &self.dir, &self.who, hs)?;
        }
        Ok(())
    }
}

//! The syncer: the thread that makes the consensus actor's writes durable while the
//! actor goes on stepping. It takes every sync job waiting at once (group commit: one
//! `fdatasync` of the segments, then `raft.state` if the term or vote changed, covers
//! them all) and reports the newest Ready number they cover, or the failure, after
//! which it stops: a failed sync is fail-stop.

use crossbeam_channel::{Receiver, Sender};

use crate::actor::spawn_actor;
use crate::error::{Error, Result};
use crate::raftlog::{SyncJob, Syncer};

/// What the syncer reports: every Ready up to the number is durable (with the writes
/// count of its job), or why a sync failed.
pub(super) type Synced = std::result::Result<(u64, u64), String>;

/// Starts the syncer thread over `syncer`, taking jobs (by Ready number) from `jobs`
/// and reporting on `synced`. It ends when `jobs` closes or a sync fails.
///
/// # Errors
/// The thread could not be started.
pub(super) fn spawn(
    mut syncer: Syncer,
    jobs: Receiver<(u64, SyncJob)>,
    synced: Sender<Synced>,
) -> Result<std::thread::JoinHandle<()>> {
    spawn_actor(
        "syncer",
        |why: String| log::error!("{why}; the cluster node stops acknowledging"),
        move || {
            while let Ok(first) = jobs.recv() {
                let mut batch = vec![first];
                batch.extend(jobs.try_iter());
                let (number, writes) = batch
                    .last()
                    .map(|(n, j)| (*n, j.writes))
                    .expect("non-empty");
                let jobs: Vec<SyncJob> = batch.into_iter().map(|(_, j)| j).collect();
                let result = syncer.run(&jobs).map(|()| (number, writes));
                let failed = result.is_err();
                let _ = synced.send(result.map_err(|e| e.to_string()));
                if failed {
                    break;
                }
            }
        },
    )
    .map_err(|e| Error::Open(format!("cannot start a thread: {e}")))
}

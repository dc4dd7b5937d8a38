//! The syncer: the thread that makes the consensus actor's writes durable while the
//! actor goes on stepping. Each sync covers every job handed over since the last one
//! (group commit: one `fdatasync` of the segments, then `raft.state` if the term or
//! vote changed), and reports the newest Ready number it covers, or the failure, after
//! which it stops: a failed sync is fail-stop.
//!
//! Both directions go through a [`Handoff`], a cell that holds one value at most: a
//! job handed over while another waits is merged into it (the segments of both, the
//! newer hard state), and a report replaces the one not yet read (a failure stays).
//! Neither side ever waits for the other and nothing grows while the disk is slow.

use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::actor::spawn_actor;
use crate::error::{Error, Result};
use crate::raftlog::{SyncJob, Syncer};

/// What the syncer reports: every Ready up to the number is durable (with the writes
/// count of its job), or why a sync failed.
pub(super) type Synced = std::result::Result<(u64, u64), String>;

/// A sync job by the number of the newest Ready it covers.
pub(super) type Numbered = (u64, SyncJob);

/// The sending side of a one-value cell between two threads; see the module
/// documentation.
pub(super) struct Handoff<T> {
    cell: Arc<Mutex<Option<T>>>,
    wake: Sender<()>,
}

/// The receiving side: wakes on [`Taker::woken`], then takes the value.
pub(super) struct Taker<T> {
    cell: Arc<Mutex<Option<T>>>,
    woken: Receiver<()>,
}

/// A cell and its two sides.
pub(super) fn handoff<T>() -> (Handoff<T>, Taker<T>) {
    let cell = Arc::new(Mutex::new(None));
    let (wake, woken) = crossbeam_channel::bounded(1);
    (
        Handoff {
            cell: cell.clone(),
            wake,
        },
        Taker { cell, woken },
    )
}

impl<T> Handoff<T> {
    /// Puts `value` in the cell, merged with the one still waiting there (`merge(older,
    /// newer)`), and wakes the taker; never waits. False once the taker is gone.
    pub(super) fn put(&self, value: T, merge: impl FnOnce(T, T) -> T) -> bool {
        {
            let mut cell = self.cell.lock().expect("handoff cell");
            let merged = match cell.take() {
                Some(older) => merge(older, value),
                None => value,
            };
            *cell = Some(merged);
        }
        !matches!(self.wake.try_send(()), Err(TrySendError::Disconnected(())))
    }
}

impl<T> Taker<T> {
    /// Ready when a value may be waiting (or the sending side is gone).
    pub(super) fn woken(&self) -> &Receiver<()> {
        &self.woken
    }

    /// Once the sending side is gone: stops waking (`woken` then never is ready), so
    /// that a loop selecting on it does not spin.
    pub(super) fn stop_waking(&mut self) {
        self.woken = crossbeam_channel::never();
    }

    /// The value waiting, if any.
    pub(super) fn take(&self) -> Option<T> {
        self.cell.lock().expect("handoff cell").take()
    }
}

/// Two jobs as one: what both wrote, the newer hard state.
pub(super) fn merge_jobs((_, older): Numbered, (number, newer): Numbered) -> Numbered {
    let mut segments = older.segments;
    segments.extend(newer.segments);
    let job = SyncJob {
        writes: older.writes.max(newer.writes),
        segments,
        state: newer.state.or(older.state),
    };
    (number, job)
}

/// A newer report replaces an older one; a failure is never replaced.
pub(super) fn merge_reports(older: Synced, newer: Synced) -> Synced {
    if older.is_err() { older } else { newer }
}

/// Starts the syncer thread over `syncer`, taking jobs from `jobs` and reporting on
/// `synced`. It ends when the actor drops its side of `jobs` (after the job left
/// there) or a sync fails.
///
/// # Errors
/// The thread could not be started.
pub(super) fn spawn(
    mut syncer: Syncer,
    jobs: Taker<Numbered>,
    synced: Handoff<Synced>,
    observer: Option<crate::config::Observer>,
) -> Result<std::thread::JoinHandle<()>> {
    spawn_actor(
        "syncer",
        |why: String| log::error!("{why}; the cluster node stops acknowledging"),
        move || {
            loop {
                let closed = jobs.woken().recv().is_err();
                if let Some((number, job)) = jobs.take() {
                    let writes = job.writes;
                    let started = std::time::Instant::now();
                    let result = syncer
                        .run(std::slice::from_ref(&job))
                        .map(|()| (number, writes));
                    if let Some(o) = &observer {
                        o.saw(crate::config::Measured::Fsync, started.elapsed());
                    }
                    let failed = result.is_err();
                    synced.put(result.map_err(|e| e.to_string()), merge_reports);
                    if failed {
                        break;
                    }
                }
                if closed {
                    break;
                }
            }
        },
    )
    .map_err(|e| Error::Open(format!("cannot start a thread: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(writes: u64, segments: &[&str], term: Option<u64>) -> SyncJob {
        SyncJob {
            writes,
            segments: segments.iter().map(|s| s.to_string()).collect(),
            state: term.map(|term| raft::eraftpb::HardState {
                term,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn jobs_handed_over_while_one_waits_become_one_that_covers_them_all() {
        let (tx, rx) = handoff::<Numbered>();
        assert!(tx.put((1, job(3, &["a"], Some(5))), merge_jobs));
        assert!(tx.put((2, job(7, &["b"], None)), merge_jobs));
        assert!(tx.put((3, job(9, &["b", "c"], Some(6))), merge_jobs));
        assert!(tx.put((4, job(9, &[], None)), merge_jobs));
        rx.woken().recv().unwrap();
        let (number, merged) = rx.take().unwrap();
        assert_eq!(number, 4);
        assert_eq!(merged.writes, 9);
        assert_eq!(merged.segments.len(), 3);
        assert_eq!(merged.state.map(|s| s.term), Some(6));
        // One value at most, and one wake-up at most, whatever was handed over.
        assert!(rx.take().is_none());
        assert!(rx.woken().try_recv().is_err());
        drop(rx);
        assert!(
            !tx.put((5, job(10, &[], None)), merge_jobs),
            "the taker is gone"
        );
    }

    #[test]
    fn a_failure_reported_is_never_replaced_by_a_later_success() {
        let (tx, rx) = handoff::<Synced>();
        tx.put(Ok((1, 1)), merge_reports);
        tx.put(Err("disk".into()), merge_reports);
        tx.put(Ok((3, 3)), merge_reports);
        assert_eq!(rx.take(), Some(Err("disk".into())));
        tx.put(Ok((4, 4)), merge_reports);
        tx.put(Ok((5, 5)), merge_reports);
        assert_eq!(rx.take(), Some(Ok((5, 5))));
    }

    #[test]
    fn the_taker_sees_the_sender_gone_after_the_last_value() {
        let (tx, rx) = handoff::<u64>();
        tx.put(1, |_, b| b);
        drop(tx);
        assert!(rx.woken().recv().is_ok());
        assert_eq!(rx.take(), Some(1));
        assert!(rx.woken().recv().is_err());
    }
}

//! The actors: one thread each, a private struct, a public handle, a message enum.
//!
//! Requests enter through the appender's bounded inbox and travel down
//! `appender -> snapshotter -> compactor` with blocking sends (a DAG, so no cycle of
//! full queues can form). Answers travel back on each request's own [`Reply`]. The
//! only upward edge is the `Feedback` channel into the appender (a durable snapshot,
//! a finished compaction): it is never blocked on, and holds at most one message per
//! request in flight.

pub mod appender;
pub mod compactor;
pub mod snapshotter;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvError, TryRecvError};

use crate::error::{Error, Result};
use crate::snapshot::SnapshotFile;

/// Where the answer to one request goes: a callback run exactly once.
///
/// If the request is dropped unanswered (its actor stopped or panicked), the callback
/// still runs, with [`Error::Crashed`]: no caller ever waits forever.
pub struct Reply<T: 'static> {
    f: Option<Box<dyn FnOnce(Result<T>) + Send>>,
}

impl<T: 'static> Reply<T> {
    /// A reply that calls `f` with the outcome.
    pub fn new(f: impl FnOnce(Result<T>) + Send + 'static) -> Reply<T> {
        Reply {
            f: Some(Box::new(f)),
        }
    }

    /// Delivers the outcome.
    pub fn send(mut self, outcome: Result<T>) {
        if let Some(f) = self.f.take() {
            f(outcome);
        }
    }
}

impl<T: 'static> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(f) = self.f.take() {
            f(Err(Error::Crashed(
                "the node stopped before answering this request".into(),
            )));
        }
    }
}

/// Runs `submit` with a reply that a blocking caller waits on.
pub(crate) fn call<T: Send + 'static>(submit: impl FnOnce(Reply<T>)) -> Result<T> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    submit(Reply::new(move |r| {
        let _ = tx.send(r);
    }));
    wait(&rx).unwrap_or_else(|_| {
        Err(Error::Crashed(
            "the node stopped before answering this request".into(),
        ))
    })
}

/// How long a blocking caller busy-waits for its answer before it sleeps: about one
/// fdatasync. On a virtual machine, waking a sleeping thread on an idle CPU costs tens
/// of microseconds; a lone writer that sleeps through each commit pays that twice.
const SPIN: Duration = Duration::from_micros(250);

/// Callers waiting for an answer right now.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// `rx.recv()`, busy-waiting first for up to [`SPIN`] while this caller is the only one
/// waiting and the machine has a core to spare. With many callers the appender batches
/// their requests anyway, and spinning would take the core it needs.
fn wait<T>(rx: &Receiver<T>) -> std::result::Result<T, RecvError> {
    static SPARE_CORE: OnceLock<bool> = OnceLock::new();
    let spare =
        *SPARE_CORE.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1));
    let alone = WAITING.fetch_add(1, Ordering::AcqRel) == 0;
    let mut outcome = None;
    if spare && alone {
        let started = Instant::now();
        while outcome.is_none() && started.elapsed() < SPIN && WAITING.load(Ordering::Acquire) == 1
        {
            match rx.try_recv() {
                Ok(v) => outcome = Some(Ok(v)),
                Err(TryRecvError::Disconnected) => outcome = Some(Err(RecvError)),
                Err(TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
    }
    let outcome = outcome.unwrap_or_else(|| rx.recv());
    WAITING.fetch_sub(1, Ordering::AcqRel);
    outcome
}

/// News from the snapshotter and the compactor to the appender.
pub(crate) enum Feedback {
    /// A snapshot is durable.
    SnapshotDurable {
        snapshot: SnapshotFile,
        duration_ms: u64,
        /// Every snapshot kept on disk after retention, as (offset, file), oldest first.
        on_disk: Vec<(u64, String)>,
    },
    /// A sync failed in another actor: the node must stop acknowledging writes.
    Poisoned(String),
    /// The compactor is about to free segments below `first_offset` (already durable
    /// in the log's metadata): reads below it must stop before their files shrink.
    /// The appender answers on `ack` once no later read can reach them.
    Fence {
        first_offset: u64,
        ack: crossbeam_channel::Sender<()>,
    },
    /// Segments were deleted and the first offset moved.
    Compacted {
        first_offset: u64,
        removed: Vec<u64>,
        bytes_freed: u64,
    },
}

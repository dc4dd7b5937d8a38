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
pub mod facades;
mod oneshot;
pub mod shipper;
pub mod snapshotter;
pub mod uploader;

use std::cell::RefCell;

use crate::core::position::Offset;
use crate::error::{Error, Result};
use crate::snapshot::SnapshotFile;

/// Where the answer to one request goes: a callback run exactly once.
///
/// If the request is dropped unanswered (its actor stopped or panicked), the callback
/// still runs, with [`Error::Crashed`]: no caller ever waits forever.
pub struct Reply<T: 'static> {
    f: Option<Box<dyn FnOnce(Result<T>) + Send>>,
    /// A thread sleeps until this answer comes: delivering it is a wake-up.
    wakes: bool,
}

impl<T: 'static> Reply<T> {
    /// A reply that calls `f` with the outcome.
    pub fn new(f: impl FnOnce(Result<T>) + Send + 'static) -> Reply<T> {
        Reply {
            f: Some(Box::new(f)),
            wakes: false,
        }
    }

    /// Whether a thread waits for this answer (a blocking call), so that delivering
    /// it wakes that thread.
    pub(crate) fn wakes_a_thread(&self) -> bool {
        self.wakes
    }

    /// A reply to a request whose answer is a `U`, which `f` turns into this one's
    /// outcome (or an error) before delivering it here.
    pub fn map<U: 'static>(mut self, f: impl FnOnce(U) -> Result<T> + Send + 'static) -> Reply<U>
    where
        T: Send,
    {
        let wakes = self.wakes;
        let inner = self.f.take();
        Reply {
            f: Some(Box::new(move |r: Result<U>| {
                if let Some(g) = inner {
                    g(r.and_then(f));
                }
            })),
            wakes,
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
            if std::thread::panicking() {
                // Poison the node before the caller hears of the failure, so that
                // its next request is refused.
                unwinding(None);
            }
            f(Err(Error::Crashed(
                "the node stopped before answering this request".into(),
            )));
        }
    }
}

/// Runs `submit` with a reply that a blocking caller waits on.
pub(crate) fn call<T: Send + 'static>(submit: impl FnOnce(Reply<T>)) -> Result<T> {
    let (tx, rx) = oneshot::channel();
    let mut reply = Reply::new(move |r| tx.send(r));
    reply.wakes = true;
    submit(reply);
    rx.recv().unwrap_or_else(|| {
        Err(Error::Crashed(
            "the node stopped before answering this request".into(),
        ))
    })
}

/// Why an actor refuses work after a failure it must not paper over (a failed sync,
/// a panic): the first reason is kept, logged once, and passed on to the appender,
/// which then refuses writes with error 13 and reports it in `wal_status`. The one
/// poisoning recipe every actor uses.
#[derive(Default)]
pub(crate) struct Poison {
    why: Option<String>,
    /// Where to report it: the feedback channel, for every actor but the appender.
    notify: Option<crossbeam_channel::Sender<Feedback>>,
}

impl Poison {
    /// A poison that tells the appender when it is set.
    pub(crate) fn reporting_to(feedback: crossbeam_channel::Sender<Feedback>) -> Poison {
        Poison {
            why: None,
            notify: Some(feedback),
        }
    }

    /// Records `why` (the first reason wins), reports it, and returns the error the
    /// request that hit it gets.
    pub(crate) fn set(&mut self, why: String) -> Error {
        if self.why.is_none() {
            log::error!("{why}; refusing writes until the node is reopened");
            if let Some(tx) = &self.notify {
                let _ = tx.send(Feedback::Poisoned(why.clone()));
            }
        }
        Error::Crashed(self.why.get_or_insert(why).clone())
    }

    /// The reason, if poisoned.
    pub(crate) fn reason(&self) -> Option<&str> {
        self.why.as_deref()
    }

    /// The error a refused request gets, if poisoned.
    pub(crate) fn refusal(&self) -> Option<Error> {
        self.why
            .as_ref()
            .map(|why| Error::Crashed(format!("node refuses writes: {why}; reopen it to recover")))
    }

    /// `Err(Crashed)` naming the reason, if poisoned.
    pub(crate) fn check(&self) -> Result<()> {
        self.refusal().map_or(Ok(()), Err)
    }
}

type OnPanic = Box<dyn FnOnce(String)>;

thread_local! {
    /// The panic guard of the actor running on this thread, with the actor's name:
    /// taken (and run) by the first of a dropped [`Reply`] during the unwinding and
    /// the end of the unwinding.
    static ON_PANIC: RefCell<Option<(&'static str, OnPanic)>> = const { RefCell::new(None) };
}

/// Runs this thread's panic guard, if it has not run yet, with the panic's message
/// when known.
fn unwinding(message: Option<&str>) {
    if let Some((name, on_panic)) = ON_PANIC.with(|g| g.borrow_mut().take()) {
        on_panic(match message {
            Some(m) => format!("the {name} thread panicked: {m}"),
            None => format!("the {name} thread panicked (its message is on stderr)"),
        });
    }
}

/// Starts an actor thread named `flintlog-<name>` running `body`. If `body` panics,
/// `on_panic` gets a sentence naming the thread (to poison the node) before any
/// request the thread held is answered, and the panic then goes on, so that joining
/// the thread reports it.
pub(crate) fn spawn_actor(
    name: &'static str,
    on_panic: impl FnOnce(String) + Send + 'static,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("flintlog-{name}"))
        .spawn(move || {
            ON_PANIC.with(|g| *g.borrow_mut() = Some((name, Box::new(on_panic))));
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                unwinding(Some(&what));
                std::panic::resume_unwind(panic);
            }
        })
}

/// Puts the calling thread below the log's threads on the CPU (nice 10): a snapshot,
/// a compaction or an upload can always wait; an append waiting for a core shows in
/// its latency. (A snapshot's encoding goes lower still, under `SCHED_IDLE`, on a
/// thread that does no file operation: see `snapshot::encode`.)
pub(crate) fn below_the_log() {
    // SAFETY: setpriority on this thread's own id; no memory is touched.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
    if rc != 0 {
        log::debug!(
            "could not lower a background thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The panic guard of an actor that reports to the appender: poisons the node.
pub(crate) fn poison_on_panic(
    feedback: &crossbeam_channel::Sender<Feedback>,
) -> impl FnOnce(String) + Send + 'static {
    let mut poison = Poison::reporting_to(feedback.clone());
    move |why| {
        poison.set(why);
    }
}

/// The most [`Feedback`] messages ever waiting at once. The channel that carries them
/// stays unbounded, because its senders sit downstream of its reader (a full channel
/// would let the snapshotter wait on the appender while the appender waits on it),
/// but what it holds is bounded by construction: one snapshot and one compaction in
/// flight at a time (a `SnapshotDurable`; a `Fence` and a `Compacted`), and at most
/// two poisonings by each of the snapshotter, compactor and uploader (a failed sync,
/// a panic). Its readers check the bound on every message (`debug_assert`, so every
/// test run checks it).
pub(crate) const FEEDBACK_MAX: usize = 9;

/// News from the snapshotter and the compactor to the appender.
pub(crate) enum Feedback {
    /// A snapshot is durable.
    SnapshotDurable {
        snapshot: SnapshotFile,
        duration_ms: u64,
        /// Every snapshot kept on disk after retention, as (offset, file), oldest first.
        on_disk: Vec<(Offset, String)>,
        /// The writes the snapshot was made from, handed back to the appender, which
        /// allocated them, to be freed a part per batch: freed on the snapshotter's
        /// thread, the allocator gave them back to the appender's all at once.
        spent: Vec<crate::core::kv::WrittenShard>,
    },
    /// A sync failed in another actor: the node must stop acknowledging writes.
    Poisoned(String),
    /// The compactor is about to free segments below `first_offset` (already durable
    /// in the log's metadata): reads below it must stop before their files shrink.
    /// The appender answers on `ack` once no later read can reach them.
    Fence {
        first_offset: Offset,
        ack: crossbeam_channel::Sender<()>,
    },
    /// Segments were deleted, blocks freed and the first offset moved.
    Compacted {
        first_offset: Offset,
        removed: Vec<Offset>,
        /// The segment whose blocks below the first offset were freed, and the space
        /// it occupies since.
        resized: Option<(Offset, u64)>,
        bytes_freed: u64,
    },
}

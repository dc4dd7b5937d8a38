//! Answering a synced batch off the append path.
//!
//! Each answer wakes the thread waiting for it, a system call apiece: for a batch of
//! dozens of writers that is as long as the sync itself. Handing the batch's answers to
//! this thread lets the appender take the next batch and start its sync at once, so the
//! wake-ups overlap the disk's work instead of following it.
//!
//! Answers keep their order: a batch is answered here in the order batches were
//! handed over, and the appender answers one itself only when nothing handed over is
//! still being answered. A batch that wakes few threads is answered in place: handing
//! it over would cost a wake-up of its own (answers that only queue a message for an
//! actor that is awake anyway, as the router's are under load, wake nobody).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::Sender;

use super::batch::Pending;
use crate::error::Result;

/// Batches whose answers wake at most this many threads are answered by the appender
/// itself.
const ANSWER_IN_PLACE_MAX: usize = 8;

/// Batches handed over and not yet taken by the replier: beyond this the appender
/// waits for it (it sits downstream of the appender, and answering never waits on the
/// appender, so the wait always ends). Sixteen batches behind is a replier far slower
/// than the disk: the appender had better slow down than queue answers without end.
const BATCHES_QUEUED: usize = 16;

type Answers = (Vec<Pending>, Result<()>);

pub(super) struct Replier {
    tx: Option<Sender<Answers>>,
    /// Batches handed over and not yet fully answered.
    queued: Arc<AtomicUsize>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl Replier {
    /// Starts the thread; without one (it could not be started), the appender answers
    /// everything itself.
    pub(super) fn start() -> Replier {
        let (tx, rx) = crossbeam_channel::bounded::<Answers>(BATCHES_QUEUED);
        let queued = Arc::new(AtomicUsize::new(0));
        let count = queued.clone();
        let spawned = std::thread::Builder::new()
            .name("flintlog-replier".into())
            .spawn(move || {
                for (pending, outcome) in rx {
                    for p in pending {
                        p(&outcome);
                    }
                    count.fetch_sub(1, Ordering::Release);
                }
            });
        match spawned {
            Ok(join) => Replier {
                tx: Some(tx),
                queued,
                join: Some(join),
            },
            Err(e) => {
                log::warn!("could not start the replier thread ({e}); the appender answers");
                Replier {
                    tx: None,
                    queued,
                    join: None,
                }
            }
        }
    }

    /// Answers a batch whose outcome is known (written, synced and applied, or failed);
    /// `waking` of its answers wake a thread that waits for them.
    pub(super) fn answer(&self, pending: Vec<Pending>, waking: usize, outcome: Result<()>) {
        if pending.is_empty() {
            return;
        }
        let idle = self.queued.load(Ordering::Acquire) == 0;
        match &self.tx {
            Some(tx) if !(idle && waking <= ANSWER_IN_PLACE_MAX) => {
                self.queued.fetch_add(1, Ordering::AcqRel);
                if let Err(back) = tx.send((pending, outcome)) {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    let (pending, outcome) = back.into_inner();
                    answer_here(pending, &outcome);
                }
            }
            _ => answer_here(pending, &outcome),
        }
    }

    /// Waits until every batch handed over is answered: what the appender answers next
    /// itself then follows them.
    pub(super) fn wait_idle(&self) {
        let gone = || self.join.as_ref().is_none_or(|j| j.is_finished());
        while self.queued.load(Ordering::Acquire) != 0 && !gone() {
            std::thread::yield_now();
        }
    }
}

fn answer_here(pending: Vec<Pending>, outcome: &Result<()>) {
    for p in pending {
        p(outcome);
    }
}

impl Drop for Replier {
    /// Every answer handed over is delivered before the appender is gone.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(join) = self.join.take()
            && join.join().is_err()
        {
            log::error!("the replier thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::error::Error;

    /// (batch, answer, whether it was a success), in the order answered.
    type Seen = Arc<Mutex<Vec<(usize, usize, bool)>>>;

    /// A batch of `n` answers that record themselves in `seen`.
    fn batch(n: usize, id: usize, seen: &Seen) -> Vec<Pending> {
        (0..n)
            .map(|i| {
                let seen = seen.clone();
                Box::new(move |r: &Result<()>| seen.lock().unwrap().push((id, i, r.is_ok())))
                    as Pending
            })
            .collect()
    }

    #[test]
    fn every_answer_carries_its_batch_outcome_in_batch_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let replier = Replier::start();
        // The first batch holds the thread until the small ones after it are handed in:
        // they must wait behind it, not be answered in place ahead of it.
        let (open, gate) = crossbeam_channel::bounded::<()>(0);
        let mut first = batch(ANSWER_IN_PLACE_MAX + 1, 0, &seen);
        first.insert(
            0,
            Box::new(move |_: &Result<()>| {
                let _ = gate.recv();
            }),
        );
        let n = first.len();
        replier.answer(first, n, Ok(()));
        let sizes = [1, 2, 30, 1, ANSWER_IN_PLACE_MAX + 1, 2, 1, 64];
        for (id, &n) in sizes.iter().enumerate() {
            let outcome = if id % 3 == 1 {
                Err(Error::Crashed("injected".into()))
            } else {
                Ok(())
            };
            replier.answer(batch(n, id + 1, &seen), n, outcome);
        }
        open.send(()).unwrap();
        replier.wait_idle();
        // And once idle, a small batch is answered in place, in order still.
        replier.answer(batch(1, sizes.len() + 1, &seen), 1, Ok(()));
        drop(replier);
        let seen = seen.lock().unwrap();
        let mut expected = vec![];
        for i in 0..=ANSWER_IN_PLACE_MAX {
            expected.push((0, i, true));
        }
        for (id, &n) in sizes.iter().enumerate() {
            expected.extend((0..n).map(|i| (id + 1, i, id % 3 != 1)));
        }
        expected.push((sizes.len() + 1, 0, true));
        assert_eq!(*seen, expected);
    }
}

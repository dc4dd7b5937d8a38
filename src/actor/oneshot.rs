//! The channel a blocking caller waits on for its one answer.
//!
//! A `crossbeam-channel` receiver that finds its channel empty spins and yields the
//! CPU about a dozen times (`sched_yield`) before it sleeps. With one caller that costs
//! little; with dozens of callers waiting on two cores for answers that take a sync
//! to come, their yields keep a run queue full of threads with nothing to do, and the
//! appender, which has the work, gets a share of the CPU like each of them (measured:
//! 64 callers took two thirds of both cores, the appender a tenth). This receiver
//! sleeps at once. So does a caller waiting alone: a busy-wait of up to 250 µs for
//! its answer, once measured to help one writer, made it 10-50% slower on another
//! machine of the same kind (the answer follows an fdatasync of about 30 µs there).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;

struct Shared<T> {
    /// The answer; `None` inside once taken, or if the sender went away without one.
    value: Mutex<Option<T>>,
    /// Set once the answer is in `value`, or the sender is gone.
    done: AtomicBool,
    /// The thread that made the channel, the only one that receives.
    waiter: Thread,
}

/// The sending half: sends at most once; dropping it unsent disconnects.
pub(crate) struct Sender<T> {
    shared: Option<Arc<Shared<T>>>,
}

/// The receiving half, owned by the thread that called [`channel`].
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// What the receiver found: the answer, or that none will come.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received<T> {
    Value(T),
    Empty,
    Disconnected,
}

/// A channel for one value, received by the calling thread.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        value: Mutex::new(None),
        done: AtomicBool::new(false),
        waiter: std::thread::current(),
    });
    (
        Sender {
            shared: Some(shared.clone()),
        },
        Receiver { shared },
    )
}

impl<T> Sender<T> {
    /// Delivers `value` and wakes the receiver.
    pub(crate) fn send(mut self, value: T) {
        if let Some(shared) = self.shared.take() {
            *shared.value.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
            finish(&shared);
        }
    }
}

/// Marks the channel finished and wakes the receiver. The waiter handle is the
/// sender's own reference: the receiver may return and drop its half at once.
fn finish<T>(shared: &Shared<T>) {
    shared.done.store(true, Ordering::Release);
    shared.waiter.unpark();
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            finish(&shared);
        }
    }
}

impl<T> Receiver<T> {
    /// The answer if it has come, without waiting.
    pub(crate) fn try_recv(&self) -> Received<T> {
        if !self.shared.done.load(Ordering::Acquire) {
            return Received::Empty;
        }
        match self
            .shared
            .value
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(v) => Received::Value(v),
            None => Received::Disconnected,
        }
    }

    /// Sleeps until the answer comes; `None` if the sender went away without one.
    pub(crate) fn recv(&self) -> Option<T> {
        debug_assert_eq!(
            std::thread::current().id(),
            self.shared.waiter.id(),
            "only the thread that made the channel receives on it"
        );
        loop {
            match self.try_recv() {
                Received::Value(v) => return Some(v),
                Received::Disconnected => return None,
                // A wake-up meant for an earlier park, or none at all: look again.
                Received::Empty => std::thread::park(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Makes a channel on a thread of its own, hands its sender to `with_sender`, and
    /// returns what that thread's `recv` gave, or `None` if it was still waiting after
    /// ten seconds (a lost wake-up fails the test instead of hanging it).
    fn received(with_sender: impl FnOnce(Sender<u32>) + Send + 'static) -> Option<Option<u32>> {
        let (out, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (tx, rx) = channel();
            with_sender(tx);
            let _ = out.send(rx.recv());
        });
        result.recv_timeout(Duration::from_secs(10)).ok()
    }

    fn later(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            f();
        });
    }

    #[test]
    fn the_value_sent_from_another_thread_wakes_the_receiver() {
        for _ in 0..200 {
            assert_eq!(
                received(|tx| drop(std::thread::spawn(move || tx.send(7)))),
                Some(Some(7))
            );
        }
        assert_eq!(received(|tx| later(move || tx.send(8))), Some(Some(8)));
    }

    #[test]
    fn a_value_is_taken_once() {
        let (tx, rx) = channel();
        assert_eq!(rx.try_recv(), Received::Empty);
        tx.send(5u32);
        assert_eq!(rx.try_recv(), Received::Value(5));
        assert_eq!(rx.try_recv(), Received::Disconnected, "taken already");
    }

    #[test]
    fn a_sender_dropped_unsent_wakes_the_receiver_with_nothing() {
        assert_eq!(received(|tx| later(move || drop(tx))), Some(None));
    }

    #[test]
    fn a_stale_wake_up_does_not_end_the_wait() {
        let got = received(|tx| {
            // A token left over from elsewhere: the first park returns at once.
            std::thread::current().unpark();
            later(move || tx.send(3));
        });
        assert_eq!(got, Some(Some(3)));
    }
}

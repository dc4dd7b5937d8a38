//! Applying a batch to the state while its fdatasync runs.
//!
//! Under `--fsync always` the appender waits on the disk once a batch is written; the
//! batch's changes to the state (inserts into a persistent map of up to millions of
//! keys: as much CPU as the sync's own share) used to follow that wait. This thread
//! applies them during it: the appender hands over the state and the batch by value,
//! syncs, and takes the state back before it answers anyone, so every answer still
//! follows both the sync and the apply, and nothing else ever sees the state while it
//! is away. The thread records what each change replaced: when the sync fails, the
//! batch is taken back out, so a poisoned node's reads still see only what was durable. A batch whose apply is short (few entries, or a small map) is applied in
//! place: handing it over costs a wake-up of the thread, a few microseconds.

use crossbeam_channel::{Receiver, Sender};

use crate::core::kv::{KvState, Undo};

/// Work below which a batch is applied in place, in entries times the depth of the
/// map (each insert walks it from the root).
const APPLY_ASIDE_WORK: usize = 64;

/// Whether applying `entries` to a map of `keys` keys is worth handing over.
pub(super) fn worth_handing_over(entries: usize, keys: usize) -> bool {
    let depth = (usize::BITS - keys.leading_zeros()) as usize + 1;
    entries.saturating_mul(depth) >= APPLY_ASIDE_WORK
}

type Work = (KvState, Vec<Vec<u8>>);

pub(super) struct Applier {
    tx: Option<Sender<Work>>,
    rx: Receiver<(KvState, Undo)>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl Applier {
    /// Starts the thread; `None` if it could not be started (the appender then applies
    /// every batch itself).
    pub(super) fn start() -> Option<Applier> {
        let (tx, work) = crossbeam_channel::bounded::<Work>(1);
        let (done, rx) = crossbeam_channel::bounded::<(KvState, Undo)>(1);
        let spawned = std::thread::Builder::new()
            .name("flintlog-apply".into())
            .spawn(move || {
                for (mut state, payloads) in work {
                    let mut undo = Undo::default();
                    for payload in &payloads {
                        state.apply_recording(payload, &mut undo);
                    }
                    drop(payloads);
                    if done.send((state, undo)).is_err() {
                        break;
                    }
                }
            });
        match spawned {
            Ok(join) => Some(Applier {
                tx: Some(tx),
                rx,
                join: Some(join),
            }),
            Err(e) => {
                log::warn!("could not start the apply thread ({e}); the appender applies");
                None
            }
        }
    }

    /// Applies `payloads` to `state` on the thread, around `meanwhile` (the sync):
    /// returns the state with the batch applied, what takes it back out, and what
    /// `meanwhile` returned.
    pub(super) fn around<T>(
        &self,
        state: KvState,
        payloads: Vec<Vec<u8>>,
        meanwhile: impl FnOnce() -> T,
    ) -> (KvState, Undo, T) {
        self.tx
            .as_ref()
            .expect("running")
            .send((state, payloads))
            .expect("the apply thread runs while the appender does");
        let out = meanwhile();
        let (state, undo) = self
            .rx
            .recv()
            .expect("the apply thread hands the state back");
        (state, undo, out)
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(join) = self.join.take()
            && join.join().is_err()
        {
            log::error!("the apply thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_long_applies_are_handed_over() {
        assert!(
            !worth_handing_over(30, 1),
            "one key: a few hundred nanoseconds"
        );
        assert!(!worth_handing_over(2, 1 << 20));
        assert!(worth_handing_over(21, 700_000));
        assert!(worth_handing_over(64, 0));
    }

    #[test]
    fn the_state_comes_back_with_the_batch_applied_in_order() {
        let applier = Applier::start().expect("a thread");
        let mut state = KvState::default();
        state.apply(b"set a=0");
        let batch: Vec<Vec<u8>> = ["set a=1", "set b=2", "del a", "set a=3", "noise"]
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        let mut expected = state.clone();
        for p in &batch {
            expected.apply(p);
        }
        let before = state.clone();
        let (mut state, undo, ran) = applier.around(state, batch, || 7);
        assert_eq!(ran, 7);
        assert_eq!(state, expected);
        assert_eq!(state.get("a").map(|v| &**v), Some("3"));
        assert_eq!(state.other_payloads, 1);
        state.undo(undo);
        assert_eq!(state, before, "taken back out");
    }
}

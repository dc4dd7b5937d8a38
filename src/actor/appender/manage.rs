//! The appender's side of the log-management policy: gathering the inputs of the
//! pure decisions in `core::policy` and carrying them out (automatic snapshots and
//! compactions), and answering `settle`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::*;

/// The appender's side of the log-management policy.
pub(super) struct Auto {
    pub(super) policy: Policy,
    pub(super) seed: u64,
    /// Snapshots cut since the node opened: each draws its own jittered thresholds.
    pub(super) round: u64,
    pub(super) thresholds: Thresholds,
    /// Entries and log bytes since the last snapshot cut.
    pub(super) entries: u64,
    pub(super) bytes: u64,
    pub(super) last_cut: Instant,
    /// An automatic snapshot is being written.
    pub(super) busy: Arc<AtomicBool>,
    /// An automatic compaction is under way.
    pub(super) compacting: Arc<AtomicBool>,
    /// A compaction the policy asked for after a durable snapshot.
    pub(super) compact_due: Option<Offset>,
    /// Snapshots on disk (offset, file), oldest first.
    pub(super) on_disk: Vec<(Offset, String)>,
    /// Size and time of the snapshots that became durable (or were loaded) here.
    pub(super) known: HashMap<Offset, (u64, Option<Instant>)>,
}

impl Auto {
    pub(super) fn progress(&self, now: Instant) -> Progress {
        Progress {
            entries: self.entries,
            bytes: self.bytes,
            age_ms: now.saturating_duration_since(self.last_cut).as_millis() as u64,
        }
    }

    /// A snapshot was cut at `now`: progress starts again, with new thresholds.
    pub(super) fn cut(&mut self, now: Instant) {
        self.entries = 0;
        self.bytes = 0;
        self.last_cut = now;
        self.round += 1;
        self.thresholds = self.policy.thresholds(self.seed, self.round);
    }
}

impl Appender {
    /// Carries out the log-management policy: a compaction it asked for after a
    /// durable snapshot, then a snapshot if a trigger fires. Called after every batch
    /// and on a timer.
    pub(super) fn manage(&mut self) {
        self.start_due_work();
        self.answer_settled();
    }

    /// Answers the callers of `settle` once the policy has nothing in flight or due
    /// (or the node is poisoned: it starts nothing more).
    pub(super) fn answer_settled(&mut self) {
        // The flags first, then the feedback: the snapshotter and the compactor send
        // their news before their reply clears the flag, so once a flag reads clear,
        // the news it follows is in the channel (a compaction it makes due included).
        let idle = !(self.auto.busy.load(Ordering::Acquire)
            || self.auto.compacting.load(Ordering::Acquire));
        self.drain_feedback();
        let quiet = self.poison.reason().is_some() || (idle && self.auto.compact_due.is_none());
        if quiet {
            for reply in self.settling.drain(..) {
                reply.send(Ok(()));
            }
        }
    }

    /// With compaction waiting for the store: once a newer chain is uploaded, the
    /// policy's compaction behind it is due.
    fn compact_after_uploads(&mut self) {
        let Some(uploader) = self.uploader.as_ref().filter(|_| self.compact_after_upload) else {
            return;
        };
        let uploaded = uploader.uploaded_index();
        if uploaded <= self.upload_seen || !self.auto.policy.auto_compact {
            return;
        }
        self.upload_seen = uploaded;
        let behind = self
            .latest_snapshot
            .as_ref()
            .map_or(Offset::ZERO, |s| s.offset)
            .min(Offset::new(uploaded.unwrap_or(0)));
        if let Some(at) = policy::compaction_target(
            behind,
            self.auto.policy.trailing_entries,
            self.log.first_offset(),
        ) {
            self.auto.compact_due = Some(self.auto.compact_due.map_or(at, |d| d.max(at)));
        }
    }

    pub(super) fn start_due_work(&mut self) {
        if self.poison.reason().is_some() {
            return;
        }
        self.drain_feedback();
        self.compact_after_uploads();
        // One automatic compaction at a time: the flag says whether one is in flight.
        if !self.auto.compacting.load(Ordering::Acquire)
            && let Some(at) = self.auto.compact_due.take()
        {
            log::info!("compacting to offset {at} after a durable snapshot");
            self.auto.compacting.store(true, Ordering::Release);
            let compacting = self.auto.compacting.clone();
            self.compact(
                at,
                Reply::new(move |r: Result<Compaction>| {
                    compacting.store(false, Ordering::Release);
                    match r {
                        Ok(c) => log::info!(
                            "automatic compaction to {at}: {} bytes freed",
                            c.bytes_freed
                        ),
                        Err(e) => log::warn!("automatic compaction to {at} failed: {e}"),
                    }
                }),
            );
        }
        if self.auto.busy.load(Ordering::Acquire) {
            return;
        }
        let now = self.clock.now();
        let Some(trigger) = policy::due(&self.auto.thresholds, &self.auto.progress(now)) else {
            return;
        };
        match self.cut() {
            Ok((offset, state, changed)) => {
                log::info!(
                    "snapshot due ({} trigger): cutting at offset {offset}",
                    trigger.name()
                );
                self.auto.cut(now);
                self.auto.busy.store(true, Ordering::Release);
                let busy = self.auto.busy.clone();
                self.forward(SnapshotterMsg::Snapshot {
                    offset,
                    state,
                    changed,
                    mode: SnapshotMode::Auto,
                    policy: self.auto.policy,
                    reply: Reply::new(move |r| {
                        busy.store(false, Ordering::Release);
                        if let Err(e) = r {
                            log::warn!("automatic snapshot at {offset} failed: {e}");
                        }
                    }),
                });
            }
            Err(e) => log::warn!("automatic snapshot not cut: {e}"),
        }
    }
}

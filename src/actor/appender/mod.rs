//! The appender: owns the log and the state machine; group commit.
//!
//! The loop takes one request, then every request already queued (up to a batch
//! limit), stages the writes among them into one buffer, writes it with one positional
//! write, syncs once (under `--fsync always`), applies the batch to the state machine,
//! and only then answers. Requests that arrive during the sync form the next batch:
//! that is group commit, with no timer. A large batch's answers (each a wake-up of the
//! thread waiting for it) are handed to a replier thread, so that the next batch's
//! sync starts while they go out.
//!
//! Reads and compare-and-set inside a batch see the batch's own earlier writes through
//! a small overlay; their answers wait for the batch's sync like everything else, so a
//! read never returns a value that is not yet durable. Requests that look at the log
//! or cut the state (log reads, info, snapshot, compaction, status) first flush the
//! batch before them.
//!
//! Architecture Invariant: the state machine only ever holds durable entries (under
//! `--fsync always`), so a snapshot cut from it never covers an entry the log could
//! lose. Under the other policies a cut first syncs the log.
//!
//! Architecture Invariant: after a failed write or sync nothing more is acknowledged:
//! the appender is poisoned and refuses writes until the node is reopened.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// How long the appender busy-waits for the next request before it sleeps.
const SPIN_FOR_REQUEST: Duration = Duration::from_micros(50);

/// The appender keeps the writes since the last cut for at most this many keys, or
/// half the state's keys if more.
const WRITTEN_MAX: usize = 4096;

/// Entries of spent writes freed after each batch, at most (and one map at least).
const FREE_PER_BATCH: usize = 4096;

/// How often the appender checks the policy's age trigger when no request comes.
const POLICY_TICK: Duration = Duration::from_millis(100);

mod applier;
mod batch;
mod handle;
mod manage;
mod replier;
mod status;

use applier::Applier;
use batch::Batch;
pub(crate) use handle::AppenderMsg;
pub use handle::{AppenderHandle, CasPredicate};
use manage::Auto;
use replier::Replier;

use crossbeam_channel::{Receiver, Sender, select};

use crate::actor::snapshotter::SnapshotterMsg;
use crate::actor::uploader::UploaderHandle;
use crate::actor::{Feedback, Poison, Reply, spawn_actor};
use crate::clock::Clock;
use crate::config::{Config, FsyncPolicy};
use crate::core::kv::{self, KvState, Written};
use crate::core::policy::{self, Policy, Progress, SnapshotMode, Thresholds};
use crate::core::position::Offset;
use crate::error::{Error, Result};
use crate::fs::is_sync_failure;
use crate::snapshot::SnapshotFile;
use crate::types::{
    Compaction, Counters, Info, KeptSnapshot, Management, RecoveryReport, SegmentList, Status,
};
use crate::wal::{Log, RollError, record};

pub(crate) struct Appender {
    log: Log,
    state: KvState,
    fsync: FsyncPolicy,
    payload_bytes_max: u64,
    batch_entries_max: usize,
    inbox: Receiver<AppenderMsg>,
    feedback: Receiver<Feedback>,
    snapshotter: Sender<SnapshotterMsg>,
    poison: Poison,
    counters: Counters,
    /// The clock the policy reads.
    clock: Arc<dyn Clock>,
    /// Callers of `settle` waiting for the policy's work to finish.
    settling: Vec<Reply<()>>,
    latest_snapshot: Option<SnapshotFile>,
    last_snapshot_ms: Option<u64>,
    recovery: RecoveryReport,
    batch: Batch,
    /// Answers synced batches while the appender goes on to the next.
    replier: Replier,
    /// Applies a batch while its fdatasync runs (under `--fsync always`).
    applier: Option<Applier>,
    auto: Auto,
    /// The writes since the last cut (key and last value): handed with the next cut to
    /// the snapshotter, which writes a delta from them instead of diffing the whole map.
    /// `None` when deltas are off, or when the writes grew past [`WRITTEN_MAX`]: a delta
    /// that large would not be cut, and the memory is better returned.
    changed: Option<Written>,
    /// Writes given up on, and those a snapshot was made from, freed a part per batch
    /// (see [`FREE_PER_BATCH`]).
    spent: Vec<kv::WrittenShard>,
    /// The uploader, if the node has a snapshot store (its status is in `wal_status`).
    uploader: Option<UploaderHandle>,
    /// Free log only behind what the store holds: the index of the newest chain
    /// uploaded, as last seen.
    compact_after_upload: bool,
    upload_seen: Option<u64>,
}

pub(crate) struct AppenderParts {
    pub log: Log,
    pub state: KvState,
    pub config: Config,
    pub snapshotter: Sender<SnapshotterMsg>,
    pub feedback: Receiver<Feedback>,
    pub recovery: RecoveryReport,
    pub latest_snapshot: Option<SnapshotFile>,
    /// The snapshot chain recovery loaded, the full snapshot first.
    pub loaded_chain: Vec<SnapshotFile>,
    pub snapshots_on_disk: Vec<(Offset, String)>,
    pub uploader: Option<UploaderHandle>,
}

impl Appender {
    pub(crate) fn spawn(
        parts: AppenderParts,
    ) -> std::io::Result<(AppenderHandle, std::thread::JoinHandle<()>)> {
        let (tx, inbox) = crossbeam_channel::bounded(parts.config.inbox_capacity);
        let actor = Appender {
            log: parts.log,
            state: parts.state,
            fsync: parts.config.fsync,
            payload_bytes_max: parts.config.payload_bytes_max,
            batch_entries_max: parts.config.batch_entries_max,
            inbox,
            feedback: parts.feedback,
            snapshotter: parts.snapshotter,
            poison: Poison::default(),
            clock: parts.config.clock.clone(),
            settling: Vec::new(),
            counters: Counters::default(),
            latest_snapshot: parts.latest_snapshot.clone(),
            last_snapshot_ms: None,
            recovery: parts.recovery,
            batch: Batch::default(),
            replier: Replier::start(),
            applier: (parts.config.fsync == FsyncPolicy::Always)
                .then(Applier::start)
                .flatten(),
            changed: (parts.config.policy.max_chain > 0).then(Written::new),
            spent: Vec::new(),
            compact_after_upload: parts.uploader.is_some()
                && parts
                    .config
                    .snapshot_store
                    .as_ref()
                    .is_some_and(|s| s.compact_after_upload),
            uploader: parts.uploader,
            upload_seen: None,
            auto: Auto {
                policy: parts.config.policy,
                seed: parts.config.jitter_seed,
                round: 0,
                thresholds: parts.config.policy.thresholds(parts.config.jitter_seed, 0),
                entries: 0,
                bytes: 0,
                last_cut: parts.config.clock.now(),
                busy: Arc::new(AtomicBool::new(false)),
                compacting: Arc::new(AtomicBool::new(false)),
                compact_due: None,
                on_disk: parts.snapshots_on_disk,
                known: parts
                    .loaded_chain
                    .iter()
                    .map(|s| (s.offset, (s.size_bytes, None)))
                    .collect(),
            },
        };
        let handle = AppenderHandle {
            tx,
            payload_bytes_max: parts.config.payload_bytes_max,
        };
        // The appender's inbox closes with it: every request then gets error 13.
        let on_panic = |why: String| log::error!("{why}; the node answers nothing more");
        let join = spawn_actor("appender", on_panic, move || actor.run())?;
        Ok((handle, join))
    }

    fn run(mut self) {
        let ticker = match self.fsync {
            FsyncPolicy::Batch(every) => crossbeam_channel::tick(every),
            _ => crossbeam_channel::never(),
        };
        let policy_tick = crossbeam_channel::tick(POLICY_TICK);
        loop {
            self.drain_feedback();
            let first = if let Some(msg) = self.spin_for_request() {
                msg
            } else {
                select! {
                    recv(self.inbox) -> msg => match msg {
                        Ok(msg) => msg,
                        Err(_) => break,
                    },
                    recv(self.feedback) -> ev => {
                        if let Ok(ev) = ev {
                            self.on_feedback(ev);
                        }
                        self.answer_settled();
                        continue;
                    }
                    recv(ticker) -> _ => {
                        self.periodic_sync();
                        continue;
                    }
                    recv(policy_tick) -> _ => {
                        self.manage();
                        continue;
                    }
                }
            };
            let mut stop = self.handle(first);
            let mut taken = 1;
            while !stop && taken < self.batch_entries_max {
                match self.inbox.try_recv() {
                    Ok(msg) => {
                        stop = self.handle(msg);
                        taken += 1;
                    }
                    Err(_) => break,
                }
            }
            self.flush();
            if stop {
                break;
            }
            self.manage();
        }
        self.flush();
        if self.poison.reason().is_none()
            && self.log.has_unsynced()
            && let Err(e) = self.log.sync()
        {
            log::error!("final sync of the log failed: {e}");
        }
        log::debug!("appender stopped");
    }

    /// The next request if one arrives within [`SPIN_FOR_REQUEST`] of busy-waiting: a
    /// client that was just answered usually sends again within microseconds, and
    /// catching that without sleeping saves a wake-up on every commit.
    fn spin_for_request(&self) -> Option<AppenderMsg> {
        let started = Instant::now();
        while started.elapsed() < SPIN_FOR_REQUEST {
            match self.inbox.try_recv() {
                Ok(msg) => return Some(msg),
                Err(crossbeam_channel::TryRecvError::Empty) => std::hint::spin_loop(),
                Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
            }
            if !self.feedback.is_empty() {
                return None;
            }
        }
        None
    }

    fn drain_feedback(&mut self) {
        while let Ok(ev) = self.feedback.try_recv() {
            self.on_feedback(ev);
        }
    }

    fn on_feedback(&mut self, ev: Feedback) {
        debug_assert!(
            self.feedback.len() < crate::actor::FEEDBACK_MAX,
            "{} feedback messages waiting: more than the bound allows",
            self.feedback.len() + 1
        );
        match ev {
            Feedback::SnapshotDurable {
                snapshot,
                duration_ms,
                on_disk,
                spent,
            } => {
                self.spent.extend(spent);
                self.counters.snapshots += 1;
                self.last_snapshot_ms = Some(duration_ms);
                let auto = &mut self.auto;
                auto.known.insert(
                    snapshot.offset,
                    (snapshot.size_bytes, Some(self.clock.now())),
                );
                auto.known
                    .retain(|o, _| on_disk.iter().any(|(d, _)| d == o));
                auto.on_disk = on_disk;
                // With compaction waiting for the store, the uploads make it due.
                if auto.policy.auto_compact
                    && !self.compact_after_upload
                    && let Some(at) = policy::compaction_target(
                        snapshot.offset,
                        auto.policy.trailing_entries,
                        self.log.first_offset(),
                    )
                {
                    auto.compact_due = Some(auto.compact_due.map_or(at, |d| d.max(at)));
                }
                self.latest_snapshot = Some(snapshot);
            }
            Feedback::Poisoned(why) => {
                self.poison(why);
            }
            Feedback::Fence { first_offset, ack } => {
                self.log.compacted(first_offset, &[], None);
                let _ = ack.send(());
            }
            Feedback::Compacted {
                first_offset,
                removed,
                resized,
                bytes_freed,
            } => {
                self.counters.compactions += 1;
                self.counters.bytes_freed += bytes_freed;
                self.log.compacted(first_offset, &removed, resized);
            }
        }
    }

    /// `at`, or less when compaction waits for the store: entries from the newest
    /// chain uploaded on stay.
    fn store_bound(&self, at: Offset) -> Offset {
        match &self.uploader {
            Some(u) if self.compact_after_upload => {
                let uploaded = Offset::new(u.uploaded_index().unwrap_or(0));
                if uploaded < at {
                    log::debug!("compaction to {at} held at {uploaded}: the store has no more");
                }
                // With the log shipped, entries not yet in the store stay too.
                let shipped = u.shipped_end().map_or(at, Offset::new);
                at.min(uploaded).min(shipped)
            }
            _ => at,
        }
    }

    fn periodic_sync(&mut self) {
        if self.poison.reason().is_none() && self.log.has_unsynced() {
            self.counters.fsyncs += 1;
            if let Err(e) = self.log.sync() {
                self.poison(format!("periodic fsync of the log failed: {e}"));
            }
        }
    }

    fn poison(&mut self, why: String) -> Error {
        self.poison.set(why)
    }

    fn refuse_if_poisoned(&self) -> Result<()> {
        self.poison.check()
    }

    /// Handles one request; returns true to stop.
    fn handle(&mut self, msg: AppenderMsg) -> bool {
        // News sent before an answer the client saw precedes the client's next request.
        self.drain_feedback();
        match msg {
            AppenderMsg::Append { payload, reply } => {
                let staged = self.stage(payload);
                self.defer(reply, staged);
            }
            AppenderMsg::KvSet { key, value, reply } => {
                let staged = self.stage(kv::set_payload(&key, &value).into_bytes());
                self.defer(reply, staged);
            }
            AppenderMsg::KvCas {
                key,
                expected,
                value,
                reply,
            } => {
                let outcome = match self.current(&key) {
                    None => Err(Error::NotFound(format!("key {key} does not exist"))),
                    Some(cur) if !expected(&cur) => Err(Error::PreconditionFailed(format!(
                        "key {key} does not hold the expected value (it holds {cur})"
                    ))),
                    Some(_) => self.stage(kv::set_payload(&key, &value).into_bytes()),
                };
                self.defer(reply, outcome);
            }
            AppenderMsg::KvGet { key, reply } => {
                let outcome = self
                    .current(&key)
                    .map(|v| v.to_string())
                    .ok_or_else(|| Error::NotFound(format!("key {key} does not exist")));
                self.defer(reply, outcome);
            }
            other => {
                self.flush();
                // Its answer follows those of the writes before it.
                self.replier.wait_idle();
                return self.handle_barrier(other);
            }
        }
        false
    }

    fn handle_barrier(&mut self, msg: AppenderMsg) -> bool {
        match msg {
            AppenderMsg::Read { offset, reply } => reply.send(self.log.read(offset)),
            AppenderMsg::Info { reply } => reply.send(Ok(Info {
                entries: self.log.live_entries(),
                total_bytes: self.log.total_bytes(),
                fsynced: !self.log.has_unsynced(),
            })),
            AppenderMsg::Segments { reply } => {
                let segments = self.log.segment_infos();
                let active_segment = segments.last().expect("active segment").file.clone();
                reply.send(Ok(SegmentList {
                    segments,
                    active_segment,
                }));
            }
            AppenderMsg::SetSegmentBytesMax { bytes, reply } => {
                self.log.set_segment_bytes_max(bytes);
                reply.send(Ok(bytes));
            }
            AppenderMsg::Snapshot { mode, reply } => match self.cut() {
                Ok((offset, state, changed)) => {
                    self.auto.cut(self.clock.now());
                    self.forward(SnapshotterMsg::Snapshot {
                        offset,
                        state,
                        changed,
                        mode,
                        policy: self.auto.policy,
                        reply,
                    })
                }
                Err(e) => reply.send(Err(e)),
            },
            AppenderMsg::Settle { reply } => self.settling.push(reply),
            AppenderMsg::SetPolicy { update, reply } => match self.auto.policy.with(&update) {
                Ok(p) => {
                    let auto = &mut self.auto;
                    auto.policy = p;
                    auto.thresholds = p.thresholds(auto.seed, auto.round);
                    log::info!("log-management policy now {p:?}");
                    reply.send(Ok(p));
                }
                Err(e) => reply.send(Err(e)),
            },
            AppenderMsg::Compact { at, reply } => self.compact(at, reply),
            AppenderMsg::Status { reply } => reply.send(Ok(self.status())),
            AppenderMsg::Shutdown => return true,
            AppenderMsg::Append { .. }
            | AppenderMsg::KvSet { .. }
            | AppenderMsg::KvCas { .. }
            | AppenderMsg::KvGet { .. } => {
                unreachable!("batched requests are not barriers")
            }
        }
        false
    }

    fn forward(&mut self, msg: SnapshotterMsg) {
        // If the snapshotter is gone, the message's Reply answers Crashed on drop.
        if self.snapshotter.send(msg).is_err() {
            log::error!("snapshotter stopped; snapshot and compaction requests fail");
        }
    }

    fn compact(&mut self, at: Offset, reply: Reply<Compaction>) {
        let at = self.store_bound(at);
        let next = self.log.next_offset();
        if at > next {
            return reply.send(Err(Error::PreconditionFailed(format!(
                "cannot compact to offset {at}: the log ends at offset {next}"
            ))));
        }
        if at <= self.log.first_offset() {
            let live = self.log.live_entries();
            let snapshot_offset = self.latest_snapshot.as_ref().map_or(at, |s| s.offset);
            return reply.send(Ok(Compaction {
                snapshot_offset,
                entries_before: live,
                entries_after: live,
                bytes_freed: 0,
            }));
        }
        match self.cut() {
            Ok((offset, state, changed)) => {
                let segments = self.log.sealed_below(at);
                let start = self.log.start_at(at);
                self.forward(SnapshotterMsg::Compact {
                    at,
                    offset,
                    state,
                    changed,
                    policy: self.auto.policy,
                    next_offset: next,
                    segments,
                    start,
                    reply,
                });
            }
            Err(e) => reply.send(Err(e)),
        }
    }

    /// An immutable cut of the durable state: O(1), whatever the state's size.
    /// Returns the offset, the state and the writes since the previous cut (`None` if
    /// they were not all kept).
    fn cut(&mut self) -> Result<(Offset, KvState, Option<Written>)> {
        self.refuse_if_poisoned()?;
        if self.log.has_unsynced() {
            self.counters.fsyncs += 1;
            if let Err(e) = self.log.sync() {
                return Err(self.poison(format!("fsync of the log before a snapshot failed: {e}")));
            }
        }
        let next = (self.auto.policy.max_chain > 0).then(Written::new);
        let changed = std::mem::replace(&mut self.changed, next);
        Ok((self.log.next_offset(), self.state.clone(), changed))
    }
}

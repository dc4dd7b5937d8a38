//! The appender: owns the log and the state machine; group commit.
//!
//! The loop takes one request, then every request already queued (up to a batch
//! limit), stages the writes among them into one buffer, writes it with one positional
//! write, syncs once (under `--fsync always`), applies the batch to the state machine,
//! and only then answers. Requests that arrive during the sync form the next batch:
//! that is group commit, with no timer.
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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long the appender busy-waits for the next request before it sleeps.
const SPIN_FOR_REQUEST: Duration = Duration::from_micros(50);

/// The appender keeps the writes since the last cut for at most this many keys, or
/// half the state's keys if more.
const WRITTEN_MAX: usize = 4096;

/// How often the appender checks the policy's age trigger when no request comes.
const POLICY_TICK: Duration = Duration::from_millis(100);

/// Replay cost assumed before a recovery has measured one (from `make bench`: ~0.6 µs
/// per entry and per snapshot key on the reference machine).
const REPLAY_NS_DEFAULT: u64 = 600;

use crossbeam_channel::{Receiver, Sender, select};

use crate::actor::snapshotter::SnapshotterMsg;
use crate::actor::{Feedback, Poison, Reply, call, spawn_actor};
use crate::clock::Clock;
use crate::config::{Config, FsyncPolicy};
use crate::core::kv::{self, KvState, Written};
use crate::core::policy::{self, Policy, PolicyUpdate, Progress, SnapshotMode, Thresholds};
use crate::error::{Error, Result};
use crate::fs::is_sync_failure;
use crate::snapshot::SnapshotFile;
use crate::types::{
    Compaction, Counters, Info, KeptSnapshot, Management, ReadEntry, RecoveryReport, SegmentList,
    Status,
};
use crate::wal::{Log, RollError, record};

/// A predicate over the current value, for compare-and-set.
pub type CasPredicate = Box<dyn FnOnce(&str) -> bool + Send>;

pub(crate) enum AppenderMsg {
    Append {
        payload: Vec<u8>,
        reply: Reply<u64>,
    },
    Read {
        offset: u64,
        reply: Reply<ReadEntry>,
    },
    KvGet {
        key: String,
        reply: Reply<String>,
    },
    KvSet {
        key: String,
        value: String,
        reply: Reply<u64>,
    },
    KvCas {
        key: String,
        expected: CasPredicate,
        value: String,
        reply: Reply<u64>,
    },
    Info {
        reply: Reply<Info>,
    },
    Segments {
        reply: Reply<SegmentList>,
    },
    SetSegmentBytesMax {
        bytes: u64,
        reply: Reply<u64>,
    },
    Snapshot {
        mode: SnapshotMode,
        reply: Reply<SnapshotFile>,
    },
    Compact {
        at: u64,
        reply: Reply<Compaction>,
    },
    Status {
        reply: Reply<Status>,
    },
    SetPolicy {
        update: PolicyUpdate,
        reply: Reply<Policy>,
    },
    Settle {
        reply: Reply<()>,
    },
    Shutdown,
}

/// Handle to the appender: appends, reads, the key-value operations, and the log's
/// figures. Cheap to clone; every method blocks until the answer, and each has a
/// `_with` twin that takes a [`Reply`] and returns at once.
#[derive(Clone)]
pub struct AppenderHandle {
    pub(crate) tx: Sender<AppenderMsg>,
    payload_bytes_max: u64,
}

impl AppenderHandle {
    pub(crate) fn submit(&self, msg: AppenderMsg) {
        // On failure the message (and its Reply) is dropped, which answers Crashed.
        if self.tx.send(msg).is_err() {
            log::debug!("request sent to a stopped appender");
        }
    }

    fn check_payload(&self, len: usize) -> Result<()> {
        if len as u64 > self.payload_bytes_max {
            return Err(Error::InvalidArgument(format!(
                "payload of {len} bytes is over the limit of {} bytes",
                self.payload_bytes_max
            )));
        }
        Ok(())
    }

    /// Appends `payload`; returns its offset once durable under the fsync policy.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] over the payload limit; [`Error::Unavailable`] when
    /// nothing was written (disk full); [`Error::Crashed`] when the outcome is unknown.
    pub fn append(&self, payload: impl Into<Vec<u8>>) -> Result<u64> {
        let payload = payload.into();
        call(|reply| self.append_with(payload, reply))
    }

    /// Non-blocking [`AppenderHandle::append`].
    pub fn append_with(&self, payload: Vec<u8>, reply: Reply<u64>) {
        match self.check_payload(payload.len()) {
            Ok(()) => self.submit(AppenderMsg::Append { payload, reply }),
            Err(e) => reply.send(Err(e)),
        }
    }

    /// Reads the entry at `offset`.
    ///
    /// # Errors
    /// [`Error::NotFound`] if it was compacted away or is past the end.
    pub fn read(&self, offset: u64) -> Result<ReadEntry> {
        call(|reply| self.read_with(offset, reply))
    }

    /// Non-blocking [`AppenderHandle::read`].
    pub fn read_with(&self, offset: u64, reply: Reply<ReadEntry>) {
        self.submit(AppenderMsg::Read { offset, reply });
    }

    /// The value stored under `key` (the text after `=`).
    ///
    /// # Errors
    /// [`Error::NotFound`] if the key is not set.
    pub fn kv_get(&self, key: &str) -> Result<String> {
        call(|reply| self.kv_get_with(key.to_string(), reply))
    }

    /// Non-blocking [`AppenderHandle::kv_get`].
    pub fn kv_get_with(&self, key: String, reply: Reply<String>) {
        self.submit(AppenderMsg::KvGet { key, reply });
    }

    fn check_key_value(&self, key: &str, value: &str) -> Result<()> {
        if !kv::valid_key(key) {
            return Err(Error::InvalidArgument(format!(
                "key {key:?} is empty or contains whitespace or '='"
            )));
        }
        self.check_payload(kv::set_payload(key, value).len())
    }

    /// Sets `key` to `value` through the log (`set KEY=VALUE`); returns the offset.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a key that is empty or has whitespace or `=`;
    /// otherwise as [`AppenderHandle::append`].
    pub fn kv_set(&self, key: &str, value: &str) -> Result<u64> {
        call(|reply| self.kv_set_with(key.to_string(), value.to_string(), reply))
    }

    /// Non-blocking [`AppenderHandle::kv_set`].
    pub fn kv_set_with(&self, key: String, value: String, reply: Reply<u64>) {
        match self.check_key_value(&key, &value) {
            Ok(()) => self.submit(AppenderMsg::KvSet { key, value, reply }),
            Err(e) => reply.send(Err(e)),
        }
    }

    /// Atomically sets `key` to `value` if its current value is exactly `from`.
    ///
    /// # Errors
    /// [`Error::NotFound`] if the key is not set, [`Error::PreconditionFailed`] if it
    /// holds another value; otherwise as [`AppenderHandle::kv_set`].
    pub fn kv_cas(&self, key: &str, from: &str, value: &str) -> Result<u64> {
        let from = from.to_string();
        call(|reply| {
            self.kv_cas_with(
                key.to_string(),
                Box::new(move |cur| cur == from),
                value.to_string(),
                reply,
            )
        })
    }

    /// Non-blocking compare-and-set with any predicate over the current value.
    pub fn kv_cas_with(
        &self,
        key: String,
        expected: CasPredicate,
        value: String,
        reply: Reply<u64>,
    ) {
        match self.check_key_value(&key, &value) {
            Ok(()) => self.submit(AppenderMsg::KvCas {
                key,
                expected,
                value,
                reply,
            }),
            Err(e) => reply.send(Err(e)),
        }
    }

    /// Live entries, bytes on disk, and whether everything acknowledged is durable.
    pub fn info(&self) -> Result<Info> {
        call(|reply| self.info_with(reply))
    }

    /// Non-blocking [`AppenderHandle::info`].
    pub fn info_with(&self, reply: Reply<Info>) {
        self.submit(AppenderMsg::Info { reply });
    }

    /// Every live segment.
    pub fn segments(&self) -> Result<SegmentList> {
        call(|reply| self.segments_with(reply))
    }

    /// Non-blocking [`AppenderHandle::segments`].
    pub fn segments_with(&self, reply: Reply<SegmentList>) {
        self.submit(AppenderMsg::Segments { reply });
    }

    /// Sets the size at which the active segment is sealed (≥ 1); returns it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for 0.
    pub fn set_segment_bytes_max(&self, bytes: u64) -> Result<u64> {
        call(|reply| self.set_segment_bytes_max_with(bytes, reply))
    }

    /// Non-blocking [`AppenderHandle::set_segment_bytes_max`].
    pub fn set_segment_bytes_max_with(&self, bytes: u64, reply: Reply<u64>) {
        if bytes < 1 {
            return reply.send(Err(Error::InvalidArgument(
                "max_segment_bytes must be at least 1".into(),
            )));
        }
        self.submit(AppenderMsg::SetSegmentBytesMax { bytes, reply });
    }

    /// Changes some fields of the log-management policy; returns the whole policy now
    /// in force.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a value out of range; nothing changes then.
    pub fn set_policy(&self, update: PolicyUpdate) -> Result<Policy> {
        call(|reply| self.set_policy_with(update, reply))
    }

    /// Non-blocking [`AppenderHandle::set_policy`].
    pub fn set_policy_with(&self, update: PolicyUpdate, reply: Reply<Policy>) {
        self.submit(AppenderMsg::SetPolicy { update, reply });
    }

    /// Everything an operator wants at a glance.
    pub fn status(&self) -> Result<Status> {
        call(|reply| self.status_with(reply))
    }

    /// Non-blocking [`AppenderHandle::status`].
    pub fn status_with(&self, reply: Reply<Status>) {
        self.submit(AppenderMsg::Status { reply });
    }

    /// Waits until the log-management policy has nothing in flight or due: every
    /// automatic snapshot and compaction it started (or that its clock made due) is
    /// done. For tests, and for programs that want a quiet node (before a backup).
    ///
    /// # Errors
    /// [`Error::Crashed`] if the node stopped.
    pub fn settle(&self) -> Result<()> {
        call(|reply| self.settle_with(reply))
    }

    /// Non-blocking [`AppenderHandle::settle`].
    pub fn settle_with(&self, reply: Reply<()>) {
        self.submit(AppenderMsg::Settle { reply });
    }
}

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
    auto: Auto,
    /// The writes since the last cut (key and last value): handed with the next cut to
    /// the snapshotter, which writes a delta from them instead of diffing the whole map.
    /// `None` when deltas are off, or when the writes grew past [`WRITTEN_MAX`]: a delta
    /// that large would not be cut, and the memory is better returned.
    changed: Option<Written>,
}

/// The appender's side of the log-management policy.
struct Auto {
    policy: Policy,
    seed: u64,
    /// Snapshots cut since the node opened: each draws its own jittered thresholds.
    round: u64,
    thresholds: Thresholds,
    /// Entries and log bytes since the last snapshot cut.
    entries: u64,
    bytes: u64,
    last_cut: Instant,
    /// An automatic snapshot is being written.
    busy: Arc<AtomicBool>,
    /// An automatic compaction is under way.
    compacting: Arc<AtomicBool>,
    /// A compaction the policy asked for after a durable snapshot.
    compact_due: Option<u64>,
    /// Snapshots on disk (offset, file), oldest first.
    on_disk: Vec<(u64, String)>,
    /// Size and time of the snapshots that became durable (or were loaded) here.
    known: HashMap<u64, (u64, Option<Instant>)>,
}

impl Auto {
    fn progress(&self, now: Instant) -> Progress {
        Progress {
            entries: self.entries,
            bytes: self.bytes,
            age_ms: now.saturating_duration_since(self.last_cut).as_millis() as u64,
        }
    }

    /// A snapshot was cut at `now`: progress starts again, with new thresholds.
    fn cut(&mut self, now: Instant) {
        self.entries = 0;
        self.bytes = 0;
        self.last_cut = now;
        self.round += 1;
        self.thresholds = self.policy.thresholds(self.seed, self.round);
    }
}

type Pending = Box<dyn FnOnce(&Result<()>) + Send>;

#[derive(Default)]
struct Batch {
    payloads: Vec<Vec<u8>>,
    bytes: u64,
    overlay: HashMap<Arc<str>, Option<Arc<str>>>,
    pending: Vec<Pending>,
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
    pub snapshots_on_disk: Vec<(u64, String)>,
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
            changed: (parts.config.policy.max_chain > 0).then(Written::new),
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

    /// Carries out the log-management policy: a compaction it asked for after a
    /// durable snapshot, then a snapshot if a trigger fires. Called after every batch
    /// and on a timer.
    fn manage(&mut self) {
        self.start_due_work();
        self.answer_settled();
    }

    /// Answers the callers of `settle` once the policy has nothing in flight or due
    /// (or the node is poisoned: it starts nothing more).
    fn answer_settled(&mut self) {
        let quiet = self.poison.reason().is_some()
            || !(self.auto.busy.load(Ordering::Acquire)
                || self.auto.compacting.load(Ordering::Acquire)
                || self.auto.compact_due.is_some());
        if quiet {
            for reply in self.settling.drain(..) {
                reply.send(Ok(()));
            }
        }
    }

    fn start_due_work(&mut self) {
        if self.poison.reason().is_some() {
            return;
        }
        self.drain_feedback();
        if let Some(at) = self.auto.compact_due.take() {
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

    fn drain_feedback(&mut self) {
        while let Ok(ev) = self.feedback.try_recv() {
            self.on_feedback(ev);
        }
    }

    fn on_feedback(&mut self, ev: Feedback) {
        match ev {
            Feedback::SnapshotDurable {
                snapshot,
                duration_ms,
                on_disk,
            } => {
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
                if auto.policy.auto_compact
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
                self.log.compacted(first_offset, &[]);
                let _ = ack.send(());
            }
            Feedback::Compacted {
                first_offset,
                removed,
                bytes_freed,
            } => {
                self.counters.compactions += 1;
                self.counters.bytes_freed += bytes_freed;
                self.log.compacted(first_offset, &removed);
            }
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

    fn compact(&mut self, at: u64, reply: Reply<Compaction>) {
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
                self.forward(SnapshotterMsg::Compact {
                    at,
                    offset,
                    state,
                    changed,
                    policy: self.auto.policy,
                    next_offset: next,
                    segments,
                    reply,
                });
            }
            Err(e) => reply.send(Err(e)),
        }
    }

    /// An immutable cut of the durable state: O(1), whatever the state's size.
    /// Returns the offset, the state and the writes since the previous cut (`None` if
    /// they were not all kept).
    fn cut(&mut self) -> Result<(u64, KvState, Option<Written>)> {
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

    fn current(&self, key: &str) -> Option<Arc<str>> {
        match self.batch.overlay.get(key) {
            Some(v) => v.clone(),
            None => self.state.get(key).cloned(),
        }
    }

    fn defer<T: Send + 'static>(&mut self, reply: Reply<T>, value: Result<T>) {
        self.batch
            .pending
            .push(Box::new(move |outcome: &Result<()>| {
                match (outcome, value) {
                    (Ok(()), v) => reply.send(v),
                    (Err(e), Ok(_)) => reply.send(Err(e.clone())),
                    (Err(_), Err(e)) => reply.send(Err(e)),
                }
            }));
    }

    /// Adds one entry to the batch; returns the offset it will have.
    fn stage(&mut self, payload: Vec<u8>) -> Result<u64> {
        self.refuse_if_poisoned()?;
        debug_assert!(payload.len() as u64 <= self.payload_bytes_max);
        if !self
            .log
            .fits(self.batch.payloads.len(), self.batch.bytes, payload.len())
        {
            self.flush();
            self.refuse_if_poisoned()?;
            match self.log.roll() {
                Ok(()) => {}
                Err(RollError::Sync(e)) => {
                    return Err(self.poison(format!("fsync while sealing a segment failed: {e}")));
                }
                Err(RollError::Create(e)) if is_sync_failure(&e) => {
                    return Err(self.poison(format!("creating a new segment failed: {e}")));
                }
                Err(RollError::Create(e)) => {
                    log::warn!("could not open a new segment: {e}");
                    return Err(Error::Unavailable(format!(
                        "could not open a new segment (nothing was written): {e}"
                    )));
                }
            }
        }
        let offset = self.log.next_offset() + self.batch.payloads.len() as u64;
        match kv::Command::parse(&payload) {
            kv::Command::Set { key, value } => {
                self.batch
                    .overlay
                    .insert(Arc::from(key), Some(Arc::from(value)));
            }
            kv::Command::Del { key } => {
                self.batch.overlay.insert(Arc::from(key), None);
            }
            kv::Command::Other => {}
        }
        self.batch.bytes += record::record_bytes(payload.len());
        self.batch.payloads.push(payload);
        Ok(offset)
    }

    /// Writes, syncs (per policy) and applies the batch, then answers its requests.
    fn flush(&mut self) {
        let Batch {
            payloads,
            bytes,
            overlay,
            pending,
        } = std::mem::take(&mut self.batch);
        let outcome = if payloads.is_empty() {
            Ok(())
        } else {
            self.write_batch(&payloads)
        };
        if outcome.is_ok() {
            for payload in &payloads {
                self.state.apply(payload);
            }
            // The overlay holds exactly this batch's writes, each key's last value.
            if let Some(changed) = &mut self.changed {
                changed.extend(overlay);
                if changed.len() > WRITTEN_MAX.max(self.state.map.len() / 2) {
                    self.changed = None;
                }
            }
            self.counters.appends += payloads.len() as u64;
            self.auto.entries += payloads.len() as u64;
            self.auto.bytes += bytes;
        }
        for pending in pending {
            pending(&outcome);
        }
    }

    fn write_batch(&mut self, payloads: &[Vec<u8>]) -> Result<()> {
        self.counters.batches += 1;
        if let Err(e) = self.log.append(payloads.iter().map(|p| p.as_slice())) {
            return Err(self.poison(format!("write to the log failed: {e}")));
        }
        if self.fsync == FsyncPolicy::Always {
            self.counters.fsyncs += 1;
            if let Err(e) = self.log.sync() {
                return Err(self.poison(format!("fsync of the log failed: {e}")));
            }
        }
        Ok(())
    }

    fn status(&self) -> Status {
        let segments = self.log.segment_infos();
        Status {
            first_offset: self.log.first_offset(),
            next_offset: self.log.next_offset(),
            entries: self.log.live_entries(),
            total_bytes: self.log.total_bytes(),
            segments: segments.len(),
            active_segment: segments.last().expect("active segment").file.clone(),
            keys: self.state.map.len() as u64,
            other_payloads: self.state.other_payloads,
            fsync: self.fsync,
            fsynced: !self.log.has_unsynced(),
            segment_bytes_max: self.log.segment_bytes_max(),
            payload_bytes_max: self.payload_bytes_max,
            latest_snapshot: self.latest_snapshot.clone(),
            last_snapshot_ms: self.last_snapshot_ms,
            counters: self.counters,
            poisoned: self.poison.reason().map(str::to_string),
            recovery: self.recovery.clone(),
            management: self.management(&segments),
        }
    }

    fn management(&self, segments: &[crate::wal::SegmentInfo]) -> Management {
        let auto = &self.auto;
        let now = self.clock.now();
        let progress = auto.progress(now);
        let triggers = policy::distances(&auto.thresholds, &progress).to_vec();
        let snapshots = auto
            .on_disk
            .iter()
            .map(|(offset, file)| {
                let known = auto.known.get(offset);
                KeptSnapshot {
                    file: file.clone(),
                    kind: if crate::snapshot::is_delta(file) {
                        "delta"
                    } else {
                        "full"
                    },
                    offset: *offset,
                    size_bytes: known.map(|k| k.0),
                    age_ms: known
                        .and_then(|k| k.1)
                        .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                }
            })
            .collect();
        let snap = self.latest_snapshot.as_ref().map(|s| s.offset);
        let bytes_reclaimable = segments
            .iter()
            .filter(|s| s.sealed && s.end_offset.is_some_and(|e| Some(e + 1) <= snap))
            .map(|s| s.size_bytes)
            .sum();
        let replay_entries = self.log.next_offset() - snap.unwrap_or(self.log.first_offset());
        // Per-entry and per-key costs as the last recovery measured them, when it had
        // enough work to measure.
        let r = &self.recovery;
        let per_entry_ns = if r.entries_replayed >= 10_000 {
            r.replay_ms * 1_000_000 / r.entries_replayed
        } else {
            REPLAY_NS_DEFAULT
        };
        let keys = self.state.map.len() as u64;
        let replay_estimate_ms =
            (replay_entries * per_entry_ns + keys * REPLAY_NS_DEFAULT) / 1_000_000;
        let trailing = if auto.policy.auto_compact {
            auto.policy.trailing_entries
        } else {
            0
        };
        let oldest_segment = segments.first().map(|s| {
            let end = s.end_offset.map_or(s.start_offset, |e| e + 1);
            (
                s.file.clone(),
                policy::keeper(s.sealed, end, snap, trailing).reason(),
            )
        });
        Management {
            policy: auto.policy,
            triggers,
            snapshots,
            last_snapshot_bytes: self
                .last_snapshot_ms
                .and(self.latest_snapshot.as_ref().map(|s| s.size_bytes)),
            bytes_reclaimable,
            replay_entries,
            replay_estimate_ms,
            oldest_segment,
        }
    }
}

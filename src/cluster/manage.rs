//! Log management of a cluster node: snapshots and compaction, off the consensus
//! thread.
//!
//! The consensus actor cuts an [`Image`] (O(1): the map is shared) when the policy's
//! entries or age trigger fires, and hands it to the **snapshotter** thread
//! (`snapshotter.rs`, with its jobs and reports; this file starts it), which
//! writes it crash-safely, as a full snapshot `<index>.rsnap` or, when the policy's
//! chain allows, as a delta `<index>.rdelta` on the newest one (what changed since:
//! the persistent maps' diff), applies retention (whole chains), and reports back. Once a
//! snapshot is durable, the actor picks how much log to keep
//! ([`policy::raft_keep_from`]: trailing entries, and on a leader back to a follower
//! still catching up), stops reading below it, and sends the job to the node's
//! **compactor** (the single node's actor: `log.meta` first, then the segments, then the
//! blocks below the first record). Reports and the compactor's feedback come back on
//! channels the senders never wait on, each holding at most one message per job in
//! flight (one cut and one compaction at a time).
//!
//! Architecture Invariant: the log is compacted only behind a durable snapshot, never
//! past it (the snapshot's own entry stays, for its term), so that a restart loads the
//! snapshot and replays the log from right after it.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::actor::compactor::{Compactor, CompactorMsg};
use crate::actor::{Feedback, Reply, spawn_actor};
use crate::config::Config;
use crate::consensus::Image;
use crate::core::policy::{self, Policy, Progress, Thresholds};
use crate::core::position::Offset;
use crate::core::position::RaftIndex;
use crate::error::{Error, Result};
use crate::fs::{FileSystem, Pacing};
use crate::raftlog::image;
use crate::types::{Compaction, SnapshotFile};
use crate::wal::SyncCount;

use super::Transport;
use super::snapshotter::{ChainSnapshotter, Cut, Fetches, Job, Report, Written};
use super::transfer::{ChainId, Part, Receiving};
pub use super::transfer::{Phases, Transfers};

/// Reports waiting for the consensus actor. Their senders (the snapshotter, a fetch
/// from the store, a compaction's waiter) wait when it is full: the actor never waits
/// on any of them (jobs go by `try_send`) and drains every report on each turn of its
/// loop, so the wait ends, and a flood of transfer work cannot grow memory.
const REPORTS_QUEUED: usize = 1024;

/// Hands received chunks (and a sender's word that a file is gone) to the
/// snapshotter, without waiting: a full queue drops them, and the transfer asks again.
#[derive(Clone)]
pub(super) struct Chunks(Sender<(u64, Part)>);

impl Chunks {
    pub(super) fn hand(&self, from: u64, part: Part) {
        if self.0.try_send((from, part)).is_err() {
            log::debug!("the snapshotter's chunk queue is full: a chunk dropped");
        }
    }
}

/// What the consensus actor knows of its log management, for `wal_status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterManagement {
    /// The newest durable snapshot: its file and index.
    pub snapshot: Option<SnapshotFile>,
    /// Snapshots written since the node started.
    pub snapshots_written: u64,
    /// Compactions done since the node started, and the bytes they freed.
    pub compactions: u64,
    /// Bytes the compactions freed.
    pub bytes_freed: u64,
    /// Snapshot transfers to this node.
    pub transfers: Transfers,
}

pub(super) struct Manager {
    policy: Policy,
    seed: u64,
    round: u64,
    thresholds: Thresholds,
    /// Where and when the last cut was taken (or the node opened).
    last_cut: (u64, Instant),
    /// What the age trigger reads ([`Config::clock`]).
    clock: Arc<dyn crate::clock::Clock>,
    cutting: bool,
    compacting: bool,
    pub status: ClusterManagement,
    jobs: Option<Sender<Job>>,
    /// Where the transport hands received chunks to the snapshotter.
    chunks: Sender<(u64, Part)>,
    pub reports: Receiver<Report>,
    report_tx: Sender<Report>,
    compactor: Option<Sender<CompactorMsg>>,
    /// Told how long snapshots and compactions took.
    observer: Option<crate::config::Observer>,
    pub feedback: Receiver<Feedback>,
    joins: Vec<std::thread::JoinHandle<()>>,
}

impl Manager {
    /// Starts the snapshotter and compactor threads of a node whose log starts at
    /// `first_offset`, whose newest snapshot is the chain `newest` (files, base first),
    /// with `on_disk` snapshots; `log_syncs` paces the snapshots written.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        fs: Arc<dyn FileSystem>,
        config: &Config,
        transport: Arc<dyn Transport>,
        first_offset: Offset,
        applied: u64,
        newest: Vec<SnapshotFile>,
        on_disk: Vec<(u64, String)>,
        log_syncs: SyncCount,
    ) -> Result<Manager> {
        let newest_file = newest.last().cloned();
        let pacing = Pacing {
            chunk_bytes: config.delete_chunk_bytes,
            pause: config.delete_pause,
        };
        let (report_tx, reports) = crossbeam_channel::bounded(REPORTS_QUEUED);
        let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(config.cluster.snapshot_jobs);
        let (chunks, chunk_rx) = crossbeam_channel::bounded(config.cluster.chunks_queued);
        // Unbounded, and holding at most `FEEDBACK_MAX` messages (one compaction at a
        // time): the compactor's sends must never wait on the actor that drives it.
        let (feedback_tx, feedback) = crossbeam_channel::unbounded();
        let started = |e: std::io::Error| Error::Open(format!("cannot start a thread: {e}"));
        let snapshotter = ChainSnapshotter {
            fs: fs.clone(),
            dir: config.dir.clone(),
            pace: config.snapshot_pace(log_syncs),
            pacing,
            on_disk,
            tip: None,
            loaded: newest,
            parents: std::collections::HashMap::new(),
            reports: report_tx.clone(),
            transport,
            pinned: std::collections::HashMap::new(),
            pin: config.cluster.pin,
            checksums: std::collections::HashMap::new(),
            send_rate: config.snapshot_send_bytes_per_sec,
            sent: (Instant::now(), 0),
            last_sent: std::collections::HashMap::new(),
            receiving: Receiving::new(
                config.cluster.transfer_window,
                config.cluster.ask_again,
                config.snapshot_store.is_some(),
            ),
            reported: Transfers::default(),
            fetches: Fetches::new(config.snapshot_store.clone()),
            clock: config.clock.clone(),
            tick: (config.cluster.ask_again / 8).max(std::time::Duration::from_millis(1)),
        };
        let snapshotter = spawn_actor(
            "snapshotter",
            |why: String| log::error!("{why}; the cluster node takes no more snapshots"),
            move || {
                crate::actor::below_the_log();
                snapshotter.run(&job_rx, &chunk_rx)
            },
        )
        .map_err(started)?;
        let (compactor, compactor_join) =
            Compactor::spawn(fs, config.dir.clone(), first_offset, 4, feedback_tx, pacing)
                .map_err(started)?;
        let policy = config.policy;
        let seed = config.jitter_seed;
        Ok(Manager {
            thresholds: policy.thresholds(seed, 0),
            policy,
            seed,
            round: 0,
            last_cut: (applied, config.clock.now()),
            clock: config.clock.clone(),
            cutting: false,
            compacting: false,
            status: ClusterManagement {
                snapshot: newest_file,
                ..ClusterManagement::default()
            },
            jobs: Some(job_tx),
            chunks,
            reports,
            report_tx,
            compactor: Some(compactor),
            observer: config.observer.clone(),
            feedback,
            joins: vec![snapshotter, compactor_join],
        })
    }

    /// The policy in force.
    pub(super) fn policy(&self) -> Policy {
        self.policy
    }

    /// Changes the policy (from the next snapshot on).
    pub(super) fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
        self.thresholds = policy.thresholds(self.seed, self.round);
    }

    /// The Raft index of the newest durable snapshot (0 before the first).
    pub(super) fn newest_index(&self) -> u64 {
        self.status
            .snapshot
            .as_ref()
            .map_or(0, |f| image::index_of(f).get())
    }

    /// Whether a snapshot is being written.
    pub(super) fn cutting(&self) -> bool {
        self.cutting
    }

    /// Whether a snapshot is due at `applied` (none is being written).
    pub(super) fn due(&self, applied: u64) -> bool {
        let progress = Progress {
            entries: applied.saturating_sub(self.last_cut.0),
            bytes: 0,
            age_ms: (self.clock.now())
                .saturating_duration_since(self.last_cut.1)
                .as_millis() as u64,
        };
        !self.cutting && policy::due(&self.thresholds, &progress).is_some()
    }

    /// Hands a cut to the snapshotter.
    pub(super) fn cut(&mut self, image: Image) {
        let Some(jobs) = &self.jobs else { return };
        self.last_cut = (image.index(), self.clock.now());
        self.round += 1;
        self.thresholds = self.policy.thresholds(self.seed, self.round);
        self.cutting = true;
        let policy = self.policy;
        if jobs.try_send(Job::Cut(Cut { image, policy })).is_err() {
            self.cutting = false;
        }
    }

    /// Where received chunks go: straight to the snapshotter, dropped when its queue
    /// is full (the transfer asks again).
    pub(super) fn chunks(&self) -> Chunks {
        Chunks(self.chunks.clone())
    }

    /// Hands transfer work to the snapshotter thread; dropped when its queue is full
    /// (the transfer asks again).
    pub(super) fn job(&self, job: Job) {
        if let Some(jobs) = &self.jobs
            && jobs.try_send(job).is_err()
        {
            log::debug!("the snapshotter's queue is full: transfer work dropped");
        }
    }

    /// Takes in a snapshot report; returns the durable snapshot's identity, and
    /// whether the log may now be compacted behind it.
    pub(super) fn snapshot_done(
        &mut self,
        r: &std::result::Result<Written, (String, bool)>,
    ) -> std::result::Result<Option<(ChainId, bool)>, String> {
        self.cutting = false;
        match r {
            Ok(w) => {
                log::info!(
                    "cluster snapshot {} durable in {} ms ({} bytes, term {})",
                    w.file.file,
                    w.duration_ms,
                    w.file.size_bytes,
                    w.term
                );
                let id = ChainId::of(&w.chain, w.term);
                // (A cut taken before a snapshot from the leader was installed is older.)
                if self
                    .status
                    .snapshot
                    .as_ref()
                    .is_none_or(|s| s.offset <= w.file.offset)
                {
                    self.status.snapshot = Some(w.file.clone());
                }
                self.status.snapshots_written += 1;
                if let Some(o) = &self.observer {
                    let took = std::time::Duration::from_millis(w.duration_ms);
                    o.saw(crate::config::Measured::Snapshot, took);
                }
                Ok(Some((id, self.policy.auto_compact && !self.compacting)))
            }
            Err((why, true)) => Err(why.clone()),
            Err((why, false)) => {
                log::warn!("{why}; the next trigger tries again");
                Ok(None)
            }
        }
    }

    /// Whether a compaction is in flight.
    pub(super) fn compacting(&self) -> bool {
        self.compacting
    }

    /// The trailing entries the policy keeps behind a snapshot.
    pub(super) fn trailing(&self) -> u64 {
        self.policy.trailing_entries
    }

    /// Sends a compaction to offset `at` behind the snapshot at `snapshot`.
    pub(super) fn compact(
        &mut self,
        at: Offset,
        snapshot: u64,
        next_offset: Offset,
        plan: crate::raftlog::CompactionPlan,
        then: Option<Reply<Compaction>>,
    ) {
        let Some(compactor) = &self.compactor else {
            if let Some(then) = then {
                then.send(Err(Error::Crashed("the compactor stopped".into())));
            }
            return;
        };
        let reports = self.report_tx.clone();
        self.compacting = true;
        let (observer, started) = (self.observer.clone(), std::time::Instant::now());
        let sent = compactor.send(CompactorMsg::Compact {
            at,
            snapshot_offset: image::carrying(RaftIndex::new(snapshot)),
            next_offset,
            segments: plan.segments,
            start: plan.start,
            reply: Reply::new(move |r: Result<Compaction>| {
                let summary = r.as_ref().map(|c| *c).map_err(|e| e.to_string());
                if let Some(o) = &observer {
                    o.saw(crate::config::Measured::Compaction, started.elapsed());
                }
                if let Some(then) = then {
                    then.send(r);
                }
                let _ = reports.send(Report::Compaction(summary));
            }),
        });
        if sent.is_err() {
            self.compacting = false;
        }
    }

    /// Takes in a finished compaction.
    pub(super) fn compaction_done(&mut self, r: std::result::Result<Compaction, String>) {
        self.compacting = false;
        match r {
            Ok(c) => {
                if c.bytes_freed > 0 || c.entries_after < c.entries_before {
                    self.status.compactions += 1;
                    self.status.bytes_freed += c.bytes_freed;
                }
            }
            Err(e) => log::warn!("a compaction of the Raft log failed: {e}"),
        }
    }

    /// Stops both threads (after the jobs they hold) and waits for them.
    pub(super) fn stop(&mut self) {
        self.jobs.take();
        self.compactor.take();
        // A sender waiting on a full report channel must not hold up the join.
        self.reports = crossbeam_channel::never();
        for join in self.joins.drain(..) {
            let _ = join.join();
        }
    }
}

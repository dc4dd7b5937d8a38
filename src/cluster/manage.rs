//! Log management of a cluster node: snapshots and compaction, off the consensus
//! thread.
//!
//! The consensus actor cuts an [`Image`] (O(1): the map is shared) when the policy's
//! entries or age trigger fires, and hands it to the **snapshotter** thread here, which
//! writes `<index>.rsnap` crash-safely, applies retention, and reports back. Once a
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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::actor::compactor::{Compactor, CompactorMsg};
use crate::actor::{Feedback, Reply, spawn_actor};
use crate::config::Config;
use crate::consensus::image::{self, Image};
use crate::core::layout;
use crate::core::policy::{self, Policy, Progress, Thresholds};
use crate::core::position::Offset;
use crate::error::{Error, Result};
use crate::fs::{FileSystem, Pacing, is_sync_failure, join};
use crate::types::{Compaction, SnapshotFile};

/// A snapshot to write, with the retention in force.
pub(super) struct Cut {
    image: Image,
    retain: u64,
}

/// What the snapshotter and the compactor report to the consensus actor.
pub(super) enum Report {
    /// A snapshot is durable (and retention applied), or why not; `fatal` when a sync
    /// failed.
    Snapshot(std::result::Result<Written, (String, bool)>),
    /// A compaction finished.
    Compaction(Result<Compaction>),
}

/// A durable snapshot.
pub(super) struct Written {
    pub file: SnapshotFile,
    pub term: u64,
    pub duration_ms: u64,
}

/// What the consensus actor knows of its log management, for `wal_status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Management {
    /// The newest durable snapshot: its file and index.
    pub snapshot: Option<SnapshotFile>,
    /// Snapshots written since the node started.
    pub snapshots_written: u64,
    /// Compactions done since the node started, and the bytes they freed.
    pub compactions: u64,
    /// Bytes the compactions freed.
    pub bytes_freed: u64,
}

pub(super) struct Manager {
    policy: Policy,
    seed: u64,
    round: u64,
    thresholds: Thresholds,
    /// Where and when the last cut was taken (or the node opened).
    last_cut: (u64, Instant),
    cutting: bool,
    compacting: bool,
    pub status: Management,
    cuts: Option<Sender<Cut>>,
    pub reports: Receiver<Report>,
    report_tx: Sender<Report>,
    compactor: Option<Sender<CompactorMsg>>,
    pub feedback: Receiver<Feedback>,
    joins: Vec<std::thread::JoinHandle<()>>,
}

impl Manager {
    /// Starts the snapshotter and compactor threads of a node whose log starts at
    /// `first_offset`, whose newest snapshot is `newest`, with `on_disk` snapshots.
    pub(super) fn start(
        fs: Arc<dyn FileSystem>,
        config: &Config,
        first_offset: Offset,
        applied: u64,
        newest: Option<SnapshotFile>,
        on_disk: Vec<(u64, String)>,
    ) -> Result<Manager> {
        let pacing = Pacing {
            chunk_bytes: config.delete_chunk_bytes,
            pause: config.delete_pause,
        };
        let (report_tx, reports) = crossbeam_channel::unbounded();
        let (cut_tx, cut_rx) = crossbeam_channel::bounded::<Cut>(1);
        let (feedback_tx, feedback) = crossbeam_channel::unbounded();
        let started = |e: std::io::Error| Error::Open(format!("cannot start a thread: {e}"));
        let snapshotter = Snapshotter {
            fs: fs.clone(),
            dir: config.dir.clone(),
            sync_chunk: config.snapshot_sync_chunk_bytes,
            pacing,
            on_disk,
            reports: report_tx.clone(),
        };
        let snapshotter = spawn_actor(
            "snapshotter",
            |why: String| log::error!("{why}; the cluster node takes no more snapshots"),
            move || snapshotter.run(&cut_rx),
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
            last_cut: (applied, Instant::now()),
            cutting: false,
            compacting: false,
            status: Management {
                snapshot: newest,
                ..Management::default()
            },
            cuts: Some(cut_tx),
            reports,
            report_tx,
            compactor: Some(compactor),
            feedback,
            joins: vec![snapshotter, compactor_join],
        })
    }

    /// Whether a snapshot is due at `applied` (none is being written).
    pub(super) fn due(&self, applied: u64) -> bool {
        let progress = Progress {
            entries: applied.saturating_sub(self.last_cut.0),
            bytes: 0,
            age_ms: self.last_cut.1.elapsed().as_millis() as u64,
        };
        !self.cutting && policy::due(&self.thresholds, &progress).is_some()
    }

    /// Hands a cut to the snapshotter.
    pub(super) fn cut(&mut self, image: Image) {
        let Some(cuts) = &self.cuts else { return };
        self.last_cut = (image.index(), Instant::now());
        self.round += 1;
        self.thresholds = self.policy.thresholds(self.seed, self.round);
        self.cutting = true;
        let retain = self.policy.retain_snapshots;
        if cuts.try_send(Cut { image, retain }).is_err() {
            self.cutting = false;
        }
    }

    /// Takes in a snapshot report; returns the durable snapshot's index when the log
    /// may now be compacted behind it.
    pub(super) fn snapshot_done(
        &mut self,
        r: std::result::Result<Written, (String, bool)>,
    ) -> std::result::Result<Option<u64>, String> {
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
                let index = w.file.offset.get();
                self.status.snapshot = Some(w.file);
                self.status.snapshots_written += 1;
                Ok((self.policy.auto_compact && !self.compacting).then_some(index))
            }
            Err((why, true)) => Err(why),
            Err((why, false)) => {
                log::warn!("{why}; the next trigger tries again");
                Ok(None)
            }
        }
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
        plan: crate::consensus::durable::CompactionPlan,
    ) {
        let Some(compactor) = &self.compactor else {
            return;
        };
        let reports = self.report_tx.clone();
        self.compacting = true;
        let sent = compactor.send(CompactorMsg::Compact {
            at,
            snapshot_offset: Offset::new(snapshot),
            next_offset,
            segments: plan.segments,
            start: plan.start,
            reply: Reply::new(move |r| {
                let _ = reports.send(Report::Compaction(r));
            }),
        });
        if sent.is_err() {
            self.compacting = false;
        }
    }

    /// Takes in a finished compaction.
    pub(super) fn compaction_done(&mut self, r: Result<Compaction>) {
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
        self.cuts.take();
        self.compactor.take();
        for join in self.joins.drain(..) {
            let _ = join.join();
        }
    }
}

struct Snapshotter {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    sync_chunk: u64,
    pacing: Pacing,
    /// Snapshots on disk, `(index, name)`, oldest first.
    on_disk: Vec<(u64, String)>,
    reports: Sender<Report>,
}

impl Snapshotter {
    fn run(mut self, cuts: &Receiver<Cut>) {
        while let Ok(cut) = cuts.recv() {
            let started = Instant::now();
            let r = self.write(&cut);
            let failed = matches!(r, Err((_, true)));
            let r = r.map(|file| Written {
                file,
                term: cut.image.term,
                duration_ms: started.elapsed().as_millis() as u64,
            });
            let _ = self.reports.send(Report::Snapshot(r));
            if failed {
                break;
            }
        }
        log::debug!("cluster snapshotter stopped");
    }

    fn write(&mut self, cut: &Cut) -> std::result::Result<SnapshotFile, (String, bool)> {
        let index = cut.image.index();
        let failed = |what: &str, e: std::io::Error| {
            let fatal = is_sync_failure(&e);
            (format!("{what}: {e}"), fatal)
        };
        let file = image::write(&*self.fs, &self.dir, &cut.image, self.sync_chunk)
            .map_err(|e| failed(&format!("writing the snapshot at index {index}"), e))?;
        self.on_disk.retain(|(i, _)| *i != index);
        self.on_disk.push((index, file.file.clone()));
        // Retention: the newest `retain` stay. Each dropped file is renamed to a temp
        // name (removed at the next start) and the rename made durable before it is
        // freed step by step, so no half-freed file is ever read as a snapshot.
        // Every cluster snapshot is a full one: a chain of one file.
        self.on_disk.sort();
        let keep = (cut.retain.max(1) as usize).min(self.on_disk.len());
        let dropped = self.on_disk[..self.on_disk.len() - keep].to_vec();
        if dropped.is_empty() {
            return Ok(file);
        }
        let mut retired = Vec::new();
        for (_, name) in &dropped {
            let to = layout::retired(name);
            self.fs
                .rename(&join(&self.dir, name), &join(&self.dir, &to))
                .map_err(|e| failed(&format!("retiring {name}"), e))?;
            retired.push(to);
        }
        self.on_disk
            .retain(|(_, n)| !dropped.iter().any(|(_, d)| d == n));
        self.fs.sync_dir(&self.dir).map_err(|e| {
            (
                format!("syncing the directory after retiring snapshots: {e}"),
                true,
            )
        })?;
        for name in retired {
            let path = join(&self.dir, &name);
            let size = self
                .fs
                .open(&path, false)
                .and_then(|f| f.len())
                .unwrap_or(0);
            if let Err(e) = self.pacing.free(&*self.fs, &path, size) {
                log::warn!("could not free retired snapshot {name}: {e}");
            }
        }
        Ok(file)
    }
}

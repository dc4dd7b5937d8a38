//! Log management of a cluster node: snapshots and compaction, off the consensus
//! thread.
//!
//! The consensus actor cuts an [`Image`] (O(1): the map is shared) when the policy's
//! entries or age trigger fires, and hands it to the **snapshotter** thread here, which
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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::actor::compactor::{Compactor, CompactorMsg};
use crate::actor::{Feedback, Reply, spawn_actor};
use crate::config::Config;
use crate::consensus::image::{self, Image};
use crate::core::kv::KvState;
use crate::core::policy::{self, ChainSize, Policy, Progress, SnapshotMode, Thresholds};
use crate::core::position::Offset;
use crate::error::{Error, Result};
use crate::fs::{FileSystem, Pacing, is_sync_failure, join};
use crate::snapshot::WritePace;
use crate::types::{Compaction, SnapshotFile};
use crate::wal::SyncCount;

use super::Transport;
use super::transfer::{CHUNK_BYTES, Identity, Part};
use std::time::Duration;

/// A snapshot to write, with the policy in force (retention, chain length).
pub(super) struct Cut {
    image: Image,
    policy: Policy,
}

/// Work for the snapshotter thread.
pub(super) enum Job {
    /// Write a snapshot.
    Cut(Cut),
    /// Send `count` chunks of one of this node's snapshots to member `to`.
    Serve {
        to: u64,
        file: String,
        checksum: u32,
        from: u64,
        count: u32,
        /// When the ask arrived.
        asked: Instant,
    },
    /// Write a received chunk at byte `at` of the part file `part` (created at 0),
    /// and sync it if `sync` (the last chunk of a window, or of the file).
    Receive {
        part: String,
        at: u64,
        data: Vec<u8>,
        sync: bool,
    },
    /// The chain `id` is whole (the files named in `received` in their part files,
    /// the others in place): verify it and rename the received files into place.
    Finish { id: Identity, received: Vec<String> },
    /// Remove part files other than `keep` (a transfer that will not resume).
    Forget { keep: Vec<String> },
}

/// Snapshot files pinned by a transfer stay this long after the last ask.
pub(super) const PIN: Duration = Duration::from_secs(30);

/// What the snapshotter and the compactor report to the consensus actor.
pub(super) enum Report {
    /// A snapshot is durable (and retention applied), or why not; `fatal` when a sync
    /// failed.
    Snapshot(std::result::Result<Written, (String, bool)>),
    /// A compaction finished (its requester, if any, was answered).
    Compaction(std::result::Result<Compaction, String>),
    /// The part file `part` holds its first `durable` bytes durably.
    Received { part: String, durable: u64 },
    /// A member asked for snapshot `file`, which is not (or no longer) on this node's
    /// disk: it must not be offered again.
    Missing { file: String },
    /// A received snapshot is whole, verified and in place (its chain's files, base
    /// first), or why not (the part files are then gone: the transfer starts over).
    Downloaded {
        id: Identity,
        outcome: std::result::Result<(Image, Vec<SnapshotFile>), String>,
    },
    /// A snapshot offered was fetched from the snapshot store into its part file
    /// (whole and synced), or why not.
    Fetched {
        id: Identity,
        outcome: std::result::Result<String, String>,
    },
}

/// A durable snapshot.
pub(super) struct Written {
    /// Its tip: the file just written.
    pub file: SnapshotFile,
    /// Its chain, base first (the tip last).
    pub chain: Vec<SnapshotFile>,
    pub term: u64,
    /// The configuration it records: voters and learners.
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub duration_ms: u64,
    /// The client offsets it covers: `[0, next_offset)`.
    pub next_offset: Offset,
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
    /// Snapshot transfers to this node.
    pub transfers: Transfers,
}

/// Counts of snapshot transfers received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfers {
    /// Offers of a snapshot this node began to receive.
    pub started: u64,
    /// Of those, how many went on from a part file kept from an earlier attempt (a
    /// restart of this node, a new offer of the same snapshot).
    pub resumed: u64,
    /// Times a stalled transfer asked again from its durable length (a chunk lost,
    /// damaged or out of order, the sender slow or gone).
    pub asked_again: u64,
    /// Transfers that started over from zero: another snapshot was offered while one
    /// was under way, or the whole file did not verify.
    pub restarted: u64,
    /// Snapshots received whole, verified and installed.
    pub completed: u64,
    /// Of those, how many were fetched from the snapshot store rather than sent by the
    /// leader.
    pub from_store: u64,
    /// Bytes of offered chains this node held already (a base received with an earlier
    /// snapshot) and did not receive again.
    pub bytes_held: u64,
    /// Where the time of the last snapshot installed went.
    pub last: Option<Phases>,
}

/// The phases of one snapshot received and installed, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases {
    /// The snapshot file's size.
    pub bytes: u64,
    /// From the offer to the last byte durable in the part file.
    pub transfer_ms: u64,
    /// Reading the whole file back, checking it and decoding its state, then putting
    /// it in place (rename, directory sync).
    pub verify_ms: u64,
    /// From then until the state machine stood at the snapshot's index (the log
    /// replaced, crash-safely; any compaction in flight waited for first).
    pub install_ms: u64,
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
    jobs: Option<Sender<Job>>,
    pub reports: Receiver<Report>,
    report_tx: Sender<Report>,
    compactor: Option<Sender<CompactorMsg>>,
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
        let (report_tx, reports) = crossbeam_channel::unbounded();
        let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(64);
        let (feedback_tx, feedback) = crossbeam_channel::unbounded();
        let started = |e: std::io::Error| Error::Open(format!("cannot start a thread: {e}"));
        let snapshotter = Snapshotter {
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
            checksums: std::collections::HashMap::new(),
            send_rate: config.snapshot_send_bytes_per_sec,
            sent: (Instant::now(), 0),
            last_sent: std::collections::HashMap::new(),
        };
        let snapshotter = spawn_actor(
            "snapshotter",
            |why: String| log::error!("{why}; the cluster node takes no more snapshots"),
            move || {
                crate::actor::below_the_log();
                snapshotter.run(&job_rx)
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
            last_cut: (applied, Instant::now()),
            cutting: false,
            compacting: false,
            status: Management {
                snapshot: newest_file,
                ..Management::default()
            },
            jobs: Some(job_tx),
            reports,
            report_tx,
            compactor: Some(compactor),
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
        self.status.snapshot.as_ref().map_or(0, |f| f.offset.get())
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
            age_ms: self.last_cut.1.elapsed().as_millis() as u64,
        };
        !self.cutting && policy::due(&self.thresholds, &progress).is_some()
    }

    /// Hands a cut to the snapshotter.
    pub(super) fn cut(&mut self, image: Image) {
        let Some(jobs) = &self.jobs else { return };
        self.last_cut = (image.index(), Instant::now());
        self.round += 1;
        self.thresholds = self.policy.thresholds(self.seed, self.round);
        self.cutting = true;
        let policy = self.policy;
        if jobs.try_send(Job::Cut(Cut { image, policy })).is_err() {
            self.cutting = false;
        }
    }

    /// Hands transfer work to the snapshotter thread; dropped when its queue is full
    /// (the transfer asks again).
    /// A sender of reports, for work done on a thread of its own.
    pub(super) fn reporter(&self) -> Sender<Report> {
        self.report_tx.clone()
    }

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
    ) -> std::result::Result<Option<(Identity, bool)>, String> {
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
                let id = Identity::of(&w.chain, w.term);
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
        plan: crate::consensus::durable::CompactionPlan,
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
        let sent = compactor.send(CompactorMsg::Compact {
            at,
            snapshot_offset: Offset::new(snapshot),
            next_offset,
            segments: plan.segments,
            start: plan.start,
            reply: Reply::new(move |r: Result<Compaction>| {
                let summary = r.as_ref().map(|c| *c).map_err(|e| e.to_string());
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
        for join in self.joins.drain(..) {
            let _ = join.join();
        }
    }
}

struct Snapshotter {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    pace: WritePace,
    pacing: Pacing,
    /// Snapshots on disk, `(index, name)`, oldest first.
    on_disk: Vec<(u64, String)>,
    /// The newest chain (base first) and the state at its tip: what a delta builds on.
    tip: Option<(Vec<SnapshotFile>, KvState)>,
    /// The chain loaded at startup, whose state is read back from its files when the
    /// first delta needs it (keeping the loaded state from the start would make the
    /// replay of the log copy every node of the map it touches).
    loaded: Vec<SnapshotFile>,
    /// The file each delta on disk builds on, as learned.
    parents: std::collections::HashMap<String, Option<String>>,
    reports: Sender<Report>,
    transport: Arc<dyn Transport>,
    /// Snapshots being sent, with the time of the last ask: retention keeps them.
    pinned: std::collections::HashMap<String, Instant>,
    /// Body checksums of the snapshots on disk, as learned.
    checksums: std::collections::HashMap<String, u32>,
    /// Most bytes per second sent to other members (0: no limit).
    send_rate: u64,
    /// Since when, and how many bytes, sent at the current rate.
    sent: (Instant, u64),
    /// Per member, the file, end and time of the last chunk sent to it.
    last_sent: std::collections::HashMap<u64, (String, u64, Instant)>,
}

impl Snapshotter {
    fn run(mut self, jobs: &Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            let cut = match job {
                Job::Cut(cut) => cut,
                Job::Serve {
                    to,
                    file,
                    checksum,
                    from,
                    count,
                    asked,
                } => {
                    // An ask for bytes sent after it arrived is one the follower
                    // repeated while they were on their way: they will get there.
                    let stale = self
                        .last_sent
                        .get(&to)
                        .is_some_and(|(f, end, at)| *f == file && from < *end && asked < *at);
                    if !stale {
                        self.serve(to, &file, checksum, from, count);
                    }
                    continue;
                }
                Job::Receive {
                    part,
                    at,
                    data,
                    sync,
                } => {
                    match self.receive(&part, at, &data, sync) {
                        Ok(Some(durable)) => {
                            let _ = self.reports.send(Report::Received { part, durable });
                        }
                        Ok(None) => {}
                        Err(e) => log::warn!("writing a received snapshot chunk to {part}: {e}"),
                    }
                    continue;
                }
                Job::Finish { id, received } => {
                    let outcome = self.finish(&id, &received);
                    let _ = self.reports.send(Report::Downloaded { id, outcome });
                    continue;
                }
                Job::Forget { keep } => {
                    self.forget(&keep);
                    continue;
                }
            };
            let started = Instant::now();
            let r = self.write(&cut);
            let failed = matches!(r, Err((_, true)));
            let r = r.map(|chain| Written {
                file: chain.last().cloned().expect("a chain has a file"),
                chain,
                term: cut.image.term,
                voters: cut.image.voters.clone(),
                learners: cut.image.learners.clone(),
                duration_ms: started.elapsed().as_millis() as u64,
                next_offset: cut.image.machine.next_offset,
            });
            let _ = self.reports.send(Report::Snapshot(r));
            if failed {
                break;
            }
        }
        log::debug!("cluster snapshotter stopped");
    }

    /// Writes a cut, as a delta on the newest chain when the policy allows it, then
    /// applies retention; returns the new chain, base first.
    fn write(&mut self, cut: &Cut) -> std::result::Result<Vec<SnapshotFile>, (String, bool)> {
        let index = cut.image.index();
        let failed = |what: &str, e: std::io::Error| {
            let fatal = is_sync_failure(&e);
            (format!("{what}: {e}"), fatal)
        };
        let on = self
            .tip
            .take()
            .or_else(|| self.read_loaded())
            .filter(|(chain, _)| {
                let (base, deltas) = chain.split_first().expect("a chain has a file");
                let size = ChainSize {
                    deltas: deltas.len() as u64,
                    deltas_bytes: deltas.iter().map(|d| d.size_bytes).sum(),
                    base_bytes: base.size_bytes,
                };
                chain.last().is_some_and(|t| t.offset.get() < index)
                    && chain
                        .iter()
                        .all(|f| self.on_disk.iter().any(|(_, n)| *n == f.file))
                    && policy::next_is_delta(SnapshotMode::Auto, Some(size), &cut.policy)
            });
        let written = match &on {
            Some((chain, state)) => {
                let parent = chain.last().expect("a chain has a file");
                image::write_delta(&*self.fs, &self.dir, &cut.image, parent, state, &self.pace).map(
                    |file| {
                        self.parents
                            .insert(file.file.clone(), Some(parent.file.clone()));
                        let mut chain = chain.clone();
                        chain.push(file);
                        chain
                    },
                )
            }
            None => image::write(&*self.fs, &self.dir, &cut.image, &self.pace).map(|f| vec![f]),
        };
        let chain = match written {
            Ok(chain) => chain,
            Err(e) => {
                self.tip = on;
                return Err(failed(&format!("writing the snapshot at index {index}"), e));
            }
        };
        let file = chain.last().expect("a chain has a file");
        self.checksums.insert(file.file.clone(), file.checksum);
        self.on_disk.retain(|(i, _)| *i != index);
        self.on_disk.push((index, file.file.clone()));
        self.on_disk.sort();
        self.tip = Some((chain.clone(), cut.image.machine.kv.clone()));
        self.retain(cut.policy.retain_snapshots)?;
        Ok(chain)
    }

    /// The chain loaded at startup and the state at its tip, read back (once; `None`
    /// if it cannot be, and the next snapshot is then a full one).
    fn read_loaded(&mut self) -> Option<(Vec<SnapshotFile>, KvState)> {
        let chain = std::mem::take(&mut self.loaded);
        let tip = chain.last()?.offset.get();
        let names: Vec<String> = chain.iter().map(|f| f.file.clone()).collect();
        match image::read_files(&*self.fs, &self.dir, &names, tip) {
            Ok((image, _)) => Some((chain, image.machine.kv)),
            Err(why) => {
                log::warn!("cannot read the loaded chain back ({why}): a full snapshot next");
                None
            }
        }
    }

    /// Retention: the newest `retain` chains stay whole (each chain ranked by its
    /// newest file), and so do the chains of snapshots being sent. Each dropped file is
    /// renamed to a temp name (removed at the next start) and the rename made durable
    /// before it is freed step by step, so no half-freed file is ever read as a
    /// snapshot.
    fn retain(&mut self, retain: u64) -> std::result::Result<(), (String, bool)> {
        self.pinned.retain(|_, at| at.elapsed() < PIN);
        let on_disk = self.on_disk.clone();
        let mut root = std::collections::HashMap::new();
        for (_, name) in &on_disk {
            let r = self.root_of(name);
            root.insert(name.clone(), r);
        }
        let dropped = chains_dropped(&on_disk, &root, retain, &self.pinned);
        if dropped.is_empty() {
            return Ok(());
        }
        self.on_disk.retain(|(_, n)| !dropped.contains(n));
        crate::snapshot::retire(&*self.fs, &self.dir, &dropped, &self.pacing).map_err(|e| {
            (
                format!("syncing the directory after retiring snapshots: {e}"),
                true,
            )
        })?;
        for name in &dropped {
            self.checksums.remove(name);
            self.parents.remove(name);
        }
        Ok(())
    }

    /// The full snapshot at the root of `name`'s chain, if its links are all on disk.
    fn root_of(&mut self, name: &str) -> Option<String> {
        let mut at = name.to_string();
        for _ in 0..=self.on_disk.len() {
            if !crate::core::layout::is_raft_delta(&at) {
                return Some(at);
            }
            at = self.parent_of(&at)?;
        }
        None
    }

    /// The file on disk delta `name` builds on (read from the delta once, then
    /// remembered).
    fn parent_of(&mut self, name: &str) -> Option<String> {
        if let Some(p) = self.parents.get(name) {
            return p.clone();
        }
        let found = crate::snapshot::read_machine_delta(&*self.fs, &join(&self.dir, name))
            .ok()
            .and_then(|d| {
                let (index, crc) = (d.delta.parent_offset, d.delta.parent_checksum);
                let candidates: Vec<String> = self
                    .on_disk
                    .iter()
                    .filter(|(i, _)| *i == index)
                    .map(|(_, n)| n.clone())
                    .collect();
                candidates
                    .into_iter()
                    .find(|n| self.identity_of(n).is_some_and(|(c, _)| c == crc))
            });
        self.parents.insert(name.to_string(), found.clone());
        found
    }

    /// The body checksum and size of snapshot `file` on disk, if it is one of ours.
    fn identity_of(&mut self, file: &str) -> Option<(u32, u64)> {
        if !self.on_disk.iter().any(|(_, n)| n == file) {
            return None;
        }
        let path = join(&self.dir, file);
        let size = self.fs.open(&path, false).and_then(|f| f.len()).ok()?;
        if let Some(&crc) = self.checksums.get(file) {
            return Some((crc, size));
        }
        // The header's checksum: the receiver verifies the whole file against it.
        let crc = crate::snapshot::peek_machine(&*self.fs, &path)
            .ok()?
            .checksum;
        self.checksums.insert(file.to_string(), crc);
        Some((crc, size))
    }

    /// Sends `count` chunks of `file` from byte `from` to member `to`, at most at the
    /// configured rate; `Gone` when the file is not (or no longer) here.
    fn serve(&mut self, to: u64, file: &str, checksum: u32, from: u64, count: u32) {
        let gone = || Part::Gone {
            file: file.to_string(),
            checksum,
        };
        let Some((crc, size)) = self.identity_of(file) else {
            self.missing(file);
            return self.transport.send_part(to, gone());
        };
        if crc != checksum {
            return self.transport.send_part(to, gone());
        }
        self.pinned.insert(file.to_string(), Instant::now());
        let Ok(f) = self.fs.open(&join(&self.dir, file), false) else {
            self.missing(file);
            return self.transport.send_part(to, gone());
        };
        let mut at = from;
        for _ in 0..count {
            if at >= size {
                break;
            }
            let n = CHUNK_BYTES.min(size - at);
            let mut data = vec![0u8; n as usize];
            if let Err(e) = f.read_exact_at(&mut data, at) {
                log::warn!("reading {file} to send it: {e}");
                return;
            }
            self.pace(n);
            self.last_sent
                .insert(to, (file.to_string(), at + n, Instant::now()));
            let crc = crc32c::crc32c(&data);
            self.transport.send_part(
                to,
                Part::Chunk {
                    file: file.to_string(),
                    checksum,
                    at,
                    size,
                    data,
                    crc,
                },
            );
            at += n;
        }
    }

    /// Forgets a snapshot that is not on disk (deleted by hand, say) and says so.
    fn missing(&mut self, file: &str) {
        let exists = self.fs.open(&join(&self.dir, file), false).is_ok();
        if !exists {
            log::warn!("snapshot {file} was asked for but is not on disk");
            self.on_disk.retain(|(_, n)| n != file);
            self.checksums.remove(file);
            self.parents.remove(file);
            let _ = self.reports.send(Report::Missing {
                file: file.to_string(),
            });
        }
    }

    /// Sleeps as long as sending `bytes` more takes at the configured rate.
    fn pace(&mut self, bytes: u64) {
        if self.send_rate == 0 {
            return;
        }
        let (since, sent) = &mut self.sent;
        if since.elapsed() > std::time::Duration::from_secs(1) {
            *since = Instant::now();
            *sent = 0;
        }
        *sent += bytes;
        let due = std::time::Duration::from_secs_f64(*sent as f64 / self.send_rate as f64);
        if let Some(wait) = due.checked_sub(since.elapsed()) {
            std::thread::sleep(wait);
        }
    }

    /// Writes a chunk at `at` of the part file and, if `sync`, syncs it and returns
    /// the part file's length, durable. A chunk past the file's end is not written.
    fn receive(
        &mut self,
        part: &str,
        at: u64,
        data: &[u8],
        sync: bool,
    ) -> std::io::Result<Option<u64>> {
        let path = join(&self.dir, part);
        let mut f = match self.fs.open(&path, true) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && at == 0 => {
                let f = self.fs.create(&path)?;
                self.fs
                    .sync_dir(&self.dir)
                    .map_err(crate::fs::sync_failed)?;
                f
            }
            Err(e) => return Err(e),
        };
        let len = f.len()?;
        if at > len {
            // A chunk before it was lost: what is there is what counts.
            f.sync_data().map_err(crate::fs::sync_failed)?;
            return Ok(Some(len));
        }
        f.write_all_at(data, at)?;
        if !sync {
            return Ok(None);
        }
        f.sync_data().map_err(crate::fs::sync_failed)?;
        Ok(Some(at + data.len() as u64))
    }

    /// Verifies a whole chain (the files in `received` in their part files) and
    /// renames the received files into place, the tip last.
    fn finish(
        &mut self,
        id: &Identity,
        received: &[String],
    ) -> std::result::Result<(Image, Vec<SnapshotFile>), String> {
        let links = id.links();
        let names: Vec<String> = links
            .iter()
            .map(|l| {
                if received.contains(&l.file) {
                    l.part_name()
                } else {
                    l.file.clone()
                }
            })
            .collect();
        let checked =
            image::read_files(&*self.fs, &self.dir, &names, id.index).and_then(|(image, files)| {
                for (f, l) in files.iter().zip(&links) {
                    if f.checksum != l.checksum || f.size_bytes != l.size {
                        return Err(format!(
                            "{} is not the file offered (checksum {:08x}, {} bytes)",
                            l.file, f.checksum, f.size_bytes
                        ));
                    }
                }
                if image.term != id.term {
                    return Err(format!("its term is {}, not {}", image.term, id.term));
                }
                Ok(image)
            });
        let image = match checked {
            Ok(image) => image,
            Err(why) => {
                for l in links.iter().filter(|l| received.contains(&l.file)) {
                    let _ = self.fs.remove(&join(&self.dir, &l.part_name()));
                }
                return Err(format!(
                    "the received snapshot {} does not verify: {why}",
                    id.file
                ));
            }
        };
        // The chain's other files first, made durable, then the tip: a crash between
        // leaves no tip whose chain is not whole.
        let (tip, parents) = links.split_last().expect("a chain has a file");
        let put = |l: &crate::consensus::image::Link| -> std::io::Result<()> {
            if received.contains(&l.file) {
                self.fs
                    .rename(&join(&self.dir, &l.part_name()), &join(&self.dir, &l.file))?;
            }
            Ok(())
        };
        parents
            .iter()
            .try_for_each(put)
            .and_then(|()| self.fs.sync_dir(&self.dir).map_err(crate::fs::sync_failed))
            .and_then(|()| put(tip))
            .and_then(|()| self.fs.sync_dir(&self.dir).map_err(crate::fs::sync_failed))
            .map_err(|e| format!("putting the received snapshot {} in place: {e}", id.file))?;
        let mut chain = Vec::with_capacity(links.len());
        let mut parent: Option<String> = None;
        for l in &links {
            let index = crate::core::layout::parse_raft_snapshot(&l.file).unwrap_or(0);
            self.on_disk.retain(|(_, n)| *n != l.file);
            self.on_disk.push((index, l.file.clone()));
            self.checksums.insert(l.file.clone(), l.checksum);
            if crate::core::layout::is_raft_delta(&l.file) {
                self.parents.insert(l.file.clone(), parent.clone());
            }
            parent = Some(l.file.clone());
            chain.push(SnapshotFile {
                file: l.file.clone(),
                offset: Offset::new(index),
                size_bytes: l.size,
                checksum: l.checksum,
            });
        }
        self.on_disk.sort();
        // The next delta builds on this chain, its state read back when needed (the
        // installed state is not kept shared: the log applied after it would copy it).
        self.tip = None;
        self.loaded = chain.clone();
        Ok((image, chain))
    }

    /// Removes the part files other than `keep`.
    fn forget(&mut self, keep: &[String]) {
        let Ok(names) = self.fs.list(&self.dir) else {
            return;
        };
        for name in crate::core::recovery::classify(names).parts {
            if !keep.contains(&name) {
                let _ = self.fs.remove(&join(&self.dir, &name));
            }
        }
    }
}

/// Which snapshot files retention drops: `on_disk` (`(index, name)`) grouped into
/// chains by their root (the full snapshot each file's chain starts from, `None` when
/// a link is missing); the `retain` chains whose newest file is newest stay whole, and
/// so do the chains of `pinned` files (being sent). A file whose chain is broken goes
/// only when older than every chain kept.
fn chains_dropped(
    on_disk: &[(u64, String)],
    root: &std::collections::HashMap<String, Option<String>>,
    retain: u64,
    pinned: &std::collections::HashMap<String, Instant>,
) -> Vec<String> {
    let mut newest: Vec<(u64, &str)> = Vec::new();
    for (index, name) in on_disk {
        if let Some(Some(r)) = root.get(name) {
            match newest.iter_mut().find(|(_, n)| n == r) {
                Some(e) => e.0 = e.0.max(*index),
                None => newest.push((*index, r)),
            }
        }
    }
    newest.sort_by(|a, b| b.cmp(a));
    let mut keep: Vec<&str> = newest
        .iter()
        .take(retain.max(1) as usize)
        .map(|(_, r)| *r)
        .collect();
    for name in pinned.keys() {
        if let Some(Some(r)) = root.get(name) {
            keep.push(r);
        }
    }
    let oldest_kept = on_disk
        .iter()
        .filter(|(_, n)| keep.contains(&n.as_str()))
        .map(|(i, _)| *i)
        .min()
        .unwrap_or(0);
    on_disk
        .iter()
        .filter(|(index, name)| match root.get(name) {
            Some(Some(r)) => !keep.contains(&r.as_str()),
            _ => *index < oldest_kept && !pinned.contains_key(name),
        })
        .map(|(_, n)| n.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::layout::{raft_delta as d, raft_snapshot as s};

    fn roots(links: &[(&str, Option<&str>)]) -> std::collections::HashMap<String, Option<String>> {
        links
            .iter()
            .map(|(n, r)| (n.to_string(), r.map(str::to_string)))
            .collect()
    }

    #[test]
    fn retention_keeps_whole_chains_ranked_by_their_newest_file_and_those_being_sent() {
        // Own chains at 100 and 300; a chain received from the leader, based at 200,
        // whose deltas (400, 500) are the newest files.
        let on_disk: Vec<(u64, String)> = vec![
            (100, s(100)),
            (150, d(150)),
            (200, s(200)),
            (300, s(300)),
            (350, d(350)),
            (400, d(400)),
            (500, d(500)),
        ];
        let (s100, s200, s300) = (s(100), s(200), s(300));
        let root = roots(&[
            (&s(100), Some(&s100)),
            (&d(150), Some(&s100)),
            (&s(200), Some(&s200)),
            (&s(300), Some(&s300)),
            (&d(350), Some(&s300)),
            (&d(400), Some(&s200)),
            (&d(500), Some(&s200)),
        ]);
        let none = std::collections::HashMap::new();
        // One chain: the received one (newest file 500), base and deltas whole.
        let dropped = chains_dropped(&on_disk, &root, 1, &none);
        assert_eq!(dropped, vec![s(100), d(150), s(300), d(350)]);
        // Two: that one and the chain at 300.
        assert_eq!(
            chains_dropped(&on_disk, &root, 2, &none),
            vec![s(100), d(150)]
        );
        // A delta of the oldest chain being sent keeps that chain too.
        let pinned = [(d(150), Instant::now())].into_iter().collect();
        assert_eq!(
            chains_dropped(&on_disk, &root, 1, &pinned),
            vec![s(300), d(350)]
        );
        // A delta whose chain is broken goes only when older than every chain kept.
        let mut root = root;
        root.insert(d(150), None);
        root.insert(d(350), None);
        assert_eq!(
            chains_dropped(&on_disk, &root, 1, &none),
            vec![s(100), d(150), s(300)]
        );
    }
}

//! The snapshotter: serializes cuts of the state to disk, off the append path.
//!
//! It receives immutable cuts from the appender (persistent maps, shared with the
//! appender's live state), one at a time. Requests that queue while a snapshot is
//! being written share the next one: the newest cut among them is written once and
//! answers them all. Compaction requests pass through here so that they reach the
//! compactor only with a durable snapshot that covers them.
//!
//! This thread runs at nice 10 and does every file operation of a snapshot; the
//! body's encoding runs beside it on a thread under `SCHED_IDLE` (see
//! `snapshot::encode`), so that the CPU work gives way at once to the log's threads.
//!
//! Architecture Invariant: a snapshot is reported durable (to the requester, to the
//! appender and to the compactor) only after temp-file fsync, rename and directory
//! fsync have all completed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::actor::compactor::CompactorMsg;
use crate::actor::uploader::UploaderHandle;
use crate::actor::{Feedback, Poison, Reply, poison_on_panic, spawn_actor};
use crate::config::Config;
use crate::core::kv::{self, Change, KvState, Written};
use crate::core::policy::{self, ChainSize, Policy, SnapshotMode};
use crate::core::position::Offset;
use crate::error::Error;
use crate::fs::{FileSystem, Pacing, is_sync_failure};
use crate::snapshot::WritePace;
use crate::snapshot::{self, SnapshotFile};
use crate::types::Compaction;
use crate::wal::SyncCount;
use crate::wal::meta::SkipTo;

pub(crate) enum SnapshotterMsg {
    Snapshot {
        offset: Offset,
        state: KvState,
        /// The writes since the previous cut (`None` if the appender did not keep them).
        changed: Option<Written>,
        mode: SnapshotMode,
        policy: Policy,
        reply: Reply<SnapshotFile>,
    },
    Compact {
        at: Offset,
        offset: Offset,
        state: KvState,
        changed: Option<Written>,
        policy: Policy,
        next_offset: Offset,
        segments: Vec<(Offset, String)>,
        /// Where the live log will start, and in which file.
        start: (SkipTo, String),
        reply: Reply<Compaction>,
    },
}

impl SnapshotterMsg {
    fn cut_offset(&self) -> Offset {
        match self {
            SnapshotterMsg::Snapshot { offset, .. } | SnapshotterMsg::Compact { offset, .. } => {
                *offset
            }
        }
    }
}

pub(crate) struct Snapshotter {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    pace: WritePace,
    /// The chain the next delta would extend: its files (the full snapshot first)
    /// and the state at its tip, when known: `None` after opening and (in release
    /// builds) after each snapshot, read back from the chain's files when a delta
    /// needs it (a state kept shared with the appender's map would make the replay of
    /// the log, and every write until the next cut, copy the map's nodes).
    chain: Vec<SnapshotFile>,
    tip_state: Option<KvState>,
    /// The writes since the tip's cut, from every cut received since, later ones
    /// winning (complete once a snapshot was written here: the log replayed at recovery
    /// is not in it, so the first delta after opening diffs the two maps instead).
    since_tip: Written,
    since_tip_complete: bool,
    /// Snapshot files retention dropped, freed before the requesters are answered.
    retiring: Vec<String>,
    /// The news of the snapshot just written, for the appender.
    announce: Option<Feedback>,
    pacing: Pacing,
    inbox: Receiver<SnapshotterMsg>,
    compactor: Sender<CompactorMsg>,
    feedback: Sender<Feedback>,
    /// Snapshot files on disk, oldest first.
    on_disk: Vec<(Offset, String)>,
    /// Set after a failed sync: every later request fails.
    poison: Poison,
    /// Offered each chain once durable, if the node has a snapshot store.
    uploader: Option<UploaderHandle>,
}

pub(crate) struct SnapshotterParts {
    pub fs: Arc<dyn FileSystem>,
    pub config: Config,
    pub compactor: Sender<CompactorMsg>,
    pub feedback: Sender<Feedback>,
    pub on_disk: Vec<(Offset, String)>,
    pub chain: Vec<SnapshotFile>,
    pub uploader: Option<UploaderHandle>,
    /// The log's syncs, which pace the snapshot's writes.
    pub log_syncs: SyncCount,
}

/// Whether `changes` (from the keys written) hold every change of `diff` (from
/// comparing the maps), and nothing else but rewrites of a value the tip already has.
fn covers(changes: &[Change], diff: &[Change], tip: &KvState) -> bool {
    let all: std::collections::HashMap<_, _> = changes.iter().cloned().collect();
    diff.iter().all(|(k, v)| all.get(k) == Some(v))
        && changes
            .iter()
            .all(|(k, v)| diff.iter().any(|(d, _)| d == k) || tip.map.get(k) == v.as_ref())
}

impl Snapshotter {
    /// The state at the chain's tip, read back from its files.
    fn read_tip(&self) -> Result<KvState, String> {
        let names: Vec<String> = self.chain.iter().map(|f| f.file.clone()).collect();
        snapshot::read_files(&*self.fs, &self.dir, &names)
    }

    pub(crate) fn spawn(
        parts: SnapshotterParts,
    ) -> std::io::Result<(Sender<SnapshotterMsg>, std::thread::JoinHandle<()>)> {
        let (tx, inbox) = crossbeam_channel::bounded(parts.config.inbox_capacity);
        let on_panic = poison_on_panic(&parts.feedback);
        let actor = Snapshotter {
            poison: Poison::reporting_to(parts.feedback.clone()),
            fs: parts.fs,
            dir: parts.config.dir.clone(),
            pace: parts.config.snapshot_pace(parts.log_syncs),
            chain: parts.chain,
            tip_state: None,
            since_tip: Written::new(),
            since_tip_complete: false,
            retiring: Vec::new(),
            announce: None,
            pacing: Pacing {
                chunk_bytes: parts.config.delete_chunk_bytes,
                pause: parts.config.delete_pause,
            },
            inbox,
            compactor: parts.compactor,
            feedback: parts.feedback,
            on_disk: parts.on_disk,
            uploader: parts.uploader,
        };
        let join = spawn_actor("snapshotter", on_panic, move || {
            crate::actor::below_the_log();
            actor.run()
        })?;
        Ok((tx, join))
    }

    fn run(mut self) {
        while let Ok(first) = self.inbox.recv() {
            let mut group = vec![first];
            group.extend(self.inbox.try_iter());
            self.handle_group(group);
        }
        log::debug!("snapshotter stopped");
    }

    /// Frees the snapshot files retention dropped (`snapshot::retire`: renamed to a
    /// temp name, the rename made durable, then freed in paced steps). This happens
    /// before the requesters are answered, so that a client's next request never
    /// races it.
    fn retire(&mut self) {
        let names = std::mem::take(&mut self.retiring);
        if let Err(e) = snapshot::retire(&*self.fs, &self.dir, &names, &self.pacing) {
            self.poison.set(format!(
                "the directory sync after retiring snapshots {names:?} failed: {e}"
            ));
        }
    }

    fn handle_group(&mut self, mut group: Vec<SnapshotterMsg>) {
        for msg in &mut group {
            let (SnapshotterMsg::Snapshot { changed, .. }
            | SnapshotterMsg::Compact { changed, .. }) = msg;
            match changed.take() {
                Some(written) => self.since_tip.extend(written),
                None => {
                    // A stretch of writes is missing: the next delta diffs the maps.
                    self.since_tip_complete = false;
                    self.since_tip.clear();
                }
            }
        }
        // The newest durable snapshot is the tip of the chain.
        let durable_offset = self.chain.last().map(|s| s.offset);
        let needs_write = group.iter().any(|m| match m {
            SnapshotterMsg::Snapshot { offset, .. } => durable_offset < Some(*offset),
            SnapshotterMsg::Compact { at, .. } => durable_offset < Some(*at),
        });
        // The cuts share their maps with the appender's: every one held makes the
        // appender copy the nodes it writes to. Only the newest is kept, and only for as
        // long as the write needs it.
        let newest_at = group
            .iter()
            .map(SnapshotterMsg::cut_offset)
            .max()
            .expect("non-empty group");
        let mut newest_state = None;
        for msg in &mut group {
            let (SnapshotterMsg::Snapshot { state, .. } | SnapshotterMsg::Compact { state, .. }) =
                msg;
            let state = std::mem::take(state);
            if needs_write && newest_state.is_none() && msg.cut_offset() == newest_at {
                newest_state = Some(state);
            }
        }
        let mut failure = self.poison.check().err();
        if needs_write && failure.is_none() {
            let newest = group
                .iter()
                .find(|m| m.cut_offset() == newest_at)
                .expect("non-empty group");
            let (offset, policy) = match newest {
                SnapshotterMsg::Snapshot { offset, policy, .. }
                | SnapshotterMsg::Compact { offset, policy, .. } => (*offset, *policy),
            };
            let state = newest_state.take().expect("the newest cut's state");
            // A request for a full snapshot wins, then one for a delta.
            let modes = group.iter().filter_map(|m| match m {
                SnapshotterMsg::Snapshot { mode, .. } => Some(*mode),
                SnapshotterMsg::Compact { .. } => None,
            });
            let mode = modes.fold(SnapshotMode::Auto, |a, m| match (a, m) {
                (SnapshotMode::Full, _) | (_, SnapshotMode::Full) => SnapshotMode::Full,
                (SnapshotMode::Incremental, _) | (_, SnapshotMode::Incremental) => {
                    SnapshotMode::Incremental
                }
                _ => SnapshotMode::Auto,
            });
            if let Err(e) = self.write(offset, state, mode, &policy) {
                failure = Some(if is_sync_failure(&e) {
                    // Fail-stop: the node acknowledges nothing more until reopened.
                    self.poison.set(format!(
                        "a sync while writing the snapshot at offset {offset} failed: {e}"
                    ))
                } else {
                    Error::Unavailable(format!(
                        "writing the snapshot at offset {offset} failed (nothing changed): {e}"
                    ))
                });
            }
        }
        self.retire();
        if let Some(news) = self.announce.take() {
            let _ = self.feedback.send(news);
        }
        for msg in group {
            match msg {
                SnapshotterMsg::Snapshot { reply, .. } => match (&failure, self.chain.last()) {
                    (Some(e), _) => reply.send(Err(e.clone())),
                    (None, Some(s)) => reply.send(Ok(s.clone())),
                    (None, None) => {
                        unreachable!("a snapshot request always leaves a durable snapshot")
                    }
                },
                SnapshotterMsg::Compact { reply, .. } if self.poison.reason().is_some() => {
                    reply.send(Err(self.poison.refusal().expect("poisoned")))
                }
                SnapshotterMsg::Compact {
                    at,
                    next_offset,
                    segments,
                    start,
                    reply,
                    ..
                } => match self.chain.last().filter(|s| s.offset >= at) {
                    Some(s) => {
                        let msg = CompactorMsg::Compact {
                            at,
                            snapshot_offset: s.offset,
                            next_offset,
                            segments,
                            start,
                            reply,
                        };
                        if self.compactor.send(msg).is_err() {
                            log::error!("compactor stopped; compaction requests fail");
                        }
                    }
                    None => reply.send(Err(failure.clone().unwrap_or_else(|| {
                        Error::Unavailable(format!("no durable snapshot covers offset {at}"))
                    }))),
                },
            }
        }
    }

    fn write(
        &mut self,
        offset: Offset,
        state: KvState,
        mode: SnapshotMode,
        policy: &Policy,
    ) -> std::io::Result<()> {
        let started = Instant::now();
        let chain = self.chain.split_first().map(|(base, deltas)| ChainSize {
            deltas: deltas.len() as u64,
            deltas_bytes: deltas.iter().map(|d| d.size_bytes).sum(),
            base_bytes: base.size_bytes,
        });
        let mut delta = policy::next_is_delta(mode, chain, policy);
        if delta && !self.since_tip_complete && self.tip_state.is_none() {
            match self.read_tip() {
                Ok(tip) => self.tip_state = Some(tip),
                Err(why) => {
                    log::warn!("cannot read the chain's tip back ({why}): a full snapshot instead");
                    delta = false;
                }
            }
        }
        let other_payloads = state.other_payloads;
        let mut cut = Some(state);
        let written = if delta {
            let parent = self.chain.last().expect("a chain to extend");
            let state = cut.as_ref().expect("the cut");
            let changes = match &self.tip_state {
                Some(tip) if !self.since_tip_complete => tip.changes_to(state),
                tip => {
                    let changes = kv::changes_of(&self.since_tip);
                    debug_assert!(
                        tip.as_ref().is_none_or(|tip| covers(
                            &changes,
                            &tip.changes_to(state),
                            tip
                        )),
                        "the writes since the tip do not give the state of the cut"
                    );
                    changes
                }
            };
            // The delta is in hand: release builds let go of the cut now, so that the
            // appender's map is its own again while the delta is written.
            if !cfg!(debug_assertions) {
                cut = None;
            }
            let d = snapshot::write_delta(
                &*self.fs,
                &self.dir,
                offset,
                parent,
                &changes,
                other_payloads,
                &self.pace,
            )?;
            log::info!(
                "delta {} durable: {} changes on {}, {} bytes, {} ms",
                d.file,
                changes.len(),
                parent.file,
                d.size_bytes,
                started.elapsed().as_millis()
            );
            self.chain.push(d.clone());
            d
        } else {
            let state = cut.as_ref().expect("the cut");
            let f = snapshot::write(&*self.fs, &self.dir, offset, state, &self.pace)?;
            log::info!(
                "snapshot {} durable: {} keys, {} bytes, {} ms",
                f.file,
                state.map.len(),
                f.size_bytes,
                started.elapsed().as_millis()
            );
            self.chain = vec![f.clone()];
            f
        };
        // The tip's state is not kept (shared with the appender's map, it would make
        // every write until the next cut copy nodes of the map): the writes since the
        // tip make the next delta, and when they are not complete the tip is read back
        // from the chain's files. Debug builds keep it, to check every delta against
        // the diff of the maps.
        self.tip_state = if cfg!(debug_assertions) { cut } else { None };
        let spent = std::mem::take(&mut self.since_tip).into_shards();
        self.since_tip_complete = true;
        let duration_ms = started.elapsed().as_millis() as u64;
        self.on_disk.retain(|(o, _)| *o != offset);
        self.on_disk.push((offset, written.file.clone()));
        self.on_disk.sort();
        for (offset, name) in policy::retention(&self.on_disk, policy.retain_snapshots) {
            self.on_disk.retain(|(o, _)| *o != offset);
            self.retiring.push(name);
        }
        if let Some(uploader) = &self.uploader
            && let Some(upload) = crate::actor::uploader::chain_upload(&self.chain)
        {
            uploader.offer(upload);
        }
        // Announced once retention is done, so that whoever learns of the new snapshot
        // finds the old files gone.
        self.announce = Some(Feedback::SnapshotDurable {
            snapshot: written,
            duration_ms,
            on_disk: self.on_disk.clone(),
            spent,
        });
        Ok(())
    }
}

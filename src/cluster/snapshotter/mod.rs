//! The cluster snapshotter: the thread that writes a member's snapshots (full, or
//! deltas while the policy allows) and applies retention to whole chains (this file),
//! serves chunks of its snapshots to members catching up, paced, pinning what it sends
//! (`serve.rs`), and receives the snapshot its leader offers (`receive.rs`: chunks
//! straight from the transport, written, verified and put in place, as the transfer's
//! receiving side decides). The consensus actor sends it [`Job`]s and hears back through
//! [`Report`]s; the policy that decides when to cut and how much log to keep stays in
//! `manage.rs`, the transfer's rules in `transfer/`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

mod receive;
mod serve;

pub(super) use receive::Fetches;

use super::Transport;
use super::transfer::{ChainId, Part, Receiving, Transfers};
use crate::consensus::Image;
use crate::core::kv::KvState;
use crate::core::policy::{self, ChainSize, Policy, SnapshotMode};
use crate::core::position::Offset;
use crate::fs::{FileSystem, Pacing, is_sync_failure, join};
use crate::raftlog::image;
use crate::snapshot::WritePace;
use crate::types::{Compaction, SnapshotFile};

/// A snapshot to write, with the policy in force (retention, chain length).
pub(super) struct Cut {
    pub(super) image: Image,
    pub(super) policy: Policy,
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
    /// Member `from` offers snapshot `id`, which this node lacks: receive it (its
    /// chunks come from the transport straight to this thread).
    Offer { id: ChainId, from: u64 },
}

/// What the snapshotter and the compactor report to the consensus actor.
pub(super) enum Report {
    /// A snapshot is durable (and retention applied), or why not; `fatal` when a sync
    /// failed.
    Snapshot(std::result::Result<Written, (String, bool)>),
    /// A compaction finished (its requester, if any, was answered).
    Compaction(std::result::Result<Compaction, String>),
    /// A member asked for snapshot `file`, which is not (or no longer) on this node's
    /// disk: it must not be offered again.
    Missing { file: String },
    /// A received snapshot is whole, verified and in place: its image, and its chain's
    /// files, base first.
    Downloaded {
        id: ChainId,
        image: Box<Image>,
        chain: Vec<SnapshotFile>,
    },
    /// The counts of the transfers received, changed.
    Transfers(Transfers),
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

/// The snapshotter thread's state (see the module documentation).
pub(super) struct ChainSnapshotter {
    pub(super) fs: Arc<dyn FileSystem>,
    pub(super) dir: PathBuf,
    pub(super) pace: WritePace,
    pub(super) pacing: Pacing,
    /// Snapshots on disk, `(index, name)`, oldest first.
    pub(super) on_disk: Vec<(u64, String)>,
    /// The newest chain (base first) and the state at its tip: what a delta builds on.
    pub(super) tip: Option<(Vec<SnapshotFile>, KvState)>,
    /// The chain loaded at startup, whose state is read back from its files when the
    /// first delta needs it (keeping the loaded state from the start would make the
    /// replay of the log copy every node of the map it touches).
    pub(super) loaded: Vec<SnapshotFile>,
    /// The file each delta on disk builds on, as learned.
    pub(super) parents: std::collections::HashMap<String, Option<String>>,
    pub(super) reports: Sender<Report>,
    pub(super) transport: Arc<dyn Transport>,
    /// Snapshots being sent, with the time of the last ask: retention keeps them.
    pub(super) pinned: std::collections::HashMap<String, Instant>,
    /// How long a snapshot stays pinned after its last ask
    /// ([`ClusterLimits::pin`](crate::config::ClusterLimits::pin)).
    pub(super) pin: Duration,
    /// Body checksums of the snapshots on disk, as learned.
    pub(super) checksums: std::collections::HashMap<String, u32>,
    /// Most bytes per second sent to other members (0: no limit).
    pub(super) send_rate: u64,
    /// Since when, and how many bytes, sent at the current rate.
    pub(super) sent: (Instant, u64),
    /// Per member, the file, end and time of the last chunk sent to it.
    pub(super) last_sent: std::collections::HashMap<u64, (String, u64, Instant)>,
    /// The snapshot being received, and the counts last reported.
    pub(super) receiving: Receiving,
    pub(super) reported: Transfers,
    /// Fetches of offered snapshots from the store.
    pub(super) fetches: Fetches,
    /// What the receiving side's timers read ([`Config::clock`](crate::config::Config::clock)).
    pub(super) clock: Arc<dyn crate::clock::Clock>,
    /// How often the receiving side's timers are looked at.
    pub(super) tick: Duration,
}

impl ChainSnapshotter {
    /// Takes jobs from the consensus actor and parts from the transport until the jobs
    /// channel closes (or a snapshot's sync fails).
    pub(super) fn run(mut self, jobs: &Receiver<Job>, parts: &Receiver<(u64, Part)>) {
        let mut parts = parts.clone();
        loop {
            crossbeam_channel::select! {
                recv(jobs) -> job => match job {
                    Ok(job) => {
                        if !self.job(job) {
                            break;
                        }
                    }
                    Err(_) => break,
                },
                recv(parts) -> part => match part {
                    Ok((from, part)) => self.on_part(from, part),
                    // Every transport handle dropped: nothing more arrives.
                    Err(_) => parts = crossbeam_channel::never(),
                },
                recv(self.fetches.rx) -> fetched => {
                    if let Ok(fetched) = fetched {
                        self.fetched(fetched);
                    }
                }
                default(self.tick) => {}
            }
            self.transfer_tick();
        }
        self.fetches.stop();
        log::debug!("cluster snapshotter stopped");
    }

    /// Does a job; false once a snapshot's sync failed (the thread stops).
    fn job(&mut self, job: Job) -> bool {
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
                // An ask for bytes sent after it arrived is one the follower repeated
                // while they were on their way: they will get there.
                let stale = self
                    .last_sent
                    .get(&to)
                    .is_some_and(|(f, end, at)| *f == file && from < *end && asked < *at);
                if !stale {
                    self.serve(to, &file, checksum, from, count);
                }
                return true;
            }
            Job::Offer { id, from } => {
                self.offered(id, from);
                return true;
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
        !failed
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
                chain
                    .last()
                    .is_some_and(|t| image::index_of(t).get() < index)
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
        let tip = image::index_of(chain.last()?).get();
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
        let pin = self.pin;
        self.pinned.retain(|_, at| at.elapsed() < pin);
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

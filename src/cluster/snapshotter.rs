//! The cluster snapshotter: the thread that writes a member's snapshots (full, or
//! deltas while the policy allows) and applies retention to whole chains, serves chunks
//! of its snapshots to members catching up (paced, pinning what it sends), and writes,
//! verifies and puts in place the chunks it receives. The consensus actor sends it
//! [`Job`]s and hears back through [`Report`]s; the policy that decides when to cut and
//! how much log to keep stays in `manage.rs`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::Transport;
use super::transfer::{CHUNK_BYTES, ChainId, Part};
use crate::consensus::Image;
use crate::core::kv::KvState;
use crate::core::policy::{self, ChainSize, Policy, SnapshotMode};
use crate::core::position::{Offset, RaftIndex};
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
    Finish { id: ChainId, received: Vec<String> },
    /// Remove part files other than `keep` (a transfer that will not resume).
    Forget { keep: Vec<String> },
}

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
        id: ChainId,
        outcome: std::result::Result<(Image, Vec<SnapshotFile>), String>,
    },
    /// A snapshot offered was fetched from the snapshot store into its part file
    /// (whole and synced), or why not.
    Fetched {
        id: ChainId,
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
}

impl ChainSnapshotter {
    pub(super) fn run(mut self, jobs: &Receiver<Job>) {
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
        id: &ChainId,
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
        let put = |l: &crate::raftlog::image::Link| -> std::io::Result<()> {
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
                offset: image::carrying(RaftIndex::new(index)),
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

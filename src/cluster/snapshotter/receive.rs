//! Receiving a snapshot: the snapshotter carries out what the transfer's receiving side
//! ([`Receiving`], which holds the state and the rules) asks for. Chunks come here
//! straight from the transport, never through the consensus actor; the offer comes from
//! the consensus actor, which hears back once the chain is whole, verified and in
//! place, and steps the offer into raft-rs.

use std::collections::VecDeque;
use std::path::Path;

use crossbeam_channel::{Receiver, Sender};

use super::{ChainSnapshotter, Report};
use crate::actor::spawn_actor;
use crate::cluster::transfer::{ChainId, Do, Part, PartFiles};
use crate::consensus::Image;
use crate::core::position::RaftIndex;
use crate::fs::{FileSystem, join};
use crate::raftlog::image::{self, Link};
use crate::store::StoreConfig;
use crate::types::SnapshotFile;

/// The snapshot files and part files in a member's directory, as the receiving side
/// reads them.
struct OnDisk<'a> {
    fs: &'a dyn FileSystem,
    dir: &'a Path,
}

impl PartFiles for OnDisk<'_> {
    fn holds(&self, link: &Link) -> bool {
        crate::snapshot::peek_machine(self.fs, &join(self.dir, &link.file))
            .is_ok_and(|f| f.checksum == link.checksum && f.size_bytes == link.size)
    }

    fn len(&self, name: &str) -> Option<u64> {
        self.fs
            .open(&join(self.dir, name), false)
            .and_then(|f| f.len())
            .ok()
    }
}

/// What a fetch from the store ends with: the objects fetched, or why not.
type Fetched = (ChainId, std::result::Result<String, String>);

/// Fetches of offered snapshots from the store, each on a thread of its own.
pub(in crate::cluster) struct Fetches {
    store: Option<StoreConfig>,
    tx: Sender<Fetched>,
    /// Their outcomes: one per fetch, drained by the snapshotter's loop.
    pub(super) rx: Receiver<Fetched>,
    running: Vec<std::thread::JoinHandle<()>>,
}

impl Fetches {
    pub(in crate::cluster) fn new(store: Option<StoreConfig>) -> Fetches {
        // Each fetch sends one outcome; the loop drains them, and a fetch still
        // running at the stop finds the receiver gone.
        let (tx, rx) = crossbeam_channel::bounded(4);
        Fetches {
            store,
            tx,
            rx,
            running: Vec::new(),
        }
    }

    /// Waits for the fetches under way: each ends within the store's own timeouts.
    pub(super) fn stop(&mut self) {
        self.rx = crossbeam_channel::never();
        for fetch in self.running.drain(..) {
            let _ = fetch.join();
        }
    }
}

impl ChainSnapshotter {
    /// Member `from` offers snapshot `id`, which this node lacks.
    pub(super) fn offered(&mut self, id: ChainId, from: u64) {
        let now = self.clock.now();
        let disk = OnDisk {
            fs: &*self.fs,
            dir: &self.dir,
        };
        let todo = self.receiving.offer(id, from, now, &disk);
        self.carry_out(todo);
    }

    /// A part of a transfer from member `from`, straight from the transport.
    pub(super) fn on_part(&mut self, from: u64, part: Part) {
        match part {
            Part::Chunk { .. } => {
                let now = self.clock.now();
                let todo = self.receiving.chunk(part, now);
                self.carry_out(todo.into_iter().collect());
            }
            Part::Gone { file, checksum } => {
                self.receiving.gone(&file, checksum);
            }
            Part::Ask { .. } => {
                log::debug!("an ask from node {from} came to the receiving side: dropped");
            }
        }
    }

    /// A fetch from the store ended.
    pub(super) fn fetched(&mut self, (id, outcome): Fetched) {
        let now = self.clock.now();
        let disk = OnDisk {
            fs: &*self.fs,
            dir: &self.dir,
        };
        let todo = self.receiving.fetched(&id, outcome, now, &disk);
        self.carry_out(todo);
    }

    /// Time passed.
    pub(super) fn transfer_tick(&mut self) {
        if self.receiving.receiving().is_none() {
            return;
        }
        let now = self.clock.now();
        let disk = OnDisk {
            fs: &*self.fs,
            dir: &self.dir,
        };
        let todo = self.receiving.tick(now, &disk);
        self.carry_out(todo);
    }

    /// Carries out what the receiving side asks, and what that leads to, in order;
    /// then tells the consensus actor the transfers' counts if they changed.
    fn carry_out(&mut self, todo: Vec<Do>) {
        let mut todo = VecDeque::from(todo);
        while let Some(step) = todo.pop_front() {
            let now = self.clock.now();
            let more = match step {
                Do::Ask { to, part } => {
                    self.transport.send_part(to, part);
                    Vec::new()
                }
                Do::Write {
                    part,
                    at,
                    data,
                    sync,
                } => match self.receive(&part, at, &data, sync) {
                    Ok(Some(durable)) => {
                        let disk = OnDisk {
                            fs: &*self.fs,
                            dir: &self.dir,
                        };
                        self.receiving.durable(&part, durable, now, &disk)
                    }
                    Ok(None) => Vec::new(),
                    Err(e) => {
                        // Asked again after the pause.
                        log::warn!("writing a received snapshot chunk to {part}: {e}");
                        Vec::new()
                    }
                },
                Do::Verify { id, received } => {
                    let outcome = self.finish(&id, &received);
                    let verdict = outcome.as_ref().map(|_| ()).map_err(Clone::clone);
                    let disk = OnDisk {
                        fs: &*self.fs,
                        dir: &self.dir,
                    };
                    let more = self.receiving.verified(&id, verdict, now, &disk);
                    // The counts first: the install time is added to the transfer
                    // they count complete.
                    self.report_counts();
                    if let Ok((image, chain)) = outcome {
                        let image = Box::new(image);
                        let _ = self.reports.send(Report::Downloaded { id, image, chain });
                    }
                    more
                }
                Do::Fetch { id, need } => match self.fetch(&id, need) {
                    Ok(()) => Vec::new(),
                    Err(why) => {
                        let disk = OnDisk {
                            fs: &*self.fs,
                            dir: &self.dir,
                        };
                        self.receiving.fetched(&id, Err(why), now, &disk)
                    }
                },
                Do::Forget { keep } => {
                    self.forget(&keep);
                    Vec::new()
                }
            };
            todo.extend(more);
        }
        self.report_counts();
    }

    /// Tells the consensus actor the transfers' counts, if they changed.
    fn report_counts(&mut self) {
        if self.receiving.stats != self.reported {
            self.reported = self.receiving.stats;
            let _ = self.reports.send(Report::Transfers(self.reported));
        }
    }

    /// Starts fetching the files `need` of chain `id` from the store into their part
    /// files, on a thread of its own.
    fn fetch(&mut self, id: &ChainId, need: Vec<Link>) -> std::result::Result<(), String> {
        let Some(config) = self.fetches.store.clone() else {
            return Err("no snapshot store".into());
        };
        let (fs, dir) = (self.fs.clone(), self.dir.clone());
        let tx = self.fetches.tx.clone();
        let on_panic = {
            let (tx, id) = (tx.clone(), id.clone());
            move |why: String| {
                let _ = tx.send((id, Err(format!("the fetch failed: {why}"))));
            }
        };
        let id = id.clone();
        let spawned = spawn_actor("store-fetch", on_panic, move || {
            let outcome = crate::store::open(&config).and_then(|store| {
                let mut objects = Vec::new();
                for l in &need {
                    let path = join(&dir, &l.part_name());
                    objects.push(crate::store::fetch_file(
                        &*store, &*fs, &path, &l.file, l.size, l.checksum,
                    )?);
                }
                Ok(objects.join(", "))
            });
            let _ = tx.send((id, outcome));
        })
        .map_err(|e| format!("cannot start a thread to fetch from the store: {e}"))?;
        // Fetches that ended are joined here; the rest when the snapshotter stops.
        let (ended, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.fetches.running)
            .into_iter()
            .partition(std::thread::JoinHandle::is_finished);
        for fetch in ended {
            let _ = fetch.join();
        }
        self.fetches.running = running;
        self.fetches.running.push(spawned);
        Ok(())
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

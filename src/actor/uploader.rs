//! The uploader: copies each durable snapshot chain to the snapshot store, off every
//! other path.
//!
//! The snapshotter offers it each chain once durable, through a bounded queue that never
//! blocks the offerer (when full, the oldest offer goes: a newer chain supersedes it).
//! The uploader takes the newest offer first, uploads the chain's files the store lacks
//! (object names carry the file's checksum, so a file already there is not sent again),
//! then its manifest, created only if absent, then applies the store's retention.
//! Offers older than one uploaded are dropped. A failure is retried with backoff
//! (0.2 s doubling to 10 s) while the node goes on; the status says what failed.
//!
//! Architecture Invariant: a manifest is written only after every file it lists is in
//! the store, and retention deletes manifests (then files no kept manifest lists) only
//! after a newer manifest of the node is in the store.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::shipper::{self, ShipParts, Shipper, now_ms};
use crate::fs::FileSystem;
use crate::store::{self, ChainFile, Manifest, SnapshotStore, StoreError};
use crate::types::{SnapshotFile, UploadStatus};

/// Offers kept waiting; beyond this the oldest is dropped.
pub const QUEUE_MAX: usize = 4;
/// The first retry's delay; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// A durable chain to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Entries `[0, index)` (a Raft index for a group node).
    pub index: u64,
    /// The term of the entry at the index (0 for a single node).
    pub term: u64,
    /// The group's voters and learners at the index.
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    /// The chain's files in the node's directory, the full snapshot first.
    pub files: Vec<SnapshotFile>,
}

/// Where the uploader works, and for whom.
pub struct UploaderParts {
    pub store: Box<dyn SnapshotStore>,
    pub fs: Arc<dyn FileSystem>,
    pub dir: PathBuf,
    /// The node's name in the store.
    pub node: String,
    /// The group's founders (empty for a single node).
    pub cluster: Vec<String>,
    /// Chains kept in the store.
    pub retain: u64,
    /// Most bytes per second read and sent (0: no limit).
    pub rate: u64,
    /// The log shipper's parts, when the log is shipped too.
    pub ship: Option<ShipParts>,
}

struct Shared {
    queue: Mutex<VecDeque<Upload>>,
    /// Shared with the log shipper, as are `shipped` and `stop`.
    status: Arc<Mutex<UploadStatus>>,
    /// The offset of the next entry to ship (0: none shipped, or not shipping).
    shipped: Arc<AtomicU64>,
    /// One more than the index of the newest chain uploaded (0: none).
    uploaded: AtomicU64,
    /// One more than the index of the newest chain offered (0: none).
    offered: AtomicU64,
    stop: Arc<AtomicBool>,
}

/// Offers chains to the uploader and reads its status; cloneable.
#[derive(Clone)]
pub struct UploaderHandle {
    shared: Arc<Shared>,
    wake: Sender<()>,
    /// Wakes the log shipper (to ship at once), when there is one.
    ship_wake: Option<Sender<()>>,
    /// One past the log's last durable entry, when the log is shipped.
    durable: Option<crate::wal::DurableEnd>,
}

impl std::fmt::Debug for UploaderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploaderHandle").finish()
    }
}

impl UploaderHandle {
    /// Queues `upload` (never blocks; drops the oldest offer when the queue is full).
    pub fn offer(&self, upload: Upload) {
        self.shared
            .offered
            .fetch_max(upload.index + 1, Ordering::AcqRel);
        let mut q = self.shared.queue.lock().expect("queue");
        if q.iter().any(|u| u.index >= upload.index) {
            return;
        }
        q.push_back(upload);
        while q.len() > QUEUE_MAX {
            q.pop_front();
        }
        drop(q);
        let _ = self.wake.try_send(());
    }

    /// What the uploader has done.
    pub fn status(&self) -> UploadStatus {
        let mut s = self.shared.status.lock().expect("status").clone();
        s.queued = self.shared.queue.lock().expect("queue").len();
        if let Some(durable) = &self.durable {
            let shipped = self.shared.shipped.load(Ordering::Acquire);
            s.unshipped_entries = Some(durable.get().saturating_sub(shipped));
        }
        s
    }

    /// The offset after the newest entry shipped to the store (0 before the shipper
    /// found where it left off; `None`: the log is not shipped).
    pub fn shipped_end(&self) -> Option<u64> {
        let next = self.shared.shipped.load(Ordering::Acquire);
        self.ship_wake.is_some().then_some(next)
    }

    /// The index of the newest chain this node has in the store.
    pub fn uploaded_index(&self) -> Option<u64> {
        self.shared.uploaded.load(Ordering::Acquire).checked_sub(1)
    }

    /// Waits up to `wait` for the newest chain offered to be in the store (the upload
    /// in flight, then the newest queued); what the store lacks if it is not: the
    /// newest chain uploaded (`None`: none) and the newest offered.
    ///
    /// # Errors
    /// The store is still behind after `wait`.
    pub fn wait_caught_up(&self, wait: Duration) -> Result<(), (Option<u64>, u64)> {
        let deadline = Instant::now() + wait;
        loop {
            let offered = self.shared.offered.load(Ordering::Acquire);
            let uploaded = self.shared.uploaded.load(Ordering::Acquire);
            if uploaded >= offered {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err((uploaded.checked_sub(1), offered - 1));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `wait` for every durable entry of the log to be shipped (at once:
    /// the shipper is woken); the offset after the last one shipped if they are not.
    ///
    /// # Errors
    /// The shipped log is still behind at `deadline`.
    pub fn wait_shipped(&self, deadline: Instant) -> Result<(), u64> {
        let (Some(wake), Some(durable)) = (&self.ship_wake, &self.durable) else {
            return Ok(());
        };
        let _ = wake.try_send(());
        loop {
            let shipped = self.shared.shipped.load(Ordering::Acquire);
            if shipped >= durable.get() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(shipped);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// [`UploaderHandle::wait_caught_up`] (and, with the log shipped,
    /// [`UploaderHandle::wait_shipped`]) for up to `wait` when the node stops, saying
    /// on the log how far behind the store is if it gave up.
    pub fn drain_at_shutdown(&self, wait: Duration) {
        if wait.is_zero() {
            return;
        }
        let started = Instant::now();
        if let Err(shipped) = self.wait_shipped(started + wait) {
            log::warn!(
                "stopping with the shipped log behind: the store has entries before offset \
                 {shipped}, the log {} (they stay on disk: the next start ships them); gave up \
                 after {} s",
                self.durable.as_ref().map_or(0, crate::wal::DurableEnd::get),
                wait.as_secs_f64()
            );
        }
        let wait = wait.saturating_sub(started.elapsed());
        let behind = self.shared.uploaded.load(Ordering::Acquire)
            < self.shared.offered.load(Ordering::Acquire);
        if behind {
            log::info!(
                "stopping: waiting up to {} s for the newest snapshot chain to reach the store",
                wait.as_secs_f64()
            );
        }
        match self.wait_caught_up(wait) {
            Ok(()) if behind => log::info!(
                "the newest snapshot chain reached the store ({} ms)",
                started.elapsed().as_millis()
            ),
            Ok(()) => {}
            Err((uploaded, newest)) => log::warn!(
                "stopping with the store behind: it holds {}, the node's newest is at \
                 {newest} (still on disk: the next start uploads it); gave up after {} s{}",
                uploaded.map_or("no chain of this node".to_string(), |i| format!(
                    "this node's chain at {i}"
                )),
                wait.as_secs_f64(),
                self.status()
                    .last_error
                    .map_or(String::new(), |e| format!("; the last error: {e}"))
            ),
        }
    }

    /// Stops the thread after the request in progress (the queue is dropped: the
    /// chains are on disk, and the next start offers the newest again).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.wake.try_send(());
        if let Some(w) = &self.ship_wake {
            let _ = w.try_send(());
        }
    }
}

/// Starts the uploader thread.
///
/// # Errors
/// The thread could not be started.
/// Starts the uploader thread (and the log shipper's, which it joins when it stops).
///
/// # Errors
/// A thread could not be started, or the directory's shipping history could not be
/// read or made.
pub fn spawn(
    mut parts: UploaderParts,
) -> std::io::Result<(UploaderHandle, std::thread::JoinHandle<()>)> {
    let (wake, woken) = crossbeam_channel::bounded(1);
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        status: Arc::new(Mutex::new(UploadStatus {
            url: parts.store.url(),
            shipping: parts.ship.is_some(),
            ..UploadStatus::default()
        })),
        shipped: Arc::new(AtomicU64::new(0)),
        uploaded: AtomicU64::new(0),
        offered: AtomicU64::new(0),
        stop: Arc::new(AtomicBool::new(false)),
    });
    let mut ship_wake = None;
    let durable = parts.ship.as_ref().map(|s| s.durable.clone());
    let mut history = None;
    let mut shipper_join = None;
    if let Some(ship) = parts.ship.take() {
        let id = shipper::history(&*parts.fs, &parts.dir)?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        let shipper = Shipper {
            parts: ship,
            fs: parts.fs.clone(),
            dir: parts.dir.clone(),
            node: parts.node.clone(),
            history: id.clone(),
        };
        let shared = shipper::Shared {
            stop: shared.stop.clone(),
            status: shared.status.clone(),
            shipped: shared.shipped.clone(),
        };
        shipper_join = Some(
            std::thread::Builder::new()
                .name("log-shipper".into())
                .spawn(move || {
                    crate::actor::below_the_log();
                    shipper.run(&shared, &rx)
                })?,
        );
        ship_wake = Some(tx);
        history = Some(id);
    }
    let handle = UploaderHandle {
        shared: shared.clone(),
        wake,
        ship_wake,
        durable,
    };
    let mut uploader = Uploader {
        parts,
        shared,
        crcs: HashMap::new(),
        history,
    };
    // The uploader joins the shipper when it stops; if it cannot start, this does.
    let shipper_join = Arc::new(Mutex::new(shipper_join));
    let joins = shipper_join.clone();
    let join = std::thread::Builder::new()
        .name("uploader".into())
        .spawn(move || {
            crate::actor::below_the_log();
            uploader.run(&woken);
            if let Some(j) = joins.lock().expect("join").take()
                && j.join().is_err()
            {
                log::error!("the log shipper panicked");
            }
        });
    match join {
        Ok(join) => Ok((handle, join)),
        Err(e) => {
            handle.stop();
            if let Some(j) = shipper_join.lock().expect("join").take() {
                let _ = j.join();
            }
            Err(e)
        }
    }
}

struct Uploader {
    parts: UploaderParts,
    shared: Arc<Shared>,
    /// Whole-file checksums computed so far, by file name and body checksum.
    crcs: HashMap<(String, u32), u32>,
    /// The shipping history its manifests name, when the log is shipped.
    history: Option<String>,
}

impl Uploader {
    fn run(&mut self, woken: &Receiver<()>) {
        let mut retry = RETRY_FIRST;
        let mut wait: Option<Duration> = None;
        loop {
            let _ = match wait {
                Some(d) => woken.recv_timeout(d).map_err(|_| ()),
                None => woken.recv().map_err(|_| ()),
            };
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            let newest = self.shared.queue.lock().expect("queue").back().cloned();
            let Some(upload) = newest else {
                wait = None;
                continue;
            };
            let started = Instant::now();
            self.shared.status.lock().expect("status").uploading = Some(upload.index);
            let outcome = self.upload(&upload);
            self.shared.status.lock().expect("status").uploading = None;
            match outcome {
                Ok(bytes) => {
                    retry = RETRY_FIRST;
                    wait = Some(Duration::ZERO);
                    self.shared
                        .queue
                        .lock()
                        .expect("queue")
                        .retain(|u| u.index > upload.index);
                    self.shared
                        .uploaded
                        .fetch_max(upload.index + 1, Ordering::AcqRel);
                    let mut s = self.shared.status.lock().expect("status");
                    s.uploaded_index = s.uploaded_index.max(Some(upload.index));
                    s.uploaded_at_ms = Some(now_ms());
                    s.chains_uploaded += 1;
                    s.bytes_uploaded += bytes;
                    s.last_error = None;
                    log::info!(
                        "snapshot chain at {} uploaded to {}: {bytes} bytes sent, {} ms",
                        upload.index,
                        s.url,
                        started.elapsed().as_millis()
                    );
                }
                Err(why) => {
                    let superseded = {
                        let mut q = self.shared.queue.lock().expect("queue");
                        let newer = q.iter().any(|u| u.index > upload.index);
                        if newer {
                            q.retain(|u| u.index != upload.index);
                        }
                        newer
                    };
                    let mut s = self.shared.status.lock().expect("status");
                    s.failures += 1;
                    s.last_error = Some(why.clone());
                    if superseded {
                        log::info!(
                            "uploading the chain at {} failed ({why}); a newer one goes instead",
                            upload.index
                        );
                        wait = Some(Duration::ZERO);
                    } else {
                        log::warn!(
                            "uploading the chain at {} to {} failed: {why}; retrying in {} ms",
                            upload.index,
                            s.url,
                            retry.as_millis()
                        );
                        wait = Some(retry);
                        retry = (retry * 2).min(RETRY_MAX);
                    }
                }
            }
        }
        log::debug!("uploader stopped");
    }

    /// Uploads the chain's missing files, then its manifest, then applies retention;
    /// returns the bytes sent.
    fn upload(&mut self, upload: &Upload) -> Result<u64, String> {
        let node = self.parts.node.clone();
        let store = &*self.parts.store;
        let present: HashMap<String, u64> = store
            .list(&format!("{node}/files/"))
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|l| (l.name, l.size))
            .collect();
        let mut files = Vec::new();
        let mut sent = 0;
        for f in &upload.files {
            let key = (f.file.clone(), f.checksum);
            let crc = match self.crcs.get(&key) {
                Some(crc) => *crc,
                None => {
                    let crc = store::file_crc(&*self.parts.fs, &self.parts.dir, f)
                        .map_err(|e| format!("reading {}: {e}", f.file))?;
                    self.crcs.insert(key, crc);
                    crc
                }
            };
            let object = store::file_object(&node, &f.file, crc);
            if present.get(&object) != Some(&store.stored_size(f.size_bytes)) {
                let mut source = store::FileSource::open(&*self.parts.fs, &self.parts.dir, f)
                    .map_err(|e| format!("reading {}: {e}", f.file))?
                    .expecting(crc)
                    .paced(self.parts.rate)
                    .cancelled_by(&self.shared.stop);
                store
                    .put(&object, &mut source, f.size_bytes)
                    .map_err(|e| e.to_string())?;
                sent += f.size_bytes;
            }
            files.push(ChainFile {
                name: f.file.clone(),
                object,
                size: f.size_bytes,
                crc32c: crc,
            });
        }
        let manifest = Manifest {
            node: node.clone(),
            cluster: self.parts.cluster.clone(),
            index: upload.index,
            term: upload.term,
            voters: upload.voters.clone(),
            learners: upload.learners.clone(),
            created_ms: now_ms(),
            files,
            history: self.history.clone(),
        };
        let bytes = manifest.to_json();
        sent += bytes.len() as u64;
        store
            .put_new(&manifest.object(), bytes)
            .map_err(|e| e.to_string())?;
        // Only the chains the uploader just used are worth their cached checksums.
        self.crcs.retain(|(name, sum), _| {
            upload
                .files
                .iter()
                .any(|f| &f.file == name && f.checksum == *sum)
        });
        if let Err(e) = self.retain() {
            log::warn!("store retention: {e}");
        }
        Ok(sent)
    }

    /// Deletes this node's chains beyond the newest `retain` (manifests first), and
    /// file objects no kept manifest lists.
    fn retain(&self) -> Result<(), StoreError> {
        let store = &*self.parts.store;
        let node = &self.parts.node;
        let objects = store.list(&format!("{node}/"))?;
        let mut own = Vec::new();
        for o in objects.iter().filter(|o| o.name.contains("/manifests/")) {
            let mut bytes = Vec::new();
            store.get(&o.name, &mut bytes)?;
            match Manifest::from_json(&bytes) {
                Ok(m) => own.push(m),
                Err(why) => log::warn!("{} in the store does not read: {why}", o.name),
            }
        }
        let (manifests, files) = store::retention_plan(node, &own, &objects, self.parts.retain);
        for name in manifests.iter().chain(&files) {
            store.delete(name)?;
            log::debug!("removed {name} from the store");
        }
        Ok(())
    }
}

/// A single node's chain (the full snapshot first) as an [`Upload`].
pub fn chain_upload(chain: &[SnapshotFile]) -> Option<Upload> {
    let tip = chain.last()?;
    Some(Upload {
        index: tip.offset.get(),
        term: 0,
        voters: vec![],
        learners: vec![],
        files: chain.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::kv::KvState;
    use crate::fs::RealFs;
    use crate::store::{Listed, LocalStore};
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicBool;

    /// A local store whose file puts or manifest creations can be made to fail.
    struct Flaky {
        inner: LocalStore,
        fail_files: Arc<AtomicBool>,
        fail_manifests: Arc<AtomicBool>,
    }

    impl SnapshotStore for Flaky {
        fn url(&self) -> String {
            self.inner.url()
        }
        fn put(&self, name: &str, data: &mut dyn Read, size: u64) -> Result<(), StoreError> {
            if self.fail_files.load(Ordering::Acquire) {
                return Err(StoreError::Failed("planted failure".into()));
            }
            self.inner.put(name, data, size)
        }
        fn put_new(&self, name: &str, data: Vec<u8>) -> Result<bool, StoreError> {
            if self.fail_manifests.load(Ordering::Acquire) {
                return Err(StoreError::Failed("planted failure".into()));
            }
            self.inner.put_new(name, data)
        }
        fn get(&self, name: &str, into: &mut dyn Write) -> Result<u64, StoreError> {
            self.inner.get(name, into)
        }
        fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
            self.inner.list(prefix)
        }
        fn delete(&self, name: &str) -> Result<(), StoreError> {
            self.inner.delete(name)
        }
    }

    fn snapshot(dir: &std::path::Path, keys: usize) -> Upload {
        let mut state = KvState::default();
        for i in 0..keys {
            state.apply(format!("set k{i}=v{i}").as_bytes());
        }
        let offset = crate::core::position::Offset::new(keys as u64);
        let f = crate::snapshot::write(
            &RealFs,
            dir,
            offset,
            &state,
            &crate::snapshot::WritePace::unpaced(4096),
        )
        .unwrap();
        chain_upload(&[f]).unwrap()
    }

    fn wait(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_chain_is_listed_only_once_whole_and_the_old_one_goes_only_after_it() {
        let node_dir = tempfile::tempdir().unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let fail_files = Arc::new(AtomicBool::new(false));
        let fail_manifests = Arc::new(AtomicBool::new(false));
        let flaky = Flaky {
            inner: LocalStore::open(store_dir.path()).unwrap(),
            fail_files: fail_files.clone(),
            fail_manifests: fail_manifests.clone(),
        };
        let (up, join) = spawn(UploaderParts {
            store: Box::new(flaky),
            fs: Arc::new(RealFs),
            dir: node_dir.path().to_path_buf(),
            node: "n1".into(),
            cluster: vec![],
            retain: 1,
            rate: 0,
            ship: None,
        })
        .unwrap();
        let check = LocalStore::open(store_dir.path()).unwrap();
        let listed = || {
            let (all, bad) = store::manifests(&check).unwrap();
            assert!(bad.is_empty(), "{bad:?}");
            all.iter().map(|m| m.index).collect::<Vec<_>>()
        };
        up.offer(snapshot(node_dir.path(), 10));
        wait("the first chain", || up.uploaded_index() == Some(10));
        assert_eq!(listed(), vec![10]);

        // Its file cannot be stored: no manifest names the new chain.
        fail_files.store(true, Ordering::Release);
        up.offer(snapshot(node_dir.path(), 20));
        wait("a failed attempt", || up.status().failures >= 1);
        assert_eq!(
            listed(),
            vec![10],
            "a manifest for a chain whose file is missing"
        );

        // Its file is stored, its manifest is not: the old chain stays.
        fail_files.store(false, Ordering::Release);
        fail_manifests.store(true, Ordering::Release);
        wait("the manifest failing", || up.status().failures >= 2);
        assert_eq!(
            listed(),
            vec![10],
            "the old chain went before a newer one was in"
        );
        let old = store::manifests(&check).unwrap().0[0].clone();
        for f in &old.files {
            assert!(
                check.get(&f.object, &mut std::io::sink()).is_ok(),
                "{} deleted",
                f.object
            );
        }

        fail_manifests.store(false, Ordering::Release);
        wait("the second chain", || up.uploaded_index() == Some(20));
        assert_eq!(listed(), vec![20], "retention keeps one chain");
        let s = up.status();
        assert_eq!((s.last_error, s.queued, s.chains_uploaded), (None, 0, 2));
        up.stop();
        join.join().unwrap();
    }
}

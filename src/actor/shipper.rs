//! The log shipper: copies the log's durable entries to the snapshot store beside the
//! chains (see [`crate::store::shipped`]), so that a lost disk loses at most the
//! entries of the last ship interval.
//!
//! It runs on a thread the uploader starts and joins, with a store connection of its
//! own, so that a long chain upload never holds the log back. Every interval it reads
//! the entries made durable since the last object from the segment files (a
//! [`Tail`]; the appender is not asked anything) and stores them as one object, or
//! several of at most [`shipped::OBJECT_BYTES_MAX`]. A failed put is retried at the
//! next interval from the same entry: objects are immutable and never overlap within a
//! history. When the node stops, it is woken to ship what is left at once, and the
//! node waits for it as for the newest chain (`--store-shutdown-wait`). Entries
//! compacted away before they were shipped are a gap: the shipper
//! says so, counts it, and goes on from the log's first entry (the next chain covers
//! the gap; a restore never crosses one).
//!
//! A history (`ship.id` in the node's directory, a random id made at the first start
//! with shipping) names the objects' folder: a directory restored from the store, or
//! made anew, ships under a history of its own, so that its entries never mix with
//! those of the directory it replaced. Each chain's manifest names the history it
//! belongs to.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;

use crate::fs::{FileSystem, create_durably, join};
use crate::store::{SnapshotStore, shipped};
use crate::types::UploadStatus;
use crate::wal::{DurableEnd, Tail, TailError};

/// Name of the file holding the directory's shipping history id.
pub use crate::core::layout::SHIP_ID as HISTORY_FILE;

/// What the shipper needs besides the uploader's parts.
pub struct ShipParts {
    /// Its own connection to the store.
    pub store: Box<dyn SnapshotStore>,
    /// One past the log's last durable entry.
    pub durable: DurableEnd,
    /// How often new entries are shipped.
    pub interval: Duration,
}

/// The directory's shipping history id, made (durably) if it has none.
///
/// # Errors
/// The file could not be read or made.
pub fn history(fs: &dyn FileSystem, dir: &Path) -> std::io::Result<String> {
    let path = join(dir, HISTORY_FILE);
    let existing = match fs.open(&path, false) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if let Some(f) = existing {
        let mut buf = vec![0u8; f.len()? as usize];
        f.read_exact_at(&mut buf, 0)?;
        let id = String::from_utf8_lossy(&buf).trim().to_string();
        if shipped::is_history(&id) {
            return Ok(id);
        }
        return Err(std::io::Error::other(format!(
            "{} holds {id:?}, not a history id (16 hexadecimal digits)",
            path.display()
        )));
    }
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
    let id = format!("{:016x}", u64::from_le_bytes(random));
    create_durably(fs, dir, HISTORY_FILE, |f| {
        f.write_all_at(format!("{id}\n").as_bytes(), 0)
    })?;
    Ok(id)
}

/// What the shipper shares with the uploader that started it.
pub(super) struct Shared {
    /// Set when the node stops.
    pub(super) stop: Arc<AtomicBool>,
    /// The uploader's status, whose shipping part the shipper keeps.
    pub(super) status: Arc<Mutex<UploadStatus>>,
    /// The offset of the next entry to ship (0: none yet).
    pub(super) shipped: Arc<AtomicU64>,
}

/// Milliseconds since the Unix epoch (0 before it).
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) struct Shipper {
    pub(super) parts: ShipParts,
    pub(super) fs: Arc<dyn FileSystem>,
    pub(super) dir: PathBuf,
    pub(super) node: String,
    pub(super) history: String,
}

impl Shipper {
    pub(super) fn run(self, shared: &Shared, woken: &Receiver<()>) {
        let prefix = shipped::history_prefix(&self.node, &self.history);
        let mut tail: Option<Tail> = None;
        let mut next_try = Instant::now();
        loop {
            if shared.stop.load(Ordering::Acquire) {
                break;
            }
            let wait = next_try.saturating_duration_since(Instant::now());
            // Woken: ship at once (the node is stopping and waits for the log).
            let woke = woken.recv_timeout(wait).is_ok();
            if shared.stop.load(Ordering::Acquire) {
                break;
            }
            if !woke && Instant::now() < next_try {
                continue;
            }
            next_try = Instant::now() + self.parts.interval;
            let tail = match &mut tail {
                Some(t) => t,
                None => match self.resume(&prefix) {
                    Ok((next, stored)) => {
                        shared.shipped.store(next, Ordering::Release);
                        if let Some((last, written_ms)) = stored {
                            let mut s = shared.status.lock().expect("status");
                            s.shipped_offset = Some(last);
                            s.shipped_at_ms = Some(written_ms);
                        }
                        tail.insert(Tail::new(self.fs.clone(), self.dir.clone(), next))
                    }
                    Err(why) => {
                        self.failed(shared, format!("listing the shipped log: {why}"));
                        continue;
                    }
                },
            };
            // What is durable now, and no more: entries made durable meanwhile wait for
            // the next interval, so that a busy log makes one object per interval, not
            // one per read.
            let until = self.parts.durable.get();
            while tail.next() < until && !shared.stop.load(Ordering::Acquire) {
                match self.ship_one(tail, until, shared) {
                    Ok(()) => {}
                    Err(why) => {
                        self.failed(shared, why);
                        break;
                    }
                }
            }
        }
        log::debug!("log shipper stopped");
    }

    /// Where shipping goes on: after the newest entry of this history in the store,
    /// or from the start of the log for a history with nothing shipped yet.
    /// Also returns the newest entry shipped before, and when its object was written.
    fn resume(&self, prefix: &str) -> Result<(u64, Option<(u64, u64)>), String> {
        let store = &*self.parts.store;
        let shipped = store.list(prefix).map_err(|e| e.to_string())?;
        let newest = shipped
            .iter()
            .filter_map(shipped::parse)
            .map(|r| (r.last, r.written_ms))
            .max();
        Ok(match newest {
            Some((last, written_ms)) => (last + 1, Some((last, written_ms))),
            None => (
                crate::wal::meta::read(&*self.fs, &self.dir).map_or(0, |m| m.first_offset.get()),
                None,
            ),
        })
    }

    /// Reads the durable entries from the tail's position up to `until` (at most one
    /// object's worth) and stores them as one object.
    fn ship_one(&self, tail: &mut Tail, until: u64, shared: &Shared) -> Result<(), String> {
        let first = tail.next();
        let mut object = shipped::ObjectBuilder::new(first);
        let read = tail.read(until, shipped::OBJECT_BYTES_MAX, &mut |offset, payload| {
            object.push(offset, payload)
        });
        match read {
            Ok(()) => {}
            Err(TailError::Gone { offset, first }) if object.count() == 0 => {
                log::warn!(
                    "the log shipper fell behind compaction: entries {offset}..{first} were \
                     compacted away before they were shipped; a restore reaches them only \
                     through a chain at or after {first}"
                );
                tail.seek(first);
                shared.status.lock().expect("status").log_gaps += 1;
                return Ok(());
            }
            // What was read goes now; the error comes again at the next read.
            Err(_) if object.count() > 0 => {}
            Err(e) => return Err(e.to_string()),
        }
        let (range, bytes) = object
            .finish(&self.node, &self.history, now_ms())
            .expect("at least one entry");
        let size = bytes.len() as u64;
        if let Err(e) = self.parts.store.put(&range.object, &mut &bytes[..], size) {
            // Those entries go again, in the next attempt's object.
            tail.seek(first);
            return Err(e.to_string());
        }
        shared.shipped.store(range.last + 1, Ordering::Release);
        let mut s = shared.status.lock().expect("status");
        s.shipped_offset = Some(range.last);
        s.shipped_at_ms = Some(range.written_ms);
        s.log_objects_shipped += 1;
        s.log_bytes_shipped += size;
        s.ship_error = None;
        log::debug!("shipped {} ({size} bytes)", range.object);
        Ok(())
    }

    fn failed(&self, shared: &Shared, why: String) {
        log::warn!(
            "shipping the log to {} failed: {why}; retrying in {} ms",
            self.parts.store.url(),
            self.parts.interval.as_millis()
        );
        let mut s = shared.status.lock().expect("status");
        s.ship_failures += 1;
        s.ship_error = Some(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actor::uploader::{UploaderParts, spawn};
    use crate::fs::RealFs;
    use crate::store::{Listed, LocalStore, StoreError};
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicU64;

    /// A local store whose first `fail` puts fail.
    struct Failing {
        inner: LocalStore,
        fail: Arc<AtomicU64>,
    }

    impl SnapshotStore for Failing {
        fn url(&self) -> String {
            self.inner.url()
        }
        fn put(&self, name: &str, data: &mut dyn Read, size: u64) -> Result<(), StoreError> {
            if self
                .fail
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(StoreError::Failed("planted failure".into()));
            }
            self.inner.put(name, data, size)
        }
        fn put_new(&self, name: &str, data: Vec<u8>) -> Result<bool, StoreError> {
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

    #[test]
    fn entries_whose_object_failed_to_store_go_in_the_next_one_and_none_is_skipped() {
        let node_dir = tempfile::tempdir().unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let mut log = crate::wal::fresh_log(node_dir.path(), 64 * 1024);
        let fail = Arc::new(AtomicU64::new(3));
        let (up, join) = spawn(UploaderParts {
            store: Box::new(LocalStore::open(store_dir.path()).unwrap()),
            fs: Arc::new(RealFs),
            dir: node_dir.path().to_path_buf(),
            node: "n1".into(),
            cluster: vec![],
            retain: 1,
            rate: 0,
            ship: Some(ShipParts {
                store: Box::new(Failing {
                    inner: LocalStore::open(store_dir.path()).unwrap(),
                    fail: fail.clone(),
                }),
                durable: log.durable_end(),
                interval: Duration::from_millis(5),
            }),
        })
        .unwrap();
        for batch in 0..50u32 {
            let payloads: Vec<Vec<u8>> = (0..10)
                .map(|i| format!("set k{batch}-{i}=v").into_bytes())
                .collect();
            if !log.fits(10, 400, 40) {
                log.roll().unwrap();
            }
            log.append(payloads.iter().map(Vec::as_slice)).unwrap();
            log.sync().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while up.shipped_end() != Some(500) {
            assert!(Instant::now() < deadline, "not shipped: {:?}", up.status());
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = up.status();
        assert_eq!(
            (s.ship_failures, s.shipped_offset, s.ship_error),
            (3, Some(499), None)
        );
        assert_eq!(fail.load(Ordering::Acquire), 0);
        let store = LocalStore::open(store_dir.path()).unwrap();
        let mut objects = shipped::list(&store, "n1").unwrap();
        objects.sort_by_key(|o| o.first);
        let mut next = 0;
        for o in &objects {
            assert_eq!(o.first, next, "a gap or an overlap before {}", o.object);
            let mut bytes = Vec::new();
            store.get(&o.object, &mut bytes).unwrap();
            shipped::decode(o, &bytes).unwrap();
            next = o.last + 1;
        }
        assert_eq!(next, 500);
        let history = history(&RealFs, node_dir.path()).unwrap();
        assert!(objects.iter().all(|o| o.history == history));
        up.stop();
        join.join().unwrap();
    }
}

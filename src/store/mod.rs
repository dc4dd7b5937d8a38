//! The snapshot store: a node's durable snapshots copied off the node, to a local
//! directory (a mounted volume, for backups) or an S3-compatible object store, so that
//! a lost disk does not take the state with it, and a data directory can be restored
//! from the newest complete copy.
//!
//! ```text
//! <store root>/                       (s3://bucket/prefix, or a directory)
//!   <node>/files/<snapshot file>.<crc32c of the whole file, 8 hex>
//!   <node>/manifests/<index, 20 digits>-<crc32c of the tip, 8 hex>.json
//! ```
//!
//! Object names are immutable: a file's name carries the checksum of its bytes, so a
//! name always means the same bytes, and a manifest is created only if absent. A
//! manifest lists a chain (a full snapshot, then the deltas building on it), each file
//! with its size and checksum, and is written only once every file it lists is in the
//! store: a chain whose manifest can be read is complete. Retention deletes a chain's
//! manifest before its files, and only once a newer manifest is in the store.
//!
//! Architecture Invariant: nothing here writes to a node's data directory except
//! [`restore`], which writes only into a directory it was given that holds no log, and
//! makes each file durable (temp, fsync, rename, directory fsync) before the next.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::core::layout;
use crate::fs::{FileSystem, join};
use crate::types::SnapshotFile;

mod check;
mod local;
pub mod ls;
mod restore;
mod s3;
pub mod seal;
pub mod shipped;

pub use check::check;
pub use restore::{
    Point, Replayed, Restored, Verdict, fetch_chain, fetch_file, node_ids, restore, restore_to,
    verify,
};

pub use local::LocalStore;
pub use s3::S3Store;

/// The uploader's default rate limit, bytes per second (see `make bench`, section j).
pub const DEFAULT_UPLOAD_RATE: u64 = 4 * 1024 * 1024;

/// How often the log shipper sends new entries by default: the most a lost disk
/// loses of what was acknowledged, with the store reachable.
pub const DEFAULT_SHIP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Files larger than this go to an object store in parts of this size.
pub const PART_BYTES: usize = 8 * 1024 * 1024;

/// What went wrong with a store operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The object does not exist.
    NotFound(String),
    /// Anything else: the store is unreachable, refused, or timed out.
    Failed(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotFound(name) => write!(f, "{name} is not in the store"),
            StoreError::Failed(why) => f.write_str(why),
        }
    }
}

/// An object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its name, relative to the store's root.
    pub name: String,
    /// Its size in bytes, as the store holds it (sealed, if it is: see
    /// [`seal::sealed_size`]).
    pub size: u64,
}

/// Where snapshots are kept off the node. Blocking calls: the uploader runs them on a
/// thread of its own, and the offline commands on the main thread.
pub trait SnapshotStore: Send + Sync {
    /// The store's address, safe to print (never a credential).
    fn url(&self) -> String;
    /// Stores `size` bytes read from `data` as `name` (replacing any object of that
    /// name: names are immutable by convention, so it held the same bytes).
    ///
    /// # Errors
    /// The store failed, or `data` gave fewer bytes or an error.
    fn put(&self, name: &str, data: &mut dyn Read, size: u64) -> Result<(), StoreError>;
    /// Stores `data` as `name` only if no object has that name; `false` if one had.
    ///
    /// # Errors
    /// The store failed.
    fn put_new(&self, name: &str, data: Vec<u8>) -> Result<bool, StoreError>;
    /// Writes the object's bytes to `into`; returns how many.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], or the store or `into` failed.
    fn get(&self, name: &str, into: &mut dyn Write) -> Result<u64, StoreError>;
    /// Every object whose name starts with `prefix`, in name order.
    ///
    /// # Errors
    /// The store failed.
    fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError>;
    /// Deletes `name` (nothing if it is absent).
    ///
    /// # Errors
    /// The store failed.
    fn delete(&self, name: &str) -> Result<(), StoreError>;
    /// How many bytes an object of `plain` bytes takes in this store, as
    /// [`SnapshotStore::list`] reports it (more once sealed).
    fn stored_size(&self, plain: u64) -> u64 {
        plain
    }
}

/// How to reach a store, from flags and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `s3://bucket/prefix`, `file:///path` or a path.
    pub url: String,
    /// The S3 endpoint (for S3-compatible stores such as SeaweedFS or MinIO); without
    /// it, `AWS_ENDPOINT_URL` or Amazon's endpoint for the region.
    pub endpoint: Option<String>,
    /// The S3 region; without it, `AWS_REGION` or `us-east-1`.
    pub region: Option<String>,
    /// Address buckets as `bucket.host` instead of `host/bucket` (path style, the
    /// default, is what self-hosted stores expect).
    pub virtual_hosted: bool,
    /// Chains kept in the store, newest first (at least 1).
    pub retain: u64,
    /// Free log segments only once a snapshot that covers them is in the store.
    pub compact_after_upload: bool,
    /// Most bytes per second the uploader reads and sends (0: no limit), so that an
    /// upload leaves the disk and the cores to the log.
    pub upload_bytes_per_sec: u64,
    /// S3 credentials an embedding program got its own way (the binary never sets
    /// them: it reads the standard environment variables). Never printed.
    pub credentials: Option<Credentials>,
    /// At shutdown, how long the node waits for the upload in flight and its newest
    /// chain to reach the store before it stops anyway (and says how far behind the
    /// store is). 0: it stops at once, abandoning the upload (the chain stays on disk
    /// and the next start offers it again).
    pub shutdown_wait: std::time::Duration,
    /// Keys that seal the store's objects: the first seals what is written, every one
    /// opens what is read (key rotation). None: objects are written in the clear, and
    /// a sealed one is refused, naming its key's id (see [`seal`]).
    pub keys: Vec<seal::StoreKey>,
    /// With no credentials in `credentials` or the environment, take them from the
    /// cloud instance's metadata service (its role). Off: a node with none refuses to
    /// start, instead of asking an address that answers only on a cloud instance.
    pub instance_credentials: bool,
    /// Ship the log too (a single node's; see [`shipped`]): its durable entries reach
    /// the store at least every `ship_interval`.
    pub ship_log: bool,
    /// See `ship_log`.
    pub ship_interval: std::time::Duration,
}

/// An S3 access key and its secret; `Debug` shows neither.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

impl StoreConfig {
    /// A store at `url` with the defaults: path-style addressing, 3 chains kept,
    /// compaction not waiting for uploads.
    pub fn new(url: impl Into<String>) -> StoreConfig {
        StoreConfig {
            url: url.into(),
            endpoint: None,
            region: None,
            virtual_hosted: false,
            retain: 3,
            compact_after_upload: false,
            upload_bytes_per_sec: DEFAULT_UPLOAD_RATE,
            credentials: None,
            shutdown_wait: std::time::Duration::from_secs(30),
            keys: Vec::new(),
            instance_credentials: false,
            ship_log: false,
            ship_interval: DEFAULT_SHIP_INTERVAL,
        }
    }
}

/// Opens the store `config` names. Credentials for S3 come only from the standard
/// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`) or the instance's metadata service.
///
/// # Errors
/// An unsupported URL or an invalid S3 configuration, said in a sentence.
pub fn open(config: &StoreConfig) -> Result<Box<dyn SnapshotStore>, String> {
    Ok(Box::new(seal::Sealed::new(
        open_unsealed(config)?,
        config.keys.clone(),
    )))
}

/// The store `config` names, its objects as they are, sealed or not (for tools and
/// tests that look at the bytes); `config.keys` is not used.
///
/// # Errors
/// As [`open`].
pub fn open_unsealed(config: &StoreConfig) -> Result<Box<dyn SnapshotStore>, String> {
    let url = config.url.trim();
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{url}: no bucket named (s3://BUCKET/PREFIX)"));
        }
        return Ok(Box::new(S3Store::open(bucket, prefix, config)?));
    }
    let path = match url.strip_prefix("file://") {
        Some(p) => PathBuf::from(p),
        None if url.contains("://") => {
            return Err(format!(
                "{url}: unsupported snapshot store (give s3://BUCKET/PREFIX, file:///PATH or a \
                 path)"
            ));
        }
        None if url.is_empty() => return Err("the snapshot store URL is empty".into()),
        None => PathBuf::from(url),
    };
    Ok(Box::new(LocalStore::open(&path)?))
}

/// A file of a chain, as a manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainFile {
    /// Its name in a data directory.
    pub name: String,
    /// Its object's name in the store.
    pub object: String,
    /// Its size.
    pub size: u64,
    /// CRC32C of the whole file.
    pub crc32c: u32,
}

/// A chain in the store: what a node had durable at one index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The node that uploaded it.
    pub node: String,
    /// The group's founding members (empty for a single node).
    pub cluster: Vec<String>,
    /// Entries `[0, index)` are in the state it holds (a Raft index for a group).
    pub index: u64,
    /// The term of the entry at the index (0 for a single node).
    pub term: u64,
    /// The group's voters and learners at the index (empty for a single node).
    pub voters: Vec<String>,
    /// See `voters`.
    pub learners: Vec<String>,
    /// When it was uploaded, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The chain's files, the full snapshot first.
    pub files: Vec<ChainFile>,
    /// The shipping history of the directory that uploaded it (see [`shipped`]):
    /// the shipped log that continues it. `None`: the log was not shipped.
    pub history: Option<String>,
}

/// The manifest format's version.
const MANIFEST_FORMAT: u64 = 1;

impl Manifest {
    /// Its object name.
    pub fn object(&self) -> String {
        let tip = self.files.last().map_or(0, |f| f.crc32c);
        // With a history: a directory restored to this very chain, and shipping,
        // uploads it again under its own line.
        let history = self
            .history
            .as_ref()
            .map_or(String::new(), |h| format!("-{h}"));
        format!(
            "{}/manifests/{:020}-{tip:08x}{history}.json",
            self.node, self.index
        )
    }

    /// The manifest as a JSON document.
    pub fn to_json(&self) -> Vec<u8> {
        let files: Vec<serde_json::Value> = self
            .files
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name, "object": f.object, "size": f.size,
                    "crc32c": format!("{:08x}", f.crc32c),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "format": MANIFEST_FORMAT,
            "node": self.node,
            "cluster": self.cluster,
            "index": self.index,
            "term": self.term,
            "voters": self.voters,
            "learners": self.learners,
            "created_ms": self.created_ms,
            "files": files,
        });
        let mut doc = doc;
        if let Some(h) = &self.history {
            doc["history"] = serde_json::json!(h);
        }
        let mut bytes = serde_json::to_vec_pretty(&doc).expect("JSON");
        bytes.push(b'\n');
        bytes
    }

    /// Parses a manifest.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, String> {
        let doc: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let u = |v: &serde_json::Value, k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_u64)
                .ok_or(format!("no number {k:?}"))
        };
        let s = |v: &serde_json::Value, k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
                .ok_or(format!("no string {k:?}"))
        };
        let names = |k: &str| -> Result<Vec<String>, String> {
            doc.get(k)
                .and_then(serde_json::Value::as_array)
                .ok_or(format!("no list {k:?}"))?
                .iter()
                .map(|n| {
                    n.as_str()
                        .map(str::to_string)
                        .ok_or(format!("{k}: not a name"))
                })
                .collect()
        };
        let format = u(&doc, "format")?;
        if format != MANIFEST_FORMAT {
            return Err(format!(
                "format {format}, this build reads {MANIFEST_FORMAT}"
            ));
        }
        let mut files = Vec::new();
        for f in doc
            .get("files")
            .and_then(serde_json::Value::as_array)
            .ok_or("no list \"files\"")?
        {
            let name = s(f, "name")?;
            if layout::parse_snapshot(&name).is_none()
                && layout::parse_raft_snapshot(&name).is_none()
                && !(layout::is_delta(&name))
            {
                return Err(format!("{name:?} is not a snapshot file's name"));
            }
            let crc = s(f, "crc32c")?;
            files.push(ChainFile {
                name,
                object: s(f, "object")?,
                size: u(f, "size")?,
                crc32c: u32::from_str_radix(&crc, 16).map_err(|_| format!("crc32c {crc:?}"))?,
            });
        }
        if files.is_empty() {
            return Err("it lists no files".into());
        }
        Ok(Manifest {
            node: s(&doc, "node")?,
            cluster: names("cluster")?,
            index: u(&doc, "index")?,
            term: u(&doc, "term")?,
            voters: names("voters")?,
            learners: names("learners")?,
            created_ms: u(&doc, "created_ms")?,
            files,
            history: match doc.get("history") {
                None => None,
                Some(h) => Some(
                    h.as_str()
                        .filter(|h| shipped::is_history(h))
                        .ok_or(format!("history {h}: not a history id"))?
                        .to_string(),
                ),
            },
        })
    }
}

/// The object name of `file` (of `node`) whose bytes have checksum `crc32c`.
pub fn file_object(node: &str, file: &str, crc32c: u32) -> String {
    format!("{node}/files/{file}.{crc32c:08x}")
}

/// Whether `name` is a manifest's object name.
fn is_manifest(name: &str) -> bool {
    name.split('/').nth(1) == Some("manifests") && name.ends_with(".json")
}

/// A manifest's index, from its object name (`<node>/manifests/<index>-<crc>.json`).
fn manifest_index(name: &str) -> Option<u64> {
    let base = name.rsplit('/').next()?;
    base.get(..20)?.parse().ok()
}

/// Manifests that could not be read: the object's name, and why.
pub type Unreadable = Vec<(String, String)>;

/// Every manifest in the store (of every node), newest index first, and the objects
/// whose manifests could not be read, with why.
///
/// # Errors
/// The store could not be listed.
pub fn manifests(store: &dyn SnapshotStore) -> Result<(Vec<Manifest>, Unreadable), StoreError> {
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    let names = store
        .list("")?
        .into_iter()
        .map(|l| l.name)
        .filter(|n| is_manifest(n));
    for name in names {
        let mut bytes = Vec::new();
        match store.get(&name, &mut bytes) {
            Ok(_) => match Manifest::from_json(&bytes) {
                Ok(m) => found.push(m),
                Err(why) => unreadable.push((name, why)),
            },
            Err(e) => unreadable.push((name, e.to_string())),
        }
    }
    found.sort_by_key(|m| std::cmp::Reverse((m.index, m.created_ms)));
    Ok((found, unreadable))
}

/// A writer that counts and checksums what passes through it.
struct Summing<W> {
    inner: W,
    bytes: u64,
    crc: u32,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a file from its start, through [`crate::fs::File::write_all_at`].
struct AtWriter<'f> {
    file: &'f mut dyn crate::fs::File,
    at: u64,
}

impl Write for AtWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_all_at(buf, self.at)?;
        self.at += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a file of a node's directory for upload, checksumming what it reads, and
/// failing if the file ends early (retention retired it meanwhile).
pub(crate) struct FileSource<'f> {
    file: Box<dyn crate::fs::File + 'f>,
    at: u64,
    size: u64,
    pub(crate) crc: u32,
    /// The checksum the whole file must have: the read that completes the file fails
    /// otherwise, so that a store never completes an object from changed bytes.
    expected: Option<u32>,
    /// The rate limit, and when reading started.
    rate: Option<(u64, std::time::Instant)>,
    /// Set when the reader should give up (the node is stopping).
    cancel: Option<&'f std::sync::atomic::AtomicBool>,
}

impl<'f> FileSource<'f> {
    pub(crate) fn open(fs: &'f dyn FileSystem, dir: &Path, f: &SnapshotFile) -> io::Result<Self> {
        Ok(FileSource {
            file: fs.open(&join(dir, &f.file), false)?,
            at: 0,
            size: f.size_bytes,
            crc: 0,
            expected: None,
            rate: None,
            cancel: None,
        })
    }

    /// Reads at most `bytes_per_sec` (0: no limit), sleeping as needed.
    pub(crate) fn paced(mut self, bytes_per_sec: u64) -> Self {
        self.rate = (bytes_per_sec > 0).then(|| (bytes_per_sec, std::time::Instant::now()));
        self
    }

    /// Fails the next read once `flag` is set.
    pub(crate) fn cancelled_by(mut self, flag: &'f std::sync::atomic::AtomicBool) -> Self {
        self.cancel = Some(flag);
        self
    }

    /// Fails the read that completes the file unless its checksum is `crc`.
    pub(crate) fn expecting(mut self, crc: u32) -> Self {
        self.expected = Some(crc);
        self
    }
}

impl Read for FileSource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Small reads, when paced, so that the pauses are short and even.
        let cap = if self.rate.is_some() {
            256 * 1024
        } else {
            buf.len()
        };
        let want = buf.len().min(cap).min((self.size - self.at) as usize);
        if want == 0 {
            return Ok(0);
        }
        if self
            .cancel
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Acquire))
        {
            return Err(io::Error::other("the node is stopping"));
        }
        if let Some((rate, since)) = self.rate {
            let due = std::time::Duration::from_secs_f64(self.at as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(since.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ended at byte {} of {}", self.at, self.size),
            ));
        }
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.at += n as u64;
        if self.at == self.size
            && let Some(expected) = self.expected
            && expected != self.crc
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the file changed while it was read (checksum {:08x}, expected {expected:08x})",
                    self.crc
                ),
            ));
        }
        Ok(n)
    }
}

/// CRC32C of a whole file of a node's directory.
pub(crate) fn file_crc(fs: &dyn FileSystem, dir: &Path, f: &SnapshotFile) -> io::Result<u32> {
    let mut src = FileSource::open(fs, dir, f)?;
    io::copy(&mut src, &mut io::sink())?;
    Ok(src.crc)
}

/// Which manifests retention deletes (oldest first) when `keep` chains of `node` are
/// kept, and then which of its other objects go: the file objects no kept manifest
/// lists, and the shipped log wholly below the oldest chain kept.
pub fn retention_plan(
    node: &str,
    manifests: &[Manifest],
    objects: &[Listed],
    keep: u64,
) -> (Vec<String>, Vec<String>) {
    let mut own: Vec<&Manifest> = manifests.iter().filter(|m| m.node == node).collect();
    // Most recent upload first: a directory restored to an earlier point uploads chains
    // of lower indexes than the line it replaced, and those are the ones to keep.
    own.sort_by_key(|m| std::cmp::Reverse((m.created_ms, m.index)));
    let keep = (keep.max(1) as usize).min(own.len());
    let (kept, dropped) = own.split_at(keep);
    let mut doomed_manifests: Vec<String> = dropped.iter().map(|m| m.object()).collect();
    doomed_manifests.reverse();
    let files_prefix = format!("{node}/files/");
    let doomed_files = objects
        .iter()
        .filter(|o| o.name.starts_with(&files_prefix))
        .filter(|o| {
            !kept
                .iter()
                .any(|m| m.files.iter().any(|f| f.object == o.name))
        })
        .map(|o| o.name.clone());
    let log_prefix = shipped::prefix(node);
    let log: Vec<shipped::ShippedRange> = objects
        .iter()
        .filter(|o| o.name.starts_with(&log_prefix))
        .filter_map(shipped::parse)
        .collect();
    let doomed_log = shipped::retention(&log, kept.last().map(|m| m.index));
    (doomed_manifests, doomed_files.chain(doomed_log).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(node: &str, index: u64, files: &[(&str, u32)]) -> Manifest {
        Manifest {
            node: node.into(),
            cluster: vec![],
            index,
            term: 0,
            voters: vec![],
            learners: vec![],
            created_ms: index,
            history: None,
            files: files
                .iter()
                .map(|(name, crc)| ChainFile {
                    name: name.to_string(),
                    object: file_object(node, name, *crc),
                    size: 1,
                    crc32c: *crc,
                })
                .collect(),
        }
    }

    #[test]
    fn a_manifest_round_trips_through_json_and_is_named_by_index_and_tip() {
        let mut m = manifest(
            "n1",
            1500,
            &[(&layout::snapshot(1000), 7), (&layout::delta(1500), 9)],
        );
        m.cluster = vec!["n1".into(), "n2".into()];
        m.voters = vec!["n1".into()];
        m.term = 4;
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
        m.history = Some("0123456789abcdef".into());
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
        assert_eq!(
            m.object(),
            "n1/manifests/00000000000000001500-00000009-0123456789abcdef.json"
        );
        assert_eq!(manifest_index(&m.object()), Some(1500));
        assert!(is_manifest(&m.object()));
        m.history = None;
        assert_eq!(
            m.object(),
            "n1/manifests/00000000000000001500-00000009.json"
        );
        assert_eq!(manifest_index(&m.object()), Some(1500));
        assert!(is_manifest(&m.object()));
        assert!(!is_manifest(&m.files[0].object));
        let bad = String::from_utf8(m.to_json())
            .unwrap()
            .replace(".delta", ".exe");
        assert!(Manifest::from_json(bad.as_bytes()).is_err());
    }

    #[test]
    fn a_file_read_for_upload_fails_unless_it_has_the_checksum_expected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.snap"), b"snapshot bytes").unwrap();
        let f = SnapshotFile {
            file: "a.snap".into(),
            offset: crate::core::position::Offset::new(1),
            size_bytes: 14,
            checksum: 0,
        };
        let fs = crate::fs::RealFs;
        let crc = file_crc(&fs, dir.path(), &f).unwrap();
        let mut ok = FileSource::open(&fs, dir.path(), &f)
            .unwrap()
            .expecting(crc);
        assert_eq!(io::copy(&mut ok, &mut io::sink()).unwrap(), 14);
        // Changed since its checksum was taken (retention replaced it, say).
        std::fs::write(dir.path().join("a.snap"), b"Snapshot bytes").unwrap();
        let mut changed = FileSource::open(&fs, dir.path(), &f)
            .unwrap()
            .expecting(crc);
        let err = io::copy(&mut changed, &mut io::sink()).unwrap_err();
        assert!(
            err.to_string().contains("changed while it was read"),
            "{err}"
        );
        // Shorter than the size recorded.
        std::fs::write(dir.path().join("a.snap"), b"snap").unwrap();
        let mut short = FileSource::open(&fs, dir.path(), &f).unwrap();
        assert!(io::copy(&mut short, &mut io::sink()).is_err());
    }

    #[test]
    fn retention_keeps_the_newest_chains_of_the_node_and_the_files_they_list() {
        let a = manifest("n1", 100, &[("a.snap", 1)]);
        let b = manifest("n1", 200, &[("a.snap", 1), ("b.delta", 2)]);
        let c = manifest("n1", 300, &[("c.snap", 3)]);
        let other = manifest("n2", 50, &[("z.snap", 4)]);
        let all = vec![a.clone(), b.clone(), c.clone(), other.clone()];
        let objects: Vec<Listed> = all
            .iter()
            .flat_map(|m| m.files.iter().map(|f| f.object.clone()).chain([m.object()]))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|name| Listed { name, size: 1 })
            .collect();
        let (manifests, files) = retention_plan("n1", &all, &objects, 2);
        assert_eq!(manifests, vec![a.object()]);
        assert!(files.is_empty(), "a.snap is still listed by b: {files:?}");
        let (manifests, mut files) = retention_plan("n1", &all, &objects, 1);
        assert_eq!(manifests, vec![a.object(), b.object()]);
        files.sort();
        assert_eq!(
            files,
            vec![a.files[0].object.clone(), b.files[1].object.clone()]
        );
        assert_eq!(retention_plan("n1", &all, &objects, 5), (vec![], vec![]));
    }

    #[test]
    fn retention_keeps_the_chains_uploaded_last_whatever_their_indexes() {
        // A directory restored to 1000 uploads its chain again, then one at 1200,
        // while the line it replaced had reached 2000.
        let mut old = manifest("n1", 2000, &[("b.snap", 2)]);
        old.created_ms = 10;
        let mut again = manifest("n1", 1000, &[("a.snap", 1)]);
        again.created_ms = 20;
        again.history = Some("0123456789abcdef".into());
        let mut next = manifest("n1", 1200, &[("c.snap", 3)]);
        next.created_ms = 30;
        next.history = again.history.clone();
        let all = vec![old.clone(), again.clone(), next.clone()];
        let (doomed, _) = retention_plan("n1", &all, &[], 2);
        assert_eq!(doomed, vec![old.object()], "the replaced line goes first");
    }

    #[test]
    fn retention_keeps_the_shipped_log_from_the_oldest_chain_kept_on() {
        let chains = vec![
            manifest("n1", 100, &[("a.snap", 1)]),
            manifest("n1", 200, &[("b.snap", 2)]),
        ];
        let history = "0123456789abcdef";
        let log = |first, last| shipped::object_name("n1", history, first, last, 5);
        let other = shipped::object_name("n2", history, 0, 10, 5);
        let objects: Vec<Listed> = [log(0, 99), log(100, 149), log(150, 250), other]
            .into_iter()
            .chain(
                chains
                    .iter()
                    .flat_map(|m| m.files.iter().map(|f| f.object.clone()).chain([m.object()])),
            )
            .map(|name| Listed { name, size: 1 })
            .collect();
        let (_, doomed) = retention_plan("n1", &chains, &objects, 2);
        assert_eq!(doomed, vec![log(0, 99)], "log below the chain at 100 goes");
        let (_, mut doomed) = retention_plan("n1", &chains, &objects, 1);
        doomed.sort();
        let mut expected = vec![chains[0].files[0].object.clone(), log(0, 99), log(100, 149)];
        expected.sort();
        assert_eq!(
            doomed, expected,
            "the log 150..=250 holds the chain at 200's entries"
        );
    }
}

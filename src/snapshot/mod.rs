//! Snapshot files: format and crash-safe writing.
//!
//! ```text
//! header (40 bytes):
//!   magic "FLNTSNAP" | version u32 | reserved u32 | offset u64 | body_len u64
//!   | body_crc32c u32 | header_crc32c u32 (over the 36 bytes before it)
//! body (bincode, standard configuration):
//!   (key_count u64, other_payloads u64), then key_count pairs (key, value) in
//!   strictly ascending key order
//! ```
//!
//! The body is in key order and the header holds no time, so equal states at the same
//! offset give byte-identical files. A snapshot named `<offset>.snap` covers entries
//! `[0, offset)`.
//!
//! A delta (`<offset>.delta`, magic `FLNTDLTA`, the same header) holds what changed
//! since its parent, the snapshot or delta it builds on:
//!
//! ```text
//! body: (parent_offset u64, parent_checksum u32, other_payloads u64, change_count u64),
//!   then change_count pairs (key, Option<value>) in strictly ascending key order;
//!   None deletes the key
//! ```
//!
//! A file's identity is its body checksum: a delta names its parent by offset and
//! checksum, so a chain (a full snapshot, then deltas each building on the one before)
//! cannot be mixed up with another chain's files.
//!
//! Writing follows the one recipe that survives a power cut at any point: write
//! `<name>.tmp` (synced every `snapshot_sync_chunk_bytes` so that the log's syncs never
//! queue behind much of it), write the header last, fsync, rename to `<name>`, fsync
//! the directory. Only then is the snapshot reported durable.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use bincode::config::Configuration;

use crate::core::kv::Change;
use crate::core::kv::{KvMap, KvState};
use crate::core::layout;
use crate::core::recovery::{self, Probe};
use crate::fs::{File, FileSystem, create_durably, sync_failed};
use crate::wal::record::RECORD_PAYLOAD_MAX_BYTES;

/// Bytes of the snapshot header.
pub const HEADER_BYTES: u64 = 40;
const MAGIC: &[u8; 8] = b"FLNTSNAP";
const DELTA_MAGIC: &[u8; 8] = b"FLNTDLTA";
const VERSION: u32 = 1;
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Most bytes one decoded pair may take: two strings of the largest payload.
const PAIR_BYTES_MAX: usize = 2 * RECORD_PAYLOAD_MAX_BYTES as usize + 64;

fn bincode_config() -> Configuration {
    bincode::config::standard()
}

pub use crate::types::SnapshotFile;
pub use layout::{delta as delta_file_name, is_delta, snapshot as file_name};

struct Header {
    offset: u64,
    body_len: u64,
    body_crc: u32,
}

fn encode_header(h: &Header, magic: &[u8; 8]) -> [u8; HEADER_BYTES as usize] {
    let mut b = [0u8; HEADER_BYTES as usize];
    b[0..8].copy_from_slice(magic);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&h.offset.to_le_bytes());
    b[24..32].copy_from_slice(&h.body_len.to_le_bytes());
    b[32..36].copy_from_slice(&h.body_crc.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..36]);
    b[36..40].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_header(b: &[u8; HEADER_BYTES as usize], magic: &[u8; 8]) -> Result<Header, String> {
    if &b[0..8] != magic {
        return Err(format!(
            "not a {} file (bad magic)",
            if magic == DELTA_MAGIC {
                "delta"
            } else {
                "snapshot"
            }
        ));
    }
    if crc32c::crc32c(&b[0..36]) != u32::from_le_bytes(b[36..40].try_into().unwrap()) {
        return Err("header checksum mismatch".into());
    }
    let version = u32::from_le_bytes(b[8..12].try_into().unwrap());
    if version != VERSION {
        return Err(format!("unsupported snapshot format version {version}"));
    }
    Ok(Header {
        offset: u64::from_le_bytes(b[16..24].try_into().unwrap()),
        body_len: u64::from_le_bytes(b[24..32].try_into().unwrap()),
        body_crc: u32::from_le_bytes(b[32..36].try_into().unwrap()),
    })
}

/// Streams the body into the temp file, syncing every `sync_chunk` bytes.
struct ChunkWriter<'f> {
    file: &'f mut dyn File,
    pos: u64,
    buf: Vec<u8>,
    crc: u32,
    since_sync: u64,
    sync_chunk: u64,
}

impl ChunkWriter<'_> {
    fn flush_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(&self.buf, self.pos)?;
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.pos += self.buf.len() as u64;
        self.since_sync += self.buf.len() as u64;
        self.buf.clear();
        if self.since_sync >= self.sync_chunk {
            self.file.sync_data().map_err(sync_failed)?;
            self.since_sync = 0;
        }
        Ok(())
    }
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_BUFFER_BYTES {
            self.flush_buf()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()
    }
}

fn encode_err(e: bincode::error::EncodeError) -> io::Error {
    match e {
        bincode::error::EncodeError::Io { inner, .. } => inner,
        other => io::Error::other(other.to_string()),
    }
}

/// Writes the snapshot of `state` at `offset` into `dir`, crash-safely, and returns it
/// once durable.
///
/// # Errors
/// Any I/O error; the temp file is then removed (best effort) and no snapshot under
/// the final name was touched.
pub fn write(
    fs: &dyn FileSystem,
    dir: &Path,
    offset: u64,
    state: &KvState,
    sync_chunk: u64,
) -> io::Result<SnapshotFile> {
    write_file(fs, dir, file_name(offset), MAGIC, offset, sync_chunk, |w| {
        write_body(w, state)
    })
}

/// Writes the delta at `offset` building on `parent`: `changes` (from
/// [`KvState::changes_to`]) and the other-payload count, crash-safely as [`write`].
///
/// # Errors
/// As [`write`].
pub fn write_delta(
    fs: &dyn FileSystem,
    dir: &Path,
    offset: u64,
    parent: &SnapshotFile,
    changes: &[Change],
    other_payloads: u64,
    sync_chunk: u64,
) -> io::Result<SnapshotFile> {
    let name = delta_file_name(offset);
    write_file(fs, dir, name, DELTA_MAGIC, offset, sync_chunk, |w| {
        write_delta_body(w, parent, changes, other_payloads)
    })
}

/// The recipe both kinds share: the body streamed after a placeholder header (synced
/// every `sync_chunk` bytes), then the real header, all through [`create_durably`].
fn write_file(
    fs: &dyn FileSystem,
    dir: &Path,
    name: String,
    magic: &[u8; 8],
    offset: u64,
    sync_chunk: u64,
    body: impl FnOnce(&mut ChunkWriter<'_>) -> io::Result<()>,
) -> io::Result<SnapshotFile> {
    let (mut size_bytes, mut checksum) = (0, 0);
    create_durably(fs, dir, &name, |file| {
        let mut w = ChunkWriter {
            file,
            pos: HEADER_BYTES,
            buf: Vec::with_capacity(WRITE_BUFFER_BYTES + 4096),
            crc: 0,
            since_sync: 0,
            sync_chunk,
        };
        body(&mut w)?;
        w.flush()?;
        let header = Header {
            offset,
            body_len: w.pos - HEADER_BYTES,
            body_crc: w.crc,
        };
        size_bytes = w.pos;
        checksum = w.crc;
        w.file.write_all_at(&encode_header(&header, magic), 0)
    })?;
    Ok(SnapshotFile {
        file: name,
        offset,
        size_bytes,
        checksum,
    })
}

fn write_delta_body(
    w: &mut impl Write,
    parent: &SnapshotFile,
    changes: &[Change],
    other_payloads: u64,
) -> io::Result<()> {
    let head = (
        parent.offset,
        parent.checksum,
        other_payloads,
        changes.len() as u64,
    );
    bincode::encode_into_std_write(head, &mut *w, bincode_config()).map_err(encode_err)?;
    for (k, v) in changes {
        bincode::encode_into_std_write((&**k, v.as_deref()), &mut *w, bincode_config())
            .map_err(encode_err)?;
    }
    Ok(())
}

/// A delta read back and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub offset: u64,
    pub checksum: u32,
    pub parent_offset: u64,
    pub parent_checksum: u32,
    pub other_payloads: u64,
    pub changes: Vec<Change>,
}

/// Reads and fully verifies the delta at `path`.
///
/// # Errors
/// A sentence saying what is wrong.
pub fn read_delta(fs: &dyn FileSystem, path: &Path) -> Result<Delta, String> {
    let file = fs
        .open(path, false)
        .map_err(|e| format!("cannot open: {e}"))?;
    let (header, mut r) = open_body(&*file, DELTA_MAGIC)?;
    let bad = |e: bincode::error::DecodeError| format!("body does not decode: {e}");
    let limited = bincode_config().with_limit::<PAIR_BYTES_MAX>();
    let (parent_offset, parent_checksum, other_payloads, count): (u64, u32, u64, u64) =
        bincode::decode_from_std_read(&mut r, limited).map_err(bad)?;
    if count > header.body_len / 2 {
        return Err(format!(
            "body claims {count} changes in {} bytes",
            header.body_len
        ));
    }
    if parent_offset >= header.offset {
        return Err(format!(
            "parent offset {parent_offset} is not before the delta's offset {}",
            header.offset
        ));
    }
    let mut changes: Vec<Change> = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (k, v): (String, Option<String>) =
            bincode::decode_from_std_read(&mut r, limited).map_err(bad)?;
        let k: Arc<str> = Arc::from(k);
        if changes.last().is_some_and(|(l, _)| *l >= k) {
            return Err("keys are not in strictly ascending order".into());
        }
        changes.push((k, v.map(Arc::from)));
    }
    r.finish(&header)?;
    Ok(Delta {
        offset: header.offset,
        checksum: header.body_crc,
        parent_offset,
        parent_checksum,
        other_payloads,
        changes,
    })
}

/// Checks the header and length of a snapshot or delta file and returns a reader of
/// its body that checksums as it goes.
fn open_body<'f>(file: &'f dyn File, magic: &[u8; 8]) -> Result<(Header, ChunkReader<'f>), String> {
    let len = file.len().map_err(|e| e.to_string())?;
    if len < HEADER_BYTES {
        return Err(format!(
            "file of {len} bytes is shorter than a snapshot header"
        ));
    }
    let mut hb = [0u8; HEADER_BYTES as usize];
    file.read_exact_at(&mut hb, 0).map_err(|e| e.to_string())?;
    let header = decode_header(&hb, magic)?;
    if header.body_len.checked_add(HEADER_BYTES) != Some(len) {
        return Err(format!(
            "header says {} body bytes, the file has {}",
            header.body_len,
            len - HEADER_BYTES
        ));
    }
    let r = ChunkReader {
        file,
        pos: HEADER_BYTES,
        end: len,
        buf: Vec::new(),
        at: 0,
        crc: 0,
    };
    Ok((header, r))
}

/// Encodes the body: the key count and other-payload count, then the pairs in key order.
fn write_body(w: &mut impl Write, state: &KvState) -> io::Result<()> {
    let head = (state.map.len() as u64, state.other_payloads);
    bincode::encode_into_std_write(head, &mut *w, bincode_config()).map_err(encode_err)?;
    for (k, v) in state.map.iter() {
        bincode::encode_into_std_write((&**k, &**v), &mut *w, bincode_config())
            .map_err(encode_err)?;
    }
    Ok(())
}

/// The bytes of the snapshot file of `state` at `offset`, in memory (what [`write`]
/// puts on disk).
pub fn to_bytes(offset: u64, state: &KvState) -> Vec<u8> {
    let mut body = Vec::new();
    write_body(&mut body, state).expect("writing to memory cannot fail");
    let header = Header {
        offset,
        body_len: body.len() as u64,
        body_crc: crc32c::crc32c(&body),
    };
    let mut out = encode_header(&header, MAGIC).to_vec();
    out.extend_from_slice(&body);
    out
}

struct ChunkReader<'f> {
    file: &'f dyn File,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    at: usize,
    crc: u32,
}

impl ChunkReader<'_> {
    /// Checks that the body ended exactly at the file's end with the right checksum.
    fn finish(&self, header: &Header) -> Result<(), String> {
        if self.at != self.buf.len() || self.pos != self.end {
            return Err("body has bytes after its last key".into());
        }
        if self.crc != header.body_crc {
            return Err("body checksum mismatch".into());
        }
        Ok(())
    }
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.buf.len() {
            let n = (self.end - self.pos).min(1024 * 1024) as usize;
            if n == 0 {
                return Ok(0);
            }
            self.buf.resize(n, 0);
            self.file.read_exact_at(&mut self.buf, self.pos)?;
            self.crc = crc32c::crc32c_append(self.crc, &self.buf);
            self.pos += n as u64;
            self.at = 0;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Reads and fully verifies the snapshot at `path`: header, length, body checksum,
/// key order. Returns its offset and state.
///
/// # Errors
/// A sentence saying what is wrong, for the caller to prefix with the path.
pub fn read(fs: &dyn FileSystem, path: &Path) -> Result<(u64, KvState), String> {
    read_full(fs, path).map(|(offset, _, state)| (offset, state))
}

/// [`read`], with the body checksum.
fn read_full(fs: &dyn FileSystem, path: &Path) -> Result<(u64, u32, KvState), String> {
    let file = fs
        .open(path, false)
        .map_err(|e| format!("cannot open: {e}"))?;
    let (header, mut r) = open_body(&*file, MAGIC)?;
    let bad = |e: bincode::error::DecodeError| format!("body does not decode: {e}");
    let limited = bincode_config().with_limit::<PAIR_BYTES_MAX>();
    let (count, other_payloads): (u64, u64) =
        bincode::decode_from_std_read(&mut r, limited).map_err(bad)?;
    if count > header.body_len / 2 {
        return Err(format!(
            "body claims {count} keys in {} bytes",
            header.body_len
        ));
    }
    let mut map = KvMap::new();
    let mut last: Option<Arc<str>> = None;
    for _ in 0..count {
        let (k, v): (String, String) =
            bincode::decode_from_std_read(&mut r, limited).map_err(bad)?;
        let k: Arc<str> = Arc::from(k);
        if last.as_ref().is_some_and(|l| *l >= k) {
            return Err("keys are not in strictly ascending order".into());
        }
        map.insert(k.clone(), Arc::from(v));
        last = Some(k);
    }
    r.finish(&header)?;
    Ok((
        header.offset,
        header.body_crc,
        KvState {
            map,
            other_payloads,
        },
    ))
}

/// The snapshot chain recovery loads, and the newer files it had to skip.
#[derive(Debug)]
pub struct Chosen {
    /// The tip of the newest chain that verifies (a full snapshot, or the last delta
    /// of its longest verified prefix), if any.
    pub snapshot: Option<SnapshotFile>,
    /// The files of that chain, the full snapshot first.
    pub chain: Vec<SnapshotFile>,
    /// The state at the tip (empty without one).
    pub state: KvState,
    /// Newer files that did not verify, or that build on one that did not:
    /// `(file name, why)`.
    pub skipped: Vec<(String, String)>,
}

/// What a snapshot file holds, once read and verified.
enum Body {
    Full(KvState),
    Delta {
        changes: Vec<Change>,
        other_payloads: u64,
    },
}

/// Reads and verifies the snapshot or delta `name` in `dir`, for the planner.
fn probe(fs: &dyn FileSystem, dir: &Path, name: &str) -> Result<Probe<Body>, String> {
    let path = dir.join(name);
    let size_bytes = fs.open(&path, false).and_then(|f| f.len()).unwrap_or(0);
    if is_delta(name) {
        let d = read_delta(fs, &path)?;
        Ok(Probe {
            offset: d.offset,
            checksum: d.checksum,
            parent: Some((d.parent_offset, d.parent_checksum)),
            size_bytes,
            body: Body::Delta {
                changes: d.changes,
                other_payloads: d.other_payloads,
            },
        })
    } else {
        let (offset, checksum, state) = read_full(fs, &path)?;
        Ok(Probe {
            offset,
            checksum,
            parent: None,
            size_bytes,
            body: Body::Full(state),
        })
    }
}

/// Loads the chain recovery's plan ([`recovery::plan`]) picks among `snapshots` in
/// `dir`: the newest chain that verifies up to a tip at or past the log's first
/// offset. Every newer file left out is reported in `skipped`.
///
/// # Errors
/// [`crate::Error::Open`] when the log was compacted (`first_offset` > 0) and no
/// verified chain reaches it: starting from less would lose the compacted state.
pub fn choose(
    fs: &dyn FileSystem,
    dir: &Path,
    snapshots: &[(u64, String)],
    first_offset: u64,
) -> crate::Result<Chosen> {
    let plan = recovery::plan(
        &dir.display().to_string(),
        snapshots,
        first_offset,
        &mut |name| probe(fs, dir, name),
    )?;
    for (name, why) in &plan.skipped {
        log::warn!("skipping snapshot file {name}: {why}");
    }
    let mut state = KvState::default();
    let mut chain = Vec::new();
    for link in plan.chain {
        match link.probe.body {
            Body::Full(s) => state = s,
            Body::Delta {
                changes,
                other_payloads,
            } => state.apply_changes(&changes, other_payloads),
        }
        chain.push(SnapshotFile {
            file: link.file,
            offset: link.probe.offset,
            size_bytes: link.probe.size_bytes,
            checksum: link.probe.checksum,
        });
    }
    match chain.last() {
        Some(tip) => log::info!(
            "loaded snapshot chain {} ({} deltas) up to offset {}: {} keys",
            chain[0].file,
            chain.len() - 1,
            tip.offset,
            state.map.len()
        ),
        None if !snapshots.is_empty() => {
            log::warn!("no snapshot verified; replaying the whole log from offset 0")
        }
        None => {}
    }
    Ok(Chosen {
        snapshot: chain.last().cloned(),
        chain,
        state,
        skipped: plan.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::RealFs;

    fn state(n: usize) -> KvState {
        let mut s = KvState::default();
        for i in 0..n {
            s.apply(format!("set k{i:05}=value {i}").as_bytes());
        }
        s.apply(b"noise");
        s
    }

    #[test]
    fn round_trips_and_equal_states_give_equal_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(1000);
        let a = write(&RealFs, dir.path(), 1001, &s, 4096).unwrap();
        assert_eq!(a.file, "00000000000000001001.snap");
        let bytes_a = std::fs::read(dir.path().join(&a.file)).unwrap();
        assert_eq!(bytes_a.len() as u64, a.size_bytes);
        let (offset, back) = read(&RealFs, &dir.path().join(&a.file)).unwrap();
        assert_eq!(offset, 1001);
        assert_eq!(back, s);
        // Build the same state in another order: same bytes.
        let mut s2 = KvState::default();
        for i in (0..1000).rev() {
            s2.apply(format!("set k{i:05}=value {i}").as_bytes());
        }
        s2.other_payloads = 1;
        let dir2 = tempfile::tempdir().unwrap();
        let b = write(&RealFs, dir2.path(), 1001, &s2, 1 << 20).unwrap();
        assert_eq!(std::fs::read(dir2.path().join(b.file)).unwrap(), bytes_a);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp"))
        );
    }

    #[test]
    fn every_truncation_and_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let snap = write(&RealFs, dir.path(), 20, &state(20), 4096).unwrap();
        let path = dir.path().join(&snap.file);
        let good = std::fs::read(&path).unwrap();
        let probe = dir.path().join("probe.snap");
        for cut in 0..good.len() {
            std::fs::write(&probe, &good[..cut]).unwrap();
            assert!(
                read(&RealFs, &probe).is_err(),
                "truncation to {cut} accepted"
            );
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x04;
            std::fs::write(&probe, &bad).unwrap();
            assert!(read(&RealFs, &probe).is_err(), "flip at byte {i} accepted");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::fs::sim::SimFs;
    use proptest::prelude::*;
    use std::path::PathBuf;

    fn arb_state() -> impl Strategy<Value = KvState> {
        (
            proptest::collection::btree_map("[a-z0-9]{1,12}", ".{0,40}", 0..60),
            0u64..1000,
        )
            .prop_map(|(m, other)| {
                let mut s = KvState::default();
                for (k, v) in m {
                    s.map.insert(Arc::from(k.as_str()), Arc::from(v.as_str()));
                }
                s.other_payloads = other;
                s
            })
    }

    fn disk_with(bytes: Vec<u8>) -> (SimFs, PathBuf) {
        let fs = SimFs::new();
        let dir = PathBuf::from("/d");
        fs.create_dir_all(&dir).unwrap();
        let path = dir.join("x.snap");
        fs.create(&path).unwrap();
        fs.overwrite(&path, bytes);
        (fs, path)
    }

    proptest! {
        #[test]
        fn any_state_round_trips(state in arb_state(), offset: u64) {
            let fs = SimFs::new();
            let dir = PathBuf::from("/d");
            fs.create_dir_all(&dir).unwrap();
            let snap = write(&fs, &dir, offset, &state, 4096).unwrap();
            let (o, back) = read(&fs, &dir.join(&snap.file)).unwrap();
            prop_assert_eq!(o, offset);
            prop_assert_eq!(back, state);
        }

        #[test]
        fn truncations_and_flips_are_refused(
            state in arb_state(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let fs = SimFs::new();
            let dir = PathBuf::from("/d");
            fs.create_dir_all(&dir).unwrap();
            let snap = write(&fs, &dir, 9, &state, 4096).unwrap();
            let good = fs.contents()[&dir.join(&snap.file)].clone();
            let (t, tp) = disk_with(good[..cut.index(good.len())].to_vec());
            prop_assert!(read(&t, &tp).is_err());
            let mut bad = good.clone();
            bad[flip.index(good.len())] ^= 1 << bit;
            let (f, fp) = disk_with(bad);
            prop_assert!(read(&f, &fp).is_err());
        }

        #[test]
        fn arbitrary_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let (fs, path) = disk_with(bytes);
            let _ = read(&fs, &path);
        }
    }

    #[test]
    fn a_huge_claimed_length_is_refused_before_allocating() {
        // A valid header whose body claims a string of 2^62 bytes: reading must fail
        // on the limit, not try to allocate it.
        let mut body = Vec::new();
        bincode::encode_into_std_write((1u64, 0u64), &mut body, bincode_config()).unwrap();
        body.push(253); // varint marker: a u64 length follows
        body.extend_from_slice(&(1u64 << 62).to_le_bytes());
        body.extend_from_slice(b"tail");
        let header = Header {
            offset: 1,
            body_len: body.len() as u64,
            body_crc: crc32c::crc32c(&body),
        };
        let mut file = encode_header(&header, MAGIC).to_vec();
        file.extend_from_slice(&body);
        let (fs, path) = disk_with(file);
        let err = read(&fs, &path).unwrap_err();
        assert!(
            err.contains("does not decode") && err.to_lowercase().contains("limit"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod in_memory {
    use super::*;
    use crate::fs::RealFs;

    #[test]
    fn to_bytes_is_exactly_the_file_write_produces() {
        let mut s = KvState::default();
        for i in 0..500 {
            s.apply(format!("set k{i}=v{i}").as_bytes());
        }
        let dir = tempfile::tempdir().unwrap();
        let snap = write(&RealFs, dir.path(), 77, &s, 4096).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(snap.file)).unwrap(),
            to_bytes(77, &s)
        );
    }
}

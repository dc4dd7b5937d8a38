//! The files beside the Raft log: `raft.state` (the node's identity, and the term,
//! vote and commit index, rewritten crash-safely when they change) and `raft.install`
//! (the intent of a snapshot install, made durable before the log is replaced).

use std::io;
use std::path::Path;

use raft::eraftpb::HardState;

use crate::core::layout::{RAFT_GROUP, RAFT_INSTALL, RAFT_STATE};
use crate::error::{Error, Result};
use crate::fs::{FileSystem, create_durably, join};

const MAGIC: &[u8; 8] = b"FLNTRAFT";
const INSTALL_MAGIC: &[u8; 8] = b"FLNTINST";
const GROUP_MAGIC: &[u8; 8] = b"FLNTGRUP";
const VERSION: u32 = 2;

/// Who this node is in its group, as `raft.state` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its Raft id.
    pub id: u64,
    /// The voters the group was founded with (empty: the node joined it later).
    pub founders: Vec<u64>,
    /// Drawn at random when the directory was created (0: not recorded yet).
    pub incarnation: u64,
}

/// A fresh incarnation number: nonzero, different at every call.
pub fn new_incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// Encodes `raft.state`.
pub fn encode_state(who: &Identity, hs: &HardState) -> Vec<u8> {
    let mut b = Vec::with_capacity(60 + 8 * who.founders.len());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    for v in [hs.term, hs.vote, hs.commit] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&(who.founders.len() as u32).to_le_bytes());
    for v in &who.founders {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&who.id.to_le_bytes());
    b.extend_from_slice(&who.incarnation.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes `raft.state`: the node's identity and the hard state.
pub fn decode_state(b: &[u8]) -> std::result::Result<(Identity, HardState), String> {
    if b.len() < 44 || &b[0..8] != MAGIC {
        return Err("not a Raft state file".into());
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err("checksum mismatch".into());
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    let tail = match version {
        1 => 0,
        VERSION => 16,
        v => return Err(format!("unsupported version {v}")),
    };
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let n = u32::from_le_bytes(b[36..40].try_into().expect("4 bytes")) as usize;
    if body.len() != 40 + 8 * n + tail {
        return Err(format!("{} bytes for {n} founders", b.len()));
    }
    let founders = (0..n).map(|i| u64_at(40 + 8 * i)).collect();
    let (id, incarnation) = match tail {
        0 => (0, 0),
        _ => (u64_at(40 + 8 * n), u64_at(48 + 8 * n)),
    };
    let hs = HardState {
        term: u64_at(12),
        vote: u64_at(20),
        commit: u64_at(28),
        ..HardState::default()
    };
    Ok((
        Identity {
            id,
            founders,
            incarnation,
        },
        hs,
    ))
}

/// What `dir`'s `raft.state` records, if there is one: the node's identity and its
/// hard state as last written (the commit index may lag).
///
/// # Errors
/// [`Error::Open`] when it cannot be read or is damaged.
pub fn read_raft_state(fs: &dyn FileSystem, dir: &Path) -> Result<Option<(Identity, HardState)>> {
    read_state(fs, dir)
}

/// The identity recorded in `dir`'s `raft.state`, if there is one.
///
/// # Errors
/// [`Error::Open`] when it cannot be read or is damaged.
pub fn read_identity(fs: &dyn FileSystem, dir: &Path) -> Result<Option<Identity>> {
    Ok(read_state(fs, dir)?.map(|(who, _)| who))
}

/// The group id `dir`'s `raft.group` records, if there is one.
///
/// # Errors
/// [`Error::Open`] when it cannot be read or is damaged.
pub fn read_group(fs: &dyn FileSystem, dir: &Path) -> Result<Option<u64>> {
    let path = join(dir, RAFT_GROUP);
    let file = match fs.open(&path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::open_io(format!("reading {}", path.display()), &e)),
    };
    let len = file.len().map_err(|e| Error::open_io(path.display(), &e))?;
    let mut b = vec![0u8; len.min(64) as usize];
    file.read_exact_at(&mut b, 0)
        .map_err(|e| Error::open_io(path.display(), &e))?;
    decode_group(&b)
        .map(Some)
        .map_err(|why| Error::Open(format!("{} is damaged: {why}", path.display())))
}

/// Records durably that `dir` belongs to group `group`.
///
/// # Errors
/// The I/O error.
pub fn write_group(fs: &dyn FileSystem, dir: &Path, group: u64) -> io::Result<()> {
    let mut b = Vec::with_capacity(20);
    b.extend_from_slice(GROUP_MAGIC);
    b.extend_from_slice(&group.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    create_durably(fs, dir, RAFT_GROUP, |f| f.write_all_at(&b, 0))
}

fn decode_group(b: &[u8]) -> std::result::Result<u64, String> {
    if b.len() != 20 || &b[0..8] != GROUP_MAGIC {
        return Err("not a group file".into());
    }
    if crc32c::crc32c(&b[..16]) != u32::from_le_bytes(b[16..20].try_into().expect("4 bytes")) {
        return Err("checksum mismatch".into());
    }
    Ok(u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")))
}

/// Encodes `raft.install`: the snapshot the log is being replaced by.
pub(super) fn encode_install(index: u64, term: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(28);
    b.extend_from_slice(INSTALL_MAGIC);
    b.extend_from_slice(&index.to_le_bytes());
    b.extend_from_slice(&term.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Marks `dir`, where a snapshot at `index` (term `term`) was made durable, as a log
/// to be replaced by one continuing from it: the next [`RaftLog::open`](super::RaftLog::open) finishes the
/// install (a new member bootstrapped from a snapshot it fetched itself).
///
/// # Errors
/// The I/O error.
pub fn mark_install(fs: &dyn FileSystem, dir: &Path, index: u64, term: u64) -> io::Result<()> {
    let bytes = encode_install(index, term);
    create_durably(fs, dir, RAFT_INSTALL, |f| f.write_all_at(&bytes, 0))
}

pub(super) fn decode_install(b: &[u8]) -> std::result::Result<(u64, u64), String> {
    if b.len() != 28 || &b[0..8] != INSTALL_MAGIC {
        return Err("not an install marker".into());
    }
    if crc32c::crc32c(&b[..24]) != u32::from_le_bytes(b[24..28].try_into().expect("4 bytes")) {
        return Err("checksum mismatch".into());
    }
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    Ok((u64_at(8), u64_at(16)))
}

pub(super) fn read_state(fs: &dyn FileSystem, dir: &Path) -> Result<Option<(Identity, HardState)>> {
    let path = join(dir, RAFT_STATE);
    let file = match fs.open(&path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::open_io(format!("reading {}", path.display()), &e)),
    };
    let len = file.len().map_err(|e| Error::open_io(path.display(), &e))?;
    let mut b = vec![0u8; len.min(1 << 20) as usize];
    file.read_exact_at(&mut b, 0)
        .map_err(|e| Error::open_io(path.display(), &e))?;
    decode_state(&b)
        .map(Some)
        .map_err(|why| Error::Open(format!("{} is damaged: {why}", path.display())))
}

pub(super) fn write_state(
    fs: &dyn FileSystem,
    dir: &Path,
    who: &Identity,
    hs: &HardState,
) -> io::Result<()> {
    let bytes = encode_state(who, hs);
    create_durably(fs, dir, RAFT_STATE, |f| f.write_all_at(&bytes, 0))
}

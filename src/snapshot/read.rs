//! Reading and verifying snapshots and deltas: one body reader for both, checking
//! the header, the length and the checksum before anything is trusted.

use super::*;

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
    let delta = read_changes(&mut r, &header)?;
    r.finish(&header)?;
    Ok(delta)
}

/// Reads a delta body's fields and changes (after whatever precedes them).
fn read_changes(r: &mut ChunkReader<'_>, header: &Header) -> Result<Delta, String> {
    let bad = |e: bincode::error::DecodeError| format!("body does not decode: {e}");
    let limited = bincode_config().with_limit::<PAIR_BYTES_MAX>();
    let (parent_offset, parent_checksum, other_payloads, count): (u64, u32, u64, u64) =
        bincode::decode_from_std_read(&mut *r, limited).map_err(bad)?;
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
            bincode::decode_from_std_read(&mut *r, limited).map_err(bad)?;
        let k: Arc<str> = Arc::from(k);
        if changes.last().is_some_and(|(l, _)| *l >= k) {
            return Err("keys are not in strictly ascending order".into());
        }
        changes.push((k, v.map(Arc::from)));
    }
    Ok(Delta {
        offset: header.offset,
        checksum: header.body_crc,
        parent_offset,
        parent_checksum,
        other_payloads,
        changes,
    })
}

/// A cluster node's delta as read back: the consensus layer's head at its index, and
/// the changes since its parent (`delta.parent_offset` is the parent's Raft index).
#[derive(Debug)]
pub struct MachineDelta {
    pub size_bytes: u64,
    pub head: Vec<u8>,
    pub delta: Delta,
}

/// Reads and fully verifies a cluster node's delta (see [`write_machine_delta`]).
///
/// [`write_machine_delta`]: super::write_machine_delta
///
/// # Errors
/// A sentence saying what is wrong.
pub fn read_machine_delta(fs: &dyn FileSystem, path: &Path) -> Result<MachineDelta, String> {
    let file = fs
        .open(path, false)
        .map_err(|e| format!("cannot open: {e}"))?;
    let (header, mut r, head) = open_machine_body(&*file, MACHINE_DELTA_MAGIC)?;
    let delta = read_changes(&mut r, &header)?;
    r.finish(&header)?;
    Ok(MachineDelta {
        size_bytes: header.body_len + HEADER_BYTES,
        head,
        delta,
    })
}

/// The identity a cluster snapshot or delta's header gives (its index, body checksum
/// and size), without reading its body: what a member compares with an offer before
/// the full verification.
///
/// # Errors
/// The file cannot be read, or its header is not a cluster file's.
pub fn peek_machine(fs: &dyn FileSystem, path: &Path) -> Result<SnapshotFile, String> {
    let file = fs
        .open(path, false)
        .map_err(|e| format!("cannot open: {e}"))?;
    let (header, _) = open_body(&*file, MACHINE_MAGIC)
        .or_else(|why| open_body(&*file, MACHINE_DELTA_MAGIC).map_err(|_| why))?;
    Ok(SnapshotFile {
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        offset: Offset::from_disk(header.offset),
        size_bytes: header.body_len + HEADER_BYTES,
        checksum: header.body_crc,
    })
}

/// Reads and fully verifies the cluster chain `names` in `dir` (a snapshot, then
/// deltas each building on the one before), returning the state at its tip (with the
/// tip's index, checksum, size and head) and each file's identity, named as given.
///
/// # Errors
/// A sentence saying which file is wrong and how, or that the chain is broken.
pub fn read_machine_files(
    fs: &dyn FileSystem,
    dir: &Path,
    names: &[String],
) -> Result<(MachineFile, Vec<SnapshotFile>), String> {
    let (base, deltas) = names.split_first().ok_or("an empty chain")?;
    let mut tip = read_machine(fs, &dir.join(base)).map_err(|e| format!("{base}: {e}"))?;
    let mut files = vec![tip.identity(base)];
    for name in deltas {
        let d = read_machine_delta(fs, &dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        tip.extend(d, name)?;
        files.push(tip.identity(name));
    }
    Ok((tip, files))
}

/// Reads and fully verifies the chain `names` in `dir` (a full snapshot, then deltas
/// each building on the file before it: its offset and body checksum), returning the
/// state at its tip.
///
/// # Errors
/// A sentence saying which file is wrong and how, or that the chain is broken.
pub fn read_files(fs: &dyn FileSystem, dir: &Path, names: &[String]) -> Result<KvState, String> {
    let (base, deltas) = names.split_first().ok_or("an empty chain")?;
    let (offset, checksum, mut state) =
        read_full(fs, &dir.join(base)).map_err(|e| format!("{base}: {e}"))?;
    let mut tip = (offset, checksum);
    for name in deltas {
        let d = read_delta(fs, &dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        if (d.parent_offset, d.parent_checksum) != tip {
            return Err(format!("{name} does not build on the file before it"));
        }
        state.apply_changes(&d.changes, d.other_payloads);
        tip = (d.offset, d.checksum);
    }
    Ok(state)
}

/// Reads and fully verifies the cluster chain ending at `tip` among the snapshots
/// `on_disk` (`(index, name)`): each delta's parent is the file at its parent index
/// with its parent checksum.
///
/// # Errors
/// As [`read_machine_files`].
pub fn read_machine_chain(
    fs: &dyn FileSystem,
    dir: &Path,
    on_disk: &[(u64, String)],
    tip: &str,
) -> Result<(MachineFile, Vec<SnapshotFile>), String> {
    if !layout::is_raft_delta(tip) {
        return read_machine_files(fs, dir, &[tip.to_string()]);
    }
    let d = read_machine_delta(fs, &dir.join(tip)).map_err(|e| format!("{tip}: {e}"))?;
    let parent = d.delta.parent_offset;
    let mut why = format!("{tip}: its parent at index {parent} is not on disk");
    for (_, name) in on_disk.iter().filter(|(i, _)| *i == parent) {
        match read_machine_chain(fs, dir, on_disk, name) {
            Ok((mut m, mut files)) => {
                if m.checksum != d.delta.parent_checksum {
                    why = format!("{tip}: its parent {name} has another checksum");
                    continue;
                }
                m.extend(d, tip)?;
                files.push(m.identity(tip));
                return Ok((m, files));
            }
            Err(e) => why = e,
        }
    }
    Err(why)
}

/// [`open_body`] for a cluster node's file, with the consensus layer's head read off
/// the front of its body.
fn open_machine_body<'f>(
    file: &'f dyn File,
    magic: &[u8; 8],
) -> Result<(Header, ChunkReader<'f>, Vec<u8>), String> {
    let (header, mut r) = open_body(file, magic)?;
    let limited = bincode_config().with_limit::<PAIR_BYTES_MAX>();
    let head: Vec<u8> = bincode::decode_from_std_read(&mut r, limited)
        .map_err(|e| format!("head does not decode: {e}"))?;
    Ok((header, r, head))
}

/// Checks the header and length of a snapshot or delta file and returns a reader of
/// its body that checksums as it goes.
pub(super) fn open_body<'f>(
    file: &'f dyn File,
    magic: &[u8; 8],
) -> Result<(Header, ChunkReader<'f>), String> {
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

pub(super) struct ChunkReader<'f> {
    pub(super) file: &'f dyn File,
    pub(super) pos: u64,
    pub(super) end: u64,
    pub(super) buf: Vec<u8>,
    pub(super) at: usize,
    pub(super) crc: u32,
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

/// [`read`], with the body checksum (the file's identity).
///
/// # Errors
/// As [`read`].
pub fn read_identified(fs: &dyn FileSystem, path: &Path) -> Result<(u64, u32, KvState), String> {
    read_full(fs, path)
}

/// [`read`], with the body checksum.
pub(super) fn read_full(fs: &dyn FileSystem, path: &Path) -> Result<(u64, u32, KvState), String> {
    let file = fs
        .open(path, false)
        .map_err(|e| format!("cannot open: {e}"))?;
    let (header, mut r) = open_body(&*file, MAGIC)?;
    let state = read_state(&mut r, &header)?;
    r.finish(&header)?;
    Ok((header.offset, header.body_crc, state))
}

/// Reads and fully verifies a cluster node's snapshot (see [`write_machine`]): its
/// index, body checksum, size, the consensus layer's head bytes, and the state.
///
/// [`write_machine`]: super::write_machine
///
/// # Errors
/// A sentence saying what is wrong, for the caller to prefix with the path.
pub fn read_machine(fs: &dyn FileSystem, path: &Path) -> Result<MachineFile, String> {
    let file = fs
        .open(path, false)
        .map_err(|e| format!("cannot open: {e}"))?;
    let (header, mut r, head) = open_machine_body(&*file, MACHINE_MAGIC)?;
    let state = read_state(&mut r, &header)?;
    r.finish(&header)?;
    Ok(MachineFile {
        index: header.offset,
        checksum: header.body_crc,
        size_bytes: header.body_len + HEADER_BYTES,
        head,
        state,
    })
}

/// A cluster node's snapshot as read back.
#[derive(Debug)]
pub struct MachineFile {
    /// The Raft index it was cut at.
    pub index: u64,
    /// Its body checksum.
    pub checksum: u32,
    /// The file's size.
    pub size_bytes: u64,
    /// What the consensus layer stored beside the state.
    pub head: Vec<u8>,
    /// The key-value state.
    pub state: KvState,
}

impl MachineFile {
    fn identity(&self, name: &str) -> SnapshotFile {
        SnapshotFile {
            file: name.to_string(),
            offset: Offset::from_disk(self.index),
            size_bytes: self.size_bytes,
            checksum: self.checksum,
        }
    }

    /// Applies delta `d` (named `name`), which must build on this very file.
    fn extend(&mut self, d: MachineDelta, name: &str) -> Result<(), String> {
        let delta = d.delta;
        if (delta.parent_offset, delta.parent_checksum) != (self.index, self.checksum) {
            return Err(format!(
                "{name}: it builds on index {} (checksum {:08x}), not on the file before it \
                 (index {}, checksum {:08x})",
                delta.parent_offset, delta.parent_checksum, self.index, self.checksum
            ));
        }
        self.state
            .apply_changes(&delta.changes, delta.other_payloads);
        self.index = delta.offset;
        self.checksum = delta.checksum;
        self.size_bytes = d.size_bytes;
        self.head = d.head;
        Ok(())
    }
}

/// Reads the key-value part of a body: the counts, then the pairs in key order.
fn read_state(r: &mut ChunkReader<'_>, header: &Header) -> Result<KvState, String> {
    let bad = |e: bincode::error::DecodeError| format!("body does not decode: {e}");
    let limited = bincode_config().with_limit::<PAIR_BYTES_MAX>();
    let (count, other_payloads): (u64, u64) =
        bincode::decode_from_std_read(&mut *r, limited).map_err(bad)?;
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
            bincode::decode_from_std_read(&mut *r, limited).map_err(bad)?;
        let k: Arc<str> = Arc::from(k);
        if last.as_ref().is_some_and(|l| *l >= k) {
            return Err("keys are not in strictly ascending order".into());
        }
        map.insert(k.clone(), Arc::from(v));
        last = Some(k);
    }
    Ok(KvState {
        map,
        other_payloads,
    })
}

//! `SimFs`: a simulated disk for crash and fault testing.
//!
//! Every file has a *durable* image (what survives a power cut) and a *current* image
//! (what reads see), plus the ordered list of writes and size changes made since its
//! last `sync_data`. The directory has durable and current entries plus the ordered
//! creates, renames and removals since its last `sync_dir`. A sync promotes exactly what
//! it covers; nothing else is promoted.
//!
//! [`SimFs::crash`] builds the disk a power cut at this moment could leave, in one of
//! the [`CrashMode`]s, from a seed: the same seed gives the same disk. [`Faults`] make
//! operations fail: every operation from a given one on (a power cut: the process then
//! sees only errors), EIO once at a given operation (after a failed `sync_data` the
//! file's unsynced writes are dropped, as Linux does: they will never reach the disk),
//! ENOSPC past a capacity, and short reads.
//!
//! Operations are counted (creates, writes, size changes, syncs, renames, removals):
//! with a sequential workload the count is deterministic, so "crash at operation k"
//! names one point of one run.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{File, FileSystem, Lock};

/// Sector size: a torn write lands in whole sectors.
pub const SECTOR_BYTES: u64 = 512;

/// What a power cut leaves of the operations not yet synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrashMode {
    /// Nothing pending lands.
    DropAll,
    /// A random prefix of each file's pending writes, and of the directory's pending
    /// operations, lands.
    Prefix,
    /// Each pending operation lands or not, independently (reordering).
    Subset,
    /// Every pending operation lands, except that each file's last write lands only in
    /// part, in whole sectors.
    TearLast,
    /// No pending write lands, but the sectors under them fill with random bytes; a
    /// random prefix of the directory operations lands.
    Garbage,
}

impl CrashMode {
    /// Every mode.
    pub const ALL: [CrashMode; 5] = [
        CrashMode::DropAll,
        CrashMode::Prefix,
        CrashMode::Subset,
        CrashMode::TearLast,
        CrashMode::Garbage,
    ];

    /// Whether the mode draws random numbers (so that several seeds differ).
    pub fn is_random(self) -> bool {
        self != CrashMode::DropAll
    }
}

/// Fault knobs; operation numbers count from 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// From this operation on, every operation fails with EIO and changes nothing.
    pub crash_at: Option<u64>,
    /// This operation fails once with EIO.
    pub eio_at: Option<u64>,
    /// Writes or size changes that would make the files' total current size exceed
    /// this fail with ENOSPC and change nothing.
    pub capacity_bytes: Option<u64>,
    /// Every read returns at most half of what was asked (at least one byte).
    pub short_reads: bool,
    /// This operation, if a write, lands only its first half, then fails with EIO.
    pub short_write_at: Option<u64>,
}

/// A small deterministic random generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// A coin flip.
    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

/// One counted operation, as recorded in [`SimFs::trace`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRecord {
    /// Its number.
    pub op: u64,
    /// `create`, `write`, `set_len`, `punch_hole`, `fdatasync`, `rename`, `unlink` or `fsync(dir)`.
    pub kind: &'static str,
    /// The file (for `rename`, the source; for `fsync(dir)`, the directory).
    pub path: PathBuf,
    /// The destination of a `rename`.
    pub to: Option<PathBuf>,
}

#[derive(Debug, Clone)]
enum FileOp {
    Write { pos: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone, Default)]
struct FileData {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<FileOp>,
    /// Byte ranges `[from, to)` whose writes a failed sync dropped: Linux marks such
    /// pages clean after reporting the error once, so a later sync that succeeds does
    /// not write them (the "fsyncgate" lesson). A new write to a range makes it dirty
    /// again.
    lost: Vec<(u64, u64)>,
}

impl FileData {
    /// A sync succeeded: everything current is durable, but the lost ranges.
    fn sync(&mut self) {
        let mut image = self.current.clone();
        for &(from, to) in &self.lost {
            for i in from..to.min(image.len() as u64) {
                image[i as usize] = self.durable.get(i as usize).copied().unwrap_or(0);
            }
        }
        self.durable = image;
        self.pending.clear();
        self.lost.clear();
    }

    /// A sync failed with EIO: the pending writes never reach the disk.
    fn drop_pending(&mut self) {
        for op in self.pending.drain(..) {
            if let FileOp::Write { pos, data } = op {
                self.lost.push((pos, pos + data.len() as u64));
            }
        }
    }

    /// `[from, to)` was written again: dirty, so no longer lost.
    fn rewritten(&mut self, from: u64, to: u64) {
        let mut kept = Vec::new();
        for &(a, b) in &self.lost {
            if b <= from || a >= to {
                kept.push((a, b));
                continue;
            }
            if a < from {
                kept.push((a, from));
            }
            if b > to {
                kept.push((to, b));
            }
        }
        self.lost = kept;
    }
}

#[derive(Debug, Clone)]
enum DirOp {
    Link {
        path: PathBuf,
        id: usize,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
        id: usize,
    },
    Unlink {
        path: PathBuf,
    },
}

impl DirOp {
    fn dir(&self) -> &Path {
        match self {
            DirOp::Link { path, .. } | DirOp::Unlink { path } => {
                path.parent().unwrap_or(Path::new(""))
            }
            DirOp::Rename { to, .. } => to.parent().unwrap_or(Path::new("")),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Inner {
    files: Vec<FileData>,
    current: BTreeMap<PathBuf, usize>,
    durable: BTreeMap<PathBuf, usize>,
    dir_pending: Vec<DirOp>,
    dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    ops: u64,
    faults: Faults,
    trace: Vec<OpRecord>,
}

fn eio(what: &str, op: u64) -> io::Error {
    io::Error::other(format!("simulated EIO on {what} (operation {op})"))
}

impl Inner {
    /// Counts one mutating operation; fails it if a fault says so.
    fn op(&mut self, what: &'static str, path: &Path, to: Option<&Path>) -> io::Result<u64> {
        let op = self.ops;
        self.ops += 1;
        self.trace.push(OpRecord {
            op,
            kind: what,
            path: path.to_path_buf(),
            to: to.map(Path::to_path_buf),
        });
        if self.faults.crash_at.is_some_and(|k| op >= k) {
            return Err(eio(what, op));
        }
        if self.faults.eio_at == Some(op) {
            return Err(eio(what, op));
        }
        Ok(op)
    }

    fn total_current(&self) -> u64 {
        self.current
            .values()
            .collect::<BTreeSet<_>>()
            .iter()
            .map(|&&id| self.files[id].current.len() as u64)
            .sum()
    }

    fn check_space(&self, id: usize, new_len: u64) -> io::Result<()> {
        if let Some(cap) = self.faults.capacity_bytes {
            let old = self.files[id].current.len() as u64;
            if new_len > old && self.total_current() + (new_len - old) > cap {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
        }
        Ok(())
    }
}

/// The simulated disk. Cloning gives another handle to the same disk.
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    inner: Arc<Mutex<Inner>>,
}

impl SimFs {
    /// An empty disk.
    pub fn new() -> SimFs {
        SimFs::default()
    }

    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the fault knobs.
    pub fn set_faults(&self, faults: Faults) {
        self.lock_inner().faults = faults;
    }

    /// Operations counted so far.
    pub fn ops(&self) -> u64 {
        self.lock_inner().ops
    }

    /// Every operation counted so far, in order (failed ones included).
    pub fn trace(&self) -> Vec<OpRecord> {
        self.lock_inner().trace.clone()
    }

    /// The disk after a clean shutdown: every current image, durable.
    pub fn clean_copy(&self) -> SimFs {
        let inner = self.lock_inner();
        let mut files: Vec<FileData> = Vec::new();
        let mut current = BTreeMap::new();
        for (path, &id) in &inner.current {
            let data = inner.files[id].current.clone();
            files.push(FileData {
                durable: data.clone(),
                current: data,
                pending: Vec::new(),
                lost: Vec::new(),
            });
            current.insert(path.clone(), files.len() - 1);
        }
        SimFs {
            inner: Arc::new(Mutex::new(Inner {
                files,
                durable: current.clone(),
                current,
                dirs: inner.dirs.clone(),
                ..Inner::default()
            })),
        }
    }

    /// The disk after the process was killed (`kill -9`): the page cache survives, so
    /// every current image stays readable and every unsynced write stays pending (a
    /// later power cut may still lose it); locks are released. Faults are cleared.
    pub fn after_kill(&self) -> SimFs {
        let inner = self.lock_inner();
        SimFs {
            inner: Arc::new(Mutex::new(Inner {
                files: inner.files.clone(),
                current: inner.current.clone(),
                durable: inner.durable.clone(),
                dir_pending: inner.dir_pending.clone(),
                dirs: inner.dirs.clone(),
                ..Inner::default()
            })),
        }
    }

    /// The disk a power cut now could leave, in `mode`, drawn from `seed`. The result
    /// has no faults, no locks and nothing pending.
    pub fn crash(&self, seed: u64, mode: CrashMode) -> SimFs {
        let inner = self.lock_inner();
        let mut rng = Rng::new(seed ^ 0xF1A7_1065);
        // Directory operations, in order.
        let n = inner.dir_pending.len();
        let landing: Vec<bool> = match mode {
            CrashMode::DropAll => vec![false; n],
            CrashMode::TearLast => vec![true; n],
            CrashMode::Prefix | CrashMode::Garbage => {
                let k = rng.below(n as u64 + 1) as usize;
                (0..n).map(|i| i < k).collect()
            }
            CrashMode::Subset => (0..n).map(|_| rng.coin()).collect(),
        };
        let mut names = inner.durable.clone();
        for (op, lands) in inner.dir_pending.iter().zip(landing) {
            if !lands {
                continue;
            }
            match op {
                DirOp::Link { path, id } => {
                    names.insert(path.clone(), *id);
                }
                DirOp::Rename { from, to, id } => {
                    names.remove(from);
                    names.insert(to.clone(), *id);
                }
                DirOp::Unlink { path } => {
                    names.remove(path);
                }
            }
        }
        // File contents of every file still named.
        let mut files = Vec::new();
        let mut durable = BTreeMap::new();
        let mut done: BTreeMap<usize, usize> = BTreeMap::new();
        for (path, id) in names {
            let new_id = *done.entry(id).or_insert_with(|| {
                let f = &inner.files[id];
                let image = crash_file(f, mode, &mut rng);
                files.push(FileData {
                    durable: image.clone(),
                    current: image,
                    pending: Vec::new(),
                    lost: Vec::new(),
                });
                files.len() - 1
            });
            durable.insert(path, new_id);
        }
        SimFs {
            inner: Arc::new(Mutex::new(Inner {
                files,
                current: durable.clone(),
                durable,
                dirs: inner.dirs.clone(),
                ..Inner::default()
            })),
        }
    }

    /// Every file's name and current bytes, for comparing two disks.
    pub fn contents(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let inner = self.lock_inner();
        inner
            .current
            .iter()
            .map(|(p, &id)| (p.clone(), inner.files[id].current.clone()))
            .collect()
    }

    /// Replaces a file's bytes, durably (for tests that damage a disk).
    pub fn overwrite(&self, path: &Path, bytes: Vec<u8>) {
        let mut inner = self.lock_inner();
        let id = inner.current[path];
        inner.files[id] = FileData {
            durable: bytes.clone(),
            current: bytes,
            pending: Vec::new(),
            lost: Vec::new(),
        };
    }
}

fn apply(image: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write { pos, data } => {
            let end = *pos as usize + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[*pos as usize..end].copy_from_slice(data);
        }
        FileOp::SetLen(len) => image.resize(*len as usize, 0),
    }
}

fn crash_file(f: &FileData, mode: CrashMode, rng: &mut Rng) -> Vec<u8> {
    let mut image = f.durable.clone();
    let n = f.pending.len();
    match mode {
        CrashMode::DropAll => {}
        CrashMode::Prefix => {
            let k = rng.below(n as u64 + 1) as usize;
            f.pending[..k].iter().for_each(|op| apply(&mut image, op));
        }
        CrashMode::Subset => {
            for op in &f.pending {
                if rng.coin() {
                    apply(&mut image, op);
                }
            }
        }
        CrashMode::TearLast => {
            if let Some((last, rest)) = f.pending.split_last() {
                rest.iter().for_each(|op| apply(&mut image, op));
                match last {
                    FileOp::Write { pos, data } => {
                        // Whole sectors of the write, from its start.
                        let end = pos + data.len() as u64;
                        let sectors = end.div_ceil(SECTOR_BYTES) - pos / SECTOR_BYTES;
                        let keep = rng.below(sectors.max(1));
                        let cut = ((pos / SECTOR_BYTES + keep) * SECTOR_BYTES).clamp(*pos, end);
                        if cut > *pos {
                            let torn = FileOp::Write {
                                pos: *pos,
                                data: data[..(cut - pos) as usize].to_vec(),
                            };
                            apply(&mut image, &torn);
                        }
                    }
                    op @ FileOp::SetLen(_) => {
                        if rng.coin() {
                            apply(&mut image, op);
                        }
                    }
                }
            }
        }
        CrashMode::Garbage => {
            for op in &f.pending {
                if let FileOp::Write { pos, data } = op {
                    let first = pos / SECTOR_BYTES;
                    let last = (pos + data.len() as u64).div_ceil(SECTOR_BYTES);
                    for s in first..last {
                        let from = (s * SECTOR_BYTES) as usize;
                        let to = from + SECTOR_BYTES as usize;
                        if image.len() < to {
                            image.resize(to, 0);
                        }
                        for b in &mut image[from..to] {
                            *b = rng.next_u64() as u8;
                        }
                    }
                }
            }
        }
    }
    image
}

struct SimFile {
    fs: SimFs,
    id: usize,
    path: PathBuf,
    writable: bool,
}

impl File for SimFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let inner = self.fs.lock_inner();
        let data = &inner.files[self.id].current;
        let start = (pos as usize).min(data.len());
        let mut n = buf.len().min(data.len() - start);
        if inner.faults.short_reads && n > 1 {
            n /= 2;
        }
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }
    fn write_all_at(&mut self, buf: &[u8], pos: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from_raw_os_error(9)); // EBADF
        }
        let mut inner = self.fs.lock_inner();
        let op_number = inner.op("write", &self.path, None)?;
        let short = inner.faults.short_write_at == Some(op_number);
        let buf = if short { &buf[..buf.len() / 2] } else { buf };
        let new_len = (pos + buf.len() as u64).max(inner.files[self.id].current.len() as u64);
        inner.check_space(self.id, new_len)?;
        let op = FileOp::Write {
            pos,
            data: buf.to_vec(),
        };
        let f = &mut inner.files[self.id];
        apply(&mut f.current, &op);
        f.rewritten(pos, pos + buf.len() as u64);
        f.pending.push(op);
        if short {
            return Err(eio("write (short)", op_number));
        }
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        let mut inner = self.fs.lock_inner();
        let failed = inner.op("fdatasync", &self.path, None);
        let f = &mut inner.files[self.id];
        match failed {
            Ok(_) => {
                f.sync();
                Ok(())
            }
            Err(e) => {
                // A power cut changes nothing; an EIO from the disk makes Linux drop the
                // dirty pages' "dirty" state: they never reach the disk, not even with
                // a later sync that succeeds.
                if inner.faults.crash_at.is_none_or(|k| inner.ops <= k) {
                    inner.files[self.id].drop_pending();
                }
                Err(e)
            }
        }
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.fs.lock_inner().files[self.id].current.len() as u64)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut inner = self.fs.lock_inner();
        inner.op("set_len", &self.path, None)?;
        inner.check_space(self.id, len)?;
        let op = FileOp::SetLen(len);
        let f = &mut inner.files[self.id];
        apply(&mut f.current, &op);
        f.pending.push(op);
        Ok(())
    }
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        if self.len()? >= len {
            return Ok(());
        }
        self.set_len(len)
    }
    /// Modelled as a write of zeros over the whole blocks of the range (pending until
    /// a sync, like any write), counted as a `punch_hole` operation.
    fn punch_hole(&mut self, pos: u64, len: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from_raw_os_error(9)); // EBADF
        }
        let mut inner = self.fs.lock_inner();
        inner.op("punch_hole", &self.path, None)?;
        let size = inner.files[self.id].current.len() as u64;
        let from = pos.div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
        let to = ((pos + len) / SECTOR_BYTES * SECTOR_BYTES).min(size);
        if from >= to {
            return Ok(());
        }
        let op = FileOp::Write {
            pos: from,
            data: vec![0; (to - from) as usize],
        };
        let f = &mut inner.files[self.id];
        apply(&mut f.current, &op);
        f.rewritten(from, to);
        f.pending.push(op);
        Ok(())
    }
    /// The simulated disk allocates a block when it holds a non-zero byte.
    fn allocated_bytes(&self) -> io::Result<u64> {
        let inner = self.fs.lock_inner();
        let data = &inner.files[self.id].current;
        let blocks = data
            .chunks(SECTOR_BYTES as usize)
            .filter(|b| b.iter().any(|&x| x != 0))
            .count();
        Ok(blocks as u64 * SECTOR_BYTES)
    }
    /// Makes nothing durable, so the disk's state does not change: written data stays
    /// pending until a sync, as it is.
    fn write_back(&mut self, _pos: u64, _len: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from_raw_os_error(9)); // EBADF
        }
        Ok(())
    }
}

struct SimLock {
    fs: SimFs,
    path: PathBuf,
}

impl Lock for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.fs.lock_inner().locks.remove(&self.path);
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut inner = self.lock_inner();
        for a in dir.ancestors() {
            inner.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn File>> {
        let mut inner = self.lock_inner();
        if !inner.dirs.contains(path.parent().unwrap_or(Path::new(""))) {
            return Err(io::ErrorKind::NotFound.into());
        }
        inner.op("create", path, None)?;
        let id = match inner.current.get(path) {
            Some(&id) => {
                let op = FileOp::SetLen(0);
                let f = &mut inner.files[id];
                apply(&mut f.current, &op);
                f.pending.push(op);
                id
            }
            None => {
                inner.files.push(FileData::default());
                let id = inner.files.len() - 1;
                inner.current.insert(path.to_path_buf(), id);
                inner.dir_pending.push(DirOp::Link {
                    path: path.to_path_buf(),
                    id,
                });
                id
            }
        };
        Ok(Box::new(SimFile {
            fs: self.clone(),
            id,
            path: path.to_path_buf(),
            writable: true,
        }))
    }
    fn open(&self, path: &Path, writable: bool) -> io::Result<Box<dyn File>> {
        let inner = self.lock_inner();
        let id = *inner.current.get(path).ok_or(io::ErrorKind::NotFound)?;
        Ok(Box::new(SimFile {
            fs: self.clone(),
            id,
            path: path.to_path_buf(),
            writable,
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut inner = self.lock_inner();
        let id = *inner.current.get(from).ok_or(io::ErrorKind::NotFound)?;
        inner.op("rename", from, Some(to))?;
        inner.current.remove(from);
        inner.current.insert(to.to_path_buf(), id);
        inner.dir_pending.push(DirOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            id,
        });
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut inner = self.lock_inner();
        if !inner.current.contains_key(path) {
            return Err(io::ErrorKind::NotFound.into());
        }
        inner.op("unlink", path, None)?;
        inner.current.remove(path);
        inner.dir_pending.push(DirOp::Unlink {
            path: path.to_path_buf(),
        });
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let inner = self.lock_inner();
        if !inner.dirs.contains(dir) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(inner
            .current
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut inner = self.lock_inner();
        let synced = inner.op("fsync(dir)", dir, None);
        let (mine, others): (Vec<DirOp>, Vec<DirOp>) = std::mem::take(&mut inner.dir_pending)
            .into_iter()
            .partition(|op| op.dir() == dir);
        if let Err(e) = synced {
            // A power cut changes nothing. An EIO: the directory's pending creates,
            // renames and removals are taken as lost for good (they show in the
            // namespace until the next power cut, and no later sync makes them durable).
            inner.dir_pending = if inner.faults.crash_at.is_none_or(|k| inner.ops <= k) {
                others
            } else {
                others.into_iter().chain(mine).collect()
            };
            return Err(e);
        }
        inner.dir_pending = others;
        for op in mine {
            match op {
                DirOp::Link { path, id } => {
                    inner.durable.insert(path, id);
                }
                DirOp::Rename { from, to, id } => {
                    inner.durable.remove(&from);
                    inner.durable.insert(to, id);
                }
                DirOp::Unlink { path } => {
                    inner.durable.remove(&path);
                }
            }
        }
        Ok(())
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Lock>> {
        let mut inner = self.lock_inner();
        if !inner.locks.insert(path.to_path_buf()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked", path.display()),
            ));
        }
        Ok(Box::new(SimLock {
            fs: self.clone(),
            path: path.to_path_buf(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(fs: &SimFs, path: &str, data: &[u8], sync: bool) {
        let mut f = fs.create(Path::new(path)).unwrap();
        f.write_all_at(data, 0).unwrap();
        if sync {
            f.sync_data().unwrap();
        }
    }

    fn names(fs: &SimFs) -> Vec<String> {
        fs.contents()
            .keys()
            .map(|p| p.display().to_string())
            .collect()
    }

    #[test]
    fn only_synced_data_and_synced_names_survive_drop_all() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        write(&fs, "/d/a", b"durable", true);
        fs.sync_dir(Path::new("/d")).unwrap();
        write(&fs, "/d/b", b"named only in memory", true);
        let mut f = fs.open(Path::new("/d/a"), true).unwrap();
        f.write_all_at(b"DURABLE-BUT-NOT-SYNCED", 0).unwrap();
        let after = fs.crash(1, CrashMode::DropAll);
        assert_eq!(names(&after), ["/d/a"]);
        assert_eq!(after.contents()[Path::new("/d/a")], b"durable");
    }

    #[test]
    fn rename_is_atomic_and_promoted_only_by_a_directory_sync() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        write(&fs, "/d/x.tmp", b"new", true);
        fs.rename(Path::new("/d/x.tmp"), Path::new("/d/x")).unwrap();
        assert!(names(&fs.crash(0, CrashMode::DropAll)).is_empty());
        assert_eq!(names(&fs.crash(0, CrashMode::TearLast)), ["/d/x"]);
        fs.sync_dir(Path::new("/d")).unwrap();
        for mode in CrashMode::ALL {
            assert_eq!(
                fs.crash(7, mode).contents()[Path::new("/d/x")],
                b"new",
                "{mode:?}"
            );
        }
    }

    #[test]
    fn crashes_are_deterministic_per_seed_and_torn_writes_are_sector_granular() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        write(&fs, "/d/f", &[], true);
        fs.sync_dir(Path::new("/d")).unwrap();
        let mut f = fs.open(Path::new("/d/f"), true).unwrap();
        f.write_all_at(&[7u8; 2000], 100).unwrap();
        let a = fs.crash(42, CrashMode::TearLast).contents();
        let b = fs.crash(42, CrashMode::TearLast).contents();
        assert_eq!(a, b);
        let mut lens = BTreeSet::new();
        for seed in 0..50 {
            let image = &fs.crash(seed, CrashMode::TearLast).contents()[Path::new("/d/f")];
            assert!(
                image.is_empty() || (image.len() as u64).is_multiple_of(SECTOR_BYTES),
                "{}",
                image.len()
            );
            lens.insert(image.len());
            let g = &fs.crash(seed, CrashMode::Garbage).contents()[Path::new("/d/f")];
            assert_eq!(
                g.len(),
                2560,
                "garbage fills the five sectors under the write"
            );
        }
        assert!(lens.len() > 1, "different seeds tear at different sectors");
    }

    #[test]
    fn data_a_failed_sync_dropped_stays_lost_after_a_sync_that_succeeds() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        write(&fs, "/d/f", b"old!old!", true);
        fs.sync_dir(Path::new("/d")).unwrap();
        let mut f = fs.open(Path::new("/d/f"), true).unwrap();
        f.write_all_at(b"NEW!", 0).unwrap();
        f.write_all_at(b"MORE", 4).unwrap();
        fs.set_faults(Faults {
            eio_at: Some(fs.ops()),
            ..Faults::default()
        });
        assert!(f.sync_data().is_err());
        // The page cache still shows the data, and a retried sync "succeeds"...
        let mut buf = [0u8; 8];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"NEW!MORE");
        // ... after the second half was written again, which makes it dirty anew.
        f.write_all_at(b"MORE", 4).unwrap();
        f.sync_data().unwrap();
        for mode in CrashMode::ALL {
            let image = &fs.crash(1, mode).contents()[Path::new("/d/f")];
            assert_eq!(
                image, b"old!MORE",
                "{mode:?}: the dropped write never lands"
            );
        }
    }

    #[test]
    fn directory_operations_a_failed_sync_dropped_stay_lost() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        write(&fs, "/d/a", b"a", true);
        fs.set_faults(Faults {
            eio_at: Some(fs.ops()),
            ..Faults::default()
        });
        assert!(fs.sync_dir(Path::new("/d")).is_err());
        write(&fs, "/d/b", b"b", true);
        fs.sync_dir(Path::new("/d")).unwrap();
        assert_eq!(
            names(&fs),
            ["/d/a", "/d/b"],
            "the namespace still shows both"
        );
        for mode in CrashMode::ALL {
            assert_eq!(names(&fs.crash(1, mode)), ["/d/b"], "{mode:?}");
        }
    }

    #[test]
    fn faults_fail_operations_without_changing_anything() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        write(&fs, "/d/f", b"abc", true);
        let ops = fs.ops();
        fs.set_faults(Faults {
            eio_at: Some(ops + 1),
            ..Faults::default()
        });
        let mut f = fs.open(Path::new("/d/f"), true).unwrap();
        f.write_all_at(b"xyz", 0).unwrap();
        assert!(f.sync_data().is_err());
        // The failed sync dropped the dirty write: a crash never shows it.
        assert_eq!(
            fs.crash(3, CrashMode::TearLast).contents()[Path::new("/d/f")],
            b"abc"
        );
        f.sync_data().unwrap();
        fs.set_faults(Faults {
            capacity_bytes: Some(10),
            ..Faults::default()
        });
        assert_eq!(
            f.write_all_at(&[1; 20], 0).unwrap_err().raw_os_error(),
            Some(28)
        );
        fs.set_faults(Faults {
            crash_at: Some(0),
            ..Faults::default()
        });
        assert!(f.write_all_at(b"q", 0).is_err());
        assert!(fs.remove(Path::new("/d/f")).is_err());
    }
}

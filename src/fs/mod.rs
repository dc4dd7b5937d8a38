//! The filesystem trait through which every file operation of the node goes.
//!
//! The trait is deliberately small: positional reads and writes, data sync, size
//! changes, and the directory operations a crash-safe store needs (create, rename,
//! remove, list, sync the directory, lock). [`RealFs`] is the operating system; a
//! simulated disk can implement the same trait to inject faults and crashes.
//!
//! Assumptions about disks, stated once: a completed `sync_data` makes the file's
//! written bytes and size durable; a completed `sync_dir` makes the directory's
//! creates, renames and removals durable; a rename is atomic; nothing else is
//! promised to survive a power cut.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fs2::FileExt;

pub mod sim;

/// An open file.
#[allow(clippy::len_without_is_empty)]
pub trait File: Send {
    /// Reads up to `buf.len()` bytes at `pos`; returns how many were read (0 at end).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `pos`.
    fn write_all_at(&mut self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Makes written data (and the file's size) durable: fdatasync.
    fn sync_data(&mut self) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends the file (extension reads as zeros).
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Reserves space up to `len` bytes so that later writes below it cannot fail for
    /// lack of space and a sync need not grow the file. Extension reads as zeros.
    fn allocate(&mut self, len: u64) -> io::Result<()>;
    /// Gives the filesystem back the blocks wholly inside `[pos, pos + len)`: they
    /// read as zeros afterwards, and the file's length does not change. Like a write,
    /// it is durable only after a sync; until then a crash may bring the old bytes back.
    fn punch_hole(&mut self, pos: u64, len: u64) -> io::Result<()>;
    /// Bytes of disk the file occupies: its allocated blocks (`st_blocks`), which
    /// count preallocated space and not holes.
    fn allocated_bytes(&self) -> io::Result<u64>;
    /// Writes `[pos, pos + len)` out to the disk and waits until the disk has it, with
    /// no cache flush and no metadata: nothing becomes durable by it (only
    /// [`File::sync_data`] does that). It keeps written data from piling up in memory
    /// for a later sync, or the kernel, to send at once.
    fn write_back(&mut self, pos: u64, len: u64) -> io::Result<()>;

    /// Reads exactly `buf.len()` bytes at `pos`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, pos)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf = &mut buf[n..];
                    pos += n as u64;
                }
            }
        }
        Ok(())
    }
}

/// A held directory lock; dropping it releases the lock.
pub trait Lock: Send {}

/// Every file and directory operation the node performs.
pub trait FileSystem: Send + Sync {
    /// Creates the directory and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates (or truncates) a file for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn File>>;
    /// Opens an existing file, for writing too when `writable`.
    fn open(&self, path: &Path, writable: bool) -> io::Result<Box<dyn File>>;
    /// Atomically renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of a directory (files only matter to the node), unsorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Bytes free for new data on the filesystem holding `dir`, when known.
    fn available_bytes(&self, _dir: &Path) -> Option<u64> {
        None
    }
    /// Makes the directory's entries durable: fsync of the directory.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on the file at `path` (created if missing), failing at
    /// once with `WouldBlock` if another process holds it; the error text names the
    /// holder when it is known.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Lock>>;
}

/// The operating system's filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

struct RealFile(fs::File);

impl File for RealFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.0, buf, pos)
    }
    fn write_all_at(&mut self, buf: &[u8], pos: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, buf, pos)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn write_back(&mut self, pos: u64, len: u64) -> io::Result<()> {
        let invalid = |_| io::Error::from(io::ErrorKind::InvalidInput);
        let (pos, len) = (
            libc::off64_t::try_from(pos).map_err(invalid)?,
            libc::off64_t::try_from(len).map_err(invalid)?,
        );
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.0);
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: a valid descriptor owned by `self.0`, and plain integers.
        if unsafe { libc::sync_file_range(fd, pos, len, flags) } == 0 {
            return Ok(());
        }
        match io::Error::last_os_error() {
            // A filesystem without it: the data waits for the next sync, as it would.
            e if matches!(
                e.raw_os_error(),
                Some(libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP | libc::ESPIPE)
            ) =>
            {
                Ok(())
            }
            e => Err(e),
        }
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        if self.len()? >= len {
            return Ok(());
        }
        let off =
            libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.0);
        // posix_fallocate returns its error number instead of setting errno (fs2's
        // wrapper reads errno, and so reports a full disk as "Success").
        // SAFETY: a valid descriptor owned by `self.0`, and plain integers.
        match unsafe { libc::posix_fallocate(fd, 0, off) } {
            0 => Ok(()),
            // Filesystems without fallocate still get a file of the right size.
            libc::EOPNOTSUPP => self.0.set_len(len),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }
    fn punch_hole(&mut self, pos: u64, len: u64) -> io::Result<()> {
        let invalid = |_| io::Error::from(io::ErrorKind::InvalidInput);
        let (pos, len) = (
            libc::off_t::try_from(pos).map_err(invalid)?,
            libc::off_t::try_from(len).map_err(invalid)?,
        );
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.0);
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: a valid descriptor owned by `self.0`, and plain integers.
        if unsafe { libc::fallocate(fd, mode, pos, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    fn allocated_bytes(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.0.metadata()?.blocks() * 512)
    }
}

struct RealLock {
    _file: fs::File,
}

impl Lock for RealLock {}

impl FileSystem for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn File>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(RealFile(file)))
    }
    fn open(&self, path: &Path, writable: bool) -> io::Result<Box<dyn File>> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        Ok(Box::new(RealFile(file)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn available_bytes(&self, dir: &Path) -> Option<u64> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid NUL-terminated string and `st` a writable statvfs.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        fs::File::open(dir)?.sync_all()
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Lock>> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if let Err(err) = file.try_lock_exclusive() {
            let who = holder_of(&mut file);
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked by {who} ({err})", path.display()),
            ));
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        write!(file, "{}", std::process::id())?;
        Ok(Box::new(RealLock { _file: file }))
    }
}

/// Who holds the lock file at `path` (its pid, as the holder wrote it), if a process
/// does; `None` when the file is absent or free. Changes nothing: the file is opened
/// read-only and a shared lock, if granted, is released at once.
pub fn lock_holder(path: &Path) -> Option<String> {
    let mut file = OpenOptions::new().read(true).open(path).ok()?;
    if file.try_lock_shared().is_ok() {
        let _ = FileExt::unlock(&file);
        return None;
    }
    Some(holder_of(&mut file))
}

/// Who holds a lock file, as its holder wrote it: "process PID".
fn holder_of(file: &mut fs::File) -> String {
    let mut holder = String::new();
    let _ = file.read_to_string(&mut holder);
    match holder.trim() {
        "" => "another process".to_string(),
        pid => format!("process {pid}"),
    }
}

/// Marks an I/O error as a failed fdatasync or directory fsync: the fate of the data
/// it covered is unknown, and the node must stop acknowledging (fail-stop).
#[derive(Debug)]
pub struct SyncFailed(pub io::Error);

impl std::fmt::Display for SyncFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sync failed: {}", self.0)
    }
}

impl std::error::Error for SyncFailed {}

/// Wraps the error of a sync so that callers can tell it from other failures.
pub fn sync_failed(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), SyncFailed(e))
}

/// Whether `e` came from a failed sync (see [`sync_failed`]).
pub fn is_sync_failure(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<SyncFailed>())
}

/// Creates `dir/name` crash-safely: `fill` writes `dir/name.tmp`, which is then
/// fdatasync'd, renamed to `name`, and the directory fsync'd. A crash at any point
/// leaves either no file under `name` or the complete one; on error the temp file is
/// removed (best effort; recovery removes leftovers too).
pub fn create_durably(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut dyn File) -> io::Result<()>,
) -> io::Result<()> {
    let temp = join(dir, &crate::core::layout::temp(name));
    let result = (|| {
        let mut file = fs.create(&temp)?;
        fill(&mut *file)?;
        file.sync_data().map_err(sync_failed)?;
        drop(file);
        fs.rename(&temp, &join(dir, name))?;
        fs.sync_dir(dir).map_err(sync_failed)
    })();
    if result.is_err() {
        let _ = fs.remove(&temp);
    }
    result
}

/// How a large file is freed: truncated `chunk_bytes` at a time with a pause between
/// steps, then unlinked. Freeing tens of MiB at once reaches the disk as one burst
/// (on ext4 with online discard, inside a journal commit) that the log's next
/// fdatasync queues behind.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacing {
    /// Bytes truncated per step (0: unlink at once).
    pub chunk_bytes: u64,
    /// Pause between steps.
    pub pause: std::time::Duration,
}

impl Pacing {
    /// Frees the file at `path`, `size` bytes long, step by step.
    pub(crate) fn free(&self, fs: &dyn FileSystem, path: &Path, size: u64) -> io::Result<()> {
        if self.chunk_bytes > 0 && size > self.chunk_bytes {
            let mut file = fs.open(path, true)?;
            let mut len = size;
            while len > 0 {
                len = len.saturating_sub(self.chunk_bytes);
                file.set_len(len)?;
                if !self.pause.is_zero() {
                    std::thread::sleep(self.pause);
                }
            }
        }
        fs.remove(path)
    }
}

/// Joins a directory and a file name.
pub(crate) fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_same_file_fails_naming_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCK");
        let held = RealFs.lock(&path).unwrap();
        let err = RealFs.lock(&path).err().expect("second lock must fail");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(held);
        RealFs.lock(&path).expect("lock is free again after drop");
    }

    #[test]
    fn allocate_extends_with_zeros_and_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = RealFs.create(&dir.path().join("f")).unwrap();
        f.write_all_at(b"abc", 0).unwrap();
        f.allocate(4096).unwrap();
        assert_eq!(f.len().unwrap(), 4096);
        let mut buf = [1u8; 8];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"abc\0\0\0\0\0");
    }
}

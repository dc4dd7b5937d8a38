//! The segmented write-ahead log: appending, syncing, rolling, reading, recovering.
//!
//! [`Log`] is owned by the appender thread alone. It keeps, per segment, the byte
//! position of every record so that a read is one positional read.
//!
//! Architecture Invariant: a segment is sealed only after a sync of its data, so every
//! segment but the last holds exactly the entries up to the next segment's start, and
//! damage there is corruption, never a torn write. Only the last segment can have a
//! torn tail, and recovery cuts it off (keeping the bytes in a `.broken` file).
//!
//! Architecture Invariant: every batch of records (one group commit) starts on a
//! [`BATCH_ALIGN_BYTES`] boundary, and nothing is ever written before the data end.
//! So a write that is not yet synced never shares a disk sector with synced bytes,
//! and a power cut that garbles the sectors under an unsynced write cannot reach the
//! segment header or an acknowledged record. The zeros between batches are padding:
//! a zero header inside a block means "skip to the next boundary", at a boundary it
//! means the end of the data.
//!
//! Architecture Invariant: a segment file appears under its `.log` name only after its
//! header is durable (temp file, sync, rename, directory sync), so an acknowledged
//! entry never lives in a file whose directory entry could vanish.

pub mod meta;
pub mod record;
pub mod segment;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::layout::{self, SPARE_SEGMENT};
use crate::error::{Error, Result};
use crate::fs::{File, FileSystem, create_durably, join, sync_failed};
pub use crate::types::{ReadEntry, SegmentInfo};

struct Segment {
    start: u64,
    name: String,
    /// Byte position of each record, indexed by `offset - start`.
    positions: Vec<u64>,
    /// End of the data: header plus records.
    data_end: u64,
}

impl Segment {
    fn end(&self) -> u64 {
        self.start + self.positions.len() as u64
    }
}

/// Figures from recovering the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRecovery {
    /// Segments found live.
    pub segments: usize,
    /// Entries applied to the state machine (those at or after the snapshot).
    pub entries_replayed: u64,
    /// Bytes cut off a torn tail.
    pub bytes_truncated: u64,
    /// Where the cut bytes were kept.
    pub broken_file: Option<String>,
    /// Segments below the first offset deleted (an interrupted compaction finished).
    pub segments_deleted: usize,
}

/// The log. See the module documentation.
pub struct Log {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    segments: VecDeque<Segment>,
    active: Box<dyn File>,
    first_offset: u64,
    segment_bytes_max: u64,
    preallocate_bytes_max: u64,
    unsynced: bool,
    readers: Vec<(u64, Box<dyn File>)>,
    scratch: Vec<u8>,
    /// The next segment being prepared zero-filled on a helper thread.
    spare: Option<std::thread::JoinHandle<io::Result<()>>>,
    prefill: bool,
}

impl Drop for Log {
    fn drop(&mut self) {
        // A clean shutdown leaves no spare behind.
        if let Some(spare) = self.spare.take() {
            let _ = spare.join();
            let _ = self.fs.remove(&join(&self.dir, SPARE_SEGMENT));
        }
    }
}

/// Alignment of every batch of records: a sector of any disk (4 KiB for 4Kn drives).
pub const BATCH_ALIGN_BYTES: u64 = 4096;

/// `pos` rounded up to a batch boundary.
pub fn align_up(pos: u64) -> u64 {
    pos.div_ceil(BATCH_ALIGN_BYTES) * BATCH_ALIGN_BYTES
}

const READERS_CACHED_MAX: usize = 8;
const SCAN_CHUNK_BYTES: usize = 1024 * 1024;

impl Log {
    /// Offset the next entry gets.
    pub fn next_offset(&self) -> u64 {
        self.segments
            .back()
            .expect("log has an active segment")
            .end()
    }

    /// First live offset (entries below it were compacted away).
    pub fn first_offset(&self) -> u64 {
        self.first_offset
    }

    /// Live entries.
    pub fn live_entries(&self) -> u64 {
        self.next_offset() - self.first_offset
    }

    /// Bytes of log data on disk (headers and records, over live segments).
    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.data_end).sum()
    }

    /// Whether something was written since the last sync.
    pub fn has_unsynced(&self) -> bool {
        self.unsynced
    }

    /// The segment size limit.
    pub fn segment_bytes_max(&self) -> u64 {
        self.segment_bytes_max
    }

    /// Changes the segment size limit; it applies from the next append on.
    pub fn set_segment_bytes_max(&mut self, bytes: u64) {
        assert!(bytes >= 1);
        self.segment_bytes_max = bytes;
    }

    /// Every live segment, the active one last.
    pub fn segment_infos(&self) -> Vec<SegmentInfo> {
        let n = self.segments.len();
        self.segments
            .iter()
            .enumerate()
            .map(|(i, s)| SegmentInfo {
                file: s.name.clone(),
                start_offset: s.start,
                end_offset: s.end().checked_sub(1).filter(|_| !s.positions.is_empty()),
                size_bytes: s.data_end,
                sealed: i + 1 < n,
            })
            .collect()
    }

    /// Sealed segments whose every entry lies below `offset`: what compacting to
    /// `offset` may delete. Returns `(start, file name)`.
    pub fn sealed_below(&self, offset: u64) -> Vec<(u64, String)> {
        let n = self.segments.len();
        self.segments
            .iter()
            .take(n - 1)
            .filter(|s| s.end() <= offset)
            .map(|s| (s.start, s.name.clone()))
            .collect()
    }

    /// Whether `count` more records of `pending_bytes` in all, plus one with a payload
    /// of `payload_len` bytes, fit into the active segment. A record always fits an
    /// empty segment.
    pub fn fits(&self, count: usize, pending_bytes: u64, payload_len: usize) -> bool {
        let active = self.segments.back().expect("active segment");
        if active.positions.is_empty() && count == 0 {
            return true;
        }
        align_up(active.data_end) + pending_bytes + record::record_bytes(payload_len)
            <= self.segment_bytes_max
    }

    /// Writes records for `payloads` at the next offsets into the active segment,
    /// without syncing. The caller checked with [`Log::fits`].
    ///
    /// # Errors
    /// The write's I/O error; the log's view is then unchanged (the bytes beyond the
    /// data end are garbage that recovery would cut).
    pub fn append<'a>(&mut self, payloads: impl IntoIterator<Item = &'a [u8]>) -> io::Result<()> {
        let first = self.next_offset();
        let active = self.segments.back_mut().expect("active segment");
        let start = align_up(active.data_end);
        self.scratch.clear();
        let mut positions = Vec::new();
        // Everything before this write is synced: its first record says so, which
        // lets recovery tell damage to synced data from a torn write (see `scan`).
        let after_sync = !self.unsynced;
        for (offset, payload) in (first..).zip(payloads) {
            positions.push(start + self.scratch.len() as u64);
            let flag = after_sync && positions.len() == 1;
            record::encode_flagged(&mut self.scratch, offset, payload, flag);
        }
        if positions.is_empty() {
            return Ok(());
        }
        self.active.write_all_at(&self.scratch, start)?;
        self.unsynced = true;
        active.data_end = start + self.scratch.len() as u64;
        active.positions.extend(positions);
        Ok(())
    }

    /// fdatasync of the active segment.
    pub fn sync(&mut self) -> io::Result<()> {
        self.active.sync_data()?;
        self.unsynced = false;
        Ok(())
    }

    /// Seals the active segment (syncing it) and opens a new one at the next offset,
    /// durable in the directory before this returns.
    ///
    /// # Errors
    /// An error from the seal's sync means data may be lost (the caller poisons);
    /// an error while creating the new segment leaves the old one active and synced.
    pub fn roll(&mut self) -> std::result::Result<(), RollError> {
        if self.unsynced {
            self.sync().map_err(RollError::Sync)?;
        }
        let start = self.next_offset();
        let target = self.segment_bytes_max.min(self.preallocate_bytes_max);
        let prepared = match self.spare.take().map(|h| h.join()) {
            Some(Ok(Ok(()))) => Some(self.promote_spare(start).map_err(RollError::Create)?),
            Some(Ok(Err(e))) => {
                log::warn!("preparing the next segment failed: {e}; creating it now");
                None
            }
            Some(Err(_)) => {
                log::warn!("the segment preparation thread panicked; creating the segment now");
                None
            }
            None => None,
        };
        let file = match prepared {
            Some(file) => file,
            None => create_segment(&*self.fs, &self.dir, start, target, self.prefill)
                .map_err(RollError::Create)?,
        };
        self.active = file;
        self.start_spare();
        self.segments.push_back(Segment {
            start,
            name: layout::segment(start),
            positions: Vec::new(),
            data_end: segment::HEADER_BYTES,
        });
        Ok(())
    }

    /// Starts preparing the next segment: `spare.log.tmp`, zero-filled to the
    /// preallocation size and synced, on a helper thread.
    fn start_spare(&mut self) {
        if !self.prefill || self.spare.is_some() {
            return;
        }
        let fs = self.fs.clone();
        let path = join(&self.dir, SPARE_SEGMENT);
        let size = self
            .segment_bytes_max
            .min(self.preallocate_bytes_max)
            .max(2 * BATCH_ALIGN_BYTES);
        let spawned = std::thread::Builder::new()
            .name("flintlog-prefill".into())
            .spawn(move || {
                let result = (|| {
                    let mut file = fs.create(&path)?;
                    zero_fill(&mut *file, 0, size)?;
                    file.sync_data()
                })();
                if result.is_err() {
                    // Give back whatever space it took (a full disk is the usual reason).
                    let _ = fs.remove(&path);
                }
                result
            });
        match spawned {
            Ok(handle) => self.spare = Some(handle),
            Err(e) => log::warn!("cannot start the segment preparation thread: {e}"),
        }
    }

    /// Turns the prepared spare into the segment starting at `start`, with the same
    /// recipe as a new segment: header, sync, rename, directory sync; then reopens it
    /// under its final name.
    fn promote_spare(&mut self, start: u64) -> io::Result<Box<dyn File>> {
        let spare = join(&self.dir, SPARE_SEGMENT);
        let name = layout::segment(start);
        let result = (|| {
            let mut file = self.fs.open(&spare, true)?;
            file.write_all_at(&segment::encode_header(start), 0)?;
            file.sync_data().map_err(sync_failed)?;
            drop(file);
            self.fs.rename(&spare, &join(&self.dir, &name))?;
            self.fs.sync_dir(&self.dir).map_err(sync_failed)?;
            self.fs.open(&join(&self.dir, &name), true)
        })();
        if result.is_err() {
            let _ = self.fs.remove(&spare);
        }
        result
    }

    /// Reads the entry at `offset`.
    ///
    /// # Errors
    /// [`Error::NotFound`] below the first offset or at/after the next offset;
    /// [`Error::Unavailable`] when the file cannot be read.
    pub fn read(&mut self, offset: u64) -> Result<ReadEntry> {
        if offset < self.first_offset {
            return Err(Error::NotFound(format!(
                "offset {offset} was compacted away (first live offset is {})",
                self.first_offset
            )));
        }
        let next = self.next_offset();
        if offset >= next {
            return Err(Error::NotFound(format!(
                "offset {offset} is past the end of the log (next offset is {next})"
            )));
        }
        let idx = self.segments.partition_point(|s| s.start <= offset) - 1;
        let seg = &self.segments[idx];
        let i = (offset - seg.start) as usize;
        let pos = seg.positions[i];
        let rec_end = seg.positions.get(i + 1).copied().unwrap_or(seg.data_end);
        let mut buf = vec![0u8; (rec_end - pos) as usize];
        let is_active = idx + 1 == self.segments.len();
        let (start, name) = (seg.start, seg.name.clone());
        let io_err = |e: io::Error| Error::Unavailable(format!("reading {name}: {e}"));
        if is_active {
            self.active.read_exact_at(&mut buf, pos).map_err(io_err)?;
        } else {
            let file = match self.readers.iter().position(|(s, _)| *s == start) {
                Some(k) => &self.readers[k].1,
                None => {
                    let f = match self.fs.open(&join(&self.dir, &name), false) {
                        Ok(f) => f,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            return Err(Error::NotFound(format!(
                                "offset {offset} was compacted away"
                            )));
                        }
                        Err(e) => return Err(io_err(e)),
                    };
                    if self.readers.len() >= READERS_CACHED_MAX {
                        self.readers.remove(0);
                    }
                    self.readers.push((start, f));
                    &self.readers.last().unwrap().1
                }
            };
            file.read_exact_at(&mut buf, pos).map_err(io_err)?;
        }
        Ok(match record::decode(&buf, offset) {
            Ok((payload, _)) => ReadEntry {
                payload: payload.to_vec(),
                checksum_valid: true,
            },
            Err(_) => {
                // Report the bytes the header claims (within the record's extent), so
                // that padding after a batch is not mistaken for payload.
                let claimed = buf
                    .get(4..8)
                    .map_or(0, |l| u32::from_le_bytes(l.try_into().unwrap()) as usize);
                let end = (record::HEADER_BYTES + claimed).min(buf.len());
                ReadEntry {
                    payload: buf
                        .get(record::HEADER_BYTES..end)
                        .unwrap_or_default()
                        .to_vec(),
                    checksum_valid: false,
                }
            }
        })
    }

    /// Forgets segments the compactor deleted and moves the first offset. The active
    /// segment is never among them.
    pub fn compacted(&mut self, first_offset: u64, removed: &[u64]) {
        self.first_offset = self.first_offset.max(first_offset);
        let active = self.segments.back().map(|s| s.start);
        self.segments
            .retain(|s| Some(s.start) == active || !removed.contains(&s.start));
        self.readers.retain(|(s, _)| !removed.contains(s));
    }
}

/// Why a roll failed.
#[derive(Debug)]
pub enum RollError {
    /// Syncing the segment being sealed failed: acknowledged-to-be data may be lost.
    Sync(io::Error),
    /// Creating the next segment failed; nothing was written.
    Create(io::Error),
}

/// Writes zeros over `[from, to)`. Written zeros, not an fallocated range: a later
/// fdatasync of data written there has no unwritten extents to convert.
fn zero_fill(file: &mut dyn File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

fn create_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    start: u64,
    prealloc: u64,
    prefill: bool,
) -> io::Result<Box<dyn File>> {
    let name = layout::segment(start);
    create_durably(fs, dir, &name, |file| {
        file.write_all_at(&segment::encode_header(start), 0)?;
        let size = prealloc.max(segment::HEADER_BYTES);
        if !prefill {
            return file.allocate(size);
        }
        zero_fill(file, segment::HEADER_BYTES, size)
    })?;
    fs.open(&join(dir, &name), true)
}

/// Reads a segment file in chunks.
struct Scanner<'f> {
    file: &'f dyn File,
    len: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<'f> Scanner<'f> {
    fn new(file: &'f dyn File) -> io::Result<Scanner<'f>> {
        Ok(Scanner {
            len: file.len()?,
            file,
            buf: Vec::new(),
            buf_start: 0,
        })
    }

    /// Up to `n` bytes at `pos` (fewer at the end of the file).
    fn bytes(&mut self, pos: u64, n: usize) -> io::Result<&[u8]> {
        let pos = pos.min(self.len);
        let end = (pos + n as u64).min(self.len);
        let have_end = self.buf_start + self.buf.len() as u64;
        if pos < self.buf_start || end > have_end {
            let read_end = end.max((pos + SCAN_CHUNK_BYTES as u64).min(self.len));
            self.buf.resize((read_end - pos) as usize, 0);
            self.file.read_exact_at(&mut self.buf, pos)?;
            self.buf_start = pos;
        }
        Ok(&self.buf[(pos - self.buf_start) as usize..(end - self.buf_start) as usize])
    }

    /// Position just past the last non-zero byte at or after `pos`, if any.
    fn last_nonzero_end(&mut self, pos: u64) -> io::Result<Option<u64>> {
        let mut found = None;
        let mut at = pos;
        while at < self.len {
            let chunk = self.bytes(at, SCAN_CHUNK_BYTES)?;
            let n = chunk.len() as u64;
            if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
                found = Some(at + i as u64 + 1);
            }
            at += n;
        }
        Ok(found)
    }

    /// Where the record of `offset` starts, at or after the data end `pos`. A batch
    /// starts on a block boundary, so the bytes between the previous batch's end and
    /// the boundary are zero padding — which may be shorter than a record header. A
    /// record that verifies at `pos` wins (records run across boundaries inside a
    /// batch); otherwise, if everything up to the boundary is zero, the record is at
    /// the boundary.
    fn next_record_at(&mut self, pos: u64, offset: u64) -> io::Result<u64> {
        if pos.is_multiple_of(BATCH_ALIGN_BYTES) || self.record(pos, offset)?.is_ok() {
            return Ok(pos);
        }
        let boundary = align_up(pos);
        let padding = self
            .bytes(pos, (boundary - pos) as usize)?
            .iter()
            .all(|&b| b == 0);
        Ok(if padding { boundary } else { pos })
    }

    /// The first valid record with the after-sync flag at a block boundary after
    /// `pos`, as `(byte, offset)`. Every write starts at a boundary, and one flagged
    /// record was written when everything before it had been synced: so one found
    /// after a bad record at `pos` proves that record was synced, and damaged since.
    fn written_after_sync(&mut self, pos: u64) -> io::Result<Option<(u64, u64)>> {
        let mut at = align_up(pos + 1);
        while at + record::HEADER_BYTES as u64 <= self.len {
            let head: [u8; record::HEADER_BYTES] = self
                .bytes(at, record::HEADER_BYTES)?
                .try_into()
                .expect("a whole header below the file's length");
            if let record::HeaderRead::Header(h) = record::decode_header(&head)
                && h.after_sync
                && self.record(at, h.offset)?.is_ok()
            {
                return Ok(Some((at, h.offset)));
            }
            at += BATCH_ALIGN_BYTES;
        }
        Ok(None)
    }

    /// Decodes the record at `pos`, expecting `offset`.
    fn record(
        &mut self,
        pos: u64,
        offset: u64,
    ) -> io::Result<std::result::Result<(Vec<u8>, u64), record::Invalid>> {
        let head = self.bytes(pos, record::HEADER_BYTES)?;
        let len = match head.try_into() {
            Ok(h) => match record::decode_header(h) {
                record::HeaderRead::Header(h) => h.len as usize,
                record::HeaderRead::End => return Ok(Err(record::Invalid::End)),
                record::HeaderRead::BadLength(_) => return Ok(Err(record::Invalid::Corrupt)),
            },
            Err(_) => {
                let all_zero = head.iter().all(|&b| b == 0);
                return Ok(Err(if all_zero {
                    record::Invalid::End
                } else {
                    record::Invalid::Truncated
                }));
            }
        };
        let bytes = self.bytes(pos, record::HEADER_BYTES + len)?;
        Ok(record::decode(bytes, offset).map(|(p, n)| (p.to_vec(), n as u64)))
    }
}

/// What the log needs to know of the node's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// The node's directory.
    pub dir: PathBuf,
    /// Size at which the active segment is sealed (at least 1).
    pub segment_bytes_max: u64,
    /// Segments are preallocated to `min(segment_bytes_max, this)`.
    pub preallocate_bytes_max: u64,
    /// Prepare the next segment zero-filled on a helper thread.
    pub prefill: bool,
}

impl LogOptions {
    fn preallocate_bytes(&self) -> u64 {
        self.segment_bytes_max.min(self.preallocate_bytes_max)
    }
}

/// Inputs of log recovery, decided by the caller from the directory listing.
pub struct RecoverLog<'a> {
    /// The log's options.
    pub options: &'a LogOptions,
    /// Segments found, as `(start, file name)`, any order.
    pub segments: Vec<(u64, String)>,
    /// First live offset from `log.meta`.
    pub first_offset: u64,
    /// Entries from this offset on are handed to `visit` (the snapshot's offset).
    pub replay_from: u64,
}

/// One segment as a scan found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedSegment {
    /// Offset of its first entry.
    pub start: u64,
    /// File name.
    pub name: String,
    /// Entries it holds.
    pub entries: u64,
    /// End of its valid data (header and records).
    pub data_end: u64,
    /// Length of the file (preallocation included).
    pub file_bytes: u64,
    positions: Vec<u64>,
}

/// Bytes after the last valid record of the last segment, which recovery cuts off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment.
    pub name: String,
    /// First byte cut (the end of the valid data).
    pub from: u64,
    /// One past the last non-zero byte.
    pub to: u64,
    /// The offset the cut bytes would have had.
    pub offset: u64,
}

/// What a read-only scan of the log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogScan {
    /// Live segments in offset order (empty for a fresh directory).
    pub segments: Vec<ScannedSegment>,
    /// Segments wholly below the first offset, left by an interrupted compaction.
    pub compacted_leftovers: Vec<String>,
    /// A torn tail of the last segment, if any.
    pub torn_tail: Option<TornTail>,
    /// Entries handed to `visit`.
    pub entries_replayed: u64,
}

impl LogScan {
    /// Offset of the next entry (0 for a fresh directory).
    pub fn next_offset(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.start + s.entries)
    }
}

/// Scans the log without changing anything: checks every segment's header and the
/// continuity between segments, reads sealed segments by count, finds a torn tail in
/// the last one, and hands every entry at or after `replay_from` (and the first
/// offset) to `visit` in offset order.
///
/// # Errors
/// [`Error::Open`] naming the file and offset on corruption in a sealed segment, a gap
/// or overlap between segments, or a log that does not reach `replay_from`.
pub fn scan(
    fs: &dyn FileSystem,
    dir: &Path,
    mut segments: Vec<(u64, String)>,
    first_offset: u64,
    replay_from: u64,
    visit: &mut dyn FnMut(u64, &[u8]),
) -> Result<LogScan> {
    let mut out = LogScan::default();
    segments.sort();
    // Whole segments below the first offset: an interrupted compaction's leftovers.
    let keep_from = segments
        .windows(2)
        .take_while(|w| w[1].0 <= first_offset)
        .count();
    out.compacted_leftovers = segments.drain(..keep_from).map(|(_, name)| name).collect();

    if segments.is_empty() {
        if first_offset > 0 || replay_from > 0 {
            return Err(Error::Open(format!(
                "{}: no log segment found, but the log was compacted to offset {first_offset} \
                 and the snapshot covers up to {replay_from}: segments are missing",
                dir.display()
            )));
        }
        return Ok(out);
    }
    let needed = first_offset.min(replay_from);
    if segments[0].0 > needed {
        return Err(Error::Open(format!(
            "{}: the log starts at offset {} ({}), but entries from offset {needed} are needed: \
             a segment is missing",
            dir.display(),
            segments[0].0,
            segments[0].1
        )));
    }

    let n = segments.len();
    for (i, (start, name)) in segments.iter().enumerate() {
        let path = join(dir, name);
        let io = |e: io::Error| Error::open_io(path.display(), &e);
        let is_last = i + 1 == n;
        let file = fs.open(&path, false).map_err(io)?;
        let mut scanner = Scanner::new(&*file).map_err(io)?;
        let head = scanner
            .bytes(0, segment::HEADER_BYTES as usize)
            .map_err(io)?;
        let head_start = head
            .try_into()
            .map_err(|_| "file shorter than a segment header".to_string())
            .and_then(segment::decode_header)
            .map_err(|why| Error::Open(format!("{}: {why}", path.display())))?;
        if head_start != *start {
            return Err(Error::Open(format!(
                "{}: header says the segment starts at offset {head_start}, its name says {start}",
                path.display()
            )));
        }
        let until = segments.get(i + 1).map(|(s, _)| *s);
        let mut seg = ScannedSegment {
            start: *start,
            name: name.clone(),
            entries: 0,
            data_end: segment::HEADER_BYTES,
            file_bytes: scanner.len,
            positions: Vec::new(),
        };
        loop {
            let offset = seg.start + seg.entries;
            let at = scanner.next_record_at(seg.data_end, offset).map_err(io)?;
            if until == Some(offset) {
                // Sealed segment complete; a further valid record means overlap.
                if let Ok(Ok(_)) = scanner.record(at, offset) {
                    return Err(Error::Open(format!(
                        "{}: segments overlap: it holds offset {offset} at byte {at}, which {} starts with",
                        path.display(),
                        segments[i + 1].1
                    )));
                }
                break;
            }
            match scanner.record(at, offset).map_err(io)? {
                Ok((payload, len)) => {
                    if offset >= replay_from && offset >= first_offset {
                        visit(offset, &payload);
                        out.entries_replayed += 1;
                        if out.entries_replayed % 1_000_000 == 0 {
                            log::info!("recovery: {} entries replayed", out.entries_replayed);
                        }
                    }
                    seg.positions.push(at);
                    seg.data_end = at + len;
                    seg.entries += 1;
                }
                Err(record::Invalid::End) if !is_last => {
                    return Err(Error::Open(format!(
                        "{}: gap in the log: the segment ends at offset {offset}, but the next \
                         segment {} starts at offset {}: a segment is missing",
                        path.display(),
                        segments[i + 1].1,
                        segments[i + 1].0
                    )));
                }
                Err(why) if !is_last => {
                    return Err(Error::Open(format!(
                        "{}: corrupt record at byte {at} (offset {offset}): {} (the next segment starts at {})",
                        path.display(),
                        describe(why),
                        until.unwrap_or(offset)
                    )));
                }
                Err(why) => {
                    // The end of the log, or a torn write: unless a record written
                    // after a sync stands further on, which a crash cannot produce.
                    if let Some((pos, later)) = scanner.written_after_sync(at).map_err(io)? {
                        return Err(Error::Open(format!(
                            "{}: damaged record at byte {at} (offset {offset}): {}; a record \
                             written after it was synced stands at byte {pos} (offset {later}), \
                             so this is damage to synced data, not a torn write",
                            path.display(),
                            describe(why)
                        )));
                    }
                    break;
                }
            }
        }
        if is_last && let Some(to) = scanner.last_nonzero_end(seg.data_end).map_err(io)? {
            out.torn_tail = Some(TornTail {
                name: name.clone(),
                from: seg.data_end,
                to,
                offset: seg.start + seg.entries,
            });
        }
        out.segments.push(seg);
    }
    let next = out.next_offset();
    if next < replay_from || next < first_offset {
        return Err(Error::Open(format!(
            "{}: the log ends at offset {next}, before the snapshot ({replay_from}) or the first \
             live offset ({first_offset}) it must reach",
            dir.display()
        )));
    }
    Ok(out)
}

impl Log {
    /// Recovers the log: [`scan`]s it, then finishes an interrupted compaction, cuts a
    /// torn tail off the last segment (keeping the bytes in a `.broken` file), and
    /// opens the last segment for appending (creating segment 0 in a fresh directory).
    ///
    /// # Errors
    /// As [`scan`], and [`Error::Open`] when a repair fails.
    pub fn recover(
        fs: Arc<dyn FileSystem>,
        input: RecoverLog<'_>,
        visit: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<(Log, LogRecovery)> {
        let RecoverLog {
            options,
            segments,
            first_offset,
            replay_from,
        } = input;
        let dir = options.dir.clone();
        let found = scan(&*fs, &dir, segments, first_offset, replay_from, visit)?;
        let mut report = LogRecovery {
            entries_replayed: found.entries_replayed,
            ..LogRecovery::default()
        };

        for name in &found.compacted_leftovers {
            fs.remove(&join(&dir, name))
                .map_err(|e| Error::open_io(format!("removing compacted segment {name}"), &e))?;
            log::info!("removed segment {name}, compacted before the last shutdown");
            report.segments_deleted += 1;
        }
        if report.segments_deleted > 0 {
            fs.sync_dir(&dir)
                .map_err(|e| Error::open_io(dir.display(), &e))?;
        }

        let prealloc = options.preallocate_bytes();
        let mut live: VecDeque<Segment> = found
            .segments
            .into_iter()
            .map(|s| Segment {
                start: s.start,
                name: s.name,
                positions: s.positions,
                data_end: s.data_end,
            })
            .collect();
        let active = match live.back() {
            None => {
                live.push_back(Segment {
                    start: 0,
                    name: layout::segment(0),
                    positions: Vec::new(),
                    data_end: segment::HEADER_BYTES,
                });
                create_segment(&*fs, &dir, 0, prealloc, options.prefill).map_err(|e| {
                    Error::open_io(
                        format!("creating the first segment in {}", dir.display()),
                        &e,
                    )
                })?
            }
            Some(last) => {
                let path = join(&dir, &last.name);
                let mut file = fs
                    .open(&path, true)
                    .map_err(|e| Error::open_io(format!("opening {}", path.display()), &e))?;
                if let Some(torn) = &found.torn_tail {
                    let broken = cut_tail(
                        &*fs, &dir, &torn.name, &mut *file, torn.from, torn.to, prealloc,
                    )?;
                    report.bytes_truncated = torn.to - torn.from;
                    log::warn!(
                        "{}: torn tail of {} bytes at byte {} (offset {}) cut off, kept in {broken}",
                        path.display(),
                        report.bytes_truncated,
                        torn.from,
                        torn.offset
                    );
                    report.broken_file = Some(broken);
                }
                file
            }
        };
        report.segments = live.len();
        Ok((Log::new(fs, options, first_offset, active, live), report))
    }

    fn new(
        fs: Arc<dyn FileSystem>,
        options: &LogOptions,
        first_offset: u64,
        active: Box<dyn File>,
        segments: VecDeque<Segment>,
    ) -> Log {
        let mut log = Log {
            fs,
            dir: options.dir.clone(),
            segments,
            active,
            first_offset,
            segment_bytes_max: options.segment_bytes_max,
            preallocate_bytes_max: options.preallocate_bytes_max,
            unsynced: false,
            readers: Vec::new(),
            scratch: Vec::new(),
            spare: None,
            prefill: options.prefill,
        };
        log.start_spare();
        log
    }
}

fn describe(why: record::Invalid) -> String {
    match why {
        record::Invalid::End => "the data ends early".into(),
        record::Invalid::Truncated => "the record is cut short".into(),
        record::Invalid::Corrupt => "checksum or length does not verify".into(),
        record::Invalid::WrongOffset(o) => format!("a record of offset {o} stands there"),
    }
}

/// Keeps bytes `[from, to)` of the last segment in a `.broken` file, then zeroes them
/// (truncate and re-extend), durably.
fn cut_tail(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    file: &mut dyn File,
    from: u64,
    to: u64,
    prealloc: u64,
) -> Result<String> {
    let broken = layout::broken_tail(name, from);
    let path = join(dir, &broken);
    let fail =
        |e: io::Error| Error::open_io(format!("cutting the torn tail of {name} into {broken}"), &e);
    let mut bytes = vec![0u8; (to - from) as usize];
    file.read_exact_at(&mut bytes, from).map_err(fail)?;
    let mut out = fs.create(&path).map_err(fail)?;
    out.write_all_at(&bytes, 0).map_err(fail)?;
    out.sync_data().map_err(fail)?;
    fs.sync_dir(dir).map_err(fail)?;
    let len = file.len().map_err(fail)?;
    file.set_len(from).map_err(fail)?;
    file.allocate(len.max(prealloc)).map_err(fail)?;
    file.sync_data().map_err(fail)?;
    Ok(broken)
}

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
mod recover;
mod roll;
mod scan;
pub mod segment;
mod tail;

pub use recover::{LogOptions, LogRecovery, RecoverLog};
pub use roll::{RollError, create_segment};
pub use scan::{LogScan, ScannedSegment, TornTail, scan};

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(test)]
pub(crate) use tail::fresh_log;
pub use tail::{Tail, TailError};

use crate::core::layout::{self, SPARE_SEGMENT};
use crate::core::position::Offset;
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
    /// Disk space of a sealed segment (allocated blocks); the active one is asked.
    allocated: u64,
}

impl Segment {
    fn end(&self) -> u64 {
        self.start + self.positions.len() as u64
    }
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
    syncs: SyncCount,
    durable: DurableEnd,
}

/// How many syncs a log has done, readable from any thread: what tells a snapshot
/// being written that the log is busy (see [`crate::core::pace`]).
#[derive(Debug, Clone, Default)]
pub struct SyncCount(Arc<AtomicU64>);

impl SyncCount {
    /// The syncs done so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// One past the last entry the log knows is on disk (synced, or found there at
/// recovery), readable from any thread: what the log shipper may send.
#[derive(Debug, Clone, Default)]
pub struct DurableEnd(Arc<AtomicU64>);

impl DurableEnd {
    /// The offset after the last durable entry.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, next: u64) {
        self.0.store(next, Ordering::Release);
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // A clean shutdown leaves no spare behind.
        self.retire_spare();
    }
}

impl Log {
    /// Waits for the segment being prepared, if any, and removes it: before the
    /// directory's segments are replaced under this log.
    pub fn retire_spare(&mut self) {
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
    pub fn next_offset(&self) -> Offset {
        Offset::new(self.next())
    }

    fn next(&self) -> u64 {
        self.segments
            .back()
            .expect("log has an active segment")
            .end()
    }

    /// First live offset (entries below it were compacted away).
    pub fn first_offset(&self) -> Offset {
        Offset::new(self.first_offset)
    }

    /// Live entries.
    pub fn live_entries(&self) -> u64 {
        self.next() - self.first_offset
    }

    /// Disk space of the live segments: their allocated blocks, preallocated space
    /// included, freed blocks (holes) not.
    pub fn total_bytes(&self) -> u64 {
        let n = self.segments.len();
        let sealed: u64 = self.segments.iter().take(n - 1).map(|s| s.allocated).sum();
        let active = self.active.allocated_bytes().unwrap_or_else(|e| {
            log::warn!("cannot stat the active segment: {e}");
            self.segments.back().map_or(0, |s| s.data_end)
        });
        sealed + active
    }

    /// Where the live log starts once compacted to `at` (at most the next offset): the
    /// segment holding `at`, and the byte of its record there (of the data end when
    /// `at` is the next offset). Returns the segment's file name too.
    pub fn start_at(&self, at: Offset) -> (meta::SkipTo, String) {
        let at = at.get();
        assert!(at <= self.next(), "{at} is past the end of the log");
        let idx = self.segments.partition_point(|s| s.start <= at) - 1;
        let seg = &self.segments[idx];
        let byte = seg
            .positions
            .get((at - seg.start) as usize)
            .copied()
            .unwrap_or(seg.data_end);
        let skip = meta::SkipTo {
            segment: Offset::new(seg.start),
            byte,
        };
        (skip, seg.name.clone())
    }

    /// The active segment's file name.
    pub fn active_name(&self) -> &str {
        &self.segments.back().expect("an active segment").name
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
                start_offset: Offset::new(s.start),
                end_offset: Offset::new(s.end())
                    .previous()
                    .filter(|_| !s.positions.is_empty()),
                size_bytes: s.data_end,
                sealed: i + 1 < n,
            })
            .collect()
    }

    /// Sealed segments whose every entry lies below `offset`: what compacting to
    /// `offset` may delete. Returns `(start, file name)`.
    pub fn sealed_below(&self, offset: Offset) -> Vec<(Offset, String)> {
        let offset = offset.get();
        let n = self.segments.len();
        self.segments
            .iter()
            .take(n - 1)
            .filter(|s| s.end() <= offset)
            .map(|s| (Offset::new(s.start), s.name.clone()))
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
        let first = self.next();
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

    /// Notes that a sync made elsewhere (through another handle of the same files)
    /// covered every write so far. The caller must know that nothing was written since
    /// that sync began.
    pub fn mark_synced(&mut self) {
        self.unsynced = false;
        self.durable.set(self.next());
    }

    /// fdatasync of the active segment.
    pub fn sync(&mut self) -> io::Result<()> {
        self.active.sync_data()?;
        self.unsynced = false;
        self.syncs.bump();
        self.durable.set(self.next());
        Ok(())
    }

    /// One past the last durable entry, shared.
    pub fn durable_end(&self) -> DurableEnd {
        self.durable.clone()
    }

    /// The count of this log's syncs, shared.
    pub fn sync_count(&self) -> SyncCount {
        self.syncs.clone()
    }

    /// Reads the entry at `offset`.
    ///
    /// # Errors
    /// [`Error::NotFound`] below the first offset or at/after the next offset;
    /// [`Error::Unavailable`] when the file cannot be read.
    pub fn read(&mut self, offset: Offset) -> Result<ReadEntry> {
        let offset = offset.get();
        if offset < self.first_offset {
            return Err(Error::NotFound(format!(
                "offset {offset} was compacted away (first live offset is {})",
                self.first_offset
            )));
        }
        let next = self.next();
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

    /// Removes every entry at or after `offset`, durably, before it returns: the
    /// segments that start after it are deleted (and the directory synced), and the
    /// segment holding it is cut at the entry's record (truncated, re-extended to its
    /// preallocated size, synced, under its cut marker), so that no byte of a removed
    /// entry stays on disk where a later scan could read it. New entries then take the
    /// removed offsets.
    /// (Raft truncates a suffix that conflicts with its leader this way.)
    ///
    /// # Errors
    /// The I/O error; the caller treats any as fail-stop.
    pub fn truncate(&mut self, offset: Offset) -> io::Result<()> {
        let offset = offset.get();
        assert!(
            offset >= self.first_offset && offset <= self.next(),
            "truncating at {offset}, outside the live log"
        );
        if offset == self.next() {
            return Ok(());
        }
        // From here until the cut segment has grown back, a crash may leave it, the
        // last segment, shorter than it was named with: its marker says why.
        let keeps = self
            .segments
            .iter()
            .rev()
            .find(|s| s.start <= offset)
            .expect("a segment holds the offset")
            .name
            .clone();
        mark_cut(&*self.fs, &self.dir, &keeps)?;
        let mut deleted = false;
        while self.segments.len() > 1 && self.segments.back().is_some_and(|s| s.start > offset) {
            let seg = self.segments.pop_back().expect("a segment");
            self.fs.remove(&join(&self.dir, &seg.name))?;
            self.readers.retain(|(s, _)| *s != seg.start);
            deleted = true;
        }
        if deleted {
            self.fs.sync_dir(&self.dir).map_err(sync_failed)?;
            let seg = self.segments.back().expect("a segment");
            self.active = self.fs.open(&join(&self.dir, &seg.name), true)?;
            self.readers.retain(|(s, _)| *s != seg.start);
        }
        let target = self.segment_bytes_max.min(self.preallocate_bytes_max);
        let seg = self.segments.back_mut().expect("a segment");
        let keep = (offset - seg.start) as usize;
        let cut = seg.positions.get(keep).copied().unwrap_or(seg.data_end);
        // Grown back to at least the length its header says it was named with (the
        // options may have changed since, and a sealed segment was trimmed).
        let mut head = [0u8; segment::HEADER_BYTES as usize];
        self.active.read_exact_at(&mut head, 0)?;
        let named = segment::decode_header(&head)
            .map_err(io::Error::other)?
            .preallocated;
        self.active.set_len(cut)?;
        self.active.allocate(target.max(named))?;
        self.active.sync_data().map_err(sync_failed)?;
        unmark_cut(&*self.fs, &self.dir, &keeps)?;
        seg.positions.truncate(keep);
        seg.data_end = cut;
        self.unsynced = false;
        self.durable.set(offset);
        Ok(())
    }

    /// Forgets segments the compactor deleted, notes the new size of one whose blocks
    /// it freed, and moves the first offset. The active segment is never deleted.
    pub fn compacted(
        &mut self,
        first_offset: Offset,
        removed: &[Offset],
        resized: Option<(Offset, u64)>,
    ) {
        if let Some((start, allocated)) = resized
            && let Some(seg) = self.segments.iter_mut().find(|s| start == s.start)
        {
            seg.allocated = allocated;
        }
        let first_offset = first_offset.get();
        let removed: Vec<u64> = removed.iter().map(|o| o.get()).collect();
        self.first_offset = self.first_offset.max(first_offset);
        let active = self.segments.back().map(|s| s.start);
        self.segments
            .retain(|s| Some(s.start) == active || !removed.contains(&s.start));
        self.readers.retain(|(s, _)| !removed.contains(s));
    }
}

/// Marks segment `name` as being cut shorter and grown back, durably, before the cut:
/// recovery then takes a last segment shorter than it was named with for an
/// interrupted cut (and grows it back), not for damage (`segment`).
pub(crate) fn mark_cut(fs: &dyn FileSystem, dir: &Path, name: &str) -> io::Result<()> {
    drop(fs.create(&join(dir, &layout::cut_marker(name)))?);
    fs.sync_dir(dir).map_err(sync_failed)
}

/// Removes the marker of [`mark_cut`], durably, once the segment has grown back and
/// is synced.
pub(crate) fn unmark_cut(fs: &dyn FileSystem, dir: &Path, name: &str) -> io::Result<()> {
    fs.remove(&join(dir, &layout::cut_marker(name)))?;
    fs.sync_dir(dir).map_err(sync_failed)
}

//! Scanning: the read-only checks recovery and `flintlog verify` run over the
//! segments: headers, continuity, every record, a torn tail, and damage that a crash
//! cannot explain.

use super::*;

/// Reads a segment file in chunks.
pub(super) struct Scanner<'f> {
    file: &'f dyn File,
    len: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<'f> Scanner<'f> {
    pub(super) fn new(file: &'f dyn File) -> io::Result<Scanner<'f>> {
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
    pub(super) fn next_record_at(&mut self, pos: u64, offset: u64) -> io::Result<u64> {
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
    /// `pos` and before `end`, as `(byte, offset)`. Every write starts at a boundary,
    /// and one flagged record was written when everything before it had been synced:
    /// so one found after a bad record at `pos` proves that record was synced, and
    /// damaged since.
    fn written_after_sync(&mut self, pos: u64, end: u64) -> io::Result<Option<(u64, u64)>> {
        let mut at = align_up(pos + 1);
        // A record's own trailing bytes may be zeros: it need only start before `end`.
        while at < end && at + record::HEADER_BYTES as u64 <= self.len {
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
    pub(super) fn record(
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
    /// Disk space the file occupies (allocated blocks; holes excluded).
    pub allocated_bytes: u64,
    /// The length its header says it was named with (0: not recorded).
    pub preallocated: u64,
    pub(super) positions: Vec<u64>,
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
    /// The last segment, when it is shorter than it was named with because a cut of it
    /// (`layout::cut_marker`) was interrupted: recovery grows it back.
    pub interrupted_cut: Option<String>,
    /// Entries handed to `visit`.
    pub entries_replayed: u64,
}

impl LogScan {
    /// Offset of the next entry (0 for a fresh directory).
    pub fn next_offset(&self) -> Offset {
        self.segments
            .last()
            .map_or(Offset::ZERO, ScannedSegment::end)
    }
}

impl ScannedSegment {
    /// The offset after its last entry.
    pub fn end(&self) -> Offset {
        Offset::from_disk(self.start).plus(self.entries)
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
    log_start: &meta::LogStart,
    replay_from: Offset,
    visit: &mut dyn FnMut(u64, &[u8]),
) -> Result<LogScan> {
    let (first_offset, replay_from) = (log_start.first_offset.get(), replay_from.get());
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
        let header = head
            .try_into()
            .map_err(|_| "file shorter than a segment header".to_string())
            .and_then(segment::decode_header)
            .map_err(|why| Error::Open(format!("{}: {why}", path.display())))?;
        let head_start = header.start;
        let cut_marker = join(dir, &layout::cut_marker(name));
        if is_last && scanner.len < header.preallocated && fs.open(&cut_marker, false).is_ok() {
            // A cut interrupted between shortening the file and growing it back.
            out.interrupted_cut = Some(name.clone());
        } else if is_last && scanner.len < header.preallocated {
            // Sealed segments are trimmed to their data once the next one is durable;
            // the last one keeps at least the length it was named with (segment.rs).
            return Err(Error::Open(format!(
                "{}: the file is {} bytes, shorter than the {} bytes it was preallocated to \
                 before it was named: it was cut short (a crash does not do that), and \
                 acknowledged entries may be missing from its end",
                path.display(),
                scanner.len,
                header.preallocated
            )));
        }
        if head_start != *start {
            return Err(Error::Open(format!(
                "{}: header says the segment starts at offset {head_start}, its name says {start}",
                path.display()
            )));
        }
        let until = segments.get(i + 1).map(|(s, _)| *s);
        // The end of the last non-zero byte after the data (last segment only).
        let mut tail_end = None;
        let mut seg = ScannedSegment {
            start: *start,
            name: name.clone(),
            entries: 0,
            data_end: segment::HEADER_BYTES,
            file_bytes: scanner.len,
            allocated_bytes: file.allocated_bytes().map_err(io)?,
            preallocated: header.preallocated,
            positions: Vec::new(),
        };
        // The segment holding the first live offset: its blocks before the first live
        // record may have been freed, so the scan starts at that record.
        if i == 0
            && let Some(skip) = log_start.skip.filter(|s| s.segment == *start)
        {
            if skip.byte < segment::HEADER_BYTES || skip.byte > scanner.len {
                return Err(Error::Open(format!(
                    "{}: {} says the live log starts at byte {} of it, outside the file ({} bytes)",
                    path.display(),
                    meta::FILE_NAME,
                    skip.byte,
                    scanner.len
                )));
            }
            seg.entries = first_offset - *start;
            seg.positions = vec![0; seg.entries as usize];
            seg.data_end = skip.byte;
        }
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
                    // Past the data end, only the bytes up to the last non-zero one
                    // can hold a record (what is between is zero padding).
                    tail_end = scanner.last_nonzero_end(at).map_err(io)?;
                    let found = match tail_end {
                        Some(end) => scanner.written_after_sync(at, end).map_err(io)?,
                        None => None,
                    };
                    if let Some((pos, later)) = found {
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
        if is_last && let Some(to) = tail_end {
            out.torn_tail = Some(TornTail {
                name: name.clone(),
                from: seg.data_end,
                to,
                offset: seg.start + seg.entries,
            });
        }
        out.segments.push(seg);
    }
    let next = out.next_offset().get();
    if next < replay_from || next < first_offset {
        return Err(Error::Open(format!(
            "{}: the log ends at offset {next}, before the snapshot ({replay_from}) or the first \
             live offset ({first_offset}) it must reach",
            dir.display()
        )));
    }
    Ok(out)
}

fn describe(why: record::Invalid) -> String {
    match why {
        record::Invalid::End => "the data ends early".into(),
        record::Invalid::Truncated => "the record is cut short".into(),
        record::Invalid::Corrupt => "checksum or length does not verify".into(),
        record::Invalid::WrongOffset(o) => format!("a record of offset {o} stands there"),
    }
}

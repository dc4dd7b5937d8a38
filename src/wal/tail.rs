//! Tailing: reading a live log's durable records from another thread (the log
//! shipper), through the segment files alone, while the appender goes on writing.
//!
//! Records below [`Log::durable_end`] are whole and never rewritten (a single node's
//! log is only ever appended to), so a reader that stays below that offset reads what
//! the appender wrote. What it cannot rely on is that they are still there: the
//! compactor deletes segments and frees blocks below the log's first offset, and a
//! reader that fell behind it finds the entries gone ([`TailError::Gone`]).

use super::scan::Scanner;
use super::*;

/// What a [`Tail`] could not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailError {
    /// The entry at `offset` was compacted away before it was read; the log now
    /// starts at `first`.
    Gone { offset: u64, first: u64 },
    /// An I/O error, or no valid record where a durable one should be.
    Failed(String),
}

impl std::fmt::Display for TailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TailError::Gone { offset, first } => write!(
                f,
                "the entry at offset {offset} was compacted away (the log starts at {first})"
            ),
            TailError::Failed(why) => f.write_str(why),
        }
    }
}

/// Reads a log's records in offset order from its files.
pub struct Tail {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    /// The offset of the next record to read.
    next: u64,
    /// The segment holding `next` (its start offset) and the byte from which the
    /// record of `next` is looked for; `None`: found from the directory.
    at: Option<(u64, u64)>,
}

impl Tail {
    /// A reader of the log in `dir` from offset `next` on.
    pub fn new(fs: Arc<dyn FileSystem>, dir: PathBuf, next: u64) -> Tail {
        Tail {
            fs,
            dir,
            next,
            at: None,
        }
    }

    /// The offset of the next record it reads.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Goes on from `next` instead (after entries that were gone).
    pub fn seek(&mut self, next: u64) {
        self.next = next;
        self.at = None;
    }

    /// Hands the records from the next offset up to `until` (excluded) to `each`, in
    /// order, stopping once `max_bytes` of payload were handed over (at least one
    /// record is, if any is due). Entries below `until` must be durable.
    ///
    /// # Errors
    /// [`TailError::Gone`] when the next entry was compacted away; otherwise
    /// [`TailError::Failed`]. Records handed over before the error stay handed over,
    /// and the next call goes on after them.
    pub fn read(
        &mut self,
        until: u64,
        max_bytes: usize,
        each: &mut dyn FnMut(u64, &[u8]),
    ) -> std::result::Result<(), TailError> {
        let mut taken = 0usize;
        while self.next < until && (taken == 0 || taken < max_bytes) {
            let (start, mut pos) = match self.at {
                Some(at) => at,
                None => self.locate()?,
            };
            let name = layout::segment(start);
            let file = self.open(&name)?;
            let mut scan = Scanner::new(&*file).map_err(|e| self.failed(&name, &e))?;
            loop {
                if self.next >= until || (taken > 0 && taken >= max_bytes) {
                    self.at = Some((start, pos));
                    return Ok(());
                }
                let found = scan
                    .next_record_at(pos, self.next)
                    .and_then(|at| Ok((at, scan.record(at, self.next)?)))
                    .map_err(|e| self.failed(&name, &e))?;
                match found {
                    (at, Ok((payload, n))) => {
                        each(self.next, &payload);
                        taken += payload.len();
                        self.next += 1;
                        pos = at + n;
                    }
                    (at, Err(_)) => {
                        // The segment ends here: the next one starts at this offset.
                        let following = layout::segment(self.next);
                        if self.fs.open(&join(&self.dir, &following), false).is_ok() {
                            self.at = Some((self.next, segment::HEADER_BYTES));
                            break;
                        }
                        self.at = None;
                        return Err(self.missing(format!(
                            "no record of offset {} at byte {at} of {name}, and no segment \
                             after it",
                            self.next
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Finds the segment holding the next offset and the byte of its record.
    fn locate(&mut self) -> std::result::Result<(u64, u64), TailError> {
        let names = self
            .fs
            .list(&self.dir)
            .map_err(|e| TailError::Failed(format!("cannot list {}: {e}", self.dir.display())))?;
        let start = names
            .iter()
            .filter_map(|n| layout::parse_segment(n))
            .filter(|s| *s <= self.next)
            .max()
            .ok_or_else(|| self.missing(format!("no segment holds offset {}", self.next)))?;
        let name = layout::segment(start);
        // Compaction may have freed the blocks before the first live record: its byte
        // is in `log.meta`.
        let (mut offset, mut pos) = (start, segment::HEADER_BYTES);
        if let Ok(m) = meta::read(&*self.fs, &self.dir) {
            if m.first_offset.get() > self.next {
                return Err(TailError::Gone {
                    offset: self.next,
                    first: m.first_offset.get(),
                });
            }
            if let Some(skip) = m.skip.filter(|s| s.segment.get() == start) {
                (offset, pos) = (m.first_offset.get(), skip.byte);
            }
        }
        let file = self.open(&name)?;
        let mut scan = Scanner::new(&*file).map_err(|e| self.failed(&name, &e))?;
        while offset < self.next {
            let at = scan
                .next_record_at(pos, offset)
                .map_err(|e| self.failed(&name, &e))?;
            match scan
                .record(at, offset)
                .map_err(|e| self.failed(&name, &e))?
            {
                Ok((_, n)) => pos = at + n,
                Err(_) => {
                    return Err(self.missing(format!(
                        "no record of offset {offset} at byte {at} of {name}"
                    )));
                }
            }
            offset += 1;
        }
        self.at = Some((start, pos));
        Ok((start, pos))
    }

    fn open(&self, name: &str) -> std::result::Result<Box<dyn File>, TailError> {
        self.fs
            .open(&join(&self.dir, name), false)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => self.missing(format!("{name} is gone")),
                _ => self.failed(name, &e),
            })
    }

    fn failed(&self, name: &str, e: &io::Error) -> TailError {
        TailError::Failed(format!("reading {name}: {e}"))
    }

    /// A record not where it should be: compacted away if the log now starts after
    /// it, else a failure saying `why`.
    fn missing(&self, why: String) -> TailError {
        match meta::read(&*self.fs, &self.dir) {
            Ok(m) if m.first_offset.get() > self.next => TailError::Gone {
                offset: self.next,
                first: m.first_offset.get(),
            },
            _ => TailError::Failed(why),
        }
    }
}

/// A new log in `dir` (empty or absent) on the real disk, with segments of
/// `segment_bytes`: for the tests of what reads a live log.
#[cfg(test)]
pub(crate) fn fresh_log(dir: &Path, segment_bytes: u64) -> Log {
    let options = LogOptions {
        dir: dir.to_path_buf(),
        segment_bytes_max: segment_bytes,
        preallocate_bytes_max: segment_bytes,
        prefill: false,
    };
    let input = RecoverLog {
        options: &options,
        segments: vec![],
        start: meta::LogStart::ORIGIN,
        replay_from: Offset::ZERO,
    };
    Log::recover(Arc::new(crate::fs::RealFs), input, &mut |_, _| {})
        .expect("a new log")
        .0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::RealFs;

    fn read_all(tail: &mut Tail, until: u64) -> Vec<(u64, Vec<u8>)> {
        let mut got = Vec::new();
        tail.read(until, usize::MAX, &mut |o, p| got.push((o, p.to_vec())))
            .unwrap();
        got
    }

    #[test]
    fn a_tail_reads_every_durable_record_across_segments_while_the_log_grows() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = crate::wal::fresh_log(dir.path(), 16 * 1024);
        let durable = log.durable_end();
        let mut tail = Tail::new(Arc::new(RealFs), dir.path().to_path_buf(), 0);
        let mut seen = Vec::new();
        for batch in 0..40u64 {
            let payloads: Vec<Vec<u8>> = (0..7)
                .map(|i| format!("entry {batch}-{i} {}", "x".repeat(300)).into_bytes())
                .collect();
            if !log.fits(payloads.len(), 7 * 340, 340) {
                log.roll().unwrap();
            }
            log.append(payloads.iter().map(Vec::as_slice)).unwrap();
            assert_eq!(
                durable.get(),
                batch * 7,
                "unsynced entries count as durable"
            );
            log.sync().unwrap();
            // Small reads, so that a read stops in the middle of a segment.
            while tail.next() < durable.get() {
                tail.read(durable.get(), 1000, &mut |o, p| seen.push((o, p.to_vec())))
                    .unwrap();
            }
        }
        assert!(log.segment_infos().len() > 3, "the log rolled");
        assert_eq!(seen.len(), 280);
        for (i, (o, p)) in seen.iter().enumerate() {
            assert_eq!(*o, i as u64);
            assert!(p.starts_with(format!("entry {}-{} ", i / 7, i % 7).as_bytes()));
        }
        // A fresh reader finds its place from the middle.
        let mut late = Tail::new(Arc::new(RealFs), dir.path().to_path_buf(), 100);
        let got = read_all(&mut late, 105);
        assert_eq!(
            got.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            vec![100, 101, 102, 103, 104]
        );
        assert_eq!(got[0].1, seen[100].1);
    }

    #[test]
    fn a_tail_behind_compaction_says_the_entries_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = crate::wal::fresh_log(dir.path(), 8 * 1024);
        for _ in 0..30 {
            let payloads = vec![vec![7u8; 500]; 4];
            if !log.fits(4, 2000, 500) {
                log.roll().unwrap();
            }
            log.append(payloads.iter().map(Vec::as_slice)).unwrap();
            log.sync().unwrap();
        }
        let infos = log.segment_infos();
        assert!(infos.len() > 2);
        // What the compactor does: the new start first, then the segment goes.
        let first = infos[1].start_offset;
        let (skip, _) = log.start_at(first);
        meta::write(
            &RealFs,
            dir.path(),
            &meta::LogStart {
                first_offset: first,
                skip: Some(skip),
            },
        )
        .unwrap();
        RealFs.remove(&join(dir.path(), &infos[0].file)).unwrap();
        let mut tail = Tail::new(Arc::new(RealFs), dir.path().to_path_buf(), 3);
        assert_eq!(
            tail.read(120, usize::MAX, &mut |_, _| {}),
            Err(TailError::Gone {
                offset: 3,
                first: first.get()
            })
        );
        tail.seek(first.get());
        let got = read_all(&mut tail, 120);
        assert_eq!(got.first().map(|g| g.0), Some(first.get()));
        assert_eq!(tail.next(), 120);
    }
}

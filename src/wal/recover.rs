//! Recovery: a scan, then the repairs it calls for (finishing an interrupted
//! compaction, cutting a torn tail), and the log opened for appending.

use super::*;

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
    /// The size new segments are preallocated to.
    pub fn preallocate_bytes(&self) -> u64 {
        self.segment_bytes_max.min(self.preallocate_bytes_max)
    }
}

/// Inputs of log recovery, decided by the caller from the directory listing.
pub struct RecoverLog<'a> {
    /// The log's options.
    pub options: &'a LogOptions,
    /// Segments found, as `(start, file name)`, any order.
    pub segments: Vec<(u64, String)>,
    /// Where the live log starts, from `log.meta`.
    pub start: meta::LogStart,
    /// Entries from this offset on are handed to `visit` (the snapshot's offset).
    pub replay_from: Offset,
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
            start,
            replay_from,
        } = input;
        let dir = options.dir.clone();
        let found = scan(&*fs, &dir, segments, &start, replay_from, visit)?;
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
        let last_named = found.segments.last().map_or(0, |s| s.preallocated);
        let mut live: VecDeque<Segment> = found
            .segments
            .into_iter()
            .map(|s| Segment {
                start: s.start,
                name: s.name,
                positions: s.positions,
                data_end: s.data_end,
                allocated: s.allocated_bytes,
            })
            .collect();
        let active = match live.back() {
            None => {
                live.push_back(Segment {
                    start: 0,
                    name: layout::segment(0),
                    positions: Vec::new(),
                    data_end: segment::HEADER_BYTES,
                    allocated: 0,
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
                if found.interrupted_cut.is_some() {
                    // Grown back to its length before its marker goes (below).
                    let fail = |e: io::Error| {
                        Error::open_io(format!("growing back {}", path.display()), &e)
                    };
                    file.allocate(last_named.max(prealloc)).map_err(fail)?;
                    file.sync_data().map_err(|e| fail(sync_failed(e)))?;
                    log::info!(
                        "{}: a cut interrupted by the last shutdown, finished",
                        path.display()
                    );
                }
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
                // What was read back may still sit unsynced in the page cache (the
                // last run was killed before its sync). The next write says that
                // everything before it is synced (the after-sync flag), so make it so.
                file.sync_data().map_err(|e| {
                    Error::open_io(format!("syncing {}", path.display()), &sync_failed(e))
                })?;
                file
            }
        };
        // Cut markers: the last segment is whole again (grown back above, or never
        // shortened); any other is stale.
        let markers: Vec<String> = fs
            .list(&dir)
            .map_err(|e| Error::open_io(dir.display(), &e))?
            .into_iter()
            .filter(|n| n.ends_with(layout::CUT_SUFFIX))
            .collect();
        for name in &markers {
            fs.remove(&join(&dir, name))
                .map_err(|e| Error::open_io(format!("removing {name}"), &e))?;
        }
        if !markers.is_empty() {
            fs.sync_dir(&dir)
                .map_err(|e| Error::open_io(dir.display(), &sync_failed(e)))?;
        }
        report.segments = live.len();
        Ok((
            Log::new(fs, options, start.first_offset.get(), active, live),
            report,
        ))
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
            syncs: SyncCount::default(),
            durable: DurableEnd::default(),
        };
        log.durable.set(log.next());
        log.start_spare();
        log
    }
}

/// Keeps bytes `[from, to)` of the last segment in a `.broken` file, then zeroes them
/// (truncate and re-extend, under the segment's cut marker), durably.
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
    super::mark_cut(fs, dir, name).map_err(fail)?;
    file.set_len(from).map_err(fail)?;
    file.allocate(len.max(prealloc)).map_err(fail)?;
    file.sync_data().map_err(fail)?;
    super::unmark_cut(fs, dir, name).map_err(fail)?;
    Ok(broken)
}

//! Finishing the install of a received snapshot in the log, as `raft.install` says.

use std::io;
use std::sync::Arc;

use raft::eraftpb::Entry;

use super::entry::encode_entry;
use crate::core::layout::RAFT_INSTALL;
use crate::core::position::RaftIndex;
use crate::core::recovery::classify;
use crate::fs::{FileSystem, join, sync_failed};
use crate::wal::meta::LogStart;
use crate::wal::{Log, LogOptions, RecoverLog};

/// Replaces every segment in `options.dir` by one starting at offset `index - 1` that
/// holds only the snapshot's own entry (index `index`, term `term`, no data: Raft asks
/// its term), and makes `log.meta` start there; then removes `raft.install`. Each step
/// is durable before the next, and the whole is idempotent: while `raft.install`
/// exists, opening the log runs it again from the start.
pub(super) fn redo_install(
    fs: &Arc<dyn FileSystem>,
    options: &LogOptions,
    index: u64,
    term: u64,
) -> io::Result<Log> {
    let dir = &options.dir;
    let listing = classify(fs.list(dir)?);
    for (_, name) in &listing.segments {
        fs.remove(&join(dir, name))?;
    }
    fs.sync_dir(dir).map_err(sync_failed)?;
    let at = RaftIndex::new(index).position();
    // Preallocated, not zero-filled: zero-filling a segment here would hold up the
    // consensus thread (the next segments are prepared in the background as usual).
    drop(crate::wal::create_segment(
        &**fs,
        dir,
        at.get(),
        options.preallocate_bytes(),
        false,
    )?);
    let start = LogStart {
        first_offset: at,
        skip: None,
    };
    crate::wal::meta::write(&**fs, dir, &start)?;
    let (mut log, _) = Log::recover(
        fs.clone(),
        RecoverLog {
            options,
            segments: vec![(at.get(), crate::core::layout::segment(at.get()))],
            start,
            replay_from: start.first_offset,
        },
        &mut |_, _| {},
    )
    .map_err(|e| io::Error::other(e.to_string()))?;
    let own = Entry {
        index,
        term,
        ..Entry::default()
    };
    log.append(std::iter::once(encode_entry(&own).as_slice()))?;
    log.sync().map_err(sync_failed)?;
    fs.remove(&join(dir, RAFT_INSTALL))?;
    fs.sync_dir(dir).map_err(sync_failed)?;
    Ok(log)
}

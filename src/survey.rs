//! What recovery starts from, read from a node's directory without changing it: the
//! files sorted by kind, the first live offset, and the snapshot chain the plan
//! (`core::recovery::plan`) picks, loaded. `Node::open` carries it out (removing temp
//! files, replaying and repairing the log, moving skipped snapshots aside);
//! `flintlog verify` and `inspect` report it. One plan for both.

use std::path::Path;

use crate::core::position::Offset;
use crate::core::recovery::{self, DirListing};
use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::snapshot::{self, Chosen};
use crate::wal::meta;

/// Where recovery of a directory starts.
#[derive(Debug)]
pub struct Survey {
    /// The directory's files, by kind.
    pub listing: DirListing,
    /// First live offset (from `log.meta`; 0 without one).
    pub first_offset: Offset,
    /// Where the live log starts, as `log.meta` says.
    pub log_start: meta::LogStart,
    /// The snapshot chain to load, its state, and the newer files it skips.
    pub chosen: Chosen,
}

impl Survey {
    /// The offset the log's replay starts from: the chain's tip, or 0.
    pub fn replay_from(&self) -> Offset {
        self.chosen
            .snapshot
            .as_ref()
            .map_or(Offset::ZERO, |s| s.offset)
    }
}

/// Surveys `dir` (a node's own directory).
///
/// # Errors
/// [`Error::Open`] when the directory cannot be listed, `log.meta` is damaged, or
/// the log was compacted and no verified snapshot chain reaches it.
pub fn survey(fs: &dyn FileSystem, dir: &Path) -> Result<Survey> {
    let names = fs
        .list(dir)
        .map_err(|e| Error::open_io(format!("cannot list {}", dir.display()), &e))?;
    let listing = recovery::classify(names);
    let log_start = meta::read(fs, dir)?;
    let first_offset = log_start.first_offset;
    let chosen = if listing.raft_state {
        snapshot::choose_machine(fs, dir, &listing.raft_snapshots, first_offset)?
    } else {
        snapshot::choose(fs, dir, &listing.snapshots, first_offset)?
    };
    Ok(Survey {
        listing,
        first_offset,
        log_start,
        chosen,
    })
}

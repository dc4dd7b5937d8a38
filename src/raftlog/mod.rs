//! Raft's log on the node's segments, and its hard state in `raft.state`.
//!
//! Raft index `i` is the segment log's offset `i - 1`: the log stays dense and every
//! record keeps its checksum, after-sync flag and crash handling. A record's payload
//! is the entry:
//!
//! ```text
//! term u64 | kind u8 (0 normal, 1 configuration change, 2 configuration change v2) | data
//! ```
//!
//! `raft.state` holds this node's identity and the hard state (term, vote, commit):
//!
//! ```text
//! magic "FLNTRAFT" | version u32 = 2 | term u64 | vote u64 | commit u64 | n u32 | founder u64 × n
//!   | raft id u64 | incarnation u64 | crc32c u32
//! ```
//!
//! The founders are the voters the group was created with (none for a node that
//! joined it later: its first snapshot brings the configuration); the incarnation is
//! a random number drawn when the directory was created, which the node's messages
//! carry, so that its peers can tell it from a node that lost its directory and came
//! back under the same id. Version 1 had neither id nor incarnation (read as 0: the
//! next write records them).
//!
//! It is written crash-safely (temp file, fsync, rename, directory fsync) when the
//! term or vote changed, by [`RaftLog::sync`], which first syncs the log: so the
//! commit index it records never passes the durable log. Its presence marks the
//! directory as a Raft log; a directory with segments and no `raft.state` holds a
//! single node's log and is refused.
//!
//! Architecture Invariant: an entry, a term or a vote is reported durable (the
//! driver's `Peer::persisted`) only after [`RaftLog::sync`] returned: the messages
//! that depend on it leave only then. A conflicting suffix is removed durably before
//! any entry replaces it ([`Log::truncate`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

mod entry;
pub mod image;
mod install;
mod state;
mod syncer;

pub use entry::{decode_entry, encode_entry};
use install::redo_install;
pub use syncer::{SyncJob, Syncer};

use crate::consensus::LogStore;
use crate::core::layout::{RAFT_INSTALL, RAFT_STATE};
use crate::core::position::{Offset, RaftIndex};
use crate::core::recovery::classify;
use crate::error::{Error, Result};
use crate::fs::{FileSystem, create_durably, join, sync_failed};
use crate::wal::{Log, LogOptions, RecoverLog};
pub use state::{
    Identity, decode_state, encode_state, mark_install, new_incarnation, read_group, read_identity,
    read_raft_state, write_group,
};
use state::{decode_install, encode_install, read_state, write_state};

/// Entries kept in memory after they are written, for the appends a leader sends.
const TAIL_CACHED: usize = 4096;

/// What compacting the Raft log deletes, and where its live part then starts.
#[derive(Debug, Clone)]
pub struct CompactionPlan {
    /// Sealed segments wholly below the new start, as `(start offset, file name)`.
    pub segments: Vec<(Offset, String)>,
    /// Where the live log starts, and in which file.
    pub start: (crate::wal::meta::SkipTo, String),
}

/// Raft's log over the node's segments. See the module documentation.
pub struct RaftLog {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    options: LogOptions,
    log: RefCell<Log>,
    who: Identity,
    /// The configuration to start from (the founders', or a snapshot's), then the
    /// one applied last, and the index of the change that made it (0: none).
    conf: ConfState,
    conf_index: u64,
    /// Runs of equal terms: `(first index, term)`, in index order, from the run that
    /// holds `first - 1`.
    terms: Vec<(u64, u64)>,
    /// The first index entries can be read from. Compaction keeps the entry before it
    /// (the first live record) for its term, which Raft asks of `first - 1`.
    first: u64,
    /// The commit index is at least this (a snapshot's index): `raft.state` records
    /// the commit index only when the term or vote changes, so it may lag.
    commit_floor: u64,
    /// When the last "a follower needs a snapshot" warning was logged.
    warned: std::cell::Cell<Option<std::time::Instant>>,
    /// The snapshot offered to followers that need one, with its configuration.
    offered: Option<(image::ChainId, ConfState)>,
    last: u64,
    hard_state: HardState,
    /// The hard state last handed to a sync (in `raft.state` once that returned).
    durable_state: HardState,
    /// Segments written since the last sync job.
    written: std::collections::BTreeSet<String>,
    /// Writes (appends, truncations) so far.
    writes: u64,
    tail: VecDeque<Entry>,
}

impl RaftLog {
    /// Opens (or creates) the Raft log of node `id` in `options.dir`, which exists
    /// and which the caller has locked: a founder of a group of `founders`, or (with
    /// none) a node that joins a group. Leftover temp files are removed; the log is
    /// recovered as a single node's is (a torn tail cut).
    ///
    /// # Errors
    /// [`Error::Open`] when the directory holds a single node's log, belonged to
    /// another node or group, or is damaged.
    pub fn open(
        fs: Arc<dyn FileSystem>,
        options: &LogOptions,
        id: u64,
        founders: &[u64],
    ) -> Result<RaftLog> {
        let dir = options.dir.clone();
        let names = fs
            .list(&dir)
            .map_err(|e| Error::open_io(format!("cannot list {}", dir.display()), &e))?;
        let mut listing = classify(names);
        for name in &listing.temps {
            fs.remove(&join(&dir, name))
                .map_err(|e| Error::open_io(format!("cannot remove {name}"), &e))?;
        }
        if !listing.temps.is_empty() {
            fs.sync_dir(&dir)
                .map_err(|e| Error::open_io(dir.display(), &e))?;
        }
        let installed = listing.raft_install;
        if listing.raft_install {
            let path = join(&dir, RAFT_INSTALL);
            let bytes = fs
                .open(&path, false)
                .and_then(|f| {
                    let mut b = vec![0u8; f.len()?.min(64) as usize];
                    f.read_exact_at(&mut b, 0)?;
                    Ok(b)
                })
                .map_err(|e| Error::open_io(path.display(), &e))?;
            // The marker is written whole before anything else changes: a damaged one
            // is one whose creation was cut short, and nothing was replaced yet.
            match decode_install(&bytes) {
                Ok((index, term)) => {
                    log::warn!(
                        "{}: finishing the install of the snapshot at index {index}, \
                         interrupted",
                        dir.display()
                    );
                    drop(
                        redo_install(&fs, options, index, term)
                            .map_err(|e| Error::open_io("finishing a snapshot install", &e))?,
                    );
                    let names = fs.list(&dir).map_err(|e| {
                        Error::open_io(format!("cannot list {}", dir.display()), &e)
                    })?;
                    listing = classify(names);
                }
                Err(why) => {
                    return Err(Error::Open(format!(
                        "{} is damaged ({why}): it is created durably before the log is \
                         replaced, so this should not happen; move it aside to start",
                        path.display()
                    )));
                }
            }
        }
        let (who, hs) = match read_state(&*fs, &dir)? {
            Some((was, _)) if was.founders != founders => {
                let joined = |f: &[u64]| match f {
                    [] => "joined a group".to_string(),
                    f => format!("founded a group of {} voters ({f:?})", f.len()),
                };
                return Err(Error::Open(format!(
                    "{} {}; this node {}: start it as it was started first, or on a new \
                     directory",
                    dir.display(),
                    joined(&was.founders),
                    joined(founders),
                )));
            }
            Some((was, _)) if was.id != 0 && was.id != id => {
                return Err(Error::Open(format!(
                    "{} belongs to Raft member {}, not {id}",
                    dir.display(),
                    was.id
                )));
            }
            Some((was, hs)) if was.id == 0 => {
                // Written before the identity was recorded: the next write records it.
                let who = Identity {
                    id,
                    founders: founders.to_vec(),
                    incarnation: new_incarnation(),
                };
                write_state(&*fs, &dir, &who, &hs)
                    .map_err(|e| Error::open_io(format!("updating {RAFT_STATE}"), &e))?;
                drop(was);
                (who, hs)
            }
            Some(found) => found,
            // (A new member that fetched a snapshot itself has a log, just installed,
            // and no state yet.)
            None if installed && !founders.is_empty() => {
                return Err(Error::Open(format!(
                    "{} holds a group's snapshot restored for a new member: add the node with \
                     member_add and start it with join",
                    dir.display()
                )));
            }
            None if !(listing.segments.is_empty() && listing.snapshots.is_empty()
                || installed && founders.is_empty()) =>
            {
                return Err(Error::Open(format!(
                    "{} holds a single node's log, not a Raft log: start a cluster node on a \
                     new directory (the single node's entries are not part of any group)",
                    dir.display()
                )));
            }
            None => {
                let hs = HardState::default();
                let who = Identity {
                    id,
                    founders: founders.to_vec(),
                    incarnation: new_incarnation(),
                };
                write_state(&*fs, &dir, &who, &hs)
                    .map_err(|e| Error::open_io(format!("creating {RAFT_STATE}"), &e))?;
                (who, hs)
            }
        };
        let start = crate::wal::meta::read(&*fs, &dir)?;
        let mut terms: Vec<(u64, u64)> = Vec::new();
        let mut bad: Option<String> = None;
        let (log, report) = Log::recover(
            fs.clone(),
            RecoverLog {
                options,
                segments: listing.segments.clone(),
                start,
                replay_from: start.first_offset,
            },
            &mut |offset, payload| match decode_entry(offset + 1, payload) {
                Ok(e) => {
                    if terms.last().is_none_or(|&(_, t)| t != e.term) {
                        terms.push((e.index, e.term));
                    }
                }
                Err(why) => {
                    bad.get_or_insert(why);
                }
            },
        )?;
        if let Some(why) = bad {
            return Err(Error::Open(format!("{}: {why}", dir.display())));
        }
        let last = log.next_offset().get();
        // Compacted to offset `f` (> 0): the record there, index `f + 1`, is kept for
        // its term; entries are read from `f + 2`.
        let first = match log.first_offset().get() {
            0 => 1,
            f if f < last => f + 2,
            f => {
                return Err(Error::Open(format!(
                    "{}: the Raft log was compacted to offset {f}, past its end ({last})",
                    dir.display()
                )));
            }
        };
        if hs.commit > last {
            return Err(Error::Open(format!(
                "{}: {RAFT_STATE} says entries up to {} are committed, but the log ends at {last}",
                dir.display(),
                hs.commit
            )));
        }
        if report.bytes_truncated > 0 {
            log::warn!(
                "{}: {} bytes of torn tail cut from the Raft log",
                dir.display(),
                report.bytes_truncated
            );
        }
        Ok(RaftLog {
            fs,
            dir,
            options: options.clone(),
            log: RefCell::new(log),
            conf: ConfState::from((who.founders.clone(), vec![])),
            conf_index: 0,
            who,
            terms,
            first,
            commit_floor: 0,
            warned: std::cell::Cell::new(None),
            offered: None,
            last,
            durable_state: hs.clone(),
            hard_state: hs,
            written: std::collections::BTreeSet::new(),
            writes: 0,
            tail: VecDeque::new(),
        })
    }

    /// Makes everything written durable, on this thread: the log (fdatasync), then
    /// `raft.state` if the term or vote changed.
    ///
    /// # Errors
    /// The I/O error; fail-stop for the caller.
    pub fn sync(&mut self) -> io::Result<()> {
        let job = self.take_sync_job();
        let log = self.log.get_mut();
        if log.has_unsynced() {
            log.sync().map_err(sync_failed)?;
        }
        if let Some(hs) = &job.state {
            write_state(&*self.fs, &self.dir, &self.who, hs)?;
        }
        Ok(())
    }

    /// What makes everything written so far durable, for a [`Syncer`] on another
    /// thread: the segments written since the last job, and the hard state if its
    /// term or vote changed since the last job. The log itself keeps counting its
    /// writes as unsynced (so that it never claims an after-sync write it cannot
    /// prove).
    pub fn take_sync_job(&mut self) -> SyncJob {
        let hs = &self.hard_state;
        let state = (hs.term != self.durable_state.term || hs.vote != self.durable_state.vote)
            .then(|| hs.clone());
        if let Some(hs) = &state {
            self.durable_state = hs.clone();
        }
        SyncJob {
            writes: self.writes,
            segments: std::mem::take(&mut self.written),
            state,
        }
    }

    /// Notes that a job taken after `writes` writes is durable: if nothing was written
    /// since, the log knows it is synced (its next write carries the after-sync flag,
    /// and `wal_info.fsynced` is true).
    pub fn synced_through(&mut self, writes: u64) {
        if writes == self.writes {
            self.log.get_mut().mark_synced();
        }
    }

    /// The hard state as written (durable after [`RaftLog::sync`]).
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Disk space of the log's segments.
    pub fn total_bytes(&self) -> u64 {
        self.log.borrow().total_bytes()
    }

    /// The count of the log's syncs, shared: it paces the snapshots written meanwhile.
    pub fn sync_count(&self) -> crate::wal::SyncCount {
        self.log.borrow().sync_count()
    }

    /// Whether every write so far is durable.
    pub fn synced(&self) -> bool {
        !self.log.borrow().has_unsynced()
    }

    /// The last index (0: empty).
    pub fn last_index(&self) -> u64 {
        self.last
    }

    /// The first index entries can be read from (1 until compacted).
    pub fn first_index(&self) -> u64 {
        self.first
    }

    /// The log's segments (offsets are log positions: Raft index minus one).
    pub fn segments(&self) -> crate::types::SegmentList {
        let log = self.log.borrow();
        crate::types::SegmentList {
            segments: log.segment_infos(),
            active_segment: log.active_name().to_string(),
        }
    }

    /// Changes the segment size limit (from the next append on).
    pub fn set_segment_bytes_max(&mut self, bytes: u64) {
        self.log.get_mut().set_segment_bytes_max(bytes);
    }

    /// This node's identity.
    pub fn identity(&self) -> &Identity {
        &self.who
    }

    /// Starts from the configuration of a snapshot (loaded before raft-rs starts).
    pub fn start_configured(&mut self, voters: &[u64], learners: &[u64]) {
        self.conf = ConfState::from((voters.to_vec(), learners.to_vec()));
    }

    /// Stops offering snapshot `file` (it is no longer on disk); whether it was the
    /// one offered.
    pub fn withdraw(&mut self, file: &str) -> bool {
        let offered = self.offered.as_ref().is_some_and(|(o, _)| o.includes(file));
        if offered {
            self.offered = None;
        }
        offered
    }

    /// Makes `id` the snapshot offered to a follower that needs entries this log no
    /// longer holds (its file is durable in this directory), with the voters and
    /// learners of its configuration.
    pub fn offer(&mut self, id: image::ChainId, voters: &[u64], learners: &[u64]) {
        if self
            .offered
            .as_ref()
            .is_none_or(|(o, _)| o.index <= id.index)
        {
            self.offered = Some((id, ConfState::from((voters.to_vec(), learners.to_vec()))));
        }
    }

    /// Whether the snapshot offered (if any) predates the last membership change:
    /// a member added since needs a newer one, which names it.
    pub fn offer_stale(&self) -> bool {
        self.conf_index > 0
            && self
                .offered
                .as_ref()
                .is_none_or(|(o, _)| o.index < self.conf_index)
    }

    /// The cluster snapshots in the directory, as `(index, name)`.
    ///
    /// # Errors
    /// The directory cannot be listed.
    pub fn snapshots_on_disk(&self) -> Result<Vec<(u64, String)>> {
        let names = self
            .fs
            .list(&self.dir)
            .map_err(|e| Error::open_io(format!("cannot list {}", self.dir.display()), &e))?;
        Ok(classify(names).raft_snapshots)
    }

    /// Notes that the state machine starts from a snapshot at `index`: the entries up
    /// to it are committed, whatever the (lagging) commit index in `raft.state` says.
    pub fn start_from_snapshot(&mut self, index: u64) {
        assert!(
            index + 1 >= self.first && index <= self.last,
            "a snapshot at {index} does not meet the log [{}, {}]",
            self.first,
            self.last
        );
        self.commit_floor = index;
    }

    /// What compacting to offset `at` (the record kept for its term; entries readable
    /// from index `at + 2`) may delete: the sealed segments wholly below it, and where
    /// the live log then starts.
    pub fn compaction_plan(&self, at: Offset) -> CompactionPlan {
        let log = self.log.borrow();
        CompactionPlan {
            segments: log.sealed_below(at),
            start: log.start_at(at),
        }
    }

    /// Stops reading below offset `at` (index `at + 1`, kept for its term): the
    /// compactor made `at` the log's durable start and is about to free what lies
    /// below.
    pub fn fence(&mut self, at: Offset) {
        let first = at.get() + 2;
        if first <= self.first {
            return;
        }
        assert!(first <= self.last + 1, "fencing past the end of the log");
        self.first = first;
        let keep_from = self
            .terms
            .partition_point(|&(f, _)| f < first)
            .saturating_sub(1);
        self.terms.drain(..keep_from);
        while self.tail.front().is_some_and(|e| e.index < first) {
            self.tail.pop_front();
        }
    }

    /// Replaces the whole log by the start of one that continues from a snapshot at
    /// `index` (term `term`), which the caller made durable in this directory first:
    /// `raft.install` is written durably, then the segments are replaced (see
    /// `redo_install`), then the marker removed. Entries are read from `index + 1`.
    ///
    /// # Errors
    /// The I/O error: fail-stop for the caller (recovery finishes the install).
    pub fn install(&mut self, index: u64, term: u64) -> io::Result<()> {
        assert!(index >= 1, "a snapshot at index 0");
        let bytes = encode_install(index, term);
        create_durably(&*self.fs, &self.dir, RAFT_INSTALL, |f| {
            f.write_all_at(&bytes, 0)
        })?;
        self.log.get_mut().retire_spare();
        let log = redo_install(&self.fs, &self.options, index, term)?;
        *self.log.get_mut() = log;
        self.first = index + 1;
        self.last = index;
        self.terms = vec![(index, term)];
        self.tail.clear();
        self.written.clear();
        self.writes += 1;
        self.commit_floor = self.commit_floor.max(index);
        Ok(())
    }

    /// Takes in what the compactor did (see [`Log::compacted`]) and fences reads below
    /// the new start.
    pub fn compacted(
        &mut self,
        first_offset: Offset,
        removed: &[Offset],
        resized: Option<(Offset, u64)>,
    ) {
        self.fence(first_offset);
        self.log.get_mut().compacted(first_offset, removed, resized);
    }

    fn term_of(&self, index: u64) -> u64 {
        let run = self.terms.partition_point(|&(first, _)| first <= index);
        self.terms[run - 1].1
    }

    fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        let log = self.log.get_mut();
        let payloads: Vec<Vec<u8>> = entries.iter().map(encode_entry).collect();
        let mut from = 0;
        while from < payloads.len() {
            let mut to = from;
            let mut bytes = 0;
            while to < payloads.len() && log.fits(to - from, bytes, payloads[to].len()) {
                bytes += crate::wal::record::record_bytes(payloads[to].len());
                to += 1;
            }
            if to == from {
                log.roll().map_err(|e| match e {
                    crate::wal::RollError::Sync(e) => sync_failed(e),
                    crate::wal::RollError::Create(e) => e,
                })?;
                continue;
            }
            log.append(payloads[from..to].iter().map(Vec::as_slice))?;
            self.written.insert(log.active_name().to_string());
            self.writes += 1;
            from = to;
        }
        Ok(())
    }
}

impl LogStore for RaftLog {
    fn write_entries(&mut self, entries: &[Entry]) -> io::Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        assert!(
            first.index >= 1 && first.index <= self.last + 1,
            "entries from {} leave a gap after {}",
            first.index,
            self.last
        );
        if first.index <= self.last {
            self.writes += 1;
            self.log
                .get_mut()
                .truncate(RaftIndex::new(first.index).position())?;
            self.last = first.index - 1;
            let keep = self.terms.partition_point(|&(f, _)| f <= self.last);
            self.terms.truncate(keep);
            self.tail.retain(|e| e.index < first.index);
        }
        self.append(entries)?;
        for e in entries {
            if self.terms.last().is_none_or(|&(_, t)| t != e.term) {
                self.terms.push((e.index, e.term));
            }
            self.tail.push_back(e.clone());
        }
        while self.tail.len() > TAIL_CACHED {
            self.tail.pop_front();
        }
        self.last = entries.last().expect("non-empty").index;
        Ok(())
    }

    fn write_hard_state(&mut self, hs: &HardState) -> io::Result<()> {
        self.hard_state = hs.clone();
        Ok(())
    }

    fn install(&mut self, index: u64, term: u64) -> io::Result<()> {
        RaftLog::install(self, index, term)
    }

    fn configured(&mut self, cs: &ConfState, index: u64) {
        self.conf = cs.clone();
        self.conf_index = self.conf_index.max(index);
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(self.commit_floor).max(self.first - 1);
        Ok(RaftState::new(hs, self.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= self.last + 1,
            "entries up to {high} asked, last {}",
            self.last
        );
        let max_size = max_size.into();
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut bytes = 0u64;
        let cached_from = self.tail.front().map_or(u64::MAX, |e| e.index);
        for index in low..high {
            let e = if index >= cached_from {
                self.tail[(index - cached_from) as usize].clone()
            } else {
                let read = self
                    .log
                    .borrow_mut()
                    .read(RaftIndex::new(index).position())
                    .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
                if !read.checksum_valid {
                    return Err(raft::Error::Store(StorageError::Other(
                        format!("entry {index} does not verify").into(),
                    )));
                }
                decode_entry(index, &read.payload)
                    .map_err(|why| raft::Error::Store(StorageError::Other(why.into())))?
            };
            bytes += (e.data.len() + 16) as u64;
            if !out.is_empty() && max_size.is_some_and(|m| bytes > m) {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == 0 {
            return Ok(0);
        }
        if idx + 1 < self.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.term_of(idx))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last)
    }

    fn snapshot(&self, _request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // The offer carries the snapshot's identity; the follower fetches the file in
        // chunks before raft-rs sees the offer (see `cluster::transfer`).
        // A snapshot older than the last membership change would not name a member
        // added since (raft-rs would not install it there): the driver cuts a newer one.
        if let Some((id, conf)) = self
            .offered
            .as_ref()
            .filter(|(o, _)| o.index >= self.conf_index)
        {
            let mut s = Snapshot {
                data: id.encode().into(),
                ..Snapshot::default()
            };
            let meta = s.mut_metadata();
            meta.index = id.index;
            meta.term = id.term;
            meta.set_conf_state(conf.clone());
            return Ok(s);
        }
        let now = std::time::Instant::now();
        if self
            .warned
            .get()
            .is_none_or(|at| now.duration_since(at) >= std::time::Duration::from_secs(10))
        {
            self.warned.set(Some(now));
            log::warn!(
                "node {to} needs entries before index {}, which this node compacted, and \
                 this node has no snapshot to offer it yet",
                self.first
            );
        }
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

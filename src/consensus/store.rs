//! Raft's storage as the consensus core sees it: readable at once, durable only when
//! the driver says so.
//!
//! [`LogStore`] is what the core writes through: entries (a conflicting suffix is
//! truncated first) and the hard state. What was written is readable before it is
//! durable (`raft::Storage` must return the unsynced tail); durability is reported to
//! the core separately, by Ready number ([`super::Peer::persisted`]).
//!
//! [`MemLog`] keeps everything in memory: the simulation's storage, whose durable copy
//! the simulation keeps beside it and replays into a new `MemLog` after a crash.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

/// Storage the consensus core can write to.
pub trait LogStore: raft::Storage {
    /// Writes `entries` (consecutive), first truncating every entry at or after the
    /// first one's index. Readable at once; durable when the driver says so.
    ///
    /// # Errors
    /// The I/O error: fail-stop for the caller.
    fn write_entries(&mut self, entries: &[Entry]) -> std::io::Result<()>;
    /// Writes the hard state (term, vote, commit).
    ///
    /// # Errors
    /// The I/O error: fail-stop for the caller.
    fn write_hard_state(&mut self, hs: &HardState) -> std::io::Result<()>;
    /// Replaces the whole log by an empty one that continues from a snapshot at
    /// `index` of term `term` (entries from `index + 1`). Durable when it returns.
    ///
    /// # Errors
    /// The I/O error: fail-stop for the caller.
    fn install(&mut self, index: u64, term: u64) -> std::io::Result<()>;
    /// Notes the configuration a change at `index` made (applied; the log holds the
    /// change, so nothing needs to become durable).
    fn configured(&mut self, cs: &ConfState, index: u64);
}

/// An in-memory Raft log.
#[derive(Debug, Clone, Default)]
pub struct MemLog {
    hard_state: HardState,
    conf_state: ConfState,
    /// The index and term before the first entry (a snapshot's; 0 and 0 at first).
    base: (u64, u64),
    /// Entries from index `base.0 + 1`.
    entries: Vec<Entry>,
    /// What it offers a follower that asks for a snapshot.
    offered: Option<Snapshot>,
}

impl MemLog {
    /// A fresh log of a group whose voters are `voters`.
    pub fn new(voters: &[u64]) -> MemLog {
        MemLog {
            conf_state: ConfState::from((voters.to_vec(), vec![])),
            ..MemLog::default()
        }
    }

    /// Offers a follower that asks for a snapshot one at `index` (term `term`) of the
    /// configuration `conf` (its data empty).
    pub fn offer(&mut self, index: u64, term: u64, conf: ConfState) {
        let mut s = Snapshot::default();
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        s.mut_metadata().set_conf_state(conf);
        self.offered = Some(s);
    }

    /// The hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Every entry, from index `first_index()`.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    fn last(&self) -> u64 {
        self.base.0 + self.entries.len() as u64
    }
}

impl LogStore for MemLog {
    fn write_entries(&mut self, entries: &[Entry]) -> std::io::Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        assert!(
            first.index > self.base.0 && first.index <= self.last() + 1,
            "entries from {} leave a gap after {}",
            first.index,
            self.last()
        );
        self.entries
            .truncate((first.index - self.base.0 - 1) as usize);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    fn write_hard_state(&mut self, hs: &HardState) -> std::io::Result<()> {
        self.hard_state = hs.clone();
        Ok(())
    }

    fn install(&mut self, index: u64, term: u64) -> std::io::Result<()> {
        self.base = (index, term);
        self.entries.clear();
        self.hard_state.commit = self.hard_state.commit.max(index);
        Ok(())
    }

    fn configured(&mut self, cs: &ConfState, _index: u64) {
        self.conf_state = cs.clone();
    }
}

impl raft::Storage for MemLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.base.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= self.last() + 1,
            "entries up to {high} asked, last {}",
            self.last()
        );
        let b = self.base.0 + 1;
        let mut out = self.entries[(low - b) as usize..(high - b) as usize].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.base.0 {
            return Ok(self.base.1);
        }
        if idx < self.base.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.entries.get((idx - self.base.0 - 1) as usize) {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.base.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Nothing is compacted, so no follower needs one but one that asks for it.
        self.offered.clone().ok_or(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    #[test]
    fn a_conflicting_suffix_is_replaced() {
        let mut log = MemLog::new(&[1, 2, 3]);
        log.write_entries(&[entry(1, 1), entry(2, 1), entry(3, 1)])
            .unwrap();
        log.write_entries(&[entry(2, 2)]).unwrap();
        assert_eq!(log.last_index().unwrap(), 2);
        assert_eq!(log.term(2).unwrap(), 2);
        assert_eq!(log.term(0).unwrap(), 0);
        assert!(log.term(3).is_err());
        let got =
            raft::Storage::entries(&log, 1, 3, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.iter().map(|e| e.term).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(log.initial_state().unwrap().conf_state.voters, [1, 2, 3]);
    }
}

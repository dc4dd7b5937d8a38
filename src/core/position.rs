//! Typed positions in the log.
//!
//! An [`Offset`] counts client-visible entries from 0: the first entry appended is at
//! offset 0, and `next_offset` is the number of entries ever appended. It is kept
//! apart from plain integers (counts, bytes) and from the Raft `Index`/`Term` a
//! replicated log brings (from 1), so that mixing them is a type error instead of an
//! off-by-one. Conversions: [`Offset::from_disk`] / [`Offset::on_disk`] in the file
//! codecs, [`Offset::from_wire`] / [`Offset::on_wire`] in the protocol layer, and
//! [`Offset::new`] / [`Offset::get`] for everything else (counts, tests).
//!
//! A [`RaftIndex`] is a position in a replicated log, from 1, as raft-rs counts. The
//! Raft log keeps index `i` at the segment log's position `i - 1`: the one conversion,
//! [`RaftIndex::position`] and [`RaftIndex::at_position`], is named, never written as
//! arithmetic. (A cluster's client offsets are a third count, kept by its state
//! machine, which maps each to the index that holds it.)

use std::fmt;

/// A client-visible position in the log, from 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(u64);

impl Offset {
    /// The first offset of every log.
    pub const ZERO: Offset = Offset(0);

    /// The offset `n`.
    pub const fn new(n: u64) -> Offset {
        Offset(n)
    }

    /// Its number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The offset as a record, segment header, snapshot header or `log.meta` stores it.
    pub const fn on_disk(self) -> u64 {
        self.0
    }

    /// The offset a file stores.
    pub const fn from_disk(n: u64) -> Offset {
        Offset(n)
    }

    /// The offset as the protocol writes it.
    pub const fn on_wire(self) -> u64 {
        self.0
    }

    /// The offset a request gives.
    pub const fn from_wire(n: u64) -> Offset {
        Offset(n)
    }

    /// The offset `n` entries further on.
    pub const fn plus(self, n: u64) -> Offset {
        Offset(self.0 + n)
    }

    /// The next offset.
    pub const fn next(self) -> Offset {
        self.plus(1)
    }

    /// The offset `n` entries back, stopping at 0.
    pub const fn saturating_minus(self, n: u64) -> Offset {
        Offset(self.0.saturating_sub(n))
    }

    /// Entries from `earlier` up to (not including) `self`; 0 if `earlier` is later.
    pub const fn since(self, earlier: Offset) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The offset before this one, if any.
    pub const fn previous(self) -> Option<Offset> {
        match self.0.checked_sub(1) {
            Some(n) => Some(Offset(n)),
            None => None,
        }
    }
}

/// A Raft log index, from 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RaftIndex(u64);

impl RaftIndex {
    /// The index `i`.
    pub const fn new(i: u64) -> RaftIndex {
        RaftIndex(i)
    }

    /// Its number, as raft-rs takes it.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Where the segment log keeps the entry at this index: position `index - 1`.
    ///
    /// # Panics
    /// On index 0, which holds no entry.
    pub fn position(self) -> Offset {
        assert!(self.0 > 0, "Raft index 0 holds no entry");
        Offset(self.0 - 1)
    }

    /// The index of the entry the segment log keeps at `position`.
    pub const fn at_position(position: Offset) -> RaftIndex {
        RaftIndex(position.0 + 1)
    }

    /// The index before this one (0 stays 0).
    pub const fn prev(self) -> RaftIndex {
        RaftIndex(self.0.saturating_sub(1))
    }
}

impl fmt::Display for RaftIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Comparing with a plain number is harmless (and keeps assertions short); arithmetic
/// is not, so there is none.
impl PartialEq<u64> for Offset {
    fn eq(&self, other: &u64) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raft_index_sits_one_before_its_number_in_the_segment_log() {
        assert_eq!(RaftIndex::new(1).position(), Offset::ZERO);
        assert_eq!(RaftIndex::new(42).position(), Offset::new(41));
        assert_eq!(RaftIndex::at_position(Offset::new(41)), RaftIndex::new(42));
        assert_eq!(RaftIndex::new(42).prev(), RaftIndex::new(41));
        assert!(std::panic::catch_unwind(|| RaftIndex::new(0).position()).is_err());
    }

    #[test]
    fn offsets_count_and_compare() {
        let o = Offset::new(5);
        assert_eq!(o.next(), 6);
        assert_eq!(o.plus(10).since(o), 10);
        assert_eq!(o.since(o.plus(1)), 0);
        assert_eq!(Offset::ZERO.previous(), None);
        assert_eq!(o.previous(), Some(Offset::new(4)));
        assert_eq!(o.saturating_minus(9), Offset::ZERO);
        assert_eq!(o.to_string(), "5");
        assert!(Offset::new(3) < o);
    }
}

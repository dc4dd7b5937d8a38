//! Typed positions in the log.
//!
//! An [`Offset`] counts client-visible entries from 0: the first entry appended is at
//! offset 0, and `next_offset` is the number of entries ever appended. It is kept
//! apart from plain integers (counts, bytes) and from the Raft `Index`/`Term` a
//! replicated log brings (from 1), so that mixing them is a type error instead of an
//! off-by-one. Conversions: [`Offset::from_disk`] / [`Offset::on_disk`] in the file
//! codecs, [`Offset::from_wire`] / [`Offset::on_wire`] in the protocol layer, and
//! [`Offset::new`] / [`Offset::get`] for everything else (counts, tests).

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

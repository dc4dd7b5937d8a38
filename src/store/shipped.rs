//! The shipped log: a node's durable entries copied to the store beside its chains, so
//! that a restore reaches past the newest chain, to the last entry shipped or to any
//! point between.
//!
//! ```text
//! <node>/log/<history>/<first offset, 20 digits>-<last offset, 20 digits>-<written, ms since the epoch, 13 digits>.log
//!
//! object: magic "FLNTSHIP" | version u32 | count u32 | first u64 | last u64 | written_ms u64 | crc32c u32 | pad u32   (48 bytes)
//!         then `count` records for offsets first..=last, in the log's own framing (see `wal::record`)
//! ```
//!
//! An object is immutable and holds consecutive entries; its header's checksum covers
//! the fields before it, and every record carries its own checksum over its offset and
//! payload, so a restore verifies each entry and notices one missing, one out of place,
//! or an object cut short. The name carries the range and the time the object was
//! written, so that a listing alone says what a restore can reach and when.
//!
//! A history (16 hexadecimal digits, see `actor::shipper`) is one data directory's
//! line of entries: a directory restored to an earlier point ships under a new one, so
//! that entries of two lines that share offsets never mix. A chain's manifest names its
//! history, and a restore follows only that history's objects.
//!
//! Retention keeps the log from the oldest chain the store keeps on: an object whose
//! last entry is below that chain's index is deleted with the chains retention drops.

use super::{Listed, Manifest, SnapshotStore, StoreError};
use crate::wal::record;

/// Bytes of an object's header.
pub const HEADER_BYTES: usize = 48;
const MAGIC: &[u8; 8] = b"FLNTSHIP";
const VERSION: u32 = 1;

/// Entries' payload bytes an object holds at most (the shipper starts another beyond).
pub const OBJECT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A shipped object, as a listing names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippedRange {
    /// Its name in the store.
    pub object: String,
    /// The history it belongs to.
    pub history: String,
    /// Its first and last entry's offsets.
    pub first: u64,
    pub last: u64,
    /// When it was written, in milliseconds since the Unix epoch.
    pub written_ms: u64,
    /// Its size in the store.
    pub size: u64,
}

/// The prefix of `node`'s shipped objects.
pub fn prefix(node: &str) -> String {
    format!("{node}/log/")
}

/// The prefix of `node`'s shipped objects of one history.
pub fn history_prefix(node: &str, history: &str) -> String {
    format!("{node}/log/{history}/")
}

/// The name of `node`'s object of `history` holding entries `first..=last`, written at
/// `written_ms`.
pub fn object_name(node: &str, history: &str, first: u64, last: u64, written_ms: u64) -> String {
    format!("{node}/log/{history}/{first:020}-{last:020}-{written_ms:013}.log")
}

/// Whether `id` is a history id: 16 hexadecimal digits.
pub fn is_history(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The range an object's name says it holds; `None` if it is not a shipped object's
/// name.
pub fn parse(listed: &Listed) -> Option<ShippedRange> {
    let (_, rest) = listed.name.rsplit_once("/log/")?;
    let (history, base) = rest.split_once('/')?;
    if !is_history(history) {
        return None;
    }
    let stem = base.strip_suffix(".log")?;
    let mut parts = stem.split('-');
    let (first, last, written) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || first.len() != 20 || last.len() != 20 {
        return None;
    }
    let (first, last) = (first.parse().ok()?, last.parse().ok()?);
    (first <= last).then_some(ShippedRange {
        object: listed.name.clone(),
        history: history.to_string(),
        first,
        last,
        written_ms: written.parse().ok()?,
        size: listed.size,
    })
}

/// `node`'s shipped objects of every history, by history, then first offset.
///
/// # Errors
/// The store could not be listed.
pub fn list(store: &dyn SnapshotStore, node: &str) -> Result<Vec<ShippedRange>, StoreError> {
    let mut found: Vec<ShippedRange> = store
        .list(&prefix(node))?
        .iter()
        .filter_map(parse)
        .collect();
    found.sort_by(|a, b| {
        (&a.history, a.first, std::cmp::Reverse(a.last), a.written_ms).cmp(&(
            &b.history,
            b.first,
            std::cmp::Reverse(b.last),
            b.written_ms,
        ))
    });
    Ok(found)
}

/// Where each history shipped from the very first entry begins: a restore may start
/// there, from the empty state, before any chain of it reached the store. Each as a
/// manifest at index 0 that lists no file.
pub fn origins(node: &str, logs: &[ShippedRange]) -> Vec<Manifest> {
    let mut out: Vec<Manifest> = Vec::new();
    for o in logs.iter().filter(|o| o.first == 0) {
        if out.iter().any(|m| m.history.as_ref() == Some(&o.history)) {
            continue;
        }
        out.push(Manifest {
            node: node.to_string(),
            cluster: vec![],
            index: 0,
            term: 0,
            voters: vec![],
            learners: vec![],
            created_ms: o.written_ms,
            files: vec![],
            history: Some(o.history.clone()),
        });
    }
    out
}

/// Builds one object from consecutive entries.
#[derive(Debug)]
pub struct ObjectBuilder {
    bytes: Vec<u8>,
    first: u64,
    count: u64,
    payload: usize,
}

impl ObjectBuilder {
    /// An object whose first entry is at `first`.
    pub fn new(first: u64) -> ObjectBuilder {
        ObjectBuilder {
            bytes: vec![0; HEADER_BYTES],
            first,
            count: 0,
            payload: 0,
        }
    }

    /// Adds the entry at `offset`, which must follow the last one added.
    pub fn push(&mut self, offset: u64, payload: &[u8]) {
        assert_eq!(offset, self.first + self.count, "entries out of order");
        record::encode(&mut self.bytes, offset, payload);
        self.count += 1;
        self.payload += payload.len();
    }

    /// Entries added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Payload bytes added.
    pub fn payload_bytes(&self) -> usize {
        self.payload
    }

    /// The object's name and bytes, of `node`'s `history`, written at `written_ms`;
    /// `None` if it is empty.
    pub fn finish(
        mut self,
        node: &str,
        history: &str,
        written_ms: u64,
    ) -> Option<(ShippedRange, Vec<u8>)> {
        if self.count == 0 {
            return None;
        }
        let last = self.first + self.count - 1;
        let count = u32::try_from(self.count).expect("fewer than 2^32 entries in an object");
        let h = &mut self.bytes[..HEADER_BYTES];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&count.to_le_bytes());
        h[16..24].copy_from_slice(&self.first.to_le_bytes());
        h[24..32].copy_from_slice(&last.to_le_bytes());
        h[32..40].copy_from_slice(&written_ms.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..40]);
        h[40..44].copy_from_slice(&crc.to_le_bytes());
        let range = ShippedRange {
            object: object_name(node, history, self.first, last, written_ms),
            history: history.to_string(),
            first: self.first,
            last,
            written_ms,
            size: self.bytes.len() as u64,
        };
        Some((range, self.bytes))
    }
}

/// A shipped object's entries, verified.
#[derive(Debug)]
pub struct Shipped<'b> {
    /// Its first entry's offset.
    pub first: u64,
    /// When it was written.
    pub written_ms: u64,
    /// The object's bytes.
    bytes: &'b [u8],
    /// Where each entry's record starts in them, in offset order, then where the last
    /// one ends.
    starts: Vec<usize>,
}

impl<'b> Shipped<'b> {
    /// Entries it holds.
    pub fn len(&self) -> u64 {
        self.starts.len() as u64 - 1
    }

    /// Whether it holds no entry (never, once decoded).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records of the entries at offsets in `[from, to)` (clamped to what it
    /// holds), back to back in the log's framing (what a segment holds), and how many.
    pub fn span(&self, from: u64, to: u64) -> (&'b [u8], u64) {
        let index = |o: u64| (o.clamp(self.first, self.first + self.len()) - self.first) as usize;
        let (a, b) = (index(from), index(to.max(from)));
        (&self.bytes[self.starts[a]..self.starts[b]], (b - a) as u64)
    }

    /// The record of the entry at `offset`.
    pub fn record(&self, offset: u64) -> Option<&'b [u8]> {
        let (r, n) = self.span(offset, offset + 1);
        (n == 1).then_some(r)
    }
}

/// Decodes and verifies an object that its name says holds `range`: the header, then
/// every record (its checksum, and the offset it must have), and that nothing follows
/// the last.
///
/// # Errors
/// What is wrong, naming the offset where it is.
pub fn decode<'b>(range: &ShippedRange, bytes: &'b [u8]) -> Result<Shipped<'b>, String> {
    let h = bytes
        .get(..HEADER_BYTES)
        .ok_or_else(|| format!("{} bytes, shorter than its header", bytes.len()))?;
    if &h[0..8] != MAGIC {
        return Err("not a shipped log object (bad magic)".into());
    }
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    if crc32c::crc32c(&h[0..40]) != u32_at(40) || u32_at(44) != 0 {
        return Err("its header's checksum does not match".into());
    }
    if u32_at(8) != VERSION {
        return Err(format!(
            "format version {}, this build reads {VERSION}",
            u32_at(8)
        ));
    }
    let (count, first, last, written_ms) =
        (u64::from(u32_at(12)), u64_at(16), u64_at(24), u64_at(32));
    if (first, last, written_ms) != (range.first, range.last, range.written_ms)
        || last + 1 - first != count
    {
        return Err(format!(
            "its header says {count} entries {first}..={last} written at {written_ms}, its name \
             {}..={} at {}",
            range.first, range.last, range.written_ms
        ));
    }
    let mut starts = Vec::with_capacity(count as usize + 1);
    let mut at = HEADER_BYTES;
    for offset in first..=last {
        match record::decode(&bytes[at..], offset) {
            Ok((_, n)) => {
                starts.push(at);
                at += n;
            }
            Err(e) => {
                return Err(format!(
                    "the entry at offset {offset} does not verify ({e:?})"
                ));
            }
        }
    }
    if at != bytes.len() {
        return Err(format!("{} bytes follow its last entry", bytes.len() - at));
    }
    starts.push(at);
    Ok(Shipped {
        first,
        written_ms,
        bytes,
        starts,
    })
}

/// Which of `objects` retention deletes when the oldest chain kept is at `oldest_kept`:
/// those wholly below it (`None`: no chain kept, nothing deleted).
pub fn retention(objects: &[ShippedRange], oldest_kept: Option<u64>) -> Vec<String> {
    let Some(from) = oldest_kept else {
        return Vec::new();
    };
    objects
        .iter()
        .filter(|o| o.last < from)
        .map(|o| o.object.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HISTORY: &str = "00c0ffee00c0ffee";

    fn object(first: u64, n: u64) -> (ShippedRange, Vec<u8>) {
        let mut b = ObjectBuilder::new(first);
        for o in first..first + n {
            b.push(o, format!("set k{o}=v{o}").as_bytes());
        }
        b.finish("n1", HISTORY, 1_700_000_000_123).unwrap()
    }

    #[test]
    fn an_object_round_trips_and_its_name_gives_its_range_and_time() {
        let (range, bytes) = object(40, 5);
        assert_eq!(
            range.object,
            "n1/log/00c0ffee00c0ffee/00000000000000000040-00000000000000000044-1700000000123.log"
        );
        let listed = Listed {
            name: range.object.clone(),
            size: bytes.len() as u64,
        };
        assert_eq!(parse(&listed), Some(range.clone()));
        let got = decode(&range, &bytes).unwrap();
        assert_eq!(got.len(), 5);
        for o in 40..45 {
            let rec = got.record(o).unwrap();
            let (payload, n) = record::decode(rec, o).unwrap();
            assert_eq!(
                (payload, n),
                (format!("set k{o}=v{o}").as_bytes(), rec.len())
            );
        }
        assert_eq!(got.record(45), None);
        assert_eq!(got.record(39), None);
        // Spans: whole records back to back, clamped to what the object holds.
        let (all, n) = got.span(0, 100);
        assert_eq!((all, n), (&bytes[HEADER_BYTES..], 5));
        let (mid, n) = got.span(41, 43);
        assert_eq!(n, 2);
        assert_eq!(
            mid.len(),
            got.record(41).unwrap().len() + got.record(42).unwrap().len()
        );
        assert_eq!(got.span(43, 41).1, 0);
        assert!(ObjectBuilder::new(3).finish("n1", HISTORY, 1).is_none());
        for bad in [
            "n1/log/00c0ffee00c0ffee/1-2-3.log",
            "n1/files/x.snap",
            "n1/log/00c0ffee00c0ffee/00000000000000000009-00000000000000000001-1.log",
            "n1/log/00000000000000000001-00000000000000000002-1.log",
            "n1/log/nothex/00000000000000000001-00000000000000000002-1.log",
        ] {
            let l = Listed {
                name: bad.into(),
                size: 1,
            };
            assert_eq!(parse(&l), None, "{bad}");
        }
    }

    #[test]
    fn every_damage_to_an_object_is_refused_naming_where() {
        let (range, bytes) = object(10, 4);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(
                decode(&range, &bad).is_err(),
                "byte {i} flipped went unnoticed"
            );
        }
        // Cut short by a whole record, and with bytes after the last.
        let (_, one_less) = object(10, 3);
        assert!(decode(&range, &bytes[..one_less.len()]).is_err());
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 16]);
        let err = decode(&range, &longer).unwrap_err();
        assert!(err.contains("follow its last entry"), "{err}");
        // The right bytes under another object's name.
        let mut other = range.clone();
        other.first = 11;
        assert!(decode(&other, &bytes).is_err());
    }

    #[test]
    fn retention_deletes_only_objects_wholly_below_the_oldest_chain_kept() {
        let r = |first, last| ShippedRange {
            object: format!("{first}-{last}"),
            history: HISTORY.into(),
            first,
            last,
            written_ms: 0,
            size: 1,
        };
        let all = vec![r(0, 99), r(100, 199), r(200, 299)];
        assert_eq!(retention(&all, None), Vec::<String>::new());
        assert_eq!(retention(&all, Some(150)), vec!["0-99".to_string()]);
        assert_eq!(
            retention(&all, Some(200)),
            vec!["0-99".to_string(), "100-199".to_string()]
        );
        assert_eq!(retention(&all, Some(0)), Vec::<String>::new());
    }
}

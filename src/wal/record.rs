//! Record framing: how one log entry is laid out on disk.
//!
//! ```text
//! +----------+----------+------------+-----------------+
//! | crc32c   | len      | offset     | payload         |
//! | u32 LE   | u32 LE   | u64 LE     | len bytes       |
//! +----------+----------+------------+-----------------+
//! ```
//!
//! The top bit of `len` is the **after-sync** flag ([`AFTER_SYNC`]): set on the first
//! record of a write made when everything before it in the segment was already synced.
//! Recovery uses it as proof: a valid flagged record after a bad one shows that the bad
//! one had been synced, so it was damaged after the fact, not torn by a crash.
//!
//! The checksum (CRC-32C) covers `len` (flag included), `offset` and the payload, so a record copied
//! to the wrong place, or a stale record from an older write, does not verify at the
//! position where another offset is expected. Segments are preallocated with zeros; a
//! header of sixteen zero bytes marks the end of the data (a real record never has an
//! all-zero header, since the checksum of its fields is never zero for an all-zero
//! header — asserted in a test).

/// Largest payload the on-disk record format accepts, whatever the configured limit.
/// The decoder refuses any length above it before allocating.
pub const RECORD_PAYLOAD_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Bytes of a record header.
pub const HEADER_BYTES: usize = 16;

/// The after-sync flag in the stored `len` field (see the module documentation).
/// Payload lengths are at most 256 MiB, so the bit is otherwise always clear.
pub const AFTER_SYNC: u32 = 1 << 31;

/// Total on-disk size of a record with a payload of `payload_len` bytes.
pub fn record_bytes(payload_len: usize) -> u64 {
    (HEADER_BYTES + payload_len) as u64
}

fn checksum(len: u32, offset: u64, payload: &[u8]) -> u32 {
    // The two fields in one call: the same CRC as over each in turn, with one call's
    // overhead fewer per record.
    let mut head = [0u8; 12];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4..].copy_from_slice(&offset.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&head), payload)
}

/// Appends the encoding of one record to `out`.
pub fn encode(out: &mut Vec<u8>, offset: u64, payload: &[u8]) {
    encode_flagged(out, offset, payload, false);
}

/// Appends the encoding of one record to `out`, with the after-sync flag when
/// `after_sync` is true.
pub fn encode_flagged(out: &mut Vec<u8>, offset: u64, payload: &[u8], after_sync: bool) {
    assert!(
        payload.len() as u64 <= RECORD_PAYLOAD_MAX_BYTES,
        "payload too large"
    );
    let len = payload.len() as u32 | if after_sync { AFTER_SYNC } else { 0 };
    out.extend_from_slice(&checksum(len, offset, payload).to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(payload);
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Stored checksum.
    pub crc: u32,
    /// Payload length (flag removed), already checked against
    /// [`RECORD_PAYLOAD_MAX_BYTES`].
    pub len: u32,
    /// The entry's offset.
    pub offset: u64,
    /// Whether the after-sync flag is set.
    pub after_sync: bool,
}

impl Header {
    /// The `len` field as stored (with the flag), which the checksum covers.
    fn stored_len(&self) -> u32 {
        self.len | if self.after_sync { AFTER_SYNC } else { 0 }
    }
}

/// What a header says before the payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderRead {
    /// Sixteen zero bytes: the end of the data.
    End,
    /// A plausible header.
    Header(Header),
    /// A length above the format's limit: not a record.
    BadLength(u64),
}

/// Decodes a header from exactly [`HEADER_BYTES`] bytes.
pub fn decode_header(bytes: &[u8; HEADER_BYTES]) -> HeaderRead {
    if bytes.iter().all(|&b| b == 0) {
        return HeaderRead::End;
    }
    let crc = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let stored = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    let offset = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    let len = stored & !AFTER_SYNC;
    if u64::from(len) > RECORD_PAYLOAD_MAX_BYTES {
        return HeaderRead::BadLength(u64::from(len));
    }
    HeaderRead::Header(Header {
        crc,
        len,
        offset,
        after_sync: stored & AFTER_SYNC != 0,
    })
}

/// Whether `payload` matches the checksum in `header`.
pub fn verify(header: &Header, payload: &[u8]) -> bool {
    payload.len() == header.len as usize
        && checksum(header.stored_len(), header.offset, payload) == header.crc
}

/// Decodes one record at the start of `buf`, expecting `offset`.
///
/// Returns the payload and the record's total length, or why no record is there.
pub fn decode(buf: &[u8], expected_offset: u64) -> Result<(&[u8], usize), Invalid> {
    let Some(head) = buf.get(..HEADER_BYTES) else {
        return Err(if buf.iter().all(|&b| b == 0) {
            Invalid::End
        } else {
            Invalid::Truncated
        });
    };
    let header = match decode_header(head.try_into().unwrap()) {
        HeaderRead::End => return Err(Invalid::End),
        HeaderRead::BadLength(_) => return Err(Invalid::Corrupt),
        HeaderRead::Header(h) => h,
    };
    let total = HEADER_BYTES + header.len as usize;
    let Some(payload) = buf.get(HEADER_BYTES..total) else {
        return Err(Invalid::Truncated);
    };
    if !verify(&header, payload) {
        return Err(Invalid::Corrupt);
    }
    if header.offset != expected_offset {
        return Err(Invalid::WrongOffset(header.offset));
    }
    Ok((payload, total))
}

/// Why no valid record was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Zeros: the end of the data.
    End,
    /// The record runs past the end of the bytes available.
    Truncated,
    /// The checksum or the length does not verify.
    Corrupt,
    /// A valid record, but of another offset than expected.
    WrongOffset(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_records_back_to_back() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, b"set a=1");
        encode(&mut buf, 8, b"");
        let (p, n) = decode(&buf, 7).unwrap();
        assert_eq!(p, b"set a=1");
        assert_eq!(n as u64, record_bytes(7));
        let (p, n2) = decode(&buf[n..], 8).unwrap();
        assert_eq!(p, b"");
        assert_eq!(n + n2, buf.len());
        assert_eq!(decode(&buf[n + n2..], 9), Err(Invalid::End));
    }

    #[test]
    fn an_empty_record_at_offset_zero_is_not_an_end_marker() {
        let mut buf = Vec::new();
        encode(&mut buf, 0, b"");
        assert!(buf.iter().any(|&b| b != 0));
        assert_eq!(decode(&buf, 0), Ok((&b""[..], HEADER_BYTES)));
    }

    #[test]
    fn every_truncation_and_byte_flip_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, 42, b"payload bytes");
        for cut in 0..buf.len() {
            let r = decode(&buf[..cut], 42);
            assert!(
                matches!(r, Err(Invalid::Truncated | Invalid::End)),
                "cut {cut}: {r:?}"
            );
        }
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[i] ^= 1 << bit;
                let r = decode(&bad, 42);
                assert!(r.is_err(), "flip at {i} bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn the_after_sync_flag_round_trips_and_is_covered_by_the_checksum() {
        let mut buf = Vec::new();
        encode_flagged(&mut buf, 9, b"set a=1", true);
        let HeaderRead::Header(h) = decode_header(buf[..HEADER_BYTES].try_into().unwrap()) else {
            panic!("no header");
        };
        assert!(h.after_sync);
        assert_eq!(h.len, 7);
        assert_eq!(decode(&buf, 9), Ok((&b"set a=1"[..], buf.len())));
        // Clearing the flag (or setting it on a plain record) breaks the checksum.
        buf[7] &= 0x7f;
        assert_eq!(decode(&buf, 9), Err(Invalid::Corrupt));
        let mut plain = Vec::new();
        encode(&mut plain, 9, b"set a=1");
        plain[7] |= 0x80;
        assert_eq!(decode(&plain, 9), Err(Invalid::Corrupt));
    }

    #[test]
    fn a_record_at_the_wrong_offset_is_refused() {
        let mut buf = Vec::new();
        encode(&mut buf, 3, b"x");
        assert_eq!(decode(&buf, 4), Err(Invalid::WrongOffset(3)));
    }

    #[test]
    fn a_length_above_the_limit_is_refused_before_reading_on() {
        let mut head = [0u8; HEADER_BYTES];
        head[0] = 1;
        head[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_header(&head),
            HeaderRead::BadLength(u64::from(!AFTER_SYNC))
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_record_round_trips(offset: u64, payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut buf = Vec::new();
            encode(&mut buf, offset, &payload);
            prop_assert_eq!(decode(&buf, offset), Ok((&payload[..], buf.len())));
        }

        #[test]
        fn truncations_and_flips_never_yield_a_record(
            offset: u64,
            payload in proptest::collection::vec(any::<u8>(), 0..512),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut buf = Vec::new();
            encode(&mut buf, offset, &payload);
            let cut = cut.index(buf.len());
            prop_assert!(decode(&buf[..cut], offset).is_err());
            let i = flip.index(buf.len());
            buf[i] ^= 1 << bit;
            prop_assert!(decode(&buf, offset).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), offset: u64) {
            let _ = decode(&bytes, offset);
        }
    }
}

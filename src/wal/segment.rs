//! Segment files: the file header.
//!
//! A segment is named by the offset of its first entry (`core::layout::segment`,
//! `00000000000000000000.log`). It starts with a
//! 32-byte header, then records back to back, then zeros up to its preallocated size.
//!
//! ```text
//! magic "FLNTSEG\0" | version u32 | preallocated u32 | start_offset u64 | crc32c u32 | pad u32
//! ```
//!
//! `preallocated` is the length in bytes the file was given (zero-filled or
//! fallocated, and synced) before it took its name, saturated at `u32::MAX`; 0 where it
//! was not recorded (files written before it was). A crash never makes a named segment
//! shorter than that: the file reaches its length before its rename, and nothing
//! shrinks the last segment afterwards (a cut tail is zeroed in place). So a last
//! segment found shorter was cut short by something else, and recovery refuses it
//! instead of taking the cut for a torn write and reusing the offsets it lost. Readers
//! that predate the field ignore it (it was reserved, covered by the checksum).

/// Bytes of the segment header; the first record starts here.
pub const HEADER_BYTES: u64 = 32;
const MAGIC: &[u8; 8] = b"FLNTSEG\0";
/// Version 2 segments may hold records with the after-sync flag (see `record`);
/// version 1 segments never do and are read the same way.
const VERSION: u32 = 2;
const VERSIONS_READ: [u32; 2] = [1, 2];

/// What a segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The offset of the segment's first entry.
    pub start: u64,
    /// The length the file was preallocated to before it took its name (0: not
    /// recorded); at most `u32::MAX`.
    pub preallocated: u64,
}

/// The header of the segment starting at `start`, whose file is `preallocated` bytes
/// long before it takes its name.
pub fn encode_header(start: u64, preallocated: u64) -> [u8; HEADER_BYTES as usize] {
    let mut h = [0u8; HEADER_BYTES as usize];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    let recorded = u32::try_from(preallocated).unwrap_or(u32::MAX);
    h[12..16].copy_from_slice(&recorded.to_le_bytes());
    h[16..24].copy_from_slice(&start.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Decodes a segment header, or says what is wrong with it.
pub fn decode_header(h: &[u8; HEADER_BYTES as usize]) -> Result<Header, String> {
    if &h[0..8] != MAGIC {
        return Err("not a segment file (bad magic)".into());
    }
    let crc = u32::from_le_bytes(h[24..28].try_into().unwrap());
    if crc32c::crc32c(&h[0..24]) != crc {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32::from_le_bytes(h[8..12].try_into().unwrap());
    if !VERSIONS_READ.contains(&version) {
        return Err(format!("unsupported segment format version {version}"));
    }
    Ok(Header {
        start: u64::from_le_bytes(h[16..24].try_into().unwrap()),
        preallocated: u64::from(u32::from_le_bytes(h[12..16].try_into().unwrap())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_damage() {
        let h = encode_header(77, 4096);
        assert_eq!(
            decode_header(&h),
            Ok(Header {
                start: 77,
                preallocated: 4096
            })
        );
        let big = encode_header(1, 8 << 30);
        assert_eq!(
            decode_header(&big).unwrap().preallocated,
            u64::from(u32::MAX)
        );
        for i in 0..28 {
            let mut bad = h;
            bad[i] ^= 0x10;
            assert!(decode_header(&bad).is_err(), "byte {i}");
        }
    }
}

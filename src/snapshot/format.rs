//! The snapshot and delta file formats: the header, and the body encoding.

use super::*;

/// Bytes of the snapshot header.
pub const HEADER_BYTES: u64 = 40;

pub(super) const MAGIC: &[u8; 8] = b"FLNTSNAP";

pub(super) const DELTA_MAGIC: &[u8; 8] = b"FLNTDLTA";

pub(super) const MACHINE_MAGIC: &[u8; 8] = b"FLNTRSNP";

pub(super) const MACHINE_DELTA_MAGIC: &[u8; 8] = b"FLNTRDLT";

pub(super) const VERSION: u32 = 1;

/// Most bytes one decoded pair may take: two strings of the largest payload.
pub(super) const PAIR_BYTES_MAX: usize = 2 * RECORD_PAYLOAD_MAX_BYTES as usize + 64;

pub(super) fn bincode_config() -> Configuration {
    bincode::config::standard()
}

pub(super) struct Header {
    pub(super) offset: u64,
    pub(super) body_len: u64,
    pub(super) body_crc: u32,
}

pub(super) fn encode_header(h: &Header, magic: &[u8; 8]) -> [u8; HEADER_BYTES as usize] {
    let mut b = [0u8; HEADER_BYTES as usize];
    b[0..8].copy_from_slice(magic);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&h.offset.to_le_bytes());
    b[24..32].copy_from_slice(&h.body_len.to_le_bytes());
    b[32..36].copy_from_slice(&h.body_crc.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..36]);
    b[36..40].copy_from_slice(&crc.to_le_bytes());
    b
}

pub(super) fn decode_header(
    b: &[u8; HEADER_BYTES as usize],
    magic: &[u8; 8],
) -> Result<Header, String> {
    if &b[0..8] != magic {
        return Err(format!(
            "not a {} file (bad magic)",
            if magic == DELTA_MAGIC {
                "delta"
            } else if magic == MACHINE_MAGIC {
                "cluster snapshot"
            } else if magic == MACHINE_DELTA_MAGIC {
                "cluster delta"
            } else {
                "snapshot"
            }
        ));
    }
    if crc32c::crc32c(&b[0..36]) != u32::from_le_bytes(b[36..40].try_into().unwrap()) {
        return Err("header checksum mismatch".into());
    }
    let version = u32::from_le_bytes(b[8..12].try_into().unwrap());
    if version != VERSION {
        return Err(format!("unsupported snapshot format version {version}"));
    }
    Ok(Header {
        offset: u64::from_le_bytes(b[16..24].try_into().unwrap()),
        body_len: u64::from_le_bytes(b[24..32].try_into().unwrap()),
        body_crc: u32::from_le_bytes(b[32..36].try_into().unwrap()),
    })
}

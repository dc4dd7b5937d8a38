//! The log's metadata file, `log.meta`: where the live log starts after compaction.
//!
//! Written crash-safely (temp file, fsync, rename, directory fsync) by the compactor
//! before any segment below the new first offset is deleted and before any block below
//! it is freed, so that a crash at any point leaves either the old start with every
//! byte it needs, or the new one (and recovery finishes the deletions).
//!
//! Besides the first live offset, version 2 names the byte in its segment where the
//! record of that offset starts (or where the next record will go when the whole log
//! was compacted): the blocks before it may have been freed (read as zeros), so the
//! scan of that segment starts there instead of after its header.
//!
//! ```text
//! v1: magic "FLNTMETA" | version u32 = 1 | first_offset u64 | crc32c u32                          (24 bytes)
//! v2: magic "FLNTMETA" | version u32 = 2 | first_offset u64 | segment u64 | byte u64 | crc32c u32  (40 bytes)
//! ```

use std::path::Path;

use crate::core::position::Offset;
use crate::error::{Error, Result};
use crate::fs::{FileSystem, create_durably, join};

/// File name of the metadata file.
pub use crate::core::layout::META as FILE_NAME;
const MAGIC: &[u8; 8] = b"FLNTMETA";
const V1_BYTES: usize = 24;
const V2_BYTES: usize = 40;

/// Where the scan of the segment holding the first live offset may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkipTo {
    /// Start offset of the segment (its name).
    pub segment: Offset,
    /// Byte position of the first live record in it, or of the data end when no live
    /// record follows yet. Blocks wholly before it may be holes.
    pub byte: u64,
}

/// Where the live log starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStart {
    /// First live offset (entries below it were compacted away).
    pub first_offset: Offset,
    /// Where the scan of its segment starts (`None`: after the header).
    pub skip: Option<SkipTo>,
}

impl LogStart {
    /// A log that was never compacted.
    pub const ORIGIN: LogStart = LogStart {
        first_offset: Offset::ZERO,
        skip: None,
    };
}

/// Encodes the metadata (version 2).
pub fn encode(start: &LogStart) -> [u8; V2_BYTES] {
    let mut b = [0u8; V2_BYTES];
    let skip = start.skip.unwrap_or(SkipTo {
        segment: Offset::ZERO,
        byte: 0,
    });
    b[0..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    b[12..20].copy_from_slice(&start.first_offset.on_disk().to_le_bytes());
    b[20..28].copy_from_slice(&skip.segment.on_disk().to_le_bytes());
    b[28..36].copy_from_slice(&skip.byte.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..36]);
    b[36..40].copy_from_slice(&crc.to_le_bytes());
    b
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes the metadata (either version).
pub fn decode(b: &[u8]) -> Result<LogStart, String> {
    if b.len() < 12 || &b[0..8] != MAGIC {
        return Err("bad magic".into());
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    let len = match version {
        1 => V1_BYTES,
        2 => V2_BYTES,
        v => return Err(format!("unsupported version {v}")),
    };
    if b.len() != len {
        return Err(format!("length {} is not {len}", b.len()));
    }
    let crc = u32::from_le_bytes(b[len - 4..].try_into().expect("4 bytes"));
    if crc32c::crc32c(&b[..len - 4]) != crc {
        return Err("checksum mismatch".into());
    }
    let first_offset = Offset::from_disk(u64_at(b, 12));
    let skip = (version == 2 && u64_at(b, 28) > 0).then(|| SkipTo {
        segment: Offset::from_disk(u64_at(b, 20)),
        byte: u64_at(b, 28),
    });
    Ok(LogStart { first_offset, skip })
}

/// Reads where the log starts from `dir`: [`LogStart::ORIGIN`] when the file does not
/// exist.
///
/// # Errors
/// [`Error::Open`] when the file exists but cannot be read or does not verify.
pub fn read(fs: &dyn FileSystem, dir: &Path) -> Result<LogStart> {
    let path = join(dir, FILE_NAME);
    let file = match fs.open(&path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LogStart::ORIGIN),
        Err(e) => return Err(Error::open_io(format!("reading {}", path.display()), &e)),
    };
    let len = file.len().map_err(|e| Error::open_io(path.display(), &e))?;
    if len != V1_BYTES as u64 && len != V2_BYTES as u64 {
        return Err(Error::Open(format!(
            "{} is damaged: length {len}, expected {V2_BYTES} (or {V1_BYTES})",
            path.display()
        )));
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| Error::open_io(path.display(), &e))?;
    decode(&buf).map_err(|why| Error::Open(format!("{} is damaged: {why}", path.display())))
}

/// Writes where the log starts, crash-safely: temp file, fsync, rename, directory fsync.
pub fn write(fs: &dyn FileSystem, dir: &Path, start: &LogStart) -> std::io::Result<()> {
    create_durably(fs, dir, FILE_NAME, |file| {
        file.write_all_at(&encode(start), 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::RealFs;

    fn at(first: u64, segment: u64, byte: u64) -> LogStart {
        LogStart {
            first_offset: Offset::new(first),
            skip: Some(SkipTo {
                segment: Offset::new(segment),
                byte,
            }),
        }
    }

    #[test]
    fn round_trips_and_detects_damage() {
        let start = at(500, 320, 8192);
        let b = encode(&start);
        assert_eq!(decode(&b), Ok(start));
        for i in 0..V2_BYTES {
            let mut bad = b;
            bad[i] ^= 1;
            assert!(decode(&bad).is_err(), "byte {i}");
        }
        assert!(decode(&b[..10]).is_err());
        assert!(decode(&b[..V1_BYTES]).is_err());
    }

    #[test]
    fn reads_the_first_version() {
        let mut b = [0u8; V1_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[12..20].copy_from_slice(&77u64.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..20]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        let start = decode(&b).unwrap();
        assert_eq!(start.first_offset, 77);
        assert_eq!(start.skip, None);
    }

    #[test]
    fn missing_file_means_the_origin_and_written_value_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(&RealFs, dir.path()).unwrap(), LogStart::ORIGIN);
        write(&RealFs, dir.path(), &at(1234, 1000, 4096 * 3 + 17)).unwrap();
        assert_eq!(
            read(&RealFs, dir.path()).unwrap(),
            at(1234, 1000, 4096 * 3 + 17)
        );
        assert!(!dir.path().join("log.meta.tmp").exists());
    }
}

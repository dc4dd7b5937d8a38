//! The log's metadata file, `log.meta`: the first live offset after compaction.
//!
//! Written crash-safely (temp file, fsync, rename, directory fsync) by the compactor
//! before any segment below the new first offset is deleted, so that a crash at any
//! point leaves either the old first offset with every segment, or the new one (and
//! recovery finishes the deletions).
//!
//! ```text
//! magic "FLNTMETA" | version u32 | first_offset u64 | crc32c u32   (24 bytes)
//! ```

use std::path::Path;

use crate::core::position::Offset;
use crate::error::{Error, Result};
use crate::fs::{FileSystem, create_durably, join};

/// File name of the metadata file.
pub use crate::core::layout::META as FILE_NAME;
const MAGIC: &[u8; 8] = b"FLNTMETA";
const VERSION: u32 = 1;
const BYTES: usize = 24;

/// Encodes the metadata.
pub fn encode(first_offset: u64) -> [u8; BYTES] {
    let mut b = [0u8; BYTES];
    b[0..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&first_offset.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..20]);
    b[20..24].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes the metadata, returning the first offset.
pub fn decode(b: &[u8]) -> Result<u64, String> {
    let b: &[u8; BYTES] = b
        .try_into()
        .map_err(|_| format!("length {} is not {BYTES}", b.len()))?;
    if &b[0..8] != MAGIC {
        return Err("bad magic".into());
    }
    if crc32c::crc32c(&b[0..20]) != u32::from_le_bytes(b[20..24].try_into().unwrap()) {
        return Err("checksum mismatch".into());
    }
    let version = u32::from_le_bytes(b[8..12].try_into().unwrap());
    if version != VERSION {
        return Err(format!("unsupported version {version}"));
    }
    Ok(u64::from_le_bytes(b[12..20].try_into().unwrap()))
}

/// Reads the first offset from `dir`, 0 when the file does not exist.
///
/// # Errors
/// [`Error::Open`] when the file exists but cannot be read or does not verify.
pub fn read(fs: &dyn FileSystem, dir: &Path) -> Result<Offset> {
    let path = join(dir, FILE_NAME);
    let file = match fs.open(&path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Offset::ZERO),
        Err(e) => return Err(Error::open_io(format!("reading {}", path.display()), &e)),
    };
    let len = file.len().map_err(|e| Error::open_io(path.display(), &e))?;
    if len != BYTES as u64 {
        return Err(Error::Open(format!(
            "{} is damaged: length {len}, expected {BYTES}",
            path.display()
        )));
    }
    let mut buf = [0u8; BYTES];
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| Error::open_io(path.display(), &e))?;
    decode(&buf)
        .map(Offset::from_disk)
        .map_err(|why| Error::Open(format!("{} is damaged: {why}", path.display())))
}

/// Writes the first offset crash-safely: temp file, fsync, rename, directory fsync.
pub fn write(fs: &dyn FileSystem, dir: &Path, first_offset: Offset) -> std::io::Result<()> {
    create_durably(fs, dir, FILE_NAME, |file| {
        file.write_all_at(&encode(first_offset.on_disk()), 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::RealFs;

    #[test]
    fn round_trips_and_detects_damage() {
        let b = encode(500);
        assert_eq!(decode(&b), Ok(500));
        for i in 0..BYTES {
            let mut bad = b;
            bad[i] ^= 1;
            assert!(decode(&bad).is_err(), "byte {i}");
        }
        assert!(decode(&b[..10]).is_err());
    }

    #[test]
    fn missing_file_means_zero_and_written_value_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(&RealFs, dir.path()).unwrap(), 0);
        write(&RealFs, dir.path(), Offset::new(1234)).unwrap();
        assert_eq!(read(&RealFs, dir.path()).unwrap(), 1234);
        assert!(!dir.path().join("log.meta.tmp").exists());
    }
}

//! Entry points for the fuzz targets in `fuzz/` and for the stable test that replays
//! their corpus: each takes arbitrary bytes, must never panic, and checks a property
//! where the input turns out to be valid.

use std::path::Path;

use crate::fs::FileSystem;
use crate::fs::sim::SimFs;
use crate::{router, snapshot, wal};

/// One input line: parsing never panics; a line whose request parses is UTF-8 (a
/// line that does not may still be answered, with error 12, from its salvaged
/// envelope).
pub fn wire_line(data: &[u8]) {
    if let Ok((_envelope, Ok(_request))) = router::wire::parse_line(data) {
        assert!(
            std::str::from_utf8(data).is_ok(),
            "a line that parses is UTF-8"
        );
    }
}

/// The record decoder: the first 8 bytes pick the expected offset. A record that
/// decodes encodes back to the same bytes.
pub fn record(data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let offset = u64::from_le_bytes(*head);
    if let Ok((payload, len)) = wal::record::decode(rest, offset) {
        let mut again = Vec::new();
        let after_sync = rest[7] & 0x80 != 0;
        wal::record::encode_flagged(&mut again, offset, payload, after_sync);
        assert_eq!(again, rest[..len], "decode and encode disagree");
    }
}

/// The snapshot decoder over a file holding `data`. A snapshot that verifies writes
/// back to the same bytes (the format is canonical).
pub fn snapshot(data: &[u8]) {
    let fs = SimFs::new();
    let dir = Path::new("/fuzz");
    fs.create_dir_all(dir).expect("in memory");
    let path = dir.join("input.snap");
    drop(fs.create(&path).expect("in memory"));
    fs.overwrite(&path, data.to_vec());
    if let Ok((offset, state)) = snapshot::read(&fs, &path) {
        let out = snapshot::write(
            &fs,
            dir,
            crate::Offset::from_disk(offset),
            &state,
            &snapshot::WritePace::unpaced(1 << 20),
        )
        .expect("in memory");
        assert_eq!(
            fs.contents()[&dir.join(out.file)],
            data,
            "a verified snapshot is canonical"
        );
    }
}

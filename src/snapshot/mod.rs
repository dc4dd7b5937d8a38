//! Snapshot files: format and crash-safe writing.
//!
//! ```text
//! header (40 bytes):
//!   magic "FLNTSNAP" | version u32 | reserved u32 | offset u64 | body_len u64
//!   | body_crc32c u32 | header_crc32c u32 (over the 36 bytes before it)
//! body (bincode, standard configuration):
//!   (key_count u64, other_payloads u64), then key_count pairs (key, value) in
//!   strictly ascending key order
//! ```
//!
//! The body is in key order and the header holds no time, so equal states at the same
//! offset give byte-identical files. A snapshot named `<offset>.snap` covers entries
//! `[0, offset)`.
//!
//! A delta (`<offset>.delta`, magic `FLNTDLTA`, the same header) holds what changed
//! since its parent, the snapshot or delta it builds on:
//!
//! ```text
//! body: (parent_offset u64, parent_checksum u32, other_payloads u64, change_count u64),
//!   then change_count pairs (key, Option<value>) in strictly ascending key order;
//!   None deletes the key
//! ```
//!
//! A cluster node's snapshot (`<index>.rsnap`, magic `FLNTRSNP`, the same header with
//! the Raft index in the offset field) holds the replicated state machine:
//!
//! ```text
//! body: head (bincode byte string: the consensus layer's fields, see
//!   `raftlog::image`), then the full snapshot's body
//! ```
//!
//! A cluster node's delta (`<index>.rdelta`, magic `FLNTRDLT`, the same header with the
//! Raft index) holds the consensus layer's fields at its index, whole, and what changed
//! since its parent (a cluster snapshot or delta):
//!
//! ```text
//! body: head (bincode byte string), then the delta's body (parent_offset being the
//!   parent's Raft index)
//! ```
//!
//! A file's identity is its body checksum: a delta names its parent by offset and
//! checksum, so a chain (a full snapshot, then deltas each building on the one before)
//! cannot be mixed up with another chain's files.
//!
//! Writing follows the one recipe that survives a power cut at any point: write
//! `<name>.tmp` (handed to the disk every `snapshot_sync_chunk_bytes`, and paced while
//! the log syncs: see [`WritePace`]), write the header last, fsync, rename to `<name>`,
//! fsync the directory. Only then is the snapshot reported durable.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bincode::config::Configuration;

use crate::core::kv::Change;
use crate::core::kv::{KvMap, KvState};
use crate::core::layout;
use crate::core::pace::Pacer;
use crate::core::position::Offset;
use crate::core::recovery::{self, Probe};
use crate::fs::{File, FileSystem, create_durably, sync_failed};
use crate::wal::SyncCount;
use crate::wal::record::RECORD_PAYLOAD_MAX_BYTES;

pub use crate::types::SnapshotFile;
pub use layout::{delta as delta_file_name, is_delta, snapshot as file_name};

mod choose;
mod encode;
mod format;
mod read;
mod write;

pub use choose::{Chosen, choose, choose_machine};
pub use format::HEADER_BYTES;
use format::*;
use read::read_full;
pub use read::{
    Delta, MachineDelta, MachineFile, peek_machine, read, read_delta, read_files, read_identified,
    read_machine, read_machine_chain, read_machine_delta, read_machine_files,
};
pub use write::{WritePace, to_bytes, write, write_delta, write_machine, write_machine_delta};

/// Retires snapshot files retention dropped, one at a time: each is renamed to its
/// temp name (which recovery removes), the rename made durable by a directory sync,
/// and only then is it freed in paced steps, like a compacted segment; so a crash never
/// leaves a shortened file under a snapshot's name. A rename or a free that fails is
/// logged and skipped (recovery removes what is left).
///
/// # Errors
/// A directory sync failed (marked as a sync failure: fail-stop for the caller); the
/// files after it were not retired.
pub(crate) fn retire(
    fs: &dyn FileSystem,
    dir: &Path,
    names: &[String],
    pacing: &crate::fs::Pacing,
) -> io::Result<()> {
    for name in names {
        let doomed = dir.join(layout::retired(name));
        if let Err(e) = fs.rename(&dir.join(name), &doomed) {
            log::warn!("could not remove old snapshot {name}: {e}");
            continue;
        }
        fs.sync_dir(dir).map_err(sync_failed)?;
        let freed = fs
            .open(&doomed, false)
            .and_then(|f| f.len())
            .and_then(|size| pacing.free(fs, &doomed, size));
        match freed {
            Ok(()) => log::debug!("removed old snapshot {name}"),
            Err(e) => {
                log::warn!("could not free retired snapshot {name}: {e}; recovery removes it")
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::RealFs;

    fn state(n: usize) -> KvState {
        let mut s = KvState::default();
        for i in 0..n {
            s.apply(format!("set k{i:05}=value {i}").as_bytes());
        }
        s.apply(b"noise");
        s
    }

    #[test]
    fn round_trips_and_equal_states_give_equal_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(1000);
        let a = write(
            &RealFs,
            dir.path(),
            Offset::new(1001),
            &s,
            &WritePace::unpaced(4096),
        )
        .unwrap();
        assert_eq!(a.file, "00000000000000001001.snap");
        let bytes_a = std::fs::read(dir.path().join(&a.file)).unwrap();
        assert_eq!(bytes_a.len() as u64, a.size_bytes);
        let (offset, back) = read(&RealFs, &dir.path().join(&a.file)).unwrap();
        assert_eq!(offset, 1001);
        assert_eq!(back, s);
        // Build the same state in another order: same bytes.
        let mut s2 = KvState::default();
        for i in (0..1000).rev() {
            s2.apply(format!("set k{i:05}=value {i}").as_bytes());
        }
        s2.other_payloads = 1;
        let dir2 = tempfile::tempdir().unwrap();
        let b = write(
            &RealFs,
            dir2.path(),
            Offset::new(1001),
            &s2,
            &WritePace::unpaced(1 << 20),
        )
        .unwrap();
        assert_eq!(std::fs::read(dir2.path().join(b.file)).unwrap(), bytes_a);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp"))
        );
    }

    #[test]
    fn every_truncation_and_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let snap = write(
            &RealFs,
            dir.path(),
            Offset::new(20),
            &state(20),
            &WritePace::unpaced(4096),
        )
        .unwrap();
        let path = dir.path().join(&snap.file);
        let good = std::fs::read(&path).unwrap();
        let probe = dir.path().join("probe.snap");
        for cut in 0..good.len() {
            std::fs::write(&probe, &good[..cut]).unwrap();
            assert!(
                read(&RealFs, &probe).is_err(),
                "truncation to {cut} accepted"
            );
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x04;
            std::fs::write(&probe, &bad).unwrap();
            assert!(read(&RealFs, &probe).is_err(), "flip at byte {i} accepted");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::fs::sim::SimFs;
    use proptest::prelude::*;
    use std::path::PathBuf;

    fn arb_state() -> impl Strategy<Value = KvState> {
        (
            proptest::collection::btree_map("[a-z0-9]{1,12}", ".{0,40}", 0..60),
            0u64..1000,
        )
            .prop_map(|(m, other)| {
                let mut s = KvState::default();
                for (k, v) in m {
                    s.map.insert(Arc::from(k.as_str()), Arc::from(v.as_str()));
                }
                s.other_payloads = other;
                s
            })
    }

    fn disk_with(bytes: Vec<u8>) -> (SimFs, PathBuf) {
        let fs = SimFs::new();
        let dir = PathBuf::from("/d");
        fs.create_dir_all(&dir).unwrap();
        let path = dir.join("x.snap");
        fs.create(&path).unwrap();
        fs.overwrite(&path, bytes);
        (fs, path)
    }

    proptest! {
        #[test]
        fn any_state_round_trips(state in arb_state(), offset: u64) {
            let fs = SimFs::new();
            let dir = PathBuf::from("/d");
            fs.create_dir_all(&dir).unwrap();
            let snap = write(&fs, &dir, Offset::new(offset), &state, &WritePace::unpaced(4096)).unwrap();
            let (o, back) = read(&fs, &dir.join(&snap.file)).unwrap();
            prop_assert_eq!(o, offset);
            prop_assert_eq!(back, state);
        }

        #[test]
        fn truncations_and_flips_are_refused(
            state in arb_state(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let fs = SimFs::new();
            let dir = PathBuf::from("/d");
            fs.create_dir_all(&dir).unwrap();
            let snap = write(&fs, &dir, Offset::new(9), &state, &WritePace::unpaced(4096)).unwrap();
            let good = fs.contents()[&dir.join(&snap.file)].clone();
            let (t, tp) = disk_with(good[..cut.index(good.len())].to_vec());
            prop_assert!(read(&t, &tp).is_err());
            let mut bad = good.clone();
            bad[flip.index(good.len())] ^= 1 << bit;
            let (f, fp) = disk_with(bad);
            prop_assert!(read(&f, &fp).is_err());
        }

        #[test]
        fn arbitrary_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let (fs, path) = disk_with(bytes);
            let _ = read(&fs, &path);
        }
    }

    #[test]
    fn a_huge_claimed_length_is_refused_before_allocating() {
        // A valid header whose body claims a string of 2^62 bytes: reading must fail
        // on the limit, not try to allocate it.
        let mut body = Vec::new();
        bincode::encode_into_std_write((1u64, 0u64), &mut body, bincode_config()).unwrap();
        body.push(253); // varint marker: a u64 length follows
        body.extend_from_slice(&(1u64 << 62).to_le_bytes());
        body.extend_from_slice(b"tail");
        let header = Header {
            offset: 1,
            body_len: body.len() as u64,
            body_crc: crc32c::crc32c(&body),
        };
        let mut file = encode_header(&header, MAGIC).to_vec();
        file.extend_from_slice(&body);
        let (fs, path) = disk_with(file);
        let err = read(&fs, &path).unwrap_err();
        assert!(
            err.contains("does not decode") && err.to_lowercase().contains("limit"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod in_memory {
    use super::*;
    use crate::fs::RealFs;

    #[test]
    fn to_bytes_is_exactly_the_file_write_produces() {
        let mut s = KvState::default();
        for i in 0..500 {
            s.apply(format!("set k{i}=v{i}").as_bytes());
        }
        let dir = tempfile::tempdir().unwrap();
        let snap = write(
            &RealFs,
            dir.path(),
            Offset::new(77),
            &s,
            &WritePace::unpaced(4096),
        )
        .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(snap.file)).unwrap(),
            to_bytes(77, &s)
        );
    }
}

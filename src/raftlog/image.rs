//! A cluster node's snapshot: the replicated state machine at a Raft index, with what
//! Raft needs to continue from it.
//!
//! An [`Image`] is cut on the consensus thread in O(1) (the key-value map is a
//! persistent map, shared with the live state; the sessions and offset runs are
//! small) and written by the cluster's snapshotter thread as `<index>.rsnap` (the
//! snapshot file recipe of [`crate::snapshot`]: temp file, synced in chunks, header,
//! fsync, rename, directory fsync). The head the snapshot module stores opaque is:
//!
//! ```text
//! bincode: (version u32 = 2, term u64, voters Vec<u64>, next_offset u64,
//!           runs Vec<(offset u64, index u64)>,
//!           sessions Vec<(node u64, boot u64, floor u64, applied Vec<u64>, last_index u64)>,
//!           learners Vec<u64>, names Vec<(raft id u64, node id String)>,
//!           incarnations Vec<(raft id u64, incarnation u64)>)
//! ```
//!
//! Version 1 (written before membership could change) has no learners, names or
//! incarnations: it reads as a group of its voters with nothing recorded.
//!
//! The state's digest covers the same fields as [`Machine::digest`], so a node that
//! loads an image reports the digest of the node that cut it.

use std::path::Path;

use crate::consensus::command::Session;
use crate::consensus::{Image, Machine};
use crate::core::layout;
use crate::core::position::{Offset, RaftIndex};
use crate::fs::FileSystem;
use crate::snapshot::{self, SnapshotFile};

const VERSION: u32 = 2;

type SessionRow = (u64, u64, u64, Vec<u64>, u64);
type HeadV1 = (u32, u64, Vec<u64>, u64, Vec<(u64, u64)>, Vec<SessionRow>);
type Head = (
    u32,
    u64,
    Vec<u64>,
    u64,
    Vec<(u64, u64)>,
    Vec<SessionRow>,
    Vec<u64>,
    Vec<(u64, String)>,
    Vec<(u64, u64)>,
);

/// The Raft index a cluster snapshot's file stands at. A cluster snapshot is written
/// in the single node's file format, whose `SnapshotFile::offset` carries the index.
pub fn index_of(file: &SnapshotFile) -> RaftIndex {
    RaftIndex::new(file.offset.get())
}

/// The `offset` field of a cluster snapshot's [`SnapshotFile`] (and of the compaction
/// it answers) for a snapshot at `index`: see [`index_of`].
pub fn carrying(index: RaftIndex) -> Offset {
    Offset::new(index.get())
}

/// The head of an image's file: everything but the key-value state.
fn head(image: &Image) -> Vec<u8> {
    let m = &image.machine;
    let sessions: Vec<SessionRow> = m
        .sessions
        .iter()
        .map(|(&(node, boot), s)| {
            (
                node,
                boot,
                s.floor,
                s.applied.iter().copied().collect(),
                s.last_index,
            )
        })
        .collect();
    let head: Head = (
        VERSION,
        image.term,
        image.voters.clone(),
        m.next_offset.on_disk(),
        m.runs.clone(),
        sessions,
        image.learners.clone(),
        m.names.iter().map(|(id, n)| (*id, n.clone())).collect(),
        m.incarnations.iter().map(|(id, i)| (*id, *i)).collect(),
    );
    bincode::encode_to_vec(head, bincode::config::standard()).expect("to memory")
}

/// An image from its file's parts.
fn from_parts(file: snapshot::MachineFile) -> Result<Image, String> {
    let config = bincode::config::standard();
    let (version, _): (u32, usize) = bincode::decode_from_slice(&file.head, config)
        .map_err(|e| format!("head does not decode: {e}"))?;
    let (head, used): (Head, usize) = match version {
        1 => {
            let ((v, term, voters, next, runs, sessions), used): (HeadV1, usize) =
                bincode::decode_from_slice(&file.head, config)
                    .map_err(|e| format!("head does not decode: {e}"))?;
            let head = (
                v,
                term,
                voters,
                next,
                runs,
                sessions,
                vec![],
                vec![],
                vec![],
            );
            (head, used)
        }
        VERSION => bincode::decode_from_slice(&file.head, config)
            .map_err(|e| format!("head does not decode: {e}"))?,
        v => return Err(format!("unsupported cluster snapshot version {v}")),
    };
    if used != file.head.len() {
        return Err("head has bytes after its fields".into());
    }
    let (_, term, voters, next_offset, runs, sessions, learners, names, incarnations) = head;
    if runs
        .windows(2)
        .any(|w| w[0].0 >= w[1].0 || w[0].1 >= w[1].1)
        || runs
            .last()
            .is_some_and(|&(o, i)| o >= next_offset || i > file.index)
    {
        return Err("its offset runs are out of order".into());
    }
    let machine = Machine {
        kv: file.state,
        next_offset: Offset::from_disk(next_offset),
        applied: file.index,
        runs,
        sessions: sessions
            .into_iter()
            .map(|(node, boot, floor, applied, last_index)| {
                let session = Session {
                    floor,
                    applied: applied.into_iter().collect(),
                    last_index,
                };
                ((node, boot), session)
            })
            .collect(),
        names: names.into_iter().collect(),
        incarnations: incarnations.into_iter().collect(),
    };
    Ok(Image {
        term,
        voters,
        learners,
        machine,
    })
}

const IDENTITY_MAGIC: &[u8; 8] = b"FLNTSNID";
const CHAIN_IDENTITY_MAGIC: &[u8; 8] = b"FLNTSNCH";

/// Which snapshot a `MsgSnapshot` offers a follower (see `cluster::transfer`): what
/// the offer carries in place of the data. The snapshot is a chain: a full snapshot,
/// then the deltas building on it; `file`, `size` and `checksum` are its tip's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainId {
    /// Its Raft index.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// Its tip's file name in the sender's directory (`<index>.rsnap` or
    /// `<index>.rdelta`).
    pub file: String,
    /// The tip's size.
    pub size: u64,
    /// The tip's body checksum.
    pub checksum: u32,
    /// The files the tip builds on, base first (none when the tip is a full snapshot).
    pub parents: Vec<Link>,
}

/// One file of a chain offered: its name, size and body checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub file: String,
    pub size: u64,
    pub checksum: u32,
}

impl Link {
    /// Where a follower keeps what it received of this file so far.
    pub fn part_name(&self) -> String {
        crate::core::layout::snapshot_part(&self.file, self.checksum)
    }
}

fn cluster_name(file: String) -> Result<String, String> {
    if crate::core::layout::parse_raft_snapshot(&file).is_none() {
        return Err(format!("{file:?} is not a cluster snapshot's name"));
    }
    Ok(file)
}

impl ChainId {
    /// The bytes a `MsgSnapshot`'s data carries: for a chain of one file, index,
    /// term, size, checksum and name; for a longer chain, index, term, then each
    /// file (base first) as size, checksum, name length and name.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(48 + self.file.len());
        if self.parents.is_empty() {
            b.extend_from_slice(IDENTITY_MAGIC);
            for v in [self.index, self.term, self.size] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&self.checksum.to_le_bytes());
            b.extend_from_slice(self.file.as_bytes());
            return b;
        }
        b.extend_from_slice(CHAIN_IDENTITY_MAGIC);
        b.extend_from_slice(&self.index.to_le_bytes());
        b.extend_from_slice(&self.term.to_le_bytes());
        for l in self.links() {
            b.extend_from_slice(&l.size.to_le_bytes());
            b.extend_from_slice(&l.checksum.to_le_bytes());
            b.extend_from_slice(&(l.file.len() as u32).to_le_bytes());
            b.extend_from_slice(l.file.as_bytes());
        }
        b
    }

    /// Reads what [`ChainId::encode`] wrote.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn decode(b: &[u8]) -> Result<ChainId, String> {
        let u64_at = |at: usize| -> Result<u64, String> {
            b.get(at..at + 8)
                .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
                .ok_or_else(|| "a snapshot identity cut short".to_string())
        };
        let u32_at = |at: usize| -> Result<u32, String> {
            b.get(at..at + 4)
                .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
                .ok_or_else(|| "a snapshot identity cut short".to_string())
        };
        if b.len() >= 36 && &b[..8] == IDENTITY_MAGIC {
            let file = String::from_utf8(b[36..].to_vec()).map_err(|e| e.to_string())?;
            return Ok(ChainId {
                index: u64_at(8)?,
                term: u64_at(16)?,
                size: u64_at(24)?,
                checksum: u32_at(32)?,
                file: cluster_name(file)?,
                parents: Vec::new(),
            });
        }
        if b.len() < 24 || &b[..8] != CHAIN_IDENTITY_MAGIC {
            return Err("not a snapshot identity".into());
        }
        let mut links = Vec::new();
        let mut at = 24;
        while at < b.len() {
            let (size, checksum, len) = (u64_at(at)?, u32_at(at + 8)?, u32_at(at + 12)?);
            let name = b
                .get(at + 16..at + 16 + len as usize)
                .ok_or("a snapshot identity cut short")?;
            let file = String::from_utf8(name.to_vec()).map_err(|e| e.to_string())?;
            links.push(Link {
                file: cluster_name(file)?,
                size,
                checksum,
            });
            at += 16 + len as usize;
        }
        let tip = links.pop().ok_or("a chain of no files")?;
        Ok(ChainId {
            index: u64_at(8)?,
            term: u64_at(16)?,
            file: tip.file,
            size: tip.size,
            checksum: tip.checksum,
            parents: links,
        })
    }

    /// The identity of the chain `chain` (of this node, base first), whose tip's entry
    /// has term `term`.
    ///
    /// # Panics
    /// `chain` is empty.
    pub fn of(chain: &[SnapshotFile], term: u64) -> ChainId {
        let (tip, parents) = chain.split_last().expect("a chain has a file");
        ChainId {
            index: index_of(tip).get(),
            term,
            file: tip.file.clone(),
            size: tip.size_bytes,
            checksum: tip.checksum,
            parents: parents
                .iter()
                .map(|f| Link {
                    file: f.file.clone(),
                    size: f.size_bytes,
                    checksum: f.checksum,
                })
                .collect(),
        }
    }

    /// Every file of the chain, base first, the tip last.
    pub fn links(&self) -> Vec<Link> {
        let mut all = self.parents.clone();
        all.push(Link {
            file: self.file.clone(),
            size: self.size,
            checksum: self.checksum,
        });
        all
    }

    /// Whether file `file` is part of the chain.
    pub fn includes(&self, file: &str) -> bool {
        self.file == file || self.parents.iter().any(|l| l.file == file)
    }

    /// The chain's size in bytes, all files.
    pub fn total_size(&self) -> u64 {
        self.size + self.parents.iter().map(|l| l.size).sum::<u64>()
    }
}

/// Writes `image` as `<index>.rsnap` in `dir`, crash-safely; returns the file once
/// durable.
///
/// # Errors
/// The I/O error (no file under the final name was touched).
pub fn write(
    fs: &dyn FileSystem,
    dir: &Path,
    image: &Image,
    pace: &snapshot::WritePace,
) -> std::io::Result<SnapshotFile> {
    snapshot::write_machine(
        fs,
        dir,
        layout::raft_snapshot(image.index()),
        image.index(),
        &head(image),
        &image.machine.kv,
        pace,
    )
}

/// Writes `image` as the delta `<index>.rdelta` in `dir` building on `parent` (the
/// chain's tip, cut from `parent_state`), crash-safely; returns the file once durable.
///
/// # Errors
/// As [`write()`].
pub fn write_delta(
    fs: &dyn FileSystem,
    dir: &Path,
    image: &Image,
    parent: &SnapshotFile,
    parent_state: &crate::core::kv::KvState,
    pace: &snapshot::WritePace,
) -> std::io::Result<SnapshotFile> {
    let kv = &image.machine.kv;
    snapshot::write_machine_delta(
        fs,
        dir,
        layout::raft_delta(image.index()),
        image.index(),
        &head(image),
        parent,
        &parent_state.changes_to(kv),
        kv.other_payloads,
        pace,
    )
}

/// Reads and verifies the chain ending at `tip` among the snapshots `on_disk`
/// (`(index, name)`): the image at its tip, and its files, base first.
///
/// # Errors
/// What is wrong with it.
pub fn read_chain(
    fs: &dyn FileSystem,
    dir: &Path,
    on_disk: &[(u64, String)],
    tip: &str,
) -> Result<(Image, Vec<SnapshotFile>), String> {
    let index = layout::parse_raft_snapshot(tip).ok_or("not a cluster snapshot's name")?;
    image_at(snapshot::read_machine_chain(fs, dir, on_disk, tip)?, index)
}

/// The image a chain read back gives, if its tip stands at `index`.
fn image_at(
    (tip, chain): (snapshot::MachineFile, Vec<SnapshotFile>),
    index: u64,
) -> Result<(Image, Vec<SnapshotFile>), String> {
    if tip.index != index {
        return Err(format!("its tip's header says index {}", tip.index));
    }
    Ok((from_parts(tip)?, chain))
}

/// Reads and verifies the chain of files `names` in `dir` (a snapshot then its deltas,
/// under whatever names they were received) as the chain whose tip is at `index`.
///
/// # Errors
/// What is wrong with it.
pub fn read_files(
    fs: &dyn FileSystem,
    dir: &Path,
    names: &[String],
    index: u64,
) -> Result<(Image, Vec<SnapshotFile>), String> {
    image_at(snapshot::read_machine_files(fs, dir, names)?, index)
}

/// The newest chain among `on_disk` (as `(index, name)`) that verifies and from which
/// the log continues (its index at least `first_index - 1`): its image and its files,
/// base first. Damaged ones are skipped with a warning. `Ok(None)` when there is none
/// and the log was never compacted (`first_index` 1: the state is rebuilt from the
/// whole log).
///
/// # Errors
/// The log was compacted and no snapshot reaches it: starting would lose the
/// compacted entries' effects.
pub fn load(
    fs: &dyn FileSystem,
    dir: &Path,
    on_disk: &[(u64, String)],
    first_index: u64,
) -> crate::Result<Option<(Image, Vec<SnapshotFile>)>> {
    for (index, name) in on_disk.iter().rev() {
        if *index + 1 < first_index {
            break;
        }
        match read_chain(fs, dir, on_disk, name) {
            Ok(found) => return Ok(Some(found)),
            Err(why) => log::warn!("skipping cluster snapshot {name}: {why}"),
        }
    }
    if first_index > 1 {
        return Err(crate::Error::Open(format!(
            "{}: the Raft log starts at index {first_index} but no snapshot that verifies \
             reaches it (cluster snapshots found: {:?}); restore one, or start this node \
             on a new directory",
            dir.display(),
            on_disk.iter().map(|(_, n)| n).collect::<Vec<_>>()
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::{Command, Ticket};
    use crate::fs::join;
    use crate::fs::sim::SimFs;

    /// Reads the snapshot (a chain of one file) `name` in `dir`.
    fn read(fs: &dyn FileSystem, dir: &Path, name: &str) -> Result<(Image, SnapshotFile), String> {
        let index = layout::parse_raft_snapshot(name).ok_or("not a name")?;
        let (image, chain) = read_chain(fs, dir, &[(index, name.to_string())], name)?;
        Ok((image, chain.last().cloned().expect("a file")))
    }

    fn sample(last: u64) -> Image {
        let mut m = Machine::default();
        for i in 1..=last {
            if i % 5 == 0 {
                m.skip(i);
                continue;
            }
            let t = Ticket {
                node: 1 + i % 3,
                boot: 7,
                seq: i,
            };
            m.apply(
                i,
                t,
                &Command::Append(format!("set k{}=v{i}", i % 6).into_bytes()),
            );
        }
        m.names = [(1, "n1"), (2, "n2"), (3, "n3"), (4, "n4")]
            .into_iter()
            .map(|(id, n)| (id, n.to_string()))
            .collect();
        m.incarnations = [(1, 11), (4, u64::MAX)].into_iter().collect();
        Image {
            term: 3,
            voters: vec![1, 2, 3],
            learners: vec![4],
            machine: m,
        }
    }

    #[test]
    fn an_image_round_trips_and_keeps_its_digest() {
        let fs = SimFs::new();
        let dir = Path::new("/n");
        fs.create_dir_all(dir).unwrap();
        let image = sample(20);
        let file = write(&fs, dir, &image, &crate::snapshot::WritePace::unpaced(4096)).unwrap();
        assert_eq!(file.file, "00000000000000000020.rsnap");
        let (back, info) = read(&fs, dir, &file.file).unwrap();
        assert_eq!(back, image);
        assert_eq!(back.machine.digest(), image.machine.digest());
        assert_eq!(info, file);
    }

    #[test]
    fn a_version_1_image_reads_as_a_group_of_its_voters_with_nothing_recorded() {
        let fs = SimFs::new();
        let dir = Path::new("/n");
        fs.create_dir_all(dir).unwrap();
        let image = sample(20);
        let m = &image.machine;
        let sessions: Vec<SessionRow> = m
            .sessions
            .iter()
            .map(|(&(node, boot), s)| {
                let applied = s.applied.iter().copied().collect();
                (node, boot, s.floor, applied, s.last_index)
            })
            .collect();
        let head: HeadV1 = (
            1,
            image.term,
            image.voters.clone(),
            m.next_offset.on_disk(),
            m.runs.clone(),
            sessions,
        );
        let head = bincode::encode_to_vec(head, bincode::config::standard()).unwrap();
        let name = layout::raft_snapshot(20);
        snapshot::write_machine(
            &fs,
            dir,
            name.clone(),
            20,
            &head,
            &m.kv,
            &crate::snapshot::WritePace::unpaced(4096),
        )
        .unwrap();
        let (back, _) = read(&fs, dir, &name).unwrap();
        assert_eq!((back.term, &back.voters), (image.term, &image.voters));
        assert!(back.learners.is_empty());
        assert!(back.machine.names.is_empty() && back.machine.incarnations.is_empty());
        assert_eq!(back.machine.digest(), image.machine.digest());
        assert_eq!(back.machine.sessions, image.machine.sessions);
    }

    #[test]
    fn a_damaged_image_is_refused_and_loading_falls_back() {
        let fs = SimFs::new();
        let dir = Path::new("/n");
        fs.create_dir_all(dir).unwrap();
        let old_file = write(
            &fs,
            dir,
            &sample(10),
            &crate::snapshot::WritePace::unpaced(4096),
        )
        .unwrap();
        let new_file = write(
            &fs,
            dir,
            &sample(20),
            &crate::snapshot::WritePace::unpaced(4096),
        )
        .unwrap();
        let size = new_file.size_bytes;
        for at in [3, 20, 41, size / 2, size - 1] {
            let mut f = fs.open(&join(dir, &new_file.file), true).unwrap();
            let mut b = [0u8];
            f.read_exact_at(&mut b, at).unwrap();
            f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
            assert!(read(&fs, dir, &new_file.file).is_err(), "flip at {at}");
            let on_disk = [(10, old_file.file.clone()), (20, new_file.file.clone())];
            let (got, _) = load(&fs, dir, &on_disk, 5).unwrap().unwrap();
            assert_eq!(got.index(), 10);
            // The older one is too old for a log that starts past it.
            assert!(load(&fs, dir, &on_disk, 15).is_err());
            f.write_all_at(&b, at).unwrap();
        }
        assert!(load(&fs, dir, &[], 1).unwrap().is_none());
    }

    #[test]
    fn a_delta_reads_only_on_the_very_file_it_builds_on() {
        let fs = SimFs::new();
        let dir = Path::new("/n");
        fs.create_dir_all(dir).unwrap();
        let (a, b, c) = (sample(10), sample(20), sample(30));
        let base = write(&fs, dir, &a, &crate::snapshot::WritePace::unpaced(4096)).unwrap();
        let d20 = write_delta(
            &fs,
            dir,
            &b,
            &base,
            &a.machine.kv,
            &crate::snapshot::WritePace::unpaced(4096),
        )
        .unwrap();
        let d30 = write_delta(
            &fs,
            dir,
            &c,
            &d20,
            &b.machine.kv,
            &crate::snapshot::WritePace::unpaced(4096),
        )
        .unwrap();
        assert_eq!(d30.file, "00000000000000000030.rdelta");
        assert!(
            d30.size_bytes < base.size_bytes + 200,
            "a delta holds the changes"
        );
        let mut on_disk = vec![
            (10, base.file.clone()),
            (20, d20.file.clone()),
            (30, d30.file.clone()),
        ];
        let (got, chain) = load(&fs, dir, &on_disk, 25).unwrap().unwrap();
        assert_eq!(got, c);
        assert_eq!(chain, vec![base.clone(), d20.clone(), d30.clone()]);
        let names: Vec<String> = chain.iter().map(|f| f.file.clone()).collect();
        assert_eq!(read_files(&fs, dir, &names, 30).unwrap().0, c);
        // The base rewritten with other content (the same index, another checksum):
        // the deltas no longer build on it, and nothing reaches index 25.
        let other = Image {
            term: 4,
            ..sample(10)
        };
        write(&fs, dir, &other, &crate::snapshot::WritePace::unpaced(4096)).unwrap();
        let why = read_chain(&fs, dir, &on_disk, &d30.file).unwrap_err();
        assert!(why.contains("another checksum"), "{why}");
        assert!(
            read_files(&fs, dir, &names, 30)
                .unwrap_err()
                .contains("builds on")
        );
        assert!(load(&fs, dir, &on_disk, 25).is_err());
        // A delta whose parent is gone.
        on_disk.remove(0);
        let why = read_chain(&fs, dir, &on_disk, &d20.file).unwrap_err();
        assert!(why.contains("not on disk"), "{why}");
    }

    /// One step of a random workload: an entry at the next index.
    #[derive(Debug, Clone)]
    enum Step {
        Append(u8, u8),
        Cas(u8, u8, u8),
        Empty,
        /// The same ticket as `n` steps before (a proposal that arrived twice).
        Again(u8),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            5 => (0..8u8, any::<u8>()).prop_map(|(k, v)| Step::Append(k, v)),
            3 => (0..8u8, 0..4u8, 0..4u8).prop_map(|(k, f, t)| Step::Cas(k, f, t)),
            1 => Just(Step::Empty),
            1 => (1..20u8).prop_map(Step::Again),
        ]
    }

    /// Applies `steps` from index `from + 1` on, as every replica would.
    fn replay(m: &mut Machine, steps: &[Step], from: usize) {
        let ticket = |i: usize| Ticket {
            node: 1 + (i % 3) as u64,
            boot: 1,
            seq: 1 + i as u64,
        };
        for (i, s) in steps.iter().enumerate().skip(from) {
            let index = i as u64 + 1;
            match s {
                Step::Append(k, v) => {
                    m.apply(
                        index,
                        ticket(i),
                        &Command::Append(format!("set k{k}={v}").into_bytes()),
                    );
                }
                Step::Cas(k, f, t) => {
                    let cmd = Command::Cas {
                        key: format!("k{k}"),
                        from: format!("{}", f % 4),
                        to: format!("{t}"),
                    };
                    m.apply(index, ticket(i), &cmd);
                }
                Step::Empty => m.skip(index),
                Step::Again(n) => {
                    let earlier = i.saturating_sub(*n as usize);
                    let cmd = Command::Append(b"set again=1".to_vec());
                    m.apply(index, ticket(earlier), &cmd);
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Snapshot accuracy: at every applied index, a snapshot written and read
        /// back, then the rest of the log replayed on it, gives the state (digest,
        /// offsets, sessions) of a replay of the whole log from the start.
        #[test]
        fn a_snapshot_plus_the_rest_of_the_log_equals_a_full_replay(
            steps in proptest::collection::vec(step(), 1..120),
            cut in 0..120usize,
        ) {
            let cut = cut.min(steps.len());
            let mut full = Machine::default();
            replay(&mut full, &steps, 0);
            let mut upto = Machine::default();
            replay(&mut upto, &steps[..cut], 0);
            let fs = SimFs::new();
            let dir = Path::new("/n");
            fs.create_dir_all(dir).unwrap();
            let image = Image {
                term: 1,
                voters: vec![1, 2, 3],
                learners: vec![],
                machine: upto,
            };
            let file = write(&fs, dir, &image, &crate::snapshot::WritePace::unpaced(4096)).unwrap();
            let (mut back, _) = read(&fs, dir, &file.file).unwrap();
            proptest::prop_assert_eq!(&back, &image);
            replay(&mut back.machine, &steps, cut);
            proptest::prop_assert_eq!(back.machine.digest(), full.digest());
            proptest::prop_assert_eq!(&back.machine, &full);
            for o in 0..full.next_offset.get() {
                let o = Offset::new(o);
                proptest::prop_assert_eq!(back.machine.index_of(o), full.index_of(o));
            }
        }

        /// The same for a chain: a snapshot at `base`, deltas at each later cut, read
        /// back through the chain, then the rest of the log replayed on it.
        #[test]
        fn a_base_plus_deltas_plus_the_rest_of_the_log_equals_a_full_replay(
            steps in proptest::collection::vec(step(), 1..120),
            cuts in proptest::collection::btree_set(1..120usize, 1..5),
        ) {
            let cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= steps.len()).collect();
            proptest::prop_assume!(!cuts.is_empty());
            let mut full = Machine::default();
            replay(&mut full, &steps, 0);
            let fs = SimFs::new();
            let dir = Path::new("/n");
            fs.create_dir_all(dir).unwrap();
            let mut on_disk = Vec::new();
            let mut tip: Option<(SnapshotFile, crate::core::kv::KvState)> = None;
            let mut at = Machine::default();
            let mut done = 0;
            for &cut in &cuts {
                replay(&mut at, &steps[..cut], done);
                done = cut;
                let image = Image { term: 1, voters: vec![1, 2, 3], learners: vec![], machine: at.clone() };
                let file = match &tip {
                    None => write(&fs, dir, &image, &crate::snapshot::WritePace::unpaced(4096)).unwrap(),
                    Some((parent, state)) => write_delta(&fs, dir, &image, parent, state, &crate::snapshot::WritePace::unpaced(4096)).unwrap(),
                };
                on_disk.push((cut as u64, file.file.clone()));
                tip = Some((file, at.kv.clone()));
            }
            let (mut back, chain) = load(&fs, dir, &on_disk, 1).unwrap().unwrap();
            proptest::prop_assert_eq!(chain.len(), cuts.len());
            proptest::prop_assert_eq!(back.machine.digest(), at.digest());
            proptest::prop_assert_eq!(&back.machine, &at);
            replay(&mut back.machine, &steps, done);
            proptest::prop_assert_eq!(back.machine.digest(), full.digest());
            proptest::prop_assert_eq!(&back.machine, &full);
        }
    }
}

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

use crate::consensus::Machine;
use crate::consensus::command::Session;
use crate::core::layout;
use crate::core::position::Offset;
use crate::fs::{FileSystem, join};
use crate::snapshot::{self, SnapshotFile};

const VERSION: u32 = 2;

/// The replicated state machine at a Raft index: a snapshot's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The term of the entry at `machine.applied`.
    pub term: u64,
    /// The group's voters, sorted.
    pub voters: Vec<u64>,
    /// Its learners (members that receive the log but do not vote), sorted.
    pub learners: Vec<u64>,
    /// The state machine; `machine.applied` is the image's index.
    pub machine: Machine,
}

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

impl Image {
    /// The Raft index the image stands at.
    pub fn index(&self) -> u64 {
        self.machine.applied
    }

    fn head(&self) -> Vec<u8> {
        let m = &self.machine;
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
            self.term,
            self.voters.clone(),
            m.next_offset.on_disk(),
            m.runs.clone(),
            sessions,
            self.learners.clone(),
            m.names.iter().map(|(id, n)| (*id, n.clone())).collect(),
            m.incarnations.iter().map(|(id, i)| (*id, *i)).collect(),
        );
        bincode::encode_to_vec(head, bincode::config::standard()).expect("to memory")
    }

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
}

const IDENTITY_MAGIC: &[u8; 8] = b"FLNTSNID";

/// Which snapshot a `MsgSnapshot` offers a follower (see `cluster::transfer`): what
/// the offer carries in place of the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its Raft index.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// Its file name in the sender's directory (`<index>.rsnap`).
    pub file: String,
    /// The file's size.
    pub size: u64,
    /// Its body checksum.
    pub checksum: u32,
}

impl Identity {
    /// The bytes a `MsgSnapshot`'s data carries.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(48 + self.file.len());
        b.extend_from_slice(IDENTITY_MAGIC);
        for v in [self.index, self.term, self.size] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.checksum.to_le_bytes());
        b.extend_from_slice(self.file.as_bytes());
        b
    }

    /// Reads what [`Identity::encode`] wrote.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn decode(b: &[u8]) -> Result<Identity, String> {
        if b.len() < 36 || &b[..8] != IDENTITY_MAGIC {
            return Err("not a snapshot identity".into());
        }
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let file = String::from_utf8(b[36..].to_vec()).map_err(|e| e.to_string())?;
        if crate::core::layout::parse_raft_snapshot(&file).is_none() {
            return Err(format!("{file:?} is not a cluster snapshot's name"));
        }
        Ok(Identity {
            index: u64_at(8),
            term: u64_at(16),
            size: u64_at(24),
            checksum: u32::from_le_bytes(b[32..36].try_into().expect("4 bytes")),
            file,
        })
    }

    /// The identity of snapshot `file` (of this node), whose entry has term `term`.
    pub fn of(file: &SnapshotFile, term: u64) -> Identity {
        Identity {
            index: file.offset.get(),
            term,
            file: file.file.clone(),
            size: file.size_bytes,
            checksum: file.checksum,
        }
    }

    /// Where the follower keeps what it received so far.
    pub fn part_name(&self) -> String {
        crate::core::layout::snapshot_part(&self.file, self.checksum)
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
    sync_chunk: u64,
) -> std::io::Result<SnapshotFile> {
    snapshot::write_machine(
        fs,
        dir,
        layout::raft_snapshot(image.index()),
        image.index(),
        &image.head(),
        &image.machine.kv,
        sync_chunk,
    )
}

/// Reads and verifies the snapshot `name` in `dir`.
///
/// # Errors
/// What is wrong with it.
pub fn read(fs: &dyn FileSystem, dir: &Path, name: &str) -> Result<(Image, SnapshotFile), String> {
    let index = layout::parse_raft_snapshot(name).ok_or("not a cluster snapshot's name")?;
    read_as(fs, dir, name, index)
}

/// Reads and verifies the file `name` in `dir` as the snapshot at `index` (a snapshot
/// received under a temporary name).
///
/// # Errors
/// What is wrong with it.
pub fn read_as(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    index: u64,
) -> Result<(Image, SnapshotFile), String> {
    let file = snapshot::read_machine(fs, &join(dir, name))?;
    if file.index != index {
        return Err(format!("its header says index {}", file.index));
    }
    let info = SnapshotFile {
        file: name.to_string(),
        offset: Offset::from_disk(file.index),
        size_bytes: file.size_bytes,
        checksum: file.checksum,
    };
    Ok((Image::from_parts(file)?, info))
}

/// The newest snapshot among `on_disk` (as `(index, name)`) that verifies and from
/// which the log continues (its index at least `first_index - 1`); damaged ones are
/// skipped with a warning. `Ok(None)` when there is none and the log was never
/// compacted (`first_index` 1: the state is rebuilt from the whole log).
///
/// # Errors
/// The log was compacted and no snapshot reaches it: starting would lose the
/// compacted entries' effects.
pub fn load(
    fs: &dyn FileSystem,
    dir: &Path,
    on_disk: &[(u64, String)],
    first_index: u64,
) -> crate::Result<Option<(Image, SnapshotFile)>> {
    for (index, name) in on_disk.iter().rev() {
        if *index + 1 < first_index {
            break;
        }
        match read(fs, dir, name) {
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
    use crate::fs::sim::SimFs;

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
        let file = write(&fs, dir, &image, 4096).unwrap();
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
        snapshot::write_machine(&fs, dir, name.clone(), 20, &head, &m.kv, 4096).unwrap();
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
        let old_file = write(&fs, dir, &sample(10), 4096).unwrap();
        let new_file = write(&fs, dir, &sample(20), 4096).unwrap();
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
            let file = write(&fs, dir, &image, 4096).unwrap();
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
    }
}

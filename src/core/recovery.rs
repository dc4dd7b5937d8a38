//! Recovery planning, pure: what each file in a node's directory is (decided from its
//! name), which snapshot chain recovery loads (decided from what reading each file
//! found, handed in by the caller), and where the log's replay starts. `Node::open` and
//! `flintlog verify`/`inspect` both follow this one plan (through `survey::survey`).

use crate::core::layout::{self, BROKEN_SUFFIX, LOCK, META, RAFT_INSTALL, RAFT_STATE, TEMP_SUFFIX};
use crate::error::{Error, Result};

/// The directory's files, sorted into what recovery does with them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DirListing {
    /// Log segments, `(start offset, name)`, in offset order.
    pub segments: Vec<(u64, String)>,
    /// Snapshots and deltas, `(offset, name)`, in offset order.
    pub snapshots: Vec<(u64, String)>,
    /// A cluster node's snapshots, `(Raft index, name)`, in index order.
    pub raft_snapshots: Vec<(u64, String)>,
    /// Whether `log.meta` exists.
    pub meta: bool,
    /// Whether `raft.state` exists: the log is a cluster node's Raft log.
    pub raft_state: bool,
    /// Whether `raft.install` exists: an interrupted install of a snapshot.
    pub raft_install: bool,
    /// Cluster snapshots partly received from another member (kept to resume).
    pub parts: Vec<String>,
    /// Leftover temporary files of an interrupted write: removed.
    pub temps: Vec<String>,
    /// Bytes kept from earlier repairs: left alone.
    pub broken: Vec<String>,
    /// Markers of segments being cut shorter and grown back (`layout::cut_marker`):
    /// the log's recovery reads and removes them.
    pub cuts: Vec<String>,
    /// Files that are none of the node's: ignored and logged.
    pub foreign: Vec<String>,
}

/// Sorts a directory's names.
pub fn classify(names: impl IntoIterator<Item = String>) -> DirListing {
    let mut out = DirListing::default();
    for name in names {
        if let Some(start) = layout::parse_segment(&name) {
            out.segments.push((start, name));
        } else if let Some(offset) = layout::parse_snapshot(&name) {
            out.snapshots.push((offset, name));
        } else if let Some(index) = layout::parse_raft_snapshot(&name) {
            out.raft_snapshots.push((index, name));
        } else if name == META {
            out.meta = true;
        } else if name == RAFT_STATE {
            out.raft_state = true;
        } else if name == RAFT_INSTALL {
            out.raft_install = true;
        } else if name.ends_with(layout::PART_SUFFIX) {
            out.parts.push(name);
        } else if name.ends_with(TEMP_SUFFIX) {
            out.temps.push(name);
        } else if name.ends_with(BROKEN_SUFFIX) {
            out.broken.push(name);
        } else if name.ends_with(layout::CUT_SUFFIX) {
            out.cuts.push(name);
        } else if name != LOCK && name != layout::SHIP_ID {
            out.foreign.push(name);
        }
    }
    out.segments.sort();
    out.snapshots.sort();
    out.raft_snapshots.sort();
    out.temps.sort();
    out.broken.sort();
    out.cuts.sort();
    out.foreign.sort();
    out
}

/// What reading one snapshot file found: its identity, and whatever the caller loaded
/// from it (`body`: the state of a full snapshot, the changes of a delta).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe<T> {
    /// The offset its header gives.
    pub offset: u64,
    /// Its body checksum: its identity, which a delta names its parent by.
    pub checksum: u32,
    /// For a delta: the offset and checksum of the file it builds on.
    pub parent: Option<(u64, u32)>,
    /// The file's size.
    pub size_bytes: u64,
    /// What the caller loaded.
    pub body: T,
}

/// One file of the chosen chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link<T> {
    /// File name.
    pub file: String,
    /// What reading it found.
    pub probe: Probe<T>,
}

/// Where recovery starts from, decided before the log is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPlan<T> {
    /// First live offset (from `log.meta`).
    pub first_offset: u64,
    /// The chain to load: a full snapshot, then its deltas in order; empty to replay
    /// the whole log from offset 0.
    pub chain: Vec<Link<T>>,
    /// Snapshot files newer than the chain's tip that recovery moves aside, with why.
    pub skipped: Vec<(String, String)>,
}

impl<T> RecoveryPlan<T> {
    /// The offset the log's replay starts from: the chain's tip, or 0.
    pub fn replay_from(&self) -> u64 {
        self.chain.last().map_or(0, |l| l.probe.offset)
    }
}

/// Picks the newest snapshot chain that verifies up to a tip at or past the log's first
/// offset (an older tip cannot connect to the log): the newest full snapshot that
/// verifies, then its deltas in order for as long as each verifies and builds on the
/// one before. Every newer file left out is listed in `skipped`. `probe` reads one file
/// (a full snapshot or a delta, by name), or says why it does not verify; it is called
/// only for the files the choice needs, newest chain first.
///
/// # Errors
/// [`Error::Open`] when the log was compacted (`first_offset` > 0) and no verified
/// chain reaches it: starting from less would lose the compacted state. `dir` names
/// the directory in that message.
pub fn plan<T>(
    dir: &str,
    snapshots: &[(u64, String)],
    first_offset: u64,
    probe: &mut dyn FnMut(&str) -> std::result::Result<Probe<T>, String>,
) -> Result<RecoveryPlan<T>> {
    let mut skipped: Vec<(String, String)> = Vec::new();
    let bases: Vec<usize> = (0..snapshots.len())
        .filter(|&i| !layout::is_delta(&snapshots[i].1))
        .collect();
    let mut chosen: Vec<Link<T>> = Vec::new();
    for (n, &b) in bases.iter().enumerate().rev() {
        // This chain's files end before the next full snapshot.
        let end = bases.get(n + 1).copied().unwrap_or(snapshots.len());
        if snapshots[b..end].iter().all(|(o, _)| *o < first_offset) {
            break; // older chains reach even less far
        }
        let (offset, name) = &snapshots[b];
        let base = match probe(name) {
            Ok(p) if p.offset == *offset && p.parent.is_none() => p,
            Ok(p) if p.offset != *offset => {
                let why = format!("header says offset {}, the name says {offset}", p.offset);
                skipped.push((name.clone(), why));
                continue;
            }
            Ok(_) => {
                skipped.push((name.clone(), "a full snapshot's name on a delta".into()));
                continue;
            }
            Err(why) => {
                skipped.push((name.clone(), why));
                continue;
            }
        };
        let mut chain = vec![Link {
            file: name.clone(),
            probe: base,
        }];
        for (d_offset, d_name) in &snapshots[b + 1..end] {
            let tip = &chain.last().expect("a base").probe;
            match probe(d_name) {
                Ok(d) if d.offset == *d_offset && d.parent == Some((tip.offset, tip.checksum)) => {
                    chain.push(Link {
                        file: d_name.clone(),
                        probe: d,
                    });
                }
                Ok(d) => {
                    let tip_file = &chain.last().expect("a base").file;
                    let why = match d.parent {
                        _ if d.offset != *d_offset => {
                            format!("header says offset {}, the name says {d_offset}", d.offset)
                        }
                        Some((po, pc)) => format!(
                            "builds on offset {po} (checksum {pc:08x}), not on {tip_file} \
                             (checksum {:08x})",
                            tip.checksum
                        ),
                        None => "a delta's name on a full snapshot".into(),
                    };
                    skipped.push((d_name.clone(), why));
                    break;
                }
                Err(why) => {
                    skipped.push((d_name.clone(), why));
                    break;
                }
            }
        }
        if chain.last().expect("a base").probe.offset < first_offset {
            // A damaged delta cut this chain short of what the log still holds.
            break;
        }
        chosen = chain;
        break;
    }
    // Every newer file left out goes aside with its reason (or as orphaned).
    let tip_offset = chosen.last().map(|l| l.probe.offset);
    for (offset, name) in snapshots {
        if tip_offset.is_none_or(|t| *offset > t) && !skipped.iter().any(|(n, _)| n == name) {
            skipped.push((
                name.clone(),
                "builds on a snapshot file that did not verify".into(),
            ));
        }
    }
    if chosen.is_empty() && first_offset > 0 {
        let tried = if skipped.is_empty() {
            "none found".to_string()
        } else {
            skipped
                .iter()
                .map(|(n, w)| format!("{n}: {w}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(Error::Open(format!(
            "{dir}: the log was compacted to offset {first_offset}, but no verified snapshot at or \
             after it exists (snapshots: {tried}); refusing to start without the compacted state"
        )));
    }
    Ok(RecoveryPlan {
        first_offset,
        chain: chosen,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_every_kind_of_file() {
        let names = [
            "00000000000000000010.log",
            "00000000000000000000.log",
            "00000000000000000005.snap",
            "00000000000000000005.snap.tmp",
            "00000000000000000020.log.tmp",
            "log.meta",
            "log.meta.tmp",
            "00000000000000000010.log.64.broken",
            "LOCK",
            "ship.id",
            "notes.txt",
            "1.log",
        ];
        let l = classify(names.iter().map(|s| s.to_string()));
        assert_eq!(
            l.segments,
            vec![(0, names[1].into()), (10, names[0].into())]
        );
        assert_eq!(l.snapshots, vec![(5, names[2].into())]);
        assert!(l.meta);
        assert_eq!(
            l.temps,
            vec![
                "00000000000000000005.snap.tmp",
                "00000000000000000020.log.tmp",
                "log.meta.tmp"
            ]
        );
        assert_eq!(l.broken, vec!["00000000000000000010.log.64.broken"]);
        assert_eq!(l.foreign, vec!["1.log", "notes.txt"]);
    }

    use std::collections::BTreeMap;

    /// A directory's snapshot files as the planner sees them: each name with what
    /// reading it gives (`Err` for damage). Full snapshots have no parent.
    struct Disk(BTreeMap<String, std::result::Result<Probe<()>, String>>);

    fn full(offset: u64, checksum: u32) -> std::result::Result<Probe<()>, String> {
        Ok(Probe {
            offset,
            checksum,
            parent: None,
            size_bytes: 100,
            body: (),
        })
    }

    fn delta(
        offset: u64,
        checksum: u32,
        parent: (u64, u32),
    ) -> std::result::Result<Probe<()>, String> {
        Ok(Probe {
            offset,
            checksum,
            parent: Some(parent),
            size_bytes: 10,
            body: (),
        })
    }

    impl Disk {
        fn new(files: &[(&str, std::result::Result<Probe<()>, String>)]) -> Disk {
            Disk(
                files
                    .iter()
                    .map(|(n, p)| (n.to_string(), p.clone()))
                    .collect(),
            )
        }

        /// Plans, returning the chain's file names, the skipped names, and the names
        /// probed in order.
        fn plan(&self, first_offset: u64) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
            let listing = classify(self.0.keys().cloned());
            let mut probed = Vec::new();
            let plan = plan("/d", &listing.snapshots, first_offset, &mut |name| {
                probed.push(name.to_string());
                self.0[name].clone()
            })?;
            let chain = plan.chain.iter().map(|l| l.file.clone()).collect();
            let skipped = plan.skipped.iter().map(|(n, _)| n.clone()).collect();
            Ok((chain, skipped, probed))
        }
    }

    const S10: &str = "00000000000000000010.snap";
    const D15: &str = "00000000000000000015.delta";
    const D18: &str = "00000000000000000018.delta";
    const S20: &str = "00000000000000000020.snap";
    const D25: &str = "00000000000000000025.delta";

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_snapshot_replays_from_zero_unless_the_log_was_compacted() {
        let (chain, skipped, _) = Disk::new(&[]).plan(0).unwrap();
        assert!(chain.is_empty() && skipped.is_empty());
        let err = Disk::new(&[]).plan(5).unwrap_err().to_string();
        assert!(
            err.contains("compacted to offset 5") && err.contains("none found"),
            "{err}"
        );
    }

    #[test]
    fn the_newest_chain_that_verifies_is_loaded_whole() {
        let disk = Disk::new(&[
            (S10, full(10, 1)),
            (D15, delta(15, 2, (10, 1))),
            (S20, full(20, 3)),
            (D25, delta(25, 4, (20, 3))),
        ]);
        let (chain, skipped, probed) = disk.plan(0).unwrap();
        assert_eq!(chain, names(&[S20, D25]));
        assert!(skipped.is_empty());
        // The older chain is never read.
        assert_eq!(probed, names(&[S20, D25]));
    }

    #[test]
    fn a_damaged_newest_full_snapshot_falls_back_to_the_older_chain() {
        let disk = Disk::new(&[
            (S10, full(10, 1)),
            (D15, delta(15, 2, (10, 1))),
            (S20, Err("checksum mismatch".into())),
            (D25, delta(25, 4, (20, 3))),
        ]);
        let (chain, skipped, _) = disk.plan(0).unwrap();
        assert_eq!(chain, names(&[S10, D15]));
        // The damaged file and the delta built on it go aside.
        assert_eq!(skipped, names(&[S20, D25]));
    }

    #[test]
    fn a_damaged_delta_ends_the_chain_at_the_last_good_file() {
        let disk = Disk::new(&[
            (S10, full(10, 1)),
            (D15, Err("truncated".into())),
            (D18, delta(18, 3, (15, 2))),
        ]);
        let (chain, skipped, _) = disk.plan(0).unwrap();
        assert_eq!(chain, names(&[S10]));
        assert_eq!(skipped, names(&[D15, D18]));
    }

    #[test]
    fn a_delta_naming_another_parent_ends_the_chain() {
        let disk = Disk::new(&[(S10, full(10, 1)), (D15, delta(15, 2, (10, 99)))]);
        let plan_err = disk.plan(0).unwrap();
        assert_eq!(plan_err.0, names(&[S10]));
        assert_eq!(plan_err.1, names(&[D15]));
    }

    #[test]
    fn a_header_disagreeing_with_the_name_is_damage() {
        let disk = Disk::new(&[(S10, full(10, 1)), (S20, full(21, 3))]);
        let (chain, skipped, _) = disk.plan(0).unwrap();
        assert_eq!((chain, skipped), (names(&[S10]), names(&[S20])));
    }

    #[test]
    fn a_chain_cut_short_of_the_compacted_log_refuses_to_start() {
        // Compacted to 18: the chain must reach 18, and D15's damage stops it at 10.
        let disk = Disk::new(&[
            (S10, full(10, 1)),
            (D15, Err("bad checksum".into())),
            (D18, delta(18, 3, (15, 2))),
        ]);
        let err = disk.plan(18).unwrap_err().to_string();
        assert!(
            err.contains("compacted to offset 18") && err.contains("bad checksum"),
            "{err}"
        );
        // Compacted only to 10: the base alone reaches it.
        assert_eq!(disk.plan(10).unwrap().0, names(&[S10]));
    }

    #[test]
    fn chains_wholly_below_the_first_offset_are_not_read() {
        let listing = classify([S10.to_string()]);
        let mut probed = 0;
        let result = plan("/d", &listing.snapshots, 15, &mut |_| {
            probed += 1;
            full(10, 1)
        });
        assert!(
            result.is_err(),
            "a chain below the first offset cannot be loaded"
        );
        assert_eq!(probed, 0);
    }
}

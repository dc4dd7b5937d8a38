//! Which chain recovery loads: the plan of `core::recovery`, over files read here.

use super::*;

/// The snapshot chain recovery loads, and the newer files it had to skip.
#[derive(Debug)]
pub struct Chosen {
    /// The tip of the newest chain that verifies (a full snapshot, or the last delta
    /// of its longest verified prefix), if any.
    pub snapshot: Option<SnapshotFile>,
    /// The files of that chain, the full snapshot first.
    pub chain: Vec<SnapshotFile>,
    /// The state at the tip (empty without one).
    pub state: KvState,
    /// Newer files that did not verify, or that build on one that did not:
    /// `(file name, why)`.
    pub skipped: Vec<(String, String)>,
}

/// What a snapshot file holds, once read and verified.
pub(super) enum Body {
    Full(KvState),
    Delta {
        changes: Vec<Change>,
        other_payloads: u64,
    },
}

/// Reads and verifies the snapshot or delta `name` in `dir`, for the planner.
pub(super) fn probe(fs: &dyn FileSystem, dir: &Path, name: &str) -> Result<Probe<Body>, String> {
    let path = dir.join(name);
    let size_bytes = fs.open(&path, false).and_then(|f| f.len()).unwrap_or(0);
    if is_delta(name) {
        let d = read_delta(fs, &path)?;
        Ok(Probe {
            offset: d.offset,
            checksum: d.checksum,
            parent: Some((d.parent_offset, d.parent_checksum)),
            size_bytes,
            body: Body::Delta {
                changes: d.changes,
                other_payloads: d.other_payloads,
            },
        })
    } else {
        let (offset, checksum, state) = read_full(fs, &path)?;
        Ok(Probe {
            offset,
            checksum,
            parent: None,
            size_bytes,
            body: Body::Full(state),
        })
    }
}

/// Loads the chain recovery's plan ([`recovery::plan`]) picks among `snapshots` in
/// `dir`: the newest chain that verifies up to a tip at or past the log's first
/// offset. Every newer file left out is reported in `skipped`.
///
/// # Errors
/// [`crate::Error::Open`] when the log was compacted (`first_offset` > 0) and no
/// verified chain reaches it: starting from less would lose the compacted state.
pub fn choose(
    fs: &dyn FileSystem,
    dir: &Path,
    snapshots: &[(u64, String)],
    first_offset: Offset,
) -> crate::Result<Chosen> {
    let plan = recovery::plan(
        &dir.display().to_string(),
        snapshots,
        first_offset.get(),
        &mut |name| probe(fs, dir, name),
    )?;
    for (name, why) in &plan.skipped {
        log::warn!("skipping snapshot file {name}: {why}");
    }
    let mut state = KvState::default();
    let mut chain = Vec::new();
    for link in plan.chain {
        match link.probe.body {
            Body::Full(s) => state = s,
            Body::Delta {
                changes,
                other_payloads,
            } => state.apply_changes(&changes, other_payloads),
        }
        chain.push(SnapshotFile {
            file: link.file,
            offset: Offset::from_disk(link.probe.offset),
            size_bytes: link.probe.size_bytes,
            checksum: link.probe.checksum,
        });
    }
    match chain.last() {
        Some(tip) => log::info!(
            "loaded snapshot chain {} ({} deltas) up to offset {}: {} keys",
            chain[0].file,
            chain.len() - 1,
            tip.offset,
            state.map.len()
        ),
        None if !snapshots.is_empty() => {
            log::warn!("no snapshot verified; replaying the whole log from offset 0")
        }
        None => {}
    }
    Ok(Chosen {
        snapshot: chain.last().cloned(),
        chain,
        state,
        skipped: plan.skipped,
    })
}

/// The cluster snapshot a Raft log in `dir` restarts from: the newest of `snapshots`
/// (`(index, name)`) that verifies and that the log, compacted to `first_offset`,
/// continues (index `first_offset + 1` is the first live record's). The consensus
/// layer decodes its head; this checks its bytes, for `verify` and `inspect`.
///
/// # Errors
/// [`crate::Error::Open`] when the log was compacted and no verified snapshot reaches
/// it.
pub fn choose_machine(
    fs: &dyn FileSystem,
    dir: &Path,
    snapshots: &[(u64, String)],
    first_offset: Offset,
) -> crate::Result<Chosen> {
    let first = first_offset.get();
    let mut skipped = Vec::new();
    for (index, name) in snapshots.iter().rev() {
        if first > 0 && *index < first + 1 {
            break;
        }
        match read::read_machine_chain(fs, dir, snapshots, name) {
            Ok((m, chain)) if m.index == *index => {
                return Ok(Chosen {
                    snapshot: chain.last().cloned(),
                    chain,
                    state: m.state,
                    skipped,
                });
            }
            Ok((m, _)) => {
                skipped.push((name.clone(), format!("its header says index {}", m.index)))
            }
            Err(why) => skipped.push((name.clone(), why)),
        }
    }
    if first > 0 {
        return Err(crate::Error::Open(format!(
            "{}: the Raft log was compacted to offset {first} and no cluster snapshot that \
             verifies reaches it",
            dir.display()
        )));
    }
    Ok(Chosen {
        snapshot: None,
        chain: Vec::new(),
        state: KvState::default(),
        skipped,
    })
}

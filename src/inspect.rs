//! Offline examination of a node's directory, for `flintlog verify` and
//! `flintlog inspect`. It runs the same checks as recovery (the same listing, snapshot
//! choice and log scan) and changes nothing: it says what recovery would do.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::core::layout;
use crate::core::policy;
use crate::core::position::Offset;
use crate::core::recovery::{self, DirListing};
use crate::fs::FileSystem;
use crate::snapshot;
use crate::survey;
use crate::wal::{self, ScannedSegment, TornTail};

/// A snapshot file and what reading it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotReport {
    /// File name.
    pub file: String,
    /// Offset its name gives.
    pub offset: u64,
    /// File size.
    pub size_bytes: u64,
    /// `None` if it verifies, else why not.
    pub damage: Option<String>,
    /// Keys it holds (when it verifies); for a delta, the keys it sets or deletes.
    pub keys: Option<u64>,
}

/// What an examination found.
#[derive(Debug, Clone, Default)]
pub struct Examination {
    /// The directory examined.
    pub dir: PathBuf,
    /// First live offset (from `log.meta`).
    pub first_offset: Offset,
    /// Offset the next entry would get.
    pub next_offset: Offset,
    /// Live segments.
    pub segments: Vec<ScannedSegment>,
    /// Every snapshot file, oldest first.
    pub snapshots: Vec<SnapshotReport>,
    /// The snapshot recovery would load (the tip of the chain it would load).
    pub snapshot_used: Option<String>,
    /// The files of that chain, the full snapshot first.
    pub snapshot_chain: Vec<String>,
    /// The offset that snapshot covers.
    pub snapshot_offset: Option<Offset>,
    /// Entries recovery would replay on top of it.
    pub entries_to_replay: u64,
    /// Keys after recovery.
    pub keys: u64,
    /// A torn tail recovery would cut.
    pub torn_tail: Option<TornTail>,
    /// Temp files recovery would remove.
    pub temp_files: Vec<String>,
    /// Segments an interrupted compaction left, which recovery would delete.
    pub compacted_leftovers: Vec<String>,
    /// Files set aside by earlier recoveries.
    pub broken_files: Vec<String>,
    /// Files that are not the node's.
    pub foreign_files: Vec<String>,
    /// Why recovery would refuse to start, if it would.
    pub refusal: Option<String>,
    /// Whether this is a cluster node's Raft log (`raft.state` is there): its records
    /// are checked as a single node's are, but its payloads are Raft entries, not
    /// commands, so no key is replayed.
    pub raft_log: bool,
    /// On a cluster node: who it is in its group and its hard state, as `raft.state`
    /// records them (`term`, `vote`, `commit`; the commit index may lag).
    pub raft_member: Option<(crate::raftlog::Identity, [u64; 3])>,
    /// The process holding the directory's lock, when a node runs on it: the
    /// examination then sees a directory that is changing, and its temp files are the
    /// node's work in progress, not debris.
    pub in_use_by: Option<String>,
}

impl Examination {
    /// Whether anything is damaged: recovery would refuse, or a snapshot does not verify.
    /// Crash debris that recovery cleans up (a torn tail, temp files, an unfinished
    /// compaction) is not damage.
    pub fn damaged(&self) -> bool {
        self.refusal.is_some() || self.snapshots.iter().any(|s| s.damage.is_some())
    }
}

/// Examines `dir` (a node's own directory) without changing it.
pub fn examine(fs: &dyn FileSystem, dir: &Path) -> Examination {
    let mut ex = Examination {
        dir: dir.to_path_buf(),
        ..Examination::default()
    };
    let survey = match survey::survey(fs, dir) {
        Ok(survey) => survey,
        Err(e) => {
            // Still report every file the listing shows.
            if let Ok(names) = fs.list(dir) {
                report_files(fs, dir, &mut ex, &recovery::classify(names));
            }
            ex.refusal = Some(e.text().to_string());
            return ex;
        }
    };
    report_files(fs, dir, &mut ex, &survey.listing);
    ex.raft_log = survey.listing.raft_state;
    if ex.raft_log {
        match crate::raftlog::read_raft_state(fs, dir) {
            Ok(found) => {
                ex.raft_member = found.map(|(who, hs)| (who, [hs.term, hs.vote, hs.commit]));
            }
            Err(e) => ex.refusal = Some(e.text().to_string()),
        }
    }
    ex.first_offset = survey.first_offset;
    let replay_from = survey.replay_from();
    let chosen = survey.chosen;
    ex.snapshot_offset = chosen.snapshot.as_ref().map(|s| s.offset);
    ex.snapshot_used = chosen.snapshot.map(|s| s.file);
    ex.snapshot_chain = chosen.chain.iter().map(|f| f.file.clone()).collect();
    let mut state = chosen.state;
    let result = wal::scan(
        fs,
        dir,
        survey.listing.segments.clone(),
        &survey.log_start,
        replay_from,
        &mut |_, p| {
            if !ex.raft_log {
                state.apply(p);
            }
        },
    )
    .map(|scan| {
        ex.keys = state.map.len() as u64;
        ex.entries_to_replay = scan.entries_replayed;
        ex.next_offset = scan.next_offset().max(ex.first_offset);
        ex.segments = scan.segments;
        ex.torn_tail = scan.torn_tail;
        ex.compacted_leftovers = scan.compacted_leftovers;
    });
    if let Err(e) = result {
        ex.refusal = Some(e.text().to_string());
    }
    ex
}

/// The files of `listing` that need no plan: temp, broken and foreign files, and what
/// reading each snapshot file finds.
fn report_files(fs: &dyn FileSystem, dir: &Path, ex: &mut Examination, listing: &DirListing) {
    ex.temp_files = listing.temps.clone();
    ex.broken_files = listing.broken.clone();
    ex.foreign_files = listing.foreign.clone();
    let all = listing.snapshots.iter().chain(&listing.raft_snapshots);
    for (offset, name) in all {
        let path = dir.join(name);
        let size_bytes = fs.open(&path, false).and_then(|f| f.len()).unwrap_or(0);
        // For a delta, `keys` counts the keys it sets or deletes; a cluster snapshot's
        // "offset" is its Raft index.
        let read = if layout::is_raft_delta(name) {
            snapshot::read_machine_delta(fs, &path)
                .map(|m| (m.delta.offset, m.delta.changes.len() as u64))
        } else if layout::parse_raft_snapshot(name).is_some() {
            snapshot::read_machine(fs, &path).map(|m| (m.index, m.state.map.len() as u64))
        } else if snapshot::is_delta(name) {
            snapshot::read_delta(fs, &path).map(|d| (d.offset, d.changes.len() as u64))
        } else {
            snapshot::read(fs, &path).map(|(o, state)| (o, state.map.len() as u64))
        };
        let (damage, keys) = match read {
            Ok((o, _)) if o != *offset => (
                Some(format!("header says offset {o}, the name says {offset}")),
                None,
            ),
            Ok((_, keys)) => (None, Some(keys)),
            Err(why) => (Some(why), None),
        };
        ex.snapshots.push(SnapshotReport {
            file: name.clone(),
            offset: *offset,
            size_bytes,
            damage,
            keys,
        });
    }
}

/// `n` and the noun, plural when `n` is not 1 ("1 entry", "2 entries").
fn count(n: u64, noun: &str) -> String {
    format!("{n} {}", plural(n, noun))
}

/// The noun, plural when `n` is not 1 ("key"/"keys", "entry"/"entries").
fn plural(n: u64, noun: &str) -> String {
    let consonant_y = noun.ends_with('y') && !noun.ends_with("ey") && !noun.ends_with("ay");
    match n {
        1 => noun.to_string(),
        _ if consonant_y => format!("{}ies", &noun[..noun.len() - 1]),
        _ => format!("{noun}s"),
    }
}

/// The live offsets, as `verify` and `inspect` both print them: `[first, next)` and
/// the count of live entries.
fn range(ex: &Examination) -> String {
    let live = ex.next_offset.since(ex.first_offset);
    format!(
        "[{}, {}) ({live} live {})",
        ex.first_offset,
        ex.next_offset,
        plural(live, "entry")
    )
}

/// The `verify` report, one finding a line; the last line is `OK` or `DAMAGED`.
pub fn verify_report(ex: &Examination) -> String {
    let mut out = format!("flintlog verify {}\n", ex.dir.display());
    if let Some(who) = &ex.in_use_by {
        out.push_str(&format!(
            "  in use by a running node ({who}): this is a look at a directory that is changing\n"
        ));
    }
    if ex.raft_log {
        out.push_str(
            "  a cluster node's Raft log (raft.state): its records are checked; its entries \
             are Raft's, so no key is replayed\n",
        );
    }
    if let Some(why) = &ex.refusal {
        out.push_str(&format!("  recovery would refuse to start: {why}\n"));
    } else {
        out.push_str(&format!(
            "  log: {}, offsets {}: headers, checksums and continuity verified\n",
            count(ex.segments.len() as u64, "segment"),
            range(ex),
        ));
        match &ex.snapshot_used {
            Some(s) => out.push_str(&format!(
                "  recovery would load snapshot {s} and replay {}: {}\n",
                count(ex.entries_to_replay, "entry"),
                count(ex.keys, "key")
            )),
            None => out.push_str(&format!(
                "  no snapshot: recovery would replay {}: {}\n",
                count(ex.entries_to_replay, "entry"),
                count(ex.keys, "key")
            )),
        }
    }
    for s in &ex.snapshots {
        if let Some(why) = &s.damage {
            out.push_str(&format!("  damaged snapshot {}: {why}\n", s.file));
        }
    }
    if let Some(t) = &ex.torn_tail {
        out.push_str(&format!(
            "  recovery would cut a torn tail of {} bytes from byte {} of {} (offset {}), keeping it in a .broken file\n",
            t.to - t.from,
            t.from,
            t.name,
            t.offset
        ));
    }
    if !ex.temp_files.is_empty() && ex.in_use_by.is_some() {
        out.push_str(&format!(
            "  files the running node is writing (the next segment, a snapshot): {}\n",
            ex.temp_files.join(", ")
        ));
    } else if !ex.temp_files.is_empty() {
        out.push_str(&format!(
            "  recovery would remove leftover temp files: {}\n",
            ex.temp_files.join(", ")
        ));
    }
    if !ex.compacted_leftovers.is_empty() {
        out.push_str(&format!(
            "  recovery would finish a compaction by deleting: {}\n",
            ex.compacted_leftovers.join(", ")
        ));
    }
    if !ex.foreign_files.is_empty() {
        out.push_str(&format!(
            "  foreign files (ignored): {}\n",
            ex.foreign_files.join(", ")
        ));
    }
    out.push_str(if ex.damaged() { "DAMAGED\n" } else { "OK\n" });
    out
}

/// The `inspect` tables.
pub fn inspect_table(ex: &Examination) -> String {
    let mut out = format!("directory     {}\n", ex.dir.display());
    if let Some(who) = &ex.in_use_by {
        out.push_str(&format!(
            "in use by     {who} (a running node: the figures are changing)\n"
        ));
    }
    out.push_str(&format!("offsets       {}\n", range(ex)));
    if ex.raft_log {
        out.push_str("kind          a cluster node's Raft log (offset i is Raft index i + 1)\n");
    }
    if let Some((who, [term, vote, commit])) = &ex.raft_member {
        let founded = match who.founders.as_slice() {
            [] => "joined its group later".to_string(),
            f => format!("a founder of a group of {} ({f:?})", f.len()),
        };
        out.push_str(&format!(
            "member        Raft id {}, {founded}; incarnation {:016x}; term {term}, vote \
             {vote}, commit {commit} (as last recorded)\n",
            who.id, who.incarnation
        ));
    }
    if let Some(why) = &ex.refusal {
        out.push_str(&format!("problem       {why}\n"));
    }
    out.push_str(&format!(
        "\n{:<26} {:>20} {:>20} {:>9} {:>12} {:>12} {:>7}\n",
        "SEGMENT", "START", "END", "ENTRIES", "DATA BYTES", "FILE BYTES", "SEALED"
    ));
    let n = ex.segments.len();
    for (i, s) in ex.segments.iter().enumerate() {
        let end = if s.entries == 0 {
            "-".to_string()
        } else {
            (s.start + s.entries - 1).to_string()
        };
        out.push_str(&format!(
            "{:<26} {:>20} {:>20} {:>9} {:>12} {:>12} {:>7}\n",
            s.name,
            s.start,
            end,
            s.entries,
            s.data_end,
            s.file_bytes,
            if i + 1 < n { "yes" } else { "no" }
        ));
    }
    out.push_str(&format!(
        "\n{:<26} {:>20} {:>12} {:>9}  STATUS\n",
        "SNAPSHOT", "OFFSET", "BYTES", "KEYS"
    ));
    for s in &ex.snapshots {
        let status = match (
            &s.damage,
            ex.snapshot_used.as_deref() == Some(s.file.as_str()),
        ) {
            (Some(why), _) => format!("damaged: {why}"),
            (None, true) => "verified, used by recovery".to_string(),
            (None, false) => "verified".to_string(),
        };
        let keys = s.keys.map_or("-".to_string(), |k| k.to_string());
        out.push_str(&format!(
            "{:<26} {:>20} {:>12} {:>9}  {status}\n",
            s.file, s.offset, s.size_bytes, keys
        ));
    }
    if !ex.snapshot_chain.is_empty() {
        out.push_str(&format!(
            "\nchain loaded  {}\n",
            ex.snapshot_chain.join(" <- ")
        ));
    }
    out.push_str(&format!(
        "reclaimable   {} bytes (a compaction to the loaded snapshot)\n",
        ex.bytes_reclaimable()
    ));
    if let Some((file, why)) = ex.oldest_segment() {
        out.push_str(&format!("oldest kept   {file}: {why}\n"));
    }
    for (what, files) in [
        ("temp files", &ex.temp_files),
        ("broken files", &ex.broken_files),
        ("foreign files", &ex.foreign_files),
    ] {
        if !files.is_empty() {
            out.push_str(&format!("\n{what}: {}\n", files.join(", ")));
        }
    }
    out
}

impl Examination {
    /// Bytes of the sealed segments a compaction to the loaded snapshot would free.
    pub fn bytes_reclaimable(&self) -> u64 {
        let n = self.segments.len();
        self.segments
            .iter()
            .take(n.saturating_sub(1))
            .filter(|s| self.snapshot_offset.is_some_and(|o| s.end() <= o))
            .map(|s| s.file_bytes)
            .sum()
    }

    /// The oldest segment and why it is still there. Offline, the policy (and so the
    /// trailing entries a running node keeps) is unknown: none are assumed.
    pub fn oldest_segment(&self) -> Option<(String, &'static str)> {
        let n = self.segments.len();
        self.segments.first().map(|s| {
            (
                s.name.clone(),
                policy::keeper(n > 1, s.end(), self.snapshot_offset, 0).reason(),
            )
        })
    }
}

fn kind(file: &str) -> &'static str {
    if snapshot::is_delta(file) || layout::is_raft_delta(file) {
        "delta"
    } else {
        "full"
    }
}

/// The `inspect --json` document.
pub fn inspect_json(ex: &Examination) -> Value {
    let n = ex.segments.len();
    json!({
        "dir": ex.dir.display().to_string(),
        "first_offset": ex.first_offset.on_wire(),
        "next_offset": ex.next_offset.on_wire(),
        "entries": ex.next_offset.since(ex.first_offset),
        "keys": ex.keys,
        "segments": ex.segments.iter().enumerate().map(|(i, s)| json!({
            "file": s.name,
            "start_offset": s.start,
            "end_offset": if s.entries == 0 { Value::Null } else { json!(s.start + s.entries - 1) },
            "entries": s.entries,
            "size_bytes": s.data_end,
            "file_bytes": s.file_bytes,
            "sealed": i + 1 < n,
        })).collect::<Vec<_>>(),
        "snapshots": ex.snapshots.iter().map(|s| json!({
            "file": s.file,
            "kind": kind(&s.file),
            "offset": s.offset,
            "size_bytes": s.size_bytes,
            "keys": s.keys,
            "damage": s.damage,
            "used_by_recovery": ex.snapshot_used.as_deref() == Some(s.file.as_str()),
        })).collect::<Vec<_>>(),
        "log_management": {
            "snapshot_chain": ex.snapshot_chain,
            "bytes_reclaimable": ex.bytes_reclaimable(),
            "oldest_segment": ex.oldest_segment().map(|(file, why)| json!({"file": file, "kept_because": why})),
        },
        "recovery": {
            "snapshot": ex.snapshot_used,
            "entries_to_replay": ex.entries_to_replay,
            "torn_tail_bytes": ex.torn_tail.as_ref().map_or(0, |t| t.to - t.from),
            "temp_files": ex.temp_files,
            "compacted_leftovers": ex.compacted_leftovers,
            "refusal": ex.refusal,
        },
        "raft_log": ex.raft_log,
        "raft_member": ex.raft_member.as_ref().map(|(who, [term, vote, commit])| json!({
            "raft_id": who.id,
            "founders": who.founders,
            "incarnation": format!("{:016x}", who.incarnation),
            "term": term,
            "vote": vote,
            "commit": commit,
        })),
        "broken_files": ex.broken_files,
        "foreign_files": ex.foreign_files,
        "damaged": ex.damaged(),
    })
}

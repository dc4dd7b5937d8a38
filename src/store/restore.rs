//! Bringing chains back from the store: one chain fetched and verified into a
//! directory (`fetch_chain`, `fetch_file` for a follower's single file), a node's
//! directory restored from its newest chain that verifies (`restore`), and every chain
//! downloaded and checked (`verify`, the restore drill).

use super::*;

/// What [`restore`] did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The chain restored.
    pub manifest: Manifest,
    /// Newer chains that could not be restored, with why.
    pub skipped: Vec<(String, String)>,
    /// Bytes downloaded for the chain restored.
    pub bytes: u64,
    /// The shipped log replayed after the chain (a single node's).
    pub log: Replayed,
}

/// The shipped log a restore wrote after its chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Entries written, each verified.
    pub entries: u64,
    /// The offset after the last: where the restored node goes on.
    pub next: u64,
    /// Bytes downloaded.
    pub bytes: u64,
    /// When the object holding the last entry was written (ms since the Unix epoch).
    pub written_ms: Option<u64>,
    /// Why the log stopped there, when the store holds entries after it that a
    /// restore may not cross: a missing or damaged object.
    pub stopped: Option<String>,
}

/// Where a restore brings a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// The newest state the store holds: the newest chain that verifies, then its
    /// shipped log as far as it goes.
    Newest,
    /// The chain at this index, alone.
    Chain(u64),
    /// Entries `[0, n)`: the newest chain at or before `n`, then the shipped log up
    /// to `n`; refused if the store cannot reach exactly there.
    Offset(u64),
    /// The newest state the store held at this time (ms since the Unix epoch): the
    /// chains uploaded and the log shipped by then.
    Time(u64),
}

/// Downloads and verifies one chain into `dir` (each file made durable under its
/// name); removes what it wrote if anything is wrong.
///
/// # Errors
/// What is wrong: a missing object, a size or checksum that differs from the
/// manifest's, a file that does not verify as a snapshot, or a chain whose deltas do
/// not build on each other.
pub fn fetch_chain(
    store: &dyn SnapshotStore,
    fs: &dyn FileSystem,
    dir: &Path,
    m: &Manifest,
) -> Result<u64, String> {
    let mut written: Vec<String> = Vec::new();
    let result = (|| {
        let mut bytes = 0;
        for f in &m.files {
            let temp = layout::temp(&f.name);
            let mut file = fs
                .create(&join(dir, &temp))
                .map_err(|e| format!("cannot create {temp}: {e}"))?;
            written.push(temp.clone());
            let mut sink = Summing {
                inner: AtWriter {
                    file: &mut *file,
                    at: 0,
                },
                bytes: 0,
                crc: 0,
            };
            store
                .get(&f.object, &mut sink)
                .map_err(|e| format!("{}: {e}", f.object))?;
            sink.flush().map_err(|e| format!("writing {temp}: {e}"))?;
            let (got, crc) = (sink.bytes, sink.crc);
            if got != f.size || crc != f.crc32c {
                return Err(format!(
                    "{}: {got} bytes with checksum {crc:08x}, the manifest says {} bytes with \
                     {:08x}",
                    f.object, f.size, f.crc32c
                ));
            }
            file.sync_data()
                .map_err(|e| format!("cannot sync {temp}: {e}"))?;
            drop(file);
            bytes += got;
        }
        verify_chain(fs, dir, m)?;
        for f in &m.files {
            fs.rename(&join(dir, &layout::temp(&f.name)), &join(dir, &f.name))
                .map_err(|e| format!("cannot rename {}: {e}", f.name))?;
        }
        written.clear();
        fs.sync_dir(dir)
            .map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
        Ok(bytes)
    })();
    for temp in written {
        let _ = fs.remove(&join(dir, &temp));
    }
    result
}

/// Downloads a copy of cluster snapshot file `file` (of `size` bytes, body checksum
/// `checksum`) that some node put in the store into `path` (created or truncated),
/// synced; returns the object's name. Members' files of the same name may differ (a
/// delta at one index builds on each member's own chain): each candidate's header is
/// checked until one has that checksum. The caller verifies the whole file.
///
/// # Errors
/// No object of that file with that size and checksum is in the store, or the
/// download failed.
pub fn fetch_file(
    store: &dyn SnapshotStore,
    fs: &dyn FileSystem,
    path: &Path,
    file: &str,
    size: u64,
    checksum: u32,
) -> Result<String, String> {
    let candidates: Vec<String> = store
        .list("")
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|l| {
            l.size == store.stored_size(size)
                && l.name.split('/').nth(1) == Some("files")
                && l.name
                    .rsplit('/')
                    .next()
                    .and_then(|base| base.rsplit_once('.'))
                    .is_some_and(|(name, _crc)| name == file)
        })
        .map(|l| l.name)
        .collect();
    let mut why = format!("{file} ({size} bytes) is not in the store");
    for object in candidates {
        let mut f = fs
            .create(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let mut sink = AtWriter {
            file: &mut *f,
            at: 0,
        };
        let got = store
            .get(&object, &mut sink)
            .map_err(|e| format!("{object}: {e}"))?;
        if got != size {
            return Err(format!("{object}: {got} bytes, {size} expected"));
        }
        match crate::snapshot::peek_machine(fs, path) {
            Ok(found) if found.checksum == checksum => {
                f.sync_data()
                    .map_err(|e| format!("cannot sync {}: {e}", path.display()))?;
                return Ok(object);
            }
            Ok(found) => {
                why = format!(
                    "{object} is another {file} (checksum {:08x}, {checksum:08x} offered)",
                    found.checksum
                )
            }
            Err(e) => why = format!("{object}: {e}"),
        }
    }
    Err(why)
}

/// Verifies the chain's files downloaded under their temp names in `dir`: each file's
/// own checksums, its index, and each delta's parent.
fn verify_chain(fs: &dyn FileSystem, dir: &Path, m: &Manifest) -> Result<(), String> {
    let (base, deltas) = m.files.split_first().ok_or("no files")?;
    let path = |f: &ChainFile| join(dir, &layout::temp(&f.name));
    if layout::parse_raft_snapshot(&base.name).is_some() {
        // A group's chain: a cluster snapshot then its deltas, read through.
        let names: Vec<String> = m.files.iter().map(|f| layout::temp(&f.name)).collect();
        let (file, _) = crate::snapshot::read_machine_files(fs, dir, &names)?;
        if file.index != m.index || layout::is_raft_delta(&base.name) {
            return Err(format!(
                "the chain starts with {} and ends at index {}, the manifest says {}",
                base.name, file.index, m.index
            ));
        }
        return Ok(());
    }
    let mut tip = {
        let index = layout::parse_snapshot(&base.name).ok_or("not a full snapshot first")?;
        let (offset, checksum) = crate::snapshot::read_identified(fs, &path(base))
            .map(|(offset, checksum, _)| (offset, checksum))
            .map_err(|e| format!("{}: {e}", base.object))?;
        if offset != index {
            return Err(format!("{}: its header says offset {offset}", base.object));
        }
        (offset, checksum)
    };
    for d in deltas {
        let delta =
            crate::snapshot::read_delta(fs, &path(d)).map_err(|e| format!("{}: {e}", d.object))?;
        if (delta.parent_offset, delta.parent_checksum) != tip {
            return Err(format!(
                "{}: builds on offset {} ({:08x}), not on the file before it",
                d.object, delta.parent_offset, delta.parent_checksum
            ));
        }
        tip = (delta.offset, delta.checksum);
    }
    if tip.0 != m.index {
        return Err(format!(
            "the chain ends at {}, the manifest says {}",
            tip.0, m.index
        ));
    }
    Ok(())
}

/// The node ids that have chains in the store, sorted.
///
/// # Errors
/// The store could not be listed.
pub fn node_ids(store: &dyn SnapshotStore) -> Result<Vec<String>, String> {
    let (all, unreadable) = manifests(store).map_err(|e| format!("{}: {e}", store.url()))?;
    if all.is_empty()
        && let Some((name, why)) = unreadable.first()
    {
        // Say why rather than "no chain": an encrypted store read without its key,
        // most often.
        return Err(format!(
            "{}: no manifest could be read ({} in all); {name}: {why}",
            store.url(),
            unreadable.len()
        ));
    }
    let mut ids: Vec<String> = all.into_iter().map(|m| m.node).collect();
    // Nodes whose log was shipped before any chain of theirs was uploaded.
    let objects = store
        .list("")
        .map_err(|e| format!("{}: {e}", store.url()))?;
    for o in &objects {
        if shipped::parse(o).is_some()
            && let Some((node, _)) = o.name.split_once("/log/")
        {
            ids.push(node.to_string());
        }
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Materializes a data directory from the store: the newest chain of node `whose`
/// (any node's when `None`; or the newest at `index`) that downloads and verifies,
/// falling back to older ones of the same node and saying why.
/// `dir` must be absent or empty. The chain is assembled in `<dir>.restoring` and
/// renamed to `dir` once whole (with, for a single node's chain, an empty log that
/// starts at the chain's index), so an interrupted restore leaves no half directory.
///
/// # Errors
/// The store could not be listed, `dir` holds files, or no chain could be restored
/// (the message lists why for each).
pub fn restore(
    store: &dyn SnapshotStore,
    fs: &dyn FileSystem,
    dir: &Path,
    whose: Option<&str>,
    index: Option<u64>,
) -> Result<Restored, String> {
    restore_to(
        store,
        fs,
        dir,
        whose,
        index.map_or(Point::Newest, Point::Chain),
    )
}

/// [`restore`] to `point`: for a single node, its chain and then the shipped log
/// (see [`shipped`]) after it, each entry verified, written as the log's first
/// segment.
///
/// # Errors
/// As [`restore`]; and for [`Point::Offset`] and [`Point::Time`], a point before the
/// oldest chain or past what the shipped log reaches (the message names the oldest
/// and the newest points reachable).
pub fn restore_to(
    store: &dyn SnapshotStore,
    fs: &dyn FileSystem,
    dir: &Path,
    whose: Option<&str>,
    point: Point,
) -> Result<Restored, String> {
    if let Ok(present) = fs.list(dir)
        && !present.is_empty()
    {
        return Err(format!(
            "{} already holds {} (restore into an empty or new directory)",
            dir.display(),
            present.join(", ")
        ));
    }
    let name = dir
        .file_name()
        .ok_or_else(|| format!("{}: not a directory's path", dir.display()))?;
    let staging = dir.with_file_name(format!("{}.restoring", name.to_string_lossy()));
    if let Ok(leftovers) = fs.list(&staging) {
        for f in leftovers {
            fs.remove(&join(&staging, &f))
                .map_err(|e| format!("cannot clear {}: {e}", staging.display()))?;
        }
    }
    fs.create_dir_all(&staging)
        .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    let restored = restore_into(store, fs, &staging, dir, whose, point);
    if restored.is_err() {
        for f in fs.list(&staging).unwrap_or_default() {
            let _ = fs.remove(&join(&staging, &f));
        }
        let _ = std::fs::remove_dir(&staging);
    }
    restored
}

/// [`restore`]'s work once `staging` exists.
fn restore_into(
    store: &dyn SnapshotStore,
    fs: &dyn FileSystem,
    staging: &Path,
    dir: &Path,
    whose: Option<&str>,
    point: Point,
) -> Result<Restored, String> {
    let (all, unreadable) = manifests(store).map_err(|e| format!("{}: {e}", store.url()))?;
    let mut skipped = unreadable;
    let index = match point {
        Point::Chain(i) => Some(i),
        _ => None,
    };
    let node = whose
        .map(str::to_string)
        .or_else(|| all.first().map(|m| m.node.clone()))
        .or_else(|| node_ids(store).ok()?.into_iter().next());
    let mut logs = match &node {
        Some(n) => shipped::list(store, n).map_err(|e| format!("{}: {e}", store.url()))?,
        None => Vec::new(),
    };
    // A history shipped from its first entry restores from the empty state too.
    let origins = node
        .as_ref()
        .map_or_else(Vec::new, |n| shipped::origins(n, &logs));
    let mut own: Vec<&Manifest> = all
        .iter()
        .filter(|m| whose.is_none_or(|w| m.node == w))
        .chain(origins.iter())
        .collect();
    // One node's chains, most recent upload first: after a restore to an earlier point
    // the line that goes on from it is the newest, whatever its indexes.
    if whose.is_some() {
        own.sort_by_key(|m| std::cmp::Reverse((m.created_ms, m.index)));
    }
    // The offset to reach exactly, for a point before the newest.
    let target = match point {
        Point::Newest => None,
        Point::Chain(i) => Some(i),
        Point::Offset(n) => Some(n),
        Point::Time(t) => {
            let at = offset_at_time(&own, &logs, t)?;
            // Only what the store held then.
            own.retain(|m| m.created_ms <= t);
            logs.retain(|o| o.written_ms <= t);
            Some(at)
        }
    };
    let candidates: Vec<&Manifest> = own
        .iter()
        .copied()
        .filter(|m| index.is_none_or(|i| m.index == i))
        .filter(|m| target.is_none_or(|t| m.index <= t))
        .collect();
    let oldest = own.iter().min_by_key(|m| m.index);
    if let (Some(t), true, Some(oldest)) = (target, candidates.is_empty(), oldest) {
        return Err(format!(
            "{}: offset {t} is before the oldest chain of {} in the store, at {}: the oldest \
             point a restore reaches",
            store.url(),
            oldest.node,
            oldest.index
        ));
    }
    let newest = own.iter().map(|m| super::ls::reach(m, &logs).0).max();
    if let (Some(t), Some(newest), Some(m)) = (target, newest, own.first())
        && t > newest
    {
        return Err(format!(
            "{}: offset {t} is past the newest point the store reaches for {}: offset {newest}",
            store.url(),
            m.node
        ));
    }
    if candidates.is_empty() {
        let of = whose.map_or(String::new(), |w| format!(" of {w}"));
        let what = index.map_or(format!("no chain{of}"), |i| {
            format!("no chain{of} at index {i}")
        });
        let unread = skipped.first().map_or(String::new(), |(name, why)| {
            format!(
                "; {} manifest(s) could not be read, {name}: {why}",
                skipped.len()
            )
        });
        return Err(format!("{}: {what} in the store{unread}", store.url()));
    }
    for m in candidates {
        let fetched = if m.files.is_empty() {
            Ok(0)
        } else {
            fetch_chain(store, fs, staging, m)
        };
        match fetched.and_then(|bytes| {
            let log = start_log(store, fs, staging, m, &logs, target)?;
            Ok((bytes, log))
        }) {
            Ok((bytes, log)) => {
                fs.rename(staging, dir).map_err(|e| {
                    format!(
                        "cannot rename {} to {}: {e}",
                        staging.display(),
                        dir.display()
                    )
                })?;
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs.sync_dir(parent)
                        .map_err(|e| format!("cannot sync {}: {e}", parent.display()))?;
                }
                return Ok(Restored {
                    manifest: m.clone(),
                    skipped,
                    bytes,
                    log,
                });
            }
            Err(why) => {
                log::warn!(
                    "the chain at index {} from {} does not restore ({why}); falling back to an \
                     older one",
                    m.index,
                    m.node
                );
                skipped.push((m.object(), why));
                for f in fs.list(staging).unwrap_or_default() {
                    let _ = fs.remove(&join(staging, &f));
                }
            }
        }
    }
    Err(format!(
        "no chain in {} restores: {}",
        store.url(),
        skipped
            .iter()
            .map(|(n, why)| format!("{n}: {why}"))
            .collect::<Vec<_>>()
            .join("; ")
    ))
}

/// The offset a restore to time `t` reaches: after the newest entry shipped by then,
/// or the newest chain uploaded by then if that is further.
fn offset_at_time(
    chains: &[&Manifest],
    logs: &[shipped::ShippedRange],
    t: u64,
) -> Result<u64, String> {
    let by_log = logs
        .iter()
        .filter(|o| o.written_ms <= t)
        .map(|o| o.last + 1)
        .max();
    let by_chain = chains
        .iter()
        .filter(|m| m.created_ms <= t)
        .map(|m| m.index)
        .max();
    by_log.max(by_chain).ok_or_else(|| {
        let oldest = chains
            .iter()
            .map(|m| m.created_ms)
            .chain(logs.iter().map(|o| o.written_ms))
            .min();
        let when = |ms: u64| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            )
        };
        match oldest {
            Some(o) => format!(
                "nothing in the store was written by {}: the oldest object is from {}",
                when(t),
                when(o)
            ),
            None => "the store holds nothing of this node".to_string(),
        }
    })
}

/// For a single node's chain: the log's first segment, starting at the chain's index,
/// holding the shipped entries that follow the chain in its history (up to `target`,
/// or as far as they go), each verified; then `log.meta`, so that the node opens on
/// the snapshot and replays them. For a group's snapshot: the install marker, so that
/// a node started on the directory as a new member (`join`) finishes installing it and
/// continues from the leader's log.
fn start_log(
    store: &dyn SnapshotStore,
    fs: &dyn FileSystem,
    dir: &Path,
    m: &Manifest,
    logs: &[shipped::ShippedRange],
    target: Option<u64>,
) -> Result<Replayed, String> {
    if m.files
        .iter()
        .any(|f| layout::parse_raft_snapshot(&f.name).is_some())
    {
        if target.is_some_and(|t| t != m.index) {
            return Err(format!(
                "a group's chain restores whole, at its index {} (a group's log is not \
                 shipped)",
                m.index
            ));
        }
        crate::raftlog::mark_install(fs, dir, m.index, m.term)
            .map_err(|e| format!("cannot mark the install: {e}"))?;
        return Ok(Replayed {
            next: m.index,
            ..Replayed::default()
        });
    }
    let header = crate::wal::segment::HEADER_BYTES;
    let mut file = crate::wal::create_segment(fs, dir, m.index, header, false)
        .map_err(|e| format!("cannot create the log's first segment: {e}"))?;
    let own: Vec<&shipped::ShippedRange> = logs
        .iter()
        .filter(|o| m.history.as_ref() == Some(&o.history))
        .collect();
    let mut done = Replayed {
        next: m.index,
        ..Replayed::default()
    };
    // The objects on the way, by their names alone: each holds the next offset.
    let mut path: Vec<&shipped::ShippedRange> = Vec::new();
    let mut gap = None;
    let mut at = m.index;
    while target.is_none_or(|t| at < t) {
        let Some(o) = own.iter().find(|o| o.first <= at && at <= o.last) else {
            if let Some(after) = own.iter().filter(|o| o.first > at).map(|o| o.first).min() {
                gap = Some(format!(
                    "no shipped object holds offset {at} (the next one starts at {after})"
                ));
            }
            break;
        };
        path.push(o);
        at = o.last + 1;
    }
    // Downloaded one ahead of the checks, on a thread of their own.
    let mut pos = header;
    std::thread::scope(|scope| -> Result<(), String> {
        let (tx, rx) = crossbeam_channel::bounded::<Result<Vec<u8>, String>>(1);
        let path = &path;
        scope.spawn(move || {
            for o in path {
                let mut bytes = Vec::with_capacity(o.size as usize);
                let got = match store.get(&o.object, &mut bytes) {
                    Ok(_) => Ok(bytes),
                    Err(e) => Err(format!("{}: {e}", o.object)),
                };
                let failed = got.is_err();
                if tx.send(got).is_err() || failed {
                    break;
                }
            }
        });
        for o in path {
            let at = done.next;
            let bytes = match rx.recv() {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(why)) => {
                    done.stopped = Some(why);
                    break;
                }
                Err(_) => break,
            };
            let object = match shipped::decode(o, &bytes) {
                Ok(object) => object,
                Err(why) => {
                    done.stopped = Some(format!("{} does not verify: {why}", o.object));
                    break;
                }
            };
            let (run, entries) = object.span(at, target.unwrap_or(u64::MAX));
            file.write_all_at(run, pos)
                .map_err(|e| format!("writing the log's first segment: {e}"))?;
            done.entries += entries;
            pos += run.len() as u64;
            done.bytes += bytes.len() as u64;
            done.next = target.map_or(o.last + 1, |t| t.min(o.last + 1));
            done.written_ms = Some(object.written_ms);
        }
        Ok(())
    })?;
    if done.stopped.is_none() && target.is_none_or(|t| done.next < t) {
        done.stopped = gap;
    }
    if let Some(t) = target.filter(|t| done.next < *t) {
        return Err(format!(
            "the shipped log after the chain at {} reaches offset {} only, not {t}{}",
            m.index,
            done.next,
            done.stopped
                .as_ref()
                .map_or(String::new(), |why| format!(": {why}"))
        ));
    }
    file.sync_data()
        .map_err(|e| format!("cannot sync the log's first segment: {e}"))?;
    drop(file);
    let start = crate::wal::meta::LogStart {
        first_offset: crate::core::position::Offset::new(m.index),
        skip: None,
    };
    crate::wal::meta::write(fs, dir, &start).map_err(|e| format!("cannot write log.meta: {e}"))?;
    Ok(done)
}

/// One chain's verdict from [`verify`].
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The manifest's object name.
    pub object: String,
    /// Its index, if the manifest could be read.
    pub index: Option<u64>,
    /// Bytes downloaded.
    pub bytes: u64,
    /// `None` if the chain verified, else why not.
    pub problem: Option<String>,
}

/// Downloads and verifies every chain in the store (into a scratch directory that is
/// removed afterwards), calling `progress` after each.
///
/// # Errors
/// The store could not be listed or the scratch directory made.
pub fn verify(
    store: &dyn SnapshotStore,
    progress: &mut dyn FnMut(&Verdict),
) -> Result<Vec<Verdict>, String> {
    let (all, unreadable) = manifests(store).map_err(|e| format!("{}: {e}", store.url()))?;
    let mut verdicts = Vec::new();
    for (object, why) in unreadable {
        let v = Verdict {
            index: manifest_index(&object),
            object,
            bytes: 0,
            problem: Some(why),
        };
        progress(&v);
        verdicts.push(v);
    }
    let fs = crate::fs::RealFs;
    for m in &all {
        let scratch = tempfile::tempdir().map_err(|e| format!("scratch directory: {e}"))?;
        let outcome = fetch_chain(store, &fs, scratch.path(), m);
        let v = Verdict {
            object: m.object(),
            index: Some(m.index),
            bytes: *outcome.as_ref().unwrap_or(&0),
            problem: outcome.err(),
        };
        progress(&v);
        verdicts.push(v);
    }
    Ok(verdicts)
}

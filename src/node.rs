//! A node: recovers its directory, wires the actors, owns their threads, shuts down in
//! order.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::actor::appender::{Appender, AppenderHandle, AppenderMsg, AppenderParts};
use crate::actor::compactor::Compactor;
use crate::actor::facades::{CompactorHandle, SnapshotterHandle};
use crate::actor::snapshotter::{Snapshotter, SnapshotterParts};
use crate::actor::uploader::{self, UploaderHandle};
use crate::config::Config;
use crate::core::layout::{self, LOCK as LOCK_NAME};
use crate::core::position::Offset;
use crate::error::{Error, Result};
use crate::fs::{FileSystem, Lock, Pacing, RealFs, join};
use crate::survey;
use crate::types::RecoveryReport;
use crate::wal::{Log, RecoverLog};

/// Checks that `data_dir`, the directory a node keeps its own directory in
/// (`data_dir/<node_id>/`), does not itself hold a node's files: a restore or a copy
/// made one level too high. Starting anyway would create an empty node beside them,
/// which reads as if the data were lost.
///
/// # Errors
/// [`Error::Open`] naming the files and where they belong.
pub fn check_data_dir(fs: &dyn FileSystem, data_dir: &Path, node_id: &str) -> Result<()> {
    let Ok(names) = fs.list(data_dir) else {
        return Ok(()); // absent: created for the node
    };
    let l = crate::core::recovery::classify(names);
    let mut found: Vec<String> = l
        .segments
        .iter()
        .chain(&l.snapshots)
        .chain(&l.raft_snapshots)
        .map(|(_, n)| n.clone())
        .collect();
    found.extend(
        [(l.meta, layout::META), (l.raft_state, layout::RAFT_STATE)]
            .into_iter()
            .filter(|(here, _)| *here)
            .map(|(_, n)| n.to_string()),
    );
    if found.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = found.iter().take(3).map(String::as_str).collect();
    Err(Error::Open(format!(
        "{} holds a node's files directly ({}{}), but the data directory holds each node's \
         files in a directory of its own: this node's are read from {}. Move them there, or \
         give --data-dir the directory above this one; nothing was started",
        data_dir.display(),
        shown.join(", "),
        if found.len() > 3 { ", ..." } else { "" },
        join(data_dir, node_id).display()
    )))
}

/// Creates `dir` and any missing ancestors, syncing the parent of each one created (a
/// new directory's entry is durable only then: without it, a power cut could take the
/// whole directory with every entry acknowledged in it), and locks it. Returns the
/// lock and whether the directory existed.
///
/// # Errors
/// [`Error::Open`] when it cannot be created, synced or locked.
pub(crate) fn prepare_dir(
    fs: &dyn FileSystem,
    dir: &std::path::Path,
) -> Result<(Box<dyn crate::fs::Lock>, bool)> {
    // The directories this open creates: `dir` and any missing ancestors.
    let created: Vec<std::path::PathBuf> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && fs.list(a).is_err())
        .map(|a| a.to_path_buf())
        .collect();
    let existed = created.is_empty();
    fs.create_dir_all(dir).map_err(|e| {
        Error::open_io(
            format!("cannot create data directory {}", dir.display()),
            &e,
        )
    })?;
    for parent in created.iter().filter_map(|d| d.parent()) {
        if !parent.as_os_str().is_empty() {
            fs.sync_dir(parent)
                .map_err(|e| Error::open_io(format!("cannot sync {}", parent.display()), &e))?;
        }
    }
    let lock = fs
        .lock(&join(dir, LOCK_NAME))
        .map_err(|e| Error::open_io(format!("cannot lock data directory {}", dir.display()), &e))?;
    Ok((lock, existed))
}

/// The log's options, with segment preallocation sized to what the filesystem has: at
/// most a quarter of the free space (a segment, the spare prepared beside it, and room
/// for snapshots), in whole 4 KiB blocks, and said so in the log.
fn log_options(config: &Config, fs: &dyn FileSystem) -> crate::wal::LogOptions {
    let mut options = config.log_options();
    let wanted = options.segment_bytes_max.min(options.preallocate_bytes_max);
    if let Some(free) = fs.available_bytes(&config.dir) {
        let cap = (free / 4 / 4096 * 4096).max(2 * 4096);
        if cap < wanted {
            log::warn!(
                "{} has {free} bytes free: segments are preallocated to {cap} bytes instead of \
                 {wanted}",
                config.dir.display()
            );
            options.preallocate_bytes_max = cap;
        }
    }
    options
}

/// Before a node with a snapshot store touches its directory: the store works (see
/// [`crate::store::check`]), or the node refuses to start, saying why.
///
/// # Errors
/// [`Error::InvalidArgument`] for a store that cannot be opened (a bad URL);
/// [`Error::Open`] with the cause in words.
pub(crate) fn check_store(config: &Config) -> Result<()> {
    let Some(store) = &config.snapshot_store else {
        return Ok(());
    };
    let opened = crate::store::open(store).map_err(Error::InvalidArgument)?;
    crate::store::check(store, &*opened, &config.store_name())
        .map_err(|why| Error::Open(format!("the snapshot store does not work: {why}")))
}

/// Opens the snapshot store and starts the uploader for the node in `config.dir`.
///
/// # Errors
/// [`Error::InvalidArgument`] for a store that cannot be opened (a bad URL); [`Error::Open`]
/// if the thread cannot start.
pub(crate) fn start_uploader(
    config: &Config,
    store: &crate::store::StoreConfig,
    fs: Arc<dyn FileSystem>,
    cluster: Vec<String>,
    durable: Option<crate::wal::DurableEnd>,
) -> Result<(UploaderHandle, JoinHandle<()>)> {
    let opened = crate::store::open(store).map_err(Error::InvalidArgument)?;
    log::info!("snapshots are copied to {}", opened.url());
    let ship = match durable.filter(|_| store.ship_log) {
        Some(durable) => {
            log::info!(
                "the log is shipped to {} every {} ms",
                opened.url(),
                store.ship_interval.as_millis()
            );
            Some(crate::actor::shipper::ShipParts {
                store: crate::store::open(store).map_err(Error::InvalidArgument)?,
                durable,
                interval: store.ship_interval,
            })
        }
        None => None,
    };
    uploader::spawn(uploader::UploaderParts {
        store: opened,
        fs,
        dir: config.dir.clone(),
        node: config.store_name(),
        cluster,
        retain: store.retain,
        rate: store.upload_bytes_per_sec,
        ship,
    })
    .map_err(|e| Error::Open(format!("cannot start the uploader: {e}")))
}

/// A running node: the appender, snapshotter and compactor threads over one directory.
///
/// ```
/// use flintlog::{Config, Node};
///
/// let dir = tempfile::tempdir().unwrap();
/// let node = Node::open(Config::new(dir.path())).unwrap();
/// let offset = node.appender().append("set greeting=hello").unwrap();
/// assert_eq!(offset, 0);
/// assert_eq!(node.appender().kv_get("greeting").unwrap(), "hello");
/// let snap = node.snapshotter().snapshot().unwrap();
/// assert_eq!(snap.offset, 1);
/// node.shutdown().unwrap();
///
/// // Everything acknowledged is there after reopening.
/// let node = Node::open(Config::new(dir.path())).unwrap();
/// assert_eq!(node.appender().read(flintlog::Offset::ZERO).unwrap().payload, b"set greeting=hello");
/// node.shutdown().unwrap();
/// ```
pub struct Node {
    appender: AppenderHandle,
    snapshotter: SnapshotterHandle,
    compactor: CompactorHandle,
    threads: Vec<(&'static str, JoinHandle<()>)>,
    /// The uploader (stopped last: the snapshotter offers it chains).
    uploader: Option<(UploaderHandle, JoinHandle<()>)>,
    /// How long a stop waits for the newest chain to reach the store.
    upload_shutdown_wait: std::time::Duration,
    recovery: RecoveryReport,
    _lock: Box<dyn Lock>,
}

impl Node {
    /// Opens (creating or recovering) the node in `config.dir` on the real filesystem.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad configuration; [`Error::Open`] when the
    /// directory cannot be created or locked, or its contents are damaged in a way
    /// recovery must not paper over (the message names the file and offset).
    pub fn open(config: Config) -> Result<Node> {
        Node::open_with_fs(config, Arc::new(RealFs))
    }

    /// Opens the node over any [`FileSystem`].
    ///
    /// # Errors
    /// As [`Node::open`].
    pub fn open_with_fs(config: Config, fs: Arc<dyn FileSystem>) -> Result<Node> {
        config.validate()?;
        check_store(&config)?;
        let started = Instant::now();
        let dir = config.dir.clone();
        let (lock, existed) = prepare_dir(&*fs, &dir)?;
        let mut report = RecoveryReport::default();
        let loading = Instant::now();
        let survey::Survey {
            listing,
            first_offset,
            log_start,
            chosen,
        } = survey::survey(&*fs, &dir)?;
        report.snapshot_load_ms = loading.elapsed().as_millis() as u64;
        if listing.raft_state {
            return Err(Error::Open(format!(
                "{} holds a cluster node's Raft log: start it with an init that names its                  whole group, or use a new directory for a single node",
                dir.display()
            )));
        }
        for name in &listing.temps {
            fs.remove(&join(&dir, name)).map_err(|e| {
                Error::open_io(format!("cannot remove leftover temp file {name}"), &e)
            })?;
            log::info!("removed leftover temp file {name}");
        }
        report.temp_files_removed = listing.temps.len();
        if !listing.temps.is_empty() {
            fs.sync_dir(&dir)
                .map_err(|e| Error::open_io(dir.display(), &e))?;
        }
        for name in &listing.foreign {
            log::warn!("ignoring foreign file {} in {}", name, dir.display());
        }
        report.foreign_files = listing.foreign.clone();
        report.snapshots_skipped = chosen
            .skipped
            .iter()
            .map(|(name, why)| format!("{name}: {why}"))
            .collect();
        let damaged: Vec<String> = chosen
            .skipped
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        let (snapshot, chain, mut state) = (chosen.snapshot, chosen.chain, chosen.state);
        let replay_from = snapshot.as_ref().map_or(Offset::ZERO, |s| s.offset);
        let replaying = Instant::now();
        let (log, log_report) = Log::recover(
            fs.clone(),
            RecoverLog {
                options: &log_options(&config, &*fs),
                segments: listing.segments.clone(),
                start: log_start,
                replay_from,
            },
            &mut |_, payload| state.apply(payload),
        )?;
        report.replay_ms = replaying.elapsed().as_millis() as u64;
        // Snapshots that did not verify are moved aside (bytes kept) so that they are
        // neither verified again at every start nor counted by retention.
        for name in &damaged {
            let broken = layout::broken_snapshot(name);
            fs.rename(&join(&dir, name), &join(&dir, &broken))
                .map_err(|e| {
                    Error::open_io(format!("cannot move damaged snapshot {name} aside"), &e)
                })?;
            log::warn!("moved damaged snapshot {name} to {broken}");
        }
        report.snapshot = snapshot.clone();
        report.entries_replayed = log_report.entries_replayed;
        report.bytes_truncated = log_report.bytes_truncated;
        report.broken_file = log_report.broken_file;
        report.segments_deleted = log_report.segments_deleted;
        report.duration_ms = started.elapsed().as_millis() as u64;
        if existed {
            log::info!(
                "recovered {}: snapshot {}, {} entries replayed, next offset {}, {} bytes of torn tail cut, {} ms",
                dir.display(),
                snapshot
                    .as_ref()
                    .map_or("none".to_string(), |s| s.file.clone()),
                report.entries_replayed,
                log.next_offset(),
                report.bytes_truncated,
                report.duration_ms
            );
        } else {
            log::info!("created data directory {}", dir.display());
        }

        // Unbounded, and holding at most `FEEDBACK_MAX` messages: see there.
        let (feedback_tx, feedback_rx) = crossbeam_channel::unbounded();
        let spawn_err = |e: std::io::Error| Error::Open(format!("cannot start a thread: {e}"));
        let upload_shutdown_wait = config
            .snapshot_store
            .as_ref()
            .map_or(std::time::Duration::ZERO, |s| s.shutdown_wait);
        let uploader = match &config.snapshot_store {
            Some(store) => {
                let (handle, join) =
                    start_uploader(&config, store, fs.clone(), vec![], Some(log.durable_end()))?;
                if let Some(upload) = uploader::chain_upload(&chain) {
                    handle.offer(upload);
                }
                Some((handle, join))
            }
            None => None,
        };
        let (compactor_tx, compactor_join) = Compactor::spawn(
            fs.clone(),
            dir.clone(),
            first_offset,
            config.inbox_capacity,
            feedback_tx.clone(),
            Pacing {
                chunk_bytes: config.delete_chunk_bytes,
                pause: config.delete_pause,
            },
        )
        .map_err(spawn_err)?;
        let on_disk: Vec<(Offset, String)> = listing
            .snapshots
            .iter()
            .filter(|(_, name)| !damaged.contains(name))
            .map(|(offset, name)| (Offset::from_disk(*offset), name.clone()))
            .collect();
        let (snapshotter_tx, snapshotter_join) = Snapshotter::spawn(SnapshotterParts {
            fs: fs.clone(),
            config: config.clone(),
            compactor: compactor_tx,
            feedback: feedback_tx,
            on_disk: on_disk.clone(),
            chain: chain.clone(),
            uploader: uploader.as_ref().map(|(h, _)| h.clone()),
            log_syncs: log.sync_count(),
        })
        .map_err(spawn_err)?;
        let (appender, appender_join) = Appender::spawn(AppenderParts {
            log,
            state,
            config,
            snapshotter: snapshotter_tx,
            feedback: feedback_rx,
            recovery: report.clone(),
            latest_snapshot: snapshot,
            loaded_chain: chain,
            snapshots_on_disk: on_disk,
            uploader: uploader.as_ref().map(|(h, _)| h.clone()),
        })
        .map_err(spawn_err)?;
        Ok(Node {
            snapshotter: SnapshotterHandle {
                appender: appender.clone(),
            },
            compactor: CompactorHandle {
                appender: appender.clone(),
            },
            appender,
            threads: vec![
                ("appender", appender_join),
                ("snapshotter", snapshotter_join),
                ("compactor", compactor_join),
            ],
            uploader,
            upload_shutdown_wait,
            recovery: report,
            _lock: lock,
        })
    }

    /// Appends, reads, key-value operations, figures.
    pub fn appender(&self) -> &AppenderHandle {
        &self.appender
    }

    /// Snapshots.
    pub fn snapshotter(&self) -> &SnapshotterHandle {
        &self.snapshotter
    }

    /// Compaction.
    pub fn compactor(&self) -> &CompactorHandle {
        &self.compactor
    }

    /// What recovery did when the node opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Finishes every request already submitted (appends made durable, snapshots
    /// written, compactions done), stops the threads in order and joins them, then
    /// releases the directory lock. Requests sent through handle clones afterwards
    /// fail with [`Error::Crashed`]. Dropping a `Node` does the same, logging instead
    /// of returning an error.
    ///
    /// # Errors
    /// [`Error::Crashed`] if an actor thread panicked.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    /// Stops and joins every thread (once; later calls do nothing).
    fn stop(&mut self) -> Result<()> {
        if self.threads.is_empty() {
            return Ok(());
        }
        let _ = self.appender.tx.send(AppenderMsg::Shutdown);
        let mut panicked = Vec::new();
        for (name, join) in self.threads.drain(..) {
            if join.join().is_err() {
                panicked.push(name);
            }
        }
        if let Some((handle, join)) = self.uploader.take() {
            handle.drain_at_shutdown(self.upload_shutdown_wait);
            handle.stop();
            if join.join().is_err() {
                panicked.push("uploader");
            }
        }
        if panicked.is_empty() {
            Ok(())
        } else {
            Err(Error::Crashed(format!(
                "actor thread(s) panicked: {}",
                panicked.join(", ")
            )))
        }
    }
}

impl Drop for Node {
    /// Stops and joins every thread before the directory lock is released (the lock
    /// is a field, dropped after this runs).
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::error!("stopping the node: {e}");
        }
    }
}

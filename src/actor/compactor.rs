//! The compactor: deletes log segments that a durable snapshot covers.
//!
//! A request reaches it only from the snapshotter, together with the offset of a
//! durable snapshot at or past the compaction point. It first persists where the live
//! log now starts (`log.meta`, crash-safely: the first offset and the byte of its
//! record), then deletes the whole segments below it, then frees the blocks of the
//! segment holding the first offset that lie wholly below that record (a hole punched
//! after the header's block), then syncs the directory, then tells the appender and
//! answers. `bytes_freed` is the disk space the filesystem gave back: the allocated
//! blocks of the deleted files, and the drop in the punched file's.
//!
//! Architecture Invariant: no segment is deleted and no block freed before a durable
//! snapshot covers every entry in it and the new start of the log is durable (so that
//! recovery never reads a freed block: it starts that segment's scan at the record).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::actor::{Feedback, Poison, Reply, poison_on_panic, spawn_actor};
use crate::core::position::Offset;
use crate::error::{Error, Result};
use crate::fs::{FileSystem, Pacing, is_sync_failure, join};
use crate::types::Compaction;
use crate::wal::BATCH_ALIGN_BYTES;
use crate::wal::meta::{self, LogStart, SkipTo};

pub(crate) enum CompactorMsg {
    Compact {
        at: Offset,
        snapshot_offset: Offset,
        next_offset: Offset,
        segments: Vec<(Offset, String)>,
        /// Where the live log starts after it, and in which file.
        start: (SkipTo, String),
        reply: Reply<Compaction>,
    },
}

pub(crate) struct Compactor {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    first_offset: Offset,
    inbox: Receiver<CompactorMsg>,
    feedback: Sender<Feedback>,
    pacing: Pacing,
    /// Set after a failed sync: every later request fails.
    poison: Poison,
}

/// What a compaction was asked.
struct Asked {
    at: Offset,
    snapshot_offset: Offset,
    next_offset: Offset,
}

/// How long the compactor waits for the appender to fence reads off compacted
/// segments before it falls back to unlinking them at once.
const FENCE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Compactor {
    pub(crate) fn spawn(
        fs: Arc<dyn FileSystem>,
        dir: PathBuf,
        first_offset: Offset,
        capacity: usize,
        feedback: Sender<Feedback>,
        pacing: Pacing,
    ) -> std::io::Result<(Sender<CompactorMsg>, std::thread::JoinHandle<()>)> {
        let (tx, inbox) = crossbeam_channel::bounded(capacity);
        let on_panic = poison_on_panic(&feedback);
        let actor = Compactor {
            fs,
            dir,
            first_offset,
            inbox,
            poison: Poison::reporting_to(feedback.clone()),
            feedback,
            pacing,
        };
        let join = spawn_actor("compactor", on_panic, move || {
            crate::actor::below_the_log();
            actor.run()
        })?;
        Ok((tx, join))
    }

    fn run(mut self) {
        while let Ok(CompactorMsg::Compact {
            at,
            snapshot_offset,
            next_offset,
            segments,
            start,
            reply,
        }) = self.inbox.recv()
        {
            let asked = Asked {
                at,
                snapshot_offset,
                next_offset,
            };
            reply.send(self.compact(asked, &segments, &start));
        }
        log::debug!("compactor stopped");
    }

    fn poison(&mut self, why: String) -> Error {
        self.poison.set(why)
    }

    /// Deletes a compacted segment of `size` bytes, truncating it step by step first.
    /// The segment lies wholly below the durable first offset, so recovery removes it
    /// by name without reading it, however far the truncation got.
    fn free(&self, path: &Path, size: u64, truncate: bool) -> std::io::Result<()> {
        if truncate {
            self.pacing.free(&*self.fs, path, size)
        } else {
            self.fs.remove(path)
        }
    }

    /// Frees the blocks of `file` in `[from, to)`; returns the space it occupied
    /// before and after.
    fn punch(&self, file: &str, from: u64, to: u64) -> std::io::Result<(u64, u64)> {
        let mut f = self.fs.open(&join(&self.dir, file), true)?;
        let before = f.allocated_bytes()?;
        f.punch_hole(from, to - from)?;
        Ok((before, f.allocated_bytes()?))
    }

    fn compact(
        &mut self,
        asked: Asked,
        segments: &[(Offset, String)],
        (skip, file): &(SkipTo, String),
    ) -> Result<Compaction> {
        let Asked {
            at,
            snapshot_offset,
            next_offset,
        } = asked;
        assert!(
            snapshot_offset >= at,
            "compaction to {at} without a snapshot covering it"
        );
        self.poison.check()?;
        let before = self.first_offset;
        if at <= before {
            let live = next_offset.since(before);
            return Ok(Compaction {
                snapshot_offset,
                entries_before: live,
                entries_after: live,
                bytes_freed: 0,
            });
        }
        let start = LogStart {
            first_offset: at,
            skip: Some(*skip),
        };
        if let Err(e) = meta::write(&*self.fs, &self.dir, &start) {
            return Err(if is_sync_failure(&e) {
                self.poison(format!(
                    "a sync while persisting the first offset {at} failed: {e}"
                ))
            } else {
                Error::Unavailable(format!(
                    "could not persist the new first offset {at} (nothing deleted): {e}"
                ))
            });
        }
        self.first_offset = at;
        // Blocks wholly below the first live record, after the header's block.
        let holes = (
            BATCH_ALIGN_BYTES,
            skip.byte / BATCH_ALIGN_BYTES * BATCH_ALIGN_BYTES,
        );
        let punch = holes.1 > holes.0;
        let truncate = self.pacing.chunk_bytes > 0 && !segments.is_empty();
        // Freeing blocks and truncating change files the appender may read, so it
        // first has to stop reading below `at`; if it does not answer in time (it may
        // be blocked handing work down to us), the segments are unlinked at once,
        // which open readers survive, and no block is freed this time.
        let fenced = (punch || truncate) && {
            let (ack, acked) = crossbeam_channel::bounded(1);
            self.feedback
                .send(Feedback::Fence {
                    first_offset: at,
                    ack,
                })
                .is_ok()
                && acked.recv_timeout(FENCE_WAIT).is_ok()
        };
        let mut bytes_freed = 0;
        let mut removed = Vec::new();
        for (start, name) in segments {
            let path = join(&self.dir, name);
            let (size, space) = match self
                .fs
                .open(&path, false)
                .and_then(|f| Ok((f.len()?, f.allocated_bytes()?)))
            {
                Ok(sizes) => sizes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    log::warn!("could not stat {name} before deleting it: {e}");
                    (0, 0)
                }
            };
            match self.free(&path, size, truncate && fenced) {
                Ok(()) => {
                    bytes_freed += space;
                    removed.push(*start);
                }
                Err(e) => log::warn!(
                    "could not delete compacted segment {name}: {e}; recovery will retry"
                ),
            }
        }
        if !removed.is_empty()
            && let Err(e) = self.fs.sync_dir(&self.dir)
        {
            // The deletions may not be durable (recovery redoes them), but a failed sync
            // is fail-stop all the same; the compaction is not counted as done.
            return Err(self.poison(format!(
                "the directory sync after deleting segments failed: {e}"
            )));
        }
        let mut resized = None;
        if punch && fenced {
            match self.punch(file, holes.0, holes.1) {
                Ok((before, after)) => {
                    bytes_freed += before.saturating_sub(after);
                    resized = Some((skip.segment, after));
                }
                // Unsupported by the filesystem, for one: the space stays in use
                // until the whole segment is deleted.
                Err(e) => log::warn!("could not free the compacted blocks of {file}: {e}"),
            }
        } else if punch {
            log::warn!("the appender did not stop reading in time: no block of {file} freed");
        }
        // Only a compaction whose deletions are durable is reported done.
        let _ = self.feedback.send(Feedback::Compacted {
            first_offset: at,
            removed: removed.clone(),
            resized,
            bytes_freed,
        });
        log::info!(
            "compacted to offset {at}: {} segments deleted, {bytes_freed} bytes freed",
            removed.len()
        );

        Ok(Compaction {
            snapshot_offset,
            entries_before: next_offset.since(before),
            entries_after: next_offset.since(at),
            bytes_freed,
        })
    }
}

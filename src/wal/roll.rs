//! Rolling: sealing the active segment and opening the next one, durably, from a
//! spare prepared zero-filled on a helper thread when there is one.

use super::*;

impl Log {
    /// Seals the active segment (syncing it) and opens a new one at the next offset,
    /// durable in the directory before this returns.
    ///
    /// # Errors
    /// An error from the seal's sync means data may be lost (the caller poisons);
    /// an error while creating the new segment leaves the old one active and synced.
    pub fn roll(&mut self) -> std::result::Result<(), RollError> {
        if self.unsynced {
            self.sync().map_err(RollError::Sync)?;
        }
        let start = self.next();
        let target = self.segment_bytes_max.min(self.preallocate_bytes_max);
        let prepared = match self.spare.take().map(|h| h.join()) {
            Some(Ok(Ok(()))) => Some(self.promote_spare(start).map_err(RollError::Create)?),
            Some(Ok(Err(e))) => {
                log::warn!("preparing the next segment failed: {e}; creating it now");
                None
            }
            Some(Err(_)) => {
                log::warn!("the segment preparation thread panicked; creating the segment now");
                None
            }
            None => None,
        };
        let file = match prepared {
            Some(file) => file,
            None => create_segment(&*self.fs, &self.dir, start, target, self.prefill)
                .map_err(RollError::Create)?,
        };
        let mut sealed = std::mem::replace(&mut self.active, file);
        // A sealed segment keeps its data only: the preallocated space after it goes
        // back to the filesystem (recovery reads a sealed segment by count).
        let data_end = self.segments.back().expect("the sealed segment").data_end;
        if sealed.len().is_ok_and(|len| len > align_up(data_end))
            && let Err(e) = sealed.set_len(align_up(data_end))
        {
            log::warn!("could not trim the preallocated end of a sealed segment: {e}");
        }
        let allocated = sealed.allocated_bytes().unwrap_or(0);
        self.segments
            .back_mut()
            .expect("the sealed segment")
            .allocated = allocated;
        self.start_spare();
        self.segments.push_back(Segment {
            start,
            name: layout::segment(start),
            positions: Vec::new(),
            data_end: segment::HEADER_BYTES,
            allocated: 0,
        });
        Ok(())
    }

    /// Starts preparing the next segment: `spare.log.tmp`, zero-filled to the
    /// preallocation size and synced, on a helper thread.
    pub(super) fn start_spare(&mut self) {
        if !self.prefill || self.spare.is_some() {
            return;
        }
        let fs = self.fs.clone();
        let path = join(&self.dir, SPARE_SEGMENT);
        let size = self
            .segment_bytes_max
            .min(self.preallocate_bytes_max)
            .max(2 * BATCH_ALIGN_BYTES);
        let spawned = std::thread::Builder::new()
            .name("flintlog-prefill".into())
            .spawn(move || {
                let result = (|| {
                    let mut file = fs.create(&path)?;
                    zero_fill(&mut *file, 0, size)?;
                    file.sync_data()
                })();
                if result.is_err() {
                    // Give back whatever space it took (a full disk is the usual reason).
                    let _ = fs.remove(&path);
                }
                result
            });
        match spawned {
            Ok(handle) => self.spare = Some(handle),
            Err(e) => log::warn!("cannot start the segment preparation thread: {e}"),
        }
    }

    /// Turns the prepared spare into the segment starting at `start`, with the same
    /// recipe as a new segment: header, sync, rename, directory sync; then reopens it
    /// under its final name.
    pub(super) fn promote_spare(&mut self, start: u64) -> io::Result<Box<dyn File>> {
        let spare = join(&self.dir, SPARE_SEGMENT);
        let name = layout::segment(start);
        let result = (|| {
            let mut file = self.fs.open(&spare, true)?;
            let len = file.len()?;
            file.write_all_at(&segment::encode_header(start, len), 0)?;
            file.sync_data().map_err(sync_failed)?;
            drop(file);
            self.fs.rename(&spare, &join(&self.dir, &name))?;
            self.fs.sync_dir(&self.dir).map_err(sync_failed)?;
            self.fs.open(&join(&self.dir, &name), true)
        })();
        if result.is_err() {
            let _ = self.fs.remove(&spare);
        }
        result
    }
}

/// Why a roll failed.
#[derive(Debug)]
pub enum RollError {
    /// Syncing the segment being sealed failed: acknowledged-to-be data may be lost.
    Sync(io::Error),
    /// Creating the next segment failed; nothing was written.
    Create(io::Error),
}

/// Writes zeros over `[from, to)`. Written zeros, not an fallocated range: a later
/// fdatasync of data written there has no unwritten extents to convert.
fn zero_fill(file: &mut dyn File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// Creates the segment starting at `start`, durably (temp file, header, preallocated,
/// fsync, rename, directory fsync), and opens it.
///
/// # Errors
/// The I/O error.
pub fn create_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    start: u64,
    prealloc: u64,
    prefill: bool,
) -> io::Result<Box<dyn File>> {
    let name = layout::segment(start);
    create_durably(fs, dir, &name, |file| {
        let size = prealloc.max(segment::HEADER_BYTES);
        file.write_all_at(&segment::encode_header(start, size), 0)?;
        if prefill {
            zero_fill(file, segment::HEADER_BYTES, size)?;
        } else {
            file.allocate(size)?;
        }
        // The header promises this length: a file that did not reach it says less.
        let len = file.len()?;
        if len < size {
            file.write_all_at(&segment::encode_header(start, len), 0)?;
        }
        Ok(())
    })?;
    fs.open(&join(dir, &name), true)
}

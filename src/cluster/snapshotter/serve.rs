//! Serving a snapshot to a member catching up: chunks read from disk and sent at the
//! configured pace, straight to the transport.

use std::time::Instant;

use super::{ChainSnapshotter, Report};
use crate::cluster::transfer::{CHUNK_BYTES, Part};
use crate::fs::join;

impl ChainSnapshotter {
    /// Sends `count` chunks of `file` from byte `from` to member `to`, at most at the
    /// configured rate; `Gone` when the file is not (or no longer) here.
    pub(super) fn serve(&mut self, to: u64, file: &str, checksum: u32, from: u64, count: u32) {
        let gone = || Part::Gone {
            file: file.to_string(),
            checksum,
        };
        let Some((crc, size)) = self.identity_of(file) else {
            self.missing(file);
            return self.transport.send_part(to, gone());
        };
        if crc != checksum {
            return self.transport.send_part(to, gone());
        }
        self.pinned.insert(file.to_string(), Instant::now());
        let Ok(f) = self.fs.open(&join(&self.dir, file), false) else {
            self.missing(file);
            return self.transport.send_part(to, gone());
        };
        let mut at = from;
        for _ in 0..count {
            if at >= size {
                break;
            }
            let n = CHUNK_BYTES.min(size - at);
            let mut data = vec![0u8; n as usize];
            if let Err(e) = f.read_exact_at(&mut data, at) {
                log::warn!("reading {file} to send it: {e}");
                return;
            }
            self.pace(n);
            self.last_sent
                .insert(to, (file.to_string(), at + n, Instant::now()));
            let crc = crc32c::crc32c(&data);
            self.transport.send_part(
                to,
                Part::Chunk {
                    file: file.to_string(),
                    checksum,
                    at,
                    size,
                    data,
                    crc,
                },
            );
            at += n;
        }
    }

    /// Forgets a snapshot that is not on disk (deleted by hand, say) and says so.
    fn missing(&mut self, file: &str) {
        let exists = self.fs.open(&join(&self.dir, file), false).is_ok();
        if !exists {
            log::warn!("snapshot {file} was asked for but is not on disk");
            self.on_disk.retain(|(_, n)| n != file);
            self.checksums.remove(file);
            self.parents.remove(file);
            let _ = self.reports.send(Report::Missing {
                file: file.to_string(),
            });
        }
    }

    /// Sleeps as long as sending `bytes` more takes at the configured rate.
    fn pace(&mut self, bytes: u64) {
        if self.send_rate == 0 {
            return;
        }
        let (since, sent) = &mut self.sent;
        if since.elapsed() > std::time::Duration::from_secs(1) {
            *since = Instant::now();
            *sent = 0;
        }
        *sent += bytes;
        let due = std::time::Duration::from_secs_f64(*sent as f64 / self.send_rate as f64);
        if let Some(wait) = due.checked_sub(since.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

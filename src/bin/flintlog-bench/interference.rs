//! The disk's own share of the latency the log sees while a snapshot is written or a
//! compaction frees segments: the same I/O without flintlog. One thread writes
//! `batch` records at a time into a zero-filled file and fdatasyncs each write (the
//! raw log of section a), timing each; another does what the snapshotter or the
//! compactor does to the disk, with the same write sizes, syncs and pauses.

use std::os::unix::fs::FileExt;

use super::*;
use common::{raw_batch, raw_file};

/// Per-sync latencies of a raw log (µs): idle for `idle`, then while `during` runs on
/// another thread. Returns (idle, during, seconds `during` took).
pub(crate) fn raw_latency_around(
    dir: &Path,
    batch: usize,
    idle: Duration,
    during: impl FnOnce() + Send,
) -> (Histogram<u64>, Histogram<u64>, f64) {
    let path = dir.join("raw-log.dat");
    let size = 256 * 1024 * 1024u64;
    let file = raw_file(&path, Some(size));
    let buf = raw_batch(batch);
    let phase = std::sync::atomic::AtomicU8::new(0); // 0 idle, 1 during, 2 done
    let mut hists = (
        Histogram::<u64>::new(3).unwrap(),
        Histogram::<u64>::new(3).unwrap(),
    );
    let mut took = 0.0;
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(idle);
            phase.store(1, Ordering::SeqCst);
            let t = Instant::now();
            during();
            took = t.elapsed().as_secs_f64();
            phase.store(2, Ordering::SeqCst);
        });
        let mut pos = 0u64;
        loop {
            let p = phase.load(Ordering::SeqCst);
            if p == 2 {
                break;
            }
            let t = Instant::now();
            file.write_all_at(&buf, pos).expect("write");
            file.sync_data().expect("fdatasync");
            let us = t.elapsed().as_micros().max(1) as u64;
            let h = if p == 0 { &mut hists.0 } else { &mut hists.1 };
            h.record(us).ok();
            pos = (pos + buf.len() as u64).next_multiple_of(4096) % size;
        }
    });
    drop(file);
    let _ = std::fs::remove_file(&path);
    (hists.0, hists.1, took)
}

/// Writes `bytes` into a new file as the snapshotter writes a snapshot: 256 KiB at a
/// time; at full speed (`bytes_per_sec` 0) an fdatasync every `sync_chunk` bytes, paced
/// at `bytes_per_sec` each `sync_chunk` bytes written back (`sync_file_range`, no
/// flush); then a sync, a rename and a directory sync.
pub(crate) fn write_like_a_snapshot(dir: &Path, bytes: u64, sync_chunk: u64, bytes_per_sec: u64) {
    use std::os::fd::AsRawFd;
    let temp = dir.join("raw-snapshot.tmp");
    let file = std::fs::File::create(&temp).expect("snapshot file");
    let block = vec![0x5au8; 256 * 1024];
    let (mut pos, mut since) = (0u64, 0u64);
    let started = Instant::now();
    while pos < bytes {
        file.write_all_at(&block, pos).expect("write");
        pos += block.len() as u64;
        since += block.len() as u64;
        if since >= sync_chunk && bytes_per_sec == 0 {
            file.sync_data().expect("fdatasync");
            since = 0;
        } else if since >= sync_chunk {
            let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            // SAFETY: a descriptor this function owns, and plain integers.
            let rc = unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    (pos - since) as libc::off64_t,
                    since as libc::off64_t,
                    flags,
                )
            };
            assert_eq!(
                rc,
                0,
                "sync_file_range: {}",
                std::io::Error::last_os_error()
            );
            since = 0;
        }
        if bytes_per_sec > 0 {
            let due = started + Duration::from_secs_f64(pos as f64 / bytes_per_sec as f64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    }
    file.sync_all().expect("sync");
    let done = dir.join("raw-snapshot.done");
    std::fs::rename(&temp, &done).expect("rename");
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("dir sync");
    let _ = std::fs::remove_file(done);
}

/// Files of `size` bytes each, written and synced, for [`free_like_compaction`].
pub(crate) fn segments_to_free(dir: &Path, count: usize, size: u64) -> Vec<PathBuf> {
    let block = vec![0xa5u8; 1 << 20];
    (0..count)
        .map(|i| {
            let path = dir.join(format!("raw-segment-{i}"));
            let file = std::fs::File::create(&path).expect("segment");
            for j in 0..size >> 20 {
                file.write_all_at(&block, j << 20).expect("write");
            }
            file.sync_all().expect("sync");
            path
        })
        .collect()
}

/// Frees the files as the compactor does: each truncated `chunk` bytes at a time,
/// `pause` apart, then unlinked.
pub(crate) fn free_like_compaction(files: &[PathBuf], size: u64, chunk: u64, pause: Duration) {
    for path in files {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("segment");
        let mut len = size;
        while len > 0 {
            len = len.saturating_sub(chunk);
            file.set_len(len).expect("truncate");
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
        drop(file);
        std::fs::remove_file(path).expect("unlink");
    }
}

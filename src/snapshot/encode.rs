//! Encoding a snapshot's body on a thread of its own, below every other thread on the
//! CPU, while the calling thread writes what it produces.
//!
//! The encoding is the snapshot's CPU work (a 1M-key state: ~0.13 s of bincode); the
//! writing is its I/O. A thread lowered with `nice` still holds its core when an
//! append's thread wakes up, and an append waiting for a core shows in its latency. A
//! core that runs only a `SCHED_IDLE` thread counts as idle: a waking thread is put
//! there and runs at once. But a thread that can be held off its core that long must
//! not hold what others wait for, such as a file system journal handle in the middle of
//! a `write`. So the encoder only fills buffers in memory (recycled: no allocation once
//! the pool is made), and the writer, on the calling thread at its own priority, does
//! every file operation and its pacing. The encoder runs at most [`CHUNKS_IN_FLIGHT`]
//! chunks ahead of the writer.
//!
//! A `SCHED_IDLE` thread gets almost nothing of a core that other threads keep busy:
//! when the writer has waited [`STARVED_AFTER`] for a chunk, it stops the encoder and
//! encodes the rest itself (the encoding is deterministic: it skips the bytes already
//! written), so a busy machine delays a snapshot by that much, never indefinitely. The
//! writer does not wait for a stopped encoder to end: it may not get a core for a long
//! while to see that it was stopped. So the body owns what it encodes (a cut of a
//! persistent map is cheap to clone) and the encoder's thread is left to end alone.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

use super::write::WRITE_BUFFER_BYTES;

/// Chunks of the body encoded but not yet written, at most.
pub(super) const CHUNKS_IN_FLIGHT: usize = 3;

/// The writer's longest wait for the encoder's next chunk (a chunk takes well under a
/// millisecond to encode on a core of its own) before it encodes the rest itself.
pub(super) const STARVED_AFTER: Duration = Duration::from_millis(50);

/// What a snapshot's body is encoded by: called once on the encoder's thread, and
/// again on the writer's if the encoder starves; it must write the same bytes each time.
pub(super) type Body = Arc<dyn Fn(&mut dyn Write) -> io::Result<()> + Send + Sync>;

/// The encoder's end: what the body is written to. Full chunks go to the writer; a
/// chunk it has written comes back to be filled again.
struct Encoder {
    buf: Vec<u8>,
    full: Sender<Vec<u8>>,
    free: Receiver<Vec<u8>>,
    /// Chunks made so far (at most [`CHUNKS_IN_FLIGHT`] + 1: the writer's, those in
    /// flight and the one being filled).
    made: usize,
    /// Set by the writer when it stops waiting for this encoder.
    stopped: Arc<AtomicBool>,
}

fn writer_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the snapshot writer stopped")
}

impl Encoder {
    fn hand_over(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = if self.made <= CHUNKS_IN_FLIGHT {
            self.made += 1;
            Vec::with_capacity(WRITE_BUFFER_BYTES)
        } else {
            self.free.recv().map_err(|_| writer_gone())?
        };
        let full = std::mem::replace(&mut self.buf, next);
        self.full.send(full).map_err(|_| writer_gone())
    }
}

impl Write for Encoder {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(writer_gone());
        }
        let room = WRITE_BUFFER_BYTES - self.buf.len();
        let taken = room.min(data.len());
        self.buf.extend_from_slice(&data[..taken]);
        if self.buf.len() >= WRITE_BUFFER_BYTES {
            self.hand_over()?;
        }
        Ok(taken)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Passes on what is written to it after its first `skip` bytes.
struct Skip<'a> {
    skip: u64,
    sink: &'a mut dyn Write,
}

impl Write for Skip<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let skipped = self.skip.min(data.len() as u64) as usize;
        self.skip -= skipped as u64;
        self.sink.write_all(&data[skipped..])?;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

/// How the writer's loop ended.
enum Ended {
    /// The encoder is done (its result tells whether it failed).
    Encoded,
    /// The encoder kept the writer waiting [`STARVED_AFTER`].
    Starved,
}

/// Runs `body` on an encoding thread under `SCHED_IDLE` and writes what it produces to
/// `sink` on the calling thread, in chunks of [`WRITE_BUFFER_BYTES`] (the last one
/// shorter); if the encoder starves, the calling thread encodes the rest (and the whole
/// body if no thread can be started). Returns once every byte is written to `sink`.
///
/// # Errors
/// The writer's first error (the encoder is then stopped at its next write), else the
/// encoder's.
pub(super) fn encode_beside(body: Body, sink: &mut dyn Write) -> io::Result<()> {
    let stopped = Arc::new(AtomicBool::new(false));
    let (full_tx, full_rx) = bounded::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let (free_tx, free_rx) = bounded::<Vec<u8>>(CHUNKS_IN_FLIGHT + 1);
    let encoder = {
        let (body, stopped) = (body.clone(), stopped.clone());
        std::thread::Builder::new()
            .name("snapshot-encoder".into())
            .spawn(move || {
                below_every_other_thread();
                let mut out = Encoder {
                    buf: Vec::with_capacity(WRITE_BUFFER_BYTES),
                    full: full_tx,
                    free: free_rx,
                    made: 1,
                    stopped,
                };
                body(&mut out)?;
                out.hand_over()
            })
    };
    let encoder = match encoder {
        Ok(encoder) => encoder,
        Err(e) => {
            log::debug!("no thread for the snapshot encoder ({e}): encoding on the writer's");
            return body(sink);
        }
    };
    // If the writer unwinds, the channels are dropped with it and the encoder's next
    // hand-over fails: it ends alone.
    let mut written = 0u64;
    let ended = loop {
        match full_rx.recv_timeout(STARVED_AFTER) {
            Ok(mut chunk) => {
                if let Err(e) = sink.write_all(&chunk) {
                    break Err(e);
                }
                written += chunk.len() as u64;
                chunk.clear();
                // The encoder may have finished and gone: the chunk is then not needed.
                let _ = free_tx.send(chunk);
            }
            Err(RecvTimeoutError::Disconnected) => break Ok(Ended::Encoded),
            Err(RecvTimeoutError::Timeout) => break Ok(Ended::Starved),
        }
    };
    match ended {
        // The encoder has dropped its end: its thread is ending, if not gone.
        Ok(Ended::Encoded) => encoder
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        Ok(Ended::Starved) => {
            stopped.store(true, Ordering::Relaxed);
            drop((full_rx, free_tx));
            log::debug!(
                "the snapshot encoder got no core for {STARVED_AFTER:?}: encoding the \
                 rest of the body on the writer's thread"
            );
            body(&mut Skip {
                skip: written,
                sink,
            })
        }
        Err(e) => {
            stopped.store(true, Ordering::Relaxed);
            Err(e)
        }
    }
}

/// Puts the calling thread under `SCHED_IDLE`: it runs only on a core no other thread
/// of the machine wants. A thread may always lower itself so; if it cannot, it stays
/// where it is and the snapshot is only slower to leave appends alone.
fn below_every_other_thread() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (0) with a valid parameter.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        log::debug!(
            "could not put the snapshot encoder under SCHED_IDLE: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    fn encode(
        body: impl Fn(&mut dyn Write) -> io::Result<()> + Send + Sync + 'static,
    ) -> (Vec<u8>, io::Result<()>) {
        let mut out = Vec::new();
        let result = encode_beside(Arc::new(body), &mut out);
        (out, result)
    }

    fn pattern(len: usize) -> Arc<Vec<u8>> {
        Arc::new((0..len).map(|i| (i * 7 % 251) as u8).collect())
    }

    #[test]
    fn every_byte_arrives_in_order_whatever_the_write_sizes() {
        let data = pattern(WRITE_BUFFER_BYTES * 5 + 123);
        let source = data.clone();
        let (out, result) = encode(move |w| {
            for piece in source.chunks(1000) {
                w.write_all(piece)?;
            }
            w.write_all(&[])
        });
        result.unwrap();
        assert_eq!(out, *data);
    }

    #[test]
    fn an_empty_body_writes_nothing() {
        let (out, result) = encode(|_| Ok(()));
        result.unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn the_encoder_runs_on_its_own_thread_under_sched_idle() {
        let caller = std::thread::current().id();
        let (_, result) = encode(move |w| {
            assert_ne!(std::thread::current().id(), caller);
            // SAFETY: reads the calling thread's policy.
            let policy = unsafe { libc::sched_getscheduler(0) };
            assert_eq!(policy, libc::SCHED_IDLE, "the encoder's scheduling policy");
            w.write_all(b"x")
        });
        result.unwrap();
    }

    #[test]
    fn a_starved_encoder_is_left_behind_and_the_writer_encodes_the_rest_itself() {
        let data = pattern(WRITE_BUFFER_BYTES * 3 + 77);
        let source = data.clone();
        let caller = std::thread::current().id();
        let runs_by_the_writer = Arc::new(AtomicUsize::new(0));
        let runs = runs_by_the_writer.clone();
        let started = Instant::now();
        let (out, result) = encode(move |w| {
            let on_encoder = std::thread::current().id() != caller;
            if !on_encoder {
                runs.fetch_add(1, Ordering::Relaxed);
            }
            for (i, piece) in source.chunks(4096).enumerate() {
                if on_encoder && i == WRITE_BUFFER_BYTES / 4096 + 1 {
                    // The encoder stalls after its first chunk as if it got no core,
                    // and would not see that it was stopped for twenty seconds.
                    std::thread::sleep(Duration::from_secs(20));
                }
                w.write_all(piece)?;
            }
            Ok(())
        });
        result.unwrap();
        assert_eq!(
            out, *data,
            "the bytes of one encoding, none twice or missing"
        );
        assert_eq!(runs_by_the_writer.load(Ordering::Relaxed), 1);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }

    /// A sink that fails after `ok` bytes.
    struct Failing {
        ok: usize,
        seen: usize,
    }
    impl Write for Failing {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if self.seen + data.len() > self.ok {
                return Err(io::Error::other("disk gone"));
            }
            self.seen += data.len();
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_error_stops_the_encoder_and_is_the_one_reported() {
        let mut sink = Failing {
            ok: WRITE_BUFFER_BYTES,
            seen: 0,
        };
        let encoded = Arc::new(AtomicUsize::new(0));
        let (count, (done_tx, done_rx)) = (encoded.clone(), crossbeam_channel::bounded(1));
        let result = encode_beside(
            Arc::new(move |w: &mut dyn Write| {
                // Far more than the writer takes and the chunks in flight hold.
                let outcome = (0..1000).try_for_each(|_| {
                    w.write_all(&[1u8; WRITE_BUFFER_BYTES])?;
                    count.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                });
                let _ = done_tx.send(());
                outcome
            }),
            &mut sink,
        );
        assert_eq!(result.unwrap_err().to_string(), "disk gone");
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the encoder stops");
        let encoded = encoded.load(Ordering::Relaxed);
        assert!(encoded <= CHUNKS_IN_FLIGHT + 3, "encoded {encoded} chunks");
    }

    #[test]
    fn an_encoding_error_is_reported_once_what_was_handed_over_is_written() {
        let (out, result) = encode(|w| {
            w.write_all(&[2u8; WRITE_BUFFER_BYTES + 10])?;
            Err(io::Error::other("bad state"))
        });
        assert_eq!(result.unwrap_err().to_string(), "bad state");
        assert_eq!(out, vec![2u8; WRITE_BUFFER_BYTES]);
    }

    #[test]
    fn a_writer_that_panics_does_not_leave_the_encoder_waiting() {
        struct Panicking;
        impl Write for Panicking {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                panic!("crash in the middle of a write");
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let outcome = std::panic::catch_unwind(move || {
            encode_beside(
                Arc::new(move |w: &mut dyn Write| {
                    let outcome =
                        (0..100).try_for_each(|_| w.write_all(&[3u8; WRITE_BUFFER_BYTES]));
                    let _ = done_tx.send(());
                    outcome
                }),
                &mut Panicking,
            )
        });
        assert!(outcome.is_err(), "the writer's panic goes on to the caller");
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the encoder stops");
    }
}

//! Writing snapshots and deltas crash-safely: temp file, body synced in chunks so
//! that the log's own syncs never queue behind much of it, header, sync, rename,
//! directory sync. The body is encoded on a thread of its own (see [`super::encode`]).

use super::encode::encode_beside;
use super::*;

pub(super) const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// How a snapshot file is written: handed to the disk every `sync_chunk` bytes, so
/// that the data never piles up for one burst that the log's own fdatasync would queue
/// behind. Paced (a log given and a rate), the file is written at most at
/// `busy_bytes_per_sec` while the log syncs (see [`crate::core::pace`]) and each chunk
/// is written back with no cache flush: the log's flushes carry the little written
/// since the one before. Unpaced, each chunk is fdatasynced: at full speed, the
/// snapshot's own flushes carry its bytes, where the log's would otherwise (in
/// `make bench`, a raw log beside a file written at full speed had a p99 1.3-2.9x
/// idle with a flush per chunk, 5.2-7.9x without).
#[derive(Debug, Clone)]
pub struct WritePace {
    /// Bytes between two hand-offs to the disk (an fdatasync, or when paced a write-back).
    pub sync_chunk: u64,
    /// Most bytes per second while the log syncs (0: no limit).
    pub busy_bytes_per_sec: u64,
    /// The log whose syncs pace the writes (`None`: never paced).
    pub log: Option<SyncCount>,
}

impl WritePace {
    /// Fdatasynced every `sync_chunk` bytes, never paced.
    pub fn unpaced(sync_chunk: u64) -> WritePace {
        WritePace {
            sync_chunk,
            busy_bytes_per_sec: 0,
            log: None,
        }
    }

    fn pacer(&self) -> Option<(Pacer, SyncCount)> {
        let log = self.log.clone()?;
        (self.busy_bytes_per_sec > 0).then(|| {
            (
                Pacer::new(self.busy_bytes_per_sec, Instant::now(), log.get()),
                log,
            )
        })
    }
}

/// Streams the body into the temp file, handing it to the disk every `sync_chunk`
/// bytes as [`WritePace`] says (the file is made durable whole by [`create_durably`]).
pub(super) struct ChunkWriter<'f> {
    pub(super) file: &'f mut dyn File,
    pub(super) pos: u64,
    pub(super) buf: Vec<u8>,
    pub(super) crc: u32,
    pub(super) since_sync: u64,
    pub(super) sync_chunk: u64,
    pub(super) pacer: Option<(Pacer, SyncCount)>,
}

impl ChunkWriter<'_> {
    fn flush_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let written = self.put(&buf);
        self.buf = buf;
        self.buf.clear();
        written
    }

    /// Writes `data` at the end of the file, then hands it to the disk and paces as
    /// [`WritePace`] says.
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, self.pos)?;
        self.crc = crc32c::crc32c_append(self.crc, data);
        let bytes = data.len() as u64;
        self.pos += bytes;
        self.since_sync += bytes;
        if self.since_sync >= self.sync_chunk {
            if self.pacer.is_some() {
                self.file
                    .write_back(self.pos - self.since_sync, self.since_sync)
                    .map_err(sync_failed)?;
            } else {
                self.file.sync_data().map_err(sync_failed)?;
            }
            self.since_sync = 0;
        }
        if let Some((pacer, log)) = &mut self.pacer {
            let wait = pacer.after_write(bytes, Instant::now(), log.get());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
        Ok(())
    }
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.is_empty() && data.len() >= WRITE_BUFFER_BYTES {
            // A whole chunk from the encoder: written as it is, not copied.
            self.put(data)?;
            return Ok(data.len());
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_BUFFER_BYTES {
            self.flush_buf()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()
    }
}

pub(super) fn encode_err(e: bincode::error::EncodeError) -> io::Error {
    match e {
        bincode::error::EncodeError::Io { inner, .. } => inner,
        other => io::Error::other(other.to_string()),
    }
}

/// Writes the snapshot of `state` at `offset` into `dir`, crash-safely, and returns it
/// once durable.
///
/// # Errors
/// Any I/O error; the temp file is then removed (best effort) and no snapshot under
/// the final name was touched.
pub fn write(
    fs: &dyn FileSystem,
    dir: &Path,
    offset: Offset,
    state: &KvState,
    pace: &WritePace,
) -> io::Result<SnapshotFile> {
    let offset = offset.on_disk();
    let state = state.clone();
    write_file(fs, dir, file_name(offset), MAGIC, offset, pace, move |w| {
        write_body(w, &state)
    })
}

/// Writes the delta at `offset` building on `parent`: `changes` (from
/// [`KvState::changes_to`]) and the other-payload count, crash-safely as [`write()`].
///
/// # Errors
/// As [`write()`].
pub fn write_delta(
    fs: &dyn FileSystem,
    dir: &Path,
    offset: Offset,
    parent: &SnapshotFile,
    changes: &[Change],
    other_payloads: u64,
    pace: &WritePace,
) -> io::Result<SnapshotFile> {
    let offset = offset.on_disk();
    let name = delta_file_name(offset);
    let (parent, changes) = (parent.clone(), changes.to_vec());
    write_file(fs, dir, name, DELTA_MAGIC, offset, pace, move |w| {
        write_delta_body(w, &parent, &changes, other_payloads)
    })
}

/// Writes a cluster node's snapshot `name` at Raft index `index`: `head` (the
/// consensus layer's own fields, opaque here) then the state's body, crash-safely as
/// [`write()`].
///
/// # Errors
/// As [`write()`].
pub fn write_machine(
    fs: &dyn FileSystem,
    dir: &Path,
    name: String,
    index: u64,
    head: &[u8],
    state: &KvState,
    pace: &WritePace,
) -> io::Result<SnapshotFile> {
    let (head, state) = (head.to_vec(), state.clone());
    write_file(fs, dir, name, MACHINE_MAGIC, index, pace, move |mut w| {
        bincode::encode_into_std_write(head.as_slice(), &mut w, bincode_config())
            .map_err(encode_err)?;
        write_body(w, &state)
    })
}

/// Writes a cluster node's delta `name` at Raft index `index`, building on `parent`
/// (the cluster snapshot or delta before it): `head` (the consensus layer's fields at
/// `index`, whole: they are small) then the changes since `parent`, crash-safely as
/// [`write()`].
///
/// # Errors
/// As [`write()`].
#[allow(clippy::too_many_arguments)]
pub fn write_machine_delta(
    fs: &dyn FileSystem,
    dir: &Path,
    name: String,
    index: u64,
    head: &[u8],
    parent: &SnapshotFile,
    changes: &[Change],
    other_payloads: u64,
    pace: &WritePace,
) -> io::Result<SnapshotFile> {
    let (head, parent, changes) = (head.to_vec(), parent.clone(), changes.to_vec());
    write_file(
        fs,
        dir,
        name,
        MACHINE_DELTA_MAGIC,
        index,
        pace,
        move |mut w| {
            bincode::encode_into_std_write(head.as_slice(), &mut w, bincode_config())
                .map_err(encode_err)?;
            write_delta_body(w, &parent, &changes, other_payloads)
        },
    )
}

/// The recipe every kind shares: the body streamed after a placeholder header (handed
/// to the disk every `sync_chunk` bytes), then the real header, all through [`create_durably`].
pub(super) fn write_file(
    fs: &dyn FileSystem,
    dir: &Path,
    name: String,
    magic: &[u8; 8],
    offset: u64,
    pace: &WritePace,
    body: impl Fn(&mut dyn Write) -> io::Result<()> + Send + Sync + 'static,
) -> io::Result<SnapshotFile> {
    let (mut size_bytes, mut checksum) = (0, 0);
    create_durably(fs, dir, &name, |file| {
        let mut w = ChunkWriter {
            file,
            pos: HEADER_BYTES,
            buf: Vec::with_capacity(WRITE_BUFFER_BYTES + 4096),
            crc: 0,
            since_sync: 0,
            sync_chunk: pace.sync_chunk,
            pacer: pace.pacer(),
        };
        encode_beside(std::sync::Arc::new(body), &mut w)?;
        w.flush()?;
        let header = Header {
            offset,
            body_len: w.pos - HEADER_BYTES,
            body_crc: w.crc,
        };
        size_bytes = w.pos;
        checksum = w.crc;
        w.file.write_all_at(&encode_header(&header, magic), 0)
    })?;
    Ok(SnapshotFile {
        file: name,
        offset: Offset::from_disk(offset),
        size_bytes,
        checksum,
    })
}

pub(super) fn write_delta_body(
    mut w: &mut dyn Write,
    parent: &SnapshotFile,
    changes: &[Change],
    other_payloads: u64,
) -> io::Result<()> {
    let head = (
        parent.offset.on_disk(),
        parent.checksum,
        other_payloads,
        changes.len() as u64,
    );
    bincode::encode_into_std_write(head, &mut w, bincode_config()).map_err(encode_err)?;
    for (k, v) in changes {
        bincode::encode_into_std_write((&**k, v.as_deref()), &mut w, bincode_config())
            .map_err(encode_err)?;
    }
    Ok(())
}

/// Encodes the body: the key count and other-payload count, then the pairs in key order.
pub(super) fn write_body(mut w: &mut dyn Write, state: &KvState) -> io::Result<()> {
    let head = (state.map.len() as u64, state.other_payloads);
    bincode::encode_into_std_write(head, &mut w, bincode_config()).map_err(encode_err)?;
    for (k, v) in state.map.iter() {
        bincode::encode_into_std_write((&**k, &**v), &mut w, bincode_config())
            .map_err(encode_err)?;
    }
    Ok(())
}

/// The bytes of the snapshot file of `state` at `offset`, in memory (what [`write()`]
/// puts on disk).
pub fn to_bytes(offset: u64, state: &KvState) -> Vec<u8> {
    let mut body = Vec::new();
    write_body(&mut body, state).expect("writing to memory cannot fail");
    let header = Header {
        offset,
        body_len: body.len() as u64,
        body_crc: crc32c::crc32c(&body),
    };
    let mut out = encode_header(&header, MAGIC).to_vec();
    out.extend_from_slice(&body);
    out
}

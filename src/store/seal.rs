//! Encryption at rest in the store: every object (snapshots, deltas, manifests) sealed
//! with a 256-bit key before it leaves the node, and opened and authenticated when it
//! comes back.
//!
//! The construction is XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`) in the
//! STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár (`aead-stream`,
//! big-endian 32-bit counter): the object is cut into chunks of [`CHUNK_BYTES`], each
//! encrypted and authenticated under a nonce made of a random prefix (one per object),
//! the chunk's position, and a flag that marks the last chunk. A chunk moved, dropped,
//! repeated, or taken from another object, and an object cut short after any chunk,
//! fail authentication. Every chunk also authenticates the object's clear header and
//! its name in the store, so an object copied under another name (an older delta
//! under a newer one's name) fails too.
//!
//! ```text
//! header (43 bytes, in the clear):
//!   "FLNTSEAL" | version u8 (1) | 3 reserved bytes (0) | chunk bytes u32 LE
//!   | key id (8 bytes) | nonce prefix (19 random bytes)
//! then each chunk: ciphertext (chunk bytes; the last may be shorter, even empty)
//!   | Poly1305 tag (16 bytes)
//! associated data of every chunk: the header, then the object's name
//! ```
//!
//! The key id is the first 8 bytes of the key's tag over a fixed empty message: it
//! names the key without revealing it, so that a reader with several keys (rotation:
//! the first given encrypts, every one decrypts) picks the right one, and a reader
//! with none says which key the store needs.

use std::io::{self, Read, Write};
use std::path::Path;

use aead_stream::aead::{Aead, KeyInit, Payload};
use aead_stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::XChaCha20Poly1305;

use super::{Listed, SnapshotStore, StoreError};

/// What a sealed object starts with.
pub const MAGIC: &[u8; 8] = b"FLNTSEAL";
const VERSION: u8 = 1;
/// Plaintext bytes per chunk.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Largest chunk a reader accepts from a header (a damaged header must not make it
/// allocate without bound).
const CHUNK_BYTES_MAX: usize = 16 * 1024 * 1024;
const TAG: usize = 16;
const PREFIX: usize = 19;
/// The clear header's length.
pub const HEADER_BYTES: usize = 8 + 1 + 3 + 4 + 8 + PREFIX;

/// A key that seals and opens the store's objects.
#[derive(Clone)]
pub struct StoreKey {
    id: [u8; 8],
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        write!(f, "StoreKey({})", self.id())
    }
}

/// Two keys are the same key when their ids are (an id is 64 bits of the key's tag).
impl PartialEq for StoreKey {
    fn eq(&self, other: &StoreKey) -> bool {
        self.id == other.id
    }
}

impl Eq for StoreKey {}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl StoreKey {
    /// A key from its 64 hexadecimal characters (whitespace around them ignored).
    ///
    /// # Errors
    /// Not 64 hexadecimal characters: what is wrong, never the text itself.
    pub fn from_hex(text: &str) -> Result<StoreKey, String> {
        let t = text.trim();
        if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "a store key is 64 hexadecimal characters (256 bits); this holds {} \
                 characters{} (flintlog keygen prints a new key)",
                t.chars().count(),
                if t.bytes().all(|b| b.is_ascii_hexdigit()) {
                    ""
                } else {
                    ", not all hexadecimal"
                }
            ));
        }
        let mut key = [0u8; 32];
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).expect("checked hexadecimal");
        }
        Ok(StoreKey::from_bytes(key))
    }

    fn from_bytes(key: [u8; 32]) -> StoreKey {
        let cipher = XChaCha20Poly1305::new(&key.into());
        // The key's tag over a fixed empty message, under a nonce no object uses (every
        // object's nonce starts with 19 random bytes).
        let tag = cipher
            .encrypt(
                &[0u8; 24].into(),
                Payload {
                    msg: b"",
                    aad: b"flintlog store key id",
                },
            )
            .expect("an empty message always encrypts");
        let mut id = [0u8; 8];
        id.copy_from_slice(&tag[..8]);
        StoreKey { id, cipher }
    }

    /// Reads a key file (64 hexadecimal characters).
    ///
    /// # Errors
    /// The file cannot be read or does not hold a key: what and why.
    pub fn read(path: &Path) -> Result<StoreKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the store key file {}: {e}", path.display()))?;
        StoreKey::from_hex(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A new random key, as 64 hexadecimal characters.
    ///
    /// # Errors
    /// The operating system gave no random bytes.
    pub fn generate() -> Result<String, String> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| format!("no random bytes from the OS: {e}"))?;
        Ok(hex(&key))
    }

    /// The key's id, as 16 hexadecimal characters.
    pub fn id(&self) -> String {
        hex(&self.id)
    }
}

/// The size of an object of `plain` bytes once sealed.
pub fn sealed_size(plain: u64) -> u64 {
    let chunk = CHUNK_BYTES as u64;
    let chunks = plain.div_ceil(chunk).max(1);
    HEADER_BYTES as u64 + plain + TAG as u64 * chunks
}

fn header(key: &StoreKey, prefix: &[u8; PREFIX]) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..8].copy_from_slice(MAGIC);
    h[8] = VERSION;
    h[12..16].copy_from_slice(&(CHUNK_BYTES as u32).to_le_bytes());
    h[16..24].copy_from_slice(&key.id);
    h[24..].copy_from_slice(prefix);
    h
}

fn associated(header: &[u8], name: &str) -> Vec<u8> {
    let mut aad = header.to_vec();
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// Reads a plaintext of a known size and yields it sealed.
struct SealReader<'a> {
    src: &'a mut dyn Read,
    /// Plaintext bytes still to read.
    left: u64,
    encryptor: Option<EncryptorBE32<XChaCha20Poly1305>>,
    aad: Vec<u8>,
    out: Vec<u8>,
    at: usize,
}

impl<'a> SealReader<'a> {
    fn new(key: &StoreKey, name: &str, src: &'a mut dyn Read, size: u64) -> io::Result<Self> {
        let mut prefix = [0u8; PREFIX];
        getrandom::fill(&mut prefix).map_err(|e| io::Error::other(e.to_string()))?;
        let h = header(key, &prefix);
        Ok(SealReader {
            src,
            left: size,
            encryptor: Some(EncryptorBE32::from_aead(key.cipher.clone(), &prefix.into())),
            aad: associated(&h, name),
            out: h.to_vec(),
            at: 0,
        })
    }

    /// Seals the next chunk into `out` (in place: read, then encrypted where it lies);
    /// false once the last one was sealed.
    fn next_chunk(&mut self) -> io::Result<bool> {
        if self.encryptor.is_none() {
            return Ok(false);
        }
        let n = self.left.min(CHUNK_BYTES as u64) as usize;
        self.out.clear();
        self.out.resize(n, 0);
        self.src.read_exact(&mut self.out)?;
        self.left -= n as u64;
        let sealed = if self.left == 0 {
            self.encryptor
                .take()
                .expect("present")
                .encrypt_last_in_place(&self.aad, &mut self.out)
        } else {
            self.encryptor
                .as_mut()
                .expect("present")
                .encrypt_next_in_place(&self.aad, &mut self.out)
        };
        sealed.map_err(|_| io::Error::other("the object is too large to seal"))?;
        self.at = 0;
        Ok(true)
    }
}

impl Read for SealReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.out.len() && !self.next_chunk()? {
            return Ok(0);
        }
        let n = buf.len().min(self.out.len() - self.at);
        buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Where an object being read stands.
enum Opening {
    /// Its first bytes, until the header is whole (or shows a clear object).
    Head(Vec<u8>),
    /// A clear object, written before encryption was turned on (passed through when
    /// no key is given).
    Clear,
    Sealed {
        decryptor: Option<DecryptorBE32<XChaCha20Poly1305>>,
        aad: Vec<u8>,
        /// Sealed bytes of the chunks not yet opened.
        pending: Vec<u8>,
        chunk: usize,
        index: u64,
    },
}

/// Takes an object's bytes as the store gives them and writes the plaintext on.
struct OpenWriter<'a> {
    into: &'a mut dyn Write,
    keys: &'a [StoreKey],
    name: &'a str,
    state: Opening,
    written: u64,
    /// Why the object was refused: the message `get` returns.
    refused: Option<String>,
    /// The chunk being opened (kept to spare an allocation per chunk).
    scratch: Vec<u8>,
}

impl OpenWriter<'_> {
    fn refuse(&mut self, why: String) -> io::Error {
        let e = io::Error::other(why.clone());
        self.refused = Some(why);
        e
    }

    fn emit(&mut self, plain: &[u8]) -> io::Result<()> {
        self.into.write_all(plain)?;
        self.written += plain.len() as u64;
        Ok(())
    }

    /// Decides what the object is once enough of it has come.
    fn start(&mut self, head: Vec<u8>, whole: bool) -> io::Result<()> {
        let sealed = head.len() >= MAGIC.len() && head[..MAGIC.len()] == MAGIC[..];
        if !sealed {
            if head.len() < MAGIC.len() && !whole && MAGIC.starts_with(&head) {
                self.state = Opening::Head(head);
                return Ok(());
            }
            if !self.keys.is_empty() {
                let why = format!(
                    "{} is not encrypted, but a store key was given: it was written before \
                     encryption was turned on, or by someone without the key; it is not \
                     trusted (read it without --store-key-file to see it)",
                    self.name
                );
                return Err(self.refuse(why));
            }
            self.state = Opening::Clear;
            return self.emit(&head);
        }
        if head.len() < HEADER_BYTES {
            if whole {
                let why = format!("{} is cut short inside its header", self.name);
                return Err(self.refuse(why));
            }
            self.state = Opening::Head(head);
            return Ok(());
        }
        let h = &head[..HEADER_BYTES];
        let id = &h[16..24];
        if h[8] != VERSION {
            let why = format!(
                "{} is sealed in format version {}; this build reads version {VERSION}",
                self.name, h[8]
            );
            return Err(self.refuse(why));
        }
        let chunk = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes")) as usize;
        if chunk == 0 || chunk > CHUNK_BYTES_MAX {
            let why = format!("{} has a damaged header (chunk size {chunk})", self.name);
            return Err(self.refuse(why));
        }
        let Some(key) = self.keys.iter().find(|k| k.id[..] == *id) else {
            let why = if self.keys.is_empty() {
                format!(
                    "the store is encrypted with key id {} ({}); give its key with \
                     --store-key-file",
                    hex(id),
                    self.name
                )
            } else {
                format!(
                    "{} is encrypted with key id {}, and no key given has that id (given: \
                     {})",
                    self.name,
                    hex(id),
                    self.keys
                        .iter()
                        .map(StoreKey::id)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err(self.refuse(why));
        };
        let prefix: [u8; PREFIX] = h[24..].try_into().expect("19 bytes");
        self.state = Opening::Sealed {
            decryptor: Some(DecryptorBE32::from_aead(key.cipher.clone(), &prefix.into())),
            aad: associated(h, self.name),
            pending: head[HEADER_BYTES..].to_vec(),
            chunk: chunk + TAG,
            index: 0,
        };
        self.open_chunks(false)
    }

    /// Opens every chunk known not to be the last (more bytes follow it), or, at the
    /// end of the object, the last one.
    fn open_chunks(&mut self, end: bool) -> io::Result<()> {
        loop {
            let Opening::Sealed {
                decryptor,
                aad,
                pending,
                chunk,
                index,
            } = &mut self.state
            else {
                return Ok(());
            };
            let last = end && pending.len() <= *chunk;
            if !last && pending.len() <= *chunk {
                return Ok(());
            }
            let take = if last { pending.len() } else { *chunk };
            // Opened in place, in a buffer kept from chunk to chunk.
            let mut buf = std::mem::take(&mut self.scratch);
            buf.clear();
            buf.extend(pending.drain(..take));
            let opened = if last {
                decryptor
                    .take()
                    .map(|d| d.decrypt_last_in_place(aad, &mut buf))
            } else {
                decryptor
                    .as_mut()
                    .map(|d| d.decrypt_next_in_place(aad, &mut buf))
            };
            let at = *index;
            *index += 1;
            let authentic = matches!(opened, Some(Ok(())));
            let emitted = if authentic { self.emit(&buf) } else { Ok(()) };
            self.scratch = buf;
            emitted?;
            if !authentic {
                let why = format!(
                    "{} failed authentication at chunk {at}{}: it is damaged, cut short, \
                     or not the object written under this name",
                    self.name,
                    if last { " (the last)" } else { "" }
                );
                return Err(self.refuse(why));
            }
            if last {
                return Ok(());
            }
        }
    }

    /// The object ended: opens its last chunk.
    fn finish(&mut self) -> io::Result<()> {
        match std::mem::replace(&mut self.state, Opening::Clear) {
            Opening::Head(head) => self.start(head, true)?,
            other => self.state = other,
        }
        if let Opening::Sealed { decryptor, .. } = &self.state
            && decryptor.is_some()
        {
            self.open_chunks(true)?;
        }
        Ok(())
    }
}

impl Write for OpenWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.state {
            Opening::Clear => self.emit(buf)?,
            Opening::Head(head) => {
                let mut head = std::mem::take(head);
                head.extend_from_slice(buf);
                self.start(head, false)?;
            }
            Opening::Sealed { pending, .. } => {
                pending.extend_from_slice(buf);
                self.open_chunks(false)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.into.flush()
    }
}

/// A store whose objects are sealed with the first key and opened with any of them.
/// Without keys it passes objects through and refuses sealed ones, naming their key.
pub struct Sealed {
    inner: Box<dyn SnapshotStore>,
    keys: Vec<StoreKey>,
}

impl Sealed {
    /// `inner`, sealed with `keys` (none: objects in the clear).
    pub fn new(inner: Box<dyn SnapshotStore>, keys: Vec<StoreKey>) -> Sealed {
        Sealed { inner, keys }
    }
}

impl SnapshotStore for Sealed {
    fn url(&self) -> String {
        self.inner.url()
    }

    fn put(&self, name: &str, data: &mut dyn Read, size: u64) -> Result<(), StoreError> {
        let Some(key) = self.keys.first() else {
            return self.inner.put(name, data, size);
        };
        let mut sealed = SealReader::new(key, name, data, size)
            .map_err(|e| StoreError::Failed(format!("sealing {name}: {e}")))?;
        self.inner.put(name, &mut sealed, sealed_size(size))
    }

    fn put_new(&self, name: &str, data: Vec<u8>) -> Result<bool, StoreError> {
        let Some(key) = self.keys.first() else {
            return self.inner.put_new(name, data);
        };
        let size = data.len() as u64;
        let mut sealed = Vec::with_capacity(sealed_size(size) as usize);
        SealReader::new(key, name, &mut &data[..], size)
            .and_then(|mut r| r.read_to_end(&mut sealed))
            .map_err(|e| StoreError::Failed(format!("sealing {name}: {e}")))?;
        self.inner.put_new(name, sealed)
    }

    fn get(&self, name: &str, into: &mut dyn Write) -> Result<u64, StoreError> {
        let mut w = OpenWriter {
            into,
            keys: &self.keys,
            name,
            state: Opening::Head(Vec::new()),
            written: 0,
            refused: None,
            scratch: Vec::new(),
        };
        let got = self.inner.get(name, &mut w).and_then(|_| {
            w.finish()
                .map_err(|e| StoreError::Failed(format!("reading {name}: {e}")))
        });
        match (got, w.refused) {
            (_, Some(why)) => Err(StoreError::Failed(why)),
            (Err(e), None) => Err(e),
            (Ok(()), None) => Ok(w.written),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        self.inner.list(prefix)
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.inner.delete(name)
    }

    fn stored_size(&self, plain: u64) -> u64 {
        if self.keys.is_empty() {
            self.inner.stored_size(plain)
        } else {
            sealed_size(plain)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Objects in memory.
    #[derive(Default)]
    struct Mem(Mutex<BTreeMap<String, Vec<u8>>>);

    impl SnapshotStore for std::sync::Arc<Mem> {
        fn url(&self) -> String {
            "mem://".into()
        }
        fn put(&self, name: &str, data: &mut dyn Read, size: u64) -> Result<(), StoreError> {
            let mut b = Vec::new();
            data.read_to_end(&mut b)
                .map_err(|e| StoreError::Failed(e.to_string()))?;
            assert_eq!(b.len() as u64, size, "the size given to the store is exact");
            self.0.lock().unwrap().insert(name.into(), b);
            Ok(())
        }
        fn put_new(&self, name: &str, data: Vec<u8>) -> Result<bool, StoreError> {
            let mut m = self.0.lock().unwrap();
            if m.contains_key(name) {
                return Ok(false);
            }
            m.insert(name.into(), data);
            Ok(true)
        }
        fn get(&self, name: &str, into: &mut dyn Write) -> Result<u64, StoreError> {
            let b = self.0.lock().unwrap().get(name).cloned();
            let b = b.ok_or_else(|| StoreError::NotFound(name.into()))?;
            // In uneven pieces, as a network gives them.
            for piece in b.chunks(7919) {
                into.write_all(piece)
                    .map_err(|e| StoreError::Failed(e.to_string()))?;
            }
            Ok(b.len() as u64)
        }
        fn list(&self, _: &str) -> Result<Vec<Listed>, StoreError> {
            Ok(Vec::new())
        }
        fn delete(&self, name: &str) -> Result<(), StoreError> {
            self.0.lock().unwrap().remove(name);
            Ok(())
        }
    }

    fn key(byte: u8) -> StoreKey {
        StoreKey::from_hex(&hex(&[byte; 32])).unwrap()
    }

    fn stores(keys: Vec<StoreKey>) -> (std::sync::Arc<Mem>, Sealed) {
        let mem = std::sync::Arc::new(Mem::default());
        (mem.clone(), Sealed::new(Box::new(mem), keys))
    }

    fn put(s: &Sealed, name: &str, data: &[u8]) {
        s.put(name, &mut &data[..], data.len() as u64).unwrap();
    }

    fn get(s: &Sealed, name: &str) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let n = s.get(name, &mut out).map_err(|e| e.to_string())?;
        assert_eq!(n, out.len() as u64);
        Ok(out)
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn objects_of_every_size_round_trip_and_nothing_is_in_the_clear() {
        let (mem, s) = stores(vec![key(1)]);
        for n in [
            0,
            1,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            CHUNK_BYTES + 1,
            3 * CHUNK_BYTES + 5,
        ] {
            let data = sample(n);
            let name = format!("n1/{n}.snap");
            put(&s, &name, &data);
            let stored = mem.0.lock().unwrap()[&name].clone();
            assert_eq!(stored.len() as u64, sealed_size(n as u64));
            if n >= 64 {
                assert!(
                    !stored
                        .windows(64)
                        .any(|w| data.windows(64).next() == Some(w)),
                    "plaintext found in the sealed object"
                );
            }
            assert_eq!(get(&s, &name).unwrap(), data, "{n} bytes");
        }
        assert!(s.put_new("n1/m.json", b"{\"a\": 1}".to_vec()).unwrap());
        assert_eq!(get(&s, "n1/m.json").unwrap(), b"{\"a\": 1}");
        assert!(!s.put_new("n1/m.json", b"{}".to_vec()).unwrap());
    }

    #[test]
    fn a_damaged_cut_reordered_or_renamed_object_is_refused() {
        let (mem, s) = stores(vec![key(1)]);
        let data = sample(3 * CHUNK_BYTES + 100);
        put(&s, "n1/a.snap", &data);
        put(&s, "n1/b.snap", &data);
        let sealed = mem.0.lock().unwrap()["n1/a.snap"].clone();
        let chunk = CHUNK_BYTES + TAG;
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut flipped = sealed.clone();
        flipped[HEADER_BYTES + chunk + 5] ^= 1;
        cases.push(("a flipped byte", flipped));
        cases.push((
            "cut after a chunk",
            sealed[..HEADER_BYTES + 2 * chunk].to_vec(),
        ));
        cases.push(("cut inside a chunk", sealed[..sealed.len() - 3].to_vec()));
        cases.push(("cut inside the header", sealed[..20].to_vec()));
        let mut swapped = sealed[..HEADER_BYTES].to_vec();
        swapped.extend_from_slice(&sealed[HEADER_BYTES + chunk..HEADER_BYTES + 2 * chunk]);
        swapped.extend_from_slice(&sealed[HEADER_BYTES..HEADER_BYTES + chunk]);
        swapped.extend_from_slice(&sealed[HEADER_BYTES + 2 * chunk..]);
        cases.push(("two chunks swapped", swapped));
        let other = mem.0.lock().unwrap()["n1/b.snap"].clone();
        let mut spliced = sealed[..HEADER_BYTES + chunk].to_vec();
        spliced.extend_from_slice(&other[HEADER_BYTES + chunk..]);
        cases.push(("spliced with another object", spliced));
        let mut header = sealed.clone();
        header[30] ^= 1;
        cases.push(("its nonce changed", header));
        // Each under the object's own name: only the damage differs.
        for (what, bytes) in cases {
            mem.0.lock().unwrap().insert("n1/a.snap".into(), bytes);
            let e = get(&s, "n1/a.snap").expect_err(what);
            assert!(
                e.contains("n1/a.snap") && (e.contains("authentication") || e.contains("cut")),
                "{what}: {e}"
            );
        }
        mem.0
            .lock()
            .unwrap()
            .insert("n1/a.snap".into(), sealed.clone());
        assert_eq!(get(&s, "n1/a.snap").unwrap(), data);
        // The whole object, copied under another name.
        mem.0.lock().unwrap().insert("n1/c.snap".into(), sealed);
        let e = get(&s, "n1/c.snap").unwrap_err();
        assert!(e.contains("authentication at chunk 0"), "{e}");
    }

    #[test]
    fn keys_are_named_by_id_and_rotate() {
        let (a, b) = (key(1), key(2));
        assert_ne!(a.id(), b.id());
        assert!(!format!("{a:?}").contains(&hex(&[1; 32])));
        let (mem, with_a) = stores(vec![a.clone()]);
        put(&with_a, "n1/old.snap", b"written under a");
        // No key: the store says which key it needs.
        let none = Sealed::new(Box::new(mem.clone()), Vec::new());
        let e = get(&none, "n1/old.snap").unwrap_err();
        assert!(e.contains(&a.id()) && e.contains("--store-key-file"), "{e}");
        // Another key only.
        let other = Sealed::new(Box::new(mem.clone()), vec![b.clone()]);
        let e = get(&other, "n1/old.snap").unwrap_err();
        assert!(e.contains(&a.id()) && e.contains(&b.id()), "{e}");
        // Rotation: b first (it seals), a still opens the old objects.
        let rotated = Sealed::new(Box::new(mem.clone()), vec![b.clone(), a.clone()]);
        put(&rotated, "n1/new.snap", b"written under b");
        assert_eq!(get(&rotated, "n1/old.snap").unwrap(), b"written under a");
        assert_eq!(get(&rotated, "n1/new.snap").unwrap(), b"written under b");
        assert!(get(&with_a, "n1/new.snap").unwrap_err().contains(&b.id()));
    }

    #[test]
    fn clear_objects_pass_without_a_key_and_are_refused_with_one() {
        let (mem, clear) = stores(Vec::new());
        put(&clear, "n1/m.json", b"{}");
        put(&clear, "n1/e", b"");
        put(&clear, "n1/f", b"FLNT");
        assert_eq!(get(&clear, "n1/m.json").unwrap(), b"{}");
        assert_eq!(get(&clear, "n1/e").unwrap(), b"");
        assert_eq!(get(&clear, "n1/f").unwrap(), b"FLNT");
        let keyed = Sealed::new(Box::new(mem), vec![key(1)]);
        let e = get(&keyed, "n1/m.json").unwrap_err();
        assert!(e.contains("not encrypted"), "{e}");
    }

    #[test]
    fn a_key_file_must_hold_64_hexadecimal_characters() {
        let k = StoreKey::generate().unwrap();
        assert_eq!(k.len(), 64);
        assert!(StoreKey::from_hex(&format!("  {k}\n")).is_ok());
        assert_ne!(StoreKey::generate().unwrap(), k);
        let e = StoreKey::from_hex("abc").unwrap_err();
        assert!(e.contains("64 hexadecimal") && !e.contains("abc"), "{e}");
        assert!(StoreKey::from_hex(&"g".repeat(64)).is_err());
    }
}

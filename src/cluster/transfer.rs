//! Snapshot transfer between members: the snapshot travels in chunks outside Raft.
//!
//! A leader whose follower needs entries it compacted lets raft-rs send a
//! `MsgSnapshot` that carries only the snapshot's [`Identity`] (index, term, and each
//! file of its chain, a full snapshot then the deltas on it, with sizes and body
//! checksums) in place of the data. The follower does not step that message into
//! raft-rs until it holds the whole chain. Files of the chain it already holds (the
//! same name, size and checksum: a base received with an earlier snapshot, say) are
//! not sent again; the others it receives one after the other, base first. For each, it
//! asks the sender for chunks ([`Part::Ask`]: a window of [`WINDOW`] chunks of at most
//! [`CHUNK_BYTES`] from the first byte it lacks), writes each in order to
//! `<file>.<checksum>.part`, syncs it at the end of the window, and asks on from
//! there; a chunk whose CRC-32C does not match, or that arrives out of order, is
//! dropped and asked again after [`ASK_AGAIN`]. The part files survive a restart of
//! either side, a lost chunk and a leader change: the transfer resumes at their durable
//! lengths as long as the snapshot offered is the same one (same names and checksums);
//! another one starts from zero. Once all are whole, the chain is verified (headers,
//! body checksums, each delta building on the file before it, the state machine
//! decodes), the received files renamed into place (the tip last) and the directory
//! synced; only then is the message stepped, and raft-rs installs it.
//!
//! ```text
//! {"type": "snapshot_part", "part": {"ask": file, "crc": checksum, "from": byte, "count": n}}
//! {"type": "snapshot_part", "part": {"chunk": file, "crc": checksum, "at": byte, "size": total,
//!                                    "data": base64, "data_crc": crc32c of the bytes}}
//! {"type": "snapshot_part", "part": {"gone": file, "crc": checksum}}
//! ```

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

/// Most file bytes in one chunk.
pub const CHUNK_BYTES: u64 = 256 * 1024;
/// Chunks asked at once.
pub const WINDOW: u32 = 4;
/// A transfer that made no progress for this long asks again from its durable length.
pub const ASK_AGAIN: Duration = Duration::from_millis(400);

pub use crate::consensus::image::Identity;

/// A message of a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// The receiver asks for `count` chunks of `file` from byte `from`.
    Ask {
        file: String,
        checksum: u32,
        from: u64,
        count: u32,
    },
    /// A chunk of `file` (`size` bytes in all) at byte `at`.
    Chunk {
        file: String,
        checksum: u32,
        at: u64,
        size: u64,
        data: Vec<u8>,
        crc: u32,
    },
    /// The sender no longer has that file: the receiver waits for a newer offer.
    Gone { file: String, checksum: u32 },
}

/// The JSON of a part (the `part` field of a `snapshot_part` line).
pub fn to_json(p: &Part) -> Value {
    match p {
        Part::Ask {
            file,
            checksum,
            from,
            count,
        } => json!({"ask": file, "crc": checksum, "from": from, "count": count}),
        Part::Chunk {
            file,
            checksum,
            at,
            size,
            data,
            crc,
        } => json!({"chunk": file, "crc": checksum, "at": at, "size": size,
                    "data": B64.encode(data), "data_crc": crc}),
        Part::Gone { file, checksum } => json!({"gone": file, "crc": checksum}),
    }
}

fn num(o: &Map<String, Value>, k: &str) -> Result<u64, String> {
    o.get(k)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("field {k:?} is missing or not an unsigned integer"))
}

fn crc(o: &Map<String, Value>, k: &str) -> Result<u32, String> {
    u32::try_from(num(o, k)?).map_err(|_| format!("field {k:?} is not a 32-bit checksum"))
}

/// Reads a part from its JSON.
///
/// # Errors
/// What is wrong with it.
pub fn from_json(v: &Value) -> Result<Part, String> {
    let o = v.as_object().ok_or("a snapshot part must be an object")?;
    let name = |k: &str| -> Option<Result<String, String>> {
        o.get(k).map(|n| {
            n.as_str()
                .filter(|n| crate::core::layout::parse_raft_snapshot(n).is_some())
                .map(str::to_string)
                .ok_or_else(|| format!("field {k:?} is not a cluster snapshot's name"))
        })
    };
    if let Some(file) = name("ask") {
        return Ok(Part::Ask {
            file: file?,
            checksum: crc(o, "crc")?,
            from: num(o, "from")?,
            count: u32::try_from(num(o, "count")?).map_err(|_| "count too large")?,
        });
    }
    if let Some(file) = name("chunk") {
        let data = o
            .get("data")
            .and_then(Value::as_str)
            .ok_or("field \"data\" is missing")?;
        let data = B64
            .decode(data)
            .map_err(|e| format!("field \"data\" is not base64: {e}"))?;
        if data.len() as u64 > CHUNK_BYTES {
            return Err(format!("a chunk of {} bytes", data.len()));
        }
        return Ok(Part::Chunk {
            file: file?,
            checksum: crc(o, "crc")?,
            at: num(o, "at")?,
            size: num(o, "size")?,
            data,
            crc: crc(o, "data_crc")?,
        });
    }
    if let Some(file) = name("gone") {
        return Ok(Part::Gone {
            file: file?,
            checksum: crc(o, "crc")?,
        });
    }
    Err("a snapshot part is an ask, a chunk or a gone".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_and_parts_round_trip_and_garbage_is_refused() {
        let id = Identity {
            index: 1234,
            term: 7,
            file: crate::core::layout::raft_snapshot(1234),
            size: 99_999,
            checksum: 0xdead_beef,
            parents: vec![],
        };
        assert_eq!(Identity::decode(&id.encode()), Ok(id.clone()));
        assert!(Identity::decode(&id.encode()[..30]).is_err());
        let chain = Identity {
            file: crate::core::layout::raft_delta(1234),
            parents: vec![crate::consensus::image::Link {
                file: crate::core::layout::raft_snapshot(1000),
                size: 5_000_000,
                checksum: 7,
            }],
            ..id.clone()
        };
        assert_eq!(Identity::decode(&chain.encode()), Ok(chain.clone()));
        assert_eq!(chain.total_size(), 5_099_999);
        let bytes = chain.encode();
        for cut in [10, 30, bytes.len() - 1] {
            assert!(Identity::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Identity::decode(b"FLNTSNIDxxxxxxxxxxxxxxxxxxxxxxxxxxxx../etc/passwd").is_err());
        let parts = [
            Part::Ask {
                file: id.file.clone(),
                checksum: id.checksum,
                from: 4096,
                count: 4,
            },
            Part::Chunk {
                file: id.file.clone(),
                checksum: id.checksum,
                at: 0,
                size: 10,
                data: b"0123456789".to_vec(),
                crc: crc32c::crc32c(b"0123456789"),
            },
            Part::Gone {
                file: id.file.clone(),
                checksum: 1,
            },
        ];
        for p in parts {
            assert_eq!(from_json(&to_json(&p)), Ok(p));
        }
        for bad in [
            json!({}),
            json!({"ask": "../x", "crc": 1, "from": 0, "count": 1}),
            json!({"ask": id.file, "crc": -1, "from": 0, "count": 1}),
            json!({"chunk": id.file, "crc": 1, "at": 0, "size": 1, "data": "!!", "data_crc": 0}),
            json!([]),
        ] {
            assert!(from_json(&bad).is_err(), "{bad}");
        }
    }
}

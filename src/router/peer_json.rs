//! The stdin/stdout transport's peer codec: Raft messages and snapshot-transfer parts
//! as JSON, the bodies of `{"type": "raft"}` and `{"type": "snapshot_part"}` lines.
//!
//! Each field of raft-rs's `Message` that the group uses has a short name; bytes
//! (entry data, contexts) are base64. The protobuf encoding is never decoded from the
//! network: what reaches this decoder is a JSON object that the router's line-length
//! bound limits, and every field is checked for its type, so a bad line is refused
//! without reaching raft-rs.
//!
//! ```text
//! {"t": type, "term", "lt": log term, "i": index, "c": commit, "ct": commit term,
//!  "rj": reject, "rh": reject hint, "rs": request snapshot, "ctx": base64,
//!  "e": [{"t": term, "i": index, "k": kind, "d": base64}, ...],
//!  "sn": {"i": index, "t": term, "v": [voters], "l": [learners], "d": base64}}
//! ```
//! `sn` is a snapshot offer (`MsgSnapshot`): its data is the snapshot's identity, not
//! its content (see [`crate::cluster::transfer`]).
//! Zero and empty fields are left out. `from` and `to` travel in the line's `src`
//! and `dest`.
//!
//! A part of a snapshot transfer:
//!
//! ```text
//! {"ask": file, "crc": checksum, "from": byte, "count": n}
//! {"chunk": file, "crc": checksum, "at": byte, "size": total, "data": base64,
//!  "data_crc": crc32c of the bytes}
//! {"gone": file, "crc": checksum}
//! ```

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use raft::eraftpb::{Entry, EntryType, Message, MessageType};
use serde_json::{Map, Value, json};

use crate::cluster::kinds;
use crate::cluster::transfer::{CHUNK_BYTES, Part};

/// Writes the JSON body of a message (without `type`, which the router adds), straight
/// into the line, printed as the router prints every line.
pub fn write(out: &mut String, m: &Message) {
    use std::fmt::Write as _;
    let _ = write!(out, "{{\"t\": {}", m.msg_type as i32);
    for (k, v) in [
        ("term", m.term),
        ("lt", m.log_term),
        ("i", m.index),
        ("c", m.commit),
        ("ct", m.commit_term),
        ("rh", m.reject_hint),
        ("rs", m.request_snapshot),
    ] {
        if v != 0 {
            let _ = write!(out, ", \"{k}\": {v}");
        }
    }
    if m.reject {
        out.push_str(", \"rj\": true");
    }
    if !m.context.is_empty() {
        let _ = write!(out, ", \"ctx\": \"{}\"", B64.encode(&m.context));
    }
    if !m.entries.is_empty() {
        out.push_str(", \"e\": [");
        for (n, e) in m.entries.iter().enumerate() {
            if n > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{{\"t\": {}, \"i\": {}", e.term, e.index);
            if e.entry_type != EntryType::EntryNormal {
                let _ = write!(out, ", \"k\": {}", kinds::entry_number(e.entry_type));
            }
            if !e.data.is_empty() {
                let _ = write!(out, ", \"d\": \"{}\"", B64.encode(&e.data));
            }
            if !e.context.is_empty() {
                let _ = write!(out, ", \"x\": \"{}\"", B64.encode(&e.context));
            }
            out.push('}');
        }
        out.push(']');
    }
    if m.msg_type == MessageType::MsgSnapshot {
        let s = m.get_snapshot();
        let meta = s.get_metadata();
        let list = |ids: &[u64]| {
            ids.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let cs = meta.get_conf_state();
        let _ = write!(
            out,
            ", \"sn\": {{\"i\": {}, \"t\": {}, \"v\": [{}], ",
            meta.index,
            meta.term,
            list(&cs.voters),
        );
        if !cs.learners.is_empty() {
            let _ = write!(out, "\"l\": [{}], ", list(&cs.learners));
        }
        let _ = write!(out, "\"d\": \"{}\"}}", B64.encode(&s.data));
    }
    out.push('}');
}

fn u64_field(o: &Map<String, Value>, k: &str) -> Result<u64, String> {
    match o.get(k) {
        None => Ok(0),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("field {k:?} is not an unsigned integer")),
    }
}

fn bytes_field(o: &Map<String, Value>, k: &str) -> Result<Vec<u8>, String> {
    match o.get(k) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => B64
            .decode(s)
            .map_err(|e| format!("field {k:?} is not base64: {e}")),
        Some(_) => Err(format!("field {k:?} is not a string")),
    }
}

/// Decodes a message body from node `from` to node `to` (Raft ids).
///
/// # Errors
/// What is wrong with the body.
pub fn decode(body: &Value, from: u64, to: u64) -> Result<Message, String> {
    let o = body.as_object().ok_or("a raft message must be an object")?;
    let t = u64_field(o, "t")?;
    let msg_type = kinds::message_type(t).ok_or_else(|| format!("unknown message type {t}"))?;
    let mut snapshot = raft::eraftpb::Snapshot::default();
    if msg_type == MessageType::MsgSnapshot {
        let sn = o
            .get("sn")
            .and_then(Value::as_object)
            .ok_or("a snapshot message without its \"sn\" object")?;
        let ids = |field: &str, required: bool| -> Result<Vec<u64>, String> {
            match sn.get(field) {
                None if !required => Ok(Vec::new()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_u64().ok_or(format!(
                            "a member in \"{field}\" is not an unsigned integer"
                        ))
                    })
                    .collect(),
                _ => Err(format!("field \"{field}\" is not a list")),
            }
        };
        let voters = ids("v", true)?;
        let learners = ids("l", false)?;
        let meta = snapshot.mut_metadata();
        meta.index = u64_field(sn, "i")?;
        meta.term = u64_field(sn, "t")?;
        meta.mut_conf_state().voters = voters;
        meta.mut_conf_state().learners = learners;
        if meta.index == 0 {
            return Err("a snapshot at index 0".into());
        }
        snapshot.data = bytes_field(sn, "d")?.into();
    }
    let mut entries = Vec::new();
    match o.get("e") {
        None => {}
        Some(Value::Array(list)) => {
            for e in list {
                let e = e.as_object().ok_or("an entry must be an object")?;
                let k = u64_field(e, "k")?;
                let entry_type =
                    kinds::entry_type(k).ok_or_else(|| format!("unknown entry kind {k}"))?;
                entries.push(Entry {
                    entry_type,
                    term: u64_field(e, "t")?,
                    index: u64_field(e, "i")?,
                    data: bytes_field(e, "d")?.into(),
                    context: bytes_field(e, "x")?.into(),
                    ..Entry::default()
                });
            }
        }
        Some(_) => return Err("field \"e\" is not a list".into()),
    }
    let reject = match o.get("rj") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("field \"rj\" is not a boolean".into()),
    };
    Ok(Message {
        msg_type,
        to,
        from,
        term: u64_field(o, "term")?,
        log_term: u64_field(o, "lt")?,
        index: u64_field(o, "i")?,
        entries: entries.into(),
        commit: u64_field(o, "c")?,
        commit_term: u64_field(o, "ct")?,
        reject,
        reject_hint: u64_field(o, "rh")?,
        request_snapshot: u64_field(o, "rs")?,
        context: bytes_field(o, "ctx")?.into(),
        snapshot: Some(snapshot)
            .filter(|_| msg_type == MessageType::MsgSnapshot)
            .into(),
        ..Message::default()
    })
}

/// The JSON of a part (the `part` field of a `snapshot_part` line).
pub fn part_to_json(p: &Part) -> Value {
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

fn part_num(o: &Map<String, Value>, k: &str) -> Result<u64, String> {
    o.get(k)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("field {k:?} is missing or not an unsigned integer"))
}

fn part_crc(o: &Map<String, Value>, k: &str) -> Result<u32, String> {
    u32::try_from(part_num(o, k)?).map_err(|_| format!("field {k:?} is not a 32-bit checksum"))
}

/// Reads a part from its JSON.
///
/// # Errors
/// What is wrong with it.
pub fn part_from_json(v: &Value) -> Result<Part, String> {
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
            checksum: part_crc(o, "crc")?,
            from: part_num(o, "from")?,
            count: u32::try_from(part_num(o, "count")?).map_err(|_| "count too large")?,
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
            checksum: part_crc(o, "crc")?,
            at: part_num(o, "at")?,
            size: part_num(o, "size")?,
            data,
            crc: part_crc(o, "data_crc")?,
        });
    }
    if let Some(file) = name("gone") {
        return Ok(Part::Gone {
            file: file?,
            checksum: part_crc(o, "crc")?,
        });
    }
    Err("a snapshot part is an ask, a chunk or a gone".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Message {
        Message {
            msg_type: MessageType::MsgAppend,
            to: 2,
            from: 1,
            term: 7,
            log_term: 6,
            index: 41,
            entries: vec![
                Entry {
                    term: 7,
                    index: 42,
                    data: b"\x01\x02 binary \xff".to_vec().into(),
                    context: b"c".to_vec().into(),
                    entry_type: EntryType::EntryConfChange,
                    ..Entry::default()
                },
                Entry {
                    term: 7,
                    index: 43,
                    ..Entry::default()
                },
            ]
            .into(),
            commit: 40,
            context: b"ctx".to_vec().into(),
            reject: true,
            reject_hint: 3,
            request_snapshot: 9,
            ..Message::default()
        }
    }

    fn written(m: &Message) -> String {
        let mut out = String::new();
        write(&mut out, m);
        out
    }

    fn offer() -> Message {
        let mut m = Message {
            msg_type: MessageType::MsgSnapshot,
            to: 2,
            from: 1,
            term: 7,
            ..Message::default()
        };
        let s = m.mut_snapshot();
        s.data = b"identity".to_vec().into();
        s.mut_metadata().index = 500;
        s.mut_metadata().term = 6;
        s.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        s.mut_metadata().mut_conf_state().learners = vec![5];
        m
    }

    #[test]
    fn messages_round_trip() {
        for m in [sample(), offer()] {
            let text = written(&m);
            assert_eq!(
                decode(&serde_json::from_str(&text).unwrap(), 1, 2).unwrap(),
                m
            );
        }
    }

    #[test]
    fn the_direct_writer_prints_what_the_router_prints() {
        for m in [sample(), offer(), Message::default()] {
            let direct = written(&m);
            let mut printed = String::new();
            crate::router::json::write_value(&mut printed, &serde_json::from_str(&direct).unwrap());
            assert_eq!(direct, printed);
        }
    }

    #[test]
    fn bad_bodies_are_refused() {
        for bad in [
            json!([]),
            json!({"t": 99}),
            json!({"t": -1}),
            json!({"t": 3, "term": "x"}),
            json!({"t": 3, "e": {}}),
            json!({"t": 3, "e": [{"k": 9}]}),
            json!({"t": 3, "e": [{"d": "!!"}]}),
            json!({"t": 3, "rj": 1}),
            json!({"t": 7}),
            json!({"t": 7, "sn": {"i": 0, "t": 1, "v": [1]}}),
            json!({"t": 7, "sn": {"i": 5, "t": 1, "v": ["x"]}}),
        ] {
            assert!(decode(&bad, 1, 2).is_err(), "{bad}");
        }
    }

    #[test]
    fn parts_round_trip_and_garbage_is_refused() {
        let file = crate::core::layout::raft_snapshot(1234);
        let id = crate::cluster::transfer::ChainId {
            index: 1234,
            term: 7,
            file,
            size: 99_999,
            checksum: 0xdead_beef,
            parents: vec![],
        };
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
            assert_eq!(part_from_json(&part_to_json(&p)), Ok(p));
        }
        for bad in [
            json!({}),
            json!({"ask": "../x", "crc": 1, "from": 0, "count": 1}),
            json!({"ask": id.file, "crc": -1, "from": 0, "count": 1}),
            json!({"chunk": id.file, "crc": 1, "at": 0, "size": 1, "data": "!!", "data_crc": 0}),
            json!([]),
        ] {
            assert!(part_from_json(&bad).is_err(), "{bad}");
        }
    }
}

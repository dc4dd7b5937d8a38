//! Peer frames: what members send each other over TCP, length-prefixed and binary.
//!
//! ```text
//! length u32 (big-endian, of what follows) | kind u8 | body (bincode 2: varint, big-endian)
//! ```
//!
//! The length is checked against the reader's limit before a byte of the body is read
//! or a byte allocated, and the body must decode to exactly its length; a frame that
//! fails either is refused (the connection that sent it is closed by its reader).
//! raft-rs's protobuf decoder never sees network bytes: a Raft message travels as our
//! own `WireMessage`, each field checked and built into raft-rs's struct directly.
//!
//! Kinds: 1 [`Hello`] (the first frame on a connection, both ways), 2 a Raft message,
//! 3 a part of a snapshot transfer, 4 a refusal of the connection (why, as text).

use std::io::{self, Read};

use bincode::{Decode, Encode};
use raft::eraftpb::{ConfState, Entry, Message, MessageType, Snapshot, SnapshotMetadata};

use crate::cluster::kinds;
use crate::cluster::transfer::Part;

/// The frame format's version, which [`Hello`] carries.
pub const VERSION: u32 = 2;

/// Bytes before a frame's body: its length and its kind.
const HEADER_BYTES: usize = 5;

/// Which connection of a pair a [`Hello`] opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum Channel {
    /// Raft messages: appends, votes, heartbeats.
    Raft,
    /// Snapshot transfer parts, apart so that heartbeats never wait behind them.
    Snapshot,
}

/// The first frame each side of a connection sends: who it is, and to whom it thinks it
/// speaks. A mismatch with what the receiver knows is refused.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Hello {
    /// [`VERSION`].
    pub version: u32,
    /// The group's id, drawn when it was founded.
    pub group: u64,
    /// The sender's node id and Raft id (0 while it waits to join).
    pub node_id: String,
    pub raft_id: u64,
    /// The sender's incarnation (its directory's).
    pub incarnation: u64,
    /// The node id the sender means to reach.
    pub to: String,
    pub channel: Channel,
    /// Where the sender listens for peers (a member added later is dialled there).
    pub advertise: String,
}

/// A frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Hello(Hello),
    Raft(Message),
    /// A part of a snapshot transfer, from and to Raft ids.
    Part {
        from: u64,
        to: u64,
        part: Part,
    },
    /// The connection is refused, and why.
    Refused(String),
}

/// Why a frame was refused.
#[derive(Debug)]
pub enum FrameError {
    /// The connection failed or closed (at a frame boundary: `UnexpectedEof`).
    Io(io::Error),
    /// The frame announced more bytes than the limit.
    TooLarge { bytes: u64, limit: u32 },
    /// The frame's body is not what its kind says.
    Malformed(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::TooLarge { bytes, limit } => {
                write!(f, "a frame of {bytes} bytes, over the limit of {limit}")
            }
            FrameError::Malformed(why) => write!(f, "a malformed frame: {why}"),
        }
    }
}

/// A Raft entry as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct WireEntry {
    kind: u8,
    term: u64,
    index: u64,
    data: Vec<u8>,
    context: Vec<u8>,
}

/// A snapshot offer's metadata and data (the chain's identity, not its content).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct WireSnapshot {
    index: u64,
    term: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    data: Vec<u8>,
}

/// A Raft message as it travels: the fields the group uses.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct WireMessage {
    msg_type: u8,
    to: u64,
    from: u64,
    term: u64,
    log_term: u64,
    index: u64,
    commit: u64,
    commit_term: u64,
    reject: bool,
    reject_hint: u64,
    request_snapshot: u64,
    context: Vec<u8>,
    entries: Vec<WireEntry>,
    snapshot: Option<WireSnapshot>,
}

fn to_wire(m: &Message) -> WireMessage {
    let snapshot = (m.msg_type == MessageType::MsgSnapshot).then(|| {
        let s = m.get_snapshot();
        let meta = s.get_metadata();
        WireSnapshot {
            index: meta.index,
            term: meta.term,
            voters: meta.get_conf_state().voters.clone(),
            learners: meta.get_conf_state().learners.clone(),
            data: s.data.to_vec(),
        }
    });
    WireMessage {
        msg_type: m.msg_type as u8,
        to: m.to,
        from: m.from,
        term: m.term,
        log_term: m.log_term,
        index: m.index,
        commit: m.commit,
        commit_term: m.commit_term,
        reject: m.reject,
        reject_hint: m.reject_hint,
        request_snapshot: m.request_snapshot,
        context: m.context.to_vec(),
        entries: m
            .entries
            .iter()
            .map(|e| WireEntry {
                kind: kinds::entry_number(e.entry_type) as u8,
                term: e.term,
                index: e.index,
                data: e.data.to_vec(),
                context: e.context.to_vec(),
            })
            .collect(),
        snapshot,
    }
}

fn from_wire(w: WireMessage) -> Result<Message, String> {
    let msg_type = kinds::message_type(u64::from(w.msg_type))
        .ok_or_else(|| format!("unknown message type {}", w.msg_type))?;
    if kinds::is_local(msg_type) {
        return Err(format!("{msg_type:?} never travels between nodes"));
    }
    if w.from == 0 || w.to == 0 {
        return Err("a message from or to Raft id 0".into());
    }
    let mut entries = Vec::with_capacity(w.entries.len());
    for e in w.entries {
        let entry_type = kinds::entry_type(u64::from(e.kind))
            .ok_or_else(|| format!("unknown entry kind {}", e.kind))?;
        entries.push(Entry {
            entry_type,
            term: e.term,
            index: e.index,
            data: e.data.into(),
            context: e.context.into(),
            ..Entry::default()
        });
    }
    let mut m = Message {
        msg_type,
        to: w.to,
        from: w.from,
        term: w.term,
        log_term: w.log_term,
        index: w.index,
        commit: w.commit,
        commit_term: w.commit_term,
        reject: w.reject,
        reject_hint: w.reject_hint,
        request_snapshot: w.request_snapshot,
        context: w.context.into(),
        entries: entries.into(),
        ..Message::default()
    };
    match (msg_type, w.snapshot) {
        (MessageType::MsgSnapshot, Some(s)) => {
            if s.index == 0 {
                return Err("a snapshot at index 0".into());
            }
            let mut meta = SnapshotMetadata {
                index: s.index,
                term: s.term,
                ..SnapshotMetadata::default()
            };
            meta.set_conf_state(ConfState::from((s.voters, s.learners)));
            let mut snapshot = Snapshot {
                data: s.data.into(),
                ..Snapshot::default()
            };
            snapshot.set_metadata(meta);
            m.set_snapshot(snapshot);
        }
        (MessageType::MsgSnapshot, None) => {
            return Err("a snapshot message without its snapshot".into());
        }
        (_, Some(_)) => return Err(format!("a snapshot in a {msg_type:?}")),
        (_, None) => {}
    }
    Ok(m)
}

/// The most bytes a frame's body may claim for its contents while it decodes: a length
/// field inside the body (a list's, a byte string's) beyond it is refused before any
/// allocation, whatever the frame's own limit.
pub const DECODE_LIMIT: usize = 64 << 20;

fn config() -> bincode::config::Configuration<
    bincode::config::BigEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT>,
> {
    bincode::config::standard()
        .with_big_endian()
        .with_limit::<DECODE_LIMIT>()
}

/// Appends `frame` to `out`, ready to be written (several frames for one peer are
/// appended to one buffer and written at once).
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    let kind: u8 = match frame {
        Frame::Hello(h) => {
            bincode::encode_into_std_write(h, out, config()).expect("to memory");
            1
        }
        Frame::Raft(m) => {
            bincode::encode_into_std_write(to_wire(m), out, config()).expect("to memory");
            2
        }
        Frame::Part { from, to, part } => {
            bincode::encode_into_std_write((*from, *to, part), out, config()).expect("to memory");
            3
        }
        Frame::Refused(why) => {
            bincode::encode_into_std_write(why, out, config()).expect("to memory");
            4
        }
    };
    let length = u32::try_from(out.len() - start - 4).expect("a frame under 4 GiB");
    out[start..start + 4].copy_from_slice(&length.to_be_bytes());
    out[start + 4] = kind;
}

/// Decodes a frame's body of kind `kind`.
///
/// # Errors
/// What is wrong with it.
pub fn decode(kind: u8, body: &[u8]) -> Result<Frame, String> {
    fn whole<T: Decode<()>>(body: &[u8]) -> Result<T, String> {
        let (value, used) = bincode::decode_from_slice::<T, _>(body, config())
            .map_err(|e| format!("the body does not decode: {e}"))?;
        if used != body.len() {
            return Err(format!("{} bytes after the body", body.len() - used));
        }
        Ok(value)
    }
    match kind {
        1 => Ok(Frame::Hello(whole(body)?)),
        2 => Ok(Frame::Raft(from_wire(whole(body)?)?)),
        3 => {
            let (from, to, part): (u64, u64, Part) = whole(body)?;
            part.check()?;
            Ok(Frame::Part { from, to, part })
        }
        4 => Ok(Frame::Refused(whole(body)?)),
        k => Err(format!("unknown frame kind {k}")),
    }
}

/// Reads one frame of at most `limit` bytes (its length field's value) from `r`.
///
/// # Errors
/// The connection's error (`UnexpectedEof` when it closed between frames), a frame
/// over the limit (refused before its body is read), or a malformed one.
pub fn read(r: &mut impl Read, limit: u32) -> Result<Frame, FrameError> {
    let mut header = [0u8; HEADER_BYTES];
    r.read_exact(&mut header).map_err(FrameError::Io)?;
    let length = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
    if length > limit {
        return Err(FrameError::TooLarge {
            bytes: u64::from(length),
            limit,
        });
    }
    if length == 0 {
        return Err(FrameError::Malformed("a frame without its kind".into()));
    }
    let mut body = vec![0u8; length as usize - 1];
    r.read_exact(&mut body).map_err(FrameError::Io)?;
    decode(header[4], &body).map_err(FrameError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::transfer::CHUNK_BYTES;
    use raft::eraftpb::EntryType;

    fn append() -> Message {
        Message {
            msg_type: MessageType::MsgAppend,
            to: 2,
            from: 1,
            term: 7,
            log_term: 6,
            index: 41,
            commit: 40,
            commit_term: 6,
            entries: vec![
                Entry {
                    entry_type: EntryType::EntryNormal,
                    term: 7,
                    index: 42,
                    data: b"\x00\xffpayload".to_vec().into(),
                    ..Entry::default()
                },
                Entry {
                    entry_type: EntryType::EntryConfChangeV2,
                    term: 7,
                    index: 43,
                    data: b"cc".to_vec().into(),
                    context: b"ctx".to_vec().into(),
                    ..Entry::default()
                },
            ]
            .into(),
            ..Message::default()
        }
    }

    fn offer() -> Message {
        let mut m = Message {
            msg_type: MessageType::MsgSnapshot,
            to: 3,
            from: 1,
            term: 9,
            ..Message::default()
        };
        let mut meta = SnapshotMetadata {
            index: 1000,
            term: 8,
            ..SnapshotMetadata::default()
        };
        meta.set_conf_state(ConfState::from((vec![1, 2, 3], vec![4])));
        let mut s = Snapshot {
            data: b"identity".to_vec().into(),
            ..Snapshot::default()
        };
        s.set_metadata(meta);
        m.set_snapshot(s);
        m
    }

    fn frames() -> Vec<Frame> {
        let file = crate::core::layout::raft_snapshot(1000);
        vec![
            Frame::Hello(Hello {
                version: VERSION,
                group: 0xfeed,
                node_id: "n1".into(),
                raft_id: 1,
                incarnation: 77,
                to: "n2".into(),
                channel: Channel::Snapshot,
                advertise: "10.0.0.1:7001".into(),
            }),
            Frame::Raft(append()),
            Frame::Raft(offer()),
            Frame::Raft(Message {
                msg_type: MessageType::MsgAppendResponse,
                to: 1,
                from: 2,
                reject: true,
                reject_hint: 12,
                ..Message::default()
            }),
            Frame::Part {
                from: 1,
                to: 3,
                part: Part::Chunk {
                    file: file.clone(),
                    checksum: 5,
                    at: 0,
                    size: 10,
                    data: b"0123456789".to_vec(),
                    crc: crc32c::crc32c(b"0123456789"),
                },
            },
            Frame::Part {
                from: 3,
                to: 1,
                part: Part::Ask {
                    file: file.clone(),
                    checksum: 5,
                    from: 0,
                    count: 4,
                },
            },
            Frame::Part {
                from: 1,
                to: 3,
                part: Part::Gone { file, checksum: 5 },
            },
            Frame::Refused("another group".into()),
        ]
    }

    #[test]
    fn every_frame_round_trips_through_one_buffer() {
        let frames = frames();
        let mut out = Vec::new();
        for f in &frames {
            encode(f, &mut out);
        }
        let mut r = &out[..];
        for f in &frames {
            assert_eq!(&read(&mut r, 1 << 20).unwrap(), f);
        }
        assert!(
            matches!(read(&mut r, 1 << 20), Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof)
        );
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_its_body_is_read() {
        let mut out = Vec::new();
        encode(&Frame::Raft(append()), &mut out);
        let length = u32::from_be_bytes(out[..4].try_into().unwrap());
        // Only the header is there: a reader that read on would fail with end of file.
        let mut r = &out[..HEADER_BYTES];
        match read(&mut r, length - 1) {
            Err(FrameError::TooLarge { bytes, limit }) => {
                assert_eq!((bytes, limit), (u64::from(length), length - 1))
            }
            other => panic!("{other:?}"),
        }
        // A length field of 4 GiB - 1 asks for no allocation.
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.push(2);
        assert!(matches!(
            read(&mut &huge[..], 64 << 20),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn malformed_frames_are_refused_with_their_cause() {
        let encoded = |f: &Frame| {
            let mut out = Vec::new();
            encode(f, &mut out);
            out
        };
        let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
        // An unknown kind.
        let mut bad_kind = encoded(&Frame::Raft(append()));
        bad_kind[4] = 9;
        cases.push((bad_kind, "unknown frame kind"));
        // A body cut short, and one with bytes after it (lengths adjusted to match).
        let whole = encoded(&Frame::Raft(append()));
        let mut short = whole[..whole.len() - 3].to_vec();
        let n = (short.len() - 4) as u32;
        short[..4].copy_from_slice(&n.to_be_bytes());
        cases.push((short, "does not decode"));
        let mut long = whole.clone();
        long.extend_from_slice(b"xyz");
        let n = (long.len() - 4) as u32;
        long[..4].copy_from_slice(&n.to_be_bytes());
        cases.push((long, "after the body"));
        // A body whose first byte string claims a terabyte: refused, never allocated.
        let mut claim = vec![0, 0, 0, 0, 4];
        bincode::encode_into_std_write(1u64 << 40, &mut claim, config()).unwrap();
        let n = (claim.len() - 4) as u32;
        claim[..4].copy_from_slice(&n.to_be_bytes());
        cases.push((claim, "does not decode"));
        // A message type raft-rs keeps to itself, an entry of no kind, a snapshot
        // without its metadata, a snapshot at index 0.
        for (edit, why) in [
            (
                Box::new(|w: &mut WireMessage| w.msg_type = MessageType::MsgHup as u8)
                    as Box<dyn Fn(&mut WireMessage)>,
                "never travels",
            ),
            (
                Box::new(|w: &mut WireMessage| w.msg_type = 99),
                "unknown message type",
            ),
            (
                Box::new(|w: &mut WireMessage| w.entries[0].kind = 7),
                "unknown entry kind",
            ),
            (Box::new(|w: &mut WireMessage| w.from = 0), "Raft id 0"),
            (
                Box::new(|w: &mut WireMessage| w.msg_type = MessageType::MsgSnapshot as u8),
                "without its snapshot",
            ),
        ] {
            let mut w = to_wire(&append());
            edit(&mut w);
            let mut out = vec![0; HEADER_BYTES];
            bincode::encode_into_std_write(w, &mut out, config()).unwrap();
            let n = (out.len() - 4) as u32;
            out[..4].copy_from_slice(&n.to_be_bytes());
            out[4] = 2;
            cases.push((out, why));
        }
        let mut w = to_wire(&offer());
        w.snapshot.as_mut().unwrap().index = 0;
        let mut out = vec![0; HEADER_BYTES];
        bincode::encode_into_std_write(w, &mut out, config()).unwrap();
        let n = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&n.to_be_bytes());
        out[4] = 2;
        cases.push((out, "index 0"));
        // A part naming a file outside the snapshots, and an oversized chunk.
        for (part, why) in [
            (
                Part::Ask {
                    file: "../etc/passwd".into(),
                    checksum: 1,
                    from: 0,
                    count: 1,
                },
                "not a cluster snapshot",
            ),
            (
                Part::Chunk {
                    file: crate::core::layout::raft_snapshot(5),
                    checksum: 1,
                    at: 0,
                    size: 1,
                    data: vec![0; CHUNK_BYTES as usize + 1],
                    crc: 0,
                },
                "a chunk of",
            ),
        ] {
            let mut out = vec![0; HEADER_BYTES];
            bincode::encode_into_std_write((1u64, 2u64, part), &mut out, config()).unwrap();
            let n = (out.len() - 4) as u32;
            out[..4].copy_from_slice(&n.to_be_bytes());
            out[4] = 3;
            cases.push((out, why));
        }
        for (bytes, why) in cases {
            match read(&mut &bytes[..], 1 << 20) {
                Err(FrameError::Malformed(text)) => {
                    assert!(text.contains(why), "{text:?} does not say {why:?}")
                }
                other => panic!("{why}: {other:?}"),
            }
        }
    }
}

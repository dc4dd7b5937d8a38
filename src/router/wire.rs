//! Parsing one input line into an envelope and a typed request.
//!
//! A line that is not a JSON object with a string `src`, or whose body has no integer
//! `msg_id` to reply to, is a [`Warning`]: logged, never answered. Anything else gets
//! either a [`Request`] or a [`WireError`] with its Maelstrom code.

use serde_json::{Map, Value};

use crate::core::kv::valid_key;
use crate::core::policy::{PolicyUpdate, SnapshotMode};
use crate::core::position::Offset;

/// Maelstrom error codes used by the node.
pub mod code {
    /// Request type not supported.
    pub const NOT_SUPPORTED: u64 = 10;
    /// Temporarily unavailable: nothing happened, try again.
    pub const TEMPORARILY_UNAVAILABLE: u64 = 11;
    /// Malformed request.
    pub const MALFORMED_REQUEST: u64 = 12;
    /// Crash: the outcome is unknown.
    pub const CRASH: u64 = 13;
    /// Key (or offset) does not exist.
    pub const KEY_DOES_NOT_EXIST: u64 = 20;
    /// Precondition failed.
    pub const PRECONDITION_FAILED: u64 = 22;
}

/// A line that gets no reply, with the reason for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning(pub String);

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// Maelstrom error code.
    pub code: u64,
    /// What went wrong.
    pub text: String,
}

fn malformed(text: impl Into<String>) -> WireError {
    WireError {
        code: code::MALFORMED_REQUEST,
        text: text.into(),
    }
}

/// Where a reply goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The request's `src`: the reply's `dest`.
    pub src: String,
    /// The request's `dest`, if a string (the reply's `src` before init).
    pub dest: Option<String>,
    /// The request's `msg_id`: the reply's `in_reply_to`.
    pub msg_id: u64,
}

/// A request the node understands.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `init {node_id, node_ids, join?}`.
    Init {
        node_id: String,
        node_ids: Vec<String>,
        /// Join an existing group as a new member (instead of founding one).
        join: bool,
    },
    /// `member_add {member}`: add a node as a learner.
    MemberAdd { member: String },
    /// `member_promote {member}`: make a learner a voter.
    MemberPromote { member: String },
    /// `member_remove {member}`: remove a member.
    MemberRemove { member: String },
    /// `wal_append {payload}`.
    WalAppend { payload: String },
    /// `wal_read {offset}`.
    WalRead { offset: Offset },
    /// `wal_info {}`.
    WalInfo,
    /// `wal_segment_config {max_segment_bytes}`.
    WalSegmentConfig { max_segment_bytes: u64 },
    /// `wal_segment_info {}`.
    WalSegmentInfo,
    /// `wal_snapshot {mode?}`: `full`, `incremental`, or absent (the policy decides).
    WalSnapshot { mode: SnapshotMode },
    /// `wal_compact {snapshot_at_offset}`.
    WalCompact { snapshot_at_offset: Offset },
    /// `wal_status {}`.
    WalStatus,
    /// `wal_policy {any subset of the policy's fields}`.
    WalPolicy { update: PolicyUpdate },
    /// lin-kv `read {key}`.
    Read { key: String },
    /// lin-kv `write {key, value}`; `value` is the JSON text to store.
    Write { key: String, value: String },
    /// lin-kv `cas {key, from, to}`; `to` is the JSON text to store.
    Cas {
        key: String,
        from: Value,
        to: String,
    },
}

/// Parses one line (without its newline). A line that is not JSON but still shows
/// where to answer (its `src` and `msg_id`, see [`salvage_envelope`]) gets an error 12
/// that says what is wrong with it.
pub fn parse_line(line: &[u8]) -> Result<(Envelope, Result<Request, WireError>), Warning> {
    match parse_append(line) {
        Some(append) => Ok(append),
        None => parse_generic(line),
    }
}

/// [`parse_line`] for every line: the JSON read into a generic value first.
fn parse_generic(line: &[u8]) -> Result<(Envelope, Result<Request, WireError>), Warning> {
    let value: Value = match serde_json::from_slice(line) {
        Ok(value) => value,
        Err(e) => {
            let why = match lone_surrogate(line) {
                Some(escape) => format!(
                    "the line holds a lone UTF-16 surrogate escape ({escape}), which is no \
                     character: strings must be valid Unicode"
                ),
                None => format!("the line is not valid JSON ({e})"),
            };
            return match salvage_envelope(&[line]) {
                Some(envelope) => Ok((envelope, Err(malformed(why)))),
                None => Err(Warning(why)),
            };
        }
    };
    let Value::Object(mut top) = value else {
        return Err(Warning("not a JSON object".into()));
    };
    let src = match top.remove("src") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(Warning("`src` is not a string".into())),
        None => return Err(Warning("no `src`".into())),
    };
    let dest = match top.remove("dest") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let Some(Value::Object(body)) = top.remove("body") else {
        return Err(Warning(format!("message from {src} has no `body` object")));
    };
    let msg_id = match body.get("msg_id") {
        Some(v) => v.as_u64().ok_or_else(|| {
            Warning(format!(
                "message from {src}: `msg_id` {v} is not a non-negative integer"
            ))
        })?,
        None => {
            return Err(Warning(format!(
                "message from {src} has no `msg_id` to reply to"
            )));
        }
    };
    let envelope = Envelope { src, dest, msg_id };
    Ok((envelope, parse_body(&body)))
}

/// A well-formed `wal_append` line, as [`parse_append`] reads it.
#[derive(serde::Deserialize)]
struct AppendLine<'a> {
    src: String,
    #[serde(default)]
    dest: Option<String>,
    #[serde(borrow)]
    body: AppendBody<'a>,
}

#[derive(serde::Deserialize)]
struct AppendBody<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    msg_id: u64,
    payload: String,
}

/// The hot request type read straight into its fields, without building a generic
/// JSON value (a map of maps, each key hashed and stored): `None` for anything that is
/// not a well-formed `wal_append` (another type, a field of another type, a key given
/// twice, any JSON error), which then takes the generic path and gets its answer or
/// error there. When it answers, it answers as the generic path would.
fn parse_append(line: &[u8]) -> Option<(Envelope, Result<Request, WireError>)> {
    const TYPE: &[u8] = b"\"wal_append\"";
    if !line.windows(TYPE.len()).any(|w| w == TYPE) {
        return None;
    }
    let parsed: AppendLine = serde_json::from_slice(line).ok()?;
    if parsed.body.kind != "wal_append" {
        return None;
    }
    let envelope = Envelope {
        src: parsed.src,
        dest: parsed.dest,
        msg_id: parsed.body.msg_id,
    };
    Some((
        envelope,
        Ok(Request::WalAppend {
            payload: parsed.body.payload,
        }),
    ))
}

/// Longest node id accepted: it names the node's directory.
pub const NODE_ID_BYTES_MAX: usize = 64;

/// Whether `id` can be a node id: 1 to [`NODE_ID_BYTES_MAX`] characters among ASCII
/// letters, digits, `-`, `_` and `.`, and not `.` or `..` (it names a directory).
///
/// # Errors
/// A sentence saying what is wrong with it.
pub fn check_node_id(id: &str) -> Result<(), String> {
    let shown: String = id.chars().take(40).collect();
    let shown = if shown.len() < id.len() {
        format!("{shown:?}... ({} bytes)", id.len())
    } else {
        format!("{shown:?}")
    };
    if id.is_empty() || id.len() > NODE_ID_BYTES_MAX {
        return Err(format!(
            "node_id {shown} must have 1 to {NODE_ID_BYTES_MAX} characters"
        ));
    }
    if id == "." || id == ".." {
        return Err(format!("node_id {shown} cannot name a directory"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "node_id {shown} holds {c:?}: only ASCII letters, digits, '-', '_' and '.' are allowed"
        ));
    }
    Ok(())
}

/// The first `\uD800`-`\uDFFF` escape in `line` that is not part of a valid pair.
fn lone_surrogate(line: &[u8]) -> Option<String> {
    let hex = |at: usize| -> Option<u16> {
        let digits = std::str::from_utf8(line.get(at..at + 4)?).ok()?;
        u16::from_str_radix(digits, 16).ok()
    };
    let mut i = 0;
    while i + 6 <= line.len() {
        if line[i] == b'\\' && line[i + 1] == b'\\' {
            i += 2; // an escaped backslash: what follows is not an escape
            continue;
        }
        if line[i] == b'\\' && line[i + 1] == b'u' {
            if let Some(unit) = hex(i + 2) {
                let high = (0xD800..0xDC00).contains(&unit);
                let low = (0xDC00..0xE000).contains(&unit);
                let paired = high
                    && line.get(i + 6..i + 8) == Some(b"\\u")
                    && hex(i + 8).is_some_and(|u| (0xDC00..0xE000).contains(&u));
                if paired {
                    i += 12;
                    continue;
                }
                if high || low {
                    return Some(format!("\\u{unit:04x}"));
                }
            }
            i += 6;
            continue;
        }
        i += 1;
    }
    None
}

/// Where to answer a line that could not be parsed whole: its `src`, `dest` and
/// `msg_id`, found by scanning the raw bytes of `parts` (a line, or the head and tail
/// of one too long to read). Inside a JSON string a quote is always escaped, so a
/// quoted `"msg_id"` followed by a colon is a key. `None` unless both `src` and
/// `msg_id` are found.
pub fn salvage_envelope(parts: &[&[u8]]) -> Option<Envelope> {
    let src = parts.iter().find_map(|p| string_field(p, b"\"src\""))?;
    let msg_id = parts.iter().find_map(|p| integer_field(p, b"\"msg_id\""))?;
    let dest = parts.iter().find_map(|p| string_field(p, b"\"dest\""));
    Some(Envelope { src, dest, msg_id })
}

/// The position just after `key` followed by optional whitespace and a colon.
fn after_key(bytes: &[u8], key: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = bytes[from..].windows(key.len()).position(|w| w == key) {
        let start = from + i;
        let mut at = start + key.len();
        let escaped = start > 0 && bytes[start - 1] == b'\\';
        while bytes.get(at).is_some_and(|b| b.is_ascii_whitespace()) {
            at += 1;
        }
        if !escaped && bytes.get(at) == Some(&b':') {
            at += 1;
            while bytes.get(at).is_some_and(|b| b.is_ascii_whitespace()) {
                at += 1;
            }
            return Some(at);
        }
        from = start + 1;
    }
    None
}

fn string_field(bytes: &[u8], key: &[u8]) -> Option<String> {
    let at = after_key(bytes, key)?;
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let mut end = at + 1;
    while end < bytes.len() && bytes[end] != b'"' {
        end += if bytes[end] == b'\\' { 2 } else { 1 };
    }
    serde_json::from_slice(bytes.get(at..=end)?).ok()
}

fn integer_field(bytes: &[u8], key: &[u8]) -> Option<u64> {
    let at = after_key(bytes, key)?;
    let digits = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let next = bytes.get(at + digits);
    if digits == 0 || next.is_some_and(|b| matches!(b, b'.' | b'e' | b'E')) {
        return None;
    }
    std::str::from_utf8(&bytes[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn parse_body(body: &Map<String, Value>) -> Result<Request, WireError> {
    let kind = match body.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(malformed("field `type` must be a string")),
        None => return Err(malformed("missing field `type`")),
    };
    let f = Fields(body);
    Ok(match kind {
        "init" => Request::Init {
            node_id: f.string("node_id")?,
            node_ids: match f.get("node_ids")? {
                Value::Array(ids) => ids
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| malformed("field `node_ids` must be an array of strings"))?,
                _ => return Err(malformed("field `node_ids` must be an array of strings")),
            },
            join: match body.get("join") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(malformed("field `join` must be true or false")),
            },
        },
        "member_add" => Request::MemberAdd {
            member: f.string("member")?,
        },
        "member_promote" => Request::MemberPromote {
            member: f.string("member")?,
        },
        "member_remove" => Request::MemberRemove {
            member: f.string("member")?,
        },
        "wal_append" => Request::WalAppend {
            payload: f.string("payload")?,
        },
        "wal_read" => Request::WalRead {
            offset: Offset::from_wire(f.u64("offset")?),
        },
        "wal_info" => Request::WalInfo,
        "wal_segment_config" => {
            let max_segment_bytes = f.u64("max_segment_bytes")?;
            if max_segment_bytes < 1 {
                return Err(malformed(
                    "field `max_segment_bytes` must be an integer >= 1",
                ));
            }
            Request::WalSegmentConfig { max_segment_bytes }
        }
        "wal_segment_info" => Request::WalSegmentInfo,
        "wal_snapshot" => Request::WalSnapshot {
            mode: match body.get("mode") {
                None => SnapshotMode::Auto,
                Some(Value::String(m)) => SnapshotMode::parse(m).ok_or_else(|| {
                    malformed(format!(
                        "field `mode` must be \"full\" or \"incremental\", not {m:?}"
                    ))
                })?,
                Some(_) => return Err(malformed("field `mode` must be a string")),
            },
        },
        "wal_compact" => Request::WalCompact {
            snapshot_at_offset: Offset::from_wire(f.u64("snapshot_at_offset")?),
        },
        "wal_status" => Request::WalStatus,
        "wal_policy" => Request::WalPolicy {
            update: PolicyUpdate {
                snapshot_entries: f.opt_u64("snapshot_entries")?,
                snapshot_bytes: f.opt_u64("snapshot_bytes")?,
                snapshot_age_ms: f.opt_u64("snapshot_age_ms")?,
                jitter_percent: f.opt_u64("jitter_percent")?,
                auto_compact: match body.get("auto_compact") {
                    None => None,
                    Some(Value::Bool(b)) => Some(*b),
                    Some(_) => return Err(malformed("field `auto_compact` must be true or false")),
                },
                trailing_entries: f.opt_u64("trailing_entries")?,
                retain_snapshots: f.opt_u64("retain_snapshots")?,
                max_chain: f.opt_u64("max_chain")?,
                delta_share_percent: f.opt_u64("delta_share_percent")?,
            },
        },
        "read" => Request::Read { key: f.key()? },
        "write" => Request::Write {
            key: f.key()?,
            value: json_text(f.get("value")?),
        },
        "cas" => Request::Cas {
            key: f.key()?,
            from: f.get("from")?.clone(),
            to: json_text(f.get("to")?),
        },
        other => {
            return Err(WireError {
                code: code::NOT_SUPPORTED,
                text: format!("request type {other:?} is not supported"),
            });
        }
    })
}

/// The text a JSON value is stored as.
pub fn json_text(v: &Value) -> String {
    serde_json::to_string(v).expect("a parsed value serializes")
}

struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Result<&Value, WireError> {
        self.0
            .get(name)
            .ok_or_else(|| malformed(format!("missing field `{name}`")))
    }

    fn string(&self, name: &str) -> Result<String, WireError> {
        match self.get(name)? {
            Value::String(s) => Ok(s.clone()),
            _ => Err(malformed(format!("field `{name}` must be a string"))),
        }
    }

    fn u64(&self, name: &str) -> Result<u64, WireError> {
        let v = self.get(name)?;
        v.as_u64().ok_or_else(|| match v {
            Value::Number(_) => malformed(format!(
                "field `{name}` must be a non-negative 64-bit integer, not {v}"
            )),
            _ => malformed(format!("field `{name}` must be a non-negative integer")),
        })
    }

    fn opt_u64(&self, name: &str) -> Result<Option<u64>, WireError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(_) => self.u64(name).map(Some),
        }
    }

    /// A key: a string as is, anything else as its JSON text.
    fn key(&self) -> Result<String, WireError> {
        let key = match self.get("key")? {
            Value::String(s) => s.clone(),
            other => json_text(other),
        };
        if !valid_key(&key) {
            return Err(malformed(format!(
                "key {key:?} is empty or contains whitespace or '='"
            )));
        }
        Ok(key)
    }
}

/// What a `read` returns for a stored value text: the JSON it parses as, or the text
/// as a string.
pub fn stored_to_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: &str) -> Result<Request, WireError> {
        let line = format!(r#"{{"src":"c1","dest":"n1","body":{body}}}"#);
        parse_line(line.as_bytes()).expect("not a warning").1
    }

    fn code_of(body: &str) -> u64 {
        req(body).expect_err("should be an error").code
    }

    #[test]
    fn lines_without_src_body_or_msg_id_are_warnings() {
        for line in [
            "not json",
            "[1,2]",
            r#"{"dest":"n1","body":{"type":"wal_info","msg_id":1}}"#,
            r#"{"src":5,"body":{"type":"wal_info","msg_id":1}}"#,
            r#"{"src":"c1","body":"x"}"#,
            r#"{"src":"c1","body":{"type":"wal_info"}}"#,
            r#"{"src":"c1","body":{"type":"wal_info","msg_id":-1}}"#,
            r#"{"src":"c1","body":{"type":"wal_info","msg_id":1.5}}"#,
        ] {
            assert!(parse_line(line.as_bytes()).is_err(), "{line}");
        }
        let deep = "[".repeat(100_000);
        assert!(parse_line(deep.as_bytes()).is_err());
        assert!(parse_line(&[b'{', 0xff, b'}']).is_err());
    }

    #[test]
    fn unknown_top_level_keys_are_ignored() {
        let line = r#"{"id":7,"src":"c1","dest":"n1","body":{"type":"wal_info","msg_id":3}}"#;
        let (env, r) = parse_line(line.as_bytes()).unwrap();
        assert_eq!(
            env,
            Envelope {
                src: "c1".into(),
                dest: Some("n1".into()),
                msg_id: 3
            }
        );
        assert_eq!(r, Ok(Request::WalInfo));
    }

    #[test]
    fn validates_fields_with_maelstrom_codes() {
        assert_eq!(
            code_of(r#"{"type":"nope","msg_id":1}"#),
            code::NOT_SUPPORTED
        );
        assert_eq!(code_of(r#"{"msg_id":1}"#), code::MALFORMED_REQUEST);
        assert_eq!(code_of(r#"{"type":5,"msg_id":1}"#), code::MALFORMED_REQUEST);
        for bad in ["-1", "1.5", "1e3", "\"3\"", "null", "18446744073709551616"] {
            let body = format!(r#"{{"type":"wal_read","msg_id":1,"offset":{bad}}}"#);
            assert_eq!(code_of(&body), code::MALFORMED_REQUEST, "{bad}");
        }
        assert_eq!(
            code_of(r#"{"type":"wal_append","msg_id":1,"payload":5}"#),
            code::MALFORMED_REQUEST
        );
        assert_eq!(
            code_of(r#"{"type":"wal_segment_config","msg_id":1,"max_segment_bytes":0}"#),
            code::MALFORMED_REQUEST
        );
        assert_eq!(
            code_of(r#"{"type":"write","msg_id":1,"key":"a b","value":1}"#),
            code::MALFORMED_REQUEST
        );
        assert_eq!(
            code_of(r#"{"type":"write","msg_id":1,"key":"a=b","value":1}"#),
            code::MALFORMED_REQUEST
        );
        assert_eq!(
            code_of(r#"{"type":"write","msg_id":1,"key":"","value":1}"#),
            code::MALFORMED_REQUEST
        );
        assert_eq!(
            code_of(r#"{"type":"write","msg_id":1,"key":"a"}"#),
            code::MALFORMED_REQUEST
        );
        assert_eq!(
            code_of(r#"{"type":"init","msg_id":1,"node_id":"n1"}"#),
            code::MALFORMED_REQUEST
        );
        assert_eq!(
            req(r#"{"type":"wal_read","msg_id":1,"offset":18446744073709551615}"#),
            Ok(Request::WalRead {
                offset: Offset::from_wire(u64::MAX)
            })
        );
    }

    #[test]
    fn keys_and_values_are_stored_as_json_text() {
        assert_eq!(
            req(r#"{"type":"write","msg_id":1,"key":3,"value":"hi"}"#),
            Ok(Request::Write {
                key: "3".into(),
                value: "\"hi\"".into()
            })
        );
        assert_eq!(
            req(r#"{"type":"cas","msg_id":1,"key":"k","from":1,"to":[1,2]}"#),
            Ok(Request::Cas {
                key: "k".into(),
                from: serde_json::json!(1),
                to: "[1,2]".into()
            })
        );
        assert_eq!(stored_to_json("1"), serde_json::json!(1));
        assert_eq!(stored_to_json("hi"), serde_json::json!("hi"));
        assert_eq!(stored_to_json("\"1\""), serde_json::json!("1"));
        assert_eq!(stored_to_json(""), serde_json::json!(""));
    }

    #[test]
    fn the_typed_append_path_answers_as_the_generic_one() {
        let ordinary = br#"{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": 7, "payload": "set k=v"}}"#;
        assert!(parse_append(ordinary).is_some(), "the hot path is taken");
        // Every combination of a few variants of each field, well formed or not.
        let srcs = [
            r#""src": "c1""#,
            r#""src": 5"#,
            r#""src": "c\"1\u00e9""#,
            "",
        ];
        let dests = [r#""dest": "n1""#, r#""dest": 3"#, r#""dest": null"#, ""];
        let kinds = [
            r#""type": "wal_append""#,
            r#""type": "wal_read""#,
            r#""type": "wal\u005fappend""#,
            r#""type": 1"#,
            "",
        ];
        let ids = [
            r#""msg_id": 7"#,
            r#""msg_id": -1"#,
            r#""msg_id": 1.0"#,
            r#""msg_id": 18446744073709551615"#,
            r#""msg_id": 18446744073709551616"#,
            r#""msg_id": "7""#,
            "",
        ];
        let payloads = [
            r#""payload": "set k=v""#,
            r#""payload": "a\nb\"c\ud83d\ude00""#,
            r#""payload": "a\ud800""#,
            r#""payload": 12"#,
            r#""payload": "x", "payload": "y""#,
            "",
        ];
        let extras = [
            "",
            r#""extra": {"payload": 1, "msg_id": [1]}"#,
            r#""note": "wal_append""#,
        ];
        let mut taken = 0;
        let mut lines = 0;
        for src in srcs {
            for dest in dests {
                for kind in kinds {
                    for id in ids {
                        for payload in payloads {
                            for extra in extras {
                                let join = |parts: &[&str]| {
                                    parts
                                        .iter()
                                        .filter(|p| !p.is_empty())
                                        .copied()
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                };
                                let body = join(&[kind, id, payload, extra]);
                                let body = format!(r#""body": {{{body}}}"#);
                                let line = format!("{{{}}}", join(&[src, dest, &body, extra]));
                                let fast = parse_append(line.as_bytes());
                                let generic = parse_generic(line.as_bytes());
                                if let Some(fast) = fast {
                                    taken += 1;
                                    assert_eq!(Ok(fast), generic, "{line}");
                                }
                                lines += 1;
                                assert_eq!(parse_line(line.as_bytes()), generic, "{line}");
                            }
                        }
                    }
                }
            }
        }
        assert!(taken > 0 && taken < lines, "{taken} of {lines}");
    }

    #[test]
    fn a_line_that_is_not_json_is_answered_when_it_shows_where_to() {
        let line = br#"{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": 7, "payload": "x"#;
        let (env, request) = parse_line(line).unwrap();
        assert_eq!(
            (env.src.as_str(), env.dest.as_deref(), env.msg_id),
            ("c1", Some("n1"), 7)
        );
        let err = request.unwrap_err();
        assert_eq!(err.code, code::MALFORMED_REQUEST);
        assert!(err.text.contains("not valid JSON"), "{}", err.text);
        // Without a msg_id there is nobody to answer.
        assert!(parse_line(br#"{"src": "c1", "body": {"type": "#).is_err());
    }

    #[test]
    fn a_lone_surrogate_is_named_in_the_error() {
        let line = br#"{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": 3, "payload": "a\ud800b"}}"#;
        let (env, request) = parse_line(line).unwrap();
        assert_eq!(env.msg_id, 3);
        let text = request.unwrap_err().text;
        assert!(
            text.contains("lone UTF-16 surrogate") && text.contains("\\ud800"),
            "{text}"
        );
        // A valid pair is a character, and parses.
        let pair = br#"{"src": "c1", "body": {"type": "wal_append", "msg_id": 4, "payload": "\ud83d\ude00"}}"#;
        assert!(matches!(
            parse_line(pair),
            Ok((_, Ok(Request::WalAppend { .. })))
        ));
        assert_eq!(
            lone_surrogate(br#""\\ud800""#),
            None,
            "an escaped backslash"
        );
        assert_eq!(lone_surrogate(br#""\udc00""#).as_deref(), Some("\\udc00"));
    }

    #[test]
    fn salvaging_reads_keys_not_string_contents() {
        // The quotes inside a string value are escaped: `\"msg_id\": 9` is payload.
        let head = br#"{"src": "c\"2", "body": {"payload": "\"msg_id\": 9 "#;
        let tail = br#"tail", "msg_id": 12}}"#;
        let env = salvage_envelope(&[head, tail]).unwrap();
        assert_eq!((env.src.as_str(), env.msg_id), ("c\"2", 12));
        assert_eq!(
            salvage_envelope(&[br#"{"src": "c1", "body": {"msg_id": -1}}"#]),
            None
        );
        assert_eq!(
            salvage_envelope(&[br#"{"src": "c1", "body": {"msg_id": 1.5}}"#]),
            None
        );
    }

    #[test]
    fn node_ids_name_a_directory_safely() {
        for good in ["n1", "node-2", "a_b.c", &"x".repeat(NODE_ID_BYTES_MAX)] {
            assert_eq!(check_node_id(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\\b",
            "n 1",
            "n\u{0}",
            "é",
            &"x".repeat(300),
        ] {
            assert!(check_node_id(bad).is_err(), "{bad:?}");
        }
        assert!(
            check_node_id(&"x".repeat(300))
                .unwrap_err()
                .contains("300 bytes")
        );
    }
}

//! What the router answers: each actor's typed outcome ([`Answer`]) rendered as a reply
//! body, on the router's own thread, and the body printed as one line.

use serde_json::{Value, json};

use super::wire::{self, WireError, code};
use crate::cluster::{ClusterStatus, Members};
use crate::core::position::Offset;
use crate::error::Error;
use crate::types::Status;

/// The node id of each Raft id, as the router last read it from the roster.
pub(super) type Names = std::collections::BTreeMap<u64, String>;

/// A reply body: type, then fields in order (`in_reply_to` and `msg_id` are added
/// when written).
pub struct Body {
    kind: &'static str,
    fields: Vec<(&'static str, Value)>,
}

pub(super) fn ok(kind: &'static str, fields: Vec<(&'static str, Value)>) -> Body {
    Body { kind, fields }
}

pub(super) fn error_body(code: u64, text: impl Into<String>) -> Body {
    Body {
        kind: "error",
        fields: vec![("code", json!(code)), ("text", Value::String(text.into()))],
    }
}

/// The text of an error body (`None`: the body is not an error).
pub(super) fn error_text(body: &Body) -> Option<String> {
    if body.kind != "error" {
        return None;
    }
    let text = body.fields.iter().find(|(name, _)| *name == "text");
    Some(text.and_then(|(_, v)| v.as_str()).unwrap_or("").to_string())
}

/// The Maelstrom code of a library error.
pub fn error_code(e: &Error) -> u64 {
    match e {
        Error::InvalidArgument(_) => code::MALFORMED_REQUEST,
        Error::NotFound(_) => code::KEY_DOES_NOT_EXIST,
        Error::PreconditionFailed(_) => code::PRECONDITION_FAILED,
        Error::Unavailable(_) => code::TEMPORARILY_UNAVAILABLE,
        Error::Crashed(_) | Error::Open(_) => code::CRASH,
    }
}

pub(super) fn from_error(e: &Error) -> Body {
    error_body(error_code(e), e.text())
}

pub(super) fn from_wire(e: WireError) -> Body {
    error_body(e.code, e.text)
}

/// What an actor answered, typed: the router renders it as JSON on its own thread.
pub(super) enum Answer {
    Appended(Offset),
    Read(crate::ReadEntry),
    Info(crate::Info),
    SegmentBytes(u64),
    Policy(crate::Policy),
    Segments(crate::SegmentList),
    Snapshot(crate::SnapshotFile),
    Compaction(crate::Compaction),
    Status(Box<Status>),
    Value(String),
    Written,
    Swapped,
    ClusterStatus(Box<(crate::cluster::ClusterStatus, Names)>),
    Changed(&'static str, Box<(crate::cluster::Members, Names)>),
}

impl Answer {
    pub(super) fn status(s: Status) -> Answer {
        Answer::Status(Box::new(s))
    }

    pub(super) fn written(_offset: Offset) -> Answer {
        Answer::Written
    }

    pub(super) fn swapped(_offset: Offset) -> Answer {
        Answer::Swapped
    }

    /// The reply body.
    pub(super) fn render(self) -> Body {
        match self {
            Answer::Appended(offset) => {
                ok("wal_append_ok", vec![("offset", json!(offset.on_wire()))])
            }
            Answer::Read(e) => ok(
                "wal_read_ok",
                vec![
                    (
                        "payload",
                        Value::String(String::from_utf8_lossy(&e.payload).into_owned()),
                    ),
                    ("checksum_valid", Value::Bool(e.checksum_valid)),
                ],
            ),
            Answer::Info(i) => ok(
                "wal_info_ok",
                vec![
                    ("entries", json!(i.entries)),
                    ("total_bytes", json!(i.total_bytes)),
                    ("fsynced", json!(i.fsynced)),
                ],
            ),
            Answer::SegmentBytes(b) => ok(
                "wal_segment_config_ok",
                vec![("max_segment_bytes", json!(b))],
            ),
            Answer::Policy(p) => ok("wal_policy_ok", vec![("policy", policy_json(&p))]),
            Answer::Segments(l) => {
                let segments = l
                    .segments
                    .iter()
                    .map(|s| {
                        json!({
                            "file": s.file,
                            "start_offset": s.start_offset.on_wire(),
                            "end_offset": s.end_offset.map(Offset::on_wire),
                            "size_bytes": s.size_bytes,
                            "sealed": s.sealed,
                        })
                    })
                    .collect();
                ok(
                    "wal_segment_info_ok",
                    vec![
                        ("segments", Value::Array(segments)),
                        ("active_segment", json!(l.active_segment)),
                    ],
                )
            }
            Answer::Snapshot(s) => ok(
                "wal_snapshot_ok",
                vec![
                    ("snapshot_offset", json!(s.offset.on_wire())),
                    ("snapshot_size_bytes", json!(s.size_bytes)),
                ],
            ),
            Answer::Compaction(c) => ok(
                "wal_compact_ok",
                vec![
                    ("snapshot_offset", json!(c.snapshot_offset.on_wire())),
                    ("entries_before", json!(c.entries_before)),
                    ("entries_after", json!(c.entries_after)),
                    ("bytes_freed", json!(c.bytes_freed)),
                ],
            ),
            Answer::Status(s) => ok("wal_status_ok", vec![("status", status_json(&s))]),
            Answer::Value(text) => ok("read_ok", vec![("value", wire::stored_to_json(&text))]),
            Answer::Written => ok("write_ok", vec![]),
            Answer::Swapped => ok("cas_ok", vec![]),
            Answer::Changed(kind, c) => changed_body(kind, &c),
            Answer::ClusterStatus(s) => {
                ok("wal_status_ok", vec![("status", cluster_status_json(&s))])
            }
        }
    }
}

/// One output line, newline included.
pub(super) fn render(
    node_id: &str,
    dest: &str,
    in_reply_to: u64,
    msg_id: u64,
    body: &Body,
) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("{\"src\": ");
    super::json::write_str(&mut out, node_id);
    out.push_str(", \"dest\": ");
    super::json::write_str(&mut out, dest);
    out.push_str(", \"body\": {\"type\": ");
    super::json::write_str(&mut out, body.kind);
    out.push_str(&format!(", \"in_reply_to\": {in_reply_to}"));
    for (name, value) in &body.fields {
        out.push_str(", ");
        super::json::write_str(&mut out, name);
        out.push_str(": ");
        super::json::write_value(&mut out, value);
    }
    out.push_str(&format!(", \"msg_id\": {msg_id}}}}}\n"));
    out
}

/// The log-management policy, field by field in a fixed order.
pub fn policy_json(p: &crate::Policy) -> Value {
    json!({
        "snapshot_entries": p.snapshot_entries,
        "snapshot_bytes": p.snapshot_bytes,
        "snapshot_age_ms": p.snapshot_age_ms,
        "jitter_percent": p.jitter_percent,
        "auto_compact": p.auto_compact,
        "trailing_entries": p.trailing_entries,
        "retain_snapshots": p.retain_snapshots,
        "max_chain": p.max_chain,
        "delta_share_percent": p.delta_share_percent,
    })
}

pub(super) fn management_json(m: &crate::Management) -> Value {
    let triggers: serde_json::Map<String, Value> = m
        .triggers
        .iter()
        .map(|t| {
            (
                t.name.to_string(),
                json!({"threshold": t.threshold, "current": t.current, "remaining": t.remaining}),
            )
        })
        .collect();
    let snapshots: Vec<Value> = m
        .snapshots
        .iter()
        .map(|k| {
            json!({
                "file": k.file,
                "kind": k.kind,
                "offset": k.offset.on_wire(),
                "size_bytes": k.size_bytes,
                "age_ms": k.age_ms,
            })
        })
        .collect();
    json!({
        "triggers": triggers,
        "snapshots": snapshots,
        "last_snapshot_bytes": m.last_snapshot_bytes,
        "bytes_reclaimable": m.bytes_reclaimable,
        "replay_entries": m.replay_entries,
        "replay_estimate_ms": m.replay_estimate_ms,
        "oldest_segment": m.oldest_segment.as_ref().map(|(file, why)| json!({"file": file, "kept_because": why})),
    })
}

pub(super) fn status_json(s: &Status) -> Value {
    let snapshot = s.latest_snapshot.as_ref().map(
        |snap| json!({"file": snap.file, "offset": snap.offset.on_wire(), "size_bytes": snap.size_bytes}),
    );
    let r = &s.recovery;
    json!({
        "first_offset": s.first_offset.on_wire(),
        "next_offset": s.next_offset.on_wire(),
        "entries": s.entries,
        "total_bytes": s.total_bytes,
        "segments": s.segments,
        "active_segment": s.active_segment,
        "keys": s.keys,
        "other_payloads": s.other_payloads,
        "fsynced": s.fsynced,
        "poisoned": s.poisoned,
        "policy": {
            "fsync": s.fsync.to_string(),
            "max_segment_bytes": s.segment_bytes_max,
            "max_payload_bytes": s.payload_bytes_max,
            "log_management": policy_json(&s.management.policy),
        },
        "log_management": management_json(&s.management),
        "latest_snapshot": snapshot,
        "last_snapshot_ms": s.last_snapshot_ms,
        "counters": {
            "appends": s.counters.appends,
            "group_commits": s.counters.batches,
            "fsyncs": s.counters.fsyncs,
            "snapshots": s.counters.snapshots,
            "compactions": s.counters.compactions,
            "bytes_freed": s.counters.bytes_freed,
        },
        "last_recovery": {
            "snapshot": r.snapshot.as_ref().map(|snap| snap.file.clone()),
            "snapshot_offset": r.snapshot.as_ref().map(|snap| snap.offset.on_wire()),
            "snapshots_skipped": r.snapshots_skipped,
            "entries_replayed": r.entries_replayed,
            "bytes_truncated": r.bytes_truncated,
            "broken_file": r.broken_file,
            "temp_files_removed": r.temp_files_removed,
            "segments_deleted": r.segments_deleted,
            "foreign_files": r.foreign_files,
            "duration_ms": r.duration_ms,
        },
        "snapshot_store": s.store.as_ref().map(store_json),
    })
}

/// The uploads to the snapshot store, as `wal_status` shows them.
pub(crate) fn store_json(u: &crate::types::UploadStatus) -> Value {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    json!({
        "url": u.url,
        "uploaded_index": u.uploaded_index,
        "uploaded_age_ms": u.uploaded_at_ms.map(|t| now_ms.saturating_sub(t)),
        "chains_uploaded": u.chains_uploaded,
        "bytes_uploaded": u.bytes_uploaded,
        "queued": u.queued,
        "uploading": u.uploading,
        "failures": u.failures,
        "last_error": u.last_error,
        "ship_log": u.shipping,
        "shipped_offset": u.shipped_offset,
        "shipped_age_ms": u.shipped_at_ms.map(|t| now_ms.saturating_sub(t)),
        "unshipped_entries": u.unshipped_entries,
        "log_objects_shipped": u.log_objects_shipped,
        "log_bytes_shipped": u.log_bytes_shipped,
        "log_gaps": u.log_gaps,
        "ship_failures": u.ship_failures,
        "ship_error": u.ship_error,
    })
}

/// The answer to a membership change.
pub(super) fn changed_body(kind: &'static str, (m, names): &(Members, Names)) -> Body {
    let name = |id: &u64| names.get(id).cloned().unwrap_or_else(|| format!("#{id}"));
    ok(
        kind,
        vec![
            ("raft_id", json!(m.changed)),
            (
                "voters",
                json!(m.voters.iter().map(name).collect::<Vec<_>>()),
            ),
            (
                "learners",
                json!(m.learners.iter().map(name).collect::<Vec<_>>()),
            ),
        ],
    )
}

/// A cluster node's `wal_status`.
pub(super) fn cluster_status_json((s, names): &(ClusterStatus, Names)) -> Value {
    let name = |id: u64| names.get(&id).cloned();
    let all = |ids: &[u64]| {
        ids.iter()
            .map(|id| name(*id).unwrap_or_else(|| format!("#{id}")))
            .collect::<Vec<_>>()
    };
    let matched: serde_json::Map<String, Value> = s
        .match_index
        .iter()
        .filter_map(|(id, m)| name(*id).map(|n| (n, json!(m))))
        .collect();
    json!({
        "role": s.role,
        "term": s.term,
        "leader": name(s.leader),
        "commit_index": s.commit,
        "applied_index": s.applied,
        "last_index": s.last_index,
        "next_offset": s.next_offset.on_wire(),
        "match_index": matched,
        "state_digest": format!("{:08x}", s.state_digest),
        "first_index": s.first_index,
        "snapshot_index": s.management.snapshot.as_ref().map(|f| crate::raftlog::image::index_of(f).get()),
        "snapshot_file": s.management.snapshot.as_ref().map(|f| f.file.clone()),
        "snapshots_written": s.management.snapshots_written,
        "compactions": s.management.compactions,
        "bytes_freed": s.management.bytes_freed,
        "snapshot_transfers": {
            "started": s.management.transfers.started,
            "resumed": s.management.transfers.resumed,
            "asked_again": s.management.transfers.asked_again,
            "restarted": s.management.transfers.restarted,
            "completed": s.management.transfers.completed,
            "from_store": s.management.transfers.from_store,
            "bytes_held": s.management.transfers.bytes_held,
            "last": s.management.transfers.last.map(|p| json!({
                "bytes": p.bytes,
                "transfer_ms": p.transfer_ms,
                "verify_ms": p.verify_ms,
                "install_ms": p.install_ms,
            })),
        },
        "raft_id": s.id,
        "incarnation": format!("{:016x}", s.incarnation),
        "voters": all(&s.voters),
        "learners": all(&s.learners),
        "refused_messages": s.refused_messages,
        "poisoned": s.poisoned,
        "snapshot_store": s.store.as_ref().map(store_json),
    })
}

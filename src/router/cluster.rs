//! The router's side of a cluster node: `init` with several node ids, peer lines
//! (`{"type": "raft"}` between node ids) in and out, and client requests handed to
//! the consensus actor.

use std::io::Write;
use std::sync::Arc;

use crossbeam_channel::Sender;
use raft::eraftpb::Message;
use serde_json::{Value, json};

use super::json as out_json;
use super::{Answer, Body, Router, error_body, ok, wire};
use crate::actor::Reply;
use crate::cluster::transfer::{self, Part};
use crate::cluster::{ClusterNode, ClusterStatus, ReadAnswer, ReadQuery, ToPeer, Transport};
use crate::consensus::{Command, Effect};
use crate::core::kv;
use crate::error::Error;
use wire::{Request, code};

/// Peer messages waiting for the router to write them; beyond this they are dropped
/// (Raft retries, as over a lossy network).
pub(super) const PEER_QUEUE: usize = 4096;

/// This node in its group.
pub(super) struct Member {
    /// Every node's id, in `init`'s order: Raft id `i` is `ids[i - 1]`.
    ids: Arc<[String]>,
    me: usize,
    pub(super) node: ClusterNode,
}

impl Member {
    pub(super) fn me(&self) -> &str {
        &self.ids[self.me]
    }

    fn raft_id(&self, name: &str) -> Option<u64> {
        self.ids
            .iter()
            .position(|n| n == name)
            .map(|i| i as u64 + 1)
    }
}

/// Peer messages go to the router thread, which writes them out.
struct ToRouter(Sender<ToPeer>);

impl Transport for ToRouter {
    fn send(&self, msg: Message) {
        if self.0.try_send(ToPeer::Raft(msg)).is_err() {
            log::debug!("peer output queue full: a message dropped");
        }
    }

    fn send_part(&self, to: u64, part: Part) {
        if self.0.try_send(ToPeer::Part { to, part }).is_err() {
            log::debug!("peer output queue full: a snapshot part dropped");
        }
    }
}

impl<W: Write> Router<W> {
    pub(super) fn init_cluster(&mut self, node_id: String, node_ids: &[String]) -> Body {
        let Some(me) = node_ids.iter().position(|n| *n == node_id) else {
            return error_body(
                code::MALFORMED_REQUEST,
                format!("node_id {node_id} is not among node_ids {node_ids:?}"),
            );
        };
        for (i, id) in node_ids.iter().enumerate() {
            if let Err(why) = wire::check_node_id(id) {
                return error_body(code::MALFORMED_REQUEST, format!("in node_ids: {why}"));
            }
            if node_ids[..i].contains(id) {
                return error_body(
                    code::MALFORMED_REQUEST,
                    format!("node_ids names {id} twice"),
                );
            }
        }
        let mut config = self.config.node.clone();
        config.dir = self.config.data_dir.join(&node_id);
        self.flush();
        let voters: Vec<u64> = (1..=node_ids.len() as u64).collect();
        let transport = Box::new(ToRouter(self.peer_tx.clone()));
        match ClusterNode::open(&config, me as u64 + 1, &voters, transport) {
            Ok(node) => {
                log::info!("{node_id} is a member of {node_ids:?}");
                self.cluster = Some(Member {
                    ids: node_ids.into(),
                    me,
                    node,
                });
                ok("init_ok", vec![])
            }
            Err(e) => {
                log::error!("{e}");
                self.fatal = true;
                error_body(code::CRASH, e.to_string())
            }
        }
    }

    /// Steps a `raft` line from a peer; returns whether the line was one (any other
    /// line is a client's).
    pub(super) fn peer_message(&mut self, line: &[u8]) -> bool {
        let raft = line.windows(6).any(|w| w == b"\"raft\"");
        if !raft && !line.windows(15).any(|w| w == b"\"snapshot_part\"") {
            return false;
        }
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return false;
        };
        let part = v["body"]["type"] == "snapshot_part";
        if v["body"]["type"] != "raft" && !part {
            return false;
        }
        let member = self.cluster.as_ref().expect("cluster mode");
        let (Some(from), Some(to)) = (
            v["src"].as_str().and_then(|s| member.raft_id(s)),
            v["dest"].as_str().and_then(|s| member.raft_id(s)),
        ) else {
            log::warn!("a raft message between unknown nodes: dropped");
            return true;
        };
        if to != member.me as u64 + 1 {
            log::warn!("a raft message for another node: dropped");
            return true;
        }
        if part {
            match transfer::from_json(&v["body"]["part"]) {
                Ok(p) => member.node.step_part(from, p),
                Err(why) => log::warn!("a snapshot part that does not decode: {why}; dropped"),
            }
            return true;
        }
        match crate::cluster::wire::decode(&v["body"]["msg"], from, to) {
            Ok(m) => member.node.step(m),
            Err(why) => log::warn!("a raft message that does not decode: {why}; dropped"),
        }
        true
    }

    /// Writes a snapshot part to peer `to` as a `snapshot_part` line.
    pub(super) fn part_line(&mut self, to: u64, part: &Part) {
        let Some(member) = &self.cluster else {
            return;
        };
        let Some(dest) = member.ids.get((to as usize).wrapping_sub(1)) else {
            return;
        };
        let line = json!({
            "src": member.me(),
            "dest": dest,
            "body": {"type": "snapshot_part", "part": transfer::to_json(part), "msg_id": self.next_msg_id},
        });
        self.next_msg_id += 1;
        let mut out = String::with_capacity(256);
        out_json::write_value(&mut out, &line);
        out.push('\n');
        if let Err(e) = self.out.write_all(out.as_bytes()) {
            log::error!("writing to stdout failed: {e}");
        }
    }

    /// Writes a message to a peer as a `raft` line.
    pub(super) fn peer_line(&mut self, m: &Message) {
        let Some(member) = &self.cluster else {
            return;
        };
        let Some(dest) = member.ids.get((m.to as usize).wrapping_sub(1)) else {
            return;
        };
        let mut out = String::with_capacity(128);
        out.push_str("{\"src\": ");
        out_json::write_str(&mut out, member.me());
        out.push_str(", \"dest\": ");
        out_json::write_str(&mut out, dest);
        out.push_str(", \"body\": {\"type\": \"raft\", \"msg\": ");
        crate::cluster::wire::write(&mut out, m);
        out.push_str(&format!(", \"msg_id\": {}}}}}\n", self.next_msg_id));
        self.next_msg_id += 1;
        if let Err(e) = self.out.write_all(out.as_bytes()) {
            log::error!("writing to stdout failed: {e}");
        }
    }

    fn reply_with<T: Send + 'static>(
        &self,
        src: String,
        seq: u64,
        f: impl FnOnce(T) -> crate::Result<Answer> + Send + 'static,
    ) -> Reply<T> {
        let done = self.done_tx.clone();
        Reply::new(move |r: crate::Result<T>| {
            let outcome = r.and_then(f);
            let _ = done.send(super::Done { src, seq, outcome });
        })
    }

    pub(super) fn dispatch_cluster(&mut self, src: String, seq: u64, request: Request) {
        let member = self.cluster.as_ref().expect("cluster mode");
        let node = &member.node;
        match request {
            Request::Init { .. } => unreachable!("handled by the router"),
            Request::WalAppend { payload } => node.propose_with(
                Command::Append(payload.into_bytes()),
                self.reply_with(src, seq, |e| match e {
                    Effect::Applied(offset) => Ok(Answer::Appended(offset)),
                    other => Err(Error::Crashed(format!("an append applied as {other:?}"))),
                }),
            ),
            Request::Write { key, value } => node.propose_with(
                Command::Append(kv::set_payload(&key, &value).into_bytes()),
                self.reply_with(src, seq, |_| Ok(Answer::Written)),
            ),
            Request::Cas { key, from, to } => node.propose_with(
                Command::Cas {
                    key: key.clone(),
                    from: wire::json_text(&from),
                    to,
                },
                self.reply_with(src, seq, move |e| match e {
                    Effect::Applied(_) => Ok(Answer::Swapped),
                    Effect::CasAbsent => Err(Error::NotFound(format!("key {key} does not exist"))),
                    Effect::CasMismatch(cur) => Err(Error::PreconditionFailed(format!(
                        "key {key} does not hold the expected value (it holds {cur})"
                    ))),
                }),
            ),
            Request::Read { key } => {
                let shown = key.clone();
                node.read_with(
                    ReadQuery::Key(key),
                    self.reply_with(src, seq, move |a| match a {
                        ReadAnswer::Value(Some(v)) => Ok(Answer::Value(v)),
                        ReadAnswer::Value(None) => {
                            Err(Error::NotFound(format!("key {shown} does not exist")))
                        }
                        _ => Err(Error::Crashed("a key read answered otherwise".into())),
                    }),
                )
            }
            Request::WalRead { offset } => node.read_with(
                ReadQuery::Entry(offset),
                self.reply_with(src, seq, |a| match a {
                    ReadAnswer::Entry(e) => Ok(Answer::Read(e)),
                    _ => Err(Error::Crashed("an entry read answered otherwise".into())),
                }),
            ),
            Request::WalInfo => node.read_with(
                ReadQuery::Info,
                self.reply_with(src, seq, |a| match a {
                    ReadAnswer::Info(i) => Ok(Answer::Info(i)),
                    _ => Err(Error::Crashed("an info read answered otherwise".into())),
                }),
            ),
            Request::WalStatus => {
                let ids = member.ids.clone();
                node.status_with(self.reply_with(src, seq, move |s: ClusterStatus| {
                    Ok(Answer::ClusterStatus(Box::new((s, ids))))
                }))
            }
            // Each node manages its own log. A cluster snapshot is always a full one,
            // whatever `mode` asks.
            Request::WalSnapshot { mode: _ } => {
                node.snapshot_with(self.reply_with(src, seq, |s| Ok(Answer::Snapshot(s))))
            }
            Request::WalCompact { snapshot_at_offset } => node.compact_with(
                snapshot_at_offset,
                self.reply_with(src, seq, |c| Ok(Answer::Compaction(c))),
            ),
            Request::WalPolicy { update } => {
                node.set_policy_with(update, self.reply_with(src, seq, |p| Ok(Answer::Policy(p))))
            }
            Request::WalSegmentConfig { max_segment_bytes } => node.set_segment_bytes_max_with(
                max_segment_bytes,
                self.reply_with(src, seq, |b| Ok(Answer::SegmentBytes(b))),
            ),
            Request::WalSegmentInfo => {
                node.segments_with(self.reply_with(src, seq, |l| Ok(Answer::Segments(l))))
            }
        }
    }
}

/// A cluster node's `wal_status`.
pub(super) fn status_json((s, ids): &(ClusterStatus, Arc<[String]>)) -> Value {
    let name = |id: u64| ids.get((id as usize).wrapping_sub(1)).cloned();
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
        "snapshot_index": s.management.snapshot.as_ref().map(|f| f.offset.get()),
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
        },
        "poisoned": s.poisoned,
    })
}

//! The router's side of a cluster node: `init` with several node ids, peer lines
//! (`{"type": "raft"}` between node ids) in and out, and client requests handed to
//! the consensus actor.

use std::sync::Arc;

use crossbeam_channel::Sender;
use raft::eraftpb::Message;
use serde_json::{Value, json};

use super::answer::Names;
use super::json as out_json;
use super::peer_json;
use super::{Answer, Body, Mode, Outlet, Router, Source, error_body, ok, wire};
use crate::actor::Reply;
use crate::cluster::transfer::Part;
use crate::cluster::{ClusterNode, ClusterStatus, Members, Roster, ToPeer, Transport};
use crate::consensus::Change;
use wire::{Request, code};

/// Peer messages waiting for the router to write them; beyond this they are dropped
/// (Raft retries, as over a lossy network).
pub(super) const PEER_QUEUE: usize = 4096;

/// This node in its group.
pub(super) struct Member {
    me: String,
    /// This node's Raft id.
    id: u64,
    /// Node ids by Raft id, shared with the consensus actor (which adds members).
    roster: Roster,
    pub(super) node: ClusterNode,
}

/// A node started with `join`, waiting for the group's first message to it, which
/// names its Raft id.
pub(super) struct Joining {
    me: String,
    config: crate::config::Config,
}

impl Joining {
    pub(super) fn me(&self) -> &str {
        &self.me
    }
}

impl Member {
    pub(super) fn me(&self) -> &str {
        &self.me
    }

    fn raft_id(&self, name: &str) -> Option<u64> {
        let roster = self.roster.read().expect("roster lock");
        roster.iter().find(|(_, n)| *n == name).map(|(id, _)| *id)
    }

    fn name(&self, id: u64) -> Option<String> {
        self.roster.read().expect("roster lock").get(&id).cloned()
    }

    fn names(&self) -> Names {
        self.roster.read().expect("roster lock").clone()
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

impl<O: Outlet> Router<O> {
    pub(super) fn init_cluster(
        &mut self,
        node_id: String,
        node_ids: &[String],
        join: bool,
    ) -> Body {
        let me = node_ids.iter().position(|n| *n == node_id);
        if me.is_none() && !join {
            return error_body(
                code::MALFORMED_REQUEST,
                format!(
                    "node_id {node_id} is not among node_ids {node_ids:?} (a node that joins \
                     an existing group says \"join\": true)"
                ),
            );
        }
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
        // The directory says who the node is, once it has been one: a node that
        // joined keeps the Raft id the group gave it.
        let recorded = match crate::raftlog::read_identity(&crate::fs::RealFs, &config.dir) {
            Ok(r) => r.filter(|who| who.id != 0),
            Err(e) => {
                log::error!("{e}");
                self.fatal = true;
                return error_body(code::CRASH, e.to_string());
            }
        };
        let (id, founders) = match (recorded, me) {
            (Some(who), Some(me))
                if !who.founders.is_empty()
                    && (who.id != me as u64 + 1
                        || who.founders != (1..=node_ids.len() as u64).collect::<Vec<_>>()) =>
            {
                let why = format!(
                    "{} belongs to Raft member {} of a group founded by {} nodes, not to \
                     member {} of the {} named in node_ids: start this node with the \
                     node_ids it was started with first, or on a new directory",
                    config.dir.display(),
                    who.id,
                    who.founders.len(),
                    me + 1,
                    node_ids.len()
                );
                log::error!("{why}");
                self.fatal = true;
                return error_body(code::CRASH, why);
            }
            (Some(who), _) => (who.id, who.founders),
            (None, _) if join => {
                log::info!("{node_id} waits to join a group: add it with member_add on the leader");
                self.mode = Mode::Joining(Box::new(Joining {
                    me: node_id,
                    config,
                }));
                return ok("init_ok", vec![]);
            }
            (None, Some(me)) => (me as u64 + 1, (1..=node_ids.len() as u64).collect()),
            (None, None) => unreachable!("checked above"),
        };
        let roster: Roster = Arc::default();
        if !founders.is_empty() {
            // Founders are Raft members 1..=k in init's order.
            let mut r = roster.write().expect("roster lock");
            for (i, name) in node_ids.iter().enumerate() {
                r.insert(i as u64 + 1, name.clone());
            }
        }
        self.open_member(node_id, config, id, &founders, roster)
    }

    fn open_member(
        &mut self,
        node_id: String,
        config: crate::config::Config,
        id: u64,
        founders: &[u64],
        roster: Roster,
    ) -> Body {
        let own = self.links.as_mut().and_then(|l| l.transport.take());
        let transport = own.unwrap_or_else(|| Box::new(ToRouter(self.peer_tx.clone())));
        match ClusterNode::open(&config, id, founders, roster.clone(), transport) {
            Ok(node) => {
                log::info!("{node_id} is Raft member {id}");
                if let Some(opened) = self.links.as_mut().and_then(|l| l.opened.take()) {
                    opened(super::Opened {
                        inbox: node.peer_inbox(),
                        incarnation: node.incarnation(),
                        roster: roster.clone(),
                    });
                }
                self.mode = Mode::Member(Member {
                    me: node_id,
                    id,
                    roster,
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

    /// A joining node learnt its Raft id from the group's first message to it (over
    /// its own links): it becomes that member.
    pub(super) fn joined(&mut self, id: u64) {
        if !matches!(self.mode, Mode::Joining(_)) || id == 0 {
            return;
        }
        let Mode::Joining(j) = std::mem::replace(&mut self.mode, Mode::Uninitialized) else {
            unreachable!("matched above")
        };
        let body = self.open_member(j.me, j.config, id, &[], Roster::default());
        if let Some(why) = super::answer::error_text(&body) {
            log::error!("the node cannot join: {why}");
        }
    }

    /// Steps a `raft` or `snapshot_part` line from a peer; returns whether the line was
    /// one (any other line is a client's).
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
        let (Some(src), Some(dest)) = (v["src"].as_str(), v["dest"].as_str()) else {
            log::warn!("a peer message without src or dest: dropped");
            return true;
        };
        let body = &v["body"];
        if let Mode::Joining(j) = &self.mode {
            // The group's first message to a joining node names its Raft id.
            let Some(id) = body["to"]
                .as_u64()
                .filter(|id| *id != 0 && dest == j.me && !part)
            else {
                return true;
            };
            let Mode::Joining(j) = std::mem::replace(&mut self.mode, Mode::Uninitialized) else {
                unreachable!("matched above")
            };
            self.open_member(j.me, j.config, id, &[], Roster::default());
        }
        let Mode::Member(member) = &self.mode else {
            return true;
        };
        if dest != member.me || body["to"].as_u64().is_some_and(|to| to != member.id) {
            log::warn!("a peer message for another node (or another Raft id of this one): dropped");
            return true;
        }
        let from = match body["fr"].as_u64() {
            Some(fr) => {
                let mut roster = member.roster.write().expect("roster lock");
                match roster.get(&fr) {
                    Some(name) if name != src => {
                        log::warn!(
                            "a peer message from {src} as Raft id {fr}, which is {name}: dropped"
                        );
                        return true;
                    }
                    Some(_) => fr,
                    None => {
                        roster.insert(fr, src.to_string());
                        fr
                    }
                }
            }
            None => match member.raft_id(src) {
                Some(id) => id,
                None => {
                    log::warn!("a peer message from unknown node {src}: dropped");
                    return true;
                }
            },
        };
        if part {
            match peer_json::part_from_json(&body["part"]) {
                Ok(p) => member.node.step_part(from, p),
                Err(why) => log::warn!("a snapshot part that does not decode: {why}; dropped"),
            }
            return true;
        }
        let incarnation = body["inc"].as_u64().unwrap_or(0);
        match peer_json::decode(&body["msg"], from, member.id) {
            Ok(m) => member.node.step(m, incarnation),
            Err(why) => log::warn!("a raft message that does not decode: {why}; dropped"),
        }
        true
    }

    /// Writes a snapshot part to peer `to` as a `snapshot_part` line.
    pub(super) fn part_line(&mut self, to: u64, part: &Part) {
        let Mode::Member(member) = &self.mode else {
            return;
        };
        let Some(dest) = member.name(to) else {
            return;
        };
        let line = json!({
            "src": member.me(),
            "dest": dest,
            "body": {"type": "snapshot_part", "fr": member.id, "part": peer_json::part_to_json(part), "msg_id": self.next_msg_id},
        });
        self.next_msg_id += 1;
        let mut out = String::with_capacity(256);
        out_json::write_value(&mut out, &line);
        out.push('\n');
        self.out.peer(out.as_bytes());
    }

    /// Writes a message to a peer as a `raft` line.
    pub(super) fn peer_line(&mut self, m: &Message) {
        let Mode::Member(member) = &self.mode else {
            return;
        };
        let Some(dest) = member.name(m.to) else {
            log::debug!(
                "a message for Raft id {}, whose node id is not known yet: dropped",
                m.to
            );
            return;
        };
        let mut out = String::with_capacity(160);
        out.push_str("{\"src\": ");
        out_json::write_str(&mut out, member.me());
        out.push_str(", \"dest\": ");
        out_json::write_str(&mut out, &dest);
        out.push_str(&format!(
            ", \"body\": {{\"type\": \"raft\", \"fr\": {}, \"to\": {}, \"inc\": {}, \"msg\": ",
            member.id,
            m.to,
            member.node.incarnation()
        ));
        peer_json::write(&mut out, m);
        out.push_str(&format!(", \"msg_id\": {}}}}}\n", self.next_msg_id));
        self.next_msg_id += 1;
        self.out.peer(out.as_bytes());
    }

    fn reply_with<T: Send + 'static>(
        &self,
        src: Source,
        seq: u64,
        f: impl FnOnce(T) -> crate::Result<Answer> + Send + 'static,
    ) -> Reply<T> {
        let done = self.done_tx.clone();
        Reply::new(move |r: crate::Result<T>| {
            let outcome = r.and_then(f);
            let _ = done.send(super::Done { src, seq, outcome });
        })
    }

    pub(super) fn dispatch_cluster(&mut self, src: Source, seq: u64, request: Request) {
        let member = self.member();
        let node = &member.node;
        match request {
            Request::Init { .. } => unreachable!("handled by the router"),
            Request::WalAppend { payload } => node.append_with(
                payload.into_bytes(),
                self.reply_with(src, seq, |o| Ok(Answer::Appended(o))),
            ),
            Request::Write { key, value } => node.put_with(
                &key,
                &value,
                self.reply_with(src, seq, |()| Ok(Answer::Written)),
            ),
            Request::Cas { key, from, to } => node.cas_with(
                key,
                wire::json_text(&from),
                to,
                self.reply_with(src, seq, |()| Ok(Answer::Swapped)),
            ),
            Request::Read { key } => {
                node.get_with(key, self.reply_with(src, seq, |v| Ok(Answer::Value(v))))
            }
            Request::WalRead { offset } => {
                node.read_entry_with(offset, self.reply_with(src, seq, |e| Ok(Answer::Read(e))))
            }
            Request::WalInfo => node.info_with(self.reply_with(src, seq, |i| Ok(Answer::Info(i)))),
            Request::WalStatus => {
                let roster = member.roster.clone();
                node.status_with(self.reply_with(src, seq, move |s: ClusterStatus| {
                    let names = roster.read().expect("roster lock").clone();
                    Ok(Answer::ClusterStatus(Box::new((s, names))))
                }))
            }
            Request::MemberAdd { member: name } => {
                if let Err(why) = wire::check_node_id(&name) {
                    let body = error_body(code::MALFORMED_REQUEST, why);
                    return self.finish(&src, seq, body);
                }
                self.change(src, seq, "member_add_ok", Change::AddLearner(name));
            }
            Request::MemberPromote { member: name } => match member.raft_id(&name) {
                Some(id) => self.change(src, seq, "member_promote_ok", Change::Promote(id)),
                None => self.unknown_member(src, seq, &name),
            },
            Request::MemberRemove { member: name } => match member.raft_id(&name) {
                Some(id) => self.change(src, seq, "member_remove_ok", Change::Remove(id)),
                None => self.unknown_member(src, seq, &name),
            },
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

impl<O: Outlet> Router<O> {
    fn member(&self) -> &Member {
        match &self.mode {
            Mode::Member(member) => member,
            _ => unreachable!("only a member dispatches cluster requests"),
        }
    }

    fn change(&mut self, src: Source, seq: u64, kind: &'static str, change: Change) {
        let member = self.member();
        let roster = member.roster.clone();
        let reply = self.reply_with(src, seq, move |m: Members| {
            let names = roster.read().expect("roster lock").clone();
            Ok(Answer::Changed(kind, Box::new((m, names))))
        });
        member.node.change_members_with(change, reply);
    }

    fn unknown_member(&mut self, src: Source, seq: u64, name: &str) {
        let known = self.member().names();
        let body = error_body(
            code::KEY_DOES_NOT_EXIST,
            format!(
                "{name} is not a member this node knows of ({:?})",
                known.values().collect::<Vec<_>>()
            ),
        );
        self.finish(&src, seq, body);
    }
}

//! A cluster node: one member of a Raft group, run by the consensus actor.
//!
//! The consensus actor is one thread that owns the [`Peer`] (raft-rs's `RawNode`,
//! the replicated state machine) and its [`RaftLog`]. Its loop:
//!
//! 1. waits for a request, a peer message or the next tick (every
//!    [`ClusterLimits::tick`](crate::config::ClusterLimits::tick));
//! 2. takes in everything that is waiting (so one sync covers many requests: group
//!    commit), proposes writes, starts reads (ReadIndex), steps peer messages;
//! 3. runs each Ready: messages a leader may send at once go to the [`Transport`];
//!    entries and hard state are written to the segments (readable at once), and a
//!    sync job goes to the **syncer** thread, while this thread goes on stepping;
//! 4. when the syncer reports the job durable (the segments' fdatasync, then
//!    `raft.state` if the term or vote changed; jobs that queued meanwhile share one
//!    sync: group commit), raft-rs learns it (`on_persist_ready`) and only then the
//!    messages that promise durability (votes, a follower's acknowledgements) leave;
//! 5. answers requests whose entries were committed and applied here (raft-rs hands
//!    out committed entries only up to the persisted index), and reads whose read
//!    index this node has applied.
//!
//! A request that finds no leader waits up to [`ClusterLimits::leader_wait`](crate::config::ClusterLimits::leader_wait) for one, then
//! gets error 11 (nothing happened). A write still unanswered after
//! [`ClusterLimits::request_timeout`](crate::config::ClusterLimits::request_timeout) gets error 13 (it may or may not be committed later); a
//! read, error 11.
//!
//! The files: `node.rs` opens a node and wires its threads ([`ClusterNode`]);
//! `actor.rs` is the consensus actor's loop (requests, reads, timeouts, incarnations,
//! uploads, status); `syncer.rs` the syncer thread; `snapshotter.rs` the snapshotter
//! thread; `manage.rs` its handle and the log-management policy; `catch_up.rs` and
//! `admin.rs` the actor's snapshot transfers and log-management requests; `client.rs`
//! a client's requests in its own terms (appends, keys) and their answers; `transfer.rs`
//! the parts of a transfer. How messages travel between members is the [`Transport`]'s
//! business: the stdin/stdout one encodes them as JSON lines (`router::peer_json`).

mod actor;
mod admin;
mod catch_up;
mod client;
pub mod kinds;
pub mod manage;
mod membership;
mod node;
mod snapshotter;
mod syncer;
pub mod transfer;

pub use client::Members;
pub use node::{ClusterNode, PeerInbox};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use raft::StateRole;
use raft::eraftpb::Message;

use crate::actor::uploader::{Upload, UploaderHandle};
use crate::actor::{Feedback, Reply, spawn_actor};
use crate::config::Config;
use crate::consensus::{Change, Changed, Command, Effect, Outcome, Peer, PeerConfig, Refused};
use crate::core::policy;
use crate::core::policy::{Policy, PolicyUpdate};
use crate::core::position::{Offset, RaftIndex};
use crate::error::{Error, Result};
use crate::fs::{FileSystem, Lock, RealFs};
use crate::raftlog::image;
use crate::raftlog::{RaftLog, Syncer};
use crate::types::{Compaction, Info, ReadEntry, SegmentList, SnapshotFile};
use actor::Consensus;
use admin::Admin;
use manage::{Chunks, Manager};
use syncer::{Handoff, Numbered, Synced, Taker, merge_jobs};

/// Where a node's messages to its peers go: the binary writes them to stdout as
/// `raft` lines; an embedding program supplies its own.
pub trait Transport: Send + Sync {
    /// Sends `msg` to the peer with Raft id `msg.to`. Never blocks: a message that
    /// cannot go now is dropped (Raft retries).
    fn send(&self, msg: Message);
    /// Sends a part of a snapshot transfer to the peer with Raft id `to` (as a
    /// `snapshot_part` line in the binary). Never blocks; may drop it (the transfer
    /// asks again).
    fn send_part(&self, to: u64, part: transfer::Part);
    /// The peers whose messages were dropped on a full queue since the last call:
    /// the consensus actor reports them unreachable to raft-rs (etcd's rule), which
    /// then stops streaming appends to them and probes instead. A transport with no
    /// queue per peer has none.
    fn unreachable(&self) -> Vec<u64> {
        Vec::new()
    }
}

/// The node id of each Raft id this node knows of (founders, members added since,
/// peers heard from), shared by the consensus actor and whoever connects the node to
/// its peers.
pub type Roster = Arc<std::sync::RwLock<std::collections::BTreeMap<u64, String>>>;

/// What a node sends to a peer, as the router's queue carries it.
#[derive(Debug)]
pub enum ToPeer {
    /// A Raft message.
    Raft(Message),
    /// A part of a snapshot transfer, to Raft id `to`.
    Part { to: u64, part: transfer::Part },
}

/// What a linearizable read asks.
#[derive(Debug, Clone)]
pub enum ReadQuery {
    /// A key's value.
    Key(String),
    /// The entry at a client offset.
    Entry(Offset),
    /// Live entries, bytes, durability.
    Info,
}

/// The answer to a [`ReadQuery`].
#[derive(Debug, Clone)]
pub enum ReadAnswer {
    /// A key's value (`None`: absent).
    Value(Option<String>),
    /// An entry.
    Entry(ReadEntry),
    /// The log's figures.
    Info(Info),
}

/// Where the node stands in its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// `leader`, `follower`, `candidate` or `pre_candidate`.
    pub role: &'static str,
    /// The current term.
    pub term: u64,
    /// The leader's Raft id (0: none known).
    pub leader: u64,
    /// The commit index.
    pub commit: u64,
    /// The last index applied to the state machine.
    pub applied: u64,
    /// The next client offset.
    pub next_offset: Offset,
    /// On the leader, each voter's match index by Raft id.
    pub match_index: Vec<(u64, u64)>,
    /// On the leader, the followers it heard from within the last election timeout
    /// (check-quorum's measure; the log is kept back only for these), by Raft id.
    pub heard_from: Vec<u64>,
    /// CRC-32C of the state machine at `applied` (see `Machine::digest`).
    pub state_digest: u32,
    /// The voters of the configuration applied, by Raft id.
    pub voters: Vec<u64>,
    /// Its learners (members that receive the log and do not vote).
    pub learners: Vec<u64>,
    /// This node's Raft id.
    pub id: u64,
    /// Its directory's incarnation (see `raftlog::Identity`).
    pub incarnation: u64,
    /// The incarnation the group recorded for each member it heard from, by Raft id,
    /// as this node has applied it.
    pub recorded_incarnations: Vec<(u64, u64)>,
    /// Peer messages refused since the node started because they came from another
    /// incarnation of a member than the one the group recorded.
    pub refused_messages: u64,
    /// The last index in the log.
    pub last_index: u64,
    /// The first index the log holds entries from (1 until compacted).
    pub first_index: u64,
    /// Snapshots and compactions.
    pub management: manage::ClusterManagement,
    /// Why the node stopped serving, after a failed write or sync.
    pub poisoned: Option<String>,
    /// The uploads to the snapshot store, if the node has one.
    pub store: Option<crate::types::UploadStatus>,
}

enum Msg {
    Admin(Box<Admin>),
    Change(Change, Reply<Changed>),
    Peer(Box<Message>, u64),
    Part(u64, Box<transfer::Part>),
    Propose(Command, Reply<Effect>),
    Read(ReadQuery, Reply<ReadAnswer>),
    Status(Reply<ClusterStatus>),
    /// On the leader: hand leadership to the most caught-up follower (answers its
    /// Raft id; `None` when this node does not lead or has no follower to take it).
    HandOver(Reply<Option<u64>>),
}

//! A cluster node: one member of a Raft group, run by the consensus actor.
//!
//! The consensus actor is one thread that owns the [`Peer`] (raft-rs's `RawNode`,
//! the replicated state machine) and its [`RaftLog`]. Its loop:
//!
//! 1. waits for a request, a peer message or the next tick (every [`TICK`]);
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
//! A request that finds no leader waits up to [`Config::leader_wait`] for one, then
//! gets error 11 (nothing happened). A write still unanswered after
//! [`Config::request_timeout`] gets error 13 (it may or may not be committed later); a
//! read, error 11.

mod admin;
mod catch_up;
pub mod manage;
pub mod transfer;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use raft::StateRole;
use raft::eraftpb::Message;

use crate::actor::uploader::{Upload, UploaderHandle};
use crate::actor::{Feedback, Reply, spawn_actor};
use crate::config::Config;
use crate::consensus::durable::{SyncJob, Syncer};
use crate::consensus::image;
use crate::consensus::{
    Change, Changed, Command, Effect, Outcome, Peer, PeerConfig, RaftLog, Refused,
};
use crate::core::policy;
use crate::core::policy::{Policy, PolicyUpdate};
use crate::core::position::Offset;
use crate::error::{Error, Result};
use crate::fs::{FileSystem, Lock, RealFs};
use crate::types::{Compaction, Info, ReadEntry, SegmentList, SnapshotFile};
use admin::Admin;
use catch_up::{Download, offer_wait};
use manage::Manager;

/// Time per Raft tick. Fine-grained, so that two followers rarely time out in the same
/// tick and split the vote (each election timeout is drawn among 50 ticks).
pub const TICK: Duration = Duration::from_millis(10);
/// Ticks without hearing a leader before a follower campaigns (randomized up to twice):
/// 0.5 to 1 s.
pub const ELECTION_TICKS: usize = 50;
/// Ticks between a leader's heartbeats: 100 ms.
pub const HEARTBEAT_TICKS: usize = 10;

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
}

/// The node id of each Raft id this node knows of (founders, members added since,
/// peers heard from), shared by the consensus actor and whoever connects the node to
/// its peers.
pub type Roster = Arc<std::sync::RwLock<std::collections::BTreeMap<u64, String>>>;

/// How long a leader waits before it proposes again to record a member's incarnation.
const RECORD_AGAIN: Duration = Duration::from_secs(2);

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
    /// CRC-32C of the state machine at `applied` (see `Machine::digest`).
    pub state_digest: u32,
    /// The voters of the configuration applied, by Raft id.
    pub voters: Vec<u64>,
    /// Its learners (members that receive the log and do not vote).
    pub learners: Vec<u64>,
    /// This node's Raft id.
    pub id: u64,
    /// Its directory's incarnation (see `consensus::durable::Identity`).
    pub incarnation: u64,
    /// Peer messages refused since the node started because they came from another
    /// incarnation of a member than the one the group recorded.
    pub refused_messages: u64,
    /// The last index in the log.
    pub last_index: u64,
    /// The first index the log holds entries from (1 until compacted).
    pub first_index: u64,
    /// Snapshots and compactions.
    pub management: manage::Management,
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
}

/// A handle on a running cluster node.
pub struct ClusterNode {
    tx: Option<Sender<Msg>>,
    incarnation: u64,
    join: Option<std::thread::JoinHandle<()>>,
    /// Held until the node is dropped (in a mutex only so that handles are `Sync`).
    _lock: std::sync::Mutex<Box<dyn Lock>>,
}

impl ClusterNode {
    /// Opens the node with Raft id `id` in `config.dir` (created if missing) and
    /// starts its consensus actor: a founder of a group of `founders` (Raft ids), or,
    /// with no founders, a new member joining a group that added it (it takes nothing
    /// from the group's log until it has installed a snapshot, which brings the
    /// configuration). `roster` holds the node ids it knows (the founders', at
    /// least); the node adds those of members added since.
    ///
    /// # Errors
    /// [`Error::Open`] when the directory cannot be used (see [`RaftLog::open`]).
    pub fn open(
        config: &Config,
        id: u64,
        founders: &[u64],
        roster: Roster,
        transport: Box<dyn Transport>,
    ) -> Result<ClusterNode> {
        Self::open_with_fs(config, id, founders, roster, transport, Arc::new(RealFs))
    }

    /// [`ClusterNode::open`] over any filesystem.
    ///
    /// # Errors
    /// As [`ClusterNode::open`].
    pub fn open_with_fs(
        config: &Config,
        id: u64,
        founders: &[u64],
        roster: Roster,
        transport: Box<dyn Transport>,
        fs: Arc<dyn FileSystem>,
    ) -> Result<ClusterNode> {
        config.validate()?;
        let (lock, _existed) = crate::node::prepare_dir(&*fs, &config.dir)?;
        if founders.is_empty()
            && let Some(store) = &config.snapshot_store
        {
            bootstrap_from_store(&*fs, &config.dir, store, &roster);
        }
        let mut store = RaftLog::open(fs.clone(), &config.log_options(), id, founders)?;
        let who = store.identity().clone();
        let on_disk = store.snapshots_on_disk()?;
        let loaded = image::load(&*fs, &config.dir, &on_disk, store.first_index())?;
        let mut loaded_term = 0;
        let mut loaded_conf = (who.founders.clone(), Vec::new());
        let mut newest_client_offset = Offset::ZERO;
        let (mut machine, newest) = match loaded {
            Some((image, chain)) => {
                store.start_from_snapshot(image.index());
                store.start_configured(&image.voters, &image.learners);
                log::info!(
                    "cluster node {id}: loaded snapshot {} (index {}, a chain of {} file(s), \
                     {} keys)",
                    chain.last().map_or("", |f| f.file.as_str()),
                    image.index(),
                    chain.len(),
                    image.machine.kv.map.len()
                );
                loaded_term = image.term;
                loaded_conf = (image.voters.clone(), image.learners.clone());
                newest_client_offset = image.machine.next_offset;
                (image.machine, Some(chain))
            }
            None => (crate::consensus::Machine::default(), None),
        };
        crate::consensus::name_founders(
            &mut machine,
            &who.founders,
            &roster.read().expect("roster lock"),
        );
        roster.write().expect("roster lock").extend(
            machine
                .names
                .iter()
                .filter(|(_, n)| !n.is_empty())
                .map(|(id, n)| (*id, n.clone())),
        );

        let first_offset = match store.first_index() {
            1 => Offset::ZERO,
            first => Offset::new(first - 2),
        };
        let applied = machine.applied;
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        let mut peer = Peer::resume(
            &PeerConfig {
                id,
                election_ticks: ELECTION_TICKS,
                heartbeat_ticks: HEARTBEAT_TICKS,
                boot,
            },
            store,
            machine,
        )
        .map_err(|e| Error::Open(format!("raft refused the configuration: {e}")))?;
        log::info!(
            "cluster node {id} (founders {:?}) opened {}: last index {}, term {}",
            who.founders,
            config.dir.display(),
            peer.store().last_index(),
            peer.store().hard_state().term
        );
        let (tx, inbox) = crossbeam_channel::bounded(config.inbox_capacity.max(1024));
        let (jobs_tx, jobs) = crossbeam_channel::unbounded::<(u64, SyncJob)>();
        let (synced_tx, synced) = crossbeam_channel::unbounded();
        let transport: Arc<dyn Transport> = Arc::from(transport);
        if let Some(chain) = &newest {
            peer.store_mut().offer(
                transfer::Identity::of(chain, loaded_term),
                &loaded_conf.0,
                &loaded_conf.1,
            );
        }
        let manager = Manager::start(
            fs.clone(),
            config,
            transport.clone(),
            first_offset,
            applied,
            newest.unwrap_or_default(),
            on_disk,
            peer.store().sync_count(),
        )?;
        let incarnation = who.incarnation;
        let uploader = match &config.snapshot_store {
            Some(store) => {
                let roster = roster.read().expect("roster lock");
                let founders = who
                    .founders
                    .iter()
                    .map(|id| roster.get(id).cloned().unwrap_or_else(|| format!("#{id}")))
                    .collect();
                drop(roster);
                Some(crate::node::start_uploader(
                    config,
                    store,
                    fs.clone(),
                    founders,
                )?)
            }
            None => None,
        };
        let compact_after_upload = config
            .snapshot_store
            .as_ref()
            .is_some_and(|s| s.compact_after_upload);
        let store_fetch = config
            .snapshot_store
            .clone()
            .map(|s| (s, fs.clone(), config.dir.clone()));
        let mut syncer = Syncer::new(fs, config.dir.clone(), who);
        let syncer_join = spawn_actor(
            "syncer",
            |why: String| log::error!("{why}; the cluster node stops acknowledging"),
            move || {
                while let Ok(first) = jobs.recv() {
                    let mut batch = vec![first];
                    batch.extend(jobs.try_iter());
                    let (number, writes) = batch
                        .last()
                        .map(|(n, j)| (*n, j.writes))
                        .expect("non-empty");
                    let jobs: Vec<SyncJob> = batch.into_iter().map(|(_, j)| j).collect();
                    let result = syncer.run(&jobs).map(|()| (number, writes));
                    let failed = result.is_err();
                    let _ = synced_tx.send(result.map_err(|e| e.to_string()));
                    if failed {
                        break;
                    }
                }
            },
        )
        .map_err(|e| Error::Open(format!("cannot start a thread: {e}")))?;
        let actor = Consensus {
            peer,
            transport,
            inbox,
            jobs: Some(jobs_tx),
            synced,
            syncer: Some(syncer_join),
            unsynced: std::collections::VecDeque::new(),
            pending: HashMap::new(),
            waiting: Vec::new(),
            poisoned: None,
            manager,
            download: None,
            installing: None,
            snapshot_waiters: Vec::new(),
            compact_waiters: std::collections::VecDeque::new(),
            newest_client: newest_client_offset,
            serving: HashMap::new(),
            offer_wait: offer_wait(config.snapshot_send_bytes_per_sec),
            roster,
            incarnation,
            leader_wait: config.leader_wait,
            request_timeout: config.request_timeout,
            changes: HashMap::new(),
            recording: HashMap::new(),
            refused_messages: 0,
            warned_incarnation: None,
            names_shared: 0,
            last_stale_cut: None,
            install_timer: None,
            uploader,
            upload_shutdown_wait: config
                .snapshot_store
                .as_ref()
                .map_or(Duration::ZERO, |s| s.shutdown_wait),
            compact_after_upload,
            upload_seen: None,
            store_fetch,
        };
        let join = spawn_actor(
            "consensus",
            |why: String| log::error!("{why}; the cluster node answers nothing more"),
            move || actor.run(),
        )
        .map_err(|e| Error::Open(format!("cannot start a thread: {e}")))?;
        Ok(ClusterNode {
            tx: Some(tx),
            incarnation,
            join: Some(join),
            _lock: std::sync::Mutex::new(lock),
        })
    }

    fn submit(&self, msg: Msg) {
        let tx = self.tx.as_ref().expect("running");
        // A full inbox drops a peer message (the network may) but waits for a client's.
        match msg {
            Msg::Peer(..) | Msg::Part(..) => {
                if let Err(TrySendError::Full(_)) = tx.try_send(msg) {
                    log::debug!("consensus inbox full: a peer message dropped");
                }
            }
            other => {
                let _ = tx.send(other);
            }
        }
    }

    /// Hands in a message from a peer, which says it is incarnation `incarnation` of
    /// its Raft id (`msg.from`): refused if the group recorded another one.
    pub fn step(&self, msg: Message, incarnation: u64) {
        self.submit(Msg::Peer(Box::new(msg), incarnation));
    }

    /// This node's incarnation, which its messages to peers must carry.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Proposes a membership change (on the leader: elsewhere it answers error 11
    /// naming the leader); `reply` gets its outcome once applied here.
    pub fn change_with(&self, change: Change, reply: Reply<Changed>) {
        self.submit(Msg::Change(change, reply));
    }

    /// Hands in a part of a snapshot transfer from the peer with Raft id `from`.
    pub fn step_part(&self, from: u64, part: transfer::Part) {
        self.submit(Msg::Part(from, Box::new(part)));
    }

    /// Proposes a command; `reply` gets its effect once committed and applied here.
    pub fn propose_with(&self, cmd: Command, reply: Reply<Effect>) {
        self.submit(Msg::Propose(cmd, reply));
    }

    /// A linearizable read.
    pub fn read_with(&self, query: ReadQuery, reply: Reply<ReadAnswer>) {
        self.submit(Msg::Read(query, reply));
    }

    /// Writes a snapshot of this node's state machine now (after one in flight, if
    /// that one was cut before this request); its `offset` is the client offset it
    /// covers up to.
    pub fn snapshot_with(&self, reply: Reply<SnapshotFile>) {
        self.submit(Msg::Admin(Box::new(Admin::Snapshot(reply))));
    }

    /// Compacts this node's log up to client offset `at`, behind a durable snapshot
    /// that covers it (written first if there is none). The log is not compacted past
    /// what a follower receiving a snapshot needs next.
    pub fn compact_with(&self, at: Offset, reply: Reply<Compaction>) {
        self.submit(Msg::Admin(Box::new(Admin::Compact(at, reply))));
    }

    /// Changes this node's log-management policy; answers the policy now in force.
    pub fn set_policy_with(&self, update: PolicyUpdate, reply: Reply<Policy>) {
        self.submit(Msg::Admin(Box::new(Admin::Policy(update, reply))));
    }

    /// Sets the size at which this node's active segment is sealed.
    pub fn set_segment_bytes_max_with(&self, bytes: u64, reply: Reply<u64>) {
        self.submit(Msg::Admin(Box::new(Admin::SegmentBytes(bytes, reply))));
    }

    /// This node's segments (offsets are log positions: Raft index minus one).
    pub fn segments_with(&self, reply: Reply<SegmentList>) {
        self.submit(Msg::Admin(Box::new(Admin::Segments(reply))));
    }

    /// Where the node stands.
    pub fn status_with(&self, reply: Reply<ClusterStatus>) {
        self.submit(Msg::Status(reply));
    }

    /// Stops the consensus actor and waits for it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tx.take();
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Waiter {
    Write(Reply<Effect>),
    Read(ReadQuery, Reply<ReadAnswer>),
}

struct Pending {
    waiter: Waiter,
    deadline: Instant,
}

/// A request waiting for a leader to be known.
struct Waiting {
    msg: Msg,
    until: Instant,
}

struct Consensus {
    peer: Peer<RaftLog>,
    transport: Arc<dyn Transport>,
    inbox: Receiver<Msg>,
    /// Sync jobs for the syncer thread, by Ready number.
    jobs: Option<Sender<(u64, SyncJob)>>,
    /// The syncer's reports: every Ready up to this number is durable (with the
    /// writes count of its job), or why a sync failed.
    synced: Receiver<std::result::Result<(u64, u64), String>>,
    syncer: Option<std::thread::JoinHandle<()>>,
    /// Readies written but not yet durable, with the messages that wait for that.
    unsynced: std::collections::VecDeque<(u64, Vec<Message>)>,
    pending: HashMap<u64, Pending>,
    waiting: Vec<Waiting>,
    poisoned: Option<String>,
    /// Snapshots and compaction.
    manager: Manager,
    /// The snapshot this node is receiving from its leader.
    download: Option<Download>,
    /// A snapshot received whole, waiting for a compaction in flight to end before
    /// raft-rs installs it.
    installing: Option<(Message, Box<image::Image>)>,
    /// On a leader: when each follower catching up from a snapshot was last heard of
    /// (offered one, or asked for chunks).
    serving: HashMap<u64, (Instant, u64)>,
    /// How long a leader waits for an ask before it offers a snapshot again: longer
    /// than a window takes at the configured send rate.
    offer_wait: Duration,
    /// `wal_snapshot` requests, with the index applied when each came: answered by the
    /// first snapshot cut at or after it.
    snapshot_waiters: Vec<(u64, Reply<SnapshotFile>)>,
    /// `wal_compact` requests: the first index to keep, in order.
    compact_waiters: std::collections::VecDeque<(u64, Reply<Compaction>)>,
    /// The client offset the newest durable snapshot covers up to.
    newest_client: Offset,
    roster: Roster,
    incarnation: u64,
    /// How long a request waits for a leader ([`Config::leader_wait`]).
    leader_wait: Duration,
    /// How long a request waits for its outcome ([`Config::request_timeout`]).
    request_timeout: Duration,
    /// Membership changes proposed here, by request number, with their deadlines.
    changes: HashMap<u64, (Reply<Changed>, Instant)>,
    /// On a leader: incarnations it proposed to record, and when.
    recording: HashMap<(u64, u64), Instant>,
    refused_messages: u64,
    warned_incarnation: Option<Instant>,
    /// How many of the state machine's names the roster has.
    names_shared: usize,
    /// When the leader last cut a snapshot because its offer predated a membership
    /// change.
    last_stale_cut: Option<Instant>,
    /// A received snapshot being installed: its index, and since when.
    install_timer: Option<(u64, Instant)>,
    /// The uploader, if the node copies its snapshots to a store.
    uploader: Option<(UploaderHandle, std::thread::JoinHandle<()>)>,
    /// How long a stop waits for the newest chain to reach the store.
    upload_shutdown_wait: Duration,
    /// Compaction waits for the store; the newest index uploaded, as last seen.
    compact_after_upload: bool,
    upload_seen: Option<u64>,
    /// Where a follower looks for an offered snapshot before asking the leader: the
    /// store, and this node's filesystem and directory.
    store_fetch: Option<(
        crate::store::StoreConfig,
        Arc<dyn FileSystem>,
        std::path::PathBuf,
    )>,
}

impl Consensus {
    fn run(mut self) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            crossbeam_channel::select! {
                recv(self.inbox) -> msg => match msg {
                    Ok(msg) => self.take(msg),
                    Err(_) => break,
                },
                recv(self.synced) -> r => {
                    if let Ok(r) = r {
                        self.on_synced(r);
                    }
                }
                recv(self.manager.reports) -> r => {
                    if let Ok(r) = r {
                        self.on_report(r);
                    }
                }
                recv(self.manager.feedback) -> f => {
                    if let Ok(f) = f {
                        self.on_feedback(f);
                    }
                }
                default(wait) => {}
            }
            for _ in 0..4096 {
                match self.inbox.try_recv() {
                    Ok(msg) => self.take(msg),
                    Err(_) => break,
                }
            }
            while let Ok(r) = self.synced.try_recv() {
                self.on_synced(r);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.peer.tick();
                next_tick = now + TICK;
                self.retry_waiting(now);
                self.expire(now);
                self.transfers_tick();
                self.membership_tick();
                self.upload_tick();
            }
            self.drive();
            if self.poisoned.is_none() && self.manager.due(self.peer.machine().applied) {
                let image = self.peer.image();
                self.manager.cut(image);
            }
        }
        for (_, p) in self.pending.drain() {
            fail(
                p.waiter,
                Error::Crashed("the node stopped before the outcome was known".into()),
            );
        }
        self.manager.stop();
        self.jobs.take();
        if let Some(syncer) = self.syncer.take() {
            let _ = syncer.join();
        }
        if let Some((uploader, join)) = self.uploader.take() {
            uploader.drain_at_shutdown(self.upload_shutdown_wait);
            uploader.stop();
            let _ = join.join();
        }
        log::debug!("consensus stopped");
    }

    /// The syncer made every Ready up to a number durable: raft-rs learns it, and the
    /// messages that waited for it leave.
    fn on_synced(&mut self, r: std::result::Result<(u64, u64), String>) {
        match r {
            Ok((number, writes)) => {
                if self.poisoned.is_some() {
                    return;
                }
                self.peer.store_mut().synced_through(writes);
                self.peer.persisted(number);
                while self.unsynced.front().is_some_and(|(n, _)| *n <= number) {
                    let (_, messages) = self.unsynced.pop_front().expect("front");
                    for m in messages {
                        self.transport.send(m);
                    }
                }
            }
            Err(e) => self.poison(format!("a sync of the Raft log failed: {e}")),
        }
    }

    /// The snapshotter or the compactor finished a job.
    fn on_report(&mut self, r: manage::Report) {
        match r {
            manage::Report::Snapshot(r) => {
                match self.manager.snapshot_done(&r) {
                    Ok(Some((id, compact))) => {
                        let index = id.index;
                        if let Ok(w) = &r {
                            self.peer.store_mut().offer(id, &w.voters, &w.learners);
                            self.upload(w);
                        }
                        if compact {
                            self.compact_behind(index);
                        }
                    }
                    Ok(None) => {}
                    Err(why) => self.poison(why),
                }
                match r {
                    Ok(w) => {
                        self.newest_client = w.next_offset;
                        let index = w.file.offset.get();
                        let file = SnapshotFile {
                            offset: w.next_offset,
                            ..w.file
                        };
                        let (done, waiting): (Vec<_>, Vec<_>) =
                            std::mem::take(&mut self.snapshot_waiters)
                                .into_iter()
                                .partition(|(asked_at, _)| *asked_at <= index);
                        self.snapshot_waiters = waiting;
                        for (_, reply) in done {
                            reply.send(Ok(file.clone()));
                        }
                    }
                    Err((why, _)) => {
                        for (_, reply) in self.snapshot_waiters.drain(..) {
                            reply.send(Err(Error::Unavailable(why.clone())));
                        }
                    }
                }
                self.serve_admin();
            }
            manage::Report::Compaction(r) => {
                self.manager.compaction_done(r);
                self.install_when_idle();
                self.serve_admin();
            }
            manage::Report::Received { part, durable } => self.received(&part, durable),
            manage::Report::Missing { file } => {
                // Offer nothing until a newer snapshot is durable: write one now.
                if self.peer.store_mut().withdraw(&file) && !self.manager.cutting() {
                    let image = self.peer.image();
                    self.manager.cut(image);
                }
            }
            manage::Report::Downloaded { id, outcome } => self.downloaded(id, outcome),
            manage::Report::Fetched { id, outcome } => self.fetched(id, outcome),
        }
    }

    /// The compactor's news: it is about to free, or freed, what lies below the new
    /// start (reads stopped there when the job was sent), or a sync failed.
    fn on_feedback(&mut self, f: Feedback) {
        match f {
            Feedback::Fence { first_offset, ack } => {
                self.peer.store_mut().fence(first_offset);
                let _ = ack.send(());
            }
            Feedback::Compacted {
                first_offset,
                removed,
                resized,
                bytes_freed: _,
            } => self
                .peer
                .store_mut()
                .compacted(first_offset, &removed, resized),
            Feedback::Poisoned(why) => self.poison(why),
            Feedback::SnapshotDurable { .. } => {}
        }
    }

    fn take(&mut self, msg: Msg) {
        if let Some(why) = &self.poisoned {
            let e = Error::Crashed(format!("the node stopped serving: {why}"));
            match msg {
                Msg::Peer(..) | Msg::Part(..) => {}
                Msg::Admin(a) => a.refuse(e),
                Msg::Change(_, reply) => reply.send(Err(e)),
                Msg::Propose(_, reply) => reply.send(Err(e)),
                Msg::Read(_, reply) => reply.send(Err(e)),
                Msg::Status(reply) => reply.send(Ok(self.status())),
            }
            return;
        }
        match msg {
            Msg::Admin(a) => self.admin(*a),
            Msg::Peer(m, incarnation) if !self.admit(&m, incarnation) => {}
            Msg::Peer(m, _) if m.msg_type == raft::eraftpb::MessageType::MsgSnapshot => {
                self.offered(*m);
            }
            Msg::Peer(m, _) => self.peer.step(*m),
            Msg::Part(from, part) => self.on_part(from, *part),
            Msg::Status(reply) => reply.send(Ok(self.status())),
            msg => {
                if let Err(msg) = self.start(msg) {
                    self.waiting.push(Waiting {
                        msg,
                        until: Instant::now() + self.leader_wait,
                    });
                }
            }
        }
    }

    /// Proposes or starts a read; gives the message back when no leader is known.
    fn start(&mut self, msg: Msg) -> std::result::Result<(), Msg> {
        let deadline = Instant::now() + self.request_timeout;
        match msg {
            Msg::Propose(cmd, reply) => match self.peer.propose(&cmd) {
                Ok(seq) => {
                    self.pending.insert(
                        seq,
                        Pending {
                            waiter: Waiter::Write(reply),
                            deadline,
                        },
                    );
                    Ok(())
                }
                Err(Refused::NoLeader) => Err(Msg::Propose(cmd, reply)),
                Err(Refused::Change(why) | Refused::NotYet(why)) => {
                    reply.send(Err(Error::Unavailable(why)));
                    Ok(())
                }
            },
            Msg::Read(query, reply) => match self.peer.read() {
                Ok(seq) => {
                    self.pending.insert(
                        seq,
                        Pending {
                            waiter: Waiter::Read(query, reply),
                            deadline,
                        },
                    );
                    Ok(())
                }
                Err(Refused::NoLeader) => Err(Msg::Read(query, reply)),
                Err(Refused::Change(why) | Refused::NotYet(why)) => {
                    reply.send(Err(Error::Unavailable(why)));
                    Ok(())
                }
            },
            Msg::Change(change, reply) => self.change(change, reply),
            other => {
                self.take(other);
                Ok(())
            }
        }
    }

    fn retry_waiting(&mut self, now: Instant) {
        for w in std::mem::take(&mut self.waiting) {
            let until = w.until;
            if let Err(msg) = self.start(w.msg) {
                if now >= until {
                    let e = Error::Unavailable(format!(
                        "no leader known after {} ms: nothing was done",
                        self.leader_wait.as_millis()
                    ));
                    match msg {
                        Msg::Propose(_, reply) => reply.send(Err(e)),
                        Msg::Read(_, reply) => reply.send(Err(e)),
                        Msg::Change(_, reply) => reply.send(Err(Error::Unavailable(format!(
                            "this leader did not commit an entry of its term within {} ms: \
                             the membership change was not proposed",
                            self.leader_wait.as_millis()
                        )))),
                        _ => {}
                    }
                } else {
                    self.waiting.push(Waiting { msg, until });
                }
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .changes
            .iter()
            .filter(|(_, (_, deadline))| now >= *deadline)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in late {
            let (reply, _) = self.changes.remove(&seq).expect("listed");
            self.peer.forget(seq);
            reply.send(Err(Error::Crashed(format!(
                "the membership change was not applied within {} ms: it may or may not \
                 happen (wal_status shows the members)",
                self.request_timeout.as_millis()
            ))));
        }
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            let p = self.pending.remove(&seq).expect("listed");
            self.peer.forget(seq);
            match p.waiter {
                Waiter::Write(reply) => reply.send(Err(Error::Crashed(format!(
                    "not committed within {} ms: the write may or may not happen",
                    self.request_timeout.as_millis()
                )))),
                Waiter::Read(_, reply) => reply.send(Err(Error::Unavailable(format!(
                    "the read was not confirmed by a quorum within {} ms: nothing was read",
                    self.request_timeout.as_millis()
                )))),
            }
        }
    }

    /// Runs every Ready; see the module documentation.
    fn drive(&mut self) {
        while self.poisoned.is_none() {
            let cycle = match self.peer.cycle() {
                Ok(c) => c,
                Err(e) => return self.poison(format!("a write to the Raft log failed: {e}")),
            };
            for m in cycle.send {
                self.transport.send(m);
            }
            let Some(persist) = cycle.persist else {
                break;
            };
            // The syncer makes it durable while this thread goes on; `on_synced` then
            // tells raft-rs and sends what waited.
            let job = self.peer.store_mut().take_sync_job();
            self.unsynced.push_back((persist.number, persist.then_send));
            let sent = self
                .jobs
                .as_ref()
                .is_some_and(|jobs| jobs.send((persist.number, job)).is_ok());
            if !sent {
                return self.poison("the syncer thread stopped".into());
            }
            for (seq, outcome) in cycle.answers {
                self.answer(seq, outcome);
            }
            for (seq, outcome) in self.peer.take_changed() {
                if let Some((reply, _)) = self.changes.remove(&seq) {
                    reply.send(Ok(outcome));
                }
            }
            self.share_names();
            self.install_timed();
        }
    }

    /// Publishes the node ids of members added (by the log or a snapshot) to the
    /// roster the router reads.
    fn share_names(&mut self) {
        let names = &self.peer.machine().names;
        // Names are only ever added (a Raft id is never given twice): the count says
        // whether there is anything new.
        if names.len() == self.names_shared {
            return;
        }
        self.names_shared = names.len();
        let mut roster = self.roster.write().expect("roster lock");
        for (id, name) in names.iter().filter(|(_, n)| !n.is_empty()) {
            if roster.get(id) != Some(name) {
                roster.insert(*id, name.clone());
            }
        }
    }

    /// Whether a peer message may be stepped: not when the group recorded another
    /// incarnation of its sender (a node that came back with an empty directory under
    /// a member's id: it forgot its vote and its log, and must join as a new member).
    /// A leader records the incarnation of each member it hears from first.
    fn admit(&mut self, m: &Message, incarnation: u64) -> bool {
        match self.peer.machine().incarnations.get(&m.from) {
            Some(&recorded) if recorded != incarnation => {
                self.refused_messages += 1;
                let now = Instant::now();
                if self
                    .warned_incarnation
                    .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10))
                {
                    self.warned_incarnation = Some(now);
                    let name = self
                        .roster
                        .read()
                        .expect("roster lock")
                        .get(&m.from)
                        .cloned();
                    log::error!(
                        "refusing messages from {} (Raft id {}): it is incarnation \
                         {incarnation:016x}, the group knows {recorded:016x}. That node \
                         lost its data directory; it cannot take part under its old id \
                         (it forgot its vote and its log). Remove it and add a new \
                         member in its place.",
                        name.as_deref().unwrap_or("?"),
                        m.from
                    );
                }
                false
            }
            Some(_) => true,
            None => {
                self.record(m.from, incarnation);
                true
            }
        }
    }

    /// On a leader, proposes to record the incarnation of member `id` (not again
    /// within [`RECORD_AGAIN`]).
    fn record(&mut self, id: u64, incarnation: u64) {
        if incarnation == 0
            || self.peer.role().0 != StateRole::Leader
            || self.peer.machine().incarnations.contains_key(&id)
        {
            return;
        }
        let now = Instant::now();
        if self
            .recording
            .get(&(id, incarnation))
            .is_some_and(|at| now.duration_since(*at) < RECORD_AGAIN)
        {
            return;
        }
        self.recording
            .retain(|_, at| now.duration_since(*at) < RECORD_AGAIN);
        if self
            .peer
            .propose(&Command::Incarnation { id, incarnation })
            .is_ok()
        {
            self.recording.insert((id, incarnation), now);
        }
    }

    /// Each tick: a leader records its own incarnation, and cuts a snapshot when the
    /// one it offers predates a membership change (a member added since needs one
    /// that names it).
    fn membership_tick(&mut self) {
        if self.peer.role().0 != StateRole::Leader {
            return;
        }
        self.record(self.peer.id(), self.incarnation);
        let now = Instant::now();
        if self.peer.store().offer_stale()
            && !self.manager.cutting()
            && self
                .last_stale_cut
                .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            self.last_stale_cut = Some(now);
            let image = self.peer.image();
            self.manager.cut(image);
        }
    }

    /// Offers a durable snapshot to the uploader, if the node has a store.
    fn upload(&self, w: &manage::Written) {
        let Some((uploader, _)) = &self.uploader else {
            return;
        };
        let roster = self.roster.read().expect("roster lock");
        let names = |ids: &[u64]| -> Vec<String> {
            ids.iter()
                .map(|id| roster.get(id).cloned().unwrap_or_else(|| format!("#{id}")))
                .collect()
        };
        uploader.offer(Upload {
            index: w.file.offset.get(),
            term: w.term,
            voters: names(&w.voters),
            learners: names(&w.learners),
            files: w.chain.clone(),
        });
    }

    /// With compaction waiting for the store: once a newer snapshot is uploaded, the
    /// policy's compaction behind the newest snapshot is due again.
    fn upload_tick(&mut self) {
        let Some((uploader, _)) = self.uploader.as_ref().filter(|_| self.compact_after_upload)
        else {
            return;
        };
        let uploaded = uploader.uploaded_index();
        if uploaded <= self.upload_seen {
            return;
        }
        self.upload_seen = uploaded;
        let snapshot = self
            .manager
            .status
            .snapshot
            .as_ref()
            .map(|s| s.offset.get());
        if let Some(snapshot) = snapshot
            && self.manager.policy().auto_compact
            && !self.manager.compacting()
        {
            self.compact_behind(snapshot);
        }
    }

    /// Proposes a membership change, on the leader; gives the message back when the
    /// leader has not yet committed an entry of its term (it waits as a request waits
    /// for a leader).
    fn change(&mut self, change: Change, reply: Reply<Changed>) -> std::result::Result<(), Msg> {
        match self.peer.propose_change(&change) {
            Ok(seq) => {
                self.changes
                    .insert(seq, (reply, Instant::now() + self.request_timeout));
            }
            Err(Refused::NotYet(_)) => return Err(Msg::Change(change, reply)),
            Err(Refused::NoLeader) => {
                let leader = self.peer.role().2;
                let name = self
                    .roster
                    .read()
                    .expect("roster lock")
                    .get(&leader)
                    .cloned();
                reply.send(Err(Error::Unavailable(match name {
                    Some(n) => format!(
                        "this node does not lead: send membership changes to the leader, {n}"
                    ),
                    None => "this node does not lead, and no leader is known: try again".into(),
                })));
            }
            Err(Refused::Change(why)) => reply.send(Err(Error::PreconditionFailed(why))),
        }
        Ok(())
    }

    fn answer(&mut self, seq: u64, outcome: Outcome) {
        let Some(p) = self.pending.remove(&seq) else {
            return; // timed out already
        };
        match (p.waiter, outcome) {
            (Waiter::Write(reply), Outcome::Applied(effect)) => reply.send(Ok(effect)),
            (Waiter::Read(query, reply), Outcome::Readable) => {
                reply.send(self.read(&query));
            }
            (Waiter::Write(reply), Outcome::Readable) => {
                reply.send(Err(Error::Crashed("a write answered as a read".into())));
            }
            (Waiter::Read(_, reply), Outcome::Applied(_)) => {
                reply.send(Err(Error::Crashed("a read answered as a write".into())));
            }
        }
    }

    fn read(&self, query: &ReadQuery) -> Result<ReadAnswer> {
        let m = self.peer.machine();
        Ok(match query {
            ReadQuery::Key(k) => ReadAnswer::Value(m.kv.get(k).map(|v| v.to_string())),
            ReadQuery::Info => ReadAnswer::Info(Info {
                entries: m.next_offset.get(),
                total_bytes: self.peer.store().total_bytes(),
                fsynced: self.peer.store().synced(),
            }),
            ReadQuery::Entry(offset) => {
                if m.runs.first().is_some_and(|&(o, _)| offset.get() < o) {
                    return Err(Error::NotFound(format!(
                        "offset {offset} was compacted away (the log starts at Raft index {})",
                        self.peer.store().first_index()
                    )));
                }
                let Some(index) = m.index_of(*offset) else {
                    return Err(Error::NotFound(format!(
                        "offset {offset} is past the end of the log (next offset is {})",
                        m.next_offset
                    )));
                };
                if index < self.peer.store().first_index() {
                    return Err(Error::NotFound(format!(
                        "offset {offset} was compacted away (its Raft index {index} is \
                         before the log's first, {})",
                        self.peer.store().first_index()
                    )));
                }
                let entries = raft::Storage::entries(
                    self.peer.store(),
                    index,
                    index + 1,
                    None,
                    raft::GetEntriesContext::empty(false),
                )
                .map_err(|e| Error::Unavailable(format!("reading entry {index}: {e}")))?;
                let (_, cmd) = crate::consensus::command::decode(&entries[0].data)
                    .map_err(|why| Error::Unavailable(format!("entry {index}: {why}")))?;
                ReadAnswer::Entry(ReadEntry {
                    payload: crate::consensus::Machine::payload_of(&cmd),
                    checksum_valid: true,
                })
            }
        })
    }

    fn status(&self) -> ClusterStatus {
        let (role, term, leader, commit) = self.peer.role();
        let (voters, learners) = self.peer.members();
        let m = self.peer.machine();
        ClusterStatus {
            role: match role {
                StateRole::Leader => "leader",
                StateRole::Follower => "follower",
                StateRole::Candidate => "candidate",
                StateRole::PreCandidate => "pre_candidate",
            },
            term,
            leader,
            commit,
            applied: m.applied,
            next_offset: m.next_offset,
            match_index: self.peer.progress(),
            state_digest: m.digest(),
            voters,
            learners,
            id: self.peer.id(),
            incarnation: self.incarnation,
            refused_messages: self.refused_messages,
            last_index: self.peer.store().last_index(),
            first_index: self.peer.store().first_index(),
            management: self.manager.status.clone(),
            poisoned: self.poisoned.clone(),
            store: self.uploader.as_ref().map(|(u, _)| u.status()),
        }
    }

    fn poison(&mut self, why: String) {
        log::error!("{why}: the node stops serving (fail-stop)");
        for (_, p) in self.pending.drain() {
            fail(
                p.waiter,
                Error::Crashed(format!("{why}: the outcome is unknown")),
            );
        }
        let e = Error::Crashed(format!("the node stopped serving: {why}"));
        for (_, reply) in self.snapshot_waiters.drain(..) {
            reply.send(Err(e.clone()));
        }
        for (_, reply) in self.compact_waiters.drain(..) {
            reply.send(Err(e.clone()));
        }
        for (_, (reply, _)) in self.changes.drain() {
            reply.send(Err(Error::Crashed(format!(
                "{why}: the outcome is unknown"
            ))));
        }
        self.poisoned = Some(why);
    }
}

/// A new member starting on an empty directory with a snapshot store: the newest
/// group snapshot in the store that names one of the members it knows (any, when it
/// knows none: an embedding program's store holds one group), downloaded and
/// verified into the directory, so that it loads it and catches up from the leader's
/// log instead of asking for the whole snapshot. Anything wrong (the store down, no
/// such chain, a damaged object) is logged, and the member asks the leader as usual.
fn bootstrap_from_store(
    fs: &dyn FileSystem,
    dir: &std::path::Path,
    config: &crate::store::StoreConfig,
    roster: &Roster,
) {
    let present = fs.list(dir).unwrap_or_default();
    if present.iter().any(|n| {
        n == crate::core::layout::RAFT_STATE
            || crate::core::layout::parse_raft_snapshot(n).is_some()
    }) {
        return;
    }
    let known: Vec<String> = roster
        .read()
        .expect("roster lock")
        .values()
        .cloned()
        .collect();
    let started = Instant::now();
    let outcome = (|| {
        let store = crate::store::open(config)?;
        let (all, _) = crate::store::manifests(&*store).map_err(|e| e.to_string())?;
        let ours = all.iter().filter(|m| {
            m.files
                .iter()
                .all(|f| crate::core::layout::parse_raft_snapshot(&f.name).is_some())
                && (known.is_empty() || m.voters.iter().any(|v| known.contains(v)))
        });
        let mut why = Vec::new();
        for m in ours {
            match crate::store::fetch_chain(&*store, fs, dir, m).and_then(|bytes| {
                crate::consensus::durable::mark_install(fs, dir, m.index, m.term)
                    .map_err(|e| format!("cannot mark the install: {e}"))?;
                Ok(bytes)
            }) {
                Ok(bytes) => return Ok((m.clone(), bytes, store.url())),
                Err(e) => {
                    log::warn!(
                        "bootstrap: the snapshot at {} does not restore: {e}",
                        m.index
                    );
                    why.push(e);
                }
            }
        }
        Err(if why.is_empty() {
            "no snapshot of this group in the store".to_string()
        } else {
            why.join("; ")
        })
    })();
    match outcome {
        Ok((m, bytes, url)) => log::info!(
            "bootstrap: loaded the snapshot at index {} (uploaded by {}, {bytes} bytes) from {url} \
             in {} ms; the rest comes from the leader's log",
            m.index,
            m.node,
            started.elapsed().as_millis()
        ),
        Err(why) => log::warn!(
            "bootstrap from the snapshot store failed ({why}); asking the leader for a snapshot"
        ),
    }
}

fn fail(waiter: Waiter, e: Error) {
    match waiter {
        Waiter::Write(reply) => reply.send(Err(e)),
        Waiter::Read(_, reply) => reply.send(Err(e)),
    }
}

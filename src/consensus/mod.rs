//! Consensus: a Raft group over raft-rs, driven without I/O.
//!
//! [`Peer`] owns raft-rs's `RawNode` and the replicated state machine ([`Machine`]).
//! It does no I/O and reads no clock: its driver (the consensus actor in a node, or the
//! deterministic simulation in [`sim`]) feeds it ticks, peer messages and client
//! requests, and carries out the [`Cycle`]s it returns:
//!
//! 1. `cycle.send` may leave at once (a leader's appends, sent while it persists the
//!    same entries: Raft thesis 10.2.1);
//! 2. `cycle.persist` holds the entries and hard state the peer has already written
//!    to its [`LogStore`] (readable, not yet durable). The driver makes them durable
//!    (one group commit may cover many cycles), then sends `persist.then_send` (votes
//!    and a follower's acknowledgements, which promise durability) and calls
//!    [`Peer::persisted`] with the cycle's number, in order;
//! 3. `cycle.answers` are the outcomes of this node's own requests: a write once its
//!    entry is committed and applied here, a read once the state machine has applied
//!    the read index a quorum confirmed (ReadIndex, so no node answers a read because
//!    it only believes it leads).
//!
//! Architecture Invariant: an entry changes the state machine only once committed
//! and persisted locally (raft-rs hands out committed entries up to its persisted
//! index), and a message that depends on the durability of this node's log or vote
//! leaves only after [`Peer::persisted`] covered it.

pub mod command;
mod membership;
#[cfg(test)]
mod rules;
pub mod sim;
pub mod store;

use raft::eraftpb::{Entry, EntryType, HardState, Message, MessageType};
use raft::{RawNode, ReadOnlyOption, StateRole};

pub use command::{Command, Effect, Image, Machine, Ticket};
pub use membership::{Change, Changed, PROMOTE_LAG, members_of, name_founders};
pub use store::{LogStore, MemLog};

/// The top bit of a read's request number: reads and proposals are numbered apart.
pub const READ_BIT: u64 = 1 << 63;

/// Timing and identity of a peer.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// This peer's Raft id (1-based position in the group's node list).
    pub id: u64,
    /// Ticks without a leader before a follower campaigns (randomized up to twice).
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Which run of this node: different at every start (the entries of an earlier
    /// run, applied again, must not answer this run's requests).
    pub boot: u64,
}

/// Work the driver carries out after a step; see the module documentation.
#[derive(Debug, Default)]
pub struct Cycle {
    /// Messages that may leave now.
    pub send: Vec<Message>,
    /// What must become durable, and what leaves after.
    pub persist: Option<Persist>,
    /// Outcomes of this node's requests, by request number.
    pub answers: Vec<(u64, Outcome)>,
}

/// Entries and hard state written to the store but not yet durable.
#[derive(Debug, Default)]
pub struct Persist {
    /// The cycle's number: report it to [`Peer::persisted`] once durable.
    pub number: u64,
    /// Entries written (a conflicting suffix was truncated first).
    pub entries: Vec<Entry>,
    /// The hard state written, if it changed.
    pub hard_state: Option<HardState>,
    /// Messages that may leave only once this is durable.
    pub then_send: Vec<Message>,
}

/// The outcome of a request of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A command was committed and applied here.
    Applied(Effect),
    /// A read may be served now: the state machine has applied everything committed
    /// before the read began.
    Readable,
}

/// Why a request was refused before anything happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No leader is known (or proposals are being dropped during a transfer).
    NoLeader,
    /// A membership change this node cannot propose: why.
    Change(String),
    /// A membership change this leader cannot propose yet (it has not committed an
    /// entry of its term): asking again in a moment will do.
    NotYet(String),
}

/// A Raft peer with its state machine. See the module documentation.
pub struct Peer<S: LogStore> {
    node: RawNode<S>,
    boot: u64,
    next_read: u64,
    machine: Machine,
    next_seq: u64,
    /// Reads asked of the leader and not yet confirmed, with the ticks since asked: a
    /// leader drops a read it gets before it has committed an entry of its term, and
    /// the network may drop one, so unconfirmed reads are asked again.
    asked: std::collections::BTreeMap<u64, usize>,
    /// Reads whose index a quorum confirmed, waiting for the state machine.
    reads: Vec<(u64, u64)>,
    /// Proposals not yet applied, with the ticks since last proposed: a proposal a
    /// follower forwards can be lost on the way, so it is proposed again (the state
    /// machine applies a ticket once).
    proposals: std::collections::BTreeMap<u64, (Vec<u8>, usize)>,
    /// Membership changes not yet applied, by request number.
    changes: std::collections::BTreeSet<u64>,
    /// Outcomes of membership changes applied, by request number, for the driver.
    changed: Vec<(u64, Changed)>,
    /// Messages this layer answers itself (a new member asking for a snapshot).
    replies: Vec<Message>,
    /// Heartbeats dropped because they showed this node lost acknowledged entries.
    lost_data_warnings: u64,
    /// Ticks so far, and when this node (in no configuration yet) last asked for a
    /// snapshot.
    ticks: u64,
    /// The leader known at the last tick: when another takes over, the proposals and
    /// reads that wait are asked of the new one at once (the old one may have dropped
    /// them while handing over).
    leader_seen: u64,
    asked_snapshot_at: Option<u64>,
    /// The state machine of the snapshot the driver stepped in last, until raft-rs
    /// installs it (or ignores it: it was not newer than what this node committed).
    incoming: Option<Image>,
    /// A snapshot installed by a cycle: its index, once that cycle is durable.
    installed: Option<(u64, u64)>,
}

impl<S: LogStore> Peer<S> {
    /// A peer over `store`, which holds what it had durably (nothing, for a new group:
    /// its configuration names the voters).
    ///
    /// # Errors
    /// raft-rs refuses the configuration or the store's initial state.
    pub fn new(config: &PeerConfig, store: S) -> raft::Result<Peer<S>> {
        Self::resume(config, store, Machine::default())
    }

    /// A peer whose state machine starts as `machine` (loaded from a snapshot at
    /// `machine.applied`, which the store's log continues), over `store`.
    ///
    /// # Errors
    /// As [`Peer::new`].
    pub fn resume(config: &PeerConfig, store: S, machine: Machine) -> raft::Result<Peer<S>> {
        let cfg = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            pre_vote: true,
            check_quorum: true,
            read_only_option: ReadOnlyOption::Safe,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            // Entries after the snapshot (or from the start) are applied again after
            // a restart: the state machine is rebuilt from the snapshot and the log.
            applied: machine.applied,
            ..raft::Config::default()
        };
        let logger = slog::Logger::root(ToLog(config.id), slog::o!());
        Ok(Peer {
            node: RawNode::new(&cfg, store, &logger)?,
            boot: config.boot,
            next_read: 1,
            machine,
            next_seq: 1,
            asked: std::collections::BTreeMap::new(),
            reads: Vec::new(),
            proposals: std::collections::BTreeMap::new(),
            changes: std::collections::BTreeSet::new(),
            changed: Vec::new(),
            replies: Vec::new(),
            lost_data_warnings: 0,
            ticks: 0,
            leader_seen: 0,
            asked_snapshot_at: None,
            incoming: None,
            installed: None,
        })
    }

    /// The state machine (as of the last applied entry).
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// A snapshot's content: the state machine as applied so far, with the term of
    /// its last entry and the voters. O(1) in the state's size (the map is shared).
    pub fn image(&self) -> Image {
        let index = self.machine.applied;
        let term = self.node.raft.raft_log.term(index).unwrap_or_else(|e| {
            panic!("the term of applied entry {index} is unknown: {e}");
        });
        let (voters, learners) = self.members();
        Image {
            term,
            voters,
            learners,
            machine: self.machine.clone(),
        }
    }

    /// The voters and learners of the configuration applied, sorted.
    pub fn members(&self) -> (Vec<u64>, Vec<u64>) {
        // raft-rs keeps them in hash sets: in no particular order.
        members_of(&self.node.raft.prs().conf().to_conf_state())
    }

    /// Whether this node is in no configuration yet: a new member that has not yet
    /// installed its first snapshot (which brings the configuration).
    pub fn unconfigured(&self) -> bool {
        // On every append a follower takes in: no allocation.
        let conf = self.node.raft.prs().conf();
        conf.voters().ids().is_empty() && conf.learners().is_empty()
    }

    /// On a leader, each follower's match index and whether it was heard from
    /// recently (check-quorum's measure); empty elsewhere.
    pub fn followers(&self) -> Vec<(u64, u64, bool)> {
        let r = &self.node.raft;
        if r.state != StateRole::Leader {
            return Vec::new();
        }
        r.prs()
            .iter()
            .filter(|(id, _)| **id != r.id)
            .map(|(id, pr)| (*id, pr.matched, pr.recent_active))
            .collect()
    }

    /// Forgets what the state machine knows of entries before `index`, which the log
    /// no longer holds (where their client offsets sit).
    pub fn forget_before(&mut self, index: u64) {
        self.machine.forget_before(index);
    }

    /// On a leader, the followers it is sending a snapshot to (raft-rs waits for them
    /// to install it before it sends them entries again), with that snapshot's index.
    pub fn followers_in_snapshot(&self) -> Vec<(u64, u64)> {
        let r = &self.node.raft;
        if r.state != StateRole::Leader {
            return Vec::new();
        }
        r.prs()
            .iter()
            .filter(|(_, pr)| pr.state == raft::ProgressState::Snapshot)
            .map(|(id, pr)| (*id, pr.pending_snapshot))
            .collect()
    }

    /// Tells raft-rs that the snapshot sent to `id` did not arrive: it offers one
    /// again when it next sends to that follower.
    pub fn snapshot_failed(&mut self, id: u64) {
        self.node.report_snapshot(id, raft::SnapshotStatus::Failure);
    }

    /// The store.
    pub fn store(&self) -> &S {
        self.node.store()
    }

    /// The store, to sync it.
    /// On the leader: transfers leadership to `to` (raft-rs catches it up, then tells
    /// it to campaign at once).
    pub fn transfer_leader(&mut self, to: u64) {
        self.node.transfer_leader(to);
    }

    /// Tells raft-rs that messages to `id` were lost on the way (a full queue): it
    /// stops streaming appends to it and probes it instead.
    pub fn unreachable(&mut self, id: u64) {
        self.node.report_unreachable(id);
    }

    pub fn store_mut(&mut self) -> &mut S {
        self.node.mut_store()
    }

    /// On a leader, each voter's match index (itself included), by Raft id.
    pub fn progress(&self) -> Vec<(u64, u64)> {
        if self.node.raft.state != StateRole::Leader {
            return Vec::new();
        }
        let mut out: Vec<(u64, u64)> = self
            .node
            .raft
            .prs()
            .iter()
            .map(|(id, pr)| (*id, pr.matched))
            .collect();
        out.sort();
        out
    }

    /// This peer's Raft id.
    pub fn id(&self) -> u64 {
        self.node.raft.id
    }

    /// Role, term, known leader (0: none) and commit index.
    pub fn role(&self) -> (StateRole, u64, u64, u64) {
        let r = &self.node.raft;
        (r.state, r.term, r.leader_id, r.raft_log.committed)
    }

    /// One clock tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.node.tick();
        let again = 2 * self.node.raft.heartbeat_timeout();
        let propose_again = 4 * self.node.raft.heartbeat_timeout();
        let leader = self.node.raft.leader_id;
        if leader != self.leader_seen {
            self.leader_seen = leader;
            if leader != 0 {
                // A new leader: what waits goes to it now (a copy of a proposal
                // changes nothing: the state machine applies each ticket once).
                self.asked.values_mut().for_each(|t| *t = again);
                self.proposals
                    .values_mut()
                    .for_each(|(_, t)| *t = propose_again);
            }
        }
        for (seq, ticks) in &mut self.asked {
            *ticks += 1;
            if *ticks >= again {
                *ticks = 0;
                self.node.read_index(seq.to_le_bytes().to_vec());
            }
        }
        for (data, ticks) in self.proposals.values_mut() {
            *ticks += 1;
            if *ticks >= propose_again {
                *ticks = 0;
                // No leader now: the next round tries again.
                let _ = self.node.propose(Vec::new(), data.clone());
            }
        }
    }

    /// Takes in a message from a peer. A message raft-rs refuses (stale, from an
    /// unknown peer) is dropped with a debug log.
    ///
    /// A node in no configuration yet (a new member) takes nothing from a leader's
    /// log: the log does not hold the configuration the group started with. It
    /// answers an append by asking for a snapshot, which brings it.
    pub fn step(&mut self, msg: Message) {
        if msg.get_msg_type() == MessageType::MsgAppendResponse
            && msg.reject
            && msg.request_snapshot != raft::INVALID_INDEX
            && self.node.raft.state == StateRole::Leader
            && self
                .node
                .raft
                .prs()
                .get(msg.from)
                .is_some_and(|p| p.matched > 0)
        {
            // A new member's ask for its first snapshot, overtaken by the snapshot it
            // asked for: raft-rs would send it one again, and again.
            return;
        }
        if msg.get_msg_type() == MessageType::MsgAppend && self.unconfigured() {
            // Once per heartbeat interval at most: the leader may append many times
            // while the snapshot travels.
            let again = self.node.raft.heartbeat_timeout() as u64;
            if self
                .asked_snapshot_at
                .is_some_and(|at| self.ticks < at + again)
            {
                return;
            }
            self.asked_snapshot_at = Some(self.ticks);
            let mut ask = Message::default();
            ask.set_msg_type(MessageType::MsgAppendResponse);
            ask.to = msg.from;
            ask.from = self.id();
            ask.term = msg.term;
            ask.index = msg.index;
            ask.reject = true;
            ask.reject_hint = 0;
            ask.request_snapshot = msg.index.max(1);
            self.replies.push(ask);
            return;
        }
        if msg.get_msg_type() == MessageType::MsgHeartbeat
            && msg.commit > self.node.raft.raft_log.last_index()
        {
            // A leader sends a follower a commit index no higher than what that
            // follower acknowledged: this node lost entries it had acknowledged (its
            // directory was lost or replaced). raft-rs would stop the process here;
            // the node stays, refused by its peers, until it is replaced.
            self.lost_data_warnings += 1;
            if self.lost_data_warnings % 100 != 1 {
                return;
            }
            log::error!(
                "raft {}: the leader says entries up to {} are held here, but this log ends \
                 at {}: this node lost its data; it must be removed and replaced by a new \
                 member",
                self.id(),
                msg.commit,
                self.node.raft.raft_log.last_index()
            );
            return;
        }
        // A member that asked for a snapshot acknowledges holding what it asked for:
        // raft-rs forgets the ask only when told the snapshot was delivered, and would
        // send the member the snapshot again while taking in this acknowledgement.
        if msg.get_msg_type() == MessageType::MsgAppendResponse
            && !msg.reject
            && self.node.raft.state == StateRole::Leader
            && let Some(pr) = self.node.raft.mut_prs().get_mut(msg.from)
            && pr.pending_request_snapshot != raft::INVALID_INDEX
            && msg.index >= pr.pending_request_snapshot
        {
            pr.pending_request_snapshot = raft::INVALID_INDEX;
        }
        if let Err(e) = self.node.step(msg) {
            log::debug!("raft {}: message dropped: {e}", self.id());
        }
    }

    /// Proposes a command; returns its request number. The outcome arrives in a later
    /// [`Cycle`] once the entry is applied here, or never (a leader lost the entry
    /// before it committed: the driver's timeout makes it unknown). Until then it is
    /// proposed again every few heartbeats; the state machine applies it once.
    ///
    /// # Errors
    /// [`Refused::NoLeader`] when no leader is known: nothing was proposed.
    pub fn propose(&mut self, cmd: &Command) -> Result<u64, Refused> {
        let seq = self.next_seq;
        let data = command::encode(
            Ticket {
                node: self.id(),
                boot: self.boot,
                seq,
            },
            cmd,
        );
        match self.node.propose(Vec::new(), data.clone()) {
            Ok(()) => {
                self.next_seq += 1;
                self.proposals.insert(seq, (data, 0));
                Ok(seq)
            }
            Err(raft::Error::ProposalDropped) => Err(Refused::NoLeader),
            Err(e) => {
                log::warn!("raft {}: proposal refused: {e}", self.id());
                Err(Refused::NoLeader)
            }
        }
    }

    /// Starts a linearizable read; returns its request number. [`Outcome::Readable`]
    /// arrives once a quorum confirmed the leader's commit index and this node has
    /// applied up to it, or never (the leader was lost: the driver times out).
    ///
    /// # Errors
    /// [`Refused::NoLeader`] when no leader is known.
    pub fn read(&mut self) -> Result<u64, Refused> {
        if self.node.raft.leader_id == raft::INVALID_ID {
            return Err(Refused::NoLeader);
        }
        // Reads are numbered apart from proposals (top bit set), so that the numbers
        // of a run's proposals are dense, as the state machine's sessions expect.
        let seq = READ_BIT | self.next_read;
        self.next_read += 1;
        self.asked.insert(seq, 0);
        self.node.read_index(seq.to_le_bytes().to_vec());
        Ok(seq)
    }

    /// Takes in a leader's snapshot message (`MsgSnapshot`) whose state machine the
    /// driver has in full, verified and durable in the store's directory (`image`).
    /// raft-rs installs it in a later cycle, or ignores it if this node already
    /// committed past it.
    pub fn step_snapshot(&mut self, msg: Message, image: Image) {
        let meta = msg.get_snapshot().get_metadata();
        assert_eq!(
            (meta.index, meta.term),
            (image.index(), image.term),
            "a snapshot message stepped with another snapshot's state"
        );
        self.incoming = Some(image);
        self.step(msg);
    }

    /// Forgets a request the driver gave up on (a read it stopped waiting for).
    pub fn forget(&mut self, seq: u64) {
        self.changes.remove(&seq);
        self.asked.remove(&seq);
        self.proposals.remove(&seq);
        self.reads.retain(|&(s, _)| s != seq);
    }

    /// Reports that every cycle up to `number` is durable.
    pub fn persisted(&mut self, number: u64) {
        self.node.on_persist_ready(number);
        if let Some((cycle, index)) = self.installed
            && cycle <= number
        {
            self.installed = None;
            self.node.advance_apply_to(index);
        }
    }

    /// Installs the snapshot of a Ready: the store's log replaced, the state machine
    /// taken from the image stepped in with it.
    fn install(&mut self, number: u64, snap: &raft::eraftpb::Snapshot) -> std::io::Result<()> {
        let meta = snap.get_metadata();
        let image = self
            .incoming
            .take()
            .filter(|i| i.index() == meta.index && i.term == meta.term)
            .unwrap_or_else(|| {
                panic!(
                    "raft installs the snapshot at {} without its state machine",
                    meta.index
                )
            });
        self.node.mut_store().install(meta.index, meta.term)?;
        self.node
            .mut_store()
            .configured(meta.get_conf_state(), meta.index);
        log::info!(
            "raft {}: installed the snapshot at index {} (term {}, {} keys)",
            self.id(),
            meta.index,
            meta.term,
            image.machine.kv.map.len()
        );
        self.machine = image.machine;
        self.installed = Some((number, meta.index));
        Ok(())
    }

    /// Takes the work raft-rs has ready, writes entries and hard state to the store,
    /// applies committed entries, and returns what the driver must do (an empty cycle,
    /// `persist` `None`, when nothing was ready).
    ///
    /// # Errors
    /// A write to the store failed: the peer must not be used again (fail-stop).
    pub fn cycle(&mut self) -> std::io::Result<Cycle> {
        let mut out = Cycle {
            send: std::mem::take(&mut self.replies),
            ..Cycle::default()
        };
        if !self.node.has_ready() {
            return Ok(out);
        }
        let mut rd = self.node.ready();
        out.send.extend(rd.take_messages());
        for rs in rd.take_read_states() {
            if let Ok(seq) = <[u8; 8]>::try_from(&rs.request_ctx[..])
                && self.asked.remove(&u64::from_le_bytes(seq)).is_some()
            {
                self.reads.push((u64::from_le_bytes(seq), rs.index));
            }
        }
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.install(rd.number(), &snap)?;
        }
        let committed = rd.take_committed_entries();
        let entries = rd.take_entries();
        let hard_state = rd.hs().cloned();
        let store = self.node.mut_store();
        store.write_entries(&entries)?;
        if let Some(hs) = &hard_state {
            store.write_hard_state(hs)?;
        }
        out.persist = Some(Persist {
            number: rd.number(),
            entries,
            hard_state,
            then_send: rd.take_persisted_messages(),
        });
        self.node.advance_append_async(rd);
        self.apply(&committed, &mut out.answers);
        Ok(out)
    }

    fn apply(&mut self, committed: &[Entry], answers: &mut Vec<(u64, Outcome)>) {
        for e in committed {
            if e.entry_type == EntryType::EntryConfChange {
                self.apply_change(e);
                continue;
            }
            if e.entry_type != EntryType::EntryNormal || e.data.is_empty() {
                // A new leader's empty entry.
                self.machine.skip(e.index);
                continue;
            }
            match command::decode(&e.data) {
                Ok((ticket, cmd)) => {
                    let effect = self.machine.apply(e.index, ticket, &cmd);
                    if ticket.node == self.id() && ticket.boot == self.boot {
                        self.proposals.remove(&ticket.seq);
                        if let Some(effect) = effect {
                            answers.push((ticket.seq, Outcome::Applied(effect)));
                        }
                    }
                }
                Err(why) => {
                    // Every replica decodes the same bytes the same way: skipping
                    // keeps them equal. It can only come from a newer version.
                    log::error!(
                        "raft {}: entry {} not understood: {why}",
                        self.id(),
                        e.index
                    );
                    self.machine.skip(e.index);
                }
            }
        }
        if let Some(last) = committed.last() {
            self.node.advance_apply_to(last.index);
        }
        let applied = self.machine.applied;
        self.reads.retain(|&(seq, index)| {
            if index <= applied {
                answers.push((seq, Outcome::Readable));
                false
            } else {
                true
            }
        });
    }
}

/// raft-rs's log lines, into this crate's logger (target `raft`).
struct ToLog(u64);

impl slog::Drain for ToLog {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let level = match record.level() {
            slog::Level::Critical | slog::Level::Error => log::Level::Error,
            slog::Level::Warning => log::Level::Warn,
            slog::Level::Info => log::Level::Info,
            slog::Level::Debug => log::Level::Debug,
            slog::Level::Trace => log::Level::Trace,
        };
        log::log!(target: "raft", level, "raft {}: {}", self.0, record.msg());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs every Ready of a peer whose writes are durable at once; the messages it
    /// would send.
    fn settle(p: &mut Peer<MemLog>) -> Vec<Message> {
        let mut out = Vec::new();
        loop {
            let c = p.cycle().unwrap();
            out.extend(c.send);
            let Some(persist) = c.persist else {
                return out;
            };
            out.extend(persist.then_send);
            p.persisted(persist.number);
        }
    }

    /// Learner 2's answer to leader 1's append at `index`.
    fn from_learner(term: u64, index: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppendResponse);
        (m.from, m.to, m.term, m.index) = (2, 1, term, index);
        m
    }

    /// A leader of one with a learner (Raft id 2) added, and the learner's
    /// acknowledgement of everything in the log.
    fn leader_with_a_caught_up_learner() -> Peer<MemLog> {
        let config = PeerConfig {
            id: 1,
            election_ticks: 10,
            heartbeat_ticks: 2,
            boot: 1,
        };
        let mut p = Peer::new(&config, MemLog::new(&[1])).unwrap();
        while p.role().0 != StateRole::Leader {
            p.tick();
            settle(&mut p);
        }
        let seq = p.propose_change(&Change::AddLearner("n2".into())).unwrap();
        settle(&mut p);
        assert!(matches!(p.take_changed()[..], [(s, Changed::Done { id: 2, .. })] if s == seq));
        let (_, term, _, commit) = p.role();
        p.step(from_learner(term, commit));
        settle(&mut p);
        assert_eq!(p.node.raft.prs().get(2).unwrap().matched, commit);
        p
    }

    #[test]
    fn a_new_members_ask_for_a_snapshot_overtaken_by_its_snapshot_is_dropped() {
        let mut p = leader_with_a_caught_up_learner();
        // As after the member's acknowledgement of the snapshot itself: probing from
        // there (in the replicating state raft-rs would drop this ask on its own).
        p.node.raft.mut_prs().get_mut(2).unwrap().become_probe();
        let (_, term, _, _) = p.role();
        let mut stale = from_learner(term, 1);
        stale.reject = true;
        stale.request_snapshot = 1;
        p.step(stale);
        let sent = settle(&mut p);
        assert_eq!(
            p.node.raft.prs().get(2).unwrap().pending_request_snapshot,
            raft::INVALID_INDEX,
            "the leader would send the member a snapshot again"
        );
        assert!(
            sent.iter()
                .all(|m| m.get_msg_type() != MessageType::MsgSnapshot),
            "{sent:?}"
        );
    }

    #[test]
    fn a_new_members_ask_is_forgotten_once_it_holds_what_it_asked_for() {
        let mut p = leader_with_a_caught_up_learner();
        let (_, term, _, commit) = p.role();
        p.store_mut().offer(
            commit,
            term,
            raft::eraftpb::ConfState::from((vec![1], vec![2])),
        );
        // It asked for a snapshot at index 1 and was sent one, which it installed and
        // now acknowledges.
        let pr = p.node.raft.mut_prs().get_mut(2).unwrap();
        pr.become_snapshot(commit);
        pr.matched = commit - 1;
        pr.pending_request_snapshot = 1;
        p.step(from_learner(term, commit));
        let sent = settle(&mut p);
        assert_eq!(
            p.node.raft.prs().get(2).unwrap().pending_request_snapshot,
            raft::INVALID_INDEX
        );
        assert!(
            sent.iter()
                .all(|m| m.get_msg_type() != MessageType::MsgSnapshot),
            "{sent:?}"
        );
    }

    #[test]
    fn a_member_with_no_configuration_asks_for_a_snapshot_once_per_heartbeat() {
        let config = PeerConfig {
            id: 4,
            election_ticks: 10,
            heartbeat_ticks: 2,
            boot: 1,
        };
        let mut p = Peer::new(&config, MemLog::new(&[])).unwrap();
        assert!(p.unconfigured());
        let append = || {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgAppend);
            (m.from, m.to, m.term, m.index, m.log_term) = (1, 4, 3, 40, 3);
            m
        };
        let asks = |sent: &[Message]| {
            sent.iter()
                .filter(|m| m.reject && m.request_snapshot > 0 && m.to == 1)
                .count()
        };
        p.step(append());
        p.step(append());
        assert_eq!(asks(&settle(&mut p)), 1);
        p.tick();
        p.tick();
        p.step(append());
        assert_eq!(asks(&settle(&mut p)), 1);
        // It took nothing from the log.
        assert_eq!(p.store().entries().len(), 0);
    }
}

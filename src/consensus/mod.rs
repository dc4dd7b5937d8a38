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
pub mod durable;
pub mod image;
pub mod sim;
pub mod store;

use raft::eraftpb::{Entry, EntryType, HardState, Message};
use raft::{RawNode, ReadOnlyOption, StateRole};

pub use command::{Command, Effect, Machine, Ticket};
pub use durable::RaftLog;
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
    /// The state machine of the snapshot the driver stepped in last, until raft-rs
    /// installs it (or ignores it: it was not newer than what this node committed).
    incoming: Option<image::Image>,
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
    pub fn image(&self) -> image::Image {
        let index = self.machine.applied;
        let term = self.node.raft.raft_log.term(index).unwrap_or_else(|e| {
            panic!("the term of applied entry {index} is unknown: {e}");
        });
        // raft-rs keeps the voters in a hash set: in no particular order.
        let mut voters = self.node.raft.prs().conf().to_conf_state().voters;
        voters.sort_unstable();
        image::Image {
            term,
            voters,
            machine: self.machine.clone(),
        }
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
        self.node.tick();
        let again = 2 * self.node.raft.heartbeat_timeout();
        for (seq, ticks) in &mut self.asked {
            *ticks += 1;
            if *ticks >= again {
                *ticks = 0;
                self.node.read_index(seq.to_le_bytes().to_vec());
            }
        }
        let propose_again = 4 * self.node.raft.heartbeat_timeout();
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
    pub fn step(&mut self, msg: Message) {
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
    pub fn step_snapshot(&mut self, msg: Message, image: image::Image) {
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
        let mut out = Cycle::default();
        if !self.node.has_ready() {
            return Ok(out);
        }
        let mut rd = self.node.ready();
        out.send = rd.take_messages();
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
            if e.entry_type != EntryType::EntryNormal || e.data.is_empty() {
                // A new leader's empty entry (configuration changes come later).
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

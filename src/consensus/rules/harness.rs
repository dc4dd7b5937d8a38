//! A Raft group driven by hand: every delivery, tick, sync, pause, cut and crash is a
//! step the test takes, so that one schedule, written out, reaches the corner a rule
//! is about. Peers are [`Peer`]s over [`MemLog`]s, as in the simulation; nothing here
//! is random unless a test asks for reordering.
//!
//! The harness checks, at every answer and at the end:
//! - a write is acknowledged only once a majority of the voters hold its entry durably;
//! - every replica applies the same entry at the same index;
//! - the clients' history is linearizable, and every acknowledged offset holds the
//!   payload of the request it answered ([`Group::finish`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use raft::StateRole;
use raft::eraftpb::{Message, MessageType};

use crate::consensus::Image;
use crate::consensus::sim::{founded, mirror_install};
use crate::consensus::{
    Change, Changed, Command, Effect, LogStore, MemLog, Outcome, Peer, PeerConfig, Persist,
    Refused, command,
};
use crate::core::kv;
use crate::core::position::Offset;
use crate::fs::sim::Rng;
use crate::lincheck::{self, Event, Op};

/// One member.
struct Node {
    peer: Option<Peer<MemLog>>,
    /// What its disk holds.
    durable: MemLog,
    /// Writes on their way to the disk, in order.
    jobs: VecDeque<Persist>,
    /// Its disk holds every sync until released.
    stalled: bool,
    /// Its process is stopped: it does not tick, and messages to it wait.
    paused: bool,
    /// Messages that reached it while paused, in order.
    held: VecDeque<Message>,
    /// Whether its clock runs (a slow clock: it stops ticking while the others go on).
    ticking: bool,
    boot: u64,
}

/// A request a client has in flight.
#[derive(Debug, Clone)]
struct Request {
    key: String,
    op: Op,
    payload: Vec<u8>,
    boot: u64,
    invoked: u64,
}

/// A write acknowledged: who answered it, and what it proposed.
#[derive(Debug, Clone)]
pub struct Ack {
    pub node: u64,
    pub boot: u64,
    pub seq: u64,
    pub offset: Offset,
    pub payload: Vec<u8>,
}

pub struct Group {
    now: u64,
    nodes: Vec<Node>,
    voters: Vec<u64>,
    /// Messages in flight, in the order they were sent.
    net: VecDeque<Message>,
    /// Directed pairs (from, to) whose messages are lost.
    cut: BTreeSet<(u64, u64)>,
    /// Every message sent is delivered twice.
    pub duplicate: bool,
    /// Messages in flight are delivered in a random order (seeded).
    pub shuffle: Option<Rng>,
    boots: u64,
    pending: HashMap<(u64, u64), Request>,
    /// Answers by (node, request number): what the client saw.
    answers: HashMap<(u64, u64), Op>,
    history: Vec<Event>,
    pub acks: Vec<Ack>,
    /// Digest of the entry each index applied, wherever it was applied first.
    applied_at: HashMap<u64, u32>,
    seen_applied: Vec<u64>,
    images: BTreeMap<u64, Image>,
    /// Each term's leaders seen.
    leaders: BTreeMap<u64, BTreeSet<u64>>,
}

fn peer_config(id: u64, boot: u64) -> PeerConfig {
    PeerConfig {
        id,
        election_ticks: 10,
        heartbeat_ticks: 2,
        boot,
    }
}

impl Group {
    /// A new group of `n` voters, nobody leading yet.
    pub fn new(n: u64) -> Group {
        let voters: Vec<u64> = (1..=n).collect();
        let nodes = voters
            .iter()
            .map(|&id| Node {
                peer: Some(
                    Peer::resume(&peer_config(id, id), MemLog::new(&voters), founded(&voters))
                        .expect("raft config"),
                ),
                durable: MemLog::new(&voters),
                jobs: VecDeque::new(),
                stalled: false,
                paused: false,
                held: VecDeque::new(),
                ticking: true,
                boot: id,
            })
            .collect();
        Group {
            now: 0,
            nodes,
            voters: voters.clone(),
            net: VecDeque::new(),
            cut: BTreeSet::new(),
            duplicate: false,
            shuffle: None,
            boots: n,
            pending: HashMap::new(),
            answers: HashMap::new(),
            history: Vec::new(),
            acks: Vec::new(),
            applied_at: HashMap::new(),
            seen_applied: vec![0; n as usize],
            images: BTreeMap::new(),
            leaders: BTreeMap::new(),
        }
    }

    /// A group of `n` with node `id` elected and the group quiet.
    pub fn with_leader(n: u64, id: u64) -> Group {
        let mut g = Group::new(n);
        g.campaign(id);
        assert!(
            g.run_until(200, |g| g.is_leader(id) && g.quiet()),
            "n{id} was not elected"
        );
        g
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    pub fn peer(&self, id: u64) -> &Peer<MemLog> {
        self.nodes[id as usize - 1]
            .peer
            .as_ref()
            .unwrap_or_else(|| panic!("n{id} is down"))
    }

    fn peer_mut(&mut self, id: u64) -> &mut Peer<MemLog> {
        self.node(id)
            .peer
            .as_mut()
            .unwrap_or_else(|| panic!("n{id} is down"))
    }

    pub fn is_leader(&self, id: u64) -> bool {
        self.nodes[id as usize - 1]
            .peer
            .as_ref()
            .is_some_and(|p| p.role().0 == StateRole::Leader)
    }

    /// The live leaders (more than one: a deposed leader that has not heard yet).
    pub fn leaders(&self) -> Vec<u64> {
        self.voters
            .iter()
            .copied()
            .filter(|&id| self.is_leader(id))
            .collect()
    }

    pub fn term(&self, id: u64) -> u64 {
        self.peer(id).role().1
    }

    /// Every live, running node has applied everything the leader holds, and its disk
    /// holds it (heartbeats may still be in flight).
    pub fn quiet(&self) -> bool {
        let Some(l) = self.leaders().into_iter().max_by_key(|&id| self.term(id)) else {
            return false;
        };
        let last = raft::Storage::last_index(self.peer(l).store()).expect("memory");
        self.nodes.iter().all(|n| {
            n.paused
                || n.peer.as_ref().is_none_or(|p| {
                    p.machine().applied == last
                        && raft::Storage::last_index(&n.durable).expect("memory") == last
                })
        })
    }

    /// Leader `id` hands leadership to `to` (raft-rs's transfer).
    pub fn transfer(&mut self, id: u64, to: u64) {
        self.peer_mut(id).transfer_leader(to);
        self.drive(id);
    }

    /// Node `id` starts an election now.
    pub fn campaign(&mut self, id: u64) {
        self.peer_mut(id).node.campaign().expect("campaign");
        self.drive(id);
    }

    // ---- faults -------------------------------------------------------------------

    /// Messages between `id` and every other node are lost (those in flight too).
    pub fn isolate(&mut self, id: u64) {
        for &other in &self.voters.clone() {
            if other != id {
                self.cut_one_way(id, other);
                self.cut_one_way(other, id);
            }
        }
    }

    /// Messages from `from` to `to` are lost (those in flight too).
    pub fn cut_one_way(&mut self, from: u64, to: u64) {
        self.cut.insert((from, to));
        self.net.retain(|m| !(m.from == from && m.to == to));
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Node `id`'s process stops: no ticks, no work; messages to it wait.
    pub fn pause(&mut self, id: u64) {
        self.node(id).paused = true;
    }

    /// Node `id`'s process goes on, the messages that waited still waiting (a request
    /// that reaches it first is taken first).
    pub fn unpause(&mut self, id: u64) {
        self.node(id).paused = false;
    }

    /// Steps the messages that waited for node `id` while it was paused, then drives it.
    pub fn deliver_held(&mut self, id: u64) {
        let held: Vec<Message> = self.node(id).held.drain(..).collect();
        let copies = if self.duplicate { 2 } else { 1 };
        for m in held {
            for _ in 0..copies {
                self.peer_mut(id).step(m.clone());
            }
        }
        self.drive(id);
    }

    /// Steps the messages in flight to node `id` without running its cycle (as a node
    /// takes in everything waiting before it runs a Ready).
    pub fn step_in_flight_to(&mut self, id: u64) {
        let (to_it, rest): (Vec<Message>, Vec<Message>) =
            self.net.drain(..).partition(|m| m.to == id);
        self.net = rest.into();
        for m in to_it {
            self.peer_mut(id).step(m);
        }
    }

    /// One tick of node `id`'s clock alone.
    pub fn tick(&mut self, id: u64) {
        self.peer_mut(id).tick();
        self.drive(id);
    }

    /// Node `id`'s clock stops (or runs again): it takes part in everything else.
    pub fn set_ticking(&mut self, id: u64, ticking: bool) {
        self.node(id).ticking = ticking;
    }

    /// Node `id`'s disk holds every sync from now on (or lets them through again).
    pub fn stall_disk(&mut self, id: u64, stalled: bool) {
        self.node(id).stalled = stalled;
    }

    /// Node `id` stops at once: what its disk did not hold yet is lost, and so are the
    /// requests it held for clients (their outcome is unknown).
    pub fn crash(&mut self, id: u64) {
        let n = self.node(id);
        n.peer = None;
        n.jobs.clear();
        n.held.clear();
        n.paused = false;
        self.seen_applied[id as usize - 1] = 0;
        let lost: Vec<(u64, u64)> = self
            .pending
            .keys()
            .filter(|(node, _)| *node == id)
            .copied()
            .collect();
        for key in lost {
            let r = self.pending.remove(&key).expect("listed");
            self.unknown(r);
        }
    }

    /// Node `id` starts again from what its disk holds, as a new run. The caller
    /// drives it (with [`Group::drive`] or a round) when it wants its first cycle.
    pub fn restart(&mut self, id: u64) {
        self.boots += 1;
        let boot = self.boots;
        let voters = self.voters.clone();
        let n = &mut self.nodes[id as usize - 1];
        let base = raft::Storage::first_index(&n.durable).expect("memory") - 1;
        let machine = match self.images.get(&base) {
            Some(image) if base > 0 => image.machine.clone(),
            _ => founded(&voters),
        };
        n.peer = Some(
            Peer::resume(&peer_config(id, boot), n.durable.clone(), machine).expect("raft config"),
        );
        n.boot = boot;
        self.seen_applied[id as usize - 1] = 0;
    }

    // ---- clients ------------------------------------------------------------------

    /// A client writes `key = value` through node `id`: the request number, or
    /// `None` if the node refused it at once (no leader known).
    pub fn write(&mut self, id: u64, key: &str, value: &str) -> Option<u64> {
        let payload = kv::set_payload(key, value).into_bytes();
        let seq = self
            .peer_mut(id)
            .propose(&Command::Append(payload.clone()))
            .ok()?;
        self.track(id, seq, key, Op::Write(value.into()), payload);
        Some(seq)
    }

    /// Notes request `seq` of node `id` as invoked now, and drives the node.
    fn track(&mut self, id: u64, seq: u64, key: &str, op: Op, payload: Vec<u8>) {
        let boot = self.node(id).boot;
        let invoked = self.tick_clock();
        self.pending.insert(
            (id, seq),
            Request {
                key: key.into(),
                op,
                payload,
                boot,
                invoked,
            },
        );
        self.drive(id);
    }

    /// The time a request is invoked: after everything that happened so far (an
    /// answer given in this round returned before it).
    fn tick_clock(&mut self) -> u64 {
        self.now += 1;
        self.now
    }

    /// A client reads `key` through node `id` (see [`Group::write`]).
    pub fn read(&mut self, id: u64, key: &str) -> Option<u64> {
        let seq = self.peer_mut(id).read().ok()?;
        self.track(id, seq, key, Op::Read(None), Vec::new());
        Some(seq)
    }

    /// The client of request `seq` on node `id` gives up on it (its outcome unknown).
    pub fn give_up(&mut self, id: u64, seq: u64) {
        if let Some(r) = self.pending.remove(&(id, seq)) {
            self.peer_mut(id).forget(seq);
            self.unknown(r);
        }
    }

    /// What the client of request `seq` on node `id` was answered, if it was.
    pub fn answer(&self, id: u64, seq: u64) -> Option<&Op> {
        self.answers.get(&(id, seq))
    }

    /// Writes `key = value` through node `id` and runs until it is acknowledged.
    pub fn write_acked(&mut self, id: u64, key: &str, value: &str) {
        let seq = self
            .write(id, key, value)
            .unwrap_or_else(|| panic!("n{id} refused a write"));
        assert!(
            self.run_until(300, |g| g.answer(id, seq).is_some()),
            "the write {key}={value} on n{id} was not acknowledged"
        );
    }

    /// A membership change proposed on node `id`.
    pub fn change(&mut self, id: u64, change: &Change) -> Result<u64, Refused> {
        let r = self.peer_mut(id).propose_change(change);
        self.drive(id);
        r
    }

    /// The membership changes applied on node `id` since the last call.
    pub fn changed(&mut self, id: u64) -> Vec<(u64, Changed)> {
        self.peer_mut(id).take_changed()
    }

    fn unknown(&mut self, r: Request) {
        // A read that was never answered tells nothing; a write may have happened.
        if let Op::Write(_) = r.op {
            self.history.push(Event {
                key: r.key,
                op: r.op,
                invoked: r.invoked,
                returned: None,
            });
        }
    }

    // ---- time ---------------------------------------------------------------------

    /// One round: everything in flight is delivered, every disk that is not stalled
    /// makes its writes durable, and every running clock ticks once.
    pub fn round(&mut self) {
        self.now += 1;
        self.deliver();
        self.sync_all();
        for id in self.voters.clone() {
            let n = self.node(id);
            if n.peer.is_some() && !n.paused && n.ticking {
                self.peer_mut(id).tick();
                self.drive(id);
            }
        }
    }

    /// Runs `rounds` rounds.
    pub fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.round();
        }
    }

    /// Runs rounds until `done` holds (checked before each), at most `max`; whether
    /// it held.
    pub fn run_until(&mut self, max: usize, done: impl Fn(&Group) -> bool) -> bool {
        for _ in 0..max {
            if done(self) {
                return true;
            }
            self.round();
        }
        done(self)
    }

    /// Delivers every message in flight now (not those their delivery sends).
    pub fn deliver(&mut self) {
        let mut due: Vec<Message> = self.net.drain(..).collect();
        if let Some(rng) = &mut self.shuffle {
            for i in (1..due.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                due.swap(i, j);
            }
        }
        for m in due {
            let to = m.to;
            let n = self.node(to);
            if n.peer.is_none() {
                continue;
            }
            if n.paused {
                n.held.push_back(m);
                continue;
            }
            let copies = if self.duplicate { 2 } else { 1 };
            for _ in 0..copies {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    let index = m.get_snapshot().get_metadata().index;
                    if let Some(image) = self.images.get(&index).cloned() {
                        self.peer_mut(to).step_snapshot(m.clone(), image);
                    }
                } else {
                    if m.request_snapshot != 0 {
                        self.offer(to);
                    }
                    self.peer_mut(to).step(m.clone());
                }
            }
            self.drive(to);
        }
    }

    /// Every disk that is not stalled (nor paused) makes its writes durable, in order.
    pub fn sync_all(&mut self) {
        for id in self.voters.clone() {
            let n = self.node(id);
            if n.stalled || n.paused {
                continue;
            }
            while let Some(job) = self.node(id).jobs.pop_front() {
                let n = self.node(id);
                n.durable
                    .write_entries(&job.entries)
                    .expect("memory writes do not fail");
                if let Some(hs) = &job.hard_state {
                    n.durable
                        .write_hard_state(hs)
                        .expect("memory writes do not fail");
                }
                self.peer_mut(id).persisted(job.number);
                for m in job.then_send {
                    self.send(m);
                }
                self.drive(id);
            }
        }
    }

    fn send(&mut self, m: Message) {
        // A member added to the configuration but never started gets nothing.
        let started = m.to as usize <= self.nodes.len();
        if started && !self.cut.contains(&(m.from, m.to)) {
            self.net.push_back(m);
        }
    }

    /// Leader `l` offers its state as a snapshot (a follower asked for one).
    fn offer(&mut self, l: u64) {
        if !self.is_leader(l) {
            return;
        }
        let peer = self.peer_mut(l);
        let image = peer.image();
        let conf = raft::eraftpb::ConfState::from((image.voters.clone(), image.learners.clone()));
        peer.store_mut().offer(image.index(), image.term, conf);
        self.images.insert(image.index(), image);
    }

    /// Carries out node `id`'s cycles until it has nothing ready.
    pub fn drive(&mut self, id: u64) {
        let i = id as usize - 1;
        loop {
            if self.nodes[i].paused {
                return;
            }
            let node = &mut self.nodes[i];
            let Some(peer) = node.peer.as_mut() else {
                return;
            };
            let first = raft::Storage::first_index(peer.store()).expect("memory");
            let cycle = peer.cycle().expect("memory writes do not fail");
            mirror_install(peer, first, &mut node.durable);
            for m in cycle.send {
                self.send(m);
            }
            let Some(persist) = cycle.persist else {
                break;
            };
            self.nodes[i].jobs.push_back(persist);
            for (seq, outcome) in cycle.answers {
                self.answered(id, seq, outcome);
            }
        }
        self.observe(id);
    }

    /// Election safety and state machine safety on node `id`.
    fn observe(&mut self, id: u64) {
        let i = id as usize - 1;
        let Some(peer) = self.nodes[i].peer.as_ref() else {
            return;
        };
        let (role, term, _, _) = peer.role();
        if role == StateRole::Leader {
            let ids = self.leaders.entry(term).or_default();
            ids.insert(id);
            assert!(ids.len() == 1, "two leaders in term {term}: {ids:?}");
        }
        let applied = peer.machine().applied;
        let from = self.seen_applied[i];
        if applied > from {
            let entries = peer.store().entries();
            let first = entries.first().map_or(applied + 1, |e| e.index);
            let (lo, hi) = (from.max(first - 1), applied.max(first - 1));
            for e in &entries[(lo + 1 - first) as usize..(hi + 1 - first) as usize] {
                let digest = crc32c::crc32c_append(crc32c::crc32c(&e.data), &e.term.to_le_bytes());
                if let Some(d) = self.applied_at.insert(e.index, digest) {
                    assert_eq!(d, digest, "n{id} applied a different entry at {}", e.index);
                }
            }
            self.seen_applied[i] = applied;
        }
    }

    /// Node `id` answers its request `seq`.
    fn answered(&mut self, id: u64, seq: u64, outcome: Outcome) {
        let Some(r) = self.pending.remove(&(id, seq)) else {
            return;
        };
        let peer = self.peer(id);
        let seen = match (&r.op, &outcome) {
            (Op::Read(_), Outcome::Readable) => {
                Op::Read(peer.machine().kv.get(&r.key).map(|v| v.to_string()))
            }
            (Op::Write(v), Outcome::Applied(Effect::Applied(offset))) => {
                let index = peer
                    .machine()
                    .index_of(*offset)
                    .expect("an acknowledged offset is in the machine");
                let term = raft::Storage::term(peer.store(), index).expect("applied entry held");
                let holders = self
                    .nodes
                    .iter()
                    .filter(|n| durably_holds(&n.durable, index, term))
                    .count();
                assert!(
                    holders * 2 > self.voters.len(),
                    "n{id} acknowledged the write of entry {index} (term {term}) held durably \
                     by {holders} of {} voters",
                    self.voters.len()
                );
                self.acks.push(Ack {
                    node: id,
                    boot: r.boot,
                    seq,
                    offset: *offset,
                    payload: r.payload.clone(),
                });
                Op::Write(v.clone())
            }
            (op, outcome) => panic!("{op:?} answered with {outcome:?}"),
        };
        self.answers.insert((id, seq), seen.clone());
        self.history.push(Event {
            key: r.key,
            op: seen,
            invoked: r.invoked,
            returned: Some(self.now),
        });
    }

    /// The end of a test: requests still open become unknown, and the history must be
    /// linearizable and every acknowledged offset hold its own request's payload (on
    /// node `on`, which must have applied them all).
    pub fn finish(mut self, on: u64) {
        for (_, r) in std::mem::take(&mut self.pending) {
            self.unknown(r);
        }
        match lincheck::check(&self.history) {
            lincheck::Verdict::Linearizable { .. } => {}
            other => panic!("history not linearizable: {other:?}\n{:#?}", self.history),
        }
        let peer = self.peer(on);
        let ticket_at = |offset: Offset| {
            let index = peer.machine().index_of(offset)?;
            let entry = peer.store().entries().iter().find(|e| e.index == index)?;
            command::decode(&entry.data).ok()
        };
        // A request proposed twice (again after a lost forward, or duplicated on the
        // way) takes one offset.
        let mut tickets = BTreeSet::new();
        for o in 0..peer.machine().next_offset.get() {
            let (ticket, _) = ticket_at(Offset::new(o))
                .unwrap_or_else(|| panic!("offset {o} has no entry on n{on}"));
            assert!(
                tickets.insert(ticket),
                "request {ticket:?} took two offsets (the second: {o})"
            );
        }
        for ack in &self.acks {
            let index = peer
                .machine()
                .index_of(ack.offset)
                .unwrap_or_else(|| panic!("acknowledged {ack:?} is not in n{on}'s state"));
            let entry = peer
                .store()
                .entries()
                .iter()
                .find(|e| e.index == index)
                .unwrap_or_else(|| panic!("entry {index} is not in n{on}'s log"));
            let (ticket, cmd) = command::decode(&entry.data).expect("a client entry");
            assert_eq!(
                (ticket.node, ticket.boot, ticket.seq),
                (ack.node, ack.boot, ack.seq),
                "offset {} answered request {} of n{} (run {}), but holds another's entry",
                ack.offset.get(),
                ack.seq,
                ack.node,
                ack.boot
            );
            assert_eq!(
                crate::consensus::Machine::payload_of(&cmd),
                ack.payload,
                "offset {} holds another payload",
                ack.offset.get()
            );
        }
    }
}

/// Whether `log` holds the entry at `index` of term `term` (or a snapshot past it).
fn durably_holds(log: &MemLog, index: u64, term: u64) -> bool {
    match raft::Storage::term(log, index) {
        Ok(t) => t == term,
        Err(_) => raft::Storage::first_index(log).expect("memory") > index,
    }
}

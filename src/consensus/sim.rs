//! A deterministic simulation of a Raft group: peers in one thread, a network with
//! latency, loss and partitions, disks whose writes become durable after a delay,
//! crashes that lose everything not yet durable, and clients running Maelstrom's
//! `lin-kv` workload. Everything is driven by one seeded generator and a simulated
//! millisecond clock, so a seed replays exactly; a run of a few simulated seconds
//! takes milliseconds.
//!
//! A run checks, as it goes and at the end:
//! - at most one leader per term (election safety);
//! - every replica applies the same entry at the same index (state machine safety);
//! - after healing and a quiet period, every replica has applied the same index and
//!   holds the same state;
//! - the clients' history, with a final read of every key, is linearizable
//!   ([`crate::lincheck`]).
//!
//! With `replace`, a founder is lost for good a little into the run and replaced as
//! an operator would (removed, a new node added as a learner, caught up from the
//! leader's state offered as a snapshot, promoted), under the same faults.
//! `SIM_DEBUG=1` prints the faults of a seed that fails or does not finish.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use raft::StateRole;
use raft::eraftpb::Message;

use super::{Command, Effect, MemLog, Outcome, Peer, PeerConfig, Persist};
use crate::fs::sim::Rng;
use crate::lincheck::{self, Event, Op};

/// What a run does.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes in the group.
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// Simulated milliseconds of workload (a quiet period follows).
    pub duration_ms: u64,
    /// Milliseconds a message takes, uniform in this range.
    pub latency_ms: (u64, u64),
    /// Messages lost, per thousand.
    pub loss_per_mille: u64,
    /// Milliseconds a write takes to become durable, uniform in this range.
    pub persist_ms: (u64, u64),
    /// Milliseconds per Raft tick.
    pub tick_ms: u64,
    /// Concurrent clients, one operation at a time each.
    pub clients: usize,
    /// Keys the clients use.
    pub keys: usize,
    /// Milliseconds before a client gives up on a request (unknown outcome).
    pub timeout_ms: u64,
    /// Partitions, crashes and restarts.
    pub nemesis: bool,
    /// A member is lost for good a little into the run, and replaced: removed, a new
    /// node added as a learner, caught up from a snapshot, promoted (crashes and
    /// restarts may hit the newcomer too).
    pub replace: bool,
}

impl SimConfig {
    /// A three-node run with faults, for `seed`.
    pub fn faulty(seed: u64) -> SimConfig {
        SimConfig {
            nodes: 3,
            seed,
            duration_ms: 4_000,
            latency_ms: (1, 8),
            loss_per_mille: 100,
            persist_ms: (0, 4),
            tick_ms: 10,
            clients: 5,
            keys: 3,
            timeout_ms: 600,
            nemesis: true,
            replace: false,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// The clients' history (the final reads included).
    pub history: Vec<Event>,
    /// Operations acknowledged, failed for sure, and of unknown outcome.
    pub ok: usize,
    /// Requests refused before anything happened (no leader).
    pub refused: usize,
    /// Requests that timed out.
    pub unknown: usize,
    /// Leader elections seen (distinct terms with a leader).
    pub terms_with_leader: usize,
    /// Nemesis actions taken.
    pub faults: Vec<String>,
    /// The applied index every replica reached.
    pub applied: u64,
    /// With `replace`: whether the replacement was carried out to the end.
    pub replaced: bool,
}

struct Node {
    peer: Option<Peer<MemLog>>,
    durable: MemLog,
    /// Writes on their way to the disk: (due, what).
    jobs: VecDeque<(u64, Persist)>,
    /// Requests this node holds for clients: request number → client.
    pending: HashMap<u64, usize>,
    /// Lost for good (its disk): never restarted.
    gone: bool,
    /// A node that joined the group (it starts with no configuration).
    joined: bool,
}

#[derive(Debug, Clone)]
enum ClientOp {
    Read(String),
    Write(String, String),
    Cas(String, String, String),
}

enum Client {
    Idle {
        until: u64,
    },
    Waiting {
        node: usize,
        seq: u64,
        op: ClientOp,
        invoked: u64,
    },
}

struct Sim {
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    nodes: Vec<Node>,
    /// Messages in flight: (due, from, message).
    net: Vec<(u64, Message)>,
    /// Pairs of Raft ids that cannot talk.
    cut: BTreeSet<(u64, u64)>,
    clients: Vec<Client>,
    history: Vec<Event>,
    report: SimReport,
    leaders: BTreeMap<u64, BTreeSet<u64>>,
    /// Digest of the entry each index applied, wherever it was applied first.
    applied_at: HashMap<u64, u32>,
    /// Per node, the index it last applied (to digest newly applied entries).
    seen_applied: Vec<u64>,
    /// Restarts so far (each run of a node gets its own number).
    boots: u64,
    /// The replacement under way: its stage (0 not started, 1 removing the lost
    /// member, 2 adding the newcomer, 3 waiting for it to catch up, 4 promoting it,
    /// 5 done), the lost member, when to act next, and what the newcomer must reach.
    stage: u8,
    lost: u64,
    next_act: u64,
    target: u64,
    /// States offered as snapshots, by index (what a newcomer installs).
    images: BTreeMap<u64, super::Image>,
    /// Per (leader, follower): since when the leader waits for the follower to
    /// install a snapshot (the node's driver reports it failed after a while, so
    /// that a lost offer is sent again).
    waiting_install: BTreeMap<(usize, u64), u64>,
}

fn peer_config(id: u64, boot: u64) -> PeerConfig {
    PeerConfig {
        id,
        election_ticks: 10,
        heartbeat_ticks: 2,
        boot,
    }
}

/// Runs a simulation.
///
/// # Errors
/// A description of the first safety violation found.
pub fn run(cfg: &SimConfig) -> Result<SimReport, String> {
    let voters: Vec<u64> = (1..=cfg.nodes as u64).collect();
    let nodes = voters
        .iter()
        .map(|&id| Node {
            peer: Some(
                Peer::resume(&peer_config(id, 0), MemLog::new(&voters), founded(&voters))
                    .expect("raft config"),
            ),
            durable: MemLog::new(&voters),
            jobs: VecDeque::new(),
            pending: HashMap::new(),
            gone: false,
            joined: false,
        })
        .collect();
    let mut sim = Sim {
        rng: Rng::new(cfg.seed),
        now: 0,
        nodes,
        net: Vec::new(),
        cut: BTreeSet::new(),
        clients: (0..cfg.clients)
            .map(|_| Client::Idle { until: 0 })
            .collect(),
        history: Vec::new(),
        report: SimReport {
            history: Vec::new(),
            ok: 0,
            refused: 0,
            unknown: 0,
            terms_with_leader: 0,
            faults: Vec::new(),
            applied: 0,
            replaced: false,
        },
        leaders: BTreeMap::new(),
        applied_at: HashMap::new(),
        seen_applied: vec![0; cfg.nodes],
        boots: 0,
        stage: 0,
        lost: 0,
        next_act: 500 + Rng::new(cfg.seed ^ 0x7e91).below(1000),
        target: 0,
        images: BTreeMap::new(),
        waiting_install: BTreeMap::new(),
        cfg: cfg.clone(),
    };
    let mut next_fault = 300;
    while sim.now < cfg.duration_ms {
        if cfg.nemesis && sim.now >= next_fault {
            sim.nemesis();
            next_fault = sim.now + 200 + sim.rng.below(800);
        }
        if cfg.replace {
            sim.replace();
        }
        sim.clients_act(true);
        sim.step_ms()?;
    }
    // Heal, restart, and let the clients' last requests end (and the replacement).
    sim.cut.clear();
    for i in 0..sim.nodes.len() {
        if sim.nodes[i].peer.is_none() && !sim.nodes[i].gone {
            sim.restart(i);
        }
    }
    let quiet_until = sim.now + 3_000;
    while sim.now < quiet_until || (cfg.replace && sim.stage < 5 && sim.now < quiet_until + 10_000)
    {
        if cfg.replace {
            sim.replace();
        }
        sim.clients_act(false);
        sim.step_ms()?;
    }
    sim.finish()
}

impl Sim {
    fn range(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.rng.below(hi - lo + 1)
    }

    /// One simulated millisecond: deliveries, durable writes, ticks.
    fn step_ms(&mut self) -> Result<(), String> {
        self.now += 1;
        let now = self.now;
        let mut due = Vec::new();
        self.net.retain(|(at, m)| {
            if *at <= now {
                due.push(m.clone());
                false
            } else {
                true
            }
        });
        for m in due {
            let to = (m.to - 1) as usize;
            if to >= self.nodes.len() || self.nodes[to].peer.is_none() {
                continue;
            }
            if m.request_snapshot != 0 {
                self.offer(to);
            }
            let peer = self.nodes[to].peer.as_mut().expect("alive");
            if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                let index = m.get_snapshot().get_metadata().index;
                // Only states the sim offered are ever sent.
                if let Some(image) = self.images.get(&index) {
                    peer.step_snapshot(m, image.clone());
                }
            } else {
                peer.step(m);
            }
            self.drive(to)?;
        }
        for i in 0..self.nodes.len() {
            while self.nodes[i].jobs.front().is_some_and(|(at, _)| *at <= now) {
                let (_, job) = self.nodes[i].jobs.pop_front().expect("a job");
                let node = &mut self.nodes[i];
                store_durably(&mut node.durable, &job);
                node.peer
                    .as_mut()
                    .expect("jobs die with the peer")
                    .persisted(job.number);
                for m in job.then_send {
                    self.send(m);
                }
                self.drive(i)?;
            }
            if now.is_multiple_of(self.cfg.tick_ms) && self.nodes[i].peer.is_some() {
                self.nodes[i].peer.as_mut().expect("alive").tick();
                self.snapshots_tick(i);
                self.drive(i)?;
            }
        }
        Ok(())
    }

    fn send(&mut self, m: Message) {
        if self.cut.contains(&(m.from, m.to)) || self.rng.below(1000) < self.cfg.loss_per_mille {
            return;
        }
        let at = self.now + self.range(self.cfg.latency_ms);
        self.net.push((at, m));
    }

    /// Carries out node `i`'s cycles until it has nothing ready.
    fn drive(&mut self, i: usize) -> Result<(), String> {
        loop {
            let node = &mut self.nodes[i];
            let Some(peer) = node.peer.as_mut() else {
                return Ok(());
            };
            let first = raft::Storage::first_index(peer.store()).expect("memory");
            let cycle = peer.cycle().expect("memory writes do not fail");
            mirror_install(peer, first, &mut node.durable);
            // Messages the peer answers itself leave even when nothing was ready.
            for m in cycle.send {
                self.send(m);
            }
            let Some(persist) = cycle.persist else {
                break;
            };
            let due = self.now + self.range(self.cfg.persist_ms);
            let jobs = &mut self.nodes[i].jobs;
            let due = jobs.back().map_or(due, |(last, _)| due.max(*last));
            jobs.push_back((due, persist));
            for (seq, outcome) in cycle.answers {
                self.answer(i, seq, outcome);
            }
        }
        self.observe(i)
    }

    /// Checks election and state machine safety on node `i`.
    fn observe(&mut self, i: usize) -> Result<(), String> {
        let Some(peer) = self.nodes[i].peer.as_ref() else {
            return Ok(());
        };
        let (role, term, _, _) = peer.role();
        if role == StateRole::Leader {
            let ids = self.leaders.entry(term).or_default();
            ids.insert(peer.id());
            if ids.len() > 1 {
                return Err(format!("two leaders in term {term}: {ids:?}"));
            }
        }
        let applied = peer.machine().applied;
        let from = self.seen_applied[i];
        if applied > from {
            let entries = peer.store().entries();
            let first = entries.first().map_or(applied + 1, |e| e.index);
            let (lo, hi) = (from.max(first - 1), applied.max(first - 1));
            for e in &entries[(lo + 1 - first) as usize..(hi + 1 - first) as usize] {
                let digest = crc32c::crc32c_append(crc32c::crc32c(&e.data), &e.term.to_le_bytes());
                match self.applied_at.insert(e.index, digest) {
                    Some(d) if d != digest => {
                        return Err(format!(
                            "node {} applied a different entry at index {}",
                            i + 1,
                            e.index
                        ));
                    }
                    _ => {}
                }
            }
            self.seen_applied[i] = applied;
        }
        Ok(())
    }

    fn answer(&mut self, node: usize, seq: u64, outcome: Outcome) {
        let Some(client) = self.nodes[node].pending.remove(&seq) else {
            return;
        };
        let Client::Waiting { op, invoked, .. } = &self.clients[client] else {
            return;
        };
        let (op, invoked) = (op.clone(), *invoked);
        let peer = self.nodes[node]
            .peer
            .as_ref()
            .expect("answering node is alive");
        let seen = match (&op, outcome) {
            (ClientOp::Read(k), Outcome::Readable) => {
                Op::Read(peer.machine().kv.get(k).map(|v| v.to_string()))
            }
            (ClientOp::Write(_, v), Outcome::Applied(Effect::Applied(_))) => Op::Write(v.clone()),
            (ClientOp::Cas(_, f, t), Outcome::Applied(Effect::Applied(_))) => {
                Op::Cas(f.clone(), t.clone())
            }
            (ClientOp::Cas(..), Outcome::Applied(Effect::CasAbsent)) => Op::CasAbsent,
            (ClientOp::Cas(_, f, _), Outcome::Applied(Effect::CasMismatch(_))) => {
                Op::CasMismatch(f.clone())
            }
            (op, outcome) => panic!("{op:?} answered with {outcome:?}"),
        };
        let key = match &op {
            ClientOp::Read(k) | ClientOp::Write(k, _) | ClientOp::Cas(k, ..) => k.clone(),
        };
        self.history.push(Event {
            key,
            op: seen,
            invoked,
            returned: Some(self.now),
        });
        self.report.ok += 1;
        let pause = self.rng.below(20);
        self.clients[client] = Client::Idle {
            until: self.now + pause,
        };
    }

    /// Clients time out, and (when `start`) idle clients send their next request.
    fn clients_act(&mut self, start: bool) {
        for c in 0..self.clients.len() {
            match &self.clients[c] {
                Client::Waiting {
                    node,
                    seq,
                    op,
                    invoked,
                } if self.now >= invoked + self.cfg.timeout_ms => {
                    let (node, seq, op, invoked) = (*node, *seq, op.clone(), *invoked);
                    self.nodes[node].pending.remove(&seq);
                    if let Some(peer) = self.nodes[node].peer.as_mut() {
                        peer.forget(seq);
                    }
                    // A write may or may not have happened; a read did nothing.
                    let event = match op {
                        ClientOp::Read(_) => None,
                        ClientOp::Write(k, v) => Some((k, Op::Write(v))),
                        ClientOp::Cas(k, f, t) => Some((k, Op::Cas(f, t))),
                    };
                    if let Some((key, op)) = event {
                        self.history.push(Event {
                            key,
                            op,
                            invoked,
                            returned: None,
                        });
                    }
                    self.report.unknown += 1;
                    self.clients[c] = Client::Idle { until: self.now };
                }
                Client::Idle { until } if start && self.now >= *until => self.invoke(c),
                _ => {}
            }
        }
    }

    fn invoke(&mut self, c: usize) {
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].peer.is_some())
            .collect();
        if alive.is_empty() {
            return;
        }
        let node = alive[self.rng.below(alive.len() as u64) as usize];
        let key = format!("k{}", self.rng.below(self.cfg.keys as u64));
        let v = self.rng.below(5).to_string();
        let op = match self.rng.below(3) {
            0 => ClientOp::Read(key),
            1 => ClientOp::Write(key, v),
            _ => ClientOp::Cas(key, self.rng.below(5).to_string(), v),
        };
        let peer = self.nodes[node].peer.as_mut().expect("alive");
        let seq = match &op {
            ClientOp::Read(_) => peer.read(),
            ClientOp::Write(k, v) => peer.propose(&Command::Append(
                crate::core::kv::set_payload(k, v).into_bytes(),
            )),
            ClientOp::Cas(k, f, t) => peer.propose(&Command::Cas {
                key: k.clone(),
                from: f.clone(),
                to: t.clone(),
            }),
        };
        match seq {
            Ok(seq) => {
                self.nodes[node].pending.insert(seq, c);
                self.clients[c] = Client::Waiting {
                    node,
                    seq,
                    op,
                    invoked: self.now,
                };
                // The request may have made work ready (a leader's append).
                let _ = self.drive(node);
            }
            Err(_) => {
                // Certainly did nothing: not part of the history.
                self.report.refused += 1;
                self.clients[c] = Client::Idle {
                    until: self.now + 10,
                };
            }
        }
    }

    fn nemesis(&mut self) {
        let n = self.nodes.len() as u64;
        match self.rng.below(4) {
            0 => {
                // A random partition into two sides.
                self.cut.clear();
                let side: Vec<bool> = (0..n).map(|_| self.rng.coin()).collect();
                for a in 1..=n {
                    for b in 1..=n {
                        if side[(a - 1) as usize] != side[(b - 1) as usize] {
                            self.cut.insert((a, b));
                        }
                    }
                }
                self.report
                    .faults
                    .push(format!("{}ms partition {side:?}", self.now));
            }
            1 => {
                self.cut.clear();
                self.report.faults.push(format!("{}ms heal", self.now));
            }
            2 => {
                let i = self.rng.below(n) as usize;
                if self.nodes[i].peer.take().is_some() {
                    // Everything not yet durable is gone; so are its clients' requests.
                    self.nodes[i].jobs.clear();
                    self.nodes[i].pending.clear();
                    self.seen_applied[i] = 0;
                    self.report
                        .faults
                        .push(format!("{}ms crash n{}", self.now, i + 1));
                }
            }
            _ => {
                for i in 0..self.nodes.len() {
                    if self.nodes[i].peer.is_none() && !self.nodes[i].gone {
                        self.restart(i);
                        self.report
                            .faults
                            .push(format!("{}ms restart n{}", self.now, i + 1));
                        break;
                    }
                }
            }
        }
    }

    /// A leader asked for a snapshot offers its state as it stands.
    fn offer(&mut self, i: usize) {
        let Some(peer) = self.nodes[i].peer.as_mut() else {
            return;
        };
        if peer.role().0 != StateRole::Leader || peer.machine().applied == 0 {
            return;
        }
        let image = peer.image();
        let conf = raft::eraftpb::ConfState::from((image.voters.clone(), image.learners.clone()));
        peer.store_mut().offer(image.index(), image.term, conf);
        self.images.insert(image.index(), image);
    }

    /// As the node's driver does: a snapshot offer nobody acted on for a while is
    /// reported failed, so that raft-rs offers one again (the offer may have been lost).
    fn snapshots_tick(&mut self, i: usize) {
        let now = self.now;
        let peer = self.nodes[i].peer.as_mut().expect("alive");
        let sending: Vec<u64> = peer
            .followers_in_snapshot()
            .iter()
            .map(|(id, _)| *id)
            .collect();
        self.waiting_install
            .retain(|(l, id), _| *l != i || sending.contains(id));
        for id in sending {
            let since = *self.waiting_install.entry((i, id)).or_insert(now);
            if now >= since + 300 {
                peer.snapshot_failed(id);
                self.waiting_install.remove(&(i, id));
            }
        }
    }

    /// The alive leader, if one.
    fn leader(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| {
            self.nodes[i]
                .peer
                .as_ref()
                .is_some_and(|p| p.role().0 == StateRole::Leader)
        })
    }

    /// Moves the replacement on, as an operator would: each step asked of the leader
    /// until the leader's configuration shows it done.
    fn replace(&mut self) {
        if self.stage == 5 || self.now < self.next_act {
            return;
        }
        self.next_act = self.now + 50;
        let newcomer = self.cfg.nodes as u64 + 1;
        if self.stage == 0 {
            // The disk of a founder is lost for good.
            let i = self.rng.below(self.cfg.nodes as u64) as usize;
            self.nodes[i].peer = None;
            self.nodes[i].jobs.clear();
            self.nodes[i].pending.clear();
            self.nodes[i].gone = true;
            self.lost = i as u64 + 1;
            self.report
                .faults
                .push(format!("{}ms n{} lost for good", self.now, self.lost));
            self.stage = 1;
            return;
        }
        let Some(l) = self.leader() else { return };
        let (voters, learners) = self.nodes[l].peer.as_ref().expect("alive").members();
        let change = match self.stage {
            1 if !voters.contains(&self.lost) => {
                self.stage = 2;
                return;
            }
            1 => super::Change::Remove(self.lost),
            2 if learners.contains(&newcomer) => {
                self.nodes.push(Node {
                    peer: Some(
                        Peer::new(&peer_config(newcomer, 0), MemLog::new(&[]))
                            .expect("raft config"),
                    ),
                    durable: MemLog::new(&[]),
                    jobs: VecDeque::new(),
                    pending: HashMap::new(),
                    gone: false,
                    joined: true,
                });
                self.seen_applied.push(0);
                self.target = self.nodes[l].peer.as_ref().expect("alive").role().3;
                self.report
                    .faults
                    .push(format!("{}ms n{newcomer} added and started", self.now));
                self.stage = 3;
                return;
            }
            2 => super::Change::AddLearner(format!("n{newcomer}")),
            3 => {
                let caught_up = self.nodes[newcomer as usize - 1]
                    .peer
                    .as_ref()
                    .is_some_and(|p| p.machine().applied >= self.target);
                if caught_up {
                    self.stage = 4;
                }
                return;
            }
            4 if voters.contains(&newcomer) => {
                self.report
                    .faults
                    .push(format!("{}ms n{newcomer} promoted", self.now));
                self.stage = 5;
                return;
            }
            _ => super::Change::Promote(newcomer),
        };
        let peer = self.nodes[l].peer.as_mut().expect("alive");
        if peer.propose_change(&change).is_ok() {
            self.next_act = self.now + 200;
        }
        drop(peer.take_changed());
        let _ = self.drive(l);
    }

    fn restart(&mut self, i: usize) {
        self.boots += 1;
        let boot = self.boots;
        let node = &mut self.nodes[i];
        let founders: Vec<u64> = (1..=self.cfg.nodes as u64).collect();
        // A node that installed a snapshot starts from it (the sim keeps every state
        // it offered); the others from the start of their log.
        let base = raft::Storage::first_index(&node.durable).expect("memory") - 1;
        let machine = match self.images.get(&base) {
            Some(image) if base > 0 => image.machine.clone(),
            _ if node.joined => super::Machine::default(),
            _ => founded(&founders),
        };
        node.peer = Some(
            Peer::resume(
                &peer_config(i as u64 + 1, boot),
                node.durable.clone(),
                machine,
            )
            .expect("raft config"),
        );
        self.seen_applied[i] = 0;
    }

    fn finish(mut self) -> Result<SimReport, String> {
        let machines: Vec<_> = self
            .nodes
            .iter()
            .filter(|n| !n.gone)
            .map(|n| n.peer.as_ref().expect("all restarted").machine().clone())
            .collect();
        for (i, m) in machines.iter().enumerate().skip(1) {
            if *m != machines[0] {
                if std::env::var("SIM_DEBUG").is_ok() {
                    eprintln!("faults {:?}", self.report.faults);
                    for (j, n) in self.nodes.iter().enumerate() {
                        if let Some(p) = &n.peer {
                            eprintln!(
                                "n{}: {:?} members {:?} applied {} last {:?}",
                                j + 1,
                                p.role(),
                                p.members(),
                                p.machine().applied,
                                raft::Storage::last_index(p.store())
                            );
                            if p.role().0 == StateRole::Leader {
                                eprintln!(
                                    "progress {:?}",
                                    p.node
                                        .raft
                                        .prs()
                                        .iter()
                                        .map(|(id, pr)| (
                                            *id,
                                            pr.matched,
                                            pr.next_idx,
                                            pr.state,
                                            pr.pending_request_snapshot,
                                            pr.pending_snapshot,
                                            pr.paused
                                        ))
                                        .collect::<Vec<_>>()
                                );
                            }
                        }
                    }
                }
                return Err(format!(
                    "after healing, n{} applied {} ({} keys, next offset {}) but n1 applied {} \
                     ({} keys, next offset {})",
                    i + 1,
                    m.applied,
                    m.kv.map.len(),
                    m.next_offset,
                    machines[0].applied,
                    machines[0].kv.map.len(),
                    machines[0].next_offset
                ));
            }
        }
        // A final read of every key, after everything else.
        for k in 0..self.cfg.keys {
            let key = format!("k{k}");
            let value = machines[0].kv.get(&key).map(|v| v.to_string());
            self.history.push(Event {
                key,
                op: Op::Read(value),
                invoked: self.now + 1,
                returned: Some(self.now + 2),
            });
        }
        match lincheck::check(&self.history) {
            lincheck::Verdict::Linearizable { .. } => {}
            other => return Err(format!("history not linearizable: {other:?}")),
        }
        self.report.history = self.history;
        self.report.terms_with_leader = self.leaders.len();
        self.report.applied = machines[0].applied;
        self.report.replaced = self.stage == 5;
        Ok(self.report)
    }
}

/// The state machine a founder starts from: nothing applied, the founders named.
pub(super) fn founded(founders: &[u64]) -> super::Machine {
    let mut m = super::Machine::default();
    let names = founders.iter().map(|f| (*f, format!("n{f}"))).collect();
    super::name_founders(&mut m, founders, &names);
    m
}

/// A snapshot installed by the cycle just run (the peer's log now starts later than
/// `first`) is durable when the install returns, as on a disk: `durable` takes it too.
pub(super) fn mirror_install(peer: &Peer<MemLog>, first: u64, durable: &mut MemLog) {
    let now_first = raft::Storage::first_index(peer.store()).expect("memory");
    if now_first == first {
        return;
    }
    let index = now_first - 1;
    let term = raft::Storage::term(peer.store(), index).expect("memory");
    let conf = raft::Storage::initial_state(peer.store())
        .expect("memory")
        .conf_state;
    super::LogStore::install(durable, index, term).expect("memory");
    super::LogStore::configured(durable, &conf, index);
}

fn store_durably(durable: &mut MemLog, job: &Persist) {
    use super::LogStore;
    durable
        .write_entries(&job.entries)
        .expect("memory writes do not fail");
    if let Some(hs) = &job.hard_state {
        durable
            .write_hard_state(hs)
            .expect("memory writes do not fail");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_group_elects_a_leader_and_serves_every_request() {
        let cfg = SimConfig {
            loss_per_mille: 0,
            nemesis: false,
            ..SimConfig::faulty(1)
        };
        let r = run(&cfg).unwrap();
        assert_eq!(r.terms_with_leader, 1, "{r:?}");
        assert_eq!(r.unknown, 0);
        assert!(r.ok > 500, "{} operations", r.ok);
    }

    #[test]
    fn seed_sweep_with_partitions_crashes_and_loss() {
        let seeds: u64 = std::env::var("SIM_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300);
        let (mut ok, mut unknown, mut faults) = (0, 0, 0);
        // Every seed runs: how many find a bug says how long a sweep must be.
        let mut failed = Vec::new();
        for seed in 0..seeds {
            let cfg = SimConfig::faulty(seed);
            let outcome = std::panic::catch_unwind(|| run(&cfg))
                .unwrap_or_else(|_| Err("a check panicked".to_string()));
            match outcome {
                Ok(r) => {
                    ok += r.ok;
                    unknown += r.unknown;
                    faults += r.faults.len();
                }
                Err(e) => failed.push(format!("seed {seed}: {e}")),
            }
        }
        assert!(
            failed.is_empty(),
            "{} of {seeds} seeds failed; the first: {}",
            failed.len(),
            failed[0]
        );
        println!("{seeds} seeds: {ok} operations acknowledged, {unknown} unknown, {faults} faults");
        assert!(ok > 100 * seeds as usize);
    }

    #[test]
    fn a_lost_member_is_replaced_under_faults() {
        let seeds: u64 = std::env::var("SIM_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(100, |n: u64| n / 3);
        let (mut replaced, mut newcomer_crashed) = (0, 0);
        for seed in 0..seeds {
            let cfg = SimConfig {
                replace: true,
                ..SimConfig::faulty(seed)
            };
            let r = run(&cfg).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            replaced += usize::from(r.replaced);
            newcomer_crashed += usize::from(r.faults.iter().any(|f| f.ends_with("crash n4")));
            if !r.replaced && std::env::var("SIM_DEBUG").is_ok() {
                eprintln!("seed {seed}: {:?}", r.faults);
            }
        }
        println!("{replaced} of {seeds} replaced; the newcomer crashed in {newcomer_crashed}");
        // A seed whose faults keep the group of two without a majority long enough
        // may not finish; nearly all must.
        assert!(
            replaced * 10 >= seeds as usize * 9,
            "{replaced} of {seeds} replaced"
        );
        assert!(
            newcomer_crashed > 0,
            "the newcomer never crashed: a path left untried"
        );
    }

    #[test]
    fn five_nodes_under_faults() {
        for seed in 0..60 {
            let cfg = SimConfig {
                nodes: 5,
                ..SimConfig::faulty(seed)
            };
            run(&cfg).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
    }
}

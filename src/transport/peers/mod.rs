//! Peer links over TCP: the [`Transport`] of a member that talks to its peers itself.
//!
//! For each peer, two outgoing connections, each fed by a bounded queue and written by
//! a thread of its own: one for Raft messages, one for snapshot-transfer parts, so that
//! heartbeats and appends never wait behind snapshot bytes. A connection carries one
//! direction only (ours to the peer; the peer dials us for the other), starts with a
//! [`Hello`] each way, and is written in batches: everything queued for the peer when
//! the writer wakes goes out in one `write_all` (`TCP_NODELAY`, so nothing waits in the
//! kernel either). A full queue drops the message, as a lossy network would: Raft sends
//! again, and the consensus actor never waits on a slow or dead peer. A lost connection
//! is dialled again with capped, jittered backoff, resolving the peer's host name anew.
//!
//! The listener accepts the peers' connections, checks each [`Hello`] (the same group,
//! this node as the one meant, a peer it knows under the node id and Raft id it
//! claims), answers with its own or with a refusal (logged), then hands every frame to
//! the sink: a Raft message whose sender is the one the hello named, or a part. A
//! malformed or oversized frame closes the connection (logged); the peer dials again.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use raft::eraftpb::Message;

use super::frame::{self, Channel, Frame, FrameError, Hello};
use super::tls::{Tls, Wire};
use crate::actor::spawn_actor;
use crate::cluster::Transport;
use crate::cluster::transfer::Part;

mod accept;
mod dial;

use accept::Acceptor;
use dial::{WRITE_TIMEOUT, Writer};

/// A peer: its node id and where it listens (`host:port`, resolved at every dial).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    pub node_id: String,
    pub addr: String,
}

/// Who this node is, whom it talks to, and its links' limits.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The group's id: a hello naming another group is refused. 0 for a node that
    /// joins a group it does not know yet: it takes the id its peers answer with.
    pub group: u64,
    pub node_id: String,
    /// This node's Raft id (0 for a node that joins: the group's first message to it
    /// names it, see [`PeerLinks::set_raft_id`]).
    pub raft_id: u64,
    /// The peers by Raft id (this node left out): the founders.
    pub peers: BTreeMap<u64, PeerAddr>,
    /// For a node that joins: the members it may dial first, by node id (their Raft
    /// ids are learnt from their hellos).
    pub seeds: Vec<PeerAddr>,
    /// Where peers should dial this node, told them in every hello (a member added
    /// later is reached there).
    pub advertise: String,
    /// Messages queued per peer and channel; beyond it they are dropped: 4096.
    pub queue: usize,
    /// The largest frame read: 64 MiB (an append of many large entries fits).
    pub frame_limit: u32,
    /// The longest wait between two dials of a peer that does not answer: 2 s.
    pub backoff_max: Duration,
    /// Mutual TLS, if the links use it: each side's certificate checked against the
    /// CA and against the node id it claims.
    pub tls: Option<Tls>,
}

impl LinkConfig {
    /// The defaults for node `node_id` (Raft id `raft_id`) of group `group`.
    pub fn new(group: u64, node_id: &str, raft_id: u64) -> LinkConfig {
        LinkConfig {
            group,
            node_id: node_id.to_string(),
            raft_id,
            peers: BTreeMap::new(),
            seeds: Vec::new(),
            advertise: String::new(),
            queue: 4096,
            frame_limit: 64 << 20,
            backoff_max: Duration::from_secs(2),
            tls: None,
        }
    }
}

/// What a peer sent, for the node.
#[derive(Debug)]
pub enum Inbound {
    /// A Raft message, from the incarnation its sender's hello named.
    Raft(Message, u64),
    /// A part of a snapshot transfer from Raft id `from`.
    Part(u64, Part),
}

/// Counts of what the links did, for status and tests.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Messages dropped because a peer's queue was full.
    pub dropped: AtomicU64,
    /// Connections refused at their hello, and connections closed on a bad frame.
    pub refused: AtomicU64,
    pub malformed: AtomicU64,
    /// Connections made to peers.
    pub dialled: AtomicU64,
    /// The longest wait between two Raft frames from each peer (by Raft id) on one
    /// connection: how late a heartbeat came at worst.
    silences: std::sync::Mutex<BTreeMap<u64, Duration>>,
    /// Whether this node's Raft connection to each peer is up, by Raft id.
    connected: std::sync::Mutex<BTreeMap<u64, bool>>,
}

impl LinkCounters {
    /// The longest silence of each peer's Raft connection so far, by Raft id.
    pub fn longest_silences(&self) -> Vec<(u64, Duration)> {
        let s = self.silences.lock().expect("silences lock");
        s.iter().map(|(id, d)| (*id, *d)).collect()
    }

    /// Whether this node's Raft connection to each peer is up now, by Raft id.
    pub fn connections(&self) -> Vec<(u64, bool)> {
        let c = self.connected.lock().expect("connected lock");
        c.iter().map(|(id, up)| (*id, *up)).collect()
    }

    fn link(&self, to: u64, up: bool) {
        self.connected
            .lock()
            .expect("connected lock")
            .insert(to, up);
    }

    fn heard(&self, from: u64, silence: Duration) {
        let mut s = self.silences.lock().expect("silences lock");
        let longest = s.entry(from).or_default();
        *longest = (*longest).max(silence);
    }
}

/// A peer's two queues, one per connection.
struct Queues {
    raft: Sender<Frame>,
    parts: Sender<Frame>,
}

/// What every thread of the links shares.
struct Shared {
    config: LinkConfig,
    /// The group's id (for a joining node, 0 until a peer has told it).
    group: AtomicU64,
    /// This node's Raft id (for a joining node, 0 until the group's first message).
    me: AtomicU64,
    incarnation: AtomicU64,
    stop: AtomicBool,
    counters: Arc<LinkCounters>,
    /// Each peer's queues by Raft id: the founders', then members met since.
    queues: std::sync::RwLock<BTreeMap<u64, Queues>>,
    /// Members met since the start: Raft id, node id, address.
    met: std::sync::Mutex<BTreeMap<u64, PeerAddr>>,
    /// Peers whose Raft queue was full since the consensus actor last asked.
    full: std::sync::Mutex<std::collections::BTreeSet<u64>>,
    /// Node ids by Raft id, as the node knows them (members added later included),
    /// once it is open.
    roster: std::sync::OnceLock<crate::cluster::Roster>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Shared {
    fn hello(&self, to: &str, channel: Channel) -> Hello {
        Hello {
            version: frame::VERSION,
            group: self.group.load(Ordering::Acquire),
            node_id: self.config.node_id.clone(),
            raft_id: self.me.load(Ordering::Acquire),
            incarnation: self.incarnation.load(Ordering::Acquire),
            to: to.to_string(),
            channel,
            advertise: self.config.advertise.clone(),
        }
    }

    /// The node id `id` has in the node's roster, if it is open and knows it.
    fn named(&self, id: u64) -> Option<String> {
        let roster = self.roster.get()?;
        roster.read().expect("roster lock").get(&id).cloned()
    }

    /// The Raft id the node's roster gives `node_id`, if it knows one.
    fn id_of(&self, node_id: &str) -> Option<u64> {
        let roster = self.roster.get()?;
        let r = roster.read().expect("roster lock");
        r.iter().find(|(_, n)| *n == node_id).map(|(id, _)| *id)
    }

    /// Whom a peer's hello says it is, as this node accepts it: the Raft id its frames
    /// must come from, and where to dial it back (if it is a peer not dialled yet);
    /// or why it is refused.
    fn admit(&self, h: &Hello) -> Result<(u64, Option<PeerAddr>), String> {
        if h.version != frame::VERSION {
            return Err(format!(
                "frame version {}, not {}",
                h.version,
                frame::VERSION
            ));
        }
        let group = self.group.load(Ordering::Acquire);
        // A node that joins knows no group until a peer answers it (`h.group` 0).
        if h.group != group && !(h.group == 0 || group == 0) {
            return Err(format!(
                "{} belongs to group {:016x}, not {group:016x}",
                h.node_id, h.group
            ));
        }
        if h.to != self.config.node_id {
            return Err(format!(
                "it meant to reach {}, not {}",
                h.to, self.config.node_id
            ));
        }
        let back = || {
            (!h.advertise.is_empty()).then(|| PeerAddr {
                node_id: h.node_id.clone(),
                addr: h.advertise.clone(),
            })
        };
        // A founder, as every member's flags name it.
        if let Some(p) = self.config.peers.get(&h.raft_id) {
            return if p.node_id != h.node_id {
                Err(format!(
                    "Raft id {} is {}, not {}",
                    h.raft_id, p.node_id, h.node_id
                ))
            } else if h.group == 0 {
                Err(format!("{} names no group", h.node_id))
            } else {
                Ok((h.raft_id, None))
            };
        }
        // A member added since: the group's log names it (its Raft id given by the
        // leader); before it knows its Raft id, its hello says 0.
        if let Some(id) = self.id_of(&h.node_id) {
            if h.raft_id == id || h.raft_id == 0 {
                return Ok((id, back()));
            }
            return Err(format!(
                "Raft id {} is {}, not {}",
                h.raft_id,
                self.named(h.raft_id).unwrap_or_else(|| "no one".into()),
                h.node_id
            ));
        }
        // This node joins: its seeds, under whatever Raft id they give, once the group
        // is known.
        if h.raft_id != 0
            && h.group != 0
            && let Some(seed) = self.config.seeds.iter().find(|p| p.node_id == h.node_id)
        {
            return Ok((h.raft_id, Some(back().unwrap_or_else(|| seed.clone()))));
        }
        Err(format!(
            "{} (Raft id {}) is not a member {} knows",
            h.node_id, h.raft_id, self.config.node_id
        ))
    }
}

/// Starts the two writers of peer `id` at `peer`, unless it has them.
fn add_peer(shared: &Arc<Shared>, id: u64, peer: PeerAddr) -> std::io::Result<()> {
    let mut queues = shared.queues.write().expect("queues lock");
    if queues.contains_key(&id) || id == 0 {
        return Ok(());
    }
    let (raft_tx, raft_rx) = crossbeam_channel::bounded::<Frame>(shared.config.queue);
    let (part_tx, part_rx) = crossbeam_channel::bounded::<Frame>(shared.config.queue);
    let raft = Writer {
        shared: shared.clone(),
        peer: peer.clone(),
        id,
        channel: Channel::Raft,
    };
    let snapshot = Writer {
        channel: Channel::Snapshot,
        ..raft.clone()
    };
    let mut threads = shared.threads.lock().expect("threads lock");
    threads.push(spawn_actor(
        "peer-writer",
        |why| log::error!("a peer writer stopped: {why}"),
        move || raft.run(raft_rx),
    )?);
    threads.push(spawn_actor(
        "peer-parts",
        |why| log::error!("a peer writer stopped: {why}"),
        move || snapshot.run(part_rx),
    )?);
    queues.insert(
        id,
        Queues {
            raft: raft_tx,
            parts: part_tx,
        },
    );
    if !shared.config.peers.contains_key(&id) {
        log::info!(
            "{} (Raft id {id}) is reached at {}",
            peer.node_id,
            peer.addr
        );
        shared.met.lock().expect("met lock").insert(id, peer);
    }
    Ok(())
}

/// The outgoing side: implements [`Transport`]. Made by [`PeerLinks::start`].
pub struct Outgoing {
    shared: Arc<Shared>,
}

impl Transport for Outgoing {
    fn send(&self, msg: Message) {
        let to = msg.to;
        let queues = self.shared.queues.read().expect("queues lock");
        if let Some(q) = queues.get(&to)
            && let Err(TrySendError::Full(_)) = q.raft.try_send(Frame::Raft(msg))
        {
            self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            self.shared.full.lock().expect("full lock").insert(to);
        }
    }

    fn unreachable(&self) -> Vec<u64> {
        let mut full = self.shared.full.lock().expect("full lock");
        std::mem::take(&mut *full).into_iter().collect()
    }

    fn send_part(&self, to: u64, part: Part) {
        let from = self.shared.me.load(Ordering::Acquire);
        let queues = self.shared.queues.read().expect("queues lock");
        // Snapshot bytes on their own connection: heartbeats never wait behind them.
        if let Some(q) = queues.get(&to)
            && let Err(TrySendError::Full(_)) = q.parts.try_send(Frame::Part { from, to, part })
        {
            self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The links' threads, joined by [`PeerLinks::shutdown`].
pub struct PeerLinks {
    shared: Arc<Shared>,
    local: SocketAddr,
    pub counters: Arc<LinkCounters>,
}

impl PeerLinks {
    /// Starts the writers (one per peer and channel) and the listener on `listener`,
    /// which hands what peers send to `sink`. Returns the links and the [`Transport`]
    /// to give the node. Every thread ends at [`PeerLinks::shutdown`] (within a dial's
    /// timeouts: a few seconds at most); a writer also ends when the transport is
    /// dropped.
    ///
    /// # Errors
    /// A thread could not be started, or the listener's address is unknown.
    pub fn start(
        config: LinkConfig,
        listener: TcpListener,
        sink: impl Fn(Inbound) + Send + Sync + 'static,
    ) -> std::io::Result<(PeerLinks, Outgoing)> {
        let counters = Arc::new(LinkCounters::default());
        let shared = Arc::new(Shared {
            group: AtomicU64::new(config.group),
            me: AtomicU64::new(config.raft_id),
            incarnation: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            counters: counters.clone(),
            queues: std::sync::RwLock::default(),
            met: std::sync::Mutex::default(),
            full: std::sync::Mutex::default(),
            roster: std::sync::OnceLock::new(),
            threads: std::sync::Mutex::default(),
            config,
        });
        for (&id, peer) in &shared.config.peers {
            add_peer(&shared, id, peer.clone())?;
        }
        let local = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let acceptor = Acceptor {
            shared: shared.clone(),
            sink: Arc::new(sink),
        };
        let t = spawn_actor(
            "peer-listener",
            |why| log::error!("the peer listener stopped: {why}"),
            move || acceptor.run(listener),
        )?;
        shared.threads.lock().expect("threads lock").push(t);
        let links = PeerLinks {
            shared: shared.clone(),
            local,
            counters,
        };
        Ok((links, Outgoing { shared }))
    }

    /// Sets this node's incarnation (known once the node has opened its directory):
    /// until then nothing is sent and no peer is answered (but a node that joins
    /// answers the group's first dial, which names its Raft id).
    pub fn set_incarnation(&self, incarnation: u64) {
        self.shared
            .incarnation
            .store(incarnation, Ordering::Release);
    }

    /// Sets this node's Raft id (a node that joins learns it from the group's first
    /// message to it).
    pub fn set_raft_id(&self, id: u64) {
        self.shared.me.store(id, Ordering::Release);
    }

    /// The node's roster, which vets members added since the start.
    pub fn set_roster(&self, roster: crate::cluster::Roster) {
        let _ = self.shared.roster.set(roster);
    }

    /// The group's id as the links know it (a joining node learns it from its peers).
    pub fn group(&self) -> u64 {
        self.shared.group.load(Ordering::Acquire)
    }

    /// Members met since the start (not founders): Raft id, node id and address.
    pub fn met(&self) -> Vec<(u64, PeerAddr)> {
        let met = self.shared.met.lock().expect("met lock");
        met.iter().map(|(id, p)| (*id, p.clone())).collect()
    }

    /// Dials `peer` (Raft id `id`) from now on, as a member met before (recorded by
    /// the node across restarts).
    ///
    /// # Errors
    /// Its writers could not be started.
    pub fn meet(&self, id: u64, peer: PeerAddr) -> std::io::Result<()> {
        add_peer(&self.shared, id, peer)
    }

    /// Dials each seed to say where this node listens: a node that joins, until the
    /// group's first message names its Raft id (the members that added it dial it
    /// back); a member that joined earlier and starts again, once per seed (the seeds
    /// dial it back, and it learns their Raft ids from their hellos).
    pub fn announce(&self) {
        for seed in self.shared.config.seeds.clone() {
            let w = Writer {
                shared: self.shared.clone(),
                peer: seed,
                id: 0,
                channel: Channel::Raft,
            };
            let handle = std::thread::Builder::new()
                .name("peer-announce".into())
                .spawn(move || {
                    let mut wait = Duration::from_millis(100);
                    while !w.shared.stop.load(Ordering::Acquire) {
                        let known = w.shared.me.load(Ordering::Acquire) != 0;
                        match w.dial() {
                            Ok(_) if known => break,
                            Ok(_) => {}
                            Err(why) => log::debug!("announcing to {}: {why}", w.peer.node_id),
                        }
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(Duration::from_secs(2));
                        if !known && w.shared.me.load(Ordering::Acquire) != 0 {
                            break;
                        }
                    }
                });
            if let Ok(h) = handle {
                self.shared.threads.lock().expect("threads lock").push(h);
            }
        }
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops the listener, every connection and the writers, and waits for their
    /// threads: then nothing more reaches the sink.
    pub fn shutdown(self) {
        self.shared.stop.store(true, Ordering::Release);
        loop {
            let next = self.shared.threads.lock().expect("threads lock").pop();
            match next {
                Some(t) => {
                    let _ = t.join();
                }
                None => break,
            }
        }
    }
}

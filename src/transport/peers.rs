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

/// A peer: its node id and where it listens (`host:port`, resolved at every dial).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    pub node_id: String,
    pub addr: String,
}

/// Who this node is, whom it talks to, and its links' limits.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The group's id: a hello naming another group is refused.
    pub group: u64,
    pub node_id: String,
    pub raft_id: u64,
    /// The peers by Raft id (this node left out).
    pub peers: BTreeMap<u64, PeerAddr>,
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
            queue: 4096,
            frame_limit: 64 << 20,
            backoff_max: Duration::from_secs(2),
            tls: None,
        }
    }

    fn hello(&self, to: &str, channel: Channel, incarnation: u64) -> Hello {
        Hello {
            version: frame::VERSION,
            group: self.group,
            node_id: self.node_id.clone(),
            raft_id: self.raft_id,
            incarnation,
            to: to.to_string(),
            channel,
        }
    }

    /// Why a peer's hello is refused, if it is.
    fn refuse(&self, h: &Hello) -> Option<String> {
        if h.version != frame::VERSION {
            return Some(format!(
                "frame version {}, not {}",
                h.version,
                frame::VERSION
            ));
        }
        if h.group != self.group {
            return Some(format!(
                "{} belongs to group {:016x}, not {:016x}",
                h.node_id, h.group, self.group
            ));
        }
        if h.to != self.node_id {
            return Some(format!("it meant to reach {}, not {}", h.to, self.node_id));
        }
        match self.peers.get(&h.raft_id) {
            Some(p) if p.node_id == h.node_id => None,
            Some(p) => Some(format!(
                "Raft id {} is {}, not {}",
                h.raft_id, p.node_id, h.node_id
            )),
            None => Some(format!(
                "{} (Raft id {}) is not a peer of {}",
                h.node_id, h.raft_id, self.node_id
            )),
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
}

impl LinkCounters {
    /// The longest silence of each peer's Raft connection so far, by Raft id.
    pub fn longest_silences(&self) -> Vec<(u64, Duration)> {
        let s = self.silences.lock().expect("silences lock");
        s.iter().map(|(id, d)| (*id, *d)).collect()
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

/// The outgoing side: implements [`Transport`]. Made by [`PeerLinks::start`].
pub struct Outgoing {
    /// This node's Raft id.
    me: u64,
    queues: BTreeMap<u64, Queues>,
    counters: Arc<LinkCounters>,
}

impl Transport for Outgoing {
    fn send(&self, msg: Message) {
        if let Some(q) = self.queues.get(&msg.to)
            && let Err(TrySendError::Full(_)) = q.raft.try_send(Frame::Raft(msg))
        {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn send_part(&self, to: u64, part: Part) {
        let (from, to) = (self.me, to);
        // Snapshot bytes on their own connection: heartbeats never wait behind them.
        if let Some(q) = self.queues.get(&to)
            && let Err(TrySendError::Full(_)) = q.parts.try_send(Frame::Part { from, to, part })
        {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The links' threads, joined by [`PeerLinks::shutdown`].
pub struct PeerLinks {
    stop: Arc<AtomicBool>,
    incarnation: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
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
        let stop = Arc::new(AtomicBool::new(false));
        let incarnation = Arc::new(AtomicU64::new(0));
        let counters = Arc::new(LinkCounters::default());
        let links_me = config.raft_id;
        let config = Arc::new(config);
        let mut threads = Vec::new();
        let mut queues = BTreeMap::new();
        for (&id, peer) in &config.peers {
            let (raft_tx, raft_rx) = crossbeam_channel::bounded::<Frame>(config.queue);
            let (part_tx, part_rx) = crossbeam_channel::bounded::<Frame>(config.queue);
            queues.insert(
                id,
                Queues {
                    raft: raft_tx,
                    parts: part_tx,
                },
            );
            let raft = Writer {
                config: config.clone(),
                peer: peer.clone(),
                channel: Channel::Raft,
                stop: stop.clone(),
                incarnation: incarnation.clone(),
                counters: counters.clone(),
            };
            let snapshot = Writer {
                channel: Channel::Snapshot,
                ..raft.clone()
            };
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
        }
        let local = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let acceptor = Acceptor {
            config,
            stop: stop.clone(),
            incarnation: incarnation.clone(),
            counters: counters.clone(),
            sink: Arc::new(sink),
        };
        threads.push(spawn_actor(
            "peer-listener",
            |why| log::error!("the peer listener stopped: {why}"),
            move || acceptor.run(listener),
        )?);
        let links = PeerLinks {
            stop,
            incarnation,
            threads,
            local,
            counters: counters.clone(),
        };
        let me = links_me;
        Ok((
            links,
            Outgoing {
                me,
                queues,
                counters,
            },
        ))
    }

    /// Sets this node's incarnation (known once the node has opened its directory):
    /// until then nothing is sent and no peer is answered.
    pub fn set_incarnation(&self, incarnation: u64) {
        self.incarnation.store(incarnation, Ordering::Release);
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops the listener, every connection and the writers, and waits for their
    /// threads: then nothing more reaches the sink.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One outgoing connection to one peer, and the thread that keeps it up.
#[derive(Clone)]
struct Writer {
    config: Arc<LinkConfig>,
    peer: PeerAddr,
    channel: Channel,
    stop: Arc<AtomicBool>,
    incarnation: Arc<AtomicU64>,
    counters: Arc<LinkCounters>,
}

/// How long a writer waits for its queue before it looks at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// How long one write to a peer may block (the peer reads nothing, its buffers are
/// full) before the link is given up and dialled again.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

impl Writer {
    fn run(&self, queue: Receiver<Frame>) {
        let mut backoff = Duration::from_millis(20);
        let mut conn: Option<Wire> = None;
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut jitter = Jitter::new(self.config.raft_id ^ self.peer.addr.len() as u64);
        loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let first = match queue.recv_timeout(POLL) {
                Ok(item) => item,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let stream = match &mut conn {
                Some(s) => s,
                None => match self.dial() {
                    Ok(s) => {
                        backoff = Duration::from_millis(20);
                        conn.insert(s)
                    }
                    Err(why) => {
                        log::debug!(
                            "{} cannot reach {}: {why}",
                            self.config.node_id,
                            self.peer.node_id
                        );
                        // What was queued meanwhile is stale: Raft sends again.
                        drop(first);
                        while queue.try_recv().is_ok() {}
                        std::thread::sleep(jitter.around(backoff));
                        backoff = (backoff * 2).min(self.config.backoff_max);
                        continue;
                    }
                },
            };
            buf.clear();
            frame::encode(&first, &mut buf);
            for item in queue.try_iter().take(1024) {
                frame::encode(&item, &mut buf);
            }
            if let Err(e) = stream.write_all(&buf).and_then(|()| stream.flush()) {
                log::debug!("the link to {} broke: {e}", self.peer.node_id);
                conn = None;
            }
        }
    }

    /// Connects to the peer (resolving its address now) and exchanges hellos.
    fn dial(&self) -> Result<Wire, String> {
        let incarnation = self.incarnation.load(Ordering::Acquire);
        if incarnation == 0 {
            return Err("this node's incarnation is not known yet".into());
        }
        let addrs: Vec<SocketAddr> = self
            .peer
            .addr
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.peer.addr))?
            .collect();
        let mut last = format!("{} resolves to no address", self.peer.addr);
        for a in addrs {
            match TcpStream::connect_timeout(&a, Duration::from_secs(1)) {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    // A peer that stops reading fails the write instead of holding
                    // the writer (and its shutdown) forever: the link is dialled again.
                    tcp.set_write_timeout(Some(WRITE_TIMEOUT))
                        .map_err(|e| e.to_string())?;
                    tcp.set_read_timeout(Some(Duration::from_secs(5)))
                        .map_err(|e| e.to_string())?;
                    let mut s = Wire::dialled(tcp, self.config.tls.as_ref(), &self.peer.node_id)?;
                    let mut hello = Vec::new();
                    frame::encode(
                        &Frame::Hello(self.config.hello(
                            &self.peer.node_id,
                            self.channel,
                            incarnation,
                        )),
                        &mut hello,
                    );
                    s.write_all(&hello)
                        .and_then(|()| s.flush())
                        .map_err(|e| e.to_string())?;
                    let answer = frame::read(&mut s, 64 * 1024).map_err(|e| e.to_string())?;
                    return match answer {
                        Frame::Hello(h)
                            if h.group == self.config.group && h.node_id == self.peer.node_id =>
                        {
                            self.counters.dialled.fetch_add(1, Ordering::Relaxed);
                            Ok(s)
                        }
                        Frame::Hello(h) => Err(format!(
                            "{} answered as {} of group {:016x}",
                            self.peer.addr, h.node_id, h.group
                        )),
                        Frame::Refused(why) => {
                            log::warn!(
                                "{} refused {}: {why}",
                                self.peer.node_id,
                                self.config.node_id
                            );
                            Err(format!("refused: {why}"))
                        }
                        other => Err(format!("answered {other:?}")),
                    };
                }
                Err(e) => last = format!("{a}: {e}"),
            }
        }
        Err(last)
    }
}

/// The listener's side.
struct Acceptor {
    config: Arc<LinkConfig>,
    stop: Arc<AtomicBool>,
    incarnation: Arc<AtomicU64>,
    counters: Arc<LinkCounters>,
    sink: Arc<dyn Fn(Inbound) + Send + Sync>,
}

impl Acceptor {
    fn run(self, listener: TcpListener) {
        let mut readers = Vec::new();
        while !self.stop.load(Ordering::Acquire) {
            match listener.accept() {
                Ok((stream, from)) => {
                    let _ = stream.set_nonblocking(false);
                    let Ok(handle) = stream.try_clone() else {
                        continue;
                    };
                    let reader = Reader {
                        config: self.config.clone(),
                        incarnation: self.incarnation.clone(),
                        counters: self.counters.clone(),
                        sink: self.sink.clone(),
                    };
                    match spawn_actor(
                        "peer-reader",
                        |why| log::error!("a peer reader stopped: {why}"),
                        move || reader.run(stream, from),
                    ) {
                        Ok(t) => readers.push((t, handle)),
                        Err(e) => log::warn!("cannot read from {from}: {e}"),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    log::warn!("accepting a peer connection failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            readers.retain(|(t, _): &(std::thread::JoinHandle<()>, TcpStream)| !t.is_finished());
        }
        // Every connection ends with the listener: its reader sees end of input.
        for (t, stream) in readers {
            let _ = stream.shutdown(Shutdown::Both);
            let _ = t.join();
        }
    }
}

struct Reader {
    config: Arc<LinkConfig>,
    incarnation: Arc<AtomicU64>,
    counters: Arc<LinkCounters>,
    sink: Arc<dyn Fn(Inbound) + Send + Sync>,
}

impl Reader {
    fn run(self, stream: TcpStream, from: SocketAddr) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let wire = match Wire::accepted(stream, self.config.tls.as_ref()) {
            Ok(w) => w,
            Err(why) => return self.malformed(from, &why),
        };
        let mut r = BufReader::with_capacity(256 * 1024, wire);
        let hello = match frame::read(&mut r, 64 * 1024) {
            Ok(Frame::Hello(h)) => h,
            Ok(other) => return self.malformed(from, &format!("{other:?} before a hello")),
            Err(e) => return self.malformed(from, &e.to_string()),
        };
        let mut answer = Vec::new();
        let incarnation = self.incarnation.load(Ordering::Acquire);
        let refusal = if incarnation == 0 {
            Some(format!("{} is still starting", self.config.node_id))
        } else if r.get_ref().peer_named(&hello.node_id) == Some(false) {
            Some(format!(
                "its certificate does not name {}, the node id its hello claims",
                hello.node_id
            ))
        } else {
            self.config.refuse(&hello)
        };
        if let Some(why) = refusal {
            log::warn!("refused a peer connection from {from}: {why}");
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            frame::encode(&Frame::Refused(why), &mut answer);
            let w = r.get_mut();
            let _ = w.write_all(&answer).and_then(|()| w.flush());
            return;
        }
        frame::encode(
            &Frame::Hello(
                self.config
                    .hello(&hello.node_id, hello.channel, incarnation),
            ),
            &mut answer,
        );
        let w = r.get_mut();
        if w.write_all(&answer).and_then(|()| w.flush()).is_err() {
            return;
        }
        r.get_ref().set_read_timeout(None);
        let mut last = std::time::Instant::now();
        loop {
            match frame::read(&mut r, self.config.frame_limit) {
                Ok(Frame::Raft(m)) if m.from == hello.raft_id && m.to == self.config.raft_id => {
                    self.counters.heard(hello.raft_id, last.elapsed());
                    last = std::time::Instant::now();
                    (self.sink)(Inbound::Raft(m, hello.incarnation))
                }
                Ok(Frame::Part { from: f, to, part })
                    if f == hello.raft_id && to == self.config.raft_id =>
                {
                    (self.sink)(Inbound::Part(f, part))
                }
                Ok(other) => {
                    return self.malformed(
                        from,
                        &format!("{other:?} on the link from {}", hello.node_id),
                    );
                }
                Err(FrameError::Io(_)) => return,
                Err(e) => return self.malformed(from, &e.to_string()),
            }
        }
    }

    fn malformed(&self, from: SocketAddr, why: &str) {
        log::warn!("closed a peer connection from {from}: {why}");
        self.counters.malformed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A small generator for backoff jitter (xorshift; no need for a good one).
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Jitter {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter((seed ^ t ^ 0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// `d` scaled by a factor drawn in [0.5, 1.5).
    fn around(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        d.mul_f64(0.5 + (self.0 % 1000) as f64 / 1000.0)
    }
}

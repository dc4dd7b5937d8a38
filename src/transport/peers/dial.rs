//! A peer link's outgoing side: one connection to one peer per channel, dialled with
//! capped, jittered backoff (the host resolved anew each time), greeted with a hello,
//! and written in batches from its bounded queue.

use super::*;

/// One outgoing connection to one peer, and the thread that keeps it up.
#[derive(Clone)]
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) peer: PeerAddr,
    /// The peer's Raft id (0: not known, a seed announced to).
    pub(super) id: u64,
    pub(super) channel: Channel,
}

/// How long a writer waits for its queue before it looks at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// How long one write to a peer may block (the peer reads nothing, its buffers are
/// full) before the link is given up and dialled again.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

impl Writer {
    pub(super) fn run(&self, queue: Receiver<Frame>) {
        let mut backoff = Duration::from_millis(20);
        let mut conn: Option<Wire> = None;
        let mut buf = Vec::with_capacity(64 * 1024);
        let seed = self.shared.me.load(Ordering::Acquire) ^ self.peer.addr.len() as u64;
        let mut jitter = Jitter::new(seed);
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
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
                        self.up(true);
                        conn.insert(s)
                    }
                    Err(why) => {
                        self.up(false);
                        log::debug!(
                            "{} cannot reach {}: {why}",
                            self.shared.config.node_id,
                            self.peer.node_id
                        );
                        // What was queued meanwhile is stale: Raft sends again.
                        drop(first);
                        while queue.try_recv().is_ok() {}
                        std::thread::sleep(jitter.around(backoff));
                        backoff = (backoff * 2).min(self.shared.config.backoff_max);
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
                self.up(false);
                conn = None;
            }
        }
    }

    /// Records the Raft connection's state for the metrics.
    fn up(&self, up: bool) {
        if self.channel == Channel::Raft && self.id != 0 {
            self.shared.counters.link(self.id, up);
        }
    }

    /// Connects to the peer (resolving its address now) and exchanges hellos.
    pub(super) fn dial(&self) -> Result<Wire, String> {
        let joining = self.shared.me.load(Ordering::Acquire) == 0;
        if self.shared.incarnation.load(Ordering::Acquire) == 0 && !joining {
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
                    let tls = self.shared.config.tls.as_ref();
                    let mut s = Wire::dialled(tcp, tls, &self.peer.node_id)?;
                    let mut hello = Vec::new();
                    let ours = self.shared.hello(&self.peer.node_id, self.channel);
                    frame::encode(&Frame::Hello(ours), &mut hello);
                    s.write_all(&hello)
                        .and_then(|()| s.flush())
                        .map_err(|e| e.to_string())?;
                    let answer = frame::read(&mut s, 64 * 1024).map_err(|e| e.to_string())?;
                    return match answer {
                        Frame::Hello(h) if h.node_id == self.peer.node_id => {
                            self.answered(&h)?;
                            self.shared.counters.dialled.fetch_add(1, Ordering::Relaxed);
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
                                self.shared.config.node_id
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

    /// Checks the peer's answering hello: its group is ours (a joining node takes it
    /// from the first peer that answers).
    fn answered(&self, h: &Hello) -> Result<(), String> {
        let group = self.shared.group.load(Ordering::Acquire);
        if group == 0 && h.group != 0 {
            match self.shared.group.compare_exchange(
                0,
                h.group,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    log::info!("joining group {:016x}, as {} says", h.group, h.node_id);
                    return Ok(());
                }
                Err(now) if now == h.group => return Ok(()),
                Err(now) => {
                    return Err(format!(
                        "{} answered for group {:016x}, not {now:016x}",
                        h.node_id, h.group
                    ));
                }
            }
        }
        if h.group != group {
            return Err(format!(
                "{} answered for group {:016x}, not {group:016x}",
                self.peer.addr, h.group
            ));
        }
        Ok(())
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

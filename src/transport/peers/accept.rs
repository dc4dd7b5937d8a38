//! A peer link's incoming side: the listener, and a reader per accepted connection
//! that checks the peer's hello, answers it, and hands each frame to the sink.

use super::*;

/// The listener's side.
pub(super) struct Acceptor {
    pub(super) shared: Arc<Shared>,
    pub(super) sink: Arc<dyn Fn(Inbound) + Send + Sync>,
}

impl Acceptor {
    pub(super) fn run(self, listener: TcpListener) {
        let mut readers = Vec::new();
        while !self.shared.stop.load(Ordering::Acquire) {
            match listener.accept() {
                Ok((stream, from)) => {
                    let _ = stream.set_nonblocking(false);
                    let Ok(handle) = stream.try_clone() else {
                        continue;
                    };
                    let reader = Reader {
                        shared: self.shared.clone(),
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
    shared: Arc<Shared>,
    sink: Arc<dyn Fn(Inbound) + Send + Sync>,
}

impl Reader {
    fn run(self, stream: TcpStream, from: SocketAddr) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let wire = match Wire::accepted(stream, self.shared.config.tls.as_ref()) {
            Ok(w) => w,
            Err(why) => return self.malformed(from, &why),
        };
        let mut r = BufReader::with_capacity(256 * 1024, wire);
        let hello = match frame::read(&mut r, 64 * 1024) {
            Ok(Frame::Hello(h)) => h,
            Ok(other) => return self.malformed(from, &format!("{other:?} before a hello")),
            Err(e) => return self.malformed(from, &e.to_string()),
        };
        let shared = &self.shared;
        let joining = shared.me.load(Ordering::Acquire) == 0;
        let admitted = if shared.incarnation.load(Ordering::Acquire) == 0 && !joining {
            Err(format!("{} is still starting", shared.config.node_id))
        } else if r.get_ref().peer_named(&hello.node_id) == Some(false) {
            Err(format!(
                "its certificate does not name {}, the node id its hello claims",
                hello.node_id
            ))
        } else {
            shared.admit(&hello)
        };
        let mut answer = Vec::new();
        let sender = match admitted {
            Ok((id, back)) => {
                if let Some(peer) = back
                    && let Err(e) = add_peer(shared, id, peer)
                {
                    log::warn!("cannot dial {} back: {e}", hello.node_id);
                }
                id
            }
            Err(why) => {
                log::warn!("refused a peer connection from {from}: {why}");
                shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                frame::encode(&Frame::Refused(why), &mut answer);
                let w = r.get_mut();
                let _ = w.write_all(&answer).and_then(|()| w.flush());
                return;
            }
        };
        if shared.group.load(Ordering::Acquire) == 0 && hello.group != 0 {
            let _ =
                shared
                    .group
                    .compare_exchange(0, hello.group, Ordering::AcqRel, Ordering::Acquire);
        }
        frame::encode(
            &Frame::Hello(shared.hello(&hello.node_id, hello.channel)),
            &mut answer,
        );
        let w = r.get_mut();
        if w.write_all(&answer).and_then(|()| w.flush()).is_err() {
            return;
        }
        r.get_ref().set_read_timeout(None);
        let mut last = std::time::Instant::now();
        loop {
            let me = shared.me.load(Ordering::Acquire);
            match frame::read(&mut r, shared.config.frame_limit) {
                // A node that joins takes the first message's `to` as its Raft id.
                Ok(Frame::Raft(m)) if m.from == sender && (m.to == me || me == 0) => {
                    if me == 0 && m.to != 0 {
                        let _ = shared.me.compare_exchange(
                            0,
                            m.to,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                    }
                    shared.counters.heard(sender, last.elapsed());
                    last = std::time::Instant::now();
                    (self.sink)(Inbound::Raft(m, hello.incarnation))
                }
                Ok(Frame::Part { from: f, to, part }) if f == sender && to == me => {
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
        self.shared
            .counters
            .malformed
            .fetch_add(1, Ordering::Relaxed);
    }
}

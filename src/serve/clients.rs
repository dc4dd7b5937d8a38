//! The client listener of a served node: many connections, each read by a thread of
//! its own into the router's input (lines tagged with the connection's id), each
//! written by a thread of its own from a bounded queue of replies.
//!
//! What one client cannot do to the others: an endless line is dropped at the
//! router's line limit, as on stdin; a client that does not read its replies fills
//! its own queue and is disconnected (logged); connections beyond the limit are
//! answered with error 11 and closed. Readers share one bounded input queue, so a
//! client that sends faster than the node answers waits in TCP's flow control.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};

use crate::actor::spawn_actor;
use crate::router::{Connection, Item, Outlet, read_lines};

/// Reply batches queued per connection; a client that lets this many pile up does
/// not read its replies and is disconnected.
const REPLY_BATCHES: usize = 256;

/// Bytes gathered for one connection before they are handed to its writer, even in
/// the middle of a burst of replies.
const BATCH_BYTES: usize = 256 * 1024;

/// How long a write to a client may block (it reads nothing) before it is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener's limits.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// Most connections open at once: 1024.
    pub connections_max: usize,
    /// Longest line read (the router's limit).
    pub line_bytes_max: usize,
}

/// Accepts clients until `stop` is set; then stops reading every connection (their
/// replies still go out) and returns once every reader has ended. Writers go on
/// until the router drops their queues; their threads are pushed to `writers`.
pub(super) struct Listener {
    pub(super) limits: ClientLimits,
    pub(super) node_id: String,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) input: Sender<Vec<Item>>,
    pub(super) writers: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    /// TLS for clients, if they must use it.
    pub(super) tls: Option<Arc<rustls::ServerConfig>>,
    /// Another sender of the router's input, dropped with the listener's own when it
    /// stops (so that the input ends).
    pub(super) also_input: Arc<std::sync::Mutex<Option<Sender<Vec<Item>>>>>,
}

impl Listener {
    pub(super) fn run(self, listener: TcpListener) {
        let _ = listener.set_nonblocking(true);
        let open = Arc::new(AtomicUsize::new(0));
        let mut readers: Vec<(JoinHandle<()>, TcpStream)> = Vec::new();
        let mut next = 1u64;
        while !self.stop.load(Ordering::Acquire) {
            match listener.accept() {
                Ok((stream, from)) => {
                    let conn = next;
                    next += 1;
                    if open.load(Ordering::Acquire) >= self.limits.connections_max {
                        self.refuse(stream, from);
                        continue;
                    }
                    match self.start(conn, stream, &open) {
                        Ok(reader) => readers.push(reader),
                        Err(e) => log::warn!("cannot serve client {from}: {e}"),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    log::warn!("accepting a client connection failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            readers.retain(|(t, _)| !t.is_finished());
        }
        self.also_input.lock().expect("input lock").take();
        // No more requests: each reader sees the end of its input, hands over what it
        // read and ends; the router answers what it took.
        for (t, stream) in readers {
            let _ = stream.shutdown(Shutdown::Read);
            let _ = t.join();
        }
    }

    /// Starts connection `conn`'s writer and reader; returns the reader and a handle
    /// on the stream to stop it.
    fn start(
        &self,
        conn: u64,
        stream: TcpStream,
        open: &Arc<AtomicUsize>,
    ) -> std::io::Result<(JoinHandle<()>, TcpStream)> {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let raw = stream.try_clone()?;
        let closer = stream.try_clone()?;
        let handle = stream.try_clone()?;
        let (input, mut write): (Box<dyn Read + Send>, Box<dyn Write + Send>) = match &self.tls {
            Some(config) => {
                let (r, w) = crate::transport::tls::split(stream, config.clone())?;
                (Box::new(r), Box::new(w))
            }
            None => (Box::new(stream.try_clone()?), Box::new(stream)),
        };
        let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(REPLY_BATCHES);
        let writer = spawn_actor(
            "client-writer",
            |why| log::error!("a client writer stopped: {why}"),
            move || {
                for batch in rx {
                    if let Err(e) = write.write_all(&batch).and_then(|()| write.flush()) {
                        log::debug!("writing to client connection {conn} failed: {e}");
                        let _ = raw.shutdown(Shutdown::Both);
                        return;
                    }
                }
                let _ = raw.shutdown(Shutdown::Write);
            },
        )?;
        self.writers.lock().expect("writers lock").push(writer);
        let connection = Connection {
            tx,
            close: Box::new(move || {
                let _ = closer.shutdown(Shutdown::Both);
            }),
        };
        // The router learns of the connection before any of its lines.
        if self
            .input
            .send(vec![Item::Opened(conn, connection)])
            .is_err()
        {
            return Err(std::io::Error::other("the router has stopped"));
        }
        open.fetch_add(1, Ordering::AcqRel);
        let (items, max, open) = (self.input.clone(), self.limits.line_bytes_max, open.clone());
        let reader = spawn_actor(
            "client-reader",
            |why| log::error!("a client reader stopped: {why}"),
            move || {
                read_lines(input, max, conn, items);
                open.fetch_sub(1, Ordering::AcqRel);
            },
        )?;
        Ok((reader, handle))
    }

    /// Answers a connection over the limit with error 11 and closes it.
    fn refuse(&self, mut stream: TcpStream, from: std::net::SocketAddr) {
        log::warn!(
            "client {from} refused: {} connections are open, the limit \
             (--client-connections-max)",
            self.limits.connections_max
        );
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
        let line = format!(
            "{{\"src\": \"{}\", \"dest\": \"\", \"body\": {{\"type\": \"error\", \"code\": 11, \
             \"text\": \"too many connections: try again later, or another node\"}}}}\n",
            self.node_id
        );
        let _ = stream.write_all(line.as_bytes());
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// The replies of every open connection, gathered per connection and handed to its
/// writer when the router flushes.
#[derive(Default)]
pub(super) struct Conns {
    open: HashMap<u64, Conn>,
    /// Connections with replies gathered since the last flush.
    dirty: Vec<u64>,
}

struct Conn {
    connection: Connection,
    pending: Vec<u8>,
    /// Requests taken whose replies have not been written yet.
    in_flight: usize,
    /// The client sends nothing more: closed once `in_flight` is 0.
    ended: bool,
}

impl Conns {
    /// Hands `conn`'s gathered replies to its writer; returns whether the connection
    /// stays open.
    fn hand_over(&mut self, conn: u64) -> bool {
        let Some(c) = self.open.get_mut(&conn) else {
            return false;
        };
        if !c.pending.is_empty() {
            match c.connection.tx.try_send(std::mem::take(&mut c.pending)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    log::warn!(
                        "client connection {conn} does not read its replies: {REPLY_BATCHES} \
                         batches wait for it; disconnected"
                    );
                    (c.connection.close)();
                    self.open.remove(&conn);
                    return false;
                }
                Err(TrySendError::Disconnected(_)) => {
                    // Its writer gave up (a write timed out): stop reading it too.
                    (c.connection.close)();
                    self.open.remove(&conn);
                    return false;
                }
            }
        }
        if c.ended && c.in_flight == 0 {
            // Dropping the queue ends the writer once it has written what it holds.
            self.open.remove(&conn);
            return false;
        }
        true
    }
}

impl Outlet for Conns {
    fn opened(&mut self, conn: u64, connection: Connection) {
        self.open.insert(
            conn,
            Conn {
                connection,
                pending: Vec::new(),
                in_flight: 0,
                ended: false,
            },
        );
    }

    fn request(&mut self, conn: u64) {
        if let Some(c) = self.open.get_mut(&conn) {
            c.in_flight += 1;
        }
    }

    fn reply(&mut self, conn: u64, line: &[u8]) {
        let Some(c) = self.open.get_mut(&conn) else {
            return;
        };
        c.in_flight = c.in_flight.saturating_sub(1);
        if c.pending.is_empty() {
            self.dirty.push(conn);
        }
        c.pending.extend_from_slice(line);
        if c.pending.len() >= BATCH_BYTES {
            self.hand_over(conn);
        }
    }

    fn closed(&mut self, conn: u64) {
        if let Some(c) = self.open.get_mut(&conn) {
            c.ended = true;
            self.dirty.push(conn);
        }
    }

    fn peer(&mut self, _line: &[u8]) {
        debug_assert!(false, "a served node reaches its peers over its own links");
    }

    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for conn in dirty {
            self.hand_over(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> (
        Connection,
        crossbeam_channel::Receiver<Vec<u8>>,
        Arc<AtomicBool>,
    ) {
        let (tx, rx) = crossbeam_channel::bounded(REPLY_BATCHES);
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let close = Box::new(move || flag.store(true, Ordering::Release));
        (Connection { tx, close }, rx, closed)
    }

    #[test]
    fn replies_go_to_their_own_connection_in_one_batch_per_flush() {
        let mut conns = Conns::default();
        let (a, a_rx, _) = connection();
        let (b, b_rx, _) = connection();
        conns.opened(1, a);
        conns.opened(2, b);
        for _ in 0..3 {
            conns.request(1);
        }
        conns.request(2);
        conns.reply(1, b"a1\n");
        conns.reply(2, b"b1\n");
        conns.reply(1, b"a2\n");
        conns.flush();
        assert_eq!(a_rx.try_recv().unwrap(), b"a1\na2\n");
        assert!(a_rx.try_recv().is_err());
        assert_eq!(b_rx.try_recv().unwrap(), b"b1\n");
        conns.flush();
        assert!(a_rx.try_recv().is_err(), "nothing new, nothing sent");
    }

    #[test]
    fn an_ended_connection_is_closed_only_after_its_last_reply() {
        let mut conns = Conns::default();
        let (a, a_rx, _) = connection();
        conns.opened(1, a);
        conns.request(1);
        conns.closed(1);
        conns.flush();
        assert!(conns.open.contains_key(&1), "a reply is still owed");
        conns.reply(1, b"last\n");
        conns.flush();
        assert_eq!(a_rx.try_recv().unwrap(), b"last\n");
        assert!(!conns.open.contains_key(&1));
        assert!(matches!(
            a_rx.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn a_client_that_does_not_read_is_disconnected_and_the_others_are_not() {
        let mut conns = Conns::default();
        let (slow, _slow_rx, slow_closed) = connection();
        let (fast, fast_rx, fast_closed) = connection();
        conns.opened(1, slow);
        conns.opened(2, fast);
        for i in 0..=REPLY_BATCHES {
            conns.request(1);
            conns.request(2);
            conns.reply(1, b"x\n");
            conns.reply(2, b"y\n");
            conns.flush();
            assert_eq!(fast_rx.try_recv().unwrap(), b"y\n", "batch {i}");
        }
        assert!(slow_closed.load(Ordering::Acquire));
        assert!(!fast_closed.load(Ordering::Acquire));
        assert!(!conns.open.contains_key(&1));
        assert!(conns.open.contains_key(&2));
    }
}

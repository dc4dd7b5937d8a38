//! The I/O router: the only code that knows JSON.
//!
//! A reader thread turns stdin into lines (bounded in length and in number queued),
//! handing over together the lines one read brought in; the router thread `select!`s
//! over those lines and over finished requests. Each
//! request goes to the node through a handle's non-blocking `_with` method, whose
//! [`Reply`] callback sends the finished body back to the router.
//!
//! Ordering: every request gets a slot in its source's queue as it is read; a reply
//! is written only when every earlier slot of the same source has been written, so
//! replies to one source keep request order while sources stay independent. `msg_id`
//! is assigned at write time, so it goes up by exactly one per line.
//!
//! A source's requests sent after its own `wal_snapshot` or `wal_compact` are held
//! back until that request has answered, so a client that pipelines sees the effects
//! of its own snapshots and compactions in its later requests. Other sources are not
//! held: one client's snapshot never delays another's appends.
//!
//! Bounds: the router stops taking lines while `queued_max` replies are outstanding
//! (lines already handed over wait in the router's own queue),
//! and that bound is below every inbox's capacity, so the router's sends never wait
//! on a full actor and the completion channel never fills.
//!
//! A served member (`flintlog serve`) runs the same loop over other ends: its input
//! is the lines of many client connections, each tagged with its connection (a
//! source is a connection and a `src`), with their openings and closings in the same
//! queue; its `Outlet` gathers each connection's replies for that connection's
//! writer; and its peers' messages never pass through the router (see `serve`).

mod answer;
mod cluster;
mod input;
pub mod json;
mod peer_json;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::path::PathBuf;

use crossbeam_channel::{Receiver, Sender, select};
use serde_json::json;

use crate::actor::Reply;
use crate::config::Config;
use crate::error::Error;
use crate::node::Node;
use answer::{Answer, Body, error_body, from_error, from_wire, ok, render};
pub use answer::{error_code, policy_json};
use input::HANDOVERS_QUEUED;
pub(crate) use input::{Connection, Item, Line, STDOUT, read_lines};
use wire::{Envelope, Request, code};

/// How the router opens its node.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The node lives in `data_dir/<node_id>`.
    pub data_dir: PathBuf,
    /// Template for the node's configuration (`dir` is set at init).
    pub node: Config,
    /// Longest input line accepted; longer lines are dropped with a warning.
    pub line_bytes_max: usize,
    /// Most replies outstanding before the router stops reading input.
    pub queued_max: usize,
}

impl RouterConfig {
    /// Defaults derived from the node's configuration.
    pub fn new(data_dir: PathBuf, node: Config) -> RouterConfig {
        // A payload whose every character is escaped as \uXXXX, plus the envelope.
        let line_bytes_max = (node.payload_bytes_max as usize)
            .saturating_mul(6)
            .saturating_add(64 * 1024);
        let queued_max = node.inbox_capacity.min(4096);
        RouterConfig {
            data_dir,
            node,
            line_bytes_max,
            queued_max,
        }
    }
}

/// Where a request came from: its connection and the `src` it gave (a client's name
/// is its own only within its connection).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Source {
    conn: u64,
    name: String,
}

/// Where the router's output goes: stdout (one stream for replies and peer lines), or
/// each client connection's own.
pub(crate) trait Outlet {
    /// Connection `conn` opened (only where clients connect).
    fn opened(&mut self, conn: u64, connection: Connection);
    /// A request from `conn` was taken: a reply to it will follow.
    fn request(&mut self, conn: u64);
    /// The reply to one of `conn`'s requests, a whole line.
    fn reply(&mut self, conn: u64, line: &[u8]);
    /// `conn` sends nothing more; it is closed once its replies are out.
    fn closed(&mut self, conn: u64);
    /// A line for a peer, where peers are reached through stdout.
    fn peer(&mut self, line: &[u8]);
    /// Everything buffered goes out.
    fn flush(&mut self);
}

/// Stdout: every line in one buffered stream, written when the router has nothing
/// else ready.
struct Stdout<W: Write>(std::io::BufWriter<W>);

impl<W: Write> Stdout<W> {
    fn write(&mut self, line: &[u8]) {
        if let Err(e) = self.0.write_all(line) {
            log::error!("writing to stdout failed: {e}");
        }
    }
}

impl<W: Write> Outlet for Stdout<W> {
    fn opened(&mut self, _: u64, _: Connection) {}
    fn request(&mut self, _: u64) {}
    fn reply(&mut self, _: u64, line: &[u8]) {
        self.write(line);
    }
    fn closed(&mut self, _: u64) {}
    fn peer(&mut self, line: &[u8]) {
        self.write(line);
    }
    fn flush(&mut self) {
        if let Err(e) = self.0.flush() {
            log::error!("writing to stdout failed: {e}");
        }
    }
}

/// A finished request, on its way back to the router thread.
struct Done {
    src: Source,
    seq: u64,
    outcome: crate::Result<Answer>,
}

struct Slot {
    in_reply_to: u64,
    /// When the request was taken, and what it is, where latencies are observed.
    timed: Option<(std::time::Instant, Timed)>,
    /// The request's `dest`: the reply's `src` while the node has no id yet.
    dest: Option<String>,
    body: Option<Body>,
}

#[derive(Default)]
struct SourceQueue {
    /// Sequence number of the front slot.
    base: u64,
    /// The outstanding snapshot or compaction that later requests wait for.
    barrier: Option<u64>,
    /// Requests waiting for the barrier, in order.
    held: VecDeque<(u64, Request)>,
    /// Requests in order, with their replies once finished.
    slots: VecDeque<Slot>,
}

/// What the router serves, which `init` decides.
enum Mode {
    /// Waiting for `init`.
    Uninitialized,
    /// A single node, with its node id.
    Single(String, Box<Node>),
    /// A member of a group (`init` named more than one node).
    Member(cluster::Member),
    /// A node started to join a group, waiting for the group's first message to it
    /// (which names its Raft id).
    Joining(Box<cluster::Joining>),
}

impl Mode {
    /// This node's id, once `init` gave it one.
    fn me(&self) -> Option<&str> {
        match self {
            Mode::Uninitialized => None,
            Mode::Single(id, _) => Some(id),
            Mode::Member(member) => Some(member.me()),
            Mode::Joining(joining) => Some(joining.me()),
        }
    }
}

/// The router's state.
struct Router<O: Outlet> {
    config: RouterConfig,
    out: O,
    next_msg_id: u64,
    mode: Mode,
    /// Messages the consensus actor sends to peers, written as `raft` lines.
    peer_tx: Sender<crate::cluster::ToPeer>,
    /// Whether peers' messages arrive as lines (stdin); otherwise over links of
    /// their own, and a `raft` line is a client's request like any other.
    peer_lines: bool,
    /// Where a member reaches its peers when not through stdout.
    links: Option<Links>,
    queues: HashMap<Source, SourceQueue>,
    queued: usize,
    done_tx: Sender<Done>,
    fatal: bool,
}

/// A member's own links to its peers (`flintlog serve`), handed to the router that
/// opens it.
pub struct Links {
    /// Where the node's messages to its peers go.
    pub transport: Option<Box<dyn crate::cluster::Transport>>,
    /// Called once the member is open, with where its peers' messages go from then on,
    /// its incarnation and its roster (node ids by Raft id).
    pub opened: Option<Box<dyn FnOnce(Opened) + Send>>,
    /// Called before the node stops: nothing reaches the inbox after it returns.
    pub closing: Option<Box<dyn FnOnce() + Send>>,
    /// Called with each write's and read's time from being taken to its answer.
    pub observe: Option<Box<dyn Fn(Timed, std::time::Duration) + Send>>,
}

/// What a member's links learn when it opens.
pub struct Opened {
    pub inbox: crate::cluster::PeerInbox,
    pub incarnation: u64,
    pub roster: crate::cluster::Roster,
}

/// The requests whose latencies a served node observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timed {
    /// `wal_append`, `write`, `cas`: from taken to committed and applied.
    Write,
    /// `read`, `wal_read`, `wal_info`: linearizable reads.
    Read,
}

impl Timed {
    fn of(request: &Request) -> Option<Timed> {
        match request {
            Request::WalAppend { .. } | Request::Write { .. } | Request::Cas { .. } => {
                Some(Timed::Write)
            }
            Request::Read { .. } | Request::WalRead { .. } | Request::WalInfo => Some(Timed::Read),
            _ => None,
        }
    }
}

/// Runs the node's protocol over `input` and `output` until end of input; returns the
/// process exit code (0, or 1 if the node could not be opened or failed to stop).
pub fn run(input: impl Read + Send + 'static, output: impl Write, config: RouterConfig) -> i32 {
    let (line_tx, line_rx) = crossbeam_channel::bounded(HANDOVERS_QUEUED);
    let line_bytes_max = config.line_bytes_max;
    let reader = std::thread::Builder::new()
        .name("flintlog-stdin".into())
        .spawn(move || read_lines(input, line_bytes_max, STDOUT, line_tx))
        .expect("spawn the stdin reader");
    // Replies ready together go out in one write: flushed before the router waits.
    let out = Stdout(std::io::BufWriter::with_capacity(64 * 1024, output));
    let (mut router, done_rx, peer_rx) = Router::new(config, out);
    let code = router.run(line_rx, done_rx, peer_rx);
    // The reader thread ends at end of input; if we stop early (fatal), it is left
    // blocked on stdin and the process exits around it.
    if code == 0 {
        let _ = reader.join();
    }
    code
}

/// Runs member `node_id` of the group founded by `founders` (node ids, in Raft id
/// order), as `init` would start it, with its own `links` to its peers: requests
/// come from `input` (lines of many connections) and replies go to each
/// connection's [`Connection`]. Returns the exit code once `input` has ended (every
/// sender dropped) and every request taken has been answered.
pub(crate) fn serve(
    config: RouterConfig,
    node_id: String,
    founders: &[String],
    join: bool,
    links: Links,
    input: Receiver<Vec<Item>>,
    out: impl Outlet,
) -> i32 {
    let (mut router, done_rx, peer_rx) = Router::new(config, out);
    router.peer_lines = false;
    router.links = Some(links);
    let body = router.init(node_id, founders, join);
    if let Some(why) = answer::error_text(&body) {
        log::error!("the node cannot start: {why}");
        router.fatal = true;
    }
    router.run(input, done_rx, peer_rx)
}

impl<O: Outlet> Router<O> {
    fn new(
        config: RouterConfig,
        out: O,
    ) -> (Router<O>, Receiver<Done>, Receiver<crate::cluster::ToPeer>) {
        let (done_tx, done_rx) = crossbeam_channel::bounded(config.queued_max.max(1));
        let (peer_tx, peer_rx) = crossbeam_channel::bounded(cluster::PEER_QUEUE);
        let router = Router {
            config,
            mode: Mode::Uninitialized,
            peer_tx,
            peer_lines: true,
            links: None,
            out,
            next_msg_id: 0,
            queues: HashMap::new(),
            queued: 0,
            done_tx,
            fatal: false,
        };
        (router, done_rx, peer_rx)
    }

    fn run(
        &mut self,
        input: Receiver<Vec<Item>>,
        done: Receiver<Done>,
        peers: Receiver<crate::cluster::ToPeer>,
    ) -> i32 {
        let never = crossbeam_channel::never();
        let mut eof = false;
        // Items handed over by the readers and not taken yet: lines are taken while
        // fewer than `queued_max` replies are outstanding.
        let mut read: VecDeque<Item> = VecDeque::new();
        loop {
            while self.queued < self.config.queued_max
                && !self.fatal
                && let Some(item) = read.pop_front()
            {
                match item {
                    Item::Line(conn, Line::Data(bytes)) => self.on_line(conn, &bytes),
                    Item::Line(conn, Line::TooLong { bytes, head, tail }) => {
                        self.on_too_long(conn, bytes, &head, &tail)
                    }
                    Item::Opened(conn, connection) => self.out.opened(conn, connection),
                    Item::Closed(conn) => self.out.closed(conn),
                    Item::Joined(id) => self.joined(id),
                }
            }
            if self.fatal || eof && self.queued == 0 && read.is_empty() {
                break;
            }
            let lines = if eof || !read.is_empty() || self.queued >= self.config.queued_max {
                &never
            } else {
                &input
            };
            // Never wait with a reply in the buffer: flush when nothing is ready now.
            if done.is_empty() && lines.is_empty() && peers.is_empty() {
                self.out.flush();
            }
            select! {
                recv(lines) -> items => match items {
                    Ok(items) => read.extend(items),
                    Err(_) => eof = true,
                },
                recv(peers) -> m => {
                    match m.expect("the router holds a sender") {
                        crate::cluster::ToPeer::Raft(m) => self.peer_line(&m),
                        crate::cluster::ToPeer::Part { to, part } => self.part_line(to, &part),
                    }
                }
                recv(done) -> d => {
                    let d = d.expect("the router holds a sender");
                    let body = match d.outcome {
                        Ok(answer) => answer.render(),
                        Err(e) => from_error(&e),
                    };
                    self.finish(&d.src, d.seq, body);
                }
            }
        }
        self.out.flush();
        let mut code = if self.fatal { 1 } else { 0 };
        if let Some(closing) = self.links.as_mut().and_then(|l| l.closing.take()) {
            closing();
        }
        match std::mem::replace(&mut self.mode, Mode::Uninitialized) {
            Mode::Member(member) => member.node.shutdown(),
            Mode::Single(_, node) => {
                if let Err(e) = node.shutdown() {
                    log::error!("{e}");
                    code = 1;
                }
            }
            Mode::Uninitialized | Mode::Joining(_) => {}
        }
        code
    }

    fn flush(&mut self) {
        self.out.flush();
    }

    /// A line over the limit: answered with error 12 when its ends show where to.
    fn on_too_long(&mut self, conn: u64, bytes: usize, head: &[u8], tail: &[u8]) {
        let why = format!(
            "the line is {bytes} bytes, over the limit of {} bytes (a payload may have at most \
             {} bytes)",
            self.config.line_bytes_max, self.config.node.payload_bytes_max
        );
        match wire::salvage_envelope(&[head, tail]) {
            Some(env) => {
                let (src, seq) = self.enqueue(conn, &env);
                self.finish(&src, seq, error_body(code::MALFORMED_REQUEST, why));
            }
            None => log::warn!("dropped an input line: {why}; no src and msg_id to answer"),
        }
    }

    /// This node's id, when `env` names another node as its `dest` (after `init`).
    fn misaddressed(&self, env: &wire::Envelope) -> Option<String> {
        let me = self.mode.me()?;
        match env.dest.as_deref() {
            Some(dest) if dest != me => Some(me.to_string()),
            _ => None,
        }
    }

    fn on_line(&mut self, conn: u64, line: &[u8]) {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            return;
        }
        if self.peer_lines
            && matches!(self.mode, Mode::Member(_) | Mode::Joining(_))
            && self.peer_message(line)
        {
            return;
        }
        let (env, request) = match wire::parse_line(line) {
            Ok(parsed) => parsed,
            Err(w) => {
                log::warn!("ignoring input line: {}", w.0);
                return;
            }
        };
        let (src, seq) = self.enqueue(conn, &env);
        match request {
            Err(e) => self.finish(&src, seq, from_wire(e)),
            Ok(Request::Init {
                node_id,
                node_ids,
                join,
            }) => {
                let body = self.init(node_id, &node_ids, join);
                self.finish(&src, seq, body);
            }
            Ok(_) if self.misaddressed(&env).is_some() => {
                let why = format!(
                    "this is node {}, and the request is addressed to {}: whatever routes \
                     messages sent it to the wrong node; nothing was done",
                    self.misaddressed(&env).unwrap_or_default(),
                    env.dest.as_deref().unwrap_or_default()
                );
                self.finish(&src, seq, error_body(code::MALFORMED_REQUEST, why));
            }
            Ok(_) if matches!(self.mode, Mode::Joining(_)) => self.finish(
                &src,
                seq,
                error_body(
                    code::TEMPORARILY_UNAVAILABLE,
                    "this node is not a member yet: it waits for the group to add it \
                     (member_add on the leader) and send it a snapshot",
                ),
            ),
            Ok(_) if matches!(self.mode, Mode::Uninitialized) => self.finish(
                &src,
                seq,
                error_body(
                    code::TEMPORARILY_UNAVAILABLE,
                    "the node is not initialized yet: send init first",
                ),
            ),
            Ok(request) => {
                if let Some(kind) = Timed::of(&request)
                    && self.links.as_ref().is_some_and(|l| l.observe.is_some())
                {
                    let q = self.queues.get_mut(&src).expect("enqueued above");
                    q.slots[(seq - q.base) as usize].timed =
                        Some((std::time::Instant::now(), kind));
                }
                self.submit(src, seq, request)
            }
        }
    }

    /// Dispatches a request, or holds it behind its source's barrier.
    fn submit(&mut self, src: Source, seq: u64, request: Request) {
        let q = self
            .queues
            .get_mut(&src)
            .expect("a queue for every outstanding source");
        if q.barrier.is_some() {
            q.held.push_back((seq, request));
            return;
        }
        if matches!(
            request,
            Request::WalSnapshot { .. } | Request::WalCompact { .. }
        ) {
            q.barrier = Some(seq);
        }
        self.dispatch(src, seq, request);
    }

    /// Gives a request from `conn` its slot in its source's queue: where its reply
    /// goes, in order.
    fn enqueue(&mut self, conn: u64, env: &Envelope) -> (Source, u64) {
        let src = Source {
            conn,
            name: env.src.clone(),
        };
        self.out.request(conn);
        let q = self.queues.entry(src.clone()).or_default();
        let seq = q.base + q.slots.len() as u64;
        q.slots.push_back(Slot {
            in_reply_to: env.msg_id,
            timed: None,
            dest: env.dest.clone(),
            body: None,
        });
        self.queued += 1;
        (src, seq)
    }

    /// Records a finished reply and writes every reply of `src` now in order.
    fn finish(&mut self, src: &Source, seq: u64, body: Body) {
        let q = self
            .queues
            .get_mut(src)
            .expect("a queue for every outstanding source");
        q.slots[(seq - q.base) as usize].body = Some(body);
        let released = if q.barrier == Some(seq) {
            q.barrier = None;
            std::mem::take(&mut q.held)
        } else {
            VecDeque::new()
        };
        while q.slots.front().is_some_and(|s| s.body.is_some()) {
            let slot = q.slots.pop_front().expect("front exists");
            q.base += 1;
            self.queued -= 1;
            let from = match &self.mode {
                Mode::Single(id, _) => id.as_str(),
                Mode::Member(member) => member.me(),
                Mode::Uninitialized | Mode::Joining(_) => slot.dest.as_deref().unwrap_or(""),
            };
            let body = slot.body.expect("finished");
            if let Some((taken, kind)) = slot.timed
                && let Some(observe) = self.links.as_ref().and_then(|l| l.observe.as_ref())
            {
                observe(kind, taken.elapsed());
            }
            let line = render(from, &src.name, slot.in_reply_to, self.next_msg_id, &body);
            self.next_msg_id += 1;
            self.out.reply(src.conn, line.as_bytes());
        }
        if q.slots.is_empty() {
            self.queues.remove(src);
        }
        for (seq, request) in released {
            self.submit(src.clone(), seq, request);
        }
    }

    fn init(&mut self, node_id: String, node_ids: &[String], join: bool) -> Body {
        // A node id that cannot name a directory is the client's to fix: error 12, and
        // the node stays up for the next init.
        if let Err(why) = wire::check_node_id(&node_id) {
            return error_body(code::MALFORMED_REQUEST, why);
        }
        if let Some(current) = self.mode.me() {
            return if current == node_id {
                ok("init_ok", vec![])
            } else {
                error_body(
                    code::PRECONDITION_FAILED,
                    format!("already initialized as {current}, not {node_id}"),
                )
            };
        }

        if let Err(e) =
            crate::node::check_data_dir(&crate::fs::RealFs, &self.config.data_dir, &node_id)
        {
            log::error!("{e}");
            self.fatal = true;
            return error_body(code::CRASH, e.to_string());
        }
        if node_ids.len() > 1 || join {
            return self.init_cluster(node_id, node_ids, join);
        }
        if !node_ids.is_empty() && !node_ids.contains(&node_id) {
            log::warn!("node_id {node_id} is not among node_ids {node_ids:?}");
        }
        let mut config = self.config.node.clone();
        config.dir = self.config.data_dir.join(&node_id);
        config.jitter_seed = crate::core::policy::seed_of(&node_id);
        // Recovery may take a while: nothing waits in the buffer meanwhile.
        self.flush();
        match Node::open(config) {
            Ok(node) => {
                self.mode = Mode::Single(node_id, Box::new(node));
                ok("init_ok", vec![])
            }
            Err(e @ Error::Unavailable(_)) => {
                // Nothing was written (a full disk): the client may retry once there is
                // room, so the node stays up.
                log::warn!("{e}");
                from_error(&e)
            }
            Err(e) => {
                log::error!("{e}");
                self.fatal = true;
                error_body(code::CRASH, e.to_string())
            }
        }
    }

    /// A reply that hands the typed outcome back to the router thread, which renders
    /// it: no JSON is built on an actor's thread.
    fn reply<T: Send + 'static>(&self, src: Source, seq: u64, wrap: fn(T) -> Answer) -> Reply<T> {
        let done = self.done_tx.clone();
        Reply::new(move |r: crate::Result<T>| {
            let outcome = r.map(wrap);
            let _ = done.send(Done { src, seq, outcome });
        })
    }

    fn dispatch(&mut self, src: Source, seq: u64, request: Request) {
        let node = match &self.mode {
            Mode::Single(_, node) => node,
            Mode::Member(_) => return self.dispatch_cluster(src, seq, request),
            Mode::Uninitialized | Mode::Joining(_) => unreachable!("refused in on_line"),
        };
        let a = node.appender();
        match request {
            Request::Init { .. } => unreachable!("handled by the router"),
            Request::MemberAdd { .. }
            | Request::MemberPromote { .. }
            | Request::MemberRemove { .. } => {
                let body = error_body(
                    code::NOT_SUPPORTED,
                    "a single node has no group to change: membership requests go to a \
                     node started with several node_ids (or with join)",
                );
                self.finish(&src, seq, body);
            }
            Request::WalAppend { payload } => {
                a.append_with(payload.into_bytes(), self.reply(src, seq, Answer::Appended))
            }
            Request::WalRead { offset } => a.read_with(offset, self.reply(src, seq, Answer::Read)),
            Request::WalInfo => a.info_with(self.reply(src, seq, Answer::Info)),
            Request::WalSegmentConfig { max_segment_bytes } => a.set_segment_bytes_max_with(
                max_segment_bytes,
                self.reply(src, seq, Answer::SegmentBytes),
            ),
            Request::WalPolicy { update } => {
                a.set_policy_with(update, self.reply(src, seq, Answer::Policy))
            }
            Request::WalSegmentInfo => a.segments_with(self.reply(src, seq, Answer::Segments)),
            Request::WalSnapshot { mode } => node
                .snapshotter()
                .snapshot_mode_with(mode, self.reply(src, seq, Answer::Snapshot)),
            Request::WalCompact { snapshot_at_offset } => node
                .compactor()
                .compact_with(snapshot_at_offset, self.reply(src, seq, Answer::Compaction)),
            Request::WalStatus => a.status_with(self.reply(src, seq, Answer::status)),
            Request::Read { key } => a.kv_get_with(key, self.reply(src, seq, Answer::Value)),
            Request::Write { key, value } => {
                a.kv_set_with(key, value, self.reply(src, seq, Answer::written))
            }
            Request::Cas { key, from, to } => a.kv_cas_with(
                key,
                Box::new(move |current| wire::stored_to_json(current) == from),
                to,
                self.reply(src, seq, Answer::swapped),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn renders_the_sample_init_reply_byte_for_byte() {
        let line = render("n1", "c0", 1, 0, &ok("init_ok", vec![]));
        assert_eq!(
            line,
            "{\"src\": \"n1\", \"dest\": \"c0\", \"body\": {\"type\": \"init_ok\", \"in_reply_to\": 1, \"msg_id\": 0}}\n"
        );
    }

    /// A writer whose bytes the test reads after the router is done.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_read_together_beyond_the_reply_bound_wait_their_turn() {
        // Two replies outstanding at most, inboxes of two: the reader hands over
        // hundreds of lines at once, and the router must take them two at a time (a
        // router that took them all would block on the full inbox while the appender
        // blocks on the full completion channel, and nothing would be answered).
        let dir = tempfile::tempdir().unwrap();
        let mut node = Config::new(dir.path().join("unused"));
        node.inbox_capacity = 2;
        let config = RouterConfig::new(dir.path().to_path_buf(), node);
        assert_eq!(config.queued_max, 2);
        let mut input = String::from(
            r#"{"src": "c0", "dest": "n1", "body": {"type": "init", "msg_id": 1, "node_id": "n1", "node_ids": ["n1"]}}"#,
        );
        input.push('\n');
        let n = 300;
        for i in 0..n {
            input.push_str(&format!(
                r#"{{"src": "c{}", "dest": "n1", "body": {{"type": "wal_append", "msg_id": {}, "payload": "set k{i}=v"}}}}"#,
                i % 3,
                i + 2
            ));
            input.push('\n');
        }
        let out = Shared::default();
        let (finished_tx, finished) = crossbeam_channel::bounded(1);
        let writer = out.clone();
        std::thread::spawn(move || {
            let code = run(std::io::Cursor::new(input.into_bytes()), writer, config);
            let _ = finished_tx.send(code);
        });
        let code = finished
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the router answers every line and stops at end of input");
        assert_eq!(code, 0);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let replies: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(replies.len(), n + 1);
        // Each client's offsets go up with its requests; all are distinct.
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut offsets = std::collections::HashSet::new();
        for r in &replies[1..] {
            assert_eq!(r["body"]["type"], "wal_append_ok", "{r}");
            let offset = r["body"]["offset"].as_u64().unwrap();
            let client = r["dest"].as_str().unwrap().to_string();
            if let Some(before) = last.insert(client, offset) {
                assert!(offset > before, "{text}");
            }
            assert!(offsets.insert(offset));
        }
    }
}

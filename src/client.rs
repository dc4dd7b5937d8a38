//! A blocking client of served nodes (`flintlog serve`): the envelope of the protocol
//! as JSON lines over TCP, one request at a time. `flintlog client` is built on it, and
//! so are the tests of a served group.
//!
//! [`Client::call`] follows error 11 (nothing was done: no leader yet, a member that is
//! not one yet, a change that only the leader takes) to the next endpoint, round after
//! round, until its deadline; any other error is the answer. A connection lost after
//! the request was sent is not retried: the request may have been done.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A reply, and who gave it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The node id that answered (the reply's `src`).
    pub node: String,
    /// The endpoint it answered on.
    pub endpoint: String,
    /// The reply's body.
    pub body: Value,
}

/// Why a call has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The node answered with an error (code, text) after every retry it allows.
    Refused {
        code: u64,
        text: String,
        node: String,
    },
    /// No endpoint could be reached, or none answered before the deadline; the
    /// request was not done (or not sent).
    Unreachable(String),
    /// The connection was lost after the request was sent: it may have been done.
    Unknown(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused { code, text, node } => {
                write!(f, "error {code} from {node}: {text}")
            }
            CallError::Unreachable(why) => write!(f, "no answer: {why}"),
            CallError::Unknown(why) => write!(f, "outcome unknown: {why}"),
        }
    }
}

/// A connection to a member, in the clear or over TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl std::io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

struct Conn {
    endpoint: String,
    stream: BufReader<Stream>,
    tcp: TcpStream,
}

/// A client of one group, through any of its members' client endpoints.
pub struct Client {
    endpoints: Vec<String>,
    /// How long a call may take, retries included.
    pub timeout: Duration,
    /// The endpoint tried first by the next call.
    current: usize,
    conn: Option<Conn>,
    next_msg_id: u64,
    src: String,
    /// TLS, when the members serve clients over it: their certificates checked
    /// against the CA (and the endpoint's host), ours presented if the config has one.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// A line's worth of reply that is not the protocol's.
fn bad_reply(endpoint: &str, why: impl std::fmt::Display) -> CallError {
    CallError::Unknown(format!(
        "{endpoint} answered something else than a reply: {why}"
    ))
}

impl Client {
    /// A client of the members at `endpoints` (`host:port`), calling itself `src`.
    pub fn new(endpoints: Vec<String>, src: &str) -> Client {
        Client {
            endpoints,
            timeout: Duration::from_secs(10),
            current: 0,
            conn: None,
            next_msg_id: 1,
            src: src.to_string(),
            tls: None,
        }
    }

    /// The endpoints, in the order given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Sends `body` (a request body: `type` and its fields) and waits for its reply,
    /// following error 11 from endpoint to endpoint until [`Client::timeout`].
    ///
    /// # Errors
    /// See [`CallError`].
    pub fn call(&mut self, body: Value) -> Result<Answer, CallError> {
        let deadline = Instant::now() + self.timeout;
        let mut last = CallError::Unreachable("no endpoint given".into());
        let mut tried = 0usize;
        while !self.endpoints.is_empty() {
            let endpoint = self.endpoints[self.current % self.endpoints.len()].clone();
            match self.call_until(&endpoint, body.clone(), deadline) {
                Err(CallError::Refused {
                    code: 11,
                    text,
                    node,
                }) => {
                    last = CallError::Refused {
                        code: 11,
                        text,
                        node,
                    }
                }
                Err(e @ CallError::Unreachable(_)) => last = e,
                other => return other,
            }
            if Instant::now() >= deadline {
                break;
            }
            self.current += 1;
            tried += 1;
            if tried.is_multiple_of(self.endpoints.len()) {
                // Every member said no: give the group a moment (an election).
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Err(last)
    }

    /// Sends `body` to `endpoint` only, and waits for its reply (no retry).
    ///
    /// # Errors
    /// See [`CallError`].
    pub fn call_at(&mut self, endpoint: &str, body: Value) -> Result<Answer, CallError> {
        self.call_until(endpoint, body, Instant::now() + self.timeout)
    }

    fn call_until(
        &mut self,
        endpoint: &str,
        mut body: Value,
        deadline: Instant,
    ) -> Result<Answer, CallError> {
        let msg_id = self.next_msg_id;
        self.next_msg_id += 1;
        body["msg_id"] = json!(msg_id);
        let mut line = json!({"src": self.src, "body": body}).to_string();
        line.push('\n');
        let exchanged = self
            .connect(endpoint, deadline)
            .and_then(|conn| exchange(conn, endpoint, &line, deadline));
        let reply = match exchanged {
            Ok(reply) => reply,
            Err(e) => {
                self.conn = None;
                return Err(e);
            }
        };
        let v: Value = match serde_json::from_str(&reply) {
            Ok(v) => v,
            Err(e) => {
                self.conn = None;
                return Err(bad_reply(endpoint, e));
            }
        };
        if v["body"]["in_reply_to"] != json!(msg_id) {
            self.conn = None;
            return Err(bad_reply(
                endpoint,
                format!("not in reply to {msg_id}: {reply}"),
            ));
        }
        let node = v["src"].as_str().unwrap_or("").to_string();
        let body = v["body"].clone();
        if body["type"] == "error" {
            return Err(CallError::Refused {
                code: body["code"].as_u64().unwrap_or(0),
                text: body["text"].as_str().unwrap_or("").to_string(),
                node,
            });
        }
        Ok(Answer {
            node,
            endpoint: endpoint.to_string(),
            body,
        })
    }

    /// The connection to `endpoint`, made if it is not the one open.
    fn connect(&mut self, endpoint: &str, deadline: Instant) -> Result<&mut Conn, CallError> {
        if self.conn.as_ref().is_some_and(|c| c.endpoint != endpoint) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let unreachable = |why: String| CallError::Unreachable(format!("{endpoint}: {why}"));
            let addrs = endpoint
                .to_socket_addrs()
                .map_err(|e| unreachable(e.to_string()))?;
            let mut last = unreachable("resolves to no address".into());
            for addr in addrs {
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .clamp(Duration::from_millis(1), Duration::from_secs(2));
                match TcpStream::connect_timeout(&addr, left) {
                    Ok(tcp) => {
                        let _ = tcp.set_nodelay(true);
                        let handle = tcp.try_clone().map_err(|e| unreachable(e.to_string()))?;
                        let stream = match &self.tls {
                            Some(config) => {
                                let host = endpoint
                                    .rsplit_once(':')
                                    .map_or(endpoint, |(h, _)| h)
                                    .trim_matches(|c| c == '[' || c == ']');
                                let name =
                                    rustls::pki_types::ServerName::try_from(host.to_string())
                                        .map_err(|e| unreachable(format!("{host}: {e}")))?;
                                let conn = rustls::ClientConnection::new(config.clone(), name)
                                    .map_err(|e| unreachable(e.to_string()))?;
                                Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
                            }
                            None => Stream::Plain(tcp),
                        };
                        self.conn = Some(Conn {
                            endpoint: endpoint.to_string(),
                            stream: BufReader::new(stream),
                            tcp: handle,
                        });
                        break;
                    }
                    Err(e) => last = unreachable(e.to_string()),
                }
            }
            if self.conn.is_none() {
                return Err(last);
            }
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }
}

/// Writes `line` on `conn` and reads the line that answers it, by `deadline`.
fn exchange(
    conn: &mut Conn,
    endpoint: &str,
    line: &str,
    deadline: Instant,
) -> Result<String, CallError> {
    let left = deadline.saturating_duration_since(Instant::now());
    let _ = conn
        .tcp
        .set_read_timeout(Some(left.max(Duration::from_millis(1))));
    let w = conn.stream.get_mut();
    w.write_all(line.as_bytes())
        .and_then(|()| w.flush())
        .map_err(|e| CallError::Unreachable(format!("{endpoint}: {e}")))?;
    let mut reply = String::new();
    match conn.stream.read_line(&mut reply) {
        Ok(0) => Err(CallError::Unknown(format!(
            "{endpoint} closed the connection before answering"
        ))),
        Ok(_) => Ok(reply),
        // A TLS alert (a certificate refused): the handshake failed, so the member
        // never read the request.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(CallError::Unreachable(format!("{endpoint}: {e}")))
        }
        Err(e) => Err(CallError::Unknown(format!("{endpoint}: {e}"))),
    }
}

//! The node processes: starting, killing and restarting them, and the state the
//! harness's threads share.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use serde_json::{Value, json};

use flintlog::proxy::Proxy;

use crate::Args;
use crate::network::{Net, route};

/// One node process and the thread that feeds its stdin.
pub(crate) struct NodeProc {
    pub(crate) child: Child,
    pub(crate) input: Sender<String>,
    pub(crate) paused: bool,
}

/// The members' addresses over TCP, and the proxy of each link.
pub(crate) struct Tcp {
    pub(crate) peer_ports: Vec<u16>,
    pub(crate) client_ports: Vec<u16>,
    /// `proxies[a][b]`: member `a` dials member `b` through it.
    pub(crate) proxies: Vec<Vec<Option<Proxy>>>,
}

impl Tcp {
    fn new(nodes: usize) -> Tcp {
        let held: Vec<std::net::TcpListener> = (0..2 * nodes)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().expect("bound").port())
            .collect();
        let proxies = (0..nodes)
            .map(|a| {
                (0..nodes)
                    .map(|b| {
                        (a != b).then(|| {
                            Proxy::start(&format!("127.0.0.1:{}", ports[b])).expect("a proxy")
                        })
                    })
                    .collect()
            })
            .collect();
        Tcp {
            peer_ports: ports[..nodes].to_vec(),
            client_ports: ports[nodes..].to_vec(),
            proxies,
        }
    }

    /// `serve`'s flags for member `i` of the founders `ids`.
    fn flags(&self, ids: &[String], i: usize) -> Vec<String> {
        let peers: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(j, id)| match &self.proxies[i][j] {
                Some(p) => format!("{id}={}", p.addr()),
                None => format!("{id}=127.0.0.1:{}", self.peer_ports[j]),
            })
            .collect();
        vec![
            "serve".into(),
            format!("--node-id={}", ids[i]),
            format!("--peer-listen=127.0.0.1:{}", self.peer_ports[i]),
            format!("--client-listen=127.0.0.1:{}", self.client_ports[i]),
            format!("--peers={}", peers.join(",")),
        ]
    }
}

/// Connects to member `i`'s client port (retrying while it starts) and carries lines
/// both ways: `lines` to it, what it answers to `to_net`.
fn connect(i: usize, port: u16, lines: Receiver<String>, to_net: Sender<(usize, String)>) {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => {
                eprintln!("n{}: cannot connect to its client port {port}: {e}", i + 1);
                return;
            }
        }
    };
    let _ = stream.set_nodelay(true);
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    std::thread::spawn(move || forward_lines(i, reader, to_net));
    write_lines(stream, lines);
}

/// Hands every line node `i` writes to the network, until it stops writing.
fn forward_lines(i: usize, from: impl std::io::Read, to_net: Sender<(usize, String)>) {
    for line in BufReader::new(from).lines() {
        let Ok(line) = line else { break };
        if to_net.send((i, line)).is_err() {
            break;
        }
    }
}

/// Writes each line of `lines` to a node, flushing when none waits, until the node
/// is gone or the sender dropped.
fn write_lines(to: impl Write, lines: Receiver<String>) {
    let mut out = std::io::BufWriter::new(to);
    while let Ok(line) = lines.recv() {
        if writeln!(out, "{line}").is_err() {
            break;
        }
        if lines.is_empty() && out.flush().is_err() {
            break;
        }
    }
}

pub(crate) fn spawn_node(
    bin: &Path,
    out: &Path,
    policy: &[String],
    i: usize,
    to_net: Sender<(usize, String)>,
    tcp: Option<(&Tcp, &[String])>,
) -> NodeProc {
    let name = format!("n{}", i + 1);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join(format!("{name}.log")))
        .expect("node log file");
    let mut command = Command::new(bin);
    if let Some((tcp, ids)) = tcp {
        command.args(tcp.flags(ids, i));
    }
    command
        .arg("--data-dir")
        .arg(out.join("data"))
        .args(policy)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stderr(Stdio::from(log));
    if let Some((tcp, _)) = tcp {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        // Unbounded as the stdin one below: each of the harness's clients keeps a
        // bounded number of requests in flight, so what waits here is bounded too.
        let (input, lines) = crossbeam_channel::unbounded::<String>();
        let port = tcp.client_ports[i];
        std::thread::spawn(move || connect(i, port, lines, to_net));
        return NodeProc {
            child,
            input,
            paused: false,
        };
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || forward_lines(i, stdout, to_net));
    let (input, lines) = crossbeam_channel::unbounded::<String>();
    let stdin: ChildStdin = child.stdin.take().expect("stdin");
    std::thread::spawn(move || write_lines(stdin, lines));
    NodeProc {
        child,
        input,
        paused: false,
    }
}

pub(crate) struct Shared {
    pub(crate) net: Mutex<Net>,
    pub(crate) started: Instant,
    pub(crate) bin: PathBuf,
    pub(crate) out: PathBuf,
    /// The nodes' log-management flags.
    pub(crate) policy: Vec<String>,
    pub(crate) to_net: Sender<(usize, String)>,
    /// Every node id: the founders, then the spare that joins with `--replace`.
    pub(crate) ids: Vec<String>,
    /// How many of `ids` founded the group.
    pub(crate) founders: usize,
    /// The nodes that are members now (clients and the nemesis use these).
    pub(crate) members: Mutex<Vec<usize>>,
    /// With `--transport tcp`: the members' ports and the links' proxies.
    pub(crate) tcp: Option<Tcp>,
}

impl Shared {
    pub(crate) fn send_to_node(&self, i: usize, line: String) -> bool {
        let net = self.net.lock().expect("net");
        match &net.nodes[i] {
            Some(p) => p.input.send(line).is_ok(),
            None => false,
        }
    }

    /// A channel on which the network delivers replies to client `name`.
    pub(crate) fn register(&self, name: &str) -> Receiver<Value> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.net
            .lock()
            .expect("net")
            .clients
            .insert(name.to_string(), tx);
        rx
    }

    /// Stops delivering replies to client `name`.
    pub(crate) fn unregister(&self, name: &str) {
        self.net.lock().expect("net").clients.remove(name);
    }

    pub(crate) fn init(&self, i: usize) {
        if self.tcp.is_some() {
            // A served member starts without init.
            return;
        }
        let body = if i < self.founders {
            json!({"type": "init", "msg_id": 0, "node_id": self.ids[i], "node_ids": self.ids[..self.founders]})
        } else {
            json!({"type": "init", "msg_id": 0, "node_id": self.ids[i], "node_ids": self.ids, "join": true})
        };
        let line = json!({"src": "harness", "dest": self.ids[i], "body": body}).to_string();
        self.send_to_node(i, line);
    }

    pub(crate) fn start(&self, i: usize) {
        let tcp = self.tcp.as_ref().map(|t| (t, &self.ids[..self.founders]));
        let p = spawn_node(
            &self.bin,
            &self.out,
            &self.policy,
            i,
            self.to_net.clone(),
            tcp,
        );
        self.net.lock().expect("net").nodes[i] = Some(p);
        self.init(i);
    }

    /// Kills node `i` (kill -9) and waits for it.
    pub(crate) fn kill(&self, i: usize) {
        let proc = self.net.lock().expect("net").nodes[i].take();
        if let Some(mut p) = proc {
            if p.paused {
                signal(p.child.id(), libc::SIGCONT);
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    pub(crate) fn members(&self) -> Vec<usize> {
        self.members.lock().expect("members").clone()
    }
}

pub(crate) fn signal(pid: u32, sig: i32) {
    // SAFETY: sending a signal to a child process we started.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Starts `nodes` node processes under `out` and the network between them.
pub(crate) fn start_cluster(args: &Args, bin: &Path, nodes: usize, out: &Path) -> Arc<Shared> {
    std::fs::create_dir_all(out).unwrap_or_else(|e| panic!("cannot create {}: {e}", out.display()));
    // With `--replace`, one more id: the new member that replaces a lost one.
    let all = nodes + usize::from(args.replace && !args.bench);
    let ids: Vec<String> = (1..=all).map(|i| format!("n{i}")).collect();
    let (to_net, from_nodes) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared {
        net: Mutex::new(Net {
            nodes: (0..all).map(|_| None).collect(),
            cut: vec![vec![false; all]; all],
            clients: HashMap::new(),
            lossy: true,
        }),
        started: Instant::now(),
        bin: bin.to_path_buf(),
        out: out.to_path_buf(),
        policy: [
            format!("--snapshot-entries={}", args.snapshot_entries),
            format!("--trailing-entries={}", args.trailing_entries),
        ]
        .into_iter()
        .chain(
            args.store
                .then(|| format!("--snapshot-store={}", out.join("store").display())),
        )
        .collect(),
        to_net,
        ids,
        founders: nodes,
        members: Mutex::new((0..nodes).collect()),
        tcp: args.tcp().then(|| Tcp::new(nodes)),
    });
    {
        let shared = shared.clone();
        let args = args.clone();
        std::thread::spawn(move || route(shared, from_nodes, args, 1));
    }
    for i in 0..nodes {
        shared.start(i);
    }
    shared
}

/// Ends every node's input (over TCP: sends it SIGTERM) and waits for the processes
/// to exit; says which did not exit cleanly.
pub(crate) fn stop_cluster(shared: &Shared) {
    let mut net = shared.net.lock().expect("net");
    for (i, slot) in net.nodes.iter_mut().enumerate() {
        if let Some(mut p) = slot.take() {
            if p.paused {
                signal(p.child.id(), libc::SIGCONT);
            }
            if shared.tcp.is_some() {
                signal(p.child.id(), libc::SIGTERM);
            }
            drop(p.input);
            match p.child.wait() {
                Ok(status) if !status.success() => {
                    eprintln!("n{}: exited with {status} when stopped", i + 1);
                }
                _ => {}
            }
        }
    }
}

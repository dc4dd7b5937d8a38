//! `flintlog-cluster`: runs a flintlog Raft group as Maelstrom would, and checks it.
//!
//! It starts N node processes on their own data directories and is their network:
//! every line a node writes to another node is delivered after a random latency, or
//! lost, or held back by a partition. A nemesis partitions the network (random halves,
//! one node cut off, the leader cut off, a bridge), kills nodes with SIGKILL and
//! restarts them, and pauses them (SIGSTOP/SIGCONT). Clients run Maelstrom's lin-kv workload (read, write, cas on
//! a few keys; one request at a time each; a timeout is an unknown outcome) and an
//! append workload (unique payloads). At the end the cluster is healed, every replica
//! must reach the same applied index with the same `state_digest`, every acknowledged
//! append must be readable with its payload at its offset on every node (offsets
//! unique), and the history must be linearizable. It prints a summary and writes
//! `report.json` and `latency.svg` (nemesis windows shaded) to `--out`.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod bench;

use clap::Parser;
use crossbeam_channel::{Receiver, Sender};
use flintlog::fs::sim::Rng;
use flintlog::lincheck::{self, Event, Op};
use serde_json::{Value, json};

/// Runs a flintlog Raft group under faults and checks what its clients saw.
#[derive(Parser, Debug, Clone)]
#[command(name = "flintlog-cluster", version)]
struct Args {
    /// Nodes in the group.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds of workload (healing and checks follow).
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Faults, comma-separated: partition (random shapes), isolate-leader (the leader
    /// alone, every time), kill, pause; or none.
    #[arg(long, default_value = "partition,kill,pause")]
    nemesis: String,
    /// Seconds between nemesis actions.
    #[arg(long, default_value_t = 3.0)]
    nemesis_every: f64,
    /// Node-to-node latency in milliseconds, `LO-HI` (uniform).
    #[arg(long, default_value = "1-10")]
    latency_ms: String,
    /// Fraction of node-to-node messages lost.
    #[arg(long, default_value_t = 0.1)]
    loss: f64,
    /// lin-kv clients (one request at a time each).
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Clients appending unique payloads.
    #[arg(long, default_value_t = 2)]
    appenders: usize,
    /// Keys the lin-kv clients use.
    #[arg(long, default_value_t = 4)]
    keys: u64,
    /// Milliseconds a client waits for a reply before the outcome counts as unknown.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where data directories, node logs, the report and the plot go.
    #[arg(long, default_value = "target/cluster")]
    out: PathBuf,
    /// The node binary (default: `flintlog` beside this program).
    #[arg(long)]
    node: Option<PathBuf>,
    /// Benchmarks instead of a checked run: throughput of a group against one node
    /// side by side, commit latency, and failover times (see `--kills`).
    #[arg(long)]
    bench: bool,
    /// Leader kills the failover benchmark measures.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Seconds of each throughput round of the benchmark.
    #[arg(long, default_value_t = 5.0)]
    round_seconds: f64,
    /// Rounds of each side of the throughput ratio.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// With `--bench`: write the results into this Markdown file's cluster section.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Only check a history file (`history.json` of an earlier run, maybe edited by
    /// hand) for linearizability, and exit 0 if it is.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// Each node snapshots every this many entries (its `--snapshot-entries`).
    #[arg(long, default_value_t = 500)]
    snapshot_entries: u64,
    /// Each node keeps this many entries behind its snapshot when it compacts (its
    /// `--trailing-entries`); a follower that misses more catches up from a snapshot.
    #[arg(long, default_value_t = 200)]
    trailing_entries: u64,
    /// A quarter into the run, a node loses its disk: it is wiped and restarted under
    /// its old id (its peers must refuse it), then replaced by a new member
    /// (removed, a new node added as a learner, started with `join`, caught up,
    /// promoted), all under load and the nemesis.
    #[arg(long)]
    replace: bool,
    /// Every node copies its snapshots to a snapshot store, a directory in the output
    /// directory (`--snapshot-store`); the new member of `--replace` loads the newest
    /// group snapshot from it.
    #[arg(long)]
    store: bool,
}

fn event_json(e: &Event) -> Value {
    let op = match &e.op {
        Op::Read(v) => json!({"f": "read", "value": v}),
        Op::Write(v) => json!({"f": "write", "value": v}),
        Op::Cas(f, t) => json!({"f": "cas", "from": f, "to": t}),
        Op::CasMismatch(f) => json!({"f": "cas_mismatch", "from": f}),
        Op::CasAbsent => json!({"f": "cas_absent"}),
    };
    json!({"key": e.key, "op": op, "invoked_us": e.invoked, "returned_us": e.returned})
}

fn event_from_json(v: &Value) -> Result<Event, String> {
    let s = |k: &str| -> Result<String, String> {
        v["op"][k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{k} missing in {v}"))
    };
    let op = match v["op"]["f"].as_str() {
        Some("read") => Op::Read(v["op"]["value"].as_str().map(str::to_string)),
        Some("write") => Op::Write(s("value")?),
        Some("cas") => Op::Cas(s("from")?, s("to")?),
        Some("cas_mismatch") => Op::CasMismatch(s("from")?),
        Some("cas_absent") => Op::CasAbsent,
        _ => return Err(format!("unknown operation in {v}")),
    };
    Ok(Event {
        key: v["key"].as_str().ok_or("key missing")?.to_string(),
        op,
        invoked: v["invoked_us"].as_u64().ok_or("invoked_us missing")?,
        returned: v["returned_us"].as_u64(),
    })
}

fn check_file(path: &Path) -> ExitCode {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let list: Vec<Value> = serde_json::from_str(&text).expect("a JSON list of events");
    let history: Vec<Event> = list
        .iter()
        .map(event_from_json)
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let verdict = lincheck::check(&history);
    println!("{} operations: {verdict:?}", history.len());
    if matches!(verdict, lincheck::Verdict::Linearizable { .. }) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// One node process and the thread that feeds its stdin.
struct NodeProc {
    child: Child,
    input: Sender<String>,
    paused: bool,
}

fn spawn_node(
    bin: &Path,
    out: &Path,
    policy: &[String],
    i: usize,
    to_net: Sender<(usize, String)>,
) -> NodeProc {
    let name = format!("n{}", i + 1);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join(format!("{name}.log")))
        .expect("node log file");
    let mut child = Command::new(bin)
        .arg("--data-dir")
        .arg(out.join("data"))
        .args(policy)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if to_net.send((i, line)).is_err() {
                break;
            }
        }
    });
    let (input, lines) = crossbeam_channel::unbounded::<String>();
    let stdin: ChildStdin = child.stdin.take().expect("stdin");
    std::thread::spawn(move || {
        let mut stdin = std::io::BufWriter::new(stdin);
        while let Ok(line) = lines.recv() {
            if writeln!(stdin, "{line}").is_err() {
                break;
            }
            if lines.is_empty() && stdin.flush().is_err() {
                break;
            }
        }
    });
    NodeProc {
        child,
        input,
        paused: false,
    }
}

/// The network's state, shared by the router, the nemesis and the clients.
struct Net {
    nodes: Vec<Option<NodeProc>>,
    /// `cut[a][b]`: messages from a to b are dropped.
    cut: Vec<Vec<bool>>,
    /// Clients waiting for replies: client name → its channel.
    clients: HashMap<String, Sender<Value>>,
    /// Whether messages are lost (`--loss`); off once the cluster is healed.
    lossy: bool,
}

struct Shared {
    net: Mutex<Net>,
    started: Instant,
    bin: PathBuf,
    out: PathBuf,
    /// The nodes' log-management flags.
    policy: Vec<String>,
    to_net: Sender<(usize, String)>,
    /// Every node id: the founders, then the spare that joins with `--replace`.
    ids: Vec<String>,
    /// How many of `ids` founded the group.
    founders: usize,
    /// The nodes that are members now (clients and the nemesis use these).
    members: Mutex<Vec<usize>>,
}

impl Shared {
    fn send_to_node(&self, i: usize, line: String) -> bool {
        let net = self.net.lock().expect("net");
        match &net.nodes[i] {
            Some(p) => p.input.send(line).is_ok(),
            None => false,
        }
    }

    /// A channel on which the network delivers replies to client `name`.
    fn register(&self, name: &str) -> Receiver<Value> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.net
            .lock()
            .expect("net")
            .clients
            .insert(name.to_string(), tx);
        rx
    }

    /// Stops delivering replies to client `name`.
    fn unregister(&self, name: &str) {
        self.net.lock().expect("net").clients.remove(name);
    }

    fn init(&self, i: usize) {
        let body = if i < self.founders {
            json!({"type": "init", "msg_id": 0, "node_id": self.ids[i], "node_ids": self.ids[..self.founders]})
        } else {
            json!({"type": "init", "msg_id": 0, "node_id": self.ids[i], "node_ids": self.ids, "join": true})
        };
        let line = json!({"src": "harness", "dest": self.ids[i], "body": body}).to_string();
        self.send_to_node(i, line);
    }

    fn start(&self, i: usize) {
        let p = spawn_node(&self.bin, &self.out, &self.policy, i, self.to_net.clone());
        self.net.lock().expect("net").nodes[i] = Some(p);
        self.init(i);
    }

    /// Kills node `i` (kill -9) and waits for it.
    fn kill(&self, i: usize) {
        let proc = self.net.lock().expect("net").nodes[i].take();
        if let Some(mut p) = proc {
            if p.paused {
                signal(p.child.id(), libc::SIGCONT);
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    fn members(&self) -> Vec<usize> {
        self.members.lock().expect("members").clone()
    }
}

/// Delivers node output: replies to clients at once, peer lines after a latency.
fn route(shared: Arc<Shared>, from_nodes: Receiver<(usize, String)>, args: Args, seed: u64) {
    let (lo, hi) = parse_range(&args.latency_ms);
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut delayed: BTreeMap<(u64, u64), (usize, String)> = BTreeMap::new();
    let mut n = 0u64;
    loop {
        let now = micros(shared.started);
        let wait = delayed
            .keys()
            .next()
            .map_or(Duration::from_millis(50), |(at, _)| {
                Duration::from_micros(at.saturating_sub(now))
            });
        match from_nodes.recv_timeout(wait) {
            Ok((from, line)) => {
                // The node writes `{"src": ..., "dest": "ID", ...`: a peer line is passed
                // on without parsing it.
                let dest = line
                    .split_once("\"dest\": \"")
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(d, _)| d.to_string())
                    .unwrap_or_default();
                if let Some(to) = shared.ids.iter().position(|id| *id == dest) {
                    let net = shared.net.lock().expect("net");
                    let lost = net.cut[from][to]
                        || (net.lossy && (rng.below(1_000_000) as f64) < args.loss * 1e6);
                    drop(net);
                    if !lost {
                        let at = now + (lo + rng.below(hi - lo + 1)) * 1000;
                        n += 1;
                        delayed.insert((at, n), (to, line));
                    }
                } else {
                    let Ok(v) = serde_json::from_str::<Value>(&line) else {
                        eprintln!("n{}: unparseable output line: {line}", from + 1);
                        continue;
                    };
                    let net = shared.net.lock().expect("net");
                    if let Some(c) = net.clients.get(&dest) {
                        let _ = c.send(v);
                    }
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
        let now = micros(shared.started);
        while let Some(entry) = delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (to, line) = entry.remove();
            shared.send_to_node(to, line);
        }
    }
}

fn parse_range(s: &str) -> (u64, u64) {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u64 = a.trim().parse().expect("--latency-ms LO-HI");
    let b: u64 = b.trim().parse().expect("--latency-ms LO-HI");
    (a.min(b), a.max(b))
}

/// What a client saw, for the report.
#[derive(Clone)]
struct Sample {
    at_s: f64,
    latency_ms: f64,
    ok: bool,
    /// Not ok, and it may or may not have happened (no reply, or error 13).
    unknown: bool,
}

struct ClientLog {
    history: Vec<Event>,
    samples: Vec<Sample>,
    /// Acknowledged appends: (offset, payload).
    appended: Vec<(u64, String)>,
    ok: u64,
    failed: u64,
    unknown: u64,
}

/// A client: one request at a time against random nodes until `until`.
fn client(
    shared: Arc<Shared>,
    name: String,
    appender: bool,
    args: Args,
    seed: u64,
    until: Instant,
) -> ClientLog {
    let rx = shared.register(&name);
    let mut rng = Rng::new(seed);
    let mut log = ClientLog {
        history: Vec::new(),
        samples: Vec::new(),
        appended: Vec::new(),
        ok: 0,
        failed: 0,
        unknown: 0,
    };
    let mut msg_id = 0u64;
    while Instant::now() < until {
        msg_id += 1;
        let members = shared.members();
        let node = members[rng.below(members.len() as u64) as usize];
        let key = format!("k{}", rng.below(args.keys));
        let body = if appender {
            json!({"type": "wal_append", "msg_id": msg_id, "payload": format!("{name}-{msg_id}")})
        } else {
            match rng.below(3) {
                0 => json!({"type": "read", "msg_id": msg_id, "key": key}),
                1 => json!({"type": "write", "msg_id": msg_id, "key": key, "value": rng.below(5)}),
                _ => {
                    json!({"type": "cas", "msg_id": msg_id, "key": key, "from": rng.below(5), "to": rng.below(5)})
                }
            }
        };
        let line = json!({"src": name, "dest": shared.ids[node], "body": body.clone()}).to_string();
        let invoked = micros(shared.started);
        if !shared.send_to_node(node, line) {
            // The node is down: the request never left; try another.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let deadline = Instant::now() + Duration::from_millis(args.timeout_ms);
        let reply = loop {
            match rx.recv_deadline(deadline) {
                Ok(r) if r["body"]["in_reply_to"] == msg_id => break Some(r),
                Ok(_) => continue, // a late reply to an earlier request
                Err(_) => break None,
            }
        };
        let returned = micros(shared.started);
        let kind = body["type"].as_str().unwrap_or_default();
        let text = |v: &Value| v.to_string();
        let (op_if_happened, outcome): (Option<Op>, Result<Option<Op>, u64>) = match reply {
            None => (None, Err(0)),
            Some(r) => {
                let b = &r["body"];
                match (kind, b["type"].as_str().unwrap_or_default()) {
                    ("read", "read_ok") => (None, Ok(Some(Op::Read(Some(text(&b["value"])))))),
                    ("read", "error") if b["code"] == 20 => (None, Ok(Some(Op::Read(None)))),
                    ("write", "write_ok") => (None, Ok(Some(Op::Write(text(&body["value"]))))),
                    ("cas", "cas_ok") => (
                        None,
                        Ok(Some(Op::Cas(text(&body["from"]), text(&body["to"])))),
                    ),
                    ("cas", "error") if b["code"] == 22 => {
                        (None, Ok(Some(Op::CasMismatch(text(&body["from"])))))
                    }
                    ("cas", "error") if b["code"] == 20 => (None, Ok(Some(Op::CasAbsent))),
                    ("wal_append", "wal_append_ok") => {
                        log.appended.push((
                            b["offset"].as_u64().unwrap_or(u64::MAX),
                            body["payload"].as_str().unwrap_or_default().to_string(),
                        ));
                        (None, Ok(None))
                    }
                    (_, "error") => (None, Err(b["code"].as_u64().unwrap_or(0))),
                    (k, t) => panic!("{k} answered with {t}: {r}"),
                }
            }
        };
        let _ = op_if_happened;
        let sample = |ok, unknown| Sample {
            at_s: invoked as f64 / 1e6,
            latency_ms: (returned - invoked) as f64 / 1000.0,
            ok,
            unknown,
        };
        match outcome {
            Ok(op) => {
                log.ok += 1;
                log.samples.push(sample(true, false));
                if let Some(op) = op {
                    log.history.push(Event {
                        key: key.clone(),
                        op,
                        invoked,
                        returned: Some(returned),
                    });
                }
            }
            // No reply, or error 13: it may or may not have happened.
            Err(code) if code == 0 || code == 13 => {
                log.unknown += 1;
                log.samples.push(sample(false, true));
                let maybe = match kind {
                    "write" => Some(Op::Write(text(&body["value"]))),
                    "cas" => Some(Op::Cas(text(&body["from"]), text(&body["to"]))),
                    _ => None,
                };
                if let Some(op) = maybe {
                    log.history.push(Event {
                        key: key.clone(),
                        op,
                        invoked,
                        returned: None,
                    });
                }
            }
            // Any other error: it certainly did nothing.
            Err(_) => {
                log.failed += 1;
                log.samples.push(sample(false, false));
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    shared.unregister(&name);
    log
}

/// A nemesis event, for the report and the plot.
#[derive(Clone, Debug)]
struct Fault {
    what: String,
    from_s: f64,
    to_s: f64,
}

fn set_partition(shared: &Shared, sides: &[Vec<usize>]) {
    let n = shared.ids.len();
    let mut net = shared.net.lock().expect("net");
    for a in 0..n {
        for b in 0..n {
            let same = sides.iter().any(|s| s.contains(&a) && s.contains(&b));
            net.cut[a][b] = !same;
        }
    }
}

/// Cuts the network into `sides` for `hold`, then heals it; the fault's description.
fn partition_for(shared: &Shared, sides: &[Vec<usize>], label: &str, hold: Duration) -> String {
    set_partition(shared, sides);
    std::thread::sleep(hold);
    heal(shared);
    let named: Vec<Vec<String>> = sides
        .iter()
        .map(|s| s.iter().map(|&i| shared.ids[i].clone()).collect())
        .collect();
    format!("partition ({label}) {named:?}")
}

fn heal(shared: &Shared) {
    let mut net = shared.net.lock().expect("net");
    for row in &mut net.cut {
        row.iter_mut().for_each(|c| *c = false);
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: sending a signal to a child process we started.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

fn nemesis(shared: Arc<Shared>, args: Args, seed: u64, until: Instant) -> Vec<Fault> {
    let kinds: Vec<&str> = args
        .nemesis
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty() && *k != "none")
        .collect();
    let mut faults = Vec::new();
    if kinds.is_empty() {
        return faults;
    }
    let mut rng = Rng::new(seed ^ 0xfa17);
    let now_s = |s: &Shared| s.started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs_f64(args.nemesis_every.min(2.0)));
    while Instant::now() + Duration::from_secs_f64(args.nemesis_every) < until {
        let hold =
            Duration::from_secs_f64(args.nemesis_every * (0.5 + rng.below(50) as f64 / 100.0));
        let from_s = now_s(&shared);
        // Among the members now (a node being replaced is left alone).
        let members = shared.members();
        let n = members.len();
        let what = match kinds[rng.below(kinds.len() as u64) as usize] {
            "partition" => {
                let mut order: Vec<usize> = members.clone();
                for i in (1..n).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let shape = rng.below(4);
                let (sides, label) = match shape {
                    3 => {
                        // The leader cut off (when one is known), with a new leader
                        // elected on the other side while it still believes it leads.
                        let l = current_leader(&shared).unwrap_or(order[0]);
                        let rest: Vec<usize> =
                            members.iter().copied().filter(|&i| i != l).collect();
                        (vec![vec![l], rest], "leader isolated")
                    }
                    0 => {
                        let k = n / 2;
                        (
                            vec![order[..k].to_vec(), order[k..].to_vec()],
                            "majority/minority",
                        )
                    }
                    1 => (
                        vec![vec![order[0]], order[1..].to_vec()],
                        "one node isolated",
                    ),
                    _ => {
                        // A bridge: two halves that both see the middle node.
                        let mid = order[0];
                        let rest = &order[1..];
                        let k = rest.len() / 2;
                        let mut a = rest[..k].to_vec();
                        a.push(mid);
                        let mut b = rest[k..].to_vec();
                        b.push(mid);
                        (vec![a, b], "bridge")
                    }
                };
                partition_for(&shared, &sides, label, hold)
            }
            "isolate-leader" => {
                // Every time: the leader alone on one side, with clients still sending
                // it requests, while the others elect a leader and commit writes.
                let l = current_leader(&shared).unwrap_or(members[0]);
                let rest: Vec<usize> = members.iter().copied().filter(|&i| i != l).collect();
                partition_for(&shared, &[vec![l], rest], "leader isolated", hold)
            }
            "kill" => {
                let i = members[rng.below(n as u64) as usize];
                shared.kill(i);
                std::thread::sleep(hold);
                if shared.members().contains(&i) {
                    shared.start(i);
                }
                format!("kill -9 and restart {}", shared.ids[i])
            }
            "pause" => {
                let i = members[rng.below(n as u64) as usize];
                let pid = {
                    let mut net = shared.net.lock().expect("net");
                    net.nodes[i].as_mut().map(|p| {
                        p.paused = true;
                        p.child.id()
                    })
                };
                if let Some(pid) = pid {
                    signal(pid, libc::SIGSTOP);
                    std::thread::sleep(hold);
                    signal(pid, libc::SIGCONT);
                    if let Some(p) = shared.net.lock().expect("net").nodes[i].as_mut() {
                        p.paused = false;
                    }
                }
                format!("pause {}", shared.ids[i])
            }
            other => panic!(
                "unknown nemesis {other:?}: use partition, isolate-leader, kill, pause or none"
            ),
        };
        let fault = Fault {
            what,
            from_s,
            to_s: now_s(&shared),
        };
        println!(
            "  {:>6.1}-{:>6.1} s  {}",
            fault.from_s, fault.to_s, fault.what
        );
        faults.push(fault);
        std::thread::sleep(Duration::from_secs_f64(args.nemesis_every * 0.3));
    }
    faults
}

/// The node that says it leads, if one does.
fn current_leader(shared: &Shared) -> Option<usize> {
    shared.members().into_iter().find(|&i| {
        ask(
            shared,
            i,
            json!({"type": "wal_status"}),
            Duration::from_millis(300),
        )
        .is_some_and(|b| b["status"]["role"] == "leader")
    })
}

/// Asks node `i` one request and waits for the reply.
fn ask(shared: &Shared, i: usize, body: Value, timeout: Duration) -> Option<Value> {
    ask_many(shared, i, vec![body], timeout).pop().flatten()
}

/// Sends node `i` every request at once and waits for the replies (in order; `None`
/// for those that did not come in time).
fn ask_many(
    shared: &Shared,
    i: usize,
    bodies: Vec<Value>,
    timeout: Duration,
) -> Vec<Option<Value>> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("check{id}");
    let rx = shared.register(&name);
    let n = bodies.len();
    for (k, mut body) in bodies.into_iter().enumerate() {
        body["msg_id"] = json!(k + 1);
        let line = json!({"src": name, "dest": shared.ids[i], "body": body}).to_string();
        shared.send_to_node(i, line);
    }
    let mut out: Vec<Option<Value>> = vec![None; n];
    let deadline = Instant::now() + timeout;
    let mut got = 0;
    while got < n {
        let Ok(r) = rx.recv_deadline(deadline) else {
            break;
        };
        if let Some(k) = r["body"]["in_reply_to"].as_u64()
            && (1..=n as u64).contains(&k)
            && out[k as usize - 1].is_none()
        {
            out[k as usize - 1] = Some(r["body"].clone());
            got += 1;
        }
    }
    shared.unregister(&name);
    out
}

/// Starts `nodes` node processes under `out` and the network between them.
fn start_cluster(args: &Args, bin: &Path, nodes: usize, out: &Path) -> Arc<Shared> {
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

/// Ends every node's input and waits for the processes to exit.
fn stop_cluster(shared: &Shared) {
    let mut net = shared.net.lock().expect("net");
    for slot in net.nodes.iter_mut() {
        if let Some(mut p) = slot.take() {
            if p.paused {
                signal(p.child.id(), libc::SIGCONT);
            }
            drop(p.input);
            let _ = p.child.wait();
        }
    }
}

/// What the replacement of a lost node did, for the report.
#[derive(Default, Debug)]
struct Replacement {
    lost: String,
    new: String,
    /// Messages the members refused from the lost node, back under its old id.
    refused: u64,
    /// Seconds into the run: wiped, removed, added, caught up, promoted.
    steps: Vec<(String, f64)>,
    /// Snapshot transfers the new member completed to catch up.
    transfers: u64,
    /// Whether the new member loaded a snapshot from the store (its log says so).
    from_store: bool,
    done: bool,
}

/// Sends `body` to the leader until it answers `ok_type` (or `done_if` says an error
/// means the change is already made), for up to 60 s; returns the answer.
fn to_leader(
    shared: &Shared,
    body: &Value,
    ok_type: &str,
    done_if: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(l) = current_leader(shared)
            && let Some(r) = ask(shared, l, body.clone(), Duration::from_secs(5))
        {
            if r["type"] == ok_type || done_if(&r) {
                return Some(r);
            }
            log::info!("{} on {}: {r}", body["type"], shared.ids[l]);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// A quarter into the run: a follower loses its disk and comes back under its old id
/// (refused), then is replaced by the spare node, step by step as the protocol
/// reference tells a user to.
fn replace(shared: Arc<Shared>, args: Args) -> Replacement {
    std::thread::sleep(Duration::from_secs_f64(args.duration / 4.0));
    let now_s = || shared.started.elapsed().as_secs_f64();
    let members = shared.members();
    let leader = current_leader(&shared);
    // A follower, chosen by the seed.
    let followers: Vec<usize> = members
        .iter()
        .copied()
        .filter(|&i| Some(i) != leader)
        .collect();
    let lost = followers[args.seed as usize % followers.len()];
    let new = shared.ids.len() - 1;
    let mut r = Replacement {
        lost: shared.ids[lost].clone(),
        new: shared.ids[new].clone(),
        ..Replacement::default()
    };
    let refused_now = |shared: &Shared| -> u64 {
        shared
            .members()
            .into_iter()
            .filter(|&i| i != lost)
            .filter_map(|i| {
                ask(
                    shared,
                    i,
                    json!({"type": "wal_status"}),
                    Duration::from_secs(2),
                )
            })
            .map(|b| b["status"]["refused_messages"].as_u64().unwrap_or(0))
            .sum()
    };
    let refused_before = refused_now(&shared);
    // The accident: the disk is gone, and the node is started again as it was.
    shared
        .members
        .lock()
        .expect("members")
        .retain(|&i| i != lost);
    shared.kill(lost);
    let _ = std::fs::remove_dir_all(shared.out.join("data").join(&shared.ids[lost]));
    shared.start(lost);
    r.steps.push((
        format!("{} wiped and restarted under its id", r.lost),
        now_s(),
    ));
    // Until its peers have refused some of its messages (a partition may keep it
    // apart for a while), 10 s at most.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        r.refused = refused_now(&shared).saturating_sub(refused_before);
        if r.refused > 0 {
            break;
        }
    }
    shared.kill(lost);
    let is = |code: u64, text: &'static str| {
        move |v: &Value| v["code"] == code && v["text"].as_str().is_some_and(|t| t.contains(text))
    };
    // 1. Remove the lost member.
    let removed = to_leader(
        &shared,
        &json!({"type": "member_remove", "member": r.lost}),
        "member_remove_ok",
        // Applied by an earlier attempt whose answer was lost.
        is(22, "is not a member"),
    );
    if removed.is_none() {
        return r;
    }
    r.steps.push((format!("{} removed", r.lost), now_s()));
    // 2. Add the new node as a learner, 3. start it empty with join.
    let added = to_leader(
        &shared,
        &json!({"type": "member_add", "member": r.new}),
        "member_add_ok",
        // Added by an earlier attempt whose answer was lost.
        is(22, "was already given"),
    );
    if added.is_none() {
        return r;
    }
    r.steps
        .push((format!("{} added as a learner", r.new), now_s()));
    // With a store, the new node is to start from it: wait (30 s at most) until a
    // member has a chain there. On a loaded machine the first upload can come later
    // than a quarter into the run.
    if args.store {
        let deadline = Instant::now() + Duration::from_secs(30);
        let in_store = |shared: &Shared| {
            shared.members().into_iter().any(|i| {
                ask(
                    shared,
                    i,
                    json!({"type": "wal_status"}),
                    Duration::from_secs(2),
                )
                .is_some_and(|b| b["status"]["snapshot_store"]["uploaded_index"].is_u64())
            })
        };
        while !in_store(&shared) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    shared.start(new);
    // 4. Wait until it has applied what the leader had committed.
    let target = current_leader(&shared)
        .and_then(|l| {
            ask(
                &shared,
                l,
                json!({"type": "wal_status"}),
                Duration::from_secs(2),
            )
        })
        .and_then(|b| b["status"]["commit_index"].as_u64())
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = ask(
            &shared,
            new,
            json!({"type": "wal_status"}),
            Duration::from_secs(2),
        );
        if let Some(s) = s.as_ref().map(|b| &b["status"])
            && s["applied_index"].as_u64().unwrap_or(0) >= target
        {
            r.transfers = s["snapshot_transfers"]["completed"].as_u64().unwrap_or(0);
            r.from_store = std::fs::read_to_string(shared.out.join(format!("{}.log", r.new)))
                .is_ok_and(|log| log.contains("bootstrap: loaded the snapshot"));
            break;
        }
        if Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    r.steps.push((format!("{} caught up", r.new), now_s()));
    // 5. Promote it.
    let promoted = to_leader(
        &shared,
        &json!({"type": "member_promote", "member": r.new}),
        "member_promote_ok",
        // Promoted by an earlier attempt whose answer was lost.
        is(22, "is not a learner"),
    );
    if promoted.is_none() {
        return r;
    }
    r.steps.push((format!("{} promoted", r.new), now_s()));
    shared.members.lock().expect("members").push(new);
    r.done = true;
    r
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() -> ExitCode {
    env_logger::init();
    let args = Args::parse();
    if let Some(path) = &args.check {
        return check_file(path);
    }
    let bin = args.node.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .expect("own path")
            .with_file_name("flintlog")
    });
    let _ = std::fs::remove_dir_all(&args.out);
    std::fs::create_dir_all(&args.out).expect("create --out");
    if args.bench {
        return bench::run(&args, &bin);
    }
    println!(
        "flintlog-cluster: {} nodes, {:.0} s, nemesis {}, latency {} ms, loss {:.0}%, {} lin-kv clients on {} keys, {} appenders, seed {}",
        args.nodes,
        args.duration,
        args.nemesis,
        args.latency_ms,
        args.loss * 100.0,
        args.clients,
        args.keys,
        args.appenders,
        args.seed
    );
    let shared = start_cluster(&args, &bin, args.nodes, &args.out);
    let until = Instant::now() + Duration::from_secs_f64(args.duration);
    let mut clients = Vec::new();
    for c in 0..args.clients + args.appenders {
        let shared = shared.clone();
        let args2 = args.clone();
        let appender = c >= args.clients;
        let name = format!("c{}", c + 1);
        let seed = args.seed.wrapping_mul(1000).wrapping_add(c as u64);
        clients.push(std::thread::spawn(move || {
            client(shared, name, appender, args2, seed, until)
        }));
    }
    let faults = {
        let shared = shared.clone();
        let args = args.clone();
        let seed = args.seed;
        std::thread::spawn(move || nemesis(shared, args, seed, until))
    };
    let replacement = args.replace.then(|| {
        let shared = shared.clone();
        let args = args.clone();
        std::thread::spawn(move || replace(shared, args))
    });
    let logs: Vec<ClientLog> = clients
        .into_iter()
        .map(|h| h.join().expect("client"))
        .collect();
    let faults = faults.join().expect("nemesis");
    let replacement = replacement.map(|h| h.join().expect("replacement"));

    // Heal: no partition, no loss, nothing paused, every member running.
    heal(&shared);
    shared.net.lock().expect("net").lossy = false;
    let members = shared.members();
    for &i in &members {
        let pid = {
            let net = shared.net.lock().expect("net");
            net.nodes[i]
                .as_ref()
                .filter(|p| p.paused)
                .map(|p| p.child.id())
        };
        if let Some(pid) = pid {
            signal(pid, libc::SIGCONT);
        }
        if shared.net.lock().expect("net").nodes[i].is_none() {
            shared.start(i);
        }
    }
    let healed_at = Instant::now();
    // Converge: every node reports the same applied index and digest.
    let mut statuses: Vec<Value> = Vec::new();
    let mut converged = false;
    while healed_at.elapsed() < Duration::from_secs(30) {
        statuses = members
            .iter()
            .map(|&i| {
                ask(
                    &shared,
                    i,
                    json!({"type": "wal_status"}),
                    Duration::from_secs(2),
                )
                .map_or(Value::Null, |b| b["status"].clone())
            })
            .collect();
        let key = |s: &Value| (s["applied_index"].clone(), s["state_digest"].clone());
        if statuses
            .iter()
            .all(|s| !s.is_null() && s["applied_index"].as_u64().unwrap_or(0) > 0)
            && statuses.iter().all(|s| key(s) == key(&statuses[0]))
        {
            converged = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // Final reads of every key (linearizable reads through node 1).
    let mut history: Vec<Event> = logs.iter().flat_map(|l| l.history.clone()).collect();
    for k in 0..args.keys {
        let key = format!("k{k}");
        let invoked = micros(shared.started);
        let r = ask(
            &shared,
            members[0],
            json!({"type": "read", "key": key}),
            Duration::from_secs(10),
        );
        let returned = micros(shared.started);
        let op = match r {
            Some(b) if b["type"] == "read_ok" => Op::Read(Some(b["value"].to_string())),
            Some(b) if b["code"] == 20 => Op::Read(None),
            other => {
                eprintln!("final read of {key} failed: {other:?}");
                continue;
            }
        };
        history.push(Event {
            key,
            op,
            invoked,
            returned: Some(returned),
        });
    }
    // Every acknowledged append, on every node.
    let appended: Vec<(u64, String)> = logs.iter().flat_map(|l| l.appended.clone()).collect();
    let mut by_offset: BTreeMap<u64, &str> = BTreeMap::new();
    let mut duplicate_offsets = 0;
    for (o, p) in &appended {
        if by_offset.insert(*o, p).is_some() {
            duplicate_offsets += 1;
        }
    }
    let mut lost = 0;
    // Per node, appends compacted away behind a snapshot (always the oldest ones), and
    // appends read back with their payload.
    let mut compacted = vec![0u64; members.len()];
    let mut read_back = vec![0u64; members.len()];
    // Offsets some node read back: the rest were compacted away on every node.
    let mut read_somewhere: std::collections::BTreeSet<u64> = Default::default();
    for (m, &i) in members.iter().enumerate() {
        let id = &shared.ids[i];
        let asks = by_offset
            .keys()
            .map(|o| json!({"type": "wal_read", "offset": o}))
            .collect();
        let replies = ask_many(&shared, i, asks, Duration::from_secs(30));
        let mut readable_seen = false;
        for ((o, p), r) in by_offset.iter().zip(replies) {
            let gone = r.as_ref().is_some_and(|b| {
                b["code"] == 20 && b["text"].as_str().is_some_and(|t| t.contains("compacted"))
            });
            if gone && !readable_seen {
                compacted[m] += 1;
                continue;
            }
            readable_seen = true;
            if r.as_ref().and_then(|b| b["payload"].as_str()) == Some(p) {
                read_back[m] += 1;
                read_somewhere.insert(*o);
            } else {
                lost += 1;
                if lost <= 5 {
                    eprintln!("{id}: offset {o} should hold {p:?}, got {r:?}");
                }
            }
        }
    }
    stop_cluster(&shared);

    let verdict = lincheck::check(&history);
    let linearizable = matches!(verdict, lincheck::Verdict::Linearizable { .. });
    let (ok, failed, unknown): (u64, u64, u64) = logs.iter().fold((0, 0, 0), |a, l| {
        (a.0 + l.ok, a.1 + l.failed, a.2 + l.unknown)
    });
    let total = (ok + failed + unknown).max(1);
    let samples: Vec<Sample> = logs.iter().flat_map(|l| l.samples.clone()).collect();
    let mut lat: Vec<f64> = samples
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.latency_ms)
        .collect();
    lat.sort_by(f64::total_cmp);
    let digests_equal = converged;
    let replaced = replacement.as_ref().is_none_or(|r| r.done && r.refused > 0);
    let pass = linearizable && lost == 0 && duplicate_offsets == 0 && digests_equal && replaced;
    println!(
        "requests        {total} ({ok} ok, {failed} failed for sure, {unknown} unknown): availability {:.1}%",
        ok as f64 * 100.0 / total as f64
    );
    println!(
        "latency (ok)    p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0)
    );
    println!("nemesis         {} events", faults.len());
    println!(
        "linearizable    {} ({} operations checked): {verdict:?}",
        if linearizable { "yes" } else { "NO" },
        history.len()
    );
    let names: Vec<String> = members.iter().map(|&i| shared.ids[i].clone()).collect();
    let per_node = |values: &[u64]| -> String {
        names
            .iter()
            .zip(values)
            .map(|(n, v)| format!("{n} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "appends         {} acknowledged at distinct offsets ({duplicate_offsets} offsets acknowledged twice); \
         each node asked for every one:",
        by_offset.len()
    );
    println!(
        "                read back with their payload: {}",
        per_node(&read_back)
    );
    println!(
        "                compacted away behind a snapshot, so not read (the oldest ones): {}",
        per_node(&compacted)
    );
    println!(
        "                verified by reading on at least one node: {} of {}; the other {} were \
         compacted away on every node before the check, counted and not read; missing or \
         wrong where a log still holds them: {lost}",
        read_somewhere.len(),
        by_offset.len(),
        by_offset.len() - read_somewhere.len()
    );
    let count = |field: &str| -> Vec<u64> {
        statuses
            .iter()
            .map(|s| s[field].as_u64().unwrap_or(0))
            .collect()
    };
    let (snapshots, compactions) = (count("snapshots_written"), count("compactions"));
    let transfers: Vec<Value> = statuses
        .iter()
        .map(|s| s["snapshot_transfers"].clone())
        .collect();
    let transfer_total = |field: &str| -> u64 {
        transfers
            .iter()
            .map(|t| t[field].as_u64().unwrap_or(0))
            .sum()
    };
    println!(
        "log management  snapshots written: {}; compactions: {}; first index: {}",
        per_node(&snapshots),
        per_node(&compactions),
        per_node(&count("first_index"))
    );
    println!(
        "transfers       snapshots received: {} started, {} resumed from a part file, {} chunk windows asked again, {} restarted from zero, {} completed; {} bytes of chains held already, not sent again",
        transfer_total("started"),
        transfer_total("resumed"),
        transfer_total("asked_again"),
        transfer_total("restarted"),
        transfer_total("completed"),
        transfer_total("bytes_held")
    );
    println!(
        "replicas        {} at applied index {} (digest {})",
        if digests_equal { "agree" } else { "DISAGREE" },
        statuses
            .first()
            .map_or(Value::Null, |s| s["applied_index"].clone()),
        statuses
            .first()
            .map_or(Value::Null, |s| s["state_digest"].clone())
    );
    if let Some(r) = &replacement {
        let steps: Vec<String> = r
            .steps
            .iter()
            .map(|(what, at)| format!("{at:.1} s {what}"))
            .collect();
        println!(
            "replacement     {}: {} messages from {} refused after its disk was lost; {}; {} caught up with {} snapshot(s) from the leader{}; members now {:?}",
            if r.done { "done" } else { "NOT DONE" },
            r.refused,
            r.lost,
            steps.join(", "),
            r.new,
            r.transfers,
            if r.from_store {
                ", after loading one from the store"
            } else {
                ""
            },
            members
                .iter()
                .map(|&i| shared.ids[i].clone())
                .collect::<Vec<_>>()
        );
    }
    println!("verdict         {}", if pass { "PASS" } else { "FAIL" });
    let report = json!({
        "nodes": args.nodes,
        "duration_s": args.duration,
        "nemesis": faults.iter().map(|f| json!({"what": f.what, "from_s": f.from_s, "to_s": f.to_s})).collect::<Vec<_>>(),
        "requests": {"total": total, "ok": ok, "failed": failed, "unknown": unknown},
        "latency_ms": {"p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99), "max": lat.last().copied().unwrap_or(0.0)},
        "linearizable": linearizable,
        "checker": format!("{verdict:?}"),
        "appends": {"acknowledged": appended.len(), "lost": lost, "duplicate_offsets": duplicate_offsets,
            "nodes": names, "read_back_per_node": read_back, "compacted_per_node": compacted,
            "read_back_somewhere": read_somewhere.len()},
        "snapshots_written": snapshots,
        "compactions": compactions,
        "snapshot_transfers": {
            "started": transfer_total("started"),
            "resumed": transfer_total("resumed"),
            "asked_again": transfer_total("asked_again"),
            "restarted": transfer_total("restarted"),
            "completed": transfer_total("completed"),
            "bytes_held": transfer_total("bytes_held"),
        },
        "replicas_agree": digests_equal,
        "members": members.iter().map(|&i| shared.ids[i].clone()).collect::<Vec<_>>(),
        "replacement": replacement.as_ref().map(|r| json!({
            "lost": r.lost,
            "new": r.new,
            "refused_messages": r.refused,
            "steps": r.steps.iter().map(|(w, at)| json!({"what": w, "at_s": at})).collect::<Vec<_>>(),
            "snapshots_installed": r.transfers,
            "bootstrapped_from_store": r.from_store,
            "done": r.done,
        })),
        "statuses": statuses,
        "pass": pass,
    });
    std::fs::write(
        args.out.join("history.json"),
        serde_json::to_string_pretty(&history.iter().map(event_json).collect::<Vec<_>>())
            .expect("json"),
    )
    .expect("write history.json");
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&report).expect("json"),
    )
    .expect("write report.json");
    if let Err(e) = plot(
        &args.out.join("latency.svg"),
        &samples,
        &faults,
        shared.started.elapsed().as_secs_f64(),
        args.timeout_ms,
    ) {
        eprintln!("{e}");
    }
    println!(
        "files           {}: report.json (these figures and every node's status), history.json \
         (every operation, for --check), latency.svg (the plot), {} (each node's log), data/ (the nodes' directories)",
        args.out.display(),
        shared
            .ids
            .iter()
            .map(|id| format!("{id}.log"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The kinds of nemesis window, as the plot shades them: (the `what` prefix, label, colour).
const FAULT_KINDS: [(&str, &str, (u8, u8, u8)); 3] = [
    ("partition", "partition", (66, 133, 244)),
    ("kill", "kill -9 until restart", (230, 145, 56)),
    ("pause", "SIGSTOP pause", (142, 68, 173)),
];

fn plot(
    path: &Path,
    samples: &[Sample],
    faults: &[Fault],
    elapsed: f64,
    timeout_ms: u64,
) -> Result<(), String> {
    use plotters::prelude::*;
    // Log scale: the requests below, each kind of nemesis window in a band above them.
    let data_max = samples.iter().map(|s| s.latency_ms).fold(1.0, f64::max) * 1.5;
    let y_max = data_max * 1.6f64.powi(4);
    let y_min = 0.1;
    let err = |e: &dyn std::fmt::Display| format!("plotting {}: {e}", path.display());
    let root = SVGBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "latency of each request against the time it was sent (log scale)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..elapsed.max(1.0), (y_min..y_max).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .y_desc("latency (ms, log scale)")
        .y_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        })
        .draw()
        .map_err(|e| err(&e))?;
    // Each kind of nemesis window in a band of its own at the top, and shaded lightly
    // over the whole height: overlapping kinds stay readable in their bands.
    for (k, (prefix, label, (r, g, b))) in FAULT_KINDS.iter().enumerate() {
        let colour = RGBColor(*r, *g, *b);
        let mine: Vec<&Fault> = faults
            .iter()
            .filter(|f| f.what.starts_with(prefix))
            .collect();
        let band_top = y_max / 1.6f64.powi(k as i32);
        let band_bottom = band_top / 1.5;
        chart
            .draw_series(mine.iter().map(|f| {
                Rectangle::new(
                    [(f.from_s, y_min), (f.to_s.max(f.from_s + 0.05), y_max)],
                    colour.mix(0.08).filled(),
                )
            }))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(mine.iter().map(|f| {
                Rectangle::new(
                    [
                        (f.from_s, band_bottom),
                        (f.to_s.max(f.from_s + 0.05), band_top),
                    ],
                    colour.mix(0.7).filled(),
                )
            }))
            .map_err(|e| err(&e))?
            .label(format!(
                "{label}: {} windows, band {} from the top, shaded below",
                mine.len(),
                k + 1
            ))
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.mix(0.7).filled())
            });
    }
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok).collect();
    let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok && !s.unknown).collect();
    let unknown: Vec<&Sample> = samples.iter().filter(|s| s.unknown).collect();
    chart
        .draw_series(ok.iter().map(|s| {
            Circle::new(
                (s.at_s, s.latency_ms.max(y_min)),
                2,
                GREEN.mix(0.5).filled(),
            )
        }))
        .map_err(|e| err(&e))?
        .label(format!("acknowledged ({})", ok.len()))
        .legend(|(x, y)| Circle::new((x + 7, y), 3, GREEN.filled()));
    chart
        .draw_series(
            failed
                .iter()
                .map(|s| Cross::new((s.at_s, s.latency_ms.max(y_min)), 4, BLACK.stroke_width(1))),
        )
        .map_err(|e| err(&e))?
        .label(format!(
            "failed for sure: an error that says nothing was done ({})",
            failed.len()
        ))
        .legend(|(x, y)| Cross::new((x + 7, y), 4, BLACK.stroke_width(1)));
    chart
        .draw_series(
            unknown
                .iter()
                .map(|s| TriangleMarker::new((s.at_s, s.latency_ms.max(y_min)), 4, RED.filled())),
        )
        .map_err(|e| err(&e))?
        .label(format!(
            "unknown outcome: error 13 (at the node's 3 s request timeout) or no reply \
             within the client's {timeout_ms} ms ({})",
            unknown.len()
        ))
        .legend(|(x, y)| TriangleMarker::new((x + 7, y), 4, RED.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

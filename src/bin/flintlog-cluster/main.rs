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

mod bench;
mod checks;
mod clients;
mod nemesis;
mod network;
mod processes;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use flintlog::lincheck::Event;

use checks::{check_appends, check_file, converge, final_reads};
use clients::{ClientLog, client};
use nemesis::{Fault, Replacement, end_faults, nemesis, replace};
use processes::{Shared, start_cluster, stop_cluster};
use report::{Run, report};

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
    /// How the nodes reach each other: `stdin` (each runs as a Maelstrom node and this
    /// program carries their `raft` lines, with latency and loss) or `tcp` (each runs
    /// `flintlog serve`, peers dial each other through a proxy per link that this
    /// program cuts for partitions, and clients connect to the members' client ports;
    /// no latency or loss is added).
    #[arg(long, default_value = "stdin", value_parser = ["stdin", "tcp"])]
    transport: String,
}

impl Args {
    /// Whether the nodes run `flintlog serve` over TCP.
    fn tcp(&self) -> bool {
        self.transport == "tcp"
    }
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
    if args.tcp() && args.replace {
        eprintln!("--replace needs a new member to join, which needs --transport stdin");
        return ExitCode::from(2);
    }
    let _ = std::fs::remove_dir_all(&args.out);
    std::fs::create_dir_all(&args.out).expect("create --out");
    if args.bench {
        return bench::run(&args, &bin);
    }
    let network = if args.tcp() {
        "over TCP through proxies (no added latency or loss)".to_string()
    } else {
        format!(
            "latency {} ms, loss {:.0}%",
            args.latency_ms,
            args.loss * 100.0
        )
    };
    println!(
        "flintlog-cluster: {} nodes, {:.0} s, nemesis {}, {network}, {} lin-kv clients on {} keys, {} appenders, seed {}",
        args.nodes, args.duration, args.nemesis, args.clients, args.keys, args.appenders, args.seed
    );
    let shared = start_cluster(&args, &bin, args.nodes, &args.out);
    let (logs, faults, replacement) = run_workload(&args, &shared);
    let members = end_faults(&shared);
    let (statuses, converged) = converge(&shared, &members);
    let mut history: Vec<Event> = logs.iter().flat_map(|l| l.history.clone()).collect();
    history.extend(final_reads(&shared, members[0], args.keys));
    let appends = check_appends(&shared, &members, &logs);
    stop_cluster(&shared);
    let pass = report(&Run {
        args: &args,
        shared: &shared,
        members: &members,
        logs: &logs,
        history: &history,
        faults: &faults,
        replacement: replacement.as_ref(),
        statuses: &statuses,
        converged,
        appends: &appends,
    });
    if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the clients, the nemesis and the replacement (with `--replace`) until the
/// run's end: what the clients saw, the faults, and what the replacement did.
fn run_workload(
    args: &Args,
    shared: &Arc<Shared>,
) -> (Vec<ClientLog>, Vec<Fault>, Option<Replacement>) {
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

    (logs, faults, replacement)
}

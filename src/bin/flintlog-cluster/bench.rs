//! `flintlog-cluster --bench`: a Raft group measured against one node, side by side.
//!
//! - throughput: the same pipelining append clients against one node and against a
//!   group of `--nodes`, rounds interleaved (one, group, one, group, ...), each round
//!   on fresh directories; the ratio of each pair, and its spread;
//! - commit latency on the group: one client with one request in flight, then 64;
//! - failover: `--kills` times, the leader is killed (`kill -9`) and the time from the
//!   kill to the first write acknowledged by another node is measured; the killed node
//!   is restarted and catches up before the next kill.
//!
//! The network delivers node-to-node lines at once and loses none: what is measured
//! is the nodes, not the simulated network.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Args;
use crate::clients::micros;
use crate::network::ask;
use crate::processes::{Shared, start_cluster, stop_cluster};
use crate::report::percentile;

#[path = "../flintlog-bench/common.rs"]
#[allow(dead_code)]
mod common;

/// Appends by `clients` clients, each keeping `depth` in flight, spread over the
/// nodes, for `seconds`; returns (appends acknowledged per second, latencies in ms).
fn load(shared: &Shared, clients: usize, depth: usize, seconds: f64) -> (f64, Vec<f64>) {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let name = format!("b{c}");
            let rx = shared.register(&name);
            let node = c % shared.ids.len();
            let line = move |id: u64| {
                json!({"src": name, "dest": format!("n{}", node + 1),
                       "body": {"type": "wal_append", "msg_id": id, "payload": format!("set k{id}=v")}})
                .to_string()
            };
            (node, rx, line)
        })
        .collect();
    // One thread drives every client: send up to `depth` each, then take replies.
    let mut in_flight: Vec<HashMap<u64, u64>> = vec![HashMap::new(); clients];
    let mut next_id = vec![1u64; clients];
    let mut lat = Vec::new();
    let mut acked = 0u64;
    loop {
        let open = Instant::now() < until;
        let mut waiting = 0;
        for (c, (node, rx, line)) in handles.iter().enumerate() {
            while open && in_flight[c].len() < depth {
                let id = next_id[c];
                next_id[c] += 1;
                in_flight[c].insert(id, micros(shared.started));
                shared.send_to_node(*node, line(id));
            }
            while let Ok(r) = rx.try_recv() {
                let id = r["body"]["in_reply_to"].as_u64().unwrap_or(0);
                if let Some(sent) = in_flight[c].remove(&id)
                    && r["body"]["type"] == "wal_append_ok"
                {
                    acked += 1;
                    lat.push((micros(shared.started) - sent) as f64 / 1000.0);
                }
            }
            waiting += in_flight[c].len();
        }
        if !open && (waiting == 0 || Instant::now() > until + Duration::from_secs(10)) {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = started.elapsed().as_secs_f64();
    for c in 0..clients {
        shared.unregister(&format!("b{c}"));
    }
    lat.sort_by(f64::total_cmp);
    (acked as f64 / elapsed, lat)
}

/// Waits until some node says it is the leader; returns its index.
fn leader(shared: &Shared, within: Duration) -> Option<usize> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        for i in 0..shared.ids.len() {
            let alive = shared.net.lock().expect("net").nodes[i].is_some();
            if alive
                && let Some(b) = ask(
                    shared,
                    i,
                    json!({"type": "wal_status"}),
                    Duration::from_millis(500),
                )
                && b["status"]["role"] == "leader"
            {
                return Some(i);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Waits until every node has applied the same index.
fn caught_up(shared: &Shared, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        let applied: Vec<Value> = (0..shared.ids.len())
            .map(|i| {
                ask(
                    shared,
                    i,
                    json!({"type": "wal_status"}),
                    Duration::from_millis(500),
                )
                .map_or(Value::Null, |b| b["status"]["applied_index"].clone())
            })
            .collect();
        if applied.iter().all(|a| !a.is_null() && *a == applied[0]) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Kills the leader and measures the time to the next acknowledged write.
fn failover(shared: &Shared, kills: usize) -> Vec<f64> {
    let mut times = Vec::new();
    let n = shared.ids.len();
    for k in 0..kills {
        let Some(l) = leader(shared, Duration::from_secs(10)) else {
            eprintln!("no leader before kill {k}");
            continue;
        };
        let proc = shared.net.lock().expect("net").nodes[l].take();
        let killed_at = Instant::now();
        if let Some(mut p) = proc {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        // A write every 10 ms to the surviving nodes in turn, each waiting in its node
        // for a leader: the first acknowledgement marks the end of the failover.
        let name = format!("failover{k}");
        let rx = shared.register(&name);
        let mut t = None;
        let mut attempt = 0u64;
        while killed_at.elapsed() < Duration::from_secs(30) {
            attempt += 1;
            let to = (l + 1 + attempt as usize % (n - 1)) % n;
            let line = json!({"src": name, "dest": format!("n{}", to + 1),
                "body": {"type": "write", "msg_id": attempt, "key": "failover", "value": k}})
            .to_string();
            shared.send_to_node(to, line);
            if let Ok(r) = rx.recv_timeout(Duration::from_millis(10))
                && r["body"]["type"] == "write_ok"
            {
                t = Some(killed_at.elapsed().as_secs_f64());
                break;
            }
            while let Ok(r) = rx.try_recv() {
                if r["body"]["type"] == "write_ok" {
                    t = Some(killed_at.elapsed().as_secs_f64());
                }
            }
            if t.is_some() {
                break;
            }
        }
        shared.unregister(&name);
        match t {
            Some(t) => {
                println!(
                    "  kill {:>2}: leader n{} killed, a write acknowledged after {:.0} ms",
                    k + 1,
                    l + 1,
                    t * 1000.0
                );
                times.push(t);
            }
            None => eprintln!("  kill {}: no write acknowledged within 30 s", k + 1),
        }
        shared.start(l);
        if !caught_up(shared, Duration::from_secs(20)) {
            eprintln!("  n{} did not catch up within 20 s", l + 1);
        }
    }
    times
}

fn fmt_spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    format!("{lo:.2}-{hi:.2}x")
}

pub fn run(args: &Args, bin: &Path) -> ExitCode {
    let _ = std::fs::remove_dir_all(&args.out);
    std::fs::create_dir_all(&args.out).expect("create --out");
    let mut md = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "flintlog-cluster --bench: {} nodes against 1, {} rounds of {:.0} s, {} kills; {cores} cores",
        args.nodes, args.rounds, args.round_seconds, args.kills
    );
    md.push_str(&format!(
        "## The group\n\nWritten by `make bench-cluster` (`flintlog-cluster --bench`): {} nodes on \
         one machine ({cores} cores), node-to-node lines delivered at once, no loss, \
         `--fsync always` on every node.\n\n",
        args.nodes
    ));
    // Throughput, side by side.
    let mut ratios = Vec::new();
    let mut rows = Vec::new();
    for (clients, depth) in [(64, 16), (64, 1)] {
        let mut pair = Vec::new();
        for round in 0..args.rounds {
            let mut rate = [0.0; 2];
            for (side, nodes) in [1, args.nodes].into_iter().enumerate() {
                let out = args
                    .out
                    .join(format!("tp-{clients}x{depth}-{round}-{nodes}"));
                let mut a = args.clone();
                a.loss = 0.0;
                a.latency_ms = "0-0".into();
                let shared = start_cluster(&a, bin, nodes, &out);
                if nodes > 1 {
                    let _ = leader(&shared, Duration::from_secs(10));
                } else {
                    let _ = ask(
                        &shared,
                        0,
                        json!({"type": "wal_info"}),
                        Duration::from_secs(5),
                    );
                }
                let (r, _) = load(&shared, clients, depth, args.round_seconds);
                stop_cluster(&shared);
                rate[side] = r;
            }
            println!(
                "  {clients} clients x {depth}: one node {:.0}/s, group {:.0}/s: {:.2}x",
                rate[0],
                rate[1],
                rate[1] / rate[0]
            );
            pair.push(rate);
        }
        let r: Vec<f64> = pair.iter().map(|p| p[1] / p[0]).collect();
        rows.push(format!(
            "| {clients} clients x {depth} in flight | {:.0}-{:.0} | {:.0}-{:.0} | {} |",
            pair.iter().map(|p| p[0]).fold(f64::INFINITY, f64::min),
            pair.iter().map(|p| p[0]).fold(0.0, f64::max),
            pair.iter().map(|p| p[1]).fold(f64::INFINITY, f64::min),
            pair.iter().map(|p| p[1]).fold(0.0, f64::max),
            fmt_spread(&r)
        ));
        ratios.extend(r);
    }
    md.push_str("Durable appends through the protocol, clients spread over every node (a follower forwards to the leader):\n\n| load | one node (appends/s) | group (appends/s) | group / one node |\n|---|---|---|---|\n");
    for r in &rows {
        md.push_str(r);
        md.push('\n');
    }
    // Commit latency and failover on one group.
    let mut a = args.clone();
    a.loss = 0.0;
    a.latency_ms = "0-0".into();
    let shared = start_cluster(&a, bin, args.nodes, &args.out.join("group"));
    let _ = leader(&shared, Duration::from_secs(10));
    md.push_str("\nCommit latency on the group (appends, request to acknowledgement):\n\n| clients x in flight | p50 ms | p99 ms |\n|---|---|---|\n");
    for clients in [1, 64] {
        let (_, lat) = load(&shared, clients, 1, args.round_seconds);
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        println!("  commit latency, {clients} clients x 1: p50 {p50:.2} ms, p99 {p99:.2} ms");
        md.push_str(&format!("| {clients} x 1 | {p50:.2} | {p99:.2} |\n"));
    }
    let mut times = failover(&shared, args.kills);
    stop_cluster(&shared);
    times.sort_by(f64::total_cmp);
    if !times.is_empty() {
        let (med, max) = (percentile(&times, 0.5), *times.last().expect("non-empty"));
        println!(
            "  failover over {} kills: median {:.0} ms, max {:.0} ms",
            times.len(),
            med * 1000.0,
            max * 1000.0
        );
        md.push_str(&format!(
            "\nFailover: the leader killed with SIGKILL {} times; from the kill to the first \
             write another node acknowledged: median {:.0} ms, max {:.0} ms (election timeout \
             0.5-1 s in ticks of 10 ms, pre-vote on).\n",
            times.len(),
            med * 1000.0,
            max * 1000.0
        ));
    }
    if let Some(path) = &args.markdown {
        common::splice(path, "cluster", &md).expect("write the Markdown");
        println!("wrote the cluster part of {}", path.display());
    }
    ExitCode::SUCCESS
}

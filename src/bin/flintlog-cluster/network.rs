//! The network between the nodes: delivery with latency and loss, partitions, and
//! requests the harness itself sends a node.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use flintlog::fs::sim::Rng;
use serde_json::{Value, json};

use crate::Args;
use crate::clients::micros;
use crate::processes::{NodeProc, Shared};

/// The network's state, shared by the router, the nemesis and the clients.
pub(crate) struct Net {
    pub(crate) nodes: Vec<Option<NodeProc>>,
    /// `cut[a][b]`: messages from a to b are dropped.
    pub(crate) cut: Vec<Vec<bool>>,
    /// Clients waiting for replies: client name → its channel.
    pub(crate) clients: HashMap<String, Sender<Value>>,
    /// Whether messages are lost (`--loss`); off once the cluster is healed.
    pub(crate) lossy: bool,
}

/// Delivers node output: replies to clients at once, peer lines after a latency.
pub(crate) fn route(
    shared: Arc<Shared>,
    from_nodes: Receiver<(usize, String)>,
    args: Args,
    seed: u64,
) {
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

pub(crate) fn parse_range(s: &str) -> (u64, u64) {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u64 = a.trim().parse().expect("--latency-ms LO-HI");
    let b: u64 = b.trim().parse().expect("--latency-ms LO-HI");
    (a.min(b), a.max(b))
}

pub(crate) fn set_partition(shared: &Shared, sides: &[Vec<usize>]) {
    let n = shared.ids.len();
    let mut net = shared.net.lock().expect("net");
    for a in 0..n {
        for b in 0..n {
            let same = sides.iter().any(|s| s.contains(&a) && s.contains(&b));
            net.cut[a][b] = !same;
        }
    }
    cut_proxies(shared, &net.cut);
}

pub(crate) fn heal(shared: &Shared) {
    let mut net = shared.net.lock().expect("net");
    for row in &mut net.cut {
        row.iter_mut().for_each(|c| *c = false);
    }
    cut_proxies(shared, &net.cut);
}

/// Over TCP, a cut link is a blocked proxy.
fn cut_proxies(shared: &Shared, cut: &[Vec<bool>]) {
    let Some(tcp) = &shared.tcp else { return };
    for (a, row) in tcp.proxies.iter().enumerate() {
        for (b, proxy) in row.iter().enumerate() {
            if let Some(p) = proxy {
                p.block(cut[a][b]);
            }
        }
    }
}

/// The node that says it leads, if one does.
pub(crate) fn current_leader(shared: &Shared) -> Option<usize> {
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
pub(crate) fn ask(shared: &Shared, i: usize, body: Value, timeout: Duration) -> Option<Value> {
    ask_many(shared, i, vec![body], timeout).pop().flatten()
}

/// Sends node `i` every request at once and waits for the replies (in order; `None`
/// for those that did not come in time).
pub(crate) fn ask_many(
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

/// Sends `body` to the leader until it answers `ok_type` (or `done_if` says an error
/// means the change is already made), for up to 60 s; returns the answer.
pub(crate) fn to_leader(
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

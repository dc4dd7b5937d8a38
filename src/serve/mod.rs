//! `flintlog serve`: a member of a group that reaches its peers and its clients over
//! TCP itself, with no message router around it.
//!
//! The member is the one `init` starts in the stdin mode (the same router, the same
//! cluster node); what differs is where its bytes go. Peers: [`PeerLinks`], binary
//! frames on connections of their own, handed straight to the consensus actor's
//! inbox. Clients: the listener of `clients`, JSON lines per connection into the
//! router, each reply on its request's connection.
//!
//! The group's id is derived from `--group-token` and the founders' node ids (so that
//! every founder, started with the same line, computes the same one) and pinned in
//! `raft.group` at the first start: a later start whose flags name another group is
//! refused, and so is every peer whose hello names another.

mod clients;
mod metrics;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::actor::Reply;

pub use clients::ClientLimits;

use crate::actor::spawn_actor;
use crate::cluster::PeerInbox;
use crate::fs::RealFs;
use crate::router::{Links, Opened, RouterConfig};
use crate::transport::peers::{Inbound, LinkConfig, PeerAddr, PeerLinks};
use crate::transport::tls::{Tls, TlsFiles};

/// How a served member starts.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The data directory and the node's own configuration, as in the stdin mode.
    pub router: RouterConfig,
    /// This node's id.
    pub node_id: String,
    /// Every founding member, this node included, in the order that gives their
    /// Raft ids (1, 2, ...): the same list on every member.
    pub peers: Vec<PeerAddr>,
    /// Where peers connect (`host:port`).
    pub peer_listen: String,
    /// Where clients connect (`host:port`).
    pub client_listen: String,
    /// Makes the group's id: two groups of the same node ids founded with different
    /// tokens never take each other's messages.
    pub group_token: String,
    /// The client listener's limits.
    pub clients: ClientLimits,
    /// Where `GET /metrics` and `GET /health` are served, if anywhere.
    pub metrics_listen: Option<String>,
    /// TLS for peers (mutual) and clients; without it, plain TCP.
    pub tls: Option<TlsFiles>,
    /// A new member joining a running group (added with `member_add` first): `peers`
    /// names members to reach, and the group's first message names its Raft id.
    pub join: bool,
    /// Where peers should dial this node (default: the address `peer_listen` binds).
    pub advertise: Option<String>,
}

/// The group id of a group founded by `founders` (node ids) with `token`: FNV-1a of
/// both, a function stable across builds and platforms (never 0).
pub fn group_id(token: &str, founders: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator no node id contains.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    eat(token.as_bytes());
    for f in founders {
        eat(f.as_bytes());
    }
    h.max(1)
}

/// Why `config` cannot start a member, if it cannot; its Raft id as a founder (0 for a
/// node that joins).
fn check(config: &ServeConfig) -> Result<u64, String> {
    crate::router::wire::check_node_id(&config.node_id)
        .map_err(|why| format!("--node-id: {why}"))?;
    let mut seen = BTreeMap::new();
    for (i, p) in config.peers.iter().enumerate() {
        crate::router::wire::check_node_id(&p.node_id).map_err(|why| format!("--peers: {why}"))?;
        if seen.insert(p.node_id.clone(), i).is_some() {
            return Err(format!("--peers names {} twice", p.node_id));
        }
    }
    match seen.get(&config.node_id) {
        Some(_) if config.join => Err(format!(
            "--join: {} is among --peers, the members it joins; a node that joins is not \
             one of them yet",
            config.node_id
        )),
        None if config.join => Ok(0),
        Some(&i) => Ok(i as u64 + 1),
        None => Err(format!(
            "--node-id {} is not among --peers ({}): every founding member is listed, this \
             one included, in the same order on every member (a new member starts with \
             --join)",
            config.node_id,
            config
                .peers
                .iter()
                .map(|p| p.node_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Refuses a directory that belongs to another group than `group`.
fn check_group(dir: &Path, group: u64, token: &str) -> Result<(), String> {
    match crate::raftlog::read_group(&RealFs, dir) {
        Ok(Some(recorded)) if recorded != group => Err(format!(
            "{} belongs to group {recorded:016x}, and these flags found group {group:016x}: \
             start it with the --peers and --group-token it was founded with (token now: \
             {token:?}), or on a new --data-dir",
            dir.display()
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

fn bind(what: &str, addr: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).map_err(|e| format!("cannot listen on {what} {addr}: {e}"))
}

/// One warning for the listeners bound beyond loopback in the clear, if any.
fn warn_if_exposed(listeners: &[&TcpListener]) {
    let exposed: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .filter(|a| !a.ip().is_loopback())
        .collect();
    if !exposed.is_empty() {
        log::warn!(
            "listening on {exposed:?} beyond loopback without TLS: peers' and clients' traffic \
             is plain TCP, readable and forgeable by anyone on the network (see --tls-cert)"
        );
    }
}

/// Runs member `config.node_id` until `stop` is set (SIGTERM): then it stops taking
/// requests, answers those it took, stops its links and its node (which syncs), and
/// returns the exit code: 0, 1 if it could not start or stop cleanly.
pub fn serve(config: ServeConfig, stop: Arc<AtomicBool>) -> i32 {
    match start(config, stop) {
        Ok(code) => code,
        Err(why) => {
            log::error!("{why}");
            1
        }
    }
}

fn start(config: ServeConfig, stop: Arc<AtomicBool>) -> Result<i32, String> {
    let mut raft_id = check(&config)?;
    let founders: Vec<String> = config.peers.iter().map(|p| p.node_id.clone()).collect();
    let data_dir = &config.router.data_dir;
    crate::node::check_data_dir(&RealFs, data_dir, &config.node_id).map_err(|e| e.to_string())?;
    let dir = data_dir.join(&config.node_id);
    let group = if config.join {
        // The group it joined, once it has; its Raft id, once the group gave it one.
        if let Some(who) = crate::raftlog::read_identity(&RealFs, &dir)
            .map_err(|e| e.to_string())?
            .filter(|who| who.id != 0)
        {
            raft_id = who.id;
        }
        crate::raftlog::read_group(&RealFs, &dir)
            .map_err(|e| e.to_string())?
            .unwrap_or(0)
    } else {
        let group = group_id(&config.group_token, &founders);
        check_group(&dir, group, &config.group_token)?;
        group
    };
    let tls = match &config.tls {
        Some(files) => Some(Tls::load(files)?),
        None => None,
    };
    let peer_listener = bind("--peer-listen", &config.peer_listen)?;
    let client_listener = bind("--client-listen", &config.client_listen)?;
    if tls.is_none() {
        warn_if_exposed(&[&peer_listener, &client_listener]);
    }
    // Metrics are read-only and served over plain HTTP, as Prometheus scrapes them.
    let metrics_listener = match &config.metrics_listen {
        Some(addr) => Some(bind("--metrics-listen", addr)?),
        None => None,
    };
    log::info!(
        "{} (Raft id {raft_id}) of group {group:016x}: peers on {}, clients on {}",
        config.node_id,
        peer_listener.local_addr().map_err(|e| e.to_string())?,
        client_listener.local_addr().map_err(|e| e.to_string())?
    );

    let mut link = LinkConfig::new(group, &config.node_id, raft_id);
    link.tls = tls.clone();
    link.advertise = match &config.advertise {
        Some(a) => a.clone(),
        None => peer_listener
            .local_addr()
            .map_err(|e| e.to_string())?
            .to_string(),
    };
    if config.join {
        link.seeds = config.peers.clone();
    } else {
        for (i, p) in config.peers.iter().enumerate() {
            if p.node_id != config.node_id {
                link.peers.insert(i as u64 + 1, p.clone());
            }
        }
    }
    let (input_tx, input_rx) = crossbeam_channel::bounded(64);
    // A joining node's first message from the group names its Raft id: the router
    // opens it as that member. (Dropped when the listener stops, so that the router's
    // input can end.)
    let join_tx = Arc::new(Mutex::new(config.join.then(|| input_tx.clone())));
    // Peers' messages go straight to the consensus actor once the node is open.
    let inbox: Arc<OnceLock<PeerInbox>> = Arc::default();
    let sink_inbox = inbox.clone();
    let sink_join = join_tx.clone();
    let sink = move |inbound: Inbound| match (sink_inbox.get(), inbound) {
        (Some(inbox), Inbound::Raft(m, incarnation)) => inbox.step(m, incarnation),
        (Some(inbox), Inbound::Part(from, part)) => inbox.step_part(from, part),
        (None, Inbound::Raft(m, _)) => {
            if let Some(tx) = sink_join.lock().expect("join lock").take() {
                log::info!(
                    "the group's first message names this node Raft member {}",
                    m.to
                );
                let _ = tx.send(vec![crate::router::Item::Joined(m.to)]);
            }
        }
        (None, Inbound::Part(..)) => {}
    };
    let (peer_links, outgoing) =
        PeerLinks::start(link, peer_listener, sink).map_err(|e| format!("peer links: {e}"))?;
    let latencies = metrics::Latencies::new();
    let mut config = config;
    config.router.node.observer = Some(latencies.observer());
    let roster: Arc<OnceLock<crate::cluster::Roster>> = Arc::default();
    let metrics = match metrics_listener {
        Some(listener) => {
            let sources = metrics::Sources {
                node: inbox.clone(),
                roster: roster.clone(),
                links: peer_links.counters.clone(),
                latencies: latencies.clone(),
            };
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let thread = spawn_actor(
                "metrics",
                |why| log::error!("the metrics server stopped: {why}"),
                move || metrics::run(listener, sources, flag),
            )
            .map_err(|e| format!("metrics server: {e}"))?;
            Some((stop, thread))
        }
        None => None,
    };
    let peer_links = Arc::new(Mutex::new(Some(peer_links)));
    let (on_open, on_close) = (peer_links.clone(), peer_links.clone());
    let peer_links_for_announce = peer_links;
    let opened_dir = dir.clone();
    let leaving = inbox.clone();
    let links = Links {
        transport: Some(Box::new(outgoing)),
        opened: Some(Box::new(move |opened: Opened| {
            let _ = inbox.set(opened.inbox);
            let _ = roster.set(opened.roster.clone());
            if let Some(l) = on_open.lock().expect("links lock").as_ref() {
                // The directory is locked now: pin it to its group (a node that joined
                // learnt the group's id from its peers).
                if let Err(e) = pin_group(&opened_dir, l.group()) {
                    log::error!("{e}");
                }
                l.set_roster(opened.roster);
                l.set_incarnation(opened.incarnation);
            }
        })),
        // Everything that holds the node's inbox ends before the node stops.
        closing: Some(Box::new(move || {
            // A leader that stops hands over first: no election timeout for the others.
            if let Some(inbox) = leaving.get() {
                hand_over(inbox);
            }
            if let Some((stop, thread)) = metrics {
                stop.store(true, Ordering::Release);
                let _ = thread.join();
            }
            if let Some(l) = on_close.lock().expect("links lock").take() {
                l.shutdown();
            }
        })),
        observe: Some(Box::new(move |kind, took| latencies.observe(kind, took))),
    };

    let writers = Arc::new(Mutex::new(Vec::new()));
    let listener = clients::Listener {
        limits: ClientLimits {
            line_bytes_max: config.router.line_bytes_max,
            ..config.clients.clone()
        },
        node_id: config.node_id.clone(),
        stop: stop.clone(),
        input: input_tx,
        writers: writers.clone(),
        tls: tls.map(|t| t.clients),
        also_input: join_tx,
    };
    let accepting = spawn_actor(
        "client-listener",
        |why| log::error!("the client listener stopped: {why}"),
        move || listener.run(client_listener),
    )
    .map_err(|e| format!("client listener: {e}"))?;
    if config.join
        && let Some(l) = peer_links_for_announce.lock().expect("links lock").as_ref()
    {
        l.announce();
    }
    let code = crate::router::serve(
        config.router,
        config.node_id.clone(),
        &founders,
        config.join,
        links,
        input_rx,
        clients::Conns::default(),
    );
    // The router returns early only when the node could not start or failed.
    stop.store(true, Ordering::Release);
    let _ = accepting.join();
    for w in writers.lock().expect("writers lock").drain(..) {
        let _ = w.join();
    }
    log::info!("{} stopped", config.node_id);
    Ok(code)
}

/// How long a stopping leader waits for a follower to take over.
const HAND_OVER_WAIT: Duration = Duration::from_secs(2);

/// Asks the node, if it leads, to hand leadership over, and waits (a short while) until
/// it no longer leads.
fn hand_over(inbox: &PeerInbox) {
    fn ask<T: Send + 'static>(send: impl FnOnce(Reply<T>)) -> Option<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        send(Reply::new(move |r: crate::Result<T>| {
            let _ = tx.send(r);
        }));
        rx.recv_timeout(HAND_OVER_WAIT).ok()?.ok()
    }
    let Some(Some(to)) = ask(|r| inbox.hand_over_with(r)) else {
        return;
    };
    let deadline = std::time::Instant::now() + HAND_OVER_WAIT;
    while std::time::Instant::now() < deadline {
        match ask(|r| inbox.status_with(r)) {
            Some(s) if s.role != "leader" => {
                log::info!("Raft member {to} took over as leader");
                return;
            }
            Some(_) => std::thread::sleep(Duration::from_millis(10)),
            None => return,
        }
    }
    log::warn!(
        "Raft member {to} did not take over within {} ms: stopping anyway",
        HAND_OVER_WAIT.as_millis()
    );
}

fn pin_group(dir: &Path, group: u64) -> Result<(), String> {
    match crate::raftlog::read_group(&RealFs, dir) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => crate::raftlog::write_group(&RealFs, dir, group)
            .map_err(|e| format!("recording the group id in {}: {e}", dir.display())),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_id_depends_on_the_token_and_the_founders_in_order() {
        let f = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = group_id("t", &f(&["n1", "n2", "n3"]));
        assert_eq!(a, group_id("t", &f(&["n1", "n2", "n3"])));
        assert_ne!(a, group_id("u", &f(&["n1", "n2", "n3"])));
        assert_ne!(a, group_id("t", &f(&["n1", "n3", "n2"])));
        assert_ne!(a, group_id("t", &f(&["n1", "n2"])));
        // Boundaries count: ("n1n", "2") is not ("n1", "n2").
        assert_ne!(
            group_id("t", &f(&["n1n", "2"])),
            group_id("t", &f(&["n1", "n2"]))
        );
        // Pinned: a build that computed another id would refuse every existing node.
        assert_eq!(group_id("flintlog", &f(&["n1"])), 0x965c_14d6_e578_3883);
    }

    #[test]
    fn a_directory_of_another_group_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        check_group(dir.path(), 7, "t").unwrap();
        pin_group(dir.path(), 7).unwrap();
        check_group(dir.path(), 7, "t").unwrap();
        let why = check_group(dir.path(), 8, "t").unwrap_err();
        assert!(why.contains("belongs to group 0000000000000007"), "{why}");
        pin_group(dir.path(), 8).unwrap();
        assert_eq!(
            crate::raftlog::read_group(&RealFs, dir.path()).unwrap(),
            Some(7)
        );
    }
}

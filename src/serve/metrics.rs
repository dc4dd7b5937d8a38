//! `--metrics-listen`: `GET /metrics` in the Prometheus text format (OpenMetrics, from
//! the `prometheus-client` crate) and `GET /health`, over a minimal HTTP/1.1 server of
//! one thread (scrapes are rare; one at a time is plenty).
//!
//! Each scrape asks the consensus actor for its status (as `wal_status` does) and
//! renders it with the links' counters and the request latencies the router observed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::actor::Reply;
use crate::cluster::{ClusterStatus, PeerInbox, Roster};
use crate::config::Measured;
use crate::router::Timed;
use crate::transport::peers::LinkCounters;

/// How long a scrape waits for the node's status.
const STATUS_WAIT: Duration = Duration::from_secs(2);

/// The latencies the router observes, kept across scrapes.
#[derive(Clone)]
pub(super) struct Latencies {
    writes: Histogram,
    reads: Histogram,
    fsyncs: Histogram,
    snapshots: Histogram,
    compactions: Histogram,
}

impl Latencies {
    pub(super) fn new() -> Latencies {
        // 100 µs to about 3.3 s, doubling.
        let buckets = || exponential_buckets(0.0001, 2.0, 16);
        Latencies {
            writes: Histogram::new(buckets()),
            reads: Histogram::new(buckets()),
            fsyncs: Histogram::new(buckets()),
            // 1 ms to about 33 s, doubling.
            snapshots: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            compactions: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }

    /// An observer for the node's durations (see `Config::observer`).
    pub(super) fn observer(&self) -> crate::config::Observer {
        let me = self.clone();
        crate::config::Observer(Arc::new(move |what, took: Duration| {
            let h = match what {
                Measured::Fsync => &me.fsyncs,
                Measured::Snapshot => &me.snapshots,
                Measured::Compaction => &me.compactions,
            };
            h.observe(took.as_secs_f64());
        }))
    }

    pub(super) fn observe(&self, kind: Timed, took: Duration) {
        match kind {
            Timed::Write => self.writes.observe(took.as_secs_f64()),
            Timed::Read => self.reads.observe(took.as_secs_f64()),
        }
    }
}

/// What the server reads its figures from.
pub(super) struct Sources {
    /// The node, once it is open.
    pub(super) node: Arc<OnceLock<PeerInbox>>,
    pub(super) roster: Arc<OnceLock<Roster>>,
    pub(super) links: Arc<LinkCounters>,
    pub(super) latencies: Latencies,
}

impl Sources {
    fn status(&self) -> Result<ClusterStatus, String> {
        let node = self.node.get().ok_or("the node is not open yet")?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        node.status_with(Reply::new(move |s| {
            let _ = tx.send(s);
        }));
        match rx.recv_timeout(STATUS_WAIT) {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "the node did not give its status within {} s",
                STATUS_WAIT.as_secs()
            )),
        }
    }

    fn name(&self, id: u64) -> String {
        self.roster
            .get()
            .and_then(|r| r.read().expect("roster lock").get(&id).cloned())
            .unwrap_or_else(|| format!("#{id}"))
    }
}

/// The metrics page: every figure of `status` (when the node gave it), the links'
/// counters and the latencies.
fn render(sources: &Sources, status: Option<&ClusterStatus>) -> String {
    let mut r = Registry::with_prefix("flintlog");
    let gauge = |r: &mut Registry, name: &str, help: &str, v: u64| {
        r.register(name, help, ConstGauge::new(v as i64));
    };
    let counter = |r: &mut Registry, name: &str, help: &str, v: u64| {
        r.register(name, help, ConstCounter::new(v));
    };
    gauge(
        &mut r,
        "up",
        "1 while the node answers its status",
        u64::from(status.is_some()),
    );
    if let Some(s) = status {
        let role: Family<Vec<(String, String)>, Gauge> = Family::default();
        role.get_or_create(&vec![("role".into(), s.role.to_string())])
            .set(1);
        r.register("role", "This node's Raft role (the label)", role);
        gauge(&mut r, "term", "The current Raft term", s.term);
        gauge(
            &mut r,
            "leader_id",
            "The leader's Raft id (0: none known)",
            s.leader,
        );
        gauge(&mut r, "commit_index", "The Raft commit index", s.commit);
        gauge(
            &mut r,
            "applied_index",
            "The last index applied to the state machine",
            s.applied,
        );
        gauge(
            &mut r,
            "first_index",
            "The first index the log holds",
            s.first_index,
        );
        gauge(
            &mut r,
            "last_index",
            "The last index in the log",
            s.last_index,
        );
        gauge(
            &mut r,
            "next_offset",
            "The next client offset",
            s.next_offset.get(),
        );
        gauge(
            &mut r,
            "voters",
            "Voters in the configuration applied",
            s.voters.len() as u64,
        );
        gauge(
            &mut r,
            "learners",
            "Learners in the configuration applied",
            s.learners.len() as u64,
        );
        let m = &s.management;
        counter(
            &mut r,
            "snapshots_written",
            "Snapshots this node wrote",
            m.snapshots_written,
        );
        counter(
            &mut r,
            "compactions",
            "Compactions of this node's log",
            m.compactions,
        );
        counter(
            &mut r,
            "compacted_bytes_freed",
            "Bytes compaction freed",
            m.bytes_freed,
        );
        let t = &m.transfers;
        counter(
            &mut r,
            "snapshot_transfers_started",
            "Snapshot transfers to this node started",
            t.started,
        );
        counter(
            &mut r,
            "snapshot_transfers_completed",
            "Snapshot transfers to this node installed",
            t.completed,
        );
        counter(
            &mut r,
            "snapshot_transfers_restarted",
            "Snapshot transfers started over",
            t.restarted,
        );
        counter(
            &mut r,
            "refused_messages",
            "Peer messages refused from another incarnation",
            s.refused_messages,
        );
        gauge(
            &mut r,
            "poisoned",
            "1 once a failed write or sync stopped the node",
            u64::from(s.poisoned.is_some()),
        );
        if let Some(u) = &s.store {
            gauge(
                &mut r,
                "store_uploaded_index",
                "The newest index whose chain is in the store",
                u.uploaded_index.unwrap_or(0),
            );
            counter(
                &mut r,
                "store_chains_uploaded",
                "Chains uploaded to the store",
                u.chains_uploaded,
            );
            counter(
                &mut r,
                "store_uploaded_bytes",
                "Bytes uploaded to the store",
                u.bytes_uploaded,
            );
            counter(
                &mut r,
                "store_upload_failures",
                "Uploads that failed",
                u.failures,
            );
            gauge(
                &mut r,
                "store_uploads_queued",
                "Chains waiting to be uploaded",
                u.queued as u64,
            );
        }
        // On the leader: how far each follower's log is behind its own.
        let lag: Family<Vec<(String, String)>, Gauge> = Family::default();
        for (id, matched) in s.match_index.iter().filter(|(id, _)| *id != s.id) {
            lag.get_or_create(&vec![("peer".into(), sources.name(*id))])
                .set(s.last_index.saturating_sub(*matched) as i64);
        }
        r.register(
            "replication_lag_entries",
            "On the leader: entries each follower lacks of its log",
            lag,
        );
    }
    let l = &sources.links;
    counter(
        &mut r,
        "peer_messages_dropped",
        "Messages to peers dropped on a full queue",
        l.dropped.load(Ordering::Relaxed),
    );
    counter(
        &mut r,
        "peer_connections_refused",
        "Peer connections refused at their hello",
        l.refused.load(Ordering::Relaxed),
    );
    counter(
        &mut r,
        "peer_frames_malformed",
        "Peer connections closed on a bad frame",
        l.malformed.load(Ordering::Relaxed),
    );
    counter(
        &mut r,
        "peer_dials",
        "Connections made to peers",
        l.dialled.load(Ordering::Relaxed),
    );
    let silence: Family<Vec<(String, String)>, Gauge<f64, AtomicU64>> = Family::default();
    for (id, longest) in l.longest_silences() {
        silence
            .get_or_create(&vec![("peer".into(), sources.name(id))])
            .set(longest.as_secs_f64());
    }
    r.register(
        "peer_longest_silence_seconds",
        "The longest wait between two Raft messages from each peer on one connection",
        silence,
    );
    let t = &sources.latencies;
    for (name, help, histogram) in [
        (
            "write_seconds",
            "Writes (wal_append, write, cas) from taken to answered",
            &t.writes,
        ),
        (
            "read_seconds",
            "Linearizable reads (read, wal_read, wal_info) from taken to answered",
            &t.reads,
        ),
        (
            "fsync_seconds",
            "Syncs of the Raft log (its segments' fdatasync, then raft.state)",
            &t.fsyncs,
        ),
        (
            "snapshot_seconds",
            "Snapshots, from the cut to the file durable",
            &t.snapshots,
        ),
        (
            "compaction_seconds",
            "Compactions of the log behind a snapshot",
            &t.compactions,
        ),
    ] {
        r.register(name, help, histogram.clone());
    }
    let up: Family<Vec<(String, String)>, Gauge> = Family::default();
    for (id, connected) in l.connections() {
        up.get_or_create(&vec![("peer".into(), sources.name(id))])
            .set(i64::from(connected));
    }
    r.register(
        "peer_connected",
        "1 while this node's Raft connection to the peer is up",
        up,
    );
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String");
    out
}

/// Whether the node is healthy: it knows a leader and has applied what it knows is
/// committed, and it has not stopped on a failed write.
fn health(status: &Result<ClusterStatus, String>) -> Result<(), String> {
    let s = status.as_ref().map_err(Clone::clone)?;
    if let Some(why) = &s.poisoned {
        return Err(format!("the node stopped serving: {why}"));
    }
    if s.leader == 0 {
        return Err("no leader known".into());
    }
    if s.applied < s.commit {
        return Err(format!(
            "applied index {} behind commit index {}",
            s.applied, s.commit
        ));
    }
    Ok(())
}

/// Serves scrapes on `listener` until `stop` is set.
pub(super) fn run(listener: TcpListener, sources: Sources, stop: Arc<AtomicBool>) {
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => answer(stream, &sources),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                log::warn!("accepting a metrics connection failed: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn answer(mut stream: TcpStream, sources: &Sources) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    // The request head, at most 8 KiB: only its first line matters.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (code, kind, body) = match (method, path) {
        ("GET", "/metrics") => {
            let status = sources.status().ok();
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                render(sources, status.as_ref()),
            )
        }
        ("GET", "/health") => match health(&sources.status()) {
            Ok(()) => ("200 OK", "text/plain", "ok\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "GET /metrics or /health\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_needs_a_leader_and_everything_committed_applied() {
        let mut s = ClusterStatus {
            role: "follower",
            term: 2,
            leader: 1,
            commit: 10,
            applied: 10,
            next_offset: crate::core::position::Offset::new(0),
            match_index: vec![],
            heard_from: vec![],
            state_digest: 0,
            voters: vec![1, 2, 3],
            learners: vec![],
            id: 2,
            incarnation: 1,
            recorded_incarnations: vec![],
            refused_messages: 0,
            last_index: 10,
            first_index: 1,
            management: Default::default(),
            poisoned: None,
            store: None,
        };
        assert_eq!(health(&Ok(s.clone())), Ok(()));
        s.applied = 9;
        assert!(health(&Ok(s.clone())).unwrap_err().contains("behind"));
        s.applied = 10;
        s.leader = 0;
        assert_eq!(health(&Ok(s.clone())), Err("no leader known".into()));
        assert!(health(&Err("down".into())).is_err());
    }
}

//! A group whose members talk over TCP on loopback (`transport::peers`), in one
//! process: elections, replication, and the links' refusals of what is not theirs.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use flintlog::cluster::{ClusterNode, ReadAnswer, ReadQuery};
use flintlog::transport::frame::{self, Channel, Frame, Hello};
use flintlog::transport::peers::{Inbound, LinkConfig, PeerAddr, PeerLinks};
use flintlog::{Config, Error};

use crate::group::call;

const GROUP: u64 = 0x0123_4567_89ab_cdef;

struct Member {
    node: Arc<ClusterNode>,
    links: PeerLinks,
}

struct TcpGroup {
    _dir: tempfile::TempDir,
    members: Vec<Member>,
    /// The listeners of the members that run no node.
    fakes: Vec<TcpListener>,
}

impl TcpGroup {
    fn start(n: u64) -> TcpGroup {
        TcpGroup::start_with(n, n, |_| {})
    }

    /// `n` members, of which the first `real` run a node; the others only hold their
    /// listener (a test serves it). `links` adjusts each real member's link limits.
    fn start_with(n: u64, real: u64, links_of: impl Fn(&mut LinkConfig)) -> TcpGroup {
        let _ = env_logger::builder().is_test(true).try_init();
        let dir = tempfile::tempdir().unwrap();
        let listeners: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: BTreeMap<u64, PeerAddr> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let id = i as u64 + 1;
                let addr = l.local_addr().unwrap().to_string();
                (
                    id,
                    PeerAddr {
                        node_id: format!("n{id}"),
                        addr,
                    },
                )
            })
            .collect();
        let founders: Vec<u64> = (1..=n).collect();
        let mut members = Vec::new();
        let mut fakes = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let id = i as u64 + 1;
            if id > real {
                fakes.push(listener);
                continue;
            }
            let mut links = LinkConfig::new(GROUP, &format!("n{id}"), id);
            links.peers = addrs.clone();
            links.peers.remove(&id);
            links_of(&mut links);
            let slot: Arc<OnceLock<Arc<ClusterNode>>> = Arc::default();
            let sink = {
                let slot = slot.clone();
                move |m: Inbound| {
                    if let Some(node) = slot.get() {
                        match m {
                            Inbound::Raft(msg, incarnation) => node.step(msg, incarnation),
                            Inbound::Part(from, part) => node.step_part(from, part),
                        }
                    }
                }
            };
            let (links, outgoing) = PeerLinks::start(links, listener, sink).unwrap();
            let mut c = Config::new(dir.path().join(format!("n{id}")));
            c.cluster.request_timeout = Duration::from_secs(30);
            c.cluster.leader_wait = Duration::from_secs(20);
            let roster = Arc::new(std::sync::RwLock::new(
                addrs
                    .iter()
                    .map(|(id, p)| (*id, p.node_id.clone()))
                    .collect(),
            ));
            let node =
                Arc::new(ClusterNode::open(&c, id, &founders, roster, Box::new(outgoing)).unwrap());
            links.set_incarnation(node.incarnation());
            let _ = slot.set(node.clone());
            members.push(Member { node, links });
        }
        TcpGroup {
            _dir: dir,
            members,
            fakes,
        }
    }

    fn node(&self, id: u64) -> &ClusterNode {
        &self.members[id as usize - 1].node
    }

    fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for m in &self.members {
                let s = call(|r| m.node.status_with(r)).unwrap();
                if s.role == "leader" && s.applied == s.commit {
                    return s.id;
                }
            }
            assert!(Instant::now() < deadline, "no leader over TCP");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn shutdown(self) {
        for m in self.members {
            let Member { node, links } = m;
            // The links first: their threads, which hand messages to the node, end.
            links.shutdown();
            Arc::try_unwrap(node).ok().expect("one owner").shutdown();
        }
    }
}

#[test]
fn a_group_over_tcp_elects_a_leader_and_every_member_applies_every_write() {
    let g = TcpGroup::start(3);
    let mut acked = Vec::new();
    for i in 0..200u64 {
        let leader = g.leader();
        match g.node(leader).append(format!("entry {i}").into_bytes()) {
            Ok(offset) => acked.push((offset, i)),
            Err(Error::Unavailable(_)) => {}
            Err(e) => panic!("append {i}: {e}"),
        }
    }
    assert!(
        acked.len() >= 190,
        "only {} of 200 appends went through",
        acked.len()
    );
    // Every member applies them all, to the same state.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s: Vec<_> = (1..=3)
            .map(|id| call(|r| g.node(id).status_with(r)).unwrap())
            .collect();
        let last = acked.last().unwrap().0;
        if s.iter()
            .all(|x| x.next_offset > last && x.applied == s[0].applied)
            && s.iter().all(|x| x.state_digest == s[0].state_digest)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the members do not converge: {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The leader reads every acknowledged entry back.
    let leader = g.leader();
    for (offset, i) in &acked {
        match call(|r| g.node(leader).read_with(ReadQuery::Entry(*offset), r)) {
            Ok(ReadAnswer::Entry(e)) => assert_eq!(e.payload, format!("entry {i}").into_bytes()),
            other => panic!("offset {offset}: {other:?}"),
        }
    }
    g.shutdown();
}

/// Dials `addr`, sends `hello` and returns the answer and the connection.
fn greet(addr: std::net::SocketAddr, hello: Hello) -> (Frame, TcpStream) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    frame::encode(&Frame::Hello(hello), &mut out);
    s.write_all(&out).unwrap();
    (frame::read(&mut s, 1 << 20).unwrap(), s)
}

fn hello_as(group: u64, node_id: &str, raft_id: u64, to: &str) -> Hello {
    Hello {
        version: frame::VERSION,
        group,
        node_id: node_id.into(),
        raft_id,
        incarnation: 42,
        to: to.into(),
        channel: Channel::Raft,
        advertise: String::new(),
    }
}

/// Whether the node closes `s` (end of input) within ten seconds.
fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn a_peer_of_another_group_or_under_another_id_is_refused_and_a_bad_frame_closes_its_link() {
    let g = TcpGroup::start(3);
    g.leader();
    let n1 = &g.members[0].links;
    let addr = n1.local_addr();
    for (hello, why) in [
        (hello_as(GROUP ^ 1, "n2", 2, "n1"), "group"),
        (hello_as(GROUP, "n9", 9, "n1"), "not a member"),
        (hello_as(GROUP, "n3", 2, "n1"), "Raft id 2 is n2"),
        (hello_as(GROUP, "n2", 2, "n3"), "meant to reach n3"),
    ] {
        match greet(addr, hello.clone()) {
            (Frame::Refused(text), _) => assert!(text.contains(why), "{text:?} for {hello:?}"),
            (other, _) => panic!("{hello:?} answered {other:?}"),
        }
    }
    assert_eq!(n1.counters.refused.load(Ordering::Relaxed), 4);

    // Accepted, then a frame of an unknown kind, then one over the size limit: each
    // closes its connection, and the group goes on.
    let (answer, mut s) = greet(addr, hello_as(GROUP, "n2", 2, "n1"));
    assert!(matches!(answer, Frame::Hello(ref h) if h.node_id == "n1" && h.group == GROUP));
    s.write_all(&[0, 0, 0, 2, 9, 0]).unwrap();
    assert!(
        closed(&mut s),
        "a frame of no kind left the connection open"
    );
    let (_, mut s) = greet(addr, hello_as(GROUP, "n2", 2, "n1"));
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    s.write_all(&[2]).unwrap();
    assert!(
        closed(&mut s),
        "a frame over the limit left the connection open"
    );
    assert_eq!(n1.counters.malformed.load(Ordering::Relaxed), 2);
    let leader = g.leader();
    g.node(leader).append(b"after".to_vec()).unwrap();
    g.shutdown();
}

/// A member that answers every hello and then never reads: the leader goes on
/// committing with the other member.
#[test]
fn a_peer_that_stops_reading_never_holds_up_the_leader() {
    let mut g = TcpGroup::start_with(3, 2, |l| l.queue = 16);
    let held = never_reading(g.fakes.pop().unwrap(), "n3", 3);
    let payload = vec![b'x'; 4096];
    let started = Instant::now();
    let mut done = 0;
    while done < 2000 {
        let leader = g.leader();
        match g.node(leader).append(payload.clone()) {
            Ok(_) => done += 1,
            Err(Error::Unavailable(_)) => {}
            Err(e) => panic!("append {done}: {e}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{done} of 2000 appends in a minute: the stalled peer holds the leader up"
        );
    }
    g.shutdown();
    drop(held);
}

/// Serves `listener` as member `me`: answers every hello, then never reads; returns the
/// connections it holds open.
fn never_reading(
    listener: TcpListener,
    me: &'static str,
    id: u64,
) -> Arc<std::sync::Mutex<Vec<TcpStream>>> {
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let Ok(Frame::Hello(h)) = frame::read(&mut s, 1 << 20) else {
                continue;
            };
            let mut out = Vec::new();
            frame::encode(&Frame::Hello(hello_as(GROUP, me, id, &h.node_id)), &mut out);
            let _ = s.write_all(&out);
            keep.lock().unwrap().push(s);
        }
    });
    held
}

/// Sending to a peer that stopped reading never waits: once the socket's buffers and
/// the peer's queue are full, messages are dropped (Raft sends again) and counted.
#[test]
fn a_full_queue_to_a_stalled_peer_drops_and_never_blocks_the_sender() {
    let _ = env_logger::builder().is_test(true).try_init();
    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = LinkConfig::new(GROUP, "n1", 1);
    config.queue = 16;
    config.peers.insert(
        2,
        PeerAddr {
            node_id: "n2".into(),
            addr: peer.local_addr().unwrap().to_string(),
        },
    );
    let held = never_reading(peer, "n2", 2);
    let own = TcpListener::bind("127.0.0.1:0").unwrap();
    let (links, outgoing) = PeerLinks::start(config, own, |_| {}).unwrap();
    links.set_incarnation(7);
    let entry = raft::eraftpb::Entry {
        data: vec![b'x'; 64 * 1024].into(),
        ..Default::default()
    };
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let sender = std::thread::spawn(move || {
        use flintlog::cluster::Transport;
        // 20,000 messages of 64 KiB: 1.3 GB for a peer that reads nothing.
        for i in 0..20_000u64 {
            outgoing.send(raft::eraftpb::Message {
                msg_type: raft::eraftpb::MessageType::MsgAppend,
                from: 1,
                to: 2,
                index: i,
                entries: vec![entry.clone()].into(),
                ..Default::default()
            });
        }
        done_tx.send(()).unwrap();
        outgoing
    });
    assert!(
        // Dropping takes microseconds a message; a sender that waited for room would
        // wait for the writer to give up its link (2 s) for every batch it frees.
        done.recv_timeout(Duration::from_secs(10)).is_ok(),
        "the sender waited on a peer that does not read"
    );
    let outgoing = sender.join().unwrap();
    assert!(links.counters.dropped.load(Ordering::Relaxed) > 10_000);
    // The consensus actor is told, once, to report the peer unreachable to raft-rs.
    {
        use flintlog::cluster::Transport;
        assert_eq!(outgoing.unreachable(), vec![2]);
        assert!(outgoing.unreachable().is_empty());
    }
    drop(outgoing);
    links.shutdown();
    drop(held);
}

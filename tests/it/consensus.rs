//! The consensus actor of three in-process cluster nodes on simulated disks: whenever a
//! node sends a message that promises durability (a granted vote, an acknowledgement
//! of entries), a power cut at that instant must leave a disk that keeps the promise.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use flintlog::cluster::{ClusterNode, Transport};
use flintlog::consensus::{Command, Effect};
use flintlog::fs::FileSystem;
use flintlog::fs::sim::{CrashMode, SimFs};
use flintlog::raftlog::RaftLog;
use flintlog::{Config, Reply};
use raft::eraftpb::{Message, MessageType};

const VOTERS: [u64; 3] = [1, 2, 3];

fn config(i: usize) -> Config {
    let mut c = Config::new(format!("/sim/n{i}"));
    c.segment_bytes_max = 64 * 1024;
    c.segment_prefill = false;
    c
}

/// Delivers messages to the other nodes; checks each promise against a power cut.
struct Checked {
    me: usize,
    fs: SimFs,
    net: Sender<Message>,
    broken: Arc<Mutex<Vec<String>>>,
    checked: Arc<Mutex<u64>>,
}

impl Checked {
    /// What the disk would hold after a power cut now.
    fn durable(&self) -> Result<(u64, u64, u64), String> {
        let cut = self.fs.crash(0, CrashMode::DropAll);
        let c = config(self.me);
        cut.create_dir_all(&c.dir).map_err(|e| e.to_string())?;
        let log = RaftLog::open(Arc::new(cut), &c.log_options(), self.me as u64, &VOTERS)
            .map_err(|e| format!("recovery refused: {e}"))?;
        let hs = log.hard_state();
        Ok((log.last_index(), hs.term, hs.vote))
    }
}

impl Transport for Checked {
    fn send(&self, msg: Message) {
        let promise = match msg.msg_type {
            MessageType::MsgAppendResponse if !msg.reject => Some("entries"),
            MessageType::MsgRequestVoteResponse if !msg.reject => Some("vote"),
            _ => None,
        };
        if let Some(what) = promise {
            *self.checked.lock().unwrap() += 1;
            let verdict = match self.durable() {
                Err(e) => Some(e),
                Ok((last, _, _)) if what == "entries" && last < msg.index => Some(format!(
                    "n{} acknowledged entries up to {} with only {last} durable",
                    self.me, msg.index
                )),
                Ok((_, term, vote)) if what == "vote" && (term != msg.term || vote != msg.to) => {
                    Some(format!(
                        "n{} granted its vote to {} in term {} with term {term}, vote {vote} durable",
                        self.me, msg.to, msg.term
                    ))
                }
                Ok(_) => None,
            };
            if let Some(why) = verdict {
                self.broken.lock().unwrap().push(why);
            }
        }
        let _ = self.net.send(msg);
    }

    fn send_part(&self, _: u64, _: flintlog::cluster::transfer::Part) {
        // Nothing is compacted in this test: no snapshot is ever sent.
    }
}

#[test]
fn every_vote_and_acknowledgement_is_durable_before_it_leaves() {
    let broken = Arc::new(Mutex::new(Vec::new()));
    let checked = Arc::new(Mutex::new(0u64));
    let (net_tx, net_rx) = crossbeam_channel::unbounded::<Message>();
    let mut nodes = Vec::new();
    for i in 1..=3usize {
        let fs = SimFs::new();
        let transport = Box::new(Checked {
            me: i,
            fs: fs.clone(),
            net: net_tx.clone(),
            broken: broken.clone(),
            checked: checked.clone(),
        });
        nodes.push(Arc::new(
            ClusterNode::open_with_fs(
                &config(i),
                i as u64,
                &VOTERS,
                Arc::default(),
                transport,
                Arc::new(fs),
            )
            .unwrap(),
        ));
    }
    let peers = nodes.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let router = std::thread::spawn(move || {
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(m) = net_rx.recv_timeout(Duration::from_millis(20))
                && let Some(n) = peers.get(m.to as usize - 1)
            {
                let incarnation = peers[m.from as usize - 1].incarnation();
                n.step(m, incarnation);
            }
        }
    });
    // Writes through every node until enough were committed.
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let started = Instant::now();
    let mut ok = 0;
    let mut i = 0u64;
    while ok < 60 && started.elapsed() < Duration::from_secs(30) {
        i += 1;
        let tx = done_tx.clone();
        nodes[(i % 3) as usize].propose_with(
            Command::Append(format!("set k{}={i}", i % 5).into_bytes()),
            Reply::new(move |r: flintlog::Result<Effect>| {
                let _ = tx.send(r.is_ok());
            }),
        );
        if done_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or(false)
        {
            ok += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    router.join().unwrap();
    drop(nodes);
    let broken = broken.lock().unwrap();
    let checked = *checked.lock().unwrap();
    println!(
        "consensus actor: {ok} writes committed, {checked} promises checked against a power cut"
    );
    assert!(ok >= 60, "only {ok} writes committed");
    assert!(checked > 60, "only {checked} promises seen");
    assert!(
        broken.is_empty(),
        "{} broken promises, first: {}",
        broken.len(),
        broken[0]
    );
}

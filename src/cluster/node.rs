//! The node and its wiring: [`ClusterNode`] opens the Raft log and the newest
//! snapshot, starts the syncer, the snapshotter and the uploader, and hands the
//! consensus actor everything it drives; a new member may first load a snapshot from
//! the store.

use super::*;

/// A handle on a running cluster node.
pub struct ClusterNode {
    tx: Option<Sender<Msg>>,
    /// Received chunks, straight to the snapshotter.
    chunks: Chunks,
    incarnation: u64,
    join: Option<std::thread::JoinHandle<()>>,
    /// Held until the node is dropped (in a mutex only so that handles are `Sync`).
    _lock: std::sync::Mutex<Box<dyn Lock>>,
}

impl ClusterNode {
    /// Opens the node with Raft id `id` in `config.dir` (created if missing) and
    /// starts its consensus actor: a founder of a group of `founders` (Raft ids), or,
    /// with no founders, a new member joining a group that added it (it takes nothing
    /// from the group's log until it has installed a snapshot, which brings the
    /// configuration). `roster` holds the node ids it knows (the founders', at
    /// least); the node adds those of members added since.
    ///
    /// # Errors
    /// [`Error::Open`] when the directory cannot be used (see [`RaftLog::open`]).
    pub fn open(
        config: &Config,
        id: u64,
        founders: &[u64],
        roster: Roster,
        transport: Box<dyn Transport>,
    ) -> Result<ClusterNode> {
        Self::open_with_fs(config, id, founders, roster, transport, Arc::new(RealFs))
    }

    /// [`ClusterNode::open`] over any filesystem.
    ///
    /// # Errors
    /// As [`ClusterNode::open`].
    pub fn open_with_fs(
        config: &Config,
        id: u64,
        founders: &[u64],
        roster: Roster,
        transport: Box<dyn Transport>,
        fs: Arc<dyn FileSystem>,
    ) -> Result<ClusterNode> {
        config.validate()?;
        crate::node::check_store(config)?;
        let (lock, _existed) = crate::node::prepare_dir(&*fs, &config.dir)?;
        if founders.is_empty()
            && let Some(store) = &config.snapshot_store
        {
            bootstrap_from_store(&*fs, &config.dir, store, &roster);
        }
        let mut store = RaftLog::open(fs.clone(), &config.log_options(), id, founders)?;
        let who = store.identity().clone();
        let on_disk = store.snapshots_on_disk()?;
        let loaded = image::load(&*fs, &config.dir, &on_disk, store.first_index())?;
        let mut loaded_term = 0;
        let mut loaded_conf = (who.founders.clone(), Vec::new());
        let mut newest_client_offset = Offset::ZERO;
        let (mut machine, newest) = match loaded {
            Some((image, chain)) => {
                store.start_from_snapshot(image.index());
                store.start_configured(&image.voters, &image.learners);
                log::info!(
                    "cluster node {id}: loaded snapshot {} (index {}, a chain of {} file(s), \
                     {} keys)",
                    chain.last().map_or("", |f| f.file.as_str()),
                    image.index(),
                    chain.len(),
                    image.machine.kv.map.len()
                );
                loaded_term = image.term;
                loaded_conf = (image.voters.clone(), image.learners.clone());
                newest_client_offset = image.machine.next_offset;
                (image.machine, Some(chain))
            }
            None => (crate::consensus::Machine::default(), None),
        };
        crate::consensus::name_founders(
            &mut machine,
            &who.founders,
            &roster.read().expect("roster lock"),
        );
        roster.write().expect("roster lock").extend(
            machine
                .names
                .iter()
                .filter(|(_, n)| !n.is_empty())
                .map(|(id, n)| (*id, n.clone())),
        );

        let first_offset = match store.first_index() {
            1 => Offset::ZERO,
            // The entry before the first one held (a snapshot's own, kept for its
            // term) is where the segment log starts.
            first => RaftIndex::new(first).prev().position(),
        };
        let applied = machine.applied;
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        let mut peer = Peer::resume(
            &PeerConfig {
                id,
                election_ticks: config.cluster.election_ticks,
                heartbeat_ticks: config.cluster.heartbeat_ticks,
                boot,
            },
            store,
            machine,
        )
        .map_err(|e| Error::Open(format!("raft refused the configuration: {e}")))?;
        log::info!(
            "cluster node {id} (founders {:?}) opened {}: last index {}, term {}",
            who.founders,
            config.dir.display(),
            peer.store().last_index(),
            peer.store().hard_state().term
        );
        let (tx, inbox) =
            crossbeam_channel::bounded(config.inbox_capacity.max(config.cluster.inbox_min));
        let (jobs_tx, jobs) = syncer::handoff();
        let (synced_tx, synced) = syncer::handoff();
        let transport: Arc<dyn Transport> = Arc::from(transport);
        if let Some(chain) = &newest {
            peer.store_mut().offer(
                transfer::ChainId::of(chain, loaded_term),
                &loaded_conf.0,
                &loaded_conf.1,
            );
        }
        let manager = Manager::start(
            fs.clone(),
            config,
            transport.clone(),
            first_offset,
            applied,
            newest.unwrap_or_default(),
            on_disk,
            peer.store().sync_count(),
        )?;
        let chunks = manager.chunks();
        let incarnation = who.incarnation;
        let uploader = match &config.snapshot_store {
            Some(store) => {
                let roster = roster.read().expect("roster lock");
                let founders = who
                    .founders
                    .iter()
                    .map(|id| roster.get(id).cloned().unwrap_or_else(|| format!("#{id}")))
                    .collect();
                drop(roster);
                if store.ship_log {
                    log::warn!(
                        "--ship-log: a group member ships its snapshot chains only; shipping \
                         a group's log is not built yet"
                    );
                }
                Some(crate::node::start_uploader(
                    config,
                    store,
                    fs.clone(),
                    founders,
                    None,
                )?)
            }
            None => None,
        };
        let compact_after_upload = config
            .snapshot_store
            .as_ref()
            .is_some_and(|s| s.compact_after_upload);
        let syncer_join = syncer::spawn(
            Syncer::new(fs, config.dir.clone(), who),
            jobs,
            synced_tx,
            config.observer.clone(),
        )?;
        let actor = Consensus {
            peer,
            transport,
            inbox,
            jobs: Some(jobs_tx),
            synced,
            syncer: Some(syncer_join),
            unsynced: std::collections::VecDeque::new(),
            pending: HashMap::new(),
            waiting: Vec::new(),
            poisoned: None,
            manager,
            offer: None,
            installing: None,
            snapshot_waiters: Vec::new(),
            compact_waiters: std::collections::VecDeque::new(),
            newest_client: newest_client_offset,
            holds: transfer::Holds::new(
                transfer::offer_wait(config.snapshot_send_bytes_per_sec, &config.cluster),
                config.cluster.pin,
            ),
            roster,
            incarnation,
            limits: config.cluster.clone(),
            clock: config.clock.clone(),
            changes: HashMap::new(),
            recording: HashMap::new(),
            refused_messages: 0,
            warned_incarnation: None,
            names_shared: 0,
            last_stale_cut: None,
            install_timer: None,
            install_ms: None,
            uploader,
            upload_shutdown_wait: config
                .snapshot_store
                .as_ref()
                .map_or(Duration::ZERO, |s| s.shutdown_wait),
            compact_after_upload,
            upload_seen: None,
        };
        let join = spawn_actor(
            "consensus",
            |why: String| log::error!("{why}; the cluster node answers nothing more"),
            move || actor.run(),
        )
        .map_err(|e| Error::Open(format!("cannot start a thread: {e}")))?;
        Ok(ClusterNode {
            tx: Some(tx),
            chunks,
            incarnation,
            join: Some(join),
            _lock: std::sync::Mutex::new(lock),
        })
    }

    fn submit(&self, msg: Msg) {
        let tx = self.tx.as_ref().expect("running");
        // A full inbox drops a peer message (the network may) but waits for a client's.
        match msg {
            Msg::Peer(..) | Msg::Part(..) => {
                if let Err(TrySendError::Full(_)) = tx.try_send(msg) {
                    log::debug!("consensus inbox full: a peer message dropped");
                }
            }
            other => {
                let _ = tx.send(other);
            }
        }
    }

    /// Where peers' messages can be handed in from other threads (links that read
    /// them). The consensus actor runs until every inbox is dropped too: drop them
    /// before [`ClusterNode::shutdown`].
    pub fn peer_inbox(&self) -> PeerInbox {
        PeerInbox {
            tx: self.tx.clone().expect("running"),
            chunks: self.chunks.clone(),
        }
    }

    /// Hands in a message from a peer, which says it is incarnation `incarnation` of
    /// its Raft id (`msg.from`): refused if the group recorded another one.
    pub fn step(&self, msg: Message, incarnation: u64) {
        self.submit(Msg::Peer(Box::new(msg), incarnation));
    }

    /// This node's incarnation, which its messages to peers must carry.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Proposes a membership change (on the leader: elsewhere it answers error 11
    /// naming the leader); `reply` gets its outcome once applied here.
    pub fn change_with(&self, change: Change, reply: Reply<Changed>) {
        self.submit(Msg::Change(change, reply));
    }

    /// Hands in a part of a snapshot transfer from the peer with Raft id `from`: an
    /// ask to the consensus actor (which holds the log for the asker), a chunk (or a
    /// file gone) straight to the snapshotter receiving the snapshot.
    pub fn step_part(&self, from: u64, part: transfer::Part) {
        match part {
            transfer::Part::Ask { .. } => self.submit(Msg::Part(from, Box::new(part))),
            _ => self.chunks.hand(from, part),
        }
    }

    /// Proposes a command; `reply` gets its effect once committed and applied here.
    pub fn propose_with(&self, cmd: Command, reply: Reply<Effect>) {
        self.submit(Msg::Propose(cmd, reply));
    }

    /// A linearizable read.
    pub fn read_with(&self, query: ReadQuery, reply: Reply<ReadAnswer>) {
        self.submit(Msg::Read(query, reply));
    }

    /// Writes a snapshot of this node's state machine now (after one in flight, if
    /// that one was cut before this request); its `offset` is the client offset it
    /// covers up to.
    pub fn snapshot_with(&self, reply: Reply<SnapshotFile>) {
        self.submit(Msg::Admin(Box::new(Admin::Snapshot(reply))));
    }

    /// Compacts this node's log up to client offset `at`, behind a durable snapshot
    /// that covers it (written first if there is none). The log is not compacted past
    /// what a follower receiving a snapshot needs next.
    pub fn compact_with(&self, at: Offset, reply: Reply<Compaction>) {
        self.submit(Msg::Admin(Box::new(Admin::Compact(at, reply))));
    }

    /// Changes this node's log-management policy; answers the policy now in force.
    pub fn set_policy_with(&self, update: PolicyUpdate, reply: Reply<Policy>) {
        self.submit(Msg::Admin(Box::new(Admin::Policy(update, reply))));
    }

    /// Sets the size at which this node's active segment is sealed.
    pub fn set_segment_bytes_max_with(&self, bytes: u64, reply: Reply<u64>) {
        self.submit(Msg::Admin(Box::new(Admin::SegmentBytes(bytes, reply))));
    }

    /// This node's segments (offsets are log positions: Raft index minus one).
    pub fn segments_with(&self, reply: Reply<SegmentList>) {
        self.submit(Msg::Admin(Box::new(Admin::Segments(reply))));
    }

    /// Where the node stands.
    pub fn status_with(&self, reply: Reply<ClusterStatus>) {
        self.submit(Msg::Status(reply));
    }

    /// Stops the consensus actor and waits for it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tx.take();
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

/// Hands peers' messages to a node's consensus actor (see [`ClusterNode::peer_inbox`]),
/// and asks it for its status. A full inbox drops peers' messages, as the network may.
#[derive(Clone)]
pub struct PeerInbox {
    tx: Sender<Msg>,
    chunks: Chunks,
}

impl PeerInbox {
    /// As [`ClusterNode::step`].
    pub fn step(&self, msg: Message, incarnation: u64) {
        self.offer(Msg::Peer(Box::new(msg), incarnation));
    }

    /// As [`ClusterNode::step_part`].
    pub fn step_part(&self, from: u64, part: transfer::Part) {
        match part {
            transfer::Part::Ask { .. } => self.offer(Msg::Part(from, Box::new(part))),
            _ => self.chunks.hand(from, part),
        }
    }

    /// As [`ClusterNode::status_with`], for an observer on another thread (metrics).
    pub fn status_with(&self, reply: Reply<ClusterStatus>) {
        let _ = self.tx.send(Msg::Status(reply));
    }

    /// On the leader: hands leadership to the most caught-up follower (before the
    /// node stops); `reply` gets its Raft id, or `None` when there is nobody to hand
    /// it to (or this node does not lead).
    pub fn hand_over_with(&self, reply: Reply<Option<u64>>) {
        let _ = self.tx.send(Msg::HandOver(reply));
    }

    fn offer(&self, msg: Msg) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(msg) {
            log::debug!("consensus inbox full: a peer message dropped");
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A new member starting on an empty directory with a snapshot store: the newest
/// group snapshot in the store that names one of the members it knows (any, when it
/// knows none: an embedding program's store holds one group), downloaded and
/// verified into the directory, so that it loads it and catches up from the leader's
/// log instead of asking for the whole snapshot. Anything wrong (the store down, no
/// such chain, a damaged object) is logged, and the member asks the leader as usual.
fn bootstrap_from_store(
    fs: &dyn FileSystem,
    dir: &std::path::Path,
    config: &crate::store::StoreConfig,
    roster: &Roster,
) {
    let present = fs.list(dir).unwrap_or_default();
    if present.iter().any(|n| {
        n == crate::core::layout::RAFT_STATE
            || crate::core::layout::parse_raft_snapshot(n).is_some()
    }) {
        return;
    }
    let known: Vec<String> = roster
        .read()
        .expect("roster lock")
        .values()
        .cloned()
        .collect();
    let started = Instant::now();
    let outcome = (|| {
        let store = crate::store::open(config)?;
        let (all, _) = crate::store::manifests(&*store).map_err(|e| e.to_string())?;
        let ours = all.iter().filter(|m| {
            m.files
                .iter()
                .all(|f| crate::core::layout::parse_raft_snapshot(&f.name).is_some())
                && (known.is_empty() || m.voters.iter().any(|v| known.contains(v)))
        });
        let mut why = Vec::new();
        for m in ours {
            match crate::store::fetch_chain(&*store, fs, dir, m).and_then(|bytes| {
                crate::raftlog::mark_install(fs, dir, m.index, m.term)
                    .map_err(|e| format!("cannot mark the install: {e}"))?;
                Ok(bytes)
            }) {
                Ok(bytes) => return Ok((m.clone(), bytes, store.url())),
                Err(e) => {
                    log::warn!(
                        "bootstrap: the snapshot at {} does not restore: {e}",
                        m.index
                    );
                    why.push(e);
                }
            }
        }
        Err(if why.is_empty() {
            "no snapshot of this group in the store".to_string()
        } else {
            why.join("; ")
        })
    })();
    match outcome {
        Ok((m, bytes, url)) => log::info!(
            "bootstrap: loaded the snapshot at index {} (uploaded by {}, {bytes} bytes) from {url} \
             in {} ms; the rest comes from the leader's log",
            m.index,
            m.node,
            started.elapsed().as_millis()
        ),
        Err(why) => log::warn!(
            "bootstrap from the snapshot store failed ({why}); asking the leader for a snapshot"
        ),
    }
}

//! The consensus actor: one thread that owns the [`Peer`] and its [`RaftLog`]; its
//! loop is described in the module documentation of [`crate::cluster`].

use super::*;

pub(super) enum Waiter {
    Write(Reply<Effect>),
    Read(ReadQuery, Reply<ReadAnswer>),
}

pub(super) struct Pending {
    pub(super) waiter: Waiter,
    pub(super) deadline: Instant,
}

/// A request waiting for a leader to be known.
pub(super) struct Waiting {
    pub(super) msg: Msg,
    pub(super) until: Instant,
}

pub(super) struct Consensus {
    pub(super) peer: Peer<RaftLog>,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) inbox: Receiver<Msg>,
    /// Sync jobs for the syncer thread, by Ready number (one waiting at most: see
    /// `syncer.rs`).
    pub(super) jobs: Option<Handoff<Numbered>>,
    /// The syncer's reports: every Ready up to this number is durable (with the
    /// writes count of its job), or why a sync failed.
    pub(super) synced: Taker<Synced>,
    pub(super) syncer: Option<std::thread::JoinHandle<()>>,
    /// Readies written but not yet durable, with the messages that wait for that.
    pub(super) unsynced: std::collections::VecDeque<(u64, Vec<Message>)>,
    pub(super) pending: HashMap<u64, Pending>,
    pub(super) waiting: Vec<Waiting>,
    pub(super) poisoned: Option<String>,
    /// Snapshots and compaction.
    pub(super) manager: Manager,
    /// The snapshot offer being received (by the snapshotter), stepped into raft-rs
    /// once the chain is in place.
    pub(super) offer: Option<(transfer::ChainId, Message)>,
    /// A snapshot received whole, waiting for a compaction in flight to end before
    /// raft-rs installs it.
    pub(super) installing: Option<(Message, Box<crate::consensus::Image>)>,
    /// On a leader: the followers catching up from a snapshot, and the log held for
    /// them.
    pub(super) holds: transfer::Holds,
    /// `wal_snapshot` requests, with the index applied when each came: answered by the
    /// first snapshot cut at or after it.
    pub(super) snapshot_waiters: Vec<(u64, Reply<SnapshotFile>)>,
    /// `wal_compact` requests: the first index to keep, in order.
    pub(super) compact_waiters: std::collections::VecDeque<(u64, Reply<Compaction>)>,
    /// The client offset the newest durable snapshot covers up to.
    pub(super) newest_client: Offset,
    pub(super) roster: Roster,
    pub(super) incarnation: u64,
    /// Timers, queues and the transfer pace ([`Config::cluster`]).
    pub(super) limits: crate::config::ClusterLimits,
    /// What every timer of the actor reads ([`Config::clock`]): tests move it forward
    /// instead of waiting.
    pub(super) clock: Arc<dyn crate::clock::Clock>,
    /// Membership changes proposed here, by request number, with their deadlines.
    pub(super) changes: HashMap<u64, (Reply<Changed>, Instant)>,
    /// On a leader: incarnations it proposed to record, and when.
    pub(super) recording: HashMap<(u64, u64), Instant>,
    pub(super) refused_messages: u64,
    pub(super) warned_incarnation: Option<Instant>,
    /// How many of the state machine's names the roster has.
    pub(super) names_shared: usize,
    /// When the leader last cut a snapshot because its offer predated a membership
    /// change.
    pub(super) last_stale_cut: Option<Instant>,
    /// A received snapshot being installed: its index, and since when; and how long
    /// the last install took, with the count of transfers completed it belongs to.
    pub(super) install_timer: Option<(u64, Instant)>,
    pub(super) install_ms: Option<(u64, u64)>,
    /// The uploader, if the node copies its snapshots to a store.
    pub(super) uploader: Option<(UploaderHandle, std::thread::JoinHandle<()>)>,
    /// How long a stop waits for the newest chain to reach the store.
    pub(super) upload_shutdown_wait: Duration,
    /// Compaction waits for the store; the newest index uploaded, as last seen.
    pub(super) compact_after_upload: bool,
    pub(super) upload_seen: Option<u64>,
}

impl Consensus {
    pub(super) fn run(mut self) {
        let mut next_tick = self.clock.now() + self.limits.tick;
        loop {
            let wait = next_tick.saturating_duration_since(self.clock.now());
            crossbeam_channel::select! {
                recv(self.inbox) -> msg => match msg {
                    Ok(msg) => self.take(msg),
                    Err(_) => break,
                },
                recv(self.synced.woken()) -> woken => {
                    if woken.is_err() {
                        self.synced.stop_waking();
                    }
                    if let Some(r) = self.synced.take() {
                        self.on_synced(r);
                    }
                }
                recv(self.manager.reports) -> r => {
                    if let Ok(r) = r {
                        self.on_report(r);
                    }
                }
                recv(self.manager.feedback) -> f => {
                    if let Ok(f) = f {
                        self.on_feedback(f);
                    }
                }
                default(wait) => {}
            }
            for _ in 0..4096 {
                match self.inbox.try_recv() {
                    Ok(msg) => self.take(msg),
                    Err(_) => break,
                }
            }
            if let Some(r) = self.synced.take() {
                self.on_synced(r);
            }
            while let Ok(r) = self.manager.reports.try_recv() {
                self.on_report(r);
            }
            let now = self.clock.now();
            if now >= next_tick {
                self.peer.tick();
                next_tick = now + self.limits.tick;
                self.retry_waiting(now);
                self.expire(now);
                self.transfers_tick();
                self.membership_tick();
                self.upload_tick();
            }
            self.drive();
            if self.poisoned.is_none() && self.manager.due(self.peer.machine().applied) {
                let image = self.peer.image();
                self.manager.cut(image);
            }
        }
        for (_, p) in self.pending.drain() {
            fail(
                p.waiter,
                Error::Crashed("the node stopped before the outcome was known".into()),
            );
        }
        self.manager.stop();
        self.jobs.take();
        if let Some(syncer) = self.syncer.take() {
            let _ = syncer.join();
        }
        if let Some((uploader, join)) = self.uploader.take() {
            uploader.drain_at_shutdown(self.upload_shutdown_wait);
            uploader.stop();
            let _ = join.join();
        }
        log::debug!("consensus stopped");
    }

    /// The syncer made every Ready up to a number durable: raft-rs learns it, and the
    /// messages that waited for it leave.
    pub(super) fn on_synced(&mut self, r: std::result::Result<(u64, u64), String>) {
        match r {
            Ok((number, writes)) => {
                if self.poisoned.is_some() {
                    return;
                }
                self.peer.store_mut().synced_through(writes);
                self.peer.persisted(number);
                while self.unsynced.front().is_some_and(|(n, _)| *n <= number) {
                    let (_, messages) = self.unsynced.pop_front().expect("front");
                    for m in messages {
                        self.transport.send(m);
                    }
                }
                self.report_unreachable();
            }
            Err(e) => self.poison(format!("a sync of the Raft log failed: {e}")),
        }
    }

    /// The snapshotter or the compactor finished a job.
    pub(super) fn on_report(&mut self, r: snapshotter::Report) {
        match r {
            snapshotter::Report::Snapshot(r) => {
                match self.manager.snapshot_done(&r) {
                    Ok(Some((id, compact))) => {
                        let index = id.index;
                        if let Ok(w) = &r {
                            self.peer.store_mut().offer(id, &w.voters, &w.learners);
                            self.upload(w);
                        }
                        if compact {
                            self.compact_behind(index);
                        }
                    }
                    Ok(None) => {}
                    Err(why) => self.poison(why),
                }
                match r {
                    Ok(w) => {
                        self.newest_client = w.next_offset;
                        let index = image::index_of(&w.file).get();
                        let file = SnapshotFile {
                            offset: w.next_offset,
                            ..w.file
                        };
                        let (done, waiting): (Vec<_>, Vec<_>) =
                            std::mem::take(&mut self.snapshot_waiters)
                                .into_iter()
                                .partition(|(asked_at, _)| *asked_at <= index);
                        self.snapshot_waiters = waiting;
                        for (_, reply) in done {
                            reply.send(Ok(file.clone()));
                        }
                    }
                    Err((why, _)) => {
                        for (_, reply) in self.snapshot_waiters.drain(..) {
                            reply.send(Err(Error::Unavailable(why.clone())));
                        }
                    }
                }
                self.serve_admin();
            }
            snapshotter::Report::Compaction(r) => {
                self.manager.compaction_done(r);
                self.install_when_idle();
                self.serve_admin();
            }
            snapshotter::Report::Missing { file } => {
                // Offer nothing until a newer snapshot is durable: write one now.
                if self.peer.store_mut().withdraw(&file) && !self.manager.cutting() {
                    let image = self.peer.image();
                    self.manager.cut(image);
                }
            }
            snapshotter::Report::Downloaded { id, image, chain } => {
                self.downloaded(id, image, chain);
            }
            snapshotter::Report::Transfers(counts) => self.transfers_counted(counts),
        }
    }

    /// The compactor's news: it is about to free, or freed, what lies below the new
    /// start (reads stopped there when the job was sent), or a sync failed.
    pub(super) fn on_feedback(&mut self, f: Feedback) {
        debug_assert!(
            self.manager.feedback.len() < crate::actor::FEEDBACK_MAX,
            "{} feedback messages waiting: more than the bound allows",
            self.manager.feedback.len() + 1
        );
        match f {
            Feedback::Fence { first_offset, ack } => {
                self.peer.store_mut().fence(first_offset);
                let _ = ack.send(());
            }
            Feedback::Compacted {
                first_offset,
                removed,
                resized,
                bytes_freed: _,
            } => self
                .peer
                .store_mut()
                .compacted(first_offset, &removed, resized),
            Feedback::Poisoned(why) => self.poison(why),
            Feedback::SnapshotDurable { .. } => {}
        }
    }

    pub(super) fn take(&mut self, msg: Msg) {
        if let Some(why) = &self.poisoned {
            let e = Error::Crashed(format!("the node stopped serving: {why}"));
            match msg {
                Msg::Peer(..) | Msg::Part(..) => {}
                Msg::Admin(a) => a.refuse(e),
                Msg::Change(_, reply) => reply.send(Err(e)),
                Msg::Propose(_, reply) => reply.send(Err(e)),
                Msg::Read(_, reply) => reply.send(Err(e)),
                Msg::Status(reply) => reply.send(Ok(self.status())),
                Msg::HandOver(reply) => reply.send(Ok(None)),
            }
            return;
        }
        match msg {
            Msg::Admin(a) => self.admin(*a),
            Msg::Peer(m, incarnation) if !self.admit(&m, incarnation) => {}
            Msg::Peer(m, _) if m.msg_type == raft::eraftpb::MessageType::MsgSnapshot => {
                self.offered(*m);
            }
            Msg::Peer(m, _) => self.peer.step(*m),
            Msg::Part(from, part) => self.on_part(from, *part),
            Msg::Status(reply) => reply.send(Ok(self.status())),
            Msg::HandOver(reply) => reply.send(Ok(self.hand_over())),
            msg => {
                if let Err(msg) = self.start(msg) {
                    self.waiting.push(Waiting {
                        msg,
                        until: self.clock.now() + self.limits.leader_wait,
                    });
                }
            }
        }
    }

    /// Proposes or starts a read; gives the message back when no leader is known.
    pub(super) fn start(&mut self, msg: Msg) -> std::result::Result<(), Msg> {
        let deadline = self.clock.now() + self.limits.request_timeout;
        match msg {
            Msg::Propose(cmd, reply) => match self.peer.propose(&cmd) {
                Ok(seq) => {
                    self.pending.insert(
                        seq,
                        Pending {
                            waiter: Waiter::Write(reply),
                            deadline,
                        },
                    );
                    Ok(())
                }
                Err(Refused::NoLeader) => Err(Msg::Propose(cmd, reply)),
                Err(Refused::Change(why) | Refused::NotYet(why)) => {
                    reply.send(Err(Error::Unavailable(why)));
                    Ok(())
                }
            },
            Msg::Read(query, reply) => match self.peer.read() {
                Ok(seq) => {
                    self.pending.insert(
                        seq,
                        Pending {
                            waiter: Waiter::Read(query, reply),
                            deadline,
                        },
                    );
                    Ok(())
                }
                Err(Refused::NoLeader) => Err(Msg::Read(query, reply)),
                Err(Refused::Change(why) | Refused::NotYet(why)) => {
                    reply.send(Err(Error::Unavailable(why)));
                    Ok(())
                }
            },
            Msg::Change(change, reply) => self.change(change, reply),
            other => {
                self.take(other);
                Ok(())
            }
        }
    }

    pub(super) fn retry_waiting(&mut self, now: Instant) {
        for w in std::mem::take(&mut self.waiting) {
            let until = w.until;
            if let Err(msg) = self.start(w.msg) {
                if now >= until {
                    let e = Error::Unavailable(format!(
                        "no leader known after {} ms: nothing was done",
                        self.limits.leader_wait.as_millis()
                    ));
                    match msg {
                        Msg::Propose(_, reply) => reply.send(Err(e)),
                        Msg::Read(_, reply) => reply.send(Err(e)),
                        Msg::Change(_, reply) => reply.send(Err(Error::Unavailable(format!(
                            "this leader did not commit an entry of its term within {} ms: \
                             the membership change was not proposed",
                            self.limits.leader_wait.as_millis()
                        )))),
                        _ => {}
                    }
                } else {
                    self.waiting.push(Waiting { msg, until });
                }
            }
        }
    }

    pub(super) fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .changes
            .iter()
            .filter(|(_, (_, deadline))| now >= *deadline)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in late {
            let (reply, _) = self.changes.remove(&seq).expect("listed");
            self.peer.forget(seq);
            reply.send(Err(Error::Crashed(format!(
                "the membership change was not applied within {} ms: it may or may not \
                 happen (wal_status shows the members)",
                self.limits.request_timeout.as_millis()
            ))));
        }
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            let p = self.pending.remove(&seq).expect("listed");
            self.peer.forget(seq);
            match p.waiter {
                Waiter::Write(reply) => reply.send(Err(Error::Crashed(format!(
                    "not committed within {} ms: the write may or may not happen",
                    self.limits.request_timeout.as_millis()
                )))),
                Waiter::Read(_, reply) => reply.send(Err(Error::Unavailable(format!(
                    "the read was not confirmed by a quorum within {} ms: nothing was read",
                    self.limits.request_timeout.as_millis()
                )))),
            }
        }
    }

    /// Runs every Ready; see the module documentation.
    pub(super) fn drive(&mut self) {
        while self.poisoned.is_none() {
            let cycle = match self.peer.cycle() {
                Ok(c) => c,
                Err(e) => return self.poison(format!("a write to the Raft log failed: {e}")),
            };
            for m in cycle.send {
                self.transport.send(m);
            }
            self.report_unreachable();
            let Some(persist) = cycle.persist else {
                break;
            };
            // The syncer makes it durable while this thread goes on; `on_synced` then
            // tells raft-rs and sends what waited.
            let job = self.peer.store_mut().take_sync_job();
            self.unsynced.push_back((persist.number, persist.then_send));
            let sent = self
                .jobs
                .as_ref()
                .is_some_and(|jobs| jobs.put((persist.number, job), merge_jobs));
            if !sent {
                return self.poison("the syncer thread stopped".into());
            }
            for (seq, outcome) in cycle.answers {
                self.answer(seq, outcome);
            }
            // A change's answer names its members: the roster has them first.
            self.share_names();
            for (seq, outcome) in self.peer.take_changed() {
                if let Some((reply, _)) = self.changes.remove(&seq) {
                    reply.send(Ok(outcome));
                }
            }
            self.install_timed();
        }
    }

    /// On the leader: asks the voter with the highest match index among those it heard
    /// from lately to take over at once (raft-rs's leadership transfer: it catches
    /// that follower up, then tells it to campaign without waiting for an election
    /// timeout). Returns its Raft id.
    fn hand_over(&mut self) -> Option<u64> {
        let s = self.status();
        if s.role != "leader" {
            return None;
        }
        let Some(to) = s
            .match_index
            .iter()
            .filter(|(id, _)| *id != s.id && s.voters.contains(id) && s.heard_from.contains(id))
            .max_by_key(|(id, matched)| (*matched, std::cmp::Reverse(*id)))
            .map(|(id, _)| *id)
        else {
            log::info!(
                "no follower to hand leadership over to (heard from {:?} lately)",
                s.heard_from
            );
            return None;
        };
        log::info!("handing leadership over to Raft member {to}");
        self.peer.transfer_leader(to);
        Some(to)
    }

    /// Tells raft-rs of the peers whose messages the transport dropped.
    fn report_unreachable(&mut self) {
        for id in self.transport.unreachable() {
            self.peer.unreachable(id);
        }
    }

    /// Offers a durable snapshot to the uploader, if the node has a store.
    pub(super) fn upload(&self, w: &snapshotter::Written) {
        let Some((uploader, _)) = &self.uploader else {
            return;
        };
        let roster = self.roster.read().expect("roster lock");
        let names = |ids: &[u64]| -> Vec<String> {
            ids.iter()
                .map(|id| roster.get(id).cloned().unwrap_or_else(|| format!("#{id}")))
                .collect()
        };
        uploader.offer(Upload {
            index: image::index_of(&w.file).get(),
            term: w.term,
            voters: names(&w.voters),
            learners: names(&w.learners),
            files: w.chain.clone(),
        });
    }

    /// With compaction waiting for the store: once a newer snapshot is uploaded, the
    /// policy's compaction behind the newest snapshot is due again.
    pub(super) fn upload_tick(&mut self) {
        let Some((uploader, _)) = self.uploader.as_ref().filter(|_| self.compact_after_upload)
        else {
            return;
        };
        let uploaded = uploader.uploaded_index();
        if uploaded <= self.upload_seen {
            return;
        }
        self.upload_seen = uploaded;
        let snapshot = self
            .manager
            .status
            .snapshot
            .as_ref()
            .map(|s| image::index_of(s).get());
        if let Some(snapshot) = snapshot
            && self.manager.policy().auto_compact
            && !self.manager.compacting()
        {
            self.compact_behind(snapshot);
        }
    }

    pub(super) fn answer(&mut self, seq: u64, outcome: Outcome) {
        let Some(p) = self.pending.remove(&seq) else {
            return; // timed out already
        };
        match (p.waiter, outcome) {
            (Waiter::Write(reply), Outcome::Applied(effect)) => reply.send(Ok(effect)),
            (Waiter::Read(query, reply), Outcome::Readable) => {
                reply.send(self.read(&query));
            }
            (Waiter::Write(reply), Outcome::Readable) => {
                reply.send(Err(Error::Crashed("a write answered as a read".into())));
            }
            (Waiter::Read(_, reply), Outcome::Applied(_)) => {
                reply.send(Err(Error::Crashed("a read answered as a write".into())));
            }
        }
    }

    pub(super) fn read(&self, query: &ReadQuery) -> Result<ReadAnswer> {
        let m = self.peer.machine();
        Ok(match query {
            ReadQuery::Key(k) => ReadAnswer::Value(m.kv.get(k).map(|v| v.to_string())),
            ReadQuery::Info => ReadAnswer::Info(Info {
                entries: m.next_offset.get(),
                total_bytes: self.peer.store().total_bytes(),
                fsynced: self.peer.store().synced(),
            }),
            ReadQuery::Entry(offset) => {
                if m.runs.first().is_some_and(|&(o, _)| offset.get() < o) {
                    return Err(Error::NotFound(format!(
                        "offset {offset} was compacted away (the log starts at Raft index {})",
                        self.peer.store().first_index()
                    )));
                }
                let Some(index) = m.index_of(*offset) else {
                    return Err(Error::NotFound(format!(
                        "offset {offset} is past the end of the log (next offset is {})",
                        m.next_offset
                    )));
                };
                if index < self.peer.store().first_index() {
                    return Err(Error::NotFound(format!(
                        "offset {offset} was compacted away (its Raft index {index} is \
                         before the log's first, {})",
                        self.peer.store().first_index()
                    )));
                }
                let entries = raft::Storage::entries(
                    self.peer.store(),
                    index,
                    index + 1,
                    None,
                    raft::GetEntriesContext::empty(false),
                )
                .map_err(|e| Error::Unavailable(format!("reading entry {index}: {e}")))?;
                let (_, cmd) = crate::consensus::command::decode(&entries[0].data)
                    .map_err(|why| Error::Unavailable(format!("entry {index}: {why}")))?;
                ReadAnswer::Entry(ReadEntry {
                    payload: crate::consensus::Machine::payload_of(&cmd),
                    checksum_valid: true,
                })
            }
        })
    }

    pub(super) fn status(&self) -> ClusterStatus {
        let (role, term, leader, commit) = self.peer.role();
        let (voters, learners) = self.peer.members();
        let m = self.peer.machine();
        ClusterStatus {
            role: match role {
                StateRole::Leader => "leader",
                StateRole::Follower => "follower",
                StateRole::Candidate => "candidate",
                StateRole::PreCandidate => "pre_candidate",
            },
            term,
            leader,
            commit,
            applied: m.applied,
            next_offset: m.next_offset,
            match_index: self.peer.progress(),
            heard_from: (self.peer.followers().into_iter())
                .filter_map(|(id, _, active)| active.then_some(id))
                .collect(),
            state_digest: m.digest(),
            voters,
            learners,
            id: self.peer.id(),
            incarnation: self.incarnation,
            recorded_incarnations: m.incarnations.iter().map(|(id, i)| (*id, *i)).collect(),
            refused_messages: self.refused_messages,
            last_index: self.peer.store().last_index(),
            first_index: self.peer.store().first_index(),
            management: self.manager.status.clone(),
            poisoned: self.poisoned.clone(),
            store: self.uploader.as_ref().map(|(u, _)| u.status()),
        }
    }

    pub(super) fn poison(&mut self, why: String) {
        log::error!("{why}: the node stops serving (fail-stop)");
        for (_, p) in self.pending.drain() {
            fail(
                p.waiter,
                Error::Crashed(format!("{why}: the outcome is unknown")),
            );
        }
        let e = Error::Crashed(format!("the node stopped serving: {why}"));
        for (_, reply) in self.snapshot_waiters.drain(..) {
            reply.send(Err(e.clone()));
        }
        for (_, reply) in self.compact_waiters.drain(..) {
            reply.send(Err(e.clone()));
        }
        for (_, (reply, _)) in self.changes.drain() {
            reply.send(Err(Error::Crashed(format!(
                "{why}: the outcome is unknown"
            ))));
        }
        self.poisoned = Some(why);
    }
}

pub(super) fn fail(waiter: Waiter, e: Error) {
    match waiter {
        Waiter::Write(reply) => reply.send(Err(e)),
        Waiter::Read(_, reply) => reply.send(Err(e)),
    }
}

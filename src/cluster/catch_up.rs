//! Catching a follower up, the consensus actor's side (see [`super::transfer`]): an
//! offer is handed to the snapshotter, which receives the chain (chunks come to it
//! straight from the transport) and reports it whole and in place; then the offer is
//! stepped into raft-rs, which installs it. On a leader, a follower's asks are handed to
//! the snapshotter to serve, and [`Holds`] keeps the log that follower goes on from.

use super::*;

impl Consensus {
    /// A leader offers a snapshot (`MsgSnapshot`, carrying its identity): received in
    /// full before raft-rs sees the offer.
    pub(super) fn offered(&mut self, m: Message) {
        let id = match transfer::ChainId::decode(&m.get_snapshot().data) {
            Ok(id) if id.index == m.get_snapshot().get_metadata().index => id,
            Ok(_) => return log::warn!("a snapshot offer whose identity names another index"),
            Err(why) => return log::warn!("a snapshot offer that does not decode: {why}"),
        };
        if id.index <= self.peer.machine().applied {
            // Nothing to fetch: raft-rs answers it from what this node has.
            return self.peer.step(m);
        }
        // Received whole already, and waiting to be installed.
        if self
            .installing
            .as_ref()
            .is_some_and(|(_, image)| image.index() == id.index)
        {
            return;
        }
        let from = m.from;
        self.offer = Some((id.clone(), m));
        self.manager.job(snapshotter::Job::Offer { id, from });
    }

    /// A follower asks for chunks of a snapshot: the snapshotter serves them, and the
    /// log it will go on from is held.
    pub(super) fn on_part(&mut self, from: u64, part: transfer::Part) {
        let transfer::Part::Ask {
            file,
            checksum,
            from: at,
            count,
        } = part
        else {
            // Chunks go to the snapshotter: see `ClusterNode::step_part`.
            return self.manager.chunks().hand(from, part);
        };
        let in_snapshot = self.peer.followers_in_snapshot();
        let now = self.clock.now();
        self.holds.asked(from, &file, &in_snapshot, now);
        self.manager.job(snapshotter::Job::Serve {
            to: from,
            file,
            checksum,
            from: at,
            count: count.min(4 * self.limits.transfer_window),
            asked: now,
        });
    }

    /// A received snapshot is whole, verified and in place: step the offer into
    /// raft-rs, which installs it.
    pub(super) fn downloaded(
        &mut self,
        id: transfer::ChainId,
        image: Box<crate::consensus::Image>,
        chain: Vec<crate::snapshot::SnapshotFile>,
    ) {
        let Some((_, msg)) = self.offer.take_if(|(offered, _)| *offered == id) else {
            return;
        };
        self.install_timer = Some((id.index, self.clock.now()));
        log::info!("received snapshot {} whole; installing it", id.file);
        self.peer
            .store_mut()
            .offer(id.clone(), &image.voters, &image.learners);
        self.manager.status.snapshot = chain.last().cloned();
        self.newest_client = image.machine.next_offset;
        // The install replaces the log's files: not while the compactor may still
        // rewrite log.meta for the old log.
        self.installing = Some((msg, image));
        self.install_when_idle();
    }

    /// The snapshotter's counts of the transfers received; the install time of the
    /// last one is this actor's.
    pub(super) fn transfers_counted(&mut self, mut counts: transfer::Transfers) {
        if let (Some(last), Some((completed, ms))) = (&mut counts.last, self.install_ms)
            && completed == counts.completed
        {
            last.install_ms = ms;
        }
        self.manager.status.transfers = counts;
    }

    /// Steps a received snapshot into raft-rs (which installs it) once no compaction
    /// is in flight.
    pub(super) fn install_when_idle(&mut self) {
        if self.manager.compacting() {
            return;
        }
        if let Some((msg, image)) = self.installing.take() {
            self.peer.step_snapshot(msg, *image);
        }
    }

    /// After each round of Readies: once the state machine stands at a received
    /// snapshot's index, its install is over.
    pub(super) fn install_timed(&mut self) {
        if let Some((index, since)) = self.install_timer
            && self.peer.machine().applied >= index
        {
            self.install_timer = None;
            let ms = self
                .clock
                .now()
                .saturating_duration_since(since)
                .as_millis() as u64;
            // The snapshotter counted it complete before it reported it whole.
            self.install_ms = Some((self.manager.status.transfers.completed, ms));
            let counts = self.manager.status.transfers;
            self.transfers_counted(counts);
        }
    }

    /// Every tick, on a leader: raft-rs is told that an offer nobody acted on failed,
    /// so that it offers again (to a follower that restarted, say), and followers that
    /// caught up are no longer held.
    pub(super) fn transfers_tick(&mut self) {
        let in_snapshot = self.peer.followers_in_snapshot();
        let matched: HashMap<u64, u64> = self
            .peer
            .followers()
            .into_iter()
            .map(|(id, m, _)| (id, m))
            .collect();
        let newest = self.manager.newest_index();
        let now = self.clock.now();
        for id in self.holds.tick(now, &in_snapshot, &matched, newest) {
            self.peer.snapshot_failed(id);
        }
    }
}

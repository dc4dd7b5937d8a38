//! Log management of the consensus actor: compaction behind a snapshot, and the
//! requests (`wal_snapshot`, `wal_compact`, ...) by which each node manages its own log.

use super::*;

/// A log-management request: each node manages its own log.
pub(super) enum Admin {
    Snapshot(Reply<SnapshotFile>),
    Compact(Offset, Reply<Compaction>),
    Policy(PolicyUpdate, Reply<Policy>),
    SegmentBytes(u64, Reply<u64>),
    Segments(Reply<SegmentList>),
}

impl Admin {
    pub(super) fn refuse(self, e: Error) {
        match self {
            Admin::Snapshot(r) => r.send(Err(e)),
            Admin::Compact(_, r) => r.send(Err(e)),
            Admin::Policy(_, r) => r.send(Err(e)),
            Admin::SegmentBytes(_, r) => r.send(Err(e)),
            Admin::Segments(r) => r.send(Err(e)),
        }
    }
}

impl Consensus {
    /// Compacts the log behind the durable snapshot at `snapshot`, keeping what the
    /// policy and the followers still catching up need.
    pub(super) fn compact_behind(&mut self, snapshot: u64) {
        let followers: Vec<(u64, bool)> = self
            .peer
            .followers()
            .into_iter()
            .map(|(_, matched, active)| (matched, active))
            .collect();
        let keep = policy::raft_keep_from(snapshot, self.manager.trailing(), &followers);
        self.compact_to(keep, snapshot, None);
    }

    /// Compacts the log so that it holds entries from index `keep` on, behind the
    /// durable snapshot at `snapshot` (`keep` at most one past it); answers `then`.
    pub(super) fn compact_to(&mut self, keep: u64, snapshot: u64, then: Option<Reply<Compaction>>) {
        let nothing = |c: &Self| Compaction {
            snapshot_offset: c.newest_client,
            entries_before: c.live_entries(),
            entries_after: c.live_entries(),
            bytes_freed: 0,
        };
        if self.installing.is_some() {
            if let Some(then) = then {
                then.send(Ok(nothing(self)));
            }
            return;
        }
        let mut keep = keep.min(snapshot + 1);
        // Compaction waits for the store: entries after the newest snapshot uploaded
        // stay (all of them before the first upload).
        if let Some((uploader, _)) = self.uploader.as_ref().filter(|_| self.compact_after_upload) {
            keep = keep.min(uploader.uploaded_index().map_or(0, |i| i + 1));
        }
        // Followers catching up from a snapshot go on from the log right after it.
        let keep = self.holds.keep(keep, &self.peer.followers_in_snapshot());
        let store = self.peer.store();
        // The entry before `keep` stays, for its term: compacting to its offset.
        if keep < 3 || keep <= store.first_index() {
            if let Some(then) = then {
                then.send(Ok(nothing(self)));
            }
            return;
        }
        let at = RaftIndex::new(keep).prev().position();
        let plan = store.compaction_plan(at);
        let next_offset = RaftIndex::new(store.last_index()).position().next();
        // Reads stop below it now, before any file changes.
        self.peer.store_mut().fence(at);
        self.peer.forget_before(keep);
        let client = self.newest_client;
        let then = then.map(|reply| {
            Reply::new(move |r: Result<Compaction>| {
                reply.send(r.map(|c| Compaction {
                    snapshot_offset: client,
                    ..c
                }))
            })
        });
        self.manager.compact(at, snapshot, next_offset, plan, then);
    }

    /// Live entries in the log.
    pub(super) fn live_entries(&self) -> u64 {
        let store = self.peer.store();
        (store.last_index() + 1).saturating_sub(store.first_index())
    }

    /// A log-management request.
    pub(super) fn admin(&mut self, a: Admin) {
        match a {
            Admin::Snapshot(reply) => {
                let applied = self.peer.machine().applied;
                self.snapshot_waiters.push((applied, reply));
                self.serve_admin();
            }
            Admin::Compact(at, reply) => {
                let m = self.peer.machine();
                if at > m.next_offset {
                    return reply.send(Err(Error::PreconditionFailed(format!(
                        "cannot compact to offset {at}: the log ends at offset {}",
                        m.next_offset
                    ))));
                }
                let keep = if at == m.next_offset {
                    Some(m.applied + 1)
                } else {
                    m.index_of(at)
                };
                match keep {
                    Some(keep) if keep > self.peer.store().first_index() => {
                        self.compact_waiters.push_back((keep, reply));
                        self.serve_admin();
                    }
                    // Already compacted.
                    _ => reply.send(Ok(Compaction {
                        snapshot_offset: self.newest_client,
                        entries_before: self.live_entries(),
                        entries_after: self.live_entries(),
                        bytes_freed: 0,
                    })),
                }
            }
            Admin::Policy(update, reply) => match self.manager.policy().with(&update) {
                Ok(p) => {
                    self.manager.set_policy(p);
                    reply.send(Ok(p));
                }
                Err(e) => reply.send(Err(e)),
            },
            Admin::SegmentBytes(bytes, reply) => {
                if bytes < 1 {
                    return reply.send(Err(Error::InvalidArgument(
                        "max_segment_bytes must be at least 1".into(),
                    )));
                }
                self.peer.store_mut().set_segment_bytes_max(bytes);
                reply.send(Ok(bytes));
            }
            Admin::Segments(reply) => reply.send(Ok(self.peer.store().segments())),
        }
    }

    /// Carries out what snapshot and compaction requests wait for: a cut for the
    /// snapshot waiters (none is being written), then the compactions whose snapshot
    /// is durable, one at a time.
    pub(super) fn serve_admin(&mut self) {
        if self.poisoned.is_some() {
            return;
        }
        let newest = self.manager.newest_index();
        let needs_cut = !self.snapshot_waiters.is_empty()
            || self
                .compact_waiters
                .front()
                .is_some_and(|(keep, _)| keep - 1 > newest);
        if needs_cut && !self.manager.cutting() {
            let image = self.peer.image();
            self.manager.cut(image);
        }
        while !self.manager.compacting()
            && self
                .compact_waiters
                .front()
                .is_some_and(|(keep, _)| keep - 1 <= newest)
        {
            let (keep, reply) = self.compact_waiters.pop_front().expect("front");
            self.compact_to(keep, newest, Some(reply));
        }
    }
}

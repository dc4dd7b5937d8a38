//! The consensus actor's side of membership: members' incarnations admitted and
//! recorded (a node that lost its disk cannot come back under its old id), node ids
//! shared with the roster the transports read, and membership changes proposed.

use super::*;

impl Consensus {
    /// Publishes the node ids of members added (by the log or a snapshot) to the
    /// roster the router reads.
    pub(super) fn share_names(&mut self) {
        let names = &self.peer.machine().names;
        // Names are only ever added (a Raft id is never given twice): the count says
        // whether there is anything new.
        if names.len() == self.names_shared {
            return;
        }
        self.names_shared = names.len();
        let mut roster = self.roster.write().expect("roster lock");
        for (id, name) in names.iter().filter(|(_, n)| !n.is_empty()) {
            if roster.get(id) != Some(name) {
                roster.insert(*id, name.clone());
            }
        }
    }

    /// Whether a peer message may be stepped: not when the group recorded another
    /// incarnation of its sender (a node that came back with an empty directory under
    /// a member's id: it forgot its vote and its log, and must join as a new member).
    /// A leader records the incarnation of each member it hears from first.
    pub(super) fn admit(&mut self, m: &Message, incarnation: u64) -> bool {
        match self.peer.machine().incarnations.get(&m.from) {
            Some(&recorded) if recorded != incarnation => {
                self.refused_messages += 1;
                let now = self.clock.now();
                if self
                    .warned_incarnation
                    .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10))
                {
                    self.warned_incarnation = Some(now);
                    let name = self
                        .roster
                        .read()
                        .expect("roster lock")
                        .get(&m.from)
                        .cloned();
                    log::error!(
                        "refusing messages from {} (Raft id {}): it is incarnation \
                         {incarnation:016x}, the group knows {recorded:016x}. That node \
                         lost its data directory; it cannot take part under its old id \
                         (it forgot its vote and its log). Remove it and add a new \
                         member in its place.",
                        name.as_deref().unwrap_or("?"),
                        m.from
                    );
                }
                false
            }
            Some(_) => true,
            None => {
                self.record(m.from, incarnation);
                true
            }
        }
    }

    /// On a leader, proposes to record the incarnation of member `id` (not again
    /// within `ClusterLimits::record_again`).
    pub(super) fn record(&mut self, id: u64, incarnation: u64) {
        if incarnation == 0
            || self.peer.role().0 != StateRole::Leader
            || self.peer.machine().incarnations.contains_key(&id)
        {
            return;
        }
        let now = self.clock.now();
        if self
            .recording
            .get(&(id, incarnation))
            .is_some_and(|at| now.duration_since(*at) < self.limits.record_again)
        {
            return;
        }
        let record_again = self.limits.record_again;
        self.recording
            .retain(|_, at| now.duration_since(*at) < record_again);
        if self
            .peer
            .propose(&Command::Incarnation { id, incarnation })
            .is_ok()
        {
            self.recording.insert((id, incarnation), now);
        }
    }

    /// Each tick: a leader records its own incarnation, and cuts a snapshot when the
    /// one it offers predates a membership change (a member added since needs one
    /// that names it).
    pub(super) fn membership_tick(&mut self) {
        if self.peer.role().0 != StateRole::Leader {
            return;
        }
        self.record(self.peer.id(), self.incarnation);
        let now = self.clock.now();
        if self.peer.store().offer_stale()
            && !self.manager.cutting()
            && self
                .last_stale_cut
                .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            self.last_stale_cut = Some(now);
            let image = self.peer.image();
            self.manager.cut(image);
        }
    }

    /// Proposes a membership change, on the leader; gives the message back when the
    /// leader has not yet committed an entry of its term (it waits as a request waits
    /// for a leader).
    pub(super) fn change(
        &mut self,
        change: Change,
        reply: Reply<Changed>,
    ) -> std::result::Result<(), Msg> {
        match self.peer.propose_change(&change) {
            Ok(seq) => {
                self.changes
                    .insert(seq, (reply, self.clock.now() + self.limits.request_timeout));
            }
            Err(Refused::NotYet(_)) => return Err(Msg::Change(change, reply)),
            Err(Refused::NoLeader) => {
                let leader = self.peer.role().2;
                let name = self
                    .roster
                    .read()
                    .expect("roster lock")
                    .get(&leader)
                    .cloned();
                reply.send(Err(Error::Unavailable(match name {
                    Some(n) => format!(
                        "this node does not lead: send membership changes to the leader, {n}"
                    ),
                    None => "this node does not lead, and no leader is known: try again".into(),
                })));
            }
            Err(Refused::Change(why)) => reply.send(Err(Error::PreconditionFailed(why))),
        }
        Ok(())
    }
}

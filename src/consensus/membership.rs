//! Membership changes, one member at a time: proposed by the leader only once it has
//! committed an entry of its term and no other change is under way, and applied (or
//! refused) the same way on every replica, by the configuration and names at the
//! change's index.

use protobuf::Message as _;
use raft::StateRole;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry};

use super::{LogStore, Machine, Peer, Refused, Ticket};

/// A change of the group's membership, one member at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Add node `name` as a learner (it receives the log, does not vote); it gets the
    /// next Raft id never used in the group.
    AddLearner(String),
    /// Make learner `id` a voter.
    Promote(u64),
    /// Remove member `id` (voter or learner).
    Remove(u64),
}

/// The outcome of a membership change once applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Applied: the member's Raft id, and the voters and learners now (sorted).
    Done {
        /// The member changed.
        id: u64,
        /// Voters now.
        voters: Vec<u64>,
        /// Learners now.
        learners: Vec<u64>,
    },
    /// Committed but refused, the same way on every replica: why.
    Refused(String),
}

/// Records the founders' Raft ids in `machine.names` (with their node ids from
/// `known`, or an empty name when the embedding program gave none), so that no Raft
/// id of a founder is ever given to a member added later. Every founder does the same
/// from the same list; a member added later finds them in its snapshot.
pub fn name_founders(
    machine: &mut Machine,
    founders: &[u64],
    known: &std::collections::BTreeMap<u64, String>,
) {
    for f in founders {
        machine
            .names
            .entry(*f)
            .or_insert_with(|| known.get(f).cloned().unwrap_or_default());
    }
}

/// The voters and learners of a configuration, sorted.
pub fn members_of(cs: &raft::eraftpb::ConfState) -> (Vec<u64>, Vec<u64>) {
    let mut voters = cs.voters.clone();
    voters.sort_unstable();
    let mut learners = cs.learners.clone();
    learners.sort_unstable();
    (voters, learners)
}

/// Encodes a configuration change entry's context: who proposed it, and the node id
/// of a member added.
fn change_context(ticket: Ticket, name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + name.len());
    for v in [ticket.node, ticket.boot, ticket.seq] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(name.as_bytes());
    b
}

fn decode_change(data: &[u8]) -> Result<(ConfChange, Ticket, String), String> {
    let cc = ConfChange::parse_from_bytes(data).map_err(|e| e.to_string())?;
    let c = &cc.context;
    if c.len() < 24 {
        return Err("configuration change without its ticket".into());
    }
    let u64_at = |at: usize| u64::from_le_bytes(c[at..at + 8].try_into().expect("8 bytes"));
    let ticket = Ticket {
        node: u64_at(0),
        boot: u64_at(8),
        seq: u64_at(16),
    };
    let name = String::from_utf8(c[24..].to_vec()).map_err(|e| e.to_string())?;
    Ok((cc, ticket, name))
}

impl<S: LogStore> Peer<S> {
    /// Proposes a membership change; returns its request number. Its outcome comes
    /// from [`Peer::take_changed`] once applied here. Only a leader proposes one (it
    /// knows the members' progress), one at a time (raft-rs refuses a second while
    /// one is pending).
    ///
    /// # Errors
    /// [`Refused::NoLeader`] when this node does not lead; [`Refused::NotYet`] when
    /// it has just been elected (no entry of its term committed yet);
    /// [`Refused::Change`] when the change makes no sense now (what is wrong).
    pub fn propose_change(&mut self, change: &Change) -> Result<u64, Refused> {
        if self.node.raft.state != StateRole::Leader {
            return Err(Refused::NoLeader);
        }
        let (voters, learners) = self.members();
        let (kind, id, name) = match change {
            Change::AddLearner(name) => {
                if let Some((id, _)) = self.machine.names.iter().find(|(_, n)| *n == name) {
                    return Err(Refused::Change(format!(
                        "{name} was already given Raft id {id}: a node is added once, \
                         under a new node id"
                    )));
                }
                let id = self
                    .machine
                    .names
                    .keys()
                    .max()
                    .copied()
                    .unwrap_or(0)
                    .max(voters.iter().chain(&learners).max().copied().unwrap_or(0))
                    + 1;
                (ConfChangeType::AddLearnerNode, id, name.clone())
            }
            Change::Promote(id) => {
                if !learners.contains(id) {
                    return Err(Refused::Change(format!("{id} is not a learner")));
                }
                let last = self.node.raft.raft_log.last_index();
                let matched = self.node.raft.prs().get(*id).map_or(0, |p| p.matched);
                if matched == 0 || matched + PROMOTE_LAG < last {
                    return Err(Refused::Change(format!(
                        "the learner has index {matched} of {last}: promote it once it has \
                         caught up (within {PROMOTE_LAG} entries)"
                    )));
                }
                (ConfChangeType::AddNode, *id, String::new())
            }
            Change::Remove(id) => {
                if *id == self.id() {
                    return Err(Refused::Change(
                        "the leader does not remove itself: remove it from another node \
                         once it no longer leads"
                            .into(),
                    ));
                }
                if !voters.contains(id) && !learners.contains(id) {
                    return Err(Refused::Change(format!("{id} is not a member")));
                }
                (ConfChangeType::RemoveNode, *id, String::new())
            }
        };
        // A leader does not know which entries of earlier terms are committed until an
        // entry of its own term is: a change proposed before that could overlap one of
        // the previous leader that it does not know committed (two majorities that do
        // not meet). raft-rs guards only entries above what this node applied.
        if !self.node.raft.commit_to_current_term() {
            return Err(Refused::NotYet(
                "this node was elected a moment ago and has not yet committed an entry of \
                 its term: try again"
                    .into(),
            ));
        }
        if self.node.raft.has_pending_conf() {
            return Err(Refused::Change(
                "another membership change is under way: one at a time".into(),
            ));
        }
        let seq = self.next_seq;
        let mut cc = ConfChange::default();
        cc.set_change_type(kind);
        cc.node_id = id;
        let ticket = Ticket {
            node: self.id(),
            boot: self.boot,
            seq,
        };
        cc.context = change_context(ticket, &name).into();
        match self.node.propose_conf_change(Vec::new(), cc) {
            Ok(()) => {
                self.next_seq += 1;
                self.changes.insert(seq);
                Ok(seq)
            }
            Err(e) => Err(Refused::Change(format!("raft refused it: {e}"))),
        }
    }

    /// The outcomes of this node's membership changes applied since the last call.
    pub fn take_changed(&mut self) -> Vec<(u64, Changed)> {
        std::mem::take(&mut self.changed)
    }
}

impl<S: LogStore> Peer<S> {
    /// Applies a configuration change entry, or refuses it, the same way on every
    /// replica (by the configuration and names at this index).
    pub(super) fn apply_change(&mut self, e: &Entry) {
        self.machine.skip(e.index);
        let (cc, ticket, name) = match decode_change(&e.data) {
            Ok(d) => d,
            Err(why) => {
                log::error!(
                    "raft {}: entry {} not understood: {why}",
                    self.id(),
                    e.index
                );
                return;
            }
        };
        let id = cc.node_id;
        let (voters, learners) = self.members();
        let refused = match cc.get_change_type() {
            ConfChangeType::AddLearnerNode => {
                if self.machine.names.contains_key(&id)
                    || voters.contains(&id)
                    || learners.contains(&id)
                {
                    Some(format!("Raft id {id} was given before"))
                } else if name.is_empty() || self.machine.names.values().any(|n| *n == name) {
                    Some(format!("node id {name:?} was a member before"))
                } else {
                    None
                }
            }
            ConfChangeType::AddNode if !learners.contains(&id) => {
                Some(format!("{id} is not a learner"))
            }
            ConfChangeType::AddNode => None,
            ConfChangeType::RemoveNode if voters == [id] => {
                Some("the last voter stays".to_string())
            }
            ConfChangeType::RemoveNode if !voters.contains(&id) && !learners.contains(&id) => {
                Some(format!("{id} is not a member"))
            }
            ConfChangeType::RemoveNode => None,
        };
        let outcome = match refused {
            Some(why) => {
                log::warn!(
                    "raft {}: membership change at {} refused: {why}",
                    self.id(),
                    e.index
                );
                Changed::Refused(why)
            }
            None => match self.node.apply_conf_change(&cc) {
                Ok(cs) => {
                    if cc.get_change_type() == ConfChangeType::AddLearnerNode {
                        self.machine.names.insert(id, name.clone());
                    }
                    self.node.mut_store().configured(&cs, e.index);
                    let (voters, learners) = members_of(&cs);
                    log::info!(
                        "raft {}: membership at {}: voters {voters:?}, learners {learners:?}",
                        self.id(),
                        e.index
                    );
                    Changed::Done {
                        id,
                        voters,
                        learners,
                    }
                }
                Err(err) => {
                    log::warn!(
                        "raft {}: membership change at {} refused: {err}",
                        self.id(),
                        e.index
                    );
                    Changed::Refused(err.to_string())
                }
            },
        };
        if ticket.node == self.id() && ticket.boot == self.boot && self.changes.remove(&ticket.seq)
        {
            self.changed.push((ticket.seq, outcome));
        }
    }
}

/// How far behind the leader's last index a learner may be when it is promoted.
pub const PROMOTE_LAG: u64 = 1000;

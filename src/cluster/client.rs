//! What a client asks of a group, in its own terms: an append answered with its client
//! offset, a key written, compared-and-set or read. Each turns the consensus actor's
//! outcome (an `Effect`, a `ReadAnswer`) into the client's answer or error here, below
//! whoever speaks to the client (the router, an embedding program), so that every
//! front end answers alike.

use super::{ClusterNode, ReadAnswer, ReadQuery};
use crate::actor::{Reply, call};
use crate::consensus::{Change, Changed, Command, Effect};
use crate::core::kv;
use crate::core::position::Offset;
use crate::error::{Error, Result};
use crate::types::{Info, ReadEntry};

/// The group's members after a change, by Raft id (sorted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    /// The member changed.
    pub changed: u64,
    /// Voters now.
    pub voters: Vec<u64>,
    /// Learners now.
    pub learners: Vec<u64>,
}

impl ClusterNode {
    /// Appends `payload` to the group's log; answers its client offset once committed
    /// and applied here.
    pub fn append_with(&self, payload: Vec<u8>, reply: Reply<Offset>) {
        let reply = reply.map(|e| match e {
            Effect::Applied(offset) => Ok(offset),
            other => Err(Error::Crashed(format!("an append applied as {other:?}"))),
        });
        self.propose_with(Command::Append(payload), reply);
    }

    /// Sets `key` to `value` (JSON text, as the key-value state machine stores it).
    pub fn put_with(&self, key: &str, value: &str, reply: Reply<()>) {
        let reply = reply.map(|e| match e {
            Effect::Applied(_) => Ok(()),
            other => Err(Error::Crashed(format!("a write applied as {other:?}"))),
        });
        self.propose_with(
            Command::Append(kv::set_payload(key, value).into_bytes()),
            reply,
        );
    }

    /// Sets `key` to `to` if it holds `from` (JSON texts): [`Error::NotFound`] if the
    /// key is absent, [`Error::PreconditionFailed`] if it holds another value.
    pub fn cas_with(&self, key: String, from: String, to: String, reply: Reply<()>) {
        let shown = key.clone();
        let reply = reply.map(move |e| match e {
            Effect::Applied(_) => Ok(()),
            Effect::CasAbsent => Err(Error::NotFound(format!("key {shown} does not exist"))),
            Effect::CasMismatch(cur) => Err(Error::PreconditionFailed(format!(
                "key {shown} does not hold the expected value (it holds {cur})"
            ))),
            Effect::Recorded => Err(Error::Crashed("a cas applied as a record".into())),
        });
        self.propose_with(Command::Cas { key, from, to }, reply);
    }

    /// The value of `key` (JSON text), read linearizably: [`Error::NotFound`] if absent.
    pub fn get_with(&self, key: String, reply: Reply<String>) {
        let shown = key.clone();
        let reply = reply.map(move |a| match a {
            ReadAnswer::Value(Some(v)) => Ok(v),
            ReadAnswer::Value(None) => Err(Error::NotFound(format!("key {shown} does not exist"))),
            other => Err(Error::Crashed(format!("a key read answered {other:?}"))),
        });
        self.read_with(ReadQuery::Key(key), reply);
    }

    /// The entry at client offset `offset`, read linearizably.
    pub fn read_entry_with(&self, offset: Offset, reply: Reply<ReadEntry>) {
        let reply = reply.map(|a| match a {
            ReadAnswer::Entry(e) => Ok(e),
            other => Err(Error::Crashed(format!("an entry read answered {other:?}"))),
        });
        self.read_with(ReadQuery::Entry(offset), reply);
    }

    /// The log's figures (live entries, bytes, durability), read linearizably.
    pub fn info_with(&self, reply: Reply<Info>) {
        let reply = reply.map(|a| match a {
            ReadAnswer::Info(i) => Ok(i),
            other => Err(Error::Crashed(format!("an info read answered {other:?}"))),
        });
        self.read_with(ReadQuery::Info, reply);
    }

    /// Changes the group's membership (on the leader); answers the voters and learners
    /// once the change is applied here: [`Error::PreconditionFailed`] if the group
    /// refused it (the same way on every replica).
    pub fn change_members_with(&self, change: Change, reply: Reply<Members>) {
        let reply = reply.map(|c| match c {
            Changed::Done {
                id,
                voters,
                learners,
            } => Ok(Members {
                changed: id,
                voters,
                learners,
            }),
            Changed::Refused(why) => Err(Error::PreconditionFailed(format!(
                "the group refused the change: {why}"
            ))),
        });
        self.change_with(change, reply);
    }

    /// [`ClusterNode::append_with`], waiting for the answer.
    ///
    /// # Errors
    /// Error 11 (no leader, or not this node: nothing happened), error 13 (past its
    /// deadline: it may or may not be committed), or the node's failure.
    pub fn append(&self, payload: Vec<u8>) -> Result<Offset> {
        call(|r| self.append_with(payload, r))
    }

    /// [`ClusterNode::put_with`], waiting for the answer.
    ///
    /// # Errors
    /// As [`ClusterNode::append`].
    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        call(|r| self.put_with(key, value, r))
    }

    /// [`ClusterNode::cas_with`], waiting for the answer.
    ///
    /// # Errors
    /// As [`ClusterNode::append`], and as [`ClusterNode::cas_with`] says.
    pub fn cas(&self, key: &str, from: &str, to: &str) -> Result<()> {
        call(|r| self.cas_with(key.into(), from.into(), to.into(), r))
    }

    /// [`ClusterNode::get_with`], waiting for the answer.
    ///
    /// # Errors
    /// [`Error::NotFound`], or error 11 (no leader known, or the read timed out).
    pub fn get(&self, key: &str) -> Result<String> {
        call(|r| self.get_with(key.into(), r))
    }
}

//! What a client entry of the Raft log holds, and how the state machine applies it.
//!
//! An entry's data is a [`Ticket`] (the node that proposed it and its number there, so
//! that the node the client asked answers once it applies the entry) and a
//! [`Command`]. A compare-and-set is decided when it is applied, on every replica
//! alike: one that fails changes nothing and takes no client offset. Raft's own
//! entries (a new leader's empty entry) have no data and take no offset either, so
//! client offsets stay dense from 0 and equal on every replica.
//!
//! ```text
//! version u8 = 1 | kind u8 | node u64 | boot u64 | seq u64 | command
//!   kind 1 (append): payload (the rest)
//!   kind 2 (cas):    key_len u32 | key | from_len u32 | from | to (the rest)
//!   kind 3 (incarnation): raft id u64 | incarnation u64
//! ```
//!
//! An incarnation record is the group's own business: it takes no client offset.

use std::collections::{BTreeMap, BTreeSet};

use crate::core::kv::{self, KvState};
use crate::core::position::Offset;

/// Who proposed an entry: a node (its Raft id), the run of that node (entries of an
/// earlier run are applied again after a restart, and must not answer this run's
/// requests), and a number unique in that run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket {
    /// The proposing node's Raft id.
    pub node: u64,
    /// Which run of that node.
    pub boot: u64,
    /// Its number in that run.
    pub seq: u64,
}

/// A client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Append a payload (a `set`/`del` command or anything else).
    Append(Vec<u8>),
    /// Set `key` to `to` if it holds `from`.
    Cas {
        /// The key.
        key: String,
        /// The value it must hold.
        from: String,
        /// The value it gets.
        to: String,
    },
    /// Record the incarnation of member `id` (the first record of an id stays).
    Incarnation {
        /// The member's Raft id.
        id: u64,
        /// The incarnation its messages carry.
        incarnation: u64,
    },
}

const VERSION: u8 = 1;
const HEAD: usize = 2 + 24;

/// Encodes an entry's data.
pub fn encode(ticket: Ticket, cmd: &Command) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEAD + 32);
    b.push(VERSION);
    b.push(match cmd {
        Command::Append(_) => 1,
        Command::Cas { .. } => 2,
        Command::Incarnation { .. } => 3,
    });
    b.extend_from_slice(&ticket.node.to_le_bytes());
    b.extend_from_slice(&ticket.boot.to_le_bytes());
    b.extend_from_slice(&ticket.seq.to_le_bytes());
    match cmd {
        Command::Append(payload) => b.extend_from_slice(payload),
        Command::Cas { key, from, to } => {
            for part in [key, from] {
                b.extend_from_slice(&(part.len() as u32).to_le_bytes());
                b.extend_from_slice(part.as_bytes());
            }
            b.extend_from_slice(to.as_bytes());
        }
        Command::Incarnation { id, incarnation } => {
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&incarnation.to_le_bytes());
        }
    }
    b
}

/// Decodes an entry's data.
pub fn decode(b: &[u8]) -> Result<(Ticket, Command), String> {
    if b.len() < HEAD {
        return Err(format!("{} bytes, shorter than a ticket", b.len()));
    }
    if b[0] != VERSION {
        return Err(format!("unknown entry version {}", b[0]));
    }
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let ticket = Ticket {
        node: u64_at(2),
        boot: u64_at(10),
        seq: u64_at(18),
    };
    let rest = &b[HEAD..];
    let cmd = match b[1] {
        1 => Command::Append(rest.to_vec()),
        2 => {
            let mut rest = rest;
            let mut part = || -> Result<String, String> {
                let len = rest
                    .get(..4)
                    .map(|l| u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize)
                    .ok_or("cas entry cut short")?;
                let text = rest.get(4..4 + len).ok_or("cas entry cut short")?;
                let text = String::from_utf8(text.to_vec()).map_err(|e| e.to_string())?;
                rest = &rest[4 + len..];
                Ok(text)
            };
            let key = part()?;
            let from = part()?;
            let to = String::from_utf8(rest.to_vec()).map_err(|e| e.to_string())?;
            Command::Cas { key, from, to }
        }
        3 if rest.len() == 16 => Command::Incarnation {
            id: u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")),
            incarnation: u64::from_le_bytes(rest[8..].try_into().expect("8 bytes")),
        },
        3 => return Err(format!("incarnation entry of {} bytes", rest.len())),
        k => return Err(format!("unknown command kind {k}")),
    };
    Ok((ticket, cmd))
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The command took this client offset.
    Applied(Offset),
    /// A compare-and-set on a key that does not exist: nothing changed.
    CasAbsent,
    /// A compare-and-set on a key that holds another value: nothing changed.
    CasMismatch(String),
    /// The group's own record (an incarnation): no client offset taken.
    Recorded,
}

/// The replicated state machine: the key-value state, the next client offset, and the
/// Raft index applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Machine {
    /// Keys and values.
    pub kv: KvState,
    /// The offset the next client entry gets.
    pub next_offset: Offset,
    /// The last Raft index applied.
    pub applied: u64,
    /// Where client offsets sit in the Raft log: runs `(first offset, its index)`, in
    /// order; the offsets of a run take consecutive indexes. A new run starts wherever
    /// an entry took no offset (Raft's own, a failed `cas`, a duplicate), so there are
    /// few of them. See [`Machine::index_of`].
    pub runs: Vec<(u64, u64)>,
    /// The requests applied, per proposing run: a node proposes again a request it
    /// heard nothing of (the first proposal may have been lost on its way to the
    /// leader, or not), and the copy that comes second changes nothing.
    pub sessions: BTreeMap<(u64, u64), Session>,
    /// The node id of every Raft id that was ever a member (founders and members
    /// added since; a Raft id is never given to another node). A founder's name is
    /// empty when the program that started the group gave none.
    pub names: BTreeMap<u64, String>,
    /// Each member's incarnation, as first recorded: the random number its data
    /// directory was created with. Messages from another incarnation of that Raft id
    /// (the node came back with an empty directory: it forgot its vote and its log)
    /// are refused.
    pub incarnations: BTreeMap<u64, u64>,
}

/// The requests of one run of one node that were applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    /// Every request number at or below this was applied or will never be.
    pub floor: u64,
    /// Request numbers above the floor that were applied.
    pub applied: BTreeSet<u64>,
    /// The Raft index of the last request applied (which session to forget first).
    pub last_index: u64,
}

/// Sessions kept; beyond this the one idle longest is forgotten (deterministically:
/// by the log, so on every replica alike).
pub const SESSIONS_MAX: usize = 256;
/// Request numbers a session remembers; older ones are below its floor (a request
/// that old is not proposed again: the proposer gave up on it long before).
pub const SESSION_WINDOW: u64 = 100_000;

impl Session {
    /// Records `seq`; returns false if it was applied before (or is below the floor).
    fn admit(&mut self, seq: u64, index: u64) -> bool {
        if seq <= self.floor || !self.applied.insert(seq) {
            return false;
        }
        self.last_index = index;
        while self.applied.remove(&(self.floor + 1)) {
            self.floor += 1;
        }
        let Some(&newest) = self.applied.last() else {
            return true;
        };
        if newest > self.floor + SESSION_WINDOW {
            self.floor = newest - SESSION_WINDOW;
            self.applied = self.applied.split_off(&(self.floor + 1));
        }
        true
    }
}

impl Machine {
    /// Applies a command at Raft index `index`, unless its ticket was applied before
    /// (then `None`: nothing changes).
    pub fn apply(&mut self, index: u64, ticket: Ticket, cmd: &Command) -> Option<Effect> {
        self.applied = index;
        let session = self.sessions.entry((ticket.node, ticket.boot)).or_default();
        if !session.admit(ticket.seq, index) {
            return None;
        }
        if self.sessions.len() > SESSIONS_MAX {
            let idle = self
                .sessions
                .iter()
                .min_by_key(|(key, s)| (s.last_index, **key))
                .map(|(key, _)| *key)
                .expect("not empty");
            self.sessions.remove(&idle);
        }
        Some(self.effect(index, cmd))
    }

    fn effect(&mut self, index: u64, cmd: &Command) -> Effect {
        let payload = match cmd {
            Command::Append(p) => p.clone(),
            Command::Cas { key, from, to } => match self.kv.get(key) {
                None => return Effect::CasAbsent,
                Some(cur) if **cur != **from => return Effect::CasMismatch(cur.to_string()),
                Some(_) => kv::set_payload(key, to).into_bytes(),
            },
            Command::Incarnation { id, incarnation } => {
                self.incarnations.entry(*id).or_insert(*incarnation);
                return Effect::Recorded;
            }
        };
        self.kv.apply(&payload);
        let offset = self.next_offset;
        self.next_offset = offset.plus(1);
        let o = offset.get();
        if self
            .runs
            .last()
            .is_none_or(|&(first, at)| at + (o - first) != index)
        {
            self.runs.push((o, index));
        }
        Effect::Applied(offset)
    }

    /// The Raft index of the entry at client offset `offset` (`None`: past the end).
    pub fn index_of(&self, offset: Offset) -> Option<u64> {
        let o = offset.get();
        if o >= self.next_offset.get() {
            return None;
        }
        let run = self.runs.partition_point(|&(first, _)| first <= o);
        let (first, at) = self.runs[run.checked_sub(1)?];
        Some(at + (o - first))
    }

    /// Forgets where the offsets of entries before Raft index `index` sit (those
    /// entries were compacted away): the runs wholly before it.
    pub fn forget_before(&mut self, index: u64) {
        let keep_from = self
            .runs
            .partition_point(|&(_, at)| at <= index)
            .saturating_sub(1);
        self.runs.drain(..keep_from);
    }

    /// The payload a client entry stands for: the command's own for an append, the
    /// `set` it made for a compare-and-set.
    pub fn payload_of(cmd: &Command) -> Vec<u8> {
        match cmd {
            Command::Append(p) => p.clone(),
            Command::Cas { key, to, .. } => kv::set_payload(key, to).into_bytes(),
            Command::Incarnation { .. } => Vec::new(),
        }
    }

    /// A digest of the state at the applied index: equal on every replica that applied
    /// the same entries. Computed over the whole map (O(keys)) when asked.
    pub fn digest(&self) -> u32 {
        let mut crc = crc32c::crc32c(&self.applied.to_le_bytes());
        crc = crc32c::crc32c_append(crc, &self.next_offset.on_disk().to_le_bytes());
        crc = crc32c::crc32c_append(crc, &self.kv.other_payloads.to_le_bytes());
        for (k, v) in &self.kv.map {
            crc = crc32c::crc32c_append(crc, &(k.len() as u32).to_le_bytes());
            crc = crc32c::crc32c_append(crc, k.as_bytes());
            crc = crc32c::crc32c_append(crc, &(v.len() as u32).to_le_bytes());
            crc = crc32c::crc32c_append(crc, v.as_bytes());
        }
        crc
    }

    /// Notes an entry with no client command (Raft's own) at `index`.
    pub fn skip(&mut self, index: u64) {
        self.applied = index;
    }
}

/// The replicated state machine at a Raft index: a snapshot's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The term of the entry at `machine.applied`.
    pub term: u64,
    /// The group's voters, sorted.
    pub voters: Vec<u64>,
    /// Its learners (members that receive the log but do not vote), sorted.
    pub learners: Vec<u64>,
    /// The state machine; `machine.applied` is the image's index.
    pub machine: Machine,
}

impl Image {
    /// The Raft index the image stands at.
    pub fn index(&self) -> u64 {
        self.machine.applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let t = Ticket {
            node: 3,
            boot: 7,
            seq: 99,
        };
        for cmd in [
            Command::Append(b"set a=1".to_vec()),
            Command::Append(Vec::new()),
            Command::Cas {
                key: "k".into(),
                from: "1".into(),
                to: "[2]".into(),
            },
            Command::Incarnation {
                id: 4,
                incarnation: u64::MAX - 3,
            },
        ] {
            assert_eq!(decode(&encode(t, &cmd)), Ok((t, cmd.clone())));
            let b = encode(t, &cmd);
            for cut in 0..HEAD {
                assert!(decode(&b[..cut]).is_err());
            }
        }
        assert!(decode(&[9; 40]).is_err());
    }

    #[test]
    fn a_failed_cas_takes_no_offset() {
        let mut m = Machine::default();
        let mut seq = 0;
        let mut t = || {
            seq += 1;
            Ticket {
                node: 1,
                boot: 1,
                seq,
            }
        };
        let cas = |from: &str, to: &str| Command::Cas {
            key: "k".into(),
            from: from.into(),
            to: to.into(),
        };
        assert_eq!(m.apply(1, t(), &cas("1", "2")), Some(Effect::CasAbsent));
        assert_eq!(
            m.apply(2, t(), &Command::Append(b"set k=1".to_vec())),
            Some(Effect::Applied(Offset::new(0)))
        );
        m.skip(3);
        assert_eq!(
            m.apply(4, t(), &cas("7", "2")),
            Some(Effect::CasMismatch("1".into()))
        );
        assert_eq!(
            m.apply(5, t(), &cas("1", "2")),
            Some(Effect::Applied(Offset::new(1)))
        );
        assert_eq!(m.kv.get("k").map(|v| v.to_string()), Some("2".into()));
        assert_eq!((m.next_offset, m.applied), (Offset::new(2), 5));
        // Offset 0 at index 2, offset 1 at index 5: two runs.
        assert_eq!(m.runs, [(0, 2), (1, 5)]);
    }

    #[test]
    fn offsets_map_to_their_indexes_through_runs() {
        let mut m = Machine::default();
        let mut index = 0;
        let mut expected = Vec::new();
        for i in 0..100u64 {
            index += 1;
            if i % 7 == 3 {
                m.skip(index); // a leader's empty entry
                index += 1;
            }
            let t = Ticket {
                node: 1,
                boot: 1,
                seq: i + 1,
            };
            m.apply(
                index,
                t,
                &Command::Append(format!("set k{i}=v").into_bytes()),
            );
            expected.push(index);
        }
        for (o, want) in expected.iter().enumerate() {
            assert_eq!(m.index_of(Offset::new(o as u64)), Some(*want), "offset {o}");
        }
        assert_eq!(m.index_of(Offset::new(100)), None);
        assert!(m.runs.len() <= 16, "{} runs", m.runs.len());
        m.forget_before(expected[50]);
        assert!(m.runs[0].0 <= 50 && m.runs[0].0 > 40 && m.runs.len() > 1);
        for (o, want) in expected.iter().enumerate().skip(50) {
            assert_eq!(m.index_of(Offset::new(o as u64)), Some(*want), "offset {o}");
        }
    }

    #[test]
    fn a_request_proposed_twice_is_applied_once() {
        let mut m = Machine::default();
        let t = Ticket {
            node: 2,
            boot: 9,
            seq: 5,
        };
        let set = Command::Append(b"set k=1".to_vec());
        assert_eq!(m.apply(1, t, &set), Some(Effect::Applied(Offset::new(0))));
        assert_eq!(m.apply(2, t, &set), None);
        // Another run of the same node is another session.
        let other = Ticket { boot: 10, ..t };
        assert_eq!(
            m.apply(3, other, &set),
            Some(Effect::Applied(Offset::new(1)))
        );
        assert_eq!(m.next_offset, Offset::new(2));
        // Far newer requests move the floor: a very old duplicate is refused too.
        let late = Ticket {
            seq: 5 + SESSION_WINDOW + 10,
            ..t
        };
        assert!(m.apply(4, late, &set).is_some());
        assert_eq!(m.apply(5, Ticket { seq: 6, ..t }, &set), None);
    }
}

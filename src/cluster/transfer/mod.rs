//! Snapshot transfer between members: the snapshot travels in chunks outside Raft.
//!
//! A leader whose follower needs entries it compacted lets raft-rs send a
//! `MsgSnapshot` that carries only the snapshot's [`ChainId`] (index, term, and each
//! file of its chain, a full snapshot then the deltas on it, with sizes and body
//! checksums) in place of the data. The follower does not step that message into
//! raft-rs until it holds the whole chain. Files of the chain it already holds (the
//! same name, size and checksum: a base received with an earlier snapshot, say) are
//! not sent again; the others it receives one after the other, base first. For each, it
//! asks the sender for chunks ([`Part::Ask`]: a window of `ClusterLimits::transfer_window` chunks of at most
//! [`CHUNK_BYTES`] from the first byte it lacks), writes each in order to
//! `<file>.<checksum>.part`, syncs it at the end of the window, and asks on from
//! there; a chunk whose CRC-32C does not match, or that arrives out of order, is
//! dropped and asked again after `ClusterLimits::ask_again`. The part files survive a restart of
//! either side, a lost chunk and a leader change: the transfer resumes at their durable
//! lengths as long as the snapshot offered is the same one (same names and checksums);
//! another one starts from zero. Once all are whole, the chain is verified (headers,
//! body checksums, each delta building on the file before it, the state machine
//! decodes), the received files renamed into place (the tip last) and the directory
//! synced; only then is the message stepped, and raft-rs installs it.
//!
//! ```text
//! {"type": "snapshot_part", "part": {"ask": file, "crc": checksum, "from": byte, "count": n}}
//! {"type": "snapshot_part", "part": {"chunk": file, "crc": checksum, "at": byte, "size": total,
//!                                    "data": base64, "data_crc": crc32c of the bytes}}
//! {"type": "snapshot_part", "part": {"gone": file, "crc": checksum}}
//! ```

/// Most file bytes in one chunk.
pub const CHUNK_BYTES: u64 = 256 * 1024;

pub use crate::raftlog::image::ChainId;

mod hold;
mod receive;

pub(super) use hold::{Holds, offer_wait};
pub(super) use receive::{Do, PartFiles, Receiving};

/// A message of a transfer. It travels as the stdin transport's JSON or, over TCP, in
/// bincode (hence the derives); either way [`Part::check`] vets it on arrival.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Part {
    /// The receiver asks for `count` chunks of `file` from byte `from`.
    Ask {
        file: String,
        checksum: u32,
        from: u64,
        count: u32,
    },
    /// A chunk of `file` (`size` bytes in all) at byte `at`.
    Chunk {
        file: String,
        checksum: u32,
        at: u64,
        size: u64,
        data: Vec<u8>,
        crc: u32,
    },
    /// The sender no longer has that file: the receiver waits for a newer offer.
    Gone { file: String, checksum: u32 },
}

impl Part {
    /// Whether a part received from a peer may be acted on: it names a cluster
    /// snapshot's file (nothing outside the snapshots), and a chunk holds at most
    /// [`CHUNK_BYTES`].
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn check(&self) -> Result<(), String> {
        let (Part::Ask { file, .. } | Part::Chunk { file, .. } | Part::Gone { file, .. }) = self;
        if crate::core::layout::parse_raft_snapshot(file).is_none() {
            return Err(format!("{file:?} is not a cluster snapshot's name"));
        }
        if let Part::Chunk { data, .. } = self
            && data.len() as u64 > CHUNK_BYTES
        {
            return Err(format!("a chunk of {} bytes", data.len()));
        }
        Ok(())
    }
}

/// Counts of snapshot transfers received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfers {
    /// Offers of a snapshot this node began to receive.
    pub started: u64,
    /// Of those, how many went on from a part file kept from an earlier attempt (a
    /// restart of this node, a new offer of the same snapshot).
    pub resumed: u64,
    /// Times a stalled transfer asked again from its durable length (a chunk lost,
    /// damaged or out of order, the sender slow or gone).
    pub asked_again: u64,
    /// Transfers that started over from zero: another snapshot was offered while one
    /// was under way, or the whole file did not verify.
    pub restarted: u64,
    /// Snapshots received whole, verified and installed.
    pub completed: u64,
    /// Of those, how many were fetched from the snapshot store rather than sent by the
    /// leader.
    pub from_store: u64,
    /// Bytes of offered chains this node held already (a base received with an earlier
    /// snapshot) and did not receive again.
    pub bytes_held: u64,
    /// Where the time of the last snapshot installed went.
    pub last: Option<Phases>,
}

/// The phases of one snapshot received and installed, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases {
    /// The snapshot file's size.
    pub bytes: u64,
    /// From the offer to the last byte durable in the part file.
    pub transfer_ms: u64,
    /// Reading the whole file back, checking it and decoding its state, then putting
    /// it in place (rename, directory sync).
    pub verify_ms: u64,
    /// From then until the state machine stood at the snapshot's index (the log
    /// replaced, crash-safely; any compaction in flight waited for first).
    pub install_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_and_garbage_is_refused() {
        let id = ChainId {
            index: 1234,
            term: 7,
            file: crate::core::layout::raft_snapshot(1234),
            size: 99_999,
            checksum: 0xdead_beef,
            parents: vec![],
        };
        assert_eq!(ChainId::decode(&id.encode()), Ok(id.clone()));
        assert!(ChainId::decode(&id.encode()[..30]).is_err());
        let chain = ChainId {
            file: crate::core::layout::raft_delta(1234),
            parents: vec![crate::raftlog::image::Link {
                file: crate::core::layout::raft_snapshot(1000),
                size: 5_000_000,
                checksum: 7,
            }],
            ..id.clone()
        };
        assert_eq!(ChainId::decode(&chain.encode()), Ok(chain.clone()));
        assert_eq!(chain.total_size(), 5_099_999);
        let bytes = chain.encode();
        for cut in [10, 30, bytes.len() - 1] {
            assert!(ChainId::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(ChainId::decode(b"FLNTSNIDxxxxxxxxxxxxxxxxxxxxxxxxxxxx../etc/passwd").is_err());
    }
}

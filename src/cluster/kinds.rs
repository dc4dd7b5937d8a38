//! raft-rs's message and entry kinds by number, for every peer codec (the JSON lines of
//! the stdin/stdout transport, the binary frames of the TCP one): a number that names
//! no kind is refused before anything reaches raft-rs.

use raft::eraftpb::{EntryType, MessageType};

/// The message type numbered `t` (raft-rs's own numbering), if it is one.
pub fn message_type(t: u64) -> Option<MessageType> {
    use MessageType::*;
    Some(match t {
        0 => MsgHup,
        1 => MsgBeat,
        2 => MsgPropose,
        3 => MsgAppend,
        4 => MsgAppendResponse,
        5 => MsgRequestVote,
        6 => MsgRequestVoteResponse,
        7 => MsgSnapshot,
        8 => MsgHeartbeat,
        9 => MsgHeartbeatResponse,
        10 => MsgUnreachable,
        11 => MsgSnapStatus,
        12 => MsgCheckQuorum,
        13 => MsgTransferLeader,
        14 => MsgTimeoutNow,
        15 => MsgReadIndex,
        16 => MsgReadIndexResp,
        17 => MsgRequestPreVote,
        18 => MsgRequestPreVoteResponse,
        _ => return None,
    })
}

/// Whether a message of type `t` only ever travels inside one node (raft-rs's local
/// signals): such a message from the network is refused.
pub fn is_local(t: MessageType) -> bool {
    use MessageType::*;
    matches!(
        t,
        MsgHup | MsgBeat | MsgUnreachable | MsgSnapStatus | MsgCheckQuorum
    )
}

/// The number of an entry kind.
pub fn entry_number(t: EntryType) -> u64 {
    match t {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

/// The entry kind numbered `k`, if it is one.
pub fn entry_type(k: u64) -> Option<EntryType> {
    Some(match k {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_by_number_and_no_other_number_names_one() {
        for t in 0..19 {
            assert_eq!(message_type(t).map(|m| m as u64), Some(t));
        }
        assert_eq!(message_type(19), None);
        for k in 0..3 {
            assert_eq!(entry_type(k).map(entry_number), Some(k));
        }
        assert_eq!(entry_type(3), None);
        assert!(is_local(MessageType::MsgHup) && !is_local(MessageType::MsgAppend));
    }
}

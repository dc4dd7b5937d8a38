//! A Raft entry as a record's payload in the segment log:
//!
//! ```text
//! term u64 | kind u8 (0 normal, 1 configuration change, 2 configuration change v2) | data
//! ```

use raft::eraftpb::{Entry, EntryType};

/// Encodes an entry as a log payload.
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut b = Vec::with_capacity(9 + e.data.len());
    b.extend_from_slice(&e.term.to_le_bytes());
    b.push(match e.entry_type {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    });
    b.extend_from_slice(&e.data);
    b
}

/// Decodes a log payload at Raft index `index`.
pub fn decode_entry(index: u64, b: &[u8]) -> std::result::Result<Entry, String> {
    if b.len() < 9 {
        return Err(format!(
            "entry {index}: {} bytes, shorter than its header",
            b.len()
        ));
    }
    let entry_type = match b[8] {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        k => return Err(format!("entry {index}: unknown kind {k}")),
    };
    Ok(Entry {
        entry_type,
        term: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
        index,
        data: b[9..].to_vec().into(),
        ..Entry::default()
    })
}

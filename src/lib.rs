//! flintlog: a durable, checksummed, segmented write-ahead log of a key-value state
//! machine, with snapshots cut off the append path, compaction behind durable
//! snapshots, and crash recovery.
//!
//! Open a [`Node`] on a directory; talk to it through its three handles:
//! [`AppenderHandle`] (appends, reads, key-value operations, figures),
//! [`SnapshotterHandle`] and [`CompactorHandle`]. Every blocking method has a `_with`
//! twin that takes a [`Reply`] callback, which is how the binary's router keeps many
//! requests in flight. See `ARCHITECTURE.md` for the threads and the invariants.

pub mod actor;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod consensus;
pub mod core;
pub mod error;
pub mod fs;
#[doc(hidden)]
pub mod fuzz_entry;
pub mod inspect;
pub mod lincheck;
mod node;
pub mod proxy;
pub mod raftlog;
pub mod router;
pub mod serve;
pub mod snapshot;
pub mod store;
pub mod survey;
pub mod transport;
pub mod types;
pub mod wal;

pub use actor::Reply;
pub use actor::appender::{AppenderHandle, CasPredicate};
pub use actor::facades::{CompactorHandle, SnapshotterHandle};
pub use config::{Config, FsyncPolicy};
pub use core::policy::{Policy, PolicyUpdate};
pub use core::position::{Offset, RaftIndex};
pub use error::{Error, Result};
pub use node::{Node, check_data_dir};
pub use snapshot::SnapshotFile;
pub use types::{
    Compaction, Counters, Info, KeptSnapshot, Management, ReadEntry, RecoveryReport, SegmentInfo,
    SegmentList, Status, TriggerStatus,
};

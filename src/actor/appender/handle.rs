//! The appender's public handle and its messages.

use crossbeam_channel::Sender;

use crate::actor::{Reply, call};
use crate::core::kv;
use crate::core::policy::{Policy, PolicyUpdate, SnapshotMode};
use crate::core::position::Offset;
use crate::error::{Error, Result};
use crate::snapshot::SnapshotFile;
use crate::types::{Compaction, Info, ReadEntry, SegmentList, Status};

/// A predicate over the current value, for compare-and-set.
pub type CasPredicate = Box<dyn FnOnce(&str) -> bool + Send>;

pub(crate) enum AppenderMsg {
    Append {
        payload: Vec<u8>,
        reply: Reply<Offset>,
    },
    Read {
        offset: Offset,
        reply: Reply<ReadEntry>,
    },
    KvGet {
        key: String,
        reply: Reply<String>,
    },
    KvSet {
        key: String,
        value: String,
        reply: Reply<Offset>,
    },
    KvCas {
        key: String,
        expected: CasPredicate,
        value: String,
        reply: Reply<Offset>,
    },
    Info {
        reply: Reply<Info>,
    },
    Segments {
        reply: Reply<SegmentList>,
    },
    SetSegmentBytesMax {
        bytes: u64,
        reply: Reply<u64>,
    },
    Snapshot {
        mode: SnapshotMode,
        reply: Reply<SnapshotFile>,
    },
    Compact {
        at: Offset,
        reply: Reply<Compaction>,
    },
    Status {
        reply: Reply<Status>,
    },
    SetPolicy {
        update: PolicyUpdate,
        reply: Reply<Policy>,
    },
    Settle {
        reply: Reply<()>,
    },
    Shutdown,
}

/// Handle to the appender: appends, reads, the key-value operations, and the log's
/// figures. Cheap to clone; every method blocks until the answer, and each has a
/// `_with` twin that takes a [`Reply`] and returns at once.
#[derive(Clone)]
pub struct AppenderHandle {
    pub(crate) tx: Sender<AppenderMsg>,
    pub(super) payload_bytes_max: u64,
}

impl AppenderHandle {
    pub(crate) fn submit(&self, msg: AppenderMsg) {
        // On failure the message (and its Reply) is dropped, which answers Crashed.
        if self.tx.send(msg).is_err() {
            log::debug!("request sent to a stopped appender");
        }
    }

    fn check_payload(&self, len: usize) -> Result<()> {
        if len as u64 > self.payload_bytes_max {
            return Err(Error::InvalidArgument(format!(
                "payload of {len} bytes is over the limit of {} bytes",
                self.payload_bytes_max
            )));
        }
        Ok(())
    }

    /// Appends `payload`; returns its offset once durable under the fsync policy.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] over the payload limit; [`Error::Unavailable`] when
    /// nothing was written (disk full); [`Error::Crashed`] when the outcome is unknown.
    pub fn append(&self, payload: impl Into<Vec<u8>>) -> Result<Offset> {
        let payload = payload.into();
        call(|reply| self.append_with(payload, reply))
    }

    /// Non-blocking [`AppenderHandle::append`].
    pub fn append_with(&self, payload: Vec<u8>, reply: Reply<Offset>) {
        match self.check_payload(payload.len()) {
            Ok(()) => self.submit(AppenderMsg::Append { payload, reply }),
            Err(e) => reply.send(Err(e)),
        }
    }

    /// Reads the entry at `offset`.
    ///
    /// # Errors
    /// [`Error::NotFound`] if it was compacted away or is past the end.
    pub fn read(&self, offset: Offset) -> Result<ReadEntry> {
        call(|reply| self.read_with(offset, reply))
    }

    /// Non-blocking [`AppenderHandle::read`].
    pub fn read_with(&self, offset: Offset, reply: Reply<ReadEntry>) {
        self.submit(AppenderMsg::Read { offset, reply });
    }

    /// The value stored under `key` (the text after `=`).
    ///
    /// # Errors
    /// [`Error::NotFound`] if the key is not set.
    pub fn kv_get(&self, key: &str) -> Result<String> {
        call(|reply| self.kv_get_with(key.to_string(), reply))
    }

    /// Non-blocking [`AppenderHandle::kv_get`].
    pub fn kv_get_with(&self, key: String, reply: Reply<String>) {
        self.submit(AppenderMsg::KvGet { key, reply });
    }

    fn check_key_value(&self, key: &str, value: &str) -> Result<()> {
        if !kv::valid_key(key) {
            return Err(Error::InvalidArgument(format!(
                "key {key:?} is empty or contains whitespace or '='"
            )));
        }
        self.check_payload(kv::set_payload(key, value).len())
    }

    /// Sets `key` to `value` through the log (`set KEY=VALUE`); returns the offset.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a key that is empty or has whitespace or `=`;
    /// otherwise as [`AppenderHandle::append`].
    pub fn kv_set(&self, key: &str, value: &str) -> Result<Offset> {
        call(|reply| self.kv_set_with(key.to_string(), value.to_string(), reply))
    }

    /// Non-blocking [`AppenderHandle::kv_set`].
    pub fn kv_set_with(&self, key: String, value: String, reply: Reply<Offset>) {
        match self.check_key_value(&key, &value) {
            Ok(()) => self.submit(AppenderMsg::KvSet { key, value, reply }),
            Err(e) => reply.send(Err(e)),
        }
    }

    /// Atomically sets `key` to `value` if its current value is exactly `from`.
    ///
    /// # Errors
    /// [`Error::NotFound`] if the key is not set, [`Error::PreconditionFailed`] if it
    /// holds another value; otherwise as [`AppenderHandle::kv_set`].
    pub fn kv_cas(&self, key: &str, from: &str, value: &str) -> Result<Offset> {
        let from = from.to_string();
        call(|reply| {
            self.kv_cas_with(
                key.to_string(),
                Box::new(move |cur| cur == from),
                value.to_string(),
                reply,
            )
        })
    }

    /// Non-blocking compare-and-set with any predicate over the current value.
    pub fn kv_cas_with(
        &self,
        key: String,
        expected: CasPredicate,
        value: String,
        reply: Reply<Offset>,
    ) {
        match self.check_key_value(&key, &value) {
            Ok(()) => self.submit(AppenderMsg::KvCas {
                key,
                expected,
                value,
                reply,
            }),
            Err(e) => reply.send(Err(e)),
        }
    }

    /// Live entries, bytes on disk, and whether everything acknowledged is durable.
    pub fn info(&self) -> Result<Info> {
        call(|reply| self.info_with(reply))
    }

    /// Non-blocking [`AppenderHandle::info`].
    pub fn info_with(&self, reply: Reply<Info>) {
        self.submit(AppenderMsg::Info { reply });
    }

    /// Every live segment.
    pub fn segments(&self) -> Result<SegmentList> {
        call(|reply| self.segments_with(reply))
    }

    /// Non-blocking [`AppenderHandle::segments`].
    pub fn segments_with(&self, reply: Reply<SegmentList>) {
        self.submit(AppenderMsg::Segments { reply });
    }

    /// Sets the size at which the active segment is sealed (≥ 1); returns it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for 0.
    pub fn set_segment_bytes_max(&self, bytes: u64) -> Result<u64> {
        call(|reply| self.set_segment_bytes_max_with(bytes, reply))
    }

    /// Non-blocking [`AppenderHandle::set_segment_bytes_max`].
    pub fn set_segment_bytes_max_with(&self, bytes: u64, reply: Reply<u64>) {
        if bytes < 1 {
            return reply.send(Err(Error::InvalidArgument(
                "max_segment_bytes must be at least 1".into(),
            )));
        }
        self.submit(AppenderMsg::SetSegmentBytesMax { bytes, reply });
    }

    /// Changes some fields of the log-management policy; returns the whole policy now
    /// in force.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a value out of range; nothing changes then.
    pub fn set_policy(&self, update: PolicyUpdate) -> Result<Policy> {
        call(|reply| self.set_policy_with(update, reply))
    }

    /// Non-blocking [`AppenderHandle::set_policy`].
    pub fn set_policy_with(&self, update: PolicyUpdate, reply: Reply<Policy>) {
        self.submit(AppenderMsg::SetPolicy { update, reply });
    }

    /// Everything an operator wants at a glance.
    pub fn status(&self) -> Result<Status> {
        call(|reply| self.status_with(reply))
    }

    /// Non-blocking [`AppenderHandle::status`].
    pub fn status_with(&self, reply: Reply<Status>) {
        self.submit(AppenderMsg::Status { reply });
    }

    /// Waits until the log-management policy has nothing in flight or due: every
    /// automatic snapshot and compaction it started (or that its clock made due) is
    /// done. For tests, and for programs that want a quiet node (before a backup).
    ///
    /// # Errors
    /// [`Error::Crashed`] if the node stopped.
    pub fn settle(&self) -> Result<()> {
        call(|reply| self.settle_with(reply))
    }

    /// Non-blocking [`AppenderHandle::settle`].
    pub fn settle_with(&self, reply: Reply<()>) {
        self.submit(AppenderMsg::Settle { reply });
    }
}

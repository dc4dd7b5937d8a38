//! The one error type of the library.
//!
//! Every variant says what a caller may conclude: whether anything was written,
//! whether the outcome is unknown, or whether the request itself was wrong. The router
//! maps each variant to one Maelstrom error code; nothing else knows about codes.

use std::fmt;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong with a request or with opening a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The request is malformed or a value is out of range. Nothing was changed.
    InvalidArgument(String),
    /// The offset or key does not exist (compacted away, past the end, or absent).
    NotFound(String),
    /// A precondition does not hold (compare-and-set mismatch, offset past the log's end).
    PreconditionFailed(String),
    /// Nothing was written; trying again later may succeed (for example, disk full
    /// while creating a segment).
    Unavailable(String),
    /// The outcome is unknown: a write or a sync failed after data may have reached
    /// the disk, or an actor stopped while holding the request. The node refuses
    /// further writes until it has been reopened from what is on disk.
    Crashed(String),
    /// The node could not be opened: the data directory is locked, unreadable or
    /// damaged. The message names the file and, where it applies, the offset.
    Open(String),
}

impl Error {
    /// Builds an [`Error::Open`] from an I/O error, naming what was being done.
    /// A full disk is [`Error::Unavailable`] instead: nothing was written, and the
    /// open may succeed once space is freed.
    pub(crate) fn open_io(what: impl fmt::Display, err: &std::io::Error) -> Error {
        if err.raw_os_error() == Some(28) {
            return Error::Unavailable(format!("{what}: {err} (the disk is full)"));
        }
        Error::Open(format!("{what}: {err}"))
    }

    /// The human-readable text of the error.
    pub fn text(&self) -> &str {
        match self {
            Error::InvalidArgument(s)
            | Error::NotFound(s)
            | Error::PreconditionFailed(s)
            | Error::Unavailable(s)
            | Error::Crashed(s)
            | Error::Open(s) => s,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Error::InvalidArgument(_) => "invalid argument",
            Error::NotFound(_) => "not found",
            Error::PreconditionFailed(_) => "precondition failed",
            Error::Unavailable(_) => "temporarily unavailable",
            Error::Crashed(_) => "outcome unknown",
            Error::Open(_) => "cannot open",
        };
        write!(f, "{kind}: {}", self.text())
    }
}

impl std::error::Error for Error {}

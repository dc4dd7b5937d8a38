//! The pure core: no threads, no I/O.

pub mod kv;
pub mod policy;
pub mod recovery;

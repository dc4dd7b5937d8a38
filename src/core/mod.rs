//! The pure core: no threads, no I/O.

pub mod kv;
pub mod layout;
pub mod pace;
pub mod policy;
pub mod position;
pub mod recovery;

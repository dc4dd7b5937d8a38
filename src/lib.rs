pub mod config;
pub mod core;
pub mod error;
pub mod fs;
pub mod snapshot;
pub mod wal;

//! The group over the network: peers talk over TCP in binary frames ([`frame`]).
//!
//! The stdin/stdout transport (the router's `raft` lines, which Maelstrom or
//! `flintlog-cluster` carry) stays as it is; this is the transport of `flintlog serve`,
//! another implementation of [`crate::cluster::Transport`].

pub mod frame;
pub mod peers;
pub mod tls;

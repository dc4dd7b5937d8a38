//! The one integration-test binary: the real `flintlog` binary driven over its
//! protocol, and the library driven through its handles.

mod cluster;
mod consensus;
mod conversations;
mod crash;
mod damage;
mod disk;
mod docs;
mod fuzz_corpus;
mod group;
mod input;
mod kill;
mod layers;
mod library;
mod load;
mod members;
mod node;
mod policy;
mod raftlog;
mod serve;
mod shipping;
mod store;
mod strace;
mod support;
mod tcp;
mod weed;

//! Embedding flintlog in a Rust program: open a node, append, use the key-value state,
//! snapshot, compact, and reopen.
//!
//! Run with `cargo run --example embed`.

use flintlog::{Config, FsyncPolicy, Node};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::new(dir.path().join("node"));
    config.fsync = FsyncPolicy::Always;
    config.segment_bytes_max = 4096;

    let node = Node::open(config.clone())?;
    let appender = node.appender();
    for i in 0..1000 {
        appender.append(format!("set user{i}=visits:{i}"))?;
    }
    appender.kv_set("motd", "hello")?;
    appender.kv_cas("motd", "hello", "welcome")?;
    println!("motd = {}", appender.kv_get("motd")?);

    let snapshot = node.snapshotter().snapshot()?;
    println!("snapshot {} covers [0, {})", snapshot.file, snapshot.offset);
    let compaction = node.compactor().compact(snapshot.offset)?;
    println!(
        "compacted: {} -> {} live entries, {} bytes freed",
        compaction.entries_before, compaction.entries_after, compaction.bytes_freed
    );
    node.shutdown()?;

    let node = Node::open(config)?;
    let status = node.appender().status()?;
    let from = match &status.recovery.snapshot {
        Some(s) => format!("snapshot {}", s.file),
        None => "the log alone".to_string(),
    };
    println!(
        "reopened: next offset {}, {} keys, recovered from {from} in {} ms",
        status.next_offset, status.keys, status.recovery.duration_ms
    );
    node.shutdown()?;
    Ok(())
}

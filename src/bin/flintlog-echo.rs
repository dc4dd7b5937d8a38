//! `flintlog-echo`: the ceiling of the protocol path, for benchmarks. It reads the
//! same JSON lines as the node, parses each one into a `serde_json::Value` (with the
//! crate's features: the router's generic path), and answers at once: `wal_append`
//! with the next offset, `init` and anything else with `<type>_ok`. It stores nothing
//! and syncs nothing. Replies ready together are written together, flushed before it
//! waits for more input, as the node does. Arguments are accepted and ignored, so that
//! `flintlog-load --node` can drive it exactly as it drives the node.
//!
//! The router reads `wal_append` lines with a typed parse, about three times faster.
//! The echo keeps the generic one on purpose: given the router's parser it answered
//! sooner, the driver then read fewer replies per wake-up, and the same driver reached
//! only 164-173k appends/s against it instead of 210-218k (2026-12-01, three rounds,
//! 64 clients x 16 in flight). The baseline is the higher ceiling of the two.

use std::io::{BufRead, BufReader, BufWriter, Write};

/// The node's allocator, so that the comparison measures the work, not the allocators.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use serde_json::{Value, json};

fn main() {
    let stdin = std::io::stdin();
    let mut input = BufReader::with_capacity(64 * 1024, stdin.lock());
    let mut out = BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let (mut next_offset, mut msg_id) = (0u64, 0u64);
    let mut line = Vec::new();
    loop {
        if input.buffer().is_empty() && out.flush().is_err() {
            return;
        }
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Ok(msg) = serde_json::from_slice::<Value>(&line) else {
            continue;
        };
        let (Some(src), Some(id)) = (msg["src"].as_str(), msg["body"]["msg_id"].as_u64()) else {
            continue;
        };
        let kind = msg["body"]["type"].as_str().unwrap_or("unknown");
        let mut body = json!({"type": format!("{kind}_ok"), "in_reply_to": id});
        match kind {
            "wal_append" => {
                body["offset"] = json!(next_offset);
                next_offset += 1;
            }
            "wal_status" => body["status"] = json!({"counters": {"fsyncs": 0}}),
            _ => {}
        }
        body["msg_id"] = json!(msg_id);
        msg_id += 1;
        let dest = msg["dest"].as_str().unwrap_or("n1");
        let reply = json!({"src": dest, "dest": src, "body": body});
        if writeln!(out, "{reply}").is_err() {
            return;
        }
    }
    let _ = out.flush();
}

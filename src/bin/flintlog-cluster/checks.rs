//! What the run checks: the history's encoding for `history.json`, and `--check FILE`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use flintlog::lincheck::{self, Event, Op};
use serde_json::{Value, json};

use crate::clients::{ClientLog, micros};
use crate::network::{ask, ask_many};
use crate::processes::Shared;

pub(crate) fn event_json(e: &Event) -> Value {
    let op = match &e.op {
        Op::Read(v) => json!({"f": "read", "value": v}),
        Op::Write(v) => json!({"f": "write", "value": v}),
        Op::Cas(f, t) => json!({"f": "cas", "from": f, "to": t}),
        Op::CasMismatch(f) => json!({"f": "cas_mismatch", "from": f}),
        Op::CasAbsent => json!({"f": "cas_absent"}),
    };
    json!({"key": e.key, "op": op, "invoked_us": e.invoked, "returned_us": e.returned})
}

pub(crate) fn event_from_json(v: &Value) -> Result<Event, String> {
    let s = |k: &str| -> Result<String, String> {
        v["op"][k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{k} missing in {v}"))
    };
    let op = match v["op"]["f"].as_str() {
        Some("read") => Op::Read(v["op"]["value"].as_str().map(str::to_string)),
        Some("write") => Op::Write(s("value")?),
        Some("cas") => Op::Cas(s("from")?, s("to")?),
        Some("cas_mismatch") => Op::CasMismatch(s("from")?),
        Some("cas_absent") => Op::CasAbsent,
        _ => return Err(format!("unknown operation in {v}")),
    };
    Ok(Event {
        key: v["key"].as_str().ok_or("key missing")?.to_string(),
        op,
        invoked: v["invoked_us"].as_u64().ok_or("invoked_us missing")?,
        returned: v["returned_us"].as_u64(),
    })
}

pub(crate) fn check_file(path: &Path) -> ExitCode {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let list: Vec<Value> = serde_json::from_str(&text).expect("a JSON list of events");
    let history: Vec<Event> = list
        .iter()
        .map(event_from_json)
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let verdict = lincheck::check(&history);
    println!("{} operations: {verdict:?}", history.len());
    if matches!(verdict, lincheck::Verdict::Linearizable { .. }) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Waits (30 s at most) until every member reports the same applied index and state
/// digest: their statuses, and whether they agreed.
pub(crate) fn converge(shared: &Shared, members: &[usize]) -> (Vec<Value>, bool) {
    let healed_at = Instant::now();
    // Converge: every node reports the same applied index and digest.
    let mut statuses: Vec<Value> = Vec::new();
    let mut converged = false;
    while healed_at.elapsed() < Duration::from_secs(30) {
        statuses = members
            .iter()
            .map(|&i| {
                ask(
                    shared,
                    i,
                    json!({"type": "wal_status"}),
                    Duration::from_secs(2),
                )
                .map_or(Value::Null, |b| b["status"].clone())
            })
            .collect();
        let key = |s: &Value| (s["applied_index"].clone(), s["state_digest"].clone());
        if statuses
            .iter()
            .all(|s| !s.is_null() && s["applied_index"].as_u64().unwrap_or(0) > 0)
            && statuses.iter().all(|s| key(s) == key(&statuses[0]))
        {
            converged = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    (statuses, converged)
}

/// A linearizable read of every key through `member`, after everything else.
pub(crate) fn final_reads(shared: &Shared, member: usize, keys: u64) -> Vec<Event> {
    let mut history = Vec::new();
    for k in 0..keys {
        let key = format!("k{k}");
        let invoked = micros(shared.started);
        let r = ask(
            shared,
            member,
            json!({"type": "read", "key": key}),
            Duration::from_secs(10),
        );
        let returned = micros(shared.started);
        let op = match r {
            Some(b) if b["type"] == "read_ok" => Op::Read(Some(b["value"].to_string())),
            Some(b) if b["code"] == 20 => Op::Read(None),
            other => {
                eprintln!("final read of {key} failed: {other:?}");
                continue;
            }
        };
        history.push(Event {
            key,
            op,
            invoked,
            returned: Some(returned),
        });
    }
    history
}

/// What became of the acknowledged appends, each asked of every member.
pub(crate) struct Appends {
    /// Acknowledgements (an offset acknowledged twice counts twice).
    pub(crate) acknowledged: usize,
    /// The payload acknowledged at each offset.
    pub(crate) by_offset: BTreeMap<u64, String>,
    /// Offsets acknowledged to two appends.
    pub(crate) duplicate_offsets: u64,
    /// Appends missing or wrong where a log still holds them.
    pub(crate) lost: u64,
    /// Per member, appends compacted away behind a snapshot (always the oldest ones).
    pub(crate) compacted: Vec<u64>,
    /// Per member, appends read back with their payload.
    pub(crate) read_back: Vec<u64>,
    /// Offsets some member read back (the rest were compacted away on every member).
    pub(crate) read_somewhere: BTreeSet<u64>,
}

/// Asks every member for every acknowledged append.
pub(crate) fn check_appends(shared: &Shared, members: &[usize], logs: &[ClientLog]) -> Appends {
    let appended: Vec<(u64, String)> = logs.iter().flat_map(|l| l.appended.clone()).collect();
    let mut by_offset: BTreeMap<u64, String> = BTreeMap::new();
    let mut duplicate_offsets = 0;
    for (o, p) in &appended {
        if by_offset.insert(*o, p.clone()).is_some() {
            duplicate_offsets += 1;
        }
    }
    let mut lost = 0;
    // Per node, appends compacted away behind a snapshot (always the oldest ones), and
    // appends read back with their payload.
    let mut compacted = vec![0u64; members.len()];
    let mut read_back = vec![0u64; members.len()];
    // Offsets some node read back: the rest were compacted away on every node.
    let mut read_somewhere: BTreeSet<u64> = BTreeSet::new();
    for (m, &i) in members.iter().enumerate() {
        let id = &shared.ids[i];
        let asks = by_offset
            .keys()
            .map(|o| json!({"type": "wal_read", "offset": o}))
            .collect();
        let replies = ask_many(shared, i, asks, Duration::from_secs(30));
        let mut readable_seen = false;
        for ((o, p), r) in by_offset.iter().zip(replies) {
            let gone = r.as_ref().is_some_and(|b| {
                b["code"] == 20 && b["text"].as_str().is_some_and(|t| t.contains("compacted"))
            });
            if gone && !readable_seen {
                compacted[m] += 1;
                continue;
            }
            readable_seen = true;
            if r.as_ref().and_then(|b| b["payload"].as_str()) == Some(p) {
                read_back[m] += 1;
                read_somewhere.insert(*o);
            } else {
                lost += 1;
                if lost <= 5 {
                    eprintln!("{id}: offset {o} should hold {p:?}, got {r:?}");
                }
            }
        }
    }
    Appends {
        acknowledged: appended.len(),
        by_offset,
        duplicate_offsets,
        lost,
        compacted,
        read_back,
        read_somewhere,
    }
}

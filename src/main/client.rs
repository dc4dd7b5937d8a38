//! `flintlog client`: the command-line client of served nodes, as `etcdctl` is to etcd.

use flintlog::client::{Answer, CallError, Client};
use serde_json::{Value, json};

/// What the client is asked to do.
#[derive(clap::Subcommand, Debug)]
pub enum Op {
    /// Set KEY to VALUE (a string), through the leader.
    Put { key: String, value: String },
    /// Print KEY's value (linearizable); exit 1 if it has none.
    Get { key: String },
    /// Set KEY to TO if it holds FROM (strings); exit 1 if it does not.
    Cas {
        key: String,
        from: String,
        to: String,
    },
    /// Append PAYLOAD to the log; prints its offset.
    Append { payload: String },
    /// Print the entries at OFFSET and after (COUNT of them, default 1).
    ReadLog {
        offset: u64,
        #[arg(default_value_t = 1)]
        count: u64,
    },
    /// A table of every member named in --endpoints: role, term, leader, commit and
    /// applied index, lag, last snapshot, store uploads.
    Status,
    /// Write a snapshot of the first endpoint's node now.
    Snapshot,
    /// Compact the first endpoint's node's log up to client offset OFFSET.
    Compact { offset: u64 },
    /// The group's voters and learners.
    Members,
    /// Change the group's membership (through the leader).
    Member {
        #[command(subcommand)]
        change: Change,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum Change {
    /// Add node ID as a learner.
    Add { id: String },
    /// Make learner ID a voter.
    Promote { id: String },
    /// Remove member ID.
    Remove { id: String },
}

/// Runs `op` against `endpoints`; returns the exit code (0, 1 for a refusal, 2 when
/// no member answered).
pub fn run(
    endpoints: Vec<String>,
    timeout: f64,
    json_out: bool,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    op: Op,
) -> u8 {
    let mut client = Client::new(endpoints, &format!("cli{}", std::process::id()));
    client.tls = tls;
    client.timeout = std::time::Duration::from_secs_f64(timeout.max(0.001));
    let outcome = match op {
        Op::Status => return status(&mut client, json_out),
        Op::ReadLog { offset, count } => return read_log(&mut client, offset, count, json_out),
        Op::Put { key, value } => client
            .call(json!({"type": "write", "key": key, "value": value}))
            .map(|a| (a, "OK".to_string())),
        Op::Get { key } => client.call(json!({"type": "read", "key": key})).map(|a| {
            let shown = match &a.body["value"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (a, shown)
        }),
        Op::Cas { key, from, to } => client
            .call(json!({"type": "cas", "key": key, "from": from, "to": to}))
            .map(|a| (a, "OK".to_string())),
        Op::Append { payload } => client
            .call(json!({"type": "wal_append", "payload": payload}))
            .map(|a| {
                let shown = format!("offset {}", a.body["offset"]);
                (a, shown)
            }),
        Op::Snapshot => {
            let first = client.endpoints()[0].clone();
            client
                .call_at(&first, json!({"type": "wal_snapshot"}))
                .map(|a| {
                    let shown = format!(
                        "snapshot of {} at offset {}",
                        a.node, a.body["snapshot_offset"]
                    );
                    (a, shown)
                })
        }
        Op::Compact { offset } => {
            let first = client.endpoints()[0].clone();
            client
                .call_at(
                    &first,
                    json!({"type": "wal_compact", "snapshot_at_offset": offset}),
                )
                .map(|a| {
                    let shown = format!(
                        "{} compacted: {} entries before, {} after",
                        a.node, a.body["entries_before"], a.body["entries_after"]
                    );
                    (a, shown)
                })
        }
        Op::Members => client.call(json!({"type": "wal_status"})).map(|a| {
            let shown = format!(
                "voters: {}\nlearners: {}",
                names(&a.body["status"]["voters"]),
                names(&a.body["status"]["learners"])
            );
            (a, shown)
        }),
        Op::Member { change } => {
            let (kind, id) = match change {
                Change::Add { id } => ("member_add", id),
                Change::Promote { id } => ("member_promote", id),
                Change::Remove { id } => ("member_remove", id),
            };
            client.call(json!({"type": kind, "member": id})).map(|a| {
                let shown = format!(
                    "voters: {}\nlearners: {}",
                    names(&a.body["voters"]),
                    names(&a.body["learners"])
                );
                (a, shown)
            })
        }
    };
    match outcome {
        Ok((answer, shown)) => {
            if json_out {
                println!("{}", json!({"node": answer.node, "reply": answer.body}));
            } else {
                println!("{shown}");
                eprintln!("(answered by {} at {})", answer.node, answer.endpoint);
            }
            0
        }
        Err(e) => failed(&e, json_out),
    }
}

fn names(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn failed(e: &CallError, json_out: bool) -> u8 {
    if json_out {
        let v = match e {
            CallError::Refused { code, text, node } => {
                json!({"error": {"code": code, "text": text, "node": node}})
            }
            other => json!({"error": {"text": other.to_string()}}),
        };
        println!("{v}");
    } else {
        eprintln!("{e}");
    }
    match e {
        CallError::Refused { .. } | CallError::Unknown(_) => 1,
        CallError::Unreachable(_) => 2,
    }
}

fn read_log(client: &mut Client, offset: u64, count: u64, json_out: bool) -> u8 {
    for at in offset..offset.saturating_add(count) {
        match client.call(json!({"type": "wal_read", "offset": at})) {
            Ok(a) if json_out => println!("{}", json!({"offset": at, "reply": a.body})),
            Ok(a) => println!("{at}\t{}", a.body["payload"].as_str().unwrap_or_default()),
            Err(e) => return failed(&e, json_out),
        }
    }
    0
}

/// One row of the status table: a member's `wal_status`, or why it did not answer.
fn status(client: &mut Client, json_out: bool) -> u8 {
    let endpoints = client.endpoints().to_vec();
    let rows: Vec<(String, Result<Answer, CallError>)> = endpoints
        .iter()
        .map(|e| (e.clone(), client.call_at(e, json!({"type": "wal_status"}))))
        .collect();
    let commit = rows
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok()?.body["status"]["commit_index"].as_u64())
        .max()
        .unwrap_or(0);
    if json_out {
        let all: Vec<Value> = rows
            .iter()
            .map(|(e, r)| match r {
                Ok(a) => json!({"endpoint": e, "node": a.node, "status": a.body}),
                Err(why) => json!({"endpoint": e, "error": why.to_string()}),
            })
            .collect();
        println!("{}", Value::Array(all));
    } else {
        println!(
            "{:<22} {:<8} {:<10} {:>6} {:<8} {:>10} {:>10} {:>6} {:>10} {:<16}",
            "ENDPOINT",
            "NODE",
            "ROLE",
            "TERM",
            "LEADER",
            "COMMIT",
            "APPLIED",
            "LAG",
            "SNAPSHOT",
            "STORE"
        );
        for (e, r) in &rows {
            match r {
                Ok(a) => {
                    let s = &a.body["status"];
                    let applied = s["applied_index"].as_u64().unwrap_or(0);
                    let store = match &s["snapshot_store"] {
                        Value::Null => "-".to_string(),
                        u => format!("up to {} ({} queued)", u["uploaded_index"], u["queued"]),
                    };
                    println!(
                        "{:<22} {:<8} {:<10} {:>6} {:<8} {:>10} {:>10} {:>6} {:>10} {:<16}",
                        e,
                        a.node,
                        s["role"].as_str().unwrap_or("?"),
                        s["term"].to_string(),
                        s["leader"].as_str().unwrap_or("-"),
                        s["commit_index"].to_string(),
                        applied,
                        commit.saturating_sub(applied),
                        s["snapshot_index"]
                            .as_u64()
                            .map_or("-".to_string(), |i| i.to_string()),
                        store
                    );
                }
                Err(why) => println!("{e:<22} {why}"),
            }
        }
    }
    u8::from(rows.iter().any(|(_, r)| r.is_err()))
}

//! `kill -9` under load against the real binary.
//!
//! Each iteration starts the node on the same directory, drives it with several
//! pipelining clients (unique keys) and an admin source issuing snapshots and
//! compactions, and kills it with SIGKILL at a random moment — some iterations
//! during startup, that is during recovery. The next start must find every
//! acknowledged append at its offset, every acknowledged key with its value, nothing
//! that was never sent, and no temp file.
//!
//! `KILL9_ITERATIONS` (default 200) and `KILL9_SECONDS` (default 240) bound the run;
//! `SEED` replays one run.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flintlog::fs::sim::Rng;
use serde_json::{Value, json};

use crate::support::{self, files, init, lines, msg, node_dir};

const ARGS: &[&str] = &["--max-segment-bytes", "65536"];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

/// What the clients sent and what the node acknowledged, across iterations.
#[derive(Default)]
struct Ledger {
    /// Every payload ever sent.
    sent: HashSet<String>,
    /// Acknowledged appends: offset -> payload.
    acked: BTreeMap<u64, String>,
    /// Acknowledged keys and values.
    keys: BTreeMap<String, String>,
}

/// One loaded run, killed after `kill_after`.
fn loaded_run(data: &Path, iter: u64, kill_after: Duration, ledger: &Arc<Mutex<Ledger>>) {
    let mut child = support::spawn(ARGS, Some(data));
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    // Compactions aim just behind the newest acknowledged offset, earlier runs included.
    let known = ledger
        .lock()
        .unwrap()
        .acked
        .keys()
        .next_back()
        .copied()
        .unwrap_or(0);
    let last_offset = Arc::new(AtomicU64::new(known));
    let acks = Arc::new(AtomicU64::new(0));
    let pending: Arc<Mutex<BTreeMap<(String, u64), String>>> = Arc::default();

    let reader = {
        let (ledger, last_offset, pending, acks) = (
            ledger.clone(),
            last_offset.clone(),
            pending.clone(),
            acks.clone(),
        );
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let r: Value = serde_json::from_str(&line).expect("protocol line");
                let body = &r["body"];
                if body["type"] != "wal_append_ok" {
                    continue;
                }
                let key = (
                    r["dest"].as_str().unwrap().to_string(),
                    body["in_reply_to"].as_u64().unwrap(),
                );
                let payload = pending
                    .lock()
                    .unwrap()
                    .remove(&key)
                    .expect("an ack answers a request");
                let offset = body["offset"].as_u64().unwrap();
                last_offset.fetch_max(offset, Ordering::Relaxed);
                acks.fetch_add(1, Ordering::Relaxed);
                let mut l = ledger.lock().unwrap();
                let (k, v) = payload
                    .strip_prefix("set ")
                    .unwrap()
                    .split_once('=')
                    .unwrap();
                l.keys.insert(k.to_string(), v.to_string());
                if let Some(prev) = l.acked.insert(offset, payload.clone()) {
                    panic!("offset {offset} acknowledged twice: {prev} and {payload}");
                }
            }
        })
    };
    let child_gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (ledger, pending, acks, child_gone) = (
            ledger.clone(),
            pending.clone(),
            acks.clone(),
            child_gone.clone(),
        );
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            writeln!(buf, "{}", init(1)).unwrap();
            for n in 0..20_000u64 {
                let client = format!("c{}", n % 4);
                let payload = format!("set i{iter}{client}n{n}=v{n}");
                ledger.lock().unwrap().sent.insert(payload.clone());
                pending
                    .lock()
                    .unwrap()
                    .insert((client.clone(), n), payload.clone());
                writeln!(
                    buf,
                    "{}",
                    msg(
                        &client,
                        json!({"type": "wal_append", "msg_id": n, "payload": payload})
                    )
                )
                .unwrap();
                if n % 97 == 0 {
                    writeln!(
                        buf,
                        "{}",
                        msg("adm", json!({"type": "wal_snapshot", "msg_id": n}))
                    )
                    .unwrap();
                }
                if n % 211 == 0 {
                    let at = last_offset.load(Ordering::Relaxed).saturating_sub(50);
                    writeln!(buf, "{}", msg("adm", json!({"type": "wal_compact", "msg_id": n + 1, "snapshot_at_offset": at})))
                        .unwrap();
                }
                if buf.len() > 16 * 1024 {
                    if stdin.write_all(&buf).is_err() {
                        return;
                    }
                    buf.clear();
                    // Keep a few hundred requests in flight, so that compactions aim
                    // at offsets the node has reached.
                    while n > acks.load(Ordering::Relaxed) + 300 {
                        if child_gone.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            }
            let _ = stdin.write_all(&buf);
        })
    };
    std::thread::sleep(kill_after);
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    child_gone.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    reader.join().unwrap();
}

/// Restarts the node and checks the ledger; returns the live entries checked.
fn check(data: &Path, ledger: &Ledger, all_keys: bool) -> u64 {
    let status_req = msg("v", json!({"type": "wal_status", "msg_id": 1}));
    let r = support::run(ARGS, Some(data), &lines(&[init(1), status_req.clone()]));
    assert_eq!(
        r.code,
        Some(0),
        "restart failed (lock not reacquired?): {}",
        r.stderr
    );
    let status = &r.reply_to("v", 1)["status"];
    let (first, next) = (
        status["first_offset"].as_u64().unwrap(),
        status["next_offset"].as_u64().unwrap(),
    );
    if let Some((&lost, _)) = ledger.acked.range(next..).next() {
        panic!("acknowledged offset {lost} lost: the log ends at {next}");
    }
    let mut input = vec![init(1)];
    for o in first..next {
        input.push(msg(
            "v",
            json!({"type": "wal_read", "msg_id": 10 + o, "offset": o}),
        ));
    }
    let keys: Vec<(&String, &String)> = if all_keys {
        ledger.keys.iter().collect()
    } else {
        ledger.keys.iter().rev().take(500).collect()
    };
    for (i, (k, _)) in keys.iter().enumerate() {
        input.push(msg("k", json!({"type": "read", "msg_id": i, "key": k})));
    }
    let r = support::run(ARGS, Some(data), &lines(&input));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    for o in first..next {
        let body = r.reply_to("v", 10 + o);
        let payload = body["payload"]
            .as_str()
            .unwrap_or_else(|| panic!("offset {o} unreadable: {body}"));
        assert!(
            ledger.sent.contains(payload),
            "offset {o} holds {payload:?}, which was never sent"
        );
        if let Some(acked) = ledger.acked.get(&o) {
            assert_eq!(payload, acked, "offset {o} changed");
        }
    }
    for (i, (k, v)) in keys.iter().enumerate() {
        let body = r.reply_to("k", i as u64);
        assert_eq!(
            body["value"].as_str(),
            Some(v.as_str()),
            "acknowledged key {k} lost: {body}"
        );
    }
    let leftovers: Vec<String> = files(&node_dir(data))
        .into_iter()
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temp files left after a clean restart: {leftovers:?}"
    );
    next - first
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_write() {
    let iterations = env_u64("KILL9_ITERATIONS", 200);
    crate::support::say(&format!(
        "kill -9: the node killed at random moments under load, {iterations} times, every \
         acknowledged write checked"
    ));
    let budget = Duration::from_secs(env_u64("KILL9_SECONDS", 240));
    let seed = env_u64("SEED", 0x5eed);
    let mut rng = Rng::new(seed);
    let data = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let started = Instant::now();
    let (mut done, mut during_recovery, mut checked) = (0, 0, 0);
    while done < iterations && started.elapsed() < budget {
        // One in five kills lands within the first few milliseconds: during recovery.
        let kill_after = if rng.below(5) == 0 {
            during_recovery += 1;
            Duration::from_micros(rng.below(4000))
        } else {
            Duration::from_millis(5 + rng.below(60))
        };
        loaded_run(data.path(), done, kill_after, &ledger);
        let l = ledger.lock().unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check(data.path(), &l, done % 25 == 24)
        }));
        match result {
            Ok(n) => checked += n,
            Err(e) => {
                eprintln!("kill -9 failure: seed={seed} iteration={done}");
                std::panic::resume_unwind(e);
            }
        }
        done += 1;
    }
    let l = ledger.lock().unwrap();
    check(data.path(), &l, true);
    println!(
        "kill -9: {done} iterations ({during_recovery} killed during startup) in {:.0?}, {} appends acknowledged, \
         {} keys checked, {checked} live entries read back, 0 lost",
        started.elapsed(),
        l.acked.len(),
        l.keys.len()
    );
    assert!(
        done >= iterations.min(200),
        "only {done} iterations fit in the time budget"
    );
}

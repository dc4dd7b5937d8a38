//! The clients: Maelstrom's lin-kv workload and the append workload, one request at a
//! time each, recording what they saw.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flintlog::fs::sim::Rng;
use flintlog::lincheck::{Event, Op};
use serde_json::{Value, json};

use crate::Args;
use crate::processes::Shared;

pub(crate) fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// What a client saw, for the report.
#[derive(Clone)]
pub(crate) struct Sample {
    pub(crate) at_s: f64,
    pub(crate) latency_ms: f64,
    pub(crate) ok: bool,
    /// Not ok, and it may or may not have happened (no reply, or error 13).
    pub(crate) unknown: bool,
}

pub(crate) struct ClientLog {
    pub(crate) history: Vec<Event>,
    pub(crate) samples: Vec<Sample>,
    /// Acknowledged appends: (offset, payload).
    pub(crate) appended: Vec<(u64, String)>,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) unknown: u64,
}

/// A client: one request at a time against random nodes until `until`.
pub(crate) fn client(
    shared: Arc<Shared>,
    name: String,
    appender: bool,
    args: Args,
    seed: u64,
    until: Instant,
) -> ClientLog {
    let rx = shared.register(&name);
    let mut rng = Rng::new(seed);
    let mut log = ClientLog {
        history: Vec::new(),
        samples: Vec::new(),
        appended: Vec::new(),
        ok: 0,
        failed: 0,
        unknown: 0,
    };
    let mut msg_id = 0u64;
    while Instant::now() < until {
        msg_id += 1;
        let members = shared.members();
        let node = members[rng.below(members.len() as u64) as usize];
        let key = format!("k{}", rng.below(args.keys));
        let body = if appender {
            json!({"type": "wal_append", "msg_id": msg_id, "payload": format!("{name}-{msg_id}")})
        } else {
            match rng.below(3) {
                0 => json!({"type": "read", "msg_id": msg_id, "key": key}),
                1 => json!({"type": "write", "msg_id": msg_id, "key": key, "value": rng.below(5)}),
                _ => {
                    json!({"type": "cas", "msg_id": msg_id, "key": key, "from": rng.below(5), "to": rng.below(5)})
                }
            }
        };
        let line = json!({"src": name, "dest": shared.ids[node], "body": body.clone()}).to_string();
        let invoked = micros(shared.started);
        if !shared.send_to_node(node, line) {
            // The node is down: the request never left; try another.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let deadline = Instant::now() + Duration::from_millis(args.timeout_ms);
        let reply = loop {
            match rx.recv_deadline(deadline) {
                Ok(r) if r["body"]["in_reply_to"] == msg_id => break Some(r),
                Ok(_) => continue, // a late reply to an earlier request
                Err(_) => break None,
            }
        };
        let returned = micros(shared.started);
        let kind = body["type"].as_str().unwrap_or_default();
        let text = |v: &Value| v.to_string();
        let (op_if_happened, outcome): (Option<Op>, Result<Option<Op>, u64>) = match reply {
            None => (None, Err(0)),
            Some(r) => {
                let b = &r["body"];
                match (kind, b["type"].as_str().unwrap_or_default()) {
                    ("read", "read_ok") => (None, Ok(Some(Op::Read(Some(text(&b["value"])))))),
                    ("read", "error") if b["code"] == 20 => (None, Ok(Some(Op::Read(None)))),
                    ("write", "write_ok") => (None, Ok(Some(Op::Write(text(&body["value"]))))),
                    ("cas", "cas_ok") => (
                        None,
                        Ok(Some(Op::Cas(text(&body["from"]), text(&body["to"])))),
                    ),
                    ("cas", "error") if b["code"] == 22 => {
                        (None, Ok(Some(Op::CasMismatch(text(&body["from"])))))
                    }
                    ("cas", "error") if b["code"] == 20 => (None, Ok(Some(Op::CasAbsent))),
                    ("wal_append", "wal_append_ok") => {
                        log.appended.push((
                            b["offset"].as_u64().unwrap_or(u64::MAX),
                            body["payload"].as_str().unwrap_or_default().to_string(),
                        ));
                        (None, Ok(None))
                    }
                    (_, "error") => (None, Err(b["code"].as_u64().unwrap_or(0))),
                    (k, t) => panic!("{k} answered with {t}: {r}"),
                }
            }
        };
        let _ = op_if_happened;
        let sample = |ok, unknown| Sample {
            at_s: invoked as f64 / 1e6,
            latency_ms: (returned - invoked) as f64 / 1000.0,
            ok,
            unknown,
        };
        match outcome {
            Ok(op) => {
                log.ok += 1;
                log.samples.push(sample(true, false));
                if let Some(op) = op {
                    log.history.push(Event {
                        key: key.clone(),
                        op,
                        invoked,
                        returned: Some(returned),
                    });
                }
            }
            // No reply, or error 13: it may or may not have happened.
            Err(code) if code == 0 || code == 13 => {
                log.unknown += 1;
                log.samples.push(sample(false, true));
                let maybe = match kind {
                    "write" => Some(Op::Write(text(&body["value"]))),
                    "cas" => Some(Op::Cas(text(&body["from"]), text(&body["to"]))),
                    _ => None,
                };
                if let Some(op) = maybe {
                    log.history.push(Event {
                        key: key.clone(),
                        op,
                        invoked,
                        returned: None,
                    });
                }
            }
            // Any other error: it certainly did nothing.
            Err(_) => {
                log.failed += 1;
                log.samples.push(sample(false, false));
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    shared.unregister(&name);
    log
}

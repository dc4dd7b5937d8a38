//! A full disk and a read-only directory, on real filesystems: a size-limited tmpfs
//! and a read-only bind mount, each inside its own mount namespace (`unshare -m`).
//! Skipped, saying why, where mount namespaces are not permitted.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{self, init, msg};

fn namespaces_work() -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs \"$1\"",
            "sh",
        ])
        .arg(dir.path())
        .output()
        .map_err(|e| format!("unshare: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

macro_rules! require_namespaces {
    () => {
        if let Err(why) = namespaces_work() {
            let why = format!("mount namespaces are not permitted here ({why})");
            crate::support::cannot_run("disk full and read-only", &why);
            return;
        }
    };
}

/// A node on a fresh tmpfs of `size` inside its own mount namespace, driven one
/// request at a time.
struct Live {
    child: Child,
    stdin: ChildStdin,
    stdout: std::io::Lines<BufReader<ChildStdout>>,
    next_id: u64,
}

impl Live {
    /// A node on a fresh tmpfs of `size`, initialized.
    fn on_tmpfs(dir: &Path, size: &str, args: &[&str]) -> Live {
        let mut live = Live::start(dir, size, args);
        writeln!(live.stdin, "{}", init(0)).unwrap();
        let reply = live.stdout.next().unwrap().unwrap();
        assert!(reply.contains("init_ok"), "{reply}");
        live
    }

    /// A node on a fresh tmpfs of `size`, not yet initialized.
    fn uninitialized(dir: &Path, size: &str) -> Live {
        Live::start(dir, size, &[])
    }

    fn start(dir: &Path, size: &str, args: &[&str]) -> Live {
        let script = format!("mount -t tmpfs -o size={size} tmpfs \"$1\" && shift && exec \"$@\"");
        let mut child = Command::new("unshare")
            .args(["-m", "sh", "-c", &script, "sh"])
            .arg(dir)
            .arg(support::binary())
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The node's warnings (a full disk is this test's point) go to the test's
        // captured output, shown only if it fails, labelled as expected.
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                println!("node stderr (expected under fault injection): {line}");
            }
        });
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Live {
            child,
            stdin,
            stdout,
            next_id: 1,
        }
    }

    fn call(&mut self, mut body: Value) -> Value {
        self.next_id += 1;
        body["msg_id"] = json!(self.next_id);
        writeln!(self.stdin, "{}", msg("c1", body)).unwrap();
        let line = self.stdout.next().expect("a reply").unwrap();
        serde_json::from_str::<Value>(&line).unwrap()["body"].clone()
    }

    fn finish(mut self) {
        drop(self.stdin);
        assert!(self.child.wait().unwrap().success());
    }
}

#[test]
fn a_full_disk_answers_11_keeps_reads_and_recovers_when_compaction_frees_space() {
    require_namespaces!();
    let dir = tempfile::tempdir().unwrap();
    let mut node = Live::on_tmpfs(dir.path(), "1m", &["--max-segment-bytes", "65536"]);
    let payload = |i: u64| format!("set k{}={}", i % 8, "x".repeat(1000));
    let mut acked = Vec::new();
    let refusal = loop {
        let r = node.call(json!({"type": "wal_append", "payload": payload(acked.len() as u64)}));
        match r["type"].as_str() {
            Some("wal_append_ok") => acked.push(r["offset"].as_u64().unwrap()),
            _ => break r,
        }
        assert!(acked.len() < 5000, "a 1 MiB disk never filled");
    };
    assert_eq!(
        refusal["code"], 11,
        "nothing was written, so error 11: {refusal}"
    );
    // Nothing was written: the node is not poisoned, reads work, writes still say 11.
    let last = *acked.last().unwrap();
    assert_eq!(
        node.call(json!({"type": "wal_read", "offset": last}))["payload"],
        payload(last)
    );
    assert_eq!(
        node.call(json!({"type": "read", "key": "k1"}))["type"],
        "read_ok"
    );
    // (A record that still fits the active segment's preallocated space is accepted;
    // one that needs a new segment is refused until space is freed.)
    let again = node.call(json!({"type": "wal_append", "payload": payload(0)}));
    assert_eq!(again["code"], 11, "{again}");
    // The node's own compaction frees space, and writes succeed again.
    let c = node.call(json!({"type": "wal_compact", "snapshot_at_offset": last + 1 - 8}));
    assert_eq!(c["type"], "wal_compact_ok", "{c}");
    assert!(c["bytes_freed"].as_u64().unwrap() > 65536);
    let r = node.call(json!({"type": "wal_append", "payload": payload(0)}));
    assert_eq!(r["offset"], last + 1, "{r}");
    for &o in acked.iter().rev().take(8) {
        assert_eq!(
            node.call(json!({"type": "wal_read", "offset": o}))["payload"],
            payload(o)
        );
    }
    println!(
        "disk full: {} appends acknowledged on 1 MiB, then error 11; compaction freed {} bytes",
        acked.len(),
        c["bytes_freed"]
    );
    node.finish();
}

#[test]
fn a_record_that_fails_mid_write_answers_13_and_stops_writes() {
    require_namespaces!();
    let dir = tempfile::tempdir().unwrap();
    let mut node = Live::on_tmpfs(dir.path(), "256k", &["--max-segment-bytes", "4096"]);
    assert_eq!(
        node.call(json!({"type": "wal_append", "payload": "set a=1"}))["offset"],
        0
    );
    // Larger than a segment: it gets its own, and its write runs out of space midway.
    let r = node.call(json!({"type": "wal_append", "payload": "y".repeat(400 * 1024)}));
    assert_eq!(r["code"], 13, "{r}");
    assert_eq!(
        node.call(json!({"type": "wal_append", "payload": "set b=2"}))["code"],
        13
    );
    assert_eq!(node.call(json!({"type": "read", "key": "a"}))["value"], 1);
    node.finish();
}

fn start_read_only(existing_data: bool) -> (Duration, support::Run, String) {
    let dir = tempfile::tempdir().unwrap();
    if existing_data {
        let r = support::run(&[], Some(dir.path()), &support::lines(&[init(1)]));
        assert_eq!(r.code, Some(0));
    }
    let script =
        "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" && shift && exec \"$@\"";
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh"])
        .arg(dir.path())
        .arg(support::binary())
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", init(1)).unwrap();
    // stdin stays open: the node must exit on its own.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the node must fail, not hang")
        .unwrap();
    let elapsed = started.elapsed();
    drop(stdin);
    (
        elapsed,
        support::finish(out),
        dir.path().join("n1").display().to_string(),
    )
}

#[test]
fn startup_on_a_read_only_directory_fails_fast_naming_path_and_os_error() {
    require_namespaces!();
    for existing in [false, true] {
        let (elapsed, r, path) = start_read_only(existing);
        assert_eq!(r.code, Some(1), "{}", r.stderr);
        assert!(
            r.stderr.contains(&path) && r.stderr.contains("Read-only file system"),
            "{}",
            r.stderr
        );
        assert_eq!(r.reply_to("c0", 1)["code"], 13);
        println!(
            "read-only directory ({}): refused in {elapsed:?}",
            if existing { "with data" } else { "empty" }
        );
    }
}

/// On a filesystem smaller than one default segment the node sizes its preallocation
/// to the space there is, and works.
#[test]
fn a_small_disk_gets_smaller_segments_and_works() {
    require_namespaces!();
    let dir = tempfile::tempdir().unwrap();
    let mut node = Live::uninitialized(dir.path(), "10m");
    let reply = node.call(json!({"type": "init", "node_id": "n1", "node_ids": ["n1"]}));
    assert_eq!(reply["type"], "init_ok", "{reply}");
    for i in 0..100 {
        let r = node.call(json!({"type": "wal_append", "payload": format!("set k{i}=v")}));
        assert_eq!(r["offset"], i, "{r}");
    }
    node.finish();
}

/// With no room even for a small segment, init answers 11 (nothing was written) and
/// the node stays up for the next init.
#[test]
fn a_disk_too_small_for_a_segment_answers_11_and_stays_up() {
    require_namespaces!();
    let dir = tempfile::tempdir().unwrap();
    let mut node = Live::uninitialized(dir.path(), "4k");
    for _ in 0..2 {
        let reply = node.call(json!({"type": "init", "node_id": "n1", "node_ids": ["n1"]}));
        assert_eq!(reply["code"], 11, "{reply}");
        assert!(reply["text"].as_str().unwrap().contains("full"), "{reply}");
    }
    let reply = node.call(json!({"type": "wal_info"}));
    assert_eq!(reply["code"], 11, "{reply}");
    node.finish();
}

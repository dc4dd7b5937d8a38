//! `flintlog-load`: drives the real node binary over stdin/stdout exactly as Maelstrom
//! would, and reports throughput and latency, inside snapshot and compaction windows and
//! outside them.
//!
//! The state is pre-filled through the library (so that the run starts from a large
//! state without spending its time on loading), then the node binary is started on the
//! same directory. N clients (distinct `src`) each keep up to D appends in flight; an
//! admin source asks for a snapshot every few seconds and compacts behind it. Every
//! request's latency goes into a histogram; every acknowledged offset is checked to be
//! unique and the offsets contiguous. Results: a table on stdout, `report.json` and
//! `latency.svg` under the output directory.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use crossbeam_channel::RecvTimeoutError;
use flintlog::fs::sim::Rng;
use flintlog::{Config, FsyncPolicy, Node, Reply};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Load test of the flintlog node binary.
#[derive(Parser, Debug, Clone)]
#[command(name = "flintlog-load", version)]
struct Args {
    /// Seconds of load after the pre-fill.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Logical clients (distinct `src`).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Requests each client keeps in flight.
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// Bytes of each append's payload.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Keys the appends write to (`set KEY=...`), chosen at random.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Keys written before the run starts (the state the snapshots carry).
    #[arg(long, default_value_t = 1_000_000)]
    prefill_keys: u64,
    /// Seconds between snapshots (each followed by a compaction); 0 for none.
    #[arg(long, default_value_t = 5.0)]
    snapshot_every: f64,
    /// Entries the admin's compactions keep behind each snapshot. The node's own
    /// policy keeps its own default (`flintlog --trailing-entries`, 5000) when it
    /// compacts by itself.
    #[arg(long, default_value_t = 10_000)]
    trailing_entries: u64,
    /// The node's fsync policy.
    #[arg(long, default_value = "always")]
    fsync: String,
    /// The node's segment size limit: 4 MiB here, against the node's own default of
    /// 16 MiB, so that a 30 s run seals and frees many segments.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_segment_bytes: u64,
    /// Where the data directory, report and plot go (on a real disk, not tmpfs).
    #[arg(long, default_value = "target/load")]
    out: PathBuf,
    /// The node binary (default: `flintlog` beside this program).
    #[arg(long)]
    node: Option<PathBuf>,
}

/// What a request was, for classifying its latency.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Append,
    Snapshot,
    Compact,
}

struct Completion {
    src: String,
    id: u64,
    at: Instant,
    body: Value,
}

/// A snapshot or compaction window, in seconds since the start of the run.
#[derive(Clone, Copy)]
struct Window {
    start: f64,
    end: f64,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flintlog-load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn node_binary(args: &Args) -> Result<PathBuf, String> {
    let path = match &args.node {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("flintlog"),
    };
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "node binary {} not found (build it, or pass --node)",
            path.display()
        ))
    }
}

/// Writes `prefill_keys` keys through the library, then snapshots and compacts so that
/// the node binary starts from them quickly.
fn prefill(args: &Args, dir: &Path) -> Result<(), String> {
    let started = Instant::now();
    let mut config = Config::new(dir.join("n1"));
    config.segment_bytes_max = args.max_segment_bytes;
    let node = Node::open(config).map_err(|e| e.to_string())?;
    let (tx, rx) = crossbeam_channel::bounded::<flintlog::Result<flintlog::Offset>>(8192);
    let value = "p".repeat(args.payload_bytes.saturating_sub(20).max(1));
    let mut in_flight = 0usize;
    let step = (args.prefill_keys / 10).max(1);
    for i in 0..args.prefill_keys {
        if i > 0 && i % step == 0 {
            println!(
                "pre-filling: {i} of {} keys, {:.1} s",
                args.prefill_keys,
                started.elapsed().as_secs_f64()
            );
        }
        while in_flight >= 4096 {
            rx.recv()
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            in_flight -= 1;
        }
        let tx = tx.clone();
        node.appender().append_with(
            format!("set key{i}={value}").into_bytes(),
            Reply::new(move |r| drop(tx.send(r))),
        );
        in_flight += 1;
    }
    for _ in 0..in_flight {
        rx.recv()
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    let snap = node.snapshotter().snapshot().map_err(|e| e.to_string())?;
    node.compactor()
        .compact(snap.offset)
        .map_err(|e| e.to_string())?;
    node.shutdown().map_err(|e| e.to_string())?;
    println!(
        "pre-filled {} keys in {:.1} s (snapshot of {:.1} MiB)",
        args.prefill_keys,
        started.elapsed().as_secs_f64(),
        snap.size_bytes as f64 / 1048576.0
    );
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn run(args: &Args) -> Result<(), String> {
    FsyncPolicy::parse(&args.fsync).map_err(|e| e.to_string())?;
    if args.clients == 0 || args.depth == 0 {
        return Err("--clients and --depth must be at least 1".into());
    }
    let node_bin = node_binary(args)?;
    println!(
        "flintlog-load: {} clients x {} appends in flight, {}-byte payloads over {} keys, \
         {} keys pre-filled, --fsync {}, --max-segment-bytes {} (the node's default: 16 MiB), {} s; \
         the node's default log-management policy, plus an admin snapshot every {} s (0: none) \
         followed by a compaction keeping {} entries behind it",
        args.clients,
        args.depth,
        args.payload_bytes,
        args.keys,
        args.prefill_keys,
        args.fsync,
        args.max_segment_bytes,
        args.duration,
        args.snapshot_every,
        args.trailing_entries
    );
    let data = args.out.join("data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    if args.prefill_keys > 0 {
        prefill(args, &data)?;
    }

    let node_log = std::fs::File::create(args.out.join("node.log")).map_err(|e| e.to_string())?;
    let mut child = Command::new(&node_bin)
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--fsync",
            &args.fsync,
            "--max-segment-bytes",
            &args.max_segment_bytes.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(node_log)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", node_bin.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Completion>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let at = Instant::now();
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let (Some(src), Some(id)) = (v["dest"].as_str(), v["body"]["in_reply_to"].as_u64())
            else {
                continue;
            };
            let _ = done_tx.send(Completion {
                src: src.to_string(),
                id,
                at,
                body: v["body"].clone(),
            });
        }
    });
    let mut stdin = BufWriter::new(child.stdin.take().expect("piped"));
    let send = |stdin: &mut BufWriter<_>, src: &str, body: Value| -> Result<(), String> {
        let line = json!({"src": src, "dest": "n1", "body": body}).to_string();
        writeln!(stdin, "{line}").map_err(|e| format!("writing to the node: {e}"))
    };
    send(
        &mut stdin,
        "admin",
        json!({"type": "init", "msg_id": 0, "node_id": "n1", "node_ids": ["n1"]}),
    )?;
    stdin.flush().map_err(|e| e.to_string())?;
    let init = done_rx
        .recv_timeout(Duration::from_secs(120))
        .map_err(|_| "the node did not answer init".to_string())?;
    if init.body["type"] != "init_ok" {
        return Err(format!("init failed: {}", init.body));
    }

    let status_before = admin_status(&mut stdin, &done_rx, &send, 1)?;
    let clients: Vec<String> = (0..args.clients).map(|c| format!("c{c}")).collect();
    let mut in_flight = vec![0usize; args.clients];
    let mut next_id = vec![0u64; args.clients];
    let mut pending: HashMap<(String, u64), (Instant, Kind)> = HashMap::new();
    let mut rng = Rng::new(42);
    let value_len = args.payload_bytes.saturating_sub(20).max(1);
    let value: String = "v".repeat(value_len);
    let (mut all, mut in_snap, mut in_compact, mut outside) = (hist(), hist(), hist(), hist());
    let mut offsets = BTreeSet::new();
    let mut duplicates = 0u64;
    let mut errors = 0u64;
    let mut windows_snap: Vec<Window> = Vec::new();
    let mut windows_compact: Vec<Window> = Vec::new();
    let mut latencies: Vec<(f64, u64)> = Vec::new(); // (completion second, latency µs) of appends
    let mut dir_sizes: Vec<(f64, u64)> = Vec::new();
    let mut admin_id = 10u64;
    let mut admin_busy: Option<(Kind, f64)> = None;
    let mut last_offset = 0u64;
    let mut next_snapshot = args.snapshot_every;
    let started = Instant::now();
    let started_wall = std::time::SystemTime::now();
    let duration = Duration::from_secs_f64(args.duration);
    let node_dir = data.join("n1");
    let bar = if std::io::stdout().is_terminal() {
        let b = indicatif::ProgressBar::new(args.duration as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} s  {msg}")
                .expect("a valid template"),
        );
        Some(b)
    } else {
        None
    };
    let mut last_progress = 0u64;

    loop {
        let now = started.elapsed();
        let secs = now.as_secs_f64();
        let sending = now < duration;
        if sending {
            for (c, src) in clients.iter().enumerate() {
                while in_flight[c] < args.depth {
                    let id = next_id[c];
                    next_id[c] += 1;
                    let key = rng.below(args.keys.max(1));
                    send(
                        &mut stdin,
                        src,
                        json!({"type": "wal_append", "msg_id": id, "payload": format!("set key{key}={value}")}),
                    )?;
                    pending.insert((src.clone(), id), (Instant::now(), Kind::Append));
                    in_flight[c] += 1;
                }
            }
            if args.snapshot_every > 0.0 && admin_busy.is_none() && secs >= next_snapshot {
                admin_id += 1;
                send(
                    &mut stdin,
                    "admin",
                    json!({"type": "wal_snapshot", "msg_id": admin_id}),
                )?;
                pending.insert(("admin".into(), admin_id), (Instant::now(), Kind::Snapshot));
                admin_busy = Some((Kind::Snapshot, secs));
                next_snapshot = secs + args.snapshot_every;
            }
            stdin.flush().map_err(|e| e.to_string())?;
        } else if pending.is_empty() {
            break;
        }
        let c = match done_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => {
                if now > duration + Duration::from_secs(120) {
                    return Err(format!(
                        "{} requests unanswered two minutes after the end",
                        pending.len()
                    ));
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return Err("the node closed its output".into()),
        };
        let Some((sent, kind)) = pending.remove(&(c.src.clone(), c.id)) else {
            continue;
        };
        let latency_us = c.at.duration_since(sent).as_micros().max(1) as u64;
        let done_s = c.at.duration_since(started).as_secs_f64();
        match kind {
            Kind::Append => {
                let client: usize = c.src[1..].parse().expect("a client name");
                in_flight[client] -= 1;
                match c.body["offset"].as_u64() {
                    Some(o) => {
                        if !offsets.insert(o) {
                            duplicates += 1;
                        }
                        last_offset = last_offset.max(o);
                    }
                    None => errors += 1,
                }
                all.record(latency_us).ok();
                let inside =
                    |ws: &[Window]| ws.iter().any(|w| done_s >= w.start && done_s <= w.end);
                let open = |k: Kind| admin_busy.is_some_and(|(b, _)| b == k);
                if inside(&windows_snap) || open(Kind::Snapshot) {
                    in_snap.record(latency_us).ok();
                } else if inside(&windows_compact) || open(Kind::Compact) {
                    in_compact.record(latency_us).ok();
                } else {
                    outside.record(latency_us).ok();
                }
                latencies.push((done_s, latency_us));
            }
            Kind::Snapshot => {
                let (_, start) = admin_busy.take().expect("a snapshot was running");
                windows_snap.push(Window { start, end: done_s });
                if c.body["type"] != "wal_snapshot_ok" {
                    errors += 1;
                } else if sending {
                    admin_id += 1;
                    let at = last_offset.saturating_sub(args.trailing_entries);
                    send(
                        &mut stdin,
                        "admin",
                        json!({"type": "wal_compact", "msg_id": admin_id, "snapshot_at_offset": at}),
                    )?;
                    stdin.flush().map_err(|e| e.to_string())?;
                    pending.insert(("admin".into(), admin_id), (Instant::now(), Kind::Compact));
                    admin_busy = Some((Kind::Compact, done_s));
                }
            }
            Kind::Compact => {
                let (_, start) = admin_busy.take().expect("a compaction was running");
                windows_compact.push(Window { start, end: done_s });
                if c.body["type"] != "wal_compact_ok" {
                    errors += 1;
                }
            }
        }
        let whole = secs as u64;
        if whole > last_progress {
            last_progress = whole;
            dir_sizes.push((secs, dir_bytes(&node_dir)));
            let rate = all.len() as f64 / secs.max(0.001);
            match &bar {
                Some(b) => {
                    b.set_position(whole.min(args.duration as u64));
                    b.set_message(format!(
                        "{rate:.0} appends/s, p99 {:.1} ms (averages since the start)",
                        all.value_at_quantile(0.99) as f64 / 1000.0
                    ));
                }
                None if whole.is_multiple_of(5) => println!(
                    "{whole:>4} s  {rate:>9.0} appends/s  p99 {:.1} ms  (since the start)",
                    all.value_at_quantile(0.99) as f64 / 1000.0
                ),
                None => {}
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let status_after = admin_status(&mut stdin, &done_rx, &send, 2)?;
    drop(stdin);
    let exit = child.wait().map_err(|e| e.to_string())?;
    let _ = reader.join();
    if !exit.success() {
        return Err(format!(
            "the node exited with {exit}; see {}",
            args.out.join("node.log").display()
        ));
    }

    // The node's own snapshots and compactions (its log-management policy), from the
    // node's log: shaded apart from the admin's.
    let node_log = std::fs::read_to_string(args.out.join("node.log")).unwrap_or_default();
    let (policy_snaps, policy_compactions) = policy_windows(&node_log, started_wall);

    // Offsets: unique and contiguous.
    let contiguous = match (offsets.first(), offsets.last()) {
        (Some(&a), Some(&b)) => b - a + 1 == offsets.len() as u64,
        _ => true,
    };
    let counter = |s: &Value, k: &str| s["status"]["counters"][k].as_u64().unwrap_or(0);
    let fsyncs = counter(&status_after, "fsyncs") - counter(&status_before, "fsyncs");
    let appends = counter(&status_after, "appends") - counter(&status_before, "appends");
    let ms = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    };
    let row = |name: &str, h: &Histogram<u64>| json!({"window": name, "count": h.len(), "p50_ms": ms(h, 0.5), "p99_ms": ms(h, 0.99), "p999_ms": ms(h, 0.999), "max_ms": if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 }});
    let rows = vec![
        row("all", &all),
        row("outside windows", &outside),
        row("during snapshots", &in_snap),
        row("during compactions", &in_compact),
    ];
    let report = json!({
        "args": {
            "duration_s": args.duration, "clients": args.clients, "depth": args.depth, "payload_bytes": args.payload_bytes,
            "keys": args.keys, "prefill_keys": args.prefill_keys, "snapshot_every_s": args.snapshot_every,
            "fsync": args.fsync, "max_segment_bytes": args.max_segment_bytes,
        },
        "elapsed_s": elapsed,
        "appends_acknowledged": offsets.len(),
        "appends_per_s": offsets.len() as f64 / elapsed,
        "errors": errors,
        "duplicate_offsets": duplicates,
        "offsets_contiguous": contiguous,
        "fsyncs_per_s": fsyncs as f64 / elapsed,
        "entries_per_fsync": if fsyncs == 0 { 0.0 } else { appends as f64 / fsyncs as f64 },
        "latency": rows,
        "snapshots": windows_snap.len(),
        "compactions": windows_compact.len(),
        "policy_snapshots": policy_snaps.len(),
        "policy_compactions": policy_compactions.len(),
        "data_dir_bytes": dir_sizes.iter().map(|(t, b)| json!([t, b])).collect::<Vec<_>>(),
    });
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&report).expect("JSON"),
    )
    .map_err(|e| e.to_string())?;
    plot(
        &args.out.join("latency.svg"),
        &latencies,
        &windows_snap,
        &windows_compact,
        &policy_snaps,
        &policy_compactions,
        &dir_sizes,
        elapsed,
    )?;

    println!();
    println!(
        "{} appends acknowledged in {elapsed:.1} s: {:.0} appends/s; {:.0} fsyncs/s, {:.1} entries per fsync; {} snapshots and {} compactions asked for, {} and {} by the node's policy",
        offsets.len(),
        offsets.len() as f64 / elapsed,
        fsyncs as f64 / elapsed,
        report["entries_per_fsync"].as_f64().unwrap_or(0.0),
        windows_snap.len(),
        windows_compact.len(),
        policy_snaps.len(),
        policy_compactions.len()
    );
    println!(
        "{:<20} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "count", "p50", "p99", "p999", "max"
    );
    for r in report["latency"].as_array().expect("rows") {
        println!(
            "{:<20} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            r["window"].as_str().unwrap_or(""),
            r["count"].as_u64().unwrap_or(0),
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0),
            r["p999_ms"].as_f64().unwrap_or(0.0),
            r["max_ms"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "offsets unique and contiguous: {}; errors: {errors}",
        contiguous && duplicates == 0
    );
    if let (Some(first), Some(last)) = (dir_sizes.first(), dir_sizes.last()) {
        // Bounded means the second half of the run needs no more room than the first.
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let half = dir_sizes.len() / 2;
        let largest = |part: &[(f64, u64)]| part.iter().map(|(_, b)| *b).max().unwrap_or(0);
        println!(
            "data directory: {:.1} MiB at the start, {:.1} MiB at the end; largest {:.1} MiB in \
             the first half of the run, {:.1} MiB in the second",
            mib(first.1),
            mib(last.1),
            mib(largest(&dir_sizes[..half])),
            mib(largest(&dir_sizes[half..]))
        );
    }
    println!(
        "report: {}\nplot:   {}",
        args.out.join("report.json").display(),
        args.out.join("latency.svg").display()
    );
    if !contiguous || duplicates > 0 || errors > 0 {
        return Err("the run saw errors, duplicate offsets or a gap".into());
    }
    Ok(())
}

fn admin_status<W: Write>(
    stdin: &mut W,
    done: &crossbeam_channel::Receiver<Completion>,
    send: &dyn Fn(&mut W, &str, Value) -> Result<(), String>,
    id: u64,
) -> Result<Value, String> {
    send(stdin, "status", json!({"type": "wal_status", "msg_id": id}))?;
    stdin.flush().map_err(|e| e.to_string())?;
    loop {
        let c = done
            .recv_timeout(Duration::from_secs(120))
            .map_err(|_| "no answer to wal_status".to_string())?;
        if c.src == "status" && c.id == id {
            return Ok(c.body);
        }
    }
}

/// Latency over time (p99 and max per 250 ms), snapshot and compaction windows shaded,
/// and the data directory's size.
/// Seconds since the Unix epoch of a log line's `[YYYY-MM-DDTHH:MM:SS.mmmZ` stamp.
fn log_time(line: &str) -> Option<f64> {
    let stamp = line.strip_prefix('[')?.get(..24)?;
    let num = |r: std::ops::Range<usize>| stamp.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    // Days from the civil date (proleptic Gregorian), as in Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3_600 + mi * 60 + s) as f64 + ms as f64 / 1000.0)
}

/// The windows of the snapshots and compactions the node's policy made on its own, in
/// seconds since `started`, from the node's log: a snapshot from "snapshot due ...
/// cutting at offset N" to the line saying its file of offset N is durable; a
/// compaction from "compacting to offset N after a durable snapshot" to "automatic
/// compaction to N".
fn policy_windows(log: &str, started: std::time::SystemTime) -> (Vec<Window>, Vec<Window>) {
    let t0 = started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut open_snaps: Vec<(String, f64)> = Vec::new();
    let mut open_compactions: Vec<(String, f64)> = Vec::new();
    let (mut snaps, mut compactions) = (Vec::new(), Vec::new());
    for line in log.lines() {
        let Some(t) = log_time(line).map(|t| t - t0) else {
            continue;
        };
        let after = |marker: &str| {
            line.split_once(marker)
                .map(|(_, rest)| {
                    rest.split(|c: char| !c.is_ascii_digit())
                        .next()
                        .unwrap_or("")
                })
                .map(str::to_string)
        };
        if let Some(offset) = after("cutting at offset ") {
            open_snaps.push((format!("{:0>20}", offset), t));
        } else if line.contains(" durable: ") {
            if let Some(i) = open_snaps
                .iter()
                .position(|(o, _)| line.contains(o.as_str()))
            {
                let (_, start) = open_snaps.remove(i);
                snaps.push(Window { start, end: t });
            }
        } else if let Some(offset) = after("compacting to offset ") {
            open_compactions.push((offset, t));
        } else if let Some(offset) = after("automatic compaction to ")
            && let Some(i) = open_compactions.iter().position(|(o, _)| *o == offset)
        {
            let (_, start) = open_compactions.remove(i);
            compactions.push(Window { start, end: t });
        }
    }
    (snaps, compactions)
}

#[allow(clippy::too_many_arguments)]
fn plot(
    path: &Path,
    latencies: &[(f64, u64)],
    snaps: &[Window],
    compactions: &[Window],
    policy_snaps: &[Window],
    policy_compactions: &[Window],
    dir_sizes: &[(f64, u64)],
    elapsed: f64,
) -> Result<(), String> {
    use plotters::prelude::*;
    let bucket = 0.25;
    let n = (elapsed / bucket).ceil() as usize + 1;
    let mut buckets: Vec<Vec<u64>> = vec![Vec::new(); n];
    for &(t, us) in latencies {
        buckets[((t / bucket) as usize).min(n - 1)].push(us);
    }
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut max = Vec::new();
    // Acknowledged appends per second, per bucket.
    let rate: Vec<(f64, f64)> = buckets
        .iter()
        .enumerate()
        .map(|(i, b)| (i as f64 * bucket, b.len() as f64 / bucket))
        .collect();
    for (i, b) in buckets.iter_mut().enumerate() {
        if b.is_empty() {
            continue;
        }
        b.sort_unstable();
        let t = i as f64 * bucket;
        p50.push((t, b[b.len() / 2] as f64 / 1000.0));
        p99.push((t, b[(b.len() * 99 / 100).min(b.len() - 1)] as f64 / 1000.0));
        max.push((t, *b.last().expect("non-empty") as f64 / 1000.0));
    }
    // Log scale: the data in the middle, the windows' bands above it, the legend below.
    let data_max = max.iter().map(|p| p.1).fold(1.0, f64::max) * 1.5;
    let y_max = data_max * 1.5f64.powi(5);
    let y_min = p50
        .iter()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .clamp(0.001, 1.0)
        / 30.0;
    let err = |e: &dyn std::fmt::Display| format!("plotting {}: {e}", path.display());
    let root = SVGBackend::new(path, (1200, 950)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, rest) = root.split_vertically(520);
    let (middle, bottom) = rest.split_vertically(215);
    let bucket_ms = bucket * 1000.0;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!(
                "append latency: p50, p99 and max of each {bucket_ms:.0} ms of acknowledgements (log scale)"
            ),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..elapsed.max(1.0), (y_min..y_max).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the load started")
        .y_desc("latency (ms, log scale)")
        .y_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .draw()
        .map_err(|e| err(&e))?;
    // Each kind of window lightly over the whole height, and solid in a band of its own
    // along the top, so that overlapping windows stay told apart.
    let kinds = [
        (snaps, "snapshot asked by the admin", RGBColor(66, 133, 244)),
        (
            compactions,
            "compaction asked by the admin",
            RGBColor(230, 145, 56),
        ),
        (
            policy_snaps,
            "snapshot cut by the node's policy",
            RGBColor(52, 168, 83),
        ),
        (
            policy_compactions,
            "compaction by the node's policy",
            RGBColor(142, 68, 173),
        ),
    ];
    for (k, (ws, label, colour)) in kinds.into_iter().enumerate() {
        // The admin's windows (those of the latency table) shaded over the whole height.
        let shade = if k < 2 { ws } else { &[][..] };
        chart
            .draw_series(shade.iter().map(|w| {
                Rectangle::new(
                    [(w.start, y_min), (w.end.max(w.start + 0.02), y_max)],
                    colour.mix(0.1).filled(),
                )
            }))
            .map_err(|e| err(&e))?;
        let band_top = y_max / 1.5f64.powi(k as i32);
        let band_bottom = band_top / 1.4;
        chart
            .draw_series(ws.iter().map(|w| {
                Rectangle::new(
                    [
                        (w.start, band_bottom),
                        (w.end.max(w.start + 0.02), band_top),
                    ],
                    colour.mix(0.8).filled(),
                )
            }))
            .map_err(|e| err(&e))?
            .label(format!(
                "{label}: {} windows, band {} from the top{}",
                ws.len(),
                k + 1,
                if k < 2 { ", shaded below" } else { "" }
            ))
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], colour.mix(0.8).filled())
            });
    }
    chart
        .draw_series(LineSeries::new(max, RED.mix(0.6).stroke_width(1)))
        .map_err(|e| err(&e))?
        .label("max of the bucket")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.mix(0.6)));
    chart
        .draw_series(LineSeries::new(p99, BLACK.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label("p99 of the bucket")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(p50, RGBColor(0, 120, 0).stroke_width(2)))
        .map_err(|e| err(&e))?
        .label("p50 of the bucket")
        .legend(|(x, y)| {
            PathElement::new(
                vec![(x, y), (x + 20, y)],
                RGBColor(0, 120, 0).stroke_width(2),
            )
        });
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| err(&e))?;
    let rate_max = rate.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut throughput = ChartBuilder::on(&middle)
        .caption(
            format!("acknowledged appends per second, per {bucket_ms:.0} ms bucket"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..elapsed.max(1.0), 0f64..rate_max)
        .map_err(|e| err(&e))?;
    throughput
        .configure_mesh()
        .x_desc("seconds since the load started")
        .y_desc("appends/s")
        .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .draw()
        .map_err(|e| err(&e))?;
    throughput
        .draw_series(LineSeries::new(rate, BLACK.stroke_width(1)))
        .map_err(|e| err(&e))?;
    let mib: Vec<(f64, f64)> = dir_sizes
        .iter()
        .map(|&(t, b)| (t, b as f64 / 1048576.0))
        .collect();
    let mib_max = mib.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut size = ChartBuilder::on(&bottom)
        .caption("data directory size", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..elapsed.max(1.0), 0f64..mib_max)
        .map_err(|e| err(&e))?;
    size.configure_mesh()
        .x_desc("seconds since the load started")
        .y_desc("MiB")
        .draw()
        .map_err(|e| err(&e))?;
    size.draw_series(LineSeries::new(mib, BLUE.stroke_width(2)))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

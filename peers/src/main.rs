//! `flintlog-peers`: the same durable append workload against flintlog, other
//! write-ahead logs and the raw `fdatasync` baseline, in one run and one table.
//!
//! Every append is a 64-byte payload, and a writer counts it only once the engine says
//! it is on disk: flintlog under `--fsync always`, okaywal's `commit`, raft-engine's
//! `write(.., sync = true)`, SQLite in WAL mode with `synchronous=FULL` (one insert per
//! transaction). With 1 writer every commit carries one entry; with 64 writers each
//! engine groups what it can. The engines take turns inside each run, so the machine's
//! noise falls on all of them alike; the figure is the median over `--runs` runs.

#[path = "../../src/bin/flintlog-bench/common.rs"]
#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use common::{PAYLOAD, Report, fresh, median, raw};

/// flintlog side by side with okaywal, raft-engine and SQLite.
#[derive(Parser, Debug)]
#[command(name = "flintlog-peers")]
struct Args {
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Working directory, on a real disk.
    #[arg(long, default_value = "target/bench-peers")]
    dir: PathBuf,
    /// Rewrite the peers part of this Markdown file with the table.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// One durable append per call.
type Writer = Box<dyn FnMut() + Send>;

/// An open engine that hands out writers.
trait Engine {
    fn writer(&self, id: usize) -> Writer;
}

const ENGINES: [&str; 4] = ["flintlog", "okaywal", "raft-engine", "sqlite"];

struct Flintlog(flintlog::Node);

impl Engine for Flintlog {
    fn writer(&self, _id: usize) -> Writer {
        let a = self.0.appender().clone();
        Box::new(move || {
            a.append(PAYLOAD).expect("flintlog append");
        })
    }
}

struct OkayWal(okaywal::WriteAheadLog);

impl Engine for OkayWal {
    fn writer(&self, _id: usize) -> Writer {
        let wal = self.0.clone();
        Box::new(move || {
            let mut entry = wal.begin_entry().expect("okaywal begin");
            entry
                .write_chunk(PAYLOAD.as_bytes())
                .expect("okaywal write");
            entry.commit().expect("okaywal commit");
        })
    }
}

struct RaftEngine(Arc<raft_engine::Engine>);

impl Engine for RaftEngine {
    fn writer(&self, id: usize) -> Writer {
        let engine = self.0.clone();
        // One region per writer, as Raft groups would be; the key is overwritten so the
        // engine's in-memory index stays small.
        let region = id as u64 + 1;
        Box::new(move || {
            let mut batch = raft_engine::LogBatch::default();
            batch
                .put(region, b"entry".to_vec(), PAYLOAD.as_bytes().to_vec())
                .expect("raft-engine put");
            engine.write(&mut batch, true).expect("raft-engine write");
        })
    }
}

struct Sqlite(Arc<Mutex<rusqlite::Connection>>);

impl Engine for Sqlite {
    fn writer(&self, _id: usize) -> Writer {
        let conn = self.0.clone();
        Box::new(move || {
            conn.lock()
                .expect("sqlite lock")
                .execute("INSERT INTO log (payload) VALUES (?1)", [PAYLOAD])
                .expect("sqlite insert");
        })
    }
}

fn open(name: &str, dir: &Path) -> Box<dyn Engine> {
    match name {
        "flintlog" => {
            let mut c = flintlog::Config::new(dir.join("flintlog"));
            c.segment_bytes_max = 64 * 1024 * 1024;
            Box::new(Flintlog(flintlog::Node::open(c).expect("open flintlog")))
        }
        "okaywal" => Box::new(OkayWal(
            okaywal::WriteAheadLog::recover(dir.join("okaywal"), okaywal::LogVoid)
                .expect("open okaywal"),
        )),
        "raft-engine" => {
            let cfg = raft_engine::Config {
                dir: dir.join("raft-engine").to_string_lossy().into_owned(),
                ..Default::default()
            };
            Box::new(RaftEngine(Arc::new(
                raft_engine::Engine::open(cfg).expect("open raft-engine"),
            )))
        }
        "sqlite" => {
            let conn = rusqlite::Connection::open(dir.join("sqlite.db")).expect("open sqlite");
            conn.pragma_update(None, "journal_mode", "WAL")
                .expect("WAL mode");
            conn.pragma_update(None, "synchronous", "FULL")
                .expect("synchronous=FULL");
            conn.execute(
                "CREATE TABLE log (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)",
                [],
            )
            .expect("create table");
            Box::new(Sqlite(Arc::new(Mutex::new(conn))))
        }
        other => panic!("no engine {other}"),
    }
}

/// Durable appends/s from `writers` threads for `seconds`, after a short warm-up.
fn throughput(engine: &dyn Engine, writers: usize, seconds: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..writers)
        .map(|id| {
            let mut write = engine.writer(id);
            let (stop, counting) = (stop.clone(), counting.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    write();
                    if counting.load(Ordering::Relaxed) {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let total: u64 = handles.into_iter().map(|h| h.join().expect("writer")).sum();
    total as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir).expect("bench directory");
    let head = common::machine(&args.dir);
    let mut r = Report::default();
    let started = Instant::now();
    let writer_counts = [1usize, 64];
    // rates[writers index][engine index, then raw last]
    let mut rates = vec![vec![Vec::new(); ENGINES.len() + 1]; writer_counts.len()];
    for run in 0..args.runs {
        for (w, &writers) in writer_counts.iter().enumerate() {
            for (e, name) in ENGINES.iter().enumerate() {
                let d = fresh(&args.dir, name);
                let engine = open(name, &d);
                let rate = throughput(engine.as_ref(), writers, args.seconds);
                drop(engine);
                println!("run {run}: {name:>11}, {writers:>2} writers: {rate:>8.0} appends/s");
                rates[w][e].push(rate);
            }
            let d = fresh(&args.dir, "raw");
            let rate = raw(&d, writers, args.seconds, true, false);
            println!("run {run}: raw batch {writers:>2}: {rate:>8.0} records/s");
            rates[w][ENGINES.len()].push(rate);
        }
    }
    let m: Vec<Vec<f64>> = rates
        .into_iter()
        .map(|per| per.into_iter().map(median).collect())
        .collect();
    r.md.push_str(&format!(
        "## Peers\n\nWritten by `make bench-peers` (`flintlog-peers`), {head}\n"
    ));
    r.section(
        "Durable 64-byte appends",
        &format!(
            "Appends/s, each counted once the engine reports it synced: flintlog \
             (`--fsync always`), okaywal (`commit`), raft-engine (`write` with sync), SQLite \
             (WAL mode, `synchronous=FULL`, one insert per transaction). `raw` is `pwrite` + \
             `fdatasync` of the same records into a zero-filled file, 1 or 64 records per \
             sync: the disk's ceiling. Medians of {} runs of {} s, engines interleaved.",
            args.runs, args.seconds
        ),
    );
    let mut rows = Vec::new();
    for (e, name) in ENGINES.iter().chain(["raw"].iter()).enumerate() {
        rows.push(vec![
            name.to_string(),
            format!("{:.0}", m[0][e]),
            format!("{:.2}x", m[0][e] / m[0][ENGINES.len()]),
            format!("{:.0}", m[1][e]),
            format!("{:.2}x", m[1][e] / m[1][ENGINES.len()]),
            format!("{:.2}x", m[1][0] / m[1][e]),
        ]);
    }
    r.table(
        &[
            "engine",
            "1 writer",
            "vs raw batch 1",
            "64 writers",
            "vs raw batch 64",
            "flintlog at 64 vs it",
        ],
        &rows,
    );
    let best_peer = (1..ENGINES.len())
        .map(|e| (m[1][e], ENGINES[e]))
        .fold((0.0, ""), |a, b| if b.0 > a.0 { b } else { a });
    let ratio = m[1][0] / best_peer.0;
    let verdict = if ratio >= 1.0 { "met" } else { "MISSED" };
    let line = format!(
        "Target: ahead of every peer at 64 writers: {ratio:.2}x the fastest peer ({}): {verdict}.",
        best_peer.1
    );
    println!("\n{line}");
    r.md.push_str(&line);
    r.md.push('\n');
    println!("\nall peers: {:.0} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.markdown {
        common::splice(path, "peers", &r.md).expect("write the Markdown");
        println!("wrote the peers part of {}", path.display());
    }
    let _ = std::fs::remove_dir_all(&args.dir);
}

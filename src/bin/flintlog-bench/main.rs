//! `flintlog-bench`: the node's performance, each figure a ratio against a baseline
//! measured in the same run (this machine is shared and noisy). Every measurement is
//! the median of `--runs` runs after an untimed warm-up, on a real disk (never tmpfs),
//! with the two sides of a ratio interleaved. `--markdown FILE` writes the tables.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
mod group_commit;
mod interference;
mod latency;
mod memory;
mod protocol;
mod recovery;
mod shipping;
mod snapshot;
mod store;
mod transfer;

use group_commit::*;
use interference::*;
use latency::*;
use memory::*;
use protocol::*;
use recovery::*;
use shipping::*;
use snapshot::*;
use store::*;
use transfer::*;

use clap::Parser;
use common::{PAYLOAD, Report, disk_facts, fresh, median, raw, raw_group_commit};
use flintlog::core::kv::{KvState, Written, changes_of};
use flintlog::core::policy::SnapshotMode;
use flintlog::{Config, Node, Offset, Reply};
use hdrhistogram::Histogram;

/// Benchmarks of flintlog, as ratios measured side by side.
#[derive(Parser, Debug)]
#[command(name = "flintlog-bench")]
struct Args {
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Keys of the large state (snapshot, recovery, RSS benchmarks).
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Entries of the full-history replay that recovery is compared with.
    #[arg(long, default_value_t = 10_000_000)]
    replay_entries: u64,
    /// Working directory, on a real disk.
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Write the tables as Markdown to this file too.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Only the benchmarks whose letter is given (e.g. `ac`).
    #[arg(long, default_value = "abcdefghijkl")]
    only: String,
    /// Keys written while a follower is away, in the catch-up benchmark (i).
    #[arg(long, default_value_t = 200_000)]
    transfer_keys: u64,
    /// The leader's snapshot send rate in the catch-up benchmark (bytes/s; the node's
    /// default unless given).
    #[arg(long, default_value_t = flintlog::Config::new("").snapshot_send_bytes_per_sec)]
    transfer_rate: u64,
}

fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir.join("n1"));
    c.segment_bytes_max = 64 * 1024 * 1024;
    // Each benchmark cuts its own snapshots and compactions where it measures them,
    // full ones unless it asks for a delta.
    c.policy = flintlog::Policy {
        snapshot_entries: 0,
        snapshot_bytes: 0,
        snapshot_age_ms: 0,
        auto_compact: false,
        max_chain: 0,
        ..flintlog::Policy::default()
    };
    c
}

fn main() {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir).expect("bench directory");
    let head = common::machine(&args.dir);
    let mut r = Report::default();
    let started = Instant::now();
    for letter in args.only.chars() {
        match letter {
            'a' => bench_group_commit(&args, &mut r),
            'b' => bench_appends_during_snapshot(&args, &mut r),
            'c' => bench_snapshot(&args, &mut r),
            'd' => bench_recovery(&args, &mut r),
            'e' => bench_appends_during_compaction(&args, &mut r),
            'f' => bench_rss(&args, &mut r),
            'g' => bench_delta(&args, &mut r),
            'h' => bench_chain_recovery(&args, &mut r),
            'i' => bench_transfer(&args, &mut r),
            'j' => bench_store(&args, &mut r),
            'k' => bench_protocol(&args, &mut r),
            'l' => bench_shipping(&args, &mut r),
            other => eprintln!("no benchmark {other:?}"),
        }
        std::io::stdout().flush().ok();
    }
    let rows: Vec<Vec<String>> = r
        .targets
        .clone()
        .into_iter()
        .map(|(what, measured, target, met)| {
            vec![
                what,
                measured,
                target,
                if met { "met".into() } else { "MISSED".into() },
            ]
        })
        .collect();
    r.section("Targets", "Each target against what this run measured.");
    r.table(&["what", "measured", "target", ""], &rows);
    if !r.notes.is_empty() {
        r.section(
            "Gaps",
            "Each missed target, with what this run measured about its cause.",
        );
        for note in r.notes.clone() {
            println!("- {note}");
            r.md.push_str(&format!("- {note}\n"));
        }
    }
    println!("\nall benchmarks: {:.0} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.markdown {
        let body = format!(
            "## The node\n\nWritten by `make bench` (`flintlog-bench`), {}\n{}",
            head, r.md
        );
        common::splice(path, "node", &body).expect("write the Markdown");
        println!("wrote the node part of {}", path.display());
    }
    let _ = std::fs::remove_dir_all(&args.dir);
}

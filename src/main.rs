//! The flintlog binary: a Maelstrom node over the library (see `docs/PROTOCOL.md`), and
//! the offline `verify` and `inspect` commands.
//!
//! As a node it parses arguments, sets up logging to stderr, picks the data directory,
//! and hands stdin and stdout to the router. Exit code 0 at end of input; 1 if the node
//! could not be opened (locked or damaged directory) or failed to stop cleanly; 2 for
//! bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flintlog::fs::RealFs;
use flintlog::router::{self, RouterConfig};
use flintlog::{Config, FsyncPolicy, Policy, inspect};

/// A durable, checksummed, segmented write-ahead log of a key-value state machine,
/// run as a Maelstrom node: JSON messages on stdin, replies on stdout, logs on stderr.
#[derive(Parser, Debug)]
#[command(
    name = "flintlog",
    version,
    term_width = 100,
    after_help = "Examples:\n  \
    flintlog --data-dir /var/lib/fl < input.jsonl   run as a node; files in /var/lib/fl/<node_id>/\n  \
    flintlog verify /var/lib/fl/n1                  check a directory; exit 1 on damage\n  \
    flintlog inspect /var/lib/fl/n1 --json          segments, snapshots, offsets\n\n\
The first line a node expects:\n  \
    {\"src\":\"c0\",\"dest\":\"n1\",\"body\":{\"type\":\"init\",\"msg_id\":1,\"node_id\":\"n1\",\"node_ids\":[\"n1\"]}}\n\
With several node_ids, the node joins that Raft group: deliver each line it writes to\n\
another node id to that node's stdin (flintlog-cluster does, for tests).\n\n\
The protocol: docs/PROTOCOL.md in the source."
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Keep the node's files in DIR/<node_id>/ (locked against a second process).
    /// Without it (and without FLINTLOG_DATA_DIR), the node uses a fresh private
    /// temporary directory removed at exit, so every run starts empty.
    #[arg(long, env = "FLINTLOG_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// When an append is acknowledged: `always` (after fdatasync; appends arriving
    /// during a sync share the next one), `batch=MS` (after the write; sync every MS
    /// milliseconds) or `never` (the OS decides when data reaches the disk).
    #[arg(long, default_value = "always", value_parser = parse_fsync, value_name = "POLICY")]
    fsync: FsyncPolicy,

    /// Size in bytes at which the active segment is sealed and a new one opened
    /// (at least 1; a record larger than this gets a segment of its own). Clients can
    /// change it at run time with `wal_segment_config`.
    #[arg(long, default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..), value_name = "BYTES")]
    max_segment_bytes: u64,

    /// Largest payload a `wal_append` (or a key-value write, as `set KEY=VALUE`) may
    /// carry; larger ones get error 12. At most 268435456.
    #[arg(long, default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(0..=268_435_456), value_name = "BYTES")]
    max_payload_bytes: u64,

    /// Cut a snapshot on its own after this many entries since the last one (0: off).
    /// Every threshold is jittered per node and per snapshot (see --jitter-percent).
    /// Clients change the policy at run time with `wal_policy`.
    #[arg(long, default_value_t = Policy::default().snapshot_entries, value_name = "N", help_heading = "Log management")]
    snapshot_entries: u64,

    /// Cut a snapshot after this many bytes of log since the last one (0: off).
    #[arg(long, default_value_t = Policy::default().snapshot_bytes, value_name = "BYTES", help_heading = "Log management")]
    snapshot_bytes: u64,

    /// Cut a snapshot when the last one is this old and entries are pending (0: off).
    #[arg(long, default_value_t = Policy::default().snapshot_age_ms, value_name = "MS", help_heading = "Log management")]
    snapshot_age_ms: u64,

    /// Spread each threshold by up to ± this percentage (0 to 90), seeded by the node
    /// id, so that replicas do not snapshot together.
    #[arg(long, default_value_t = Policy::default().jitter_percent, value_parser = clap::value_parser!(u64).range(0..=90), value_name = "PERCENT", help_heading = "Log management")]
    jitter_percent: u64,

    /// Compact the log after each durable snapshot: `true` or `false`.
    #[arg(long, default_value_t = Policy::default().auto_compact, action = clap::ArgAction::Set, value_name = "BOOL", help_heading = "Log management")]
    auto_compact: bool,

    /// Entries kept behind the snapshot when compacting on its own.
    #[arg(long, default_value_t = Policy::default().trailing_entries, value_name = "N", help_heading = "Log management")]
    trailing_entries: u64,

    /// Snapshot chains kept, newest first (at least 1; a chain is a full snapshot and
    /// the deltas building on it).
    #[arg(long, default_value_t = Policy::default().retain_snapshots, value_parser = clap::value_parser!(u64).range(1..), value_name = "N", help_heading = "Log management")]
    retain_snapshots: u64,

    /// Most deltas (incremental snapshots) in a chain before the next snapshot is a
    /// full one (0: every snapshot is full).
    #[arg(long, default_value_t = Policy::default().max_chain, value_name = "N", help_heading = "Log management")]
    max_chain: u64,

    /// Cut a full snapshot once the chain's deltas together pass this percentage of
    /// the full snapshot's size.
    #[arg(long, default_value_t = Policy::default().delta_share_percent, value_name = "PERCENT", help_heading = "Log management")]
    delta_share_percent: u64,

    /// In a group: most bytes per second this node sends of its snapshots to members
    /// catching up from one (0: no limit).
    #[arg(long, default_value_t = flintlog::Config::new("").snapshot_send_bytes_per_sec, value_name = "BYTES", help_heading = "Log management")]
    snapshot_send_bytes_per_sec: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a node's directory offline without changing it: headers, checksums and
    /// continuity of the log, every snapshot, which snapshot recovery would load and
    /// what it would repair. Exits 1 if anything is damaged or recovery would refuse.
    Verify {
        /// The node's own directory (DATA_DIR/<node_id>).
        dir: PathBuf,
    },
    /// Print a node directory's segments, snapshots and offsets, offline.
    Inspect {
        /// The node's own directory (DATA_DIR/<node_id>).
        dir: PathBuf,
        /// Print one JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `verify` or `inspect`; returns the exit code.
fn offline(command: Command) -> u8 {
    let (dir, json, verify) = match command {
        Command::Verify { dir } => (dir, false, true),
        Command::Inspect { dir, json } => (dir, json, false),
    };
    match std::fs::metadata(&dir) {
        Err(e) => {
            eprintln!("{}: {e}", dir.display());
            return 1;
        }
        Ok(m) if !m.is_dir() => {
            eprintln!(
                "{}: not a directory; give the node's own directory (DATA_DIR/<node_id>)",
                dir.display()
            );
            return 1;
        }
        Ok(_) => {}
    }
    let mut ex = inspect::examine(&RealFs, &dir);
    ex.in_use_by = flintlog::fs::lock_holder(&dir.join(flintlog::core::layout::LOCK));
    if ex.refusal.is_none() && ex.segments.is_empty() && ex.snapshots.is_empty() {
        eprintln!(
            "{}: no flintlog segments or snapshots here; give the node's own directory (DATA_DIR/<node_id>)",
            dir.display()
        );
        return 1;
    }
    if verify {
        print!("{}", inspect::verify_report(&ex));
    } else if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&inspect::inspect_json(&ex)).expect("JSON")
        );
    } else {
        print!("{}", inspect::inspect_table(&ex));
    }
    u8::from(ex.damaged())
}

fn parse_fsync(text: &str) -> Result<FsyncPolicy, String> {
    FsyncPolicy::parse(text).map_err(|e| e.text().to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let default_level = if args.command.is_some() {
        "warn"
    } else {
        "info"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .target(env_logger::Target::Stderr)
        .format_timestamp_millis()
        .init();
    if let Some(command) = args.command {
        return ExitCode::from(offline(command));
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprintln!(
            "flintlog reads Maelstrom messages on stdin, one JSON object a line, starting with \
             {{\"src\": \"c0\", \"dest\": \"n1\", \"body\": {{\"type\": \"init\", \"msg_id\": 1, \
             \"node_id\": \"n1\", \"node_ids\": [\"n1\"]}}}} (--help for more)"
        );
    }

    // Holds the private directory (if any) until the router has shut the node down.
    let temp_dir;
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => match tempfile::Builder::new().prefix("flintlog-").tempdir() {
            Ok(dir) => {
                let path = dir.path().to_path_buf();
                temp_dir = dir;
                log::debug!(
                    "no --data-dir: using private directory {}",
                    temp_dir.path().display()
                );
                path
            }
            Err(e) => {
                log::error!("cannot create a temporary data directory: {e}");
                return ExitCode::from(1);
            }
        },
    };
    let mut node = Config::new(PathBuf::new());
    node.fsync = args.fsync;
    node.segment_bytes_max = args.max_segment_bytes;
    node.payload_bytes_max = args.max_payload_bytes;
    node.snapshot_send_bytes_per_sec = args.snapshot_send_bytes_per_sec;
    node.policy = Policy {
        snapshot_entries: args.snapshot_entries,
        snapshot_bytes: args.snapshot_bytes,
        snapshot_age_ms: args.snapshot_age_ms,
        jitter_percent: args.jitter_percent,
        auto_compact: args.auto_compact,
        trailing_entries: args.trailing_entries,
        retain_snapshots: args.retain_snapshots,
        max_chain: args.max_chain,
        delta_share_percent: args.delta_share_percent,
    };

    let code = router::run(
        std::io::stdin(),
        std::io::stdout().lock(),
        RouterConfig::new(data_dir, node),
    );
    ExitCode::from(code as u8)
}

//! The flintlog binary: a Maelstrom node over the library (see `PROTOCOL.md`).
//!
//! It parses arguments, sets up logging to stderr, picks the data directory, and hands
//! stdin and stdout to the router. Exit code 0 at end of input; 1 if the node could
//! not be opened (locked or damaged directory) or failed to stop cleanly; 2 for bad
//! arguments.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use flintlog::router::{self, RouterConfig};
use flintlog::{Config, FsyncPolicy};

/// A durable, checksummed, segmented write-ahead log of a key-value state machine,
/// run as a Maelstrom node: JSON messages on stdin, replies on stdout, logs on stderr.
#[derive(Parser, Debug)]
#[command(name = "flintlog", version)]
struct Args {
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
}

fn parse_fsync(text: &str) -> Result<FsyncPolicy, String> {
    FsyncPolicy::parse(text).map_err(|e| e.text().to_string())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let args = Args::parse();

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

    let code = router::run(
        std::io::stdin(),
        std::io::stdout().lock(),
        RouterConfig::new(data_dir, node),
    );
    ExitCode::from(code as u8)
}

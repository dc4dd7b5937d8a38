//! The flintlog binary: a Maelstrom node over the library (see `docs/PROTOCOL.md`), and
//! the offline `verify` and `inspect` commands.
//!
//! As a node it parses arguments, sets up logging to stderr, picks the data directory,
//! and hands stdin and stdout to the router. Exit code 0 at end of input; 1 if the node
//! could not be opened (locked or damaged directory) or failed to stop cleanly; 2 for
//! bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;

/// Every request allocates (its parsed line, its entry, the reply): glibc's allocator
/// spent 6-7% of the node's samples in `_int_malloc` and `malloc_consolidate` under
/// load; mimalloc's per-thread free lists avoid that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "main/client.rs"]
mod client;

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
    flintlog inspect /var/lib/fl/n1 --json          segments, snapshots, offsets\n  \
    flintlog verify --store s3://bkt/fl             download and check every chain in a store\n  \
    flintlog keygen > store.key                     a key for --store-key-file store.key\n  \
    flintlog restore --from s3://bkt/fl --data-dir /var/lib/fl --node-id n1\n\
\x20                                                 /var/lib/fl/n1/ from n1's newest chain\n\n\
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

    #[command(flatten)]
    node: NodeFlags,
}

/// The node's own flags: the stdin mode's, and `serve`'s.
#[derive(clap::Args, Debug, Clone)]
struct NodeFlags {
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

    /// While the log is syncing, write snapshot files at most this many bytes per
    /// second (0: no limit); while it is not, at full speed.
    #[arg(long, default_value_t = flintlog::Config::new("").snapshot_busy_bytes_per_sec, value_name = "BYTES", help_heading = "Log management")]
    snapshot_busy_bytes_per_sec: u64,

    /// Copy every durable snapshot chain to this store, under the node's id:
    /// s3://BUCKET/PREFIX (S3 or an S3-compatible store), file:///PATH or a path.
    /// Credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and
    /// AWS_SESSION_TOKEN for temporary ones); without them, the metadata service of a
    /// cloud instance, which fails elsewhere. Never logged. A local store:
    /// scripts/store.sh.
    #[arg(
        long,
        env = "FLINTLOG_SNAPSHOT_STORE",
        value_name = "URL",
        help_heading = "Snapshot store"
    )]
    snapshot_store: Option<String>,

    /// Chains kept in the store per node, newest first (at least 1).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..), value_name = "N", help_heading = "Snapshot store")]
    store_retain: u64,

    /// Most bytes per second the uploader reads and sends (0: no limit).
    #[arg(long, default_value_t = flintlog::store::DEFAULT_UPLOAD_RATE, value_name = "BYTES", help_heading = "Snapshot store")]
    store_upload_bytes_per_sec: u64,

    /// At end of input, wait up to this many seconds for the upload in flight and the
    /// newest chain to reach the store before exiting (then say how far behind it is).
    /// 0: exit at once (the chain stays on disk; the next start uploads it).
    #[arg(
        long,
        default_value_t = 30.0,
        value_name = "SECONDS",
        help_heading = "Snapshot store"
    )]
    store_shutdown_wait: f64,

    /// Free log segments only once a snapshot covering them is in the store (off: the
    /// log is compacted behind local snapshots, and a node that loses its disk before an
    /// upload lands relies on the other replicas for those entries).
    #[arg(long, help_heading = "Snapshot store")]
    compact_after_upload: bool,

    /// Ship the log to the store too, not only the snapshot chains: every entry made
    /// durable reaches the store within --ship-interval, and `flintlog restore` brings
    /// a node back to its last shipped entry or to any point before it (a single
    /// node's log; a group member ships its chains only).
    #[arg(long, help_heading = "Snapshot store")]
    ship_log: bool,

    /// Do not ship the log (overrides --ship-log).
    #[arg(long, help_heading = "Snapshot store")]
    no_ship_log: bool,

    /// With --ship-log: how often new entries are shipped, in seconds (the most a lost
    /// disk loses of what was acknowledged, while the store is reachable).
    #[arg(
        long,
        default_value_t = 1.0,
        value_name = "SECONDS",
        help_heading = "Snapshot store"
    )]
    ship_interval: f64,

    #[command(flatten)]
    store: StoreFlags,
}

/// How to reach an S3-compatible store (for the node, `restore` and `verify`).
#[derive(clap::Args, Debug, Clone)]
struct StoreFlags {
    /// The S3 endpoint, e.g. http://127.0.0.1:8333 for a self-hosted store (default:
    /// AWS_ENDPOINT_URL, else Amazon's endpoint for the region).
    #[arg(long, value_name = "URL", help_heading = "Snapshot store")]
    store_endpoint: Option<String>,

    /// The S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long, value_name = "REGION", help_heading = "Snapshot store")]
    store_region: Option<String>,

    /// Address the bucket as BUCKET.HOST rather than HOST/BUCKET (path style, the
    /// default, suits self-hosted stores).
    #[arg(long, help_heading = "Snapshot store")]
    store_virtual_hosted: bool,

    /// Encrypt and authenticate every object in the store with the key in FILE (64
    /// hexadecimal characters; `flintlog keygen` prints one). Repeatable: the first
    /// encrypts, every one decrypts (key rotation).
    #[arg(
        long,
        value_name = "FILE",
        env = "FLINTLOG_STORE_KEY_FILE",
        help_heading = "Snapshot store"
    )]
    store_key_file: Vec<PathBuf>,

    /// With no AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, take credentials from this
    /// cloud instance's metadata service (its role); without this flag, a node with no
    /// credentials refuses to start, saying so.
    #[arg(long, help_heading = "Snapshot store")]
    store_instance_credentials: bool,
}

impl StoreFlags {
    /// These flags, each falling back to the one given before the subcommand.
    fn or(&self, outer: &StoreFlags) -> StoreFlags {
        StoreFlags {
            store_endpoint: self
                .store_endpoint
                .clone()
                .or_else(|| outer.store_endpoint.clone()),
            store_region: self
                .store_region
                .clone()
                .or_else(|| outer.store_region.clone()),
            store_virtual_hosted: self.store_virtual_hosted || outer.store_virtual_hosted,
            store_instance_credentials: self.store_instance_credentials
                || outer.store_instance_credentials,
            store_key_file: if self.store_key_file.is_empty() {
                outer.store_key_file.clone()
            } else {
                self.store_key_file.clone()
            },
        }
    }

    /// The store at `url` as these flags reach it.
    ///
    /// # Errors
    /// A key file that cannot be read or holds no key: what and why.
    fn config(&self, url: &str) -> Result<flintlog::store::StoreConfig, String> {
        let mut c = flintlog::store::StoreConfig::new(url);
        c.endpoint = self.store_endpoint.clone();
        c.region = self.store_region.clone();
        c.virtual_hosted = self.store_virtual_hosted;
        c.instance_credentials = self.store_instance_credentials;
        c.keys = self
            .store_key_file
            .iter()
            .map(|f| flintlog::store::seal::StoreKey::read(f))
            .collect::<Result<_, _>>()?;
        Ok(c)
    }
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// List the store's chains and shipped log per node, with sizes and ages, and the
    /// newest and oldest points a restore reaches. Reads names and manifests only.
    Ls {
        /// The store: s3://BUCKET/PREFIX, file:///PATH or a path.
        url: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        flags: StoreFlags,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a node's directory offline without changing it: headers, checksums and
    /// continuity of the log, every snapshot, which snapshot recovery would load and
    /// what it would repair. Exits 1 if anything is damaged or recovery would refuse.
    Verify {
        /// The node's own directory (DATA_DIR/<node_id>).
        #[arg(required_unless_present = "store")]
        dir: Option<PathBuf>,
        /// Instead: download and verify every snapshot chain in this store (the
        /// restore drill); exits 1 if any chain is damaged or incomplete.
        #[arg(long, value_name = "URL", conflicts_with = "dir")]
        store: Option<String>,
        #[command(flatten)]
        flags: StoreFlags,
    },
    /// Make a node's directory from its newest snapshot chain in a store that downloads
    /// and verifies (falling back to older chains, saying why); then start the node
    /// with the same --data-dir.
    Restore {
        /// The store: s3://BUCKET/PREFIX, file:///PATH or a path.
        #[arg(long, value_name = "URL")]
        from: String,
        /// The data directory the node is then started with, as for the node itself:
        /// the chain goes to DATA_DIR/<node_id>/, which must be empty or absent.
        #[arg(long, value_name = "DATA_DIR")]
        data_dir: PathBuf,
        /// Whose chain (default: the only node id with chains in the store).
        #[arg(long, value_name = "ID")]
        node_id: Option<String>,
        /// Restore it as the directory of this node id instead (a new member of a
        /// group made from another member's snapshot).
        #[arg(long = "as", value_name = "ID")]
        as_node: Option<String>,
        /// Restore the chain at this index alone instead of the newest state.
        #[arg(long, value_name = "N", conflicts_with_all = ["to_offset", "to_time"])]
        index: Option<u64>,
        /// Restore entries [0, N): the newest chain at or before N, then the shipped
        /// log up to N (refused if the store cannot reach exactly N).
        #[arg(long, value_name = "N", conflicts_with = "to_time")]
        to_offset: Option<u64>,
        /// Restore the state the store held at this time (RFC 3339, e.g.
        /// 2026-12-08T10:00:00Z): the chains uploaded and the log shipped by then.
        #[arg(long, value_name = "TIME")]
        to_time: Option<String>,
        #[command(flatten)]
        flags: StoreFlags,
    },
    /// Print a new random key for --store-key-file (64 hexadecimal characters): keep
    /// it apart from the store; without it the store's objects cannot be read.
    Keygen,
    /// What a snapshot store holds.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Run a member of a group that reaches its peers and clients over TCP itself
    /// (no message router): see "A group over the network" in docs/PROTOCOL.md.
    #[command(
        after_help = "Example, on three machines (the same --peers on each):\n  \
        flintlog serve --data-dir /var/lib/fl --node-id n1 \\\n    \
        --peer-listen 0.0.0.0:7001 --client-listen 0.0.0.0:7101 \\\n    \
        --peers n1=10.0.0.1:7001,n2=10.0.0.2:7001,n3=10.0.0.3:7001\n\
        Then: flintlog client --endpoints 10.0.0.1:7101,10.0.0.2:7101 status"
    )]
    Serve(Box<ServeArgs>),
    /// Talk to served members: put, get, cas, append, read-log, status, snapshot,
    /// compact, members, member add|promote|remove.
    Client {
        /// Members' client addresses (`host:port`, their --client-listen), tried in
        /// turn: a member that cannot do the request sends the client to the next.
        #[arg(
            long,
            value_delimiter = ',',
            required = true,
            env = "FLINTLOG_ENDPOINTS",
            value_name = "HOST:PORT,..."
        )]
        endpoints: Vec<String>,
        /// Print each reply as one JSON object.
        #[arg(long)]
        json: bool,
        /// Give up after this many seconds (retries included).
        #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
        timeout: f64,
        /// Connect over TLS, checking the members' certificates against this CA (PEM)
        /// and the endpoint's host.
        #[arg(long, value_name = "FILE")]
        tls_ca: Option<PathBuf>,
        /// Present this certificate (PEM) to members that require one.
        #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
        tls_cert: Option<PathBuf>,
        /// Its private key (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        #[command(subcommand)]
        op: client::Op,
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

/// `flintlog serve`'s flags.
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Keep the node's files in DIR/<node_id>/.
    #[arg(long, env = "FLINTLOG_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// This member's node id (one of --peers).
    #[arg(long, value_name = "ID")]
    node_id: String,
    /// Where peers connect to this member.
    #[arg(long, value_name = "HOST:PORT")]
    peer_listen: String,
    /// Where clients connect (JSON lines, the protocol's envelope).
    #[arg(long, value_name = "HOST:PORT")]
    client_listen: String,
    /// Every founding member and its peer address, this one included, in the same
    /// order on every member (the order gives Raft ids). With --join: members of the
    /// group to reach (any of them, in any order).
    #[arg(long, value_delimiter = ',', required = true, value_parser = parse_peer, value_name = "ID=HOST:PORT,...")]
    peers: Vec<flintlog::transport::peers::PeerAddr>,
    /// Names the group with the founders' ids: two groups founded with different
    /// tokens never take each other's messages, whatever their node ids.
    #[arg(long, default_value = "flintlog", value_name = "TEXT")]
    group_token: String,
    /// Join a running group as a new member: add it first with `member add ID` on the
    /// leader; it catches up from a snapshot. Started again later, its directory says
    /// who it is.
    #[arg(long)]
    join: bool,
    /// The address peers should dial this member at (default: --peer-listen's),
    /// told them in every handshake: needed when --peer-listen is 0.0.0.0 and the
    /// member may be added to a group later.
    #[arg(long, value_name = "HOST:PORT")]
    advertise_peer: Option<String>,
    /// Most client connections open at once; more are answered with error 11 and
    /// closed.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    client_connections_max: u64,
    /// Serve `GET /metrics` (Prometheus text format, `flintlog_` names) and `GET
    /// /health` (200 when the node knows a leader and has applied what is committed,
    /// 503 with the reason otherwise) on this address.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// This member's certificate (PEM): peers over mutual TLS, clients over TLS. It
    /// must name the node id (a DNS subject alternative name), and the names clients
    /// connect to.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"], help_heading = "TLS")]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert", help_heading = "TLS")]
    tls_key: Option<PathBuf>,
    /// The CA that signs every member's certificate (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert", help_heading = "TLS")]
    tls_ca: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert", help_heading = "TLS")]
    client_ca: Option<PathBuf>,
    #[command(flatten)]
    node: NodeFlags,
}

fn parse_peer(text: &str) -> Result<flintlog::transport::peers::PeerAddr, String> {
    let (id, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not ID=HOST:PORT"))?;
    if !addr.contains(':') {
        return Err(format!("{text:?}: the address {addr:?} has no port"));
    }
    Ok(flintlog::transport::peers::PeerAddr {
        node_id: id.to_string(),
        addr: addr.to_string(),
    })
}

/// Runs `serve` until SIGTERM or SIGINT; returns the exit code.
fn serve(a: ServeArgs) -> u8 {
    let node = match node_config(&a.node) {
        Ok(node) => node,
        Err(code) => return code,
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            log::error!("cannot handle signal {signal}: {e}");
            return 1;
        }
    }
    let config = flintlog::serve::ServeConfig {
        router: RouterConfig::new(a.data_dir, node),
        node_id: a.node_id,
        peers: a.peers,
        peer_listen: a.peer_listen,
        client_listen: a.client_listen,
        group_token: a.group_token,
        clients: flintlog::serve::ClientLimits {
            connections_max: a.client_connections_max as usize,
            line_bytes_max: 0,
        },
        metrics_listen: a.metrics_listen,
        join: a.join,
        advertise: a.advertise_peer,
        tls: match (a.tls_cert, a.tls_key, a.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(flintlog::transport::tls::TlsFiles {
                cert,
                key,
                ca,
                client_ca: a.client_ca,
            }),
            _ => None,
        },
    };
    flintlog::serve::serve(config, stop) as u8
}

/// What `restore` is asked.
struct RestoreArgs {
    from: String,
    data_dir: PathBuf,
    node_id: Option<String>,
    as_node: Option<String>,
    point: flintlog::store::Point,
}

/// Runs `restore --from`: returns the exit code.
fn restore(flags: &StoreFlags, a: RestoreArgs) -> u8 {
    let store = match flags
        .config(&a.from)
        .and_then(|c| flintlog::store::open(&c))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let ids = match flintlog::store::node_ids(&*store) {
        Ok(ids) => ids,
        Err(e) => {
            eprintln!("restore failed: {e}");
            return 1;
        }
    };
    let whose = match (&a.node_id, ids.as_slice()) {
        (Some(id), _) if ids.contains(id) => id.clone(),
        (_, []) => {
            let of = a
                .node_id
                .as_ref()
                .map_or(String::new(), |id| format!(" of {id}"));
            eprintln!("restore failed: {}: no chain{of} in the store", store.url());
            return 1;
        }
        (Some(id), _) => {
            eprintln!(
                "restore failed: {}: no chain of {id} in the store; it holds chains of {}",
                store.url(),
                ids.join(", ")
            );
            return 1;
        }
        (None, [only]) => only.clone(),
        (None, _) => {
            eprintln!(
                "{}: the store holds chains of {}: say whose with --node-id",
                store.url(),
                ids.join(", ")
            );
            return 2;
        }
    };
    let as_node = a.as_node.clone().unwrap_or_else(|| whose.clone());
    if let Err(why) = flintlog::router::wire::check_node_id(&as_node) {
        eprintln!("--as {as_node}: {why}");
        return 2;
    }
    // The spelling of old, where --data-dir named the node's own directory.
    let last = a
        .data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    if let Some(last) = last.filter(|l| *l == as_node || ids.contains(l))
        && !a.data_dir.join(&as_node).exists()
    {
        let parent = a
            .data_dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        eprintln!(
            "--data-dir {} ends in node id {last}: --data-dir is the directory the node is \
             started with, and the chain goes to DATA_DIR/<node_id>/ inside it. To restore \
             {whose} there, type:\n  flintlog restore --from {} --data-dir {} --node-id {whose}{}",
            a.data_dir.display(),
            a.from,
            parent.display(),
            a.as_node
                .as_ref()
                .map_or(String::new(), |n| format!(" --as {n}"))
        );
        return 2;
    }
    if let Err(e) = flintlog::check_data_dir(&RealFs, &a.data_dir, &as_node) {
        eprintln!("restore refused: {e}");
        return 2;
    }
    let dir = a.data_dir.join(&as_node);
    match flintlog::store::restore_to(&*store, &RealFs, &dir, Some(&whose), a.point) {
        Ok(r) => {
            for (object, why) in &r.skipped {
                println!("skipped {object}: {why}");
            }
            let m = &r.manifest;
            if m.files.is_empty() {
                println!(
                    "restored {} from the start of its shipped log (no chain before it) from \
                     {} into {}",
                    m.node,
                    store.url(),
                    dir.display()
                );
            } else {
                println!(
                    "restored {}'s chain at index {} (term {}, {} file(s), {} bytes) from {}, \
                     verified, into {}",
                    m.node,
                    m.index,
                    m.term,
                    m.files.len(),
                    r.bytes,
                    store.url(),
                    dir.display()
                );
            }
            if r.log.entries > 0 || r.log.stopped.is_some() {
                println!(
                    "  + {} shipped entries ({} bytes, each verified) to offset {}{}: the node \
                     goes on at offset {}",
                    r.log.entries,
                    r.log.bytes,
                    r.log.next,
                    r.log.written_ms.map_or(String::new(), |ms| format!(
                        ", written {}",
                        humantime::format_rfc3339_millis(
                            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)
                        )
                    )),
                    r.log.next
                );
            }
            if let Some(why) = &r.log.stopped {
                println!(
                    "  the shipped log stops there, short of what the store holds after it: {why}"
                );
            }
            println!(
                "start it with: flintlog --data-dir {} (then init as {as_node})",
                a.data_dir.display()
            );
            0
        }
        Err(e) => {
            eprintln!("restore failed: {e}");
            1
        }
    }
}

/// Runs `store ls`: returns the exit code.
fn store_ls(flags: &StoreFlags, url: &str, json: bool) -> u8 {
    let store = match flags.config(url).and_then(|c| flintlog::store::open(&c)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let nodes = match flintlog::store::ls::listing(&*store) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("{}: {e}", store.url());
            return 1;
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let when = |ms: u64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string()
    };
    let age = |ms: u64| format!("{:.1} s ago", now.saturating_sub(ms) as f64 / 1000.0);
    if json {
        let doc: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "node": n.node,
                    "chains": n.chains.iter().map(|m| serde_json::json!({
                        "index": m.index,
                        "term": m.term,
                        "files": m.files.len(),
                        "bytes": m.files.iter().map(|f| f.size).sum::<u64>(),
                        "uploaded_ms": m.created_ms,
                        "age_ms": now.saturating_sub(m.created_ms),
                        "history": m.history,
                        "manifest": m.object(),
                    })).collect::<Vec<_>>(),
                    "shipped_log": n.histories.iter().map(|h| serde_json::json!({
                        "history": h.history,
                        "objects": h.objects,
                        "bytes": h.bytes,
                        "first_offset": h.first,
                        "last_offset": h.last,
                        "gaps": h.gaps.iter().map(|(a, b)| serde_json::json!([a, b])).collect::<Vec<_>>(),
                        "newest_written_ms": h.newest_written_ms,
                        "newest_age_ms": now.saturating_sub(h.newest_written_ms),
                    })).collect::<Vec<_>>(),
                    "newest_point": n.newest.map(|(o, ms)| serde_json::json!({
                        "offset": o, "written_ms": ms, "age_ms": now.saturating_sub(ms),
                    })),
                    "oldest_point": n.oldest,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "store": store.url(),
                "nodes": doc,
            }))
            .expect("JSON")
        );
        return 0;
    }
    println!("{}", store.url());
    if nodes.is_empty() {
        println!("  (no chain and no shipped log)");
    }
    for n in &nodes {
        println!("node {}", n.node);
        for m in &n.chains {
            println!(
                "  chain at {:>12}  term {:<4} {} file(s) {:>12} bytes  uploaded {} ({}){}",
                m.index,
                m.term,
                m.files.len(),
                m.files.iter().map(|f| f.size).sum::<u64>(),
                when(m.created_ms),
                age(m.created_ms),
                m.history
                    .as_ref()
                    .map_or(String::new(), |h| format!("  history {h}"))
            );
        }
        for h in &n.histories {
            println!(
                "  shipped log, history {}: offsets {}..={}, {} object(s), {} bytes, newest \
                 written {} ({}){}",
                h.history,
                h.first,
                h.last,
                h.objects,
                h.bytes,
                when(h.newest_written_ms),
                age(h.newest_written_ms),
                if h.gaps.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; missing: {}",
                        h.gaps
                            .iter()
                            .map(|(a, b)| format!("{a}..{b}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
        }
        match (n.newest, n.oldest) {
            (Some((offset, ms)), Some(oldest)) => println!(
                "  a restore reaches offset {offset} at newest (written {}, {}), offset \
                 {oldest} at oldest",
                when(ms),
                age(ms)
            ),
            _ => println!(
                "  no chain: a restore reaches nothing (shipped log needs a chain before it)"
            ),
        }
    }
    0
}

/// Runs `verify --store`: returns the exit code.
fn verify_store(flags: &StoreFlags, url: &str) -> u8 {
    let store = match flags.config(url).and_then(|c| flintlog::store::open(&c)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let mut bad = 0;
    let outcome = flintlog::store::verify(&*store, &mut |v| match &v.problem {
        None => println!("ok       {} ({} bytes)", v.object, v.bytes),
        Some(why) => {
            bad += 1;
            println!("DAMAGED  {}: {why}", v.object);
        }
    });
    match outcome {
        Ok(all) => {
            println!(
                "{}: {} chain(s), {} verified, {bad} damaged or incomplete",
                store.url(),
                all.len(),
                all.len() - bad
            );
            u8::from(bad > 0 || all.is_empty())
        }
        Err(e) => {
            eprintln!("verify failed: {e}");
            1
        }
    }
}

/// Runs `verify` or `inspect`; returns the exit code.
fn offline(command: Command, flags: &StoreFlags) -> u8 {
    let (dir, json, verify) = match command {
        Command::Verify {
            store: Some(url),
            flags: own,
            ..
        } => return verify_store(&own.or(flags), &url),
        Command::Verify { dir, .. } => (dir.expect("clap requires a dir"), false, true),
        Command::Inspect { dir, json } => (dir, json, false),
        Command::Serve(_) | Command::Client { .. } => unreachable!("run by main"),
        Command::Store(StoreCommand::Ls {
            url,
            json,
            flags: own,
        }) => return store_ls(&own.or(flags), &url, json),
        Command::Keygen => {
            return match flintlog::store::seal::StoreKey::generate() {
                Ok(key) => {
                    println!("{key}");
                    0
                }
                Err(e) => {
                    eprintln!("{e}");
                    1
                }
            };
        }
        Command::Restore {
            from,
            data_dir,
            node_id,
            as_node,
            index,
            to_offset,
            to_time,
            flags: own,
        } => {
            let point = match (index, to_offset, to_time) {
                (Some(i), _, _) => flintlog::store::Point::Chain(i),
                (_, Some(n), _) => flintlog::store::Point::Offset(n),
                (_, _, Some(t)) => match humantime::parse_rfc3339_weak(&t) {
                    Ok(at) => flintlog::store::Point::Time(
                        at.duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64),
                    ),
                    Err(e) => {
                        eprintln!(
                            "--to-time {t}: {e} (give an RFC 3339 time, e.g. \
                             2026-12-08T10:00:00Z)"
                        );
                        return 2;
                    }
                },
                _ => flintlog::store::Point::Newest,
            };
            let args = RestoreArgs {
                from,
                data_dir,
                node_id,
                as_node,
                point,
            };
            return restore(&own.or(flags), args);
        }
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

/// The node's configuration from its flags (its directory is set later); `Err` is the
/// exit code of a flag that cannot be used, already reported.
fn node_config(flags: &NodeFlags) -> Result<Config, u8> {
    let mut node = Config::new(PathBuf::new());
    node.fsync = flags.fsync;
    node.segment_bytes_max = flags.max_segment_bytes;
    node.payload_bytes_max = flags.max_payload_bytes;
    node.snapshot_send_bytes_per_sec = flags.snapshot_send_bytes_per_sec;
    node.snapshot_busy_bytes_per_sec = flags.snapshot_busy_bytes_per_sec;
    if let Some(url) = flags.snapshot_store.as_deref() {
        let mut c = match flags.store.config(url) {
            Ok(c) => c,
            Err(e) => {
                log::error!("{e}");
                return Err(2);
            }
        };
        c.retain = flags.store_retain;
        c.compact_after_upload = flags.compact_after_upload;
        c.ship_log = flags.ship_log && !flags.no_ship_log;
        if !(flags.ship_interval > 0.0 && flags.ship_interval <= 3600.0) {
            log::error!(
                "--ship-interval {}: give a number of seconds above 0, at most 3600",
                flags.ship_interval
            );
            return Err(2);
        }
        c.ship_interval = std::time::Duration::from_secs_f64(flags.ship_interval);
        c.upload_bytes_per_sec = flags.store_upload_bytes_per_sec;
        c.shutdown_wait = std::time::Duration::from_secs_f64(flags.store_shutdown_wait.max(0.0));
        node.snapshot_store = Some(c);
    }
    node.policy = Policy {
        snapshot_entries: flags.snapshot_entries,
        snapshot_bytes: flags.snapshot_bytes,
        snapshot_age_ms: flags.snapshot_age_ms,
        jitter_percent: flags.jitter_percent,
        auto_compact: flags.auto_compact,
        trailing_entries: flags.trailing_entries,
        retain_snapshots: flags.retain_snapshots,
        max_chain: flags.max_chain,
        delta_share_percent: flags.delta_share_percent,
    };

    Ok(node)
}

fn parse_fsync(text: &str) -> Result<FsyncPolicy, String> {
    FsyncPolicy::parse(text).map_err(|e| e.text().to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let default_level =
        if args.command.is_some() && !matches!(args.command, Some(Command::Serve(_))) {
            "warn"
        } else {
            "info"
        };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .target(env_logger::Target::Stderr)
        .format_timestamp_millis()
        .init();
    match args.command {
        Some(Command::Serve(a)) => return ExitCode::from(serve(*a)),
        Some(Command::Client {
            endpoints,
            json,
            timeout,
            tls_ca,
            tls_cert,
            tls_key,
            op,
        }) => {
            let tls = match tls_ca {
                Some(ca) => {
                    let identity = tls_cert.as_deref().zip(tls_key.as_deref());
                    match flintlog::transport::tls::client_config(&ca, identity) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            eprintln!("{e}");
                            return ExitCode::from(2);
                        }
                    }
                }
                None => None,
            };
            return ExitCode::from(client::run(endpoints, timeout, json, tls, op));
        }
        Some(command) => return ExitCode::from(offline(command, &args.node.store)),
        None => {}
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
    let node = match node_config(&args.node) {
        Ok(node) => node,
        Err(code) => return ExitCode::from(code),
    };
    let code = router::run(
        std::io::stdin(),
        std::io::stdout().lock(),
        RouterConfig::new(data_dir, node),
    );
    ExitCode::from(code as u8)
}

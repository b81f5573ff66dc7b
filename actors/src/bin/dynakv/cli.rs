//! The command line: every command and option, as clap parses them.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dynakv",
    version,
    about = "A Dynamo-style distributed key-value store"
)]
pub struct Cli {
    /// Client token, when the node requires one (security.client_token).
    #[arg(
        long,
        global = true,
        env = "DYNAKV_CLIENT_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Longest wait for a node's answer, connecting included (e.g. 2s, 1m):
    /// a node that stopped answering fails the command instead of hanging.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// PEM file of the CA to verify nodes against: talk TLS to nodes whose
    /// [tls] is on.
    #[arg(long, global = true, env = "DYNAKV_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM file of this client's certificate, for nodes that require one
    /// (tls.require_client_cert); with --tls-key.
    #[arg(long, global = true, env = "DYNAKV_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of this client's private key; with --tls-cert.
    #[arg(long, global = true, env = "DYNAKV_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Options of the commands that talk to a node.
#[derive(clap::Args, Clone)]
pub struct Target {
    /// Client address of the node to talk to, or a comma-separated list:
    /// then gets, puts and deletes go through the cluster client (it learns
    /// the ring from the first node that answers, sends each request to a
    /// replica of its key and fails over when a node is down), and other
    /// commands talk to the first node of the list that answers.
    #[arg(long, default_value = "127.0.0.1:7001", value_delimiter = ',')]
    pub node: Vec<String>,
    /// Cluster name the node must have (empty: any).
    #[arg(long, default_value = "")]
    pub cluster: String,
}

/// Options of the commands that name keys: the node and the namespace.
#[derive(clap::Args, Clone)]
pub struct KeyTarget {
    #[command(flatten)]
    pub target: Target,
    /// Namespace of the keys (`dynakv ns list` shows them).
    #[arg(long, default_value = "default")]
    pub ns: String,
}

impl KeyTarget {
    /// For a command that names no key: the namespace `default`.
    pub fn any(target: Target) -> KeyTarget {
        KeyTarget {
            target,
            ns: dynakv::namespace::DEFAULT.to_string(),
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Run one node from a configuration file.
    Serve {
        /// Configuration file, layered over the defaults (see conf/default.toml).
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Log format, overriding the configuration.
        #[arg(long, value_parser = ["text", "json"])]
        log_format: Option<String>,
    },
    /// Run a whole local cluster in this process.
    Dev {
        #[arg(long, default_value_t = 3)]
        nodes: u16,
        /// Client ports are P, P+1, ...; peer ports P+100, ...; metrics P+200, ...
        #[arg(long, default_value_t = 7001)]
        base_port: u16,
        #[arg(long, default_value = "data/dev")]
        data_dir: PathBuf,
    },
    /// Write a value; prints the new context.
    Put {
        key: String,
        /// The value; `-` reads it from standard input.
        #[arg(required_unless_present = "value_file", conflicts_with = "value_file")]
        value: Option<String>,
        /// Read the value from this file (`-`: standard input), for values
        /// too large for the command line or not text.
        #[arg(long)]
        value_file: Option<PathBuf>,
        /// Context from an earlier get (supersedes what that get returned).
        /// Base64url: it may begin with `-`.
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        context: String,
        #[arg(long)]
        w: Option<u8>,
        /// The value reads as not found this long after it is written
        /// (`90s`, `1h`; `0`: never), whatever the namespace's default.
        #[arg(long, allow_hyphen_values = true)]
        ttl: Option<String>,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Read a key: every sibling and the context.
    Get {
        key: String,
        #[arg(long)]
        r: Option<u8>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Add to a counter (a namespace of type counter); prints its value.
    Incr {
        key: String,
        /// How much (negative: subtract).
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
        #[arg(long)]
        w: Option<u8>,
        /// Print {"value": N}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Add members to a set (a namespace of type set).
    Sadd {
        key: String,
        #[arg(required = true)]
        members: Vec<String>,
        #[arg(long)]
        w: Option<u8>,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Remove members from a set: the adds of them that a read saw (the
    /// one whose context is given, else the coordinator's own read). An
    /// add concurrent with the remove survives it.
    Srem {
        key: String,
        #[arg(required = true)]
        members: Vec<String>,
        /// Context from an earlier smembers (base64url: it may begin with `-`).
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        context: String,
        #[arg(long)]
        w: Option<u8>,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// A set's members, one per line, and the context.
    Smembers {
        key: String,
        #[arg(long)]
        r: Option<u8>,
        /// Print {"members": [...], "context": C}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Write a map's register field (a namespace of type map).
    Hset {
        key: String,
        field: String,
        value: String,
        #[arg(long)]
        w: Option<u8>,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Add to a map's counter field.
    Hincr {
        key: String,
        field: String,
        /// How much (negative: subtract).
        #[arg(allow_negative_numbers = true)]
        by: i64,
        #[arg(long)]
        w: Option<u8>,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Add members to a map's set field.
    Hsadd {
        key: String,
        field: String,
        #[arg(required = true)]
        members: Vec<String>,
        #[arg(long)]
        w: Option<u8>,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Remove members from a map's set field: the adds of them that a read
    /// saw (the one whose context is given, else the coordinator's own).
    Hsrem {
        key: String,
        field: String,
        #[arg(required = true)]
        members: Vec<String>,
        /// Context from an earlier hgetall (base64url: it may begin with `-`).
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        context: String,
        #[arg(long)]
        w: Option<u8>,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Remove fields from a map: what a read saw of them (the one whose
    /// context is given, else the coordinator's own read).
    Hdel {
        key: String,
        #[arg(required = true)]
        fields: Vec<String>,
        /// Context from an earlier hgetall (base64url: it may begin with `-`).
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        context: String,
        #[arg(long)]
        w: Option<u8>,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// A map's fields, one `NAME = VALUE` per line, and the context.
    Hgetall {
        key: String,
        #[arg(long)]
        r: Option<u8>,
        /// Print {"fields": {...}, "context": C}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Read many keys in one request: each key's siblings and context, or
    /// its error.
    Mget {
        #[arg(required = true)]
        keys: Vec<String>,
        #[arg(long)]
        r: Option<u8>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// List live keys, a page at a time (each partition from one replica).
    List {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Keys per page (1 to 10000).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// The token the previous page printed (it may begin with `-`).
        #[arg(long, allow_hyphen_values = true)]
        after: Option<String>,
        /// Print {"keys": [...], "next": TOKEN or null}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Delete a key (writes a tombstone); prints the new context.
    Delete {
        key: String,
        /// Context from an earlier get (base64url: it may begin with `-`).
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        context: String,
        #[arg(long)]
        w: Option<u8>,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// This node's local copy of a key, with dots, without quorum.
    Inspect {
        key: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// The cluster as this node sees it.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Load a cluster and report throughput and latency percentiles.
    Bench {
        /// Client addresses of some of the cluster's nodes (comma-separated):
        /// the cluster client learns the rest from the first that answers.
        #[arg(long, default_value = "127.0.0.1:7001", value_delimiter = ',')]
        node: Vec<String>,
        /// Where each request goes: preference (a replica of its key),
        /// preference-spread, round-robin or single (all to the first node).
        #[arg(long, default_value = "preference")]
        routing: dynakv::routing::Routing,
        /// Cluster name the nodes must have (empty: any).
        #[arg(long, default_value = "")]
        cluster: String,
        /// Namespace of the keys (it must exist).
        #[arg(long, default_value = "default")]
        ns: String,
        /// Concurrent clients (sharing one cluster client, about one
        /// connection each in all).
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// How long to run, e.g. 20s, 1m30s.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Fill values with random bytes, which do not compress (default:
        /// 'x' after a 12-byte stamp, as redis-benchmark's are 'x').
        #[arg(long)]
        random_values: bool,
        /// Keys are bench-0 .. bench-(K-1).
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        /// Operation weights, e.g. get=50,put=50 (get, put, delete; incr
        /// and sadd on the same key names in the namespaces bench-counters
        /// and bench-sets, created if absent).
        #[arg(long, default_value = "get=50,put=50")]
        mix: dynakv_actors::bench::Mix,
        #[arg(long)]
        r: Option<u8>,
        #[arg(long)]
        w: Option<u8>,
        /// Write every key once before the timed run.
        #[arg(long)]
        preload: bool,
        /// Read-your-writes check: clients read their own keys and count
        /// reads that miss their last acknowledged write.
        #[arg(long)]
        check: bool,
        /// Offer this many operations per second in total, each client on
        /// a fixed schedule, timing late requests from when they were due
        /// (default: each client sends as soon as its last answer came).
        #[arg(long)]
        rate: Option<u64>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create, alter, show, list or drop namespaces (each with its own N,
    /// R, W, TTL and limits). Any node; the change reaches every node.
    Ns {
        #[command(subcommand)]
        command: NsCommand,
    },
    /// Change the cluster's membership.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Back up one node's storage (a consistent snapshot: keys with their
    /// siblings and tombstones, hints, membership view) into a directory.
    Backup {
        /// Client address of the node to back up.
        #[arg(long, default_value = "127.0.0.1:7001")]
        node: String,
        /// Directory to write the backup to (created if missing; must not
        /// hold a backup yet).
        #[arg(long)]
        out: PathBuf,
        /// Cluster name the node must have (empty: any).
        #[arg(long, default_value = "")]
        cluster: String,
        /// Most bytes per second to read from the node (0: no limit), so
        /// the backup leaves it room for its clients.
        #[arg(long, default_value_t = 50 << 20)]
        max_bytes_per_sec: u64,
    },
    /// Prepare a node's data directory from a backup (checked whole first).
    /// Start the node on it with its old node.id: it writes as a fresh
    /// writer, and what the cluster wrote since comes back by anti-entropy.
    Restore {
        /// Backup directory (`dynakv backup --out`).
        #[arg(long)]
        from: PathBuf,
        /// Data directory to create; must be missing or empty.
        #[arg(long)]
        data_dir: PathBuf,
        /// The node's configuration file, for its storage settings and
        /// how long deletes are kept (anti_entropy.keep_deleted_ms); the
        /// backup must be of the node it names.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Restore a backup older than deletes are kept, though values
        /// deleted since it was taken may come back.
        #[arg(long)]
        force: bool,
    },
    /// Development TLS certificates (`dynakv certs init DIR`).
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Inject network faults (the node needs testing.fault_injection = true).
    Fault {
        #[command(subcommand)]
        command: FaultCommand,
    },
}

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Make a local CA (DIR/ca.pem, ca-key.pem) and a certificate and key
    /// per node (DIR/NODE.pem, NODE-key.pem) and for clients (client.pem,
    /// client-key.pem), each valid for localhost, 127.0.0.1, ::1, its name
    /// and --hosts. For development: production clusters use their own CA.
    Init {
        dir: PathBuf,
        /// Node names, comma-separated.
        #[arg(long, default_value = "node1,node2,node3", value_delimiter = ',')]
        nodes: Vec<String>,
        /// More host names or addresses every certificate is valid for.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Days the certificates are valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

#[derive(Subcommand)]
pub enum FaultCommand {
    /// Drop all traffic between the node and these peers until healed.
    Partition {
        /// Node ids of the peers to cut off (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        from: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Clear every fault on the node.
    Heal {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Make the node at --node join the cluster of the node at --seed.
    Join {
        /// Client address of the node that joins.
        #[arg(long)]
        node: String,
        /// Peer address of any member of the cluster to join.
        #[arg(long)]
        seed: String,
    },
    /// Make the node at --node hand its partitions off and leave.
    Leave {
        /// Client address of the node that leaves.
        #[arg(long)]
        node: String,
    },
    /// Drop a dead node from the ring; its data is rebuilt from the other replicas.
    Remove {
        /// The dead node: its id, or its peer or client address.
        #[arg(long)]
        node: String,
        /// Client address of a live member to ask.
        #[arg(long, default_value = "127.0.0.1:7001")]
        via: String,
    },
    /// Double the number of partitions, online: each becomes its two halves,
    /// owned and replicated as it was, so no data moves.
    Split {
        /// Client address of a member to ask.
        #[arg(long, default_value = "127.0.0.1:7001")]
        via: String,
    },
    /// Show what a change would move, without changing anything.
    Plan {
        /// A node joining: ID or ID:WEIGHT.
        #[arg(long, group = "change")]
        join: Option<String>,
        /// A node leaving (or being removed): ID.
        #[arg(long, group = "change")]
        leave: Option<String>,
        /// A new weight: ID=WEIGHT.
        #[arg(long, group = "change")]
        weight: Option<String>,
        /// Doubling the number of partitions.
        #[arg(long, group = "change")]
        split: bool,
        /// Client address of a member to ask.
        #[arg(long, default_value = "127.0.0.1:7001")]
        via: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum NsCommand {
    /// Create a namespace; settings not given are the default namespace's.
    Create {
        name: String,
        #[command(flatten)]
        settings: NsSettings,
        #[command(flatten)]
        target: Target,
    },
    /// Change some settings of a namespace.
    Alter {
        name: String,
        #[command(flatten)]
        settings: NsSettings,
        #[command(flatten)]
        target: Target,
    },
    /// One namespace's settings.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Every namespace, `default` first.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Drop a namespace; its keys are removed in the background.
    Drop {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

/// A namespace's settings on the command line; each one left out keeps
/// its value (a create: the default namespace's). Values may start with
/// `-`, so a negative one is refused by its own parser, naming the field.
#[derive(clap::Args, Clone)]
pub struct NsSettings {
    /// Replicas of each key.
    #[arg(long, allow_hyphen_values = true)]
    pub n: Option<u8>,
    /// Default read quorum.
    #[arg(long, allow_hyphen_values = true)]
    pub r: Option<u8>,
    /// Default write quorum.
    #[arg(long, allow_hyphen_values = true)]
    pub w: Option<u8>,
    /// Default time to live of a write: 0 (none), 90s, 1h, 7d...
    #[arg(long, allow_hyphen_values = true)]
    pub ttl: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pub max_siblings: Option<u32>,
    #[arg(long, allow_hyphen_values = true)]
    pub max_value_bytes: Option<u32>,
    /// What values are: blob (opaque values, siblings when concurrent),
    /// counter, set or map (data types: changed by operations, read as one
    /// merged value). It cannot change once created.
    #[arg(long = "type", allow_hyphen_values = true)]
    pub kind: Option<String>,
    /// A map's registers: mv (keep concurrent values, the default) or lww
    /// (the latest write wins).
    #[arg(long, allow_hyphen_values = true)]
    pub register: Option<String>,
}

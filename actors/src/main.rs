//! `dynakv`: run a node, run a whole local cluster, or talk to one.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use clap::{Parser, Subcommand};
use dynakv::config::{Config, LogFormat};
use dynakv::handoff::{PlanChange, PlanReport};
use dynakv::wire::{LocalCopy, NetFault, StatusReport};
use dynakv::{Error, NodeId, Result};
use dynakv_actors::client::{Client, Options};
use dynakv_actors::events::Event;
use dynakv_actors::{bench, dev, logging, node};
use serde_json::json;

// glibc malloc's arena locking and consolidation showed up at the top of the
// server's profile under load; mimalloc keeps per-thread free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Writes to stdout. A reader that went away (`dynakv status | head -3`)
/// ends the command quietly instead of with a panic and a backtrace (Rust
/// ignores SIGPIPE, so `println!` panics on a closed pipe); any other write
/// error ends it with a message and a failure.
fn emit(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(text) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: writing to stdout: {e}");
            std::process::exit(1);
        }
        std::process::exit(0);
    }
}

/// `println!` through `emit`.
macro_rules! say {
    ($($arg:tt)*) => {
        emit(format_args!("{}\n", format_args!($($arg)*)))
    };
}

#[derive(Parser)]
#[command(
    name = "dynakv",
    version,
    about = "A Dynamo-style distributed key-value store"
)]
struct Cli {
    /// Client token, when the node requires one (security.client_token).
    #[arg(
        long,
        global = true,
        env = "DYNAKV_CLIENT_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Longest wait for a node's answer, connecting included (e.g. 2s, 1m):
    /// a node that stopped answering fails the command instead of hanging.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    #[command(subcommand)]
    command: Command,
}

/// Options of the commands that talk to a node.
#[derive(clap::Args, Clone)]
struct Target {
    /// Client address of the node to talk to.
    #[arg(long, default_value = "127.0.0.1:7001")]
    node: String,
    /// Cluster name the node must have (empty: any).
    #[arg(long, default_value = "")]
    cluster: String,
}

#[derive(Subcommand)]
enum Command {
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
        #[arg(long, default_value = "")]
        context: String,
        #[arg(long)]
        w: Option<u8>,
        #[command(flatten)]
        target: Target,
    },
    /// Read a key: every sibling and the context.
    Get {
        key: String,
        #[arg(long)]
        r: Option<u8>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a key (writes a tombstone); prints the new context.
    Delete {
        key: String,
        #[arg(long, default_value = "")]
        context: String,
        #[arg(long)]
        w: Option<u8>,
        #[command(flatten)]
        target: Target,
    },
    /// This node's local copy of a key, with dots, without quorum.
    Inspect {
        key: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
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
        /// Client addresses of the nodes to spread clients over (comma-separated).
        #[arg(long, default_value = "127.0.0.1:7001", value_delimiter = ',')]
        node: Vec<String>,
        /// Cluster name the nodes must have (empty: any).
        #[arg(long, default_value = "")]
        cluster: String,
        /// Concurrent clients, each with its own connection.
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// How long to run, e.g. 20s, 1m30s.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Keys are bench-0 .. bench-(K-1).
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        /// Operation weights, e.g. get=50,put=50 (get, put, delete).
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
    /// Change the cluster's membership.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Inject network faults (the node needs testing.fault_injection = true).
    Fault {
        #[command(subcommand)]
        command: FaultCommand,
    },
}

#[derive(Subcommand)]
enum FaultCommand {
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
enum ClusterCommand {
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
        /// Client address of a member to ask.
        #[arg(long, default_value = "127.0.0.1:7001")]
        via: String,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve { config, log_format } => serve(config, log_format),
        Command::Dev {
            nodes,
            base_port,
            data_dir,
        } => {
            logging::init("info", LogFormat::Text);
            actix::System::new().block_on(dev::run(nodes, base_port, data_dir))
        }
        Command::Bench {
            node,
            cluster,
            clients,
            duration,
            value_size,
            keys,
            mix,
            r,
            w,
            preload,
            check,
            rate,
            json,
        } => {
            logging::init("warn", LogFormat::Text);
            let spec = bench::Spec {
                nodes: node,
                cluster,
                token: cli.token,
                clients,
                duration,
                value_size,
                keys,
                mix,
                r,
                w,
                preload,
                check,
                rate,
                progress: !json && std::io::stderr().is_terminal(),
            };
            actix::System::new().block_on(run_bench(spec, json))
        }
        command => {
            logging::init("warn", LogFormat::Text);
            let options = Options {
                token: cli.token,
                timeout: cli.timeout,
                ..Options::default()
            };
            actix::System::new().block_on(client_command(command, options))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: Option<PathBuf>, log_format: Option<String>) -> Result<()> {
    let config = Config::load(path.as_deref())?;
    let format = match log_format.as_deref() {
        Some("json") => LogFormat::Json,
        Some(_) => LogFormat::Text,
        None => config.log.format,
    };
    logging::init(&config.log.level, format);
    actix::System::new().block_on(async move {
        let listeners = node::Listeners::bind(&config)?;
        let handle = node::start_here(&config, listeners)?;
        let mut events = handle.events.subscribe();
        let left = async move {
            while let Ok(event) = events.recv().await {
                if matches!(event, Event::Left { .. }) {
                    return;
                }
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = dev::wait_for_signal() => {}
            _ = left => eprintln!("this node has left the cluster; stopping"),
        }
        handle.stop().await
    })
}

async fn run_bench(spec: bench::Spec, as_json: bool) -> Result<()> {
    let report = bench::run(spec).await?;
    if as_json {
        say!("{}", report.to_json());
    } else {
        emit(format_args!("{}", report.to_text()));
    }
    Ok(())
}

fn context_arg(text: &str) -> Result<Vec<u8>> {
    B64.decode(text.trim())
        .map_err(|e| Error::InvalidContext(format!("--context is not base64url: {e}")))
}

/// A value as text when it is UTF-8, else as base64.
fn show(value: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(value) {
        Ok(s) => json!(s),
        Err(_) => json!({ "base64": B64.encode(value) }),
    }
}

/// The value of `put`: the argument, or a file or standard input (`-`).
fn value_arg(value: Option<String>, file: Option<PathBuf>) -> Result<Vec<u8>> {
    use std::io::Read;
    let from = match (value, file) {
        (Some(v), None) if v != "-" => return Ok(v.into_bytes()),
        (Some(_), None) => PathBuf::from("-"),
        (None, Some(path)) => path,
        _ => {
            return Err(Error::InvalidRequest(
                "give the value or --value-file, not both".into(),
            ));
        }
    };
    if from.as_os_str() == "-" {
        let mut value = Vec::new();
        std::io::stdin()
            .read_to_end(&mut value)
            .map_err(|e| Error::InvalidRequest(format!("reading the value from stdin: {e}")))?;
        return Ok(value);
    }
    std::fs::read(&from).map_err(|e| {
        Error::InvalidRequest(format!("reading the value from {}: {e}", from.display()))
    })
}

async fn client_command(command: Command, options: Options) -> Result<()> {
    let (target, run): (Target, _) = match command {
        Command::Put {
            key,
            value,
            value_file,
            context,
            w,
            target,
        } => (
            target,
            Op::Put(
                key,
                value_arg(value, value_file)?,
                context_arg(&context)?,
                w,
            ),
        ),
        Command::Get {
            key,
            r,
            json,
            target,
        } => (target, Op::Get(key, r, json)),
        Command::Delete {
            key,
            context,
            w,
            target,
        } => (target, Op::Delete(key, context_arg(&context)?, w)),
        Command::Inspect { key, json, target } => (target, Op::Inspect(key, json)),
        Command::Status { json, target } => (target, Op::Status(json)),
        Command::Fault {
            command: FaultCommand::Partition { from, target },
        } => (target, Op::Fault(NetFault::Partition { peers: from })),
        Command::Fault {
            command: FaultCommand::Heal { target },
        } => (target, Op::Fault(NetFault::Heal)),
        Command::Cluster { command } => return cluster(command, options).await,
        Command::Serve { .. } | Command::Dev { .. } | Command::Bench { .. } => {
            unreachable!("handled in main")
        }
    };
    let options = Options {
        cluster: target.cluster,
        ..options
    };
    let client = Client::connect_with(&target.node, options).await?;
    match run {
        Op::Put(key, value, ctx, w) => {
            let written = client.put(key.as_bytes(), &value, &ctx, w).await?;
            say!("{}", B64.encode(&written.context));
            if !written.others.is_empty() {
                eprintln!(
                    "note: {} concurrent sibling(s) exist; `get` and write back to resolve",
                    written.others.len()
                );
            }
        }
        Op::Delete(key, ctx, w) => {
            let written = client.delete(key.as_bytes(), &ctx, w).await?;
            say!("{}", B64.encode(&written.context));
        }
        Op::Get(key, r, as_json) => {
            let read = client.get(key.as_bytes(), r).await?;
            let context = B64.encode(&read.context);
            if as_json {
                let values: Vec<_> = read.values.iter().map(|v| show(v)).collect();
                say!("{}", json!({ "values": values, "context": context }));
            } else {
                if read.values.is_empty() {
                    say!("(not found)");
                }
                for v in &read.values {
                    match show(v) {
                        serde_json::Value::String(s) => say!("{s}"),
                        other => say!("{other}"),
                    }
                }
                say!("context: {context}");
            }
        }
        Op::Inspect(key, as_json) => print_local(&client.inspect(key.as_bytes()).await?, as_json),
        Op::Status(as_json) => print_status(&client.status().await?, as_json)?,
        Op::Fault(fault) => say!("{}", client.fault(fault).await?),
    }
    Ok(())
}

async fn cluster(command: ClusterCommand, options: Options) -> Result<()> {
    let connect = async |addr: &str| Client::connect_with(addr, options.clone()).await;
    let message = match command {
        ClusterCommand::Join { node, seed } => connect(&node).await?.join(&seed).await?,
        ClusterCommand::Leave { node } => connect(&node).await?.leave().await?,
        ClusterCommand::Remove { node, via } => connect(&via).await?.remove(&node).await?,
        ClusterCommand::Plan {
            join,
            leave,
            weight,
            via,
            json,
        } => {
            let change = plan_change(join, leave, weight)?;
            let report = connect(&via).await?.plan(change).await?;
            return print_plan(&report, json);
        }
    };
    say!("{message}");
    Ok(())
}

fn plan_change(
    join: Option<String>,
    leave: Option<String>,
    weight: Option<String>,
) -> Result<PlanChange> {
    let id =
        |s: &str| NodeId::new(s).map_err(|e| Error::InvalidRequest(format!("bad node id: {e}")));
    let number = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| Error::InvalidRequest(format!("bad weight {s:?}")))
    };
    match (join, leave, weight) {
        (Some(j), None, None) => {
            let (node, w) = j.split_once(':').unwrap_or((&j, "1"));
            Ok(PlanChange::Join {
                node: id(node)?,
                weight: number(w)?,
            })
        }
        (None, Some(l), None) => Ok(PlanChange::Leave { node: id(&l)? }),
        (None, None, Some(w)) => {
            let (node, w) = w
                .split_once('=')
                .ok_or_else(|| Error::InvalidRequest("--weight takes ID=WEIGHT".into()))?;
            Ok(PlanChange::Weight {
                node: id(node)?,
                weight: number(w)?,
            })
        }
        _ => Err(Error::InvalidRequest(
            "give one of --join, --leave, --weight".into(),
        )),
    }
}

fn print_plan(report: &PlanReport, as_json: bool) -> Result<()> {
    if as_json {
        let text = serde_json::to_string(report).map_err(|e| Error::Internal(e.to_string()))?;
        say!("{text}");
        return Ok(());
    }
    say!("{} partitions would change owner", report.moves);
    say!(
        "{:<16} {:>9} {:>14} {:>9} {:>14}",
        "node",
        "receives",
        "bytes",
        "sends",
        "bytes"
    );
    for r in &report.rows {
        say!(
            "{:<16} {:>9} {:>14} {:>9} {:>14}",
            r.node.as_str(),
            r.receive,
            r.receive_bytes,
            r.send,
            r.send_bytes
        );
    }
    Ok(())
}

enum Op {
    Put(String, Vec<u8>, Vec<u8>, Option<u8>),
    Get(String, Option<u8>, bool),
    Delete(String, Vec<u8>, Option<u8>),
    Inspect(String, bool),
    Status(bool),
    Fault(NetFault),
}

fn print_local(local: &LocalCopy, as_json: bool) {
    let siblings: Vec<_> = local
        .siblings
        .iter()
        .map(|(actor, counter, value)| {
            json!({
                "dot": format!("{actor:016x}:{counter}"),
                "value": value.as_deref().map(show),
            })
        })
        .collect();
    if as_json {
        say!(
            "{}",
            json!({
                "node": local.node.as_str(),
                "partition": local.partition,
                "siblings": siblings,
                "context": B64.encode(&local.context),
            })
        );
        return;
    }
    say!("node {} partition {}", local.node, local.partition);
    if local.siblings.is_empty() {
        say!("(no local copy)");
    }
    for (actor, counter, value) in &local.siblings {
        match value {
            Some(v) => say!("{actor:016x}:{counter}  {}", show(v)),
            None => say!("{actor:016x}:{counter}  (tombstone)"),
        }
    }
}

/// Bytes as B, KiB, MiB, GiB or TiB with one decimal.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn print_status(s: &StatusReport, as_json: bool) -> Result<()> {
    if as_json {
        let text = serde_json::to_string(s).map_err(|e| Error::Internal(e.to_string()))?;
        say!("{text}");
        return Ok(());
    }
    say!(
        "cluster {}  (asked {}, {} partitions, N={})",
        s.cluster,
        s.node,
        s.partitions,
        s.n
    );
    say!(
        "{:<16} {:<8} {:<8} {:>10} {:>10} {:>6} {:>8} {:>8} {:>6}  {:<21} {:<21}",
        "member",
        "state",
        "liveness",
        "load",
        "keys",
        "owns",
        "replicas",
        "hints",
        "weight",
        "peer",
        "client"
    );
    let total: u32 = s.members.iter().map(|m| m.owned).sum();
    for m in &s.members {
        let share = if total == 0 {
            0.0
        } else {
            100.0 * f64::from(m.owned) / f64::from(total)
        };
        let (load, keys) = match m.load {
            Some(l) => (human_bytes(l.bytes), l.keys.to_string()),
            None => ("?".into(), "?".into()),
        };
        say!(
            "{:<16} {:<8} {:<8} {:>10} {:>10} {:>5.1}% {:>8} {:>8} {:>6}  {:<21} {:<21}",
            m.node.as_str(),
            m.state,
            m.liveness,
            load,
            keys,
            share,
            m.replicated,
            m.hints_pending,
            m.weight,
            m.peer_addr,
            m.client_addr
        );
    }
    if s.members.iter().any(|m| m.load.is_none()) {
        say!("(? = the member did not answer; hints count only members that did)");
    }
    for note in &s.notes {
        say!("note: {note}");
    }
    Ok(())
}

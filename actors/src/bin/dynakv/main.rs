//! `dynakv`: run a node, run a whole local cluster, or talk to one. The
//! command line is `cli.rs`; what commands print is `output.rs`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use clap::Parser;
use dynakv::config::{Config, LogFormat};
use dynakv::namespace::parse_ttl;
use dynakv::wire::NetFault;
use dynakv::{Error, Result};
use dynakv_actors::client::{Client, Options, Read};
use dynakv_actors::events::Event;
use dynakv_actors::tls::ClientTls;
use dynakv_actors::{backup, bench, certs, dev, logging, node};
use serde_json::json;

#[macro_use]
mod output;
mod admin;
mod cli;

use cli::{CertsCommand, Cli, Command, FaultCommand, KeyTarget};
use output::{emit, print_local, print_reads, print_status, print_typed, show, text};

// glibc malloc's arena locking and consolidation showed up at the top of the
// server's profile under load; mimalloc keeps per-thread free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let tls = client_tls(&cli);
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
            ns,
            clients,
            duration,
            value_size,
            random_values,
            keys,
            mix,
            r,
            w,
            preload,
            check,
            rate,
            json,
            routing,
        } => {
            logging::init("warn", LogFormat::Text);
            let spec = bench::Spec {
                nodes: node,
                routing,
                cluster,
                token: cli.token,
                tls: None,
                namespace: ns,
                clients,
                duration,
                value_size,
                random_values,
                keys,
                mix,
                r,
                w,
                preload,
                check,
                rate,
                progress: !json && std::io::stderr().is_terminal(),
            };
            tls.and_then(|tls| {
                let spec = bench::Spec { tls, ..spec };
                actix::System::new().block_on(run_bench(spec, json))
            })
        }
        Command::Certs {
            command:
                CertsCommand::Init {
                    dir,
                    nodes,
                    hosts,
                    days,
                },
        } => certs::init(&dir, &nodes, &hosts, days).map(|files| {
            for file in files {
                say!("wrote {}", file.display());
            }
        }),
        Command::Restore {
            from,
            data_dir,
            config,
            force,
        } => restore(&from, &data_dir, config, force),
        command => {
            logging::init("warn", LogFormat::Text);
            tls.and_then(|tls| {
                let options = Options {
                    token: cli.token,
                    timeout: cli.timeout,
                    tls,
                    ..Options::default()
                };
                actix::System::new().block_on(client_command(command, options))
            })
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

/// The client's TLS, from --tls-ca (and --tls-cert, --tls-key).
fn client_tls(cli: &Cli) -> Result<Option<ClientTls>> {
    let identity = cli.tls_cert.as_deref().zip(cli.tls_key.as_deref());
    match &cli.tls_ca {
        Some(ca) => ClientTls::load(ca, identity).map(Some),
        None if identity.is_some() => Err(Error::InvalidRequest(
            "--tls-cert and --tls-key need --tls-ca (the CA to verify the node against)".into(),
        )),
        None => Ok(None),
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

fn restore(
    from: &std::path::Path,
    data_dir: &std::path::Path,
    config: Option<PathBuf>,
    force: bool,
) -> Result<()> {
    let same_node = config.is_some();
    let config = Config::load(config.as_deref())?;
    let m = backup::restore(from, data_dir, &config, same_node, force)?;
    say!(
        "restored node {}'s backup (cluster {:?}, taken at {} ms since the epoch) into {}: \
         {} keys, {} hints; start it with node.id = {:?}",
        m.node,
        m.cluster,
        m.taken_ms,
        data_dir.display(),
        m.keys,
        m.hints,
        m.node
    );
    Ok(())
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

fn token_arg(text: &str) -> Result<Vec<u8>> {
    B64.decode(text.trim())
        .map_err(|e| Error::InvalidRequest(format!("--after is not a token `list` printed: {e}")))
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
    let (KeyTarget { target, ns }, run): (KeyTarget, _) = match command {
        Command::Put {
            key,
            value,
            value_file,
            context,
            w,
            ttl,
            target,
        } => (
            target,
            Op::Put(
                key,
                value_arg(value, value_file)?,
                context_arg(&context)?,
                w,
                ttl.as_deref().map(parse_ttl).transpose()?,
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
        Command::Mget {
            keys,
            r,
            json,
            target,
        } => (target, Op::Mget(keys, r, json)),
        Command::List {
            prefix,
            limit,
            after,
            json,
            target,
        } => {
            let after = after.as_deref().map(token_arg).transpose()?;
            (target, Op::List(prefix, limit, after, json))
        }
        Command::Incr {
            key,
            by,
            w,
            json,
            target,
        } => (target, Op::Incr(key, by, w, json)),
        Command::Sadd {
            key,
            members,
            w,
            target,
        } => (target, Op::Sadd(key, members, w)),
        Command::Srem {
            key,
            members,
            context,
            w,
            target,
        } => (target, Op::Srem(key, members, context_arg(&context)?, w)),
        Command::Smembers {
            key,
            r,
            json,
            target,
        }
        | Command::Hgetall {
            key,
            r,
            json,
            target,
        } => (target, Op::Get(key, r, json)),
        Command::Hset {
            key,
            field,
            value,
            w,
            target,
        } => (target, Op::Hset(key, field, value, w)),
        Command::Hincr {
            key,
            field,
            by,
            w,
            target,
        } => (target, Op::Hincr(key, field, by, w)),
        Command::Hdel {
            key,
            fields,
            context,
            w,
            target,
        } => (target, Op::Hdel(key, fields, context_arg(&context)?, w)),
        Command::Hsadd {
            key,
            field,
            members,
            w,
            target,
        } => (target, Op::Hsadd(key, field, members, w)),
        Command::Hsrem {
            key,
            field,
            members,
            context,
            w,
            target,
        } => (
            target,
            Op::Hsrem(key, field, members, context_arg(&context)?, w),
        ),
        Command::Inspect { key, json, target } => (target, Op::Inspect(key, json)),
        Command::Status { json, target } => (KeyTarget::any(target), Op::Status(json)),
        Command::Fault {
            command: FaultCommand::Partition { from, target },
        } => (
            KeyTarget::any(target),
            Op::Fault(NetFault::Partition { peers: from }),
        ),
        Command::Fault {
            command: FaultCommand::Heal { target },
        } => (KeyTarget::any(target), Op::Fault(NetFault::Heal)),
        Command::Cluster { command } => return admin::cluster(command, options).await,
        Command::Backup {
            node,
            out,
            cluster,
            max_bytes_per_sec,
        } => {
            let client = Client::connect_with(&node, Options { cluster, ..options }).await?;
            let m = backup::take(&client, &out, max_bytes_per_sec).await?;
            say!(
                "backed up node {} of cluster {:?} to {}: {} keys, {} hints, {} bytes (taken at {} ms since the epoch)",
                m.node,
                m.cluster,
                out.display(),
                m.keys,
                m.hints,
                m.bytes,
                m.taken_ms
            );
            return Ok(());
        }
        Command::Ns { command } => return admin::namespaces(command, options).await,
        Command::Serve { .. }
        | Command::Dev { .. }
        | Command::Bench { .. }
        | Command::Restore { .. }
        | Command::Certs { .. } => {
            unreachable!("handled in main")
        }
    };
    let options = Options {
        cluster: target.cluster,
        ..options
    };
    let client = match target.node.as_slice() {
        [] => return Err(Error::InvalidRequest("--node needs an address".into())),
        [node] => Client::connect_with(node, options).await?,
        nodes if run.routes() => {
            let seeds: Vec<&str> = nodes.iter().map(String::as_str).collect();
            Client::connect_cluster(&seeds, options).await?
        }
        nodes => first_answering(nodes, options).await?,
    };
    let client = client.in_namespace(&ns)?;
    match run {
        Op::Put(key, value, ctx, w, ttl) => {
            let written = match ttl {
                Some(ms) => {
                    let ttl = std::time::Duration::from_millis(ms);
                    client
                        .put_with_ttl(key.as_bytes(), &value, &ctx, w, ttl)
                        .await?
                }
                None => client.put(key.as_bytes(), &value, &ctx, w).await?,
            };
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
        Op::Incr(key, by, w, as_json) => {
            let value = client.incr(key.as_bytes(), by, w).await?;
            if as_json {
                say!("{}", json!({ "value": value }));
            } else {
                say!("{value}");
            }
        }
        Op::Sadd(key, members, w) => {
            let members: Vec<&[u8]> = members.iter().map(|m| m.as_bytes()).collect();
            client.sadd(key.as_bytes(), &members, w).await?;
        }
        Op::Srem(key, members, ctx, w) => {
            let members: Vec<&[u8]> = members.iter().map(|m| m.as_bytes()).collect();
            client.srem(key.as_bytes(), &members, &ctx, w).await?;
        }
        Op::Hset(key, field, value, w) => {
            let (key, field) = (key.as_bytes(), field.as_bytes());
            client.hset(key, field, value.as_bytes(), w).await?;
        }
        Op::Hincr(key, field, by, w) => {
            client
                .hincr(key.as_bytes(), field.as_bytes(), by, w)
                .await?;
        }
        Op::Hdel(key, fields, ctx, w) => {
            let fields: Vec<&[u8]> = fields.iter().map(|f| f.as_bytes()).collect();
            client.hdel(key.as_bytes(), &fields, &ctx, w).await?;
        }
        Op::Hsadd(key, field, members, w) => {
            let members: Vec<&[u8]> = members.iter().map(|m| m.as_bytes()).collect();
            client
                .hsadd(key.as_bytes(), field.as_bytes(), &members, w)
                .await?;
        }
        Op::Hsrem(key, field, members, ctx, w) => {
            let members: Vec<&[u8]> = members.iter().map(|m| m.as_bytes()).collect();
            client
                .hsrem(key.as_bytes(), field.as_bytes(), &members, &ctx, w)
                .await?;
        }
        Op::Get(key, r, as_json) => {
            let read = match client.read(key.as_bytes(), r).await? {
                Read::Values(read) => read,
                Read::Typed(typed) => {
                    print_typed(&typed, as_json);
                    return Ok(());
                }
            };
            let context = B64.encode(&read.context);
            if as_json {
                let values: Vec<_> = read.values.iter().map(|v| show(v)).collect();
                say!("{}", json!({ "values": values, "context": context }));
            } else {
                if read.values.is_empty() {
                    say!("(not found)");
                }
                for v in &read.values {
                    say!("{}", text(v));
                }
                say!("context: {context}");
            }
        }
        Op::Mget(keys, r, as_json) => {
            let names: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
            let reads = client.get_many(&names, r).await?;
            print_reads(&keys, &reads, as_json);
            if let Some(Err(e)) = reads.iter().find(|r| r.is_err()) {
                return Err(Error::Unavailable(format!("some keys were not read: {e}")));
            }
        }
        Op::List(prefix, limit, after, as_json) => {
            let page = client
                .list(prefix.as_bytes(), limit, after.as_deref())
                .await?;
            let next = page.next.as_ref().map(|t| B64.encode(t));
            if as_json {
                let keys: Vec<_> = page.keys.iter().map(|k| show(k)).collect();
                say!("{}", json!({ "keys": keys, "next": next }));
            } else {
                for k in &page.keys {
                    say!("{}", text(k));
                }
                if let Some(next) = next {
                    say!("next: {next}");
                }
            }
        }
        Op::Inspect(key, as_json) => print_local(&client.inspect(key.as_bytes()).await?, as_json),
        Op::Status(as_json) => print_status(&client.status().await?, as_json)?,
        Op::Fault(fault) => say!("{}", client.fault(fault).await?),
    }
    Ok(())
}

/// A client of the first node of `nodes` that answers (for commands about
/// one node, given a list).
async fn first_answering(nodes: &[String], options: Options) -> Result<Client> {
    if nodes.is_empty() {
        return Err(Error::InvalidRequest("--node needs an address".into()));
    }
    let mut refused = Vec::new();
    for node in nodes {
        match Client::connect_with(node, options.clone()).await {
            Ok(client) => return Ok(client),
            Err(e) => refused.push(format!("{node}: {e}")),
        }
    }
    Err(Error::Unavailable(format!(
        "no node answered ({})",
        refused.join("; ")
    )))
}

enum Op {
    /// Key, value, context, W and TTL in ms.
    Put(String, Vec<u8>, Vec<u8>, Option<u8>, Option<u64>),
    Get(String, Option<u8>, bool),
    Mget(Vec<String>, Option<u8>, bool),
    List(String, u32, Option<Vec<u8>>, bool),
    Delete(String, Vec<u8>, Option<u8>),
    Inspect(String, bool),
    Status(bool),
    Fault(NetFault),
    /// Key, amount, W, JSON.
    Incr(String, i64, Option<u8>, bool),
    /// Key, members, W.
    Sadd(String, Vec<String>, Option<u8>),
    /// Key, members, context, W.
    Srem(String, Vec<String>, Vec<u8>, Option<u8>),
    /// Key, field, value, W.
    Hset(String, String, String, Option<u8>),
    /// Key, field, amount, W.
    Hincr(String, String, i64, Option<u8>),
    /// Key, fields, context, W.
    Hdel(String, Vec<String>, Vec<u8>, Option<u8>),
    /// Key, field, members, W.
    Hsadd(String, String, Vec<String>, Option<u8>),
    /// Key, field, members, context, W.
    Hsrem(String, String, Vec<String>, Vec<u8>, Option<u8>),
}

impl Op {
    /// Whether the command is about a key, which any node of a list can
    /// serve (the others are about the one node they name).
    fn routes(&self) -> bool {
        matches!(
            self,
            Op::Put(..)
                | Op::Get(..)
                | Op::Mget(..)
                | Op::Delete(..)
                | Op::List(..)
                | Op::Incr(..)
                | Op::Sadd(..)
                | Op::Srem(..)
                | Op::Hset(..)
                | Op::Hincr(..)
                | Op::Hdel(..)
                | Op::Hsadd(..)
                | Op::Hsrem(..)
        )
    }
}

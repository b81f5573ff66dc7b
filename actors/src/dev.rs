//! `dynakv dev`: a whole local cluster in one process, on embedded defaults,
//! and the configuration shared with the testkit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynakv::config::Config;
use dynakv::view::{Status, View};
use dynakv::{Error, Result};
use tracing::{info, warn};

use crate::membership::CurrentView;
use crate::node::{self, Listeners, NodeHandle};

/// Most nodes `dev` starts.
const MAX_DEV_NODES: u16 = 64;
/// How long a fresh cluster may take to form and come up before `dev` gives up.
const FORMATION_DEADLINE: Duration = Duration::from_secs(30);

/// The configuration of node `i` (from 1) of a local cluster whose nodes
/// listen at `addrs` (client, peer), with data under `data_dir`.
pub fn cluster_config(i: usize, addrs: &[(SocketAddr, SocketAddr)], data_dir: &Path) -> Config {
    let mut c = Config::default();
    let (client, peer) = addrs[i - 1];
    c.node.id = format!("node{i}");
    c.node.client_addr = client.to_string();
    c.node.peer_addr = peer.to_string();
    c.node.data_dir = data_dir.join(format!("node{i}"));
    c.cluster.seeds = addrs
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i - 1)
        .map(|(_, (_, p))| p.to_string())
        .collect();
    // Fewer nodes than the default N: replicate on all of them, and need a
    // majority of them.
    let n = c.cluster.n.min(addrs.len() as u8);
    c.cluster.n = n;
    c.cluster.r = c.cluster.r.min(n / 2 + 1);
    c.cluster.w = c.cluster.w.min(n / 2 + 1);
    c
}

/// Waits until every node has a ring (the cluster is formed).
pub async fn wait_formed(nodes: &[NodeHandle], deadline: Duration) -> Result<()> {
    wait_until(nodes, deadline, "form", |view, n| {
        view.ownership.is_some() && view.members.len() == n
    })
    .await
}

/// Waits until every node sees every member up: the cluster has formed and
/// joiners have taken over their partitions, so `status` right after shows
/// no one joining.
async fn wait_up(nodes: &[NodeHandle], deadline: Duration) -> Result<()> {
    wait_until(nodes, deadline, "come up", |view, n| {
        view.members.len() == n && view.members.values().all(|m| m.status == Status::Up)
    })
    .await
}

/// Waits until `done(view, node count)` holds for every node's view;
/// `what` the cluster failed to do names the error.
async fn wait_until(
    nodes: &[NodeHandle],
    deadline: Duration,
    what: &str,
    done: impl Fn(&View, usize) -> bool,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let mut all = true;
        for n in nodes {
            let view: Arc<View> = n
                .membership
                .send(CurrentView)
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?;
            all &= done(&view, nodes.len());
        }
        if all {
            return Ok(());
        }
        if start.elapsed() > deadline {
            return Err(Error::Unavailable(format!(
                "the cluster did not {what} within {} s",
                deadline.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(nodes: u16, base_port: u16, data_dir: PathBuf) -> Result<()> {
    if !(1..=MAX_DEV_NODES).contains(&nodes) {
        return Err(Error::Config(format!(
            "--nodes must be between 1 and {MAX_DEV_NODES}"
        )));
    }
    if u32::from(base_port) + 200 + u32::from(nodes) > u32::from(u16::MAX) || base_port == 0 {
        return Err(Error::Config(format!(
            "--base-port {base_port} leaves no room for {nodes} nodes"
        )));
    }
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..nodes)
        .map(|i| {
            let client = SocketAddr::from(([127, 0, 0, 1], base_port + i));
            let peer = SocketAddr::from(([127, 0, 0, 1], base_port + 100 + i));
            (client, peer)
        })
        .collect();
    let mut handles = Vec::new();
    for i in 1..=addrs.len() {
        let mut config = cluster_config(i, &addrs, &data_dir);
        config.metrics.addr = format!("127.0.0.1:{}", base_port + 199 + i as u16);
        let listeners = Listeners::bind(&config)?;
        handles.push(node::start(&config, listeners)?);
    }
    wait_up(&handles, FORMATION_DEADLINE).await?;
    let n = handles.len().min(3);
    for h in &handles {
        let metrics = h
            .metrics_addr
            .map(|a| format!(", metrics http://{a}/metrics"));
        tell(format_args!(
            "{} ready: client {}{}",
            h.id,
            h.client_addr,
            metrics.unwrap_or_default()
        ));
    }
    tell(format_args!(
        "cluster ready: {} node(s), N={n}; try `dynakv put hello world` then `dynakv get hello` (Ctrl-C stops)",
        handles.len()
    ));
    info!(nodes = handles.len(), "local cluster ready");
    wait_for_signal().await;
    for h in handles {
        h.stop().await?;
    }
    Ok(())
}

/// Prints a line of the banner. The cluster outlives its stdout: a reader
/// that went away (`dynakv dev | head -1`) is no reason to stop serving.
fn tell(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        warn!(error = %e, "cannot write to stdout; the cluster keeps running");
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

//! Whole clusters in one process, for tests (feature `testkit`).
//!
//! `Cluster::start(n)` starts n nodes on loopback with free ports and temp
//! dirs, waits until they have formed a ring, and hands out every node's
//! actor addresses (`node(i)`), clients, fault controls and restarts. Tests
//! wait on conditions with `wait_for` (polling with a deadline) or on the
//! nodes' event streams with `wait_for_event`, never on fixed sleeps.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dynakv::config::Config;
use dynakv::{Error, NodeId, Result};
use tempfile::TempDir;
use tokio::sync::broadcast;

use crate::client::Client;
use crate::dev::{cluster_config, wait_formed};
use crate::events::Event;
use crate::faults::Fault;
use crate::membership::CurrentView;
use crate::node::{self, Listeners, NodeHandle};
use crate::replica::HeldPartitions;
use crate::supervise::mailbox_error;
use dynakv::membership::Status;
use dynakv::placement::Placement;

/// How long a test cluster may take to form, and a restarted node to reopen
/// its storage (the old process's threads release the lock asynchronously).
const DEADLINE: Duration = Duration::from_secs(30);

pub struct Cluster {
    nodes: Vec<Option<NodeHandle>>,
    configs: Vec<Config>,
    dir: TempDir,
}

/// Settings that make tests quick: fast gossip, short request deadlines.
pub fn quick(c: &mut Config) {
    c.gossip.interval_ms = 50;
    c.gossip.suspect_after_ms = 1000;
    c.gossip.down_after_ms = 3000;
    c.hints.interval_ms = 100;
    c.timeouts.request_ms = 2000;
    c.timeouts.connect_ms = 1000;
    c.storage.cache_mb = 8;
}

impl Cluster {
    /// Starts `n` nodes with `quick` settings.
    pub async fn start(n: usize) -> Result<Cluster> {
        Cluster::start_with(n, |_| {}).await
    }

    /// Starts `n` nodes with `quick` settings, then `tweak` applied to each
    /// node's configuration.
    pub async fn start_with(n: usize, tweak: impl Fn(&mut Config)) -> Result<Cluster> {
        let dir = tempfile::tempdir().map_err(|e| Error::Internal(format!("no temp dir: {e}")))?;
        let mut listeners = Vec::new();
        let mut addrs: Vec<(SocketAddr, SocketAddr)> = Vec::new();
        for _ in 0..n {
            let (l, a) = bind_pair()?;
            listeners.push(l);
            addrs.push(a);
        }
        let mut configs = Vec::new();
        let mut nodes = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let mut config = cluster_config(i + 1, &addrs, dir.path());
            config.metrics.addr = metrics_addr(&l)?;
            quick(&mut config);
            tweak(&mut config);
            nodes.push(Some(node::start(&config, l)?));
            configs.push(config);
        }
        let cluster = Cluster {
            nodes,
            configs,
            dir,
        };
        wait_formed(&cluster.running(), DEADLINE).await?;
        Ok(cluster)
    }

    /// Starts one more node (node{len+1}) with every current node as a
    /// seed, `quick` settings and `tweak`; with `auto_join` it joins at once.
    /// Returns its index.
    pub async fn add_node(&mut self, tweak: impl Fn(&mut Config)) -> Result<usize> {
        let (listeners, (client, peer)) = bind_pair()?;
        let i = self.nodes.len();
        let mut config = self.configs[0].clone();
        config.node.id = format!("node{}", i + 1);
        config.node.client_addr = client.to_string();
        config.node.peer_addr = peer.to_string();
        config.node.data_dir = self.dir.path().join(format!("node{}", i + 1));
        config.node.weight = 1;
        config.metrics.addr = metrics_addr(&listeners)?;
        config.cluster.seeds = self
            .configs
            .iter()
            .map(|c| c.node.peer_addr.clone())
            .collect();
        tweak(&mut config);
        self.nodes.push(Some(node::start(&config, listeners)?));
        self.configs.push(config);
        Ok(i)
    }

    /// Waits until the cluster has settled after a membership change: every
    /// running node holds the same view, no partition is moving, every
    /// member is up (or gone), and no node holds a partition it does not
    /// replicate.
    pub async fn settled(&self, deadline: Duration) -> Result<()> {
        wait_for(deadline, "the cluster to settle", || async {
            let mut views = Vec::new();
            for n in self.running() {
                views.push(
                    n.membership
                        .send(CurrentView)
                        .await
                        .map_err(mailbox_error)?,
                );
            }
            let first = &views[0];
            if views.iter().any(|v| {
                v.members != first.members
                    || v.ownership != first.ownership
                    || v.namespaces != first.namespaces
            }) {
                return Err(Error::Unavailable("views differ".into()));
            }
            let ring = first
                .ring()
                .ok_or_else(|| Error::Unavailable("no ring".into()))?;
            if ring.is_moving() {
                return Err(Error::Unavailable("partitions are moving".into()));
            }
            if let Some(m) = first
                .members
                .values()
                .find(|m| m.status.is_live() && m.status != Status::Up)
            {
                return Err(Error::Unavailable(format!(
                    "{} is {}",
                    m.id,
                    m.status.as_str()
                )));
            }
            let n = usize::from(self.configs[0].cluster.n);
            let place = Placement::new(&ring, &first.namespaces, n);
            for node in self.running() {
                let held = node
                    .replica
                    .send(HeldPartitions(ring.partition_count()))
                    .await
                    .map_err(mailbox_error)??;
                for (p, names) in &held {
                    let surplus = place.surplus(*p, &node.id, names);
                    if !surplus.is_empty() {
                        return Err(Error::Unavailable(format!(
                            "{} still holds {surplus:?} of {p}",
                            node.id
                        )));
                    }
                }
            }
            Ok(())
        })
        .await
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i` (from 0). Panics if it is stopped: a test bug.
    pub fn node(&self, i: usize) -> &NodeHandle {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub fn config(&self, i: usize) -> &Config {
        &self.configs[i]
    }

    pub fn id(&self, i: usize) -> NodeId {
        self.configs[i].node_id()
    }

    /// Index of the node with this id.
    pub fn index_of(&self, id: &NodeId) -> usize {
        self.configs
            .iter()
            .position(|c| c.node_id() == *id)
            .expect("a node of this cluster")
    }

    pub fn running(&self) -> Vec<NodeHandle> {
        self.nodes.iter().flatten().cloned().collect()
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A client connected to node `i` (with the client token, if the node
    /// requires one).
    pub async fn client(&self, i: usize) -> Result<Client> {
        let c = &self.configs[i];
        let token = Some(c.security.client_token.clone()).filter(|t| !t.is_empty());
        Client::connect_with_token(&c.node.client_addr, &c.cluster.name, token).await
    }

    /// Node `i`'s metrics, as its HTTP endpoint serves them.
    pub async fn scrape(&self, i: usize) -> Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let failed = |e: std::io::Error| Error::Unavailable(format!("scrape failed: {e}"));
        let mut s = tokio::net::TcpStream::connect(&self.configs[i].metrics.addr)
            .await
            .map_err(failed)?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
            .await
            .map_err(failed)?;
        let mut response = String::new();
        s.read_to_string(&mut response).await.map_err(failed)?;
        match response.split_once("\r\n\r\n") {
            Some((head, body))
                if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") =>
            {
                Ok(body.to_string())
            }
            _ => Err(Error::Unavailable(format!(
                "bad scrape response: {response:.200}"
            ))),
        }
    }

    /// Cuts every node in `away` off from every other node (both ways);
    /// returns once every node applies the cut.
    pub async fn partition(&self, away: &[usize]) {
        let ids = |set: &mut dyn Iterator<Item = usize>| set.map(|i| self.id(i)).collect();
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let blocked = if away.contains(&i) {
                ids(&mut (0..self.len()).filter(|j| *j != i))
            } else {
                ids(&mut away.iter().copied())
            };
            node.fault(Fault::Partition(blocked)).await;
        }
    }

    pub async fn heal(&self) {
        for node in self.nodes.iter().flatten() {
            node.fault(Fault::Heal).await;
        }
    }

    /// Stops node `i` (flushing its storage), keeping its data dir.
    pub async fn stop_node(&mut self, i: usize) -> Result<()> {
        match self.nodes[i].take() {
            Some(node) => node.stop().await,
            None => Ok(()),
        }
    }

    /// Starts node `i` again on the same ports and data dir.
    pub async fn restart_node(&mut self, i: usize) -> Result<()> {
        self.stop_node(i).await?;
        let config = self.configs[i].clone();
        let node = wait_for(DEADLINE, "the restarted node to reopen its storage", || {
            let config = config.clone();
            async move {
                let listeners = Listeners::bind(&config)?;
                node::start(&config, listeners)
            }
        })
        .await?;
        self.nodes[i] = Some(node);
        Ok(())
    }

    /// Stops every node.
    pub async fn stop(mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.stop_node(i).await?;
        }
        Ok(())
    }
}

/// The address of a test node's metrics listener.
fn metrics_addr(l: &Listeners) -> Result<String> {
    let addr = l.metrics.as_ref().map(|m| m.local_addr());
    match addr {
        Some(Ok(a)) => Ok(a.to_string()),
        _ => Err(Error::Unavailable("no metrics listener".into())),
    }
}

/// Listeners (client, peer, metrics) on free loopback ports; the client and
/// peer addresses.
fn bind_pair() -> Result<(Listeners, (SocketAddr, SocketAddr))> {
    let bind = || {
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::Unavailable(e.to_string()))
    };
    let (client, peer) = (bind()?, bind()?);
    let local = |l: &std::net::TcpListener| {
        l.local_addr()
            .map_err(|e| Error::Unavailable(e.to_string()))
    };
    let addrs = (local(&client)?, local(&peer)?);
    let metrics = Some(bind()?);
    Ok((
        Listeners {
            client,
            peer,
            metrics,
        },
        addrs,
    ))
}

/// The value of one series (name and labels exactly as rendered, e.g.
/// `dynakv_requests_total{op="put",outcome="ok",namespace="default"}`) in a scrape; 0 when
/// absent (counters and gauges start there).
pub fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `condition` holds: polls it (with a growing pause, at most
/// 200 ms) until it answers `Ok`, and returns that. Past `deadline` the
/// error names `what` was awaited and the condition's last answer, so a
/// condition says why it does not hold yet in its `Err`.
pub async fn wait_for<T, F, Fut>(deadline: Duration, what: &str, mut condition: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        match condition().await {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() > deadline => {
                return Err(Error::Internal(format!(
                    "gave up waiting for {what} after {deadline:?}: {e}"
                )));
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }
}

/// `Ok` when `holds`, else the error `wait_for` reports if time runs out.
pub fn check(holds: bool, why: impl FnOnce() -> String) -> Result<()> {
    if holds {
        Ok(())
    } else {
        Err(Error::Unavailable(why()))
    }
}

/// Waits for the event `pick` chooses (answers `Some` for) on a node's
/// event stream, subscribed to before the action that causes it. `pick`
/// may count events and answer once it has seen enough. Events the stream
/// dropped because the test fell behind are skipped.
pub async fn wait_for_event<T>(
    events: &mut broadcast::Receiver<Event>,
    deadline: Duration,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> Result<T> {
    let picked = async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(v) = pick(&event) {
                        return Ok(v);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(Error::Internal(format!("the node stopped before {what}")));
                }
            }
        }
    };
    tokio::time::timeout(deadline, picked)
        .await
        .map_err(|_| Error::Internal(format!("gave up waiting for {what} after {deadline:?}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_wait_that_never_holds_names_what_and_why() {
        let mut polls = 0;
        let err = wait_for(Duration::from_millis(50), "the moon", || {
            polls += 1;
            async { check(false, || "it is new".into()) }
        })
        .await
        .unwrap_err();
        assert!(polls > 1, "polled {polls} times");
        let text = err.to_string();
        assert!(
            text.contains("the moon") && text.contains("it is new"),
            "{text}"
        );
        let got = wait_for(Duration::from_millis(50), "a number", || async { Ok(7) }).await;
        assert_eq!(got.unwrap(), 7);
    }

    #[actix_rt::test]
    async fn a_wait_for_an_event_counts_skips_and_gives_up() {
        let (tx, mut rx) = broadcast::channel(16);
        let left = || Event::Left {
            node: NodeId::new("n1").unwrap(),
        };
        for _ in 0..3 {
            tx.send(left()).unwrap();
        }
        let mut seen = 0;
        let three = wait_for_event(&mut rx, Duration::from_secs(5), "three", |e| {
            seen += usize::from(matches!(e, Event::Left { .. }));
            (seen == 3).then_some(seen)
        });
        assert_eq!(three.await.unwrap(), 3);
        let none = wait_for_event(&mut rx, Duration::from_millis(20), "a fourth", |_| Some(()));
        assert!(none.await.unwrap_err().to_string().contains("a fourth"));
        drop(tx);
        let closed = wait_for_event(&mut rx, Duration::from_secs(5), "anything", |_| Some(()));
        assert!(closed.await.unwrap_err().to_string().contains("stopped"));
    }
}

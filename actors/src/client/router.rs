//! How a client's requests reach a node: a pool of connections per node,
//! the ring a cluster client routes by (fetched now and then, and at once
//! when a reply says it changed), the nodes to try last, and failing over
//! where `dynakv::routing::fails_over` allows it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dynakv::routing::{ClusterMap, Effect, Routing, backoff_ms, fails_over};
use dynakv::wire::{ClientOp, ClientReply, KeyOp};
use dynakv::{Error, ErrorKind, Result};
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::{Instant, sleep_until};

use super::Options;
use super::connection::{Connection, Failed, connecting, unexpected};

/// How long a node that refused a connection goes to the back of every
/// candidate list: long enough that requests stop paying for it, short
/// enough that a restarted node is used again within a second or so.
const AVOID_FOR: Duration = Duration::from_secs(1);

/// First and longest wait between two attempts of one request: a refused
/// node is usually replaced at once by the next, so waits only matter when
/// every node refuses (overload), and then they must not outlast a
/// request's deadline by much.
const FAILOVER_BASE_MS: u64 = 10;
const FAILOVER_MAX_MS: u64 = 1_000;

/// The connections to one node. A slot holds one connection; a call takes
/// the slots in turn and opens a connection where the slot has none.
pub(super) struct Pool {
    slots: Vec<AsyncMutex<Option<Arc<Connection>>>>,
    next: AtomicUsize,
}

impl Pool {
    fn new(size: usize) -> Self {
        Pool {
            slots: (0..size.max(1)).map(|_| AsyncMutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub(super) async fn connection(
        &self,
        addr: &str,
        options: &Options,
    ) -> Result<Arc<Connection>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.is_open()) {
            return Ok(c.clone());
        }
        let c = Arc::new(Connection::open(addr, options).await?);
        *slot = Some(c.clone());
        Ok(c)
    }
}

/// What every clone of a client's work shares: the pools, the ring, the
/// nodes to avoid.
pub(super) struct Shared {
    pub(super) options: Options,
    /// The node `connect` named, or the first seed that answered.
    pub(super) home: String,
    seeds: Vec<String>,
    /// The cluster's ring (None for a single-node client).
    map: RwLock<Option<Arc<ClusterMap>>>,
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    /// Nodes that refused a connection, and until when to try them last.
    avoid: Mutex<HashMap<String, Instant>>,
    refreshing: AtomicBool,
    next_id: AtomicU64,
    turn: AtomicU64,
}

impl Shared {
    pub(super) fn new(home: String, seeds: Vec<String>, options: Options) -> Self {
        Shared {
            options,
            home,
            seeds,
            map: RwLock::new(None),
            pools: Mutex::new(HashMap::new()),
            avoid: Mutex::new(HashMap::new()),
            refreshing: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            turn: AtomicU64::new(0),
        }
    }

    pub(super) fn map(&self) -> Option<Arc<ClusterMap>> {
        self.map.read().ok().and_then(|m| m.clone())
    }

    pub(super) fn pool(&self, addr: &str) -> Result<Arc<Pool>> {
        let mut pools = self
            .pools
            .lock()
            .map_err(|_| Error::Internal("client state poisoned".into()))?;
        if let Some(pool) = pools.get(addr) {
            return Ok(pool.clone());
        }
        let pool = Arc::new(Pool::new(self.options.pool_size));
        pools.insert(addr.to_string(), pool.clone());
        Ok(pool)
    }

    /// One attempt of `op` at the node at `addr`, until `deadline`.
    pub(super) async fn attempt(
        &self,
        addr: &str,
        op: ClientOp,
        deadline: Instant,
    ) -> Result<ClientReply, Failed> {
        let pool = self.pool(addr).map_err(Failed::unsent)?;
        let opened = connecting(addr, deadline, pool.connection(addr, &self.options)).await;
        let conn = opened.map_err(Failed::unsent)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        conn.call(id, op, deadline).await
    }

    fn avoid(&self, addr: &str) {
        if let Ok(mut a) = self.avoid.lock() {
            a.insert(addr.to_string(), Instant::now() + AVOID_FOR);
        }
    }

    /// The addresses to try for `op`, best first.
    pub(super) fn candidates<'a>(
        &'a self,
        map: Option<&'a ClusterMap>,
        key: Option<&[u8]>,
    ) -> Vec<&'a str> {
        let routing = self.options.routing;
        let Some(map) = map.filter(|_| routing != Routing::Single) else {
            return vec![self.home.as_str()];
        };
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut addrs: Vec<&str> = map
            .candidates(key, routing, turn)
            .into_iter()
            .filter_map(|id| map.addr(id))
            .collect();
        if addrs.is_empty() {
            addrs.push(self.home.as_str());
        }
        let Ok(mut avoid) = self.avoid.lock() else {
            return addrs;
        };
        if avoid.is_empty() {
            return addrs;
        }
        let now = Instant::now();
        avoid.retain(|_, until| now < *until);
        let (fine, avoided): (Vec<&str>, Vec<&str>) =
            addrs.into_iter().partition(|a| !avoid.contains_key(*a));
        fine.into_iter().chain(avoided).collect()
    }

    /// Asks the members, then the seeds, for the ring until one answers
    /// with a valid snapshot, and routes by it from then on.
    pub(super) async fn refresh(&self) -> Result<()> {
        let deadline = Instant::now() + self.options.timeout;
        let map = self.map();
        let mut addrs: Vec<String> = self
            .candidates(map.as_deref(), None)
            .into_iter()
            .map(str::to_string)
            .collect();
        for seed in &self.seeds {
            if !addrs.contains(seed) {
                addrs.push(seed.clone());
            }
        }
        let mut last = Error::Unavailable("no node to ask for the ring".into());
        for addr in addrs {
            match self.ring_at(&addr, deadline).await {
                Ok(map) => {
                    self.install(map);
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The ring as the node at `addr` holds it, checked. A node that
    /// refused the connection goes last for a while.
    pub(super) async fn ring_at(&self, addr: &str, deadline: Instant) -> Result<ClusterMap> {
        match self.attempt(addr, ClientOp::Ring, deadline).await {
            Ok(ClientReply::Ring(snapshot)) => ClusterMap::new(snapshot),
            Ok(ClientReply::Error { kind, message }) => Err(Error::from_wire(kind, message)),
            Ok(other) => Err(unexpected(other)),
            Err(Failed { error, sent }) => {
                if !sent {
                    self.avoid(addr);
                }
                Err(error)
            }
        }
    }

    /// Routes by `map` from now on, and closes the pools of nodes it no
    /// longer names.
    pub(super) fn install(&self, map: ClusterMap) {
        let keep: Vec<String> = map
            .members()
            .map(|(_, a)| a.to_string())
            .chain(self.seeds.iter().cloned())
            .collect();
        if let Ok(mut pools) = self.pools.lock() {
            pools.retain(|addr, _| keep.contains(addr));
        }
        if let Ok(mut m) = self.map.write() {
            *m = Some(Arc::new(map));
        }
    }

    /// Runs `op` on its key's nodes, failing over as `fails_over` allows.
    pub(super) async fn call_key(self: &Arc<Self>, op: KeyOp) -> Result<ClientReply> {
        let effect = op.effect();
        self.call_routed(Some(op.key()), effect, |ring| match ring {
            Some(ring) => ClientOp::Routed {
                ring,
                op: op.clone(),
            },
            None => op.clone().into(),
        })
        .await
    }

    /// Runs a batch at the first key's nodes (any node coordinates any key).
    pub(super) async fn call_batch(self: &Arc<Self>, ops: Vec<KeyOp>) -> Result<ClientReply> {
        let effect = if ops.iter().all(|op| op.effect() == Effect::Read) {
            Effect::Read
        } else {
            Effect::Write
        };
        let key = ops.first().map(KeyOp::key);
        self.call_routed(key, effect, |_| ClientOp::Batch(ops.clone()))
            .await
    }

    /// Runs a request about no key (a listing page) at any node, failing
    /// over as a read.
    pub(super) async fn call_any(self: &Arc<Self>, op: ClientOp) -> Result<ClientReply> {
        self.call_routed(None, Effect::Read, |_| op.clone()).await
    }

    /// Sends the request `wire` makes (given the ring version the client
    /// routes by, if any) to the nodes `key` routes to, one after another
    /// while `fails_over` allows, within the client's timeout.
    async fn call_routed(
        self: &Arc<Self>,
        key: Option<&[u8]>,
        effect: Effect,
        wire: impl Fn(Option<u64>) -> ClientOp,
    ) -> Result<ClientReply> {
        let deadline = Instant::now() + self.options.timeout;
        let map = self.map();
        let addrs = self.candidates(map.as_deref(), key);
        let ring = map.as_ref().map(|m| m.version());
        let attempts = self.options.max_attempts.max(1);
        let mut last = None;
        for (attempt, addr) in addrs.iter().cycle().take(attempts).enumerate() {
            if attempt > 0 {
                let wait = backoff_ms(
                    attempt as u32,
                    FAILOVER_BASE_MS,
                    FAILOVER_MAX_MS,
                    fastrand::u64(..),
                );
                let at = Instant::now() + Duration::from_millis(wait);
                if at >= deadline {
                    break;
                }
                sleep_until(at).await;
            }
            let failed = match self.attempt(addr, wire(ring), deadline).await {
                Ok(ClientReply::Stale { ring, reply }) => {
                    self.refresh_soon(ring);
                    answered(reply.into())
                }
                Ok(reply) => answered(reply),
                Err(failed) => Err(failed),
            };
            let Failed { error, sent } = match failed {
                Ok(reply) => return Ok(reply),
                Err(failed) => failed,
            };
            if !sent || error.kind() == ErrorKind::Indeterminate {
                // Refused, or the connection broke: the node is likely
                // gone; later requests try it last for a while.
                self.avoid(addr);
            }
            let single = self.options.routing == Routing::Single || map.is_none();
            if single || !fails_over(effect, sent, &error) {
                return Err(error);
            }
            last = Some(error);
        }
        Err(last.unwrap_or(Error::Timeout))
    }

    /// Fetches the ring in the background, unless a fetch is under way or
    /// the ring is already `ring`.
    fn refresh_soon(self: &Arc<Self>, ring: u64) {
        if self.map().is_some_and(|m| m.version() == ring)
            || self.refreshing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            let _ = shared.refresh().await;
            shared.refreshing.store(false, Ordering::Release);
        });
    }
}

/// A node's answer as a result: an error answer is a failure that reached
/// the node.
pub(super) fn answered(reply: ClientReply) -> Result<ClientReply, Failed> {
    match reply {
        ClientReply::Error { kind, message } => Err(Failed {
            error: Error::from_wire(kind, message),
            sent: true,
        }),
        reply => Ok(reply),
    }
}

/// A cluster client's periodic ring refresh; ends with the client.
pub(super) async fn refresh_every(shared: std::sync::Weak<Shared>, every: Duration) {
    let every = every.max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(e) = shared.refresh().await {
            tracing::debug!(error = %e, "ring refresh failed");
        }
    }
}

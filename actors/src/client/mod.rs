//! The Rust client: an async API over the binary client protocol.
//!
//! Two ways to connect:
//!
//! - `Client::connect` talks to one node, as the CLI always did: every
//!   request goes there and nothing fails over.
//! - `Client::connect_cluster` learns the cluster from any of its seeds (a
//!   `Ring` request) and routes each request itself (Dynamo §6.4): by
//!   default to the first healthy node of the key's preference list, which
//!   coordinates with a local write instead of an extra hop
//!   (`dynakv::routing`). It keeps a small pool of connections per node,
//!   refreshes its ring every `ring_refresh` and as soon as a reply says the
//!   ring changed, and fails over to the next node, with bounded
//!   exponential backoff and jitter within the request's deadline, when a
//!   node refuses a connection or answers an error that guarantees nothing
//!   was done. A write whose outcome is unknown (a timeout, a connection
//!   lost after sending) is reported as `indeterminate` and never silently
//!   sent again: a retried DVV put could leave its value twice, as two
//!   siblings (`Error::is_indeterminate`).
//!
//! In a namespace of a data type (counter, set) a key changes by
//! operations (`incr`, `sadd`, `srem`) and reads (`fetch`) as one merged
//! value, never siblings. An operation that failed as `indeterminate` may
//! have been applied: adding a set member again is harmless, but an
//! increment sent again may count twice, so it is never resent here.
//!
//! Every call, connecting included, ends within the client's timeout
//! (`Options::timeout`, 10 s by default): a node that stopped answering
//! (SIGSTOP, a dead host behind a live socket) costs a `timeout` error,
//! never a hang. Calls from many tasks are pipelined on each connection.
//!
//! ```no_run
//! # async fn demo() -> dynakv::Result<()> {
//! use dynakv_actors::client::{Client, Options};
//! let client = Client::connect_cluster(&["127.0.0.1:7001", "127.0.0.1:7002"], Options::default()).await?;
//! let written = client.put(b"k", b"v", &[], None).await?;
//! let read = client.get(b"k", None).await?;
//! assert_eq!(read.values, vec![b"v".to_vec()]);
//! client.put(b"k", b"v2", &read.context, None).await?; // supersedes v
//! # let _ = written; Ok(()) }
//! ```

mod agreement;
mod connection;
mod router;
mod typed;

use crate::tls::ClientTls;
use std::sync::Arc;
use std::time::Duration;

use dynakv::handoff::{PlanChange, PlanReport};
use dynakv::namespace;
use dynakv::routing::{ClusterMap, DEFAULT_RING_REFRESH_MS, Routing};
use dynakv::wire::{
    ClientOp, ClientReply, Delete, Get, KeyOp, KeyReply, LocalCopy, NetFault, Put, PutExpiring,
    StatusReport,
};
use dynakv::{Error, NodeId, Result};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use connection::{connecting, unexpected};
pub use dynakv::namespace::Agreement;
use router::{Shared, answered, refresh_every};
pub use typed::TypedResult;

/// What a get returns: every live sibling and the context to write back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    pub values: Vec<Vec<u8>>,
    pub context: Vec<u8>,
}

/// What a put or delete returns: the context after the write, and the
/// values of other siblings the coordinator knew (usually none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResult {
    pub context: Vec<u8>,
    pub others: Vec<Vec<u8>>,
}

/// What a read of a key returns: its siblings (a blob namespace) or its
/// merged value (a data type's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    Values(ReadResult),
    Typed(TypedResult),
}

/// One page of a listing: its keys, and the token of the next page (None:
/// the listing is complete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub keys: Vec<Vec<u8>>,
    pub next: Option<Vec<u8>>,
}

/// The default for `Options::timeout`: twice the server's default request
/// timeout, so a node's own quorum error arrives before the client gives up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a client connects, routes and how long it waits.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cluster name the node must have (empty: any).
    pub cluster: String,
    /// Client token, when the node requires one (`security.client_token`).
    pub token: Option<String>,
    /// Longest wait for one call, connecting and failing over included.
    pub timeout: Duration,
    /// Where a cluster client sends requests (`connect` is always single).
    pub routing: Routing,
    /// How often a cluster client fetches the ring without being told.
    pub ring_refresh: Duration,
    /// Connections a cluster client keeps per node (requests are pipelined
    /// on each).
    pub pool_size: usize,
    /// Most nodes one request is tried at.
    pub max_attempts: usize,
    /// TLS to nodes whose `[tls]` is on (None: plaintext).
    pub tls: Option<ClientTls>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cluster: String::new(),
            token: None,
            timeout: DEFAULT_TIMEOUT,
            routing: Routing::default(),
            ring_refresh: Duration::from_millis(DEFAULT_RING_REFRESH_MS),
            pool_size: 2,
            max_attempts: 4,
            tls: None,
        }
    }
}

/// A connection to a node or a cluster, for the keys of one namespace
/// (`default` unless `in_namespace` says another). Clones, and the
/// handles of other namespaces, share its connections and ring.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    /// Held only to stop the refresh with the last handle.
    _refresher: Option<Arc<Refresher>>,
    namespace: namespace::Name,
}

/// The periodic ring refresh of a cluster client; stopped when the last
/// handle is dropped.
struct Refresher(JoinHandle<()>);

impl Drop for Refresher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Client {
    /// Connects to the node at `addr` of cluster `cluster` (empty: any).
    pub async fn connect(addr: &str, cluster: &str) -> Result<Client> {
        Client::connect_with_token(addr, cluster, None).await
    }

    pub async fn connect_with_token(
        addr: &str,
        cluster: &str,
        token: Option<String>,
    ) -> Result<Client> {
        let options = Options {
            cluster: cluster.to_string(),
            token,
            ..Options::default()
        };
        Client::connect_with(addr, options).await
    }

    /// Connects to the node at `addr` with `options`; every request goes
    /// to that node (`options.routing` is not used).
    pub async fn connect_with(addr: &str, options: Options) -> Result<Client> {
        let options = Options {
            routing: Routing::Single,
            pool_size: 1,
            ..options
        };
        let shared = Shared::new(addr.to_string(), vec![addr.to_string()], options);
        let deadline = Instant::now() + shared.options.timeout;
        let pool = shared.pool(addr)?;
        connecting(addr, deadline, pool.connection(addr, &shared.options)).await?;
        Ok(Client::new(Arc::new(shared), None))
    }

    /// Connects to the cluster that `seeds` (client addresses) belong to:
    /// learns its ring from the first seed that answers, then routes every
    /// get, put and delete by `options.routing`. Operators' requests
    /// (status, inspect, join...) go to that first seed.
    pub async fn connect_cluster(seeds: &[&str], options: Options) -> Result<Client> {
        if seeds.is_empty() {
            return Err(Error::InvalidRequest(
                "no seed address to connect to".into(),
            ));
        }
        let deadline = Instant::now() + options.timeout;
        let seed_list = seeds.iter().map(|s| s.to_string()).collect();
        let mut shared = Shared::new(String::new(), seed_list, options.clone());
        let mut refused = Vec::new();
        for seed in seeds {
            match shared.ring_at(seed, deadline).await {
                Ok(map) => {
                    shared.home = seed.to_string();
                    shared.install(map);
                    let shared = Arc::new(shared);
                    let refresher =
                        tokio::spawn(refresh_every(Arc::downgrade(&shared), options.ring_refresh));
                    return Ok(Client::new(shared, Some(Refresher(refresher))));
                }
                Err(e) => refused.push(format!("{seed}: {e}")),
            }
        }
        Err(Error::Unavailable(format!(
            "no seed gave the cluster's ring ({})",
            refused.join("; ")
        )))
    }

    fn new(shared: Arc<Shared>, refresher: Option<Refresher>) -> Client {
        Client {
            shared,
            _refresher: refresher.map(Arc::new),
            namespace: namespace::Name::new(namespace::DEFAULT).expect("default is a name"),
        }
    }

    /// A handle on the keys of namespace `name`, sharing this client's
    /// connections and ring. The namespace must exist when it is used
    /// (`dynakv ns create`).
    pub fn in_namespace(&self, name: &str) -> Result<Client> {
        Ok(Client {
            namespace: namespace::Name::new(name)?,
            ..self.clone()
        })
    }

    /// The namespace of this handle's keys.
    pub fn namespace(&self) -> &str {
        self.namespace.as_str()
    }

    /// `key` as the cluster stores it: within this handle's namespace.
    fn stored(&self, key: &[u8]) -> Result<Vec<u8>> {
        namespace::key_in(&self.namespace, key)
    }

    /// The node this client is connected to (a cluster client: its first
    /// seed that answered).
    pub async fn node(&self) -> Result<NodeId> {
        let home = &self.shared.home;
        let deadline = Instant::now() + self.shared.options.timeout;
        let pool = self.shared.pool(home)?;
        let conn = connecting(home, deadline, pool.connection(home, &self.shared.options)).await?;
        Ok(conn.node.clone())
    }

    /// The ring a cluster client routes by (None for a single-node client).
    pub fn ring(&self) -> Option<Arc<ClusterMap>> {
        self.shared.map()
    }

    /// Fetches the ring now instead of at the next refresh.
    pub async fn refresh(&self) -> Result<()> {
        self.shared.refresh().await
    }

    /// The client address each get, put or delete of `key` would go to
    /// first.
    pub fn route(&self, key: &[u8]) -> Result<String> {
        let key = self.stored(key)?;
        let map = self.shared.map();
        let addrs = self.shared.candidates(map.as_deref(), Some(&key));
        Ok(addrs
            .first()
            .map_or_else(|| self.shared.home.clone(), |a| a.to_string()))
    }

    /// An operator's request, to this client's home node only.
    async fn call(&self, op: ClientOp) -> Result<ClientReply> {
        let deadline = Instant::now() + self.shared.options.timeout;
        let reply = self.shared.attempt(&self.shared.home, op, deadline).await;
        reply.and_then(answered).map_err(|f| f.error)
    }

    /// Reads a key of a blob namespace: its siblings and context.
    pub async fn get(&self, key: &[u8], r: Option<u8>) -> Result<ReadResult> {
        match self.read(key, r).await? {
            Read::Values(read) => Ok(read),
            Read::Typed(_) => Err(Error::InvalidRequest(
                "the key is in a namespace of a data type: fetch it".into(),
            )),
        }
    }

    /// Reads a key of any namespace.
    pub async fn read(&self, key: &[u8], r: Option<u8>) -> Result<Read> {
        let op = KeyOp::Get(Get {
            key: self.stored(key)?,
            r,
        });
        match self.shared.call_key(op).await? {
            ClientReply::Value { values, context } => {
                Ok(Read::Values(ReadResult { values, context }))
            }
            ClientReply::Typed { reading, context } => {
                Ok(Read::Typed(TypedResult { reading, context }))
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        context: &[u8],
        w: Option<u8>,
    ) -> Result<WriteResult> {
        let op = KeyOp::Put(Put {
            key: self.stored(key)?,
            value: value.to_vec(),
            context: context.to_vec(),
            w,
        });
        written(self.shared.call_key(op).await?)
    }

    /// A put whose value reads as not found `ttl` after the coordinator
    /// took it (whatever the namespace's default TTL; zero: never). The
    /// deadline is set by that node's wall clock.
    pub async fn put_with_ttl(
        &self,
        key: &[u8],
        value: &[u8],
        context: &[u8],
        w: Option<u8>,
        ttl: Duration,
    ) -> Result<WriteResult> {
        let op = KeyOp::PutExpiring(PutExpiring {
            put: Put {
                key: self.stored(key)?,
                value: value.to_vec(),
                context: context.to_vec(),
                w,
            },
            ttl_ms: u64::try_from(ttl.as_millis())
                .map_err(|_| Error::InvalidRequest("the TTL is too long".into()))?,
        });
        written(self.shared.call_key(op).await?)
    }

    pub async fn delete(&self, key: &[u8], context: &[u8], w: Option<u8>) -> Result<WriteResult> {
        let op = KeyOp::Delete(Delete {
            key: self.stored(key)?,
            context: context.to_vec(),
            w,
        });
        written(self.shared.call_key(op).await?)
    }

    /// Reads many keys in one request (at most the node's
    /// `limits.max_batch`); each key gets its own result, in order.
    pub async fn get_many(&self, keys: &[&[u8]], r: Option<u8>) -> Result<Vec<Result<ReadResult>>> {
        let ops = keys
            .iter()
            .map(|key| {
                Ok(KeyOp::Get(Get {
                    key: self.stored(key)?,
                    r,
                }))
            })
            .collect::<Result<_>>()?;
        let replies = batch(self.shared.call_batch(ops).await?, keys.len())?;
        Ok(replies
            .into_iter()
            .map(|reply| match reply {
                KeyReply::Value { values, context } => Ok(ReadResult { values, context }),
                other => Err(key_error(other)),
            })
            .collect())
    }

    /// Writes many keys in one request, each `(key, value, context)`; each
    /// gets its own result, in order. A failed one may still have taken
    /// effect, as a single put's.
    pub async fn put_many(
        &self,
        items: &[(&[u8], &[u8], &[u8])],
        w: Option<u8>,
    ) -> Result<Vec<Result<WriteResult>>> {
        let ops = items
            .iter()
            .map(|(key, value, context)| {
                Ok(KeyOp::Put(Put {
                    key: self.stored(key)?,
                    value: value.to_vec(),
                    context: context.to_vec(),
                    w,
                }))
            })
            .collect::<Result<_>>()?;
        let replies = batch(self.shared.call_batch(ops).await?, items.len())?;
        Ok(replies
            .into_iter()
            .map(|reply| match reply {
                KeyReply::Written { context, others } => Ok(WriteResult { context, others }),
                other => Err(key_error(other)),
            })
            .collect())
    }

    /// A page of the namespace's live keys that start with `prefix`: at
    /// most `limit` (1 to 10,000), from where the token `after` left off
    /// (None: the first page). A listing reads one replica per partition:
    /// it may miss keys written while it runs, and never returns a key
    /// twice.
    pub async fn list(&self, prefix: &[u8], limit: u32, after: Option<&[u8]>) -> Result<Page> {
        let op = ClientOp::List {
            prefix: self.stored(prefix)?,
            limit,
            after: after.unwrap_or_default().to_vec(),
        };
        let (keys, next) = match self.shared.call_any(op).await? {
            ClientReply::Keys { keys, next } => (keys, next),
            other => return Err(unexpected(other)),
        };
        let namespace = namespace::key_prefix(&self.namespace);
        let keys = keys
            .into_iter()
            .map(|key| match key.strip_prefix(namespace.as_slice()) {
                Some(within) => Ok(within.to_vec()),
                None => Err(Error::Malformed(format!(
                    "a listing of namespace {} returned a key of another",
                    self.namespace
                ))),
            })
            .collect::<Result<_>>()?;
        Ok(Page { keys, next })
    }

    pub async fn status(&self) -> Result<StatusReport> {
        match self.call(ClientOp::Status).await? {
            ClientReply::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// A page of a backup of this node's storage (`crate::backup::take`
    /// asks for every page).
    pub async fn backup_page(
        &self,
        request: dynakv::backup::PageRequest,
    ) -> Result<dynakv::backup::Page> {
        match self.call(ClientOp::Backup(request)).await? {
            ClientReply::Backup(page) => Ok(page),
            other => Err(unexpected(other)),
        }
    }

    pub async fn inspect(&self, key: &[u8]) -> Result<LocalCopy> {
        let key = self.stored(key)?;
        match self.call(ClientOp::Inspect { key }).await? {
            ClientReply::Local(l) => Ok(l),
            other => Err(unexpected(other)),
        }
    }
}

impl Client {
    /// Asks this node to join the cluster of the node at peer address `seed`.
    pub async fn join(&self, seed: &str) -> Result<String> {
        done(
            self.call(ClientOp::Join {
                seed: seed.to_string(),
            })
            .await?,
        )
    }

    /// Asks this node to hand its partitions off and leave.
    pub async fn leave(&self) -> Result<String> {
        done(self.call(ClientOp::Leave).await?)
    }

    /// Asks this node to drop a dead member (id or address) from the ring.
    pub async fn remove(&self, node: &str) -> Result<String> {
        done(
            self.call(ClientOp::Remove {
                node: node.to_string(),
            })
            .await?,
        )
    }

    /// Asks this node to double the cluster's partition count.
    pub async fn split(&self) -> Result<String> {
        done(self.call(ClientOp::Split).await?)
    }

    /// What a membership change would move.
    pub async fn plan(&self, change: PlanChange) -> Result<PlanReport> {
        match self.call(ClientOp::Plan { change }).await? {
            ClientReply::Plan(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Creates, alters or drops a namespace (at this client's node; gossip
    /// takes the change to every other node, `namespace_agreement` says
    /// when it has). Returns what was done.
    pub async fn change_namespace(&self, request: namespace::Request) -> Result<String> {
        done(self.call(ClientOp::Namespace(request)).await?)
    }

    /// Answers `show` or `list` as this client's node knows the namespaces.
    pub async fn namespaces(&self, request: namespace::Request) -> Result<Vec<namespace::Info>> {
        match self.call(ClientOp::Namespace(request)).await? {
            ClientReply::Namespaces(infos) => Ok(infos),
            other => Err(unexpected(other)),
        }
    }

    /// Injects a network fault into this node's Bridge (the node must run
    /// with `testing.fault_injection`).
    pub async fn fault(&self, fault: NetFault) -> Result<String> {
        done(self.call(ClientOp::Fault { fault }).await?)
    }
}

fn done(reply: ClientReply) -> Result<String> {
    match reply {
        ClientReply::Done { message } => Ok(message),
        other => Err(unexpected(other)),
    }
}

/// A batch's replies, one per operation sent.
fn batch(reply: ClientReply, sent: usize) -> Result<Vec<KeyReply>> {
    match reply {
        ClientReply::Batch(replies) if replies.len() == sent => Ok(replies),
        ClientReply::Batch(replies) => Err(Error::Malformed(format!(
            "{} replies to a batch of {sent}",
            replies.len()
        ))),
        other => Err(unexpected(other)),
    }
}

/// One operation's failure in a batch.
fn key_error(reply: KeyReply) -> Error {
    match reply {
        KeyReply::Error { kind, message } => Error::from_wire(kind, message),
        other => unexpected(other.into()),
    }
}

fn written(reply: ClientReply) -> Result<WriteResult> {
    match reply {
        ClientReply::Written { context, others } => Ok(WriteResult { context, others }),
        other => Err(unexpected(other)),
    }
}

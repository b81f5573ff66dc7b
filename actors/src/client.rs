//! The Rust client: an async API over the binary client protocol.
//!
//! One `Client` keeps one connection to one node and reuses it for every
//! call; calls from many tasks are pipelined on it (each request carries an
//! id, replies are matched by id). If the connection breaks, the calls in
//! flight fail and the next call reconnects.
//!
//! Every call, the connection and hello included, ends within the client's
//! timeout (`Options::timeout`, 10 s by default): a node that stopped
//! answering (SIGSTOP, a dead host behind a live socket) costs a `timeout`
//! error, never a hang. A timed-out write may still take effect
//! (`Error::is_indeterminate`).
//!
//! ```no_run
//! # async fn demo() -> dynakv::Result<()> {
//! use dynakv_actors::client::Client;
//! let client = Client::connect("127.0.0.1:7001", "dynakv").await?;
//! let written = client.put(b"k", b"v", &[], None).await?;
//! let read = client.get(b"k", None).await?;
//! assert_eq!(read.values, vec![b"v".to_vec()]);
//! client.put(b"k", b"v2", &read.context, None).await?; // supersedes v
//! # let _ = written; Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dynakv::handoff::{PlanChange, PlanReport};
use dynakv::wire::{
    ClientOp, ClientReply, ClientRequest, ClientResponse, DEFAULT_MAX_FRAME, LocalCopy, NetFault,
    StatusReport,
};
use dynakv::{Error, NodeId, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Mutex as AsyncMutex, oneshot};
use tokio::time::{Instant, timeout_at};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::codec::Codec;

type ClientCodec = Codec<ClientResponse, ClientRequest>;

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

/// The default for `Options::timeout`: twice the server's default request
/// timeout, so a node's own quorum error arrives before the client gives up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a client connects and how long it waits.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cluster name the node must have (empty: any).
    pub cluster: String,
    /// Client token, when the node requires one (`security.client_token`).
    pub token: Option<String>,
    /// Longest wait for one call, connecting included.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cluster: String::new(),
            token: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

type Waiters = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<ClientReply>>>>>;

struct Connection {
    writer: AsyncMutex<FramedWrite<OwnedWriteHalf, ClientCodec>>,
    /// None once the connection has failed.
    waiters: Waiters,
    node: NodeId,
}

impl Connection {
    /// Connects and says hello (call within a timeout: neither is bounded
    /// here).
    async fn open(addr: &str, options: &Options) -> Result<Connection> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot connect to {addr}: {e}")))?;
        stream
            .set_nodelay(true)
            .map_err(|e| Error::Unavailable(format!("socket setup failed: {e}")))?;
        let (read, write) = stream.into_split();
        let waiters: Waiters = Arc::new(Mutex::new(Some(HashMap::new())));
        let mut conn = Connection {
            writer: AsyncMutex::new(FramedWrite::new(write, ClientCodec::new(DEFAULT_MAX_FRAME))),
            waiters,
            node: NodeId::new("unknown").expect("a valid id"),
        };
        // The hello's waiter is in place before anything is read: a node
        // that refuses the connection (too many open) answers id 0 at once.
        let hello = conn.expect(0)?;
        let reader_waiters = conn.waiters.clone();
        let mut frames = FramedRead::new(read, ClientCodec::new(DEFAULT_MAX_FRAME));
        tokio::spawn(async move {
            while let Some(Ok(ClientResponse { id, reply })) = frames.next().await {
                let waiter = reader_waiters
                    .lock()
                    .ok()
                    .and_then(|mut w| w.as_mut()?.remove(&id));
                if let Some(w) = waiter {
                    let _ = w.send(reply);
                }
            }
            // Dropping the senders fails every call in flight.
            if let Ok(mut w) = reader_waiters.lock() {
                *w = None;
            }
        });
        let op = ClientOp::Hello {
            cluster: options.cluster.clone(),
            token: options.token.clone(),
        };
        match conn.send(0, op, hello).await? {
            ClientReply::Hello { node, .. } => conn.node = node,
            other => return Err(unexpected(other)),
        }
        Ok(conn)
    }

    fn is_open(&self) -> bool {
        self.waiters.lock().map(|w| w.is_some()).unwrap_or(false)
    }

    /// Registers a call's id; its reply arrives on the receiver.
    fn expect(&self, id: u64) -> Result<oneshot::Receiver<ClientReply>> {
        let (tx, rx) = oneshot::channel();
        let mut waiters = self
            .waiters
            .lock()
            .map_err(|_| Error::Internal("client state poisoned".into()))?;
        let Some(waiters) = waiters.as_mut() else {
            return Err(Error::Unavailable("connection closed".into()));
        };
        waiters.insert(id, tx);
        Ok(rx)
    }

    /// Forgets a call that will not be waited for (timed out).
    fn forget(&self, id: u64) {
        if let Ok(mut w) = self.waiters.lock()
            && let Some(w) = w.as_mut()
        {
            w.remove(&id);
        }
    }

    async fn call(&self, id: u64, op: ClientOp) -> Result<ClientReply> {
        let reply = self.expect(id)?;
        self.send(id, op, reply).await
    }

    /// Sends request `id` and waits for its reply on `reply`.
    async fn send(
        &self,
        id: u64,
        op: ClientOp,
        reply: oneshot::Receiver<ClientReply>,
    ) -> Result<ClientReply> {
        let sent = self
            .writer
            .lock()
            .await
            .send(ClientRequest { id, op })
            .await
            .map_err(|e| e.0);
        // A node that refused the connection may have answered before the
        // request could be written: its answer says why.
        let reply = match (reply.await, sent) {
            (Ok(reply), _) => reply,
            (Err(_), Err(e)) => return Err(e),
            (Err(_), Ok(())) => {
                return Err(Error::Unavailable(
                    "connection closed before the reply".into(),
                ));
            }
        };
        match reply {
            ClientReply::Error { kind, message } => Err(Error::from_wire(kind, message)),
            reply => Ok(reply),
        }
    }
}

pub struct Client {
    addr: String,
    options: Options,
    conn: AsyncMutex<Option<Arc<Connection>>>,
    next_id: AtomicU64,
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

    /// Connects to the node at `addr` with `options`.
    pub async fn connect_with(addr: &str, options: Options) -> Result<Client> {
        let deadline = Instant::now() + options.timeout;
        let conn = connecting(addr, deadline, Connection::open(addr, &options)).await?;
        Ok(Client {
            addr: addr.to_string(),
            options,
            conn: AsyncMutex::new(Some(Arc::new(conn))),
            next_id: AtomicU64::new(1),
        })
    }

    /// The node this client is connected to.
    pub async fn node(&self) -> Result<NodeId> {
        let deadline = Instant::now() + self.options.timeout;
        let conn = connecting(&self.addr, deadline, self.connection()).await?;
        Ok(conn.node.clone())
    }

    async fn connection(&self) -> Result<Arc<Connection>> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.is_open()) {
            return Ok(c.clone());
        }
        let c = Arc::new(Connection::open(&self.addr, &self.options).await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn call(&self, op: ClientOp) -> Result<ClientReply> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.options.timeout;
        let conn = connecting(&self.addr, deadline, self.connection()).await?;
        let answered = timeout_at(deadline, conn.call(id, op)).await;
        answered.unwrap_or_else(|_| {
            conn.forget(id);
            Err(Error::Timeout)
        })
    }

    pub async fn get(&self, key: &[u8], r: Option<u8>) -> Result<ReadResult> {
        match self
            .call(ClientOp::Get {
                key: key.to_vec(),
                r,
            })
            .await?
        {
            ClientReply::Value { values, context } => Ok(ReadResult { values, context }),
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
        let op = ClientOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            context: context.to_vec(),
            w,
        };
        written(self.call(op).await?)
    }

    pub async fn delete(&self, key: &[u8], context: &[u8], w: Option<u8>) -> Result<WriteResult> {
        let op = ClientOp::Delete {
            key: key.to_vec(),
            context: context.to_vec(),
            w,
        };
        written(self.call(op).await?)
    }

    pub async fn status(&self) -> Result<StatusReport> {
        match self.call(ClientOp::Status).await? {
            ClientReply::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    pub async fn inspect(&self, key: &[u8]) -> Result<LocalCopy> {
        match self.call(ClientOp::Inspect { key: key.to_vec() }).await? {
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

    /// What a membership change would move.
    pub async fn plan(&self, change: PlanChange) -> Result<PlanReport> {
        match self.call(ClientOp::Plan { change }).await? {
            ClientReply::Plan(p) => Ok(p),
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

fn written(reply: ClientReply) -> Result<WriteResult> {
    match reply {
        ClientReply::Written { context, others } => Ok(WriteResult { context, others }),
        other => Err(unexpected(other)),
    }
}

/// Opening a connection (connect and hello) until `deadline`. Nothing was
/// asked of the node yet, so running out of time is `unavailable`, not an
/// indeterminate `timeout`.
async fn connecting<T>(
    addr: &str,
    deadline: Instant,
    open: impl Future<Output = Result<T>>,
) -> Result<T> {
    timeout_at(deadline, open).await.unwrap_or_else(|_| {
        Err(Error::Unavailable(format!(
            "{addr} did not answer the connection in time"
        )))
    })
}

fn unexpected(reply: ClientReply) -> Error {
    Error::Malformed(format!("unexpected reply {reply:?}"))
}

//! One connection of the Rust client to one node: requests pipelined by id,
//! replies matched by id. When the connection breaks, every call in flight
//! fails as `indeterminate` (it was sent; it may have taken effect) and the
//! connection reports itself closed, so the next call opens another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::tls;
use dynakv::protocol::{HELLO_VERSION, Versions};
use dynakv::wire::{ClientOp, ClientReply, ClientRequest, ClientResponse, DEFAULT_MAX_FRAME};
use dynakv::{Error, NodeId, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex as AsyncMutex, oneshot};
use tokio::time::{Instant, timeout_at};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::Options;
use crate::codec::Codec;

type ClientCodec = Codec<ClientResponse, ClientRequest>;

/// A call that failed, and whether the request reached the node. A request
/// that did not (the connection failed or was closed, the frame was not
/// written) did nothing there, so it may go to another node.
#[derive(Debug)]
pub(crate) struct Failed {
    pub error: Error,
    pub sent: bool,
}

impl Failed {
    pub fn unsent(error: Error) -> Self {
        Failed { error, sent: false }
    }
}

type Waiters = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<ClientReply>>>>>;

pub(crate) struct Connection {
    writer: AsyncMutex<FramedWrite<tls::WriteHalf, ClientCodec>>,
    /// None once the connection has failed.
    waiters: Waiters,
    pub node: NodeId,
    addr: String,
}

impl Connection {
    /// Connects and says hello (call within a timeout: neither is bounded
    /// here).
    pub async fn open(addr: &str, options: &Options) -> Result<Connection> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot connect to {addr}: {e}")))?;
        stream
            .set_nodelay(true)
            .map_err(|e| Error::Unavailable(format!("socket setup failed: {e}")))?;
        let (read, write) = match &options.tls {
            Some(tls) => tls.connect(addr, stream).await?,
            None => tls::plain(stream),
        };
        let waiters: Waiters = Arc::new(Mutex::new(Some(HashMap::new())));
        let codec = ClientCodec::new(DEFAULT_MAX_FRAME);
        let speaking = codec.speaking();
        speaking.set(HELLO_VERSION);
        let mut conn = Connection {
            writer: AsyncMutex::new(FramedWrite::new(write, codec)),
            waiters,
            node: NodeId::new("unknown").expect("a valid id"),
            addr: addr.to_string(),
        };
        // The hello's waiter is in place before anything is read: a node
        // that refuses the connection (too many open) answers id 0 at once.
        let hello = conn.expect(0).map_err(|f| f.error)?;
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
        let mine = Versions::this_build();
        let op = ClientOp::Hello {
            cluster: options.cluster.clone(),
            token: options.token.clone(),
            versions: Some(mine),
        };
        let answer = conn.send(0, op, hello).await.map_err(|f| f.error)?;
        match answer {
            ClientReply::Hello { node, versions, .. } => {
                let agreed = mine.agree_on_client_port(node.as_str(), versions);
                speaking.set(agreed.map_err(|(e, _)| e)?);
                conn.node = node;
            }
            ClientReply::Error { kind, message } => return Err(Error::from_wire(kind, message)),
            other => return Err(unexpected(other)),
        }
        Ok(conn)
    }

    pub fn is_open(&self) -> bool {
        self.waiters.lock().map(|w| w.is_some()).unwrap_or(false)
    }

    /// Registers a call's id; its reply arrives on the receiver.
    fn expect(&self, id: u64) -> Result<oneshot::Receiver<ClientReply>, Failed> {
        let (tx, rx) = oneshot::channel();
        let mut waiters = self
            .waiters
            .lock()
            .map_err(|_| Failed::unsent(Error::Internal("client state poisoned".into())))?;
        let Some(waiters) = waiters.as_mut() else {
            return Err(Failed::unsent(Error::Unavailable(format!(
                "connection to {} closed",
                self.addr
            ))));
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

    /// Sends request `id` and waits for its reply until `deadline`. The
    /// node's answer comes back as it is, an error answer included.
    pub async fn call(
        &self,
        id: u64,
        op: ClientOp,
        deadline: Instant,
    ) -> Result<ClientReply, Failed> {
        let reply = self.expect(id)?;
        let answered = timeout_at(deadline, self.send(id, op, reply)).await;
        answered.unwrap_or_else(|_| {
            self.forget(id);
            Err(Failed {
                error: Error::Timeout,
                sent: true,
            })
        })
    }

    /// Sends request `id` and waits for its reply on `reply`.
    async fn send(
        &self,
        id: u64,
        op: ClientOp,
        reply: oneshot::Receiver<ClientReply>,
    ) -> Result<ClientReply, Failed> {
        // A frame that could not be written whole cannot be decoded, so a
        // failed write did nothing at the node.
        let sent = self
            .writer
            .lock()
            .await
            .send(ClientRequest { id, op })
            .await
            .map_err(|e| e.0);
        // A node that refused the connection may have answered before the
        // request could be written: its answer says why.
        match (reply.await, sent) {
            (Ok(reply), _) => Ok(reply),
            (Err(_), Err(e)) => Err(Failed::unsent(e)),
            (Err(_), Ok(())) => Err(Failed {
                error: Error::Indeterminate(format!(
                    "the connection to {} closed before the reply",
                    self.addr
                )),
                sent: true,
            }),
        }
    }
}

/// Opening a connection (connect and hello) until `deadline`. Nothing was
/// asked of the node yet, so running out of time is `unavailable`, not an
/// indeterminate `timeout`.
pub(crate) async fn connecting<T>(
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

pub(crate) fn unexpected(reply: ClientReply) -> Error {
    Error::Malformed(format!("unexpected reply {reply:?}"))
}

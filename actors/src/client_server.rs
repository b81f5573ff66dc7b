//! ClientServer: the binary client protocol on the client port.
//!
//! Receives TCP connections; each becomes a `ClientConn` actor that reads
//! frames, checks the opening hello (protocol version via the frame, cluster
//! name), hands each operation to the Coordinator and writes each reply as
//! soon as it is ready, tagged with the request's id, so pipelined requests
//! are answered out of order. A bad frame gets an error reply and the
//! connection is closed with a logged reason; every other connection carries
//! on. Connections beyond `max_connections` are refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix::WeakAddr;
use actix::io::{FramedWrite, WriteHandler};
use actix::prelude::*;
use dynakv::wire::{ClientOp, ClientReply, ClientRequest, ClientResponse};
use dynakv::{Error, NodeId};
use futures_util::stream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::FramedRead;
use tracing::{debug, warn};

use crate::codec::{Codec, CodecError};
use crate::coordinator::{Coordinator, Execute};

/// Requests one connection may have in flight; more are refused as
/// overloaded until replies drain.
const MAX_IN_FLIGHT: usize = 1024;

type ServerCodec = Codec<ClientRequest, ClientResponse>;

#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub me: NodeId,
    pub cluster: String,
    pub max_frame: u32,
    pub max_connections: usize,
}

pub struct ClientServer {
    settings: ClientSettings,
    listener: Option<TcpListener>,
    coordinator: Addr<Coordinator>,
    open: Arc<AtomicUsize>,
    conns: Vec<WeakAddr<ClientConn>>,
}

impl ClientServer {
    pub fn new(
        settings: ClientSettings,
        listener: TcpListener,
        coordinator: Addr<Coordinator>,
    ) -> Self {
        ClientServer {
            settings,
            listener: Some(listener),
            coordinator,
            open: Arc::new(AtomicUsize::new(0)),
            conns: Vec::new(),
        }
    }
}

impl Actor for ClientServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(listener) = self.listener.take() {
            ctx.add_stream(stream::unfold(listener, |l| async move {
                Some((l.accept().await, l))
            }));
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for conn in self.conns.iter().filter_map(WeakAddr::upgrade) {
            conn.do_send(Hangup);
        }
    }
}

/// Closes a client connection (the node is stopping).
#[derive(Message)]
#[rtype(result = "()")]
struct Hangup;

impl StreamHandler<std::io::Result<(TcpStream, SocketAddr)>> for ClientServer {
    fn handle(
        &mut self,
        accepted: std::io::Result<(TcpStream, SocketAddr)>,
        _: &mut Context<Self>,
    ) {
        let (stream, from) = match accepted {
            Ok(a) => a,
            Err(e) => return warn!(error = %e, "accepting a client connection failed"),
        };
        if self.open.load(Ordering::Relaxed) >= self.settings.max_connections {
            warn!(%from, limit = self.settings.max_connections, "refusing a client connection: too many open");
            return drop(stream);
        }
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "TCP_NODELAY not set");
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        let settings = self.settings.clone();
        let coordinator = self.coordinator.clone();
        let open = self.open.clone();
        let conn = ClientConn::create(move |ctx| {
            let (read, write) = stream.into_split();
            ctx.add_stream(FramedRead::new(read, ServerCodec::new(settings.max_frame)));
            let writer = FramedWrite::new(write, ServerCodec::new(settings.max_frame), ctx);
            ClientConn {
                settings,
                peer: from,
                coordinator,
                writer,
                greeted: false,
                closing: false,
                read_done: false,
                in_flight: 0,
                open,
            }
        });
        self.conns.retain(|c| c.upgrade().is_some());
        self.conns.push(conn.downgrade());
    }
}

/// One client connection.
pub struct ClientConn {
    settings: ClientSettings,
    peer: SocketAddr,
    coordinator: Addr<Coordinator>,
    writer: FramedWrite<ClientResponse, OwnedWriteHalf, ServerCodec>,
    greeted: bool,
    /// Set once the connection is being closed: nothing more is read.
    closing: bool,
    /// Set once the client has stopped sending.
    read_done: bool,
    in_flight: usize,
    open: Arc<AtomicUsize>,
}

impl ClientConn {
    fn reply(&mut self, id: u64, reply: ClientReply) {
        self.writer.write(ClientResponse { id, reply });
    }

    /// Answers with an error and closes the connection once it is written.
    fn refuse(&mut self, id: u64, error: &Error) {
        warn!(peer = %self.peer, error = %error, "closing client connection");
        self.reply(id, ClientReply::error(error));
        self.writer.close();
        self.closing = true;
    }

    fn close_when_drained(&mut self) {
        if self.read_done && self.in_flight == 0 && !self.closing {
            self.closing = true;
            self.writer.close();
        }
    }

    fn greet(&mut self, id: u64, op: ClientOp) {
        match op {
            ClientOp::Hello { cluster, .. }
                if cluster.is_empty() || cluster == self.settings.cluster =>
            {
                self.greeted = true;
                self.reply(
                    id,
                    ClientReply::Hello {
                        node: self.settings.me.clone(),
                        cluster: self.settings.cluster.clone(),
                    },
                );
            }
            ClientOp::Hello { cluster, .. } => self.refuse(
                id,
                &Error::InvalidRequest(format!(
                    "this node belongs to cluster {:?}, not {cluster:?}",
                    self.settings.cluster
                )),
            ),
            _ => self.refuse(
                id,
                &Error::InvalidRequest("a connection must open with hello".into()),
            ),
        }
    }
}

impl Actor for ClientConn {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StreamHandler<Result<ClientRequest, CodecError>> for ClientConn {
    fn handle(&mut self, frame: Result<ClientRequest, CodecError>, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        let ClientRequest { id, op } = match frame {
            Ok(request) => request,
            Err(CodecError(e)) => return self.refuse(0, &e),
        };
        if !self.greeted {
            return self.greet(id, op);
        }
        if self.in_flight >= MAX_IN_FLIGHT {
            return self.reply(id, ClientReply::error(&Error::Overloaded));
        }
        self.in_flight += 1;
        ctx.spawn(self.coordinator.send(Execute(op)).into_actor(self).map(
            move |answer, conn, _| {
                conn.in_flight -= 1;
                let reply = answer.unwrap_or_else(|e| {
                    ClientReply::error(&Error::Unavailable(format!("coordinator unavailable: {e}")))
                });
                conn.reply(id, reply);
                conn.close_when_drained();
            },
        ));
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // The client sent its last request: answer what is in flight, then
        // close (the writer's `finished` stops the actor).
        debug!(peer = %self.peer, "client finished sending");
        self.read_done = true;
        self.close_when_drained();
    }
}

impl Handler<Hangup> for ClientConn {
    type Result = ();

    fn handle(&mut self, _: Hangup, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl WriteHandler<CodecError> for ClientConn {
    fn error(&mut self, err: CodecError, _: &mut Self::Context) -> Running {
        debug!(peer = %self.peer, error = %err, "client write failed");
        Running::Stop
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

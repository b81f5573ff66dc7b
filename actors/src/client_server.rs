//! ClientServer: the binary client protocol on the client port.
//!
//! Receives TCP connections; each becomes a `ClientConn` actor that reads
//! frames, checks the opening hello (protocol version via the frame, cluster
//! name), hands each operation to the Coordinator and writes each reply as
//! soon as it is ready, tagged with the request's id, so pipelined requests
//! are answered out of order. A bad frame gets an error reply and the
//! connection is closed with a logged reason; every other connection carries
//! on. Connections beyond `max_connections` are refused with an
//! `overloaded` error that says so; a connection idle for `limits.client_idle_ms`
//! (nothing in flight, nothing received) is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::WeakAddr;
use actix::io::{FramedWrite, WriteHandler};
use actix::prelude::*;
use dynakv::auth;
use dynakv::protocol::Versions;
use dynakv::wire::{ClientOp, ClientReply, ClientRequest, ClientResponse, FrameCodec};
use dynakv::{Error, ErrorKind, NodeId};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;
use tracing::{debug, warn};

use crate::codec::{Codec, CodecError, Speaking};
use crate::coordinator::{Coordinator, Execute};
use crate::listener::{Accepted, Listener};
use crate::metrics::{Label, Metrics};
use crate::supervise::send_error;
use crate::supervise::shielded;
use crate::tls::{self, NodeTls};

type ServerCodec = Codec<ClientRequest, ClientResponse>;

#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub me: NodeId,
    pub cluster: String,
    pub max_frame: u32,
    pub max_connections: usize,
    /// Requests one connection may have in flight.
    pub max_in_flight: usize,
    /// Token clients must present (empty: none).
    pub client_token: String,
    /// How long a connection may sit idle before it is closed (None: ever).
    pub idle: Option<Duration>,
    pub metrics: Metrics,
    /// TLS on this port (None: plaintext).
    pub tls: Option<NodeTls>,
    /// The protocol versions this node speaks.
    pub versions: Versions,
}

/// How long a refused client is given to read why.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

pub struct ClientServer {
    settings: ClientSettings,
    /// The client port (closed once draining: nothing more is accepted).
    listener: Listener,
    coordinator: Addr<Coordinator>,
    open: Arc<AtomicUsize>,
    conns: Vec<WeakAddr<ClientConn>>,
}

impl ClientServer {
    pub fn new(
        settings: ClientSettings,
        listener: std::net::TcpListener,
        coordinator: Addr<Coordinator>,
    ) -> Self {
        ClientServer {
            settings,
            listener: Listener::new(listener),
            coordinator,
            open: Arc::new(AtomicUsize::new(0)),
            conns: Vec::new(),
        }
    }
}

const NAME: &str = "client-server";

/// The listener and the open connections outlive a restart; the server has
/// nothing else to rebuild.
impl Supervised for ClientServer {}

impl Actor for ClientServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.listener.accept(ctx);
    }
}

/// Stop accepting clients, let every open connection finish the requests
/// it has in flight, and answer when they are closed or `within` passed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DrainAll {
    pub within: std::time::Duration,
}

impl Handler<DrainAll> for ClientServer {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, DrainAll { within }: DrainAll, ctx: &mut Context<Self>) -> Self::Result {
        // Restarting without the listener drops the accept stream.
        self.listener.close();
        ctx.stop();
        let drained: Vec<_> = self
            .conns
            .iter()
            .filter_map(WeakAddr::upgrade)
            .map(|c| c.send(Drain))
            .collect();
        Box::pin(async move {
            let all = futures_util::future::join_all(drained);
            if tokio::time::timeout(within, all).await.is_err() {
                warn!("client connections still busy at the shutdown deadline; closing them");
            }
        })
    }
}

impl ClientServer {
    fn accept(&mut self, accepted: Accepted, ctx: &mut Context<Self>) {
        let (stream, from) = match accepted {
            Ok(a) => a,
            Err(e) => return warn!(error = %e, "accepting a client connection failed"),
        };
        if self.open.load(Ordering::Relaxed) >= self.settings.max_connections {
            let limit = self.settings.max_connections;
            warn!(%from, limit, "refusing a client connection: too many open");
            self.settings.metrics.client_refused();
            // Over TLS the reason could only be told after a handshake.
            if self.settings.tls.is_none() {
                refuse(stream, &self.settings, limit);
            }
            return;
        }
        let accepting = tls::Accepting {
            port: "client",
            acceptor: self.settings.tls.as_ref().map(|t| t.clients.clone()),
            metrics: self.settings.metrics.clone(),
        };
        accepting.ready(stream, from, self, ctx, move |act, halves, _| {
            act.open_conn(halves, from)
        });
    }

    /// Starts the actor of a connection that is ready for frames.
    fn open_conn(&mut self, (read, write): (tls::ReadHalf, tls::WriteHalf), from: SocketAddr) {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.settings.metrics.client_connections(open);
        let settings = self.settings.clone();
        let coordinator = self.coordinator.clone();
        let open = self.open.clone();
        let conn = ClientConn::create(move |ctx| {
            ctx.add_stream(FramedRead::new(read, ServerCodec::new(settings.max_frame)));
            let codec = ServerCodec::new(settings.max_frame);
            // Until the hello, the oldest version: a client of any can
            // read why it is refused.
            let speaking = codec.speaking();
            speaking.set(settings.versions.min);
            let writer = FramedWrite::new(write, codec, ctx);
            ClientConn {
                settings,
                peer: from,
                coordinator,
                writer,
                speaking,
                greeted: false,
                last_heard: Instant::now(),
                closing: false,
                read_done: false,
                draining: false,
                on_close: Vec::new(),
                in_flight: 0,
                open,
            }
        });
        self.conns.retain(|c| c.upgrade().is_some());
        self.conns.push(conn.downgrade());
    }
}

impl StreamHandler<Accepted> for ClientServer {
    fn handle(&mut self, accepted: Accepted, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, ctx| act.accept(accepted, ctx))
    }
}

/// Tells a client over the connection limit why it is refused (its hello is
/// answered, as id 0, with a retryable `overloaded`), then closes.
fn refuse(mut stream: TcpStream, settings: &ClientSettings, limit: usize) {
    let reply = ClientResponse {
        id: 0,
        reply: ClientReply::Error {
            kind: ErrorKind::Overloaded,
            message: format!(
                "too many client connections: this node serves {limit} at once \
                 (limits.max_connections); try again later or another node"
            ),
        },
    };
    let frame = FrameCodec::new(settings.max_frame)
        .at(settings.versions.min)
        .to_frame(&reply);
    actix::spawn(async move {
        let Ok(frame) = frame else { return };
        let written = async {
            stream.write_all(&frame).await?;
            stream.shutdown().await
        };
        let _ = tokio::time::timeout(REFUSAL_WRITE, written).await;
    });
}

/// One client connection.
pub struct ClientConn {
    settings: ClientSettings,
    peer: SocketAddr,
    coordinator: Addr<Coordinator>,
    writer: FramedWrite<ClientResponse, tls::WriteHalf, ServerCodec>,
    /// The version the writer encodes at: agreed by the hello.
    speaking: Speaking,
    greeted: bool,
    /// When the last request arrived (or the connection opened).
    last_heard: Instant,
    /// Set once the connection is being closed: nothing more is read.
    closing: bool,
    /// Set once the client has stopped sending (or the node is draining).
    read_done: bool,
    /// The node is shutting down: new requests are refused.
    draining: bool,
    /// Told when the connection has closed.
    on_close: Vec<oneshot::Sender<()>>,
    in_flight: usize,
    open: Arc<AtomicUsize>,
}

impl ClientConn {
    fn reply(&mut self, id: u64, reply: ClientReply) {
        self.writer.write(ClientResponse { id, reply });
    }

    /// Answers with an error and closes the connection once it is written.
    /// Replies to request `id`, an operation `op` that arrived at
    /// `started`, and counts it.
    fn answer(
        &mut self,
        id: u64,
        op: (&'static str, &Label),
        started: Instant,
        reply: ClientReply,
    ) {
        let outcome = match &reply {
            ClientReply::Error { kind, .. } => Some(*kind),
            _ => None,
        };
        self.settings
            .metrics
            .request(op, outcome, started.elapsed());
        self.reply(id, reply);
    }

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
            ClientOp::Hello { token, .. }
                if !auth::client_allowed(&self.settings.client_token, token.as_deref()) =>
            {
                self.refuse(
                    id,
                    &Error::Unauthorized("missing or wrong client token".into()),
                )
            }
            ClientOp::Hello {
                cluster, versions, ..
            } if cluster.is_empty() || cluster == self.settings.cluster => {
                let who = format!("client {}", self.peer);
                match self.settings.versions.agree_on_client_port(&who, versions) {
                    Ok(version) => {
                        self.speaking.set(version);
                        self.greeted = true;
                        self.reply(
                            id,
                            ClientReply::Hello {
                                node: self.settings.me.clone(),
                                cluster: self.settings.cluster.clone(),
                                versions: Some(self.settings.versions),
                            },
                        );
                    }
                    Err((e, told_at)) => {
                        self.speaking.set(told_at);
                        self.refuse(id, &e)
                    }
                }
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

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(idle) = self.settings.idle else {
            return;
        };
        let every = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(10));
        ctx.run_interval(every, move |conn, _| {
            if conn.in_flight == 0 && !conn.closing && conn.last_heard.elapsed() >= idle {
                debug!(peer = %conn.peer, ?idle, "closing an idle client connection");
                conn.closing = true;
                conn.writer.close();
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        let open = self.open.fetch_sub(1, Ordering::Relaxed) - 1;
        self.settings.metrics.client_connections(open);
        for tx in self.on_close.drain(..) {
            let _ = tx.send(());
        }
    }
}

impl StreamHandler<Result<ClientRequest, CodecError>> for ClientConn {
    fn handle(&mut self, frame: Result<ClientRequest, CodecError>, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.last_heard = Instant::now();
        let ClientRequest { id, op } = match frame {
            Ok(request) => request,
            Err(CodecError(e)) => return self.refuse(0, &e),
        };
        if !self.greeted {
            return self.greet(id, op);
        }
        let (name, started) = (op.name(), Instant::now());
        let namespace = Metrics::namespace_label(op.namespace());
        if self.draining {
            let refused = Error::Unavailable("the node is shutting down".into());
            return self.answer(
                id,
                (name, &namespace),
                started,
                ClientReply::error(&refused),
            );
        }
        if self.in_flight >= self.settings.max_in_flight {
            return self.answer(
                id,
                (name, &namespace),
                started,
                ClientReply::error(&Error::Overloaded),
            );
        }
        let (reply, answer) = oneshot::channel();
        if let Err(e) = self.coordinator.try_send(Execute { op, reply }) {
            let refused = send_error(e, "the coordinator");
            return self.answer(
                id,
                (name, &namespace),
                started,
                ClientReply::error(&refused),
            );
        }
        self.in_flight += 1;
        ctx.spawn(answer.into_actor(self).map(move |answer, conn, _| {
            conn.in_flight -= 1;
            let reply = answer.unwrap_or_else(|_| {
                // Not `unavailable`: the request may have been carried out.
                let lost = Error::Internal("the coordinator dropped the request".into());
                ClientReply::error(&lost)
            });
            conn.answer(id, (name, &namespace), started, reply);
            conn.close_when_drained();
        }));
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // The client sent its last request: answer what is in flight, then
        // close (the writer's `finished` stops the actor).
        debug!(peer = %self.peer, "client finished sending");
        self.read_done = true;
        self.close_when_drained();
    }
}

/// Stop taking requests, answer those in flight, then close. Answered once
/// the connection is closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

impl Handler<Drain> for ClientConn {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.on_close.push(tx);
        self.draining = true;
        self.read_done = true;
        self.close_when_drained();
        Box::pin(async move {
            let _ = rx.await;
        })
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

//! Link: one TCP connection to a peer, owned by the Bridge.
//!
//! An outbound link (opened by this node) connects, says `Hello`, waits for
//! the peer's `Welcome`, then carries this node's requests and the peer's
//! replies; an inbound link (opened by the peer) waits for its `Hello`,
//! answers `Welcome`, then carries the peer's requests and this node's
//! replies. Frames written while connecting are queued. A bad frame, a
//! misaddressed envelope or a peer of another cluster closes the link, with
//! the reason logged. Every event goes to the Bridge, which routes.

use std::sync::Arc;
use std::time::Duration;

use actix::io::{FramedWrite, WriteHandler};
use actix::prelude::*;
use dynakv::NodeId;
use dynakv::auth::{self, Nonce, Role};
use dynakv::peer::{PeerFrame, PeerHello};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_util::codec::FramedRead;
use tracing::{debug, warn};

use crate::bridge::{Bridge, BridgeSettings, Inbound, LinkDown, LinkUp};
use crate::codec::{Codec, CodecError};
use crate::metrics::Metrics;

/// Frames a link holds while it connects; more are dropped.
const LINK_QUEUE: usize = 65_536;
/// How long a connected peer has to finish the hello and proofs.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A frame to write on a link.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Frame(pub PeerFrame);

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Close;

type PeerCodec = Codec<PeerFrame, PeerFrame>;

/// A link's address as the Bridge keeps it: shared, since cloning an actix
/// `Addr` allocates and a link is named in every message it carries.
pub(crate) type LinkAddr = Arc<Addr<Link>>;

/// One TCP connection to a peer, opened by us (outbound, carries our
/// requests and their replies) or by the peer (inbound, carries its requests
/// and our replies).
pub struct Link {
    bridge: Addr<Bridge>,
    /// The address dialled, for outbound links.
    addr: Option<String>,
    /// This side's hello, with the nonce fresh for this connection.
    hello: PeerHello,
    secret: String,
    metrics: Metrics,
    max_frame: u32,
    connect_timeout: Duration,
    peer: Option<NodeId>,
    /// The peer's nonce, until its proof is checked (inbound links).
    peer_nonce: Option<Nonce>,
    writer: Option<FramedWrite<PeerFrame, OwnedWriteHalf, PeerCodec>>,
    queue: Vec<PeerFrame>,
    ready: bool,
    /// This link's own address, once it has given it out.
    me: Option<LinkAddr>,
}

impl Link {
    fn new(
        bridge: Addr<Bridge>,
        addr: Option<String>,
        hello: PeerHello,
        settings: &BridgeSettings,
    ) -> Self {
        Link {
            bridge,
            addr,
            hello,
            secret: settings.secret.clone(),
            metrics: settings.metrics.clone(),
            max_frame: settings.max_frame,
            connect_timeout: settings.connect_timeout,
            peer: None,
            peer_nonce: None,
            writer: None,
            queue: Vec::new(),
            ready: false,
            me: None,
        }
    }

    pub(crate) fn outbound(
        bridge: Addr<Bridge>,
        addr: String,
        hello: PeerHello,
        settings: &BridgeSettings,
    ) -> Self {
        Link::new(bridge, Some(addr), hello, settings)
    }

    pub(crate) fn inbound(
        bridge: Addr<Bridge>,
        stream: TcpStream,
        hello: PeerHello,
        settings: &BridgeSettings,
        ctx: &mut Context<Self>,
    ) -> Self {
        let mut link = Link::new(bridge, None, hello, settings);
        link.attach(stream, ctx);
        link
    }

    fn attach(&mut self, stream: TcpStream, ctx: &mut Context<Self>) {
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "TCP_NODELAY not set");
        }
        let (read, write) = stream.into_split();
        ctx.add_stream(FramedRead::new(read, PeerCodec::new(self.max_frame)));
        self.writer = Some(FramedWrite::new(write, PeerCodec::new(self.max_frame), ctx));
    }

    fn write(&mut self, mut frame: PeerFrame) {
        // Envelopes are addressed to whoever this link reaches.
        if let (PeerFrame::Envelope(env), Some(peer)) = (&mut frame, &self.peer) {
            env.to = peer.clone();
        }
        if let Some(w) = &mut self.writer {
            w.write(frame);
        }
    }

    fn outbound_link(&self) -> bool {
        self.addr.is_some()
    }

    fn me(&mut self, ctx: &Context<Self>) -> LinkAddr {
        self.me
            .get_or_insert_with(|| Arc::new(ctx.address()))
            .clone()
    }
}

impl Actor for Link {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(LINK_QUEUE);
        // A peer that does not finish the handshake is not waited for.
        ctx.run_later(self.connect_timeout + HANDSHAKE_TIMEOUT, |link, ctx| {
            if !link.ready {
                warn!(peer = ?link.peer, addr = ?link.addr, "peer did not finish the handshake in time; closing");
                link.metrics.peer_refused();
                ctx.stop();
            }
        });
        let Some(addr) = self.addr.clone() else {
            return;
        };
        let timeout = self.connect_timeout;
        ctx.wait(
            async move { tokio::time::timeout(timeout, TcpStream::connect(addr)).await }
                .into_actor(self)
                .map(|connected, link, ctx| match connected {
                    Ok(Ok(stream)) => {
                        link.attach(stream, ctx);
                        let hello = PeerFrame::Hello(link.hello.clone());
                        link.write(hello);
                    }
                    Ok(Err(e)) => {
                        debug!(addr = ?link.addr, error = %e, "peer connect failed");
                        ctx.stop();
                    }
                    Err(_) => {
                        debug!(addr = ?link.addr, "peer connect timed out");
                        ctx.stop();
                    }
                }),
        );
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        let link = self.me(ctx);
        self.bridge.do_send(LinkDown {
            link,
            peer: self.peer.clone(),
            addr: self.addr.clone(),
            outbound: self.outbound_link(),
        });
    }
}

impl Handler<Frame> for Link {
    type Result = ();

    fn handle(&mut self, Frame(frame): Frame, _: &mut Context<Self>) {
        if self.ready {
            self.write(frame);
        } else if self.queue.len() < LINK_QUEUE {
            self.queue.push(frame);
        }
    }
}

impl Handler<Close> for Link {
    type Result = ();

    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl StreamHandler<std::result::Result<PeerFrame, CodecError>> for Link {
    fn handle(
        &mut self,
        frame: std::result::Result<PeerFrame, CodecError>,
        ctx: &mut Context<Self>,
    ) {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                warn!(peer = ?self.peer, addr = ?self.addr, error = %e, "closing peer connection");
                return ctx.stop();
            }
        };
        let (cluster, me, secret) = (
            self.hello.cluster.clone(),
            self.hello.node.clone(),
            self.secret.clone(),
        );
        match (frame, self.ready, self.outbound_link()) {
            // Inbound: the peer says who it is; answer with our proof.
            (PeerFrame::Hello(h), false, false) if self.peer.is_none() => {
                if h.cluster != cluster {
                    warn!(peer = %h.node, cluster = %h.cluster, "refusing a peer of another cluster");
                    self.metrics.peer_refused();
                    return ctx.stop();
                }
                let proof = auth::prove(
                    secret.as_bytes(),
                    Role::Acceptor,
                    &cluster,
                    &me,
                    &h.nonce,
                    &self.hello.nonce,
                );
                self.peer = Some(h.node);
                self.peer_nonce = Some(h.nonce);
                self.write(PeerFrame::Welcome {
                    hello: self.hello.clone(),
                    proof,
                });
            }
            // Inbound: the peer's proof; nothing else is taken before it.
            (PeerFrame::Proof(proof), false, false) => {
                let (Some(peer), Some(nonce)) = (self.peer.clone(), self.peer_nonce) else {
                    warn!("peer sent a proof before its hello; closing");
                    return ctx.stop();
                };
                if !auth::verify(
                    secret.as_bytes(),
                    Role::Connector,
                    &cluster,
                    &peer,
                    &self.hello.nonce,
                    &nonce,
                    &proof,
                ) {
                    warn!(%peer, "refusing a peer that does not hold the cluster secret");
                    self.metrics.peer_refused();
                    return ctx.stop();
                }
                self.ready = true;
                let link = self.me(ctx);
                self.bridge.do_send(LinkUp {
                    link,
                    peer,
                    addr: None,
                    outbound: false,
                });
            }
            // Outbound: the peer's welcome and proof. Ours goes first, so a
            // peer with another secret learns why it is refused and logs it.
            (PeerFrame::Welcome { hello: h, proof }, false, true) => {
                if h.cluster != cluster {
                    warn!(peer = %h.node, cluster = %h.cluster, "peer belongs to another cluster");
                    self.metrics.peer_refused();
                    return ctx.stop();
                }
                let mine = auth::prove(
                    secret.as_bytes(),
                    Role::Connector,
                    &cluster,
                    &me,
                    &h.nonce,
                    &self.hello.nonce,
                );
                self.write(PeerFrame::Proof(mine));
                if !auth::verify(
                    secret.as_bytes(),
                    Role::Acceptor,
                    &cluster,
                    &h.node,
                    &self.hello.nonce,
                    &h.nonce,
                    &proof,
                ) {
                    warn!(peer = %h.node, addr = ?self.addr, "peer does not hold the cluster secret; closing");
                    self.metrics.peer_refused();
                    // Close once our proof is out (the peer logs its own
                    // refusal); the writer's `finished` stops the link.
                    if let Some(w) = &mut self.writer {
                        w.close();
                    }
                    return;
                }
                self.peer = Some(h.node.clone());
                self.ready = true;
                for frame in std::mem::take(&mut self.queue) {
                    self.write(frame);
                }
                let link = self.me(ctx);
                self.bridge.do_send(LinkUp {
                    link,
                    peer: h.node,
                    addr: self.addr.clone(),
                    outbound: true,
                });
            }
            (PeerFrame::Envelope(env), true, _) => {
                if Some(&env.from) != self.peer.as_ref() || env.to != self.hello.node {
                    warn!(peer = ?self.peer, from = %env.from, to = %env.to, "misaddressed envelope; closing");
                    return ctx.stop();
                }
                let link = self.me(ctx);
                self.bridge.do_send(Inbound { env, link });
            }
            (other, ready, outbound) => {
                warn!(peer = ?self.peer, ready, outbound, frame = ?std::mem::discriminant(&other), "out-of-order peer frame; closing");
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        debug!(peer = ?self.peer, "peer connection closed");
        ctx.stop();
    }
}

impl WriteHandler<CodecError> for Link {
    fn error(&mut self, err: CodecError, _: &mut Self::Context) -> Running {
        warn!(peer = ?self.peer, error = %err, "peer write failed");
        Running::Stop
    }
}

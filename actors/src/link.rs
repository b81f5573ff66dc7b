//! Link: one TCP connection to a peer, owned by the Bridge.
//!
//! An outbound link (opened by this node) connects and carries this node's
//! requests and the peer's replies; an inbound link (opened by the peer)
//! carries the peer's requests and this node's replies. Either way the
//! core's `dynakv::handshake::Handshake` says what to answer while the
//! connection opens (hello, welcome, proofs) and what an open link takes;
//! this actor reads and writes frames. Frames written while connecting
//! are queued. A bad frame, a refused handshake or a misaddressed envelope
//! closes the link, with the reason logged. Every event goes to the Bridge,
//! which routes.

use std::sync::Arc;
use std::time::Duration;

use actix::io::{FramedWrite, WriteHandler};
use actix::prelude::*;
use dynakv::NodeId;
use dynakv::handshake::Handshake;
use dynakv::peer::{Envelope, PeerFrame, PeerHello};
use dynakv::protocol::{HELLO_VERSION, Versions};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::FramedRead;
use tracing::{debug, warn};

use crate::codec::{Codec, CodecError, Speaking};
use crate::metrics::Metrics;
use crate::tls::{self, NodeTls};

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

/// What a link reports to its owner (the Bridge): it opened, closed, or
/// read an envelope.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct LinkUp {
    pub(crate) link: LinkAddr,
    pub(crate) peer: NodeId,
    /// The protocol versions the peer's hello said it speaks.
    pub(crate) speaks: Versions,
    /// Set for outbound links opened by address.
    pub(crate) addr: Option<String>,
    pub(crate) outbound: bool,
}

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct LinkDown {
    pub(crate) link: LinkAddr,
    pub(crate) peer: Option<NodeId>,
    pub(crate) addr: Option<String>,
    pub(crate) outbound: bool,
}

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Inbound {
    pub(crate) env: Envelope,
    pub(crate) link: LinkAddr,
}

/// Where a link reports.
pub(crate) struct LinkReports {
    pub(crate) up: Recipient<LinkUp>,
    pub(crate) down: Recipient<LinkDown>,
    pub(crate) inbound: Recipient<Inbound>,
}

/// What a link needs from the node's configuration.
#[derive(Clone)]
pub(crate) struct LinkSettings {
    /// The cluster secret both sides prove they hold (empty: none).
    pub(crate) secret: String,
    pub(crate) metrics: Metrics,
    pub(crate) max_frame: u32,
    pub(crate) connect_timeout: Duration,
    /// TLS on peer links (None: plaintext).
    pub(crate) tls: Option<NodeTls>,
}

/// A link's address as the Bridge keeps it: shared, since cloning an actix
/// `Addr` allocates and a link is named in every message it carries.
pub(crate) type LinkAddr = Arc<Addr<Link>>;

/// One TCP connection to a peer, opened by us (outbound, carries our
/// requests and their replies) or by the peer (inbound, carries its requests
/// and our replies).
pub struct Link {
    reports: LinkReports,
    /// The address dialled, for outbound links.
    addr: Option<String>,
    handshake: Handshake,
    /// An outbound link's hello, until it is connected and sends it.
    hello: Option<PeerFrame>,
    metrics: Metrics,
    max_frame: u32,
    connect_timeout: Duration,
    writer: Option<FramedWrite<PeerFrame, tls::WriteHalf, PeerCodec>>,
    /// The version the writer encodes at: the hellos' until they agree.
    speaking: Speaking,
    /// How an outbound link opens TLS (None: plaintext).
    dial: Option<TlsConnector>,
    queue: Vec<PeerFrame>,
    /// This link's own address, once it has given it out.
    me: Option<LinkAddr>,
}

impl Link {
    pub(crate) fn outbound(
        reports: LinkReports,
        addr: String,
        hello: PeerHello,
        settings: LinkSettings,
    ) -> Self {
        let (handshake, first) = Handshake::connector(hello, settings.secret.as_bytes());
        Link {
            reports,
            addr: Some(addr),
            handshake,
            hello: Some(first),
            metrics: settings.metrics,
            max_frame: settings.max_frame,
            connect_timeout: settings.connect_timeout,
            writer: None,
            speaking: Speaking::default(),
            dial: settings.tls.map(|t| t.dial),
            queue: Vec::new(),
            me: None,
        }
    }

    /// A link the peer opened, over its connection's halves (TLS already
    /// accepted, if on).
    pub(crate) fn inbound(
        reports: LinkReports,
        stream: (tls::ReadHalf, tls::WriteHalf),
        hello: PeerHello,
        settings: LinkSettings,
        ctx: &mut Context<Self>,
    ) -> Self {
        let mut link = Link {
            reports,
            addr: None,
            handshake: Handshake::acceptor(hello, settings.secret.as_bytes()),
            hello: None,
            metrics: settings.metrics,
            max_frame: settings.max_frame,
            connect_timeout: settings.connect_timeout,
            writer: None,
            speaking: Speaking::default(),
            dial: None,
            queue: Vec::new(),
            me: None,
        };
        link.attach(stream, ctx);
        link
    }

    fn attach(&mut self, (read, write): (tls::ReadHalf, tls::WriteHalf), ctx: &mut Context<Self>) {
        ctx.add_stream(FramedRead::new(read, PeerCodec::new(self.max_frame)));
        let codec = PeerCodec::new(self.max_frame);
        self.speaking = codec.speaking();
        self.speaking.set(HELLO_VERSION);
        self.writer = Some(FramedWrite::new(write, codec, ctx));
    }

    fn write(&mut self, mut frame: PeerFrame, ctx: &mut Context<Self>) {
        // Envelopes are addressed to whoever this link reaches.
        if let (PeerFrame::Envelope(env), Some(peer)) = (&mut frame, self.handshake.peer()) {
            env.to = peer.clone();
        }
        let speaking = self.speaking.get();
        if frame.since() > speaking {
            return self.withhold(frame, speaking, ctx);
        }
        if let Some(w) = &mut self.writer {
            w.write(frame);
        }
    }

    /// A message newer than the link's version never goes out; a request
    /// is answered here, as the peer would have (`Envelope::withheld`).
    fn withhold(&mut self, frame: PeerFrame, speaking: u8, ctx: &mut Context<Self>) {
        let PeerFrame::Envelope(env) = frame else {
            return;
        };
        debug!(peer = %env.to, message = env.msg.name(), speaking, "not sent: the peer's protocol is older than the message");
        if let Some(answer) = env.withheld(speaking) {
            let link = self.me(ctx);
            self.reports.inbound.do_send(Inbound { env: answer, link });
        }
    }

    fn peer(&self) -> Option<NodeId> {
        self.handshake.peer().cloned()
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
            if !link.handshake.is_ready() {
                warn!(peer = ?link.peer(), addr = ?link.addr, "peer did not finish the handshake in time; closing");
                link.metrics.peer_refused();
                ctx.stop();
            }
        });
        let Some(addr) = self.addr.clone() else {
            return;
        };
        let timeout = self.connect_timeout;
        let dial = self.dial.clone();
        let open = async move {
            let stream = TcpStream::connect(&addr).await.map_err(|e| tls::Failed {
                refusal: tls::Refusal::Other,
                message: e.to_string(),
            })?;
            if let Err(e) = stream.set_nodelay(true) {
                debug!(error = %e, "TCP_NODELAY not set");
            }
            match dial {
                Some(dial) => tls::connect(&dial, &addr, stream).await,
                None => Ok(tls::plain(stream)),
            }
        };
        ctx.wait(
            async move { tokio::time::timeout(timeout, open).await }
                .into_actor(self)
                .map(|connected, link, ctx| match connected {
                    Ok(Ok(stream)) => {
                        link.attach(stream, ctx);
                        if let Some(hello) = link.hello.take() {
                            link.write(hello, ctx);
                        }
                    }
                    Ok(Err(failed)) if failed.refusal != tls::Refusal::Other => {
                        warn!(addr = ?link.addr, reason = failed.refusal.reason(), "peer connect refused: {}", failed.message);
                        link.metrics.tls_refused("peer", failed.refusal.reason());
                        ctx.stop();
                    }
                    Ok(Err(failed)) => {
                        debug!(addr = ?link.addr, error = %failed.message, "peer connect failed");
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
        self.reports.down.do_send(LinkDown {
            link,
            peer: self.peer(),
            addr: self.addr.clone(),
            outbound: self.handshake.is_connector(),
        });
    }
}

impl Handler<Frame> for Link {
    type Result = ();

    fn handle(&mut self, Frame(frame): Frame, ctx: &mut Context<Self>) {
        if self.handshake.is_ready() {
            self.write(frame, ctx);
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
                warn!(peer = ?self.peer(), addr = ?self.addr, error = %e, "closing peer connection");
                return ctx.stop();
            }
        };
        let step = match self.handshake.on_frame(frame) {
            Ok(step) => step,
            Err(refused) => {
                warn!(peer = ?self.peer(), addr = ?self.addr, reason = %refused.reason, "closing peer connection");
                if refused.counted {
                    self.metrics.peer_refused();
                }
                if refused.send.is_empty() {
                    return ctx.stop();
                }
                // Close once these are out; the writer's `finished` stops
                // the link.
                for frame in refused.send {
                    self.write(frame, ctx);
                }
                if let Some(w) = &mut self.writer {
                    w.close();
                }
                return;
            }
        };
        for frame in step.send {
            self.write(frame, ctx);
        }
        if let Some(peer) = step.ready {
            // The hellos are out: from here on, the version they agreed.
            if let Some(version) = self.handshake.version() {
                self.speaking.set(version);
            }
            for frame in std::mem::take(&mut self.queue) {
                self.write(frame, ctx);
            }
            let link = self.me(ctx);
            self.reports.up.do_send(LinkUp {
                link,
                peer,
                speaks: self.handshake.peer_versions().unwrap_or_default(),
                addr: self.addr.clone(),
                outbound: self.handshake.is_connector(),
            });
        }
        if let Some(env) = step.deliver {
            let link = self.me(ctx);
            self.reports.inbound.do_send(Inbound { env, link });
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        debug!(peer = ?self.peer(), "peer connection closed");
        ctx.stop();
    }
}

impl WriteHandler<CodecError> for Link {
    fn error(&mut self, err: CodecError, _: &mut Self::Context) -> Running {
        warn!(peer = ?self.peer(), error = %err, "peer write failed");
        Running::Stop
    }
}

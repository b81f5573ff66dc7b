//! Bridge: the only owner of peer TCP connections.
//!
//! Receives: `Call` (a request to a peer, answered with the peer's reply),
//! `CallAddr` (the same to an address whose node id is not known yet: seeds),
//! `SetAddresses` (the address book, from membership), `Control` (fault
//! injection for tests) and, internally, what its links report.
//! Emits: inbound requests to the local concern that owns them (replica,
//! membership), and their answers back on the connection they came from.
//!
//! Each peer gets one outbound `Link`, opened on first use and reopened with
//! exponential backoff after it fails; while a peer is in backoff, calls to
//! it fail at once, so a session learns about a dead node without waiting for
//! its deadline. Requests and replies are correlated by id; when a link
//! drops, every call waiting on it fails. The Bridge reads envelopes' `to`,
//! `from` and `corr` only; the message belongs to the concern.
//!
//! Faults (tests): `Partition` silently drops traffic to and from the given
//! peers (calls time out, as in a real partition), `Drop` loses a fraction
//! of envelopes, `Delay` holds outbound envelopes back, `Heal` clears all.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::WeakAddr;
use actix::io::{FramedWrite, WriteHandler};
use actix::prelude::*;
use dynakv::handoff::HandoffMsg;
use dynakv::hints::HintMsg;
use dynakv::membership::GossipMsg;
use dynakv::peer::{PeerFrame, PeerHello, PeerMsg};
use dynakv::tombstones::GcMsg;
use dynakv::wire::{Corr, Envelope};
use dynakv::{Error, NodeId, Result};
use futures_util::stream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn};

use crate::codec::{Codec, CodecError};
use crate::replica::{
    AeRespond, Chunk, CollectTombstones, MergeHandoff, ProbeTombstones, Replica, ReplicaRequest,
    mailbox_error,
};

/// First and longest wait before reconnecting to a peer that failed.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Most keys a peer may ask for in one handoff chunk.
const MAX_CHUNK_KEYS: usize = 4096;
/// Frames a link holds while it connects; more are refused.
const LINK_QUEUE: usize = 65_536;

/// A request to peer `to`; answered with its reply, or an error when the
/// peer is unreachable, the link drops, or `timeout` passes.
#[derive(Message)]
#[rtype(result = "Result<PeerMsg>")]
pub struct Call {
    pub to: NodeId,
    pub msg: PeerMsg,
    pub timeout: Duration,
}

/// A request to whoever listens at `addr`; answered with its id and reply.
#[derive(Message)]
#[rtype(result = "Result<(NodeId, PeerMsg)>")]
pub struct CallAddr {
    pub addr: String,
    pub msg: PeerMsg,
    pub timeout: Duration,
}

/// The peer address of every known node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetAddresses(pub HashMap<NodeId, String>);

/// A gossip message from a peer, for membership; answered with the reply to
/// send back, if any.
#[derive(Message)]
#[rtype(result = "Result<Option<GossipMsg>>")]
pub struct GossipIn {
    pub from: NodeId,
    pub msg: GossipMsg,
}

/// What the Bridge learns about a peer's liveness, for membership.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum Reachability {
    /// A connection to the peer was established.
    Reached(NodeId),
    /// The peer refused or dropped a connection, or left a request unanswered.
    Lost(NodeId),
}

/// Where membership listens.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    pub gossip: Recipient<GossipIn>,
    pub reachability: Recipient<Reachability>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    Partition(BTreeSet<NodeId>),
    Drop(f64),
    Delay(Duration),
    Heal,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Control(pub Fault);

#[derive(Default)]
struct Faults {
    partitioned: BTreeSet<NodeId>,
    drop: f64,
    delay: Duration,
    rng: Option<fastrand::Rng>,
}

impl Faults {
    /// Whether an envelope to or from `peer` is lost.
    fn loses(&mut self, peer: &NodeId) -> bool {
        if self.partitioned.contains(peer) {
            return true;
        }
        self.drop > 0.0 && self.rng.get_or_insert_with(fastrand::Rng::new).f64() < self.drop
    }
}

struct Pending {
    link: Addr<Link>,
    reply: oneshot::Sender<Result<(NodeId, PeerMsg)>>,
}

/// What the Bridge needs from the configuration.
#[derive(Debug, Clone)]
pub struct BridgeSettings {
    pub me: NodeId,
    pub cluster: String,
    pub max_frame: u32,
    pub connect_timeout: Duration,
}

pub struct Bridge {
    settings: BridgeSettings,
    listener: Option<TcpListener>,
    book: HashMap<NodeId, String>,
    links: HashMap<NodeId, Addr<Link>>,
    /// Outbound links opened by address, until the peer says who it is.
    seed_links: HashMap<String, Addr<Link>>,
    /// Links peers opened to us (closed with the Bridge).
    inbound: Vec<WeakAddr<Link>>,
    /// Peers that failed: no new link before the instant; the next backoff.
    backoff: HashMap<NodeId, (Instant, Duration)>,
    pending: HashMap<u64, Pending>,
    next_corr: u64,
    replica: Addr<Replica>,
    gossip: Option<Recipient<GossipIn>>,
    reachability: Option<Recipient<Reachability>>,
    faults: Faults,
}

impl Bridge {
    pub fn new(settings: BridgeSettings, listener: TcpListener, replica: Addr<Replica>) -> Self {
        Bridge {
            settings,
            listener: Some(listener),
            book: HashMap::new(),
            links: HashMap::new(),
            seed_links: HashMap::new(),
            inbound: Vec::new(),
            backoff: HashMap::new(),
            pending: HashMap::new(),
            next_corr: 0,
            replica,
            gossip: None,
            reachability: None,
            faults: Faults::default(),
        }
    }

    fn hello(&self) -> PeerHello {
        PeerHello {
            cluster: self.settings.cluster.clone(),
            node: self.settings.me.clone(),
        }
    }

    fn open_link(&self, addr: String, ctx: &mut Context<Self>) -> Addr<Link> {
        Link::outbound(ctx.address(), addr, self.hello(), &self.settings).start()
    }

    /// The outbound link to `to`, opening one if allowed.
    fn link_to(&mut self, to: &NodeId, ctx: &mut Context<Self>) -> Result<Addr<Link>> {
        if let Some(link) = self.links.get(to) {
            return Ok(link.clone());
        }
        if let Some((until, _)) = self.backoff.get(to)
            && Instant::now() < *until
        {
            return Err(Error::Unavailable(format!(
                "{to} is unreachable (reconnecting)"
            )));
        }
        let addr = self
            .book
            .get(to)
            .cloned()
            .ok_or_else(|| Error::Unavailable(format!("no address known for {to}")))?;
        let link = self.open_link(addr, ctx);
        self.links.insert(to.clone(), link.clone());
        Ok(link)
    }

    fn envelope(&self, to: NodeId, corr: Corr, msg: PeerMsg) -> PeerFrame {
        PeerFrame::Envelope(Envelope {
            from: self.settings.me.clone(),
            to,
            corr,
            msg,
        })
    }

    /// Sends `frame` on `link`, after the configured delay if any.
    fn transmit(&mut self, link: &Addr<Link>, frame: PeerFrame, ctx: &mut Context<Self>) {
        if self.faults.delay.is_zero() {
            link.do_send(Frame(frame));
        } else {
            let link = link.clone();
            ctx.run_later(self.faults.delay, move |_, _| link.do_send(Frame(frame)));
        }
    }

    /// Registers a call on `link` and returns the future of its answer.
    fn request(
        &mut self,
        link: Addr<Link>,
        to: NodeId,
        msg: PeerMsg,
        timeout: Duration,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<(NodeId, PeerMsg)>> {
        self.next_corr += 1;
        let corr = self.next_corr;
        let (tx, rx) = oneshot::channel();
        self.pending.insert(
            corr,
            Pending {
                link: link.clone(),
                reply: tx,
            },
        );
        if !self.faults.loses(&to) {
            let frame = self.envelope(to.clone(), Corr::Request(corr), msg);
            self.transmit(&link, frame, ctx);
        }
        Box::pin(
            async move { tokio::time::timeout(timeout, rx).await }
                .into_actor(self)
                .map(move |answer, act, _| {
                    act.pending.remove(&corr);
                    match answer {
                        Ok(Ok(reply)) => reply,
                        Ok(Err(_)) => Err(Error::Unavailable("connection lost".into())),
                        Err(_) => {
                            if to != act.settings.me {
                                act.report(Reachability::Lost(to));
                            }
                            Err(Error::Timeout)
                        }
                    }
                }),
        )
    }

    fn report(&self, r: Reachability) {
        if let Some(to) = &self.reachability {
            to.do_send(r);
        }
    }

    fn fail_pending(&mut self, link: &Addr<Link>, why: &str) {
        let lost: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.link == *link)
            .map(|(c, _)| *c)
            .collect();
        for corr in lost {
            if let Some(p) = self.pending.remove(&corr) {
                let _ = p.reply.send(Err(Error::Unavailable(why.to_string())));
            }
        }
    }
}

impl Actor for Bridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16_384);
        if let Some(listener) = self.listener.take() {
            ctx.add_stream(stream::unfold(listener, |l| async move {
                Some((l.accept().await, l))
            }));
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // Peers must see this node go away, not a silent connection.
        let outbound = self.links.values().chain(self.seed_links.values()).cloned();
        let inbound = self.inbound.iter().filter_map(WeakAddr::upgrade);
        for link in outbound.chain(inbound) {
            link.do_send(Close);
        }
    }
}

impl StreamHandler<std::io::Result<(TcpStream, SocketAddr)>> for Bridge {
    fn handle(
        &mut self,
        accepted: std::io::Result<(TcpStream, SocketAddr)>,
        ctx: &mut Context<Self>,
    ) {
        match accepted {
            Ok((stream, from)) => {
                debug!(%from, "peer connection accepted");
                let bridge = ctx.address();
                let hello = self.hello();
                let settings = self.settings.clone();
                let link = Link::create(move |link_ctx| {
                    Link::inbound(bridge, stream, hello, &settings, link_ctx)
                });
                self.inbound.retain(|l| l.upgrade().is_some());
                self.inbound.push(link.downgrade());
            }
            Err(e) => warn!(error = %e, "accepting a peer connection failed"),
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        warn!("peer listener closed");
    }
}

impl Handler<Call> for Bridge {
    type Result = ResponseActFuture<Self, Result<PeerMsg>>;

    fn handle(&mut self, call: Call, ctx: &mut Context<Self>) -> Self::Result {
        let link = match self.link_to(&call.to, ctx) {
            Ok(link) => link,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        Box::pin(
            self.request(link, call.to, call.msg, call.timeout, ctx)
                .map(|answer, _, _| answer.map(|(_, msg)| msg)),
        )
    }
}

impl Handler<CallAddr> for Bridge {
    type Result = ResponseActFuture<Self, Result<(NodeId, PeerMsg)>>;

    fn handle(&mut self, call: CallAddr, ctx: &mut Context<Self>) -> Self::Result {
        let known = self
            .book
            .iter()
            .find(|(_, a)| **a == call.addr)
            .map(|(n, _)| n.clone());
        let (link, to) = match known {
            Some(node) => match self.link_to(&node, ctx) {
                Ok(link) => (link, node),
                Err(e) => return Box::pin(fut::ready(Err(e))),
            },
            None => {
                let link = match self.seed_links.get(&call.addr) {
                    Some(link) => link.clone(),
                    None => {
                        let link = self.open_link(call.addr.clone(), ctx);
                        self.seed_links.insert(call.addr.clone(), link.clone());
                        link
                    }
                };
                // Not known yet: the link fills in `to` once the peer has
                // said who it is.
                (link, self.settings.me.clone())
            }
        };
        self.request(link, to, call.msg, call.timeout, ctx)
    }
}

impl Handler<SetAddresses> for Bridge {
    type Result = ();

    fn handle(&mut self, SetAddresses(book): SetAddresses, _: &mut Context<Self>) {
        // A node whose address changed gets a new link on next use.
        for (node, addr) in &book {
            if self.book.get(node).is_some_and(|old| old != addr)
                && let Some(link) = self.links.remove(node)
            {
                link.do_send(Close);
            }
        }
        self.book = book;
    }
}

impl Handler<Register> for Bridge {
    type Result = ();

    fn handle(&mut self, r: Register, _: &mut Context<Self>) {
        self.gossip = Some(r.gossip);
        self.reachability = Some(r.reachability);
    }
}

impl Handler<Control> for Bridge {
    type Result = ();

    fn handle(&mut self, Control(fault): Control, _: &mut Context<Self>) {
        info!(?fault, "fault injected");
        match fault {
            Fault::Partition(peers) => self.faults.partitioned = peers,
            Fault::Drop(fraction) => self.faults.drop = fraction.clamp(0.0, 1.0),
            Fault::Delay(d) => self.faults.delay = d,
            Fault::Heal => {
                self.faults = Faults::default();
                self.backoff.clear();
            }
        }
    }
}

// --- what links report -----------------------------------------------------

#[derive(Message)]
#[rtype(result = "()")]
struct LinkUp {
    link: Addr<Link>,
    peer: NodeId,
    /// Set for outbound links opened by address.
    addr: Option<String>,
    outbound: bool,
}

#[derive(Message)]
#[rtype(result = "()")]
struct LinkDown {
    link: Addr<Link>,
    peer: Option<NodeId>,
    addr: Option<String>,
    outbound: bool,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Inbound {
    env: Envelope,
    link: Addr<Link>,
}

impl Handler<LinkUp> for Bridge {
    type Result = ();

    fn handle(&mut self, up: LinkUp, _: &mut Context<Self>) {
        if !up.outbound {
            return;
        }
        self.backoff.remove(&up.peer);
        self.report(Reachability::Reached(up.peer.clone()));
        if let Some(addr) = &up.addr
            && self.seed_links.get(addr) == Some(&up.link)
        {
            self.seed_links.remove(addr);
            // Keep it as the peer's link unless it already has one.
            self.links.entry(up.peer.clone()).or_insert(up.link);
        }
    }
}

impl Handler<LinkDown> for Bridge {
    type Result = ();

    fn handle(&mut self, down: LinkDown, _: &mut Context<Self>) {
        self.fail_pending(&down.link, "connection to peer lost");
        if !down.outbound {
            return;
        }
        if let Some(addr) = &down.addr
            && self.seed_links.get(addr) == Some(&down.link)
        {
            self.seed_links.remove(addr);
        }
        let peer = down.peer.or_else(|| {
            let addr = down.addr.as_ref()?;
            self.book
                .iter()
                .find(|(_, a)| *a == addr)
                .map(|(n, _)| n.clone())
        });
        if let Some(peer) = peer {
            if self.links.get(&peer) == Some(&down.link) {
                self.links.remove(&peer);
            }
            let next = self
                .backoff
                .get(&peer)
                .map_or(BACKOFF_MIN, |(_, b)| (*b * 2).min(BACKOFF_MAX));
            self.report(Reachability::Lost(peer.clone()));
            self.backoff.insert(peer, (Instant::now() + next, next));
        }
    }
}

impl Handler<Inbound> for Bridge {
    type Result = ();

    fn handle(&mut self, Inbound { env, link }: Inbound, _: &mut Context<Self>) {
        if self.faults.loses(&env.from) {
            return;
        }
        match env.corr {
            Corr::Reply(id) => {
                if let Some(p) = self.pending.remove(&id) {
                    let _ = p.reply.send(Ok((env.from, env.msg)));
                }
            }
            Corr::Request(_) | Corr::OneWay => self.route(env, link),
        }
    }
}

impl Bridge {
    /// Hands an inbound request to the concern that owns it; its answer goes
    /// back on the link the request came on.
    fn route(&mut self, env: Envelope, link: Addr<Link>) {
        let Envelope {
            from, corr, msg, ..
        } = env;
        let reply = Reply {
            link,
            me: self.settings.me.clone(),
            to: from.clone(),
            corr,
        };
        let replica = self.replica.clone();
        match msg {
            PeerMsg::Replica(m) => reply.later(async move {
                let answer = replica
                    .send(ReplicaRequest(m))
                    .await
                    .map_err(mailbox_error)??;
                Ok(Some(PeerMsg::Replica(answer)))
            }),
            PeerMsg::Gossip(m) => {
                let gossip = self.gossip.clone();
                reply.later(async move {
                    let gossip = gossip
                        .ok_or_else(|| Error::Unavailable("membership not started".into()))?;
                    let answer = gossip
                        .send(GossipIn { from, msg: m })
                        .await
                        .map_err(mailbox_error)??;
                    Ok(answer.map(PeerMsg::Gossip))
                });
            }
            PeerMsg::Hints(HintMsg::Deliver { entries }) => reply.later(async move {
                replica
                    .send(MergeHandoff(entries))
                    .await
                    .map_err(mailbox_error)??;
                Ok(Some(PeerMsg::Hints(HintMsg::Delivered)))
            }),
            PeerMsg::AntiEntropy(m) => reply.later(async move {
                let answer = replica.send(AeRespond(m)).await.map_err(mailbox_error)??;
                Ok(Some(PeerMsg::AntiEntropy(answer)))
            }),
            PeerMsg::Tombstones(GcMsg::Probe { entries }) => reply.later(async move {
                let held = replica
                    .send(ProbeTombstones(entries))
                    .await
                    .map_err(mailbox_error)??;
                Ok(Some(PeerMsg::Tombstones(GcMsg::Held { held })))
            }),
            PeerMsg::Tombstones(GcMsg::Collect { entries }) => reply.later(async move {
                let removed = replica
                    .send(CollectTombstones(entries))
                    .await
                    .map_err(mailbox_error)??;
                Ok(Some(PeerMsg::Tombstones(GcMsg::Collected {
                    removed: removed as u32,
                })))
            }),
            PeerMsg::Handoff(HandoffMsg::Fetch {
                partition,
                after,
                limit,
            }) => reply.later(async move {
                let request = Chunk {
                    partition,
                    after,
                    limit: (limit as usize).clamp(1, MAX_CHUNK_KEYS),
                };
                let (entries, last) = replica.send(request).await.map_err(mailbox_error)??;
                Ok(Some(PeerMsg::Handoff(HandoffMsg::chunk(entries, last))))
            }),
            PeerMsg::Ping => reply.send(PeerMsg::Pong),
            other => debug!(%from, ?other, "unexpected peer message dropped"),
        }
    }
}

fn error_msg(e: &Error) -> PeerMsg {
    PeerMsg::Error {
        kind: e.kind(),
        message: e.to_string(),
    }
}

/// Where the answer to one inbound request goes.
struct Reply {
    link: Addr<Link>,
    me: NodeId,
    to: NodeId,
    corr: Corr,
}

impl Reply {
    /// Answers with what `answer` produces, once it is ready (an error
    /// becomes a `PeerMsg::Error`; `None` sends nothing).
    fn later(self, answer: impl std::future::Future<Output = Result<Option<PeerMsg>>> + 'static) {
        actix::spawn(async move {
            match answer.await {
                Ok(Some(msg)) => self.send(msg),
                Ok(None) => {}
                Err(e) => self.send(error_msg(&e)),
            }
        });
    }

    fn send(self, msg: PeerMsg) {
        if let Corr::Request(id) = self.corr {
            self.link.do_send(Frame(PeerFrame::Envelope(Envelope {
                from: self.me,
                to: self.to,
                corr: Corr::Reply(id),
                msg,
            })));
        }
    }
}

// --- links -----------------------------------------------------------------

/// A frame to write on a link.
#[derive(Message)]
#[rtype(result = "()")]
struct Frame(PeerFrame);

#[derive(Message)]
#[rtype(result = "()")]
struct Close;

type PeerCodec = Codec<PeerFrame, PeerFrame>;

/// One TCP connection to a peer, opened by us (outbound, carries our
/// requests and their replies) or by the peer (inbound, carries its requests
/// and our replies).
pub struct Link {
    bridge: Addr<Bridge>,
    /// The address dialled, for outbound links.
    addr: Option<String>,
    hello: PeerHello,
    max_frame: u32,
    connect_timeout: Duration,
    peer: Option<NodeId>,
    writer: Option<FramedWrite<PeerFrame, OwnedWriteHalf, PeerCodec>>,
    queue: Vec<PeerFrame>,
    ready: bool,
}

impl Link {
    fn outbound(
        bridge: Addr<Bridge>,
        addr: String,
        hello: PeerHello,
        settings: &BridgeSettings,
    ) -> Self {
        Link {
            bridge,
            addr: Some(addr),
            hello,
            max_frame: settings.max_frame,
            connect_timeout: settings.connect_timeout,
            peer: None,
            writer: None,
            queue: Vec::new(),
            ready: false,
        }
    }

    fn inbound(
        bridge: Addr<Bridge>,
        stream: TcpStream,
        hello: PeerHello,
        settings: &BridgeSettings,
        ctx: &mut Context<Self>,
    ) -> Self {
        let mut link = Link {
            bridge,
            addr: None,
            hello,
            max_frame: settings.max_frame,
            connect_timeout: settings.connect_timeout,
            peer: None,
            writer: None,
            queue: Vec::new(),
            ready: false,
        };
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
}

impl Actor for Link {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(LINK_QUEUE);
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
        self.bridge.do_send(LinkDown {
            link: ctx.address(),
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
        match (frame, self.ready, self.outbound_link()) {
            (PeerFrame::Hello(h), false, false) => {
                if h.cluster != self.hello.cluster {
                    warn!(peer = %h.node, cluster = %h.cluster, "refusing a peer of another cluster");
                    return ctx.stop();
                }
                self.peer = Some(h.node.clone());
                self.ready = true;
                self.write(PeerFrame::Welcome(self.hello.clone()));
                self.bridge.do_send(LinkUp {
                    link: ctx.address(),
                    peer: h.node,
                    addr: None,
                    outbound: false,
                });
            }
            (PeerFrame::Welcome(h), false, true) => {
                if h.cluster != self.hello.cluster {
                    warn!(peer = %h.node, cluster = %h.cluster, "peer belongs to another cluster");
                    return ctx.stop();
                }
                self.peer = Some(h.node.clone());
                self.ready = true;
                for frame in std::mem::take(&mut self.queue) {
                    self.write(frame);
                }
                self.bridge.do_send(LinkUp {
                    link: ctx.address(),
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
                self.bridge.do_send(Inbound {
                    env,
                    link: ctx.address(),
                });
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

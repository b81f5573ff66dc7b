//! Bridge: the only owner of peer TCP connections.
//!
//! Receives: `Call` (a request to a peer, by node id or by address for a
//! seed whose id is not known yet; the answer goes back on the oneshot it
//! carries, and `ask`/`call` send one and wait), `SetPeers` (the address
//! book and who is fenced out, from membership), `Control` (fault
//! injection for tests) and, internally, what its links report.
//! Emits: inbound requests to the local concern that owns them (replica,
//! membership), and their answers back on the connection they came from.
//!
//! Fencing (`dynakv::fencing`): a request whose authenticated sender left
//! or was removed is refused with `PeerMsg::Fenced` and its own final
//! record, logged and counted; a refusal of this node's own request goes to
//! membership, which learns from it that this node is out. A node that is
//! out itself refuses every request.
//!
//! Each peer gets one outbound `Link`, opened on first use and reopened with
//! exponential backoff after it fails; while a peer is in backoff, calls to
//! it fail at once, so a session learns about a dead node without waiting for
//! its deadline. Requests and replies are correlated by id; when a link
//! drops, every call waiting on it fails, and a call past its deadline fails
//! as a timeout (one timer, set for the earliest deadline, serves every
//! call). The Bridge reads envelopes' `to`, `from` and `corr` only; the
//! message belongs to the concern.
//!
//! The bookkeeping of calls and reconnection backoff is the core's
//! (`dynakv::calls`); fault injection for tests is `crate::faults`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use actix::WeakAddr;
use actix::prelude::*;
use dynakv::auth::NONCE_LEN;
use dynakv::calls::{Backoff, Pending, Waiting};
use dynakv::fencing::{Admission, Refusal};
use dynakv::membership::Destination;
use dynakv::peer::{Concern, Corr, Envelope, PeerFrame, PeerHello, PeerMsg};
use dynakv::protocol::Versions;

use dynakv::{Error, NodeId, Result};
use tracing::{debug, info, warn};

mod api;
pub use api::{
    Call, CallAnswer, Fenced, Handle, PeerReply, PeerRequest, PeerVersions, Reachability, SetPeers,
    StopAccepting, Watch, ask, call,
};

use crate::clock::Clock;
use crate::faults::{Control, Fault, Faults};
use crate::link::{
    Close, Frame, Inbound, Link, LinkAddr, LinkDown, LinkReports, LinkSettings, LinkUp,
};
use crate::listener::{Accepted, Listener};
use crate::supervise::shielded;
use crate::tls::{self, NodeTls};

/// First and longest wait before reconnecting to a peer that failed, in
/// ms: a restarting peer is back within a few tries; a dead one costs a
/// connection attempt every 5 s.
const BACKOFF_MIN_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 5_000;

/// Whoever waits for a call's answer, and the link it went on.
struct Waiter {
    link: LinkAddr,
    answer: CallAnswer,
}

/// What the Bridge needs from the configuration.
#[derive(Debug, Clone)]
pub struct BridgeSettings {
    pub me: NodeId,
    pub cluster: String,
    pub max_frame: u32,
    pub connect_timeout: Duration,
    /// The cluster secret peers prove they hold (empty: no authentication).
    pub secret: String,
    pub metrics: Metrics,
    /// TLS on the peer port and on links this node opens (None: plaintext).
    pub tls: Option<NodeTls>,
    /// The protocol versions this node speaks.
    pub versions: Versions,
}

pub struct Bridge {
    settings: BridgeSettings,
    /// The peer port.
    listener: Listener,
    book: HashMap<NodeId, String>,
    admission: Admission,
    links: HashMap<NodeId, LinkAddr>,
    /// Outbound links opened by address, until the peer says who it is.
    seed_links: HashMap<String, LinkAddr>,
    /// Links peers opened to us (closed with the Bridge).
    inbound: Vec<WeakAddr<Link>>,
    /// What each peer's latest hello said it speaks.
    speaks: HashMap<NodeId, Versions>,
    /// The node is stopping: peers that told to route around it are not
    /// let back in by a new connection (open ones carry on).
    stopping: bool,
    /// Peers whose connection failed: when a new one may be opened.
    backoff: Backoff,
    pending: Pending<Waiter>,
    /// When the next check for calls past their deadline runs, if one is
    /// scheduled.
    sweep_at: Option<u64>,
    clock: Clock,
    /// Who answers each concern's requests.
    handlers: HashMap<Concern, Recipient<PeerRequest>>,
    reachability: Option<Recipient<Reachability>>,
    fenced: Option<Recipient<Fenced>>,
    faults: Faults,
}

impl Bridge {
    pub fn new(settings: BridgeSettings, listener: std::net::TcpListener) -> Self {
        Bridge {
            settings,
            listener: Listener::new(listener),
            book: HashMap::new(),
            admission: Admission::default(),
            links: HashMap::new(),
            seed_links: HashMap::new(),
            inbound: Vec::new(),
            speaks: HashMap::new(),
            stopping: false,
            backoff: Backoff::new(BACKOFF_MIN_MS, BACKOFF_MAX_MS),
            pending: Pending::default(),
            sweep_at: None,
            clock: Clock::default(),
            handlers: HashMap::new(),
            reachability: None,
            fenced: None,
            faults: Faults::default(),
        }
    }

    /// This node's hello for a new connection, with a fresh nonce.
    fn hello(&self) -> PeerHello {
        let mut nonce = [0u8; NONCE_LEN];
        if let Err(e) = getrandom::fill(&mut nonce) {
            // Never expected; a fixed nonce only weakens replay protection.
            warn!(error = %e, "no randomness for a connection nonce");
        }
        PeerHello {
            cluster: self.settings.cluster.clone(),
            node: self.settings.me.clone(),
            nonce,
            versions: Some(self.settings.versions),
        }
    }

    /// Where a new link reports: here.
    fn reports(&self, ctx: &Context<Self>) -> LinkReports {
        let me = ctx.address();
        LinkReports {
            up: me.clone().recipient(),
            down: me.clone().recipient(),
            inbound: me.recipient(),
        }
    }

    fn link_settings(&self) -> LinkSettings {
        LinkSettings {
            secret: self.settings.secret.clone(),
            metrics: self.settings.metrics.clone(),
            max_frame: self.settings.max_frame,
            connect_timeout: self.settings.connect_timeout,
            tls: self.settings.tls.clone(),
        }
    }

    fn open_link(&self, addr: String, ctx: &mut Context<Self>) -> LinkAddr {
        let link = Link::outbound(self.reports(ctx), addr, self.hello(), self.link_settings());
        Arc::new(link.start())
    }

    /// The outbound link to `to`, opening one if allowed.
    fn link_to(&mut self, to: &NodeId, ctx: &mut Context<Self>) -> Result<LinkAddr> {
        if let Some(link) = self.links.get(to) {
            return Ok(link.clone());
        }
        if self.backoff.is_waiting(to, self.clock.now()) {
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

    /// The link a call to `to` goes on, and the node it asks (this node's
    /// own id for a seed not known yet: the link learns who answers).
    fn route_call(
        &mut self,
        to: Destination,
        ctx: &mut Context<Self>,
    ) -> Result<(LinkAddr, NodeId)> {
        let addr = match to {
            Destination::Node(node) => return Ok((self.link_to(&node, ctx)?, node)),
            Destination::Addr(addr) => addr,
        };
        if let Some(node) = self
            .book
            .iter()
            .find(|(_, a)| **a == addr)
            .map(|(n, _)| n.clone())
        {
            return Ok((self.link_to(&node, ctx)?, node));
        }
        let link = match self.seed_links.get(&addr) {
            Some(link) => link.clone(),
            None => {
                let link = self.open_link(addr.clone(), ctx);
                self.seed_links.insert(addr, link.clone());
                link
            }
        };
        Ok((link, self.settings.me.clone()))
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
    fn transmit(&mut self, link: &LinkAddr, frame: PeerFrame, ctx: &mut Context<Self>) {
        self.settings.metrics.peer_request_sent();
        if self.faults.delay.is_zero() {
            link.do_send(Frame(frame));
        } else {
            let link = link.clone();
            ctx.run_later(self.faults.delay, move |_, _| link.do_send(Frame(frame)));
        }
    }

    /// Sends a call on `link`; its answer goes to `answer`.
    fn request(
        &mut self,
        link: LinkAddr,
        to: NodeId,
        msg: PeerMsg,
        timeout: Duration,
        answer: CallAnswer,
        ctx: &mut Context<Self>,
    ) {
        let deadline = self.clock.now() + timeout.as_millis() as u64;
        let lost = self.faults.loses(&to);
        let waiter = Waiter {
            link: link.clone(),
            answer,
        };
        let corr = self.pending.add(to.clone(), deadline, waiter);
        if !lost {
            let frame = self.envelope(to, Corr::Request(corr), msg);
            self.transmit(&link, frame, ctx);
        }
        self.sweep_by(deadline, ctx);
    }

    /// Makes sure calls are checked for their deadline by `at`. One timer
    /// serves every call: it is set for the earliest deadline pending.
    fn sweep_by(&mut self, at: u64, ctx: &mut Context<Self>) {
        if self.sweep_at.is_some_and(|due| due <= at) {
            return;
        }
        self.sweep_at = Some(at);
        ctx.run_later(self.clock.until(at), |act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| act.sweep(ctx))
        });
    }

    /// Fails the calls past their deadline (the request may still take
    /// effect: as timeouts), reports their peers unresponsive, and sets the
    /// timer for the next deadline.
    fn sweep(&mut self, ctx: &mut Context<Self>) {
        self.sweep_at = None;
        let expired = self.pending.expired(self.clock.now());
        for to in fail(expired) {
            if to != self.settings.me {
                self.report(Reachability::Lost(to));
            }
        }
        if let Some(next) = self.pending.next_deadline() {
            self.sweep_by(next, ctx);
        }
    }

    /// Closes every connection: peers see this node go away rather than a
    /// silent socket.
    fn close_links(&mut self) {
        let outbound = self
            .links
            .drain()
            .map(|(_, l)| l)
            .chain(self.seed_links.drain().map(|(_, l)| l));
        let inbound = self
            .inbound
            .drain(..)
            .filter_map(|l| l.upgrade().map(Arc::new));
        for link in outbound.chain(inbound) {
            link.do_send(Close);
        }
    }

    fn report(&self, r: Reachability) {
        if let Some(to) = &self.reachability {
            to.do_send(r);
        }
    }

    fn fail_pending(&mut self, link: &LinkAddr, why: &str) {
        let lost = fail(self.pending.take_if(|w| w.waiter.link == *link));
        if !lost.is_empty() {
            debug!(calls = lost.len(), why, "calls lost with their connection");
        }
    }
}

/// Fails calls that got no answer; returns the peers they asked. Their
/// requests may have arrived and taken effect: they fail as timeouts, so
/// that callers do not take them as refused.
fn fail(calls: Vec<Waiting<Waiter>>) -> Vec<NodeId> {
    calls
        .into_iter()
        .map(|w| {
            let _ = w.waiter.answer.send(Err(Error::Timeout));
            w.to
        })
        .collect()
}

const NAME: &str = "bridge";

/// A restarted Bridge keeps its settings, address book, registrations and
/// faults; it drops its connections (and the calls waiting on them), which
/// are reopened on demand.
impl Supervised for Bridge {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.close_links();
        fail(self.pending.take_if(|_| true));
        self.sweep_at = None;
        self.backoff.clear();
    }
}

impl Actor for Bridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16_384);
        self.listener.accept(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.close_links();
    }
}

impl Bridge {
    fn accept(&mut self, accepted: Accepted, ctx: &mut Context<Self>) {
        match accepted {
            Ok((_, from)) if self.stopping => {
                debug!(%from, "peer connection refused: this node is stopping");
            }
            Ok((stream, from)) => {
                debug!(%from, "peer connection accepted");
                let accepting = tls::Accepting {
                    port: "peer",
                    acceptor: self.settings.tls.as_ref().map(|t| t.peers.clone()),
                    metrics: self.settings.metrics.clone(),
                };
                accepting.ready(stream, from, self, ctx, Bridge::start_inbound);
            }
            Err(e) => warn!(error = %e, "accepting a peer connection failed"),
        }
    }
}

impl Bridge {
    /// Starts the link of a peer connection that is ready for frames.
    fn start_inbound(&mut self, stream: (tls::ReadHalf, tls::WriteHalf), ctx: &mut Context<Self>) {
        let (reports, hello) = (self.reports(ctx), self.hello());
        let settings = self.link_settings();
        let link =
            Link::create(move |link_ctx| Link::inbound(reports, stream, hello, settings, link_ctx));
        self.inbound.retain(|l| l.upgrade().is_some());
        self.inbound.push(link.downgrade());
    }
}

impl StreamHandler<Accepted> for Bridge {
    fn handle(&mut self, accepted: Accepted, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, ctx| act.accept(accepted, ctx))
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        warn!("peer listener closed");
    }
}

impl Handler<Call> for Bridge {
    type Result = ();

    fn handle(&mut self, call: Call, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, ctx| {
            match act.route_call(call.to, ctx) {
                Ok((link, to)) => act.request(link, to, call.msg, call.timeout, call.answer, ctx),
                Err(e) => {
                    let _ = call.answer.send(Err(e));
                }
            }
        })
    }
}

impl Handler<SetPeers> for Bridge {
    type Result = ();

    fn handle(&mut self, SetPeers { book, admission }: SetPeers, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| {
            act.admission = admission;
            // A node whose address changed gets a new link on next use.
            for (node, addr) in &book {
                if act.book.get(node).is_some_and(|old| old != addr)
                    && let Some(link) = act.links.remove(node)
                {
                    link.do_send(Close);
                }
            }
            act.book = book;
        })
    }
}

impl Handler<Handle> for Bridge {
    type Result = ();

    fn handle(&mut self, h: Handle, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| {
            act.handlers.insert(h.concern, h.handler);
        })
    }
}

impl Handler<StopAccepting> for Bridge {
    type Result = ();

    fn handle(&mut self, _: StopAccepting, _: &mut Context<Self>) {
        self.stopping = true;
    }
}

impl Handler<PeerVersions> for Bridge {
    type Result = MessageResult<PeerVersions>;

    fn handle(&mut self, _: PeerVersions, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.speaks.clone())
    }
}

impl Handler<Watch> for Bridge {
    type Result = ();

    fn handle(&mut self, w: Watch, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| {
            act.reachability = Some(w.reachability);
            act.fenced = Some(w.fenced);
        })
    }
}

impl Handler<Control> for Bridge {
    type Result = ();

    fn handle(&mut self, Control(fault): Control, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| {
            info!(?fault, "fault injected");
            match fault {
                Fault::Partition(peers) => act.faults.partitioned = peers,
                Fault::Drop(fraction) => act.faults.drop = fraction.clamp(0.0, 1.0),
                Fault::Delay(d) => act.faults.delay = d,
                Fault::Heal => {
                    act.faults = Faults::default();
                    act.backoff.clear();
                }
            }
        })
    }
}

impl Handler<LinkUp> for Bridge {
    type Result = ();

    fn handle(&mut self, up: LinkUp, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| {
            act.speaks.insert(up.peer.clone(), up.speaks);
            act.report(Reachability::Speaks(up.peer.clone(), up.speaks.max));
            if !up.outbound {
                return;
            }
            act.backoff.reached(&up.peer);
            act.report(Reachability::Reached(up.peer.clone()));
            if let Some(addr) = &up.addr
                && act.seed_links.get(addr) == Some(&up.link)
            {
                act.seed_links.remove(addr);
                // Keep it as the peer's link unless it already has one.
                act.links.entry(up.peer.clone()).or_insert(up.link);
            }
        })
    }
}

impl Handler<LinkDown> for Bridge {
    type Result = ();

    fn handle(&mut self, down: LinkDown, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| {
            act.fail_pending(&down.link, "connection to peer lost");
            if !down.outbound {
                return;
            }
            if let Some(addr) = &down.addr
                && act.seed_links.get(addr) == Some(&down.link)
            {
                act.seed_links.remove(addr);
            }
            let peer = down.peer.or_else(|| {
                let addr = down.addr.as_ref()?;
                act.book
                    .iter()
                    .find(|(_, a)| *a == addr)
                    .map(|(n, _)| n.clone())
            });
            if let Some(peer) = peer {
                if act.links.get(&peer) == Some(&down.link) {
                    act.links.remove(&peer);
                }
                act.backoff.failed(&peer, act.clock.now());
                act.report(Reachability::Lost(peer));
            }
        })
    }
}

impl Handler<Inbound> for Bridge {
    type Result = ();

    fn handle(&mut self, Inbound { env, link }: Inbound, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| {
            if act.faults.loses(&env.from) {
                return;
            }
            match env.corr {
                Corr::Reply(id) => {
                    if let (PeerMsg::Fenced { record }, Some(to)) = (&env.msg, &act.fenced) {
                        to.do_send(Fenced {
                            by: env.from.clone(),
                            record: record.clone(),
                        });
                    }
                    if let Some(w) = act.pending.answer(id) {
                        let _ = w.waiter.answer.send(Ok((env.from, env.msg)));
                    }
                }
                Corr::Request(_) | Corr::OneWay => match act.admission.check(&env.from) {
                    Ok(()) => act.route(env, link),
                    Err(refusal) => act.refuse(env, link, refusal),
                },
            }
        })
    }
}

impl Bridge {
    /// Answers a request that fencing does not admit (nothing reaches a
    /// concern): a fenced sender gets its own record back.
    fn refuse(&mut self, env: Envelope, link: LinkAddr, refusal: Refusal) {
        let request = env.msg.name();
        let reply = self.reply(link, env.from.clone(), env.corr);
        match refusal {
            Refusal::Fenced(record) => {
                warn!(peer = %env.from, status = record.status.as_str(), request,
                    "refusing a request from a member that left or was removed");
                self.settings.metrics.peer_fenced();
                reply.send(PeerMsg::Fenced { record });
            }
            Refusal::Departed(e) => {
                debug!(peer = %env.from, request, "refusing a request: this node is out of the cluster");
                reply.error(&e);
            }
        }
    }

    /// Hands an inbound request to the concern registered for its kind;
    /// the answer goes back on the link the request came on.
    fn route(&mut self, env: Envelope, link: LinkAddr) {
        let Envelope {
            from, corr, msg, ..
        } = env;
        let reply = self.reply(link, from.clone(), corr);
        if let PeerMsg::Ping = msg {
            return reply.send(PeerMsg::Pong);
        }
        let handler = msg.concern().and_then(|c| self.handlers.get(&c));
        match handler {
            Some(handler) => handler.do_send(PeerRequest { from, msg, reply }),
            None => {
                debug!(%from, request = msg.name(), "no concern takes this peer request");
                reply.error(&Error::Unavailable(format!(
                    "this node does not take {} requests",
                    msg.name()
                )));
            }
        }
    }

    fn reply(&self, link: LinkAddr, to: NodeId, corr: Corr) -> PeerReply {
        PeerReply {
            link,
            me: self.settings.me.clone(),
            to,
            corr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// Stands in for membership: passes on what the Bridge reports.
    struct Watcher(mpsc::UnboundedSender<Reachability>);

    impl Actor for Watcher {
        type Context = Context<Self>;
    }

    impl Handler<Reachability> for Watcher {
        type Result = ();

        fn handle(&mut self, r: Reachability, _: &mut Context<Self>) {
            let _ = self.0.send(r);
        }
    }

    impl Handler<Fenced> for Watcher {
        type Result = ();

        fn handle(&mut self, _: Fenced, _: &mut Context<Self>) {}
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    /// A peer that accepts connections and never says a word: calls to it
    /// can only end at their deadline.
    #[actix_rt::test]
    async fn a_call_to_a_silent_peer_times_out_at_its_own_deadline() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_addr = silent.local_addr().unwrap().to_string();
        let held = std::thread::spawn(move || silent.accept().map(|(socket, _)| socket));

        let settings = BridgeSettings {
            me: id("a"),
            cluster: "test".into(),
            max_frame: 1 << 20,
            connect_timeout: Duration::from_secs(30),
            secret: String::new(),
            tls: None,
            metrics: Metrics::new(),
            versions: dynakv::protocol::Versions::this_build(),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bridge = Bridge::new(settings, listener).start();
        let (tx, mut reports) = mpsc::unbounded_channel();
        let watcher = Watcher(tx).start();
        bridge.do_send(Watch {
            reachability: watcher.clone().recipient(),
            fenced: watcher.recipient(),
        });
        bridge.do_send(SetPeers {
            book: HashMap::from([(id("b"), silent_addr)]),
            admission: Admission::default(),
        });

        // The long call goes first: the timer set for it must not hold back
        // the shorter call's deadline.
        let long = call(&bridge, id("b"), PeerMsg::Ping, Duration::from_secs(600));
        let short = call(&bridge, id("b"), PeerMsg::Ping, Duration::from_millis(200));
        let within = Duration::from_secs(60);
        let answer = tokio::time::timeout(within, short)
            .await
            .expect("the short call ends long before the long one's deadline");
        assert!(matches!(answer, Err(Error::Timeout)), "{answer:?}");
        let report = tokio::time::timeout(within, reports.recv()).await.unwrap();
        assert_eq!(report, Some(Reachability::Lost(id("b"))));

        // The long call is still waiting: its deadline has not come.
        let mut long = Box::pin(long);
        assert!(futures_util::poll!(&mut long).is_pending());
        assert!(held.join().unwrap().is_ok(), "the Bridge connected");
    }
}

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
//! Faults (tests): `Partition` silently drops traffic to and from the given
//! peers (calls time out, as in a real partition), `Drop` loses a fraction
//! of envelopes, `Delay` holds outbound envelopes back, `Heal` clears all.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use actix::WeakAddr;
use actix::prelude::*;
use dynakv::auth::NONCE_LEN;
use dynakv::fencing::{Admission, Refusal};
use dynakv::membership::{Destination, Member};
use dynakv::peer::{Concern, Corr, Envelope, PeerFrame, PeerHello, PeerMsg};

use dynakv::{Error, NodeId, Result};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::link::{Close, Frame, Link, LinkAddr};
use crate::listener::{Accepted, Listener};
use crate::supervise::{send_error, shielded};

/// First and longest wait before reconnecting to a peer that failed.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where the answer to a call goes: the answering node and its reply, or an
/// error when the peer is unreachable, the link drops, or the call's time
/// passes.
pub type CallAnswer = oneshot::Sender<Result<(NodeId, PeerMsg)>>;

/// A request to a peer, by node id or, for a seed whose id may not be known
/// yet, by address; answered on `answer` (see `ask`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Call {
    pub to: Destination,
    pub msg: PeerMsg,
    pub timeout: Duration,
    pub answer: CallAnswer,
}

/// Asks a peer and waits at most `timeout` for its id and reply. A peer's
/// `Error` reply comes back as that error.
pub fn ask(
    bridge: &Addr<Bridge>,
    to: Destination,
    msg: PeerMsg,
    timeout: Duration,
) -> impl Future<Output = Result<(NodeId, PeerMsg)>> + 'static {
    let (answer, rx) = oneshot::channel();
    let sent = bridge
        .try_send(Call {
            to,
            msg,
            timeout,
            answer,
        })
        .map_err(|e| send_error(e, "the peer bridge"));
    async move {
        sent?;
        match rx.await {
            Ok(Ok((_, PeerMsg::Error { kind, message }))) => Err(Error::from_wire(kind, message)),
            Ok(Ok((peer, PeerMsg::Fenced { record }))) => Err(Error::Removed(format!(
                "{peer} refused the request: it sees this node as {}",
                record.status.as_str()
            ))),
            Ok(answer) => answer,
            // The Bridge dropped the call (it restarted or stopped); the
            // request may have gone out: as a timeout.
            Err(_) => Err(Error::Timeout),
        }
    }
}

/// Asks node `to` and waits at most `timeout` for its reply (see `ask`).
pub fn call(
    bridge: &Addr<Bridge>,
    to: NodeId,
    msg: PeerMsg,
    timeout: Duration,
) -> impl Future<Output = Result<PeerMsg>> + 'static {
    let asked = ask(bridge, Destination::Node(to), msg, timeout);
    async move { asked.await.map(|(_, msg)| msg) }
}

/// The peer address of every known node, and whose requests are refused.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPeers {
    pub book: HashMap<NodeId, String>,
    pub admission: Admission,
}

/// A peer refused this node's request: `record` is this node's own final
/// record in the peer's view (for membership to learn from).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fenced {
    pub by: NodeId,
    pub record: Member,
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

/// An inbound request from an authenticated peer, for the concern that
/// registered for its kind; its answer goes back through `reply`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerRequest {
    pub from: NodeId,
    pub msg: PeerMsg,
    pub reply: PeerReply,
}

/// Routes the peer requests of `concern` to `handler`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Handle {
    pub concern: Concern,
    pub handler: Recipient<PeerRequest>,
}

/// Where membership hears what the links learn: peers reached or lost, and
/// refusals of this node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Watch {
    pub reachability: Recipient<Reachability>,
    pub fenced: Recipient<Fenced>,
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

/// A call sent and not answered yet.
struct Pending {
    link: LinkAddr,
    /// The peer asked (this node's id for a seed not known yet).
    to: NodeId,
    answer: CallAnswer,
    deadline: Instant,
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
    /// Peers that failed: no new link before the instant; the next backoff.
    backoff: HashMap<NodeId, (Instant, Duration)>,
    pending: HashMap<u64, Pending>,
    /// When the next check for calls past their deadline runs, if one is
    /// scheduled.
    sweep_at: Option<Instant>,
    next_corr: u64,
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
            backoff: HashMap::new(),
            pending: HashMap::new(),
            sweep_at: None,
            next_corr: 0,
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
        }
    }

    fn open_link(&self, addr: String, ctx: &mut Context<Self>) -> LinkAddr {
        Arc::new(Link::outbound(ctx.address(), addr, self.hello(), &self.settings).start())
    }

    /// The outbound link to `to`, opening one if allowed.
    fn link_to(&mut self, to: &NodeId, ctx: &mut Context<Self>) -> Result<LinkAddr> {
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
        self.next_corr += 1;
        let corr = self.next_corr;
        let deadline = Instant::now() + timeout;
        if !self.faults.loses(&to) {
            let frame = self.envelope(to.clone(), Corr::Request(corr), msg);
            self.transmit(&link, frame, ctx);
        }
        self.pending.insert(
            corr,
            Pending {
                link,
                to,
                answer,
                deadline,
            },
        );
        self.sweep_by(deadline, ctx);
    }

    /// Makes sure calls are checked for their deadline by `at`. One timer
    /// serves every call: it is set for the earliest deadline pending.
    fn sweep_by(&mut self, at: Instant, ctx: &mut Context<Self>) {
        if self.sweep_at.is_some_and(|due| due <= at) {
            return;
        }
        self.sweep_at = Some(at);
        ctx.run_later(at.saturating_duration_since(Instant::now()), |act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| act.sweep(ctx))
        });
    }

    /// Fails the calls past their deadline (the request may still take
    /// effect: as timeouts), reports their peers unresponsive, and sets the
    /// timer for the next deadline.
    fn sweep(&mut self, ctx: &mut Context<Self>) {
        self.sweep_at = None;
        let now = Instant::now();
        for to in self.fail_calls(|p| p.deadline <= now) {
            if to != self.settings.me {
                self.report(Reachability::Lost(to));
            }
        }
        if let Some(next) = self.pending.values().map(|p| p.deadline).min() {
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
        let lost = self.fail_calls(|p| p.link == *link);
        if !lost.is_empty() {
            debug!(calls = lost.len(), why, "calls lost with their connection");
        }
    }

    /// Fails the pending calls `lost` picks; returns the peers they asked.
    /// Their requests may have arrived and taken effect: they fail as
    /// timeouts, so that callers do not take them as refused.
    fn fail_calls(&mut self, mut lost: impl FnMut(&Pending) -> bool) -> Vec<NodeId> {
        self.pending
            .extract_if(|_, p| lost(p))
            .map(|(_, p)| {
                let _ = p.answer.send(Err(Error::Timeout));
                p.to
            })
            .collect()
    }
}

const NAME: &str = "bridge";

/// A restarted Bridge keeps its settings, address book, registrations and
/// faults; it drops its connections (and the calls waiting on them), which
/// are reopened on demand.
impl Supervised for Bridge {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.close_links();
        self.fail_calls(|_| true);
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

// --- what links report -----------------------------------------------------

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct LinkUp {
    pub(crate) link: LinkAddr,
    pub(crate) peer: NodeId,
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

impl Handler<LinkUp> for Bridge {
    type Result = ();

    fn handle(&mut self, up: LinkUp, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| {
            if !up.outbound {
                return;
            }
            act.backoff.remove(&up.peer);
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
                let next = act
                    .backoff
                    .get(&peer)
                    .map_or(BACKOFF_MIN, |(_, b)| (*b * 2).min(BACKOFF_MAX));
                act.report(Reachability::Lost(peer.clone()));
                act.backoff.insert(peer, (Instant::now() + next, next));
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
                    if let Some(p) = act.pending.remove(&id) {
                        let _ = p.answer.send(Ok((env.from, env.msg)));
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

/// Where the answer to one inbound request goes: back on the connection it
/// came on. A one-way request takes no answer.
pub struct PeerReply {
    link: LinkAddr,
    me: NodeId,
    to: NodeId,
    corr: Corr,
}

impl PeerReply {
    pub fn send(self, msg: PeerMsg) {
        if let Corr::Request(id) = self.corr {
            self.link.do_send(Frame(PeerFrame::Envelope(Envelope {
                from: self.me,
                to: self.to,
                corr: Corr::Reply(id),
                msg,
            })));
        }
    }

    /// Answers with `e` (as `PeerMsg::Error`).
    pub fn error(self, e: &Error) {
        self.send(PeerMsg::Error {
            kind: e.kind(),
            message: e.to_string(),
        })
    }

    /// Answers with `answer`, or its error.
    pub fn answer(self, answer: Result<PeerMsg>) {
        match answer {
            Ok(msg) => self.send(msg),
            Err(e) => self.error(&e),
        }
    }

    /// Answers with what `answer` produces, once it is ready.
    pub fn later(self, answer: impl Future<Output = Result<PeerMsg>> + 'static) {
        actix::spawn(async move { self.answer(answer.await) });
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
            metrics: Metrics::new(),
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

//! Membership: gossips this node's view of the cluster and detects failures.
//!
//! Receives: peers' gossip (`PeerRequest`, via the Bridge; each request of
//! a round is answered as the core says), `Reachability` (the Bridge saw a
//! peer fail or connect, or heard which protocol it speaks), `Fenced` (a
//! peer refused this node: it was removed or left), its own gossip timer,
//! and the answers to its rounds (an answer that calls for the round's
//! next request gets it).
//! Emits: a round with one random peer per interval (a push to every
//! unknown seed until the cluster is founded), the address book and the fencing
//! admission to the Bridge, and `ViewChanged` (view and liveness) to the
//! Ring actor. Persists the view in the `meta` keyspace on every change, so
//! a restart keeps the ring (and a node that is out stays out: it refuses
//! to start, see `check_start`).
//!
//! All decisions (merge, founding, claims, validation, failure detection)
//! are the core's `dynakv::membership::Membership`; this actor supplies the
//! clock and carries the decisions out.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use dynakv::membership::{
    Changed, Destination, GossipMsg, Membership as Core, Settings, Status, View,
};
use dynakv::peer::PeerMsg;
use dynakv::store::Store;
use dynakv::{Error, NodeId, Result};
use tracing::{debug, error, info, warn};

use crate::bridge::{Bridge, Fenced, PeerRequest, Reachability, SetPeers, StopAccepting, ask};
use crate::clock::Clock;
use crate::events::{Event, Events};
use crate::messages::{Admin, CommitIncoming, MarkLeft};
use crate::ring::{Ring, ViewChanged};
use crate::storage::FjallStore;
use crate::supervise::shielded;

/// Key of the persisted view in the `meta` keyspace.
const VIEW_KEY: &[u8] = b"view";

/// Loads the view persisted by an earlier run, if any.
pub fn load_view(meta: &FjallStore) -> Result<Option<View>> {
    match meta.get(VIEW_KEY)? {
        None => Ok(None),
        Some(bytes) => View::from_bytes(&bytes).map(Some),
    }
}

/// Refuses to start a node on a data directory whose persisted view says
/// this node left or was removed (its id is retired: the data there may
/// hold writes the cluster has deleted since), or that belongs to another
/// node.
pub fn check_start(meta: &FjallStore, me: &NodeId, data_dir: &std::path::Path) -> Result<()> {
    let Some(view) = load_view(meta)? else {
        return Ok(());
    };
    match view.members.get(me) {
        Some(record) if record.status.is_final() => Err(Error::Removed(format!(
            "node {me} {} the cluster {:?} (its data directory {} says so); a node that \
             is out never rejoins under its old id, as it may hold data the cluster has \
             deleted since. To bring this machine back, empty the data directory and \
             start it with a new node.id",
            if record.status == Status::Left {
                "left"
            } else {
                "was removed from"
            },
            view.cluster,
            data_dir.display()
        ))),
        Some(_) => Ok(()),
        None => Err(Error::Config(format!(
            "the data directory {} belongs to another node (its membership view has no \
             member {me}); use an empty data directory for a new node id",
            data_dir.display()
        ))),
    }
}

/// A gossip message from a peer; answered with the reply to send back, if
/// any. (Peers' gossip arrives as `PeerRequest`s; tests inject this.)
#[derive(Message)]
#[rtype(result = "Result<Option<GossipMsg>>")]
pub struct GossipIn {
    pub from: NodeId,
    pub msg: GossipMsg,
}

/// This node is stopping: tell the peers, so they route around it at once,
/// and let no new peer connection in; answers once they acknowledged, or
/// `within` passed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AnnounceStop {
    pub within: Duration,
}

/// Asks for the current view.
#[derive(Message)]
#[rtype(result = "Arc<View>")]
pub struct CurrentView;

/// The actors membership talks to, and where it persists the view.
pub struct Wiring {
    pub bridge: Addr<Bridge>,
    pub ring: Addr<Ring>,
    pub meta: FjallStore,
    pub events: Events,
}

pub struct Membership {
    core: Core,
    /// Kept to rebuild the core after a supervised restart.
    settings: Settings,
    bridge: Addr<Bridge>,
    ring: Addr<Ring>,
    meta: FjallStore,
    interval: Duration,
    call_timeout: Duration,
    events: Events,
    rng: fastrand::Rng,
    clock: Clock,
    /// Whether this node's removal was reported (logged once).
    fence_reported: bool,
}

impl Membership {
    /// Builds the actor; its state comes from the view persisted in `meta`
    /// (if any) and `settings`, as after a supervised restart.
    pub fn new(
        settings: Settings,
        wiring: Wiring,
        interval: Duration,
        clock: Clock,
    ) -> Result<Self> {
        let Wiring {
            bridge,
            ring,
            meta,
            events,
        } = wiring;
        let core = Core::new(settings.clone(), load_view(&meta)?);
        Ok(Membership {
            core,
            settings,
            bridge,
            ring,
            meta,
            interval,
            // A push is answered at once; a slow answer is a lost round.
            call_timeout: interval.max(Duration::from_millis(500)),
            events,
            rng: fastrand::Rng::new(),
            clock,
            fence_reported: false,
        })
    }

    /// Tells everyone who depends on the view or on liveness what changed.
    fn publish(&mut self, changed: Changed) {
        if !changed.any() {
            return;
        }
        let view = Arc::new(self.core.view().clone());
        if changed.view {
            if let Err(e) = self.meta.put(VIEW_KEY, &view.to_bytes()) {
                warn!(error = %e, "persisting the membership view failed");
            }
            let book = view
                .members
                .values()
                .filter(|m| m.id != *self.core.me())
                .map(|m| (m.id.clone(), m.peer_addr.clone()))
                .collect();
            self.bridge.do_send(SetPeers {
                book,
                admission: self.core.admission(),
            });
            self.report_fenced();
            self.events.emit(Event::ViewChanged {
                node: self.core.me().clone(),
                members: view.members.len(),
                ring: view.ownership.is_some(),
            });
        }
        if changed.liveness {
            let health = self.core.health_map();
            info!(?health, "liveness changed");
        }
        self.ring.do_send(ViewChanged {
            view,
            health: Arc::new(self.core.health_map()),
        });
    }

    /// Says once, loudly, that this node is out of the cluster and how to
    /// bring the machine back.
    fn report_fenced(&mut self) {
        if self.fence_reported || !self.core.is_fenced() {
            return;
        }
        self.fence_reported = true;
        let me = self.core.me().clone();
        if self.core.member(&me).map(|m| m.status) == Some(Status::Left) {
            info!(node = %me, "this node has left the cluster; it serves no more requests");
        } else {
            error!(node = %me,
                "this node was removed from the cluster: it refuses clients and peers, and \
                 will refuse to start on this data directory. To bring this machine back, \
                 stop it, empty its data directory and start it with a new node.id");
        }
        self.events.emit(Event::Fenced { node: me });
    }

    fn receive(&mut self, from: &NodeId, msg: GossipMsg) -> Result<Option<GossipMsg>> {
        match self.core.on_gossip(from, msg, self.clock.now()) {
            Ok((reply, changed)) => {
                self.publish(changed);
                Ok(reply.map(|r| r.msg))
            }
            Err(e) => {
                warn!(%from, error = %e, "gossip rejected");
                Err(e)
            }
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let (outgoing, changed) = self.core.tick(self.clock.now(), self.rng.u64(..));
        self.publish(changed);
        for out in outgoing {
            self.exchange(ctx, out.to, out.msg);
        }
    }

    /// Sends `to` a request of a gossip round; an answer that calls for
    /// the round's next request gets it.
    fn exchange(&mut self, ctx: &mut Context<Self>, to: Destination, msg: GossipMsg) {
        let call = ask(&self.bridge, to, PeerMsg::Gossip(msg), self.call_timeout);
        ctx.spawn(call.into_actor(self).map(|answer, act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| match answer {
                Ok((from, PeerMsg::Gossip(reply))) => {
                    if let Ok(Some(next)) = act.receive(&from, reply) {
                        act.exchange(ctx, Destination::Node(from), next);
                    }
                }
                Ok((from, other)) => debug!(%from, ?other, "unexpected answer to gossip"),
                Err(e) => debug!(error = %e, "gossip round failed"),
            })
        }));
    }
}

const NAME: &str = "membership";

/// A restarted membership rebuilds its state from the persisted view;
/// liveness starts afresh and gossip refills it.
impl Supervised for Membership {
    fn restarting(&mut self, _: &mut Context<Self>) {
        match load_view(&self.meta) {
            Ok(view) => {
                let stopping = self.core.is_stopping();
                self.core = Core::new(self.settings.clone(), view);
                if stopping {
                    self.core.stop();
                }
            }
            Err(e) => {
                warn!(error = %e, "the persisted view is unreadable; keeping the one in memory")
            }
        }
    }
}

impl Actor for Membership {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        self.publish(Changed {
            view: true,
            liveness: true,
        });
        self.tick(ctx);
        ctx.run_interval(self.interval, |act, ctx| act.tick(ctx));
    }
}

impl Handler<GossipIn> for Membership {
    type Result = Result<Option<GossipMsg>>;

    fn handle(
        &mut self,
        GossipIn { from, msg }: GossipIn,
        ctx: &mut Context<Self>,
    ) -> Self::Result {
        shielded(NAME, self, ctx, |act, _| -> Self::Result {
            act.receive(&from, msg)
        })
    }
}

impl Handler<PeerRequest> for Membership {
    type Result = ();

    fn handle(&mut self, PeerRequest { from, msg, reply }: PeerRequest, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| match msg {
            PeerMsg::Gossip(msg) => reply.answer(match act.receive(&from, msg) {
                Ok(Some(answer)) => Ok(PeerMsg::Gossip(answer)),
                // Taken (a stop notice): the sender may be waiting to know.
                Ok(None) => Ok(PeerMsg::Pong),
                Err(e) => Err(e),
            }),
            other => reply.error(&Error::InvalidRequest(format!(
                "membership takes no {} request",
                other.name()
            ))),
        })
    }
}

impl Handler<AnnounceStop> for Membership {
    type Result = ResponseFuture<()>;

    fn handle(
        &mut self,
        AnnounceStop { within }: AnnounceStop,
        _: &mut Context<Self>,
    ) -> Self::Result {
        // A peer that reconnected would take this node for up again.
        self.bridge.do_send(StopAccepting);
        let peers = self.core.stop();
        let told = futures_util::future::join_all(peers.into_iter().map(|peer| {
            let msg = PeerMsg::Gossip(GossipMsg::Stopping);
            ask(&self.bridge, Destination::Node(peer), msg, within)
        }));
        Box::pin(async move {
            let answers = told.await;
            let acked = answers.iter().filter(|a| a.is_ok()).count();
            info!(
                acked,
                asked = answers.len(),
                "told the peers this node is stopping"
            );
        })
    }
}

impl Handler<Reachability> for Membership {
    type Result = ();

    fn handle(&mut self, r: Reachability, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| {
            let changed = match &r {
                Reachability::Lost(peer) => act.core.on_unreachable(peer, act.clock.now()),
                Reachability::Reached(peer) => act.core.on_reachable(peer),
                Reachability::Speaks(peer, max) => {
                    act.core.speaks(peer, *max);
                    Changed::default()
                }
            };
            if changed.liveness {
                debug!(?r, "direct evidence of a peer's liveness");
            }
            act.publish(changed);
        })
    }
}

impl Handler<Fenced> for Membership {
    type Result = ();

    fn handle(&mut self, Fenced { by, record }: Fenced, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| match act.core.on_fenced(record) {
            Ok(changed) => {
                if changed.view {
                    warn!(peer = %by, "a peer refused this node: it left or was removed");
                }
                act.publish(changed);
            }
            Err(e) => warn!(peer = %by, error = %e, "ignoring a malformed refusal"),
        })
    }
}

impl Handler<CommitIncoming> for Membership {
    type Result = ();

    fn handle(&mut self, _: CommitIncoming, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| {
            let changed = act.core.commit_incoming();
            if changed.view {
                info!("committed the partitions moved to this node");
            }
            act.publish(changed);
        })
    }
}

impl Handler<MarkLeft> for Membership {
    type Result = ();

    fn handle(&mut self, _: MarkLeft, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| {
            let changed = act.core.mark_left();
            if changed.view {
                info!("left the cluster");
                act.events.emit(Event::Left {
                    node: act.core.me().clone(),
                });
            }
            act.publish(changed);
        })
    }
}

impl Handler<Admin> for Membership {
    type Result = Result<String>;

    fn handle(&mut self, op: Admin, ctx: &mut Context<Self>) -> Self::Result {
        shielded(NAME, self, ctx, |act, ctx| -> Self::Result {
            info!(?op, "membership change requested");
            let (changed, done) = match op {
                Admin::Join { seed } => (
                    act.core.join(seed.clone())?,
                    format!("joining the cluster of {seed}"),
                ),
                Admin::Leave => (
                    act.core.leave()?,
                    "leaving: partitions are being handed off".to_string(),
                ),
                Admin::Namespace { request, defaults } => act.core.namespace(request, &defaults)?,
                Admin::Split => act.core.split()?,
                Admin::Remove { node } => {
                    let view = act.core.view();
                    let id = view
                        .members
                        .values()
                        .find(|m| {
                            m.id.as_str() == node || m.peer_addr == node || m.client_addr == node
                        })
                        .map(|m| m.id.clone())
                        .ok_or_else(|| Error::InvalidRequest(format!("no member {node}")))?;
                    (
                        act.core.remove(&id)?,
                        format!("{id} removed; its partitions are being rebuilt"),
                    )
                }
            };
            act.publish(changed);
            act.tick(ctx);
            Ok(done)
        })
    }
}

impl Handler<CurrentView> for Membership {
    type Result = Arc<View>;

    fn handle(&mut self, _: CurrentView, _: &mut Context<Self>) -> Self::Result {
        Arc::new(self.core.view().clone())
    }
}

//! Ring: the routing view of the cluster.
//!
//! Receives `ViewChanged` from membership; recomputes the ring when the
//! ownership table changed and publishes `RingChanged` (the view and its
//! ring) to every subscriber (the coordinator, and the concerns that act
//! per partition). Liveness is not its business: a node that is down is
//! skipped when routing, never removed from the ring.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use dynakv::NodeId;
use dynakv::liveness::Health;
use dynakv::membership::View;
use dynakv::topology::Topology;

use crate::messages::RingChanged;

use crate::supervise::shielded;

/// The view, or this node's belief about members' health, changed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ViewChanged {
    pub view: Arc<View>,
    pub health: Arc<BTreeMap<NodeId, Health>>,
}

/// Adds a subscriber; it is sent the current topology at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<RingChanged>);

#[derive(Default)]
pub struct Ring {
    current: Option<Topology>,
    subscribers: Vec<Recipient<RingChanged>>,
}

const NAME: &str = "ring";

impl Actor for Ring {
    type Context = Context<Self>;
}

/// The last topology and the subscribers are plain data that a panic cannot
/// leave half-changed: a restarted Ring keeps them.
impl Supervised for Ring {}

impl Handler<ViewChanged> for Ring {
    type Result = ();

    fn handle(&mut self, ViewChanged { view, health }: ViewChanged, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| {
            let unchanged = act
                .current
                .as_ref()
                .filter(|t| t.view.ownership == view.ownership)
                .map(|t| t.ring.clone());
            let ring = unchanged.unwrap_or_else(|| view.ring().map(Arc::new));
            let version = view.digest();
            let topology = Topology {
                view,
                ring,
                health,
                version,
            };
            for s in &act.subscribers {
                s.do_send(RingChanged(topology.clone()));
            }
            act.current = Some(topology);
        })
    }
}

impl Handler<Subscribe> for Ring {
    type Result = ();

    fn handle(&mut self, Subscribe(r): Subscribe, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| {
            if let Some(t) = &act.current {
                r.do_send(RingChanged(t.clone()));
            }
            act.subscribers.push(r);
        })
    }
}

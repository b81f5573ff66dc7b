//! Hints: hands writes a stand-in holds back to their owner once it is up.
//!
//! Receives `RingChanged` (the ring and who is up) and its own timer. Every
//! `hints.interval_ms` it looks for owners with pending hints that are up
//! again and, one delivery at a time per owner, sends them batches of
//! `hints.batch_size` keys (each key's current sibling set), pausing
//! `hints.pause_ms` between batches. A batch's hints are cleared only after
//! the owner acknowledged merging it durably; keys this node does not
//! replicate itself are then dropped from its store. A failed batch is
//! retried at the next check. `hints.deliver = false` keeps every hint.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use dynakv::hints::HintMsg;
use dynakv::partition::Partition;
use dynakv::peer::PeerMsg;
use dynakv::ring::Ring;
use dynakv::{Error, NodeId, Result};
use tracing::{debug, info};

use crate::bridge::{Bridge, call};
use crate::events::{Event, Events};
use crate::replica::{ForgetMootHints, HandedOff, Replica, Stats, TakeHints};
use crate::ring::{RingChanged, Topology};
use crate::supervise::{mailbox_error, shielded};

#[derive(Debug, Clone)]
pub struct HintsSettings {
    pub me: NodeId,
    pub deliver: bool,
    pub batch_size: usize,
    pub pause: Duration,
    pub interval: Duration,
    pub n: usize,
    /// How long an owner may take to merge one batch.
    pub call_timeout: Duration,
}

pub struct Hints {
    settings: HintsSettings,
    replica: Addr<Replica>,
    bridge: Addr<Bridge>,
    topology: Option<Topology>,
    /// Owners a delivery is under way to.
    busy: BTreeSet<NodeId>,
    events: Events,
}

impl Hints {
    pub fn new(
        settings: HintsSettings,
        replica: Addr<Replica>,
        bridge: Addr<Bridge>,
        events: Events,
    ) -> Self {
        Hints {
            settings,
            replica,
            bridge,
            topology: None,
            busy: BTreeSet::new(),
            events,
        }
    }

    /// Starts a delivery to every owner that has hints and is up.
    fn check(&mut self, ctx: &mut Context<Self>) {
        let fenced = |t: &Topology| t.view.is_fenced(&self.settings.me);
        if !self.settings.deliver || self.topology.as_ref().is_some_and(fenced) {
            return; // off, or out of the cluster: its hints are nobody's now
        }
        let stats = self.replica.send(Stats);
        ctx.spawn(stats.into_actor(self).map(|stats, act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| {
                let Ok(Ok(stats)) = stats else { return };
                let Some(topology) = act.topology.clone() else {
                    return;
                };
                let Some(ring) = topology.ring.clone() else {
                    return;
                };
                for (owner, _) in stats.hints {
                    if topology.view.has_departed(&owner) {
                        // Its partitions have new replicas, and this node's
                        // copies reach them when it releases them (handoff).
                        act.forget_moot(owner, ring.clone(), ctx);
                    } else if topology.is_up(&owner) && act.busy.insert(owner.clone()) {
                        act.deliver(owner, ring.clone(), ctx);
                    }
                }
            })
        }));
    }

    /// Clears the hints for a departed `owner` that have nothing left to
    /// hand over (`dynakv::hints::moot`).
    fn forget_moot(&mut self, owner: NodeId, ring: Arc<Ring>, ctx: &mut Context<Self>) {
        let forget = self.replica.send(ForgetMootHints {
            owner,
            limit: self.settings.batch_size,
            replicates: ring.replicated_by(&self.settings.me, self.settings.n),
        });
        ctx.spawn(forget.into_actor(self).map(|cleared, _, _| {
            if let Ok(Ok(n @ 1..)) = cleared {
                debug!(hints = n, "hints of a departed owner cleared");
            }
        }));
    }

    fn deliver(&mut self, owner: NodeId, ring: Arc<Ring>, ctx: &mut Context<Self>) {
        let mine: HashSet<Partition> = ring
            .replicated_by(&self.settings.me, self.settings.n)
            .into_iter()
            .collect();
        let job = Delivery {
            owner: owner.clone(),
            mine,
            ring,
            settings: self.settings.clone(),
            replica: self.replica.clone(),
            bridge: self.bridge.clone(),
        };
        let events = self.events.clone();
        let me = self.settings.me.clone();
        ctx.spawn(
            async move { job.run().await }
                .into_actor(self)
                .map(move |outcome, act, ctx| {
 shielded(NAME, act, ctx, |act, _| {
                    act.busy.remove(&owner);
                    match outcome {
                        Ok(0) => {}
                        Ok(keys) => {
                            info!(%owner, keys, "hints delivered");
                            events.emit(Event::HintsDelivered {
                                node: me,
                                owner,
                                keys,
                            });
                        }
                        Err(e) => {
                            debug!(%owner, error = %e, "hint delivery interrupted; retrying later")
                        }
                    }
                })
}),
        );
    }
}

/// One delivery run to one owner: batches until none are left.
struct Delivery {
    owner: NodeId,
    /// Partitions this node replicates itself (its copies of those stay).
    mine: HashSet<Partition>,
    ring: Arc<Ring>,
    settings: HintsSettings,
    replica: Addr<Replica>,
    bridge: Addr<Bridge>,
}

impl Delivery {
    async fn run(self) -> Result<usize> {
        let mut delivered = 0;
        loop {
            let batch = self
                .replica
                .send(TakeHints {
                    owner: self.owner.clone(),
                    limit: self.settings.batch_size,
                })
                .await
                .map_err(mailbox_error)??;
            if batch.is_empty() {
                return Ok(delivered);
            }
            let answer = call(
                &self.bridge,
                self.owner.clone(),
                PeerMsg::Hints(HintMsg::Deliver {
                    entries: batch.clone(),
                }),
                self.settings.call_timeout,
            )
            .await?;
            match answer {
                PeerMsg::Hints(HintMsg::Delivered) => {}
                other => {
                    return Err(Error::Malformed(format!(
                        "hint delivery answered with {other:?}"
                    )));
                }
            }
            let keep = batch
                .iter()
                .filter(|(k, _)| self.mine.contains(&self.ring.partition_of(k)))
                .map(|(k, _)| k.clone())
                .collect();
            let cleared = self
                .replica
                .send(HandedOff {
                    owner: self.owner.clone(),
                    delivered: batch,
                    keep,
                })
                .await
                .map_err(mailbox_error)??;
            delivered += cleared;
            if cleared == 0 {
                // Every key changed while in flight; the next check retries.
                return Ok(delivered);
            }
            tokio::time::sleep(self.settings.pause).await;
        }
    }
}

const NAME: &str = "hints";

/// Hints live in storage; a restarted Hints actor only forgets which
/// deliveries were under way (they resume at the next check).
impl Supervised for Hints {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.busy.clear();
    }
}

impl Actor for Hints {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.settings.interval, |act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| act.check(ctx))
        });
    }
}

impl Handler<RingChanged> for Hints {
    type Result = ();

    fn handle(&mut self, RingChanged(t): RingChanged, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, ctx| {
            // An owner coming back up is worth checking at once.
            let newly_up = act
                .topology
                .as_ref()
                .is_some_and(|old| t.health.iter().any(|(n, _)| t.is_up(n) && !old.is_up(n)));
            act.topology = Some(t);
            if newly_up {
                act.check(ctx);
            }
        })
    }
}

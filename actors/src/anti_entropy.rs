//! AntiEntropy: paced hash-tree exchanges with co-replicas, and tombstone
//! collection.
//!
//! Receives `RingChanged`, its timers and `Summary` (for `status`).
//! - What to exchange and when is the core's `dynakv::anti_entropy::Schedule`:
//!   every `anti_entropy.interval_ms` the next partition this node
//!   replicates with a random co-replica that is up, one exchange at a time
//!   within `max_bytes_per_sec`; and when a co-replica comes up, one roots
//!   comparison with it, whose differing partitions are exchanged first,
//!   back to back. Each exchange is a `dynakv::anti_entropy::Exchange`: the
//!   core state machine runs on the storage worker (it reads and merges
//!   local data), the messages go through the Bridge.
//! - Every `gc_interval_ms`, for each partition it is the first replica of,
//!   it probes every member about a batch of its tombstones and collects the
//!   ones every member acknowledged twice, `gc_grace_ms` apart
//!   (`dynakv::tombstones`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use dynakv::anti_entropy::{AeMsg, ExchangeReport, RootsCheck, Schedule};
use dynakv::partition::Partition;
use dynakv::peer::PeerMsg;
use dynakv::replica::Entry;
use dynakv::tombstones::{GcMsg, Holding, Ripening, led_partitions};
use dynakv::{Error, NodeId, Result};
use tracing::{debug, info};

use crate::bridge::{Bridge, call};
use crate::coordinator::Summary;
use crate::events::{Event, Events};
use crate::replica::{
    AeBegin, AeContinue, AeRoots, CollectTombstones, FindTombstones, ProbeTombstones, Replica,
};
use crate::ring::{RingChanged, Topology};
use crate::supervise::{mailbox_error, shielded};

#[derive(Debug, Clone)]
pub struct AntiEntropySettings {
    pub me: NodeId,
    pub enabled: bool,
    pub n: usize,
    pub interval: Duration,
    pub max_bytes_per_sec: u64,
    pub gc_interval: Duration,
    pub gc_batch: usize,
    pub gc_grace: Duration,
    pub call_timeout: Duration,
}

pub struct AntiEntropy {
    settings: AntiEntropySettings,
    replica: Addr<Replica>,
    bridge: Addr<Bridge>,
    events: Events,
    topology: Option<Topology>,
    schedule: Schedule,
    collecting: bool,
    /// Last completed exchange per partition: when, and with whom.
    last: BTreeMap<Partition, (Instant, NodeId)>,
    repaired: u64,
    collected: u64,
    /// Tombstones waiting out the grace period (forgotten on restart,
    /// which only delays their collection).
    ripening: Arc<Mutex<Ripening>>,
    /// The origin of the actor's clock (the core's `now`, in ms).
    born: Instant,
    rng: fastrand::Rng,
}

impl AntiEntropy {
    pub fn new(
        settings: AntiEntropySettings,
        replica: Addr<Replica>,
        bridge: Addr<Bridge>,
        events: Events,
    ) -> Self {
        AntiEntropy {
            schedule: Schedule::new(settings.me.clone(), settings.n, settings.max_bytes_per_sec),
            settings,
            replica,
            bridge,
            events,
            topology: None,
            collecting: false,
            last: BTreeMap::new(),
            repaired: 0,
            collected: 0,
            ripening: Arc::default(),
            born: Instant::now(),
            rng: fastrand::Rng::new(),
        }
    }

    fn now(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// The topology, unless this node should not exchange at all (off, out
    /// of the cluster, or not founded yet).
    fn active(&self) -> Option<&Topology> {
        let t = self.topology.as_ref()?;
        let usable = self.settings.enabled && !t.view.is_fenced(&self.settings.me);
        (usable && t.ring.is_some()).then_some(t)
    }

    /// Starts the roots comparisons due (a failed one is retried here),
    /// then the next exchange, if one may start.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = self.now();
        let Some(t) = self.active().cloned() else {
            return;
        };
        let Some(ring) = &t.ring else { return };
        for check in self.schedule.on_topology(ring, |n| t.is_up(n)) {
            self.check_roots(check, ctx);
        }
        let rng = &mut self.rng;
        let Some((p, peer)) =
            self.schedule
                .next(ring, now, |n| t.is_up(n), |count| rng.usize(..count))
        else {
            return;
        };
        let begin = AeBegin {
            partition: p,
            push_only: false,
        };
        let run = exchange(
            self.replica.clone(),
            self.bridge.clone(),
            begin,
            peer.clone(),
            self.settings.call_timeout,
        );
        ctx.spawn(run.into_actor(self).map(move |outcome, act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| {
                act.exchanged(p, peer, outcome, ctx)
            })
        }));
    }

    fn exchanged(
        &mut self,
        p: Partition,
        peer: NodeId,
        outcome: Result<ExchangeReport>,
        ctx: &mut Context<Self>,
    ) {
        let now = self.now();
        let report = match outcome {
            Ok(report) => report,
            Err(e) => {
                self.schedule.on_exchanged(0, now);
                return debug!(%peer, partition = %p, error = %e, "anti-entropy exchange failed");
            }
        };
        let bytes = report.bytes_sent + report.bytes_received;
        self.schedule.on_exchanged(bytes, now);
        let repaired = report.pulled + report.pushed;
        // A node catching up goes on at once, within the byte budget.
        if repaired > 0 || self.schedule.has_urgent() {
            ctx.notify(Next);
        }
        self.last.insert(p, (Instant::now(), peer.clone()));
        self.repaired += repaired as u64;
        if repaired > 0 {
            debug!(%peer, partition = %p, pulled = report.pulled, pushed = report.pushed, "anti-entropy repaired keys");
        }
        self.events.emit(Event::Exchanged {
            node: self.settings.me.clone(),
            peer,
            partition: p.0,
            pulled: report.pulled,
            pushed: report.pushed,
            bytes,
        });
    }

    /// Compares the roots this node shares with a co-replica that came up;
    /// the partitions that differ are exchanged first.
    fn check_roots(&mut self, check: RootsCheck, ctx: &mut Context<Self>) {
        let RootsCheck { peer, partitions } = check;
        let (replica, bridge, timeout) = (
            self.replica.clone(),
            self.bridge.clone(),
            self.settings.call_timeout,
        );
        let asked = peer.clone();
        let run = async move {
            let msg = replica
                .send(AeRoots(partitions))
                .await
                .map_err(mailbox_error)??;
            let sent = msg.wire_size();
            match call(&bridge, asked, PeerMsg::AntiEntropy(msg), timeout).await? {
                PeerMsg::AntiEntropy(reply) => {
                    let bytes = sent + reply.wire_size();
                    match reply {
                        AeMsg::RootsDiffer { partitions } => Ok((partitions, bytes)),
                        other => Err(Error::Malformed(format!("roots answered with {other:?}"))),
                    }
                }
                other => Err(Error::Malformed(format!("roots answered with {other:?}"))),
            }
        };
        ctx.spawn(run.into_actor(self).map(move |outcome, act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| match outcome {
                Ok((differ, bytes)) => {
                    if !differ.is_empty() {
                        info!(%peer, partitions = differ.len(), "a co-replica came up; exchanging the partitions that differ");
                    }
                    act.schedule.on_roots(&peer, &differ, bytes, act.now());
                    act.tick(ctx);
                }
                Err(e) => {
                    debug!(%peer, error = %e, "comparing roots failed; trying again");
                    act.schedule.on_roots_failed(&peer);
                }
            })
        }));
    }

    /// One tombstone collection round over the partitions this node leads.
    fn collect(&mut self, ctx: &mut Context<Self>) {
        if self.collecting {
            return;
        }
        let Some(t) = self.active().cloned() else {
            return;
        };
        let Some(ring) = t.ring.clone() else { return };
        let me = self.settings.me.clone();
        let members: Vec<NodeId> = t
            .view
            .members
            .values()
            .filter(|m| m.status.is_live())
            .map(|m| m.id.clone())
            .collect();
        let led = led_partitions(&ring, &me);
        self.collecting = true;
        let (replica, bridge, n, batch, timeout) = (
            self.replica.clone(),
            self.bridge.clone(),
            self.settings.n,
            self.settings.gc_batch,
            self.settings.call_timeout,
        );
        let (ripening, born, grace) = (self.ripening.clone(), self.born, self.settings.gc_grace);
        let run = async move {
            let mut collected = 0;
            for p in led {
                let replicas: BTreeSet<NodeId> =
                    ring.preference_list(p, n).into_iter().cloned().collect();
                let decide = |found: &[Entry], answers: &[(NodeId, Vec<Holding>)]| {
                    let now = born.elapsed().as_millis() as u64;
                    match ripening.lock() {
                        Ok(mut r) => {
                            r.decide(found, answers, &replicas, now, grace.as_millis() as u64)
                        }
                        Err(_) => (Vec::new(), Vec::new()),
                    }
                };
                collected +=
                    collect_partition(&replica, &bridge, &me, &members, p, batch, timeout, decide)
                        .await?;
            }
            Ok::<usize, Error>(collected)
        };
        ctx.spawn(run.into_actor(self).map(|outcome, act, ctx| {
            shielded(NAME, act, ctx, |act, _| {
                act.collecting = false;
                match outcome {
                    Ok(0) => {}
                    Ok(keys) => {
                        act.collected += keys as u64;
                        info!(keys, "tombstones collected");
                        act.events.emit(Event::TombstonesCollected {
                            node: act.settings.me.clone(),
                            keys,
                        });
                    }
                    Err(e) => debug!(error = %e, "tombstone collection postponed"),
                }
            })
        }));
    }
}

/// Runs one exchange with `peer` to completion.
pub(crate) async fn exchange(
    replica: Addr<Replica>,
    bridge: Addr<Bridge>,
    begin: AeBegin,
    peer: NodeId,
    timeout: Duration,
) -> Result<ExchangeReport> {
    let (mut ex, mut msg) = replica.send(begin).await.map_err(mailbox_error)??;
    loop {
        let answer = call(&bridge, peer.clone(), PeerMsg::AntiEntropy(msg), timeout).await?;
        let reply = match answer {
            PeerMsg::AntiEntropy(reply) => reply,
            other => {
                return Err(Error::Malformed(format!(
                    "exchange answered with {other:?}"
                )));
            }
        };
        let (next_ex, next) = replica
            .send(AeContinue(ex, reply))
            .await
            .map_err(mailbox_error)??;
        ex = next_ex;
        match next {
            Some(m) => msg = m,
            None => return Ok(ex.report().clone()),
        }
    }
}

/// Probes every member about a batch of `p`'s tombstones and collects those
/// every member allows. Returns how many were collected here.
#[allow(clippy::too_many_arguments)]
async fn collect_partition(
    replica: &Addr<Replica>,
    bridge: &Addr<Bridge>,
    me: &NodeId,
    members: &[NodeId],
    p: Partition,
    batch: usize,
    timeout: Duration,
    decide: impl FnOnce(&[Entry], &[(NodeId, Vec<Holding>)]) -> (Vec<Entry>, Vec<NodeId>),
) -> Result<usize> {
    let found = replica
        .send(FindTombstones {
            partition: p,
            limit: batch,
        })
        .await
        .map_err(mailbox_error)??;
    if found.is_empty() {
        return Ok(0);
    }
    let ask = |node: NodeId, msg: GcMsg| {
        let local = node == *me;
        let (replica, bridge) = (replica.clone(), bridge.clone());
        async move {
            if local {
                return match msg {
                    GcMsg::Probe { entries } => Ok(GcMsg::Held {
                        held: replica
                            .send(ProbeTombstones(entries))
                            .await
                            .map_err(mailbox_error)??,
                    }),
                    GcMsg::Collect { entries } => Ok(GcMsg::Collected {
                        removed: replica
                            .send(CollectTombstones(entries))
                            .await
                            .map_err(mailbox_error)?? as u32,
                    }),
                    other => Err(Error::Internal(format!("{other:?} is not a request"))),
                };
            }
            match call(&bridge, node, PeerMsg::Tombstones(msg), timeout).await? {
                PeerMsg::Tombstones(answer) => Ok(answer),
                other => Err(Error::Malformed(format!("probe answered with {other:?}"))),
            }
        }
    };
    // Every member must answer; any failure postpones the collection.
    let mut answers: Vec<(NodeId, Vec<Holding>)> = Vec::new();
    for node in members {
        match ask(
            node.clone(),
            GcMsg::Probe {
                entries: found.clone(),
            },
        )
        .await?
        {
            GcMsg::Held { held } if held.len() == found.len() => answers.push((node.clone(), held)),
            other => {
                return Err(Error::Malformed(format!(
                    "{node} answered a probe with {other:?}"
                )));
            }
        }
    }
    let (entries, holders) = decide(&found, &answers);
    if entries.is_empty() {
        return Ok(0);
    }
    let mut here = 0;
    for node in holders {
        if let GcMsg::Collected { removed } = ask(
            node.clone(),
            GcMsg::Collect {
                entries: entries.clone(),
            },
        )
        .await?
            && node == *me
        {
            here = removed as usize;
        }
    }
    Ok(here)
}

const NAME: &str = "anti-entropy";

/// Trees live with the replica; a restarted AntiEntropy forgets the
/// exchange and collection under way and starts the next ones afresh.
impl Supervised for AntiEntropy {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.schedule.reset();
        self.collecting = false;
    }
}

impl Actor for AntiEntropy {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.settings.interval, |act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| act.tick(ctx))
        });
        ctx.run_interval(self.settings.gc_interval, |act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| act.collect(ctx))
        });
    }
}

/// Start the next exchange now rather than at the next tick.
#[derive(Message)]
#[rtype(result = "()")]
struct Next;

impl Handler<Next> for AntiEntropy {
    type Result = ();

    fn handle(&mut self, _: Next, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, ctx| {
            act.tick(ctx);
        })
    }
}

impl Handler<RingChanged> for AntiEntropy {
    type Result = ();

    fn handle(&mut self, RingChanged(t): RingChanged, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, ctx| {
            act.topology = Some(t);
            act.tick(ctx);
        })
    }
}

impl Handler<Summary> for AntiEntropy {
    type Result = Vec<String>;

    fn handle(&mut self, _: Summary, ctx: &mut Context<Self>) -> Self::Result {
        shielded(NAME, self, ctx, |act, _| -> Self::Result {
            let mine = act
                .topology
                .as_ref()
                .and_then(|t| t.ring.as_ref())
                .map_or(0, |r| {
                    r.replicated_by(&act.settings.me, act.settings.n).len()
                });
            let mut lines = vec![format!(
                "anti-entropy: {} of {mine} partitions exchanged, {} keys repaired, {} tombstones collected{}",
                act.last.len(),
                act.repaired,
                act.collected,
                if act.settings.enabled {
                    ""
                } else {
                    " (disabled)"
                }
            )];
            if let Some((p, (at, peer))) = act.last.iter().min_by_key(|(_, (at, _))| *at) {
                lines.push(format!(
                    "anti-entropy: oldest last exchange {p} with {peer}, {:.1} s ago",
                    at.elapsed().as_secs_f64()
                ));
            }
            lines
        })
    }
}

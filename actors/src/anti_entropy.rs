//! AntiEntropy: paced hash-tree exchanges with co-replicas, and tombstone
//! collection.
//!
//! Receives `RingChanged`, its timers, `Summary` (for `status`) and the
//! anti-entropy and tombstone requests of peers (`PeerRequest`, from the
//! Bridge), which the replica answers (`AeRespond`, `GcRespond`). Both drivers are the core's:
//! - `dynakv::anti_entropy::Schedule` says which exchange to start: every
//!   `anti_entropy.interval_ms` the next partition this node replicates
//!   with a random co-replica that is up, one at a time within
//!   `max_bytes_per_sec`; and when a co-replica comes up, one roots
//!   comparison with it, whose differing partitions are exchanged first.
//!   An exchange runs as `crate::exchange` does it;
//! - `dynakv::tombstones::Collector` runs a tombstone collection round
//!   every `gc_interval_ms`.
//!
//! This actor owns the timers and carries out what the drivers ask.

use std::time::Duration;

use actix::prelude::*;
use dynakv::anti_entropy::{AeMsg, ExchangeReport, RootsCheck, Schedule};
use dynakv::partition::Partition;
use dynakv::peer::PeerMsg;
use dynakv::store::Entry;
use dynakv::tombstones::{Collector, CollectorSettings, GcMsg, GcWork, delete_writes};
use dynakv::topology::Topology;
use dynakv::{Error, NodeId, Result};
use tracing::{debug, info, warn};

use crate::bridge::{Bridge, PeerRequest, call};
use crate::clock::Clock;
use crate::events::{Event, Events};
use crate::exchange::exchange;
use crate::messages::{RingChanged, Summary};
use crate::replica::{
    AeBegin, AeRespond, AeRoots, DeleteDropped, FindToCollect, GcRespond, Replica,
};
use crate::supervise::{answered, mailbox_error, shielded};

#[derive(Debug, Clone)]
pub struct AntiEntropySettings {
    pub me: NodeId,
    pub enabled: bool,
    pub n: usize,
    pub interval: Duration,
    pub max_bytes_per_sec: u64,
    pub gc_interval: Duration,
    pub collector: CollectorSettings,
    pub call_timeout: Duration,
}

pub struct AntiEntropy {
    settings: AntiEntropySettings,
    replica: Addr<Replica>,
    bridge: Addr<Bridge>,
    events: Events,
    topology: Option<Topology>,
    schedule: Schedule,
    collector: Collector,
    /// Tombstones collected on this node since it started.
    collected: u64,
    clock: Clock,
    rng: fastrand::Rng,
}

impl AntiEntropy {
    pub fn new(
        settings: AntiEntropySettings,
        replica: Addr<Replica>,
        bridge: Addr<Bridge>,
        events: Events,
        clock: Clock,
    ) -> Self {
        AntiEntropy {
            schedule: Schedule::new(settings.me.clone(), settings.n, settings.max_bytes_per_sec),
            collector: Collector::new(settings.collector.clone()),
            settings,
            replica,
            bridge,
            events,
            topology: None,
            collected: 0,
            clock,
            rng: fastrand::Rng::new(),
        }
    }

    /// The topology, while anti-entropy is on (the drivers themselves do
    /// nothing before the ring exists or once this node is out).
    fn active(&self) -> Option<Topology> {
        self.topology.clone().filter(|_| self.settings.enabled)
    }

    /// Starts the roots comparisons due (a failed one is retried here),
    /// then the next exchange, if one may start.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = self.clock.now();
        if let Some((_, _, age)) = self.schedule.oldest_exchange(now) {
            self.events.metrics().oldest_exchange(age);
        }
        let Some(t) = self.active() else { return };
        for check in self.schedule.on_topology(&t) {
            self.check_roots(check, ctx);
        }
        let rng = &mut self.rng;
        let Some(due) = self.schedule.next(&t, now, |count| rng.usize(..count)) else {
            return;
        };
        let (p, peer) = (due.partition, due.peer);
        let begin = AeBegin {
            partition: p,
            scope: due.scope,
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
        let now = self.clock.now();
        let report = match outcome {
            Ok(report) => report,
            Err(e) => {
                self.schedule.on_failed(0, now);
                return debug!(%peer, partition = %p, error = %e, "anti-entropy exchange failed");
            }
        };
        if self.schedule.on_done(p, &peer, &report, now) {
            ctx.notify(Next);
        }
        if report.pulled + report.pushed > 0 {
            debug!(%peer, partition = %p, pulled = report.pulled, pushed = report.pushed, "anti-entropy repaired keys");
        }
        self.events.emit(Event::Exchanged {
            node: self.settings.me.clone(),
            peer,
            partition: p.0,
            pulled: report.pulled,
            pushed: report.pushed,
            bytes: report.bytes_sent + report.bytes_received,
        });
    }

    /// Compares the roots this node shares with a co-replica that came up;
    /// the partitions that differ are exchanged first.
    fn check_roots(&mut self, check: RootsCheck, ctx: &mut Context<Self>) {
        let RootsCheck {
            peer,
            scope,
            partitions,
        } = check;
        let (replica, bridge, timeout) = (
            self.replica.clone(),
            self.bridge.clone(),
            self.settings.call_timeout,
        );
        let asked = peer.clone();
        let run = async move {
            let msg = replica
                .send(AeRoots(scope, partitions))
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
                    act.schedule.on_roots(&peer, &differ, bytes, act.clock.now());
                    act.tick(ctx);
                }
                Err(e) => {
                    debug!(%peer, error = %e, "comparing roots failed; trying again");
                    act.schedule.on_roots_failed(&peer);
                }
            })
        }));
    }

    /// Starts a tombstone collection round, unless one runs.
    fn collect(&mut self, ctx: &mut Context<Self>) {
        let Some(t) = self.active() else { return };
        let work = self.collector.on_tick(&t);
        self.gc_work(work, ctx);
    }

    /// Writes the tombstones this node minted over keys of dropped
    /// namespaces to the keys' other replicas (`tombstones::delete_writes`).
    fn write_deletes(&self, deleted: Vec<Entry>) {
        let me = &self.settings.me;
        let Some(t) = self.active() else { return };
        let Some(place) = t.placement(me, self.settings.collector.n) else {
            return;
        };
        if deleted.is_empty() {
            return;
        }
        info!(keys = deleted.len(), "deleting keys of dropped namespaces");
        for (peer, msg) in delete_writes(&place, me, deleted) {
            let timeout = self.settings.call_timeout;
            let sent = call(&self.bridge, peer, PeerMsg::Replica(msg), timeout);
            actix::spawn(async move {
                let _ = sent.await;
            });
        }
    }

    /// Carries out what the collector asks: the replica finds tombstones;
    /// a probe or collect goes to this node's replica or, through the
    /// Bridge, to a peer's.
    fn gc_work(&mut self, work: Vec<GcWork>, ctx: &mut Context<Self>) {
        for w in work {
            match w {
                GcWork::DeleteDropped { partitions, limit } => {
                    let deleted = self.replica.send(DeleteDropped { partitions, limit });
                    ctx.spawn(deleted.into_actor(self).map(|deleted, act, _| {
                        match answered(deleted) {
                            Ok(deleted) => act.write_deletes(deleted),
                            Err(e) => warn!(error = %e, "cannot delete keys of dropped namespaces"),
                        }
                    }));
                }
                GcWork::Find {
                    partition,
                    limit,
                    current,
                } => {
                    let found = self.replica.send(FindToCollect {
                        partition,
                        limit,
                        current,
                    });
                    ctx.spawn(found.into_actor(self).map(|found, act, ctx| {
                        shielded(NAME, act, ctx, |act, ctx| {
                            let work = act.collector.on_found(answered(found));
                            act.gc_work(work, ctx);
                        })
                    }));
                }
                GcWork::Ask {
                    to,
                    msg,
                    timeout_ms,
                } => {
                    let asked = self.ask(to.clone(), msg, Duration::from_millis(timeout_ms));
                    ctx.spawn(asked.into_actor(self).map(move |answer, act, ctx| {
                        shielded(NAME, act, ctx, |act, ctx| {
                            let now = act.clock.now();
                            let work = act.collector.on_answer(&to, answer, now);
                            act.gc_work(work, ctx);
                        })
                    }));
                }
                GcWork::Ended { keys, folded } => {
                    if folded > 0 {
                        info!(counters = folded, "counters folded");
                    }
                    let Some(keys) = keys else {
                        debug!("tombstone collection postponed");
                        continue;
                    };
                    if keys > 0 {
                        self.collected += keys as u64;
                        info!(keys, "tombstones collected");
                        self.events.emit(Event::TombstonesCollected {
                            node: self.settings.me.clone(),
                            keys,
                        });
                    }
                    if let Some(backlog) = self.collector.backlog() {
                        self.events.emit(Event::TombstoneBacklog {
                            node: self.settings.me.clone(),
                            awaiting: backlog.awaiting,
                            held_back: backlog.held_back.clone().into_iter().collect(),
                        });
                    }
                }
            }
        }
    }

    /// A probe or collect of `to`'s replica: this node's own, or a peer's.
    fn ask(
        &self,
        to: NodeId,
        msg: GcMsg,
        timeout: Duration,
    ) -> impl Future<Output = Result<GcMsg>> + 'static {
        let local = to == self.settings.me;
        let (replica, bridge) = (self.replica.clone(), self.bridge.clone());
        async move {
            if local {
                return answered(replica.send(GcRespond(msg)).await);
            }
            match call(&bridge, to, PeerMsg::Tombstones(msg), timeout).await? {
                PeerMsg::Tombstones(answer) => Ok(answer),
                other => Err(Error::Malformed(format!("probe answered with {other:?}"))),
            }
        }
    }
}

const NAME: &str = "anti-entropy";

/// Trees live with the replica; a restarted AntiEntropy forgets the
/// exchange and collection under way and starts the next ones afresh.
impl Supervised for AntiEntropy {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.schedule.reset();
        self.collector.reset();
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

/// A co-replica's exchange message or a collector's probe or collect,
/// answered from this node's replica.
impl Handler<PeerRequest> for AntiEntropy {
    type Result = ();

    fn handle(&mut self, PeerRequest { msg, reply, .. }: PeerRequest, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| match msg {
            PeerMsg::AntiEntropy(msg) => {
                let answer = act.replica.send(AeRespond(msg));
                reply.later(async move { answered(answer.await).map(PeerMsg::AntiEntropy) });
            }
            PeerMsg::Tombstones(msg) => {
                let answer = act.replica.send(GcRespond(msg));
                reply.later(async move { answered(answer.await).map(PeerMsg::Tombstones) });
            }
            other => reply.error(&Error::InvalidRequest(format!(
                "anti-entropy takes no {} request",
                other.name()
            ))),
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
            let ring = act.topology.as_ref().and_then(|t| t.ring.as_deref());
            let mut lines = act.schedule.summary(ring, act.clock.now());
            lines[0].push_str(&format!(", {} tombstones collected", act.collected));
            lines.extend(act.collector.summary());
            if !act.settings.enabled {
                lines[0].push_str(" (disabled)");
            }
            lines
        })
    }
}

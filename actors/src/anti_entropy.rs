//! AntiEntropy: paced hash-tree exchanges with co-replicas, and tombstone
//! collection.
//!
//! Receives `RingChanged`, its timers and `Summary` (for `status`).
//! - Every `anti_entropy.interval_ms`, unless an exchange is running or the
//!   last second's exchanges used more than `max_bytes_per_sec`, it takes the
//!   next partition this node replicates (round robin) and a random co-replica
//!   that is up, and runs one `dynakv::anti_entropy::Exchange`: the core
//!   state machine runs on the storage worker (it reads and merges local
//!   data), the messages go through the Bridge.
//! - Every `gc_interval_ms`, for each partition it is the first replica of,
//!   it probes every member about a batch of its tombstones and collects the
//!   ones every member acknowledged twice, `gc_grace_ms` apart
//!   (`dynakv::tombstones`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use dynakv::anti_entropy::{ExchangeReport, next_exchange};
use dynakv::peer::PeerMsg;
use dynakv::replica::Entry;
use dynakv::ring::Partition;
use dynakv::tombstones::{GcMsg, Holding, Ripening, led_partitions};
use dynakv::{Error, NodeId, Result};
use tracing::{debug, info};

use crate::bridge::{Bridge, call};
use crate::coordinator::Summary;
use crate::events::{Event, Events};
use crate::replica::{
    AeBegin, AeContinue, CollectTombstones, FindTombstones, ProbeTombstones, Replica,
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
    /// Next position in this node's partitions (round robin).
    cursor: usize,
    running: bool,
    collecting: bool,
    /// Bytes exchanged in the current one-second window.
    window: (Instant, u64),
    /// Last completed exchange per partition: when, and with whom.
    last: BTreeMap<Partition, (Instant, NodeId)>,
    repaired: u64,
    collected: u64,
    /// Tombstones waiting out the grace period (forgotten on restart,
    /// which only delays their collection).
    ripening: Arc<Mutex<Ripening>>,
    /// The origin of the collector's clock.
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
            settings,
            replica,
            bridge,
            events,
            topology: None,
            cursor: 0,
            running: false,
            collecting: false,
            window: (Instant::now(), 0),
            last: BTreeMap::new(),
            repaired: 0,
            collected: 0,
            ripening: Arc::default(),
            born: Instant::now(),
            rng: fastrand::Rng::new(),
        }
    }

    fn within_budget(&mut self) -> bool {
        if self.window.0.elapsed() >= Duration::from_secs(1) {
            self.window = (Instant::now(), 0);
        }
        self.window.1 <= self.settings.max_bytes_per_sec
    }

    /// Starts the next exchange, if one may start.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if !self.settings.enabled || self.running || !self.within_budget() {
            return;
        }
        let Some(t) = &self.topology else { return };
        if t.view.is_fenced(&self.settings.me) {
            return; // out of the cluster: it replicates nothing
        }
        let Some(ring) = &t.ring else { return };
        let Some((p, peer)) = next_exchange(
            ring,
            &self.settings.me,
            self.settings.n,
            &mut self.cursor,
            |n| t.is_up(n),
            |count| self.rng.usize(..count),
        ) else {
            return;
        };
        self.running = true;
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
            act.running = false;
            match outcome {
                Ok(report) => {
                    // A productive exchange (a node catching up) is followed
                    // at once by the next, within the byte budget.
                    if report.pulled + report.pushed > 0 {
                        ctx.notify(Next);
                    }
                    act.window.1 += (report.bytes_sent + report.bytes_received) as u64;
                    act.last.insert(p, (Instant::now(), peer.clone()));
                    let repaired = report.pulled + report.pushed;
                    act.repaired += repaired as u64;
                    if repaired > 0 {
                        debug!(%peer, partition = %p, pulled = report.pulled, pushed = report.pushed, "anti-entropy repaired keys");
                    }
                    act.events.emit(Event::Exchanged {
                        node: act.settings.me.clone(),
                        peer,
                        partition: p.0,
                        pulled: report.pulled,
                        pushed: report.pushed,
                        bytes: report.bytes_sent + report.bytes_received,
                    });
                }
                Err(e) => debug!(%peer, partition = %p, error = %e, "anti-entropy exchange failed"),
            }
        })
}));
    }

    /// One tombstone collection round over the partitions this node leads.
    fn collect(&mut self, ctx: &mut Context<Self>) {
        if !self.settings.enabled || self.collecting {
            return;
        }
        let Some(t) = self.topology.clone() else {
            return;
        };
        if t.view.is_fenced(&self.settings.me) {
            return;
        }
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
        self.running = false;
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
        shielded(NAME, self, ctx, |act, _| {
            act.topology = Some(t);
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

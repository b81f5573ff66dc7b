//! Handoff: streams the partitions this node receives, releases the ones it
//! gave away, and finishes joins and leaves.
//!
//! Receives `RingChanged`, its timer, `Summary` and `FetchTotals`, and the
//! fetches of peers (`PeerRequest`, from the Bridge), which the replica
//! answers. What to do next is the core's `dynakv::handoff::HandoffDriver`
//! (fetch, commit, release, leave); this actor carries it out: fetches
//! through the Bridge, merges and drops on the replica, push-only exchanges
//! (`crate::exchange`), the progress persisted in `meta` after each chunk
//! (so a crash of either side resumes where it stopped), commits and the
//! final leave through membership, and the byte budget's pauses on its
//! timer.

use std::time::Duration;

use actix::prelude::*;
use dynakv::handoff::{HandoffDriver, HandoffSettings, HandoffWork, Progress, Totals};
use dynakv::peer::PeerMsg;
use dynakv::store::Store;
use tracing::{debug, info, warn};

use crate::bridge::{Bridge, PeerRequest, call};
use crate::clock::Clock;
use crate::events::{Event, Events};
use crate::exchange::exchange;
use crate::messages::{CommitIncoming, MarkLeft, RingChanged, Summary};
use crate::replica::{
    AeBegin, DropPartition, HandoffRespond, HeldPartitions, MergeHandoff, Replica,
};
use crate::storage::FjallStore;
use crate::supervise::{answered, shielded};

/// Key of the fetch progress in the `meta` keyspace.
const PROGRESS_KEY: &[u8] = b"handoff";

fn load_progress(meta: &FjallStore) -> Progress {
    match meta
        .get(PROGRESS_KEY)
        .and_then(|b| b.map(|b| Progress::from_bytes(&b)).transpose())
    {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            warn!(error = %e, "handoff progress unreadable; transfers restart from the beginning");
            Progress::default()
        }
    }
}

/// Where membership takes this node's commits and its final leave.
pub struct MembershipLinks {
    pub commit: Recipient<CommitIncoming>,
    pub left: Recipient<MarkLeft>,
}

/// What handoff talks to, and where it persists its progress.
pub struct Wiring {
    pub replica: Addr<Replica>,
    pub bridge: Addr<Bridge>,
    pub membership: MembershipLinks,
    pub meta: FjallStore,
    pub events: Events,
    pub clock: Clock,
}

pub struct Handoff {
    driver: HandoffDriver,
    interval: Duration,
    replica: Addr<Replica>,
    bridge: Addr<Bridge>,
    membership: MembershipLinks,
    meta: FjallStore,
    events: Events,
    clock: Clock,
}

impl Handoff {
    /// Resumes from the progress persisted in `meta`.
    pub fn new(settings: HandoffSettings, interval: Duration, wiring: Wiring) -> Self {
        let Wiring {
            replica,
            bridge,
            membership,
            meta,
            events,
            clock,
        } = wiring;
        let progress = load_progress(&meta);
        Handoff {
            driver: HandoffDriver::new(settings, progress),
            interval,
            replica,
            bridge,
            membership,
            meta,
            events,
            clock,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let work = self.driver.on_tick(self.clock.now());
        self.carry_out(work, ctx);
    }

    fn carry_out(&mut self, work: Vec<HandoffWork>, ctx: &mut Context<Self>) {
        for w in work {
            match w {
                HandoffWork::Fetch {
                    from,
                    request,
                    timeout_ms,
                } => {
                    let timeout = Duration::from_millis(timeout_ms);
                    let fetch = call(&self.bridge, from, PeerMsg::Handoff(request), timeout);
                    let chunk = async move {
                        match fetch.await? {
                            PeerMsg::Handoff(chunk) => Ok(chunk),
                            other => Err(dynakv::Error::Malformed(format!(
                                "fetch answered with {other:?}"
                            ))),
                        }
                    };
                    self.then(chunk, ctx, |act, chunk| {
                        if let Err(e) = &chunk {
                            debug!(error = %e, "fetch interrupted; resuming later");
                        }
                        act.driver.on_chunk(chunk)
                    });
                }
                HandoffWork::Merge { entries } => {
                    let merged = self.replica.send(MergeHandoff(entries));
                    self.then(merged, ctx, |act, merged| {
                        act.driver.on_merged(answered(merged), act.clock.now())
                    });
                }
                HandoffWork::SaveProgress(progress) => {
                    if let Err(e) = self.meta.clone().put(PROGRESS_KEY, &progress.to_bytes()) {
                        warn!(error = %e, "persisting handoff progress failed");
                    }
                }
                HandoffWork::Commit => {
                    info!("every incoming partition fetched; committing");
                    self.membership.commit.do_send(CommitIncoming);
                }
                HandoffWork::Held { partitions } => {
                    let held = self.replica.send(HeldPartitions(partitions));
                    self.then(held, ctx, |act, held| act.driver.on_held(answered(held)));
                }
                HandoffWork::Sync {
                    partition,
                    scope,
                    with,
                } => {
                    let begin = AeBegin {
                        partition,
                        scope,
                        push_only: true,
                    };
                    let synced = exchange(
                        self.replica.clone(),
                        self.bridge.clone(),
                        begin,
                        with,
                        self.driver_timeout(),
                    );
                    self.then(synced, ctx, move |act, synced| {
                        if let Err(e) = &synced {
                            debug!(%partition, error = %e, "release postponed");
                        }
                        act.driver.on_synced(synced)
                    });
                }
                HandoffWork::Drop {
                    partitions,
                    partition,
                    scope,
                    synced,
                } => {
                    let dropped = self.replica.send(DropPartition {
                        partitions,
                        partition,
                        scope,
                        synced,
                    });
                    self.then(dropped, ctx, move |act, dropped| {
                        let dropped = answered(dropped);
                        if let Ok(None) = dropped {
                            debug!(%partition, "written to since its sync; released later");
                        }
                        act.driver.on_dropped(dropped, act.clock.now())
                    });
                }
                HandoffWork::Leave => self.membership.left.do_send(MarkLeft),
                HandoffWork::Wake { at } => {
                    ctx.run_later(self.clock.until(at), |act, ctx| {
                        shielded(NAME, act, ctx, |act, ctx| act.tick(ctx))
                    });
                }
                HandoffWork::Chunk { keys, bytes } => {
                    self.events.metrics().handoff_chunk(keys, bytes)
                }
                HandoffWork::Fetched {
                    partition,
                    from,
                    keys,
                } => {
                    info!(%partition, %from, keys, "partition fetched");
                    self.events.emit(Event::PartitionFetched {
                        node: self.me().clone(),
                        partition: partition.0,
                        from,
                        keys,
                    });
                }
                HandoffWork::Released { partition, keys } => {
                    info!(%partition, keys, "copies this node no longer replicates synchronised and dropped");
                    self.events.emit(Event::PartitionReleased {
                        node: self.me().clone(),
                        partition: partition.0,
                        keys,
                    });
                }
            }
        }
    }

    fn me(&self) -> &dynakv::NodeId {
        self.driver.me()
    }

    fn driver_timeout(&self) -> Duration {
        Duration::from_millis(self.driver.call_timeout_ms())
    }

    /// Awaits `fut`, hands its outcome to `step`, and carries out what the
    /// driver asks next.
    fn then<T: 'static>(
        &mut self,
        fut: impl Future<Output = T> + 'static,
        ctx: &mut Context<Self>,
        step: impl FnOnce(&mut Self, T) -> Vec<HandoffWork> + 'static,
    ) {
        ctx.spawn(fut.into_actor(self).map(move |out, act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| {
                let work = step(act, out);
                act.carry_out(work, ctx);
            })
        }));
    }
}

/// What this node has fetched and released since it started.
#[derive(Message)]
#[rtype(result = "Totals")]
pub struct FetchTotals;

impl crate::supervise::Fallback for Totals {
    fn fallback() -> Self {
        Totals::default()
    }
}

impl Handler<FetchTotals> for Handoff {
    type Result = MessageResult<FetchTotals>;

    fn handle(&mut self, _: FetchTotals, ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(shielded(NAME, self, ctx, |act, _| act.driver.totals()))
    }
}

const NAME: &str = "handoff";

/// A restarted Handoff reloads its fetch progress from storage and resumes.
impl Supervised for Handoff {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.driver.reset(load_progress(&self.meta));
    }
}

impl Actor for Handoff {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.interval, |act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| act.tick(ctx))
        });
    }
}

/// A peer fetches a chunk of a partition, answered from this node's
/// replica (at most `dynakv::handoff::MAX_CHUNK_KEYS` keys).
impl Handler<PeerRequest> for Handoff {
    type Result = ();

    fn handle(&mut self, PeerRequest { msg, reply, .. }: PeerRequest, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| match msg {
            PeerMsg::Handoff(msg) => {
                let answer = act.replica.send(HandoffRespond(msg));
                reply.later(async move { answered(answer.await).map(PeerMsg::Handoff) });
            }
            other => reply.error(&dynakv::Error::InvalidRequest(format!(
                "handoff takes no {} request",
                other.name()
            ))),
        })
    }
}

impl Handler<RingChanged> for Handoff {
    type Result = ();

    fn handle(&mut self, RingChanged(t): RingChanged, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, ctx| {
            let work = act.driver.on_topology(t, act.clock.now());
            act.carry_out(work, ctx);
        })
    }
}

impl Handler<Summary> for Handoff {
    type Result = Vec<String>;

    fn handle(&mut self, _: Summary, ctx: &mut Context<Self>) -> Self::Result {
        shielded(NAME, self, ctx, |act, _| -> Self::Result {
            act.driver.summary(act.clock.now())
        })
    }
}

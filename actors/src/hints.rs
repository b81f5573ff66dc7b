//! Hints: hands writes a stand-in holds back to their owner once it is up.
//!
//! Receives `RingChanged` (the ring and who is up), its own timer, the
//! answers to what its driver asked, and peers' hint deliveries to this
//! node (`PeerRequest`), merged durably before they are acknowledged. The delivery itself is the core's
//! `dynakv::hints::HintDelivery`: per owner that is up, batches of
//! `hints.batch_size` keys sent one at a time, each cleared only after the
//! owner acknowledged merging it durably, `hints.pause_ms` apart. This actor
//! checks every `hints.interval_ms` (and at once when an owner comes up)
//! and carries out what the driver asks: reads and clears on the replica,
//! sends through the Bridge, and pauses on its timer.

use std::time::Duration;

use actix::prelude::*;
use dynakv::hints::{DeliverySettings, HintDelivery, HintMsg, HintWork};
use dynakv::peer::PeerMsg;
use dynakv::{Error, NodeId};
use tracing::{debug, info};

use crate::bridge::{Bridge, PeerRequest, call};
use crate::clock::Clock;
use crate::events::{Event, Events};
use crate::messages::{RingChanged, Summary};
use crate::replica::{ForgetMootHints, HandedOff, MergeHandoff, Replica, Stats, TakeHints};
use crate::supervise::{answered, shielded};

#[derive(Debug, Clone)]
pub struct HintsSettings {
    pub delivery: DeliverySettings,
    /// Interval between checks for deliverable hints.
    pub interval: Duration,
}

pub struct Hints {
    interval: Duration,
    driver: HintDelivery,
    replica: Addr<Replica>,
    bridge: Addr<Bridge>,
    events: Events,
    clock: Clock,
}

impl Hints {
    pub fn new(
        settings: HintsSettings,
        replica: Addr<Replica>,
        bridge: Addr<Bridge>,
        events: Events,
        clock: Clock,
    ) -> Self {
        Hints {
            interval: settings.interval,
            driver: HintDelivery::new(settings.delivery),
            replica,
            bridge,
            events,
            clock,
        }
    }

    /// Asks the replica which owners it holds hints for, then lets the
    /// driver start what is due.
    fn check(&mut self, ctx: &mut Context<Self>) {
        let stats = self.replica.send(Stats);
        ctx.spawn(stats.into_actor(self).map(|stats, act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| {
                let Ok(Ok(stats)) = stats else { return };
                let pending = stats.hints.into_iter().collect();
                let now = act.clock.now();
                let work = act.driver.on_tick(&pending, now);
                act.events.metrics().hints_waiting(&act.driver.waiting(now));
                act.carry_out(work, ctx);
            })
        }));
    }

    fn carry_out(&mut self, work: Vec<HintWork>, ctx: &mut Context<Self>) {
        for w in work {
            match w {
                HintWork::Take { owner, limit } => {
                    let taken = self.replica.send(TakeHints {
                        owner: owner.clone(),
                        limit,
                    });
                    self.then(taken, ctx, move |act, taken| {
                        act.driver.on_batch(&owner, answered(taken))
                    });
                }
                HintWork::Send {
                    owner,
                    entries,
                    timeout_ms,
                } => {
                    let msg = PeerMsg::Hints(HintMsg::Deliver { entries });
                    let timeout = Duration::from_millis(timeout_ms);
                    let sent = call(&self.bridge, owner.clone(), msg, timeout);
                    let sent = async move {
                        match sent.await? {
                            PeerMsg::Hints(HintMsg::Delivered) => Ok(()),
                            other => Err(Error::Malformed(format!(
                                "hint delivery answered with {other:?}"
                            ))),
                        }
                    };
                    self.then(sent, ctx, move |act, sent| act.driver.on_sent(&owner, sent));
                }
                HintWork::Clear { owner, delivered } => {
                    let cleared = self.replica.send(HandedOff {
                        owner: owner.clone(),
                        delivered,
                    });
                    self.then(cleared, ctx, move |act, cleared| {
                        let now = act.clock.now();
                        act.driver.on_cleared(&owner, answered(cleared), now)
                    });
                }
                HintWork::Resume { owner, at } => {
                    ctx.run_later(self.clock.until(at), move |act, ctx| {
                        shielded(NAME, act, ctx, |act, ctx| {
                            let work = act.driver.on_resume(&owner);
                            act.carry_out(work, ctx);
                        })
                    });
                }
                HintWork::ForgetMoot {
                    owner,
                    limit,
                    partitions,
                    replicates,
                } => {
                    let forget = self.replica.send(ForgetMootHints {
                        owner,
                        limit,
                        partitions,
                        replicates,
                    });
                    ctx.spawn(forget.into_actor(self).map(|cleared, _, _| {
                        if let Ok(Ok(n @ 1..)) = cleared {
                            debug!(hints = n, "hints of a departed owner cleared");
                        }
                    }));
                }
                HintWork::Ended { owner, keys } => self.ended(owner, keys),
            }
        }
    }

    /// Awaits `fut`, hands its outcome to `step`, and carries out what the
    /// driver asks next.
    fn then<T: 'static>(
        &mut self,
        fut: impl Future<Output = T> + 'static,
        ctx: &mut Context<Self>,
        step: impl FnOnce(&mut Self, T) -> Vec<HintWork> + 'static,
    ) {
        ctx.spawn(fut.into_actor(self).map(move |out, act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| {
                let work = step(act, out);
                act.carry_out(work, ctx);
            })
        }));
    }

    fn ended(&self, owner: NodeId, keys: Option<usize>) {
        match keys {
            Some(0) => {}
            Some(keys) => {
                info!(%owner, keys, "hints delivered");
                self.events.emit(Event::HintsDelivered {
                    node: self.driver.me().clone(),
                    owner,
                    keys,
                });
            }
            None => debug!(%owner, "hint delivery interrupted; retrying later"),
        }
    }
}

const NAME: &str = "hints";

/// Hints live in storage; a restarted Hints actor only forgets which
/// deliveries were under way (they resume at the next check).
impl Supervised for Hints {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.driver.reset();
    }
}

impl Actor for Hints {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.interval, |act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| act.check(ctx))
        });
    }
}

/// A peer hands over the writes it kept for this node: merged durably,
/// then acknowledged (only then does the peer clear its hints).
impl Handler<PeerRequest> for Hints {
    type Result = ();

    fn handle(&mut self, PeerRequest { msg, reply, .. }: PeerRequest, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| match msg {
            PeerMsg::Hints(HintMsg::Deliver { entries }) => {
                let merged = act.replica.send(MergeHandoff(entries));
                reply.later(async move {
                    answered(merged.await)?;
                    Ok(PeerMsg::Hints(HintMsg::Delivered))
                });
            }
            other => reply.error(&Error::InvalidRequest(format!(
                "hints take no {} request",
                other.name()
            ))),
        })
    }
}

impl Handler<RingChanged> for Hints {
    type Result = ();

    fn handle(&mut self, RingChanged(t): RingChanged, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, ctx| {
            // An owner coming back up is worth checking at once.
            if act.driver.on_topology(t) {
                act.check(ctx);
            }
        })
    }
}

impl Handler<Summary> for Hints {
    type Result = Vec<String>;

    /// For `status`: each owner this node holds hints for, and for how
    /// long it has had some.
    fn handle(&mut self, _: Summary, ctx: &mut Context<Self>) -> Self::Result {
        shielded(NAME, self, ctx, |act, _| -> Self::Result {
            act.driver.summary(act.clock.now())
        })
    }
}

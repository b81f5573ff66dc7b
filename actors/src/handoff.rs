//! Handoff: streams the partitions this node receives, releases the ones it
//! gave away, and finishes joins and leaves.
//!
//! Receives `RingChanged`, its timer and `Summary`. One transfer at a time:
//! - *fetch*: a home partition this node is a pending replica of
//!   (`dynakv::handoff::to_fetch`) is streamed from a current replica that is
//!   up, in checksummed chunks of `handoff.chunk_keys` keys, paced to
//!   `handoff.max_bytes_per_sec`. Progress is persisted in `meta` after each
//!   chunk, so a crash of either side resumes where it stopped;
//! - *commit*: once every such partition is here, membership commits this
//!   node's incoming moves (it owns them now; a joining node becomes up);
//! - *release*: a partition held but no longer replicated
//!   (`to_release`) is pushed to every current replica by an anti-entropy
//!   exchange, then dropped unless written to since (`release_partition`);
//! - *leave*: a leaving node that owns nothing and holds nothing has left.

use std::time::{Duration, Instant};

use actix::prelude::*;
use dynakv::handoff::{
    Fetched, HandoffMsg, Next, Progress, fetch_step, release_step, to_fetch, to_release,
    verify_chunk,
};
use dynakv::partition::Partition;
use dynakv::peer::PeerMsg;
use dynakv::store::Store;
use dynakv::{Error, NodeId};
use tracing::{debug, info, warn};

use crate::anti_entropy::exchange;
use crate::bridge::{Bridge, call};
use crate::coordinator::Summary;
use crate::events::{Event, Events};
use crate::membership::{CommitIncoming, MarkLeft, Membership};
use crate::replica::{AeBegin, DropPartition, HeldPartitions, MergeHandoff, Replica};
use crate::ring::{RingChanged, Topology};
use crate::storage::FjallStore;
use crate::supervise::{mailbox_error, shielded};

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

#[derive(Debug, Clone)]
pub struct HandoffSettings {
    pub me: NodeId,
    pub n: usize,
    pub partitions: u32,
    pub chunk_keys: u32,
    pub max_bytes_per_sec: u64,
    pub interval: Duration,
    pub call_timeout: Duration,
}

/// A merged chunk: the last key in it, its keys and bytes, and whether the
/// partition ended there.
type FetchedChunk = (Option<Vec<u8>>, u64, u64, bool);

/// A transfer under way, for `status`.
#[derive(Debug, Clone)]
struct Transfer {
    partition: Partition,
    from: NodeId,
    keys: u64,
    bytes: u64,
    started: Instant,
}

pub struct Handoff {
    settings: HandoffSettings,
    replica: Addr<Replica>,
    bridge: Addr<Bridge>,
    membership: Addr<Membership>,
    meta: FjallStore,
    events: Events,
    topology: Option<Topology>,
    progress: Progress,
    busy: bool,
    current: Option<Transfer>,
    /// Totals since start: keys and bytes fetched, partitions fetched and
    /// released, and how long fetching took.
    fetched: (u64, u64, u64, Duration),
    released: u64,
}

impl Handoff {
    pub fn new(
        settings: HandoffSettings,
        replica: Addr<Replica>,
        bridge: Addr<Bridge>,
        membership: Addr<Membership>,
        meta: FjallStore,
        events: Events,
    ) -> Self {
        let progress = load_progress(&meta);
        Handoff {
            settings,
            replica,
            bridge,
            membership,
            meta,
            events,
            topology: None,
            progress,
            busy: false,
            current: None,
            fetched: (0, 0, 0, Duration::ZERO),
            released: 0,
        }
    }

    fn save_progress(&self) {
        if let Err(e) = self
            .meta
            .clone()
            .put(PROGRESS_KEY, &self.progress.to_bytes())
        {
            warn!(error = %e, "persisting handoff progress failed");
        }
    }

    /// Does the next thing due: fetch, commit, release, or finish leaving.
    fn step(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        let Some(t) = self.topology.clone() else {
            return;
        };
        if t.view.is_fenced(&self.settings.me) {
            return; // out of the cluster: nothing to send or take
        }
        let Some(ring) = t.ring.clone() else { return };
        let me = self.settings.me.clone();
        let n = self.settings.n;
        let before = self.progress.clone();
        let next = fetch_step(&t.view, &ring, &me, n, &mut self.progress, |s| t.is_up(s));
        if self.progress != before {
            self.save_progress();
        }
        match next {
            Some(Next::Fetch {
                partition,
                from,
                after,
            }) => return self.fetch(partition, from, after, ctx),
            Some(Next::Commit) => {
                info!("every incoming partition fetched; committing");
                return self.membership.do_send(CommitIncoming);
            }
            Some(_) => return debug!("no current replica up to fetch from"),
            None => {}
        }
        // Release what this node no longer replicates, then maybe finish a leave.
        self.busy = true;
        let held = self.replica.send(HeldPartitions);
        ctx.spawn(held.into_actor(self).map(move |held, act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| {
                act.busy = false;
                let Ok(Ok(held)) = held else { return };
                match release_step(&t.view, &ring, &me, n, &held, |r| t.is_up(r)) {
                    Next::Release {
                        partition,
                        replicas,
                    } => act.release(partition, replicas, ctx),
                    Next::Leave => act.membership.do_send(MarkLeft),
                    _ => {}
                }
            })
        }));
    }

    fn fetch(
        &mut self,
        p: Partition,
        from: NodeId,
        after: Option<Vec<u8>>,
        ctx: &mut Context<Self>,
    ) {
        self.busy = true;
        self.current = Some(Transfer {
            partition: p,
            from: from.clone(),
            keys: 0,
            bytes: 0,
            started: Instant::now(),
        });
        let request = HandoffMsg::Fetch {
            partition: p,
            after: after.clone(),
            limit: self.settings.chunk_keys,
        };
        let fetch = call(
            &self.bridge,
            from.clone(),
            PeerMsg::Handoff(request),
            self.settings.call_timeout,
        );
        let replica = self.replica.clone();
        let q = self.settings.partitions;
        let chunk = async move {
            let (entries, checksum, last) = match fetch.await? {
                PeerMsg::Handoff(HandoffMsg::Chunk {
                    entries,
                    checksum,
                    last,
                }) => (entries, checksum, last),
                other => return Err(Error::Malformed(format!("fetch answered with {other:?}"))),
            };
            verify_chunk(&entries, checksum, p, after.as_deref(), q)?;
            let bytes: u64 = entries
                .iter()
                .map(|(k, s)| (k.len() + s.value_bytes()) as u64)
                .sum();
            let keys = entries.len() as u64;
            let upto = entries.last().map(|(k, _)| k.clone());
            replica
                .send(MergeHandoff(entries))
                .await
                .map_err(mailbox_error)??;
            Ok((upto, keys, bytes, last))
        };
        ctx.spawn(chunk.into_actor(self).map(move |outcome, act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| {
                act.fetched_chunk(p, from, outcome, ctx)
            })
        }));
    }

    /// One fetched chunk was merged (or the fetch failed): record progress,
    /// then go on after the pause the byte budget asks for.
    fn fetched_chunk(
        &mut self,
        p: Partition,
        from: NodeId,
        outcome: dynakv::Result<FetchedChunk>,
        ctx: &mut Context<Self>,
    ) {
        self.busy = false;
        match outcome {
            Ok((upto, keys, bytes, last)) => {
                if let Some(t) = self.current.as_mut() {
                    t.keys += keys;
                    t.bytes += bytes;
                }
                self.fetched.0 += keys;
                self.fetched.1 += bytes;
                self.events.metrics().handoff_chunk(keys, bytes);
                let step = Fetched::after_chunk(upto, last);
                let done = step == Fetched::Done;
                self.progress.record(p, step);
                self.save_progress();
                if done && let Some(t) = self.current.take() {
                    self.fetched.2 += 1;
                    self.fetched.3 += t.started.elapsed();
                    self.events.emit(Event::PartitionFetched {
                        node: self.settings.me.clone(),
                        partition: p.0,
                        from: t.from,
                        keys: t.keys,
                    });
                }
                // Pace: a chunk of `bytes` may be followed after
                // bytes / budget seconds.
                let pause =
                    Duration::from_secs_f64(bytes as f64 / self.settings.max_bytes_per_sec as f64);
                ctx.run_later(pause, |act, ctx| {
                    shielded(NAME, act, ctx, |act, ctx| act.step(ctx))
                });
            }
            Err(e) => {
                self.current = None;
                debug!(partition = %p, %from, error = %e, "fetch interrupted; resuming later");
            }
        }
    }

    fn release(&mut self, p: Partition, replicas: Vec<NodeId>, ctx: &mut Context<Self>) {
        self.busy = true;
        let (replica, bridge, timeout) = (
            self.replica.clone(),
            self.bridge.clone(),
            self.settings.call_timeout,
        );
        let sync = async move {
            let mut synced = None;
            for r in replicas {
                let begin = AeBegin {
                    partition: p,
                    push_only: true,
                };
                let report = exchange(replica.clone(), bridge.clone(), begin, r, timeout).await?;
                // A write landing between two exchanges reaches only the
                // later replicas: the root must not move from the first.
                synced.get_or_insert(report.started_from);
            }
            synced.ok_or_else(|| Error::Internal("no replica to synchronise with".into()))
        };
        ctx.spawn(sync.into_actor(self).map(move |synced, act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| {
                act.busy = false;
                let synced = match synced {
                    Ok(root) => root,
                    Err(e) => return debug!(partition = %p, error = %e, "release postponed"),
                };
                // Drop only if the ring still says so.
                let still = act
                    .topology
                    .as_ref()
                    .and_then(|t| t.ring.clone())
                    .is_some_and(|ring| {
                        !to_release(&ring, &act.settings.me, act.settings.n, [p]).is_empty()
                    });
                if !still {
                    return;
                }
                act.busy = true;
                let dropped = act.replica.send(DropPartition {
                    partition: p,
                    synced,
                });
                ctx.spawn(dropped.into_actor(act).map(move |dropped, act, ctx| {
                    shielded(NAME, act, ctx, |act, ctx| {
                        act.busy = false;
                        let keys = match dropped {
                            Ok(Ok(Some(keys))) => keys,
                            Ok(Ok(None)) => {
                                return debug!(partition = %p, "written to since its sync; released later");
                            }
                            _ => return,
                        };
                        act.released += 1;
                        info!(partition = %p, keys, "partition handed off and released");
                        act.events.emit(Event::PartitionReleased {
                            node: act.settings.me.clone(),
                            partition: p.0,
                            keys,
                        });
                        ctx.notify(Step);
                    })
                }));
            })
        }));
    }
}

/// What this node has fetched since it started.
#[derive(Message)]
#[rtype(result = "Totals")]
pub struct FetchTotals;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, MessageResponse)]
pub struct Totals {
    pub keys: u64,
    pub bytes: u64,
    pub partitions: u64,
    pub released: u64,
}

impl crate::supervise::Fallback for Totals {
    fn fallback() -> Self {
        Totals::default()
    }
}

impl Handler<FetchTotals> for Handoff {
    type Result = Totals;

    fn handle(&mut self, _: FetchTotals, ctx: &mut Context<Self>) -> Totals {
        shielded(NAME, self, ctx, |act, _| -> Self::Result {
            Totals {
                keys: act.fetched.0,
                bytes: act.fetched.1,
                partitions: act.fetched.2,
                released: act.released,
            }
        })
    }
}

/// Look for work now.
#[derive(Message)]
#[rtype(result = "()")]
struct Step;

impl Handler<Step> for Handoff {
    type Result = ();

    fn handle(&mut self, _: Step, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, ctx| {
            act.step(ctx);
        })
    }
}

const NAME: &str = "handoff";

/// A restarted Handoff reloads its fetch progress from storage and resumes.
impl Supervised for Handoff {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.busy = false;
        self.current = None;
        self.progress = load_progress(&self.meta);
    }
}

impl Actor for Handoff {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.settings.interval, |act, ctx| {
            shielded(NAME, act, ctx, |act, ctx| act.step(ctx))
        });
    }
}

impl Handler<RingChanged> for Handoff {
    type Result = ();

    fn handle(&mut self, RingChanged(t): RingChanged, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, ctx| {
            let moved = act
                .topology
                .as_ref()
                .is_none_or(|old| old.view.ownership != t.view.ownership);
            act.topology = Some(t);
            if moved {
                act.step(ctx);
            }
        })
    }
}

impl Handler<Summary> for Handoff {
    type Result = Vec<String>;

    fn handle(&mut self, _: Summary, ctx: &mut Context<Self>) -> Self::Result {
        shielded(NAME, self, ctx, |act, _| -> Self::Result {
            let mut lines = Vec::new();
            let ring = act.topology.as_ref().and_then(|t| t.ring.clone());
            let remaining = ring.map_or(0, |r| {
                to_fetch(&r, &act.settings.me, act.settings.n, &act.progress).len()
            });
            if let Some(t) = &act.current {
                let secs = t.started.elapsed().as_secs_f64().max(0.001);
                let per_partition = if act.fetched.2 > 0 {
                    act.fetched.3.as_secs_f64() / act.fetched.2 as f64
                } else {
                    secs
                };
                lines.push(format!(
                "handoff: receiving {} from {}: {} keys, {} bytes, {:.0} keys/s; {remaining} partitions to go, ETA {:.0} s",
                t.partition,
                t.from,
                t.keys,
                t.bytes,
                t.keys as f64 / secs,
                per_partition * remaining as f64
            ));
            } else if remaining > 0 {
                lines.push(format!("handoff: {remaining} partitions to receive"));
            }
            if act.fetched.2 > 0 || act.released > 0 {
                lines.push(format!(
                    "handoff: {} partitions received ({} keys, {} bytes), {} released",
                    act.fetched.2, act.fetched.0, act.fetched.1, act.released
                ));
            }
            lines
        })
    }
}

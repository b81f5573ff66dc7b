//! The nodes' background work, carried out as their actors carry it out:
//! the core's drivers decide (hint delivery, anti-entropy's schedule, the
//! tombstone collector, handoff), and the simulator reads and writes the
//! node's replica at once and sends over the simulated network, feeding
//! each answer back to the driver that asked.

use crate::anti_entropy::{AeMsg, Exchange, ExchangeReport, RootsCheck, roots};
use crate::error::{Error, Result};
use crate::handoff::{HandoffMsg, HandoffWork};
use crate::hints::HintWork;
use crate::node::NodeId;
use crate::partition::Partition;
use crate::placement::Scope;
use crate::store::Store;
use crate::tombstones::{GcMsg, GcWork, delete_writes};

use super::network::Msg;
use super::{CALL_TIMEOUT, Call, Event, PROGRESS_KEY, Purpose, Sim};

impl Sim {
    // ---- hinted handoff ----

    /// As the Hints actor does at each check.
    pub(super) fn deliver_hints(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.nodes[i];
        node.delivery.on_topology(node.membership.topology());
        let pending = node.replica.hints_pending().clone();
        let work = node.delivery.on_tick(&pending, now);
        self.hint_work(i, work);
    }

    /// Carries out what node `i`'s hint delivery asks, as the Hints actor
    /// does: replica reads and clears at once, sends over the network.
    pub(super) fn hint_work(&mut self, i: usize, work: Vec<HintWork>) {
        for w in work {
            let next = match w {
                HintWork::Take { owner, limit } => {
                    let batch = self.nodes[i].replica.hinted(&owner, limit);
                    self.nodes[i].delivery.on_batch(&owner, batch)
                }
                HintWork::Send { owner, entries, .. } => {
                    let Some(to) = self.index(&owner) else {
                        continue;
                    };
                    let id = self.call(i, Call::Hints { owner }, CALL_TIMEOUT);
                    self.send(i, to, Msg::HintDeliver { id, entries });
                    continue;
                }
                HintWork::Clear { owner, delivered } => {
                    let node = &mut self.nodes[i];
                    let cleared = node.replica.handed_off(&owner, &delivered);
                    if let Ok(n @ 1..) = cleared {
                        self.note(|| format!("n{i}: {n} hints for {owner} delivered"));
                    }
                    let now = self.now;
                    self.nodes[i].delivery.on_cleared(&owner, cleared, now)
                }
                HintWork::Resume { owner, at } => {
                    let life = self.nodes[i].life;
                    self.schedule(
                        at,
                        Event::HintResume {
                            node: i,
                            life,
                            owner,
                        },
                    );
                    continue;
                }
                HintWork::ForgetMoot {
                    owner,
                    limit,
                    partitions,
                    replicates,
                } => {
                    let node = &mut self.nodes[i];
                    if let Ok(n @ 1..) =
                        node.replica
                            .forget_moot_hints(&owner, limit, partitions, &replicates)
                    {
                        self.note(|| format!("n{i}: {n} hints for departed {owner} cleared"));
                    }
                    continue;
                }
                HintWork::Ended { .. } => continue,
            };
            self.hint_work(i, next);
        }
    }

    // ---- anti-entropy ----

    /// As the AntiEntropy actor does: roots comparisons with co-replicas
    /// that came up, then the next exchange its `Schedule` allows.
    pub(super) fn start_exchange(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let t = node.membership.topology();
        let checks = node.schedule.on_topology(&t);
        for RootsCheck {
            peer,
            scope,
            partitions,
        } in checks
        {
            let Some(to) = self.index(&peer) else {
                continue;
            };
            // As the actor does: a comparison the trees cannot make yet
            // (still being built after a start) is tried again later.
            let Ok(msg) = roots(&self.nodes[i].replica, &scope, &partitions) else {
                self.nodes[i].schedule.on_roots_failed(&peer);
                continue;
            };
            let id = self.call(i, Call::Roots { peer }, CALL_TIMEOUT);
            self.send(i, to, Msg::Ae { id, msg });
        }
        let now = self.now;
        let rng = &mut self.rng;
        let pick = |count| rng.below(count as u64) as usize;
        let next = self.nodes[i].schedule.next(&t, now, pick);
        if let Some(due) = next {
            self.begin_exchange(i, due.partition, due.scope, due.peer, Purpose::Repair);
        }
    }

    /// Starts an exchange of `scope` in `p` with `peer` (push-only to sync
    /// a release).
    fn begin_exchange(
        &mut self,
        i: usize,
        p: Partition,
        scope: Scope,
        peer: NodeId,
        purpose: Purpose,
    ) {
        let Some(to) = self.index(&peer) else {
            return self.exchange_ended(i, purpose, p, peer, Err(Error::Timeout));
        };
        let push_only = purpose == Purpose::Sync;
        let tree = match self.nodes[i].replica.tree_in(p, &scope) {
            Ok(tree) => tree,
            Err(e) => return self.exchange_ended(i, purpose, p, peer, Err(e)),
        };
        let (ex, msg) = Exchange::begin(p, scope, tree, push_only);
        let id = self.call(i, Call::Exchange { ex, purpose, peer }, CALL_TIMEOUT);
        self.send(i, to, Msg::Ae { id, msg });
    }

    /// A peer's answer to an exchange message or a roots comparison.
    pub(super) fn on_ae_reply(&mut self, i: usize, from: usize, id: u64, reply: Result<AeMsg>) {
        let now = self.now;
        let node = &mut self.nodes[i];
        match node.calls.remove(&id) {
            Some(Call::Roots { peer }) => match reply {
                Ok(AeMsg::RootsDiffer { partitions }) => {
                    node.schedule.on_roots(&peer, &partitions, 0, now);
                    if !partitions.is_empty() {
                        let line =
                            format!("n{i}: {} partitions differ from {peer}", partitions.len());
                        self.note(|| line);
                    }
                }
                _ => node.schedule.on_roots_failed(&peer),
            },
            Some(Call::Exchange {
                mut ex,
                purpose,
                peer,
            }) => {
                let stepped = reply.and_then(|r| ex.on_reply(r, &mut node.replica));
                match stepped {
                    Ok(Some(next)) => {
                        node.calls.insert(id, Call::Exchange { ex, purpose, peer });
                        self.send(i, from, Msg::Ae { id, msg: next });
                    }
                    Ok(None) => {
                        let report = ex.report().clone();
                        self.exchange_ended(i, purpose, ex.partition(), peer, Ok(report));
                    }
                    Err(e) => self.exchange_ended(i, purpose, ex.partition(), peer, Err(e)),
                }
            }
            Some(other) => {
                node.calls.insert(id, other);
            }
            None => {}
        }
    }

    /// An exchange ended: its report goes to anti-entropy's schedule, or to
    /// the handoff driver whose release it synchronised.
    fn exchange_ended(
        &mut self,
        i: usize,
        purpose: Purpose,
        p: Partition,
        peer: NodeId,
        outcome: Result<ExchangeReport>,
    ) {
        let now = self.now;
        if let Ok(r) = &outcome
            && r.pulled + r.pushed > 0
        {
            let line = format!(
                "n{i}: exchange of {p} with {peer}: pulled {}, pushed {}",
                r.pulled, r.pushed
            );
            self.note(|| line);
        }
        let node = &mut self.nodes[i];
        match purpose {
            Purpose::Repair => match outcome {
                Ok(report) => {
                    node.schedule.on_done(p, &peer, &report, now);
                }
                Err(_) => node.schedule.on_failed(0, now),
            },
            Purpose::Sync => {
                let work = node.handoff.on_synced(outcome);
                self.handoff_work(i, work);
            }
        }
    }

    // ---- tombstone collection ----

    /// As the AntiEntropy actor does every `gc_interval`.
    pub(super) fn start_gc(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let work = node.collector.on_tick(&node.membership.topology());
        self.gc_work(i, work);
    }

    fn gc_work(&mut self, i: usize, work: Vec<GcWork>) {
        for w in work {
            match w {
                GcWork::Find {
                    partition,
                    limit,
                    current,
                } => {
                    let node = &mut self.nodes[i];
                    let found = node
                        .replica
                        .to_collect(partition, limit, self.now, &current);
                    let next = node.collector.on_found(found);
                    self.gc_work(i, next);
                }
                GcWork::Ask {
                    to,
                    msg,
                    timeout_ms,
                } => {
                    let Some(node) = self.index(&to) else {
                        continue;
                    };
                    let id = self.call(i, Call::Gc { to }, timeout_ms);
                    self.send(i, node, Msg::Gc { id, msg });
                }
                GcWork::Ended { keys, folded } => {
                    if let Some(keys @ 1..) = keys {
                        self.note(|| format!("n{i}: collected {keys} tombstones"));
                    }
                    if folded > 0 {
                        self.folded += folded;
                        self.note(|| format!("n{i}: folded {folded} counters"));
                    }
                }
                // As the AntiEntropy actor does. The simulator's operator
                // drops no namespace, so this finds nothing: a workload that
                // drops one must enter these deletes in the history.
                GcWork::DeleteDropped { partitions, limit } => {
                    let me = self.nodes[i].id.clone();
                    let node = &mut self.nodes[i];
                    let Ok(deleted) = node.replica.delete_dropped(&partitions, limit, self.now)
                    else {
                        continue;
                    };
                    let t = node.membership.topology();
                    let Some(place) = t.placement(&me, self.cfg.n) else {
                        continue;
                    };
                    for (peer, msg) in delete_writes(&place, &me, deleted) {
                        if let Some(to) = self.index(&peer) {
                            let replica = Msg::Replica {
                                session: 0,
                                serves: None,
                                msg,
                            };
                            self.send(i, to, replica);
                        }
                    }
                }
            }
        }
    }

    /// A member's answer to a probe or collect.
    pub(super) fn on_gc_reply(&mut self, i: usize, id: u64, msg: GcMsg) {
        let now = self.now;
        let node = &mut self.nodes[i];
        if let Some(Call::Gc { to }) = node.calls.remove(&id) {
            let work = node.collector.on_answer(&to, Ok(msg), now);
            self.gc_work(i, work);
        }
    }

    // ---- handoff ----

    /// As the Handoff actor does at its tick and when the ring changes.
    pub(super) fn handoff_tick(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.nodes[i];
        let mut work = node.handoff.on_topology(node.membership.topology(), now);
        work.extend(node.handoff.on_tick(now));
        self.handoff_work(i, work);
    }

    fn handoff_work(&mut self, i: usize, work: Vec<HandoffWork>) {
        let now = self.now;
        for w in work {
            let next = match w {
                HandoffWork::Fetch {
                    from,
                    request,
                    timeout_ms,
                } => {
                    let Some(to) = self.index(&from) else {
                        continue;
                    };
                    let id = self.call(i, Call::Fetch, timeout_ms);
                    self.send(i, to, Msg::Handoff { id, msg: request });
                    continue;
                }
                HandoffWork::Merge { entries } => {
                    let node = &mut self.nodes[i];
                    let merged = entries.iter().try_for_each(|(key, state)| {
                        node.replica.merge(key, state, None).map(|_| ())
                    });
                    node.handoff.on_merged(merged, now)
                }
                HandoffWork::SaveProgress(progress) => {
                    let node = &mut self.nodes[i];
                    if let Err(e) = node.disks.meta.put(PROGRESS_KEY, &progress.to_bytes()) {
                        panic!("the simulated disk failed: {e}");
                    }
                    continue;
                }
                HandoffWork::Commit => {
                    let node = &mut self.nodes[i];
                    let changed = node.membership.commit_incoming();
                    node.keep_view(changed);
                    if changed.view {
                        self.note(|| format!("n{i}: incoming partitions committed"));
                    }
                    continue;
                }
                HandoffWork::Held { partitions } => {
                    let node = &mut self.nodes[i];
                    let held = node.replica.held(partitions);
                    node.handoff.on_held(held)
                }
                HandoffWork::Sync {
                    partition,
                    scope,
                    with,
                } => {
                    self.begin_exchange(i, partition, scope, with, Purpose::Sync);
                    continue;
                }
                HandoffWork::Drop {
                    partitions,
                    partition,
                    scope,
                    synced,
                } => {
                    let node = &mut self.nodes[i];
                    let dropped = node.replica.release(partitions, partition, &scope, &synced);
                    if let Ok(None) = dropped {
                        self.note(|| format!("n{i}: {partition} written to since its sync"));
                    }
                    self.nodes[i].handoff.on_dropped(dropped, now)
                }
                HandoffWork::Leave => {
                    let node = &mut self.nodes[i];
                    let changed = node.membership.mark_left();
                    node.keep_view(changed);
                    if changed.view {
                        // As `serve` does: a node that has left stops.
                        self.note(|| format!("n{i} has left; it stops"));
                        self.stop(i);
                        self.nodes[i].retired = true;
                        return;
                    }
                    continue;
                }
                HandoffWork::Wake { at } => {
                    let life = self.nodes[i].life;
                    self.schedule(at, Event::HandoffWake { node: i, life });
                    continue;
                }
                HandoffWork::Chunk { .. } => continue,
                HandoffWork::Fetched { partition, .. } => {
                    self.fetched += 1;
                    self.note(|| format!("n{i}: fetched {partition}"));
                    continue;
                }
                HandoffWork::Released { partition, keys } => {
                    self.released += 1;
                    self.note(|| format!("n{i}: released {partition} ({keys} keys)"));
                    continue;
                }
            };
            self.handoff_work(i, next);
        }
    }

    /// A source's answer to a fetch.
    pub(super) fn on_chunk(&mut self, i: usize, id: u64, reply: Result<HandoffMsg>) {
        let node = &mut self.nodes[i];
        if let Some(Call::Fetch) = node.calls.remove(&id) {
            let work = node.handoff.on_chunk(reply);
            self.handoff_work(i, work);
        }
    }

    // ---- every call ----

    /// A call ended without its answer: its driver hears it failed.
    pub(super) fn on_call_timeout(&mut self, i: usize, id: u64) {
        let now = self.now;
        let Some(call) = self.nodes[i].calls.remove(&id) else {
            return;
        };
        let node = &mut self.nodes[i];
        match call {
            Call::Hints { owner } => {
                let work = node.delivery.on_sent(&owner, Err(Error::Timeout));
                self.hint_work(i, work);
            }
            Call::Exchange { ex, purpose, peer } => {
                self.exchange_ended(i, purpose, ex.partition(), peer, Err(Error::Timeout));
            }
            Call::Roots { peer } => node.schedule.on_roots_failed(&peer),
            Call::Gc { to } => {
                let work = node.collector.on_answer(&to, Err(Error::Timeout), now);
                self.gc_work(i, work);
            }
            Call::Fetch => {
                let work = node.handoff.on_chunk(Err(Error::Timeout));
                self.handoff_work(i, work);
            }
        }
    }
}

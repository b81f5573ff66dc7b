//! Hint delivery: hands the writes this node keeps for an owner back to it
//! once the owner is up. One driver per node, run alike by the Hints actor
//! and by the simulator.
//!
//! Per owner, one delivery run at a time: take a batch of hinted keys with
//! their current state, send it, and once the owner acknowledged merging
//! it durably, clear those hints (this node's own copy stays: a copy of a
//! key it does not replicate goes when handoff releases its partition,
//! once every replica has it), pause, and take the next batch, until none are
//! left or a batch clears nothing (every key changed while in flight: the
//! next check retries). A failed step ends the run; the next check starts
//! a new one. The hints of an owner that departed are cleared where there is
//! nothing left to hand over (`super::moot`).
//!
//! Time is an input (`now`, ms). The driver returns `HintWork` for the
//! shell to carry out and takes the answers back with the owner they are
//! for: `on_batch` after `Take`, `on_sent` after `Send`, `on_cleared` after
//! `Clear`, `on_resume` at a `Resume`'s time.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::node::NodeId;
use crate::partition::Partition;
use crate::placement::Placement;
use crate::store::Entry;
use crate::topology::Topology;

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub me: NodeId,
    /// Replicas per key.
    pub n: usize,
    /// Hand hints over at all (`hints.deliver`).
    pub enabled: bool,
    /// Keys per batch.
    pub batch_size: usize,
    /// Pause between two batches to one owner, in ms.
    pub pause_ms: u64,
    /// How long an owner may take to merge one batch, in ms.
    pub send_timeout_ms: u64,
}

/// What the shell does for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HintWork {
    /// Read up to `limit` keys hinted for `owner`, with their current state
    /// (`Replica::hinted`); answer with `on_batch`.
    Take { owner: NodeId, limit: usize },
    /// Send `entries` to `owner` (`HintMsg::Deliver`), waiting at most
    /// `timeout_ms`; answer with `on_sent`.
    Send {
        owner: NodeId,
        entries: Vec<Entry>,
        timeout_ms: u64,
    },
    /// `owner` merged `delivered`: clear their hints
    /// (`Replica::handed_off`); answer with `on_cleared`.
    Clear {
        owner: NodeId,
        delivered: Vec<Entry>,
    },
    /// Call `on_resume(owner)` at `at` (ms).
    Resume { owner: NodeId, at: u64 },
    /// `owner` departed: clear up to `limit` of its hints with nothing left
    /// to hand over, given the partitions (of `partitions`) this node
    /// `replicates` (`Replica::forget_moot_hints`). Nothing to answer.
    ForgetMoot {
        owner: NodeId,
        limit: usize,
        partitions: u32,
        replicates: Vec<Partition>,
    },
    /// A run to `owner` ended, having handed it `keys` keys (None: it failed
    /// and is retried at the next check).
    Ended { owner: NodeId, keys: Option<usize> },
}

/// Where one run to one owner stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    Taking,
    Sending(Vec<Entry>),
    Clearing,
    Pausing,
}

#[derive(Debug, Clone)]
struct Run {
    stage: Stage,
    /// Keys handed over so far in this run.
    delivered: usize,
}

#[derive(Debug, Clone)]
pub struct HintDelivery {
    settings: DeliverySettings,
    topology: Option<Topology>,
    runs: BTreeMap<NodeId, Run>,
    /// Per owner with hints here, since when (ms) it has had some without
    /// a break, as the checks saw it: a bound on its oldest hint's age.
    waiting_since: BTreeMap<NodeId, u64>,
}

impl HintDelivery {
    pub fn new(settings: DeliverySettings) -> Self {
        HintDelivery {
            settings,
            topology: None,
            runs: BTreeMap::new(),
            waiting_since: BTreeMap::new(),
        }
    }

    /// Per owner with hints here, how long (ms, at `now`) it has had some
    /// without a break since this node started: at least its oldest
    /// hint's age, as of the last check.
    pub fn waiting(&self, now: u64) -> Vec<(NodeId, u64)> {
        self.waiting_since
            .iter()
            .map(|(owner, since)| (owner.clone(), now.saturating_sub(*since)))
            .collect()
    }

    /// For `status`: each owner with hints here, and for how long, at `now`.
    pub fn summary(&self, now: u64) -> Vec<String> {
        self.waiting(now)
            .into_iter()
            .map(|(owner, ms)| {
                format!(
                    "hints: holding some for {owner} for {:.0} s without a break",
                    ms as f64 / 1000.0
                )
            })
            .collect()
    }

    /// The view, ring or liveness changed. Returns whether an owner came
    /// up: worth a check at once rather than at the next tick.
    pub fn on_topology(&mut self, t: Topology) -> bool {
        let newly_up = self
            .topology
            .as_ref()
            .is_some_and(|old| t.health.keys().any(|n| t.is_up(n) && !old.is_up(n)));
        self.topology = Some(t);
        newly_up
    }

    /// A check at `now`, given the hints held per owner (`pending`): a run
    /// starts to every owner that is up and has none under way; the hints
    /// of a departed owner are cleared where moot. Nothing while delivery
    /// is off or this node is out of the cluster.
    pub fn on_tick(&mut self, pending: &BTreeMap<NodeId, u64>, now: u64) -> Vec<HintWork> {
        self.waiting_since
            .retain(|owner, _| pending.get(owner).is_some_and(|&n| n > 0));
        for (owner, _) in pending.iter().filter(|(_, n)| **n > 0) {
            self.waiting_since.entry(owner.clone()).or_insert(now);
        }
        let me = &self.settings.me;
        let Some(t) = &self.topology else {
            return Vec::new();
        };
        let Some(ring) = t.active_ring(me).filter(|_| self.settings.enabled) else {
            return Vec::new();
        };
        let mut work = Vec::new();
        for (owner, _) in pending.iter().filter(|(_, n)| **n > 0) {
            if t.view.has_departed(owner) {
                // Its partitions have new replicas, and this node's copies
                // reach them when it releases them (handoff).
                work.push(HintWork::ForgetMoot {
                    owner: owner.clone(),
                    limit: self.settings.batch_size,
                    partitions: ring.partition_count(),
                    // Every partition it holds anything of: a copy kept
                    // beyond its namespace's `n` is released by handoff.
                    replicates: ring.replicated_by(
                        me,
                        Placement::new(ring, &t.view.namespaces, self.settings.n).extent(),
                    ),
                });
            } else if t.is_up(owner) && !self.runs.contains_key(owner) {
                self.runs.insert(
                    owner.clone(),
                    Run {
                        stage: Stage::Taking,
                        delivered: 0,
                    },
                );
                work.push(self.take(owner));
            }
        }
        work
    }

    /// The batch `Take` read for `owner`.
    pub fn on_batch(&mut self, owner: &NodeId, batch: Result<Vec<Entry>>) -> Vec<HintWork> {
        let Some(run) = self
            .runs
            .get_mut(owner)
            .filter(|r| r.stage == Stage::Taking)
        else {
            return Vec::new();
        };
        match batch {
            Ok(batch) if batch.is_empty() => vec![self.end(owner, true)],
            Ok(batch) => {
                run.stage = Stage::Sending(batch.clone());
                vec![HintWork::Send {
                    owner: owner.clone(),
                    entries: batch,
                    timeout_ms: self.settings.send_timeout_ms,
                }]
            }
            Err(_) => vec![self.end(owner, false)],
        }
    }

    /// `owner` answered a `Send` (Ok: it merged the batch durably).
    pub fn on_sent(&mut self, owner: &NodeId, sent: Result<()>) -> Vec<HintWork> {
        let Some(run) = self.runs.get_mut(owner) else {
            return Vec::new();
        };
        let Stage::Sending(batch) = std::mem::replace(&mut run.stage, Stage::Clearing) else {
            return Vec::new();
        };
        if sent.is_err() {
            return vec![self.end(owner, false)];
        }
        vec![HintWork::Clear {
            owner: owner.clone(),
            delivered: batch,
        }]
    }

    /// A `Clear` cleared `cleared` hints at `now`: pause, then go on; a
    /// batch that cleared nothing (every key changed while in flight) ends
    /// the run, and the next check retries.
    pub fn on_cleared(
        &mut self,
        owner: &NodeId,
        cleared: Result<usize>,
        now: u64,
    ) -> Vec<HintWork> {
        let Some(run) = self
            .runs
            .get_mut(owner)
            .filter(|r| r.stage == Stage::Clearing)
        else {
            return Vec::new();
        };
        match cleared {
            Ok(0) => vec![self.end(owner, true)],
            Ok(n) => {
                run.delivered += n;
                run.stage = Stage::Pausing;
                vec![HintWork::Resume {
                    owner: owner.clone(),
                    at: now + self.settings.pause_ms,
                }]
            }
            Err(_) => vec![self.end(owner, false)],
        }
    }

    /// A `Resume`'s time came.
    pub fn on_resume(&mut self, owner: &NodeId) -> Vec<HintWork> {
        match self.runs.get_mut(owner) {
            Some(run) if run.stage == Stage::Pausing => {
                run.stage = Stage::Taking;
                vec![self.take(owner)]
            }
            _ => Vec::new(),
        }
    }

    /// Forgets every run under way (the shell lost them: a restart).
    pub fn reset(&mut self) {
        self.runs.clear();
    }

    pub fn me(&self) -> &NodeId {
        &self.settings.me
    }

    /// Owners a run is under way to.
    pub fn delivering(&self) -> impl Iterator<Item = &NodeId> {
        self.runs.keys()
    }

    fn take(&self, owner: &NodeId) -> HintWork {
        HintWork::Take {
            owner: owner.clone(),
            limit: self.settings.batch_size,
        }
    }

    fn end(&mut self, owner: &NodeId, completed: bool) -> HintWork {
        let run = self.runs.remove(owner);
        HintWork::Ended {
            owner: owner.clone(),
            keys: completed.then(|| run.map_or(0, |r| r.delivered)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::testing::{self, id};
    use crate::version::{Actor, Context, SiblingSet, Value};

    fn topology(nodes: &[&str], down: &[&str], departed: &[&str]) -> Topology {
        testing::topology(nodes, down, departed, 16)
    }

    fn driver() -> HintDelivery {
        HintDelivery::new(DeliverySettings {
            me: id("a"),
            n: 3,
            enabled: true,
            batch_size: 2,
            pause_ms: 10,
            send_timeout_ms: 500,
        })
    }

    fn entry(k: &str) -> Entry {
        let state = SiblingSet::new()
            .update(&Context::default(), Value::Data(b"v".to_vec()), Actor(1))
            .unwrap();
        (k.as_bytes().to_vec(), state)
    }

    fn pending(owners: &[(&str, u64)]) -> BTreeMap<NodeId, u64> {
        owners.iter().map(|(o, n)| (id(o), *n)).collect()
    }

    #[test]
    fn a_run_takes_sends_clears_pauses_and_ends_when_nothing_is_left() {
        let mut d = driver();
        d.on_topology(topology(&["a", "b", "c"], &[], &[]));
        let b = id("b");
        let work = d.on_tick(&pending(&[("b", 3)]), 0);
        assert_eq!(
            work,
            vec![HintWork::Take {
                owner: b.clone(),
                limit: 2
            }]
        );
        assert!(
            d.on_tick(&pending(&[("b", 3)]), 0).is_empty(),
            "one run per owner"
        );

        let batch = vec![entry("k1"), entry("k2")];
        let work = d.on_batch(&b, Ok(batch.clone()));
        assert_eq!(
            work,
            vec![HintWork::Send {
                owner: b.clone(),
                entries: batch.clone(),
                timeout_ms: 500
            }]
        );
        // Nothing is cleared before the owner acknowledged.
        let work = d.on_sent(&b, Ok(()));
        let [HintWork::Clear { delivered, .. }] = &work[..] else {
            panic!("{work:?}");
        };
        assert_eq!(delivered, &batch);
        let work = d.on_cleared(&b, Ok(2), 1_000);
        assert_eq!(
            work,
            vec![HintWork::Resume {
                owner: b.clone(),
                at: 1_010
            }]
        );
        assert_eq!(
            d.on_resume(&b),
            vec![HintWork::Take {
                owner: b.clone(),
                limit: 2
            }]
        );
        let work = d.on_batch(&b, Ok(Vec::new()));
        assert_eq!(
            work,
            vec![HintWork::Ended {
                owner: b.clone(),
                keys: Some(2)
            }]
        );
        assert_eq!(d.delivering().count(), 0);
    }

    #[test]
    fn a_failed_send_clears_nothing_and_the_next_check_retries() {
        let mut d = driver();
        d.on_topology(topology(&["a", "b", "c"], &[], &[]));
        let b = id("b");
        d.on_tick(&pending(&[("b", 1)]), 0);
        d.on_batch(&b, Ok(vec![entry("k")]));
        let work = d.on_sent(&b, Err(crate::Error::Timeout));
        assert_eq!(
            work,
            vec![HintWork::Ended {
                owner: b.clone(),
                keys: None
            }]
        );
        assert!(!work.iter().any(|w| matches!(w, HintWork::Clear { .. })));
        assert_eq!(d.on_tick(&pending(&[("b", 1)]), 0).len(), 1);
    }

    #[test]
    fn down_owners_wait_departed_ones_are_forgotten_and_off_means_off() {
        let mut d = driver();
        d.on_topology(topology(&["a", "b", "c", "d"], &["b"], &["d"]));
        let work = d.on_tick(&pending(&[("b", 1), ("d", 4)]), 0);
        assert_eq!(work.len(), 1);
        assert!(matches!(&work[0], HintWork::ForgetMoot { owner, .. } if *owner == id("d")));
        // b comes up: worth a check at once.
        assert!(d.on_topology(topology(&["a", "b", "c", "d"], &[], &["d"])));

        let mut off = HintDelivery::new(DeliverySettings {
            enabled: false,
            ..d.settings.clone()
        });
        off.on_topology(topology(&["a", "b", "c"], &[], &[]));
        assert!(off.on_tick(&pending(&[("b", 1)]), 0).is_empty());
        let mut out = driver();
        out.on_topology(topology(&["a", "b", "c"], &[], &["a"]));
        assert!(
            out.on_tick(&pending(&[("b", 1)]), 0).is_empty(),
            "a node that is out delivers nothing"
        );
    }

    #[test]
    fn a_batch_that_clears_nothing_ends_the_run() {
        let mut d = driver();
        d.on_topology(topology(&["a", "b", "c"], &[], &[]));
        let b = id("b");
        d.on_tick(&pending(&[("b", 1)]), 0);
        d.on_batch(&b, Ok(vec![entry("k")]));
        d.on_sent(&b, Ok(()));
        let work = d.on_cleared(&b, Ok(0), 5);
        assert_eq!(
            work,
            vec![HintWork::Ended {
                owner: b,
                keys: Some(0)
            }]
        );
    }

    #[test]
    fn an_owner_waits_from_the_first_check_that_saw_its_hints_until_none_are_left() {
        let mut d = driver();
        d.on_tick(&pending(&[("b", 3)]), 1_000);
        d.on_tick(&pending(&[("b", 1), ("c", 2)]), 2_000);
        assert_eq!(d.waiting(5_000), [(id("b"), 4_000), (id("c"), 3_000)]);
        d.on_tick(&pending(&[("b", 0), ("c", 2)]), 3_000);
        assert_eq!(d.waiting(5_000), [(id("c"), 3_000)]);
        d.on_tick(&pending(&[("b", 2), ("c", 2)]), 4_000);
        assert_eq!(d.waiting(5_000), [(id("b"), 1_000), (id("c"), 3_000)]);
        assert_eq!(
            d.summary(5_000)[0],
            "hints: holding some for b for 1 s without a break"
        );
    }
}

//! The collector: one tombstone collection round after another, run alike
//! by the AntiEntropy actor and by the simulator.
//!
//! A round goes through the partitions this node leads (`led_partitions`),
//! one at a time: find a batch of tombstone-only keys, probe every live
//! member about them (this node too), and once every member answered,
//! collect the keys every answer allows and that waited out the grace
//! period (`Ripening`) on the members holding them. Any probe that fails or
//! does not fit postpones the rest of the round to the next tick: time
//! alone never collects anything.
//!
//! A batch may also hold counters to fold (`crate::crdt::Counter::fold`):
//! they are probed and ripen like tombstones, with `ProbeAs`, whose answers
//! also name the writer each member writes as, and once ripe are folded on
//! the members holding them, keeping the entries of those writers.
//!
//! Time is an input (`now`, ms). The driver returns `GcWork` for the shell
//! to carry out; `on_found` answers `Find`, `on_answer` answers `Ask`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::error::Result;
use crate::namespace::Table;
use crate::node::NodeId;
use crate::partition::Partition;
use crate::placement::Placement;
use crate::ring::Ring;
use crate::store::Entry;
use crate::topology::Topology;
use crate::version::Actor;

use super::{GcMsg, Holding, Ripening, led_partitions};

#[derive(Debug, Clone)]
pub struct CollectorSettings {
    pub me: NodeId,
    /// Replicas per key of the namespace `default` (others have their own).
    pub n: usize,
    /// Tombstones probed per partition and round.
    pub batch: usize,
    /// How long every member must keep allowing a tombstone, in ms.
    pub grace_ms: u64,
    /// How long a member may take to answer, in ms.
    pub ask_timeout_ms: u64,
}

fn ask(to: &NodeId, msg: GcMsg, timeout_ms: u64) -> GcWork {
    GcWork::Ask {
        to: to.clone(),
        msg,
        timeout_ms,
    }
}

/// What the shell does for the collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcWork {
    /// Read up to `limit` tombstone-only keys of `partition`, and counters
    /// naming writers other than `current` (`Replica::to_collect`); answer
    /// with `on_found`.
    Find {
        partition: Partition,
        limit: usize,
        current: BTreeSet<Actor>,
    },
    /// Ask member `to` (this node too: its own replica) `msg`, a probe or a
    /// collect, waiting at most `timeout_ms`; answer with `on_answer`.
    Ask {
        to: NodeId,
        msg: GcMsg,
        timeout_ms: u64,
    },
    /// A round ended: `keys` tombstones collected and `folded` counters
    /// folded on this node (`keys` None: a member failed to answer, and the
    /// rest waits for the next round).
    Ended { keys: Option<usize>, folded: usize },
    /// Tombstone up to `limit` keys of dropped namespaces in `partitions`
    /// (`Replica::delete_dropped`) and write the tombstones to the keys'
    /// other replicas (`delete_writes`); collection then removes them.
    /// Nothing to answer.
    DeleteDropped {
        partitions: Vec<Partition>,
        limit: usize,
    },
}

#[derive(Debug, Clone)]
enum Stage {
    Finding,
    Probing {
        found: Vec<Entry>,
        answers: Vec<(NodeId, Vec<Holding>)>,
        /// The writer each member named (`HeldAs`), if asked.
        writers: BTreeMap<NodeId, Actor>,
        waiting: BTreeSet<NodeId>,
    },
    /// Collects and folds sent, one entry per message.
    Collecting {
        waiting: Vec<NodeId>,
    },
}

#[derive(Debug, Clone)]
struct Round {
    ring: Arc<Ring>,
    /// The namespaces as the round began: each key's replicas are the
    /// first `n` of its namespace.
    namespaces: Table,
    /// Every live member, as the round began.
    members: Vec<NodeId>,
    partitions: VecDeque<Partition>,
    stage: Stage,
    collected: usize,
    folded: usize,
    backlog: Backlog,
}

/// What a whole round found and could not collect yet, for `status` and
/// the metrics: tombstones wait for members (an answer that does not
/// allow them) or for the grace period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Tombstones found (at most a batch per partition) and not collected.
    pub awaiting: usize,
    /// Per member, how many of those its answer held back.
    pub held_back: BTreeMap<NodeId, usize>,
}

#[derive(Debug, Clone)]
pub struct Collector {
    settings: CollectorSettings,
    ripening: Ripening,
    round: Option<Round>,
    /// The last round that went through every partition.
    last: Option<Backlog>,
    /// The writers the members named at the last probe that asked: a
    /// counter naming another is looked for (a fold decides only on the
    /// answers of its own probes).
    writers: BTreeSet<Actor>,
}

impl Collector {
    pub fn new(settings: CollectorSettings) -> Self {
        Collector {
            settings,
            ripening: Ripening::default(),
            round: None,
            last: None,
            writers: BTreeSet::new(),
        }
    }

    /// What the last complete round left waiting (None before one ended).
    pub fn backlog(&self) -> Option<&Backlog> {
        self.last.as_ref()
    }

    /// For `status`: the tombstones the last round left, and who holds
    /// them back (nothing when none wait).
    pub fn summary(&self) -> Vec<String> {
        let Some(backlog) = self.last.as_ref().filter(|b| b.awaiting > 0) else {
            return Vec::new();
        };
        let held: Vec<String> = backlog
            .held_back
            .iter()
            .map(|(member, keys)| format!("{member} ({keys})"))
            .collect();
        let by = if held.is_empty() {
            "all waiting out the grace period".to_string()
        } else {
            format!("held back by {}", held.join(", "))
        };
        vec![format!(
            "tombstones: {} awaiting collection at the last round, {by}",
            backlog.awaiting
        )]
    }

    /// Starts a round over the partitions this node leads, unless one is
    /// under way (or this node is out of the cluster); first, while the
    /// cluster has dropped namespaces, a batch of their keys there is
    /// deleted.
    pub fn on_tick(&mut self, t: &Topology) -> Vec<GcWork> {
        if self.round.is_some() {
            return Vec::new();
        }
        let Some(ring) = t.active_ring(&self.settings.me) else {
            return Vec::new();
        };
        let members = t
            .view
            .members
            .values()
            .filter(|m| m.status.is_live())
            .map(|m| m.id.clone())
            .collect();
        let led = led_partitions(ring, &self.settings.me);
        let mut work = Vec::new();
        if t.view.namespaces.dropped().next().is_some() && !led.is_empty() {
            work.push(GcWork::DeleteDropped {
                partitions: led.clone(),
                limit: self.settings.batch,
            });
        }
        let partitions = led.into();
        self.round = Some(Round {
            ring: ring.clone(),
            namespaces: t.view.namespaces.clone(),
            members,
            partitions,
            stage: Stage::Collecting {
                waiting: Vec::new(),
            },
            collected: 0,
            folded: 0,
            backlog: Backlog::default(),
        });
        work.extend(self.next_partition());
        work
    }

    /// The tombstones `Find` read.
    pub fn on_found(&mut self, found: Result<Vec<Entry>>) -> Vec<GcWork> {
        let timeout = self.settings.ask_timeout_ms;
        let Some(round) = &mut self.round else {
            return Vec::new();
        };
        let Stage::Finding = round.stage else {
            return Vec::new();
        };
        match found {
            Err(_) => self.abort(),
            Ok(found) if found.is_empty() => self.next_partition(),
            Ok(found) => {
                let folds = found.iter().any(|(_, state)| is_fold(state));
                let maps = found
                    .iter()
                    .any(|(_, state)| is_fold(state) && state.counter().is_none());
                let work = round
                    .members
                    .iter()
                    .map(|m| {
                        let entries = found.clone();
                        let probe = match (folds, maps) {
                            (_, true) => GcMsg::ProbeFolds { entries },
                            (true, false) => GcMsg::ProbeAs { entries },
                            (false, false) => GcMsg::Probe { entries },
                        };
                        ask(m, probe, timeout)
                    })
                    .collect();
                round.stage = Stage::Probing {
                    found,
                    answers: Vec::new(),
                    writers: BTreeMap::new(),
                    waiting: round.members.iter().cloned().collect(),
                };
                work
            }
        }
    }

    /// Member `from` answered an `Ask` (or failed to) at `now`.
    pub fn on_answer(&mut self, from: &NodeId, answer: Result<GcMsg>, now: u64) -> Vec<GcWork> {
        let Some(round) = &mut self.round else {
            return Vec::new();
        };
        match &mut round.stage {
            Stage::Probing {
                found,
                answers,
                writers,
                waiting,
            } => {
                if !waiting.remove(from) {
                    return Vec::new();
                }
                match answer {
                    Ok(GcMsg::Held { held }) if held.len() == found.len() => {
                        answers.push((from.clone(), held));
                    }
                    Ok(GcMsg::HeldAs { held, writer }) if held.len() == found.len() => {
                        answers.push((from.clone(), held));
                        writers.insert(from.clone(), writer);
                    }
                    // Every member must answer: anything else postpones.
                    _ => return self.abort(),
                }
                if !waiting.is_empty() {
                    return Vec::new();
                }
                let place = Placement::new(&round.ring, &round.namespaces, self.settings.n);
                let replicas = |key: &[u8]| place.replicas(key).into_iter().cloned().collect();
                let decision =
                    self.ripening
                        .decide(found, answers, replicas, now, self.settings.grace_ms);
                round.backlog.awaiting += found.len() - decision.collect.len();
                for (node, keys) in decision.held_back {
                    *round.backlog.held_back.entry(node).or_default() += keys;
                }
                // Every member named its writer, or nothing is folded.
                let current: Option<BTreeSet<Actor>> =
                    (writers.len() == answers.len()).then(|| writers.values().copied().collect());
                if let Some(current) = &current {
                    self.writers = current.clone();
                }
                let (folds, tombstones): (Vec<Entry>, Vec<Entry>) = decision
                    .collect
                    .into_iter()
                    .partition(|(_, state)| is_fold(state));
                let mut messages = Vec::new();
                if !tombstones.is_empty() {
                    messages.push(GcMsg::Collect {
                        entries: tombstones,
                    });
                }
                if let Some(current) = current {
                    // Only what a fold would change (a counter found before
                    // the members' writers were known may name none retired).
                    let folds: Vec<Entry> = folds
                        .into_iter()
                        .filter(|(_, state)| state.foldable(&current))
                        .collect();
                    if !folds.is_empty() {
                        messages.push(GcMsg::Fold {
                            entries: folds,
                            current: current.into_iter().collect(),
                        });
                    }
                }
                if messages.is_empty() {
                    return self.next_partition();
                }
                let timeout = self.settings.ask_timeout_ms;
                let mut work = Vec::new();
                let mut waiting = Vec::new();
                for h in &decision.holders {
                    for msg in &messages {
                        work.push(ask(h, msg.clone(), timeout));
                        waiting.push(h.clone());
                    }
                }
                if let Some(round) = &mut self.round {
                    round.stage = Stage::Collecting { waiting };
                }
                work
            }
            Stage::Collecting { waiting } => {
                let Some(i) = waiting.iter().position(|w| w == from) else {
                    return Vec::new();
                };
                waiting.swap_remove(i);
                // A failed collect or fold is harmless: the key is found
                // again.
                match (answer, *from == self.settings.me) {
                    (Ok(GcMsg::Collected { removed }), true) => round.collected += removed as usize,
                    (Ok(GcMsg::Folded { counters }), true) => round.folded += counters as usize,
                    _ => {}
                }
                if waiting.is_empty() {
                    self.next_partition()
                } else {
                    Vec::new()
                }
            }
            Stage::Finding => Vec::new(),
        }
    }

    /// Forgets the round under way (the shell lost it: a restart). What
    /// ripens is kept; a restart of the node loses it, which only delays.
    pub fn reset(&mut self) {
        self.round = None;
    }

    pub fn is_collecting(&self) -> bool {
        self.round.is_some()
    }

    fn next_partition(&mut self) -> Vec<GcWork> {
        let Some(round) = &mut self.round else {
            return Vec::new();
        };
        match round.partitions.pop_front() {
            Some(partition) => {
                round.stage = Stage::Finding;
                vec![GcWork::Find {
                    partition,
                    limit: self.settings.batch,
                    current: self.writers.clone(),
                }]
            }
            None => {
                let (keys, folded) = (round.collected, round.folded);
                self.last = self.round.take().map(|r| r.backlog);
                vec![GcWork::Ended {
                    keys: Some(keys),
                    folded,
                }]
            }
        }
    }

    fn abort(&mut self) -> Vec<GcWork> {
        let folded = self.round.take().map_or(0, |r| r.folded);
        vec![GcWork::Ended { keys: None, folded }]
    }
}

/// Whether a found key is a counter (or a map's counter fields) to fold
/// rather than a tombstone.
fn is_fold(state: &crate::version::SiblingSet) -> bool {
    use crate::crdt::Typed;
    state.ends_at().is_none() && matches!(state.typed(), Some(Typed::Counter(_) | Typed::Map(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::testing::{self, id};
    use crate::version::{Actor, Context, SiblingSet, Value};

    fn topology(nodes: &[&str]) -> Topology {
        testing::topology(nodes, &[], &[], 8)
    }

    fn collector() -> Collector {
        Collector::new(CollectorSettings {
            me: id("a"),
            n: 3,
            batch: 10,
            grace_ms: 100,
            ask_timeout_ms: 500,
        })
    }

    fn tombstone(k: &str) -> Entry {
        let v = SiblingSet::new()
            .update(&Context::default(), Value::Data(b"v".to_vec()), Actor(1))
            .unwrap();
        let t = v.update(&v.context(), Value::Tombstone, Actor(1)).unwrap();
        (k.as_bytes().to_vec(), t)
    }

    /// Goes through the round's remaining partitions, finding nothing in
    /// them; returns the work after the last.
    fn rest_of_round(c: &mut Collector, mut work: Vec<GcWork>) -> Vec<GcWork> {
        while let [GcWork::Find { .. }] = work[..] {
            work = c.on_found(Ok(Vec::new()));
        }
        work
    }

    /// Runs probes to completion with every member answering `Same`.
    fn all_same(c: &mut Collector, work: Vec<GcWork>, now: u64) -> Vec<GcWork> {
        let mut next = Vec::new();
        for w in work {
            if let GcWork::Ask {
                to,
                msg: GcMsg::Probe { entries },
                ..
            } = w
            {
                let held = vec![Holding::Same; entries.len()];
                next.extend(c.on_answer(&to, Ok(GcMsg::Held { held }), now));
            }
        }
        next
    }

    #[test]
    fn a_round_probes_every_member_and_collects_only_after_the_grace() {
        let mut c = collector();
        let t = topology(&["a", "b", "c"]);
        let work = c.on_tick(&t);
        let [GcWork::Find { partition, .. }] = work[..] else {
            panic!("{work:?}");
        };
        assert!(c.on_tick(&t).is_empty(), "one round at a time");
        let probes = c.on_found(Ok(vec![tombstone("k")]));
        let asked: BTreeSet<NodeId> = probes
            .iter()
            .map(|w| match w {
                GcWork::Ask {
                    to,
                    msg: GcMsg::Probe { .. },
                    ..
                } => to.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(asked, [id("a"), id("b"), id("c")].into(), "this node too");
        // First allowed: it ripens, nothing is collected; the round goes on.
        let next = all_same(&mut c, probes, 0);
        assert!(next.iter().all(|w| !matches!(
            w,
            GcWork::Ask {
                msg: GcMsg::Collect { .. },
                ..
            }
        )));
        // Finish this round without more tombstones, then again after the grace.
        let work = rest_of_round(&mut c, next);
        assert_eq!(
            work,
            vec![GcWork::Ended {
                keys: Some(0),
                folded: 0
            }]
        );
        let waiting_out_the_grace = Backlog {
            awaiting: 1,
            held_back: BTreeMap::new(),
        };
        assert_eq!(c.backlog(), Some(&waiting_out_the_grace));
        let work = c.on_tick(&t);
        assert_eq!(
            work,
            vec![GcWork::Find {
                partition,
                limit: 10,
                current: BTreeSet::new(),
            }]
        );
        let probes = c.on_found(Ok(vec![tombstone("k")]));
        let collects = all_same(&mut c, probes, 150);
        assert_eq!(collects.len(), 3, "every holder collects: {collects:?}");
        let mut end = Vec::new();
        for w in collects {
            let GcWork::Ask {
                to,
                msg: GcMsg::Collect { .. },
                ..
            } = w
            else {
                panic!("{w:?}");
            };
            end = c.on_answer(&to, Ok(GcMsg::Collected { removed: 1 }), 150);
        }
        end = rest_of_round(&mut c, end);
        assert_eq!(
            end,
            vec![GcWork::Ended {
                keys: Some(1),
                folded: 0
            }],
            "one here"
        );
        assert_eq!(c.backlog(), Some(&Backlog::default()), "nothing waits");
    }

    fn counter(k: &str, writers: &[u64]) -> Entry {
        let mut state = SiblingSet::new();
        for &w in writers {
            let op = crate::crdt::Operation::Increment(1);
            state.apply(Actor(w), &op, &Default::default(), 0).unwrap();
        }
        (k.as_bytes().to_vec(), state)
    }

    /// Answers every probe `Same` for each key, naming writer `1 + i` for
    /// the i-th member of a, b, c, except that `plain` answers without
    /// naming one; returns what the collector asks next.
    fn answer_as(
        c: &mut Collector,
        work: Vec<GcWork>,
        now: u64,
        plain: Option<&str>,
    ) -> Vec<GcWork> {
        let mut next = Vec::new();
        for w in work {
            let GcWork::Ask {
                to,
                msg: GcMsg::ProbeAs { entries } | GcMsg::ProbeFolds { entries },
                ..
            } = w
            else {
                panic!("{w:?}");
            };
            let held = vec![Holding::Same; entries.len()];
            let writer = Actor(match to.as_str() {
                "a" => 1,
                "b" => 2,
                _ => 3,
            });
            let answer = if plain == Some(to.as_str()) {
                GcMsg::Held { held }
            } else {
                GcMsg::HeldAs { held, writer }
            };
            next.extend(c.on_answer(&to, Ok(answer), now));
        }
        next
    }

    #[test]
    fn a_map_to_fold_is_probed_with_protocol_9s_probe_and_folded_like_a_counter() {
        let t = topology(&["a", "b", "c"]);
        let mut m = SiblingSet::new();
        for w in [1, 9] {
            let op = crate::crdt::Operation::IncrementField {
                field: b"f".to_vec(),
                by: 1,
            };
            m.apply(Actor(w), &op, &Default::default(), 0).unwrap();
        }
        let found = || vec![(b"m".to_vec(), m.clone()), counter("n", &[1, 9])];
        let mut c = collector();
        c.on_tick(&t);
        let probes = c.on_found(Ok(found()));
        assert!(
            probes.iter().all(|w| matches!(
                w,
                GcWork::Ask {
                    msg: GcMsg::ProbeFolds { .. },
                    ..
                }
            )),
            "a member of 8 must refuse it: {probes:?}"
        );
        let probed = answer_as(&mut c, probes, 0, None);
        rest_of_round(&mut c, probed);
        c.on_tick(&t);
        let probes = c.on_found(Ok(found()));
        let asks = answer_as(&mut c, probes, 150, None);
        let folds: Vec<_> = asks
            .iter()
            .filter_map(|w| match w {
                GcWork::Ask {
                    msg: GcMsg::Fold { entries, .. },
                    ..
                } => Some(entries.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(folds.len(), 3, "every holder folds");
        assert!(folds.iter().all(|e| *e == found()));
    }

    #[test]
    fn a_counter_is_folded_after_the_grace_keeping_the_writers_the_members_named() {
        let t = topology(&["a", "b", "c"]);
        // Counter m names only writers the members write as: not folded.
        let found = || {
            vec![
                counter("n", &[1, 2, 9]),
                counter("m", &[1, 2, 3]),
                tombstone("k"),
            ]
        };
        for plain in [None, Some("b")] {
            let mut c = collector();
            let work = c.on_tick(&t);
            let [GcWork::Find { ref current, .. }] = work[..] else {
                panic!("{work:?}");
            };
            assert!(current.is_empty(), "no writer known yet");
            let probes = c.on_found(Ok(found()));
            assert_eq!(probes.len(), 3);
            let probed = answer_as(&mut c, probes, 0, None);
            let work = rest_of_round(&mut c, probed);
            assert_eq!(
                work,
                vec![GcWork::Ended {
                    keys: Some(0),
                    folded: 0
                }]
            );
            // The next round looks for counters naming other writers.
            let work = c.on_tick(&t);
            let [GcWork::Find { ref current, .. }] = work[..] else {
                panic!("{work:?}");
            };
            assert_eq!(*current, BTreeSet::from([Actor(1), Actor(2), Actor(3)]));
            let probes = c.on_found(Ok(found()));
            let asks = answer_as(&mut c, probes, 150, plain);
            let (mut collects, mut folds) = (0, 0);
            let mut end = Vec::new();
            for w in asks {
                let GcWork::Ask { to, msg, .. } = w else {
                    panic!("{w:?}");
                };
                let answer = match msg {
                    GcMsg::Collect { entries } => {
                        assert_eq!(entries, vec![tombstone("k")]);
                        collects += 1;
                        GcMsg::Collected { removed: 1 }
                    }
                    GcMsg::Fold { entries, current } => {
                        assert_eq!(entries, vec![counter("n", &[1, 2, 9])]);
                        assert_eq!(current, vec![Actor(1), Actor(2), Actor(3)]);
                        folds += 1;
                        GcMsg::Folded { counters: 1 }
                    }
                    other => panic!("{other:?}"),
                };
                end = c.on_answer(&to, Ok(answer), 150);
            }
            end = rest_of_round(&mut c, end);
            match plain {
                None => {
                    assert_eq!((collects, folds), (3, 3), "every holder does both");
                    assert_eq!(
                        end,
                        vec![GcWork::Ended {
                            keys: Some(1),
                            folded: 1
                        }]
                    );
                }
                // A member that did not name its writer: nothing is folded.
                Some(_) => {
                    assert_eq!((collects, folds), (3, 0));
                    assert_eq!(
                        end,
                        vec![GcWork::Ended {
                            keys: Some(1),
                            folded: 0
                        }]
                    );
                }
            }
        }
    }

    #[test]
    fn a_member_that_fails_or_holds_something_else_postpones() {
        let mut c = collector();
        let t = topology(&["a", "b", "c"]);
        c.on_tick(&t);
        c.on_found(Ok(vec![tombstone("k")]));
        let failed = c.on_answer(&id("b"), Err(crate::Error::Timeout), 0);
        assert_eq!(
            failed,
            vec![GcWork::Ended {
                keys: None,
                folded: 0
            }]
        );
        assert!(!c.is_collecting());

        c.on_tick(&t);
        let probes = c.on_found(Ok(vec![tombstone("k")]));
        let mut last = Vec::new();
        for w in probes {
            if let GcWork::Ask { to, .. } = w {
                let held = vec![if to == id("c") {
                    Holding::Other
                } else {
                    Holding::Same
                }];
                last = c.on_answer(&to, Ok(GcMsg::Held { held }), 1_000);
            }
        }
        assert!(
            !last.iter().any(|w| matches!(
                w,
                GcWork::Ask {
                    msg: GcMsg::Collect { .. },
                    ..
                }
            )),
            "{last:?}"
        );
        rest_of_round(&mut c, last);
        let held_by_c = Backlog {
            awaiting: 1,
            held_back: [(id("c"), 1)].into(),
        };
        assert_eq!(c.backlog(), Some(&held_by_c), "c holds it back");
        assert_eq!(
            c.summary(),
            ["tombstones: 1 awaiting collection at the last round, held back by c (1)"]
        );
        // A short answer does not fit either.
        let mut c = collector();
        c.on_tick(&t);
        c.on_found(Ok(vec![tombstone("k"), tombstone("l")]));
        let short = c.on_answer(
            &id("a"),
            Ok(GcMsg::Held {
                held: vec![Holding::Same],
            }),
            0,
        );
        assert_eq!(
            short,
            vec![GcWork::Ended {
                keys: None,
                folded: 0
            }]
        );
    }

    #[test]
    fn while_a_namespace_is_dropped_a_round_first_deletes_a_batch_of_its_keys() {
        let mut c = collector();
        let t = topology(&["a", "b", "c"]);
        let work = c.on_tick(&t);
        assert!(
            !work
                .iter()
                .any(|w| matches!(w, GcWork::DeleteDropped { .. }))
        );
        c.reset();
        let mut view = (*t.view).clone();
        let carts = crate::namespace::Name::new("carts").unwrap();
        let settings = crate::namespace::test_settings(3);
        view.namespaces
            .create(carts.clone(), settings, &id("a"))
            .unwrap();
        view.namespaces.drop_namespace(&carts, &id("a")).unwrap();
        let dropped = Topology::new(view, (*t.health).clone());
        let work = c.on_tick(&dropped);
        let led = led_partitions(dropped.ring.as_ref().unwrap(), &id("a"));
        assert!(!led.is_empty());
        assert_eq!(
            work[0],
            GcWork::DeleteDropped {
                partitions: led,
                limit: 10
            }
        );
        assert!(matches!(work[1], GcWork::Find { .. }), "then the round");
    }
}

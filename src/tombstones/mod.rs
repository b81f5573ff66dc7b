//! Tombstone collection: when a deleted key may finally be forgotten.
//! Expired values are collected the same way: a key whose every sibling
//! is a tombstone or expired (`SiblingSet::is_gone_at`) is a tombstone
//! here.
//!
//! A delete is a tombstone sibling written like any value. Removing it is
//! only safe once no copy of the key anywhere could bring an older value
//! back: so a tombstone is collected only after *every member* acknowledged,
//! in answer to a probe, that it either holds exactly that tombstone (each
//! replica of the key must) or holds nothing for the key, and that it keeps
//! no hint for it. A member that does not answer blocks the collection;
//! time alone never collects anything.
//!
//! The collector (the first replica of the partition) probes every member
//! with a batch of its tombstone-only keys, keeps the keys every answer
//! allows, and asks each node that holds them to delete them, which each
//! does only if its copy is still that tombstone (a write that raced with
//! the collection survives).
//!
//! Acknowledgements alone are not enough: a write of an older version sent
//! before the delete (a slow replica write, a read repair, a duplicate)
//! may still be on its way, and would bring the value back once the
//! tombstone that dominates it is gone. So a key is collected only once
//! every member has allowed it twice, with the same tombstone, at least
//! the grace period apart ([`Ripening`]), longer than any message stays in
//! flight. The deterministic simulator found this: without the grace, a
//! delayed write resurrected a deleted value.
//!
//! Counters ride the same rounds (`crate::crdt::Counter::fold`): a counter
//! naming a writer no member writes as any more is probed with `ProbeAs`,
//! whose answers also name each member's writer, ripens as a tombstone
//! does, and is then folded (`Fold`) on the members still holding exactly
//! the probed copy, keeping the entries of the writers the members named.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

mod collector;
pub use collector::{Collector, CollectorSettings, GcWork};

use crate::error::{Error, Result};
use crate::node::NodeId;
use crate::partition::Partition;
use crate::placement::Placement;
use crate::replica::{Replica, ReplicaMsg};
use crate::ring::Ring;
use crate::store::Store;
use crate::version::{Actor, SiblingSet};

/// Messages of tombstone collection (`PeerMsg::Tombstones`). Variants are
/// only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GcMsg {
    /// What do you hold for these keys (given with the collector's
    /// tombstone-only sibling sets)?
    Probe {
        entries: Vec<(Vec<u8>, SiblingSet)>,
    },
    /// One answer per probed key, in order.
    Held {
        held: Vec<Holding>,
    },
    /// Delete each key whose copy is still the given tombstone.
    Collect {
        entries: Vec<(Vec<u8>, SiblingSet)>,
    },
    Collected {
        removed: u32,
    },
    /// A probe that also asks which writer the member's replica writes as
    /// (answered by `HeldAs`; protocol 6): sent when the batch holds
    /// counters to fold.
    ProbeAs {
        entries: Vec<(Vec<u8>, SiblingSet)>,
    },
    /// `Held`, and the writer the member's replica writes as.
    HeldAs {
        held: Vec<Holding>,
        writer: Actor,
    },
    /// Fold each counter whose copy is still the given state, keeping the
    /// entries of the writers in `current` (`Replica::fold_counter`).
    Fold {
        entries: Vec<(Vec<u8>, SiblingSet)>,
        current: Vec<Actor>,
    },
    Folded {
        counters: u32,
    },
    /// `ProbeAs` for a batch holding maps to fold (protocol 9): a member
    /// of 8 cannot hold a map's fold, so it is never sent this probe, and
    /// nothing is folded until every member speaks 9.
    ProbeFolds {
        entries: Vec<(Vec<u8>, SiblingSet)>,
    },
}

/// What one member holds for one probed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Holding {
    /// Exactly the probed tombstone, and no hint for the key.
    Same,
    /// Nothing for the key, and no hint for it.
    Absent,
    /// Something else (an older value, a newer write), or a hint.
    Other,
}

/// What a member holds for a probed key, given its local copy and whether
/// it keeps a hint for the key.
pub fn holding(local: &SiblingSet, probed: &SiblingSet, hinted: bool) -> Holding {
    if hinted {
        Holding::Other
    } else if local == probed {
        Holding::Same
    } else if local.is_empty() && local.context().is_empty() {
        Holding::Absent
    } else {
        Holding::Other
    }
}

/// A member's side: answers a probe or a collect from the local replica.
pub fn respond<S: Store>(local: &mut Replica<S>, msg: GcMsg) -> Result<GcMsg> {
    match msg {
        GcMsg::Probe { entries } => Ok(GcMsg::Held {
            held: probe(local, &entries)?,
        }),
        GcMsg::Collect { entries } => Ok(GcMsg::Collected {
            removed: collect(local, &entries)? as u32,
        }),
        GcMsg::ProbeAs { entries } | GcMsg::ProbeFolds { entries } => Ok(GcMsg::HeldAs {
            held: probe(local, &entries)?,
            writer: local.actor(),
        }),
        GcMsg::Fold { entries, current } => {
            let current = current.into_iter().collect();
            let mut counters = 0;
            for (key, probed) in &entries {
                if local.fold_counter(key, probed, &current)? {
                    counters += 1;
                }
            }
            Ok(GcMsg::Folded { counters })
        }
        GcMsg::Held { .. }
        | GcMsg::Collected { .. }
        | GcMsg::HeldAs { .. }
        | GcMsg::Folded { .. } => Err(Error::InvalidRequest(
            "a tombstone answer was sent as a request".into(),
        )),
    }
}

/// Answers a probe: what the local replica holds for each key.
pub fn probe<S: Store>(
    local: &Replica<S>,
    entries: &[(Vec<u8>, SiblingSet)],
) -> Result<Vec<Holding>> {
    entries
        .iter()
        .map(|(key, probed)| Ok(holding(&local.read(key)?, probed, local.is_hinted(key)?)))
        .collect()
}

/// Deletes each key whose local copy is still exactly the given dead
/// sibling set (a write that raced with the collection survives). Returns
/// how many. The collector chose keys gone by its clock; a set that could
/// never end (a value without a deadline) is refused whatever it says.
pub fn collect<S: Store>(
    local: &mut Replica<S>,
    entries: &[(Vec<u8>, SiblingSet)],
) -> Result<usize> {
    let mut removed = 0;
    for (key, tombstone) in entries {
        if tombstone.ends_at().is_some() && local.read(key)? == *tombstone {
            local.remove(key)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Decides which probed keys may be collected: `answers` must hold one
/// answer per member (the caller only decides once every member answered),
/// and `replicas(i)` names the replicas of key `i`, which must each hold
/// the tombstone itself. Returns the indexes of the collectable keys.
pub fn collectable(
    keys: usize,
    answers: &[(NodeId, Vec<Holding>)],
    replicas: impl Fn(usize) -> BTreeSet<NodeId>,
) -> Vec<usize> {
    (0..keys)
        .filter(|&i| blockers(i, answers, &replicas(i)).is_empty())
        .collect()
}

/// The members probed key `i` waits for: those whose answer does not
/// allow collecting it (they hold another version of the key, or, being
/// one of its `replicas`, nothing), and replicas that did not answer.
fn blockers<'a>(
    i: usize,
    answers: &'a [(NodeId, Vec<Holding>)],
    replicas: &'a BTreeSet<NodeId>,
) -> Vec<&'a NodeId> {
    let mut waits: Vec<&NodeId> = answers
        .iter()
        .filter(|(node, held)| match held.get(i) {
            Some(Holding::Same) => false,
            Some(Holding::Absent) => replicas.contains(node),
            Some(Holding::Other) | None => true,
        })
        .map(|(node, _)| node)
        .collect();
    waits.extend(
        replicas
            .iter()
            .filter(|r| !answers.iter().any(|(node, _)| node == *r)),
    );
    waits
}

/// What one probe decided (`Ripening::decide`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// The tombstones to collect now.
    pub collect: Vec<(Vec<u8>, SiblingSet)>,
    /// The members to ask to collect them (those holding them).
    pub holders: Vec<NodeId>,
    /// Per member, how many probed tombstones its answer holds back.
    pub held_back: BTreeMap<NodeId, usize>,
}

/// Where the tombstones `me` minted over keys of dropped namespaces
/// (`Replica::delete_dropped`) go: each to the other replicas of its key,
/// as a delete's session writes them (one that fails is repaired by
/// anti-entropy).
pub fn delete_writes(
    place: &Placement,
    me: &NodeId,
    deleted: Vec<(Vec<u8>, SiblingSet)>,
) -> Vec<(NodeId, ReplicaMsg)> {
    let mut writes = Vec::new();
    for (key, state) in deleted {
        let replicas = place.replicas(&key);
        for peer in replicas.into_iter().filter(|peer| *peer != me) {
            let msg = ReplicaMsg::Write {
                key: key.clone(),
                state: state.clone(),
                hint_for: None,
            };
            writes.push((peer.clone(), msg));
        }
    }
    writes
}

/// The partitions whose tombstones `me` collects: those it owns, and none
/// while partitions move (their replica sets are changing).
pub fn led_partitions(ring: &Ring, me: &NodeId) -> Vec<Partition> {
    if ring.is_moving() {
        return Vec::new();
    }
    (0..ring.partition_count())
        .map(Partition)
        .filter(|&p| ring.owner(p) == me)
        .collect()
}

/// Tombstones every member allowed, waiting out the grace period: the
/// collector's memory between rounds (lost on restart, which only delays).
#[derive(Debug, Clone, Default)]
pub struct Ripening {
    /// Per key: the tombstone allowed, and when it was first allowed.
    first: BTreeMap<Vec<u8>, (SiblingSet, u64)>,
}

impl Ripening {
    /// Takes the tombstones every member allowed at `now` and returns those
    /// allowed, unchanged, since at least `grace` ago; the others wait.
    pub fn ripe(
        &mut self,
        allowed: Vec<(Vec<u8>, SiblingSet)>,
        now: u64,
        grace: u64,
    ) -> Vec<(Vec<u8>, SiblingSet)> {
        // Forget what was not seen again for long (collected elsewhere,
        // or written since).
        self.first
            .retain(|_, (_, since)| now.saturating_sub(*since) <= grace.saturating_mul(4).max(1));
        let mut ripe = Vec::new();
        for (key, tombstone) in allowed {
            match self.first.get(&key) {
                Some((t, since)) if *t == tombstone => {
                    if now.saturating_sub(*since) >= grace {
                        self.first.remove(&key);
                        ripe.push((key, tombstone));
                    }
                }
                _ => {
                    self.first.insert(key, (tombstone, now));
                }
            }
        }
        ripe
    }

    /// Once every member answered a probe of `found` (`answers`, one per
    /// member; `replicas(key)` must each hold the tombstone itself): the
    /// tombstones to collect now (every answer allows them, and they are
    /// ripe), the members to ask to collect them, and who holds back the
    /// others (those waiting out the grace period are held back by none).
    pub fn decide(
        &mut self,
        found: &[(Vec<u8>, SiblingSet)],
        answers: &[(NodeId, Vec<Holding>)],
        replicas: impl Fn(&[u8]) -> BTreeSet<NodeId>,
        now: u64,
        grace: u64,
    ) -> Decision {
        let mut allowed = Vec::new();
        let mut held_back: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (i, entry) in found.iter().enumerate() {
            let replicas = replicas(&entry.0);
            let waits = blockers(i, answers, &replicas);
            if waits.is_empty() {
                allowed.push(entry.clone());
            }
            for node in waits {
                *held_back.entry(node.clone()).or_default() += 1;
            }
        }
        let collect = self.ripe(allowed, now, grace);
        let holders = if collect.is_empty() {
            Vec::new()
        } else {
            answers
                .iter()
                .filter(|(_, held)| held.contains(&Holding::Same))
                .map(|(n, _)| n.clone())
                .collect()
        };
        Decision {
            collect,
            holders,
            held_back,
        }
    }

    /// Keys waiting.
    pub fn len(&self) -> usize {
        self.first.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{Actor, Context, Value};

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn tomb(actor: u64) -> SiblingSet {
        SiblingSet::new()
            .update(&Context::default(), Value::Tombstone, Actor(actor))
            .unwrap()
    }

    #[test]
    fn a_dropped_keys_tombstone_goes_to_its_other_replicas_only() {
        let t = crate::topology::testing::topology(&["a", "b", "c", "d"], &[], &[], 16);
        let ring = t.ring.clone().unwrap();
        let keys: Vec<Vec<u8>> = (0..8).map(|i| format!("k{i}").into_bytes()).collect();
        let deleted = keys.iter().map(|k| (k.clone(), tomb(1))).collect();
        let table = crate::namespace::Table::default();
        let writes = delete_writes(&Placement::new(&ring, &table, 2), &id("a"), deleted);
        for key in &keys {
            let list = ring.preference_list(ring.partition_of(key), 2);
            let mut to: Vec<&NodeId> = writes
                .iter()
                .filter(|(_, m)| matches!(m, ReplicaMsg::Write { key: k, .. } if k == key))
                .map(|(peer, _)| peer)
                .collect();
            to.sort();
            let mut expected: Vec<&NodeId> = list.into_iter().filter(|p| **p != id("a")).collect();
            expected.sort();
            assert_eq!(to, expected, "{key:?}");
        }
    }

    #[test]
    fn a_tombstone_ripens_only_when_allowed_unchanged_a_grace_apart() {
        let mut r = Ripening::default();
        let k = b"k".to_vec();
        assert!(r.ripe(vec![(k.clone(), tomb(1))], 1_000, 500).is_empty());
        // Too early.
        assert!(r.ripe(vec![(k.clone(), tomb(1))], 1_400, 500).is_empty());
        // A different tombstone starts the wait again.
        assert!(r.ripe(vec![(k.clone(), tomb(2))], 1_600, 500).is_empty());
        assert!(r.ripe(vec![(k.clone(), tomb(2))], 2_000, 500).is_empty());
        assert_eq!(
            r.ripe(vec![(k.clone(), tomb(2))], 2_100, 500),
            vec![(k, tomb(2))]
        );
        assert!(r.is_empty());
    }

    #[test]
    fn keys_not_seen_again_are_forgotten() {
        let mut r = Ripening::default();
        r.ripe(vec![(b"a".to_vec(), tomb(1))], 0, 100);
        assert_eq!(r.len(), 1);
        r.ripe(Vec::new(), 1_000, 100);
        assert!(r.is_empty());
    }

    #[test]
    fn holdings() {
        let v = SiblingSet::new()
            .update(&Context::default(), Value::Data(b"v".to_vec()), Actor(1))
            .unwrap();
        let t = v.update(&v.context(), Value::Tombstone, Actor(1)).unwrap();
        assert_eq!(holding(&t, &t, false), Holding::Same);
        assert_eq!(holding(&t, &t, true), Holding::Other, "a hint blocks");
        assert_eq!(holding(&SiblingSet::new(), &t, false), Holding::Absent);
        assert_eq!(
            holding(&v, &t, false),
            Holding::Other,
            "an older value blocks"
        );
    }

    #[test]
    fn every_replica_must_hold_it_and_nobody_may_hold_anything_else() {
        let replicas = |_| [id("a"), id("b"), id("c")].into_iter().collect();
        let answers = |held: [Holding; 4]| -> Vec<(NodeId, Vec<Holding>)> {
            ["a", "b", "c", "d"]
                .iter()
                .zip(held)
                .map(|(n, h)| (id(n), vec![h]))
                .collect()
        };
        use Holding::*;
        assert_eq!(
            collectable(1, &answers([Same, Same, Same, Absent]), replicas),
            vec![0]
        );
        assert_eq!(
            collectable(1, &answers([Same, Same, Same, Same]), replicas),
            vec![0]
        );
        assert!(
            collectable(1, &answers([Same, Same, Absent, Absent]), replicas).is_empty(),
            "a replica lacks it"
        );
        assert!(
            collectable(1, &answers([Same, Same, Same, Other]), replicas).is_empty(),
            "a stand-in holds more"
        );
        assert!(collectable(1, &answers([Same, Same, Other, Absent]), replicas).is_empty());
        let missing_c: Vec<_> = answers([Same, Same, Same, Absent])
            .into_iter()
            .filter(|(n, _)| *n != id("c"))
            .collect();
        assert!(
            collectable(1, &missing_c, replicas).is_empty(),
            "a replica did not answer"
        );
    }
}

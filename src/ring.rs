//! The ring: keys to partitions, partitions to preference lists.
//!
//! The 64-bit key-hash space is cut into Q equal partitions (Q a power of two,
//! chosen when the cluster is created, doubled by a split): a key's partition
//! is the top log2(Q) bits of its hash. The `Ownership` table names one owner per partition; the
//! preference list of a partition is the first N distinct nodes met walking
//! the table from that partition onwards, and continuing the walk gives the
//! fallback order for sloppy quorum.
//!
//! A `Ring` is computed from the ownership table alone, so every node holding
//! the same table routes identically. Liveness never changes it: `route` skips
//! nodes that are down and picks stand-ins further along the walk, each
//! carrying a hint for the owner it replaces.

use std::collections::BTreeSet;

use crate::node::NodeId;
use crate::ownership::Ownership;
use crate::partition::Partition;

/// Where one copy of a write goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    pub node: &'a NodeId,
    /// Set when `node` stands in for an owner that is down: the owner to hand
    /// the write back to.
    pub hint_for: Option<&'a NodeId>,
}

/// Routing view of an ownership table. Cheap to query; rebuilt when the
/// table changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    /// Every node named in the table, sorted; owners are indexes into this.
    nodes: Vec<NodeId>,
    current: Vec<u16>,
    /// Owners once in-flight moves complete; equal to `current` when none are.
    pending: Vec<u16>,
    /// Distinct nodes in `current` and in `pending` (walks stop there).
    current_distinct: usize,
    pending_distinct: usize,
}

impl Ring {
    pub fn new(table: &Ownership) -> Ring {
        let mut nodes: Vec<NodeId> = table
            .entries()
            .iter()
            .flat_map(|e| std::iter::once(&e.owner).chain(e.next.as_ref()))
            .cloned()
            .collect();
        nodes.sort();
        nodes.dedup();
        let idx = |id: &NodeId| {
            nodes
                .binary_search(id)
                .expect("every id of the table is in nodes") as u16
        };
        let current: Vec<u16> = table.entries().iter().map(|e| idx(&e.owner)).collect();
        let pending: Vec<u16> = table
            .entries()
            .iter()
            .map(|e| idx(e.pending_owner()))
            .collect();
        let distinct = |owners: &[u16]| owners.iter().collect::<BTreeSet<_>>().len();
        Ring {
            current_distinct: distinct(&current),
            pending_distinct: distinct(&pending),
            nodes,
            current,
            pending,
        }
    }

    pub fn partition_count(&self) -> u32 {
        self.current.len() as u32
    }

    pub fn partition_of(&self, key: &[u8]) -> Partition {
        Partition::of_key(key, self.partition_count())
    }

    /// Every node the table names.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    pub fn owner(&self, p: Partition) -> &NodeId {
        &self.nodes[self.current[p.index()] as usize]
    }

    /// Distinct current owners in walk order from `p`, each node once.
    pub fn walk(&self, p: Partition) -> impl Iterator<Item = &NodeId> + '_ {
        walk(&self.current, self.current_distinct, p).map(|i| &self.nodes[i as usize])
    }

    /// The first `n` distinct nodes walking the ring from `p`.
    pub fn preference_list(&self, p: Partition, n: usize) -> Vec<&NodeId> {
        self.walk(p).take(n).collect()
    }

    /// The preference list once in-flight moves complete.
    pub fn pending_preference_list(&self, p: Partition, n: usize) -> Vec<&NodeId> {
        walk(&self.pending, self.pending_distinct, p)
            .take(n)
            .map(|i| &self.nodes[i as usize])
            .collect()
    }

    /// Where `node` stands in the walk from `p` (0: first), if the table
    /// names it.
    pub fn position(&self, p: Partition, node: &NodeId) -> Option<usize> {
        self.walk(p).position(|o| o == node)
    }

    /// Where `node` will stand in the walk from `p` once in-flight moves
    /// complete.
    pub fn pending_position(&self, p: Partition, node: &NodeId) -> Option<usize> {
        let i = self.nodes.binary_search(node).ok()? as u16;
        walk(&self.pending, self.pending_distinct, p).position(|o| o == i)
    }

    /// Whether any partition is changing hands.
    pub fn is_moving(&self) -> bool {
        self.current != self.pending
    }

    /// Where the `n` copies of a write to `p` go when only nodes for which
    /// `is_up` holds can take them: owners that are up take their own copy;
    /// each owner that is down is replaced by the next node up further along
    /// the walk, which keeps a hint for it. Returns fewer than `n` targets
    /// only when fewer than `n` nodes are up; then an owner that is down
    /// and has nobody to stand in for it is hinted by an owner that is up
    /// (which keeps the write anyway), one hint per target, so it gets the
    /// write back within seconds of returning (as Cassandra's coordinators
    /// keep hints) instead of waiting for anti-entropy.
    pub fn route(
        &self,
        p: Partition,
        n: usize,
        is_up: impl Fn(&NodeId) -> bool,
    ) -> Vec<Target<'_>> {
        let mut targets = Vec::with_capacity(n);
        let mut missing = Vec::new();
        let mut walk = self.walk(p);
        for node in walk.by_ref().take(n) {
            if is_up(node) {
                targets.push(Target {
                    node,
                    hint_for: None,
                });
            } else {
                missing.push(node);
            }
        }
        let mut missing = missing.into_iter();
        for node in walk {
            if targets.len() == n {
                break;
            }
            if is_up(node) {
                targets.push(Target {
                    node,
                    hint_for: missing.next(),
                });
            }
        }
        for (target, owner) in targets
            .iter_mut()
            .filter(|t| t.hint_for.is_none())
            .zip(missing)
        {
            target.hint_for = Some(owner);
        }
        targets
    }

    /// Nodes for which `is_up` holds further along the walk than `targets`:
    /// in order, the nodes that replace targets that fail.
    pub fn fallbacks(
        &self,
        p: Partition,
        targets: &[Target<'_>],
        is_up: impl Fn(&NodeId) -> bool,
    ) -> Vec<&NodeId> {
        self.walk(p)
            .filter(|n| is_up(n) && !targets.iter().any(|t| t.node == *n))
            .collect()
    }

    /// The partitions whose preference list (current or pending) includes
    /// `node`: the data that node must hold.
    pub fn replicated_by(&self, node: &NodeId, n: usize) -> Vec<Partition> {
        let Ok(i) = self.nodes.binary_search(node) else {
            return Vec::new();
        };
        let i = i as u16;
        (0..self.partition_count())
            .map(Partition)
            .filter(|&p| {
                walk(&self.current, self.current_distinct, p)
                    .take(n)
                    .any(|o| o == i)
                    || walk(&self.pending, self.pending_distinct, p)
                        .take(n)
                        .any(|o| o == i)
            })
            .collect()
    }

    /// How many partitions each node owns now, by node.
    pub fn owned_counts(&self) -> Vec<(&NodeId, usize)> {
        let mut counts = vec![0usize; self.nodes.len()];
        for &o in &self.current {
            counts[o as usize] += 1;
        }
        self.nodes.iter().zip(counts).collect()
    }

    /// How many partitions each node is a replica of (its load), by node.
    pub fn replica_counts(&self, n: usize) -> Vec<(&NodeId, usize)> {
        let mut counts = vec![0usize; self.nodes.len()];
        for p in 0..self.partition_count() {
            for o in walk(&self.current, self.current_distinct, Partition(p)).take(n) {
                counts[o as usize] += 1;
            }
        }
        self.nodes.iter().zip(counts).collect()
    }
}

/// Distinct owners walking `owners` cyclically from `p`; stops once all
/// `distinct` nodes have been met, so a full walk of a small cluster does not
/// scan the whole table.
fn walk(owners: &[u16], distinct: usize, p: Partition) -> impl Iterator<Item = u16> + '_ {
    let q = owners.len();
    let mut seen: Vec<u16> = Vec::with_capacity(4);
    (0..q)
        .map_while(move |k| {
            if seen.len() == distinct {
                return None;
            }
            let o = owners[(p.index() + k) % q];
            if seen.contains(&o) {
                Some(None)
            } else {
                seen.push(o);
                Some(Some(o))
            }
        })
        .flatten()
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ownership::{Capacity, Ownership};

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    /// A founded ring of `n` equal nodes `n00`, `n01`, ... over `q`
    /// partitions (tests of other modules route over it too).
    pub(crate) fn ring_of(n: usize, q: u32) -> Ring {
        let members: Vec<Capacity> = (0..n)
            .map(|i| Capacity::new(id(&format!("n{i:02}")), 1))
            .collect();
        Ring::new(&Ownership::found(q, &members, 3).unwrap())
    }

    #[test]
    fn preference_list_is_distinct_and_starts_at_the_owner() {
        let ring = ring_of(5, 64);
        for p in 0..64 {
            let p = Partition(p);
            let pl = ring.preference_list(p, 3);
            assert_eq!(pl.len(), 3);
            assert_eq!(pl[0], ring.owner(p));
            assert!(pl[0] != pl[1] && pl[1] != pl[2] && pl[0] != pl[2]);
            // the continued walk visits every node exactly once
            let all: Vec<_> = ring.walk(p).collect();
            assert_eq!(all.len(), 5);
            assert_eq!(&all[..3], &pl[..]);
        }
    }

    #[test]
    fn small_clusters_give_every_node() {
        let ring = ring_of(2, 16);
        assert_eq!(ring.preference_list(Partition(3), 3).len(), 2);
    }

    #[test]
    fn route_replaces_down_owners_with_hinted_stand_ins() {
        let ring = ring_of(5, 64);
        let p = Partition(10);
        let walk: Vec<NodeId> = ring.walk(p).cloned().collect();
        let down = walk[1].clone();
        let targets = ring.route(p, 3, |n| *n != down);
        assert_eq!(targets.len(), 3);
        assert_eq!(
            targets[0],
            Target {
                node: &walk[0],
                hint_for: None
            }
        );
        assert_eq!(
            targets[1],
            Target {
                node: &walk[2],
                hint_for: None
            }
        );
        assert_eq!(
            targets[2],
            Target {
                node: &walk[3],
                hint_for: Some(&walk[1])
            }
        );
        // liveness changed routing, not ownership
        assert_eq!(ring.preference_list(p, 3)[1], &walk[1]);
    }

    #[test]
    fn with_nobody_to_stand_in_an_owner_that_is_up_keeps_the_hint() {
        let ring = ring_of(3, 64);
        let p = Partition(10);
        let walk: Vec<NodeId> = ring.walk(p).cloned().collect();
        let down = walk[1].clone();
        let targets = ring.route(p, 3, |n| *n != down);
        assert_eq!(
            targets,
            vec![
                Target {
                    node: &walk[0],
                    hint_for: Some(&walk[1])
                },
                Target {
                    node: &walk[2],
                    hint_for: None
                },
            ]
        );
    }

    proptest! {

        #![proptest_config(crate::proptest_config())]
        #[test]
        fn route_properties(nodes in 1usize..9, n in 1usize..5, down_mask in 0u32..512, p in 0u32..64) {
            let ring = ring_of(nodes, 64);
            let p = Partition(p);
            let is_up = |x: &NodeId| {
                let i = ring.nodes().iter().position(|y| y == x).unwrap();
                down_mask & (1 << i) == 0
            };
            let up = ring.nodes().iter().filter(|x| is_up(x)).count();
            let targets = ring.route(p, n, is_up);
            let pl = ring.preference_list(p, n);
            prop_assert_eq!(targets.len(), n.min(up));
            let mut seen = std::collections::BTreeSet::new();
            let mut hinted = std::collections::BTreeSet::new();
            for t in &targets {
                prop_assert!(is_up(t.node), "a down node was routed to");
                prop_assert!(seen.insert(t.node), "a node was routed to twice");
                match t.hint_for {
                    None => prop_assert!(pl.contains(&t.node)),
                    Some(owner) => {
                        prop_assert!(pl.contains(&owner) && !is_up(owner));
                        prop_assert!(hinted.insert(owner), "two hints for one owner");
                        if pl.contains(&t.node) {
                            prop_assert!(targets.len() < n, "an owner hints only when nobody can stand in");
                        }
                    }
                }
            }
            // every owner that is down is hinted, as far as targets go
            let down = pl.iter().filter(|o| !is_up(o)).count();
            prop_assert_eq!(hinted.len(), down.min(targets.len()));
            // every owner that is up takes its own copy
            for o in pl.iter().filter(|o| is_up(o)) {
                prop_assert!(targets.iter().any(|t| t.node == *o));
            }
        }
    }
}

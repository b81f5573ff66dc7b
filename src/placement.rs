//! Placement with namespaces: which keys of a partition each node holds.
//!
//! A key lives on the first `n` nodes of its partition's walk, `n` its
//! namespace's own (`default`'s is `[cluster] n`), so namespaces share
//! partitions but not replica sets: the node at position `i` of a walk
//! (0 first) holds the keys of the namespaces whose `n` is above `i`.
//! The protocols that work a partition at a time (handoff, anti-entropy,
//! hints, tombstone collection) therefore reach `extent` nodes deep (the
//! largest `n`), and compare or move only the keys the node at the other
//! end must hold: a `Scope`, the namespaces in question.
//!
//! Co-replicas compare like with like, as Riak keeps its hash trees per
//! `{partition, n_val}`: an exchange between the nodes at positions `i`
//! and `j` covers the namespaces whose `n` is above both. A replica keeps
//! its hash-tree leaves per (partition, namespace) and a scope's tree is
//! the XOR of its namespaces' leaves, so changing a namespace's `n`
//! rebuilds nothing: the next exchanges simply cover it differently.
//!
//! Every decision here is made from the ring and the namespace table of
//! one node's view; two nodes whose views differ for a moment compare
//! different scopes and find differences that the next exchange, once
//! gossip agrees, no longer sees.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::namespace::{self, DEFAULT, MAX_NAMES, Table};
use crate::node::NodeId;
use crate::partition::Partition;
use crate::ring::Ring;

/// The namespaces an exchange, a release or a sync covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    /// Every namespace (what every node held before namespaces had their
    /// own `n`, and what a cluster whose namespaces share one `n` compares).
    All,
    /// These namespaces only (`default` by its name), sorted.
    Only(Vec<String>),
}

impl Scope {
    /// The scope of `names` (any order, no duplicates needed).
    pub fn only<'a>(names: impl IntoIterator<Item = &'a str>) -> Scope {
        let mut names: Vec<String> = names.into_iter().map(str::to_string).collect();
        names.sort();
        names.dedup();
        Scope::Only(names)
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(names) => names.binary_search_by(|n| n.as_str().cmp(name)).is_ok(),
        }
    }

    /// Whether the stored `key` is in a namespace of this scope.
    pub fn holds(&self, key: &[u8]) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(_) => namespace::split_key(key).is_ok_and(|(name, _)| self.contains(name)),
        }
    }

    /// The namespaces of this scope that `other` covers too.
    pub fn within(&self, other: &Scope) -> Scope {
        match self {
            Scope::All => other.clone(),
            Scope::Only(names) => Scope::Only(
                names
                    .iter()
                    .filter(|name| other.contains(name))
                    .cloned()
                    .collect(),
            ),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Scope::Only(names) if names.is_empty())
    }

    /// Checks a scope that arrived from a peer: bounded, sorted, names valid.
    pub fn validate(&self) -> Result<()> {
        let Scope::Only(names) = self else {
            return Ok(());
        };
        if names.len() > MAX_NAMES + 1 {
            return Err(Error::Malformed(format!(
                "a scope of {} namespaces",
                names.len()
            )));
        }
        if names.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Malformed("a scope's names out of order".into()));
        }
        for name in names {
            namespace::Name::new(name.as_str()).map_err(|e| Error::Malformed(e.to_string()))?;
        }
        Ok(())
    }
}

/// One node's view of where keys live: its ring and namespace table, with
/// `default`'s `n`.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub ring: &'a Ring,
    namespaces: &'a Table,
    default_n: usize,
}

impl<'a> Placement<'a> {
    pub fn new(ring: &'a Ring, namespaces: &'a Table, default_n: usize) -> Self {
        Placement {
            ring,
            namespaces,
            default_n,
        }
    }

    /// The `n` of namespace `name`: its record's, dropped ones included
    /// (their keys are still being deleted); `default`'s, and for a name
    /// this node has not heard of yet, `[cluster] n`.
    pub fn n_of(&self, name: &str) -> usize {
        self.namespaces
            .record(name)
            .map_or(self.default_n, |r| usize::from(r.settings.n))
    }

    /// The `n` of the stored `key`'s namespace.
    pub fn key_n(&self, key: &[u8]) -> usize {
        namespace::split_key(key).map_or(self.default_n, |(name, _)| self.n_of(name))
    }

    /// The largest `n` of any namespace: how deep into a partition's walk
    /// its keys go.
    pub fn extent(&self) -> usize {
        self.namespaces
            .records()
            .map(|(_, r)| usize::from(r.settings.n))
            .fold(self.default_n, usize::max)
    }

    /// The replicas of the stored `key`: the first `n` of its partition's
    /// walk.
    pub fn replicas(&self, key: &[u8]) -> Vec<&'a NodeId> {
        self.ring
            .preference_list(self.ring.partition_of(key), self.key_n(key))
    }

    /// The namespaces a node at walk position `position` holds: those
    /// whose `n` is above it (`All` when that is every one).
    pub fn scope_at(&self, position: usize) -> Scope {
        let named: Vec<&str> = self
            .namespaces
            .records()
            .filter(|(_, r)| usize::from(r.settings.n) > position)
            .map(|(name, _)| name.as_str())
            .collect();
        let default = self.default_n > position;
        if default && named.len() == self.namespaces.records().count() {
            return Scope::All;
        }
        Scope::only(default.then_some(DEFAULT).into_iter().chain(named))
    }

    /// What `a` and `b` both hold of `p`: the namespaces whose `n` is
    /// above both their positions. None if either holds nothing there.
    pub fn shared(&self, p: Partition, a: &NodeId, b: &NodeId) -> Option<Scope> {
        let deeper = self.ring.position(p, a)?.max(self.ring.position(p, b)?);
        (deeper < self.extent()).then(|| self.scope_at(deeper))
    }

    /// What `node` holds of `p` now or once in-flight moves complete.
    pub fn held_by(&self, p: Partition, node: &NodeId) -> Scope {
        let now = self.ring.position(p, node);
        let then = self.ring.pending_position(p, node);
        match now.into_iter().chain(then).min() {
            Some(position) => self.scope_at(position),
            None => Scope::Only(Vec::new()),
        }
    }

    /// Of the namespaces `held` of `p` on `node`, those it holds neither
    /// now nor once moves complete: extra copies, left by a lowered `n` or
    /// by a move that pushed `node` deeper into the walk. Nothing while
    /// `p` is moving (the copies may yet be needed).
    pub fn surplus<'h>(&self, p: Partition, node: &NodeId, held: &'h [String]) -> Vec<&'h str> {
        if self.ring.preference_list(p, self.extent())
            != self.ring.pending_preference_list(p, self.extent())
        {
            return Vec::new();
        }
        let keep = self.held_by(p, node);
        held.iter()
            .map(String::as_str)
            .filter(|name| !keep.contains(name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::{Changes, Name, Request, change};
    use crate::ring::tests::ring_of;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn table(spaces: &[(&str, u8)]) -> Table {
        let defaults = namespace::test_settings(3);
        let mut table = Table::default();
        for (name, n) in spaces {
            let changes = Changes {
                n: Some(*n),
                r: Some(1),
                w: Some(1),
                ..Changes::default()
            };
            let request = Request::Create {
                name: name.to_string(),
                changes,
            };
            change(&mut table, request, &defaults, 5, &id("a")).unwrap();
        }
        table
    }

    #[test]
    fn a_key_lives_on_the_first_n_nodes_of_its_namespaces_walk() {
        let ring = ring_of(5, 16);
        let table = table(&[("two", 2), ("five", 5)]);
        let place = Placement::new(&ring, &table, 3);
        assert_eq!(place.extent(), 5);
        for (ns, n) in [("two", 2), ("five", 5), ("default", 3)] {
            let key = namespace::key_in(&Name::new(ns).unwrap(), b"k").unwrap();
            let p = ring.partition_of(&key);
            assert_eq!(place.key_n(&key), n);
            assert_eq!(place.replicas(&key), ring.preference_list(p, n));
        }
        let unknown = namespace::key_in(&Name::new("later").unwrap(), b"k").unwrap();
        assert_eq!(place.key_n(&unknown), 3, "a name not heard of yet");
    }

    #[test]
    fn co_replicas_compare_the_namespaces_both_hold() {
        let ring = ring_of(5, 16);
        let table = table(&[("two", 2), ("five", 5)]);
        let place = Placement::new(&ring, &table, 3);
        let p = Partition(3);
        let walk: Vec<NodeId> = ring.walk(p).cloned().collect();
        assert_eq!(place.shared(p, &walk[0], &walk[1]), Some(Scope::All));
        assert_eq!(
            place.shared(p, &walk[2], &walk[0]),
            Some(Scope::only(["default", "five"]))
        );
        assert_eq!(
            place.shared(p, &walk[1], &walk[4]),
            Some(Scope::only(["five"]))
        );
        let same_n = self::table(&[("three", 3)]);
        let place = Placement::new(&ring, &same_n, 3);
        assert_eq!(place.extent(), 3);
        assert_eq!(place.shared(p, &walk[0], &walk[2]), Some(Scope::All));
        assert_eq!(place.shared(p, &walk[0], &walk[3]), None, "beyond every n");
    }

    #[test]
    fn a_lowered_n_leaves_surplus_copies_on_the_deeper_nodes() {
        let ring = ring_of(5, 16);
        let p = Partition(7);
        let walk: Vec<NodeId> = ring.walk(p).cloned().collect();
        let held = vec!["default".to_string(), "s".to_string()];
        let three = table(&[("s", 3)]);
        let place = Placement::new(&ring, &three, 3);
        assert!(place.surplus(p, &walk[2], &held).is_empty());
        assert_eq!(place.surplus(p, &walk[3], &held), ["default", "s"]);
        let two = table(&[("s", 2)]);
        let place = Placement::new(&ring, &two, 3);
        assert_eq!(place.surplus(p, &walk[2], &held), ["s"]);
        assert!(place.surplus(p, &walk[1], &held).is_empty());
    }

    #[test]
    fn a_scope_from_a_peer_is_checked() {
        assert!(Scope::only(["a", "default"]).validate().is_ok());
        assert!(
            Scope::Only(vec!["b".into(), "a".into()])
                .validate()
                .is_err()
        );
        assert!(Scope::Only(vec!["A".into()]).validate().is_err());
        let key = namespace::key_in(&Name::new("a").unwrap(), b"k").unwrap();
        assert!(Scope::only(["a"]).holds(&key));
        assert!(!Scope::only(["default"]).holds(&key));
        assert!(Scope::only(["default"]).holds(b"plain"));
    }
}

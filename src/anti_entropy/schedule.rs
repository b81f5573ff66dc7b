//! Anti-entropy scheduling: which exchange a node starts next, and when.
//!
//! A node exchanges one partition with one co-replica at a time: the next
//! partition it replicates (round robin) with a random co-replica that is
//! up, paced by a byte budget per second (no exchange starts while the last
//! second's exchanges used more).
//!
//! Catch-up: when a co-replica comes up (this node's start, the peer's
//! restart, a heal or the end of a network partition), the two compare
//! every root they share in one message (`AeMsg::Roots`, some 13 bytes a
//! partition: 13 KiB for 1,024 partitions, however many keys they hold),
//! and the partitions that differ are exchanged first, back to back within
//! the budget, instead of waiting for their turn in the round robin (a full
//! round at one exchange per 100 ms takes 100 s with 1,024 partitions).
//!
//! With namespaces of their own `n`, a node exchanges the partitions it
//! holds anything of (`Placement::extent` deep), each with a co-replica
//! over what both hold (`Placement::shared`); a changed namespace table
//! compares every shared root again, so a raised `n` fills its new
//! replicas at once.
//!
//! Time is an input (`now`, in ms); the shell owns the timer, starts what
//! `next` and `on_topology` return, and reports what they moved.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::namespace::Table;
use crate::node::NodeId;
use crate::partition::Partition;
use crate::placement::{Placement, Scope};
use crate::ring::Ring;

use super::ExchangeReport;
use crate::topology::Topology;

/// A roots comparison to make: the partitions this node shares with `peer`
/// (which just came up) over `scope`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootsCheck {
    pub peer: NodeId,
    pub scope: Scope,
    pub partitions: Vec<Partition>,
}

/// An exchange to start: `partition` with `peer`, over `scope`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub partition: Partition,
    pub peer: NodeId,
    pub scope: Scope,
}

/// Bytes exchanged since `start` (ms), for the budget.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    start: u64,
    bytes: u64,
}

/// Length of the budget's window, in ms.
const WINDOW_MS: u64 = 1_000;

/// What exchange this node starts next.
#[derive(Debug, Clone)]
pub struct Schedule {
    me: NodeId,
    /// `[cluster] n`: the namespace `default`'s.
    n: usize,
    /// The namespace table at the last topology (a change compares every
    /// shared root again).
    namespaces: Table,
    max_bytes_per_sec: u64,
    /// Position in this node's partitions (round robin).
    cursor: usize,
    /// The co-replicas up at the last topology.
    up: BTreeSet<NodeId>,
    /// Partitions found to differ from a co-replica that came up, with it:
    /// exchanged before the round robin goes on.
    urgent: VecDeque<(Partition, NodeId)>,
    window: Window,
    /// Whether an exchange is under way (one at a time).
    running: bool,
    /// The last completed exchange of each partition: when, and with whom.
    last: BTreeMap<Partition, (u64, NodeId)>,
    /// Keys repaired (either way) by exchanges this node started.
    repaired: u64,
}

impl Schedule {
    pub fn new(me: NodeId, n: usize, max_bytes_per_sec: u64) -> Self {
        Schedule {
            me,
            n,
            namespaces: Table::default(),
            max_bytes_per_sec,
            cursor: 0,
            up: BTreeSet::new(),
            urgent: VecDeque::new(),
            window: Window::default(),
            running: false,
            last: BTreeMap::new(),
            repaired: 0,
        }
    }

    /// The ring or the liveness of its nodes changed: every node that is up
    /// now and was not before gets the roots of the partitions it shares
    /// with this node compared (at the first call, and when the namespace
    /// table changed, every node that is up). Nothing while this node is
    /// out of the cluster.
    pub fn on_topology(&mut self, t: &Topology) -> Vec<RootsCheck> {
        let Some(ring) = t.active_ring(&self.me) else {
            return Vec::new();
        };
        if t.view.namespaces != self.namespaces {
            self.namespaces = t.view.namespaces.clone();
            self.up.clear();
        }
        let place = Placement::new(ring, &self.namespaces, self.n);
        let is_up = |n: &NodeId| t.is_up(n);
        let up: BTreeSet<NodeId> = ring
            .nodes()
            .iter()
            .filter(|n| **n != self.me && is_up(n))
            .cloned()
            .collect();
        let newly: Vec<NodeId> = up.difference(&self.up).cloned().collect();
        self.up = up;
        if newly.is_empty() {
            return Vec::new();
        }
        let mine = ring.replicated_by(&self.me, place.extent());
        let mut checks = Vec::new();
        for peer in newly {
            let mut by_scope: Vec<(Scope, Vec<Partition>)> = Vec::new();
            for &p in &mine {
                let Some(scope) = place.shared(p, &self.me, &peer) else {
                    continue;
                };
                match by_scope.iter_mut().find(|(s, _)| *s == scope) {
                    Some((_, partitions)) => partitions.push(p),
                    None => by_scope.push((scope, vec![p])),
                }
            }
            checks.extend(by_scope.into_iter().map(|(scope, partitions)| RootsCheck {
                peer: peer.clone(),
                scope,
                partitions,
            }));
        }
        checks
    }

    /// A roots comparison with `peer` found `differ` to differ; it moved
    /// `bytes` both ways at `now`.
    pub fn on_roots(&mut self, peer: &NodeId, differ: &[Partition], bytes: usize, now: u64) {
        self.spend(bytes, now);
        for &p in differ {
            if !self.urgent.iter().any(|(q, n)| *q == p && n == peer) {
                self.urgent.push_back((p, peer.clone()));
            }
        }
    }

    /// A roots comparison with `peer` failed: it is compared again at the
    /// next `on_topology` that finds it up.
    pub fn on_roots_failed(&mut self, peer: &NodeId) {
        self.up.remove(peer);
    }

    /// The exchange to start at `now`, if one may start: none while one
    /// runs or while the last second's exchanges used more than the
    /// budget. Partitions a catch-up found to differ come first (skipped
    /// if their co-replica is no longer up or no longer one); then the next
    /// partition this node replicates, with the co-replica at `pick(count)`
    /// of the `count` up.
    pub fn next(
        &mut self,
        t: &Topology,
        now: u64,
        pick: impl FnOnce(usize) -> usize,
    ) -> Option<Due> {
        let place = t.placement(&self.me, self.n)?;
        let is_up = |n: &NodeId| t.is_up(n);
        if self.running || !self.within_budget(now) {
            return None;
        }
        while let Some((partition, peer)) = self.urgent.pop_front() {
            if !is_up(&peer) {
                continue;
            }
            if let Some(scope) = place.shared(partition, &self.me, &peer) {
                self.running = true;
                return Some(Due {
                    partition,
                    peer,
                    scope,
                });
            }
        }
        let next = round_robin(&place, &self.me, &mut self.cursor, is_up, pick);
        self.running = next.is_some();
        next
    }

    /// The exchange under way failed at `now`, having moved `bytes`.
    pub fn on_failed(&mut self, bytes: usize, now: u64) {
        self.running = false;
        self.spend(bytes, now);
    }

    /// The exchange of `partition` with `peer` completed at `now`. Returns
    /// whether the next should start at once: this one repaired something
    /// (a node catching up), or catch-up exchanges wait.
    pub fn on_done(
        &mut self,
        partition: Partition,
        peer: &NodeId,
        report: &ExchangeReport,
        now: u64,
    ) -> bool {
        self.running = false;
        self.spend(report.bytes_sent + report.bytes_received, now);
        self.last.insert(partition, (now, peer.clone()));
        let repaired = report.pulled + report.pushed;
        self.repaired += repaired as u64;
        repaired > 0 || self.has_urgent()
    }

    /// For `status`: partitions exchanged of those this node replicates,
    /// keys repaired, and the oldest last exchange, at `now`.
    pub fn summary(&self, ring: Option<&Ring>, now: u64) -> Vec<String> {
        let extent = |r: &Ring| Placement::new(r, &self.namespaces, self.n).extent();
        let mine = ring.map_or(0, |r| r.replicated_by(&self.me, extent(r)).len());
        let mut lines = vec![format!(
            "anti-entropy: {} of {mine} partitions exchanged, {} keys repaired",
            self.last.len(),
            self.repaired
        )];
        if let Some((p, peer, age)) = self.oldest_exchange(now) {
            lines.push(format!(
                "anti-entropy: oldest last exchange {p} with {peer}, {:.1} s ago",
                age as f64 / 1000.0
            ));
        }
        lines
    }

    /// Of the partitions exchanged, the one whose replicas last agreed
    /// (an exchange completed) longest ago: with whom, and how long ago
    /// (ms) at `now`.
    pub fn oldest_exchange(&self, now: u64) -> Option<(Partition, &NodeId, u64)> {
        self.last
            .iter()
            .min_by_key(|(_, (at, _))| *at)
            .map(|(p, (at, peer))| (*p, peer, now.saturating_sub(*at)))
    }

    /// Whether catch-up exchanges are waiting (the shell starts the next one
    /// at once rather than at its next tick).
    pub fn has_urgent(&self) -> bool {
        !self.urgent.is_empty()
    }

    /// Forgets the exchange under way (the shell lost it: a restart).
    pub fn reset(&mut self) {
        self.running = false;
    }

    fn within_budget(&mut self, now: u64) -> bool {
        if now.saturating_sub(self.window.start) >= WINDOW_MS {
            self.window = Window {
                start: now,
                bytes: 0,
            };
        }
        self.window.bytes <= self.max_bytes_per_sec
    }

    fn spend(&mut self, bytes: usize, now: u64) {
        self.within_budget(now);
        self.window.bytes += bytes as u64;
    }
}

/// The next exchange `me` starts in the round robin: the partition after
/// `cursor` (advanced) among those it holds anything of, with the
/// co-replica at `pick(count)` of the `count` that are up, over what both
/// hold. None when it holds nothing or no co-replica of that partition is
/// up.
pub fn round_robin(
    place: &Placement,
    me: &NodeId,
    cursor: &mut usize,
    is_up: impl Fn(&NodeId) -> bool,
    pick: impl FnOnce(usize) -> usize,
) -> Option<Due> {
    let extent = place.extent();
    let mine = place.ring.replicated_by(me, extent);
    if mine.is_empty() {
        return None;
    }
    *cursor = (*cursor + 1) % mine.len();
    let partition = mine[*cursor];
    let peers: Vec<&NodeId> = place
        .ring
        .preference_list(partition, extent)
        .into_iter()
        .filter(|node| *node != me && is_up(node))
        .collect();
    if peers.is_empty() {
        return None;
    }
    let peer = (*peers.get(pick(peers.len()))?).clone();
    let scope = place.shared(partition, me, &peer)?;
    Some(Due {
        partition,
        peer,
        scope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::testing::{id, topology};

    #[test]
    fn a_co_replica_that_comes_up_has_its_shared_roots_compared_once() {
        let all_up = topology(&["a", "b", "c", "d"], &[], &[], 16);
        let ring = all_up.ring.clone().unwrap();
        let mut s = Schedule::new(id("a"), 3, 1 << 20);
        let first = s.on_topology(&all_up);
        let peers: Vec<&str> = first.iter().map(|c| c.peer.as_str()).collect();
        assert_eq!(peers, ["b", "c", "d"], "every node up at the start");
        for check in &first {
            for p in &check.partitions {
                let list = ring.preference_list(*p, 3);
                assert!(list.contains(&&id("a")) && list.contains(&&check.peer));
            }
        }
        assert!(s.on_topology(&all_up).is_empty(), "nothing new");
        let c_down = topology(&["a", "b", "c", "d"], &["c"], &[], 16);
        assert!(s.on_topology(&c_down).is_empty());
        let back = s.on_topology(&all_up);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].peer, id("c"));
        assert_eq!(back[0].partitions, first[1].partitions);
        s.on_roots_failed(&id("c"));
        assert_eq!(s.on_topology(&all_up), back, "asked again after a failure");
        let out = topology(&["a", "b", "c", "d"], &[], &["a"], 16);
        let mut s = Schedule::new(id("a"), 3, 1 << 20);
        assert!(
            s.on_topology(&out).is_empty(),
            "a node that is out compares nothing"
        );
        assert_eq!(s.next(&out, 0, |_| 0), None);
    }

    #[test]
    fn differing_partitions_go_first_then_the_round_robin() {
        let up = topology(&["a", "b", "c"], &[], &[], 16);
        let mut s = Schedule::new(id("a"), 3, 1 << 20);
        s.on_roots(&id("b"), &[Partition(5), Partition(9)], 100, 0);
        s.on_roots(&id("b"), &[Partition(5)], 100, 0);
        assert!(s.has_urgent());
        let due = s.next(&up, 0, |_| 0).unwrap();
        assert_eq!((due.partition, &due.peer), (Partition(5), &id("b")));
        assert_eq!(due.scope, Scope::All);
        assert_eq!(s.next(&up, 0, |_| 0), None, "one at a time");
        let report = ExchangeReport {
            pulled: 1,
            ..ExchangeReport::default()
        };
        assert!(
            s.on_done(Partition(5), &id("b"), &report, 1),
            "it repaired: go on"
        );
        assert_eq!(s.oldest_exchange(10), Some((Partition(5), &id("b"), 9)));
        // b went down meanwhile: its catch-up is skipped.
        let b_down = topology(&["a", "b", "c"], &["b"], &[], 16);
        let due = s.next(&b_down, 2, |_| 0).unwrap();
        assert_eq!(due.peer, id("c"), "round robin, with one that is up");
        assert_ne!(due.partition, Partition(9));
        assert!(!s.has_urgent());
    }

    #[test]
    fn no_exchange_starts_past_the_budget_until_the_window_ends() {
        let up = topology(&["a", "b", "c"], &[], &[], 16);
        let mut s = Schedule::new(id("a"), 3, 1000);
        assert!(s.next(&up, 0, |_| 0).is_some());
        s.on_failed(1500, 10);
        assert_eq!(s.next(&up, 500, |_| 0), None, "over budget");
        assert!(s.next(&up, 1010, |_| 0).is_some(), "a new window");
    }
}

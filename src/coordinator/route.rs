//! Where a session's requests go: the first N healthy nodes of the
//! extended preference list (hinted stand-ins for owners that are not up,
//! and hints kept by owners for owners nobody can stand in for), the
//! further healthy nodes as fallbacks, and the pending replicas.

use crate::liveness::Health;
use crate::node::NodeId;
use crate::partition::Partition;
use crate::ring::Ring;

/// A routed replica: a node, and the owner it keeps a hint for, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub node: NodeId,
    /// Whether `node` replicates the key itself; else it is a sloppy-quorum
    /// stand-in for `hint_for`.
    pub owns: bool,
    /// The owner to hand the write to later: the one a stand-in replaces,
    /// or, on an owner, another owner that is down or only suspect with
    /// nobody else to keep its copy.
    pub hint_for: Option<NodeId>,
}

impl Replica {
    pub fn owner(node: NodeId) -> Self {
        Replica {
            node,
            owns: true,
            hint_for: None,
        }
    }

    pub fn stand_in(node: NodeId, owner: NodeId) -> Self {
        Replica {
            node,
            owns: false,
            hint_for: Some(owner),
        }
    }
}

impl Route {
    /// Routes `key` as coordinator `me` sees the cluster (`health` of each
    /// node): the first `n` nodes up of the extended preference list
    /// (hinted stand-ins for the owners that are not), the further nodes up
    /// as fallbacks, and the pending replicas up. When the whole ring has
    /// fewer than `n` nodes up, suspect nodes count as up: a suspect may
    /// only be slow (a busy node's gossip times out too), and asking it
    /// beats failing at once for want of replicas. Down nodes are never
    /// asked. A put is minted by the first target: `me` when it is one,
    /// which saves a round trip and does not depend on a peer.
    pub fn plan(
        ring: &Ring,
        key: &[u8],
        n: usize,
        me: &NodeId,
        health: impl Fn(&NodeId) -> Health,
    ) -> (Partition, Route) {
        let p = ring.partition_of(key);
        let mut routed = ring.route(p, n, |node| health(node) == Health::Up);
        let lenient = routed.len() < n;
        let usable = |node: &NodeId| match health(node) {
            Health::Up => true,
            Health::Suspect => lenient,
            Health::Down => false,
        };
        if lenient {
            routed = ring.route(p, n, usable);
        }
        let fallbacks = ring
            .fallbacks(p, &routed, usable)
            .into_iter()
            .cloned()
            .collect();
        let current = ring.preference_list(p, n);
        let pending = ring
            .pending_preference_list(p, n)
            .into_iter()
            .filter(|node| !current.contains(node) && usable(node))
            .cloned()
            .collect();
        let mut targets: Vec<Replica> = routed
            .into_iter()
            .map(|t| Replica {
                node: t.node.clone(),
                owns: current.contains(&t.node),
                hint_for: t.hint_for.cloned(),
            })
            .collect();
        if lenient {
            backup_hints(&mut targets, |node| health(node) == Health::Up);
        }
        if let Some(i) = targets.iter().position(|t| &t.node == me) {
            targets[..=i].rotate_right(1);
        }
        let route = Route {
            targets,
            fallbacks,
            pending,
        };
        (p, route)
    }
}

impl Route {
    /// Drops the hints owners would keep for other owners (stand-ins keep
    /// theirs): where hints are not handed over (`hints.deliver = false`),
    /// such a hint would never go, and would only hold back the collection
    /// of the key's tombstone.
    pub fn drop_owner_hints(&mut self) {
        for t in self.targets.iter_mut().filter(|t| t.owns) {
            t.hint_for = None;
        }
    }
}

/// With fewer than N nodes up, an owner that is only suspect is asked
/// directly (it may just be slow); if it is in fact gone, its copy would be
/// lost until anti-entropy, so an owner that is up and keeps no hint yet
/// keeps one for it too. A delivery to an owner that did take the write
/// merges nothing new.
fn backup_hints(targets: &mut [Replica], is_up: impl Fn(&NodeId) -> bool) {
    let suspects: Vec<NodeId> = targets
        .iter()
        .filter(|t| t.owns && !is_up(&t.node))
        .map(|t| t.node.clone())
        .collect();
    let keepers = targets
        .iter_mut()
        .filter(|t| t.owns && t.hint_for.is_none() && is_up(&t.node));
    for (keeper, suspect) in keepers.zip(suspects) {
        keeper.hint_for = Some(suspect);
    }
}

/// Where a session's requests go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// The first N healthy nodes of the extended preference list.
    pub targets: Vec<Replica>,
    /// Healthy nodes further along, to replace targets that fail.
    pub fallbacks: Vec<NodeId>,
    /// Pending replicas (receiving the partition in a move): they are sent
    /// every write too, but their acknowledgements do not count toward W.
    pub pending: Vec<NodeId>,
}

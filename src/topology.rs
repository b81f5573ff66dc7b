//! What a node knows of the cluster at one moment: the membership view,
//! the ring computed from it (None until the cluster is founded), and each
//! member's health as this node's failure detector sees it. Background
//! drivers and coordinators decide from it; it is shared, not copied.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::liveness::Health;
use crate::node::NodeId;
use crate::placement::Placement;
use crate::ring::Ring;
use crate::view::View;

#[derive(Debug, Clone)]
pub struct Topology {
    pub view: Arc<View>,
    pub ring: Option<Arc<Ring>>,
    pub health: Arc<BTreeMap<NodeId, Health>>,
    /// `view.digest()`, computed once: clients name the ring they route by
    /// with it, and a coordinator that holds another tells them so.
    pub version: u64,
}

impl Topology {
    /// The topology of `view` with `health`, computing its ring.
    pub fn new(view: View, health: BTreeMap<NodeId, Health>) -> Self {
        Topology {
            ring: view.ring().map(Arc::new),
            version: view.digest(),
            view: Arc::new(view),
            health: Arc::new(health),
        }
    }

    /// What this node believes of `node`'s health (up until heard otherwise).
    pub fn health(&self, node: &NodeId) -> Health {
        self.health.get(node).copied().unwrap_or(Health::Up)
    }

    /// Whether `node` is up as far as this node knows.
    pub fn is_up(&self, node: &NodeId) -> bool {
        self.health(node) == Health::Up
    }

    /// Whether node `me` takes part in the cluster: the ring exists and
    /// `me` neither left nor was removed.
    pub fn active_ring(&self, me: &NodeId) -> Option<&Arc<Ring>> {
        self.ring.as_ref().filter(|_| !self.view.is_fenced(me))
    }

    /// Where keys live as node `me` sees it (`default`'s `n` being
    /// `default_n`), while it takes part in the cluster.
    pub fn placement(&self, me: &NodeId, default_n: usize) -> Option<Placement<'_>> {
        let ring = self.active_ring(me)?;
        Some(Placement::new(ring, &self.view.namespaces, default_n))
    }
}

/// Topologies for the drivers' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::ownership::{Capacity, Ownership};
    use crate::view::{Member, Status};

    pub(crate) fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("a valid id")
    }

    /// A founded cluster of `nodes` (equal weights, N = 3, `q` partitions)
    /// in which `down` are down and `removed` were removed.
    pub(crate) fn topology(nodes: &[&str], down: &[&str], removed: &[&str], q: u32) -> Topology {
        let mut view = View::new("c".into(), q);
        for (i, n) in nodes.iter().enumerate() {
            let status = if removed.contains(n) {
                Status::Removed
            } else {
                Status::Up
            };
            view.members.insert(
                id(n),
                Member {
                    id: id(n),
                    peer_addr: format!("127.0.0.1:{}", 7100 + i),
                    client_addr: format!("127.0.0.1:{}", 7000 + i),
                    weight: 1,
                    status,
                    version: 1,
                },
            );
        }
        let members: Vec<Capacity> = nodes.iter().map(|n| Capacity::new(id(n), 1)).collect();
        view.ownership = Some(Ownership::found(q, &members, 3).expect("a founded table"));
        let health = nodes
            .iter()
            .map(|n| {
                let h = if down.contains(n) {
                    Health::Down
                } else {
                    Health::Up
                };
                (id(n), h)
            })
            .collect();
        Topology::new(view, health)
    }
}

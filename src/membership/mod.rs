//! Membership: who is in the cluster, and the partition ownership table.
//!
//! The view (`crate::view`, a CRDT) is gossiped push-pull with one random
//! peer per interval. A round between nodes whose views agree costs a
//! fingerprint each way; views that differ exchange only the records that
//! differ (`digest`). Each round also probes the peer and carries a few
//! liveness rumors (`crate::liveness`), so neither the bytes nor the work
//! of a round grow with the cluster. Peers that speak protocol 6 still
//! get (and give) whole views and heartbeat counters.
//!
//! Life of a cluster:
//! - *Founding*: a node with no table waits until every seed in its config
//!   is a member of its view, then founds the table from the members it
//!   knows (`Ownership::found`, deterministic). Nodes started together with
//!   the same seed list found identical tables.
//! - *Claiming*: whenever the view changes, a member computes the plan that
//!   balances the table over the active members and begins the moves whose
//!   receiver is itself. Every node only claims for itself, so concurrent
//!   joins rarely collide, and a collision (two claims of one partition at
//!   one epoch) resolves by the merge order; the loser claims again.
//!
//! Outputs are messages to send; the shell does the sending, the timing and
//! the persistence.

use std::collections::{BTreeMap, BTreeSet};

use crate::fencing::Admission;
use crate::liveness::{FailureDetector, Health};
use crate::node::NodeId;
use crate::ring::Ring;
use crate::topology::Topology;
pub use crate::view::{MAX_MEMBERS, Member, Status, View};

mod changes;
mod digest;
mod gossip;
mod messages;

use digest::Known;
pub use digest::{Records, Summary};
pub use messages::{Changed, DIGEST_PROTOCOL, Destination, GossipMsg, Outgoing, SPLIT_PROTOCOL};

/// This node's membership state machine.
#[derive(Debug, Clone)]
pub struct Membership {
    me: NodeId,
    n: usize,
    seeds: Vec<String>,
    known: Known,
    detector: FailureDetector,
    /// Whether this node takes part in the cluster: from the start with
    /// `auto_join` (or a persisted view), else once told to `join`.
    enabled: bool,
    /// This node is stopping and told its peers (`stop`): it gossips no
    /// more and takes no gossip, either of which would tell them it is up.
    stopping: bool,
    /// Whether this node gossips by digest (it speaks protocol 7).
    digests: bool,
    /// The protocol a peer must speak to be sent digests: 8 (whose
    /// summaries and records say their Q) once this node speaks it.
    digest_peers: u8,
    /// Peers that do not (they speak an older protocol): they get pushes.
    legacy: BTreeSet<NodeId>,
    /// The Q this node stores data at (`cluster.partitions`): every view
    /// it takes has at least as many partitions.
    layout: u32,
}

/// The settings membership needs from the node's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub me: Member,
    pub cluster: String,
    pub partitions: u32,
    pub n: usize,
    pub seeds: Vec<String>,
    /// Failure detection timeouts, in milliseconds.
    pub suspect_after: u64,
    pub down_after: u64,
    /// Join (or found) the cluster of the seeds at start-up. Without it, a
    /// fresh node waits for an explicit `join`.
    pub auto_join: bool,
    /// This run's incarnation: above every earlier run's (the shell uses
    /// its wall clock at start, in ms).
    pub incarnation: u64,
    /// The newest protocol version this node speaks.
    pub protocol: u8,
}

impl Membership {
    /// Starts from a persisted view if there is one. This node's own record
    /// is refreshed from the settings (addresses and weight may have changed
    /// in the config) with a higher version.
    pub fn new(settings: Settings, persisted: Option<View>) -> Self {
        let enabled = settings.auto_join || persisted.is_some();
        let mut view =
            persisted.unwrap_or_else(|| View::new(settings.cluster.clone(), settings.partitions));
        let me = settings.me;
        let id = me.id.clone();
        let record = match view.members.get(&id) {
            Some(old) => {
                let mut m = old.clone();
                if (&m.peer_addr, &m.client_addr, m.weight)
                    != (&me.peer_addr, &me.client_addr, me.weight)
                {
                    m.peer_addr = me.peer_addr;
                    m.client_addr = me.client_addr;
                    m.weight = me.weight;
                    m.version += 1;
                }
                m
            }
            None => Member {
                status: Status::Joining,
                version: 1,
                ..me
            },
        };
        view.members.insert(id.clone(), record);
        let seeds = settings
            .seeds
            .into_iter()
            .filter(|s| *s != view.members[&id].peer_addr)
            .collect();
        let mut membership = Membership {
            detector: FailureDetector::new(
                id.clone(),
                settings.suspect_after,
                settings.down_after,
                settings.incarnation,
            ),
            me: id,
            n: settings.n,
            seeds,
            known: Known::new(view),
            enabled,
            stopping: false,
            digests: settings.protocol >= DIGEST_PROTOCOL,
            digest_peers: settings.protocol.min(SPLIT_PROTOCOL),
            legacy: BTreeSet::new(),
            layout: settings.partitions,
        };
        membership.track_members();
        membership.settle();
        membership
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    pub fn view(&self) -> &View {
        self.known.view()
    }

    /// The fingerprint gossip compares: equal views and liveness reports,
    /// equal roots.
    pub fn root(&mut self) -> u64 {
        self.summary().root()
    }

    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.view().members.get(id)
    }

    /// This node's belief about a member's health.
    pub fn health(&self, id: &NodeId) -> Health {
        self.detector.health(id)
    }

    /// This node's belief about every member's health.
    pub fn health_map(&self) -> BTreeMap<NodeId, Health> {
        self.view()
            .members
            .keys()
            .map(|id| (id.clone(), self.detector.health(id)))
            .collect()
    }

    /// Seeds that are not yet known as members.
    fn unknown_seeds(&mut self) -> Vec<String> {
        let known = &mut self.known;
        self.seeds
            .iter()
            .filter(|s| !known.has_peer_addr(s))
            .cloned()
            .collect()
    }

    fn track_members(&mut self) {
        for (id, m) in &self.known.view().members {
            if matches!(m.status, Status::Left | Status::Removed) {
                self.detector.forget(id);
            } else {
                self.detector.track(id);
            }
        }
    }

    /// The view, its ring and this node's belief about every member's
    /// health, for the drivers.
    pub fn topology(&self) -> Topology {
        Topology::new(self.view().clone(), self.health_map())
    }

    /// The ring of the current view, once a table exists.
    pub fn ring(&self) -> Option<Ring> {
        self.view().ring()
    }

    /// Whether this node takes part in the cluster yet.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether this node left or was removed: it takes no part any more
    /// (no gossip, no replicas, no clients) and its id is retired.
    pub fn is_fenced(&self) -> bool {
        self.view().is_fenced(&self.me)
    }

    /// Who this node takes peer requests from, under the current view.
    pub fn admission(&self) -> Admission {
        Admission::new(self.view(), &self.me)
    }
}

#[cfg(test)]
mod tests;

//! Membership: who is in the cluster, and the partition ownership table.
//!
//! The view is a state-based CRDT gossiped push-pull with one random peer per
//! interval: per node a `Member` record (merged by keeping the higher
//! `version`, ties broken by content so every node picks the same) and the
//! `Ownership` table (merged per partition). Every node that has seen the
//! same records holds the same view and computes the same ring.
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

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::check_addr;
use crate::error::{Error, Result};
use crate::node::NodeId;
use crate::ownership::{Capacity, Move, Ownership};
use crate::ring::Ring;

/// Most members a view may hold: bounds what a peer can make us store.
pub const MAX_MEMBERS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Known, receiving its partitions; serves as an extra replica.
    Joining,
    /// Serving its partitions.
    Up,
    /// Handing its partitions to others before it stops.
    Leaving,
    /// Gone after handing everything off.
    Left,
    /// Dropped from the ring by an operator (dead node).
    Removed,
}

impl Status {
    /// Counts for ownership: partitions are planned over these members.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Joining | Status::Up)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Joining => "joining",
            Status::Up => "up",
            Status::Leaving => "leaving",
            Status::Left => "left",
            Status::Removed => "removed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub peer_addr: String,
    pub client_addr: String,
    pub weight: u32,
    pub status: Status,
    /// Bumped on every change of this record; the merge keeps the higher.
    pub version: u64,
}

impl Member {
    /// Whether `self` wins over `other` in the merge.
    fn supersedes(&self, other: &Member) -> bool {
        (
            self.version,
            self.status,
            &self.peer_addr,
            &self.client_addr,
            self.weight,
        ) > (
            other.version,
            other.status,
            &other.peer_addr,
            &other.client_addr,
            other.weight,
        )
    }

    fn validate(&self) -> Result<()> {
        check_addr("peer_addr", &self.peer_addr).map_err(|e| Error::Malformed(e.to_string()))?;
        check_addr("client_addr", &self.client_addr)
            .map_err(|e| Error::Malformed(e.to_string()))?;
        if !(1..=crate::config::MAX_WEIGHT).contains(&self.weight) {
            return Err(Error::Malformed(format!(
                "member {} has weight {}",
                self.id, self.weight
            )));
        }
        Ok(())
    }
}

/// What a node knows about the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub cluster: String,
    pub partitions: u32,
    pub members: BTreeMap<NodeId, Member>,
    pub ownership: Option<Ownership>,
}

impl View {
    pub fn new(cluster: String, partitions: u32) -> Self {
        View {
            cluster,
            partitions,
            members: BTreeMap::new(),
            ownership: None,
        }
    }

    /// Checks a view that arrived from a peer before it is merged.
    pub fn validate(&self, cluster: &str, partitions: u32) -> Result<()> {
        if self.cluster != cluster {
            return Err(Error::Malformed(format!(
                "view of cluster {:?}, not {cluster:?}",
                self.cluster
            )));
        }
        if self.partitions != partitions {
            return Err(Error::Malformed(format!(
                "view with {} partitions, this cluster has {partitions}",
                self.partitions
            )));
        }
        if self.members.len() > MAX_MEMBERS {
            return Err(Error::Malformed(format!(
                "view with {} members",
                self.members.len()
            )));
        }
        for (id, m) in &self.members {
            if *id != m.id {
                return Err(Error::Malformed(format!(
                    "member {} filed under {id}",
                    m.id
                )));
            }
            m.validate()?;
        }
        if let Some(table) = &self.ownership {
            if table.partition_count() != partitions {
                return Err(Error::Malformed("ownership table of another size".into()));
            }
            if let Some(e) = table.entries().iter().find(|e| {
                !self.members.contains_key(&e.owner)
                    || e.next
                        .as_ref()
                        .is_some_and(|n| !self.members.contains_key(n))
            }) {
                return Err(Error::Malformed(format!(
                    "ownership names unknown node {}",
                    e.owner
                )));
            }
        }
        Ok(())
    }

    /// CRDT merge. Returns whether anything changed.
    pub fn merge(&mut self, other: &View) -> Result<bool> {
        let mut changed = false;
        for (id, theirs) in &other.members {
            match self.members.get(id) {
                Some(mine) if !theirs.supersedes(mine) => {}
                _ => {
                    self.members.insert(id.clone(), theirs.clone());
                    changed = true;
                }
            }
        }
        match (&mut self.ownership, &other.ownership) {
            (Some(mine), Some(theirs)) => changed |= mine.merge(theirs)?,
            (None, Some(theirs)) => {
                self.ownership = Some(theirs.clone());
                changed = true;
            }
            (_, None) => {}
        }
        Ok(changed)
    }

    /// Members whose partitions are planned: joining and up.
    pub fn active(&self) -> Vec<Capacity> {
        self.members
            .values()
            .filter(|m| m.status.is_active())
            .map(|m| Capacity::new(m.id.clone(), m.weight))
            .collect()
    }

    pub fn ring(&self) -> Option<Ring> {
        self.ownership.as_ref().map(Ring::new)
    }

    /// The encoding persisted in the node's `meta` keyspace.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding to a Vec cannot fail")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<View> {
        let (view, rest): (View, _) = postcard::take_from_bytes(bytes)
            .map_err(|e| Error::Storage(format!("unreadable membership view: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::Storage(
                "trailing bytes after the membership view".into(),
            ));
        }
        Ok(view)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipMsg {
    /// The sender's view; the receiver merges it and answers with `Reply`
    /// carrying its own (merged) view.
    Push {
        view: View,
    },
    Reply {
        view: View,
    },
}

/// Where a gossip message goes: a known member, or a seed address whose
/// node id is not known yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Node(NodeId),
    Addr(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub to: Destination,
    pub msg: GossipMsg,
}

/// This node's membership state machine.
#[derive(Debug, Clone)]
pub struct Membership {
    me: NodeId,
    n: usize,
    seeds: Vec<String>,
    view: View,
}

/// The settings membership needs from the node's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub me: Member,
    pub cluster: String,
    pub partitions: u32,
    pub n: usize,
    pub seeds: Vec<String>,
}

impl Membership {
    /// Starts from a persisted view if there is one. This node's own record
    /// is refreshed from the settings (addresses and weight may have changed
    /// in the config) with a higher version.
    pub fn new(settings: Settings, persisted: Option<View>) -> Self {
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
            me: id,
            n: settings.n,
            seeds,
            view,
        };
        membership.settle();
        membership
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.view.members.get(id)
    }

    /// Seeds that are not yet known as members.
    fn unknown_seeds(&self) -> Vec<&String> {
        self.seeds
            .iter()
            .filter(|s| !self.view.members.values().any(|m| &m.peer_addr == *s))
            .collect()
    }

    /// One gossip round: push the view to a random peer (a known member, or
    /// a seed not yet known). `rand` is any random number.
    pub fn tick(&mut self, rand: u64) -> Vec<Outgoing> {
        let mut candidates: Vec<Destination> = self
            .view
            .members
            .values()
            .filter(|m| m.id != self.me && !matches!(m.status, Status::Left | Status::Removed))
            .map(|m| Destination::Node(m.id.clone()))
            .collect();
        let unknown: Vec<Destination> = self
            .unknown_seeds()
            .into_iter()
            .map(|s| Destination::Addr(s.clone()))
            .collect();
        // Until every seed is known, contact all of them each round: founding
        // waits for them.
        if self.view.ownership.is_none() && !unknown.is_empty() {
            return unknown
                .into_iter()
                .map(|to| Outgoing {
                    to,
                    msg: GossipMsg::Push {
                        view: self.view.clone(),
                    },
                })
                .collect();
        }
        candidates.extend(unknown);
        if candidates.is_empty() {
            return Vec::new();
        }
        let to = candidates.swap_remove((rand % candidates.len() as u64) as usize);
        vec![Outgoing {
            to,
            msg: GossipMsg::Push {
                view: self.view.clone(),
            },
        }]
    }

    /// Takes a gossip message from `from`. Returns the answer to send (if
    /// any) and whether the view changed.
    pub fn on_gossip(&mut self, from: &NodeId, msg: GossipMsg) -> Result<(Option<Outgoing>, bool)> {
        let (view, push) = match msg {
            GossipMsg::Push { view } => (view, true),
            GossipMsg::Reply { view } => (view, false),
        };
        view.validate(&self.view.cluster, self.view.partitions)?;
        if let Some(claimed) = view.members.get(&self.me) {
            let mine = &self.view.members[&self.me];
            if claimed.supersedes(mine) && claimed.status != Status::Removed {
                // Only this node writes its own record (an operator's remove
                // aside). A newer copy at our own address is our history from
                // before a restart that lost it: outrank it. At another
                // address it is another process using our id.
                if claimed.peer_addr != mine.peer_addr {
                    return Err(Error::Malformed(format!(
                        "{from} holds a newer record for this node at {}: is another process using id {}?",
                        claimed.peer_addr, self.me
                    )));
                }
                let version = claimed.version + 1;
                let me = self
                    .view
                    .members
                    .get_mut(&self.me)
                    .expect("own record is always present");
                me.version = version;
            }
        }
        if let (Some(sender), Some(known)) = (view.members.get(from), self.view.members.get(from))
            && known.peer_addr != sender.peer_addr
            && !sender.supersedes(known)
        {
            return Err(Error::Malformed(format!(
                "{from} claims peer address {} but is known at {}",
                sender.peer_addr, known.peer_addr
            )));
        }
        let changed = self.view.merge(&view)?;
        if changed {
            self.settle();
        }
        let reply = push.then(|| Outgoing {
            to: Destination::Node(from.clone()),
            msg: GossipMsg::Reply {
                view: self.view.clone(),
            },
        });
        Ok((reply, changed))
    }

    /// After a change: found the table if due, then claim what this node
    /// should receive. Returns the moves begun.
    fn settle(&mut self) -> Vec<Move> {
        if self.view.ownership.is_none() {
            if !self.unknown_seeds().is_empty() {
                return Vec::new();
            }
            let members = self.view.active();
            match Ownership::found(self.view.partitions, &members, self.n) {
                Ok(table) => self.view.ownership = Some(table),
                Err(_) => return Vec::new(),
            }
        }
        let moves = self.claim();
        self.mark_up_if_owning();
        moves
    }

    /// Begins the planned moves whose receiver is this node.
    fn claim(&mut self) -> Vec<Move> {
        let active = self.view.active();
        let Some(table) = self.view.ownership.as_mut() else {
            return Vec::new();
        };
        if !active.iter().any(|m| m.node == self.me) {
            return Vec::new();
        }
        let Ok(plan) = table.plan(&active, self.n) else {
            return Vec::new();
        };
        let mine: Vec<Move> = plan.into_iter().filter(|m| m.to == self.me).collect();
        table.begin(&mine);
        mine
    }

    /// A joining node that owns partitions and has nothing in flight to it
    /// is up.
    fn mark_up_if_owning(&mut self) {
        let Some(table) = &self.view.ownership else {
            return;
        };
        let owns = table.entries().iter().any(|e| e.owner == self.me);
        let incoming = !table.incoming(&self.me).is_empty();
        let me = self
            .view
            .members
            .get_mut(&self.me)
            .expect("own record is always present");
        if me.status == Status::Joining && owns && !incoming {
            me.status = Status::Up;
            me.version += 1;
        }
    }

    /// The ring of the current view, once a table exists.
    pub fn ring(&self) -> Option<Ring> {
        self.view.ring()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(i: usize, seeds: &[usize]) -> Settings {
        Settings {
            me: Member {
                id: NodeId::new(format!("n{i}")).unwrap(),
                peer_addr: format!("127.0.0.1:{}", 7100 + i),
                client_addr: format!("127.0.0.1:{}", 7000 + i),
                weight: 1,
                status: Status::Joining,
                version: 0,
            },
            cluster: "test".into(),
            partitions: 64,
            n: 3,
            seeds: seeds
                .iter()
                .map(|s| format!("127.0.0.1:{}", 7100 + s))
                .collect(),
        }
    }

    /// Delivers every message until none are left; addresses resolve to
    /// the node listening there.
    fn run(nodes: &mut [Membership], mut queue: Vec<(NodeId, Outgoing)>) {
        let mut steps = 0;
        while let Some((from, out)) = queue.pop() {
            steps += 1;
            assert!(steps < 10_000, "gossip does not quiesce");
            let to = match &out.to {
                Destination::Node(id) => id.clone(),
                Destination::Addr(a) => nodes
                    .iter()
                    .find(|n| &n.view.members[&n.me].peer_addr == a)
                    .unwrap()
                    .me
                    .clone(),
            };
            let node = nodes.iter_mut().find(|n| n.me == to).unwrap();
            let (reply, _) = node.on_gossip(&from, out.msg).unwrap();
            if let Some(r) = reply {
                queue.push((to, r));
            }
        }
    }

    fn rounds(nodes: &mut [Membership], count: u64) {
        for round in 0..count {
            for i in 0..nodes.len() {
                let me = nodes[i].me.clone();
                let out = nodes[i].tick(round * 7 + i as u64);
                run(nodes, out.into_iter().map(|o| (me.clone(), o)).collect());
            }
        }
    }

    #[test]
    fn nodes_started_with_the_same_seeds_found_identical_tables() {
        let mut nodes: Vec<Membership> = (1..=3)
            .map(|i| Membership::new(settings(i, &[1, 2, 3]), None))
            .collect();
        assert!(
            nodes.iter().all(|n| n.ring().is_none()),
            "no table before the seeds are known"
        );
        rounds(&mut nodes, 3);
        let views: Vec<&View> = nodes.iter().map(|n| n.view()).collect();
        assert!(views.windows(2).all(|w| w[0] == w[1]), "views differ");
        assert!(views[0].members.values().all(|m| m.status == Status::Up));
        let ring = nodes[0].ring().unwrap();
        assert_eq!(ring.owned_counts().len(), 3);
    }

    #[test]
    fn a_lone_node_founds_at_once() {
        let m = Membership::new(settings(1, &[]), None);
        assert!(m.ring().is_some());
        assert_eq!(m.member(m.me()).unwrap().status, Status::Up);
    }

    #[test]
    fn a_later_node_claims_its_share_as_pending_moves() {
        let mut nodes = vec![Membership::new(settings(1, &[]), None)];
        nodes.push(Membership::new(settings(2, &[1]), None));
        rounds(&mut nodes, 3);
        let table = nodes[0].view().ownership.clone().unwrap();
        let incoming = table.incoming(nodes[1].me());
        assert_eq!(
            incoming.len(),
            32,
            "half of 64 partitions, pending until handed off"
        );
        assert_eq!(
            nodes[1].member(nodes[1].me()).unwrap().status,
            Status::Joining
        );
        assert_eq!(nodes[0].view(), nodes[1].view());
    }

    #[test]
    fn a_restart_keeps_the_view_and_refreshes_its_record() {
        let m = Membership::new(settings(1, &[]), None);
        let persisted = m.view().clone();
        let mut s = settings(1, &[]);
        s.me.client_addr = "127.0.0.1:9999".into();
        let again = Membership::new(s, Some(persisted.clone()));
        let rec = again.member(again.me()).unwrap();
        assert_eq!(rec.client_addr, "127.0.0.1:9999");
        assert!(rec.version > persisted.members[again.me()].version);
        assert_eq!(again.view().ownership, persisted.ownership);
    }

    #[test]
    fn a_stale_own_record_after_a_restart_is_outranked() {
        let mut a = Membership::new(settings(1, &[]), None);
        let mut gossip = a.view().clone();
        gossip.members.get_mut(a.me()).unwrap().version += 3;
        let stale_version = gossip.members[a.me()].version;
        let from = NodeId::new("n2").unwrap();
        a.on_gossip(&from, GossipMsg::Push { view: gossip })
            .unwrap();
        assert!(a.member(a.me()).unwrap().version > stale_version);
        assert_eq!(a.member(a.me()).unwrap().status, Status::Up);
    }

    #[test]
    fn bad_gossip_is_rejected_and_leaves_the_view_alone() {
        let mut a = Membership::new(settings(1, &[]), None);
        let before = a.view().clone();
        let from = NodeId::new("n9").unwrap();

        let mut other_cluster = before.clone();
        other_cluster.cluster = "else".into();
        assert!(
            a.on_gossip(
                &from,
                GossipMsg::Push {
                    view: other_cluster
                }
            )
            .is_err()
        );

        let mut impersonation = before.clone();
        let me = impersonation.members.get_mut(a.me()).unwrap();
        me.version += 5;
        me.peer_addr = "10.0.0.9:7101".into();
        assert!(
            a.on_gossip(
                &from,
                GossipMsg::Push {
                    view: impersonation
                }
            )
            .is_err()
        );

        let mut bad_addr = before.clone();
        bad_addr.members.insert(
            from.clone(),
            Member {
                id: from.clone(),
                peer_addr: "nowhere".into(),
                client_addr: "127.0.0.1:1".into(),
                weight: 1,
                status: Status::Up,
                version: 1,
            },
        );
        assert!(
            a.on_gossip(&from, GossipMsg::Push { view: bad_addr })
                .is_err()
        );

        let mut wrong_q = before.clone();
        wrong_q.partitions = 128;
        assert!(
            a.on_gossip(&from, GossipMsg::Push { view: wrong_q })
                .is_err()
        );
        assert_eq!(a.view(), &before);
    }
}

//! The membership view: every member's record and the ownership table.
//!
//! A `View` is a state-based CRDT: per node a `Member` record, merged by
//! keeping the higher `version` (ties broken by content, so every node picks
//! the same), and the `Ownership` table, merged per partition. Every node
//! that has seen the same records holds the same view and computes the same
//! ring. Views arrive from peers, so `validate` bounds and checks them
//! before they are merged.
//!
//! Leaving the cluster is final. A record that says `Left` or `Removed`
//! wins over every record that does not, whatever their versions: a
//! removed node that comes back with an old view (where it was up, perhaps
//! at a higher version than the operator's remove saw) cannot undo its
//! removal. Such a member is *fenced*: every node refuses its traffic, and
//! the node itself stops taking part once it learns. Its id is retired; a
//! machine rejoins with an empty data directory and a new id.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::check_addr;
use crate::error::{Error, Result};
use crate::namespace;
use crate::node::NodeId;
use crate::ownership::{Capacity, Ownership};
use crate::partition::validate_partition_count;
use crate::ring::Ring;

/// Most members a view may hold: bounds what a peer can make us store.
pub const MAX_MEMBERS: usize = 4096;

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

    /// Still a running member (not gone for good).
    pub fn is_live(self) -> bool {
        !self.is_final()
    }

    /// Gone for good (left or removed): a final status wins every merge.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Left | Status::Removed)
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
    /// Whether `self` wins over `other` in the merge: a final status (left,
    /// removed) over any other, then the higher version.
    pub fn supersedes(&self, other: &Member) -> bool {
        (
            self.status.is_final(),
            self.version,
            self.status,
            &self.peer_addr,
            &self.client_addr,
            self.weight,
        ) > (
            other.status.is_final(),
            other.version,
            other.status,
            &other.peer_addr,
            &other.client_addr,
            other.weight,
        )
    }

    pub fn validate(&self) -> Result<()> {
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
    /// The cluster's namespaces (`crate::namespace`), merged like the rest.
    pub namespaces: namespace::Table,
}

/// A view as protocol version 1 stored it, before namespaces: read from
/// disk once, then written back in the current layout.
#[derive(Deserialize)]
struct ViewV1 {
    cluster: String,
    partitions: u32,
    members: BTreeMap<NodeId, Member>,
    ownership: Option<Ownership>,
}

impl View {
    /// Refuses `node`'s leave if it would leave fewer serving members than
    /// some namespace's `n` (as Cassandra refuses a decommission below a
    /// keyspace's replication factor): its keys would lose a replica for
    /// good. Lowering that `n` first allows it.
    pub fn check_leave(&self, node: &NodeId) -> Result<()> {
        let staying = self
            .members
            .values()
            .filter(|m| m.status.is_active() && m.id != *node)
            .count();
        match self
            .namespaces
            .live()
            .find(|(_, s)| usize::from(s.n) > staying)
        {
            Some((name, settings)) => Err(Error::InvalidRequest(format!(
                "leaving would leave {staying} serving members, fewer than namespace {name}'s n = {}: lower it first (dynakv ns alter {name} --n {staying})",
                settings.n
            ))),
            None => Ok(()),
        }
    }

    pub fn new(cluster: String, partitions: u32) -> Self {
        View {
            cluster,
            partitions,
            members: BTreeMap::new(),
            ownership: None,
            namespaces: namespace::Table::default(),
        }
    }

    /// Checks a view that arrived from a peer before it is merged. Its Q
    /// may be any the cluster can have reached from `layout`, the Q this
    /// node stores its data at (`cluster.partitions`): that one doubled
    /// by splits, never less.
    pub fn validate(&self, cluster: &str, layout: u32) -> Result<()> {
        if self.cluster != cluster {
            return Err(Error::Malformed(format!(
                "view of cluster {:?}, not {cluster:?}",
                self.cluster
            )));
        }
        validate_partition_count(self.partitions).map_err(|e| Error::Malformed(e.to_string()))?;
        if self.partitions < layout {
            return Err(Error::Malformed(format!(
                "view with {} partitions, fewer than this node's cluster.partitions = {layout}",
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
        self.namespaces.validate()?;
        if let Some(table) = &self.ownership {
            if table.partition_count() != self.partitions {
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

    /// Doubles Q (`dynakv cluster split`): each partition becomes its two
    /// halves, owned and replicated as it was.
    pub fn split(&mut self) -> Result<()> {
        let Some(table) = &self.ownership else {
            return Err(Error::InvalidRequest(
                "the cluster is not founded yet: set cluster.partitions instead".into(),
            ));
        };
        let table = table.split()?;
        self.partitions = table.partition_count();
        self.ownership = Some(table);
        Ok(())
    }

    /// CRDT merge. The larger Q of a founded table wins (the other view's
    /// table is taken as split to it); a view without one says only its
    /// node's configuration, which never splits a cluster. Returns whether
    /// anything changed.
    pub fn merge(&mut self, other: &View) -> Result<bool> {
        let mut changed = false;
        if other.partitions > self.partitions && other.ownership.is_some() {
            if let Some(table) = &self.ownership {
                self.ownership = Some(table.split_to(other.partitions)?);
            }
            self.partitions = other.partitions;
            changed = true;
        }
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
                self.ownership = Some(theirs.split_to(self.partitions)?);
                changed = true;
            }
            (_, None) => {}
        }
        changed |= self.namespaces.merge(&other.namespaces);
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

    /// Whether `id` is fenced out: the view says it left or was removed, so
    /// its traffic is refused (it may come back with stale data) and, if it
    /// is this node, it takes no part any more.
    pub fn is_fenced(&self, id: &NodeId) -> bool {
        self.members.get(id).is_some_and(|m| m.status.is_final())
    }

    /// Whether `id` has no part in the cluster any more: it left or was
    /// removed, or it is leaving and owns nothing, now or in flight. (A
    /// node stops once it has left, so the others may never hear that it
    /// did: a leaver the ring no longer names counts as gone.)
    pub fn has_departed(&self, id: &NodeId) -> bool {
        let Some(m) = self.members.get(id) else {
            return false;
        };
        match m.status {
            Status::Left | Status::Removed => true,
            Status::Leaving => self.ownership.as_ref().is_some_and(|t| {
                !t.entries()
                    .iter()
                    .any(|e| e.owner == *id || e.next.as_ref() == Some(id))
            }),
            Status::Joining | Status::Up => false,
        }
    }

    /// A fingerprint of the whole view (members and ownership): equal views
    /// have equal digests, and any change gives another one (but for a
    /// 64-bit collision). Clients compare it to learn that their copy of
    /// the ring is stale.
    pub fn digest(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.to_bytes())
    }

    /// The encoding persisted in the node's `meta` keyspace.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding to a Vec cannot fail")
    }

    /// Decodes a persisted view, in the current layout or in version 1's
    /// (which has no namespaces and ends where the current one has more).
    pub fn from_bytes(bytes: &[u8]) -> Result<View> {
        let decoded = postcard::take_from_bytes::<View>(bytes).or_else(|e| {
            postcard::take_from_bytes::<ViewV1>(bytes)
                .map(|(v, rest)| {
                    let view = View {
                        cluster: v.cluster,
                        partitions: v.partitions,
                        members: v.members,
                        ownership: v.ownership,
                        namespaces: namespace::Table::default(),
                    };
                    (view, rest)
                })
                .map_err(|_| e)
        });
        let (view, rest) =
            decoded.map_err(|e| Error::Storage(format!("unreadable membership view: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::Storage(
                "trailing bytes after the membership view".into(),
            ));
        }
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn member(i: usize, status: Status) -> Member {
        Member {
            id: NodeId::new(format!("n{i}")).unwrap(),
            peer_addr: format!("127.0.0.1:{}", 7100 + i),
            client_addr: format!("127.0.0.1:{}", 7000 + i),
            weight: 1,
            status,
            version: 1,
        }
    }

    #[test]
    fn a_view_persisted_before_namespaces_still_loads() {
        #[derive(Serialize)]
        struct V1<'a> {
            cluster: &'a str,
            partitions: u32,
            members: &'a BTreeMap<NodeId, Member>,
            ownership: &'a Option<Ownership>,
        }
        let mut view = View::new("c".into(), 16);
        for i in 0..3 {
            let m = member(i, Status::Up);
            view.members.insert(m.id.clone(), m);
        }
        view.ownership = Some(Ownership::found(16, &view.active(), 3).unwrap());
        let old = postcard::to_stdvec(&V1 {
            cluster: &view.cluster,
            partitions: view.partitions,
            members: &view.members,
            ownership: &view.ownership,
        })
        .unwrap();
        assert_eq!(View::from_bytes(&old).unwrap(), view);
        assert_eq!(View::from_bytes(&view.to_bytes()).unwrap(), view);
        assert!(View::from_bytes(&old[..old.len() - 1]).is_err());
    }

    #[test]
    fn a_leaver_has_departed_once_the_ring_no_longer_names_it() {
        let mut view = View::new("c".into(), 16);
        for i in 0..4 {
            let m = member(i, Status::Up);
            view.members.insert(m.id.clone(), m);
        }
        view.ownership = Some(Ownership::found(16, &view.active(), 3).unwrap());
        let leaver = member(3, Status::Up).id;
        assert!(!view.has_departed(&leaver));

        // Leaving: its partitions are planned away, moving but not moved.
        view.members.get_mut(&leaver).unwrap().status = Status::Leaving;
        let active = view.active();
        let table = view.ownership.as_mut().unwrap();
        let moves = table.plan(&active, 3).unwrap();
        assert!(moves.iter().all(|m| m.from == leaver) && !moves.is_empty());
        table.begin(&moves);
        assert!(!view.has_departed(&leaver), "it still sends partitions");

        // Every receiver committed: the ring no longer names it.
        for to in moves.iter().map(|m| m.to.clone()).collect::<BTreeSet<_>>() {
            let table = view.ownership.as_mut().unwrap();
            let incoming = table.incoming(&to);
            table.commit(&to, &incoming);
        }
        assert!(view.has_departed(&leaver));

        for status in [Status::Left, Status::Removed] {
            let mut gone = member(0, status);
            gone.id = NodeId::new("gone").unwrap();
            view.members.insert(gone.id.clone(), gone.clone());
            assert!(view.has_departed(&gone.id), "{status:?}");
        }
        assert!(!view.has_departed(&NodeId::new("stranger").unwrap()));
        assert!(!view.has_departed(&member(0, Status::Up).id));
    }
}

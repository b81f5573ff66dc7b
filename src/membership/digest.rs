//! Gossip by digest: a round between two nodes whose views agree costs a
//! fingerprint each way, whatever the cluster's size, and one between
//! views that differ sends only the records that differ.
//!
//! The view's records are cut into buckets: members by a hash of their
//! id, the liveness reports (`crate::liveness`) likewise, the namespace
//! table as one, and the ownership table into up to `MAX_CHUNKS` runs of
//! consecutive partitions. A `Summary` holds a hash
//! per bucket, and its `root` hashes those. A round (`GossipMsg`):
//! 1. `Digest`: the root. Equal roots: `Agree`, done.
//! 2. else the receiver answers with its `Summary`;
//! 3. the first sends its `Records` in the buckets that differ;
//! 4. the second merges them and answers with its own records in those
//!    buckets (`Delta`), which the first merges.
//!
//! Both then hold the join of the two views in every bucket that differed,
//! as a whole-view exchange would have left them.
//!
//! Summaries and records say the Q their table has (from protocol 8; 0
//! from an older peer: the receiver's own). Views of two Qs differ in
//! every chunk, so a round between them sends both tables whole, and the
//! one of fewer partitions is split to the other's as it is merged
//! (`View::merge`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::liveness::Report;
use crate::namespace;
use crate::node::NodeId;
use crate::ownership::{Assignment, Ownership};
use crate::view::{MAX_MEMBERS, Member, View};

/// Buckets the members are hashed into.
pub const MEMBER_BUCKETS: usize = 64;

/// Most chunks the ownership table is cut into.
pub const MAX_CHUNKS: usize = 256;

/// Where the reports' buckets start (as many as the members').
const REPORTS: usize = MEMBER_BUCKETS;

/// Where the namespace table's bucket is; the chunks follow it.
const NAMESPACES: usize = REPORTS + MEMBER_BUCKETS;

const SEED: u64 = 0x6479_6e61_6b76_0007;

/// A hash per bucket of a view and its liveness reports: members', the
/// reports', the namespace table's, then the ownership table's chunks
/// (none before the table is founded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub buckets: Vec<u64>,
    /// The Q of the table summarised (0 from a peer of protocol 7).
    #[serde(with = "crate::protocol::since_8")]
    pub partitions: u32,
}

/// A view's records in some buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    pub members: Vec<Member>,
    pub reports: Vec<(NodeId, Report)>,
    pub namespaces: Option<namespace::Table>,
    /// Ownership entries, by partition at `partitions`.
    pub entries: Vec<(u32, Assignment)>,
    /// The Q of the sender's table (0 from a peer of protocol 7).
    #[serde(with = "crate::protocol::since_8")]
    pub partitions: u32,
}

/// The Q a peer's summary or records are at, checked against this node's
/// layout (`View::validate`'s rule); 0 (a peer of protocol 7) is `mine`.
fn peer_partitions(said: u32, layout: u32, mine: u32) -> Result<u32> {
    let q = if said == 0 { mine } else { said };
    crate::partition::validate_partition_count(q).map_err(|e| Error::Malformed(e.to_string()))?;
    if q < layout {
        return Err(Error::Malformed(format!(
            "a view of {q} partitions, fewer than this node's cluster.partitions = {layout}"
        )));
    }
    Ok(q)
}

fn member_bucket(id: &NodeId) -> usize {
    (xxhash_rust::xxh3::xxh3_64_with_seed(id.as_str().as_bytes(), SEED) % MEMBER_BUCKETS as u64)
        as usize
}

/// How many partitions each chunk of a table of `q` holds.
fn chunk_len(q: u32) -> usize {
    (q as usize / MAX_CHUNKS).max(1)
}

/// How many buckets a founded view of `q` partitions has.
fn buckets_of(q: u32) -> usize {
    NAMESPACES + 1 + q as usize / chunk_len(q)
}

fn hash<T: Serialize + ?Sized>(value: &T) -> u64 {
    let bytes = postcard::to_stdvec(value).expect("encoding to a Vec cannot fail");
    xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, SEED)
}

/// The hashes of a view's buckets, reports' aside: members', then the
/// namespace table's and the chunks'.
fn view_hashes(view: &View) -> Vec<u64> {
    let mut members: Vec<Vec<&Member>> = vec![Vec::new(); MEMBER_BUCKETS];
    for m in view.members.values() {
        members[member_bucket(&m.id)].push(m);
    }
    let mut hashes: Vec<u64> = members.iter().map(hash).collect();
    hashes.push(hash(&view.namespaces));
    if let Some(table) = &view.ownership {
        let len = chunk_len(view.partitions);
        hashes.extend(table.entries().chunks(len).map(hash));
    }
    hashes
}

/// The hashes of the reports' buckets (`reports` in id order).
fn report_hashes(reports: &[(NodeId, Report)]) -> Vec<u64> {
    let mut buckets: Vec<Vec<&(NodeId, Report)>> = vec![Vec::new(); MEMBER_BUCKETS];
    for r in reports {
        buckets[member_bucket(&r.0)].push(r);
    }
    buckets.iter().map(hash).collect()
}

impl Summary {
    /// The summary of `view` and `reports` (in id order), worked out whole
    /// (`Known::summary` keeps its parts between changes).
    #[cfg(test)]
    pub fn of(view: &View, reports: &[(NodeId, Report)]) -> Summary {
        Summary::assemble(&view_hashes(view), &report_hashes(reports), view.partitions)
    }

    fn assemble(view: &[u64], reports: &[u64], partitions: u32) -> Summary {
        let mut buckets = Vec::with_capacity(view.len() + reports.len());
        buckets.extend_from_slice(&view[..MEMBER_BUCKETS]);
        buckets.extend_from_slice(reports);
        buckets.extend_from_slice(&view[MEMBER_BUCKETS..]);
        Summary {
            buckets,
            partitions,
        }
    }

    /// The fingerprint of the whole view and of the reports.
    pub fn root(&self) -> u64 {
        hash(&self.buckets)
    }

    /// Checks a summary from a peer, for a node of `layout` whose view
    /// has `mine` partitions.
    pub fn check(&self, layout: u32, mine: u32) -> Result<()> {
        let q = peer_partitions(self.partitions, layout, mine)?;
        let bare = NAMESPACES + 1;
        let full = buckets_of(q);
        if self.buckets.len() != bare && self.buckets.len() != full {
            return Err(Error::Malformed(format!(
                "a view summary of {} buckets, not {bare} or {full}",
                self.buckets.len()
            )));
        }
        Ok(())
    }

    /// Checks the bucket numbers a peer asks for, in a cluster of `q`
    /// partitions.
    pub fn check_buckets(buckets: &[u32], q: u32) -> Result<()> {
        let len = buckets_of(q);
        match buckets.iter().find(|&&b| b as usize >= len) {
            Some(b) => Err(Error::Malformed(format!("view bucket {b} of {len}"))),
            None if buckets.len() > len => {
                Err(Error::Malformed(format!("{} view buckets", buckets.len())))
            }
            None => Ok(()),
        }
    }

    /// The buckets where the two differ (a table one side lacks differs
    /// whole).
    pub fn differing(&self, other: &Summary) -> Vec<u32> {
        let len = self.buckets.len().max(other.buckets.len());
        (0..len)
            .filter(|&i| self.buckets.get(i) != other.buckets.get(i))
            .map(|i| i as u32)
            .collect()
    }
}

impl Records {
    /// `view`'s records and `reports` (in id order) in `buckets`.
    pub fn of(view: &View, reports: &[(NodeId, Report)], buckets: &[u32]) -> Records {
        let mut wanted = [false; MEMBER_BUCKETS];
        let mut wanted_reports = [false; MEMBER_BUCKETS];
        let mut records = Records::default();
        let len = chunk_len(view.partitions);
        records.partitions = view.partitions;
        for &b in buckets {
            let b = b as usize;
            if b < REPORTS {
                wanted[b] = true;
            } else if b < NAMESPACES {
                wanted_reports[b - REPORTS] = true;
            } else if b == NAMESPACES {
                records.namespaces = Some(view.namespaces.clone());
            } else if let Some(table) = &view.ownership {
                let first = (b - NAMESPACES - 1) * len;
                let chunk = table.entries().iter().enumerate().skip(first).take(len);
                records
                    .entries
                    .extend(chunk.map(|(p, e)| (p as u32, e.clone())));
            }
        }
        records.members = view
            .members
            .values()
            .filter(|m| wanted[member_bucket(&m.id)])
            .cloned()
            .collect();
        records.reports = reports
            .iter()
            .filter(|(id, _)| wanted_reports[member_bucket(id)])
            .cloned()
            .collect();
        records
    }

    /// Checks the bounds of records from a peer, for a node of `layout`
    /// whose view has `mine` partitions (`View::validate` checks the view
    /// they make). Returns the Q they are at.
    pub fn check(&self, layout: u32, mine: u32) -> Result<u32> {
        let q = peer_partitions(self.partitions, layout, mine)?;
        if self.members.len() > MAX_MEMBERS
            || self.reports.len() > MAX_MEMBERS
            || self.entries.len() > q as usize
        {
            return Err(Error::Malformed(format!(
                "{} member records, {} reports and {} ownership entries",
                self.members.len(),
                self.reports.len(),
                self.entries.len()
            )));
        }
        if let Some((p, _)) = self.entries.iter().find(|(p, _)| *p >= q) {
            return Err(Error::Malformed(format!(
                "ownership of partition {p} of {q}"
            )));
        }
        Ok(q)
    }

    /// The member records by id (the last of any id given twice).
    pub fn member_map(&self) -> BTreeMap<NodeId, Member> {
        self.members
            .iter()
            .map(|m| (m.id.clone(), m.clone()))
            .collect()
    }

    /// Merges the records, checked to be at `q` partitions, into `view`
    /// (as `View::merge` would the view they came from); the reports are
    /// the failure detector's to merge. Entries of a table `view` lacks
    /// count only when they are the whole table. Returns whether anything
    /// changed.
    pub fn merge_into(&self, view: &mut View, q: u32) -> Result<bool> {
        let mut changed = false;
        // Only a table's entries raise Q: a view without one says only its
        // node's configuration, which never splits a cluster.
        if q > view.partitions && !self.entries.is_empty() {
            if let Some(table) = &view.ownership {
                view.ownership = Some(table.split_to(q)?);
            }
            view.partitions = q;
            changed = true;
        }
        for theirs in &self.members {
            match view.members.get(&theirs.id) {
                Some(mine) if !theirs.supersedes(mine) => {}
                _ => {
                    view.members.insert(theirs.id.clone(), theirs.clone());
                    changed = true;
                }
            }
        }
        if let Some(namespaces) = &self.namespaces {
            changed |= view.namespaces.merge(namespaces);
        }
        match &mut view.ownership {
            Some(table) => changed |= table.merge_entries(q, &self.entries),
            None if q == view.partitions && self.entries.len() == q as usize => {
                let mut entries = self.entries.clone();
                entries.sort_by_key(|(p, _)| *p);
                entries.dedup_by_key(|(p, _)| *p);
                if entries.len() == view.partitions as usize {
                    let table = entries.into_iter().map(|(_, e)| e).collect();
                    view.ownership = Some(Ownership::from_entries(table)?);
                    changed = true;
                }
            }
            None => {}
        }
        Ok(changed)
    }
}

/// The view, with the hashes of its buckets worked out once per change
/// (every change goes through `edit`, which forgets them) and those of
/// the reports once per change of theirs.
#[derive(Debug, Clone)]
pub struct Known {
    view: View,
    view_hashes: Option<Vec<u64>>,
    /// The members still in the cluster (not left or removed), in id
    /// order, and every member's peer address.
    live: Option<Vec<NodeId>>,
    peer_addrs: Option<BTreeSet<String>>,
    /// The reports' hashes, and the detector's `changes` they were taken at.
    report_hashes: Option<(u64, Vec<u64>)>,
}

impl Known {
    pub fn new(view: View) -> Self {
        Known {
            view,
            view_hashes: None,
            live: None,
            peer_addrs: None,
            report_hashes: None,
        }
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    pub fn edit(&mut self) -> &mut View {
        self.view_hashes = None;
        self.live = None;
        self.peer_addrs = None;
        &mut self.view
    }

    /// The members still in the cluster (not left or removed), in id
    /// order.
    pub fn live(&mut self) -> &[NodeId] {
        let view = &self.view;
        self.live.get_or_insert_with(|| {
            view.members
                .values()
                .filter(|m| m.status.is_live())
                .map(|m| m.id.clone())
                .collect()
        })
    }

    /// Whether some member has this peer address.
    pub fn has_peer_addr(&mut self, addr: &str) -> bool {
        let view = &self.view;
        self.peer_addrs
            .get_or_insert_with(|| view.members.values().map(|m| m.peer_addr.clone()).collect())
            .contains(addr)
    }

    /// The summary of the view and of `reports` (in id order), which
    /// stand as of the detector's `changes`.
    pub fn summary(
        &mut self,
        reports: impl FnOnce() -> Vec<(NodeId, Report)>,
        changes: u64,
    ) -> Summary {
        let view = self
            .view_hashes
            .get_or_insert_with(|| view_hashes(&self.view));
        let fresh = matches!(&self.report_hashes, Some((at, _)) if *at == changes);
        if !fresh {
            self.report_hashes = Some((changes, report_hashes(&reports())));
        }
        let (_, hashes) = self.report_hashes.as_ref().expect("just worked out");
        Summary::assemble(view, hashes, self.view.partitions)
    }
}

#[cfg(test)]
mod tests;

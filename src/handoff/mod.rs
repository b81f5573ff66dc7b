//! Handoff: moving whole partitions when ownership changes.
//!
//! A node keeps track of the home partitions it holds a full copy of (the
//! partitions it replicated when the cluster was founded, and those it
//! fetched since). Any other partition it replicates, now or once in-flight
//! moves complete, it fetches, in checksummed chunks (a range scan on the
//! source), from a current replica. That covers a joining node's new
//! partitions, a node that inherits a leaver's, and a node that becomes a
//! replica because *another* node's move shifted a preference list. While a
//! node fetches, coordinators also send it every new write of the partitions
//! moving to it (an extra, pending replica whose acknowledgement does not
//! count toward W). Once it holds everything, it commits its moves and owns
//! them.
//!
//! A node that holds a home partition it no longer replicates (it gave the
//! partition away, left, or received a stray late write) *releases* it:
//! it synchronises the partition with every current replica (an
//! anti-entropy exchange each that pushes and takes nothing) and only then
//! drops its copy, and only if nothing was written to it since the first
//! exchange began (a coordinator with an older ring may still send it a
//! write, which would then reach only the later replicas); otherwise it
//! synchronises again. So a write any replica acknowledged is on the new
//! replicas before the old copy goes.
//!
//! With namespaces of their own `n`, a node holds a partition if it is
//! among the first `extent` (the largest `n`) of its walk, and of it only
//! the namespaces whose `n` reaches its position (`crate::placement`): a
//! fetch keeps only those, and what it holds beyond them (a lowered `n`,
//! a move that pushed it deeper into the walk) is released the same way
//! as a whole partition: synchronised with the replicas of those
//! namespaces, then dropped.
//!
//! Fetch progress is kept per partition (last key received), persisted by
//! the shell, so a fetch interrupted by a crash of either side resumes where
//! it stopped.
//!
//! When Q doubles, each partition's progress passes to both its children:
//! a partition is fetched in key order, so the last key received of the
//! parent is one of each child too. A fetch names its Q, and a source at
//! another refuses it; an answer that arrives after the driver's Q
//! changed is dropped, and so is a list of held partitions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod driver;
pub use driver::{HandoffDriver, HandoffSettings, HandoffWork, Totals};

use crate::error::{Error, Result};
use crate::node::NodeId;
use crate::ownership::Capacity;
use crate::partition::Partition;
use crate::placement::{Placement, Scope};
use crate::replica::Replica;
use crate::ring::Ring;
use crate::store::Store;
use crate::version::SiblingSet;
use crate::view::{Status, View};

/// Messages of the handoff concern (`PeerMsg::Handoff`). Variants are only
/// ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandoffMsg {
    /// Up to `limit` keys of home partition `partition` after `after`
    /// (None: from its start).
    Fetch {
        partition: Partition,
        after: Option<Vec<u8>>,
        limit: u32,
        /// The Q `partition` is at (0 from a node of protocol 7: the
        /// source's).
        #[serde(with = "crate::protocol::since_8")]
        partitions: u32,
    },
    /// A chunk of a partition, in key order. `checksum` is the CRC-32 of the
    /// entries' encoding; `last` says the partition ends here.
    Chunk {
        entries: Vec<(Vec<u8>, SiblingSet)>,
        checksum: u32,
        last: bool,
    },
}

impl HandoffMsg {
    pub fn chunk(entries: Vec<(Vec<u8>, SiblingSet)>, last: bool) -> Self {
        HandoffMsg::Chunk {
            checksum: checksum(&entries),
            entries,
            last,
        }
    }
}

fn checksum(entries: &[(Vec<u8>, SiblingSet)]) -> u32 {
    crc32fast::hash(&postcard::to_stdvec(entries).expect("encoding to a Vec cannot fail"))
}

/// Most keys a peer may ask for in one chunk: bounds what a fetch makes
/// the source read and send.
pub const MAX_CHUNK_KEYS: u32 = 4096;

/// The source's side: answers a fetch from the local replica (the chunk
/// asked for, at most `MAX_CHUNK_KEYS` keys).
pub fn respond<S: Store>(local: &Replica<S>, msg: HandoffMsg) -> Result<HandoffMsg> {
    match msg {
        HandoffMsg::Fetch {
            partition,
            after,
            limit,
            partitions,
        } => {
            if partitions != 0 {
                local.check_partitions(partitions)?;
            }
            if partition.0 >= local.partition_count() {
                return Err(Error::Malformed(format!(
                    "partition {partition} out of range"
                )));
            }
            let limit = limit.clamp(1, MAX_CHUNK_KEYS) as usize;
            let (entries, last) = local.chunk(partition, after.as_deref(), limit)?;
            Ok(HandoffMsg::chunk(entries, last))
        }
        HandoffMsg::Chunk { .. } => Err(Error::InvalidRequest(
            "a chunk is an answer, not a request".into(),
        )),
    }
}

/// Checks a received chunk: the checksum, and that every key belongs to
/// `partition` and comes after `after`, in order.
pub fn verify_chunk(
    entries: &[(Vec<u8>, SiblingSet)],
    sum: u32,
    partition: Partition,
    after: Option<&[u8]>,
    q: u32,
) -> Result<()> {
    let actual = checksum(entries);
    if actual != sum {
        return Err(Error::ChecksumMismatch {
            expected: sum,
            actual,
        });
    }
    let mut previous = after;
    for (key, _) in entries {
        if Partition::of_key(key, q) != partition {
            return Err(Error::Malformed(
                "handoff chunk holds a key of another partition".into(),
            ));
        }
        if previous.is_some_and(|p| key.as_slice() <= p) {
            return Err(Error::Malformed("handoff chunk out of key order".into()));
        }
        previous = Some(key);
    }
    Ok(())
}

/// Home partitions `me` must fetch: it replicates them, now or once
/// in-flight moves complete, and holds no full copy yet.
pub fn to_fetch(ring: &Ring, me: &NodeId, n: usize, progress: &Progress) -> Vec<Partition> {
    ring.replicated_by(me, n)
        .into_iter()
        .filter(|&p| !progress.is_done(p))
        .collect()
}

/// Of what `me` holds (each partition with the namespaces it holds keys
/// of), what it replicates neither now nor once in-flight moves complete,
/// in partitions that are not moving: per partition, the namespaces whose
/// copies go once synchronised with their replicas (every one, when `me`
/// no longer replicates the partition at all).
pub fn to_release(
    place: &Placement,
    me: &NodeId,
    held: &[(Partition, Vec<String>)],
) -> Vec<(Partition, Vec<String>)> {
    held.iter()
        .filter_map(|(p, names)| {
            let surplus = place.surplus(*p, me, names);
            (!surplus.is_empty()).then(|| (*p, surplus.into_iter().map(String::from).collect()))
        })
        .collect()
}

/// What a node's handoff does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Stream the next chunk of `partition` from `from`, after `after`.
    Fetch {
        partition: Partition,
        from: NodeId,
        after: Option<Vec<u8>>,
    },
    /// A partition is due but no current replica is up to send it.
    Wait,
    /// Every incoming partition is here: commit the incoming moves.
    Commit,
    /// Synchronise the namespaces `release` in `partition` with each of
    /// `replicas` (over those of them it holds), then drop them.
    Release {
        partition: Partition,
        release: Vec<String>,
        replicas: Vec<(NodeId, Scope)>,
    },
    /// A leaving node that owns and holds nothing: it has left.
    Leave,
    Idle,
}

/// The fetch half of the next step: `Fetch`, `Wait` or `Commit`, or None
/// when there is nothing to fetch or commit (go on to `release_step`).
/// `progress` is brought up to date with the ring: a member of the founding
/// ring (or one that lost its records) that is up adopts what it
/// replicates as here, and anti-entropy repairs whatever is not.
pub fn fetch_step(
    view: &View,
    place: &Placement,
    me: &NodeId,
    progress: &mut Progress,
    is_up: impl Fn(&NodeId) -> bool,
) -> Option<Next> {
    let (ring, n) = (place.ring, place.extent());
    progress.split_to(ring.partition_count());
    let status = view.members.get(me).map(|m| m.status);
    if progress.is_empty() && status == Some(Status::Up) {
        progress.adopt(ring, me, n);
    }
    progress.retain(&ring.replicated_by(me, n));
    if let Some(&p) = to_fetch(ring, me, n, progress).first() {
        let source = ring
            .preference_list(p, n)
            .into_iter()
            .find(|s| *s != me && is_up(s));
        return Some(match source {
            Some(from) => Next::Fetch {
                partition: p,
                from: from.clone(),
                after: match progress.get(p) {
                    Some(Fetched::Upto(k)) => Some(k.clone()),
                    _ => None,
                },
            },
            None => Next::Wait,
        });
    }
    let incoming = view
        .ownership
        .as_ref()
        .is_some_and(|o| !o.incoming(me).is_empty());
    incoming.then_some(Next::Commit)
}

/// The release half, given what this node `held` (each partition with
/// its namespaces): release what it no longer replicates of one partition
/// once all the replicas of those namespaces are up, or finish a leave.
pub fn release_step(
    view: &View,
    place: &Placement,
    me: &NodeId,
    held: &[(Partition, Vec<String>)],
    is_up: impl Fn(&NodeId) -> bool,
) -> Next {
    for (partition, release) in to_release(place, me, held) {
        let deepest = release
            .iter()
            .map(|name| place.n_of(name))
            .max()
            .unwrap_or(0);
        let replicas = place.ring.preference_list(partition, deepest);
        if !replicas.iter().all(|r| is_up(r)) {
            continue;
        }
        let scope = Scope::only(release.iter().map(String::as_str));
        let replicas = replicas
            .into_iter()
            .filter(|r| *r != me)
            .filter_map(|r| {
                let theirs = scope.within(&place.held_by(partition, r));
                (!theirs.is_empty()).then(|| (r.clone(), theirs))
            })
            .collect();
        return Next::Release {
            partition,
            release,
            replicas,
        };
    }
    let leaving = view
        .members
        .get(me)
        .is_some_and(|m| m.status == Status::Leaving);
    if held.is_empty() && leaving {
        Next::Leave
    } else {
        Next::Idle
    }
}

/// A membership change an operator considers (`dynakv cluster plan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlanChange {
    Join {
        node: NodeId,
        weight: u32,
    },
    Leave {
        node: NodeId,
    },
    Weight {
        node: NodeId,
        weight: u32,
    },
    /// Doubling Q (`dynakv cluster split`).
    Split,
}

/// What a change would move, per node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanReport {
    /// Partitions whose owner would change.
    pub moves: u32,
    pub rows: Vec<PlanRow>,
    /// Q after the change (0 from a node of protocol 7).
    #[serde(with = "crate::protocol::since_8")]
    pub partitions: u32,
    /// The largest partition's bytes after the change, as estimated.
    #[serde(with = "crate::protocol::since_8")]
    pub largest_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRow {
    pub node: NodeId,
    /// Home partitions (replicas) the node would receive, and their bytes.
    pub receive: u32,
    pub receive_bytes: u64,
    /// Home partitions the node would hand off.
    pub send: u32,
    pub send_bytes: u64,
}

/// Works out, without changing anything, what `change` would move: per
/// node, the replicas it would receive and hand off, with their size as
/// `bytes_of` estimates it.
pub fn preview(
    view: &View,
    change: &PlanChange,
    n: usize,
    bytes_of: impl Fn(Partition) -> u64,
) -> Result<PlanReport> {
    let mut table = view
        .ownership
        .clone()
        .ok_or_else(|| Error::Unavailable("the cluster is not formed yet".into()))?;
    let mut members = view.active();
    let position =
        |members: &[Capacity], node: &NodeId| members.iter().position(|m| m.node == *node);
    let q = table.partition_count();
    let largest = |q: u32, bytes: &dyn Fn(Partition) -> u64| {
        (0..q).map(|p| bytes(Partition(p))).max().unwrap_or(0)
    };
    match change {
        PlanChange::Split => {
            // A child holds about half its parent: its keys hash evenly.
            let halves = |p: Partition| bytes_of(Partition(p.0 / 2)).div_ceil(2);
            let mut split = view.clone();
            split.split()?;
            return Ok(PlanReport {
                moves: 0,
                rows: Vec::new(),
                partitions: split.partitions,
                largest_bytes: largest(split.partitions, &halves),
            });
        }
        PlanChange::Join { node, weight } => {
            if position(&members, node).is_some() {
                return Err(Error::InvalidRequest(format!("{node} is already a member")));
            }
            members.push(Capacity::new(node.clone(), *weight));
        }
        PlanChange::Leave { node } => {
            view.check_leave(node)?;
            let i = position(&members, node)
                .ok_or_else(|| Error::InvalidRequest(format!("{node} is not an active member")))?;
            members.remove(i);
        }
        PlanChange::Weight { node, weight } => {
            let i = position(&members, node)
                .ok_or_else(|| Error::InvalidRequest(format!("{node} is not an active member")))?;
            members[i].weight = *weight;
        }
    }
    let before = Ring::new(&table);
    let extent = Placement::new(&before, &view.namespaces, n).extent();
    let moves = table.plan(&members, n)?;
    table.begin(&moves);
    let receivers: std::collections::BTreeSet<NodeId> =
        moves.iter().map(|m| m.to.clone()).collect();
    for r in &receivers {
        let incoming = table.incoming(r);
        table.commit(r, &incoming);
    }
    let after = Ring::new(&table);
    let mut rows: BTreeMap<NodeId, PlanRow> = BTreeMap::new();
    for p in (0..before.partition_count()).map(Partition) {
        let old = before.pending_preference_list(p, extent);
        let new = after.preference_list(p, extent);
        let size = bytes_of(p);
        for node in new.iter().filter(|x| !old.contains(x)) {
            let r = rows
                .entry((*node).clone())
                .or_insert_with(|| empty_row(node));
            r.receive += 1;
            r.receive_bytes += size;
        }
        for node in old.iter().filter(|x| !new.contains(x)) {
            let r = rows
                .entry((*node).clone())
                .or_insert_with(|| empty_row(node));
            r.send += 1;
            r.send_bytes += size;
        }
    }
    Ok(PlanReport {
        moves: moves.len() as u32,
        rows: rows.into_values().collect(),
        partitions: q,
        largest_bytes: largest(q, &bytes_of),
    })
}

fn empty_row(node: &NodeId) -> PlanRow {
    PlanRow {
        node: node.clone(),
        receive: 0,
        receive_bytes: 0,
        send: 0,
        send_bytes: 0,
    }
}

/// Where fetches stand, per home partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    partitions: BTreeMap<Partition, Fetched>,
    /// The Q the partitions are at (0: not known yet; persisted before
    /// splits, at the node's `cluster.partitions`).
    q: u32,
}

/// Progress as persisted before splits.
#[derive(Deserialize)]
struct ProgressV1 {
    partitions: BTreeMap<Partition, Fetched>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fetched {
    /// Keys up to and including this one are here.
    Upto(Vec<u8>),
    Done,
}

impl Fetched {
    /// Where a fetch stands after a chunk whose last key is `upto`; `last`
    /// says the chunk ended the partition.
    pub fn after_chunk(upto: Option<Vec<u8>>, last: bool) -> Fetched {
        match upto {
            Some(k) if !last => Fetched::Upto(k),
            _ => Fetched::Done,
        }
    }
}

impl Progress {
    /// Progress persisted without its Q is at `q` (the layout: Q had
    /// never changed then).
    pub fn known_at(mut self, q: u32) -> Self {
        if self.q == 0 {
            self.q = q;
        }
        self
    }

    /// Brings the progress to `q` partitions (Q doubled since, once or
    /// more): each partition's passes to its descendants.
    pub fn split_to(&mut self, q: u32) {
        if self.q == 0 || self.partitions.is_empty() {
            self.q = q;
            return;
        }
        if q <= self.q {
            return;
        }
        let from = self.q;
        self.partitions = std::mem::take(&mut self.partitions)
            .into_iter()
            .flat_map(|(p, fetched)| p.descendants(from, q).map(move |c| (c, fetched.clone())))
            .collect();
        self.q = q;
    }

    pub fn get(&self, p: Partition) -> Option<&Fetched> {
        self.partitions.get(&p)
    }

    pub fn is_done(&self, p: Partition) -> bool {
        self.partitions.get(&p) == Some(&Fetched::Done)
    }

    pub fn record(&mut self, p: Partition, step: Fetched) {
        self.partitions.insert(p, step);
    }

    /// Forgets partitions `me` no longer replicates (the ring changed).
    pub fn retain(&mut self, replicated: &[Partition]) {
        self.partitions.retain(|p, _| replicated.contains(p));
    }

    /// Whether nothing is recorded: a node's first ring.
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    /// Records that `me` holds a full copy of the partitions it replicates
    /// in `ring` (a node of the founding ring: the cluster starts empty).
    pub fn adopt(&mut self, ring: &Ring, me: &NodeId, n: usize) {
        for p in ring.replicated_by(me, n) {
            self.partitions.insert(p, Fetched::Done);
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding to a Vec cannot fail")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Progress> {
        let (p, rest): (Progress, _) = postcard::take_from_bytes(bytes)
            .or_else(|e| {
                postcard::take_from_bytes::<ProgressV1>(bytes)
                    .map(|(old, rest)| {
                        let progress = Progress {
                            partitions: old.partitions,
                            q: 0,
                        };
                        (progress, rest)
                    })
                    .map_err(|_| e)
            })
            .map_err(|e| Error::Storage(format!("unreadable handoff progress: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::Storage(
                "trailing bytes after handoff progress".into(),
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::Table;
    use crate::ownership::{Capacity, Ownership};
    use crate::version::{Actor, Context, Value};

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn members(n: usize) -> Vec<Capacity> {
        (0..n)
            .map(|i| Capacity::new(id(&format!("n{i}")), 1))
            .collect()
    }

    #[test]
    fn a_joining_node_fetches_exactly_what_it_will_replicate() {
        let mut table = Ownership::found(64, &members(4), 3).unwrap();
        let joiner = id("n4");
        let moves = table.plan(&members(5), 3).unwrap();
        table.begin(&moves);
        let ring = Ring::new(&table);
        let fetch = to_fetch(&ring, &joiner, 3, &Progress::default());
        assert!(!fetch.is_empty());
        // a founding member holds its partitions; it fetches only those it
        // newly replicates
        let founded = Ring::new(&Ownership::found(64, &members(4), 3).unwrap());
        let mut founder = Progress::default();
        founder.adopt(&founded, &id("n0"), 3);
        for p in to_fetch(&ring, &id("n0"), 3, &founder) {
            assert!(!founded.preference_list(p, 3).contains(&&id("n0")));
        }
        // after the commit it replicates exactly those
        table.commit(&joiner, &table.incoming(&joiner));
        let after = Ring::new(&table);
        let mut replicated = after.replicated_by(&joiner, 3);
        replicated.sort();
        assert_eq!(replicated, fetch);
        // old owners release what they gave away, and only that
        let table = Table::default();
        let held = |ring: &Ring, node: &NodeId| -> Vec<(Partition, Vec<String>)> {
            let names = vec!["default".to_string()];
            ring.replicated_by(node, 3)
                .into_iter()
                .map(|p| (p, names.clone()))
                .collect()
        };
        for m in members(4) {
            let held = held(&ring, &m.node);
            let release = to_release(&Placement::new(&after, &table, 3), &m.node, &held);
            for (p, names) in &release {
                assert!(!after.preference_list(*p, 3).contains(&&m.node));
                assert_eq!(names, &["default"]);
            }
            assert!(release.len() < held.len());
        }
        // nothing is released while its partition is still moving
        assert!(ring.is_moving());
        for m in members(4) {
            let place = Placement::new(&ring, &table, 3);
            for (p, _) in to_release(&place, &m.node, &held(&ring, &m.node)) {
                assert_eq!(
                    ring.preference_list(p, 3),
                    ring.pending_preference_list(p, 3)
                );
            }
        }
    }

    #[test]
    fn a_lowered_n_releases_its_namespace_from_the_deeper_replica_only() {
        let ring = Ring::new(&Ownership::found(16, &members(5), 3).unwrap());
        let mut table = Table::default();
        let settings = crate::namespace::test_settings(2);
        let name = crate::namespace::Name::new("s").unwrap();
        table.create(name, settings, &id("n0")).unwrap();
        let place = Placement::new(&ring, &table, 3);
        let p = Partition(5);
        let walk: Vec<NodeId> = ring.walk(p).cloned().collect();
        let held = vec![(p, vec!["default".to_string(), "s".to_string()])];
        let mut view = View::new("c".into(), 16);
        view.ownership = None;
        let up = |_: &NodeId| true;
        assert_eq!(release_step(&view, &place, &walk[1], &held, up), Next::Idle);
        let Next::Release {
            partition,
            release,
            replicas,
        } = release_step(&view, &place, &walk[2], &held, up)
        else {
            panic!("the third replica releases s");
        };
        assert_eq!((partition, release.as_slice()), (p, &["s".to_string()][..]));
        let synced: Vec<&NodeId> = replicas.iter().map(|(node, _)| node).collect();
        assert_eq!(synced, [&walk[0], &walk[1]]);
        assert!(
            replicas
                .iter()
                .all(|(_, scope)| *scope == Scope::only(["s"]))
        );
        let down = |node: &NodeId| *node != walk[1];
        assert_eq!(
            release_step(&view, &place, &walk[2], &held, down),
            Next::Idle,
            "not while a replica of s is down"
        );
    }

    #[test]
    fn chunks_are_checked() {
        let s = SiblingSet::new()
            .update(&Context::default(), Value::Tombstone, Actor(1))
            .unwrap();
        let q = 8;
        let key = |i: u32| -> Vec<u8> {
            (0..)
                .map(|j: u32| format!("k{i}-{j}").into_bytes())
                .find(|k| Partition::of_key(k, q) == Partition(3))
                .unwrap()
        };
        let mut entries = vec![(key(1), s.clone()), (key(2), s.clone())];
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let HandoffMsg::Chunk {
            entries,
            checksum: sum,
            ..
        } = HandoffMsg::chunk(entries, true)
        else {
            unreachable!()
        };
        assert!(verify_chunk(&entries, sum, Partition(3), None, q).is_ok());
        assert!(verify_chunk(&entries, sum ^ 1, Partition(3), None, q).is_err());
        assert!(verify_chunk(&entries, sum, Partition(4), None, q).is_err());
        assert!(verify_chunk(&entries, sum, Partition(3), Some(&entries[1].0), q).is_err());
        let mut swapped = entries.clone();
        swapped.reverse();
        assert!(verify_chunk(&swapped, checksum(&swapped), Partition(3), None, q).is_err());
    }

    #[test]
    fn a_chunk_moves_the_fetch_to_its_last_key_or_ends_it() {
        let k = b"k".to_vec();
        assert_eq!(
            Fetched::after_chunk(Some(k.clone()), false),
            Fetched::Upto(k.clone())
        );
        assert_eq!(Fetched::after_chunk(Some(k), true), Fetched::Done);
        // An empty chunk that is not the last cannot move on: done.
        assert_eq!(Fetched::after_chunk(None, false), Fetched::Done);
        assert_eq!(Fetched::after_chunk(None, true), Fetched::Done);
    }

    #[test]
    fn progress_round_trips() {
        let mut p = Progress::default();
        p.record(Partition(1), Fetched::Upto(b"k".to_vec()));
        p.record(Partition(2), Fetched::Done);
        let back = Progress::from_bytes(&p.to_bytes()).unwrap();
        assert_eq!(back, p);
        assert!(back.is_done(Partition(2)));
        let mut kept = back.clone();
        kept.retain(&[Partition(2)]);
        assert!(kept.get(Partition(1)).is_none());
    }

    #[test]
    fn a_plan_preview_moves_about_a_share_to_the_new_node() {
        use crate::view::{Member, Status};
        let mut view = View::new("c".into(), 64);
        for m in members(4) {
            view.members.insert(
                m.node.clone(),
                Member {
                    id: m.node.clone(),
                    peer_addr: format!("127.0.0.1:7{}", m.node.as_str().len()),
                    client_addr: "127.0.0.1:1".into(),
                    weight: 1,
                    status: Status::Up,
                    version: 1,
                },
            );
        }
        view.ownership = Some(Ownership::found(64, &members(4), 3).unwrap());
        let join = PlanChange::Join {
            node: id("n4"),
            weight: 1,
        };
        let report = preview(&view, &join, 3, |_| 100).unwrap();
        // the new node owns about 64/5 partitions and receives 3 replicas per owned partition
        assert!((12..=13).contains(&report.moves), "{report:?}");
        let new = report.rows.iter().find(|r| r.node == id("n4")).unwrap();
        assert_eq!(new.receive, report.moves * 3);
        assert_eq!(new.receive_bytes, u64::from(new.receive) * 100);
        let sent: u32 = report.rows.iter().map(|r| r.send).sum();
        assert_eq!(
            sent, new.receive,
            "every replica it receives another node hands off"
        );
        assert!(preview(&view, &PlanChange::Leave { node: id("nobody") }, 3, |_| 0).is_err());
        let leave = preview(&view, &PlanChange::Leave { node: id("n0") }, 3, |_| 1).unwrap();
        let n0 = leave.rows.iter().find(|r| r.node == id("n0")).unwrap();
        assert_eq!(n0.receive, 0);
        assert_eq!(
            n0.send,
            64 * 3 / 4,
            "a leaving node hands off every replica it holds"
        );
    }
}

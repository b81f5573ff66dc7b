//! Handoff: moving whole partitions when ownership changes.
//!
//! When a move of partition `p` to node X begins, X becomes a *pending*
//! replica of the home partitions whose pending preference list includes it.
//! X fetches each of them, in checksummed chunks (a range scan on the
//! source), from a current replica; while it fetches, coordinators also send
//! it every new write of those partitions (an extra, pending replica whose
//! acknowledgement does not count toward W). Once X holds them all it commits
//! its moves and owns them.
//!
//! A node that holds a home partition it no longer replicates (it gave the
//! partition away, left, or received a stray late write) *releases* it:
//! it synchronises the partition with every current replica (an
//! anti-entropy exchange each) and only then drops its copy. So a write any
//! replica acknowledged is on the new replicas before the old copy goes.
//!
//! Fetch progress is kept per partition (last key received), persisted by
//! the shell, so a fetch interrupted by a crash of either side resumes where
//! it stopped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::node::NodeId;
use crate::ring::{Partition, Ring};
use crate::version::SiblingSet;

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

/// Home partitions `me` must fetch: its pending preference lists include
/// it, its current ones do not.
pub fn to_fetch(ring: &Ring, me: &NodeId, n: usize) -> Vec<Partition> {
    (0..ring.partition_count())
        .map(Partition)
        .filter(|&p| {
            ring.pending_preference_list(p, n).contains(&me)
                && !ring.preference_list(p, n).contains(&me)
        })
        .collect()
}

/// Of the home partitions `held`, those `me` no longer replicates, now or
/// once in-flight moves complete, and that are not moving: its copies go
/// once they are synchronised with the current replicas.
pub fn to_release(
    ring: &Ring,
    me: &NodeId,
    n: usize,
    held: impl IntoIterator<Item = Partition>,
) -> Vec<Partition> {
    held.into_iter()
        .filter(|&p| {
            let current = ring.preference_list(p, n);
            let pending = ring.pending_preference_list(p, n);
            !current.contains(&me) && !pending.contains(&me) && current == pending
        })
        .collect()
}

/// Where fetches stand, per home partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    partitions: BTreeMap<Partition, Fetched>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fetched {
    /// Keys up to and including this one are here.
    Upto(Vec<u8>),
    Done,
}

impl Progress {
    pub fn get(&self, p: Partition) -> Option<&Fetched> {
        self.partitions.get(&p)
    }

    pub fn is_done(&self, p: Partition) -> bool {
        self.partitions.get(&p) == Some(&Fetched::Done)
    }

    pub fn record(&mut self, p: Partition, step: Fetched) {
        self.partitions.insert(p, step);
    }

    /// Forgets partitions no longer to fetch (the ring changed).
    pub fn retain(&mut self, wanted: &[Partition]) {
        self.partitions.retain(|p, _| wanted.contains(p));
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding to a Vec cannot fail")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Progress> {
        let (p, rest): (Progress, _) = postcard::take_from_bytes(bytes)
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
        let fetch = to_fetch(&ring, &joiner, 3);
        assert!(!fetch.is_empty());
        // after the commit it replicates exactly those
        table.commit(&joiner, &table.incoming(&joiner));
        let after = Ring::new(&table);
        let mut replicated = after.replicated_by(&joiner, 3);
        replicated.sort();
        assert_eq!(replicated, fetch);
        // old owners release what they gave away, and only that
        for m in members(4) {
            let held = ring.replicated_by(&m.node, 3);
            let release = to_release(&after, &m.node, 3, held.clone());
            for p in &release {
                assert!(!after.preference_list(*p, 3).contains(&&m.node));
            }
            assert!(release.len() < held.len());
        }
        // nothing is released while its partition is still moving
        assert!(ring.is_moving());
        for m in members(4) {
            for p in to_release(&ring, &m.node, 3, ring.replicated_by(&m.node, 3)) {
                assert_eq!(
                    ring.preference_list(p, 3),
                    ring.pending_preference_list(p, 3)
                );
            }
        }
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
}

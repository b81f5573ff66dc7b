//! Partitions: the Q equal ranges of the key-hash space.
//!
//! A key's partition is the top log2(Q) bits of its stable hash (xxh3 with
//! a pinned seed, part of the on-disk and on-wire format). Q is a power of
//! two, chosen when the cluster is created, and can only double
//! (`dynakv cluster split`): partition `p` then becomes the children `2p`
//! and `2p + 1`, the two halves of its hash range, so every partition at a
//! later Q lies inside exactly one partition at an earlier one.
//!
//! Storage keeps the Q a node was configured with (`cluster.partitions`,
//! the Q it founded or joined at, which never changes) as its *layout*: a
//! stored key's prefix is its partition at that Q, so a split moves no
//! stored key; a partition at a later Q is read as the part of its
//! ancestor's range whose keys hash into it (`Partition::ancestor`).

use std::fmt;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::error::{Error, Result};
use crate::node::NodeId;

/// Seed of the key hash. Part of the on-disk and on-wire format: changing it
/// moves every key to another partition.
const KEY_HASH_SEED: u64 = 0x6479_6e61_6b76_0001; // "dynakv" + format 1
/// Seed of the receiver ranking used when planning moves.
const RANK_SEED: u64 = 0x6479_6e61_6b76_0002;

/// Smallest and largest accepted Q. Below 8 a ring cannot spread 3 replicas
/// over more than a handful of nodes; above 2^16 the ownership table (gossiped
/// in full) grows past a megabyte.
pub const MIN_PARTITIONS: u32 = 8;
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// The stable hash of a user key. Pinned by golden tests: the same key maps
/// to the same partition on every platform and every version.
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, KEY_HASH_SEED)
}

/// Deterministic preference of a node for a partition (used by the planner).
pub(crate) fn rank(node: &NodeId, p: Partition) -> u64 {
    let mut buf = Vec::with_capacity(node.as_str().len() + 4);
    buf.extend_from_slice(node.as_str().as_bytes());
    buf.extend_from_slice(&p.0.to_be_bytes());
    xxh3_64_with_seed(&buf, RANK_SEED)
}

pub fn validate_partition_count(q: u32) -> Result<()> {
    if !q.is_power_of_two() {
        return Err(Error::Config(format!(
            "partitions = {q} is not a power of two"
        )));
    }
    if !(MIN_PARTITIONS..=MAX_PARTITIONS).contains(&q) {
        return Err(Error::Config(format!(
            "partitions = {q} is outside {MIN_PARTITIONS}..={MAX_PARTITIONS}"
        )));
    }
    Ok(())
}

/// One of the Q equal ranges of the key-hash space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Partition(pub u32);

impl Partition {
    /// The partition holding `hash` in a ring of `q` partitions.
    pub fn of_hash(hash: u64, q: u32) -> Partition {
        let bits = q.trailing_zeros();
        Partition(hash.checked_shr(64 - bits).unwrap_or(0) as u32)
    }

    pub fn of_key(key: &[u8], q: u32) -> Partition {
        Partition::of_hash(key_hash(key), q)
    }

    /// The partition at `from` (a smaller or equal Q) holding this one at
    /// `q`: the prefix of its hash range.
    pub fn ancestor(self, q: u32, from: u32) -> Partition {
        debug_assert!(from <= q, "an ancestor is at a smaller Q");
        Partition(self.0 >> (q.trailing_zeros() - from.trailing_zeros()))
    }

    /// The partitions at `to` (a larger or equal Q) that make up this one
    /// at `from`: a run of `to / from`, the halves of halves.
    pub fn descendants(self, from: u32, to: u32) -> impl Iterator<Item = Partition> {
        let shift = to.trailing_zeros().saturating_sub(from.trailing_zeros());
        let first = self.0 << shift;
        (first..first + (1 << shift)).map(Partition)
    }

    /// The two halves of this partition once Q doubles.
    pub fn children(self) -> [Partition; 2] {
        [Partition(2 * self.0), Partition(2 * self.0 + 1)]
    }

    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// Storage prefix: big-endian, so a partition is a contiguous key range.
    pub fn prefix(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_pinned() {
        // Golden values, cross-checked against the reference C implementation
        // (python-xxhash's xxh3_64 with the same seed). If they change, every
        // stored key moves to another partition.
        assert_eq!(key_hash(b""), 0x3677_6665_ed06_80d5);
        assert_eq!(key_hash(b"hello"), 0x2246_d449_35cc_d45d);
        assert_eq!(key_hash(b"user:42"), 0xf5c9_a166_f3a2_e2fe);
        assert_eq!(Partition::of_key(b"", 1024), Partition(217));
        assert_eq!(Partition::of_key(b"hello", 1024), Partition(137));
        assert_eq!(Partition::of_key(b"user:42", 1024), Partition(983));
    }

    #[test]
    fn a_split_partitions_children_hold_exactly_its_keys() {
        for i in 0..2000u32 {
            let key = i.to_be_bytes();
            let parent = Partition::of_key(&key, 64);
            let child = Partition::of_key(&key, 128);
            assert!(parent.children().contains(&child));
            assert_eq!(child.ancestor(128, 64), parent);
            assert_eq!(Partition::of_key(&key, 1024).ancestor(1024, 64), parent);
            assert_eq!(parent.ancestor(64, 64), parent);
            assert!(
                parent
                    .descendants(64, 1024)
                    .any(|d| d == Partition::of_key(&key, 1024))
            );
            assert!(parent.descendants(64, 128).eq(parent.children()));
        }
    }

    #[test]
    fn partitions_are_equal_ranges_of_the_hash_space() {
        assert_eq!(Partition::of_hash(0, 1024), Partition(0));
        assert_eq!(Partition::of_hash(u64::MAX, 1024), Partition(1023));
        assert_eq!(Partition::of_hash(1 << 63, 1024), Partition(512));
        assert_eq!(Partition::of_hash((1 << 54) - 1, 1024), Partition(0));
        assert_eq!(Partition::of_hash(1 << 54, 1024), Partition(1));
        assert_eq!(Partition::of_hash(u64::MAX, 8), Partition(7));
        assert_eq!(Partition(258).prefix(), [0, 0, 1, 2]);
    }

    #[test]
    fn partition_count_must_be_a_bounded_power_of_two() {
        assert!(validate_partition_count(1024).is_ok());
        assert!(validate_partition_count(1000).is_err());
        assert!(validate_partition_count(4).is_err());
        assert!(validate_partition_count(1 << 17).is_err());
    }
}

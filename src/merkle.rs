//! Per-partition hash trees for anti-entropy.
//!
//! A tree summarises one partition's data on one replica. Its 256 leaves are
//! *segments*: a key belongs to the segment named by the 8 bits of its hash
//! that follow the partition bits, and a segment's hash is the XOR of the
//! item hashes (key + encoded sibling set) of its keys. XOR makes a write an
//! O(1) change to its leaf (`xor out` the old item, `xor in` the new one).
//! A replica keeps only the leaves up to date (`Leaves`); the 16 inner
//! nodes and the root, hashes of their 16 children, are computed when an
//! exchange asks for the tree (17 128-byte hashes, once per exchange rather
//! than two per write). Inner nodes are real hashes, not XORs, so equal
//! inner nodes mean equal subtrees and the descent in `diff` finds exactly
//! the differing segments.
//!
//! Two replicas compare roots; where they differ they compare the 16 inner
//! nodes, then the 16 leaves below each differing inner node, and exchange
//! only the keys of differing segments. Cost follows the size of the
//! difference, not the size of the data.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::partition::key_hash;

/// Children per inner node.
pub const FANOUT: usize = 16;
/// Leaves per tree: two levels of 16. With 1024 partitions this gives a
/// segment per ~4 keys at a million keys per node; each tree is 2 KiB.
pub const SEGMENTS: usize = FANOUT * FANOUT;

const ITEM_SEED: u64 = 0x6479_6e61_6b76_0003;

/// Which segment of its partition a key falls in: the 8 hash bits right
/// after the `log2(q)` partition bits.
pub fn segment_of(key: &[u8], q: u32) -> usize {
    let bits = q.trailing_zeros();
    ((key_hash(key) << bits) >> (64 - 8)) as usize
}

/// The hash of one stored item: xxh3 of the key's length (8 bytes, little
/// endian), the key and the encoded value, which every version of every
/// node must compute alike. Streamed, so a large value is not copied
/// first. Never 0, so every item changes its leaf.
pub fn item_hash(key: &[u8], encoded_value: &[u8]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(ITEM_SEED);
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(encoded_value);
    hasher.digest().max(1)
}

/// The item hash of a set's or a map's state (`Typed::kernel`): of the
/// key, the type's rank, the encoded context and the digest of the
/// entries, so that a write to a large set hashes what it changed rather
/// than the whole state, and every replica gets the same hash whatever
/// its storage holds (a stored state and the deltas beside it). Never 0.
pub fn kernel_item_hash(key: &[u8], rank: u8, context: &[u8], digest: u128) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(ITEM_SEED ^ 0x6b65_726e);
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(&[rank]);
    hasher.update(&(context.len() as u64).to_le_bytes());
    hasher.update(context);
    hasher.update(&digest.to_le_bytes());
    hasher.digest().max(1)
}

/// A partition's segment leaves, as a replica keeps them per write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaves(Vec<u64>);

impl Default for Leaves {
    fn default() -> Self {
        Leaves(vec![0; SEGMENTS])
    }
}

impl Leaves {
    /// The leaves of a partition scan: `(segment, item hash)` pairs.
    pub fn from_items(items: impl IntoIterator<Item = (usize, u64)>) -> Self {
        let mut leaves = Leaves::default();
        for (segment, hash) in items {
            leaves.update(segment, None, Some(hash));
        }
        leaves
    }

    /// Records a write to a key of `segment`: its item hash goes from `old`
    /// (None if the key was absent) to `new` (None if the key is gone).
    pub fn update(&mut self, segment: usize, old: Option<u64>, new: Option<u64>) {
        self.0[segment % SEGMENTS] ^= old.unwrap_or(0) ^ new.unwrap_or(0);
    }

    /// Adds the keys `other` records (XOR: the leaves of two disjoint key
    /// sets together are the leaves of their union).
    pub fn add(&mut self, other: &Leaves) {
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            *mine ^= theirs;
        }
    }

    /// Whether no key has been recorded (or all were removed again).
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&l| l == 0)
    }

    /// The whole tree over these leaves.
    pub fn tree(&self) -> HashTree {
        let leaves = self.0.clone();
        let inner: Vec<u64> = leaves.chunks(FANOUT).map(hash_children).collect();
        let root = hash_children(&inner);
        HashTree {
            leaves,
            inner,
            root,
        }
    }
}

/// A partition's hash tree, as an anti-entropy exchange compares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashTree {
    leaves: Vec<u64>,
    inner: Vec<u64>,
    root: u64,
}

impl Default for HashTree {
    fn default() -> Self {
        HashTree::new()
    }
}

impl HashTree {
    pub fn new() -> Self {
        Leaves::default().tree()
    }

    pub fn root(&self) -> u64 {
        self.root
    }

    /// The 16 inner hashes.
    pub fn inner(&self) -> &[u64] {
        &self.inner
    }

    /// The 16 leaf hashes under inner node `i`.
    pub fn leaves_under(&self, i: usize) -> &[u64] {
        let i = i % FANOUT;
        &self.leaves[i * FANOUT..(i + 1) * FANOUT]
    }

    pub fn leaf(&self, segment: usize) -> u64 {
        self.leaves[segment % SEGMENTS]
    }

    /// The segments whose contents differ, found by descending only into
    /// differing branches (what an exchange between two replicas does).
    pub fn diff(&self, other: &HashTree) -> Vec<usize> {
        if self.root == other.root {
            return Vec::new();
        }
        let mut out = Vec::new();
        for i in differing(&self.inner, &other.inner) {
            for j in differing(self.leaves_under(i), other.leaves_under(i)) {
                out.push(i * FANOUT + j);
            }
        }
        out
    }
}

/// Indexes where two equally long hash lists differ.
pub fn differing<'a>(a: &'a [u64], b: &'a [u64]) -> impl Iterator<Item = usize> + 'a {
    a.iter()
        .zip(b)
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i)
}

fn hash_children(children: &[u64]) -> u64 {
    let mut buf = [0u8; FANOUT * 8];
    for (chunk, c) in buf.chunks_exact_mut(8).zip(children) {
        chunk.copy_from_slice(&c.to_le_bytes());
    }
    xxh3_64(&buf)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    type Data = BTreeMap<Vec<u8>, Vec<u8>>;

    fn tree_of(data: &Data) -> HashTree {
        Leaves::from_items(
            data.iter()
                .map(|(k, v)| (segment_of(k, 1024), item_hash(k, v))),
        )
        .tree()
    }

    #[test]
    fn an_item_hash_is_the_hash_of_its_bytes_in_one_piece() {
        use xxhash_rust::xxh3::xxh3_64_with_seed;
        for (key, value) in [
            (&b""[..], vec![]),
            (b"k", b"v".to_vec()),
            (b"k", vec![7u8; 3]),
            (b"user:42", vec![9u8; 1 << 20]),
        ] {
            let mut whole = (key.len() as u64).to_le_bytes().to_vec();
            whole.extend_from_slice(key);
            whole.extend_from_slice(&value);
            assert_eq!(
                item_hash(key, &value),
                xxh3_64_with_seed(&whole, ITEM_SEED).max(1)
            );
        }
        // Pinned: replicas of every version compare these.
        assert_eq!(item_hash(b"k", b"v"), 0xb3a7_717c_5678_7fdf);
    }

    #[test]
    fn incremental_updates_match_a_rebuild() {
        let mut data = Data::new();
        let mut tree = Leaves::default();
        for i in 0u32..500 {
            let k = format!("key{}", i % 200).into_bytes();
            let v = i.to_le_bytes().to_vec();
            let old = data.insert(k.clone(), v.clone()).map(|o| item_hash(&k, &o));
            tree.update(segment_of(&k, 1024), old, Some(item_hash(&k, &v)));
        }
        assert_eq!(tree.tree(), tree_of(&data));
        for i in 0..200 {
            let k = format!("key{i}").into_bytes();
            let old = data.remove(&k).map(|o| item_hash(&k, &o));
            tree.update(segment_of(&k, 1024), old, None);
        }
        assert!(tree.is_empty());
        assert_eq!(tree.tree(), HashTree::new());
    }

    #[test]
    fn equal_data_gives_equal_roots_and_no_diff() {
        let data: Data = (0u32..100)
            .map(|i| (i.to_be_bytes().to_vec(), vec![1]))
            .collect();
        assert_eq!(tree_of(&data).root(), tree_of(&data).root());
        assert!(tree_of(&data).diff(&tree_of(&data)).is_empty());
    }

    #[test]
    fn segment_uses_the_bits_after_the_partition() {
        // same partition prefix, segment from the following 8 bits
        for k in [&b"a"[..], b"hello", b"user:42"] {
            let h = key_hash(k);
            assert_eq!(segment_of(k, 1024), ((h >> 46) & 0xff) as usize);
            assert_eq!(segment_of(k, 8), ((h >> 53) & 0xff) as usize);
        }
    }

    proptest! {

        #![proptest_config(crate::proptest_config())]
        #[test]
        fn diff_finds_exactly_the_differing_segments(
            base in prop::collection::btree_map(prop::collection::vec(any::<u8>(), 1..8), prop::collection::vec(any::<u8>(), 0..4), 0..300),
            changes in prop::collection::vec((prop::collection::vec(any::<u8>(), 1..8), prop::option::of(prop::collection::vec(any::<u8>(), 0..4))), 0..20),
        ) {
            let mut other = base.clone();
            for (k, v) in changes {
                match v {
                    Some(v) => { other.insert(k, v); }
                    None => { other.remove(&k); }
                }
            }
            let (a, b) = (tree_of(&base), tree_of(&other));
            // brute force: compare every segment's item set
            let items = |d: &Data, s: usize| -> Vec<(Vec<u8>, Vec<u8>)> {
                d.iter().filter(|(k, _)| segment_of(k, 1024) == s).map(|(k, v)| (k.clone(), v.clone())).collect()
            };
            let expected: Vec<usize> = (0..SEGMENTS).filter(|&s| items(&base, s) != items(&other, s)).collect();
            prop_assert_eq!(a.diff(&b), expected.clone());
            prop_assert_eq!(b.diff(&a), expected.clone());
            prop_assert_eq!(a.root() == b.root(), expected.is_empty());
        }
    }
}

//! The storage seam: a small ordered key-value `Store` (fjall in the node,
//! `MemStore` in tests and the simulator), and how the replica lays its
//! data out in it.
//!
//! A stored key is `partition (u32, big-endian) ++ user key`, so a
//! partition is one contiguous range (handoff, tree rebuilds and
//! anti-entropy are range scans); a stored value is the postcard encoding
//! of the key's sibling set.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::merkle::{item_hash, kernel_item_hash};
use crate::partition::Partition;
use crate::version::SiblingSet;

/// A key with its sibling set, as stored and as moved between replicas
/// (hint deliveries, handoff chunks, anti-entropy, tombstone probes).
pub type Entry = (Vec<u8>, SiblingSet);

/// A key-value store holding one keyspace. Keys are compared bytewise.
pub trait Store {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
    fn remove(&mut self, key: &[u8]) -> Result<()>;
    /// Up to `limit` entries whose key starts with `prefix` and comes after
    /// `after` (from the start if None), in key order.
    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
}

/// The in-memory twin of the fjall store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemStore {
    pub map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Store for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.get(key).cloned())
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.map.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) -> Result<()> {
        self.map.remove(key);
        Ok(())
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        use std::ops::Bound;
        let start = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        Ok(self
            .map
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// The prefix of the deltas kept beside large sets' and maps' records
/// (`replica::tails`): above every partition's, so partition scans never
/// meet them. They are only ever scanned, never got one by one.
pub const TAIL: [u8; 4] = [0xFF; 4];

/// The stored key of `key`: partition prefix, then the user key.
pub fn storage_key(p: Partition, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&p.prefix());
    k.extend_from_slice(key);
    k
}

/// Where `key` is stored with `q` partitions.
pub fn stored_key(key: &[u8], q: u32) -> Vec<u8> {
    storage_key(Partition::of_key(key, q), key)
}

/// Splits a stored key back into partition and user key.
pub fn split_storage_key(stored: &[u8]) -> Result<(Partition, &[u8])> {
    match stored {
        [a, b, c, d, key @ ..] => Ok((Partition(u32::from_be_bytes([*a, *b, *c, *d])), key)),
        _ => Err(Error::Storage(format!(
            "stored key of {} bytes has no partition prefix",
            stored.len()
        ))),
    }
}

pub fn encode_state(state: &SiblingSet) -> Vec<u8> {
    postcard::to_stdvec(state).expect("encoding to a Vec cannot fail")
}

pub fn decode_state(bytes: &[u8]) -> Result<SiblingSet> {
    decode_stored(bytes).map(|(state, _)| state)
}

/// Decodes a stored state; `true` when it is in the encoding before data
/// types, to be stored again in the current one.
pub fn decode_stored(bytes: &[u8]) -> Result<(SiblingSet, bool)> {
    SiblingSet::decode(bytes).map_err(|e| Error::Storage(format!("undecodable sibling set: {e}")))
}

/// The item hash of `key`'s `state`, stored as `encoded`: a set's or a
/// map's from its kernel (`merkle::kernel_item_hash`, which needs no
/// encoding), any other state's from its encoding.
pub fn state_item_hash(key: &[u8], state: &SiblingSet, encoded: &[u8]) -> u64 {
    match state.kernel() {
        Some((rank, context, digest)) => {
            let context = postcard::to_stdvec(context).expect("encoding to a Vec cannot fail");
            kernel_item_hash(key, rank, &context, digest)
        }
        None => item_hash(key, encoded),
    }
}

/// Whether an encoded sibling set is a set's or a map's: no entries,
/// then `Some`, then the variant of `Typed::Set` or `Typed::Map`.
pub fn holds_kernel(encoded: &[u8]) -> bool {
    matches!(encoded, [0, 1, 1 | 2, ..])
}

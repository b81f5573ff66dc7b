//! Hinted handoff: writes a stand-in holds for an owner that was down.
//!
//! When a write reaches a stand-in (a node outside the key's preference
//! list, chosen because an owner was down), the stand-in stores the sibling
//! set as usual (so reads that reach it see the write) and records a *hint*:
//! "key K belongs to owner O". Once O is seen up again, the stand-in sends O
//! the current sibling set of each hinted key in batches; O merges them
//! durably and acknowledges; only then does the stand-in clear the hints.
//! Its own copy stays until handoff releases it (a key it does not
//! replicate), which happens only once every replica of the key holds it:
//! the owner may already have had the write (its answer was lost, not its
//! write), and then the stand-in's copy is one of the acknowledged two.
//!
//! Hints are keyed by `owner ++ key`, so many writes to one key while its
//! owner is down leave one hint, and delivery always carries the latest
//! merged state. A hint is cleared only if the key did not change since the
//! batch was read: a write that raced with delivery keeps its hint and goes
//! in the next batch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod delivery;
pub use delivery::{DeliverySettings, HintDelivery, HintWork};

use crate::error::{Error, Result};
use crate::node::NodeId;
use crate::store::Store;
use crate::version::SiblingSet;

/// Messages of the hints concern between nodes (`PeerMsg::Hints`).
/// Variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HintMsg {
    /// Hinted keys' current sibling sets for their owner to merge.
    Deliver { entries: Vec<(Vec<u8>, SiblingSet)> },
    /// The owner merged (durably) every entry of the batch.
    Delivered,
}

/// Of a batch of hints for an owner that has departed, those with nothing
/// left to hand over: keys already released (an empty local copy), and keys
/// this node replicates itself (`replicates`), whose copy anti-entropy keeps
/// in step with the new replicas. The rest wait for their release, which
/// synchronises them with the current replicas first.
pub fn moot(
    batch: Vec<(Vec<u8>, SiblingSet)>,
    replicates: impl Fn(&[u8]) -> bool,
) -> Vec<(Vec<u8>, SiblingSet)> {
    batch
        .into_iter()
        .filter(|(key, state)| state.is_empty() || replicates(key))
        .collect()
}

/// The stored key of a hint: the owner's id (length-prefixed) and the key.
pub fn hint_key(owner: &NodeId, key: &[u8]) -> Vec<u8> {
    let id = owner.as_str().as_bytes();
    let mut k = Vec::with_capacity(1 + id.len() + key.len());
    k.push(id.len() as u8);
    k.extend_from_slice(id);
    k.extend_from_slice(key);
    k
}

/// The prefix of every hint for `owner`.
pub fn owner_prefix(owner: &NodeId) -> Vec<u8> {
    hint_key(owner, &[])
}

/// Splits a stored hint key into owner and user key.
pub fn parse_hint_key(stored: &[u8]) -> Result<(NodeId, &[u8])> {
    let bad = || Error::Storage(format!("malformed hint key of {} bytes", stored.len()));
    let (&len, rest) = stored.split_first().ok_or_else(bad)?;
    let id = rest.get(..usize::from(len)).ok_or_else(bad)?;
    let owner = std::str::from_utf8(id).map_err(|_| bad())?;
    let owner = NodeId::new(owner).map_err(|_| bad())?;
    Ok((owner, &rest[usize::from(len)..]))
}

/// The hints a node holds, with a count per owner.
pub struct HintLog<S: Store> {
    store: S,
    pending: BTreeMap<NodeId, u64>,
}

/// Hints read per step when counting at start-up.
const SCAN_CHUNK: usize = 4096;

impl<S: Store> HintLog<S> {
    /// Opens the log, counting the hints already stored.
    pub fn open(store: S) -> Result<Self> {
        let mut pending: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let chunk = store.scan(&[], after.as_deref(), SCAN_CHUNK)?;
            for (k, _) in &chunk {
                let (owner, _) = parse_hint_key(k)?;
                *pending.entry(owner).or_default() += 1;
            }
            match chunk.last() {
                Some((k, _)) if chunk.len() == SCAN_CHUNK => after = Some(k.clone()),
                _ => break,
            }
        }
        Ok(HintLog { store, pending })
    }

    /// Records that `key` belongs to `owner`.
    pub fn record(&mut self, owner: &NodeId, key: &[u8]) -> Result<()> {
        let k = hint_key(owner, key);
        if self.store.get(&k)?.is_none() {
            self.store.put(&k, &[])?;
            *self.pending.entry(owner.clone()).or_default() += 1;
        }
        Ok(())
    }

    /// Up to `limit` keys hinted for `owner`.
    pub fn batch(&self, owner: &NodeId, limit: usize) -> Result<Vec<Vec<u8>>> {
        let prefix = owner_prefix(owner);
        Ok(self
            .store
            .scan(&prefix, None, limit)?
            .into_iter()
            .map(|(k, _)| k[prefix.len()..].to_vec())
            .collect())
    }

    /// Clears the hint of `key` for `owner`.
    pub fn clear(&mut self, owner: &NodeId, key: &[u8]) -> Result<()> {
        let k = hint_key(owner, key);
        if self.store.get(&k)?.is_some() {
            self.store.remove(&k)?;
            if let Some(n) = self.pending.get_mut(owner) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.pending.remove(owner);
                }
            }
        }
        Ok(())
    }

    /// Whether `key` has a hint for any owner.
    pub fn is_hinted_for_anyone(&self, key: &[u8]) -> Result<bool> {
        for owner in self.pending.keys() {
            if self.is_hinted(owner, key)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `key` has a hint for `owner`.
    pub fn is_hinted(&self, owner: &NodeId, key: &[u8]) -> Result<bool> {
        Ok(self.store.get(&hint_key(owner, key))?.is_some())
    }

    /// Hints held, per owner (owners with none are absent).
    pub fn pending(&self) -> &BTreeMap<NodeId, u64> {
        &self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn hints_of_a_departed_owner_are_moot_once_released_or_replicated_here() {
        use crate::version::{Actor, Context, Value};
        let held = SiblingSet::default()
            .update(&Context::default(), Value::Data(b"v".to_vec()), Actor(1))
            .unwrap();
        let batch = vec![
            (b"released".to_vec(), SiblingSet::default()),
            (b"mine".to_vec(), held.clone()),
            (b"stray".to_vec(), held),
        ];
        let moot: Vec<Vec<u8>> = moot(batch, |k| k == b"mine")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(moot, vec![b"released".to_vec(), b"mine".to_vec()]);
    }

    #[test]
    fn keys_round_trip_and_garbage_is_refused() {
        let k = hint_key(&id("node2"), b"user:1");
        assert_eq!(parse_hint_key(&k).unwrap(), (id("node2"), &b"user:1"[..]));
        assert!(parse_hint_key(&[]).is_err());
        assert!(parse_hint_key(&[9, b'a']).is_err());
        assert!(parse_hint_key(&[2, b' ', b' ']).is_err());
    }

    #[test]
    fn one_hint_per_owner_and_key_counted_and_survives_reopening() {
        let mut log = HintLog::open(MemStore::default()).unwrap();
        log.record(&id("a"), b"k1").unwrap();
        log.record(&id("a"), b"k1").unwrap();
        log.record(&id("a"), b"k2").unwrap();
        log.record(&id("ab"), b"k1").unwrap();
        assert_eq!(log.pending()[&id("a")], 2);
        assert_eq!(
            log.batch(&id("a"), 10).unwrap(),
            vec![b"k1".to_vec(), b"k2".to_vec()]
        );
        assert_eq!(log.batch(&id("a"), 1).unwrap().len(), 1);
        let reopened = HintLog::open(log.store.clone()).unwrap();
        assert_eq!(reopened.pending(), log.pending());
        log.clear(&id("a"), b"k1").unwrap();
        log.clear(&id("a"), b"k1").unwrap();
        assert_eq!(log.pending()[&id("a")], 1);
        log.clear(&id("a"), b"k2").unwrap();
        assert!(!log.pending().contains_key(&id("a")));
        assert_eq!(
            log.pending()[&id("ab")],
            1,
            "another owner's hints are untouched"
        );
    }
}

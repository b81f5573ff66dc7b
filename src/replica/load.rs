//! The start-up scan: a replica serves from the moment it is opened and
//! rebuilds what only a scan of its data gives (hash-tree leaves, usage,
//! tombstone marks) a chunk at a time, between requests.

use std::borrow::Cow;
use std::collections::HashMap;

use super::collect::mark;
use super::tails::TAIL;
use super::{OpenReport, Replica, Shelf, Usage};
use crate::error::{Error, Result};
use crate::merkle::segment_of;
use crate::partition::Partition;
use crate::store::{Store, decode_stored, encode_state, split_storage_key, state_item_hash};
use crate::version::SiblingSet;

/// The start-up scan, a chunk at a time (`Replica::load`). The replica
/// serves reads and writes from the moment it is opened; what only the
/// scan can rebuild (hash-tree leaves, usage, tombstone marks) is built in
/// storage-key order, and a write keeps those current only for keys the
/// scan has passed: a later key is counted when the scan reaches it, as it
/// then is. So a partition the scan has finished has exact leaves whatever
/// was written meanwhile, and one it has not reached answers no tree
/// (`Error::Unavailable`): anti-entropy and handoff wait for it rather
/// than trust a tree that is not whole. A start therefore costs what
/// opening storage costs, not a scan of every key.
#[derive(Debug, Clone, Default)]
pub(super) struct Loading {
    /// The last storage key scanned (None: none yet).
    pub(super) after: Option<Vec<u8>>,
    pub(super) report: OpenReport,
}

impl<S: Store> Replica<S> {
    /// One step of the start-up scan: up to `limit` stored keys counted
    /// into the hash-tree leaves, usage and tombstone marks. A state stored
    /// in the encoding before data types is stored again in the current
    /// one (so every replica hashes a state's same bytes). Returns what the
    /// whole scan found once it is done (and at every later call).
    pub fn load(&mut self, limit: usize) -> Result<Option<OpenReport>> {
        let Some(loading) = &self.loading else {
            return Ok(Some(OpenReport {
                keys: self.key_count(),
                partitions: self.tally.trees.len(),
                ..OpenReport::default()
            }));
        };
        let limit = limit.max(1);
        let mut chunk = self.store.scan(&[], loading.after.as_deref(), limit)?;
        // Tails come after every partition, and are read with their keys.
        let full = chunk.len() == limit && chunk.last().is_some_and(|(k, _)| k[..] < TAIL[..]);
        chunk.retain(|(k, _)| k[..] < TAIL[..]);
        let mut report = OpenReport::default();
        for (stored, value) in &chunk {
            let (at, key) = split_storage_key(stored)?;
            let p = self.partition_of(at, key);
            let Ok((mut state, old)) = decode_stored(value) else {
                report.corrupt.push(stored.clone());
                continue;
            };
            let value: Cow<[u8]> = if old {
                let current = encode_state(&state);
                self.decoded.forget(stored);
                self.store.put(stored, &current)?;
                report.upgraded += 1;
                Cow::Owned(current)
            } else {
                Cow::Borrowed(value)
            };
            if let Some(at) = state.collectable_at(self.keep_deleted_ms) {
                mark(&mut self.tombstoned, p, at);
            }
            self.note_counter(p, &state);
            let tail = self.tails.get(stored).map_or(0, |t| t.bytes);
            if tail > 0
                && self
                    .tails
                    .join_into(&self.store, stored, &mut state)
                    .is_err()
            {
                report.corrupt.push(stored.clone());
            }
            let record = Record::of(key, &state, &value, tail);
            self.tally.count(self.q, p, key, None, Some(record));
            report.keys += 1;
        }
        let loading = self.loading.get_or_insert_default();
        loading.report.keys += report.keys;
        loading.report.upgraded += report.upgraded;
        loading.report.corrupt.append(&mut report.corrupt);
        if let Some((last, _)) = chunk.last() {
            loading.after = Some(last.clone());
        }
        if full {
            return Ok(None);
        }
        let mut report = std::mem::take(&mut loading.report);
        report.partitions = self.tally.trees.len();
        self.loading = None;
        Ok(Some(report))
    }

    /// Whether the start-up scan is still under way.
    pub fn is_loading(&self) -> bool {
        self.loading.is_some()
    }

    /// Whether the start-up scan has passed storage key `stored` (so a
    /// write to it keeps the leaves and usage current).
    pub(super) fn scanned(&self, stored: &[u8]) -> bool {
        self.loading
            .as_ref()
            .is_none_or(|l| l.after.as_deref().is_some_and(|after| stored <= after))
    }

    /// Whether the leaves and usage kept equal a rebuild from storage
    /// (the simulator's and tests' check of the invariant).
    #[cfg(any(test, feature = "sim"))]
    pub fn verify_tally(&self) -> std::result::Result<(), String> {
        if self.loading.is_some() {
            return Err("the start-up scan is still under way".into());
        }
        let mut rebuilt = Tally::default();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let chunk = self
                .store
                .scan(&[], after.as_deref(), super::SCAN_CHUNK)
                .map_err(|e| e.to_string())?;
            for (stored, value) in chunk.iter().filter(|(k, _)| k[..] < TAIL[..]) {
                let (at, key) = split_storage_key(stored).map_err(|e| e.to_string())?;
                let record = self.record(key, stored, value).map_err(|e| e.to_string())?;
                rebuilt.count(self.q, self.partition_of(at, key), key, None, Some(record));
            }
            match chunk.last() {
                Some((k, _)) if chunk.len() == super::SCAN_CHUNK && k[..] < TAIL[..] => {
                    after = Some(k.clone())
                }
                _ => break,
            }
        }
        if let Some((p, _)) = (self.tally.trees.iter())
            .chain(&rebuilt.trees)
            .find(|(p, _)| self.tally.trees.get(p) != rebuilt.trees.get(p))
        {
            return Err(format!("partition {p}'s leaves differ from a rebuild"));
        }
        if self.tally.usage != rebuilt.usage {
            return Err("the usage differs from a rebuild".into());
        }
        Ok(())
    }

    /// Partition `p`'s leaves are whole: the start-up scan is past it.
    pub(super) fn settled(&self, p: Partition) -> Result<()> {
        let Some(loading) = &self.loading else {
            return Ok(());
        };
        let past = loading
            .after
            .as_deref()
            .and_then(|after| split_storage_key(after).ok())
            .is_some_and(|(at, _)| at > p.ancestor(self.q, self.layout));
        if past {
            return Ok(());
        }
        Err(Error::Unavailable(format!(
            "partition {p}'s hash tree is still being built after the start ({} keys scanned)",
            loading.report.keys
        )))
    }
}

/// What one stored key counts for in its partition's leaves and usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Record {
    /// Its item hash (`store::state_item_hash`).
    pub(super) hash: u64,
    /// The bytes of its key, record and tail.
    pub(super) bytes: u64,
}

impl Record {
    /// What `key`'s `state` counts for, stored as `encoded` with `tail`
    /// bytes of deltas beside it (a set's or map's hash is its kernel's,
    /// so `state` may be the default for any other's).
    pub(super) fn of(key: &[u8], state: &SiblingSet, encoded: &[u8], tail: u64) -> Record {
        Record {
            hash: state_item_hash(key, state, encoded),
            bytes: (key.len() + encoded.len()) as u64 + tail,
        }
    }
}

/// What the start-up scan rebuilds and every write keeps current: each
/// held partition's hash-tree leaves, per namespace (a scope's tree is
/// built on demand from those of its namespaces), and its usage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Tally {
    pub(super) trees: HashMap<Partition, Shelf>,
    pub(super) usage: HashMap<Partition, Usage>,
}

impl Tally {
    /// Moves `key`'s contribution to the leaves and usage of `p` from
    /// `old` to `new` (None: absent).
    pub(super) fn count(
        &mut self,
        q: u32,
        p: Partition,
        key: &[u8],
        old: Option<Record>,
        new: Option<Record>,
    ) {
        if old.is_none() && new.is_none() {
            return;
        }
        let u = self.usage.entry(p).or_default();
        let size = |r: Option<Record>| r.map_or(0, |r| r.bytes);
        u.keys = (u.keys + u64::from(new.is_some())).saturating_sub(u64::from(old.is_some()));
        u.bytes = (u.bytes + size(new)).saturating_sub(size(old));
        if u.keys == 0 {
            self.usage.remove(&p);
        }
        let shelf = self.trees.entry(p).or_default();
        shelf
            .leaves(key)
            .update(segment_of(key, q), old.map(|r| r.hash), new.map(|r| r.hash));
        // Only a removal can empty leaves (checking costs a pass over them).
        if new.is_none() {
            shelf.0.retain(|_, leaves| !leaves.is_empty());
            if shelf.0.is_empty() {
                self.trees.remove(&p);
            }
        }
    }
}

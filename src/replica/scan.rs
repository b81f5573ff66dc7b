//! Reading a replica a range at a time: a partition's keys by segment
//! (anti-entropy), in chunks (handoff, collection) and as listing pages.

use super::{Replica, SCAN_CHUNK};
use crate::error::{Error, Result};
use crate::listing;
use crate::merkle::segment_of;
use crate::namespace;
use crate::partition::Partition;
use crate::placement::Scope;
use crate::replica::ReplicaMsg;
use crate::store::{Entry, Store, storage_key};
use crate::version::SiblingSet;

/// What a partition scan found stored for one key: its record, decoded
/// (with its tail joined in) or hashed only when asked.
pub struct Scanned<'a, S: Store> {
    replica: &'a Replica<S>,
    key: &'a [u8],
    stored: &'a [u8],
    bytes: &'a [u8],
}

impl<S: Store> Scanned<'_, S> {
    /// The key's state.
    pub fn state(&self) -> Result<SiblingSet> {
        self.replica.state_of(self.stored, self.bytes)
    }

    /// Its item hash (a set or map is decoded for it).
    pub fn hash(&self) -> Result<u64> {
        Ok(self.replica.record(self.key, self.stored, self.bytes)?.hash)
    }
}

impl<S: Store> Replica<S> {
    /// The (key, item hash) of every key of `p` in `scope` and the given
    /// segments, for anti-entropy (one scan of the partition).
    pub fn segment_items(
        &self,
        p: Partition,
        scope: &Scope,
        segments: &[u16],
    ) -> Result<Vec<(Vec<u8>, u64)>> {
        let wanted: std::collections::HashSet<usize> =
            segments.iter().map(|&s| usize::from(s)).collect();
        let mut items = Vec::new();
        self.scan_partition(p, |key, stored| {
            if wanted.contains(&segment_of(key, self.q)) && scope.holds(key) {
                items.push((key.to_vec(), stored.hash()?));
            }
            Ok(())
        })?;
        Ok(items)
    }

    /// Calls `f` with every user key of partition `p` and what is stored
    /// for it (read on demand: `Scanned`).
    pub fn scan_partition(
        &self,
        p: Partition,
        mut f: impl FnMut(&[u8], Scanned<'_, S>) -> Result<()>,
    ) -> Result<()> {
        let prefix = self.stored_range(p);
        let mut after: Option<Vec<u8>> = None;
        loop {
            let chunk = self.store.scan(&prefix, after.as_deref(), SCAN_CHUNK)?;
            for (stored, value) in &chunk {
                let key = &stored[prefix.len()..];
                if !self.holds(p, key) {
                    continue;
                }
                let scanned = Scanned {
                    replica: self,
                    key,
                    stored,
                    bytes: value,
                };
                f(key, scanned)?;
            }
            match chunk.last() {
                Some((k, _)) if chunk.len() == SCAN_CHUNK => after = Some(k.clone()),
                _ => return Ok(()),
            }
        }
    }

    /// Keys of `p` live at `now` after `after` starting with `prefix`, at
    /// most `limit` of them, scanning a bounded number of entries. The
    /// empty prefix lists the keys of the namespace `default` only.
    pub(super) fn list(
        &self,
        p: Partition,
        mut after: Option<Vec<u8>>,
        prefix: &[u8],
        limit: u32,
        now: u64,
    ) -> Result<ReplicaMsg> {
        if p.0 >= self.q {
            return Err(Error::Malformed(format!("partition {p} out of range")));
        }
        if let Some(floor) = namespace::scan_floor(prefix)
            && after.as_deref().is_none_or(|a| a < floor)
        {
            after = Some(floor.to_vec());
        }
        let limit = limit.clamp(1, listing::MAX_PAGE) as usize;
        let mut budget = limit * listing::SCAN_PER_KEY;
        let mut keys = Vec::new();
        while budget > 0 {
            let (entries, end) = self.chunk_of(p, prefix, after.as_deref(), budget.min(1024))?;
            budget = budget.saturating_sub(entries.len());
            for (key, state) in entries {
                if !state.is_gone_at(now) {
                    keys.push(key.clone());
                }
                after = Some(key);
                if keys.len() == limit {
                    return Ok(ReplicaMsg::Keys {
                        keys,
                        scanned_to: after,
                    });
                }
            }
            if end {
                return Ok(ReplicaMsg::Keys {
                    keys,
                    scanned_to: None,
                });
            }
        }
        Ok(ReplicaMsg::Keys {
            keys,
            scanned_to: after,
        })
    }

    /// Up to `limit` entries of `p` after key `after` (from its start if
    /// None), in key order, and whether the partition ends there.
    pub fn chunk(
        &self,
        p: Partition,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Entry>, bool)> {
        self.chunk_of(p, &[], after, limit)
    }

    /// As `chunk`, for the keys of `p` that begin with `prefix` only.
    pub(super) fn chunk_of(
        &self,
        p: Partition,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Entry>, bool)> {
        let stored_at = p.ancestor(self.q, self.layout);
        let scanned = storage_key(stored_at, prefix);
        // A scan starts inside the prefix's range (a cursor before it
        // would end the scan at once).
        let mut after = after
            .filter(|a| *a >= prefix)
            .map(|k| storage_key(stored_at, k));
        let mut entries = Vec::new();
        // Past a split, the stored range also holds the keys of `p`'s
        // siblings this node replicates: read on until `limit` are `p`'s.
        loop {
            let rows = self.store.scan(&scanned, after.as_deref(), limit)?;
            let end = rows.len() < limit;
            after = rows.last().map(|(stored, _)| stored.clone());
            for (stored, value) in rows {
                let key = &stored[scanned.len() - prefix.len()..];
                if self.holds(p, key) {
                    entries.push((key.to_vec(), self.state_of(&stored, &value)?));
                    if entries.len() == limit {
                        return Ok((entries, false));
                    }
                }
            }
            if end {
                return Ok((entries, true));
            }
        }
    }

    /// The stored prefix holding partition `p`'s keys: its ancestor's at
    /// the layout.
    fn stored_range(&self, p: Partition) -> [u8; 4] {
        p.ancestor(self.q, self.layout).prefix()
    }

    /// Whether `key`, stored in `p`'s range, is of `p` (always, until Q
    /// passes the layout).
    fn holds(&self, p: Partition, key: &[u8]) -> bool {
        self.q == self.layout || Partition::of_key(key, self.q) == p
    }
}

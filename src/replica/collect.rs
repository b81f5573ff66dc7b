//! What tombstone collection asks of a replica: the keys that read as not
//! found (deleted or expired), and the deletion of dropped namespaces'
//! keys in the partitions this node leads.

use std::collections::HashMap;

use super::{Replica, SCAN_CHUNK};
use crate::error::Result;
use crate::namespace;
use crate::partition::Partition;
use crate::store::{Entry, Store, decode_state};
use crate::version::{SiblingSet, Value};

impl<S: Store> Replica<S> {
    /// Up to `limit` keys of `p` that collection may take at `now` (ms
    /// since the Unix epoch): every sibling a tombstone or expired, and
    /// every timed delete older than `keep_deleted_ms`.
    pub fn tombstones(
        &mut self,
        p: Partition,
        limit: usize,
        now: u64,
    ) -> Result<Vec<(Vec<u8>, SiblingSet)>> {
        if self.tombstoned.get(&p).is_none_or(|due| *due > now) {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        let mut next = None::<u64>;
        self.scan_partition(p, |key, value| {
            if found.len() < limit {
                let state = decode_state(value)?;
                match state.collectable_at(self.keep_deleted_ms) {
                    Some(at) if at <= now => found.push((key.to_vec(), state)),
                    Some(at) => next = Some(next.map_or(at, |n| n.min(at))),
                    None => {}
                }
            }
            Ok(())
        })?;
        if found.is_empty() {
            match next {
                Some(at) => self.tombstoned.insert(p, at),
                None => self.tombstoned.remove(&p),
            };
        }
        Ok(found)
    }

    /// Deletes the keys of dropped namespaces in `partitions` (those this
    /// node leads): up to `limit` keys that still read as found at `now`
    /// get a tombstone over their local copy, minted here as a
    /// coordinator's delete is. Returns the tombstoned sibling sets, for
    /// the shell to write to the keys' other replicas (as a delete's
    /// session does); collection then removes them like any tombstone.
    pub fn delete_dropped(
        &mut self,
        partitions: &[Partition],
        limit: usize,
        now: u64,
    ) -> Result<Vec<Entry>> {
        let prefixes: Vec<Vec<u8>> = self
            .namespaces
            .dropped()
            .map(namespace::key_prefix)
            .collect();
        let mut deleted = Vec::new();
        for &p in partitions {
            for prefix in &prefixes {
                let mut after = None;
                while deleted.len() < limit {
                    let (entries, end) = self.chunk_of(p, prefix, after.as_deref(), SCAN_CHUNK)?;
                    for (key, state) in entries {
                        if deleted.len() < limit && !state.is_gone_at(now) {
                            let delete = Value::Deleted { at_ms: now };
                            let (tombstone, _) =
                                self.update(&key, &state.context(), delete, None)?;
                            deleted.push((key.clone(), tombstone));
                        }
                        after = Some(key);
                    }
                    if end {
                        break;
                    }
                }
            }
        }
        Ok(deleted)
    }
}

/// Notes that a key of `p` may be gone from `at` on.
pub(super) fn mark(tombstoned: &mut HashMap<Partition, u64>, p: Partition, at: u64) {
    let due = tombstoned.entry(p).or_insert(at);
    *due = (*due).min(at);
}

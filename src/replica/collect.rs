//! What tombstone collection asks of a replica: the keys that read as not
//! found (deleted or expired) and the counters to fold, the folds, and the
//! deletion of dropped namespaces' keys in the partitions this node leads.

use std::collections::{BTreeSet, HashMap};

use super::{Replica, SCAN_CHUNK};
use crate::error::Result;
use crate::namespace;
use crate::partition::Partition;
use crate::store::{Entry, Store};
use crate::version::{Actor, SiblingSet, Value};

impl<S: Store> Replica<S> {
    /// Up to `limit` keys of `p` that collection may take at `now` (ms
    /// since the Unix epoch): every sibling a tombstone or expired, and
    /// every timed delete older than `keep_deleted_ms`; and counters a fold
    /// would change, given that the members write as `current` (an entry
    /// of another writer, or a fold's record). A partition is scanned only
    /// when one of them may be there.
    pub fn to_collect(
        &mut self,
        p: Partition,
        limit: usize,
        now: u64,
        current: &BTreeSet<Actor>,
    ) -> Result<Vec<Entry>> {
        let tombstones_due = self.tombstoned.get(&p).is_some_and(|due| *due <= now);
        let folds_due = self
            .counter_writers
            .get(&p)
            .is_some_and(|named| !named.is_subset(current));
        if !tombstones_due && !folds_due {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        let mut tombstones = 0;
        let mut next = None::<u64>;
        let mut named = BTreeSet::new();
        // Keys past a full batch are not decoded: the marks then stay.
        let mut partial = false;
        self.scan_partition(p, |key, stored| {
            if found.len() >= limit {
                partial = true;
                return Ok(());
            }
            let state = stored.state()?;
            match state.collectable_at(self.keep_deleted_ms) {
                Some(at) if at <= now => {
                    found.push((key.to_vec(), state));
                    tombstones += 1;
                }
                Some(at) => next = Some(next.map_or(at, |n| n.min(at))),
                None => {
                    named.extend(state.count_writers());
                    if state.foldable(current) {
                        found.push((key.to_vec(), state));
                    }
                }
            }
            Ok(())
        })?;
        if partial {
            return Ok(found);
        }
        if tombstones == 0 {
            match next {
                Some(at) => self.tombstoned.insert(p, at),
                None => self.tombstoned.remove(&p),
            };
        }
        if named.is_empty() {
            self.counter_writers.remove(&p);
        } else {
            self.counter_writers.insert(p, named);
        }
        Ok(found)
    }

    /// Folds the counter of `key` (`Counter::fold`, keeping the entries of
    /// `current`) if its copy here is still exactly `probed`: a copy that
    /// changed since the probe (an increment raced with the fold) stays as
    /// it is, and joins the folded copies without counting twice. Returns
    /// whether it folded.
    pub fn fold_counter(
        &mut self,
        key: &[u8],
        probed: &SiblingSet,
        current: &BTreeSet<Actor>,
    ) -> Result<bool> {
        let Some((local, record)) = self.stored(key)? else {
            return Ok(false);
        };
        if local != *probed {
            return Ok(false);
        }
        let Some(folded) = local.fold_counter(current)? else {
            return Ok(false);
        };
        self.store_state(key, Some(record), &folded)?;
        Ok(true)
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

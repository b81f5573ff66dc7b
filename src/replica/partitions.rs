//! The partitions a replica answers for: the cluster's Q, which grows by
//! splits while stored keys stay under their layout partition, and the
//! partitions handoff asks it to list and release.

use super::Replica;
use super::load::{Loading, Tally};
use crate::error::{Error, Result};
use crate::partition::Partition;
use crate::placement::Scope;
use crate::store::{Store, storage_key};

impl<S: Store> Replica<S> {
    /// The cluster's Q is `q` from now on (it doubled, once or more): what
    /// was kept per partition is kept per child, and the hash trees and
    /// usage, which a child's cannot be told from its parent's, are built
    /// again by a scan run as the start-up one is (`load`), while the
    /// replica serves. Q never shrinks.
    pub fn set_partitions(&mut self, q: u32) -> Result<()> {
        if q == self.q {
            return Ok(());
        }
        crate::partition::validate_partition_count(q)?;
        if q < self.q {
            return Err(Error::InvalidRequest(format!(
                "the partition count only grows ({} here, {q} asked)",
                self.q
            )));
        }
        let from = self.q;
        self.tombstoned = (self.tombstoned.iter())
            .flat_map(|(p, at)| p.descendants(from, q).map(move |c| (c, *at)))
            .collect();
        self.counter_writers = (self.counter_writers.iter())
            .flat_map(|(p, writers)| p.descendants(from, q).map(move |c| (c, writers.clone())))
            .collect();
        self.q = q;
        self.tally = Tally::default();
        self.loading = Some(Loading::default());
        Ok(())
    }

    /// Refuses a request about partitions at a Q other than this
    /// replica's (the node's actors learn of a split one by one).
    pub fn check_partitions(&self, q: u32) -> Result<()> {
        if q != self.q {
            return Err(Error::Unavailable(format!(
                "asked about {q} partitions, this replica has {}: a split is spreading",
                self.q
            )));
        }
        Ok(())
    }

    /// Where `key` is stored, and its partition (at `q`).
    pub(super) fn place(&self, key: &[u8]) -> (Vec<u8>, Partition) {
        let hash = crate::partition::key_hash(key);
        let stored = storage_key(Partition::of_hash(hash, self.layout), key);
        (stored, Partition::of_hash(hash, self.q))
    }

    /// The partition at `q` of a key stored under layout partition `at`.
    pub(super) fn partition_of(&self, at: Partition, key: &[u8]) -> Partition {
        if self.q == self.layout {
            at
        } else {
            Partition::of_key(key, self.q)
        }
    }

    /// The partitions (at `q`) this replica holds data for, each with the
    /// namespaces it holds keys of, by partition; unavailable until the
    /// start-up scan is done.
    pub fn held(&self, q: u32) -> Result<Vec<(Partition, Vec<String>)>> {
        self.check_partitions(q)?;
        if let Some(loading) = &self.loading {
            return Err(Error::Unavailable(format!(
                "the held partitions are known once the start-up scan is done ({} keys scanned)",
                loading.report.keys
            )));
        }
        let mut held: Vec<(Partition, Vec<String>)> = self
            .tally
            .trees
            .iter()
            .map(|(p, shelf)| (*p, shelf.0.keys().cloned().collect()))
            .collect();
        held.sort();
        Ok(held)
    }

    /// Drops the keys of `p` in `scope` (handed off, or copies beyond
    /// their namespace's `n`) if each tree root in `synced` is still what
    /// its scope's is: the roots the syncs with the replicas started from.
    /// Else a write landed since, and None says to synchronise again first.
    /// Returns how many keys went.
    pub fn release(
        &mut self,
        q: u32,
        p: Partition,
        scope: &Scope,
        synced: &[(Scope, u64)],
    ) -> Result<Option<usize>> {
        self.check_partitions(q)?;
        for (synced_scope, root) in synced {
            if self.tree_in(p, synced_scope)?.root() != *root {
                return Ok(None);
            }
        }
        self.drop_keys(p, scope).map(Some)
    }

    /// Removes every key of `p` in `scope`. Returns how many.
    pub(super) fn drop_keys(&mut self, p: Partition, scope: &Scope) -> Result<usize> {
        let mut keys = Vec::new();
        let mut forgot_own = false;
        let actor = self.actor;
        self.scan_partition(p, |key, stored| {
            if !scope.holds(key) {
                return Ok(());
            }
            keys.push(key.to_vec());
            forgot_own |= stored.state().is_ok_and(|s| s.written_by(actor));
            Ok(())
        })?;
        for key in &keys {
            self.remove(key)?;
        }
        if forgot_own {
            self.forget_writer();
        }
        Ok(keys.len())
    }
}

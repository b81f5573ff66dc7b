//! One keyspace of the node's fjall database as the core's `Store`, with
//! the data store's row cache in front (see the parent module).

use std::sync::Arc;

use dynakv::store::Store;
use dynakv::{Error, Result};
use fjall::{Keyspace, Slice};

use super::{RowCache, Shared, Slot, storage_error};

/// The largest stored value the row cache keeps. A larger one is read
/// from storage: a few would push thousands of small rows out, and its
/// copy costs more than the lookup the cache saves. Measured beside 1 MiB
/// puts (`peers.sh BESIDE=1`, benches/README), when they went through the
/// cache they evicted the small keys, whose gets then queued behind the
/// large writes at the storage worker.
pub(super) const ROW_CACHE_MAX_VALUE: usize = 64 << 10;

/// One fjall keyspace as the core's `Store`.
#[derive(Clone)]
pub struct FjallStore {
    pub(super) keyspace: Keyspace,
    pub(super) slot: Slot,
    pub(super) shared: Arc<Shared>,
}

impl FjallStore {
    fn rows(&self) -> Option<&RowCache> {
        self.shared
            .rows
            .as_ref()
            .filter(|_| self.slot == Slot::Data)
    }

    /// The row cache's copy of `key`, if it holds one (`Some(None)`: known
    /// to be absent). Never reads storage, so it cannot block.
    pub fn cached(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let row = self.rows()?.get(key)?;
        Some(row.map(|v| v.to_vec()))
    }

    /// The row cache learns `key`'s latest copy: kept if small, else
    /// forgotten (so no older copy is answered in its place). A tail's
    /// delta is only ever scanned, so it is not kept.
    fn remember(&self, key: Slice, value: Option<Slice>) {
        let Some(rows) = self.rows() else {
            return;
        };
        if key.starts_with(&dynakv::store::TAIL) {
            return;
        }
        if value
            .as_ref()
            .is_some_and(|v| v.len() > ROW_CACHE_MAX_VALUE)
        {
            rows.remove(&key);
        } else {
            rows.insert(key, value);
        }
    }

    /// A write of `key` failed: the cache must not claim it happened.
    fn forget(&self, key: &[u8], e: fjall::Error) -> Error {
        if let Some(rows) = self.rows() {
            rows.remove(key);
        }
        storage_error(e)
    }

    /// Holds the write back if a batch is open; returns whether it did.
    /// Either way the row cache learns it.
    fn hold(&self, key: &[u8], value: Option<&[u8]>) -> Result<bool> {
        self.shared.refuse_after_failed_sync()?;
        let mut pending = self.shared.pending()?;
        let (key, value) = (Slice::from(key), value.map(Slice::from));
        self.remember(key.clone(), value.clone());
        let Some(p) = pending.as_mut() else {
            return Ok(false);
        };
        match &value {
            Some(v) => p.batch.insert(&self.keyspace, key.clone(), v.clone()),
            None => p.batch.remove(&self.keyspace, key.clone()),
        }
        p.overlay[self.slot as usize].insert(key, value);
        Ok(true)
    }
}

impl Store for FjallStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(p) = self.shared.pending()?.as_ref()
            && let Some(held) = p.overlay[self.slot as usize].get(key)
        {
            return Ok(held.as_ref().map(|v| v.to_vec()));
        }
        if let Some(cached) = self.cached(key) {
            return Ok(cached);
        }
        let stored = self.keyspace.get(key).map_err(storage_error)?;
        // The cache gets a copy of a value it keeps: the one fjall returns
        // may share the whole block it was read from, which the cache
        // would keep alive while weighing the value alone (measured: 1.2 GB
        // a node past the configured caches after 20 s of gets at
        // 3,000,000 keys). A larger value is not kept, so not copied.
        let kept = match &stored {
            Some(v) if v.len() <= ROW_CACHE_MAX_VALUE => Some(Slice::from(&v[..])),
            other => other.clone(),
        };
        self.remember(Slice::from(key), kept);
        Ok(stored.map(|v| v.to_vec()))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if self.hold(key, Some(value))? {
            return Ok(());
        }
        self.keyspace
            .insert(key, value)
            .map_err(|e| self.forget(key, e))?;
        self.shared.seal_if_full(&self.keyspace);
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) -> Result<()> {
        if self.hold(key, None)? {
            return Ok(());
        }
        self.keyspace.remove(key).map_err(|e| self.forget(key, e))?;
        self.shared.seal_if_full(&self.keyspace);
        Ok(())
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.shared.commit()?;
        let iter = match after {
            Some(a) => self
                .keyspace
                .range::<&[u8], _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.keyspace.prefix(prefix),
        };
        let mut out = Vec::new();
        for guard in iter {
            let (k, v) = guard.into_inner().map_err(storage_error)?;
            if !k.starts_with(prefix) || out.len() == limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

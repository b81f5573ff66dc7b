//! fjall storage: one database per node with the keyspaces `data` (sibling
//! sets keyed by partition ++ key), `hints` (writes held for other nodes) and
//! `meta` (membership view and node facts).
//!
//! `insert` only reaches the OS; durability comes from `persist`, which the
//! replica's syncer calls per group of writes (`fsync = "always"`) or on a
//! timer (`"periodic"`), and always at shutdown.

use std::path::Path;

use dynakv::replica::Store;
use dynakv::{Error, Result};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

fn storage_error(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

#[derive(Clone)]
pub struct Storage {
    db: Database,
    data: Keyspace,
    hints: Keyspace,
    meta: Keyspace,
}

impl Storage {
    pub fn open(dir: &Path, cache_mb: u64) -> Result<Storage> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let db = Database::builder(dir)
            .cache_size(cache_mb.saturating_mul(1 << 20))
            .open()
            .map_err(|e| Error::Storage(format!("cannot open {}: {e}", dir.display())))?;
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(storage_error)
        };
        Ok(Storage {
            data: keyspace("data")?,
            hints: keyspace("hints")?,
            meta: keyspace("meta")?,
            db,
        })
    }

    pub fn data(&self) -> FjallStore {
        FjallStore(self.data.clone())
    }

    pub fn hints(&self) -> FjallStore {
        FjallStore(self.hints.clone())
    }

    pub fn meta(&self) -> FjallStore {
        FjallStore(self.meta.clone())
    }

    /// Makes everything written so far durable (fsync).
    pub fn persist(&self) -> Result<()> {
        self.db.persist(PersistMode::SyncAll).map_err(storage_error)
    }

    /// Bytes on disk (tables; the journal is preallocated and not counted).
    pub fn disk_bytes(&self) -> u64 {
        self.data.disk_space() + self.hints.disk_space()
    }
}

/// One fjall keyspace as the core's `Store`.
#[derive(Clone)]
pub struct FjallStore(Keyspace);

impl Store for FjallStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(key).map_err(storage_error)?.map(|v| v.to_vec()))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.0.insert(key, value).map_err(storage_error)
    }

    fn remove(&mut self, key: &[u8]) -> Result<()> {
        self.0.remove(key).map_err(storage_error)
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let iter = match after {
            Some(a) => self
                .0
                .range::<&[u8], _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.0.prefix(prefix),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fjall_store_behaves_like_the_memory_twin() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), 8).unwrap();
        let mut fj = storage.data();
        let mut mem = dynakv::replica::MemStore::default();
        for (k, v) in [
            (&[1u8, 1][..], &b"a"[..]),
            (&[1, 2], b"b"),
            (&[2, 1], b"c"),
            (&[1, 3], b"d"),
        ] {
            fj.put(k, v).unwrap();
            mem.put(k, v).unwrap();
        }
        fj.remove(&[1, 3]).unwrap();
        mem.remove(&[1, 3]).unwrap();
        for (prefix, after, limit) in [
            (&[1u8][..], None, 10),
            (&[1], Some(&[1u8, 1][..]), 10),
            (&[], None, 2),
            (&[2], None, 10),
        ] {
            assert_eq!(
                fj.scan(prefix, after, limit).unwrap(),
                mem.scan(prefix, after, limit).unwrap()
            );
        }
        assert_eq!(fj.get(&[1, 2]).unwrap(), Some(b"b".to_vec()));
        assert_eq!(fj.get(&[1, 3]).unwrap(), None);
        storage.persist().unwrap();
    }
}

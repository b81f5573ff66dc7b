//! A simulated node's disk: what it holds, and what it held at its last
//! sync (all that a power loss leaves).

use std::cell::RefCell;
use std::rc::Rc;

use crate::error::Result;
use crate::store::{MemStore, Store};

/// A node's disk: what it holds, and what it held at the last sync (all
/// that a power loss leaves).
#[derive(Debug, Default)]
struct DiskState {
    now: MemStore,
    synced: MemStore,
}

/// A `Store` over a shared simulated disk (one keyspace).
#[derive(Debug, Clone, Default)]
pub(super) struct Disk(Rc<RefCell<DiskState>>);

impl Disk {
    pub(super) fn sync(&self) {
        let mut d = self.0.borrow_mut();
        d.synced = d.now.clone();
    }

    /// A separate disk holding what this one holds now, all of it synced:
    /// a backup of it (taken from a storage snapshot, which sees every
    /// write, synced or not), or that backup restored.
    pub(super) fn copy(&self) -> Disk {
        let now = self.0.borrow().now.clone();
        Disk(Rc::new(RefCell::new(DiskState {
            synced: now.clone(),
            now,
        })))
    }

    pub(super) fn lose_unsynced(&self) {
        let mut d = self.0.borrow_mut();
        d.now = d.synced.clone();
    }
}

/// A node's disks: its data, its hints, and `meta` (handoff progress).
#[derive(Debug, Clone, Default)]
pub(super) struct Disks {
    pub(super) data: Disk,
    pub(super) hints: Disk,
    pub(super) meta: Disk,
}

impl Disks {
    pub(super) fn sync(&self) {
        self.data.sync();
        self.hints.sync();
        self.meta.sync();
    }

    /// Separate disks holding what these hold now (`Disk::copy`).
    pub(super) fn copy(&self) -> Disks {
        Disks {
            data: self.data.copy(),
            hints: self.hints.copy(),
            meta: self.meta.copy(),
        }
    }

    /// A power loss: every disk is back to its last sync.
    pub(super) fn lose_unsynced(&self) {
        self.data.lose_unsynced();
        self.hints.lose_unsynced();
        self.meta.lose_unsynced();
    }
}

impl Store for Disk {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.0.borrow().now.get(key)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.0.borrow_mut().now.put(key, value)
    }

    fn remove(&mut self, key: &[u8]) -> Result<()> {
        self.0.borrow_mut().now.remove(key)
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.0.borrow().now.scan(prefix, after, limit)
    }
}

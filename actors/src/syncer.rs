//! The durability side of the replica concern, on a SyncArbiter thread
//! of its own: `Syncer` fsyncs what the storage worker does not (on the
//! periodic timer, at shutdown, and for merges of handed-over entries),
//! frees written-out memtables and lets fjall drop old journals. A
//! barrier for write number `s` returns at once if a sync already covered
//! `s`; otherwise it syncs everything written so far. Barriers that queue
//! up while one fsync runs are then covered by it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix::prelude::*;
use dynakv::Result;
use tracing::error;

use crate::storage::Storage;

/// Counters shared by the worker and the syncer (both write and sync).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) written: AtomicU64,
    /// The last write number a sync covered.
    pub(crate) synced: AtomicU64,
    pub(crate) syncs: AtomicU64,
}

/// Makes everything written so far durable with `persist`.
pub(crate) fn sync(counters: &Counters, persist: impl FnOnce() -> Result<()>) -> Result<()> {
    // Everything written before this load is covered by the persist.
    let upto = counters.written.load(Ordering::SeqCst);
    persist()?;
    counters.syncs.fetch_add(1, Ordering::Relaxed);
    counters.synced.fetch_max(upto, Ordering::SeqCst);
    Ok(())
}

/// Wait until write number `.0` is durable.
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub(crate) struct Barrier(pub u64);

/// Make everything written so far durable.
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub(crate) struct SyncNow;

/// Free the memtables fjall is done with, and let it drop old journals
/// (see `Storage::free_memtables` and `Storage::release_journals`).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct FreeMemtables;

pub struct Syncer {
    storage: Storage,
    counters: Arc<Counters>,
}

impl Syncer {
    pub(crate) fn new(storage: Storage, counters: Arc<Counters>) -> Self {
        Syncer { storage, counters }
    }
}

impl Actor for Syncer {
    type Context = SyncContext<Self>;
}

impl Handler<Barrier> for Syncer {
    type Result = Result<()>;

    fn handle(&mut self, Barrier(seq): Barrier, _: &mut SyncContext<Self>) -> Self::Result {
        if self.counters.synced.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        sync(&self.counters, || self.storage.persist_beside_writes())
    }
}

impl Handler<SyncNow> for Syncer {
    type Result = Result<()>;

    fn handle(&mut self, _: SyncNow, _: &mut SyncContext<Self>) -> Self::Result {
        // The periodic timer drops the answer: the failure is logged here.
        sync(&self.counters, || self.storage.persist_beside_writes())
            .inspect_err(|e| error!(error = %e, "fsync failed; later writes will be refused"))
    }
}

impl Handler<FreeMemtables> for Syncer {
    type Result = ();

    fn handle(&mut self, _: FreeMemtables, _: &mut SyncContext<Self>) {
        self.storage.free_memtables();
        self.storage.release_journals();
    }
}

//! The storage side of the replica concern, on SyncArbiter threads.
//!
//! - `StorageWorker` runs the core `dynakv::replica::Replica` over fjall:
//!   reads, DVV updates and merges, hash trees, hints, anti-entropy answers,
//!   handoff chunks, tombstone collection. One worker thread serialises
//!   every read-modify-write of a key. A panic inside the core is caught:
//!   the worker reopens the replica from storage (state rebuilt from disk)
//!   and answers that request with an error.
//! - `Syncer` fsyncs. A barrier for write number `s` returns at once if a
//!   sync already covered `s`; otherwise it syncs everything written so far.
//!   Barriers that queue up while one fsync runs are then covered by it:
//!   group commit.
//!
//! Only the `Replica` actor talks to them.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix::prelude::*;
use dynakv::anti_entropy::{self, AeMsg, Exchange};
use dynakv::replica::{Entry, Replica as Core, ReplicaMsg, Usage};
use dynakv::ring::Partition;
use dynakv::tombstones::Holding;
use dynakv::{Error, NodeId, Result};
use tracing::error;

use crate::replica::{ReplicaSettings, ReplicaStats, Stats};
use crate::storage::{FjallStore, Storage};

/// Counters shared by the worker (which writes) and the syncer (which syncs).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    written: AtomicU64,
    syncs: AtomicU64,
}

/// Applies replica messages in order; returns each one's reply and, if any
/// wrote, the sequence number of the last write to wait on for durability.
#[derive(Message)]
#[rtype(result = "(Vec<Result<ReplicaMsg>>, Option<u64>)")]
pub(crate) struct ApplyBatch(pub Vec<ReplicaMsg>);

/// Merges entries handed over by another node; returns the write's
/// sequence number.
#[derive(Message)]
#[rtype(result = "Result<u64>")]
pub(crate) struct MergeAll(pub Vec<Entry>);

/// Up to `limit` keys hinted for `owner`, with their current local state.
#[derive(Message)]
#[rtype(result = "Result<Vec<Entry>>")]
pub struct TakeHints {
    pub owner: NodeId,
    pub limit: usize,
}

/// `owner` has durably merged `delivered`: clear those hints, and drop the
/// local copy of every delivered key not in `keep`.
#[derive(Message)]
#[rtype(result = "Result<usize>")]
pub struct HandedOff {
    pub owner: NodeId,
    pub delivered: Vec<Entry>,
    pub keep: Vec<Vec<u8>>,
}

/// Clears hints of a departed owner that have nothing left to hand over
/// (`Replica::forget_moot_hints`); returns how many.
#[derive(Message)]
#[rtype(result = "Result<usize>")]
pub struct ForgetMootHints {
    pub owner: NodeId,
    pub limit: usize,
    pub replicates: Vec<Partition>,
}

/// Begins an anti-entropy exchange of a partition from the local tree
/// (`push_only`: the sync before a release).
#[derive(Message)]
#[rtype(result = "Result<(Exchange, AeMsg)>")]
pub struct AeBegin {
    pub partition: Partition,
    pub push_only: bool,
}

/// Feeds an exchange the peer's answer; returns it with the next message
/// (None: the exchange is complete).
#[derive(Message)]
#[rtype(result = "Result<(Exchange, Option<AeMsg>)>")]
pub struct AeContinue(pub Exchange, pub AeMsg);

/// Answers a peer's anti-entropy message from local state.
#[derive(Message)]
#[rtype(result = "Result<AeMsg>")]
pub struct AeRespond(pub AeMsg);

/// Up to `limit` tombstone-only keys of a partition.
#[derive(Message)]
#[rtype(result = "Result<Vec<Entry>>")]
pub struct FindTombstones {
    pub partition: Partition,
    pub limit: usize,
}

/// What this node holds for each probed key.
#[derive(Message)]
#[rtype(result = "Result<Vec<Holding>>")]
pub struct ProbeTombstones(pub Vec<Entry>);

/// Deletes each key whose copy is still the given tombstone.
#[derive(Message)]
#[rtype(result = "Result<usize>")]
pub struct CollectTombstones(pub Vec<Entry>);

/// A chunk of a partition for a node fetching it: up to `limit` entries
/// after `after`, and whether the partition ends there.
#[derive(Message)]
#[rtype(result = "Result<(Vec<Entry>, bool)>")]
pub struct Chunk {
    pub partition: Partition,
    pub after: Option<Vec<u8>>,
    pub limit: usize,
}

/// The partitions this replica holds data for.
#[derive(Message)]
#[rtype(result = "Result<Vec<Partition>>")]
pub struct HeldPartitions;

/// Drops every key of a partition handed off, unless it changed since the
/// tree root its sync started from (`Replica::release_partition`).
#[derive(Message)]
#[rtype(result = "Result<Option<usize>>")]
pub struct DropPartition {
    pub partition: Partition,
    pub synced: u64,
}

/// Keys and bytes held per partition (for `cluster plan`).
#[derive(Message)]
#[rtype(result = "Result<Vec<(Partition, Usage)>>")]
pub struct PartitionUsage;

/// Makes the storage worker panic (tests of supervision).
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub struct PanicInCore;

pub struct StorageWorker {
    core: Option<Core<FjallStore>>,
    storage: Storage,
    settings: ReplicaSettings,
    counters: Arc<Counters>,
}

impl StorageWorker {
    pub(crate) fn new(
        core: Option<Core<FjallStore>>,
        storage: Storage,
        settings: ReplicaSettings,
        counters: Arc<Counters>,
    ) -> Self {
        let mut worker = StorageWorker {
            core,
            storage,
            settings,
            counters,
        };
        if worker.core.is_none() {
            worker.reopen();
        }
        worker
    }

    /// Rebuilds the replica from what storage holds, as a fresh writer: the
    /// lost core may have moved on from the configured one (it does when it
    /// drops copies of its own writes), and reusing an old one could mint a
    /// dot twice.
    fn reopen(&mut self) {
        self.settings.writer = self.settings.writer.successor();
        let s = &self.settings;
        self.core = match Core::open(
            self.storage.data(),
            self.storage.hints(),
            s.partitions,
            s.writer,
            s.max_siblings,
        ) {
            Ok((core, _)) => Some(core),
            Err(e) => {
                error!(error = %e, "cannot reopen storage; the replica answers errors");
                None
            }
        };
    }

    /// Runs `f` on the replica; a panic is caught, the replica reopened
    /// from storage, and the request answered with an error.
    fn with_core<R>(&mut self, f: impl FnOnce(&mut Core<FjallStore>) -> Result<R>) -> Result<R> {
        let core = self
            .core
            .as_mut()
            .ok_or_else(|| Error::Storage("storage failed to open".into()))?;
        match catch_unwind(AssertUnwindSafe(|| f(core))) {
            Ok(answer) => answer,
            Err(_) => {
                error!(
                    actor = "storage-worker",
                    "panicked; reopening the replica from storage"
                );
                self.reopen();
                Err(Error::Internal(
                    "the storage worker failed and was restarted; retry".into(),
                ))
            }
        }
    }

    /// Counts a write; returns its sequence number for the durability barrier.
    fn wrote(&self) -> u64 {
        self.wrote_n(1)
    }

    /// Counts `n` writes; returns the last one's sequence number.
    fn wrote_n(&self, n: u64) -> u64 {
        self.counters.written.fetch_add(n, Ordering::SeqCst) + n
    }
}

impl Actor for StorageWorker {
    type Context = SyncContext<Self>;
}

impl StorageWorker {
    /// Applies one replica message.
    fn apply(&mut self, msg: ReplicaMsg) -> Result<ReplicaMsg> {
        self.with_core(|core| core.apply(msg))
    }
}

impl Handler<ApplyBatch> for StorageWorker {
    type Result = MessageResult<ApplyBatch>;

    fn handle(&mut self, ApplyBatch(msgs): ApplyBatch, _: &mut SyncContext<Self>) -> Self::Result {
        if let Err(e) = self.storage.begin() {
            return MessageResult((msgs.iter().map(|_| Err(e.clone())).collect(), None));
        }
        let mut writes = 0;
        let replies: Vec<Result<ReplicaMsg>> = msgs
            .into_iter()
            .map(|msg| {
                let write = !matches!(msg, ReplicaMsg::Read { .. });
                let reply = self.apply(msg);
                writes += u64::from(write && reply.is_ok());
                reply
            })
            .collect();
        if let Err(e) = self.storage.commit() {
            // The trees already count writes that never reached storage.
            error!(error = %e, "a batch of writes failed; reopening the replica from storage");
            self.reopen();
            return MessageResult((replies.iter().map(|_| Err(e.clone())).collect(), None));
        }
        // Counted once committed: a sync that reads the count covers them.
        let wrote = (writes > 0).then(|| self.wrote_n(writes));
        MessageResult((replies, wrote))
    }
}

impl Handler<MergeAll> for StorageWorker {
    type Result = Result<u64>;

    fn handle(&mut self, MergeAll(entries): MergeAll, _: &mut SyncContext<Self>) -> Self::Result {
        self.with_core(|core| {
            for (key, state) in &entries {
                core.merge(key, state, None)?;
            }
            Ok(())
        })?;
        Ok(self.wrote())
    }
}

/// Handlers that run one core call; `writes` counts a write for durability.
macro_rules! core_handlers {
    ($($msg:ident($m:pat) -> $out:ty, writes: $writes:expr, |$core:ident| $body:expr;)*) => {
        $(impl Handler<$msg> for StorageWorker {
            type Result = Result<$out>;
            fn handle(&mut self, $m: $msg, _: &mut SyncContext<Self>) -> Self::Result {
                let answer = self.with_core(|$core| $body)?;
                if $writes {
                    self.wrote();
                }
                Ok(answer)
            }
        })*
    };
}

core_handlers! {
    TakeHints(m) -> Vec<Entry>, writes: false, |core| core.hinted(&m.owner, m.limit);
    ForgetMootHints(m) -> usize, writes: true, |core| core.forget_moot_hints(&m.owner, m.limit, &m.replicates);
    HandedOff(m) -> usize, writes: true, |core| {
        let keep: std::collections::HashSet<Vec<u8>> = m.keep.into_iter().collect();
        core.handed_off(&m.owner, &m.delivered, |k| keep.contains(k))
    };
    AeBegin(m) -> (Exchange, AeMsg), writes: false, |core| Ok(Exchange::begin(m.partition, core.tree(m.partition), m.push_only));
    AeContinue(AeContinue(mut ex, reply)) -> (Exchange, Option<AeMsg>), writes: true, |core| {
        let next = ex.on_reply(reply, core)?;
        Ok((ex, next))
    };
    AeRespond(AeRespond(msg)) -> AeMsg, writes: true, |core| anti_entropy::respond(core, msg);
    FindTombstones(m) -> Vec<Entry>, writes: false, |core| core.tombstones(m.partition, m.limit);
    ProbeTombstones(ProbeTombstones(entries)) -> Vec<Holding>, writes: false, |core| core.probe_tombstones(&entries);
    CollectTombstones(CollectTombstones(entries)) -> usize, writes: true, |core| core.collect_tombstones(&entries);
    Chunk(m) -> (Vec<Entry>, bool), writes: false, |core| core.chunk(m.partition, m.after.as_deref(), m.limit);
    HeldPartitions(_m) -> Vec<Partition>, writes: false, |core| Ok(core.held_partitions());
    DropPartition(m) -> Option<usize>, writes: true, |core| core.release_partition(m.partition, m.synced);
    PartitionUsage(_m) -> Vec<(Partition, Usage)>, writes: false, |core| Ok(core.usage().iter().map(|(p, u)| (*p, *u)).collect());
}

impl Handler<PanicInCore> for StorageWorker {
    type Result = Result<()>;

    fn handle(&mut self, _: PanicInCore, _: &mut SyncContext<Self>) -> Self::Result {
        self.with_core(|_| -> Result<()> { panic!("injected panic in the storage worker") })
    }
}

impl Handler<Stats> for StorageWorker {
    type Result = Result<ReplicaStats>;

    fn handle(&mut self, _: Stats, _: &mut SyncContext<Self>) -> Self::Result {
        let counters = self.counters.clone();
        let disk_bytes = self.storage.disk_bytes();
        self.with_core(|core| {
            Ok(ReplicaStats {
                keys: core.key_count(),
                bytes: core.usage().values().map(|u| u.bytes).sum(),
                disk_bytes,
                hints: core
                    .hints_pending()
                    .iter()
                    .map(|(o, n)| (o.clone(), *n))
                    .collect(),
                writes: counters.written.load(Ordering::Relaxed),
                syncs: counters.syncs.load(Ordering::Relaxed),
            })
        })
    }
}

// --- syncer ----------------------------------------------------------------

/// Wait until write number `.0` is durable.
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub(crate) struct Barrier(pub u64);

/// Make everything written so far durable.
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub(crate) struct SyncNow;

pub struct Syncer {
    storage: Storage,
    counters: Arc<Counters>,
    synced: u64,
}

impl Syncer {
    pub(crate) fn new(storage: Storage, counters: Arc<Counters>) -> Self {
        Syncer {
            storage,
            counters,
            synced: 0,
        }
    }

    fn sync(&mut self) -> Result<()> {
        // Everything written before this load is covered by the persist.
        let upto = self.counters.written.load(Ordering::SeqCst);
        self.storage.persist()?;
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.synced = upto;
        Ok(())
    }
}

impl Actor for Syncer {
    type Context = SyncContext<Self>;
}

impl Handler<Barrier> for Syncer {
    type Result = Result<()>;

    fn handle(&mut self, Barrier(seq): Barrier, _: &mut SyncContext<Self>) -> Self::Result {
        if self.synced >= seq {
            return Ok(());
        }
        self.sync()
    }
}

impl Handler<SyncNow> for Syncer {
    type Result = Result<()>;

    fn handle(&mut self, _: SyncNow, _: &mut SyncContext<Self>) -> Self::Result {
        self.sync()
    }
}

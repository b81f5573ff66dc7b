//! The replica concern: the node's stored copy of the keys it replicates.
//!
//! - `Replica` is the mailbox everything talks to (local sessions, the Bridge
//!   for peers, tests injecting writes). It forwards each request to the
//!   storage worker and, with `fsync = "always"`, answers only after the
//!   syncer has made the write durable.
//! - `StorageWorker` runs the core `dynakv::replica::Replica` over fjall on a
//!   SyncArbiter thread: reads, DVV updates and merges, hash trees. One
//!   worker thread serialises every read-modify-write of a key.
//! - `Syncer` fsyncs on its own thread. A barrier for write number `s`
//!   returns at once if a sync already covered `s`; otherwise it syncs
//!   everything written so far. Barriers that queue up while one fsync runs
//!   are then covered by it: group commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use dynakv::anti_entropy::{self, AeMsg, Exchange};
use dynakv::config::Fsync;
use dynakv::replica::{Entry, Replica as Core, ReplicaMsg, Usage};
use dynakv::ring::Partition;
use dynakv::tombstones::Holding;
use dynakv::version::{Actor as Writer, SiblingSet};
use dynakv::{Error, NodeId, Result};
use tracing::{error, warn};

use crate::storage::{FjallStore, Storage};

/// A request to this node's replica; answered with the reply message.
#[derive(Message)]
#[rtype(result = "Result<ReplicaMsg>")]
pub struct ReplicaRequest(pub ReplicaMsg);

/// This node's local copy of a key (for `inspect`).
#[derive(Message)]
#[rtype(result = "Result<SiblingSet>")]
pub struct ReadLocal(pub Vec<u8>);

/// Counts for `status`.
#[derive(Message)]
#[rtype(result = "Result<ReplicaStats>")]
pub struct Stats;

#[derive(Debug, Clone, Default, PartialEq, Eq, MessageResponse)]
pub struct ReplicaStats {
    pub keys: u64,
    /// Hints held, per owner.
    pub hints: Vec<(NodeId, u64)>,
    /// Writes applied since start.
    pub writes: u64,
    /// fsyncs since start (with group commit, fewer than writes).
    pub syncs: u64,
}

/// Counters shared by the worker (which writes) and the syncer (which syncs).
#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    syncs: AtomicU64,
}

/// Merges sibling sets handed off by a stand-in; answered once they are
/// durable (per the fsync mode).
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub struct MergeHandoff(pub Vec<(Vec<u8>, SiblingSet)>);

/// Up to `limit` keys hinted for `owner`, with their current local state.
#[derive(Message)]
#[rtype(result = "Result<Vec<(Vec<u8>, SiblingSet)>>")]
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
    pub delivered: Vec<(Vec<u8>, SiblingSet)>,
    pub keep: Vec<Vec<u8>>,
}

/// Begins an anti-entropy exchange of a partition from the local tree.
#[derive(Message)]
#[rtype(result = "Result<(Exchange, AeMsg)>")]
pub struct AeBegin(pub Partition);

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
#[rtype(result = "Result<Vec<(Vec<u8>, SiblingSet)>>")]
pub struct FindTombstones {
    pub partition: Partition,
    pub limit: usize,
}

/// What this node holds for each probed key.
#[derive(Message)]
#[rtype(result = "Result<Vec<Holding>>")]
pub struct ProbeTombstones(pub Vec<(Vec<u8>, SiblingSet)>);

/// Deletes each key whose copy is still the given tombstone.
#[derive(Message)]
#[rtype(result = "Result<usize>")]
pub struct CollectTombstones(pub Vec<(Vec<u8>, SiblingSet)>);

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

/// Drops every key of a partition (handed off); returns how many.
#[derive(Message)]
#[rtype(result = "Result<usize>")]
pub struct DropPartition(pub Partition);

/// Keys and bytes held per partition (for `cluster plan`).
#[derive(Message)]
#[rtype(result = "Result<Vec<(Partition, Usage)>>")]
pub struct PartitionUsage;

/// The worker's side of `MergeHandoff`: returns the write's sequence number.
#[derive(Message)]
#[rtype(result = "Result<u64>")]
struct MergeAll(Vec<(Vec<u8>, SiblingSet)>);

/// Makes every write so far durable (used at shutdown).
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub struct Flush;

pub(crate) fn mailbox_error(e: MailboxError) -> Error {
    Error::Unavailable(format!("local actor unavailable: {e}"))
}

pub struct Replica {
    worker: Addr<StorageWorker>,
    syncer: Addr<Syncer>,
    fsync: Fsync,
    fsync_interval: Duration,
}

impl Replica {
    /// Starts the replica concern over `storage`: opens the core replica
    /// (scanning storage once to build the hash trees), then its worker and
    /// syncer threads.
    pub fn start(storage: Storage, settings: ReplicaSettings) -> Result<Addr<Replica>> {
        let (core, report) = Core::open(
            storage.data(),
            storage.hints(),
            settings.partitions,
            settings.writer,
            settings.max_siblings,
        )?;
        if !report.corrupt.is_empty() {
            error!(
                records = report.corrupt.len(),
                "undecodable records in storage; they read as errors"
            );
        }
        tracing::info!(
            keys = report.keys,
            partitions = report.partitions,
            "storage opened"
        );
        let counters = Arc::new(Counters::default());
        let first = Mutex::new(Some(core));
        let worker_storage = storage.clone();
        let worker_counters = counters.clone();
        let worker = SyncArbiter::start(1, move || {
            let core = first.lock().ok().and_then(|mut c| c.take());
            StorageWorker::new(core, &worker_storage, settings, worker_counters.clone())
        });
        let syncer = SyncArbiter::start(1, move || Syncer {
            storage: storage.clone(),
            counters: counters.clone(),
            synced: 0,
        });
        Ok(Replica {
            worker,
            syncer,
            fsync: settings.fsync,
            fsync_interval: settings.fsync_interval,
        }
        .start())
    }
}

/// What the replica needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaSettings {
    pub partitions: u32,
    pub writer: Writer,
    pub max_siblings: usize,
    pub fsync: Fsync,
    pub fsync_interval: Duration,
}

impl Actor for Replica {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        if self.fsync == Fsync::Periodic {
            ctx.run_interval(self.fsync_interval, |act, _| act.syncer.do_send(SyncNow));
        }
    }
}

impl Handler<ReplicaRequest> for Replica {
    type Result = ResponseFuture<Result<ReplicaMsg>>;

    fn handle(
        &mut self,
        ReplicaRequest(msg): ReplicaRequest,
        _: &mut Context<Self>,
    ) -> Self::Result {
        let worker = self.worker.clone();
        let syncer = (self.fsync == Fsync::Always).then(|| self.syncer.clone());
        Box::pin(async move {
            let (reply, seq) = worker.send(Apply(msg)).await.map_err(mailbox_error)??;
            if let (Some(syncer), Some(seq)) = (syncer, seq) {
                syncer.send(Barrier(seq)).await.map_err(mailbox_error)??;
            }
            Ok(reply)
        })
    }
}

impl Handler<ReadLocal> for Replica {
    type Result = ResponseFuture<Result<SiblingSet>>;

    fn handle(&mut self, ReadLocal(key): ReadLocal, _: &mut Context<Self>) -> Self::Result {
        let worker = self.worker.clone();
        Box::pin(async move {
            match worker
                .send(Apply(ReplicaMsg::Read { key }))
                .await
                .map_err(mailbox_error)??
            {
                (ReplicaMsg::State { state }, _) => Ok(state),
                (other, _) => Err(Error::Internal(format!("read answered with {other:?}"))),
            }
        })
    }
}

impl Handler<Stats> for Replica {
    type Result = ResponseFuture<Result<ReplicaStats>>;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> Self::Result {
        let worker = self.worker.clone();
        Box::pin(async move { worker.send(Stats).await.map_err(mailbox_error)? })
    }
}

impl Handler<MergeHandoff> for Replica {
    type Result = ResponseFuture<Result<()>>;

    fn handle(
        &mut self,
        MergeHandoff(entries): MergeHandoff,
        _: &mut Context<Self>,
    ) -> Self::Result {
        let worker = self.worker.clone();
        let syncer = (self.fsync == Fsync::Always).then(|| self.syncer.clone());
        Box::pin(async move {
            let seq = worker
                .send(MergeAll(entries))
                .await
                .map_err(mailbox_error)??;
            if let Some(syncer) = syncer {
                syncer.send(Barrier(seq)).await.map_err(mailbox_error)??;
            }
            Ok(())
        })
    }
}

/// Messages the front passes straight to the storage worker.
macro_rules! forward_to_worker {
    ($($msg:ty => $out:ty),* $(,)?) => {
        $(impl Handler<$msg> for Replica {
            type Result = ResponseFuture<Result<$out>>;
            fn handle(&mut self, msg: $msg, _: &mut Context<Self>) -> Self::Result {
                let sent = self.worker.send(msg);
                Box::pin(async move { sent.await.map_err(mailbox_error)? })
            }
        })*
    };
}

forward_to_worker!(
    TakeHints => Vec<(Vec<u8>, SiblingSet)>,
    HandedOff => usize,
    AeBegin => (Exchange, AeMsg),
    AeContinue => (Exchange, Option<AeMsg>),
    AeRespond => AeMsg,
    FindTombstones => Vec<(Vec<u8>, SiblingSet)>,
    ProbeTombstones => Vec<Holding>,
    CollectTombstones => usize,
    Chunk => (Vec<Entry>, bool),
    HeldPartitions => Vec<Partition>,
    DropPartition => usize,
    PartitionUsage => Vec<(Partition, Usage)>,
);

impl Handler<Flush> for Replica {
    type Result = ResponseFuture<Result<()>>;

    fn handle(&mut self, _: Flush, _: &mut Context<Self>) -> Self::Result {
        let syncer = self.syncer.clone();
        Box::pin(async move { syncer.send(SyncNow).await.map_err(mailbox_error)? })
    }
}

// --- storage worker -------------------------------------------------------

/// Applies one replica message; returns the reply and, for writes, the write
/// sequence number to wait on for durability.
#[derive(Message)]
#[rtype(result = "Result<(ReplicaMsg, Option<u64>)>")]
struct Apply(ReplicaMsg);

pub struct StorageWorker {
    core: Option<Core<FjallStore>>,
    counters: Arc<Counters>,
}

impl StorageWorker {
    fn new(
        core: Option<Core<FjallStore>>,
        storage: &Storage,
        settings: ReplicaSettings,
        counters: Arc<Counters>,
    ) -> Self {
        // A restarted worker (after its thread stopped) reopens storage.
        let core = core.or_else(|| {
            match Core::open(
                storage.data(),
                storage.hints(),
                settings.partitions,
                settings.writer,
                settings.max_siblings,
            ) {
                Ok((core, _)) => Some(core),
                Err(e) => {
                    error!(error = %e, "cannot reopen storage; the replica answers errors");
                    None
                }
            }
        });
        StorageWorker { core, counters }
    }

    fn core(&mut self) -> Result<&mut Core<FjallStore>> {
        self.core
            .as_mut()
            .ok_or_else(|| Error::Storage("storage failed to open".into()))
    }
}

impl Actor for StorageWorker {
    type Context = SyncContext<Self>;
}

impl Handler<Apply> for StorageWorker {
    type Result = Result<(ReplicaMsg, Option<u64>)>;

    fn handle(&mut self, Apply(msg): Apply, _: &mut SyncContext<Self>) -> Self::Result {
        let core = self.core()?;
        let reply = match msg {
            ReplicaMsg::Read { key } => {
                return Ok((
                    ReplicaMsg::State {
                        state: core.read(&key)?,
                    },
                    None,
                ));
            }
            ReplicaMsg::Update {
                key,
                context,
                value,
                hint_for,
            } => {
                let (state, dot) = core.update(&key, &context, value, hint_for.as_ref())?;
                ReplicaMsg::Updated { state, dot }
            }
            ReplicaMsg::Write {
                key,
                state,
                hint_for,
            } => {
                core.merge(&key, &state, hint_for.as_ref())?;
                ReplicaMsg::Ack
            }
            other => {
                warn!(
                    ?other,
                    "a reply message was sent to the replica as a request"
                );
                return Err(Error::InvalidRequest("not a replica request".into()));
            }
        };
        Ok((reply, Some(self.wrote())))
    }
}

impl StorageWorker {
    /// Counts a write; returns its sequence number for the durability barrier.
    fn wrote(&self) -> u64 {
        self.counters.written.fetch_add(1, Ordering::SeqCst) + 1
    }
}

impl Handler<MergeAll> for StorageWorker {
    type Result = Result<u64>;

    fn handle(&mut self, MergeAll(entries): MergeAll, _: &mut SyncContext<Self>) -> Self::Result {
        let core = self.core()?;
        for (key, state) in &entries {
            core.merge(key, state, None)?;
        }
        Ok(self.wrote())
    }
}

impl Handler<TakeHints> for StorageWorker {
    type Result = Result<Vec<(Vec<u8>, SiblingSet)>>;

    fn handle(&mut self, m: TakeHints, _: &mut SyncContext<Self>) -> Self::Result {
        self.core()?.hinted(&m.owner, m.limit)
    }
}

impl Handler<HandedOff> for StorageWorker {
    type Result = Result<usize>;

    fn handle(&mut self, m: HandedOff, _: &mut SyncContext<Self>) -> Self::Result {
        let keep: std::collections::HashSet<Vec<u8>> = m.keep.into_iter().collect();
        let cleared = self
            .core()?
            .handed_off(&m.owner, &m.delivered, |k| keep.contains(k))?;
        self.wrote();
        Ok(cleared)
    }
}

impl Handler<AeBegin> for StorageWorker {
    type Result = Result<(Exchange, AeMsg)>;

    fn handle(&mut self, AeBegin(p): AeBegin, _: &mut SyncContext<Self>) -> Self::Result {
        Ok(Exchange::start(p, self.core()?.tree(p)))
    }
}

impl Handler<AeContinue> for StorageWorker {
    type Result = Result<(Exchange, Option<AeMsg>)>;

    fn handle(
        &mut self,
        AeContinue(mut ex, reply): AeContinue,
        _: &mut SyncContext<Self>,
    ) -> Self::Result {
        let next = ex.on_reply(reply, self.core()?)?;
        self.wrote();
        Ok((ex, next))
    }
}

impl Handler<AeRespond> for StorageWorker {
    type Result = Result<AeMsg>;

    fn handle(&mut self, AeRespond(msg): AeRespond, _: &mut SyncContext<Self>) -> Self::Result {
        let answer = anti_entropy::respond(self.core()?, msg)?;
        self.wrote();
        Ok(answer)
    }
}

impl Handler<FindTombstones> for StorageWorker {
    type Result = Result<Vec<(Vec<u8>, SiblingSet)>>;

    fn handle(&mut self, m: FindTombstones, _: &mut SyncContext<Self>) -> Self::Result {
        self.core()?.tombstones(m.partition, m.limit)
    }
}

impl Handler<ProbeTombstones> for StorageWorker {
    type Result = Result<Vec<Holding>>;

    fn handle(
        &mut self,
        ProbeTombstones(entries): ProbeTombstones,
        _: &mut SyncContext<Self>,
    ) -> Self::Result {
        self.core()?.probe_tombstones(&entries)
    }
}

impl Handler<CollectTombstones> for StorageWorker {
    type Result = Result<usize>;

    fn handle(
        &mut self,
        CollectTombstones(entries): CollectTombstones,
        _: &mut SyncContext<Self>,
    ) -> Self::Result {
        let removed = self.core()?.collect_tombstones(&entries)?;
        self.wrote();
        Ok(removed)
    }
}

impl Handler<Chunk> for StorageWorker {
    type Result = Result<(Vec<Entry>, bool)>;

    fn handle(&mut self, m: Chunk, _: &mut SyncContext<Self>) -> Self::Result {
        self.core()?.chunk(m.partition, m.after.as_deref(), m.limit)
    }
}

impl Handler<HeldPartitions> for StorageWorker {
    type Result = Result<Vec<Partition>>;

    fn handle(&mut self, _: HeldPartitions, _: &mut SyncContext<Self>) -> Self::Result {
        Ok(self.core()?.held_partitions())
    }
}

impl Handler<DropPartition> for StorageWorker {
    type Result = Result<usize>;

    fn handle(
        &mut self,
        DropPartition(p): DropPartition,
        _: &mut SyncContext<Self>,
    ) -> Self::Result {
        let dropped = self.core()?.drop_partition(p)?;
        self.wrote();
        Ok(dropped)
    }
}

impl Handler<PartitionUsage> for StorageWorker {
    type Result = Result<Vec<(Partition, Usage)>>;

    fn handle(&mut self, _: PartitionUsage, _: &mut SyncContext<Self>) -> Self::Result {
        Ok(self.core()?.usage().iter().map(|(p, u)| (*p, *u)).collect())
    }
}

impl Handler<Stats> for StorageWorker {
    type Result = Result<ReplicaStats>;

    fn handle(&mut self, _: Stats, _: &mut SyncContext<Self>) -> Self::Result {
        let core = self.core()?;
        Ok(ReplicaStats {
            keys: core.key_count(),
            hints: core
                .hints_pending()
                .iter()
                .map(|(o, n)| (o.clone(), *n))
                .collect(),
            writes: self.counters.written.load(Ordering::Relaxed),
            syncs: self.counters.syncs.load(Ordering::Relaxed),
        })
    }
}

// --- syncer ---------------------------------------------------------------

/// Wait until write number `.0` is durable.
#[derive(Message)]
#[rtype(result = "Result<()>")]
struct Barrier(u64);

/// Make everything written so far durable.
#[derive(Message)]
#[rtype(result = "Result<()>")]
struct SyncNow;

pub struct Syncer {
    storage: Storage,
    counters: Arc<Counters>,
    synced: u64,
}

impl Syncer {
    fn sync_upto(&mut self, target: u64) -> Result<()> {
        if self.synced >= target {
            return Ok(());
        }
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
        self.sync_upto(seq)
    }
}

impl Handler<SyncNow> for Syncer {
    type Result = Result<()>;

    fn handle(&mut self, _: SyncNow, _: &mut SyncContext<Self>) -> Self::Result {
        let upto = self.counters.written.load(Ordering::SeqCst);
        self.storage.persist()?;
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.synced = upto;
        Ok(())
    }
}

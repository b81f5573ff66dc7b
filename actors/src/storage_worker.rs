//! The storage side of the replica concern, on SyncArbiter threads.
//!
//! - `StorageWorker` runs the core `dynakv::replica::Replica` over fjall:
//!   reads, DVV updates and merges, hash trees, hints, anti-entropy answers,
//!   handoff chunks, tombstone collection. One worker thread serialises
//!   every read-modify-write of a key. A panic inside the core is caught:
//!   the worker reopens the replica from storage (state rebuilt from disk)
//!   and answers that request with an error. Opening reads no data: the
//!   replica serves at once, and the worker runs its start-up scan (hash
//!   trees, usage) a step at a time between requests (`Load`, sent to
//!   itself, queued behind what arrived meanwhile).
//!   With `fsync = "always"` it makes each batch of requests durable
//!   before answering it; requests arriving meanwhile form the next batch,
//!   so concurrent writes share one fsync (group commit).
//! - `Syncer` (`crate::syncer`) fsyncs everything else.
//!
//! Only the `Replica` actor talks to them.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::WeakAddr;
use actix::prelude::*;
use dynakv::anti_entropy::{self, AeMsg, Exchange};
use dynakv::config::Fsync;
use dynakv::handoff::{self, HandoffMsg};
use dynakv::namespace;
use dynakv::partition::Partition;
use dynakv::placement::Scope;
use dynakv::replica::{Replica as Core, ReplicaMsg, Usage};
use dynakv::store::Entry;
use dynakv::tombstones::{self, GcMsg};
use dynakv::version::Actor as Writer;
use dynakv::{Error, NodeId, Result};
use tracing::{error, info};

use crate::clock::wall_ms;
use crate::storage::{FjallStore, Storage};
use crate::syncer::{Counters, sync};

/// Applies replica messages in order and returns each one's reply; with
/// `fsync = "always"` the writes are durable by then.
#[derive(Message)]
#[rtype(result = "Vec<Result<ReplicaMsg>>")]
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

/// `owner` has durably merged `delivered`: clear those hints.
#[derive(Message)]
#[rtype(result = "Result<usize>")]
pub struct HandedOff {
    pub owner: NodeId,
    pub delivered: Vec<Entry>,
}

/// Clears hints of a departed owner that have nothing left to hand over
/// (`Replica::forget_moot_hints`); returns how many.
#[derive(Message)]
#[rtype(result = "Result<usize>")]
pub struct ForgetMootHints {
    pub owner: NodeId,
    pub limit: usize,
    /// The Q `replicates` is at.
    pub partitions: u32,
    pub replicates: Vec<Partition>,
}

/// Begins an anti-entropy exchange of `scope` in a partition from the
/// local tree (`push_only`: give what the peer lacks and take nothing, the
/// sync before a release).
#[derive(Message)]
#[rtype(result = "Result<(Exchange, AeMsg)>")]
pub struct AeBegin {
    pub partition: Partition,
    pub scope: Scope,
    pub push_only: bool,
}

/// Feeds an exchange the peer's answer; returns it with the next message
/// (None: the exchange is complete).
#[derive(Message)]
#[rtype(result = "Result<(Exchange, Option<AeMsg>)>")]
pub struct AeContinue(pub Exchange, pub AeMsg);

/// Counts for `status`.
#[derive(Message)]
#[rtype(result = "Result<ReplicaStats>")]
pub struct Stats;

#[derive(Debug, Clone, Default, PartialEq, Eq, MessageResponse)]
pub struct ReplicaStats {
    pub keys: u64,
    /// Bytes of keys and values stored.
    pub bytes: u64,
    /// Bytes of table files on disk.
    pub disk_bytes: u64,
    /// Hints held, per owner.
    pub hints: Vec<(NodeId, u64)>,
    /// Writes applied since start.
    pub writes: u64,
    /// fsyncs since start (with group commit, fewer than writes).
    pub syncs: u64,
}

/// What the replica needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaSettings {
    pub partitions: u32,
    pub writer: Writer,
    pub max_siblings: usize,
    pub fsync: Fsync,
    pub fsync_interval: Duration,
    /// `anti_entropy.keep_deleted_ms`.
    pub keep_deleted_ms: u64,
    /// `storage.scan_keys_per_sec` (0: unpaced).
    pub scan_keys_per_sec: u64,
}

impl ReplicaSettings {
    /// The wait between two steps of the start-up scan, if it is paced.
    fn scan_pause(&self) -> Option<Duration> {
        (self.scan_keys_per_sec > 0)
            .then(|| Duration::from_secs_f64(LOAD_STEP as f64 / self.scan_keys_per_sec as f64))
    }
}

/// Opens the core replica over `storage` with `settings`, without reading
/// the data (the worker's `Load` steps scan it).
pub(crate) fn open_core(storage: &Storage, settings: &ReplicaSettings) -> Result<Core<FjallStore>> {
    let mut core = Core::opening(
        storage.data(),
        storage.hints(),
        settings.partitions,
        settings.writer,
        settings.max_siblings,
    )?;
    core.keep_deleted(settings.keep_deleted_ms);
    Ok(core)
}

/// Stored keys the start-up scan reads per step: a few milliseconds, the
/// most a request waits behind it.
const LOAD_STEP: usize = 1024;

/// One step of the replica's start-up scan (the worker sends it to itself
/// until the scan is done).
#[derive(Message)]
#[rtype(result = "()")]
struct Load;

/// The catch-up message with this replica's roots of a scope in these
/// partitions.
#[derive(Message)]
#[rtype(result = "Result<AeMsg>")]
pub struct AeRoots(pub Scope, pub Vec<Partition>);

/// Answers a peer's anti-entropy message from local state.
#[derive(Message)]
#[rtype(result = "Result<AeMsg>")]
pub struct AeRespond(pub AeMsg);

/// Up to `limit` tombstone-only keys of a partition, and counters naming
/// writers other than `current` (`Replica::to_collect`).
#[derive(Message)]
#[rtype(result = "Result<Vec<Entry>>")]
pub struct FindToCollect {
    pub partition: Partition,
    pub limit: usize,
    pub current: BTreeSet<Writer>,
}

/// A tombstone probe or collect, answered from the local replica
/// (`dynakv::tombstones::respond`).
#[derive(Message)]
#[rtype(result = "Result<GcMsg>")]
pub struct GcRespond(pub GcMsg);

/// A peer's fetch of a chunk of a partition, answered from the local
/// replica (`dynakv::handoff::respond`).
#[derive(Message)]
#[rtype(result = "Result<HandoffMsg>")]
pub struct HandoffRespond(pub HandoffMsg);

/// The partitions (at this Q) this replica holds data for, with their
/// namespaces (`Replica::held`).
#[derive(Message)]
#[rtype(result = "Result<Vec<(Partition, Vec<String>)>>")]
pub struct HeldPartitions(pub u32);

/// Drops the keys of `scope` in a partition released, unless they changed
/// since their syncs began (`Replica::release`).
#[derive(Message)]
#[rtype(result = "Result<Option<usize>>")]
pub struct DropPartition {
    pub partitions: u32,
    pub partition: Partition,
    pub scope: Scope,
    pub synced: Vec<(Scope, u64)>,
}

/// Keys and bytes held per partition (for `cluster plan`).
#[derive(Message)]
#[rtype(result = "Result<Vec<(Partition, Usage)>>")]
pub struct PartitionUsage;

/// Deletes up to `limit` keys of dropped namespaces in `partitions`
/// (`Replica::delete_dropped`); answered with their tombstones.
#[derive(Message)]
#[rtype(result = "Result<Vec<Entry>>")]
pub struct DeleteDropped {
    pub partitions: Vec<Partition>,
    pub limit: usize,
}

/// The cluster's namespaces changed (`Replica::set_namespaces`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetNamespaces(pub namespace::Table);

/// The cluster's Q doubled (`Replica::set_partitions`): the trees are
/// built again by a scan, as at the start.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPartitions(pub u32);

/// Makes the storage worker panic (tests of supervision).
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub struct PanicInCore;

pub struct StorageWorker {
    core: Option<Core<FjallStore>>,
    storage: Storage,
    settings: ReplicaSettings,
    counters: Arc<Counters>,
    /// The last namespaces and Q given, for a core reopened after a panic.
    namespaces: namespace::Table,
    partitions: u32,
    /// This worker's address, for its `Load` steps (set once started;
    /// weak, so the worker still stops once the front lets go of it).
    me: Option<WeakAddr<StorageWorker>>,
    /// The node's arbiter, whose timers pace the start-up scan.
    timers: ArbiterHandle,
    /// When the start-up scan under way began.
    loading_since: Option<Instant>,
}

impl StorageWorker {
    pub(crate) fn new(
        core: Option<Core<FjallStore>>,
        storage: Storage,
        settings: ReplicaSettings,
        counters: Arc<Counters>,
        timers: ArbiterHandle,
    ) -> Self {
        let mut worker = StorageWorker {
            core,
            storage,
            settings,
            counters,
            timers,
            namespaces: namespace::Table::default(),
            partitions: settings.partitions,
            me: None,
            loading_since: Some(Instant::now()),
        };
        if worker.core.is_none() {
            worker.reopen();
        }
        worker
    }

    /// Queues the next step of the start-up scan: at once, or after the
    /// pause `storage.scan_keys_per_sec` asks for.
    fn load_soon(&self) {
        let Some(me) = self.me.clone() else {
            return;
        };
        let send = move || {
            if let Some(me) = me.upgrade() {
                me.do_send(Load);
            }
        };
        match self.settings.scan_pause() {
            None => send(),
            Some(pause) => {
                self.timers.spawn(async move {
                    actix_rt::time::sleep(pause).await;
                    send();
                });
            }
        }
    }

    /// Rebuilds the replica from what storage holds, as a fresh writer: the
    /// lost core may have moved on from the configured one (it does when it
    /// drops copies of its own writes), and reusing an old one could mint a
    /// dot twice.
    fn reopen(&mut self) {
        self.settings.writer = self.settings.writer.successor();
        self.core = match open_core(&self.storage, &self.settings) {
            Ok(mut core) => {
                core.set_namespaces(self.namespaces.clone());
                if let Err(e) = core.set_partitions(self.partitions) {
                    error!(error = %e, "cannot take the cluster's partition count");
                }
                self.loading_since = Some(Instant::now());
                self.load_soon();
                Some(core)
            }
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

    fn started(&mut self, ctx: &mut SyncContext<Self>) {
        self.me = Some(ctx.address().downgrade());
        self.load_soon();
    }
}

impl Handler<Load> for StorageWorker {
    type Result = ();

    fn handle(&mut self, _: Load, _: &mut SyncContext<Self>) {
        let Some(since) = self.loading_since else {
            return;
        };
        match self.with_core(|core| core.load(LOAD_STEP)) {
            Ok(None) => self.load_soon(),
            Ok(Some(report)) => {
                self.loading_since = None;
                if !report.corrupt.is_empty() {
                    error!(
                        records = report.corrupt.len(),
                        "undecodable records in storage; they read as errors"
                    );
                }
                info!(
                    keys = report.keys,
                    partitions = report.partitions,
                    upgraded = report.upgraded,
                    took_ms = since.elapsed().as_millis() as u64,
                    "storage scanned: hash trees built, anti-entropy and handoff can run"
                );
            }
            // A panic reopened the replica, whose own scan is queued.
            Err(_) if self.loading_since != Some(since) => {}
            Err(e) => {
                self.loading_since = None;
                error!(error = %e, "the start-up scan of storage failed; anti-entropy and handoff wait for a restart");
            }
        }
    }
}

impl StorageWorker {
    /// Applies one replica message at `now` (`wall_ms`).
    fn apply(&mut self, msg: ReplicaMsg, now: u64) -> Result<ReplicaMsg> {
        self.with_core(|core| core.apply(msg, now))
    }
}

impl Handler<ApplyBatch> for StorageWorker {
    type Result = MessageResult<ApplyBatch>;

    fn handle(&mut self, ApplyBatch(msgs): ApplyBatch, _: &mut SyncContext<Self>) -> Self::Result {
        let n = msgs.len();
        let fail_all = |e: Error| MessageResult(vec![Err(e); n]);
        if let Err(e) = self.storage.begin() {
            return fail_all(e);
        }
        let mut writes = 0;
        let now = wall_ms();
        let replies: Vec<Result<ReplicaMsg>> = msgs
            .into_iter()
            .map(|msg| {
                let write = !matches!(msg, ReplicaMsg::Read { .. } | ReplicaMsg::List { .. });
                let reply = self.apply(msg, now);
                writes += u64::from(write && reply.is_ok());
                reply
            })
            .collect();
        if let Err(e) = self.storage.commit() {
            // The trees already count writes that never reached storage.
            error!(error = %e, "a batch of writes failed; reopening the replica from storage");
            self.reopen();
            return fail_all(e);
        }
        if writes > 0 {
            // Counted once committed: a sync that reads the count covers them.
            self.wrote_n(writes);
            if self.settings.fsync == Fsync::Always
                && let Err(e) = sync(&self.counters, || self.storage.persist())
            {
                error!(error = %e, "fsync failed; the batch's writes are not acknowledged");
                return fail_all(e);
            }
        }
        MessageResult(replies)
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
    ForgetMootHints(m) -> usize, writes: true, |core| core.forget_moot_hints(&m.owner, m.limit, m.partitions, &m.replicates);
    HandedOff(m) -> usize, writes: true, |core| core.handed_off(&m.owner, &m.delivered);
    AeBegin(m) -> (Exchange, AeMsg), writes: false, |core| Ok(Exchange::begin(m.partition, m.scope.clone(), core.tree_in(m.partition, &m.scope)?, m.push_only));
    AeContinue(AeContinue(mut ex, reply)) -> (Exchange, Option<AeMsg>), writes: true, |core| {
        let next = ex.on_reply(reply, core)?;
        Ok((ex, next))
    };
    AeRespond(AeRespond(msg)) -> AeMsg, writes: true, |core| anti_entropy::respond(core, msg);
    AeRoots(AeRoots(scope, partitions)) -> AeMsg, writes: false, |core| anti_entropy::roots(core, &scope, &partitions);
    FindToCollect(m) -> Vec<Entry>, writes: false, |core| core.to_collect(m.partition, m.limit, wall_ms(), &m.current);
    DeleteDropped(m) -> Vec<Entry>, writes: true, |core| core.delete_dropped(&m.partitions, m.limit, wall_ms());
    GcRespond(GcRespond(msg)) -> GcMsg, writes: true, |core| tombstones::respond(core, msg);
    HandoffRespond(HandoffRespond(msg)) -> HandoffMsg, writes: false, |core| handoff::respond(core, msg);
    HeldPartitions(HeldPartitions(q)) -> Vec<(Partition, Vec<String>)>, writes: false, |core| core.held(q);
    DropPartition(m) -> Option<usize>, writes: true, |core| core.release(m.partitions, m.partition, &m.scope, &m.synced);
    PartitionUsage(_m) -> Vec<(Partition, Usage)>, writes: false, |core| Ok(core.usage().iter().map(|(p, u)| (*p, *u)).collect());
}

impl Handler<SetNamespaces> for StorageWorker {
    type Result = ();

    fn handle(&mut self, SetNamespaces(table): SetNamespaces, _: &mut SyncContext<Self>) {
        if let Some(core) = &mut self.core {
            core.set_namespaces(table.clone());
        }
        self.namespaces = table;
    }
}

impl Handler<SetPartitions> for StorageWorker {
    type Result = ();

    fn handle(&mut self, SetPartitions(q): SetPartitions, _: &mut SyncContext<Self>) {
        let Some(core) = &mut self.core else {
            return;
        };
        match core.set_partitions(q) {
            Ok(()) => {
                self.partitions = q;
                info!(
                    partitions = q,
                    "the cluster split: building the hash trees again"
                );
                if self.loading_since.is_none() {
                    self.load_soon();
                }
                self.loading_since = Some(Instant::now());
            }
            Err(e) => {
                error!(error = %e, partitions = q, "cannot take the cluster's partition count")
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use crate::syncer::{Barrier, Syncer};
    use std::time::Duration;

    use dynakv::config::StorageSection;
    use dynakv::version::{Actor as Writer, Context, Value};

    use super::*;

    fn update(key: &str) -> ReplicaMsg {
        ReplicaMsg::Update {
            key: key.as_bytes().to_vec(),
            context: Context::default(),
            value: Value::Data(b"v".to_vec()),
            hint_for: None,
        }
    }

    /// A worker over `storage` with `fsync`, and what it counts.
    fn worker(storage: &Storage, fsync: Fsync) -> (Addr<StorageWorker>, Arc<Counters>) {
        let storage = storage.clone();
        let settings = ReplicaSettings {
            partitions: 8,
            writer: Writer(1),
            max_siblings: 10,
            fsync,
            fsync_interval: Duration::from_secs(1),
            keep_deleted_ms: 0,
            scan_keys_per_sec: 0,
        };
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let timers = Arbiter::current();
        let addr = SyncArbiter::start(1, move || {
            StorageWorker::new(None, storage.clone(), settings, c.clone(), timers.clone())
        });
        (addr, counters)
    }

    #[actix_rt::test]
    async fn with_fsync_always_a_batch_is_answered_after_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &StorageSection::default(), "n1").unwrap();
        let (worker, counters) = worker(&storage, Fsync::Always);
        let batch = vec![
            update("a"),
            update("b"),
            ReplicaMsg::Read { key: b"a".to_vec() },
        ];
        let replies = worker.send(ApplyBatch(batch)).await.unwrap();
        assert!(
            matches!(replies[0], Ok(ReplicaMsg::Updated { .. })),
            "{replies:?}"
        );
        assert!(
            matches!(replies[2], Ok(ReplicaMsg::State { .. })),
            "{replies:?}"
        );
        assert_eq!(counters.syncs.load(Ordering::SeqCst), 1);
        assert_eq!(
            counters.synced.load(Ordering::SeqCst),
            2,
            "both writes covered"
        );
        // A batch of reads only needs no sync.
        let reads = vec![ReplicaMsg::Read { key: b"b".to_vec() }];
        worker.send(ApplyBatch(reads)).await.unwrap();
        assert_eq!(counters.syncs.load(Ordering::SeqCst), 1);
    }

    #[actix_rt::test]
    async fn a_barrier_already_covered_by_the_worker_does_not_sync_again() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &StorageSection::default(), "n1").unwrap();
        let (worker, counters) = worker(&storage, Fsync::Always);
        worker.send(ApplyBatch(vec![update("a")])).await.unwrap();
        let syncer = {
            let c = counters.clone();
            SyncArbiter::start(1, move || Syncer::new(storage.clone(), c.clone()))
        };
        syncer.send(Barrier(1)).await.unwrap().unwrap();
        assert_eq!(counters.syncs.load(Ordering::SeqCst), 1);
        syncer.send(Barrier(2)).await.unwrap().unwrap();
        assert_eq!(
            counters.syncs.load(Ordering::SeqCst),
            2,
            "write 2 was not covered"
        );
    }

    #[actix_rt::test]
    async fn with_fsync_periodic_a_batch_is_answered_without_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &StorageSection::default(), "n1").unwrap();
        let (worker, counters) = worker(&storage, Fsync::Periodic);
        let replies = worker.send(ApplyBatch(vec![update("a")])).await.unwrap();
        assert!(
            matches!(replies[0], Ok(ReplicaMsg::Updated { .. })),
            "{replies:?}"
        );
        assert_eq!(counters.written.load(Ordering::SeqCst), 1);
        assert_eq!(counters.syncs.load(Ordering::SeqCst), 0);
    }

    #[actix_rt::test]
    async fn a_reopened_replica_serves_during_its_start_up_scan_and_counts_those_writes() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &StorageSection::default(), "n1").unwrap();
        let (first, _) = worker(&storage, Fsync::Periodic);
        for chunk in 0..20 {
            let batch = (0..250).map(|i| update(&format!("k{chunk}-{i}"))).collect();
            first.send(ApplyBatch(batch)).await.unwrap();
        }
        // A second replica over the same data scans it while it serves
        // overwrites of scanned and unscanned keys, and new keys.
        let (second, _) = worker(&storage, Fsync::Periodic);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut round = 0;
        loop {
            round += 1;
            let batch = (0..20)
                .map(|i| update(&format!("k{}-{}", (round + i) % 20, round * 7 % 250)))
                .chain([update(&format!("new{round}"))])
                .collect();
            for reply in second.send(ApplyBatch(batch)).await.unwrap() {
                assert!(reply.is_ok(), "{reply:?}");
            }
            // Known once the scan is done.
            if second.send(HeldPartitions(8)).await.unwrap().is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "the start-up scan did not end");
        }
        assert!(round > 0);
        let all: Vec<Partition> = (0..8).map(Partition).collect();
        let roots = second.send(AeRoots(Scope::All, all.clone())).await.unwrap();
        let (rebuilt, report) =
            Core::open(storage.data(), storage.hints(), 8, Writer(9), 10).unwrap();
        assert_eq!(report.keys, 5000 + round as u64);
        let expected = anti_entropy::roots(&rebuilt, &Scope::All, &all).unwrap();
        assert_eq!(roots.unwrap(), expected, "the trees count every write");
    }
}

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
use dynakv::config::Fsync;
use dynakv::replica::{Replica as Core, ReplicaMsg};
use dynakv::version::{Actor as Writer, SiblingSet};
use dynakv::{Error, Result};
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, MessageResponse)]
pub struct ReplicaStats {
    pub keys: u64,
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
                ..
            } => {
                let (state, dot) = core.update(&key, &context, value)?;
                ReplicaMsg::Updated { state, dot }
            }
            ReplicaMsg::Write { key, state, .. } => {
                core.merge(&key, &state)?;
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
        let seq = self.counters.written.fetch_add(1, Ordering::SeqCst) + 1;
        Ok((reply, Some(seq)))
    }
}

impl Handler<Stats> for StorageWorker {
    type Result = Result<ReplicaStats>;

    fn handle(&mut self, _: Stats, _: &mut SyncContext<Self>) -> Self::Result {
        Ok(ReplicaStats {
            keys: self.core()?.key_count(),
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

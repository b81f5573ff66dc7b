//! The replica concern: the node's stored copy of the keys it replicates.
//!
//! `Replica` is the mailbox everything talks to (local sessions, the Bridge
//! for peers, anti-entropy, hints, handoff, tests injecting writes). It
//! forwards each request to the storage worker (`crate::storage_worker`),
//! which with `fsync = "always"` makes a write durable before it is
//! answered; with `"periodic"` the front asks for a sync every
//! `fsync_interval_ms`. Reads and writes go to the worker in batches, one
//! at a time: what arrives while the worker applies a batch (and, with
//! `"always"`, fsyncs it) forms the next one, so under load one wake-up of
//! each thread and one fsync serve many requests (handing each request to
//! the worker thread cost more than applying it). A read of a key the row
//! cache holds is answered here, without the worker: the cache learns each
//! write as the worker applies it, so a read sees every write already
//! answered (a write still queued for the worker is concurrent with the
//! read, and may or may not be seen).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use dynakv::anti_entropy::{AeMsg, Exchange};
use dynakv::config::Fsync;
use dynakv::handoff::HandoffMsg;
use dynakv::namespace;
use dynakv::partition::Partition;
use dynakv::peer::{NodeLoad, PeerMsg};
use dynakv::replica::{ReplicaMsg, Usage, read_answer};
use dynakv::store::Entry;
use dynakv::store::stored_key;
use dynakv::tombstones::GcMsg;
use dynakv::version::SiblingSet;
use dynakv::{Error, Result};
use tokio::sync::oneshot;

use crate::bridge::PeerRequest;
use crate::messages::RingChanged;
use crate::storage::{FjallStore, Storage};
pub use crate::storage_worker::{
    AeBegin, AeContinue, AeRespond, AeRoots, DeleteDropped, DropPartition, FindToCollect,
    ForgetMootHints, GcRespond, HandedOff, HandoffRespond, HeldPartitions, PanicInCore,
    PartitionUsage, SetPartitions, TakeHints,
};
use crate::storage_worker::{ApplyBatch, MergeAll, SetNamespaces, StorageWorker, open_core};
pub use crate::storage_worker::{ReplicaSettings, ReplicaStats, Stats};
use crate::supervise::{mailbox_error, shielded};
use crate::syncer::{Barrier, Counters, FreeMemtables, SyncNow, Syncer};

/// A request to this node's replica; answered with the reply message.
#[derive(Message)]
#[rtype(result = "Result<ReplicaMsg>")]
pub struct ReplicaRequest(pub ReplicaMsg);

/// A request to this node's replica whose reply goes to `answer` instead of
/// back through the mailbox: what peers' requests (through the Bridge) and
/// coordinator sessions send, one hand-off fewer per request than
/// `ReplicaRequest`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Serve {
    pub msg: ReplicaMsg,
    pub answer: Answer,
}

type Respond = Box<dyn FnOnce(Result<ReplicaMsg>) + Send>;

/// Where the reply to one replica request goes. Every request is answered:
/// an `Answer` dropped unused (its request lost to a restart, say) answers
/// with an error.
pub struct Answer(Option<Respond>);

impl Answer {
    pub fn new(respond: impl FnOnce(Result<ReplicaMsg>) + Send + 'static) -> Answer {
        Answer(Some(Box::new(respond)))
    }

    /// An answer into a oneshot channel.
    pub fn channel() -> (Answer, oneshot::Receiver<Result<ReplicaMsg>>) {
        let (tx, rx) = oneshot::channel();
        let answer = Answer::new(move |reply| {
            let _ = tx.send(reply);
        });
        (answer, rx)
    }

    pub fn give(mut self, reply: Result<ReplicaMsg>) {
        if let Some(respond) = self.0.take() {
            respond(reply);
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(respond) = self.0.take() {
            respond(Err(dropped()));
        }
    }
}

fn dropped() -> Error {
    Error::Unavailable("the replica dropped the request".into())
}

/// The namespaces' settings (their sibling limits) and the partition count
/// follow the view: the worker is given each when it changes.
impl Handler<RingChanged> for Replica {
    type Result = ();

    fn handle(&mut self, RingChanged(t): RingChanged, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| {
            if t.view.namespaces != act.namespaces {
                act.namespaces = t.view.namespaces.clone();
                act.worker.do_send(SetNamespaces(act.namespaces.clone()));
            }
            if t.view.partitions > act.partitions {
                act.partitions = t.view.partitions;
                act.worker.do_send(SetPartitions(act.partitions));
            }
        })
    }
}

/// This node's local copy of a key (for `inspect`).
#[derive(Message)]
#[rtype(result = "Result<SiblingSet>")]
pub struct ReadLocal(pub Vec<u8>);

/// Merges sibling sets handed over by another node (hints, handoff);
/// answered once they are durable (per the fsync mode).
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub struct MergeHandoff(pub Vec<Entry>);

/// Makes every write so far durable (used at shutdown).
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub struct Flush;

pub struct Replica {
    /// The data store, for reads the row cache can answer.
    data: FjallStore,
    /// The Q stored keys are prefixed at (`cluster.partitions`).
    layout: u32,
    worker: Addr<StorageWorker>,
    syncer: Addr<Syncer>,
    fsync: Fsync,
    fsync_interval: Duration,
    /// Requests waiting to go to the worker together.
    batch: Vec<(ReplicaMsg, Answer)>,
    /// Batches the worker has not finished applying; while one is, the
    /// next batch gathers what arrives meanwhile.
    with_worker: usize,
    /// The namespaces and Q last given to the worker.
    namespaces: namespace::Table,
    partitions: u32,
}

/// The worker finished applying a batch.
#[derive(Message)]
#[rtype(result = "()")]
struct BatchApplied;

/// Most requests sent to the worker in one batch.
const MAX_BATCH: usize = 256;

impl Replica {
    /// Starts the replica concern over `storage`: opens the core replica
    /// (its worker scans storage to build the hash trees while it serves),
    /// then its worker and syncer threads, then the supervised front.
    pub fn start(
        storage: Storage,
        settings: ReplicaSettings,
        on: &ArbiterHandle,
    ) -> Result<Addr<Replica>> {
        let core = open_core(&storage, &settings)?;
        let counters = Arc::new(Counters::default());
        let first = Mutex::new(Some(core));
        let (worker_storage, worker_counters) = (storage.clone(), counters.clone());
        let timers = on.clone();
        let worker = SyncArbiter::start(1, move || {
            let core = first.lock().ok().and_then(|mut c| c.take());
            StorageWorker::new(
                core,
                worker_storage.clone(),
                settings,
                worker_counters.clone(),
                timers.clone(),
            )
        });
        let data = storage.data();
        let syncer = SyncArbiter::start(1, move || Syncer::new(storage.clone(), counters.clone()));
        let front = Replica {
            data,
            layout: settings.partitions,
            partitions: settings.partitions,
            worker,
            syncer,
            fsync: settings.fsync,
            fsync_interval: settings.fsync_interval,
            batch: Vec::new(),
            with_worker: 0,
            namespaces: namespace::Table::default(),
        };
        Ok(Supervisor::start_in_arbiter(on, move |_| front))
    }

    /// The durability barrier a merge waits on, in `always` mode.
    fn barrier(&self) -> Option<Addr<Syncer>> {
        (self.fsync == Fsync::Always).then(|| self.syncer.clone())
    }

    /// The answer to a read, if the row cache holds the key.
    fn cached_read(&self, key: &[u8]) -> Option<Result<ReplicaMsg>> {
        let stored = self.data.cached(&stored_key(key, self.layout))?;
        read_answer(stored.as_deref())
    }

    /// Queues a request for the next batch; the batch leaves once the
    /// messages already in the mailbox are queued too and the worker is
    /// done with the previous batch (or at once when it is full).
    fn enqueue(&mut self, msg: ReplicaMsg, answer: Answer, ctx: &mut Context<Self>) {
        self.batch.push((msg, answer));
        if self.batch.len() >= MAX_BATCH {
            self.send_batch(ctx);
        } else if self.batch.len() == 1 && self.with_worker == 0 {
            self.send_soon(ctx);
        }
    }

    /// Answers `msg` from the row cache if it is a read the cache can
    /// answer, else queues it for the worker.
    fn serve(&mut self, msg: ReplicaMsg, answer: Answer, ctx: &mut Context<Self>) {
        if let ReplicaMsg::Read { key } = &msg
            && let Some(reply) = self.cached_read(key)
        {
            return answer.give(reply);
        }
        self.enqueue(msg, answer, ctx);
    }

    /// Queues `msg` and returns the future of its reply.
    fn reply_to(
        &mut self,
        msg: ReplicaMsg,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<ReplicaMsg>> {
        let (answer, rx) = Answer::channel();
        self.serve(msg, answer, ctx);
        Box::pin(answered(rx))
    }

    /// Sends the batch once the messages already in the mailbox are in it.
    fn send_soon(&mut self, ctx: &mut Context<Self>) {
        // Spawned futures run after the mailbox is drained.
        ctx.spawn(fut::ready(()).map(|_, act: &mut Self, ctx| act.send_batch(ctx)));
    }

    fn send_batch(&mut self, ctx: &mut Context<Self>) {
        if self.batch.is_empty() {
            return;
        }
        let (msgs, waiters): (Vec<_>, Vec<_>) = std::mem::take(&mut self.batch).into_iter().unzip();
        let applied = self.worker.send(ApplyBatch(msgs));
        self.with_worker += 1;
        let front = ctx.address();
        // Detached: the answers go out even if the front restarts meanwhile.
        actix::spawn(async move {
            let applied = applied.await;
            front.do_send(BatchApplied);
            let replies = match applied {
                Ok(replies) => replies,
                Err(e) => waiters.iter().map(|_| Err(mailbox_error(e))).collect(),
            };
            for (answer, reply) in waiters.into_iter().zip(replies) {
                answer.give(reply);
            }
        });
    }
}

/// The reply an `Answer::channel` receives.
pub(crate) async fn answered(rx: oneshot::Receiver<Result<ReplicaMsg>>) -> Result<ReplicaMsg> {
    rx.await.map_err(|_| dropped())?
}

const NAME: &str = "replica";

impl Actor for Replica {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        // After a restart: a batch whose send was pending goes now. Batches
        // sent before still report back; the count only paces batches, so
        // an early report costs no more than a smaller batch.
        self.with_worker = 0;
        self.send_batch(ctx);
        if self.fsync == Fsync::Periodic {
            ctx.run_interval(self.fsync_interval, |act, _| act.syncer.do_send(SyncNow));
        }
        // A written-out memtable lingers at most this long, and so does a
        // journal only rarely written keyspaces still hold.
        ctx.run_interval(Duration::from_secs(1), |act, _| {
            act.syncer.do_send(FreeMemtables)
        });
    }
}

impl Handler<BatchApplied> for Replica {
    type Result = ();

    fn handle(&mut self, _: BatchApplied, ctx: &mut Context<Self>) {
        self.with_worker = self.with_worker.saturating_sub(1);
        if self.with_worker == 0 && !self.batch.is_empty() {
            self.send_soon(ctx);
        }
    }
}

/// The front keeps no state a restart must rebuild: its queued batch is
/// sent, and answers to batches already sent still arrive.
impl Supervised for Replica {}

impl Handler<ReplicaRequest> for Replica {
    type Result = ResponseFuture<Result<ReplicaMsg>>;

    fn handle(
        &mut self,
        ReplicaRequest(msg): ReplicaRequest,
        ctx: &mut Context<Self>,
    ) -> Self::Result {
        shielded(NAME, self, ctx, |act, ctx| act.reply_to(msg, ctx))
    }
}

impl Handler<Serve> for Replica {
    type Result = ();

    fn handle(&mut self, Serve { msg, answer }: Serve, ctx: &mut Context<Self>) {
        // A panic drops the answer, which then answers with an error.
        shielded(NAME, self, ctx, |act, ctx| act.serve(msg, answer, ctx))
    }
}

/// Peers' replica requests (the hot path: the answer goes straight back
/// on the link), and `status`'s question about this node's load.
impl Handler<PeerRequest> for Replica {
    type Result = ();

    fn handle(&mut self, PeerRequest { msg, reply, .. }: PeerRequest, ctx: &mut Context<Self>) {
        match msg {
            PeerMsg::Replica(msg) => {
                let answer = Answer::new(move |r| reply.answer(r.map(PeerMsg::Replica)));
                // A panic drops the answer, which then answers with an error.
                shielded(NAME, self, ctx, |act, ctx| act.serve(msg, answer, ctx))
            }
            PeerMsg::Stats => {
                let stats = self.worker.send(Stats);
                reply.later(async move {
                    let stats = stats.await.map_err(mailbox_error)??;
                    Ok(PeerMsg::Load(NodeLoad {
                        keys: stats.keys,
                        bytes: stats.bytes,
                        hints: stats.hints,
                    }))
                })
            }
            other => reply.error(&Error::InvalidRequest(format!(
                "the replica takes no {} request",
                other.name()
            ))),
        }
    }
}

impl Handler<MergeHandoff> for Replica {
    type Result = ResponseFuture<Result<()>>;

    fn handle(
        &mut self,
        MergeHandoff(entries): MergeHandoff,
        ctx: &mut Context<Self>,
    ) -> Self::Result {
        shielded(NAME, self, ctx, |act, _| -> Self::Result {
            let (worker, syncer) = (act.worker.clone(), act.barrier());
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
        })
    }
}

impl Handler<ReadLocal> for Replica {
    type Result = ResponseFuture<Result<SiblingSet>>;

    fn handle(&mut self, ReadLocal(key): ReadLocal, ctx: &mut Context<Self>) -> Self::Result {
        shielded(NAME, self, ctx, |act, ctx| -> Self::Result {
            let read = act.reply_to(ReplicaMsg::Read { key }, ctx);
            Box::pin(async move {
                match read.await? {
                    ReplicaMsg::State { state } => Ok(state),
                    other => Err(Error::Internal(format!("read answered with {other:?}"))),
                }
            })
        })
    }
}

impl Handler<Flush> for Replica {
    type Result = ResponseFuture<Result<()>>;

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) -> Self::Result {
        shielded(NAME, self, ctx, |act, _| -> Self::Result {
            let sync = act.syncer.send(SyncNow);
            Box::pin(async move { sync.await.map_err(mailbox_error)? })
        })
    }
}

/// Messages the front passes straight to the storage worker.
macro_rules! forward_to_worker {
    ($($msg:ty => $out:ty),* $(,)?) => {
        $(impl Handler<$msg> for Replica {
            type Result = ResponseFuture<Result<$out>>;
            fn handle(&mut self, msg: $msg, ctx: &mut Context<Self>) -> Self::Result {
                shielded(NAME, self, ctx, |act, _| -> Self::Result {
                    let sent = act.worker.send(msg);
                    Box::pin(async move { sent.await.map_err(mailbox_error)? })
                })
            }
        })*
    };
}

forward_to_worker!(
    Stats => ReplicaStats,
    TakeHints => Vec<Entry>,
    HandedOff => usize,
    ForgetMootHints => usize,
    AeBegin => (Exchange, AeMsg),
    AeContinue => (Exchange, Option<AeMsg>),
    AeRespond => AeMsg,
    AeRoots => AeMsg,
    FindToCollect => Vec<Entry>,
    DeleteDropped => Vec<Entry>,
    GcRespond => GcMsg,
    HandoffRespond => HandoffMsg,
    HeldPartitions => Vec<(Partition, Vec<String>)>,
    DropPartition => Option<usize>,
    PartitionUsage => Vec<(Partition, Usage)>,
    PanicInCore => (),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_is_given_once_even_when_dropped() {
        let (answer, mut rx) = Answer::channel();
        answer.give(Ok(ReplicaMsg::Ack));
        assert_eq!(rx.try_recv().unwrap().unwrap(), ReplicaMsg::Ack);

        // Lost with its request (a restart, a panic): the caller still
        // hears, with a retryable error, instead of waiting out its deadline.
        let (answer, mut rx) = Answer::channel();
        drop(answer);
        let e = rx.try_recv().unwrap().unwrap_err();
        assert!(e.is_retryable(), "{e}");
    }
}

//! Coordinator: turns client operations into coordinator sessions.
//!
//! Receives `Execute` (one client operation, with the oneshot its reply goes
//! to) and `RingChanged`. One story: a get, put or delete is checked and
//! planned by the core's `dynakv::coordinator::Planner` (limits, R and W,
//! the context, the route to the key's targets) and runs as one `Session`
//! actor, which sends the client its reply. Any node coordinates any key:
//! the version of a put is minted by the first target, a replica of the
//! key, so coordination needs no forwarding. A large write's session
//! starts when the core's `LargeWrites` lets it: while small requests run
//! beside them, large writes are paced by the small requests' tail. A
//! routed get, put or delete names the ring its client routes by; when
//! this node's is another, the reply says so. A batch runs one session
//! per operation; a listing page follows the core's `Listing`, one
//! replica per partition. An operator's request (status, inspect, plan,
//! namespaces, membership changes, fault injection) is answered by
//! `crate::admin`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use dynakv::config::LimitsSection;
use dynakv::coordinator::{
    Admit, LargeWrites, Planned, Planner, ReadLatency, Write, YieldSettings,
};
use dynakv::listing::{Listing, coverage};
use dynakv::replica::ReplicaMsg;
use dynakv::ring::Ring;
use dynakv::topology::Topology;
use dynakv::version::Value;
use dynakv::wire::{Apply, ClientOp, ClientReply, Delete, Get, KeyOp, KeyReply, Put, PutExpiring};
use dynakv::{Error, Result};
use tokio::sync::oneshot;
use tracing::debug_span;

use crate::admin::Operations;
use crate::clock::wall_ms;
use crate::events::Events;
use crate::messages::RingChanged;
use crate::session::{Router, Session, SessionEnv};
use crate::supervise::shielded;

/// One client operation; the client's reply goes to `reply` (a get, put or
/// delete's straight from its session).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Execute {
    pub op: ClientOp,
    pub reply: oneshot::Sender<ClientReply>,
}

pub struct Coordinator {
    planner: Planner,
    /// Sessions coordinated at once; more are refused as overloaded.
    max_in_flight: usize,
    /// Operations one batch request may carry.
    max_batch: usize,
    /// Which writes are large (paced by `SessionEnv::large_writes`).
    large_writes: YieldSettings,
    /// Shared by every session (a clone per session would allocate).
    sessions: Arc<SessionEnv>,
    /// What operators' requests ask once they leave this actor; shared, so
    /// a request clones one reference.
    operations: Arc<Operations>,
    topology: Option<Topology>,
    next_request: u64,
}

impl Coordinator {
    pub fn new(
        planner: Planner,
        limits: &LimitsSection,
        router: Router,
        read_spare_ms: u64,
        operations: Operations,
        events: Events,
    ) -> Self {
        let timeout_ms = u64::try_from(router.timeout.as_millis()).unwrap_or(u64::MAX);
        let large_writes = YieldSettings::new(limits, timeout_ms);
        let sessions = SessionEnv {
            attempt_timeout: router.timeout / (u32::from(planner.limits.defaults.n) + 1),
            router,
            events,
            in_flight: AtomicUsize::new(0),
            read_latency: Mutex::new(ReadLatency::new(read_spare_ms)),
            large_writes: Mutex::new(LargeWrites::new(large_writes, 0)),
            epoch: Instant::now(),
        };
        Coordinator {
            planner,
            max_in_flight: limits.max_in_flight as usize,
            max_batch: limits.max_batch as usize,
            large_writes,
            sessions: Arc::new(sessions),
            operations: Arc::new(operations),
            topology: None,
            next_request: 0,
        }
    }

    /// Plans a get, put, delete or data-type operation.
    fn plan(&self, op: ClientOp) -> Result<Planned> {
        let t = self.topology.as_ref();
        match op {
            ClientOp::Get(Get { key, r }) => self.planner.get(t, key, r),
            ClientOp::Put(put) => self.plan_put(t, put, None),
            ClientOp::PutExpiring(PutExpiring { put, ttl_ms }) => {
                self.plan_put(t, put, Some(ttl_ms))
            }
            ClientOp::Delete(Delete { key, context, w }) => {
                let write = Write::new(Value::Tombstone, &context, w);
                self.planner.write(t, key, write, wall_ms())
            }
            ClientOp::Apply(Apply {
                key,
                operation,
                context,
                w,
            }) => self.planner.apply(t, key, operation, &context, w),
            other => Err(Error::Internal(format!(
                "{} is not a read or write",
                other.name()
            ))),
        }
    }

    /// Plans a put, with its own TTL if it has one.
    fn plan_put(&self, t: Option<&Topology>, put: Put, ttl_ms: Option<u64>) -> Result<Planned> {
        let Put {
            key,
            value,
            context,
            w,
        } = put;
        let write = Write {
            ttl_ms,
            ..Write::new(Value::Data(value), &context, w)
        };
        self.planner.write(t, key, write, wall_ms())
    }

    /// Starts a session, which gives the client its reply; a large write's
    /// when `LargeWrites` lets it (`bytes`: the value bytes a put writes).
    fn session(&mut self, planned: Planned, bytes: u64, reply: oneshot::Sender<ClientReply>) {
        let running = self.sessions.in_flight.load(Ordering::Relaxed);
        if running >= self.max_in_flight {
            let _ = reply.send(ClientReply::error(&Error::Overloaded));
            return;
        }
        let large = self.large_writes.is_large(bytes);
        self.sessions.in_flight.fetch_add(1, Ordering::Relaxed);
        self.next_request += 1;
        let Planned {
            op,
            key,
            kind,
            partition,
            session,
            initial,
        } = planned;
        // At debug, like every event logged inside a session: an enabled
        // span formats its fields for each request (5% of the server's
        // CPU per put at the default level "info", which logs nothing in it).
        let span = debug_span!("session", op, partition = partition.0,
            request = self.next_request, node = %self.planner.me);
        let session = Session::new(
            session,
            initial,
            key,
            kind,
            self.sessions.clone(),
            reply,
            span,
        );
        if large {
            // Detached: the session starts (or is refused) even if this
            // actor restarts meanwhile.
            actix::spawn(paced(session.large_write(), self.sessions.clone(), bytes));
        } else {
            session.start();
        }
    }

    /// A batch: each operation is planned and runs as its own session;
    /// the client gets every reply, in order, once all are in.
    fn batch(&mut self, ops: Vec<KeyOp>, reply: oneshot::Sender<ClientReply>) {
        if ops.len() > self.max_batch {
            let e = Error::InvalidRequest(format!(
                "a batch of {} operations exceeds limits.max_batch = {}",
                ops.len(),
                self.max_batch
            ));
            let _ = reply.send(ClientReply::error(&e));
            return;
        }
        let answers: Vec<_> = ops
            .into_iter()
            .map(|op| {
                let (tx, rx) = oneshot::channel();
                let op = ClientOp::from(op);
                let bytes = written_bytes(&op);
                match self.plan(op) {
                    Ok(planned) => self.session(planned, bytes, tx),
                    Err(e) => {
                        let _ = tx.send(ClientReply::error(&e));
                    }
                }
                rx
            })
            .collect();
        actix::spawn(async move {
            let mut replies = Vec::with_capacity(answers.len());
            for answer in answers {
                let lost = || ClientReply::error(&Error::Internal("the session was lost".into()));
                let one = KeyReply::try_from(answer.await.unwrap_or_else(|_| lost()));
                replies.push(one.unwrap_or_else(|_| {
                    let e = Error::Internal("a session answered with no value or write".into());
                    KeyReply::Error {
                        kind: e.kind(),
                        message: e.to_string(),
                    }
                }));
            }
            let _ = reply.send(ClientReply::Batch(replies));
        });
    }

    /// A page of a listing: the core's `Listing` says which partition to
    /// read next and where from; each is read from the first replica of
    /// its coverage that answers.
    fn list(
        &mut self,
        prefix: Vec<u8>,
        limit: u32,
        token: &[u8],
        reply: oneshot::Sender<ClientReply>,
    ) {
        let (topology, ring, listing, n) = match self.start_listing(&prefix, limit, token) {
            Ok(started) => started,
            Err(e) => {
                let _ = reply.send(ClientReply::error(&e));
                return;
            }
        };
        let sessions = self.sessions.clone();
        actix::spawn(async move {
            let page = read_pages(listing, &ring, &topology, n, &sessions.router, &prefix).await;
            let _ = reply.send(match page {
                Ok((keys, next)) => ClientReply::Keys { keys, next },
                Err(e) => ClientReply::error(&e),
            });
        });
    }

    /// Checks a listing request (its prefix begins with its namespace's,
    /// `namespace::key_prefix`): the topology and ring it reads by, its
    /// first page's plan, and the namespace's N.
    fn start_listing(
        &self,
        prefix: &[u8],
        limit: u32,
        token: &[u8],
    ) -> Result<(Topology, Arc<Ring>, Listing, usize)> {
        let (topology, ring) = self.planner.formed(self.topology.as_ref())?;
        let n = self.planner.namespace(topology, prefix)?.n;
        let listing = Listing::new(token, limit, topology.view.partitions)?;
        Ok((topology.clone(), ring.clone(), listing, usize::from(n)))
    }

    /// An operator's request: checked here, answered without holding this
    /// actor.
    fn operate(&mut self, op: ClientOp, reply: oneshot::Sender<ClientReply>) {
        let checked = self.operations.prepare(op, self.topology.as_ref(), |key| {
            self.planner.check_key(key)
        });
        let prepared = match checked {
            Ok(prepared) => prepared,
            Err(e) => {
                let _ = reply.send(ClientReply::error(&e));
                return;
            }
        };
        let operations = self.operations.clone();
        actix::spawn(async move {
            let answer = operations.answer(prepared).await;
            let _ = reply.send(answer.unwrap_or_else(|e| ClientReply::error(&e)));
        });
    }
}

/// Carries a listing out: each step at the first replica of its coverage
/// that answers.
async fn read_pages(
    mut listing: Listing,
    ring: &Ring,
    topology: &Topology,
    n: usize,
    router: &Router,
    prefix: &[u8],
) -> Result<(Vec<Vec<u8>>, Option<Vec<u8>>)> {
    while let Some(step) = listing.next() {
        let mut last = Error::Unavailable(format!("partition {} has no replica", step.partition));
        let mut answered = None;
        for node in coverage(ring, step.partition, n, |m| topology.is_up(m)) {
            let ask = ReplicaMsg::List {
                partition: step.partition,
                after: step.after.clone(),
                prefix: prefix.to_vec(),
                limit: step.limit,
                partitions: step.partitions,
            };
            match router.call(node.clone(), ask).await {
                Ok(ReplicaMsg::Keys { keys, scanned_to }) => {
                    answered = Some((keys, scanned_to));
                    break;
                }
                Ok(other) => last = Error::Malformed(format!("a listing answered with {other:?}")),
                Err(e) => last = e,
            }
        }
        let Some((keys, scanned_to)) = answered else {
            return Err(Error::Unavailable(format!(
                "no replica of partition {} answered the listing: {last}",
                step.partition
            )));
        };
        listing.on_keys(keys, scanned_to)?;
    }
    Ok(listing.page())
}

/// Starts a large write's session when `LargeWrites` lets it, or refuses
/// it as overloaded if it would wait too long.
async fn paced(session: Session, env: Arc<SessionEnv>, bytes: u64) {
    let arrived = env.now_us();
    loop {
        let decision = env.large_writes().admit(env.now_us(), bytes, arrived);
        match decision {
            Admit::After(us) => {
                if us > 0 {
                    tokio::time::sleep(Duration::from_micros(us)).await;
                }
                session.start();
                return;
            }
            Admit::Later(us) => tokio::time::sleep(Duration::from_micros(us)).await,
            Admit::Refuse => return session.refuse(Error::Overloaded),
        }
    }
}

/// The value bytes `op` writes: a put's value, else 0.
fn written_bytes(op: &ClientOp) -> u64 {
    match op {
        ClientOp::Put(put) | ClientOp::PutExpiring(PutExpiring { put, .. }) => {
            put.value.len() as u64
        }
        _ => 0,
    }
}

/// Where the reply to a routed request goes when the client routes by
/// another ring than `current`: the reply, marked stale, goes on to
/// `reply`, so the client refreshes its ring at once.
fn tell_stale(reply: oneshot::Sender<ClientReply>, current: u64) -> oneshot::Sender<ClientReply> {
    let (tx, rx) = oneshot::channel::<ClientReply>();
    actix::spawn(async move {
        if let Ok(answer) = rx.await {
            let _ = reply.send(answer.stale(current));
        }
    });
    tx
}

const NAME: &str = "coordinator";

/// Sessions are actors of their own; the coordinator keeps only its
/// settings and the last topology, which a restart keeps.
impl Supervised for Coordinator {}

impl Actor for Coordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16_384);
    }
}

impl Handler<RingChanged> for Coordinator {
    type Result = ();

    fn handle(&mut self, RingChanged(t): RingChanged, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| {
            act.topology = Some(t);
        })
    }
}

impl Handler<Execute> for Coordinator {
    type Result = ();

    fn handle(&mut self, Execute { op, mut reply }: Execute, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| {
            let op = match op {
                ClientOp::Routed { ring, op } => {
                    let current = act.topology.as_ref().map_or(0, |t| t.version);
                    if ring != current {
                        reply = tell_stale(reply, current);
                    }
                    ClientOp::from(op)
                }
                ClientOp::Batch(ops) => return act.batch(ops, reply),
                ClientOp::List {
                    prefix,
                    limit,
                    after,
                } => return act.list(prefix, limit, &after, reply),
                op => op,
            };
            if !matches!(
                op,
                ClientOp::Get(_)
                    | ClientOp::Put(_)
                    | ClientOp::Delete(_)
                    | ClientOp::PutExpiring(_)
                    | ClientOp::Apply(_)
            ) {
                return act.operate(op, reply);
            }
            let bytes = written_bytes(&op);
            match act.plan(op) {
                Ok(planned) => act.session(planned, bytes, reply),
                Err(e) => {
                    let _ = reply.send(ClientReply::error(&e));
                }
            }
        })
    }
}

//! Session: one coordinator session, for one client get, put or delete.
//!
//! Started by the Coordinator with its targets; sends the core session's
//! requests through the `Router`, feeds it the replies and the deadline,
//! answers the client once (on the oneshot its reply goes to), then, for a get, sends the
//! read repairs, and stops. Runs in a span carrying the key's partition and
//! the request id.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use dynakv::coordinator::{
    LargeWrites, Outcome, ReadLatency, Request, Session as Core, Step, client_reply,
};
use dynakv::namespace::Kind;
use dynakv::peer::PeerMsg;
use dynakv::replica::ReplicaMsg;
use dynakv::wire::ClientReply;
use dynakv::{Error, NodeId, Result};
use tokio::sync::oneshot;
use tracing::{Instrument, Span, debug};

use crate::bridge::{Bridge, call};
use crate::clock::wall_ms;
use crate::events::{Event, Events};
use crate::replica::{Answer, Replica, Serve, answered};

/// Sends replica requests to this node's replica by mailbox, and to other
/// nodes' replicas through the Bridge.
#[derive(Clone)]
pub struct Router {
    pub me: NodeId,
    pub replica: Addr<Replica>,
    pub bridge: Addr<Bridge>,
    /// A request's deadline: a peer has that long to answer, and a session
    /// that long to reach its quorum.
    pub timeout: Duration,
}

pub type ReplyFuture = Pin<Box<dyn Future<Output = Result<ReplicaMsg>>>>;

impl Router {
    /// Sends `msg` to `to`'s replica; a peer has `timeout` to answer.
    pub fn call(&self, to: NodeId, msg: ReplicaMsg) -> ReplyFuture {
        if to == self.me {
            let (answer, rx) = Answer::channel();
            self.replica.do_send(Serve { msg, answer });
            Box::pin(answered(rx))
        } else {
            let sent = call(&self.bridge, to, PeerMsg::Replica(msg), self.timeout);
            Box::pin(async move {
                match sent.await? {
                    PeerMsg::Replica(reply) => Ok(reply),
                    other => Err(Error::Malformed(format!(
                        "replica request answered with {other:?}"
                    ))),
                }
            })
        }
    }
}

/// What every session of a coordinator shares (behind one `Arc`).
pub struct SessionEnv {
    pub router: Router,
    /// How long one replica may take to answer before it counts as slow: a
    /// fallback, if one is left, is then asked in its place (a late answer
    /// still counts until the deadline).
    pub attempt_timeout: Duration,
    /// How long replicas took to answer this coordinator's reads, and so
    /// how long a target may stay silent while a quorum read has a replica
    /// it did not ask yet; the core picks which wait applies
    /// (`slow_after`).
    pub read_latency: Mutex<ReadLatency>,
    pub events: Events,
    /// Sessions running; each decrements it when it ends.
    pub in_flight: AtomicUsize,
    /// How fast large writes may start: each small session's time to its
    /// answer paces them.
    pub large_writes: Mutex<LargeWrites>,
    /// What `large_writes` counts time from.
    pub epoch: Instant,
}

impl SessionEnv {
    fn read_latency(&self) -> MutexGuard<'_, ReadLatency> {
        // The estimate stays usable even if a panic poisoned the lock.
        self.read_latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn large_writes(&self) -> MutexGuard<'_, LargeWrites> {
        self.large_writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// µs since `epoch`: the time `large_writes` is given.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

pub struct Session {
    core: Core,
    initial: Vec<Request>,
    env: Arc<SessionEnv>,
    /// Where the client's reply goes; taken when it is sent.
    reply: Option<oneshot::Sender<ClientReply>>,
    key: Vec<u8>,
    /// The type of the key's namespace (what the client's reply shows).
    kind: Kind,
    span: Span,
    /// When a small session (not a large write) was started (`now_us`):
    /// its time to the answer paces the large writes.
    small_since: Option<u64>,
}

impl Session {
    pub fn new(
        core: Core,
        initial: Vec<Request>,
        key: Vec<u8>,
        kind: Kind,
        env: Arc<SessionEnv>,
        reply: oneshot::Sender<ClientReply>,
        span: Span,
    ) -> Self {
        let small_since = Some(env.now_us());
        Session {
            core,
            initial,
            env,
            reply: Some(reply),
            key,
            kind,
            span,
            small_since,
        }
    }

    /// Marks the session a large write's: its time does not pace large
    /// writes.
    pub fn large_write(mut self) -> Self {
        self.small_since = None;
        self
    }

    /// Answers the client with `e` instead of starting.
    pub fn refuse(mut self, e: Error) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(ClientReply::error(&e));
        }
        self.env.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn send(&mut self, requests: Vec<Request>, ctx: &mut Context<Self>) {
        if requests.is_empty() {
            return;
        }
        // Targets are timed only while a spare or a fallback could replace
        // one.
        let timed = self.core.has_fallback();
        let mut sent = Vec::new();
        let asked = Instant::now();
        for Request { to, msg } in requests {
            let is_read = matches!(msg, ReplicaMsg::Read { .. });
            // A peer has the whole deadline: a late answer still counts.
            let reply = self
                .env
                .router
                .call(to.clone(), msg)
                .instrument(self.span.clone());
            let from = to.clone();
            ctx.spawn(reply.into_actor(self).map(move |reply, act, ctx| {
                if is_read && reply.is_ok() {
                    act.env.read_latency().record(&from, ms(asked.elapsed()));
                }
                act.on_reply(&from, reply, ctx)
            }));
            if timed {
                sent.push(to);
            }
        }
        // A silent target is slow after a slice of the deadline, or sooner
        // while a quorum read has a spare (the replicas' usual read time):
        // a spare reads beside it, or a fallback takes its place.
        if timed {
            let spare = self.env.read_latency().spare_after_ms();
            let after = self.core.slow_after(ms(self.env.attempt_timeout), spare);
            ctx.run_later(Duration::from_millis(after), move |act, ctx| {
                for to in &sent {
                    let step = act.core.on_slow(to);
                    act.advance(step, ctx);
                }
            });
        }
    }

    fn answer(&mut self, outcome: Option<Result<Outcome>>) {
        if let Some(outcome) = outcome
            && let Some(reply) = self.reply.take()
        {
            let _ = reply.send(client_reply(outcome, self.kind, wall_ms()));
            if let Some(since) = self.small_since {
                let now = self.env.now_us();
                self.env
                    .large_writes()
                    .small_done(now, now.saturating_sub(since));
            }
        }
    }

    fn on_reply(&mut self, from: &NodeId, reply: Result<ReplicaMsg>, ctx: &mut Context<Self>) {
        if let Err(e) = &reply {
            self.span
                .in_scope(|| debug!(%from, error = %e, "replica did not answer"));
        }
        let step = self.core.on_reply(from, reply);
        self.advance(step, ctx);
    }

    /// Gives the client its answer if due and sends the next requests.
    fn advance(&mut self, step: Step<Outcome>, ctx: &mut Context<Self>) {
        self.answer(step.answer);
        self.send(step.send, ctx);
        if self.core.is_complete() {
            ctx.stop();
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let initial = self.core.initial_answer();
        if initial.is_some() {
            self.answer(initial);
            return ctx.stop();
        }
        let requests = std::mem::take(&mut self.initial);
        self.send(requests, ctx);
        ctx.run_later(self.env.router.timeout, |act, ctx| {
            let outcome = act.core.on_timeout();
            act.answer(outcome);
            ctx.stop();
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.env.in_flight.fetch_sub(1, Ordering::Relaxed);
        // Read repair: detached, it must not hold the session open.
        let repairs = self.core.repairs();
        if !repairs.is_empty() {
            self.env.events.emit(Event::ReadRepair {
                node: self.env.router.me.clone(),
                key: self.key.clone(),
                replicas: repairs.len(),
            });
            self.span
                .in_scope(|| debug!(replicas = repairs.len(), "read repair"));
            for r in repairs {
                let fut = self.env.router.call(r.to, r.msg);
                actix::spawn(async move {
                    let _ = fut.await;
                });
            }
        }
        self.answer(Some(Err(Error::Internal(
            "session ended without an answer".into(),
        ))));
    }
}

/// Whole milliseconds, saturating.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

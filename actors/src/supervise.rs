//! Keeping the node up when an actor's handler panics.
//!
//! actix does not restart an actor after a panic: the runtime drops it and
//! its mailbox closes. So every long-lived actor of a node runs its handlers
//! (and the continuations of the futures it spawns) inside `shielded`: a
//! panic is caught, logged with the actor's name, answered with an error,
//! and the actor is stopped, which makes its `Supervisor` restart it on the
//! same mailbox; `Supervised::restarting` rebuilds its state from storage or
//! from its peers. Senders keep their `Addr`s; messages already queued are
//! served after the restart.

use std::panic::{AssertUnwindSafe, catch_unwind};

use actix::dev::SendError;
use actix::prelude::*;
use dynakv::{Error, Result};
use tracing::error;

/// What a handler answers when it panicked.
pub trait Fallback {
    fn fallback() -> Self;
}

impl Fallback for () {
    fn fallback() {}
}

fn restarted() -> Error {
    Error::Internal("the actor failed and was restarted; retry".into())
}

impl<T> Fallback for Result<T> {
    fn fallback() -> Self {
        Err(restarted())
    }
}

impl<T: 'static> Fallback for ResponseFuture<Result<T>> {
    fn fallback() -> Self {
        Box::pin(async { Err(restarted()) })
    }
}

impl<A: Actor, T: 'static> Fallback for ResponseActFuture<A, Result<T>> {
    fn fallback() -> Self {
        Box::pin(fut::ready(Err(restarted())))
    }
}

impl Fallback for ResponseFuture<dynakv::wire::ClientReply> {
    fn fallback() -> Self {
        Box::pin(async { dynakv::wire::ClientReply::error(&restarted()) })
    }
}

impl<T> Fallback for Vec<T> {
    fn fallback() -> Self {
        Vec::new()
    }
}

/// Runs `f` on the actor. If it panics, logs it as the actor `name`'s
/// failure, stops the actor (its supervisor restarts it) and returns the
/// fallback answer.
pub fn shielded<A, R>(
    name: &'static str,
    act: &mut A,
    ctx: &mut Context<A>,
    f: impl FnOnce(&mut A, &mut Context<A>) -> R,
) -> R
where
    A: Actor<Context = Context<A>>,
    R: Fallback,
{
    match catch_unwind(AssertUnwindSafe(|| f(act, ctx))) {
        Ok(answer) => answer,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_string());
            error!(actor = name, panic = %what, "actor panicked; restarting it");
            ctx.stop();
            R::fallback()
        }
    }
}

/// Makes the receiving actor panic (tests of supervision inject it).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<()>")]
pub struct InjectPanic;

/// Checks that an actor is alive and serving (answers after a restart too).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<()>")]
pub struct Ping;

/// Implements `InjectPanic` (panics inside `shielded`) and `Ping` for
/// supervised actors.
#[macro_export]
macro_rules! supervision_probes {
    ($($actor:ty => $name:expr),* $(,)?) => {
        $(impl actix::Handler<$crate::supervise::InjectPanic> for $actor {
            type Result = dynakv::Result<()>;
            fn handle(&mut self, _: $crate::supervise::InjectPanic, ctx: &mut actix::Context<Self>) -> Self::Result {
                $crate::supervise::shielded($name, self, ctx, |_, _| -> dynakv::Result<()> { panic!("injected panic") })
            }
        }
        impl actix::Handler<$crate::supervise::Ping> for $actor {
            type Result = dynakv::Result<()>;
            fn handle(&mut self, _: $crate::supervise::Ping, _: &mut actix::Context<Self>) -> Self::Result {
                Ok(())
            }
        })*
    };
}

/// Why a message to a local actor got no answer: it stopped.
pub(crate) fn mailbox_error(e: MailboxError) -> Error {
    Error::Unavailable(format!("local actor unavailable: {e}"))
}

/// A local actor's answer, with a stopped actor as the error.
pub(crate) fn answered<T>(answer: std::result::Result<Result<T>, MailboxError>) -> Result<T> {
    answer.map_err(mailbox_error)?
}

/// Why `try_send` to `actor` (e.g. "the coordinator") refused a message:
/// a full mailbox is overload; a closed one, an actor that stopped.
pub(crate) fn send_error<M>(e: SendError<M>, actor: &str) -> Error {
    match e {
        SendError::Full(_) => Error::Overloaded,
        SendError::Closed(_) => Error::Unavailable(format!("{actor} is stopped")),
    }
}

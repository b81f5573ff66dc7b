//! A listening socket an actor accepts connections on: the Bridge on the
//! peer port, the ClientServer on the client port. The socket is bound
//! before the node starts (so a test can bind port 0 and learn the port),
//! turned into a tokio listener on the actor's own thread when it starts,
//! and kept across a supervised restart, which accepts on it again.

use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use dynakv::{Error, Result};
use futures_util::stream;
use tokio::net::{TcpListener, TcpStream};
use tracing::error;

/// What an accept yields, as the actor's stream handler takes it.
pub(crate) type Accepted = std::io::Result<(TcpStream, SocketAddr)>;

pub(crate) struct Listener {
    /// The bound socket, until the first `accept` takes it over.
    bound: Option<std::net::TcpListener>,
    /// None once closed: nothing more is accepted, even after a restart.
    listener: Option<Arc<TcpListener>>,
}

impl Listener {
    pub(crate) fn new(bound: std::net::TcpListener) -> Self {
        Listener {
            bound: Some(bound),
            listener: None,
        }
    }

    /// Accepts connections into `ctx`'s stream handler, from now on.
    pub(crate) fn accept<A>(&mut self, ctx: &mut Context<A>)
    where
        A: Actor<Context = Context<A>> + StreamHandler<Accepted>,
    {
        if let Some(bound) = self.bound.take() {
            match tokio_listener(bound) {
                Ok(l) => self.listener = Some(Arc::new(l)),
                Err(e) => error!(error = %e, "cannot listen"),
            }
        }
        if let Some(listener) = self.listener.clone() {
            ctx.add_stream(stream::unfold(listener, |l| async move {
                let accepted = l.accept().await;
                Some((accepted, l))
            }));
        }
    }

    /// Accepts nothing more (the actor stops accepting when it restarts
    /// without the listener).
    pub(crate) fn close(&mut self) {
        self.bound = None;
        self.listener = None;
    }
}

/// Turns a bound listener into a tokio one, on the calling thread's runtime
/// (so call it on the thread that will accept).
fn tokio_listener(l: std::net::TcpListener) -> Result<TcpListener> {
    l.set_nonblocking(true)
        .and_then(|_| TcpListener::from_std(l))
        .map_err(|e| Error::Unavailable(format!("listener setup failed: {e}")))
}

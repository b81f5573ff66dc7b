//! The Bridge's interface to the concerns of a node: calls to peers
//! (`call`, `ask`), the requests peers send them (`PeerRequest`, with the
//! `PeerReply` their answer goes through), how a concern registers for its
//! kind (`Handle`), and what membership learns from the links (`Watch`).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use actix::prelude::*;
use dynakv::fencing::Admission;
use dynakv::membership::{Destination, Member};
use dynakv::peer::{Concern, Corr, Envelope, PeerFrame, PeerMsg};
use dynakv::protocol::Versions;
use dynakv::{Error, NodeId, Result};
use tokio::sync::oneshot;

use super::Bridge;
use crate::link::{Frame, LinkAddr};
use crate::supervise::send_error;

/// Where the answer to a call goes: the answering node and its reply, or an
/// error when the peer is unreachable, the link drops, or the call's time
/// passes.
pub type CallAnswer = oneshot::Sender<Result<(NodeId, PeerMsg)>>;

/// A request to a peer, by node id or, for a seed whose id may not be known
/// yet, by address; answered on `answer` (see `ask`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Call {
    pub to: Destination,
    pub msg: PeerMsg,
    pub timeout: Duration,
    pub answer: CallAnswer,
}

/// Asks a peer and waits at most `timeout` for its id and reply. A peer's
/// `Error` reply comes back as that error.
pub fn ask(
    bridge: &Addr<Bridge>,
    to: Destination,
    msg: PeerMsg,
    timeout: Duration,
) -> impl Future<Output = Result<(NodeId, PeerMsg)>> + 'static {
    let (answer, rx) = oneshot::channel();
    let sent = bridge
        .try_send(Call {
            to,
            msg,
            timeout,
            answer,
        })
        .map_err(|e| send_error(e, "the peer bridge"));
    async move {
        sent?;
        match rx.await {
            Ok(Ok((_, PeerMsg::Error { kind, message }))) => Err(Error::from_wire(kind, message)),
            Ok(Ok((peer, PeerMsg::Fenced { record }))) => Err(Error::Removed(format!(
                "{peer} refused the request: it sees this node as {}",
                record.status.as_str()
            ))),
            Ok(answer) => answer,
            // The Bridge dropped the call (it restarted or stopped); the
            // request may have gone out: as a timeout.
            Err(_) => Err(Error::Timeout),
        }
    }
}

/// Asks node `to` and waits at most `timeout` for its reply (see `ask`).
pub fn call(
    bridge: &Addr<Bridge>,
    to: NodeId,
    msg: PeerMsg,
    timeout: Duration,
) -> impl Future<Output = Result<PeerMsg>> + 'static {
    let asked = ask(bridge, Destination::Node(to), msg, timeout);
    async move { asked.await.map(|(_, msg)| msg) }
}

/// The peer address of every known node, and whose requests are refused.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPeers {
    pub book: HashMap<NodeId, String>,
    pub admission: Admission,
}

/// A peer refused this node's request: `record` is this node's own final
/// record in the peer's view (for membership to learn from).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fenced {
    pub by: NodeId,
    pub record: Member,
}

/// What the Bridge learns about a peer's liveness, for membership.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum Reachability {
    /// A connection to the peer was established.
    Reached(NodeId),
    /// The peer refused or dropped a connection, or left a request unanswered.
    Lost(NodeId),
    /// The peer's hello said the newest protocol it speaks is this.
    Speaks(NodeId, u8),
}

/// An inbound request from an authenticated peer, for the concern that
/// registered for its kind; its answer goes back through `reply`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerRequest {
    pub from: NodeId,
    pub msg: PeerMsg,
    pub reply: PeerReply,
}

/// Routes the peer requests of `concern` to `handler`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Handle {
    pub concern: Concern,
    pub handler: Recipient<PeerRequest>,
}

/// Where membership hears what the links learn: peers reached or lost, and
/// refusals of this node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Watch {
    pub reachability: Recipient<Reachability>,
    pub fenced: Recipient<Fenced>,
}

/// The node is stopping: accept no new peer connections (a peer that
/// reconnected would take it for up again).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAccepting;

/// The protocol versions each peer's latest hello said it speaks.
#[derive(Message)]
#[rtype(result = "HashMap<NodeId, Versions>")]
pub struct PeerVersions;

/// Where the answer to one inbound request goes: back on the connection it
/// came on. A one-way request takes no answer.
pub struct PeerReply {
    pub(super) link: LinkAddr,
    pub(super) me: NodeId,
    pub(super) to: NodeId,
    pub(super) corr: Corr,
}

impl PeerReply {
    pub fn send(self, msg: PeerMsg) {
        if let Corr::Request(id) = self.corr {
            self.link.do_send(Frame(PeerFrame::Envelope(Envelope {
                from: self.me,
                to: self.to,
                corr: Corr::Reply(id),
                msg,
            })));
        }
    }

    /// Answers with `e` (as `PeerMsg::Error`).
    pub fn error(self, e: &Error) {
        self.send(PeerMsg::Error {
            kind: e.kind(),
            message: e.to_string(),
        })
    }

    /// Answers with `answer`, or its error.
    pub fn answer(self, answer: Result<PeerMsg>) {
        match answer {
            Ok(msg) => self.send(msg),
            Err(e) => self.error(&e),
        }
    }

    /// Answers with what `answer` produces, once it is ready.
    pub fn later(self, answer: impl Future<Output = Result<PeerMsg>> + 'static) {
        actix::spawn(async move { self.answer(answer.await) });
    }
}

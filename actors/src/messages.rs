//! The messages that pass between concerns, so that no shell imports
//! another: a concern receives what it subscribed to and sends what it
//! was given a `Recipient` for; `node.rs` does the wiring.

use actix::prelude::*;
use dynakv::Result;
use dynakv::topology::Topology;

/// The view, ring or liveness changed (from the Ring actor, to every
/// subscriber): the whole current topology.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct RingChanged(pub Topology);

/// Asks a concern for its lines of `status`.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct Summary;

/// To membership, from handoff: this node holds every partition moving to
/// it; take ownership.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CommitIncoming;

/// To membership, from handoff: this leaving node owns and holds nothing
/// any more; it has left.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MarkLeft;

/// To membership, from an operator's request: a membership change.
/// Answered with what was done.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<String>")]
pub enum Admin {
    /// Join the cluster that the node at this peer address belongs to.
    Join { seed: String },
    /// Hand every partition to the other members, then leave.
    Leave,
    /// Drop a dead member (by id or address) from the ring.
    Remove { node: String },
    /// Double the partition count.
    Split,
    /// Create, alter or drop a namespace; `defaults` are the default
    /// namespace's settings, for what a create does not set.
    Namespace {
        request: dynakv::namespace::Request,
        defaults: dynakv::namespace::Settings,
    },
}

//! The peer protocol's message types.
//!
//! A peer connection carries `PeerFrame`s: the connecting node opens with
//! `Hello`, the accepting node answers `Welcome` with its proof of the
//! cluster secret, the connecting node sends its `Proof`, then both sides
//! exchange `Envelope`s. Each concern (replica, gossip, hints, anti-entropy, handoff)
//! owns one variant of `PeerMsg` and the enum inside it; the Bridge routes on
//! the variant and understands nothing else.
//!
//! Variants are only ever appended: the index is on the wire.

use serde::{Deserialize, Serialize};

use crate::anti_entropy::AeMsg;
use crate::auth::{Nonce, Proof};
use crate::error::ErrorKind;
use crate::handoff::HandoffMsg;
use crate::hints::HintMsg;
use crate::membership::GossipMsg;
use crate::node::NodeId;
use crate::replica::ReplicaMsg;
use crate::tombstones::GcMsg;
use crate::view::Member;
use crate::wire::Envelope;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    /// First frame from the connecting side.
    Hello(PeerHello),
    /// The accepting side's answer to a valid `Hello`, with its proof of the
    /// cluster secret (`crate::auth`).
    Welcome {
        hello: PeerHello,
        proof: Proof,
    },
    Envelope(Envelope),
    /// The connecting side's proof of the cluster secret; no envelope is
    /// taken before it checks.
    Proof(Proof),
}

/// Who is on the other end of a peer connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    /// Must match the receiver's cluster name, or the connection is refused.
    pub cluster: String,
    pub node: NodeId,
    /// Fresh for every connection; the other side's proof answers it.
    pub nonce: Nonce,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Liveness probe; answered with `Pong`.
    Ping,
    Pong,
    /// A request could not be served.
    Error {
        kind: ErrorKind,
        message: String,
    },
    Replica(ReplicaMsg),
    Gossip(GossipMsg),
    Hints(HintMsg),
    AntiEntropy(AeMsg),
    Tombstones(GcMsg),
    Handoff(HandoffMsg),
    /// Asks for the receiver's load, for `status`; answered with `Load`.
    Stats,
    Load(NodeLoad),
    /// The answer to any request from a member that left or was removed
    /// (`crate::fencing`): nothing was done, and `record` is the sender's
    /// own final record, which fences it once it learns it.
    Fenced {
        record: Member,
    },
}

impl PeerMsg {
    /// A short stable name of the message's kind, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            PeerMsg::Ping => "ping",
            PeerMsg::Pong => "pong",
            PeerMsg::Error { .. } => "error",
            PeerMsg::Replica(_) => "replica",
            PeerMsg::Gossip(_) => "gossip",
            PeerMsg::Hints(_) => "hints",
            PeerMsg::AntiEntropy(_) => "anti-entropy",
            PeerMsg::Tombstones(_) => "tombstones",
            PeerMsg::Handoff(_) => "handoff",
            PeerMsg::Stats => "stats",
            PeerMsg::Load(_) => "load",
            PeerMsg::Fenced { .. } => "fenced",
        }
    }
}

/// What a node holds, as `status` shows it for each member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLoad {
    pub keys: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
    /// Hints held, per owner they are for.
    pub hints: Vec<(NodeId, u64)>,
}

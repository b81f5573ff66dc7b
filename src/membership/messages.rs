//! What membership says to its peers and to its shell: gossip messages,
//! where they go, and what an input changed.

use serde::{Deserialize, Serialize};

use super::{Records, Summary};
use crate::liveness::Heartbeats;
use crate::node::NodeId;
use crate::view::View;

/// The first protocol version that gossips by digest.
pub const DIGEST_PROTOCOL: u8 = 7;
/// The first protocol version whose digests say their Q, and which can
/// split partitions.
pub const SPLIT_PROTOCOL: u8 = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipMsg {
    /// The sender's view and heartbeat counters; the receiver merges them
    /// and answers with `Reply` carrying its own. (To and from peers that
    /// speak protocol 6, and to seeds not known yet.)
    Push {
        view: View,
        heartbeats: Heartbeats,
    },
    Reply {
        view: View,
        heartbeats: Heartbeats,
    },
    /// The sender is stopping (to restart, or for good): route around it
    /// now rather than once a probe of it goes unanswered. Protocol 5.
    Stopping,
    /// A round's opening (protocol 7): the fingerprint of the sender's
    /// view and liveness reports (`Summary::root`). Answered with `Agree`
    /// if the receiver's is the same, else with the receiver's `Summary`.
    /// Every message of a round carries its sender's heartbeat, for peers
    /// that still gossip protocol 6's counters.
    Digest {
        root: u64,
        heartbeat: u64,
    },
    Agree {
        heartbeat: u64,
    },
    Summary {
        summary: Summary,
        heartbeat: u64,
    },
    /// The sender's records in the buckets where the two summaries differ;
    /// answered with the receiver's in the same buckets (`Delta`).
    Records {
        buckets: Vec<u32>,
        records: Records,
        heartbeat: u64,
    },
    Delta {
        records: Records,
        heartbeat: u64,
    },
}

impl GossipMsg {
    /// Whether the message opens an exchange (the receiver answers it).
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            GossipMsg::Push { .. }
                | GossipMsg::Stopping
                | GossipMsg::Digest { .. }
                | GossipMsg::Records { .. }
        )
    }

    /// The first protocol version that has this message.
    pub fn since(&self) -> u8 {
        match self {
            GossipMsg::Push { .. } | GossipMsg::Reply { .. } => 1,
            GossipMsg::Stopping => 5,
            _ => DIGEST_PROTOCOL,
        }
    }
}

/// Where a gossip message goes: a known member, or a seed address whose
/// node id is not known yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Node(NodeId),
    Addr(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub to: Destination,
    pub msg: GossipMsg,
}

/// What an input changed, so the shell knows what to publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changed {
    /// The view (members or ownership): persist it, recompute the ring.
    pub view: bool,
    /// Some peer's health: re-route.
    pub liveness: bool,
}

impl Changed {
    pub fn any(self) -> bool {
        self.view || self.liveness
    }
}

impl std::ops::BitOr for Changed {
    type Output = Changed;

    fn bitor(self, other: Changed) -> Changed {
        Changed {
            view: self.view || other.view,
            liveness: self.liveness || other.liveness,
        }
    }
}

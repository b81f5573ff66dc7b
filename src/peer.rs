//! The peer protocol's message types.
//!
//! A peer connection carries `PeerFrame`s (framed as `crate::wire` frames
//! them): the connecting node opens with
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
use crate::protocol::{self, Versions};
use crate::replica::ReplicaMsg;
use crate::tombstones::GcMsg;
use crate::view::Member;

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

/// Everything that crosses between nodes. The Bridge reads `to` and `corr`
/// only; `msg` belongs to the concern that sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub corr: Corr,
    pub msg: PeerMsg,
}

/// Request/response correlation, handled by the Bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Corr {
    /// No answer expected.
    OneWay,
    /// Answer with `Reply(id)`.
    Request(u64),
    /// The answer to `Request(id)`.
    Reply(u64),
}

/// Who is on the other end of a peer connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    /// Must match the receiver's cluster name, or the connection is refused.
    pub cluster: String,
    pub node: NodeId,
    /// Fresh for every connection; the other side's proof answers it.
    pub nonce: Nonce,
    /// The protocol versions the sender speaks (None: a node from before
    /// version 5, which said nothing).
    #[serde(with = "crate::protocol::since_5")]
    pub versions: Option<Versions>,
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

/// The concern a peer request belongs to: the one that registered to
/// answer it. The Bridge routes on this and reads nothing else of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Concern {
    Replica,
    Gossip,
    Hints,
    AntiEntropy,
    Tombstones,
    Handoff,
    /// `status`'s question about a node's load.
    Stats,
}

impl PeerFrame {
    /// The first protocol version that has this frame's message: it is
    /// never encoded at an older one (`crate::protocol`).
    pub fn since(&self) -> u8 {
        match self {
            PeerFrame::Envelope(env) => env.msg.since(),
            PeerFrame::Hello(_) | PeerFrame::Welcome { .. } | PeerFrame::Proof(_) => {
                protocol::HELLO_VERSION
            }
        }
    }
}

impl Envelope {
    /// What a link answers in its peer's place when this message is newer
    /// than the version the link speaks (it is never sent): an error to a
    /// request, nothing to anything else.
    pub fn withheld(self, speaking: u8) -> Option<Envelope> {
        let Corr::Request(id) = self.corr else {
            return None;
        };
        let message = format!(
            "{} speaks protocol {speaking}; a {} message needs {}",
            self.to,
            self.msg.name(),
            self.msg.since()
        );
        Some(Envelope {
            from: self.to,
            to: self.from,
            corr: Corr::Reply(id),
            msg: PeerMsg::Error {
                kind: ErrorKind::Unavailable,
                message,
            },
        })
    }
}

impl PeerMsg {
    /// The first protocol version that has this message.
    pub fn since(&self) -> u8 {
        match self {
            PeerMsg::Gossip(gossip) => gossip.since().max(protocol::MIN_PROTOCOL_VERSION),
            PeerMsg::Tombstones(
                GcMsg::ProbeAs { .. }
                | GcMsg::HeldAs { .. }
                | GcMsg::Fold { .. }
                | GcMsg::Folded { .. },
            ) => 6,
            PeerMsg::Tombstones(GcMsg::ProbeFolds { .. }) => 9,
            _ => protocol::MIN_PROTOCOL_VERSION,
        }
    }

    /// The concern that answers this message as a request (None: an
    /// answer, or the Bridge's own ping).
    pub fn concern(&self) -> Option<Concern> {
        match self {
            PeerMsg::Replica(_) => Some(Concern::Replica),
            PeerMsg::Gossip(_) => Some(Concern::Gossip),
            PeerMsg::Hints(_) => Some(Concern::Hints),
            PeerMsg::AntiEntropy(_) => Some(Concern::AntiEntropy),
            PeerMsg::Tombstones(_) => Some(Concern::Tombstones),
            PeerMsg::Handoff(_) => Some(Concern::Handoff),
            PeerMsg::Stats => Some(Concern::Stats),
            PeerMsg::Ping
            | PeerMsg::Pong
            | PeerMsg::Error { .. }
            | PeerMsg::Load(_)
            | PeerMsg::Fenced { .. } => None,
        }
    }

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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::wire::FrameCodec;

    fn codec() -> FrameCodec {
        FrameCodec::new(1024)
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn golden_peer_frame() {
        let env = Envelope {
            from: NodeId::new("a").unwrap(),
            to: NodeId::new("b").unwrap(),
            corr: Corr::Request(5),
            msg: PeerMsg::Ping,
        };
        let frame = codec().to_frame(&env).unwrap();
        // version | "a" | "b" | Request(5) | Ping
        assert_eq!(hex(&frame[8..]), "0901610162010500");
        let old = codec().at(4).to_frame(&env).unwrap();
        assert_eq!(hex(&old[8..]), "0401610162010500", "release 4's bytes");
        let (back, _): (Envelope, _) = codec().decode(&frame).unwrap().unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn a_message_of_5_is_withheld_from_4_and_a_request_answered_in_the_peers_place() {
        let (a, b) = (NodeId::new("a").unwrap(), NodeId::new("b").unwrap());
        let stop = |corr| Envelope {
            from: a.clone(),
            to: b.clone(),
            corr,
            msg: PeerMsg::Gossip(GossipMsg::Stopping),
        };
        assert_eq!(PeerFrame::Envelope(stop(Corr::OneWay)).since(), 5);
        assert_eq!(
            PeerFrame::Envelope(Envelope {
                msg: PeerMsg::Ping,
                ..stop(Corr::OneWay)
            })
            .since(),
            4
        );
        assert_eq!(stop(Corr::OneWay).withheld(4), None);
        let answer = stop(Corr::Request(9)).withheld(4).unwrap();
        assert_eq!(
            (&answer.from, &answer.to, answer.corr),
            (&b, &a, Corr::Reply(9))
        );
        match answer.msg {
            PeerMsg::Error { kind, message } => {
                assert_eq!(kind, ErrorKind::Unavailable);
                assert!(message.contains("b speaks protocol 4"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {

        #![proptest_config(crate::proptest_config())]
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = codec().decode::<Envelope>(&bytes);
            let _ = codec().decode::<PeerFrame>(&bytes);
        }
    }
}

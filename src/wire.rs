//! Frames and the two protocols that use them.
//!
//! A frame is `u32 length | u32 CRC-32 | payload` (big-endian), where the
//! payload is one protocol-version byte followed by the postcard encoding of
//! one message, and the CRC covers the whole payload. The client protocol
//! (`ClientRequest` / `ClientResponse`, here) and the peer protocol
//! (`crate::peer`) use the same framing on separate ports.
//!
//! Decoding never panics. A frame is rejected, with a typed error, when its
//! length exceeds the limit (checked from the header alone, before the
//! payload is buffered), its CRC does not match, its payload ends early or
//! has bytes left over, or its version or enum variant is unknown.
//!
//! Compatibility: postcard is not self-describing, so every enum here only
//! ever gains variants at the end, and a change to an existing message bumps
//! `PROTOCOL_VERSION` and keeps the older layout readable and writable
//! (`crate::protocol`). The golden-bytes tests fail on accidental changes.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::backup;
use crate::crdt::{Operation, Reading};
use crate::error::{Error, ErrorKind, Result};
use crate::handoff::{PlanChange, PlanReport};
use crate::namespace;
use crate::node::NodeId;
use crate::protocol;
use crate::routing::{Effect, RingSnapshot};

pub use crate::protocol::PROTOCOL_VERSION;
/// Length prefix + CRC.
pub const HEADER_LEN: usize = 8;
/// Default frame limit; configurable (`limits.max_frame_bytes`).
pub const DEFAULT_MAX_FRAME: u32 = 16 << 20;

/// Encodes frames at one protocol version (this build's newest unless
/// told otherwise) and decodes frames of any version this build speaks,
/// under a size limit.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame: u32,
    version: u8,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameCodec {
    pub fn new(max_frame: u32) -> Self {
        FrameCodec {
            max_frame,
            version: PROTOCOL_VERSION,
        }
    }

    /// The same codec, encoding at `version` (`crate::protocol`).
    pub fn at(self, version: u8) -> Self {
        FrameCodec { version, ..self }
    }

    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Appends one frame holding `msg` to `out`.
    pub fn encode<T: Serialize>(&self, msg: &T, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        out.push(self.version);
        let encoded = protocol::at(self.version, || {
            postcard::to_extend(msg, std::mem::take(out))
        });
        *out = encoded.map_err(|e| Error::Internal(format!("encoding failed: {e}")))?;
        let payload_len = out.len() - start - HEADER_LEN;
        if payload_len > self.max_frame as usize {
            out.truncate(start);
            return Err(Error::FrameTooLarge {
                len: payload_len as u64,
                max: u64::from(self.max_frame),
            });
        }
        let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
        out[start..start + 4].copy_from_slice(&(payload_len as u32).to_be_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
        Ok(())
    }

    /// One frame holding `msg`.
    pub fn to_frame<T: Serialize>(&self, msg: &T) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encode(msg, &mut out)?;
        Ok(out)
    }

    /// Length of the frame starting at `buf`, once its header is there.
    /// Fails as soon as the header announces an oversized frame.
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>> {
        let Some(header) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        if len > self.max_frame {
            return Err(Error::FrameTooLarge {
                len: u64::from(len),
                max: u64::from(self.max_frame),
            });
        }
        Ok(Some(HEADER_LEN + len as usize))
    }

    /// Decodes the frame at the front of `buf`. `Ok(None)` means more bytes
    /// are needed; otherwise returns the message and the bytes consumed.
    pub fn decode<T: DeserializeOwned>(&self, buf: &[u8]) -> Result<Option<(T, usize)>> {
        let Some(total) = self.frame_len(buf)? else {
            return Ok(None);
        };
        let Some(frame) = buf.get(..total) else {
            return Ok(None);
        };
        let expected = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let msg = decode_payload(expected, &frame[HEADER_LEN..])?;
        Ok(Some((msg, total)))
    }
}

/// Checks and decodes one complete payload whose CRC should be `expected`.
pub fn decode_payload<T: DeserializeOwned>(expected: u32, payload: &[u8]) -> Result<T> {
    let actual = crc32fast::hash(payload);
    if actual != expected {
        return Err(Error::ChecksumMismatch { expected, actual });
    }
    let Some((&version, body)) = payload.split_first() else {
        return Err(Error::Truncated("empty payload".into()));
    };
    let speaks = protocol::Versions::this_build();
    if !(speaks.min..=speaks.max).contains(&version) && version != protocol::HELLO_VERSION {
        return Err(Error::UnknownVersion(version));
    }
    let decoded = protocol::at(version, || postcard::take_from_bytes(body));
    let (msg, rest) = decoded.map_err(|e| match e {
        postcard::Error::DeserializeUnexpectedEnd => Error::Truncated(e.to_string()),
        other => Error::Malformed(other.to_string()),
    })?;
    if !rest.is_empty() {
        return Err(Error::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

// ---------------------------------------------------------------------------
// Client protocol
// ---------------------------------------------------------------------------

/// One client request. `id` is chosen by the client and echoed in the
/// response, so requests can be pipelined and answered out of order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    pub id: u64,
    pub op: ClientOp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientOp {
    /// First message on a connection: names the cluster the client expects
    /// (empty: any) and carries the client token when one is configured.
    Hello {
        cluster: String,
        token: Option<String>,
        /// The protocol versions the client speaks (None: a client from
        /// before version 5, which speaks 4).
        #[serde(with = "crate::protocol::since_5")]
        versions: Option<protocol::Versions>,
    },
    Get(Get),
    Put(Put),
    Delete(Delete),
    /// The node's view of the cluster.
    Status,
    /// This node's local copy of a key, without quorum.
    Inspect {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Membership: join the cluster the node at peer address `seed` is in.
    Join {
        seed: String,
    },
    /// Membership: hand this node's partitions off, then leave.
    Leave,
    /// Membership: drop a dead member (by id or address) from the ring.
    Remove {
        node: String,
    },
    /// What a membership change would move (changes nothing).
    Plan {
        change: PlanChange,
    },
    /// Fault injection (refused unless `testing.fault_injection` is on).
    Fault {
        fault: NetFault,
    },
    /// The node's view of the ring, for a cluster-aware client
    /// (`crate::routing`).
    Ring,
    /// A get, put or delete sent by a client that routes by the ring whose
    /// version (`View::digest`) is `ring`; when the coordinator holds
    /// another, its reply comes wrapped in `ClientReply::Stale`.
    Routed {
        ring: u64,
        op: KeyOp,
    },
    /// Namespace administration (`dynakv ns ...`).
    Namespace(namespace::Request),
    /// Several gets, puts and deletes in one request (up to
    /// `limits.max_batch`): each is its own quorum session, and each gets
    /// its own reply, in order, in `ClientReply::Batch`.
    Batch(Vec<KeyOp>),
    /// A page of live keys starting with `prefix` (`crate::listing`):
    /// at most `limit`, from where `after` (the previous page's token;
    /// empty for the first page) left off. Answered with `Keys`.
    List {
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
        limit: u32,
        #[serde(with = "serde_bytes")]
        after: Vec<u8>,
    },
    /// A put whose value expires: `Put` with a TTL.
    PutExpiring(PutExpiring),
    /// An operation on a key of a typed namespace (counter, set).
    Apply(Apply),
    /// A page of a backup of this node's storage (`crate::backup`).
    Backup(backup::PageRequest),
    /// Membership: double the partition count (protocol 8).
    Split,
}

// The operations on one key are structs of their own, shared by `ClientOp`
// and `KeyOp`; postcard encodes a variant holding one struct exactly as a
// variant with those fields, so the bytes are those of earlier versions.

/// Read a key with quorum R (None: its namespace's default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Get {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub r: Option<u8>,
}

/// Write a value. `context` is the opaque context of an earlier read
/// (empty for a blind write); siblings it covers are superseded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub context: Vec<u8>,
    pub w: Option<u8>,
}

/// Delete: writes a tombstone with the given context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delete {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub context: Vec<u8>,
    pub w: Option<u8>,
}

/// A put whose value reads as not found `ttl_ms` after its coordinator
/// took it (0: never, whatever its namespace's default TTL). Encoded as
/// the put's fields, then the TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutExpiring {
    pub put: Put,
    pub ttl_ms: u64,
}

/// An operation on a key of a typed namespace. `context` is the opaque
/// context of an earlier read (empty: none), which a remove needs: it
/// takes away only the adds that read saw (without one, the coordinator
/// reads at its R first, and removes what that read saw).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Apply {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub operation: Operation,
    #[serde(with = "serde_bytes")]
    pub context: Vec<u8>,
    pub w: Option<u8>,
}

/// The operations on one key, as a routed request or a batch carries them
/// (`ClientOp`'s; a separate enum, so a routed request cannot nest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyOp {
    Get(Get),
    Put(Put),
    Delete(Delete),
    PutExpiring(PutExpiring),
    Apply(Apply),
}

impl KeyOp {
    pub fn key(&self) -> &[u8] {
        match self {
            KeyOp::Get(Get { key, .. })
            | KeyOp::Put(Put { key, .. })
            | KeyOp::Delete(Delete { key, .. })
            | KeyOp::PutExpiring(PutExpiring {
                put: Put { key, .. },
                ..
            })
            | KeyOp::Apply(Apply { key, .. }) => key,
        }
    }

    /// Whether sending it again could apply it twice.
    pub fn effect(&self) -> Effect {
        match self {
            KeyOp::Get(_) => Effect::Read,
            KeyOp::Put(_) | KeyOp::Delete(_) | KeyOp::PutExpiring(_) | KeyOp::Apply(_) => {
                Effect::Write
            }
        }
    }
}

impl From<KeyOp> for ClientOp {
    fn from(op: KeyOp) -> ClientOp {
        match op {
            KeyOp::Get(get) => ClientOp::Get(get),
            KeyOp::Put(put) => ClientOp::Put(put),
            KeyOp::Delete(delete) => ClientOp::Delete(delete),
            KeyOp::PutExpiring(put) => ClientOp::PutExpiring(put),
            KeyOp::Apply(apply) => ClientOp::Apply(apply),
        }
    }
}

/// A network fault a node injects into its own Bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetFault {
    /// Drop all traffic to and from these peers (node ids), replacing any
    /// earlier partition; an empty list ends the partition.
    Partition { peers: Vec<String> },
    /// Clear every fault.
    Heal,
}

impl ClientOp {
    /// The namespace of the keys the operation names (a batch: its first
    /// operation's), for metrics; None when it names none, or a key that
    /// is not well-formed.
    pub fn namespace(&self) -> Option<&str> {
        let key = match self {
            ClientOp::Get(Get { key, .. })
            | ClientOp::Put(Put { key, .. })
            | ClientOp::Delete(Delete { key, .. })
            | ClientOp::PutExpiring(PutExpiring {
                put: Put { key, .. },
                ..
            })
            | ClientOp::Apply(Apply { key, .. })
            | ClientOp::Inspect { key } => key,
            ClientOp::List { prefix, .. } => prefix,
            ClientOp::Routed { op, .. } => op.key(),
            ClientOp::Batch(ops) => ops.first()?.key(),
            _ => return None,
        };
        namespace::split_key(key).ok().map(|(ns, _)| ns)
    }

    /// A short stable name, used in metrics labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ClientOp::Hello { .. } => "hello",
            ClientOp::Get(_) => "get",
            ClientOp::Put(_) => "put",
            ClientOp::Delete(_) => "delete",
            ClientOp::Status => "status",
            ClientOp::Inspect { .. } => "inspect",
            ClientOp::Join { .. } => "join",
            ClientOp::Leave => "leave",
            ClientOp::Remove { .. } => "remove",
            ClientOp::Plan { .. } => "plan",
            ClientOp::Fault { .. } => "fault",
            ClientOp::Ring => "ring",
            ClientOp::Namespace(_) => "namespace",
            ClientOp::Batch(_) => "batch",
            ClientOp::List { .. } => "list",
            ClientOp::PutExpiring(_) => "put",
            ClientOp::Apply(apply) => apply.operation.name(),
            ClientOp::Backup(_) => "backup",
            ClientOp::Split => "split",
            ClientOp::Routed { op, .. } => match op {
                KeyOp::Get(_) => "get",
                KeyOp::Put(_) | KeyOp::PutExpiring(_) => "put",
                KeyOp::Delete(_) => "delete",
                KeyOp::Apply(apply) => apply.operation.name(),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientResponse {
    pub id: u64,
    pub reply: ClientReply,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    /// The node's answer to a hello, encoded at the version the two
    /// speak from then on.
    Hello {
        node: NodeId,
        cluster: String,
        /// The protocol versions the node speaks (absent at protocol 4).
        #[serde(with = "crate::protocol::since_5")]
        versions: Option<protocol::Versions>,
    },
    /// A read: every live sibling (empty when not found or deleted) and the
    /// context to write back.
    Value {
        #[serde(with = "byte_lists")]
        values: Vec<Vec<u8>>,
        #[serde(with = "serde_bytes")]
        context: Vec<u8>,
    },
    /// A write was acknowledged by W replicas. `context` covers the new value
    /// and every sibling the coordinator knew; `others` are those siblings'
    /// values (usually none), so the client knows all a write with that
    /// context would supersede.
    Written {
        #[serde(with = "serde_bytes")]
        context: Vec<u8>,
        #[serde(with = "byte_lists")]
        others: Vec<Vec<u8>>,
    },
    Status(StatusReport),
    Local(LocalCopy),
    Error {
        kind: ErrorKind,
        message: String,
    },
    /// An administrative request was accepted.
    Done {
        message: String,
    },
    Plan(PlanReport),
    /// The answer to `Ring`.
    Ring(RingSnapshot),
    /// The answer to a routed request whose ring was not the coordinator's:
    /// the coordinator's ring version, and the request's own reply.
    Stale {
        ring: u64,
        reply: KeyReply,
    },
    /// The answer to a namespace `show` or `list`.
    Namespaces(Vec<namespace::Info>),
    /// The answer to a `Batch`: one reply per operation, in order.
    Batch(Vec<KeyReply>),
    /// A page of a listing, and the token of the next (None: done).
    Keys {
        #[serde(with = "byte_lists")]
        keys: Vec<Vec<u8>>,
        next: Option<Vec<u8>>,
    },
    /// A read of a typed key, or an operation applied to it: the merged
    /// value (never siblings) and the context a remove sends back.
    Typed {
        reading: Reading,
        #[serde(with = "serde_bytes")]
        context: Vec<u8>,
    },
    /// The answer to `Backup`.
    Backup(backup::Page),
}

/// The reply to one key's operation, as a `Stale` or a `Batch` carries it:
/// a get's, a write's or an error (a separate enum, so replies cannot nest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyReply {
    Value {
        #[serde(with = "byte_lists")]
        values: Vec<Vec<u8>>,
        #[serde(with = "serde_bytes")]
        context: Vec<u8>,
    },
    Written {
        #[serde(with = "serde_bytes")]
        context: Vec<u8>,
        #[serde(with = "byte_lists")]
        others: Vec<Vec<u8>>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
    Typed {
        reading: Reading,
        #[serde(with = "serde_bytes")]
        context: Vec<u8>,
    },
}

impl ClientReply {
    pub fn error(e: &Error) -> Self {
        ClientReply::Error {
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    /// This reply to a routed request, told that the client's ring is not
    /// `ring` (a reply no routed request has stays as it is).
    pub fn stale(self, ring: u64) -> ClientReply {
        match KeyReply::try_from(self) {
            Ok(reply) => ClientReply::Stale { ring, reply },
            Err(other) => other,
        }
    }
}

impl TryFrom<ClientReply> for KeyReply {
    type Error = ClientReply;

    /// The reply to one key's operation; any other reply comes back as it is.
    fn try_from(reply: ClientReply) -> Result<KeyReply, ClientReply> {
        match reply {
            ClientReply::Value { values, context } => Ok(KeyReply::Value { values, context }),
            ClientReply::Written { context, others } => Ok(KeyReply::Written { context, others }),
            ClientReply::Error { kind, message } => Ok(KeyReply::Error { kind, message }),
            ClientReply::Typed { reading, context } => Ok(KeyReply::Typed { reading, context }),
            other => Err(other),
        }
    }
}

impl From<KeyReply> for ClientReply {
    fn from(reply: KeyReply) -> ClientReply {
        match reply {
            KeyReply::Value { values, context } => ClientReply::Value { values, context },
            KeyReply::Written { context, others } => ClientReply::Written { context, others },
            KeyReply::Error { kind, message } => ClientReply::Error { kind, message },
            KeyReply::Typed { reading, context } => ClientReply::Typed { reading, context },
        }
    }
}

/// `inspect`: one replica's stored siblings, with their dots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalCopy {
    pub node: NodeId,
    pub partition: u32,
    /// (actor, counter, value or None for a tombstone)
    pub siblings: Vec<(u64, u64, Option<Vec<u8>>)>,
    pub context: Vec<u8>,
    /// A typed key's merged value here (None: the key holds no data-type
    /// state).
    pub reading: Option<Reading>,
}

/// `status`: what one node knows about the cluster and itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub node: NodeId,
    pub cluster: String,
    pub partitions: u32,
    pub n: u8,
    pub members: Vec<MemberStatus>,
    /// Keys stored on this node (all partitions it holds).
    pub keys: u64,
    /// Hints this node holds, per target node.
    pub hints: Vec<(NodeId, u64)>,
    /// Free-form lines from concerns that report progress (transfers,
    /// anti-entropy), one per line.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node: NodeId,
    pub peer_addr: String,
    pub client_addr: String,
    pub weight: u32,
    /// Membership state: joining, up, leaving, left, removed.
    pub state: String,
    /// Liveness as this node sees it: up, suspect, down.
    pub liveness: String,
    /// Partitions owned (primary) and replicated.
    pub owned: u32,
    pub replicated: u32,
    /// What the member holds (None when it did not answer).
    pub load: Option<MemberLoad>,
    /// Hints the members that answered hold for this member.
    pub hints_pending: u64,
    /// The protocol versions the member speaks, as its hello said (None:
    /// no link to it is open; this node itself: its own).
    #[serde(with = "crate::protocol::since_5")]
    pub protocol: Option<protocol::Versions>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberLoad {
    pub keys: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
}

/// A list of byte strings, each as bytes: the same postcard encoding as a
/// plain `Vec<Vec<u8>>` (as are the `serde_bytes` fields), decoded in one
/// copy instead of one call per byte.
pub(crate) mod byte_lists {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(lists: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(lists.iter().map(|b| Bytes::new(b)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let lists = Vec::<ByteBuf>::deserialize(d)?;
        Ok(lists.into_iter().map(ByteBuf::into_vec).collect())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::version::Value;

    fn codec() -> FrameCodec {
        FrameCodec::new(1024)
    }

    fn put() -> ClientRequest {
        ClientRequest {
            id: 7,
            op: ClientOp::Put(Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                context: vec![],
                w: Some(2),
            }),
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn golden_client_frame() {
        // CRC cross-checked with zlib.crc32.
        // len 10 | crc | version 9 | id 7 | Put(2) | key "k" | value "v" | ctx [] | Some(2)
        let frame = codec().to_frame(&put()).unwrap();
        assert_eq!(
            hex(&frame),
            "0000000a79be5bb8090702016b01760001 02".replace(' ', "")
        );
        let (back, used): (ClientRequest, _) = codec().decode(&frame).unwrap().unwrap();
        assert_eq!((back, used), (put(), frame.len()));
        // At protocol 4, the bytes release 4 wrote; they decode the same.
        let old = codec().at(4).to_frame(&put()).unwrap();
        assert_eq!(
            hex(&old),
            "0000000a8c40d008040702016b01760001 02".replace(' ', "")
        );
        let (back, _): (ClientRequest, _) = codec().decode(&old).unwrap().unwrap();
        assert_eq!(back, put());
    }

    #[test]
    fn a_hello_at_protocol_4_has_the_old_layout_and_no_range() {
        let hello = ClientOp::Hello {
            cluster: "c".into(),
            token: None,
            versions: Some(protocol::Versions::this_build()),
        };
        let req = ClientRequest { id: 0, op: hello };
        let old = codec().at(4).to_frame(&req).unwrap();
        // version 4 | id 0 | Hello(0) | "c" | None: release 4's bytes.
        assert_eq!(hex(&old[8..]), "0400000163 00".replace(' ', ""));
        let (back, _): (ClientRequest, _) = codec().decode(&old).unwrap().unwrap();
        assert!(
            matches!(back.op, ClientOp::Hello { versions: None, .. }),
            "{back:?}"
        );
        let new = codec().to_frame(&req).unwrap();
        let (back, _): (ClientRequest, _) = codec().decode(&new).unwrap().unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn byte_fields_keep_the_plain_vec_encoding() {
        let values = vec![b"ab".to_vec(), vec![], vec![0xff; 130]];
        let context = b"ctx".to_vec();
        let reply = ClientReply::Value {
            values: values.clone(),
            context: context.clone(),
        };
        // Variant 1 (Value), then the fields as plain vectors encode them.
        let mut plain = vec![1];
        plain.extend(postcard::to_allocvec(&(&values, &context)).unwrap());
        let encoded = postcard::to_allocvec(&reply).unwrap();
        assert_eq!(encoded, plain);
        assert_eq!(
            postcard::from_bytes::<ClientReply>(&encoded).unwrap(),
            reply
        );
        let data = Value::Data(vec![7; 100]);
        let mut plain = vec![0];
        plain.extend(postcard::to_allocvec(&vec![7u8; 100]).unwrap());
        assert_eq!(postcard::to_allocvec(&data).unwrap(), plain);
    }

    #[test]
    fn partial_input_asks_for_more() {
        let frame = codec().to_frame(&put()).unwrap();
        for cut in 0..frame.len() {
            assert!(
                codec()
                    .decode::<ClientRequest>(&frame[..cut])
                    .unwrap()
                    .is_none()
            );
        }
    }

    #[test]
    fn each_kind_of_bad_frame_has_its_error() {
        let good = codec().to_frame(&put()).unwrap();

        let mut oversized = good.clone();
        oversized[..4].copy_from_slice(&2000u32.to_be_bytes());
        assert!(matches!(
            codec().decode::<ClientRequest>(&oversized[..8]),
            Err(Error::FrameTooLarge {
                len: 2000,
                max: 1024
            })
        ));

        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            codec().decode::<ClientRequest>(&flipped),
            Err(Error::ChecksumMismatch { .. })
        ));

        // a payload cut short but with a matching length and CRC
        let short = reframe(&good[8..good.len() - 2]);
        assert!(matches!(
            codec().decode::<ClientRequest>(&short),
            Err(Error::Truncated(_))
        ));

        let mut long_payload = good[8..].to_vec();
        long_payload.extend_from_slice(&[0, 0]);
        assert!(matches!(
            codec().decode::<ClientRequest>(&reframe(&long_payload)),
            Err(Error::TrailingBytes(2))
        ));

        let mut version = good[8..].to_vec();
        version[0] = 99;
        assert!(matches!(
            codec().decode::<ClientRequest>(&reframe(&version)),
            Err(Error::UnknownVersion(99))
        ));

        let mut variant = good[8..].to_vec();
        variant[2] = 200; // op variant index
        assert!(matches!(
            codec().decode::<ClientRequest>(&reframe(&variant)),
            Err(Error::Malformed(_))
        ));

        assert!(matches!(
            codec().decode::<ClientRequest>(&reframe(&[])),
            Err(Error::Truncated(_))
        ));
    }

    #[test]
    fn encoding_refuses_to_exceed_the_limit() {
        let big = ClientRequest {
            id: 1,
            op: ClientOp::Get(Get {
                key: vec![0; 2000],
                r: None,
            }),
        };
        let mut out = vec![1, 2, 3];
        assert!(matches!(
            codec().encode(&big, &mut out),
            Err(Error::FrameTooLarge { .. })
        ));
        assert_eq!(
            out,
            vec![1, 2, 3],
            "a failed encode leaves the buffer as it was"
        );
    }

    #[test]
    fn frames_decode_back_to_back() {
        let mut buf = Vec::new();
        for i in 0..3 {
            codec()
                .encode(
                    &ClientRequest {
                        id: i,
                        op: ClientOp::Status,
                    },
                    &mut buf,
                )
                .unwrap();
        }
        let mut at = 0;
        for i in 0..3 {
            let (msg, used): (ClientRequest, _) = codec().decode(&buf[at..]).unwrap().unwrap();
            assert_eq!(msg.id, i);
            at += used;
        }
        assert_eq!(at, buf.len());
    }

    fn reframe(payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    proptest! {

        #![proptest_config(crate::proptest_config())]
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = codec().decode::<ClientRequest>(&bytes);
            let _ = codec().decode::<ClientResponse>(&bytes);
            // the same bytes with a valid header reach the payload decoder
            let framed = reframe(&bytes);
            let _ = codec().decode::<ClientRequest>(&framed);
        }

        #[test]
        fn mutated_frames_never_panic_and_never_pass_the_crc(
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut frame = codec().to_frame(&put()).unwrap();
            let i = at.index(frame.len());
            frame[i] ^= 1 << bit;
            let decoded = codec().decode::<ClientRequest>(&frame);
            prop_assert!(!matches!(decoded, Ok(Some(_))), "corrupted frame decoded: {:?}", decoded);
        }

        #[test]
        fn expiring_puts_are_appended_and_round_trip(ttl_ms in any::<u64>(), w in prop::option::of(any::<u8>())) {
            let plain = Put { key: b"k".to_vec(), value: b"v".to_vec(), context: vec![], w };
            let put = PutExpiring { put: plain.clone(), ttl_ms };
            let op = ClientOp::PutExpiring(put.clone());
            let bytes = postcard::to_stdvec(&op).unwrap();
            prop_assert_eq!(bytes[0], 16, "after every earlier ClientOp");
            let routed = postcard::to_stdvec(&KeyOp::PutExpiring(put.clone())).unwrap();
            prop_assert_eq!(routed[0], 3, "after every earlier KeyOp");
            prop_assert_eq!(&routed[1..], &bytes[1..]);
            // The put's own fields first, as a `Put` is encoded.
            let fields = postcard::to_stdvec(&ClientOp::Put(plain)).unwrap();
            prop_assert_eq!(&bytes[1..fields.len()], &fields[1..]);
            let req = ClientRequest { id: 7, op };
            let frame = FrameCodec::default().to_frame(&req).unwrap();
            let (back, _): (ClientRequest, _) = FrameCodec::default().decode(&frame).unwrap().unwrap();
            prop_assert_eq!(back, req);
            prop_assert_eq!(ClientOp::from(KeyOp::PutExpiring(put.clone())), ClientOp::PutExpiring(put));
        }

        #[test]
        fn requests_round_trip(id in any::<u64>(), key in prop::collection::vec(any::<u8>(), 0..50),
                               value in prop::collection::vec(any::<u8>(), 0..50), w in prop::option::of(any::<u8>())) {
            let req = ClientRequest { id, op: ClientOp::Put(Put { key, value, context: vec![1, 2], w }) };
            let frame = FrameCodec::default().to_frame(&req).unwrap();
            let (back, used): (ClientRequest, _) = FrameCodec::default().decode(&frame).unwrap().unwrap();
            prop_assert_eq!(back, req);
            prop_assert_eq!(used, frame.len());
        }
    }
}

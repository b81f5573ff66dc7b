//! Node identity.
//!
//! A `NodeId` is the operator-chosen, stable name of a node ("node1",
//! "kv-3.eu"). It names the node in the membership view, the ring and every
//! envelope. It is validated wherever it is built, including when decoded
//! from the wire, so the rest of the code can treat it as trusted.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// Longest accepted node id, in bytes. Ids travel in every envelope and
/// every ring entry, so they are kept short.
pub const MAX_NODE_ID_LEN: usize = 64;

/// Shared, not copied: ids are cloned into every route, request and
/// envelope, and a clone is a reference count.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Accepts 1 to 64 bytes of ASCII letters, digits, `.`, `_` and `-`.
    pub fn new(id: impl AsRef<str>) -> Result<Self> {
        let id = id.as_ref();
        if id.is_empty() {
            return Err(Error::Config("node id is empty".into()));
        }
        if id.len() > MAX_NODE_ID_LEN {
            return Err(Error::Config(format!(
                "node id {id:?} is longer than {MAX_NODE_ID_LEN} bytes"
            )));
        }
        if let Some(c) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(Error::Config(format!(
                "node id {id:?} contains {c:?}; use letters, digits, '.', '_' or '-'"
            )));
        }
        Ok(NodeId(id.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Encoded as the plain string.
impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Decoded from a string and validated like `NodeId::new`.
impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Id;
        impl Visitor<'_> for Id {
            type Value = NodeId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node id")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<NodeId, E> {
                NodeId::new(s).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Id)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names_and_rejects_the_rest() {
        assert!(NodeId::new("node1").is_ok());
        assert!(NodeId::new("kv-3.eu_west").is_ok());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("a b").is_err());
        assert!(NodeId::new("x".repeat(65)).is_err());
        assert!(NodeId::new("nöde").is_err());
    }

    #[test]
    fn decoding_validates_too() {
        let bad = postcard::to_stdvec(&"has space".to_string()).unwrap();
        assert!(postcard::from_bytes::<NodeId>(&bad).is_err());
        let good = postcard::to_stdvec(&NodeId::new("n1").unwrap()).unwrap();
        assert_eq!(
            postcard::from_bytes::<NodeId>(&good).unwrap().as_str(),
            "n1"
        );
        // Plain strings in JSON too, map keys included.
        let map = std::collections::BTreeMap::from([(NodeId::new("n1").unwrap(), 1)]);
        let json = serde_json::to_string(&map).unwrap();
        assert_eq!(json, r#"{"n1":1}"#);
        let back: std::collections::BTreeMap<NodeId, u8> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, map);
        assert!(serde_json::from_str::<NodeId>(r#""a b""#).is_err());
    }
}

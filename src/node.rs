//! Node identity.
//!
//! A `NodeId` is the operator-chosen, stable name of a node ("node1",
//! "kv-3.eu"). It names the node in the membership view, the ring and every
//! envelope. It is validated wherever it is built, including when decoded
//! from the wire, so the rest of the code can treat it as trusted.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest accepted node id, in bytes. Ids travel in every envelope and
/// every ring entry, so they are kept short.
pub const MAX_NODE_ID_LEN: usize = 64;

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// Accepts 1 to 64 bytes of ASCII letters, digits, `.`, `_` and `-`.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
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
        Ok(NodeId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        NodeId::new(s)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
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
    }
}

//! What a namespace's keys hold: opaque values, or one data type, and
//! which operations each admits.

use serde::{Deserialize, Serialize};

use crate::crdt::{Operation, Reading};
use crate::error::{Error, Result};

/// What a namespace's values are. Variants are only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Opaque values; concurrent writes are kept as siblings.
    Blob,
    /// An exact counter (`crdt::Counter`), changed by increments.
    Counter,
    /// An add-wins set of byte strings (`crdt::Set`).
    Set,
    /// A map of register, counter and set fields (`crdt::Map`); a register
    /// keeps its concurrent values.
    Map,
    /// A map whose registers read as their latest write.
    LwwMap,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Blob => "blob",
            Kind::Counter => "counter",
            Kind::Set => "set",
            Kind::Map => "map",
            Kind::LwwMap => "map-lww",
        }
    }

    pub fn parse(s: &str) -> Result<Kind> {
        match s {
            "blob" => Ok(Kind::Blob),
            "counter" => Ok(Kind::Counter),
            "set" => Ok(Kind::Set),
            "map" => Ok(Kind::Map),
            "map-lww" => Ok(Kind::LwwMap),
            other => Err(Error::InvalidRequest(format!(
                "type {other:?} is not a namespace type (blob, counter, set, map, map-lww)"
            ))),
        }
    }

    /// What a read of a key that holds nothing returns: None for blobs
    /// (not found), the type's empty value for a data type.
    pub fn empty(self) -> Option<Reading> {
        match self {
            Kind::Blob => None,
            Kind::Counter => Some(Reading::Counter(0)),
            Kind::Set => Some(Reading::Set(Vec::new())),
            Kind::Map | Kind::LwwMap => Some(Reading::Map(Vec::new())),
        }
    }

    /// Refuses `op` unless it applies to this type.
    pub fn admit(self, op: &Operation) -> Result<()> {
        match (self, op) {
            (Kind::Counter, Operation::Increment(_))
            | (Kind::Set, Operation::Add(_) | Operation::Remove(_))
            | (
                Kind::Map | Kind::LwwMap,
                Operation::SetField { .. }
                | Operation::IncrementField { .. }
                | Operation::DeleteFields(_)
                | Operation::AddToField { .. }
                | Operation::RemoveFromField { .. },
            ) => Ok(()),
            (kind, op) => Err(Error::InvalidRequest(format!(
                "{} does not apply to a {} namespace{}",
                op.name(),
                kind.as_str(),
                match kind {
                    Kind::Blob => " (use put and delete)",
                    Kind::Counter => " (use incr)",
                    Kind::Set => " (use sadd and srem)",
                    Kind::Map | Kind::LwwMap => " (use hset, hincr, hsadd, hsrem and hdel)",
                }
            ))),
        }
    }
}

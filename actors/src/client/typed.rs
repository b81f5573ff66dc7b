//! The client's operations on keys of data-type namespaces (counter, set,
//! map): each an `Apply` of one `Operation`, answered with the counter's
//! value or that it was written, and `fetch` for the merged value.

use dynakv::crdt::{MapField, Operation, Reading};
use dynakv::wire::{Apply, ClientReply, KeyOp};
use dynakv::{Error, Result};

use super::connection::unexpected;
use super::{Client, Read};

/// A data type's merged value, and the context a remove sends back so it
/// takes away only the adds this read saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedResult {
    pub reading: Reading,
    pub context: Vec<u8>,
}

impl Client {
    /// Reads a key of a data type's namespace: its merged value.
    pub async fn fetch(&self, key: &[u8], r: Option<u8>) -> Result<TypedResult> {
        match self.read(key, r).await? {
            Read::Typed(typed) => Ok(typed),
            Read::Values(_) => Err(Error::InvalidRequest(
                "the key is in a blob namespace: get it".into(),
            )),
        }
    }

    /// Adds `by` (negative: subtracts) to a counter; returns its value
    /// after the increment, as its minting replica saw it.
    pub async fn incr(&self, key: &[u8], by: i64, w: Option<u8>) -> Result<i64> {
        match self.apply(key, Operation::Increment(by), &[], w).await? {
            ClientReply::Typed {
                reading: Reading::Counter(value),
                ..
            } => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    /// Adds members to a set.
    pub async fn sadd(&self, key: &[u8], members: &[&[u8]], w: Option<u8>) -> Result<()> {
        let members = members.iter().map(|m| m.to_vec()).collect();
        applied(self.apply(key, Operation::Add(members), &[], w).await?)
    }

    /// Removes members from a set: the adds of them that the read whose
    /// `context` this is saw (empty: the coordinator reads at R first and
    /// removes what it saw). An add concurrent with the remove survives.
    pub async fn srem(
        &self,
        key: &[u8],
        members: &[&[u8]],
        context: &[u8],
        w: Option<u8>,
    ) -> Result<()> {
        let members = members.iter().map(|m| m.to_vec()).collect();
        applied(
            self.apply(key, Operation::Remove(members), context, w)
                .await?,
        )
    }

    /// A set's members, sorted, and the context a remove sends back.
    pub async fn smembers(&self, key: &[u8], r: Option<u8>) -> Result<(Vec<Vec<u8>>, Vec<u8>)> {
        match self.fetch(key, r).await? {
            TypedResult {
                reading: Reading::Set(members),
                context,
            } => Ok((members, context)),
            TypedResult { reading, .. } => Err(Error::InvalidRequest(format!(
                "the key holds a {reading:?}, not a set"
            ))),
        }
    }

    /// Writes a map's register field (replacing the values read so far).
    pub async fn hset(&self, key: &[u8], field: &[u8], value: &[u8], w: Option<u8>) -> Result<()> {
        let op = Operation::SetField {
            field: field.to_vec(),
            value: value.to_vec(),
        };
        applied(self.apply(key, op, &[], w).await?)
    }

    /// Adds `by` (negative: subtracts) to a map's counter field.
    pub async fn hincr(&self, key: &[u8], field: &[u8], by: i64, w: Option<u8>) -> Result<()> {
        let op = Operation::IncrementField {
            field: field.to_vec(),
            by,
        };
        applied(self.apply(key, op, &[], w).await?)
    }

    /// Adds members to a map's set field.
    pub async fn hsadd(
        &self,
        key: &[u8],
        field: &[u8],
        members: &[&[u8]],
        w: Option<u8>,
    ) -> Result<()> {
        let op = Operation::AddToField {
            field: field.to_vec(),
            members: members.iter().map(|m| m.to_vec()).collect(),
        };
        applied(self.apply(key, op, &[], w).await?)
    }

    /// Removes members from a map's set field: the adds of them the read
    /// whose `context` this is saw (empty: what the coordinator's own read
    /// at R sees).
    pub async fn hsrem(
        &self,
        key: &[u8],
        field: &[u8],
        members: &[&[u8]],
        context: &[u8],
        w: Option<u8>,
    ) -> Result<()> {
        let op = Operation::RemoveFromField {
            field: field.to_vec(),
            members: members.iter().map(|m| m.to_vec()).collect(),
        };
        applied(self.apply(key, op, context, w).await?)
    }

    /// Removes fields from a map: what the read whose `context` this is
    /// saw of them (empty: what the coordinator's own read at R sees).
    pub async fn hdel(
        &self,
        key: &[u8],
        fields: &[&[u8]],
        context: &[u8],
        w: Option<u8>,
    ) -> Result<()> {
        let op = Operation::DeleteFields(fields.iter().map(|f| f.to_vec()).collect());
        applied(self.apply(key, op, context, w).await?)
    }

    /// A map's fields, sorted by name, and the context an hdel sends back.
    pub async fn hgetall(&self, key: &[u8], r: Option<u8>) -> Result<(Vec<MapField>, Vec<u8>)> {
        match self.fetch(key, r).await? {
            TypedResult {
                reading: Reading::Map(fields),
                context,
            } => Ok((fields, context)),
            TypedResult { reading, .. } => Err(Error::InvalidRequest(format!(
                "the key holds a {reading:?}, not a map"
            ))),
        }
    }

    async fn apply(
        &self,
        key: &[u8],
        operation: Operation,
        context: &[u8],
        w: Option<u8>,
    ) -> Result<ClientReply> {
        let op = KeyOp::Apply(Apply {
            key: self.stored(key)?,
            operation,
            context: context.to_vec(),
            w,
        });
        self.shared.call_key(op).await
    }
}

/// A set or map operation's answer: written, nothing to show.
fn applied(reply: ClientReply) -> Result<()> {
    match reply {
        ClientReply::Written { .. } => Ok(()),
        other => Err(unexpected(other)),
    }
}

//! The hints a replica keeps for owners that were down: recorded with the
//! write, listed for delivery, cleared once the owner holds the write.

use std::collections::BTreeMap;

use super::Replica;
use crate::error::Result;
use crate::node::NodeId;
use crate::partition::Partition;
use crate::store::Store;
use crate::version::SiblingSet;

impl<S: Store> Replica<S> {
    /// Whether this replica keeps a hint for `key`, for any owner.
    pub fn is_hinted(&self, key: &[u8]) -> Result<bool> {
        self.hints.is_hinted_for_anyone(key)
    }

    pub(super) fn record_hint(&mut self, key: &[u8], hint_for: Option<&NodeId>) -> Result<()> {
        match hint_for {
            Some(owner) => self.hints.record(owner, key),
            None => Ok(()),
        }
    }

    /// Hints held, per owner.
    pub fn hints_pending(&self) -> &BTreeMap<NodeId, u64> {
        self.hints.pending()
    }

    /// Up to `limit` keys hinted for `owner`, with their current local state.
    pub fn hinted(&self, owner: &NodeId, limit: usize) -> Result<Vec<(Vec<u8>, SiblingSet)>> {
        self.hints
            .batch(owner, limit)?
            .into_iter()
            .map(|key| {
                let state = self.read(&key)?;
                Ok((key, state))
            })
            .collect()
    }

    /// `owner` has departed: clears up to `limit` of its hints that have
    /// nothing left to hand over (`hints::moot`), given the partitions this
    /// replica still `replicates`. Keeps every local copy: a stray one goes
    /// when its partition is released. Returns how many hints went.
    pub fn forget_moot_hints(
        &mut self,
        owner: &NodeId,
        limit: usize,
        q: u32,
        replicates: &[Partition],
    ) -> Result<usize> {
        let batch = self.hinted(owner, limit)?;
        let moot = crate::hints::moot(batch, |k| replicates.contains(&Partition::of_key(k, q)));
        self.handed_off(owner, &moot)
    }

    /// `owner` merged `delivered` durably: clear each hint whose key is
    /// unchanged since (a key written meanwhile keeps its hint for the next
    /// batch). The local copy stays, even of a key this replica does not
    /// replicate: the owner may have held the write already, so this copy
    /// can be one of the acknowledged ones, and the owner the only other.
    /// A copy beyond this replica's partitions goes when handoff releases
    /// it, once every replica of the key has it.
    pub fn handed_off(
        &mut self,
        owner: &NodeId,
        delivered: &[(Vec<u8>, SiblingSet)],
    ) -> Result<usize> {
        let mut cleared = 0;
        for (key, state) in delivered {
            if self.read(key)? != *state {
                continue;
            }
            self.hints.clear(owner, key)?;
            cleared += 1;
        }
        Ok(cleared)
    }
}

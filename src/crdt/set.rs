//! The add-wins set: each member under the dots of the adds that keep it
//! (an observed-remove set, as Riak's ORSWOT), so an add concurrent with
//! a remove survives it and a removed add never comes back.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::CausalContext;
use super::kernel::{Kernel, Keyed};
use crate::error::Result;
use crate::version::{Actor, Dot};

impl Keyed for ByteBuf {
    fn key(&self) -> &[u8] {
        self
    }
}

/// An add-wins set of byte strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Set {
    kernel: Kernel<ByteBuf>,
}

impl Set {
    /// The members, sorted, each once.
    pub fn members(&self) -> impl Iterator<Item = &[u8]> {
        self.kernel.keys()
    }

    pub fn len(&self) -> usize {
        self.kernel.key_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, member: &[u8]) -> bool {
        self.kernel.has_key(member)
    }

    /// The dots under which `member` is present here: what a remove that
    /// observed this state takes away.
    pub fn dots_of(&self, member: &[u8]) -> Vec<Dot> {
        self.kernel.dots_of(member)
    }

    /// Adds `member` as writer `actor` (its earlier dots here go: the new
    /// one covers them); returns the delta.
    pub fn add(&mut self, actor: Actor, member: &[u8]) -> Set {
        let old = self.dots_of(member);
        let mut delta = self.kernel.remove_dots(&old);
        delta.join(&self.kernel.add(actor, ByteBuf::from(member)));
        Set { kernel: delta }
    }

    /// Removes the dots of `member` that `observed` names (those a reader
    /// saw): an add this replica has and the reader did not see survives.
    /// Returns the delta.
    pub fn remove(&mut self, member: &[u8], observed: &[Dot]) -> Set {
        let present = self.dots_of(member);
        let dots: Vec<Dot> = observed
            .iter()
            .filter(|d| present.contains(d))
            .copied()
            .collect();
        Set {
            kernel: self.kernel.remove_dots(&dots),
        }
    }

    /// Removes the dots of `member` that `seen` (a reader's context)
    /// contains: what that reader observed. Returns the delta.
    pub fn remove_seen(&mut self, member: &[u8], seen: &CausalContext) -> Set {
        Set {
            kernel: self.kernel.remove_seen(member, seen),
        }
    }

    /// Every member with the dot it is present under (a member added by
    /// concurrent writers is present under each of their dots).
    pub fn entries(&self) -> impl Iterator<Item = (Dot, &[u8])> {
        self.kernel.entries().map(|(d, m)| (d, m.as_slice()))
    }

    /// Every dot seen: what a reader of this state has observed.
    pub fn context(&self) -> &CausalContext {
        self.kernel.context()
    }

    /// The digest of its entries (`Kernel::digest`).
    pub fn digest(&self) -> u128 {
        self.kernel.digest()
    }

    pub fn join(&mut self, other: &Set) {
        self.kernel.join(&other.kernel);
    }

    pub(super) fn validate(&self) -> Result<()> {
        self.kernel.validate()
    }

    /// Bytes of members held.
    pub(super) fn value_bytes(&self) -> usize {
        self.kernel.entries().map(|(_, m)| m.len()).sum()
    }

    #[cfg(test)]
    pub(super) fn insert(&mut self, dot: Dot, member: &[u8]) {
        self.kernel.insert(dot, ByteBuf::from(member));
    }
}

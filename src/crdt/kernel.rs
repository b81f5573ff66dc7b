//! The dot kernel the set and the map share: values under the dots of the
//! operations that keep them, the context of every dot seen, and an index
//! from each value's key (a set's member, a map's field) to its dots.
//!
//! A dot the other side has seen and no longer holds was removed there,
//! and goes; a dot this side has seen and no longer holds is not taken
//! back. The index is derived, neither stored nor sent: a key's dots are
//! found without a scan, and a delta joins into a kernel of any size in
//! time proportional to the delta.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::CausalContext;
use crate::error::{Error, Result};
use crate::version::{Actor, Dot};

/// A value held under a dot, filed under its key.
pub trait Keyed: Clone + PartialEq + Serialize + DeserializeOwned {
    fn key(&self) -> &[u8];
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel<V> {
    entries: BTreeMap<Dot, V>,
    context: CausalContext,
    index: BTreeMap<Vec<u8>, BTreeSet<Dot>>,
    /// The sum of the entries' hashes (`entry_hash`), kept per insert and
    /// removal: what a large state's item hash is made of, so a write
    /// hashes its change and not the whole state (`Typed::digest`).
    digest: u128,
}

/// One entry's share of a kernel's digest.
fn entry_hash<V: Serialize>(dot: Dot, value: &V) -> u128 {
    let bytes = postcard::to_stdvec(&(dot, value)).expect("encoding to a Vec cannot fail");
    xxhash_rust::xxh3::xxh3_128(&bytes)
}

impl<V> Default for Kernel<V> {
    fn default() -> Self {
        Kernel {
            entries: BTreeMap::new(),
            context: CausalContext::default(),
            index: BTreeMap::new(),
            digest: 0,
        }
    }
}

/// A kernel as stored and sent: its entries and context.
#[derive(Serialize, Deserialize)]
struct State<E, C> {
    entries: E,
    context: C,
}

impl<V: Keyed> Serialize for Kernel<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        State {
            entries: &self.entries,
            context: &self.context,
        }
        .serialize(s)
    }
}

impl<'de, V: Keyed> Deserialize<'de> for Kernel<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let state = State::<BTreeMap<Dot, V>, CausalContext>::deserialize(d)?;
        let mut kernel = Kernel {
            context: state.context,
            ..Kernel::default()
        };
        for (dot, value) in state.entries {
            kernel.insert(dot, value);
        }
        Ok(kernel)
    }
}

impl<V: Keyed> Kernel<V> {
    /// The keys held, sorted, each once.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.index.keys().map(Vec::as_slice)
    }

    pub fn key_count(&self) -> usize {
        self.index.len()
    }

    pub fn has_key(&self, key: &[u8]) -> bool {
        self.index.contains_key(key)
    }

    /// The dots `key` is held under.
    pub fn dots_of(&self, key: &[u8]) -> Vec<Dot> {
        self.index
            .get(key)
            .map(|dots| dots.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The values held under `key`, with their dots.
    pub fn values_of<'a>(&'a self, key: &[u8]) -> impl Iterator<Item = (Dot, &'a V)> + 'a {
        self.index
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|dot| Some((*dot, self.entries.get(dot)?)))
    }

    pub fn entries(&self) -> impl Iterator<Item = (Dot, &V)> {
        self.entries.iter().map(|(d, v)| (*d, v))
    }

    pub fn context(&self) -> &CausalContext {
        &self.context
    }

    /// The sum of the entries' hashes: equal entries, equal digests.
    pub fn digest(&self) -> u128 {
        self.digest
    }

    pub(super) fn insert(&mut self, dot: Dot, value: V) {
        self.take(dot);
        self.index
            .entry(value.key().to_vec())
            .or_default()
            .insert(dot);
        self.digest = self.digest.wrapping_add(entry_hash(dot, &value));
        self.entries.insert(dot, value);
    }

    /// Takes the entry under `dot` away, if there is one.
    fn take(&mut self, dot: Dot) {
        let Some(value) = self.entries.remove(&dot) else {
            return;
        };
        self.digest = self.digest.wrapping_sub(entry_hash(dot, &value));
        if let Some(dots) = self.index.get_mut(value.key()) {
            dots.remove(&dot);
            if dots.is_empty() {
                self.index.remove(value.key());
            }
        }
    }

    /// Removes the entries of `dots`; returns the delta (their dots, seen,
    /// and no entry).
    pub fn remove_dots(&mut self, dots: &[Dot]) -> Kernel<V> {
        let mut delta = Kernel::default();
        for &dot in dots {
            self.take(dot);
            delta.context.insert(dot);
        }
        delta
    }

    /// Removes the dots of `key` that `seen` (a reader's context) contains:
    /// what that reader observed. Returns the delta.
    pub fn remove_seen(&mut self, key: &[u8], seen: &CausalContext) -> Kernel<V> {
        let observed: Vec<Dot> = self
            .dots_of(key)
            .into_iter()
            .filter(|d| seen.contains(d))
            .collect();
        self.remove_dots(&observed)
    }

    /// Puts `value` under `actor`'s next dot; returns the delta.
    pub fn add(&mut self, actor: Actor, value: V) -> Kernel<V> {
        let dot = self.context.next(actor);
        self.context.insert(dot);
        self.insert(dot, value.clone());
        let mut delta = Kernel::default();
        delta.context.insert(dot);
        delta.insert(dot, value);
        delta
    }

    pub fn join(&mut self, other: &Kernel<V>) {
        // What `other` has seen and no longer holds goes: looked for among
        // the dots of whichever side is smaller (a delta's context is a
        // few dots, so joining one costs the delta, not the whole state).
        let gone = |dot: &Dot| !other.entries.contains_key(dot);
        let taken: Vec<Dot> = if other.context.size() < self.entries.len() as u64 {
            other
                .context
                .dots()
                .filter(|d| self.entries.contains_key(d) && gone(d))
                .collect()
        } else {
            self.entries
                .keys()
                .filter(|d| gone(d) && other.context.contains(d))
                .copied()
                .collect()
        };
        for dot in taken {
            self.take(dot);
        }
        for (dot, value) in &other.entries {
            if !self.entries.contains_key(dot) && !self.context.contains(dot) {
                self.insert(*dot, value.clone());
            }
        }
        self.context.join(&other.context);
    }

    /// Checks a kernel decoded from a peer or disk.
    pub fn validate(&self) -> Result<()> {
        self.context.validate()?;
        match self.entries.keys().find(|d| !self.context.contains(d)) {
            Some(dot) => Err(Error::Malformed(format!(
                "an entry under {dot}, a dot outside its context"
            ))),
            None => Ok(()),
        }
    }
}

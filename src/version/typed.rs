//! What a sibling set holds of a typed namespace's key: its data-type
//! state (`crdt::Typed`), the operations applied to it, and what
//! tombstone collection folds of it.

use std::collections::BTreeSet;

use super::{Actor, SiblingSet};
use crate::crdt::{CausalContext, Counter, Operation, Typed};
use crate::error::Result;

impl SiblingSet {
    /// A state holding only `typed` (a typed key's state, or a delta).
    pub fn of_typed(typed: Typed) -> Self {
        SiblingSet {
            entries: Vec::new(),
            typed: Some(Box::new(typed)),
        }
    }

    /// Whether `actor` wrote anything this state holds or has seen (a
    /// sibling's dot, a data type's entry or dot): a replica that drops
    /// such a copy takes another actor (`Actor::successor`).
    pub fn written_by(&self, actor: Actor) -> bool {
        self.context().get(actor) > 0 || self.typed().is_some_and(|t| t.written_by(actor))
    }

    /// The data-type state, for a key of a typed namespace.
    pub fn typed(&self) -> Option<&Typed> {
        self.typed.as_deref()
    }

    /// A set's or a map's kernel (`Typed::kernel`), if that is all it
    /// holds.
    pub fn kernel(&self) -> Option<(u8, &CausalContext, u128)> {
        match self.entries.is_empty() {
            true => self.typed()?.kernel(),
            false => None,
        }
    }

    /// The counter a counter key holds.
    pub fn counter(&self) -> Option<&Counter> {
        match self.typed() {
            Some(Typed::Counter(c)) => Some(c),
            _ => None,
        }
    }

    /// This state with the entries of writers not in `current` folded: a
    /// counter's (`Counter::fold`) or a map's counter fields'
    /// (`Map::fold`); None if it holds neither, or a map's fold changes
    /// nothing.
    pub fn fold_counter(&self, current: &BTreeSet<Actor>) -> Result<Option<SiblingSet>> {
        let typed = match self.typed() {
            Some(Typed::Counter(counter)) => Typed::Counter(counter.fold(current)?),
            Some(Typed::Map(map)) => match map.fold(current) {
                Some(folded) => Typed::Map(folded),
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        Ok(Some(SiblingSet {
            entries: self.entries.clone(),
            typed: Some(Box::new(typed)),
        }))
    }

    /// Whether a fold keeping the entries of `current` would change this
    /// state (a counter's or a map's counter fields').
    pub fn foldable(&self, current: &BTreeSet<Actor>) -> bool {
        match self.typed() {
            Some(Typed::Counter(c)) => c.foldable(current),
            Some(Typed::Map(m)) => m.foldable(current),
            _ => false,
        }
    }

    /// Every writer a counter's entries, or a map's counter fields', name.
    pub fn count_writers(&self) -> Vec<Actor> {
        match self.typed() {
            Some(Typed::Counter(c)) => c.named().collect(),
            Some(Typed::Map(m)) => m.count_writers().collect(),
            _ => Vec::new(),
        }
    }

    /// Applies a data-type operation to the key's state at `at_ms`
    /// (`Typed::apply`); returns its delta.
    pub fn apply(
        &mut self,
        actor: Actor,
        operation: &Operation,
        seen: &CausalContext,
        at_ms: u64,
    ) -> Result<Typed> {
        let mut typed = self.typed.take().map(|t| *t);
        let delta = Typed::apply(&mut typed, actor, operation, seen, at_ms);
        self.typed = typed.map(Box::new);
        delta
    }
}

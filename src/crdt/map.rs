//! The map: named fields, each a register (`hset`), a counter (`hincr`) or
//! an add-wins set (`hsadd`, `hsrem`),
//! held under the dots of the operations that keep them in the kernel the
//! set uses, so a removal (`hdel`) takes away only what it observed.
//!
//! - A register keeps every value written concurrently (as siblings are
//!   kept), or, in a last-writer-wins namespace, reads as the one with the
//!   latest clock of its minting replica (ties: the higher dot). A write replaces the
//!   values it observed.
//! - A counter keeps one running total per writer, under that writer's
//!   latest dot; its value is the sum. A removal concurrent with an
//!   increment keeps that writer's whole total (the increment wins, as in
//!   Riak's maps).
//! - A set holds each member under the dots of the adds that keep it, as
//!   `Set` does: a removal takes only the adds it observed.
//! - A write of one type replaces the field's observed values of the other
//!   types; concurrent writes of several types keep each, and the field
//!   reads as its registers, else its members, else its count.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::CausalContext;
use super::kernel::{Kernel, Keyed};
use crate::error::{Error, Result};
use crate::version::{Actor, Dot};

/// One field's value under one dot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    name: ByteBuf,
    value: FieldValue,
}

/// Variants are only ever appended (they are stored and sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldValue {
    /// A register's value, and its minting replica's wall clock (ms since
    /// the Unix epoch) for last-writer-wins.
    Register { value: ByteBuf, at_ms: u64 },
    /// One writer's running total of a counter field.
    Count(i64),
    /// One member of a set field (protocol 6: never sent to a node of 5,
    /// which could not read it).
    Member(#[serde(serialize_with = "crate::protocol::refused_before_6")] ByteBuf),
    /// The running totals of retired writers of a counter field, folded
    /// into one under a dot of `FOLDS` (`Map::fold`), and the dots of the
    /// entries it replaced: a removal that observed all of those takes it
    /// too (protocol 9).
    Folded {
        #[serde(serialize_with = "crate::protocol::refused_before_9")]
        total: i64,
        from: Vec<Dot>,
    },
}

impl FieldValue {
    /// A counter's running total: an entry's or a fold's.
    fn total(&self) -> Option<i64> {
        match self {
            FieldValue::Count(t) | FieldValue::Folded { total: t, .. } => Some(*t),
            FieldValue::Register { .. } | FieldValue::Member(_) => None,
        }
    }
}

/// The writer of folds' entries (`Map::fold`): no node writes as it (a
/// node's writer is a hash), so its dots are minted only by folds, which
/// every member makes alike from the same copy.
pub const FOLDS: Actor = Actor(0);

impl Keyed for Field {
    fn key(&self) -> &[u8] {
        &self.name
    }
}

/// What a read shows of one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapField {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub value: FieldReading,
}

/// Variants are only ever appended (they are sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldReading {
    /// A register's values: one, or the concurrent ones, oldest first (by
    /// their minting replicas' clocks, then by dot).
    Values(#[serde(with = "crate::wire::byte_lists")] Vec<Vec<u8>>),
    /// A counter's value (saturated to the range of an i64).
    Count(i64),
    /// A set's members, sorted, each once.
    Members(#[serde(with = "crate::wire::byte_lists")] Vec<Vec<u8>>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Map {
    kernel: Kernel<Field>,
}

impl Map {
    /// Writes `value` to the register `name` as writer `actor` at `at_ms`,
    /// replacing what this replica holds of the field; returns the delta.
    pub fn set(&mut self, actor: Actor, name: &[u8], value: &[u8], at_ms: u64) -> Map {
        let old = self.kernel.dots_of(name);
        let mut delta = self.kernel.remove_dots(&old);
        let field = Field {
            name: ByteBuf::from(name),
            value: FieldValue::Register {
                value: ByteBuf::from(value),
                at_ms,
            },
        };
        delta.join(&self.kernel.add(actor, field));
        Map { kernel: delta }
    }

    /// Adds `by` to the counter `name` as writer `actor`: its running total
    /// (under its latest dot held here) moves to a new dot, and the field's
    /// registers held here go. Returns the delta; refused if the total
    /// would leave the range of an i64.
    pub fn increment(&mut self, actor: Actor, name: &[u8], by: i64) -> Result<Map> {
        let own = self.totals(name).get(&actor).copied().unwrap_or(0);
        let replaced: Vec<Dot> = self
            .kernel
            .values_of(name)
            .filter(|(dot, field)| dot.actor == actor || field.value.total().is_none())
            .map(|(dot, _)| dot)
            .collect();
        let total = own.checked_add(by).ok_or_else(|| {
            Error::InvalidRequest(format!("incrementing by {by} overflows the counter"))
        })?;
        let mut delta = self.kernel.remove_dots(&replaced);
        let field = Field {
            name: ByteBuf::from(name),
            value: FieldValue::Count(total),
        };
        delta.join(&self.kernel.add(actor, field));
        Ok(Map { kernel: delta })
    }

    /// Adds `members` to the set `name` as writer `actor`: each gets a new
    /// dot replacing its adds held here, and the field's registers and
    /// counts held here go. Returns the delta.
    pub fn add_members(&mut self, actor: Actor, name: &[u8], members: &[Vec<u8>]) -> Map {
        let replaced: Vec<Dot> = self
            .kernel
            .values_of(name)
            .filter(|(_, field)| match &field.value {
                FieldValue::Member(m) => members.iter().any(|x| x == m.as_slice()),
                FieldValue::Register { .. } | FieldValue::Count(_) | FieldValue::Folded { .. } => {
                    true
                }
            })
            .map(|(dot, _)| dot)
            .collect();
        let mut delta = self.kernel.remove_dots(&replaced);
        for member in members {
            let field = Field {
                name: ByteBuf::from(name),
                value: FieldValue::Member(ByteBuf::from(member.as_slice())),
            };
            delta.join(&self.kernel.add(actor, field));
        }
        Map { kernel: delta }
    }

    /// Removes from the set `name` the adds of `members` that `seen` (a
    /// reader's context) observed. Returns the delta.
    pub fn remove_members_seen(
        &mut self,
        name: &[u8],
        members: &[Vec<u8>],
        seen: &CausalContext,
    ) -> Map {
        let observed: Vec<Dot> = self
            .kernel
            .values_of(name)
            .filter(|(dot, field)| {
                seen.contains(dot)
                    && matches!(&field.value, FieldValue::Member(m) if members.iter().any(|x| x == m.as_slice()))
            })
            .map(|(dot, _)| dot)
            .collect();
        Map {
            kernel: self.kernel.remove_dots(&observed),
        }
    }

    /// Removes what `seen` (a reader's context) observed of field `name`:
    /// its entries under dots `seen` holds, and a fold whose replaced
    /// entries it all observed (the reader saw, before the fold, what the
    /// fold holds). The delta names a fold's replaced dots too, so a
    /// replica that has not folded drops them.
    pub fn remove_seen(&mut self, name: &[u8], seen: &CausalContext) -> Map {
        let mut observed = Vec::new();
        for (dot, field) in self.kernel.values_of(name) {
            match &field.value {
                _ if seen.contains(&dot) => observed.push(dot),
                FieldValue::Folded { from, .. } if from.iter().all(|d| seen.contains(d)) => {
                    observed.push(dot);
                    observed.extend(from.iter().copied());
                }
                _ => {}
            }
        }
        Map {
            kernel: self.kernel.remove_dots(&observed),
        }
    }

    /// Whether a fold keeping the counter entries of the writers in
    /// `current` would change this map: a counter field holds an entry of
    /// another writer, or more than one fold.
    pub fn foldable(&self, current: &BTreeSet<Actor>) -> bool {
        self.kernel
            .keys()
            .any(|name| self.to_fold(name, current).is_some())
    }

    /// The dots of field `name`'s counter entries a fold would replace,
    /// if it would change the field.
    fn to_fold(&self, name: &[u8], current: &BTreeSet<Actor>) -> Option<Vec<Dot>> {
        let retired: Vec<Dot> = self
            .kernel
            .values_of(name)
            .filter(|(dot, field)| field.value.total().is_some() && !current.contains(&dot.actor))
            .map(|(dot, _)| dot)
            .collect();
        let changes = retired.len() > 1 || retired.iter().any(|d| d.actor != FOLDS);
        changes.then_some(retired)
    }

    /// The writers of counter entries this map holds (folds' aside).
    pub fn count_writers(&self) -> impl Iterator<Item = Actor> + '_ {
        self.kernel
            .entries()
            .filter(|(dot, field)| field.value.total().is_some() && dot.actor != FOLDS)
            .map(|(dot, _)| dot.actor)
    }

    /// This map with each counter field's entries of writers not in
    /// `current` (no member writes as them any more) and its earlier fold
    /// replaced by one entry under a new dot of `FOLDS` holding their
    /// totals' sum; None if that changes nothing. Every member folding the
    /// same copy makes the same map. A copy that missed the fold has seen
    /// none of the new dot and all of the replaced ones, so joining it
    /// takes them away and counts nothing twice. A field whose sum would
    /// leave the range of an i64 is left as it is.
    pub fn fold(&self, current: &BTreeSet<Actor>) -> Option<Map> {
        let mut next = self.clone();
        let mut changed = false;
        for name in self.kernel.keys() {
            let Some(from) = self.to_fold(name, current) else {
                continue;
            };
            let sum = self
                .totals(name)
                .into_iter()
                .filter(|(actor, _)| !current.contains(actor))
                .try_fold(0i64, |sum, (_, t)| sum.checked_add(t));
            let Some(total) = sum else {
                continue;
            };
            next.kernel.remove_dots(&from);
            let field = Field {
                name: ByteBuf::from(name),
                value: FieldValue::Folded { total, from },
            };
            next.kernel.add(FOLDS, field);
            changed = true;
        }
        changed.then_some(next)
    }

    /// Every field as a read shows it; `lww`: a register reads as its
    /// latest value only.
    pub fn fields(&self, lww: bool) -> Vec<MapField> {
        self.kernel
            .keys()
            .map(|name| {
                let mut values: Vec<(u64, Dot, &[u8])> = Vec::new();
                let mut members: Vec<&[u8]> = Vec::new();
                for (dot, field) in self.kernel.values_of(name) {
                    match &field.value {
                        FieldValue::Register { value, at_ms } => values.push((*at_ms, dot, value)),
                        FieldValue::Member(m) => members.push(m),
                        FieldValue::Count(_) | FieldValue::Folded { .. } => {}
                    }
                }
                let count: i128 = self.totals(name).values().map(|&t| i128::from(t)).sum();
                let value = if !values.is_empty() {
                    values.sort();
                    if lww {
                        values.drain(..values.len() - 1);
                    }
                    FieldReading::Values(values.into_iter().map(|(_, _, v)| v.to_vec()).collect())
                } else if !members.is_empty() {
                    members.sort();
                    members.dedup();
                    FieldReading::Members(members.into_iter().map(<[u8]>::to_vec).collect())
                } else {
                    let saturated = if count < 0 { i64::MIN } else { i64::MAX };
                    FieldReading::Count(i64::try_from(count).unwrap_or(saturated))
                };
                MapField {
                    name: name.to_vec(),
                    value,
                }
            })
            .collect()
    }

    pub fn context(&self) -> &CausalContext {
        self.kernel.context()
    }

    /// The members of the set field `name`, each with a dot it is held
    /// under (a member added by concurrent writers is held under each).
    pub fn members_of<'a>(&'a self, name: &[u8]) -> impl Iterator<Item = (Dot, &'a [u8])> + 'a {
        self.kernel
            .values_of(name)
            .filter_map(|(dot, field)| match &field.value {
                FieldValue::Member(m) => Some((dot, m.as_slice())),
                _ => None,
            })
    }

    /// Each writer's running total of the counter `name`: the one under
    /// its latest dot held here. Every increment mints its total from the
    /// writer's own latest, so an earlier dot of the writer still held
    /// here (a replica that missed the delta that replaced it, and then
    /// the writer's copy lost, so nothing tells it the dot is gone) is
    /// part of that total, not beside it.
    fn totals(&self, name: &[u8]) -> BTreeMap<Actor, i64> {
        let mut latest: BTreeMap<Actor, (u64, i64)> = BTreeMap::new();
        for (dot, field) in self.kernel.values_of(name) {
            if let Some(total) = field.value.total() {
                let at = latest.entry(dot.actor).or_insert((dot.counter, total));
                if dot.counter >= at.0 {
                    *at = (dot.counter, total);
                }
            }
        }
        latest.into_iter().map(|(a, (_, t))| (a, t)).collect()
    }

    /// The digest of its entries (`Kernel::digest`).
    pub fn digest(&self) -> u128 {
        self.kernel.digest()
    }

    pub fn join(&mut self, other: &Map) {
        self.kernel.join(&other.kernel);
    }

    pub(super) fn validate(&self) -> Result<()> {
        self.kernel.validate()
    }

    /// Bytes of field names and values held.
    pub(super) fn value_bytes(&self) -> usize {
        self.kernel
            .entries()
            .map(|(_, f)| {
                f.name.len()
                    + match &f.value {
                        FieldValue::Register { value, .. } => value.len(),
                        FieldValue::Count(_) => 8,
                        FieldValue::Member(m) => m.len(),
                        FieldValue::Folded { from, .. } => 8 + 16 * from.len(),
                    }
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(m: &Map, lww: bool) -> Vec<(String, FieldReading)> {
        m.fields(lww)
            .into_iter()
            .map(|f| (String::from_utf8(f.name).unwrap(), f.value))
            .collect()
    }

    fn text(v: &[&str]) -> FieldReading {
        FieldReading::Values(v.iter().map(|s| s.as_bytes().to_vec()).collect())
    }

    #[test]
    fn concurrent_writes_of_a_register_are_kept_or_the_latest_wins() {
        let (a, b) = (Actor(1), Actor(2));
        let mut x = Map::default();
        let mut y = Map::default();
        let dx = x.set(a, b"name", b"ann", 10);
        let dy = y.set(b, b"name", b"bob", 20);
        x.join(&dy);
        y.join(&dx);
        assert_eq!(x, y);
        assert_eq!(values(&x, false), [("name".into(), text(&["ann", "bob"]))]);
        assert_eq!(values(&x, true), [("name".into(), text(&["bob"]))]);
        // A write that saw both replaces both.
        let d = x.set(a, b"name", b"cy", 5);
        y.join(&d);
        assert_eq!(values(&y, false), [("name".into(), text(&["cy"]))]);
    }

    #[test]
    fn a_replica_that_missed_a_writers_increment_counts_its_latest_total_only() {
        // The simulator found this (restore scenario, seed 558): a replica
        // missed the delta of a writer's second increment, so the third's
        // delta (whose context names only the dot it replaced) left the
        // first's dot beside it; the writer's own copy, which knew better,
        // was then lost. Its latest total already holds the first.
        let a = Actor(1);
        let mut writer = Map::default();
        let d1 = writer.increment(a, b"n", -2).unwrap();
        let _missed = writer.increment(a, b"n", 3).unwrap();
        let d3 = writer.increment(a, b"n", -2).unwrap();
        let mut replica = Map::default();
        replica.join(&d1);
        replica.join(&d3);
        assert_eq!(
            values(&replica, false),
            [("n".into(), FieldReading::Count(-1))]
        );
        // Minting from such a copy builds on that total and replaces both.
        let d4 = replica.increment(a, b"n", 5).unwrap();
        let mut other = Map::default();
        other.join(&d1);
        other.join(&d4);
        assert_eq!(
            values(&other, false),
            [("n".into(), FieldReading::Count(4))]
        );
    }

    fn members(v: &[&str]) -> FieldReading {
        FieldReading::Members(v.iter().map(|s| s.as_bytes().to_vec()).collect())
    }

    #[test]
    fn set_fields_are_add_wins_and_a_removal_takes_what_it_saw() {
        let (a, b) = (Actor(1), Actor(2));
        let mut x = Map::default();
        let mut y = Map::default();
        let added = x.add_members(a, b"tags", &[b"red".to_vec(), b"blue".to_vec()]);
        y.join(&added);
        // y adds red again; x, already holding that add, removes red with
        // the context of a read from before it: only the add it saw goes.
        let seen = x.context().clone();
        let again = y.add_members(b, b"tags", &[b"red".to_vec()]);
        x.join(&again);
        let removed = x.remove_members_seen(b"tags", &[b"red".to_vec()], &seen);
        y.join(&removed);
        assert_eq!(x, y);
        assert_eq!(
            values(&x, false),
            [("tags".into(), members(&["blue", "red"]))]
        );
        // A removal that saw every add takes the member for good.
        let seen = y.context().clone();
        let gone = y.remove_members_seen(b"tags", &[b"red".to_vec()], &seen);
        x.join(&gone);
        x.join(&again);
        assert_eq!(values(&x, false), [("tags".into(), members(&["blue"]))]);
        // A register write replaces the members it saw; hdel the rest.
        x.set(a, b"tags", b"none", 0);
        assert_eq!(values(&x, false), [("tags".into(), text(&["none"]))]);
        x.add_members(a, b"tags", &[b"green".to_vec()]);
        assert_eq!(values(&x, false), [("tags".into(), members(&["green"]))]);
        let seen = x.context().clone();
        x.remove_seen(b"tags", &seen);
        assert!(values(&x, false).is_empty());
    }

    #[test]
    fn a_set_field_is_never_sent_to_a_node_of_protocol_5() {
        let mut m = Map::default();
        m.increment(Actor(1), b"n", 1).unwrap();
        assert!(crate::protocol::at(5, || postcard::to_stdvec(&m)).is_ok());
        m.add_members(Actor(1), b"tags", &[b"x".to_vec()]);
        assert!(crate::protocol::at(5, || postcard::to_stdvec(&m)).is_err());
        let bytes = postcard::to_stdvec(&m).unwrap();
        assert_eq!(postcard::from_bytes::<Map>(&bytes).unwrap(), m);
    }

    #[test]
    fn counter_fields_sum_their_writers_and_a_removal_takes_what_it_saw() {
        let (a, b) = (Actor(1), Actor(2));
        let mut x = Map::default();
        let mut y = Map::default();
        let d1 = x.increment(a, b"visits", 3).unwrap();
        let d2 = x.increment(a, b"visits", 2).unwrap();
        let d3 = y.increment(b, b"visits", 10).unwrap();
        y.join(&d2);
        y.join(&d1);
        x.join(&d3);
        assert_eq!(x, y);
        assert_eq!(
            values(&x, false),
            [("visits".into(), FieldReading::Count(15))]
        );
        // x removes what it saw while y increments again: y's whole total
        // survives, a's is gone.
        let seen = x.context().clone();
        let gone = x.remove_seen(b"visits", &seen);
        let more = y.increment(b, b"visits", 1).unwrap();
        x.join(&more);
        y.join(&gone);
        assert_eq!(x, y);
        assert_eq!(
            values(&x, false),
            [("visits".into(), FieldReading::Count(11))]
        );
        let e = x.increment(b, b"visits", i64::MAX).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        // A register write replaces the counter it saw.
        x.set(a, b"visits", b"many", 0);
        assert_eq!(values(&x, false), [("visits".into(), text(&["many"]))]);
    }

    fn count(m: &Map, name: &[u8]) -> i64 {
        match m.fields(false).into_iter().find(|f| f.name == name) {
            Some(MapField {
                value: FieldReading::Count(n),
                ..
            }) => n,
            other => panic!("no count: {other:?}"),
        }
    }

    #[test]
    fn a_fold_keeps_each_counter_fields_value_and_a_copy_it_missed_is_not_counted_twice() {
        // Writers 1 to 3 are retired (their nodes restarted as others), 9
        // is current.
        let current: BTreeSet<Actor> = [Actor(9)].into();
        let mut m = Map::default();
        for (w, by) in [(1, 5), (2, -2), (3, 10), (1, 1)] {
            m.increment(Actor(w), b"visits", by).unwrap();
        }
        m.increment(Actor(9), b"visits", 100).unwrap();
        m.increment(Actor(2), b"likes", 4).unwrap();
        m.set(Actor(2), b"name", b"ann", 0);
        let stale = m.clone();
        assert!(m.foldable(&current));
        let folded = m.fold(&current).unwrap();
        assert_eq!(
            m.fold(&current),
            Some(folded.clone()),
            "every member folds alike"
        );
        assert_eq!(
            (count(&folded, b"visits"), count(&folded, b"likes")),
            (114, 4)
        );
        assert_eq!(
            values(&folded, false)[1],
            values(&m, false)[1],
            "a register stays"
        );
        // One entry per field for the retired, the current writer's apart.
        let counts = |m: &Map| {
            m.kernel
                .entries()
                .filter(|(_, f)| f.value.total().is_some())
                .count()
        };
        assert_eq!((counts(&m), counts(&folded)), (5, 3));
        assert!(
            !folded.foldable(&current),
            "a fold alone is not folded again"
        );
        assert_eq!(folded.count_writers().collect::<Vec<_>>(), [Actor(9)]);
        // A copy that missed the fold, joined either way.
        for (mut a, b) in [
            (stale.clone(), folded.clone()),
            (folded.clone(), stale.clone()),
        ] {
            a.join(&b);
            assert_eq!(count(&a, b"visits"), 114);
            assert_eq!(a, folded);
        }
        // The current writer increments on; a later fold retires it and
        // takes the first fold with it.
        let mut later = folded.clone();
        let d = later.increment(Actor(9), b"visits", 1).unwrap();
        let refolded = later.fold(&BTreeSet::new()).unwrap();
        assert_eq!((count(&refolded, b"visits"), counts(&refolded)), (115, 2));
        let mut behind = folded.clone();
        behind.join(&d);
        behind.join(&refolded);
        assert_eq!(behind, refolded);
        let mut stale_too = stale;
        stale_too.join(&refolded);
        assert_eq!(stale_too, refolded, "a copy kept away over two folds");
    }

    #[test]
    fn a_removal_that_saw_what_a_fold_took_takes_the_fold_too() {
        let current: BTreeSet<Actor> = [Actor(9)].into();
        let mut m = Map::default();
        m.increment(Actor(1), b"visits", 5).unwrap();
        m.increment(Actor(2), b"visits", 7).unwrap();
        // A reader saw both entries, and deletes the field after the fold.
        let seen = m.context().clone();
        let unfolded = m.clone();
        let mut folded = m.fold(&current).unwrap();
        let gone = folded.remove_seen(b"visits", &seen);
        assert!(folded.fields(false).is_empty(), "no field comes back");
        let mut other = unfolded.clone();
        other.join(&gone);
        assert!(
            other.fields(false).is_empty(),
            "a replica that has not folded drops it too"
        );
        other.join(&folded);
        assert_eq!(other, folded);
        // A reader that saw only one of them leaves the fold alone: the
        // fold holds an increment it never observed.
        let mut partial = Map::default();
        partial.join(&unfolded);
        let mut half = CausalContext::default();
        half.insert(unfolded.kernel.dots_of(b"visits")[0]);
        let mut refolded = unfolded.fold(&current).unwrap();
        refolded.remove_seen(b"visits", &half);
        assert_eq!(count(&refolded, b"visits"), 12);
    }

    #[test]
    fn a_fold_is_never_sent_to_a_node_of_protocol_8() {
        let mut m = Map::default();
        m.increment(Actor(1), b"visits", 5).unwrap();
        let folded = m.fold(&BTreeSet::new()).unwrap();
        let at = |v| crate::protocol::at(v, || postcard::to_stdvec(&folded));
        assert!(at(8).is_err());
        let bytes = at(9).unwrap();
        assert_eq!(postcard::from_bytes::<Map>(&bytes).unwrap(), folded);
        assert!(crate::protocol::at(8, || postcard::to_stdvec(&m)).is_ok());
    }
}

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

use std::collections::BTreeMap;

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
}

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
            .filter(|(dot, field)| {
                dot.actor == actor || !matches!(field.value, FieldValue::Count(_))
            })
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
                FieldValue::Register { .. } | FieldValue::Count(_) => true,
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

    /// Removes what `seen` (a reader's context) observed of field `name`.
    pub fn remove_seen(&mut self, name: &[u8], seen: &CausalContext) -> Map {
        Map {
            kernel: self.kernel.remove_seen(name, seen),
        }
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
                        FieldValue::Count(_) => {}
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
            if let FieldValue::Count(total) = field.value {
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
}

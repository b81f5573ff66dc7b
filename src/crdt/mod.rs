//! Convergent data types: counters, add-wins sets and maps whose replicas merge
//! by a join, so a read never returns siblings and no application writes a
//! merge function (Riak's data types; Almeida, Shoker and Baquero's
//! delta-state CRDTs).
//!
//! Each type is a join-semilattice: `join` is commutative, associative and
//! idempotent, so replicas converge whatever order, duplication or path
//! (read repair, hints, anti-entropy, handoff) their states take. An
//! operation is applied once, at the replica that mints it (as a put is
//! today), and returns a *delta*: a small state that joined into any
//! replica has the operation's effect. Deltas are what travel, so an add
//! to a set of 100,000 members costs the member and a dot on the wire, not
//! the set.
//!
//! - `Counter`: per writer, the sum of its increments and of its
//!   decrements, each only ever growing; the value is their difference,
//!   exact (every increment that took effect counts once).
//! - `Set`: add-wins (an observed-remove set with dots per element, as an
//!   ORSWOT): an add mints a dot for the member; a remove takes away only
//!   the dots it observed, so an add concurrent with a remove survives it.
//!   A `CausalContext` records every dot ever seen, so a removed dot never
//!   comes back from a replica that still held it.
//! - `Map`: named register, counter and set fields in the same dot kernel as
//!   the set (`map.rs`).
//!
//! A key of a typed namespace holds one `Typed` state (beside the DVV
//! siblings of `version::SiblingSet`, which such a key never has); a
//! client sends an `Operation`, which the minting replica applies with
//! `Typed::apply`, and reads a `Reading`, never siblings.
//!
//! A counter's entries of writers no member writes as any more are folded
//! by tombstone collection (`Counter::fold`), so a counter does not grow
//! an entry per restart of every node that writes it.

mod context;
mod counter;
mod kernel;
mod map;
mod set;

use serde::{Deserialize, Serialize};

pub use context::CausalContext;
pub use counter::Counter;
pub use map::{FieldReading, Map, MapField};
pub use set::Set;

use crate::error::{Error, Result};
use crate::version::Actor;

/// What a client asks of a key in a typed namespace. Variants are only
/// ever appended (they are sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// Add to a counter (negative: subtract).
    Increment(i64),
    /// Add members to a set.
    Add(#[serde(with = "crate::wire::byte_lists")] Vec<Vec<u8>>),
    /// Remove members from a set: the adds of them the request's context
    /// saw (see `Typed::apply`).
    Remove(#[serde(with = "crate::wire::byte_lists")] Vec<Vec<u8>>),
    /// Write a map's register field.
    SetField {
        #[serde(with = "serde_bytes")]
        field: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Add to a map's counter field (negative: subtract).
    IncrementField {
        #[serde(with = "serde_bytes")]
        field: Vec<u8>,
        by: i64,
    },
    /// Remove fields from a map: what the request's context saw of them.
    DeleteFields(#[serde(with = "crate::wire::byte_lists")] Vec<Vec<u8>>),
    /// Add members to a map's set field (protocol 6).
    AddToField {
        #[serde(with = "serde_bytes")]
        field: Vec<u8>,
        #[serde(with = "crate::wire::byte_lists")]
        members: Vec<Vec<u8>>,
    },
    /// Remove members from a map's set field: the adds of them the
    /// request's context saw (protocol 6).
    RemoveFromField {
        #[serde(with = "serde_bytes")]
        field: Vec<u8>,
        #[serde(with = "crate::wire::byte_lists")]
        members: Vec<Vec<u8>>,
    },
}

impl Operation {
    /// "incr", "sadd", "srem", "hset", "hincr" or "hdel", for metrics and
    /// logs.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Increment(_) => "incr",
            Operation::Add(_) => "sadd",
            Operation::Remove(_) => "srem",
            Operation::SetField { .. } => "hset",
            Operation::IncrementField { .. } => "hincr",
            Operation::DeleteFields(_) => "hdel",
            Operation::AddToField { .. } => "hsadd",
            Operation::RemoveFromField { .. } => "hsrem",
        }
    }

    /// Refuses an operation that names no member or field, a member or a
    /// value over `max_value` bytes, an empty one, or a field name over
    /// `max_name` bytes, saying which.
    pub fn check(&self, max_name: usize, max_value: usize) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidRequest(m));
        let sized = |what: &str, b: &[u8], max: usize| {
            if b.is_empty() || b.len() > max {
                bad(format!(
                    "a {what} of {} bytes: {what}s are 1 to {max} bytes",
                    b.len()
                ))
            } else {
                Ok(())
            }
        };
        match self {
            Operation::Increment(_) => Ok(()),
            Operation::Add(m) | Operation::Remove(m) if m.is_empty() => {
                bad(format!("{} names no member", self.name()))
            }
            Operation::Add(members) | Operation::Remove(members) => members
                .iter()
                .try_for_each(|m| sized("member", m, max_value)),
            Operation::SetField { field, value } => {
                sized("field name", field, max_name)?;
                if value.len() > max_value {
                    return bad(format!(
                        "value of {} bytes exceeds the limit of {max_value}",
                        value.len()
                    ));
                }
                Ok(())
            }
            Operation::IncrementField { field, .. } => sized("field name", field, max_name),
            Operation::DeleteFields(fields) if fields.is_empty() => {
                bad("hdel names no field".into())
            }
            Operation::DeleteFields(fields) => fields
                .iter()
                .try_for_each(|f| sized("field name", f, max_name)),
            Operation::AddToField { field, members }
            | Operation::RemoveFromField { field, members } => {
                sized("field name", field, max_name)?;
                if members.is_empty() {
                    return bad(format!("{} names no member", self.name()));
                }
                members
                    .iter()
                    .try_for_each(|m| sized("member", m, max_value))
            }
        }
    }

    /// Whether it needs the context of a read: a removal takes away only
    /// what was observed.
    pub fn needs_context(&self) -> bool {
        matches!(
            self,
            Operation::Remove(_) | Operation::DeleteFields(_) | Operation::RemoveFromField { .. }
        )
    }

    /// The empty state of the type it applies to.
    fn empty(&self) -> Typed {
        match self {
            Operation::Increment(_) => Typed::Counter(Counter::default()),
            Operation::Add(_) | Operation::Remove(_) => Typed::Set(Set::default()),
            Operation::SetField { .. }
            | Operation::IncrementField { .. }
            | Operation::DeleteFields(_)
            | Operation::AddToField { .. }
            | Operation::RemoveFromField { .. } => Typed::Map(Map::default()),
        }
    }
}

/// A typed key's state. Variants are only ever appended (they are stored
/// and sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Typed {
    Counter(Counter),
    Set(Set),
    Map(Map),
}

/// What a read of a typed key returns: the merged value, never siblings.
/// Variants are only ever appended (they are sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reading {
    /// A counter's value (saturated to the range of an i64 should
    /// concurrent increments have passed it).
    Counter(i64),
    /// A set's members, sorted.
    Set(#[serde(with = "crate::wire::byte_lists")] Vec<Vec<u8>>),
    /// A map's fields, sorted by name.
    Map(Vec<MapField>),
}

impl Typed {
    /// Applies `op` as writer `actor` at `at_ms` (the minting replica's wall
    /// clock: a map register's time for last-writer-wins) to `state`
    /// (None: the key holds nothing yet, and gets the empty state of
    /// `op`'s type); `seen` is the context of the read a removal is based
    /// on. Returns the delta: joined into any replica, it has the
    /// operation's effect. Refused, with `state` left as it was, when `op`
    /// does not fit the state's type or a counter would overflow.
    pub fn apply(
        state: &mut Option<Typed>,
        actor: Actor,
        op: &Operation,
        seen: &CausalContext,
        at_ms: u64,
    ) -> Result<Typed> {
        let typed = state.get_or_insert_with(|| op.empty());
        Ok(match (typed, op) {
            (Typed::Counter(c), Operation::Increment(by)) => {
                Typed::Counter(c.increment(actor, *by)?)
            }
            (Typed::Set(s), Operation::Add(members)) => {
                let mut delta = Set::default();
                for m in members {
                    delta.join(&s.add(actor, m));
                }
                Typed::Set(delta)
            }
            (Typed::Set(s), Operation::Remove(members)) => {
                let mut delta = Set::default();
                for m in members {
                    delta.join(&s.remove_seen(m, seen));
                }
                Typed::Set(delta)
            }
            (Typed::Map(m), Operation::SetField { field, value }) => {
                Typed::Map(m.set(actor, field, value, at_ms))
            }
            (Typed::Map(m), Operation::IncrementField { field, by }) => {
                Typed::Map(m.increment(actor, field, *by)?)
            }
            (Typed::Map(m), Operation::AddToField { field, members }) => {
                Typed::Map(m.add_members(actor, field, members))
            }
            (Typed::Map(m), Operation::RemoveFromField { field, members }) => {
                Typed::Map(m.remove_members_seen(field, members, seen))
            }
            (Typed::Map(m), Operation::DeleteFields(fields)) => {
                let mut delta = Map::default();
                for f in fields {
                    delta.join(&m.remove_seen(f, seen));
                }
                Typed::Map(delta)
            }
            (typed, op) => {
                return Err(Error::InvalidRequest(format!(
                    "{} does not apply to a {}",
                    op.name(),
                    typed.type_name()
                )));
            }
        })
    }

    /// Whether `actor` wrote to this state (a counter entry, a dot): a
    /// replica that drops such a copy must write as another actor from
    /// then on, or its next operation would start below what it wrote
    /// (an increment lost in the join, a dot minted twice).
    pub fn written_by(&self, actor: Actor) -> bool {
        match self {
            Typed::Counter(c) => c.writers.contains_key(&actor),
            Typed::Set(_) | Typed::Map(_) => self.context().dots_of(actor),
        }
    }

    /// "counter", "set" or "map".
    pub fn type_name(&self) -> &'static str {
        match self {
            Typed::Counter(_) => "counter",
            Typed::Set(_) => "set",
            Typed::Map(_) => "map",
        }
    }

    /// Its place in variant order.
    fn rank(&self) -> u8 {
        match self {
            Typed::Counter(_) => 0,
            Typed::Set(_) => 1,
            Typed::Map(_) => 2,
        }
    }

    /// Joins `other` in. States of different types (a key can hold only
    /// its namespace's, so only a bug makes them) keep the first type in
    /// variant order, so the join stays commutative.
    pub fn join(&mut self, other: &Typed) {
        match (&mut *self, other) {
            (Typed::Counter(a), Typed::Counter(b)) => a.join(b),
            (Typed::Set(a), Typed::Set(b)) => a.join(b),
            (Typed::Map(a), Typed::Map(b)) => a.join(b),
            (mine, theirs) if theirs.rank() < mine.rank() => *self = other.clone(),
            _ => {}
        }
    }

    /// The value a read returns; `lww`: a map's registers read as their
    /// latest value only.
    pub fn reading(&self, lww: bool) -> Reading {
        match self {
            Typed::Counter(c) => {
                Reading::Counter(i64::try_from(c.value()).unwrap_or(if c.value() < 0 {
                    i64::MIN
                } else {
                    i64::MAX
                }))
            }
            Typed::Set(s) => Reading::Set(s.members().map(<[u8]>::to_vec).collect()),
            Typed::Map(m) => Reading::Map(m.fields(lww)),
        }
    }

    /// What a reader observed (a removal with it takes away only that).
    pub fn context(&self) -> CausalContext {
        match self {
            Typed::Counter(_) => CausalContext::default(),
            Typed::Set(s) => s.context().clone(),
            Typed::Map(m) => m.context().clone(),
        }
    }

    /// A set's or a map's rank, context and entries' digest: all its item
    /// hash needs (`merkle::kernel_item_hash`), each kept current by its
    /// writes. None for a counter, which is small and hashed as encoded.
    pub fn kernel(&self) -> Option<(u8, &CausalContext, u128)> {
        match self {
            Typed::Counter(_) => None,
            Typed::Set(s) => Some((self.rank(), s.context(), s.digest())),
            Typed::Map(m) => Some((self.rank(), m.context(), m.digest())),
        }
    }

    /// Checks a state decoded from a peer or disk.
    pub fn validate(&self) -> Result<()> {
        match self {
            Typed::Counter(_) => Ok(()),
            Typed::Set(s) => s.validate(),
            Typed::Map(m) => m.validate(),
        }
    }

    /// Bytes of member data held (for size reports).
    pub fn value_bytes(&self) -> usize {
        match self {
            Typed::Counter(c) => 16 * c.entries(),
            Typed::Set(s) => s.value_bytes(),
            Typed::Map(m) => m.value_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::version::Dot;

    #[test]
    fn a_concurrent_add_survives_a_remove() {
        let (a, b) = (Actor(1), Actor(2));
        let mut x = Set::default();
        let added = x.add(a, b"milk");
        let mut y = Set::default();
        y.join(&added);
        // x removes what it saw while y adds the member again.
        let seen = x.dots_of(b"milk");
        let removed = x.remove(b"milk", &seen);
        let again = y.add(b, b"milk");
        x.join(&again);
        y.join(&removed);
        assert_eq!(x, y);
        assert!(x.contains(b"milk"), "the add x did not observe wins");
        assert_eq!(x.dots_of(b"milk").len(), 1);
        // A remove that observed it takes it away for good.
        let seen = y.dots_of(b"milk");
        let gone = y.remove(b"milk", &seen);
        x.join(&gone);
        assert!(!x.contains(b"milk"));
        x.join(&added);
        assert!(!x.contains(b"milk"), "a removed dot never comes back");
    }

    #[test]
    fn a_delta_is_as_small_as_its_operation() {
        let mut big = Set::default();
        for i in 0..10_000u32 {
            big.add(Actor(1), &i.to_be_bytes());
        }
        let delta = big.add(Actor(1), b"one more");
        let bytes = postcard::to_stdvec(&delta).unwrap().len();
        assert!(bytes < 64, "{bytes} bytes");
        assert_eq!(big.len(), 10_001);
    }

    #[test]
    fn a_counter_counts_each_increment_once_and_refuses_overflow() {
        let mut x = Counter::default();
        let d1 = x.increment(Actor(1), 5).unwrap();
        let d2 = x.increment(Actor(1), -2).unwrap();
        let mut y = Counter::default();
        y.join(&d2);
        y.join(&d1);
        y.join(&d2);
        assert_eq!((x.value(), y.value()), (3, 3));
        let e = x.increment(Actor(1), i64::MAX).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        assert_eq!(x.value(), 3, "a refused increment changes nothing");
    }

    #[test]
    fn contexts_round_trip_as_bytes_and_bad_ones_are_refused() {
        let mut set = Set::default();
        set.add(Actor(1), b"a");
        set.add(Actor(2), b"b");
        let mut context = set.context().clone();
        context.insert(Dot {
            actor: Actor(3),
            counter: 5,
        });
        assert_eq!(
            CausalContext::from_bytes(&context.to_bytes()).unwrap(),
            context
        );
        assert!(CausalContext::from_bytes(&[]).is_err());
        let mut trailing = context.to_bytes();
        trailing.push(0);
        assert!(CausalContext::from_bytes(&trailing).is_err());
        // A loose dot that belongs in its writer's prefix is not compact.
        let loose = CausalContext {
            prefix: BTreeMap::new(),
            cloud: BTreeSet::from([Dot {
                actor: Actor(1),
                counter: 1,
            }]),
        };
        assert!(CausalContext::from_bytes(&loose.to_bytes()).is_err());
        // A member under a dot its context never saw is malformed.
        let mut bad = Set::default();
        bad.insert(
            Dot {
                actor: Actor(9),
                counter: 1,
            },
            b"x",
        );
        assert!(Typed::Set(bad).validate().is_err());
        assert!(Typed::Set(set).validate().is_ok());
    }

    #[test]
    fn typed_states_join_commutatively_even_of_different_types() {
        let mut counter = None;
        Typed::apply(
            &mut counter,
            Actor(1),
            &Operation::Increment(2),
            &CausalContext::default(),
            0,
        )
        .unwrap();
        let mut set = None;
        let add = Operation::Add(vec![b"m".to_vec()]);
        Typed::apply(&mut set, Actor(1), &add, &CausalContext::default(), 0).unwrap();
        let (counter, set) = (counter.unwrap(), set.unwrap());
        let mut a = counter.clone();
        a.join(&set);
        let mut b = set.clone();
        b.join(&counter);
        assert_eq!(a, b);
        let e = Typed::apply(
            &mut Some(set),
            Actor(1),
            &Operation::Increment(1),
            &CausalContext::default(),
            0,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("incr does not apply to a set"),
            "{e}"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(usize, u8),
        Remove(usize, u8),
        Incr(usize, i32),
        /// Replica `a` joins `b`'s whole state.
        Sync(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize, 0..4u8).prop_map(|(r, m)| Op::Add(r, m)),
            (0..3usize, 0..4u8).prop_map(|(r, m)| Op::Remove(r, m)),
            (0..3usize, -100..100i32).prop_map(|(r, by)| Op::Incr(r, by)),
            (0..3usize, 0..3usize).prop_map(|(a, b)| Op::Sync(a, b)),
        ]
    }

    /// Every index below `n` twice, in an order drawn from `seed`.
    fn shuffled_twice(n: usize, seed: u64) -> Vec<usize> {
        let mut state = seed | 1;
        let mut order: Vec<usize> = (0..n).chain(0..n).collect();
        for i in (1..order.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            order.swap(i, (state % (i as u64 + 1)) as usize);
        }
        order
    }

    #[derive(Debug, Clone)]
    enum MapOp {
        Set(usize, u8, u8),
        Incr(usize, u8, i8),
        Delete(usize, u8),
        AddMember(usize, u8, u8),
        RemoveMember(usize, u8, u8),
        Sync(usize, usize),
    }

    fn map_op() -> impl Strategy<Value = MapOp> {
        prop_oneof![
            (0..3usize, 0..3u8, any::<u8>()).prop_map(|(r, f, v)| MapOp::Set(r, f, v)),
            (0..3usize, 0..3u8, any::<i8>()).prop_map(|(r, f, by)| MapOp::Incr(r, f, by)),
            (0..3usize, 0..3u8).prop_map(|(r, f)| MapOp::Delete(r, f)),
            (0..3usize, 0..3u8, 0..4u8).prop_map(|(r, f, m)| MapOp::AddMember(r, f, m)),
            (0..3usize, 0..3u8, 0..4u8).prop_map(|(r, f, m)| MapOp::RemoveMember(r, f, m)),
            (0..3usize, 0..3usize).prop_map(|(a, b)| MapOp::Sync(a, b)),
        ]
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        /// The same for maps: replicas writing, incrementing and removing
        /// fields converge, and deltas alone (shuffled, twice) build the
        /// same state, which decodes to itself.
        #[test]
        fn map_deltas_and_states_converge_to_one_value(
            ops in proptest::collection::vec(map_op(), 1..60),
            seed in any::<u64>(),
        ) {
            let mut maps = vec![Map::default(); 3];
            let mut deltas = Vec::new();
            for (at, op) in ops.into_iter().enumerate() {
                let at = at as u64;
                match op {
                    MapOp::Set(r, f, v) => deltas.push(maps[r].set(Actor(r as u64 + 1), &[f], &[v], at)),
                    MapOp::Incr(r, f, by) => deltas.push(maps[r].increment(Actor(r as u64 + 1), &[f], i64::from(by)).unwrap()),
                    MapOp::AddMember(r, f, m) => deltas.push(maps[r].add_members(Actor(r as u64 + 1), &[f], &[vec![m]])),
                    MapOp::RemoveMember(r, f, m) => {
                        let seen = maps[r].context().clone();
                        deltas.push(maps[r].remove_members_seen(&[f], &[vec![m]], &seen));
                    }
                    MapOp::Delete(r, f) => {
                        let seen = maps[r].context().clone();
                        deltas.push(maps[r].remove_seen(&[f], &seen));
                    }
                    MapOp::Sync(a, b) => {
                        let other = maps[b].clone();
                        maps[a].join(&other);
                    }
                }
            }
            let mut observer = Map::default();
            for i in shuffled_twice(deltas.len(), seed) {
                observer.join(&deltas[i]);
            }
            let mut all = Map::default();
            for m in maps.iter().rev() {
                all.join(m);
            }
            for m in &mut maps {
                m.join(&all);
                prop_assert_eq!(&*m, &all);
            }
            prop_assert_eq!(&observer, &all, "deltas alone make the same state");
            let decoded: Map = postcard::from_bytes(&postcard::to_stdvec(&all).unwrap()).unwrap();
            prop_assert_eq!(&decoded, &all);
            prop_assert_eq!(decoded.fields(true), all.fields(true));
        }
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        /// Three replicas run random operations and syncs; every delta
        /// also goes, in a shuffled order and twice, to an observer. Once
        /// all states are joined, every replica and the observer agree:
        /// the join is commutative, associative and idempotent, and
        /// applying deltas equals merging whole states.
        #[test]
        fn deltas_and_states_converge_to_one_value(
            ops in proptest::collection::vec(op(), 1..60),
            seed in any::<u64>(),
        ) {
            let mut sets = vec![Set::default(); 3];
            let mut counters = vec![Counter::default(); 3];
            let mut set_deltas = Vec::new();
            let mut counter_deltas = Vec::new();
            let mut sum = 0i128;
            for op in ops {
                match op {
                    Op::Add(r, m) => set_deltas.push(sets[r].add(Actor(r as u64 + 1), &[m])),
                    Op::Remove(r, m) => {
                        let seen = sets[r].dots_of(&[m]);
                        set_deltas.push(sets[r].remove(&[m], &seen));
                    }
                    Op::Incr(r, by) => {
                        counter_deltas.push(counters[r].increment(Actor(r as u64 + 1), i64::from(by)).unwrap());
                        sum += i128::from(by);
                    }
                    Op::Sync(a, b) => {
                        let (s, c) = (sets[b].clone(), counters[b].clone());
                        sets[a].join(&s);
                        counters[a].join(&c);
                    }
                }
            }
            let mut observer = Set::default();
            for i in shuffled_twice(set_deltas.len(), seed) {
                observer.join(&set_deltas[i]);
            }
            let mut counted = Counter::default();
            for d in counter_deltas.iter().rev().chain(&counter_deltas) {
                counted.join(d);
            }
            let mut all = Set::default();
            let mut total = Counter::default();
            for (s, c) in sets.iter().zip(&counters).rev() {
                all.join(s);
                total.join(c);
            }
            for s in &mut sets {
                s.join(&all);
                prop_assert_eq!(&*s, &all);
            }
            prop_assert_eq!(&observer, &all, "deltas alone make the same state");
            let decoded: Set = postcard::from_bytes(&postcard::to_stdvec(&all).unwrap()).unwrap();
            prop_assert_eq!(&decoded, &all, "the index is rebuilt when decoded");
            prop_assert_eq!(total.value(), sum);
            prop_assert_eq!(counted.value(), sum);
            let mut twice = all.clone();
            twice.join(&all);
            prop_assert_eq!(twice, all);
        }
    }
}

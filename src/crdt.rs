//! Convergent data types: counters and add-wins sets whose replicas merge
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
//!
//! A key of a typed namespace holds one `Typed` state (beside the DVV
//! siblings of `version::SiblingSet`, which such a key never has); a
//! client sends an `Operation`, which the minting replica applies with
//! `Typed::apply`, and reads a `Reading`, never siblings.
//!
//! Not yet here (the data-types issue): maps and registers, and folding
//! retired writers' counter entries once every member acknowledged them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::{Error, Result};
use crate::version::{Actor, Dot};

/// The most writers a context may name: every node incarnation that ever
/// wrote a key has one (a bound on what a client or a peer can make us
/// hold, far above any cluster's history between foldings).
const MAX_CONTEXT_WRITERS: usize = 1 << 16;
/// The most dots a context may hold beyond its writers' prefixes: they
/// are the gaps of deltas still on their way, a few per writer.
const MAX_CONTEXT_CLOUD: usize = 1 << 16;

/// Every dot a replica has seen: a contiguous prefix per writer, and the
/// dots seen beyond it (a delta's dots arrive out of order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalContext {
    prefix: BTreeMap<Actor, u64>,
    cloud: BTreeSet<Dot>,
}

impl CausalContext {
    pub fn contains(&self, dot: &Dot) -> bool {
        self.prefix
            .get(&dot.actor)
            .is_some_and(|&c| dot.counter <= c)
            || self.cloud.contains(dot)
    }

    /// How many dots it holds.
    pub fn size(&self) -> u64 {
        self.prefix.values().sum::<u64>() + self.cloud.len() as u64
    }

    /// Every dot seen, writer by writer (a delta's context is a few).
    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        let prefixes = self
            .prefix
            .iter()
            .flat_map(|(&actor, &c)| (1..=c).map(move |counter| Dot { actor, counter }));
        prefixes.chain(self.cloud.iter().copied())
    }

    /// Whether any dot of `actor` was seen.
    fn dots_of(&self, actor: Actor) -> bool {
        self.prefix.contains_key(&actor) || self.cloud.iter().any(|d| d.actor == actor)
    }

    /// The next dot `actor` mints: above every dot of it seen here.
    pub fn next(&self, actor: Actor) -> Dot {
        let prefix = self.prefix.get(&actor).copied().unwrap_or(0);
        let cloud = self
            .cloud
            .range(
                Dot { actor, counter: 0 }..=Dot {
                    actor,
                    counter: u64::MAX,
                },
            )
            .next_back()
            .map_or(0, |d| d.counter);
        Dot {
            actor,
            counter: prefix.max(cloud) + 1,
        }
    }

    pub fn insert(&mut self, dot: Dot) {
        if !self.contains(&dot) {
            self.cloud.insert(dot);
            self.compact();
        }
    }

    /// Checks a context decoded from a client, a peer or disk: at most
    /// `MAX_CONTEXT_WRITERS` writers and `MAX_CONTEXT_CLOUD` loose dots,
    /// and in the compact form `join` keeps (so equal contexts compare
    /// equal).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidContext(m));
        if self.prefix.len() > MAX_CONTEXT_WRITERS || self.cloud.len() > MAX_CONTEXT_CLOUD {
            return bad(format!(
                "{} writers and {} loose dots, more than {MAX_CONTEXT_WRITERS} and {MAX_CONTEXT_CLOUD}",
                self.prefix.len(),
                self.cloud.len()
            ));
        }
        if self.prefix.values().any(|&c| c == 0) {
            return bad("a writer's prefix of 0".into());
        }
        if let Some(dot) = self.cloud.iter().find(|d| {
            let prefix = self.prefix.get(&d.actor).copied().unwrap_or(0);
            d.counter <= prefix + 1
        }) {
            return bad(format!("loose dot {dot} belongs in its writer's prefix"));
        }
        Ok(())
    }

    /// The context as the opaque bytes a client holds.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding to a Vec cannot fail")
    }

    /// A context a client sent back (`to_bytes`), checked.
    pub fn from_bytes(bytes: &[u8]) -> Result<CausalContext> {
        let (context, rest): (CausalContext, _) = postcard::take_from_bytes(bytes)
            .map_err(|e| Error::InvalidContext(format!("undecodable set context: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::InvalidContext(format!(
                "{} trailing bytes after a set context",
                rest.len()
            )));
        }
        context.validate()?;
        Ok(context)
    }

    pub fn join(&mut self, other: &CausalContext) {
        for (&actor, &counter) in &other.prefix {
            let mine = self.prefix.entry(actor).or_insert(0);
            *mine = (*mine).max(counter);
        }
        self.cloud.extend(other.cloud.iter().copied());
        self.compact();
    }

    /// Moves cloud dots that extend a writer's prefix into it.
    fn compact(&mut self) {
        let cloud = std::mem::take(&mut self.cloud);
        for dot in cloud {
            let prefix = self.prefix.entry(dot.actor).or_insert(0);
            if dot.counter == *prefix + 1 {
                *prefix += 1;
            } else if dot.counter > *prefix {
                self.cloud.insert(dot);
            }
        }
        self.prefix.retain(|_, c| *c > 0);
    }
}

/// An exact counter: per writer, the sums of its increments and of its
/// decrements (each only grows, so the join is the larger of each).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    writers: BTreeMap<Actor, (u64, u64)>,
}

impl Counter {
    /// The sum of every increment.
    pub fn value(&self) -> i128 {
        self.writers
            .values()
            .map(|&(up, down)| i128::from(up) - i128::from(down))
            .sum()
    }

    /// Adds `by` (negative: subtracts) as writer `actor`; returns the
    /// delta. Refused if the writer's sums would overflow, or the value
    /// leave the range of an i64.
    pub fn increment(&mut self, actor: Actor, by: i64) -> Result<Counter> {
        let (up, down) = self.writers.get(&actor).copied().unwrap_or((0, 0));
        let overflow =
            || Error::InvalidRequest(format!("incrementing by {by} overflows the counter"));
        let next = if by >= 0 {
            (
                up.checked_add(by.unsigned_abs()).ok_or_else(overflow)?,
                down,
            )
        } else {
            (
                up,
                down.checked_add(by.unsigned_abs()).ok_or_else(overflow)?,
            )
        };
        let after = self.value() + i128::from(by);
        if i64::try_from(after).is_err() {
            return Err(overflow());
        }
        self.writers.insert(actor, next);
        Ok(Counter {
            writers: BTreeMap::from([(actor, next)]),
        })
    }

    pub fn join(&mut self, other: &Counter) {
        for (&actor, &(up, down)) in &other.writers {
            let mine = self.writers.entry(actor).or_insert((0, 0));
            *mine = (mine.0.max(up), mine.1.max(down));
        }
    }

    /// Writers with an entry (what folding retired writers will bound).
    pub fn writers(&self) -> usize {
        self.writers.len()
    }
}

/// An add-wins set of byte strings: each member under the dots of the
/// adds that keep it, and the context of every dot seen. A dot the other
/// side has seen and no longer holds was removed there, and goes.
///
/// `index` (member to dots) is derived from `entries`, not stored or sent:
/// a member's dots are found without a scan, and a delta joins into a set
/// of any size in time proportional to the delta.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    entries: BTreeMap<Dot, ByteBuf>,
    context: CausalContext,
    index: BTreeMap<Vec<u8>, BTreeSet<Dot>>,
}

/// A set as stored and sent: its entries and context.
#[derive(Serialize, Deserialize)]
struct SetState<E, C> {
    entries: E,
    context: C,
}

impl Serialize for Set {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        SetState {
            entries: &self.entries,
            context: &self.context,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Set {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Set, D::Error> {
        let state = SetState::<BTreeMap<Dot, ByteBuf>, CausalContext>::deserialize(d)?;
        let mut set = Set {
            entries: BTreeMap::new(),
            context: state.context,
            index: BTreeMap::new(),
        };
        for (dot, member) in state.entries {
            set.insert(dot, member);
        }
        Ok(set)
    }
}

impl Set {
    /// The members, sorted, each once.
    pub fn members(&self) -> impl Iterator<Item = &[u8]> {
        self.index.keys().map(|m| m.as_slice())
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, member: &[u8]) -> bool {
        self.index.contains_key(member)
    }

    /// The dots under which `member` is present here: what a remove that
    /// observed this state takes away.
    pub fn dots_of(&self, member: &[u8]) -> Vec<Dot> {
        self.index
            .get(member)
            .map(|dots| dots.iter().copied().collect())
            .unwrap_or_default()
    }

    fn insert(&mut self, dot: Dot, member: ByteBuf) {
        self.index.entry(member.to_vec()).or_default().insert(dot);
        self.entries.insert(dot, member);
    }

    /// Takes the entry under `dot` away, if there is one.
    fn take(&mut self, dot: Dot) {
        if let Some(member) = self.entries.remove(&dot)
            && let Some(dots) = self.index.get_mut(member.as_slice())
        {
            dots.remove(&dot);
            if dots.is_empty() {
                self.index.remove(member.as_slice());
            }
        }
    }

    /// Removes the entries of `dots`; returns the delta (their dots, seen,
    /// and no entry).
    fn remove_dots(&mut self, dots: &[Dot]) -> Set {
        let mut delta = Set::default();
        for &dot in dots {
            self.take(dot);
            delta.context.insert(dot);
        }
        delta
    }

    /// Adds `member` as writer `actor` (its earlier dots here go: the new
    /// one covers them); returns the delta.
    pub fn add(&mut self, actor: Actor, member: &[u8]) -> Set {
        let old = self.dots_of(member);
        let mut delta = self.remove_dots(&old);
        let dot = self.context.next(actor);
        self.context.insert(dot);
        self.insert(dot, ByteBuf::from(member));
        delta.context.insert(dot);
        delta.insert(dot, ByteBuf::from(member));
        delta
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
        self.remove_dots(&dots)
    }

    /// Removes the dots of `member` that `seen` (a reader's context)
    /// contains: what that reader observed. Returns the delta.
    pub fn remove_seen(&mut self, member: &[u8], seen: &CausalContext) -> Set {
        let observed: Vec<Dot> = self
            .dots_of(member)
            .into_iter()
            .filter(|d| seen.contains(d))
            .collect();
        self.remove(member, &observed)
    }

    /// Every member with the dot it is present under (a member added by
    /// concurrent writers is present under each of their dots).
    pub fn entries(&self) -> impl Iterator<Item = (Dot, &[u8])> {
        self.entries.iter().map(|(d, m)| (*d, m.as_slice()))
    }

    /// Every dot seen: what a reader of this state has observed.
    pub fn context(&self) -> &CausalContext {
        &self.context
    }

    pub fn join(&mut self, other: &Set) {
        // What `other` has seen and no longer holds goes: looked for among
        // the dots of whichever side is smaller (a delta's context is a
        // few dots, so joining one costs the delta, not the set).
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
        for (dot, member) in &other.entries {
            if !self.entries.contains_key(dot) && !self.context.contains(dot) {
                self.insert(*dot, member.clone());
            }
        }
        self.context.join(&other.context);
    }

    fn validate(&self) -> Result<()> {
        self.context.validate()?;
        match self.entries.keys().find(|d| !self.context.contains(d)) {
            Some(dot) => Err(Error::Malformed(format!(
                "set member under {dot}, a dot outside its context"
            ))),
            None => Ok(()),
        }
    }

    /// Bytes of members held.
    fn value_bytes(&self) -> usize {
        self.entries.values().map(|m| m.len()).sum()
    }
}

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
}

impl Operation {
    /// "incr", "sadd" or "srem", for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Increment(_) => "incr",
            Operation::Add(_) => "sadd",
            Operation::Remove(_) => "srem",
        }
    }

    /// The members it names (none for an increment).
    pub fn members(&self) -> &[Vec<u8>] {
        match self {
            Operation::Increment(_) => &[],
            Operation::Add(m) | Operation::Remove(m) => m,
        }
    }

    /// Whether it needs the context of a read: a remove takes away only
    /// what was observed.
    pub fn needs_context(&self) -> bool {
        matches!(self, Operation::Remove(_))
    }

    /// The empty state of the type it applies to.
    fn empty(&self) -> Typed {
        match self {
            Operation::Increment(_) => Typed::Counter(Counter::default()),
            Operation::Add(_) | Operation::Remove(_) => Typed::Set(Set::default()),
        }
    }
}

/// A typed key's state. Variants are only ever appended (they are stored
/// and sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Typed {
    Counter(Counter),
    Set(Set),
}

/// What a read of a typed key returns: the merged value, never siblings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reading {
    /// A counter's value (saturated to the range of an i64 should
    /// concurrent increments have passed it).
    Counter(i64),
    /// A set's members, sorted.
    Set(#[serde(with = "crate::wire::byte_lists")] Vec<Vec<u8>>),
}

impl Typed {
    /// Applies `op` as writer `actor` to `state` (None: the key holds
    /// nothing yet, and gets the empty state of `op`'s type); `seen` is
    /// the context of the read a remove is based on. Returns the delta:
    /// joined into any replica, it has the operation's effect. Refused,
    /// with `state` left as it was, when `op` does not fit the state's
    /// type or a counter would overflow.
    pub fn apply(
        state: &mut Option<Typed>,
        actor: Actor,
        op: &Operation,
        seen: &CausalContext,
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
            (typed, op) => {
                return Err(Error::InvalidRequest(format!(
                    "{} does not apply to a {}",
                    op.name(),
                    typed.type_name()
                )));
            }
        })
    }

    /// Whether `actor` wrote to this state (a counter entry, a set dot):
    /// a replica that drops such a copy must write as another actor from
    /// then on, or its next operation would start below what it wrote
    /// (an increment lost in the join, a dot minted twice).
    pub fn written_by(&self, actor: Actor) -> bool {
        match self {
            Typed::Counter(c) => c.writers.contains_key(&actor),
            Typed::Set(s) => s.context().dots_of(actor),
        }
    }

    /// "counter" or "set".
    pub fn type_name(&self) -> &'static str {
        match self {
            Typed::Counter(_) => "counter",
            Typed::Set(_) => "set",
        }
    }

    /// Joins `other` in. States of different types (a key can hold only
    /// its namespace's, so only a bug makes them) keep the first type in
    /// variant order, so the join stays commutative.
    pub fn join(&mut self, other: &Typed) {
        match (&mut *self, other) {
            (Typed::Counter(a), Typed::Counter(b)) => a.join(b),
            (Typed::Set(a), Typed::Set(b)) => a.join(b),
            (Typed::Set(_), Typed::Counter(_)) => *self = other.clone(),
            (Typed::Counter(_), Typed::Set(_)) => {}
        }
    }

    /// The value a read returns.
    pub fn reading(&self) -> Reading {
        match self {
            Typed::Counter(c) => {
                Reading::Counter(i64::try_from(c.value()).unwrap_or(if c.value() < 0 {
                    i64::MIN
                } else {
                    i64::MAX
                }))
            }
            Typed::Set(s) => Reading::Set(s.members().map(<[u8]>::to_vec).collect()),
        }
    }

    /// What a reader observed (a remove with it takes away only that).
    pub fn context(&self) -> CausalContext {
        match self {
            Typed::Counter(_) => CausalContext::default(),
            Typed::Set(s) => s.context().clone(),
        }
    }

    /// Checks a state decoded from a peer or disk.
    pub fn validate(&self) -> Result<()> {
        match self {
            Typed::Counter(_) => Ok(()),
            Typed::Set(s) => s.validate(),
        }
    }

    /// Bytes of member data held (for size reports).
    pub fn value_bytes(&self) -> usize {
        match self {
            Typed::Counter(c) => 16 * c.writers(),
            Typed::Set(s) => s.value_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

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
            ByteBuf::from(b"x".to_vec()),
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
        )
        .unwrap();
        let mut set = None;
        let add = Operation::Add(vec![b"m".to_vec()]);
        Typed::apply(&mut set, Actor(1), &add, &CausalContext::default()).unwrap();
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
            let mut state = seed | 1;
            let mut order: Vec<usize> = (0..set_deltas.len()).chain(0..set_deltas.len()).collect();
            for i in (1..order.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                order.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut observer = Set::default();
            for i in order {
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

//! Versioning: dotted version vector sets (DVV sets, Almeida et al. 2014).
//!
//! A key's stored state is a `SiblingSet`: per actor (the node incarnation
//! that coordinated writes), a counter and that actor's live values, newest
//! first. The value at position `i` of an entry `(actor, n, values)` has the
//! dot `(actor, n - i)`; every dot of that actor at or below
//! `n - values.len()` is known to be superseded.
//!
//! - `context()` is what a read hands the client: one counter per actor.
//! - `update(ctx, value, actor)` is a coordinator's write: every sibling the
//!   context covers is dropped, siblings it does not cover stay, and the new
//!   value gets the fresh dot `(actor, n + 1)`. So two writes with the same
//!   context through the same coordinator both survive, and a write with a
//!   read's context supersedes exactly the siblings that read saw.
//! - `merge(other)` joins two replicas' states. It is commutative,
//!   associative and idempotent, and drops a sibling only if the other side
//!   knows it was superseded.
//!
//! A key of a typed namespace (counter, set) holds no siblings but one
//! `crdt::Typed` state, which `merge` joins by its type's join: every path
//! that merges sibling sets (writes, read repair, hints, anti-entropy,
//! handoff) merges typed states with no change. What a sibling set does
//! with its typed state (operations, folds) is in `typed`.
//!
//! Actors are per node *incarnation* (a fresh random id each time a node
//! starts), not per node: a node that lost its recent writes in a crash must
//! never hand out a dot it already used.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::crdt::Typed;

mod typed;
use crate::error::{Error, Result};

/// A writer identity: one per node incarnation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Actor(pub u64);

impl Actor {
    /// A fresh identity derived from this one, for a replica that forgot
    /// some of its own writes (it must never mint one of their dots again).
    pub fn successor(self) -> Actor {
        Actor(xxhash_rust::xxh3::xxh3_64_with_seed(
            &self.0.to_le_bytes(),
            0x5eed,
        ))
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Actor({self})")
    }
}

/// The unique name of one write: the actor that coordinated it and that
/// actor's counter at the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub actor: Actor,
    pub counter: u64,
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.actor, self.counter)
    }
}

/// What a write stores: bytes, or the fact that the key was deleted.
/// Variants are only ever appended (they are stored and sent).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Tombstone,
    /// Bytes that read as not found from `expires_ms` on (milliseconds
    /// since the Unix epoch, by the clock of the write's coordinator), and
    /// are then collected like a tombstone. The deadline is part of the
    /// sibling, so every replica holds the same one.
    Expiring {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        expires_ms: u64,
    },
    /// A tombstone with the time of its delete (ms since the Unix epoch,
    /// by the coordinator's clock): kept at least `keep_deleted_ms` past
    /// it before collection, so a node restored from a backup younger than
    /// that finds the delete still held by the cluster and cannot bring the
    /// value back. (`Tombstone`, from earlier versions and the deletes
    /// collection itself writes, is collectable at once.)
    Deleted {
        at_ms: u64,
    },
}

impl Value {
    pub fn is_tombstone(&self) -> bool {
        matches!(self, Value::Tombstone | Value::Deleted { .. })
    }

    /// The bytes written, whether or not they have expired (None for a
    /// tombstone).
    pub fn data(&self) -> Option<&[u8]> {
        match self {
            Value::Data(d) | Value::Expiring { data: d, .. } => Some(d),
            Value::Tombstone | Value::Deleted { .. } => None,
        }
    }

    /// The bytes a read at `now` (ms since the Unix epoch) returns: None
    /// for a tombstone or a value expired by then.
    pub fn live_at(&self, now: u64) -> Option<&[u8]> {
        match self {
            Value::Expiring { expires_ms, .. } if *expires_ms <= now => None,
            other => other.data(),
        }
    }

    /// From when the value reads as not found: at once for a tombstone,
    /// at its deadline for an expiring value, never (None) for data.
    pub fn ends_at(&self) -> Option<u64> {
        match self {
            Value::Data(_) => None,
            Value::Tombstone | Value::Deleted { .. } => Some(0),
            Value::Expiring { expires_ms, .. } => Some(*expires_ms),
        }
    }

    /// From when tombstone collection may forget the value: as `ends_at`,
    /// but a timed delete only `keep_ms` after it was made.
    pub fn collectable_at(&self, keep_ms: u64) -> Option<u64> {
        match self {
            Value::Deleted { at_ms } => Some(at_ms.saturating_add(keep_ms)),
            other => other.ends_at(),
        }
    }

    /// Bytes the value occupies (0 for a tombstone).
    pub fn len(&self) -> usize {
        self.data().map_or(0, <[u8]>::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One sibling as shown to operators (`inspect`): its dot and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sibling<'a> {
    pub dot: Dot,
    pub value: &'a Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    actor: Actor,
    counter: u64,
    /// Newest first; `values[i]` has the dot `(actor, counter - i)`.
    values: Vec<Value>,
}

/// The causal context a read returns and a write sends back: the highest
/// counter seen per actor. Sorted by actor, one entry each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Context {
    clock: Vec<(Actor, u64)>,
}

/// Contexts come from clients; this bounds what we accept. A key needs one
/// entry per node incarnation that ever coordinated a write to it.
pub const MAX_CONTEXT_ACTORS: usize = 4096;

/// Format version of the opaque context bytes handed to clients.
const CONTEXT_FORMAT: u8 = 1;

impl Context {
    pub fn is_empty(&self) -> bool {
        self.clock.is_empty()
    }

    /// The counter seen for `actor` (0 if none).
    pub fn get(&self, actor: Actor) -> u64 {
        self.clock
            .binary_search_by_key(&actor, |e| e.0)
            .map_or(0, |i| self.clock[i].1)
    }

    /// Whether this context has seen the write named by `dot`.
    pub fn covers(&self, dot: Dot) -> bool {
        self.get(dot.actor) >= dot.counter
    }

    /// The opaque bytes given to clients: a format byte, then postcard.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![CONTEXT_FORMAT];
        out.extend(postcard::to_stdvec(self).expect("encoding to a Vec cannot fail"));
        out
    }

    /// Parses client-supplied context bytes. Empty bytes are the empty
    /// context (a blind write).
    pub fn from_bytes(bytes: &[u8]) -> Result<Context> {
        let Some((&format, rest)) = bytes.split_first() else {
            return Ok(Context::default());
        };
        if format != CONTEXT_FORMAT {
            return Err(Error::InvalidContext(format!(
                "unknown context format {format}"
            )));
        }
        let (ctx, trailing): (Context, _) =
            postcard::take_from_bytes(rest).map_err(|e| Error::InvalidContext(e.to_string()))?;
        if !trailing.is_empty() {
            return Err(Error::InvalidContext(format!(
                "{} trailing bytes",
                trailing.len()
            )));
        }
        ctx.validate()?;
        Ok(ctx)
    }

    fn validate(&self) -> Result<()> {
        if self.clock.len() > MAX_CONTEXT_ACTORS {
            return Err(Error::InvalidContext(format!(
                "{} actors, more than {MAX_CONTEXT_ACTORS}",
                self.clock.len()
            )));
        }
        if self.clock.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(Error::InvalidContext("actors not strictly sorted".into()));
        }
        Ok(())
    }
}

/// All the versions of one key that are not known to be superseded, or
/// (in a typed namespace) its data-type state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingSet {
    /// Sorted by actor, one entry each.
    entries: Vec<Entry>,
    /// Boxed: most keys hold none, and every message and entry that
    /// carries a sibling set stays as small as before data types.
    typed: Option<Box<Typed>>,
}

/// The encoding of a sibling set before data types (protocol version 2
/// and older stores): the entries alone.
#[derive(Deserialize)]
struct Untyped {
    entries: Vec<Entry>,
}

impl SiblingSet {
    pub fn new() -> Self {
        SiblingSet::default()
    }

    /// Decodes a state as stored: in the current encoding, in protocol 5's
    /// (before counters' folds) or in the one before data types (`true`:
    /// the caller should store it again in the current one). Each must be
    /// exactly `bytes`.
    pub fn decode(bytes: &[u8]) -> std::result::Result<(SiblingSet, bool), String> {
        fn exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> std::result::Result<T, String> {
            match postcard::take_from_bytes(bytes) {
                Ok((value, [])) => Ok(value),
                Ok((_, rest)) => Err(format!("{} trailing bytes", rest.len())),
                Err(e) => Err(e.to_string()),
            }
        }
        // An old encoding lacks the last field, so it never decodes as the
        // current one (it ends too early), and the current one never as
        // the old (it has a byte left over): the state's typed part before
        // data types, a counter's folds (the last field of a counter's
        // state) before protocol 6.
        match exact::<SiblingSet>(bytes) {
            Ok(state) => Ok((state, false)),
            Err(e) => match crate::protocol::at(5, || exact::<SiblingSet>(bytes)) {
                Ok(state) => Ok((state, true)),
                Err(_) => match exact::<Untyped>(bytes) {
                    Ok(Untyped { entries }) => Ok((
                        SiblingSet {
                            entries,
                            typed: None,
                        },
                        true,
                    )),
                    Err(_) => Err(e),
                },
            },
        }
    }

    /// The context a read of this state returns.
    pub fn context(&self) -> Context {
        Context {
            clock: self.entries.iter().map(|e| (e.actor, e.counter)).collect(),
        }
    }

    /// Every sibling with its dot, tombstones included.
    pub fn siblings(&self) -> impl Iterator<Item = Sibling<'_>> {
        self.entries.iter().flat_map(|e| {
            e.values.iter().enumerate().map(move |(i, value)| Sibling {
                dot: Dot {
                    actor: e.actor,
                    counter: e.counter - i as u64,
                },
                value,
            })
        })
    }

    /// The bytes of every sibling that is not a tombstone, expired ones
    /// included (what `inspect` shows; a read returns `live_values`).
    pub fn values(&self) -> impl Iterator<Item = &[u8]> {
        self.entries
            .iter()
            .flat_map(|e| &e.values)
            .filter_map(Value::data)
    }

    /// The values a read at `now` returns: every sibling that is neither a
    /// tombstone nor expired.
    pub fn live_values(&self, now: u64) -> impl Iterator<Item = &[u8]> {
        self.entries
            .iter()
            .flat_map(|e| &e.values)
            .filter_map(move |v| v.live_at(now))
    }

    pub fn sibling_count(&self) -> usize {
        self.entries.iter().map(|e| e.values.len()).sum()
    }

    /// True when there is no sibling at all (not even a tombstone) and no
    /// data-type state.
    pub fn is_empty(&self) -> bool {
        self.sibling_count() == 0 && self.typed.is_none()
    }

    /// From when the key reads as not found, if nothing more is written to
    /// it: when its last sibling ends (0 when all are tombstones). None
    /// when a sibling never ends, or there is none. A data-type state never
    /// ends unless a tombstone was written over it (only the deletion of a
    /// dropped namespace's keys writes one): then it is collected like any
    /// deleted key.
    pub fn ends_at(&self) -> Option<u64> {
        if self.sibling_count() == 0 {
            return None;
        }
        self.entries
            .iter()
            .flat_map(|e| &e.values)
            .try_fold(0, |last, v| Some(last.max(v.ends_at()?)))
    }

    /// From when tombstone collection may forget the key, if nothing more
    /// is written to it: `ends_at`, with each timed delete kept `keep_ms`
    /// (`Value::collectable_at`).
    pub fn collectable_at(&self, keep_ms: u64) -> Option<u64> {
        if self.sibling_count() == 0 {
            return None;
        }
        self.entries
            .iter()
            .flat_map(|e| &e.values)
            .try_fold(0, |last, v| Some(last.max(v.collectable_at(keep_ms)?)))
    }

    /// True when the key reads as not found at `now` though it holds
    /// siblings: each is a tombstone or expired. Such a key is collected
    /// once every member holds the same copy or none.
    pub fn is_gone_at(&self, now: u64) -> bool {
        self.ends_at().is_some_and(|at| at <= now)
    }

    /// Bytes of live values, for size limits and load reports.
    pub fn value_bytes(&self) -> usize {
        self.entries
            .iter()
            .flat_map(|e| &e.values)
            .map(Value::len)
            .sum::<usize>()
            + self.typed().map_or(0, Typed::value_bytes)
    }

    /// A coordinator's write: drops the siblings `ctx` covers, keeps the rest,
    /// and adds `value` with the dot `(actor, n + 1)`. Fails only if a
    /// (client-supplied) context pushed the actor's counter to its maximum.
    pub fn update(&self, ctx: &Context, value: Value, actor: Actor) -> Result<SiblingSet> {
        self.update_above(ctx, value, actor, 0)
    }

    /// `update`, where `floor` is the highest counter `actor` has minted on
    /// any key: when the key holds no value of `actor` (a new key, one
    /// deleted and collected, or one whose values by `actor` were all
    /// superseded), the new dot is taken above `floor`, so it can never be
    /// a dot `actor` minted for this key before, even one whose tombstone
    /// was collected since while a client still holds a context covering
    /// it. (Counters of a key then skip numbers; the clock claiming dots
    /// that never existed for this key is harmless.) While the key holds
    /// values of `actor`, counters stay contiguous, as a DVV set needs.
    pub fn update_above(
        &self,
        ctx: &Context,
        value: Value,
        actor: Actor,
        floor: u64,
    ) -> Result<SiblingSet> {
        let seen = SiblingSet {
            entries: ctx
                .clock
                .iter()
                .map(|&(actor, counter)| Entry {
                    actor,
                    counter,
                    values: Vec::new(),
                })
                .collect(),
            typed: None,
        };
        let mut next = self.merge(&seen);
        match next.entries.binary_search_by_key(&actor, |e| e.actor) {
            Ok(i) => {
                let e = &mut next.entries[i];
                let base = if e.values.is_empty() {
                    e.counter.max(floor)
                } else {
                    e.counter
                };
                e.counter = base
                    .checked_add(1)
                    .ok_or_else(|| Error::InvalidContext("counter overflow".into()))?;
                e.values.insert(0, value);
            }
            Err(i) => next.entries.insert(
                i,
                Entry {
                    actor,
                    counter: floor
                        .checked_add(1)
                        .ok_or_else(|| Error::InvalidContext("counter overflow".into()))?,
                    values: vec![value],
                },
            ),
        }
        Ok(next)
    }

    /// Joins two replicas' states (DVV-set sync). Per actor the larger
    /// counter wins, and the winner's values are kept only down to the
    /// oldest value the other side still holds or has not yet seen.
    pub fn merge(&self, other: &SiblingSet) -> SiblingSet {
        let typed = match (&self.typed, &other.typed) {
            (Some(a), Some(b)) => {
                let mut joined = a.clone();
                joined.join(b);
                Some(joined)
            }
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        SiblingSet {
            entries: merge_entries(&self.entries, &other.entries),
            typed,
        }
    }

    /// `merge` in place: a typed state joins `other` without being copied
    /// (a large set's copy costs as much as decoding it).
    pub fn join(&mut self, other: &SiblingSet) {
        if !other.entries.is_empty() {
            self.entries = merge_entries(&self.entries, &other.entries);
        }
        match (&mut self.typed, &other.typed) {
            (Some(a), Some(b)) => a.join(b),
            (None, Some(b)) => self.typed = Some(b.clone()),
            (_, None) => {}
        }
    }

    /// Whether `self` already contains everything `other` knows: merging
    /// `other` into it would change nothing. Used by read repair.
    pub fn contains(&self, other: &SiblingSet) -> bool {
        self.merge(other) == *self
    }

    /// Checks the shape of a state decoded from disk or the network.
    pub fn validate(&self, max_siblings: usize) -> Result<()> {
        if self.entries.windows(2).any(|w| w[0].actor >= w[1].actor) {
            return Err(Error::Malformed(
                "sibling set actors not strictly sorted".into(),
            ));
        }
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.values.len() as u64 > e.counter)
        {
            return Err(Error::Malformed(format!(
                "actor {} holds {} values for counter {}",
                e.actor,
                e.values.len(),
                e.counter
            )));
        }
        if self.sibling_count() > max_siblings {
            return Err(Error::InvalidRequest(format!(
                "{} siblings, more than the limit of {max_siblings}",
                self.sibling_count()
            )));
        }
        if self.entries.len() > MAX_CONTEXT_ACTORS {
            return Err(Error::Malformed(format!("{} actors", self.entries.len())));
        }
        if let Some(typed) = &self.typed {
            typed.validate()?;
        }
        Ok(())
    }
}

/// The entries of two states merged, actor by actor (both sorted by actor).
fn merge_entries(mine: &[Entry], theirs: &[Entry]) -> Vec<Entry> {
    let (mut a, mut b) = (mine.iter().peekable(), theirs.iter().peekable());
    let mut entries = Vec::with_capacity(mine.len().max(theirs.len()));
    loop {
        let next = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => a.next().cloned(),
            (None, Some(_)) => b.next().cloned(),
            (Some(x), Some(y)) if x.actor < y.actor => a.next().cloned(),
            (Some(x), Some(y)) if x.actor > y.actor => b.next().cloned(),
            (Some(_), Some(_)) => {
                let (x, y) = (a.next().expect("peeked"), b.next().expect("peeked"));
                Some(merge_entry(x, y))
            }
        };
        entries.extend(next);
    }
    entries
}

fn merge_entry(x: &Entry, y: &Entry) -> Entry {
    let (hi, lo) = if x.counter >= y.counter {
        (x, y)
    } else {
        (y, x)
    };
    // `lo` has superseded every dot of this actor up to lo.counter - lo.len;
    // `hi`'s values above that line survive.
    let keep = usize::try_from(hi.counter - lo.counter)
        .unwrap_or(usize::MAX)
        .saturating_add(lo.values.len());
    Entry {
        actor: hi.actor,
        counter: hi.counter,
        values: hi.values.iter().take(keep).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use crate::crdt::{CausalContext, Operation};

    use super::*;

    const A: Actor = Actor(1);
    const B: Actor = Actor(2);

    fn data(s: &str) -> Value {
        Value::Data(s.as_bytes().to_vec())
    }

    fn values(s: &SiblingSet) -> BTreeSet<String> {
        s.values()
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
            .collect()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn concurrent_writes_through_one_coordinator_both_survive() {
        let empty = Context::default();
        let s = SiblingSet::new().update(&empty, data("x"), A).unwrap();
        let s = s.update(&empty, data("y"), A).unwrap();
        assert_eq!(values(&s), set(&["x", "y"]));
        // same non-empty context: both survive too
        let ctx = s.context();
        let s2 = s.update(&ctx, data("p"), A).unwrap();
        let s3 = s2.update(&ctx, data("q"), A).unwrap();
        assert_eq!(values(&s3), set(&["p", "q"]));
    }

    #[test]
    fn a_write_with_a_read_context_supersedes_exactly_what_was_read() {
        let empty = Context::default();
        let s = SiblingSet::new().update(&empty, data("v1"), A).unwrap();
        let read = s.context();
        // a concurrent write lands after the read, through another coordinator
        let s = s.update(&empty, data("v2"), B).unwrap();
        let s = s.update(&read, data("v3"), A).unwrap();
        assert_eq!(values(&s), set(&["v2", "v3"]));
        // resolving with the full context leaves one value
        let s = s.update(&s.context(), data("merged"), B).unwrap();
        assert_eq!(values(&s), set(&["merged"]));
        assert_eq!(s.sibling_count(), 1);
    }

    #[test]
    fn a_context_unknown_to_this_replica_still_supersedes_later() {
        // replica 1 took v1; the client read it there and wrote v2 with that
        // context through replica 2, which never saw v1.
        let r1 = SiblingSet::new()
            .update(&Context::default(), data("v1"), A)
            .unwrap();
        let r2 = SiblingSet::new()
            .update(&r1.context(), data("v2"), B)
            .unwrap();
        assert_eq!(values(&r1.merge(&r2)), set(&["v2"]));
        assert_eq!(values(&r2.merge(&r1)), set(&["v2"]));
    }

    #[test]
    fn an_expiring_value_reads_until_its_deadline_and_its_context_stays() {
        let v1 = SiblingSet::new()
            .update(&Context::default(), data("v1"), A)
            .unwrap();
        let expiring = Value::Expiring {
            data: b"v2".to_vec(),
            expires_ms: 1000,
        };
        let v2 = v1.update(&v1.context(), expiring, B).unwrap();
        assert_eq!(v2.live_values(999).collect::<Vec<_>>(), [b"v2"]);
        assert_eq!(v2.live_values(1000).count(), 0, "expired at its deadline");
        assert_eq!(v2.values().count(), 1, "still stored");
        assert_eq!((v2.ends_at(), v1.ends_at()), (Some(1000), None));
        assert!(!v2.is_gone_at(999) && v2.is_gone_at(1000));
        // A replica that missed v2 still holds v1: the merge is v2 alone,
        // so v1 never comes back when v2 expires.
        let merged = v1.merge(&v2);
        assert_eq!(merged, v2);
        assert_eq!(merged.live_values(5000).count(), 0);
        // A write with the context of the expired read replaces it.
        let again = merged.update(&merged.context(), data("v3"), A).unwrap();
        assert_eq!(again.live_values(5000).collect::<Vec<_>>(), [b"v3"]);
        assert_eq!(again.ends_at(), None);
    }

    #[test]
    fn values_written_before_deadlines_existed_decode_unchanged() {
        // Stored and sent by earlier versions: the variants keep their
        // indexes, so what is on disk and on the wire still decodes.
        assert_eq!(postcard::to_stdvec(&Value::Tombstone).unwrap(), [1]);
        assert_eq!(postcard::to_stdvec(&data("v")).unwrap(), [0, 1, b'v']);
        let expiring = Value::Expiring {
            data: b"v".to_vec(),
            expires_ms: 1,
        };
        assert_eq!(postcard::to_stdvec(&expiring).unwrap(), [2, 1, b'v', 1]);
    }

    #[test]
    fn tombstones_hide_the_key_but_keep_a_context() {
        let s = SiblingSet::new()
            .update(&Context::default(), data("v"), A)
            .unwrap();
        let d = s.update(&s.context(), Value::Tombstone, A).unwrap();
        assert!(d.is_gone_at(0));
        assert_eq!(d.values().count(), 0);
        assert!(!d.context().is_empty());
        // a write after the delete replaces the tombstone
        let w = d.update(&d.context(), data("again"), B).unwrap();
        assert!(!w.is_gone_at(0));
        assert_eq!(values(&w), set(&["again"]));
        // a concurrent write and a delete stay siblings
        let c = s.update(&s.context(), data("concurrent"), B).unwrap();
        let both = c.merge(&d);
        assert_eq!(values(&both), set(&["concurrent"]));
        assert_eq!(both.sibling_count(), 2);
        assert!(!both.is_gone_at(0));
    }

    #[test]
    fn siblings_carry_their_dots() {
        let s = SiblingSet::new()
            .update(&Context::default(), data("x"), A)
            .unwrap();
        let s = s.update(&Context::default(), data("y"), A).unwrap();
        let dots: Vec<Dot> = s.siblings().map(|x| x.dot).collect();
        assert_eq!(
            dots,
            vec![
                Dot {
                    actor: A,
                    counter: 2
                },
                Dot {
                    actor: A,
                    counter: 1
                }
            ]
        );
        assert!(s.context().covers(dots[0]));
        assert!(!Context::default().covers(dots[1]));
    }

    #[test]
    fn context_bytes_round_trip_and_reject_garbage() {
        let s = SiblingSet::new()
            .update(&Context::default(), data("x"), A)
            .unwrap();
        let s = s.update(&Context::default(), data("y"), B).unwrap();
        let ctx = s.context();
        assert_eq!(Context::from_bytes(&ctx.to_bytes()).unwrap(), ctx);
        assert_eq!(Context::from_bytes(&[]).unwrap(), Context::default());
        assert!(Context::from_bytes(&[9, 0]).is_err(), "unknown format");
        let mut trailing = ctx.to_bytes();
        trailing.push(0);
        assert!(Context::from_bytes(&trailing).is_err());
        let unsorted = Context {
            clock: vec![(B, 1), (A, 1)],
        };
        assert!(Context::from_bytes(&unsorted.to_bytes()).is_err());
        assert!(Context::from_bytes(&[CONTEXT_FORMAT, 0xff]).is_err());
    }

    #[test]
    fn a_maximal_context_counter_is_an_error_not_a_panic() {
        let ctx = Context {
            clock: vec![(A, u64::MAX)],
        };
        assert!(SiblingSet::new().update(&ctx, data("x"), A).is_err());
    }

    #[test]
    fn a_timed_delete_reads_as_gone_at_once_and_is_collectable_after_its_keep() {
        let s = SiblingSet::default()
            .update(&Context::default(), data("v"), A)
            .unwrap();
        let d = s
            .update(&s.context(), Value::Deleted { at_ms: 100 }, A)
            .unwrap();
        assert!(d.is_gone_at(0) && d.ends_at() == Some(0));
        assert_eq!(d.collectable_at(50), Some(150));
        // An untimed tombstone (earlier versions) is collectable at once;
        // an expiring value at its deadline, whatever the keep.
        let old = s.update(&s.context(), Value::Tombstone, A).unwrap();
        assert_eq!(old.collectable_at(50), Some(0));
        let expiring = Value::Expiring {
            data: b"v".to_vec(),
            expires_ms: 70,
        };
        assert_eq!(expiring.collectable_at(50), Some(70));
        // Concurrent siblings: the latest of them; a live one: never.
        let both = d.merge(&old.update(&Context::default(), expiring, B).unwrap());
        assert_eq!(both.collectable_at(50), Some(150));
        let live = d.merge(&s.update(&Context::default(), data("w"), B).unwrap());
        assert_eq!(live.collectable_at(50), None);
        // Stored and sent as a new variant: earlier indexes unchanged.
        assert_eq!(
            postcard::to_stdvec(&Value::Deleted { at_ms: 1 }).unwrap(),
            [3, 1]
        );
    }

    #[test]
    fn a_counter_stored_before_folds_is_read_and_marked_for_storing_again() {
        let mut s = SiblingSet::new();
        s.apply(A, &Operation::Increment(4), &CausalContext::default(), 0)
            .unwrap();
        let old = crate::protocol::at(5, || postcard::to_stdvec(&s)).unwrap();
        let current = postcard::to_stdvec(&s).unwrap();
        assert_ne!(old, current, "protocol 6 adds the folds");
        assert_eq!(SiblingSet::decode(&old).unwrap(), (s.clone(), true));
        assert_eq!(SiblingSet::decode(&current).unwrap(), (s, false));
    }

    #[test]
    fn a_data_type_state_ends_only_under_a_tombstone() {
        use crate::crdt::{CausalContext, Operation};
        let mut set = SiblingSet::new();
        let add = Operation::Add(vec![b"m".to_vec()]);
        set.apply(A, &add, &CausalContext::default(), 0).unwrap();
        assert_eq!(set.ends_at(), None, "a live set never ends");
        assert!(!set.is_empty());
        // A dropped namespace's key is deleted with a tombstone.
        let deleted = set.update(&set.context(), Value::Tombstone, B).unwrap();
        assert_eq!(deleted.ends_at(), Some(0));
        assert!(deleted.is_gone_at(0));
        assert_eq!(
            SiblingSet::decode(&postcard::to_stdvec(&deleted).unwrap()),
            Ok((deleted, false))
        );
    }

    #[test]
    fn validate_rejects_impossible_states() {
        let bad = SiblingSet {
            entries: vec![Entry {
                actor: A,
                counter: 1,
                values: vec![data("x"), data("y")],
            }],
            typed: None,
        };
        assert!(bad.validate(100).is_err());
        let unsorted = SiblingSet {
            entries: vec![
                Entry {
                    actor: B,
                    counter: 1,
                    values: vec![],
                },
                Entry {
                    actor: A,
                    counter: 1,
                    values: vec![],
                },
            ],
            typed: None,
        };
        assert!(unsorted.validate(100).is_err());
        let mut many = SiblingSet::new();
        for i in 0..5 {
            many = many
                .update(&Context::default(), data(&i.to_string()), A)
                .unwrap();
        }
        assert!(many.validate(5).is_ok());
        assert!(many.validate(4).is_err());
    }

    /// One write of a simulated history: its dot, the context it was written
    /// with, and its value.
    #[derive(Debug, Clone)]
    struct Write {
        dot: Dot,
        ctx: Context,
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Client reads replica `from`, writes through replica `at` (actor `at`).
        Put {
            at: usize,
            from: usize,
            blind: bool,
        },
        Delete {
            at: usize,
            from: usize,
        },
        /// Replica `to` merges replica `from`'s state.
        Sync {
            from: usize,
            to: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..3, 0usize..3, any::<bool>()).prop_map(|(at, from, blind)| Op::Put { at, from, blind }),
            1 => (0usize..3, 0usize..3).prop_map(|(at, from)| Op::Delete { at, from }),
            3 => (0usize..3, 0usize..3).prop_map(|(from, to)| Op::Sync { from, to }),
        ]
    }

    /// Runs a history on three replicas; returns every state reached and the
    /// writes made.
    fn run(ops: &[Op]) -> (Vec<SiblingSet>, [SiblingSet; 3], Vec<Write>) {
        let mut replicas: [SiblingSet; 3] = Default::default();
        let mut states = vec![SiblingSet::new()];
        let mut writes = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let (at, ctx, value) = match *op {
                Op::Sync { from, to } => {
                    replicas[to] = replicas[to].merge(&replicas[from]);
                    states.push(replicas[to].clone());
                    continue;
                }
                Op::Put {
                    at, blind: true, ..
                } => (
                    at,
                    Context::default(),
                    Value::Data(i.to_le_bytes().to_vec()),
                ),
                Op::Put {
                    at,
                    from,
                    blind: false,
                } => (
                    at,
                    replicas[from].context(),
                    Value::Data(i.to_le_bytes().to_vec()),
                ),
                Op::Delete { at, from } => (at, replicas[from].context(), Value::Tombstone),
            };
            let actor = Actor(at as u64);
            let next = replicas[at].update(&ctx, value, actor).unwrap();
            writes.push(Write {
                dot: Dot {
                    actor,
                    counter: next.context().get(actor),
                },
                ctx,
            });
            replicas[at] = next;
            states.push(replicas[at].clone());
        }
        (states, replicas, writes)
    }

    proptest! {

        #![proptest_config(crate::proptest_config())]
        #[test]
        fn merge_is_commutative_associative_idempotent(
            ops in prop::collection::vec(op(), 0..40),
            picks in prop::collection::vec(any::<prop::sample::Index>(), 3),
        ) {
            let (states, _, _) = run(&ops);
            let a = picks[0].get(&states);
            let b = picks[1].get(&states);
            let c = picks[2].get(&states);
            prop_assert_eq!(a.merge(b), b.merge(a));
            prop_assert_eq!(a.merge(b).merge(c), a.merge(&b.merge(c)));
            prop_assert_eq!(a.merge(a), a.clone());
            prop_assert!(a.merge(b).contains(a));
        }

        #[test]
        fn converged_state_holds_exactly_the_writes_no_context_covered(
            ops in prop::collection::vec(op(), 0..40),
        ) {
            let (_, replicas, writes) = run(&ops);
            let all = replicas[0].merge(&replicas[1]).merge(&replicas[2]);
            let expected: BTreeSet<Dot> = writes
                .iter()
                .filter(|w| !writes.iter().any(|o| o.ctx.covers(w.dot)))
                .map(|w| w.dot)
                .collect();
            let got: BTreeSet<Dot> = all.siblings().map(|s| s.dot).collect();
            prop_assert_eq!(got, expected);
            prop_assert!(all.validate(usize::MAX).is_ok());
        }

        #[test]
        fn encoding_round_trips(ops in prop::collection::vec(op(), 0..30)) {
            let (states, _, _) = run(&ops);
            for s in states {
                let bytes = postcard::to_stdvec(&s).unwrap();
                prop_assert_eq!(postcard::from_bytes::<SiblingSet>(&bytes).unwrap(), s);
            }
        }
    }
}

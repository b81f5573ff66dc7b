//! The data-type workload: counter, set and map operations on keys of the
//! namespaces `TALLY` (counters), `CARTS` (add-wins sets) and `PROFILES`
//! (maps: increments of the field `n`, writes and removals of the field
//! `r`, adds and removes of members of the set field `s`), planned and run
//! like every client request, and their exact checks.
//!
//! The simulator sees every operation a minting replica applied (its
//! delta) and the context each remove was applied with, so the checks are
//! exact:
//!
//! - applied once: no operation has two deltas (a retried or re-minted
//!   increment would count twice);
//! - counters (and a map's field `n`): the final value is the sum of the
//!   acknowledged increments plus some of the unacknowledged ones that a
//!   replica applied (all of them while no node was written off);
//! - maps: every value the field `r` holds or a read returned was written
//!   by someone;
//! - sets (and a map's field `s`): an add's dot is in the final set unless an applied operation's
//!   delta removed it (a remove that observed it, or a later add of the
//!   same member that replaced it), or it was not acknowledged and a
//!   removed node may have held it alone; a remove removes only dots its
//!   context observed; a dot an acknowledged operation removed never comes
//!   back; every member read was added by someone.
//!
//! With power losses (`fsync = periodic`) an applied operation may be
//! lost, so only the first and the last check run.

use std::collections::BTreeSet;

use crate::crdt::{CausalContext, FieldReading, Operation, Reading, Typed};
use crate::namespace;
use crate::version::{Dot, SiblingSet};

use super::Sim;

/// The counters' namespace, created by the operator with the others.
pub(super) const TALLY: &str = "tally";
/// The sets' namespace.
pub(super) const CARTS: &str = "carts";
/// The maps' namespace.
pub(super) const PROFILES: &str = "profiles";
/// Typed keys: counters, sets and maps in turn.
pub(super) const TYPED_KEYS: usize = 6;
/// A map's counter field, its register field and its set field.
const COUNT_FIELD: &[u8] = b"n";
const REGISTER_FIELD: &[u8] = b"r";
const SET_FIELD: &[u8] = b"s";
/// Members are drawn from a few, so adds of one member race each other
/// and the removes of it.
const MEMBERS: u64 = 4;
/// Increments by one of these: small, some negative.
const AMOUNTS: [i64; 6] = [-2, -1, 1, 2, 3, 5];

/// Typed key `j`'s stored form.
pub(super) fn typed_key(j: usize) -> Vec<u8> {
    let name = [TALLY, CARTS, PROFILES][j % 3];
    let name = namespace::Name::new(name).expect("a valid name");
    namespace::key_in(&name, format!("typed-{j}").as_bytes()).expect("a valid key")
}

/// One client operation on a typed key.
#[derive(Debug, Clone)]
pub struct TypedOp {
    pub key: usize,
    pub operation: Operation,
    pub acked: bool,
    /// What a remove was applied with (recorded as the minter received it).
    pub seen: Option<CausalContext>,
    /// Every delta a replica minted for it (more than one: applied twice).
    pub deltas: Vec<Typed>,
    pub start: u64,
}

/// One successful read of a set (its members) or a map (the values of
/// its register field and the members of its set field).
#[derive(Debug, Clone)]
pub struct TypedRead {
    pub key: usize,
    pub values: Vec<Vec<u8>>,
}

/// The members a set holds, or a map in its set field, with their dots.
fn members(typed: &Typed) -> Vec<(Dot, &[u8])> {
    match typed {
        Typed::Set(s) => s.entries().collect(),
        Typed::Map(m) => m.members_of(SET_FIELD).collect(),
        Typed::Counter(_) => Vec::new(),
    }
}

/// Whether `delta` removes `dot`: seen in its context, not among its
/// entries.
fn removes(delta: &Typed, dot: Dot) -> bool {
    match delta {
        Typed::Set(s) => s.context().contains(&dot) && !s.entries().any(|(d, _)| d == dot),
        Typed::Map(m) => {
            m.context().contains(&dot) && !m.members_of(SET_FIELD).any(|(d, _)| d == dot)
        }
        Typed::Counter(_) => false,
    }
}

/// A map's count in `COUNT_FIELD` and the values of `REGISTER_FIELD`.
fn map_fields(map: &Typed) -> (i64, Vec<Vec<u8>>) {
    let (mut count, mut values) = (0, Vec::new());
    if let Reading::Map(fields) = map.reading(false) {
        for field in fields {
            match field.value {
                FieldReading::Count(n) if field.name == COUNT_FIELD => count = n,
                FieldReading::Values(v) if field.name == REGISTER_FIELD => values = v,
                _ => {}
            }
        }
    }
    (count, values)
}

/// Whether `total` is `base` plus the sum of some of `maybe`.
fn within_subset_sums(total: i64, base: i64, maybe: &[i64]) -> bool {
    let mut sums = BTreeSet::from([base]);
    for m in maybe {
        let more: Vec<i64> = sums.iter().map(|s| s + m).collect();
        sums.extend(more);
    }
    sums.contains(&total)
}

/// Checks the typed operations against the final state of every key
/// (`finals[key]`); `durable` and `removed` as for `History::check`.
pub fn check(
    ops: &[TypedOp],
    reads: &[TypedRead],
    finals: &[SiblingSet],
    durable: bool,
    removed: usize,
) -> std::result::Result<(), String> {
    if let Some(op) = ops.iter().find(|op| op.deltas.len() > 1) {
        return Err(format!(
            "{:?} on key-{} (started at {} ms) was applied {} times",
            op.operation,
            op.key,
            op.start,
            op.deltas.len()
        ));
    }
    let added: BTreeSet<&[u8]> = ops
        .iter()
        .flat_map(|op| match &op.operation {
            Operation::Add(members) | Operation::AddToField { members, .. } => members.as_slice(),
            Operation::SetField { value, .. } => std::slice::from_ref(value),
            _ => &[],
        })
        .map(Vec::as_slice)
        .collect();
    let phantom = |key: usize, values: &[Vec<u8>]| match values
        .iter()
        .find(|v| !added.contains(v.as_slice()))
    {
        Some(v) => Err(format!(
            "key-{key} held {:?}, which nobody added or wrote",
            String::from_utf8_lossy(v)
        )),
        None => Ok(()),
    };
    for read in reads {
        phantom(read.key, &read.values)?;
    }
    if !durable {
        return Ok(());
    }
    let minted = |op: &&TypedOp| !op.deltas.is_empty();
    for (key, state) in finals.iter().enumerate() {
        let of_key = || ops.iter().filter(move |op| op.key == key);
        let counted = match state.typed() {
            Some(Typed::Counter(c)) => Some(i64::try_from(c.value()).unwrap_or(i64::MAX)),
            Some(map @ Typed::Map(_)) => {
                let (count, values) = map_fields(map);
                phantom(key, &values)?;
                Some(count)
            }
            _ => None,
        };
        if let Some(value) = counted {
            let amount = |op: &TypedOp| match op.operation {
                Operation::Increment(by) | Operation::IncrementField { by, .. } => by,
                _ => 0,
            };
            let acked: i64 = of_key().filter(|op| op.acked).map(amount).sum();
            let maybe: Vec<i64> = of_key()
                .filter(|op| !op.acked && (minted(op) || removed > 0))
                .map(amount)
                .collect();
            let all: i64 = of_key().filter(minted).map(amount).sum();
            let exact = removed > 0 || value == all;
            if !exact || !within_subset_sums(value, acked, &maybe) {
                return Err(format!(
                    "counter key-{key} is {value}: acknowledged {acked}, applied {all}, unacknowledged {maybe:?}"
                ));
            }
        }
        let held = state.typed().map(members).unwrap_or_default();
        for op in of_key().filter(minted) {
            let delta = &op.deltas[0];
            let removed_by = |dot: Dot| {
                of_key()
                    .filter(minted)
                    .any(|other| removes(&other.deltas[0], dot))
            };
            if matches!(
                op.operation,
                Operation::Add(_) | Operation::AddToField { .. }
            ) {
                for (dot, member) in members(delta) {
                    let present = held.iter().any(|(f, _)| *f == dot);
                    let written_off = !op.acked && removed > 0;
                    if !present && !written_off && !removed_by(dot) {
                        return Err(format!(
                            "the add of {:?} to key-{key} (dot {dot}, started at {} ms, {}) was lost",
                            String::from_utf8_lossy(member),
                            op.start,
                            if op.acked {
                                "acknowledged"
                            } else {
                                "not acknowledged"
                            }
                        ));
                    }
                }
            }
            let removal = matches!(
                op.operation,
                Operation::Remove(_) | Operation::RemoveFromField { .. }
            );
            if let (true, Some(seen)) = (removal, &op.seen)
                && let Some(dot) = delta.context().dots().find(|dot| !seen.contains(dot))
            {
                return Err(format!(
                    "a remove on key-{key} (started at {} ms) took away {dot}, which it never observed",
                    op.start
                ));
            }
            if (op.acked || removed == 0)
                && let Some((dot, member)) = held.iter().find(|(dot, _)| removes(delta, *dot))
            {
                return Err(format!(
                    "{:?} came back to key-{key} as {dot}, though {:?} (started at {} ms) removed it",
                    String::from_utf8_lossy(member),
                    op.operation,
                    op.start
                ));
            }
        }
    }
    Ok(())
}

impl Sim {
    /// The index of typed key `j` among the simulation's keys (after the
    /// others).
    pub(super) fn typed_index(&self, j: usize) -> usize {
        self.keys.len() - TYPED_KEYS + j
    }

    /// Whether key `k` is a typed one.
    pub(super) fn is_typed(&self, k: usize) -> bool {
        k >= self.keys.len() - TYPED_KEYS
    }

    /// Picks client `c`'s next operation on typed key `k`: None for a read.
    pub(super) fn typed_operation(&mut self, c: usize, k: usize) -> Option<(Operation, Vec<u8>)> {
        let member = format!("m{}", self.rng.below(MEMBERS)).into_bytes();
        let by = AMOUNTS[self.rng.below(AMOUNTS.len() as u64) as usize];
        // Half the removals send the context of the client's last read of
        // the key, half none (the coordinator reads first).
        let context = match self.clients[c].seen_contexts.get(&k) {
            Some(seen) if self.rng.below(2) == 0 => seen.to_bytes(),
            _ => Vec::new(),
        };
        let blind = Vec::new();
        let (kind, pick) = ((k - self.typed_index(0)) % 3, self.rng.below(6));
        match (kind, pick) {
            (_, 5) => None,
            (0, _) => Some((Operation::Increment(by), blind)),
            (1, 0..=2) => Some((Operation::Add(vec![member]), blind)),
            (1, _) => Some((Operation::Remove(vec![member]), context)),
            // A map: half its operations on the set field.
            _ if self.rng.below(2) == 0 => {
                let (field, members) = (SET_FIELD.to_vec(), vec![member]);
                if pick <= 2 {
                    Some((Operation::AddToField { field, members }, blind))
                } else {
                    Some((Operation::RemoveFromField { field, members }, context))
                }
            }
            (_, 0..=1) => {
                let field = COUNT_FIELD.to_vec();
                Some((Operation::IncrementField { field, by }, blind))
            }
            (_, 2 | 3) => {
                let field = REGISTER_FIELD.to_vec();
                let value = member;
                Some((Operation::SetField { field, value }, blind))
            }
            (_, _) => {
                let fields = vec![REGISTER_FIELD.to_vec()];
                Some((Operation::DeleteFields(fields), context))
            }
        }
    }

    /// Records a read of typed key `k` by client `c`; its context is what
    /// the client's next removals of the key may send.
    pub(super) fn typed_read(&mut self, c: usize, k: usize, state: &SiblingSet) {
        let Some(typed) = state.typed() else { return };
        let values = match typed {
            Typed::Set(set) => set.members().map(<[u8]>::to_vec).collect(),
            Typed::Map(_) => {
                let mut values = map_fields(typed).1;
                values.extend(members(typed).into_iter().map(|(_, m)| m.to_vec()));
                values
            }
            Typed::Counter(_) => return,
        };
        self.clients[c].seen_contexts.insert(k, typed.context());
        self.history.typed_reads.push(TypedRead { key: k, values });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::{Map, Set};
    use crate::version::Actor;

    fn op(operation: Operation, acked: bool, deltas: Vec<Typed>) -> TypedOp {
        TypedOp {
            key: 0,
            operation,
            acked,
            seen: None,
            deltas,
            start: 0,
        }
    }

    /// The checks can fail: a lost increment, an increment applied twice,
    /// a lost add and a resurrected member are each found.
    #[test]
    fn the_checks_find_lost_double_and_resurrected_operations() {
        let mut counter = None;
        let by3 = Operation::Increment(3);
        let none = CausalContext::default();
        let d = Typed::apply(&mut counter, Actor(1), &by3, &none, 0).unwrap();
        let finals = vec![SiblingSet::of_typed(counter.clone().unwrap())];
        let ok = [op(by3.clone(), true, vec![d.clone()])];
        assert_eq!(check(&ok, &[], &finals, true, 0), Ok(()));
        let lost = [ok[0].clone(), op(by3.clone(), true, vec![d.clone()])];
        assert!(check(&lost, &[], &finals, true, 0).is_err());
        let twice = [op(by3, true, vec![d.clone(), d])];
        assert!(check(&twice, &[], &finals, true, 0).is_err());

        let mut set = None;
        let add = Operation::Add(vec![b"m".to_vec()]);
        let added = Typed::apply(&mut set, Actor(1), &add, &none, 0).unwrap();
        let empty = vec![SiblingSet::of_typed(Typed::Set(Set::default()))];
        let adds = [op(add.clone(), true, vec![added.clone()])];
        assert!(check(&adds, &[], &empty, true, 0).is_err(), "a lost add");
        let full = vec![SiblingSet::of_typed(set.clone().unwrap())];
        assert_eq!(check(&adds, &[], &full, true, 0), Ok(()));
        let Some(Typed::Set(s)) = &set else { panic!() };
        let remove = Operation::Remove(vec![b"m".to_vec()]);
        let removed = Typed::apply(&mut set.clone(), Actor(2), &remove, s.context(), 0).unwrap();
        let mut with_remove = vec![op(add, true, vec![added]), op(remove, true, vec![removed])];
        with_remove[1].seen = Some(s.context().clone());
        assert!(
            check(&with_remove, &[], &full, true, 0).is_err(),
            "a removed member came back"
        );
        assert_eq!(check(&with_remove, &[], &empty, true, 0), Ok(()));
        let phantom = [TypedRead {
            key: 0,
            values: vec![b"x".to_vec()],
        }];
        assert!(check(&with_remove, &phantom, &empty, true, 0).is_err());

        // The same of a map's set field.
        let mut map = None;
        let (field, members) = (SET_FIELD.to_vec(), vec![b"m".to_vec()]);
        let add = Operation::AddToField { field, members };
        let added = Typed::apply(&mut map, Actor(1), &add, &none, 0).unwrap();
        let adds = [op(add, true, vec![added])];
        let empty = vec![SiblingSet::of_typed(Typed::Map(Map::default()))];
        assert!(check(&adds, &[], &empty, true, 0).is_err(), "a lost add");
        let full = vec![SiblingSet::of_typed(map.unwrap())];
        assert_eq!(check(&adds, &[], &full, true, 0), Ok(()));
    }
}

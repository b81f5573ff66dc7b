//! The exact counter, and the folding of retired writers' entries.
//!
//! Each writer (a node incarnation) that ever incremented a counter has an
//! entry, so a counter would grow by one entry per restart of every node
//! that writes it. Tombstone collection folds the entries of writers no
//! member writes as any more (`fold`): their sums move into a base, once
//! every member held the same copy twice a grace period apart (the same
//! guarantee a tombstone waits for, `crate::tombstones`).
//!
//! A fold is not a join: it rewrites the copy it was decided on, on each
//! member still holding exactly that copy. A copy that changed meanwhile
//! (a racing increment) keeps the folded writers' entries, so the join of
//! the two must not count them twice: the folded copy records, for the
//! writers its fold took (`Folds::taken`), the sums it moved into the base,
//! and an entry of such a writer counts only above them. The next fold
//! forgets that record (every copy then holds the same state again, with no
//! entry of those writers left), so a counter settles at one entry per
//! writer still in use, a base and no record.
//!
//! The fold's record lives one fold: a copy that missed two folds (kept
//! out of the cluster longer than two grace periods, as a restored backup
//! can be) would count the first fold's writers twice. Tombstone
//! collection assumes the same of deleted keys.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::version::Actor;

/// An exact counter: per writer, the sums of its increments and of its
/// decrements (each only grows, so the join is the larger of each), plus
/// what folds moved out of retired writers' entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub(super) writers: BTreeMap<Actor, (u64, u64)>,
    #[serde(with = "crate::protocol::since_6")]
    folds: Folds,
}

/// What folds did to a counter. Of two copies the one further on (more
/// folds) wins whole; copies a fold left alike agree on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Folds {
    /// Folds applied.
    epoch: u64,
    /// The sums of increments and decrements moved out of writers' entries.
    base: (u64, u64),
    /// The writers the last fold took, with their sums then: an entry of
    /// one of them (from a copy the fold missed) counts only above them.
    taken: BTreeMap<Actor, (u64, u64)>,
}

impl Counter {
    /// The sum of every increment.
    pub fn value(&self) -> i128 {
        let (up, down) = self.folds.base;
        let entries: i128 = self
            .writers
            .iter()
            .map(|(actor, &(up, down))| {
                let (u, d) = self.folds.taken.get(actor).copied().unwrap_or((0, 0));
                i128::from(up.saturating_sub(u)) - i128::from(down.saturating_sub(d))
            })
            .sum();
        i128::from(up) - i128::from(down) + entries
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
            folds: Folds::default(),
        })
    }

    pub fn join(&mut self, other: &Counter) {
        for (&actor, &(up, down)) in &other.writers {
            let mine = self.writers.entry(actor).or_insert((0, 0));
            *mine = (mine.0.max(up), mine.1.max(down));
        }
        if other.folds > self.folds {
            self.folds = other.folds.clone();
        }
    }

    /// Entries held: one per writer, and one per writer the last fold took.
    pub fn entries(&self) -> usize {
        self.writers.len() + self.folds.taken.len()
    }

    /// Whether a fold keeping only `current`'s entries would change this
    /// copy: it holds an entry of another writer, or the last fold's record.
    pub fn foldable(&self, current: &BTreeSet<Actor>) -> bool {
        !self.folds.taken.is_empty() || self.writers.keys().any(|w| !current.contains(w))
    }

    /// Every writer this copy names (entries and the last fold's record).
    pub fn named(&self) -> impl Iterator<Item = Actor> + '_ {
        self.writers.keys().chain(self.folds.taken.keys()).copied()
    }

    /// Folds the entries of every writer not in `current` (those no member
    /// writes as any more) into the base, and forgets the last fold's
    /// record; the value does not change. Refused if the base would
    /// overflow (the copy is then left as it is).
    pub fn fold(&self, current: &BTreeSet<Actor>) -> Result<Counter> {
        let mut next = Counter {
            writers: BTreeMap::new(),
            folds: Folds {
                epoch: self.folds.epoch.saturating_add(1),
                base: self.folds.base,
                taken: BTreeMap::new(),
            },
        };
        let overflow = || Error::InvalidRequest("folding overflows the counter's base".into());
        for (&actor, &(up, down)) in &self.writers {
            // A writer the last fold took is retired whatever a member says.
            let before = self.folds.taken.get(&actor).copied();
            if current.contains(&actor) && before.is_none() {
                next.writers.insert(actor, (up, down));
                continue;
            }
            let (u, d) = before.unwrap_or((0, 0));
            let base = &mut next.folds.base;
            base.0 = base
                .0
                .checked_add(up.saturating_sub(u))
                .ok_or_else(overflow)?;
            base.1 = base
                .1
                .checked_add(down.saturating_sub(d))
                .ok_or_else(overflow)?;
            next.folds.taken.insert(actor, (up.max(u), down.max(d)));
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn current(actors: &[u64]) -> BTreeSet<Actor> {
        actors.iter().copied().map(Actor).collect()
    }

    #[test]
    fn a_fold_keeps_the_value_and_a_copy_it_missed_is_not_counted_twice() {
        let mut s = Counter::default();
        for (actor, by) in [(1, 5), (2, -2), (3, 7), (2, 4)] {
            s.increment(Actor(actor), by).unwrap();
        }
        assert_eq!((s.value(), s.entries()), (14, 3));
        // Writers 1 and 2 retired; 3 still writes.
        let folded = s.fold(&current(&[3])).unwrap();
        assert_eq!(folded.value(), 14);
        assert_eq!(folded.writers.len(), 1);
        // A copy that raced (an increment of writer 3 after the probe)
        // joins the folded one: writers 1 and 2 count once.
        let mut raced = s.clone();
        let delta = raced.increment(Actor(3), 1).unwrap();
        let mut joined = folded.clone();
        joined.join(&raced);
        assert_eq!(joined.value(), 15);
        let mut other_way = raced.clone();
        other_way.join(&folded);
        assert_eq!(other_way, joined);
        // Every copy alike again (anti-entropy): the next fold forgets the
        // record and leaves one entry per writer still in use.
        let again = joined.fold(&current(&[3])).unwrap();
        assert_eq!(again.value(), 15);
        let last = again.fold(&current(&[3])).unwrap();
        assert_eq!((last.value(), last.entries()), (15, 1));
        assert!(!last.foldable(&current(&[3])));
        // An increment delta joins a folded copy as any other.
        let mut later = last.clone();
        later.join(&delta);
        assert_eq!(later.value(), 15, "already counted");
    }

    #[test]
    fn a_writer_the_last_fold_took_is_folded_again_even_if_named_current() {
        let mut s = Counter::default();
        s.increment(Actor(1), 3).unwrap();
        let folded = s.fold(&current(&[])).unwrap();
        // A copy the fold missed brings writer 1's entry back: it counts
        // nothing more, and a fold takes it whatever the members say.
        let mut joined = folded.clone();
        joined.join(&s);
        assert_eq!(joined.value(), 3);
        let next = joined.fold(&current(&[1])).unwrap();
        assert_eq!((next.value(), next.writers.len()), (3, 0));
    }

    #[test]
    fn a_fold_that_would_overflow_the_base_is_refused() {
        // Writer 2 incremented and decremented by nearly 2^64 each; the
        // base already holds 10.
        let mut s = Counter::default();
        s.increment(Actor(1), 10).unwrap();
        let mut s = s.fold(&current(&[])).unwrap();
        s.writers.insert(Actor(2), (u64::MAX - 1, u64::MAX - 3));
        assert_eq!(s.value(), 12);
        assert!(s.fold(&current(&[])).is_err());
        assert!(s.fold(&current(&[2])).is_ok(), "a current writer is kept");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Incr(usize, i32),
        /// Replica `r` restarts: it writes as a fresh writer from now on.
        Restart(usize),
        Sync(usize, usize),
        /// Every copy made alike (as collection requires), then folded on
        /// the replicas `mask` picks; the others miss the fold (raced).
        Fold([bool; 3]),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize, -100..100i32).prop_map(|(r, by)| Op::Incr(r, by)),
            1 => (0..3usize).prop_map(Op::Restart),
            3 => (0..3usize, 0..3usize).prop_map(|(a, b)| Op::Sync(a, b)),
            2 => any::<[bool; 3]>().prop_map(Op::Fold),
        ]
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        /// Three replicas increment, restart as fresh writers, sync and
        /// fold (some missing a fold): joined in any order the value is
        /// the sum of every increment, and two folds of alike copies with
        /// no increments between leave one entry per writer in use.
        #[test]
        fn folds_never_change_the_value(ops in proptest::collection::vec(op(), 1..80)) {
            let mut replicas = vec![Counter::default(); 3];
            let mut writer = [1u64, 2, 3];
            let mut fresh = 4;
            let mut sum = 0i128;
            let alike = |replicas: &mut Vec<Counter>| {
                let mut all = Counter::default();
                for r in replicas.iter() {
                    all.join(r);
                }
                for r in replicas.iter_mut() {
                    *r = all.clone();
                }
                all
            };
            for op in ops {
                match op {
                    Op::Incr(r, by) => {
                        replicas[r].increment(Actor(writer[r]), i64::from(by)).unwrap();
                        sum += i128::from(by);
                    }
                    Op::Restart(r) => {
                        writer[r] = fresh;
                        fresh += 1;
                    }
                    Op::Sync(a, b) => {
                        let b = replicas[b].clone();
                        replicas[a].join(&b);
                    }
                    Op::Fold(mask) => {
                        let all = alike(&mut replicas);
                        let folded = all.fold(&writer.iter().copied().map(Actor).collect()).unwrap();
                        prop_assert_eq!(folded.value(), all.value());
                        for (r, fold) in replicas.iter_mut().zip(mask) {
                            if fold {
                                *r = folded.clone();
                            }
                        }
                    }
                }
            }
            let mut forwards = Counter::default();
            let mut backwards = Counter::default();
            for (f, b) in replicas.iter().zip(replicas.iter().rev()) {
                forwards.join(f);
                backwards.join(b);
            }
            prop_assert_eq!(&forwards, &backwards, "commutative and associative");
            let mut twice = forwards.clone();
            twice.join(&forwards);
            prop_assert_eq!(&twice, &forwards, "idempotent");
            prop_assert_eq!(forwards.value(), sum);
            let current: BTreeSet<Actor> = writer.iter().copied().map(Actor).collect();
            let settled = forwards.fold(&current).unwrap().fold(&current).unwrap();
            prop_assert_eq!(settled.value(), sum);
            prop_assert!(settled.entries() <= 3, "{} entries", settled.entries());
            prop_assert!(!settled.foldable(&current));
        }
    }
}

//! The exact counter.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::version::Actor;

/// An exact counter: per writer, the sums of its increments and of its
/// decrements (each only grows, so the join is the larger of each).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub(super) writers: BTreeMap<Actor, (u64, u64)>,
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

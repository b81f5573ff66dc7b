//! The targets of a session, their votes, and what is left to replace a
//! target that fails: replicas a quorum read did not ask yet (spares),
//! then fallbacks (sloppy quorum).

use std::collections::VecDeque;

use crate::error::{Error, Result};
use crate::node::NodeId;

use super::route::Replica;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Vote {
    Waiting,
    Yes,
    No,
}

/// The targets of a session, their votes, and the spares and fallbacks
/// left.
#[derive(Debug, Clone)]
pub(super) struct Tally {
    pub(super) targets: Vec<Replica>,
    pub(super) votes: Vec<Vote>,
    /// Routed replicas not asked yet, each asked as it is when a target
    /// fails (a quorum read asks only R of them first).
    pub(super) spares: VecDeque<Replica>,
    pub(super) fallbacks: VecDeque<NodeId>,
    pub(super) needed: usize,
    /// Whether the client has its answer.
    pub(super) answered: bool,
}

impl Tally {
    pub(super) fn new(targets: Vec<Replica>, fallbacks: Vec<NodeId>, needed: usize) -> Self {
        Tally {
            votes: vec![Vote::Waiting; targets.len()],
            targets,
            spares: VecDeque::new(),
            fallbacks: fallbacks.into(),
            needed,
            answered: false,
        }
    }

    pub(super) fn index_of(&self, from: &NodeId) -> Option<usize> {
        self.targets.iter().position(|t| &t.node == from)
    }

    /// The index of `from` if it is a target that has not answered yet.
    pub(super) fn waiting(&self, from: &NodeId) -> Option<usize> {
        self.index_of(from)
            .filter(|&i| self.votes[i] == Vote::Waiting)
    }

    /// Whether `from` is a target that has not answered yet.
    pub(super) fn awaits(&self, from: &NodeId) -> bool {
        self.waiting(from).is_some()
    }

    /// Whether a spare or a fallback is left to replace a target.
    pub(super) fn has_fallback(&self) -> bool {
        !self.spares.is_empty() || !self.fallbacks.is_empty()
    }

    /// How long a target may stay silent before it is slow: `spare_ms`
    /// while a spare replica is left to read beside it (a quorum read, whose
    /// spares hold the key as the target does), `attempt_ms` otherwise.
    pub(super) fn slow_after(&self, attempt_ms: u64, spare_ms: u64) -> u64 {
        if self.spares.is_empty() {
            attempt_ms
        } else {
            spare_ms.min(attempt_ms)
        }
    }

    /// Records target `i`'s failure and adds a new target in its place if
    /// one is left (`add_for`). Returns its index.
    pub(super) fn fail(&mut self, i: usize) -> Option<usize> {
        self.votes[i] = Vote::No;
        self.add_for(i)
    }

    /// Adds a new target for target `i`, if one is left: the next spare,
    /// else the next fallback, standing in for the owner target `i` stood
    /// for. Returns its index.
    pub(super) fn add_for(&mut self, i: usize) -> Option<usize> {
        if let Some(spare) = self.spares.pop_front() {
            self.targets.push(spare);
            self.votes.push(Vote::Waiting);
            return Some(self.targets.len() - 1);
        }
        let node = self.fallbacks.pop_front()?;
        let failed = &self.targets[i];
        let owner = match (&failed.hint_for, failed.owns) {
            (Some(owner), false) => owner.clone(),
            _ => failed.node.clone(),
        };
        self.targets.push(Replica::stand_in(node, owner));
        self.votes.push(Vote::Waiting);
        Some(self.targets.len() - 1)
    }

    pub(super) fn yes(&self) -> usize {
        self.votes.iter().filter(|v| **v == Vote::Yes).count()
    }

    pub(super) fn reached(&self) -> bool {
        self.yes() >= self.needed
    }

    pub(super) fn impossible(&self) -> bool {
        self.votes.iter().filter(|v| **v != Vote::No).count() + self.spares.len() < self.needed
    }

    pub(super) fn complete(&self) -> bool {
        self.votes.iter().all(|v| *v != Vote::Waiting)
    }

    pub(super) fn quorum_error(&self) -> Error {
        Error::Quorum {
            needed: self.needed as u8,
            got: self.yes() as u8,
        }
    }

    /// The client's answer, unless it was given already.
    pub(super) fn answer<T>(&mut self, answer: Result<T>) -> Option<Result<T>> {
        (!std::mem::replace(&mut self.answered, true)).then_some(answer)
    }

    /// The deadline passed: a quorum error, if the client has no answer yet.
    pub(super) fn time_out<T>(&mut self) -> Option<Result<T>> {
        let e = self.quorum_error();
        self.answer(Err(e))
    }
}

//! A put, a delete or a data-type operation: the first target that can
//! mints the new version (or applies the operation), the minted sibling
//! set (or the operation's delta) goes to every other target, and the
//! client is answered after W acknowledgements.

use crate::crdt::{CausalContext, Operation};
use crate::error::{Error, ErrorKind, Result};
use crate::node::NodeId;
use crate::replica::ReplicaMsg;
use crate::version::{Context, Dot, SiblingSet, Value};

use super::route::Route;
use super::tally::{Tally, Vote};
use super::{Request, Step};

/// A put's answer: the minted sibling set and the new value's dot (None
/// for a data-type operation, which mints no sibling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub state: SiblingSet,
    pub dot: Option<Dot>,
}

/// What the minting target makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mint {
    /// A new version (a tombstone: a delete) over what `context` covers.
    Version { context: Context, value: Value },
    /// A data-type operation's effect; `seen` is the context of the read a
    /// remove is based on.
    Operation {
        operation: Operation,
        seen: CausalContext,
    },
}

pub struct PutSession {
    key: Vec<u8>,
    mint: Mint,
    pub(super) tally: Tally,
    pending: Vec<NodeId>,
    /// Index of the target asked to mint; None once minted (or given up).
    minter: Option<usize>,
    written: Option<Written>,
    /// What the other targets merge once minted: the minted set, or a
    /// data-type operation's delta.
    replicated: SiblingSet,
}

impl PutSession {
    /// Starts a write of what `mint` says, answering after `w`
    /// acknowledgements; `fallbacks` replace targets that fail.
    pub fn start(key: Vec<u8>, mint: Mint, route: Route, w: usize) -> (Self, Vec<Request>) {
        let mut session = PutSession {
            key,
            mint,
            tally: Tally::new(route.targets, route.fallbacks, w),
            pending: route.pending,
            minter: None,
            written: None,
            replicated: SiblingSet::new(),
        };
        let requests = session.mint_with(0);
        (session, requests)
    }

    /// The answer due right at the start (fewer than W targets exist).
    pub fn initial_answer(&mut self) -> Option<Result<Written>> {
        self.answer_if_due()
    }

    /// Asks target `i` (or the next one that has not failed) to mint.
    fn mint_with(&mut self, from: usize) -> Vec<Request> {
        let next = (from..self.tally.targets.len()).find(|&i| self.tally.votes[i] == Vote::Waiting);
        self.minter = next;
        next.map(|i| {
            let t = &self.tally.targets[i];
            let (key, hint_for) = (self.key.clone(), t.hint_for.clone());
            let msg = match &self.mint {
                Mint::Version { context, value } => ReplicaMsg::Update {
                    key,
                    context: context.clone(),
                    value: value.clone(),
                    hint_for,
                },
                Mint::Operation { operation, seen } => ReplicaMsg::Apply {
                    key,
                    operation: operation.clone(),
                    seen: seen.clone(),
                    hint_for,
                },
            };
            Request {
                to: t.node.clone(),
                msg,
            }
        })
        .into_iter()
        .collect()
    }

    /// The write of the minted set to target `i`.
    fn write_to(&self, i: usize, state: &SiblingSet) -> Request {
        let t = &self.tally.targets[i];
        Request {
            to: t.node.clone(),
            msg: ReplicaMsg::Write {
                key: self.key.clone(),
                state: state.clone(),
                hint_for: t.hint_for.clone(),
            },
        }
    }

    /// Target `i` minted `written`: `replicated` (the minted set, or an
    /// operation's delta) goes to every other target. Returns the writes.
    fn minted(&mut self, i: usize, replicated: SiblingSet, written: Written) -> Vec<Request> {
        self.tally.votes[i] = Vote::Yes;
        self.minter = None;
        self.replicated = replicated;
        self.written = Some(written);
        let mut next: Vec<Request> = (0..self.tally.targets.len())
            .filter(|&j| self.tally.votes[j] == Vote::Waiting)
            .map(|j| self.write_to(j, &self.replicated))
            .collect();
        next.extend(self.pending.iter().map(|node| Request {
            to: node.clone(),
            msg: ReplicaMsg::Write {
                key: self.key.clone(),
                state: self.replicated.clone(),
                hint_for: None,
            },
        }));
        next
    }

    /// Takes a reply from `from`; returns requests to send next and the
    /// client's answer if it is now due.
    pub fn on_reply(&mut self, from: &NodeId, reply: Result<ReplicaMsg>) -> Step<Written> {
        let Some(i) = self.tally.waiting(from) else {
            return Step::none();
        };
        let mut next = Vec::new();
        match (self.minter == Some(i), reply) {
            (true, Ok(ReplicaMsg::Updated { state, dot })) => {
                next = self.minted(
                    i,
                    state.clone(),
                    Written {
                        state,
                        dot: Some(dot),
                    },
                )
            }
            (true, Ok(ReplicaMsg::Applied { state, delta })) => {
                next = self.minted(i, delta, Written { state, dot: None })
            }
            (true, Err(e)) if e.kind() == ErrorKind::InvalidRequest => {
                // The request itself is wrong; every replica would refuse it.
                self.tally.votes[i] = Vote::No;
                self.minter = None;
                return Step {
                    send: Vec::new(),
                    answer: self.tally.answer(Err(e)),
                };
            }
            (true, Err(e)) if e.is_indeterminate() => {
                // The minter may still mint: another minter would give the
                // same write a second dot, which later writes over the one
                // acknowledged would not cover (a superseded or deleted
                // value would come back). The write's outcome is unknown.
                self.tally.fail(i);
                self.minter = None;
            }
            (true, _) => {
                // Refused or unreachable: it did not mint. The fallback (if
                // any) is appended; the next waiting target, perhaps that
                // fallback, mints.
                self.tally.fail(i);
                next = self.mint_with(i + 1);
            }
            (false, Ok(ReplicaMsg::Ack)) if self.written.is_some() => {
                self.tally.votes[i] = Vote::Yes
            }
            (false, _) => {
                if let Some(j) = self.tally.fail(i)
                    && self.written.is_some()
                {
                    next.push(self.write_to(j, &self.replicated));
                }
            }
        }
        Step {
            send: next,
            answer: self.answer_if_due(),
        }
    }

    /// Target `from` has not answered within its per-request time: a
    /// fallback takes its copy if one is left. The minter is waited for (it
    /// may still mint), and so is a target nobody could replace.
    pub fn on_slow(&mut self, from: &NodeId) -> Step<Written> {
        let minting = self
            .minter
            .is_some_and(|m| self.tally.targets[m].node == *from);
        if minting || !self.tally.has_fallback() {
            return Step::none();
        }
        self.on_reply(from, Err(Error::Timeout))
    }

    /// The deadline passed: answer with a quorum error if not answered yet.
    pub fn on_timeout(&mut self) -> Option<Result<Written>> {
        self.tally.time_out()
    }

    fn answer_if_due(&mut self) -> Option<Result<Written>> {
        if self.tally.answered {
            None
        } else if let Some(written) = self.written.as_ref().filter(|_| self.tally.reached()) {
            // Cloned only when answered: the set holds the value, which may
            // be megabytes.
            let written = written.clone();
            self.tally.answer(Ok(written))
        } else if self.tally.impossible() || (self.written.is_none() && self.minter.is_none()) {
            self.tally.time_out()
        } else {
            None
        }
    }

    /// The targets, as routed (and as replaced since).
    pub fn targets(&self) -> &[super::Replica] {
        &self.tally.targets
    }

    pub fn is_complete(&self) -> bool {
        self.tally.complete() || (self.written.is_none() && self.minter.is_none())
    }
}

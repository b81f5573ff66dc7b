//! A put or delete: the first target that can mints the new version, the
//! minted sibling set goes to every other target, and the client is
//! answered after W acknowledgements.

use crate::error::{Error, ErrorKind, Result};
use crate::node::NodeId;
use crate::replica::ReplicaMsg;
use crate::version::{Context, Dot, SiblingSet, Value};

use super::route::Route;
use super::tally::{Tally, Vote};
use super::{Request, Step};

/// A put's answer: the minted sibling set and the new value's dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub state: SiblingSet,
    pub dot: Dot,
}

pub struct PutSession {
    key: Vec<u8>,
    context: Context,
    value: Value,
    pub(super) tally: Tally,
    pending: Vec<NodeId>,
    /// Index of the target asked to mint; None once minted (or given up).
    minter: Option<usize>,
    written: Option<Written>,
}

impl PutSession {
    /// Starts a write of `value` (or a tombstone) over what `context` covers,
    /// answering after `w` acknowledgements; `fallbacks` replace targets
    /// that fail.
    pub fn start(
        key: Vec<u8>,
        context: Context,
        value: Value,
        route: Route,
        w: usize,
    ) -> (Self, Vec<Request>) {
        let mut session = PutSession {
            key,
            context,
            value,
            tally: Tally::new(route.targets, route.fallbacks, w),
            pending: route.pending,
            minter: None,
            written: None,
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
            Request {
                to: t.node.clone(),
                msg: ReplicaMsg::Update {
                    key: self.key.clone(),
                    context: self.context.clone(),
                    value: self.value.clone(),
                    hint_for: t.hint_for.clone(),
                },
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

    /// Takes a reply from `from`; returns requests to send next and the
    /// client's answer if it is now due.
    pub fn on_reply(&mut self, from: &NodeId, reply: Result<ReplicaMsg>) -> Step<Written> {
        let Some(i) = self
            .tally
            .index_of(from)
            .filter(|&i| self.tally.votes[i] == Vote::Waiting)
        else {
            return Step::none();
        };
        let mut next = Vec::new();
        match (self.minter == Some(i), reply) {
            (true, Ok(ReplicaMsg::Updated { state, dot })) => {
                self.tally.votes[i] = Vote::Yes;
                self.minter = None;
                next = (0..self.tally.targets.len())
                    .filter(|&j| self.tally.votes[j] == Vote::Waiting)
                    .map(|j| self.write_to(j, &state))
                    .collect();
                next.extend(self.pending.iter().map(|node| Request {
                    to: node.clone(),
                    msg: ReplicaMsg::Write {
                        key: self.key.clone(),
                        state: state.clone(),
                        hint_for: None,
                    },
                }));
                self.written = Some(Written { state, dot });
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
                if let (Some(j), Some(w)) = (self.tally.fail(i), &self.written) {
                    next.push(self.write_to(j, &w.state));
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
        } else if let Some(written) = self.written.clone().filter(|_| self.tally.reached()) {
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

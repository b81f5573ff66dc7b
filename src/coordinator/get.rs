//! A get: reads R targets (or every one), answers after R replies with the
//! merge of what it read, then names the replicas to repair.

use crate::config::ReadFrom;
use crate::error::Result;
use crate::node::NodeId;
use crate::replica::ReplicaMsg;
use crate::version::SiblingSet;

use super::route::Route;
use super::tally::{Tally, Vote};
use super::{Request, Step};

pub struct GetSession {
    key: Vec<u8>,
    pub(super) tally: Tally,
    /// What each target answered, by index.
    states: Vec<Option<SiblingSet>>,
    merged: SiblingSet,
}

impl GetSession {
    /// Starts a read of `key` from the route's targets, answering after `r`
    /// replies. With `ReadFrom::Quorum` it asks only `r` of them: the
    /// first (the coordinator, when it is a target), owners before
    /// stand-ins; the others are spares, asked in place of a target that
    /// fails. Fallbacks replace targets once no spare is left.
    pub fn start(key: Vec<u8>, route: Route, r: usize, from: ReadFrom) -> (Self, Vec<Request>) {
        let mut targets = route.targets;
        let spares = match from {
            ReadFrom::All => Vec::new(),
            ReadFrom::Quorum => {
                // A stable sort: the coordinator stays first among owners.
                targets.sort_by_key(|t| !t.owns);
                targets.split_off(r.min(targets.len()))
            }
        };
        let requests = targets.iter().map(|t| read(&t.node, &key)).collect();
        let mut tally = Tally::new(targets, route.fallbacks, r);
        tally.spares = spares.into();
        let session = GetSession {
            states: vec![None; tally.targets.len()],
            tally,
            key,
            merged: SiblingSet::new(),
        };
        (session, requests)
    }

    /// The answer for the client if none was given yet and one is due:
    /// right at the start when fewer than R targets exist.
    pub fn initial_answer(&mut self) -> Option<Result<SiblingSet>> {
        self.answer_if_due()
    }

    /// Takes a reply (or the failure to get one) from `from`; returns the
    /// requests to send next and the client's answer if it is now due.
    pub fn on_reply(&mut self, from: &NodeId, reply: Result<ReplicaMsg>) -> Step<SiblingSet> {
        let Some(i) = self.tally.waiting(from) else {
            return Step::none();
        };
        let mut next = Vec::new();
        match reply {
            Ok(ReplicaMsg::State { state }) => {
                self.merged = self.merged.merge(&state);
                self.states[i] = Some(state);
                self.tally.votes[i] = Vote::Yes;
            }
            Ok(_) | Err(_) => {
                if let Some(j) = self.tally.fail(i) {
                    next.push(self.read_added(j));
                }
            }
        }
        Step {
            send: next,
            answer: self.answer_if_due(),
        }
    }

    /// Target `from` has not answered within its per-request time: a spare
    /// or a fallback reads beside it if one is left. Its late answer still
    /// counts: the first R answers make the read.
    pub fn on_slow(&mut self, from: &NodeId) -> Step<SiblingSet> {
        let Some(i) = self.tally.waiting(from) else {
            return Step::none();
        };
        let Some(j) = self.tally.add_for(i) else {
            return Step::none();
        };
        Step {
            send: vec![self.read_added(j)],
            answer: None,
        }
    }

    /// The read of target `j`, just added in another's place or beside it.
    fn read_added(&mut self, j: usize) -> Request {
        self.states.push(None);
        read(&self.tally.targets[j].node, &self.key)
    }

    /// The deadline passed: answer with a quorum error if not answered yet.
    pub fn on_timeout(&mut self) -> Option<Result<SiblingSet>> {
        self.tally.time_out()
    }

    fn answer_if_due(&mut self) -> Option<Result<SiblingSet>> {
        if self.tally.answered {
            None
        } else if self.tally.reached() {
            self.tally.answer(Ok(self.merged.clone()))
        } else if self.tally.impossible() {
            self.tally.time_out()
        } else {
            None
        }
    }

    /// Every target has answered or failed: nothing more will arrive.
    pub fn is_complete(&self) -> bool {
        self.tally.complete()
    }

    /// Read repair: writes of the merged set to every target that answered
    /// with less than it. Call once, when complete or at the deadline.
    pub fn repairs(&self) -> Vec<Request> {
        self.tally
            .targets
            .iter()
            .zip(&self.states)
            .filter_map(|(t, state)| {
                let state = state.as_ref()?;
                (!state.contains(&self.merged)).then(|| Request {
                    to: t.node.clone(),
                    msg: ReplicaMsg::Write {
                        key: self.key.clone(),
                        state: self.merged.clone(),
                        hint_for: t.hint_for.clone(),
                    },
                })
            })
            .collect()
    }
}

pub(super) fn read(to: &NodeId, key: &[u8]) -> Request {
    Request {
        to: to.clone(),
        msg: ReplicaMsg::Read { key: key.to_vec() },
    }
}

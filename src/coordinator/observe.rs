//! A remove sent without a context: the coordinator reads the key at R
//! first and removes what that read observed (the merged set's context),
//! so an add acknowledged before the remove was sent is taken away even
//! where the minting replica had not received it yet. Then it runs as a
//! put session applying the remove.
//!
//! Replies are told apart by kind: a `State` is the read's; once the write
//! has started, a failure goes to the read while the read still awaits
//! that node, else to the write. A failure given to the wrong one costs
//! at worst a vote (a remove applied twice removes the same dots).

use crate::config::ReadFrom;
use crate::crdt::{Operation, Typed};
use crate::error::Result;
use crate::node::NodeId;
use crate::replica::ReplicaMsg;
use crate::version::SiblingSet;

use super::put::{Mint, PutSession, Written};
use super::route::Route;
use super::tally::Tally;
use super::{GetSession, Request, Step};

pub struct ObserveSession {
    read: GetSession,
    /// Started once the read answered.
    write: Option<PutSession>,
    /// What the write needs, until it starts.
    plan: Option<Plan>,
}

struct Plan {
    key: Vec<u8>,
    operation: Operation,
    route: Route,
    w: usize,
}

impl ObserveSession {
    /// Starts the read of `key` at `r` from the replicas `from` names;
    /// `operation` (a remove) follows at `w`, to the same route.
    pub fn start(
        key: Vec<u8>,
        operation: Operation,
        route: Route,
        (r, from): (usize, ReadFrom),
        w: usize,
    ) -> (Self, Vec<Request>) {
        let (read, initial) = GetSession::start(key.clone(), route.clone(), r, from);
        let session = ObserveSession {
            read,
            write: None,
            plan: Some(Plan {
                key,
                operation,
                route,
                w,
            }),
        };
        (session, initial)
    }

    /// The answer due at the start: the read's quorum cannot be reached.
    pub fn initial_answer(&mut self) -> Option<Result<Written>> {
        self.read.initial_answer().and_then(|r| r.err()).map(Err)
    }

    pub fn on_reply(&mut self, from: &NodeId, reply: Result<ReplicaMsg>) -> Step<Written> {
        let for_read = match (&reply, &self.write) {
            (_, None) | (Ok(ReplicaMsg::State { .. }), _) => true,
            (Err(_), Some(_)) => self.read.tally.awaits(from),
            (Ok(_), Some(_)) => false,
        };
        match &mut self.write {
            Some(write) if !for_read => write.on_reply(from, reply),
            _ => {
                let step = self.read.on_reply(from, reply);
                self.after_read(step)
            }
        }
    }

    /// The read's step, and once it answered, the write's start.
    fn after_read(&mut self, step: Step<SiblingSet>) -> Step<Written> {
        let Step { mut send, answer } = step;
        let answer = match answer {
            Some(Ok(state)) => self.plan.take().and_then(|plan| {
                let seen = state.typed().map(Typed::context).unwrap_or_default();
                let mint = Mint::Operation {
                    operation: plan.operation,
                    seen,
                };
                let (mut write, initial) = PutSession::start(plan.key, mint, plan.route, plan.w);
                send.extend(initial);
                let answer = write.initial_answer();
                self.write = Some(write);
                answer
            }),
            Some(Err(e)) => {
                self.plan = None;
                Some(Err(e))
            }
            None => None,
        };
        Step { send, answer }
    }

    /// The targets of the phase under way: the write's once it started.
    pub(super) fn tally(&self) -> &Tally {
        match &self.write {
            Some(write) => &write.tally,
            None => &self.read.tally,
        }
    }

    pub fn on_slow(&mut self, from: &NodeId) -> Step<Written> {
        match &mut self.write {
            Some(write) => write.on_slow(from),
            None => {
                let step = self.read.on_slow(from);
                self.after_read(step)
            }
        }
    }

    pub fn on_timeout(&mut self) -> Option<Result<Written>> {
        match &mut self.write {
            Some(write) => write.on_timeout(),
            None => self.read.on_timeout().and_then(|r| r.err()).map(Err),
        }
    }

    /// The write is complete, or the read failed (no write will start).
    pub fn is_complete(&self) -> bool {
        match &self.write {
            Some(write) => write.is_complete(),
            None => self.plan.is_none(),
        }
    }
}

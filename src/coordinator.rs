//! Coordinator sessions: one state machine per client get, put or delete.
//!
//! A session is given its targets (the routed preference list: owners that
//! are up, plus hinted stand-ins for owners that are down), the fallbacks
//! (further healthy nodes of the extended preference list) and a quorum. It
//! emits the replica requests to send, takes the replies (or failures) as
//! they come, and answers the client exactly once: after R (get) or W
//! (put/delete) successes, as soon as that quorum has become impossible, or
//! with a quorum error when the shell reports the deadline.
//!
//! Sloppy quorum: when a target fails (refused, lost, or silent past its
//! per-request timeout), the next fallback takes its place, holding a hint
//! for the owner the failed target stood for. A target that is only slow
//! (`on_slow`) is replaced only while a fallback is left; otherwise, and
//! always for the put's minter (nobody else may mint), the session keeps
//! waiting for it until the deadline: a late answer still counts, so a busy
//! replica in a cluster of N nodes costs latency, not the write.
//!
//! - Get: reads every target, merges what it reads; once every target has
//!   answered (or the deadline passed) `repairs()` names the replicas that
//!   answered with less than the merged set (read repair).
//! - Put: asks the first target to mint the new version (`Update`); if that
//!   target refuses or cannot be reached, the next one mints. If it does not
//!   answer, it may still mint, so nobody else does (a second dot for the
//!   same write would escape the contexts of later writes): the put fails.
//!   The minted sibling set is then written to every other target; the
//!   minter's own write counts toward W.
//!
//! Errors that say the request itself is wrong (a bad context, too many
//! siblings) end the session at once; a node that is down or slow only
//! costs its vote.

use std::collections::VecDeque;

use crate::error::{Error, ErrorKind, Result};
use crate::liveness::Health;
use crate::node::NodeId;
use crate::partition::Partition;
use crate::replica::ReplicaMsg;
use crate::ring::Ring;
use crate::version::{Context, Dot, SiblingSet, Value};
use crate::wire::ClientReply;

/// A replica request the shell must send, to a node (possibly itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub to: NodeId,
    pub msg: ReplicaMsg,
}

/// A routed replica: a node, and the owner it keeps a hint for, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub node: NodeId,
    /// Whether `node` replicates the key itself; else it is a sloppy-quorum
    /// stand-in for `hint_for`.
    pub owns: bool,
    /// The owner to hand the write to later: the one a stand-in replaces,
    /// or, on an owner, another owner that is down or only suspect with
    /// nobody else to keep its copy.
    pub hint_for: Option<NodeId>,
}

impl Replica {
    pub fn owner(node: NodeId) -> Self {
        Replica {
            node,
            owns: true,
            hint_for: None,
        }
    }

    pub fn stand_in(node: NodeId, owner: NodeId) -> Self {
        Replica {
            node,
            owns: false,
            hint_for: Some(owner),
        }
    }
}

impl Route {
    /// Routes `key` as coordinator `me` sees the cluster (`health` of each
    /// node): the first `n` nodes up of the extended preference list
    /// (hinted stand-ins for the owners that are not), the further nodes up
    /// as fallbacks, and the pending replicas up. When the whole ring has
    /// fewer than `n` nodes up, suspect nodes count as up: a suspect may
    /// only be slow (a busy node's gossip times out too), and asking it
    /// beats failing at once for want of replicas. Down nodes are never
    /// asked. A put is minted by the first target: `me` when it is one,
    /// which saves a round trip and does not depend on a peer.
    pub fn plan(
        ring: &Ring,
        key: &[u8],
        n: usize,
        me: &NodeId,
        health: impl Fn(&NodeId) -> Health,
    ) -> (Partition, Route) {
        let p = ring.partition_of(key);
        let mut routed = ring.route(p, n, |node| health(node) == Health::Up);
        let lenient = routed.len() < n;
        let usable = |node: &NodeId| match health(node) {
            Health::Up => true,
            Health::Suspect => lenient,
            Health::Down => false,
        };
        if lenient {
            routed = ring.route(p, n, usable);
        }
        let fallbacks = ring
            .fallbacks(p, &routed, usable)
            .into_iter()
            .cloned()
            .collect();
        let current = ring.preference_list(p, n);
        let pending = ring
            .pending_preference_list(p, n)
            .into_iter()
            .filter(|node| !current.contains(node) && usable(node))
            .cloned()
            .collect();
        let mut targets: Vec<Replica> = routed
            .into_iter()
            .map(|t| Replica {
                node: t.node.clone(),
                owns: current.contains(&t.node),
                hint_for: t.hint_for.cloned(),
            })
            .collect();
        if lenient {
            backup_hints(&mut targets, |node| health(node) == Health::Up);
        }
        if let Some(i) = targets.iter().position(|t| &t.node == me) {
            targets[..=i].rotate_right(1);
        }
        let route = Route {
            targets,
            fallbacks,
            pending,
        };
        (p, route)
    }
}

impl Route {
    /// Drops the hints owners would keep for other owners (stand-ins keep
    /// theirs): where hints are not handed over (`hints.deliver = false`),
    /// such a hint would never go, and would only hold back the collection
    /// of the key's tombstone.
    pub fn drop_owner_hints(&mut self) {
        for t in self.targets.iter_mut().filter(|t| t.owns) {
            t.hint_for = None;
        }
    }
}

/// With fewer than N nodes up, an owner that is only suspect is asked
/// directly (it may just be slow); if it is in fact gone, its copy would be
/// lost until anti-entropy, so an owner that is up and keeps no hint yet
/// keeps one for it too. A delivery to an owner that did take the write
/// merges nothing new.
fn backup_hints(targets: &mut [Replica], is_up: impl Fn(&NodeId) -> bool) {
    let suspects: Vec<NodeId> = targets
        .iter()
        .filter(|t| t.owns && !is_up(&t.node))
        .map(|t| t.node.clone())
        .collect();
    let keepers = targets
        .iter_mut()
        .filter(|t| t.owns && t.hint_for.is_none() && is_up(&t.node));
    for (keeper, suspect) in keepers.zip(suspects) {
        keeper.hint_for = Some(suspect);
    }
}

/// Where a session's requests go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// The first N healthy nodes of the extended preference list.
    pub targets: Vec<Replica>,
    /// Healthy nodes further along, to replace targets that fail.
    pub fallbacks: Vec<NodeId>,
    /// Pending replicas (receiving the partition in a move): they are sent
    /// every write too, but their acknowledgements do not count toward W.
    pub pending: Vec<NodeId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vote {
    Waiting,
    Yes,
    No,
}

/// The targets of a session, their votes, and the fallbacks left.
#[derive(Debug, Clone)]
struct Tally {
    targets: Vec<Replica>,
    votes: Vec<Vote>,
    fallbacks: VecDeque<NodeId>,
    needed: usize,
    /// Whether the client has its answer.
    answered: bool,
}

impl Tally {
    fn new(targets: Vec<Replica>, fallbacks: Vec<NodeId>, needed: usize) -> Self {
        Tally {
            votes: vec![Vote::Waiting; targets.len()],
            targets,
            fallbacks: fallbacks.into(),
            needed,
            answered: false,
        }
    }

    fn index_of(&self, from: &NodeId) -> Option<usize> {
        self.targets.iter().position(|t| &t.node == from)
    }

    fn has_fallback(&self) -> bool {
        !self.fallbacks.is_empty()
    }

    /// Records target `i`'s failure and, if a fallback is left, adds it as a
    /// new target standing in for the same owner. Returns its index.
    fn fail(&mut self, i: usize) -> Option<usize> {
        self.votes[i] = Vote::No;
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

    fn yes(&self) -> usize {
        self.votes.iter().filter(|v| **v == Vote::Yes).count()
    }

    fn reached(&self) -> bool {
        self.yes() >= self.needed
    }

    fn impossible(&self) -> bool {
        self.votes.iter().filter(|v| **v != Vote::No).count() < self.needed
    }

    fn complete(&self) -> bool {
        self.votes.iter().all(|v| *v != Vote::Waiting)
    }

    fn quorum_error(&self) -> Error {
        Error::Quorum {
            needed: self.needed as u8,
            got: self.yes() as u8,
        }
    }

    /// The client's answer, unless it was given already.
    fn answer<T>(&mut self, answer: Result<T>) -> Option<Result<T>> {
        (!std::mem::replace(&mut self.answered, true)).then_some(answer)
    }

    /// The deadline passed: a quorum error, if the client has no answer yet.
    fn time_out<T>(&mut self) -> Option<Result<T>> {
        let e = self.quorum_error();
        self.answer(Err(e))
    }
}

pub struct GetSession {
    key: Vec<u8>,
    tally: Tally,
    /// What each target answered, by index.
    states: Vec<Option<SiblingSet>>,
    merged: SiblingSet,
}

impl GetSession {
    /// Starts a read of `key` from `targets`, answering after `r` replies;
    /// `fallbacks` replace targets that fail.
    pub fn start(key: Vec<u8>, route: Route, r: usize) -> (Self, Vec<Request>) {
        let requests = route.targets.iter().map(|t| read(&t.node, &key)).collect();
        let session = GetSession {
            states: vec![None; route.targets.len()],
            tally: Tally::new(route.targets, route.fallbacks, r),
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
    pub fn on_reply(
        &mut self,
        from: &NodeId,
        reply: Result<ReplicaMsg>,
    ) -> (Vec<Request>, Option<Result<SiblingSet>>) {
        let Some(i) = self
            .tally
            .index_of(from)
            .filter(|&i| self.tally.votes[i] == Vote::Waiting)
        else {
            return (Vec::new(), None);
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
                    self.states.push(None);
                    next.push(read(&self.tally.targets[j].node, &self.key));
                }
            }
        }
        (next, self.answer_if_due())
    }

    /// Target `from` has not answered within its per-request time: a
    /// fallback reads in its place if one is left; else it is waited for.
    pub fn on_slow(&mut self, from: &NodeId) -> (Vec<Request>, Option<Result<SiblingSet>>) {
        if !self.tally.has_fallback() {
            return (Vec::new(), None);
        }
        self.on_reply(from, Err(Error::Timeout))
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

fn read(to: &NodeId, key: &[u8]) -> Request {
    Request {
        to: to.clone(),
        msg: ReplicaMsg::Read { key: key.to_vec() },
    }
}

/// A put's answer: the minted sibling set and the new value's dot.
pub type Written = (SiblingSet, Dot);

pub struct PutSession {
    key: Vec<u8>,
    context: Context,
    value: Value,
    tally: Tally,
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
    pub fn on_reply(
        &mut self,
        from: &NodeId,
        reply: Result<ReplicaMsg>,
    ) -> (Vec<Request>, Option<Result<Written>>) {
        let Some(i) = self
            .tally
            .index_of(from)
            .filter(|&i| self.tally.votes[i] == Vote::Waiting)
        else {
            return (Vec::new(), None);
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
                self.written = Some((state, dot));
            }
            (true, Err(e)) if e.kind() == ErrorKind::InvalidRequest => {
                // The request itself is wrong; every replica would refuse it.
                self.tally.votes[i] = Vote::No;
                self.minter = None;
                return (Vec::new(), self.tally.answer(Err(e)));
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
                if let (Some(j), Some((state, _))) = (self.tally.fail(i), &self.written) {
                    next.push(self.write_to(j, state));
                }
            }
        }
        (next, self.answer_if_due())
    }

    /// Target `from` has not answered within its per-request time: a
    /// fallback takes its copy if one is left. The minter is waited for (it
    /// may still mint), and so is a target nobody could replace.
    pub fn on_slow(&mut self, from: &NodeId) -> (Vec<Request>, Option<Result<Written>>) {
        let minting = self
            .minter
            .is_some_and(|m| self.tally.targets[m].node == *from);
        if minting || !self.tally.has_fallback() {
            return (Vec::new(), None);
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

    pub fn is_complete(&self) -> bool {
        self.tally.complete() || (self.written.is_none() && self.minter.is_none())
    }
}

/// What a session answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Read(SiblingSet),
    Written(Written),
}

/// The client's reply to a session's outcome: a read's live values and
/// context, or a write's new context with the values of the siblings it
/// kept (the ones a write with that context supersedes, besides the new
/// value).
pub fn client_reply(outcome: Result<Outcome>) -> ClientReply {
    match outcome {
        Ok(Outcome::Read(state)) => ClientReply::Value {
            values: state.values().map(<[u8]>::to_vec).collect(),
            context: state.context().to_bytes(),
        },
        Ok(Outcome::Written((state, dot))) => ClientReply::Written {
            context: state.context().to_bytes(),
            others: state
                .siblings()
                .filter(|s| s.dot != dot)
                .filter_map(|s| match s.value {
                    Value::Data(d) => Some(d.clone()),
                    Value::Tombstone => None,
                })
                .collect(),
        },
        Err(e) => ClientReply::error(&e),
    }
}

/// A get or a put session behind one interface, as the shells drive them.
pub enum Session {
    Get(GetSession),
    Put(PutSession),
}

impl Session {
    pub fn initial_answer(&mut self) -> Option<Result<Outcome>> {
        match self {
            Session::Get(g) => g.initial_answer().map(|r| r.map(Outcome::Read)),
            Session::Put(p) => p.initial_answer().map(|r| r.map(Outcome::Written)),
        }
    }

    pub fn on_reply(
        &mut self,
        from: &NodeId,
        reply: Result<ReplicaMsg>,
    ) -> (Vec<Request>, Option<Result<Outcome>>) {
        match self {
            Session::Get(g) => {
                let (next, answer) = g.on_reply(from, reply);
                (next, answer.map(|r| r.map(Outcome::Read)))
            }
            Session::Put(p) => {
                let (next, answer) = p.on_reply(from, reply);
                (next, answer.map(|r| r.map(Outcome::Written)))
            }
        }
    }

    /// Whether a slow target could still be replaced (else `on_slow` does
    /// nothing, and a shell need not time targets).
    pub fn has_fallback(&self) -> bool {
        match self {
            Session::Get(g) => g.tally.has_fallback(),
            Session::Put(p) => p.tally.has_fallback(),
        }
    }

    pub fn on_slow(&mut self, from: &NodeId) -> (Vec<Request>, Option<Result<Outcome>>) {
        match self {
            Session::Get(g) => {
                let (next, answer) = g.on_slow(from);
                (next, answer.map(|r| r.map(Outcome::Read)))
            }
            Session::Put(p) => {
                let (next, answer) = p.on_slow(from);
                (next, answer.map(|r| r.map(Outcome::Written)))
            }
        }
    }

    pub fn on_timeout(&mut self) -> Option<Result<Outcome>> {
        match self {
            Session::Get(g) => g.on_timeout().map(|r| r.map(Outcome::Read)),
            Session::Put(p) => p.on_timeout().map(|r| r.map(Outcome::Written)),
        }
    }

    pub fn is_complete(&self) -> bool {
        match self {
            Session::Get(g) => g.is_complete(),
            Session::Put(p) => p.is_complete(),
        }
    }

    /// The read repairs to send when the session ends (none for a put).
    pub fn repairs(&self) -> Vec<Request> {
        match self {
            Session::Get(g) => g.repairs(),
            Session::Put(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Actor;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn owners(names: &[&str]) -> Vec<Replica> {
        names.iter().map(|n| Replica::owner(id(n))).collect()
    }

    fn state(v: &str, actor: u64) -> SiblingSet {
        SiblingSet::new()
            .update(
                &Context::default(),
                Value::Data(v.as_bytes().to_vec()),
                Actor(actor),
            )
            .unwrap()
    }

    fn minted(v: &str, actor: u64) -> ReplicaMsg {
        let state = state(v, actor);
        let dot = state.siblings().next().unwrap().dot;
        ReplicaMsg::Updated { state, dot }
    }

    fn down() -> Error {
        Error::Unavailable("peer down".into())
    }

    #[test]
    fn a_write_reply_names_the_live_siblings_other_than_the_new_value() {
        // Three concurrent writes, one of them a delete; "c" is the new one.
        let concurrent = |value: Value, actor: u64| {
            SiblingSet::new()
                .update(&Context::default(), value, Actor(actor))
                .unwrap()
        };
        let written = concurrent(Value::Data(b"c".to_vec()), 3);
        let dot = written.siblings().next().unwrap().dot;
        let state = state("a", 1)
            .merge(&concurrent(Value::Tombstone, 2))
            .merge(&written);
        match client_reply(Ok(Outcome::Written((state.clone(), dot)))) {
            ClientReply::Written { context, others } => {
                assert_eq!(others, vec![b"a".to_vec()]);
                assert_eq!(context, state.context().to_bytes());
            }
            other => panic!("{other:?}"),
        }
        match client_reply(Ok(Outcome::Read(state.clone()))) {
            ClientReply::Value {
                mut values,
                context,
            } => {
                values.sort();
                assert_eq!(values, vec![b"a".to_vec(), b"c".to_vec()]);
                assert_eq!(context, state.context().to_bytes());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(client_reply(Err(down())), ClientReply::error(&down()));
    }

    fn route(targets: &[&str], fallbacks: &[&str]) -> Route {
        Route {
            targets: owners(targets),
            fallbacks: fallbacks.iter().map(|f| id(f)).collect(),
            pending: vec![],
        }
    }

    #[test]
    fn suspects_complete_the_targets_only_when_too_few_nodes_are_up() {
        use crate::ring::tests::ring_of;
        let health = |suspect: &'static [&str], down: &'static [&str]| {
            move |n: &NodeId| {
                if suspect.contains(&n.as_str()) {
                    Health::Suspect
                } else if down.contains(&n.as_str()) {
                    Health::Down
                } else {
                    Health::Up
                }
            }
        };
        let nodes = |r: &Route| -> Vec<String> {
            let mut v: Vec<String> = r.targets.iter().map(|t| t.node.to_string()).collect();
            v.sort();
            v
        };
        let me = id("n00");
        // Five nodes, two suspect: three are up, so the suspects are
        // routed around (stand-ins hold hints for them).
        let (_, r) = Route::plan(&ring_of(5, 64), b"k", 3, &me, health(&["n01", "n02"], &[]));
        assert_eq!(nodes(&r), ["n00", "n03", "n04"]);
        assert!(r.fallbacks.is_empty());
        // Three nodes, two suspect: asking them beats failing at once; the
        // one up keeps a hint for one of them, should it be gone.
        let (_, r) = Route::plan(&ring_of(3, 64), b"k", 3, &me, health(&["n01", "n02"], &[]));
        assert_eq!(nodes(&r), ["n00", "n01", "n02"]);
        let hints = |r: &Route| -> Vec<(String, String)> {
            r.targets
                .iter()
                .filter_map(|t| Some((t.node.to_string(), t.hint_for.as_ref()?.to_string())))
                .collect()
        };
        let kept = hints(&r);
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(kept[0].0, "n00");
        assert!(["n01", "n02"].contains(&kept[0].1.as_str()));
        // A node down is never asked, and with nobody to stand in for it an
        // owner that is up keeps its hint; a suspect still is asked when
        // needed.
        let (_, r) = Route::plan(&ring_of(3, 64), b"k", 3, &me, health(&["n01"], &["n02"]));
        assert_eq!(nodes(&r), ["n00", "n01"]);
        assert_eq!(hints(&r), [("n00".to_string(), "n02".to_string())]);
        let (_, r) = Route::plan(&ring_of(4, 64), b"k", 3, &me, health(&["n01"], &["n02"]));
        assert_eq!(nodes(&r), ["n00", "n01", "n03"]);
        // All up: no hints.
        let (_, r) = Route::plan(&ring_of(3, 64), b"k", 3, &me, health(&[], &[]));
        assert!(hints(&r).is_empty());
        // Where hints are not handed over, owners keep none.
        let (_, mut r) = Route::plan(&ring_of(3, 64), b"k", 3, &me, health(&["n01"], &["n02"]));
        r.drop_owner_hints();
        assert!(hints(&r).is_empty());
        let (_, mut r) = Route::plan(&ring_of(5, 64), b"k", 3, &me, health(&["n01"], &["n02"]));
        let stand_ins: Vec<_> = r.targets.iter().filter(|t| !t.owns).cloned().collect();
        r.drop_owner_hints();
        let kept: Vec<_> = r.targets.iter().filter(|t| !t.owns).cloned().collect();
        assert_eq!(kept, stand_ins, "stand-ins keep theirs");
    }

    #[test]
    fn a_failed_owner_that_keeps_a_hint_is_replaced_for_itself() {
        let mut keeper = Replica::owner(id("a"));
        keeper.hint_for = Some(id("b"));
        let route = Route {
            targets: vec![keeper, Replica::owner(id("c"))],
            fallbacks: vec![id("d")],
            pending: vec![],
        };
        let (mut s, _) = PutSession::start(
            b"k".to_vec(),
            Context::default(),
            Value::Tombstone,
            route,
            2,
        );
        let (next, _) = s.on_reply(&id("a"), Err(Error::Unavailable("refused".into())));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].to, id("c"), "the next target mints");
        // d takes a's place (not b's: b's hint was a's to keep).
        let stand_in = s.tally.targets.last().unwrap();
        assert_eq!(stand_in, &Replica::stand_in(id("d"), id("a")));
    }

    fn get(targets: &[&str], fallbacks: &[&str], r: usize) -> GetSession {
        GetSession::start(b"k".to_vec(), route(targets, fallbacks), r).0
    }

    fn put(targets: &[&str], fallbacks: &[&str], w: usize) -> (PutSession, Vec<Request>) {
        let value = Value::Data(b"v".to_vec());
        PutSession::start(
            b"k".to_vec(),
            Context::default(),
            value,
            route(targets, fallbacks),
            w,
        )
    }

    #[test]
    fn get_answers_after_r_replies_and_repairs_stale_replicas() {
        let (mut s, reqs) = GetSession::start(b"k".to_vec(), route(&["a", "b", "c"], &[]), 2);
        assert_eq!(reqs.len(), 3);
        assert!(s.initial_answer().is_none());
        let newer = state("new", 1);
        assert!(
            s.on_reply(
                &id("a"),
                Ok(ReplicaMsg::State {
                    state: newer.clone()
                })
            )
            .1
            .is_none()
        );
        let (_, answer) = s.on_reply(
            &id("b"),
            Ok(ReplicaMsg::State {
                state: SiblingSet::new(),
            }),
        );
        assert_eq!(answer, Some(Ok(newer.clone())));
        assert!(!s.is_complete());
        // a late reply is taken into the repair
        assert!(
            s.on_reply(
                &id("c"),
                Ok(ReplicaMsg::State {
                    state: newer.clone()
                })
            )
            .1
            .is_none()
        );
        assert!(s.is_complete());
        let repairs = s.repairs();
        assert_eq!(repairs.len(), 1);
        assert_eq!(repairs[0].to, id("b"));
        assert!(matches!(&repairs[0].msg, ReplicaMsg::Write { state, .. } if *state == newer));
    }

    #[test]
    fn get_merges_concurrent_siblings() {
        let mut s = get(&["a", "b", "c"], &[], 2);
        s.on_reply(
            &id("a"),
            Ok(ReplicaMsg::State {
                state: state("x", 1),
            }),
        );
        let merged = s
            .on_reply(
                &id("b"),
                Ok(ReplicaMsg::State {
                    state: state("y", 2),
                }),
            )
            .1
            .unwrap()
            .unwrap();
        assert_eq!(merged.sibling_count(), 2);
        assert_eq!(
            s.repairs().len(),
            2,
            "both replicas miss the other's sibling"
        );
    }

    #[test]
    fn get_fails_fast_when_quorum_becomes_impossible() {
        let mut s = get(&["a", "b", "c"], &[], 2);
        assert!(s.on_reply(&id("a"), Err(down())).1.is_none());
        let e = s.on_reply(&id("b"), Err(down())).1.unwrap().unwrap_err();
        assert_eq!(e, Error::Quorum { needed: 2, got: 0 });
        assert!(s.on_timeout().is_none(), "answered only once");
    }

    #[test]
    fn get_reads_a_fallback_in_place_of_a_failed_target() {
        let mut s = get(&["a", "b", "c"], &["d"], 2);
        let (next, answer) = s.on_reply(&id("a"), Err(down()));
        assert!(answer.is_none());
        assert_eq!(next, vec![read(&id("d"), b"k")]);
        s.on_reply(&id("b"), Err(down()));
        let (_, answer) = s.on_reply(
            &id("d"),
            Ok(ReplicaMsg::State {
                state: state("x", 1),
            }),
        );
        assert!(answer.is_none());
        let (_, answer) = s.on_reply(
            &id("c"),
            Ok(ReplicaMsg::State {
                state: state("x", 1),
            }),
        );
        assert!(matches!(answer, Some(Ok(_))));
    }

    #[test]
    fn get_times_out_with_a_quorum_error() {
        let mut s = get(&["a", "b", "c"], &[], 2);
        s.on_reply(
            &id("a"),
            Ok(ReplicaMsg::State {
                state: SiblingSet::new(),
            }),
        );
        assert_eq!(
            s.on_timeout(),
            Some(Err(Error::Quorum { needed: 2, got: 1 }))
        );
        // replies from strangers and duplicates are ignored
        assert_eq!(s.on_reply(&id("zz"), Ok(ReplicaMsg::Ack)), (vec![], None));
    }

    #[test]
    fn too_few_targets_fail_at_once() {
        let mut g = get(&["a"], &[], 2);
        assert!(matches!(
            g.initial_answer(),
            Some(Err(Error::Quorum { .. }))
        ));
        let (mut p, _) = put(&[], &[], 1);
        assert!(matches!(
            p.initial_answer(),
            Some(Err(Error::Quorum { .. }))
        ));
    }

    #[test]
    fn put_mints_at_the_first_target_then_writes_the_rest() {
        let (mut s, reqs) = put(&["a", "b", "c"], &[], 2);
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].to, id("a"));
        assert!(matches!(reqs[0].msg, ReplicaMsg::Update { .. }));
        let reply = minted("v", 1);
        let ReplicaMsg::Updated { state, dot } = reply.clone() else {
            unreachable!()
        };
        let (writes, answer) = s.on_reply(&id("a"), Ok(reply));
        assert!(answer.is_none());
        assert_eq!(
            writes.iter().map(|r| r.to.clone()).collect::<Vec<_>>(),
            vec![id("b"), id("c")]
        );
        let (_, answer) = s.on_reply(&id("c"), Ok(ReplicaMsg::Ack));
        assert_eq!(answer, Some(Ok((state, dot))));
        assert!(!s.is_complete());
        s.on_reply(&id("b"), Err(down()));
        assert!(s.is_complete());
    }

    #[test]
    fn put_moves_to_the_next_minter_when_one_fails() {
        let (mut s, _) = put(&["a", "b", "c"], &[], 2);
        let (next, answer) = s.on_reply(&id("a"), Err(down()));
        assert!(answer.is_none());
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].to, id("b"));
        let (writes, _) = s.on_reply(&id("b"), Ok(minted("x", 2)));
        assert_eq!(writes.len(), 1, "only c is left to write; a failed");
        let (_, answer) = s.on_reply(&id("c"), Err(down()));
        assert_eq!(answer, Some(Err(Error::Quorum { needed: 2, got: 1 })));
    }

    #[test]
    fn a_failed_replica_is_replaced_by_a_hinted_fallback() {
        let (mut s, _) = put(&["a", "b", "c"], &["d", "e"], 2);
        s.on_reply(&id("a"), Ok(minted("x", 1)));
        // b fails after minting: d takes its copy with a hint for b
        let (next, answer) = s.on_reply(&id("b"), Err(Error::Timeout));
        assert!(answer.is_none());
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].to, id("d"));
        assert!(
            matches!(&next[0].msg, ReplicaMsg::Write { hint_for: Some(h), .. } if *h == id("b"))
        );
        // d fails too: e stands in for b (not for d)
        let (next, _) = s.on_reply(&id("d"), Err(down()));
        assert!(
            matches!(&next[0].msg, ReplicaMsg::Write { hint_for: Some(h), .. } if *h == id("b"))
        );
        let (_, answer) = s.on_reply(&id("e"), Ok(ReplicaMsg::Ack));
        assert!(matches!(answer, Some(Ok(_))), "{answer:?}");
    }

    #[test]
    fn a_silent_minter_is_not_replaced() {
        let (mut s, _) = put(&["a", "b", "c"], &["d"], 2);
        let (next, answer) = s.on_reply(&id("a"), Err(Error::Timeout));
        assert!(next.is_empty(), "nobody else mints: {next:?}");
        assert_eq!(answer, Some(Err(Error::Quorum { needed: 2, got: 0 })));
        assert!(s.is_complete());
    }

    #[test]
    fn a_slow_replica_is_replaced_while_a_fallback_is_left_and_waited_for_after() {
        let mut s = get(&["a", "b", "c"], &["d"], 2);
        let (next, _) = s.on_slow(&id("a"));
        assert_eq!(next, vec![read(&id("d"), b"k")], "d reads in a's place");
        let (next, answer) = s.on_slow(&id("b"));
        assert!(
            next.is_empty() && answer.is_none(),
            "no one left: b is waited for"
        );
        let x = || {
            Ok(ReplicaMsg::State {
                state: state("x", 1),
            })
        };
        s.on_reply(&id("b"), x());
        let (_, answer) = s.on_reply(&id("c"), x());
        assert!(matches!(answer, Some(Ok(_))), "b's late answer counted");
    }

    #[test]
    fn a_session_says_whether_a_slow_target_could_be_replaced() {
        let mut s = Session::Get(get(&["a", "b", "c"], &["d"], 2));
        assert!(s.has_fallback());
        let (next, _) = s.on_slow(&id("a"));
        assert_eq!(next.len(), 1);
        assert!(!s.has_fallback(), "d was the last one");
    }

    #[test]
    fn a_slow_minter_is_waited_for_and_its_late_writes_count() {
        let (mut s, _) = put(&["a", "b", "c"], &["d"], 2);
        let (next, answer) = s.on_slow(&id("a"));
        assert!(next.is_empty() && answer.is_none(), "nobody else mints");
        let (writes, _) = s.on_reply(&id("a"), Ok(minted("x", 1)));
        assert_eq!(writes.len(), 2);
        // b is slow and d stands in for it; once no fallback is left, c is
        // waited for, and its late ack makes the quorum.
        let (next, _) = s.on_slow(&id("b"));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].to, id("d"));
        let (next, answer) = s.on_slow(&id("c"));
        assert!(next.is_empty() && answer.is_none());
        let (_, answer) = s.on_reply(&id("c"), Ok(ReplicaMsg::Ack));
        assert!(matches!(answer, Some(Ok(_))), "{answer:?}");
    }

    #[test]
    fn a_failed_minter_is_replaced_too() {
        let (mut s, _) = put(&["a"], &["d"], 1);
        let (next, _) = s.on_reply(&id("a"), Err(down()));
        assert_eq!(next.len(), 1);
        assert!(
            matches!(&next[0].msg, ReplicaMsg::Update { hint_for: Some(h), .. } if *h == id("a"))
        );
        let (_, answer) = s.on_reply(&id("d"), Ok(minted("x", 4)));
        assert!(matches!(answer, Some(Ok(_))));
    }

    #[test]
    fn a_refused_request_ends_the_put_at_once() {
        let (mut s, _) = put(&["a", "b", "c"], &["d"], 2);
        let refusal = Error::InvalidRequest("too many siblings".into());
        let (next, answer) = s.on_reply(&id("a"), Err(refusal.clone()));
        assert!(next.is_empty());
        assert_eq!(answer, Some(Err(refusal)));
    }

    #[test]
    fn stand_ins_carry_their_hint() {
        let targets = vec![Replica::owner(id("a")), Replica::stand_in(id("d"), id("b"))];
        let route = Route {
            targets,
            ..Route::default()
        };
        let (mut s, _) = PutSession::start(
            b"k".to_vec(),
            Context::default(),
            Value::Tombstone,
            route,
            2,
        );
        let (writes, _) = s.on_reply(&id("a"), Ok(minted("x", 1)));
        assert!(
            matches!(&writes[0].msg, ReplicaMsg::Write { hint_for: Some(h), .. } if *h == id("b"))
        );
    }

    #[test]
    fn pending_replicas_get_every_write_but_no_vote() {
        let route = Route {
            targets: owners(&["a", "b", "c"]),
            fallbacks: vec![],
            pending: vec![id("new")],
        };
        let (mut s, _) = PutSession::start(
            b"k".to_vec(),
            Context::default(),
            Value::Tombstone,
            route,
            3,
        );
        let (writes, _) = s.on_reply(&id("a"), Ok(minted("x", 1)));
        let to: Vec<NodeId> = writes.iter().map(|w| w.to.clone()).collect();
        assert_eq!(to, vec![id("b"), id("c"), id("new")]);
        assert_eq!(
            s.on_reply(&id("new"), Ok(ReplicaMsg::Ack)),
            (vec![], None),
            "no vote"
        );
        s.on_reply(&id("b"), Ok(ReplicaMsg::Ack));
        let (_, answer) = s.on_reply(&id("c"), Ok(ReplicaMsg::Ack));
        assert!(matches!(answer, Some(Ok(_))));
    }
}

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
//! per-request timeout), a get's next spare (a routed replica it has not
//! asked) or else the next fallback takes its place, the fallback holding a
//! hint for the owner the failed target stood for. A target that is only
//! slow (`on_slow`) keeps its place in a get, which asks the next spare or
//! fallback too, and whichever answers counts; a put replaces it only while
//! a fallback is left. Otherwise, and always for the put's minter (nobody
//! else may mint), the session keeps waiting for it until the deadline: a
//! late answer still counts, so a busy replica in a cluster of N nodes
//! costs latency, not the write.
//!
//! - Get: reads R targets (the first, owners before stand-ins; with
//!   `ReadFrom::All` every target), and a spare target in place of one
//!   that fails or is slow; merges what it reads; once every target asked
//!   has answered (or the deadline passed) `repairs()` names the replicas
//!   that answered with less than the merged set (read repair).
//! - Put: asks the first target to mint the new version (`Update`); if that
//!   target refuses or cannot be reached, the next one mints. If it does not
//!   answer, it may still mint, so nobody else does (a second dot for the
//!   same write would escape the contexts of later writes): the put fails.
//!   The minted sibling set is then written to every other target; the
//!   minter's own write counts toward W.
//!
//! - Data-type operation (counter, set): a put session whose minter applies
//!   the operation (`Apply`) and whose other targets merge its delta; a
//!   remove without a context reads at R first (`ObserveSession`).
//!
//! Errors that say the request itself is wrong (a bad context, too many
//! siblings) end the session at once; a node that is down or slow only
//! costs its vote.

mod get;
mod latency;
mod observe;
mod put;
mod request;
mod route;
mod tally;
mod yielding;

pub use get::GetSession;
pub use latency::ReadLatency;
pub use observe::ObserveSession;
pub use put::{Mint, PutSession, Written};
pub use request::{Limits, Planned, Planner, Write};
pub use route::{Replica, Route};
use tally::Tally;
pub use yielding::{Admit, LargeWrites, YieldSettings};

use crate::crdt::Typed;
use crate::error::Result;
use crate::namespace::Kind;
use crate::node::NodeId;
use crate::replica::ReplicaMsg;
use crate::version::SiblingSet;
use crate::wire::ClientReply;

/// A replica request the shell must send, to a node (possibly itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub to: NodeId,
    pub msg: ReplicaMsg,
}

/// What one event of a session asks of the shell: the requests to send
/// next, and the client's answer if it is now due (given at most once).
#[derive(Debug, PartialEq, Eq)]
pub struct Step<T> {
    pub send: Vec<Request>,
    pub answer: Option<Result<T>>,
}

impl<T> Step<T> {
    /// Nothing to send, nothing to answer.
    pub fn none() -> Self {
        Step {
            send: Vec::new(),
            answer: None,
        }
    }

    fn map<U>(self, f: impl FnOnce(T) -> U) -> Step<U> {
        Step {
            send: self.send,
            answer: self.answer.map(|a| a.map(f)),
        }
    }
}

/// What a session answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Read(SiblingSet),
    Written(Written),
}

/// The client's reply at `now` (ms since the Unix epoch) to a session's
/// outcome on a key of a `kind` namespace: a read's live values (neither
/// deleted nor expired) and context, or a write's new context with the
/// live values of the siblings it kept (the ones a write with that context
/// supersedes, besides the new value). A typed key's read answers its
/// merged value and the context a remove sends back; an increment, the
/// counter's new value; a set's add or remove, only that it was written
/// (the set's members would cost its size on the wire).
pub fn client_reply(outcome: Result<Outcome>, kind: Kind, now: u64) -> ClientReply {
    match &outcome {
        Ok(Outcome::Read(state)) if kind != Kind::Blob => {
            let typed = state.typed();
            let lww = kind == Kind::LwwMap;
            if let Some(reading) = typed.map(|t| t.reading(lww)).or_else(|| kind.empty()) {
                return ClientReply::Typed {
                    reading,
                    context: typed.map(Typed::context).unwrap_or_default().to_bytes(),
                };
            }
        }
        Ok(Outcome::Written(Written { state, dot: None })) => {
            return match state.typed() {
                Some(counter @ Typed::Counter(_)) => ClientReply::Typed {
                    reading: counter.reading(false),
                    context: Vec::new(),
                },
                _ => ClientReply::Written {
                    context: Vec::new(),
                    others: Vec::new(),
                },
            };
        }
        _ => {}
    }
    match outcome {
        Ok(Outcome::Read(state)) => ClientReply::Value {
            values: state.live_values(now).map(<[u8]>::to_vec).collect(),
            context: state.context().to_bytes(),
        },
        Ok(Outcome::Written(Written { state, dot })) => ClientReply::Written {
            context: state.context().to_bytes(),
            others: state
                .siblings()
                .filter(|s| Some(s.dot) != dot)
                .filter_map(|s| s.value.live_at(now).map(<[u8]>::to_vec))
                .collect(),
        },
        Err(e) => ClientReply::error(&e),
    }
}

/// A get, a put or an observed remove behind one interface, as the shells
/// drive them.
pub enum Session {
    Get(GetSession),
    Put(PutSession),
    /// Boxed: it holds a read and a write session.
    Observe(Box<ObserveSession>),
}

impl Session {
    pub fn initial_answer(&mut self) -> Option<Result<Outcome>> {
        match self {
            Session::Get(g) => g.initial_answer().map(|r| r.map(Outcome::Read)),
            Session::Put(p) => p.initial_answer().map(|r| r.map(Outcome::Written)),
            Session::Observe(o) => o.initial_answer().map(|r| r.map(Outcome::Written)),
        }
    }

    pub fn on_reply(&mut self, from: &NodeId, reply: Result<ReplicaMsg>) -> Step<Outcome> {
        match self {
            Session::Get(g) => g.on_reply(from, reply).map(Outcome::Read),
            Session::Put(p) => p.on_reply(from, reply).map(Outcome::Written),
            Session::Observe(o) => o.on_reply(from, reply).map(Outcome::Written),
        }
    }

    /// Whether a slow target could still be replaced (else `on_slow` does
    /// nothing, and a shell need not time targets).
    pub fn has_fallback(&self) -> bool {
        self.tally().has_fallback()
    }

    /// How long, in ms, a target just asked may stay silent before the
    /// shell calls `on_slow`: `spare_ms` (`ReadLatency::spare_after_ms`)
    /// while a quorum read has a spare replica left, else `attempt_ms`
    /// (the deadline's slice for a fallback).
    pub fn slow_after(&self, attempt_ms: u64, spare_ms: u64) -> u64 {
        self.tally().slow_after(attempt_ms, spare_ms)
    }

    fn tally(&self) -> &Tally {
        match self {
            Session::Get(g) => &g.tally,
            Session::Put(p) => &p.tally,
            Session::Observe(o) => o.tally(),
        }
    }

    pub fn on_slow(&mut self, from: &NodeId) -> Step<Outcome> {
        match self {
            Session::Get(g) => g.on_slow(from).map(Outcome::Read),
            Session::Put(p) => p.on_slow(from).map(Outcome::Written),
            Session::Observe(o) => o.on_slow(from).map(Outcome::Written),
        }
    }

    pub fn on_timeout(&mut self) -> Option<Result<Outcome>> {
        match self {
            Session::Get(g) => g.on_timeout().map(|r| r.map(Outcome::Read)),
            Session::Put(p) => p.on_timeout().map(|r| r.map(Outcome::Written)),
            Session::Observe(o) => o.on_timeout().map(|r| r.map(Outcome::Written)),
        }
    }

    pub fn is_complete(&self) -> bool {
        match self {
            Session::Get(g) => g.is_complete(),
            Session::Put(p) => p.is_complete(),
            Session::Observe(o) => o.is_complete(),
        }
    }

    /// The read repairs to send when the session ends (none for a write).
    pub fn repairs(&self) -> Vec<Request> {
        match self {
            Session::Get(g) => g.repairs(),
            Session::Put(_) | Session::Observe(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReadFrom;
    use crate::error::Error;
    use crate::liveness::Health;
    use crate::version::Actor;
    use crate::version::{Context, Value};
    use get::read;

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
        // Four concurrent writes, one of them a delete, one expired at 10;
        // "c" is the new one.
        let concurrent = |value: Value, actor: u64| {
            SiblingSet::new()
                .update(&Context::default(), value, Actor(actor))
                .unwrap()
        };
        let written = concurrent(Value::Data(b"c".to_vec()), 3);
        let dot = written.siblings().next().unwrap().dot;
        let expired = Value::Expiring {
            data: b"e".to_vec(),
            expires_ms: 10,
        };
        let state = state("a", 1)
            .merge(&concurrent(Value::Tombstone, 2))
            .merge(&concurrent(expired, 4))
            .merge(&written);
        let written = Written {
            state: state.clone(),
            dot: Some(dot),
        };
        match client_reply(Ok(Outcome::Written(written.clone())), Kind::Blob, 9) {
            ClientReply::Written { mut others, .. } => {
                others.sort();
                assert_eq!(others, vec![b"a".to_vec(), b"e".to_vec()]);
            }
            other => panic!("{other:?}"),
        }
        match client_reply(Ok(Outcome::Written(written)), Kind::Blob, 10) {
            ClientReply::Written { context, others } => {
                assert_eq!(others, vec![b"a".to_vec()]);
                assert_eq!(context, state.context().to_bytes());
            }
            other => panic!("{other:?}"),
        }
        match client_reply(Ok(Outcome::Read(state.clone())), Kind::Blob, 10) {
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
        assert_eq!(
            client_reply(Err(down()), Kind::Blob, 0),
            ClientReply::error(&down())
        );
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
        let mint = Mint::Version {
            context: Context::default(),
            value: Value::Tombstone,
        };
        let (mut s, _) = PutSession::start(b"k".to_vec(), mint, route, 2);
        let Step {
            send: next,
            answer: _,
        } = s.on_reply(&id("a"), Err(Error::Unavailable("refused".into())));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].to, id("c"), "the next target mints");
        // d takes a's place (not b's: b's hint was a's to keep).
        let stand_in = s.tally.targets.last().unwrap();
        assert_eq!(stand_in, &Replica::stand_in(id("d"), id("a")));
    }

    /// A get that reads every target, as the Dynamo paper's does.
    fn get(targets: &[&str], fallbacks: &[&str], r: usize) -> GetSession {
        GetSession::start(b"k".to_vec(), route(targets, fallbacks), r, ReadFrom::All).0
    }

    fn put(targets: &[&str], fallbacks: &[&str], w: usize) -> (PutSession, Vec<Request>) {
        let mint = Mint::Version {
            context: Context::default(),
            value: Value::Data(b"v".to_vec()),
        };
        PutSession::start(b"k".to_vec(), mint, route(targets, fallbacks), w)
    }

    #[test]
    fn get_answers_after_r_replies_and_repairs_stale_replicas() {
        let three = route(&["a", "b", "c"], &[]);
        let (mut s, reqs) = GetSession::start(b"k".to_vec(), three, 2, ReadFrom::All);
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
            .answer
            .is_none()
        );
        let Step { send: _, answer } = s.on_reply(
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
            .answer
            .is_none()
        );
        assert!(s.is_complete());
        let repairs = s.repairs();
        assert_eq!(repairs.len(), 1);
        assert_eq!(repairs[0].to, id("b"));
        assert!(matches!(&repairs[0].msg, ReplicaMsg::Write { state, .. } if *state == newer));
    }

    #[test]
    fn a_quorum_get_asks_r_owners_and_a_spare_before_a_fallback_in_place_of_one_that_fails() {
        // The coordinator "a" first, then the owner "c" before the
        // stand-in "s"; "d" is a fallback.
        let mixed = Route {
            targets: vec![
                Replica::owner(id("a")),
                Replica::stand_in(id("s"), id("b")),
                Replica::owner(id("c")),
            ],
            fallbacks: vec![id("d")],
            pending: vec![],
        };
        let (mut s, reqs) = GetSession::start(b"k".to_vec(), mixed, 2, ReadFrom::Quorum);
        assert_eq!(reqs, vec![read(&id("a"), b"k"), read(&id("c"), b"k")]);
        let Step { send: next, answer } = s.on_reply(&id("c"), Err(down()));
        assert!(answer.is_none());
        assert_eq!(next, vec![read(&id("s"), b"k")], "the spare, not d");
        let x = |v: &str| Ok(ReplicaMsg::State { state: state(v, 1) });
        assert!(s.on_reply(&id("a"), x("x")).answer.is_none());
        let Step { send: _, answer } = s.on_reply(&id("s"), x("x"));
        assert_eq!(answer, Some(Ok(state("x", 1))));
        assert!(s.is_complete(), "nobody else was asked");
        assert!(s.repairs().is_empty());
        // A second failure would have gone to the fallback.
        let two = route(&["a", "b"], &["d"]);
        let (mut s, _) = GetSession::start(b"k".to_vec(), two, 1, ReadFrom::Quorum);
        assert_eq!(
            s.on_reply(&id("a"), Err(down())).send,
            vec![read(&id("b"), b"k")]
        );
        assert_eq!(
            s.on_reply(&id("b"), Err(down())).send,
            vec![read(&id("d"), b"k")]
        );
    }

    #[test]
    fn a_quorum_get_reads_a_spare_beside_a_slow_target_and_counts_whichever_answers() {
        let state_of = |v: Option<&str>| {
            Ok(ReplicaMsg::State {
                state: v.map_or_else(SiblingSet::new, |v| state(v, 1)),
            })
        };
        let newer = state("new", 1);
        // The spare answers first, and the read does not wait for b.
        let (mut s, reqs) = GetSession::start(
            b"k".to_vec(),
            route(&["a", "b", "c"], &[]),
            2,
            ReadFrom::Quorum,
        );
        assert_eq!(reqs.len(), 2);
        assert!(s.tally.has_fallback(), "a spare can replace a slow target");
        assert_eq!(s.on_slow(&id("b")).send, vec![read(&id("c"), b"k")]);
        assert!(!s.tally.has_fallback());
        assert!(s.on_slow(&id("b")).send.is_empty(), "no one is left");
        s.on_reply(&id("a"), state_of(Some("new")));
        let Step { send: _, answer } = s.on_reply(&id("c"), state_of(None));
        assert_eq!(answer, Some(Ok(newer.clone())));
        assert!(!s.is_complete(), "b may still answer");
        s.on_reply(&id("b"), state_of(None));
        assert!(s.is_complete());
        let repairs: Vec<_> = s.repairs().into_iter().map(|r| r.to).collect();
        assert_eq!(repairs, vec![id("b"), id("c")], "both answered with less");
        // The slow target answers first after all: its answer counts.
        let (mut s, _) = GetSession::start(
            b"k".to_vec(),
            route(&["a", "b", "c"], &[]),
            2,
            ReadFrom::Quorum,
        );
        s.on_slow(&id("b"));
        s.on_reply(&id("a"), state_of(Some("new")));
        let Step { send: _, answer } = s.on_reply(&id("b"), state_of(Some("new")));
        assert_eq!(answer, Some(Ok(newer)));
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
            .answer
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
        assert!(s.on_reply(&id("a"), Err(down())).answer.is_none());
        let e = s
            .on_reply(&id("b"), Err(down()))
            .answer
            .unwrap()
            .unwrap_err();
        assert_eq!(e, Error::Quorum { needed: 2, got: 0 });
        assert!(s.on_timeout().is_none(), "answered only once");
    }

    #[test]
    fn get_reads_a_fallback_in_place_of_a_failed_target() {
        let mut s = get(&["a", "b", "c"], &["d"], 2);
        let Step { send: next, answer } = s.on_reply(&id("a"), Err(down()));
        assert!(answer.is_none());
        assert_eq!(next, vec![read(&id("d"), b"k")]);
        s.on_reply(&id("b"), Err(down()));
        let Step { send: _, answer } = s.on_reply(
            &id("d"),
            Ok(ReplicaMsg::State {
                state: state("x", 1),
            }),
        );
        assert!(answer.is_none());
        let Step { send: _, answer } = s.on_reply(
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
        assert_eq!(s.on_reply(&id("zz"), Ok(ReplicaMsg::Ack)), Step::none());
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
    fn a_remove_without_context_removes_what_its_quorum_read_saw() {
        use crate::crdt::{CausalContext, Operation, Typed};
        let milk = Operation::Add(vec![b"milk".to_vec()]);
        let added = |actor| {
            let mut state = SiblingSet::new();
            state
                .apply(Actor(actor), &milk, &CausalContext::default(), 0)
                .unwrap();
            state
        };
        let remove = Operation::Remove(vec![b"milk".to_vec()]);
        let (mut s, reads) = ObserveSession::start(
            b"k".to_vec(),
            remove,
            route(&["a", "b", "c"], &[]),
            (2, ReadFrom::All),
            2,
        );
        assert_eq!(reads.len(), 3);
        assert!(
            reads
                .iter()
                .all(|r| matches!(r.msg, ReplicaMsg::Read { .. }))
        );
        // b has an add that a, the minter, has not received yet.
        let state = |state| Ok(ReplicaMsg::State { state });
        assert!(
            s.on_reply(&id("a"), state(SiblingSet::new()))
                .send
                .is_empty()
        );
        let step = s.on_reply(&id("b"), state(added(7)));
        assert!(step.answer.is_none());
        let [apply] = step.send.as_slice() else {
            panic!("{:?}", step.send)
        };
        assert_eq!(apply.to, id("a"), "the first target mints");
        let ReplicaMsg::Apply { seen, .. } = &apply.msg else {
            panic!("{:?}", apply.msg)
        };
        let seen_add = added(7).typed().unwrap().context();
        assert_eq!(seen, &seen_add, "the remove carries what the read saw");
        // A late read reply counts for the read only.
        assert!(s.on_reply(&id("c"), state(added(8))).send.is_empty());
        let delta = SiblingSet::of_typed(Typed::Set(Default::default()));
        let applied = ReplicaMsg::Applied {
            state: delta.clone(),
            delta: delta.clone(),
        };
        let step = s.on_reply(&id("a"), Ok(applied));
        let writes: Vec<NodeId> = step.send.iter().map(|r| r.to.clone()).collect();
        assert_eq!(writes, [id("b"), id("c")], "the delta goes to the others");
        assert!(step.answer.is_none());
        let step = s.on_reply(&id("b"), Ok(ReplicaMsg::Ack));
        assert_eq!(
            step.answer,
            Some(Ok(Written {
                state: delta,
                dot: None
            }))
        );
        assert!(!s.is_complete());
        s.on_reply(&id("c"), Ok(ReplicaMsg::Ack));
        assert!(s.is_complete());
        // A read that cannot reach R fails the remove, which never starts.
        let remove = Operation::Remove(vec![b"milk".to_vec()]);
        let (mut s, _) = ObserveSession::start(
            b"k".to_vec(),
            remove,
            route(&["a", "b", "c"], &[]),
            (2, ReadFrom::All),
            2,
        );
        s.on_reply(&id("a"), Err(down()));
        let step = s.on_reply(&id("b"), Err(down()));
        assert!(matches!(step.answer, Some(Err(_))), "{:?}", step.answer);
        assert!(step.send.is_empty());
        assert!(s.is_complete());
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
        let Step {
            send: writes,
            answer,
        } = s.on_reply(&id("a"), Ok(reply));
        assert!(answer.is_none());
        assert_eq!(
            writes.iter().map(|r| r.to.clone()).collect::<Vec<_>>(),
            vec![id("b"), id("c")]
        );
        let Step { send: _, answer } = s.on_reply(&id("c"), Ok(ReplicaMsg::Ack));
        assert_eq!(
            answer,
            Some(Ok(Written {
                state,
                dot: Some(dot)
            }))
        );
        assert!(!s.is_complete());
        s.on_reply(&id("b"), Err(down()));
        assert!(s.is_complete());
    }

    #[test]
    fn put_moves_to_the_next_minter_when_one_fails() {
        let (mut s, _) = put(&["a", "b", "c"], &[], 2);
        let Step { send: next, answer } = s.on_reply(&id("a"), Err(down()));
        assert!(answer.is_none());
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].to, id("b"));
        let Step {
            send: writes,
            answer: _,
        } = s.on_reply(&id("b"), Ok(minted("x", 2)));
        assert_eq!(writes.len(), 1, "only c is left to write; a failed");
        let Step { send: _, answer } = s.on_reply(&id("c"), Err(down()));
        assert_eq!(answer, Some(Err(Error::Quorum { needed: 2, got: 1 })));
    }

    #[test]
    fn a_failed_replica_is_replaced_by_a_hinted_fallback() {
        let (mut s, _) = put(&["a", "b", "c"], &["d", "e"], 2);
        s.on_reply(&id("a"), Ok(minted("x", 1)));
        // b fails after minting: d takes its copy with a hint for b
        let Step { send: next, answer } = s.on_reply(&id("b"), Err(Error::Timeout));
        assert!(answer.is_none());
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].to, id("d"));
        assert!(
            matches!(&next[0].msg, ReplicaMsg::Write { hint_for: Some(h), .. } if *h == id("b"))
        );
        // d fails too: e stands in for b (not for d)
        let Step {
            send: next,
            answer: _,
        } = s.on_reply(&id("d"), Err(down()));
        assert!(
            matches!(&next[0].msg, ReplicaMsg::Write { hint_for: Some(h), .. } if *h == id("b"))
        );
        let Step { send: _, answer } = s.on_reply(&id("e"), Ok(ReplicaMsg::Ack));
        assert!(matches!(answer, Some(Ok(_))), "{answer:?}");
    }

    #[test]
    fn a_silent_minter_is_not_replaced() {
        let (mut s, _) = put(&["a", "b", "c"], &["d"], 2);
        let Step { send: next, answer } = s.on_reply(&id("a"), Err(Error::Timeout));
        assert!(next.is_empty(), "nobody else mints: {next:?}");
        assert_eq!(answer, Some(Err(Error::Quorum { needed: 2, got: 0 })));
        assert!(s.is_complete());
    }

    #[test]
    fn a_slow_replica_is_replaced_while_a_fallback_is_left_and_waited_for_after() {
        let mut s = get(&["a", "b", "c"], &["d"], 2);
        let Step {
            send: next,
            answer: _,
        } = s.on_slow(&id("a"));
        assert_eq!(next, vec![read(&id("d"), b"k")], "d reads in a's place");
        let Step { send: next, answer } = s.on_slow(&id("b"));
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
        let Step { send: _, answer } = s.on_reply(&id("c"), x());
        assert!(matches!(answer, Some(Ok(_))), "b's late answer counted");
    }

    #[test]
    fn a_session_says_whether_a_slow_target_could_be_replaced() {
        let mut s = Session::Get(get(&["a", "b", "c"], &["d"], 2));
        assert!(s.has_fallback());
        let Step {
            send: next,
            answer: _,
        } = s.on_slow(&id("a"));
        assert_eq!(next.len(), 1);
        assert!(!s.has_fallback(), "d was the last one");
    }

    #[test]
    fn a_target_is_slow_sooner_while_a_quorum_read_has_a_spare() {
        let quorum = |targets: &[&str], fallbacks: &[&str]| {
            let route = route(targets, fallbacks);
            Session::Get(GetSession::start(b"k".to_vec(), route, 2, ReadFrom::Quorum).0)
        };
        let mut s = quorum(&["a", "b", "c"], &["d"]);
        assert_eq!(
            s.slow_after(1250, 100),
            100,
            "c could read beside a slow one"
        );
        assert_eq!(s.slow_after(50, 100), 50, "never later than the attempt");
        assert_eq!(s.on_slow(&id("b")).send, vec![read(&id("c"), b"k")]);
        assert_eq!(s.slow_after(1250, 100), 1250, "only the fallback is left");
        assert_eq!(quorum(&["a", "b"], &["d"]).slow_after(1250, 100), 1250);
        let all = Session::Get(get(&["a", "b", "c"], &["d"], 2));
        assert_eq!(all.slow_after(1250, 100), 1250, "every replica was asked");
        let write = Session::Put(put(&["a", "b", "c"], &["d"], 2).0);
        assert_eq!(write.slow_after(1250, 100), 1250);
    }

    #[test]
    fn a_slow_minter_is_waited_for_and_its_late_writes_count() {
        let (mut s, _) = put(&["a", "b", "c"], &["d"], 2);
        let Step { send: next, answer } = s.on_slow(&id("a"));
        assert!(next.is_empty() && answer.is_none(), "nobody else mints");
        let Step {
            send: writes,
            answer: _,
        } = s.on_reply(&id("a"), Ok(minted("x", 1)));
        assert_eq!(writes.len(), 2);
        // b is slow and d stands in for it; once no fallback is left, c is
        // waited for, and its late ack makes the quorum.
        let Step {
            send: next,
            answer: _,
        } = s.on_slow(&id("b"));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].to, id("d"));
        let Step { send: next, answer } = s.on_slow(&id("c"));
        assert!(next.is_empty() && answer.is_none());
        let Step { send: _, answer } = s.on_reply(&id("c"), Ok(ReplicaMsg::Ack));
        assert!(matches!(answer, Some(Ok(_))), "{answer:?}");
    }

    #[test]
    fn a_failed_minter_is_replaced_too() {
        let (mut s, _) = put(&["a"], &["d"], 1);
        let Step {
            send: next,
            answer: _,
        } = s.on_reply(&id("a"), Err(down()));
        assert_eq!(next.len(), 1);
        assert!(
            matches!(&next[0].msg, ReplicaMsg::Update { hint_for: Some(h), .. } if *h == id("a"))
        );
        let Step { send: _, answer } = s.on_reply(&id("d"), Ok(minted("x", 4)));
        assert!(matches!(answer, Some(Ok(_))));
    }

    #[test]
    fn a_refused_request_ends_the_put_at_once() {
        let (mut s, _) = put(&["a", "b", "c"], &["d"], 2);
        let refusal = Error::InvalidRequest("too many siblings".into());
        let Step { send: next, answer } = s.on_reply(&id("a"), Err(refusal.clone()));
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
        let mint = Mint::Version {
            context: Context::default(),
            value: Value::Tombstone,
        };
        let (mut s, _) = PutSession::start(b"k".to_vec(), mint, route, 2);
        let Step {
            send: writes,
            answer: _,
        } = s.on_reply(&id("a"), Ok(minted("x", 1)));
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
        let mint = Mint::Version {
            context: Context::default(),
            value: Value::Tombstone,
        };
        let (mut s, _) = PutSession::start(b"k".to_vec(), mint, route, 3);
        let Step {
            send: writes,
            answer: _,
        } = s.on_reply(&id("a"), Ok(minted("x", 1)));
        let to: Vec<NodeId> = writes.iter().map(|w| w.to.clone()).collect();
        assert_eq!(to, vec![id("b"), id("c"), id("new")]);
        assert_eq!(
            s.on_reply(&id("new"), Ok(ReplicaMsg::Ack)),
            Step::none(),
            "no vote"
        );
        s.on_reply(&id("b"), Ok(ReplicaMsg::Ack));
        let Step { send: _, answer } = s.on_reply(&id("c"), Ok(ReplicaMsg::Ack));
        assert!(matches!(answer, Some(Ok(_))));
    }
}

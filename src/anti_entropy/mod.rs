//! Anti-entropy: two replicas of a partition find and repair what differs.
//!
//! One side (the initiator) drives an `Exchange`; the other answers each
//! message from its current local state and keeps nothing between messages.
//! The descent follows the hash tree of the partition, so the cost is set by
//! how much the replicas differ, not by how much they hold:
//!
//! 1. `Root`: the initiator's root. Equal: done (one hash each way).
//! 2. `Inner`: the responder's 16 inner hashes; the initiator keeps the
//!    indexes that differ from its own.
//! 3. `Leaves`: the responder's leaf hashes under those inner nodes; the
//!    initiator keeps the segments that differ.
//! 4. `Digest`: the initiator's (key, item hash) pairs of those segments.
//!    The responder answers with its sibling sets for every key that differs
//!    or that the initiator lacks, and names the keys it lacks or differs on.
//! 5. `Push`: the initiator merges what it received and sends the sibling
//!    sets the responder asked for; the responder merges them.
//!
//! An exchange covers a `Scope` of namespaces: those both replicas hold
//! (`crate::placement`). A request about every namespace is sent as is; one
//! about some goes inside `Scoped`, and every tree, digest and entry of it
//! is of those namespaces only.
//!
//! Both sides merge with the DVV join, so an exchange is safe in any order,
//! against concurrent writes, and when repeated.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod schedule;
pub use schedule::{Due, RootsCheck, Schedule, round_robin};

use crate::error::{Error, Result};
use crate::merkle::{FANOUT, HashTree, SEGMENTS, differing};
use crate::partition::Partition;
use crate::placement::Scope;
use crate::replica::Replica;
use crate::store::Store;
use crate::version::SiblingSet;

/// Messages of the anti-entropy concern (`PeerMsg::AntiEntropy`). Every
/// request names its partition; the responder keeps no exchange state.
/// Variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AeMsg {
    Root(Root),
    /// The roots are equal.
    Same,
    /// The responder's inner hashes.
    Inner {
        inner: Vec<u64>,
    },
    LeavesOf(LeavesOf),
    /// The responder's leaf hashes under each requested inner node.
    Leaves {
        leaves: Vec<(u8, Vec<u64>)>,
    },
    Digest(Digest),
    /// The responder's sibling sets for keys that differ or that the
    /// initiator lacks, and the keys it wants from the initiator.
    Diff {
        entries: Vec<(Vec<u8>, SiblingSet)>,
        want: Vec<Vec<u8>>,
    },
    Push(Push),
    Pushed,
    /// Catch-up (`Schedule`): the sender's roots of the partitions it
    /// shares with the receiver, compared in one message.
    Roots(Roots),
    /// The partitions of a `Roots` whose roots differ here.
    RootsDiffer {
        partitions: Vec<Partition>,
    },
    /// A request about the keys of `scope`'s namespaces only (the same
    /// request sent as is is about every namespace). Answered as it is.
    Scoped {
        scope: Scope,
        request: AeRequest,
    },
}

/// The initiator's root of `partition`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    pub partition: Partition,
    pub root: u64,
}

/// Asks for the leaf hashes under the `inner` nodes of `partition`'s tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeavesOf {
    pub partition: Partition,
    pub inner: Vec<u8>,
}

/// The initiator's (key, item hash) pairs of `segments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub partition: Partition,
    pub segments: Vec<u16>,
    pub items: Vec<(Vec<u8>, u64)>,
}

/// Sibling sets the responder asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    pub partition: Partition,
    pub entries: Vec<(Vec<u8>, SiblingSet)>,
}

/// The sender's root of each partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roots {
    pub roots: Vec<(Partition, u64)>,
}

/// The requests of an exchange, as a `Scoped` message carries them.
/// Variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AeRequest {
    Root(Root),
    LeavesOf(LeavesOf),
    Digest(Digest),
    Push(Push),
    Roots(Roots),
}

impl AeRequest {
    /// The message asking this about `scope`.
    pub fn about(self, scope: &Scope) -> AeMsg {
        match (scope, self) {
            (Scope::All, AeRequest::Root(r)) => AeMsg::Root(r),
            (Scope::All, AeRequest::LeavesOf(r)) => AeMsg::LeavesOf(r),
            (Scope::All, AeRequest::Digest(r)) => AeMsg::Digest(r),
            (Scope::All, AeRequest::Push(r)) => AeMsg::Push(r),
            (Scope::All, AeRequest::Roots(r)) => AeMsg::Roots(r),
            (scope, request) => AeMsg::Scoped {
                scope: scope.clone(),
                request,
            },
        }
    }
}

impl AeMsg {
    /// Encoded size on the wire (for the byte budget and the figures).
    pub fn wire_size(&self) -> usize {
        postcard::experimental::serialized_size(self).unwrap_or(0)
    }

    /// The request this message makes, and about which namespaces; the
    /// message itself back if it is an answer.
    fn request(self) -> std::result::Result<(Scope, AeRequest), AeMsg> {
        let all = |r| Ok((Scope::All, r));
        match self {
            AeMsg::Root(r) => all(AeRequest::Root(r)),
            AeMsg::LeavesOf(r) => all(AeRequest::LeavesOf(r)),
            AeMsg::Digest(r) => all(AeRequest::Digest(r)),
            AeMsg::Push(r) => all(AeRequest::Push(r)),
            AeMsg::Roots(r) => all(AeRequest::Roots(r)),
            AeMsg::Scoped { scope, request } => Ok((scope, request)),
            answer @ (AeMsg::Same
            | AeMsg::Inner { .. }
            | AeMsg::Leaves { .. }
            | AeMsg::Diff { .. }
            | AeMsg::Pushed
            | AeMsg::RootsDiffer { .. }) => Err(answer),
        }
    }
}

/// What one exchange did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExchangeReport {
    pub partition: Option<Partition>,
    /// The root of the local tree the exchange started from: everything
    /// the partition held then has reached the peer (or was there).
    pub started_from: u64,
    /// Keys repaired on this (initiating) side.
    pub pulled: usize,
    /// Keys sent to the responder to repair.
    pub pushed: usize,
    pub bytes_sent: usize,
    pub bytes_received: usize,
    /// Round trips made.
    pub round_trips: usize,
}

impl std::ops::AddAssign<&ExchangeReport> for ExchangeReport {
    /// Totals over several exchanges (the partition and root are not summed).
    fn add_assign(&mut self, r: &ExchangeReport) {
        self.pulled += r.pulled;
        self.pushed += r.pushed;
        self.bytes_sent += r.bytes_sent;
        self.bytes_received += r.bytes_received;
        self.round_trips += r.round_trips;
    }
}

#[derive(Debug, Clone)]
enum Stage {
    AwaitRoot,
    AwaitLeaves { inner: Vec<u8> },
    AwaitDiff,
    AwaitPushed,
    Done,
}

/// The initiator's side of one exchange of one partition with one peer.
#[derive(Debug, Clone)]
pub struct Exchange {
    partition: Partition,
    /// The namespaces compared.
    scope: Scope,
    tree: HashTree,
    /// Releasing the partition: push what the peer lacks, take nothing
    /// (what this side holds then changes only with its own writes).
    push_only: bool,
    stage: Stage,
    report: ExchangeReport,
}

impl Exchange {
    /// Starts an exchange of every namespace of `partition` from the local
    /// tree `tree`.
    pub fn start(partition: Partition, tree: HashTree) -> (Exchange, AeMsg) {
        Self::begin(partition, Scope::All, tree, false)
    }

    /// Starts an exchange of `scope`'s namespaces of `partition` from
    /// `tree` (the local tree of that scope). The push-only kind is the
    /// sync before a release: if the scope's root is still the report's
    /// `started_from` after it, the peer holds everything this side does.
    pub fn begin(
        partition: Partition,
        scope: Scope,
        tree: HashTree,
        push_only: bool,
    ) -> (Exchange, AeMsg) {
        let root = tree.root();
        let msg = AeRequest::Root(Root { partition, root }).about(&scope);
        let mut ex = Exchange {
            partition,
            scope,
            tree,
            push_only,
            stage: Stage::AwaitRoot,
            report: ExchangeReport {
                partition: Some(partition),
                started_from: root,
                ..ExchangeReport::default()
            },
        };
        ex.sent(&msg);
        (ex, msg)
    }

    pub fn partition(&self) -> Partition {
        self.partition
    }

    pub fn report(&self) -> &ExchangeReport {
        &self.report
    }

    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    fn sent(&mut self, msg: &AeMsg) {
        self.report.bytes_sent += msg.wire_size();
    }

    fn send(&mut self, stage: Stage, request: AeRequest) -> Result<Option<AeMsg>> {
        let msg = request.about(&self.scope);
        self.sent(&msg);
        self.stage = stage;
        Ok(Some(msg))
    }

    fn finish(&mut self) -> Result<Option<AeMsg>> {
        self.stage = Stage::Done;
        Ok(None)
    }

    /// Takes the responder's answer; returns the next message to send, or
    /// None when the exchange is complete. `local` is this node's replica:
    /// the exchange reads its segments and merges what it pulls into it.
    pub fn on_reply<S: Store>(
        &mut self,
        reply: AeMsg,
        local: &mut Replica<S>,
    ) -> Result<Option<AeMsg>> {
        self.report.bytes_received += reply.wire_size();
        self.report.round_trips += 1;
        match (std::mem::replace(&mut self.stage, Stage::Done), reply) {
            (Stage::AwaitRoot, AeMsg::Same) => self.finish(),
            (Stage::AwaitRoot, AeMsg::Inner { inner }) if inner.len() == FANOUT => {
                let wanted: Vec<u8> = differing(self.tree.inner(), &inner)
                    .map(|i| i as u8)
                    .collect();
                if wanted.is_empty() {
                    return self.finish();
                }
                let request = AeRequest::LeavesOf(LeavesOf {
                    partition: self.partition,
                    inner: wanted.clone(),
                });
                self.send(Stage::AwaitLeaves { inner: wanted }, request)
            }
            (Stage::AwaitLeaves { inner }, AeMsg::Leaves { leaves }) => {
                let mut segments = Vec::new();
                for (i, theirs) in leaves {
                    if !inner.contains(&i) || theirs.len() != FANOUT {
                        return Err(Error::Malformed(format!(
                            "leaves of inner node {i} not asked for"
                        )));
                    }
                    let mine = self.tree.leaves_under(usize::from(i));
                    segments.extend(
                        differing(mine, &theirs).map(|j| (usize::from(i) * FANOUT + j) as u16),
                    );
                }
                if segments.is_empty() {
                    return self.finish();
                }
                let items = local.segment_items(self.partition, &self.scope, &segments)?;
                let request = AeRequest::Digest(Digest {
                    partition: self.partition,
                    segments,
                    items,
                });
                self.send(Stage::AwaitDiff, request)
            }
            (Stage::AwaitDiff, AeMsg::Diff { entries, want }) => {
                let q = local.partition_count();
                let mut sent_here = BTreeMap::new();
                for (key, state) in entries {
                    self.check_key(&key, q)?;
                    if !self.push_only && local.merge(&key, &state, None)? {
                        self.report.pulled += 1;
                    }
                    sent_here.insert(key, state);
                }
                if want.is_empty() {
                    return self.finish();
                }
                let mut pushed = Vec::with_capacity(want.len());
                for key in want {
                    self.check_key(&key, q)?;
                    let state = local.read(&key)?;
                    // A key the responder sent already holds what it had;
                    // push it back only if this side knew more.
                    if !state.is_empty() && sent_here.get(&key) != Some(&state) {
                        pushed.push((key, state));
                    }
                }
                self.report.pushed += pushed.len();
                let request = AeRequest::Push(Push {
                    partition: self.partition,
                    entries: pushed,
                });
                self.send(Stage::AwaitPushed, request)
            }
            (Stage::AwaitPushed, AeMsg::Pushed) => self.finish(),
            (stage, reply) => Err(Error::Malformed(format!(
                "anti-entropy answer {reply:?} does not fit stage {stage:?}"
            ))),
        }
    }

    fn check_key(&self, key: &[u8], q: u32) -> Result<()> {
        check_entry(key, self.partition, &self.scope, q)
    }
}

/// Checks that a key an exchange carries is of its partition and scope.
fn check_entry(key: &[u8], partition: Partition, scope: &Scope, q: u32) -> Result<()> {
    if Partition::of_key(key, q) != partition {
        return Err(Error::Malformed(
            "anti-entropy entry of another partition".into(),
        ));
    }
    if !scope.holds(key) {
        return Err(Error::Malformed(
            "anti-entropy entry of a namespace the exchange does not cover".into(),
        ));
    }
    Ok(())
}

/// The responder's side: answers one exchange message from local state.
pub fn respond<S: Store>(local: &mut Replica<S>, msg: AeMsg) -> Result<AeMsg> {
    let (scope, request) = msg
        .request()
        .map_err(|answer| Error::Malformed(format!("{answer:?} is not an anti-entropy request")))?;
    scope.validate()?;
    let q = local.partition_count();
    let check = |p: Partition| {
        if p.0 >= q {
            Err(Error::Malformed(format!("partition {p} out of range")))
        } else {
            Ok(())
        }
    };
    match request {
        AeRequest::Roots(Roots { roots }) => {
            if roots.len() > q as usize {
                return Err(Error::Malformed(format!("{} roots", roots.len())));
            }
            let mut partitions = Vec::new();
            for (p, root) in roots {
                check(p)?;
                if local.tree_in(p, &scope)?.root() != root {
                    partitions.push(p);
                }
            }
            Ok(AeMsg::RootsDiffer { partitions })
        }
        AeRequest::Root(Root { partition, root }) => {
            check(partition)?;
            let tree = local.tree_in(partition, &scope)?;
            Ok(if tree.root() == root {
                AeMsg::Same
            } else {
                AeMsg::Inner {
                    inner: tree.inner().to_vec(),
                }
            })
        }
        AeRequest::LeavesOf(LeavesOf { partition, inner }) => {
            check(partition)?;
            let tree = local.tree_in(partition, &scope)?;
            let leaves = inner
                .into_iter()
                .filter(|&i| usize::from(i) < FANOUT)
                .map(|i| (i, tree.leaves_under(usize::from(i)).to_vec()))
                .collect();
            Ok(AeMsg::Leaves { leaves })
        }
        AeRequest::Digest(Digest {
            partition,
            segments,
            items,
        }) => {
            check(partition)?;
            if segments.iter().any(|&s| usize::from(s) >= SEGMENTS) {
                return Err(Error::Malformed("segment out of range".into()));
            }
            let theirs: BTreeMap<Vec<u8>, u64> = items.into_iter().collect();
            let mine: BTreeMap<Vec<u8>, u64> = local
                .segment_items(partition, &scope, &segments)?
                .into_iter()
                .collect();
            let mut entries = Vec::new();
            for (key, hash) in &mine {
                if theirs.get(key) != Some(hash) {
                    entries.push((key.clone(), local.read(key)?));
                }
            }
            let want = theirs
                .iter()
                .filter(|(key, hash)| mine.get(*key) != Some(*hash))
                .map(|(key, _)| key.clone())
                .collect();
            Ok(AeMsg::Diff { entries, want })
        }
        AeRequest::Push(Push { partition, entries }) => {
            check(partition)?;
            for (key, _) in &entries {
                check_entry(key, partition, &scope, q)?;
            }
            for (key, state) in &entries {
                local.merge(key, state, None)?;
            }
            Ok(AeMsg::Pushed)
        }
    }
}

/// The catch-up message comparing the roots of `scope` in `partitions`
/// (see `Schedule::on_topology`).
pub fn roots<S: Store>(
    local: &Replica<S>,
    scope: &Scope,
    partitions: &[Partition],
) -> Result<AeMsg> {
    let roots = partitions
        .iter()
        .map(|&p| Ok((p, local.tree_in(p, scope)?.root())))
        .collect::<Result<_>>()?;
    Ok(AeRequest::Roots(Roots { roots }).about(scope))
}

/// Runs a whole exchange of every namespace of `p` between two replicas
/// held in this process (tests, benchmarks).
pub fn exchange_locally<S: Store>(
    initiator: &mut Replica<S>,
    responder: &mut Replica<S>,
    p: Partition,
) -> Result<ExchangeReport> {
    let (ex, msg) = Exchange::start(p, initiator.tree(p)?);
    complete_locally(ex, msg, initiator, responder)
}

/// Runs exchange `ex`, begun with `msg`, to its end against `responder`.
pub fn complete_locally<S: Store>(
    mut ex: Exchange,
    mut msg: AeMsg,
    initiator: &mut Replica<S>,
    responder: &mut Replica<S>,
) -> Result<ExchangeReport> {
    loop {
        let reply = respond(responder, msg)?;
        match ex.on_reply(reply, initiator)? {
            Some(next) => msg = next,
            None => return Ok(ex.report().clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::node::NodeId;
    use crate::store::MemStore;
    use crate::version::{Actor, Context, Value};

    const Q: u32 = 8;

    fn replica(actor: u64) -> Replica<MemStore> {
        Replica::open(
            MemStore::default(),
            MemStore::default(),
            Q,
            Actor(actor),
            100,
        )
        .unwrap()
        .0
    }

    fn put(r: &mut Replica<MemStore>, key: &str, value: &str) {
        let ctx = r.read(key.as_bytes()).unwrap().context();
        r.update(
            key.as_bytes(),
            &ctx,
            Value::Data(value.as_bytes().to_vec()),
            None,
        )
        .unwrap();
    }

    /// Two replicas that agree on `keys` keys, then differ in four: one
    /// new key on each side, one changed key on each side.
    fn diverged(keys: usize) -> (Replica<MemStore>, Replica<MemStore>) {
        let (mut a, mut b) = (replica(1), replica(2));
        for i in 0..keys {
            put(&mut a, &format!("k{i}"), "same");
        }
        sync_all(&mut a, &mut b);
        put(&mut a, "only-a", "x");
        put(&mut b, "only-b", "y");
        put(&mut a, "k7", "a-changed");
        put(&mut b, "k9", "b-changed");
        (a, b)
    }

    fn sync_all(a: &mut Replica<MemStore>, b: &mut Replica<MemStore>) -> ExchangeReport {
        let mut total = ExchangeReport::default();
        for p in 0..Q {
            total += &exchange_locally(a, b, Partition(p)).unwrap();
        }
        total
    }

    #[test]
    fn replicas_in_agreement_exchange_only_roots() {
        let (mut a, mut b) = (replica(1), replica(2));
        for i in 0..500 {
            put(&mut a, &format!("k{i}"), "v");
        }
        sync_all(&mut a, &mut b);
        let report = sync_all(&mut a, &mut b);
        assert_eq!(
            report.round_trips, Q as usize,
            "one round trip per partition"
        );
        assert_eq!((report.pulled, report.pushed), (0, 0));
        assert!(
            report.bytes_sent + report.bytes_received < 20 * Q as usize,
            "{report:?}"
        );
    }

    #[test]
    fn an_exchange_repairs_both_sides_and_only_what_differs() {
        let (mut a, mut b) = diverged(2000);
        let report = sync_all(&mut a, &mut b);
        assert_eq!(report.pulled + report.pushed, 4, "{report:?}");
        assert_eq!(a.store().map, b.store().map);
        for p in 0..Q {
            assert_eq!(a.tree(Partition(p)).unwrap(), b.tree(Partition(p)).unwrap());
        }
    }

    #[test]
    fn one_roots_message_finds_the_partitions_that_differ() {
        let (a, mut b) = diverged(200);
        let all: Vec<Partition> = (0..Q).map(Partition).collect();
        let msg = roots(&a, &Scope::All, &all).unwrap();
        let AeMsg::RootsDiffer { partitions } = respond(&mut b, msg).unwrap() else {
            panic!("not a RootsDiffer");
        };
        let expected: Vec<Partition> = all
            .iter()
            .copied()
            .filter(|&p| a.tree(p).unwrap().root() != b.tree(p).unwrap().root())
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(partitions, expected);
        let too_many = AeMsg::Roots(Roots {
            roots: vec![(Partition(0), 0); Q as usize + 1],
        });
        assert!(respond(&mut b, too_many).is_err());
        let out_of_range = AeMsg::Roots(Roots {
            roots: vec![(Partition(Q), 0)],
        });
        assert!(respond(&mut b, out_of_range).is_err());
    }

    #[test]
    fn a_push_only_exchange_gives_everything_and_takes_nothing() {
        let (mut a, mut b) = diverged(300);
        let before = a.store().map.clone();
        for p in (0..Q).map(Partition) {
            let root = a.tree(p).unwrap().root();
            let (ex, msg) = Exchange::begin(p, Scope::All, a.tree(p).unwrap(), true);
            let report = complete_locally(ex, msg, &mut a, &mut b).unwrap();
            assert_eq!(report.started_from, root);
            assert_eq!(report.pulled, 0);
            assert_eq!(
                a.tree(p).unwrap().root(),
                root,
                "the releasing side is unchanged"
            );
        }
        assert_eq!(a.store().map, before);
        // Everything `a` holds is at `b` now; `b`'s own writes stayed there.
        for (key, siblings) in [("only-a", 1), ("k7", 1), ("only-b", 1), ("k9", 1)] {
            assert_eq!(b.read(key.as_bytes()).unwrap().sibling_count(), siblings);
        }
        assert_eq!(
            b.read(b"k7").unwrap().values().next(),
            Some(&b"a-changed"[..])
        );
        let mut released = a;
        for p in (0..Q).map(Partition) {
            let root = released.tree(p).unwrap().root();
            put(&mut released, "late", "write after the sync");
            let p_late = Partition::of_key(b"late", Q);
            let dropped = released
                .release(Q, p, &Scope::All, &[(Scope::All, root)])
                .unwrap();
            assert_eq!(dropped.is_none(), p == p_late, "{p}");
        }
    }

    fn ns_key(ns: &str, key: &str) -> String {
        let stored =
            crate::namespace::key_in(&crate::namespace::Name::new(ns).unwrap(), key.as_bytes());
        String::from_utf8(stored.unwrap()).unwrap()
    }

    #[test]
    fn a_scoped_exchange_compares_and_repairs_only_its_namespaces() {
        let (mut a, mut b) = (replica(1), replica(2));
        for i in 0..200 {
            put(&mut a, &ns_key("wide", &format!("w{i}")), "v");
            put(&mut a, &format!("d{i}"), "v");
            put(&mut b, &ns_key("narrow", &format!("n{i}")), "v");
        }
        let wide = Scope::only(["wide"]);
        let mut repaired = 0;
        for p in (0..Q).map(Partition) {
            let (ex, msg) = Exchange::begin(p, wide.clone(), a.tree_in(p, &wide).unwrap(), false);
            if p.0 == 0 {
                let AeMsg::Scoped { scope, .. } = &msg else {
                    panic!("a scoped exchange asks inside Scoped: {msg:?}");
                };
                assert_eq!(scope, &wide);
            }
            let report = complete_locally(ex, msg, &mut a, &mut b).unwrap();
            repaired += report.pushed + report.pulled;
            assert_eq!(a.tree_in(p, &wide).unwrap(), b.tree_in(p, &wide).unwrap());
        }
        assert_eq!(repaired, 200, "the keys of wide, and nothing else");
        let narrow = Scope::only(["narrow"]);
        let default = Scope::only(["default"]);
        for p in (0..Q).map(Partition) {
            assert!(a.tree_in(p, &narrow).unwrap().root() == HashTree::new().root());
            assert!(b.tree_in(p, &default).unwrap().root() == HashTree::new().root());
        }
        let key = ns_key("narrow", "n1");
        let p = Partition::of_key(key.as_bytes(), Q);
        let stray = AeRequest::Push(Push {
            partition: p,
            entries: vec![(key.clone().into_bytes(), b.read(key.as_bytes()).unwrap())],
        });
        let e = respond(&mut a, stray.about(&wide)).unwrap_err();
        assert!(e.to_string().contains("does not cover"), "{e}");
        let unsorted = AeMsg::Scoped {
            scope: Scope::Only(vec!["z".into(), "a".into()]),
            request: AeRequest::Roots(Roots { roots: Vec::new() }),
        };
        assert!(respond(&mut a, unsorted).is_err());
    }

    #[test]
    fn concurrent_versions_both_survive_an_exchange() {
        let (mut a, mut b) = (replica(1), replica(2));
        a.update(b"k", &Context::default(), Value::Data(b"x".to_vec()), None)
            .unwrap();
        b.update(b"k", &Context::default(), Value::Data(b"y".to_vec()), None)
            .unwrap();
        sync_all(&mut a, &mut b);
        assert_eq!(a.read(b"k").unwrap().sibling_count(), 2);
        assert_eq!(a.read(b"k").unwrap(), b.read(b"k").unwrap());
    }

    #[test]
    fn answers_that_do_not_fit_are_errors() {
        let mut a = replica(1);
        put(&mut a, "k", "v");
        let p = Partition::of_key(b"k", Q);
        let (mut ex, _) = Exchange::start(p, a.tree(p).unwrap());
        assert!(ex.on_reply(AeMsg::Pushed, &mut a).is_err());
        let mut b = replica(2);
        assert!(
            respond(
                &mut b,
                AeMsg::Root(Root {
                    partition: Partition(Q + 1),
                    root: 0
                })
            )
            .is_err()
        );
        assert!(respond(&mut b, AeMsg::Same).is_err());
        let foreign = (b"k".to_vec(), a.read(b"k").unwrap());
        let wrong = Partition((p.0 + 1) % Q);
        assert!(
            respond(
                &mut b,
                AeMsg::Push(Push {
                    partition: wrong,
                    entries: vec![foreign]
                })
            )
            .is_err()
        );
    }

    #[test]
    fn a_deleted_key_is_collected_only_when_every_replica_holds_the_tombstone() {
        use crate::tombstones::{Holding, collect, collectable, probe};
        let mut r: Vec<Replica<MemStore>> = (1..=3).map(replica).collect();
        put(&mut r[0], "k", "v");
        let v = r[0].read(b"k").unwrap();
        for x in &mut r[1..] {
            x.merge(b"k", &v, None).unwrap();
        }
        // the delete reaches A and B; C is down and keeps the value
        let (t, _) = r[0]
            .update(b"k", &v.context(), Value::Tombstone, None)
            .unwrap();
        r[1].merge(b"k", &t, None).unwrap();
        let p = Partition::of_key(b"k", Q);
        let ids: Vec<NodeId> = ["a", "b", "c"]
            .iter()
            .map(|n| NodeId::new(*n).unwrap())
            .collect();
        let replicas = |_| ids.iter().cloned().collect();
        let probe = |r: &mut [Replica<MemStore>]| {
            let found = r[0].to_collect(p, 10, 0, &Default::default()).unwrap();
            let answers: Vec<(NodeId, Vec<Holding>)> = r
                .iter()
                .zip(&ids)
                .map(|(x, id)| (id.clone(), probe(x, &found).unwrap()))
                .collect();
            (found.clone(), collectable(found.len(), &answers, replicas))
        };
        let (found, ok) = probe(&mut r);
        assert_eq!(found.len(), 1);
        assert!(ok.is_empty(), "C still holds the value");
        // anti-entropy brings C the tombstone; now it can go
        let (a, c) = r.split_at_mut(2);
        exchange_locally(&mut c[0], &mut a[0], p).unwrap();
        let (found, ok) = probe(&mut r);
        assert_eq!(ok, vec![0]);
        for x in &mut r {
            assert_eq!(collect(x, &found).unwrap(), 1);
        }
        // more exchanges in every direction never bring anything back
        for _ in 0..3 {
            for i in 0..3 {
                for j in 0..3 {
                    if i != j {
                        let (x, y) = if i < j {
                            let (l, h) = r.split_at_mut(j);
                            (&mut l[i], &mut h[0])
                        } else {
                            let (l, h) = r.split_at_mut(i);
                            (&mut h[0], &mut l[j])
                        };
                        exchange_locally(x, y, p).unwrap();
                    }
                }
            }
        }
        for x in &r {
            assert!(x.read(b"k").unwrap().is_empty());
            assert_eq!(x.key_count(), 0);
        }
    }

    proptest! {

        #![proptest_config(crate::proptest_config())]
        #[test]
        fn exchanges_make_replicas_identical(
            shared in prop::collection::vec(0u16..300, 0..100),
            only_a in prop::collection::vec(0u16..300, 0..20),
            only_b in prop::collection::vec(0u16..300, 0..20),
        ) {
            let (mut a, mut b) = (replica(1), replica(2));
            for k in &shared {
                let key = format!("k{k}");
                put(&mut a, &key, "s");
                let state = a.read(key.as_bytes()).unwrap();
                b.merge(key.as_bytes(), &state, None).unwrap();
            }
            for k in &only_a { put(&mut a, &format!("k{k}"), "a"); }
            for k in &only_b { put(&mut b, &format!("k{k}"), "b"); }
            // the expected result: per key, the merge of both sides
            let mut expected = a.store().map.clone();
            for (k, v) in &b.store().map {
                let theirs = crate::store::decode_state(v).unwrap();
                let merged = match expected.get(k) {
                    Some(mine) => crate::store::decode_state(mine).unwrap().merge(&theirs),
                    None => theirs,
                };
                expected.insert(k.clone(), crate::store::encode_state(&merged));
            }
            sync_all(&mut a, &mut b);
            prop_assert_eq!(&a.store().map, &expected);
            prop_assert_eq!(&b.store().map, &expected);
            let again = sync_all(&mut a, &mut b);
            prop_assert_eq!(again.pulled + again.pushed, 0);
        }
    }
}

//! The replica: one node's stored copy of the keys it replicates.
//!
//! Receives reads, coordinator updates (which mint a new dot with this
//! replica's actor) and writes of sibling sets from other replicas (merged
//! with the DVV join). Keeps a hash tree per partition current on every
//! write (its leaves per namespace: see `crate::placement`). Storage is behind the small `Store` trait: fjall in the node, a
//! `BTreeMap` in tests and the simulator.
//!
//! Here: opening, writes and merges; how a key's state is read from and
//! written to storage in `stored` (a large set's or map's deltas kept
//! beside its record in `tails`, decoded copies of large states in
//! `decoded`); the start-up scan and the leaves and usage it rebuilds in
//! `load`. Reading by range (segments, chunks, listing pages) is in
//! `scan`, what tombstone collection asks in `collect`, the hints kept
//! for other owners in `hinted`.
//!
//! Invariants:
//! - a stored value (its record joined with its tail) is always the DVV
//!   merge of everything this replica was given for the key, so writes
//!   are idempotent and order-independent;
//! - the leaves of a (partition, namespace) the start-up load has passed
//!   always equal a rebuild from a scan of it (see `Loading`);
//! - the stored key is `partition (u32, big-endian) ++ user key`, so a
//!   partition is one contiguous range;
//! - every partition holding a key whose siblings are all tombstones or
//!   expiring values (`SiblingSet::collectable_at`) is in `tombstoned`, at
//!   a time no later than that key may be collected (it may name more, and
//!   earlier), so the search for keys to collect scans only those, once
//!   due (once loaded: until then a partition not reached yet may be
//!   missing, which only delays its collection).

mod collect;
mod decoded;
mod hinted;
mod load;
mod partitions;
mod scan;
mod stored;
mod tails;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::crdt::{CausalContext, Operation, Typed};
use crate::error::{Error, Result};
use crate::hints::HintLog;
use crate::merkle::{HashTree, Leaves};
use crate::namespace;
use crate::node::NodeId;
use crate::partition::Partition;
use crate::placement::Scope;
use crate::store::{Store, decode_state, encode_state};
use crate::version::{Actor, Context, Dot, SiblingSet, Value};
use load::{Loading, Record, Tally};

/// Messages of the replica concern between nodes (`PeerMsg::Replica`).
/// Variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaMsg {
    /// Read the local copy; answered with `State`.
    Read {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Coordinate a write here: supersede what `context` covers, mint a dot
    /// with this replica's actor. Answered with `Updated`. `hint_for` names
    /// the owner this replica stands in for (sloppy quorum).
    Update {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        context: Context,
        value: Value,
        hint_for: Option<NodeId>,
    },
    /// Merge a sibling set minted elsewhere. Answered with `Ack`.
    Write {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        state: SiblingSet,
        hint_for: Option<NodeId>,
    },
    State {
        state: SiblingSet,
    },
    Updated {
        state: SiblingSet,
        dot: Dot,
    },
    Ack,
    /// List the live keys of `partition` after `after` that start with
    /// `prefix`: at most `limit`, scanning at most `limit *
    /// listing::SCAN_PER_KEY` entries. Answered with `Keys`.
    List {
        partition: Partition,
        after: Option<Vec<u8>>,
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
        limit: u32,
        /// The Q `partition` is at (0 from a protocol 7 coordinator: this
        /// replica's).
        #[serde(with = "crate::protocol::since_8")]
        partitions: u32,
    },
    /// Live keys in order, and the last key scanned when the scan stopped
    /// before the partition's end (None: the partition is done).
    Keys {
        keys: Vec<Vec<u8>>,
        scanned_to: Option<Vec<u8>>,
    },
    /// Apply a data-type operation here, as its minting replica (a typed
    /// namespace's write); `seen` is the context of the read a remove is
    /// based on. Answered with `Applied`. `hint_for` as for `Update`.
    Apply {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        operation: Operation,
        seen: CausalContext,
        hint_for: Option<NodeId>,
    },
    /// What the client's answer to an `Apply` needs (a counter's whole
    /// state, one entry per writer; for a set or a map, the delta again:
    /// the answer shows no members or fields, as the whole state would
    /// cost its size on the wire), and the operation's delta: what the other replicas merge
    /// (`Write`), a few bytes whatever the size of the state.
    Applied {
        state: SiblingSet,
        delta: SiblingSet,
    },
}

/// The answer to a `Read` of a key whose stored record is `stored` (None:
/// not stored), for a caller that found the record without the replica
/// (in the row cache in front of storage). None for a set's or a map's:
/// deltas stored beside its record may belong to it (`tails`), which
/// only the replica joins in.
pub fn read_answer(stored: Option<&[u8]>) -> Option<Result<ReplicaMsg>> {
    if stored.is_some_and(crate::store::holds_kernel) {
        return None;
    }
    Some(
        stored
            .map(decode_state)
            .transpose()
            .map(|state| ReplicaMsg::State {
                state: state.unwrap_or_default(),
            }),
    )
}

/// Sets merged in from peers may exceed the configured sibling limit (the
/// limit is enforced where writes are minted), but never by this factor: a
/// bound on what a peer can make us store.
const MERGE_SIBLING_FACTOR: usize = 4;
/// Entries read per step when scanning storage.
const SCAN_CHUNK: usize = 4096;

pub struct Replica<S: Store> {
    store: S,
    hints: HintLog<S>,
    /// The cluster's Q as this replica last heard (`set_partitions`): what
    /// partitions named to it mean, and what its trees are kept per.
    q: u32,
    /// The Q its stored keys are prefixed at (`cluster.partitions`),
    /// which never changes: a partition at `q` is read as the part of its
    /// ancestor at `layout` whose keys hash into it (`crate::partition`).
    layout: u32,
    actor: Actor,
    /// The highest counter `actor` has minted on any key: a key that holds
    /// no value of `actor` gets its next dot above it (`update_above`).
    minted: u64,
    /// The sibling limit of the namespace `default`; other namespaces'
    /// come from `namespaces`.
    max_siblings: usize,
    namespaces: namespace::Table,
    tally: Tally,
    /// Partitions that may hold deleted or expiring keys, with the earliest
    /// time one of them may be gone: marked by every such key stored, moved
    /// on or cleared by a search. Without it, tombstone collection decoded
    /// every key of every partition each round (and every expiring key
    /// until it expired).
    tombstoned: HashMap<Partition, u64>,
    /// Per partition holding counters, every writer their copies name
    /// (entries and folds' records): added to by every counter stored,
    /// made exact by each search. Collection searches a partition for
    /// counters to fold only while it names a writer no member writes as.
    counter_writers: HashMap<Partition, BTreeSet<Actor>>,
    /// How long a timed delete is kept before collection
    /// (`Value::Deleted`; 0 until `keep_deleted` says).
    keep_deleted_ms: u64,
    /// The start-up scan still under way, if it is.
    loading: Option<Loading>,
    /// Decoded copies of the large typed states written last.
    decoded: decoded::Decoded,
    /// The keys whose large set or map has deltas stored beside it.
    tails: tails::Tails,
}

/// Keys and bytes (keys plus encoded sibling sets) one partition holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub keys: u64,
    pub bytes: u64,
}

/// What opening a replica found in storage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub keys: u64,
    pub partitions: usize,
    /// Records that could not be decoded (left in place, logged by the shell).
    pub corrupt: Vec<Vec<u8>>,
    /// Records stored again in the current encoding.
    pub upgraded: u64,
}

impl<S: Store> Replica<S> {
    /// Opens a replica over `store` (data) and `hints` and scans the data
    /// to the end at once (`opening`, then `load` until done).
    pub fn open(
        store: S,
        hints: S,
        q: u32,
        actor: Actor,
        max_siblings: usize,
    ) -> Result<(Self, OpenReport)> {
        let mut replica = Self::opening(store, hints, q, actor, max_siblings)?;
        loop {
            if let Some(report) = replica.load(SCAN_CHUNK)? {
                return Ok((replica, report));
            }
        }
    }

    /// Opens a replica over `store` (data) and `hints` without reading the
    /// data: it serves at once, and `load` scans the data in steps.
    pub fn opening(store: S, hints: S, q: u32, actor: Actor, max_siblings: usize) -> Result<Self> {
        Ok(Replica {
            tails: tails::Tails::open(&store)?,
            store,
            hints: HintLog::open(hints)?,
            q,
            layout: q,
            actor,
            minted: 0,
            max_siblings,
            namespaces: namespace::Table::default(),
            tally: Tally::default(),
            tombstoned: HashMap::new(),
            counter_writers: HashMap::new(),
            keep_deleted_ms: 0,
            loading: Some(Loading::default()),
            decoded: decoded::Decoded::default(),
        })
    }

    pub fn actor(&self) -> Actor {
        self.actor
    }

    /// Keeps the decoded copy of every state it writes, and gives every
    /// set and map a tail, not only large ones (the simulator's replicas:
    /// its faults then run against both).
    #[cfg(feature = "sim")]
    pub fn keep_every_decoded_state(&mut self) {
        self.decoded.keep_any_size();
        self.tails.take_any_size();
    }

    /// Keeps each timed delete `ms` before tombstone collection may take
    /// it (`anti_entropy.keep_deleted_ms`).
    pub fn keep_deleted(&mut self, ms: u64) {
        self.keep_deleted_ms = ms;
    }

    /// The cluster's namespaces, as the membership view last said: their
    /// settings apply to the keys in them from now on.
    pub fn set_namespaces(&mut self, table: namespace::Table) {
        self.namespaces = table;
    }

    /// The most siblings a write may leave `key` with: its namespace's
    /// limit (the node's for `default`, and for a namespace not known here
    /// yet: a coordinator checked that it exists).
    fn sibling_limit(&self, key: &[u8]) -> usize {
        match namespace::split_key(key) {
            Ok((name, _)) => self
                .namespaces
                .get(name)
                .map_or(self.max_siblings, |s| s.max_siblings as usize),
            Err(_) => self.max_siblings,
        }
    }

    pub fn partition_count(&self) -> u32 {
        self.q
    }

    pub fn key_count(&self) -> u64 {
        self.tally.usage.values().map(|u| u.keys).sum()
    }

    /// Keys and bytes held per partition (partitions holding none are absent).
    pub fn usage(&self) -> &HashMap<Partition, Usage> {
        &self.tally.usage
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The hash tree of everything `p` holds (empty if nothing).
    pub fn tree(&self, p: Partition) -> Result<HashTree> {
        self.tree_in(p, &Scope::All)
    }

    /// The hash tree of the keys of `p` in the namespaces of `scope`;
    /// unavailable until the start-up scan is past `p`.
    pub fn tree_in(&self, p: Partition, scope: &Scope) -> Result<HashTree> {
        self.settled(p)?;
        Ok(self
            .tally
            .trees
            .get(&p)
            .map(|shelf| shelf.combined(scope).tree())
            .unwrap_or_default())
    }

    /// Coordinates a write: the new value supersedes what `ctx` covers and
    /// gets a fresh dot of this replica's actor. Refused if the key would
    /// hold more than the sibling limit (the client must resolve first).
    /// `hint_for` names the owner this replica stands in for, if any.
    pub fn update(
        &mut self,
        key: &[u8],
        ctx: &Context,
        value: Value,
        hint_for: Option<&NodeId>,
    ) -> Result<(SiblingSet, Dot)> {
        let stored = self.stored(key)?;
        let current = stored.as_ref().map(|(s, _)| s.clone()).unwrap_or_default();
        let next = current.update_above(ctx, value, self.actor, self.minted)?;
        let limit = self.sibling_limit(key);
        if next.sibling_count() > limit {
            return Err(Error::InvalidRequest(format!(
                "key would hold {} siblings, more than the limit of {limit}: read it and write back with its context to resolve them",
                next.sibling_count(),
            )));
        }
        let dot = Dot {
            actor: self.actor,
            counter: next.context().get(self.actor),
        };
        self.record_hint(key, hint_for)?;
        self.store_state(key, stored.map(|(_, record)| record), &next)?;
        self.minted = self.minted.max(dot.counter);
        Ok((next, dot))
    }

    /// Applies a data-type operation as its minting replica at `now` (ms
    /// since the Unix epoch: a map register's time, see `Typed::apply`);
    /// returns what the client's answer needs (see `ReplicaMsg::Applied`)
    /// and the delta to replicate.
    pub fn apply_typed(
        &mut self,
        key: &[u8],
        operation: &Operation,
        seen: &CausalContext,
        hint_for: Option<&NodeId>,
        now: u64,
    ) -> Result<(SiblingSet, SiblingSet)> {
        let (next, old) = self.take_stored(key)?.unzip();
        let mut next = next.unwrap_or_default();
        let delta = SiblingSet::of_typed(next.apply(self.actor, operation, seen, now)?);
        self.record_hint(key, hint_for)?;
        let record = self.store_change(key, old, &next, &delta)?;
        let answer = match next.typed() {
            Some(counter @ Typed::Counter(_)) => SiblingSet::of_typed(counter.clone()),
            _ => delta.clone(),
        };
        self.keep_decoded(key, next, record);
        Ok((answer, delta))
    }

    /// Merges a sibling set minted elsewhere. Returns whether the local
    /// copy changed; writes nothing when it already contained `incoming`.
    pub fn merge(
        &mut self,
        key: &[u8],
        incoming: &SiblingSet,
        hint_for: Option<&NodeId>,
    ) -> Result<bool> {
        incoming.validate(self.sibling_limit(key).saturating_mul(MERGE_SIBLING_FACTOR))?;
        self.record_hint(key, hint_for)?;
        let (current, old) = self.take_stored(key)?.unzip();
        let mut merged = current.unwrap_or_default();
        // A set or map tells a change by its kernel (its context, and its
        // entries' digest), without encoding it; any other state by its
        // encoding, which equal states share.
        let kernel = |s: &SiblingSet| s.kernel().map(|(r, c, d)| (r, c.clone(), d));
        let before = kernel(&merged);
        merged.join(incoming);
        let (changed, record) = match (old, before.is_some() && kernel(&merged).is_some()) {
            (Some(old), true) if before == kernel(&merged) => (false, old),
            (old, true) => (true, self.store_change(key, old, &merged, incoming)?),
            (old, false) => {
                let encoded = encode_state(&merged);
                let record = Record::of(key, &merged, &encoded, 0);
                match old {
                    Some(old) if old == record => (false, old),
                    _ => (true, self.store_whole(key, old, &merged, &encoded)?),
                }
            }
        };
        self.keep_decoded(key, merged, record);
        Ok(changed)
    }

    /// Serves one replica request (`Read`, `Update`, `Write`, `List` or
    /// `Apply`) at
    /// `now` (ms since the Unix epoch: a listing hides what expired by
    /// then) and returns its answer.
    pub fn apply(&mut self, msg: ReplicaMsg, now: u64) -> Result<ReplicaMsg> {
        match msg {
            ReplicaMsg::Read { key } => Ok(ReplicaMsg::State {
                state: self.read(&key)?,
            }),
            ReplicaMsg::Update {
                key,
                context,
                value,
                hint_for,
            } => {
                let (state, dot) = self.update(&key, &context, value, hint_for.as_ref())?;
                Ok(ReplicaMsg::Updated { state, dot })
            }
            ReplicaMsg::Write {
                key,
                state,
                hint_for,
            } => {
                self.merge(&key, &state, hint_for.as_ref())?;
                Ok(ReplicaMsg::Ack)
            }
            ReplicaMsg::List {
                partition,
                after,
                prefix,
                limit,
                partitions,
            } => {
                if partitions != 0 {
                    self.check_partitions(partitions)?;
                }
                self.list(partition, after, &prefix, limit, now)
            }
            ReplicaMsg::Apply {
                key,
                operation,
                seen,
                hint_for,
            } => {
                let (state, delta) =
                    self.apply_typed(&key, &operation, &seen, hint_for.as_ref(), now)?;
                Ok(ReplicaMsg::Applied { state, delta })
            }
            ReplicaMsg::State { .. }
            | ReplicaMsg::Updated { .. }
            | ReplicaMsg::Ack
            | ReplicaMsg::Keys { .. }
            | ReplicaMsg::Applied { .. } => Err(Error::InvalidRequest(
                "a reply was sent to the replica as a request".into(),
            )),
        }
    }

    /// Removes `key` from this replica (a stand-in's copy after handoff, a
    /// collected tombstone).
    pub fn remove(&mut self, key: &[u8]) -> Result<()> {
        let (stored, p) = self.place(key);
        self.decoded.forget(&stored);
        if let Some(bytes) = self.store.get(&stored)? {
            let old = match self.scanned(&stored) {
                true => Some(self.record(key, &stored, &bytes)?),
                false => None,
            };
            self.store.remove(&stored)?;
            self.tails.drop(&mut self.store, &stored)?;
            if let Some(old) = old {
                self.tally.count(self.q, p, key, Some(old), None);
            }
        }
        Ok(())
    }

    /// This replica dropped copies holding dots of its own writer: minting
    /// on one of those keys again would reuse a dot (the counter comes from
    /// the local copy), and two different values under one dot never
    /// converge. So it writes as a fresh actor from now on. (The simulator
    /// found this: a stand-in handed a key off, dropped its copy, and later
    /// minted the same dot again for another value.) Tombstone collection
    /// needs no new writer: a key minted on after its collection gets dots
    /// above every counter this actor minted (`update_above`).
    fn forget_writer(&mut self) {
        self.actor = self.actor.successor();
    }

    /// Notes the writers a counter (or a map's counter fields) stored in
    /// `p` names.
    fn note_counter(&mut self, p: Partition, state: &SiblingSet) {
        let writers = state.count_writers();
        if !writers.is_empty() {
            self.counter_writers.entry(p).or_default().extend(writers);
        }
    }
}

/// One partition's hash-tree leaves, per namespace name (`default`'s keys
/// under its name; a stored key of no well-formed namespace, which no
/// write admits, under the empty name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Shelf(BTreeMap<String, Leaves>);

impl Shelf {
    /// The leaves `key`'s namespace keeps.
    fn leaves(&mut self, key: &[u8]) -> &mut Leaves {
        let name = namespace::split_key(key).map_or("", |(name, _)| name);
        if !self.0.contains_key(name) {
            self.0.insert(name.to_string(), Leaves::default());
        }
        self.0.get_mut(name).expect("inserted above")
    }

    /// The leaves of the namespaces of `scope` together.
    fn combined(&self, scope: &Scope) -> Leaves {
        let mut all = Leaves::default();
        for (_, leaves) in self.0.iter().filter(|(name, _)| scope.contains(name)) {
            all.add(leaves);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::{MemStore, decode_stored, split_storage_key, storage_key};

    fn replica() -> Replica<MemStore> {
        Replica::open(MemStore::default(), MemStore::default(), 64, Actor(1), 5)
            .unwrap()
            .0
    }

    fn data(s: &str) -> Value {
        Value::Data(s.as_bytes().to_vec())
    }

    fn rebuilt_trees(r: &Replica<MemStore>) -> HashMap<Partition, Shelf> {
        Replica::open(r.store().clone(), MemStore::default(), 64, Actor(1), 5)
            .unwrap()
            .0
            .tally
            .trees
    }

    #[test]
    fn a_key_written_after_its_tombstone_was_collected_gets_a_dot_no_old_context_covers() {
        // The simulator found this (seed 92136): a key deleted, its
        // tombstone collected everywhere, then written again through the
        // same replica, which minted the dots of the old writes again; a
        // client still holding the delete's context covers them, so its
        // next write would drop the new value as if it had seen it.
        let mut r = replica();
        let (v1, _) = r
            .update(b"k", &Context::default(), data("v1"), None)
            .unwrap();
        let (deleted, _) = r
            .update(b"k", &v1.context(), Value::Tombstone, None)
            .unwrap();
        let kept_by_a_client = deleted.context();
        r.remove(b"k").unwrap(); // collected on every replica
        let (_, dot) = r
            .update(b"k", &Context::default(), data("v2"), None)
            .unwrap();
        assert!(!kept_by_a_client.covers(dot), "{dot:?} was minted before");
        // A client's old context with the key's own earlier dots gives no
        // way back below either.
        let (_, again) = r.update(b"k2", &kept_by_a_client, data("x"), None).unwrap();
        assert!(!kept_by_a_client.covers(again));
    }

    /// Every key `r` lists with `prefix`, a few at a time.
    fn list_all(r: &mut Replica<MemStore>, prefix: &[u8]) -> Vec<Vec<u8>> {
        let mut listed = Vec::new();
        for p in 0..r.q {
            let mut after = None;
            loop {
                let asked = ReplicaMsg::List {
                    partition: Partition(p),
                    after: after.clone(),
                    prefix: prefix.to_vec(),
                    limit: 2,
                    partitions: r.q,
                };
                let Ok(ReplicaMsg::Keys { keys, scanned_to }) = r.apply(asked, 0) else {
                    panic!("a listing was not answered with keys");
                };
                listed.extend(keys);
                match scanned_to {
                    Some(last) => after = Some(last),
                    None => break,
                }
            }
        }
        listed.sort();
        listed
    }

    #[test]
    fn a_listing_returns_its_namespaces_live_keys_only() {
        let mut r = replica();
        let ns = |n: &str| namespace::Name::new(n).unwrap();
        let mut expected: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
        for (name, count) in [("default", 30), ("carts", 20), ("cart", 10), ("users", 5)] {
            for i in 0..count {
                let key = namespace::key_in(&ns(name), format!("k{i:02}").as_bytes()).unwrap();
                r.update(&key, &Context::default(), data("v"), None)
                    .unwrap();
                expected.entry(name).or_default().push(key);
            }
        }
        // A deleted key is not listed.
        let gone = expected.get_mut("carts").unwrap().pop().unwrap();
        let state = r.read(&gone).unwrap();
        r.update(&gone, &state.context(), Value::Tombstone, None)
            .unwrap();
        for (name, mut keys) in expected {
            keys.sort();
            let prefix = namespace::key_prefix(&ns(name));
            assert_eq!(list_all(&mut r, &prefix), keys, "namespace {name}");
        }
        let cart_k0 = namespace::key_in(&ns("cart"), b"k0").unwrap();
        assert_eq!(list_all(&mut r, &cart_k0).len(), 10, "a prefix within it");
    }

    #[test]
    fn a_write_is_held_to_its_namespaces_sibling_limit() {
        let mut r = replica(); // default: 5 siblings
        let carts = namespace::Name::new("carts").unwrap();
        let mut table = namespace::Table::default();
        let settings = |max_siblings| namespace::Settings {
            n: 3,
            r: 2,
            w: 2,
            ttl_ms: 0,
            max_siblings,
            max_value_bytes: 100,
            kind: namespace::Kind::Blob,
        };
        table
            .create(carts.clone(), settings(2), &NodeId::new("a").unwrap())
            .unwrap();
        r.set_namespaces(table.clone());
        let blind = |r: &mut Replica<MemStore>, key: &[u8]| {
            r.update(key, &Context::default(), data("v"), None)
                .map(|(s, _)| s.sibling_count())
        };
        let key = namespace::key_in(&carts, b"k").unwrap();
        assert_eq!(blind(&mut r, &key).unwrap(), 1);
        assert_eq!(blind(&mut r, &key).unwrap(), 2);
        let e = blind(&mut r, &key).unwrap_err();
        assert!(e.to_string().contains("more than the limit of 2"), "{e}");
        for _ in 0..5 {
            blind(&mut r, b"k").unwrap();
        }
        assert!(blind(&mut r, b"k").is_err(), "default keeps the node's 5");
        // Raised: the next write is held to the new limit.
        table
            .alter(&carts, settings(3), &NodeId::new("a").unwrap())
            .unwrap();
        r.set_namespaces(table);
        assert_eq!(blind(&mut r, &key).unwrap(), 3);
    }

    #[test]
    fn a_dropped_namespaces_keys_are_deleted_a_batch_at_a_time() {
        let mut r = replica();
        let carts = namespace::Name::new("carts").unwrap();
        let by = NodeId::new("a").unwrap();
        let mut table = namespace::Table::default();
        let settings = namespace::Settings {
            n: 3,
            r: 2,
            w: 2,
            ttl_ms: 0,
            max_siblings: 5,
            max_value_bytes: 100,
            kind: namespace::Kind::Blob,
        };
        table.create(carts.clone(), settings, &by).unwrap();
        r.set_namespaces(table.clone());
        let keys: Vec<Vec<u8>> = (0..5)
            .map(|i| namespace::key_in(&carts, format!("k{i}").as_bytes()).unwrap())
            .collect();
        for key in keys.iter().chain([&b"kept".to_vec()]) {
            r.update(key, &Context::default(), data("v"), None).unwrap();
        }
        let all: Vec<Partition> = (0..64).map(Partition).collect();
        let led = |r: &mut Replica<MemStore>, limit| r.delete_dropped(&all, limit, 0).unwrap();
        assert!(led(&mut r, 10).is_empty(), "nothing dropped yet");
        table.drop_namespace(&carts, &by).unwrap();
        r.set_namespaces(table);
        // Only the partitions given: the others' leaders delete theirs.
        let first = Partition::of_key(&keys[0], 64);
        let others: Vec<Partition> = all.iter().copied().filter(|p| *p != first).collect();
        let mut deleted = r.delete_dropped(&others, 10, 0).unwrap();
        assert!(
            deleted
                .iter()
                .all(|(k, _)| Partition::of_key(k, 64) != first)
        );
        assert!(deleted.len() < 5);
        deleted.extend(led(&mut r, 3));
        deleted.extend(led(&mut r, 3));
        assert!(led(&mut r, 3).is_empty(), "all deleted");
        assert_eq!(deleted.len(), 5);
        for (key, tombstone) in &deleted {
            assert_eq!(&r.read(key).unwrap(), tombstone);
            assert!(tombstone.is_gone_at(0), "{key:?}: {tombstone:?}");
        }
        assert_eq!(r.read(b"kept").unwrap().values().count(), 1);
    }

    #[test]
    fn update_mints_dots_and_persists() {
        let mut r = replica();
        let (s, dot) = r
            .update(b"k", &Context::default(), data("v"), None)
            .unwrap();
        assert_eq!(
            dot,
            Dot {
                actor: Actor(1),
                counter: 1
            }
        );
        assert_eq!(r.read(b"k").unwrap(), s);
        assert_eq!(r.key_count(), 1);
        let (s2, dot2) = r.update(b"k", &s.context(), data("w"), None).unwrap();
        assert_eq!(dot2.counter, 2);
        assert_eq!(s2.values().collect::<Vec<_>>(), vec![b"w".as_slice()]);
        assert_eq!(r.key_count(), 1);
    }

    #[test]
    fn merge_is_idempotent_and_keeps_trees_exact() {
        let mut a = replica();
        let mut b = Replica::open(MemStore::default(), MemStore::default(), 64, Actor(2), 5)
            .unwrap()
            .0;
        for i in 0..50u32 {
            let key = format!("key{i}").into_bytes();
            let (s, _) = a
                .update(
                    &key,
                    &Context::default(),
                    Value::Data(i.to_le_bytes().to_vec()),
                    None,
                )
                .unwrap();
            b.merge(&key, &s, None).unwrap();
            b.merge(&key, &s, None).unwrap();
        }
        assert_eq!(a.store().map, b.store().map);
        assert_eq!(a.tally.trees, b.tally.trees);
        assert_eq!(a.tally.trees, rebuilt_trees(&a));
        let reopened = Replica::open(b.store().clone(), MemStore::default(), 64, Actor(3), 5)
            .unwrap()
            .0;
        assert_eq!(b.usage(), reopened.usage());
        assert_eq!(b.key_count(), 50);
    }

    #[test]
    fn the_sibling_limit_refuses_new_writes_not_merges() {
        let mut r = replica();
        for i in 0..5 {
            r.update(b"k", &Context::default(), data(&i.to_string()), None)
                .unwrap();
        }
        let e = r
            .update(b"k", &Context::default(), data("six"), None)
            .unwrap_err();
        assert!(e.to_string().contains("siblings"), "{e}");
        // resolving with the context is always possible
        let ctx = r.read(b"k").unwrap().context();
        r.update(b"k", &ctx, data("resolved"), None).unwrap();
        assert_eq!(r.read(b"k").unwrap().sibling_count(), 1);
    }

    #[test]
    fn the_tombstone_search_scans_only_partitions_that_may_hold_one() {
        let mut r = replica();
        let p = Partition::of_key(b"k", 64);
        let (live, _) = r
            .update(b"k", &Context::default(), data("v"), None)
            .unwrap();
        // A tombstone planted under the replica, which was not told: the
        // partition never held one, so the search does not look.
        let planted = SiblingSet::default()
            .update(&Context::default(), Value::Tombstone, Actor(9))
            .unwrap();
        let other = (0..)
            .map(|i| format!("other{i}").into_bytes())
            .find(|k| Partition::of_key(k, 64) == p)
            .unwrap();
        let planted_at = storage_key(p, &other);
        r.store.put(&planted_at, &encode_state(&planted)).unwrap();
        assert!(
            r.to_collect(p, 10, 0, &Default::default())
                .unwrap()
                .is_empty()
        );
        // Opening scans everything, so it knows.
        let mut reopened = Replica::open(r.store().clone(), MemStore::default(), 64, Actor(1), 5)
            .unwrap()
            .0;
        assert_eq!(
            reopened.to_collect(p, 10, 0, &Default::default()).unwrap(),
            vec![(other, planted)]
        );
        r.store.remove(&planted_at).unwrap();
        // A delete through the replica marks its partition...
        let (deleted, _) = r
            .update(b"k", &live.context(), Value::Tombstone, None)
            .unwrap();
        assert_eq!(
            r.to_collect(p, 10, 0, &Default::default()).unwrap(),
            vec![(b"k".to_vec(), deleted.clone())]
        );
        // ... and a search that finds none clears the mark.
        r.update(b"k", &deleted.context(), data("again"), None)
            .unwrap();
        assert!(
            r.to_collect(p, 10, 0, &Default::default())
                .unwrap()
                .is_empty()
        );
        assert!(!r.tombstoned.contains_key(&p));
    }

    #[test]
    fn a_timed_delete_is_found_for_collection_only_once_it_was_kept() {
        let mut r = replica();
        r.keep_deleted(5000);
        let p = Partition::of_key(b"k", 64);
        let (live, _) = r
            .update(b"k", &Context::default(), data("v"), None)
            .unwrap();
        let delete = Value::Deleted { at_ms: 1000 };
        let (deleted, _) = r.update(b"k", &live.context(), delete, None).unwrap();
        assert!(
            r.read(b"k").unwrap().live_values(1000).next().is_none(),
            "reads as gone at once"
        );
        assert!(
            r.to_collect(p, 10, 5999, &Default::default())
                .unwrap()
                .is_empty()
        );
        assert_eq!(r.tombstoned.get(&p), Some(&6000), "searched again at 6000");
        assert_eq!(
            r.to_collect(p, 10, 6000, &Default::default()).unwrap(),
            vec![(b"k".to_vec(), deleted)]
        );
    }

    #[test]
    fn an_expired_key_is_found_for_collection_after_its_deadline_only() {
        let mut r = replica();
        let p = Partition::of_key(b"k", 64);
        let expiring = Value::Expiring {
            data: b"v".to_vec(),
            expires_ms: 1000,
        };
        let (state, _) = r.update(b"k", &Context::default(), expiring, None).unwrap();
        let listed = |r: &mut Replica<MemStore>, now| {
            let asked = ReplicaMsg::List {
                partition: p,
                after: None,
                prefix: Vec::new(),
                limit: 10,
                partitions: 0,
            };
            match r.apply(asked, now).unwrap() {
                ReplicaMsg::Keys { keys, .. } => keys,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(listed(&mut r, 999), [b"k".to_vec()]);
        assert!(
            listed(&mut r, 1000).is_empty(),
            "an expired key is not listed"
        );
        // Before the deadline nothing is found, and the partition stays
        // marked: the value expires later.
        assert!(
            r.to_collect(p, 10, 999, &Default::default())
                .unwrap()
                .is_empty()
        );
        assert_eq!(r.tombstoned.get(&p), Some(&1000), "searched again at 1000");
        assert_eq!(
            r.to_collect(p, 10, 1000, &Default::default()).unwrap(),
            vec![(b"k".to_vec(), state.clone())]
        );
        // Collected like a tombstone: only while the copy is that one.
        assert_eq!(
            crate::tombstones::collect(&mut r, &[(b"k".to_vec(), state)]).unwrap(),
            1
        );
        assert_eq!(r.read(b"k").unwrap(), SiblingSet::default());
        // A value without a deadline is never collected.
        let (live, _) = r
            .update(b"k2", &Context::default(), data("v"), None)
            .unwrap();
        assert_eq!(
            crate::tombstones::collect(&mut r, &[(b"k2".to_vec(), live)]).unwrap(),
            0
        );
    }

    #[test]
    fn an_operation_is_applied_once_at_its_minter_and_replicated_as_its_delta() {
        use crate::crdt::Reading;
        let mut minter = replica();
        let mut other = Replica::open(MemStore::default(), MemStore::default(), 64, Actor(2), 5)
            .unwrap()
            .0;
        let none = CausalContext::default();
        let add = |m: &str| Operation::Add(vec![m.as_bytes().to_vec()]);
        for i in 0..1000 {
            let (_, delta) = minter
                .apply_typed(b"s", &add(&i.to_string()), &none, None, 0)
                .unwrap();
            other.merge(b"s", &delta, None).unwrap();
        }
        let (answer, delta) = minter
            .apply_typed(b"s", &add("milk"), &none, None, 0)
            .unwrap();
        assert!(
            encode_state(&delta).len() < 64,
            "an add to a set of 1000 replicates {} bytes",
            encode_state(&delta).len()
        );
        assert_eq!(answer, delta, "a set's answer carries no members");
        other.merge(b"s", &delta, None).unwrap();
        assert_eq!(minter.read(b"s").unwrap(), other.read(b"s").unwrap());
        assert_eq!(
            minter.tally.trees, other.tally.trees,
            "the replicas' trees agree"
        );
        // A remove takes away only what its context saw.
        let seen = minter.read(b"s").unwrap().typed().unwrap().context();
        other
            .apply_typed(b"s", &add("milk"), &none, None, 0)
            .map(|(_, d)| minter.merge(b"s", &d, None))
            .unwrap()
            .unwrap();
        let remove = Operation::Remove(vec![b"milk".to_vec()]);
        let (_, delta) = minter.apply_typed(b"s", &remove, &seen, None, 0).unwrap();
        other.merge(b"s", &delta, None).unwrap();
        let members =
            |r: &Replica<MemStore>| match r.read(b"s").unwrap().typed().unwrap().reading(false) {
                Reading::Set(m) => m,
                other => panic!("{other:?}"),
            };
        assert!(
            members(&minter).contains(&b"milk".to_vec()),
            "the unseen add survives"
        );
        assert_eq!(members(&minter), members(&other));
        // A counter answers its value; a wrong type is refused.
        let incr = Operation::Increment(5);
        let (answer, _) = minter.apply_typed(b"c", &incr, &none, None, 0).unwrap();
        assert_eq!(answer.typed().unwrap().reading(false), Reading::Counter(5));
        let e = minter.apply_typed(b"s", &incr, &none, None, 0).unwrap_err();
        assert!(e.to_string().contains("does not apply to a set"), "{e}");
        assert_eq!(minter.read(b"s").unwrap(), other.read(b"s").unwrap());
    }

    #[test]
    fn a_state_stored_before_data_types_is_stored_again_when_opened() {
        let state = SiblingSet::new()
            .update(&Context::default(), data("v"), Actor(1))
            .unwrap();
        let current = encode_state(&state);
        // The old encoding: the same, without the data-type field (None
        // is its last byte).
        let old = &current[..current.len() - 1];
        assert_eq!(decode_stored(old).unwrap(), (state.clone(), true));
        let at = storage_key(Partition::of_key(b"k", 64), b"k");
        let mut store = MemStore::default();
        store.put(&at, old).unwrap();
        let (r, report) = Replica::open(store, MemStore::default(), 64, Actor(1), 5).unwrap();
        assert_eq!((report.keys, report.upgraded), (1, 1));
        assert_eq!(r.store().map.get(&at), Some(&current));
        assert_eq!(r.read(b"k").unwrap(), state);
        let mut fresh = replica();
        fresh.merge(b"k", &state, None).unwrap();
        assert_eq!(
            r.tally.trees, fresh.tally.trees,
            "trees hash the current bytes"
        );
    }

    #[test]
    fn corrupt_records_are_reported_not_fatal() {
        let mut store = MemStore::default();
        store
            .put(
                &storage_key(Partition::of_key(b"bad", 64), b"bad"),
                &[0xff, 0xff],
            )
            .unwrap();
        let (r, report) = Replica::open(store, MemStore::default(), 64, Actor(1), 5).unwrap();
        assert_eq!(report.corrupt.len(), 1);
        assert_eq!(report.keys, 0);
        assert!(matches!(r.read(b"bad"), Err(Error::Storage(_))));
    }

    #[test]
    fn a_read_answer_from_a_stored_copy() {
        let state = SiblingSet::default()
            .update(&Context::default(), data("v"), Actor(1))
            .unwrap();
        assert_eq!(
            read_answer(Some(&encode_state(&state))).unwrap().unwrap(),
            ReplicaMsg::State { state }
        );
        assert_eq!(
            read_answer(None).unwrap().unwrap(),
            ReplicaMsg::State {
                state: SiblingSet::default()
            }
        );
        assert!(read_answer(Some(b"\xff\xff")).unwrap().is_err());
        // A set's record may not be all of it: the replica reads its tail.
        let set = SiblingSet::of_typed(Typed::Set(crate::crdt::Set::default()));
        assert!(read_answer(Some(&encode_state(&set))).is_none());
    }

    #[test]
    fn storage_keys_round_trip() {
        let k = storage_key(Partition(0x01020304), b"user");
        assert_eq!(k, b"\x01\x02\x03\x04user");
        assert_eq!(
            split_storage_key(&k).unwrap(),
            (Partition(0x01020304), &b"user"[..])
        );
        assert!(split_storage_key(b"abc").is_err());
    }

    #[test]
    fn scan_pages_through_a_prefix() {
        let mut s = MemStore::default();
        for i in 0..10u8 {
            s.put(&[1, i], &[i]).unwrap();
            s.put(&[2, i], &[i]).unwrap();
        }
        let first = s.scan(&[1], None, 4).unwrap();
        assert_eq!(first.len(), 4);
        let rest = s.scan(&[1], Some(&first[3].0), 100).unwrap();
        assert_eq!(rest.len(), 6);
        assert!(rest.iter().all(|(k, _)| k[0] == 1));
    }

    #[test]
    fn moot_hints_of_a_departed_owner_go_and_every_copy_stays() {
        let mut r = replica();
        let owner = NodeId::new("gone").unwrap();
        for key in [&b"mine"[..], b"stray", b"released"] {
            r.update(key, &Context::default(), data("v"), Some(&owner))
                .unwrap();
        }
        r.remove(b"released").unwrap();
        let mine = Partition::of_key(b"mine", 64);
        assert_ne!(
            mine,
            Partition::of_key(b"stray", 64),
            "the keys' partitions"
        );
        let cleared = r.forget_moot_hints(&owner, 10, 64, &[mine]).unwrap();
        assert_eq!(cleared, 2, "the released key's and the replicated key's");
        assert_eq!(
            r.hints_pending()[&owner],
            1,
            "the stray copy waits for its release"
        );
        assert_eq!(r.hinted(&owner, 10).unwrap()[0].0, b"stray");
        assert!(!r.read(b"mine").unwrap().is_empty() && !r.read(b"stray").unwrap().is_empty());
    }

    #[test]
    fn a_replica_that_drops_a_counter_it_wrote_writes_as_another_actor() {
        // The simulator found this: a stand-in incremented a counter,
        // handed it off and dropped its copy, then incremented the key
        // again from nothing as the same actor; its entry, now lower than
        // the one it had handed off, lost the increment in the join.
        let mut r = replica();
        let owner = NodeId::new("owner").unwrap();
        let by = |n| Operation::Increment(n);
        let none = CausalContext::default();
        let (state, _) = r.apply_typed(b"c", &by(5), &none, Some(&owner), 0).unwrap();
        let before = r.actor();
        let p = Partition::of_key(b"c", 64);
        let all = Scope::only(r.held(64).unwrap()[0].1.iter().map(String::as_str));
        assert_eq!(r.release(64, p, &all, &[]).unwrap(), Some(1));
        assert!(r.read(b"c").unwrap().is_empty());
        assert_ne!(r.actor(), before, "a fresh writer");
        let (_, delta) = r.apply_typed(b"c", &by(1), &none, None, 0).unwrap();
        r.merge(b"c", &state, None).unwrap();
        let merged = r.read(b"c").unwrap().merge(&delta);
        assert_eq!(
            merged.typed().unwrap().reading(false),
            crate::crdt::Reading::Counter(6)
        );
    }

    #[test]
    fn a_large_sets_kept_copy_follows_every_write_of_its_key() {
        let (mut r, mut other) = (replica(), replica());
        let none = CausalContext::default();
        let add = |members: Vec<Vec<u8>>| Operation::Add(members);
        let many: Vec<Vec<u8>> = (0..10_000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let members = |r: &Replica<MemStore>| match r.read(b"s").unwrap().typed() {
            Some(Typed::Set(set)) => set.len(),
            _ => 0,
        };
        let (_, big) = r.apply_typed(b"s", &add(many), &none, None, 0).unwrap();
        assert!(
            encode_state(&r.read(b"s").unwrap()).len() > 64 << 10,
            "large enough to keep"
        );
        assert!(other.merge(b"s", &big, None).unwrap());
        for m in [b"x", b"y"] {
            let (_, delta) = r
                .apply_typed(b"s", &add(vec![m.to_vec()]), &none, None, 0)
                .unwrap();
            assert!(other.merge(b"s", &delta, None).unwrap());
            assert!(!other.merge(b"s", &delta, None).unwrap(), "already held");
        }
        assert_eq!((members(&r), members(&other)), (10_002, 10_002));
        assert_eq!(r.read(b"s").unwrap(), other.read(b"s").unwrap());
        // Removed (collected, handed off): the next add starts from nothing.
        r.remove(b"s").unwrap();
        other.remove(b"s").unwrap();
        let (_, delta) = r
            .apply_typed(b"s", &add(vec![b"z".to_vec()]), &none, None, 0)
            .unwrap();
        other.merge(b"s", &delta, None).unwrap();
        assert_eq!((members(&r), members(&other)), (1, 1));
        r.verify_tally().unwrap();
        other.verify_tally().unwrap();
    }

    #[test]
    fn counters_naming_a_retired_writer_are_found_and_folded_only_while_unchanged() {
        let mut r = replica();
        let by = |n| Operation::Increment(n);
        let none = CausalContext::default();
        r.apply_typed(b"c", &by(5), &none, None, 0).unwrap();
        let mut elsewhere = SiblingSet::new();
        let delta = elsewhere.apply(Actor(7), &by(2), &none, 0).unwrap();
        r.merge(b"c", &SiblingSet::of_typed(delta), None).unwrap();
        r.update(b"plain", &Context::default(), data("v"), None)
            .unwrap();
        let p = Partition::of_key(b"c", 64);
        let writers = |w: &[u64]| w.iter().copied().map(Actor).collect::<BTreeSet<_>>();
        assert!(
            r.to_collect(p, 10, 0, &writers(&[1, 7]))
                .unwrap()
                .is_empty()
        );
        let found = r.to_collect(p, 10, 0, &writers(&[1])).unwrap();
        assert_eq!(found, vec![(b"c".to_vec(), r.read(b"c").unwrap())]);
        // A reopened replica finds it the same way.
        let (mut reopened, _) =
            Replica::open(r.store().clone(), MemStore::default(), 64, Actor(2), 5).unwrap();
        assert_eq!(
            reopened.to_collect(p, 10, 0, &writers(&[1])).unwrap(),
            found
        );
        // A copy that changed since the probe is not folded.
        let probed = found[0].1.clone();
        r.apply_typed(b"c", &by(1), &none, None, 0).unwrap();
        assert!(!r.fold_counter(b"c", &probed, &writers(&[1])).unwrap());
        let probed = r.read(b"c").unwrap();
        assert!(r.fold_counter(b"c", &probed, &writers(&[1])).unwrap());
        let value = |r: &Replica<MemStore>| r.read(b"c").unwrap().typed().unwrap().reading(false);
        assert_eq!(value(&r), crate::crdt::Reading::Counter(8));
        // The fold's record is looked for and forgotten by the next fold.
        let again = r.to_collect(p, 10, 0, &writers(&[1])).unwrap();
        assert_eq!(again.len(), 1);
        assert!(r.fold_counter(b"c", &again[0].1, &writers(&[1])).unwrap());
        let counter = r.read(b"c").unwrap();
        assert_eq!(counter.counter().unwrap().entries(), 1);
        assert_eq!(value(&r), crate::crdt::Reading::Counter(8));
        assert!(r.to_collect(p, 10, 0, &writers(&[1])).unwrap().is_empty());
        assert_eq!(r.counter_writers.get(&p), Some(&writers(&[1])));
        r.verify_tally().unwrap();
    }

    #[test]
    fn maps_with_counter_fields_of_a_retired_writer_are_found_and_folded() {
        let mut r = replica();
        let none = CausalContext::default();
        let hincr = |by| Operation::IncrementField {
            field: b"visits".to_vec(),
            by,
        };
        // Writers 7 and 8 (nodes since restarted) counted, and so did this
        // replica's writer, 1; a set's members are no counter.
        for (w, by) in [(7, 3), (8, 4)] {
            let mut elsewhere = SiblingSet::new();
            let delta = elsewhere.apply(Actor(w), &hincr(by), &none, 0).unwrap();
            r.merge(b"m", &SiblingSet::of_typed(delta), None).unwrap();
        }
        r.apply_typed(b"m", &hincr(5), &none, None, 0).unwrap();
        r.apply_typed(b"s", &Operation::Add(vec![b"x".to_vec()]), &none, None, 0)
            .unwrap();
        let p = Partition::of_key(b"m", 64);
        let writers = |w: &[u64]| w.iter().copied().map(Actor).collect::<BTreeSet<_>>();
        assert_eq!(r.counter_writers.get(&p), Some(&writers(&[1, 7, 8])));
        assert!(
            r.to_collect(p, 10, 0, &writers(&[1, 7, 8]))
                .unwrap()
                .is_empty()
        );
        let found = r.to_collect(p, 10, 0, &writers(&[1])).unwrap();
        assert_eq!(found, vec![(b"m".to_vec(), r.read(b"m").unwrap())]);
        assert!(r.fold_counter(b"m", &found[0].1, &writers(&[1])).unwrap());
        let folded = r.read(b"m").unwrap();
        let Some(Typed::Map(map)) = folded.typed() else {
            panic!("a map");
        };
        assert_eq!(
            map.fields(false)[0].value,
            crate::crdt::FieldReading::Count(12)
        );
        assert_eq!(map.count_writers().collect::<Vec<_>>(), [Actor(1)]);
        // Folded, it is not found again, and its partition names only 1.
        assert!(r.to_collect(p, 10, 0, &writers(&[1])).unwrap().is_empty());
        assert_eq!(r.counter_writers.get(&p), Some(&writers(&[1])));
        r.verify_tally().unwrap();
    }

    #[test]
    fn hinted_writes_are_handed_off_and_every_copy_stays() {
        let mut r = replica();
        let owner = NodeId::new("owner").unwrap();
        let (s1, _) = r
            .update(b"k1", &Context::default(), data("a"), Some(&owner))
            .unwrap();
        r.merge(b"k2", &s1, Some(&owner)).unwrap();
        r.update(b"k3", &Context::default(), data("c"), None)
            .unwrap();
        assert_eq!(r.hints_pending()[&owner], 2);
        let batch = r.hinted(&owner, 10).unwrap();
        assert_eq!(batch.len(), 2);
        // a write to k2 races with the delivery: its hint stays
        r.update(b"k2", &Context::default(), data("late"), Some(&owner))
            .unwrap();
        let cleared = r.handed_off(&owner, &batch).unwrap();
        assert_eq!(cleared, 1);
        assert_eq!(r.hints_pending()[&owner], 1);
        assert_eq!(r.read(b"k1").unwrap(), s1);
        let batch = r.hinted(&owner, 10).unwrap();
        assert_eq!(batch[0].0, b"k2");
        r.handed_off(&owner, &batch).unwrap();
        assert!(r.hints_pending().is_empty());
        assert!(
            !r.read(b"k2").unwrap().is_empty(),
            "a copy goes only by handoff's release"
        );
        assert_eq!(r.key_count(), 3);
        assert_eq!(r.tally.trees, rebuilt_trees(&r));
        let reopened = Replica::open(r.store().clone(), MemStore::default(), 64, Actor(3), 5)
            .unwrap()
            .0;
        assert_eq!(r.usage(), reopened.usage());
    }

    #[test]
    fn a_replica_serves_while_its_start_up_scan_runs_and_ends_with_exact_trees() {
        let mut r = replica();
        let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
        for k in &keys {
            r.update(k.as_bytes(), &Context::default(), data("v1"), None)
                .unwrap();
        }
        let mut r =
            Replica::opening(r.store().clone(), MemStore::default(), 64, Actor(2), 5).unwrap();
        assert!(r.held(64).is_err(), "nothing is known to be held yet");
        let first = Partition::of_key(keys[0].as_bytes(), 64);
        assert!(r.tree(first).is_err(), "no tree before the scan reaches it");
        let mut steps = 0;
        let report = loop {
            // Writes land ahead of the scan, behind it and in the chunk it
            // is in: new keys, overwrites and removals.
            let k = &keys[(steps * 37) % keys.len()];
            let read = r.read(k.as_bytes()).unwrap();
            r.update(k.as_bytes(), &read.context(), data("v2"), None)
                .unwrap();
            r.update(
                format!("new{steps}").as_bytes(),
                &Context::default(),
                data("n"),
                None,
            )
            .unwrap();
            r.remove(keys[(steps * 53 + 7) % keys.len()].as_bytes())
                .unwrap();
            // Every partition the scan is past answers a tree already.
            for p in (0..64).map(Partition) {
                if r.settled(p).is_ok() {
                    assert_eq!(r.tree(p).unwrap().root(), whole(&r, p), "partition {p}");
                }
            }
            steps += 1;
            if let Some(report) = r.load(7).unwrap() {
                break report;
            }
        };
        assert!(steps > 10, "the scan took {steps} steps");
        assert!(report.keys > 250, "{report:?}");
        assert_eq!(r.verify_tally(), Ok(()));
        assert_eq!(r.tally.trees, rebuilt_trees(&r));
        assert!(r.held(64).is_ok());
    }

    #[test]
    fn a_split_replica_serves_each_child_as_its_part_of_the_parent() {
        let mut r = replica();
        let keys: Vec<String> = (0..400).map(|i| format!("k{i}")).collect();
        for k in &keys {
            r.update(k.as_bytes(), &Context::default(), data("v1"), None)
                .unwrap();
        }
        r.remove(keys[0].as_bytes()).unwrap();
        let deleted = keys[1].as_bytes();
        let read = r.read(deleted).unwrap();
        r.update(deleted, &read.context(), Value::Tombstone, None)
            .unwrap();
        let stored_before = r.store().clone();
        r.set_partitions(256).unwrap();
        assert!(r.set_partitions(128).is_err(), "Q only grows");
        assert!(r.held(256).is_err(), "the trees are being built again");
        // It serves meanwhile, and writes land in the children.
        r.update(b"during", &Context::default(), data("d"), None)
            .unwrap();
        while r.load(50).unwrap().is_none() {}
        assert_eq!(r.verify_tally(), Ok(()));
        assert!(r.held(64).is_err(), "a question at the old Q");
        let held = r.held(256).unwrap();
        assert!(held.iter().all(|(p, _)| p.0 < 256) && held.len() > 64);
        // Stored keys did not move: they stay under their layout prefix.
        let moved = r
            .store()
            .map
            .keys()
            .filter(|k| !stored_before.map.contains_key(*k));
        assert_eq!(moved.count(), 1, "only the new key");
        // Each child's scans, chunks and listing hold exactly its keys.
        let mut seen = 0;
        for c in (0..256).map(Partition) {
            let mut scanned = Vec::new();
            r.scan_partition(c, |k, _| {
                scanned.push(k.to_vec());
                Ok(())
            })
            .unwrap();
            let (mut chunked, mut after) = (Vec::new(), None);
            loop {
                let (entries, last) = r.chunk(c, after.as_deref(), 3).unwrap();
                after = entries.last().map(|(k, _)| k.clone());
                chunked.extend(entries.into_iter().map(|(k, _)| k));
                if last {
                    break;
                }
            }
            assert_eq!(scanned, chunked, "{c}");
            assert!(scanned.iter().all(|k| Partition::of_key(k, 256) == c));
            seen += scanned.len();
            let tree = r.tree(c).unwrap();
            assert_eq!(tree.root(), r.tree_in(c, &Scope::All).unwrap().root());
        }
        assert_eq!(seen, 400, "399 left, one tombstone, one new");
        // The tombstone's marks moved to its child, where collection finds it.
        let child = Partition::of_key(deleted, 256);
        assert!(r.tombstoned.contains_key(&child));
        // Another replica of the same data, split, has the same trees.
        let (mut other, _) =
            Replica::open(r.store().clone(), MemStore::default(), 64, Actor(3), 5).unwrap();
        other.set_partitions(256).unwrap();
        while other.load(1000).unwrap().is_none() {}
        for c in (0..256).map(Partition) {
            assert_eq!(other.tree(c).unwrap(), r.tree(c).unwrap(), "{c}");
        }
    }

    /// The root of `p`'s tree as a full rebuild from storage has it.
    fn whole(r: &Replica<MemStore>, p: Partition) -> u64 {
        let (rebuilt, _) =
            Replica::open(r.store().clone(), MemStore::default(), 64, Actor(9), 5).unwrap();
        rebuilt.tree(p).unwrap().root()
    }
}

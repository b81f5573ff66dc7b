//! A client's get, put or delete, checked and planned as a session: the
//! key and value within the limits of the key's namespace, R or W within
//! 1..=N, the context decodable, this node still a member of a founded
//! cluster, and the key routed to its targets. Anything wrong is a clear
//! error naming what.

use std::sync::Arc;

use crate::config::ReadFrom;
use crate::crdt::{CausalContext, Operation};
use crate::error::{Error, Result};
use crate::fencing;
use crate::namespace::{self, Settings};
use crate::node::NodeId;
use crate::partition::Partition;
use crate::ring::Ring;
use crate::topology::Topology;
use crate::version::{Context, Value};

use super::route::Route;
use super::{GetSession, Mint, ObserveSession, PutSession, Request, Session};

/// The request limits of a node's configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The settings of the namespace `default` (the `[cluster]` N, R and
    /// W and the `[limits]` on values); other namespaces' come from the
    /// table in the view.
    pub defaults: Settings,
    /// Longest key within its namespace.
    pub max_key_bytes: usize,
    /// Whether owners keep hints for other owners (`hints.deliver`: where
    /// hints are not handed over, such a hint would never go).
    pub owner_hints: bool,
    /// Which replicas a read asks (`cluster.read_from`).
    pub read_from: ReadFrom,
}

/// What a put or delete writes: `value` (a tombstone: a delete) over what
/// `context` (the opaque bytes of an earlier read) covers, at W = `w`
/// (None: the namespace's), expiring after `ttl_ms` (None: the
/// namespace's TTL; 0: never).
#[derive(Debug, Clone)]
pub struct Write<'a> {
    pub value: Value,
    pub context: &'a [u8],
    pub w: Option<u8>,
    pub ttl_ms: Option<u64>,
}

impl<'a> Write<'a> {
    /// A write with its namespace's TTL.
    pub fn new(value: Value, context: &'a [u8], w: Option<u8>) -> Self {
        Write {
            value,
            context,
            w,
            ttl_ms: None,
        }
    }
}

/// A request ready to run as a session.
pub struct Planned {
    /// "get", "put", "delete" or a data-type operation's name, for
    /// metrics and logs.
    pub op: &'static str,
    pub key: Vec<u8>,
    /// The type of the key's namespace (what its client reply shows).
    pub kind: namespace::Kind,
    pub partition: Partition,
    pub session: Session,
    /// The requests the session sends first.
    pub initial: Vec<Request>,
}

/// Plans the requests node `me` coordinates, under `limits`.
#[derive(Debug, Clone)]
pub struct Planner {
    pub me: NodeId,
    pub limits: Limits,
}

impl Planner {
    /// A read of `key` (as stored: `namespace::key_in`) at R = `r` (None:
    /// its namespace's default).
    pub fn get(&self, t: Option<&Topology>, key: Vec<u8>, r: Option<u8>) -> Result<Planned> {
        self.check_key(&key)?;
        let (t, ring) = self.formed(t)?;
        let ns = self.namespace(t, &key)?;
        let kind = ns.kind;
        let r = quorum("r", r, ns.r, ns.n)?;
        let (partition, route) = self.route(t, ring, &key, ns.n);
        let (session, initial) = GetSession::start(key.clone(), route, r, self.limits.read_from);
        Ok(Planned {
            op: "get",
            key,
            kind,
            partition,
            session: Session::Get(session),
            initial,
        })
    }

    /// A write of `key`, coordinated at `now` (ms since the Unix epoch):
    /// a value with a TTL (the write's, else its namespace's) expires that
    /// long after `now`, and a delete is dated `now`.
    pub fn write(
        &self,
        t: Option<&Topology>,
        key: Vec<u8>,
        write: Write<'_>,
        now: u64,
    ) -> Result<Planned> {
        let Write {
            value,
            context,
            w,
            ttl_ms,
        } = write;
        self.check_key(&key)?;
        let (t, ring) = self.formed(t)?;
        let ns = self.namespace(t, &key)?;
        let kind = ns.kind;
        if ns.kind != namespace::Kind::Blob {
            let op = if value.is_tombstone() {
                "delete"
            } else {
                "put"
            };
            return Err(Error::InvalidRequest(format!(
                "{op} does not apply to a {} namespace (its keys change by operations: incr, sadd, srem)",
                ns.kind.as_str(),
            )));
        }
        if value.len() > ns.max_value_bytes as usize {
            return Err(Error::InvalidRequest(format!(
                "value of {} bytes exceeds the limit of {}",
                value.len(),
                ns.max_value_bytes
            )));
        }
        let value = match (value, ttl_ms.unwrap_or(ns.ttl_ms)) {
            (Value::Data(data), ttl) if ttl > 0 => Value::Expiring {
                data,
                expires_ms: now.saturating_add(ttl),
            },
            // A delete carries its time, for how long it is kept.
            (Value::Tombstone, _) => Value::Deleted { at_ms: now },
            (value, _) => value,
        };
        let w = quorum("w", w, ns.w, ns.n)?;
        let context = Context::from_bytes(context)?;
        let (partition, route) = self.route(t, ring, &key, ns.n);
        let op = if value.is_tombstone() {
            "delete"
        } else {
            "put"
        };
        let mint = Mint::Version { context, value };
        let (session, initial) = PutSession::start(key.clone(), mint, route, w);
        Ok(Planned {
            op,
            key,
            kind,
            partition,
            session: Session::Put(session),
            initial,
        })
    }

    /// A data-type operation on `key` (`context`: the opaque context of
    /// an earlier read, or empty), at W = `w` (None: the namespace's). A
    /// remove without a context reads at the namespace's R first.
    pub fn apply(
        &self,
        t: Option<&Topology>,
        key: Vec<u8>,
        operation: Operation,
        context: &[u8],
        w: Option<u8>,
    ) -> Result<Planned> {
        self.check_key(&key)?;
        let (t, ring) = self.formed(t)?;
        let ns = self.namespace(t, &key)?;
        let kind = ns.kind;
        ns.kind.admit(&operation)?;
        operation.check(self.limits.max_key_bytes, ns.max_value_bytes as usize)?;
        let w = quorum("w", w, ns.w, ns.n)?;
        let (partition, route) = self.route(t, ring, &key, ns.n);
        let op = operation.name();
        let (session, initial) = if operation.needs_context() && context.is_empty() {
            let r = usize::from(ns.r);
            let read = (r, self.limits.read_from);
            let (s, initial) = ObserveSession::start(key.clone(), operation, route, read, w);
            (Session::Observe(Box::new(s)), initial)
        } else {
            let seen = if context.is_empty() {
                CausalContext::default()
            } else {
                CausalContext::from_bytes(context)?
            };
            let mint = Mint::Operation { operation, seen };
            let (s, initial) = PutSession::start(key.clone(), mint, route, w);
            (Session::Put(s), initial)
        };
        Ok(Planned {
            op,
            key,
            kind,
            partition,
            session,
            initial,
        })
    }

    /// A key as every request takes it (as stored: `namespace::key_in`):
    /// well-formed, not empty within its namespace, within the limit.
    pub fn check_key(&self, stored: &[u8]) -> Result<()> {
        let (_, key) = namespace::split_key(stored)?;
        if key.is_empty() {
            return Err(Error::InvalidRequest("empty key".into()));
        }
        self.check_length(key)
    }

    /// A key or prefix within its namespace: at most the limit.
    fn check_length(&self, key: &[u8]) -> Result<()> {
        if key.len() > self.limits.max_key_bytes {
            return Err(Error::InvalidRequest(format!(
                "key of {} bytes exceeds the limit of {}",
                key.len(),
                self.limits.max_key_bytes
            )));
        }
        Ok(())
    }

    /// The settings of the namespace a key or a listing's prefix (as
    /// stored) belongs to; an error names a namespace that does not exist.
    pub fn namespace<'t>(&'t self, t: &'t Topology, stored: &'t [u8]) -> Result<&'t Settings> {
        let (_, settings, key) = t.view.namespaces.resolve(stored, &self.limits.defaults)?;
        self.check_length(key)?;
        Ok(settings)
    }

    /// The topology and ring requests are routed by. A node that is out of
    /// the cluster is nobody's replica (and what it holds may have been
    /// deleted since): it refuses.
    pub fn formed<'t>(&self, t: Option<&'t Topology>) -> Result<(&'t Topology, &'t Arc<Ring>)> {
        if t.is_some_and(|t| t.view.is_fenced(&self.me)) {
            return Err(fencing::departed(&self.me));
        }
        t.and_then(|t| Some((t, t.ring.as_ref()?))).ok_or_else(|| {
            Error::Unavailable("the cluster is not formed yet (waiting for its seeds)".into())
        })
    }

    /// Where the `n` copies of `key`'s requests go, as this node sees the
    /// cluster.
    fn route(&self, t: &Topology, ring: &Ring, key: &[u8], n: u8) -> (Partition, Route) {
        let n = usize::from(n);
        let (p, mut route) = Route::plan(ring, key, n, &self.me, |node| t.health(node));
        if !self.limits.owner_hints {
            route.drop_owner_hints();
        }
        (p, route)
    }
}

/// R or W as asked (None: the namespace's `default`), within 1..=`n`.
fn quorum(what: &str, asked: Option<u8>, default: u8, n: u8) -> Result<usize> {
    let q = asked.unwrap_or(default);
    if q == 0 || q > n {
        return Err(Error::InvalidRequest(format!(
            "{what} = {q} must be between 1 and N = {n}"
        )));
    }
    Ok(usize::from(q))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::topology::testing::{id, topology};

    fn planner(me: &str) -> Planner {
        Planner {
            me: id(me),
            limits: Limits {
                defaults: Settings {
                    n: 3,
                    r: 2,
                    w: 2,
                    ttl_ms: 0,
                    max_siblings: 10,
                    max_value_bytes: 16,
                    kind: namespace::Kind::Blob,
                },
                max_key_bytes: 8,
                owner_hints: true,
                read_from: ReadFrom::Quorum,
            },
        }
    }

    fn refused(r: Result<Planned>) -> (ErrorKind, String) {
        match r {
            Err(e) => (e.kind(), e.to_string()),
            Ok(p) => panic!("{} was planned", p.op),
        }
    }

    #[test]
    fn a_good_request_is_planned_as_a_session_to_its_targets() {
        let t = topology(&["a", "b", "c"], &[], &[], 16);
        let mut p = planner("a");
        let get = p.get(Some(&t), b"k".to_vec(), None).unwrap();
        assert_eq!(get.op, "get");
        let asked: Vec<_> = get.initial.iter().map(|r| r.to.clone()).collect();
        assert_eq!(asked.len(), 2, "a read of R replicas");
        assert_eq!(asked[0], id("a"), "this node's own copy first");
        p.limits.read_from = ReadFrom::All;
        let get = p.get(Some(&t), b"k".to_vec(), None).unwrap();
        assert_eq!(get.initial.len(), 3, "a read of every replica");
        p.limits.read_from = ReadFrom::Quorum;
        let put = p
            .write(
                Some(&t),
                b"k".to_vec(),
                Write::new(Value::Data(b"v".to_vec()), &[], Some(3)),
                0,
            )
            .unwrap();
        assert_eq!(put.op, "put");
        assert_eq!(put.initial.len(), 1, "one minter first");
        assert_eq!(
            put.initial[0].to,
            id("a"),
            "this node mints when it is a replica"
        );
        let delete = p
            .write(
                Some(&t),
                b"k".to_vec(),
                Write::new(Value::Tombstone, &[], None),
                0,
            )
            .unwrap();
        assert_eq!(delete.op, "delete");
        assert_eq!(get.partition, Partition::of_key(b"k", 16));
    }

    #[test]
    fn bad_requests_are_refused_with_what_is_wrong() {
        let t = topology(&["a", "b", "c"], &[], &[], 16);
        let p = planner("a");
        let data = |n: usize| Value::Data(vec![0; n]);
        for (request, says) in [
            (p.get(Some(&t), Vec::new(), None), "empty key"),
            (p.get(Some(&t), vec![1; 9], None), "key of 9 bytes"),
            (p.get(Some(&t), b"k".to_vec(), Some(0)), "r = 0"),
            (p.get(Some(&t), b"k".to_vec(), Some(4)), "r = 4"),
            (
                p.write(Some(&t), b"k".to_vec(), Write::new(data(17), &[], None), 0),
                "value of 17 bytes",
            ),
            (
                p.write(
                    Some(&t),
                    b"k".to_vec(),
                    Write::new(data(1), &[], Some(9)),
                    0,
                ),
                "w = 9",
            ),
            (
                p.write(
                    Some(&t),
                    b"k".to_vec(),
                    Write::new(data(1), b"\xff\xff", None),
                    0,
                ),
                "context",
            ),
        ] {
            let (kind, message) = refused(request);
            assert_eq!(kind, ErrorKind::InvalidRequest, "{message}");
            assert!(message.contains(says), "{message:?} should say {says:?}");
        }
    }

    #[test]
    fn a_key_is_planned_by_its_namespace_settings() {
        let mut t = topology(&["a", "b", "c"], &[], &[], 16);
        let carts = namespace::Name::new("carts").unwrap();
        let settings = Settings {
            n: 2,
            r: 1,
            w: 1,
            max_value_bytes: 4,
            ..planner("a").limits.defaults
        };
        std::sync::Arc::make_mut(&mut t.view)
            .namespaces
            .create(carts.clone(), settings.clone(), &id("a"))
            .unwrap();
        let mut p = planner("a");
        p.limits.read_from = ReadFrom::All;
        let key = |k: &[u8]| namespace::key_in(&carts, k).unwrap();
        let targets = |planned: Planned| match planned.session {
            Session::Put(s) => s.targets().len(),
            Session::Get(_) | Session::Observe(_) => planned.initial.len(),
        };
        let get = p.get(Some(&t), key(b"k"), None).unwrap();
        assert_eq!(targets(get), 2, "a read of the namespace's 2 replicas");
        let put = p.write(
            Some(&t),
            key(b"k"),
            Write::new(Value::Tombstone, &[], None),
            0,
        );
        assert_eq!(targets(put.unwrap()), 2);
        assert_eq!(
            p.get(Some(&t), key(b"k"), None).unwrap().partition,
            Partition::of_key(&key(b"k"), 16),
            "the whole stored key is hashed"
        );
        // A namespace with a TTL: a value expires that long after the
        // coordinator's now; a delete stays a tombstone.
        let mut with_ttl = t.clone();
        let ttl = Settings {
            ttl_ms: 2000,
            ..settings
        };
        std::sync::Arc::make_mut(&mut with_ttl.view)
            .namespaces
            .alter(&carts, ttl, &id("a"))
            .unwrap();
        let minted = |planned: Planned| match &planned.initial[0].msg {
            crate::replica::ReplicaMsg::Update { value, .. } => value.clone(),
            other => panic!("{other:?}"),
        };
        let put = p.write(
            Some(&with_ttl),
            key(b"k"),
            Write::new(Value::Data(b"v".to_vec()), &[], None),
            5,
        );
        let expiring = Value::Expiring {
            data: b"v".to_vec(),
            expires_ms: 2005,
        };
        assert_eq!(minted(put.unwrap()), expiring);
        let delete = p.write(
            Some(&with_ttl),
            key(b"k"),
            Write::new(Value::Tombstone, &[], None),
            5,
        );
        assert_eq!(
            minted(delete.unwrap()),
            Value::Deleted { at_ms: 5 },
            "dated"
        );
        let put = p.write(
            Some(&t),
            key(b"k"),
            Write::new(Value::Data(b"v".to_vec()), &[], None),
            5,
        );
        assert_eq!(minted(put.unwrap()), Value::Data(b"v".to_vec()), "no TTL");
        // A write's own TTL wins over its namespace's; 0 is none.
        let own = |ttl_ms| Write {
            ttl_ms: Some(ttl_ms),
            ..Write::new(Value::Data(b"v".to_vec()), &[], None)
        };
        let put = p.write(Some(&t), key(b"k"), own(1000), 5);
        let expiring = Value::Expiring {
            data: b"v".to_vec(),
            expires_ms: 1005,
        };
        assert_eq!(minted(put.unwrap()), expiring);
        let put = p.write(Some(&with_ttl), key(b"k"), own(0), 5);
        assert_eq!(minted(put.unwrap()), Value::Data(b"v".to_vec()));
        let users = namespace::key_in(&namespace::Name::new("users").unwrap(), b"k").unwrap();
        for (request, says) in [
            (
                p.get(Some(&t), key(b"k"), Some(3)),
                "r = 3 must be between 1 and N = 2",
            ),
            (
                p.write(
                    Some(&t),
                    key(b"k"),
                    Write::new(Value::Data(vec![0; 5]), &[], None),
                    0,
                ),
                "value of 5 bytes exceeds the limit of 4",
            ),
            (p.get(Some(&t), key(b""), None), "empty key"),
            (p.get(Some(&t), key(&[1; 9]), None), "key of 9 bytes"),
            (p.get(Some(&t), users, None), "no namespace users"),
            (p.get(Some(&t), b"\x00\x01".to_vec(), None), "0x00"),
        ] {
            let (kind, message) = refused(request);
            assert_eq!(kind, ErrorKind::InvalidRequest, "{message}");
            assert!(message.contains(says), "{message:?} should say {says:?}");
        }
    }

    #[test]
    fn a_data_type_takes_its_own_operations_only() {
        use crate::crdt::Operation;
        use crate::replica::ReplicaMsg;
        let mut t = topology(&["a", "b", "c"], &[], &[], 16);
        let p = planner("a");
        let mut create = |name: &str, kind| {
            let name = namespace::Name::new(name).unwrap();
            let settings = Settings {
                kind,
                ..p.limits.defaults.clone()
            };
            std::sync::Arc::make_mut(&mut t.view)
                .namespaces
                .create(name.clone(), settings, &id("a"))
                .unwrap();
            move |k: &[u8]| namespace::key_in(&name, k).unwrap()
        };
        let carts = create("carts", namespace::Kind::Set);
        let hits = create("hits", namespace::Kind::Counter);
        let users = create("users", namespace::Kind::LwwMap);
        let add = |m: &[u8]| Operation::Add(vec![m.to_vec()]);
        let remove = Operation::Remove(vec![b"m".to_vec()]);
        // A remove without a context reads first; with one, it is applied.
        let planned = p
            .apply(Some(&t), carts(b"k"), remove.clone(), &[], None)
            .unwrap();
        assert!(matches!(planned.session, Session::Observe(_)));
        assert!(matches!(planned.initial[0].msg, ReplicaMsg::Read { .. }));
        let seen = crate::crdt::CausalContext::default().to_bytes();
        let planned = p.apply(Some(&t), carts(b"k"), remove, &seen, None).unwrap();
        assert_eq!((planned.op, planned.kind), ("srem", namespace::Kind::Set));
        assert!(matches!(planned.initial[0].msg, ReplicaMsg::Apply { .. }));
        let planned = p.apply(Some(&t), hits(b"k"), Operation::Increment(-3), &[], None);
        assert_eq!(planned.unwrap().op, "incr");
        let hdel = Operation::DeleteFields(vec![b"f".to_vec()]);
        let planned = p.apply(Some(&t), users(b"k"), hdel, &[], None).unwrap();
        assert!(matches!(planned.session, Session::Observe(_)));
        let field = |field: &[u8], value: &[u8]| Operation::SetField {
            field: field.to_vec(),
            value: value.to_vec(),
        };
        let planned = p.apply(Some(&t), users(b"k"), field(b"f", b"v"), &[], None);
        assert_eq!(planned.unwrap().op, "hset");
        for (request, says) in [
            (
                p.apply(Some(&t), carts(b"k"), Operation::Increment(1), &[], None),
                "incr does not apply to a set namespace",
            ),
            (
                p.apply(Some(&t), hits(b"k"), add(b"m"), &[], None),
                "sadd does not apply to a counter namespace",
            ),
            (
                p.apply(Some(&t), b"k".to_vec(), add(b"m"), &[], None),
                "sadd does not apply to a blob namespace",
            ),
            (
                p.apply(Some(&t), carts(b"k"), Operation::Add(vec![]), &[], None),
                "sadd names no member",
            ),
            (
                p.apply(Some(&t), carts(b"k"), add(&[7; 17]), &[], None),
                "a member of 17 bytes",
            ),
            (
                p.apply(Some(&t), carts(b"k"), add(b""), &[], None),
                "a member of 0 bytes",
            ),
            (
                p.apply(Some(&t), carts(b"k"), add(b"m"), &[1, 2, 3], None),
                "set context",
            ),
            (
                p.apply(Some(&t), carts(b"k"), field(b"f", b"v"), &[], None),
                "hset does not apply to a set namespace",
            ),
            (
                p.apply(Some(&t), users(b"k"), field(&[7; 9], b"v"), &[], None),
                "a field name of 9 bytes: field names are 1 to 8 bytes",
            ),
            (
                p.apply(Some(&t), users(b"k"), field(b"f", &[7; 17]), &[], None),
                "value of 17 bytes exceeds the limit of 16",
            ),
            (
                p.apply(
                    Some(&t),
                    users(b"k"),
                    Operation::DeleteFields(vec![]),
                    &[],
                    None,
                ),
                "hdel names no field",
            ),
            (
                p.write(
                    Some(&t),
                    carts(b"k"),
                    Write::new(Value::Data(b"v".to_vec()), &[], None),
                    0,
                ),
                "put does not apply to a set namespace",
            ),
            (
                p.write(
                    Some(&t),
                    hits(b"k"),
                    Write::new(Value::Tombstone, &[], None),
                    0,
                ),
                "delete does not apply to a counter namespace",
            ),
        ] {
            let (kind, message) = refused(request);
            assert_eq!(kind, ErrorKind::InvalidRequest, "{message}");
            assert!(message.contains(says), "{message:?} should say {says:?}");
        }
    }

    #[test]
    fn no_ring_yet_is_unavailable_and_a_removed_node_refuses() {
        let p = planner("a");
        let (kind, _) = refused(p.get(None, b"k".to_vec(), None));
        assert_eq!(kind, ErrorKind::Unavailable);
        let out = topology(&["a", "b", "c", "d"], &[], &["a"], 16);
        let (kind, message) = refused(p.get(Some(&out), b"k".to_vec(), None));
        assert_eq!(kind, ErrorKind::Removed, "{message}");
        let (kind, _) = refused(p.write(
            Some(&out),
            b"k".to_vec(),
            Write::new(Value::Tombstone, &[], None),
            0,
        ));
        assert_eq!(kind, ErrorKind::Removed);
    }

    #[test]
    fn owners_keep_no_hints_where_hints_are_not_handed_over() {
        let t = topology(&["a", "b", "c"], &["c"], &[], 16);
        let mut p = planner("a");
        let hints = |planned: Planned| match planned.session {
            Session::Put(s) => s.targets().iter().filter(|t| t.hint_for.is_some()).count(),
            Session::Get(_) | Session::Observe(_) => 0,
        };
        let with = p
            .write(
                Some(&t),
                b"k".to_vec(),
                Write::new(Value::Tombstone, &[], None),
                0,
            )
            .unwrap();
        assert_eq!(hints(with), 1, "an owner keeps c's hint");
        p.limits.owner_hints = false;
        let without = p
            .write(
                Some(&t),
                b"k".to_vec(),
                Write::new(Value::Tombstone, &[], None),
                0,
            )
            .unwrap();
        assert_eq!(hints(without), 0);
    }
}

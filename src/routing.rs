//! Client-driven coordination (Dynamo §6.4): which node a cluster-aware
//! client sends a request to, and when it may send it to another.
//!
//! A node answers a client's `Ring` request with a `RingSnapshot`: its
//! membership view (members, client addresses, the ownership table), N,
//! and the members it believes down. From it the client builds a
//! `ClusterMap` and computes each key's preference list exactly as the
//! nodes do (`Ring::preference_list`), so a request goes straight to a
//! replica of its key: the coordinator stores its own copy locally and
//! saves the hop a node outside the preference list would add.
//!
//! The client names the ring it routes by (`ClusterMap::version`, the
//! view's digest); a coordinator holding another view says so in its
//! reply, and the client fetches a fresh snapshot at once instead of
//! waiting for its periodic refresh.
//!
//! Failing over is safe only when the first node did nothing. `fails_over`
//! encodes which outcomes guarantee that: nothing was sent, or the node
//! answered that it refused the request (`overloaded`, `unavailable`,
//! `removed`). A read may also be retried after any transient failure. A
//! write whose outcome is unknown (sent, then no answer) is never retried:
//! sent again, a DVV put would mint a second dot and leave the same value
//! as two siblings, or revive what the first one superseded.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::MAX_N;
use crate::error::{Error, ErrorKind, Result};
use crate::node::NodeId;
use crate::partition::validate_partition_count;
use crate::ring::Ring;
use crate::topology::Topology;
use crate::view::{MAX_MEMBERS, View};

/// How often a cluster-aware client fetches a fresh snapshot by default,
/// besides whenever a reply says its copy is stale: rarely enough to cost
/// nothing, often enough that a joined node is used within seconds even
/// when no reply happens to say so.
pub const DEFAULT_RING_REFRESH_MS: u64 = 10_000;

/// What a node tells a client about the cluster (the answer to `Ring`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingSnapshot {
    /// Replicas of every key.
    pub n: u8,
    /// The node's membership view: members with their client addresses
    /// and statuses, and the ownership table.
    pub view: View,
    /// Members the answering node believes suspect or down.
    pub down: Vec<NodeId>,
}

impl RingSnapshot {
    /// The snapshot of `topology` for a cluster with `n` replicas per key.
    pub fn of(topology: &Topology, n: u8) -> Self {
        RingSnapshot {
            n,
            view: (*topology.view).clone(),
            down: topology
                .view
                .members
                .keys()
                .filter(|m| !topology.is_up(m))
                .cloned()
                .collect(),
        }
    }
}

/// Where a cluster-aware client sends its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Routing {
    /// To the first healthy node of the key's preference list, which
    /// coordinates with a local write and N-1 peer messages.
    #[default]
    Preference,
    /// To the key's N replicas in turn, spreading a hot key's load.
    PreferenceSpread,
    /// To every serving member in turn, whatever the key.
    RoundRobin,
    /// Always to the node the client first reached; no failover.
    Single,
}

impl Routing {
    pub const ALL: [Routing; 4] = [
        Routing::Preference,
        Routing::PreferenceSpread,
        Routing::RoundRobin,
        Routing::Single,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Preference => "preference",
            Routing::PreferenceSpread => "preference-spread",
            Routing::RoundRobin => "round-robin",
            Routing::Single => "single",
        }
    }
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Routing {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Routing::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Routing::ALL.iter().map(|r| r.as_str()).collect();
                Error::InvalidRequest(format!(
                    "unknown routing {s:?}: expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// A client's picture of the cluster, built from a checked snapshot.
#[derive(Debug, Clone)]
pub struct ClusterMap {
    version: u64,
    n: usize,
    ring: Option<Ring>,
    /// Client address of every member that serves clients (joining, up
    /// or leaving), by id.
    addrs: BTreeMap<NodeId, String>,
    down: BTreeSet<NodeId>,
}

impl ClusterMap {
    /// Checks a snapshot that came from a socket and builds the map.
    pub fn new(snapshot: RingSnapshot) -> Result<ClusterMap> {
        let RingSnapshot { n, view, down } = snapshot;
        if !(1..=MAX_N).contains(&n) {
            return Err(Error::Malformed(format!(
                "ring snapshot with n = {n} (1 to {MAX_N})"
            )));
        }
        validate_partition_count(view.partitions)
            .map_err(|e| Error::Malformed(format!("ring snapshot: {e}")))?;
        view.validate(&view.cluster, view.partitions)?;
        if down.len() > MAX_MEMBERS {
            return Err(Error::Malformed(format!(
                "ring snapshot with {} members down",
                down.len()
            )));
        }
        let addrs = view
            .members
            .values()
            .filter(|m| !m.status.is_final())
            .map(|m| (m.id.clone(), m.client_addr.clone()))
            .collect();
        Ok(ClusterMap {
            version: view.digest(),
            n: usize::from(n),
            ring: view.ring(),
            addrs,
            down: down.into_iter().collect(),
        })
    }

    /// The digest of the view this map was built from.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Every member that serves clients, with its client address.
    pub fn members(&self) -> impl Iterator<Item = (&NodeId, &str)> {
        self.addrs.iter().map(|(id, a)| (id, a.as_str()))
    }

    /// The key's preference list, as every node computes it (empty before
    /// the cluster is formed).
    pub fn preference_list(&self, key: &[u8]) -> Vec<&NodeId> {
        match &self.ring {
            Some(ring) => ring.preference_list(ring.partition_of(key), self.n),
            None => Vec::new(),
        }
    }

    /// The nodes (ids) to try for a request, best first, as `routing`
    /// orders them; `key` is None for a request about no key; `turn`
    /// rotates the spreading policies. Every serving member appears once:
    /// after the preference list come the rest of the ring's walk (the
    /// nodes that would stand in), then members that own nothing yet.
    /// Members the snapshot says are down go last.
    pub fn candidates(&self, key: Option<&[u8]>, routing: Routing, turn: u64) -> Vec<&NodeId> {
        let mut order: Vec<&NodeId> = Vec::with_capacity(self.addrs.len());
        match (routing, key, &self.ring) {
            (Routing::Preference | Routing::PreferenceSpread, Some(key), Some(ring)) => {
                let walk: Vec<&NodeId> = ring
                    .walk(ring.partition_of(key))
                    .filter(|id| self.addrs.contains_key(*id))
                    .collect();
                let replicas = walk.len().min(self.n);
                order.extend(&walk[..replicas]);
                if routing == Routing::PreferenceSpread && replicas > 0 {
                    order.rotate_left((turn % replicas as u64) as usize);
                }
                order.extend(&walk[replicas..]);
                for id in self.addrs.keys() {
                    if !order.contains(&id) {
                        order.push(id);
                    }
                }
            }
            _ => {
                order.extend(self.addrs.keys());
                let len = order.len() as u64;
                if len > 0 {
                    order.rotate_left((turn % len) as usize);
                }
            }
        }
        let (up, down): (Vec<&NodeId>, Vec<&NodeId>) =
            order.into_iter().partition(|id| !self.down.contains(*id));
        up.into_iter().chain(down).collect()
    }

    /// The client address of `node`.
    pub fn addr(&self, node: &NodeId) -> Option<&str> {
        self.addrs.get(node).map(String::as_str)
    }
}

/// What a request does, for deciding whether it may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Changes nothing (get, status, ring...): safe to send again.
    Read,
    /// Writes (put, delete): sent again, it could apply twice.
    Write,
}

/// Whether a request that failed at one node may go to the next.
/// `sent` is false when nothing reached the node (the connection or its
/// hello failed, or the connection was already closed).
pub fn fails_over(effect: Effect, sent: bool, error: &Error) -> bool {
    if !sent {
        return true;
    }
    match error.kind() {
        // The node refused the request before doing anything.
        ErrorKind::Overloaded | ErrorKind::Unavailable | ErrorKind::Removed => true,
        // Some replicas may have applied a write; a read has no effect.
        ErrorKind::Quorum | ErrorKind::Timeout | ErrorKind::Indeterminate => effect == Effect::Read,
        _ => false,
    }
}

/// The wait before attempt `attempt` (1 for the first failover): up to
/// `base_ms` doubled per attempt, bounded by `max_ms`, half of it fixed and
/// half drawn from `jitter` (any random number), so clients that failed
/// together do not return together.
pub fn backoff_ms(attempt: u32, base_ms: u64, max_ms: u64, jitter: u64) -> u64 {
    let ceiling = base_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(30))
        .min(max_ms);
    let half = ceiling / 2;
    half + jitter % (ceiling - half + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::testing::{id, topology};

    fn map(nodes: &[&str], down: &[&str], removed: &[&str]) -> ClusterMap {
        let t = topology(nodes, down, removed, 64);
        ClusterMap::new(RingSnapshot::of(&t, 3)).unwrap()
    }

    const NODES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

    #[test]
    fn preference_routing_starts_with_the_keys_preference_list() {
        let m = map(&NODES, &[], &[]);
        let ring = topology(&NODES, &[], &[], 64).ring.unwrap();
        for k in 0..500u32 {
            let key = k.to_be_bytes();
            let expected = ring.preference_list(ring.partition_of(&key), 3);
            let got = m.candidates(Some(&key), Routing::Preference, u64::from(k));
            assert_eq!(&got[..3], &expected[..], "key {k}");
            assert_eq!(got.len(), NODES.len(), "every member once");
            assert_eq!(m.preference_list(&key), expected);
        }
    }

    #[test]
    fn spreading_rotates_over_the_replicas_only() {
        let m = map(&NODES, &[], &[]);
        let key = b"hot";
        let replicas = m.preference_list(key);
        let firsts: BTreeSet<&NodeId> = (0..6)
            .map(|t| m.candidates(Some(key), Routing::PreferenceSpread, t)[0])
            .collect();
        assert_eq!(firsts, replicas.iter().copied().collect());
        let all: BTreeSet<&NodeId> = (0..6)
            .map(|t| m.candidates(Some(key), Routing::RoundRobin, t)[0])
            .collect();
        assert_eq!(all.len(), NODES.len(), "round robin visits everyone");
    }

    #[test]
    fn members_down_go_last_and_removed_members_never() {
        let m = map(&NODES, &["b"], &["c"]);
        for k in 0..100u32 {
            let got = m.candidates(Some(&k.to_be_bytes()), Routing::Preference, 0);
            assert_eq!(got.last(), Some(&&id("b")), "key {k}: {got:?}");
            assert!(!got.contains(&&id("c")));
            assert_eq!(got.len(), 5);
        }
        assert_eq!(m.addr(&id("c")), None);
        assert_eq!(m.addr(&id("a")), Some("127.0.0.1:7000"));
    }

    #[test]
    fn a_snapshot_from_a_socket_is_checked() {
        let t = topology(&NODES, &[], &[], 64);
        let mut bad = RingSnapshot::of(&t, 0);
        assert!(ClusterMap::new(bad.clone()).is_err(), "n = 0");
        bad.n = 3;
        bad.view.partitions = 63;
        assert!(
            ClusterMap::new(bad.clone()).is_err(),
            "Q not a power of two"
        );
        bad.view.partitions = 32;
        assert!(ClusterMap::new(bad).is_err(), "a table of another size");
        let good = ClusterMap::new(RingSnapshot::of(&t, 3)).unwrap();
        assert_eq!(good.version(), t.view.digest());
        assert_eq!(good.version(), t.version);
    }

    #[test]
    fn only_outcomes_that_did_nothing_fail_over_a_write() {
        use Effect::*;
        let refused = Error::from_wire(ErrorKind::Overloaded, "busy".into());
        let lost = Error::Indeterminate("connection closed".into());
        let quorum = Error::Quorum { needed: 2, got: 1 };
        let bad = Error::InvalidRequest("empty key".into());
        assert!(fails_over(Write, false, &lost), "never sent");
        assert!(fails_over(Write, true, &refused));
        assert!(fails_over(Write, true, &Error::Removed("x".into())));
        assert!(!fails_over(Write, true, &lost));
        assert!(!fails_over(Write, true, &Error::Timeout));
        assert!(!fails_over(Write, true, &quorum));
        assert!(fails_over(Read, true, &lost));
        assert!(fails_over(Read, true, &quorum));
        assert!(!fails_over(Read, true, &bad), "bad input fails everywhere");
    }

    #[test]
    fn backoff_grows_to_its_bound_with_jitter() {
        for jitter in [0, 1, 7, u64::MAX] {
            let b1 = backoff_ms(1, 10, 500, jitter);
            assert!((5..=10).contains(&b1), "{b1}");
            let b3 = backoff_ms(3, 10, 500, jitter);
            assert!((20..=40).contains(&b3), "{b3}");
            let b20 = backoff_ms(20, 10, 500, jitter);
            assert!((250..=500).contains(&b20), "{b20}");
        }
        assert_ne!(backoff_ms(4, 10, 500, 3), backoff_ms(4, 10, 500, 4));
    }

    #[test]
    fn routing_names_round_trip() {
        for r in Routing::ALL {
            assert_eq!(r.as_str().parse::<Routing>().unwrap(), r);
        }
        let e = "nearest".parse::<Routing>().unwrap_err();
        assert!(e.to_string().contains("round-robin"), "{e}");
    }
}

//! Metrics: what a node counts.
//!
//! `Metrics` is a cheap handle to the node's registry of counters, gauges
//! and histograms (prometheus-client); the actors that see something happen
//! count it. Most counts come from the node's event stream (`Events` counts
//! every event it carries); requests are counted by the client connections,
//! refused peers by the links, handoff bytes by the handoff actor.
//!
//! `crate::metrics_server` serves them over HTTP; gauges that describe
//! state (storage size, hints pending, member liveness) are set there,
//! when scraped or when the topology changes.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dynakv::{ErrorKind, NodeId};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tracing::warn;

/// The namespace label of a request: the namespace of the keys it names
/// (empty when it names none).
pub type Label = Cow<'static, str>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
    namespace: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    op: &'static str,
    /// "ok", or the error kind.
    outcome: &'static str,
    namespace: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabels {
    /// "client" or "peer".
    port: &'static str,
    /// Why (`crate::tls::Refusal::reason`).
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    member: String,
}

/// Request latency buckets: 100 µs to ~3.3 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OpLabels, Histogram, fn() -> Histogram>,
    quorum_failures: Family<OpLabels, Counter>,
    read_repairs: Counter,
    hints_pending: Family<MemberLabels, Gauge>,
    hints_waiting: Family<MemberLabels, Gauge>,
    hints_delivered: Counter,
    ae_exchanges: Counter,
    ae_keys_repaired: Counter,
    ae_bytes: Counter,
    ae_oldest_exchange: Gauge,
    tombstones_collected: Counter,
    tombstones_awaiting: Gauge,
    tombstones_held_back: Family<MemberLabels, Gauge>,
    handoff_keys: Counter,
    handoff_bytes: Counter,
    partitions_fetched: Counter,
    partitions_released: Counter,
    member_up: Family<MemberLabels, Gauge>,
    storage_keys: Gauge,
    storage_bytes: Gauge,
    storage_disk_bytes: Gauge,
    client_connections: Gauge,
    peers_refused: Counter,
    tls_refused: Family<TlsLabels, Counter>,
    peer_requests_fenced: Counter,
    client_connections_refused: Counter,
    peer_requests_sent: Counter,
}

/// The node's metrics; clones share them.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut inner = Inner {
            registry: Registry::with_prefix("dynakv"),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            quorum_failures: Family::default(),
            read_repairs: Counter::default(),
            hints_pending: Family::default(),
            hints_waiting: Family::default(),
            hints_delivered: Counter::default(),
            ae_exchanges: Counter::default(),
            ae_keys_repaired: Counter::default(),
            ae_bytes: Counter::default(),
            ae_oldest_exchange: Gauge::default(),
            tombstones_collected: Counter::default(),
            tombstones_awaiting: Gauge::default(),
            tombstones_held_back: Family::default(),
            handoff_keys: Counter::default(),
            handoff_bytes: Counter::default(),
            partitions_fetched: Counter::default(),
            partitions_released: Counter::default(),
            member_up: Family::default(),
            storage_keys: Gauge::default(),
            storage_bytes: Gauge::default(),
            storage_disk_bytes: Gauge::default(),
            client_connections: Gauge::default(),
            peers_refused: Counter::default(),
            tls_refused: Family::default(),
            peer_requests_fenced: Counter::default(),
            client_connections_refused: Counter::default(),
            peer_requests_sent: Counter::default(),
        };
        let r = &mut inner.registry;
        r.register(
            "requests",
            "Client requests answered, by operation and outcome (ok or the error kind)",
            inner.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from a client request's arrival to its answer, by operation",
            Unit::Seconds,
            inner.latency.clone(),
        );
        r.register(
            "quorum_failures",
            "Requests that failed because fewer than R or W replicas answered",
            inner.quorum_failures.clone(),
        );
        r.register(
            "read_repairs",
            "Gets that wrote the merged result back to stale replicas",
            inner.read_repairs.clone(),
        );
        r.register(
            "hints_pending",
            "Hinted writes this node holds, per owner they are for",
            inner.hints_pending.clone(),
        );
        r.register_with_unit(
            "hints_waiting",
            "Per owner with hints here, how long it has had some without a break (at least its oldest hint's age)",
            Unit::Seconds,
            inner.hints_waiting.clone(),
        );
        r.register(
            "hints_delivered_keys",
            "Hinted keys handed back to their owners",
            inner.hints_delivered.clone(),
        );
        r.register(
            "anti_entropy_exchanges",
            "Anti-entropy exchanges of a partition with a co-replica completed",
            inner.ae_exchanges.clone(),
        );
        r.register(
            "anti_entropy_keys_repaired",
            "Keys sent or received by anti-entropy because replicas differed",
            inner.ae_keys_repaired.clone(),
        );
        r.register_with_unit(
            "anti_entropy",
            "Bytes exchanged by anti-entropy",
            Unit::Bytes,
            inner.ae_bytes.clone(),
        );
        r.register_with_unit(
            "anti_entropy_oldest_exchange",
            "How long ago the replicas of the partition exchanged longest ago last agreed (an exchange this node started completed)",
            Unit::Seconds,
            inner.ae_oldest_exchange.clone(),
        );
        r.register(
            "tombstones_collected",
            "Tombstones removed once every replica held them",
            inner.tombstones_collected.clone(),
        );
        r.register(
            "tombstones_awaiting",
            "Tombstones the last collection round found and could not collect yet",
            inner.tombstones_awaiting.clone(),
        );
        r.register(
            "tombstones_held_back",
            "Of those, how many each member held back (its copy differs, or a replica lacks the key)",
            inner.tombstones_held_back.clone(),
        );
        r.register(
            "handoff_received_keys",
            "Keys received by handoff (partitions moving to this node)",
            inner.handoff_keys.clone(),
        );
        r.register_with_unit(
            "handoff_received",
            "Bytes received by handoff (keys and values)",
            Unit::Bytes,
            inner.handoff_bytes.clone(),
        );
        r.register(
            "handoff_partitions_fetched",
            "Partitions fetched completely by handoff",
            inner.partitions_fetched.clone(),
        );
        r.register(
            "handoff_partitions_released",
            "Partitions handed off and dropped by this node",
            inner.partitions_released.clone(),
        );
        r.register(
            "member_up",
            "1 when this node sees the member up, 0 when suspect or down",
            inner.member_up.clone(),
        );
        r.register(
            "storage_keys",
            "Keys stored on this node",
            inner.storage_keys.clone(),
        );
        r.register_with_unit(
            "storage_data",
            "Bytes of keys and values stored on this node",
            Unit::Bytes,
            inner.storage_bytes.clone(),
        );
        r.register_with_unit(
            "storage_disk",
            "Bytes of table files on disk (data and hints)",
            Unit::Bytes,
            inner.storage_disk_bytes.clone(),
        );
        r.register(
            "client_connections",
            "Client connections open",
            inner.client_connections.clone(),
        );
        r.register(
            "peer_connections_refused",
            "Peer connections refused (wrong cluster, no proof of the cluster secret, or no protocol version in common)",
            inner.peers_refused.clone(),
        );
        r.register(
            "tls_handshakes_refused",
            "TLS handshakes refused, by port and reason (not-tls, unknown-ca, expired, \
             no-client-cert, other)",
            inner.tls_refused.clone(),
        );
        r.register(
            "peer_requests_fenced",
            "Peer requests refused because their sender left or was removed from the cluster",
            inner.peer_requests_fenced.clone(),
        );
        r.register(
            "client_connections_refused",
            "Client connections refused at the limits.max_connections limit",
            inner.client_connections_refused.clone(),
        );
        r.register(
            "peer_requests_sent",
            "Requests this node sent to peers (replica reads and writes, gossip, hints, \
             anti-entropy, handoff), each answered once",
            inner.peer_requests_sent.clone(),
        );
        Metrics(Arc::new(inner))
    }

    /// The label of requests in `namespace`: `default`'s without
    /// allocating.
    pub fn namespace_label(namespace: Option<&str>) -> Label {
        match namespace {
            None => Cow::Borrowed(""),
            Some(dynakv::namespace::DEFAULT) => Cow::Borrowed(dynakv::namespace::DEFAULT),
            Some(other) => Cow::Owned(other.to_string()),
        }
    }

    /// A client request, operation `op` in a namespace, answered after
    /// `elapsed`: `Ok` or its error kind.
    pub fn request(
        &self,
        (op, namespace): (&'static str, &Label),
        outcome: Option<ErrorKind>,
        elapsed: Duration,
    ) {
        let m = &self.0;
        let labels = RequestLabels {
            op,
            outcome: outcome.map_or("ok", ErrorKind::as_str),
            namespace: namespace.clone(),
        };
        m.requests.get_or_create(&labels).inc();
        let labels = OpLabels {
            op,
            namespace: labels.namespace,
        };
        m.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if outcome == Some(ErrorKind::Quorum) {
            m.quorum_failures.get_or_create(&labels).inc();
        }
    }

    /// A get found replicas behind and wrote the merge back.
    pub fn read_repair(&self) {
        self.0.read_repairs.inc();
    }

    /// An anti-entropy exchange completed.
    pub fn exchanged(&self, repaired: usize, bytes: usize) {
        self.0.ae_exchanges.inc();
        self.0.ae_keys_repaired.inc_by(repaired as u64);
        self.0.ae_bytes.inc_by(bytes as u64);
    }

    pub fn tombstones_collected(&self, keys: usize) {
        self.0.tombstones_collected.inc_by(keys as u64);
    }

    /// How long ago (ms) the partition exchanged longest ago last agreed.
    pub fn oldest_exchange(&self, ms: u64) {
        self.0.ae_oldest_exchange.set(gauge(ms / 1000));
    }

    /// Per owner with hints here, for how long (ms) it has had some.
    pub fn hints_waiting(&self, waiting: &[(NodeId, u64)]) {
        let m = &self.0;
        m.hints_waiting.clear();
        for (owner, ms) in waiting {
            m.hints_waiting
                .get_or_create(&MemberLabels {
                    member: owner.to_string(),
                })
                .set(gauge(ms / 1000));
        }
    }

    /// What the last collection round left waiting, and who held it back.
    pub fn tombstone_backlog(&self, awaiting: usize, held_back: &[(NodeId, usize)]) {
        let m = &self.0;
        m.tombstones_awaiting.set(gauge(awaiting as u64));
        m.tombstones_held_back.clear();
        for (member, keys) in held_back {
            m.tombstones_held_back
                .get_or_create(&MemberLabels {
                    member: member.to_string(),
                })
                .set(gauge(*keys as u64));
        }
    }

    pub fn partition_fetched(&self) {
        self.0.partitions_fetched.inc();
    }

    pub fn partition_released(&self) {
        self.0.partitions_released.inc();
    }

    pub fn hints_delivered(&self, keys: usize) {
        self.0.hints_delivered.inc_by(keys as u64);
    }

    /// A chunk of a partition received by handoff.
    pub fn handoff_chunk(&self, keys: u64, bytes: u64) {
        self.0.handoff_keys.inc_by(keys);
        self.0.handoff_bytes.inc_by(bytes);
    }

    /// A peer connection refused.
    pub fn peer_refused(&self) {
        self.0.peers_refused.inc();
    }

    /// A TLS handshake refused on `port` ("client" or "peer").
    pub fn tls_refused(&self, port: &'static str, reason: &'static str) {
        self.0
            .tls_refused
            .get_or_create(&TlsLabels { port, reason })
            .inc();
    }

    /// A peer request refused: its sender left or was removed.
    pub fn peer_fenced(&self) {
        self.0.peer_requests_fenced.inc();
    }

    /// A request sent to a peer.
    pub fn peer_request_sent(&self) {
        self.0.peer_requests_sent.inc();
    }

    /// A client connection refused at the connection limit.
    pub fn client_refused(&self) {
        self.0.client_connections_refused.inc();
    }

    /// Client connections now open.
    pub fn client_connections(&self, open: usize) {
        self.0.client_connections.set(open as i64);
    }

    /// The storage figures and hints of a replica's stats.
    pub fn storage(&self, keys: u64, bytes: u64, disk_bytes: u64, hints: &[(NodeId, u64)]) {
        let m = &self.0;
        m.storage_keys.set(gauge(keys));
        m.storage_bytes.set(gauge(bytes));
        m.storage_disk_bytes.set(gauge(disk_bytes));
        m.hints_pending.clear();
        for (owner, count) in hints {
            m.hints_pending
                .get_or_create(&MemberLabels {
                    member: owner.to_string(),
                })
                .set(gauge(*count));
        }
    }

    /// Liveness of every live member as this node sees it.
    pub fn members(&self, topology: &dynakv::topology::Topology) {
        let m = &self.0;
        m.member_up.clear();
        for member in topology.view.members.values() {
            if !member.status.is_live() {
                continue;
            }
            let up = topology.is_up(&member.id);
            m.member_up
                .get_or_create(&MemberLabels {
                    member: member.id.to_string(),
                })
                .set(i64::from(up));
        }
    }

    /// Everything, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) = encode(&mut text, &self.0.registry) {
            // Writing to a String cannot fail; say so if it ever does.
            warn!(error = %e, "metrics could not be encoded");
        }
        text
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

//! The sections of the node configuration, each with its defaults (kept
//! equal to `conf/default.toml` by a test in `super`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::protocol::Versions;

/// This node's identity and where it listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Stable name of the node; must be unique in the cluster.
    pub id: String,
    /// Address clients connect to (`host:port`).
    pub client_addr: String,
    /// Address peers connect to (`host:port`).
    pub peer_addr: String,
    /// Directory of the node's storage; created if missing.
    pub data_dir: PathBuf,
    /// Capacity relative to other nodes: a weight-2 node owns twice the
    /// partitions of a weight-1 node.
    pub weight: u32,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            id: "node1".into(),
            client_addr: "127.0.0.1:7001".into(),
            peer_addr: "127.0.0.1:7101".into(),
            data_dir: PathBuf::from("data/node1"),
            weight: 1,
        }
    }
}

/// Settings every member of a cluster must share, but `read_from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// Name checked in every hello; nodes of different clusters never talk.
    pub name: String,
    /// Number of partitions Q, a power of two, the cluster is founded with;
    /// the Q this node's stored keys are laid out at, which stays when the
    /// cluster splits (`dynakv cluster split`) past it.
    pub partitions: u32,
    /// Replicas per key.
    pub n: u8,
    /// Default read quorum.
    pub r: u8,
    /// Default write quorum.
    pub w: u8,
    /// Peer addresses of other members to contact at start-up.
    pub seeds: Vec<String>,
    /// Join (or found) the seeds' cluster at start-up. Without it a fresh
    /// node waits for `dynakv cluster join`.
    pub auto_join: bool,
    /// Which replicas the reads this node coordinates ask (members may
    /// differ here: it is the coordinator's choice).
    pub read_from: ReadFrom,
}

/// Which replicas a read asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    /// R of them, the coordinator's own copy and owners first; another
    /// only in place of one that fails or is slow.
    Quorum,
    /// All N, as the Dynamo paper does: read repair finds every stale
    /// copy, and a slow replica costs nothing while R others answer.
    All,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            name: "dynakv".into(),
            partitions: 1024,
            n: 3,
            r: 2,
            w: 2,
            seeds: Vec::new(),
            auto_join: true,
            read_from: ReadFrom::Quorum,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Acknowledge a write only once it is on disk; concurrent writes share
    /// one fsync (group commit).
    Always,
    /// Acknowledge once written to the OS; fsync every `fsync_interval_ms`.
    Periodic,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    pub fsync: Fsync,
    /// Interval between fsyncs in periodic mode.
    pub fsync_interval_ms: u64,
    /// Block cache size in MiB.
    pub cache_mb: u64,
    /// Cache of the latest stored copy of recently used keys, in MiB
    /// (0: none).
    pub row_cache_mb: u64,
    /// Size at which a keyspace's in-memory table is flushed, in MiB;
    /// each node scales it by 0.75-1.25 (`memtable_bytes`).
    pub memtable_mb: u64,
    /// Keys a second the start-up scan reads at most (0: as fast as it
    /// can between requests).
    pub scan_keys_per_sec: u64,
}

impl StorageSection {
    /// The in-memory table size of the node named `node`, in bytes:
    /// `memtable_mb` scaled by a factor between 0.75 and 1.25 that the
    /// node's id fixes.
    ///
    /// Replicas receive the same writes, so with equal sizes they would
    /// fill and flush their tables at the same moments, and fjall holds a
    /// node's writes for tens of milliseconds when a flush or compaction
    /// lands (it fsyncs its manifest under the lock every write takes).
    /// Spread apart, the pauses come at different times on different
    /// replicas, and a write quorum of the others carries on meanwhile.
    pub fn memtable_bytes(&self, node: &str) -> u64 {
        let mib = self.memtable_mb.saturating_mul(1 << 20);
        let spread = u64::from(crc32fast::hash(node.as_bytes()) % 1001);
        mib / 4 * 3 + (mib / 2).saturating_mul(spread) / 1000
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            fsync: Fsync::Periodic,
            fsync_interval_ms: 1000,
            cache_mb: 64,
            row_cache_mb: 64,
            memtable_mb: 32,
            scan_keys_per_sec: 0,
        }
    }
}

/// Bounds on everything that arrives from the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    pub max_frame_bytes: u32,
    pub max_key_bytes: u32,
    pub max_value_bytes: u32,
    /// Siblings one key may hold; a write that would exceed it is refused.
    pub max_siblings: u32,
    /// Client connections served at once; more are refused.
    pub max_connections: u32,
    /// Requests one client connection may have in flight; more are refused
    /// as overloaded (retryable) until replies drain.
    pub max_in_flight_per_connection: u32,
    /// Get/put/delete sessions the node coordinates at once; more are
    /// refused as overloaded.
    pub max_in_flight: u32,
    /// Keys one batch request (`get_many`, `put_many`, `mget`) may carry;
    /// each is its own quorum session, counted in `max_in_flight`.
    pub max_batch: u32,
    /// A client connection with no request in flight and none received
    /// for this long is closed (0: never), so idle connections cannot
    /// hold every slot of `max_connections`. In ms.
    pub client_idle_ms: u64,
    /// A put of at least this many value bytes is a large write: it yields
    /// to small requests (`coordinator::LargeWrites`).
    pub large_write_bytes: u32,
    /// How far small requests' p99 may rise above their p99 without large
    /// writes before this node slows the large writes it coordinates, in
    /// percent (at least 100); 0: large writes are never slowed.
    pub small_p99_bound_percent: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_frame_bytes: 16 << 20,
            max_key_bytes: 4096,
            max_value_bytes: 4 << 20,
            max_siblings: 100,
            max_connections: 1024,
            max_in_flight_per_connection: 1024,
            max_in_flight: 16_384,
            max_batch: 1000,
            client_idle_ms: 300_000,
            large_write_bytes: 64 << 10,
            small_p99_bound_percent: 150,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsSection {
    /// A get, put or delete that has not reached its quorum by then fails.
    pub request_ms: u64,
    /// Giving up on opening a peer connection.
    pub connect_ms: u64,
    /// A replica a quorum read asked that has not answered by then (or by
    /// the median replica's recent 99th percentile, if later) is
    /// slow: a replica not asked yet reads beside it (the first answers
    /// count). Capped by the slice of `request_ms` a fallback waits.
    pub read_spare_ms: u64,
}

impl Default for TimeoutsSection {
    fn default() -> Self {
        TimeoutsSection {
            request_ms: 5000,
            connect_ms: 2000,
            read_spare_ms: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GossipSection {
    /// Interval between gossip rounds (each exchanges views with one
    /// random peer and probes it).
    pub interval_ms: u64,
    /// A peer that leaves a probe unanswered for this long is suspect
    /// (requests are routed around it).
    pub suspect_after_ms: u64,
    /// ... and once suspected for `down_after_ms - suspect_after_ms`, down.
    pub down_after_ms: u64,
}

impl Default for GossipSection {
    fn default() -> Self {
        GossipSection {
            interval_ms: 1000,
            suspect_after_ms: 5000,
            down_after_ms: 15_000,
        }
    }
}

/// Anti-entropy: background comparison of replicas by hash trees, and the
/// collection of tombstones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AntiEntropySection {
    pub enabled: bool,
    /// Interval between exchange starts (one partition with one co-replica
    /// each), in ms.
    pub interval_ms: u64,
    /// Budget of exchange traffic, in bytes per second: no exchange starts
    /// while the last second's exchanges used more.
    pub max_bytes_per_sec: u64,
    /// Interval between tombstone collection rounds, in ms.
    pub gc_interval_ms: u64,
    /// Tombstones probed per partition and round.
    pub gc_batch: u32,
    /// A tombstone is collected only when every member allowed it twice,
    /// this many ms apart: longer than any message stays in flight, so a
    /// delayed write of an older version cannot bring the value back.
    pub gc_grace_ms: u64,
    /// A delete's tombstone is kept at least this long (ms after the
    /// delete) before it may be collected: a node restored from a backup
    /// younger than this cannot bring a deleted value back. 0: collect as
    /// soon as every member allows.
    pub keep_deleted_ms: u64,
}

/// A week: a backup up to a week old restores without bringing deletes back.
pub const KEEP_DELETED_MS: u64 = 7 * 24 * 3600 * 1000;

impl Default for AntiEntropySection {
    fn default() -> Self {
        AntiEntropySection {
            enabled: true,
            interval_ms: 100,
            max_bytes_per_sec: 10 << 20,
            gc_interval_ms: 10_000,
            gc_batch: 100,
            gc_grace_ms: 60_000,
            keep_deleted_ms: KEEP_DELETED_MS,
        }
    }
}

/// Partition transfers when members join, leave or change weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HandoffSection {
    /// Keys per transferred chunk.
    pub chunk_keys: u32,
    /// Transfer budget, in bytes per second (pacing).
    pub max_bytes_per_sec: u64,
    /// Interval between checks for partitions to fetch or release, in ms.
    pub interval_ms: u64,
}

impl Default for HandoffSection {
    fn default() -> Self {
        HandoffSection {
            chunk_keys: 512,
            max_bytes_per_sec: 50 << 20,
            interval_ms: 1000,
        }
    }
}

/// Who may talk to a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySection {
    /// Secret every member shares; peers prove they hold it when they
    /// connect (HMAC challenge). Empty: peers are not authenticated.
    pub cluster_secret: String,
    /// Token clients must present in their hello. Empty: none required.
    pub client_token: String,
}

/// TLS on the client and peer ports (rustls). On when `cert` and `key` are
/// set: both ports then speak only TLS, peers present their certificates
/// to each other and verify them against `ca` (mutual TLS, beside the
/// cluster secret), and clients verify the node's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file of this node's certificate chain (empty: TLS off).
    pub cert: String,
    /// PEM file of its private key.
    pub key: String,
    /// PEM file of the certificate authority peers' (and clients')
    /// certificates must chain to.
    pub ca: String,
    /// Clients, too, must present a certificate the CA signed.
    pub require_client_cert: bool,
}

impl TlsSection {
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty()
    }

    /// Cert, key and CA are all set or all empty; a client certificate is
    /// only asked for with TLS on.
    pub(super) fn validate(&self) -> Result<()> {
        let set = [&self.cert, &self.key, &self.ca].map(|f| !f.is_empty());
        if set.iter().any(|s| *s) && !set.iter().all(|s| *s) {
            return Err(Error::Config(
                "tls.cert, tls.key and tls.ca must be set together (or none, for no TLS)".into(),
            ));
        }
        if self.require_client_cert && !self.enabled() {
            return Err(Error::Config(
                "tls.require_client_cert needs tls.cert, tls.key and tls.ca".into(),
            ));
        }
        Ok(())
    }
}

/// Hinted handoff: writes a stand-in holds for an owner that was down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HintsSection {
    /// Deliver hints when their owner is seen up again. Switch off to keep
    /// hints (tests of anti-entropy do).
    pub deliver: bool,
    /// Keys per delivery batch.
    pub batch_size: u32,
    /// Pause between two batches to one owner, in ms (pacing).
    pub pause_ms: u64,
    /// Interval between checks for deliverable hints, in ms.
    pub interval_ms: u64,
}

impl Default for HintsSection {
    fn default() -> Self {
        HintsSection {
            deliver: true,
            batch_size: 256,
            pause_ms: 10,
            interval_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The metrics endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// `host:port` serving `GET /metrics` (Prometheus/OpenMetrics text).
    /// Empty: no endpoint.
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// `text` or `json`, written to stderr.
    pub format: LogFormat,
    /// Filter used when `RUST_LOG` is not set.
    pub level: String,
}

/// Switches for fault-injection tests; keep them off in production.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TestingSection {
    /// Accept the client protocol's `fault` request, which partitions this
    /// node from chosen peers (its Bridge drops their traffic) until healed.
    pub fault_injection: bool,
    /// Speak no protocol newer than this (None: this build's newest), as
    /// the previous release would: for upgrade tests.
    pub protocol_version: Option<u8>,
}

impl TestingSection {
    /// The protocol versions this node speaks.
    pub fn versions(&self) -> Result<Versions> {
        Versions::capped(self.protocol_version)
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

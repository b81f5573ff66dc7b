//! One node: every actor, started in dependency order and wired together.
//! Reading `start_on` tells you the architecture; every actor carries out
//! decisions made by the core crate's module of the same name.
//!
//! ```text
//!  fjall ── Storage ── StorageWorker (SyncArbiter: reads, writes, trees)
//!                       └─ Syncer (syncer.rs: fsync on the configured schedule)
//!           Replica ──── owns the StorageWorker; local get/put/merge
//!
//!  peer port ── Bridge ── Link per peer (handshake, frames, reconnects)
//!               │  routes each incoming request by its Concern to the
//!               │  actor that Handles it (Replica, Membership, Hints,
//!               │  Handoff, AntiEntropy) and each reply to its caller;
//!               │  fences removed members; Watchers see link changes
//!
//!  Membership (gossip, view, liveness) ── view ──► Ring
//!  Ring ── RingChanged ──► Coordinator, Hints, Handoff, AntiEntropy,
//!                          MetricsServer
//!
//!  client port ── ClientServer ── ClientConn per connection
//!                                   └─► Coordinator ── Session per request
//!                                        (admin.rs: Operations)   └─ Router ── Replica | Bridge
//!
//!  Hints        durable hints, delivered when the owner is back
//!  Handoff      streams partitions to their new owners
//!  AntiEntropy  Merkle exchanges, AE catch-up, tombstone collection
//!  MetricsServer  /metrics over HTTP (when metrics.addr is set)
//! ```
//!
//! Every actor but the per-connection and per-request ones runs under a
//! `Supervisor`: one that panics is restarted in place and keeps serving.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use dynakv::config::Config;
use dynakv::coordinator::{Limits, Planner};
use dynakv::handoff::HandoffSettings;
use dynakv::hints::DeliverySettings;
use dynakv::membership::{Member, Settings as MembershipSettings, Status};
use dynakv::tombstones::CollectorSettings;
use dynakv::version::Actor as Writer;
use dynakv::{Error, NodeId, Result};
use tracing::{info, warn};

use crate::admin::Operations;
use crate::anti_entropy::{AntiEntropy, AntiEntropySettings};
use crate::backup::Backups;
use crate::bridge::{Bridge, BridgeSettings, Handle, PeerRequest, Watch};
use crate::client_server::{ClientServer, ClientSettings, DrainAll};
use crate::clock::Clock;
use crate::coordinator::Coordinator;
use crate::events::Events;
use crate::faults::{Control, Fault};
use crate::handoff::{Handoff, MembershipLinks, Wiring as HandoffWiring};
use crate::hints::{Hints, HintsSettings};
use crate::membership::{AnnounceStop, Membership, Wiring as MembershipWiring};
use crate::metrics::Metrics;
use crate::metrics_server::MetricsServer;
use crate::replica::{Flush, Replica, ReplicaSettings};
use crate::ring::{Ring, Subscribe};
use crate::session::Router;
use crate::storage::Storage;
use crate::tls::NodeTls;
use dynakv::peer::Concern;

/// Longest a stopping node waits for its peers to acknowledge that it is.
const STOP_NOTICE_WITHIN: Duration = Duration::from_millis(500);

/// The node's listening sockets, bound before the actors start (so a test
/// can bind port 0 and learn the port first).
pub struct Listeners {
    pub client: std::net::TcpListener,
    pub peer: std::net::TcpListener,
    /// The metrics endpoint, when one is configured.
    pub metrics: Option<std::net::TcpListener>,
}

impl Listeners {
    pub fn bind(config: &Config) -> Result<Listeners> {
        let bind = |what: &str, addr: &str| {
            std::net::TcpListener::bind(addr)
                .map_err(|e| Error::Unavailable(format!("cannot listen on {what} {addr}: {e}")))
        };
        let metrics = match config.metrics.addr.as_str() {
            "" => None,
            addr => Some(bind("metrics address", addr)?),
        };
        Ok(Listeners {
            client: bind("client address", &config.node.client_addr)?,
            peer: bind("peer address", &config.node.peer_addr)?,
            metrics,
        })
    }
}

/// Every actor of a running node, for tests and the binary.
#[derive(Clone)]
pub struct NodeHandle {
    pub id: NodeId,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub replica: Addr<Replica>,
    pub bridge: Addr<Bridge>,
    pub membership: Addr<Membership>,
    pub ring: Addr<Ring>,
    pub coordinator: Addr<Coordinator>,
    pub hints: Addr<Hints>,
    pub anti_entropy: Addr<AntiEntropy>,
    pub handoff: Addr<Handoff>,
    pub client_server: Addr<ClientServer>,
    pub events: Events,
    /// Where the metrics endpoint listens, if it does.
    pub metrics_addr: Option<SocketAddr>,
    /// The thread every actor of this node runs on, if it has its own
    /// (taken by `stop`).
    arbiter: Arc<Mutex<Option<Arbiter>>>,
    /// How long `stop` lets requests in flight finish.
    drain_within: Duration,
}

/// The address others should use: the configured one, with the bound port
/// when the configuration asked for port 0.
fn advertised(configured: &str, bound: SocketAddr) -> String {
    match configured.rsplit_once(':') {
        Some((host, "0")) => format!("{host}:{}", bound.port()),
        _ => configured.to_string(),
    }
}

/// Starts a node on an arbiter (thread) of its own, which `stop` stops.
/// Must run inside an actix System; several nodes may share one process.
pub fn start(config: &Config, listeners: Listeners) -> Result<NodeHandle> {
    let arbiter = Arbiter::new();
    let on = arbiter.handle();
    start_on(config, listeners, on, Some(arbiter))
}

/// Starts a node on the calling thread, which must be the System's (as in
/// `serve`, one node per process). actix runs the dispatch of every
/// SyncArbiter on the System's thread: with the node there too, handing a
/// batch to the storage worker wakes no third thread on the way.
pub fn start_here(config: &Config, listeners: Listeners) -> Result<NodeHandle> {
    start_on(config, listeners, Arbiter::current(), None)
}

/// Starts a node whose actors run on `on`; `arbiter` (when the node has a
/// thread of its own) is stopped by `stop`.
fn start_on(
    config: &Config,
    listeners: Listeners,
    on: ArbiterHandle,
    arbiter: Option<Arbiter>,
) -> Result<NodeHandle> {
    config.validate()?;
    let me = config.node_id();
    let versions = config.testing.versions()?;
    let tls = NodeTls::load(&config.tls)?;
    let metrics = Metrics::new();
    let events = Events::new(metrics.clone());
    let local = |l: &std::net::TcpListener| {
        l.local_addr()
            .map_err(|e| Error::Unavailable(e.to_string()))
    };
    let (client_addr, peer_addr) = (local(&listeners.client)?, local(&listeners.peer)?);
    let metrics_addr = listeners.metrics.as_ref().map(local).transpose()?;

    // Storage and the replica first: everything else routes to them.
    let storage = Storage::open(&config.node.data_dir, &config.storage, &config.node.id)?;
    let meta = storage.meta();
    crate::membership::check_start(&meta, &me, &config.node.data_dir)?;
    storage.check_layout(config.cluster.partitions)?;
    let meta_for_handoff = storage.meta();
    // A fresh writer identity per start: a node never reuses a dot, even if a
    // crash lost writes it had coordinated.
    let writer =
        Writer(getrandom::u64().map_err(|e| Error::Internal(format!("no randomness: {e}")))?);
    let backups = Backups::start(storage.clone(), me.to_string(), config.cluster.name.clone());
    let replica = Replica::start(
        storage,
        ReplicaSettings {
            partitions: config.cluster.partitions,
            writer,
            max_siblings: config.limits.max_siblings as usize,
            fsync: config.storage.fsync,
            fsync_interval: Duration::from_millis(config.storage.fsync_interval_ms),
            keep_deleted_ms: config.anti_entropy.keep_deleted_ms,
            scan_keys_per_sec: config.storage.scan_keys_per_sec,
        },
        &on,
    )?;

    // The Bridge: peers reach each concern through it.
    let bridge = Bridge::new(
        BridgeSettings {
            me: me.clone(),
            cluster: config.cluster.name.clone(),
            max_frame: config.limits.max_frame_bytes,
            connect_timeout: Duration::from_millis(config.timeouts.connect_ms),
            secret: config.security.cluster_secret.clone(),
            metrics: metrics.clone(),
            tls: tls.clone(),
            versions,
        },
        listeners.peer,
    );
    let bridge = Supervisor::start_in_arbiter(&on, move |_| bridge);
    let handle =
        |concern, handler: Recipient<PeerRequest>| bridge.do_send(Handle { concern, handler });
    handle(Concern::Replica, replica.clone().recipient());
    handle(Concern::Stats, replica.clone().recipient());

    // Ring, then membership, which feeds it views.
    let ring = Supervisor::start_in_arbiter(&on, |_| Ring::default());
    let clock = Clock::default();
    let membership_settings = MembershipSettings {
        me: Member {
            id: me.clone(),
            peer_addr: advertised(&config.node.peer_addr, peer_addr),
            client_addr: advertised(&config.node.client_addr, client_addr),
            weight: config.node.weight,
            status: Status::Joining,
            version: 0,
        },
        cluster: config.cluster.name.clone(),
        partitions: config.cluster.partitions,
        n: usize::from(config.cluster.n),
        seeds: config.cluster.seeds.clone(),
        suspect_after: config.gossip.suspect_after_ms,
        down_after: config.gossip.down_after_ms,
        auto_join: config.cluster.auto_join,
        incarnation: crate::clock::wall_ms(),
        protocol: versions.max,
    };
    let membership = Membership::new(
        membership_settings,
        MembershipWiring {
            bridge: bridge.clone(),
            ring: ring.clone(),
            meta,
            events: events.clone(),
        },
        Duration::from_millis(config.gossip.interval_ms),
        clock,
    )?;
    let membership = Supervisor::start_in_arbiter(&on, move |_| membership);
    handle(Concern::Gossip, membership.clone().recipient());
    bridge.do_send(Watch {
        reachability: membership.clone().recipient(),
        fenced: membership.clone().recipient(),
    });

    // Anti-entropy compares this node's replicas with its co-replicas and
    // collects tombstones.
    let anti_entropy = AntiEntropy::new(
        AntiEntropySettings {
            me: me.clone(),
            enabled: config.anti_entropy.enabled,
            n: usize::from(config.cluster.n),
            interval: Duration::from_millis(config.anti_entropy.interval_ms),
            max_bytes_per_sec: config.anti_entropy.max_bytes_per_sec,
            gc_interval: Duration::from_millis(config.anti_entropy.gc_interval_ms),
            collector: CollectorSettings {
                me: me.clone(),
                n: usize::from(config.cluster.n),
                batch: config.anti_entropy.gc_batch as usize,
                grace_ms: config.anti_entropy.gc_grace_ms,
                ask_timeout_ms: config.timeouts.request_ms,
            },
            call_timeout: Duration::from_millis(config.timeouts.request_ms),
        },
        replica.clone(),
        bridge.clone(),
        events.clone(),
        clock,
    );
    let anti_entropy = Supervisor::start_in_arbiter(&on, move |_| anti_entropy);
    handle(Concern::AntiEntropy, anti_entropy.clone().recipient());
    handle(Concern::Tombstones, anti_entropy.clone().recipient());
    ring.do_send(Subscribe(anti_entropy.clone().recipient()));
    ring.do_send(Subscribe(replica.clone().recipient()));

    // Handoff moves partitions when members join, leave or change weight.
    let handoff = Handoff::new(
        HandoffSettings {
            me: me.clone(),
            n: usize::from(config.cluster.n),
            partitions: config.cluster.partitions,
            chunk_keys: config.handoff.chunk_keys,
            max_bytes_per_sec: config.handoff.max_bytes_per_sec,
            call_timeout_ms: config.timeouts.request_ms,
        },
        Duration::from_millis(config.handoff.interval_ms),
        HandoffWiring {
            replica: replica.clone(),
            bridge: bridge.clone(),
            membership: MembershipLinks {
                commit: membership.clone().recipient(),
                left: membership.clone().recipient(),
            },
            meta: meta_for_handoff,
            events: events.clone(),
            clock,
        },
    );
    let handoff = Supervisor::start_in_arbiter(&on, move |_| handoff);
    handle(Concern::Handoff, handoff.clone().recipient());
    ring.do_send(Subscribe(handoff.clone().recipient()));

    // Hints hand writes held for owners that were down back to them.
    let hints = Hints::new(
        HintsSettings {
            delivery: DeliverySettings {
                me: me.clone(),
                n: usize::from(config.cluster.n),
                enabled: config.hints.deliver,
                batch_size: config.hints.batch_size as usize,
                pause_ms: config.hints.pause_ms,
                // A batch to an owner that is not really back costs this long.
                send_timeout_ms: config.timeouts.request_ms / 4,
            },
            interval: Duration::from_millis(config.hints.interval_ms),
        },
        replica.clone(),
        bridge.clone(),
        events.clone(),
        clock,
    );
    let hints = Supervisor::start_in_arbiter(&on, move |_| hints);
    handle(Concern::Hints, hints.clone().recipient());
    ring.do_send(Subscribe(hints.clone().recipient()));

    // The coordinator routes with the ring it is sent.
    let router = Router {
        me: me.clone(),
        replica: replica.clone(),
        bridge: bridge.clone(),
        timeout: Duration::from_millis(config.timeouts.request_ms),
    };
    let request_timeout = Duration::from_millis(config.timeouts.request_ms);
    let planner = Planner {
        me: me.clone(),
        limits: Limits {
            defaults: config.default_namespace(),
            max_key_bytes: config.limits.max_key_bytes as usize,
            owner_hints: config.hints.deliver,
            read_from: config.cluster.read_from,
        },
    };
    let operations = Operations {
        me: me.clone(),
        cluster: config.cluster.name.clone(),
        n: config.cluster.n,
        namespace_defaults: config.default_namespace(),
        fault_injection: config.testing.fault_injection,
        versions,
        replica: replica.clone(),
        backups,
        bridge: bridge.clone(),
        membership: membership.clone().recipient(),
        reporters: vec![
            anti_entropy.clone().recipient(),
            handoff.clone().recipient(),
            hints.clone().recipient(),
        ],
        ask_within: Operations::ask_within(request_timeout),
    };
    let coordinator = Coordinator::new(
        planner,
        &config.limits,
        router,
        config.timeouts.read_spare_ms,
        operations,
        events.clone(),
    );
    let coordinator = Supervisor::start_in_arbiter(&on, move |_| coordinator);
    ring.do_send(Subscribe(coordinator.clone().recipient()));

    // Clients last: by now every request has somewhere to go.
    let client_server = ClientServer::new(
        ClientSettings {
            me: me.clone(),
            cluster: config.cluster.name.clone(),
            max_frame: config.limits.max_frame_bytes,
            max_connections: config.limits.max_connections as usize,
            max_in_flight: config.limits.max_in_flight_per_connection as usize,
            client_token: config.security.client_token.clone(),
            idle: (config.limits.client_idle_ms > 0)
                .then(|| Duration::from_millis(config.limits.client_idle_ms)),
            metrics: metrics.clone(),
            tls,
            versions,
        },
        listeners.client,
        coordinator.clone(),
    );
    let client_server = Supervisor::start_in_arbiter(&on, move |_| client_server);

    if let Some(listener) = listeners.metrics {
        let server = MetricsServer::new(metrics, replica.clone(), listener);
        let server = Supervisor::start_in_arbiter(&on, move |_| server);
        ring.do_send(Subscribe(server.recipient()));
    }

    if config.security.cluster_secret.is_empty() {
        warn!("security.cluster_secret is empty: peers are not authenticated");
    }
    let metrics = metrics_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
    info!(node = %me, %client_addr, %peer_addr, %metrics, "node started");
    Ok(NodeHandle {
        id: me,
        client_addr,
        peer_addr,
        replica,
        bridge,
        membership,
        ring,
        coordinator,
        hints,
        anti_entropy,
        handoff,
        client_server,
        events,
        metrics_addr,
        arbiter: Arc::new(Mutex::new(arbiter)),
        drain_within: Duration::from_millis(config.timeouts.request_ms) + Duration::from_secs(1),
    })
}

impl NodeHandle {
    /// Stops gracefully: stops accepting clients, lets requests in flight
    /// finish (or fail) within the request timeout, makes every write
    /// durable, then stops every actor of the node.
    pub async fn stop(self) -> Result<()> {
        let _ = self
            .membership
            .send(AnnounceStop {
                within: STOP_NOTICE_WITHIN,
            })
            .await;
        let _ = self
            .client_server
            .send(DrainAll {
                within: self.drain_within,
            })
            .await;
        let flushed = self.replica.send(Flush).await;
        let arbiter = self.arbiter.lock().ok().and_then(|mut a| a.take());
        if let Some(arbiter) = arbiter {
            arbiter.stop();
            let _ = tokio::task::spawn_blocking(move || arbiter.join()).await;
        }
        info!(node = %self.id, "node stopped");
        flushed.map_err(crate::supervise::mailbox_error)?
    }

    /// Injects a network fault at this node's Bridge; returns once the
    /// Bridge applies it.
    pub async fn fault(&self, fault: Fault) {
        let _ = self.bridge.send(Control(fault)).await;
    }
}

crate::supervision_probes!(
    Replica => "replica",
    Bridge => "bridge",
    Membership => "membership",
    Ring => "ring",
    Coordinator => "coordinator",
    Hints => "hints",
    AntiEntropy => "anti-entropy",
    Handoff => "handoff",
    ClientServer => "client-server",
);

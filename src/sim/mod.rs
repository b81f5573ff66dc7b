//! Deterministic simulation of a whole cluster in one thread (feature
//! `sim`).
//!
//! The real core state machines of every node (membership gossip and
//! failure detection, coordinator sessions over routed preference lists,
//! replica merge, hinted handoff, anti-entropy exchanges, tombstone
//! collection, fencing; with `scaling` a join and a leave with partition
//! handoff; with `restore` a member restored from a backup of its disks; with
//! `stop_notices` clean stops that tell the peers; with `removal` a member removed while down that comes back on
//! its old disk and must be fenced out; with `split` Q doubled twice
//! while clients write and faults run) run over a simulated network that
//! drops, delays, duplicates (all but mints, which the Bridge never
//! resends) and reorders messages, partitions and heals, and crashes and
//! restarts nodes, on a simulated clock. Everything random comes from one
//! seeded generator and every collection iterates in a fixed order, so a
//! seed replays the same run event for event (`Outcome::digest`).
//!
//! A run: clients do gets, puts with contexts, blind puts and deletes
//! against random coordinators while a nemesis injects faults; then the
//! faults stop, every node is restarted and the network heals, and the
//! cluster must converge (owners of each key holding identical sibling
//! sets, no hints left, nothing in flight) within a bounded simulated time.
//! The history is then checked (see [`history`]).
//!
//! The simulator runs the shipped code: each node's background work is the
//! core's drivers (`HintDelivery`, anti-entropy's `Schedule`, the tombstone
//! `Collector`, `HandoffDriver`), driven as their actors drive them
//! (`background`); the peers' side of every protocol is the core's
//! `respond` functions, as the actors call them (`network`). The files:
//! `mod.rs` the world and its clock, `network` the messages and their
//! delivery, `workload` the clients and their sessions, `nemesis` the
//! faults, `background` the drivers, `convergence` the end state, `disk`
//! the simulated storage, `history` the checks.
//!
//! Crashes lose what the process held in memory (sessions, exchanges,
//! deliveries, the failure detector's state) and take a fresh writer
//! identity on restart, as the node does. With `fsync = always` every
//! write a replica made is durable; with `periodic` a crash is a power
//! loss that drops the writes since the node's last sync, so only the
//! checks that do not need durability apply.

mod background;
mod convergence;
mod disk;
pub mod history;
mod nemesis;
mod network;
pub mod scale;
mod timers;
pub mod typed;
mod workload;
mod world;

use crate::config::ReadFrom;
use crate::coordinator::{Limits, Planner};
use crate::handoff::HandoffSettings;
use crate::hints::DeliverySettings;
use crate::membership::{Member, Settings, Status};
use crate::namespace;
use crate::node::NodeId;
use crate::tombstones::CollectorSettings;
pub use world::Sim;
use world::{Call, Event, Purpose, Session};

/// What a run looks like.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    pub partitions: u32,
    pub n: usize,
    pub r: usize,
    pub w: usize,
    pub keys: usize,
    pub clients: usize,
    /// Simulated milliseconds of workload and faults.
    pub fault_time: u64,
    /// Bound on the time to converge once healed, in simulated ms.
    pub converge_within: u64,
    /// Per mille of messages dropped, and duplicated, while faults run.
    pub drop: u64,
    pub duplicate: u64,
    /// True: every replica write is durable at once (`fsync = always`).
    /// False: synced every `sync_every` ms and a crash loses the rest.
    pub fsync_always: bool,
    pub sync_every: u64,
    pub crashes: bool,
    pub partitions_faults: bool,
    /// The last node starts outside the ring and joins during the run, and
    /// one of the others leaves (handing its partitions off, then stopping).
    pub scaling: bool,
    /// A founder is stopped and removed by an operator, and comes back
    /// later on its old disk (and old view), after the cluster has deleted
    /// and collected keys it still holds.
    pub removal: bool,
    /// A founder's disks are backed up, the operator deletes keys it holds,
    /// and later the node loses its disks and is restored from the backup
    /// (a fresh writer, as `dynakv restore` starts one).
    pub restore: bool,
    /// Half the crashes are clean stops instead (a restart for an
    /// upgrade): the node tells the peers it believes up that it is
    /// stopping (`GossipMsg::Stopping`), syncs, and ends.
    pub stop_notices: bool,
    /// An operator doubles Q twice during the run (`dynakv cluster split`
    /// at a random member that is up).
    pub split: bool,
    /// How long each replica keeps a delete before collection may take it
    /// (`anti_entropy.keep_deleted_ms`; simulated ms).
    pub keep_deleted_ms: u64,
    /// Keep a readable trace of events (printed on failure).
    pub trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 5,
            partitions: 16,
            n: 3,
            r: 2,
            w: 2,
            keys: 6,
            clients: 4,
            fault_time: 20_000,
            converge_within: 60_000,
            drop: 20,
            duplicate: 20,
            fsync_always: true,
            sync_every: 1000,
            crashes: true,
            partitions_faults: true,
            scaling: false,
            removal: false,
            restore: false,
            stop_notices: false,
            split: false,
            keep_deleted_ms: 0,
            trace: false,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    /// Events processed (message deliveries, timers, client steps, faults).
    pub events: u64,
    /// A hash of every event, in order: equal for equal seeds.
    pub digest: u64,
    pub acked_writes: usize,
    /// Counter and set operations run (and checked).
    pub typed_ops: usize,
    pub reads: usize,
    pub failed_ops: usize,
    pub crashes: usize,
    /// Crashes of a node whose start-up scan was still under way.
    pub crashes_while_loading: usize,
    /// Counters folded by tombstone collection (each on each holder).
    pub folded: usize,
    /// Clean stops, which told the peers (`stop_notices`).
    pub stops: usize,
    pub partitions: usize,
    /// Partitions fetched by handoff, and released.
    pub fetched: usize,
    pub released: usize,
    /// Peer requests refused because their sender was out of the cluster.
    pub fenced: usize,
    /// Splits of Q an operator made (`split`).
    pub splits: usize,
    /// Simulated ms from the heal to convergence.
    pub converged_after: u64,
    /// The first violation found, if any.
    pub violation: Option<String>,
    /// The last events before the end (when tracing).
    pub trace: Vec<String>,
}

// Timing, in simulated milliseconds.
const GOSSIP_EVERY: u64 = 200;
const SUSPECT_AFTER: u64 = 1_000;
const DOWN_AFTER: u64 = 3_000;
const AE_EVERY: u64 = 150;
/// Anti-entropy's byte budget per second (the default's order).
const AE_BYTES_PER_SEC: u64 = 10 << 20;
/// Handoff's byte budget per second: enough that chunks barely pause.
const HANDOFF_BYTES_PER_SEC: u64 = 100 << 20;
const HINTS_EVERY: u64 = 300;
/// Keys per hint batch, and the pause between two batches to one owner.
const HINT_BATCH: usize = 4;
const HINT_PAUSE: u64 = 20;
const GC_EVERY: u64 = 1_000;
const HANDOFF_EVERY: u64 = 100;
/// Keys per fetched chunk: small, so transfers take several steps.
const CHUNK_KEYS: u32 = 2;
/// Keys a restarted replica's start-up scan counts per timer event: small,
/// so writes, exchanges and handoff run while it is under way.
const LOAD_STEP: usize = 2;
/// Longer than any message's delay (`MAX_DELAY`).
const GC_GRACE: u64 = 2_000;
const ATTEMPT_TIMEOUT: u64 = 250;
/// A quorum read's wait before a spare (`timeouts.read_spare_ms`, the
/// floor under the node's latency estimate, which the simulator does not
/// keep): well under the delays messages take, so spares often read
/// beside slow targets.
const READ_SPARE: u64 = 60;
const DEADLINE: u64 = 1_000;
const CALL_TIMEOUT: u64 = 1_000;
const MAX_DELAY: u64 = 400;
const TRACE_LINES: usize = 300;
/// Keys the removal scenario writes, then deletes once the removed node is
/// gone, and never touches again: their tombstones get collected while it
/// is away, so a resurrection would show.
const DOOMED_KEYS: usize = 3;
/// The namespace the odd-numbered keys live in, created by an operator
/// once the cluster has formed: its values expire `EXPIRING_TTL` ms after
/// they are written, and are then collected like tombstones. Its keys have
/// `n` = 2 at first, 3 once altered.
const EXPIRING: &str = "expiring";
const EXPIRING_TTL: u64 = 3_000;
/// The namespace of every fourth key (2, 6, ...), created with the other:
/// its keys have `n` = 4 at first, 2 once altered.
const WIDE: &str = "wide";
/// The namespaces the operator creates, then alters at a random time
/// while the faults run: (name, type, TTL, n at first, n once altered).
const NAMESPACES: [(&str, namespace::Kind, u64, u8, u8); 5] = [
    (EXPIRING, namespace::Kind::Blob, EXPIRING_TTL, 2, 3),
    (WIDE, namespace::Kind::Blob, 0, 4, 2),
    (typed::TALLY, namespace::Kind::Counter, 0, 3, 2),
    (typed::CARTS, namespace::Kind::Set, 0, 2, 3),
    (typed::PROFILES, namespace::Kind::Map, 0, 3, 3),
];
/// How often the operator tries to create or alter them until it can.
const CREATE_RETRY: u64 = 200;

/// Key `k`'s stored form: the odd ones in `EXPIRING`, every fourth from 2
/// in `WIDE`, the others in `default`.
fn sim_key(k: usize) -> Vec<u8> {
    let name = match k % 4 {
        1 | 3 => EXPIRING,
        2 => WIDE,
        _ => namespace::DEFAULT,
    };
    let name = namespace::Name::new(name).expect("a valid name");
    namespace::key_in(&name, format!("key-{k}").as_bytes()).expect("a valid key")
}

/// When a value of key `k` written at `now` expires.
fn expiry(k: usize, now: u64) -> Option<u64> {
    (k % 2 == 1).then_some(now + EXPIRING_TTL)
}

/// The generator every random choice comes from (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn per_mille(&mut self, p: u64) -> bool {
        self.below(1000) < p
    }
}

fn addr(i: usize) -> String {
    format!("sim{i}:7000")
}

fn node_id(i: usize) -> NodeId {
    NodeId::new(format!("n{i}")).expect("a valid id")
}

/// The nodes that found the ring (all but the spare when scaling).
fn founders(cfg: &SimConfig) -> usize {
    if cfg.scaling {
        cfg.nodes - 1
    } else {
        cfg.nodes
    }
}

const PROGRESS_KEY: &[u8] = b"handoff";

/// Hint delivery as the Hints actor runs it (the simulator's timing).
fn hint_settings(cfg: &SimConfig, i: usize) -> DeliverySettings {
    DeliverySettings {
        me: node_id(i),
        n: cfg.n,
        enabled: true,
        batch_size: HINT_BATCH,
        pause_ms: HINT_PAUSE,
        send_timeout_ms: CALL_TIMEOUT,
    }
}

/// Node `i`'s membership settings, for a run started at `incarnation`.
fn settings(cfg: &SimConfig, i: usize, incarnation: u64) -> Settings {
    Settings {
        me: Member {
            id: node_id(i),
            peer_addr: addr(i),
            client_addr: format!("sim{i}:8000"),
            weight: 1,
            status: Status::Joining,
            version: 1,
        },
        cluster: "sim".into(),
        partitions: cfg.partitions,
        n: cfg.n,
        seeds: (0..founders(cfg)).map(addr).collect(),
        suspect_after: SUSPECT_AFTER,
        down_after: DOWN_AFTER,
        auto_join: true,
        incarnation,
        protocol: crate::protocol::PROTOCOL_VERSION,
    }
}

/// Request planning as the Coordinator actor does it; even nodes read
/// from a quorum, odd ones from all replicas.
fn planner(cfg: &SimConfig, i: usize) -> Planner {
    Planner {
        me: node_id(i),
        limits: Limits {
            defaults: namespace::Settings {
                n: cfg.n as u8,
                r: cfg.r as u8,
                w: cfg.w as u8,
                ttl_ms: 0,
                max_siblings: 64,
                max_value_bytes: 64,
                kind: namespace::Kind::Blob,
            },
            max_key_bytes: 64,
            owner_hints: true,
            // Both ways in every run: each node decides for itself.
            read_from: if i.is_multiple_of(2) {
                ReadFrom::Quorum
            } else {
                ReadFrom::All
            },
        },
    }
}

/// Tombstone collection as the AntiEntropy actor runs it.
fn collector_settings(cfg: &SimConfig, i: usize) -> CollectorSettings {
    CollectorSettings {
        me: node_id(i),
        n: cfg.n,
        batch: 64,
        grace_ms: GC_GRACE,
        ask_timeout_ms: CALL_TIMEOUT,
    }
}

/// Handoff as the Handoff actor runs it.
fn handoff_settings(cfg: &SimConfig, i: usize) -> HandoffSettings {
    HandoffSettings {
        me: node_id(i),
        n: cfg.n,
        partitions: cfg.partitions,
        chunk_keys: CHUNK_KEYS,
        max_bytes_per_sec: HANDOFF_BYTES_PER_SEC,
        call_timeout_ms: CALL_TIMEOUT,
    }
}

/// Runs one seed.
pub fn simulate(cfg: &SimConfig, seed: u64) -> Outcome {
    match Sim::new(cfg.clone(), seed) {
        Ok(sim) => sim.run(),
        Err(e) => panic!("the simulator could not start: {e}"),
    }
}

/// Runs one seed, and on a violation runs it again with the trace on:
/// the report names the seed, the violation and the events before it.
pub fn check_seed(cfg: &SimConfig, seed: u64) -> std::result::Result<Outcome, String> {
    let outcome = simulate(cfg, seed);
    let Some(violation) = &outcome.violation else {
        return Ok(outcome);
    };
    let traced = simulate(
        &SimConfig {
            trace: true,
            ..cfg.clone()
        },
        seed,
    );
    // The events of the key the violation names, and every fault; else
    // the last events.
    let key = violation
        .split_whitespace()
        .find(|w| w.starts_with("key-"))
        .map(|w| w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'));
    let lines: Vec<&String> = match key {
        Some(key) => traced
            .trace
            .iter()
            .filter(|l| {
                l.split_whitespace().any(|w| {
                    w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-') == key
                }) || ["crash", "restart", "partition", "heal"]
                    .iter()
                    .any(|f| l.contains(f))
            })
            .collect(),
        None => traced.trace.iter().rev().take(TRACE_LINES).rev().collect(),
    };
    let mut report = format!("seed {seed}: {violation}\nevents:\n");
    for line in lines {
        report.push_str(line);
        report.push('\n');
    }
    report.push_str(&format!("seed {seed}: {violation}\n"));
    Err(report)
}

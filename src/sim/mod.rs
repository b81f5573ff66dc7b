//! Deterministic simulation of a whole cluster in one thread (feature
//! `sim`).
//!
//! The real core state machines of every node (membership gossip and
//! failure detection, coordinator sessions over routed preference lists,
//! replica merge, hinted handoff, anti-entropy exchanges, tombstone
//! collection, fencing; with `scaling` a join and a leave with partition
//! handoff; with `removal` a member removed while down that comes back on
//! its old disk and must be fenced out) run over a simulated network that
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
//! Crashes lose what the process held in memory (sessions, exchanges,
//! deliveries, the failure detector's state) and take a fresh writer
//! identity on restart, as the node does. With `fsync = always` every
//! write a replica made is durable; with `periodic` a crash is a power
//! loss that drops the writes since the node's last sync, so only the
//! checks that do not need durability apply.

pub mod history;

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::rc::Rc;

use crate::anti_entropy::{AeMsg, Exchange, RootsCheck, Schedule, respond, roots};
use crate::coordinator::{
    GetSession, Outcome as Answer, PutSession, Request, Route, Session as CoreSession,
};
use crate::error::{Error, Result};
use crate::fencing::Refusal;
use crate::handoff::{
    Fetched, HandoffMsg, Next, Progress, fetch_step, release_step, to_release, verify_chunk,
};
use crate::hints::{DeliverySettings, HintDelivery, HintWork};
use crate::liveness::Health;
use crate::membership::{
    Changed, Destination, GossipMsg, Member, Membership, Settings, Status, View,
};
use crate::node::NodeId;
use crate::partition::Partition;
use crate::replica::{Entry, Replica, ReplicaMsg};
use crate::ring::Ring;
use crate::store::{MemStore, Store};
use crate::tombstones::{GcMsg, Holding, Ripening, led_partitions};
use crate::version::{Actor, Context, SiblingSet, Value};
use history::{History, Read, Write, describe};

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
    pub reads: usize,
    pub failed_ops: usize,
    pub crashes: usize,
    pub partitions: usize,
    /// Partitions fetched by handoff, and released.
    pub fetched: usize,
    pub released: usize,
    /// Peer requests refused because their sender was out of the cluster.
    pub fenced: usize,
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
const HINTS_EVERY: u64 = 300;
/// Keys per hint batch, and the pause between two batches to one owner.
const HINT_BATCH: usize = 4;
const HINT_PAUSE: u64 = 20;
const GC_EVERY: u64 = 1_000;
const HANDOFF_EVERY: u64 = 100;
/// Keys per fetched chunk: small, so transfers take several steps.
const CHUNK_KEYS: u32 = 2;
/// Longer than any message's delay (`MAX_DELAY`).
const GC_GRACE: u64 = 2_000;
const ATTEMPT_TIMEOUT: u64 = 250;
const DEADLINE: u64 = 1_000;
const CALL_TIMEOUT: u64 = 1_000;
const MAX_DELAY: u64 = 400;
const TRACE_LINES: usize = 300;
/// Keys the removal scenario writes, then deletes once the removed node is
/// gone, and never touches again: their tombstones get collected while it
/// is away, so a resurrection would show.
const DOOMED_KEYS: usize = 3;

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

/// A node's disk: what it holds, and what it held at the last sync (all
/// that a power loss leaves).
#[derive(Debug, Default)]
struct DiskState {
    now: MemStore,
    synced: MemStore,
}

/// A `Store` over a shared simulated disk (one keyspace).
#[derive(Debug, Clone, Default)]
struct Disk(Rc<RefCell<DiskState>>);

impl Disk {
    fn sync(&self) {
        let mut d = self.0.borrow_mut();
        d.synced = d.now.clone();
    }

    fn lose_unsynced(&self) {
        let mut d = self.0.borrow_mut();
        d.now = d.synced.clone();
    }
}

impl Store for Disk {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.0.borrow().now.get(key)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.0.borrow_mut().now.put(key, value)
    }

    fn remove(&mut self, key: &[u8]) -> Result<()> {
        self.0.borrow_mut().now.remove(key)
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.0.borrow().now.scan(prefix, after, limit)
    }
}

/// Messages between simulated nodes.
#[derive(Debug, Clone)]
enum Msg {
    Gossip(GossipMsg),
    Replica {
        session: u64,
        /// The client write this request serves (to record minted dots).
        write: Option<usize>,
        msg: ReplicaMsg,
    },
    ReplicaReply {
        session: u64,
        reply: std::result::Result<ReplicaMsg, Error>,
    },
    HintDeliver {
        id: u64,
        entries: Vec<Entry>,
    },
    HintDelivered {
        id: u64,
    },
    Ae {
        id: u64,
        msg: AeMsg,
    },
    AeReply {
        id: u64,
        reply: std::result::Result<AeMsg, Error>,
    },
    Gc {
        id: u64,
        msg: GcMsg,
    },
    GcReply {
        id: u64,
        msg: GcMsg,
    },
    Handoff {
        id: u64,
        msg: HandoffMsg,
    },
    HandoffReply {
        id: u64,
        reply: std::result::Result<HandoffMsg, Error>,
    },
    /// A request refused because its sender left or was removed
    /// (`crate::fencing`): the sender's own final record, and the session
    /// of a refused replica request (0: none).
    Fenced {
        record: Member,
        session: u64,
    },
}

impl Msg {
    fn describe(&self) -> String {
        let name = match self {
            Msg::Gossip(_) => "gossip",
            Msg::Replica { msg, .. } => {
                let (what, key) = match msg {
                    ReplicaMsg::Read { key } => ("read", key),
                    ReplicaMsg::Update { key, .. } => ("update", key),
                    ReplicaMsg::Write { key, state, .. } => {
                        return format!(
                            "write {} {:?}",
                            String::from_utf8_lossy(key),
                            state
                                .siblings()
                                .map(|s| s.dot.to_string())
                                .collect::<Vec<_>>()
                        );
                    }
                    _ => return "a reply sent as a request".into(),
                };
                return format!("{what} {}", String::from_utf8_lossy(key));
            }
            Msg::ReplicaReply { reply, .. } => match reply {
                Ok(ReplicaMsg::State { state }) => {
                    return format!(
                        "state {:?}",
                        state
                            .siblings()
                            .map(|s| s.dot.to_string())
                            .collect::<Vec<_>>()
                    );
                }
                Ok(_) => "replica-reply",
                Err(_) => "replica-error",
            },
            Msg::HintDeliver { entries, .. } => {
                let keys: Vec<_> = entries
                    .iter()
                    .map(|(k, _)| String::from_utf8_lossy(k))
                    .collect();
                return format!("hint-deliver {keys:?}");
            }
            Msg::HintDelivered { .. } => "hint-delivered",
            Msg::Ae { .. } => "ae",
            Msg::AeReply { .. } => "ae-reply",
            Msg::Gc { .. } => "gc",
            Msg::GcReply { .. } => "gc-reply",
            Msg::Handoff { .. } => "fetch",
            Msg::HandoffReply { .. } => "chunk",
            Msg::Fenced { .. } => "fenced",
        };
        name.into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Gossip,
    AntiEntropy,
    Hints,
    Gc,
    Sync,
    Handoff,
}

#[derive(Debug, Clone)]
enum Event {
    Deliver {
        from: usize,
        to: usize,
        msg: Msg,
    },
    Timer {
        node: usize,
        life: u64,
        timer: Timer,
    },
    Attempt {
        node: usize,
        life: u64,
        session: u64,
        target: usize,
    },
    Deadline {
        node: usize,
        life: u64,
        session: u64,
    },
    CallTimeout {
        node: usize,
        life: u64,
        id: u64,
    },
    Client {
        client: usize,
    },
    Nemesis,
    Restart {
        node: usize,
    },
    HealPartition {
        epoch: u64,
    },
    /// The spare node starts and joins.
    Join,
    /// A random member that is up begins to leave.
    Leave,
    /// A founder is stopped, and an operator removes it.
    Remove,
    /// A hint delivery's pause to `owner` ends.
    HintResume {
        node: usize,
        life: u64,
        owner: NodeId,
    },
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A coordinator session and the client operation it serves.
struct Session {
    client: usize,
    key: usize,
    /// The client write it serves (None for a get).
    write: Option<usize>,
    core: CoreSession,
}

/// A call to a peer awaiting its answer (hint delivery, exchange, probe).
enum Call {
    Hints {
        owner: NodeId,
    },
    Exchange(Exchange),
    /// A catch-up comparison of the roots shared with `peer`.
    Roots {
        peer: NodeId,
    },
    Gc(GcRound),
    Fetch {
        partition: Partition,
        after: Option<Vec<u8>>,
    },
    /// Synchronising a partition to release: an exchange with one of its
    /// replicas, the others after it.
    Release {
        exchange: Exchange,
        remaining: Vec<NodeId>,
        /// The root the release's first exchange started from.
        synced: u64,
    },
}

struct GcRound {
    partition: Partition,
    found: Vec<Entry>,
    members: Vec<NodeId>,
    answers: Vec<(NodeId, Vec<Holding>)>,
}

struct Node {
    id: NodeId,
    running: bool,
    /// Bumped on every start; timers of an earlier life are ignored.
    life: u64,
    data: Disk,
    hints: Disk,
    /// Handoff progress (persisted in `meta`).
    meta: Disk,
    progress: Progress,
    /// Left the cluster and stopped for good.
    retired: bool,
    /// The persisted membership view.
    view: Option<View>,
    membership: Membership,
    replica: Replica<Disk>,
    sessions: BTreeMap<u64, Session>,
    calls: BTreeMap<u64, Call>,
    schedule: Schedule,
    delivery: HintDelivery,
    gc_cursor: usize,
    ripening: Ripening,
}

impl Node {
    /// Whether a call matching `what` is awaiting its answer.
    fn calling(&self, what: impl Fn(&Call) -> bool) -> bool {
        self.calls.values().any(what)
    }

    /// Whether it still belongs to the cluster: it did not leave for good,
    /// and knows of no removal (a removed node that has not learned yet
    /// still counts, and convergence waits for it to learn).
    fn is_member(&self) -> bool {
        !self.retired && !self.membership.is_fenced()
    }

    /// Whether an operator removed it (as its own view knows by now).
    fn removed(&self) -> bool {
        self.membership.member(&self.id).map(|m| m.status) == Some(Status::Removed)
    }

    /// Persists the membership view if `changed` says it changed (as the
    /// Membership actor writes it to `meta`).
    fn keep_view(&mut self, changed: Changed) {
        if changed.view {
            self.view = Some(self.membership.view().clone());
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum ClientOp {
    Get,
    Put { blind: bool },
    Delete,
}

#[derive(Default)]
struct Client {
    /// The session and node of the operation under way.
    waiting: Option<(usize, u64)>,
    contexts: BTreeMap<usize, Context>,
    written: u64,
    /// An operator's client runs this script (key, operation) and nothing
    /// else; the others pick at random.
    script: Option<VecDeque<(usize, ClientOp)>>,
}

pub struct Sim {
    cfg: SimConfig,
    seed: u64,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    keys: Vec<Vec<u8>>,
    history: History,
    /// Which side of the current partition each node is on (None: healed).
    sides: Option<Vec<bool>>,
    partition_epoch: u64,
    faults: bool,
    next_id: u64,
    events: u64,
    digest: u64,
    crashes: usize,
    partitions: usize,
    fetched: usize,
    released: usize,
    fenced: usize,
    trace: Vec<String>,
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

fn settings(cfg: &SimConfig, i: usize) -> Settings {
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
    }
}

impl Sim {
    pub fn new(cfg: SimConfig, seed: u64) -> Result<Sim> {
        let mut rng = Rng::new(seed);
        let mut nodes = Vec::with_capacity(cfg.nodes);
        for i in 0..cfg.nodes {
            let (data, hints) = (Disk::default(), Disk::default());
            let (replica, _) = Replica::open(
                data.clone(),
                hints.clone(),
                cfg.partitions,
                Actor(rng.next_u64()),
                64,
            )?;
            nodes.push(Node {
                id: node_id(i),
                running: i < founders(&cfg),
                life: 0,
                data,
                hints,
                meta: Disk::default(),
                progress: Progress::default(),
                retired: false,
                view: None,
                membership: Membership::new(settings(&cfg, i), None, 0),
                replica,
                sessions: BTreeMap::new(),
                calls: BTreeMap::new(),
                schedule: Schedule::new(node_id(i), cfg.n, AE_BYTES_PER_SEC),
                delivery: HintDelivery::new(hint_settings(&cfg, i)),
                gc_cursor: 0,
                ripening: Ripening::default(),
            });
        }
        let doomed = if cfg.removal { DOOMED_KEYS } else { 0 };
        let operator = usize::from(cfg.removal);
        let mut sim = Sim {
            keys: (0..cfg.keys + doomed)
                .map(|k| format!("key-{k}").into_bytes())
                .collect(),
            clients: (0..cfg.clients + operator)
                .map(|_| Client::default())
                .collect(),
            cfg,
            seed,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            history: History::default(),
            sides: None,
            partition_epoch: 0,
            faults: true,
            next_id: 0,
            events: 0,
            digest: 0xcbf2_9ce4_8422_2325,
            crashes: 0,
            partitions: 0,
            fetched: 0,
            released: 0,
            fenced: 0,
            trace: Vec::new(),
        };
        for i in 0..founders(&sim.cfg) {
            sim.start_timers(i);
        }
        if sim.cfg.scaling {
            let join = 2_000 + sim.rng.below(6_000);
            sim.schedule(join, Event::Join);
            let leave = 8_000 + sim.rng.below(6_000);
            sim.schedule(leave, Event::Leave);
        }
        if sim.cfg.removal {
            let remove = 3_000 + sim.rng.below(6_000);
            sim.schedule(remove, Event::Remove);
            let doomed = sim.cfg.keys..sim.cfg.keys + DOOMED_KEYS;
            let puts = doomed.map(|k| (k, ClientOp::Put { blind: true }));
            sim.clients[sim.cfg.clients].script = Some(puts.collect());
            sim.schedule(
                1_000,
                Event::Client {
                    client: sim.cfg.clients,
                },
            );
        }
        for c in 0..sim.cfg.clients {
            let at = 1_000 + sim.rng.below(500);
            sim.schedule(at, Event::Client { client: c });
        }
        sim.schedule(2_000, Event::Nemesis);
        Ok(sim)
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            event,
        }));
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            let line = line();
            self.trace.push(format!("{:>7} ms  {line}", self.now));
        }
    }

    fn mix(&mut self, values: &[u64]) {
        for v in values {
            self.digest = (self.digest ^ v).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn start_timers(&mut self, i: usize) {
        let life = self.nodes[i].life;
        for (timer, every) in [
            (Timer::Gossip, GOSSIP_EVERY),
            (Timer::AntiEntropy, AE_EVERY),
            (Timer::Hints, HINTS_EVERY),
            (Timer::Gc, GC_EVERY),
            (Timer::Sync, self.cfg.sync_every),
            (Timer::Handoff, HANDOFF_EVERY),
        ] {
            let at = self.now + 1 + self.rng.below(every);
            self.schedule(
                at,
                Event::Timer {
                    node: i,
                    life,
                    timer,
                },
            );
        }
    }

    /// Sends `msg` over the simulated network: to itself reliably, to a
    /// peer subject to partitions, drops, duplicates and delays.
    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if from == to {
            self.schedule(self.now, Event::Deliver { from, to, msg });
            return;
        }
        if let Some(sides) = &self.sides
            && sides[from] != sides[to]
        {
            return;
        }
        // A mint (`Update`) is not idempotent, and the Bridge never sends
        // a request twice (TCP, no retries): it is not duplicated here.
        let mints = matches!(
            msg,
            Msg::Replica {
                msg: ReplicaMsg::Update { .. },
                ..
            }
        );
        let copies = if self.faults && self.rng.per_mille(self.cfg.drop) {
            0
        } else if self.faults && !mints && self.rng.per_mille(self.cfg.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if self.rng.per_mille(50) {
                50 + self.rng.below(MAX_DELAY - 50)
            } else {
                1 + self.rng.below(10)
            };
            self.schedule(
                self.now + delay,
                Event::Deliver {
                    from,
                    to,
                    msg: msg.clone(),
                },
            );
        }
    }

    fn index(&self, id: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| &n.id == id)
    }

    /// Runs the workload with faults, heals, and waits for convergence;
    /// then checks the history.
    pub fn run(mut self) -> Outcome {
        let heal_at = self.cfg.fault_time + 1_000;
        while let Some(Reverse(next)) = self.queue.pop() {
            if next.at > heal_at {
                self.queue.push(Reverse(next));
                break;
            }
            self.step(next);
        }
        self.now = heal_at;
        self.heal();
        let bound = heal_at + self.cfg.converge_within;
        let mut converged_at = None;
        let mut stable_since = None;
        let mut check_at = heal_at + 1_000;
        while let Some(Reverse(next)) = self.queue.pop() {
            if next.at > check_at {
                self.queue.push(Reverse(next));
                self.now = check_at;
                // Converged at two checks in a row, further apart than any
                // message's delay: nothing sent before the first one can
                // still change a replica.
                if self.converged() {
                    if let Some(first) = stable_since {
                        converged_at = Some(first);
                        break;
                    }
                    stable_since = Some(check_at);
                } else {
                    stable_since = None;
                }
                if check_at >= bound {
                    break;
                }
                check_at += 1_000;
                continue;
            }
            self.step(next);
        }
        let violation = match converged_at {
            None => Some(format!(
                "replicas did not converge within {} ms of the heal: {}",
                self.cfg.converge_within,
                self.divergence()
            )),
            Some(_) => {
                let finals: Vec<SiblingSet> =
                    (0..self.keys.len()).map(|k| self.final_state(k)).collect();
                // A removed node's disk is written off, with every write
                // only it held.
                self.history.removed = self.nodes.iter().filter(|n| n.removed()).count();
                self.history.check(&finals, self.cfg.fsync_always).err()
            }
        };
        Outcome {
            seed: self.seed,
            events: self.events,
            digest: self.digest,
            acked_writes: self.history.acked_writes(),
            reads: self.history.reads.len(),
            failed_ops: self.history.failed,
            crashes: self.crashes,
            partitions: self.partitions,
            fetched: self.fetched,
            released: self.released,
            fenced: self.fenced,
            converged_after: converged_at.map_or(0, |t| t - heal_at),
            violation,
            trace: self.trace,
        }
    }

    fn step(&mut self, next: Scheduled) {
        self.now = next.at;
        self.events += 1;
        match next.event {
            Event::Deliver { from, to, msg } => {
                self.mix(&[1, self.now, from as u64, to as u64]);
                self.deliver(from, to, msg);
            }
            Event::Timer { node, life, timer } => {
                if self.nodes[node].running && self.nodes[node].life == life {
                    self.mix(&[2, self.now, node as u64]);
                    self.on_timer(node, timer);
                }
            }
            Event::Attempt {
                node,
                life,
                session,
                target,
            } => {
                if self.nodes[node].running && self.nodes[node].life == life {
                    let target = self.nodes[target].id.clone();
                    self.session_step(node, session, |core| core.on_slow(&target));
                }
            }
            Event::Deadline {
                node,
                life,
                session,
            } => {
                if self.nodes[node].running && self.nodes[node].life == life {
                    self.on_deadline(node, session);
                }
            }
            Event::CallTimeout { node, life, id } => {
                if self.nodes[node].running && self.nodes[node].life == life {
                    self.on_call_timeout(node, id);
                }
            }
            Event::Client { client } => {
                self.mix(&[3, self.now, client as u64]);
                self.client_step(client);
            }
            Event::Nemesis => self.nemesis(),
            Event::Restart { node } => self.restart(node),
            Event::HealPartition { epoch } => {
                if epoch == self.partition_epoch && self.sides.is_some() {
                    self.sides = None;
                    self.note(|| "partition healed".into());
                }
            }
            Event::Join => {
                let spare = self.cfg.nodes - 1;
                self.note(|| format!("n{spare} starts, to join"));
                self.restart(spare);
            }
            Event::Leave => self.begin_leave(),
            Event::Remove => self.remove_one(),
            Event::HintResume { node, life, owner } => {
                if self.nodes[node].running && self.nodes[node].life == life {
                    let work = self.nodes[node].delivery.on_resume(&owner);
                    self.hint_work(node, work);
                }
            }
        }
    }

    // ---- faults ----

    fn nemesis(&mut self) {
        if !self.faults {
            return;
        }
        let down = self.nodes.iter().filter(|n| !n.running).count();
        match self.rng.below(3) {
            0 if self.cfg.crashes && down < 2 => {
                let i = self.rng.below(self.cfg.nodes as u64) as usize;
                if self.nodes[i].running {
                    self.crash(i);
                    let at = self.now + 200 + self.rng.below(4_000);
                    self.schedule(at, Event::Restart { node: i });
                }
            }
            1 if self.cfg.partitions_faults && self.sides.is_none() => {
                let sides: Vec<bool> = (0..self.cfg.nodes)
                    .map(|_| self.rng.below(2) == 0)
                    .collect();
                self.partition_epoch += 1;
                self.partitions += 1;
                let line = format!(
                    "partition: {:?} | {:?}",
                    (0..self.cfg.nodes)
                        .filter(|&i| sides[i])
                        .collect::<Vec<_>>(),
                    (0..self.cfg.nodes)
                        .filter(|&i| !sides[i])
                        .collect::<Vec<_>>()
                );
                self.note(|| line);
                self.sides = Some(sides);
                let at = self.now + 500 + self.rng.below(5_000);
                let epoch = self.partition_epoch;
                self.schedule(at, Event::HealPartition { epoch });
            }
            _ => {}
        }
        let at = self.now + 300 + self.rng.below(2_000);
        self.schedule(at, Event::Nemesis);
    }

    /// An operator tells a founder that is up to leave.
    fn begin_leave(&mut self) {
        let up: Vec<usize> = (0..founders(&self.cfg))
            .filter(|&i| self.nodes[i].running && self.nodes[i].is_member())
            .collect();
        if up.is_empty() {
            return self.note(|| "no founder is up: no leave".into());
        }
        let i = up[self.rng.below(up.len() as u64) as usize];
        let node = &mut self.nodes[i];
        match node.membership.leave() {
            Ok(changed) => {
                node.keep_view(changed);
                self.note(|| format!("n{i} begins to leave"));
            }
            Err(e) => self.note(|| format!("n{i} cannot leave: {e}")),
        }
    }

    /// An operator stops a founder and removes it through another member;
    /// it starts again later on its old disk, as a careless restart would.
    fn remove_one(&mut self) {
        let r = self.rng.below(founders(&self.cfg) as u64) as usize;
        if self.nodes[r].running {
            self.crash(r);
        }
        let gone = self.nodes[r].id.clone();
        let Some(via) = (0..self.cfg.nodes).find(|&j| {
            j != r && self.nodes[j].running && self.nodes[j].membership.member(&gone).is_some()
        }) else {
            return self.note(|| format!("nobody up to remove n{r}"));
        };
        match self.nodes[via].membership.remove(&gone) {
            Ok(changed) => {
                self.nodes[via].keep_view(changed);
                self.note(|| format!("n{r} removed through n{via}"));
            }
            Err(e) => self.note(|| format!("n{r} cannot be removed: {e}")),
        }
        let back = self.now + 4_000 + self.rng.below(6_000);
        self.schedule(back, Event::Restart { node: r });
        // The operator deletes the doomed keys, which the removed node holds.
        let operator = self.cfg.clients;
        let doomed = self.cfg.keys..self.cfg.keys + DOOMED_KEYS;
        let steps = doomed.flat_map(|k| [(k, ClientOp::Get), (k, ClientOp::Delete)]);
        if let Some(script) = &mut self.clients[operator].script {
            script.extend(steps);
        }
        self.schedule(self.now + 1, Event::Client { client: operator });
    }

    fn crash(&mut self, i: usize) {
        self.crashes += 1;
        let power_loss = !self.cfg.fsync_always;
        if power_loss {
            let node = &self.nodes[i];
            node.data.lose_unsynced();
            node.hints.lose_unsynced();
            node.meta.lose_unsynced();
        }
        self.note(|| {
            format!(
                "crash n{i}{}",
                if power_loss { " (power loss)" } else { "" }
            )
        });
        self.stop(i);
    }

    /// The process ends: what it held in memory is gone.
    fn stop(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.running = false;
        let sessions = std::mem::take(&mut node.sessions);
        node.calls.clear();
        for (_, s) in sessions {
            // The client's connection breaks: the operation has no answer.
            self.clients[s.client].waiting = None;
            self.history.failed += 1;
            self.client_next(s.client);
        }
    }

    fn restart(&mut self, i: usize) {
        if self.nodes[i].running || self.nodes[i].retired {
            return;
        }
        if let Some(view) = &self.nodes[i].view
            && view.is_fenced(&self.nodes[i].id)
        {
            // As `serve` refuses to start on the data of a node that is out.
            self.nodes[i].retired = true;
            return self.note(|| format!("n{i} refuses to start: it is out of the cluster"));
        }
        let actor = Actor(self.rng.next_u64());
        let cfg = self.cfg.clone();
        let now = self.now;
        let node = &mut self.nodes[i];
        let (replica, _) = match Replica::open(
            node.data.clone(),
            node.hints.clone(),
            cfg.partitions,
            actor,
            64,
        ) {
            Ok(r) => r,
            Err(e) => panic!("reopening a simulated replica failed: {e}"),
        };
        node.replica = replica;
        node.progress = match node.meta.get(PROGRESS_KEY) {
            Ok(Some(bytes)) => Progress::from_bytes(&bytes).unwrap_or_default(),
            _ => Progress::default(),
        };
        node.membership = Membership::new(settings(&cfg, i), node.view.clone(), now);
        node.running = true;
        node.life += 1;
        node.schedule = Schedule::new(node.id.clone(), cfg.n, AE_BYTES_PER_SEC);
        node.delivery = HintDelivery::new(hint_settings(&cfg, i));
        node.gc_cursor = 0;
        node.ripening = Ripening::default();
        self.start_timers(i);
        self.note(|| format!("restart n{i} as writer {actor}"));
    }

    /// Faults stop: every node runs again, the network heals and stops
    /// dropping and duplicating; clients stop starting operations.
    fn heal(&mut self) {
        self.faults = false;
        self.sides = None;
        for i in 0..self.cfg.nodes {
            self.restart(i);
        }
        self.note(|| "heal: faults stop".into());
    }

    // ---- clients ----

    fn client_next(&mut self, c: usize) {
        if self.faults {
            let at = self.now + 1 + self.rng.below(50);
            self.schedule(at, Event::Client { client: c });
        }
    }

    fn client_step(&mut self, c: usize) {
        if !self.faults || self.clients[c].waiting.is_some() {
            return;
        }
        let (key, op) = match &mut self.clients[c].script {
            Some(script) => match script.pop_front() {
                Some(step) => step,
                None => return,
            },
            None => {
                let key = self.rng.below(self.cfg.keys as u64) as usize;
                let op = match self.rng.below(10) {
                    0..=3 => ClientOp::Get,
                    4..=7 => ClientOp::Put { blind: false },
                    8 => ClientOp::Put { blind: true },
                    _ => ClientOp::Delete,
                };
                (key, op)
            }
        };
        let coordinator = self.rng.below(self.cfg.nodes as u64) as usize;
        if !self.nodes[coordinator].running {
            self.history.failed += 1;
            self.note(|| format!("client {c}: n{coordinator} refused the connection"));
            return self.client_next(c);
        }
        if self.nodes[coordinator].membership.is_fenced() {
            self.history.failed += 1;
            self.note(|| format!("client {c}: n{coordinator} is out of the cluster"));
            return self.client_next(c);
        }
        let Some(ring) = self.nodes[coordinator].membership.ring() else {
            self.history.failed += 1;
            return self.client_next(c);
        };
        let node = &self.nodes[coordinator];
        let (_, route) = Route::plan(&ring, &self.keys[key], self.cfg.n, &node.id, |n| {
            node.membership.health(n)
        });
        let session = self.id();
        let (core, requests, write) = match op {
            ClientOp::Get => {
                let (s, reqs) = GetSession::start(self.keys[key].clone(), route, self.cfg.r);
                self.note(|| format!("client {c}: get key-{key} via n{coordinator}"));
                (CoreSession::Get(s), reqs, None)
            }
            ClientOp::Put { .. } | ClientOp::Delete => {
                let context = match op {
                    ClientOp::Put { blind: true } => Context::default(),
                    _ => self.clients[c]
                        .contexts
                        .get(&key)
                        .cloned()
                        .unwrap_or_default(),
                };
                let value = match op {
                    ClientOp::Delete => None,
                    _ => {
                        self.clients[c].written += 1;
                        Some(format!("c{c}-{}", self.clients[c].written).into_bytes())
                    }
                };
                let w = self.history.writes.len();
                self.history.writes.push(Write {
                    key,
                    value: value.clone(),
                    context: context.clone(),
                    dots: Vec::new(),
                    acked: None,
                    start: self.now,
                    end: None,
                });
                let line = format!(
                    "client {c}: write #{w} key-{key} {} via n{coordinator}",
                    describe(&value)
                );
                self.note(|| line);
                let value = value.map_or(Value::Tombstone, Value::Data);
                let (s, reqs) =
                    PutSession::start(self.keys[key].clone(), context, value, route, self.cfg.w);
                (CoreSession::Put(s), reqs, Some(w))
            }
        };
        self.clients[c].waiting = Some((coordinator, session));
        let mut s = Session {
            client: c,
            key,
            write,
            core,
        };
        let initial = s.core.initial_answer();
        self.nodes[coordinator].sessions.insert(session, s);
        if let Some(answer) = initial {
            self.answer(coordinator, session, answer);
            self.end_session(coordinator, session);
            return;
        }
        self.send_requests(coordinator, session, write, requests);
        let life = self.nodes[coordinator].life;
        self.schedule(
            self.now + DEADLINE,
            Event::Deadline {
                node: coordinator,
                life,
                session,
            },
        );
    }

    fn send_requests(
        &mut self,
        node: usize,
        session: u64,
        write: Option<usize>,
        reqs: Vec<Request>,
    ) {
        let life = self.nodes[node].life;
        for r in reqs {
            let Some(to) = self.index(&r.to) else {
                continue;
            };
            self.send(
                node,
                to,
                Msg::Replica {
                    session,
                    write,
                    msg: r.msg,
                },
            );
            self.schedule(
                self.now + ATTEMPT_TIMEOUT,
                Event::Attempt {
                    node,
                    life,
                    session,
                    target: to,
                },
            );
        }
    }

    /// Gives the client its answer (once) and records it.
    fn answer(&mut self, node: usize, session: u64, answer: Result<Answer>) {
        let Some(s) = self.nodes[node].sessions.get(&session) else {
            return;
        };
        let (c, key, write) = (s.client, s.key, s.write);
        if self.clients[c].waiting != Some((node, session)) {
            return;
        }
        self.clients[c].waiting = None;
        match answer {
            Ok(Answer::Read(state)) => {
                let values: Vec<Vec<u8>> = state.values().map(<[u8]>::to_vec).collect();
                let line = format!(
                    "client {c}: got key-{key} {:?}",
                    values
                        .iter()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .collect::<Vec<_>>()
                );
                self.note(|| line);
                self.clients[c].contexts.insert(key, state.context());
                self.history.reads.push(Read {
                    key,
                    values,
                    at: self.now,
                });
            }
            Ok(Answer::Written((state, dot))) => {
                if let Some(w) = write {
                    let write = &mut self.history.writes[w];
                    write.acked = Some(dot);
                    write.end = Some(self.now);
                    self.clients[c].contexts.insert(key, state.context());
                    self.note(|| {
                        format!("client {c}: write #{w} of key-{key} acknowledged as {dot}")
                    });
                }
            }
            Err(e) => {
                self.history.failed += 1;
                self.note(|| format!("client {c}: key-{key}: error: {e}"));
            }
        }
        self.client_next(c);
    }

    // ---- coordinator sessions ----

    fn on_session_reply(
        &mut self,
        node: usize,
        session: u64,
        from: &NodeId,
        reply: Result<ReplicaMsg>,
    ) {
        self.session_step(node, session, |core| core.on_reply(from, reply));
    }

    /// Feeds a session one event (a reply, a slow target) and carries out
    /// what it asks: the client's answer, the next requests, its end.
    fn session_step(
        &mut self,
        node: usize,
        session: u64,
        step: impl FnOnce(&mut CoreSession) -> (Vec<Request>, Option<Result<Answer>>),
    ) {
        let Some(s) = self.nodes[node].sessions.get_mut(&session) else {
            return;
        };
        let (next, answer) = step(&mut s.core);
        let (complete, write) = (s.core.is_complete(), s.write);
        if let Some(answer) = answer {
            self.answer(node, session, answer);
        }
        self.send_requests(node, session, write, next);
        if complete {
            self.end_session(node, session);
        }
    }

    fn on_deadline(&mut self, node: usize, session: u64) {
        let Some(s) = self.nodes[node].sessions.get_mut(&session) else {
            return;
        };
        if let Some(answer) = s.core.on_timeout() {
            self.answer(node, session, answer);
        }
        self.end_session(node, session);
    }

    /// Ends a session; a get's read repair goes out, fire and forget.
    fn end_session(&mut self, node: usize, session: u64) {
        let Some(s) = self.nodes[node].sessions.remove(&session) else {
            return;
        };
        let repairs = s.core.repairs();
        if !repairs.is_empty() {
            self.note(|| format!("n{node}: read repair to {} replicas", repairs.len()));
        }
        for r in repairs {
            if let Some(to) = self.index(&r.to) {
                self.send(
                    node,
                    to,
                    Msg::Replica {
                        session: 0,
                        write: None,
                        msg: r.msg,
                    },
                );
            }
        }
    }
}

impl Sim {
    // ---- the network's deliveries ----

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        if !self.nodes[to].running {
            return;
        }
        if self.cfg.trace {
            let what = msg.describe();
            self.note(|| format!("n{from} -> n{to}: {what}"));
        }
        let from_id = self.nodes[from].id.clone();
        let request = matches!(
            msg,
            Msg::Gossip(GossipMsg::Push { .. })
                | Msg::Replica { .. }
                | Msg::HintDeliver { .. }
                | Msg::Ae { .. }
                | Msg::Gc { .. }
                | Msg::Handoff { .. }
        );
        if request && let Err(refusal) = self.nodes[to].membership.admission().check(&from_id) {
            return self.refuse(from, to, msg, refusal);
        }
        match msg {
            Msg::Gossip(g) => {
                let now = self.now;
                let node = &mut self.nodes[to];
                if let Ok((reply, changed)) = node.membership.on_gossip(&from_id, g, now) {
                    node.keep_view(changed);
                    if let Some(reply) = reply {
                        self.send_gossip(to, reply.to, reply.msg);
                    }
                }
            }
            Msg::Replica {
                session,
                write,
                msg,
            } => {
                let reply = self.nodes[to].replica.apply(msg);
                if let (Some(w), Ok(ReplicaMsg::Updated { dot, .. })) = (write, &reply) {
                    self.history.writes[w].dots.push(*dot);
                    let line = format!(
                        "n{to}: minted {dot} for write #{w} of key-{}",
                        self.history.writes[w].key
                    );
                    self.note(|| line);
                }
                if session != 0 {
                    self.send(to, from, Msg::ReplicaReply { session, reply });
                }
            }
            Msg::ReplicaReply { session, reply } => {
                self.on_session_reply(to, session, &from_id, reply);
            }
            Msg::HintDeliver { id, entries } => {
                let replica = &mut self.nodes[to].replica;
                let merged = entries
                    .iter()
                    .try_for_each(|(k, s)| replica.merge(k, s, None).map(|_| ()));
                if merged.is_ok() {
                    self.send(to, from, Msg::HintDelivered { id });
                }
            }
            Msg::HintDelivered { id } => {
                if let Some(Call::Hints { owner }) = self.nodes[to].calls.remove(&id) {
                    let work = self.nodes[to].delivery.on_sent(&owner, Ok(()));
                    self.hint_work(to, work);
                }
            }
            Msg::Ae { id, msg } => {
                let reply = respond(&mut self.nodes[to].replica, msg);
                self.send(to, from, Msg::AeReply { id, reply });
            }
            Msg::AeReply { id, reply } => self.on_ae_reply(to, from, id, reply),
            Msg::Gc { id, msg } => {
                let replica = &mut self.nodes[to].replica;
                let reply = match msg {
                    GcMsg::Probe { entries } => replica
                        .probe_tombstones(&entries)
                        .map(|held| GcMsg::Held { held }),
                    GcMsg::Collect { entries } => {
                        let removed = replica.collect_tombstones(&entries);
                        if matches!(removed, Ok(1..)) {
                            for (key, state) in &entries {
                                if let Some(k) = self.keys.iter().position(|x| x == key) {
                                    let seen = state.context();
                                    self.history.collected.entry(k).or_default().push(seen);
                                }
                            }
                        }
                        removed.map(|n| GcMsg::Collected { removed: n as u32 })
                    }
                    _ => Err(Error::InvalidRequest("not a request".into())),
                };
                if let Ok(msg) = reply {
                    self.send(to, from, Msg::GcReply { id, msg });
                }
            }
            Msg::GcReply { id, msg } => self.on_gc_reply(to, &from_id, id, msg),
            Msg::Handoff { id, msg } => {
                let reply = match msg {
                    HandoffMsg::Fetch {
                        partition,
                        after,
                        limit,
                    } => self.nodes[to]
                        .replica
                        .chunk(partition, after.as_deref(), limit as usize)
                        .map(|(entries, last)| HandoffMsg::chunk(entries, last)),
                    HandoffMsg::Chunk { .. } => Err(Error::InvalidRequest("not a request".into())),
                };
                self.send(to, from, Msg::HandoffReply { id, reply });
            }
            Msg::HandoffReply { id, reply } => self.on_chunk(to, id, reply),
            Msg::Fenced { record, session } => {
                let node = &mut self.nodes[to];
                if let Ok(changed) = node.membership.on_fenced(record) {
                    node.keep_view(changed);
                    if changed.view {
                        self.note(|| format!("n{to} learns it is out of the cluster"));
                    }
                }
                if session != 0 {
                    let refused = Err(Error::Removed(format!("refused by n{from}")));
                    self.on_session_reply(to, session, &from_id, refused);
                }
            }
        }
    }

    /// As the Bridge does: a request `from` a member that is out gets its
    /// record back; a node that is out answers a replica request with an
    /// error and drops the rest.
    fn refuse(&mut self, from: usize, to: usize, msg: Msg, refusal: Refusal) {
        let session = match &msg {
            Msg::Replica { session, .. } => *session,
            _ => 0,
        };
        match refusal {
            Refusal::Fenced(record) => {
                self.fenced += 1;
                self.note(|| format!("n{to} refuses n{from}: it is out"));
                self.send(to, from, Msg::Fenced { record, session });
            }
            Refusal::Departed(e) if session != 0 => {
                let reply = Err(e);
                self.send(to, from, Msg::ReplicaReply { session, reply });
            }
            Refusal::Departed(_) => {}
        }
    }

    fn send_gossip(&mut self, from: usize, to: Destination, msg: GossipMsg) {
        let to = match to {
            Destination::Node(id) => self.index(&id),
            Destination::Addr(a) => (0..self.cfg.nodes).find(|&i| addr(i) == a),
        };
        if let Some(to) = to {
            self.send(from, to, Msg::Gossip(msg));
        }
    }

    fn on_timer(&mut self, i: usize, timer: Timer) {
        let every = match timer {
            Timer::Gossip => {
                let (now, rand) = (self.now, self.rng.next_u64());
                let node = &mut self.nodes[i];
                let (out, changed) = node.membership.tick(now, rand);
                node.keep_view(changed);
                for o in out {
                    self.send_gossip(i, o.to, o.msg);
                }
                GOSSIP_EVERY
            }
            // A node that is out does no background work (as its actors).
            Timer::AntiEntropy => {
                if !self.nodes[i].membership.is_fenced() {
                    self.start_exchange(i);
                }
                AE_EVERY
            }
            Timer::Hints => {
                if !self.nodes[i].membership.is_fenced() {
                    self.deliver_hints(i);
                }
                HINTS_EVERY
            }
            Timer::Gc => {
                if !self.nodes[i].membership.is_fenced() {
                    self.start_gc(i);
                }
                GC_EVERY
            }
            Timer::Handoff => {
                if !self.nodes[i].membership.is_fenced() {
                    self.handoff_step(i);
                }
                if !self.nodes[i].running {
                    return; // it left and stopped
                }
                HANDOFF_EVERY
            }
            Timer::Sync => {
                // With fsync = always every write is durable already.
                if !self.cfg.fsync_always {
                    self.nodes[i].data.sync();
                    self.nodes[i].hints.sync();
                    self.nodes[i].meta.sync();
                }
                self.cfg.sync_every
            }
        };
        let life = self.nodes[i].life;
        self.schedule(
            self.now + every,
            Event::Timer {
                node: i,
                life,
                timer,
            },
        );
    }

    /// Registers a call awaiting an answer, with its timeout.
    fn call(&mut self, i: usize, call: Call) -> u64 {
        let id = self.id();
        self.nodes[i].calls.insert(id, call);
        let life = self.nodes[i].life;
        self.schedule(
            self.now + CALL_TIMEOUT,
            Event::CallTimeout { node: i, life, id },
        );
        id
    }

    // ---- hinted handoff ----

    /// As the Hints actor does at each check.
    fn deliver_hints(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.delivery.on_topology(node.membership.topology());
        let pending = node.replica.hints_pending().clone();
        let work = node.delivery.on_tick(&pending);
        self.hint_work(i, work);
    }

    /// Carries out what node `i`'s hint delivery asks, as the Hints actor
    /// does: replica reads and clears at once, sends over the network.
    fn hint_work(&mut self, i: usize, work: Vec<HintWork>) {
        for w in work {
            let next = match w {
                HintWork::Take { owner, limit } => {
                    let batch = self.nodes[i].replica.hinted(&owner, limit);
                    self.nodes[i].delivery.on_batch(&owner, batch)
                }
                HintWork::Send { owner, entries, .. } => {
                    let Some(to) = self.index(&owner) else {
                        continue;
                    };
                    let id = self.call(i, Call::Hints { owner });
                    self.send(i, to, Msg::HintDeliver { id, entries });
                    continue;
                }
                HintWork::Clear {
                    owner,
                    delivered,
                    keep,
                } => {
                    let node = &mut self.nodes[i];
                    let cleared = node
                        .replica
                        .handed_off(&owner, &delivered, |k| keep.contains(k));
                    if let Ok(n @ 1..) = cleared {
                        self.note(|| format!("n{i}: {n} hints for {owner} delivered"));
                    }
                    let now = self.now;
                    self.nodes[i].delivery.on_cleared(&owner, cleared, now)
                }
                HintWork::Resume { owner, at } => {
                    let life = self.nodes[i].life;
                    self.schedule(
                        at,
                        Event::HintResume {
                            node: i,
                            life,
                            owner,
                        },
                    );
                    continue;
                }
                HintWork::ForgetMoot {
                    owner,
                    limit,
                    replicates,
                } => {
                    let node = &mut self.nodes[i];
                    if let Ok(n @ 1..) = node.replica.forget_moot_hints(&owner, limit, &replicates)
                    {
                        self.note(|| format!("n{i}: {n} hints for departed {owner} cleared"));
                    }
                    continue;
                }
                HintWork::Ended { .. } => continue,
            };
            self.hint_work(i, next);
        }
    }

    // ---- anti-entropy ----

    /// As the AntiEntropy actor does: roots comparisons with co-replicas
    /// that came up, then the next exchange its `Schedule` allows.
    fn start_exchange(&mut self, i: usize) {
        let Some(ring) = self.nodes[i].membership.ring() else {
            return;
        };
        let node = &mut self.nodes[i];
        let membership = &node.membership;
        let is_up = |n: &NodeId| membership.health(n) == Health::Up;
        let checks = node.schedule.on_topology(&ring, is_up);
        for RootsCheck { peer, partitions } in checks {
            let Some(to) = self.index(&peer) else {
                continue;
            };
            let msg = roots(&self.nodes[i].replica, &partitions);
            let id = self.call(i, Call::Roots { peer });
            self.send(i, to, Msg::Ae { id, msg });
        }
        let now = self.now;
        let node = &mut self.nodes[i];
        let membership = &node.membership;
        let rng = &mut self.rng;
        let next = node.schedule.next(
            &ring,
            now,
            |n| membership.health(n) == Health::Up,
            |count| rng.below(count as u64) as usize,
        );
        let Some((p, peer)) = next else { return };
        let Some(to) = self.index(&peer) else {
            return self.nodes[i].schedule.on_exchanged(0, now);
        };
        let (ex, msg) = Exchange::start(p, self.nodes[i].replica.tree(p));
        let id = self.call(i, Call::Exchange(ex));
        self.send(i, to, Msg::Ae { id, msg });
    }

    /// A call ended without its answer.
    fn on_call_timeout(&mut self, i: usize, id: u64) {
        let now = self.now;
        let node = &mut self.nodes[i];
        match node.calls.remove(&id) {
            Some(Call::Exchange(_)) => node.schedule.on_exchanged(0, now),
            Some(Call::Roots { peer }) => node.schedule.on_roots_failed(&peer),
            Some(Call::Hints { owner }) => {
                let work = node.delivery.on_sent(&owner, Err(Error::Timeout));
                self.hint_work(i, work);
            }
            _ => {}
        }
    }

    fn on_ae_reply(&mut self, i: usize, from: usize, id: u64, reply: Result<AeMsg>) {
        let now = self.now;
        let node = &mut self.nodes[i];
        let (mut ex, releasing) = match node.calls.remove(&id) {
            Some(Call::Exchange(ex)) => (ex, None),
            Some(Call::Release {
                exchange,
                remaining,
                synced,
            }) => (exchange, Some((remaining, synced))),
            Some(Call::Roots { peer }) => {
                match reply {
                    Ok(AeMsg::RootsDiffer { partitions }) => {
                        node.schedule.on_roots(&peer, &partitions, 0, now);
                        if !partitions.is_empty() {
                            let line =
                                format!("n{i}: {} partitions differ from {peer}", partitions.len());
                            self.note(|| line);
                        }
                    }
                    _ => node.schedule.on_roots_failed(&peer),
                }
                return;
            }
            _ => return,
        };
        let Ok(reply) = reply else {
            if releasing.is_none() {
                node.schedule.on_exchanged(0, now);
            }
            return;
        };
        let stepped = ex.on_reply(reply, &mut node.replica);
        if releasing.is_none() && !matches!(stepped, Ok(Some(_))) {
            let r = ex.report();
            node.schedule
                .on_exchanged(r.bytes_sent + r.bytes_received, now);
        }
        match stepped {
            Ok(Some(next)) => {
                let call = match releasing {
                    None => Call::Exchange(ex),
                    Some((remaining, synced)) => Call::Release {
                        exchange: ex,
                        remaining,
                        synced,
                    },
                };
                node.calls.insert(id, call);
                self.send(i, from, Msg::Ae { id, msg: next });
            }
            Ok(None) => {
                let r = ex.report().clone();
                if r.pulled + r.pushed > 0 {
                    self.note(|| {
                        format!(
                            "n{i}: exchange of {} with n{from}: pulled {}, pushed {}",
                            ex.partition(),
                            r.pulled,
                            r.pushed
                        )
                    });
                }
                if let Some((remaining, synced)) = releasing {
                    self.release_next(i, ex.partition(), remaining, Some(synced));
                }
            }
            Err(_) => {}
        }
    }

    // ---- handoff ----

    fn save_progress(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Err(e) = node.meta.put(PROGRESS_KEY, &node.progress.to_bytes()) {
            panic!("the simulated disk failed: {e}");
        }
    }

    /// What the Handoff actor's step does: fetch, commit, release or leave.
    fn handoff_step(&mut self, i: usize) {
        if self.nodes[i].calling(|c| matches!(c, Call::Fetch { .. } | Call::Release { .. })) {
            return;
        }
        let Some(ring) = self.nodes[i].membership.ring() else {
            return;
        };
        let n = self.cfg.n;
        let Node {
            id: me,
            membership,
            progress,
            replica,
            ..
        } = &mut self.nodes[i];
        let before = progress.clone();
        let is_up = |s: &NodeId| membership.health(s) == Health::Up;
        let view = membership.view();
        let next = fetch_step(view, &ring, me, n, progress, is_up)
            .unwrap_or_else(|| release_step(view, &ring, me, n, &replica.held_partitions(), is_up));
        if *progress != before {
            self.save_progress(i);
        }
        match next {
            Next::Fetch {
                partition,
                from,
                after,
            } => {
                let Some(to) = self.index(&from) else { return };
                let call = Call::Fetch {
                    partition,
                    after: after.clone(),
                };
                let id = self.call(i, call);
                let msg = HandoffMsg::Fetch {
                    partition,
                    after,
                    limit: CHUNK_KEYS,
                };
                self.send(i, to, Msg::Handoff { id, msg });
            }
            Next::Commit => {
                let node = &mut self.nodes[i];
                let changed = node.membership.commit_incoming();
                node.keep_view(changed);
                if changed.view {
                    self.note(|| format!("n{i}: incoming partitions committed"));
                }
            }
            Next::Release {
                partition,
                replicas,
            } => self.release_next(i, partition, replicas, None),
            Next::Leave => {
                let node = &mut self.nodes[i];
                let changed = node.membership.mark_left();
                node.keep_view(changed);
                if changed.view {
                    // As `serve` does: a node that has left stops.
                    self.note(|| format!("n{i} has left; it stops"));
                    self.stop(i);
                    self.nodes[i].retired = true;
                }
            }
            Next::Wait | Next::Idle => {}
        }
    }

    fn on_chunk(&mut self, i: usize, id: u64, reply: Result<HandoffMsg>) {
        let Some(Call::Fetch { partition, after }) = self.nodes[i].calls.remove(&id) else {
            return;
        };
        let Ok(HandoffMsg::Chunk {
            entries,
            checksum,
            last,
        }) = reply
        else {
            return;
        };
        if verify_chunk(
            &entries,
            checksum,
            partition,
            after.as_deref(),
            self.cfg.partitions,
        )
        .is_err()
        {
            return;
        }
        let node = &mut self.nodes[i];
        for (key, state) in &entries {
            if let Err(e) = node.replica.merge(key, state, None) {
                panic!("merging a fetched chunk failed: {e}");
            }
        }
        let step = Fetched::after_chunk(entries.last().map(|(k, _)| k.clone()), last);
        if step == Fetched::Done {
            self.fetched += 1;
            self.note(|| format!("n{i}: fetched {partition}"));
        }
        self.nodes[i].progress.record(partition, step);
        self.save_progress(i);
    }

    /// Synchronises `p` with the first of `replicas` (the rest after it);
    /// with none left, drops it if the ring still says so and nothing was
    /// written since the root the first exchange started from (`synced`),
    /// so every replica got all of it.
    fn release_next(&mut self, i: usize, p: Partition, replicas: Vec<NodeId>, synced: Option<u64>) {
        if let Some((first, rest)) = replicas.split_first() {
            let Some(to) = self.index(first) else { return };
            let (exchange, msg) = Exchange::push_only(p, self.nodes[i].replica.tree(p));
            let synced = synced.unwrap_or(exchange.report().started_from);
            let remaining = rest.to_vec();
            let id = self.call(
                i,
                Call::Release {
                    exchange,
                    remaining,
                    synced,
                },
            );
            self.send(i, to, Msg::Ae { id, msg });
            return;
        }
        let (Some(ring), Some(synced)) = (self.nodes[i].membership.ring(), synced) else {
            return;
        };
        let node = &mut self.nodes[i];
        if to_release(&ring, &node.id, self.cfg.n, [p]).is_empty() {
            return;
        }
        match node.replica.release_partition(p, synced) {
            Ok(Some(keys)) => {
                self.released += 1;
                self.note(|| format!("n{i}: released {p} ({keys} keys)"));
            }
            Ok(None) => self.note(|| format!("n{i}: {p} written to since its sync")),
            Err(e) => panic!("dropping a simulated partition failed: {e}"),
        }
    }

    // ---- tombstone collection ----

    fn start_gc(&mut self, i: usize) {
        if self.nodes[i].calling(|c| matches!(c, Call::Gc(_))) {
            return;
        }
        let Some(ring) = self.nodes[i].membership.ring() else {
            return;
        };
        let led = led_partitions(&ring, &self.nodes[i].id);
        if led.is_empty() {
            return;
        }
        let node = &mut self.nodes[i];
        node.gc_cursor = (node.gc_cursor + 1) % led.len();
        let p = led[node.gc_cursor];
        let Ok(found) = node.replica.tombstones(p, 64) else {
            return;
        };
        if found.is_empty() {
            return;
        }
        let members: Vec<NodeId> = node
            .membership
            .view()
            .members
            .values()
            .filter(|m| m.status.is_live())
            .map(|m| m.id.clone())
            .collect();
        let id = self.call(
            i,
            Call::Gc(GcRound {
                partition: p,
                found: found.clone(),
                members: members.clone(),
                answers: Vec::new(),
            }),
        );
        for m in members {
            if let Some(to) = self.index(&m) {
                let entries = found.clone();
                self.send(
                    i,
                    to,
                    Msg::Gc {
                        id,
                        msg: GcMsg::Probe { entries },
                    },
                );
            }
        }
    }

    fn on_gc_reply(&mut self, i: usize, from: &NodeId, id: u64, msg: GcMsg) {
        let GcMsg::Held { held } = msg else { return };
        let Some(Call::Gc(round)) = self.nodes[i].calls.get_mut(&id) else {
            return;
        };
        if held.len() != round.found.len() || round.answers.iter().any(|(n, _)| n == from) {
            return;
        }
        round.answers.push((from.clone(), held));
        if round.answers.len() < round.members.len() {
            return;
        }
        let Some(Call::Gc(round)) = self.nodes[i].calls.remove(&id) else {
            return;
        };
        let Some(ring) = self.nodes[i].membership.ring() else {
            return;
        };
        let replicas = ring
            .preference_list(round.partition, self.cfg.n)
            .into_iter()
            .cloned()
            .collect();
        let (entries, holders) = self.nodes[i].ripening.decide(
            &round.found,
            &round.answers,
            &replicas,
            self.now,
            GC_GRACE,
        );
        if entries.is_empty() {
            return;
        }
        let line = format!(
            "n{i}: collecting {} tombstones of {}",
            entries.len(),
            round.partition
        );
        self.note(|| line);
        for node in holders {
            if let Some(to) = self.index(&node) {
                let entries = entries.clone();
                self.send(
                    i,
                    to,
                    Msg::Gc {
                        id: 0,
                        msg: GcMsg::Collect { entries },
                    },
                );
            }
        }
    }

    // ---- convergence ----

    /// The ring every node agrees on (None if they disagree or have none).
    fn common_ring(&self) -> Option<Ring> {
        let mut members = self.nodes.iter().filter(|n| n.is_member());
        let first = members.next()?.membership.view();
        let ring = first.ring()?;
        (!ring.is_moving() && members.all(|n| n.membership.view().ownership == first.ownership))
            .then_some(ring)
    }

    /// Each key's copies at its owners, or why they are not comparable yet.
    fn owner_states(&self, k: usize) -> std::result::Result<Vec<SiblingSet>, String> {
        let ring = self.common_ring().ok_or("nodes disagree about the ring")?;
        let p = ring.partition_of(&self.keys[k]);
        ring.preference_list(p, self.cfg.n)
            .into_iter()
            .map(|id| {
                let i = self.index(id).ok_or("unknown owner")?;
                self.nodes[i]
                    .replica
                    .read(&self.keys[k])
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    fn divergence(&self) -> String {
        // A node that left is gone, with its hints: everything it held
        // was synchronised with the current replicas before it left. One
        // that was removed is gone with what it held (every acknowledged
        // write reached W - 1 other replicas too).
        for n in self.nodes.iter().filter(|n| n.is_member()) {
            if let Some((owner, hints)) = n.replica.hints_pending().iter().find(|(_, h)| **h > 0) {
                return format!("{} still holds {hints} hints for {owner}", n.id);
            }
            if !n.sessions.is_empty() {
                return format!("{} still has sessions", n.id);
            }
        }
        // Handoff is over: each node holds only what it replicates, and a
        // leaver has left.
        if let Some(ring) = self.common_ring() {
            for n in self.nodes.iter().filter(|n| n.is_member()) {
                let mine = ring.replicated_by(&n.id, self.cfg.n);
                if let Some(p) = n
                    .replica
                    .held_partitions()
                    .iter()
                    .find(|p| !mine.contains(p))
                {
                    return format!("{} still holds {p}", n.id);
                }
                if n.membership.member(&n.id).map(|m| m.status) == Some(Status::Leaving) {
                    return format!("{} is still leaving", n.id);
                }
            }
        }
        for k in 0..self.keys.len() {
            match self.owner_states(k) {
                Err(e) => return e,
                Ok(states) if states.windows(2).any(|w| w[0] != w[1]) => {
                    return format!("key {k} differs between its owners: {states:?}");
                }
                Ok(_) => {}
            }
        }
        String::new()
    }

    fn converged(&self) -> bool {
        self.divergence().is_empty()
    }

    fn final_state(&self, k: usize) -> SiblingSet {
        self.owner_states(k)
            .ok()
            .and_then(|s| s.into_iter().next())
            .unwrap_or_default()
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

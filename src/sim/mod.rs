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
mod workload;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::anti_entropy::{Exchange, Schedule};
use crate::coordinator::Session as CoreSession;
use crate::error::Result;
use crate::handoff::{HandoffDriver, HandoffSettings, Progress};
use crate::hints::{DeliverySettings, HintDelivery};
use crate::membership::{Changed, Member, Membership, Settings, Status, View};
use crate::node::NodeId;
use crate::replica::Replica;
use crate::store::Store;
use crate::tombstones::{Collector, CollectorSettings};
use crate::version::{Actor, SiblingSet};
use disk::Disk;
use history::History;
use network::Msg;
use workload::{Client, ClientOp};

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
    /// The handoff driver's pause ends.
    HandoffWake {
        node: usize,
        life: u64,
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

/// A call to a peer awaiting its answer, and the driver it answers.
enum Call {
    Hints {
        owner: NodeId,
    },
    Exchange {
        ex: Exchange,
        purpose: Purpose,
        peer: NodeId,
    },
    /// A catch-up comparison of the roots shared with `peer`.
    Roots {
        peer: NodeId,
    },
    /// A collector's probe or collect of member `to`.
    Gc {
        to: NodeId,
    },
    /// A handoff fetch.
    Fetch,
}

/// What an exchange is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Anti-entropy's repair of a partition.
    Repair,
    /// Handoff's push before a release.
    Sync,
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
    collector: Collector,
    handoff: HandoffDriver,
}

impl Node {
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

    /// The drivers of a (re)started node, as its actors build them: fresh,
    /// but for handoff's progress, read back from `meta`.
    fn start_drivers(&mut self, cfg: &SimConfig, i: usize) {
        self.schedule = Schedule::new(self.id.clone(), cfg.n, AE_BYTES_PER_SEC);
        self.delivery = HintDelivery::new(hint_settings(cfg, i));
        self.collector = Collector::new(collector_settings(cfg, i));
        let progress = match self.meta.get(PROGRESS_KEY) {
            Ok(Some(bytes)) => Progress::from_bytes(&bytes).unwrap_or_default(),
            _ => Progress::default(),
        };
        self.handoff = HandoffDriver::new(handoff_settings(cfg, i), progress);
    }
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
                retired: false,
                view: None,
                membership: Membership::new(settings(&cfg, i), None, 0),
                replica,
                sessions: BTreeMap::new(),
                calls: BTreeMap::new(),
                schedule: Schedule::new(node_id(i), cfg.n, AE_BYTES_PER_SEC),
                delivery: HintDelivery::new(hint_settings(&cfg, i)),
                collector: Collector::new(collector_settings(&cfg, i)),
                handoff: HandoffDriver::new(handoff_settings(&cfg, i), Progress::default()),
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
            Event::HandoffWake { node, life } => {
                if self.nodes[node].running && self.nodes[node].life == life {
                    self.handoff_tick(node);
                }
            }
            Event::HintResume { node, life, owner } => {
                if self.nodes[node].running && self.nodes[node].life == life {
                    let work = self.nodes[node].delivery.on_resume(&owner);
                    self.hint_work(node, work);
                }
            }
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
            Timer::AntiEntropy => {
                self.start_exchange(i);
                AE_EVERY
            }
            Timer::Hints => {
                self.deliver_hints(i);
                HINTS_EVERY
            }
            Timer::Gc => {
                self.start_gc(i);
                GC_EVERY
            }
            Timer::Handoff => {
                self.handoff_tick(i);
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

//! The simulated world: the nodes with their core state machines and
//! drivers, the event queue on a simulated clock, and the run loop that
//! steps through it (faults, then a heal and the wait for convergence).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::anti_entropy::{Exchange, Schedule};
use crate::coordinator::Session as CoreSession;
use crate::error::Result;
use crate::handoff::{HandoffDriver, Progress};
use crate::hints::HintDelivery;
use crate::membership::{Changed, Membership, Status, View};
use crate::node::NodeId;
use crate::replica::Replica;
use crate::store::Store;
use crate::tombstones::Collector;
use crate::version::{Actor, SiblingSet};

use super::disk::{Disk, Disks};
use super::history::History;
use super::network::Msg;
use super::typed::{self, TYPED_KEYS, typed_key};
use super::workload::{Client, ClientOp};
use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    Gossip,
    AntiEntropy,
    Hints,
    Gc,
    Sync,
    Handoff,
}

#[derive(Debug, Clone)]
pub(super) enum Event {
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
    /// The operator creates the namespaces `NAMESPACES` (at node 0).
    CreateNamespace,
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
    /// The operator alters the `n` of the namespaces `NAMESPACES` (at node 0).
    AlterNamespaces,
    /// A founder's disks are backed up.
    Backup,
    /// The backed-up node loses its disks and starts on the backup.
    Restore,
    /// An operator doubles Q at a member that is up.
    Split,
}

pub(super) struct Scheduled {
    pub(super) at: u64,
    pub(super) seq: u64,
    pub(super) event: Event,
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
/// The client operation a replica request serves, whose minting the
/// history records.
#[derive(Debug, Clone, Copy)]
pub(super) enum Serves {
    Write(usize),
    Typed(usize),
}

pub(super) struct Session {
    pub(super) client: usize,
    pub(super) key: usize,
    /// The client operation it serves (None for a get).
    pub(super) serves: Option<Serves>,
    pub(super) core: CoreSession,
}

/// A call to a peer awaiting its answer, and the driver it answers.
pub(super) enum Call {
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
pub(super) enum Purpose {
    /// Anti-entropy's repair of a partition.
    Repair,
    /// Handoff's push before a release.
    Sync,
}

pub(super) struct Node {
    pub(super) id: NodeId,
    pub(super) running: bool,
    /// Bumped on every start; timers of an earlier life are ignored.
    pub(super) life: u64,
    /// Its data, hints and handoff progress (persisted in `meta`).
    pub(super) disks: Disks,
    /// Left the cluster and stopped for good.
    pub(super) retired: bool,
    /// The persisted membership view.
    pub(super) view: Option<View>,
    pub(super) membership: Membership,
    pub(super) replica: Replica<Disk>,
    pub(super) sessions: BTreeMap<u64, Session>,
    pub(super) calls: BTreeMap<u64, Call>,
    pub(super) schedule: Schedule,
    pub(super) delivery: HintDelivery,
    pub(super) collector: Collector,
    pub(super) handoff: HandoffDriver,
}

impl Node {
    /// Whether it still belongs to the cluster: it did not leave for good,
    /// and knows of no removal (a removed node that has not learned yet
    /// still counts, and convergence waits for it to learn).
    pub(super) fn is_member(&self) -> bool {
        !self.retired && !self.membership.is_fenced()
    }

    /// Whether an operator removed it (as its own view knows by now).
    pub(super) fn removed(&self) -> bool {
        self.membership.member(&self.id).map(|m| m.status) == Some(Status::Removed)
    }

    /// Persists the membership view if `changed` says it changed (as the
    /// Membership actor writes it to `meta`).
    pub(super) fn keep_view(&mut self, changed: Changed) {
        if changed.view {
            self.view = Some(self.membership.view().clone());
        }
    }

    /// The drivers of a (re)started node, as its actors build them: fresh,
    /// but for handoff's progress, read back from `meta`.
    pub(super) fn start_drivers(&mut self, cfg: &SimConfig, i: usize) {
        self.schedule = Schedule::new(self.id.clone(), cfg.n, AE_BYTES_PER_SEC);
        self.delivery = HintDelivery::new(hint_settings(cfg, i));
        self.collector = Collector::new(collector_settings(cfg, i));
        let progress = match self.disks.meta.get(PROGRESS_KEY) {
            Ok(Some(bytes)) => Progress::from_bytes(&bytes).unwrap_or_default(),
            _ => Progress::default(),
        };
        self.handoff = HandoffDriver::new(handoff_settings(cfg, i), progress);
    }
}

pub struct Sim {
    pub(super) cfg: SimConfig,
    pub(super) seed: u64,
    pub(super) rng: Rng,
    pub(super) now: u64,
    pub(super) seq: u64,
    pub(super) queue: BinaryHeap<Reverse<Scheduled>>,
    pub(super) nodes: Vec<Node>,
    pub(super) clients: Vec<Client>,
    pub(super) keys: Vec<Vec<u8>>,
    pub(super) history: History,
    /// Which side of the current partition each node is on (None: healed).
    pub(super) sides: Option<Vec<bool>>,
    pub(super) partition_epoch: u64,
    pub(super) faults: bool,
    pub(super) next_id: u64,
    pub(super) events: u64,
    pub(super) digest: u64,
    pub(super) crashes: usize,
    pub(super) stops: usize,
    pub(super) crashes_while_loading: usize,
    pub(super) folded: usize,
    pub(super) partitions: usize,
    pub(super) fetched: usize,
    pub(super) released: usize,
    pub(super) fenced: usize,
    pub(super) splits: usize,
    pub(super) trace: Vec<String>,
    /// The `restore` scenario's backup, once taken.
    pub(super) backup: Option<Backup>,
}

/// A node's disks and persisted view as a backup holds them.
pub(super) struct Backup {
    pub(super) node: usize,
    pub(super) disks: Disks,
    pub(super) view: Option<View>,
    /// The node has lost its disks and was restored from this.
    pub(super) restored: bool,
}

impl Sim {
    pub fn new(cfg: SimConfig, seed: u64) -> Result<Sim> {
        let mut rng = Rng::new(seed);
        let mut nodes = Vec::with_capacity(cfg.nodes);
        for i in 0..cfg.nodes {
            let disks = Disks::default();
            let (mut replica, _) = Replica::open(
                disks.data.clone(),
                disks.hints.clone(),
                cfg.partitions,
                Actor(rng.next_u64()),
                64,
            )?;
            replica.keep_deleted(cfg.keep_deleted_ms);
            replica.keep_every_decoded_state();
            nodes.push(Node {
                id: node_id(i),
                running: i < founders(&cfg),
                life: 0,
                disks,
                retired: false,
                view: None,
                membership: Membership::new(settings(&cfg, i, 0), None),
                replica,
                sessions: BTreeMap::new(),
                calls: BTreeMap::new(),
                schedule: Schedule::new(node_id(i), cfg.n, AE_BYTES_PER_SEC),
                delivery: HintDelivery::new(hint_settings(&cfg, i)),
                collector: Collector::new(collector_settings(&cfg, i)),
                handoff: HandoffDriver::new(handoff_settings(&cfg, i), Progress::default()),
            });
        }
        let scripted = cfg.removal || cfg.restore;
        let doomed = if scripted { DOOMED_KEYS } else { 0 };
        let operator = usize::from(scripted);
        let mut sim = Sim {
            keys: (0..cfg.keys + doomed)
                .map(sim_key)
                .chain((0..TYPED_KEYS).map(typed_key))
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
            stops: 0,
            crashes_while_loading: 0,
            folded: 0,
            partitions: 0,
            fetched: 0,
            released: 0,
            fenced: 0,
            splits: 0,
            trace: Vec::new(),
            backup: None,
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
        if sim.cfg.split {
            for (from, span) in [(2_500, 5_000), (9_000, 6_000)] {
                let at = from + sim.rng.below(span);
                sim.schedule(at, Event::Split);
            }
        }
        if sim.cfg.restore {
            let backup = 2_500 + sim.rng.below(1_000);
            sim.schedule(backup, Event::Backup);
        } else if sim.cfg.removal {
            let remove = 3_000 + sim.rng.below(6_000);
            sim.schedule(remove, Event::Remove);
        }
        if scripted {
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
        sim.schedule(CREATE_RETRY, Event::CreateNamespace);
        let alter_at = 3_000
            + sim
                .rng
                .below(sim.cfg.fault_time.saturating_sub(3_000).max(1));
        sim.schedule(alter_at, Event::AlterNamespaces);
        Ok(sim)
    }

    pub(super) fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            event,
        }));
    }

    pub(super) fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(super) fn note(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            let line = line();
            self.trace.push(format!("{:>7} ms  {line}", self.now));
        }
    }

    pub(super) fn mix(&mut self, values: &[u64]) {
        for v in values {
            self.digest = (self.digest ^ v).wrapping_mul(0x100_0000_01b3);
        }
    }

    pub(super) fn index(&self, id: &NodeId) -> Option<usize> {
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
                // only it held; so is what a restored node wrote after its
                // backup.
                let restored = self.backup.as_ref().is_some_and(|b| b.restored);
                self.history.removed =
                    self.nodes.iter().filter(|n| n.removed()).count() + usize::from(restored);
                let h = &self.history;
                h.check(&finals, self.cfg.fsync_always)
                    .and_then(|()| {
                        let durable = self.cfg.fsync_always;
                        typed::check(&h.typed, &h.typed_reads, &finals, durable, h.removed)
                    })
                    .err()
            }
        };
        Outcome {
            seed: self.seed,
            events: self.events,
            digest: self.digest,
            acked_writes: self.history.acked_writes(),
            typed_ops: self.history.typed.len(),
            reads: self.history.reads.len(),
            failed_ops: self.history.failed,
            crashes: self.crashes,
            stops: self.stops,
            crashes_while_loading: self.crashes_while_loading,
            folded: self.folded,
            partitions: self.partitions,
            fetched: self.fetched,
            released: self.released,
            fenced: self.fenced,
            splits: self.splits,
            converged_after: converged_at.map_or(0, |t| t - heal_at),
            violation,
            trace: self.trace,
        }
    }

    pub(super) fn step(&mut self, next: Scheduled) {
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
            Event::Backup => self.back_up(),
            Event::Restore => self.restore(),
            Event::CreateNamespace => self.change_namespaces(false),
            Event::AlterNamespaces => self.change_namespaces(true),
            Event::Split => self.split_partitions(),
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
}

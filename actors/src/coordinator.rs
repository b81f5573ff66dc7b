//! Coordinator: turns client operations into coordinator sessions.
//!
//! Receives `Execute` (one client operation, with the oneshot its reply goes
//! to) and `RingChanged`. For a get, put or delete it validates the request,
//! routes the key's partition to its targets (the first N healthy nodes of
//! the extended preference list) and starts one `Session` actor, which sends
//! the client its reply. Any node coordinates any key: the version of a put
//! is minted by the first target, a replica of the key, so coordination needs
//! no forwarding. It also answers `status` and `inspect` from local state.

use std::time::Duration;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix::prelude::*;
use dynakv::coordinator::{GetSession, PutSession, Request, Route, Session as Core};
use dynakv::handoff::{PlanChange, preview};
use dynakv::membership::MAX_MEMBERS;
use dynakv::membership::View;
use dynakv::partition::Partition;
use dynakv::peer::{NodeLoad, PeerMsg};
use dynakv::version::{Context as VersionContext, Value};
use dynakv::wire::{
    ClientOp, ClientReply, LocalCopy, MemberLoad, MemberStatus, NetFault, StatusReport,
};
use dynakv::{Error, NodeId, Result};
use tokio::sync::oneshot;
use tracing::debug_span;

use crate::bridge::{Bridge, call};
use crate::events::Events;
use crate::faults::{Control, Fault};
use crate::membership::{Admin, Membership};
use crate::messages::{RingChanged, Summary};
use crate::replica::{PartitionUsage, ReadLocal, Replica, Stats};
use crate::session::{Router, Session, SessionEnv};
use crate::supervise::{mailbox_error, shielded};
use dynakv::topology::Topology;

/// One client operation; the client's reply goes to `reply` (a get, put or
/// delete's straight from its session).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Execute {
    pub op: ClientOp,
    pub reply: oneshot::Sender<ClientReply>,
}

/// What the coordinator needs from the configuration.
#[derive(Debug, Clone)]
pub struct CoordinatorSettings {
    pub cluster: String,
    pub n: u8,
    pub r: u8,
    pub w: u8,
    pub request_timeout: Duration,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Sessions coordinated at once; more are refused as overloaded.
    pub max_in_flight: usize,
    /// Whether `fault` requests are accepted.
    pub fault_injection: bool,
    /// Whether hints are handed over (`hints.deliver`): if not, owners keep
    /// none for other owners.
    pub owner_hints: bool,
}

pub struct Coordinator {
    settings: CoordinatorSettings,
    /// Shared by every session (a clone per session would allocate).
    sessions: Arc<SessionEnv>,
    /// What status, inspect and admin requests ask once they leave this
    /// actor; shared, so a request clones one reference.
    local: Arc<Local>,
    topology: Option<Topology>,
    next_request: u64,
}

impl Coordinator {
    pub fn new(
        settings: CoordinatorSettings,
        router: Router,
        membership: Addr<Membership>,
        reporters: Vec<Recipient<Summary>>,
        events: Events,
    ) -> Self {
        let sessions = SessionEnv {
            attempt_timeout: router.timeout / (u32::from(settings.n) + 1),
            router,
            events,
            in_flight: AtomicUsize::new(0),
        };
        let local = Arc::new(Local {
            replica: sessions.router.replica.clone(),
            bridge: sessions.router.bridge.clone(),
            ask_within: settings.request_timeout.min(STATUS_WAIT),
            reporters,
            membership,
            n: usize::from(settings.n),
            me: sessions.router.me.clone(),
        });
        Coordinator {
            settings,
            sessions: Arc::new(sessions),
            local,
            topology: None,
            next_request: 0,
        }
    }

    fn me(&self) -> &NodeId {
        &self.sessions.router.me
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::InvalidRequest("empty key".into()));
        }
        if key.len() > self.settings.max_key_bytes {
            return Err(Error::InvalidRequest(format!(
                "key of {} bytes exceeds the limit of {}",
                key.len(),
                self.settings.max_key_bytes
            )));
        }
        Ok(())
    }

    fn quorum(&self, what: &str, asked: Option<u8>, default: u8) -> Result<usize> {
        let q = asked.unwrap_or(default);
        if q == 0 || q > self.settings.n {
            return Err(Error::InvalidRequest(format!(
                "{what} = {q} must be between 1 and N = {}",
                self.settings.n
            )));
        }
        Ok(usize::from(q))
    }

    /// Where a request for `key` goes: the first N healthy nodes of the
    /// extended preference list (hinted stand-ins for owners that are not
    /// up), and the healthy nodes after them, to replace targets that fail.
    fn route(&self, key: &[u8]) -> Result<(u32, Route)> {
        let topology = self.topology.as_ref();
        let ring = topology.and_then(|t| t.ring.clone()).ok_or_else(|| {
            Error::Unavailable("the cluster is not formed yet (waiting for its seeds)".into())
        })?;
        let topology = topology.expect("a ring implies a topology");
        let (p, mut route) = Route::plan(
            &ring,
            key,
            usize::from(self.settings.n),
            self.me(),
            |n: &NodeId| topology.health(n),
        );
        if !self.settings.owner_hints {
            route.drop_owner_hints();
        }
        Ok((p.0, route))
    }

    /// Starts a session, which gives the client its reply.
    fn session(&mut self, planned: Planned, reply: oneshot::Sender<ClientReply>) {
        let running = self.sessions.in_flight.load(Ordering::Relaxed);
        if running >= self.settings.max_in_flight {
            let _ = reply.send(ClientReply::error(&Error::Overloaded));
            return;
        }
        self.sessions.in_flight.fetch_add(1, Ordering::Relaxed);
        self.next_request += 1;
        let Planned {
            op,
            key,
            partition,
            core,
            initial,
        } = planned;
        // At debug, like every event logged inside a session: an enabled
        // span formats its fields for each request (5% of the server's
        // CPU per put at the default level "info", which logs nothing in it).
        let span =
            debug_span!("session", op, partition, request = self.next_request, node = %self.me());
        Session::new(core, initial, key, self.sessions.clone(), reply, span).start();
    }

    /// Refuses reads and writes once this node is out of the cluster (it
    /// left or was removed): it is nobody's replica, and what it holds may
    /// have been deleted since.
    fn check_member(&self) -> Result<()> {
        match &self.topology {
            Some(t) if t.view.is_fenced(self.me()) => Err(dynakv::fencing::departed(self.me())),
            _ => Ok(()),
        }
    }

    /// Checks an operation: a get, put or delete is planned as a session;
    /// anything else is answered from this node's state.
    fn execute(&mut self, op: ClientOp) -> Result<Ready> {
        if matches!(
            op,
            ClientOp::Get { .. } | ClientOp::Put { .. } | ClientOp::Delete { .. }
        ) {
            self.check_member()?;
        }
        let local = match op {
            ClientOp::Get { key, r } => {
                self.check_key(&key)?;
                let r = self.quorum("r", r, self.settings.r)?;
                let (partition, route) = self.route(&key)?;
                let (core, initial) = GetSession::start(key.clone(), route, r);
                return Ok(Ready::Session(Planned {
                    op: "get",
                    key,
                    partition,
                    core: Core::Get(core),
                    initial,
                }));
            }
            ClientOp::Put {
                key,
                value,
                context,
                w,
            } => {
                if value.len() > self.settings.max_value_bytes {
                    return Err(Error::InvalidRequest(format!(
                        "value of {} bytes exceeds the limit of {}",
                        value.len(),
                        self.settings.max_value_bytes
                    )));
                }
                return self.write(key, Value::Data(value), &context, w, "put");
            }
            ClientOp::Delete { key, context, w } => {
                return self.write(key, Value::Tombstone, &context, w, "delete");
            }
            ClientOp::Status => Pending::Status(self.status_base()),
            ClientOp::Inspect { key } => {
                self.check_key(&key)?;
                let q = self.topology.as_ref().map_or(1, |t| t.view.partitions);
                let partition = dynakv::partition::Partition::of_key(&key, q).0;
                Pending::Inspect { key, partition }
            }
            ClientOp::Hello { .. } => {
                return Err(Error::InvalidRequest(
                    "hello is only valid as the first message".into(),
                ));
            }
            ClientOp::Join { seed } => Pending::Admin(Admin::Join { seed }),
            ClientOp::Leave => Pending::Admin(Admin::Leave),
            ClientOp::Remove { node } => Pending::Admin(Admin::Remove { node }),
            ClientOp::Plan { change } => {
                let view = self
                    .topology
                    .as_ref()
                    .map(|t| t.view.clone())
                    .ok_or_else(|| Error::Unavailable("membership not started".into()))?;
                Pending::Plan { view, change }
            }
            ClientOp::Fault { fault } => Pending::Fault(self.fault(fault)?),
        };
        Ok(Ready::Local(local))
    }

    /// Checks a fault request: allowed here, and naming real node ids.
    fn fault(&self, fault: NetFault) -> Result<Fault> {
        if !self.settings.fault_injection {
            return Err(Error::InvalidRequest(
                "fault injection is off on this node (testing.fault_injection)".into(),
            ));
        }
        Ok(match fault {
            NetFault::Partition { peers } => Fault::Partition(
                peers
                    .into_iter()
                    .map(|p| {
                        NodeId::new(p).map_err(|e| Error::InvalidRequest(format!("peer: {e}")))
                    })
                    .collect::<Result<BTreeSet<_>>>()?,
            ),
            NetFault::Heal => Fault::Heal,
        })
    }

    fn write(
        &mut self,
        key: Vec<u8>,
        value: Value,
        context: &[u8],
        w: Option<u8>,
        op: &'static str,
    ) -> Result<Ready> {
        self.check_key(&key)?;
        let w = self.quorum("w", w, self.settings.w)?;
        let ctx = VersionContext::from_bytes(context)?;
        let (partition, route) = self.route(&key)?;
        let (core, initial) = PutSession::start(key.clone(), ctx, value, route, w);
        Ok(Ready::Session(Planned {
            op,
            key,
            partition,
            core: Core::Put(core),
            initial,
        }))
    }

    /// Everything in the status report that this actor knows itself.
    fn status_base(&self) -> StatusReport {
        let me = self.me().clone();
        let Some(t) = &self.topology else {
            return StatusReport {
                node: me,
                cluster: self.settings.cluster.clone(),
                partitions: 0,
                n: self.settings.n,
                members: Vec::new(),
                keys: 0,
                hints: Vec::new(),
                notes: vec!["membership not started".into()],
            };
        };
        let n = usize::from(self.settings.n);
        let (owned, replicated) = match &t.ring {
            Some(ring) => (ring.owned_counts(), ring.replica_counts(n)),
            None => (Vec::new(), Vec::new()),
        };
        let count = |counts: &[(&NodeId, usize)], id: &NodeId| {
            counts
                .iter()
                .find(|(n, _)| *n == id)
                .map_or(0, |(_, c)| *c as u32)
        };
        let members = t
            .view
            .members
            .values()
            .map(|m| MemberStatus {
                node: m.id.clone(),
                peer_addr: m.peer_addr.clone(),
                client_addr: m.client_addr.clone(),
                weight: m.weight,
                state: m.status.as_str().to_string(),
                liveness: t.health.get(&m.id).map_or("up", |h| h.as_str()).to_string(),
                owned: count(&owned, &m.id),
                replicated: count(&replicated, &m.id),
                load: None,
                hints_pending: 0,
            })
            .collect();
        let mut notes = Vec::new();
        if t.ring.is_none() {
            notes.push("no ring yet: waiting for every seed to be known".into());
        }
        StatusReport {
            node: me,
            cluster: t.view.cluster.clone(),
            partitions: t.view.partitions,
            n: self.settings.n,
            members,
            keys: 0,
            hints: Vec::new(),
            notes,
        }
    }
}

/// A get, put or delete, ready to run as a session.
struct Planned {
    op: &'static str,
    key: Vec<u8>,
    partition: u32,
    core: Core,
    initial: Vec<Request>,
}

/// An operation checked and ready to run.
enum Ready {
    Session(Planned),
    Local(Pending),
}

/// An operation answered from this node's state, under way.
enum Pending {
    Status(StatusReport),
    Inspect { key: Vec<u8>, partition: u32 },
    Admin(Admin),
    Plan { view: Arc<View>, change: PlanChange },
    Fault(Fault),
}

const NAME: &str = "coordinator";

/// Sessions are actors of their own; the coordinator keeps only its
/// settings and the last topology, which a restart keeps.
impl Supervised for Coordinator {}

impl Actor for Coordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16_384);
    }
}

impl Handler<RingChanged> for Coordinator {
    type Result = ();

    fn handle(&mut self, RingChanged(t): RingChanged, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| {
            act.topology = Some(t);
        })
    }
}

impl Handler<Execute> for Coordinator {
    type Result = ();

    fn handle(&mut self, Execute { op, reply }: Execute, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| match act.execute(op) {
            Ok(Ready::Session(planned)) => act.session(planned, reply),
            Ok(Ready::Local(pending)) => {
                let local = act.local.clone();
                actix::spawn(async move {
                    let answer = finish(pending, &local).await;
                    let _ = reply.send(answer.unwrap_or_else(|e| ClientReply::error(&e)));
                });
            }
            Err(e) => {
                let _ = reply.send(ClientReply::error(&e));
            }
        })
    }
}

/// The local actors an operation may still need once its session is done.
struct Local {
    replica: Addr<Replica>,
    bridge: Addr<Bridge>,
    /// How long `status` waits for each member's load.
    ask_within: Duration,
    reporters: Vec<Recipient<Summary>>,
    membership: Addr<Membership>,
    n: usize,
    me: NodeId,
}

async fn finish(pending: Pending, local: &Local) -> Result<ClientReply> {
    let Local {
        replica,
        bridge,
        ask_within,
        reporters,
        membership,
        n,
        me,
    } = local;
    match pending {
        Pending::Admin(op) => {
            let message = membership.send(op).await.map_err(mailbox_error)??;
            Ok(ClientReply::Done { message })
        }
        Pending::Fault(fault) => {
            let message = format!("{fault:?} injected");
            bridge.send(Control(fault)).await.map_err(mailbox_error)?;
            Ok(ClientReply::Done { message })
        }
        Pending::Plan { view, change } => {
            // Sizes this node knows; other partitions count as the average.
            let usage: HashMap<Partition, u64> = replica
                .send(PartitionUsage)
                .await
                .map_err(mailbox_error)??
                .into_iter()
                .map(|(p, u)| (p, u.bytes))
                .collect();
            let average = usage.values().sum::<u64>() / (usage.len() as u64).max(1);
            let report = preview(&view, &change, *n, |p| {
                usage.get(&p).copied().unwrap_or(average)
            })?;
            Ok(ClientReply::Plan(report))
        }
        Pending::Status(mut report) => {
            let stats = replica.send(Stats).await.map_err(mailbox_error)??;
            report.keys = stats.keys;
            report.hints = stats.hints.clone();
            let mine = NodeLoad {
                keys: stats.keys,
                bytes: stats.bytes,
                hints: stats.hints,
            };
            add_loads(&mut report, mine, bridge, *ask_within).await;
            for reporter in reporters {
                report
                    .notes
                    .extend(reporter.send(Summary).await.map_err(mailbox_error)?);
            }
            Ok(ClientReply::Status(report))
        }
        Pending::Inspect { key, partition } => {
            let state = replica
                .send(ReadLocal(key))
                .await
                .map_err(mailbox_error)??;
            Ok(ClientReply::Local(LocalCopy {
                node: me.clone(),
                partition,
                siblings: state
                    .siblings()
                    .map(|s| {
                        let value = match s.value {
                            Value::Data(d) => Some(d.clone()),
                            Value::Tombstone => None,
                        };
                        (s.dot.actor.0, s.dot.counter, value)
                    })
                    .collect(),
                context: state.context().to_bytes(),
            }))
        }
    }
}

/// Longest `status` waits for a member's load.
const STATUS_WAIT: Duration = Duration::from_secs(2);

/// Asks every other member that is not down for its load (at once, each
/// within `within`) and fills in each member's load and the hints pending
/// for it. Members that do not answer show no load.
async fn add_loads(
    report: &mut StatusReport,
    mine: NodeLoad,
    bridge: &Addr<Bridge>,
    within: Duration,
) {
    let asked: Vec<NodeId> = report
        .members
        .iter()
        .filter(|m| m.node != report.node && m.liveness != "down")
        .filter(|m| matches!(m.state.as_str(), "joining" | "up" | "leaving"))
        .map(|m| m.node.clone())
        .collect();
    let answers = futures_util::future::join_all(
        asked
            .iter()
            .map(|to| call(bridge, to.clone(), PeerMsg::Stats, within)),
    )
    .await;
    let mut loads: HashMap<NodeId, NodeLoad> = asked
        .into_iter()
        .zip(answers)
        .filter_map(|(node, answer)| match answer {
            Ok(PeerMsg::Load(load)) if load.hints.len() <= MAX_MEMBERS => Some((node, load)),
            _ => None,
        })
        .collect();
    loads.insert(report.node.clone(), mine);
    for m in &mut report.members {
        m.load = loads.get(&m.node).map(|l| MemberLoad {
            keys: l.keys,
            bytes: l.bytes,
        });
        m.hints_pending = loads
            .values()
            .flat_map(|l| &l.hints)
            .filter(|(owner, _)| *owner == m.node)
            .map(|(_, count)| count)
            .sum();
    }
}

//! The operators' requests a coordinator answers from this node's state:
//! `status` (asking every member that is not down for its load), `inspect`
//! (this replica's copy of a key), `plan` (what a membership change would
//! move), membership changes (through membership) and fault injection
//! (through the Bridge, when `testing.fault_injection` is on), `ring`
//! (the snapshot a cluster-aware client routes by), and the pages of a
//! backup (`crate::backup`).
//!
//! `prepare` checks a request on the coordinator's thread; `answer` then
//! gathers what it needs without holding the coordinator.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use actix::prelude::*;
use dynakv::backup::PageRequest;
use dynakv::handoff::{PlanChange, preview};
use dynakv::liveness::Health;
use dynakv::membership::{MAX_MEMBERS, View};
use dynakv::namespace;
use dynakv::partition::Partition;
use dynakv::peer::{NodeLoad, PeerMsg};
use dynakv::protocol::Versions;
use dynakv::routing::RingSnapshot;
use dynakv::topology::Topology;
use dynakv::wire::{
    ClientOp, ClientReply, LocalCopy, MemberLoad, MemberStatus, NetFault, StatusReport,
};
use dynakv::{Error, NodeId, Result};
use std::sync::Arc;

use crate::backup::{Backups, TakePage};
use crate::bridge::{Bridge, PeerVersions, call};
use crate::faults::{Control, Fault};
use crate::messages::{Admin, Summary};
use crate::replica::{PartitionUsage, ReadLocal, Replica, Stats};
use crate::supervise::mailbox_error;

/// Longest `status` waits for a member's load.
const STATUS_WAIT: Duration = Duration::from_secs(2);

/// What the operators' requests ask once they leave the coordinator.
pub struct Operations {
    pub me: NodeId,
    pub cluster: String,
    pub n: u8,
    /// The default namespace's settings (`[cluster]` and `[limits]`).
    pub namespace_defaults: dynakv::namespace::Settings,
    /// Whether `fault` requests are accepted.
    pub fault_injection: bool,
    /// The protocol versions this node speaks.
    pub versions: Versions,
    pub replica: Addr<Replica>,
    /// Pages of backups of this node's storage.
    pub backups: Addr<Backups>,
    pub bridge: Addr<Bridge>,
    pub membership: Recipient<Admin>,
    /// The concerns that add lines to `status`.
    pub reporters: Vec<Recipient<Summary>>,
    /// How long `status` waits for each member's load.
    pub ask_within: Duration,
}

impl Operations {
    /// `ask_within`: the request timeout, at most `STATUS_WAIT`.
    pub fn ask_within(request_timeout: Duration) -> Duration {
        request_timeout.min(STATUS_WAIT)
    }
}

/// An operator's request, checked and under way.
pub enum Prepared {
    Status {
        report: StatusReport,
        asked: Vec<NodeId>,
    },
    Inspect {
        key: Vec<u8>,
        partition: u32,
    },
    Admin(Admin),
    Plan {
        view: Arc<View>,
        change: PlanChange,
    },
    Fault(Fault),
    Ring(Box<RingSnapshot>),
    Namespaces(Vec<namespace::Info>),
    Backup(PageRequest),
}

impl Operations {
    /// Checks an operator's request against this node's state.
    pub fn prepare(
        &self,
        op: ClientOp,
        t: Option<&Topology>,
        key_ok: impl Fn(&[u8]) -> Result<()>,
    ) -> Result<Prepared> {
        Ok(match op {
            ClientOp::Status => self.status_base(t),
            ClientOp::Inspect { key } => {
                key_ok(&key)?;
                let q = t.map_or(1, |t| t.view.partitions);
                let partition = Partition::of_key(&key, q).0;
                Prepared::Inspect { key, partition }
            }
            ClientOp::Join { seed } => Prepared::Admin(Admin::Join { seed }),
            ClientOp::Leave => Prepared::Admin(Admin::Leave),
            ClientOp::Remove { node } => Prepared::Admin(Admin::Remove { node }),
            ClientOp::Split => Prepared::Admin(Admin::Split),
            ClientOp::Plan { change } => {
                let view = t
                    .map(|t| t.view.clone())
                    .ok_or_else(|| Error::Unavailable("membership not started".into()))?;
                Prepared::Plan { view, change }
            }
            ClientOp::Fault { fault } => Prepared::Fault(self.fault(fault)?),
            ClientOp::Namespace(request) if request.changes_table() => {
                Prepared::Admin(Admin::Namespace {
                    request,
                    defaults: self.namespace_defaults.clone(),
                })
            }
            ClientOp::Namespace(question) => {
                let t = t.ok_or_else(|| Error::Unavailable("membership not started".into()))?;
                let answer =
                    namespace::describe(&t.view.namespaces, &question, &self.namespace_defaults)?;
                Prepared::Namespaces(answer)
            }
            ClientOp::Ring => {
                let t = t
                    .filter(|t| t.ring.is_some())
                    .ok_or_else(|| Error::Unavailable("the cluster is not formed yet".into()))?;
                Prepared::Ring(Box::new(RingSnapshot::of(t, self.n)))
            }
            ClientOp::Backup(request) => Prepared::Backup(request),
            ClientOp::Hello { .. } => {
                return Err(Error::InvalidRequest(
                    "hello is only valid as the first message".into(),
                ));
            }
            ClientOp::Get(_)
            | ClientOp::Put(_)
            | ClientOp::Delete(_)
            | ClientOp::PutExpiring(_)
            | ClientOp::Apply(_)
            | ClientOp::Routed { .. }
            | ClientOp::Batch(_)
            | ClientOp::List { .. } => {
                return Err(Error::Internal(
                    "a read or write is not an operator's request".into(),
                ));
            }
        })
    }

    /// Checks a fault request: allowed here, and naming real node ids.
    fn fault(&self, fault: NetFault) -> Result<Fault> {
        if !self.fault_injection {
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

    /// Everything in the status report this node knows itself, and the
    /// members to ask for their load (every other member still in the
    /// cluster that is not down).
    fn status_base(&self, t: Option<&Topology>) -> Prepared {
        let Some(t) = t else {
            let report = StatusReport {
                node: self.me.clone(),
                cluster: self.cluster.clone(),
                partitions: 0,
                n: self.n,
                members: Vec::new(),
                keys: 0,
                hints: Vec::new(),
                notes: vec!["membership not started".into()],
            };
            return Prepared::Status {
                report,
                asked: Vec::new(),
            };
        };
        let n = usize::from(self.n);
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
                liveness: t.health(&m.id).as_str().to_string(),
                owned: count(&owned, &m.id),
                replicated: count(&replicated, &m.id),
                load: None,
                hints_pending: 0,
                protocol: None,
            })
            .collect();
        let asked = t
            .view
            .members
            .values()
            .filter(|m| m.id != self.me && m.status.is_live() && t.health(&m.id) != Health::Down)
            .map(|m| m.id.clone())
            .collect();
        let mut notes = Vec::new();
        if t.ring.is_none() {
            notes.push("no ring yet: waiting for every seed to be known".into());
        }
        let report = StatusReport {
            node: self.me.clone(),
            cluster: t.view.cluster.clone(),
            partitions: t.view.partitions,
            n: self.n,
            members,
            keys: 0,
            hints: Vec::new(),
            notes,
        };
        Prepared::Status { report, asked }
    }

    /// Gathers what a prepared request needs and answers it.
    pub async fn answer(&self, prepared: Prepared) -> Result<ClientReply> {
        match prepared {
            Prepared::Ring(snapshot) => Ok(ClientReply::Ring(*snapshot)),
            Prepared::Namespaces(answer) => Ok(ClientReply::Namespaces(answer)),
            Prepared::Backup(request) => {
                let page = self
                    .backups
                    .send(TakePage(request))
                    .await
                    .map_err(mailbox_error)??;
                Ok(ClientReply::Backup(page))
            }
            Prepared::Admin(op) => {
                let message = self.membership.send(op).await.map_err(mailbox_error)??;
                Ok(ClientReply::Done { message })
            }
            Prepared::Fault(fault) => {
                let message = format!("{fault:?} injected");
                self.bridge
                    .send(Control(fault))
                    .await
                    .map_err(mailbox_error)?;
                Ok(ClientReply::Done { message })
            }
            Prepared::Plan { view, change } => {
                // Sizes this node knows; other partitions count as the average.
                let usage: HashMap<Partition, u64> = self
                    .replica
                    .send(PartitionUsage)
                    .await
                    .map_err(mailbox_error)??
                    .into_iter()
                    .map(|(p, u)| (p, u.bytes))
                    .collect();
                let average = usage.values().sum::<u64>() / (usage.len() as u64).max(1);
                let report = preview(&view, &change, usize::from(self.n), |p| {
                    usage.get(&p).copied().unwrap_or(average)
                })?;
                Ok(ClientReply::Plan(report))
            }
            Prepared::Status { mut report, asked } => {
                let stats = self.replica.send(Stats).await.map_err(mailbox_error)??;
                report.keys = stats.keys;
                report.hints = stats.hints.clone();
                let mine = NodeLoad {
                    keys: stats.keys,
                    bytes: stats.bytes,
                    hints: stats.hints,
                };
                self.add_loads(&mut report, mine, asked).await;
                for reporter in &self.reporters {
                    report
                        .notes
                        .extend(reporter.send(Summary).await.map_err(mailbox_error)?);
                }
                Ok(ClientReply::Status(report))
            }
            Prepared::Inspect { key, partition } => {
                let state = self
                    .replica
                    .send(ReadLocal(key))
                    .await
                    .map_err(mailbox_error)??;
                Ok(ClientReply::Local(LocalCopy {
                    node: self.me.clone(),
                    partition,
                    siblings: state
                        .siblings()
                        .map(|s| {
                            (
                                s.dot.actor.0,
                                s.dot.counter,
                                s.value.data().map(<[u8]>::to_vec),
                            )
                        })
                        .collect(),
                    context: state.context().to_bytes(),
                    // Every concurrent register value, as stored.
                    reading: state.typed().map(|t| t.reading(false)),
                }))
            }
        }
    }

    /// Asks the `asked` members for their load (at once, each within
    /// `ask_within`) and fills in each member's load and the hints pending
    /// for it. Members that do not answer show no load.
    async fn add_loads(&self, report: &mut StatusReport, mine: NodeLoad, asked: Vec<NodeId>) {
        let answers = futures_util::future::join_all(
            asked
                .iter()
                .map(|to| call(&self.bridge, to.clone(), PeerMsg::Stats, self.ask_within)),
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
        let mut speaks = self.bridge.send(PeerVersions).await.unwrap_or_default();
        speaks.insert(report.node.clone(), self.versions);
        for m in &mut report.members {
            m.protocol = speaks.get(&m.node).copied();
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
}

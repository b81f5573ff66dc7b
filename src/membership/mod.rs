//! Membership: who is in the cluster, and the partition ownership table.
//!
//! The view (`crate::view`, a CRDT) is gossiped push-pull with one random
//! peer per interval. A round between nodes whose views agree costs a
//! fingerprint each way; views that differ exchange only the records that
//! differ (`digest`). Each round also probes the peer and carries a few
//! liveness rumors (`crate::liveness`), so neither the bytes nor the work
//! of a round grow with the cluster. Peers that speak protocol 6 still
//! get (and give) whole views and heartbeat counters.
//!
//! Life of a cluster:
//! - *Founding*: a node with no table waits until every seed in its config
//!   is a member of its view, then founds the table from the members it
//!   knows (`Ownership::found`, deterministic). Nodes started together with
//!   the same seed list found identical tables.
//! - *Claiming*: whenever the view changes, a member computes the plan that
//!   balances the table over the active members and begins the moves whose
//!   receiver is itself. Every node only claims for itself, so concurrent
//!   joins rarely collide, and a collision (two claims of one partition at
//!   one epoch) resolves by the merge order; the loser claims again.
//!
//! Outputs are messages to send; the shell does the sending, the timing and
//! the persistence.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fencing::{self, Admission};
use crate::liveness::{FailureDetector, Health, Heartbeats};
use crate::namespace;
use crate::node::NodeId;
use crate::ownership::{Move, Ownership};
use crate::ring::Ring;
use crate::topology::Topology;
pub use crate::view::{MAX_MEMBERS, Member, Status, View};

mod digest;

use digest::Known;
pub use digest::{Records, Summary};

/// The first protocol version that gossips by digest.
pub const DIGEST_PROTOCOL: u8 = 7;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipMsg {
    /// The sender's view and heartbeat counters; the receiver merges them
    /// and answers with `Reply` carrying its own. (To and from peers that
    /// speak protocol 6, and to seeds not known yet.)
    Push {
        view: View,
        heartbeats: Heartbeats,
    },
    Reply {
        view: View,
        heartbeats: Heartbeats,
    },
    /// The sender is stopping (to restart, or for good): route around it
    /// now rather than once a probe of it goes unanswered. Protocol 5.
    Stopping,
    /// A round's opening (protocol 7): the fingerprint of the sender's
    /// view and liveness reports (`Summary::root`). Answered with `Agree`
    /// if the receiver's is the same, else with the receiver's `Summary`.
    /// Every message of a round carries its sender's heartbeat, for peers
    /// that still gossip protocol 6's counters.
    Digest {
        root: u64,
        heartbeat: u64,
    },
    Agree {
        heartbeat: u64,
    },
    Summary {
        summary: Summary,
        heartbeat: u64,
    },
    /// The sender's records in the buckets where the two summaries differ;
    /// answered with the receiver's in the same buckets (`Delta`).
    Records {
        buckets: Vec<u32>,
        records: Records,
        heartbeat: u64,
    },
    Delta {
        records: Records,
        heartbeat: u64,
    },
}

impl GossipMsg {
    /// Whether the message opens an exchange (the receiver answers it).
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            GossipMsg::Push { .. }
                | GossipMsg::Stopping
                | GossipMsg::Digest { .. }
                | GossipMsg::Records { .. }
        )
    }

    /// The first protocol version that has this message.
    pub fn since(&self) -> u8 {
        match self {
            GossipMsg::Push { .. } | GossipMsg::Reply { .. } => 1,
            GossipMsg::Stopping => 5,
            _ => DIGEST_PROTOCOL,
        }
    }
}

/// Where a gossip message goes: a known member, or a seed address whose
/// node id is not known yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Node(NodeId),
    Addr(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub to: Destination,
    pub msg: GossipMsg,
}

/// What an input changed, so the shell knows what to publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changed {
    /// The view (members or ownership): persist it, recompute the ring.
    pub view: bool,
    /// Some peer's health: re-route.
    pub liveness: bool,
}

impl Changed {
    pub fn any(self) -> bool {
        self.view || self.liveness
    }
}

impl std::ops::BitOr for Changed {
    type Output = Changed;

    fn bitor(self, other: Changed) -> Changed {
        Changed {
            view: self.view || other.view,
            liveness: self.liveness || other.liveness,
        }
    }
}

/// This node's membership state machine.
#[derive(Debug, Clone)]
pub struct Membership {
    me: NodeId,
    n: usize,
    seeds: Vec<String>,
    known: Known,
    detector: FailureDetector,
    /// Whether this node takes part in the cluster: from the start with
    /// `auto_join` (or a persisted view), else once told to `join`.
    enabled: bool,
    /// This node is stopping and told its peers (`stop`): it gossips no
    /// more and takes no gossip, either of which would tell them it is up.
    stopping: bool,
    /// Whether this node gossips by digest (it speaks protocol 7).
    digests: bool,
    /// Peers that do not (they speak an older protocol): they get pushes.
    legacy: BTreeSet<NodeId>,
}

/// The settings membership needs from the node's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub me: Member,
    pub cluster: String,
    pub partitions: u32,
    pub n: usize,
    pub seeds: Vec<String>,
    /// Failure detection timeouts, in milliseconds.
    pub suspect_after: u64,
    pub down_after: u64,
    /// Join (or found) the cluster of the seeds at start-up. Without it, a
    /// fresh node waits for an explicit `join`.
    pub auto_join: bool,
    /// This run's incarnation: above every earlier run's (the shell uses
    /// its wall clock at start, in ms).
    pub incarnation: u64,
    /// The newest protocol version this node speaks.
    pub protocol: u8,
}

impl Membership {
    /// Starts from a persisted view if there is one. This node's own record
    /// is refreshed from the settings (addresses and weight may have changed
    /// in the config) with a higher version.
    pub fn new(settings: Settings, persisted: Option<View>) -> Self {
        let enabled = settings.auto_join || persisted.is_some();
        let mut view =
            persisted.unwrap_or_else(|| View::new(settings.cluster.clone(), settings.partitions));
        let me = settings.me;
        let id = me.id.clone();
        let record = match view.members.get(&id) {
            Some(old) => {
                let mut m = old.clone();
                if (&m.peer_addr, &m.client_addr, m.weight)
                    != (&me.peer_addr, &me.client_addr, me.weight)
                {
                    m.peer_addr = me.peer_addr;
                    m.client_addr = me.client_addr;
                    m.weight = me.weight;
                    m.version += 1;
                }
                m
            }
            None => Member {
                status: Status::Joining,
                version: 1,
                ..me
            },
        };
        view.members.insert(id.clone(), record);
        let seeds = settings
            .seeds
            .into_iter()
            .filter(|s| *s != view.members[&id].peer_addr)
            .collect();
        let mut membership = Membership {
            detector: FailureDetector::new(
                id.clone(),
                settings.suspect_after,
                settings.down_after,
                settings.incarnation,
            ),
            me: id,
            n: settings.n,
            seeds,
            known: Known::new(view),
            enabled,
            stopping: false,
            digests: settings.protocol >= DIGEST_PROTOCOL,
            legacy: BTreeSet::new(),
        };
        membership.track_members();
        membership.settle();
        membership
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    pub fn view(&self) -> &View {
        self.known.view()
    }

    /// The fingerprint gossip compares: equal views and liveness reports,
    /// equal roots.
    pub fn root(&mut self) -> u64 {
        self.summary().root()
    }

    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.view().members.get(id)
    }

    /// This node's belief about a member's health.
    pub fn health(&self, id: &NodeId) -> Health {
        self.detector.health(id)
    }

    /// This node's belief about every member's health.
    pub fn health_map(&self) -> BTreeMap<NodeId, Health> {
        self.view()
            .members
            .keys()
            .map(|id| (id.clone(), self.detector.health(id)))
            .collect()
    }

    /// Seeds that are not yet known as members.
    fn unknown_seeds(&mut self) -> Vec<String> {
        let known = &mut self.known;
        self.seeds
            .iter()
            .filter(|s| !known.has_peer_addr(s))
            .cloned()
            .collect()
    }

    fn track_members(&mut self) {
        for (id, m) in &self.known.view().members {
            if matches!(m.status, Status::Left | Status::Removed) {
                self.detector.forget(id);
            } else {
                self.detector.track(id);
            }
        }
    }

    /// Whether `peer` gets whole views (it speaks an older protocol, or
    /// this node does).
    fn pushes_to(&self, peer: &NodeId) -> bool {
        !self.digests || self.legacy.contains(peer)
    }

    /// `peer`'s hello said the newest protocol it speaks is `max`.
    pub fn speaks(&mut self, peer: &NodeId, max: u8) {
        if max >= DIGEST_PROTOCOL {
            self.legacy.remove(peer);
        } else if self.legacy.insert(peer.clone()) {
            // A digest sent before this was known went unanswered: no
            // evidence against the peer.
            self.detector.reached(peer);
        }
    }

    /// The summary of the view and the liveness reports.
    fn summary(&mut self) -> Summary {
        let detector = &self.detector;
        self.known
            .summary(|| detector.reports(), detector.changes())
    }

    /// This node's records and reports in `buckets`.
    fn records(&self, buckets: &[u32]) -> Records {
        Records::of(self.view(), &self.detector.reports(), buckets)
    }

    fn push(&self) -> GossipMsg {
        GossipMsg::Push {
            view: self.view().clone(),
            heartbeats: self.detector.heartbeats(),
        }
    }

    /// The opening of a round with `to` at `now` (a probe of it).
    fn opening(&mut self, to: &Destination, now: u64) -> GossipMsg {
        match to {
            Destination::Node(peer) if !self.pushes_to(peer) => {
                self.detector.probed(peer, now);
                GossipMsg::Digest {
                    root: self.summary().root(),
                    heartbeat: self.detector.heartbeat(),
                }
            }
            Destination::Node(peer) => {
                self.detector.probed(peer, now);
                self.push()
            }
            Destination::Addr(_) => self.push(),
        }
    }

    /// One gossip round at time `now`: beat, apply the failure detector's
    /// timeouts, and open a round with a random peer (a known member, or a
    /// seed not yet known). `rand` is any random number.
    /// A node that was removed gossips no more; one that left goes on
    /// announcing it to whoever has not heard (those who have refuse it).
    pub fn tick(&mut self, now: u64, rand: u64) -> (Vec<Outgoing>, Changed) {
        let removed = self.member(&self.me).map(|m| m.status) == Some(Status::Removed);
        if !self.enabled || removed || self.stopping {
            return (Vec::new(), Changed::default());
        }
        self.detector.beat();
        let changed = Changed {
            view: false,
            liveness: !self.detector.tick(now).is_empty(),
        };
        let unknown: Vec<Destination> = self
            .unknown_seeds()
            .into_iter()
            .map(Destination::Addr)
            .collect();
        // A random known member, as every round; and until the cluster is
        // founded, every seed not yet known too (founding waits for them).
        let mut out: Vec<Destination> = Vec::new();
        let live = self.known.live();
        let mine = live.binary_search(&self.me).ok();
        let others = live.len() - usize::from(mine.is_some());
        if others > 0 {
            let mut pick = (rand % others as u64) as usize;
            if mine.is_some_and(|m| pick >= m) {
                pick += 1;
            }
            out.push(Destination::Node(live[pick].clone()));
        }
        if self.view().ownership.is_none() {
            out.extend(unknown);
        } else if out.is_empty() || rand.is_multiple_of(2) {
            // Founded: now and then try a seed we lost track of.
            out.extend(unknown.into_iter().take(1));
        }
        let out = out
            .into_iter()
            .map(|to| Outgoing {
                msg: self.opening(&to, now),
                to,
            })
            .collect();
        (out, changed)
    }

    /// Whether this node is stopping (`stop`).
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// This node is stopping: from now on it gossips no more and refuses
    /// gossip. Returns whom to tell (`GossipMsg::Stopping`): every other
    /// member still in the cluster that this node believes up (a down one
    /// is routed around already).
    pub fn stop(&mut self) -> Vec<NodeId> {
        self.stopping = true;
        self.view()
            .members
            .values()
            .filter(|m| m.id != self.me && m.status.is_live() && self.detector.is_up(&m.id))
            .map(|m| m.id.clone())
            .collect()
    }

    /// A request to `peer` failed (refused, lost, or unanswered in time).
    pub fn on_unreachable(&mut self, peer: &NodeId, now: u64) -> Changed {
        Changed {
            view: false,
            liveness: self.detector.failed(peer, now).is_some(),
        }
    }

    /// `peer` accepted a connection: it is up.
    pub fn on_reachable(&mut self, peer: &NodeId) -> Changed {
        Changed {
            view: false,
            liveness: self.detector.reached(peer).is_some(),
        }
    }

    /// Takes a gossip message from `from` at time `now`. Returns what to
    /// send `from` (the answer to a request; after an answer, the next
    /// request of the round, if any) and what changed.
    pub fn on_gossip(
        &mut self,
        from: &NodeId,
        msg: GossipMsg,
        now: u64,
    ) -> Result<(Option<Outgoing>, Changed)> {
        if self.stopping {
            return Err(Error::Unavailable("this node is stopping".into()));
        }
        if !matches!(msg, GossipMsg::Stopping) && self.view().is_fenced(from) {
            return Err(Error::Removed(format!(
                "{from} left or was removed; its gossip is refused"
            )));
        }
        let answer = |msg| {
            Some(Outgoing {
                to: Destination::Node(from.clone()),
                msg,
            })
        };
        match msg {
            GossipMsg::Stopping => {
                let changed = Changed {
                    view: false,
                    liveness: self.detector.stopped(from, now).is_some(),
                };
                Ok((None, changed))
            }
            GossipMsg::Push { view, heartbeats } => {
                let changed = self.take_view(from, &view, &heartbeats)?;
                let reply = GossipMsg::Reply {
                    view: self.view().clone(),
                    heartbeats: self.detector.heartbeats(),
                };
                Ok((answer(reply), changed))
            }
            GossipMsg::Reply { view, heartbeats } => {
                Ok((None, self.take_view(from, &view, &heartbeats)?))
            }
            GossipMsg::Digest { root, heartbeat } => {
                let changed = self.heard(from, heartbeat);
                let summary = self.summary();
                let heartbeat = self.detector.heartbeat();
                let reply = if root == summary.root() {
                    GossipMsg::Agree { heartbeat }
                } else {
                    GossipMsg::Summary { summary, heartbeat }
                };
                Ok((answer(reply), changed))
            }
            GossipMsg::Agree { heartbeat } => Ok((None, self.heard(from, heartbeat))),
            GossipMsg::Summary { summary, heartbeat } => {
                summary.check(self.view().partitions)?;
                let changed = self.heard(from, heartbeat);
                let buckets = self.summary().differing(&summary);
                if buckets.is_empty() {
                    return Ok((None, changed));
                }
                let next = GossipMsg::Records {
                    records: self.records(&buckets),
                    buckets,
                    heartbeat: self.detector.heartbeat(),
                };
                Ok((answer(next), changed))
            }
            GossipMsg::Records {
                buckets,
                records,
                heartbeat,
            } => {
                Summary::check_buckets(&buckets, self.view().partitions)?;
                let changed = self.take_records(from, &records, now)? | self.heard(from, heartbeat);
                let reply = GossipMsg::Delta {
                    records: self.records(&buckets),
                    heartbeat: self.detector.heartbeat(),
                };
                Ok((answer(reply), changed))
            }
            GossipMsg::Delta { records, heartbeat } => {
                let changed = self.take_records(from, &records, now)? | self.heard(from, heartbeat);
                Ok((None, changed))
            }
        }
    }

    /// A message of protocol 7 came from `from` (it speaks 7, then), its
    /// heartbeat `heartbeat`.
    fn heard(&mut self, from: &NodeId, heartbeat: u64) -> Changed {
        self.legacy.remove(from);
        Changed {
            view: false,
            liveness: self.detector.heard(from, heartbeat).is_some(),
        }
    }

    /// Merges a whole view and heartbeat counters from `from` (protocol 6
    /// gossip, or a seed's).
    fn take_view(
        &mut self,
        from: &NodeId,
        view: &View,
        heartbeats: &Heartbeats,
    ) -> Result<Changed> {
        view.validate(&self.view().cluster, self.view().partitions)?;
        if heartbeats.len() > MAX_MEMBERS {
            return Err(Error::Malformed(format!("{} heartbeats", heartbeats.len())));
        }
        self.check_identity(from, &view.members)?;
        let mut changed = Changed {
            view: self.known.edit().merge(view)?,
            liveness: false,
        };
        if changed.view {
            self.track_members();
            self.settle();
        }
        changed.liveness |= !self.detector.observe(heartbeats).is_empty();
        changed.liveness |= self.detector.reached(from).is_some();
        Ok(changed)
    }

    /// Merges records from `from`: they are checked, and so is the view
    /// they make, before it replaces this node's.
    fn take_records(&mut self, from: &NodeId, records: &Records, now: u64) -> Result<Changed> {
        records.check(self.view().partitions)?;
        self.check_identity(from, &records.member_map())?;
        let mut merged = self.view().clone();
        let mut changed = Changed::default();
        if records.merge_into(&mut merged)? {
            merged.validate(&self.view().cluster, self.view().partitions)?;
            *self.known.edit() = merged;
            self.track_members();
            self.settle();
            changed.view = true;
        }
        changed.liveness = !self.detector.merge(&records.reports, now).is_empty();
        Ok(changed)
    }

    /// Rejects views that would let one node pass for another.
    fn check_identity(&mut self, from: &NodeId, members: &BTreeMap<NodeId, Member>) -> Result<()> {
        if let Some(claimed) = members.get(&self.me) {
            let mine = &self.view().members[&self.me];
            if claimed.supersedes(mine) && claimed.status.is_live() {
                // Only this node writes its own record (an operator's remove
                // aside, and this node's own leave: a final record is taken
                // as it is, and fences this node). A newer copy at our own address is our history from
                // before a restart that lost it: outrank it. At another
                // address it is another process using our id.
                if claimed.peer_addr != mine.peer_addr {
                    return Err(Error::Malformed(format!(
                        "{from} holds a newer record for this node at {}: is another process using id {}?",
                        claimed.peer_addr, self.me
                    )));
                }
                let version = claimed.version + 1;
                self.my_record().version = version;
            }
        }
        if let (Some(sender), Some(known)) = (members.get(from), self.view().members.get(from))
            && known.peer_addr != sender.peer_addr
            && !sender.supersedes(known)
        {
            return Err(Error::Malformed(format!(
                "{from} claims peer address {} but is known at {}",
                sender.peer_addr, known.peer_addr
            )));
        }
        // Two live nodes cannot share an address: a new id at a live member's
        // address is an impersonation (or a misconfiguration) until the old
        // member is removed.
        for m in members.values() {
            if self.view().members.contains_key(&m.id) || !m.status.is_live() {
                continue;
            }
            if let Some(holder) = self.view().members.values().find(|k| {
                k.status.is_live() && (k.peer_addr == m.peer_addr || k.client_addr == m.client_addr)
            }) {
                return Err(Error::Malformed(format!(
                    "{from} introduced {} at an address of live member {}",
                    m.id, holder.id
                )));
            }
        }
        Ok(())
    }

    /// After a change: found the table if due, then claim what this node
    /// should receive. Returns the moves begun.
    fn settle(&mut self) -> Vec<Move> {
        if !self.enabled {
            return Vec::new();
        }
        if self.view().ownership.is_none() {
            if !self.unknown_seeds().is_empty() {
                return Vec::new();
            }
            let members = self.view().active();
            match Ownership::found(self.view().partitions, &members, self.n) {
                Ok(table) => self.known.edit().ownership = Some(table),
                Err(_) => return Vec::new(),
            }
        }
        let moves = self.claim();
        self.mark_up_if_owning();
        moves
    }

    /// Begins the planned moves whose receiver is this node.
    fn claim(&mut self) -> Vec<Move> {
        let active = self.view().active();
        let Some(table) = self.known.edit().ownership.as_mut() else {
            return Vec::new();
        };
        if !active.iter().any(|m| m.node == self.me) {
            return Vec::new();
        }
        let Ok(plan) = table.plan(&active, self.n) else {
            return Vec::new();
        };
        let mine: Vec<Move> = plan.into_iter().filter(|m| m.to == self.me).collect();
        table.begin(&mine);
        mine
    }

    /// A joining node that owns partitions and has nothing in flight to it
    /// is up.
    fn mark_up_if_owning(&mut self) {
        let Some(table) = &self.view().ownership else {
            return;
        };
        let owns = table.entries().iter().any(|e| e.owner == self.me);
        let incoming = !table.incoming(&self.me).is_empty();
        let me = self.my_record();
        if me.status == Status::Joining && owns && !incoming {
            me.status = Status::Up;
            me.version += 1;
        }
    }

    /// The view, its ring and this node's belief about every member's
    /// health, for the drivers.
    pub fn topology(&self) -> Topology {
        Topology::new(self.view().clone(), self.health_map())
    }

    /// The ring of the current view, once a table exists.
    pub fn ring(&self) -> Option<Ring> {
        self.view().ring()
    }

    /// Whether this node takes part in the cluster yet.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether this node left or was removed: it takes no part any more
    /// (no gossip, no replicas, no clients) and its id is retired.
    pub fn is_fenced(&self) -> bool {
        self.view().is_fenced(&self.me)
    }

    /// Who this node takes peer requests from, under the current view.
    pub fn admission(&self) -> Admission {
        Admission::new(self.view(), &self.me)
    }

    /// A peer refused this node's request with `record`, this node's final
    /// record in the peer's view: take it (it wins the merge) and stop.
    /// Anything else is not a refusal of this node and is rejected.
    pub fn on_fenced(&mut self, record: Member) -> Result<Changed> {
        if record.id != self.me || !record.status.is_final() {
            return Err(Error::Malformed(format!(
                "a refusal with the record of {} ({})",
                record.id,
                record.status.as_str()
            )));
        }
        record.validate()?;
        let mine = &self.view().members[&self.me];
        if !record.supersedes(mine) {
            return Ok(Changed::default());
        }
        self.known.edit().members.insert(self.me.clone(), record);
        Ok(Changed {
            view: true,
            liveness: false,
        })
    }

    fn my_record(&mut self) -> &mut Member {
        self.known
            .edit()
            .members
            .get_mut(&self.me)
            .expect("own record is always present")
    }

    /// Joins the cluster `seed` (a peer address) belongs to.
    pub fn join(&mut self, seed: String) -> Result<Changed> {
        crate::config::check_addr("seed", &seed)?;
        if self.is_fenced() {
            return Err(fencing::departed(&self.me));
        }
        if self.view().members[&self.me].status.is_live()
            && self.enabled
            && self.view().ownership.is_some()
        {
            return Err(Error::InvalidRequest(format!(
                "{} is already a member of a cluster",
                self.me
            )));
        }
        if !self.seeds.contains(&seed) {
            self.seeds.push(seed);
        }
        self.enabled = true;
        self.settle();
        Ok(Changed {
            view: true,
            liveness: false,
        })
    }

    /// Starts handing this node's partitions to the other members; it is
    /// `Left` once it owns nothing (`mark_left`).
    pub fn leave(&mut self) -> Result<Changed> {
        let me = self.my_record();
        if !me.status.is_active() {
            return Err(Error::InvalidRequest(format!(
                "{} is {}, it cannot leave",
                me.id,
                me.status.as_str()
            )));
        }
        self.view().check_leave(&self.me)?;
        let me = self.my_record();
        me.status = Status::Leaving;
        me.version += 1;
        self.settle();
        Ok(Changed {
            view: true,
            liveness: false,
        })
    }

    /// Creates, alters or drops a namespace (`defaults`: the default
    /// namespace's settings, for what a create leaves out); the view
    /// carries the change to every node. Returns what was done.
    pub fn namespace(
        &mut self,
        request: namespace::Request,
        defaults: &namespace::Settings,
    ) -> Result<(Changed, String)> {
        let serving = self
            .view()
            .members
            .values()
            .filter(|m| m.status.is_active())
            .count();
        let done = namespace::change(
            &mut self.known.edit().namespaces,
            request,
            defaults,
            serving,
            &self.me,
        )?;
        let changed = Changed {
            view: true,
            liveness: false,
        };
        Ok((changed, done))
    }

    /// Drops a dead member from the ring: its partitions go to the others,
    /// who rebuild them from the surviving replicas.
    pub fn remove(&mut self, node: &NodeId) -> Result<Changed> {
        if *node == self.me {
            return Err(Error::InvalidRequest(
                "a node cannot remove itself; use leave".into(),
            ));
        }
        let Some(m) = self.known.edit().members.get_mut(node) else {
            return Err(Error::InvalidRequest(format!("{node} is not a member")));
        };
        if !m.status.is_live() {
            return Err(Error::InvalidRequest(format!(
                "{node} is already {}",
                m.status.as_str()
            )));
        }
        m.status = Status::Removed;
        m.version += 1;
        self.detector.forget(node);
        self.settle();
        Ok(Changed {
            view: true,
            liveness: true,
        })
    }

    /// This node holds the data of every partition moving to it: it owns
    /// them now.
    pub fn commit_incoming(&mut self) -> Changed {
        let me = self.me.clone();
        let Some(table) = self.known.edit().ownership.as_mut() else {
            return Changed::default();
        };
        let incoming = table.incoming(&me);
        let done = table.commit(&me, &incoming);
        if done.is_empty() {
            return Changed::default();
        }
        self.settle();
        Changed {
            view: true,
            liveness: false,
        }
    }

    /// A leaving node that owns nothing any more (and, the caller checked,
    /// holds no data) has left.
    pub fn mark_left(&mut self) -> Changed {
        let me = self.me.clone();
        let owns = self.view().ownership.as_ref().is_some_and(|t| {
            t.entries()
                .iter()
                .any(|e| e.owner == me || e.next.as_ref() == Some(&me))
        });
        let rec = self.my_record();
        if rec.status != Status::Leaving || owns {
            return Changed::default();
        }
        rec.status = Status::Left;
        rec.version += 1;
        Changed {
            view: true,
            liveness: false,
        }
    }
}

#[cfg(test)]
mod tests;

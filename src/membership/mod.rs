//! Membership: who is in the cluster, and the partition ownership table.
//!
//! The view (`crate::view`, a CRDT) is gossiped push-pull with one random
//! peer per interval, with every node's heartbeat for failure detection.
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

use std::collections::BTreeMap;

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipMsg {
    /// The sender's view and heartbeat counters; the receiver merges them
    /// and answers with `Reply` carrying its own.
    Push {
        view: View,
        heartbeats: Heartbeats,
    },
    Reply {
        view: View,
        heartbeats: Heartbeats,
    },
    /// The sender is stopping (to restart, or for good): route around it
    /// now rather than once its heartbeat goes stale. Protocol 5.
    Stopping,
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

/// This node's membership state machine.
#[derive(Debug, Clone)]
pub struct Membership {
    me: NodeId,
    n: usize,
    seeds: Vec<String>,
    view: View,
    detector: FailureDetector,
    /// Whether this node takes part in the cluster: from the start with
    /// `auto_join` (or a persisted view), else once told to `join`.
    enabled: bool,
    /// This node is stopping and told its peers (`stop`): it gossips no
    /// more and takes no gossip, either of which would tell them it is up.
    stopping: bool,
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
}

impl Membership {
    /// Starts from a persisted view if there is one. This node's own record
    /// is refreshed from the settings (addresses and weight may have changed
    /// in the config) with a higher version.
    pub fn new(settings: Settings, persisted: Option<View>, now: u64) -> Self {
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
            detector: FailureDetector::new(id.clone(), settings.suspect_after, settings.down_after),
            me: id,
            n: settings.n,
            seeds,
            view,
            enabled,
            stopping: false,
        };
        membership.track_members(now);
        membership.settle();
        membership
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.view.members.get(id)
    }

    /// This node's belief about a member's health.
    pub fn health(&self, id: &NodeId) -> Health {
        self.detector.health(id)
    }

    /// This node's belief about every member's health.
    pub fn health_map(&self) -> BTreeMap<NodeId, Health> {
        self.view
            .members
            .keys()
            .map(|id| (id.clone(), self.detector.health(id)))
            .collect()
    }

    /// Seeds that are not yet known as members.
    fn unknown_seeds(&self) -> Vec<&String> {
        self.seeds
            .iter()
            .filter(|s| !self.view.members.values().any(|m| &m.peer_addr == *s))
            .collect()
    }

    fn track_members(&mut self, now: u64) {
        for (id, m) in &self.view.members {
            if matches!(m.status, Status::Left | Status::Removed) {
                self.detector.forget(id);
            } else {
                self.detector.track(id, now);
            }
        }
    }

    fn push(&self) -> GossipMsg {
        GossipMsg::Push {
            view: self.view.clone(),
            heartbeats: self.detector.heartbeats(),
        }
    }

    /// One gossip round at time `now`: beat, apply the failure detector's
    /// timeouts, and push the view to a random peer (a known member, or a
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
        let mut candidates: Vec<Destination> = self
            .view
            .members
            .values()
            .filter(|m| m.id != self.me && !matches!(m.status, Status::Left | Status::Removed))
            .map(|m| Destination::Node(m.id.clone()))
            .collect();
        let unknown: Vec<Destination> = self
            .unknown_seeds()
            .into_iter()
            .map(|s| Destination::Addr(s.clone()))
            .collect();
        // A random known member, as every round; and until the cluster is
        // founded, every seed not yet known too (founding waits for them).
        let mut out: Vec<Destination> = Vec::new();
        if !candidates.is_empty() {
            out.push(candidates.swap_remove((rand % candidates.len() as u64) as usize));
        }
        if self.view.ownership.is_none() {
            out.extend(unknown);
        } else if out.is_empty() || rand.is_multiple_of(2) {
            // Founded: now and then try a seed we lost track of.
            out.extend(unknown.into_iter().take(1));
        }
        let out = out
            .into_iter()
            .map(|to| Outgoing {
                to,
                msg: self.push(),
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
        self.view
            .members
            .values()
            .filter(|m| m.id != self.me && m.status.is_live() && self.detector.is_up(&m.id))
            .map(|m| m.id.clone())
            .collect()
    }

    /// A request to `peer` failed (refused, lost, or unanswered in time).
    pub fn on_unreachable(&mut self, peer: &NodeId) -> Changed {
        Changed {
            view: false,
            liveness: self.detector.failed(peer).is_some(),
        }
    }

    /// `peer` accepted a connection: it is up.
    pub fn on_reachable(&mut self, peer: &NodeId, now: u64) -> Changed {
        Changed {
            view: false,
            liveness: self.detector.reached(peer, now).is_some(),
        }
    }

    /// Takes a gossip message from `from` at time `now`. Returns the answer
    /// to send (if any) and what changed.
    pub fn on_gossip(
        &mut self,
        from: &NodeId,
        msg: GossipMsg,
        now: u64,
    ) -> Result<(Option<Outgoing>, Changed)> {
        if self.stopping {
            return Err(Error::Unavailable("this node is stopping".into()));
        }
        let (view, heartbeats, push) = match msg {
            GossipMsg::Push { view, heartbeats } => (view, heartbeats, true),
            GossipMsg::Reply { view, heartbeats } => (view, heartbeats, false),
            GossipMsg::Stopping => {
                let changed = Changed {
                    view: false,
                    liveness: self.detector.stopped(from).is_some(),
                };
                return Ok((None, changed));
            }
        };
        if self.view.is_fenced(from) {
            return Err(Error::Removed(format!(
                "{from} left or was removed; its gossip is refused"
            )));
        }
        view.validate(&self.view.cluster, self.view.partitions)?;
        if heartbeats.len() > MAX_MEMBERS {
            return Err(Error::Malformed(format!("{} heartbeats", heartbeats.len())));
        }
        self.check_identity(from, &view)?;
        let mut changed = Changed {
            view: self.view.merge(&view)?,
            liveness: false,
        };
        if changed.view {
            self.track_members(now);
            self.settle();
        }
        changed.liveness |= !self.detector.observe(&heartbeats, now).is_empty();
        changed.liveness |= self.detector.reached(from, now).is_some();
        let reply = push.then(|| Outgoing {
            to: Destination::Node(from.clone()),
            msg: GossipMsg::Reply {
                view: self.view.clone(),
                heartbeats: self.detector.heartbeats(),
            },
        });
        Ok((reply, changed))
    }

    /// Rejects views that would let one node pass for another.
    fn check_identity(&mut self, from: &NodeId, view: &View) -> Result<()> {
        if let Some(claimed) = view.members.get(&self.me) {
            let mine = &self.view.members[&self.me];
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
                let me = self
                    .view
                    .members
                    .get_mut(&self.me)
                    .expect("own record is always present");
                me.version = version;
            }
        }
        if let (Some(sender), Some(known)) = (view.members.get(from), self.view.members.get(from))
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
        for m in view.members.values() {
            if self.view.members.contains_key(&m.id) || !m.status.is_live() {
                continue;
            }
            if let Some(holder) = self.view.members.values().find(|k| {
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
        if self.view.ownership.is_none() {
            if !self.unknown_seeds().is_empty() {
                return Vec::new();
            }
            let members = self.view.active();
            match Ownership::found(self.view.partitions, &members, self.n) {
                Ok(table) => self.view.ownership = Some(table),
                Err(_) => return Vec::new(),
            }
        }
        let moves = self.claim();
        self.mark_up_if_owning();
        moves
    }

    /// Begins the planned moves whose receiver is this node.
    fn claim(&mut self) -> Vec<Move> {
        let active = self.view.active();
        let Some(table) = self.view.ownership.as_mut() else {
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
        let Some(table) = &self.view.ownership else {
            return;
        };
        let owns = table.entries().iter().any(|e| e.owner == self.me);
        let incoming = !table.incoming(&self.me).is_empty();
        let me = self
            .view
            .members
            .get_mut(&self.me)
            .expect("own record is always present");
        if me.status == Status::Joining && owns && !incoming {
            me.status = Status::Up;
            me.version += 1;
        }
    }

    /// The view, its ring and this node's belief about every member's
    /// health, for the drivers.
    pub fn topology(&self) -> Topology {
        Topology::new(self.view.clone(), self.health_map())
    }

    /// The ring of the current view, once a table exists.
    pub fn ring(&self) -> Option<Ring> {
        self.view.ring()
    }

    /// Whether this node takes part in the cluster yet.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether this node left or was removed: it takes no part any more
    /// (no gossip, no replicas, no clients) and its id is retired.
    pub fn is_fenced(&self) -> bool {
        self.view.is_fenced(&self.me)
    }

    /// Who this node takes peer requests from, under the current view.
    pub fn admission(&self) -> Admission {
        Admission::new(&self.view, &self.me)
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
        let mine = &self.view.members[&self.me];
        if !record.supersedes(mine) {
            return Ok(Changed::default());
        }
        self.view.members.insert(self.me.clone(), record);
        Ok(Changed {
            view: true,
            liveness: false,
        })
    }

    fn my_record(&mut self) -> &mut Member {
        self.view
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
        if self.view.members[&self.me].status.is_live()
            && self.enabled
            && self.view.ownership.is_some()
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
        self.view.check_leave(&self.me)?;
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
            .view
            .members
            .values()
            .filter(|m| m.status.is_active())
            .count();
        let done = namespace::change(
            &mut self.view.namespaces,
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
        let Some(m) = self.view.members.get_mut(node) else {
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
        let Some(table) = self.view.ownership.as_mut() else {
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
        let owns = self.view.ownership.as_ref().is_some_and(|t| {
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

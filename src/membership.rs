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
mod tests {
    use super::*;

    fn settings(i: usize, seeds: &[usize]) -> Settings {
        Settings {
            me: Member {
                id: NodeId::new(format!("n{i}")).unwrap(),
                peer_addr: format!("127.0.0.1:{}", 7100 + i),
                client_addr: format!("127.0.0.1:{}", 7000 + i),
                weight: 1,
                status: Status::Joining,
                version: 0,
            },
            cluster: "test".into(),
            partitions: 64,
            n: 3,
            seeds: seeds
                .iter()
                .map(|s| format!("127.0.0.1:{}", 7100 + s))
                .collect(),
            suspect_after: 3000,
            down_after: 10_000,
            auto_join: true,
        }
    }

    fn push(view: View) -> GossipMsg {
        GossipMsg::Push {
            view,
            heartbeats: Heartbeats::new(),
        }
    }

    /// Delivers every message until none are left; addresses resolve to
    /// the node listening there.
    fn run(nodes: &mut [Membership], mut queue: Vec<(NodeId, Outgoing)>) {
        let mut steps = 0;
        while let Some((from, out)) = queue.pop() {
            steps += 1;
            assert!(steps < 10_000, "gossip does not quiesce");
            let to = match &out.to {
                Destination::Node(id) => id.clone(),
                Destination::Addr(a) => nodes
                    .iter()
                    .find(|n| &n.view.members[&n.me].peer_addr == a)
                    .unwrap()
                    .me
                    .clone(),
            };
            let node = nodes.iter_mut().find(|n| n.me == to).unwrap();
            let (reply, _) = node.on_gossip(&from, out.msg, 0).unwrap();
            if let Some(r) = reply {
                queue.push((to, r));
            }
        }
    }

    fn rounds(nodes: &mut [Membership], count: u64) {
        for round in 0..count {
            for i in 0..nodes.len() {
                let me = nodes[i].me.clone();
                let (out, _) = nodes[i].tick(round * 100, round * 7 + i as u64);
                run(nodes, out.into_iter().map(|o| (me.clone(), o)).collect());
            }
        }
    }

    #[test]
    fn nodes_started_with_the_same_seeds_found_identical_tables() {
        let mut nodes: Vec<Membership> = (1..=3)
            .map(|i| Membership::new(settings(i, &[1, 2, 3]), None, 0))
            .collect();
        assert!(
            nodes.iter().all(|n| n.ring().is_none()),
            "no table before the seeds are known"
        );
        rounds(&mut nodes, 3);
        let views: Vec<&View> = nodes.iter().map(|n| n.view()).collect();
        assert!(views.windows(2).all(|w| w[0] == w[1]), "views differ");
        assert!(views[0].members.values().all(|m| m.status == Status::Up));
        let ring = nodes[0].ring().unwrap();
        assert_eq!(ring.owned_counts().len(), 3);
    }

    #[test]
    fn a_stopping_node_tells_its_peers_which_hold_it_down_and_it_goes_quiet() {
        let mut nodes: Vec<Membership> = (1..=3)
            .map(|i| Membership::new(settings(i, &[1, 2, 3]), None, 0))
            .collect();
        rounds(&mut nodes, 3);
        let n1 = nodes[0].me.clone();
        let told = nodes[0].stop();
        assert_eq!(told, vec![nodes[1].me.clone(), nodes[2].me.clone()]);
        assert!(nodes[0].is_stopping());
        let (out, _) = nodes[0].tick(1_000, 1);
        assert!(out.is_empty(), "a stopping node gossips no more");
        let (n2, from_n2) = (nodes[1].me.clone(), push(nodes[1].view().clone()));
        assert!(nodes[0].on_gossip(&n2, from_n2, 1_000).is_err());
        let (reply, changed) = nodes[1].on_gossip(&n1, GossipMsg::Stopping, 1_000).unwrap();
        assert!(reply.is_none() && changed.liveness);
        assert_eq!(nodes[1].health_map()[&n1], Health::Down);
        // Gossip from the third node relaying a newer heartbeat of n1 does
        // not bring it back.
        let relayed = GossipMsg::Push {
            view: nodes[2].view().clone(),
            heartbeats: [(n1.clone(), 1_000)].into_iter().collect(),
        };
        let n3 = nodes[2].me.clone();
        nodes[1].on_gossip(&n3, relayed, 1_100).unwrap();
        assert_eq!(nodes[1].health_map()[&n1], Health::Down);
        // Direct gossip from n1 (restarted) does.
        let direct = push(nodes[0].view().clone());
        nodes[1].on_gossip(&n1, direct, 1_200).unwrap();
        assert_eq!(nodes[1].health_map()[&n1], Health::Up);
    }

    #[test]
    fn a_leave_that_would_leave_fewer_members_than_a_namespaces_n_is_refused() {
        let mut nodes: Vec<Membership> = (1..=3)
            .map(|i| Membership::new(settings(i, &[1, 2, 3]), None, 0))
            .collect();
        rounds(&mut nodes, 3);
        let defaults = namespace::test_settings(3);
        let wide = namespace::Request::Create {
            name: "wide".into(),
            changes: namespace::Changes::default(),
        };
        nodes[0].namespace(wide, &defaults).unwrap();
        let e = nodes[0].leave().unwrap_err();
        assert!(
            e.to_string().contains(
                "leaving would leave 2 serving members, fewer than namespace wide's n = 3: lower it first (dynakv ns alter wide --n 2)"
            ),
            "{e}"
        );
        assert_eq!(nodes[0].member(nodes[0].me()).unwrap().status, Status::Up);
        let narrow = namespace::Request::Alter {
            name: "wide".into(),
            changes: namespace::Changes {
                n: Some(2),
                ..namespace::Changes::default()
            },
        };
        nodes[0].namespace(narrow, &defaults).unwrap();
        nodes[0].leave().unwrap();
        assert_eq!(
            nodes[0].member(nodes[0].me()).unwrap().status,
            Status::Leaving
        );
    }

    #[test]
    fn a_lone_node_founds_at_once() {
        let m = Membership::new(settings(1, &[]), None, 0);
        assert!(m.ring().is_some());
        assert_eq!(m.member(m.me()).unwrap().status, Status::Up);
    }

    #[test]
    fn a_later_node_claims_its_share_as_pending_moves() {
        let mut nodes = vec![Membership::new(settings(1, &[]), None, 0)];
        nodes.push(Membership::new(settings(2, &[1]), None, 0));
        rounds(&mut nodes, 3);
        let table = nodes[0].view().ownership.clone().unwrap();
        let incoming = table.incoming(nodes[1].me());
        assert_eq!(
            incoming.len(),
            32,
            "half of 64 partitions, pending until handed off"
        );
        assert_eq!(
            nodes[1].member(nodes[1].me()).unwrap().status,
            Status::Joining
        );
        assert_eq!(nodes[0].view(), nodes[1].view());
    }

    #[test]
    fn a_restart_keeps_the_view_and_refreshes_its_record() {
        let m = Membership::new(settings(1, &[]), None, 0);
        let persisted = m.view().clone();
        let mut s = settings(1, &[]);
        s.me.client_addr = "127.0.0.1:9999".into();
        let again = Membership::new(s, Some(persisted.clone()), 0);
        let rec = again.member(again.me()).unwrap();
        assert_eq!(rec.client_addr, "127.0.0.1:9999");
        assert!(rec.version > persisted.members[again.me()].version);
        assert_eq!(again.view().ownership, persisted.ownership);
    }

    #[test]
    fn a_stale_own_record_after_a_restart_is_outranked() {
        let mut a = Membership::new(settings(1, &[]), None, 0);
        let mut gossip = a.view().clone();
        gossip.members.get_mut(a.me()).unwrap().version += 3;
        let stale_version = gossip.members[a.me()].version;
        let from = NodeId::new("n2").unwrap();
        a.on_gossip(&from, push(gossip), 0).unwrap();
        assert!(a.member(a.me()).unwrap().version > stale_version);
        assert_eq!(a.member(a.me()).unwrap().status, Status::Up);
    }

    #[test]
    fn bad_gossip_is_rejected_and_leaves_the_view_alone() {
        let mut a = Membership::new(settings(1, &[]), None, 0);
        let before = a.view().clone();
        let from = NodeId::new("n9").unwrap();
        let stranger = |peer: &str, client: &str| Member {
            id: from.clone(),
            peer_addr: peer.into(),
            client_addr: client.into(),
            weight: 1,
            status: Status::Up,
            version: 1,
        };

        let mut other_cluster = before.clone();
        other_cluster.cluster = "else".into();
        let mut own_record_elsewhere = before.clone();
        let me = own_record_elsewhere.members.get_mut(a.me()).unwrap();
        me.version += 5;
        me.peer_addr = "10.0.0.9:7101".into();
        let mut bad_addr = before.clone();
        bad_addr
            .members
            .insert(from.clone(), stranger("nowhere", "127.0.0.1:1"));
        // a new id at the address of a live member
        let mut address_thief = before.clone();
        address_thief
            .members
            .insert(from.clone(), stranger("127.0.0.1:7101", "10.0.0.9:1"));
        let mut wrong_q = before.clone();
        wrong_q.partitions = 128;
        let mut unknown_owner = before.clone();
        let mut table = unknown_owner.ownership.clone().unwrap();
        let mut entries = table.entries().to_vec();
        entries[0].owner = NodeId::new("ghost").unwrap();
        entries[0].epoch = 99;
        table = Ownership::from_entries(entries).unwrap();
        unknown_owner.ownership = Some(table);

        for (what, view) in [
            ("another cluster", other_cluster),
            ("our id at another address", own_record_elsewhere),
            ("an unparseable address", bad_addr),
            ("a live member's address", address_thief),
            ("another partition count", wrong_q),
            ("an owner that is not a member", unknown_owner),
        ] {
            let e = a.on_gossip(&from, push(view), 0);
            assert!(e.is_err(), "{what} was accepted");
        }
        // more members or heartbeats than any cluster may have
        let mut crowd = before.clone();
        for i in 0..=MAX_MEMBERS {
            let id = NodeId::new(format!("m{i}")).unwrap();
            let member = Member {
                id: id.clone(),
                peer_addr: format!("10.1.{}.{}:7100", i / 250, i % 250),
                client_addr: format!("10.1.{}.{}:7000", i / 250, i % 250),
                ..stranger("", "")
            };
            crowd.members.insert(id, member);
        }
        assert!(a.on_gossip(&from, push(crowd), 0).is_err(), "a crowd");
        let heartbeats = (0..=MAX_MEMBERS)
            .map(|i| (NodeId::new(format!("m{i}")).unwrap(), 1))
            .collect();
        let noisy = GossipMsg::Push {
            view: before.clone(),
            heartbeats,
        };
        assert!(a.on_gossip(&from, noisy, 0).is_err(), "too many heartbeats");
        assert_eq!(a.view(), &before);
        // a well-formed newcomer is accepted
        let mut fine = before.clone();
        fine.members
            .insert(from.clone(), stranger("127.0.0.1:7109", "127.0.0.1:7009"));
        assert!(a.on_gossip(&from, push(fine), 0).unwrap().1.view);
    }

    #[test]
    fn heartbeats_in_gossip_keep_peers_up_and_silence_takes_them_down() {
        let mut nodes: Vec<Membership> = (1..=3)
            .map(|i| Membership::new(settings(i, &[1, 2, 3]), None, 0))
            .collect();
        rounds(&mut nodes, 3);
        let n3 = nodes[2].me().clone();
        assert_eq!(nodes[0].health(&n3), Health::Up);
        // node 3 falls silent; nodes 1 and 2 keep gossiping with each other
        let mut alive: Vec<Membership> = nodes[..2].to_vec();
        let mut seen = Vec::new();
        let mut now = 300;
        while now < 16_000 {
            now += 100;
            for i in 0..2 {
                let (me, other) = (alive[i].me().clone(), alive[1 - i].me().clone());
                let (out, _) = alive[i].tick(now, now);
                for o in out
                    .into_iter()
                    .filter(|o| o.to == Destination::Node(other.clone()))
                {
                    let (reply, _) = alive[1 - i].on_gossip(&me, o.msg, now).unwrap();
                    let reply = reply.unwrap();
                    alive[i].on_gossip(&other, reply.msg, now).unwrap();
                }
            }
            seen.push(alive[0].health(&n3));
        }
        assert!(seen.contains(&Health::Suspect), "suspect before down");
        assert_eq!(alive[0].health(&n3), Health::Down);
        assert_eq!(
            alive[0].health(alive[1].me()),
            Health::Up,
            "the live peer stays up"
        );
        assert_eq!(alive[0].health_map()[&n3], Health::Down);

        // node 3 speaks again: its newer heartbeat brings it back up
        let mut back = nodes[2].clone();
        back.tick(now, 0);
        let push = GossipMsg::Push {
            view: back.view().clone(),
            heartbeats: back.detector.heartbeats(),
        };
        let (_, changed) = alive[0].on_gossip(&n3, push, now).unwrap();
        assert!(changed.liveness);
        assert_eq!(alive[0].health(&n3), Health::Up);
        // a failed request suspects it at once
        assert!(alive[0].on_unreachable(&n3).liveness);
        assert_eq!(alive[0].health(&n3), Health::Suspect);
        assert!(alive[0].on_reachable(&n3, now).liveness);
    }

    /// Three nodes; n3 is removed by n1 while n3 is away, with n3's own
    /// record at a higher version than n1 knew (it restarted often).
    fn removed_while_away() -> (Vec<Membership>, View) {
        let mut nodes: Vec<Membership> = (1..=3)
            .map(|i| Membership::new(settings(i, &[1, 2, 3]), None, 0))
            .collect();
        rounds(&mut nodes, 3);
        let mut away = nodes.pop().unwrap();
        // Restarts with new addresses bump its record past what n1 saw.
        let mut stale = away.view().clone();
        stale.members.get_mut(away.me()).unwrap().version += 10;
        away.view = stale.clone();
        nodes[0].remove(away.me()).unwrap();
        rounds(&mut nodes, 2);
        (nodes, stale)
    }

    #[test]
    fn a_removal_wins_over_any_older_record_of_the_removed_node() {
        let (mut nodes, stale) = removed_while_away();
        let gone = NodeId::new("n3").unwrap();
        assert!(stale.members[&gone].version > nodes[1].view().members[&gone].version);
        // Gossip relayed from a node that still holds the stale record
        // cannot bring n3 back.
        let from = NodeId::new("n1").unwrap();
        nodes[1].on_gossip(&from, push(stale), 0).unwrap();
        assert_eq!(nodes[1].view().members[&gone].status, Status::Removed);
        assert!(nodes[1].view().is_fenced(&gone));
        assert!(!nodes[1].is_fenced());
        assert_eq!(
            nodes[1]
                .admission()
                .check(&gone)
                .map_err(|r| matches!(r, crate::fencing::Refusal::Fenced(_))),
            Err(true)
        );
    }

    #[test]
    fn a_removed_node_learns_from_a_refusal_and_stops_gossiping() {
        let (nodes, stale) = removed_while_away();
        let gone = NodeId::new("n3").unwrap();
        let mut back = Membership::new(settings(3, &[1, 2, 3]), Some(stale), 0);
        assert!(!back.is_fenced());
        let (out, _) = back.tick(0, 1);
        assert!(!out.is_empty(), "it gossips until it learns");

        // Its gossip is refused, with its record from the refusing view.
        let record = nodes[0].view().members[&gone].clone();
        let from = NodeId::new("n3").unwrap();
        let mut n1 = nodes[0].clone();
        assert_eq!(
            n1.on_gossip(&from, push(back.view().clone()), 0)
                .map_err(|e| e.kind()),
            Err(crate::ErrorKind::Removed)
        );
        // Only its own final record counts as a refusal.
        let mut other = record.clone();
        other.id = NodeId::new("n2").unwrap();
        assert!(back.on_fenced(other).is_err());
        let mut up = record.clone();
        up.status = Status::Up;
        assert!(back.on_fenced(up).is_err());

        let changed = back.on_fenced(record).unwrap();
        assert!(changed.view && back.is_fenced());
        assert!(back.admission().me_fenced());
        let (out, _) = back.tick(100, 1);
        assert!(out.is_empty(), "a removed node gossips no more");
        assert!(back.join("127.0.0.1:7101".into()).is_err());
        // A restart on that view stays out.
        let again = Membership::new(settings(3, &[1, 2, 3]), Some(back.view().clone()), 0);
        assert!(again.is_fenced());
    }

    #[test]
    fn five_nodes_converge_to_one_view_and_one_ring() {
        let mut nodes: Vec<Membership> = (1..=5)
            .map(|i| Membership::new(settings(i, &[1, 2, 3, 4, 5]), None, 0))
            .collect();
        let mut rounds_needed = 0;
        while rounds_needed < 20 {
            rounds(&mut nodes, 1);
            rounds_needed += 1;
            let views: Vec<&View> = nodes.iter().map(|n| n.view()).collect();
            if views[0].ownership.is_some() && views.windows(2).all(|w| w[0] == w[1]) {
                break;
            }
        }
        assert!(rounds_needed <= 3, "took {rounds_needed} rounds");
        let rings: Vec<Ring> = nodes.iter().map(|n| n.ring().unwrap()).collect();
        assert!(rings.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(rings[0].owned_counts().len(), 5);
    }

    #[test]
    fn nodes_waiting_for_a_missing_seed_keep_each_other_alive() {
        // node 4 is a seed of everyone but never starts: no table is founded,
        // yet the three others keep exchanging heartbeats
        let mut nodes: Vec<Membership> = (1..=3)
            .map(|i| Membership::new(settings(i, &[1, 2, 3, 4]), None, 0))
            .collect();
        for round in 0..100u64 {
            let now = round * 100;
            for i in 0..3 {
                let me = nodes[i].me().clone();
                let (out, _) = nodes[i].tick(now, round * 3 + i as u64);
                for o in out {
                    let to = match &o.to {
                        Destination::Node(id) => id.clone(),
                        Destination::Addr(a) => {
                            match nodes.iter().find(|n| &n.view.members[&n.me].peer_addr == a) {
                                Some(n) => n.me.clone(),
                                None => continue, // the missing seed
                            }
                        }
                    };
                    let j = nodes.iter().position(|n| n.me == to).unwrap();
                    let (reply, _) = nodes[j].on_gossip(&me, o.msg, now).unwrap();
                    if let Some(r) = reply {
                        nodes[i].on_gossip(&to, r.msg, now).unwrap();
                    }
                }
            }
        }
        assert!(
            nodes.iter().all(|n| n.ring().is_none()),
            "no founding without every seed"
        );
        for n in &nodes {
            for other in &nodes {
                assert_eq!(
                    n.health(other.me()),
                    Health::Up,
                    "{} sees {} as down",
                    n.me(),
                    other.me()
                );
            }
        }
    }
}

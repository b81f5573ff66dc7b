//! Failure detection: which peers this node currently believes are up.
//!
//! The work and the bytes it costs a node per round do not grow with the
//! cluster (SWIM's suspicion and refutation, carried by gossip's digests):
//! - *probes*: each gossip round is an exchange with one random peer, and
//!   doubles as a probe of it. A peer that leaves a probe unanswered for
//!   `suspect_after` is *suspected*. (One that a request failed to reach,
//!   as the shell reports, is suspect here only.)
//! - *reports*: every node keeps a `Report` per member, its incarnation
//!   and whether it is suspected at it, merged by keeping the later
//!   (`supersedes`). Reports are part of what gossip's digests compare, so
//!   a suspicion reaches every node as a view change does, in O(log n)
//!   rounds, and never dies out on the way. A node that receives a
//!   suspicion of itself refutes it: it takes a higher incarnation, whose
//!   report wins everywhere.
//! - *timeouts*: a suspicion not lifted for `down_after - suspect_after`
//!   makes the peer `Down`. Only suspected peers are looked at.
//! - *direct contact*: a message from the peer, or a connection to it,
//!   makes it `Up` here at once.
//!
//! Incarnations start at the process's start time (the shell's wall clock,
//! in ms), so a restarted node outranks every suspicion of its earlier run.
//!
//! Peers that gossip protocol 6 carry heartbeat counters instead
//! (`Heartbeats`): an advancing counter counts as contact, and they are
//! given every counter this node knows (its own advances every round).
//! Liveness only changes routing (which nodes take a request), never
//! ownership: the ring does not look at it.
//!
//! Time is an input (`now`, milliseconds on any monotonic clock).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::node::NodeId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Health {
    Up,
    Suspect,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Suspect => "suspect",
            Health::Down => "down",
        }
    }
}

/// Heartbeat counters by node, as protocol 6 gossip carries them.
pub type Heartbeats = BTreeMap<NodeId, u64>;

/// What the cluster says of one member's liveness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub incarnation: u64,
    /// Suspected at `incarnation`.
    pub suspect: bool,
}

impl Report {
    /// The merge order: a later incarnation, then a suspicion of the same.
    pub fn supersedes(&self, other: &Report) -> bool {
        (self.incarnation, self.suspect) > (other.incarnation, other.suspect)
    }
}

#[derive(Debug, Clone)]
struct Peer {
    report: Report,
    heartbeat: u64,
    /// This node's belief, which direct contact can make `Up` whatever
    /// the report says.
    health: Health,
    /// Since when this node holds it suspected.
    since: u64,
    /// It said it is stopping: only direct contact or a later incarnation
    /// brings it back (counters others relay are from before it stopped).
    stopped: bool,
}

#[derive(Debug, Clone)]
pub struct FailureDetector {
    me: NodeId,
    suspect_after: u64,
    down_after: u64,
    own: Report,
    heartbeat: u64,
    peers: BTreeMap<NodeId, Peer>,
    /// Peers held suspected now: all that `tick` looks at.
    suspects: BTreeSet<NodeId>,
    /// Probes not answered yet: when the first was sent.
    probes: BTreeMap<NodeId, u64>,
    /// Bumped on every change of a report: what a cache of them keys on.
    changes: u64,
}

impl FailureDetector {
    /// `incarnation`: this run's, above every earlier run's (the shells use
    /// the start time).
    pub fn new(me: NodeId, suspect_after: u64, down_after: u64, incarnation: u64) -> Self {
        FailureDetector {
            me,
            suspect_after,
            down_after: down_after.max(suspect_after),
            own: Report {
                incarnation,
                suspect: false,
            },
            heartbeat: incarnation,
            peers: BTreeMap::new(),
            suspects: BTreeSet::new(),
            probes: BTreeMap::new(),
            changes: 0,
        }
    }

    /// Starts tracking `peer` (a new member): up until shown otherwise.
    pub fn track(&mut self, peer: &NodeId) {
        if *peer != self.me && !self.peers.contains_key(peer) {
            self.peers.insert(
                peer.clone(),
                Peer {
                    report: Report::default(),
                    heartbeat: 0,
                    health: Health::Up,
                    since: 0,
                    stopped: false,
                },
            );
            self.changes += 1;
        }
    }

    pub fn forget(&mut self, peer: &NodeId) {
        if self.peers.remove(peer).is_some() {
            self.changes += 1;
        }
        self.suspects.remove(peer);
        self.probes.remove(peer);
    }

    /// Advances this node's heartbeat (once per gossip round).
    pub fn beat(&mut self) {
        self.heartbeat += 1;
    }

    pub fn heartbeat(&self) -> u64 {
        self.heartbeat
    }

    pub fn incarnation(&self) -> u64 {
        self.own.incarnation
    }

    /// A probe (a gossip exchange) went to `peer` at `now`.
    pub fn probed(&mut self, peer: &NodeId, now: u64) {
        if self.peers.contains_key(peer) {
            self.probes.entry(peer.clone()).or_insert(now);
        }
    }

    /// The probe of `peer` went unanswered for a reason that says nothing
    /// about it (it could not read the message): no evidence either way.
    pub fn cancel_probe(&mut self, peer: &NodeId) {
        self.probes.remove(peer);
    }

    /// Every report this node holds, its own included, in id order.
    pub fn reports(&self) -> Vec<(NodeId, Report)> {
        let mut all: Vec<(NodeId, Report)> = self
            .peers
            .iter()
            .map(|(id, p)| (id.clone(), p.report))
            .collect();
        let at = all.partition_point(|(id, _)| *id < self.me);
        all.insert(at, (self.me.clone(), self.own));
        all
    }

    /// Grows with every change of a report (a cache of them keys on it).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Merges reports from a peer at `now`. Returns the peers whose health
    /// changed here.
    pub fn merge(&mut self, reports: &[(NodeId, Report)], now: u64) -> Vec<(NodeId, Health)> {
        let mut changed = Vec::new();
        for (id, theirs) in reports {
            if *id == self.me {
                // Refute a suspicion of this incarnation with a higher one;
                // take a later one of this node's own (it refuted before a
                // restart of this state machine), so the reports agree.
                let floor = theirs.incarnation + u64::from(theirs.suspect);
                if floor > self.own.incarnation {
                    self.own.incarnation = floor;
                    self.changes += 1;
                }
                continue;
            }
            let Some(p) = self.peers.get_mut(id) else {
                continue;
            };
            if !theirs.supersedes(&p.report) {
                continue;
            }
            let lifted = p.report.incarnation < theirs.incarnation;
            p.report = *theirs;
            self.changes += 1;
            if theirs.suspect {
                p.since = now;
                self.suspects.insert(id.clone());
                if p.health == Health::Up {
                    p.health = Health::Suspect;
                    changed.push((id.clone(), Health::Suspect));
                }
            } else if lifted && (p.health != Health::Up || p.stopped) {
                p.stopped = false;
                self.suspects.remove(id);
                if p.health != Health::Up {
                    p.health = Health::Up;
                    changed.push((id.clone(), Health::Up));
                }
            }
        }
        changed
    }

    /// A message from `peer` (whose heartbeat is `heartbeat`) arrived:
    /// direct contact. Returns its new health if that changed.
    pub fn heard(&mut self, peer: &NodeId, heartbeat: u64) -> Option<Health> {
        let p = self.peers.get_mut(peer)?;
        p.heartbeat = p.heartbeat.max(heartbeat);
        self.probes.remove(peer);
        if p.stopped {
            // An answer sent before its stop notice, arriving after it.
            // Its next run's report (a later incarnation) lifts the stop,
            // and so does a new connection to it.
            return None;
        }
        self.reached(peer)
    }

    /// Counters from a protocol 6 peer's gossip: an advancing one counts
    /// as contact. Returns the peers whose health changed.
    pub fn observe(&mut self, beats: &Heartbeats) -> Vec<(NodeId, Health)> {
        let mut changed = Vec::new();
        for (id, &beat) in beats {
            let Some(p) = self.peers.get_mut(id) else {
                continue;
            };
            if beat <= p.heartbeat {
                continue;
            }
            p.heartbeat = beat;
            if !p.stopped
                && let Some(h) = self.reached(id)
            {
                changed.push((id.clone(), h));
            }
        }
        changed
    }

    /// Every counter this node knows, its own included, for protocol 6
    /// peers.
    pub fn heartbeats(&self) -> Heartbeats {
        let mut beats: Heartbeats = self
            .peers
            .iter()
            .filter(|(_, p)| p.heartbeat > 0)
            .map(|(id, p)| (id.clone(), p.heartbeat))
            .collect();
        beats.insert(self.me.clone(), self.heartbeat);
        beats
    }

    /// A request to `peer` failed: suspect it here, now. (A connection
    /// that failed once is no news for the whole cluster; an unanswered
    /// probe is.)
    pub fn failed(&mut self, peer: &NodeId, now: u64) -> Option<Health> {
        let p = self.peers.get_mut(peer)?;
        if p.health != Health::Up {
            return None;
        }
        p.since = now;
        p.health = Health::Suspect;
        self.suspects.insert(peer.clone());
        Some(Health::Suspect)
    }

    /// A probe of `peer` went unanswered: suspect it, and let gossip tell
    /// the others (its report says so until it refutes it).
    fn unanswered(&mut self, peer: &NodeId, now: u64) -> Option<Health> {
        let p = self.peers.get_mut(peer)?;
        if !p.report.suspect {
            p.report.suspect = true;
            self.changes += 1;
        }
        self.failed(peer, now)
    }

    /// `peer` said it is stopping: it is down until it is heard from
    /// directly again, or with a later incarnation.
    pub fn stopped(&mut self, peer: &NodeId, now: u64) -> Option<Health> {
        let p = self.peers.get_mut(peer)?;
        p.stopped = true;
        p.since = now;
        self.suspects.insert(peer.clone());
        self.probes.remove(peer);
        (p.health != Health::Down).then(|| {
            p.health = Health::Down;
            Health::Down
        })
    }

    /// `peer` answered, or accepted a connection: it is up here (a
    /// suspicion in its report stands until it refutes it).
    pub fn reached(&mut self, peer: &NodeId) -> Option<Health> {
        let p = self.peers.get_mut(peer)?;
        p.stopped = false;
        self.probes.remove(peer);
        self.suspects.remove(peer);
        (p.health != Health::Up).then(|| {
            p.health = Health::Up;
            Health::Up
        })
    }

    /// Applies the timeouts: unanswered probes become suspicions, old
    /// suspicions downs. Returns the peers whose health changed.
    pub fn tick(&mut self, now: u64) -> Vec<(NodeId, Health)> {
        let mut changed = Vec::new();
        let unanswered: Vec<NodeId> = self
            .probes
            .iter()
            .filter(|(_, sent)| now.saturating_sub(**sent) >= self.suspect_after)
            .map(|(id, _)| id.clone())
            .collect();
        for id in unanswered {
            self.probes.remove(&id);
            if let Some(h) = self.unanswered(&id, now) {
                changed.push((id, h));
            }
        }
        let window = self.down_after - self.suspect_after;
        for id in &self.suspects {
            let Some(p) = self.peers.get_mut(id) else {
                continue;
            };
            if now.saturating_sub(p.since) >= window && p.health != Health::Down {
                p.health = Health::Down;
                changed.push((id.clone(), Health::Down));
            }
            // A stop notice holds for `down_after`: an answer sent before
            // it cannot be that late, and a notice that arrived after the
            // restart it announced (its run's report already known) would
            // otherwise hold the peer down for good.
            if p.stopped && now.saturating_sub(p.since) >= self.down_after {
                p.stopped = false;
            }
        }
        changed
    }

    /// This node's belief about `peer` (itself: always up; unknown: down).
    pub fn health(&self, peer: &NodeId) -> Health {
        if *peer == self.me {
            return Health::Up;
        }
        self.peers.get(peer).map_or(Health::Down, |p| p.health)
    }

    /// Whether requests should be routed to `peer`.
    pub fn is_up(&self, peer: &NodeId) -> bool {
        self.health(peer) == Health::Up
    }
}

#[cfg(test)]
mod tests;

//! Failure detection: which peers this node currently believes are up.
//!
//! Fed by two kinds of evidence:
//! - *gossip*: every node bumps its own heartbeat counter each gossip round
//!   and gossip carries everyone's latest counters (merged by maximum); a
//!   peer whose counter advanced recently is alive, whoever relayed it;
//! - *direct*: a request to the peer failed (connection refused or lost, no
//!   answer in time), or a connection to it was just established.
//!
//! A peer is `Up` while its heartbeat keeps advancing; `Suspect` after
//! `suspect_after` without progress or right after a failed request; `Down`
//! after `down_after` without progress. Any progress, or a fresh connection,
//! makes it `Up` again. Liveness only changes routing (which nodes take a
//! request), never ownership: the ring does not look at it.
//!
//! Time is an input (`now`, milliseconds on any monotonic clock).

use std::collections::BTreeMap;

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

/// Heartbeat counters by node, as carried in gossip.
pub type Heartbeats = BTreeMap<NodeId, u64>;

#[derive(Debug, Clone)]
struct Peer {
    heartbeat: u64,
    /// When the heartbeat last advanced (or the peer was first heard of).
    progress_at: u64,
    health: Health,
    /// It said it is stopping: only direct contact brings it back (the
    /// heartbeats others relay are from before it stopped).
    stopped: bool,
}

#[derive(Debug, Clone)]
pub struct FailureDetector {
    me: NodeId,
    suspect_after: u64,
    down_after: u64,
    own_heartbeat: u64,
    peers: BTreeMap<NodeId, Peer>,
}

impl FailureDetector {
    pub fn new(me: NodeId, suspect_after: u64, down_after: u64) -> Self {
        FailureDetector {
            me,
            suspect_after,
            down_after: down_after.max(suspect_after),
            own_heartbeat: 0,
            peers: BTreeMap::new(),
        }
    }

    /// Starts tracking `peer` (a new member). It counts as up until it has
    /// had `suspect_after` to show a heartbeat.
    pub fn track(&mut self, peer: &NodeId, now: u64) {
        if *peer != self.me {
            self.peers.entry(peer.clone()).or_insert(Peer {
                heartbeat: 0,
                progress_at: now,
                health: Health::Up,
                stopped: false,
            });
        }
    }

    pub fn forget(&mut self, peer: &NodeId) {
        self.peers.remove(peer);
    }

    /// Advances this node's own heartbeat (once per gossip round).
    pub fn beat(&mut self) {
        self.own_heartbeat += 1;
    }

    /// Every counter this node knows, its own included, for gossip.
    pub fn heartbeats(&self) -> Heartbeats {
        let mut beats: Heartbeats = self
            .peers
            .iter()
            .map(|(id, p)| (id.clone(), p.heartbeat))
            .collect();
        beats.insert(self.me.clone(), self.own_heartbeat);
        beats
    }

    /// Takes counters from gossip. Returns the peers whose health changed.
    pub fn observe(&mut self, beats: &Heartbeats, now: u64) -> Vec<(NodeId, Health)> {
        let mut changed = Vec::new();
        for (id, &beat) in beats {
            if let Some(p) = self.peers.get_mut(id)
                && beat > p.heartbeat
            {
                p.heartbeat = beat;
                p.progress_at = now;
                if p.health != Health::Up && !p.stopped {
                    p.health = Health::Up;
                    changed.push((id.clone(), Health::Up));
                }
            }
        }
        changed
    }

    /// A request to `peer` failed: suspect it now rather than waiting for
    /// its heartbeat to go stale.
    pub fn failed(&mut self, peer: &NodeId) -> Option<Health> {
        let p = self.peers.get_mut(peer)?;
        (p.health == Health::Up).then(|| {
            p.health = Health::Suspect;
            Health::Suspect
        })
    }

    /// `peer` said it is stopping: it is down until it is heard from
    /// directly again (a connection, an answer); a heartbeat another node
    /// relays is not enough.
    pub fn stopped(&mut self, peer: &NodeId) -> Option<Health> {
        let p = self.peers.get_mut(peer)?;
        p.stopped = true;
        (p.health != Health::Down).then(|| {
            p.health = Health::Down;
            Health::Down
        })
    }

    /// `peer` accepted a connection or answered directly: it is up.
    pub fn reached(&mut self, peer: &NodeId, now: u64) -> Option<Health> {
        let p = self.peers.get_mut(peer)?;
        p.progress_at = now;
        p.stopped = false;
        (p.health != Health::Up).then(|| {
            p.health = Health::Up;
            Health::Up
        })
    }

    /// Applies the timeouts. Returns the peers whose health changed.
    pub fn tick(&mut self, now: u64) -> Vec<(NodeId, Health)> {
        let mut changed = Vec::new();
        for (id, p) in &mut self.peers {
            let silent = now.saturating_sub(p.progress_at);
            let health = if silent >= self.down_after {
                Health::Down
            } else if silent >= self.suspect_after {
                Health::Suspect
            } else {
                continue;
            };
            if health > p.health {
                p.health = health;
                changed.push((id.clone(), health));
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
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn detector() -> FailureDetector {
        let mut d = FailureDetector::new(id("me"), 3000, 10_000);
        d.track(&id("a"), 0);
        d
    }

    fn beats(n: u64) -> Heartbeats {
        [(id("a"), n)].into_iter().collect()
    }

    #[test]
    fn silence_leads_to_suspect_then_down_and_progress_back_to_up() {
        let mut d = detector();
        assert!(d.is_up(&id("a")));
        assert!(d.tick(2999).is_empty());
        assert_eq!(d.tick(3000), vec![(id("a"), Health::Suspect)]);
        assert!(d.tick(5000).is_empty(), "no repeated transitions");
        assert_eq!(d.tick(10_000), vec![(id("a"), Health::Down)]);
        assert!(!d.is_up(&id("a")));
        assert_eq!(d.observe(&beats(1), 12_000), vec![(id("a"), Health::Up)]);
        assert!(d.is_up(&id("a")));
        // a counter that does not advance is no evidence
        assert!(d.observe(&beats(1), 20_000).is_empty());
        assert_eq!(d.tick(20_000), vec![(id("a"), Health::Suspect)]);
        assert_eq!(d.tick(22_000), vec![(id("a"), Health::Down)]);
    }

    #[test]
    fn a_failed_request_suspects_at_once_and_a_connection_clears_it() {
        let mut d = detector();
        assert_eq!(d.failed(&id("a")), Some(Health::Suspect));
        assert_eq!(d.failed(&id("a")), None);
        assert!(!d.is_up(&id("a")));
        assert_eq!(d.reached(&id("a"), 100), Some(Health::Up));
        assert!(d.is_up(&id("a")));
    }

    #[test]
    fn a_stop_notice_is_down_at_once_and_a_suspicion_does_not_lift_it() {
        let mut d = detector();
        assert_eq!(d.stopped(&id("a")), Some(Health::Down));
        assert_eq!(d.stopped(&id("a")), None);
        // Its connection dropping afterwards changes nothing, nor does a
        // heartbeat of it another node relays.
        assert_eq!(d.failed(&id("a")), None);
        assert!(d.observe(&beats(7), 50).is_empty());
        assert_eq!(d.health(&id("a")), Health::Down);
        // Back: a connection from the restarted process.
        assert_eq!(d.reached(&id("a"), 100), Some(Health::Up));
        assert!(d.stopped(&id("stranger")).is_none());
    }

    #[test]
    fn own_heartbeat_travels_and_self_is_always_up() {
        let mut d = detector();
        d.beat();
        d.beat();
        assert_eq!(d.heartbeats()[&id("me")], 2);
        assert!(d.is_up(&id("me")));
        assert_eq!(d.health(&id("stranger")), Health::Down);
        assert!(d.failed(&id("stranger")).is_none());
    }
}

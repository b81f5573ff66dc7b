//! Membership at scale: up to thousands of nodes, each running the
//! shipped `Membership` state machine and nothing else, gossiping in
//! rounds (one gossip interval each) over a network that delivers every
//! exchange within its round and drops what is sent to a crashed node.
//! It counts what gossip costs (messages and bytes) and lets a caller ask
//! how many nodes know of a change; `examples/gossip_scale` (in
//! `tests/tools`) runs it at 100 to 2,000 nodes and times it.

use std::collections::HashMap;

use super::Rng;
use crate::membership::{Destination, GossipMsg, Member, Membership, Outgoing, Settings, Status};
use crate::node::NodeId;
use crate::ownership::Ownership;
use crate::view::View;

/// A gossip round, in ms (the default `gossip.interval_ms`).
pub const ROUND_MS: u64 = 1000;

/// What gossip sent: messages, and their bytes on the wire (frame header,
/// envelope and message).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub messages: u64,
    pub bytes: u64,
    /// The largest message.
    pub largest: u64,
}

impl Traffic {
    fn count(&mut self, from: &NodeId, to: &NodeId, msg: &GossipMsg) {
        // length and CRC (8), version (1), the two ids with their lengths,
        // the correlation and the enum tags (about 6).
        let envelope = 15 + from.as_str().len() + to.as_str().len();
        let bytes = (postcard::to_stdvec(msg).map_or(0, |b| b.len()) + envelope) as u64;
        self.messages += 1;
        self.bytes += bytes;
        self.largest = self.largest.max(bytes);
    }
}

pub struct Scale {
    nodes: Vec<Membership>,
    running: Vec<bool>,
    addrs: HashMap<String, usize>,
    partitions: u32,
    rng: Rng,
    round: u64,
    traffic: Traffic,
}

fn id(i: usize) -> NodeId {
    NodeId::new(format!("s{i}")).expect("a valid id")
}

fn member(i: usize) -> Member {
    let host = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
    Member {
        id: id(i),
        peer_addr: format!("{host}:7100"),
        client_addr: format!("{host}:7000"),
        weight: 1,
        status: Status::Up,
        version: 1,
    }
}

fn settings(i: usize, partitions: u32, seeds: Vec<String>, incarnation: u64) -> Settings {
    Settings {
        me: member(i),
        cluster: "scale".into(),
        partitions,
        n: 3,
        seeds,
        suspect_after: 5000,
        down_after: 15_000,
        auto_join: true,
        incarnation,
        protocol: crate::protocol::PROTOCOL_VERSION,
    }
}

impl Scale {
    /// A formed cluster of `nodes` members, all up, over `partitions`
    /// partitions (as if it had grown to that size and settled).
    pub fn formed(nodes: usize, partitions: u32, seed: u64) -> Scale {
        let mut view = View::new("scale".into(), partitions);
        for i in 0..nodes {
            view.members.insert(id(i), member(i));
        }
        let table = Ownership::found(partitions, &view.active(), 3)
            .expect("a cluster of at least one node founds a table");
        view.ownership = Some(table);
        let members = (0..nodes)
            .map(|i| Membership::new(settings(i, partitions, Vec::new(), 1), Some(view.clone())))
            .collect();
        Scale {
            nodes: members,
            running: vec![true; nodes],
            addrs: (0..nodes).map(|i| (member(i).peer_addr, i)).collect(),
            partitions,
            rng: Rng::new(seed),
            round: 0,
            traffic: Traffic::default(),
        }
    }

    /// What gossip sent since the last call (or the start).
    pub fn take_traffic(&mut self) -> Traffic {
        std::mem::take(&mut self.traffic)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, i: usize) -> &Membership {
        &self.nodes[i]
    }

    pub fn id(&self, i: usize) -> NodeId {
        id(i)
    }

    fn now(&self) -> u64 {
        self.round * ROUND_MS
    }

    /// One gossip round: every running node ticks once, in an order that
    /// starts at a random node, and each exchange it opens runs to its end.
    pub fn round(&mut self) {
        self.round += 1;
        let len = self.nodes.len();
        let start = self.rng.below(len as u64) as usize;
        for k in 0..len {
            let i = (start + k) % len;
            if !self.running[i] {
                continue;
            }
            let (now, rand) = (self.now(), self.rng.next_u64());
            let (out, _) = self.nodes[i].tick(now, rand);
            for o in out {
                self.exchange(i, o);
            }
        }
    }

    /// Runs rounds until `done` holds, at most `limit`; how many it took.
    pub fn rounds_until(&mut self, limit: u64, done: impl Fn(&mut Scale) -> bool) -> Option<u64> {
        (1..=limit).find(|_| {
            self.round();
            done(self)
        })
    }

    fn exchange(&mut self, from: usize, out: Outgoing) {
        let mut next = Some((from, out));
        while let Some((from, out)) = next.take() {
            let to = match &out.to {
                Destination::Node(node) => node.as_str()[1..].parse::<usize>().ok(),
                Destination::Addr(addr) => self.addrs.get(addr).copied(),
            };
            let Some(to) = to.filter(|&to| to < self.nodes.len()) else {
                continue;
            };
            self.traffic.count(&id(from), &id(to), &out.msg);
            if !self.running[to] {
                continue;
            }
            let now = self.now();
            if let Ok((answer, _)) = self.nodes[to].on_gossip(&id(from), out.msg, now) {
                next = answer.map(|a| (to, a));
            }
        }
    }

    /// A new node starts with node 0 as its seed; returns its index.
    pub fn join(&mut self) -> usize {
        let i = self.nodes.len();
        let seeds = vec![member(0).peer_addr];
        let node = Membership::new(settings(i, self.partitions, seeds, self.now()), None);
        self.addrs.insert(member(i).peer_addr, i);
        self.nodes.push(node);
        self.running.push(true);
        i
    }

    /// Node `i` starts leaving.
    pub fn leave(&mut self, i: usize) {
        self.nodes[i]
            .leave()
            .expect("a member that is up can leave");
    }

    /// Node `i` stops answering, without a word.
    pub fn crash(&mut self, i: usize) {
        self.running[i] = false;
    }

    /// How many running nodes `holds` is true of.
    pub fn count(&self, holds: impl Fn(&Membership) -> bool) -> usize {
        self.nodes
            .iter()
            .zip(&self.running)
            .filter(|(n, up)| **up && holds(n))
            .count()
    }

    pub fn running(&self) -> usize {
        self.running.iter().filter(|r| **r).count()
    }

    /// Whether every running node holds the same view and liveness
    /// reports (by their fingerprint).
    pub fn agree(&mut self) -> bool {
        let mut roots = self
            .nodes
            .iter_mut()
            .zip(&self.running)
            .filter(|(_, up)| **up)
            .map(|(n, _)| n.root());
        let Some(first) = roots.next() else {
            return true;
        };
        roots.all(|r| r == first)
    }
}

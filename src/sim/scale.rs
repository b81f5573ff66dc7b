//! Membership at scale: up to thousands of nodes, each running the
//! shipped `Membership` state machine and nothing else, gossiping in
//! rounds (one gossip interval each) over a network that delivers every
//! exchange within its round and drops what is sent to a crashed node.
//! It counts what gossip costs (messages and bytes) and lets a caller ask
//! how many nodes know of a change; `examples/gossip_scale` (in
//! `tests/tools`) runs it at 100 to 2,000 nodes and times it. `grow`
//! takes a small cluster to a large one, a batch of joins at a time,
//! splitting Q whenever the nodes would own too few partitions each
//! (handoff is taken as instant: each node commits what moves to it).

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

/// One step of `Scale::grow`: the splits made first, then the joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Growth {
    /// Members and Q once the step settled.
    pub nodes: usize,
    pub partitions: u32,
    pub joined: usize,
    pub splits: u32,
    /// Rounds until every split, then the joins, settled.
    pub split_rounds: u64,
    pub join_rounds: u64,
    /// The fewest and most partitions a member owns.
    pub fewest: usize,
    pub most: usize,
    /// The largest gossip message of the step, in bytes.
    pub largest: u64,
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

    /// Node `i` doubles Q (`dynakv cluster split`).
    pub fn split(&mut self, i: usize) -> crate::Result<()> {
        self.nodes[i].split().map(|_| ())
    }

    /// Every running node holds the data of what moves to it (handoff
    /// taken as instant) and commits it.
    pub fn commit_all(&mut self) {
        for (node, up) in self.nodes.iter_mut().zip(&self.running) {
            if *up {
                node.commit_incoming();
            }
        }
    }

    /// Whether every running node agrees on a view in which every member is
    /// up and nothing moves.
    pub fn settled(&mut self) -> bool {
        if !self.agree() {
            return false;
        }
        let Some(i) = self.running.iter().position(|r| *r) else {
            return true;
        };
        let view = self.nodes[i].view();
        let all_up = view.members.values().all(|m| m.status == Status::Up);
        all_up && view.ring().is_some_and(|ring| !ring.is_moving())
    }

    /// Grows the cluster to `target` members, a quarter more at a time:
    /// before each batch of joins, Q doubles (at node 0) while the members
    /// would own fewer than `per_node` partitions each. Each step runs
    /// rounds (committing what moves) until the cluster has settled, at
    /// most `patience` per split or batch, and is given to `step` once
    /// settled. Fails with what did not settle.
    pub fn grow(
        &mut self,
        target: usize,
        per_node: u32,
        patience: u64,
        mut step: impl FnMut(Growth),
    ) -> Result<(), String> {
        while self.nodes.len() < target {
            let len = self.nodes.len();
            let next = (len + len / 4).clamp(len + 1, target);
            self.take_traffic();
            let (mut splits, mut split_rounds) = (0, 0);
            while self.nodes[0].view().partitions / (next as u32) < per_node {
                self.split(0)
                    .map_err(|e| format!("split at {len} nodes: {e}"))?;
                splits += 1;
                split_rounds += self
                    .rounds_until(patience, Scale::agree)
                    .ok_or(format!("a split at {len} nodes did not spread"))?;
            }
            for _ in len..next {
                self.join();
            }
            let join_rounds = self
                .rounds_until(patience, |s| {
                    s.commit_all();
                    s.settled()
                })
                .ok_or(format!(
                    "{} joins at {len} nodes did not settle",
                    next - len
                ))?;
            let view = self.nodes[0].view();
            let ring = view.ring().ok_or("no ring")?;
            let owned: Vec<usize> = ring.owned_counts().into_iter().map(|(_, c)| c).collect();
            // A member the ring does not name owns nothing.
            let fewest = match owned.iter().min() {
                Some(&min) if owned.len() == view.members.len() => min,
                _ => 0,
            };
            step(Growth {
                nodes: view.members.len(),
                partitions: view.partitions,
                joined: next - len,
                splits,
                split_rounds,
                join_rounds,
                fewest,
                most: owned.iter().copied().max().unwrap_or(0),
                largest: self.traffic.largest,
            });
        }
        Ok(())
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

//! Gossip rounds and failure detection: opening a round each tick,
//! answering and following up each message of a round (by digest with
//! peers of protocol 8, by whole views with older ones), and checking what
//! peers send before it is merged.
//!
//! A peer of protocol 7 gossips by digest too, but its summaries and
//! records do not say their Q, so it is answered with whole views (as
//! protocol 6 peers are), which carry theirs; it refuses one whose Q
//! differs from its own (a split it cannot take).

use std::collections::BTreeMap;

use super::{Changed, Destination, GossipMsg, Membership, Outgoing, Records, Summary};
use crate::error::{Error, Result};
use crate::liveness::Heartbeats;
use crate::node::NodeId;
use crate::view::{MAX_MEMBERS, Member, Status, View};

impl Membership {
    /// Whether `peer` gets whole views (it speaks an older protocol, or
    /// this node does).
    fn pushes_to(&self, peer: &NodeId) -> bool {
        !self.digests || self.legacy.contains(peer)
    }

    /// `peer`'s hello said the newest protocol it speaks is `max`.
    pub fn speaks(&mut self, peer: &NodeId, max: u8) {
        if max >= self.digest_peers {
            self.legacy.remove(peer);
        } else if self.legacy.insert(peer.clone()) {
            // A digest sent before this was known went unanswered: no
            // evidence against the peer.
            self.detector.cancel_probe(peer);
        }
    }

    /// The summary of the view and the liveness reports.
    pub(super) fn summary(&mut self) -> Summary {
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
        if let Destination::Node(peer) = to {
            self.detector.probed(peer, now);
            if !self.pushes_to(peer) {
                return GossipMsg::Digest {
                    root: self.summary().root(),
                    heartbeat: self.detector.heartbeat(),
                };
            }
        }
        self.push()
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
                } else if self.pushes_to(from) {
                    self.push()
                } else {
                    GossipMsg::Summary { summary, heartbeat }
                };
                Ok((answer(reply), changed))
            }
            GossipMsg::Agree { heartbeat } => Ok((None, self.heard(from, heartbeat))),
            GossipMsg::Summary { summary, heartbeat } => {
                summary.check(self.layout, self.view().partitions)?;
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
                let q = records.check(self.layout, self.view().partitions)?;
                Summary::check_buckets(&buckets, q.max(self.view().partitions))?;
                let changed =
                    self.take_records(from, &records, q, now)? | self.heard(from, heartbeat);
                let reply = GossipMsg::Delta {
                    records: self.records(&buckets),
                    heartbeat: self.detector.heartbeat(),
                };
                Ok((answer(reply), changed))
            }
            GossipMsg::Delta { records, heartbeat } => {
                let q = records.check(self.layout, self.view().partitions)?;
                let changed =
                    self.take_records(from, &records, q, now)? | self.heard(from, heartbeat);
                Ok((None, changed))
            }
        }
    }

    /// A message of a round by digest came from `from`, its heartbeat
    /// `heartbeat`.
    fn heard(&mut self, from: &NodeId, heartbeat: u64) -> Changed {
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
        view.validate(&self.view().cluster, self.layout)?;
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

    /// Merges records from `from`, checked to be at `q` partitions
    /// (`Records::check`); the view they make is checked before it
    /// replaces this node's.
    fn take_records(
        &mut self,
        from: &NodeId,
        records: &Records,
        q: u32,
        now: u64,
    ) -> Result<Changed> {
        self.check_identity(from, &records.member_map())?;
        let mut merged = self.view().clone();
        let mut changed = Changed::default();
        if records.merge_into(&mut merged, q)? {
            merged.validate(&self.view().cluster, self.layout)?;
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
}

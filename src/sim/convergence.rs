//! When the cluster has converged after the faults stop: no hints left,
//! no sessions, every node holding only what it replicates and no leaver
//! still leaving, and the owners of each key holding identical sibling
//! sets; and what each key finally holds.

use crate::namespace::Table;
use crate::placement::Placement;
use crate::ring::Ring;
use crate::version::SiblingSet;
use crate::view::Status;

use super::Sim;

impl Sim {
    /// The ring every node agrees on (None if they disagree or have none).
    pub(super) fn common_ring(&self) -> Option<Ring> {
        let mut members = self.nodes.iter().filter(|n| n.is_member());
        let first = members.next()?.membership.view();
        let ring = first.ring()?;
        (!ring.is_moving() && members.all(|n| n.membership.view().ownership == first.ownership))
            .then_some(ring)
    }

    /// The namespace table every member agrees on (None if they disagree).
    fn common_namespaces(&self) -> Option<Table> {
        let mut members = self.nodes.iter().filter(|n| n.is_member());
        let first = &members.next()?.membership.view().namespaces;
        members
            .all(|n| n.membership.view().namespaces == *first)
            .then(|| first.clone())
    }

    /// Each key's copies at its owners (the first `n` of its namespace),
    /// or why they are not comparable yet.
    pub(super) fn owner_states(&self, k: usize) -> std::result::Result<Vec<SiblingSet>, String> {
        let ring = self.common_ring().ok_or("nodes disagree about the ring")?;
        let table = self
            .common_namespaces()
            .ok_or("nodes disagree about the namespaces")?;
        Placement::new(&ring, &table, self.cfg.n)
            .replicas(&self.keys[k])
            .into_iter()
            .map(|id| {
                let i = self.index(id).ok_or("unknown owner")?;
                self.nodes[i]
                    .replica
                    .read(&self.keys[k])
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    pub(super) fn divergence(&self) -> String {
        // A node that left is gone, with its hints: everything it held
        // was synchronised with the current replicas before it left. One
        // that was removed is gone with what it held (every acknowledged
        // write reached W - 1 other replicas too).
        for n in self.nodes.iter().filter(|n| n.is_member()) {
            if let Some((owner, hints)) = n.replica.hints_pending().iter().find(|(_, h)| **h > 0) {
                return format!("{} still holds {hints} hints for {owner}", n.id);
            }
            if !n.sessions.is_empty() {
                return format!("{} still has sessions", n.id);
            }
        }
        // Handoff is over: each node holds only what it replicates (of
        // each namespace, what its `n` reaches), and a leaver has left.
        if let (Some(ring), Some(table)) = (self.common_ring(), self.common_namespaces()) {
            let place = Placement::new(&ring, &table, self.cfg.n);
            for n in self.nodes.iter().filter(|n| n.is_member()) {
                let held = match n.replica.held(ring.partition_count()) {
                    Ok(held) => held,
                    Err(e) => return format!("{}: {e}", n.id),
                };
                for (p, names) in held {
                    let surplus = place.surplus(p, &n.id, &names);
                    if !surplus.is_empty() {
                        return format!("{} still holds {surplus:?} of {p}", n.id);
                    }
                }
                if n.membership.member(&n.id).map(|m| m.status) == Some(Status::Leaving) {
                    return format!("{} is still leaving", n.id);
                }
            }
        }
        // Every running replica's hash-tree leaves and usage are what a
        // rebuild from its storage gives (a start's scan ran in steps while
        // it served writes).
        for n in self.nodes.iter().filter(|n| n.running) {
            if let Err(e) = n.replica.verify_tally() {
                return format!("{}: {e}", n.id);
            }
        }
        for k in 0..self.keys.len() {
            match self.owner_states(k) {
                Err(e) => return e,
                Ok(states) if states.windows(2).any(|w| w[0] != w[1]) => {
                    return format!("key {k} differs between its owners: {states:?}");
                }
                Ok(_) => {}
            }
        }
        String::new()
    }

    pub(super) fn converged(&self) -> bool {
        self.divergence().is_empty()
    }

    pub(super) fn final_state(&self, k: usize) -> SiblingSet {
        self.owner_states(k)
            .ok()
            .and_then(|s| s.into_iter().next())
            .unwrap_or_default()
    }
}

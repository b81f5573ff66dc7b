//! The faults of a run: crashes (power losses with `fsync = periodic`),
//! clean stops that tell the peers, and restarts, network partitions and heals, an operator's leave and
//! removal, a backup and a restore from it; and the end of the faults,
//! when every node runs again.

use crate::membership::{Destination, GossipMsg, Membership};
use crate::namespace;
use crate::replica::Replica;
use crate::version::Actor;

use super::workload::ClientOp;
use super::world::Backup;
use super::{CREATE_RETRY, DOOMED_KEYS, Event, NAMESPACES, Sim, founders, planner, settings};

impl Sim {
    pub(super) fn nemesis(&mut self) {
        if !self.faults {
            return;
        }
        let down = self.nodes.iter().filter(|n| !n.running).count();
        match self.rng.below(3) {
            0 if self.cfg.crashes && down < 2 => {
                let i = self.rng.below(self.cfg.nodes as u64) as usize;
                if self.nodes[i].running {
                    if self.cfg.stop_notices && self.rng.below(2) == 0 {
                        self.stop_cleanly(i);
                    } else {
                        self.crash(i);
                    }
                    let at = self.now + 200 + self.rng.below(4_000);
                    self.schedule(at, Event::Restart { node: i });
                }
            }
            1 if self.cfg.partitions_faults && self.sides.is_none() => {
                let sides: Vec<bool> = (0..self.cfg.nodes)
                    .map(|_| self.rng.below(2) == 0)
                    .collect();
                self.partition_epoch += 1;
                self.partitions += 1;
                let line = format!(
                    "partition: {:?} | {:?}",
                    (0..self.cfg.nodes)
                        .filter(|&i| sides[i])
                        .collect::<Vec<_>>(),
                    (0..self.cfg.nodes)
                        .filter(|&i| !sides[i])
                        .collect::<Vec<_>>()
                );
                self.note(|| line);
                self.sides = Some(sides);
                let at = self.now + 500 + self.rng.below(5_000);
                let epoch = self.partition_epoch;
                self.schedule(at, Event::HealPartition { epoch });
            }
            _ => {}
        }
        let at = self.now + 300 + self.rng.below(2_000);
        self.schedule(at, Event::Nemesis);
    }

    /// An operator tells a founder that is up to leave.
    pub(super) fn begin_leave(&mut self) {
        let up: Vec<usize> = (0..founders(&self.cfg))
            .filter(|&i| self.nodes[i].running && self.nodes[i].is_member())
            .collect();
        if up.is_empty() {
            return self.note(|| "no founder is up: no leave".into());
        }
        let i = up[self.rng.below(up.len() as u64) as usize];
        let node = &mut self.nodes[i];
        match node.membership.leave() {
            Ok(changed) => {
                node.keep_view(changed);
                self.note(|| format!("n{i} begins to leave"));
            }
            Err(e) => {
                self.note(|| format!("n{i} cannot leave: {e}"));
                // Refused while a namespace's n needs every member (until
                // the operator lowers it): the operator tries again.
                if self.now < self.cfg.fault_time {
                    self.schedule(self.now + 500, Event::Leave);
                }
            }
        }
    }

    /// An operator doubles Q at a member that is up (tried again later
    /// until the cluster is founded and one is).
    pub(super) fn split_partitions(&mut self) {
        let up: Vec<usize> = (0..self.cfg.nodes)
            .filter(|&i| self.nodes[i].running && self.nodes[i].is_member())
            .collect();
        let split = match up.as_slice() {
            [] => Err(crate::Error::Unavailable("no member is up".into())),
            up => {
                let i = up[self.rng.below(up.len() as u64) as usize];
                let node = &mut self.nodes[i];
                node.membership.split().map(|(changed, done)| {
                    node.keep_view(changed);
                    format!("n{i}: {done}")
                })
            }
        };
        match split {
            Ok(done) => {
                self.splits += 1;
                self.note(|| done);
            }
            Err(e) => {
                self.note(|| format!("no split yet: {e}"));
                if self.now < self.cfg.fault_time {
                    self.schedule(self.now + 500, Event::Split);
                }
            }
        }
    }

    /// Creates the namespaces (`alter`: alters their `n`) through node 0,
    /// as `dynakv ns create` and `ns alter` do; tried again until the
    /// cluster has formed and node 0 is up. A namespace already as asked
    /// is left alone.
    pub(super) fn change_namespaces(&mut self, alter: bool) {
        let defaults = planner(&self.cfg, 0).limits.defaults;
        for (name, kind, ttl_ms, first_n, then_n) in NAMESPACES {
            let n = if alter { then_n } else { first_n };
            let node = &mut self.nodes[0];
            let current = node.membership.view().namespaces.get(name).map(|s| s.n);
            if alter && current == Some(n) || !alter && current.is_some() {
                continue;
            }
            let changes = namespace::Changes {
                n: Some(n),
                ttl_ms: Some(ttl_ms),
                kind: Some(kind),
                ..namespace::Changes::default()
            };
            let name = name.to_string();
            let request = if alter {
                namespace::Request::Alter { name, changes }
            } else {
                namespace::Request::Create { name, changes }
            };
            let changed = if node.running {
                node.membership.namespace(request, &defaults)
            } else {
                Err(crate::Error::Unavailable("n0 is down".into()))
            };
            match changed {
                Ok((changed, _)) => {
                    node.keep_view(changed);
                    self.note(|| format!("namespaces: n = {n} through n0"));
                }
                Err(e) => {
                    self.note(|| format!("namespaces not changed yet: {e}"));
                    let retry = if alter {
                        Event::AlterNamespaces
                    } else {
                        Event::CreateNamespace
                    };
                    return self.schedule(self.now + CREATE_RETRY, retry);
                }
            }
        }
    }

    /// An operator stops a founder and removes it through another member;
    /// it starts again later on its old disk, as a careless restart would.
    pub(super) fn remove_one(&mut self) {
        let r = self.rng.below(founders(&self.cfg) as u64) as usize;
        if self.nodes[r].running {
            self.crash(r);
        }
        let gone = self.nodes[r].id.clone();
        let Some(via) = (0..self.cfg.nodes).find(|&j| {
            j != r && self.nodes[j].running && self.nodes[j].membership.member(&gone).is_some()
        }) else {
            return self.note(|| format!("nobody up to remove n{r}"));
        };
        match self.nodes[via].membership.remove(&gone) {
            Ok(changed) => {
                self.nodes[via].keep_view(changed);
                self.note(|| format!("n{r} removed through n{via}"));
            }
            Err(e) => self.note(|| format!("n{r} cannot be removed: {e}")),
        }
        let back = self.now + 4_000 + self.rng.below(6_000);
        self.schedule(back, Event::Restart { node: r });
        // The operator deletes the doomed keys, which the removed node holds.
        self.delete_doomed();
    }

    /// The `restore` scenario's backup: a copy of a founder's disks (as
    /// `dynakv backup` reads one storage snapshot); then the operator
    /// deletes the doomed keys, which the backup holds, and the node's
    /// disks are lost some seconds later.
    pub(super) fn back_up(&mut self) {
        let r = self.rng.below(founders(&self.cfg) as u64) as usize;
        let node = &self.nodes[r];
        self.backup = Some(Backup {
            node: r,
            disks: node.disks.copy(),
            view: node.view.clone(),
            restored: false,
        });
        self.note(|| format!("backup of n{r}"));
        self.delete_doomed();
        let lost = self.now + 3_000 + self.rng.below(5_000);
        self.schedule(lost, Event::Restore);
    }

    /// The backed-up node loses its disks and starts again on a restored
    /// copy of the backup, as a fresh writer.
    pub(super) fn restore(&mut self) {
        let Some(b) = &mut self.backup else { return };
        b.restored = true;
        let r = b.node;
        let (disks, view) = (b.disks.copy(), b.view.clone());
        if self.nodes[r].running {
            self.crash(r);
        }
        let node = &mut self.nodes[r];
        node.disks = disks;
        node.view = view;
        self.note(|| format!("n{r} loses its disks and is restored from the backup"));
        self.schedule(self.now + 200, Event::Restart { node: r });
    }

    /// The operator reads and deletes each doomed key.
    fn delete_doomed(&mut self) {
        let operator = self.cfg.clients;
        let doomed = self.cfg.keys..self.cfg.keys + DOOMED_KEYS;
        let steps = doomed.flat_map(|k| [(k, ClientOp::Get), (k, ClientOp::Delete)]);
        if let Some(script) = &mut self.clients[operator].script {
            script.extend(steps);
        }
        self.schedule(self.now + 1, Event::Client { client: operator });
    }

    pub(super) fn crash(&mut self, i: usize) {
        self.crashes += 1;
        self.crashes_while_loading += usize::from(self.nodes[i].replica.is_loading());
        let power_loss = !self.cfg.fsync_always;
        if power_loss {
            self.nodes[i].disks.lose_unsynced();
        }
        self.note(|| {
            format!(
                "crash n{i}{}",
                if power_loss { " (power loss)" } else { "" }
            )
        });
        self.stop(i);
    }

    /// SIGTERM (as for an upgrade): the node tells the peers it believes
    /// up that it is stopping, syncs its disks, and ends.
    pub(super) fn stop_cleanly(&mut self, i: usize) {
        self.stops += 1;
        self.note(|| format!("stop n{i}, telling its peers"));
        for peer in self.nodes[i].membership.stop() {
            self.send_gossip(i, Destination::Node(peer), GossipMsg::Stopping);
        }
        self.nodes[i].disks.sync();
        self.stop(i);
    }

    /// The process ends: what it held in memory is gone.
    pub(super) fn stop(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.running = false;
        let sessions = std::mem::take(&mut node.sessions);
        node.calls.clear();
        for (_, s) in sessions {
            // The client's connection breaks: the operation has no answer.
            self.clients[s.client].waiting = None;
            self.history.failed += 1;
            self.client_next(s.client);
        }
    }

    pub(super) fn restart(&mut self, i: usize) {
        if self.nodes[i].running || self.nodes[i].retired {
            return;
        }
        if let Some(view) = &self.nodes[i].view
            && view.is_fenced(&self.nodes[i].id)
        {
            // As `serve` refuses to start on the data of a node that is out.
            self.nodes[i].retired = true;
            return self.note(|| format!("n{i} refuses to start: it is out of the cluster"));
        }
        let actor = Actor(self.rng.next_u64());
        let cfg = self.cfg.clone();
        let now = self.now;
        let node = &mut self.nodes[i];
        // Serving at once, its start-up scan a few keys per timer event.
        let mut replica = match Replica::opening(
            node.disks.data.clone(),
            node.disks.hints.clone(),
            cfg.partitions,
            actor,
            64,
        ) {
            Ok(r) => r,
            Err(e) => panic!("reopening a simulated replica failed: {e}"),
        };
        replica.keep_deleted(cfg.keep_deleted_ms);
        replica.keep_every_decoded_state();
        node.replica = replica;
        node.membership = Membership::new(settings(&cfg, i, now), node.view.clone());
        node.running = true;
        node.life += 1;
        node.start_drivers(&cfg, i);
        self.start_timers(i);
        self.note(|| format!("restart n{i} as writer {actor}"));
    }

    /// Faults stop: every node runs again, the network heals and stops
    /// dropping and duplicating; clients stop starting operations.
    pub(super) fn heal(&mut self) {
        self.faults = false;
        self.sides = None;
        for i in 0..self.cfg.nodes {
            self.restart(i);
        }
        self.note(|| "heal: faults stop".into());
    }
}

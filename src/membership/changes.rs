//! Changes of membership and ownership: founding the table and claiming
//! this node's share after every view change, and the operator's join,
//! leave, remove, split and namespace changes, with the commits and the
//! final record that end them.

use super::{Changed, Membership, SPLIT_PROTOCOL};
use crate::error::{Error, Result};
use crate::fencing;
use crate::namespace;
use crate::node::NodeId;
use crate::ownership::{Move, Ownership};
use crate::view::{Member, Status};

impl Membership {
    /// After a change: found the table if due, then claim what this node
    /// should receive. Returns the moves begun.
    pub(super) fn settle(&mut self) -> Vec<Move> {
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

    pub(super) fn my_record(&mut self) -> &mut Member {
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

    /// Doubles Q (`dynakv cluster split`): every partition becomes its two
    /// halves, owned and replicated as it was, so nothing moves; gossip
    /// carries the larger table, which every view takes (`View::merge`).
    /// Refused while a member is known to speak a protocol older than 8
    /// (it would refuse the split view and be left behind). Returns what
    /// was done.
    pub fn split(&mut self) -> Result<(Changed, String)> {
        if self.digest_peers < SPLIT_PROTOCOL {
            return Err(Error::InvalidRequest(format!(
                "this node speaks protocol {}; a split needs {SPLIT_PROTOCOL} on every member",
                self.digest_peers
            )));
        }
        let live = self.known.live();
        if let Some(old) = self.legacy.iter().find(|p| live.contains(p)) {
            return Err(Error::InvalidRequest(format!(
                "{old} speaks a protocol older than {SPLIT_PROTOCOL}: upgrade every member before splitting"
            )));
        }
        let from = self.view().partitions;
        self.known.edit().split()?;
        let done = format!(
            "split: {from} partitions are {} now; each half keeps its owner and replicas, so no data moves",
            self.view().partitions
        );
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

//! Fencing: which peers this node takes traffic from.
//!
//! A member the view marks left or removed may come back (restarted on its
//! old data directory, or a copy of it) holding data the cluster has since
//! deleted and collected: tombstone collection asks only the members still
//! in the view. Its writes, handoff pushes, hint deliveries, anti-entropy
//! exchanges and gossip would bring that data back, so every node refuses
//! all of them. The refusal carries the fenced member's own final record,
//! so the member learns it is out (the record wins its view's merge) and
//! stops taking part. A node that knows it is fenced refuses every request
//! in turn: it is no longer a replica of anything.
//!
//! Membership computes an `Admission` from the view; the Bridge (and the
//! simulator's network) asks it about each request's authenticated sender.

use std::collections::BTreeMap;

use crate::error::Error;
use crate::node::NodeId;
use crate::view::{Member, View};

/// Who may talk to this node, as of one view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// This node is fenced itself (left or removed).
    me_fenced: Option<NodeId>,
    /// The final records of the members fenced out.
    fenced: BTreeMap<NodeId, Member>,
}

/// Why a peer's request is not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The sender left or was removed: here is its record, to learn from.
    Fenced(Member),
    /// This node left or was removed: it serves nobody.
    Departed(Error),
}

impl Admission {
    /// The admission of node `me` under `view`.
    pub fn new(view: &View, me: &NodeId) -> Self {
        let fenced: BTreeMap<NodeId, Member> = view
            .members
            .values()
            .filter(|m| m.status.is_final())
            .map(|m| (m.id.clone(), m.clone()))
            .collect();
        Admission {
            me_fenced: fenced.contains_key(me).then(|| me.clone()),
            fenced,
        }
    }

    /// Whether a request from `from` is taken.
    pub fn check(&self, from: &NodeId) -> Result<(), Refusal> {
        if let Some(me) = &self.me_fenced {
            return Err(Refusal::Departed(departed(me)));
        }
        match self.fenced.get(from) {
            Some(record) => Err(Refusal::Fenced(record.clone())),
            None => Ok(()),
        }
    }

    /// Whether this node itself is fenced.
    pub fn me_fenced(&self) -> bool {
        self.me_fenced.is_some()
    }
}

/// The error a fenced node answers every request with.
pub fn departed(me: &NodeId) -> Error {
    Error::Removed(format!(
        "node {me} left or was removed from the cluster and serves no requests; \
         to bring this machine back, stop it, empty its data directory and start it \
         with a new node.id"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::Status;

    fn member(id: &str, status: Status) -> Member {
        Member {
            id: NodeId::new(id).unwrap(),
            peer_addr: "127.0.0.1:1".into(),
            client_addr: "127.0.0.1:2".into(),
            weight: 1,
            status,
            version: 3,
        }
    }

    fn view(members: &[Member]) -> View {
        let mut v = View::new("c".into(), 8);
        for m in members {
            v.members.insert(m.id.clone(), m.clone());
        }
        v
    }

    #[test]
    fn left_and_removed_members_are_refused_with_their_record() {
        let removed = member("gone", Status::Removed);
        let left = member("left", Status::Left);
        let v = view(&[
            member("me", Status::Up),
            member("up", Status::Up),
            member("leaving", Status::Leaving),
            member("joining", Status::Joining),
            removed.clone(),
            left.clone(),
        ]);
        let me = NodeId::new("me").unwrap();
        let admission = Admission::new(&v, &me);
        assert!(!admission.me_fenced());
        for ok in ["up", "leaving", "joining", "stranger"] {
            assert_eq!(admission.check(&NodeId::new(ok).unwrap()), Ok(()), "{ok}");
        }
        assert_eq!(
            admission.check(&removed.id),
            Err(Refusal::Fenced(removed.clone()))
        );
        assert_eq!(admission.check(&left.id), Err(Refusal::Fenced(left)));
    }

    #[test]
    fn a_fenced_node_refuses_everyone() {
        let me = member("me", Status::Removed);
        let admission = Admission::new(&view(&[me.clone(), member("up", Status::Up)]), &me.id);
        assert!(admission.me_fenced());
        match admission.check(&NodeId::new("up").unwrap()) {
            Err(Refusal::Departed(e)) => assert_eq!(e.kind(), crate::ErrorKind::Removed),
            other => panic!("{other:?}"),
        }
    }
}

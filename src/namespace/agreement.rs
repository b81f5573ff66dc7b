//! Namespace agreement: which members hold the namespace table one node
//! holds (Cassandra's schema agreement). The caller asks the members in
//! rounds and feeds their answers in; `Rounds` decides whom to ask next
//! and tallies what it heard.

use std::collections::BTreeMap;

use crate::node::NodeId;

use super::Info;

/// How far one node's namespace table has spread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Agreement {
    /// Members that list the same namespaces as the node.
    pub agreed: Vec<NodeId>,
    /// Members whose latest answer was a different list.
    pub behind: Vec<NodeId>,
    /// Members that never answered (stopped, unreachable).
    pub unreachable: Vec<NodeId>,
}

impl Agreement {
    /// Whether every member lists the same namespaces.
    pub fn is_complete(&self) -> bool {
        self.behind.is_empty() && self.unreachable.is_empty()
    }
}

/// What one member's latest answer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heard {
    Agreed,
    Behind,
}

/// What the rounds so far learned, about `ours`, the node's list then.
/// A member that has a table keeps it (changes only join), so one that
/// agreed is not asked again until the node's list changes; one that
/// answered behind and then did not answer in time is still behind.
#[derive(Debug, Default)]
pub struct Rounds {
    ours: Vec<Info>,
    heard: BTreeMap<NodeId, Heard>,
}

impl Rounds {
    /// The node's list as a round starts: agreements with another list no
    /// longer count.
    pub fn ours(&mut self, ours: Vec<Info>) {
        if ours != self.ours {
            self.ours = ours;
            self.heard.retain(|_, heard| *heard != Heard::Agreed);
        }
    }

    /// Whether this round asks `member` (it has not agreed yet).
    pub fn asks(&self, member: &NodeId) -> bool {
        self.heard.get(member) != Some(&Heard::Agreed)
    }

    /// `member` answered with `theirs`.
    pub fn heard(&mut self, member: NodeId, theirs: &[Info]) {
        let heard = if theirs == self.ours {
            Heard::Agreed
        } else {
            Heard::Behind
        };
        self.heard.insert(member, heard);
    }

    /// Where the members of `live` stand.
    pub fn tally<'a>(&self, live: impl IntoIterator<Item = &'a NodeId>) -> Agreement {
        let mut agreement = Agreement::default();
        for id in live {
            match self.heard.get(id) {
                Some(Heard::Agreed) => agreement.agreed.push(id.clone()),
                Some(Heard::Behind) => agreement.behind.push(id.clone()),
                None => agreement.unreachable.push(id.clone()),
            }
        }
        agreement
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::test_settings;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    #[test]
    fn members_are_tallied_by_their_latest_answer_against_the_latest_list() {
        let info = |n| Info {
            name: "default".into(),
            settings: test_settings(n),
        };
        let (old, new) = (vec![info(3)], vec![info(3), info(2)]);
        let (a, b, c) = (node("a"), node("b"), node("c"));
        let live = [a.clone(), b.clone(), c.clone()];

        let mut rounds = Rounds::default();
        rounds.ours(new.clone());
        rounds.heard(a.clone(), &new);
        rounds.heard(b.clone(), &old);
        let first = rounds.tally(&live);
        assert_eq!(
            (first.agreed, first.behind),
            (vec![a.clone()], vec![b.clone()])
        );
        assert_eq!(first.unreachable, vec![c.clone()]);
        assert!(!rounds.asks(&a) && rounds.asks(&b) && rounds.asks(&c));

        // b catches up; c still says nothing.
        rounds.ours(new.clone());
        rounds.heard(b.clone(), &new);
        let second = rounds.tally(&live);
        assert_eq!(second.agreed, vec![a.clone(), b.clone()]);
        assert!(!second.is_complete());

        // The node's own list moved on: earlier agreements no longer count.
        rounds.ours(old.clone());
        assert!(rounds.asks(&a) && rounds.asks(&b));
        assert_eq!(rounds.tally(&live).unreachable, live.to_vec());
        rounds.heard(c.clone(), &new);
        assert_eq!(rounds.tally(&live).behind, vec![c]);
    }
}

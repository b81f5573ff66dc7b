//! The Bridge's bookkeeping of its peers, with time as an input (ms):
//! calls sent and awaiting their answer, each with a deadline, and the
//! backoff before reconnecting to a peer whose connection failed.
//!
//! A call is answered at most once: by its reply, by its deadline passing
//! (`expired`), or by its connection dropping (`take_if`). One timer in the
//! shell, set for `next_deadline`, serves every call.

use std::collections::HashMap;

use crate::node::NodeId;

/// A call awaiting its answer; `waiter` is the shell's handle on whoever
/// waits for it (and whatever else the shell needs, such as the link).
#[derive(Debug)]
pub struct Waiting<T> {
    pub to: NodeId,
    pub deadline: u64,
    pub waiter: T,
}

#[derive(Debug)]
pub struct Pending<T> {
    next_id: u64,
    calls: HashMap<u64, Waiting<T>>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            next_id: 0,
            calls: HashMap::new(),
        }
    }
}

impl<T> Pending<T> {
    /// Records a call to `to` due by `deadline`; returns its id (the
    /// correlation id its reply carries).
    pub fn add(&mut self, to: NodeId, deadline: u64, waiter: T) -> u64 {
        self.next_id += 1;
        self.calls.insert(
            self.next_id,
            Waiting {
                to,
                deadline,
                waiter,
            },
        );
        self.next_id
    }

    /// The call a reply with `id` answers (None: answered already, or
    /// never sent).
    pub fn answer(&mut self, id: u64) -> Option<Waiting<T>> {
        self.calls.remove(&id)
    }

    /// The calls past their deadline at `now`.
    pub fn expired(&mut self, now: u64) -> Vec<Waiting<T>> {
        self.take_if(|w| w.deadline <= now)
    }

    /// The calls `pick` chooses (those on a connection that dropped, say).
    pub fn take_if(&mut self, mut pick: impl FnMut(&Waiting<T>) -> bool) -> Vec<Waiting<T>> {
        self.calls
            .extract_if(|_, w| pick(w))
            .map(|(_, w)| w)
            .collect()
    }

    /// When the earliest call still waiting is due.
    pub fn next_deadline(&self) -> Option<u64> {
        self.calls.values().map(|w| w.deadline).min()
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

/// How long to wait before reconnecting to a peer whose connection failed:
/// `min_ms` after the first failure, doubling up to `max_ms`, until a
/// connection succeeds. Meanwhile calls to it fail at once, so a session
/// learns of a dead node without waiting for its deadline.
#[derive(Debug, Clone)]
pub struct Backoff {
    min_ms: u64,
    max_ms: u64,
    peers: HashMap<NodeId, Retry>,
}

#[derive(Debug, Clone, Copy)]
struct Retry {
    /// No new connection before this.
    until: u64,
    /// The wait after the next failure.
    next_wait: u64,
}

impl Backoff {
    pub fn new(min_ms: u64, max_ms: u64) -> Self {
        Backoff {
            min_ms,
            max_ms,
            peers: HashMap::new(),
        }
    }

    /// Whether a connection to `peer` must wait at `now`.
    pub fn is_waiting(&self, peer: &NodeId, now: u64) -> bool {
        self.peers.get(peer).is_some_and(|r| now < r.until)
    }

    /// A connection to `peer` failed at `now`.
    pub fn failed(&mut self, peer: &NodeId, now: u64) {
        let wait = self.peers.get(peer).map_or(self.min_ms, |r| r.next_wait);
        self.peers.insert(
            peer.clone(),
            Retry {
                until: now + wait,
                next_wait: (wait * 2).min(self.max_ms),
            },
        );
    }

    /// A connection to `peer` succeeded: no more waiting.
    pub fn reached(&mut self, peer: &NodeId) {
        self.peers.remove(peer);
    }

    /// Forgets every wait (faults healed, or a restart).
    pub fn clear(&mut self) {
        self.peers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn a_call_is_answered_once_by_its_reply_its_deadline_or_its_link() {
        let mut p = Pending::default();
        let a = p.add(id("b"), 100, "on link 1");
        let b = p.add(id("b"), 50, "on link 2");
        let c = p.add(id("c"), 200, "on link 1");
        assert_eq!(p.next_deadline(), Some(50));
        assert_eq!(p.answer(a).map(|w| w.waiter), Some("on link 1"));
        assert!(p.answer(a).is_none(), "answered once");
        let expired: Vec<_> = p.expired(60).into_iter().map(|w| w.waiter).collect();
        assert_eq!(expired, vec!["on link 2"]);
        assert!(p.answer(b).is_none(), "a late reply finds nothing");
        let dropped = p.take_if(|w| w.waiter == "on link 1");
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].to, id("c"));
        assert!(p.answer(c).is_none() && p.is_empty());
        assert_eq!(p.next_deadline(), None);
    }

    #[test]
    fn backoff_doubles_to_its_bound_and_ends_on_success() {
        let mut b = Backoff::new(100, 350);
        let peer = id("p");
        assert!(!b.is_waiting(&peer, 0));
        b.failed(&peer, 0);
        assert!(b.is_waiting(&peer, 99) && !b.is_waiting(&peer, 100));
        b.failed(&peer, 100);
        assert!(b.is_waiting(&peer, 299) && !b.is_waiting(&peer, 300));
        b.failed(&peer, 300);
        assert!(
            b.is_waiting(&peer, 649) && !b.is_waiting(&peer, 650),
            "bounded"
        );
        b.reached(&peer);
        assert!(!b.is_waiting(&peer, 300));
        b.failed(&peer, 1000);
        assert!(!b.is_waiting(&peer, 1100), "back to the first wait");
    }
}

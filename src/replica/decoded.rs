//! Decoded copies of the large typed states written last, kept between
//! writes. A set of 100,000 members is a 1.3 MB record: decoding it (and
//! rebuilding its member index) and dropping it again took most of an
//! add's 150 ms on every replica, so a replica keeps the state it just
//! wrote and joins the next delta into it.
//!
//! A copy here always equals what storage holds under its key (its record
//! and tail joined): every write of the key forgets it first
//! (`Replica::store_state`, `store_change`, `remove`, the start-up scan's
//! rewrite), and a write puts the new state back only once storage took
//! it.

use std::collections::{HashMap, VecDeque};

use super::Record;
use crate::version::SiblingSet;

/// States encoded smaller than this are decoded when needed.
const MIN_BYTES: usize = 64 << 10;
/// The most encoded bytes kept (decoded, a set takes about ten times its
/// encoding: some 40 MB).
const BUDGET: usize = 4 << 20;

#[derive(Debug)]
pub(super) struct Decoded {
    /// States encoded smaller are not kept (`MIN_BYTES`; the simulator
    /// keeps every state, so that its faults run against the copies).
    min_bytes: usize,
    /// Per stored key: the state and what it counts for.
    copies: HashMap<Vec<u8>, (SiblingSet, Record)>,
    /// Keys, least recently kept first.
    order: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Default for Decoded {
    fn default() -> Self {
        Decoded {
            min_bytes: MIN_BYTES,
            copies: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl Decoded {
    /// Keeps states of any size from now on.
    #[cfg(feature = "sim")]
    pub(super) fn keep_any_size(&mut self) {
        self.min_bytes = 0;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }

    /// Whether a state stored in `bytes` would be kept.
    pub(super) fn worth(&self, bytes: u64) -> bool {
        (self.min_bytes as u64..=BUDGET as u64).contains(&bytes)
    }

    /// Takes the copy of `stored` out, if one is kept.
    pub(super) fn take(&mut self, stored: &[u8]) -> Option<(SiblingSet, Record)> {
        if self.copies.is_empty() {
            return None;
        }
        let (state, record) = self.copies.remove(stored)?;
        self.bytes -= record.bytes as usize;
        self.order.retain(|k| k != stored);
        Some((state, record))
    }

    /// Forgets the copy of `stored` (storage is about to change).
    pub(super) fn forget(&mut self, stored: &[u8]) {
        self.take(stored);
    }

    /// Keeps `state`, stored under `stored` as `bytes`, if it is large
    /// enough to be worth it; the least recently kept go to stay within
    /// the budget.
    pub(super) fn keep(&mut self, stored: Vec<u8>, state: SiblingSet, record: Record) {
        if !self.worth(record.bytes) {
            return;
        }
        self.forget(&stored);
        let bytes = record.bytes as usize;
        while self.bytes + bytes > BUDGET {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((_, r)) = self.copies.remove(&oldest) {
                self.bytes -= r.bytes as usize;
            }
        }
        self.bytes += bytes;
        self.order.push_back(stored.clone());
        self.copies.insert(stored, (state, record));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::{Set, Typed};
    use crate::version::Actor;

    fn large(members: u32) -> (SiblingSet, Record) {
        let mut set = Set::default();
        for i in 0..members {
            set.add(Actor(1), &i.to_be_bytes());
        }
        let state = SiblingSet::of_typed(Typed::Set(set));
        let record = Record::of(b"k", &state, &crate::store::encode_state(&state), 0);
        (state, record)
    }

    #[test]
    fn only_large_states_are_kept_and_the_budget_holds() {
        let mut d = Decoded::default();
        let (small, small_bytes) = large(10);
        d.keep(b"small".to_vec(), small, small_bytes);
        assert!(d.take(b"small").is_none(), "too small to keep");
        let (big, bytes) = large(10_000);
        assert!(bytes.bytes >= MIN_BYTES as u64);
        let each = bytes.bytes as usize;
        let fit = BUDGET / each;
        for i in 0..fit + 2 {
            d.keep(format!("k{i}").into_bytes(), big.clone(), bytes);
            assert!(d.bytes <= BUDGET);
        }
        assert_eq!(d.copies.len(), fit);
        assert!(
            d.take(b"k0").is_none(),
            "the least recently kept went first"
        );
        let (state, kept) = d.take(format!("k{}", fit + 1).as_bytes()).unwrap();
        assert_eq!((state, kept), (big, bytes));
        assert_eq!(d.bytes, (fit - 1) * each);
        assert_eq!(d.order.len(), d.copies.len());
    }
}

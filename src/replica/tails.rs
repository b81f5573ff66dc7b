//! Deltas stored beside a large set's or map's record, so an add to a set
//! of 100,000 members writes the add, not the set.
//!
//! A write to a set or map whose record is large (`Tails::from_bytes`)
//! appends its delta, encoded as a sibling set, under the record's tail;
//! the record itself is written again only once the tail holds
//! `max_entries` deltas or more bytes than a quarter of the record, and
//! that write drops the tail. A read of the key joins the tail's deltas
//! into the record. A delta is joined, never applied, so a tail entry
//! that outlives the rewrite meant to drop it (a crash between the two)
//! changes nothing when joined again.
//!
//! Tails live in the data keyspace, past every partition's range (a
//! stored key's prefix is a partition below `MAX_PARTITIONS`), so scans
//! of partitions never meet them and a backup holds them with the rest:
//! `TAIL ++ stored key's length (u32) ++ stored key ++ sequence (u64)`,
//! all big-endian. A replica keeps an index of the keys that have a tail,
//! read when it opens.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::store::{Store, decode_state};
use crate::version::SiblingSet;

pub(super) use crate::store::TAIL;

/// Records from this size (stored key, record and tail) take deltas.
const FROM_BYTES: u64 = 64 << 10;
/// The most deltas a tail holds before the record is written again.
const MAX_ENTRIES: u32 = 256;
/// A tail's bytes stay within the record's over this.
const SHARE: u64 = 4;

/// One key's tail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Tail {
    pub(super) entries: u32,
    pub(super) bytes: u64,
    /// The next entry's sequence number.
    next: u64,
}

#[derive(Debug)]
pub(super) struct Tails {
    tails: HashMap<Vec<u8>, Tail>,
    from_bytes: u64,
    max_entries: u32,
    share: u64,
}

impl Default for Tails {
    fn default() -> Self {
        Tails {
            tails: HashMap::new(),
            from_bytes: FROM_BYTES,
            max_entries: MAX_ENTRIES,
            share: SHARE,
        }
    }
}

/// Where the tail of `stored` begins.
fn prefix(stored: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(TAIL.len() + 4 + stored.len() + 8);
    k.extend_from_slice(&TAIL);
    let len = u32::try_from(stored.len()).expect("a stored key is far below 4 GiB");
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(stored);
    k
}

/// Splits a tail entry's key into the stored key and the sequence.
fn parse(key: &[u8]) -> Result<(&[u8], u64)> {
    let bad = || Error::Storage(format!("malformed tail key of {} bytes", key.len()));
    let rest = key.strip_prefix(&TAIL[..]).ok_or_else(bad)?;
    let [a, b, c, d, rest @ ..] = rest else {
        return Err(bad());
    };
    let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    if rest.len() != len + 8 {
        return Err(bad());
    }
    let (stored, seq) = rest.split_at(len);
    let seq = u64::from_be_bytes(seq.try_into().map_err(|_| bad())?);
    Ok((stored, seq))
}

impl Tails {
    /// The index of every tail `store` holds.
    pub(super) fn open<S: Store>(store: &S) -> Result<Tails> {
        let mut tails = Tails::default();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let chunk = store.scan(&TAIL, after.as_deref(), super::SCAN_CHUNK)?;
            for (key, value) in &chunk {
                let (stored, seq) = parse(key)?;
                let tail = tails.tails.entry(stored.to_vec()).or_default();
                tail.entries += 1;
                tail.bytes += value.len() as u64;
                tail.next = tail.next.max(seq + 1);
            }
            match chunk.last() {
                Some((k, _)) if chunk.len() == super::SCAN_CHUNK => after = Some(k.clone()),
                _ => return Ok(tails),
            }
        }
    }

    /// Takes deltas into tails from records of any size, and rewrites a
    /// record after a few (the simulator: its faults then run against
    /// tails).
    #[cfg(feature = "sim")]
    pub(super) fn take_any_size(&mut self) {
        self.from_bytes = 0;
        self.max_entries = 4;
        self.share = 1;
    }

    /// The tail of `stored`, if it has one.
    pub(super) fn get(&self, stored: &[u8]) -> Option<Tail> {
        match self.tails.is_empty() {
            true => None,
            false => self.tails.get(stored).copied(),
        }
    }

    /// Whether a delta of `delta` bytes to the record of `stored`, of
    /// `record` bytes in all (its tail's included), goes to its tail.
    pub(super) fn room(&self, stored: &[u8], record: u64, delta: usize) -> bool {
        let tail = self.get(stored).unwrap_or_default();
        let base = record.saturating_sub(tail.bytes);
        record >= self.from_bytes
            && tail.entries < self.max_entries
            && (tail.bytes + delta as u64).saturating_mul(self.share) <= base
    }

    /// Appends `delta` (an encoded sibling set) to the tail of `stored`.
    pub(super) fn append<S: Store>(
        &mut self,
        store: &mut S,
        stored: &[u8],
        delta: &[u8],
    ) -> Result<()> {
        let tail = self.tails.entry(stored.to_vec()).or_default();
        let mut key = prefix(stored);
        key.extend_from_slice(&tail.next.to_be_bytes());
        store.put(&key, delta)?;
        tail.entries += 1;
        tail.bytes += delta.len() as u64;
        tail.next += 1;
        Ok(())
    }

    /// Joins the deltas of the tail of `stored` into `state`.
    pub(super) fn join_into<S: Store>(
        &self,
        store: &S,
        stored: &[u8],
        state: &mut SiblingSet,
    ) -> Result<()> {
        if self.get(stored).is_none() {
            return Ok(());
        }
        for (_, delta) in Self::entries(store, stored)? {
            state.join(&decode_state(&delta)?);
        }
        Ok(())
    }

    /// Drops the tail of `stored` (its record was written whole, or
    /// removed).
    pub(super) fn drop<S: Store>(&mut self, store: &mut S, stored: &[u8]) -> Result<()> {
        if self.tails.is_empty() || self.tails.remove(stored).is_none() {
            return Ok(());
        }
        for (key, _) in Self::entries(store, stored)? {
            store.remove(&key)?;
        }
        Ok(())
    }

    /// Every entry of the tail of `stored`, in order.
    fn entries<S: Store>(store: &S, stored: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let prefix = prefix(stored);
        let mut all = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let chunk = store.scan(&prefix, after.as_deref(), super::SCAN_CHUNK)?;
            let full = chunk.len() == super::SCAN_CHUNK;
            after = chunk.last().map(|(k, _)| k.clone());
            // A longer stored key with this one as its prefix has its own
            // length field, so every entry here is this key's.
            all.extend(chunk);
            if !full {
                return Ok(all);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::{CausalContext, Operation, Typed};
    use crate::replica::Replica;
    use crate::store::MemStore;
    use crate::version::Actor;

    #[test]
    fn tail_keys_round_trip_and_sort_after_every_partition() {
        let mut key = prefix(b"\x00\x00\x00\x07cart");
        key.extend_from_slice(&9u64.to_be_bytes());
        assert_eq!(parse(&key).unwrap(), (&b"\x00\x00\x00\x07cart"[..], 9));
        assert!(
            key.as_slice()
                > crate::partition::Partition(u16::MAX.into())
                    .prefix()
                    .as_slice()
        );
        assert!(parse(&key[..key.len() - 1]).is_err());
        assert!(parse(b"\x00\x00\x00\x01k").is_err());
    }

    #[test]
    fn a_tail_is_indexed_again_on_open_and_dropped_whole() {
        let mut store = MemStore::default();
        let mut tails = Tails::default();
        tails.append(&mut store, b"ab", b"one").unwrap();
        tails.append(&mut store, b"ab", b"three").unwrap();
        // A stored key the first one is a prefix of keeps a tail apart.
        tails.append(&mut store, b"abc", b"x").unwrap();
        let reopened = Tails::open(&store).unwrap();
        assert_eq!(reopened.get(b"ab"), tails.get(b"ab"));
        assert_eq!(
            reopened.get(b"ab"),
            Some(Tail {
                entries: 2,
                bytes: 8,
                next: 2
            })
        );
        tails.drop(&mut store, b"ab").unwrap();
        assert_eq!(tails.get(b"ab"), None);
        assert_eq!(Tails::open(&store).unwrap().tails.len(), 1);
        assert_eq!(store.map.len(), 1, "only the other key's entry is left");
    }

    fn replica(actor: u64) -> Replica<MemStore> {
        Replica::open(
            MemStore::default(),
            MemStore::default(),
            64,
            Actor(actor),
            5,
        )
        .unwrap()
        .0
    }

    fn tail_keys(r: &Replica<MemStore>) -> usize {
        r.store()
            .map
            .keys()
            .filter(|k| k.starts_with(&TAIL))
            .count()
    }

    #[test]
    fn a_large_sets_adds_are_stored_as_deltas_and_read_back_whole() {
        let (mut r, mut other) = (replica(1), replica(2));
        let none = CausalContext::default();
        let add = |m: &[u8]| Operation::Add(vec![m.to_vec()]);
        let many = (0..10_000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let (_, big) = r
            .apply_typed(b"s", &Operation::Add(many), &none, None, 0)
            .unwrap();
        other.merge(b"s", &big, None).unwrap();
        let (stored, p) = r.place(b"s");
        let record = r.store().map[&stored].clone();
        for i in 0..5u8 {
            let (_, delta) = r.apply_typed(b"s", &add(&[i, i]), &none, None, 0).unwrap();
            assert!(other.merge(b"s", &delta, None).unwrap());
            assert!(!other.merge(b"s", &delta, None).unwrap(), "already held");
        }
        let seen = r.read(b"s").unwrap().typed().unwrap().context();
        let (_, delta) = r
            .apply_typed(b"s", &Operation::Remove(vec![vec![0, 0]]), &seen, None, 0)
            .unwrap();
        other.merge(b"s", &delta, None).unwrap();
        assert_eq!(
            r.store().map[&stored],
            record,
            "the record was not written again"
        );
        assert_eq!((tail_keys(&r), tail_keys(&other)), (6, 6));
        // A replica that took the state whole: the same state, the same
        // hash tree.
        let mut whole = replica(3);
        whole.merge(b"s", &r.read(b"s").unwrap(), None).unwrap();
        assert_eq!(tail_keys(&whole), 0);
        for x in [&r, &other] {
            assert_eq!(x.read(b"s").unwrap(), whole.read(b"s").unwrap());
            assert_eq!(x.tree(p).unwrap(), whole.tree(p).unwrap());
            assert_eq!(
                x.chunk(p, None, 10).unwrap().0,
                whole.chunk(p, None, 10).unwrap().0
            );
            x.verify_tally().unwrap();
        }
        let Some(Typed::Set(set)) = r.read(b"s").unwrap().typed().cloned() else {
            panic!("a set");
        };
        assert_eq!(set.len(), 10_004);
        assert!(!set.contains(&[0, 0]) && set.contains(&[4, 4]));
        // Opened again (no decoded copy), it reads its tail.
        let reopened = Replica::open(r.store().clone(), MemStore::default(), 64, Actor(4), 5)
            .unwrap()
            .0;
        assert_eq!(reopened.read(b"s").unwrap(), whole.read(b"s").unwrap());
        assert_eq!(reopened.tree(p).unwrap(), whole.tree(p).unwrap());
        reopened.verify_tally().unwrap();
        // A full tail makes the next write store the record whole.
        let mut i = 0u32;
        while tail_keys(&r) > 0 {
            r.apply_typed(b"s", &add(&i.to_le_bytes()), &none, None, 0)
                .unwrap();
            i += 1;
            assert!(i <= MAX_ENTRIES, "the tail was never dropped");
        }
        assert_ne!(r.store().map[&stored], record);
        r.verify_tally().unwrap();
        r.remove(b"s").unwrap();
        assert!(r.store().map.is_empty(), "the record and its tail went");
        r.verify_tally().unwrap();
    }

    #[test]
    fn a_tail_entry_left_by_a_crash_joins_again_harmlessly() {
        let mut r = replica(1);
        let none = CausalContext::default();
        let many = (0..10_000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        r.apply_typed(b"s", &Operation::Add(many), &none, None, 0)
            .unwrap();
        r.apply_typed(b"s", &Operation::Add(vec![b"x".to_vec()]), &none, None, 0)
            .unwrap();
        let left: Vec<_> = r
            .store()
            .map
            .iter()
            .filter(|(k, _)| k.starts_with(&TAIL))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(left.len(), 1);
        // x is removed, and the record written whole: the crash keeps the
        // delta that added x.
        let seen = r.read(b"s").unwrap().typed().unwrap().context();
        r.tails.max_entries = 1;
        r.apply_typed(
            b"s",
            &Operation::Remove(vec![b"x".to_vec()]),
            &seen,
            None,
            0,
        )
        .unwrap();
        assert_eq!(tail_keys(&r), 0);
        let mut store = r.store().clone();
        for (k, v) in left {
            store.map.insert(k, v);
        }
        let reopened = Replica::open(store, MemStore::default(), 64, Actor(2), 5)
            .unwrap()
            .0;
        assert_eq!(reopened.read(b"s").unwrap(), r.read(b"s").unwrap());
        let (_, p) = r.place(b"s");
        assert_eq!(reopened.tree(p).unwrap(), r.tree(p).unwrap());
        reopened.verify_tally().unwrap();
    }

    #[test]
    fn a_tail_takes_deltas_only_from_large_records_and_up_to_its_bounds() {
        let mut store = MemStore::default();
        let mut tails = Tails::default();
        assert!(!tails.room(b"k", FROM_BYTES - 1, 10), "too small");
        assert!(tails.room(b"k", FROM_BYTES, 10));
        assert!(
            !tails.room(b"k", FROM_BYTES, (FROM_BYTES / SHARE) as usize + 1),
            "more than its share of the record"
        );
        for _ in 0..MAX_ENTRIES {
            tails.append(&mut store, b"k", b"d").unwrap();
        }
        assert!(!tails.room(b"k", FROM_BYTES * 2, 1), "full");
    }
}

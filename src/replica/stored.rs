//! How a key's state is read from storage and written back: its record,
//! with the deltas of its tail (`tails`) joined in, the decoded copies
//! kept of large ones (`decoded`), and what each stored state counts for
//! in the leaves and usage (`Record`).

use super::collect::mark;
use super::{Record, Replica};
use crate::error::Result;
use crate::store::{Store, decode_state, encode_state, holds_kernel, state_item_hash, stored_key};
use crate::version::SiblingSet;

impl<S: Store> Replica<S> {
    /// The local copy of `key`; empty if absent.
    pub fn read(&self, key: &[u8]) -> Result<SiblingSet> {
        let stored = stored_key(key, self.layout);
        match self.store.get(&stored)? {
            Some(bytes) => self.state_of(&stored, &bytes),
            None => Ok(SiblingSet::default()),
        }
    }

    /// The state stored under `stored` as `bytes`, with the deltas of its
    /// tail joined in.
    pub(super) fn state_of(&self, stored: &[u8], bytes: &[u8]) -> Result<SiblingSet> {
        let mut state = decode_state(bytes)?;
        self.tails.join_into(&self.store, stored, &mut state)?;
        Ok(state)
    }

    /// The stored copy (its record and tail joined) and what it counts
    /// for, if the key is stored.
    pub(super) fn stored(&self, key: &[u8]) -> Result<Option<(SiblingSet, Record)>> {
        let stored = stored_key(key, self.layout);
        match self.store.get(&stored)? {
            Some(bytes) => self.assemble(key, &stored, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The state of `key` stored under `stored` as `bytes`, with the
    /// deltas of its tail joined in, and what it counts for.
    pub(super) fn assemble(
        &self,
        key: &[u8],
        stored: &[u8],
        bytes: &[u8],
    ) -> Result<(SiblingSet, Record)> {
        let state = self.state_of(stored, bytes)?;
        let tail = self.tails.get(stored).map_or(0, |t| t.bytes);
        let record = Record::of(key, &state, bytes, tail);
        Ok((state, record))
    }

    /// `stored`, taken from the decoded copies when one is kept (a write
    /// that changes the key keeps its new state again).
    pub(super) fn take_stored(&mut self, key: &[u8]) -> Result<Option<(SiblingSet, Record)>> {
        if self.decoded.is_empty() {
            return self.stored(key);
        }
        match self.decoded.take(&stored_key(key, self.layout)) {
            Some(kept) => Ok(Some(kept)),
            None => self.stored(key),
        }
    }

    /// Keeps the decoded copy of `key`'s state just stored, if it is large
    /// enough to be worth it.
    pub(super) fn keep_decoded(&mut self, key: &[u8], state: SiblingSet, record: Record) {
        if self.decoded.worth(record.bytes) {
            self.decoded
                .keep(stored_key(key, self.layout), state, record);
        }
    }

    /// What the record of `key` stored under `stored` as `bytes` counts
    /// for (a set or map is decoded for it, with its tail).
    pub(super) fn record(&self, key: &[u8], stored: &[u8], bytes: &[u8]) -> Result<Record> {
        match self.tails.get(stored).is_none() && !holds_kernel(bytes) {
            true => Ok(Record::of(key, &SiblingSet::default(), bytes, 0)),
            false => Ok(self.assemble(key, stored, bytes)?.1),
        }
    }

    /// Writes `new` over the stored state that counted for `old` (None: a
    /// new key), whole.
    pub(super) fn store_state(
        &mut self,
        key: &[u8],
        old: Option<Record>,
        new: &SiblingSet,
    ) -> Result<Record> {
        self.store_whole(key, old, new, &encode_state(new))
    }

    /// `store_state` of `new` encoded as `encoded`.
    pub(super) fn store_whole(
        &mut self,
        key: &[u8],
        old: Option<Record>,
        new: &SiblingSet,
        encoded: &[u8],
    ) -> Result<Record> {
        let (stored, p) = self.place(key);
        self.decoded.forget(&stored);
        self.store.put(&stored, encoded)?;
        self.tails.drop(&mut self.store, &stored)?;
        let record = Record::of(key, new, encoded, 0);
        self.stored_now(key, (&stored, p), old, (new, new), record);
        Ok(record)
    }

    /// Stores `new`, which is the stored state (counted for `old`) joined
    /// with `delta`: as `delta` in the key's tail if it has room (a large
    /// set or map), else whole.
    pub(super) fn store_change(
        &mut self,
        key: &[u8],
        old: Option<Record>,
        new: &SiblingSet,
        delta: &SiblingSet,
    ) -> Result<Record> {
        let (stored, p) = self.place(key);
        if let Some(old) = old
            && new.kernel().is_some()
        {
            let encoded = encode_state(delta);
            if self.tails.room(&stored, old.bytes, encoded.len()) {
                self.decoded.forget(&stored);
                self.tails.append(&mut self.store, &stored, &encoded)?;
                let record = Record {
                    hash: state_item_hash(key, new, &[]),
                    bytes: old.bytes + encoded.len() as u64,
                };
                self.stored_now(key, (&stored, p), Some(old), (new, delta), record);
                return Ok(record);
            }
        }
        self.store_state(key, old, new)
    }

    /// Keeps the marks, counter writers, leaves and usage current after
    /// `new` was stored under `stored` (of partition `p`), counting for
    /// `record` (`old` before); `change` is what it added (`new`, or the
    /// delta joined into a large map, whose writers are all a write can
    /// add, so its whole state is not gone through).
    fn stored_now(
        &mut self,
        key: &[u8],
        (stored, p): (&[u8], crate::partition::Partition),
        old: Option<Record>,
        (new, change): (&SiblingSet, &SiblingSet),
        record: Record,
    ) {
        if let Some(at) = new.collectable_at(self.keep_deleted_ms) {
            mark(&mut self.tombstoned, p, at);
        }
        self.note_counter(p, change);
        if self.scanned(stored) {
            self.tally.count(self.q, p, key, old, Some(record));
        }
    }
}

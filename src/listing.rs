//! Listing keys: every partition once, from one healthy replica each (a
//! coverage plan, as Riak's), a page at a time.
//!
//! A `Listing` walks the partitions in order. For each it asks one replica
//! (`ReplicaMsg::List`) for live keys after a cursor; the replica scans a
//! bounded number of entries, so one call costs a bounded amount of work
//! and memory whatever the partition holds, and says where it stopped. The
//! page ends when it holds `limit` keys or every partition is done, and its
//! continuation token is the cursor: (partition, last key seen). Keys come
//! back in (partition, key) order, so no key appears in two pages.
//!
//! A listing reads one replica per partition and does not read-repair: a
//! key written while it runs, or held only by replicas not asked, may be
//! missed. Tombstoned keys are hidden.
//!
//! A token also says the Q it was made at. If Q doubled since, the
//! listing goes on from the first child of the cursor's partition, after
//! the same key, and reads the other children from their starts: a key of
//! theirs returned before the split may be returned again, none is
//! skipped. A node that has not heard of the split yet refuses a token
//! made after it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::node::NodeId;
use crate::partition::Partition;
use crate::ring::Ring;

/// Most keys one page (and one replica's answer) may hold.
pub const MAX_PAGE: u32 = 10_000;
/// The page size when the client does not say.
pub const DEFAULT_PAGE: u32 = 1000;
/// Entries a replica scans for one `List` call, per key asked for: bounds
/// the work of a call when few keys match (tombstones, another prefix).
pub const SCAN_PER_KEY: usize = 8;

/// Where a listing stands: the next partition to read, and the last key
/// already returned from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    partition: u32,
    after: Option<Vec<u8>>,
}

/// One call of a listing: ask a replica of `partition` (of `partitions`)
/// for up to `limit` live keys after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub partition: Partition,
    pub partitions: u32,
    pub after: Option<Vec<u8>>,
    pub limit: u32,
}

/// One page of a listing under way.
#[derive(Debug, Clone)]
pub struct Listing {
    q: u32,
    cursor: Cursor,
    limit: usize,
    keys: Vec<Vec<u8>>,
}

impl Listing {
    /// A page of up to `limit` keys, starting where `token` (from the
    /// previous page; empty for the first) says, in a cluster of `q`
    /// partitions.
    pub fn new(token: &[u8], limit: u32, q: u32) -> Result<Listing> {
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Error::InvalidRequest(format!(
                "limit = {limit} must be between 1 and {MAX_PAGE}"
            )));
        }
        let cursor = if token.is_empty() {
            Cursor {
                partition: 0,
                after: None,
            }
        } else {
            let bad = || Error::InvalidRequest("not a continuation token of this cluster".into());
            let (mut cursor, rest): (Cursor, _) =
                postcard::take_from_bytes(token).map_err(|_| bad())?;
            // Tokens from before splits existed end with the cursor.
            let made_at = match rest {
                [] => q,
                rest => match postcard::take_from_bytes::<u32>(rest) {
                    Ok((made_at, [])) => made_at,
                    _ => return Err(bad()),
                },
            };
            if made_at > q {
                return Err(Error::Unavailable(format!(
                    "the listing was continued at {made_at} partitions; this node knows of {q} yet"
                )));
            }
            if !made_at.is_power_of_two() || cursor.partition >= made_at {
                return Err(bad());
            }
            // On from the first half of the cursor's partition.
            cursor.partition = Partition(cursor.partition)
                .descendants(made_at, q)
                .next()
                .map_or(cursor.partition, |p| p.0);
            cursor
        };
        Ok(Listing {
            q,
            cursor,
            limit: limit as usize,
            keys: Vec::new(),
        })
    }

    /// The next call to make, or None when the page is complete.
    pub fn next(&self) -> Option<Step> {
        if self.keys.len() >= self.limit || self.cursor.partition >= self.q {
            return None;
        }
        Some(Step {
            partition: Partition(self.cursor.partition),
            partitions: self.q,
            after: self.cursor.after.clone(),
            limit: (self.limit - self.keys.len()) as u32,
        })
    }

    /// A replica's answer to `next()`'s step: live keys (at most the
    /// step's limit, after its cursor, in order; checked), and the last key
    /// it scanned when it stopped before the partition's end (None: the
    /// partition is done).
    pub fn on_keys(&mut self, keys: Vec<Vec<u8>>, scanned_to: Option<Vec<u8>>) -> Result<()> {
        let Some(step) = self.next() else {
            return Err(Error::Internal("a listing answer with no call".into()));
        };
        let mut previous = step.after.as_deref();
        for key in &keys {
            if Partition::of_key(key, self.q) != step.partition
                || previous.is_some_and(|p| key.as_slice() <= p)
            {
                return Err(Error::Malformed(
                    "a listing answer out of order or of another partition".into(),
                ));
            }
            previous = Some(key);
        }
        if keys.len() > step.limit as usize {
            return Err(Error::Malformed("a listing answer over its limit".into()));
        }
        match scanned_to {
            Some(last) => self.cursor.after = Some(last),
            None => {
                self.cursor = Cursor {
                    partition: self.cursor.partition + 1,
                    after: None,
                }
            }
        }
        // The cursor must not stop short of a returned key.
        if let (Some(after), Some(key)) = (&self.cursor.after, keys.last())
            && after < key
        {
            self.cursor.after = Some(key.clone());
        }
        self.keys.extend(keys);
        Ok(())
    }

    /// The page: its keys, and the token of the next page (None: the
    /// listing is complete).
    pub fn page(self) -> (Vec<Vec<u8>>, Option<Vec<u8>>) {
        let token = (self.cursor.partition < self.q).then(|| {
            let mut token =
                postcard::to_stdvec(&self.cursor).expect("encoding to a Vec cannot fail");
            token.extend(postcard::to_stdvec(&self.q).expect("encoding to a Vec cannot fail"));
            token
        });
        (self.keys, token)
    }
}

/// The replicas to ask for `p`, in order: the preference list's nodes
/// that are up, then its others (a suspect node may still answer).
pub fn coverage(
    ring: &Ring,
    p: Partition,
    n: usize,
    is_up: impl Fn(&NodeId) -> bool,
) -> Vec<&NodeId> {
    let (up, rest): (Vec<&NodeId>, Vec<&NodeId>) = ring
        .preference_list(p, n)
        .into_iter()
        .partition(|node| is_up(node));
    up.into_iter().chain(rest).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Keys of `q` partitions by partition, sorted, as replicas hold them.
    fn keys(count: usize, q: u32) -> BTreeMap<u32, Vec<Vec<u8>>> {
        let mut by_partition: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
        for i in 0..count {
            let key = format!("key-{i}").into_bytes();
            by_partition
                .entry(Partition::of_key(&key, q).0)
                .or_default()
                .push(key);
        }
        for keys in by_partition.values_mut() {
            keys.sort();
        }
        by_partition
    }

    /// A replica's answer: up to `limit` keys after `after`, scanning at
    /// most `scan` entries.
    fn answer(
        held: &BTreeMap<u32, Vec<Vec<u8>>>,
        step: &Step,
        scan: usize,
    ) -> (Vec<Vec<u8>>, Option<Vec<u8>>) {
        let all = held.get(&step.partition.0).cloned().unwrap_or_default();
        let rest: Vec<Vec<u8>> = all
            .into_iter()
            .filter(|k| step.after.as_ref().is_none_or(|a| k > a))
            .collect();
        let taken: Vec<Vec<u8>> = rest
            .iter()
            .take((step.limit as usize).min(scan))
            .cloned()
            .collect();
        let done = taken.len() == rest.len();
        let last = taken.last().cloned();
        (taken, if done { None } else { last })
    }

    #[test]
    fn pages_cover_every_key_once() {
        let q = 64;
        let held = keys(2_000, q);
        let mut seen = Vec::new();
        let mut token = Vec::new();
        let mut pages = 0;
        loop {
            let mut listing = Listing::new(&token, 100, q).unwrap();
            while let Some(step) = listing.next() {
                // Replicas that stop early (a small scan budget) too.
                let (keys, scanned) = answer(&held, &step, 7);
                listing.on_keys(keys, scanned).unwrap();
            }
            let (keys, next) = listing.page();
            assert!(keys.len() <= 100);
            seen.extend(keys);
            pages += 1;
            match next {
                Some(t) => token = t,
                None => break,
            }
        }
        let mut expected: Vec<Vec<u8>> = held.into_values().flatten().collect();
        assert_eq!(seen.len(), expected.len(), "no key twice");
        seen.sort();
        expected.sort();
        assert_eq!(seen, expected, "every key once");
        assert!(pages >= 20);
    }

    #[test]
    fn bad_tokens_and_limits_are_refused() {
        assert!(Listing::new(&[], 0, 64).is_err());
        assert!(Listing::new(&[], MAX_PAGE + 1, 64).is_err());
        assert!(Listing::new(b"garbage", 10, 64).is_err());
        let beyond = postcard::to_stdvec(&Cursor {
            partition: 64,
            after: None,
        })
        .unwrap();
        let e = Listing::new(&beyond, 10, 64).unwrap_err();
        assert!(e.to_string().contains("continuation token"), "{e}");
    }

    #[test]
    fn a_listing_across_a_split_skips_no_key() {
        let all: Vec<Vec<u8>> = keys(2_000, 64).into_values().flatten().collect();
        let mut seen = Vec::new();
        let mut token = Vec::new();
        let mut pages = 0;
        loop {
            // Q doubles after the fifth page.
            let q = if pages < 5 { 64 } else { 128 };
            let held = keys(2_000, q);
            let mut listing = Listing::new(&token, 100, q).unwrap();
            while let Some(step) = listing.next() {
                assert_eq!(step.partitions, q);
                let (keys, scanned) = answer(&held, &step, 7);
                listing.on_keys(keys, scanned).unwrap();
            }
            let (keys, next) = listing.page();
            seen.extend(keys);
            pages += 1;
            match next {
                Some(t) => token = t,
                None => break,
            }
            if pages == 5 {
                let e = Listing::new(&token, 100, 32).unwrap_err();
                assert_eq!(e.kind(), crate::error::ErrorKind::Unavailable, "{e}");
            }
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), all.len(), "every key at least once");
    }

    #[test]
    fn an_answer_out_of_order_is_refused() {
        let q = 8;
        let held = keys(100, q);
        let mut listing = Listing::new(&[], 100, q).unwrap();
        let step = listing.next().unwrap();
        let (mut keys, scanned) = answer(&held, &step, 100);
        keys.reverse();
        if keys.len() > 1 {
            assert!(listing.on_keys(keys, scanned).is_err());
        }
        let foreign = held[&1][0].clone();
        let mut listing = Listing::new(&[], 100, q).unwrap();
        assert!(listing.on_keys(vec![foreign], None).is_err());
    }
}

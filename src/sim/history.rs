//! What the simulated clients did, what the replicas minted for them, and
//! the checks run over it once the cluster has converged.
//!
//! The simulator sees every version minted (`dots` of a write: more than
//! one only if a coordinator let a second minter mint after the first did
//! not answer, or an unanswered minter minted late), so the checks are
//! exact:
//!
//! - minted once: an acknowledged write has exactly one dot (a second one
//!   would escape the contexts of later writes and come back);
//! - nothing lost: every minted dot, acknowledged ones above all, is in its
//!   key's final state, or covered by the context of a write that took
//!   effect (was acknowledged, or reached the survivors: their final state,
//!   or a tombstone they collected, has seen it); a tombstone may also have
//!   been collected, and once a node
//!   was removed (its disk written off) a dot never acknowledged may be
//!   gone with it (it may have held the only copy: a stand-in that handed
//!   its hint over dropped its own);
//! - nothing dominated comes back: no final sibling is covered by the
//!   context of a write that took effect (this is how a deleted key would
//!   reappear);
//! - no phantom: every value read was written by someone, and reached a
//!   replica;
//! - nothing expired comes back: no read returns a value after its
//!   deadline (a value that expired may be collected, like a tombstone).

use std::collections::BTreeMap;

use crate::version::{Context, Dot, SiblingSet};

use super::typed::{TypedOp, TypedRead};

/// One client write (put or delete).
#[derive(Debug, Clone)]
pub struct Write {
    pub key: usize,
    /// None for a delete.
    pub value: Option<Vec<u8>>,
    pub context: Context,
    /// Every dot a replica minted for this write.
    pub dots: Vec<Dot>,
    /// The dot the client was given with the acknowledgement.
    pub acked: Option<Dot>,
    pub start: u64,
    pub end: Option<u64>,
    /// When the value expires (its namespace's TTL after `start`, when the
    /// coordinator planned it).
    pub expires: Option<u64>,
}

/// One successful client read.
#[derive(Debug, Clone)]
pub struct Read {
    pub key: usize,
    pub values: Vec<Vec<u8>>,
    pub at: u64,
}

#[derive(Debug, Clone, Default)]
pub struct History {
    pub writes: Vec<Write>,
    pub reads: Vec<Read>,
    /// Operations on typed keys, and reads of sets (`super::typed`).
    pub typed: Vec<TypedOp>,
    pub typed_reads: Vec<TypedRead>,
    /// Operations that failed or got no answer.
    pub failed: usize,
    /// Keys some replica collected a tombstone (or an expired value) of,
    /// with the context of each sibling set collected (every live replica
    /// had seen that much) and when.
    pub collected: BTreeMap<usize, Vec<(Context, u64)>>,
    /// Nodes whose disks were written off: removed from the cluster, or
    /// restored from a backup (what they wrote after it is gone).
    pub removed: usize,
}

impl History {
    pub fn acked_writes(&self) -> usize {
        self.writes.iter().filter(|w| w.acked.is_some()).count()
    }

    /// Checks the final, converged state of every key (`finals[key]`).
    /// `durable`: whether every minted version must survive (false when
    /// power losses may drop writes not yet synced). Returns the first
    /// violation found.
    pub fn check(&self, finals: &[SiblingSet], durable: bool) -> Result<(), String> {
        let by_value: BTreeMap<&[u8], &Write> = self
            .writes
            .iter()
            .filter_map(|w| w.value.as_deref().map(|v| (v, w)))
            .collect();
        for read in &self.reads {
            for v in &read.values {
                let Some(w) = by_value.get(v.as_slice()).filter(|w| !w.dots.is_empty()) else {
                    return Err(format!(
                        "a read of key-{} at {} ms returned {:?}, which no replica minted",
                        read.key,
                        read.at,
                        String::from_utf8_lossy(v)
                    ));
                };
                if let Some(expires) = w.expires.filter(|e| *e <= read.at) {
                    return Err(format!(
                        "a read of key-{} at {} ms returned {:?}, which expired at {expires} ms",
                        read.key,
                        read.at,
                        String::from_utf8_lossy(v)
                    ));
                }
            }
        }
        if !durable {
            return Ok(());
        }
        // Which write took effect with a context covering `dot`: it was
        // acknowledged, or its version reached the survivors (their final
        // state has seen it; a write that reached only a node removed
        // since, as a stand-in's hint handed over to it, did not).
        let seen = |key: usize, dot: Dot| {
            finals[key].context().covers(dot)
                || self
                    .collected
                    .get(&key)
                    .is_some_and(|c| c.iter().any(|(c, _)| c.covers(dot)))
        };
        let took_effect = |w: &Write| w.acked.is_some() || w.dots.iter().any(|d| seen(w.key, *d));
        let superseded_by = |key: usize, dot: Dot| {
            self.writes
                .iter()
                .position(|w| w.key == key && took_effect(w) && w.context.covers(dot))
        };
        for (key, state) in finals.iter().enumerate() {
            for s in state.siblings() {
                if let Some(i) = superseded_by(key, s.dot) {
                    let w = &self.writes[i];
                    return Err(format!(
                        "key-{key} holds sibling {} ({}) although {} (started at {} ms) superseded it",
                        s.dot,
                        match s.value.data() {
                            Some(d) => format!("{:?}", String::from_utf8_lossy(d)),
                            None => "a tombstone".into(),
                        },
                        describe(&w.value),
                        w.start
                    ));
                }
            }
        }
        for w in &self.writes {
            if w.acked.is_some() && w.dots.len() > 1 {
                return Err(format!(
                    "acknowledged {} of key-{} was minted {} times ({:?}): later writes cover only the dot acknowledged",
                    describe(&w.value),
                    w.key,
                    w.dots.len(),
                    w.dots
                ));
            }
            for &dot in &w.dots {
                let present = finals[w.key].siblings().any(|s| s.dot == dot);
                // A delete's tombstone may be collected; a value only once
                // it has expired.
                let collected = self.collected.get(&w.key).is_some_and(|c| {
                    w.value.is_none()
                        || w.expires.is_some_and(|expires| {
                            c.iter().any(|(c, at)| c.covers(dot) && *at >= expires)
                        })
                });
                let written_off = w.acked != Some(dot) && self.removed > 0;
                if !present && !collected && !written_off && superseded_by(w.key, dot).is_none() {
                    let acked = if w.acked == Some(dot) {
                        format!("acknowledged at {} ms", w.end.unwrap_or(0))
                    } else {
                        "not acknowledged".to_string()
                    };
                    return Err(format!(
                        "{} of key-{} (dot {dot}, started at {} ms, {acked}) was lost: final state {:?}",
                        describe(&w.value),
                        w.key,
                        w.start,
                        finals[w.key]
                    ));
                }
            }
        }
        Ok(())
    }
}

/// "put \"value\"" or "delete", for messages and traces.
pub(crate) fn describe(value: &Option<Vec<u8>>) -> String {
    match value {
        Some(v) => format!("put {:?}", String::from_utf8_lossy(v)),
        None => "delete".to_string(),
    }
}

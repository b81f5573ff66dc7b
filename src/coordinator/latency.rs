//! How long replicas take to answer reads, so that a quorum read waits
//! about that long before it reads a spare beside a silent replica (as
//! Cassandra's speculative retry waits for the 99th percentile). A fixed
//! wait below the load's own tail would read spares for reads that were
//! merely slow, adding load when there is least room for it. Each
//! replica's answers are kept apart and the wait is the median of their
//! percentiles: one slow replica must not teach the node to wait for it.

use std::collections::BTreeMap;

use crate::node::NodeId;

/// Buckets of milliseconds: bucket `i > 0` holds `2^(i-1) ..= 2^i - 1`,
/// bucket 0 holds 0.
const BUCKETS: usize = 32;
/// Answers of one replica between two updates of its percentile; each
/// update also halves the counts, so older answers weigh less and less.
const UPDATE_EVERY: u32 = 256;
/// Answers (from any replica) after which a replica that gave none of
/// them is forgotten: one that left the cluster, or stopped holding keys
/// this node reads, must not hold its last percentile in the median for
/// the rest of the node's life. Large enough that a live replica of a
/// cluster of a thousand nodes, asked by this node for about one read in
/// a thousand, answers hundreds of them.
const FORGET_AFTER: u64 = 1 << 20;

/// How long the replicas this node reads from took to answer.
#[derive(Debug, Clone, Default)]
pub struct ReadLatency {
    /// The shortest wait (`timeouts.read_spare_ms`).
    floor_ms: u64,
    replicas: BTreeMap<NodeId, Percentile>,
    /// Answers recorded, from every replica.
    answers: u64,
    /// The lower median of the replicas' percentiles.
    wait_ms: u64,
}

impl ReadLatency {
    /// No answers yet: the wait is `floor_ms` until they say otherwise.
    pub fn new(floor_ms: u64) -> Self {
        ReadLatency {
            floor_ms,
            ..ReadLatency::default()
        }
    }

    /// Replica `from` answered a read after `ms` milliseconds (a failure
    /// or a silence is no answer: it is not recorded).
    pub fn record(&mut self, from: &NodeId, ms: u64) {
        self.answers += 1;
        if !self.replicas.contains_key(from) {
            self.replicas.insert(from.clone(), Percentile::default());
        }
        let Some(p) = self.replicas.get_mut(from) else {
            return;
        };
        p.last_answer = self.answers;
        if p.record(ms) {
            let answers = self.answers;
            self.replicas
                .retain(|_, p| answers - p.last_answer < FORGET_AFTER);
            let mut p99s: Vec<u64> = self.replicas.values().map(|p| p.p99_ms).collect();
            p99s.sort_unstable();
            self.wait_ms = p99s[(p99s.len() - 1) / 2];
        }
    }

    /// How long a quorum read waits for a target before reading a spare
    /// beside it: the median replica's recent 99th percentile (rounded up
    /// to its bucket's bound), and at least the floor.
    pub fn spare_after_ms(&self) -> u64 {
        self.wait_ms.max(self.floor_ms)
    }
}

/// One replica's recent answers by latency, and the upper bound of the
/// bucket holding their 99th percentile.
#[derive(Debug, Clone, Default)]
struct Percentile {
    counts: [u32; BUCKETS],
    since_update: u32,
    p99_ms: u64,
    /// `ReadLatency::answers` at this replica's latest answer.
    last_answer: u64,
}

impl Percentile {
    /// Counts one answer; whether the percentile was updated.
    fn record(&mut self, ms: u64) -> bool {
        let bucket = (u64::BITS - ms.leading_zeros()) as usize;
        self.counts[bucket.min(BUCKETS - 1)] += 1;
        self.since_update += 1;
        if self.since_update < UPDATE_EVERY {
            return false;
        }
        let total: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        let wanted = total - total / 100;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= wanted {
                self.p99_ms = (1u64 << i) - 1;
                break;
            }
        }
        for c in &mut self.counts {
            *c /= 2;
        }
        self.since_update = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    /// Answers from the replicas in turn, `ms(i)` for the i-th, under
    /// a floor of 100 ms.
    fn recorded(names: &[&str], n: usize, ms: impl Fn(usize) -> u64) -> ReadLatency {
        recorded_above(100, names, n, ms)
    }

    fn recorded_above(
        floor_ms: u64,
        names: &[&str],
        n: usize,
        ms: impl Fn(usize) -> u64,
    ) -> ReadLatency {
        let nodes: Vec<NodeId> = names.iter().map(|n| node(n)).collect();
        let mut l = ReadLatency::new(floor_ms);
        for i in 0..n {
            l.record(&nodes[i % nodes.len()], ms(i));
        }
        l
    }

    #[test]
    fn the_floor_holds_until_the_tail_passes_it() {
        assert_eq!(ReadLatency::new(100).spare_after_ms(), 100);
        let fast = |floor| recorded_above(floor, &["a"], 1000, |i| i as u64 % 5);
        assert_eq!(fast(100).spare_after_ms(), 100);
        assert_eq!(fast(1).spare_after_ms(), 7, "4 ms reads: the 4-7 bucket");
    }

    #[test]
    fn the_wait_follows_the_99th_percentile_and_not_the_slowest() {
        // 2% of answers at 200 ms: the percentile is there.
        let slow = recorded(&["a"], 1024, |i| if i % 50 == 0 { 200 } else { 2 });
        assert_eq!(slow.spare_after_ms(), 255);
        // 0.5% at 5 s: outliers past the percentile do not move it.
        let outliers = recorded(&["a"], 1024, |i| if i % 200 == 0 { 5000 } else { 2 });
        assert_eq!(outliers.spare_after_ms(), 100);
    }

    #[test]
    fn a_loaded_cluster_waits_longer_but_one_slow_replica_does_not() {
        let loaded = recorded(&["a", "b", "c"], 3072, |i| if i % 40 < 3 { 300 } else { 2 });
        assert_eq!(loaded.spare_after_ms(), 511);
        // c answers everything in 800 ms: a spare still reads beside it
        // after the floor.
        let one_slow = recorded(&["a", "b", "c"], 3072, |i| if i % 3 == 2 { 800 } else { 2 });
        assert_eq!(one_slow.spare_after_ms(), 100);
    }

    #[test]
    fn older_answers_fade() {
        let a = node("a");
        let mut l = recorded(&["a"], 1024, |_| 300);
        assert_eq!(l.spare_after_ms(), 511);
        for _ in 0..4096 {
            l.record(&a, 1);
        }
        assert_eq!(l.spare_after_ms(), 100, "the load eased");
    }

    #[test]
    fn a_replica_that_no_longer_answers_is_forgotten() {
        let (a, b, gone) = (node("a"), node("b"), node("gone"));
        let mut l = recorded(
            &["a", "b", "gone"],
            3072,
            |i| if i % 3 == 0 { 2 } else { 300 },
        );
        assert_eq!(l.replicas.len(), 3);
        assert_eq!(l.spare_after_ms(), 511, "b and gone are slow");
        // gone left; b and a answer fast from now on. Until gone is
        // forgotten its old percentile is one of the three.
        let mut i = 0u64;
        while l.replicas.len() == 3 {
            assert!(
                i < FORGET_AFTER + 2 * u64::from(UPDATE_EVERY),
                "gone never forgotten"
            );
            l.record(if i.is_multiple_of(2) { &a } else { &b }, 2);
            i += 1;
        }
        assert!(i >= FORGET_AFTER - 1, "forgotten after {i} answers");
        assert_eq!(l.spare_after_ms(), 100);
        // Answering again brings it back.
        for _ in 0..UPDATE_EVERY {
            l.record(&gone, 2);
        }
        assert_eq!(l.replicas.len(), 3);
    }

    #[test]
    fn any_latency_has_a_bucket() {
        let l = recorded_above(0, &["a"], UPDATE_EVERY as usize, |_| u64::MAX);
        assert_eq!(l.spare_after_ms(), (1 << (BUCKETS - 1)) - 1);
    }
}

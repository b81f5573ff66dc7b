//! How long replicas take to answer reads, so that a quorum read waits
//! about that long before it reads a spare beside a silent replica (as
//! Cassandra's speculative retry waits for the 99th percentile). A fixed
//! wait below the load's own tail would read spares for reads that were
//! merely slow, adding load when there is least room for it.

/// Buckets of milliseconds: bucket `i > 0` holds `2^(i-1) ..= 2^i - 1`,
/// bucket 0 holds 0.
const BUCKETS: usize = 32;
/// Answers between two updates of the percentile; each update also halves
/// the counts, so older answers weigh less and less.
const UPDATE_EVERY: u32 = 256;

/// Recent replica answers to reads, by latency, and the upper bound of the
/// bucket holding their 99th percentile.
#[derive(Debug, Clone, Default)]
pub struct ReadLatency {
    counts: [u32; BUCKETS],
    since_update: u32,
    p99_ms: u64,
}

impl ReadLatency {
    /// One replica answered a read after `ms` milliseconds (a failure or a
    /// silence is no answer: it is not recorded).
    pub fn record(&mut self, ms: u64) {
        let bucket = (u64::BITS - ms.leading_zeros()) as usize;
        self.counts[bucket.min(BUCKETS - 1)] += 1;
        self.since_update += 1;
        if self.since_update >= UPDATE_EVERY {
            self.update();
        }
    }

    fn update(&mut self) {
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
    }

    /// How long a quorum read waits for a target before reading a spare
    /// beside it: the recent 99th percentile (rounded up to its bucket's
    /// bound), and at least `floor_ms` (`timeouts.read_spare_ms`).
    pub fn spare_after_ms(&self, floor_ms: u64) -> u64 {
        self.p99_ms.max(floor_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(samples: impl IntoIterator<Item = u64>) -> ReadLatency {
        let mut l = ReadLatency::default();
        for ms in samples {
            l.record(ms);
        }
        l
    }

    #[test]
    fn the_floor_holds_until_the_tail_passes_it() {
        assert_eq!(ReadLatency::default().spare_after_ms(100), 100);
        let fast = recorded((0..1000).map(|i| i % 5));
        assert_eq!(fast.spare_after_ms(100), 100);
        assert_eq!(fast.spare_after_ms(1), 7, "4 ms reads: the 4-7 bucket");
    }

    #[test]
    fn the_wait_follows_the_99th_percentile_and_not_the_slowest() {
        // 2% of answers at 200 ms: the percentile is there.
        let slow = recorded((0..1024).map(|i| if i % 50 == 0 { 200 } else { 2 }));
        assert_eq!(slow.spare_after_ms(100), 255);
        // 0.5% at 5 s: outliers past the percentile do not move it.
        let outliers = recorded((0..1024).map(|i| if i % 200 == 0 { 5000 } else { 2 }));
        assert_eq!(outliers.spare_after_ms(100), 100);
    }

    #[test]
    fn older_answers_fade() {
        let mut l = recorded((0..1024).map(|_| 300));
        assert_eq!(l.spare_after_ms(100), 511);
        for _ in 0..4096 {
            l.record(1);
        }
        assert_eq!(l.spare_after_ms(100), 100, "the load eased");
    }

    #[test]
    fn any_latency_has_a_bucket() {
        let l = recorded([u64::MAX; UPDATE_EVERY as usize]);
        assert_eq!(l.spare_after_ms(0), (1 << (BUCKETS - 1)) - 1);
    }
}

//! Large writes yield to small requests. A write of a megabyte costs the
//! nodes some thousand times the CPU, copies and disk of a small get; run
//! at full speed beside small requests it takes the cores from them, and
//! their tail grows tenfold. So each coordinator paces the large writes it
//! starts while small requests run beside them, by how the small ones
//! fare: their 99th percentile, window by window, against their 99th
//! percentile while no large write runs (as TCP congestion control paces a
//! sender by its round trips against the shortest seen).
//!
//! - The bound is `baseline × percent / 100`, the baseline the lowest p99
//!   of the small requests in recent windows without large writes: a
//!   window with none running, or a probe (large writes held for two
//!   windows, the second measured, every `PROBE_EVERY` windows while they
//!   are paced or running, as BBR drains its queue to see the shortest
//!   round trip again).
//! - A window whose small p99 is past the bound halves the rate large
//!   writes may start at (to no less than `FLOOR`); one within it, while
//!   large writes wait for the rate, raises it by an eighth (by `FLOOR` at
//!   least). Large writes found running beside small requests start again
//!   from the floor: halving down from full speed would cost the small
//!   requests' tail a second of windows.
//! - Large writes run freely while fewer than `MIN_SMALL` small requests
//!   end in a window: there is no tail to protect, nor one to measure.
//!
//! Time is given in microseconds by the caller; this module reads no clock.

use std::collections::VecDeque;

use crate::config::LimitsSection;

/// How the coordinator treats large writes (`limits.large_write_bytes`,
/// `limits.small_p99_bound_percent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct YieldSettings {
    /// A write of at least this many value bytes is large.
    pub large_bytes: u64,
    /// How far the small requests' p99 may rise above their baseline
    /// before large writes are slowed, in percent; 0: never slowed.
    pub bound_percent: u64,
    /// The longest a large write waits for its start before it is refused.
    pub max_wait_us: u64,
}

impl YieldSettings {
    /// From the configuration: a large write waits at most half of
    /// `timeouts.request_ms`, so that its session still has the other
    /// half.
    pub fn new(limits: &LimitsSection, request_ms: u64) -> Self {
        YieldSettings {
            large_bytes: u64::from(limits.large_write_bytes),
            bound_percent: u64::from(limits.small_p99_bound_percent),
            max_wait_us: request_ms.saturating_mul(1000) / 2,
        }
    }

    /// Whether a write of `bytes` value bytes is large and so paced.
    pub fn is_large(&self, bytes: u64) -> bool {
        self.bound_percent > 0 && bytes >= self.large_bytes
    }
}

/// One window of small requests' latencies, µs.
const WINDOW_US: u64 = 200_000;
/// Fewer small requests than this in a window: nothing to protect.
const MIN_SMALL: u64 = 50;
/// Windows between two probes while large writes run beside small ones.
const PROBE_EVERY: u32 = 25;
/// Probes whose p99 the baseline is the lowest of (with the windows that
/// had no large writes).
const BASELINES: usize = 4;
/// The lowest rate large writes are slowed to, bytes a second.
const FLOOR: f64 = 1024.0 * 1024.0;

/// What a probe window is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Large writes start as the rate allows.
    Paced,
    /// Large writes wait; those already running finish. Not measured.
    Settle,
    /// Large writes still wait; the small requests' p99 is a baseline.
    Measure,
}

/// The pacing of one coordinator's large writes.
#[derive(Debug, Clone)]
pub struct LargeWrites {
    settings: YieldSettings,
    /// Bytes a second large writes may start at; None: as fast as they come.
    rate: Option<f64>,
    /// When the next large write may start (µs): each one started pushes
    /// it on by its bytes at the rate.
    next_free_us: f64,
    window_start_us: u64,
    phase: Phase,
    small: Histogram,
    /// Whether a large write was given its start in this window.
    large_started: bool,
    /// Whether a large write had to wait in this window.
    waited: bool,
    /// Windows since the last probe.
    since_probe: u32,
    /// The small p99 of recent windows without large writes, newest last.
    baselines: VecDeque<u64>,
}

/// What `LargeWrites::admit` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Start the write after this many µs (0: now).
    After(u64),
    /// Not yet: ask again after this many µs. A write is given a start at
    /// most a window ahead, so that it starts at the rate of its time, not
    /// of when it arrived.
    Later(u64),
    /// The write would wait past `max_wait_us`: refuse it (overloaded).
    Refuse,
}

impl LargeWrites {
    pub fn new(settings: YieldSettings, now_us: u64) -> Self {
        LargeWrites {
            settings,
            rate: None,
            next_free_us: 0.0,
            window_start_us: now_us,
            phase: Phase::Paced,
            small: Histogram::default(),
            large_started: false,
            waited: false,
            since_probe: 0,
            baselines: VecDeque::new(),
        }
    }

    /// A large write of `bytes` that arrived at `arrived_us` asks at
    /// `now_us` when it may start; one that could not start within
    /// `max_wait_us` of its arrival is refused (and not counted).
    pub fn admit(&mut self, now_us: u64, bytes: u64, arrived_us: u64) -> Admit {
        let deadline_us = arrived_us.saturating_add(self.settings.max_wait_us);
        self.roll(now_us);
        let now = now_us as f64;
        let mut start = now;
        if self.phase != Phase::Paced {
            start = start.max(self.window_start_us as f64 + self.probe_left());
        }
        if self.rate.is_some() {
            start = start.max(self.next_free_us);
        }
        if start > deadline_us as f64 {
            return Admit::Refuse;
        }
        let wait = (start - now) as u64;
        if wait > 0 {
            self.waited = true;
        }
        if wait > WINDOW_US {
            return Admit::Later(wait - WINDOW_US);
        }
        if let Some(rate) = self.rate {
            self.next_free_us = start + bytes as f64 * 1e6 / rate;
        }
        self.large_started = true;
        Admit::After(wait)
    }

    /// A small request that began before `now_us` took `latency_us`.
    pub fn small_done(&mut self, now_us: u64, latency_us: u64) {
        self.roll(now_us);
        if self.phase != Phase::Settle {
            self.small.add(latency_us);
        }
    }

    /// µs from the window's start to the end of the probe it is part of.
    fn probe_left(&self) -> f64 {
        let windows = if self.phase == Phase::Settle { 2 } else { 1 };
        (windows * WINDOW_US) as f64
    }

    /// Closes every window that ended by `now_us`.
    fn roll(&mut self, now_us: u64) {
        while now_us >= self.window_start_us + WINDOW_US {
            if now_us >= self.window_start_us + 2 * WINDOW_US {
                // Nothing arrived for a window or more: the next one
                // starts now.
                self.close();
                self.window_start_us = now_us;
            } else {
                self.close();
                self.window_start_us += WINDOW_US;
            }
        }
    }

    /// Decides on the window that ended, and what the next one is.
    fn close(&mut self) {
        let small = self.small.count();
        let p99 = self.small.p99();
        let started = self.large_started;
        let backlog = self.waited;
        let phase = self.phase;
        self.small = Histogram::default();
        self.large_started = false;
        self.waited = false;
        self.since_probe += 1;
        self.phase = Phase::Paced;
        match phase {
            Phase::Settle => {
                self.phase = Phase::Measure;
                return;
            }
            Phase::Measure => {
                if small >= MIN_SMALL {
                    self.remember(p99);
                }
                return;
            }
            Phase::Paced => {}
        }
        if small < MIN_SMALL {
            // Nothing to protect: large writes run freely, and a later
            // load of small requests is measured afresh.
            self.rate = None;
            self.baselines.clear();
            return;
        }
        if !started && self.rate.is_none() {
            return self.remember(p99);
        }
        let Some(&baseline) = self.baselines.iter().min() else {
            // Unmeasured: large writes start slow until measured.
            self.rate = Some(self.rate.unwrap_or(FLOOR));
            return self.probe();
        };
        let bound = baseline.saturating_mul(self.settings.bound_percent) / 100;
        self.rate = Some(if p99 > bound {
            match self.rate {
                // Large writes began beside small requests: from the
                // floor up, not down from full speed.
                None => FLOOR,
                Some(r) => (r / 2.0).max(FLOOR),
            }
        } else {
            match self.rate {
                // Within the bound at full speed: stay there.
                None => return self.probe_if_due(),
                // Raised only while large writes wait for it: a rate
                // they do not use says nothing of what they would cost.
                Some(r) if backlog => r + (r / 8.0).max(FLOOR),
                Some(r) => r,
            }
        });
        self.probe_if_due();
    }

    fn remember(&mut self, p99: u64) {
        if self.baselines.len() == BASELINES {
            self.baselines.pop_front();
        }
        self.baselines.push_back(p99);
    }

    fn probe_if_due(&mut self) {
        if self.since_probe >= PROBE_EVERY {
            self.probe();
        }
    }

    /// Holds large writes for the next two windows to measure the small
    /// requests without them.
    fn probe(&mut self) {
        self.phase = Phase::Settle;
        self.since_probe = 0;
    }
}

/// Latencies in buckets an eighth of a power of two wide (12.5%).
#[derive(Debug, Clone)]
struct Histogram {
    counts: Box<[u32; BUCKETS]>,
    total: u64,
}

const SUB: u32 = 3;
const BUCKETS: usize = (64 - SUB as usize + 1) << SUB;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
        }
    }
}

impl Histogram {
    fn bucket(us: u64) -> usize {
        if us < 1 << SUB {
            return us as usize;
        }
        let power = 63 - us.leading_zeros();
        let sub = (us >> (power - SUB)) & ((1 << SUB) - 1);
        (((power - SUB + 1) << SUB) as u64 + sub) as usize
    }

    /// The smallest latency bucket `i` holds.
    fn lower(i: usize) -> u64 {
        if i < 1 << SUB {
            return i as u64;
        }
        let power = (i >> SUB) as u32 + SUB - 1;
        let sub = (i & ((1 << SUB) - 1)) as u64;
        (1 << power) + (sub << (power - SUB))
    }

    fn add(&mut self, us: u64) {
        self.counts[Self::bucket(us)] += 1;
        self.total += 1;
    }

    fn count(&self) -> u64 {
        self.total
    }

    /// The lower bound of the bucket holding the 99th percentile; 0 when
    /// empty.
    fn p99(&self) -> u64 {
        let wanted = self.total - self.total / 100;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= wanted && seen > 0 {
                return Self::lower(i);
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn settings() -> YieldSettings {
        YieldSettings {
            large_bytes: 64 << 10,
            bound_percent: 150,
            max_wait_us: 2_500_000,
        }
    }

    #[test]
    fn buckets_are_an_eighth_of_a_power_of_two() {
        for us in [
            0,
            1,
            7,
            8,
            9,
            15,
            16,
            17,
            100,
            1000,
            1500,
            123_456,
            u64::MAX,
        ] {
            let i = Histogram::bucket(us);
            assert!(Histogram::lower(i) <= us, "{us}");
            if i + 1 < BUCKETS {
                assert!(us < Histogram::lower(i + 1), "{us}");
            }
        }
        assert_eq!(Histogram::lower(Histogram::bucket(1500)), 1408);
        let mut h = Histogram::default();
        (0..1000).for_each(|i| h.add(if i % 50 == 0 { 20_000 } else { 1000 }));
        assert_eq!(h.p99(), 18_432, "2% at 20 ms: the p99 is there");
    }

    /// A simulated node: small requests take `base` µs, plus `per_mib` µs
    /// for each MiB a second of large writes started in the last window's
    /// time; four large writers each send a 1 MiB write 20 ms after
    /// their last one started (or 100 ms after a refusal), for `secs`.
    /// Returns the small p99 of the last `secs / 2` seconds (µs) and the
    /// large bytes a second started over them.
    fn run(lw: &mut LargeWrites, start_us: u64, secs: u64, base: u64, per_mib: u64) -> (u64, f64) {
        let end = start_us + secs * 1_000_000;
        let half = start_us + secs * 500_000;
        let mut next_send = [start_us; 4];
        let mut starts: Vec<u64> = Vec::new();
        let mut after = Histogram::default();
        let mut now = start_us;
        while now < end {
            for send in next_send.iter_mut().filter(|send| **send <= now) {
                *send = match lw.admit(now, MIB, now) {
                    Admit::After(wait) => {
                        starts.push(now + wait);
                        now + wait + 20_000
                    }
                    Admit::Later(after) => now + after,
                    Admit::Refuse => now + 100_000,
                };
            }
            let since = now.saturating_sub(WINDOW_US);
            let recent = starts
                .iter()
                .filter(|&&t| (since..now).contains(&t))
                .count();
            let mib_a_second = recent as u64 * 1_000_000 / WINDOW_US;
            let latency = base + mib_a_second * per_mib;
            lw.small_done(now, latency);
            if now >= half {
                after.add(latency);
            }
            now += 500;
        }
        let started = starts.iter().filter(|&&t| (half..end).contains(&t)).count();
        (
            after.p99(),
            (started as u64 * MIB) as f64 / ((end - half) as f64 / 1e6),
        )
    }

    #[test]
    fn small_requests_keep_their_tail_while_large_writes_run_beside() {
        let mut lw = LargeWrites::new(settings(), 0);
        // 1 ms alone; every MiB a second of large writes adds 20 µs: at
        // full speed (200 MiB/s) the small p99 would be 5 ms.
        let (p99, rate) = run(&mut lw, 0, 30, 1000, 20);
        assert!(p99 <= 2000, "small p99 {p99} µs against 1 ms alone");
        assert!(
            rate >= 5.0 * MIB as f64,
            "large writes still go: {rate} bytes/s"
        );
        assert!(lw.rate.is_some());
    }

    #[test]
    fn large_writes_that_do_not_hurt_are_not_held_back() {
        let mut lw = LargeWrites::new(settings(), 0);
        // Small requests feel no large write: the rate climbs back from
        // the floor, an eighth a window, to what the writers send.
        let (p99, rate) = run(&mut lw, 0, 20, 1000, 0);
        assert!(p99 <= 1125);
        // Four writers of 1 MiB, each every 20 ms: 200 MiB/s, less the
        // probes' 2 windows in 25.
        assert!(rate > 150.0 * MIB as f64, "{rate}");
    }

    #[test]
    fn without_small_requests_large_writes_are_not_paced() {
        let mut lw = LargeWrites::new(settings(), 0);
        run(&mut lw, 0, 10, 1000, 100);
        assert!(lw.rate.is_some(), "paced while small requests ran");
        // The small requests stop: once a window has seen none, large
        // writes start at once.
        let mut now = 10_000_000;
        for _ in 0..3 {
            now += WINDOW_US;
            lw.admit(now, MIB, now);
        }
        assert_eq!(lw.rate, None);
        assert_eq!(lw.admit(now, MIB, now), Admit::After(0));
    }

    #[test]
    fn a_write_starts_at_most_a_window_ahead_and_not_past_its_deadline() {
        let mut lw = LargeWrites::new(settings(), 0);
        run(&mut lw, 0, 10, 1000, 1000);
        assert_eq!(lw.rate, Some(FLOOR), "held to the floor");
        // Writes arriving together at the floor rate: one a second. (The
        // first asks again, as the small requests go on, until a probe
        // holding large writes is over.)
        let mut now = 10_000_000;
        let first = loop {
            match lw.admit(now, MIB, now) {
                Admit::After(us) => break us,
                Admit::Later(_) if now < 11_000_000 => {
                    now += 10_000;
                    (0..MIN_SMALL).for_each(|_| lw.small_done(now, 5000));
                }
                other => panic!("{other:?}"),
            }
        };
        assert!(first <= WINDOW_US);
        let asks: Vec<_> = (0..2).map(|_| lw.admit(now, MIB, now)).collect();
        assert!(
            matches!(asks[0], Admit::Later(after) if after + WINDOW_US >= first + 999_000),
            "{asks:?}"
        );
        // Asking again does not move a waiting write's turn forward, and
        // a write that could only start after its deadline is refused.
        let waited = now + first - settings().max_wait_us;
        assert_eq!(lw.admit(now, MIB, waited), Admit::Refuse);
        assert_eq!(lw.admit(now, MIB, now), asks[0]);
    }

    #[test]
    fn never_slowed_when_the_bound_is_off() {
        let off = YieldSettings {
            bound_percent: 0,
            ..settings()
        };
        assert!(!off.is_large(MIB));
        assert!(settings().is_large(64 << 10));
        assert!(!settings().is_large((64 << 10) - 1));
    }
}

//! The shells' clock: milliseconds on this process's monotonic clock, the
//! `now` every core state machine takes. The core never reads a clock.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Default for Clock {
    fn default() -> Self {
        Clock(Instant::now())
    }
}

impl Clock {
    /// Milliseconds since this clock started.
    pub fn now(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }

    /// How long from now until `at` (ms on this clock); zero if past.
    pub fn until(&self, at: u64) -> Duration {
        Duration::from_millis(at.saturating_sub(self.now()))
    }
}

/// Milliseconds since the Unix epoch on this host's wall clock: the time
/// expiry deadlines are set and read by (`dynakv::version::Value::Expiring`).
/// Hosts' clocks disagree by their skew; that shifts when a value expires,
/// nothing else. A clock before 1970 reads as 0.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

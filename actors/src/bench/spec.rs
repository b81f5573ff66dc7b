//! What a bench run does: the operation mix and the run's settings.

use std::str::FromStr;
use std::time::Duration;

use dynakv::routing::Routing;
use dynakv::{Error, Result};

use super::STAMP;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Get,
    Put,
    Delete,
    /// An increment of a counter in the namespace `bench-counters`.
    Incr,
    /// An add of a new member to a set in the namespace `bench-sets`.
    Sadd,
}

impl Op {
    pub(super) const ALL: [Op; 5] = [Op::Get, Op::Put, Op::Delete, Op::Incr, Op::Sadd];

    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::Incr => "incr",
            Op::Sadd => "sadd",
        }
    }
}

/// Relative weights of the operations, e.g. `get=50,put=50`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; Op::ALL.len()],
}

impl Mix {
    pub(super) fn weight(&self, op: Op) -> u32 {
        self.weights[op as usize]
    }

    pub(super) fn pick(&self, roll: u32) -> Op {
        let mut roll = roll % self.total();
        for op in Op::ALL {
            if roll < self.weight(op) {
                return op;
            }
            roll -= self.weight(op);
        }
        Op::Get
    }

    fn total(&self) -> u32 {
        self.weights.iter().sum()
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Mix, String> {
        let mut weights = [0u32; Op::ALL.len()];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not op=weight"))?;
            let op = Op::ALL
                .into_iter()
                .find(|op| op.name() == name.trim())
                .ok_or_else(|| {
                    format!("unknown operation {name:?} (get, put, delete, incr, sadd)")
                })?;
            weights[op as usize] = weight
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|w| *w <= 1_000_000)
                .ok_or_else(|| format!("bad weight {weight:?} for {name}"))?;
        }
        if weights.iter().sum::<u32>() == 0 {
            return Err("the mix has no operation with a weight above 0".into());
        }
        Ok(Mix { weights })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Seeds: client addresses of some of the cluster's nodes.
    pub nodes: Vec<String>,
    /// Where the cluster client sends each request.
    pub routing: Routing,
    pub cluster: String,
    pub token: Option<String>,
    /// TLS to the nodes (None: plaintext).
    pub tls: Option<crate::tls::ClientTls>,
    /// The namespace of the keys (it must exist).
    pub namespace: String,
    pub clients: usize,
    pub duration: Duration,
    pub value_size: usize,
    /// Fill values with random bytes (incompressible) instead of 'x'.
    pub random_values: bool,
    pub keys: u64,
    pub mix: Mix,
    pub r: Option<u8>,
    pub w: Option<u8>,
    /// Write every key once before the timed run.
    pub preload: bool,
    /// Count reads that miss the reader's own last acknowledged write.
    pub check: bool,
    /// Total operations per second to offer, spread evenly over the
    /// clients (None: as fast as answers come).
    pub rate: Option<u64>,
    /// Show progress bars (on a terminal, without --json).
    pub progress: bool,
}

/// Largest values the bench writes (a node's default limit is 4 MiB).
const MAX_VALUE: usize = 4 << 20;

impl Spec {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidRequest(m));
        if self.nodes.is_empty() {
            return bad("--node needs at least one address".into());
        }
        dynakv::namespace::Name::new(self.namespace.as_str())?;
        if !(1..=10_000).contains(&self.clients) {
            return bad("--clients must be between 1 and 10000".into());
        }
        if self.duration.is_zero() {
            return bad("--duration must be above 0".into());
        }
        if !(STAMP..=MAX_VALUE).contains(&self.value_size) {
            return bad(format!(
                "--value-size must be between {STAMP} and {MAX_VALUE}"
            ));
        }
        if self.keys < self.clients as u64 {
            return bad("--keys must be at least --clients (each client owns keys)".into());
        }
        if self.rate.is_some_and(|r| !(1..=10_000_000).contains(&r)) {
            return bad("--rate must be between 1 and 10000000 operations per second".into());
        }
        Ok(())
    }

    /// Time between one client's requests at `--rate`.
    pub(super) fn pace(&self) -> Option<Duration> {
        self.rate
            .map(|rate| Duration::from_secs_f64(self.clients as f64 / rate as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_pick_by_weight() {
        let mix: Mix = "get=3, put=1".parse().unwrap();
        let picks: Vec<Op> = (0..4).map(|r| mix.pick(r)).collect();
        assert_eq!(picks, vec![Op::Get, Op::Get, Op::Get, Op::Put]);
        assert_eq!(mix.pick(7), Op::Put);
        let typed: Mix = "put=1,incr=1,sadd=1".parse().unwrap();
        let picks: Vec<Op> = (0..3).map(|r| typed.pick(r)).collect();
        assert_eq!(picks, vec![Op::Put, Op::Incr, Op::Sadd]);
        for bad in ["", "get=0", "scan=1", "get", "get=-1", "get=x"] {
            assert!(bad.parse::<Mix>().is_err(), "{bad:?}");
        }
    }
}

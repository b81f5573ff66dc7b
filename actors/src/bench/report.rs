//! What a bench run saw: per-operation counts and latency histograms, and
//! the report printed as text or JSON.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use dynakv::ErrorKind;
use hdrhistogram::Histogram;
use serde_json::{Value as Json, json};

use super::{MAX_MICROS, Op, Spec};

/// One operation's results.
#[derive(Debug, Clone)]
pub struct OpStats {
    pub ok: u64,
    /// Latency of successful operations, in microseconds.
    pub latency: Histogram<u64>,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            ok: 0,
            latency: Histogram::new_with_bounds(1, MAX_MICROS, 3)
                .expect("constant histogram bounds are valid"),
        }
    }
}

impl OpStats {
    pub(super) fn record(&mut self, took: Duration) {
        self.ok += 1;
        let micros = u64::try_from(took.as_micros()).unwrap_or(MAX_MICROS);
        self.latency.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    fn merge(&mut self, other: &OpStats) {
        self.ok += other.ok;
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }
}

/// What one client (or all of them) saw.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub ops: HashMap<Op, OpStats>,
    pub errors: HashMap<(Op, ErrorKind), u64>,
    /// Reads checked against the reader's own writes, and stale ones.
    pub checked: u64,
    pub stale: u64,
}

impl Tally {
    pub(super) fn merge(&mut self, other: &Tally) {
        for (op, s) in &other.ops {
            self.ops.entry(*op).or_default().merge(s);
        }
        for (k, n) in &other.errors {
            *self.errors.entry(*k).or_default() += n;
        }
        self.checked += other.checked;
        self.stale += other.stale;
    }
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Report {
    pub spec: Spec,
    pub elapsed: Duration,
    pub tally: Tally,
    /// Keys written by the preload, and how long it took.
    pub preload: Option<(u64, Duration)>,
}

/// Percentiles reported, with their names.
const PERCENTILES: [(&str, f64); 4] = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)];

impl Report {
    fn rate(&self, count: u64) -> f64 {
        count as f64 / self.elapsed.as_secs_f64()
    }

    fn errors_of(&self, op: Op) -> u64 {
        self.tally
            .errors
            .iter()
            .filter(|((o, _), _)| *o == op)
            .map(|(_, n)| n)
            .sum()
    }

    /// Operations that ran (succeeded or failed), in mix order.
    fn ran(&self) -> Vec<(Op, OpStats)> {
        Op::ALL
            .into_iter()
            .filter(|op| self.tally.ops.contains_key(op) || self.errors_of(*op) > 0)
            .map(|op| (op, self.tally.ops.get(&op).cloned().unwrap_or_default()))
            .collect()
    }

    pub fn to_json(&self) -> Json {
        let s = &self.spec;
        let mut ops = serde_json::Map::new();
        for (op, stats) in self.ran() {
            let mut latency = serde_json::Map::new();
            for (name, q) in PERCENTILES {
                latency.insert(name.into(), json!(stats.latency.value_at_percentile(q)));
            }
            latency.insert("max".into(), json!(stats.latency.max()));
            latency.insert("mean".into(), json!(stats.latency.mean()));
            ops.insert(
                op.name().into(),
                json!({
                    "ok": stats.ok,
                    "errors": self.errors_of(op),
                    "ops_per_sec": self.rate(stats.ok),
                    "latency_us": latency,
                }),
            );
        }
        let mut errors = serde_json::Map::new();
        for ((op, kind), n) in &self.tally.errors {
            errors.insert(format!("{}.{}", op.name(), kind.as_str()), json!(n));
        }
        let total: u64 = self.tally.ops.values().map(|s| s.ok).sum();
        let mix: serde_json::Map<String, Json> = Op::ALL
            .into_iter()
            .filter(|op| s.mix.weight(*op) > 0)
            .map(|op| (op.name().to_string(), json!(s.mix.weight(op))))
            .collect();
        json!({
            "nodes": s.nodes,
            "routing": s.routing.as_str(),
            "clients": s.clients,
            "duration_s": s.duration.as_secs_f64(),
            "value_size": s.value_size,
            "keys": s.keys,
            "mix": mix,
            "r": s.r,
            "w": s.w,
            "rate": s.rate,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "ops_per_sec": self.rate(total),
            "ops": ops,
            "errors": errors,
            "preload": self.preload.map(|(keys, took)| json!({
                "keys": keys,
                "seconds": took.as_secs_f64(),
                "keys_per_sec": keys as f64 / took.as_secs_f64(),
            })),
            "check": s.check.then(|| json!({
                "reads": self.tally.checked,
                "stale": self.tally.stale,
            })),
        })
    }

    pub fn to_text(&self) -> String {
        let s = &self.spec;
        let mut out = String::new();
        let mix: Vec<String> = Op::ALL
            .into_iter()
            .filter(|op| s.mix.weight(*op) > 0)
            .map(|op| format!("{}={}", op.name(), s.mix.weight(op)))
            .collect();
        let _ = writeln!(
            out,
            "{} clients, routing {} from {} seed(s), {:.1} s, {}-byte values, {} keys, mix {}",
            s.clients,
            s.routing,
            s.nodes.len(),
            self.elapsed.as_secs_f64(),
            s.value_size,
            s.keys,
            mix.join(",")
        );
        if let Some(rate) = s.rate {
            let _ = writeln!(
                out,
                "offered {rate} ops/s on a schedule; latency counts from when each request was due"
            );
        }
        if let Some((keys, took)) = self.preload {
            let _ = writeln!(
                out,
                "preload: {keys} keys in {:.1} s ({:.0} keys/s)",
                took.as_secs_f64(),
                keys as f64 / took.as_secs_f64()
            );
        }
        let _ = writeln!(
            out,
            "{:<7} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "op", "ok", "ops/s", "p50", "p90", "p99", "p99.9", "max", "errors"
        );
        let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
        let mut total = 0;
        for (op, stats) in self.ran() {
            total += stats.ok;
            let l = &stats.latency;
            let _ = writeln!(
                out,
                "{:<7} {:>10} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                op.name(),
                stats.ok,
                self.rate(stats.ok),
                ms(l.value_at_percentile(50.0)),
                ms(l.value_at_percentile(90.0)),
                ms(l.value_at_percentile(99.0)),
                ms(l.value_at_percentile(99.9)),
                ms(l.max()),
                self.errors_of(op)
            );
        }
        let _ = writeln!(
            out,
            "{:<7} {:>10} {:>10.0}   (latencies in ms)",
            "total",
            total,
            self.rate(total)
        );
        let mut errors: Vec<_> = self.tally.errors.iter().collect();
        errors.sort_by_key(|((op, kind), _)| (*op, kind.as_str()));
        for ((op, kind), n) in errors {
            let _ = writeln!(out, "errors: {} {}: {n}", op.name(), kind.as_str());
        }
        if s.check {
            let _ = writeln!(
                out,
                "read-your-writes: {} reads checked, {} stale",
                self.tally.checked, self.tally.stale
            );
        }
        out
    }
}

//! `dynakv bench`: a load generator over the real client protocol, in the
//! manner of redis-benchmark or basho_bench.
//!
//! `clients` tasks, each with its own connection (spread over the given
//! nodes), run a mix of gets, puts and deletes for a fixed time and record
//! every latency in an HDR histogram. Keys are `bench-<n>` for n below
//! `keys`. Each client writes only the keys it owns (n mod clients), with
//! the context of its previous write, so writes never race and never make
//! siblings; gets read any key (`--check`: only the client's own, so every
//! read can be checked against the client's last acknowledged write of it:
//! a read that misses it is stale).
//!
//! Values carry the writer and a sequence number in their first 12 bytes.
//!
//! By default each client sends its next request as soon as the last is
//! answered (a closed loop, like redis-benchmark), so a server that stalls
//! also stops the load and only the requests in flight see the stall.
//! `--rate` gives every client a schedule instead (an open loop at a fixed
//! total rate, like wrk2): a request that starts late because the previous
//! one was slow is timed from when it should have started, so a stall
//! counts for every request it held up.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dynakv::{Error, ErrorKind, Result};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value as Json, json};

use crate::client::Client;

/// Bytes at the start of a value that identify its write.
const STAMP: usize = 12;
/// Latencies are recorded in microseconds up to a minute.
const MAX_MICROS: u64 = 60_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Get,
    Put,
    Delete,
}

impl Op {
    const ALL: [Op; 3] = [Op::Get, Op::Put, Op::Delete];

    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
        }
    }
}

/// Relative weights of the operations, e.g. `get=50,put=50`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 3],
}

impl Mix {
    fn weight(&self, op: Op) -> u32 {
        self.weights[op as usize]
    }

    fn pick(&self, roll: u32) -> Op {
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
        let mut weights = [0u32; 3];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not op=weight"))?;
            let op = Op::ALL
                .into_iter()
                .find(|op| op.name() == name.trim())
                .ok_or_else(|| format!("unknown operation {name:?} (get, put, delete)"))?;
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
    pub nodes: Vec<String>,
    pub cluster: String,
    pub token: Option<String>,
    pub clients: usize,
    pub duration: Duration,
    pub value_size: usize,
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
    fn pace(&self) -> Option<Duration> {
        self.rate
            .map(|rate| Duration::from_secs_f64(self.clients as f64 / rate as f64))
    }
}

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
    fn record(&mut self, took: Duration) {
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
    fn merge(&mut self, other: &Tally) {
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

/// The last acknowledged write of a key by its owner.
#[derive(Debug, Clone, Copy)]
enum Last {
    Put(u64),
    Delete(u64),
}

/// One client's connection and memory of its own keys.
struct Worker {
    id: u32,
    client: Client,
    spec: Arc<Spec>,
    /// Context of the last write of each own key.
    contexts: HashMap<u64, Vec<u8>>,
    last: HashMap<u64, Last>,
    seq: u64,
    tally: Tally,
    rng: fastrand::Rng,
}

fn key_name(n: u64) -> Vec<u8> {
    format!("bench-{n}").into_bytes()
}

impl Worker {
    /// A random key this worker owns.
    fn own_key(&mut self) -> u64 {
        let clients = self.spec.clients as u64;
        let owned = (self.spec.keys - u64::from(self.id)).div_ceil(clients);
        u64::from(self.id) + self.rng.u64(..owned) * clients
    }

    fn value(&mut self) -> Vec<u8> {
        self.seq += 1;
        let mut v = vec![b'x'; self.spec.value_size];
        v[..4].copy_from_slice(&self.id.to_be_bytes());
        v[4..STAMP].copy_from_slice(&self.seq.to_be_bytes());
        v
    }

    async fn put(&mut self, n: u64) -> Result<()> {
        let value = self.value();
        let context = self.contexts.get(&n).cloned().unwrap_or_default();
        let written = self
            .client
            .put(&key_name(n), &value, &context, self.spec.w)
            .await?;
        self.contexts.insert(n, written.context);
        self.last.insert(n, Last::Put(self.seq));
        Ok(())
    }

    async fn delete(&mut self, n: u64) -> Result<()> {
        self.seq += 1;
        let context = self.contexts.get(&n).cloned().unwrap_or_default();
        let written = self
            .client
            .delete(&key_name(n), &context, self.spec.w)
            .await?;
        self.contexts.insert(n, written.context);
        self.last.insert(n, Last::Delete(self.seq));
        Ok(())
    }

    async fn get(&mut self, n: u64) -> Result<()> {
        let read = self.client.get(&key_name(n), self.spec.r).await?;
        if let Some(last) = self.last.get(&n).copied() {
            self.tally.checked += 1;
            let seqs = read.values.iter().filter_map(|v| stamp(v, self.id));
            let stale = match last {
                Last::Put(seq) => seqs.max().is_none_or(|s| s < seq),
                Last::Delete(seq) => seqs.into_iter().any(|s| s < seq),
            };
            self.tally.stale += u64::from(stale);
        }
        Ok(())
    }

    /// Runs one operation, timed from `started`.
    async fn one(&mut self, op: Op, started: Instant) {
        let n = match op {
            Op::Get if !self.spec.check => self.rng.u64(..self.spec.keys),
            _ => self.own_key(),
        };
        let done = match op {
            Op::Get => self.get(n).await,
            Op::Put => self.put(n).await,
            Op::Delete => self.delete(n).await,
        };
        match done {
            Ok(()) => self
                .tally
                .ops
                .entry(op)
                .or_default()
                .record(started.elapsed()),
            Err(e) => *self.tally.errors.entry((op, e.kind())).or_default() += 1,
        }
    }
}

/// When a client's requests are due, at `--rate`.
struct Schedule {
    next: Instant,
    pace: Duration,
}

impl Schedule {
    /// Waits for the next request's turn and returns the time to measure
    /// it from, or None once turns fall past `deadline`.
    async fn turn(&mut self, deadline: Instant) -> Option<Instant> {
        let due = self.next;
        if due >= deadline {
            return None;
        }
        self.next += self.pace;
        if Instant::now() < due {
            // Ahead of schedule: timed from the wake-up, not charging the
            // timer's lateness.
            tokio::time::sleep_until(due.into()).await;
            Some(Instant::now())
        } else {
            // Behind: the wait for the slow answer before it counts.
            Some(due)
        }
    }
}

/// The sequence number of a value written by `writer`.
fn stamp(value: &[u8], writer: u32) -> Option<u64> {
    let id = u32::from_be_bytes(value.get(..4)?.try_into().ok()?);
    let seq = u64::from_be_bytes(value.get(4..STAMP)?.try_into().ok()?);
    (id == writer).then_some(seq)
}

fn bar(show: bool, len: u64, template: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Runs the benchmark.
pub async fn run(spec: Spec) -> Result<Report> {
    spec.validate()?;
    let spec = Arc::new(spec);
    let mut workers = Vec::with_capacity(spec.clients);
    for id in 0..spec.clients {
        let node = &spec.nodes[id % spec.nodes.len()];
        let client = Client::connect_with_token(node, &spec.cluster, spec.token.clone()).await?;
        workers.push(Worker {
            id: id as u32,
            client,
            spec: spec.clone(),
            contexts: HashMap::new(),
            last: HashMap::new(),
            seq: 0,
            tally: Tally::default(),
            rng: fastrand::Rng::with_seed(id as u64),
        });
    }

    let preload = if spec.preload {
        let started = Instant::now();
        let progress = bar(
            spec.progress,
            spec.keys,
            "preload {bar:40} {pos}/{len} keys {per_sec}",
        );
        let tasks = workers.into_iter().map(|mut w| {
            let progress = progress.clone();
            tokio::spawn(async move {
                let clients = w.spec.clients as u64;
                let mut n = u64::from(w.id);
                while n < w.spec.keys {
                    w.put(n).await?;
                    progress.inc(1);
                    n += clients;
                }
                Ok::<Worker, Error>(w)
            })
        });
        workers = Vec::new();
        for joined in futures_util::future::join_all(tasks).await {
            workers.push(joined.map_err(|e| Error::Internal(format!("bench task failed: {e}")))??);
        }
        progress.finish_and_clear();
        Some((spec.keys, started.elapsed()))
    } else {
        None
    };

    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + spec.duration;
    let progress = bar(
        spec.progress,
        spec.duration.as_millis() as u64,
        "{elapsed:>4} {bar:40} {msg}",
    );
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            let done = done.clone();
            tokio::spawn(async move {
                // Scheduled clients start spread over one interval.
                let mut schedule = w.spec.pace().map(|pace| Schedule {
                    next: started + pace.mul_f64(f64::from(w.id) / w.spec.clients as f64),
                    pace,
                });
                loop {
                    let start = match &mut schedule {
                        Some(s) => s.turn(deadline).await,
                        None => Some(Instant::now()).filter(|now| *now < deadline),
                    };
                    let Some(start) = start else { break };
                    let op = w.spec.mix.pick(w.rng.u32(..));
                    w.one(op, start).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                w.tally
            })
        })
        .collect();
    let ticker = {
        let (progress, done) = (progress.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let elapsed = started.elapsed();
                let rate = done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
                progress.set_position(elapsed.as_millis() as u64);
                progress.set_message(format!("{rate:.0} ops/s"));
            }
        })
    };
    let mut tally = Tally::default();
    for joined in futures_util::future::join_all(tasks).await {
        tally.merge(&joined.map_err(|e| Error::Internal(format!("bench task failed: {e}")))?);
    }
    let elapsed = started.elapsed();
    ticker.abort();
    progress.finish_and_clear();
    Ok(Report {
        spec: Arc::unwrap_or_clone(spec),
        elapsed,
        tally,
        preload,
    })
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
            "{} clients on {} node(s), {:.1} s, {}-byte values, {} keys, mix {}",
            s.clients,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_pick_by_weight() {
        let mix: Mix = "get=3, put=1".parse().unwrap();
        let picks: Vec<Op> = (0..4).map(|r| mix.pick(r)).collect();
        assert_eq!(picks, vec![Op::Get, Op::Get, Op::Get, Op::Put]);
        assert_eq!(mix.pick(7), Op::Put);
        for bad in ["", "get=0", "scan=1", "get", "get=-1", "get=x"] {
            assert!(bad.parse::<Mix>().is_err(), "{bad:?}");
        }
    }

    #[actix_rt::test]
    async fn a_late_turn_counts_from_when_it_was_due() {
        let pace = Duration::from_millis(20);
        let now = Instant::now();
        let deadline = now + Duration::from_secs(60);
        // Behind schedule (the last answer came late): no wait, and the
        // request is timed from its due time, in the past.
        let due = now - Duration::from_millis(50);
        let mut late = Schedule { next: due, pace };
        assert_eq!(late.turn(deadline).await, Some(due));
        assert_eq!(late.next, due + pace);
        // Ahead of schedule: it waits for its turn and is timed from then.
        let due = Instant::now() + pace;
        let mut early = Schedule { next: due, pace };
        assert!(early.turn(deadline).await.unwrap() >= due);
        assert!(Instant::now() >= due);
        // No turn at or past the deadline.
        let mut over = Schedule {
            next: deadline,
            pace,
        };
        assert_eq!(over.turn(deadline).await, None);
    }

    #[test]
    fn stamps_name_their_writer() {
        let mut v = vec![0u8; 20];
        v[..4].copy_from_slice(&7u32.to_be_bytes());
        v[4..12].copy_from_slice(&42u64.to_be_bytes());
        assert_eq!(stamp(&v, 7), Some(42));
        assert_eq!(stamp(&v, 8), None);
        assert_eq!(stamp(&v[..5], 7), None);
    }
}

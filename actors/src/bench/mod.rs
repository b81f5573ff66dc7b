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
//! `incr` and `sadd` run against the same key names in the namespaces
//! `bench-counters` (type counter) and `bench-sets` (type set), which the
//! bench creates if they do not exist: an increment by 1, and an add of a
//! new random member (so a set grows by one member per add).
//!
//! By default each client sends its next request as soon as the last is
//! answered (a closed loop, like redis-benchmark), so a server that stalls
//! also stops the load and only the requests in flight see the stall.
//! `--rate` gives every client a schedule instead (an open loop at a fixed
//! total rate, like wrk2): a request that starts late because the previous
//! one was slow is timed from when it should have started, so a stall
//! counts for every request it held up.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dynakv::namespace::{Changes, Kind, Request};
use dynakv::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::client::{Client, Options};

mod report;
mod spec;

pub use report::{OpStats, Report, Tally};
pub use spec::{Mix, Op, Spec};

/// Bytes at the start of a value that identify its write.
const STAMP: usize = 12;
/// Latencies are recorded in microseconds up to a minute.
const MAX_MICROS: u64 = 60_000_000;
/// Where `incr` and `sadd` run.
const COUNTERS: &str = "bench-counters";
const SETS: &str = "bench-sets";
/// How long a namespace the bench created may take to reach every node
/// that answers, and how long each wait for agreement lasts at most.
const NAMESPACE_WAIT: Duration = Duration::from_secs(30);
const AGREEMENT_ROUND: Duration = Duration::from_secs(1);

/// The last acknowledged write of a key by its owner.
#[derive(Debug, Clone, Copy)]
enum Last {
    Put(u64),
    Delete(u64),
}

/// One client's connection and memory of its own keys.
struct Worker {
    id: u32,
    client: Arc<Client>,
    /// The same client in `bench-counters` and `bench-sets`.
    counters: Arc<Client>,
    sets: Arc<Client>,
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
        if self.spec.random_values {
            self.rng.fill(&mut v);
        }
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

    async fn incr(&mut self, n: u64) -> Result<()> {
        self.counters.incr(&key_name(n), 1, self.spec.w).await?;
        Ok(())
    }

    async fn sadd(&mut self, n: u64) -> Result<()> {
        let member = self.rng.u64(..).to_be_bytes();
        self.sets.sadd(&key_name(n), &[&member], self.spec.w).await
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
            Op::Incr => self.incr(n).await,
            Op::Sadd => self.sadd(n).await,
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
    // One cluster client, as an application has: the workers share its
    // pools, about one connection per worker in all, as with one
    // connection per worker pinned to a node.
    let seeds: Vec<&str> = spec.nodes.iter().map(String::as_str).collect();
    let options = Options {
        cluster: spec.cluster.clone(),
        token: spec.token.clone(),
        tls: spec.tls.clone(),
        routing: spec.routing,
        pool_size: spec.clients.div_ceil(seeds.len()).clamp(1, 64),
        ..Options::default()
    };
    let client = Client::connect_cluster(&seeds, options).await?;
    let counters =
        Arc::new(typed_namespace(&client, &spec, Op::Incr, COUNTERS, Kind::Counter).await?);
    let sets = Arc::new(typed_namespace(&client, &spec, Op::Sadd, SETS, Kind::Set).await?);
    let client = Arc::new(client.in_namespace(&spec.namespace)?);
    for id in 0..spec.clients {
        workers.push(Worker {
            id: id as u32,
            client: client.clone(),
            counters: counters.clone(),
            sets: sets.clone(),
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

/// The client in namespace `name` of type `kind`, created if the mix runs
/// `op` and it does not exist yet (then waited for until every node that
/// answers has it).
async fn typed_namespace(
    client: &Client,
    spec: &Spec,
    op: Op,
    name: &str,
    kind: Kind,
) -> Result<Client> {
    let typed = client.in_namespace(name)?;
    if spec.mix.weight(op) == 0 {
        return Ok(typed);
    }
    let show = Request::Show { name: name.into() };
    match client.namespaces(show).await {
        Ok(found) if found.iter().all(|i| i.settings.kind == kind) => return Ok(typed),
        Ok(_) => {
            return Err(Error::InvalidRequest(format!(
                "namespace {name} exists, but not as a {}: drop it to bench {}",
                kind.as_str(),
                op.name()
            )));
        }
        Err(_) => {}
    }
    let changes = Changes {
        kind: Some(kind),
        ..Changes::default()
    };
    let create = Request::Create {
        name: name.into(),
        changes,
    };
    client.change_namespace(create).await?;
    // Keys spread over the nodes: each coordinator must know it. A node
    // that does not answer coordinates nothing, so it is not waited for
    // past one round.
    let deadline = Instant::now() + NAMESPACE_WAIT;
    loop {
        let agreement = client.namespace_agreement(AGREEMENT_ROUND).await?;
        if agreement.behind.is_empty() {
            return Ok(typed);
        }
        if Instant::now() >= deadline {
            return Err(Error::Unavailable(format!(
                "namespace {name} created, but not every node had it after {}: {agreement:?}",
                humantime::format_duration(NAMESPACE_WAIT)
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

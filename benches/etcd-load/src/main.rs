//! `etcd-load`: the same load as `dynakv bench` (clients, duration, value
//! size, keys, one operation), against etcd over gRPC. Gets are etcd's
//! default linearizable reads. Prints one JSON object shaped like `dynakv
//! bench --json`'s (`ops.<op>.ops_per_sec`, `ops.<op>.latency_us.p99`).
//!
//! etcd-load --endpoints 127.0.0.1:2379,... --clients 50 --duration 20
//!           --value-size 100 --keys 100000 --op put|get [--preload]

use std::time::{Duration, Instant};

use etcd_client::Client;
use hdrhistogram::Histogram;
use serde_json::json;

struct Args {
    endpoints: Vec<String>,
    clients: usize,
    duration: Duration,
    value_size: usize,
    keys: u64,
    op: String,
    preload: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        endpoints: vec!["127.0.0.1:2379".into()],
        clients: 50,
        duration: Duration::from_secs(20),
        value_size: 100,
        keys: 100_000,
        op: "put".into(),
        preload: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--preload" {
            a.preload = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|_| format!("bad {flag} {v:?}"));
        match flag.as_str() {
            "--endpoints" => a.endpoints = value.split(',').map(String::from).collect(),
            "--clients" => a.clients = number(&value)?.max(1) as usize,
            "--duration" => a.duration = Duration::from_secs(number(&value)?.max(1)),
            "--value-size" => a.value_size = number(&value)? as usize,
            "--keys" => a.keys = number(&value)?.max(1),
            "--op" if value == "put" || value == "get" => a.op = value,
            _ => return Err(format!("unknown flag or value: {flag} {value}")),
        }
    }
    Ok(a)
}

fn key(n: u64) -> String {
    format!("bench-{n}")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let a = parse()?;
    let value = vec![b'x'; a.value_size];
    let mut clients = Vec::new();
    for _ in 0..a.clients {
        clients.push(
            Client::connect(a.endpoints.clone(), None)
                .await
                .map_err(|e| format!("cannot connect to etcd: {e}"))?,
        );
    }
    if a.preload {
        let mut tasks = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            let (mut c, value, (clients, keys)) = (c.clone(), value.clone(), (a.clients, a.keys));
            tasks.push(tokio::spawn(async move {
                let mut n = i as u64;
                while n < keys {
                    c.put(key(n), value.clone(), None).await.map_err(|e| e.to_string())?;
                    n += clients as u64;
                }
                Ok::<(), String>(())
            }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
    }
    let started = Instant::now();
    let deadline = started + a.duration;
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let (mut c, value, op, keys) = (c, value.clone(), a.op.clone(), a.keys);
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut errors = 0u64;
            let mut seed = i as u64 * 0x9E37_79B9_7F4A_7C15 + 1;
            while Instant::now() < deadline {
                // xorshift: a key spread without another dependency
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let k = key(seed % keys);
                let t = Instant::now();
                let done = if op == "put" {
                    c.put(k, value.clone(), None).await.map(|_| ())
                } else {
                    c.get(k, None).await.map(|_| ())
                };
                match done {
                    Ok(()) => {
                        let us = t.elapsed().as_micros() as u64;
                        h.saturating_record(us.clamp(1, 60_000_000));
                    }
                    Err(_) => errors += 1,
                }
            }
            (h, errors)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.map_err(|e| e.to_string())?;
        all.add(&h).map_err(|e| e.to_string())?;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = all.len();
    let report = json!({
        "system": "etcd",
        "clients": a.clients,
        "elapsed_s": elapsed,
        "ops": { a.op.clone(): {
            "ok": ok,
            "errors": errors,
            "ops_per_sec": ok as f64 / elapsed,
            "latency_us": {
                "p50": all.value_at_percentile(50.0),
                "p90": all.value_at_percentile(90.0),
                "p99": all.value_at_percentile(99.0),
                "p999": all.value_at_percentile(99.9),
                "max": all.max(),
            },
        }},
    });
    println!("{report}");
    Ok(())
}

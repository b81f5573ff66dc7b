//! How fast a replica that was down catches up: three nodes hold the same
//! keys, one stops, 100 keys are rewritten and 100 deleted, and it comes
//! back. Measured twice: with hinted handoff, and with anti-entropy alone
//! (`hints.deliver = false`). CI runs it with 20,000 keys; the figures for a
//! million: `DYNAKV_CATCH_UP_KEYS=1000000 cargo test --release --test
//! catch_up -- --nocapture`.

#![allow(clippy::unwrap_used)] // tests panic on purpose

use std::time::{Duration, Instant};

use dynakv::version::{Actor, Context, SiblingSet, Value};
use dynakv::{Error, Result};
use dynakv_actors::replica::{MergeHandoff, ReadLocal};
use dynakv_actors::testkit::{Cluster, wait_for};

/// Generous: catching up is measured, not asserted (a full round-robin
/// pass, what a returning replica waited for before, takes 100 s).
const WAIT: Duration = Duration::from_secs(60);
/// Keys merged per message while loading.
const LOAD_CHUNK: usize = 10_000;

fn key(i: usize) -> Vec<u8> {
    format!("user:{i:08}").into_bytes()
}

/// Loads `keys` keys into every node's replica directly (as if written at
/// N = 3 long ago).
async fn load(cluster: &Cluster, keys: usize) {
    let state = SiblingSet::new()
        .update(&Context::default(), Value::Data(vec![7; 100]), Actor(1))
        .unwrap();
    for start in (0..keys).step_by(LOAD_CHUNK) {
        let chunk: Vec<_> = (start..(start + LOAD_CHUNK).min(keys))
            .map(|i| (key(i), state.clone()))
            .collect();
        for i in 0..3 {
            let merged = cluster.node(i).replica.send(MergeHandoff(chunk.clone()));
            merged.await.unwrap().unwrap();
        }
    }
}

/// Whether node 2 holds what node 0 holds for every key in `keys`.
async fn agree(cluster: &Cluster, keys: &[Vec<u8>]) -> Result<()> {
    for k in keys {
        let read = |i: usize| cluster.node(i).replica.send(ReadLocal(k.clone()));
        let (there, back) = (read(0).await.unwrap()?, read(2).await.unwrap()?);
        if there != back {
            return Err(Error::Unavailable(format!(
                "{} differs",
                String::from_utf8_lossy(k)
            )));
        }
    }
    Ok(())
}

/// Returns how long node 2 took to restart, and then to agree.
async fn outage(keys: usize, hints: bool) -> (Duration, Duration) {
    let mut cluster = Cluster::start_with(3, |c| c.hints.deliver = hints)
        .await
        .unwrap();
    load(&cluster, keys).await;
    cluster.stop_node(2).await.unwrap();
    let client = cluster.client(0).await.unwrap();
    let step = keys / 200;
    let mut changed = Vec::new();
    for j in 0..200 {
        let k = key(j * step);
        let read = client.get(&k, None).await.unwrap();
        if j % 2 == 0 {
            client.put(&k, b"rewritten", &read.context, None).await
        } else {
            client.delete(&k, &read.context, None).await
        }
        .unwrap();
        changed.push(k);
    }
    let restart = Instant::now();
    cluster.restart_node(2).await.unwrap();
    let up = Instant::now();
    assert!(
        agree(&cluster, &changed).await.is_err(),
        "the returning replica missed the changes"
    );
    wait_for(WAIT, "the returning replica to agree", || {
        agree(&cluster, &changed)
    })
    .await
    .unwrap();
    let caught_up = up.elapsed();
    cluster.stop().await.unwrap();
    (up - restart, caught_up)
}

#[actix_rt::test]
async fn a_returning_replica_catches_up_with_hints_or_anti_entropy_alone() {
    let keys: usize = std::env::var("DYNAKV_CATCH_UP_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    for hints in [true, false] {
        let (restart, caught_up) = outage(keys, hints).await;
        println!(
            "{keys} keys, 100 rewritten and 100 deleted while a replica was down, hints {}: \
             restart {restart:?}, then every replica agreed {caught_up:?} after it was up",
            if hints { "on" } else { "off" }
        );
    }
}

//! Anti-entropy in a running cluster: replicas that diverged converge, a
//! wiped node recovers its data, concurrent writes survive exchanges, and a
//! deleted key never comes back.

#![allow(clippy::unwrap_used)] // tests panic on purpose

use std::time::{Duration, Instant};

use dynakv::config::Config;
use dynakv::replica::ReplicaMsg;
use dynakv::version::{SiblingSet, Value};
use dynakv::{Error, Result};
use dynakv_actors::events::Event;
use dynakv_actors::replica::{ReadLocal, ReplicaRequest, Stats};
use dynakv_actors::testkit::{Cluster, wait_for, wait_for_event};

const WAIT: Duration = Duration::from_secs(60);

/// Few partitions and fast exchanges, no hint delivery: only anti-entropy
/// can repair.
fn ae_only(c: &mut Config) {
    c.cluster.partitions = 64;
    c.anti_entropy.interval_ms = 5;
    c.anti_entropy.gc_interval_ms = 200;
    c.anti_entropy.gc_grace_ms = 300;
    c.anti_entropy.keep_deleted_ms = 0;
    c.hints.deliver = false;
}

async fn local(cluster: &Cluster, i: usize, key: &str) -> Result<SiblingSet> {
    cluster
        .node(i)
        .replica
        .send(ReadLocal(key.as_bytes().to_vec()))
        .await
        .unwrap()
}

/// Waits until every running node's local copy of every key is identical.
async fn converged(cluster: &Cluster, keys: &[String]) {
    wait_for(WAIT, "replicas to converge", || async {
        for key in keys {
            let first = local(cluster, 0, key).await?;
            for i in 1..cluster.len() {
                if local(cluster, i, key).await? != first {
                    return Err(Error::Unavailable(format!("{key} differs on node {i}")));
                }
            }
        }
        Ok(())
    })
    .await
    .unwrap();
}

/// Writes straight into node `i`'s replica, behind the cluster's back.
async fn inject(cluster: &Cluster, i: usize, key: &str, value: &str) -> SiblingSet {
    let ctx = local(cluster, i, key).await.unwrap().context();
    let reply = cluster
        .node(i)
        .replica
        .send(ReplicaRequest(ReplicaMsg::Update {
            key: key.as_bytes().to_vec(),
            context: ctx,
            value: Value::Data(value.as_bytes().to_vec()),
            hint_for: None,
        }))
        .await
        .unwrap()
        .unwrap();
    match reply {
        ReplicaMsg::Updated { state, .. } => state,
        other => panic!("{other:?}"),
    }
}

#[actix_rt::test]
async fn replicas_written_behind_the_clusters_back_converge() {
    let cluster = Cluster::start_with(3, ae_only).await.unwrap();
    let client = cluster.client(0).await.unwrap();
    let keys: Vec<String> = (0..100).map(|i| format!("key{i}")).collect();
    for k in &keys[..50] {
        client
            .put(k.as_bytes(), b"through the cluster", &[], None)
            .await
            .unwrap();
    }
    // Half the keys change on node 0 only, the other half appear on node 2
    // only, while no node hears another (so no exchange repairs them yet).
    cluster.partition(&[0, 1, 2]).await;
    for k in &keys[..50] {
        inject(&cluster, 0, k, "changed on node 0").await;
    }
    for k in &keys[50..] {
        inject(&cluster, 2, k, "new on node 2").await;
    }
    assert_ne!(
        local(&cluster, 1, &keys[0]).await.unwrap(),
        local(&cluster, 0, &keys[0]).await.unwrap()
    );
    assert!(local(&cluster, 1, &keys[99]).await.unwrap().is_empty());
    cluster.heal().await;
    converged(&cluster, &keys).await;
    let values: Vec<Vec<u8>> = local(&cluster, 1, &keys[0])
        .await
        .unwrap()
        .values()
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(values, vec![b"changed on node 0".to_vec()]);
    let status = cluster.client(1).await.unwrap().status().await.unwrap();
    assert!(
        status
            .notes
            .iter()
            .any(|n| n.starts_with("anti-entropy:") && n.contains("keys repaired")),
        "{status:?}"
    );
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn a_wiped_node_recovers_all_its_partitions() {
    let mut cluster = Cluster::start_with(3, ae_only).await.unwrap();
    let client = std::sync::Arc::new(cluster.client(0).await.unwrap());
    // `DYNAKV_WIPED_KEYS=100000 cargo test --release --test anti_entropy
    // a_wiped -- --nocapture` measures a bigger recovery.
    let count: usize = std::env::var("DYNAKV_WIPED_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let keys: Vec<String> = (0..count).map(|i| format!("key{i}")).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in keys.chunks(count.div_ceil(20)) {
        let (c, chunk) = (client.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for k in chunk {
                c.put(k.as_bytes(), k.as_bytes(), &[], None).await.unwrap();
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    cluster.stop_node(2).await.unwrap();
    std::fs::remove_dir_all(&cluster.config(2).node.data_dir).unwrap();
    let restarted = Instant::now();
    cluster.restart_node(2).await.unwrap();
    wait_for(
        WAIT,
        "the wiped node to hold as many keys again",
        || async {
            let stats = cluster.node(2).replica.send(Stats).await.unwrap()?;
            match stats.keys as usize {
                n if n >= keys.len() => Ok(()),
                n => Err(Error::Unavailable(format!("{n} of {} keys", keys.len()))),
            }
        },
    )
    .await
    .unwrap();
    let took = restarted.elapsed();
    for k in &keys {
        assert_eq!(
            local(&cluster, 2, k)
                .await
                .unwrap()
                .values()
                .collect::<Vec<_>>(),
            vec![k.as_bytes()],
            "{k} after recovery"
        );
    }
    println!(
        "wiped node recovered {} keys in {took:?}: {:.0} keys/s",
        keys.len(),
        keys.len() as f64 / took.as_secs_f64()
    );
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn writes_during_exchanges_are_neither_lost_nor_duplicated() {
    let cluster = Cluster::start_with(3, ae_only).await.unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("key{i}")).collect();
    // diverge first, so exchanges are busy repairing while clients write
    for k in &keys {
        inject(&cluster, 1, k, "diverged").await;
    }
    let client = cluster.client(0).await.unwrap();
    for round in 0..5 {
        for k in &keys {
            // read-modify-write: each write supersedes what its read saw
            let read = client.get(k.as_bytes(), Some(3)).await.unwrap();
            client
                .put(
                    k.as_bytes(),
                    format!("round {round}").as_bytes(),
                    &read.context,
                    None,
                )
                .await
                .unwrap();
        }
    }
    converged(&cluster, &keys).await;
    for k in &keys {
        let state = local(&cluster, 2, k).await.unwrap();
        let values: Vec<&[u8]> = state.values().collect();
        assert_eq!(
            values,
            vec![b"round 4".as_slice()],
            "{k}: lost or duplicated writes"
        );
    }
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn a_deleted_key_never_comes_back() {
    let mut cluster = Cluster::start_with(3, ae_only).await.unwrap();
    let client = cluster.client(0).await.unwrap();
    client
        .put(b"doomed", b"old value", &[], None)
        .await
        .unwrap();
    converged(&cluster, &["doomed".to_string()]).await;

    // node 2 is down during the delete and keeps the old value
    cluster.stop_node(2).await.unwrap();
    let read = client.get(b"doomed", None).await.unwrap();
    client.delete(b"doomed", &read.context, None).await.unwrap();
    cluster.restart_node(2).await.unwrap();
    let old = local(&cluster, 2, "doomed").await.unwrap();
    assert_eq!(
        old.values().collect::<Vec<_>>(),
        vec![b"old value".as_slice()]
    );

    // anti-entropy brings node 2 the tombstone, then collection removes it
    // everywhere
    wait_for(
        WAIT,
        "the tombstone to be collected on every node",
        || async {
            for i in 0..3 {
                let copy = local(&cluster, i, "doomed").await?;
                if !copy.is_empty() {
                    return Err(Error::Unavailable(format!("node {i} holds {copy:?}")));
                }
            }
            Ok(())
        },
    )
    .await
    .unwrap();

    // many more exchanges later it is still gone
    let mut events = cluster.node(2).events.subscribe();
    let mut exchanges = 0;
    wait_for_event(&mut events, WAIT, "3 x 64 exchanges", |e| {
        exchanges += usize::from(matches!(e, Event::Exchanged { .. }));
        (exchanges >= 3 * 64).then_some(())
    })
    .await
    .unwrap();
    for i in 0..3 {
        assert!(
            local(&cluster, i, "doomed").await.unwrap().is_empty(),
            "node {i}"
        );
        let read = cluster
            .client(i)
            .await
            .unwrap()
            .get(b"doomed", Some(3))
            .await
            .unwrap();
        assert!(read.values.is_empty(), "node {i} reads it back");
    }
    cluster.stop().await.unwrap();
}

//! Growing and shrinking a serving cluster one node at a time: joins with
//! data transfer while clients write and read, leave, remove of a dead node,
//! and a transfer interrupted by a crash of the receiver.

#![allow(clippy::unwrap_used)] // tests panic on purpose

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dynakv::config::Config;
use dynakv::{Error, NodeId};
use dynakv_actors::client::Client;
use dynakv_actors::events::Event;
use dynakv_actors::handoff::FetchTotals;
use dynakv_actors::membership::CurrentView;
use dynakv_actors::replica::{ReadLocal, Stats};
use dynakv_actors::testkit::{Cluster, check, wait_for, wait_for_event};

const WAIT: Duration = Duration::from_secs(90);

fn small(c: &mut Config) {
    c.cluster.partitions = 64;
    c.handoff.interval_ms = 50;
    c.anti_entropy.interval_ms = 20;
}

/// Writes `count` keys (pipelined) and returns them with their values.
async fn load(client: Arc<Client>, prefix: &str, count: usize) -> Vec<(String, Vec<u8>)> {
    let keys: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| {
            (
                format!("{prefix}{i}"),
                format!("value of {prefix}{i}").into_bytes(),
            )
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in keys.chunks(count.div_ceil(16).max(1)) {
        let (c, chunk) = (client.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for (k, v) in chunk {
                c.put(k.as_bytes(), &v, &[], None).await.unwrap();
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    keys
}

/// Every key is held by exactly its N owners, and readable.
async fn check_placement(cluster: &Cluster, keys: &[(String, Vec<u8>)]) {
    if let Err(e) = placement(cluster, keys).await {
        panic!("{e}");
    }
}

/// Whether every key is held by exactly its N owners; a holder without
/// the key's value fails the test at once.
async fn placement(cluster: &Cluster, keys: &[(String, Vec<u8>)]) -> Result<(), Error> {
    let view = cluster.running()[0]
        .membership
        .send(CurrentView)
        .await
        .unwrap();
    let ring = view.ring().unwrap();
    let running = cluster.running();
    for (key, value) in keys {
        let owners: BTreeSet<NodeId> = ring
            .preference_list(ring.partition_of(key.as_bytes()), 3)
            .into_iter()
            .cloned()
            .collect();
        let mut holders = BTreeSet::new();
        for n in &running {
            let local = n
                .replica
                .send(ReadLocal(key.clone().into_bytes()))
                .await
                .unwrap()
                .unwrap();
            if !local.is_empty() {
                assert!(
                    local.values().any(|v| v == value.as_slice()),
                    "{key} on {} lost its value",
                    n.id
                );
                holders.insert(n.id.clone());
            }
        }
        if holders != owners {
            return Err(Error::Unavailable(format!(
                "{key} is held by {holders:?}, its owners are {owners:?}"
            )));
        }
    }
    Ok(())
}

/// Keys and bytes fetched by handoff on every running node so far.
async fn fetched(cluster: &Cluster) -> (u64, u64) {
    let mut total = (0, 0);
    for n in cluster.running() {
        let t = n.handoff.send(FetchTotals).await.unwrap();
        total.0 += t.keys;
        total.1 += t.bytes;
    }
    total
}

#[actix_rt::test]
async fn three_to_five_nodes_while_clients_write_and_read() {
    let mut cluster = Cluster::start_with(3, small).await.unwrap();
    // `DYNAKV_SCALE_KEYS=100000 cargo test --release --test scaling three_to_five
    // -- --nocapture` gives the figures for 100,000 keys.
    let count: usize = std::env::var("DYNAKV_SCALE_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let client = Arc::new(cluster.client(0).await.unwrap());
    let mut written = load(client.clone(), "base", count).await;

    // A writer and a reader run through every change.
    let stop = Arc::new(AtomicBool::new(false));
    let misses = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (c, stop) = (cluster.client(1).await.unwrap(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (k, v) = (format!("live{i}"), format!("live value {i}").into_bytes());
                if c.put(k.as_bytes(), &v, &[], None).await.is_ok() {
                    acked.push((k, v));
                }
                i += 1;
            }
            acked
        })
    };
    let reader = {
        let (c, stop, misses) = (
            cluster.client(2).await.unwrap(),
            stop.clone(),
            misses.clone(),
        );
        let sample: Vec<(String, Vec<u8>)> = written.iter().step_by(7).cloned().collect();
        tokio::spawn(async move {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                for (k, v) in &sample {
                    match c.get(k.as_bytes(), None).await {
                        Ok(r) if r.values.contains(v) => {}
                        _ => {
                            misses.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    reads += 1;
                }
            }
            reads
        })
    };

    let total_replicas = (count * 3) as f64;
    for nodes in [4usize, 5] {
        let before = fetched(&cluster).await;
        let started = Instant::now();
        cluster.add_node(|_| {}).await.unwrap();
        cluster.settled(WAIT).await.unwrap();
        let took = started.elapsed();
        let after = fetched(&cluster).await;
        let (moved, bytes) = (after.0 - before.0, after.1 - before.1);
        let ideal = total_replicas / nodes as f64;
        println!(
            "{}->{nodes}: {moved} key replicas moved, ideal {ideal:.0} ({:.3}x); settled in {took:?}: {:.0} keys/s, {:.1} MB/s",
            nodes - 1,
            moved as f64 / ideal,
            moved as f64 / took.as_secs_f64(),
            bytes as f64 / took.as_secs_f64() / 1e6
        );
        // Ideal counts the loaded keys only; the live writer adds a few.
        assert!(
            moved as f64 <= ideal * 1.2 + 500.0,
            "moved {moved} replicas for an ideal of {ideal}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let live = writer.await.unwrap();
    let reads = reader.await.unwrap();
    println!(
        "reader: {reads} reads, {} misses during the moves",
        misses.load(Ordering::Relaxed)
    );
    written.extend(live);
    // Writes that raced with the last commits reach everyone through anti-entropy.
    wait_for(WAIT, "every write on exactly its owners", || async {
        let view = cluster.running()[0]
            .membership
            .send(CurrentView)
            .await
            .unwrap();
        let ring = view.ring().unwrap();
        for (key, _) in &written {
            let owners: BTreeSet<NodeId> = ring
                .preference_list(ring.partition_of(key.as_bytes()), 3)
                .into_iter()
                .cloned()
                .collect();
            for n in cluster.running() {
                let held = !n
                    .replica
                    .send(ReadLocal(key.clone().into_bytes()))
                    .await
                    .unwrap()?
                    .is_empty();
                if held != owners.contains(&n.id) {
                    return Err(Error::Unavailable(format!("{key} on {}: {held}", n.id)));
                }
            }
        }
        Ok(())
    })
    .await
    .unwrap();
    check_placement(&cluster, &written).await;
    let reader = cluster.client(4).await.unwrap();
    for (k, v) in &written {
        assert!(
            reader
                .get(k.as_bytes(), None)
                .await
                .unwrap()
                .values
                .contains(v),
            "{k}"
        );
    }
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn five_to_four_by_leave_loses_nothing() {
    let cluster = Cluster::start_with(5, small).await.unwrap();
    let written = load(Arc::new(cluster.client(0).await.unwrap()), "k", 1500).await;
    let mut left = cluster.node(3).events.subscribe();
    let message = cluster.client(3).await.unwrap().leave().await.unwrap();
    assert!(message.contains("leaving"), "{message}");
    wait_for_event(&mut left, WAIT, "the leaver to be gone", |e| {
        matches!(e, Event::Left { .. }).then_some(())
    })
    .await
    .unwrap();
    let stats = cluster.node(3).replica.send(Stats).await.unwrap().unwrap();
    assert_eq!(stats.keys, 0, "the leaver handed everything off");
    let view = wait_for(WAIT, "the others to see the leaver gone", || async {
        let view = cluster.node(0).membership.send(CurrentView).await.unwrap();
        match view.members[&cluster.id(3)].status.as_str() {
            "left" => Ok(view),
            other => Err(Error::Unavailable(other.to_string())),
        }
    })
    .await
    .unwrap();
    let ring = view.ring().unwrap();
    assert!(!ring.nodes().contains(&cluster.id(3)));
    for (k, v) in &written {
        let read = cluster
            .client(1)
            .await
            .unwrap()
            .get(k.as_bytes(), None)
            .await
            .unwrap();
        assert!(read.values.contains(v), "{k} lost");
    }
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn five_to_four_by_removing_a_dead_node_loses_nothing() {
    let mut cluster = Cluster::start_with(5, small).await.unwrap();
    let written = load(Arc::new(cluster.client(0).await.unwrap()), "k", 1500).await;
    cluster.stop_node(2).await.unwrap();
    let dead = cluster.id(2);
    let message = cluster
        .client(0)
        .await
        .unwrap()
        .remove(dead.as_str())
        .await
        .unwrap();
    assert!(message.contains("removed"), "{message}");
    cluster.settled(WAIT).await.unwrap();
    let view = cluster.node(0).membership.send(CurrentView).await.unwrap();
    assert!(!view.ring().unwrap().nodes().contains(&dead));
    // The dead node's partitions have no one to hand them over: their new
    // owners rebuild them through anti-entropy, after the ring settled.
    wait_for(WAIT, "the removed node's keys to be rebuilt", || {
        placement(&cluster, &written)
    })
    .await
    .unwrap();
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn an_interrupted_transfer_resumes_after_the_receiver_restarts() {
    let mut cluster = Cluster::start_with(3, |c| {
        small(c);
        // slow transfers, so there is time to interrupt one
        c.handoff.chunk_keys = 20;
        c.handoff.max_bytes_per_sec = 50_000;
    })
    .await
    .unwrap();
    let written = load(Arc::new(cluster.client(0).await.unwrap()), "k", 3000).await;
    let i = cluster.add_node(|_| {}).await.unwrap();
    let mut events = cluster.node(i).events.subscribe();
    wait_for_event(&mut events, WAIT, "a partition fetched", |e| {
        matches!(e, Event::PartitionFetched { .. }).then_some(())
    })
    .await
    .unwrap();
    let keys = |cluster: &Cluster| cluster.node(i).replica.send(Stats);
    let before = keys(&cluster).await.unwrap().unwrap().keys;
    cluster.stop_node(i).await.unwrap();
    cluster.restart_node(i).await.unwrap();
    // The restarted replica counts its keys as its start-up scan reaches
    // them: what was fetched before the crash stays once it is done.
    wait_for(
        WAIT,
        "what was fetched before the crash to stay",
        || async {
            let after = keys(&cluster)
                .await
                .map_err(|e| Error::Internal(e.to_string()))??
                .keys;
            check(after >= before, || format!("{after} keys of {before}"))
        },
    )
    .await
    .unwrap();
    cluster.settled(WAIT).await.unwrap();
    check_placement(&cluster, &written).await;
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn cluster_join_and_plan_from_the_client() {
    let mut cluster = Cluster::start_with(3, small).await.unwrap();
    load(Arc::new(cluster.client(0).await.unwrap()), "k", 300).await;
    let via = cluster.client(0).await.unwrap();
    let plan = via
        .plan(dynakv::handoff::PlanChange::Join {
            node: NodeId::new("node4").unwrap(),
            weight: 1,
        })
        .await
        .unwrap();
    assert!(plan.moves > 0);
    let joiner = plan
        .rows
        .iter()
        .find(|r| r.node.as_str() == "node4")
        .unwrap();
    assert!(
        joiner.receive > 0 && joiner.receive_bytes > 0 && joiner.send == 0,
        "{plan:?}"
    );

    // a node started without auto_join waits for `cluster join`
    let i = cluster
        .add_node(|c| c.cluster.auto_join = false)
        .await
        .unwrap();
    let seed = cluster.config(0).node.peer_addr.clone();
    let view = cluster.node(i).membership.send(CurrentView).await.unwrap();
    assert!(view.ownership.is_none(), "not joined yet");
    cluster.client(i).await.unwrap().join(&seed).await.unwrap();
    cluster.settled(WAIT).await.unwrap();
    let view = cluster.node(0).membership.send(CurrentView).await.unwrap();
    let ring = view.ring().unwrap();
    let owned = ring.owned_counts();
    assert_eq!(owned.len(), 4);
    assert!(owned.iter().all(|(_, c)| *c == 16), "{owned:?}");
    cluster.stop().await.unwrap();
}

/// A split of a serving cluster: nothing moves, every key stays on its
/// replicas and in listings, and a node configured with the founding Q
/// joins the split cluster.
#[actix_rt::test]
async fn a_split_moves_nothing_and_the_cluster_grows_on() {
    let mut cluster = Cluster::start_with(3, small).await.unwrap();
    let client = Arc::new(cluster.client(0).await.unwrap());
    let written = load(client.clone(), "k", 300).await;
    let plan = client
        .plan(dynakv::handoff::PlanChange::Split)
        .await
        .unwrap();
    assert_eq!((plan.partitions, plan.moves), (128, 0), "{plan:?}");
    assert!(plan.largest_bytes > 0, "{plan:?}");
    let fetched_before = fetched(&cluster).await;
    client.split().await.unwrap();
    wait_for(WAIT, "every node to split", || async {
        for n in cluster.running() {
            let view = n.membership.send(CurrentView).await.unwrap();
            if view.partitions != 128 {
                return Err(Error::Unavailable(format!(
                    "{} has {}",
                    n.id, view.partitions
                )));
            }
        }
        Ok(())
    })
    .await
    .unwrap();
    cluster.settled(WAIT).await.unwrap();
    assert_eq!(
        fetched(&cluster).await,
        fetched_before,
        "a split moves nothing"
    );
    check_placement(&cluster, &written).await;
    assert_eq!(list_all(&client).await, 300);
    // A restarted member opens its storage at the founding Q and takes
    // the split one from its persisted view (its trees built again).
    cluster.stop_node(1).await.unwrap();
    cluster.restart_node(1).await.unwrap();
    cluster.settled(WAIT).await.unwrap();
    check_placement(&cluster, &written).await;
    // A node configured with the founding Q joins and takes its share.
    let i = cluster.add_node(small).await.unwrap();
    cluster.settled(WAIT).await.unwrap();
    let view = cluster.node(i).membership.send(CurrentView).await.unwrap();
    assert_eq!(view.partitions, 128);
    let ring = view.ring().unwrap();
    let owned = ring.owned_counts();
    assert!(owned.iter().all(|(_, c)| *c == 32), "{owned:?}");
    check_placement(&cluster, &written).await;
    cluster.stop().await.unwrap();
}

/// How many keys a full listing returns.
async fn list_all(client: &Client) -> usize {
    let (mut count, mut token) = (0, None);
    loop {
        let page = client.list(b"", 100, token.as_deref()).await.unwrap();
        count += page.keys.len();
        match page.next {
            Some(t) => token = Some(t),
            None => return count,
        }
    }
}

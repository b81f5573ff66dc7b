//! Members that come back: a removed node restarted on its old data stays
//! out and brings nothing back, and a replica that was down catches up
//! within seconds of its return. Real `dynakv serve` processes.

#![allow(clippy::unwrap_used)] // tests panic on purpose

mod support;

use std::time::{Duration, Instant};

use dynakv::anti_entropy::{AeMsg, Push};
use dynakv::hints::HintMsg;
use dynakv::membership::Status;
use dynakv::partition::Partition;
use dynakv::peer::PeerMsg;
use dynakv::version::{Actor, Context, SiblingSet, Value};
use dynakv::{Error, ErrorKind, Result};
use dynakv_actors::bridge::call;
use dynakv_actors::client::Client;
use dynakv_actors::membership::CurrentView;
use dynakv_actors::replica::ReadLocal;
use dynakv_actors::testkit::{Cluster, check, metric, wait_for};
use support::ProcessCluster;

const WAIT: Duration = Duration::from_secs(60);
/// What a node logs for each request it refuses from a fenced member.
const REFUSAL: &str = "refusing a request from a member that left or was removed";

fn key(i: usize) -> String {
    format!("key{i}")
}

/// Every key readable at R=3 through `client`, as (key, values).
async fn resurrected(client: &Client, keys: usize) -> Vec<(String, Vec<Vec<u8>>)> {
    let mut back = Vec::new();
    for i in 0..keys {
        if let Ok(read) = client.get(key(i).as_bytes(), Some(3)).await
            && !read.values.is_empty()
        {
            back.push((key(i), read.values));
        }
    }
    back
}

/// The Bridge fence on its own: node4 is cut off and removed, so it still
/// believes it is a member; once the network heals, the pushes it sends
/// (what a handoff release, an anti-entropy exchange or a hint delivery
/// would send) are refused by every node, and the refusal tells it it is
/// out.
#[actix_rt::test]
async fn every_node_refuses_the_pushes_of_a_removed_node_that_does_not_know_yet() {
    let cluster = Cluster::start(4).await.unwrap();
    cluster.partition(&[3]).await;
    let gone = cluster.id(3);
    let message = cluster.client(0).await.unwrap().remove(gone.as_str()).await;
    assert!(message.unwrap().contains("removed"));
    wait_for(WAIT, "every other node to see node4 removed", || async {
        for i in 0..3 {
            let view = cluster.node(i).membership.send(CurrentView).await.unwrap();
            if !view.is_fenced(&gone) {
                return Err(Error::Unavailable(format!("node{i} does not know")));
            }
        }
        Ok(())
    })
    .await
    .unwrap();
    let own = cluster.node(3).membership.send(CurrentView).await.unwrap();
    assert_eq!(
        own.members[&gone].status,
        Status::Up,
        "cut off, it cannot know"
    );
    cluster.heal().await;

    let stale = SiblingSet::new()
        .update(
            &Context::default(),
            Value::Data(b"deleted long ago".to_vec()),
            Actor(7),
        )
        .unwrap();
    let key = b"stale".to_vec();
    let q = cluster.config(0).cluster.partitions;
    let pushes = [
        PeerMsg::AntiEntropy(AeMsg::Push(Push {
            partition: Partition::of_key(&key, q),
            entries: vec![(key.clone(), stale.clone())],
        })),
        PeerMsg::Hints(HintMsg::Deliver {
            entries: vec![(key.clone(), stale)],
        }),
    ];
    let timeout = Duration::from_secs(5);
    for i in 0..3 {
        for push in pushes.clone() {
            let answer = call(&cluster.node(3).bridge, cluster.id(i), push, timeout).await;
            assert!(
                matches!(&answer, Err(e) if e.kind() == ErrorKind::Removed),
                "node{i} answered {answer:?}"
            );
        }
        let local = cluster
            .node(i)
            .replica
            .send(ReadLocal(key.clone()))
            .await
            .unwrap()
            .unwrap();
        assert!(local.is_empty(), "node{i} took the push: {local:?}");
        let scrape = cluster.scrape(i).await.unwrap();
        assert!(metric(&scrape, "dynakv_peer_requests_fenced_total") >= 2.0);
    }
    wait_for(WAIT, "node4 to learn it is out", || async {
        let own = cluster.node(3).membership.send(CurrentView).await.unwrap();
        match own.members[&gone].status {
            Status::Removed => Ok(()),
            other => Err(Error::Unavailable(other.as_str().into())),
        }
    })
    .await
    .unwrap();
    let refused = cluster.client(3).await.unwrap().get(b"k", None).await;
    assert!(
        matches!(&refused, Err(e) if e.kind() == ErrorKind::Removed),
        "{refused:?}"
    );
    cluster.stop().await.unwrap();
}

/// Cassandra's `test_decommissioned_node_cant_rejoin`: node4 is stopped,
/// removed, its keys deleted and the tombstones collected; node4 then
/// restarts on its old configuration and data directory.
#[actix_rt::test]
async fn a_removed_node_restarted_on_old_data_stays_out_and_brings_nothing_back() {
    const KEYS: usize = 60;
    let extra = "[anti_entropy]\ngc_interval_ms = 300\ngc_grace_ms = 600\nkeep_deleted_ms = 0\n";
    let mut cluster = ProcessCluster::start(4, extra);
    for i in 0..4 {
        cluster.wait_formed(i, 4, WAIT).await;
    }
    let a = Client::connect(&cluster.client_addrs[0], "").await.unwrap();
    for i in 0..KEYS {
        a.put(key(i).as_bytes(), b"doomed", &[], Some(3))
            .await
            .unwrap();
    }

    assert!(cluster.terminate(3).success());
    let message = a.remove("node4").await.unwrap();
    assert!(message.contains("removed"), "{message}");
    for i in 0..KEYS {
        let read = a.get(key(i).as_bytes(), None).await.unwrap();
        a.delete(key(i).as_bytes(), &read.context, None)
            .await
            .unwrap();
    }
    // Collected everywhere: no live node holds a copy, tombstone or not.
    let mut live = Vec::new();
    for addr in &cluster.client_addrs[..3] {
        live.push(Client::connect(addr, "").await.unwrap());
    }
    wait_for(
        WAIT,
        "the tombstones collected on every live node",
        || async {
            for (n, c) in live.iter().enumerate() {
                for i in 0..KEYS {
                    if !c.inspect(key(i).as_bytes()).await?.siblings.is_empty() {
                        return Err(Error::Unavailable(format!(
                            "node{} holds {}",
                            n + 1,
                            key(i)
                        )));
                    }
                }
            }
            Ok(())
        },
    )
    .await
    .unwrap();

    // node4 comes back with the values it held. Until it has been refused
    // and knows it is out, watch for a deleted key coming back.
    cluster.start_again(3);
    let d = cluster.client_addrs[3].clone();
    wait_for(WAIT, "node4 to be fenced", || async {
        let back = resurrected(&a, KEYS).await;
        assert!(back.is_empty(), "deleted keys came back: {back:?}");
        let refused_by_others = (0..3).any(|i| cluster.log(i).contains(REFUSAL));
        let d_refuses = match Client::connect(&d, "").await {
            Ok(c) => matches!(
                c.get(key(0).as_bytes(), Some(1)).await,
                Err(e) if e.kind() == ErrorKind::Removed
            ),
            Err(_) => false,
        };
        check(refused_by_others && d_refuses, || {
            format!("refused by others: {refused_by_others}, refuses clients: {d_refuses}")
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}", cluster.log_tail(3)));
    let d_log = cluster.log(3);
    assert!(
        d_log.contains("this node was removed from the cluster"),
        "{d_log}"
    );
    let refusals: Vec<usize> = (0..3)
        .map(|i| cluster.log(i).matches(REFUSAL).count())
        .collect();
    eprintln!("requests of node4 refused by node1..3: {refusals:?}");

    // Nothing came back, through any node, nor onto any node.
    for (n, c) in live.iter().enumerate() {
        assert_eq!(resurrected(c, KEYS).await, vec![], "through node{}", n + 1);
        for i in 0..KEYS {
            let local = c.inspect(key(i).as_bytes()).await.unwrap();
            assert!(
                local.siblings.iter().all(|(_, _, v)| v.is_none()),
                "node{} holds {}: {local:?}",
                n + 1,
                key(i)
            );
        }
    }

    // Its next start is refused outright.
    assert!(cluster.terminate(3).success());
    cluster.start_again(3);
    let status = cluster
        .wait_exit(3, WAIT)
        .await
        .expect("a removed node must not start");
    assert!(!status.success(), "{status}");
    let tail = cluster.log_tail(3);
    assert!(tail.contains("was removed from the cluster"), "{tail}");
}

/// A 3-node cluster (no node to stand in for a down owner): node3 misses
/// deletes and writes while it is down, and serves them all at R=1 within
/// seconds of its return.
#[actix_rt::test]
async fn a_replica_back_from_an_outage_serves_what_it_missed_within_seconds() {
    const KEYS: usize = 100;
    let mut cluster = ProcessCluster::start(3, "");
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    let a = Client::connect(&cluster.client_addrs[0], "").await.unwrap();
    let mut contexts = Vec::new();
    for i in 0..KEYS {
        let written = a.put(key(i).as_bytes(), b"v1", &[], Some(3)).await.unwrap();
        contexts.push(written.context);
    }

    assert!(cluster.terminate(2).success());
    // Half the keys deleted, the other half rewritten, and new keys.
    let mut expected: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    for (i, ctx) in contexts.iter().enumerate() {
        if i % 2 == 0 {
            a.delete(key(i).as_bytes(), ctx, None).await.unwrap();
            expected.push((key(i), None));
        } else {
            a.put(key(i).as_bytes(), b"v2", ctx, None).await.unwrap();
            expected.push((key(i), Some(b"v2".to_vec())));
        }
    }
    for i in KEYS..KEYS + 50 {
        a.put(key(i).as_bytes(), b"new", &[], None).await.unwrap();
        expected.push((key(i), Some(b"new".to_vec())));
    }

    cluster.start_again(2);
    let back = Instant::now();
    let c = wait_for(WAIT, "node3 to answer", || {
        Client::connect(&cluster.client_addrs[2], "")
    })
    .await
    .unwrap();
    let check = || async {
        for (k, value) in &expected {
            let read = c.get(k.as_bytes(), Some(1)).await?;
            let want: Vec<Vec<u8>> = value.iter().cloned().collect();
            if read.values != want {
                return Err(Error::Unavailable(format!("{k}: {:?}", read.values)));
            }
        }
        Ok::<(), Error>(())
    };
    let caught_up: Result<()> = wait_for(Duration::from_secs(15), "node3 to catch up", check).await;
    let took = back.elapsed();
    caught_up.unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tail(2)));
    eprintln!("node3 served every delete and write at R=1 {took:?} after its restart");
}

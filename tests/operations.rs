//! Running dynakv as a long-lived service: supervision after panics,
//! overload, and the fault-tolerance of the node's own actors.

#![allow(clippy::unwrap_used)] // tests panic on purpose

use std::sync::Arc;
use std::time::Duration;

use dynakv::ErrorKind;
use dynakv_actors::node::NodeHandle;
use dynakv_actors::replica::{PanicInCore, Stats};
use dynakv_actors::supervise::{InjectPanic, Ping};
use dynakv_actors::testkit::{Cluster, wait_for};

const WAIT: Duration = Duration::from_secs(30);

/// Sends `InjectPanic` to one of the node's actors and checks it answers
/// `Ping` again afterwards, on the same address.
async fn crash_and_check(node: &NodeHandle, which: &str) {
    macro_rules! crash {
        ($addr:expr) => {{
            let answer = $addr
                .send(InjectPanic)
                .await
                .expect("the mailbox stays open");
            assert!(
                answer.is_err(),
                "{which}: the panic is answered with an error"
            );
            wait_for(WAIT, "the actor to answer again", || async {
                $addr
                    .send(Ping)
                    .await
                    .map_err(|e| dynakv::Error::Unavailable(e.to_string()))?
            })
            .await
            .unwrap();
        }};
    }
    match which {
        "replica" => crash!(node.replica),
        "bridge" => crash!(node.bridge),
        "membership" => crash!(node.membership),
        "ring" => crash!(node.ring),
        "coordinator" => crash!(node.coordinator),
        "hints" => crash!(node.hints),
        "anti-entropy" => crash!(node.anti_entropy),
        "handoff" => crash!(node.handoff),
        "client-server" => crash!(node.client_server),
        other => panic!("no actor {other}"),
    }
}

#[actix_rt::test]
async fn a_panic_in_any_actor_leaves_the_node_serving_and_loses_nothing() {
    let cluster = Cluster::start(3).await.unwrap();
    let client = cluster.client(0).await.unwrap();
    for i in 0..50u32 {
        client
            .put(format!("before{i}").as_bytes(), &i.to_le_bytes(), &[], None)
            .await
            .unwrap();
    }
    let actors = [
        "replica",
        "bridge",
        "membership",
        "ring",
        "coordinator",
        "hints",
        "anti-entropy",
        "handoff",
        "client-server",
    ];
    for (round, which) in actors.iter().enumerate() {
        crash_and_check(cluster.node(0), which).await;
        // the node still serves gets and puts, through the same connection
        let key = format!("after-{which}");
        // A put that failed may still have been minted (its replication
        // was what failed), so a retry writes with the context of every
        // replica's copy, as a client retrying a write of unknown outcome
        // should; a blind retry would keep both as siblings.
        wait_for(WAIT, "writes after the restart", || async {
            let seen = client.get(key.as_bytes(), Some(3)).await?;
            client
                .put(key.as_bytes(), which.as_bytes(), &seen.context, None)
                .await
                .map(|_| ())
        })
        .await
        .unwrap();
        let read = client.get(key.as_bytes(), None).await.unwrap();
        assert_eq!(
            read.values,
            vec![which.as_bytes().to_vec()],
            "after the {which} panic (round {round})"
        );
    }
    // a panic inside the storage worker's core: it reopens from disk
    let answer = cluster.node(0).replica.send(PanicInCore).await.unwrap();
    assert!(answer.is_err());
    let stats = cluster.node(0).replica.send(Stats).await.unwrap().unwrap();
    assert!(stats.keys >= 50 + actors.len() as u64, "{stats:?}");

    // nothing written before is lost
    for i in 0..50u32 {
        let read = client
            .get(format!("before{i}").as_bytes(), None)
            .await
            .unwrap();
        assert_eq!(read.values, vec![i.to_le_bytes().to_vec()]);
    }
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn a_flood_of_requests_is_refused_as_overloaded_not_queued_without_bound() {
    // A generous deadline: what is admitted must be served even when the
    // machine is busy with other tests; what is not is refused at once.
    let cluster = Cluster::start_with(3, |c| c.timeouts.request_ms = 30_000)
        .await
        .unwrap();
    let client = Arc::new(cluster.client(0).await.unwrap());
    client.put(b"k", b"v", &[], None).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..5000 {
        let c = client.clone();
        tasks.spawn(async move { c.get(b"k", None).await });
    }
    let (mut ok, mut overloaded, mut other) = (0, 0, 0);
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if e.kind() == ErrorKind::Overloaded => {
                assert!(e.is_retryable());
                overloaded += 1;
            }
            Err(e) => {
                other += 1;
                eprintln!("unexpected: {e}");
            }
        }
    }
    println!(
        "flood of 5000 pipelined gets on one connection: {ok} served, {overloaded} refused as overloaded"
    );
    assert!(
        overloaded > 0,
        "a flood beyond the in-flight bound is refused"
    );
    assert!(ok > 0);
    assert_eq!(other, 0);
    // once the flood is over, the node serves normally
    assert_eq!(
        client.get(b"k", None).await.unwrap().values,
        vec![b"v".to_vec()]
    );
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn the_node_wide_bound_on_requests_in_flight_holds_across_connections() {
    let cluster = Cluster::start_with(3, |c| c.limits.max_in_flight = 4)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let client = Arc::new(cluster.client(0).await.unwrap());
        for i in 0..50u32 {
            let c = client.clone();
            tasks.spawn(async move { c.put(format!("k{i}").as_bytes(), b"v", &[], None).await });
        }
    }
    let (mut ok, mut overloaded) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if e.kind() == ErrorKind::Overloaded => overloaded += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    println!(
        "400 puts over 8 connections with 4 allowed in flight: {ok} served, {overloaded} refused"
    );
    assert!(overloaded > 0 && ok > 0);
    cluster.stop().await.unwrap();
}

//! The cluster-aware client (Dynamo §6.4): it routes each key to a replica
//! of it, learns a joined node without a restart, and carries on through
//! the other nodes when the one it uses is killed.

#![allow(clippy::unwrap_used)] // tests panic on purpose

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dynakv::routing::Routing;
use dynakv::{Error, ErrorKind};
use dynakv_actors::client::{Client, Options};
use dynakv_actors::membership::CurrentView;
use dynakv_actors::testkit::{Cluster, check, metric, wait_for};
use support::{ProcessCluster, Writers, check_acked, cli};

const WAIT: Duration = Duration::from_secs(30);

fn puts_served(scrape: &str) -> f64 {
    metric(
        scrape,
        r#"dynakv_requests_total{op="put",outcome="ok",namespace="default"}"#,
    )
}

fn options(cluster: &Cluster, routing: Routing) -> Options {
    Options {
        cluster: cluster.config(0).cluster.name.clone(),
        routing,
        ..Options::default()
    }
}

/// A preference-routing client seeded with node 0 that never refreshes
/// its ring on its own (only a reply saying it is stale makes it).
async fn without_refresh(cluster: &Cluster) -> Client {
    let seed = cluster.config(0).node.client_addr.clone();
    let options = Options {
        ring_refresh: Duration::from_secs(3600),
        ..options(cluster, Routing::Preference)
    };
    Client::connect_cluster(&[&seed], options).await.unwrap()
}

#[actix_rt::test]
async fn preference_routing_sends_every_key_to_its_first_replica() {
    let cluster = Cluster::start(5).await.unwrap();
    cluster.settled(WAIT).await.unwrap();
    let seed = cluster.config(2).node.client_addr.clone();
    let client = Client::connect_cluster(&[&seed], options(&cluster, Routing::Preference))
        .await
        .unwrap();

    // The ring as node 0 holds it: the client must route by the same one.
    let view = cluster.node(0).membership.send(CurrentView).await.unwrap();
    let ring = view.ring().unwrap();
    let n = usize::from(cluster.config(0).cluster.n);
    let addr_of = |i: usize| cluster.config(i).node.client_addr.clone();
    let mut expected: BTreeMap<String, f64> = (0..5).map(|i| (addr_of(i), 0.0)).collect();
    for k in 0..300u32 {
        let key = format!("routed-{k}");
        let preference = ring.preference_list(ring.partition_of(key.as_bytes()), n);
        let first = cluster.index_of(preference[0]);
        assert_eq!(
            client.route(key.as_bytes()).unwrap(),
            addr_of(first),
            "{key}"
        );
        *expected.get_mut(&addr_of(first)).unwrap() += 1.0;
    }

    let mut before = Vec::new();
    for i in 0..5 {
        before.push(puts_served(&cluster.scrape(i).await.unwrap()));
    }
    for k in 0..300u32 {
        let key = format!("routed-{k}");
        client.put(key.as_bytes(), b"v", &[], None).await.unwrap();
    }
    // Each node coordinated exactly the puts of the keys it comes first
    // for: nothing went to a node outside a key's preference list.
    for i in 0..5 {
        let served = puts_served(&cluster.scrape(i).await.unwrap()) - before[i];
        assert_eq!(served, expected[&addr_of(i)], "node {i}");
    }
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn a_joined_node_is_learned_without_a_restart() {
    let mut cluster = Cluster::start(3).await.unwrap();
    // No periodic refresh within the test: only a reply saying the ring
    // changed can teach the client.
    let client = without_refresh(&cluster).await;
    assert_eq!(client.ring().unwrap().members().count(), 3);

    let joined = cluster.add_node(|_| {}).await.unwrap();
    cluster.settled(WAIT).await.unwrap();
    let new_addr = cluster.config(joined).node.client_addr.clone();
    let attempt = AtomicUsize::new(0);
    wait_for(
        WAIT,
        "the client to route a key to the new node",
        || async {
            // Any routed request tells the client its ring is stale.
            let k = attempt.fetch_add(1, Ordering::Relaxed);
            client
                .put(format!("poke-{k}").as_bytes(), b"v", &[], None)
                .await?;
            let members = client.ring().map_or(0, |m| m.members().count());
            check(members == 4, || {
                format!("the client knows {members} members")
            })
        },
    )
    .await
    .unwrap();

    let key = (0..10_000)
        .map(|k| format!("learned-{k}"))
        .find(|k| client.route(k.as_bytes()).unwrap() == new_addr)
        .expect("the new node comes first for some keys");
    let before = puts_served(&cluster.scrape(joined).await.unwrap());
    client.put(key.as_bytes(), b"v", &[], None).await.unwrap();
    let after = puts_served(&cluster.scrape(joined).await.unwrap());
    assert_eq!(after - before, 1.0, "the put went to the new node");
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn a_request_to_a_stopped_node_goes_to_the_next_replica() {
    let mut cluster = Cluster::start(4).await.unwrap();
    cluster.settled(WAIT).await.unwrap();
    // The ring is learned while every node is up, and not again: the
    // client cannot know that node 3 stops.
    let client = without_refresh(&cluster).await;
    let stopped = cluster.config(3).node.client_addr.clone();
    let keys: Vec<String> = (0..10_000)
        .map(|k| format!("failover-{k}"))
        .filter(|k| client.route(k.as_bytes()).unwrap() == stopped)
        .take(20)
        .collect();
    cluster.stop_node(3).await.unwrap();

    // The first of these finds node 3's port closed (nothing was sent) and
    // goes to the key's next replica; the next ones try node 3 last.
    for key in &keys {
        client.put(key.as_bytes(), b"v", &[], None).await.unwrap();
    }
    for key in &keys {
        let read = client.get(key.as_bytes(), None).await.unwrap();
        assert_eq!(read.values, vec![b"v".to_vec()], "{key}");
    }
    assert_ne!(client.route(keys[0].as_bytes()).unwrap(), stopped);
    cluster.stop().await.unwrap();
}

/// A write loop through the cluster client, with `WRITERS` requests in
/// flight; node 0, the client's first seed, is SIGKILLed in the middle.
#[actix_rt::test]
async fn a_client_carries_on_through_the_others_when_its_node_is_killed() {
    const WRITERS: usize = 4;
    let mut cluster = ProcessCluster::start(3, "");
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    let client = cluster.client().await;
    assert_eq!(client.node().await.unwrap().as_str(), "node1");

    let writers = Writers::start(client.clone(), WRITERS);
    writers.acked_at_least(400, WAIT).await;
    cluster.kill(0);
    let at_kill = writers.acked();
    // Well past one refresh period and the failure detector's timeouts.
    writers.acked_at_least(at_kill + 1500, WAIT).await;
    let writes = writers.stop().await;
    let failed: Vec<(&String, &Error)> = writes
        .iter()
        .filter_map(|w| w.result.as_ref().err().map(|e| (&w.key, e)))
        .collect();
    assert!(
        failed.len() <= WRITERS,
        "only the requests in flight at the kill may fail: {failed:?}"
    );
    for (key, e) in &failed {
        assert!(
            e.is_indeterminate() || e.kind() == ErrorKind::Quorum,
            "{key} failed neither as indeterminate nor as a quorum failure: {e}"
        );
    }
    // R = 2 of the two nodes left: every acknowledged write (on 2 of 3
    // replicas, so on at least one live one) is read.
    let acked = check_acked(&client, &writes, 2).await;
    println!(
        "{} writes acknowledged ({} after the kill), {} failed at the kill",
        acked,
        acked - at_kill,
        failed.len()
    );

    // The CLI given the list, the dead node first.
    let nodes = cluster.client_addrs.join(",");
    let (ok, _, err) = cli(&["put", "from-cli", "v1", "--node", &nodes]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&["get", "from-cli", "--json", "--node", &nodes]);
    assert!(ok, "{err}");
    let read: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(read["values"], serde_json::json!(["v1"]));
    let (ok, out, err) = cli(&["status", "--json", "--node", &nodes]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_ne!(status["node"], "node1", "the first node that answers");
}

//! A namespace's own `n`: each key is on exactly the first `n` nodes of its
//! walk (checked with `inspect` on every node), and altering `n` of a live
//! namespace adds the new copies and removes the extra ones.

#![allow(clippy::unwrap_used)] // tests panic on purpose

use std::time::Duration;

use dynakv::namespace::{Changes, Request};
use dynakv_actors::client::Client;
use dynakv_actors::testkit::{Cluster, check, wait_for};

const WAIT: Duration = Duration::from_secs(60);
const KEYS: usize = 30;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("key-{i}")).collect()
}

/// How many nodes hold a copy of each key of `ns`.
async fn copies(nodes: &[Client], ns: &str) -> dynakv::Result<Vec<usize>> {
    let mut counts = Vec::new();
    for key in keys() {
        let mut count = 0;
        for node in nodes {
            let local = node.in_namespace(ns)?.inspect(key.as_bytes()).await?;
            count += usize::from(!local.siblings.is_empty());
        }
        counts.push(count);
    }
    Ok(counts)
}

/// Waits until every key of `ns` is on exactly `n` nodes.
async fn wait_copies(nodes: &[Client], ns: &str, n: usize) {
    let what = format!("every key of {ns} on exactly {n} nodes");
    wait_for(WAIT, &what, || async {
        let counts = copies(nodes, ns).await?;
        check(counts.iter().all(|&c| c == n), || {
            format!("copies per key: {counts:?}")
        })
    })
    .await
    .unwrap();
}

async fn change(client: &Client, request: Request) {
    client.change_namespace(request).await.unwrap();
}

fn with_n(n: u8) -> Changes {
    Changes {
        n: Some(n),
        ..Changes::default()
    }
}

#[actix_rt::test]
async fn each_namespace_keeps_its_own_number_of_copies_and_n_changes_live() {
    let cluster = Cluster::start_with(5, |c| {
        c.handoff.interval_ms = 200;
    })
    .await
    .unwrap();
    let mut nodes = Vec::new();
    for i in 0..cluster.len() {
        nodes.push(cluster.client(i).await.unwrap());
    }
    let client = &nodes[0];
    let pairs = Changes {
        r: Some(1),
        w: Some(1),
        ..with_n(2)
    };
    change(
        client,
        Request::Create {
            name: "pairs".into(),
            changes: pairs,
        },
    )
    .await;
    change(
        client,
        Request::Create {
            name: "all".into(),
            changes: with_n(5),
        },
    )
    .await;
    wait_for(WAIT, "every node to know both namespaces", || async {
        for node in &nodes {
            node.in_namespace("all")?.get(b"probe", None).await?;
            node.in_namespace("pairs")?.get(b"probe", None).await?;
        }
        Ok(())
    })
    .await
    .unwrap();

    for ns in ["pairs", "all", "default"] {
        let writer = client.in_namespace(ns).unwrap();
        for key in keys() {
            writer
                .put(key.as_bytes(), ns.as_bytes(), &[], None)
                .await
                .unwrap();
        }
    }
    wait_copies(&nodes, "pairs", 2).await;
    wait_copies(&nodes, "all", 5).await;
    // A request's own quorum is held to its namespace's n.
    let pairs = client.in_namespace("pairs").unwrap();
    let e = pairs.put(b"k", b"v", &[], Some(3)).await.unwrap_err();
    assert!(
        e.to_string().contains("w = 3 must be between 1 and N = 2"),
        "{e}"
    );
    let all = client.in_namespace("all").unwrap();
    all.put(b"k", b"v", &[], Some(5)).await.unwrap();
    assert_eq!(
        all.get(b"k", Some(5)).await.unwrap().values,
        [b"v".to_vec()]
    );
    wait_copies(&nodes, "default", 3).await;

    // Raising n fills the new replicas; lowering it drops the extra copies
    // once they are synchronised.
    for (ns, n) in [("pairs", 3), ("pairs", 2), ("all", 3)] {
        let alter = Request::Alter {
            name: ns.into(),
            changes: with_n(n),
        };
        change(client, alter).await;
        wait_copies(&nodes, ns, usize::from(n)).await;
    }
    cluster.settled(WAIT).await.unwrap();

    // Nothing was lost on the way, and every node reads every namespace.
    for (i, node) in nodes.iter().enumerate() {
        for ns in ["pairs", "all", "default"] {
            let reader = node.in_namespace(ns).unwrap();
            for key in keys() {
                let read = reader.get(key.as_bytes(), None).await.unwrap();
                assert_eq!(
                    read.values,
                    [ns.as_bytes().to_vec()],
                    "{ns}/{key} at node {i}"
                );
            }
        }
    }
    cluster.stop().await.unwrap();
}

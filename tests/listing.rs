//! Listing: pages of live keys from one replica per partition, every key
//! exactly once, deleted keys hidden, with a node down too.

#![allow(clippy::unwrap_used)] // tests panic on purpose

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use dynakv::namespace::{Changes, Request};
use dynakv_actors::client::{Client, Options};
use dynakv_actors::testkit::{Cluster, check, wait_for};
use support::{ProcessCluster, cli};

const WAIT: Duration = Duration::from_secs(60);

/// Every key starting with `prefix`, a page of `limit` at a time.
async fn list_all(client: &Client, prefix: &[u8], limit: u32) -> (Vec<Vec<u8>>, usize) {
    let (mut keys, mut pages, mut token) = (Vec::new(), 0, None::<Vec<u8>>);
    loop {
        let page = client.list(prefix, limit, token.as_deref()).await.unwrap();
        assert!(page.keys.len() <= limit as usize);
        keys.extend(page.keys);
        pages += 1;
        match page.next {
            Some(next) => token = Some(next),
            None => return (keys, pages),
        }
    }
}

#[actix_rt::test]
async fn ten_thousand_keys_are_listed_each_once_in_pages_of_100() {
    let mut cluster = Cluster::start(3).await.unwrap();
    let seed = cluster.config(0).node.client_addr.clone();
    let options = Options {
        cluster: cluster.config(0).cluster.name.clone(),
        ..Options::default()
    };
    let client = Client::connect_cluster(&[&seed], options).await.unwrap();

    let listed: Vec<Vec<u8>> = (0..10_000)
        .map(|i| format!("list-{i}").into_bytes())
        .collect();
    let others: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("other-{i}").into_bytes())
        .collect();
    for chunk in listed.chunks(1000).chain(others.chunks(1000)) {
        let items: Vec<(&[u8], &[u8], &[u8])> = chunk
            .iter()
            .map(|k| (k.as_slice(), &b"v"[..], &[][..]))
            .collect();
        let written = client.put_many(&items, None).await.unwrap();
        assert!(written.iter().all(Result::is_ok));
    }
    // The same names in a namespace of n = 2: listed there, not here.
    client
        .change_namespace(Request::Create {
            name: "pairs".into(),
            changes: Changes {
                n: Some(2),
                ..Changes::default()
            },
        })
        .await
        .unwrap();
    let pairs = client.in_namespace("pairs").unwrap();
    wait_for(WAIT, "every node to know the namespace", || async {
        for i in 0..3 {
            let node = cluster.client(i).await?.in_namespace("pairs")?;
            node.get(b"probe", None).await?;
        }
        Ok(())
    })
    .await
    .unwrap();
    for key in &listed[..250] {
        pairs.put(key, b"in pairs", &[], Some(2)).await.unwrap();
    }
    // 100 keys deleted: hidden from the listing.
    for key in &listed[..100] {
        let read = client.get(key, None).await.unwrap();
        client.delete(key, &read.context, None).await.unwrap();
    }
    // Every replica holds every write (N = 3 of 3 nodes) before one
    // replica per partition is read.
    wait_for(WAIT, "every node to hold every key", || async {
        for i in 0..3 {
            let keys = cluster.client(i).await?.status().await?.keys;
            check(keys >= 10_300, || format!("node {i} holds {keys}"))?;
        }
        Ok(())
    })
    .await
    .unwrap();

    let expected: BTreeSet<Vec<u8>> = listed[100..].iter().cloned().collect();
    let (keys, pages) = list_all(&client, b"list-", 100).await;
    let unique: BTreeSet<Vec<u8>> = keys.iter().cloned().collect();
    assert_eq!(unique.len(), keys.len(), "no key twice");
    assert_eq!(
        unique, expected,
        "every live key of the prefix, nothing else"
    );
    assert!(pages >= 99, "{pages} pages");
    let (in_pairs, _) = list_all(&pairs, b"list-", 100).await;
    let in_pairs: BTreeSet<Vec<u8>> = in_pairs.into_iter().collect();
    let expected: BTreeSet<Vec<u8>> = listed[..250].iter().cloned().collect();
    assert_eq!(in_pairs, expected, "the namespace's own keys, once each");

    // With a node stopped, its partitions are read from the others.
    cluster.stop_node(2).await.unwrap();
    let (keys, _) = list_all(&client, b"", 1000).await;
    let all: BTreeSet<Vec<u8>> = keys.iter().cloned().collect();
    assert_eq!(all.len(), keys.len());
    assert_eq!(all.len(), 9_900 + 300);

    let e = client.list(b"", 0, None).await.unwrap_err();
    assert!(e.to_string().contains("limit = 0"), "{e}");
    let e = client.list(b"", 10, Some(b"junk")).await.unwrap_err();
    assert!(e.to_string().contains("continuation token"), "{e}");
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn the_cli_lists_a_page_at_a_time() {
    let cluster = ProcessCluster::start(3, "");
    for i in 0..3 {
        cluster.wait_formed(i, 3, Duration::from_secs(30)).await;
    }
    let node = cluster.client_addrs[0].clone();
    for k in ["p-a", "p-b", "p-c", "q-a"] {
        let (ok, _, err) = cli(&["put", k, "v", "--w", "3", "--node", &node]);
        assert!(ok, "{err}");
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut args = vec![
            "list", "--prefix", "p-", "--limit", "2", "--json", "--node", &node,
        ];
        if let Some(token) = &after {
            args.extend(["--after", token.as_str()]);
        }
        let (ok, out, err) = cli(&args);
        assert!(ok, "{err}");
        let page: serde_json::Value = serde_json::from_str(&out).unwrap();
        for k in page["keys"].as_array().unwrap() {
            seen.push(k.as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["p-a", "p-b", "p-c"]);
    let (ok, _, err) = cli(&["list", "--after", "%%", "--node", &node]);
    assert!(!ok && err.contains("--after"), "{err}");
    // Tokens and contexts are base64url, so they may begin with '-': the
    // node judges them, not the argument parser.
    let (ok, _, err) = cli(&["list", "--after", "-w8", "--node", &node]);
    assert!(!ok && err.contains("continuation token"), "{err}");
    let (ok, _, err) = cli(&["put", "k", "v", "--context", "-w8", "--node", &node]);
    assert!(!ok && err.contains("context"), "{err}");
    let (ok, _, err) = cli(&["delete", "k", "--context", "-w8", "--node", &node]);
    assert!(!ok && err.contains("context"), "{err}");
}

//! `dynakv bench` against an in-process cluster: it runs the mix, checks
//! read-your-writes, and reports what it did.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use dynakv::crdt::Reading;
use dynakv::namespace::{Changes, Request};
use dynakv_actors::bench::{self, Op, Spec};
use dynakv_actors::testkit::{Cluster, wait_for};

/// A short run against `cluster`'s first node, in `default`, with
/// `clients` clients over `keys` keys; tests change what they need.
fn spec(cluster: &Cluster, clients: usize, keys: u64, mix: &str) -> Spec {
    Spec {
        nodes: vec![cluster.config(0).node.client_addr.clone()],
        cluster: cluster.config(0).cluster.name.clone(),
        token: None,
        tls: None,
        namespace: "default".into(),
        routing: Default::default(),
        clients,
        duration: Duration::from_millis(500),
        value_size: 64,
        random_values: false,
        keys,
        mix: mix.parse().unwrap(),
        r: None,
        w: None,
        preload: false,
        check: false,
        rate: None,
        progress: false,
    }
}

#[actix_rt::test]
async fn a_short_mixed_run_with_checks_finds_no_stale_reads() {
    let cluster = Cluster::start(3).await.unwrap();
    let nodes = (0..3)
        .map(|i| cluster.config(i).node.client_addr.clone())
        .collect();
    let spec = Spec {
        nodes,
        duration: Duration::from_millis(700),
        preload: true,
        check: true,
        ..spec(&cluster, 6, 60, "get=50,put=40,delete=10")
    };
    let report = bench::run(spec).await.unwrap();
    assert_eq!(report.preload.map(|(keys, _)| keys), Some(60));
    assert!(report.tally.errors.is_empty(), "{:?}", report.tally.errors);
    assert!(report.tally.checked > 0);
    assert_eq!(report.tally.stale, 0, "R + W > N reads every own write");

    let json = report.to_json();
    for op in ["get", "put", "delete"] {
        assert!(json["ops"][op]["ok"].as_u64().unwrap() > 0, "{op}: {json}");
        let p50 = json["ops"][op]["latency_us"]["p50"].as_u64().unwrap();
        let p99 = json["ops"][op]["latency_us"]["p99"].as_u64().unwrap();
        assert!(0 < p50 && p50 <= p99, "{op}: {json}");
    }
    assert_eq!(json["check"]["stale"], 0);
    let text = report.to_text();
    assert!(text.contains("read-your-writes"), "{text}");

    // Every key a client wrote last with a put holds exactly that value:
    // writes carried their contexts, so no siblings were made.
    let client = cluster.client(0).await.unwrap();
    for n in 0..60 {
        let read = client
            .get(format!("bench-{n}").as_bytes(), None)
            .await
            .unwrap();
        assert!(read.values.len() <= 1, "bench-{n}: {:?}", read.values);
    }
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn a_run_at_a_rate_offers_no_more_than_its_schedule() {
    let cluster = Cluster::start(3).await.unwrap();
    let spec = Spec {
        duration: Duration::from_secs(1),
        rate: Some(200),
        ..spec(&cluster, 4, 40, "get=50,put=50")
    };
    let report = bench::run(spec).await.unwrap();
    assert!(report.tally.errors.is_empty(), "{:?}", report.tally.errors);
    let ran: u64 = report.tally.ops.values().map(|s| s.ok).sum();
    // 4 clients, one request due every 20 ms each, for 1 s; a closed loop
    // on an idle in-process cluster runs thousands.
    assert!((40..=200).contains(&ran), "{ran} operations");
    assert_eq!(report.to_json()["rate"], 200);
    assert!(report.to_text().contains("offered 200 ops/s"));
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn a_run_in_a_namespace_writes_its_keys_there() {
    let cluster = Cluster::start(3).await.unwrap();
    let client = cluster.client(0).await.unwrap();
    let create = Request::Create {
        name: "carts".into(),
        changes: Changes::default(),
    };
    client.change_namespace(create).await.unwrap();
    // The bench routes to every node: each must have heard of carts.
    wait_for(
        Duration::from_secs(30),
        "every node to know carts",
        || async {
            for i in 0..cluster.len() {
                let show = Request::Show {
                    name: "carts".into(),
                };
                cluster.client(i).await?.namespaces(show).await?;
            }
            Ok(())
        },
    )
    .await
    .unwrap();
    let spec = Spec {
        namespace: "carts".into(),
        duration: Duration::from_millis(300),
        w: Some(3),
        preload: true,
        ..spec(&cluster, 2, 20, "get=50,put=50")
    };
    let report = bench::run(spec).await.unwrap();
    assert!(report.tally.errors.is_empty(), "{:?}", report.tally.errors);
    let carts = client.in_namespace("carts").unwrap();
    assert_eq!(
        carts.list(b"bench-", 100, None).await.unwrap().keys.len(),
        20
    );
    assert!(
        client
            .list(b"bench-", 100, None)
            .await
            .unwrap()
            .keys
            .is_empty()
    );
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn incr_and_sadd_run_beside_puts_in_namespaces_of_their_types() {
    let cluster = Cluster::start(3).await.unwrap();
    let spec = Spec {
        w: Some(3),
        ..spec(&cluster, 2, 4, "put=1,incr=1,sadd=1")
    };
    let report = bench::run(spec).await.unwrap();
    assert!(report.tally.errors.is_empty(), "{:?}", report.tally.errors);
    let done = |op| report.tally.ops.get(&op).map_or(0, |s| s.ok);
    assert!(done(Op::Incr) > 0 && done(Op::Sadd) > 0 && done(Op::Put) > 0);
    // Each increment and each add took effect, once (W = 3: every replica).
    let client = cluster.client(1).await.unwrap();
    let (mut counted, mut members) = (0, 0);
    for n in 0..4 {
        let key = format!("bench-{n}");
        let counters = client.in_namespace("bench-counters").unwrap();
        if let Reading::Counter(v) = counters.fetch(key.as_bytes(), None).await.unwrap().reading {
            counted += v as u64;
        }
        let sets = client.in_namespace("bench-sets").unwrap();
        members += sets.smembers(key.as_bytes(), None).await.unwrap().0.len() as u64;
    }
    assert_eq!(counted, done(Op::Incr));
    assert_eq!(members, done(Op::Sadd));
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn random_values_are_random_past_their_stamp() {
    let cluster = Cluster::start(3).await.unwrap();
    let spec = Spec {
        random_values: true,
        value_size: 1024,
        preload: true,
        ..spec(&cluster, 1, 2, "put=1")
    };
    bench::run(spec).await.unwrap();
    let client = cluster.client(0).await.unwrap();
    let mut seen = Vec::new();
    for key in [&b"bench-0"[..], b"bench-1"] {
        let read = client.get(key, None).await.unwrap();
        let [value] = &read.values[..] else {
            panic!("{read:?}")
        };
        assert_eq!(value.len(), 1024);
        // The 1,012 bytes past the stamp take most of the 256 byte values
        // (about 252 on average); 'x' alone would be one.
        let distinct: std::collections::BTreeSet<u8> = value[12..].iter().copied().collect();
        assert!(distinct.len() > 200, "{} distinct bytes", distinct.len());
        seen.push(value[12..].to_vec());
    }
    assert_ne!(seen[0], seen[1], "each value its own bytes");
    cluster.stop().await.unwrap();
}

#[test]
fn bad_specs_are_refused() {
    let good = Spec {
        nodes: vec!["127.0.0.1:1".into()],
        cluster: String::new(),
        token: None,
        tls: None,
        namespace: "default".into(),
        routing: Default::default(),
        clients: 2,
        duration: Duration::from_secs(1),
        value_size: 100,
        random_values: false,
        keys: 10,
        mix: "get=1".parse().unwrap(),
        r: None,
        w: None,
        preload: false,
        check: false,
        rate: None,
        progress: false,
    };
    assert!(good.validate().is_ok());
    for bad in [
        Spec {
            nodes: vec![],
            ..good.clone()
        },
        Spec {
            clients: 0,
            ..good.clone()
        },
        Spec {
            keys: 1,
            ..good.clone()
        },
        Spec {
            value_size: 4,
            ..good.clone()
        },
        Spec {
            duration: Duration::ZERO,
            ..good.clone()
        },
        Spec {
            rate: Some(0),
            ..good.clone()
        },
        Spec {
            namespace: "Carts!".into(),
            ..good.clone()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

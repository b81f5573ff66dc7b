//! Batches: many gets or puts in one client request, each key its own
//! quorum session with its own result.

#![allow(clippy::unwrap_used)] // tests panic on purpose

mod support;

use std::time::{Duration, Instant};

use dynakv::ErrorKind;
use dynakv_actors::client::{Client, Options};
use dynakv_actors::testkit::Cluster;
use support::{ProcessCluster, cli};

const WAIT: Duration = Duration::from_secs(30);

#[actix_rt::test]
async fn a_batch_of_500_puts_and_500_gets_gives_each_key_its_result() {
    let cluster = Cluster::start_with(3, |c| c.limits.max_batch = 600)
        .await
        .unwrap();
    let seed = cluster.config(0).node.client_addr.clone();
    let options = Options {
        cluster: cluster.config(0).cluster.name.clone(),
        ..Options::default()
    };
    let client = Client::connect_cluster(&[&seed], options).await.unwrap();

    let keys: Vec<Vec<u8>> = (0..500)
        .map(|i| format!("batch-{i}").into_bytes())
        .collect();
    let values: Vec<Vec<u8>> = (0..500)
        .map(|i| format!("value-{i}").into_bytes())
        .collect();
    let items: Vec<(&[u8], &[u8], &[u8])> = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| (k.as_slice(), v.as_slice(), &[][..]))
        .collect();
    let written = client.put_many(&items, None).await.unwrap();
    assert_eq!(written.len(), 500);
    assert!(written.iter().all(Result::is_ok), "every put acknowledged");

    let names: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let read = client.get_many(&names, None).await.unwrap();
    for (i, r) in read.iter().enumerate() {
        assert_eq!(
            r.as_ref().unwrap().values,
            vec![values[i].clone()],
            "key {i}"
        );
    }

    // One bad key fails alone; a key never written reads as not found.
    let mixed: Vec<&[u8]> = vec![b"batch-1", b"", b"never-written"];
    let read = client.get_many(&mixed, None).await.unwrap();
    assert_eq!(read[0].as_ref().unwrap().values, vec![b"value-1".to_vec()]);
    assert_eq!(
        read[1].as_ref().unwrap_err().kind(),
        ErrorKind::InvalidRequest
    );
    assert!(read[2].as_ref().unwrap().values.is_empty());

    // Over the limit: the whole batch is refused, naming it.
    let too_many: Vec<&[u8]> = (0..601).map(|i| names[i % 500]).collect();
    let e = client.get_many(&too_many, None).await.unwrap_err();
    assert!(e.to_string().contains("limits.max_batch = 600"), "{e}");

    // What a batch saves (printed, not asserted: timings belong in
    // benchmarks): 100 keys in one request against 100 requests.
    let hundred = &names[..100];
    let started = Instant::now();
    client.get_many(hundred, None).await.unwrap();
    let batched = started.elapsed();
    let started = Instant::now();
    for key in hundred {
        client.get(key, None).await.unwrap();
    }
    let single = started.elapsed();
    println!(
        "100 keys: one batch {batched:?}, 100 gets {single:?} ({:.1}x)",
        single.as_secs_f64() / batched.as_secs_f64()
    );
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn mget_prints_every_keys_result() {
    let cluster = ProcessCluster::start(3, "");
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    let nodes = cluster.client_addrs.join(",");
    for (k, v) in [("a", "1"), ("b", "2")] {
        let (ok, _, err) = cli(&["put", k, v, "--node", &nodes]);
        assert!(ok, "{err}");
    }
    let (ok, out, err) = cli(&["mget", "a", "b", "missing", "--json", "--node", &nodes]);
    assert!(ok, "{err}");
    let results: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results = results["results"].as_array().unwrap();
    assert_eq!(results[0]["values"], serde_json::json!(["1"]));
    assert_eq!(results[1]["values"], serde_json::json!(["2"]));
    assert_eq!(results[2]["values"], serde_json::json!([]));
    let (ok, out, _) = cli(&["mget", "a", "missing", "--node", &nodes]);
    assert!(ok && out == "a\t1\nmissing\t(not found)", "{out}");
}

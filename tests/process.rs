//! The real binary: three `dynakv serve` processes from config files.

#![allow(clippy::unwrap_used)] // tests panic on purpose

mod support;

use std::time::Duration;

use dynakv::config::Config;
use dynakv_actors::client::Client;
use support::ProcessCluster;

const WAIT: Duration = Duration::from_secs(30);

#[actix_rt::test]
async fn a_sigkilled_node_loses_no_acknowledged_write() {
    let mut cluster = ProcessCluster::start(3, "");
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    let writer = Client::connect(&cluster.client_addrs[0], "").await.unwrap();
    let mut acked = Vec::new();
    for i in 0..200u32 {
        let key = format!("key{i}");
        if writer
            .put(key.as_bytes(), &i.to_le_bytes(), &[], None)
            .await
            .is_ok()
        {
            acked.push((key, i));
        }
    }
    assert_eq!(
        acked.len(),
        200,
        "every write succeeds while all nodes are up"
    );

    cluster.kill(2);
    // Writes go on: W = 2 of the two nodes left.
    for i in 200..300u32 {
        let key = format!("key{i}");
        match writer
            .put(key.as_bytes(), &i.to_le_bytes(), &[], None)
            .await
        {
            Ok(_) => acked.push((key, i)),
            Err(e) => panic!("write {i} failed with one node killed: {e}"),
        }
    }

    let reader = Client::connect(&cluster.client_addrs[1], "").await.unwrap();
    for (key, i) in &acked {
        let read = reader.get(key.as_bytes(), None).await.unwrap();
        assert_eq!(read.values, vec![i.to_le_bytes().to_vec()], "{key}");
    }
}

#[test]
fn the_shipped_config_files_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for i in 1..=3 {
        let path = root.join(format!("conf/local/node{i}.toml"));
        let c = Config::load_with_env(Some(&path), Some(Default::default())).unwrap();
        assert_eq!(c.node.id, format!("node{i}"));
        assert_eq!(c.cluster.seeds.len(), 2);
    }
}

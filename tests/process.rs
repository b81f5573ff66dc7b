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

/// Runs the CLI; returns (success, stdout, stderr).
fn cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(support::binary())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[actix_rt::test]
async fn the_cli_puts_gets_inspects_and_reports() {
    let cluster = ProcessCluster::start(3, "");
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    let [a, b, c] = [0, 1, 2].map(|i| cluster.client_addrs[i].clone());

    let (ok, context, err) = cli(&["put", "greeting", "hello", "--node", &a]);
    assert!(ok && !context.is_empty(), "{err}");
    let (ok, out, err) = cli(&["get", "greeting", "--json", "--node", &b]);
    assert!(ok, "{err}");
    let read = json(&out);
    assert_eq!(read["values"], serde_json::json!(["hello"]));

    // a write with the read's context replaces the value
    let ctx = read["context"].as_str().unwrap().to_string();
    let (ok, _, err) = cli(&[
        "put",
        "greeting",
        "bonjour",
        "--context",
        &ctx,
        "--node",
        &c,
    ]);
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&["get", "greeting", "--node", &a]);
    assert!(ok);
    assert_eq!(out.lines().next(), Some("bonjour"));
    assert!(out.lines().last().unwrap().starts_with("context: "));

    let (ok, out, err) = cli(&["inspect", "greeting", "--json", "--node", &c]);
    assert!(ok, "{err}");
    let local = json(&out);
    assert_eq!(local["node"], "node3");
    assert_eq!(local["siblings"][0]["value"], "bonjour");
    assert!(local["siblings"][0]["dot"].as_str().unwrap().contains(':'));

    let (ok, out, err) = cli(&["status", "--json", "--node", &a]);
    assert!(ok, "{err}");
    let status = json(&out);
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    let (ok, out, _) = cli(&["status", "--node", &a]);
    assert!(ok && out.contains("node2") && out.contains("up"), "{out}");

    let (_, out, _) = cli(&["get", "greeting", "--json", "--node", &a]);
    let ctx = json(&out)["context"].as_str().unwrap().to_string();
    let (ok, _, err) = cli(&["delete", "greeting", "--context", &ctx, "--node", &b]);
    assert!(ok, "{err}");
    let (_, out, _) = cli(&["get", "greeting", "--json", "--node", &c]);
    assert_eq!(json(&out)["values"], serde_json::json!([]));

    // failures: non-zero exit and one line on stderr
    for args in [
        vec!["get", "greeting", "--r", "9", "--node", a.as_str()],
        vec![
            "put",
            "k",
            "v",
            "--context",
            "not base64!",
            "--node",
            a.as_str(),
        ],
        vec!["get", "k", "--node", "127.0.0.1:1"],
    ] {
        let (ok, _, err) = cli(&args);
        assert!(!ok, "{args:?} should fail");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
}

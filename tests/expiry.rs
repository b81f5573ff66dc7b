//! Expiry: a value written in a namespace with a TTL reads as not found
//! once the TTL has passed, the value it superseded never comes back (not
//! even from a replica that missed the expiring write), and the expired key
//! is collected everywhere. Real `dynakv serve` processes.

#![allow(clippy::unwrap_used)] // tests panic on purpose

mod support;

use std::time::{Duration, Instant};

use dynakv::Error;
use dynakv::namespace::{Changes, Request};
use dynakv_actors::testkit::{Cluster, check, wait_for};
use serde_json::Value as Json;
use support::{ProcessCluster, cli};

const WAIT: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(2);

/// Runs the CLI and parses its JSON output.
fn json(args: &[&str]) -> Result<Json, Error> {
    let (ok, out, err) = cli(args);
    check(ok, || err)?;
    serde_json::from_str(&out).map_err(|e| Error::Malformed(format!("{e}: {out}")))
}

#[actix_rt::test]
async fn an_expired_value_reads_as_not_found_and_brings_nothing_older_back() {
    // Collection waits 10 s past the deadline (two acknowledgements that
    // far apart), so the first reads after it find the value still stored
    // and must hide it themselves.
    let extra = "[anti_entropy]\ngc_interval_ms = 300\ngc_grace_ms = 10000\nkeep_deleted_ms = 0\n";
    let mut cluster = ProcessCluster::start(3, extra);
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    let nodes: Vec<String> = cluster.client_addrs.clone();
    let [a, b, c] = [&nodes[0], &nodes[1], &nodes[2]];
    let (ok, _, err) = cli(&["ns", "create", "sessions", "--node", a]);
    assert!(ok, "{err}");
    // "old", on every replica, without a TTL.
    wait_for(WAIT, "every node to know sessions", || async {
        for node in &nodes {
            json(&["ns", "show", "sessions", "--json", "--node", node])?;
        }
        Ok(())
    })
    .await
    .unwrap();
    let (ok, old_context, err) = cli(&[
        "put", "--ns", "sessions", "k", "old", "--w", "3", "--node", a,
    ]);
    assert!(ok, "{err}");

    // Now a TTL, known everywhere; node 3 goes down holding "old".
    let (ok, _, err) = cli(&["ns", "alter", "sessions", "--ttl", "2s", "--node", b]);
    assert!(ok, "{err}");
    wait_for(WAIT, "every node to know the TTL", || async {
        for node in &nodes {
            let shown = json(&["ns", "show", "sessions", "--json", "--node", node])?;
            check(shown["ttl_ms"] == 2000, || format!("{node}: {shown}"))?;
        }
        Ok(())
    })
    .await
    .unwrap();
    assert!(cluster.terminate(2).success());

    // "new" supersedes "old" and expires 2 s after it was written; "kept"
    // has a TTL of its own: none.
    let (ok, _, err) = cli(&[
        "put", "--ns", "sessions", "kept", "v", "--ttl", "0", "--w", "2", "--node", a,
    ]);
    assert!(ok, "{err}");
    let written = Instant::now();
    let (ok, _, err) = cli(&[
        "put",
        "--ns",
        "sessions",
        "k",
        "new",
        "--context",
        &old_context,
        "--w",
        "2",
        "--node",
        a,
    ]);
    assert!(ok, "{err}");
    let read = json(&["get", "--ns", "sessions", "k", "--json", "--node", b]).unwrap();
    if written.elapsed() < TTL {
        assert_eq!(read["values"], serde_json::json!(["new"]), "{read}");
    }

    // Node 3 is back with "old"; once "new" has expired, a read of all
    // three replicas finds nothing, and no node ever reads "old".
    cluster.start_again(2);
    cluster.wait_formed(2, 3, WAIT).await;
    wait_for(WAIT, "\"new\" to expire", || async {
        let read = json(&[
            "get", "--ns", "sessions", "k", "--r", "3", "--json", "--node", c,
        ])?;
        assert!(!read.to_string().contains("old"), "{read}");
        check(read["values"] == serde_json::json!([]), || read.to_string())
    })
    .await
    .unwrap();
    assert!(written.elapsed() >= TTL, "not found before the deadline");
    let local = json(&["inspect", "--ns", "sessions", "k", "--json", "--node", a]).unwrap();
    assert_eq!(
        local["siblings"][0]["value"], "new",
        "the read hid a value still stored: {local}"
    );
    for node in &nodes {
        let read = json(&[
            "get", "--ns", "sessions", "k", "--r", "3", "--json", "--node", node,
        ])
        .unwrap();
        assert_eq!(read["values"], serde_json::json!([]), "{node}: {read}");
        let listed = json(&["list", "--ns", "sessions", "--json", "--node", node]).unwrap();
        let keys = listed["keys"].as_array().unwrap();
        assert!(!keys.contains(&serde_json::json!("k")), "{node}: {listed}");
    }

    let read = json(&["get", "--ns", "sessions", "kept", "--json", "--node", b]).unwrap();
    assert_eq!(read["values"], serde_json::json!(["v"]), "{read}");

    // Collected like a tombstone: no node keeps a copy.
    wait_for(
        WAIT,
        "the expired key to be collected everywhere",
        || async {
            for node in &nodes {
                let local = json(&["inspect", "--ns", "sessions", "k", "--json", "--node", node])?;
                check(local["siblings"] == serde_json::json!([]), || {
                    format!("{node}: {local}")
                })?;
            }
            Ok(())
        },
    )
    .await
    .unwrap();
    let read = json(&[
        "get", "--ns", "sessions", "k", "--r", "3", "--json", "--node", a,
    ])
    .unwrap();
    assert_eq!(read["values"], serde_json::json!([]), "{read}");
}

#[actix_rt::test]
async fn a_write_takes_its_own_ttl_over_its_namespaces() {
    let cluster = Cluster::start(3).await.unwrap();
    let client = cluster.client(0).await.unwrap();
    let hour = Changes {
        ttl_ms: Some(3_600_000),
        ..Changes::default()
    };
    let create = Request::Create {
        name: "sessions".into(),
        changes: hour,
    };
    client.change_namespace(create).await.unwrap();
    let sessions = client.in_namespace("sessions").unwrap();
    let short = Duration::from_millis(300);
    sessions
        .put_with_ttl(b"short", b"v", &[], Some(3), short)
        .await
        .unwrap();
    client
        .put_with_ttl(b"short", b"v", &[], Some(3), short)
        .await
        .unwrap();
    sessions
        .put_with_ttl(b"never", b"v", &[], Some(3), Duration::ZERO)
        .await
        .unwrap();
    sessions.put(b"hour", b"v", &[], Some(3)).await.unwrap();
    wait_for(WAIT, "both short values to expire", || async {
        let gone = sessions.get(b"short", None).await?.values.is_empty()
            && client.get(b"short", None).await?.values.is_empty();
        check(gone, || "still readable".to_string())
    })
    .await
    .unwrap();
    for key in [&b"never"[..], b"hour"] {
        let read = sessions.get(key, Some(3)).await.unwrap();
        assert_eq!(read.values, [b"v".to_vec()], "{key:?}");
    }
    // The expired value's context still supersedes it.
    let expired = sessions.get(b"short", Some(3)).await.unwrap();
    sessions
        .put(b"short", b"again", &expired.context, Some(3))
        .await
        .unwrap();
    let local = sessions.inspect(b"short").await.unwrap();
    assert_eq!(local.siblings.len(), 1, "{local:?}");
    cluster.stop().await.unwrap();
}

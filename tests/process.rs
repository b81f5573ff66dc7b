//! The real binary: three `dynakv serve` processes from config files.

#![allow(clippy::unwrap_used)] // tests panic on purpose

mod support;

use std::time::Duration;

use dynakv::Error;
use dynakv::config::Config;
use dynakv_actors::client::Client;
use dynakv_actors::testkit::{check, wait_for};
use support::{ProcessCluster, cli};

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

    // a reader that went away (`dynakv status | head -1`): a quiet exit
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(support::binary())
        .args(["status", "--node", &a])
        .stdout(writer)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.is_empty(),
        "{:?}: {err}",
        out.status
    );

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

/// A base port for `dynakv dev` whose client (P..P+2), peer (P+100..) and
/// metrics (P+200..) ports are all free: below `free_port`'s range (20000
/// and up), so the other tests of this binary never take them.
fn dev_base_port() -> u16 {
    let first = std::process::id() as u16 % 36;
    (0..36)
        .map(|k| 10_000 + (first + k) % 36 * 250)
        .find(|base| {
            [0, 100, 200]
                .iter()
                .flat_map(|off| (0..3).map(move |i| base + off + i))
                .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        })
        .expect("no free block of ports for dynakv dev")
}

/// `dynakv dev`, the README's quick start: ready means every member is up;
/// its banner meeting a reader that went away (`dynakv dev | head -1`) does
/// not stop it; it serves; SIGTERM stops it with status 0.
#[actix_rt::test]
async fn dynakv_dev_is_up_when_ready_outlives_a_closed_stdout_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let base = dev_base_port();
    let log = dir.path().join("dev.log");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = std::process::Command::new(support::binary())
        .args(["dev", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(writer)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let text = wait_for(WAIT, "dynakv dev to be ready", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let ready = if text.contains("local cluster ready") {
            Ok(text)
        } else if let Some(status) = child.try_wait().unwrap() {
            panic!("dynakv dev exited ({status}) before it was ready:\n{text}");
        } else {
            Err(Error::Unavailable(format!("not ready yet:\n{text}")))
        };
        async move { ready }
    })
    .await
    .unwrap();
    assert!(text.contains("cannot write to stdout"), "{text}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited after its banner:\n{text}"
    );

    let node = |i: u16| format!("127.0.0.1:{}", base + i);
    let (ok, out, err) = cli(&["status", "--json", "--node", &node(0)]);
    assert!(ok, "{err}");
    let states: Vec<_> = json(&out)["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].clone())
        .collect();
    assert_eq!(states, vec![serde_json::json!("up"); 3], "{out}");
    let (ok, _, err) = cli(&["put", "hello", "world", "--node", &node(0)]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&["get", "hello", "--node", &node(2)]);
    assert!(ok && out.lines().next() == Some("world"), "{out} {err}");

    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{status}:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// The ring five processes found from their seed lists: founding is a
/// deterministic function of the members, so the test can compute it too.
fn founded_ring(nodes: usize) -> dynakv::ring::Ring {
    use dynakv::ownership::{Capacity, Ownership};
    let members: Vec<Capacity> = (1..=nodes)
        .map(|i| Capacity::new(dynakv::NodeId::new(format!("node{i}")).unwrap(), 1))
        .collect();
    dynakv::ring::Ring::new(&Ownership::found(1024, &members, 3).unwrap())
}

#[actix_rt::test]
async fn killing_two_owners_under_load_loses_no_acknowledged_write() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let mut cluster = ProcessCluster::start(5, "");
    for i in 0..5 {
        cluster.wait_formed(i, 5, WAIT).await;
    }
    // Keys owned by node2 and node3 (and one more node).
    let ring = founded_ring(5);
    let (n2, n3) = (
        dynakv::NodeId::new("node2").unwrap(),
        dynakv::NodeId::new("node3").unwrap(),
    );
    let owned = move |k: &str| {
        let pl = ring.preference_list(ring.partition_of(k.as_bytes()), 3);
        pl.contains(&&n2) && pl.contains(&&n3)
    };

    // A writer through node1 runs for the whole test.
    let writer = Client::connect(&cluster.client_addrs[0], "").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let attempted = Arc::new(AtomicUsize::new(0));
    let task = {
        let (stop, attempted) = (stop.clone(), attempted.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let keys = (0..).map(|i| format!("k{i}")).filter(|k| owned(k));
            for key in keys {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                attempted.fetch_add(1, Ordering::Relaxed);
                let value = format!("value-of-{key}");
                if writer
                    .put(key.as_bytes(), value.as_bytes(), &[], None)
                    .await
                    .is_ok()
                {
                    acked.push((key, value));
                }
            }
            acked
        })
    };
    // Waits until the writer has attempted `n` more writes.
    let progress = |n: usize| {
        let attempted = attempted.clone();
        async move {
            let target = attempted.load(Ordering::Relaxed) + n;
            wait_for(WAIT, "the writer to make progress", || {
                let done = attempted.load(Ordering::Relaxed);
                async move { check(done >= target, || format!("it stalled at {done} writes")) }
            })
            .await
            .unwrap();
        }
    };

    progress(200).await;
    cluster.kill(1);
    cluster.kill(2);
    progress(400).await;
    cluster.restart(1);
    cluster.restart(2);
    cluster.wait_formed(1, 5, WAIT).await;
    cluster.wait_formed(2, 5, WAIT).await;
    progress(200).await;
    stop.store(true, Ordering::Relaxed);
    let acked = task.await.unwrap();
    let tried = attempted.load(Ordering::Relaxed);
    println!(
        "write availability while two of three owners were killed and restarted: {}/{} = {:.4}",
        acked.len(),
        tried,
        acked.len() as f64 / tried as f64
    );

    // Every acknowledged write reaches all three owners' local copies.
    let ring = founded_ring(5);
    let start = std::time::Instant::now();
    for i in 0..5 {
        let id = dynakv::NodeId::new(format!("node{}", i + 1)).unwrap();
        let client = Client::connect(&cluster.client_addrs[i], "").await.unwrap();
        for (key, value) in &acked {
            if !ring
                .preference_list(ring.partition_of(key.as_bytes()), 3)
                .contains(&&id)
            {
                continue;
            }
            let left = (WAIT * 2).saturating_sub(start.elapsed());
            wait_for(left, &format!("{key} to reach {id}"), || async {
                let local = client.inspect(key.as_bytes()).await.unwrap();
                check(
                    local
                        .siblings
                        .iter()
                        .any(|(_, _, v)| v.as_deref() == Some(value.as_bytes())),
                    || format!("{id} holds {:?}", local.siblings),
                )
            })
            .await
            .unwrap_or_else(|e| panic!("{e}; its log:\n{}", cluster.log_tail(i)));
        }
    }
    println!(
        "every acknowledged write on all three owners {:?} after the writer stopped",
        start.elapsed()
    );
}

#[actix_rt::test]
async fn a_sigkilled_node_removed_from_the_ring_loses_no_acknowledged_write() {
    let mut cluster = ProcessCluster::start(
        5,
        "[handoff]\ninterval_ms = 100\n\n[anti_entropy]\ninterval_ms = 20\n",
    );
    for i in 0..5 {
        cluster.wait_formed(i, 5, WAIT).await;
    }
    let writer = Client::connect(&cluster.client_addrs[0], "").await.unwrap();
    let mut acked = Vec::new();
    for i in 0..600u32 {
        let key = format!("k{i}");
        if writer
            .put(key.as_bytes(), &i.to_le_bytes(), &[], None)
            .await
            .is_ok()
        {
            acked.push((key, i));
        }
    }
    cluster.kill(2);
    let (ok, out, err) = cli(&[
        "cluster",
        "remove",
        "--node",
        "node3",
        "--via",
        &cluster.client_addrs[0],
    ]);
    assert!(ok && out.contains("removed"), "{out} {err}");

    // Settled: every live node sees node3 removed and owning nothing, and
    // has nothing left to receive.
    wait_for(WAIT, "the cluster to settle after the remove", || async {
        let mut settled = true;
        for i in [0, 1, 3, 4] {
            let status = Client::connect(&cluster.client_addrs[i], "")
                .await
                .unwrap()
                .status()
                .await
                .unwrap();
            let node3 = status
                .members
                .iter()
                .find(|m| m.node.as_str() == "node3")
                .unwrap();
            settled &= node3.state == "removed" && node3.owned == 0;
            settled &= status
                .members
                .iter()
                .filter(|m| m.state != "removed")
                .all(|m| m.state == "up");
            settled &= !status
                .notes
                .iter()
                .any(|n| n.contains("to receive") || n.contains("receiving"));
        }
        check(settled, || "not yet".into())
    })
    .await
    .unwrap();
    for i in [0, 1, 3, 4] {
        let reader = Client::connect(&cluster.client_addrs[i], "").await.unwrap();
        for (key, v) in &acked {
            let read = reader.get(key.as_bytes(), None).await.unwrap();
            assert!(
                read.values.contains(&v.to_le_bytes().to_vec()),
                "{key} lost (read via node{})",
                i + 1
            );
        }
    }
}

/// Writes `count` keys through node `via`, returning those acknowledged.
async fn write_keys(
    cluster: &ProcessCluster,
    via: usize,
    prefix: &str,
    count: u32,
) -> Vec<(String, u32)> {
    let client = Client::connect(&cluster.client_addrs[via], "")
        .await
        .unwrap();
    let mut acked = Vec::new();
    for i in 0..count {
        let key = format!("{prefix}{i}");
        if client
            .put(key.as_bytes(), &i.to_le_bytes(), &[], None)
            .await
            .is_ok()
        {
            acked.push((key, i));
        }
    }
    acked
}

async fn assert_all_present(cluster: &ProcessCluster, via: usize, acked: &[(String, u32)]) {
    let client = Client::connect(&cluster.client_addrs[via], "")
        .await
        .unwrap();
    for (key, i) in acked {
        let read = client.get(key.as_bytes(), None).await.unwrap();
        assert!(
            read.values.contains(&i.to_le_bytes().to_vec()),
            "{key} lost"
        );
    }
}

#[actix_rt::test]
async fn sigterm_drains_flushes_and_exits_zero_and_a_restart_has_every_write() {
    let mut cluster = ProcessCluster::start(3, "");
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    let acked = write_keys(&cluster, 0, "k", 300).await;
    assert_eq!(acked.len(), 300);
    for i in 0..3 {
        let status = cluster.terminate(i);
        assert!(status.success(), "node{} exited with {status}", i + 1);
        assert!(
            cluster.log_tail(i).contains("node stopped"),
            "node{} did not stop gracefully:\n{}",
            i + 1,
            cluster.log_tail(i)
        );
    }
    for i in 0..3 {
        cluster.start_again(i);
    }
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    assert_all_present(&cluster, 1, &acked).await;
}

#[actix_rt::test]
async fn with_fsync_always_every_acknowledged_write_survives_sigkill_of_every_node() {
    let mut cluster = ProcessCluster::start(3, "[storage]\nfsync = \"always\"\n");
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    let acked = write_keys(&cluster, 2, "durable", 300).await;
    assert_eq!(acked.len(), 300);
    for i in 0..3 {
        cluster.kill(i);
    }
    for i in 0..3 {
        cluster.start_again(i);
    }
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    assert_all_present(&cluster, 0, &acked).await;
}

/// How many start-up scans node `i`'s log says were finished.
fn scans_done(cluster: &ProcessCluster, i: usize) -> usize {
    cluster.log(i).matches("storage scanned").count()
}

/// A node SIGKILLed in the middle of its start-up scan, twice, then let
/// run: nothing of a scan is on disk, so the last start scans everything
/// again; its hash trees and key count cover every key, and anti-entropy,
/// which waits for the scan, brings it the writes it missed while down.
/// The scan is paced (`storage.scan_keys_per_sec`) so that the kills land
/// in it; the test checks that they did.
#[actix_rt::test]
async fn a_node_killed_during_its_start_up_scan_scans_again_and_misses_nothing() {
    const KEYS: usize = 20_000;
    const MISSED: usize = 300;
    let mut cluster = ProcessCluster::start_sized(
        3,
        64,
        "[storage]\nscan_keys_per_sec = 3000\n[anti_entropy]\ninterval_ms = 20\n\
         [hints]\ndeliver = false\n",
    );
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    let client = Client::connect(&cluster.client_addrs[0], "").await.unwrap();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("scan{i}")).collect();
    for chunk in keys.chunks(1000) {
        let items: Vec<(&[u8], &[u8], &[u8])> = chunk
            .iter()
            .map(|k| (k.as_bytes(), b"first".as_slice(), [].as_slice()))
            .collect();
        for written in client.put_many(&items, None).await.unwrap() {
            written.unwrap();
        }
    }

    // Node 3 misses writes of new keys and overwrites of old ones. Hints
    // are kept, not delivered, and no read repairs node 3: only
    // anti-entropy can bring them.
    cluster.kill(2);
    let mut missed = Vec::new();
    for (i, old) in keys.iter().take(MISSED).enumerate() {
        let (key, value) = match i % 2 {
            0 => (format!("missed{i}"), b"new".to_vec()),
            _ => (old.clone(), b"second".to_vec()),
        };
        let context = client.get(key.as_bytes(), None).await.unwrap().context;
        client
            .put(key.as_bytes(), &value, &context, None)
            .await
            .unwrap();
        missed.push((key, value));
    }

    let scanned = scans_done(&cluster, 2);
    for _ in 0..2 {
        cluster.start_again(2);
        wait_for(WAIT, "node3 to serve", || async {
            Client::connect(&cluster.client_addrs[2], "")
                .await?
                .status()
                .await?;
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(
            scans_done(&cluster, 2),
            scanned,
            "the kill is meant to land in the scan, which ended first"
        );
        cluster.kill(2);
    }

    cluster.start_again(2);
    wait_for(
        Duration::from_secs(60),
        "node3's copies of what it missed",
        || async {
            let node3 = Client::connect(&cluster.client_addrs[2], "").await?;
            for (key, value) in &missed {
                let local = node3.inspect(key.as_bytes()).await?;
                let values: Vec<_> = local.siblings.iter().filter_map(|s| s.2.clone()).collect();
                check(values == vec![value.clone()], || {
                    format!("{key} holds {values:?}")
                })?;
            }
            Ok(())
        },
    )
    .await
    .unwrap();
    assert_eq!(
        scans_done(&cluster, 2),
        scanned + 1,
        "{}",
        cluster.log_tail(2)
    );
    let total = (KEYS + MISSED / 2) as u64;
    wait_for(WAIT, "node3 to count every key", || async {
        let keys = Client::connect(&cluster.client_addrs[2], "")
            .await?
            .status()
            .await?
            .keys;
        check(keys == total, || {
            format!("node3 counts {keys} keys of {total}")
        })
    })
    .await
    .unwrap();
}

/// A node that stops answering (SIGSTOP: its sockets still accept) fails a
/// CLI command within the command's timeout instead of hanging it.
#[actix_rt::test]
async fn a_stopped_node_fails_a_cli_command_within_its_timeout() {
    let cluster = ProcessCluster::start(3, "");
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    let node = cluster.client_addrs[0].clone();
    let (ok, _, err) = cli(&["put", "k", "v", "--node", &node]);
    assert!(ok, "{err}");
    cluster.signal(0, "STOP");
    let started = std::time::Instant::now();
    let (ok, _, err) = cli(&["get", "k", "--timeout", "1s", "--node", &node]);
    let took = started.elapsed();
    cluster.signal(0, "CONT");
    assert!(!ok, "a stopped node answered");
    assert!(err.contains("did not answer"), "{err}");
    // The bound only catches a hang (without a timeout it never returns).
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let (ok, out, err) = cli(&["get", "k", "--node", &node]);
    assert!(ok && out.starts_with('v'), "{out} {err}");
}

/// Idle connections cannot lock clients out: past the connection limit a
/// client is told why, and once the idle ones are closed new clients are
/// served.
#[actix_rt::test]
async fn idle_connections_past_the_limit_are_closed_and_new_clients_served() {
    use std::io::Read;
    let extra = "[limits]\nmax_connections = 8\nclient_idle_ms = 1000\n";
    let cluster = ProcessCluster::start(3, extra);
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    let node = cluster.client_addrs[0].clone();
    // Let the connections used to wait for the cluster go idle first.
    let refused = dynakv_actors::testkit::wait_for(WAIT, "every slot to be held", || async {
        let idle: Vec<std::net::TcpStream> = (0..8)
            .map(|_| std::net::TcpStream::connect(&node).unwrap())
            .collect();
        let (ok, _, err) = cli(&["get", "k", "--node", &node]);
        match (ok, err.contains("too many client connections")) {
            (false, true) => Ok((idle, err)),
            _ => Err(dynakv::Error::Unavailable(err)),
        }
    })
    .await;
    let (mut idle, err) = refused.unwrap();
    assert!(err.contains("limits.max_connections"), "{err}");
    // The idle connections are closed by the node...
    for socket in &mut idle {
        socket.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(socket.read(&mut buf).unwrap(), 0, "closed by the node");
    }
    // ...and new clients are served.
    let (ok, out, err) = cli(&["get", "k", "--node", &node]);
    assert!(ok && out.contains("not found"), "{out} {err}");
}

/// Values too large for an argument list come from a file or stdin.
#[actix_rt::test]
async fn a_value_comes_from_a_file_or_standard_input() {
    use std::io::Write;
    let cluster = ProcessCluster::start(3, "");
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    let node = cluster.client_addrs[0].clone();
    let big: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let file = cluster.data_dir().join("value.bin");
    std::fs::write(&file, &big).unwrap();
    let (ok, _, err) = cli(&[
        "put",
        "big",
        "--value-file",
        file.to_str().unwrap(),
        "--node",
        &node,
    ]);
    assert!(ok, "{err}");
    let client = Client::connect(&node, "").await.unwrap();
    assert_eq!(
        client.get(b"big", None).await.unwrap().values,
        vec![big.clone()]
    );

    let mut put = std::process::Command::new(support::binary())
        .args(["put", "piped", "-", "--node", &node])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    put.stdin
        .take()
        .unwrap()
        .write_all(&big[..200_000])
        .unwrap();
    let out = put.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        client.get(b"piped", None).await.unwrap().values,
        vec![big[..200_000].to_vec()]
    );

    for args in [
        vec![
            "put",
            "k",
            "v",
            "--value-file",
            "x",
            "--node",
            node.as_str(),
        ],
        vec![
            "put",
            "k",
            "--value-file",
            "/nonexistent/file",
            "--node",
            node.as_str(),
        ],
        vec!["put", "k", "--node", node.as_str()],
    ] {
        let (ok, _, err) = cli(&args);
        assert!(!ok && !err.is_empty(), "{args:?} should fail: {err}");
    }
}

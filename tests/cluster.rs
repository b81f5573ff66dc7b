//! A working cluster, in one process: gets, puts and deletes through every
//! node, siblings and their resolution, read repair, quorums under
//! partitions, restarts, and malformed frames on both ports.

#![allow(clippy::unwrap_used)] // tests panic on purpose

use std::time::Duration;

use dynakv::protocol::Versions;
use dynakv::replica::ReplicaMsg;
use dynakv::version::{Context, Value};
use dynakv::wire::{ClientOp, ClientReply, ClientRequest, ClientResponse, FrameCodec};
use dynakv::{Error, ErrorKind};
use dynakv_actors::events::Event;
use dynakv_actors::replica::{ReadLocal, ReplicaRequest};
use dynakv_actors::testkit::{Cluster, wait_for, wait_for_event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);

#[actix_rt::test]
async fn get_put_delete_through_every_node() {
    let cluster = Cluster::start(3).await.unwrap();
    for i in 0..3 {
        let c = cluster.client(i).await.unwrap();
        let key = format!("key-{i}");
        c.put(key.as_bytes(), b"v1", &[], None).await.unwrap();
        // read it back through every node
        for j in 0..3 {
            let read = cluster
                .client(j)
                .await
                .unwrap()
                .get(key.as_bytes(), None)
                .await
                .unwrap();
            assert_eq!(
                read.values,
                vec![b"v1".to_vec()],
                "written via {i}, read via {j}"
            );
        }
        let read = c.get(key.as_bytes(), None).await.unwrap();
        let written = c
            .put(key.as_bytes(), b"v2", &read.context, None)
            .await
            .unwrap();
        assert!(written.others.is_empty());
        let read = c.get(key.as_bytes(), None).await.unwrap();
        assert_eq!(read.values, vec![b"v2".to_vec()]);
        c.delete(key.as_bytes(), &read.context, None).await.unwrap();
        let gone = cluster
            .client((i + 1) % 3)
            .await
            .unwrap()
            .get(key.as_bytes(), None)
            .await
            .unwrap();
        assert!(gone.values.is_empty(), "a deleted key reads as not found");
        assert!(
            !gone.context.is_empty(),
            "with a context to write after the delete"
        );
    }
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn concurrent_writers_make_siblings_that_a_context_resolves() {
    let cluster = Cluster::start(3).await.unwrap();
    let (a, b) = (
        cluster.client(0).await.unwrap(),
        cluster.client(1).await.unwrap(),
    );
    let (x, y) = tokio::join!(
        a.put(b"cart", b"apples", &[], None),
        b.put(b"cart", b"pears", &[], None)
    );
    x.unwrap();
    y.unwrap();
    let read = cluster
        .client(2)
        .await
        .unwrap()
        .get(b"cart", Some(3))
        .await
        .unwrap();
    let mut values = read.values.clone();
    values.sort();
    assert_eq!(values, vec![b"apples".to_vec(), b"pears".to_vec()]);
    // the client merges and writes back with the context it read
    a.put(b"cart", b"apples+pears", &read.context, None)
        .await
        .unwrap();
    let read = b.get(b"cart", Some(3)).await.unwrap();
    assert_eq!(read.values, vec![b"apples+pears".to_vec()]);
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn read_repair_heals_a_replica_written_behind_the_clusters_back() {
    // Anti-entropy off: an exchange could repair a stale replica before
    // the read does (it did once, in the full suite).
    let cluster = Cluster::start_with(3, |c| c.anti_entropy.enabled = false)
        .await
        .unwrap();
    let client = cluster.client(0).await.unwrap();
    client.put(b"k", b"old", &[], None).await.unwrap();
    let old = client.get(b"k", Some(3)).await.unwrap();
    wait_for(WAIT, "every replica to hold the first write", || async {
        for n in cluster.running() {
            let local = n.replica.send(ReadLocal(b"k".to_vec())).await.unwrap()?;
            if local.values().count() != 1 {
                return Err(Error::Unavailable(format!("{} lags", n.id)));
            }
        }
        Ok(())
    })
    .await
    .unwrap();

    // A newer version reaches node 2's replica only, through its mailbox.
    let ctx = Context::from_bytes(&old.context).unwrap();
    let newer = cluster
        .node(2)
        .replica
        .send(ReplicaRequest(ReplicaMsg::Update {
            key: b"k".to_vec(),
            context: ctx,
            value: Value::Data(b"new".to_vec()),
            hint_for: None,
        }))
        .await
        .unwrap()
        .unwrap();
    let ReplicaMsg::Updated { state, .. } = newer else {
        panic!("{newer:?}")
    };
    let stale = cluster
        .node(0)
        .replica
        .send(ReadLocal(b"k".to_vec()))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(stale, state, "node 0 has not seen the direct write");

    let mut events = cluster.node(1).events.subscribe();
    let read = cluster
        .client(1)
        .await
        .unwrap()
        .get(b"k", Some(3))
        .await
        .unwrap();
    assert_eq!(
        read.values,
        vec![b"new".to_vec()],
        "the merged read sees the newer version"
    );
    let repaired = wait_for_event(&mut events, WAIT, "a read repair of k", |e| match e {
        Event::ReadRepair { key, replicas, .. } if key == b"k" => Some(*replicas),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(repaired, 2, "the two stale replicas are repaired");
    wait_for(WAIT, "read repair to reach every replica", || async {
        for n in cluster.running() {
            let local = n.replica.send(ReadLocal(b"k".to_vec())).await.unwrap()?;
            if local != state {
                return Err(Error::Unavailable(format!("{} not repaired", n.id)));
            }
        }
        Ok(())
    })
    .await
    .unwrap();
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn quorums_hold_with_one_replica_away_and_fail_clearly_with_two() {
    let cluster = Cluster::start(3).await.unwrap();
    let client = cluster.client(0).await.unwrap();

    cluster.partition(&[2]).await;
    client.put(b"k", b"v", &[], None).await.unwrap();
    let read = client.get(b"k", None).await.unwrap();
    assert_eq!(read.values, vec![b"v".to_vec()]);

    cluster.partition(&[1, 2]).await;
    let e = client.put(b"k2", b"v", &[], None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Quorum, "{e}");
    assert!(e.to_string().contains("1 of 2"), "{e}");
    assert!(e.is_retryable());
    let e = client.get(b"k", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Quorum, "{e}");

    cluster.heal().await;
    wait_for(WAIT, "writes to succeed again after healing", || async {
        client.put(b"k3", b"v", &[], None).await.map(|_| ())
    })
    .await
    .unwrap();
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn data_survives_a_full_cluster_restart() {
    let mut cluster = Cluster::start(3).await.unwrap();
    let client = cluster.client(1).await.unwrap();
    for i in 0..50u32 {
        client
            .put(format!("key{i}").as_bytes(), &i.to_le_bytes(), &[], None)
            .await
            .unwrap();
    }
    drop(client);
    for i in 0..3 {
        cluster.stop_node(i).await.unwrap();
    }
    for i in 0..3 {
        cluster.restart_node(i).await.unwrap();
    }
    let client = wait_for(WAIT, "a client to connect after the restart", || {
        cluster.client(2)
    })
    .await
    .unwrap();
    for i in 0..50u32 {
        let read = wait_for(WAIT, "reads after the restart", || async {
            client.get(format!("key{i}").as_bytes(), None).await
        })
        .await
        .unwrap();
        assert_eq!(read.values, vec![i.to_le_bytes().to_vec()], "key{i}");
    }
    cluster.stop().await.unwrap();
}

/// Sends raw bytes to `addr` and returns what comes back until the peer
/// closes the connection (or a deadline passes).
async fn exchange(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the node closes the connection");
    out
}

fn client_frame(op: ClientOp) -> Vec<u8> {
    FrameCodec::default()
        .to_frame(&ClientRequest { id: 9, op })
        .unwrap()
}

fn first_error(reply: &[u8]) -> (ErrorKind, String) {
    let (resp, _): (ClientResponse, _) = FrameCodec::default()
        .decode(reply)
        .unwrap()
        .expect("a whole reply");
    match resp.reply {
        ClientReply::Error { kind, message } => (kind, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[actix_rt::test]
async fn malformed_frames_get_an_error_and_hurt_nobody_else() {
    let cluster = Cluster::start(3).await.unwrap();
    let client_addr = cluster.config(0).node.client_addr.clone();
    let peer_addr = cluster.config(0).node.peer_addr.clone();
    let bystander = cluster.client(0).await.unwrap();
    bystander.put(b"k", b"v", &[], None).await.unwrap();

    let hello = client_frame(ClientOp::Hello {
        cluster: String::new(),
        token: None,
        versions: Some(Versions::this_build()),
    });
    // bad CRC after a good hello
    let mut bad_crc = client_frame(ClientOp::Status);
    *bad_crc.last_mut().unwrap() ^= 0xff;
    let reply = exchange(&client_addr, &[hello.clone(), bad_crc].concat()).await;
    let (_, used): (ClientResponse, _) = FrameCodec::default().decode(&reply).unwrap().unwrap();
    let (kind, message) = first_error(&reply[used..]);
    assert_eq!(kind, ErrorKind::BadFrame);
    assert!(message.contains("checksum"), "{message}");

    // oversized: the header alone is enough to refuse it
    let mut oversized = (1u32 << 30).to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0; 4]);
    let (kind, message) = first_error(&exchange(&client_addr, &oversized).await);
    assert_eq!(kind, ErrorKind::BadFrame);
    assert!(message.contains("exceeds the limit"), "{message}");

    // garbage, and a request before the hello
    let (kind, _) =
        first_error(&exchange(&client_addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await);
    assert_eq!(kind, ErrorKind::BadFrame);
    let (kind, message) =
        first_error(&exchange(&client_addr, &client_frame(ClientOp::Status)).await);
    assert_eq!(kind, ErrorKind::InvalidRequest);
    assert!(message.contains("hello"), "{message}");

    // the peer port just closes on bad input
    for junk in [&b"garbage garbage garbage"[..], &oversized] {
        let reply = exchange(&peer_addr, junk).await;
        assert!(
            reply.is_empty(),
            "a peer connection gets no reply to garbage"
        );
    }

    // everyone else is unaffected
    assert_eq!(
        bystander.get(b"k", None).await.unwrap().values,
        vec![b"v".to_vec()]
    );
    let fresh = cluster.client(0).await.unwrap();
    fresh.put(b"k2", b"v2", &[], None).await.unwrap();
    assert_eq!(
        cluster
            .client(1)
            .await
            .unwrap()
            .get(b"k2", None)
            .await
            .unwrap()
            .values,
        vec![b"v2".to_vec()]
    );
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn bad_requests_are_refused_with_clear_errors() {
    let cluster = Cluster::start(3).await.unwrap();
    let c = cluster.client(0).await.unwrap();
    let e = c.put(b"", b"v", &[], None).await.unwrap_err();
    assert!(e.to_string().contains("empty key"), "{e}");
    let e = c.put(&vec![b'k'; 5000], b"v", &[], None).await.unwrap_err();
    assert!(e.to_string().contains("exceeds the limit"), "{e}");
    let e = c.get(b"k", Some(4)).await.unwrap_err();
    assert!(e.to_string().contains("r = 4"), "{e}");
    let e = c.put(b"k", b"v", &[1, 0xff, 0xff], None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidRequest, "{e}");
    let e = dynakv_actors::client::Client::connect(
        &cluster.config(0).node.client_addr,
        "other-cluster",
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("cluster"), "{e}");
    // the connection that sent bad requests still works
    c.put(b"k", b"v", &[], None).await.unwrap();
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn pipelined_requests_on_one_connection_are_answered_correctly() {
    let cluster = Cluster::start(3).await.unwrap();
    let client = std::sync::Arc::new(cluster.client(0).await.unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let c = client.clone();
        tasks.spawn(async move {
            let key = format!("pipelined-{i}");
            c.put(key.as_bytes(), &i.to_be_bytes(), &[], None)
                .await
                .unwrap();
            let read = c.get(key.as_bytes(), None).await.unwrap();
            assert_eq!(read.values, vec![i.to_be_bytes().to_vec()], "{key}");
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn fsync_always_acknowledges_after_a_shared_fsync() {
    let cluster = Cluster::start_with(3, |c| c.storage.fsync = dynakv::config::Fsync::Always)
        .await
        .unwrap();
    let client = std::sync::Arc::new(cluster.client(0).await.unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100u32 {
        let c = client.clone();
        tasks.spawn(async move {
            c.put(format!("durable-{i}").as_bytes(), b"v", &[], None)
                .await
                .map(|_| ())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let stats = cluster
        .node(0)
        .replica
        .send(dynakv_actors::replica::Stats)
        .await
        .unwrap()
        .unwrap();
    assert!(stats.writes >= 100, "{stats:?}");
    assert!(stats.syncs > 0, "writes were synced: {stats:?}");
    assert!(
        stats.syncs < stats.writes,
        "concurrent writes share fsyncs: {stats:?}"
    );
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn siblings_beyond_the_limit_are_refused_until_a_write_resolves_them() {
    let cluster = Cluster::start_with(3, |c| c.limits.max_siblings = 3)
        .await
        .unwrap();
    let c = cluster.client(0).await.unwrap();
    for i in 0..3u8 {
        c.put(b"k", &[i], &[], None).await.unwrap();
    }
    let e = c.put(b"k", b"one too many", &[], None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidRequest, "{e}");
    assert!(e.to_string().contains("siblings"), "{e}");
    let read = c.get(b"k", None).await.unwrap();
    assert_eq!(read.values.len(), 3);
    // a write with the read's context supersedes all three
    c.put(b"k", b"resolved", &read.context, None).await.unwrap();
    assert_eq!(
        c.get(b"k", None).await.unwrap().values,
        vec![b"resolved".to_vec()]
    );
    cluster.stop().await.unwrap();
}

/// Large writes beside a stream of small requests go through the pacing
/// (`LargeWrites`): each is answered, either written (and then readable,
/// whole) or refused as overloaded; none is lost or left hanging.
#[actix_rt::test]
async fn large_writes_beside_small_requests_land_or_are_refused() {
    let cluster = Cluster::start_with(3, |c| c.limits.large_write_bytes = 4096)
        .await
        .unwrap();
    // Pacing is each coordinator's own: both go through node 1.
    let small = cluster.client(1).await.unwrap();
    small.put(b"small", b"v", &[], None).await.unwrap();
    let stop = std::rc::Rc::new(std::cell::Cell::new(false));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (c, stop) = (small.clone(), stop.clone());
            actix_rt::spawn(async move {
                let mut reads = 0u64;
                while !stop.get() {
                    c.get(b"small", None).await.unwrap();
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let large = cluster.client(1).await.unwrap();
    let (mut written, mut refused) = (Vec::new(), 0);
    for i in 0..40u32 {
        let key = format!("large-{i}");
        let value = vec![i as u8; 64 << 10];
        match large.put(key.as_bytes(), &value, &[], None).await {
            Ok(_) => written.push((key, value)),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Overloaded, "{e}");
                refused += 1;
            }
        }
    }
    stop.set(true);
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    assert!(reads > 0);
    assert!(!written.is_empty(), "{refused} refused, none written");
    for (key, value) in written {
        let read = cluster
            .client(2)
            .await
            .unwrap()
            .get(key.as_bytes(), None)
            .await
            .unwrap();
        assert_eq!(read.values, vec![value], "{key}");
    }
    cluster.stop().await.unwrap();
}

//! Rolling upgrades: nodes and clients agree on a protocol version in
//! their hellos, never send a message the other end cannot read, and a
//! cluster speaking the previous version (`testing.protocol_version = 4`)
//! upgrades one node at a time under load without losing a write.

#![allow(clippy::unwrap_used)] // tests panic on purpose

mod support;

use std::time::{Duration, Instant};

use dynakv::NodeId;
use dynakv::auth::NONCE_LEN;
use dynakv::peer::{PeerFrame, PeerHello};
use dynakv::protocol::Versions;
use dynakv::wire::{ClientOp, ClientReply, ClientRequest, ClientResponse, FrameCodec, Put};
use dynakv_actors::client::Client;
use dynakv_actors::testkit::{Cluster, check, metric, wait_for};
use support::{ProcessCluster, Write, Writers, check_acked};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);

/// Writes `frames` (then, if `done`, closes the writing half) and returns
/// every frame the node answered with before it closed, each with the
/// version byte it was encoded at.
async fn converse<T: serde::de::DeserializeOwned>(
    addr: &str,
    frames: &[Vec<u8>],
    done: bool,
) -> Vec<(u8, T)> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&frames.concat()).await.unwrap();
    if done {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the node closes the connection")
        .unwrap();
    let codec = FrameCodec::default();
    let mut answers = Vec::new();
    let mut at = 0;
    while let Some((msg, used)) = codec.decode::<T>(&out[at..]).unwrap() {
        answers.push((out[at + 8], msg));
        at += used;
    }
    answers
}

fn request(version: u8, id: u64, op: ClientOp) -> Vec<u8> {
    FrameCodec::default()
        .at(version)
        .to_frame(&ClientRequest { id, op })
        .unwrap()
}

#[actix_rt::test]
async fn a_client_from_before_ranges_is_served_at_4_and_one_with_none_in_common_is_told_why() {
    let cluster = Cluster::start(1).await.unwrap();
    let addr = cluster.config(0).node.client_addr.clone();
    let hello = |versions| ClientOp::Hello {
        cluster: String::new(),
        token: None,
        versions,
    };
    let put = ClientOp::Put(Put {
        key: b"old".to_vec(),
        value: b"client".to_vec(),
        context: vec![],
        w: None,
    });

    // Release 4's client: its hello has no range (and is its exact bytes).
    let answers: Vec<(u8, ClientResponse)> = converse(
        &addr,
        &[request(4, 0, hello(None)), request(4, 1, put)],
        true,
    )
    .await;
    assert_eq!(answers.len(), 2, "{answers:?}");
    for (version, answer) in &answers {
        assert_eq!(*version, 4, "answered at 4: {answer:?}");
    }
    assert!(
        matches!(
            answers[0].1.reply,
            ClientReply::Hello { versions: None, .. }
        ),
        "{answers:?}"
    );
    assert!(
        matches!(answers[1].1.reply, ClientReply::Written { .. }),
        "{answers:?}"
    );

    // This build's client speaks its newest version with the node.
    let client = Client::connect(&addr, "").await.unwrap();
    let read = client.get(b"old", None).await.unwrap();
    assert_eq!(read.values, vec![b"client".to_vec()]);
    let status = client.status().await.unwrap();
    assert_eq!(status.members[0].protocol, Some(Versions::this_build()));

    // A client of a future release that speaks only 10.
    let future = Some(Versions { min: 10, max: 10 });
    let answers: Vec<(u8, ClientResponse)> =
        converse(&addr, &[request(5, 0, hello(future))], false).await;
    match &answers[..] {
        [
            (
                5,
                ClientResponse {
                    reply: ClientReply::Error { message, .. },
                    ..
                },
            ),
        ] => {
            assert!(
                message.contains("speaks 10")
                    && message.contains(&Versions::this_build().to_string()),
                "{message}"
            );
        }
        other => panic!("expected one error at 5, got {other:?}"),
    }
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn a_peer_with_no_common_version_is_refused_and_sees_both_ranges() {
    let cluster = Cluster::start(1).await.unwrap();
    let config = cluster.config(0);
    let hello = |versions| {
        PeerFrame::Hello(PeerHello {
            cluster: config.cluster.name.clone(),
            node: NodeId::new("future").unwrap(),
            nonce: [3; NONCE_LEN],
            versions,
        })
    };
    let frame = |version, hello| FrameCodec::default().at(version).to_frame(&hello).unwrap();
    let refused_before = metric(
        &cluster.scrape(0).await.unwrap(),
        "dynakv_peer_connections_refused_total",
    );

    // The welcome names the node's range, then the node closes.
    let future = Some(Versions { min: 10, max: 10 });
    let answers: Vec<(u8, PeerFrame)> =
        converse(&config.node.peer_addr, &[frame(5, hello(future))], false).await;
    match &answers[..] {
        [(5, PeerFrame::Welcome { hello, .. })] => {
            assert_eq!(hello.versions, Some(Versions::this_build()))
        }
        other => panic!("expected only a welcome, got {other:?}"),
    }
    // A node of release 4 (no range) is refused too.
    let answers: Vec<(u8, PeerFrame)> =
        converse(&config.node.peer_addr, &[frame(4, hello(None))], false).await;
    assert!(
        answers
            .iter()
            .all(|(_, f)| matches!(f, PeerFrame::Welcome { .. }))
    );

    wait_for(WAIT, "both refusals counted", || async {
        let now = metric(
            &cluster.scrape(0).await?,
            "dynakv_peer_connections_refused_total",
        );
        check(now >= refused_before + 2.0, || format!("{now} refused"))
    })
    .await
    .unwrap();
    cluster.stop().await.unwrap();
}

/// Node 3 speaks only 4. A stopping node of this build tells node 2 (which
/// marks it down at once) and never sends node 3 the notice, which 4 does
/// not have: node 3 finds out from the lost connection, as before.
#[actix_rt::test]
async fn a_stop_notice_goes_only_to_peers_that_speak_5() {
    let cluster = Cluster::start_with(3, |c| {
        // Only the notice marks a member down within this test.
        c.gossip.suspect_after_ms = 60_000;
        c.gossip.down_after_ms = 120_000;
        if c.node.id == "node3" {
            c.testing.protocol_version = Some(4);
        }
    })
    .await
    .unwrap();
    let mut cluster = cluster;
    let ranges = |status: &dynakv::wire::StatusReport| {
        status
            .members
            .iter()
            .map(|m| (m.node.to_string(), m.protocol))
            .collect::<Vec<_>>()
    };
    let full = Some(Versions::this_build());
    let old = Some(Versions { min: 4, max: 4 });
    let client = Client::connect(&cluster.config(1).node.client_addr, "")
        .await
        .unwrap();
    let seen = wait_for(WAIT, "node2 to see every member's range", || async {
        let status = client.status().await?;
        let seen = ranges(&status);
        check(seen.iter().all(|(_, v)| v.is_some()), || {
            format!("{seen:?}")
        })?;
        Ok(seen)
    })
    .await
    .unwrap();
    assert_eq!(
        seen,
        vec![
            ("node1".into(), full),
            ("node2".into(), full),
            ("node3".into(), old)
        ]
    );

    // `stop` waits for the notice's answers: whatever was sent is taken.
    cluster.stop_node(0).await.unwrap();
    let liveness = |status: &dynakv::wire::StatusReport| {
        status
            .members
            .iter()
            .find(|m| m.node.as_str() == "node1")
            .map(|m| m.liveness.clone())
            .unwrap()
    };
    wait_for(WAIT, "node2 to take the notice", || async {
        let now = liveness(&client.status().await?);
        check(now == "down", || now)
    })
    .await
    .unwrap();
    // Node 3 suspects node 1 once its connection drops; had it been sent
    // the notice first, it would hold node 1 down (a suspicion does not
    // lift a down).
    let old_client = Client::connect(&cluster.config(2).node.client_addr, "")
        .await
        .unwrap();
    let status = wait_for(WAIT, "node3 to miss node1", || async {
        let status = old_client.status().await?;
        let now = liveness(&status);
        check(now != "up", || now)?;
        Ok(status)
    })
    .await
    .unwrap();
    assert_eq!(
        liveness(&status),
        "suspect",
        "node3 was sent a message of 5"
    );
    assert!(
        status.members.iter().all(|m| m.protocol.is_none()),
        "a status at protocol 4 has no ranges: {status:?}"
    );
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn a_cluster_of_the_previous_version_upgrades_one_node_at_a_time_under_load() {
    const WRITERS: usize = 4;
    const CAP: &str = "[testing]\nprotocol_version = 4\n";
    let mut cluster = ProcessCluster::start_sized(3, 64, CAP);
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    let client = cluster.client().await;

    let writers = Writers::start(client.clone(), WRITERS);

    // Each node in turn: stopped as the old release, started as the new.
    let mut windows = Vec::new();
    for i in 0..3 {
        writers.acked_at_least(writers.acked() + 300, WAIT).await;
        let (_, config) = cluster.node_paths(i);
        let toml = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, toml.replace(CAP, "")).unwrap();
        let began = Instant::now();
        assert!(cluster.terminate(i).success(), "node{} stopped", i + 1);
        cluster.start_again(i);
        // The window ends once the new node serves and every node sees
        // every member up.
        wait_for(WAIT, "the upgraded node to serve", || async {
            for addr in &cluster.client_addrs {
                let status = Client::connect(addr, "").await?.status().await?;
                check(status.members.iter().all(|m| m.liveness == "up"), || {
                    format!("{} sees {:?}", status.node, status.members)
                })?;
            }
            let status = Client::connect(&cluster.client_addrs[i], "")
                .await?
                .status()
                .await?;
            let me = status.members.iter().find(|m| m.node == status.node);
            check(
                me.and_then(|m| m.protocol) == Some(Versions::this_build()),
                || format!("it speaks {me:?}"),
            )
        })
        .await
        .unwrap();
        windows.push((began, Instant::now()));
    }
    writers.acked_at_least(writers.acked() + 300, WAIT).await;
    let outcomes = writers.stop().await;

    // Every link speaks 5 now.
    let status = Client::connect(&cluster.client_addrs[0], "")
        .await
        .unwrap()
        .status()
        .await
        .unwrap();
    for m in &status.members {
        assert_eq!(m.protocol, Some(Versions::this_build()), "{m:?}");
    }
    // Errors only while a node restarted.
    let failed: Vec<&Write> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    for o in &failed {
        let inside = windows
            .iter()
            .any(|(began, ended)| o.ended >= *began && o.sent <= *ended);
        assert!(
            inside,
            "{} failed outside every restart window: {:?}",
            o.key, o.result
        );
    }
    // No acknowledged write is lost: R = 3 reads every replica.
    let written = check_acked(&client, &outcomes, 3).await;
    let windows_ms: Vec<u128> = windows
        .iter()
        .map(|(b, e)| e.duration_since(*b).as_millis())
        .collect();
    let errors: Vec<String> = failed.iter().map(|o| format!("{:?}", o.result)).collect();
    println!(
        "upgrade: {} writes acknowledged, {} failed (all inside the restart windows of {windows_ms:?} ms): {errors:?}",
        written,
        failed.len()
    );
}

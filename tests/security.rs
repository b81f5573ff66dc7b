//! Who may talk to a node: peers must prove they hold the cluster secret,
//! and clients may have to present a token.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use dynakv::auth::{self, NONCE_LEN, Role};
use dynakv::peer::{Corr, Envelope, PeerFrame, PeerHello, PeerMsg};
use dynakv::protocol::Versions;
use dynakv::replica::ReplicaMsg;
use dynakv::version::{Context, Value};
use dynakv::wire::FrameCodec;
use dynakv::{Error, ErrorKind, NodeId};
use dynakv_actors::client::Client;
use dynakv_actors::membership::CurrentView;
use dynakv_actors::replica::ReadLocal;
use dynakv_actors::testkit::{Cluster, metric, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "correct horse battery staple";
const REFUSED: &str = "dynakv_peer_connections_refused_total";

fn with_secret(c: &mut dynakv::config::Config) {
    c.security.cluster_secret = SECRET.into();
}

#[actix_rt::test]
async fn a_node_without_the_secret_cannot_join_or_gossip() {
    let mut cluster = Cluster::start_with(3, with_secret).await.unwrap();
    let intruder = cluster
        .add_node(|c| {
            c.security.cluster_secret = "a guess".into();
            c.cluster.auto_join = true;
        })
        .await
        .unwrap();

    // The intruder dials every seed; each refuses it, and it refuses them.
    wait_for(WAIT, "every member to refuse the intruder", || async {
        let mut counts = Vec::new();
        for i in 0..=intruder {
            counts.push(metric(&cluster.scrape(i).await?, REFUSED));
        }
        if counts.iter().any(|c| *c < 1.0) {
            return Err(Error::Unavailable(format!("refused so far: {counts:?}")));
        }
        Ok(())
    })
    .await
    .unwrap();

    let stranger = cluster.id(intruder);
    for i in 0..3 {
        let view = cluster.node(i).membership.send(CurrentView).await.unwrap();
        assert_eq!(view.members.len(), 3, "node {i}: {:?}", view.members.keys());
        assert!(!view.members.contains_key(&stranger));
    }
    let theirs = cluster
        .node(intruder)
        .membership
        .send(CurrentView)
        .await
        .unwrap();
    assert_eq!(
        theirs.members.keys().collect::<Vec<_>>(),
        vec![&stranger],
        "the intruder learned nobody"
    );
    assert!(theirs.ownership.is_none());

    // The members still work together.
    let client = cluster.client(0).await.unwrap();
    client.put(b"k", b"v", &[], Some(3)).await.unwrap();
    cluster.stop().await.unwrap();
}

/// Reads frames from `s` until one decodes (or the peer closes: None).
async fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<PeerFrame> {
    loop {
        if let Some((frame, used)) = FrameCodec::default().decode::<PeerFrame>(buf).unwrap() {
            buf.drain(..used);
            return Some(frame);
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("the node answers or closes")
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Speaks the peer protocol by hand as node "mallory" holding `secret`:
/// hello, the node's welcome, mallory's proof, then a replica write of
/// `key`. Returns the node's answer to the write (None: it closed).
async fn raw_write(cluster: &Cluster, secret: &str, key: &[u8]) -> Option<PeerMsg> {
    let config = cluster.config(0);
    let mut s = TcpStream::connect(&config.node.peer_addr).await.unwrap();
    let codec = FrameCodec::default();
    let mallory = NodeId::new("mallory").unwrap();
    let nonce = [7u8; NONCE_LEN];
    let hello = PeerFrame::Hello(PeerHello {
        cluster: config.cluster.name.clone(),
        node: mallory.clone(),
        nonce,
        versions: Some(Versions::this_build()),
    });
    s.write_all(&codec.to_frame(&hello).unwrap()).await.unwrap();
    let mut buf = Vec::new();
    let Some(PeerFrame::Welcome { hello: theirs, .. }) = read_frame(&mut s, &mut buf).await else {
        panic!("the node welcomes a hello of its cluster");
    };
    let proof = auth::prove(
        secret.as_bytes(),
        Role::Connector,
        &config.cluster.name,
        &mallory,
        &theirs.nonce,
        &nonce,
    );
    let write = PeerFrame::Envelope(Envelope {
        from: mallory,
        to: theirs.node,
        corr: Corr::Request(1),
        msg: PeerMsg::Replica(ReplicaMsg::Update {
            key: key.to_vec(),
            context: Context::default(),
            value: Value::Data(b"forged".to_vec()),
            hint_for: None,
        }),
    });
    let frames = [
        codec.to_frame(&PeerFrame::Proof(proof)).unwrap(),
        codec.to_frame(&write).unwrap(),
    ]
    .concat();
    // The node may close before it has read all of it.
    let _ = s.write_all(&frames).await;
    match read_frame(&mut s, &mut buf).await? {
        PeerFrame::Envelope(env) => Some(env.msg),
        other => panic!("unexpected frame {other:?}"),
    }
}

#[actix_rt::test]
async fn a_connection_without_a_valid_proof_is_closed_before_any_write() {
    let cluster = Cluster::start_with(3, with_secret).await.unwrap();
    let replica = cluster.node(0).replica.clone();
    let local = |key: &'static [u8]| {
        let replica = replica.clone();
        async move {
            replica
                .send(ReadLocal(key.to_vec()))
                .await
                .unwrap()
                .unwrap()
        }
    };
    let before = metric(&cluster.scrape(0).await.unwrap(), REFUSED);

    // A wrong secret: the connection closes unanswered, nothing is stored.
    let answer = raw_write(&cluster, "not the secret", b"forged").await;
    assert_eq!(answer, None);
    assert!(local(b"forged").await.is_empty());
    let after = metric(&cluster.scrape(0).await.unwrap(), REFUSED);
    assert_eq!(after, before + 1.0);

    // The same exchange with the secret is served: the proof is what
    // decided.
    let answer = raw_write(&cluster, SECRET, b"proven").await;
    assert!(
        matches!(answer, Some(PeerMsg::Replica(ReplicaMsg::Updated { .. }))),
        "{answer:?}"
    );
    assert_eq!(local(b"proven").await.values().count(), 1);
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn clients_must_present_the_configured_token() {
    let cluster = Cluster::start_with(3, |c| c.security.client_token = "t0ken".into())
        .await
        .unwrap();
    let config = cluster.config(0);
    let (addr, name) = (&config.node.client_addr, &config.cluster.name);

    for token in [None, Some("T0KEN".to_string()), Some(String::new())] {
        let refused = Client::connect_with_token(addr, name, token.clone()).await;
        match refused {
            Err(e) => assert_eq!(e.kind(), ErrorKind::Unauthorized, "{token:?}: {e}"),
            Ok(_) => panic!("{token:?} was let in"),
        }
    }

    let client = Client::connect_with_token(addr, name, Some("t0ken".into()))
        .await
        .unwrap();
    client.put(b"k", b"v", &[], None).await.unwrap();
    let read = client.get(b"k", None).await.unwrap();
    assert_eq!(read.values, vec![b"v".to_vec()]);
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn a_peer_that_stalls_in_the_handshake_is_closed() {
    let cluster = Cluster::start(1).await.unwrap();
    let config = cluster.config(0);
    let mut s = TcpStream::connect(&config.node.peer_addr).await.unwrap();
    let hello = PeerFrame::Hello(PeerHello {
        cluster: config.cluster.name.clone(),
        node: NodeId::new("slowpoke").unwrap(),
        nonce: [1u8; NONCE_LEN],
        versions: Some(Versions::this_build()),
    });
    s.write_all(&FrameCodec::default().to_frame(&hello).unwrap())
        .await
        .unwrap();
    // Welcomed, then never proves itself: the node closes the connection.
    let mut buf = Vec::new();
    let welcome = read_frame(&mut s, &mut buf).await;
    assert!(matches!(welcome, Some(PeerFrame::Welcome { .. })));
    assert_eq!(read_frame(&mut s, &mut buf).await, None);
    let refused = metric(&cluster.scrape(0).await.unwrap(), REFUSED);
    assert_eq!(refused, 1.0);
    cluster.stop().await.unwrap();
}

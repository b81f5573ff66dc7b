//! TLS on both ports: a cluster made with `dynakv certs init` forms over
//! mutual TLS and serves TLS clients (the Rust client and the CLI), and
//! refuses, each with a log line and a counter, a plaintext client, a peer
//! whose certificate another CA signed, an expired certificate, and a peer
//! or client without a certificate.

#![allow(clippy::unwrap_used)] // tests panic on purpose

mod support;

use std::path::Path;
use std::time::Duration;

use dynakv::config::TlsSection;
use dynakv_actors::certs::{Authority, Validity};
use dynakv_actors::client::{Client, Options};
use dynakv_actors::testkit::{Cluster, check, metric, wait_for};
use dynakv_actors::tls::ClientTls;
use support::cli;
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(30);

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_string()
}

fn write(dir: &Path, name: &str, pem: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p
}

/// Waits until node `i` counts `count` refused handshakes on `port` for
/// `reason`.
async fn refused(cluster: &Cluster, i: usize, port: &str, reason: &str) {
    let series =
        format!("dynakv_tls_handshakes_refused_total{{port=\"{port}\",reason=\"{reason}\"}}");
    wait_for(WAIT, &series, || async {
        let scrape = cluster.scrape(i).await?;
        check(metric(&scrape, &series) >= 1.0, || scrape.clone())
    })
    .await
    .unwrap();
}

/// Opens TLS to `addr` as `identity` and waits for the node to close the
/// connection (a TLS 1.3 client learns of a refusal of its certificate
/// only from the node's alert, after its own side finished).
async fn knock(tls: &ClientTls, addr: &str) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    if let Ok((mut read, _write)) = tls.connect(addr, stream).await {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(WAIT, read.read(&mut buf)).await;
    }
}

#[actix_rt::test]
async fn a_tls_cluster_serves_its_clients_and_refuses_everyone_else() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let (ok, out, err) = cli(&["certs", "init", certs.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("node3-key.pem") && out.contains("client.pem"),
        "{out}"
    );
    let ca = path(&certs, "ca.pem");

    let cluster = Cluster::start_with(3, |c| {
        c.tls = TlsSection {
            cert: path(&certs, &format!("{}.pem", c.node.id)),
            key: path(&certs, &format!("{}-key.pem", c.node.id)),
            ca: ca.clone(),
            require_client_cert: true,
        };
    })
    .await
    .unwrap();
    let client_addr = cluster.config(0).node.client_addr.clone();
    let peer_addr = cluster.config(1).node.peer_addr.clone();

    // A client with the CA and its certificate: a write every replica
    // acknowledges (so every peer link carries it), read back.
    let identity = (certs.join("client.pem"), certs.join("client-key.pem"));
    let tls = ClientTls::load(Path::new(&ca), Some((&identity.0, &identity.1))).unwrap();
    let options = Options {
        tls: Some(tls),
        ..Options::default()
    };
    let client = Client::connect_with(&client_addr, options).await.unwrap();
    client.put(b"k", b"over tls", &[], Some(3)).await.unwrap();
    assert_eq!(
        client.get(b"k", Some(3)).await.unwrap().values,
        [b"over tls".to_vec()]
    );
    // The CLI too.
    let tls_args = [
        "--tls-ca",
        &ca,
        "--tls-cert",
        identity.0.to_str().unwrap(),
        "--tls-key",
        identity.1.to_str().unwrap(),
    ];
    let (ok, out, err) = cli(&[&["get", "k", "--node", &client_addr][..], &tls_args].concat());
    assert!(ok && out.contains("over tls"), "{out} {err}");

    // A plaintext client on the client port.
    let plain = Client::connect(&client_addr, "").await;
    assert!(plain.is_err(), "a plaintext client was served");
    refused(&cluster, 0, "client", "not-tls").await;
    // A client without a certificate, where one is required.
    let anonymous = ClientTls::load(Path::new(&ca), None).unwrap();
    knock(&anonymous, &client_addr).await;
    refused(&cluster, 0, "client", "no-client-cert").await;
    let (ok, _, err) = cli(&["get", "k", "--node", &client_addr, "--tls-ca", &ca]);
    assert!(!ok, "the CLI got in without a certificate: {err}");

    // On the peer port: a would-be peer whose certificate another CA
    // signed, one with an expired certificate, and one with none.
    let keys = dir.path().join("others");
    std::fs::create_dir(&keys).unwrap();
    let hosts = ["127.0.0.1".to_string()];
    let rogue_ca = Authority::new("another CA", Validity::Days(1)).unwrap();
    let rogue = rogue_ca.issue("node9", &hosts, Validity::Days(1)).unwrap();
    let rogue_tls = ClientTls::load(
        Path::new(&ca),
        Some((
            &write(&keys, "rogue.pem", &rogue.cert_pem),
            &write(&keys, "rogue-key.pem", &rogue.key_pem),
        )),
    )
    .unwrap();
    knock(&rogue_tls, &peer_addr).await;
    refused(&cluster, 1, "peer", "unknown-ca").await;

    // An expired certificate from the cluster's own CA: `certs init`
    // keeps its CA key, so sign one with it.
    let expired = expired_from(&certs, &hosts);
    let expired_tls = ClientTls::load(
        Path::new(&ca),
        Some((
            &write(&keys, "old.pem", &expired.0),
            &write(&keys, "old-key.pem", &expired.1),
        )),
    )
    .unwrap();
    knock(&expired_tls, &peer_addr).await;
    refused(&cluster, 1, "peer", "expired").await;

    knock(&anonymous, &peer_addr).await;
    refused(&cluster, 1, "peer", "no-client-cert").await;
    // And plain bytes on the peer port.
    let mut raw = tokio::net::TcpStream::connect(&peer_addr).await.unwrap();
    raw.write_all(b"hello, not tls\r\n\r\n").await.unwrap();
    refused(&cluster, 1, "peer", "not-tls").await;

    // The cluster kept serving throughout.
    client.put(b"k2", b"still", &[], Some(3)).await.unwrap();
    cluster.stop().await.unwrap();
}

/// An expired certificate signed by the CA `certs init` made in `certs`.
fn expired_from(certs: &Path, hosts: &[String]) -> (String, String) {
    let ca = Authority::load(
        &std::fs::read_to_string(certs.join("ca.pem")).unwrap(),
        &std::fs::read_to_string(certs.join("ca-key.pem")).unwrap(),
    )
    .unwrap();
    let issued = ca
        .issue("node8", hosts, Validity::ExpiredDaysAgo(2))
        .unwrap();
    (issued.cert_pem, issued.key_pem)
}

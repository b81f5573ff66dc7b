//! TLS on the client and peer ports (rustls with the aws-lc-rs provider).
//!
//! With `[tls]` set, a node's two ports speak only TLS. On the peer port
//! both sides present a certificate and verify the other's against the
//! cluster's CA (mutual TLS), before the cluster-secret handshake runs
//! inside the encrypted stream; on the client port the node presents its
//! certificate and, with `require_client_cert`, asks the client for one
//! signed by the CA. A refused handshake is logged with its reason and
//! counted (`dynakv_tls_handshakes_refused_total{port,reason}`).
//!
//! Connections of either kind are handed on as boxed read and write
//! halves, so the framing code is the same with and without TLS.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use dynakv::config::TlsSection;
use dynakv::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, warn};

use crate::metrics::Metrics;

pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// A plaintext connection's halves.
pub fn plain(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    let (read, write) = stream.into_split();
    (Box::new(read), Box::new(write))
}

/// A TLS connection's halves.
fn halves<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> (ReadHalf, WriteHalf) {
    let (read, write) = tokio::io::split(stream);
    (Box::new(read), Box::new(write))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn tls_error(what: &str) -> impl Fn(rustls::Error) -> Error {
    let what = what.to_string();
    move |e| Error::Config(format!("{what}: {e}"))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::Config(format!("reading certificates from {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        Error::Config(format!(
            "reading a private key from {}: {e}",
            path.display()
        ))
    })
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca)? {
        roots
            .add(cert)
            .map_err(tls_error(&format!("the CA in {}", ca.display())))?;
    }
    Ok(Arc::new(roots))
}

/// A node's TLS: what it accepts on each port, and how it dials peers.
#[derive(Clone)]
pub struct NodeTls {
    pub clients: TlsAcceptor,
    pub peers: TlsAcceptor,
    pub dial: TlsConnector,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTls")
    }
}

impl NodeTls {
    /// Loads `[tls]`; None when TLS is off.
    pub fn load(section: &TlsSection) -> Result<Option<NodeTls>> {
        if !section.enabled() {
            return Ok(None);
        }
        let (cert, key, ca) = (
            Path::new(&section.cert),
            Path::new(&section.key),
            Path::new(&section.ca),
        );
        let chain = certificates(cert)?;
        let key = private_key(key)?;
        let roots = roots(ca)?;
        let verifier = |required: bool| {
            let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
            let builder = if required {
                builder
            } else {
                builder.allow_unauthenticated()
            };
            builder
                .build()
                .map_err(|e| Error::Config(format!("tls.ca: {e}")))
        };
        let server = |required: bool| -> Result<TlsAcceptor> {
            let config = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(tls_error("tls"))?
                .with_client_cert_verifier(verifier(required)?)
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(tls_error("tls.cert and tls.key"))?;
            Ok(TlsAcceptor::from(Arc::new(config)))
        };
        let dial = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error("tls"))?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(tls_error("tls.cert and tls.key"))?;
        Ok(Some(NodeTls {
            clients: server(section.require_client_cert)?,
            peers: server(true)?,
            dial: TlsConnector::from(Arc::new(dial)),
        }))
    }
}

/// A client's TLS: the CA it verifies nodes against, and its own
/// certificate for nodes that require one.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// `ca`: PEM file of the CA; `identity`: the client's certificate
    /// chain and key, both PEM files.
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error("tls"))?
            .with_root_certificates(roots(ca)?);
        let config = match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(certificates(cert)?, private_key(key)?)
                .map_err(tls_error("the client certificate and key"))?,
            None => builder.with_no_client_auth(),
        };
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Opens TLS over `stream` to the node at `addr` (`host:port`: the
    /// host is the name its certificate must carry).
    pub async fn connect(&self, addr: &str, stream: TcpStream) -> Result<(ReadHalf, WriteHalf)> {
        connect(&self.connector, addr, stream)
            .await
            .map_err(|failed| Error::Unavailable(failed.message))
    }
}

/// The name a node at `addr` must carry in its certificate: the host part
/// (a DNS name or an IP address).
fn server_name(addr: &str) -> Result<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_string())
        .map_err(|e| Error::InvalidRequest(format!("{host:?} is not a host name for TLS: {e}")))
}

/// A TLS connection that could not be opened.
#[derive(Debug)]
pub struct Failed {
    pub refusal: Refusal,
    pub message: String,
}

/// Opens TLS with `connector` over `stream` to `addr`.
pub async fn connect(
    connector: &TlsConnector,
    addr: &str,
    stream: TcpStream,
) -> std::result::Result<(ReadHalf, WriteHalf), Failed> {
    let name = server_name(addr).map_err(|e| Failed {
        refusal: Refusal::Other,
        message: e.to_string(),
    })?;
    match connector.connect(name, stream).await {
        Ok(tls) => Ok(halves(tls)),
        Err(e) => {
            let refusal = Refusal::of(&e);
            Err(Failed {
                refusal,
                message: format!("TLS with {addr} failed: {}", refusal.describe(&e)),
            })
        }
    }
}

/// How long the other side has to complete a TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Accepts TLS over `stream` (from `from`) with `acceptor`, within
/// `HANDSHAKE`; a refusal is logged and counted for `port` ("client" or
/// "peer").
pub async fn accept(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    from: SocketAddr,
    port: &'static str,
    metrics: &Metrics,
) -> Option<(ReadHalf, WriteHalf)> {
    let (refusal, e) = match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => return Some(halves(tls)),
        Ok(Err(e)) => (Refusal::of(&e), e),
        Err(elapsed) => (Refusal::Other, std::io::Error::other(elapsed)),
    };
    warn!(%from, port, reason = refusal.reason(), "refusing a TLS connection: {}", refusal.describe(&e));
    metrics.tls_refused(port, refusal.reason());
    None
}

/// How a port readies the connections it accepts.
pub struct Accepting {
    /// "client" or "peer", for logs and metrics.
    pub port: &'static str,
    /// TLS on the port (None: plaintext).
    pub acceptor: Option<TlsAcceptor>,
    pub metrics: Metrics,
}

impl Accepting {
    /// Readies a connection accepted from `from`, as both ports do:
    /// TCP_NODELAY, then TLS when the port has it. The halves go to `open`
    /// on `act` (at once, or once the handshake is done); a refused
    /// handshake goes no further (`accept` logs and counts it).
    pub fn ready<A>(
        self,
        stream: TcpStream,
        from: SocketAddr,
        act: &mut A,
        ctx: &mut Context<A>,
        open: impl FnOnce(&mut A, (ReadHalf, WriteHalf), &mut Context<A>) + 'static,
    ) where
        A: Actor<Context = Context<A>>,
    {
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "TCP_NODELAY not set");
        }
        let Some(acceptor) = self.acceptor else {
            return open(act, plain(stream), ctx);
        };
        let (port, metrics) = (self.port, self.metrics);
        let handshake = async move { accept(&acceptor, stream, from, port, &metrics).await };
        ctx.spawn(handshake.into_actor(act).map(move |done, act, ctx| {
            if let Some(halves) = done {
                open(act, halves, ctx);
            }
        }));
    }
}

/// Why a TLS handshake failed, as logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The other side did not speak TLS (a plaintext client).
    NotTls,
    /// Its certificate does not chain to our CA.
    UnknownCa,
    Expired,
    /// It presented no certificate where one is required.
    NoClientCert,
    Other,
}

impl Refusal {
    /// Classifies the error of a handshake.
    pub fn of(e: &std::io::Error) -> Refusal {
        let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return Refusal::Other;
        };
        match tls {
            rustls::Error::InvalidMessage(_) => Refusal::NotTls,
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => Refusal::UnknownCa,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => Refusal::Expired,
            rustls::Error::NoCertificatesPresented => Refusal::NoClientCert,
            _ => Refusal::Other,
        }
    }

    /// The metrics label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NotTls => "not-tls",
            Refusal::UnknownCa => "unknown-ca",
            Refusal::Expired => "expired",
            Refusal::NoClientCert => "no-client-cert",
            Refusal::Other => "other",
        }
    }

    /// A log line's words for it, with the error.
    pub fn describe(self, e: &std::io::Error) -> String {
        let why = match self {
            Refusal::NotTls => "the other side does not speak TLS (plaintext?)",
            Refusal::UnknownCa => "its certificate is not signed by our CA",
            Refusal::Expired => "its certificate has expired",
            Refusal::NoClientCert => "it presented no certificate, and one is required",
            Refusal::Other => "handshake failed",
        };
        format!("{why}: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let section = TlsSection {
            cert: missing.to_str().unwrap().into(),
            key: missing.to_str().unwrap().into(),
            ca: missing.to_str().unwrap().into(),
            require_client_cert: false,
        };
        let e = NodeTls::load(&section).err().unwrap().to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = ClientTls::load(&empty, None).err().unwrap().to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        assert!(
            NodeTls::load(&TlsSection::default()).unwrap().is_none(),
            "off"
        );
    }

    #[test]
    fn the_name_checked_is_the_host_dialled() {
        let name = |a: &str| server_name(a).unwrap().to_str().into_owned();
        assert_eq!(name("127.0.0.1:7001"), "127.0.0.1");
        assert_eq!(name("[::1]:7001"), "::1");
        assert_eq!(name("db-1.example:7001"), "db-1.example");
        assert!(server_name("bad host:1").is_err());
    }
}

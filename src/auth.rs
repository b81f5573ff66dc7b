//! Authentication of peers and clients.
//!
//! Peers prove they hold the cluster secret with a challenge-response in the
//! connection's hello: each side sends a fresh random nonce, and each answers
//! with an HMAC-SHA256, keyed by the secret, over its role, the cluster name,
//! its node id and both nonces (its own last). The accepting side proves
//! itself first (in its `Welcome`); the connecting side then sends its
//! `Proof`, and the accepting side takes no envelope before checking it. A
//! process without the secret can neither open a connection a node accepts
//! nor accept one a node uses, so it cannot join, gossip or write replicas.
//! The nonces make every proof single-use; the role keeps a proof from being
//! reflected back to its sender.
//!
//! Clients may be required to present a token in their hello; it is
//! compared in constant time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::node::NodeId;

/// Bytes of a nonce.
pub const NONCE_LEN: usize = 16;
/// Bytes of a proof (HMAC-SHA256).
pub const PROOF_LEN: usize = 32;

pub type Nonce = [u8; NONCE_LEN];
pub type Proof = [u8; PROOF_LEN];

/// Which end of a peer connection a proof comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that accepted the connection (proves first).
    Acceptor,
    /// The side that opened it.
    Connector,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Acceptor => b"dynakv-peer-acceptor",
            Role::Connector => b"dynakv-peer-connector",
        }
    }
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length")
}

fn feed(
    m: &mut Hmac<Sha256>,
    role: Role,
    cluster: &str,
    node: &NodeId,
    theirs: &Nonce,
    mine: &Nonce,
) {
    for part in [role.label(), cluster.as_bytes(), node.as_str().as_bytes()] {
        m.update(&(part.len() as u32).to_be_bytes());
        m.update(part);
    }
    m.update(theirs);
    m.update(mine);
}

/// The proof that `node`, in `role`, holds `secret`, answering the peer's
/// nonce `theirs` with its own `mine`.
pub fn prove(
    secret: &[u8],
    role: Role,
    cluster: &str,
    node: &NodeId,
    theirs: &Nonce,
    mine: &Nonce,
) -> Proof {
    let mut m = mac(secret);
    feed(&mut m, role, cluster, node, theirs, mine);
    m.finalize().into_bytes().into()
}

/// Checks a peer's proof (constant time). `theirs` is the peer's nonce,
/// `mine` the nonce this side sent it.
pub fn verify(
    secret: &[u8],
    role: Role,
    cluster: &str,
    node: &NodeId,
    mine: &Nonce,
    theirs: &Nonce,
    proof: &Proof,
) -> bool {
    let mut m = mac(secret);
    feed(&mut m, role, cluster, node, mine, theirs);
    m.verify_slice(proof).is_ok()
}

/// Whether a client's token is the configured one (always true when none
/// is configured).
pub fn client_allowed(configured: &str, presented: Option<&str>) -> bool {
    if configured.is_empty() {
        return true;
    }
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(configured.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn a_proof_checks_only_with_the_same_secret_nonces_role_and_identity() {
        let (a, b) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        // the acceptor answers the connector's nonce `a` with its own `b`
        let p = prove(b"s3cret", Role::Acceptor, "c", &id("n2"), &a, &b);
        // the connector checks it: its own nonce `a`, the acceptor's `b`
        assert!(verify(
            b"s3cret",
            Role::Acceptor,
            "c",
            &id("n2"),
            &a,
            &b,
            &p
        ));
        assert!(!verify(
            b"wrong",
            Role::Acceptor,
            "c",
            &id("n2"),
            &a,
            &b,
            &p
        ));
        assert!(
            !verify(b"s3cret", Role::Connector, "c", &id("n2"), &a, &b, &p),
            "no reflection"
        );
        assert!(
            !verify(b"s3cret", Role::Acceptor, "c", &id("n3"), &a, &b, &p),
            "bound to the node"
        );
        assert!(!verify(
            b"s3cret",
            Role::Acceptor,
            "other",
            &id("n2"),
            &a,
            &b,
            &p
        ));
        assert!(
            !verify(b"s3cret", Role::Acceptor, "c", &id("n2"), &b, &a, &p),
            "no replay with other nonces"
        );
    }

    #[test]
    fn client_tokens() {
        assert!(client_allowed("", None));
        assert!(client_allowed("", Some("anything")));
        assert!(client_allowed("t0k", Some("t0k")));
        assert!(!client_allowed("t0k", Some("t0K")));
        assert!(!client_allowed("t0k", None));
    }
}

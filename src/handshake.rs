//! The link handshake: how two nodes open a peer connection, and what a
//! link takes once it is open.
//!
//! The connecting side says `Hello` (its cluster, id, a fresh nonce and
//! the protocol versions it speaks). The accepting side checks the cluster
//! and the versions and answers `Welcome`: its own hello, with its proof of
//! the cluster secret over both nonces (`crate::auth`). Both sides speak
//! the highest version both hellos hold (`crate::protocol`); with none in
//! common, each refuses the other, naming both ranges (the acceptor still
//! sends its welcome, so the connector can say why too). The connecting side sends its own `Proof` first (so a
//! peer with another secret learns why it is refused, and logs it), then
//! checks the acceptor's, and is ready. The accepting side checks the
//! connector's proof and is ready. No envelope is taken before; after, an
//! envelope must come from the peer and be addressed to this node.
//!
//! Each side is one `Handshake`: the link feeds it every frame it reads
//! and writes what it answers; a refusal closes the link.

use crate::auth::{self, Role};
use crate::node::NodeId;
use crate::peer::{Envelope, PeerFrame, PeerHello};
use crate::protocol::Versions;

/// What the link does with one frame.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Frames to write, in order.
    pub send: Vec<PeerFrame>,
    /// The handshake completed with this peer.
    pub ready: Option<NodeId>,
    /// An envelope to hand on.
    pub deliver: Option<Envelope>,
}

/// Why a link closes.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub reason: String,
    /// A refusal of a peer (another cluster, no proof of the secret), as
    /// counted in the node's metrics; else a protocol error.
    pub counted: bool,
    /// Frames to write before closing.
    pub send: Vec<PeerFrame>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Acceptor: waiting for the peer's hello.
    AwaitHello,
    /// Connector: hello sent, waiting for the welcome.
    AwaitWelcome,
    /// Acceptor: welcome sent, waiting for the peer's proof.
    AwaitProof,
    Ready,
}

#[derive(Debug, Clone)]
pub struct Handshake {
    role: Role,
    /// This side's hello, with the nonce fresh for this connection.
    mine: PeerHello,
    secret: Vec<u8>,
    /// The peer's hello, once received.
    peer: Option<PeerHello>,
    /// The protocol version both speak, once agreed.
    version: Option<u8>,
    state: State,
}

impl Handshake {
    /// The side that opens the connection; returns the hello to send first.
    pub fn connector(mine: PeerHello, secret: &[u8]) -> (Handshake, PeerFrame) {
        let hello = PeerFrame::Hello(mine.clone());
        let h = Handshake {
            role: Role::Connector,
            mine,
            secret: secret.to_vec(),
            peer: None,
            version: None,
            state: State::AwaitWelcome,
        };
        (h, hello)
    }

    /// The side that accepted the connection.
    pub fn acceptor(mine: PeerHello, secret: &[u8]) -> Handshake {
        Handshake {
            role: Role::Acceptor,
            mine,
            secret: secret.to_vec(),
            peer: None,
            version: None,
            state: State::AwaitHello,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// The protocol version the link speaks, once both hellos are in.
    pub fn version(&self) -> Option<u8> {
        self.version
    }

    /// The protocol versions the peer speaks, once it said.
    pub fn peer_versions(&self) -> Option<Versions> {
        self.peer.as_ref().and_then(|h| h.versions)
    }

    /// The peer, once it said who it is.
    pub fn peer(&self) -> Option<&NodeId> {
        self.peer.as_ref().map(|h| &h.node)
    }

    /// Takes one frame read from the link.
    pub fn on_frame(&mut self, frame: PeerFrame) -> Result<Step, Refused> {
        match (self.state, frame) {
            (State::AwaitHello, PeerFrame::Hello(h)) => self.hello(h),
            (State::AwaitWelcome, PeerFrame::Welcome { hello, proof }) => {
                self.welcome(hello, proof)
            }
            (State::AwaitProof, PeerFrame::Proof(proof)) => self.proof(proof),
            (State::Ready, PeerFrame::Envelope(env)) => self.envelope(env),
            (state, frame) => Err(protocol_error(format!(
                "{} frame while {}",
                kind(&frame),
                match state {
                    State::AwaitHello => "waiting for the peer's hello",
                    State::AwaitWelcome => "waiting for the peer's welcome",
                    State::AwaitProof => "waiting for the peer's proof",
                    State::Ready => "open",
                }
            ))),
        }
    }

    /// Acceptor: the peer says who it is; answer with our proof.
    fn hello(&mut self, h: PeerHello) -> Result<Step, Refused> {
        if h.cluster != self.mine.cluster {
            return Err(refused(format!(
                "{} belongs to cluster {:?}, not {:?}",
                h.node, h.cluster, self.mine.cluster
            )));
        }
        let proof = auth::prove(
            &self.secret,
            Role::Acceptor,
            &self.mine.cluster,
            &self.mine.node,
            &h.nonce,
            &self.mine.nonce,
        );
        let send = vec![PeerFrame::Welcome {
            hello: self.mine.clone(),
            proof,
        }];
        let version = self.agree(&h).map_err(|reason| Refused {
            send: send.clone(),
            ..refused(reason)
        })?;
        self.version = Some(version);
        self.peer = Some(h);
        self.state = State::AwaitProof;
        Ok(Step {
            send,
            ..Step::default()
        })
    }

    /// The version to speak with the peer whose hello is `h`.
    fn agree(&self, h: &PeerHello) -> Result<u8, String> {
        let mine = self.mine.versions.unwrap_or_default();
        mine.agree(h.node.as_str(), h.versions)
            .map_err(|e| e.to_string())
    }

    /// Connector: the acceptor's hello and proof. Ours goes out first.
    fn welcome(&mut self, h: PeerHello, proof: auth::Proof) -> Result<Step, Refused> {
        if h.cluster != self.mine.cluster {
            return Err(refused(format!(
                "{} belongs to cluster {:?}, not {:?}",
                h.node, h.cluster, self.mine.cluster
            )));
        }
        let version = self.agree(&h).map_err(refused)?;
        let mine = auth::prove(
            &self.secret,
            Role::Connector,
            &self.mine.cluster,
            &self.mine.node,
            &h.nonce,
            &self.mine.nonce,
        );
        let send = vec![PeerFrame::Proof(mine)];
        let holds = auth::verify(
            &self.secret,
            Role::Acceptor,
            &self.mine.cluster,
            &h.node,
            &self.mine.nonce,
            &h.nonce,
            &proof,
        );
        if !holds {
            return Err(Refused {
                send,
                ..refused(format!("{} does not hold the cluster secret", h.node))
            });
        }
        let peer = h.node.clone();
        self.peer = Some(h);
        self.version = Some(version);
        self.state = State::Ready;
        Ok(Step {
            send,
            ready: Some(peer),
            deliver: None,
        })
    }

    /// Acceptor: the connector's proof; nothing else is taken before it.
    fn proof(&mut self, proof: auth::Proof) -> Result<Step, Refused> {
        let peer = self
            .peer
            .as_ref()
            .expect("a proof is awaited only after a hello");
        let holds = auth::verify(
            &self.secret,
            Role::Connector,
            &self.mine.cluster,
            &peer.node,
            &self.mine.nonce,
            &peer.nonce,
            &proof,
        );
        if !holds {
            return Err(refused(format!(
                "{} does not hold the cluster secret",
                peer.node
            )));
        }
        self.state = State::Ready;
        Ok(Step {
            ready: Some(peer.node.clone()),
            ..Step::default()
        })
    }

    /// An open link takes envelopes from its peer, addressed to this node.
    fn envelope(&self, env: Envelope) -> Result<Step, Refused> {
        if self.peer() != Some(&env.from) || env.to != self.mine.node {
            return Err(protocol_error(format!(
                "misaddressed envelope from {} to {}",
                env.from, env.to
            )));
        }
        Ok(Step {
            deliver: Some(env),
            ..Step::default()
        })
    }

    /// Which side of the connection this is.
    pub fn is_connector(&self) -> bool {
        self.role == Role::Connector
    }
}

fn refused(reason: String) -> Refused {
    Refused {
        reason,
        counted: true,
        send: Vec::new(),
    }
}

fn protocol_error(reason: String) -> Refused {
    Refused {
        reason,
        counted: false,
        send: Vec::new(),
    }
}

fn kind(frame: &PeerFrame) -> &'static str {
    match frame {
        PeerFrame::Hello(_) => "a hello",
        PeerFrame::Welcome { .. } => "a welcome",
        PeerFrame::Envelope(_) => "an envelope",
        PeerFrame::Proof(_) => "a proof",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::{Corr, PeerMsg};

    fn hello(node: &str, cluster: &str, nonce: u8) -> PeerHello {
        PeerHello {
            cluster: cluster.into(),
            node: NodeId::new(node).unwrap(),
            nonce: [nonce; auth::NONCE_LEN],
            versions: Some(Versions::this_build()),
        }
    }

    fn speaking(node: &str, nonce: u8, versions: Option<Versions>) -> PeerHello {
        PeerHello {
            versions,
            ..hello(node, "c", nonce)
        }
    }

    fn envelope(from: &str, to: &str) -> PeerFrame {
        PeerFrame::Envelope(Envelope {
            from: NodeId::new(from).unwrap(),
            to: NodeId::new(to).unwrap(),
            corr: Corr::OneWay,
            msg: PeerMsg::Ping,
        })
    }

    /// Runs a connector `a` against an acceptor `b` to the end; returns
    /// both, or the first refusal.
    fn open(
        a: PeerHello,
        a_secret: &[u8],
        b: PeerHello,
        b_secret: &[u8],
    ) -> Result<(Handshake, Handshake), Refused> {
        let (mut conn, first) = Handshake::connector(a, a_secret);
        let mut acc = Handshake::acceptor(b, b_secret);
        let mut to_acceptor = vec![first];
        while let Some(frame) = to_acceptor.pop() {
            let step = acc.on_frame(frame)?;
            for f in step.send {
                for back in conn.on_frame(f)?.send {
                    to_acceptor.push(back);
                }
            }
        }
        Ok((conn, acc))
    }

    #[test]
    fn both_sides_open_with_the_same_secret_and_take_envelopes() {
        let (mut conn, mut acc) = open(hello("a", "c", 1), b"s", hello("b", "c", 2), b"s").unwrap();
        assert!(conn.is_ready() && acc.is_ready());
        assert_eq!(conn.peer().unwrap().as_str(), "b");
        assert_eq!(acc.peer().unwrap().as_str(), "a");
        let step = acc.on_frame(envelope("a", "b")).unwrap();
        assert!(step.deliver.is_some());
        assert!(conn.on_frame(envelope("b", "a")).unwrap().deliver.is_some());
    }

    #[test]
    fn both_sides_speak_the_highest_common_version() {
        let v = |min, max| Some(Versions { min, max });
        for (a, b, agreed) in [(v(4, 5), v(4, 4), 4), (v(4, 6), v(5, 9), 6)] {
            let (conn, acc) = open(speaking("a", 1, a), b"s", speaking("b", 2, b), b"s").unwrap();
            assert_eq!(
                (conn.version(), acc.version()),
                (Some(agreed), Some(agreed))
            );
            assert_eq!((conn.peer_versions(), acc.peer_versions()), (b, a));
        }
    }

    #[test]
    fn no_common_version_is_refused_on_both_sides_naming_both_ranges() {
        let v = |min, max| Some(Versions { min, max });
        let (conn, first) = Handshake::connector(speaking("a", 1, v(4, 5)), b"s");
        let mut acc = Handshake::acceptor(speaking("b", 2, v(6, 7)), b"s");
        let refusal = acc.on_frame(first).unwrap_err();
        assert!(refusal.counted, "{refusal:?}");
        assert!(
            refusal.reason.contains("a speaks 4..5") && refusal.reason.contains("6..7"),
            "{refusal:?}"
        );
        // The acceptor's welcome still goes out, so the connector says why.
        let welcome = refusal.send.into_iter().next().expect("a welcome");
        let refusal = conn.clone().on_frame(welcome).unwrap_err();
        assert!(
            refusal.reason.contains("b speaks 6..7") && refusal.reason.contains("4..5"),
            "{refusal:?}"
        );
        assert!(!conn.is_ready() && !acc.is_ready());

        // A node from before ranges (protocol 4) is told how to upgrade.
        let mut acc = Handshake::acceptor(hello("b", "c", 2), b"s");
        let refusal = acc
            .on_frame(PeerFrame::Hello(speaking("a", 1, None)))
            .unwrap_err();
        assert!(
            refusal.reason.contains("full-cluster restart"),
            "{refusal:?}"
        );
    }

    #[test]
    fn another_cluster_is_refused_on_either_side() {
        let refusal = open(hello("a", "c", 1), b"s", hello("b", "other", 2), b"s").unwrap_err();
        assert!(
            refusal.counted && refusal.reason.contains("cluster"),
            "{refusal:?}"
        );
        let mut acc = Handshake::acceptor(hello("b", "c", 2), b"s");
        let refusal = acc
            .on_frame(PeerFrame::Hello(hello("a", "other", 1)))
            .unwrap_err();
        assert!(refusal.counted, "{refusal:?}");
    }

    #[test]
    fn a_wrong_secret_is_refused_and_the_connector_sends_its_proof_first() {
        // The acceptor lacks the secret: the connector refuses its welcome,
        // after sending its own proof (so the acceptor can log why).
        let (mut conn, first) = Handshake::connector(hello("a", "c", 1), b"right");
        let mut acc = Handshake::acceptor(hello("b", "c", 2), b"wrong");
        let welcome = acc.on_frame(first).unwrap().send.remove(0);
        let refusal = conn.on_frame(welcome).unwrap_err();
        assert!(refusal.counted);
        assert!(matches!(refusal.send[..], [PeerFrame::Proof(_)]));
        // ...which the acceptor refuses in turn.
        let proof = refusal.send.into_iter().next().unwrap();
        let refusal = acc.on_frame(proof).unwrap_err();
        assert!(
            refusal.counted && refusal.reason.contains("secret"),
            "{refusal:?}"
        );
        assert!(!acc.is_ready() && !conn.is_ready());
    }

    #[test]
    fn frames_out_of_order_close_the_link() {
        let mut acc = Handshake::acceptor(hello("b", "c", 2), b"s");
        for early in [
            PeerFrame::Proof([0; auth::PROOF_LEN]),
            envelope("a", "b"),
            PeerFrame::Welcome {
                hello: hello("a", "c", 1),
                proof: [0; auth::PROOF_LEN],
            },
        ] {
            let refusal = acc.clone().on_frame(early).unwrap_err();
            assert!(!refusal.counted, "{refusal:?}");
        }
        acc.on_frame(PeerFrame::Hello(hello("a", "c", 1))).unwrap();
        let again = acc.clone().on_frame(PeerFrame::Hello(hello("a", "c", 1)));
        assert!(again.is_err(), "a second hello");
        assert!(
            acc.on_frame(envelope("a", "b")).is_err(),
            "no envelope before the proof"
        );

        let (conn, _) = Handshake::connector(hello("a", "c", 1), b"s");
        for wrong in [PeerFrame::Hello(hello("b", "c", 2)), envelope("b", "a")] {
            assert!(conn.clone().on_frame(wrong).is_err());
        }
    }

    #[test]
    fn an_open_link_refuses_misaddressed_envelopes() {
        let (_, mut acc) = open(hello("a", "c", 1), b"s", hello("b", "c", 2), b"s").unwrap();
        for (from, to) in [("x", "b"), ("a", "x")] {
            let refusal = acc.on_frame(envelope(from, to)).unwrap_err();
            assert!(refusal.reason.contains("misaddressed"), "{refusal:?}");
        }
        let again = acc.on_frame(PeerFrame::Hello(hello("a", "c", 1)));
        assert!(again.is_err(), "a hello on an open link");
    }
}

//! The one error type of the core crate.
//!
//! Every failure that can reach a client, a peer or an operator is a variant
//! here, so callers can classify it (`is_retryable`) and the wire can carry it
//! (`ErrorKind`) without string matching. Foreign errors are kept as their
//! message so the enum stays `Clone` and comparable in tests.

use serde::{Deserialize, Serialize};

/// Result alias used throughout the core crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    // --- framing and decoding (anything that arrived from a socket) ---
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: u64 },
    #[error(
        "frame checksum mismatch: header says {expected:#010x}, payload hashes to {actual:#010x}"
    )]
    ChecksumMismatch { expected: u32, actual: u32 },
    #[error("payload ended early: {0}")]
    Truncated(String),
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("protocol version {0} is not one this build speaks ({speaks})", speaks = crate::protocol::Versions::this_build())]
    UnknownVersion(u8),
    #[error("malformed message: {0}")]
    Malformed(String),

    // --- requests ---
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("invalid context: {0}")]
    InvalidContext(String),
    #[error("quorum not reached: {got} of {needed} required replicas answered")]
    Quorum { needed: u8, got: u8 },
    #[error("request timed out")]
    Timeout,
    #[error("node overloaded, retry later")]
    Overloaded,
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// This node, or the peer asking, is no longer a member: it was removed
    /// or it left. Nothing was done; the same request will never succeed
    /// there.
    #[error("removed from the cluster: {0}")]
    Removed(String),
    /// The request was sent but no answer came back (the connection broke,
    /// the node died): it may or may not have taken effect. A client never
    /// retries a write that ended this way on its own.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),

    // --- local resources ---
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("internal: {0}")]
    Internal(String),

    /// An error reported by another process (a server answering a client, a
    /// peer answering a replica request), kept with its classification.
    #[error("{message}")]
    Remote { kind: ErrorKind, message: String },
}

impl Error {
    /// Whether the same request may succeed if sent again later: the failure
    /// came from load, timing or a transient lack of replicas, not from the
    /// request itself.
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }

    /// The wire-level classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::FrameTooLarge { .. }
            | Error::ChecksumMismatch { .. }
            | Error::Truncated(_)
            | Error::TrailingBytes(_)
            | Error::UnknownVersion(_)
            | Error::Malformed(_) => ErrorKind::BadFrame,
            Error::InvalidRequest(_) | Error::InvalidContext(_) => ErrorKind::InvalidRequest,
            Error::Quorum { .. } => ErrorKind::Quorum,
            Error::Timeout => ErrorKind::Timeout,
            Error::Overloaded => ErrorKind::Overloaded,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Unauthorized(_) => ErrorKind::Unauthorized,
            Error::Removed(_) => ErrorKind::Removed,
            Error::Indeterminate(_) => ErrorKind::Indeterminate,
            Error::Config(_) => ErrorKind::InvalidRequest,
            Error::Storage(_) | Error::Internal(_) => ErrorKind::Internal,
            Error::Remote { kind, .. } => *kind,
        }
    }

    /// Rebuilds an error received over the wire as `kind` + message.
    pub fn from_wire(kind: ErrorKind, message: String) -> Self {
        Error::Remote { kind, message }
    }
}

/// What an error response tells a client, independent of the message text.
/// Variants are only ever appended (the enum index is on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The frame could not be decoded; the connection is closed after this.
    BadFrame,
    /// The request is well-formed but not acceptable (bad key, R > N, ...).
    InvalidRequest,
    /// Fewer replicas than R or W answered before the deadline.
    Quorum,
    Timeout,
    Overloaded,
    Unavailable,
    Unauthorized,
    Internal,
    /// The node (or the peer asking) was removed from the cluster or left
    /// it; the request had no effect.
    Removed,
    /// Sent, and no answer came: it may have taken effect.
    Indeterminate,
}

impl Error {
    /// Whether a request that failed this way may still have taken effect:
    /// no answer came (a timeout, a connection lost after sending). Any
    /// other error is an answer, or a failure before the request left.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self.kind(), ErrorKind::Timeout | ErrorKind::Indeterminate)
    }
}

impl ErrorKind {
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Quorum
                | ErrorKind::Timeout
                | ErrorKind::Overloaded
                | ErrorKind::Unavailable
                | ErrorKind::Indeterminate
        )
    }

    /// A short stable name, used in metrics labels and bench reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadFrame => "bad_frame",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Quorum => "quorum",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Internal => "internal",
            ErrorKind::Removed => "removed",
            ErrorKind::Indeterminate => "indeterminate",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_retryable_and_bad_input_is_not() {
        assert!(Error::Quorum { needed: 2, got: 1 }.is_retryable());
        assert!(Error::Timeout.is_retryable());
        assert!(Error::Overloaded.is_retryable());
        assert!(Error::Unavailable("no replicas".into()).is_retryable());
        assert!(!Error::InvalidRequest("empty key".into()).is_retryable());
        assert!(
            !Error::ChecksumMismatch {
                expected: 1,
                actual: 2
            }
            .is_retryable()
        );
        assert!(!Error::Unauthorized("bad token".into()).is_retryable());
        assert!(!Error::Storage("disk full".into()).is_retryable());
        assert!(!Error::Removed("node4".into()).is_retryable());
    }

    #[test]
    fn wire_round_trip_keeps_the_classification() {
        for e in [
            Error::Quorum { needed: 2, got: 0 },
            Error::Timeout,
            Error::Overloaded,
            Error::InvalidRequest("x".into()),
            Error::Unauthorized("x".into()),
            Error::Internal("x".into()),
            Error::Removed("x".into()),
        ] {
            let back = Error::from_wire(e.kind(), e.to_string());
            assert_eq!(back.kind(), e.kind(), "{e}");
            assert_eq!(back.is_retryable(), e.is_retryable(), "{e}");
            assert_eq!(back.to_string(), e.to_string());
        }
    }
}

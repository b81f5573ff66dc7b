//! dynakv core: the deterministic heart of a Dynamo-style key-value store.
//!
//! Every concern here is plain Rust with no threads, sockets or clocks: it
//! takes inputs (messages, the current time as a number) and returns outputs.
//! The `dynakv-actors` crate wraps each concern in a thin actix actor.
//!
//! - [`ring`] and [`ownership`]: partitions, owners, preference lists;
//! - [`version`]: dotted version vector sets (siblings and contexts);
//! - [`merkle`]: per-partition hash trees for anti-entropy;
//! - [`wire`]: frames and the client and peer protocols;
//! - [`config`]: the typed, validated node configuration;
//! - [`error`]: the crate's one error type.

pub mod anti_entropy;
pub mod auth;
pub mod calls;
pub mod config;
pub mod coordinator;
pub mod error;
pub mod fencing;
pub mod handoff;
pub mod handshake;
pub mod hints;
pub mod liveness;
pub mod membership;
pub mod merkle;
pub mod node;
pub mod ownership;
pub mod partition;
pub mod peer;
pub mod replica;
pub mod ring;
#[cfg(feature = "sim")]
pub mod sim;
pub mod store;
pub mod tombstones;
pub mod topology;
pub mod version;
pub mod view;
pub mod wire;

pub use error::{Error, ErrorKind, Result};
pub use node::NodeId;

//! The dynakv node: one thin actix actor per concern of the core crate, the
//! TCP bridge between nodes, the client server, the Rust client and the
//! `dynakv` binary. `node::start` shows how the actors fit together.

pub mod admin;
pub mod anti_entropy;
pub mod backup;
pub mod bench;
pub mod bridge;
pub mod certs;
pub mod client;
pub mod client_server;
pub mod clock;
pub mod codec;
pub mod coordinator;
pub mod dev;
pub mod events;
pub mod exchange;
pub mod faults;
pub mod handoff;
pub mod hints;
pub mod link;
mod listener;
pub mod logging;
pub mod membership;
pub mod messages;
pub mod metrics;
pub mod metrics_server;
pub mod node;
pub mod replica;
pub mod ring;
pub mod session;
pub mod storage;
pub mod storage_worker;
pub mod supervise;
mod syncer;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tls;

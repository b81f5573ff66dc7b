//! dynakv core: the deterministic heart of a Dynamo-style key-value store.
//!
//! Every concern here is plain Rust with no threads, sockets or clocks: it
//! takes inputs (messages, the current time as a number) and returns outputs.
//! The `dynakv-actors` crate wraps each concern in a thin actix actor, and
//! the simulator (module `sim`, feature `sim`) drives the very same code in
//! one thread, so what the simulator checks is what ships.
//!
//! Where things live, from the bottom up:
//!
//! - data: [`version`] (DVV sets: siblings and contexts), [`store`] (the
//!   ordered key-value seam, the in-memory store, the stored-entry codec),
//!   [`replica`] (one node's copy: local get, put, delete, merge),
//!   [`crdt`] (counters and add-wins sets that merge by a join);
//! - placement: [`node`] (ids), [`partition`] (the Q hash ranges),
//!   [`ownership`] (who owns each partition), [`ring`] (keys to preference
//!   lists), [`placement`] (which namespaces of a partition each node
//!   holds, by their own `n`);
//! - cluster state: [`view`] (the membership CRDT, with the [`namespace`]
//!   table), [`membership`] (joins,
//!   leaves, removals, start checks), [`liveness`] (failure detection),
//!   [`fencing`] (whose traffic to refuse), [`topology`] (all of it at one
//!   moment, as the actors and the simulator see it);
//! - requests: [`coordinator`] (plan, route and tally a client's get, put or
//!   delete), [`routing`] (where a cluster-aware client sends each request,
//!   and when it may fail over), [`listing`] (pages of keys from a coverage
//!   plan);
//! - background work, each a driver the node's actor and the simulator both
//!   run: [`hints`] (hinted handoff), [`handoff`] (moving partitions),
//!   [`anti_entropy`] (with [`merkle`] trees), [`tombstones`] (forgetting
//!   deletes once every owner has them);
//! - talking to peers: [`wire`] (frames, the client and peer protocols),
//!   [`peer`] (peer messages, envelopes), [`handshake`] (opening a link),
//!   [`protocol`] (version ranges and what each version added),
//!   [`calls`] (calls in flight, retry backoff), [`auth`] (tokens);
//! - [`backup`]: the format of a node's backup (records and manifest);
//! - [`config`]: the typed, validated node configuration; [`error`]: the
//!   crate's one error type.

pub mod anti_entropy;
pub mod auth;
pub mod backup;
pub mod calls;
pub mod config;
pub mod coordinator;
pub mod crdt;
pub mod error;
pub mod fencing;
pub mod handoff;
pub mod handshake;
pub mod hints;
pub mod listing;
pub mod liveness;
pub mod membership;
pub mod merkle;
pub mod namespace;
pub mod node;
pub mod ownership;
pub mod partition;
pub mod peer;
pub mod placement;
pub mod protocol;
pub mod replica;
pub mod ring;
pub mod routing;
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

/// The configuration of every property test: proptest's defaults, with
/// the failing cases it saves (and replays first) kept under `tests/`
/// rather than in a top-level folder of their own.
#[cfg(test)]
pub(crate) fn proptest_config() -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::SourceParallel(
                "tests/proptest-regressions",
            ),
        )),
        ..proptest::test_runner::Config::default()
    }
}

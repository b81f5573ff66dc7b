//! The node's event stream: what tests (and operators' tools) wait on
//! instead of sleeping. Every event names the node it happened on, so the
//! streams of a whole cluster can be read together. Every event is also
//! counted in the node's metrics.

use dynakv::NodeId;
use tokio::sync::broadcast;

use crate::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This node's membership view changed.
    ViewChanged {
        node: NodeId,
        members: usize,
        ring: bool,
    },
    /// A get found replicas behind the merged result and wrote it back.
    ReadRepair {
        node: NodeId,
        key: Vec<u8>,
        replicas: usize,
    },
    /// An anti-entropy exchange of `partition` with `peer` completed.
    Exchanged {
        node: NodeId,
        peer: NodeId,
        partition: u32,
        pulled: usize,
        pushed: usize,
        bytes: usize,
    },
    /// A collection round removed `keys` tombstones from this node.
    TombstonesCollected { node: NodeId, keys: usize },
    /// What a complete collection round left waiting: `awaiting`
    /// tombstones found and not collected, and per member how many its
    /// answer held back (the rest wait out the grace period).
    TombstoneBacklog {
        node: NodeId,
        awaiting: usize,
        held_back: Vec<(NodeId, usize)>,
    },
    /// A home partition was fetched completely.
    PartitionFetched {
        node: NodeId,
        partition: u32,
        from: NodeId,
        keys: u64,
    },
    /// A partition this node no longer replicates was synchronised with its
    /// replicas and dropped.
    PartitionReleased {
        node: NodeId,
        partition: u32,
        keys: usize,
    },
    /// This node finished leaving the cluster.
    Left { node: NodeId },
    /// This node learned it was removed from the cluster (or that it left):
    /// it takes no part any more.
    Fenced { node: NodeId },
    /// A delivery run handed `keys` hinted keys back to `owner`.
    HintsDelivered {
        node: NodeId,
        owner: NodeId,
        keys: usize,
    },
}

/// Events a slow subscriber may fall behind by before it misses some.
const CAPACITY: usize = 4096;

#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
    metrics: Metrics,
}

impl Events {
    pub fn new(metrics: Metrics) -> Events {
        Events {
            tx: broadcast::channel(CAPACITY).0,
            metrics,
        }
    }

    pub fn emit(&self, event: Event) {
        self.count(&event);
        // No subscriber is fine: events are for whoever listens.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Counts what an event says happened.
    fn count(&self, event: &Event) {
        let m = &self.metrics;
        match event {
            Event::ReadRepair { .. } => m.read_repair(),
            Event::Exchanged {
                pulled,
                pushed,
                bytes,
                ..
            } => m.exchanged(pulled + pushed, *bytes),
            Event::TombstonesCollected { keys, .. } => m.tombstones_collected(*keys),
            Event::TombstoneBacklog {
                awaiting,
                held_back,
                ..
            } => m.tombstone_backlog(*awaiting, held_back),
            Event::PartitionFetched { .. } => m.partition_fetched(),
            Event::PartitionReleased { .. } => m.partition_released(),
            Event::HintsDelivered { keys, .. } => m.hints_delivered(*keys),
            Event::ViewChanged { .. } | Event::Left { .. } | Event::Fenced { .. } => {}
        }
    }

    /// The node's metrics, for counts that are not events.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

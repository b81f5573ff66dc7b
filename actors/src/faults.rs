//! Fault injection for tests, at a node's Bridge: `Partition` silently
//! drops traffic to and from the given peers (calls time out, as in a real
//! partition), `Drop` loses a fraction of envelopes, `Delay` holds outbound
//! envelopes back, `Heal` clears all.

use std::collections::BTreeSet;
use std::time::Duration;

use actix::prelude::*;
use dynakv::NodeId;

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    Partition(BTreeSet<NodeId>),
    Drop(f64),
    Delay(Duration),
    Heal,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Control(pub Fault);

#[derive(Default)]
pub(crate) struct Faults {
    pub(crate) partitioned: BTreeSet<NodeId>,
    pub(crate) drop: f64,
    pub(crate) delay: Duration,
    rng: Option<fastrand::Rng>,
}

impl Faults {
    /// Whether an envelope to or from `peer` is lost.
    pub(crate) fn loses(&mut self, peer: &NodeId) -> bool {
        if self.partitioned.contains(peer) {
            return true;
        }
        self.drop > 0.0 && self.rng.get_or_insert_with(fastrand::Rng::new).f64() < self.drop
    }
}

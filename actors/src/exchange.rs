//! Runs one anti-entropy exchange of a partition with a peer: the core's
//! `Exchange` state machine steps on the storage worker (it reads and
//! merges local data), its messages go through the Bridge. Anti-entropy
//! runs full exchanges; handoff runs push-only ones before a release.

use std::time::Duration;

use actix::prelude::*;
use dynakv::anti_entropy::ExchangeReport;
use dynakv::peer::PeerMsg;
use dynakv::{Error, NodeId, Result};

use crate::bridge::{Bridge, call};
use crate::replica::{AeBegin, AeContinue, Replica};
use crate::supervise::mailbox_error;

/// Runs the exchange `begin` asks for with `peer` to the end, each message
/// waiting at most `timeout`.
pub(crate) async fn exchange(
    replica: Addr<Replica>,
    bridge: Addr<Bridge>,
    begin: AeBegin,
    peer: NodeId,
    timeout: Duration,
) -> Result<ExchangeReport> {
    let (mut ex, mut msg) = replica.send(begin).await.map_err(mailbox_error)??;
    loop {
        let reply = match call(&bridge, peer.clone(), PeerMsg::AntiEntropy(msg), timeout).await? {
            PeerMsg::AntiEntropy(reply) => reply,
            other => {
                return Err(Error::Malformed(format!(
                    "exchange answered with {other:?}"
                )));
            }
        };
        let (next_ex, next) = replica
            .send(AeContinue(ex, reply))
            .await
            .map_err(mailbox_error)??;
        ex = next_ex;
        match next {
            Some(m) => msg = m,
            None => return Ok(ex.report().clone()),
        }
    }
}

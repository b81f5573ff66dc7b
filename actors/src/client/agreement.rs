//! Namespace agreement: whether every member already holds the namespace
//! table this client's node holds. The core's `Rounds` decides whom to
//! ask and tallies the answers; this asks.
//!
//! A namespace change is made at one node and reaches the others by
//! gossip, within a few rounds. Until a node has it, that node refuses the
//! namespace's keys as unknown (or serves them by the old settings), so an
//! operator who creates a namespace and writes to it at once would see
//! failures. Like Cassandra's schema agreement, the change's caller can
//! wait until every member lists the same namespaces, and learn which
//! ones do not yet.

use std::time::Duration;

use dynakv::Result;
use dynakv::namespace::{Agreement, Info, Request, Rounds};
use dynakv::wire::{ClientOp, ClientReply};
use futures_util::future::join_all;
use tokio::time::{Instant, sleep, timeout};

use super::connection::unexpected;
use super::{Client, Options};

/// How long to wait between two rounds of asking the members that do not
/// agree yet.
const POLL: Duration = Duration::from_millis(50);
/// How long one member has to answer in a round: a member that hangs
/// (stopped, its host gone) must not hold up hearing from the others.
const ASK: Duration = Duration::from_secs(1);

impl Client {
    /// Waits at most `within` until every member of the cluster (all but
    /// those that left or were removed) lists the namespaces this client's
    /// node lists, asking each at its client address; returns how far the
    /// table got. Call it after `change_namespace` to know the change is
    /// everywhere before using it.
    pub async fn namespace_agreement(&self, within: Duration) -> Result<Agreement> {
        let deadline = Instant::now() + within;
        let mut rounds = Rounds::default();
        loop {
            let agreement = self.agreement(deadline, &mut rounds).await?;
            if agreement.is_complete() || Instant::now() + POLL >= deadline {
                return Ok(agreement);
            }
            sleep(POLL).await;
        }
    }

    /// One round: this node's list and its view's members, then the list
    /// of every member not yet known to agree (this node's included),
    /// asked all at once, each for at most `ASK` and not past `deadline`.
    async fn agreement(&self, deadline: Instant, rounds: &mut Rounds) -> Result<Agreement> {
        rounds.ours(self.namespaces(Request::List).await?);
        let view = match self.call(ClientOp::Ring).await? {
            ClientReply::Ring(snapshot) => snapshot.view,
            other => return Err(unexpected(other)),
        };
        let options = Options {
            timeout: ASK.min(deadline.saturating_duration_since(Instant::now())),
            ..self.shared.options.clone()
        };
        let live: Vec<_> = view
            .members
            .values()
            .filter(|m| m.status.is_live())
            .collect();
        let asked: Vec<_> = live.iter().filter(|m| rounds.asks(&m.id)).collect();
        let lists = join_all(asked.iter().map(|m| {
            let options = options.clone();
            async move { timeout(options.timeout, listed(&m.client_addr, options)).await }
        }))
        .await;
        for (member, list) in asked.into_iter().zip(lists) {
            if let Ok(Ok(theirs)) = list {
                rounds.heard(member.id.clone(), &theirs);
            }
        }
        Ok(rounds.tally(live.iter().map(|m| &m.id)))
    }
}

/// The namespaces the node at `addr` lists.
async fn listed(addr: &str, options: Options) -> Result<Vec<Info>> {
    Client::connect_with(addr, options)
        .await?
        .namespaces(Request::List)
        .await
}

//! Sixteen `serve` processes on this machine (Q = 64): the cluster forms,
//! splits to Q = 128, takes a join (a node configured with the founding
//! Q) and a leave, all under load without losing a write, and every
//! member ends with the same view. Prints how long each step took.

#![allow(clippy::unwrap_used)] // tests panic on purpose

mod support;

use std::time::{Duration, Instant};

use dynakv::Error;
use dynakv_actors::client::Client;
use dynakv_actors::testkit::{check, wait_for};
use support::{ProcessCluster, Writers, check_acked, cli};

const NODES: usize = 16;
const WAIT: Duration = Duration::from_secs(180);

/// The cluster as a node sees it: Q, and each member's id, state,
/// partitions owned and replicated.
type Seen = (u32, Vec<(String, String, u32, u32)>);

async fn seen(addr: &str) -> Result<Seen, Error> {
    let status = Client::connect(addr, "").await?.status().await?;
    let mut members: Vec<_> = status
        .members
        .into_iter()
        .map(|m| (m.node.to_string(), m.state, m.owned, m.replicated))
        .collect();
    members.sort();
    Ok((status.partitions, members))
}

/// Waits until every node of `asked` sees the same members, states and
/// ownership, and `fits` holds of it; returns what they agree on.
async fn agreed(
    cluster: &ProcessCluster,
    asked: &[usize],
    what: &str,
    fits: impl Fn(&Seen) -> bool,
) -> Seen {
    let result = wait_for(WAIT, what, || async {
        let mut first: Option<Seen> = None;
        for &i in asked {
            let members = seen(&cluster.client_addrs[i]).await?;
            match &first {
                None => {
                    check(fits(&members), || format!("node{} sees {members:?}", i + 1))?;
                    first = Some(members);
                }
                Some(f) => check(*f == members, || {
                    format!("node{} sees {members:?}, another {f:?}", i + 1)
                })?,
            }
        }
        Ok(first.unwrap_or_default())
    })
    .await;
    match result {
        Ok(seen) => seen,
        Err(e) => panic!(
            "{e}; the last logs:\n{}",
            asked
                .iter()
                .map(|&j| format!("--- node{}\n{}", j + 1, cluster.log_tail(j)))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn serving((_, members): &Seen, count: usize) -> bool {
    let up = members.iter().filter(|m| m.1 == "up" && m.2 > 0).count();
    up == count
}

#[actix_rt::test]
async fn sixteen_processes_form_split_take_a_join_and_a_leave_under_load_and_agree() {
    let began = Instant::now();
    let mut cluster = ProcessCluster::start_sized(NODES, 64, "");
    let all: Vec<usize> = (0..NODES).collect();
    agreed(&cluster, &all, "16 nodes to form", |m| {
        m.1.len() == NODES && serving(m, NODES)
    })
    .await;
    let formed = began.elapsed();

    let client = cluster.client().await;
    let writers = Writers::start(client.clone(), 4);
    writers.acked_at_least(200, WAIT).await;

    // The plan first, from the command line: Q doubles, nothing moves.
    let via = cluster.client_addrs[0].clone();
    let (ok, out, err) = cli(&["cluster", "plan", "--split", "--via", &via]);
    assert!(ok, "{err}");
    assert!(
        out.contains("128 partitions after the change") && out.contains("no data would move"),
        "{out}"
    );
    let began = Instant::now();
    let (ok, out, err) = cli(&["cluster", "split", "--via", &via]);
    assert!(
        ok && out.contains("64 partitions are 128 now"),
        "{out} {err}"
    );
    let before_split = writers.acked();
    let split = agreed(&cluster, &all, "the split to reach every node", |m| {
        m.0 == 128 && serving(m, NODES)
    })
    .await;
    let owned: u32 = split.1.iter().map(|m| m.2).sum();
    assert_eq!(owned, 128, "{split:?}");
    let spread = began.elapsed();
    writers.acked_at_least(before_split + 200, WAIT).await;

    let began = Instant::now();
    let joiner = cluster.add("");
    let mut asked = all.clone();
    asked.push(joiner);
    agreed(&cluster, &asked, "the 17th node to join", |m| {
        m.0 == 128 && m.1.len() == NODES + 1 && serving(m, NODES + 1)
    })
    .await;
    let joined = began.elapsed();
    writers.acked_at_least(writers.acked() + 200, WAIT).await;

    let began = Instant::now();
    let leaver = 1;
    Client::connect(&cluster.client_addrs[leaver], "")
        .await
        .unwrap()
        .leave()
        .await
        .unwrap();
    asked.retain(|&i| i != leaver);
    let leaver_id = format!("node{}", leaver + 1);
    // A node that has left gossips no more, so the others may not hear it
    // say so: gone is leaving (or left) and owning nothing.
    agreed(&cluster, &asked, "node2 to leave", |m| {
        let gone = m.1.iter().any(|x| {
            x.0 == leaver_id && matches!(x.1.as_str(), "leaving" | "left") && (x.2, x.3) == (0, 0)
        });
        gone && serving(m, NODES)
    })
    .await;
    let left = began.elapsed();
    writers.acked_at_least(writers.acked() + 200, WAIT).await;
    let outcomes = writers.stop().await;

    // No acknowledged write is lost: R = 3 reads every replica.
    let written = check_acked(&client, &outcomes, 3).await;
    println!(
        "16 processes: formed in {formed:?}; split from 64 to 128 partitions (every view \
         agreeing) in {spread:?}; a 17th joined (every view agreeing, it serving) in {joined:?}; \
         one left in {left:?}; {} writes acknowledged meanwhile, {} failed, none lost",
        written,
        outcomes.len() - written
    );
}

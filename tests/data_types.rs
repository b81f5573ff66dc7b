//! Data types (counter, set) on a real 3-node cluster: clients send
//! operations, reads return one merged value, never siblings, and every
//! acknowledged operation survives partitions and restarts.

#![allow(clippy::unwrap_used)] // tests panic on purpose

use std::collections::BTreeSet;
use std::time::Duration;

use dynakv::crdt::{FieldReading, MapField, Reading};
use dynakv::namespace::{Changes, Kind, Name, Request, key_in};
use dynakv_actors::client::Client;
use dynakv_actors::replica::ReadLocal;
use dynakv_actors::testkit::{Cluster, check, wait_for};
use futures_util::future::join_all;

const WAIT: Duration = Duration::from_secs(60);

/// Creates namespace `name` of type `kind` and waits until every node of
/// `nodes` serves it.
async fn create(nodes: &[Client], name: &str, kind: &str) {
    let changes = Changes {
        kind: Some(Kind::parse(kind).unwrap()),
        ..Changes::default()
    };
    let request = Request::Create {
        name: name.into(),
        changes,
    };
    nodes[0].change_namespace(request).await.unwrap();
    wait_for(WAIT, "every node to know the namespace", || async {
        for node in nodes {
            node.in_namespace(name)?.fetch(b"probe", None).await?;
        }
        Ok(())
    })
    .await
    .unwrap();
}

async fn clients(cluster: &Cluster, ns: &str) -> Vec<Client> {
    let mut nodes = Vec::new();
    for i in 0..cluster.len() {
        nodes.push(cluster.client(i).await.unwrap().in_namespace(ns).unwrap());
    }
    nodes
}

/// The members of `key` as `node` reads them at R = `r`.
async fn members(node: &Client, key: &[u8], r: Option<u8>) -> dynakv::Result<BTreeSet<Vec<u8>>> {
    let (members, _) = node.smembers(key, r).await?;
    Ok(members.into_iter().collect())
}

/// Waits until every node's own copy of `key` reads `expected`.
async fn converged(nodes: &[Client], key: &[u8], expected: Reading) {
    wait_for(WAIT, "every replica to hold the same value", || async {
        for node in nodes {
            let local = node.inspect(key).await?;
            check(local.reading.as_ref() == Some(&expected), || {
                format!("{} holds {:?}", local.node, local.reading)
            })?;
            check(local.siblings.is_empty(), || {
                format!("{} holds siblings", local.node)
            })?;
        }
        Ok(())
    })
    .await
    .unwrap();
}

#[actix_rt::test]
async fn the_cart_keeps_every_acknowledged_add_through_a_partition() {
    let cluster = Cluster::start(3).await.unwrap();
    let nodes = clients(&cluster, "carts").await;
    create(&nodes, "carts", "set").await;
    // Six shoppers, two per node, each adding its own items to one cart.
    let shoppers: Vec<(usize, &Client)> = (0..6).map(|s| (s, &nodes[s % 3])).collect();
    let add_round = |round: usize| {
        join_all(shoppers.iter().map(move |&(s, node)| async move {
            let item = format!("item-{s}-{round}");
            let added = node.sadd(b"cart", &[item.as_bytes()], None).await;
            // Every read is one merged set, whatever is in flight.
            node.smembers(b"cart", Some(1)).await.unwrap();
            (item, added)
        }))
    };
    let mut acked = BTreeSet::new();
    let mut record = |results: Vec<(String, dynakv::Result<()>)>| {
        for (item, added) in results {
            if added.is_ok() {
                acked.insert(item.into_bytes());
            }
        }
    };
    for round in 0..5 {
        record(add_round(round).await);
    }
    cluster.partition(&[2]).await;
    for round in 5..10 {
        record(add_round(round).await);
    }
    cluster.heal().await;
    for round in 10..15 {
        record(add_round(round).await);
    }
    // The majority side took the adds sent to it while node 2 was away.
    assert!(acked.len() >= 60, "only {} adds acknowledged", acked.len());
    // Just after the heal a link to node 2 may still be reconnecting, and a
    // read at R = 3 fails fast until it is back: retry it.
    let all = wait_for(WAIT, "a read at R = 3 after the heal", || async {
        members(&nodes[0], b"cart", Some(3)).await
    })
    .await
    .unwrap();
    let missing: Vec<_> = acked
        .difference(&all)
        .map(|m| String::from_utf8_lossy(m))
        .collect();
    assert!(missing.is_empty(), "acknowledged adds missing: {missing:?}");
    converged(&nodes, b"cart", Reading::Set(all.into_iter().collect())).await;
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn an_add_concurrent_with_a_remove_wins_and_an_observed_one_goes() {
    let cluster = Cluster::start(3).await.unwrap();
    let nodes = clients(&cluster, "carts").await;
    create(&nodes, "carts", "set").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    a.sadd(b"cart", &[b"milk", b"eggs"], None).await.unwrap();
    let (seen, context) = a.smembers(b"cart", None).await.unwrap();
    assert_eq!(seen, [b"eggs".to_vec(), b"milk".to_vec()]);
    // b adds milk again; a removes the milk it saw, not b's.
    b.sadd(b"cart", &[b"milk"], None).await.unwrap();
    a.srem(b"cart", &[b"milk", b"eggs"], &context, None)
        .await
        .unwrap();
    let after = members(b, b"cart", Some(3)).await.unwrap();
    assert_eq!(after, BTreeSet::from([b"milk".to_vec()]), "the add wins");
    // A remove without a context removes what the coordinator's quorum
    // read saw: every add acknowledged before it.
    b.sadd(b"cart", &[b"milk"], None).await.unwrap();
    a.srem(b"cart", &[b"milk"], &[], None).await.unwrap();
    assert!(members(b, b"cart", Some(3)).await.unwrap().is_empty());
    converged(&nodes, b"cart", Reading::Set(Vec::new())).await;
    // Operations that do not fit the namespace are refused, naming why.
    let e = a.incr(b"cart", 1, None).await.unwrap_err();
    assert!(
        e.to_string().contains("incr does not apply to a set"),
        "{e}"
    );
    let e = a.put(b"cart", b"v", &[], None).await.unwrap_err();
    assert!(e.to_string().contains("put does not apply"), "{e}");
    let e = a.get(b"cart", None).await.unwrap_err();
    assert!(e.to_string().contains("fetch it"), "{e}");
    cluster.stop().await.unwrap();
}

fn wall_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Whether `total` is `base` plus the sum of some of `maybe`.
fn within_subset_sums(total: i64, base: i64, maybe: &[i64]) -> bool {
    let mut sums = BTreeSet::from([base]);
    for m in maybe {
        let more: Vec<i64> = sums.iter().map(|s| s + m).collect();
        sums.extend(more);
    }
    sums.contains(&total)
}

/// Reads counter `key` through `node` at R = 3 (retrying while a link is
/// still reconnecting) and checks it is `acked` plus some of `unknown`;
/// returns the value.
async fn counted_at_r3(node: &Client, key: &[u8], acked: i64, unknown: &[i64]) -> i64 {
    let value = wait_for(WAIT, "a read at R = 3", || async {
        match node.fetch(key, Some(3)).await?.reading {
            Reading::Counter(v) => Ok(v),
            other => panic!("{other:?}"),
        }
    })
    .await
    .unwrap();
    assert!(
        within_subset_sums(value, acked, unknown),
        "{value} is not {acked} acknowledged plus some of {unknown:?}"
    );
    value
}

#[actix_rt::test]
async fn a_counter_counts_every_acknowledged_increment_across_partitions_and_restarts() {
    let mut cluster = Cluster::start(3).await.unwrap();
    let nodes = clients(&cluster, "hits").await;
    create(&nodes, "hits", "counter").await;
    let mut acked = 0i64;
    let mut unknown = Vec::new();
    // Ten clients, each incrementing by its own amount, in rounds.
    let round = |nodes: Vec<Client>| async move {
        join_all((0..10i64).map(|c| {
            let node = nodes[c as usize % nodes.len()].clone();
            async move { (c + 1, node.incr(b"visits", c + 1, None).await) }
        }))
        .await
    };
    let mut tally = |results: Vec<(i64, dynakv::Result<i64>)>| {
        for (by, done) in results {
            match done {
                Ok(_) => acked += by,
                Err(_) => unknown.push(by),
            }
        }
    };
    for _ in 0..3 {
        tally(round(nodes.clone()).await);
    }
    cluster.partition(&[2]).await;
    for _ in 0..3 {
        tally(round(nodes.clone()).await);
    }
    cluster.heal().await;
    // A restart gives node 1 a fresh writer identity; its old entry stays.
    cluster.restart_node(1).await.unwrap();
    let nodes = clients(&cluster, "hits").await;
    wait_for(WAIT, "the restarted node to serve", || async {
        nodes[1].fetch(b"visits", None).await
    })
    .await
    .unwrap();
    for _ in 0..3 {
        tally(round(nodes.clone()).await);
    }
    assert!(acked > 0);
    let value = counted_at_r3(&nodes[0], b"visits", acked, &unknown).await;
    converged(&nodes, b"visits", Reading::Counter(value)).await;
    let e = nodes[0].sadd(b"visits", &[b"x"], None).await.unwrap_err();
    assert!(
        e.to_string().contains("sadd does not apply to a counter"),
        "{e}"
    );
    let e = nodes[0].incr(b"visits", i64::MAX, None).await.unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn a_map_keeps_concurrent_register_values_or_the_latest_and_sums_counters() {
    let cluster = Cluster::start(3).await.unwrap();
    let mv = clients(&cluster, "profiles").await;
    create(&mv, "profiles", "map").await;
    let lww = clients(&cluster, "latest").await;
    create(&lww, "latest", "map-lww").await;
    // Node 2 cut off: each side writes the field "city" without seeing the
    // other's write (the cut-off side with W = 1), and both count logins.
    cluster.partition(&[2]).await;
    for nodes in [&mv, &lww] {
        nodes[0].hset(b"ann", b"city", b"Oslo", None).await.unwrap();
        nodes[0].hincr(b"ann", b"logins", 2, None).await.unwrap();
        // Rome is written on a later millisecond of the (shared) clock.
        let oslo = wall_ms();
        wait_for(WAIT, "the clock to move on", || async {
            check(wall_ms() > oslo, || "the same millisecond".into())
        })
        .await
        .unwrap();
        nodes[2]
            .hset(b"ann", b"city", b"Rome", Some(1))
            .await
            .unwrap();
        nodes[2].hincr(b"ann", b"logins", 5, Some(1)).await.unwrap();
    }
    cluster.heal().await;
    let field = |name: &str, value: FieldReading| MapField {
        name: name.as_bytes().to_vec(),
        value,
    };
    let values =
        |v: &[&str]| FieldReading::Values(v.iter().map(|s| s.as_bytes().to_vec()).collect());
    let both = Reading::Map(vec![
        field("city", values(&["Oslo", "Rome"])),
        field("logins", FieldReading::Count(7)),
    ]);
    // Every copy agrees; the registers keep both values, and a read of
    // the last-writer-wins map shows the later one only.
    converged(&mv, b"ann", both.clone()).await;
    converged(&lww, b"ann", both).await;
    // Converged copies do not mean every link is back: a read at R = 3
    // fails fast while one is still reconnecting.
    wait_for(WAIT, "every node to read at R = 3", || async {
        for node in &mv {
            node.fetch(b"ann", Some(3)).await?;
        }
        Ok(())
    })
    .await
    .unwrap();
    let (fields, context) = lww[1].hgetall(b"ann", Some(3)).await.unwrap();
    assert_eq!(fields[0], field("city", values(&["Rome"])));
    let (fields, _) = mv[1].hgetall(b"ann", Some(3)).await.unwrap();
    assert_eq!(fields[0], field("city", values(&["Oslo", "Rome"])));
    // A write that saw both resolves them; a removal takes what it saw.
    mv[1].hset(b"ann", b"city", b"Paris", None).await.unwrap();
    lww[1]
        .hdel(b"ann", &[b"city", b"logins"], &context, None)
        .await
        .unwrap();
    let (fields, _) = mv[0].hgetall(b"ann", Some(3)).await.unwrap();
    assert_eq!(fields[0], field("city", values(&["Paris"])));
    assert!(lww[0].hgetall(b"ann", Some(3)).await.unwrap().0.is_empty());
    // A set field: members added through two nodes, one removed with the
    // context of a read that saw it.
    let tags = |m: &[&str]| {
        let members = FieldReading::Members(m.iter().map(|s| s.as_bytes().to_vec()).collect());
        field("tags", members)
    };
    mv[0]
        .hsadd(b"bo", b"tags", &[b"red", b"blue"], None)
        .await
        .unwrap();
    mv[1]
        .hsadd(b"bo", b"tags", &[b"green"], None)
        .await
        .unwrap();
    let (fields, context) = mv[2].hgetall(b"bo", Some(3)).await.unwrap();
    assert_eq!(fields, vec![tags(&["blue", "green", "red"])]);
    mv[2]
        .hsrem(b"bo", b"tags", &[b"red"], &context, None)
        .await
        .unwrap();
    mv[0]
        .hsrem(b"bo", b"tags", &[b"green"], &[], None)
        .await
        .unwrap();
    let (fields, _) = mv[1].hgetall(b"bo", Some(3)).await.unwrap();
    assert_eq!(fields, vec![tags(&["blue"])]);
    let e = mv[0].hsadd(b"bo", b"tags", &[], None).await.unwrap_err();
    assert!(e.to_string().contains("hsadd names no member"), "{e}");
    let sets = clients(&cluster, "carts").await;
    create(&sets, "carts", "set").await;
    let e = sets[0].hsadd(b"c", b"f", &[b"x"], None).await.unwrap_err();
    assert!(
        e.to_string().contains("hsadd does not apply to a set"),
        "{e}"
    );
    cluster.stop().await.unwrap();
}

/// What the restart tests increment: a counter key, or a map's counter
/// field.
#[derive(Clone, Copy)]
enum Counted {
    Counter,
    MapField,
}

impl Counted {
    fn namespace(self) -> (&'static str, &'static str) {
        match self {
            Counted::Counter => ("tally", "counter"),
            Counted::MapField => ("users", "map"),
        }
    }

    async fn incr(self, node: &Client, by: i64) -> dynakv::Result<()> {
        match self {
            Counted::Counter => node.incr(b"k", by, None).await.map(|_| ()),
            Counted::MapField => node.hincr(b"k", b"logins", by, None).await,
        }
    }

    /// The writers' entries (a map's folds aside) in node `i`'s copy.
    async fn entries(self, cluster: &Cluster, i: usize) -> dynakv::Result<usize> {
        let stored = key_in(&Name::new(self.namespace().0)?, b"k")?;
        let read = cluster.node(i).replica.send(ReadLocal(stored));
        let local = read
            .await
            .map_err(|e| dynakv::Error::Internal(e.to_string()))??;
        Ok(match local.typed() {
            Some(dynakv::crdt::Typed::Counter(c)) => c.entries(),
            Some(dynakv::crdt::Typed::Map(map)) => map.count_writers().count(),
            _ => 0,
        })
    }

    /// The value read at R = 3.
    async fn value(self, node: &Client) -> dynakv::Result<i64> {
        Ok(match node.fetch(b"k", Some(3)).await?.reading {
            Reading::Counter(v) => v,
            Reading::Map(fields) => match &fields[..] {
                [
                    MapField {
                        value: FieldReading::Count(n),
                        ..
                    },
                ] => *n,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        })
    }
}

/// Node 1 restarts 20 times and increments after each start, as a fresh
/// writer each time; collection folds the retired writers' entries.
/// Checks the value, and returns the most entries node 1 held on the way
/// and each copy's once folded to at most `folded`.
async fn incremented_through_twenty_restarts(kind: Counted, folded: usize) -> (usize, Vec<usize>) {
    let mut cluster = Cluster::start_with(3, |c| {
        c.anti_entropy.gc_interval_ms = 100;
        c.anti_entropy.gc_grace_ms = 300;
        c.anti_entropy.keep_deleted_ms = 0;
    })
    .await
    .unwrap();
    let (ns, type_name) = kind.namespace();
    let nodes = clients(&cluster, ns).await;
    create(&nodes, ns, type_name).await;
    let (mut acked, mut unknown) = (0i64, Vec::new());
    let mut most = 0;
    for restart in 1..=20i64 {
        cluster.restart_node(1).await.unwrap();
        let node = cluster.client(1).await.unwrap().in_namespace(ns).unwrap();
        // Node 1 is a replica of every key (N = 3 of 3), so it mints.
        wait_for(WAIT, "the restarted node to serve", || async {
            node.fetch(b"k", None).await
        })
        .await
        .unwrap();
        match kind.incr(&node, restart).await {
            Ok(()) => acked += restart,
            Err(_) => unknown.push(restart),
        }
        most = most.max(kind.entries(&cluster, 1).await.unwrap());
    }
    let held = wait_for(WAIT, "every copy to fold the retired writers", || async {
        let mut held = Vec::new();
        for i in 0..3 {
            held.push(kind.entries(&cluster, i).await?);
        }
        check(held.iter().all(|&e| e <= folded), || {
            format!("entries per copy: {held:?}")
        })?;
        Ok(held)
    })
    .await
    .unwrap();
    let nodes = clients(&cluster, ns).await;
    let value = wait_for(WAIT, "a read at R = 3", || kind.value(&nodes[0]))
        .await
        .unwrap();
    assert!(
        within_subset_sums(value, acked, &unknown),
        "{value} is not {acked} acknowledged plus some of {unknown:?}"
    );
    cluster.stop().await.unwrap();
    (most, held)
}

#[actix_rt::test]
async fn a_counter_incremented_through_twenty_restarts_keeps_an_entry_per_writer_in_use() {
    // Each start of a node is a fresh writer, with its own entry in every
    // counter it increments.
    let (most, folded) = incremented_through_twenty_restarts(Counted::Counter, 3).await;
    println!("counter entries: at most {most} during 20 restarts, {folded:?} after folding");
    assert!(folded.iter().all(|&e| e >= 1));
}

#[actix_rt::test]
async fn a_map_counter_field_incremented_through_restarts_folds_its_retired_writers() {
    let (most, folded) = incremented_through_twenty_restarts(Counted::MapField, 1).await;
    println!("map counter entries: at most {most} during 20 restarts, {folded:?} after folding");
    assert!(
        most >= 10,
        "the retired writers' entries were there to fold: {most}"
    );
}

//! Measures the ring against the foundation issue's numbers with the default
//! Q = 1024 and N = 3, and prints them (`cargo test --test ring_balance -- --nocapture`):
//! - balance: max/mean replicas held per node <= 1.10 for 3 to 64 equal nodes;
//! - movement: a join moves at most 1.2x the ideal fraction 1/(n+1);
//! - weights: a weight-2 node holds 2x (+-10%) what a weight-1 node holds.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::collections::BTreeSet;

use dynakv::NodeId;
use dynakv::ownership::{Capacity, Move, Ownership};
use dynakv::partition::Partition;
use dynakv::ring::Ring;

const Q: u32 = 1024;
const N: usize = 3;

fn node(i: usize) -> NodeId {
    NodeId::new(format!("node{i:02}")).unwrap()
}

fn members(n: usize) -> Vec<Capacity> {
    (0..n).map(|i| Capacity::new(node(i), 1)).collect()
}

fn replica_balance(ring: &Ring) -> f64 {
    let counts: Vec<usize> = ring.replica_counts(N).into_iter().map(|c| c.1).collect();
    let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
    *counts.iter().max().unwrap() as f64 / mean
}

/// Fraction of (partition, replica) slots whose holder changed.
fn replica_movement(before: &Ring, after: &Ring) -> f64 {
    let mut changed = 0;
    for p in 0..Q {
        let old: BTreeSet<_> = before
            .preference_list(Partition(p), N)
            .into_iter()
            .collect();
        let new = after.preference_list(Partition(p), N);
        changed += new.iter().filter(|n| !old.contains(*n)).count();
    }
    changed as f64 / (Q as usize * N) as f64
}

fn complete(table: &mut Ownership, moves: &[Move]) {
    table.begin(moves);
    let receivers: BTreeSet<&NodeId> = moves.iter().map(|m| &m.to).collect();
    for r in receivers {
        let incoming = table.incoming(r);
        table.commit(r, &incoming);
    }
}

#[test]
fn founded_rings_are_balanced_from_3_to_64_nodes() {
    let mut report = Vec::new();
    for n in 3..=64 {
        let ring = Ring::new(&Ownership::found(Q, &members(n), N).unwrap());
        let balance = replica_balance(&ring);
        assert!(balance <= 1.10, "{n} nodes: max/mean replicas {balance:.3}");
        if [3, 8, 32, 64].contains(&n) {
            report.push(format!("{n}: {balance:.3}"));
        }
    }
    println!(
        "founded ring, max/mean replicas held: {}",
        report.join(", ")
    );
}

#[test]
fn growing_one_node_at_a_time_stays_balanced_and_moves_the_ideal_amount() {
    let mut table = Ownership::found(Q, &members(3), N).unwrap();
    let mut worst_balance: f64 = 0.0;
    let mut worst_owner_move: f64 = 0.0;
    let mut worst_replica_move: f64 = 0.0;
    for n in 3..64 {
        let before = Ring::new(&table);
        let moves = table.plan(&members(n + 1), N).unwrap();
        complete(&mut table, &moves);
        let after = Ring::new(&table);
        let ideal = 1.0 / (n + 1) as f64;
        let owner_move = moves.len() as f64 / f64::from(Q) / ideal;
        let replica_move = replica_movement(&before, &after) / ideal;
        let balance = replica_balance(&after);
        assert!(
            owner_move <= 1.2,
            "{n}->{}: owners moved {owner_move:.3}x ideal",
            n + 1
        );
        assert!(
            replica_move <= 1.2,
            "{n}->{}: replicas moved {replica_move:.3}x ideal",
            n + 1
        );
        assert!(
            balance <= 1.10,
            "{} nodes after joins: max/mean {balance:.3}",
            n + 1
        );
        if [3, 7, 31, 63].contains(&n) {
            println!(
                "join {n}->{}: owners moved {owner_move:.3}x ideal, replicas moved {replica_move:.3}x ideal, balance {balance:.3}",
                n + 1
            );
        }
        worst_balance = worst_balance.max(balance);
        worst_owner_move = worst_owner_move.max(owner_move);
        worst_replica_move = worst_replica_move.max(replica_move);
    }
    println!(
        "joins 3->64, worst: balance {worst_balance:.3}, owners moved {worst_owner_move:.3}x ideal, replicas moved {worst_replica_move:.3}x ideal"
    );
}

#[test]
fn a_weight_2_node_holds_twice_a_weight_1_node() {
    for n in [5, 10, 20] {
        let mut m = members(n - 1);
        let heavy = NodeId::new("heavy").unwrap();
        m.push(Capacity::new(heavy.clone(), 2));
        let ring = Ring::new(&Ownership::found(Q, &m, N).unwrap());
        for (what, counts) in [
            ("owned", ring.owned_counts()),
            ("replicas", ring.replica_counts(N)),
        ] {
            let h = counts.iter().find(|c| *c.0 == heavy).unwrap().1 as f64;
            let light: Vec<f64> = counts
                .iter()
                .filter(|c| *c.0 != heavy)
                .map(|c| c.1 as f64)
                .collect();
            let mean = light.iter().sum::<f64>() / light.len() as f64;
            let ratio = h / mean;
            println!("{n} nodes, one of weight 2: {what} ratio {ratio:.3}");
            assert!(
                (1.8..=2.2).contains(&ratio),
                "{n} nodes: {what} ratio {ratio:.3}"
            );
        }
    }
}

//! What membership gossip costs as the cluster grows, measured on the
//! shipped membership state machine (`dynakv::sim::scale`).
//!
//!     cargo run --release --features sim --example gossip_scale
//!     cargo run --release --features sim --example gossip_scale -- --nodes 100,500 --partitions 4096
//!
//! For each cluster size (default 100, 500, 1000 and 2000 nodes over
//! 16,384 partitions; one round is one gossip interval, 1 s), from a
//! formed cluster:
//! - steady state, over 10 rounds: bytes per gossip message, bytes sent
//!   per node per second, the CPU time of a round per node;
//! - a join (a new node seeded with one member): rounds until every node
//!   has its record, and until every view agrees (the new node's claims
//!   included), with the bytes and CPU of those rounds;
//! - a leave: rounds until every node sees the leaver leaving;
//! - a crash (the node just stops answering): rounds until every node
//!   routes around it (suspect or down);
//! - the time to recompute the ring from a view (`View::ring`).
//!
//! Prints one table. The cluster of 2,000 nodes holds some 3 GB.
//!
//!     cargo run --release --features sim --example gossip_scale -- --grow 1000
//!
//! instead founds a cluster of 3 nodes at Q = 256 and grows it to 1,000
//! (or the size given), a quarter more nodes at a time, splitting Q at a
//! member first whenever the nodes would own fewer than 8 partitions
//! each; prints each step: the splits and the rounds they took to reach
//! every node, the rounds until the joins settled (every view agreeing,
//! every member up, nothing moving: handoff is taken as instant), and the
//! fewest and most partitions a member owns.

use std::time::{Duration, Instant};

use dynakv::liveness::Health;
use dynakv::membership::Status;
use dynakv::sim::scale::{ROUND_MS, Scale, Traffic};

/// Rounds a change may take before the run gives up on it.
const PATIENCE: u64 = 200;

struct Row {
    nodes: usize,
    steady: Traffic,
    steady_cpu: Duration,
    join_known: u64,
    join_agreed: u64,
    change: Traffic,
    change_rounds: u64,
    change_cpu: Duration,
    leave_known: u64,
    crash_known: u64,
    ring: Duration,
}

/// Runs rounds until `done` holds; returns how many it took and their CPU
/// time.
fn until(scale: &mut Scale, done: impl Fn(&mut Scale) -> bool) -> (u64, Duration) {
    let began = Instant::now();
    let rounds = scale.rounds_until(PATIENCE, done).unwrap_or_else(|| {
        eprintln!("gave up after {PATIENCE} rounds");
        PATIENCE
    });
    (rounds, began.elapsed())
}

fn measure(nodes: usize, partitions: u32, seed: u64) -> Row {
    let mut scale = Scale::formed(nodes, partitions, seed);
    // Every node learns every other's incarnation first.
    until(&mut scale, Scale::agree);
    scale.take_traffic();
    let began = Instant::now();
    const STEADY: u32 = 10;
    for _ in 0..STEADY {
        scale.round();
    }
    let steady_cpu = began.elapsed() / STEADY / nodes as u32;
    let steady = scale.take_traffic();

    let joiner = scale.join();
    let id = scale.id(joiner);
    let (join_known, spent) = until(&mut scale, |s: &mut Scale| {
        s.count(|n| n.member(&id).is_some()) == s.running()
    });
    let (more, more_spent) = until(&mut scale, Scale::agree);
    let join_agreed = join_known + more;
    let change = scale.take_traffic();
    let change_cpu = (spent + more_spent) / join_agreed as u32 / nodes as u32;

    let leaver = scale.id(1);
    scale.leave(1);
    let (leave_known, _) = until(&mut scale, |s: &mut Scale| {
        s.count(|n| n.member(&leaver).map(|m| m.status) == Some(Status::Leaving)) == s.running()
    });

    scale.crash(2);
    let crashed = scale.id(2);
    let (crash_known, _) = until(&mut scale, |s: &mut Scale| {
        s.count(|n| n.health(&crashed) != Health::Up) == s.running()
    });

    let view = scale.node(0).view().clone();
    let began = Instant::now();
    const RINGS: u32 = 5;
    for _ in 0..RINGS {
        std::hint::black_box(view.ring());
    }
    let ring = began.elapsed() / RINGS;
    Row {
        nodes,
        steady,
        steady_cpu,
        join_known,
        join_agreed,
        change,
        change_rounds: join_agreed,
        change_cpu,
        leave_known,
        crash_known,
        ring,
    }
}

/// `--grow`: from 3 nodes at Q = 256 to `target` nodes.
fn grow(target: usize, seed: u64) {
    let began = Instant::now();
    let mut scale = Scale::formed(3, 256, seed);
    until(&mut scale, Scale::agree);
    println!(
        "nodes  joined  Q      splits  split rounds  join rounds  owned (fewest..most)  largest msg"
    );
    let grown = scale.grow(target, 8, PATIENCE, |g| {
        println!(
            "{:>5}  {:>6}  {:>5}  {:>6}  {:>12}  {:>11}  {:>20}  {:>11}",
            g.nodes,
            g.joined,
            g.partitions,
            g.splits,
            g.split_rounds,
            g.join_rounds,
            format!("{}..{}", g.fewest, g.most),
            g.largest
        );
    });
    if let Err(e) = grown {
        eprintln!("{e}");
        std::process::exit(1)
    }
    println!("grown to {target} nodes in {:?}", began.elapsed());
}

fn main() {
    let mut sizes = vec![100, 500, 1000, 2000];
    let mut partitions = 16_384u32;
    let mut seed = 1u64;
    let mut grow_to = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_default();
        let bad = |what: &str| -> ! {
            eprintln!("{arg}: {value:?} is not {what}");
            std::process::exit(2)
        };
        match arg.as_str() {
            "--nodes" => {
                sizes = value
                    .split(',')
                    .map(|s| s.parse().unwrap_or_else(|_| bad("a list of sizes")))
                    .collect()
            }
            "--partitions" => {
                partitions = value
                    .parse()
                    .ok()
                    .filter(|q: &u32| q.is_power_of_two())
                    .unwrap_or_else(|| bad("a power of two"))
            }
            "--seed" => seed = value.parse().unwrap_or_else(|_| bad("a number")),
            "--grow" => grow_to = Some(value.parse().unwrap_or_else(|_| bad("a number"))),
            _ => {
                eprintln!("unknown option {arg}; see the file's header");
                std::process::exit(2)
            }
        }
    }
    if let Some(target) = grow_to {
        return grow(target, seed);
    }
    println!(
        "nodes  steady B/msg  steady B/node/s  steady CPU/round/node  join known  join agreed  change B/msg  change B/node/s  change CPU/round/node  largest  leave known  crash known  ring (Q={partitions})"
    );
    for nodes in sizes {
        let r = measure(nodes, partitions, seed);
        let per_node_s = |t: &Traffic, rounds: u64| {
            t.bytes as f64 / r.nodes as f64 / (rounds as f64 * ROUND_MS as f64 / 1000.0)
        };
        println!(
            "{:>5}  {:>12.0}  {:>15.0}  {:>21?}  {:>10}  {:>11}  {:>12.0}  {:>15.0}  {:>21?}  {:>7}  {:>11}  {:>11}  {:?}",
            r.nodes,
            r.steady.bytes as f64 / r.steady.messages as f64,
            per_node_s(&r.steady, 10),
            r.steady_cpu,
            r.join_known,
            r.join_agreed,
            r.change.bytes as f64 / r.change.messages as f64,
            per_node_s(&r.change, r.change_rounds),
            r.change_cpu,
            r.change.largest,
            r.leave_known,
            r.crash_known,
            r.ring,
        );
    }
}

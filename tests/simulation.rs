//! The deterministic cluster simulator over a few hundred seeds (the
//! `simulate` example runs many more).

use dynakv::sim::{Outcome, SimConfig, check_seed, simulate};

/// The default run, with fsync = periodic (crashes are power losses) and/or
/// a join and a leave.
fn config(periodic: bool, scaling: bool) -> SimConfig {
    SimConfig {
        fsync_always: !periodic,
        scaling,
        ..SimConfig::default()
    }
}

/// Runs `seed` with a trace and checks that the trace has each of `wanted`.
fn traced(cfg: SimConfig, seed: u64, wanted: &[&str]) -> Outcome {
    let o = simulate(&SimConfig { trace: true, ..cfg }, seed);
    let all = o.trace.join("\n");
    for w in wanted {
        assert!(all.contains(w), "no {w:?} in the trace");
    }
    o
}

/// What the seeds' runs did, each checked.
#[derive(Default)]
struct Totals {
    events: u64,
    acked: usize,
    typed: usize,
    crashes_while_loading: usize,
    folded: usize,
}

fn run_seeds(cfg: &SimConfig, seeds: std::ops::Range<u64>) -> Totals {
    let mut t = Totals::default();
    for seed in seeds {
        match check_seed(cfg, seed) {
            Ok(o) => {
                t.events += o.events;
                t.acked += o.acked_writes;
                t.typed += o.typed_ops;
                t.crashes_while_loading += o.crashes_while_loading;
                t.folded += o.folded;
            }
            Err(report) => panic!("{report}"),
        }
    }
    t
}

#[test]
fn no_acknowledged_write_is_lost_and_replicas_converge_under_faults() {
    let Totals {
        events,
        acked,
        typed,
        folded,
        ..
    } = run_seeds(&SimConfig::default(), 1..201);
    // The runs did real work: many writes and counter and set operations
    // were acknowledged through crashes, partitions, drops and duplicates.
    assert!(acked > 20_000, "only {acked} acknowledged writes");
    assert!(typed > 5_000, "only {typed} counter and set operations");
    assert!(events > 1_000_000, "only {events} events");
    // Restarted nodes write as fresh writers, and tombstone collection
    // folded the retired ones out of counters, checked exactly all the same.
    assert!(folded > 0, "no counter folded");
}

#[test]
fn power_losses_under_periodic_fsync_still_converge() {
    let t = run_seeds(&config(true, false), 1..101);
    // A restarted node serves while its start-up scan rebuilds its trees;
    // some of the power losses hit a node in the middle of that scan.
    assert!(
        t.crashes_while_loading > 0,
        "no crash during a start-up scan"
    );
}

#[test]
fn a_join_and_a_leave_under_faults_lose_nothing() {
    run_seeds(&config(false, true), 1..101);
    run_seeds(&config(true, true), 1..51);
}

/// A founder is removed while down and comes back on its old disk, after
/// the others deleted and collected keys it holds: it is fenced out and
/// brings nothing back.
#[test]
fn a_removed_member_back_on_old_data_brings_nothing_back() {
    let removal = |periodic, scaling| SimConfig {
        removal: true,
        ..config(periodic, scaling)
    };
    run_seeds(&removal(false, false), 1..101);
    run_seeds(&removal(true, false), 1..51);
    run_seeds(&removal(false, true), 1..51);
    let o = traced(
        removal(false, false),
        2,
        &["removed through", "refuses n", "learns it is out"],
    );
    assert!(o.fenced > 0, "{o:?}");
}

/// Deletes kept 5 simulated seconds before collection (as
/// `anti_entropy.keep_deleted_ms` keeps them for a restore), in the runs
/// that collect the most (a removed member's keys are deleted): nothing
/// comes back, and collection still happens within the run.
#[test]
fn deletes_kept_before_collection_lose_nothing_and_are_still_collected() {
    let keep = |periodic| SimConfig {
        keep_deleted_ms: 5_000,
        removal: true,
        ..config(periodic, false)
    };
    run_seeds(&keep(false), 1..61);
    run_seeds(&keep(true), 1..31);
    let o = simulate(
        &SimConfig {
            trace: true,
            ..keep(false)
        },
        1,
    );
    assert!(
        o.trace
            .iter()
            .any(|l| l.contains(": collected ") && l.ends_with(" tombstones")),
        "no tombstone was collected"
    );
}

/// A founder is backed up, the operator deletes keys it holds, and the
/// node later loses its disks and is restored from the backup: with
/// deletes kept past the run (`keep_deleted_ms`), nothing acknowledged is
/// lost and no deleted value comes back. Without the keep, collection
/// forgets a delete before the restore and the checks find the deleted
/// value back (seed 22), so the scenario does reach the hazard.
#[test]
fn a_node_restored_from_a_backup_brings_no_delete_back() {
    let restore = |periodic, keep_deleted_ms| SimConfig {
        restore: true,
        keep_deleted_ms,
        ..config(periodic, false)
    };
    run_seeds(&restore(false, 100_000), 1..61);
    run_seeds(&restore(true, 100_000), 1..31);
    let o = traced(
        restore(false, 100_000),
        21,
        &["backup of n", "is restored from the backup"],
    );
    assert!(o.acked_writes > 0);
    let found =
        check_seed(&restore(false, 0), 22).expect_err("no delete came back without the keep");
    assert!(found.contains("although delete"), "{found}");
}

#[test]
fn partitions_really_move() {
    let o = traced(
        config(false, true),
        1,
        &[
            "starts, to join",
            "begins to leave",
            "committed",
            "has left",
        ],
    );
    assert!(o.fetched > 0 && o.released > 0, "{o:?}");
}

/// An operator doubles Q twice while clients write, nodes crash and the
/// network partitions (with a join and a leave in some runs): nothing
/// acknowledged is lost, and the replicas converge on the split ring.
#[test]
fn splits_while_clients_write_and_faults_run_lose_nothing() {
    let split = |periodic, scaling| SimConfig {
        split: true,
        ..config(periodic, scaling)
    };
    run_seeds(&split(false, false), 1..101);
    run_seeds(&split(true, false), 1..51);
    run_seeds(&split(false, true), 1..51);
    let o = traced(
        split(false, false),
        3,
        &["16 partitions are 32 now", "32 partitions are 64 now"],
    );
    assert!(o.splits == 2 && o.crashes > 0 && o.partitions > 0, "{o:?}");
}

/// Clean stops (as for a rolling upgrade) tell the peers, which route
/// around the node at once and take it back when it returns.
#[test]
fn clean_stops_that_tell_the_peers_lose_nothing() {
    let notices = |periodic| SimConfig {
        stop_notices: true,
        ..config(periodic, false)
    };
    run_seeds(&notices(false), 1..61);
    run_seeds(&notices(true), 1..31);
    let o = traced(notices(false), 1, &["telling its peers"]);
    assert!(o.stops > 0 && o.crashes > 0, "{o:?}");
}

#[test]
fn faults_are_really_injected() {
    let o = simulate(&SimConfig::default(), 7);
    assert!(o.crashes > 0 && o.partitions > 0, "{o:?}");
    assert!(o.failed_ops > 0, "faults should fail some operations");
    assert!(o.acked_writes > 0 && o.reads > 0);
}

#[test]
fn a_seed_replays_the_same_run_event_for_event() {
    let cfg = SimConfig::default();
    for seed in [1, 2, 99] {
        let (a, b) = (simulate(&cfg, seed), simulate(&cfg, seed));
        assert_eq!((a.events, a.digest), (b.events, b.digest), "seed {seed}");
        assert_eq!(a.acked_writes, b.acked_writes);
    }
    assert_ne!(simulate(&cfg, 1).digest, simulate(&cfg, 2).digest);
}

#[test]
fn a_trace_names_the_events_of_a_run() {
    traced(
        SimConfig::default(),
        3,
        &[
            "crash n",
            "restart n",
            "partition:",
            "heal",
            "minted",
            "acknowledged",
        ],
    );
}

/// The seeds that found bugs (see `tombstones::Ripening`,
/// `Replica::forget_writer`, `View::has_departed`,
/// `Replica::release_partition`, `Replica::handed_off`, `Map::totals`
/// and `FailureDetector::tick`'s end to a stop notice) keep passing.
#[test]
fn the_seeds_that_found_bugs_pass() {
    run_seeds(&SimConfig::default(), 1055..1056);
    run_seeds(&config(true, false), 81..82);
    run_seeds(&config(false, true), 73..74);
    run_seeds(&config(false, true), 1493..1494);
    let restore = SimConfig {
        restore: true,
        keep_deleted_ms: 100_000,
        ..SimConfig::default()
    };
    for seed in [554, 558, 1047] {
        run_seeds(&restore, seed..seed + 1);
    }
    let notices = SimConfig {
        stop_notices: true,
        ..SimConfig::default()
    };
    run_seeds(&notices, 1424..1425);
}

/// Runs rounds until `done` holds; how many it took (at most `limit`).
fn rounds_until(
    scale: &mut dynakv::sim::scale::Scale,
    limit: u64,
    done: impl Fn(&mut dynakv::sim::scale::Scale) -> bool,
) -> u64 {
    scale
        .rounds_until(limit, done)
        .unwrap_or_else(|| panic!("not done within {limit} rounds"))
}

/// Gossip at a few hundred nodes, on the shipped membership code (the
/// `gossip_scale` example measures up to 2,000).
#[test]
fn at_300_nodes_gossip_idles_in_small_messages_and_spreads_changes_in_a_few_rounds() {
    use dynakv::liveness::Health;
    use dynakv::membership::Status;
    use dynakv::sim::scale::Scale;

    let mut scale = Scale::formed(300, 1024, 7);
    rounds_until(&mut scale, 40, Scale::agree);
    scale.take_traffic();
    for _ in 0..5 {
        scale.round();
    }
    let steady = scale.take_traffic();
    assert!(steady.messages >= 2 * 5 * 300, "{steady:?}");
    assert!(steady.largest < 100, "a steady exchange of {steady:?}");

    let joiner = scale.join();
    let id = scale.id(joiner);
    let known = rounds_until(&mut scale, 20, |s| {
        s.count(|n| n.member(&id).is_some()) == s.running()
    });
    rounds_until(&mut scale, 20, Scale::agree);
    let change = scale.take_traffic();
    assert!(change.bytes > 10 * steady.bytes / 5, "{change:?}");

    let leaver = scale.id(3);
    scale.leave(3);
    rounds_until(&mut scale, 20, |s| {
        s.count(|n| n.member(&leaver).map(|m| m.status) == Some(Status::Leaving)) == s.running()
    });

    // Probes take 5 rounds to suspect; the suspicion then spreads.
    scale.crash(4);
    let crashed = scale.id(4);
    rounds_until(&mut scale, 25, |s| {
        s.count(|n| n.health(&crashed) != Health::Up) == s.running()
    });
    assert!(known <= 10, "the join took {known} rounds");
}

/// A cluster founded small grows by splitting as it grows (the
/// `gossip_scale` example's `--grow` takes 3 nodes at Q = 256 to 1,000):
/// here 3 nodes at Q = 64 to 70, each member keeping at least 8
/// partitions, every step settling with owners balanced.
#[test]
fn a_cluster_founded_small_grows_by_splitting_as_it_grows() {
    use dynakv::sim::scale::Scale;

    let mut scale = Scale::formed(3, 64, 3);
    rounds_until(&mut scale, 20, Scale::agree);
    let mut steps = Vec::new();
    scale.grow(70, 8, 100, |g| steps.push(g)).unwrap();
    let last = *steps.last().unwrap();
    assert_eq!((last.nodes, last.partitions), (70, 1024), "{steps:?}");
    assert_eq!(steps.iter().map(|g| g.splits).sum::<u32>(), 4, "{steps:?}");
    for g in &steps {
        assert!(g.fewest >= 8 && g.most - g.fewest <= 1, "{g:?}");
    }
}

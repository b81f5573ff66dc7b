//! Runs the deterministic cluster simulator over many seeds.
//!
//!     cargo run --release --features sim --example simulate -- --seeds 100000
//!
//! Options: --seeds N (default 1000), --start S (first seed, default 1),
//! --periodic (fsync = periodic: crashes are power losses), --scaling (a
//! node joins and another leaves during each run), --removal (a node is
//! removed while down and comes back on its old disk), --restore (a node
//! is backed up, loses its disks and is restored), --stop-notices (half
//! the crashes are clean stops that tell the peers), --split (Q doubles
//! twice while clients write), --keep-deleted MS
//! (each delete is kept that long before collection), --seed S (one
//! seed, with its trace). Exits 1 on the first violation, printing the seed
//! and the events that led to it.

use std::process::ExitCode;
use std::time::Instant;

use dynakv::sim::{SimConfig, check_seed, simulate};

fn main() -> ExitCode {
    let mut seeds = 1000u64;
    let mut start = 1u64;
    let mut one = None;
    let mut cfg = SimConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            let v = args.next().ok_or(format!("{name} needs a value"))?;
            v.parse()
                .map_err(|_| format!("{name}: {v:?} is not a number"))
        };
        let parsed = match arg.as_str() {
            "--seeds" => number("--seeds").map(|v| seeds = v),
            "--start" => number("--start").map(|v| start = v),
            "--seed" => number("--seed").map(|v| one = Some(v)),
            "--periodic" => {
                cfg.fsync_always = false;
                Ok(())
            }
            "--scaling" => {
                cfg.scaling = true;
                Ok(())
            }
            "--removal" => {
                cfg.removal = true;
                Ok(())
            }
            "--restore" => {
                cfg.restore = true;
                Ok(())
            }
            "--stop-notices" => {
                cfg.stop_notices = true;
                Ok(())
            }
            "--split" => {
                cfg.split = true;
                Ok(())
            }
            "--keep-deleted" => number("--keep-deleted").map(|v| cfg.keep_deleted_ms = v),
            other => Err(format!(
                "unknown argument {other:?} (see the file's header)"
            )),
        };
        if let Err(e) = parsed {
            eprintln!("simulate: {e}");
            return ExitCode::from(2);
        }
    }
    if let Some(seed) = one {
        let outcome = simulate(&SimConfig { trace: true, ..cfg }, seed);
        for line in &outcome.trace {
            println!("{line}");
        }
        println!("{outcome:#?}");
        return ExitCode::SUCCESS;
    }
    let began = Instant::now();
    let (mut events, mut acked, mut reads, mut typed, mut folded) =
        (0u64, 0usize, 0usize, 0usize, 0usize);
    for seed in start..start.saturating_add(seeds) {
        match check_seed(&cfg, seed) {
            Ok(o) => {
                events += o.events;
                acked += o.acked_writes;
                reads += o.reads;
                typed += o.typed_ops;
                folded += o.folded;
            }
            Err(report) => {
                eprintln!("{report}");
                return ExitCode::FAILURE;
            }
        }
        let done = seed - start + 1;
        if done.is_multiple_of(1000) {
            eprintln!(
                "{done} seeds, {events} events, {:.0} s",
                began.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "{seeds} seeds from {start} passed: {events} simulated events, {acked} acknowledged writes, {reads} reads and {typed} counter, set and map operations checked ({folded} counter folds), in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

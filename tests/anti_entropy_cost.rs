//! What anti-entropy costs: two replicas that agree exchange only roots; two
//! that differ in 100 keys exchange about those keys only, however many keys
//! they hold. CI runs it with 20,000 keys; the figures for a million:
//! `DYNAKV_AE_KEYS=1000000 cargo test --release --test anti_entropy_cost -- --nocapture`.

#![allow(clippy::unwrap_used)] // tests panic on purpose

use std::time::Instant;

use dynakv::anti_entropy::{ExchangeReport, exchange_locally};
use dynakv::partition::Partition;
use dynakv::replica::Replica;
use dynakv::store::MemStore;
use dynakv::version::{Actor, Context, Value};

const Q: u32 = 1024;

fn replica(actor: u64) -> Replica<MemStore> {
    Replica::open(
        MemStore::default(),
        MemStore::default(),
        Q,
        Actor(actor),
        100,
    )
    .unwrap()
    .0
}

fn sweep(a: &mut Replica<MemStore>, b: &mut Replica<MemStore>) -> ExchangeReport {
    let mut total = ExchangeReport::default();
    for p in 0..Q {
        total += &exchange_locally(a, b, Partition(p)).unwrap();
    }
    total
}

#[test]
fn exchange_cost_follows_the_difference_not_the_data() {
    let keys: usize = std::env::var("DYNAKV_AE_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let (mut a, mut b) = (replica(1), replica(2));
    let value = Value::Data(vec![7; 100]);
    for i in 0..keys {
        let key = format!("user:{i:08}");
        let (state, _) = a
            .update(key.as_bytes(), &Context::default(), value.clone(), None)
            .unwrap();
        b.merge(key.as_bytes(), &state, None).unwrap();
    }

    let agree = sweep(&mut a, &mut b);
    let agree_bytes = agree.bytes_sent + agree.bytes_received;
    println!(
        "{keys} keys in agreement: {agree_bytes} bytes ({:.1} KiB) over {} round trips, nothing repaired",
        agree_bytes as f64 / 1024.0,
        agree.round_trips
    );
    assert_eq!(
        agree.round_trips, Q as usize,
        "one root comparison per partition"
    );
    assert_eq!(agree.pulled + agree.pushed, 0);
    assert!(
        agree_bytes < 16 << 10,
        "agreement costs only roots: {agree_bytes} bytes"
    );

    // 100 differences: 50 keys changed on one side, 50 new keys on the other
    for i in 0..50 {
        let key = format!("user:{:08}", i * (keys / 50));
        let ctx = a.read(key.as_bytes()).unwrap().context();
        a.update(key.as_bytes(), &ctx, Value::Data(vec![8; 100]), None)
            .unwrap();
        b.update(
            format!("new:{i}").as_bytes(),
            &Context::default(),
            value.clone(),
            None,
        )
        .unwrap();
    }
    let start = Instant::now();
    let diff = sweep(&mut a, &mut b);
    let took = start.elapsed();
    let diff_bytes = diff.bytes_sent + diff.bytes_received;
    println!(
        "{keys} keys differing in 100: {diff_bytes} bytes ({:.1} KiB), {} repaired here and {} there, in {took:?}",
        diff_bytes as f64 / 1024.0,
        diff.pulled,
        diff.pushed
    );
    assert_eq!(diff.pulled + diff.pushed, 100);
    assert!(
        diff_bytes < 1 << 20,
        "100 differences cost under 1 MiB: {diff_bytes}"
    );
    assert_eq!(a.store().map, b.store().map);
    assert_eq!(sweep(&mut a, &mut b).pulled, 0);
}

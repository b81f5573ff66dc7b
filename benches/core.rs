//! Micro-benchmarks of the core's hot paths: ring lookups, DVV update and
//! merge, frame encode/decode, hash-tree updates, storage through the Replica
//! path (fjall and in memory). Before timing, it prints the
//! ring's balance and join movement for 3, 8, 32 and 64 nodes (the figures
//! the foundation issue asks for; `tests/ring_balance.rs` asserts them).
//!
//! `cargo bench --bench core`

#![allow(clippy::unwrap_used)] // benchmark setup panics on purpose

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dynakv::NodeId;
use dynakv::config::StorageSection;
use dynakv::merkle::{Leaves, item_hash, segment_of};
use dynakv::ownership::{Capacity, Ownership};
use dynakv::partition::Partition;
use dynakv::replica::Replica;
use dynakv::ring::Ring;
use dynakv::store::MemStore;
use dynakv::version::{Actor, Context, SiblingSet, Value};
use dynakv::wire::{ClientOp, ClientRequest, FrameCodec, Put};
use dynakv_actors::storage::Storage;

const Q: u32 = 1024;
const N: usize = 3;

fn members(n: usize) -> Vec<Capacity> {
    (0..n)
        .map(|i| Capacity::new(NodeId::new(format!("node{i:02}")).unwrap(), 1))
        .collect()
}

fn report_ring_figures() {
    for n in [3usize, 8, 32, 64] {
        let mut table = Ownership::found(Q, &members(n), N).unwrap();
        let counts: Vec<usize> = Ring::new(&table)
            .replica_counts(N)
            .iter()
            .map(|c| c.1)
            .collect();
        let mean = counts.iter().sum::<usize>() as f64 / n as f64;
        let balance = *counts.iter().max().unwrap() as f64 / mean;
        let moves = table.plan(&members(n + 1), N).unwrap();
        table.begin(&moves);
        let joiner = NodeId::new(format!("node{n:02}")).unwrap();
        let incoming = table.incoming(&joiner);
        table.commit(&joiner, &incoming);
        let moved = moves.len() as f64 / f64::from(Q) * (n + 1) as f64;
        println!(
            "ring {n} nodes: max/mean replicas {balance:.3}; join {n}->{}: {moved:.3}x ideal",
            n + 1
        );
    }
}

fn ring(c: &mut Criterion) {
    report_ring_figures();
    let mut g = c.benchmark_group("ring");
    for n in [3usize, 64] {
        let ring = Ring::new(&Ownership::found(Q, &members(n), N).unwrap());
        let keys: Vec<Vec<u8>> = (0..1024u32)
            .map(|i| format!("user:{i}").into_bytes())
            .collect();
        g.bench_with_input(BenchmarkId::new("preference_list", n), &ring, |b, ring| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % keys.len();
                let p = ring.partition_of(&keys[i]);
                black_box(ring.preference_list(p, N).len())
            })
        });
        let down = ring.nodes()[1].clone();
        g.bench_with_input(BenchmarkId::new("route_one_down", n), &ring, |b, ring| {
            let mut p = 0;
            b.iter(|| {
                p = (p + 1) % Q;
                black_box(ring.route(Partition(p), N, |x| *x != down).len())
            })
        });
    }
    g.bench_function("plan_join_63_to_64", |b| {
        let table = Ownership::found(Q, &members(63), N).unwrap();
        let grown = members(64);
        b.iter(|| black_box(table.plan(&grown, N).unwrap().len()))
    });
    g.finish();
}

/// A sibling set holding `n` concurrent siblings of 100 bytes.
fn siblings(n: usize) -> SiblingSet {
    let mut s = SiblingSet::new();
    for i in 0..n {
        s = s
            .update(
                &Context::default(),
                Value::Data(vec![i as u8; 100]),
                Actor(i as u64 % 5),
            )
            .unwrap();
    }
    s
}

fn version(c: &mut Criterion) {
    let mut g = c.benchmark_group("dvv");
    for n in [1usize, 10, 100] {
        let a = siblings(n);
        // the other replica saw the same history plus one newer write
        let b = a
            .update(&Context::default(), Value::Data(vec![7; 100]), Actor(9))
            .unwrap();
        g.bench_with_input(BenchmarkId::new("merge", n), &n, |bench, _| {
            bench.iter(|| black_box(a.merge(&b).sibling_count()))
        });
        let ctx = a.context();
        g.bench_with_input(
            BenchmarkId::new("update_with_context", n),
            &n,
            |bench, _| {
                bench.iter(|| {
                    black_box(
                        a.update(&ctx, Value::Data(vec![1; 100]), Actor(1))
                            .unwrap()
                            .sibling_count(),
                    )
                })
            },
        );
    }
    g.finish();
}

fn frames(c: &mut Criterion) {
    let codec = FrameCodec::default();
    let req = ClientRequest {
        id: 42,
        op: ClientOp::Put(Put {
            key: b"user:1234567".to_vec(),
            value: vec![0xab; 100],
            context: siblings(2).context().to_bytes(),
            w: None,
        }),
    };
    let frame = codec.to_frame(&req).unwrap();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("encode_put_100b", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            codec.encode(black_box(&req), &mut out).unwrap();
            black_box(out.len())
        })
    });
    g.bench_function("decode_put_100b", |b| {
        b.iter(|| {
            black_box(
                codec
                    .decode::<ClientRequest>(black_box(&frame))
                    .unwrap()
                    .unwrap()
                    .1,
            )
        })
    });
    g.finish();
}

fn tree(c: &mut Criterion) {
    let mut tree = Leaves::default();
    let keys: Vec<(usize, u64)> = (0..4096u32)
        .map(|i| {
            let k = format!("key{i}").into_bytes();
            (segment_of(&k, Q), item_hash(&k, &i.to_le_bytes()))
        })
        .collect();
    for &(s, h) in &keys {
        tree.update(s, None, Some(h));
    }
    let mut g = c.benchmark_group("merkle");
    g.bench_function("two_updates", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            let (s, h) = keys[i];
            tree.update(s, Some(h), Some(h ^ 0x5555));
            tree.update(s, Some(h ^ 0x5555), Some(h));
            black_box(&tree);
        })
    });
    g.bench_function("build_tree", |b| b.iter(|| black_box(tree.tree().root())));
    let mut other = tree.clone();
    for &(s, h) in keys.iter().step_by(400) {
        other.update(s, Some(h), None);
    }
    let (tree, other) = (tree.tree(), other.tree());
    let differing: BTreeSet<usize> = other.diff(&tree).into_iter().collect();
    g.bench_function(format!("diff_{}_segments", differing.len()), |b| {
        b.iter(|| black_box(tree.diff(&other).len()))
    });
    g.finish();
}

/// Storage through the Replica path: a coordinator's update (read, mint,
/// store, tree update) and a read, over fjall (no fsync, as with
/// `fsync = "periodic"` between syncs) and over the in-memory store.
fn storage(c: &mut Criterion) {
    let mut g = c.benchmark_group("replica");
    let value = Value::Data(vec![7; 100]);
    let dir = tempfile::tempdir().expect("a temp dir");
    let storage =
        Storage::open(dir.path(), &StorageSection::default(), "n1").expect("storage opens");
    let (mut fjall, _) =
        Replica::open(storage.data(), storage.hints(), 1024, Actor(1), 64).expect("replica opens");
    let (mut mem, _) = Replica::open(MemStore::default(), MemStore::default(), 1024, Actor(1), 64)
        .expect("replica opens");
    let keys: Vec<Vec<u8>> = (0..10_000)
        .map(|i| format!("key{i}").into_bytes())
        .collect();
    let mut i = 0;
    g.bench_function("fjall_update_100b", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let key = &keys[i];
            let ctx = fjall.read(key).expect("read").context();
            black_box(
                fjall
                    .update(key, &ctx, value.clone(), None)
                    .expect("update"),
            );
        })
    });
    g.bench_function("fjall_read", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(fjall.read(&keys[i]).expect("read"));
        })
    });
    g.bench_function("mem_update_100b", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let key = &keys[i];
            let ctx = mem.read(key).expect("read").context();
            black_box(mem.update(key, &ctx, value.clone(), None).expect("update"));
        })
    });
    g.finish();
}

criterion_group!(benches, ring, version, frames, tree, storage);
criterion_main!(benches);

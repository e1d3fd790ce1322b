//! How long does placement take per key? Owner lookup (the common case: the owner is
//! eligible), the full candidate order (needed only when the owner is not), for equal
//! and unequal weights, at cluster sizes people run.
//!
//! `cargo bench --bench placement`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tether::balance::{Table, key_hash};

fn ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.0.{}.{}:8080", i / 256, i % 256))
        .collect()
}

fn keys() -> Vec<u64> {
    (0..1024u32)
        .map(|i| key_hash(format!("session-{i:08}").as_bytes()))
        .collect()
}

fn lookup(c: &mut Criterion) {
    let keys = keys();
    let mut g = c.benchmark_group("placement");
    g.throughput(Throughput::Elements(keys.len() as u64));
    for n in [3usize, 10, 50] {
        let ids = ids(n);
        let equal = Table::new(ids.iter().map(|s| (s.as_str(), 1)));
        let weighted = Table::new(
            ids.iter()
                .enumerate()
                .map(|(i, s)| (s.as_str(), 1 + (i % 3) as u32)),
        );
        g.bench_with_input(
            BenchmarkId::new("owner_equal_weights", n),
            &equal,
            |b, t| {
                b.iter(|| {
                    keys.iter()
                        .map(|&k| t.owner(black_box(k)))
                        .fold(0, |a, o| a ^ o.unwrap_or(0))
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("owner_mixed_weights", n),
            &weighted,
            |b, t| {
                b.iter(|| {
                    keys.iter()
                        .map(|&k| t.owner(black_box(k)))
                        .fold(0, |a, o| a ^ o.unwrap_or(0))
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("full_order_equal_weights", n),
            &equal,
            |b, t| {
                b.iter(|| {
                    keys.iter()
                        .map(|&k| t.order(black_box(k))[0])
                        .fold(0, |a, o| a ^ o)
                })
            },
        );
    }
    g.finish();

    let mut g = c.benchmark_group("key_hash");
    g.throughput(Throughput::Elements(1));
    let session = "node01abcdefghij0123456789ABCDEF.node0";
    g.bench_function("jsessionid_38_bytes", |b| {
        b.iter(|| key_hash(black_box(session.as_bytes())))
    });
    g.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);

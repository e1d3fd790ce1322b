//! How long does placement take per key? Owner lookup (the common case: the owner is
//! eligible), the full candidate order (needed only when the owner is not), for equal
//! and unequal weights, at cluster sizes people run. Every time reported is for one key.
//!
//! `cargo bench --bench placement`

use criterion::{Bencher, BenchmarkId, Criterion, criterion_group, criterion_main};
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

/// One lookup per iteration, cycling through `keys`.
fn per_key<T>(b: &mut Bencher, keys: &[u64], lookup: impl Fn(u64) -> T) {
    let mut i = 0;
    b.iter(|| {
        i = (i + 1) % keys.len();
        lookup(black_box(keys[i]))
    })
}

fn placement(c: &mut Criterion) {
    let keys = keys();
    let mut g = c.benchmark_group("placement");
    for n in [3usize, 10, 50] {
        let ids = ids(n);
        let equal = Table::new(ids.iter().map(|s| (s.as_str(), 1)));
        let mixed = Table::new(
            ids.iter()
                .enumerate()
                .map(|(i, s)| (s.as_str(), 1 + (i % 3) as u32)),
        );
        g.bench_with_input(
            BenchmarkId::new("owner_equal_weights", n),
            &equal,
            |b, t| per_key(b, &keys, |k| t.owner(k)),
        );
        g.bench_with_input(
            BenchmarkId::new("owner_mixed_weights", n),
            &mixed,
            |b, t| per_key(b, &keys, |k| t.owner(k)),
        );
        g.bench_with_input(
            BenchmarkId::new("full_order_equal_weights", n),
            &equal,
            |b, t| per_key(b, &keys, |k| t.order(k)),
        );
    }
    g.finish();

    let session = "node01abcdefghij0123456789ABCDEF.node0";
    c.bench_function("key_hash/jsessionid_38_bytes", |b| {
        b.iter(|| key_hash(black_box(session.as_bytes())))
    });
}

criterion_group!(benches, placement);
criterion_main!(benches);

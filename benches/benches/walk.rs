//! Cost per list node and per rhashtable entry of the bounded walks, next
//! to a plain memcpy of the bytes they read (read the ratio per element).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ktstr_walker::layout::{BucketTableLayout, ListHeadLayout, RhashHeadLayout, RhashtableLayout};
use ktstr_walker::mem::SliceMem;
use ktstr_walker::translate::{DEFAULT_PAGE_OFFSET_BASE, Translator};
use ktstr_walker::walk::{HashLimits, Step, walk_list, walk_rhashtable};

const BASE: u64 = DEFAULT_PAGE_OFFSET_BASE;
const LH: ListHeadLayout = ListHeadLayout {
    struct_size: 16,
    next: 0,
    prev: 8,
};

/// Memory with a list of `n` nodes, 256 bytes apart (as list_heads inside
/// task_structs are spread out); the head at 0.
fn list(n: usize) -> Vec<u8> {
    let mut m = vec![0u8; 256 * (n + 2)];
    let addr = |i: usize| BASE + 256 * i as u64; // 0 = head
    for i in 0..=n {
        let next = addr((i + 1) % (n + 1));
        let prev = addr((i + n) % (n + 1));
        m[256 * i..256 * i + 8].copy_from_slice(&next.to_le_bytes());
        m[256 * i + 8..256 * i + 16].copy_from_slice(&prev.to_le_bytes());
    }
    m
}

/// An rhashtable at 0 with its bucket table at 0x1000 (256 buckets) and
/// `n` entries spread over the buckets, each chain ending in a nulls marker.
fn table(n: usize) -> Vec<u8> {
    let mut m = vec![0u8; 0x3000 + 64 * n];
    let put = |m: &mut Vec<u8>, at: usize, v: u64| m[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put(&mut m, 0, BASE + 0x1000);
    m[0x1000..0x1004].copy_from_slice(&256u32.to_le_bytes());
    for b in 0..256usize {
        put(&mut m, 0x1040 + 8 * b, (BASE + 0x1040 + 8 * b as u64) | 1);
    }
    for e in 0..n {
        let bucket = 0x1040 + 8 * (e % 256);
        let at = 0x3000 + 64 * e;
        let old = u64::from_le_bytes(m[bucket..bucket + 8].try_into().unwrap());
        put(&mut m, at, old);
        put(&mut m, bucket, BASE + at as u64);
    }
    m
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("walk_list");
    for n in [100usize, 10_000] {
        let bytes = list(n);
        let mem = SliceMem::new(0, &bytes);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("walk", n), &n, |b, _| {
            let mut t = Translator::default();
            b.iter(|| {
                walk_list(&mem, &mut t, &LH, black_box(BASE), u32::MAX, |_, _| {
                    Step::Continue
                })
            })
        });
        // Baseline: copying the same 16 bytes per node.
        let mut out = vec![0u8; 16 * n];
        g.bench_with_input(BenchmarkId::new("memcpy_same_bytes", n), &n, |b, _| {
            b.iter(|| {
                for (i, chunk) in out.chunks_exact_mut(16).enumerate() {
                    let at = 256 * (i + 1);
                    chunk.copy_from_slice(black_box(&bytes[at..at + 16]));
                }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("walk_rhashtable");
    let rht = RhashtableLayout {
        struct_size: 160,
        tbl: 0,
        nelems: None,
        key_len: None,
    };
    let bt = BucketTableLayout {
        struct_size: 64,
        size: 0,
        buckets: 64,
        nest: Some(4),
        future_tbl: Some(48),
    };
    let rh = RhashHeadLayout {
        struct_size: 8,
        next: 0,
    };
    for n in [100usize, 10_000] {
        let bytes = table(n);
        let mem = SliceMem::new(0, &bytes);
        g.throughput(Throughput::Elements(n as u64));
        let limits = HashLimits {
            max_entries: u32::MAX,
            max_chain: u32::MAX,
            ..HashLimits::default()
        };
        g.bench_with_input(BenchmarkId::new("walk", n), &n, |b, _| {
            let mut t = Translator::default();
            b.iter(|| {
                walk_rhashtable(
                    &mem,
                    &mut t,
                    (&rht, &bt, &rh),
                    black_box(BASE),
                    limits,
                    |_, _| Step::Continue,
                )
            })
        });
        let mut out = vec![0u8; 8 * n + 8 * 256];
        g.bench_with_input(BenchmarkId::new("memcpy_same_bytes", n), &n, |b, _| {
            b.iter(|| {
                out[..2048].copy_from_slice(black_box(&bytes[0x1040..0x1040 + 2048]));
                for (i, chunk) in out[2048..].chunks_exact_mut(8).enumerate() {
                    let at = 0x3000 + 64 * i;
                    chunk.copy_from_slice(black_box(&bytes[at..at + 8]));
                }
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);

//! Cost of one kernel-virtual translation (direct map, TLB hit, full
//! 4-level walk) next to the plain guest-physical read it enables.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ktstr_walker::mem::{GuestMem, SliceMem};
use ktstr_walker::translate::{
    DEFAULT_PAGE_OFFSET_BASE, Levels, PageTableRoot, Translator, TranslatorConfig,
};

const VMALLOC: u64 = 0xffff_c900_0000_0000;

/// 4 MiB of memory: a 4-level table chain at 0x1000.. mapping VMALLOC's
/// first 512 4 KiB pages onto 0x10_0000...
fn tables() -> Vec<u8> {
    let mut m = vec![0u8; 4 << 20];
    let mut put = |pa: usize, v: u64| m[pa..pa + 8].copy_from_slice(&v.to_le_bytes());
    let (pml4, pdpt, pd, pt) = (0x1000u64, 0x2000u64, 0x3000u64, 0x4000u64);
    put((pml4 + ((VMALLOC >> 39) & 511) * 8) as usize, pdpt | 3);
    put((pdpt + ((VMALLOC >> 30) & 511) * 8) as usize, pd | 3);
    put((pd + ((VMALLOC >> 21) & 511) * 8) as usize, pt | 3);
    for i in 0..512u64 {
        put((pt + i * 8) as usize, (0x10_0000 + i * 4096) | 3);
    }
    m
}

fn bench(c: &mut Criterion) {
    let bytes = tables();
    let mem = SliceMem::new(0, &bytes);
    let config = TranslatorConfig {
        root: Some(PageTableRoot {
            cr3: 0x1000,
            levels: Levels::Four,
            pti: false,
        }),
        ..TranslatorConfig::default()
    };
    let mut g = c.benchmark_group("translate");
    g.bench_function("baseline_read_u64_phys", |b| {
        b.iter(|| {
            let mut v = [0u8; 8];
            mem.read(black_box(0x10_0040), &mut v).unwrap();
            v
        })
    });
    let mut t = Translator::new(config);
    g.bench_function("direct_map", |b| {
        b.iter(|| t.translate(&mem, black_box(DEFAULT_PAGE_OFFSET_BASE + 0x10_0040)))
    });
    let mut t = Translator::new(config);
    g.bench_function("tlb_hit", |b| {
        b.iter(|| t.translate(&mem, black_box(VMALLOC + 0x40)))
    });
    let mut t = Translator::new(config);
    g.bench_function("walk_4_level", |b| {
        b.iter(|| {
            t.flush();
            t.translate(&mem, black_box(VMALLOC + 0x40))
        })
    });
    let mut t = Translator::new(config);
    g.bench_function("read_virt_u64_tlb_hit", |b| {
        b.iter(|| t.read_virt_pod::<u64, _>(&mem, black_box(VMALLOC + 0x40)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);

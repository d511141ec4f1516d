//! Capture cost on a synthetic kernel (walker-core's testkit, real-kernel
//! shaped with the compact layout) for 8/64/256 CPUs x 100/10k tasks, next
//! to a plain memcpy of as many bytes as the capture read. Targets on these
//! machines: <= 3x the memcpy, <= 100 ns per task, <= 2 us per CPU; read
//! the per-element throughput of the `cpus` and `tasks` groups.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ktstr_walker::capture::storage::{Capacity, CaptureStorage};
use ktstr_walker::capture::{Consts, Limits, Target, capture};
use ktstr_walker::testkit::{PerCpuStyle, SyntheticKernel, compact_layout};
use ktstr_walker::translate::Translator;

/// `cpus` CPUs; `tasks` tasks, every other one queued on a local DSQ
/// (round robin) and runnable, the rest sleeping.
fn kernel(cpus: usize, tasks: usize) -> SyntheticKernel {
    let mut k = SyntheticKernel::new(compact_layout(), cpus, PerCpuStyle::Absolute).unwrap();
    let sched = k.attach_scheduler("bench", 64).unwrap();
    let user = k.add_user_dsq(sched, 1);
    for i in 0..tasks {
        let t = k.add_task(i as i32 + 1, "worker");
        if i % 2 == 0 {
            let cpu = (i / 2) % cpus;
            k.make_runnable(t, cpu, 0);
            let dsq = if i % 4 == 0 { k.local_dsq(cpu) } else { user };
            k.enqueue(dsq, t);
        }
    }
    k
}

fn run(k: &SyntheticKernel, storage: &mut CaptureStorage) -> u64 {
    let target = Target {
        layout: &k.layout,
        symbols: &k.symbols,
        nr_cpus: k.nr_cpus() as u32,
        nr_nodes: 1,
        consts: Consts::default(),
    };
    let mut tr = Translator::default();
    let mut buf = storage.buf();
    capture(&k.mem(), &mut tr, &target, &Limits::default(), &mut buf);
    buf.health.bytes
}

fn bench(c: &mut Criterion) {
    for (group, per) in [("capture_per_task", true), ("capture_per_cpu", false)] {
        let mut g = c.benchmark_group(group);
        for &cpus in &[8usize, 64, 256] {
            for &tasks in &[100usize, 10_000] {
                if !per && tasks != 100 || per && cpus != 8 {
                    continue; // per task: vary tasks on 8 CPUs; per CPU: vary CPUs with 100 tasks
                }
                let k = kernel(cpus, tasks);
                let mut storage = CaptureStorage::new(Capacity::for_guest(cpus, tasks + 16));
                let bytes = run(&k, &mut storage) as usize;
                let id = format!("{cpus}cpus_{tasks}tasks");
                g.throughput(Throughput::Elements(if per { tasks } else { cpus } as u64));
                g.bench_with_input(BenchmarkId::new("capture", &id), &id, |b, _| {
                    b.iter(|| run(black_box(&k), &mut storage))
                });
                // Baseline: copying as many bytes as the capture read.
                let src = &k.bytes()[..bytes.min(k.bytes().len())];
                let mut dst = vec![0u8; src.len()];
                g.bench_with_input(BenchmarkId::new("memcpy_same_bytes", &id), &id, |b, _| {
                    b.iter(|| dst.copy_from_slice(black_box(src)))
                });
            }
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500)).sample_size(20);
    targets = bench
}
criterion_main!(benches);

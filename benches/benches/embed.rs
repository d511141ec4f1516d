//! The public entry point as a VMM uses it ([`Dumper`]): discovery once
//! per boot, then captures. A synthetic kernel (walker-core's testkit)
//! with page tables, so discovery walks them as on a real guest; 8/64 CPUs
//! x 100/10k tasks. Read per CPU and per task from the `embed_capture_*`
//! groups' element throughput; `embed_memcpy` copies the bytes one capture
//! read (its `health.bytes`, contiguously), the floor the capture is
//! compared with (printed as a ratio after each size).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ktstr_walker::capture::Consts;
use ktstr_walker::discover::VcpuRegs;
use ktstr_walker::embed::{Dumper, Kernel};
use ktstr_walker::render::Names;
use ktstr_walker::testkit::{PerCpuStyle, SyntheticKernel, compact_layout};

/// `cpus` CPUs; `tasks` tasks, every other one runnable and queued on a
/// local DSQ or a user DSQ, made discoverable.
fn guest(cpus: usize, tasks: usize) -> (SyntheticKernel, VcpuRegs, Kernel) {
    let mut k = SyntheticKernel::new(compact_layout(), cpus, PerCpuStyle::Absolute).unwrap();
    let (regs, banner) = k.discoverable();
    ktstr_benches::populate(&mut k, tasks);
    let kernel = Kernel::new(
        k.layout,
        Consts::default(),
        Names::default(),
        k.symbols,
        banner,
    );
    (k, regs, kernel)
}

fn bench(c: &mut Criterion) {
    for (cpus, tasks) in [(8, 100), (64, 10_000)] {
        let (k, regs, kernel) = guest(cpus, tasks);
        let mem = k.mem();
        let id = format!("{cpus}cpus_{tasks}tasks");
        c.bench_function(&format!("embed_discover/{id}"), |b| {
            b.iter(|| black_box(kernel.discover(&mem, regs).unwrap()))
        });
        let mut d = Dumper::discover(kernel.clone(), &mem, regs).unwrap();
        let needed = d.capture(&mem).needed();
        d.reserve(needed);
        let bytes = d.capture(&mem).health().bytes as usize;

        let mut g = c.benchmark_group("embed_capture_per_task");
        g.throughput(Throughput::Elements(tasks as u64));
        g.bench_function(BenchmarkId::from_parameter(&id), |b| {
            b.iter(|| black_box(d.capture(&mem).health().reads))
        });
        g.finish();
        let mut g = c.benchmark_group("embed_capture_per_cpu");
        g.throughput(Throughput::Elements(cpus as u64));
        g.bench_function(BenchmarkId::from_parameter(&id), |b| {
            b.iter(|| black_box(d.capture(&mem).health().reads))
        });
        g.finish();

        let src = k.bytes().get(..bytes).unwrap_or(k.bytes()).to_vec();
        let mut dst = vec![0u8; src.len()];
        c.bench_function(&format!("embed_memcpy/{id}"), |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&dst);
            })
        });
        // The ratio, measured directly over many rounds.
        let rounds = 200;
        let t = Instant::now();
        for _ in 0..rounds {
            black_box(d.capture(&mem).health().reads);
        }
        let capture = t.elapsed() / rounds;
        let t = Instant::now();
        for _ in 0..rounds {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        }
        let copy = t.elapsed().max(Duration::from_nanos(1)) / rounds;
        println!(
            "embed {id}: capture {capture:?} ({bytes} bytes), memcpy {copy:?}, ratio {:.1}, {:?}/task, {:?}/cpu",
            capture.as_secs_f64() / copy.as_secs_f64().max(1e-12),
            capture / tasks as u32,
            capture / cpus as u32,
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);

//! Capture cost on a synthetic kernel (walker-core's testkit with the
//! compact layout) for 8/64/256 CPUs x 100/10k tasks, next to a plain
//! memcpy of the same bytes: every (address, length) the capture read,
//! recorded once, copied again in the same order. `capture` is the part
//! done while the guest is paused ([`Capturer::capture_raw`]); `decode` is
//! the rest, done after the thaw ([`Capturer::decode`]). Targets on these
//! machines, for `capture`: <= 3x that memcpy, <= 100 ns per task, <= 2 us
//! per CPU; read the per-element throughput of the `capture_per_task` and
//! `capture_per_cpu` groups. A capture here is one of many by a
//! [`Capturer`] planned once; `capture_plan` is that one-time planning.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ktstr_walker::capture::storage::{Capacity, CaptureStorage};
use std::cell::RefCell;

use ktstr_walker::capture::{CaptureBuf, Capturer, Limits};
use ktstr_walker::mem::{GuestMem, MemError};
use ktstr_walker::testkit::{PerCpuStyle, SyntheticKernel, compact_layout};
use ktstr_walker::translate::Translator;

/// `cpus` CPUs; `tasks` tasks, every other one queued on a local DSQ
/// (round robin) and runnable, the rest sleeping.
fn kernel(cpus: usize, tasks: usize) -> SyntheticKernel {
    let mut k = SyntheticKernel::new(compact_layout(), cpus, PerCpuStyle::Absolute).unwrap();
    ktstr_benches::populate(&mut k, tasks);
    k
}

/// Guest memory that records every read it serves.
struct Recording<'a, M> {
    inner: &'a M,
    reads: RefCell<Vec<(u64, usize)>>,
}

impl<M: GuestMem> GuestMem for Recording<'_, M> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.reads.borrow_mut().push((gpa, buf.len()));
        self.inner.read(gpa, buf)
    }
}

/// The (address, length) of every read one capture does.
fn reads_of(c: &Capturer, k: &SyntheticKernel, storage: &mut CaptureStorage) -> Vec<(u64, usize)> {
    let mem = k.mem();
    let rec = Recording {
        inner: &mem,
        reads: RefCell::new(Vec::new()),
    };
    run_on(c, k, &rec, storage);
    rec.reads.into_inner()
}

/// The paused part of a capture of `k` over `mem`, into `storage`.
fn capture_raw<'s>(
    c: &Capturer,
    k: &SyntheticKernel,
    mem: &impl GuestMem,
    storage: &'s mut CaptureStorage,
) -> CaptureBuf<'s> {
    let mut tr = Translator::default();
    let mut buf = storage.buf();
    c.capture_raw(mem, &mut tr, &k.target(), &Limits::default(), &mut buf);
    buf
}

fn run_on(
    c: &Capturer,
    k: &SyntheticKernel,
    mem: &impl GuestMem,
    storage: &mut CaptureStorage,
) -> u64 {
    capture_raw(c, k, mem, storage).health.bytes
}

/// Time `iters` decodes, each of a fresh [`Capturer::capture_raw`].
fn time_decode(
    c: &Capturer,
    k: &SyntheticKernel,
    storage: &mut CaptureStorage,
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let mut buf = capture_raw(c, k, &k.mem(), storage);
        let t = Instant::now();
        c.decode(black_box(&mut buf));
        total += t.elapsed();
    }
    total
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
                let c = Capturer::new(&k.layout);
                let mut storage = CaptureStorage::new(Capacity::for_guest(cpus, tasks + 16));
                let reads = reads_of(&c, &k, &mut storage);
                let total: usize = reads.iter().map(|r| r.1).sum();
                let id = format!("{cpus}cpus_{tasks}tasks");
                g.throughput(Throughput::Elements(if per { tasks } else { cpus } as u64));
                g.bench_with_input(BenchmarkId::new("capture", &id), &id, |b, _| {
                    b.iter(|| run_on(black_box(&c), &k, &k.mem(), &mut storage))
                });
                g.bench_with_input(BenchmarkId::new("decode", &id), &id, |b, _| {
                    b.iter_custom(|iters| time_decode(&c, &k, &mut storage, iters))
                });
                // Baseline: the same reads as plain copies out of the same memory.
                let src = k.bytes();
                let mut dst = vec![0u8; total];
                g.bench_with_input(BenchmarkId::new("memcpy_same_bytes", &id), &id, |b, _| {
                    b.iter(|| {
                        let mut at = 0;
                        for &(gpa, len) in &reads {
                            let from = gpa as usize;
                            dst[at..at + len].copy_from_slice(black_box(&src[from..from + len]));
                            at += len;
                        }
                    })
                });
            }
        }
        g.finish();
    }
    // Once per kernel, not per capture: the same for every size.
    let layout = kernel(8, 0).layout;
    c.bench_function("capture_plan", |b| {
        b.iter(|| Capturer::new(black_box(&layout)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500)).sample_size(20);
    targets = bench
}
criterion_main!(benches);

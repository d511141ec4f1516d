//! What workers do, each kind of work in the module of its mechanism, and
//! what they measure while doing it ([`Meter`]).

mod memory;
mod messaging;
mod process;
mod timers;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ktstr_agent::proto::{Percentiles, Work};

/// Set by SIGTERM: the worker stops at its next iteration.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Latency samples kept for percentiles; past this, every other one is
/// dropped (the percentiles stay those of an even sample of the run).
const MAX_SAMPLES: usize = 1 << 18;

/// What a worker measures as it goes.
pub struct Meter {
    last: Instant,
    /// Longest gap between two iterations, minus sleeps asked for.
    pub max_gap: Duration,
    cpu: Option<u32>,
    /// Times seen on another CPU than the time before.
    pub migrations: u64,
    /// CPUs seen on.
    pub cpus: BTreeSet<u32>,
    /// Worst wakeup latency.
    pub wake_max: Duration,
    wake_sum: Duration,
    /// Wakeups measured.
    pub wakes: u64,
    samples: Vec<u32>,
    /// Keep one sample in `stride`.
    stride: u64,
    /// Memory work: pages on another node, pages checked.
    pub remote: Option<(u64, u64)>,
}

impl Meter {
    /// A meter starting now.
    pub fn new() -> Meter {
        Meter {
            last: Instant::now(),
            max_gap: Duration::ZERO,
            cpu: None,
            migrations: 0,
            cpus: BTreeSet::new(),
            wake_max: Duration::ZERO,
            wake_sum: Duration::ZERO,
            wakes: 0,
            samples: Vec::new(),
            stride: 1,
            remote: None,
        }
    }

    /// One iteration done; `slept` is sleep it asked for since the last.
    pub fn tick(&mut self, slept: Duration) {
        let now = Instant::now();
        let gap = now.duration_since(self.last).saturating_sub(slept);
        self.max_gap = self.max_gap.max(gap);
        self.last = now;
        // SAFETY: no arguments, no memory.
        let cpu = unsafe { libc::sched_getcpu() };
        if let Ok(cpu) = u32::try_from(cpu) {
            if self.cpu.is_some_and(|c| c != cpu) {
                self.migrations += 1;
            }
            self.cpu = Some(cpu);
            self.cpus.insert(cpu);
        }
    }

    /// One wakeup that came `latency` after it was due.
    pub fn wake(&mut self, latency: Duration) {
        self.wake_max = self.wake_max.max(latency);
        self.wake_sum += latency;
        self.wakes += 1;
        if self.wakes.is_multiple_of(self.stride) {
            if self.samples.len() >= MAX_SAMPLES {
                // Halve: keep every other sample, and from now on every
                // other one of what comes.
                let kept: Vec<u32> = self.samples.iter().step_by(2).copied().collect();
                self.samples = kept;
                self.stride *= 2;
            }
            self.samples
                .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        }
    }

    /// Mean wakeup latency.
    pub fn wake_avg(&self) -> Option<Duration> {
        (self.wakes > 0).then(|| self.wake_sum / self.wakes.max(1) as u32)
    }

    /// Wakeup latency percentiles.
    pub fn percentiles(&mut self) -> Option<Percentiles> {
        if self.samples.is_empty() {
            return None;
        }
        self.samples.sort_unstable();
        let n = self.samples.len();
        let at = |q: f64| {
            let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
            u64::from(self.samples[i])
        };
        Some(Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            samples: n as u64,
        })
    }
}

/// Busy work the compiler cannot remove.
pub fn burn(x: &mut u64, rounds: u32) {
    for _ in 0..rounds {
        *x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// Whether a worker whose run ends at `deadline` goes on.
pub fn going(deadline: Instant) -> bool {
    Instant::now() < deadline && !STOP.load(Ordering::Relaxed)
}

/// Do `work` until `deadline` (or SIGTERM); the units of work done.
pub fn run(work: Work, deadline: Instant, m: &mut Meter) -> Result<u64, String> {
    let mut x = 1u64;
    let mut iterations = 0u64;
    match work {
        Work::Spin => {
            while going(deadline) {
                burn(&mut x, 256);
                iterations += 1;
                m.tick(Duration::ZERO);
            }
        }
        Work::Yield => {
            while going(deadline) {
                burn(&mut x, 64);
                std::thread::yield_now();
                iterations += 1;
                m.tick(Duration::ZERO);
            }
        }
        Work::DutyCycle { run_us, sleep_us } => {
            iterations = timers::duty_cycle(run_us, sleep_us, deadline, m)
        }
        Work::Cyclic { interval_us } => iterations = timers::cyclic(interval_us, deadline, m),
        Work::Blocking { block_us } => iterations = timers::blocking(block_us, deadline, m)?,
        Work::ForkExit => iterations = process::fork(None, deadline, m)?,
        Work::ForkExec => iterations = process::fork(Some(c"/bin/busybox"), deadline, m)?,
        Work::PingPong => iterations = messaging::ping_pong(deadline, m)?,
        Work::Messages { pairs, sockets } => {
            iterations = messaging::messages(pairs, sockets, deadline, m)?
        }
        Work::ProducerConsumer { depth } => {
            iterations = messaging::producer_consumer(depth, deadline, m)?
        }
        Work::FutexHerd { waiters } => iterations = messaging::futex_herd(waiters, deadline, m)?,
        Work::MemTouch {
            mib,
            node,
            preferred,
        } => iterations = memory::touch(mib, node, preferred, deadline, m)?,
    }
    Ok(iterations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_of_the_samples_and_survive_halving() {
        let mut m = Meter::new();
        for us in 1..=1000u64 {
            m.wake(Duration::from_micros(us));
        }
        let p = m.percentiles().unwrap();
        assert_eq!((p.p50, p.p99, p.p999, p.samples), (500, 990, 999, 1000));
        let mut m = Meter::new();
        for i in 0..(MAX_SAMPLES as u64 * 3) {
            m.wake(Duration::from_micros(i % 100));
        }
        let p = m.percentiles().unwrap();
        assert!(p.samples <= MAX_SAMPLES as u64, "{p:?}");
        assert!((48..=51).contains(&p.p50), "{p:?}");
        assert_eq!(m.wakes, MAX_SAMPLES as u64 * 3);
    }

    #[test]
    fn every_kind_of_work_runs_on_this_host() {
        // The host stands in for the guest: the same code, real syscalls.
        for work in [
            Work::Spin,
            Work::Yield,
            Work::DutyCycle {
                run_us: 200,
                sleep_us: 200,
            },
            Work::Cyclic { interval_us: 500 },
            Work::Blocking { block_us: 300 },
            Work::ForkExit,
            Work::PingPong,
            Work::Messages {
                pairs: 2,
                sockets: false,
            },
            Work::Messages {
                pairs: 2,
                sockets: true,
            },
            Work::ProducerConsumer { depth: 8 },
            Work::FutexHerd { waiters: 3 },
            Work::MemTouch {
                mib: 4,
                node: None,
                preferred: false,
            },
        ]
        .into_iter()
        // busybox-static from ./setup.sh provides the exec target.
        .chain(
            std::path::Path::new("/bin/busybox")
                .exists()
                .then_some(Work::ForkExec),
        ) {
            let mut m = Meter::new();
            let n = run(work, Instant::now() + Duration::from_millis(150), &mut m)
                .unwrap_or_else(|e| panic!("{work:?}: {e}"));
            assert!(n > 0, "{work:?} did nothing");
            let wakes = !matches!(
                work,
                Work::Spin | Work::Yield | Work::ForkExit | Work::ForkExec | Work::MemTouch { .. }
            );
            if wakes {
                assert!(m.percentiles().is_some(), "{work:?} measured no wakeup");
            }
        }
    }
}

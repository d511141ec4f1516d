//! How busy each CPU was, window by window, from `/proc/stat`: the host
//! judges load balance from it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Windows kept at most (a 5-minute run at 500 ms).
const MAX_WINDOWS: usize = 600;
/// A CPU absent from `/proc/stat` in a window (offline).
pub const OFFLINE: u16 = u16::MAX;

/// A thread sampling `/proc/stat` every period until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Vec<u16>>>,
}

impl Sampler {
    /// Start sampling every `period`.
    pub fn start(period: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut windows = Vec::new();
            let mut prev = read();
            while !flag.load(Ordering::Relaxed) && windows.len() < MAX_WINDOWS {
                std::thread::sleep(period);
                let now = read();
                windows.push(busy(&prev, &now));
                prev = now;
            }
            windows
        });
        Sampler { stop, thread }
    }

    /// Stop, and each window's per-CPU busy share in thousandths
    /// ([`OFFLINE`] for a CPU that was not there).
    pub fn finish(self) -> Vec<Vec<u16>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// (busy, total) jiffies per CPU id; `None` for ids not listed.
fn read() -> Vec<Option<(u64, u64)>> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    parse(&text)
}

fn parse(text: &str) -> Vec<Option<(u64, u64)>> {
    let mut out: Vec<Option<(u64, u64)>> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(id) = f
            .next()
            .and_then(|c| c.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if id >= 8192 {
            continue;
        }
        let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
        let total: u64 = v.iter().take(8).sum();
        // idle and iowait are the 4th and 5th fields.
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        if out.len() <= id {
            out.resize(id + 1, None);
        }
        out[id] = Some((total.saturating_sub(idle), total));
    }
    out
}

fn busy(prev: &[Option<(u64, u64)>], now: &[Option<(u64, u64)>]) -> Vec<u16> {
    now.iter()
        .enumerate()
        .map(|(i, n)| match (prev.get(i).copied().flatten(), *n) {
            (Some((pb, pt)), Some((nb, nt))) if nt > pt => {
                ((nb.saturating_sub(pb)) * 1000 / (nt - pt)).min(1000) as u16
            }
            _ => OFFLINE,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_shares_come_from_the_jiffy_deltas_and_offline_cpus_show() {
        // Fixture: /proc/stat lines in the kernel's format.
        let a = parse(
            "cpu  9 0 9 9 0 0 0 0 0 0\ncpu0 100 0 0 100 0 0 0 0 0 0\ncpu1 0 0 0 200 0 0 0 0 0 0\nintr 5\n",
        );
        let b = parse("cpu0 175 0 0 125 0 0 0 0 0 0\ncpu2 5 0 0 5 0 0 0 0 0 0\n");
        assert_eq!(busy(&a, &b), vec![750, OFFLINE, OFFLINE]);
        let s = Sampler::start(Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(70));
        let w = s.finish();
        assert!(
            !w.is_empty() && w.iter().all(|cpus| !cpus.is_empty()),
            "{w:?}"
        );
    }
}

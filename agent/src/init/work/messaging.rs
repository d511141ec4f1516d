//! Work that wakes other threads: pipes and sockets, a queue, a futex.
//! The wakeup latency is the delay from the waker's clock reading to the
//! woken thread's.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Meter, going};

fn now_ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

/// Two threads, two pipes: A writes its clock, B wakes, notes the delay,
/// answers with its clock, A wakes and notes its delay.
pub fn ping_pong(deadline: Instant, m: &mut Meter) -> Result<u64, String> {
    let mut a_to_b = [0i32; 2];
    let mut b_to_a = [0i32; 2];
    // SAFETY: pipe() fills two fds we then own.
    if unsafe { libc::pipe(a_to_b.as_mut_ptr()) } != 0
        || unsafe { libc::pipe(b_to_a.as_mut_ptr()) } != 0
    {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    use std::os::fd::FromRawFd;
    // SAFETY: fresh fds from pipe(), each wrapped once.
    let (mut a_rx, mut a_tx, mut b_rx, mut b_tx) = unsafe {
        (
            std::fs::File::from_raw_fd(b_to_a[0]),
            std::fs::File::from_raw_fd(a_to_b[1]),
            std::fs::File::from_raw_fd(a_to_b[0]),
            std::fs::File::from_raw_fd(b_to_a[1]),
        )
    };
    let origin = Instant::now();
    let partner = std::thread::spawn(move || {
        let mut lat = Latencies::default();
        let mut buf = [0u8; 8];
        while b_rx.read_exact(&mut buf).is_ok() {
            lat.add(now_ns(origin).saturating_sub(u64::from_le_bytes(buf)));
            if b_tx.write_all(&now_ns(origin).to_le_bytes()).is_err() {
                break;
            }
        }
        lat
    });
    let mut rounds = 0u64;
    let mut buf = [0u8; 8];
    while going(deadline) {
        a_tx.write_all(&now_ns(origin).to_le_bytes())
            .map_err(|e| format!("ping: {e}"))?;
        a_rx.read_exact(&mut buf)
            .map_err(|e| format!("pong: {e}"))?;
        m.wake(Duration::from_nanos(
            now_ns(origin).saturating_sub(u64::from_le_bytes(buf)),
        ));
        rounds += 1;
        m.tick(Duration::ZERO);
    }
    drop(a_tx);
    partner
        .join()
        .map_err(|_| "ping-pong partner panicked")?
        .into_meter(m);
    Ok(rounds)
}

/// What another thread measured, for the worker's [`Meter`]: every
/// latency counted, the first [`Latencies::KEPT`] kept as samples.
#[derive(Default)]
struct Latencies {
    count: u64,
    max: u64,
    samples: Vec<u64>,
}

impl Latencies {
    const KEPT: usize = 1 << 16;

    fn add(&mut self, ns: u64) {
        self.count += 1;
        self.max = self.max.max(ns);
        if self.samples.len() < Self::KEPT {
            self.samples.push(ns);
        }
    }

    fn into_meter(self, m: &mut Meter) {
        for ns in self.samples {
            m.wake(Duration::from_nanos(ns));
        }
        m.wake_max = m.wake_max.max(Duration::from_nanos(self.max));
    }
}

/// Messages of hackbench's size.
const MESSAGE: usize = 100;

/// `pairs` sender threads each writing messages stamped with its clock to
/// a receiver thread, over a pipe or a Unix stream socket.
pub fn messages(
    pairs: u32,
    sockets: bool,
    deadline: Instant,
    m: &mut Meter,
) -> Result<u64, String> {
    let origin = Instant::now();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..pairs.max(1) {
        let (rx, tx): (Box<dyn Read + Send>, Box<dyn Write + Send>) = if sockets {
            let (a, b) =
                std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
            (Box::new(a), Box::new(b))
        } else {
            let (r, w) = super::timers::pipe()?;
            (
                Box::new(std::fs::File::from(r)),
                Box::new(std::fs::File::from(w)),
            )
        };
        senders.push(std::thread::spawn(move || {
            let mut tx = tx;
            let mut msg = [0u8; MESSAGE];
            while going(deadline) {
                msg[..8].copy_from_slice(&now_ns(origin).to_le_bytes());
                if tx.write_all(&msg).is_err() {
                    break;
                }
            }
        }));
        receivers.push(std::thread::spawn(move || {
            let mut rx = rx;
            let mut lat = Latencies::default();
            let mut msg = [0u8; MESSAGE];
            while rx.read_exact(&mut msg).is_ok() {
                let mut stamp = [0u8; 8];
                stamp.copy_from_slice(&msg[..8]);
                lat.add(now_ns(origin).saturating_sub(u64::from_le_bytes(stamp)));
            }
            lat
        }));
    }
    let mut delivered = 0;
    for s in senders {
        s.join().map_err(|_| "a sender panicked")?;
    }
    for r in receivers {
        let lat = r.join().map_err(|_| "a receiver panicked")?;
        delivered += lat.count;
        lat.into_meter(m);
    }
    m.tick(Duration::ZERO);
    Ok(delivered)
}

/// A producer thread stamping items into a bounded queue, a consumer
/// (this thread) taking them.
pub fn producer_consumer(depth: u32, deadline: Instant, m: &mut Meter) -> Result<u64, String> {
    let depth = depth.max(1) as usize;
    let queue = Arc::new((
        Mutex::new(std::collections::VecDeque::new()),
        Condvar::new(),
    ));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let origin = Instant::now();
    let producer = {
        let (queue, done) = (Arc::clone(&queue), Arc::clone(&done));
        std::thread::spawn(move || {
            let (lock, cv) = &*queue;
            while going(deadline) && !done.load(Ordering::Relaxed) {
                let Ok(mut q) = lock.lock() else { break };
                while q.len() >= depth && going(deadline) {
                    q = match cv.wait_timeout(q, Duration::from_millis(10)) {
                        Ok((q, _)) => q,
                        Err(_) => return,
                    };
                }
                q.push_back(now_ns(origin));
                cv.notify_all();
            }
        })
    };
    let (lock, cv) = &*queue;
    let mut items = 0u64;
    while going(deadline) {
        let mut q = lock.lock().map_err(|_| "queue poisoned")?;
        while q.is_empty() && going(deadline) {
            q = cv
                .wait_timeout(q, Duration::from_millis(10))
                .map_err(|_| "queue poisoned")?
                .0;
        }
        let now = now_ns(origin);
        while let Some(stamp) = q.pop_front() {
            m.wake(Duration::from_nanos(now.saturating_sub(stamp)));
            items += 1;
        }
        cv.notify_all();
        drop(q);
        m.tick(Duration::ZERO);
    }
    done.store(true, Ordering::Relaxed);
    cv.notify_all();
    producer.join().map_err(|_| "the producer panicked")?;
    Ok(items)
}

/// `waiters` threads sleep on one futex; this thread bumps it, stamps the
/// time and wakes them all, then waits until each has woken.
pub fn futex_herd(waiters: u32, deadline: Instant, m: &mut Meter) -> Result<u64, String> {
    let waiters = waiters.max(1);
    let word = Arc::new(AtomicU32::new(0));
    let stamp = Arc::new(AtomicU64::new(0));
    let woken = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let origin = Instant::now();
    let (lat_tx, lat_rx) = std::sync::mpsc::channel::<u64>();
    let mut threads = Vec::new();
    for _ in 0..waiters {
        let (word, stamp, woken, stop, lat_tx) = (
            Arc::clone(&word),
            Arc::clone(&stamp),
            Arc::clone(&woken),
            Arc::clone(&stop),
            lat_tx.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut seen = 0u32;
            while !stop.load(Ordering::Acquire) {
                futex_wait(&word, seen, Duration::from_millis(20));
                let now = word.load(Ordering::Acquire);
                if now != seen {
                    seen = now;
                    let _ =
                        lat_tx.send(now_ns(origin).saturating_sub(stamp.load(Ordering::Acquire)));
                    woken.fetch_add(1, Ordering::AcqRel);
                }
            }
        }));
    }
    drop(lat_tx);
    let mut rounds = 0u64;
    while going(deadline) {
        woken.store(0, Ordering::Release);
        stamp.store(now_ns(origin), Ordering::Release);
        word.fetch_add(1, Ordering::AcqRel);
        futex_wake_all(&word);
        // Every waiter reports once per round (or the run ends).
        while woken.load(Ordering::Acquire) < waiters && going(deadline) {
            std::thread::yield_now();
        }
        for l in lat_rx.try_iter() {
            m.wake(Duration::from_nanos(l));
        }
        rounds += 1;
        m.tick(Duration::ZERO);
    }
    stop.store(true, Ordering::Release);
    word.fetch_add(1, Ordering::AcqRel);
    futex_wake_all(&word);
    for t in threads {
        t.join().map_err(|_| "a waiter panicked")?;
    }
    for l in lat_rx.try_iter() {
        m.wake(Duration::from_nanos(l));
    }
    Ok(rounds)
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a futex wait on a live, aligned u32 with a bounded timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: a futex wake on a live, aligned u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

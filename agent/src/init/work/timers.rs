//! Work that sleeps: duty cycles, periodic timers, waits on a file
//! descriptor. The wakeup latency is how late each wakeup came.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::{Meter, burn, going};

/// Run `run_us`, sleep `sleep_us`, again.
pub fn duty_cycle(run_us: u64, sleep_us: u64, deadline: Instant, m: &mut Meter) -> u64 {
    let (run, sleep) = (
        Duration::from_micros(run_us),
        Duration::from_micros(sleep_us),
    );
    let mut x = 1u64;
    let mut iterations = 0;
    while going(deadline) {
        let busy_until = Instant::now() + run;
        while Instant::now() < busy_until {
            burn(&mut x, 64);
            m.tick(Duration::ZERO);
        }
        let before = Instant::now();
        std::thread::sleep(sleep);
        m.wake(before.elapsed().saturating_sub(sleep));
        m.tick(sleep);
        iterations += 1;
    }
    iterations
}

/// Wake every `interval_us` on an absolute schedule (cyclictest): a late
/// wakeup does not move the next one.
pub fn cyclic(interval_us: u64, deadline: Instant, m: &mut Meter) -> u64 {
    let interval = Duration::from_micros(interval_us.max(1));
    let mut next = Instant::now() + interval;
    let mut iterations = 0;
    while going(deadline) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        let woke = Instant::now();
        m.wake(woke.saturating_duration_since(next));
        m.tick(next.saturating_duration_since(now));
        iterations += 1;
        next += interval;
        // Fell more than a period behind: start over from now.
        if next < woke {
            next = woke + interval;
        }
    }
    iterations
}

/// Wait in `poll` for a pipe a helper thread writes `block_us` later.
pub fn blocking(block_us: u64, deadline: Instant, m: &mut Meter) -> Result<u64, String> {
    let (rx, tx) = pipe()?;
    let block = Duration::from_micros(block_us);
    let (go_tx, go_rx) = std::sync::mpsc::channel::<Instant>();
    let helper = std::thread::spawn(move || {
        // Each request is the time at which to write one byte.
        while let Ok(at) = go_rx.recv() {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            // SAFETY: writing one byte from a live buffer to our pipe.
            if unsafe { libc::write(tx.as_raw_fd(), [1u8].as_ptr().cast(), 1) } != 1 {
                break;
            }
        }
    });
    let mut iterations = 0;
    while going(deadline) {
        let due = Instant::now() + block;
        go_tx.send(due).map_err(|_| "blocking helper ended")?;
        let mut pfd = libc::pollfd {
            fd: rx.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a bounded timeout.
        let r = unsafe { libc::poll(&mut pfd, 1, (block_us / 1000 + 1000) as i32) };
        if r < 0 {
            return Err(format!("poll: {}", std::io::Error::last_os_error()));
        }
        let mut b = [0u8; 1];
        // SAFETY: reading one byte into a live buffer.
        unsafe { libc::read(rx.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        m.wake(Instant::now().saturating_duration_since(due));
        m.tick(block);
        iterations += 1;
    }
    drop(go_tx);
    let _ = helper.join();
    Ok(iterations)
}

/// A pipe, as (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fresh fds, each wrapped once.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

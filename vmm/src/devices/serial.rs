//! 8250 UARTs (vm-superio) on COM1 (console) and COM2 (host<->guest
//! channel), with bounded buffers on both directions.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::{BusEvent, PortDevice};

/// COM1 I/O base.
pub const COM1_BASE: u16 = 0x3f8;
/// COM2 I/O base.
pub const COM2_BASE: u16 = 0x2f8;
/// COM1's ISA IRQ.
pub const COM1_IRQ: u32 = 4;
/// COM2's ISA IRQ.
pub const COM2_IRQ: u32 = 3;
/// Ports a UART occupies.
pub const UART_PORTS: u16 = 8;
/// Default cap on bytes kept from one port's output.
pub const DEFAULT_OUTPUT_LIMIT: usize = 1 << 20;
/// Cap on host->guest bytes waiting for room in the UART's FIFO.
pub const INPUT_LIMIT: usize = 64 << 10;

/// Interrupt line of a UART: an eventfd registered as a KVM irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain byte buffers, still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct OutputInner {
    bytes: VecDeque<u8>,
    total: u64,
    closed: bool,
}

/// What a guest wrote to one port: the last `limit` bytes, a running total,
/// and a way to wait for a line.
#[derive(Debug)]
pub struct Output {
    inner: Mutex<OutputInner>,
    cv: Condvar,
    limit: usize,
}

impl Output {
    /// An empty buffer keeping at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Mutex::new(OutputInner::default()),
            cv: Condvar::new(),
            limit: limit.max(1),
        }
    }

    fn push(&self, data: &[u8]) {
        let mut g = lock(&self.inner);
        g.total += data.len() as u64;
        g.bytes.extend(data);
        let over = g.bytes.len().saturating_sub(self.limit);
        g.bytes.drain(..over);
        if data.contains(&b'\n') {
            self.cv.notify_all();
        }
    }

    /// Wake waiters for good: the VM stopped.
    pub(crate) fn close(&self) {
        lock(&self.inner).closed = true;
        self.cv.notify_all();
    }

    /// The bytes kept (the newest `limit`).
    pub fn bytes(&self) -> Vec<u8> {
        lock(&self.inner).bytes.iter().copied().collect()
    }

    /// The bytes kept, as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    /// The bytes written after the first `seen` (as far as they are still
    /// kept), the new total, and how many of them are lost: for a reader
    /// that follows the output as it grows.
    pub fn since(&self, seen: u64) -> (Vec<u8>, u64, u64) {
        let g = lock(&self.inner);
        let new = g.total.saturating_sub(seen);
        let kept = (new as usize).min(g.bytes.len());
        let start = g.bytes.len() - kept;
        (
            g.bytes.range(start..).copied().collect(),
            g.total,
            new - kept as u64,
        )
    }

    /// Bytes written in all, including those no longer kept.
    pub fn total(&self) -> u64 {
        lock(&self.inner).total
    }

    /// Wait until `done(text)` holds for the text kept (checked after each
    /// complete line), the VM stops, or `timeout` passes. Returns whether
    /// `done` held.
    pub fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.inner);
        let mut seen = u64::MAX;
        loop {
            if g.total != seen {
                seen = g.total;
                let (a, b) = g.bytes.as_slices();
                let text = String::from_utf8_lossy(&[a, b].concat()).into_owned();
                if done(&text) {
                    return true;
                }
            }
            let now = Instant::now();
            if g.closed || now >= deadline {
                return false;
            }
            // Lines usually wake us; the cap bounds a partial line's wait.
            let slice = (deadline - now).min(Duration::from_millis(200));
            g = self
                .cv
                .wait_timeout(g, slice)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The writer a UART sends guest output to.
#[derive(Debug, Clone)]
pub struct OutputSink(pub Arc<Output>);

impl io::Write for OutputSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One UART and its pending host->guest bytes.
pub struct Uart {
    serial: Serial<IrqTrigger, vm_superio::serial::NoEvents, OutputSink>,
    pending: VecDeque<u8>,
}

impl std::fmt::Debug for Uart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uart")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Uart {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: Arc<Output>) -> Self {
        Self {
            serial: Serial::new(IrqTrigger(irq), OutputSink(out)),
            pending: VecDeque::new(),
        }
    }

    fn refill(&mut self) {
        let room = self.serial.fifo_capacity().min(self.pending.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending.iter().take(room).copied().collect();
        let n = match self.serial.enqueue_raw_bytes(&chunk) {
            Ok(n) => n,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            // Only raising the interrupt failed: the bytes are queued and
            // a polling guest still reads them.
            Err(_) => room,
        };
        self.pending.drain(..n.min(self.pending.len()));
    }

    /// A guest read of register `offset`.
    pub fn read_reg(&mut self, offset: u8) -> u8 {
        let v = self.serial.read(offset);
        self.refill();
        v
    }

    /// A guest write of register `offset`.
    pub fn write_reg(&mut self, offset: u8, value: u8) {
        // The only error is a failed interrupt trigger; the guest will poll.
        let _ = self.serial.write(offset, value);
        self.refill();
    }

    /// Queue bytes for the guest to read; returns how many were accepted
    /// (the rest would exceed [`INPUT_LIMIT`]).
    pub fn send(&mut self, data: &[u8]) -> usize {
        let room = INPUT_LIMIT.saturating_sub(self.pending.len());
        let n = data.len().min(room);
        self.pending.extend(&data[..n]);
        self.refill();
        n
    }
}

impl PortDevice for Uart {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        if let (Some(b), Ok(reg)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.read_reg(reg);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<BusEvent> {
        if let (Some(&v), Ok(reg)) = (data.first(), u8::try_from(offset)) {
            self.write_reg(reg, v);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_follows_the_output_and_counts_what_was_lost() {
        let out = Output::new(4);
        out.push(b"ab");
        assert_eq!(out.since(0), (b"ab".to_vec(), 2, 0));
        out.push(b"cdef");
        assert_eq!(out.since(2), (b"cdef".to_vec(), 6, 0));
        out.push(b"ghij");
        assert_eq!(out.since(6), (b"ghij".to_vec(), 10, 0));
        out.push(b"klmnop");
        assert_eq!(out.since(10), (b"mnop".to_vec(), 16, 2), "2 bytes fell out");
    }

    #[test]
    fn output_keeps_only_the_newest_bytes() {
        let out = Output::new(8);
        out.push(b"0123456789\n");
        assert_eq!(out.bytes(), b"3456789\n");
        assert_eq!(out.total(), 11);
    }

    #[test]
    fn uart_transmits_to_output_and_bounds_input() {
        let out = Arc::new(Output::new(64));
        let mut u = Uart::new(EventFd::new(0).unwrap(), out.clone());
        for b in b"hi\n" {
            u.write_reg(0, *b);
        }
        assert_eq!(out.text(), "hi\n");
        assert!(out.wait_until(Duration::from_millis(10), |t| t.contains("hi")));
        assert!(!out.wait_until(Duration::from_millis(10), |t| t.contains("nope")));
        let big = vec![b'x'; INPUT_LIMIT * 2];
        let n = u.send(&big);
        assert_eq!(n, INPUT_LIMIT);
        // The guest reads the receive buffer register byte by byte.
        assert_eq!(u.read_reg(0), b'x');
    }
}

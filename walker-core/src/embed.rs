//! The whole freeze-and-dump path for a VMM, in three calls (feature
//! `std`):
//!
//! ```no_run
//! # fn pause() {} fn resume() {}
//! # fn f(mem: &impl ktstr_walker::GuestMem, cr3: u64, cr4: u64) -> Result<(), Box<dyn std::error::Error>> {
//! use ktstr_walker::discover::VcpuRegs;
//! use ktstr_walker::embed::{Dumper, Kernel};
//! use ktstr_walker::kernel::vmlinux::Vmlinux;
//!
//! let kernel = Kernel::from_vmlinux(&Vmlinux::open("vmlinux")?)?; // once per kernel
//! let mut dumper = Dumper::discover(kernel, mem, VcpuRegs { cr3, cr4 })?; // once per boot
//! pause();
//! let captured = dumper.capture(mem); // reads only; no allocation
//! resume();
//! println!("{}", captured.report(None).to_text());
//! # Ok(()) }
//! ```
//!
//! [`Kernel`] is what the vmlinux says (BTF layout, enum names, link-time
//! symbols, `linux_banner`); [`Dumper`] adds what the running guest says
//! ([`crate::discover`]) and owns the capture's plans, translator and
//! buffers, sized before any pause. [`Dumper::capture`] is the only part
//! that needs the guest paused: it reads guest memory within
//! [`Limits::max_bytes`], never writes it, never allocates, and every walk
//! in it is bounded. Decoding and rendering ([`Captured::report`]) happen
//! after the resume.

use std::sync::Arc;
use std::time::Instant;
use std::vec::Vec;

use crate::capture::storage::{Capacity, CaptureStorage};
use crate::capture::{CaptureBuf, Capturer, Consts, Health, Limits, Target};
use crate::discover::{DiscoverError, Discovered, VcpuRegs, discover};
use crate::kernel::vmlinux::{Vmlinux, VmlinuxError};
use crate::layout::Layout;
use crate::mem::GuestMem;
use crate::render::bpf::{BpfLate, BpfLimits, BpfReport};
use crate::render::{Names, PauseSplit, RenderContext, Report, Symbolizer, TextSymbols};
use crate::symbols::Symbols;
use crate::translate::Translator;

/// Tasks a [`Dumper`] has room for before its first capture says how many
/// there are (a booted distribution kernel with a few workloads has a few
/// hundred).
pub const DEFAULT_TASKS: usize = 4096;
/// User DSQs and cgroups a [`Dumper`] has room for.
pub const DEFAULT_EXTRA: usize = 1024;

/// What a vmlinux says about its kernel: the capture's layout and plans,
/// enum names, link-time symbols and `linux_banner`. Build it once per
/// kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    layout: Layout,
    consts: Consts,
    names: Names,
    link: Symbols,
    banner: Vec<u8>,
    capturer: Capturer,
    /// Text symbols for the exit's backtrace (link-time addresses).
    text: Option<Arc<TextSymbols>>,
}

impl Kernel {
    /// From a vmlinux's BTF, symbols (its `.symtab`, or its kallsyms tables)
    /// and banner; `HZ` defaults to 250 for ages (see [`Kernel::with_hz`]).
    pub fn from_vmlinux<S: AsRef<[u8]>>(vmlinux: &Vmlinux<S>) -> Result<Self, VmlinuxError> {
        let btf = vmlinux.btf()?;
        // Without kallsyms tables the backtrace shows bare addresses.
        let text = vmlinux
            .kallsyms()
            .and_then(|k| TextSymbols::from_kallsyms(&k))
            .ok();
        let kernel = Self::new(
            btf.layout(),
            btf.consts(),
            Names::from_btf(&btf, None),
            *vmlinux.link_symbols(),
            vmlinux.banner().to_vec(),
        );
        Ok(match text {
            Some(t) => kernel.with_text_symbols(t),
            None => kernel,
        })
    }

    /// The same kernel naming backtrace addresses with `text` (link-time
    /// addresses; the guest's slide is applied at render).
    pub fn with_text_symbols(mut self, text: TextSymbols) -> Self {
        self.text = Some(Arc::new(text));
        self
    }

    /// From parts: `link` are link-time addresses, `banner` the vmlinux's
    /// `linux_banner` without its NUL.
    pub fn new(
        layout: Layout,
        consts: Consts,
        names: Names,
        link: Symbols,
        banner: Vec<u8>,
    ) -> Self {
        Self {
            capturer: Capturer::new(&layout),
            layout,
            consts,
            names,
            link,
            banner,
            text: None,
        }
    }

    /// The same kernel with `CONFIG_HZ` = `hz` for jiffies-to-time.
    pub fn with_hz(mut self, hz: u64) -> Self {
        self.names.hz = hz;
        self
    }

    /// The struct layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Link-time symbol addresses.
    pub fn link_symbols(&self) -> &Symbols {
        &self.link
    }

    /// Enum names and HZ.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Find this kernel in `mem` (see [`crate::discover`]).
    pub fn discover<M: GuestMem + ?Sized>(
        &self,
        mem: &M,
        vcpu: VcpuRegs,
    ) -> Result<Discovered, DiscoverError> {
        let image = crate::discover::KernelImage {
            symbols: &self.link,
            banner: &self.banner,
        };
        discover(mem, vcpu, &image)
    }
}

/// One guest: its kernel, what discovery found, and the capture's
/// translator and buffers.
#[derive(Debug)]
pub struct Dumper {
    kernel: Arc<Kernel>,
    found: Discovered,
    tr: Translator,
    storage: CaptureStorage,
    limits: Limits,
}

impl Dumper {
    /// Discover the guest running `kernel` in `mem` from one vCPU's
    /// registers, and size the buffers for its `nr_cpu_ids` and
    /// [`DEFAULT_TASKS`] tasks. Reads guest memory (a few hundred reads);
    /// run it paused, or accept that a running guest may change under it
    /// (what it reads is set at boot).
    pub fn discover<M: GuestMem + ?Sized>(
        kernel: impl Into<Arc<Kernel>>,
        mem: &M,
        vcpu: VcpuRegs,
    ) -> Result<Self, DiscoverError> {
        let kernel = kernel.into();
        let found = kernel.discover(mem, vcpu)?;
        Ok(Self::new(kernel, found))
    }

    /// A dumper for a guest whose translation and symbols are already
    /// known (e.g. found by [`crate::discover::discover`] before).
    pub fn new(kernel: impl Into<Arc<Kernel>>, found: Discovered) -> Self {
        let cpus = found.nr_cpu_ids as usize;
        let capacity = Capacity {
            cpus,
            dsqs: cpus.saturating_mul(2).saturating_add(DEFAULT_EXTRA),
            queued: DEFAULT_TASKS,
            runnable: DEFAULT_TASKS,
            tasks: DEFAULT_TASKS,
            cgroups: DEFAULT_EXTRA,
        };
        Self {
            kernel: kernel.into(),
            tr: found.translator(),
            found,
            storage: CaptureStorage::new(capacity),
            limits: Limits::default(),
        }
    }

    /// What discovery found.
    pub fn discovered(&self) -> &Discovered {
        &self.found
    }

    /// The kernel.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The buffers' capacities.
    pub fn capacity(&self) -> Capacity {
        self.storage.capacity()
    }

    /// Make room for `capacity` (allocates: not while the guest is paused).
    pub fn reserve(&mut self, capacity: Capacity) {
        if self.storage.capacity() != capacity {
            self.storage = CaptureStorage::new(capacity);
        }
    }

    /// The capture's bounds (a byte budget, list lengths).
    pub fn limits_mut(&mut self) -> &mut Limits {
        &mut self.limits
    }

    /// Check, with one read, that the translation still reads the
    /// kernel's banner (e.g. the guest rebooted): before a capture whose
    /// results would otherwise be garbage.
    pub fn check<M: GuestMem + ?Sized>(&mut self, mem: &M) -> Result<(), DiscoverError> {
        let va = self
            .found
            .symbols
            .linux_banner
            .ok_or(DiscoverError::MissingSymbol("linux_banner"))?;
        let mut buf = [0u8; 64];
        let n = self.kernel.banner.len().min(buf.len());
        let (want, got) = (self.kernel.banner.get(..n), buf.get_mut(..n));
        let (Some(want), Some(got)) = (want, got) else {
            return Err(DiscoverError::BadBanner);
        };
        self.tr.flush();
        self.tr
            .read_virt(mem, va, got)
            .map_err(|source| DiscoverError::Read {
                what: "linux_banner",
                source,
            })?;
        if got != want {
            return Err(DiscoverError::Mismatch("translator"));
        }
        Ok(())
    }

    /// Capture the paused guest's sched_ext state: reads only, within the
    /// byte budget, no allocation, no formatting. The result borrows the
    /// buffers until it is reported or dropped.
    pub fn capture<M: GuestMem + ?Sized>(&mut self, mem: &M) -> Captured<'_> {
        self.capture_with(mem, &[])
    }

    /// [`Dumper::capture`], with each vCPU's registers (from the VMM or a
    /// core's notes): the report then shows what each was executing, its
    /// RIP and the return addresses on its kernel stack, named.
    pub fn capture_with<M: GuestMem + ?Sized>(
        &mut self,
        mem: &M,
        vcpus: &[crate::capture::vcpus::VcpuState],
    ) -> Captured<'_> {
        let start = Instant::now();
        let Dumper {
            kernel,
            found,
            tr,
            storage,
            limits,
        } = self;
        // The guest ran since the last capture: its page tables may differ.
        tr.flush();
        let target = Target {
            layout: &kernel.layout,
            symbols: &found.symbols,
            nr_cpus: found.nr_cpu_ids,
            nr_nodes: found.nr_node_ids,
            consts: kernel.consts,
        };
        let mut buf = storage.buf();
        kernel
            .capturer
            .capture_raw(mem, tr, &target, limits, &mut buf);
        crate::capture::vcpus::capture(mem, tr, vcpus, &mut buf.vcpus);
        Captured {
            capture_ns: start.elapsed().as_nanos() as u64,
            buf,
            kernel,
            symbols: &found.symbols,
            slide: found.slide,
            tr,
        }
    }
}

/// A capture, raw until reported.
#[derive(Debug)]
pub struct Captured<'d> {
    buf: CaptureBuf<'d>,
    kernel: &'d Kernel,
    symbols: &'d Symbols,
    /// The guest kernel's KASLR slide, for naming text addresses.
    slide: u64,
    capture_ns: u64,
    /// The capture's translator, for the reads after the thaw.
    tr: &'d mut Translator,
}

impl Captured<'_> {
    /// How long the capture's reads took (ns).
    pub fn capture_ns(&self) -> u64 {
        self.capture_ns
    }

    /// Reads, bytes and faults of the capture.
    pub fn health(&self) -> &Health {
        &self.buf.health
    }

    /// The raw records (CPU and task values are decoded by
    /// [`Captured::report`]).
    pub fn buf(&self) -> &CaptureBuf<'_> {
        &self.buf
    }

    /// The capacities that would have held everything this capture saw
    /// (what it kept plus what it counted and dropped): pass them to
    /// [`Dumper::reserve`], after the resume, when they exceed
    /// [`Dumper::capacity`].
    pub fn needed(&self) -> Capacity {
        let n = |len: usize, dropped: u64| len.saturating_add(dropped as usize);
        let b = &self.buf;
        Capacity {
            cpus: n(b.cpus.len(), b.cpus.dropped()),
            dsqs: n(b.dsqs.len(), b.dsqs.dropped()),
            queued: n(b.queued.len(), b.queued.dropped()),
            runnable: n(b.runnable.len(), b.runnable.dropped()),
            tasks: n(b.tasks.len(), b.tasks.dropped()),
            cgroups: n(b.cgroups.len(), b.cgroups.dropped()),
        }
    }

    /// Decode and render, once the guest runs again. `pause` is what the
    /// caller measured of the pause window, if anything; the capture's own
    /// time is always reported in `health.pause.capture_ns`.
    pub fn report(mut self, pause: Option<Pause>) -> Report {
        self.render(pause)
    }

    /// [`Captured::report`], with what the paused capture left for later
    /// read from `mem` (the running guest, or the core the capture read):
    /// the BPF scheduler's BTF, which names its globals, and its arrays
    /// over the paused budget (see [`crate::render::bpf`]).
    pub fn report_after_thaw<M: GuestMem + ?Sized>(
        mut self,
        pause: Option<Pause>,
        mem: &M,
    ) -> Report {
        // The guest ran since the capture: its page tables may differ.
        self.tr.flush();
        let late = BpfLate::read(
            &self.buf,
            &self.kernel.layout,
            mem,
            self.tr,
            &BpfLimits::default(),
        );
        let mut report = self.render(pause);
        report.bpf = BpfReport::build(&self.buf, Some(&late));
        report
    }

    fn render(&mut self, pause: Option<Pause>) -> Report {
        self.kernel.capturer.decode(&mut self.buf);
        let p = pause.unwrap_or_default();
        let split = PauseSplit {
            stop_ns: p.stop_ns,
            capture_ns: self.capture_ns,
            resume_ns: p.resume_ns,
        };
        let ctx = RenderContext {
            layout: &self.kernel.layout,
            symbols: self.symbols,
            names: &self.kernel.names,
            pause_ns: p.total_ns,
            pause: Some(split),
            symbolizer: self.kernel.text.as_deref().map(|table| Symbolizer {
                table,
                slide: self.slide,
            }),
        };
        Report::from_capture(&self.buf, &ctx)
    }
}

/// What a caller measured of a pause window (ns).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pause {
    /// From asking to stop until the vCPUs ran again.
    pub total_ns: Option<u64>,
    /// Stopping the vCPUs.
    pub stop_ns: Option<u64>,
    /// Resuming them.
    pub resume_ns: Option<u64>,
}

impl Pause {
    /// A pause whose stop, capture and resume were timed with the three
    /// instants around them: `stopping` before asking to stop, `stopped`
    /// when stopped, `resuming` after the capture, `resumed` when running.
    pub fn timed(stopping: Instant, stopped: Instant, resuming: Instant, resumed: Instant) -> Self {
        let ns = |a: Instant, b: Instant| b.saturating_duration_since(a).as_nanos() as u64;
        Self {
            total_ns: Some(ns(stopping, resumed)),
            stop_ns: Some(ns(stopping, stopped)),
            resume_ns: Some(ns(resuming, resumed)),
        }
    }
}

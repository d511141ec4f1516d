//! The VM: KVM objects, guest memory, UARTs, one thread per vCPU, and
//! freeze/thaw.
//!
//! Lifecycle: [`Vm::boot`] builds everything and starts the vCPU threads;
//! the VM runs until the guest powers off, reboots or triple-faults, a vCPU
//! fails, [`Vm::stop`] is called, or [`Vm::wait`] times out. Dropping a
//! [`Vm`] stops it and joins its threads; every fd (KVM, VM, vCPUs,
//! eventfds) is owned and closed with it.
//!
//! Freeze ([`Vm::freeze`]): raise the freeze flag, kick each vCPU thread
//! with [`kick_signal`] (its handler sets that vCPU's `immediate_exit`, so
//! a kick that lands just before `KVM_RUN` still returns at once), wait
//! until every vCPU has parked and recorded its registers, save kvmclock,
//! run the caller's capture on the frozen memory, restore kvmclock (the
//! guest does not see the frozen time), and release the vCPUs.

use std::cell::Cell;
use std::io::Cursor;
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use std::{fmt, io, ptr};

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE, KVM_PIT_SPEAKER_DUMMY,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, kvm_clock_data, kvm_mp_state,
    kvm_pit_config, kvm_run, kvm_segment, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::KernelLoader;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::layout::{self, E820Entry, LayoutError, MemoryLayout};
use crate::serial::{self, Output, Uart};
use crate::topology::Topology;
use crate::walker::kernel::image::{ImageError, KernelImage};
use crate::walker::{GuestMem, MemError};
use crate::{acpi, cpuid};

/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Where [`Boot::Code`] is loaded and every vCPU starts.
pub const CODE_ADDR: u64 = 0x10_0000;
/// Largest [`Boot::Code`].
pub const CODE_MAX: usize = 0x10_0000;
/// [`Boot::Code`]: vCPU `i` starts with `EBX = COUNTER_ADDR + 64 * i`, a
/// cache line of its own for a test loop to count in.
pub const COUNTER_ADDR: u64 = 0x20_0000;
/// Default time a freeze waits for every vCPU to park.
pub const DEFAULT_PARK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long [`Vm::stop`] waits for the vCPU threads to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll slice of the bounded waits.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// What the VM runs.
#[derive(Debug, Clone)]
pub enum Boot {
    /// A Linux kernel (bzImage, vmlinux ELF or build directory) entered at
    /// its PVH entry point.
    Kernel {
        /// The image.
        image: PathBuf,
        /// Kernel command line.
        cmdline: String,
        /// Initramfs, passed as the first PVH module.
        initramfs: Option<PathBuf>,
    },
    /// Raw 32-bit code for tests and benchmarks: loaded at [`CODE_ADDR`],
    /// every vCPU starts there in flat protected mode (paging off) with
    /// `EBX` = its counter at [`COUNTER_ADDR`] and `ESI` = its index.
    Code(Vec<u8>),
}

/// How to build a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// CPU topology.
    pub topology: Topology,
    /// Guest RAM in MiB, split evenly over the NUMA nodes.
    pub memory_mib: u64,
    /// What to run.
    pub boot: Boot,
    /// Bytes of output kept per serial port.
    pub output_limit: usize,
    /// How long a freeze waits for every vCPU to park.
    pub park_timeout: Duration,
}

impl VmConfig {
    /// A kernel VM with 256 MiB, no initramfs and `cmdline`.
    pub fn kernel(topology: Topology, image: impl Into<PathBuf>, cmdline: &str) -> Self {
        Self {
            topology,
            memory_mib: 256,
            boot: Boot::Kernel {
                image: image.into(),
                cmdline: cmdline.to_string(),
                initramfs: None,
            },
            output_limit: serial::DEFAULT_OUTPUT_LIMIT,
            park_timeout: DEFAULT_PARK_TIMEOUT,
        }
    }

    /// A VM running `code` on every vCPU, with 64 MiB.
    pub fn code(topology: Topology, code: &[u8]) -> Self {
        Self {
            topology,
            memory_mib: 64,
            boot: Boot::Code(code.to_vec()),
            output_limit: serial::DEFAULT_OUTPUT_LIMIT,
            park_timeout: DEFAULT_PARK_TIMEOUT,
        }
    }
}

/// Why a VM could not be built or operated.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A KVM ioctl failed.
    #[error("KVM {what}: {source}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The memory size does not work.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Guest memory could not be set up or written.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The kernel image could not be read.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// linux-loader refused the kernel.
    #[error("loading the kernel: {0}")]
    Load(#[source] linux_loader::loader::Error),
    /// The kernel has no PVH entry point.
    #[error("{0} has no PVH entry point (kernel built without CONFIG_PVH?)")]
    NoPvhEntry(PathBuf),
    /// The command line is unusable.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// The initramfs could not be read.
    #[error("initramfs {path}: {source}")]
    Initramfs {
        /// Its path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The initramfs does not fit in guest RAM.
    #[error(
        "initramfs of {size} bytes does not fit between the kernel's end {kernel_end:#x} and {top:#x}"
    )]
    InitramfsTooBig {
        /// Its size.
        size: u64,
        /// End of the kernel.
        kernel_end: u64,
        /// Top of low RAM.
        top: u64,
    },
    /// The ACPI tables outgrew their reserved area.
    #[error("ACPI tables take {0} bytes, more than the {max} reserved", max = layout::ACPI_MAX)]
    AcpiTooBig(usize),
    /// [`Boot::Code`] is too large.
    #[error("guest code is {0} bytes, more than {CODE_MAX}")]
    CodeTooBig(usize),
    /// Writing the boot parameters failed.
    #[error("writing PVH boot parameters: {0}")]
    BootParams(String),
    /// The kick signal's handler could not be installed.
    #[error("installing the vCPU kick signal handler: {0}")]
    Signal(String),
    /// A vCPU thread could not be started.
    #[error("starting vCPU thread {index}: {source}")]
    Thread {
        /// vCPU index.
        index: u32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The VM has stopped.
    #[error("the VM is not running ({0})")]
    NotRunning(ExitReason),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off.
    PowerOff,
    /// The guest rebooted (ACPI, keyboard controller or port 0xcf9 reset).
    Reset,
    /// A vCPU triple-faulted.
    TripleFault {
        /// vCPU index.
        vcpu: u32,
    },
    /// [`Vm::stop`] or drop.
    HostRequest,
    /// [`Vm::wait`] timed out.
    Timeout,
    /// KVM reported an internal error (e.g. an instruction its emulator
    /// cannot handle).
    InternalError {
        /// vCPU index.
        vcpu: u32,
        /// `kvm_run.internal.suberror` (1: emulation failure).
        suberror: u32,
        /// The vCPU's RIP afterwards.
        rip: u64,
    },
    /// KVM could not enter the guest.
    FailEntry {
        /// vCPU index.
        vcpu: u32,
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// `KVM_RUN` failed.
    VcpuError {
        /// vCPU index.
        vcpu: u32,
        /// errno.
        errno: i32,
    },
    /// An exit this VMM does not handle.
    Unhandled {
        /// vCPU index.
        vcpu: u32,
        /// What it was.
        what: String,
    },
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Reset => write!(f, "guest reset"),
            ExitReason::TripleFault { vcpu } => write!(f, "vCPU {vcpu} triple-faulted"),
            ExitReason::HostRequest => write!(f, "stopped by the host"),
            ExitReason::Timeout => write!(f, "timed out"),
            ExitReason::InternalError {
                vcpu,
                suberror,
                rip,
            } => write!(
                f,
                "vCPU {vcpu}: KVM internal error, suberror {suberror} at RIP {rip:#x}"
            ),
            ExitReason::FailEntry { vcpu, reason } => {
                write!(f, "vCPU {vcpu}: VM entry failed, reason {reason:#x}")
            }
            ExitReason::VcpuError { vcpu, errno } => {
                write!(f, "vCPU {vcpu}: KVM_RUN failed, errno {errno}")
            }
            ExitReason::Unhandled { vcpu, what } => write!(f, "vCPU {vcpu}: unhandled {what}"),
        }
    }
}

/// A vCPU's registers as it parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuState {
    /// vCPU index (Linux CPU number when the kernel enumerates the MADT).
    pub index: u32,
    /// Its APIC ID.
    pub apic_id: u32,
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Page-table root.
    pub cr3: u64,
    /// CR4 (LA57 tells 5-level paging).
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// errno when the registers could not be read (then they are 0).
    pub regs_errno: Option<i32>,
}

/// What a freeze saw and cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreezeReport {
    /// Every vCPU that parked, by index.
    pub vcpus: Vec<VcpuState>,
    /// vCPUs that did not park within the timeout: the capture ran with
    /// them still going, so the report is degraded.
    pub not_parked: Vec<u32>,
    /// From the first kick until every vCPU had parked (or the timeout).
    pub park: Duration,
    /// Time spent in the capture.
    pub capture: Duration,
    /// The pause window: from the first kick until the vCPUs were released.
    pub pause: Duration,
    /// Whether kvmclock was saved and restored across the freeze.
    pub clock_restored: bool,
}

impl FreezeReport {
    /// Whether some vCPU did not park.
    pub fn degraded(&self) -> bool {
        !self.not_parked.is_empty()
    }
}

/// The frozen VM, as the capture sees it.
#[derive(Debug)]
pub struct Frozen<'a> {
    /// Guest memory.
    pub mem: &'a VmMemory,
    /// Registers of the parked vCPUs.
    pub vcpus: &'a [VcpuState],
    /// vCPUs that did not park.
    pub not_parked: &'a [u32],
}

/// Guest RAM (vm-memory regions, one or more per NUMA node), readable by
/// the walker through [`GuestMem`].
#[derive(Debug)]
pub struct VmMemory {
    mem: GuestMemoryMmap,
    layout: MemoryLayout,
}

impl VmMemory {
    /// The vm-memory object.
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Where RAM is, per NUMA node.
    pub fn layout(&self) -> &MemoryLayout {
        &self.layout
    }
}

impl GuestMem for VmMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let len = buf.len() as u64;
        gpa.checked_add(len)
            .ok_or(MemError::Overflow { gpa, len })?;
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| MemError::Unmapped { gpa, len })
    }
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`: `SIGRTMIN + 2`.
/// Embedders must not use it for anything else.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 2
}

thread_local! {
    /// The `kvm_run` of the vCPU this thread runs, for the kick handler.
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = KVM_RUN_PTR.try_with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's vCPU's kvm_run mapping;
            // the thread clears it before the VcpuFd (and mapping) drops.
            unsafe { ptr::write_volatile(ptr::addr_of_mut!((*run).immediate_exit), 1) };
        }
    });
}

fn install_kick_handler() -> Result<(), VmError> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(VmError::Signal)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct Ctl {
    epoch: u64,
    frozen: bool,
    parked: Vec<Option<VcpuState>>,
    running: Vec<bool>,
    exit: Option<ExitReason>,
}

struct Devices {
    com1: Uart,
    com2: Uart,
}

struct Shared {
    ctl: Mutex<Ctl>,
    cv: Condvar,
    stop: AtomicBool,
    freeze: AtomicBool,
    devices: Mutex<Devices>,
    console: Arc<Output>,
    channel: Arc<Output>,
    /// Threads to kick; an entry is removed before its thread is joined.
    threads: Mutex<Vec<Option<libc::pthread_t>>>,
}

impl Shared {
    fn kick_all(&self) {
        for t in lock(&self.threads).iter().flatten() {
            // SAFETY: the thread has not been joined (entries are cleared
            // before joining), so its pthread_t is valid.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
    }

    fn request_stop(&self, reason: ExitReason) {
        {
            let mut c = lock(&self.ctl);
            if c.exit.is_none() {
                tracing::debug!(%reason, "VM stopping");
                c.exit = Some(reason);
            }
            self.stop.store(true, Ordering::SeqCst);
            self.cv.notify_all();
        }
        self.kick_all();
        self.console.close();
        self.channel.close();
    }
}

/// A running VM.
pub struct Vm {
    vm_fd: VmFd,
    mem: Arc<VmMemory>,
    shared: Arc<Shared>,
    handles: Mutex<Vec<Option<JoinHandle<()>>>>,
    topology: Topology,
    e820: Vec<E820Entry>,
    park_timeout: Duration,
    freeze_lock: Mutex<()>,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("topology", &self.topology)
            .field("e820", &self.e820)
            .finish_non_exhaustive()
    }
}

fn segment(selector: u16, type_: u8, s: u8, limit: u32, g: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(s == 1),
        s,
        l: 0,
        g,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Flat 32-bit protected mode, paging off: the PVH entry state.
fn set_flat32(vcpu: &VcpuFd, rip: u64, rbx: u64, rsi: u64) -> Result<(), VmError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("get sregs"))?;
    let code = segment(0x08, 0xb, 1, 0xffff_ffff, 1);
    let data = segment(0x10, 0x3, 1, 0xffff_ffff, 1);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(0x18, 0xb, 0, 0x67, 0);
    sregs.gdt.base = layout::GDT_ADDR;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(kvm_err("set sregs"))?;
    let mut regs = vcpu.get_regs().map_err(kvm_err("get regs"))?;
    regs.rip = rip;
    regs.rbx = rbx;
    regs.rsi = rsi;
    regs.rflags = 0x2;
    vcpu.set_regs(&regs).map_err(kvm_err("set regs"))?;
    let mut fpu = vcpu.get_fpu().map_err(kvm_err("get fpu"))?;
    fpu.fcw = 0x37f;
    fpu.mxcsr = 0x1f80;
    vcpu.set_fpu(&fpu).map_err(kvm_err("set fpu"))?;
    Ok(())
}

fn write_mem(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) -> Result<(), VmError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|e| VmError::Memory(format!("writing {} bytes at {addr:#x}: {e}", bytes.len())))
}

/// Load the kernel, command line, initramfs and PVH start info; returns
/// the entry point.
fn load_kernel(
    mem: &VmMemory,
    image: &PathBuf,
    cmdline: &str,
    initramfs: Option<&PathBuf>,
    e820: &[E820Entry],
) -> Result<u64, VmError> {
    let kernel = KernelImage::open(image)?;
    let loaded = Elf::load(
        &mem.mem,
        None,
        &mut Cursor::new(kernel.elf_bytes()),
        Some(GuestAddress(layout::HIGH_RAM_START)),
    )
    .map_err(VmError::Load)?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(a) => a.0,
        _ => kernel
            .pvh_entry()
            .map(u64::from)
            .ok_or_else(|| VmError::NoPvhEntry(image.clone()))?,
    };

    if cmdline.len() + 1 > layout::CMDLINE_MAX {
        return Err(VmError::Cmdline(format!(
            "{} bytes, more than {}",
            cmdline.len() + 1,
            layout::CMDLINE_MAX
        )));
    }
    if cmdline.contains('\0') {
        return Err(VmError::Cmdline("contains a NUL byte".into()));
    }
    let mut cl = cmdline.as_bytes().to_vec();
    cl.push(0);
    write_mem(&mem.mem, layout::CMDLINE_ADDR, &cl)?;

    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_ADDR,
        rsdp_paddr: layout::ACPI_ADDR,
        memmap_paddr: layout::MEMMAP_ADDR,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        })
        .collect();
    let mut modules = Vec::new();
    if let Some(path) = initramfs {
        let data = std::fs::read(path).map_err(|source| VmError::Initramfs {
            path: path.clone(),
            source,
        })?;
        let top = mem.layout.low_ram_end();
        let size = data.len() as u64;
        let kernel_end = loaded.kernel_end;
        let addr = top
            .checked_sub(size)
            .map(|a| a & !0xfff)
            .filter(|a| *a >= kernel_end)
            .ok_or(VmError::InitramfsTooBig {
                size,
                kernel_end,
                top,
            })?;
        write_mem(&mem.mem, addr, &data)?;
        modules.push(hvm_modlist_entry {
            paddr: addr,
            size,
            cmdline_paddr: 0,
            reserved: 0,
        });
        start_info.nr_modules = 1;
        start_info.modlist_paddr = layout::MODLIST_ADDR;
    }
    let mut params = BootParams::new(&start_info, GuestAddress(layout::START_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(layout::MEMMAP_ADDR));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(layout::MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams(&params, &mem.mem)
        .map_err(|e| VmError::BootParams(e.to_string()))?;
    Ok(entry)
}

enum Action {
    Continue,
    Stop(ExitReason),
    InternalError,
}

fn handle_io_out(shared: &Shared, port: u16, data: &[u8]) -> Action {
    let Some(&value) = data.first() else {
        return Action::Continue;
    };
    match port {
        p if (serial::COM1_BASE..serial::COM1_BASE + 8).contains(&p) => {
            lock(&shared.devices)
                .com1
                .write((p - serial::COM1_BASE) as u8, value);
        }
        p if (serial::COM2_BASE..serial::COM2_BASE + 8).contains(&p) => {
            lock(&shared.devices)
                .com2
                .write((p - serial::COM2_BASE) as u8, value);
        }
        // i8042 reset line, or the PCI reset control register.
        0x64 if value == 0xfe => return Action::Stop(ExitReason::Reset),
        0xcf9 if value & 0x4 != 0 => return Action::Stop(ExitReason::Reset),
        _ => {}
    }
    Action::Continue
}

fn handle_io_in(shared: &Shared, port: u16, data: &mut [u8]) {
    let value = match port {
        p if (serial::COM1_BASE..serial::COM1_BASE + 8).contains(&p) => lock(&shared.devices)
            .com1
            .read((p - serial::COM1_BASE) as u8),
        p if (serial::COM2_BASE..serial::COM2_BASE + 8).contains(&p) => lock(&shared.devices)
            .com2
            .read((p - serial::COM2_BASE) as u8),
        _ => 0xff,
    };
    data.fill(0xff);
    if let Some(b) = data.first_mut() {
        *b = value;
    }
}

fn snapshot(vcpu: &VcpuFd, index: u32, apic_id: u32) -> VcpuState {
    let mut st = VcpuState {
        index,
        apic_id,
        rip: 0,
        rsp: 0,
        cr3: 0,
        cr4: 0,
        efer: 0,
        regs_errno: None,
    };
    match vcpu.get_regs() {
        Ok(r) => {
            st.rip = r.rip;
            st.rsp = r.rsp;
        }
        Err(e) => st.regs_errno = Some(e.errno()),
    }
    match vcpu.get_sregs() {
        Ok(s) => {
            st.cr3 = s.cr3;
            st.cr4 = s.cr4;
            st.efer = s.efer;
        }
        Err(e) => st.regs_errno = Some(e.errno()),
    }
    st
}

fn park(vcpu: &VcpuFd, index: u32, apic_id: u32, shared: &Shared) {
    let st = snapshot(vcpu, index, apic_id);
    let i = index as usize;
    let mut c = lock(&shared.ctl);
    if !c.frozen {
        return;
    }
    let epoch = c.epoch;
    if let Some(slot) = c.parked.get_mut(i) {
        *slot = Some(st);
    }
    shared.cv.notify_all();
    while c.frozen && c.epoch == epoch && !shared.stop.load(Ordering::SeqCst) {
        c = shared
            .cv
            .wait_timeout(c, WAIT_SLICE)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

fn vcpu_loop(mut vcpu: VcpuFd, index: u32, apic_id: u32, shared: Arc<Shared>) {
    let run: *mut kvm_run = vcpu.get_kvm_run();
    KVM_RUN_PTR.with(|p| p.set(run));
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        if shared.freeze.load(Ordering::SeqCst) {
            park(&vcpu, index, apic_id, &shared);
            continue;
        }
        let action = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => handle_io_out(&shared, port, data),
            Ok(VcpuExit::IoIn(port, data)) => {
                handle_io_in(&shared, port, data);
                Action::Continue
            }
            Ok(VcpuExit::MmioRead(_, data)) => {
                data.fill(0xff);
                Action::Continue
            }
            Ok(VcpuExit::MmioWrite(..)) | Ok(VcpuExit::Hlt) | Ok(VcpuExit::Intr) => {
                Action::Continue
            }
            Ok(VcpuExit::Shutdown) => Action::Stop(ExitReason::TripleFault { vcpu: index }),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Action::Stop(ExitReason::PowerOff),
                KVM_SYSTEM_EVENT_RESET => Action::Stop(ExitReason::Reset),
                other => Action::Stop(ExitReason::Unhandled {
                    vcpu: index,
                    what: format!("system event {other}"),
                }),
            },
            Ok(VcpuExit::InternalError) => Action::InternalError,
            Ok(VcpuExit::FailEntry(reason, _)) => Action::Stop(ExitReason::FailEntry {
                vcpu: index,
                reason,
            }),
            Ok(other) => Action::Stop(ExitReason::Unhandled {
                vcpu: index,
                what: format!("{other:?}"),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Clear the kick before looking at the flags again: a kick
                // after this point sets it anew.
                vcpu.set_kvm_immediate_exit(0);
                Action::Continue
            }
            Err(e) => Action::Stop(ExitReason::VcpuError {
                vcpu: index,
                errno: e.errno(),
            }),
        };
        match action {
            Action::Continue => {}
            Action::Stop(reason) => {
                shared.request_stop(reason);
                break;
            }
            Action::InternalError => {
                // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so
                // the `internal` member of the union is the valid one.
                let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                shared.request_stop(ExitReason::InternalError {
                    vcpu: index,
                    suberror,
                    rip,
                });
                break;
            }
        }
    }
    KVM_RUN_PTR.with(|p| p.set(ptr::null_mut()));
    drop(vcpu);
    let mut c = lock(&shared.ctl);
    if let Some(r) = c.running.get_mut(index as usize) {
        *r = false;
    }
    shared.cv.notify_all();
}

impl Vm {
    /// Build the VM and start its vCPUs.
    pub fn boot(config: VmConfig) -> Result<Vm, VmError> {
        install_kick_handler()?;
        let topo = config.topology;
        let layout = MemoryLayout::new(config.memory_mib, topo.numa_nodes)?;
        let ranges: Vec<(GuestAddress, usize)> = layout
            .regions()
            .map(|(b, l)| (GuestAddress(b), l as usize))
            .collect();
        let guest = GuestMemoryMmap::from_ranges(&ranges)
            .map_err(|e| VmError::Memory(format!("mapping {ranges:?}: {e}")))?;
        let e820 = layout.e820();
        let mem = Arc::new(VmMemory { mem: guest, layout });

        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm_fd = kvm.create_vm().map_err(kvm_err("create VM"))?;
        vm_fd
            .set_tss_address(0xfffb_d000)
            .map_err(kvm_err("set TSS address"))?;
        vm_fd
            .set_identity_map_address(0xfffb_c000)
            .map_err(kvm_err("set identity map address"))?;
        vm_fd.create_irq_chip().map_err(kvm_err("create irqchip"))?;
        vm_fd
            .create_pit2(kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            })
            .map_err(kvm_err("create PIT"))?;
        for (slot, region) in (0u32..).zip(mem.mem.iter()) {
            let r = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which the
            // Vm keeps (and drops after the VM fd).
            unsafe { vm_fd.set_user_memory_region(r) }.map_err(kvm_err("set memory region"))?;
        }

        // Boot structures.
        let mut gdt = Vec::new();
        for e in [
            0u64,
            0x00cf_9b00_0000_ffff,
            0x00cf_9300_0000_ffff,
            0x0000_8b00_0000_0067,
        ] {
            gdt.extend_from_slice(&e.to_le_bytes());
        }
        write_mem(&mem.mem, layout::GDT_ADDR, &gdt)?;
        let tables = acpi::build(&topo, &mem.layout.nodes, layout::ACPI_ADDR);
        if tables.bytes.len() > layout::ACPI_MAX {
            return Err(VmError::AcpiTooBig(tables.bytes.len()));
        }
        write_mem(&mem.mem, tables.base, &tables.bytes)?;
        let (entry, all_start) = match &config.boot {
            Boot::Kernel {
                image,
                cmdline,
                initramfs,
            } => (
                load_kernel(&mem, image, cmdline, initramfs.as_ref(), &e820)?,
                false,
            ),
            Boot::Code(code) => {
                if code.len() > CODE_MAX {
                    return Err(VmError::CodeTooBig(code.len()));
                }
                write_mem(&mem.mem, CODE_ADDR, code)?;
                (CODE_ADDR, true)
            }
        };

        let console = Arc::new(Output::new(config.output_limit));
        let channel = Arc::new(Output::new(config.output_limit));
        let irq = |gsi: u32| -> Result<EventFd, VmError> {
            let fd = EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| VmError::Memory(format!("eventfd: {e}")))?;
            vm_fd
                .register_irqfd(&fd, gsi)
                .map_err(kvm_err("register irqfd"))?;
            Ok(fd)
        };
        let devices = Devices {
            com1: Uart::new(irq(serial::COM1_IRQ)?, console.clone()),
            com2: Uart::new(irq(serial::COM2_IRQ)?, channel.clone()),
        };

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get supported CPUID"))?;
        let n = topo.nr_cpus();
        let mut vcpus = Vec::with_capacity(n as usize);
        for cpu in 0..n {
            let apic_id = topo.apic_id(cpu).unwrap_or(cpu);
            let vcpu = vm_fd
                .create_vcpu(u64::from(apic_id))
                .map_err(kvm_err("create vCPU"))?;
            let entries = cpuid::for_cpu(supported.as_slice(), &topo, cpu).unwrap_or_default();
            let cpuid = CpuId::from_entries(&entries)
                .map_err(|e| VmError::Memory(format!("CPUID table: {e:?}")))?;
            vcpu.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
            if cpu == 0 || all_start {
                let counter = COUNTER_ADDR + 64 * u64::from(cpu);
                let rbx = if all_start {
                    counter
                } else {
                    layout::START_INFO_ADDR
                };
                set_flat32(&vcpu, entry, rbx, u64::from(cpu))?;
                if cpu != 0 {
                    vcpu.set_mp_state(kvm_mp_state {
                        mp_state: KVM_MP_STATE_RUNNABLE,
                    })
                    .map_err(kvm_err("set MP state"))?;
                }
            }
            vcpus.push((cpu, apic_id, vcpu));
        }
        drop(kvm);

        let shared = Arc::new(Shared {
            ctl: Mutex::new(Ctl {
                epoch: 0,
                frozen: false,
                parked: vec![None; n as usize],
                running: vec![true; n as usize],
                exit: None,
            }),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            freeze: AtomicBool::new(false),
            devices: Mutex::new(devices),
            console,
            channel,
            threads: Mutex::new(Vec::new()),
        });
        let vm = Vm {
            vm_fd,
            mem,
            shared: shared.clone(),
            handles: Mutex::new(Vec::new()),
            topology: topo,
            e820,
            park_timeout: config.park_timeout,
            freeze_lock: Mutex::new(()),
        };
        for (cpu, apic_id, vcpu) in vcpus {
            let sh = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{cpu}"))
                .spawn(move || vcpu_loop(vcpu, cpu, apic_id, sh));
            match spawned {
                Ok(h) => {
                    lock(&shared.threads).push(Some(h.as_pthread_t()));
                    lock(&vm.handles).push(Some(h));
                }
                Err(source) => {
                    // Threads already started are stopped by drop.
                    lock(&shared.ctl).running[cpu as usize..].fill(false);
                    return Err(VmError::Thread { index: cpu, source });
                }
            }
        }
        Ok(vm)
    }

    /// The topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The e820 map given to the guest.
    pub fn e820(&self) -> &[E820Entry] {
        &self.e820
    }

    /// Guest memory (readable at any time; consistent only while frozen).
    pub fn memory(&self) -> &VmMemory {
        &self.mem
    }

    /// What the guest wrote to COM1.
    pub fn console(&self) -> &Output {
        &self.shared.console
    }

    /// What the guest wrote to COM2.
    pub fn channel(&self) -> &Output {
        &self.shared.channel
    }

    /// Queue `data` for the guest to read from COM2; returns how many bytes
    /// were accepted (the queue is bounded).
    pub fn send(&self, data: &[u8]) -> usize {
        lock(&self.shared.devices).com2.send(data)
    }

    /// Why the VM stopped, if it has.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        lock(&self.shared.ctl).exit.clone()
    }

    /// Wait until the VM stops on its own, at most `timeout`; then stop it
    /// ([`ExitReason::Timeout`]) if it has not. Joins the vCPU threads.
    pub fn wait(&self, timeout: Duration) -> ExitReason {
        let deadline = Instant::now() + timeout;
        let mut c = lock(&self.shared.ctl);
        while c.exit.is_none() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            c = self
                .shared
                .cv
                .wait_timeout(c, (deadline - now).min(WAIT_SLICE))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(c);
        self.shutdown(ExitReason::Timeout)
    }

    /// Stop the VM (if still running) and join its vCPU threads. Returns
    /// why it stopped.
    pub fn stop(&self) -> ExitReason {
        self.shutdown(ExitReason::HostRequest)
    }

    fn shutdown(&self, reason: ExitReason) -> ExitReason {
        self.shared.request_stop(reason);
        // Release a freeze that might be in progress.
        self.shared.cv.notify_all();
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut c = lock(&self.shared.ctl);
        while c.running.iter().any(|r| *r) && Instant::now() < deadline {
            drop(c);
            self.shared.kick_all();
            c = lock(&self.shared.ctl);
            c = self
                .shared
                .cv
                .wait_timeout(c, WAIT_SLICE)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let running = c.running.clone();
        let exit = c.exit.clone().unwrap_or(ExitReason::HostRequest);
        drop(c);
        let mut handles = lock(&self.handles);
        let mut threads = lock(&self.shared.threads);
        for (i, h) in handles.iter_mut().enumerate() {
            if running.get(i).copied().unwrap_or(false) {
                tracing::warn!(vcpu = i, "vCPU thread did not stop; leaving it detached");
                continue;
            }
            if let Some(t) = threads.get_mut(i) {
                *t = None;
            }
            if let Some(h) = h.take() {
                let _ = h.join();
            }
        }
        exit
    }

    /// Freeze every vCPU, run `capture` on the frozen VM, thaw. The VM is
    /// never left frozen: vCPUs that do not park within the park timeout
    /// are named in [`FreezeReport::not_parked`], and the thaw happens even
    /// if `capture` panics.
    pub fn freeze<R>(
        &self,
        capture: impl FnOnce(&Frozen<'_>) -> R,
    ) -> Result<(FreezeReport, R), VmError> {
        let _one_at_a_time = lock(&self.freeze_lock);
        let shared = &*self.shared;
        let t0 = Instant::now();
        {
            let mut c = lock(&shared.ctl);
            if let Some(e) = &c.exit {
                return Err(VmError::NotRunning(e.clone()));
            }
            c.epoch += 1;
            c.frozen = true;
            c.parked.iter_mut().for_each(|p| *p = None);
        }
        shared.freeze.store(true, Ordering::SeqCst);

        /// Thaws on every path out of the freeze.
        struct Thaw<'a>(&'a Shared);
        impl Drop for Thaw<'_> {
            fn drop(&mut self) {
                self.0.freeze.store(false, Ordering::SeqCst);
                let mut c = lock(&self.0.ctl);
                c.frozen = false;
                self.0.cv.notify_all();
            }
        }
        let thaw = Thaw(shared);
        shared.kick_all();

        let deadline = t0 + self.park_timeout;
        let mut c = lock(&shared.ctl);
        loop {
            let all = c
                .parked
                .iter()
                .zip(&c.running)
                .all(|(p, r)| p.is_some() || !r);
            let now = Instant::now();
            if all || now >= deadline || c.exit.is_some() {
                break;
            }
            c = shared
                .cv
                .wait_timeout(c, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if let Some(e) = &c.exit {
            return Err(VmError::NotRunning(e.clone()));
        }
        let park = t0.elapsed();
        let vcpus: Vec<VcpuState> = c.parked.iter().flatten().copied().collect();
        let not_parked: Vec<u32> = (0u32..)
            .zip(&c.parked)
            .filter(|(_, p)| p.is_none())
            .map(|(i, _)| i)
            .collect();
        drop(c);

        let clock = self.vm_fd.get_clock().ok();
        let t_cap = Instant::now();
        let result = capture(&Frozen {
            mem: &self.mem,
            vcpus: &vcpus,
            not_parked: &not_parked,
        });
        let capture_time = t_cap.elapsed();
        let clock_restored = clock
            .map(|saved| {
                let restore = kvm_clock_data {
                    clock: saved.clock,
                    ..Default::default()
                };
                self.vm_fd.set_clock(&restore).is_ok()
            })
            .unwrap_or(false);
        drop(thaw);
        Ok((
            FreezeReport {
                vcpus,
                not_parked,
                park,
                capture: capture_time,
                pause: t0.elapsed(),
                clock_restored,
            },
            result,
        ))
    }
}

// Embedders share a Vm between a runner and a monitor thread.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Vm>();
};

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

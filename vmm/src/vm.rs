//! The VM: KVM objects, guest memory, devices, one thread per vCPU.
//!
//! Lifecycle: [`Vm::boot`] builds everything and starts the vCPU threads;
//! the VM runs until the guest powers off, reboots or triple-faults, a vCPU
//! fails, [`Vm::stop`] is called, or [`Vm::wait`] times out. Dropping a
//! [`Vm`] stops it and joins its threads; every fd (KVM, VM, vCPUs,
//! eventfds) is owned and closed with it. Freeze and thaw are in
//! [`crate::freeze`].

use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use std::{fmt, io};

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE, KVM_PIT_SPEAKER_DUMMY, kvm_mp_state,
    kvm_pit_config,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, Boot, CODE_MAX};
use crate::devices::power::{
    AcpiSleep, I8042_COMMAND_PORT, I8042Reset, RESET_CONTROL_PORT, ResetControl, SLEEP_CONTROL_PORT,
};
use crate::devices::serial::{self, Output, UART_PORTS, Uart};
use crate::devices::{BusError, IoBus};
use crate::freeze::DEFAULT_PARK_TIMEOUT;
use crate::layout::{self, E820Entry, LayoutError, MemoryLayout};
use crate::topology::Topology;
use crate::vstate::control::Control;
use crate::vstate::memory::VmMemory;
use crate::vstate::vcpu::{self, Vcpu};
use crate::walker::kernel::image::ImageError;
use crate::{acpi, cpuid};

/// How long [`Vm::stop`] waits for the vCPU threads to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll slice of the bounded waits.
const WAIT_SLICE: Duration = Duration::from_millis(50);

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
    /// An eventfd (a UART's interrupt line) could not be made.
    #[error("creating an eventfd: {0}")]
    EventFd(#[source] io::Error),
    /// The CPUID table could not be built.
    #[error("CPUID table with {entries} entries: {source}")]
    Cpuid {
        /// How many entries the table was to hold.
        entries: usize,
        /// Why KVM's CPUID wrapper refused them.
        #[source]
        source: vmm_sys_util::fam::Error,
    },
    /// Devices' port ranges clash.
    #[error("I/O bus: {0}")]
    Bus(#[from] BusError),
    /// The VM has stopped.
    #[error("the VM is not running ({0})")]
    NotRunning(ExitReason),
}

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
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

/// The host's ends of the two UARTs: COM1 (console) and COM2 (agent
/// channel).
struct Uarts {
    console: Arc<Output>,
    channel: Arc<Output>,
    com2: Arc<Mutex<Uart>>,
}

/// A running VM.
pub struct Vm {
    pub(crate) vm_fd: VmFd,
    pub(crate) memory: Arc<VmMemory>,
    pub(crate) control: Arc<Control>,
    pub(crate) park_timeout: Duration,
    pub(crate) freeze_lock: Mutex<()>,
    uarts: Uarts,
    handles: Mutex<Vec<Option<JoinHandle<()>>>>,
    topology: Topology,
    e820: Vec<E820Entry>,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("topology", &self.topology)
            .field("e820", &self.e820)
            .finish_non_exhaustive()
    }
}

/// The VM with its in-kernel interrupt controllers and PIT.
fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
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
    Ok(vm_fd)
}

/// The UARTs, power-off and reset registers on an I/O bus; the UARTs
/// raise their ISA IRQs through irqfds.
fn devices(vm_fd: &VmFd, output_limit: usize) -> Result<(IoBus, Uarts), VmError> {
    let irq = |gsi: u32| -> Result<EventFd, VmError> {
        let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        vm_fd
            .register_irqfd(&fd, gsi)
            .map_err(kvm_err("register irqfd"))?;
        Ok(fd)
    };
    let console = Arc::new(Output::new(output_limit));
    let channel = Arc::new(Output::new(output_limit));
    let com1 = Arc::new(Mutex::new(Uart::new(
        irq(serial::COM1_IRQ)?,
        console.clone(),
    )));
    let com2 = Arc::new(Mutex::new(Uart::new(
        irq(serial::COM2_IRQ)?,
        channel.clone(),
    )));
    let mut bus = IoBus::new();
    bus.insert(serial::COM1_BASE, UART_PORTS, com1)?;
    bus.insert(serial::COM2_BASE, UART_PORTS, com2.clone())?;
    bus.insert(SLEEP_CONTROL_PORT, 2, Arc::new(Mutex::new(AcpiSleep)))?;
    bus.insert(RESET_CONTROL_PORT, 1, Arc::new(Mutex::new(ResetControl)))?;
    bus.insert(I8042_COMMAND_PORT, 1, Arc::new(Mutex::new(I8042Reset)))?;
    Ok((
        bus,
        Uarts {
            console,
            channel,
            com2,
        },
    ))
}

/// One vCPU per CPU of `topo`, with its CPUID; the boot vCPU (every vCPU
/// for [`Boot::Code`]) set to enter at `entry`.
fn create_vcpus(
    kvm: &Kvm,
    vm_fd: &VmFd,
    topo: &Topology,
    entry: boot::Entry,
) -> Result<Vec<(u32, u32, VcpuFd)>, VmError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("get supported CPUID"))?;
    let mut vcpus = Vec::with_capacity(topo.nr_cpus() as usize);
    for cpu in 0..topo.nr_cpus() {
        let apic_id = topo.apic_id(cpu).unwrap_or(cpu);
        let fd = vm_fd
            .create_vcpu(u64::from(apic_id))
            .map_err(kvm_err("create vCPU"))?;
        let entries = cpuid::for_cpu(supported.as_slice(), topo, cpu).unwrap_or_default();
        let table = CpuId::from_entries(&entries).map_err(|source| VmError::Cpuid {
            entries: entries.len(),
            source,
        })?;
        fd.set_cpuid2(&table).map_err(kvm_err("set CPUID"))?;
        if cpu == 0 || entry.all_vcpus {
            let (rbx, rsi) = entry.registers(cpu);
            vcpu::set_flat32(&fd, entry.rip, rbx, rsi)?;
            if cpu != 0 {
                fd.set_mp_state(kvm_mp_state {
                    mp_state: KVM_MP_STATE_RUNNABLE,
                })
                .map_err(kvm_err("set MP state"))?;
            }
        }
        vcpus.push((cpu, apic_id, fd));
    }
    Ok(vcpus)
}

impl Vm {
    /// Build the VM and start its vCPUs.
    pub fn boot(config: VmConfig) -> Result<Vm, VmError> {
        vcpu::install_kick_handler()?;
        let topo = config.topology;
        let layout = MemoryLayout::new(config.memory_mib, topo.numa_nodes)?;
        let e820 = layout.e820();
        let memory = Arc::new(VmMemory::new(layout)?);
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm_fd = create_vm(&kvm)?;
        memory.register(&vm_fd)?;

        let tables = acpi::build(&topo, &memory.layout().nodes, layout::ACPI_ADDR);
        if tables.bytes.len() > layout::ACPI_MAX {
            return Err(VmError::AcpiTooBig(tables.bytes.len()));
        }
        memory.write(tables.base, &tables.bytes)?;
        let entry = boot::load(&memory, &config.boot, &e820)?;
        let (bus, uarts) = devices(&vm_fd, config.output_limit)?;
        let vcpus = create_vcpus(&kvm, &vm_fd, &topo, entry)?;

        let control = Arc::new(Control::new(
            vcpus.len(),
            vec![uarts.console.clone(), uarts.channel.clone()],
        ));
        let vm = Vm {
            vm_fd,
            memory,
            control,
            park_timeout: config.park_timeout,
            freeze_lock: Mutex::new(()),
            uarts,
            handles: Mutex::new(Vec::new()),
            topology: topo,
            e820,
        };
        vm.start(vcpus, Arc::new(bus))?;
        Ok(vm)
    }

    /// One thread per vCPU.
    fn start(&self, vcpus: Vec<(u32, u32, VcpuFd)>, bus: Arc<IoBus>) -> Result<(), VmError> {
        for (index, apic_id, fd) in vcpus {
            let vcpu = Vcpu {
                fd,
                index,
                apic_id,
                control: self.control.clone(),
                bus: bus.clone(),
                _memory: self.memory.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || vcpu.run());
            match spawned {
                Ok(h) => {
                    self.control.add_thread(h.as_pthread_t());
                    lock(&self.handles).push(Some(h));
                }
                Err(source) => {
                    // Threads already started are stopped by drop.
                    self.control.lock().running[index as usize..].fill(false);
                    return Err(VmError::Thread { index, source });
                }
            }
        }
        Ok(())
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
        &self.memory
    }

    /// What the guest wrote to COM1.
    pub fn console(&self) -> &Output {
        &self.uarts.console
    }

    /// What the guest wrote to COM2.
    pub fn channel(&self) -> &Output {
        &self.uarts.channel
    }

    /// Queue `data` for the guest to read from COM2; returns how many bytes
    /// were accepted (the queue is bounded).
    pub fn send(&self, data: &[u8]) -> usize {
        lock(&self.uarts.com2).send(data)
    }

    /// Why the VM stopped, if it has.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.control.lock().exit.clone()
    }

    /// Wait until the VM stops on its own, at most `timeout`; then stop it
    /// ([`ExitReason::Timeout`]) if it has not. Joins the vCPU threads.
    pub fn wait(&self, timeout: Duration) -> ExitReason {
        let deadline = Instant::now() + timeout;
        let mut s = self.control.lock();
        while s.exit.is_none() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            s = self.control.wait(s, (deadline - now).min(WAIT_SLICE));
        }
        drop(s);
        self.shutdown(ExitReason::Timeout)
    }

    /// Stop the VM (if still running) and join its vCPU threads. Returns
    /// why it stopped.
    pub fn stop(&self) -> ExitReason {
        self.shutdown(ExitReason::HostRequest)
    }

    fn shutdown(&self, reason: ExitReason) -> ExitReason {
        let ctl = &*self.control;
        ctl.request_stop(reason);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut s = ctl.lock();
        while s.running.iter().any(|r| *r) && Instant::now() < deadline {
            drop(s);
            ctl.kick_all();
            s = ctl.wait(ctl.lock(), WAIT_SLICE);
        }
        let running = s.running.clone();
        let exit = s.exit.clone().unwrap_or(ExitReason::HostRequest);
        drop(s);
        for (i, h) in lock(&self.handles).iter_mut().enumerate() {
            if running.get(i).copied().unwrap_or(false) {
                // It holds the guest memory and the bus itself, so it can
                // end whenever KVM lets it.
                tracing::warn!(vcpu = i, "vCPU thread did not stop; leaving it detached");
                continue;
            }
            ctl.forget_thread(i);
            if let Some(h) = h.take() {
                let _ = h.join();
            }
        }
        exit
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

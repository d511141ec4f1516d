//! From a [`SessionConfig`] to a guest whose workers run: each step of
//! [`Session::start_with`] is a function here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ktstr_walker::Symbols;
use ktstr_walker::kernel::image::ImageKind;
use ktstr_walker::kernel::ksyms::SymbolTable;

use super::{Attached, CMDLINE, Session, SessionConfig, SessionError, StartPhases, TCG_CMDLINE};
use crate::agent::proto::{self, Job, Msg};
use crate::guest::GuestKernel;
use crate::initramfs::{self, Initramfs};
use crate::kernel::Kernel;
use crate::machine::Machine;
use crate::vm::qemu::snapshot;
use crate::vm::{Backend, BootSpec, SnapshotSpec};

/// How long the agent may take from the scheduler's attach to its workers
/// running.
const WORKERS_START: Duration = Duration::from_secs(60);

/// The kernel as resolved and checked, before anything boots.
struct Prepared {
    kernel: Kernel,
    config_path: PathBuf,
    release: String,
}

impl Session {
    /// Boot and follow the guest until its workers run.
    pub fn start(cfg: &SessionConfig) -> Result<Session, SessionError> {
        Session::start_with(cfg, &|_| {})
    }

    /// [`Session::start`], telling `phase` what it is doing (for progress
    /// displays).
    pub fn start_with(cfg: &SessionConfig, phase: &dyn Fn(&str)) -> Result<Session, SessionError> {
        let t0 = Instant::now();
        let backend = preflight(cfg)?;
        phase("reading the kernel");
        let prepared = prepare(cfg)?;
        phase("building the initramfs");
        let files = crate::vm::vm_dir()?;
        let spec = boot_spec(cfg, backend, &prepared, files.path())?;
        let prepared_at = Instant::now();
        // The host needs the kernel's BTF and symbols only once the guest
        // runs: under QEMU they are read while it starts (or loads its
        // snapshot). A KVM boot is quick, and the nested tier's one-CPU L1
        // has no CPU to spare beside it: there they are read first.
        let (vm, guest) = if backend == Backend::Kvm {
            let guest = GuestKernel::load(&prepared.kernel)?;
            (crate::vm::start(backend, &spec, files), Ok(guest))
        } else {
            std::thread::scope(|s| {
                let guest = s.spawn(|| GuestKernel::load(&prepared.kernel));
                let vm = crate::vm::start(backend, &spec, files);
                let guest = guest
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p));
                (vm, guest)
            })
        };
        // A kernel the host cannot read is the error to report first.
        let guest = guest?;
        let mut vm = Machine::new(vm?);
        phase("booting");
        let (nr_cpus, numa_nodes) = hello(&mut vm, cfg)?;
        let table = kallsyms(&mut vm, cfg.boot_timeout)?;
        let booted_at = Instant::now();
        let kernel_offset = table
            .get("_text")
            .zip(link_time_text(&prepared.kernel))
            .map(|(run, link)| run.wrapping_sub(link));
        let attached = match cfg.scheduler {
            Some(_) => {
                phase("starting the scheduler");
                Some(attach(&mut vm, cfg.attach_timeout)?)
            }
            None => None,
        };
        let attached_at = Instant::now();
        phase("starting the workload");
        let (workers, sched_ext) =
            match next(&mut vm, "the workers to start", WORKERS_START, |m| {
                matches!(m, Msg::Running { .. })
            })? {
                Msg::Running { workers, sched_ext } => (workers, sched_ext),
                other => return Err(unexpected("the workers to start", other)),
            };
        let restored = vm.restored();
        Ok(Session {
            vm,
            dumper: None,
            guest,
            symbols: table.symbols(),
            duration: cfg.duration,
            release: prepared.release,
            nr_cpus,
            numa_nodes,
            kernel_offset,
            attached,
            workers,
            sched_ext,
            phases: StartPhases {
                prepare_ms: ms(prepared_at - t0),
                boot_ms: ms(booted_at - prepared_at),
                attach_ms: ms(attached_at - booted_at),
                start_workers_ms: ms(attached_at.elapsed()),
                restored,
            },
        })
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The backend `cfg` runs on, refused where it cannot do what `cfg` asks.
fn preflight(cfg: &SessionConfig) -> Result<Backend, SessionError> {
    let backend = cfg.backend.resolve();
    if backend == Backend::Kvm
        && !ktstr_vmm::hardware_virt()
        && std::env::var_os("KTSTR_KVM_ANYWAY").is_none()
    {
        return Err(SessionError::NoHardwareVirt);
    }
    if backend == Backend::Kvm && cfg.shell {
        return Err(SessionError::ShellNeedsQemu);
    }
    let nodes = u64::from(cfg.topology.numa_nodes);
    if cfg.memory_mib / nodes < MIN_NODE_MIB {
        return Err(SessionError::NodeMemory {
            nodes: cfg.topology.numa_nodes,
            memory_mib: cfg.memory_mib,
            need_mib: nodes * MIN_NODE_MIB,
        });
    }
    let cpus = cfg.topology.nr_cpus();
    if !ktstr_vmm::hardware_virt() && cpus > SLOW_TCG_CPUS {
        tracing::warn!(
            "{cpus} vCPUs under TCG share one host thread: boot and every phase take about {}x as long as with {SLOW_TCG_CPUS} (raise the boot timeout, or declare fewer CPUs)",
            cpus / SLOW_TCG_CPUS
        );
    }
    Ok(backend)
}

/// Least guest RAM per NUMA node: the kernel's per-node data and the
/// initramfs must fit, and a node of a few MiB makes the allocator crawl.
const MIN_NODE_MIB: u64 = 64;
/// vCPUs above which a TCG guest is told it will be slow.
const SLOW_TCG_CPUS: u32 = 16;

/// Resolve `--kernel` and check its config.
fn prepare(cfg: &SessionConfig) -> Result<Prepared, SessionError> {
    let kernel = Kernel::resolve(&cfg.kernel)?;
    let image = || kernel.image.source().to_path_buf();
    let config_path = match (&kernel.config, &kernel.config_path) {
        (Some(c), Some(p)) => {
            c.check_required()?;
            p.clone()
        }
        _ => return Err(SessionError::NoConfig { image: image() }),
    };
    let release = kernel
        .release
        .clone()
        .ok_or_else(|| SessionError::NoRelease { image: image() })?;
    Ok(Prepared {
        kernel,
        config_path,
        release,
    })
}

/// The initramfs (cached parts plus this run's job), the image to boot
/// and the command line, with the VM's files under `dir`.
fn boot_spec(
    cfg: &SessionConfig,
    backend: Backend,
    prepared: &Prepared,
    dir: &Path,
) -> Result<BootSpec, SessionError> {
    let mut ramfs = Initramfs::new();
    ramfs.kernel_config(&prepared.release, &prepared.config_path)?;
    if let Some(busybox) = crate::kernel::fetch::which("busybox") {
        ramfs.busybox(&busybox)?;
    }
    for (guest_path, host) in &cfg.files {
        let data = std::fs::read(host).map_err(|source| SessionError::GuestFile {
            path: host.clone(),
            source,
        })?;
        ramfs.file(guest_path, data, 0o755)?;
    }
    let wanted: Vec<&str> = Symbols::NAMES.iter().copied().chain(["_text"]).collect();
    ramfs.file(proto::KALLSYMS_PATH, wanted.join("\n").into_bytes(), 0o644)?;
    let job = job(cfg, &mut ramfs)?;
    let base = ramfs.cached()?;
    // QEMU hands the job over its job port, so the initramfs, and the
    // guest until its agent waits for the job, are the same for every
    // run: a snapshot of that moment serves them all. The KVM VMM has no
    // job port: the job goes into the initramfs.
    let (initrd, job_frame) = if backend == Backend::Kvm {
        let initrd = dir.join("initrd");
        initramfs::write_with_job(&base, &job, &initrd)?;
        (initrd, None)
    } else {
        (base.clone(), Some(proto::encode_job(&job)))
    };

    let kernel = &prepared.kernel;
    let vmlinux = match (cfg.boot_bzimage, kernel.image.kind()) {
        (false, _) => vmlinux_file(kernel, dir)?,
        (true, ImageKind::BzImage { .. }) if backend != Backend::Kvm => {
            kernel.image.source().to_path_buf()
        }
        (true, _) => {
            return Err(SessionError::BzImageBoot {
                image: kernel.image.source().to_path_buf(),
            });
        }
    };
    let cmdline = std::iter::once(CMDLINE)
        .chain((backend == Backend::Qemu).then_some(TCG_CMDLINE))
        .chain(cfg.kernel_args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    // A snapshot fixes KASLR's slide (a bzImage boot is for a new one)
    // and is of no use to an interactive shell.
    let snapshot = match &cfg.snapshots {
        Some(dir) if job_frame.is_some() && !cfg.shell && !cfg.boot_bzimage => Some(SnapshotSpec {
            dir: dir.clone(),
            id: format!(
                "initramfs {} kernel {}",
                base.display(),
                snapshot::file_identity(kernel.image.source())
            ),
        }),
        _ => None,
    };
    Ok(BootSpec {
        vmlinux,
        initrd,
        topology: cfg.topology,
        memory_mib: cfg.memory_mib,
        cmdline,
        start_timeout: Duration::from_secs(30),
        console_stdio: cfg.shell,
        job_frame,
        snapshot,
    })
}

/// What the agent is asked to do; the scheduler's binary and libraries go
/// into `ramfs`.
fn job(cfg: &SessionConfig, ramfs: &mut Initramfs) -> Result<Job, SessionError> {
    let scheduler = match &cfg.scheduler {
        Some(s) => Some(proto::SchedulerJob {
            path: ramfs.program(&s.binary)?,
            args: s.args.clone(),
            env: vec![("LD_LIBRARY_PATH".into(), initramfs::LIB_DIR.into())],
            attach_timeout_ms: cfg.attach_timeout.as_millis() as u64,
        }),
        None => None,
    };
    Ok(Job {
        version: proto::VERSION,
        scheduler,
        cgroups: cfg.cgroups.clone(),
        steps: cfg.steps.clone(),
        duration_ms: cfg.duration.as_millis() as u64,
        shell: cfg.shell,
    })
}

/// The vmlinux ELF on disk: the image's own file, or the decompressed
/// bzImage written to `dir`.
fn vmlinux_file(kernel: &Kernel, dir: &Path) -> Result<PathBuf, SessionError> {
    if kernel.image.kind() == ImageKind::Elf {
        return Ok(kernel.image.source().to_path_buf());
    }
    let out = dir.join("vmlinux");
    kernel.image.write_vmlinux(&out)?;
    Ok(out)
}

/// The agent's first word: the guest's CPUs and NUMA nodes, bounded by
/// what the VM was given (the count sizes host-side tables).
fn hello(vm: &mut Machine, cfg: &SessionConfig) -> Result<(u32, u32), SessionError> {
    const WAITING: &str = "the guest agent's hello";
    let (nr_cpus, numa_nodes) = match next(vm, WAITING, cfg.boot_timeout, |m| {
        matches!(m, Msg::Hello { .. })
    })? {
        Msg::Hello {
            nr_cpus,
            numa_nodes,
            ..
        } => (nr_cpus, numa_nodes),
        other => return Err(unexpected(WAITING, other)),
    };
    let vm_cpus = cfg.topology.nr_cpus();
    if nr_cpus == 0 || nr_cpus > vm_cpus {
        return Err(SessionError::CpuCount {
            reported: nr_cpus,
            vm: vm_cpus,
        });
    }
    Ok((nr_cpus, numa_nodes))
}

/// The symbols the agent read from the guest's `/proc/kallsyms`.
fn kallsyms(vm: &mut Machine, timeout: Duration) -> Result<SymbolTable, SessionError> {
    const WAITING: &str = "kallsyms from the agent";
    match next(vm, WAITING, timeout, |m| matches!(m, Msg::Kallsyms { .. }))? {
        Msg::Kallsyms { text } => Ok(SymbolTable::parse_kallsyms(
            text.as_bytes(),
            "the guest's /proc/kallsyms",
        )?),
        other => Err(unexpected(WAITING, other)),
    }
}

/// Wait for the scheduler to attach (the agent's own timeout, plus room
/// for its report).
fn attach(vm: &mut Machine, timeout: Duration) -> Result<Attached, SessionError> {
    const WAITING: &str = "the scheduler to attach";
    let wait = timeout + Duration::from_secs(30);
    match next(vm, WAITING, wait, |m| {
        matches!(
            m,
            Msg::SchedulerAttached { .. } | Msg::SchedulerFailed { .. }
        )
    })? {
        Msg::SchedulerAttached { pid, ops, after_ms } => {
            tracing::info!(ops, after_ms, "scheduler attached");
            Ok(Attached { pid, ops })
        }
        Msg::SchedulerFailed { reason, output } => {
            Err(SessionError::SchedulerFailed { reason, output })
        }
        other => Err(unexpected(WAITING, other)),
    }
}

/// Take the next message `want` accepts; the agent's own error ends the
/// wait as the error it is.
pub(super) fn next(
    vm: &mut Machine,
    waiting: &'static str,
    timeout: Duration,
    want: impl Fn(&Msg) -> bool,
) -> Result<Msg, SessionError> {
    match vm.wait_for(waiting, timeout, |m| {
        want(m) || matches!(m, Msg::Error { .. })
    })? {
        Msg::Error { message } => Err(SessionError::Agent { waiting, message }),
        m => Ok(m),
    }
}

/// A message `next` accepted that the caller has no use for.
pub(super) fn unexpected(waiting: &'static str, got: Msg) -> SessionError {
    SessionError::Unexpected {
        waiting,
        got: format!("{got:?}"),
    }
}

/// The vmlinux's `.text` address: where `_text` is linked.
fn link_time_text(kernel: &Kernel) -> Option<u64> {
    let elf = goblin::elf::Elf::parse(kernel.image.elf_bytes()).ok()?;
    elf.section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".text"))
        .map(|s| s.sh_addr)
}

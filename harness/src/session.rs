//! A test VM from boot to power-off: resolve the kernel, build the
//! initramfs, boot it on the QEMU backend, follow the agent through the
//! scheduler's attach and the workload, capture the sched_ext state while
//! the guest is frozen, and collect the results.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ktstr_vmm::Topology;
use ktstr_walker::Symbols;
use ktstr_walker::embed::{Dumper, Pause};
use ktstr_walker::kernel::ksyms::SymbolTable;
use ktstr_walker::render::Report;

use crate::agent::proto::{self, Job, Msg, SchedExtState, WorkerInfo, WorkerResult};
use crate::guest::GuestKernel;
use crate::initramfs::{self, Initramfs};
use crate::kernel::Kernel;
use crate::machine::Machine;
use crate::scenario::{Resolved, Scenario, ScenarioError};
use crate::vm::{Backend, BootSpec, PauseWindow};

/// The guest kernel's command line. `panic=-1` with QEMU's `-no-reboot`
/// turns a kernel panic into QEMU exiting, not a hang.
pub const CMDLINE: &str = "console=ttyS0 panic=-1 rdinit=/init mitigations=off";

/// A scheduler to run in the guest.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The host binary (its libraries come along).
    pub binary: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// What to boot and run.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// `--kernel`: a path or a cached release.
    pub kernel: String,
    /// CPUs, LLCs, NUMA nodes.
    pub topology: Topology,
    /// Guest RAM.
    pub memory_mib: u64,
    /// The scheduler, or `None` for the kernel's default.
    pub scheduler: Option<SchedulerConfig>,
    /// cgroups and their workers (see [`SessionConfig::scenario`]).
    pub cgroups: Vec<proto::CgroupJob>,
    /// Changes during the run.
    pub steps: Vec<proto::Step>,
    /// How long the workers run.
    pub duration: Duration,
    /// From QEMU's start to the agent's first message.
    pub boot_timeout: Duration,
    /// For the scheduler to attach.
    pub attach_timeout: Duration,
    /// Extra files for the guest: (guest path, host file).
    pub files: Vec<(String, PathBuf)>,
    /// An interactive shell on this terminal instead of a workload.
    pub shell: bool,
    /// Which VMM runs the guest.
    pub backend: Backend,
    /// Boot the bzImage itself (QEMU only) instead of its vmlinux's PVH
    /// entry: its decompressor applies KASLR, which PVH entry never does.
    pub boot_bzimage: bool,
    /// Appended to the kernel command line (e.g. `no5lvl`, `pti=on`).
    pub kernel_args: Vec<String>,
}

impl SessionConfig {
    /// Defaults for `kernel` and `topology`: 512 MiB, no scheduler, no
    /// cgroups or workers, generous timeouts for TCG on a busy 2-core machine.
    pub fn new(kernel: impl Into<String>, topology: Topology) -> SessionConfig {
        SessionConfig {
            kernel: kernel.into(),
            topology,
            memory_mib: 512,
            scheduler: None,
            cgroups: Vec::new(),
            steps: Vec::new(),
            duration: Duration::from_secs(5),
            boot_timeout: Duration::from_secs(120),
            attach_timeout: Duration::from_secs(60),
            files: Vec::new(),
            shell: false,
            backend: Backend::Auto,
            boot_bzimage: false,
            kernel_args: Vec::new(),
        }
    }
}

impl SessionConfig {
    /// Run `scenario`, resolved for this config's topology and duration
    /// (set those first).
    pub fn scenario(&mut self, scenario: &Scenario) -> Result<Resolved, ScenarioError> {
        let r = scenario.resolve(&self.topology, self.duration)?;
        self.cgroups = r.cgroups.clone();
        self.steps = r.steps.clone();
        Ok(r)
    }
}

/// The scheduler as the guest reported its attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Its pid.
    pub pid: i32,
    /// `/sys/kernel/sched_ext/root/ops`.
    pub ops: String,
}

/// What the guest reported at the end.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Per worker.
    pub workers: Vec<WorkerResult>,
    /// sched_ext after the workload.
    pub sched_ext: SchedExtState,
    /// How the scheduler ended, if before it was stopped.
    pub scheduler_exit: Option<String>,
    /// The tail of its output.
    pub scheduler_output: String,
}

/// A booted VM whose workload is running.
pub struct Session {
    vm: Machine,
    /// Found on first use (from guest memory and the first vCPU's CR3).
    dumper: Option<Dumper>,
    guest: GuestKernel,
    /// The guest's own `/proc/kallsyms` (for `ktstr dump` users and as a
    /// check of what discovery finds).
    symbols: Symbols,
    duration: Duration,
    /// `uname -r` in the guest.
    pub release: String,
    /// CPUs online in the guest.
    pub nr_cpus: u32,
    /// NUMA nodes the guest sees.
    pub numa_nodes: u32,
    /// KASLR's shift of the kernel image: runtime `_text` minus the
    /// vmlinux's link-time `.text` address.
    pub kernel_offset: Option<u64>,
    /// The scheduler, when one was asked for.
    pub attached: Option<Attached>,
    /// The workers, as started.
    pub workers: Vec<WorkerInfo>,
    /// sched_ext as the guest read it once the workers ran.
    pub sched_ext: SchedExtState,
}

/// The vmlinux ELF on disk: the image's own file, or the decompressed
/// bzImage written to `dir`.
fn vmlinux_file(kernel: &Kernel, dir: &Path) -> Result<PathBuf> {
    if kernel.image.kind() == ktstr_walker::kernel::image::ImageKind::Elf {
        return Ok(kernel.image.source().to_path_buf());
    }
    let out = dir.join("vmlinux");
    kernel.image.write_vmlinux(&out)?;
    Ok(out)
}

impl Session {
    /// Boot and follow the guest until its workers run.
    pub fn start(cfg: &SessionConfig) -> Result<Session> {
        Session::start_with(cfg, &|_| {})
    }

    /// [`Session::start`], telling `phase` what it is doing (for progress
    /// displays).
    pub fn start_with(cfg: &SessionConfig, phase: &dyn Fn(&str)) -> Result<Session> {
        let backend = cfg.backend.resolve();
        if backend == Backend::Kvm
            && !ktstr_vmm::hardware_virt()
            && std::env::var_os("KTSTR_KVM_ANYWAY").is_none()
        {
            bail!(
                "the KVM backend needs VT-x/AMD-V to boot a kernel, and this host has none (no vmx/svm in /proc/cpuinfo; a PVM /dev/kvm stops kernels in early boot): use --backend qemu (KTSTR_KVM_ANYWAY=1 tries regardless)"
            );
        }
        if backend == Backend::Kvm && cfg.shell {
            bail!("`ktstr shell` needs the QEMU backend (--backend qemu)");
        }
        phase("reading the kernel");
        let kernel = Kernel::resolve(&cfg.kernel)?;
        let config_path = match (&kernel.config, &kernel.config_path) {
            (Some(c), Some(p)) => {
                c.check_required()?;
                p.clone()
            }
            _ => bail!(
                "no config next to kernel {}: ktstr needs it to check sched_ext and for libbpf in the guest (put it beside the image as `config`)",
                kernel.image.source().display()
            ),
        };
        let release = kernel
            .release
            .clone()
            .ok_or_else(|| anyhow!("no release string in {}", kernel.image.source().display()))?;
        let guest = GuestKernel::load(&kernel)?;
        let files = crate::vm::vm_dir()?;

        phase("building the initramfs");
        let mut ramfs = Initramfs::new();
        ramfs.kernel_config(&release, &config_path)?;
        if let Some(busybox) = crate::kernel::fetch::which("busybox") {
            ramfs.busybox(&busybox)?;
        }
        for (guest_path, host) in &cfg.files {
            let data = std::fs::read(host)
                .with_context(|| format!("reading {} for the guest", host.display()))?;
            ramfs.file(guest_path, data, 0o755)?;
        }
        let scheduler = match &cfg.scheduler {
            Some(s) => Some(proto::SchedulerJob {
                path: ramfs.program(&s.binary)?,
                args: s.args.clone(),
                env: vec![("LD_LIBRARY_PATH".into(), initramfs::LIB_DIR.into())],
                attach_timeout_ms: cfg.attach_timeout.as_millis() as u64,
            }),
            None => None,
        };
        let job = Job {
            version: proto::VERSION,
            kallsyms: Symbols::NAMES
                .iter()
                .chain(&["_text"])
                .map(|s| s.to_string())
                .collect(),
            scheduler,
            cgroups: cfg.cgroups.clone(),
            steps: cfg.steps.clone(),
            duration_ms: cfg.duration.as_millis() as u64,
            shell: cfg.shell,
        };
        let initrd = files.path().join("initrd");
        initramfs::write_with_job(&ramfs.cached()?, &job, &initrd)?;

        let vmlinux = match (cfg.boot_bzimage, kernel.image.kind()) {
            (false, _) => vmlinux_file(&kernel, files.path())?,
            (true, ktstr_walker::kernel::image::ImageKind::BzImage { .. })
                if backend != Backend::Kvm =>
            {
                kernel.image.source().to_path_buf()
            }
            (true, _) => bail!(
                "booting the bzImage needs a bzImage kernel (got {}) and the QEMU backend",
                kernel.image.source().display()
            ),
        };
        let cmdline = std::iter::once(CMDLINE)
            .chain(cfg.kernel_args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        let spec = BootSpec {
            vmlinux,
            initrd,
            topology: cfg.topology,
            memory_mib: cfg.memory_mib,
            cmdline,
            start_timeout: Duration::from_secs(30),
            console_stdio: cfg.shell,
        };
        let mut vm = Machine::new(crate::vm::start(backend, &spec, files)?);

        phase("booting");
        let hello = vm.wait_for("the guest agent's hello", cfg.boot_timeout, |m| {
            matches!(m, Msg::Hello { .. } | Msg::Error { .. })
        })?;
        let (nr_cpus, numa_nodes) = match hello {
            Msg::Hello {
                nr_cpus,
                numa_nodes,
                ..
            } => (nr_cpus, numa_nodes),
            other => bail!("guest agent: {other:?}"),
        };
        // Sizes host-side tables: the VM's own count bounds what it may say.
        let vm_cpus = cfg.topology.nr_cpus();
        if nr_cpus == 0 || nr_cpus > vm_cpus {
            bail!("the guest agent reports {nr_cpus} CPUs, but the VM has {vm_cpus}");
        }
        let text = match vm.wait_for("kallsyms from the agent", cfg.boot_timeout, |m| {
            matches!(m, Msg::Kallsyms { .. } | Msg::Error { .. })
        })? {
            Msg::Kallsyms { text } => text,
            other => bail!("guest agent: {other:?}"),
        };
        let table = SymbolTable::parse_kallsyms(text.as_bytes(), "the guest's /proc/kallsyms")?;
        let symbols = table.symbols();
        let kernel_offset = table
            .get("_text")
            .zip(link_time_text(&kernel))
            .map(|(run, link)| run.wrapping_sub(link));

        let attached = if cfg.scheduler.is_some() {
            phase("starting the scheduler");
            let wait = cfg.attach_timeout + Duration::from_secs(30);
            match vm.wait_for("the scheduler to attach", wait, |m| {
                matches!(
                    m,
                    Msg::SchedulerAttached { .. } | Msg::SchedulerFailed { .. } | Msg::Error { .. }
                )
            })? {
                Msg::SchedulerAttached { pid, ops, after_ms } => {
                    tracing::info!(ops, after_ms, "scheduler attached");
                    Some(Attached { pid, ops })
                }
                Msg::SchedulerFailed { reason, output } => {
                    bail!("scheduler failed: {reason}\n--- its output ---\n{output}")
                }
                other => bail!("guest agent: {other:?}"),
            }
        } else {
            None
        };
        phase("starting the workload");
        let (workers, sched_ext) =
            match vm.wait_for("the workers to start", Duration::from_secs(60), |m| {
                matches!(m, Msg::Running { .. } | Msg::Error { .. })
            })? {
                Msg::Running { workers, sched_ext } => (workers, sched_ext),
                other => bail!("guest agent: {other:?}"),
            };
        Ok(Session {
            vm,
            dumper: None,
            guest,
            symbols,
            duration: cfg.duration,
            release,
            nr_cpus,
            numa_nodes,
            kernel_offset,
            attached,
            workers,
            sched_ext,
        })
    }

    /// The dumper for this boot, found once (KASLR, page tables, symbols
    /// from guest memory and the first vCPU's CR3) and reused: a monitor
    /// samples ten times a second.
    fn dumper(&mut self) -> Result<Dumper> {
        if let Some(d) = self.dumper.take() {
            return Ok(d);
        }
        let root = self.vm.root()?;
        let guest = &self.guest;
        self.vm.with_live_mem(|mem| guest.dumper(mem, root))
    }

    /// The symbols the guest's own `/proc/kallsyms` gave (discovery
    /// finds them without the guest; this is the guest's word, to check
    /// against).
    pub fn kallsyms_symbols(&self) -> &Symbols {
        &self.symbols
    }

    /// Discovery from the given registers, over live memory, without
    /// touching this session's dumper (tests try other vCPU states).
    pub fn discover_with(
        &self,
        regs: ktstr_walker::discover::VcpuRegs,
    ) -> Result<ktstr_walker::discover::Discovered> {
        let kernel = self.guest.kernel();
        Ok(self.vm.with_live_mem(|mem| kernel.discover(mem, regs))?)
    }

    /// What discovery found in this guest (it runs on first use).
    pub fn discovered(&mut self) -> Result<ktstr_walker::discover::Discovered> {
        let d = self.dumper()?;
        let found = *d.discovered();
        self.dumper = Some(d);
        Ok(found)
    }

    /// Read the sched_ext state while the guest runs (for the monitor):
    /// no pause, and values may be caught mid-update.
    pub fn sample(&mut self) -> Result<Report> {
        let mut dumper = self.dumper()?;
        let (report, needed) = self.vm.with_live_mem(|mem| {
            let c = dumper.capture(mem);
            let needed = c.needed();
            (c.report(None), needed)
        });
        grow(&mut dumper, needed);
        self.dumper = Some(dumper);
        Ok(report)
    }

    /// The run's end, if the guest reported it already (no waiting).
    pub fn poll_finished(&mut self) -> Result<bool> {
        Ok(self
            .vm
            .poll_for("the workload to finish", |m| {
                matches!(m, Msg::Finished { .. } | Msg::Error { .. })
            })?
            .is_some())
    }

    /// Freeze the guest, capture its sched_ext state (and write an ELF core
    /// to `core` while still frozen, when given), thaw, and render; the
    /// report and where the pause went. A capture that ran out of room
    /// tells the dumper how much it needs; the room is made after the
    /// thaw, for the next capture.
    pub fn capture(&mut self, core: Option<&Path>) -> Result<(Report, PauseWindow)> {
        let mut dumper = self.dumper()?;
        let d = &mut dumper;
        let (captured, pause) = match self.vm.frozen(core, move |mem| Dumper::capture(d, mem)) {
            Ok(v) => v,
            Err(e) => {
                self.dumper = Some(dumper);
                return Err(e.into());
            }
        };
        let needed = captured.needed();
        // Decoding reads no guest memory: done after the thaw.
        let ns = |us: u64| Some(us * 1000);
        let report = captured.report(Some(Pause {
            total_ns: ns(pause.total_us),
            stop_ns: ns(pause.stop_us),
            resume_ns: ns(pause.resume_us),
        }));
        grow(&mut dumper, needed);
        self.dumper = Some(dumper);
        Ok((report, pause))
    }

    /// Which backend runs the guest.
    pub fn backend(&self) -> Backend {
        self.vm.backend()
    }

    /// The symbols of this boot, in kallsyms format (for `ktstr dump`).
    pub fn kallsyms_text(&self) -> String {
        self.vm
            .messages
            .iter()
            .find_map(|m| match m {
                Msg::Kallsyms { text } => Some(text.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The guest console so far.
    pub fn console(&self) -> String {
        self.vm.console()
    }

    /// Wait for the workload's end and the guest's power-off.
    pub fn finish(self) -> Result<Finished> {
        let wait = self.duration + Duration::from_secs(90);
        self.finish_within(wait)
    }

    /// [`Session::finish`], waiting at most `wait` (a shell: as long as
    /// its user likes).
    pub fn finish_within(mut self, wait: Duration) -> Result<Finished> {
        let done = |m: &Msg| matches!(m, Msg::Finished { .. } | Msg::Error { .. });
        let msg = match self.vm.messages.iter().find(|m| done(m)) {
            Some(m) => m.clone(),
            None => self
                .vm
                .wait_for("the workload to finish", wait, done)
                .context("the run did not finish")?,
        };
        let Msg::Finished {
            workers,
            sched_ext,
            scheduler_exit,
            scheduler_output,
        } = msg
        else {
            bail!("guest agent: {msg:?}");
        };
        self.vm.wait_exit(Duration::from_secs(30))?;
        Ok(Finished {
            workers,
            sched_ext,
            scheduler_exit,
            scheduler_output,
        })
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

/// Make room for what the last capture saw, for the next one.
fn grow(dumper: &mut Dumper, needed: ktstr_walker::capture::storage::Capacity) {
    let have = dumper.capacity();
    let more = |need: usize, have: usize| {
        if need > have {
            need.next_power_of_two()
        } else {
            have
        }
    };
    let want = ktstr_walker::capture::storage::Capacity {
        cpus: more(needed.cpus, have.cpus),
        dsqs: more(needed.dsqs, have.dsqs),
        queued: more(needed.queued, have.queued),
        runnable: more(needed.runnable, have.runnable),
        tasks: more(needed.tasks, have.tasks),
        cgroups: more(needed.cgroups, have.cgroups),
    };
    dumper.reserve(want);
}

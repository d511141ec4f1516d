//! What a session boots and runs.

use std::path::PathBuf;
use std::time::Duration;

use ktstr_vmm::Topology;

use crate::agent::proto;
use crate::scenario::{Resolved, Scenario, ScenarioError};
use crate::vm::Backend;

/// The guest kernel's command line. `panic=-1` with QEMU's `-no-reboot`
/// turns a kernel panic into QEMU exiting, not a hang.
pub const CMDLINE: &str = "console=ttyS0 panic=-1 rdinit=/init mitigations=off";

/// Added for QEMU's TCG only. `no_timer_check`: on a loaded host the
/// emulated timer can miss the kernel's boot-time check, which then panics
/// ("IO-APIC + timer doesn't work!"); under KVM the timer is the host's
/// and the check holds, and in the nested tier the option made L1 hang in
/// the KVM jobs. `init_on_alloc=0`: Debian zeroes every allocated page, a
/// hardening that cost about 0.35 s of each TCG boot and nothing a
/// scheduler test looks at.
pub const TCG_CMDLINE: &str = "no_timer_check init_on_alloc=0";

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
    /// Where snapshots of booted guests are kept (QEMU): a VM starts from
    /// the snapshot of its kernel, initramfs and machine at the moment the
    /// agent waits for its job, or saves one. `None` boots the kernel
    /// every time. Default: `~/.cache/ktstr/snapshots`, unless
    /// `KTSTR_SNAPSHOT=0`.
    pub snapshots: Option<PathBuf>,
}

/// The default [`SessionConfig::snapshots`].
pub fn default_snapshots() -> Option<PathBuf> {
    if std::env::var("KTSTR_SNAPSHOT").as_deref() == Ok("0") {
        return None;
    }
    crate::cache::root().ok().map(|r| r.join("snapshots"))
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
            snapshots: default_snapshots(),
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

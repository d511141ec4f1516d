//! Why a session could not boot, follow or capture its guest.

use std::path::PathBuf;

use ktstr_walker::discover::DiscoverError;
use ktstr_walker::kernel::image::ImageError;
use ktstr_walker::kernel::ksyms::KsymsError;
use ktstr_walker::kernel::vmlinux::VmlinuxError;

use crate::initramfs::InitramfsError;
use crate::kernel::ResolveError;
use crate::kernel::config::ConfigError;
use crate::vm::VmError;

/// What went wrong between `--kernel` and the guest's power-off.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The KVM backend on a host without VT-x/AMD-V.
    #[error(
        "the KVM backend needs VT-x/AMD-V to boot a kernel, and this host has none (no vmx/svm in /proc/cpuinfo; a PVM /dev/kvm stops kernels in early boot): use --backend qemu (KTSTR_KVM_ANYWAY=1 tries regardless)"
    )]
    NoHardwareVirt,
    /// Too little RAM for the declared NUMA nodes.
    #[error(
        "{memory_mib} MiB of guest RAM over {nodes} NUMA nodes is less than 64 MiB a node: give at least {need_mib} MiB (--memory) or declare fewer nodes"
    )]
    NodeMemory {
        /// NUMA nodes declared.
        nodes: u32,
        /// Guest RAM asked for.
        memory_mib: u64,
        /// What the nodes need.
        need_mib: u64,
    },
    /// An interactive shell asked of a backend without a console on stdio.
    #[error("`ktstr shell` needs the QEMU backend (--backend qemu)")]
    ShellNeedsQemu,
    /// `--kernel` did not name a usable kernel.
    #[error(transparent)]
    Kernel(#[from] ResolveError),
    /// The kernel's config lacks what ktstr needs.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The kernel has no config beside it.
    #[error(
        "no config next to kernel {}: ktstr needs it to check sched_ext and for libbpf in the guest (put it beside the image as `config`)",
        image.display()
    )]
    NoConfig {
        /// The kernel image.
        image: PathBuf,
    },
    /// The kernel's release string could not be found.
    #[error("no release string in {}", image.display())]
    NoRelease {
        /// The kernel image.
        image: PathBuf,
    },
    /// The vmlinux could not be extracted from the image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The vmlinux's BTF, symbols or banner could not be read.
    #[error(transparent)]
    Vmlinux(#[from] VmlinuxError),
    /// A file for the guest could not be read.
    #[error("reading {} for the guest: {source}", path.display())]
    GuestFile {
        /// The host file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The initramfs could not be built.
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    /// `boot_bzimage` with an image or backend that cannot do it.
    #[error(
        "booting the bzImage needs a bzImage kernel (got {}) and the QEMU backend",
        image.display()
    )]
    BzImageBoot {
        /// The kernel image.
        image: PathBuf,
    },
    /// The VM failed, timed out or exited.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The agent claims more CPUs than the VM has (or none).
    #[error("the guest agent reports {reported} CPUs, but the VM has {vm}")]
    CpuCount {
        /// What the agent said.
        reported: u32,
        /// What the VM was given.
        vm: u32,
    },
    /// The guest's `/proc/kallsyms` could not be parsed.
    #[error(transparent)]
    Kallsyms(#[from] KsymsError),
    /// The scheduler did not attach.
    #[error("scheduler failed: {reason}\n--- its output ---\n{output}")]
    SchedulerFailed {
        /// The agent's account of it.
        reason: String,
        /// The tail of the scheduler's output.
        output: String,
    },
    /// The guest agent gave up.
    #[error("the guest agent failed while ktstr waited for {waiting}: {message}")]
    Agent {
        /// What the host was waiting for.
        waiting: &'static str,
        /// The agent's message.
        message: String,
    },
    /// The agent sent a message that does not belong at this point.
    #[error("the guest agent sent {got} while ktstr waited for {waiting}")]
    Unexpected {
        /// What the host was waiting for.
        waiting: &'static str,
        /// The message, as debug text.
        got: String,
    },
    /// The kernel could not be found in guest memory.
    #[error("finding the kernel in guest memory: {0}")]
    Discover(#[from] DiscoverError),
}

//! What every backend shares: the [`GuestVm`] trait the harness drives a
//! VM through, its errors, where a freeze's time went, the VM's file
//! directory, and which backend to use.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ktstr_vmm::Topology;
use ktstr_walker::GuestMem;
use ktstr_walker::capture::vcpus::VcpuState;
use ktstr_walker::translate::PageTableRoot;

use crate::agent::proto::{FrameError, Msg};
use crate::vm::qmp::QmpError;

/// One running VM as the harness drives it, whatever runs it. Dropping it
/// stops the VM and removes its files.
pub trait GuestVm {
    /// Which backend this is.
    fn backend(&self) -> Backend;
    /// Agent messages completed since the last call.
    fn poll_agent(&mut self) -> Result<Vec<Msg>, VmError>;
    /// Why the VM is gone, if it is; `waiting` says what the host was
    /// waiting for when it noticed.
    fn exited(&mut self, waiting: &str) -> Option<VmError>;
    /// Stop the VM now.
    fn kill(&mut self);
    /// The guest console so far.
    fn console(&self) -> String;
    /// The last lines of the guest console.
    fn console_tail(&self) -> String {
        last_lines(&self.console())
    }
    /// The first vCPU's page-table root (the guest keeps running, or runs
    /// again at once).
    fn root(&mut self) -> Result<PageTableRoot, VmError>;
    /// Guest memory while the guest runs (values may be mid-update).
    fn live_mem(&self) -> &dyn GuestMem;
    /// Freeze every vCPU, call `capture` once with guest memory and the
    /// vCPUs' registers (empty when they could not be read), write an ELF
    /// core to `core` when asked, thaw (on every path); where the pause's
    /// time went.
    fn frozen(
        &mut self,
        core: Option<&Path>,
        capture: &mut dyn FnMut(&dyn GuestMem, &[VcpuState]),
    ) -> Result<PauseWindow, VmError>;
    /// Wait for the guest to power off.
    fn wait_exit(&mut self, timeout: Duration) -> Result<(), VmError>;
    /// Whether the guest started from a snapshot instead of a boot.
    fn restored(&self) -> bool {
        false
    }
}

/// What went wrong with a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// QEMU could not be started.
    #[error(
        "cannot start {bin}: {err} (install QEMU: ./setup.sh, or apt-get install qemu-system-x86)"
    )]
    Spawn {
        /// The binary.
        bin: String,
        /// Why.
        err: std::io::Error,
    },
    /// A host-side file operation failed.
    #[error("{what}: {err}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        err: std::io::Error,
    },
    /// QMP failed.
    #[error("{0}")]
    Qmp(#[from] QmpError),
    /// The KVM VMM failed.
    #[error("KVM VMM: {0}")]
    Kvm(#[from] ktstr_vmm::VmError),
    /// The VM ended when it should not have.
    #[error(
        "the VM exited ({status}) while {waiting}\n--- VMM stderr ---\n{stderr}\n--- console tail ---\n{console}"
    )]
    Exited {
        /// How.
        status: String,
        /// What the host was waiting for.
        waiting: String,
        /// The VMM's own complaints.
        stderr: String,
        /// The guest console's last lines.
        console: String,
    },
    /// Something did not happen in time; the VM was killed.
    #[error("timed out after {secs} s waiting for {waiting}\n--- console tail ---\n{console}")]
    Timeout {
        /// What.
        waiting: String,
        /// How long.
        secs: u64,
        /// The guest console's last lines.
        console: String,
    },
    /// The agent speaks another protocol.
    #[error("agent channel: {0}")]
    Channel(#[from] FrameError),
    /// The agent sent more messages than a run can have.
    #[error("the guest sent more than {0} agent messages: not the agent speaking")]
    AgentFlood(usize),
    /// This backend cannot do that.
    #[error("{0}")]
    Unsupported(String),
}

/// Where a freeze's time went, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PauseWindow {
    /// Stopping the guest: QMP `stop` until it answered (QEMU), the first
    /// kick until every vCPU had parked (KVM).
    pub stop_us: u64,
    /// Reading guest memory (and writing a core file, when asked).
    pub capture_us: u64,
    /// Letting it run again: QMP `cont` until it answered (QEMU), the
    /// capture's end until the vCPUs were released (KVM).
    pub resume_us: u64,
    /// The whole pause as the host saw it (an upper bound of the guest's).
    pub total_us: u64,
}

impl PauseWindow {
    pub(crate) fn new(
        stop: Duration,
        capture: Duration,
        resume: Duration,
        total: Duration,
    ) -> PauseWindow {
        let us = |d: Duration| d.as_micros() as u64;
        PauseWindow {
            stop_us: us(stop),
            capture_us: us(capture),
            resume_us: us(resume),
            total_us: us(total),
        }
    }

    /// `stop 0.21 ms, capture 0.05 ms, resume 0.19 ms (0.47 ms in all)`.
    pub fn to_text(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "stop {:.2} ms, capture {:.2} ms, resume {:.2} ms ({:.2} ms in all)",
            ms(self.stop_us),
            ms(self.capture_us),
            ms(self.resume_us),
            ms(self.total_us)
        )
    }
}

/// Console lines quoted in errors.
const TAIL_LINES: usize = 40;

/// The last lines of a console, for error messages.
pub(crate) fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// [`VmError::Io`] for `what`.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |err| VmError::Io { what, err }
}

/// What to boot, whatever the backend.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// The vmlinux ELF (PVH entry).
    pub vmlinux: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// CPUs, LLCs and NUMA nodes.
    pub topology: Topology,
    /// Guest RAM in MiB (split evenly over NUMA nodes).
    pub memory_mib: u64,
    /// Kernel command line.
    pub cmdline: String,
    /// How long the VMM may take to come up.
    pub start_timeout: Duration,
    /// The console on this process's stdin/stdout (an interactive shell)
    /// instead of a log.
    pub console_stdio: bool,
    /// The agent's job as a frame for its job port
    /// ([`proto::encode_job`](crate::agent::proto::encode_job)), sent when
    /// the agent says it is ready (QEMU only); `None`: the job is in the
    /// initramfs.
    pub job_frame: Option<String>,
    /// Start from a snapshot of this boot at the agent's ready moment, or
    /// save one (QEMU only, with `job_frame`); `None`: boot the kernel.
    pub snapshot: Option<SnapshotSpec>,
}

/// Where a boot's snapshots are kept, and what the boot's files hold.
#[derive(Debug, Clone)]
pub struct SnapshotSpec {
    /// The snapshot directory (`~/.cache/ktstr/snapshots`).
    pub dir: PathBuf,
    /// Names the contents of the kernel and initramfs files: equal names
    /// promise equal contents (the backend adds its own command line).
    pub id: String,
}

/// Directories of this process's live VMs, for [`remove_live_dirs`].
static LIVE_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live_dirs() -> MutexGuard<'static, Vec<PathBuf>> {
    LIVE_DIRS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Remove every live VM's directory: for a signal handler about to exit
/// the process, when no destructor will run.
pub(crate) fn remove_live_dirs() {
    for dir in live_dirs().drain(..) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A VM's directory (initramfs, logs, sockets), whatever the backend:
/// removed when dropped, or by [`crate::vm::kill_all`] when a signal ends
/// the process.
#[derive(Debug)]
pub struct VmDir(tempfile::TempDir);

impl VmDir {
    /// Where it is.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for VmDir {
    fn drop(&mut self) {
        let me = self.0.path();
        live_dirs().retain(|d| d != me);
    }
}

/// A directory for a VM's files, named `ktstr-<pid>-vm-*` so what a
/// process leaves can be told apart.
pub fn vm_dir() -> Result<VmDir, VmError> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("ktstr-{}-vm-", std::process::id()))
        .tempdir()
        .map_err(io("creating the VM's temporary directory"))?;
    live_dirs().push(dir.path().to_path_buf());
    Ok(VmDir(dir))
}

/// Which VMM runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// KVM with VT-x/AMD-V: the built-in VMM; else QEMU.
    #[default]
    Auto,
    /// QEMU (KVM acceleration when the host has it, TCG otherwise).
    Qemu,
    /// The built-in KVM VMM (needs VT-x/AMD-V to boot a kernel).
    Kvm,
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "qemu" => Ok(Backend::Qemu),
            "kvm" => Ok(Backend::Kvm),
            _ => Err(format!("backend {s:?}: use auto, qemu or kvm")),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::Qemu => "qemu",
            Backend::Kvm => "kvm",
        })
    }
}

impl Backend {
    /// The backend `self` means on this host.
    pub fn resolve(self) -> Backend {
        match self {
            Backend::Auto if ktstr_vmm::hardware_virt() => Backend::Kvm,
            Backend::Auto => Backend::Qemu,
            b => b,
        }
    }
}

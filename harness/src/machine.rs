//! One running VM, whatever runs it: QEMU, or the built-in KVM VMM where
//! the host has VT-x/AMD-V. A [`Machine`] follows the guest agent's
//! messages, reads guest memory (live, or frozen), and powers off; the
//! session above it does not know which backend it has.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ktstr_walker::GuestMem;
use ktstr_walker::translate::PageTableRoot;

use crate::agent::proto::{FrameError, Msg};
use crate::kvm::KvmVm;
use crate::qemu::QemuVm;
use crate::qemu::qmp::QmpError;

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

/// Directories of this process's live VMs, for [`kill_all`].
static LIVE_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live_dirs() -> MutexGuard<'static, Vec<PathBuf>> {
    LIVE_DIRS.lock().unwrap_or_else(|p| p.into_inner())
}

/// A VM's directory (initramfs, logs, sockets), whatever the backend:
/// removed when dropped, or by [`kill_all`] when a signal ends the process.
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

/// Stop every VM this process started, whatever runs it, and remove its
/// files: for a signal handler (Ctrl-C, SIGTERM) about to exit the
/// process, when no destructor will run.
pub fn kill_all() {
    crate::qemu::kill_all();
    for dir in live_dirs().drain(..) {
        let _ = std::fs::remove_dir_all(dir);
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

/// The VM behind a machine.
pub enum Vm {
    /// A QEMU process.
    Qemu(QemuVm),
    /// The built-in VMM.
    Kvm(KvmVm),
}

/// A running VM and what its agent said so far.
pub struct Machine {
    vm: Vm,
    /// Every agent message so far, in order.
    pub messages: Vec<Msg>,
}

impl Machine {
    /// Follow `vm`.
    pub fn new(vm: Vm) -> Machine {
        Machine {
            vm,
            messages: Vec::new(),
        }
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self.vm {
            Vm::Qemu(_) => Backend::Qemu,
            Vm::Kvm(_) => Backend::Kvm,
        }
    }

    fn poll_agent(&mut self) -> Result<Vec<Msg>, VmError> {
        match &mut self.vm {
            Vm::Qemu(q) => q.poll_agent(),
            Vm::Kvm(k) => k.poll_agent(),
        }
    }

    fn exited(&mut self, waiting: &str) -> Option<VmError> {
        match &mut self.vm {
            Vm::Qemu(q) => q.exited(waiting),
            Vm::Kvm(k) => k.exited(waiting),
        }
    }

    fn kill(&mut self) {
        match &mut self.vm {
            Vm::Qemu(q) => q.kill(),
            Vm::Kvm(k) => k.kill(),
        }
    }

    /// The last lines of the guest console.
    pub fn console_tail(&self) -> String {
        match &self.vm {
            Vm::Qemu(q) => q.console_tail(),
            Vm::Kvm(k) => k.console_tail(),
        }
    }

    /// The guest console so far.
    pub fn console(&self) -> String {
        match &self.vm {
            Vm::Qemu(q) => q.console(),
            Vm::Kvm(k) => k.console(),
        }
    }

    /// Wait up to `timeout` for an agent message `pred` accepts; every
    /// message is also kept in [`Self::messages`]. The VM ending first, or
    /// the timeout (which kills it), is an error carrying the console's
    /// tail.
    pub fn wait_for(
        &mut self,
        waiting: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Msg) -> bool,
    ) -> Result<Msg, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.poll_for(waiting, &mut pred)? {
                return Ok(m);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(VmError::Timeout {
                    waiting: waiting.to_string(),
                    secs: timeout.as_secs(),
                    console: self.console_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A message `pred` accepts if one has arrived, without waiting; the
    /// VM having ended without one is an error.
    pub fn poll_for(
        &mut self,
        waiting: &str,
        mut pred: impl FnMut(&Msg) -> bool,
    ) -> Result<Option<Msg>, VmError> {
        let seen = self.messages.len();
        // Whether it ended is asked first, so lines written just before the
        // end are still read below.
        let exited = self.exited(waiting);
        let new = self.poll_agent()?;
        self.messages.extend(new);
        if let Some(m) = self.messages[seen..].iter().find(|m| pred(m)) {
            return Ok(Some(m.clone()));
        }
        match exited {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// The first vCPU's page-table root (the guest keeps running, or runs
    /// again at once).
    pub fn root(&mut self) -> Result<PageTableRoot, VmError> {
        match &mut self.vm {
            Vm::Qemu(q) => q.root(),
            Vm::Kvm(k) => k.root(),
        }
    }

    /// `f` over guest memory while the guest runs.
    pub fn with_live_mem<R>(&self, f: impl FnOnce(&dyn GuestMem) -> R) -> R {
        match &self.vm {
            Vm::Qemu(q) => f(&*q.ram()),
            Vm::Kvm(k) => f(k.mem()),
        }
    }

    /// Freeze every vCPU, run `f` over guest memory, write an ELF core to
    /// `core` when asked (QEMU only), thaw; returns `f`'s result and where
    /// the pause's time went.
    pub fn frozen<R>(
        &mut self,
        core: Option<&Path>,
        f: impl FnOnce(&dyn GuestMem) -> R,
    ) -> Result<(R, PauseWindow), VmError> {
        match &mut self.vm {
            Vm::Qemu(q) => {
                let ram = q.ram();
                let mut frozen = q.freeze()?;
                let t = Instant::now();
                let r = f(&*ram);
                if let Some(core) = core {
                    frozen.dump_core(core)?;
                }
                let capture = t.elapsed();
                let stop = frozen.stop_time();
                let (resume, total) = frozen.thaw()?;
                Ok((r, PauseWindow::new(stop, capture, resume, total)))
            }
            Vm::Kvm(k) => {
                if core.is_some() {
                    return Err(VmError::Unsupported(
                        "the KVM backend writes no core files; use the QEMU backend for them"
                            .into(),
                    ));
                }
                k.frozen(f)
            }
        }
    }

    /// Wait for the guest to power off.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(), VmError> {
        match &mut self.vm {
            Vm::Qemu(q) => q.wait_exit(timeout).map(|_| ()),
            Vm::Kvm(k) => k.wait_exit(timeout),
        }?;
        let late = self.poll_agent()?;
        self.messages.extend(late);
        Ok(())
    }
}

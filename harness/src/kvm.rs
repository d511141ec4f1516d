//! The built-in KVM VMM (`ktstr-vmm`) as a backend: the kernel boots
//! through its PVH entry with the initramfs as a PVH module, the console
//! and the agent channel are the VMM's COM1 and COM2, a freeze parks every
//! vCPU and hands the capture their registers.
//!
//! Needs VT-x/AMD-V to boot a kernel fully: on a PVM host a kernel dies in
//! early boot (ENVIRONMENT.md), which this backend reports as the VM's end
//! with the console's tail.

use std::path::PathBuf;
use std::time::Duration;

use ktstr_vmm::{Boot, ExitReason, Topology, Vm, VmConfig};
use ktstr_walker::GuestMem;
use ktstr_walker::translate::PageTableRoot;

use crate::agent::proto::Msg;
use crate::channel::AgentLog;
use crate::machine::{PauseWindow, VmDir, VmError};

/// How long a freeze waits for every vCPU to park: generous, a busy host
/// may not run a vCPU thread at once.
const PARK_TIMEOUT: Duration = Duration::from_secs(10);

/// A VM of the built-in VMM.
pub struct KvmVm {
    vm: Vm,
    agent: AgentLog,
    /// Bytes of the agent channel already fed to `agent`.
    seen: u64,
    _dir: VmDir,
}

impl KvmVm {
    /// Boot `vmlinux` with `initrd` and `cmdline`; `dir` holds the files
    /// and goes with the VM.
    pub fn start(
        vmlinux: PathBuf,
        initrd: PathBuf,
        cmdline: &str,
        topology: Topology,
        memory_mib: u64,
        dir: VmDir,
    ) -> Result<KvmVm, VmError> {
        let mut cfg = VmConfig::kernel(topology, vmlinux, cmdline);
        cfg.memory_mib = memory_mib;
        cfg.park_timeout = PARK_TIMEOUT;
        if let Boot::Kernel { initramfs, .. } = &mut cfg.boot {
            *initramfs = Some(initrd);
        }
        Ok(KvmVm {
            vm: Vm::boot(cfg)?,
            agent: AgentLog::new(PathBuf::new()),
            seen: 0,
            _dir: dir,
        })
    }

    /// Agent messages completed since the last call.
    pub fn poll_agent(&mut self) -> Result<Vec<Msg>, VmError> {
        let (bytes, total, lost) = self.vm.channel().since(self.seen);
        self.seen = total;
        if lost > 0 {
            return Err(VmError::Unsupported(format!(
                "the agent channel overflowed the VMM's buffer ({lost} bytes lost)"
            )));
        }
        Ok(self.agent.feed(&bytes)?)
    }

    /// Why the VM is gone, if it is.
    pub fn exited(&mut self, waiting: &str) -> Option<VmError> {
        let reason = self.vm.exit_reason()?;
        Some(VmError::Exited {
            status: reason.to_string(),
            waiting: waiting.to_string(),
            stderr: String::new(),
            console: self.console_tail(),
        })
    }

    /// Stop the VM now.
    pub fn kill(&mut self) {
        self.vm.stop();
    }

    /// The guest console so far (what the VMM kept of it).
    pub fn console(&self) -> String {
        self.vm.console().text()
    }

    /// The last lines of the guest console.
    pub fn console_tail(&self) -> String {
        crate::machine::last_lines(&self.console())
    }

    /// Guest memory.
    pub fn mem(&self) -> &dyn GuestMem {
        self.vm.memory()
    }

    /// The first vCPU's page-table root, from a brief freeze.
    pub fn root(&mut self) -> Result<PageTableRoot, VmError> {
        let (_, regs) = self.vm.freeze(|f| f.vcpus.first().copied())?;
        let regs =
            regs.ok_or_else(|| VmError::Unsupported("no vCPU parked to read its CR3 from".into()))?;
        Ok(crate::guest::root(regs.cr3, Some(regs.cr4)))
    }

    /// Freeze, run `f` over guest memory, thaw; `f`'s result and where
    /// the pause went.
    pub fn frozen<R>(
        &mut self,
        f: impl FnOnce(&dyn GuestMem) -> R,
    ) -> Result<(R, PauseWindow), VmError> {
        let (report, r) = self.vm.freeze(|frozen| f(frozen.mem))?;
        if report.degraded() {
            tracing::warn!(not_parked = ?report.not_parked, "freeze: some vCPUs did not park; the capture may be torn");
        }
        let pause = PauseWindow::new(report.park, report.capture, report.resume, report.pause);
        Ok((r, pause))
    }

    /// Wait for the guest to power off (a reset means the agent fell back
    /// to a kernel panic with `panic=-1`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(), VmError> {
        match self.vm.wait(timeout) {
            ExitReason::PowerOff | ExitReason::Reset => Ok(()),
            ExitReason::Timeout => Err(VmError::Timeout {
                waiting: "the guest to power off".into(),
                secs: timeout.as_secs(),
                console: self.console_tail(),
            }),
            other => Err(VmError::Exited {
                status: other.to_string(),
                waiting: "the guest to power off".into(),
                stderr: String::new(),
                console: self.console_tail(),
            }),
        }
    }
}

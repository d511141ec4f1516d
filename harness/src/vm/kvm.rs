//! The built-in KVM VMM (`ktstr-vmm`) as a backend: the kernel boots
//! through its PVH entry with the initramfs as a PVH module, the console
//! and the agent channel are the VMM's COM1 and COM2, a freeze parks every
//! vCPU and hands the capture their registers.
//!
//! Needs VT-x/AMD-V to boot a kernel fully: on a PVM host a kernel dies in
//! early boot (ENVIRONMENT.md), which this backend reports as the VM's end
//! with the console's tail.

use std::path::Path;
use std::time::Duration;

use ktstr_vmm::{Boot, ExitReason, Vm, VmConfig};
use ktstr_walker::GuestMem;
use ktstr_walker::capture::vcpus::VcpuState;
use ktstr_walker::translate::PageTableRoot;

use crate::agent::proto::{FrameReader, Msg};
use crate::vm::backend::{Backend, BootSpec, GuestVm, PauseWindow, VmDir, VmError};

/// How long a freeze waits for every vCPU to park: generous, a busy host
/// may not run a vCPU thread at once.
const PARK_TIMEOUT: Duration = Duration::from_secs(10);

/// A VM of the built-in VMM.
pub struct KvmVm {
    vm: Vm,
    agent: FrameReader,
    /// Bytes of the agent channel already fed to `agent`.
    seen: u64,
    _dir: VmDir,
}

impl KvmVm {
    /// Boot `spec`; `dir` holds the files and goes with the VM.
    pub fn start(spec: &BootSpec, dir: VmDir) -> Result<KvmVm, VmError> {
        if spec.console_stdio {
            return Err(VmError::Unsupported(
                "the KVM backend has no interactive console; use --backend qemu".into(),
            ));
        }
        if spec.job_frame.is_some() {
            return Err(VmError::Unsupported(
                "the KVM VMM has no job port: put the job in the initramfs".into(),
            ));
        }
        let mut cfg = VmConfig::kernel(spec.topology, spec.vmlinux.clone(), &spec.cmdline);
        cfg.memory_mib = spec.memory_mib;
        cfg.park_timeout = PARK_TIMEOUT;
        if let Boot::Kernel { initramfs, .. } = &mut cfg.boot {
            *initramfs = Some(spec.initrd.clone());
        }
        Ok(KvmVm {
            vm: Vm::boot(cfg)?,
            agent: FrameReader::new(),
            seen: 0,
            _dir: dir,
        })
    }
}

impl GuestVm for KvmVm {
    fn backend(&self) -> Backend {
        Backend::Kvm
    }

    fn poll_agent(&mut self) -> Result<Vec<Msg>, VmError> {
        let (bytes, total, lost) = self.vm.channel().since(self.seen);
        self.seen = total;
        if lost > 0 {
            return Err(VmError::Unsupported(format!(
                "the agent channel overflowed the VMM's buffer ({lost} bytes lost)"
            )));
        }
        Ok(self.agent.feed(&bytes)?)
    }

    fn exited(&mut self, waiting: &str) -> Option<VmError> {
        let reason = self.vm.exit_reason()?;
        Some(VmError::Exited {
            status: reason.to_string(),
            waiting: waiting.to_string(),
            stderr: String::new(),
            console: self.console_tail(),
        })
    }

    fn kill(&mut self) {
        self.vm.stop();
    }

    fn console(&self) -> String {
        self.vm.console().text()
    }

    fn root(&mut self) -> Result<PageTableRoot, VmError> {
        let (_, regs) = self.vm.freeze(|f| f.vcpus.first().copied())?;
        let regs =
            regs.ok_or_else(|| VmError::Unsupported("no vCPU parked to read its CR3 from".into()))?;
        Ok(crate::guest::root(regs.cr3, Some(regs.cr4)))
    }

    fn live_mem(&self) -> &dyn GuestMem {
        self.vm.memory()
    }

    fn frozen(
        &mut self,
        core: Option<&Path>,
        capture: &mut dyn FnMut(&dyn GuestMem, &[VcpuState]),
    ) -> Result<PauseWindow, VmError> {
        if core.is_some() {
            return Err(VmError::Unsupported(
                "the KVM backend writes no core files; use the QEMU backend for them".into(),
            ));
        }
        let (report, ()) = self.vm.freeze(|frozen| {
            let vcpus: Vec<VcpuState> = frozen
                .vcpus
                .iter()
                .filter(|v| v.regs_errno.is_none())
                .map(|v| VcpuState {
                    index: v.index,
                    rip: v.rip,
                    rsp: v.rsp,
                    rflags: v.rflags,
                    cr3: Some(v.cr3),
                    cs: Some(u64::from(v.cs)),
                })
                .collect();
            capture(frozen.mem, &vcpus)
        })?;
        if report.degraded() {
            tracing::warn!(not_parked = ?report.not_parked, "freeze: some vCPUs did not park; the capture may be torn");
        }
        Ok(PauseWindow::new(
            report.park,
            report.capture,
            report.resume,
            report.pause,
        ))
    }

    fn wait_exit(&mut self, timeout: Duration) -> Result<(), VmError> {
        // A reset means the agent fell back to a kernel panic (panic=-1).
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

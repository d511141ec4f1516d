//! One vCPU: its entry state, the thread that runs it, how it parks for a
//! freeze, and the signal that kicks it out of `KVM_RUN`.

use std::cell::Cell;
use std::ptr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, kvm_run, kvm_segment};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::{BusEvent, IoBus};
use crate::layout;
use crate::vm::{ExitReason, VmError, kvm_err};
use crate::vstate::control::Control;
use crate::vstate::memory::VmMemory;

/// How long a parked vCPU sleeps between looks at the flags.
const PARK_SLICE: Duration = Duration::from_millis(50);

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
    /// Flags.
    pub rflags: u64,
    /// Code segment selector (low 2 bits: privilege level).
    pub cs: u16,
    /// Page-table root.
    pub cr3: u64,
    /// CR4 (LA57 tells 5-level paging).
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// errno when the registers could not be read (then they are 0).
    pub regs_errno: Option<i32>,
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

/// Install the kick handler (once per process).
pub(crate) fn install_kick_handler() -> Result<(), VmError> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(VmError::Signal)
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

/// Flat 32-bit protected mode, paging off: the PVH entry state (the GDT
/// is [`crate::boot::GDT`] at [`layout::GDT_ADDR`]).
pub(crate) fn set_flat32(vcpu: &VcpuFd, rip: u64, rbx: u64, rsi: u64) -> Result<(), VmError> {
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
    sregs.gdt.limit = (crate::boot::GDT.len() * 8 - 1) as u16;
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

/// A vCPU and what its thread needs.
pub(crate) struct Vcpu {
    pub fd: VcpuFd,
    pub index: u32,
    pub apic_id: u32,
    pub control: Arc<Control>,
    pub bus: Arc<IoBus>,
    /// Held so guest RAM stays mapped while this thread can still enter
    /// the guest, even if the VM gave up waiting for it.
    pub _memory: Arc<VmMemory>,
}

enum Action {
    Continue,
    Stop(ExitReason),
    InternalError,
}

impl Vcpu {
    fn snapshot(&self) -> VcpuState {
        let mut st = VcpuState {
            index: self.index,
            apic_id: self.apic_id,
            rip: 0,
            rsp: 0,
            rflags: 0,
            cs: 0,
            cr3: 0,
            cr4: 0,
            efer: 0,
            regs_errno: None,
        };
        match self.fd.get_regs() {
            Ok(r) => {
                st.rip = r.rip;
                st.rsp = r.rsp;
                st.rflags = r.rflags;
            }
            Err(e) => st.regs_errno = Some(e.errno()),
        }
        match self.fd.get_sregs() {
            Ok(s) => {
                st.cr3 = s.cr3;
                st.cs = s.cs.selector;
                st.cr4 = s.cr4;
                st.efer = s.efer;
            }
            Err(e) => st.regs_errno = Some(e.errno()),
        }
        st
    }

    /// Record the registers and wait until the freeze that asked is over.
    fn park(&self) {
        let st = self.snapshot();
        let ctl = &*self.control;
        let mut s = ctl.lock();
        if !s.frozen {
            return;
        }
        let epoch = s.epoch;
        if let Some(slot) = s.parked.get_mut(self.index as usize) {
            *slot = Some(st);
        }
        ctl.notify();
        while s.frozen && s.epoch == epoch && !ctl.stopping() {
            s = ctl.wait(s, PARK_SLICE);
        }
    }
}

/// What to do after `KVM_RUN` returned `exit` on vCPU `vcpu`.
fn exit_action(bus: &IoBus, vcpu: u32, exit: Result<VcpuExit<'_>, kvm_ioctls::Error>) -> Action {
    let bus_event = |e: Option<BusEvent>| match e {
        Some(BusEvent::PowerOff) => Action::Stop(ExitReason::PowerOff),
        Some(BusEvent::Reset) => Action::Stop(ExitReason::Reset),
        None => Action::Continue,
    };
    match exit {
        Ok(VcpuExit::IoOut(port, data)) => bus_event(bus.write(port, data)),
        Ok(VcpuExit::IoIn(port, data)) => {
            bus.read(port, data);
            Action::Continue
        }
        Ok(VcpuExit::MmioRead(_, data)) => {
            data.fill(0xff);
            Action::Continue
        }
        Ok(VcpuExit::MmioWrite(..) | VcpuExit::Hlt | VcpuExit::Intr) => Action::Continue,
        Ok(VcpuExit::Shutdown) => Action::Stop(ExitReason::TripleFault { vcpu }),
        Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => Action::Stop(ExitReason::PowerOff),
            KVM_SYSTEM_EVENT_RESET => Action::Stop(ExitReason::Reset),
            other => Action::Stop(ExitReason::Unhandled {
                vcpu,
                what: format!("system event {other}"),
            }),
        },
        Ok(VcpuExit::InternalError) => Action::InternalError,
        Ok(VcpuExit::FailEntry(reason, _)) => Action::Stop(ExitReason::FailEntry { vcpu, reason }),
        Ok(other) => Action::Stop(ExitReason::Unhandled {
            vcpu,
            what: format!("{other:?}"),
        }),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Action::Continue,
        Err(e) => Action::Stop(ExitReason::VcpuError {
            vcpu,
            errno: e.errno(),
        }),
    }
}

impl Vcpu {
    /// The thread's body: run until the VM stops, parking for freezes.
    pub fn run(mut self) {
        let run: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN_PTR.with(|p| p.set(run));
        while !self.control.stopping() {
            if self.control.freezing() {
                self.park();
                continue;
            }
            let exit = self.fd.run();
            let kicked =
                matches!(&exit, Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN);
            let action = exit_action(&self.bus, self.index, exit);
            if kicked {
                // Clear the kick before looking at the flags again: a kick
                // after this point sets it anew.
                self.fd.set_kvm_immediate_exit(0);
            }
            match action {
                Action::Continue => {}
                Action::Stop(reason) => {
                    self.control.request_stop(reason);
                    break;
                }
                Action::InternalError => {
                    // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so
                    // the `internal` member of the union is the valid one.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                    self.control.request_stop(ExitReason::InternalError {
                        vcpu: self.index,
                        suberror,
                        rip,
                    });
                    break;
                }
            }
        }
        KVM_RUN_PTR.with(|p| p.set(ptr::null_mut()));
        let (control, index) = (self.control.clone(), self.index);
        drop(self);
        control.vcpu_ended(index);
    }
}

//! What each vCPU was executing at the freeze: its registers, as the VMM
//! or a core's notes give them, and a bounded window of its kernel stack
//! from RSP, copied while paused (return addresses are picked and named
//! at render, with the kernel's text symbols).

use super::buf::Slots;
use crate::mem::GuestMem;
use crate::translate::Translator;

/// Words of a vCPU's stack kept from RSP (2 KiB: a few dozen frames).
pub const STACK_WORDS: usize = 256;

/// Start of the kernel half of the x86-64 address space.
const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;

/// One vCPU's registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VcpuState {
    /// vCPU index.
    pub index: u32,
    /// RIP.
    pub rip: u64,
    /// RSP.
    pub rsp: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// CR3, when known.
    pub cr3: Option<u64>,
    /// CS (low 2 bits: privilege level), when known.
    pub cs: Option<u64>,
}

impl VcpuState {
    /// Whether it was running kernel code (privilege level 0, or a kernel
    /// RIP when CS is unknown).
    pub fn in_kernel(&self) -> bool {
        match self.cs {
            Some(cs) => cs & 3 == 0,
            None => self.rip >= KERNEL_HALF,
        }
    }
}

/// One vCPU at the freeze.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuRecord {
    /// Its registers.
    pub regs: VcpuState,
    /// Stack words from RSP up (kernel mode only).
    pub stack: [u64; STACK_WORDS],
    /// Words of `stack` read.
    pub stack_len: u16,
}

impl Default for VcpuRecord {
    fn default() -> Self {
        Self {
            regs: VcpuState::default(),
            stack: [0; STACK_WORDS],
            stack_len: 0,
        }
    }
}

/// Record each vCPU of `regs` into `out` with its kernel stack window:
/// [`STACK_WORDS`] from RSP up, or, when that crosses past the stack's top
/// into unmapped memory, to the end of RSP's page. A user-mode vCPU's
/// stack is not read.
pub fn capture<M: GuestMem + ?Sized>(
    mem: &M,
    tr: &mut Translator,
    regs: &[VcpuState],
    out: &mut Slots<'_, VcpuRecord>,
) {
    for r in regs {
        out.push_with(|rec| {
            rec.regs = *r;
            rec.stack_len = 0;
            if !r.in_kernel() || r.rsp < KERNEL_HALF {
                return;
            }
            let to_page_end = (4096 - (r.rsp & 4095)) as usize / 8;
            for n in [STACK_WORDS, to_page_end.clamp(1, STACK_WORDS)] {
                let Some(words) = rec.stack.get_mut(..n) else {
                    return;
                };
                let bytes = zerocopy::IntoBytes::as_mut_bytes(words);
                if tr.read_virt(mem, r.rsp, bytes).is_ok() {
                    rec.stack_len = n as u16;
                    return;
                }
            }
        });
    }
}

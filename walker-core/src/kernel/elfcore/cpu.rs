//! Per-vCPU register notes: `CORE`/`NT_PRSTATUS` (x86-64 `elf_prstatus`,
//! written by QEMU and the kernel alike) and QEMU's own `QEMU` note
//! (`QEMUCPUState`, target/i386/arch_dump.c), which adds the control
//! registers.

use std::string::String;
use std::vec::Vec;

use zerocopy::{FromBytes, Immutable, KnownLayout};

use super::{CoreError, Note};

/// One vCPU's registers at the moment of the dump.
///
/// General registers come from the `QEMU` note when there is one, else from
/// `NT_PRSTATUS`; control registers only exist in the `QEMU` note.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuState {
    /// Position among the register notes (QEMU: CPU index order).
    pub index: usize,
    /// `pr_pid` of `NT_PRSTATUS`: QEMU writes the CPU index + 1, kdump the
    /// pid of the task that was running.
    pub pid: Option<u32>,
    /// `rax`.
    pub rax: u64,
    /// `rbx`.
    pub rbx: u64,
    /// `rcx`.
    pub rcx: u64,
    /// `rdx`.
    pub rdx: u64,
    /// `rsi`.
    pub rsi: u64,
    /// `rdi`.
    pub rdi: u64,
    /// `rbp`.
    pub rbp: u64,
    /// `rsp`.
    pub rsp: u64,
    /// `r8`.
    pub r8: u64,
    /// `r9`.
    pub r9: u64,
    /// `r10`.
    pub r10: u64,
    /// `r11`.
    pub r11: u64,
    /// `r12`.
    pub r12: u64,
    /// `r13`.
    pub r13: u64,
    /// `r14`.
    pub r14: u64,
    /// `r15`.
    pub r15: u64,
    /// Instruction pointer.
    pub rip: u64,
    /// Flags register.
    pub rflags: u64,
    /// Code segment selector (low 2 bits: privilege level; 0 = kernel).
    pub cs: u64,
    /// Stack segment selector.
    pub ss: u64,
    /// FS base.
    pub fs_base: u64,
    /// GS base: the per-CPU area while in the kernel.
    pub gs_base: u64,
    /// `MSR_KERNEL_GS_BASE`: the per-CPU area while in user mode (QEMU note
    /// of QEMU >= 5.0).
    pub kernel_gs_base: Option<u64>,
    /// CR0 (QEMU note only).
    pub cr0: Option<u64>,
    /// CR2: last page-fault address (QEMU note only).
    pub cr2: Option<u64>,
    /// CR3: the page-table root (QEMU note only).
    pub cr3: Option<u64>,
    /// CR4 (QEMU note only).
    pub cr4: Option<u64>,
}

impl CpuState {
    /// Whether this vCPU ran the kernel: a page-table root or an
    /// instruction pointer in the upper half. A vCPU the kernel never
    /// brought up (`nr_cpus=`, `maxcpus=`) sits at its reset state.
    pub fn started(&self) -> bool {
        self.cr3.is_some_and(|c| c != 0) || self.rip >= 0xffff_8000_0000_0000
    }
}

/// `struct user_regs_struct` for x86-64, as in `elf_prstatus.pr_reg`.
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct UserRegs {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    rbp: u64,
    rbx: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rax: u64,
    rcx: u64,
    rdx: u64,
    rsi: u64,
    rdi: u64,
    orig_rax: u64,
    rip: u64,
    cs: u64,
    eflags: u64,
    rsp: u64,
    ss: u64,
    fs_base: u64,
    gs_base: u64,
    ds: u64,
    es: u64,
    fs: u64,
    gs: u64,
}

/// The part of x86-64 `struct elf_prstatus` up to and including `pr_reg`.
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Prstatus {
    /// pr_info, pr_cursig, pr_sigpend, pr_sighold.
    _pad1: [u8; 32],
    pid: u32,
    /// ppid, pgrp, sid and four timevals.
    _pad2: [u8; 76],
    regs: UserRegs,
}

/// `QEMUCPUSegment`.
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct QemuSegment {
    selector: u32,
    limit: u32,
    flags: u32,
    _pad: u32,
    base: u64,
}

/// `QEMUCPUState` version 1 without the optional trailing fields.
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct QemuCpuState {
    version: u32,
    size: u32,
    rax: u64,
    rbx: u64,
    rcx: u64,
    rdx: u64,
    rsi: u64,
    rdi: u64,
    rsp: u64,
    rbp: u64,
    r8: u64,
    r9: u64,
    r10: u64,
    r11: u64,
    r12: u64,
    r13: u64,
    r14: u64,
    r15: u64,
    rip: u64,
    rflags: u64,
    cs: QemuSegment,
    ds: QemuSegment,
    es: QemuSegment,
    fs: QemuSegment,
    gs: QemuSegment,
    ss: QemuSegment,
    ldt: QemuSegment,
    tr: QemuSegment,
    gdt: QemuSegment,
    idt: QemuSegment,
    cr: [u64; 5],
}

/// The only `QEMUCPUState` layout QEMU has written so far; later fields are
/// appended without a version change and found through `size`.
const QEMU_CPU_STATE_VERSION: u32 = 1;

fn short(owner: &str, note: &Note<'_>, need: usize) -> CoreError {
    CoreError::ShortNote {
        owner: String::from(owner),
        n_type: note.n_type,
        len: note.desc.len(),
        need,
    }
}

/// Registers from a `CORE`/`NT_PRSTATUS` note.
pub(super) fn parse_prstatus(note: &Note<'_>) -> Result<CpuState, CoreError> {
    let (p, _) = Prstatus::read_from_prefix(note.desc)
        .map_err(|_| short("CORE", note, core::mem::size_of::<Prstatus>()))?;
    let r = p.regs;
    Ok(CpuState {
        index: 0,
        pid: Some(p.pid),
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rbp: r.rbp,
        rsp: r.rsp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.eflags,
        cs: r.cs,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ..CpuState::default()
    })
}

/// Registers from a `QEMU` note; `None` for a layout version this code does
/// not know (the vCPU then has only its `NT_PRSTATUS` registers).
pub(super) fn parse_qemu(note: &Note<'_>) -> Result<Option<CpuState>, CoreError> {
    let (q, rest) = QemuCpuState::read_from_prefix(note.desc)
        .map_err(|_| short("QEMU", note, core::mem::size_of::<QemuCpuState>()))?;
    if q.version != QEMU_CPU_STATE_VERSION {
        return Ok(None);
    }
    let base = core::mem::size_of::<QemuCpuState>();
    // kernel_gs_base follows cr[5] when `size` says the writer included it.
    let kernel_gs_base = if usize::try_from(q.size).is_ok_and(|s| s >= base + 8) {
        rest.get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    } else {
        None
    };
    Ok(Some(CpuState {
        index: 0,
        pid: None,
        rax: q.rax,
        rbx: q.rbx,
        rcx: q.rcx,
        rdx: q.rdx,
        rsi: q.rsi,
        rdi: q.rdi,
        rbp: q.rbp,
        rsp: q.rsp,
        r8: q.r8,
        r9: q.r9,
        r10: q.r10,
        r11: q.r11,
        r12: q.r12,
        r13: q.r13,
        r14: q.r14,
        r15: q.r15,
        rip: q.rip,
        rflags: q.rflags,
        cs: u64::from(q.cs.selector),
        ss: u64::from(q.ss.selector),
        fs_base: q.fs.base,
        gs_base: q.gs.base,
        kernel_gs_base,
        cr0: Some(q.cr[0]),
        cr2: Some(q.cr[2]),
        cr3: Some(q.cr[3]),
        cr4: Some(q.cr[4]),
    }))
}

/// Pair the i-th `NT_PRSTATUS` with the i-th `QEMU` note (QEMU writes both
/// lists in CPU order); the QEMU note's registers win, the pid comes from
/// `NT_PRSTATUS`.
pub(super) fn combine(prstatus: Vec<CpuState>, qemu: Vec<Option<CpuState>>) -> Vec<CpuState> {
    let n = prstatus.len().max(qemu.len());
    (0..n)
        .filter_map(|i| {
            let p = prstatus.get(i).copied();
            let q = qemu.get(i).copied().flatten();
            let mut cpu = match (p, q) {
                (_, Some(q)) => CpuState {
                    pid: p.and_then(|p| p.pid),
                    ..q
                },
                (Some(p), None) => p,
                (None, None) => return None,
            };
            cpu.index = i;
            Some(cpu)
        })
        .collect()
}

//! Synthetic ELF core files, laid out by hand the way QEMU's
//! `dump-guest-memory` (paging=false) writes them: ELF header, program
//! headers (PT_NOTE first), notes, then memory.

use std::vec;
use std::vec::Vec;

use zerocopy::IntoBytes;

use super::testelf::{Ehdr, Phdr, note};
use super::*;

/// The byte a test segment holds at guest-physical `gpa`: independent of
/// the code under test, so reads can be checked against it.
fn pattern(gpa: u64) -> u8 {
    (gpa % 251) as u8 ^ 0x5a
}

/// An x86-64 `elf_prstatus` (336 bytes) with `pid`, `rip` and `rsp` set.
fn prstatus(pid: u32, rip: u64, rsp: u64) -> Vec<u8> {
    let mut d = vec![0u8; 336];
    d[32..36].copy_from_slice(&pid.to_le_bytes());
    let reg = |i: usize| 112 + 8 * i;
    d[reg(16)..reg(17)].copy_from_slice(&rip.to_le_bytes());
    d[reg(19)..reg(20)].copy_from_slice(&rsp.to_le_bytes());
    d[reg(17)..reg(18)].copy_from_slice(&0x10u64.to_le_bytes()); // cs
    d
}

/// A `QEMUCPUState` v1 of `size` bytes (432 without kernel_gs_base, 440
/// with), offsets as in QEMU's target/i386/arch_dump.c.
fn qemu_state(rip: u64, cr3: u64, gs_base: u64, size: u32) -> Vec<u8> {
    let mut d = vec![0u8; size as usize];
    d[0..4].copy_from_slice(&1u32.to_le_bytes());
    d[4..8].copy_from_slice(&size.to_le_bytes());
    d[8 + 6 * 8..8 + 7 * 8].copy_from_slice(&0xffff_c900_0001_3f00u64.to_le_bytes()); // rsp
    d[8 + 16 * 8..8 + 17 * 8].copy_from_slice(&rip.to_le_bytes());
    // Segments start at 152, 24 bytes each: cs, ds, es, fs, gs, ss, ...
    d[152..156].copy_from_slice(&0x10u32.to_le_bytes());
    let gs = 152 + 4 * 24;
    d[gs + 16..gs + 24].copy_from_slice(&gs_base.to_le_bytes());
    let cr = 392;
    d[cr + 3 * 8..cr + 4 * 8].copy_from_slice(&cr3.to_le_bytes());
    d[cr..cr + 8].copy_from_slice(&0x8005_0033u64.to_le_bytes());
    if size >= 440 {
        d[432..440].copy_from_slice(&0xffff_8880_0fa0_0000u64.to_le_bytes());
    }
    d
}

struct Load {
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

/// Build a core with `notes` and one PT_LOAD per `loads`, each filled with
/// [`pattern`] of its physical addresses.
fn build_core(notes: &[u8], loads: &[Load]) -> Vec<u8> {
    let phnum = 1 + loads.len();
    let notes_at = 64 + 56 * phnum as u64;
    let mut data_at = (notes_at + notes.len() as u64).next_multiple_of(16);
    let mut phdrs = vec![Phdr {
        p_type: PT_NOTE,
        flags: 0,
        offset: notes_at,
        vaddr: 0,
        paddr: 0,
        filesz: notes.len() as u64,
        memsz: notes.len() as u64,
        align: 0,
    }];
    let mut data = Vec::new();
    for l in loads {
        phdrs.push(Phdr {
            p_type: PT_LOAD,
            flags: 0,
            offset: data_at,
            vaddr: 0,
            paddr: l.paddr,
            filesz: l.filesz,
            memsz: l.memsz,
            align: 0,
        });
        data.extend((0..l.filesz).map(|i| pattern(l.paddr + i)));
        data_at += l.filesz;
    }
    let ehdr = Ehdr::x86_64(ET_CORE, phnum as u16, 0, 0);
    let mut out = Vec::new();
    out.extend_from_slice(ehdr.as_bytes());
    for p in &phdrs {
        out.extend_from_slice(p.as_bytes());
    }
    out.extend_from_slice(notes);
    out.resize(out.len().next_multiple_of(16), 0);
    out.extend(data);
    out
}

fn two_cpu_notes() -> Vec<u8> {
    let mut n = Vec::new();
    n.extend(note(
        b"CORE",
        1,
        &prstatus(1, 0xffff_ffff_8100_1000, 0x1111),
    ));
    n.extend(note(
        b"CORE",
        1,
        &prstatus(2, 0xffff_ffff_8100_2000, 0x2222),
    ));
    n.extend(note(
        b"QEMU",
        0,
        &qemu_state(
            0xffff_ffff_8100_1000,
            0x0300_0000,
            0xffff_8880_0f80_0000,
            440,
        ),
    ));
    n.extend(note(
        b"QEMU",
        0,
        &qemu_state(
            0xffff_ffff_8100_2000,
            0x0400_0000,
            0xffff_8880_0f90_0000,
            432,
        ),
    ));
    n.extend(note(
        b"VMCOREINFO",
        0,
        b"OSRELEASE=7.3.4\nSYMBOL(scx_tasks)=ffffffff84001000\n",
    ));
    n
}

fn standard_loads() -> Vec<Load> {
    vec![
        Load {
            paddr: 0,
            filesz: 0x1000,
            memsz: 0x1000,
        },
        // Adjacent to the first; only half of it is in the file.
        Load {
            paddr: 0x1000,
            filesz: 0x800,
            memsz: 0x2000,
        },
        Load {
            paddr: 0x10_0000,
            filesz: 0x1000,
            memsz: 0x1000,
        },
    ]
}

#[test]
fn cpus_and_vmcoreinfo_from_notes() {
    let core = ElfCore::from_bytes(build_core(&two_cpu_notes(), &standard_loads())).unwrap();
    let cpus = core.cpus();
    assert_eq!(cpus.len(), 2);
    assert_eq!(cpus[0].index, 0);
    assert_eq!(cpus[0].pid, Some(1));
    assert_eq!(cpus[0].rip, 0xffff_ffff_8100_1000);
    assert_eq!(
        cpus[0].rsp, 0xffff_c900_0001_3f00,
        "QEMU note registers win"
    );
    assert_eq!(cpus[0].cr3, Some(0x0300_0000));
    assert_eq!(cpus[0].cr0, Some(0x8005_0033));
    assert_eq!(cpus[0].gs_base, 0xffff_8880_0f80_0000);
    assert_eq!(cpus[0].kernel_gs_base, Some(0xffff_8880_0fa0_0000));
    assert_eq!(cpus[0].cs, 0x10);
    assert_eq!(cpus[1].pid, Some(2));
    assert_eq!(cpus[1].cr3, Some(0x0400_0000));
    assert_eq!(
        cpus[1].kernel_gs_base, None,
        "432-byte note has no kernel_gs_base"
    );
    let vi = core.vmcoreinfo().unwrap();
    assert_eq!(vi.osrelease(), Some("7.3.4"));
    assert_eq!(vi.symbols().scx_tasks, Some(0xffff_ffff_8400_1000));
}

#[test]
fn prstatus_only_core_has_no_cr3() {
    let notes = note(b"CORE", 1, &prstatus(77, 0xffff_ffff_8100_3000, 0x3333));
    let core = ElfCore::from_bytes(build_core(&notes, &standard_loads())).unwrap();
    assert_eq!(core.cpus().len(), 1);
    assert_eq!(core.cpus()[0].pid, Some(77));
    assert_eq!(core.cpus()[0].rip, 0xffff_ffff_8100_3000);
    assert_eq!(core.cpus()[0].rsp, 0x3333);
    assert_eq!(core.cpus()[0].cr3, None);
    assert!(core.vmcoreinfo().is_none());
}

#[test]
fn reads_within_across_and_past_file_part() {
    let core = ElfCore::from_bytes(build_core(&[], &standard_loads())).unwrap();
    let expect = |gpa: u64, n: u64| -> Vec<u8> {
        (gpa..gpa + n)
            .map(|a| {
                if (0x1800..0x3000).contains(&a) {
                    0
                } else {
                    pattern(a)
                }
            })
            .collect()
    };
    for (gpa, n) in [
        (0x10, 16),
        (0xff8, 16),
        (0x17f8, 16),
        (0x2ff0, 16),
        (0x10_0ff0, 16),
        (0, 0x3000),
    ] {
        let mut buf = vec![0xeeu8; n as usize];
        core.read(gpa, &mut buf).unwrap();
        assert_eq!(buf, expect(gpa, n), "read {gpa:#x}+{n:#x}");
    }
    let mut b = [0u8; 16];
    assert_eq!(
        core.read(0x2ff8, &mut b),
        Err(MemError::Unmapped {
            gpa: 0x2ff8,
            len: 16
        })
    );
    assert!(core.read(0x5000, &mut b).is_err());
    assert!(core.read(0x10_0ff8, &mut b).is_err());
    assert!(matches!(
        core.read(u64::MAX - 4, &mut b),
        Err(MemError::Overflow { .. })
    ));
    let v: u32 = core.read_pod(0x20).unwrap();
    assert_eq!(
        v.to_le_bytes(),
        [pattern(0x20), pattern(0x21), pattern(0x22), pattern(0x23)]
    );
}

#[test]
fn overlapping_segments_read_consistently() {
    // A vmcore maps the kernel image twice: once in its RAM segment and
    // once as a separate (text) segment at the same physical addresses.
    let loads = [
        Load {
            paddr: 0x2000,
            filesz: 0x1000,
            memsz: 0x1000,
        },
        Load {
            paddr: 0,
            filesz: 0x8000,
            memsz: 0x8000,
        },
        Load {
            paddr: 0x7000,
            filesz: 0x2000,
            memsz: 0x2000,
        },
    ];
    let core = ElfCore::from_bytes(build_core(&[], &loads)).unwrap();
    let segs = core.segments();
    assert!(
        segs.windows(2)
            .all(|w| w[0].paddr + w[0].memsz <= w[1].paddr)
    );
    let mut buf = vec![0u8; 0x9000];
    core.read(0, &mut buf).unwrap();
    assert!(buf.iter().enumerate().all(|(i, &b)| b == pattern(i as u64)));
}

#[test]
fn truncated_files_are_typed_errors() {
    let full = build_core(&two_cpu_notes(), &standard_loads());
    let cut = full[..full.len() - 1].to_vec();
    match ElfCore::from_bytes(cut) {
        Err(CoreError::SegmentBeyondFile {
            index: 3,
            paddr: 0x10_0000,
            ..
        }) => {}
        other => panic!("expected SegmentBeyondFile for the last segment, got {other:?}"),
    }
    // Cut inside the program headers, inside the ELF header, and empty.
    for len in [64 + 56 + 10, 40, 3, 0] {
        let err = ElfCore::from_bytes(full[..len].to_vec()).unwrap_err();
        assert!(
            matches!(err, CoreError::Headers { .. } | CoreError::NotElf { .. }),
            "len {len}: {err}"
        );
    }
    // Cut inside the notes: the PT_NOTE segment itself runs past the end.
    let notes_end = 64 + 56 * 4 + 40;
    assert!(matches!(
        ElfCore::from_bytes(full[..notes_end].to_vec()),
        Err(CoreError::SegmentBeyondFile { index: 0, .. })
    ));
}

#[test]
fn rejects_what_it_cannot_read() {
    let mut exec = build_core(&[], &standard_loads());
    exec[16] = 2; // ET_EXEC
    assert!(matches!(
        ElfCore::from_bytes(exec),
        Err(CoreError::Unsupported { .. })
    ));
    let mut arm = build_core(&[], &standard_loads());
    arm[18] = 183; // EM_AARCH64
    assert!(matches!(
        ElfCore::from_bytes(arm),
        Err(CoreError::Unsupported { .. })
    ));
    assert!(matches!(
        ElfCore::from_bytes(build_core(&[], &[])),
        Err(CoreError::NoMemory)
    ));
    let bad = [Load {
        paddr: 0,
        filesz: 0x20,
        memsz: 0x10,
    }];
    assert!(matches!(
        ElfCore::from_bytes(build_core(&[], &bad)),
        Err(CoreError::BadSegment { index: 1, .. })
    ));
    let short_qemu = note(b"QEMU", 0, &[1, 0, 0, 0, 0xb0, 1, 0, 0]);
    assert!(matches!(
        ElfCore::from_bytes(build_core(&short_qemu, &standard_loads())),
        Err(CoreError::ShortNote {
            need: 432,
            len: 8,
            ..
        })
    ));
    assert!(matches!(
        ElfCore::from_bytes(b"not an elf at all".to_vec()),
        Err(CoreError::NotElf { .. })
    ));
}

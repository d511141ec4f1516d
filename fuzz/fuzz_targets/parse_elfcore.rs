//! Arbitrary bytes as an ELF core file: opening and reading never panic,
//! and reads stay inside what the segments describe.
//!
//! Inputs are either raw files or cores assembled from fuzzed segments and
//! notes (a valid ELF header is hard to stumble on), optionally cut short.
#![no_main]

use arbitrary::Arbitrary;
use ktstr_walker::GuestMem;
use ktstr_walker::kernel::elfcore::ElfCore;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Seg {
    paddr: u32,
    filesz: u16,
    memsz: u16,
    /// Shift the file offset to make segments overlap or point anywhere.
    offset_delta: i16,
}

#[derive(Arbitrary, Debug)]
struct NoteIn {
    kind: u8,
    desc: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Built {
        segs: Vec<Seg>,
        notes: Vec<NoteIn>,
        cut: u16,
        reads: Vec<(u32, u8)>,
    },
}

fn note(out: &mut Vec<u8>, n: &NoteIn) {
    let (name, n_type, min_len): (&[u8], u32, usize) = match n.kind % 5 {
        0 => (b"CORE", 1, 336),
        1 => (b"QEMU", 0, if n.kind & 0x80 != 0 { 440 } else { 432 }),
        2 => (b"VMCOREINFO", 0, 0),
        3 => (b"CORE", 1, 0),
        _ => (b"Xen", u32::from(n.kind), 0),
    };
    let mut desc = n.desc.clone();
    if desc.len() < min_len {
        desc.resize(min_len, 0);
    }
    if n_type == 0 && name == b"QEMU" {
        desc[0..4].copy_from_slice(&1u32.to_le_bytes());
        desc[4..8].copy_from_slice(&(min_len as u32).to_le_bytes());
    }
    out.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&n_type.to_le_bytes());
    out.extend_from_slice(name);
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(&desc);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn build(segs: &[Seg], notes: &[NoteIn], cut: u16) -> Vec<u8> {
    let segs = &segs[..segs.len().min(32)];
    let mut note_bytes = Vec::new();
    for n in notes.iter().take(16) {
        note(&mut note_bytes, n);
    }
    let phnum = 1 + segs.len();
    let notes_at = 64 + 56 * phnum;
    let mut data_at = notes_at + note_bytes.len();
    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    out.extend_from_slice(&4u16.to_le_bytes()); // ET_CORE
    out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&64u64.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, phnum as u16, 0, 0, 0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let phdr = |out: &mut Vec<u8>, p_type: u32, off: u64, paddr: u64, filesz: u64, memsz: u64| {
        out.extend_from_slice(&p_type.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for v in [off, 0, paddr, filesz, memsz, 0] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    };
    let n = note_bytes.len() as u64;
    phdr(&mut out, 4, notes_at as u64, 0, n, n);
    let mut fill = 0usize;
    for s in segs {
        let off = (data_at as i64 + i64::from(s.offset_delta)).max(0) as u64;
        phdr(
            &mut out,
            1,
            off,
            u64::from(s.paddr),
            u64::from(s.filesz),
            u64::from(s.memsz),
        );
        data_at += usize::from(s.filesz);
        fill += usize::from(s.filesz);
    }
    out.extend_from_slice(&note_bytes);
    // A 251-byte period so segments differ; copied in blocks because a
    // byte-at-a-time loop under coverage instrumentation was most of the cost.
    let pattern: [u8; 251] = core::array::from_fn(|i| i as u8);
    let end = out.len() + fill;
    while out.len() < end {
        let n = (end - out.len()).min(pattern.len());
        out.extend_from_slice(&pattern[..n]);
    }
    out.truncate(out.len().saturating_sub(usize::from(cut % 64)));
    out
}

fuzz_target!(|input: Input| {
    let (bytes, reads) = match input {
        Input::Raw(b) => (b, Vec::new()),
        Input::Built {
            segs,
            notes,
            cut,
            reads,
        } => (build(&segs, &notes, cut), reads),
    };
    let Ok(core) = ElfCore::from_bytes(&bytes) else {
        return;
    };
    for cpu in core.cpus() {
        let _ = cpu.cr3;
    }
    if let Some(v) = core.vmcoreinfo() {
        let _ = v.symbols();
        let _ = v.kernel_offset();
    }
    let segs = core.segments();
    for w in segs.windows(2) {
        assert!(
            w[0].paddr.saturating_add(w[0].memsz) <= w[1].paddr,
            "segments overlap"
        );
    }
    let mut buf = [0u8; 256];
    for s in segs.iter().take(16) {
        let _ = core.read(s.paddr, &mut buf[..64]);
        // Straddle the segment's end (and any adjacent one).
        let _ = core.read(
            s.paddr.saturating_add(s.memsz).saturating_sub(32),
            &mut buf[..64],
        );
        let _ = core.read(
            s.paddr.saturating_add(s.filesz).saturating_sub(8),
            &mut buf[..16],
        );
    }
    for (gpa, len) in reads.into_iter().take(32) {
        let _ = core.read(u64::from(gpa), &mut buf[..usize::from(len)]);
    }
    let _ = core.read(u64::MAX - 8, &mut buf[..64]);
});

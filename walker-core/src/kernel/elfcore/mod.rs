//! ELF core files as guest memory: QEMU `dump-guest-memory` (paging=false)
//! output and kdump `/proc/vmcore` copies.
//!
//! `PT_LOAD` segments are indexed by physical address (`p_paddr`); a segment
//! whose `p_filesz` is smaller than `p_memsz` reads zeros past its file part.
//! The file is memory-mapped, never read whole. Notes give each vCPU's
//! registers ([`CpuState`], CR3 from QEMU's own note) and kdump's
//! [`VmcoreInfo`].

mod cpu;
pub mod note;
mod vmcoreinfo;

use std::path::{Path, PathBuf};
use std::string::String;
use std::vec::Vec;

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::header::{EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, EM_X86_64, ET_CORE};
use goblin::elf::program_header::{PT_LOAD, PT_NOTE, ProgramHeader};
use goblin::elf::section_header::SectionHeader;

pub use cpu::CpuState;
pub use note::{Note, NoteError, Notes};
pub use vmcoreinfo::VmcoreInfo;

use crate::mem::{GuestMem, MemError, read_regions};

/// Why an ELF core file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The file could not be opened or mapped.
    #[error("cannot read core file {path}: {source}")]
    Io {
        /// The core file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Not an ELF file at all.
    #[error(
        "not an ELF file (first bytes {magic:02x?}): expected an ELF core such as \
         QEMU's dump-guest-memory (paging=false) or a kdump vmcore writes"
    )]
    NotElf {
        /// The first bytes of the data.
        magic: [u8; 4],
    },
    /// An ELF file, but not one this reader handles.
    #[error(
        "unsupported ELF core: {what}; only 64-bit little-endian x86-64 ET_CORE files are read"
    )]
    Unsupported {
        /// What is different.
        what: String,
    },
    /// The ELF or program headers are malformed.
    #[error("malformed ELF core headers: {detail}")]
    Headers {
        /// What the parser said.
        detail: String,
    },
    /// A segment's file part lies (partly) beyond the end of the file.
    #[error(
        "core file truncated: segment {index} (paddr {paddr:#x}) needs file bytes \
         {offset:#x}+{filesz:#x} but the file ends at {file_len:#x}; the dump was cut short"
    )]
    SegmentBeyondFile {
        /// Index of the program header.
        index: usize,
        /// The segment's physical address.
        paddr: u64,
        /// File offset of the segment's data.
        offset: u64,
        /// Bytes the segment claims in the file.
        filesz: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// A segment's sizes or addresses make no sense.
    #[error("malformed segment {index}: {detail}")]
    BadSegment {
        /// Index of the program header.
        index: usize,
        /// What is wrong.
        detail: String,
    },
    /// A note area is malformed.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// A note is too short for the structure its type promises.
    #[error("{owner} note type {n_type} has {len} bytes, fewer than the {need} its layout needs")]
    ShortNote {
        /// Note owner (`CORE`, `QEMU`, ...).
        owner: String,
        /// Note type.
        n_type: u32,
        /// Descriptor length found.
        len: usize,
        /// Minimum length needed.
        need: usize,
    },
    /// No `PT_LOAD` segment: there is no memory to read.
    #[error("the core file has no PT_LOAD segments, so no guest memory to read")]
    NoMemory,
}

/// One piece of guest-physical memory backed by the core file.
///
/// After [`ElfCore::from_bytes`] pieces are sorted and disjoint: where
/// segments overlap (a vmcore maps the kernel text twice), the earlier one
/// wins and later ones are trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address of the first byte.
    pub paddr: u64,
    /// Bytes of guest memory covered.
    pub memsz: u64,
    /// File offset of the first byte.
    pub file_offset: u64,
    /// Bytes present in the file; the rest (up to `memsz`) reads as zeros.
    pub filesz: u64,
}

impl Segment {
    fn end(&self) -> u64 {
        // Checked at construction: paddr + memsz does not overflow.
        self.paddr.saturating_add(self.memsz)
    }
}

/// Guest memory and vCPU state from an ELF core file.
///
/// `S` holds the file's bytes: a memory map for [`ElfCore::open`], any byte
/// storage for [`ElfCore::from_bytes`].
#[derive(Debug)]
pub struct ElfCore<S = memmap2::Mmap> {
    data: S,
    segments: Vec<Segment>,
    cpus: Vec<CpuState>,
    vmcoreinfo: Option<VmcoreInfo>,
}

const NT_PRSTATUS: u32 = 1;
/// `PN_XNUM`: the real program header count is in section header 0.
const PN_XNUM: u16 = 0xffff;

impl ElfCore<memmap2::Mmap> {
    /// Map and parse the core file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CoreError> {
        let path = path.as_ref();
        let io = |source| CoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        let map = crate::kernel::map_file(path).map_err(io)?;
        Self::from_bytes(map)
    }
}

impl<S: AsRef<[u8]>> ElfCore<S> {
    /// Parse a core file held in `data`.
    pub fn from_bytes(data: S) -> Result<Self, CoreError> {
        let bytes = data.as_ref();
        let phdrs = program_headers(bytes)?;
        let file_len = bytes.len() as u64;
        let mut segments = Vec::new();
        let mut prstatus = Vec::new();
        let mut qemu = Vec::new();
        let mut vmcoreinfo = None;
        for (index, ph) in phdrs.iter().enumerate() {
            let file_end = ph.p_offset.checked_add(ph.p_filesz);
            if (ph.p_type == PT_LOAD || ph.p_type == PT_NOTE)
                && file_end.is_none_or(|end| end > file_len)
            {
                return Err(CoreError::SegmentBeyondFile {
                    index,
                    paddr: ph.p_paddr,
                    offset: ph.p_offset,
                    filesz: ph.p_filesz,
                    file_len,
                });
            }
            match ph.p_type {
                PT_LOAD => {
                    let bad = |detail: String| CoreError::BadSegment { index, detail };
                    if ph.p_filesz > ph.p_memsz {
                        return Err(bad(std::format!(
                            "p_filesz {:#x} exceeds p_memsz {:#x}",
                            ph.p_filesz,
                            ph.p_memsz
                        )));
                    }
                    if ph.p_paddr.checked_add(ph.p_memsz).is_none() {
                        return Err(bad(std::format!(
                            "p_paddr {:#x} + p_memsz {:#x} overflows",
                            ph.p_paddr,
                            ph.p_memsz
                        )));
                    }
                    if ph.p_memsz > 0 {
                        segments.push(Segment {
                            paddr: ph.p_paddr,
                            memsz: ph.p_memsz,
                            file_offset: ph.p_offset,
                            filesz: ph.p_filesz,
                        });
                    }
                }
                PT_NOTE => {
                    let area = file_range(bytes, ph.p_offset, ph.p_filesz).unwrap_or_default();
                    for note in Notes::new(area) {
                        let note = note?;
                        match (note.name, note.n_type) {
                            (b"CORE", NT_PRSTATUS) => prstatus.push(cpu::parse_prstatus(&note)?),
                            (b"QEMU", 0) => qemu.push(cpu::parse_qemu(&note)?),
                            (b"VMCOREINFO", 0) => vmcoreinfo = Some(VmcoreInfo::parse(note.desc)),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if segments.is_empty() {
            return Err(CoreError::NoMemory);
        }
        let segments = disjoint(segments);
        let cpus = cpu::combine(prstatus, qemu);
        Ok(Self {
            data,
            segments,
            cpus,
            vmcoreinfo,
        })
    }

    /// The memory pieces, sorted by physical address and disjoint.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Each vCPU's registers, in the order the notes list them (QEMU: CPU
    /// index order). Empty if the core has no register notes.
    pub fn cpus(&self) -> &[CpuState] {
        &self.cpus
    }

    /// The registers of every vCPU that ran the kernel (see
    /// [`CpuState::started`]), for [`crate::embed::Dumper::capture_with`].
    pub fn vcpus(&self) -> Vec<crate::capture::vcpus::VcpuState> {
        self.cpus
            .iter()
            .filter(|c| c.started())
            .map(|c| crate::capture::vcpus::VcpuState {
                index: c.index as u32,
                rip: c.rip,
                rsp: c.rsp,
                rflags: c.rflags,
                cr3: c.cr3,
                cs: Some(c.cs),
            })
            .collect()
    }

    /// kdump's (or QEMU's, with `-device vmcoreinfo`) VMCOREINFO note.
    pub fn vmcoreinfo(&self) -> Option<&VmcoreInfo> {
        self.vmcoreinfo.as_ref()
    }

    /// The underlying bytes of the core file.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_ref()
    }

    /// The piece containing `gpa`, if any.
    fn segment_at(&self, gpa: u64) -> Option<&Segment> {
        let after = self.segments.partition_point(|s| s.paddr <= gpa);
        let s = self.segments.get(after.checked_sub(1)?)?;
        (gpa < s.end()).then_some(s)
    }
}

impl<S: AsRef<[u8]>> GuestMem for ElfCore<S> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let bytes = self.data.as_ref();
        read_regions(
            gpa,
            buf,
            self.segments.len(),
            |at| self.segment_at(at).map(|s| (s.paddr, s.memsz, s)),
            |seg, off, piece| {
                let unmapped = MemError::Unmapped {
                    gpa: seg.paddr,
                    len: seg.memsz,
                };
                // File-backed part first, then zeros past p_filesz.
                let in_file = usize::try_from(seg.filesz.saturating_sub(off))
                    .map_or(piece.len(), |f| f.min(piece.len()));
                let (file_part, zero_part) = piece.split_at_mut(in_file);
                if !file_part.is_empty() {
                    let start = seg.file_offset.checked_add(off).ok_or(unmapped)?;
                    let src = file_range(bytes, start, file_part.len() as u64).ok_or(unmapped)?;
                    file_part.copy_from_slice(src);
                }
                zero_part.fill(0);
                Ok(())
            },
        )
    }
}

/// `bytes[offset..offset + len]`, if it is inside `bytes`.
fn file_range(bytes: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    bytes.get(start..end)
}

/// Check the ELF header and return the program headers.
fn program_headers(bytes: &[u8]) -> Result<Vec<ProgramHeader>, CoreError> {
    let magic: [u8; 4] = bytes
        .get(..4)
        .and_then(|m| m.try_into().ok())
        .unwrap_or_default();
    if &magic != b"\x7fELF" {
        return Err(CoreError::NotElf { magic });
    }
    let unsupported = |what: String| Err(CoreError::Unsupported { what });
    match (bytes.get(EI_CLASS), bytes.get(EI_DATA)) {
        (Some(&ELFCLASS64), Some(&ELFDATA2LSB)) => {}
        (class, data) => {
            return unsupported(std::format!("ELF class {class:?}, data encoding {data:?}"));
        }
    }
    let headers = |e: goblin::error::Error| CoreError::Headers {
        detail: std::format!("{e}"),
    };
    let hdr = goblin::elf::Elf::parse_header(bytes).map_err(headers)?;
    if hdr.e_machine != EM_X86_64 {
        return unsupported(std::format!("e_machine {}", hdr.e_machine));
    }
    if hdr.e_type != ET_CORE {
        return unsupported(std::format!("e_type {} (not ET_CORE = 4)", hdr.e_type));
    }
    let ctx = Ctx::new(Container::Big, Endian::Little);
    if usize::from(hdr.e_phentsize) != ProgramHeader::size(ctx) {
        return Err(CoreError::Headers {
            detail: std::format!("e_phentsize {} is not 56", hdr.e_phentsize),
        });
    }
    let mut count = usize::from(hdr.e_phnum);
    if hdr.e_phnum == PN_XNUM {
        // Too many segments for e_phnum: section header 0 holds the count.
        let shoff = usize::try_from(hdr.e_shoff).map_err(|_| CoreError::Headers {
            detail: std::format!("e_shoff {:#x} is out of range", hdr.e_shoff),
        })?;
        let sh0 = SectionHeader::parse(bytes, shoff, 1, ctx).map_err(headers)?;
        let real = sh0.first().map_or(0, |s| s.sh_info);
        count = usize::try_from(real).unwrap_or(usize::MAX);
    }
    let phoff = usize::try_from(hdr.e_phoff).map_err(|_| CoreError::Headers {
        detail: std::format!("e_phoff {:#x} is out of range", hdr.e_phoff),
    })?;
    ProgramHeader::parse(bytes, phoff, count, ctx).map_err(headers)
}

/// Sort `segments` by address and trim overlaps so lookups can bisect.
fn disjoint(mut segments: Vec<Segment>) -> Vec<Segment> {
    segments.sort_by(|a, b| a.paddr.cmp(&b.paddr).then(b.memsz.cmp(&a.memsz)));
    let mut out: Vec<Segment> = Vec::with_capacity(segments.len());
    for mut s in segments {
        let covered = out.last().map_or(0, Segment::end);
        if !out.is_empty() && s.paddr < covered {
            if s.end() <= covered {
                continue;
            }
            let cut = covered - s.paddr;
            s.paddr = covered;
            s.memsz -= cut;
            s.file_offset = s.file_offset.saturating_add(cut);
            s.filesz = s.filesz.saturating_sub(cut);
        }
        out.push(s);
    }
    out
}

#[cfg(test)]
pub(crate) mod testelf;
#[cfg(test)]
mod tests;

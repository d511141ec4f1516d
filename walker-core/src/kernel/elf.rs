//! What ktstr needs from a vmlinux ELF: that it is one (x86-64), its notes,
//! and a section's bytes by name.

use std::string::String;
use std::vec::Vec;

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::header::{EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, EM_X86_64};
use goblin::elf::program_header::ProgramHeader;
use goblin::elf::section_header::SectionHeader;

#[cfg(feature = "images")]
use crate::kernel::elfcore::note::{Note, Notes};

const CTX: Ctx = Ctx {
    container: Container::Big,
    le: Endian::Little,
};

/// Why `bytes` is not an x86-64 ELF, or `None` if it is one.
pub(crate) fn not_x86_64_elf(bytes: &[u8]) -> Option<String> {
    if !bytes.starts_with(b"\x7fELF") {
        return Some(std::format!(
            "no ELF magic (first bytes {:02x?})",
            bytes.get(..4).unwrap_or(bytes)
        ));
    }
    if bytes.get(EI_CLASS) != Some(&ELFCLASS64) || bytes.get(EI_DATA) != Some(&ELFDATA2LSB) {
        return Some(String::from("not a 64-bit little-endian ELF"));
    }
    match goblin::elf::Elf::parse_header(bytes) {
        Err(e) => Some(std::format!("bad ELF header: {e}")),
        Ok(h) if h.e_machine != EM_X86_64 => Some(std::format!(
            "e_machine is {}, not x86-64 ({EM_X86_64})",
            h.e_machine
        )),
        Ok(_) => None,
    }
}

fn file_range(bytes: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    bytes.get(start..end)
}

/// Every well-formed note of the `PT_NOTE` segments (malformed note areas
/// end their segment's walk).
#[cfg(feature = "images")]
pub(super) fn notes(bytes: &[u8]) -> Vec<Note<'_>> {
    let Ok(h) = goblin::elf::Elf::parse_header(bytes) else {
        return Vec::new();
    };
    let Ok(phoff) = usize::try_from(h.e_phoff) else {
        return Vec::new();
    };
    let phdrs = ProgramHeader::parse(bytes, phoff, usize::from(h.e_phnum), CTX).unwrap_or_default();
    phdrs
        .iter()
        .filter(|p| p.p_type == goblin::elf::program_header::PT_NOTE)
        .filter_map(|p| file_range(bytes, p.p_offset, p.p_filesz))
        .flat_map(|area| Notes::new(area).map_while(Result::ok))
        .collect()
}

/// File bytes of the section called `name`, if there is one.
pub(crate) fn section<'a>(bytes: &'a [u8], name: &str) -> Option<&'a [u8]> {
    section_at(bytes, name).map(|(_, b)| b)
}

/// The link-time address and file bytes of the section called `name`.
pub(crate) fn section_at<'a>(bytes: &'a [u8], name: &str) -> Option<(u64, &'a [u8])> {
    let h = goblin::elf::Elf::parse_header(bytes).ok()?;
    let shoff = usize::try_from(h.e_shoff).ok()?;
    let shdrs = SectionHeader::parse(bytes, shoff, usize::from(h.e_shnum), CTX).ok()?;
    let strtab = shdrs.get(usize::from(h.e_shstrndx))?;
    let names = file_range(bytes, strtab.sh_offset, strtab.sh_size)?;
    let wanted = name.as_bytes();
    shdrs.iter().find_map(|s| {
        let tail = names.get(s.sh_name..)?;
        let found = tail.strip_prefix(wanted)?;
        if found.first() != Some(&0) {
            return None;
        }
        Some((s.sh_addr, file_range(bytes, s.sh_offset, s.sh_size)?))
    })
}

/// `(p_vaddr, file bytes)` of every `PT_LOAD` segment.
pub(crate) fn loads(bytes: &[u8]) -> Vec<(u64, &[u8])> {
    let Ok(h) = goblin::elf::Elf::parse_header(bytes) else {
        return Vec::new();
    };
    let Ok(phoff) = usize::try_from(h.e_phoff) else {
        return Vec::new();
    };
    let phdrs = ProgramHeader::parse(bytes, phoff, usize::from(h.e_phnum), CTX).unwrap_or_default();
    phdrs
        .iter()
        .filter(|p| p.p_type == goblin::elf::program_header::PT_LOAD)
        .filter_map(|p| Some((p.p_vaddr, file_range(bytes, p.p_offset, p.p_filesz)?)))
        .collect()
}

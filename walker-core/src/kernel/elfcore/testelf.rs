//! ELF64 headers as plain structs, for tests that write ELF files by hand
//! (goblin only reads ELF).

use zerocopy::{Immutable, IntoBytes};

/// `Elf64_Ehdr`.
#[derive(IntoBytes, Immutable, Clone, Copy)]
#[repr(C)]
pub(crate) struct Ehdr {
    pub ident: [u8; 16],
    pub e_type: u16,
    pub machine: u16,
    pub version: u32,
    pub entry: u64,
    pub phoff: u64,
    pub shoff: u64,
    pub flags: u32,
    pub ehsize: u16,
    pub phentsize: u16,
    pub phnum: u16,
    pub shentsize: u16,
    pub shnum: u16,
    pub shstrndx: u16,
}

impl Ehdr {
    /// A little-endian x86-64 header with program headers right after it
    /// and `shnum` section headers at `shoff` (the last is `.shstrtab`).
    pub fn x86_64(e_type: u16, phnum: u16, shoff: u64, shnum: u16) -> Self {
        Self {
            ident: *b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0",
            e_type,
            machine: 62,
            version: 1,
            entry: 0,
            phoff: 64,
            shoff,
            flags: 0,
            ehsize: 64,
            phentsize: 56,
            phnum,
            shentsize: if shnum > 0 { 64 } else { 0 },
            shnum,
            shstrndx: shnum.saturating_sub(1),
        }
    }
}

/// `Elf64_Phdr`.
#[derive(IntoBytes, Immutable, Clone, Copy)]
#[repr(C)]
pub(crate) struct Phdr {
    pub p_type: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

/// `Elf64_Shdr`.
#[derive(IntoBytes, Immutable, Clone, Copy, Default)]
#[repr(C)]
pub(crate) struct Shdr {
    pub name: u32,
    pub sh_type: u32,
    pub flags: u64,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
    pub link: u32,
    pub info: u32,
    pub addralign: u64,
    pub entsize: u64,
}

/// One ELF note, padded to 4 bytes as Linux and QEMU write them.
pub(crate) fn note(name: &[u8], n_type: u32, desc: &[u8]) -> std::vec::Vec<u8> {
    let mut v = std::vec::Vec::new();
    v.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
    v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    v.extend_from_slice(&n_type.to_le_bytes());
    v.extend_from_slice(name);
    v.push(0);
    v.resize(v.len().next_multiple_of(4), 0);
    v.extend_from_slice(desc);
    v.resize(v.len().next_multiple_of(4), 0);
    v
}

//! A vmlinux ELF, memory-mapped (never read whole): its BTF, its
//! link-time symbols (its `.symtab`, or when stripped, its own kallsyms
//! tables in `.rodata`), and the bytes of `linux_banner` that
//! [`crate::discover`] looks for in guest memory.

use std::path::Path;
use std::string::{String, ToString};
use std::vec::Vec;

use crate::Symbols;
use crate::discover::KernelImage;
use crate::kallsyms::{Kallsyms, KallsymsError};
use crate::kernel::btf::{BtfError, KernelBtf};
use crate::kernel::elf;
use crate::kernel::ksyms::SymbolTable;

/// Longest banner read.
const BANNER_MAX: usize = 512;

/// Why a vmlinux could not be used.
#[derive(Debug, thiserror::Error)]
pub enum VmlinuxError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Not an x86-64 ELF (a bzImage must be turned into its vmlinux first).
    #[error("{source_name} is not an x86-64 vmlinux ELF: {why}")]
    NotElf {
        /// The file.
        source_name: String,
        /// What is wrong.
        why: String,
    },
    /// Neither a `.symtab` nor kallsyms tables.
    #[error("{source_name} has no .symtab and its kallsyms tables were not found: {why}")]
    NoSymbols {
        /// The file.
        source_name: String,
        /// What the kallsyms finder said.
        why: KallsymsError,
    },
    /// A symbol discovery needs is missing.
    #[error("{source_name} has no symbol {name}")]
    MissingSymbol {
        /// The file.
        source_name: String,
        /// The symbol.
        name: &'static str,
    },
    /// `linux_banner` is not in the file's loaded segments.
    #[error("{source_name}: linux_banner at {va:#x} is not in a loaded segment")]
    NoBanner {
        /// The file.
        source_name: String,
        /// Its link-time address.
        va: u64,
    },
    /// BTF could not be read.
    #[error(transparent)]
    Btf(#[from] BtfError),
}

/// Where the link-time symbols came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSymbols {
    /// The ELF `.symtab`.
    Symtab,
    /// The kernel's kallsyms tables in `.rodata`.
    Kallsyms,
}

/// A vmlinux ELF and what discovery and capture need from it.
#[derive(Debug)]
pub struct Vmlinux<S = memmap2::Mmap> {
    data: S,
    source: String,
    symbols: Symbols,
    from: LinkSymbols,
    /// `linux_banner` (file offset, length without the NUL).
    banner: (usize, usize),
}

impl Vmlinux<memmap2::Mmap> {
    /// Map the vmlinux at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, VmlinuxError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let io = |source| VmlinuxError::Io {
            path: name.clone(),
            source,
        };
        let map = crate::kernel::map_file(path).map_err(io)?;
        Self::from_bytes(map, &name)
    }
}

impl<S: AsRef<[u8]>> Vmlinux<S> {
    /// A vmlinux held in `data`; `source` names it in messages.
    pub fn from_bytes(data: S, source: &str) -> Result<Self, VmlinuxError> {
        let bytes = data.as_ref();
        let source_name = source.to_string();
        if let Some(why) = elf::not_x86_64_elf(bytes) {
            return Err(VmlinuxError::NotElf { source_name, why });
        }
        let (symbols, from) = match SymbolTable::from_elf(bytes, source) {
            Ok(t) if t.symbols().linux_banner.is_some() => (t.symbols(), LinkSymbols::Symtab),
            _ => {
                let k = kallsyms(bytes).map_err(|why| VmlinuxError::NoSymbols {
                    source_name: source_name.clone(),
                    why,
                })?;
                let s = k.symbols().map_err(|why| VmlinuxError::NoSymbols {
                    source_name: source_name.clone(),
                    why,
                })?;
                (s, LinkSymbols::Kallsyms)
            }
        };
        let va = symbols.linux_banner.ok_or(VmlinuxError::MissingSymbol {
            source_name: source_name.clone(),
            name: "linux_banner",
        })?;
        let banner = file_offset(bytes, va)
            .and_then(|off| {
                let tail = bytes.get(off..)?;
                let len = tail.iter().take(BANNER_MAX).position(|&b| b == 0)?;
                Some((off, len))
            })
            .ok_or(VmlinuxError::NoBanner {
                source_name: source_name.clone(),
                va,
            })?;
        Ok(Self {
            data,
            source: source_name,
            symbols,
            from,
            banner,
        })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_ref()
    }

    /// What names this vmlinux in messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Link-time addresses of every symbol [`Symbols`] holds.
    pub fn link_symbols(&self) -> &Symbols {
        &self.symbols
    }

    /// Where [`Vmlinux::link_symbols`] came from.
    pub fn link_symbols_from(&self) -> LinkSymbols {
        self.from
    }

    /// `linux_banner`, without its NUL.
    pub fn banner(&self) -> &[u8] {
        let (off, len) = self.banner;
        self.bytes().get(off..off + len).unwrap_or_default()
    }

    /// What [`crate::discover::discover`] needs.
    pub fn image(&self) -> KernelImage<'_> {
        KernelImage {
            symbols: &self.symbols,
            banner: self.banner(),
        }
    }

    /// The kernel's BTF (only the `.BTF` section is read).
    pub fn btf(&self) -> Result<KernelBtf, VmlinuxError> {
        Ok(KernelBtf::from_elf(self.bytes(), &self.source)?)
    }

    /// The kallsyms tables in the file's `.rodata`.
    pub fn kallsyms(&self) -> Result<Kallsyms<'_>, KallsymsError> {
        kallsyms(self.bytes())
    }

    /// The file bytes at link-time address `va`, `len` long.
    pub fn bytes_at(&self, va: u64, len: usize) -> Option<&[u8]> {
        let off = file_offset(self.bytes(), va)?;
        self.bytes().get(off..off.checked_add(len)?)
    }
}

/// The kallsyms tables of the vmlinux in `bytes`: in `.rodata`, or without
/// section headers, in the first loaded segment.
fn kallsyms(bytes: &[u8]) -> Result<Kallsyms<'_>, KallsymsError> {
    let (va, data) = elf::section_at(bytes, ".rodata")
        .or_else(|| elf::loads(bytes).into_iter().next())
        .ok_or(KallsymsError::NoTokenTable)?;
    Kallsyms::find(data, va)
}

/// The file offset of link-time address `va`.
fn file_offset(bytes: &[u8], va: u64) -> Option<usize> {
    let loads: Vec<(u64, &[u8])> = elf::loads(bytes);
    loads.iter().find_map(|(start, data)| {
        let off = va.checked_sub(*start).filter(|o| *o < data.len() as u64)?;
        let base = data.as_ptr() as usize - bytes.as_ptr() as usize;
        base.checked_add(off as usize)
    })
}

//! Kernel symbol tables for [`Symbols`]: an ELF `.symtab`, a System.map, or
//! `/proc/kallsyms` text; and the KASLR slide between a link-time table and
//! a runtime one.
//!
//! Text parsers are line-bounded and never panic: lines that are not
//! `address type name [module]` are skipped and counted.

mod symtab;
mod text;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::string::{String, ToString};

use crate::Symbols;

/// Largest symbol text file read (a full kallsyms is ~15 MiB).
pub const MAX_TEXT_BYTES: u64 = 512 << 20;

/// `__START_KERNEL_map`: kernel-image addresses are at or above it; the
/// per-CPU symbols of kernels before 6.15 are small offsets below it.
const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;

/// Where a table's addresses come from, which decides what they mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolSource {
    /// A vmlinux ELF `.symtab`: link-time addresses.
    Symtab,
    /// A System.map: link-time addresses.
    SystemMap,
    /// `/proc/kallsyms`: runtime addresses (KASLR applied).
    Kallsyms,
}

impl SymbolSource {
    /// What to do when a symbol is missing from a table of this kind.
    fn missing_hint(self) -> &'static str {
        match self {
            SymbolSource::Symtab | SymbolSource::SystemMap => {
                "pass --kallsyms FILE (the guest's /proc/kallsyms)"
            }
            SymbolSource::Kallsyms => {
                "this kernel does not have it (check its version and config; \
                 variables need CONFIG_KALLSYMS_ALL)"
            }
        }
    }
}

/// Why a symbol table could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum KsymsError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is larger than any symbol table should be.
    #[error("{} is larger than {limit} bytes: not a symbol table", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// A vmlinux without `.symtab`.
    #[error("no .symtab in {table} (stripped vmlinux): pass --kallsyms or --system-map")]
    NoSymtab {
        /// The vmlinux.
        table: String,
    },
    /// Not a readable ELF.
    #[error("{table} is not a readable ELF: {detail}")]
    Elf {
        /// The file.
        table: String,
        /// What the parser said.
        detail: String,
    },
    /// No line looked like a symbol.
    #[error(
        "no symbols in {table}: none of its {lines} lines is `address type name [module]` \
         as in System.map or /proc/kallsyms"
    )]
    NoSymbols {
        /// The table.
        table: String,
        /// Lines read.
        lines: usize,
    },
    /// Debian's placeholder System.map.
    #[error(
        "{table} is a placeholder System.map (\"{note}\"): pass the guest's /proc/kallsyms \
         with --kallsyms, or the real System.map from the kernel's -dbg package"
    )]
    StubSystemMap {
        /// The file.
        table: String,
        /// The placeholder's text.
        note: String,
    },
    /// kallsyms read without the right to see addresses.
    #[error(
        "all {count} addresses in {table} are zero: kernel.kptr_restrict hides them; \
         read it as root with `sysctl kernel.kptr_restrict=0`"
    )]
    AddressesHidden {
        /// The table.
        table: String,
        /// Symbols read.
        count: usize,
    },
    /// A symbol the caller needs is absent.
    #[error("symbol {name} not found in {table}: {hint}")]
    Missing {
        /// The symbol.
        name: String,
        /// The table (or other source) searched.
        table: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// The two tables' `_text` differ by a non-page amount.
    #[error(
        "{link} and {runtime} disagree on _text by {slide:#x}, which is not a whole number of \
         pages: they are not from the same kernel build"
    )]
    KernelMismatch {
        /// Link-time table.
        link: String,
        /// Runtime table.
        runtime: String,
        /// The difference found.
        slide: u64,
    },
}

/// What a parse kept and what it skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Lines (text) or symbol entries (ELF) examined.
    pub lines: usize,
    /// Distinct symbol names kept.
    pub symbols: usize,
    /// Lines that were not symbols.
    pub skipped: usize,
    /// 1-based number of the first skipped line.
    pub first_skipped_line: Option<usize>,
    /// kallsyms lines of loadable modules (not kept).
    pub module_symbols: usize,
    /// Names seen more than once (a global beats a local; else first wins).
    pub duplicates: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    addr: u64,
    global: bool,
}

/// Symbol name -> address, from one source.
#[derive(Debug, Clone)]
pub struct SymbolTable {
    kind: SymbolSource,
    source: String,
    map: HashMap<String, Entry>,
    stats: ParseStats,
}

impl SymbolTable {
    fn new(kind: SymbolSource, source: &str) -> Self {
        Self {
            kind,
            source: String::from(source),
            map: HashMap::new(),
            stats: ParseStats::default(),
        }
    }

    fn insert(&mut self, name: &str, addr: u64, global: bool) {
        if let Some(e) = self.map.get_mut(name) {
            self.stats.duplicates += 1;
            if global && !e.global {
                *e = Entry { addr, global };
            }
            return;
        }
        self.map.insert(String::from(name), Entry { addr, global });
        self.stats.symbols += 1;
    }

    /// Parse `/proc/kallsyms` text; `source` names it in messages.
    pub fn parse_kallsyms(text: &[u8], source: &str) -> Result<Self, KsymsError> {
        text::parse(text, SymbolSource::Kallsyms, source)
    }

    /// Parse System.map text; `source` names it in messages.
    pub fn parse_system_map(text: &[u8], source: &str) -> Result<Self, KsymsError> {
        text::parse(text, SymbolSource::SystemMap, source)
    }

    /// Read the `.symtab` of an ELF in `bytes`; `source` names it in messages.
    pub fn from_elf(bytes: &[u8], source: &str) -> Result<Self, KsymsError> {
        symtab::parse(bytes, source)
    }

    /// Read `/proc/kallsyms` (or a saved copy) at `path`.
    pub fn open_kallsyms(path: impl AsRef<Path>) -> Result<Self, KsymsError> {
        let path = path.as_ref();
        Self::parse_kallsyms(&read_text(path)?, &path.display().to_string())
    }

    /// Read a System.map at `path`.
    pub fn open_system_map(path: impl AsRef<Path>) -> Result<Self, KsymsError> {
        let path = path.as_ref();
        Self::parse_system_map(&read_text(path)?, &path.display().to_string())
    }

    /// Read the `.symtab` of the vmlinux at `path` (memory-mapped).
    pub fn open_elf(path: impl AsRef<Path>) -> Result<Self, KsymsError> {
        let path = path.as_ref();
        let io = |source| KsymsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let map = crate::kernel::map_file(path).map_err(io)?;
        Self::from_elf(&map, &path.display().to_string())
    }

    /// Which kind of source the table came from.
    pub fn kind(&self) -> SymbolSource {
        self.kind
    }

    /// The source's name (usually its path).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// What the parse kept and skipped.
    pub fn stats(&self) -> ParseStats {
        self.stats
    }

    /// Number of distinct names.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the table is empty (parsers never return one).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The address of `name`.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.map.get(name).map(|e| e.addr)
    }

    /// The address of `name`, or an error that says where it was looked
    /// for and what to pass instead.
    pub fn require(&self, name: &str) -> Result<u64, KsymsError> {
        self.get(name).ok_or_else(|| KsymsError::Missing {
            name: String::from(name),
            table: self.source.clone(),
            hint: self.kind.missing_hint(),
        })
    }

    /// Every (name, address) pair, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.map.iter().map(|(n, e)| (n.as_str(), e.addr))
    }

    /// The addresses of every symbol [`Symbols`] has a slot for.
    pub fn symbols(&self) -> Symbols {
        let mut s = Symbols::default();
        for name in Symbols::NAMES {
            if let Some(addr) = self.get(name) {
                s.set(name, addr);
            }
        }
        s
    }
}

/// `symbols.<name>`, or an error naming `source` and suggesting
/// `--kallsyms` when it is absent.
pub fn require(symbols: &Symbols, name: &str, source: &str) -> Result<u64, KsymsError> {
    symbols.get(name).ok_or_else(|| KsymsError::Missing {
        name: String::from(name),
        table: String::from(source),
        hint: SymbolSource::Symtab.missing_hint(),
    })
}

/// The KASLR slide: runtime `_text` minus link-time `_text` (wrapping).
pub fn kaslr_slide(link_time: &SymbolTable, runtime: &SymbolTable) -> Result<u64, KsymsError> {
    let link = link_time.require("_text")?;
    let run = runtime.require("_text")?;
    let slide = run.wrapping_sub(link);
    if slide % 0x1000 != 0 {
        return Err(KsymsError::KernelMismatch {
            link: link_time.source.clone(),
            runtime: runtime.source.clone(),
            slide,
        });
    }
    Ok(slide)
}

/// Runtime addresses for [`Symbols`]: the runtime table's where it has
/// them, else the link-time table's moved by the KASLR slide (kernel-image
/// addresses only: old kernels' per-CPU offsets do not move).
pub fn runtime_symbols(
    link_time: &SymbolTable,
    runtime: &SymbolTable,
) -> Result<Symbols, KsymsError> {
    let slide = kaslr_slide(link_time, runtime)?;
    let mut s = Symbols::default();
    for name in Symbols::NAMES {
        let addr = runtime.get(name).or_else(|| {
            link_time.get(name).map(|a| {
                if a >= START_KERNEL_MAP {
                    a.wrapping_add(slide)
                } else {
                    a
                }
            })
        });
        if let Some(addr) = addr {
            s.set(name, addr);
        }
    }
    Ok(s)
}

/// Read at most [`MAX_TEXT_BYTES`] of `path` (procfs files report size 0,
/// so the size is found by reading).
fn read_text(path: &Path) -> Result<std::vec::Vec<u8>, KsymsError> {
    use std::io::Read;
    let io = |source| KsymsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut buf = std::vec::Vec::new();
    crate::kernel::open_regular(path)
        .map_err(io)?
        .take(MAX_TEXT_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() as u64 > MAX_TEXT_BYTES {
        return Err(KsymsError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_TEXT_BYTES,
        });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests;

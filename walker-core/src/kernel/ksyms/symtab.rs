//! A vmlinux ELF's `.symtab` (present in build trees and -dbg packages,
//! stripped from distribution vmlinuz payloads).

use std::string::{String, ToString};

use goblin::elf::section_header::SHT_SYMTAB;
use goblin::elf::sym::{STB_GLOBAL, STB_WEAK, STT_FILE, STT_SECTION};

use super::{KsymsError, SymbolSource, SymbolTable};

pub(super) fn parse(bytes: &[u8], source: &str) -> Result<SymbolTable, KsymsError> {
    let elf = goblin::elf::Elf::parse(bytes).map_err(|e| KsymsError::Elf {
        table: String::from(source),
        detail: e.to_string(),
    })?;
    if !elf.section_headers.iter().any(|s| s.sh_type == SHT_SYMTAB) || elf.syms.is_empty() {
        return Err(KsymsError::NoSymtab {
            table: String::from(source),
        });
    }
    let mut table = SymbolTable::new(SymbolSource::Symtab, source);
    // Bounded by the symbol count goblin validated against the file size.
    for sym in elf.syms.iter() {
        table.stats.lines += 1;
        let name = elf.strtab.get_at(sym.st_name).unwrap_or_default();
        if name.is_empty() || sym.st_shndx == 0 || matches!(sym.st_type(), STT_FILE | STT_SECTION) {
            table.stats.skipped += 1;
            continue;
        }
        let global = matches!(sym.st_bind(), STB_GLOBAL | STB_WEAK);
        table.insert(name, sym.st_value, global);
    }
    if table.map.is_empty() {
        return Err(KsymsError::NoSymtab {
            table: String::from(source),
        });
    }
    Ok(table)
}

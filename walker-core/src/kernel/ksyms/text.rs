//! System.map and `/proc/kallsyms` text: `address type name [module]` lines.

use std::string::String;

use super::{KsymsError, SymbolSource, SymbolTable};

/// `KSYM_NAME_LEN`: no kernel symbol name is longer.
const MAX_NAME: usize = 512;

/// What Debian ships instead of a System.map.
const STUB_MARKER: &[u8] = b"The real System.map is in";

struct Line<'a> {
    addr: u64,
    ty: u8,
    name: &'a str,
    module: bool,
}

/// One line, or `None` if it is not a symbol line.
fn parse_line(line: &[u8]) -> Option<Line<'_>> {
    let line = core::str::from_utf8(line).ok()?;
    let mut fields = line.split_ascii_whitespace();
    let addr = fields.next()?;
    let ty = fields.next()?;
    let name = fields.next()?;
    let module = match fields.next() {
        None => false,
        Some(m) if m.len() > 2 && m.starts_with('[') && m.ends_with(']') => true,
        Some(_) => return None,
    };
    if fields.next().is_some() {
        return None;
    }
    if addr.is_empty() || addr.len() > 16 || !addr.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let addr = u64::from_str_radix(addr, 16).ok()?;
    let &[ty] = ty.as_bytes() else { return None };
    if !ty.is_ascii_alphabetic() || name.len() > MAX_NAME {
        return None;
    }
    Some(Line {
        addr,
        ty,
        name,
        module,
    })
}

pub(super) fn parse(
    text: &[u8],
    kind: SymbolSource,
    source: &str,
) -> Result<SymbolTable, KsymsError> {
    let mut table = SymbolTable::new(kind, source);
    let mut nonzero = false;
    let mut stub_note = None;
    // One iteration per line: bounded by the input length.
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        table.stats.lines += 1;
        match parse_line(raw) {
            Some(l) if l.module => table.stats.module_symbols += 1,
            Some(l) => {
                nonzero |= l.addr != 0;
                // Upper-case types are global (exported to other units).
                table.insert(l.name, l.addr, l.ty.is_ascii_uppercase());
            }
            None => {
                table.stats.skipped += 1;
                table.stats.first_skipped_line.get_or_insert(i + 1);
                if stub_note.is_none() {
                    stub_note = raw
                        .windows(STUB_MARKER.len())
                        .position(|w| w == STUB_MARKER)
                        .and_then(|at| raw.get(at..))
                        .map(|note| String::from_utf8_lossy(note).into_owned());
                }
            }
        }
    }
    if table.map.is_empty() {
        return Err(match stub_note {
            Some(note) => KsymsError::StubSystemMap {
                table: String::from(source),
                note,
            },
            None => KsymsError::NoSymbols {
                table: String::from(source),
                lines: table.stats.lines,
            },
        });
    }
    if !nonzero {
        return Err(KsymsError::AddressesHidden {
            table: String::from(source),
            count: table.stats.symbols,
        });
    }
    Ok(table)
}

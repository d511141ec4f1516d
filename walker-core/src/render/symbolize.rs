//! Naming kernel text addresses (an exit's backtrace) the way the kernel's
//! `%pS` does, `function+0xoff/0xsize`, from the kallsyms tables of the
//! kernel image (the same tables the guest's `/proc/kallsyms` reads).

use std::ops::ControlFlow;
use std::string::String;
use std::vec::Vec;

use crate::kallsyms::{Kallsyms, KallsymsError};

/// Text symbols by link-time address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextSymbols {
    /// `(address, name start, name end)` in `names`, sorted by address.
    entries: Vec<(u64, u32, u32)>,
    names: String,
}

impl TextSymbols {
    /// The text symbols (`t`/`T`/`w`/`W`) of kallsyms tables.
    pub fn from_kallsyms(k: &Kallsyms<'_>) -> Result<Self, KallsymsError> {
        let mut t = TextSymbols::default();
        k.for_each(|kind, name, addr| {
            if matches!(kind, b't' | b'T' | b'w' | b'W')
                && let Ok(name) = core::str::from_utf8(name)
            {
                t.push(addr, name);
            }
            ControlFlow::Continue(())
        })?;
        t.entries.sort_unstable_by_key(|e| e.0);
        Ok(t)
    }

    /// A table of the given `(address, name)` pairs (tests, other sources).
    pub fn from_pairs<'n>(pairs: impl IntoIterator<Item = (u64, &'n str)>) -> Self {
        let mut t = TextSymbols::default();
        for (a, n) in pairs {
            t.push(a, n);
        }
        t.entries.sort_unstable_by_key(|e| e.0);
        t
    }

    fn push(&mut self, addr: u64, name: &str) {
        let start = self.names.len() as u32;
        self.names.push_str(name);
        self.entries.push((addr, start, self.names.len() as u32));
    }

    /// Symbols held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The symbol containing link-time address `addr`: its name, `addr`'s
    /// offset in it and its size (to the next symbol; `None` for the last).
    pub fn lookup(&self, addr: u64) -> Option<(&str, u64, Option<u64>)> {
        let i = self
            .entries
            .partition_point(|e| e.0 <= addr)
            .checked_sub(1)?;
        let &(at, start, end) = self.entries.get(i)?;
        let next = self.entries.get(i + 1).map(|e| e.0.wrapping_sub(at));
        let name = self.names.get(start as usize..end as usize)?;
        Some((name, addr.wrapping_sub(at), next))
    }
}

/// A [`TextSymbols`] table for a guest whose kernel slid by `slide`.
#[derive(Debug, Clone, Copy)]
pub struct Symbolizer<'a> {
    /// Link-time symbols.
    pub table: &'a TextSymbols,
    /// Runtime minus link-time address (KASLR).
    pub slide: u64,
}

impl Symbolizer<'_> {
    /// Runtime address `addr` as `function+0xoff/0xsize`, `None` outside
    /// the kernel's text.
    pub fn name(&self, addr: u64) -> Option<String> {
        let (name, off, size) = self.table.lookup(addr.wrapping_sub(self.slide))?;
        // Past the last symbol or a symbol larger than any function: not text.
        let size = size.filter(|s| *s < 1 << 24)?;
        Some(std::format!("{name}+{off:#x}/{size:#x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_named_as_the_kernel_prints_them() {
        let t = TextSymbols::from_pairs([(0x2000, "b"), (0x1000, "a"), (0x2100, "c")]);
        let s = Symbolizer {
            table: &t,
            slide: 0x10,
        };
        assert_eq!(s.name(0x1010).as_deref(), Some("a+0x0/0x1000"));
        assert_eq!(s.name(0x2030).as_deref(), Some("b+0x20/0x100"));
        assert_eq!(s.name(0x100), None, "before the first symbol");
        assert_eq!(s.name(0x3000), None, "after the last one");
    }
}

//! The kernel's own compressed symbol table (`kallsyms_*`), found by its
//! structure in a copy of the kernel's read-only data and decoded without
//! an allocator.
//!
//! A stripped vmlinux (no `.symtab`) still carries these tables in
//! `.rodata`: they are what `/proc/kallsyms` prints. Since Linux 6.4
//! `scripts/kallsyms` emits, in this order: `kallsyms_num_syms` (u32),
//! `kallsyms_names`, `kallsyms_markers` (u32 per 256 symbols),
//! `kallsyms_token_table` (256 NUL-terminated strings),
//! `kallsyms_token_index` (256 u16), `kallsyms_offsets` (i32 per symbol),
//! then up to 6.x `kallsyms_relative_base` (u64). Labels were 8-byte
//! aligned up to 6.x and are packed in 7.x. Three address encodings are
//! recognised: base-relative (`relative_base + offset`), base-relative with
//! absolute per-CPU symbols (x86-64 before 6.15), and 7.x's PC-relative
//! offsets (`&kallsyms_offsets[i] + offset`, no relative base). Before 6.4
//! the offsets and relative base came first; that order is recognised too.
//!
//! [`Kallsyms::find`] locates the token table by the run of single-digit
//! tokens `"0"`..`"9"` (every kernel has digits in its symbol names, and a
//! byte that occurs in names keeps its own token), then checks every table
//! against the others: the token index against the token table, the
//! markers against the names they index, the symbol count against both,
//! and the decoded addresses for order. Every scan and loop is bounded by
//! the slice; nothing panics on arbitrary bytes.

use core::ops::ControlFlow;

use crate::symbols::Symbols;

/// Longest symbol name, including its type character (`KSYM_NAME_LEN`).
pub const KSYM_NAME_LEN: usize = 512;
/// Most symbols accepted (a large kernel has ~250k).
pub const MAX_SYMS: u32 = 1 << 22;
/// Token-table candidates examined before giving up.
const MAX_CANDIDATES: usize = 64;
/// Tokens 48..=57 are `"0"` .. `"9"`.
const DIGITS: &[u8; 20] = b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00";
/// Most padding between two tables.
const MAX_PAD: usize = 8;

/// Why the kallsyms tables could not be found or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KallsymsError {
    /// No run of digit tokens with a consistent token table and index.
    #[error(
        "no kallsyms token table found (the kernel was built without CONFIG_KALLSYMS, or this is not its read-only data)"
    )]
    NoTokenTable,
    /// The markers before the token table are not an increasing u32 array.
    #[error("kallsyms_markers before the token table at {0:#x} are malformed")]
    NoMarkers(u64),
    /// No symbol count and name table agree with the markers.
    #[error("no kallsyms_num_syms/kallsyms_names agree with the {markers} markers at {at:#x}")]
    NoNames {
        /// Address of `kallsyms_markers`.
        at: u64,
        /// Number of markers.
        markers: u32,
    },
    /// No encoding of `kallsyms_offsets` gives sorted kernel addresses.
    #[error(
        "kallsyms_offsets not found, or in no known encoding, next to the token index at {0:#x}"
    )]
    NoOffsets(u64),
    /// A name entry runs past the table or expands past `KSYM_NAME_LEN`.
    #[error("kallsyms name {index} at {at:#x} is malformed")]
    BadName {
        /// Symbol index.
        index: u32,
        /// Address of its entry.
        at: u64,
    },
}

/// How `kallsyms_offsets` encode addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `relative_base + offset` (6.x).
    RelativeBase(u64),
    /// Non-negative offsets are absolute (per-CPU symbols), negative ones
    /// `relative_base - 1 - offset` (`CONFIG_KALLSYMS_ABSOLUTE_PERCPU`).
    AbsolutePercpu(u64),
    /// `&kallsyms_offsets[i] + offset` (7.x).
    PcRelative,
}

/// Where each table is (kernel virtual addresses in the address space the
/// data was given in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KallsymsLocations {
    /// `kallsyms_num_syms`.
    pub num_syms: u64,
    /// `kallsyms_names`.
    pub names: u64,
    /// `kallsyms_markers`.
    pub markers: u64,
    /// `kallsyms_token_table`.
    pub token_table: u64,
    /// `kallsyms_token_index`.
    pub token_index: u64,
    /// `kallsyms_offsets`.
    pub offsets: u64,
    /// `kallsyms_relative_base`, when the encoding has one.
    pub relative_base: Option<u64>,
}

/// The kallsyms tables inside `data`, whose first byte is at kernel
/// virtual address `base`.
#[derive(Debug, Clone, Copy)]
pub struct Kallsyms<'a> {
    data: &'a [u8],
    base: u64,
    num_syms: u32,
    /// Offsets into `data`.
    names: usize,
    token_table: usize,
    token_index: usize,
    offsets: usize,
    markers: usize,
    num_syms_at: usize,
    relative_base_at: Option<usize>,
    encoding: Encoding,
}

fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        d.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        d.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Length of the NUL-terminated string at `at` (at most `KSYM_NAME_LEN`).
fn strlen(d: &[u8], at: usize) -> Option<usize> {
    d.get(at..)?
        .iter()
        .take(KSYM_NAME_LEN)
        .position(|&b| b == 0)
}

/// Positions of `needle` in `hay`, at most `MAX_CANDIDATES`.
fn find_all<'h>(hay: &'h [u8], needle: &'h [u8]) -> impl Iterator<Item = usize> + 'h {
    let first = needle.first().copied().unwrap_or(0);
    hay.iter()
        .enumerate()
        .filter(move |&(i, &b)| b == first && hay.get(i..i + needle.len()) == Some(needle))
        .map(|(i, _)| i)
        .take(MAX_CANDIDATES)
}

impl<'a> Kallsyms<'a> {
    /// Find the tables in `data` (e.g. a vmlinux's `.rodata`, or guest
    /// memory copied from the kernel image), whose first byte is at kernel
    /// virtual address `base`.
    pub fn find(data: &'a [u8], base: u64) -> Result<Self, KallsymsError> {
        let mut last = KallsymsError::NoTokenTable;
        for digit0 in find_all(data, DIGITS) {
            let Some((table, index)) = Self::token_tables(data, base, digit0) else {
                continue;
            };
            match Self::around(data, base, table, index) {
                Ok(k) => return Ok(k),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Whether offset `at` of `data` is `align`-aligned in the kernel's
    /// address space.
    fn aligned(base: u64, at: usize, align: u64) -> bool {
        base.wrapping_add(at as u64).is_multiple_of(align)
    }

    /// The token table and index around the digit tokens at `digit0`.
    fn token_tables(d: &[u8], base: u64, digit0: usize) -> Option<(usize, usize)> {
        // Tokens 48..=255 run from `digit0`; the index follows, maybe padded.
        let mut end = digit0;
        for _ in 48..256 {
            let n = strlen(d, end)?;
            if n == 0 {
                return None;
            }
            end = end.checked_add(n + 1)?;
        }
        (end..end + MAX_PAD)
            .filter(|i| Self::aligned(base, *i, 2))
            .find_map(|index| {
                let off48 = usize::from(u16_at(d, index.checked_add(96)?)?);
                let table = digit0.checked_sub(off48)?;
                Self::index_fits(d, table, index, end).then_some((table, index))
            })
    }

    /// Whether every index entry starts its token, token i+1 follows token
    /// i, and the last ends at `end`.
    fn index_fits(d: &[u8], table: usize, index: usize, end: usize) -> bool {
        let mut at = table;
        for i in 0..256usize {
            let Some(off) = u16_at(d, index + 2 * i) else {
                return false;
            };
            if table + usize::from(off) != at {
                return false;
            }
            match strlen(d, at) {
                Some(n) if n > 0 => at += n + 1,
                _ => return false,
            }
        }
        at == end
    }

    fn around(d: &'a [u8], base: u64, table: usize, index: usize) -> Result<Self, KallsymsError> {
        // The markers end right at the token table or a padding word
        // before it; with a single marker both are 0: try either end.
        let mut last = KallsymsError::NoMarkers(base.wrapping_add(table as u64));
        for end in [table, table.wrapping_sub(4)] {
            match Self::from_markers(d, base, table, index, end) {
                Ok(k) => return Ok(k),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The tables, if the markers end at `end`.
    fn from_markers(
        d: &'a [u8],
        base: u64,
        table: usize,
        index: usize,
        end: usize,
    ) -> Result<Self, KallsymsError> {
        let markers = Self::markers(d, base, table, end)?;
        let (names, num_syms_at, num_syms) = Self::names(d, base, markers, end)?;
        let mut k = Self {
            data: d,
            base,
            num_syms,
            names,
            token_table: table,
            token_index: index,
            offsets: 0,
            markers,
            num_syms_at,
            relative_base_at: None,
            encoding: Encoding::PcRelative,
        };
        k.find_offsets()?;
        Ok(k)
    }

    /// Where `kallsyms_markers` starts, given that it ends at `end`, just
    /// before the token table at `table`: increasing u32s, the first 0.
    fn markers(d: &[u8], base: u64, table: usize, end: usize) -> Result<usize, KallsymsError> {
        let no_markers = KallsymsError::NoMarkers(base.wrapping_add(table as u64));
        if end > table || table - end > 4 || !Self::aligned(base, end, 4) {
            return Err(no_markers);
        }
        let mut markers = end;
        let mut next = u32::MAX;
        for _ in 0..(MAX_SYMS / 256) {
            let at = markers.checked_sub(4).ok_or(no_markers)?;
            let v = u32_at(d, at).ok_or(no_markers)?;
            if v >= next {
                return Err(no_markers);
            }
            markers = at;
            next = v;
            if v == 0 {
                return Ok(markers);
            }
        }
        Err(no_markers)
    }

    /// `kallsyms_names` and `kallsyms_num_syms`: the names end (maybe
    /// padded) at the markers and start after the count (maybe padded to
    /// 8), which fits the markers; found by scanning back from the last
    /// marked name.
    fn names(
        d: &[u8],
        base: u64,
        markers: usize,
        end: usize,
    ) -> Result<(usize, usize, u32), KallsymsError> {
        let va = |at: usize| base.wrapping_add(at as u64);
        let nr_markers = ((end - markers) / 4) as u32;
        let no_names = KallsymsError::NoNames {
            at: va(markers),
            markers: nr_markers,
        };
        let last_marker = u32_at(d, end - 4).ok_or(no_names)? as usize;
        let lo = u64::from((nr_markers - 1).saturating_mul(256));
        let hi = u64::from(nr_markers.saturating_mul(256).min(MAX_SYMS));
        let mut names = markers.checked_sub(last_marker).ok_or(no_names)?;
        names = names
            .checked_sub((va(names) & 3) as usize)
            .ok_or(no_names)?;
        loop {
            let fits = |count_at: usize| {
                let n = u64::from(u32_at(d, count_at)?);
                (n > lo && n <= hi && Self::names_fit(d, names, n as u32, markers, end))
                    .then_some((names, count_at, n as u32))
            };
            let padded = names
                .checked_sub(8)
                .filter(|c| u32_at(d, c + 4) == Some(0) && Self::aligned(base, *c, 8));
            if let Some(found) = names
                .checked_sub(4)
                .and_then(fits)
                .or_else(|| padded.and_then(fits))
            {
                return Ok(found);
            }
            names = names.checked_sub(4).ok_or(no_names)?;
        }
    }

    /// `kallsyms_offsets` and the relative base. 6.4+: offsets right after
    /// the token index (maybe padded), then in 6.x the relative base, 8-byte
    /// aligned. Before 6.4: offsets, relative base, num_syms.
    fn find_offsets(&mut self) -> Result<(), KallsymsError> {
        let va = |at: usize| self.base.wrapping_add(at as u64);
        let index = self.token_index;
        let no_offsets = KallsymsError::NoOffsets(va(index));
        let len = self.num_syms as usize * 4;
        let align8 = |at: usize| at + (va(at).wrapping_neg() & 7) as usize;
        // The offsets start at the first 4-byte boundary (any later one
        // would decode as the same sorted list shifted by one).
        let offsets = index + 512 + (va(index + 512).wrapping_neg() & 3) as usize;
        if self.try_offsets(offsets, Some(align8(offsets + len))) {
            return Ok(());
        }
        let older_rb = self.num_syms_at.checked_sub(8).ok_or(no_offsets)?;
        let older = older_rb.checked_sub(len + (len & 4)).ok_or(no_offsets)?;
        if self.try_offsets(older, Some(older_rb)) {
            return Ok(());
        }
        Err(no_offsets)
    }

    /// Whether `n` names from `names` match the markers and end, padded by
    /// less than 8 bytes, at them.
    fn names_fit(d: &[u8], names: usize, n: u32, markers: usize, end: usize) -> bool {
        let mut at = names;
        for i in 0..n {
            if i % 256 == 0 {
                let want = u32_at(d, markers + (i / 256) as usize * 4);
                if want.map(|w| names + w as usize) != Some(at) {
                    return false;
                }
            }
            match Self::entry(d, at) {
                Some((_, next)) => at = next,
                None => return false,
            }
        }
        at <= markers && markers - at < MAX_PAD && markers + (n.div_ceil(256) as usize) * 4 == end
    }

    /// The token bytes of the name entry at `at`, and where the next starts.
    fn entry(d: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let b0 = *d.get(at)?;
        let (len, start) = if b0 & 0x80 != 0 {
            let b1 = *d.get(at + 1)?;
            ((usize::from(b0 & 0x7f)) | (usize::from(b1) << 7), at + 2)
        } else {
            (usize::from(b0), at + 1)
        };
        if len == 0 {
            return None;
        }
        let end = start.checked_add(len)?;
        Some((d.get(start..end)?, end))
    }

    /// Take the offsets at `offsets` (and the relative base at `rb`) in the
    /// first encoding whose addresses are sorted kernel addresses.
    fn try_offsets(&mut self, offsets: usize, rb: Option<usize>) -> bool {
        let d = self.data;
        let n = self.num_syms as usize;
        if !Self::aligned(self.base, offsets, 4) || d.get(offsets..offsets + n * 4).is_none() {
            return false;
        }
        self.offsets = offsets;
        let first = u32_at(d, offsets).unwrap_or(1);
        let relative_base = rb.and_then(|at| u64_at(d, at)).filter(|b| b >> 63 == 1);
        let mut candidates = [None; 3];
        if let Some(b) = relative_base {
            // The relative base is the lowest relative symbol: offset 0,
            // or -1 when per-CPU symbols are absolute.
            candidates[0] = (first == 0).then_some(Encoding::RelativeBase(b));
            let first_negative =
                (0..n).find_map(|i| u32_at(d, offsets + 4 * i).filter(|o| (*o as i32) < 0));
            candidates[1] =
                (first_negative == Some(u32::MAX)).then_some(Encoding::AbsolutePercpu(b));
        }
        candidates[2] = Some(Encoding::PcRelative);
        for e in candidates.into_iter().flatten() {
            self.encoding = e;
            self.relative_base_at = rb.filter(|_| e != Encoding::PcRelative);
            if self.sorted() {
                return true;
            }
        }
        false
    }

    /// Whether every address decodes, kernel ones in the upper half, in
    /// ascending order (absolute per-CPU ones first).
    fn sorted(&self) -> bool {
        let mut prev = 0u64;
        for i in 0..self.num_syms {
            let Some(a) = self.address(i) else {
                return false;
            };
            let percpu = matches!(self.encoding, Encoding::AbsolutePercpu(_)) && a >> 63 == 0;
            if (a < prev || a >> 63 == 0) && !percpu {
                return false;
            }
            prev = a;
        }
        true
    }

    /// Number of symbols.
    pub fn len(&self) -> u32 {
        self.num_syms
    }

    /// Whether there are no symbols (never, for a found table).
    pub fn is_empty(&self) -> bool {
        self.num_syms == 0
    }

    /// How the offsets encode addresses.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Where the tables are.
    pub fn locations(&self) -> KallsymsLocations {
        let va = |at: usize| self.base.wrapping_add(at as u64);
        KallsymsLocations {
            num_syms: va(self.num_syms_at),
            names: va(self.names),
            markers: va(self.markers),
            token_table: va(self.token_table),
            token_index: va(self.token_index),
            offsets: va(self.offsets),
            relative_base: self.relative_base_at.map(va),
        }
    }

    /// The address of symbol `i`, as the tables give it.
    pub fn address(&self, i: u32) -> Option<u64> {
        let at = self.offsets.checked_add(i as usize * 4)?;
        let off = u32_at(self.data, at)?;
        let signed = off as i32 as i64 as u64;
        Some(match self.encoding {
            Encoding::RelativeBase(b) => b.wrapping_add(u64::from(off)),
            Encoding::AbsolutePercpu(_) if (off as i32) >= 0 => u64::from(off),
            // offset = relative_base - addr - 1
            Encoding::AbsolutePercpu(b) => b.wrapping_sub(1).wrapping_sub(signed),
            Encoding::PcRelative => self.base.wrapping_add(at as u64).wrapping_add(signed),
        })
    }

    /// Expand the token `t` into `out` at `len`; the new length.
    fn expand(&self, t: u8, out: &mut [u8; KSYM_NAME_LEN], len: usize) -> Option<usize> {
        let at = self.token_table
            + usize::from(u16_at(self.data, self.token_index + 2 * usize::from(t))?);
        let n = strlen(self.data, at)?;
        let tok = self.data.get(at..at + n)?;
        let dst = out.get_mut(len..len.checked_add(n)?)?;
        dst.copy_from_slice(tok);
        Some(len + n)
    }

    /// Visit every symbol in table order: its type character, name and
    /// address. The visitor returns `Break` to stop early.
    pub fn for_each(
        &self,
        mut visit: impl FnMut(u8, &[u8], u64) -> ControlFlow<()>,
    ) -> Result<(), KallsymsError> {
        let mut at = self.names;
        let mut buf = [0u8; KSYM_NAME_LEN];
        for i in 0..self.num_syms {
            let bad = KallsymsError::BadName {
                index: i,
                at: self.base.wrapping_add(at as u64),
            };
            let (tokens, next) = Self::entry(self.data, at).ok_or(bad)?;
            let mut len = 0;
            for &t in tokens {
                len = self.expand(t, &mut buf, len).ok_or(bad)?;
            }
            at = next;
            let (&kind, name) = buf.get(..len).and_then(|b| b.split_first()).ok_or(bad)?;
            let addr = self.address(i).ok_or(bad)?;
            if visit(kind, name, addr).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// The address of the first symbol called `name`.
    pub fn lookup(&self, name: &str) -> Result<Option<u64>, KallsymsError> {
        let mut found = None;
        self.for_each(|_, n, a| {
            if n == name.as_bytes() {
                found = Some(a);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })?;
        Ok(found)
    }

    /// Every symbol [`Symbols`] holds, as these tables give them (the first
    /// of equal names wins), in one pass over the names.
    pub fn symbols(&self) -> Result<Symbols, KallsymsError> {
        let mut s = Symbols::default();
        let mut left = Symbols::NAMES.len();
        self.for_each(|_, name, addr| {
            if let Ok(name) = core::str::from_utf8(name)
                && s.get(name).is_none()
                && s.set(name, addr)
            {
                left -= 1;
                if left == 0 {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })?;
        Ok(s)
    }
}

#[cfg(any(test, feature = "testkit"))]
pub mod encode;
#[cfg(test)]
mod tests;

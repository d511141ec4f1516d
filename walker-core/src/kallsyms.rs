//! The kernel's own compressed symbol table (`kallsyms_*`), found by its
//! structure in a copy of the kernel's read-only data and decoded without
//! an allocator.
//!
//! A stripped vmlinux (no `.symtab`) still carries these tables in
//! `.rodata`: they are what `/proc/kallsyms` prints. Since Linux 6.4
//! `scripts/kallsyms` emits, each label 8-byte aligned:
//! `kallsyms_num_syms` (u32), `kallsyms_names`, `kallsyms_markers`
//! (u32 per 256 symbols), `kallsyms_token_table` (256 NUL-terminated
//! strings), `kallsyms_token_index` (256 u16), `kallsyms_offsets` (u32 per
//! symbol), `kallsyms_relative_base` (u64). Before 6.4 the offsets and the
//! relative base came first; both orders are recognised.
//!
//! [`Kallsyms::find`] locates the token table by the run of single-digit
//! tokens `"0"`..`"9"` (every kernel has digits in its symbol names, and a
//! byte that occurs in names keeps its own token), then checks every table
//! against the others: the token index against the token table, the
//! markers against the names they index, the symbol count against both.
//! Every scan and loop is bounded by the slice; nothing panics on
//! arbitrary bytes.

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
    /// Neither order of the offsets and relative base fits.
    #[error("kallsyms_offsets/kallsyms_relative_base not found next to the token index at {0:#x}")]
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
    /// `kallsyms_relative_base`.
    pub relative_base: u64,
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
    relative_base_at: usize,
    /// `kallsyms_relative_base`'s value.
    relative_base: u64,
    /// Negative offsets are `relative_base - 1 - offset`, others absolute
    /// (`CONFIG_KALLSYMS_ABSOLUTE_PERCPU`, x86-64 before 6.15).
    absolute_percpu: bool,
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

/// Where a token or name entry of `data` ends.
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

    /// Offset of `va`'s 8-byte aligned successor, as an offset of `data`.
    fn align8(base: u64, at: usize) -> usize {
        let va = base.wrapping_add(at as u64);
        at.wrapping_add((va.wrapping_neg() & 7) as usize)
    }

    /// The token table and index around the digit tokens at `digit0`.
    fn token_tables(d: &[u8], base: u64, digit0: usize) -> Option<(usize, usize)> {
        // Tokens 48..=255 run from `digit0`; the index follows, aligned.
        let mut end = digit0;
        for _ in 48..256 {
            let n = strlen(d, end)?;
            if n == 0 {
                return None;
            }
            end = end.checked_add(n + 1)?;
        }
        let index = Self::align8(base, end);
        let table = digit0.checked_sub(usize::from(u16_at(d, index.checked_add(96)?)?))?;
        // Every index entry starts its token, and token i+1 follows token i.
        let mut at = table;
        for i in 0..256usize {
            if table.checked_add(usize::from(u16_at(d, index + 2 * i)?))? != at {
                return None;
            }
            let n = strlen(d, at)?;
            if n == 0 {
                return None;
            }
            at += n + 1;
        }
        (at == end && Self::align8(base, table) == table).then_some((table, index))
    }

    fn around(d: &'a [u8], base: u64, table: usize, index: usize) -> Result<Self, KallsymsError> {
        let va = |at: usize| base.wrapping_add(at as u64);
        // Markers: increasing u32s ending at the token table, maybe
        // followed by 4 bytes of padding; the first is 0.
        // With a single marker, both are 0: try either end.
        let mut last = KallsymsError::NoMarkers(va(table));
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
        let va = |at: usize| base.wrapping_add(at as u64);
        let no_markers = KallsymsError::NoMarkers(va(table));
        if end > table || table - end > 4 {
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
                break;
            }
        }
        if next != 0 {
            return Err(no_markers);
        }
        let nr_markers = ((end - markers) / 4) as u32;
        let last_marker = u32_at(d, end - 4).ok_or(no_markers)? as usize;
        // kallsyms_names ends (aligned) at the markers, and starts 8 bytes
        // after kallsyms_num_syms, whose count fits the markers.
        let no_names = KallsymsError::NoNames {
            at: va(markers),
            markers: nr_markers,
        };
        let lo = (nr_markers - 1).saturating_mul(256);
        let hi = nr_markers.saturating_mul(256);
        let mut names = markers.checked_sub(last_marker).ok_or(no_names)?;
        names -= (va(names) & 7) as usize;
        let found = loop {
            let Some(count_at) = names.checked_sub(8) else {
                return Err(no_names);
            };
            let n = u64_at(d, count_at).ok_or(no_names)?;
            if n > u64::from(lo) && n <= u64::from(hi) && n <= u64::from(MAX_SYMS) {
                let n = n as u32;
                if Self::names_fit(d, base, names, n, markers, end) {
                    break (count_at, n);
                }
            }
            names = count_at;
        };
        let (num_syms_at, num_syms) = found;
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
            relative_base_at: 0,
            relative_base: 0,
            absolute_percpu: false,
        };
        // 6.4+: offsets right after the index, then the relative base.
        // Before: offsets, relative base, then num_syms.
        let offsets_len = (num_syms as usize) * 4;
        let after_index = Self::align8(base, index + 512);
        let newer = (after_index, Self::align8(base, after_index + offsets_len));
        let older_base = num_syms_at.wrapping_sub(8);
        let older = (
            older_base.wrapping_sub(offsets_len + (offsets_len & 4)),
            older_base,
        );
        for (offsets, rb) in [newer, older] {
            if k.offsets_fit(offsets, rb) {
                return Ok(k);
            }
        }
        Err(KallsymsError::NoOffsets(va(index)))
    }

    /// Whether `n` names from `names` match the markers and end, aligned,
    /// at them.
    fn names_fit(d: &[u8], base: u64, names: usize, n: u32, markers: usize, end: usize) -> bool {
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
        Self::align8(base, at) == markers && markers + (n.div_ceil(256) as usize) * 4 == end
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

    /// Whether `offsets` and the relative base at `rb` are plausible, and
    /// if so take them.
    fn offsets_fit(&mut self, offsets: usize, rb: usize) -> bool {
        let d = self.data;
        let n = self.num_syms as usize;
        let Some(relative_base) = u64_at(d, rb) else {
            return false;
        };
        // Kernel addresses are in the upper half on every 64-bit Linux.
        if relative_base >> 63 == 0 || d.get(offsets..offsets + n * 4).is_none() {
            return false;
        }
        let Some(last) = u32_at(d, offsets + (n - 1) * 4) else {
            return false;
        };
        self.offsets = offsets;
        self.relative_base_at = rb;
        self.relative_base = relative_base;
        // The last symbol is a kernel address, never a per-CPU one: negative
        // only in the absolute-per-CPU encoding.
        self.absolute_percpu = (last as i32) < 0;
        // Symbols are sorted by address.
        let mut prev = 0u64;
        let mut sorted = true;
        for i in (0..n).step_by(n.div_ceil(64).max(1)) {
            let a = self.address(i as u32).unwrap_or(0);
            if a < prev && !self.absolute_percpu {
                sorted = false;
            }
            prev = a;
        }
        sorted
    }

    /// Number of symbols.
    pub fn len(&self) -> u32 {
        self.num_syms
    }

    /// Whether there are no symbols (never, for a found table).
    pub fn is_empty(&self) -> bool {
        self.num_syms == 0
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
            relative_base: va(self.relative_base_at),
        }
    }

    /// `kallsyms_relative_base`.
    pub fn relative_base(&self) -> u64 {
        self.relative_base
    }

    /// The address of symbol `i`, as the tables give it.
    pub fn address(&self, i: u32) -> Option<u64> {
        let off = u32_at(self.data, self.offsets.checked_add(i as usize * 4)?)?;
        Some(if !self.absolute_percpu {
            self.relative_base.wrapping_add(u64::from(off))
        } else if (off as i32) >= 0 {
            u64::from(off)
        } else {
            // offset = relative_base - addr - 1
            self.relative_base
                .wrapping_sub(1)
                .wrapping_sub(off as i32 as i64 as u64)
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

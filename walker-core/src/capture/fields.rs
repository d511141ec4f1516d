//! Reading several scalar members of one kernel object with as few guest
//! reads as possible: members close together are fetched in one chunk, and
//! all of an object's chunks land back to back in one byte buffer, from
//! which each member is decoded with one load and a mask, then or later
//! (a capture keeps the bytes and decodes after the thaw).

use crate::mem::{GuestMem, MemError};
use crate::translate::{TranslateError, Translator};

/// Largest chunk read at once (bytes); members further apart are read in
/// separate chunks.
pub const CHUNK: usize = 512;

/// Most bytes a plan's reads fill, with the 8 past them that decoding the
/// last field loads.
pub const RAW: usize = 1024;

/// One scalar member: byte offset and width (1, 2, 4 or 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Offset from the object's start.
    pub offset: u32,
    /// Width in bytes (1..=8).
    pub width: u8,
}

impl Field {
    /// A member at `offset` of `width` bytes.
    pub const fn new(offset: u32, width: u8) -> Self {
        Self { offset, width }
    }
}

/// A member every kernel has: `Some(Field)`, for plan arrays.
pub const fn req(offset: u32, width: u8) -> Option<Field> {
    Some(Field::new(offset, width))
}

/// A version-gated member: present only when the layout has it.
pub fn opt(offset: Option<u32>, width: u8) -> Option<Field> {
    offset.map(|o| Field::new(o, width))
}

/// One guest read of a plan: `offset..offset + len` of the object, into
/// `at..at + len` of the buffer.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    offset: u32,
    len: u32,
    at: u32,
}

/// A set of fields sorted and grouped into reads once, for reading many
/// objects of one type (every task) without re-planning each time.
#[derive(Debug, Clone, Copy)]
pub struct FieldPlan<const N: usize> {
    runs: [Run; N],
    nruns: usize,
    /// Where each field (in the caller's order) starts in the buffer.
    at: [u32; N],
    /// Each field's width as a mask of its low bytes; 0 for an absent field.
    mask: [u64; N],
}

impl<const N: usize> FieldPlan<N> {
    /// Plan the present fields among `fields` (any order).
    pub fn new(fields: [Option<Field>; N]) -> Self {
        Self::within(fields, RAW)
    }

    /// [`FieldPlan::new`] for a buffer of `room` bytes (at most [`RAW`]):
    /// the plan's bytes ([`FieldPlan::len`]) and 8 bytes past them, for
    /// the last field's load, fit in `room` when `8 * N + 8 <= room`.
    pub fn within(fields: [Option<Field>; N], room: usize) -> Self {
        // Read one by one, N fields of at most 8 bytes fit, with room for
        // the 8-byte load that decodes the last one.
        const { assert!(8 * N + 8 <= RAW, "too many fields for one plan") };
        let room = room.min(RAW);
        // Chunks of up to CHUNK bytes read the fewest times; if the gaps
        // they carry would overflow the buffer, read smaller chunks. The
        // window halves down to 8, where every chunk is at most 8 bytes.
        let mut window = CHUNK as u32;
        loop {
            let plan = Self::grouped(&fields, window);
            if plan.len() + 8 <= room || window <= 8 {
                return plan;
            }
            window /= 2;
        }
    }

    /// Bytes one object's planned reads fill, back to back.
    pub fn len(&self) -> usize {
        self.runs
            .iter()
            .take(self.nruns)
            .map(|r| (r.at + r.len) as usize)
            .max()
            .unwrap_or(0)
    }

    /// Whether the plan reads nothing (no field is present).
    pub fn is_empty(&self) -> bool {
        self.nruns == 0
    }

    /// Greedy grouping in offset order: a run grows while it stays within
    /// `window` bytes; runs are laid out back to back in the buffer.
    fn grouped(fields: &[Option<Field>; N], window: u32) -> Self {
        // The present fields as (field, index), sorted by offset.
        let mut present = [(Field::new(0, 1), 0usize); N];
        let mut n = 0usize;
        for (i, f) in fields.iter().enumerate() {
            if let (Some(f), Some(slot)) = (f, present.get_mut(n)) {
                *slot = (Field::new(f.offset, f.width.clamp(1, 8)), i);
                n += 1;
            }
        }
        let present = present.get_mut(..n).unwrap_or_default();
        // Insertion sort: a plan has a handful of fields, mostly in order
        // already, where the general sort's setup costs more than it saves.
        for k in 1..present.len() {
            let mut j = k;
            while j > 0 {
                match (present.get(j - 1), present.get(j)) {
                    (Some(a), Some(b)) if a.0.offset > b.0.offset => present.swap(j - 1, j),
                    _ => break,
                }
                j -= 1;
            }
        }
        let mut plan = Self {
            runs: [Run::default(); N],
            nruns: 0,
            at: [0; N],
            mask: [0; N],
        };
        // `run_of[k]`: the run that reads the k-th present field.
        let mut run_of = [0usize; N];
        for ((f, _), run) in present.iter().zip(run_of.iter_mut()) {
            let f_end = f.offset.saturating_add(u32::from(f.width));
            let last = plan.nruns.checked_sub(1);
            match last
                .and_then(|r| plan.runs.get_mut(r))
                .filter(|r| f_end.saturating_sub(r.offset) <= window)
            {
                Some(r) => r.len = r.len.max(f_end - r.offset),
                None => {
                    if let Some(r) = plan.runs.get_mut(plan.nruns) {
                        *r = Run {
                            offset: f.offset,
                            len: f_end - f.offset,
                            at: 0,
                        };
                        plan.nruns += 1;
                    }
                }
            }
            *run = plan.nruns.saturating_sub(1);
        }
        let mut at = 0u32;
        for r in plan.runs.iter_mut().take(plan.nruns) {
            r.at = at;
            at = at.saturating_add(r.len);
        }
        for (&(f, i), &run) in present.iter().zip(run_of.iter()) {
            let Some(r) = plan.runs.get(run) else {
                continue;
            };
            if let (Some(a), Some(m)) = (plan.at.get_mut(i), plan.mask.get_mut(i)) {
                *a = r.at + (f.offset - r.offset);
                *m = u64::MAX >> (64 - 8 * u32::from(f.width));
            }
        }
        plan
    }

    /// Read the planned fields of the object at `base`; absent fields give
    /// `None`.
    pub fn read<M: GuestMem + ?Sized>(
        &self,
        mem: &M,
        tr: &mut Translator,
        base: u64,
    ) -> Result<[Option<u64>; N], TranslateError> {
        let mut bytes = [0; RAW];
        self.read_into(mem, tr, base, &mut bytes)?;
        Ok(self.values(&bytes))
    }

    /// Fetch the planned fields of the object at `base` into `bytes`, for
    /// [`FieldPlan::get`]; fails if any chunk cannot be read, or if
    /// `bytes` is shorter than [`FieldPlan::len`].
    #[inline(always)]
    pub fn read_into<M: GuestMem + ?Sized>(
        &self,
        mem: &M,
        tr: &mut Translator,
        base: u64,
        bytes: &mut [u8],
    ) -> Result<(), TranslateError> {
        for r in self.runs.iter().take(self.nruns) {
            let at = base.wrapping_add(u64::from(r.offset));
            let chunk = bytes
                .get_mut(r.at as usize..(r.at + r.len) as usize)
                .ok_or(MemError::Unmapped {
                    gpa: at,
                    len: u64::from(r.len),
                })?;
            tr.read_virt(mem, at, chunk)?;
        }
        Ok(())
    }

    /// Whether field `i` (the caller's order) is present.
    #[inline]
    pub fn has(&self, i: usize) -> bool {
        self.mask.get(i).is_some_and(|&m| m != 0)
    }

    /// Field `i` (the caller's order) from `bytes` that
    /// [`FieldPlan::read_into`] filled; `None` when it is absent.
    #[inline]
    pub fn get(&self, bytes: &[u8], i: usize) -> Option<u64> {
        self.has(i).then(|| self.get_or_zero(bytes, i))
    }

    /// [`FieldPlan::get`], with 0 for an absent field: one 8-byte load
    /// and a mask (0 for an absent field), so `bytes` needs 8 to spare
    /// past [`FieldPlan::len`] (0 without them). A copy of the field's
    /// width instead would cost a libc call per field.
    #[inline]
    pub fn get_or_zero(&self, bytes: &[u8], i: usize) -> u64 {
        let (Some(&at), Some(&mask)) = (self.at.get(i), self.mask.get(i)) else {
            return 0;
        };
        let word = bytes.get(at as usize..).and_then(<[u8]>::first_chunk::<8>);
        u64::from_le_bytes(word.copied().unwrap_or_default()) & mask
    }

    /// Every field as [`FieldPlan::get_or_zero`] gives it, in the caller's
    /// order.
    #[inline]
    pub fn decode(&self, bytes: &[u8]) -> [u64; N] {
        core::array::from_fn(|i| self.get_or_zero(bytes, i))
    }

    /// Every field as [`FieldPlan::get`] gives it, in the caller's order.
    #[inline]
    pub fn values(&self, bytes: &[u8]) -> [Option<u64>; N] {
        core::array::from_fn(|i| self.get(bytes, i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::SliceMem;
    use crate::translate::DEFAULT_PAGE_OFFSET_BASE;

    #[test]
    fn any_order_and_absent_fields() {
        let mut bytes = [0u8; 64];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        let mem = SliceMem::new(0, &bytes);
        let mut tr = Translator::default();
        let got = FieldPlan::new([
            Some(Field::new(40, 1)),
            None,
            Some(Field::new(2, 2)),
            Some(Field::new(16, 4)),
        ])
        .read(&mem, &mut tr, DEFAULT_PAGE_OFFSET_BASE)
        .unwrap();
        assert_eq!(got, [Some(40), None, Some(0x0302), Some(0x1312_1110)]);
    }

    #[test]
    fn close_fields_share_a_read_and_far_ones_do_not() {
        use crate::mem::CountingMem;
        let mut bytes = [0u8; 4096];
        bytes[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        bytes[20] = 0xab;
        bytes[2000..2004].copy_from_slice(&7u32.to_le_bytes());
        let mem = CountingMem::new(SliceMem::new(0, &bytes), u64::MAX);
        let mut tr = Translator::default();
        let plan = FieldPlan::new([
            Some(Field::new(2000, 4)),
            Some(Field::new(8, 8)),
            Some(Field::new(20, 1)),
        ]);
        let got = plan.read(&mem, &mut tr, DEFAULT_PAGE_OFFSET_BASE).unwrap();
        assert_eq!(got, [Some(7), Some(0x1122_3344_5566_7788), Some(0xab)]);
        assert_eq!(mem.reads(), 2);
        let one = FieldPlan::new([Some(Field::new(0, 8))]);
        assert!(
            one.read(&mem, &mut tr, DEFAULT_PAGE_OFFSET_BASE + 4095)
                .is_err()
        );
    }

    #[test]
    fn gaps_too_wide_for_the_buffer_are_read_in_smaller_chunks() {
        use crate::mem::CountingMem;
        // Five fields 500 bytes apart: 512-byte chunks would carry gaps
        // filling more than the buffer, so each field is read alone.
        let mut bytes = [0u8; 8192];
        for k in 0..5u64 {
            let at = 1000 * k as usize;
            bytes[at..at + 8].copy_from_slice(&(k + 1).to_le_bytes());
            bytes[at + 500] = 0x40 + k as u8;
        }
        let mem = CountingMem::new(SliceMem::new(0, &bytes), u64::MAX);
        let mut tr = Translator::default();
        let mut fields = [None; 10];
        for k in 0..5u32 {
            fields[2 * k as usize] = Some(Field::new(1000 * k, 8));
            fields[2 * k as usize + 1] = Some(Field::new(1000 * k + 500, 1));
        }
        let plan = FieldPlan::new(fields);
        let got = plan.read(&mem, &mut tr, DEFAULT_PAGE_OFFSET_BASE).unwrap();
        for k in 0..5u64 {
            assert_eq!(got[2 * k as usize], Some(k + 1));
            assert_eq!(got[2 * k as usize + 1], Some(0x40 + k));
        }
        assert!(mem.bytes() < RAW as u64, "{} bytes", mem.bytes());
        // Absent fields stay absent whatever the buffer holds.
        let sparse = FieldPlan::new([None, Some(Field::new(0, 8)), None]);
        let mut raw = [0xffu8; RAW];
        sparse
            .read_into(&mem, &mut tr, DEFAULT_PAGE_OFFSET_BASE, &mut raw)
            .unwrap();
        assert_eq!(sparse.values(&raw), [None, Some(1), None]);
        assert_eq!(sparse.decode(&raw), [0, 1, 0]);
    }

    #[test]
    fn a_plan_fits_the_room_it_is_made_for_and_a_short_buffer_fails() {
        let mut bytes = [0u8; 4096];
        bytes[300] = 0x5a;
        let mem = SliceMem::new(0, &bytes);
        let mut tr = Translator::default();
        let fields = [Some(Field::new(0, 8)), Some(Field::new(300, 1))];
        // One 301-byte chunk would not leave room for the last load in 64.
        let plan = FieldPlan::within(fields, 64);
        assert!(plan.len() + 8 <= 64, "{}", plan.len());
        let mut room = [0u8; 64];
        plan.read_into(&mem, &mut tr, DEFAULT_PAGE_OFFSET_BASE, &mut room)
            .unwrap();
        assert_eq!(plan.values(&room), [Some(0), Some(0x5a)]);
        let wide = FieldPlan::new(fields);
        assert_eq!(wide.len(), 301);
        let mut short = [0u8; 64];
        assert!(
            wide.read_into(&mem, &mut tr, DEFAULT_PAGE_OFFSET_BASE, &mut short)
                .is_err()
        );
    }
}

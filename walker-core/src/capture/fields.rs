//! Reading several scalar members of one kernel object with as few guest
//! reads as possible: members close together are fetched in one chunk.

use crate::mem::GuestMem;
use crate::translate::{TranslateError, Translator};

/// Largest chunk read at once (bytes); members further apart are read in
/// separate chunks.
pub const CHUNK: usize = 512;

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

/// One guest read of a plan: fields `first..end` (in sorted order) within
/// `offset..offset + len` of the object.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    first: usize,
    end: usize,
    offset: u32,
    len: u32,
}

/// A set of fields sorted and grouped into reads once, for reading many
/// objects of one type (every task) without re-planning each time.
#[derive(Debug, Clone, Copy)]
pub struct FieldPlan<const N: usize> {
    sorted: [Field; N],
    /// `order[k]`: index in the caller's array of the k-th sorted field.
    order: [usize; N],
    runs: [Run; N],
    nruns: usize,
}

impl<const N: usize> FieldPlan<N> {
    /// Plan the present fields among `fields` (any order).
    pub fn new(fields: [Option<Field>; N]) -> Self {
        let mut order = [0usize; N];
        let mut n = 0usize;
        for (i, f) in fields.iter().enumerate() {
            if f.is_some() {
                if let Some(slot) = order.get_mut(n) {
                    *slot = i;
                }
                n += 1;
            }
        }
        let key = |i: &usize| {
            fields
                .get(*i)
                .copied()
                .flatten()
                .map_or(u32::MAX, |f| f.offset)
        };
        if let Some(present) = order.get_mut(..n) {
            present.sort_unstable_by_key(key);
        }
        let mut sorted = [Field::new(0, 1); N];
        for (dst, i) in sorted.iter_mut().zip(order.iter().take(n)) {
            if let Some(Some(f)) = fields.get(*i) {
                *dst = Field::new(f.offset, f.width.clamp(1, 8));
            }
        }
        // Greedy grouping: a run grows while it stays within one chunk.
        let mut runs = [Run::default(); N];
        let mut nruns = 0usize;
        for (k, f) in sorted.iter().take(n).enumerate() {
            let f_end = f.offset.saturating_add(u32::from(f.width));
            let extend = nruns
                .checked_sub(1)
                .and_then(|r| runs.get_mut(r))
                .filter(|r| f_end.saturating_sub(r.offset) <= CHUNK as u32);
            match extend {
                Some(r) => {
                    r.end = k + 1;
                    r.len = r.len.max(f_end - r.offset);
                }
                None => {
                    if let Some(r) = runs.get_mut(nruns) {
                        *r = Run {
                            first: k,
                            end: k + 1,
                            offset: f.offset,
                            len: f_end - f.offset,
                        };
                        nruns += 1;
                    }
                }
            }
        }
        Self {
            sorted,
            order,
            runs,
            nruns,
        }
    }

    /// Read the planned fields of the object at `base`; absent fields give
    /// `None`.
    pub fn read<M: GuestMem + ?Sized>(
        &self,
        mem: &M,
        tr: &mut Translator,
        base: u64,
    ) -> Result<[Option<u64>; N], TranslateError> {
        self.read_into(mem, tr, base, &mut [0u8; CHUNK])
    }

    /// [`FieldPlan::read`] with a caller-provided chunk buffer.
    pub fn read_into<M: GuestMem + ?Sized>(
        &self,
        mem: &M,
        tr: &mut Translator,
        base: u64,
        chunk: &mut [u8; CHUNK],
    ) -> Result<[Option<u64>; N], TranslateError> {
        let mut out = [None; N];
        for run in self.runs.iter().take(self.nruns) {
            let buf = chunk.get_mut(..run.len as usize).unwrap_or_default();
            tr.read_virt(mem, base.wrapping_add(u64::from(run.offset)), buf)?;
            let fields = self.sorted.get(run.first..run.end).unwrap_or_default();
            let slots = self.order.get(run.first..run.end).unwrap_or_default();
            for (f, &i) in fields.iter().zip(slots) {
                let at = (f.offset - run.offset) as usize;
                let mut v = [0u8; 8];
                let w = usize::from(f.width);
                if let (Some(dst), Some(src)) = (v.get_mut(..w), buf.get(at..at + w)) {
                    dst.copy_from_slice(src);
                }
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(u64::from_le_bytes(v));
                }
            }
        }
        Ok(out)
    }
}

/// Read the present fields among `fields` (any order) of the object at
/// `base`, chunked as [`read_fields`] does; absent fields give `None`.
pub fn gather<M: GuestMem + ?Sized, const N: usize>(
    mem: &M,
    tr: &mut Translator,
    base: u64,
    fields: [Option<Field>; N],
) -> Result<[Option<u64>; N], TranslateError> {
    FieldPlan::new(fields).read(mem, tr, base)
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
        let got = gather(
            &mem,
            &mut tr,
            DEFAULT_PAGE_OFFSET_BASE,
            [
                Some(Field::new(40, 1)),
                None,
                Some(Field::new(2, 2)),
                Some(Field::new(16, 4)),
            ],
        )
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
}

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

/// Read `fields` of the object at kernel virtual `base` into `out` (one
/// value per field, zero-extended little-endian). `fields` must be sorted
/// by offset; each run of fields spanning at most [`CHUNK`] bytes costs one
/// read. Returns the number of reads done.
pub fn read_fields<M: GuestMem + ?Sized>(
    mem: &M,
    tr: &mut Translator,
    base: u64,
    fields: &[Field],
    out: &mut [u64],
) -> Result<u32, TranslateError> {
    let mut chunk = [0u8; CHUNK];
    let mut reads = 0u32;
    let mut i = 0usize;
    // Each round consumes at least one field.
    while i < fields.len() {
        let Some(first) = fields.get(i) else { break };
        let start = first.offset;
        let mut end = i;
        let mut span_end = start;
        for (j, f) in fields.iter().enumerate().skip(i) {
            let f_end = f.offset.saturating_add(u32::from(f.width.clamp(1, 8)));
            if f.offset < start || f_end - start > CHUNK as u32 {
                break;
            }
            end = j + 1;
            span_end = span_end.max(f_end);
        }
        if end == i {
            // Unsorted or oversized input: read this field alone.
            end = i + 1;
            span_end = start.saturating_add(u32::from(first.width.clamp(1, 8)));
        }
        let len = (span_end - start) as usize;
        let buf = chunk.get_mut(..len).unwrap_or_default();
        tr.read_virt(mem, base.wrapping_add(u64::from(start)), buf)?;
        reads += 1;
        for (f, slot) in fields
            .get(i..end)
            .unwrap_or_default()
            .iter()
            .zip(out.iter_mut().skip(i))
        {
            let at = (f.offset - start) as usize;
            let w = usize::from(f.width.clamp(1, 8));
            let mut v = [0u8; 8];
            if let (Some(dst), Some(src)) = (v.get_mut(..w), buf.get(at..at + w)) {
                dst.copy_from_slice(src);
            }
            *slot = u64::from_le_bytes(v);
        }
        i = end;
    }
    Ok(reads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{CountingMem, SliceMem};
    use crate::translate::DEFAULT_PAGE_OFFSET_BASE;

    #[test]
    fn close_fields_share_a_read_and_far_ones_do_not() {
        let mut bytes = [0u8; 4096];
        bytes[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        bytes[20] = 0xab;
        bytes[2000..2004].copy_from_slice(&7u32.to_le_bytes());
        let mem = CountingMem::new(SliceMem::new(0, &bytes), u64::MAX);
        let mut tr = Translator::default();
        let fields = [Field::new(8, 8), Field::new(20, 1), Field::new(2000, 4)];
        let mut out = [0u64; 3];
        let reads =
            read_fields(&mem, &mut tr, DEFAULT_PAGE_OFFSET_BASE, &fields, &mut out).unwrap();
        assert_eq!(out, [0x1122_3344_5566_7788, 0xab, 7]);
        assert_eq!((reads, mem.reads()), (2, 2));
        let mut out = [0u64; 1];
        assert!(
            read_fields(
                &mem,
                &mut tr,
                DEFAULT_PAGE_OFFSET_BASE + 4095,
                &[Field::new(0, 8)],
                &mut out
            )
            .is_err()
        );
    }
}

/// A set of fields sorted once by offset, for reading many objects of one
/// type (every task) without re-planning each time.
#[derive(Debug, Clone, Copy)]
pub struct FieldPlan<const N: usize> {
    sorted: [Field; N],
    /// `order[k]`: index in the caller's array of the k-th sorted field.
    order: [usize; N],
    n: usize,
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
        let key = |i: &usize| fields.get(*i).copied().flatten().map_or(u32::MAX, |f| f.offset);
        if let Some(present) = order.get_mut(..n) {
            present.sort_unstable_by_key(key);
        }
        let mut sorted = [Field::new(0, 1); N];
        for (dst, i) in sorted.iter_mut().zip(order.iter().take(n)) {
            if let Some(Some(f)) = fields.get(*i) {
                *dst = *f;
            }
        }
        Self { sorted, order, n }
    }

    /// Read the planned fields of the object at `base`; absent fields give
    /// `None`.
    pub fn read<M: GuestMem + ?Sized>(
        &self,
        mem: &M,
        tr: &mut Translator,
        base: u64,
    ) -> Result<[Option<u64>; N], TranslateError> {
        let mut values = [0u64; N];
        read_fields(mem, tr, base, self.sorted.get(..self.n).unwrap_or_default(), &mut values)?;
        let mut out = [None; N];
        for (&i, &v) in self.order.iter().take(self.n).zip(values.iter()) {
            if let Some(slot) = out.get_mut(i) {
                *slot = Some(v);
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
mod gather_tests {
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
}

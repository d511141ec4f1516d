//! `struct rhashtable` walks: bucket table, per-bucket chains ending in
//! "nulls" markers, bucket lock bits.

use core::ops::ControlFlow;

use super::{Brent, Broken, Corrupt, Step, WalkSummary};
use crate::layout::{BucketTableLayout, RhashHeadLayout, RhashtableLayout};
use crate::mem::GuestMem;
use crate::translate::Translator;

/// Bounds of an rhashtable walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashLimits {
    /// Largest bucket count accepted (a bigger one is reported as corrupt).
    pub max_buckets: u32,
    /// Entries shown in total, over all chains.
    pub max_entries: u32,
    /// Entries followed in one chain.
    pub max_chain: u32,
}

impl Default for HashLimits {
    fn default() -> Self {
        Self {
            max_buckets: 1 << 16,
            max_entries: 1 << 16,
            max_chain: 1 << 10,
        }
    }
}

/// Buckets read per guest read.
const BUCKET_BATCH: usize = 64;

/// Walk the rhashtable at kernel virtual `ht`, showing every `rhash_head`
/// address to `visit` (the caller subtracts its member offset to get the
/// containing object). A table being resized (`future_tbl` set) is walked
/// as it stands: entries already moved are in the future table, which
/// this walker does not follow; that shows as `truncated`.
pub fn walk_rhashtable<M, F>(
    mem: &M,
    tr: &mut Translator,
    layouts: (&RhashtableLayout, &BucketTableLayout, &RhashHeadLayout),
    ht: u64,
    limits: HashLimits,
    mut visit: F,
) -> WalkSummary
where
    M: GuestMem + ?Sized,
    F: FnMut(&mut Translator, u64) -> Step,
{
    let (rht, bt, rh) = layouts;
    let mut walk = Walk {
        mem,
        rh,
        limits,
        total: 0,
        s: WalkSummary::default(),
    };
    let ended = open_table(mem, tr, rht, bt, ht, limits, &mut walk.s.truncated)
        .and_then(|(buckets, size)| walk.buckets(tr, buckets, size, &mut visit));
    if let Err(c) = ended {
        walk.s.corrupt = Some(c);
    }
    walk.s
}

/// The bucket array and bucket count of the table at `ht`, checked;
/// `resizing` is set when a future table holds part of the entries.
fn open_table<M: GuestMem + ?Sized>(
    mem: &M,
    tr: &mut Translator,
    rht: &RhashtableLayout,
    bt: &BucketTableLayout,
    ht: u64,
    limits: HashLimits,
    resizing: &mut bool,
) -> Result<(u64, u32), Corrupt> {
    let corrupt = |at, why| Corrupt { at, why };
    let tbl_at = ht.wrapping_add(rht.tbl as u64);
    let tbl: u64 = tr
        .read_virt_pod(mem, tbl_at)
        .map_err(|e| corrupt(tbl_at, Broken::Unreadable(e)))?;
    if tbl == 0 {
        return Err(corrupt(tbl_at, Broken::Null));
    }
    if !tbl.is_multiple_of(8) {
        return Err(corrupt(tbl_at, Broken::Misaligned));
    }
    let mut read_u32 = |off: u32| {
        tr.read_virt_pod::<u32, M>(mem, tbl.wrapping_add(off as u64))
            .map_err(|e| corrupt(tbl, Broken::Unreadable(e)))
    };
    let size = read_u32(bt.size)?;
    if !size.is_power_of_two() || size > limits.max_buckets {
        return Err(corrupt(tbl, Broken::BadValue(size as u64)));
    }
    if let Some(nest) = bt.nest
        && read_u32(nest)? != 0
    {
        return Err(corrupt(tbl, Broken::Nested));
    }
    if let Some(f) = bt.future_tbl
        && tr
            .read_virt_pod::<u64, M>(mem, tbl.wrapping_add(f as u64))
            .is_ok_and(|p| p != 0)
    {
        *resizing = true;
    }
    Ok((tbl.wrapping_add(bt.buckets as u64), size))
}

/// One walk's state across buckets.
struct Walk<'a, M: ?Sized> {
    mem: &'a M,
    rh: &'a RhashHeadLayout,
    limits: HashLimits,
    /// Entries followed so far, over all chains.
    total: u32,
    s: WalkSummary,
}

impl<M: GuestMem + ?Sized> Walk<'_, M> {
    /// Every chain of the `size` buckets at `buckets`, read in batches.
    fn buckets<F>(
        &mut self,
        tr: &mut Translator,
        buckets: u64,
        size: u32,
        visit: &mut F,
    ) -> Result<(), Corrupt>
    where
        F: FnMut(&mut Translator, u64) -> Step,
    {
        let mut batch = [0u64; BUCKET_BATCH];
        let mut first = 0u32;
        while first < size {
            let n = (size - first).min(BUCKET_BATCH as u32) as usize;
            let Some(slots) = batch.get_mut(..n) else {
                break;
            };
            let at = buckets.wrapping_add(first as u64 * 8);
            tr.read_virt(self.mem, at, zerocopy::IntoBytes::as_mut_bytes(slots))
                .map_err(|e| Corrupt {
                    at,
                    why: Broken::Unreadable(e),
                })?;
            for (i, &bucket) in slots.iter().enumerate() {
                let slot = at.wrapping_add(i as u64 * 8);
                if self.chain(tr, slot, bucket, visit)?.is_break() {
                    return Ok(());
                }
            }
            first += n as u32;
        }
        Ok(())
    }

    /// The chain starting at `bucket` (the value of the slot at `slot`);
    /// `Break` when the walk ends here (a cycle or the visitor's stop).
    fn chain<F>(
        &mut self,
        tr: &mut Translator,
        slot: u64,
        bucket: u64,
        visit: &mut F,
    ) -> Result<ControlFlow<()>, Corrupt>
    where
        F: FnMut(&mut Translator, u64) -> Step,
    {
        // Bit 0 of a bucket pointer is its lock; a NULL bucket or an odd
        // (nulls-marker) pointer is an empty chain. Most buckets are
        // empty: they cost a test, no chain set-up.
        let mut node = bucket & !1;
        if node == 0 {
            return Ok(ControlFlow::Continue(()));
        }
        let mut brent = Brent::new(slot);
        let mut chain = 0u32;
        while node != 0 && node & 1 == 0 {
            if self.total >= self.limits.max_entries || chain >= self.limits.max_chain {
                self.s.truncated = true;
                break;
            }
            if !node.is_multiple_of(8) {
                return Err(Corrupt {
                    at: node,
                    why: Broken::Misaligned,
                });
            }
            if brent.step(node) {
                self.s.cycle = true;
                return Ok(ControlFlow::Break(()));
            }
            self.total += 1;
            chain += 1;
            let next = tr
                .read_virt_pod::<u64, M>(self.mem, node.wrapping_add(self.rh.next as u64))
                .map_err(|e| Corrupt {
                    at: node,
                    why: Broken::Unreadable(e),
                })?;
            match visit(tr, node) {
                Step::Continue => self.s.visited += 1,
                Step::Skip => self.s.skipped += 1,
                Step::Stop => {
                    self.s.visited += 1;
                    self.s.stopped = true;
                    return Ok(ControlFlow::Break(()));
                }
            }
            node = next;
        }
        Ok(ControlFlow::Continue(()))
    }
}

#[cfg(test)]
mod tests;

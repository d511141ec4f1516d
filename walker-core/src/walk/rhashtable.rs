//! `struct rhashtable` walks: bucket table, per-bucket chains ending in
//! "nulls" markers, bucket lock bits.

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
    let mut s = WalkSummary::default();
    let fail = |s: &mut WalkSummary, at: u64, why: Broken| {
        s.corrupt = Some(Corrupt { at, why });
    };
    let tbl_at = ht.wrapping_add(rht.tbl as u64);
    let tbl: u64 = match tr.read_virt_pod(mem, tbl_at) {
        Ok(t) => t,
        Err(e) => {
            fail(&mut s, tbl_at, Broken::Unreadable(e));
            return s;
        }
    };
    if tbl == 0 || !tbl.is_multiple_of(8) {
        fail(
            &mut s,
            tbl_at,
            if tbl == 0 {
                Broken::Null
            } else {
                Broken::Misaligned
            },
        );
        return s;
    }
    let read_u32 = |tr: &mut Translator, off: u32| {
        tr.read_virt_pod::<u32, M>(mem, tbl.wrapping_add(off as u64))
    };
    let size = match read_u32(tr, bt.size) {
        Ok(v) => v,
        Err(e) => {
            fail(&mut s, tbl, Broken::Unreadable(e));
            return s;
        }
    };
    if !size.is_power_of_two() || size > limits.max_buckets {
        fail(&mut s, tbl, Broken::BadValue(size as u64));
        return s;
    }
    if let Some(nest) = bt.nest {
        match read_u32(tr, nest) {
            Ok(0) => {}
            Ok(_) => {
                fail(&mut s, tbl, Broken::Nested);
                return s;
            }
            Err(e) => {
                fail(&mut s, tbl, Broken::Unreadable(e));
                return s;
            }
        }
    }
    if let Some(f) = bt.future_tbl
        && tr
            .read_virt_pod::<u64, M>(mem, tbl.wrapping_add(f as u64))
            .is_ok_and(|p| p != 0)
    {
        s.truncated = true;
    }
    let buckets = tbl.wrapping_add(bt.buckets as u64);
    let mut batch = [0u64; BUCKET_BATCH];
    let mut total = 0u32;
    let mut first = 0u32;
    while first < size {
        let n = (size - first).min(BUCKET_BATCH as u32) as usize;
        let Some(slots) = batch.get_mut(..n) else {
            break;
        };
        let at = buckets.wrapping_add(first as u64 * 8);
        if let Err(e) = tr.read_virt(mem, at, zerocopy::IntoBytes::as_mut_bytes(slots)) {
            fail(&mut s, at, Broken::Unreadable(e));
            return s;
        }
        for (i, &bucket) in slots.iter().enumerate() {
            // Bit 0 of a bucket pointer is its lock; a NULL bucket or an odd
            // (nulls-marker) pointer is an empty chain. Most buckets are
            // empty: they cost a test, no chain set-up.
            let mut node = bucket & !1;
            if node == 0 {
                continue;
            }
            let mut brent = Brent::new(at.wrapping_add(i as u64 * 8));
            let mut chain = 0u32;
            while node != 0 && node & 1 == 0 {
                if total >= limits.max_entries || chain >= limits.max_chain {
                    s.truncated = true;
                    break;
                }
                if node % 8 != 0 {
                    fail(&mut s, node, Broken::Misaligned);
                    return s;
                }
                if brent.step(node) {
                    s.cycle = true;
                    return s;
                }
                total += 1;
                chain += 1;
                let next = match tr.read_virt_pod::<u64, M>(mem, node.wrapping_add(rh.next as u64))
                {
                    Ok(p) => p,
                    Err(e) => {
                        fail(&mut s, node, Broken::Unreadable(e));
                        return s;
                    }
                };
                match visit(tr, node) {
                    Step::Continue => s.visited += 1,
                    Step::Skip => s.skipped += 1,
                    Step::Stop => {
                        s.visited += 1;
                        s.stopped = true;
                        return s;
                    }
                }
                node = next;
            }
        }
        first += n as u32;
    }
    s
}

#[cfg(test)]
mod tests;

//! `struct list_head` walks.

use super::{Brent, Broken, Corrupt, Step, WalkSummary};
use crate::layout::ListHeadLayout;
use crate::mem::GuestMem;
use crate::translate::Translator;

/// Walk the list whose head is at kernel virtual `head`, showing each
/// node's address (not the head's) to `visit`, for at most `max_steps`
/// nodes. The visitor gets the translator back to read the node.
pub fn walk_list<M, F>(
    mem: &M,
    tr: &mut Translator,
    lh: &ListHeadLayout,
    head: u64,
    max_steps: u32,
    mut visit: F,
) -> WalkSummary
where
    M: GuestMem + ?Sized,
    F: FnMut(&mut Translator, u64) -> Step,
{
    walk_list_with(mem, tr, lh, head, None, max_steps, |tr, node| {
        let link = read_link(mem, tr, lh, node)?;
        Ok((visit(tr, node), link))
    })
}

/// [`walk_list`] for a visitor that reads each node's `(next, prev)`
/// itself, typically in the same guest read as the entry's own fields (one
/// read per entry instead of two). `visit` returns its step and the
/// node's links, or the [`Corrupt`] of [`read_link`] when the links cannot
/// be read; then the walk ends there, and the visitor must not have
/// recorded the entry. Likewise `head_next` is the head's `next` when the
/// caller read it with the fields around the head (`None`: the walk reads
/// it).
#[inline]
pub fn walk_list_with<M, F>(
    mem: &M,
    tr: &mut Translator,
    lh: &ListHeadLayout,
    head: u64,
    head_next: Option<u64>,
    max_steps: u32,
    mut visit: F,
) -> WalkSummary
where
    M: GuestMem + ?Sized,
    F: FnMut(&mut Translator, u64) -> Result<(Step, (u64, u64)), Corrupt>,
{
    let mut s = WalkSummary::default();
    if head_next == Some(head) {
        // Empty (most bypass DSQs and idle CPUs' lists): no walk to set up.
        return s;
    }
    let mut brent = Brent::new(head);
    let mut prev = head;
    let first = match head_next {
        Some(next) => Ok(next),
        None => read_link(mem, tr, lh, head).map(|(next, _)| next),
    };
    let mut node = match first {
        Ok(next) => next,
        Err(c) => {
            s.corrupt = Some(c);
            return s;
        }
    };
    let mut steps = 0u32;
    while node != head {
        if steps >= max_steps {
            s.truncated = true;
            break;
        }
        steps += 1;
        if node == 0 || node % 8 != 0 {
            s.corrupt = Some(Corrupt {
                at: prev,
                why: if node == 0 {
                    Broken::Null
                } else {
                    Broken::Misaligned
                },
            });
            break;
        }
        if brent.step(node) {
            s.cycle = true;
            break;
        }
        let (step, (next, back)) = match visit(tr, node) {
            Ok(v) => v,
            Err(c) => {
                s.corrupt = Some(c);
                break;
            }
        };
        if back != prev {
            s.bad_prev = s.bad_prev.saturating_add(1);
        }
        match step {
            Step::Continue => s.visited += 1,
            Step::Skip => s.skipped += 1,
            Step::Stop => {
                s.visited += 1;
                s.stopped = true;
                break;
            }
        }
        prev = node;
        node = next;
    }
    s
}

/// `(next, prev)` of the list_head at `at`, in one read when adjacent.
#[inline]
pub fn read_link<M: GuestMem + ?Sized>(
    mem: &M,
    tr: &mut Translator,
    lh: &ListHeadLayout,
    at: u64,
) -> Result<(u64, u64), Corrupt> {
    let unreadable = |e| Corrupt {
        at,
        why: Broken::Unreadable(e),
    };
    let (lo, hi) = (lh.next.min(lh.prev) as u64, lh.next.max(lh.prev) as u64);
    if hi - lo == 8 {
        let pair: [u64; 2] = tr
            .read_virt_pod(mem, at.wrapping_add(lo))
            .map_err(unreadable)?;
        let (first, second) = (pair[0], pair[1]);
        return Ok(if lh.next < lh.prev {
            (first, second)
        } else {
            (second, first)
        });
    }
    let next = tr
        .read_virt_pod(mem, at.wrapping_add(lh.next as u64))
        .map_err(unreadable)?;
    let prev = tr
        .read_virt_pod(mem, at.wrapping_add(lh.prev as u64))
        .map_err(unreadable)?;
    Ok((next, prev))
}

#[cfg(test)]
mod tests;

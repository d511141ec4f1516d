//! Dispatch queues: one DSQ with its tasks in order, and the pass over the
//! shared ones (per-node global DSQs, user DSQs in the scheduler's hash).

use super::fields::{Field, FieldPlan, RAW_ZERO, Raw, req};
use super::records::{DsqOrigin, DsqRecord, Fault, Span};
use super::{CaptureBuf, Cx, container_of, list_health};
use crate::layout::{DsqLayout, DsqListNodeLayout, Layout, ListHeadLayout};
use crate::mem::GuestMem;
use crate::translate::Translator;
use crate::walk::{Step, read_link, walk_list_with, walk_rhashtable};

/// Reads DSQs: the layouts and field plans, prepared once per pass rather
/// than per DSQ.
pub(super) struct DsqReader {
    d: DsqLayout,
    lh: ListHeadLayout,
    node: DsqListNodeLayout,
    /// `scx_dsq_list_node` -> task: `dsq_list` within the entity, `scx`
    /// within the task.
    to_task: [u32; 2],
    /// `id`, `nr`, `seq` of the DSQ and its list head's `next`: one read
    /// for the DSQ and the start of its walk.
    head: FieldPlan<4>,
    /// `id`, `nr`, `seq` alone, for when `head` cannot be read: the DSQ
    /// is then read as if the list head were not part of the plan.
    head_alone: FieldPlan<3>,
    /// A node's links and cursor flags, from the `scx_dsq_list_node`: one
    /// read per queued task.
    link: FieldPlan<3>,
    raw: Raw,
}

impl DsqReader {
    /// A reader for `l`, or the first group it lacks.
    pub(super) fn new(l: &Layout) -> Result<Self, Fault> {
        let d = l.dsq.ok_or(Fault::MissingGroup("scx_dispatch_q"))?;
        let lh = l.list_head.ok_or(Fault::MissingGroup("list_head"))?;
        let node = l
            .dsq_list_node
            .ok_or(Fault::MissingGroup("scx_dsq_list_node"))?;
        let (task, entity) = (
            l.task.ok_or(Fault::MissingGroup("task_struct"))?,
            l.entity.ok_or(Fault::MissingGroup("sched_ext_entity"))?,
        );
        Ok(Self {
            d,
            lh,
            node,
            to_task: [entity.dsq_list, task.scx],
            head: FieldPlan::new([
                req(d.id, 8),
                req(d.nr, 4),
                req(d.seq, 4),
                req(d.list.saturating_add(lh.next), 8),
            ]),
            head_alone: FieldPlan::new([req(d.id, 8), req(d.nr, 4), req(d.seq, 4)]),
            link: FieldPlan::new([
                req(node.node.saturating_add(lh.next), 8),
                req(node.node.saturating_add(lh.prev), 8),
                req(node.flags, 4),
            ]),
            raw: RAW_ZERO,
        })
    }
}

/// A DSQ's `id`, `nr`, `seq`, and its list head's `next` when known.
pub(super) type Head = ([u64; 3], Option<u64>);

impl DsqReader {
    /// The fields of [`Head`] for a DSQ embedded `at` bytes into another
    /// object, so that the object's plan reads them with its own.
    pub(super) fn head_fields(&self, at: u32) -> [Option<Field>; 4] {
        let (d, lh) = (self.d, self.lh);
        [
            req(at.saturating_add(d.id), 8),
            req(at.saturating_add(d.nr), 4),
            req(at.saturating_add(d.seq), 4),
            req(at.saturating_add(d.list).saturating_add(lh.next), 8),
        ]
    }

    /// The [`Head`] of the DSQ at `addr`, in one read when it can.
    fn read_head<M: GuestMem + ?Sized>(
        &mut self,
        mem: &M,
        tr: &mut Translator,
        addr: u64,
    ) -> Result<Head, Fault> {
        if self.head.read_into(mem, tr, addr, &mut self.raw).is_ok() {
            let v = |i| self.head.get_or_zero(&self.raw, i);
            return Ok(([v(0), v(1), v(2)], self.head.get(&self.raw, 3)));
        }
        // As if the list head were not part of the plan: the walk reads it.
        self.head_alone
            .read_into(mem, tr, addr, &mut self.raw)
            .map_err(|_| Fault::Unreadable(addr))?;
        let v = |i| self.head_alone.get_or_zero(&self.raw, i);
        Ok(([v(0), v(1), v(2)], None))
    }
}

/// Record the DSQ at `addr` with `reader` (or its fault); returns its index
/// in `buf.dsqs`. `head`: the DSQ's head fields when the caller read them
/// (see [`DsqReader::head_fields`]); `None` reads them here.
pub(super) fn capture_one<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    buf: &mut CaptureBuf<'_>,
    reader: &mut Result<DsqReader, Fault>,
    (addr, origin): (u64, DsqOrigin),
    head: Option<Head>,
) -> Result<Option<u32>, Fault> {
    let r = reader.as_mut().map_err(|f| *f)?;
    let ([id, nr, seq], head_next) = match head {
        Some(h) => h,
        None => r.read_head(cx.mem, tr, addr)?,
    };
    // Borrowed, not copied: a copy of the layouts per DSQ showed up.
    let DsqReader {
        d,
        lh,
        node,
        to_task,
        link: plan,
        raw,
        ..
    } = r;
    let (lh, node, to_task) = (&*lh, &*node, &*to_task);
    let start = buf.queued.len() as u32;
    let cursor_flag = cx.target.consts.dsq_iter_cursor;
    let queued = &mut buf.queued;
    let walk = walk_list_with(
        cx.mem,
        tr,
        lh,
        addr.wrapping_add(u64::from(d.list)),
        head_next,
        cx.limits.max_list,
        |tr, n| {
            let lnode = container_of(n, &[node.node]);
            let (link, flags) = match plan.read_into(cx.mem, tr, lnode, raw) {
                Ok(()) => {
                    let v = |i| plan.get_or_zero(raw, i);
                    ((v(0), v(1)), v(2) as u32)
                }
                // Read the links alone; unreadable flags count as 0.
                Err(_) => (
                    read_link(cx.mem, tr, lh, n)?,
                    tr.read_virt_pod(cx.mem, lnode.wrapping_add(u64::from(node.flags)))
                        .unwrap_or(0),
                ),
            };
            if flags & cursor_flag != 0 {
                return Ok((Step::Skip, link));
            }
            match queued.push(container_of(lnode, to_task)) {
                Some(_) => Ok((Step::Continue, link)),
                None => Ok((Step::Stop, link)),
            }
        },
    );
    let rec = DsqRecord {
        addr,
        origin,
        id,
        nr: nr as u32,
        seq: seq as u32,
        tasks: Span {
            start,
            len: buf.queued.len() as u32 - start,
        },
        walk: list_health(&walk),
    };
    Ok(buf.dsqs.push(rec).map(|i| i as u32))
}

/// The global DSQ of every node and every user DSQ.
pub(super) fn capture_shared<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    buf: &mut CaptureBuf<'_>,
    reader: &mut Result<DsqReader, Fault>,
) -> Result<(), Fault> {
    let root = buf.sched.root;
    let l = cx.target.layout;
    let Some(s) = l
        .sched
        .filter(|_| root != 0 && cx.target.symbols.scx_root.is_some())
    else {
        return Ok(()); // no scheduler instance: no shared DSQs to read
    };
    let mut first_fault = Fault::None;
    let mut note = |f: Fault| {
        if !first_fault.is_fault() {
            first_fault = f;
        }
    };
    // Per-node global DSQs: `pnode[node]->global_dsq` (7.x) or
    // `global_dsqs[node]` (6.16-era).
    let per_node = match (s.pnode, l.sched_pnode, s.global_dsqs) {
        (Some(p), Some(pn), _) => Some((p, pn.global_dsq)),
        (_, _, Some(g)) => Some((g, 0)),
        _ => None,
    };
    if let Some((array_off, inner)) = per_node {
        match tr.read_virt_pod::<u64, _>(cx.mem, root.wrapping_add(u64::from(array_off))) {
            Ok(array) if array != 0 => {
                for node in 0..cx.target.nr_nodes.max(1) {
                    let slot = array.wrapping_add(u64::from(node) * 8);
                    match tr.read_virt_pod::<u64, _>(cx.mem, slot) {
                        Ok(p) if p != 0 => {
                            let dsq = p.wrapping_add(u64::from(inner));
                            let origin = DsqOrigin::Global(node);
                            if let Err(f) = capture_one(cx, tr, buf, reader, (dsq, origin), None) {
                                note(f);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => note(Fault::Unreadable(slot)),
                    }
                }
            }
            Ok(_) => {}
            Err(_) => note(Fault::Unreadable(root)),
        }
    }
    // User DSQs from the scheduler's hash table.
    match (
        s.dsq_hash,
        l.rhashtable,
        l.bucket_table,
        l.rhash_head,
        l.dsq.and_then(|d| d.hash_node),
    ) {
        (Some(h), Some(rht), Some(bt), Some(rh), Some(hash_node)) => {
            let walk = walk_rhashtable(
                cx.mem,
                tr,
                (&rht, &bt, &rh),
                root.wrapping_add(u64::from(h)),
                cx.limits.hash,
                |tr, e| {
                    let dsq = container_of(e, &[hash_node]);
                    match capture_one(cx, tr, buf, reader, (dsq, DsqOrigin::User), None) {
                        Ok(Some(_)) => Step::Continue,
                        // Out of DSQ slots: the rest would be dropped anyway.
                        Ok(None) => Step::Stop,
                        Err(f) => {
                            note(f);
                            Step::Continue
                        }
                    }
                },
            );
            buf.health.dsq_hash_walk = list_health(&walk);
        }
        _ => note(Fault::MissingGroup("rhashtable")),
    }
    if first_fault.is_fault() {
        Err(first_fault)
    } else {
        Ok(())
    }
}

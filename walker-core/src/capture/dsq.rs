//! Dispatch queues: one DSQ with its tasks in order, and the pass over the
//! shared ones (per-node global DSQs, user DSQs in the scheduler's hash).

use super::fields::{gather, req};
use super::records::{DsqOrigin, DsqRecord, Fault, Span};
use super::{CaptureBuf, Cx, container_of, list_health};
use crate::mem::GuestMem;
use crate::translate::Translator;
use crate::walk::{Step, walk_list, walk_rhashtable};

/// Record the DSQ at `addr`; returns its index in `buf.dsqs`.
pub(super) fn capture_one<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    buf: &mut CaptureBuf<'_>,
    addr: u64,
    origin: DsqOrigin,
) -> Result<Option<u32>, Fault> {
    let l = cx.target.layout;
    let d = l.dsq.ok_or(Fault::MissingGroup("scx_dispatch_q"))?;
    let lh = l.list_head.ok_or(Fault::MissingGroup("list_head"))?;
    let node = l
        .dsq_list_node
        .ok_or(Fault::MissingGroup("scx_dsq_list_node"))?;
    let (task, entity) = (
        l.task.ok_or(Fault::MissingGroup("task_struct"))?,
        l.entity.ok_or(Fault::MissingGroup("sched_ext_entity"))?,
    );
    let [id, nr, seq] = gather(
        cx.mem,
        tr,
        addr,
        [req(d.id, 8), req(d.nr, 4), req(d.seq, 4)],
    )
    .map_err(|_| Fault::Unreadable(addr))?;
    let start = buf.queued.len() as u32;
    let cursor_flag = cx.target.consts.dsq_iter_cursor;
    let queued = &mut buf.queued;
    let walk = walk_list(
        cx.mem,
        tr,
        &lh,
        addr.wrapping_add(u64::from(d.list)),
        cx.limits.max_list,
        |tr, n| {
            let lnode = container_of(n, &[node.node]);
            let flags: u32 = tr
                .read_virt_pod(cx.mem, lnode.wrapping_add(u64::from(node.flags)))
                .unwrap_or(0);
            if flags & cursor_flag != 0 {
                return Step::Skip;
            }
            match queued.push(container_of(lnode, &[entity.dsq_list, task.scx])) {
                Some(_) => Step::Continue,
                None => Step::Stop,
            }
        },
    );
    let rec = DsqRecord {
        addr,
        origin,
        id: id.unwrap_or(0),
        nr: nr.unwrap_or(0) as u32,
        seq: seq.unwrap_or(0) as u32,
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
                            if let Err(f) = capture_one(
                                cx,
                                tr,
                                buf,
                                p.wrapping_add(u64::from(inner)),
                                DsqOrigin::Global(node),
                            ) {
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
                    match capture_one(cx, tr, buf, container_of(e, &[hash_node]), DsqOrigin::User) {
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

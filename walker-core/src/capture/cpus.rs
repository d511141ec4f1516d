//! The per-CPU pass: each CPU's rq and rq->scx scalars, its local and
//! bypass DSQs and its runnable list.

use super::fields::{FieldPlan, RAW_ZERO, opt, req};
use super::records::{CpuRecord, DsqOrigin, Fault, Span};
use super::{CaptureBuf, Cx, container_of, dsq, list_health};
use crate::mem::GuestMem;
use crate::translate::{Translator, per_cpu_addr};
use crate::walk::{Step, read_link, walk_list_with};
use zerocopy::IntoBytes;

/// `__per_cpu_offset` entries read at once.
const OFFSET_BATCH: usize = 64;

pub(super) fn capture<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    buf: &mut CaptureBuf<'_>,
    dsqs: &mut Result<dsq::DsqReader, Fault>,
) -> Result<(), Fault> {
    let (l, syms) = (cx.target.layout, cx.target.symbols);
    let runqueues = syms.runqueues.ok_or(Fault::MissingSymbol("runqueues"))?;
    let offsets = syms
        .per_cpu_offset
        .ok_or(Fault::MissingSymbol("__per_cpu_offset"))?;
    let rq_l = l.rq.ok_or(Fault::MissingGroup("rq"))?;
    let scx_l = l.scx_rq.ok_or(Fault::MissingGroup("scx_rq"))?;
    let lh = l.list_head.ok_or(Fault::MissingGroup("list_head"))?;
    let task = l.task.ok_or(Fault::MissingGroup("task_struct"))?;
    let entity = l.entity.ok_or(Fault::MissingGroup("sched_ext_entity"))?;
    // The scheduler's per-CPU part (bypass DSQs), when there is one.
    let sched_pcpu = match (l.sched.and_then(|s| s.pcpu), l.sched_pcpu, buf.sched.root) {
        (Some(off), Some(pc), root) if root != 0 && syms.scx_root.is_some() => tr
            .read_virt_pod::<u64, _>(cx.mem, root.wrapping_add(u64::from(off)))
            .ok()
            .filter(|p| *p != 0)
            .map(|p| (p, pc.bypass_dsq)),
        _ => None,
    };
    // Planned once for every CPU.
    let rq_plan = FieldPlan::new([
        req(rq_l.nr_running, 4),
        req(rq_l.curr, 8),
        req(rq_l.clock, 8),
        opt(rq_l.idle, 8),
    ]);
    let scx_fields = [
        req(scx_l.nr_running, 4),
        req(scx_l.flags, 4),
        opt(scx_l.cpu_released, 1),
        opt(scx_l.ops_qseq, 8),
        opt(scx_l.clock, 8),
    ];
    // With the runnable list head's `next` and the local DSQ's head, so
    // that one read starts the CPU's walks; alone when that wider read
    // fails, as if they were not there (the walks read them).
    let [a, b, c, d, e] = scx_fields;
    let runnable_next = scx_l.runnable_list.saturating_add(lh.next);
    let [f, g, h, i] = dsqs
        .as_ref()
        .map_or([None; 4], |r| r.head_fields(scx_l.local_dsq));
    let scx_plan = FieldPlan::new([a, b, c, d, e, req(runnable_next, 8), f, g, h, i]);
    let scx_alone = FieldPlan::new(scx_fields);
    let mut raw = RAW_ZERO;
    // `__per_cpu_offset` a batch at a time; a batch that cannot be read
    // whole is read entry by entry, so a bad entry faults only its CPU.
    let mut batch = [0u64; OFFSET_BATCH];
    let mut batch_ok = false;
    for cpu in 0..cx.target.nr_cpus {
        let slot = cpu as usize % OFFSET_BATCH;
        if slot == 0 {
            let n = ((cx.target.nr_cpus - cpu) as usize).min(OFFSET_BATCH);
            let at = offsets.wrapping_add(u64::from(cpu) * 8);
            let bytes = batch.get_mut(..n).unwrap_or_default().as_mut_bytes();
            batch_ok = tr.read_virt(cx.mem, at, bytes).is_ok();
        }
        let batched = batch.get(slot).copied().filter(|_| batch_ok);
        let mut rec = CpuRecord {
            cpu,
            ..CpuRecord::default()
        };
        let one = |tr: &mut Translator| tr.read_per_cpu_offset(cx.mem, offsets, cpu);
        let off = match batched.map_or_else(|| one(tr), Ok) {
            Ok(o) => o,
            Err(_) => {
                rec.fault = Fault::Unreadable(offsets.wrapping_add(u64::from(cpu) * 8));
                buf.cpus.push(rec);
                continue;
            }
        };
        let rq = per_cpu_addr(runqueues, off);
        rec.rq = rq;
        match rq_plan.read_into(cx.mem, tr, rq, &mut raw) {
            Ok(()) => {
                // Required fields are always planned: zero never stands in.
                let v = |i| rq_plan.get_or_zero(&raw, i);
                rec.nr_running = v(0) as u32;
                rec.curr = v(1);
                rec.clock = v(2);
                rec.idle = rq_plan.get(&raw, 3);
            }
            Err(_) => rec.fault = Fault::Unreadable(rq),
        }
        let scx = rq.wrapping_add(u64::from(rq_l.scx));
        let scx_values = match scx_plan.read_into(cx.mem, tr, scx, &mut raw) {
            Ok(()) => Ok(scx_plan.values(&raw)),
            Err(_) => scx_alone.read_into(cx.mem, tr, scx, &mut raw).map(|()| {
                let [a, b, c, d, e] = scx_alone.values(&raw);
                [a, b, c, d, e, None, None, None, None, None]
            }),
        };
        let (mut runnable_next, mut local_head) = (None, None);
        match scx_values {
            Ok(
                [
                    nr,
                    flags,
                    released,
                    qseq,
                    clock,
                    next,
                    id,
                    dsq_nr,
                    seq,
                    dsq_next,
                ],
            ) => {
                runnable_next = next;
                local_head = id.map(|id| {
                    let u = |v: Option<u64>| v.unwrap_or(0);
                    ([id, u(dsq_nr), u(seq)], dsq_next)
                });
                rec.scx_nr_running = nr.unwrap_or(0) as u32;
                rec.scx_flags = flags.unwrap_or(0) as u32;
                rec.cpu_released = released.map(|v| v != 0);
                rec.ops_qseq = qseq;
                rec.scx_clock = clock;
            }
            Err(_) => rec.fault = Fault::Unreadable(scx),
        }
        let local = (
            scx.wrapping_add(u64::from(scx_l.local_dsq)),
            DsqOrigin::Local(cpu),
        );
        match dsq::capture_one(cx, tr, buf, dsqs, local, local_head) {
            Ok(i) => rec.local_dsq = i,
            Err(f) => rec.fault = f,
        }
        let bypass = sched_pcpu
            .map(|(pcpu, inner)| per_cpu_addr(pcpu, off).wrapping_add(u64::from(inner)))
            .or(scx_l.bypass_dsq.map(|b| scx.wrapping_add(u64::from(b))));
        if let Some(b) = bypass {
            if let Err(f) = dsq::capture_one(cx, tr, buf, dsqs, (b, DsqOrigin::Bypass(cpu)), None) {
                rec.fault = f;
            }
        }
        let start = buf.runnable.len() as u32;
        let runnable = &mut buf.runnable;
        let walk = walk_list_with(
            cx.mem,
            tr,
            &lh,
            scx.wrapping_add(u64::from(scx_l.runnable_list)),
            runnable_next,
            cx.limits.max_list,
            |tr, node| {
                let link = read_link(cx.mem, tr, &lh, node)?;
                match runnable.push(container_of(node, &[entity.runnable_node, task.scx])) {
                    Some(_) => Ok((Step::Continue, link)),
                    None => Ok((Step::Stop, link)),
                }
            },
        );
        rec.runnable = Span {
            start,
            len: buf.runnable.len() as u32 - start,
        };
        rec.runnable_walk = list_health(&walk);
        buf.cpus.push(rec);
    }
    Ok(())
}

//! The task pass: every task on `scx_tasks`.

use super::fields::{CHUNK, FieldPlan, opt, req};
use super::records::{Fault, TaskRecord};
use super::{CaptureBuf, Cx, container_of, list_health};
use crate::mem::GuestMem;
use crate::translate::Translator;
use crate::walk::{Step, walk_list};

pub(super) fn capture<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    buf: &mut CaptureBuf<'_>,
) -> Result<(), Fault> {
    let l = cx.target.layout;
    let head = cx
        .target
        .symbols
        .scx_tasks
        .ok_or(Fault::MissingSymbol("scx_tasks"))?;
    let t = l.task.ok_or(Fault::MissingGroup("task_struct"))?;
    let e = l.entity.ok_or(Fault::MissingGroup("sched_ext_entity"))?;
    let lh = l.list_head.ok_or(Fault::MissingGroup("list_head"))?;
    let cursor = cx.target.consts.task_cursor;
    // Entity members as offsets from the task.
    let se = |o: u32| t.scx.saturating_add(o);
    let plan = FieldPlan::new([
        req(t.pid, 4),
        req(t.tgid, 4),
        req(t.comm, 8),
        req(t.comm.saturating_add(8), 8),
        req(t.state, 4),
        // on_rq/on_cpu are int in older kernels and u8 in newer ones; their
        // values fit the low byte either way (little-endian).
        req(t.on_rq, 1),
        opt(t.on_cpu, 1),
        opt(t.cpu, 4),
        req(t.sched_class, 8),
        opt(t.prio, 4),
        req(se(e.flags), 4),
        req(se(e.ops_state), 8),
        req(se(e.dsq), 8),
        req(se(e.weight), 4),
        req(se(e.slice), 8),
        req(se(e.dsq_vtime), 8),
        opt(e.sticky_cpu.map(se), 4),
        opt(e.holding_cpu.map(se), 4),
        req(se(e.runnable_at), 8),
        opt(t.cgroups, 8),
    ]);
    let tasks = &mut buf.tasks;
    let mut chunk = [0u8; CHUNK];
    let walk = walk_list(cx.mem, tr, &lh, head, cx.limits.max_tasks, |tr, node| {
        let task = container_of(node, &[e.tasks_node, t.scx]);
        let Ok(v) = plan.read_into(cx.mem, tr, task, &mut chunk) else {
            return Step::Skip;
        };
        let [
            pid,
            tgid,
            comm0,
            comm1,
            state,
            on_rq,
            on_cpu,
            cpu,
            class,
            prio,
            flags,
            ops_state,
            dsq,
            weight,
            slice,
            vtime,
            sticky,
            holding,
            runnable_at,
            css_set,
        ] = v;
        let flags = flags.unwrap_or(0) as u32;
        if flags & cursor != 0 {
            return Step::Skip;
        }
        let mut comm = [0u8; 16];
        comm[..8].copy_from_slice(&comm0.unwrap_or(0).to_le_bytes());
        comm[8..].copy_from_slice(&comm1.unwrap_or(0).to_le_bytes());
        let rec = TaskRecord {
            addr: task,
            pid: pid.unwrap_or(0) as u32 as i32,
            tgid: tgid.unwrap_or(0) as u32 as i32,
            comm,
            state: state.unwrap_or(0) as u32,
            on_rq: on_rq.unwrap_or(0) as u8,
            on_cpu: on_cpu.map(|v| v as u8),
            cpu: cpu.map(|v| v as u32),
            sched_class: class.unwrap_or(0),
            scx_flags: flags,
            ops_state: ops_state.unwrap_or(0),
            dsq: dsq.unwrap_or(0),
            weight: weight.unwrap_or(0) as u32,
            slice: slice.unwrap_or(0),
            dsq_vtime: vtime.unwrap_or(0),
            sticky_cpu: sticky.map(|v| v as u32 as i32),
            holding_cpu: holding.map(|v| v as u32 as i32),
            runnable_at: runnable_at.unwrap_or(0),
            prio: prio.map(|v| v as u32 as i32),
            css_set: css_set.unwrap_or(0),
        };
        match tasks.push(rec) {
            Some(_) => Step::Continue,
            None => Step::Stop,
        }
    });
    buf.health.tasks_walk = list_health(&walk);
    Ok(())
}

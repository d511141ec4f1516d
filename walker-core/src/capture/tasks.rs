//! The task pass: every task on `scx_tasks`.

use super::fields::{Field, FieldPlan, RAW, Raw, opt, req};
use super::records::{Fault, TaskRecord};
use super::{CaptureBuf, Cx, container_of, list_health};
use crate::layout::{ListHeadLayout, SchedExtEntityLayout, TaskLayout};
use crate::mem::GuestMem;
use crate::translate::Translator;
use crate::walk::{Step, read_link, walk_list_with};

/// The members the pass reads from each task: indices into its plan.
/// Named indices rather than a destructured array, so each member is
/// decoded straight into the record.
#[derive(Debug, Clone, Copy)]
enum M {
    Pid,
    Tgid,
    Comm0,
    Comm1,
    State,
    OnRq,
    OnCpu,
    Cpu,
    Class,
    Prio,
    Flags,
    OpsState,
    Dsq,
    Weight,
    Slice,
    Vtime,
    Sticky,
    Holding,
    RunnableAt,
    CssSet,
    Next,
    Prev,
}

const ALL: [M; 22] = [
    M::Pid,
    M::Tgid,
    M::Comm0,
    M::Comm1,
    M::State,
    M::OnRq,
    M::OnCpu,
    M::Cpu,
    M::Class,
    M::Prio,
    M::Flags,
    M::OpsState,
    M::Dsq,
    M::Weight,
    M::Slice,
    M::Vtime,
    M::Sticky,
    M::Holding,
    M::RunnableAt,
    M::CssSet,
    M::Next,
    M::Prev,
];

/// Where member `m` sits in a task, if this kernel has it.
fn member(m: M, t: &TaskLayout, e: &SchedExtEntityLayout, lh: &ListHeadLayout) -> Option<Field> {
    // Entity members as offsets from the task.
    let se = |o: u32| t.scx.saturating_add(o);
    match m {
        M::Pid => req(t.pid, 4),
        M::Tgid => req(t.tgid, 4),
        M::Comm0 => req(t.comm, 8),
        M::Comm1 => req(t.comm.saturating_add(8), 8),
        M::State => req(t.state, 4),
        // on_rq/on_cpu are int in older kernels and u8 in newer ones; their
        // values fit the low byte either way (little-endian).
        M::OnRq => req(t.on_rq, 1),
        M::OnCpu => opt(t.on_cpu, 1),
        M::Cpu => opt(t.cpu, 4),
        M::Class => req(t.sched_class, 8),
        M::Prio => opt(t.prio, 4),
        M::Flags => req(se(e.flags), 4),
        M::OpsState => req(se(e.ops_state), 8),
        M::Dsq => req(se(e.dsq), 8),
        M::Weight => req(se(e.weight), 4),
        M::Slice => req(se(e.slice), 8),
        M::Vtime => req(se(e.dsq_vtime), 8),
        M::Sticky => opt(e.sticky_cpu.map(se), 4),
        M::Holding => opt(e.holding_cpu.map(se), 4),
        M::RunnableAt => req(se(e.runnable_at), 8),
        M::CssSet => opt(t.cgroups, 8),
        // The scx_tasks links, so that one read usually covers both the
        // walk and the task.
        M::Next => req(se(e.tasks_node.saturating_add(lh.next)), 8),
        M::Prev => req(se(e.tasks_node.saturating_add(lh.prev)), 8),
    }
}

pub(super) fn capture<Mem: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, Mem>,
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
    let mut fields = [None; ALL.len()];
    for m in ALL {
        if let Some(slot) = fields.get_mut(m as usize) {
            *slot = member(m, &t, &e, &lh);
        }
    }
    let plan = FieldPlan::new(fields);
    let tasks = &mut buf.tasks;
    let mut raw = [0u8; RAW];
    let walk = walk_list_with(
        cx.mem,
        tr,
        &lh,
        head,
        None,
        cx.limits.max_tasks,
        |tr, node| {
            let task = container_of(node, &[e.tasks_node, t.scx]);
            if plan.read_into(cx.mem, tr, task, &mut raw).is_err() {
                // Not a readable task (e.g. an iterator cursor, which is a bare
                // entity): the links alone decide whether the walk goes on.
                return Ok((Step::Skip, read_link(cx.mem, tr, &lh, node)?));
            }
            let v = |m: M| plan.get(&raw, m as usize);
            let link = (v(M::Next).unwrap_or(0), v(M::Prev).unwrap_or(0));
            let flags = v(M::Flags).unwrap_or(0) as u32;
            if flags & cursor != 0 {
                return Ok((Step::Skip, link));
            }
            let fill = |rec: &mut TaskRecord| *rec = record(task, flags, &plan, &raw);
            let step = match tasks.push_with(fill) {
                Some(_) => Step::Continue,
                None => Step::Stop,
            };
            Ok((step, link))
        },
    );
    buf.health.tasks_walk = list_health(&walk);
    Ok(())
}

/// The record of the task at `task` from its members in `raw`.
#[inline(always)]
fn record(task: u64, scx_flags: u32, plan: &FieldPlan<{ ALL.len() }>, raw: &Raw) -> TaskRecord {
    let v = |m: M| plan.get(raw, m as usize);
    let u = |m: M| plan.get_or_zero(raw, m as usize);
    let mut comm = [0u8; 16];
    let (lo, hi) = comm.split_at_mut(8);
    lo.copy_from_slice(&u(M::Comm0).to_le_bytes());
    hi.copy_from_slice(&u(M::Comm1).to_le_bytes());
    TaskRecord {
        addr: task,
        pid: u(M::Pid) as u32 as i32,
        tgid: u(M::Tgid) as u32 as i32,
        comm,
        state: u(M::State) as u32,
        on_rq: u(M::OnRq) as u8,
        on_cpu: v(M::OnCpu).map(|v| v as u8),
        cpu: v(M::Cpu).map(|v| v as u32),
        sched_class: u(M::Class),
        scx_flags,
        ops_state: u(M::OpsState),
        dsq: u(M::Dsq),
        weight: u(M::Weight) as u32,
        slice: u(M::Slice),
        dsq_vtime: u(M::Vtime),
        sticky_cpu: v(M::Sticky).map(|v| v as u32 as i32),
        holding_cpu: v(M::Holding).map(|v| v as u32 as i32),
        runnable_at: u(M::RunnableAt),
        prio: v(M::Prio).map(|v| v as u32 as i32),
        css_set: u(M::CssSet),
    }
}

//! The task pass: every task on `scx_tasks`.

use super::fields::{Field, FieldPlan, opt, req};
use super::records::{Fault, TASK_BYTES, TaskRecord};
use super::{CaptureBuf, Cx, container_of, list_health};
use crate::layout::{Layout, ListHeadLayout, SchedExtEntityLayout, TaskLayout};
use crate::mem::GuestMem;
use crate::translate::Translator;
use crate::walk::{Step, read_link, walk_list_with};

/// The members the pass reads from each task: indices into its plan.
/// Named indices rather than a destructured array, so each member is
/// decoded straight into the record.
#[derive(Debug, Clone, Copy)]
enum Member {
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
    StaticPrio,
    NormalPrio,
    NrCpusAllowed,
    CpusPtr,
    CpusMask,
    DsqFlags,
    OpsQseq,
    MigrationDisabled,
    Next,
    Prev,
}

/// Every member once; a member's plan index is its discriminant.
const ALL: [Member; 30] = [
    Member::Pid,
    Member::Tgid,
    Member::Comm0,
    Member::Comm1,
    Member::State,
    Member::OnRq,
    Member::OnCpu,
    Member::Cpu,
    Member::Class,
    Member::Prio,
    Member::Flags,
    Member::OpsState,
    Member::Dsq,
    Member::Weight,
    Member::Slice,
    Member::Vtime,
    Member::Sticky,
    Member::Holding,
    Member::RunnableAt,
    Member::CssSet,
    Member::StaticPrio,
    Member::NormalPrio,
    Member::NrCpusAllowed,
    Member::CpusPtr,
    Member::CpusMask,
    Member::DsqFlags,
    Member::OpsQseq,
    Member::MigrationDisabled,
    Member::Next,
    Member::Prev,
];

/// Where member `m` sits in a task, if this kernel has it.
fn member(
    m: Member,
    t: &TaskLayout,
    e: &SchedExtEntityLayout,
    lh: &ListHeadLayout,
) -> Option<Field> {
    // Entity members as offsets from the task.
    let se = |o: u32| t.scx.saturating_add(o);
    match m {
        Member::Pid => req(t.pid, 4),
        Member::Tgid => req(t.tgid, 4),
        Member::Comm0 => req(t.comm, 8),
        Member::Comm1 => req(t.comm.saturating_add(8), 8),
        Member::State => req(t.state, 4),
        // on_rq/on_cpu are int in older kernels and u8 in newer ones; their
        // values fit the low byte either way (little-endian).
        Member::OnRq => req(t.on_rq, 1),
        Member::OnCpu => opt(t.on_cpu, 1),
        Member::Cpu => opt(t.cpu, 4),
        Member::Class => req(t.sched_class, 8),
        Member::Prio => opt(t.prio, 4),
        Member::Flags => req(se(e.flags), 4),
        Member::OpsState => req(se(e.ops_state), 8),
        Member::Dsq => req(se(e.dsq), 8),
        Member::Weight => req(se(e.weight), 4),
        Member::Slice => req(se(e.slice), 8),
        Member::Vtime => req(se(e.dsq_vtime), 8),
        Member::Sticky => opt(e.sticky_cpu.map(se), 4),
        Member::Holding => opt(e.holding_cpu.map(se), 4),
        Member::RunnableAt => req(se(e.runnable_at), 8),
        Member::CssSet => opt(t.cgroups, 8),
        Member::StaticPrio => opt(t.static_prio, 4),
        Member::NormalPrio => opt(t.normal_prio, 4),
        Member::NrCpusAllowed => opt(t.nr_cpus_allowed, 4),
        Member::CpusPtr => opt(t.cpus_ptr, 8),
        Member::CpusMask => opt(t.cpus_mask, 8),
        Member::DsqFlags => opt(e.dsq_flags.map(se), 4),
        Member::OpsQseq => opt(e.ops_qseq.map(se), 4),
        Member::MigrationDisabled => opt(t.migration_disabled, 2),
        // The scx_tasks links, so that one read usually covers both the
        // walk and the task.
        Member::Next => req(se(e.tasks_node.saturating_add(lh.next)), 8),
        Member::Prev => req(se(e.tasks_node.saturating_add(lh.prev)), 8),
    }
}

/// The pass's layouts and its plan of every task's members.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plans {
    t: TaskLayout,
    e: SchedExtEntityLayout,
    lh: ListHeadLayout,
    plan: FieldPlan<{ ALL.len() }>,
}

impl Plans {
    /// The plans for `l`, or the first group it lacks.
    pub(super) fn new(l: &Layout) -> Result<Self, Fault> {
        let t = l.task.ok_or(Fault::MissingGroup("task_struct"))?;
        let e = l.entity.ok_or(Fault::MissingGroup("sched_ext_entity"))?;
        let lh = l.list_head.ok_or(Fault::MissingGroup("list_head"))?;
        let mut fields = [None; ALL.len()];
        for m in ALL {
            if let Some(slot) = fields.get_mut(m as usize) {
                *slot = member(m, &t, &e, &lh);
            }
        }
        const { assert!(8 * ALL.len() + 8 <= TASK_BYTES) };
        Ok(Self {
            t,
            e,
            lh,
            plan: FieldPlan::within(fields, TASK_BYTES),
        })
    }
}

/// Walk `scx_tasks`, copying each task's members into its slot of
/// `buf.task_bytes`; its record gets its address and the `css_set` the
/// cgroup pass needs, [`decode`] the rest.
pub(super) fn capture<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    plans: &Result<Plans, Fault>,
    tr: &mut Translator,
    buf: &mut CaptureBuf<'_>,
) -> Result<(), Fault> {
    let head = cx
        .target
        .symbols
        .scx_tasks
        .filter(|a| *a != 0)
        .ok_or(Fault::MissingSymbol("scx_tasks"))?;
    let Plans { t, e, lh, plan } = plans.as_ref().map_err(|f| *f)?;
    let cursor = cx.target.consts.task_cursor;
    let (tasks, bytes) = (&mut buf.tasks, &mut *buf.task_bytes);
    // For a task past the last slot: read, to tell a cursor (skipped)
    // from a task (dropped, and counted).
    let mut spare = None;
    let walk = walk_list_with(
        cx.mem,
        tr,
        lh,
        head,
        None,
        cx.limits.max_tasks,
        |tr, node| {
            let task = container_of(node, &[e.tasks_node, t.scx]);
            let dst = match bytes.get_mut(tasks.len()) {
                Some(slot) => slot,
                None => spare.get_or_insert([0u8; TASK_BYTES]),
            };
            if plan.read_into(cx.mem, tr, task, dst).is_err() {
                // Not a readable task (e.g. an iterator cursor, which is a bare
                // entity): the links alone decide whether the walk goes on.
                return Ok((Step::Skip, read_link(cx.mem, tr, lh, node)?));
            }
            let u = |m: Member| plan.get_or_zero(dst, m as usize);
            let link = (u(Member::Next), u(Member::Prev));
            let scx_flags = u(Member::Flags) as u32;
            if scx_flags & cursor != 0 {
                return Ok((Step::Skip, link));
            }
            let css_set = u(Member::CssSet);
            let fill = |rec: &mut TaskRecord| {
                rec.addr = task;
                rec.css_set = css_set;
            };
            // A full buffer still counts the rest of the list (a drop
            // each), bounded by `max_tasks`: the caller learns the size it
            // needs from one capture.
            tasks.push_with(fill);
            Ok((Step::Continue, link))
        },
    );
    buf.health.tasks_walk = list_health(&walk);
    // A head that cannot be followed at all is not an empty list.
    match walk.corrupt {
        Some(c) if walk.visited == 0 && walk.skipped == 0 && c.at == head => {
            Err(buf.health.tasks_walk.fault)
        }
        _ => Ok(()),
    }
}

/// Every task record's members from the bytes [`capture`] copied.
pub(super) fn decode(plans: &Plans, buf: &mut CaptureBuf<'_>) {
    for i in 0..buf.tasks.len() {
        if let (Some(rec), Some(bytes)) = (buf.tasks.get_mut(i), buf.task_bytes.get(i)) {
            *rec = record(rec.addr, plans, bytes);
        }
    }
}

/// The record of the task at `task` from its members in `bytes`.
fn record(task: u64, plans: &Plans, bytes: &[u8]) -> TaskRecord {
    let plan = &plans.plan;
    let u = |m: Member| plan.get_or_zero(bytes, m as usize);
    let v = |m: Member| plan.get(bytes, m as usize);
    let mut comm = [0u8; 16];
    let (lo, hi) = comm.split_at_mut(8);
    lo.copy_from_slice(&u(Member::Comm0).to_le_bytes());
    hi.copy_from_slice(&u(Member::Comm1).to_le_bytes());
    TaskRecord {
        addr: task,
        pid: u(Member::Pid) as u32 as i32,
        tgid: u(Member::Tgid) as u32 as i32,
        comm,
        state: u(Member::State) as u32,
        on_rq: u(Member::OnRq) as u8,
        on_cpu: v(Member::OnCpu).map(|v| v as u8),
        cpu: v(Member::Cpu).map(|v| v as u32),
        sched_class: u(Member::Class),
        scx_flags: u(Member::Flags) as u32,
        ops_state: u(Member::OpsState),
        dsq: u(Member::Dsq),
        weight: u(Member::Weight) as u32,
        slice: u(Member::Slice),
        dsq_vtime: u(Member::Vtime),
        sticky_cpu: v(Member::Sticky).map(|v| v as u32 as i32),
        holding_cpu: v(Member::Holding).map(|v| v as u32 as i32),
        runnable_at: u(Member::RunnableAt),
        prio: v(Member::Prio).map(|v| v as u32 as i32),
        static_prio: v(Member::StaticPrio).map(|v| v as u32 as i32),
        normal_prio: v(Member::NormalPrio).map(|v| v as u32 as i32),
        nr_cpus_allowed: v(Member::NrCpusAllowed).map(|v| v as u32 as i32),
        // The mask is in the bytes read when cpus_ptr is &task->cpus_mask.
        cpus_mask: match (v(Member::CpusPtr), plans.t.cpus_mask) {
            (Some(ptr), Some(off)) if ptr == task.wrapping_add(u64::from(off)) => {
                v(Member::CpusMask)
            }
            _ => None,
        },
        dsq_flags: v(Member::DsqFlags).map(|v| v as u32),
        ops_qseq: v(Member::OpsQseq).map(|v| v as u32),
        migration_disabled: v(Member::MigrationDisabled).map(|v| v as u16),
        css_set: u(Member::CssSet),
    }
}

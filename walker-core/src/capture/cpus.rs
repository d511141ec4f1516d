//! The per-CPU pass: each CPU's rq and rq->scx scalars, its local and
//! bypass DSQs and its runnable list.

use super::buf::Slots;
use super::fields::{FieldPlan, opt, req};
use super::records::{CPU_BYTES, CpuRecord, DsqOrigin, EVENT_BYTES, Fault, Span};
use super::{CaptureBuf, Cx, container_of, dsq, kick, list_health};
use crate::layout::{Layout, ListHeadLayout, RqLayout, ScxRqLayout, TaskLayout};
use crate::mem::GuestMem;
use crate::translate::{Translator, per_cpu_addr};
use crate::walk::{Step, WalkSummary, read_link, walk_list_with};
use zerocopy::IntoBytes;

/// rq->scx scalars read (the wide plan's first fields).
const SCALARS: usize = 7;

/// `__per_cpu_offset` entries read at once.
const OFFSET_BATCH: usize = 64;

/// A CPU's bytes (see [`CpuRecord`]'s slot in `CaptureBuf::cpu_bytes`):
/// which reads worked, then the rq plan's bytes from [`RQ_AT`], then the
/// rq->scx plan's (the wide one's or, when that failed, the narrow one's).
const STATE: usize = 0;
/// Where the rq plan's bytes start.
const RQ_AT: usize = 8;
/// [`STATE`] bits.
const RQ_READ: u8 = 1;
const WIDE_READ: u8 = 2;
const ALONE_READ: u8 = 4;

/// The pass's layouts and plans, made once per kernel.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plans {
    rq_l: RqLayout,
    scx_l: ScxRqLayout,
    lh: ListHeadLayout,
    /// `scx_entity.runnable_node` -> task: `runnable_node` within the
    /// entity, `scx` within the task.
    to_task: [u32; 2],
    rq: FieldPlan<4>,
    /// Where the rq->scx plan's bytes start in a CPU's bytes.
    scx_at: usize,
    /// The rq->scx scalars, with the runnable list head's `next` and the
    /// local DSQ's head, so that one read starts the CPU's walks.
    scx: FieldPlan<12>,
    /// The scalars alone, for when that wider read fails: read as if the
    /// rest were not there (the walks read them).
    scx_alone: FieldPlan<SCALARS>,
}

impl Plans {
    /// The plans for `l`, or the first group it lacks; `dsqs` plans the
    /// local DSQ's head.
    pub(super) fn new(l: &Layout, dsqs: &Result<dsq::DsqReader, Fault>) -> Result<Self, Fault> {
        let rq_l = l.rq.ok_or(Fault::MissingGroup("rq"))?;
        let scx_l = l.scx_rq.ok_or(Fault::MissingGroup("scx_rq"))?;
        let lh = l.list_head.ok_or(Fault::MissingGroup("list_head"))?;
        let task = l.task.ok_or(Fault::MissingGroup("task_struct"))?;
        let entity = l.entity.ok_or(Fault::MissingGroup("sched_ext_entity"))?;
        let scx_fields = [
            req(scx_l.nr_running, 4),
            req(scx_l.flags, 4),
            opt(scx_l.cpu_released, 1),
            opt(scx_l.ops_qseq, 8),
            opt(scx_l.clock, 8),
            opt(scx_l.cpuperf_target, 4),
            opt(scx_l.nr_immed, 4),
        ];
        let [a, b, c, d, e, p, n] = scx_fields;
        let runnable_next = scx_l.runnable_list.saturating_add(lh.next);
        let [f, g, h, i] = dsqs
            .as_ref()
            .map_or([None; 4], |r| r.head_fields(scx_l.local_dsq));
        // Each plan within half of a CPU's bytes, past the state word.
        let half = CPU_BYTES / 2 - RQ_AT;
        let rq = FieldPlan::within(
            [
                req(rq_l.nr_running, 4),
                req(rq_l.curr, 8),
                req(rq_l.clock, 8),
                opt(rq_l.idle, 8),
            ],
            half,
        );
        Ok(Self {
            rq_l,
            scx_l,
            lh,
            to_task: [entity.runnable_node, task.scx],
            scx_at: RQ_AT + rq.len(),
            rq,
            scx: FieldPlan::within(
                [a, b, c, d, e, p, n, req(runnable_next, 8), f, g, h, i],
                half,
            ),
            scx_alone: FieldPlan::within(scx_fields, half),
        })
    }
}

/// What the pass needs of the kernel besides the plans and `runqueues`,
/// found once.
struct Bases {
    task: TaskLayout,
    /// The scheduler's per-CPU base and its bypass DSQ's offset (7.x).
    sched_pcpu: Option<(u64, u32)>,
    /// Per-CPU `scx_event_stats` base and how many bytes to read.
    events: Option<(u64, usize)>,
}

impl Bases {
    fn find<M: GuestMem + ?Sized>(
        cx: &Cx<'_, '_, M>,
        tr: &mut Translator,
        root: u64,
    ) -> Result<Self, Fault> {
        let task = cx.target.layout.task;
        let sched_pcpu = sched_pcpu(cx, tr, root);
        Ok(Self {
            task: task.ok_or(Fault::MissingGroup("task_struct"))?,
            sched_pcpu,
            events: event_stats(cx, tr, sched_pcpu.map(|(p, _)| p), root),
        })
    }

    /// Copies the CPU at per-CPU offset `off`'s event counters into `out`;
    /// whether that worked.
    fn read_events<M: GuestMem + ?Sized>(
        &self,
        cx: &Cx<'_, '_, M>,
        tr: &mut Translator,
        off: u64,
        out: Option<&mut [u8; EVENT_BYTES]>,
    ) -> bool {
        let (Some((base, size)), Some(out)) = (self.events, out) else {
            return false;
        };
        let out = out.get_mut(..size).unwrap_or_default();
        tr.read_virt(cx.mem, per_cpu_addr(base, off), out).is_ok()
    }
}

/// The current task, read while paused: after the thaw it may be gone, and
/// an idle or non-ext task is not on scx_tasks.
#[derive(Default)]
struct Curr {
    pid: Option<i32>,
    comm: [u8; 16],
    class: u64,
}

pub(super) fn capture<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    plans: &Result<Plans, Fault>,
    tr: &mut Translator,
    buf: &mut CaptureBuf<'_>,
    dsqs: &mut Result<dsq::DsqReader, Fault>,
) -> Result<(), Fault> {
    let syms = cx.target.symbols;
    let runqueues = syms.runqueues.ok_or(Fault::MissingSymbol("runqueues"))?;
    let mut offsets = Offsets::new(syms.per_cpu_offset)?;
    let p = plans.as_ref().map_err(|f| *f)?;
    let bases = Bases::find(cx, tr, buf.sched.root)?;
    // Whether any CPU's rq could be read: none is a fault of the pass.
    let mut first_fault = None;
    let mut any_rq = false;
    let CaptureBuf {
        cpus,
        cpu_bytes,
        dsqs: dsq_slots,
        queued,
        runnable,
        events: event_bytes,
        ..
    } = buf;
    let mut sink = dsq::Sink {
        dsqs: dsq_slots,
        queued,
    };
    // For a CPU past the last slot (whose record is then dropped).
    let mut spare = None;
    for cpu in 0..cx.target.nr_cpus {
        let bytes = match cpu_bytes.get_mut(cpus.len()) {
            Some(slot) => slot,
            None => spare.get_or_insert([0u8; CPU_BYTES]),
        };
        let off = match offsets.get(cx, tr, cpu) {
            Ok(off) => off,
            Err(fault) => {
                first_fault.get_or_insert(fault);
                // Nothing in the bytes is this CPU's.
                bytes[STATE] = 0;
                cpus.push(CpuRecord {
                    cpu,
                    fault,
                    ..CpuRecord::default()
                });
                continue;
            }
        };
        let mut fault = Fault::None;
        let seen = read_cpu(cx, tr, p, &bases, per_cpu_addr(runqueues, off), bytes);
        match seen.curr {
            Ok(_) => any_rq = true,
            Err(f) => {
                fault = f;
                first_fault.get_or_insert(f);
            }
        }
        if !seen.scx_read {
            fault = Fault::Unreadable(seen.scx);
        }
        let local_dsq = cpu_dsqs(
            cx, tr, p, &bases, &mut sink, dsqs, cpu, off, &seen, &mut fault,
        );
        let pcpu = bases.sched_pcpu.map(|(p, _)| per_cpu_addr(p, off));
        let kick = kick::read(cx, tr, seen.scx, pcpu);
        let start = runnable.len() as u32;
        let walk = walk_runnable(cx, tr, p, seen.scx, seen.heads.map(|h| h[0]), runnable);
        let len = runnable.len() as u32 - start;
        let events = bases.read_events(cx, tr, off, event_bytes.get_mut(cpus.len()));
        // Built in its slot: a copy of the record per CPU showed up. The
        // rest is `decode`'s.
        let curr = seen.curr.unwrap_or_default();
        cpus.push_with(|rec| {
            rec.cpu = cpu;
            rec.rq = seen.rq;
            rec.local_dsq = local_dsq;
            rec.runnable = Span { start, len };
            rec.runnable_walk = list_health(&walk);
            rec.fault = fault;
            rec.curr_pid = curr.pid;
            rec.curr_comm = curr.comm;
            rec.curr_class = curr.class;
            rec.events = events;
            rec.kick = kick;
        });
    }
    match first_fault {
        Some(f) if !any_rq => Err(f),
        _ => Ok(()),
    }
}

/// One CPU's rq and rq->scx as read into its bytes.
struct Seen {
    rq: u64,
    scx: u64,
    /// The current task, or why the rq could not be read.
    curr: Result<Curr, Fault>,
    scx_read: bool,
    /// The wide rq->scx read's runnable `next` and local DSQ head fields.
    heads: Option<[u64; 5]>,
}

/// Reads the rq at `rq` and its rq->scx into `bytes`, recording in its
/// state byte which reads worked.
fn read_cpu<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    p: &Plans,
    bases: &Bases,
    rq: u64,
    bytes: &mut [u8; CPU_BYTES],
) -> Seen {
    let (rq_bytes, scx_bytes) = bytes.split_at_mut(p.scx_at.min(CPU_BYTES));
    if let Some(s) = rq_bytes.get_mut(STATE) {
        *s = 0;
    }
    let curr = read_rq(cx, tr, p, bases, rq, rq_bytes);
    let scx = rq.wrapping_add(u64::from(p.rq_l.scx));
    let (state, heads) = read_scx(cx, tr, p, scx, scx_bytes);
    if let Some(s) = rq_bytes.get_mut(STATE) {
        *s |= state;
    }
    Seen {
        rq,
        scx,
        curr,
        scx_read: state != 0,
        heads,
    }
}

/// The CPU's local DSQ and bypass DSQ; returns the local DSQ's slot.
#[allow(clippy::too_many_arguments)]
fn cpu_dsqs<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    p: &Plans,
    bases: &Bases,
    sink: &mut dsq::Sink<'_, '_>,
    dsqs: &mut Result<dsq::DsqReader, Fault>,
    cpu: u32,
    off: u64,
    seen: &Seen,
    fault: &mut Fault,
) -> Option<u32> {
    // The DSQ head fields are planned when the reader exists.
    let local_head = seen
        .heads
        .filter(|_| dsqs.is_ok())
        .map(|[_, id, nr, seq, next]| ([id, nr, seq], Some(next)));
    let local = seen.scx.wrapping_add(u64::from(p.scx_l.local_dsq));
    let origin = DsqOrigin::Local(cpu);
    let slot = dsq::capture_one(cx, tr, sink, dsqs, local, origin, local_head, fault);
    let bypass = bases
        .sched_pcpu
        .map(|(pcpu, inner)| per_cpu_addr(pcpu, off).wrapping_add(u64::from(inner)))
        .or(p
            .scx_l
            .bypass_dsq
            .map(|b| seen.scx.wrapping_add(u64::from(b))));
    if let Some(b) = bypass {
        let origin = DsqOrigin::Bypass(cpu);
        dsq::capture_one(cx, tr, sink, dsqs, b, origin, None, fault);
    }
    slot
}

/// `__per_cpu_offset` a batch at a time; a batch that cannot be read whole
/// is read entry by entry, so a bad entry faults only its CPU.
struct Offsets {
    base: u64,
    batch: [u64; OFFSET_BATCH],
    batch_ok: bool,
}

impl Offsets {
    fn new(base: Option<u64>) -> Result<Self, Fault> {
        let base = base
            .filter(|a| *a != 0)
            .ok_or(Fault::MissingSymbol("__per_cpu_offset"))?;
        Ok(Self {
            base,
            batch: [0; OFFSET_BATCH],
            batch_ok: false,
        })
    }

    /// CPU `cpu`'s offset; CPUs are asked for in order from 0.
    fn get<M: GuestMem + ?Sized>(
        &mut self,
        cx: &Cx<'_, '_, M>,
        tr: &mut Translator,
        cpu: u32,
    ) -> Result<u64, Fault> {
        let slot = cpu as usize % OFFSET_BATCH;
        let at = self.base.wrapping_add(u64::from(cpu) * 8);
        if slot == 0 {
            let n = (cx.target.nr_cpus.saturating_sub(cpu) as usize).min(OFFSET_BATCH);
            let bytes = self.batch.get_mut(..n).unwrap_or_default().as_mut_bytes();
            self.batch_ok = tr.read_virt(cx.mem, at, bytes).is_ok();
        }
        match self.batch.get(slot).filter(|_| self.batch_ok) {
            Some(off) => Ok(*off),
            None => tr
                .read_per_cpu_offset(cx.mem, self.base, cpu)
                .map_err(|_| Fault::Unreadable(at)),
        }
    }
}

/// The scheduler's per-CPU base and its bypass DSQ's offset within it,
/// when the kernel has `scx_sched_pcpu` and a scheduler is attached.
fn sched_pcpu<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    root: u64,
) -> Option<(u64, u32)> {
    let l = cx.target.layout;
    let (off, pc) = (l.sched?.pcpu?, l.sched_pcpu?);
    if root == 0 || cx.target.symbols.scx_root.is_none() {
        return None;
    }
    let pcpu: u64 = tr
        .read_virt_pod(cx.mem, root.wrapping_add(u64::from(off)))
        .ok()?;
    (pcpu != 0).then_some((pcpu, pc.bypass_dsq))
}

/// Reads the rq plan into `rq_bytes` (marking [`RQ_READ`]) and the current
/// task's identity.
fn read_rq<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    p: &Plans,
    bases: &Bases,
    rq: u64,
    rq_bytes: &mut [u8],
) -> Result<Curr, Fault> {
    let (state, fields) = rq_bytes.split_at_mut(RQ_AT.min(rq_bytes.len()));
    if p.rq.read_into(cx.mem, tr, rq, fields).is_err() {
        return Err(Fault::Unreadable(rq));
    }
    if let Some(s) = state.get_mut(STATE) {
        *s = RQ_READ;
    }
    let mut curr = Curr::default();
    let task = p.rq.get_or_zero(fields, 1);
    if task != 0 {
        let at = |off: u32| task.wrapping_add(u64::from(off));
        curr.pid = tr
            .read_virt_pod::<u32, _>(cx.mem, at(bases.task.pid))
            .ok()
            .map(|p| p as i32);
        let _ = tr.read_virt(cx.mem, at(bases.task.comm), &mut curr.comm);
        curr.class = tr
            .read_virt_pod(cx.mem, at(bases.task.sched_class))
            .unwrap_or(0);
    }
    Ok(curr)
}

/// Reads rq->scx with the wide plan or, failing that, the scalars alone;
/// returns the state bits ([`WIDE_READ`], [`ALONE_READ`] or 0) and, from
/// the wide read only, the runnable list's `next` and the local DSQ's head
/// fields (id, nr, seq, list `next`).
fn read_scx<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    p: &Plans,
    scx: u64,
    scx_bytes: &mut [u8],
) -> (u8, Option<[u64; 5]>) {
    if p.scx.read_into(cx.mem, tr, scx, scx_bytes).is_ok() {
        let heads = core::array::from_fn(|k| p.scx.get_or_zero(scx_bytes, SCALARS + k));
        (WIDE_READ, Some(heads))
    } else if p.scx_alone.read_into(cx.mem, tr, scx, scx_bytes).is_ok() {
        (ALONE_READ, None)
    } else {
        (0, None)
    }
}

/// The tasks on `rq->scx.runnable_list`, appended to `runnable`.
fn walk_runnable<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    p: &Plans,
    scx: u64,
    next: Option<u64>,
    runnable: &mut Slots<'_, u64>,
) -> WalkSummary {
    let head = scx.wrapping_add(u64::from(p.scx_l.runnable_list));
    walk_list_with(
        cx.mem,
        tr,
        &p.lh,
        head,
        next,
        cx.limits.max_list,
        |tr, node| {
            let link = read_link(cx.mem, tr, &p.lh, node)?;
            match runnable.push(container_of(node, &p.to_task)) {
                Some(_) => Ok((Step::Continue, link)),
                None => Ok((Step::Stop, link)),
            }
        },
    )
}

/// Every CPU record's rq and rq->scx scalars from the bytes [`capture`]
/// copied.
pub(super) fn decode(plans: &Plans, buf: &mut CaptureBuf<'_>) {
    for i in 0..buf.cpus.len() {
        let (Some(rec), Some(bytes)) = (buf.cpus.get_mut(i), buf.cpu_bytes.get(i)) else {
            continue;
        };
        let state = bytes.get(STATE).copied().unwrap_or(0);
        let (rq_bytes, scx_bytes) = bytes.split_at(plans.scx_at.min(CPU_BYTES));
        // A version-gated member is `None` when the kernel lacks it or
        // when its read failed; a required one is then 0.
        let [nr_running, curr, clock, idle] = match state & RQ_READ != 0 {
            true => plans.rq.values(rq_bytes.get(RQ_AT..).unwrap_or_default()),
            false => [None; 4],
        };
        // Both rq->scx plans start with the same scalars.
        let scalars: [Option<u64>; SCALARS] = if state & WIDE_READ != 0 {
            let v = plans.scx.values(scx_bytes);
            core::array::from_fn(|k| v.get(k).copied().flatten())
        } else if state & ALONE_READ != 0 {
            plans.scx_alone.values(scx_bytes)
        } else {
            [None; SCALARS]
        };
        let [scx_nr, scx_flags, released, qseq, scx_clock, perf, immed] = scalars;
        rec.nr_running = nr_running.unwrap_or(0) as u32;
        rec.clock = clock.unwrap_or(0);
        rec.curr = curr.unwrap_or(0);
        rec.idle = idle;
        rec.scx_nr_running = scx_nr.unwrap_or(0) as u32;
        rec.scx_flags = scx_flags.unwrap_or(0) as u32;
        rec.cpu_released = released.map(|r| r != 0);
        rec.ops_qseq = qseq;
        rec.scx_clock = scx_clock;
        rec.cpuperf_target = perf.map(|v| v as u32);
        rec.nr_immed = immed.map(|v| v as u32);
    }
}

/// Where each CPU's `struct scx_event_stats` is, as a per-CPU base (add a
/// CPU's offset), and how many of its bytes to read: in `scx_sched_pcpu`
/// (7.x; `pcpu` is the scheduler's per-CPU base), else behind
/// `scx_sched.event_stats_cpu` (6.16).
fn event_stats<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    pcpu: Option<u64>,
    root: u64,
) -> Option<(u64, usize)> {
    let l = cx.target.layout;
    let size = (l.event_stats?.struct_size as usize).min(EVENT_BYTES);
    if let (Some(pcpu), Some(off)) = (pcpu, l.sched_pcpu.and_then(|p| p.event_stats)) {
        return Some((pcpu.wrapping_add(u64::from(off)), size));
    }
    let off = l.sched?.event_stats_cpu?;
    if root == 0 || cx.target.symbols.scx_root.is_none() {
        return None;
    }
    let base: u64 = tr
        .read_virt_pod(cx.mem, root.wrapping_add(u64::from(off)))
        .ok()?;
    (base != 0).then_some((base, size))
}

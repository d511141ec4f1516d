//! Dispatch queues: one DSQ with its tasks in order, and the pass over the
//! shared ones (per-node global DSQs, user DSQs in the scheduler's hash).

use super::buf::Slots;
use super::fields::{Field, FieldPlan, req};
use super::records::{DsqOrigin, DsqRecord, Fault, ListHealth, Span};
use super::{CaptureBuf, Cx, container_of, list_health};
use crate::layout::{DsqLayout, DsqListNodeLayout, Layout, ListHeadLayout};
use crate::mem::GuestMem;
use crate::translate::Translator;
use crate::walk::{Step, read_link, walk_list_with, walk_rhashtable};

/// Reads DSQs: the layouts and field plans, made once per kernel rather
/// than per DSQ, and scratch space for the reads.
#[derive(Debug, Clone)]
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
    /// Scratch for those reads: small, as a reader is copied per capture.
    raw: [u8; SCRATCH],
}

/// Bytes of [`DsqReader`]'s scratch: its plans are made to fit.
const SCRATCH: usize = 128;

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
        let [id, nr, seq, next] = head_fields(&d, &lh, 0);
        Ok(Self {
            d,
            lh,
            node,
            to_task: [entity.dsq_list, task.scx],
            head: FieldPlan::within([id, nr, seq, next], SCRATCH),
            head_alone: FieldPlan::within([id, nr, seq], SCRATCH),
            link: FieldPlan::within(
                [
                    req(node.node.saturating_add(lh.next), 8),
                    req(node.node.saturating_add(lh.prev), 8),
                    req(node.flags, 4),
                ],
                SCRATCH,
            ),
            raw: [0; SCRATCH],
        })
    }
}

/// `id`, `nr`, `seq` and the list head's `next` of a DSQ `at` bytes into
/// an object: the members of a [`Head`].
fn head_fields(d: &DsqLayout, lh: &ListHeadLayout, at: u32) -> [Option<Field>; 4] {
    [
        req(at.saturating_add(d.id), 8),
        req(at.saturating_add(d.nr), 4),
        req(at.saturating_add(d.seq), 4),
        req(at.saturating_add(d.list).saturating_add(lh.next), 8),
    ]
}

/// A DSQ's `id`, `nr`, `seq`, and its list head's `next` when known.
pub(super) type Head = ([u64; 3], Option<u64>);

/// Where DSQs are recorded: the parts of [`CaptureBuf`] a DSQ fills, so
/// that a caller can hold another part (the CPU record being built).
pub(super) struct Sink<'s, 'a> {
    pub(super) dsqs: &'s mut Slots<'a, DsqRecord>,
    pub(super) queued: &'s mut Slots<'a, u64>,
}

impl DsqReader {
    /// The fields of [`Head`] for a DSQ embedded `at` bytes into another
    /// object, so that the object's plan reads them with its own.
    pub(super) fn head_fields(&self, at: u32) -> [Option<Field>; 4] {
        head_fields(&self.d, &self.lh, at)
    }

    /// The [`Head`] of the DSQ at `addr`, in one read when it can.
    fn read_head<M: GuestMem + ?Sized>(
        &mut self,
        mem: &M,
        tr: &mut Translator,
        addr: u64,
    ) -> Result<Head, Fault> {
        if self.head.read_into(mem, tr, addr, &mut self.raw).is_ok() {
            let [id, nr, seq, next] = self.head.decode(&self.raw);
            return Ok(([id, nr, seq], Some(next)));
        }
        // As if the list head were not part of the plan: the walk reads it.
        self.head_alone
            .read_into(mem, tr, addr, &mut self.raw)
            .map_err(|_| Fault::Unreadable(addr))?;
        Ok((self.head_alone.decode(&self.raw), None))
    }
}

/// Record the DSQ at `addr` with `reader`; returns its index in
/// `sink.dsqs`, or `None` when there was no slot left or it could not be
/// read (then `fault` says why). `head`: the DSQ's head fields when the
/// caller read them (see [`DsqReader::head_fields`]); `None` reads them
/// here. The fault is an out-parameter, and `origin` a parameter of its
/// own, so that neither goes through memory in pieces: reading such a
/// value whole right after it was written in parts stalled every call.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn capture_one<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    sink: &mut Sink<'_, '_>,
    reader: &mut Result<DsqReader, Fault>,
    addr: u64,
    origin: DsqOrigin,
    head: Option<Head>,
    fault: &mut Fault,
) -> Option<u32> {
    let r = match reader {
        Ok(r) => r,
        Err(f) => {
            *fault = *f;
            return None;
        }
    };
    let ([id, nr, seq], head_next) = match head.map_or_else(|| r.read_head(cx.mem, tr, addr), Ok) {
        Ok(h) => h,
        Err(f) => {
            *fault = f;
            return None;
        }
    };
    let start = sink.queued.len() as u32;
    let fill = |slot: &mut DsqRecord| {
        *slot = DsqRecord {
            addr,
            origin,
            id,
            nr: nr as u32,
            seq: seq as u32,
            tasks: Span { start, len: 0 },
            walk: ListHealth::default(),
        };
    };
    let at = sink.dsqs.push_with(fill)?;
    // Most DSQs are empty: their record needs no walk, and the walk's
    // code stays out of this path. The walk writes its health into the
    // record: returned, it was read back whole right after being written
    // in parts, which stalled every walked DSQ.
    let list = addr.wrapping_add(u64::from(r.d.list));
    if head_next != Some(list)
        && let Some(rec) = sink.dsqs.get_mut(at)
    {
        walk_queue(cx, tr, r, sink.queued, list, head_next, &mut rec.walk);
        rec.tasks.len = sink.queued.len() as u32 - start;
    }
    Some(at as u32)
}

/// Where a kernel keeps its shared DSQs.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SharedDsqs {
    /// The address of a pointer to the per-node pointers, and the offset
    /// of the DSQ in what they point to.
    pub(super) per_node: Option<(u64, u32)>,
    /// A global DSQ embedded at this address (the first 6.12 releases).
    pub(super) single: Option<u64>,
    /// The user DSQs' `struct rhashtable`.
    pub(super) hash: Option<u64>,
}

/// The global DSQ of every node and every user DSQ.
pub(super) fn capture_shared<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    buf: &mut CaptureBuf<'_>,
    reader: &mut Result<DsqReader, Fault>,
) -> Result<(), Fault> {
    let Some(at) = shared_at(cx, buf.sched.root) else {
        return Ok(());
    };
    let mut first = Fault::None;
    let mut sink = Sink {
        dsqs: &mut buf.dsqs,
        queued: &mut buf.queued,
    };
    if let Some((array_at, inner)) = at.per_node {
        per_node(cx, tr, &mut sink, reader, array_at, inner, &mut first);
    }
    if let Some(dsq) = at.single {
        let origin = DsqOrigin::Global(0);
        let mut f = Fault::None;
        capture_one(cx, tr, &mut sink, reader, dsq, origin, None, &mut f);
        note(&mut first, f);
    }
    match at.hash {
        Some(table) => match user_dsqs(cx, tr, &mut sink, reader, table, &mut first) {
            Ok(walk) => buf.health.dsq_hash_walk = walk,
            Err(f) => note(&mut first, f),
        },
        None => note(&mut first, Fault::MissingGroup("rhashtable")),
    }
    match first {
        Fault::None => Ok(()),
        f => Err(f),
    }
}

/// Keeps the first fault of several.
fn note(first: &mut Fault, f: Fault) {
    if !first.is_fault() {
        *first = f;
    }
}

/// Where the attached scheduler's shared DSQs are (`None`: no scheduler,
/// or a layout without `scx_sched`).
fn shared_at<M: GuestMem + ?Sized>(cx: &Cx<'_, '_, M>, root: u64) -> Option<SharedDsqs> {
    if root == 0 {
        return None;
    }
    if cx.target.symbols.scx_root.is_none() {
        return Some(super::pre_root::shared_dsqs(cx.target.symbols));
    }
    let l = cx.target.layout;
    let s = l.sched?;
    // Per-node global DSQs: `pnode[node]->global_dsq` (7.x) or
    // `global_dsqs[node]` (6.16-era).
    let per_node = match (s.pnode, l.sched_pnode, s.global_dsqs) {
        (Some(p), Some(pn), _) => Some((p, pn.global_dsq)),
        (_, _, Some(g)) => Some((g, 0)),
        _ => None,
    };
    let at = |off: u32| root.wrapping_add(u64::from(off));
    Some(SharedDsqs {
        per_node: per_node.map(|(off, inner)| (at(off), inner)),
        single: None,
        hash: s.dsq_hash.map(at),
    })
}

/// Each node's global DSQ, behind the array of per-node pointers whose
/// address is at `array_at`.
fn per_node<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    sink: &mut Sink<'_, '_>,
    reader: &mut Result<DsqReader, Fault>,
    array_at: u64,
    inner: u32,
    first: &mut Fault,
) {
    let array = match tr.read_virt_pod::<u64, _>(cx.mem, array_at) {
        Ok(0) => return,
        Ok(a) => a,
        Err(_) => return note(first, Fault::Unreadable(array_at)),
    };
    for node in 0..cx.target.nr_nodes.max(1) {
        let slot = array.wrapping_add(u64::from(node) * 8);
        match tr.read_virt_pod::<u64, _>(cx.mem, slot) {
            Ok(0) => {}
            Ok(p) => {
                let dsq = p.wrapping_add(u64::from(inner));
                let origin = DsqOrigin::Global(node);
                let mut f = Fault::None;
                capture_one(cx, tr, sink, reader, dsq, origin, None, &mut f);
                note(first, f);
            }
            Err(_) => note(first, Fault::Unreadable(slot)),
        }
    }
}

/// The user DSQs in the scheduler's hash table at `table`: how the table
/// walk ended, or the layout group it needs and lacks.
fn user_dsqs<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    sink: &mut Sink<'_, '_>,
    reader: &mut Result<DsqReader, Fault>,
    table: u64,
    first: &mut Fault,
) -> Result<ListHealth, Fault> {
    let l = cx.target.layout;
    let missing = Fault::MissingGroup("rhashtable");
    let rht = l.rhashtable.ok_or(missing)?;
    let bt = l.bucket_table.ok_or(missing)?;
    let rh = l.rhash_head.ok_or(missing)?;
    let hash_node = l.dsq.and_then(|d| d.hash_node).ok_or(missing)?;
    let walk = walk_rhashtable(
        cx.mem,
        tr,
        (&rht, &bt, &rh),
        table,
        cx.limits.hash,
        |tr, e| {
            let dsq = container_of(e, &[hash_node]);
            let mut f = Fault::None;
            match capture_one(cx, tr, sink, reader, dsq, DsqOrigin::User, None, &mut f) {
                Some(_) => Step::Continue,
                // Out of DSQ slots: the rest would be dropped anyway.
                None if !f.is_fault() => Step::Stop,
                None => {
                    note(first, f);
                    Step::Continue
                }
            }
        },
    );
    Ok(list_health(&walk))
}

/// The tasks queued on the DSQ whose list head is at `list`, into
/// `queued`, in order; iterator cursors skipped. How the walk ended goes
/// to `health`.
#[inline(never)]
fn walk_queue<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    r: &mut DsqReader,
    queued: &mut Slots<'_, u64>,
    list: u64,
    head_next: Option<u64>,
    health: &mut ListHealth,
) {
    // Borrowed, not copied: a copy of the layouts per DSQ showed up.
    let DsqReader {
        lh,
        node,
        to_task,
        link: plan,
        raw,
        ..
    } = r;
    let (lh, node, to_task) = (&*lh, &*node, &*to_task);
    let cursor_flag = cx.target.consts.dsq_iter_cursor;
    let walk = walk_list_with(
        cx.mem,
        tr,
        lh,
        list,
        head_next,
        cx.limits.max_list,
        |tr, n| {
            let lnode = container_of(n, &[node.node]);
            let (link, flags) = match plan.read_into(cx.mem, tr, lnode, raw) {
                Ok(()) => {
                    let [next, prev, flags] = plan.decode(raw);
                    ((next, prev), flags as u32)
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
    *health = list_health(&walk);
}

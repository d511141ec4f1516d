//! The BPF scheduler's own state, found from guest memory alone: every map
//! on `map_idr` (its header), the sched_ext struct_ops map among them, the
//! programs its links point to and the maps those programs use, and the
//! values of the scheduler's small array maps (`.bss`, `.data`, `.rodata`
//! are single-entry arrays), copied into a fixed byte budget.
//!
//! Which maps are the scheduler's: the maps its struct_ops programs use
//! (`prog->aux->used_maps`, what the verifier bound to the program; the
//! same members from 6.12 to 7.x), and the maps loaded with the same BPF
//! object's BTF (`map->btf`: libbpf creates every map of an object with
//! the object's one BTF), which catches maps only user space touches. The
//! struct_ops map is the one whose `btf_vmlinux_value_type_id` is
//! `bpf_struct_ops_sched_ext_ops` (or, without that id, any struct_ops
//! map) and whose `sched_ext_ops.name` is the attached scheduler's.

use super::records::{Fault, ListHealth, OPS_NAME_LEN, kernel_bytes};
use super::{CaptureBuf, Cx, read_ptr};
use crate::capture::fields::{Field, FieldPlan, opt, req};
use crate::layout::{BpfMapLayout, Layout, XaNodeLayout};
use crate::mem::GuestMem;
use crate::translate::{Translator, per_cpu_addr};

/// `BPF_OBJ_NAME_LEN`: a map's or program's name, NUL-padded.
pub const BPF_NAME_LEN: usize = 16;
/// `BPF_MAP_TYPE_ARRAY` (UAPI).
pub const MAP_ARRAY: u32 = 2;
/// `BPF_MAP_TYPE_PERCPU_ARRAY` (UAPI).
pub const MAP_PERCPU_ARRAY: u32 = 6;
/// `BPF_MAP_TYPE_STRUCT_OPS` (UAPI).
pub const MAP_STRUCT_OPS: u32 = 26;
/// Most bytes of one map's values read while paused; larger maps are
/// left for after the thaw.
pub const PAUSED_MAP_BYTES: u64 = 16 << 10;
/// Slots of an xarray node (`XA_CHUNK_SIZE`).
const XA_SLOTS: usize = 64;
/// Bits of index per xarray level (`XA_CHUNK_SHIFT`).
const XA_SHIFT: u8 = 6;
/// Levels of a 64-bit-indexed xarray (shift 0 to 60).
const XA_LEVELS: usize = 11;
/// Nodes one walk visits at most (a thousand maps need ~17; 1024 leaf
/// nodes hold 65536 ids).
pub const MAX_XA_NODES: u32 = 1024;
/// Most links of a struct_ops map followed (`sched_ext_ops` has ~30
/// callbacks).
pub const MAX_LINKS: u32 = 256;
/// `MAX_USED_MAPS`: most maps one program may use.
const MAX_USED_MAPS: usize = 64;

/// One BPF map's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BpfMapRecord {
    /// `struct bpf_map` address.
    pub addr: u64,
    /// Its index in `map_idr` (the map id).
    pub idr_index: u64,
    /// `id`.
    pub id: u32,
    /// `map_type` (`enum bpf_map_type`, UAPI numbers).
    pub map_type: u32,
    /// `key_size`.
    pub key_size: u32,
    /// `value_size`.
    pub value_size: u32,
    /// `max_entries` (a ring buffer's size in bytes, an arena's in pages).
    pub max_entries: u32,
    /// `map_flags`.
    pub map_flags: u32,
    /// `map_extra`, when this kernel has it.
    pub map_extra: Option<u64>,
    /// `name`, NUL-padded.
    pub name: [u8; BPF_NAME_LEN],
    /// `btf`: the BPF object's BTF (0: none).
    pub btf: u64,
    /// `btf_value_type_id` in that BTF.
    pub btf_value_type_id: u32,
    /// `btf_key_type_id` in that BTF.
    pub btf_key_type_id: u32,
    /// `btf_vmlinux_value_type_id` (struct_ops maps).
    pub btf_vmlinux_value_type_id: u32,
    /// The attached scheduler's struct_ops map.
    pub sched_ops: bool,
    /// One of the scheduler's maps.
    pub owned: bool,
    /// `bpf_array.elem_size` of an array map.
    pub elem_size: Option<u32>,
    /// The values as read while paused, in [`CaptureBuf::bpf_bytes`]: an
    /// array's `max_entries * elem_size` bytes; a per-CPU array's
    /// `value_size` bytes per entry and CPU, entry by entry.
    pub values: Option<ByteSpan>,
    /// Bytes the values would take when they were not read while paused
    /// for being over [`PAUSED_MAP_BYTES`] or the buffer's room.
    pub over_budget: Option<u64>,
    /// Why this map (or its values) could not be read, if it could not.
    pub fault: Fault,
}

/// A byte range of [`CaptureBuf::bpf_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteSpan {
    /// First byte.
    pub start: u32,
    /// Length.
    pub len: u32,
}

/// One program of the scheduler (a struct_ops link's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BpfProgRecord {
    /// `struct bpf_prog` address.
    pub addr: u64,
    /// `aux->id`.
    pub id: u32,
    /// `type` (`enum bpf_prog_type`).
    pub prog_type: u32,
    /// `aux->name`, NUL-padded.
    pub name: [u8; BPF_NAME_LEN],
    /// `aux->used_map_cnt`.
    pub used_map_cnt: u32,
    /// Why this program could not be read (fully), if it could not.
    pub fault: Fault,
}

/// How the BPF pass went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BpfSummary {
    /// How the `map_idr` walk ended (entries: maps seen).
    pub walk: ListHealth,
    /// Whether the attached scheduler's struct_ops map was found.
    pub found_ops: bool,
    /// Bytes of map values read while paused.
    pub value_bytes: u64,
}

/// The reads of a `struct bpf_map` header, planned once per layout.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plans {
    map: Option<FieldPlan<13>>,
}

impl Plans {
    pub(super) fn new(l: &Layout) -> Self {
        Self {
            map: l.bpf_map.map(|m| FieldPlan::new(map_fields(&m))),
        }
    }
}

fn map_fields(m: &BpfMapLayout) -> [Option<Field>; 13] {
    [
        req(m.map_type, 4),
        req(m.key_size, 4),
        req(m.value_size, 4),
        req(m.max_entries, 4),
        req(m.map_flags, 4),
        req(m.id, 4),
        req(m.btf, 8),
        req(m.btf_value_type_id, 4),
        req(m.btf_vmlinux_value_type_id, 4),
        opt(m.map_extra, 8),
        // The name as two words: read with the rest, not on its own.
        req(m.name, 8),
        req(m.name.saturating_add(8), 8),
        req(m.btf_key_type_id, 4),
    ]
}

fn u32_at<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    va: u64,
) -> Result<u32, Fault> {
    tr.read_virt_pod::<u32, _>(cx.mem, va)
        .map_err(|_| Fault::Unreadable(va))
}

fn at(base: u64, off: u32) -> u64 {
    base.wrapping_add(u64::from(off))
}

/// The pass: maps, the struct_ops map, its programs, ownership, values.
pub(super) fn capture<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    plans: &Plans,
    tr: &mut Translator,
    buf: &mut CaptureBuf<'_>,
) -> Result<(), Fault> {
    if buf.bpf_maps.capacity() == 0 {
        return Ok(());
    }
    let l = cx.target.layout;
    let idr = l.idr.ok_or(Fault::MissingGroup("idr"))?;
    let xn = l.xa_node.ok_or(Fault::MissingGroup("xa_node"))?;
    let plan = plans.map.ok_or(Fault::MissingGroup("bpf_map"))?;
    let map_idr = cx
        .target
        .symbols
        .map_idr
        .ok_or(Fault::MissingSymbol("map_idr"))?;
    let head = read_ptr(cx, tr, at(map_idr, idr.xa_head))?;
    let base = match idr.idr_base {
        Some(o) => u64::from(u32_at(cx, tr, at(map_idr, o))?),
        None => 0,
    };
    let mut walk = ListHealth::default();
    let mut maps = core::mem::replace(&mut buf.bpf_maps, super::Slots::new(&mut []));
    walk_xarray(cx, tr, head, &xn, &mut walk, |tr, index, entry| {
        let mut rec = BpfMapRecord {
            addr: entry,
            idr_index: index.wrapping_add(base),
            ..BpfMapRecord::default()
        };
        let mut raw = [0u8; super::fields::RAW];
        match plan.read_into(cx.mem, tr, entry, &mut raw) {
            Ok(()) => {
                let v = plan.values(&raw);
                let u = |i: usize| v.get(i).copied().flatten().unwrap_or(0);
                rec.map_type = u(0) as u32;
                rec.key_size = u(1) as u32;
                rec.value_size = u(2) as u32;
                rec.max_entries = u(3) as u32;
                rec.map_flags = u(4) as u32;
                rec.id = u(5) as u32;
                rec.btf = u(6);
                rec.btf_value_type_id = u(7) as u32;
                rec.btf_vmlinux_value_type_id = u(8) as u32;
                rec.map_extra = v.get(9).copied().flatten();
                let (lo, hi) = rec.name.split_at_mut(8);
                lo.copy_from_slice(&u(10).to_le_bytes());
                hi.copy_from_slice(&u(11).to_le_bytes());
                rec.btf_key_type_id = u(12) as u32;
            }
            Err(_) => rec.fault = Fault::Unreadable(entry),
        }
        maps.push(rec).is_some()
    });
    buf.bpf_maps = maps;
    buf.bpf.walk = walk;
    let ops = find_ops(cx, tr, buf);
    buf.bpf.found_ops = ops.is_some();
    if let Some(i) = ops {
        if let Some(m) = buf.bpf_maps.get_mut(i) {
            m.owned = true;
            m.sched_ops = true;
        }
        programs(cx, tr, buf, i);
    }
    own_by_btf(buf);
    values(cx, tr, buf);
    Ok(())
}

/// Visit every entry of the xarray whose `xa_head` is `head`, in index
/// order, until `visit` says stop (then the walk counts as truncated).
/// Bounded: a node's `shift` must be its parent's less [`XA_SHIFT`], so
/// the depth is at most [`XA_LEVELS`] and no pointer cycle is followed;
/// at most [`MAX_XA_NODES`] nodes are read.
pub(super) fn walk_xarray<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    head: u64,
    xn: &XaNodeLayout,
    walk: &mut ListHealth,
    mut visit: impl FnMut(&mut Translator, u64, u64) -> bool,
) {
    if head == 0 {
        return;
    }
    if !is_node(head) {
        // A single entry at index 0 sits in the head itself.
        if !is_internal(head) {
            walk.entries = 1;
            if !visit(tr, 0, head) {
                walk.truncated = true;
            }
        }
        return;
    }
    let mut slots = [[0u64; XA_SLOTS]; XA_LEVELS];
    // Per level: the node's shift, its first index, the next slot.
    let mut frames = [(0u8, 0u64, 0usize); XA_LEVELS];
    let mut depth = 0usize;
    let mut nodes = 0u32;
    let Some(shift) = read_node(cx, tr, head, xn, None, &mut slots[0], walk) else {
        return;
    };
    nodes += 1;
    frames[0] = (shift, 0, 0);
    loop {
        let Some(&(shift, first, slot)) = frames.get(depth) else {
            return;
        };
        if slot >= XA_SLOTS {
            match depth.checked_sub(1) {
                Some(d) => {
                    depth = d;
                    continue;
                }
                None => return,
            }
        }
        if let Some(f) = frames.get_mut(depth) {
            f.2 = slot + 1;
        }
        let entry = slots
            .get(depth)
            .and_then(|s| s.get(slot))
            .copied()
            .unwrap_or(0);
        let index = first.wrapping_add((slot as u64) << shift);
        if entry == 0 {
            continue;
        }
        if is_node(entry) {
            if shift < XA_SHIFT {
                walk.fault = Fault::Corrupt(entry);
                continue;
            }
            if nodes >= MAX_XA_NODES {
                walk.truncated = true;
                return;
            }
            nodes += 1;
            let child = depth + 1;
            let Some(dst) = slots.get_mut(child) else {
                walk.fault = Fault::Corrupt(entry);
                continue;
            };
            if read_node(cx, tr, entry, xn, Some(shift - XA_SHIFT), dst, walk).is_some()
                && let Some(f) = frames.get_mut(child)
            {
                *f = (shift - XA_SHIFT, index, 0);
                depth = child;
            }
        } else if !is_internal(entry) && entry & 1 == 0 {
            walk.entries = walk.entries.saturating_add(1);
            if !visit(tr, index, entry) {
                walk.truncated = true;
                return;
            }
        }
    }
}

/// An internal entry (`xa_is_internal`): low bits `10`.
fn is_internal(e: u64) -> bool {
    e & 3 == 2
}

/// A node pointer (`xa_is_node`): internal and above the small internal
/// values (retry, zero, sibling entries).
fn is_node(e: u64) -> bool {
    is_internal(e) && e > 4096
}

/// Read the node that `entry` points to: its shift (which must be `want`
/// when given, a multiple of [`XA_SHIFT`] up to 60 otherwise) and slots.
fn read_node<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    entry: u64,
    xn: &XaNodeLayout,
    want: Option<u8>,
    slots: &mut [u64; XA_SLOTS],
    walk: &mut ListHealth,
) -> Option<u8> {
    let node = entry.wrapping_sub(2);
    let shift_at = at(node, xn.shift);
    let Ok(shift) = tr.read_virt_pod::<u8, _>(cx.mem, shift_at) else {
        walk.fault = Fault::Unreadable(shift_at);
        return None;
    };
    let fits = match want {
        Some(w) => shift == w,
        None => shift % XA_SHIFT == 0 && usize::from(shift / XA_SHIFT) < XA_LEVELS,
    };
    if !fits {
        walk.fault = Fault::Corrupt(node);
        return None;
    }
    let slots_at = at(node, xn.slots);
    if tr
        .read_virt(cx.mem, slots_at, zerocopy::IntoBytes::as_mut_bytes(slots))
        .is_err()
    {
        walk.fault = Fault::Unreadable(slots_at);
        return None;
    }
    Some(shift)
}

/// The index of the attached scheduler's struct_ops map among the map
/// records: a `sched_ext_ops` struct_ops map whose ops name is
/// `scx_root`'s (any, when no scheduler is attached: the last loaded).
fn find_ops<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    buf: &CaptureBuf<'_>,
) -> Option<usize> {
    let l = cx.target.layout;
    let som = l.struct_ops_map?;
    let name_off = l.ops?.name;
    let want = kernel_bytes(&buf.sched.ops_name);
    let value_type = cx.target.consts.sched_ext_ops_value;
    let mut any = None;
    for (i, m) in buf.bpf_maps.as_slice().iter().enumerate() {
        if m.map_type != MAP_STRUCT_OPS || m.fault.is_fault() {
            continue;
        }
        if value_type.is_some_and(|t| t != m.btf_vmlinux_value_type_id) {
            continue;
        }
        let mut name = [0u8; OPS_NAME_LEN];
        let va = at(at(m.addr, som.kvalue_data), name_off);
        if tr.read_virt(cx.mem, va, &mut name).is_err() {
            continue;
        }
        if !want.is_empty() && kernel_bytes(&name) == want {
            return Some(i);
        }
        any = Some(i);
    }
    if want.is_empty() { any } else { None }
}

/// The programs the struct_ops map `ops` links to, recorded once each,
/// and the maps they use marked as the scheduler's.
fn programs<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    buf: &mut CaptureBuf<'_>,
    ops: usize,
) {
    let l = cx.target.layout;
    let (Some(som), Some(link), Some(prog), Some(aux)) =
        (l.struct_ops_map, l.bpf_link, l.bpf_prog, l.prog_aux)
    else {
        return;
    };
    let Some(map) = buf.bpf_maps.as_slice().get(ops).copied() else {
        return;
    };
    let fail = |buf: &mut CaptureBuf<'_>, f: Fault| {
        if let Some(m) = buf.bpf_maps.get_mut(ops) {
            m.fault = f;
        }
    };
    let (links, cnt) = match (
        read_ptr(cx, tr, at(map.addr, som.links)),
        u32_at(cx, tr, at(map.addr, som.funcs_cnt)),
    ) {
        (Ok(a), Ok(n)) => (a, n.min(MAX_LINKS)),
        (Err(f), _) | (_, Err(f)) => return fail(buf, f),
    };
    if links == 0 {
        return;
    }
    // The links array in pieces of 32 pointers, one read each.
    let mut piece = [0u64; 32];
    for i in 0..cnt {
        let k = (i % 32) as usize;
        if k == 0 {
            let n = (cnt - i).min(32) as usize;
            let l_at = links.wrapping_add(u64::from(i) * 8);
            let dst = piece.get_mut(..n).unwrap_or_default();
            if tr
                .read_virt(cx.mem, l_at, zerocopy::IntoBytes::as_mut_bytes(dst))
                .is_err()
            {
                return fail(buf, Fault::Unreadable(l_at));
            }
        }
        let lk = piece.get(k).copied().unwrap_or(0);
        if lk == 0 {
            continue;
        }
        let Ok(p) = read_ptr(cx, tr, at(lk, link.prog)) else {
            continue;
        };
        if p == 0 || buf.bpf_progs.as_slice().iter().any(|r| r.addr == p) {
            continue;
        }
        let mut rec = BpfProgRecord {
            addr: p,
            ..BpfProgRecord::default()
        };
        let mut used = [0u64; MAX_USED_MAPS];
        let mut nused = 0usize;
        let read = (|| -> Result<(), Fault> {
            rec.prog_type = u32_at(cx, tr, at(p, prog.prog_type))?;
            let a = read_ptr(cx, tr, at(p, prog.aux))?;
            rec.id = u32_at(cx, tr, at(a, aux.id))?;
            let name = at(a, aux.name);
            tr.read_virt(cx.mem, name, &mut rec.name)
                .map_err(|_| Fault::Unreadable(name))?;
            rec.used_map_cnt = u32_at(cx, tr, at(a, aux.used_map_cnt))?;
            nused = (rec.used_map_cnt as usize).min(MAX_USED_MAPS);
            let arr = read_ptr(cx, tr, at(a, aux.used_maps))?;
            let dst = used.get_mut(..nused).unwrap_or_default();
            if !dst.is_empty() {
                tr.read_virt(cx.mem, arr, zerocopy::IntoBytes::as_mut_bytes(dst))
                    .map_err(|_| Fault::Unreadable(arr))?;
            }
            Ok(())
        })();
        if let Err(f) = read {
            rec.fault = f;
            nused = 0;
        }
        for &u in used.iter().take(nused) {
            let n = buf.bpf_maps.len();
            for j in 0..n {
                if let Some(m) = buf.bpf_maps.get_mut(j)
                    && m.addr == u
                {
                    m.owned = true;
                }
            }
        }
        if buf.bpf_progs.push(rec).is_none() {
            return;
        }
    }
}

/// Maps loaded with the BTF of one of the scheduler's maps are its too.
fn own_by_btf(buf: &mut CaptureBuf<'_>) {
    let mut btfs = [0u64; 8];
    let mut n = 0usize;
    for m in buf.bpf_maps.as_slice() {
        if m.owned
            && m.btf != 0
            && !btfs.contains(&m.btf)
            && let Some(slot) = btfs.get_mut(n)
        {
            *slot = m.btf;
            n += 1;
        }
    }
    let btfs = btfs.get(..n).unwrap_or_default();
    for j in 0..buf.bpf_maps.len() {
        if let Some(m) = buf.bpf_maps.get_mut(j)
            && m.btf != 0
            && btfs.contains(&m.btf)
        {
            m.owned = true;
        }
    }
}

/// The values of the scheduler's array maps that fit [`PAUSED_MAP_BYTES`]
/// and the room left in the byte buffer.
fn values<M: GuestMem + ?Sized>(cx: &Cx<'_, '_, M>, tr: &mut Translator, buf: &mut CaptureBuf<'_>) {
    let Some(arr) = cx.target.layout.bpf_array else {
        return;
    };
    for j in 0..buf.bpf_maps.len() {
        let Some(m) = buf.bpf_maps.as_slice().get(j).copied() else {
            return;
        };
        if !m.owned || m.fault.is_fault() {
            continue;
        }
        let percpu = match m.map_type {
            MAP_ARRAY => false,
            MAP_PERCPU_ARRAY => true,
            _ => continue,
        };
        let res = read_array(cx, tr, buf, &m, arr.elem_size, arr.value, percpu);
        if let Some(rec) = buf.bpf_maps.get_mut(j) {
            match res {
                Ok(ArrayRead::Read(span, elem)) => {
                    rec.values = Some(span);
                    rec.elem_size = Some(elem);
                }
                Ok(ArrayRead::Over(bytes, elem)) => {
                    rec.over_budget = Some(bytes);
                    rec.elem_size = Some(elem);
                }
                Err(f) => rec.fault = f,
            }
        }
    }
}

enum ArrayRead {
    /// Read into this span; the array's `elem_size`.
    Read(ByteSpan, u32),
    /// Left out: it takes this many bytes.
    Over(u64, u32),
}

fn read_array<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    buf: &mut CaptureBuf<'_>,
    m: &BpfMapRecord,
    elem_off: u32,
    value_off: u32,
    percpu: bool,
) -> Result<ArrayRead, Fault> {
    let elem = u32_at(cx, tr, at(m.addr, elem_off))?;
    let cpus = if percpu {
        u64::from(cx.target.nr_cpus)
    } else {
        1
    };
    let per_entry = if percpu {
        u64::from(m.value_size).saturating_mul(cpus)
    } else {
        u64::from(elem)
    };
    let total = per_entry.saturating_mul(u64::from(m.max_entries));
    let start = buf.bpf_bytes_len;
    if total == 0 {
        return Ok(ArrayRead::Read(
            ByteSpan {
                start: start as u32,
                len: 0,
            },
            elem,
        ));
    }
    let room = buf.bpf_bytes.len().saturating_sub(start) as u64;
    if total > PAUSED_MAP_BYTES || total > room || (!percpu && elem < m.value_size) {
        return Ok(ArrayRead::Over(total, elem));
    }
    let values = at(m.addr, value_off);
    let dst = buf
        .bpf_bytes
        .get_mut(start..start + total as usize)
        .ok_or(Fault::Corrupt(m.addr))?;
    if percpu {
        let pcpu = cx
            .target
            .symbols
            .per_cpu_offset
            .ok_or(Fault::MissingSymbol("__per_cpu_offset"))?;
        let vs = m.value_size as usize;
        let mut chunks = dst.chunks_exact_mut(vs.max(1));
        for i in 0..u64::from(m.max_entries) {
            let pptr = read_ptr(cx, tr, values.wrapping_add(i * 8))?;
            for cpu in 0..cx.target.nr_cpus {
                let off = tr
                    .read_per_cpu_offset(cx.mem, pcpu, cpu)
                    .map_err(|_| Fault::Unreadable(pcpu))?;
                let va = per_cpu_addr(pptr, off);
                let Some(c) = chunks.next() else {
                    return Err(Fault::Corrupt(m.addr));
                };
                tr.read_virt(cx.mem, va, c)
                    .map_err(|_| Fault::Unreadable(va))?;
            }
        }
    } else {
        tr.read_virt(cx.mem, values, dst)
            .map_err(|_| Fault::Unreadable(values))?;
    }
    buf.bpf_bytes_len = start + total as usize;
    buf.bpf.value_bytes = buf.bpf.value_bytes.saturating_add(total);
    Ok(ArrayRead::Read(
        ByteSpan {
            start: start as u32,
            len: total as u32,
        },
        elem,
    ))
}

//! The scheduler pass: `*scx_root` (or, before 6.16, the static `scx_ops`).

use super::buf::Slots;
use super::fields::{FieldPlan, opt, req};
use super::records::GlobalsRecord;
use super::{CaptureBuf, Cx, EXIT_BT_LEN, Fault, SchedRecord};
use crate::layout::Layout;
use crate::mem::GuestMem;
use crate::translate::Translator;

/// The pass's field plans, when the layout has their groups.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plans {
    /// `exit_kind`, `exit_info`, `bypass_depth`, `aborting` and
    /// `watchdog_timeout` of `scx_sched`.
    root: Option<FieldPlan<5>>,
    /// `kind`, `exit_code`, `reason`, `msg`, `exit_cpu`, `flags`, `bt`,
    /// `bt_len` and `dump` of `scx_exit_info`.
    exit_info: Option<FieldPlan<9>>,
}

impl Plans {
    pub(super) fn new(l: &Layout) -> Self {
        Self {
            root: l.sched.map(|s| {
                FieldPlan::new([
                    req(s.exit_kind, 4),
                    req(s.exit_info, 8),
                    opt(s.bypass_depth, 4),
                    opt(s.aborting, 1),
                    opt(s.watchdog_timeout, 8),
                ])
            }),
            exit_info: l.exit_info.map(|ei| {
                FieldPlan::new([
                    req(ei.kind, 4),
                    opt(ei.exit_code, 8),
                    req(ei.reason, 8),
                    req(ei.msg, 8),
                    opt(ei.exit_cpu, 4),
                    opt(ei.flags, 8),
                    opt(ei.bt, 8),
                    opt(ei.bt_len, 4),
                    opt(ei.dump, 8),
                ])
            }),
        }
    }
}

/// The scheduler, its exit (with backtrace and dump text where `buf` has
/// room) and sched_ext's kernel-wide state.
pub(super) fn capture<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    plans: &Plans,
    tr: &mut Translator,
    buf: &mut CaptureBuf<'_>,
) -> Result<(), Fault> {
    buf.sched.globals = globals(cx, tr);
    let exit = capture_root(cx, plans, tr, &mut buf.sched)?;
    if let Some(ExitBuffers { bt, bt_len, dump }) = exit {
        let n = bt_len.min(EXIT_BT_LEN as u32);
        read_bt(cx, tr, bt, n, &mut buf.exit_bt);
        buf.exit_dump_len = read_text(cx, tr, dump, buf.exit_dump);
    }
    Ok(())
}

/// Where the exit info's backtrace and dump text are.
pub(super) struct ExitBuffers {
    bt: u64,
    bt_len: u32,
    dump: u64,
}

/// sched_ext's globals, each read alone: any may be missing.
fn globals<M: GuestMem + ?Sized>(cx: &Cx<'_, '_, M>, tr: &mut Translator) -> GlobalsRecord {
    let s = cx.target.symbols;
    let mut u64_at =
        |sym: Option<u64>| sym.and_then(|a| tr.read_virt_pod::<u64, _>(cx.mem, a).ok());
    let (seq, rejected) = (u64_at(s.scx_enable_seq), u64_at(s.scx_nr_rejected));
    let mut u32_at =
        |sym: Option<u64>| sym.and_then(|a| tr.read_virt_pod::<u32, _>(cx.mem, a).ok());
    GlobalsRecord {
        enable_state: u32_at(s.scx_enable_state_var),
        enable_seq: seq,
        nr_rejected: rejected,
        switching_all: u32_at(s.scx_switching_all).map(|v| v as u8 != 0),
        // static_key_false: the key's `enabled` count comes first.
        switched_all: u32_at(s.scx_switched_all).map(|v| v as i32 > 0),
        bypass_depth: u32_at(s.scx_bypass_depth).map(|v| v as i32),
        breather_depth: u32_at(s.scx_breather_depth).map(|v| v as i32),
    }
}

/// The return addresses at `bt`, `n` of them, into `out`.
fn read_bt<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    bt: u64,
    n: u32,
    out: &mut Slots<'_, u64>,
) {
    let mut all = [0u64; EXIT_BT_LEN];
    let Some(want) = all.get_mut(..n as usize) else {
        return;
    };
    if tr
        .read_virt(cx.mem, bt, zerocopy::IntoBytes::as_mut_bytes(want))
        .is_ok()
    {
        for &a in want.iter() {
            out.push(a);
        }
    }
}

/// Bytes of a text read at once: a page, so a short text costs one read.
const TEXT_PIECE: usize = 4096;
/// Bytes read at once of a page of text that is not readable whole.
const TAIL_PIECE: usize = 64;

/// The NUL-terminated text at `va` into `out` (up to its room); its
/// length. A page at a time; a page that cannot be read whole is read in
/// smaller pieces, then bytes, up to the NUL or the first unreadable byte.
fn read_text<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    va: u64,
    out: &mut [u8],
) -> usize {
    if va == 0 {
        return 0;
    }
    read_pieces(cx, tr, va, out, TEXT_PIECE, &mut |tr, at, page| {
        read_pieces(cx, tr, at, page, TAIL_PIECE, &mut |tr, at, piece| {
            read_bytes(cx, tr, at, piece)
        })
    })
}

/// Text at `va` into `out`, `piece` bytes a read, up to its NUL; a piece
/// that cannot be read whole goes to `rest`, which says how much of it
/// is text. The text's length.
fn read_pieces<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    va: u64,
    out: &mut [u8],
    piece: usize,
    rest: &mut dyn FnMut(&mut Translator, u64, &mut [u8]) -> usize,
) -> usize {
    let mut len = 0;
    for (i, chunk) in out.chunks_mut(piece.max(1)).enumerate() {
        let at = va.wrapping_add((i * piece) as u64);
        if tr.read_virt(cx.mem, at, chunk).is_err() {
            chunk.fill(0);
            return len + rest(tr, at, chunk);
        }
        match chunk.iter().position(|&b| b == 0) {
            Some(end) => return len + end,
            None => len += chunk.len(),
        }
    }
    len
}

/// Text at `va` into `out` byte by byte, up to its NUL or the first
/// unreadable byte; its length.
fn read_bytes<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    va: u64,
    out: &mut [u8],
) -> usize {
    for (j, b) in out.iter_mut().enumerate() {
        match tr.read_virt_pod::<u8, _>(cx.mem, va.wrapping_add(j as u64)) {
            Ok(0) | Err(_) => return j,
            Ok(v) => *b = v,
        }
    }
    out.len()
}

/// `*scx_root` and its exit info; where the exit's backtrace and dump
/// text are, when it has them.
fn capture_root<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    plans: &Plans,
    tr: &mut Translator,
    rec: &mut SchedRecord,
) -> Result<Option<ExitBuffers>, Fault> {
    let (layout, syms) = (cx.target.layout, cx.target.symbols);
    let Some(root_sym) = syms.scx_root.filter(|a| *a != 0) else {
        // Before scx_root existed the scheduler's state was in globals.
        return super::pre_root::capture_sched(cx, plans, tr, rec);
    };
    let root: u64 = tr
        .read_virt_pod(cx.mem, root_sym)
        .map_err(|_| Fault::Unreadable(root_sym))?;
    rec.root = root;
    if root == 0 {
        return Ok(None); // no scheduler attached: a state, not an error
    }
    let (Some(s), Some(plan)) = (layout.sched, plans.root) else {
        return Err(Fault::MissingGroup("scx_sched"));
    };
    let [exit_kind, exit_info, bypass_depth, aborting, watchdog] = plan
        .read(cx.mem, tr, root)
        .map_err(|_| Fault::Unreadable(root))?;
    rec.exit_kind = exit_kind.unwrap_or(0) as u32;
    rec.bypass_depth = bypass_depth
        .map(|v| v as u32 as i32)
        .or(rec.globals.bypass_depth);
    rec.aborting = aborting.map(|v| v != 0);
    rec.watchdog_timeout = watchdog;
    read_str(
        cx,
        tr,
        root.wrapping_add(u64::from(s.ops_name)),
        &mut rec.ops_name,
    );
    read_exit_info(cx, plans, tr, exit_info.unwrap_or(0), rec)
}

/// The `scx_exit_info` at `info` (0: none yet) into `rec`; where its
/// backtrace and dump text are, once the scheduler exited.
pub(super) fn read_exit_info<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    plans: &Plans,
    tr: &mut Translator,
    info: u64,
    rec: &mut SchedRecord,
) -> Result<Option<ExitBuffers>, Fault> {
    let mut exit = None;
    if let (Some(plan), true) = (plans.exit_info, info != 0) {
        let [kind, code, reason, msg, cpu, flags, bt, bt_len, dump] =
            plan.read(cx.mem, tr, info)
                .map_err(|_| Fault::Unreadable(info))?;
        // Once the disable work has taken the exit, newer kernels set
        // `exit_kind` to SCX_EXIT_DONE; the kind that ended the scheduler
        // stays in its exit info.
        if let Some(k) = kind.map(|k| k as u32).filter(|k| *k != 0) {
            rec.exit_kind = k;
        }
        rec.exit_code = code.map(|c| c as i64);
        rec.exit_cpu = cpu.map(|c| c as u32 as i32);
        rec.exit_flags = flags;
        rec.exit_bt_len = bt_len.map(|n| n as u32);
        // Filled on exits only: a running scheduler's are empty.
        if rec.exit_kind != 0 {
            exit = Some(ExitBuffers {
                bt: bt.unwrap_or(0),
                bt_len: bt_len.unwrap_or(0) as u32,
                dump: dump.unwrap_or(0),
            });
        }
        for (ptr, out) in [
            (reason, &mut rec.exit_reason[..]),
            (msg, &mut rec.exit_msg[..]),
        ] {
            if let Some(p) = ptr.filter(|p| *p != 0) {
                read_str(cx, tr, p, out);
            }
        }
    }
    Ok(exit)
}

/// Copy a C string at `va` into `out` (NUL-padded). When the whole buffer
/// is not readable (the string ends near unmapped memory), read it in small
/// pieces up to the first NUL or unreadable piece.
pub(super) fn read_str<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    va: u64,
    out: &mut [u8],
) {
    if tr.read_virt(cx.mem, va, out).is_ok() {
        return;
    }
    out.fill(0);
    read_pieces(cx, tr, va, out, 16, &mut |tr, at, piece| {
        read_bytes(cx, tr, at, piece)
    });
}

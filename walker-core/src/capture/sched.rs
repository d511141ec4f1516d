//! The scheduler pass: `*scx_root` (or, before 6.16, the static `scx_ops`).

use super::fields::{FieldPlan, opt, req};
use super::{Cx, Fault, SchedRecord};
use crate::layout::Layout;
use crate::mem::GuestMem;
use crate::translate::Translator;

/// The pass's field plans, when the layout has their groups.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plans {
    /// `exit_kind`, `exit_info`, `bypass_depth`, `aborting` and
    /// `watchdog_timeout` of `scx_sched`.
    root: Option<FieldPlan<5>>,
    /// `kind`, `exit_code`, `reason` and `msg` of `scx_exit_info`.
    exit_info: Option<FieldPlan<4>>,
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
                ])
            }),
        }
    }
}

pub(super) fn capture<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    plans: &Plans,
    tr: &mut Translator,
    rec: &mut SchedRecord,
) -> Result<(), Fault> {
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
        return Ok(()); // no scheduler attached: a state, not an error
    }
    let (Some(s), Some(plan)) = (layout.sched, plans.root) else {
        return Err(Fault::MissingGroup("scx_sched"));
    };
    let [exit_kind, exit_info, bypass_depth, aborting, watchdog] = plan
        .read(cx.mem, tr, root)
        .map_err(|_| Fault::Unreadable(root))?;
    rec.exit_kind = exit_kind.unwrap_or(0) as u32;
    rec.bypass_depth = bypass_depth.map(|v| v as u32 as i32);
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

/// The `scx_exit_info` at `info` (0: none yet) into `rec`.
pub(super) fn read_exit_info<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    plans: &Plans,
    tr: &mut Translator,
    info: u64,
    rec: &mut SchedRecord,
) -> Result<(), Fault> {
    if let (Some(plan), true) = (plans.exit_info, info != 0) {
        let [kind, code, reason, msg] = plan
            .read(cx.mem, tr, info)
            .map_err(|_| Fault::Unreadable(info))?;
        // Once the disable work has taken the exit, newer kernels set
        // `exit_kind` to SCX_EXIT_DONE; the kind that ended the scheduler
        // stays in its exit info.
        if let Some(k) = kind.map(|k| k as u32).filter(|k| *k != 0) {
            rec.exit_kind = k;
        }
        rec.exit_code = code.map(|c| c as i64);
        for (ptr, out) in [
            (reason, &mut rec.exit_reason[..]),
            (msg, &mut rec.exit_msg[..]),
        ] {
            if let Some(p) = ptr.filter(|p| *p != 0) {
                read_str(cx, tr, p, out);
            }
        }
    }
    Ok(())
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
    for (i, piece) in out.chunks_mut(16).enumerate() {
        let at = va.wrapping_add(i as u64 * 16);
        if tr.read_virt(cx.mem, at, piece).is_err() {
            piece.fill(0);
            // The tail of the string may sit in a shorter readable run.
            for (j, b) in piece.iter_mut().enumerate() {
                match tr.read_virt_pod::<u8, _>(cx.mem, at.wrapping_add(j as u64)) {
                    Ok(v) => *b = v,
                    Err(_) => break,
                }
            }
            break;
        }
        if piece.contains(&0) {
            break;
        }
    }
}

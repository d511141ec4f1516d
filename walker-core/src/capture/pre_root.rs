//! Kernels before 6.16 (6.12 to 6.15) have no `scx_root`: one scheduler at
//! a time, its state in globals of `kernel/sched/ext.c` — the ops table
//! `scx_ops`, `scx_ops_enable_state_var`, `scx_exit_kind`, `scx_exit_info`,
//! `scx_ops_bypass_depth`, `scx_watchdog_timeout` — with the global DSQs
//! behind `global_dsqs` (one per node; the first 6.12 releases had one
//! `scx_dsq_global`) and the user DSQs in the `dsq_hash` table. All are
//! found by name like every other symbol (the guest's kallsyms has its
//! static variables too).

use super::dsq::SharedDsqs;
use super::sched::{ExitBuffers, Plans, read_exit_info, read_str};
use super::{Cx, Fault, SchedRecord};
use crate::mem::GuestMem;
use crate::symbols::Symbols;
use crate::translate::Translator;

/// The scheduler pass without `scx_root`. `rec.root` is the address of
/// `scx_ops` while a scheduler is attached (from enable to the end of
/// disable), 0 otherwise.
pub(super) fn capture_sched<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    plans: &Plans,
    tr: &mut Translator,
    rec: &mut SchedRecord,
) -> Result<Option<ExitBuffers>, Fault> {
    let syms = cx.target.symbols;
    let ops = syms.scx_ops.ok_or(Fault::MissingSymbol("scx_root"))?;
    let o = cx
        .target
        .layout
        .ops
        .ok_or(Fault::MissingGroup("sched_ext_ops"))?;
    let state = read::<u32, M>(cx, tr, syms.scx_ops_enable_state_var)?;
    let info = read::<u64, M>(cx, tr, syms.scx_exit_info)?;
    // The state says it; without its symbol, the exit info does: it is
    // allocated at enable and freed when a disable completes.
    let attached = match state {
        Some(s) => s != cx.target.consts.ops_disabled,
        None => info.is_some_and(|p| p != 0),
    };
    if !attached {
        return Ok(None); // no scheduler attached: a state, not an error
    }
    rec.root = ops;
    read_str(
        cx,
        tr,
        ops.wrapping_add(u64::from(o.name)),
        &mut rec.ops_name,
    );
    rec.bypass_depth = read::<u32, M>(cx, tr, syms.scx_ops_bypass_depth)?.map(|v| v as i32);
    rec.watchdog_timeout = read::<u64, M>(cx, tr, syms.scx_watchdog_timeout)?;
    rec.exit_kind =
        read::<u32, M>(cx, tr, syms.scx_exit_kind)?.ok_or(Fault::MissingSymbol("scx_exit_kind"))?;
    read_exit_info(cx, plans, tr, info.unwrap_or(0), rec)
}

/// The value of the global at `sym`; `None` when the symbol is unknown.
fn read<T: zerocopy::FromBytes + zerocopy::IntoBytes, M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    sym: Option<u64>,
) -> Result<Option<T>, Fault> {
    match sym {
        None => Ok(None),
        Some(a) => tr
            .read_virt_pod(cx.mem, a)
            .map(Some)
            .map_err(|_| Fault::Unreadable(a)),
    }
}

/// Where the shared DSQs of a kernel without `scx_root` are.
pub(super) fn shared_dsqs(syms: &Symbols) -> SharedDsqs {
    SharedDsqs {
        // `global_dsqs` is a `struct scx_dispatch_q **`, as
        // `scx_sched.global_dsqs` later was: an array of per-node pointers.
        per_node: syms.global_dsqs.map(|a| (a, 0)),
        single: syms.scx_dsq_global,
        hash: syms.dsq_hash,
    }
}

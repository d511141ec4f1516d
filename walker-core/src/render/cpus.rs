//! The CPU section: each CPU's runqueue, current task, local DSQ and
//! runnable list.

use std::fmt::Write;
use std::format;
use std::string::String;
use std::vec::Vec;

use serde::{Deserialize, Serialize};

use super::events::{self, EventCount};
use super::findings::{Inconsistency, ListName};
use super::health::HealthReport;
use super::names::SchedClass;
use super::{Index, RenderContext, TaskRef, c_str, fault_text, list, who};
use crate::capture::kick::{KickMask, KickMasks};
use crate::capture::{CaptureBuf, CpuRecord, Fault};

/// One CPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuReport {
    /// CPU number.
    pub cpu: u32,
    /// `struct rq` address.
    pub rq: u64,
    /// `rq->nr_running`.
    pub nr_running: u32,
    /// `rq->scx.nr_running`.
    pub scx_nr_running: u32,
    /// `rq->clock` (ns).
    pub clock_ns: u64,
    /// The running task.
    pub curr: TaskRef,
    /// Whether the running task is this CPU's idle task.
    pub curr_is_idle: bool,
    /// The running task's scheduling class (`ext`, `fair`, `idle`, ...),
    /// read while paused.
    #[serde(default)]
    pub curr_class: Option<SchedClass>,
    /// `rq->scx.flags`, decoded.
    pub scx_flags: Vec<String>,
    /// `rq->scx.cpu_released`.
    pub cpu_released: Option<bool>,
    /// Tasks on the local DSQ, in order.
    pub local_dsq: Vec<TaskRef>,
    /// Tasks on `rq->scx.runnable_list`, in order.
    pub runnable: Vec<TaskRef>,
    /// Why this CPU could not be read fully.
    pub fault: Option<String>,
    /// `rq->scx.clock` (ns).
    #[serde(default)]
    pub scx_clock_ns: Option<u64>,
    /// `rq->scx.ops_qseq` (kernels that keep it per rq).
    #[serde(default)]
    pub ops_qseq: Option<u64>,
    /// `rq->scx.cpuperf_target`.
    #[serde(default)]
    pub cpuperf_target: Option<u32>,
    /// `rq->scx.nr_immed`.
    #[serde(default)]
    pub nr_immed: Option<u32>,
    /// This CPU's `SCX_EV_*` counters.
    #[serde(default)]
    pub events: Option<Vec<EventCount>>,
    /// Kicks it has requested and not yet delivered.
    #[serde(default)]
    pub kicks: Option<KickReport>,
}

/// A CPU's pending kicks: each mask's CPUs (`None`: not on this kernel).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KickReport {
    /// `cpus_to_kick`.
    pub kick: Option<Vec<u32>>,
    /// `cpus_to_kick_if_idle`.
    pub kick_if_idle: Option<Vec<u32>>,
    /// `cpus_to_preempt`.
    pub preempt: Option<Vec<u32>>,
    /// `cpus_to_wait`: CPUs whose next schedule this one waits for.
    pub wait: Option<Vec<u32>>,
    /// `cpus_to_sync` (7.x).
    pub sync: Option<Vec<u32>>,
    /// `rq->scx.kick_sync` (7.x).
    pub kick_sync: Option<u64>,
}

impl KickReport {
    fn of(k: &KickMasks) -> Option<Self> {
        if k.read == 0 && k.kick_sync.is_none() {
            return None;
        }
        let mask = |m: KickMask| {
            let i = m as usize;
            (k.read & (1 << i) != 0).then(|| {
                let words = k.words.get(i).copied().unwrap_or_default();
                (0u32..)
                    .zip(
                        words
                            .iter()
                            .flat_map(|w| (0..64).map(move |b| w & (1 << b) != 0)),
                    )
                    .filter_map(|(cpu, set)| set.then_some(cpu))
                    .collect()
            })
        };
        Some(Self {
            kick: mask(KickMask::Kick),
            kick_if_idle: mask(KickMask::KickIfIdle),
            preempt: mask(KickMask::Preempt),
            wait: mask(KickMask::Wait),
            sync: mask(KickMask::Sync),
            kick_sync: k.kick_sync,
        })
    }

    /// `kick {1,2} preempt {3}`: the non-empty masks, or `None`.
    fn text(&self) -> Option<String> {
        let parts: Vec<String> = [
            ("kick", &self.kick),
            ("kick-if-idle", &self.kick_if_idle),
            ("preempt", &self.preempt),
            ("wait", &self.wait),
            ("sync", &self.sync),
        ]
        .into_iter()
        .filter_map(|(name, cpus)| {
            let cpus = cpus.as_ref().filter(|c| !c.is_empty())?;
            let list: Vec<String> = cpus.iter().map(|c| format!("{c}")).collect();
            Some(format!("{name} {{{}}}", list.join(",")))
        })
        .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    }
}

/// Every CPU of `buf`; list walks that ended early and runnable lists that
/// disagree with `rq->scx.nr_running` go to `health`.
pub(super) fn build(
    buf: &CaptureBuf<'_>,
    ix: &Index<'_>,
    ctx: &RenderContext<'_>,
    health: &mut HealthReport,
) -> Vec<CpuReport> {
    buf.cpus
        .as_slice()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            health.note_walk(ListName::RunnableList { cpu: c.cpu }, &c.runnable_walk);
            check_runnable_list(c, ix, ctx, health);
            CpuReport {
                cpu: c.cpu,
                rq: c.rq,
                nr_running: c.nr_running,
                scx_nr_running: c.scx_nr_running,
                clock_ns: c.clock,
                // pid and comm read while paused, for any task
                // (idle or not sched_ext too).
                curr: TaskRef {
                    addr: c.curr,
                    pid: c.curr_pid.or(ix.task_ref(c.curr).pid),
                    comm: c
                        .curr_pid
                        .map(|_| c_str(&c.curr_comm))
                        .or(ix.task_ref(c.curr).comm),
                },
                curr_is_idle: c.idle == Some(c.curr),
                curr_class: (c.curr_class != 0).then(|| SchedClass::of(ctx.symbols, c.curr_class)),
                scx_flags: ctx.names.rq_flags(c.scx_flags),
                cpu_released: c.cpu_released,
                local_dsq: c
                    .local_dsq
                    .and_then(|i| buf.dsqs.as_slice().get(i as usize))
                    .map(|d| ix.span(ix.queued, d.tasks))
                    .unwrap_or_default(),
                runnable: ix.span(ix.runnable, c.runnable),
                fault: fault_text(c.fault),
                scx_clock_ns: c.scx_clock,
                ops_qseq: c.ops_qseq,
                cpuperf_target: c.cpuperf_target,
                nr_immed: c.nr_immed,
                events: buf
                    .events(i)
                    .map(|b| events::decode(b, ctx.names))
                    .filter(|e| !e.is_empty()),
                kicks: KickReport::of(&c.kick),
            }
        })
        .collect()
}

/// set_next_task_scx takes the running task off rq->scx.runnable_list
/// (put_prev_task_scx puts it back) while rq->scx.nr_running still counts
/// it, as long as it is queued (SCX_TASK_QUEUED, cleared by
/// dequeue_task_scx when it blocks).
fn check_runnable_list(
    c: &CpuRecord,
    ix: &Index<'_>,
    ctx: &RenderContext<'_>,
    health: &mut HealthReport,
) {
    if c.runnable_walk.fault != Fault::None || c.runnable_walk.truncated {
        return;
    }
    let queued_flag = ctx.names.task_flag("SCX_TASK_QUEUED").unwrap_or(1);
    let curr_queued_ext = ix.by_addr.get(&c.curr).is_some_and(|t| {
        Some(t.sched_class) == ctx.symbols.ext_sched_class
            && i64::from(t.scx_flags) & queued_flag != 0
    });
    let expected = c.scx_nr_running.saturating_sub(u32::from(curr_queued_ext));
    if c.runnable.len != expected {
        health.inconsistent(Inconsistency::RunnableList {
            cpu: c.cpu,
            nr_running: c.scx_nr_running,
            curr_queued_ext,
            expected,
            listed: c.runnable.len,
        });
    }
}

/// The section's text.
pub(super) fn write_text(cpus: &[CpuReport], s: &mut String) -> std::fmt::Result {
    writeln!(s, "\ncpus:")?;
    for c in cpus {
        let curr = if c.curr_is_idle {
            "idle".into()
        } else {
            who(&c.curr)
        };
        let curr = match &c.curr_class {
            Some(class) if !c.curr_is_idle => format!("{curr} ({class})"),
            _ => curr,
        };
        writeln!(
            s,
            "  cpu {:<3} curr={curr} nr_running={} scx.nr_running={} flags=[{}]{}",
            c.cpu,
            c.nr_running,
            c.scx_nr_running,
            c.scx_flags.join(","),
            c.fault
                .as_ref()
                .map_or(String::new(), |f| format!(" FAULT: {f}")),
        )?;
        writeln!(s, "          local: {}", list(&c.local_dsq))?;
        writeln!(s, "          runnable: {}", list(&c.runnable))?;
        if let Some(k) = c.kicks.as_ref().and_then(KickReport::text) {
            writeln!(s, "          pending kicks: {k}")?;
        }
    }
    Ok(())
}

//! The task section: every task on `scx_tasks`, placed.

use std::collections::HashMap;
use std::fmt::Write;
use std::format;
use std::string::String;
use std::vec::Vec;

use serde::{Deserialize, Serialize};

use super::cpus::CpuReport;
use super::dsqs::DsqReport;
use super::findings::Inconsistency;
use super::health::HealthReport;
use super::names::SchedClass;
use super::{RenderContext, c_str};
use crate::capture::{CaptureBuf, TaskRecord};

/// `on_rq` value of a task being moved between runqueues.
const TASK_ON_RQ_MIGRATING: u8 = 2;

/// Tasks listed under "tasks of interest".
const INTERESTING: usize = 20;

/// Where a task is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Placement {
    /// Running on a CPU.
    Running {
        /// The CPU.
        cpu: u32,
    },
    /// Queued on a DSQ.
    Queued {
        /// The DSQ's name.
        dsq: String,
    },
    /// Enqueued to the BPF scheduler, on no kernel DSQ.
    HeldByBpf,
    /// Being moved between runqueues (`on_rq` = MIGRATING).
    Migrating,
    /// Runnable, on no DSQ and not held by the BPF scheduler.
    Runnable,
    /// Not runnable (sleeping or exiting).
    NotRunnable,
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::Running { cpu } => write!(f, "running on cpu {cpu}"),
            Placement::Queued { dsq } => write!(f, "queued on {dsq}"),
            Placement::HeldByBpf => f.write_str("held by the BPF scheduler"),
            Placement::Migrating => f.write_str("migrating"),
            Placement::Runnable => f.write_str("runnable, on no DSQ"),
            Placement::NotRunnable => f.write_str("not runnable"),
        }
    }
}

/// One task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// `task_struct` address.
    pub addr: u64,
    /// pid.
    pub pid: i32,
    /// tgid.
    pub tgid: i32,
    /// comm.
    pub comm: String,
    /// Sched class (`ext`, `fair`, ...).
    pub class: SchedClass,
    /// `__state`.
    pub state: u32,
    /// `on_rq`.
    pub on_rq: u8,
    /// `on_cpu`.
    pub on_cpu: Option<u8>,
    /// `task_cpu()`.
    pub cpu: Option<u32>,
    /// `scx.flags`, decoded.
    pub scx_flags: Vec<String>,
    /// `scx.ops_state`, decoded (`SCX_OPSS_QUEUED qseq=7`).
    pub ops_state: String,
    /// The DSQ `scx.dsq` points at, by name.
    pub dsq: Option<String>,
    /// `scx.weight`.
    pub weight: u32,
    /// `scx.slice` (ns).
    pub slice_ns: u64,
    /// `scx.dsq_vtime`.
    pub dsq_vtime: u64,
    /// `scx.sticky_cpu`.
    pub sticky_cpu: Option<i32>,
    /// `scx.holding_cpu`.
    pub holding_cpu: Option<i32>,
    /// How long it has been runnable (ms), for runnable tasks.
    pub runnable_for_ms: Option<u64>,
    /// Where it is.
    pub placement: Placement,
    /// Its cgroup in the default hierarchy (`/a/b`), when known.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// `prio`, `static_prio`, `normal_prio`.
    #[serde(default)]
    pub prio: Priorities,
    /// `nr_cpus_allowed`.
    #[serde(default)]
    pub nr_cpus_allowed: Option<i32>,
    /// The CPUs of `cpus_ptr` (its first 64), when it points at the
    /// task's own `cpus_mask`.
    #[serde(default)]
    pub cpus_allowed: Option<Vec<u32>>,
    /// `scx.dsq_flags` (`SCX_TASK_DSQ_ON_PRIQ` = 1).
    #[serde(default)]
    pub dsq_flags: Option<u32>,
    /// `scx.ops_qseq` (kernels that keep it per task).
    #[serde(default)]
    pub ops_qseq: Option<u32>,
    /// `migration_disabled` (non-zero: pinned to its CPU by
    /// `migrate_disable()`, which dispatching elsewhere cannot move).
    #[serde(default)]
    pub migration_disabled: Option<u16>,
}

/// A task's priorities (lower is more important; 120 is nice 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Priorities {
    /// `prio`: the effective one (boosted by priority inheritance).
    pub prio: Option<i32>,
    /// `static_prio`: from the nice value.
    pub static_prio: Option<i32>,
    /// `normal_prio`: from the policy, without boosting.
    pub normal_prio: Option<i32>,
}

/// The CPUs set in a mask's first word.
fn cpu_list(mask: u64) -> Vec<u32> {
    (0..64).filter(|b| mask & (1 << b) != 0).collect()
}

fn ops_state(v: u64) -> String {
    let state = [
        "SCX_OPSS_NONE",
        "SCX_OPSS_QUEUEING",
        "SCX_OPSS_QUEUED",
        "SCX_OPSS_DISPATCHING",
    ]
    .get((v & 3) as usize)
    .copied()
    .unwrap_or("?");
    format!("{state} qseq={}", v >> 2)
}

/// What places tasks: the CPUs running them, the DSQs listing them.
struct Places<'r> {
    running: HashMap<u64, u32>,
    /// Which DSQ each queued task sits on, by list membership.
    on_dsq: HashMap<u64, &'r str>,
    dsq_by_addr: HashMap<u64, &'r str>,
}

impl<'r> Places<'r> {
    fn new(buf: &CaptureBuf<'_>, cpus: &[CpuReport], dsqs: &'r [DsqReport]) -> Self {
        let mut on_dsq = HashMap::new();
        for d in dsqs {
            for t in &d.tasks {
                on_dsq.entry(t.addr).or_insert(d.name.as_str());
            }
        }
        Self {
            running: cpus.iter().map(|c| (c.curr.addr, c.cpu)).collect(),
            on_dsq,
            dsq_by_addr: buf
                .dsqs
                .as_slice()
                .iter()
                .zip(dsqs)
                .map(|(d, r)| (d.addr, r.name.as_str()))
                .collect(),
        }
    }

    fn placement(&self, t: &TaskRecord) -> Placement {
        let held = matches!(t.ops_state & 3, 1..=3);
        if let Some(&cpu) = self.running.get(&t.addr) {
            Placement::Running { cpu }
        } else if t.on_rq == TASK_ON_RQ_MIGRATING {
            Placement::Migrating
        } else if let Some(d) = self.on_dsq.get(&t.addr) {
            Placement::Queued { dsq: (*d).into() }
        } else if t.on_rq != 0 && held {
            Placement::HeldByBpf
        } else if t.on_rq != 0 {
            Placement::Runnable
        } else {
            Placement::NotRunnable
        }
    }
}

/// What the kernel keeps true of a task on a DSQ's list, checked.
fn check_queued(t: &TaskRecord, places: &Places<'_>, queued_flag: i64, health: &mut HealthReport) {
    let Some(&dsq) = places.on_dsq.get(&t.addr) else {
        return;
    };
    let (pid, on) = (t.pid, || String::from(dsq));
    if let Some(&cpu) = places.running.get(&t.addr) {
        health.inconsistent(Inconsistency::RunningOnDsq {
            cpu,
            pid,
            dsq: on(),
        });
    }
    if i64::from(t.scx_flags) & queued_flag == 0 {
        health.inconsistent(Inconsistency::QueuedFlag { pid, dsq: on() });
    }
    let points_at = places.dsq_by_addr.get(&t.dsq).copied();
    if points_at != Some(dsq) {
        let points_at = match t.dsq {
            0 => None,
            a => Some(points_at.map_or_else(|| format!("{a:#x}"), String::from)),
        };
        health.inconsistent(Inconsistency::DsqPointer {
            pid,
            dsq: on(),
            points_at,
        });
    }
    if t.ops_state & 3 != 0 {
        health.inconsistent(Inconsistency::OpsState {
            pid,
            dsq: on(),
            ops_state: ops_state(t.ops_state),
        });
    }
}

/// Every task of `buf`, placed on the CPUs and DSQs already rendered;
/// tasks on DSQs that break the kernel's invariants go to `health`.
pub(super) fn build(
    buf: &CaptureBuf<'_>,
    ctx: &RenderContext<'_>,
    cpus: &[CpuReport],
    dsqs: &[DsqReport],
    health: &mut HealthReport,
) -> Vec<TaskReport> {
    let places = Places::new(buf, cpus, dsqs);
    let queued_flag = ctx.names.task_flag("SCX_TASK_QUEUED").unwrap_or(1);
    let cgroups: HashMap<u64, String> = buf
        .cgroups
        .as_slice()
        .iter()
        .map(|c| {
            let path = c.path.get(..usize::from(c.len)).unwrap_or(&[]);
            (c.css_set, String::from_utf8_lossy(path).into_owned())
        })
        .collect();
    let names = ctx.names;
    buf.tasks
        .as_slice()
        .iter()
        .map(|t| {
            check_queued(t, &places, queued_flag, health);
            let placement = places.placement(t);
            let runnable_for_ms = match (&placement, buf.jiffies) {
                (Placement::NotRunnable, _) | (_, None) => None,
                (_, Some(now)) => Some(names.jiffies_to_ms(now.saturating_sub(t.runnable_at))),
            };
            TaskReport {
                addr: t.addr,
                pid: t.pid,
                tgid: t.tgid,
                comm: c_str(&t.comm),
                class: SchedClass::of(ctx.symbols, t.sched_class),
                state: t.state,
                on_rq: t.on_rq,
                on_cpu: t.on_cpu,
                cpu: t.cpu,
                scx_flags: names.task_flags(t.scx_flags),
                ops_state: ops_state(t.ops_state),
                dsq: (t.dsq != 0).then(|| {
                    places
                        .dsq_by_addr
                        .get(&t.dsq)
                        .map_or_else(|| format!("{:#x} (not captured)", t.dsq), |n| (*n).into())
                }),
                weight: t.weight,
                slice_ns: t.slice,
                dsq_vtime: t.dsq_vtime,
                sticky_cpu: t.sticky_cpu,
                holding_cpu: t.holding_cpu,
                runnable_for_ms,
                placement,
                cgroup: cgroups.get(&t.css_set).cloned(),
                prio: Priorities {
                    prio: t.prio,
                    static_prio: t.static_prio,
                    normal_prio: t.normal_prio,
                },
                nr_cpus_allowed: t.nr_cpus_allowed,
                cpus_allowed: t.cpus_mask.map(cpu_list),
                dsq_flags: t.dsq_flags,
                ops_qseq: t.ops_qseq,
                migration_disabled: t.migration_disabled,
            }
        })
        .collect()
}

/// The section's text: runnable tasks not running, longest waiting first.
pub(super) fn write_text(tasks: &[TaskReport], s: &mut String) -> std::fmt::Result {
    let mut waiting: Vec<_> = tasks
        .iter()
        // Idle tasks are always "runnable"; they are not waiting.
        .filter(|t| t.class != SchedClass::Idle)
        .filter(|t| {
            !matches!(
                t.placement,
                Placement::NotRunnable | Placement::Running { .. }
            )
        })
        .collect();
    waiting.sort_by_key(|t| std::cmp::Reverse(t.runnable_for_ms.unwrap_or(0)));
    writeln!(
        s,
        "\ntasks of interest (runnable, longest waiting first; {} tasks in all):",
        tasks.len()
    )?;
    for t in waiting.iter().take(INTERESTING) {
        writeln!(
            s,
            "  {}[{}] {}{} {}, waiting {}; flags=[{}] {} weight={} slice={}ns{}",
            t.comm,
            t.pid,
            t.class,
            t.cgroup
                .as_ref()
                .map_or(String::new(), |c| format!(" in {c}")),
            t.placement,
            t.runnable_for_ms.map_or("?".into(), |m| format!("{m}ms")),
            t.scx_flags.join(","),
            t.ops_state,
            t.weight,
            t.slice_ns,
            match t.migration_disabled {
                Some(n) if n > 0 => format!(" migration-disabled({n})"),
                _ => String::new(),
            },
        )?;
    }
    if waiting.is_empty() {
        writeln!(s, "  -")?;
    }
    Ok(())
}

//! Render (after thaw, feature `std`): a capture becomes a [`Report`], with
//! flags, exit kinds, ages and DSQ origins decoded, each task placed, and
//! the consistency figures a freeze mid-update can break. The report is
//! serde-serializable (JSON, versioned by [`SCHEMA_VERSION`]) and has a
//! human text view ([`Report::to_text`]).

pub mod names;
mod text;

use std::collections::HashMap;
use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::capture::{CaptureBuf, DsqOrigin, DsqRecord, Fault, ListHealth, Span, TaskRecord};
use crate::layout::Layout;
use crate::symbols::Symbols;
pub use names::Names;

/// Version of the JSON schema; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// `on_rq` value of a task being moved between runqueues.
const TASK_ON_RQ_MIGRATING: u8 = 2;
const SCX_DSQ_FLAG_BUILTIN: u64 = 1 << 63;
const SCX_DSQ_FLAG_LOCAL_ON: u64 = 1 << 62;

/// What the renderer needs besides the capture.
#[derive(Debug, Clone, Copy)]
pub struct RenderContext<'a> {
    /// The layout the capture used (for the missing groups).
    pub layout: &'a Layout,
    /// Symbols (sched class names).
    pub symbols: &'a Symbols,
    /// Enum names and HZ.
    pub names: &'a Names,
    /// How long the guest was paused for the capture, if measured.
    pub pause_ns: Option<u64>,
    /// The pause in its parts, if measured.
    pub pause: Option<PauseSplit>,
}

/// A sched_ext state dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The BPF scheduler.
    pub scheduler: SchedulerReport,
    /// One entry per CPU.
    pub cpus: Vec<CpuReport>,
    /// Every DSQ: local, global, bypass, user.
    pub dsqs: Vec<DsqReport>,
    /// Every task on `scx_tasks`.
    pub tasks: Vec<TaskReport>,
    /// Cost and health of the capture.
    pub health: HealthReport,
}

/// The attached scheduler, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerReport {
    /// Whether a scheduler is attached (`scx_root` not NULL).
    pub attached: bool,
    /// Address of its `scx_sched`.
    pub root: u64,
    /// `ops.name`.
    pub ops_name: String,
    /// `exit_kind` as a number.
    pub exit_kind: u32,
    /// `exit_kind` as its `SCX_EXIT_*` name.
    pub exit_kind_name: String,
    /// `exit_info->exit_code`.
    pub exit_code: Option<i64>,
    /// `exit_info->reason`.
    pub exit_reason: String,
    /// `exit_info->msg`.
    pub exit_msg: String,
    /// `bypass_depth`.
    pub bypass_depth: Option<i32>,
    /// `aborting`.
    pub aborting: Option<bool>,
    /// Watchdog timeout in milliseconds.
    pub watchdog_timeout_ms: Option<u64>,
}

/// A task as other entries refer to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRef {
    /// `task_struct` address.
    pub addr: u64,
    /// Its pid, when the task is on `scx_tasks`.
    pub pid: Option<i32>,
    /// Its comm, when the task is on `scx_tasks`.
    pub comm: Option<String>,
}

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
    pub curr_class: Option<String>,
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
}

/// One dispatch queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DsqReport {
    /// `dsq->id`.
    pub id: u64,
    /// A readable name: `local[cpu 1]`, `global[node 0]`, `bypass[cpu 0]`,
    /// `user 0x10`.
    pub name: String,
    /// `scx_dispatch_q` address.
    pub addr: u64,
    /// `dsq->nr`.
    pub nr: u32,
    /// `dsq->seq`.
    pub seq: u32,
    /// Queued tasks, in order.
    pub tasks: Vec<TaskRef>,
    /// How the list walk ended.
    pub walk: WalkReport,
}

/// How a list walk ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalkReport {
    /// Entries recorded.
    pub entries: u32,
    /// Iterator cursors skipped.
    pub cursors: u32,
    /// Ended early (bound or buffer).
    pub truncated: bool,
    /// A cycle was found.
    pub cycle: bool,
    /// A pointer that could not be followed.
    pub fault: Option<String>,
}

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
    /// Sched class name (`ext`, `fair`, ...).
    pub class: String,
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
}

/// A pause window in its parts (ns): stopping the vCPUs, the capture's
/// reads, resuming them. What the whole pause holds beyond their sum is
/// the caller's own work between them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseSplit {
    /// From asking the VMM to stop until every vCPU was stopped, when the
    /// caller measured it.
    pub stop_ns: Option<u64>,
    /// The capture's reads ([`crate::capture::Capturer::capture_raw`]).
    pub capture_ns: u64,
    /// From asking the VMM to resume until it confirmed, when measured.
    pub resume_ns: Option<u64>,
}

/// The capture's cost and health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Guest reads done.
    pub reads: u64,
    /// Bytes read.
    pub bytes: u64,
    /// How long the guest was paused (ns), if measured.
    pub pause_ns: Option<u64>,
    /// Where the pause went, when the caller measured its parts.
    #[serde(default)]
    pub pause: Option<PauseSplit>,
    /// Layout groups this kernel lacks.
    pub missing_groups: Vec<String>,
    /// Passes that could not run (fully), with why.
    pub faults: Vec<String>,
    /// Lists that ended early, and why.
    pub truncated: Vec<String>,
    /// Records dropped for lack of buffer space.
    pub dropped: Vec<String>,
    /// Counters that disagree with the queues (a freeze can land mid-update).
    pub inconsistencies: Vec<String>,
}

fn fault_text(f: Fault) -> Option<String> {
    match f {
        Fault::None => None,
        Fault::MissingSymbol(s) => Some(format!("symbol {s} unknown")),
        Fault::MissingGroup(g) => Some(format!("layout group {g} missing from this kernel's BTF")),
        Fault::Unreadable(a) => Some(format!("cannot read guest memory at {a:#x}")),
        Fault::Corrupt(a) => Some(format!("impossible value at {a:#x}")),
        Fault::LayoutMismatch => Some(
            "the target's layout is not the one the capturer was planned for: nothing read".into(),
        ),
    }
}

fn walk_report(w: &ListHealth) -> WalkReport {
    WalkReport {
        entries: w.entries,
        cursors: w.cursors,
        truncated: w.truncated,
        cycle: w.cycle,
        fault: fault_text(w.fault),
    }
}

fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(bytes.get(..end).unwrap_or_default()).into_owned()
}

/// A DSQ's readable name.
pub fn dsq_name(d: &DsqRecord) -> String {
    match d.origin {
        DsqOrigin::Local(cpu) => format!("local[cpu {cpu}]"),
        DsqOrigin::Global(node) => format!("global[node {node}]"),
        DsqOrigin::Bypass(cpu) => format!("bypass[cpu {cpu}]"),
        DsqOrigin::User if d.id & SCX_DSQ_FLAG_BUILTIN != 0 => {
            if d.id & SCX_DSQ_FLAG_LOCAL_ON != 0 {
                format!("local_on[cpu {}]", d.id as u32)
            } else {
                format!("builtin {:#x}", d.id)
            }
        }
        DsqOrigin::User => format!("user {:#x}", d.id),
    }
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

impl Report {
    /// Decode `buf` into a report. `buf` should be a whole capture
    /// ([`crate::capture::Capturer::capture`], or `capture_raw` then
    /// `decode`); an undecoded one is reported as a fault.
    pub fn from_capture(buf: &CaptureBuf<'_>, ctx: &RenderContext<'_>) -> Self {
        let tasks = buf.tasks.as_slice();
        let by_addr: HashMap<u64, &TaskRecord> = tasks.iter().map(|t| (t.addr, t)).collect();
        let task_ref = |addr: u64| TaskRef {
            addr,
            pid: by_addr.get(&addr).map(|t| t.pid),
            comm: by_addr.get(&addr).map(|t| c_str(&t.comm)),
        };
        let span = |all: &[u64], s: Span| -> Vec<TaskRef> {
            all.iter()
                .skip(s.start as usize)
                .take(s.len as usize)
                .map(|&a| task_ref(a))
                .collect()
        };
        let dsqs_raw = buf.dsqs.as_slice();
        let queued = buf.queued.as_slice();
        let runnable = buf.runnable.as_slice();
        let names = ctx.names;

        let s = &buf.sched;
        let scheduler = SchedulerReport {
            attached: s.root != 0,
            root: s.root,
            ops_name: c_str(&s.ops_name),
            exit_kind: s.exit_kind,
            exit_kind_name: names.exit_kind(s.exit_kind),
            exit_code: s.exit_code,
            exit_reason: c_str(&s.exit_reason),
            exit_msg: c_str(&s.exit_msg),
            bypass_depth: s.bypass_depth,
            aborting: s.aborting,
            watchdog_timeout_ms: s.watchdog_timeout.map(|j| names.jiffies_to_ms(j)),
        };

        let mut health = HealthReport {
            reads: buf.health.reads,
            bytes: buf.health.bytes,
            pause_ns: ctx.pause_ns,
            pause: ctx.pause,
            missing_groups: ctx
                .layout
                .missing_groups()
                .map(ToString::to_string)
                .collect(),
            faults: Vec::new(),
            truncated: Vec::new(),
            dropped: Vec::new(),
            inconsistencies: Vec::new(),
        };
        for (pass, f) in [
            ("scheduler", buf.health.sched),
            ("cpus", buf.health.cpus),
            ("dsqs", buf.health.dsqs),
            ("tasks", buf.health.tasks),
            ("cgroups", buf.health.cgroups),
        ] {
            if let Some(t) = fault_text(f) {
                health.faults.push(format!("{pass}: {t}"));
            }
        }
        if !buf.is_decoded() {
            // Capturer::capture_raw without Capturer::decode: CPU and task
            // values are missing, and the report must not pass them as zeros.
            health.faults.push(
                "capture: CPU and task values were not decoded (Capturer::decode after capture_raw)"
                    .to_string(),
            );
        }
        for c in buf.cgroups.as_slice() {
            if let Some(t) = fault_text(c.fault) {
                health
                    .faults
                    .push(format!("cgroup of css_set {:#x}: {t}", c.css_set));
            }
        }
        for (what, n) in [
            ("cpu records", buf.cpus.dropped()),
            ("dsq records", buf.dsqs.dropped()),
            ("queued task slots", buf.queued.dropped()),
            ("runnable task slots", buf.runnable.dropped()),
            ("task records", buf.tasks.dropped()),
            ("cgroup records", buf.cgroups.dropped()),
        ] {
            if n > 0 {
                health.dropped.push(format!("{n} {what}"));
            }
        }
        let note_walk = |what: String, w: &ListHealth, health: &mut HealthReport| {
            if w.truncated || w.cycle || w.fault.is_fault() {
                let why = if w.cycle {
                    "cycle".to_string()
                } else {
                    fault_text(w.fault).unwrap_or_else(|| "bound or buffer reached".into())
                };
                health.truncated.push(format!("{what}: {why}"));
            }
        };
        note_walk("scx_tasks".into(), &buf.health.tasks_walk, &mut health);
        note_walk("dsq hash".into(), &buf.health.dsq_hash_walk, &mut health);

        let dsqs: Vec<DsqReport> = dsqs_raw
            .iter()
            .map(|d| {
                let name = dsq_name(d);
                note_walk(name.clone(), &d.walk, &mut health);
                if d.walk.fault == Fault::None
                    && !d.walk.truncated
                    && !d.walk.cycle
                    && d.nr != d.tasks.len
                {
                    health.inconsistencies.push(format!(
                        "{name}: nr={} but {} tasks on its list",
                        d.nr, d.tasks.len
                    ));
                }
                DsqReport {
                    id: d.id,
                    name,
                    addr: d.addr,
                    nr: d.nr,
                    seq: d.seq,
                    tasks: span(queued, d.tasks),
                    walk: walk_report(&d.walk),
                }
            })
            .collect();

        let queued_flag = names.task_flag("SCX_TASK_QUEUED").unwrap_or(1);
        let mut running: HashMap<u64, u32> = HashMap::new();
        let cpus: Vec<CpuReport> = buf
            .cpus
            .as_slice()
            .iter()
            .map(|c| {
                running.insert(c.curr, c.cpu);
                note_walk(
                    format!("cpu {} runnable list", c.cpu),
                    &c.runnable_walk,
                    &mut health,
                );
                if c.runnable_walk.fault == Fault::None && !c.runnable_walk.truncated {
                    // set_next_task_scx takes the running task off
                    // rq->scx.runnable_list (put_prev_task_scx puts it
                    // back) while rq->scx.nr_running still counts it, as
                    // long as it is queued (SCX_TASK_QUEUED, cleared by
                    // dequeue_task_scx when it blocks).
                    let curr_queued_ext = by_addr.get(&c.curr).is_some_and(|t| {
                        Some(t.sched_class) == ctx.symbols.ext_sched_class
                            && i64::from(t.scx_flags) & queued_flag != 0
                    });
                    let expected = c.scx_nr_running.saturating_sub(u32::from(curr_queued_ext));
                    if c.runnable.len != expected {
                        health.inconsistencies.push(format!(
                            "cpu {}: rq->scx.nr_running={} {} so {} should be on its runnable list (set_next_task_scx keeps the running task off it), but {} are",
                            c.cpu,
                            c.scx_nr_running,
                            if curr_queued_ext {
                                "with a queued sched_ext task running,"
                            } else {
                                "with no queued sched_ext task running,"
                            },
                            expected,
                            c.runnable.len
                        ));
                    }
                }
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
                        pid: c.curr_pid.or(task_ref(c.curr).pid),
                        comm: c
                            .curr_pid
                            .map(|_| c_str(&c.curr_comm))
                            .or(task_ref(c.curr).comm),
                    },
                    curr_is_idle: c.idle == Some(c.curr),
                    curr_class: (c.curr_class != 0)
                        .then(|| names::sched_class(ctx.symbols, c.curr_class)),
                    scx_flags: names.rq_flags(c.scx_flags),
                    cpu_released: c.cpu_released,
                    local_dsq: c
                        .local_dsq
                        .and_then(|i| dsqs_raw.get(i as usize))
                        .map(|d| span(queued, d.tasks))
                        .unwrap_or_default(),
                    runnable: span(runnable, c.runnable),
                    fault: fault_text(c.fault),
                }
            })
            .collect();

        // Which DSQ each queued task sits on, by list membership.
        let mut on_dsq: HashMap<u64, String> = HashMap::new();
        for (d, r) in dsqs_raw.iter().zip(&dsqs) {
            for &t in queued
                .iter()
                .skip(d.tasks.start as usize)
                .take(d.tasks.len as usize)
            {
                on_dsq.entry(t).or_insert_with(|| r.name.clone());
            }
        }
        let cgroups: HashMap<u64, String> = buf
            .cgroups
            .as_slice()
            .iter()
            .map(|c| {
                let path = c.path.get(..usize::from(c.len)).unwrap_or(&[]);
                (c.css_set, String::from_utf8_lossy(path).into_owned())
            })
            .collect();
        let dsq_by_addr: HashMap<u64, &String> = dsqs_raw
            .iter()
            .zip(&dsqs)
            .map(|(d, r)| (d.addr, &r.name))
            .collect();
        let reports: Vec<TaskReport> = tasks
            .iter()
            .map(|t| {
                let held = matches!(t.ops_state & 3, 1..=3);
                let placement = if let Some(&cpu) = running.get(&t.addr) {
                    Placement::Running { cpu }
                } else if t.on_rq == TASK_ON_RQ_MIGRATING {
                    Placement::Migrating
                } else if let Some(d) = on_dsq.get(&t.addr) {
                    Placement::Queued { dsq: d.clone() }
                } else if t.on_rq != 0 && held {
                    Placement::HeldByBpf
                } else if t.on_rq != 0 {
                    Placement::Runnable
                } else {
                    Placement::NotRunnable
                };
                let runnable_for_ms = match (&placement, buf.jiffies) {
                    (Placement::NotRunnable, _) | (_, None) => None,
                    (_, Some(now)) => Some(names.jiffies_to_ms(now.saturating_sub(t.runnable_at))),
                };
                TaskReport {
                    addr: t.addr,
                    pid: t.pid,
                    tgid: t.tgid,
                    comm: c_str(&t.comm),
                    class: names::sched_class(ctx.symbols, t.sched_class),
                    state: t.state,
                    on_rq: t.on_rq,
                    on_cpu: t.on_cpu,
                    cpu: t.cpu,
                    scx_flags: names.task_flags(t.scx_flags),
                    ops_state: ops_state(t.ops_state),
                    dsq: (t.dsq != 0).then(|| {
                        dsq_by_addr.get(&t.dsq).map_or_else(
                            || format!("{:#x} (not captured)", t.dsq),
                            |n| (*n).clone(),
                        )
                    }),
                    weight: t.weight,
                    slice_ns: t.slice,
                    dsq_vtime: t.dsq_vtime,
                    sticky_cpu: t.sticky_cpu,
                    holding_cpu: t.holding_cpu,
                    runnable_for_ms,
                    placement,
                    cgroup: cgroups.get(&t.css_set).cloned(),
                }
            })
            .collect();

        Report {
            schema_version: SCHEMA_VERSION,
            scheduler,
            cpus,
            dsqs,
            tasks: reports,
            health,
        }
    }
}

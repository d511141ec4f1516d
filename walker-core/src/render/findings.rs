//! What the health section reports, as types: faults, walks that ended
//! early, records dropped, and counters or links that disagree with the
//! queues. Each serializes as an object with its `kind`, its data and a
//! readable `text`; an inconsistency also names the kernel invariant it
//! breaks and the function that keeps it.

use std::format;
use std::string::{String, ToString};

use serde::{Deserialize, Serialize};

use crate::capture::Fault;

/// Why something could not be read: [`Fault`], owned (for JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum ReadFault {
    /// A symbol the pass needs is unknown.
    MissingSymbol {
        /// The kernel symbol.
        symbol: String,
    },
    /// A layout group the pass needs is absent from the kernel's BTF.
    MissingGroup {
        /// The group's name.
        group: String,
    },
    /// A kernel virtual address could not be translated or read.
    Unreadable {
        /// The address.
        addr: u64,
    },
    /// A value read from the guest is impossible.
    Corrupt {
        /// Where it was read.
        addr: u64,
    },
    /// The capture's target has another layout than its capturer's plans.
    LayoutMismatch,
}

impl ReadFault {
    /// The owned form of `f`; `None` for [`Fault::None`].
    pub fn from_fault(f: Fault) -> Option<Self> {
        Some(match f {
            Fault::None => return None,
            Fault::MissingSymbol(s) => Self::MissingSymbol { symbol: s.into() },
            Fault::MissingGroup(g) => Self::MissingGroup { group: g.into() },
            Fault::Unreadable(addr) => Self::Unreadable { addr },
            Fault::Corrupt(addr) => Self::Corrupt { addr },
            Fault::LayoutMismatch => Self::LayoutMismatch,
        })
    }
}

impl std::fmt::Display for ReadFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MissingSymbol { symbol } => write!(f, "symbol {symbol} unknown"),
            Self::MissingGroup { group } => {
                write!(f, "layout group {group} missing from this kernel's BTF")
            }
            Self::Unreadable { addr } => write!(f, "cannot read guest memory at {addr:#x}"),
            Self::Corrupt { addr } => write!(f, "impossible value at {addr:#x}"),
            Self::LayoutMismatch => f.write_str(
                "the target's layout is not the one the capturer was planned for: nothing read",
            ),
        }
    }
}

/// A pass of the capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pass {
    /// `*scx_root`.
    Scheduler,
    /// The per-CPU runqueues.
    Cpus,
    /// The shared (global, user) DSQs.
    Dsqs,
    /// `scx_tasks`.
    Tasks,
    /// The tasks' cgroups.
    Cgroups,
}

impl std::fmt::Display for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pass::Scheduler => "scheduler",
            Pass::Cpus => "cpus",
            Pass::Dsqs => "dsqs",
            Pass::Tasks => "tasks",
            Pass::Cgroups => "cgroups",
        })
    }
}

/// Something the capture could not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultFinding {
    /// A pass could not run (fully).
    Pass {
        /// Which.
        pass: Pass,
        /// Why.
        fault: ReadFault,
    },
    /// `Capturer::capture_raw` without `Capturer::decode`: CPU and task
    /// values are missing (and not shown as zeros).
    NotDecoded,
    /// A task's cgroup path could not be read whole.
    Cgroup {
        /// The `css_set` the tasks point at.
        css_set: u64,
        /// Why.
        fault: ReadFault,
    },
}

impl std::fmt::Display for FaultFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pass { pass, fault } => write!(f, "{pass}: {fault}"),
            Self::NotDecoded => f.write_str(
                "capture: CPU and task values were not decoded (Capturer::decode after capture_raw)",
            ),
            Self::Cgroup { css_set, fault } => write!(f, "cgroup of css_set {css_set:#x}: {fault}"),
        }
    }
}

/// A list the capture walks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "list", rename_all = "snake_case")]
pub enum ListName {
    /// The global `scx_tasks`.
    ScxTasks,
    /// The scheduler's user-DSQ hash table.
    DsqHash,
    /// A DSQ's task list.
    Dsq {
        /// The DSQ's name.
        dsq: String,
    },
    /// `rq->scx.runnable_list` of a CPU.
    RunnableList {
        /// The CPU.
        cpu: u32,
    },
}

impl std::fmt::Display for ListName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ScxTasks => f.write_str("scx_tasks"),
            Self::DsqHash => f.write_str("dsq hash"),
            Self::Dsq { dsq } => f.write_str(dsq),
            Self::RunnableList { cpu } => write!(f, "cpu {cpu} runnable list"),
        }
    }
}

/// Why a walk ended early.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum EndedEarly {
    /// A cycle that does not pass through the head.
    Cycle,
    /// A pointer that could not be followed.
    Fault {
        /// Why.
        fault: ReadFault,
    },
    /// The step bound or the buffer was reached.
    Bound,
}

/// A list walk that ended early.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncated {
    /// Which list.
    #[serde(flatten)]
    pub list: ListName,
    /// Why it ended.
    #[serde(flatten)]
    pub why: EndedEarly,
}

impl std::fmt::Display for Truncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.why {
            EndedEarly::Cycle => write!(f, "{}: cycle", self.list),
            EndedEarly::Fault { fault } => write!(f, "{}: {fault}", self.list),
            EndedEarly::Bound => write!(f, "{}: bound or buffer reached", self.list),
        }
    }
}

/// Records of one kind a capture had no room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// CPU records.
    Cpus,
    /// DSQ records.
    Dsqs,
    /// Task slots of DSQ lists.
    QueuedTasks,
    /// Task slots of runnable lists.
    RunnableTasks,
    /// Task records.
    Tasks,
    /// Cgroup records.
    Cgroups,
}

/// Records dropped for lack of buffer space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// What kind.
    pub records: RecordKind,
    /// How many.
    pub count: u64,
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.records {
            RecordKind::Cpus => "cpu records",
            RecordKind::Dsqs => "dsq records",
            RecordKind::QueuedTasks => "queued task slots",
            RecordKind::RunnableTasks => "runnable task slots",
            RecordKind::Tasks => "task records",
            RecordKind::Cgroups => "cgroup records",
        };
        write!(f, "{} {what}", self.count)
    }
}

/// A counter or a link that disagrees with the queues. The kernel keeps
/// each of these invariants under a lock the freeze does not respect, so a
/// dump can land mid-update: a figure to read, not an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Inconsistency {
    /// `dsq->nr` is not the length of the DSQ's list.
    DsqCount {
        /// The DSQ.
        dsq: String,
        /// `dsq->nr`.
        nr: u32,
        /// Tasks on its list.
        listed: u32,
    },
    /// `rq->scx.nr_running` is not the runnable list's length plus the
    /// running task when it is a queued sched_ext task.
    RunnableList {
        /// The CPU.
        cpu: u32,
        /// `rq->scx.nr_running`.
        nr_running: u32,
        /// Whether the running task is a queued sched_ext task.
        curr_queued_ext: bool,
        /// Tasks the list should hold.
        expected: u32,
        /// Tasks it holds.
        listed: u32,
    },
    /// A task on a DSQ's list lacks `SCX_TASK_QUEUED`.
    QueuedFlag {
        /// The task.
        pid: i32,
        /// The DSQ it is on.
        dsq: String,
    },
    /// A task on a DSQ's list has `scx.dsq` pointing elsewhere.
    DsqPointer {
        /// The task.
        pid: i32,
        /// The DSQ it is on.
        dsq: String,
        /// Where `scx.dsq` points (`None`: NULL).
        points_at: Option<String>,
    },
    /// A task on a DSQ's list whose `scx.ops_state` is not
    /// `SCX_OPSS_NONE`: the BPF scheduler still owns it.
    OpsState {
        /// The task.
        pid: i32,
        /// The DSQ it is on.
        dsq: String,
        /// Its ops state, decoded.
        ops_state: String,
    },
    /// A CPU's running task is on a DSQ's list.
    RunningOnDsq {
        /// The CPU.
        cpu: u32,
        /// The task.
        pid: i32,
        /// The DSQ it is on.
        dsq: String,
    },
}

impl Inconsistency {
    /// The task it is about, if it is about one.
    pub fn pid(&self) -> Option<i32> {
        match self {
            Self::QueuedFlag { pid, .. }
            | Self::DsqPointer { pid, .. }
            | Self::OpsState { pid, .. }
            | Self::RunningOnDsq { pid, .. } => Some(*pid),
            Self::DsqCount { .. } | Self::RunnableList { .. } => None,
        }
    }

    /// The kernel invariant this breaks.
    pub fn invariant(&self) -> &'static str {
        match self {
            Self::DsqCount { .. } => "dsq->nr counts the tasks on the DSQ's list",
            Self::RunnableList { .. } => {
                "rq->scx.nr_running counts rq->scx.runnable_list plus the running task while it is queued"
            }
            Self::QueuedFlag { .. } => "a task on a DSQ has SCX_TASK_QUEUED",
            Self::DsqPointer { .. } => "a task on a DSQ has scx.dsq pointing at that DSQ",
            Self::OpsState { .. } => "a task on a DSQ has ops_state SCX_OPSS_NONE",
            Self::RunningOnDsq { .. } => "the running task is on no DSQ",
        }
    }

    /// The kernel function(s) that keep it.
    pub fn kept_by(&self) -> &'static str {
        match self {
            Self::DsqCount { .. } => "dsq_mod_nr (dispatch_enqueue, task_unlink_from_dsq)",
            Self::RunnableList { .. } => {
                "set_next_task_scx (takes the running task off the list), put_prev_task_scx"
            }
            Self::QueuedFlag { .. } => {
                "enqueue_task_scx (sets it before any dispatch), dequeue_task_scx (dispatch_dequeue)"
            }
            Self::DsqPointer { .. } => "dispatch_enqueue, task_unlink_from_dsq",
            Self::OpsState { .. } => "dispatch_enqueue (SCX_ENQ_CLEAR_OPSS), finish_dispatch",
            Self::RunningOnDsq { .. } => "set_next_task_scx (dispatch_dequeue)",
        }
    }
}

impl std::fmt::Display for Inconsistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DsqCount { dsq, nr, listed } => {
                write!(f, "{dsq}: nr={nr} but {listed} tasks on its list")?
            }
            Self::RunnableList {
                cpu,
                nr_running,
                curr_queued_ext,
                expected,
                listed,
            } => write!(
                f,
                "cpu {cpu}: rq->scx.nr_running={nr_running} {} so {expected} should be on its runnable list, but {listed} are",
                if *curr_queued_ext {
                    "with a queued sched_ext task running,"
                } else {
                    "with no queued sched_ext task running,"
                }
            )?,
            Self::QueuedFlag { pid, dsq } => {
                write!(f, "task {pid} is on {dsq} without SCX_TASK_QUEUED")?
            }
            Self::DsqPointer {
                pid,
                dsq,
                points_at,
            } => write!(
                f,
                "task {pid} is on {dsq} but its scx.dsq is {}",
                points_at.as_deref().unwrap_or("NULL")
            )?,
            Self::OpsState {
                pid,
                dsq,
                ops_state,
            } => write!(f, "task {pid} is on {dsq} with ops_state {ops_state}")?,
            Self::RunningOnDsq { cpu, pid, dsq } => {
                write!(f, "task {pid} runs on cpu {cpu} and is on {dsq}")?
            }
        }
        write!(f, " ({}: {})", self.invariant(), self.kept_by())
    }
}

/// A finding with its readable text, as JSON shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding<T> {
    /// The finding.
    #[serde(flatten)]
    pub what: T,
    /// Its text.
    pub text: String,
}

impl<T: std::fmt::Display> Finding<T> {
    /// `what` with its text.
    pub fn new(what: T) -> Self {
        Self {
            text: what.to_string(),
            what,
        }
    }
}

/// [`Finding`] of an [`Inconsistency`], with the invariant and the
/// function that keeps it spelled out for JSON readers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InconsistencyFinding {
    /// The finding.
    #[serde(flatten)]
    pub what: Inconsistency,
    /// [`Inconsistency::invariant`].
    pub invariant: String,
    /// [`Inconsistency::kept_by`].
    pub kept_by: String,
    /// Its text.
    pub text: String,
}

impl From<Inconsistency> for InconsistencyFinding {
    fn from(what: Inconsistency) -> Self {
        Self {
            invariant: what.invariant().into(),
            kept_by: what.kept_by().into(),
            text: format!("{what}"),
            what,
        }
    }
}

//! Render (after thaw, feature `std`): a capture becomes a [`Report`], with
//! flags, exit kinds, ages and DSQ origins decoded, each task placed, and
//! the consistency figures a freeze mid-update can break. The report is
//! serde-serializable (JSON, versioned by [`SCHEMA_VERSION`]) and has a
//! human text view ([`Report::to_text`]). One module per section (scheduler,
//! CPUs, DSQs, tasks, health) holds its types, how it is built and its text.

pub mod bpf;
mod cpus;
mod diff;
mod dsqs;
mod events;
pub mod findings;
mod health;
pub mod names;
mod scheduler;
pub mod symbolize;
mod tasks;
mod text;
mod vcpus;

use std::collections::HashMap;
use std::string::{String, ToString};
use std::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::capture::{CaptureBuf, Fault, Span, TaskRecord};
use crate::layout::Layout;
use crate::symbols::Symbols;
pub use cpus::{CpuReport, KickReport};
pub use dsqs::{DsqReport, WalkReport, dsq_name};
pub use events::EventCount;
pub use health::{HealthReport, PauseSplit};
pub use names::{Names, SchedClass};
pub use scheduler::{Frame, SchedulerReport};
pub use symbolize::{Symbolizer, TextSymbols};
pub use tasks::{Placement, Priorities, TaskReport};
use text::{list, who};
pub use vcpus::VcpuReport;

/// Version of the JSON schema; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 2;

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
    /// Names for kernel text addresses (the exit's backtrace), if known.
    pub symbolizer: Option<Symbolizer<'a>>,
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
    /// Each vCPU's registers and kernel stack, when the capture had them.
    #[serde(default)]
    pub vcpus: Vec<VcpuReport>,
    /// The BPF scheduler's programs, maps and globals, when the capture
    /// read them.
    #[serde(default)]
    pub bpf: Option<bpf::BpfReport>,
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

fn fault_text(f: Fault) -> Option<String> {
    findings::ReadFault::from_fault(f).map(|r| r.to_string())
}

fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(bytes.get(..end).unwrap_or_default()).into_owned()
}

/// The capture's tasks by address, and its shared address buffers, for
/// the sections that refer to tasks.
struct Index<'b> {
    by_addr: HashMap<u64, &'b TaskRecord>,
    queued: &'b [u64],
    runnable: &'b [u64],
}

impl<'b> Index<'b> {
    fn new(buf: &'b CaptureBuf<'_>) -> Self {
        Self {
            by_addr: buf.tasks.as_slice().iter().map(|t| (t.addr, t)).collect(),
            queued: buf.queued.as_slice(),
            runnable: buf.runnable.as_slice(),
        }
    }

    fn task_ref(&self, addr: u64) -> TaskRef {
        let t = self.by_addr.get(&addr);
        TaskRef {
            addr,
            pid: t.map(|t| t.pid),
            comm: t.map(|t| c_str(&t.comm)),
        }
    }

    /// The tasks of span `s` of `all` (one of the shared buffers).
    fn span(&self, all: &[u64], s: Span) -> Vec<TaskRef> {
        all.iter()
            .skip(s.start as usize)
            .take(s.len as usize)
            .map(|&a| self.task_ref(a))
            .collect()
    }
}

impl Report {
    /// Decode `buf` into a report. `buf` should be a whole capture
    /// ([`crate::capture::Capturer::capture`], or `capture_raw` then
    /// `decode`); an undecoded one is reported as a fault.
    pub fn from_capture(buf: &CaptureBuf<'_>, ctx: &RenderContext<'_>) -> Self {
        let ix = Index::new(buf);
        let mut health = HealthReport::start(buf, ctx);
        let dsqs = dsqs::build(buf, &ix, &mut health);
        let cpus = cpus::build(buf, &ix, ctx, &mut health);
        let tasks = tasks::build(buf, ctx, &cpus, &dsqs, &mut health);
        Report {
            schema_version: SCHEMA_VERSION,
            scheduler: SchedulerReport::build(buf, ctx),
            cpus,
            dsqs,
            tasks,
            health,
            vcpus: vcpus::build(buf, ctx),
            bpf: bpf::BpfReport::build(buf, None),
        }
    }
}

//! The health section: the capture's cost, and what it could not read or
//! found inconsistent.

use std::fmt::Write;
use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use serde::{Deserialize, Serialize};

use super::RenderContext;
use super::findings::{
    Dropped, EndedEarly, FaultFinding, Finding, Inconsistency, InconsistencyFinding, ListName,
    Pass, ReadFault, RecordKind, Truncated,
};
use crate::capture::{CaptureBuf, ListHealth};

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
    pub faults: Vec<Finding<FaultFinding>>,
    /// Lists that ended early, and why.
    pub truncated: Vec<Finding<Truncated>>,
    /// Records dropped for lack of buffer space.
    pub dropped: Vec<Finding<Dropped>>,
    /// Counters and links that disagree with the queues (a freeze can land
    /// mid-update), each with the invariant and who keeps it.
    pub inconsistencies: Vec<InconsistencyFinding>,
}

impl HealthReport {
    /// The capture's cost, the passes that faulted, the records dropped
    /// and the global walks that ended early; the sections add their own.
    pub(super) fn start(buf: &CaptureBuf<'_>, ctx: &RenderContext<'_>) -> Self {
        let mut h = HealthReport {
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
        h.note_faults(buf);
        h.note_dropped(buf);
        h.note_walk(ListName::ScxTasks, &buf.health.tasks_walk);
        h.note_walk(ListName::DsqHash, &buf.health.dsq_hash_walk);
        h
    }

    fn note_faults(&mut self, buf: &CaptureBuf<'_>) {
        for (pass, f) in [
            (Pass::Scheduler, buf.health.sched),
            (Pass::Cpus, buf.health.cpus),
            (Pass::Dsqs, buf.health.dsqs),
            (Pass::Tasks, buf.health.tasks),
            (Pass::Cgroups, buf.health.cgroups),
        ] {
            if let Some(fault) = ReadFault::from_fault(f) {
                self.faults
                    .push(Finding::new(FaultFinding::Pass { pass, fault }));
            }
        }
        if !buf.is_decoded() {
            // Capturer::capture_raw without Capturer::decode: CPU and task
            // values are missing, and the report must not pass them as zeros.
            self.faults.push(Finding::new(FaultFinding::NotDecoded));
        }
        for c in buf.cgroups.as_slice() {
            if let Some(fault) = ReadFault::from_fault(c.fault) {
                let css_set = c.css_set;
                self.faults
                    .push(Finding::new(FaultFinding::Cgroup { css_set, fault }));
            }
        }
    }

    fn note_dropped(&mut self, buf: &CaptureBuf<'_>) {
        for (records, count) in [
            (RecordKind::Cpus, buf.cpus.dropped()),
            (RecordKind::Dsqs, buf.dsqs.dropped()),
            (RecordKind::QueuedTasks, buf.queued.dropped()),
            (RecordKind::RunnableTasks, buf.runnable.dropped()),
            (RecordKind::Tasks, buf.tasks.dropped()),
            (RecordKind::Cgroups, buf.cgroups.dropped()),
        ] {
            if count > 0 {
                self.dropped.push(Finding::new(Dropped { records, count }));
            }
        }
    }

    /// Record `list`'s walk when it ended early.
    pub(super) fn note_walk(&mut self, list: ListName, w: &ListHealth) {
        if w.truncated || w.cycle || w.fault.is_fault() {
            let why = match ReadFault::from_fault(w.fault) {
                _ if w.cycle => EndedEarly::Cycle,
                Some(fault) => EndedEarly::Fault { fault },
                None => EndedEarly::Bound,
            };
            self.truncated.push(Finding::new(Truncated { list, why }));
        }
    }

    /// Record an inconsistency.
    pub(super) fn inconsistent(&mut self, what: Inconsistency) {
        self.inconsistencies.push(what.into());
    }

    /// The section's text.
    pub(super) fn write_text(&self, s: &mut String) -> std::fmt::Result {
        writeln!(
            s,
            "\ncapture: {} reads, {} bytes{}",
            self.reads,
            self.bytes,
            self.pause_ns.map_or(String::new(), |p| format!(
                ", guest paused {:.3} ms",
                p as f64 / 1e6
            )),
        )?;
        if let Some(p) = &self.pause {
            let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.3}", v as f64 / 1e6));
            writeln!(
                s,
                "  pause split (ms): stop {}, capture {}, resume {}",
                ms(p.stop_ns),
                ms(Some(p.capture_ns)),
                ms(p.resume_ns)
            )?;
        }
        let texts = |v: &mut dyn Iterator<Item = &String>| -> Vec<String> { v.cloned().collect() };
        for (what, items) in [
            ("missing layout groups", self.missing_groups.clone()),
            ("faults", texts(&mut self.faults.iter().map(|f| &f.text))),
            (
                "truncated",
                texts(&mut self.truncated.iter().map(|f| &f.text)),
            ),
            ("dropped", texts(&mut self.dropped.iter().map(|f| &f.text))),
            (
                "inconsistent (a freeze can land mid-update)",
                texts(&mut self.inconsistencies.iter().map(|f| &f.text)),
            ),
        ] {
            if !items.is_empty() {
                writeln!(s, "  {what}: {}", items.join("; "))?;
            }
        }
        Ok(())
    }
}

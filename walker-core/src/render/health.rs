//! The health section: the capture's cost, and what it could not read or
//! found inconsistent.

use std::fmt::Write;
use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{RenderContext, fault_text};
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
    pub faults: Vec<String>,
    /// Lists that ended early, and why.
    pub truncated: Vec<String>,
    /// Records dropped for lack of buffer space.
    pub dropped: Vec<String>,
    /// Counters that disagree with the queues (a freeze can land mid-update).
    pub inconsistencies: Vec<String>,
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
        h.note_walk("scx_tasks".into(), &buf.health.tasks_walk);
        h.note_walk("dsq hash".into(), &buf.health.dsq_hash_walk);
        h
    }

    fn note_faults(&mut self, buf: &CaptureBuf<'_>) {
        for (pass, f) in [
            ("scheduler", buf.health.sched),
            ("cpus", buf.health.cpus),
            ("dsqs", buf.health.dsqs),
            ("tasks", buf.health.tasks),
            ("cgroups", buf.health.cgroups),
        ] {
            if let Some(t) = fault_text(f) {
                self.faults.push(format!("{pass}: {t}"));
            }
        }
        if !buf.is_decoded() {
            // Capturer::capture_raw without Capturer::decode: CPU and task
            // values are missing, and the report must not pass them as zeros.
            self.faults.push(
                "capture: CPU and task values were not decoded (Capturer::decode after capture_raw)"
                    .to_string(),
            );
        }
        for c in buf.cgroups.as_slice() {
            if let Some(t) = fault_text(c.fault) {
                self.faults
                    .push(format!("cgroup of css_set {:#x}: {t}", c.css_set));
            }
        }
    }

    fn note_dropped(&mut self, buf: &CaptureBuf<'_>) {
        for (what, n) in [
            ("cpu records", buf.cpus.dropped()),
            ("dsq records", buf.dsqs.dropped()),
            ("queued task slots", buf.queued.dropped()),
            ("runnable task slots", buf.runnable.dropped()),
            ("task records", buf.tasks.dropped()),
            ("cgroup records", buf.cgroups.dropped()),
        ] {
            if n > 0 {
                self.dropped.push(format!("{n} {what}"));
            }
        }
    }

    /// Record `what`'s walk when it ended early.
    pub(super) fn note_walk(&mut self, what: String, w: &ListHealth) {
        if w.truncated || w.cycle || w.fault.is_fault() {
            let why = if w.cycle {
                "cycle".to_string()
            } else {
                fault_text(w.fault).unwrap_or_else(|| "bound or buffer reached".into())
            };
            self.truncated.push(format!("{what}: {why}"));
        }
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
        for (what, items) in [
            ("missing layout groups", &self.missing_groups),
            ("faults", &self.faults),
            ("truncated", &self.truncated),
            ("dropped", &self.dropped),
            (
                "inconsistent (a freeze can land mid-update)",
                &self.inconsistencies,
            ),
        ] {
            if !items.is_empty() {
                writeln!(s, "  {what}: {}", items.join("; "))?;
            }
        }
        Ok(())
    }
}

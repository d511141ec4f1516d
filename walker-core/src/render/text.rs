//! The human view of a [`Report`], read top-down: scheduler, CPUs, other
//! DSQs, tasks of interest, capture health (each section's text lives with
//! its section).

use std::string::String;
use std::vec::Vec;

use super::{Report, TaskRef, cpus, dsqs, tasks, vcpus};

/// A task as the text names it: `comm[pid]`, or its address.
pub(super) fn who(t: &TaskRef) -> String {
    match (&t.pid, &t.comm) {
        (Some(pid), Some(comm)) => std::format!("{comm}[{pid}]"),
        _ => std::format!("{:#x}", t.addr),
    }
}

/// Tasks as the text lists them, `-` for none.
pub(super) fn list(ts: &[TaskRef]) -> String {
    if ts.is_empty() {
        return "-".into();
    }
    ts.iter().map(who).collect::<Vec<_>>().join(" ")
}

impl Report {
    /// The report as text for a terminal.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = self.write_text(&mut s);
        s
    }

    fn write_text(&self, s: &mut String) -> std::fmt::Result {
        self.scheduler.write_text(s)?;
        cpus::write_text(&self.cpus, s)?;
        dsqs::write_text(&self.dsqs, s)?;
        tasks::write_text(&self.tasks, s)?;
        vcpus::write_text(&self.vcpus, s)?;
        if let Some(b) = &self.bpf {
            b.write_text(s)?;
        }
        self.health.write_text(s)
    }
}

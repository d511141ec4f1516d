//! The DSQ section: every dispatch queue with its tasks in order.

use std::fmt::Write;
use std::format;
use std::string::String;
use std::vec::Vec;

use serde::{Deserialize, Serialize};

use super::findings::{Inconsistency, ListName};
use super::health::HealthReport;
use super::{Index, TaskRef, fault_text, list};
use crate::capture::{CaptureBuf, DsqOrigin, DsqRecord, Fault, ListHealth};

const SCX_DSQ_FLAG_BUILTIN: u64 = 1 << 63;
const SCX_DSQ_FLAG_LOCAL_ON: u64 = 1 << 62;

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

impl WalkReport {
    fn build(w: &ListHealth) -> Self {
        Self {
            entries: w.entries,
            cursors: w.cursors,
            truncated: w.truncated,
            cycle: w.cycle,
            fault: fault_text(w.fault),
        }
    }
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

/// Every DSQ of `buf`, in capture order; walks that ended early and
/// counts that disagree with the lists go to `health`.
pub(super) fn build(
    buf: &CaptureBuf<'_>,
    ix: &Index<'_>,
    health: &mut HealthReport,
) -> Vec<DsqReport> {
    buf.dsqs
        .as_slice()
        .iter()
        .map(|d| {
            let name = dsq_name(d);
            let dsq = name.clone();
            health.note_walk(ListName::Dsq { dsq }, &d.walk);
            if d.walk.fault == Fault::None
                && !d.walk.truncated
                && !d.walk.cycle
                && d.nr != d.tasks.len
            {
                health.inconsistent(Inconsistency::DsqCount {
                    dsq: name.clone(),
                    nr: d.nr,
                    listed: d.tasks.len,
                });
            }
            DsqReport {
                id: d.id,
                name,
                addr: d.addr,
                nr: d.nr,
                seq: d.seq,
                tasks: ix.span(ix.queued, d.tasks),
                walk: WalkReport::build(&d.walk),
            }
        })
        .collect()
}

/// The section's text: the DSQs that are not a CPU's local one (those are
/// shown with their CPU).
pub(super) fn write_text(dsqs: &[DsqReport], s: &mut String) -> std::fmt::Result {
    let others: Vec<_> = dsqs
        .iter()
        .filter(|d| !d.name.starts_with("local["))
        .collect();
    writeln!(s, "\ndsqs:")?;
    for d in &others {
        writeln!(
            s,
            "  {:<18} nr={:<4} seq={:<6} {}",
            d.name,
            d.nr,
            d.seq,
            list(&d.tasks)
        )?;
    }
    if others.is_empty() {
        writeln!(s, "  -")?;
    }
    Ok(())
}

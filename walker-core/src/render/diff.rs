//! What changed between two dumps of one guest: the scheduler's exit and
//! counters, each CPU's current task and counts, each DSQ's length, and
//! where each task moved, so a series of dumps reads as a story.

use std::collections::HashMap;
use std::format;
use std::string::String;
use std::vec::Vec;

use super::Report;
use super::text::who;

/// Task moves listed before the rest is counted.
const MOVES: usize = 30;

impl Report {
    /// What changed from `prev` (an earlier dump of the same guest) to
    /// this one, a line per change; empty when nothing did.
    pub fn changes_since(&self, prev: &Report) -> Vec<String> {
        let mut out = Vec::new();
        self.scheduler_changes(prev, &mut out);
        self.cpu_changes(prev, &mut out);
        self.dsq_changes(prev, &mut out);
        self.task_changes(prev, &mut out);
        out
    }

    fn scheduler_changes(&self, prev: &Report, out: &mut Vec<String>) {
        let (a, b) = (&prev.scheduler, &self.scheduler);
        if a.attached != b.attached || a.ops_name != b.ops_name {
            let name = |s: &super::SchedulerReport| match s.attached {
                true => s.ops_name.clone(),
                false => "none".into(),
            };
            out.push(format!("scheduler: {} -> {}", name(a), name(b)));
        }
        if a.exit_kind != b.exit_kind {
            out.push(format!(
                "scheduler exit: {} -> {} {}",
                a.exit_kind_name, b.exit_kind_name, b.exit_msg
            ));
        }
        if let (Some(ea), Some(eb)) = (&a.events, &b.events) {
            let before: HashMap<&str, i64> =
                ea.iter().map(|e| (e.name.as_str(), e.value)).collect();
            let moved: Vec<String> = eb
                .iter()
                .filter_map(|e| {
                    let d = e.value.wrapping_sub(*before.get(e.name.as_str())?);
                    (d != 0).then(|| format!("{}{d:+}", e.name.trim_start_matches("SCX_EV_")))
                })
                .collect();
            if !moved.is_empty() {
                out.push(format!("events: {}", moved.join(" ")));
            }
        }
    }

    fn cpu_changes(&self, prev: &Report, out: &mut Vec<String>) {
        let before: HashMap<u32, &super::CpuReport> =
            prev.cpus.iter().map(|c| (c.cpu, c)).collect();
        for c in &self.cpus {
            let Some(p) = before.get(&c.cpu) else {
                continue;
            };
            let curr = |c: &super::CpuReport| match c.curr_is_idle {
                true => "idle".into(),
                false => who(&c.curr),
            };
            let mut what = Vec::new();
            if p.curr.addr != c.curr.addr {
                what.push(format!("curr {} -> {}", curr(p), curr(c)));
            }
            if p.scx_nr_running != c.scx_nr_running {
                what.push(format!(
                    "scx.nr_running {} -> {}",
                    p.scx_nr_running, c.scx_nr_running
                ));
            }
            if p.clock_ns == c.clock_ns && p.nr_running > 0 {
                what.push("clock did not move".into());
            }
            if !what.is_empty() {
                out.push(format!("cpu {}: {}", c.cpu, what.join(", ")));
            }
        }
    }

    fn dsq_changes(&self, prev: &Report, out: &mut Vec<String>) {
        let before: HashMap<&str, u32> =
            prev.dsqs.iter().map(|d| (d.name.as_str(), d.nr)).collect();
        for d in &self.dsqs {
            match before.get(d.name.as_str()) {
                Some(&nr) if nr != d.nr => out.push(format!("{}: nr {nr} -> {}", d.name, d.nr)),
                None => out.push(format!("{}: new, nr {}", d.name, d.nr)),
                _ => {}
            }
        }
        for d in &prev.dsqs {
            if !self.dsqs.iter().any(|x| x.name == d.name) {
                out.push(format!("{}: gone", d.name));
            }
        }
    }

    fn task_changes(&self, prev: &Report, out: &mut Vec<String>) {
        let before: HashMap<u64, &super::TaskReport> =
            prev.tasks.iter().map(|t| (t.addr, t)).collect();
        let mut moves = 0usize;
        let mut still = 0usize;
        for t in &self.tasks {
            match before.get(&t.addr) {
                Some(p) if p.placement != t.placement => {
                    moves += 1;
                    if moves <= MOVES {
                        out.push(format!(
                            "{}[{}]: {} -> {}",
                            t.comm, t.pid, p.placement, t.placement
                        ));
                    }
                }
                Some(p) if t.runnable_for_ms.is_some() && p.runnable_for_ms.is_some() => {
                    // Runnable in both and did not move: waiting still.
                    still += usize::from(p.runnable_at_same(t));
                }
                _ => {}
            }
        }
        if moves > MOVES {
            out.push(format!("... and {} more tasks moved", moves - MOVES));
        }
        if still > 0 {
            out.push(format!("{still} runnable tasks did not move"));
        }
        let new = self
            .tasks
            .iter()
            .filter(|t| !before.contains_key(&t.addr))
            .count();
        let gone = prev
            .tasks
            .len()
            .saturating_sub(self.tasks.len().saturating_sub(new));
        if new > 0 || gone > 0 {
            out.push(format!("tasks: {new} new, {gone} gone"));
        }
    }
}

impl super::TaskReport {
    /// Whether `later` is this task still waiting from the same moment.
    fn runnable_at_same(&self, later: &super::TaskReport) -> bool {
        matches!(
            later.placement,
            super::Placement::Queued { .. }
                | super::Placement::HeldByBpf
                | super::Placement::Runnable
        ) && later.runnable_for_ms > self.runnable_for_ms
    }
}

//! The human view of a [`Report`], read top-down: scheduler, CPUs, other
//! DSQs, tasks of interest, capture health.

use std::fmt::Write;
use std::string::{String, ToString};
use std::vec::Vec;

use super::{Placement, Report, TaskRef};

/// Tasks listed under "tasks of interest".
const INTERESTING: usize = 20;

fn who(t: &TaskRef) -> String {
    match (&t.pid, &t.comm) {
        (Some(pid), Some(comm)) => std::format!("{comm}[{pid}]"),
        _ => std::format!("{:#x}", t.addr),
    }
}

fn list(ts: &[TaskRef]) -> String {
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
        let sc = &self.scheduler;
        if sc.attached {
            writeln!(s, "scheduler: {} ({})", sc.ops_name, sc.exit_kind_name)?;
            if sc.exit_kind != 0 {
                writeln!(
                    s,
                    "  exit: {} code={:?}: {}",
                    sc.exit_reason, sc.exit_code, sc.exit_msg
                )?;
            }
            writeln!(
                s,
                "  bypass_depth={} aborting={} watchdog={}",
                sc.bypass_depth.map_or("-".into(), |v| v.to_string()),
                sc.aborting.map_or("-".into(), |v| v.to_string()),
                sc.watchdog_timeout_ms
                    .map_or("-".into(), |v| std::format!("{v}ms")),
            )?;
        } else {
            writeln!(s, "scheduler: none attached")?;
        }
        writeln!(s, "\ncpus:")?;
        for c in &self.cpus {
            let curr = if c.curr_is_idle {
                "idle".into()
            } else {
                who(&c.curr)
            };
            let curr = match &c.curr_class {
                Some(class) if !c.curr_is_idle => std::format!("{curr} ({class})"),
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
                    .map_or(String::new(), |f| std::format!(" FAULT: {f}")),
            )?;
            writeln!(s, "          local: {}", list(&c.local_dsq))?;
            writeln!(s, "          runnable: {}", list(&c.runnable))?;
        }
        let others: Vec<_> = self
            .dsqs
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
        let mut waiting: Vec<_> = self
            .tasks
            .iter()
            // Idle tasks are always "runnable"; they are not waiting.
            .filter(|t| t.class != "idle")
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
            self.tasks.len()
        )?;
        for t in waiting.iter().take(INTERESTING) {
            writeln!(
                s,
                "  {}[{}] {}{} {}, waiting {}; flags=[{}] {} weight={} slice={}ns",
                t.comm,
                t.pid,
                t.class,
                t.cgroup
                    .as_ref()
                    .map_or(String::new(), |c| std::format!(" in {c}")),
                t.placement,
                t.runnable_for_ms
                    .map_or("?".into(), |m| std::format!("{m}ms")),
                t.scx_flags.join(","),
                t.ops_state,
                t.weight,
                t.slice_ns,
            )?;
        }
        if waiting.is_empty() {
            writeln!(s, "  -")?;
        }
        let h = &self.health;
        writeln!(
            s,
            "\ncapture: {} reads, {} bytes{}",
            h.reads,
            h.bytes,
            h.pause_ns.map_or(String::new(), |p| std::format!(
                ", guest paused {:.3} ms",
                p as f64 / 1e6
            )),
        )?;
        if let Some(p) = &h.pause {
            let ms =
                |v: Option<u64>| v.map_or("-".into(), |v| std::format!("{:.3}", v as f64 / 1e6));
            writeln!(
                s,
                "  pause split (ms): stop {}, capture {}, resume {}",
                ms(p.stop_ns),
                ms(Some(p.capture_ns)),
                ms(p.resume_ns)
            )?;
        }
        for (what, items) in [
            ("missing layout groups", &h.missing_groups),
            ("faults", &h.faults),
            ("truncated", &h.truncated),
            ("dropped", &h.dropped),
            (
                "inconsistent (a freeze can land mid-update)",
                &h.inconsistencies,
            ),
        ] {
            if !items.is_empty() {
                writeln!(s, "  {what}: {}", items.join("; "))?;
            }
        }
        Ok(())
    }
}

//! The scheduler section: `*scx_root` and its exit info.

use std::fmt::Write;
use std::string::{String, ToString};
use std::vec::Vec;

use serde::{Deserialize, Serialize};

use super::events::{self, EventCount};
use super::{RenderContext, c_str};
use crate::capture::CaptureBuf;

/// One return address of a backtrace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The address.
    pub addr: u64,
    /// `function+0xoff/0xsize`, when a symbol table named it.
    pub symbol: Option<String>,
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
    /// `exit_info->exit_cpu`: the CPU the exit was raised on.
    #[serde(default)]
    pub exit_cpu: Option<i32>,
    /// `exit_info->bt`: where the exit was raised, innermost first.
    #[serde(default)]
    pub exit_backtrace: Vec<Frame>,
    /// `exit_info->dump`: the kernel's own dump of the moment of an error
    /// exit (`scx_dump_state`, with what the scheduler's `ops.dump*()`
    /// wrote), when it was filled and captured.
    #[serde(default)]
    pub exit_dump: Option<String>,
    /// The kernel had not finished its dump at the freeze: the exit is an
    /// error (dumped by an irq_work queued when the exit is claimed) and
    /// sched_ext was still `SCX_ENABLED` (the disable work, queued once
    /// the dump is written, had not begun). `exit_dump` is then a prefix,
    /// or absent; a later dump has it whole.
    #[serde(default)]
    pub exit_dump_unfinished: bool,
    /// The `SCX_EV_*` counters summed over the CPUs.
    #[serde(default)]
    pub events: Option<Vec<EventCount>>,
    /// sched_ext's kernel-wide state.
    #[serde(default)]
    pub globals: GlobalsReport,
}

/// sched_ext's kernel-wide state (globals); `None` where this kernel has
/// no such global.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalsReport {
    /// `scx_enable_state_var`, by its `SCX_*` name.
    pub enable_state: Option<String>,
    /// `scx_enable_seq`: schedulers enabled since boot.
    pub enable_seq: Option<u64>,
    /// `scx_nr_rejected`: tasks whose switch to sched_ext was rejected.
    pub nr_rejected: Option<u64>,
    /// `scx_switching_all`: the scheduler takes every task.
    pub switching_all: Option<bool>,
    /// `__scx_switched_all`: every task has been switched.
    pub switched_all: Option<bool>,
    /// `scx_breather_depth`.
    pub breather_depth: Option<i32>,
}

impl SchedulerReport {
    /// The scheduler as `buf` recorded it.
    pub(super) fn build(buf: &CaptureBuf<'_>, ctx: &RenderContext<'_>) -> Self {
        let (s, names) = (&buf.sched, ctx.names);
        let g = &s.globals;
        let dump = buf.exit_dump();
        Self {
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
            exit_cpu: s.exit_cpu.filter(|_| s.exit_kind != 0),
            exit_backtrace: buf
                .exit_bt
                .as_slice()
                .iter()
                .map(|&addr| Frame {
                    addr,
                    symbol: ctx.symbolizer.and_then(|z| z.name(addr)),
                })
                .collect(),
            exit_dump: (!dump.is_empty()).then(|| String::from_utf8_lossy(dump).into_owned()),
            exit_dump_unfinished: s.root != 0
                && names.is_error_exit(s.exit_kind)
                && g.enable_state
                    .is_some_and(|v| names.enable_state(v) == "SCX_ENABLED"),
            events: events::sum(buf, names),
            globals: GlobalsReport {
                enable_state: g.enable_state.map(|v| names.enable_state(v)),
                enable_seq: g.enable_seq,
                nr_rejected: g.nr_rejected,
                switching_all: g.switching_all,
                switched_all: g.switched_all,
                breather_depth: g.breather_depth,
            },
        }
    }

    /// The section's text.
    pub(super) fn write_text(&self, s: &mut String) -> std::fmt::Result {
        if !self.attached {
            return writeln!(s, "scheduler: none attached");
        }
        writeln!(s, "scheduler: {} ({})", self.ops_name, self.exit_kind_name)?;
        if self.exit_kind != 0 {
            writeln!(
                s,
                "  exit: {} code={:?}: {}",
                self.exit_reason, self.exit_code, self.exit_msg
            )?;
            self.write_exit_detail(s)?;
        }
        writeln!(
            s,
            "  bypass_depth={} aborting={} watchdog={}",
            self.bypass_depth.map_or("-".into(), |v| v.to_string()),
            self.aborting.map_or("-".into(), |v| v.to_string()),
            self.watchdog_timeout_ms
                .map_or("-".into(), |v| std::format!("{v}ms")),
        )?;
        self.write_state(s)
    }

    fn write_exit_detail(&self, s: &mut String) -> std::fmt::Result {
        if let Some(cpu) = self.exit_cpu {
            writeln!(s, "  exit raised on cpu {cpu}")?;
        }
        if !self.exit_backtrace.is_empty() {
            writeln!(s, "  backtrace:")?;
        }
        for f in &self.exit_backtrace {
            match &f.symbol {
                Some(sym) => writeln!(s, "    {sym}")?,
                None => writeln!(s, "    {:#x}", f.addr)?,
            }
        }
        if self.exit_dump_unfinished {
            writeln!(
                s,
                "  kernel dump: unfinished at the freeze (the kernel was still writing it)"
            )?;
        }
        if let Some(d) = &self.exit_dump {
            writeln!(s, "  kernel dump ({} bytes):", d.len())?;
            for line in d.lines() {
                writeln!(s, "    | {line}")?;
            }
        }
        Ok(())
    }

    fn write_state(&self, s: &mut String) -> std::fmt::Result {
        let g = &self.globals;
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        writeln!(
            s,
            "  enable_state={} enable_seq={} nr_rejected={} switching_all={} switched_all={} breather_depth={}",
            opt(g.enable_state.clone()),
            opt(g.enable_seq.map(|v| v.to_string())),
            opt(g.nr_rejected.map(|v| v.to_string())),
            opt(g.switching_all.map(|v| v.to_string())),
            opt(g.switched_all.map(|v| v.to_string())),
            opt(g.breather_depth.map(|v| v.to_string())),
        )?;
        if let Some(ev) = &self.events {
            let nonzero: Vec<String> = ev
                .iter()
                .filter(|e| e.value != 0)
                .map(|e| std::format!("{}={}", e.name.trim_start_matches("SCX_EV_"), e.value))
                .collect();
            let shown = if nonzero.is_empty() {
                "all 0".into()
            } else {
                nonzero.join(" ")
            };
            writeln!(s, "  events: {shown}")?;
        }
        Ok(())
    }
}

//! The scheduler section: `*scx_root` and its exit info.

use std::fmt::Write;
use std::string::{String, ToString};

use serde::{Deserialize, Serialize};

use super::{RenderContext, c_str};
use crate::capture::SchedRecord;

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

impl SchedulerReport {
    /// The scheduler as `s` recorded it.
    pub(super) fn build(s: &SchedRecord, ctx: &RenderContext<'_>) -> Self {
        let names = ctx.names;
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
        }
        writeln!(
            s,
            "  bypass_depth={} aborting={} watchdog={}",
            self.bypass_depth.map_or("-".into(), |v| v.to_string()),
            self.aborting.map_or("-".into(), |v| v.to_string()),
            self.watchdog_timeout_ms
                .map_or("-".into(), |v| std::format!("{v}ms")),
        )
    }
}

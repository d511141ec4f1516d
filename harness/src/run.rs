//! `ktstr run`: boot a kernel with a scheduler and CPU-bound workers on a
//! topology, optionally freeze and dump mid-run, and report how the
//! scheduler and the workers fared.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ktstr_walker::render::Report;
use serde::{Deserialize, Serialize};

use crate::agent::proto::{SchedExtState, WorkerResult};
use crate::session::{Session, SessionConfig};

/// Version of [`RunReport`]'s JSON.
pub const RUN_SCHEMA_VERSION: u32 = 1;

/// A run's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// [`RUN_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The guest's `uname -r`.
    pub kernel_release: String,
    /// The topology, as `1n2l4c2t`.
    pub topology: String,
    /// The attached scheduler's ops name, `None` for the default scheduler.
    pub scheduler: Option<String>,
    /// Whether the scheduler was still attached when the workers ended.
    pub scheduler_survived: bool,
    /// How the scheduler ended, if it did before it was stopped.
    pub scheduler_exit: Option<String>,
    /// sched_ext after the workload.
    pub sched_ext: SchedExtState,
    /// Per worker.
    pub workers: Vec<WorkerResult>,
    /// The mid-run dump (`--dump-at`).
    pub dump: Option<Report>,
    /// Wall time of the whole run.
    pub wall_ms: u64,
    /// Share of the workload's wall time the guest spent frozen.
    pub frozen_ratio: f64,
}

impl RunReport {
    /// Every check passed: the scheduler (when there is one) survived and
    /// every worker ran.
    pub fn passed(&self) -> bool {
        let sched_ok = self.scheduler.is_none() || self.scheduler_survived;
        sched_ok
            && self
                .workers
                .iter()
                .all(|w| w.error.is_none() && w.iterations > 0)
    }

    /// The human summary.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "kernel {} on {}, scheduler {}\n",
            self.kernel_release,
            self.topology,
            self.scheduler.as_deref().unwrap_or("(kernel default)")
        );
        if let Some(d) = &self.dump {
            out.push_str("\n--- dump ---\n");
            out.push_str(&d.to_text());
            out.push_str("--- end of dump ---\n\n");
        }
        for w in &self.workers {
            out.push_str(&format!(
                "  worker {}[{}]: {} iterations, {} ms CPU{}\n",
                w.name,
                w.pid,
                w.iterations,
                w.cpu_ms,
                w.error
                    .as_ref()
                    .map(|e| format!(", FAILED: {e}"))
                    .unwrap_or_default()
            ));
        }
        if self.scheduler.is_some() {
            out.push_str(&if self.scheduler_survived {
                "scheduler: survived\n".to_string()
            } else {
                format!(
                    "scheduler: FAILED: sched_ext is {} (exit: {})\n",
                    self.sched_ext.state,
                    self.scheduler_exit.as_deref().unwrap_or("still running")
                )
            });
        }
        out.push_str(&format!(
            "{} in {:.1} s (guest frozen {:.2}% of the workload)\n",
            if self.passed() { "PASSED" } else { "FAILED" },
            self.wall_ms as f64 / 1000.0,
            self.frozen_ratio * 100.0
        ));
        out
    }
}

/// Run `cfg`; with `dump_at`, freeze and dump that long after the workers
/// started.
pub fn run(cfg: &SessionConfig, dump_at: Option<Duration>) -> Result<RunReport> {
    if let Some(at) = dump_at
        && at >= cfg.duration
    {
        bail!(
            "--dump-at {at:?} is not within the run's {:?} duration",
            cfg.duration
        );
    }
    let start = Instant::now();
    let mut session = Session::start(cfg)?;
    tracing::info!(
        workers = session.workers.len(),
        scheduler = session.attached.as_ref().map(|a| a.ops.as_str()),
        "workload running"
    );
    let running = Instant::now();
    let dump = match dump_at {
        Some(at) => {
            std::thread::sleep(at.saturating_sub(running.elapsed()));
            Some(session.capture(None)?)
        }
        None => None,
    };
    let frozen_ns = dump.as_ref().and_then(|d| d.health.pause_ns).unwrap_or(0);
    let release = session.release.clone();
    let scheduler = session.attached.as_ref().map(|a| a.ops.clone());
    let done = session.finish()?;
    let workload_ns = running.elapsed().as_nanos().max(1) as f64;
    Ok(RunReport {
        schema_version: RUN_SCHEMA_VERSION,
        kernel_release: release,
        topology: cfg.topology.to_string(),
        scheduler_survived: done.sched_ext.state == "enabled" && done.scheduler_exit.is_none(),
        scheduler,
        scheduler_exit: done.scheduler_exit,
        sched_ext: done.sched_ext,
        workers: done.workers,
        dump,
        wall_ms: start.elapsed().as_millis() as u64,
        frozen_ratio: frozen_ns as f64 / workload_ns,
    })
}

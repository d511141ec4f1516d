//! `ktstr run`: boot a kernel with a scheduler on a topology, run a
//! scenario, optionally freeze and dump mid-run, check the outcome, and
//! report.

use std::time::{Duration, Instant};

use ktstr_walker::render::Report;
use serde::{Deserialize, Serialize};

use crate::agent::proto::{SchedExtState, ScxState, WorkerResult};
#[cfg(test)]
use crate::checks::CheckKind;
use crate::checks::{Check, Outcome, Thresholds, evaluate};
use crate::monitor::{Monitor, MonitorConfig, Trigger};
use crate::scenario::{Scenario, ScenarioError};
use crate::series::{DumpPlan, PlanError, Series, TimedDump};
use crate::session::{Session, SessionConfig, SessionError, StartPhases};
use crate::vm::PauseWindow;

/// How long past the scenario's duration the guest may take to report
/// its end (stopping workers, collecting results) before the run is
/// declared hung.
const FINISH_GRACE: Duration = Duration::from_secs(60);

/// [`FINISH_GRACE`], or `KTSTR_FINISH_GRACE_SECS` when set: tests of a
/// hung guest need not wait a minute.
fn finish_grace() -> Duration {
    std::env::var("KTSTR_FINISH_GRACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(FINISH_GRACE, Duration::from_secs)
}

/// Why a run ended without a report (a failed check is not an error: it
/// is in the report).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The scenario does not fit the topology or duration.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The dump plan does not fit the run (`--dump-at` past its end).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The guest could not be booted, followed or captured.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The guest stopped reporting before the workload's end.
    #[error(
        "timed out after {waited_s} s waiting for the workload to finish (the scenario lasts {duration_s} s)\n--- console tail ---\n{console}"
    )]
    Hung {
        /// Seconds since the workers started.
        waited_s: u64,
        /// The scenario's duration in seconds.
        duration_s: u64,
        /// The guest console's last lines.
        console: String,
    },
}

/// Where a run's wall time went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phases {
    /// Up to the running workload.
    #[serde(flatten)]
    pub start: StartPhases,
    /// From the workers' start to the agent's report of their end.
    pub workload_ms: u64,
    /// From there to the guest's power-off.
    pub teardown_ms: u64,
}

impl Phases {
    /// `prepare 0.41 s, boot 3.20 s, ...`.
    pub fn to_text(&self) -> String {
        let s = |ms: u64| format!("{:.2} s", ms as f64 / 1000.0);
        format!(
            "prepare {}, boot {}{}, attach {}, start workers {}, workload {}, teardown {}",
            s(self.start.prepare_ms),
            s(self.start.boot_ms),
            if self.start.restored {
                " (from a snapshot)"
            } else {
                ""
            },
            s(self.start.attach_ms),
            s(self.start.start_workers_ms),
            s(self.workload_ms),
            s(self.teardown_ms)
        )
    }
}

/// Version of [`RunReport`]'s JSON.
pub const RUN_SCHEMA_VERSION: u32 = 1;

/// A run's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// [`RUN_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The test that ran it (`module::function`, with the topology and
    /// profile of a gauntlet's combination); `None` for `ktstr run`.
    #[serde(default)]
    pub test_name: Option<String>,
    /// The guest's `uname -r`.
    pub kernel_release: String,
    /// The topology, as `1n2l4c2t`.
    pub topology: String,
    /// The scenario's name.
    pub scenario: String,
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
    /// Verdicts.
    pub checks: Vec<Check>,
    /// The mid-run dump (`--dump-at`, or the monitor's).
    pub dump: Option<Report>,
    /// Why the dump was taken.
    pub dump_reason: Option<String>,
    /// Samples the monitor read without freezing.
    pub monitor_samples: u64,
    /// Wall time of the whole run.
    pub wall_ms: u64,
    /// Share of the workload's wall time the guest spent frozen.
    pub frozen_ratio: f64,
    /// Which backend ran the guest (`qemu`, `kvm`).
    #[serde(default)]
    pub backend: String,
    /// Where the frozen dump's pause went (none without a frozen dump).
    #[serde(default)]
    pub pause: Option<PauseWindow>,
    /// The dumps after the first, in time order (follow-ups of monitor
    /// triggers, further `--dump-at` times, a `--dump-every` series).
    #[serde(default)]
    pub more_dumps: Vec<TimedDump>,
    /// Dumps taken but not kept: past the byte budget.
    #[serde(default)]
    pub dumps_over_budget: u32,
    /// Where the run's wall time went.
    #[serde(default)]
    pub phases: Phases,
}

impl RunReport {
    /// Every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The human summary.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "scenario {} on {}, kernel {}, scheduler {}\n",
            self.scenario,
            self.topology,
            self.kernel_release,
            self.scheduler.as_deref().unwrap_or("(kernel default)")
        );
        self.write_dumps(&mut out);
        self.write_workers(&mut out);
        out.push_str("checks:\n");
        for c in &self.checks {
            out.push_str(&format!(
                "  {} {}: {}\n",
                if c.passed { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            ));
        }
        out.push_str(&format!("phases: {}\n", self.phases.to_text()));
        out.push_str(&format!(
            "{} in {:.1} s (guest frozen {:.2}% of the workload)\n",
            if self.passed() { "PASSED" } else { "FAILED" },
            self.wall_ms as f64 / 1000.0,
            self.frozen_ratio * 100.0
        ));
        out
    }

    /// The dumps, each later one with what changed since the one before.
    fn write_dumps(&self, out: &mut String) {
        if let Some(d) = &self.dump {
            out.push_str(&format!(
                "\n--- dump ({}) ---\n",
                self.dump_reason.as_deref().unwrap_or("")
            ));
            out.push_str(&d.to_text());
            out.push_str("--- end of dump ---\n\n");
        }
        let mut prev = self.dump.as_ref();
        for d in &self.more_dumps {
            out.push_str(&format!("--- dump at {} ms ({}) ---\n", d.at_ms, d.reason));
            if let Some(p) = prev {
                let changes = d.report.changes_since(p);
                out.push_str("changed since the previous dump:\n");
                if changes.is_empty() {
                    out.push_str("  nothing\n");
                }
                for c in &changes {
                    out.push_str(&format!("  {c}\n"));
                }
                out.push('\n');
            }
            out.push_str(&d.report.to_text());
            out.push_str("--- end of dump ---\n\n");
            prev = Some(&d.report);
        }
        if self.dumps_over_budget > 0 {
            out.push_str(&format!(
                "{} more dumps were taken but not kept: the byte budget was spent\n\n",
                self.dumps_over_budget
            ));
        }
    }

    /// Each cgroup's workers and what they measured.
    fn write_workers(&self, out: &mut String) {
        let mut cgroup = None;
        for w in &self.workers {
            if cgroup != Some(&w.cgroup) {
                out.push_str(&format!("cgroup {}\n", w.cgroup));
                cgroup = Some(&w.cgroup);
            }
            let mut wake = match (w.wake_avg_us, w.wake_max_us) {
                (Some(a), Some(m)) => format!(", wakeup avg {a} us max {m} us"),
                _ => String::new(),
            };
            if let Some(p) = w.wake_pct_us {
                wake += &format!(" (p50 {} p99 {} p99.9 {} us)", p.p50, p.p99, p.p999);
            }
            if let Some(r) = w.remote_permille {
                wake += &format!(", {:.1}% of its pages remote", f64::from(r) / 10.0);
            }
            out.push_str(&format!(
                "  {}[{}]: {} iterations, {} ms CPU of {} ms, longest wait {:.1} ms{wake}, {} migrations, CPUs {:?}{}\n",
                w.name,
                w.pid,
                w.iterations,
                w.cpu_ms,
                w.wall_ms,
                w.max_gap_us as f64 / 1000.0,
                w.migrations,
                w.cpus,
                w.error
                    .as_ref()
                    .map(|e| format!(", FAILED: {e}"))
                    .unwrap_or_default()
            ));
        }
    }
}

/// Run `scenario` as `cfg` says (topology, duration, scheduler); with
/// `dump_at`, freeze and dump that long after the workers started.
pub fn run(
    cfg: &SessionConfig,
    scenario: &Scenario,
    thresholds: &Thresholds,
    dump_at: Option<Duration>,
) -> Result<RunReport, RunError> {
    run_with(cfg, scenario, thresholds, dump_at, &|_| {})
}

/// [`run`], telling `phase` what it is doing (for progress displays).
pub fn run_with(
    cfg: &SessionConfig,
    scenario: &Scenario,
    thresholds: &Thresholds,
    dump_at: Option<Duration>,
    phase: &dyn Fn(&str),
) -> Result<RunReport, RunError> {
    run_planned(cfg, scenario, thresholds, &DumpPlan::at(dump_at), phase)
}

/// [`run_with`], dumping as `plan` says.
pub fn run_planned(
    cfg: &SessionConfig,
    scenario: &Scenario,
    thresholds: &Thresholds,
    plan: &DumpPlan,
    phase: &dyn Fn(&str),
) -> Result<RunReport, RunError> {
    let mut cfg = cfg.clone();
    let resolved = cfg.scenario(scenario)?;
    plan.check(cfg.duration)?;
    let start = Instant::now();
    let mut session = Session::start_with(&cfg, phase)?;
    tracing::info!(
        workers = session.workers.len(),
        scheduler = session.attached.as_ref().map(|a| a.ops.as_str()),
        "workload running"
    );
    let running = Instant::now();
    let mut watch = Watch {
        monitor: Monitor::new(MonitorConfig {
            interval: Duration::from_millis(100),
            stall: thresholds.max_gap,
            scheduler: cfg.scheduler.is_some(),
        }),
        series: Series::new(plan.clone()),
        last_sample: None,
        caught: None,
    };
    // The agent ends the workload itself after the duration; past this the
    // guest has stopped talking.
    let deadline = running + cfg.duration + finish_grace();
    // Sample until the guest reports the end; dump when the plan says and
    // on each new problem the monitor sees.
    while !session.poll_finished()? {
        if Instant::now() >= deadline {
            return Err(RunError::Hung {
                waited_s: running.elapsed().as_secs(),
                duration_s: cfg.duration.as_secs(),
                console: crate::vm::backend::last_lines(&session.console()),
            });
        }
        phase(&format!(
            "running {} ({}/{} s)",
            scenario.name,
            running.elapsed().as_secs().min(cfg.duration.as_secs()),
            cfg.duration.as_secs()
        ));
        watch.step(&mut session, running.elapsed(), phase)?;
        std::thread::sleep(watch.monitor.interval());
    }
    watch.conclude(
        session,
        &Run {
            cfg: &cfg,
            scenario,
            resolved: &resolved,
            thresholds,
            start,
            running,
        },
        phase,
    )
}

/// What a run was asked to do and when it started, for its report.
struct Run<'a> {
    cfg: &'a SessionConfig,
    scenario: &'a Scenario,
    resolved: &'a crate::scenario::Resolved,
    thresholds: &'a Thresholds,
    start: Instant,
    running: Instant,
}

/// What the run loop keeps between samples.
struct Watch {
    monitor: Monitor,
    series: Series,
    /// The newest live sample, and when.
    last_sample: Option<(Report, Instant)>,
    /// The first problem the monitor saw.
    caught: Option<Trigger>,
}

impl Watch {
    /// One turn of the loop `elapsed` into the workload: a planned dump,
    /// or a live sample and, on a new problem, a dump for it.
    fn step(
        &mut self,
        session: &mut Session,
        elapsed: Duration,
        phase: &dyn Fn(&str),
    ) -> Result<(), RunError> {
        let mut reason = self.series.due(elapsed).map(|d| d.to_string());
        let mut trigger = None;
        if reason.is_none() {
            match session.sample() {
                Ok(r) => {
                    trigger = self.monitor.observe(&r, Instant::now());
                    self.last_sample = Some((r, Instant::now()));
                }
                Err(e) => tracing::debug!("monitor sample failed: {e:#}"),
            }
            if let Some(t) = &trigger {
                tracing::warn!(%t, "monitor: freezing for a dump");
                reason = Some(format!("monitor: {t}"));
            }
        }
        match reason {
            Some(reason) if !self.series.spent() => {
                phase("freezing for a dump");
                let (report, window) = session.capture(None)?;
                let reason = match trigger {
                    Some(t) => {
                        let t = t.restated(&report);
                        self.series.triggered(elapsed, &t.to_string());
                        self.caught.get_or_insert(t.clone());
                        format!("monitor: {t}")
                    }
                    None => reason,
                };
                if report.scheduler.exit_dump_unfinished {
                    self.series.unfinished(elapsed);
                }
                self.series.record(elapsed, reason, report, Some(window));
            }
            _ => {
                if let Some(t) = trigger {
                    self.caught.get_or_insert(t);
                }
            }
        }
        Ok(())
    }

    /// The guest reported the end: collect its results, judge them, and
    /// make the report.
    fn conclude(
        self,
        session: Session,
        run: &Run<'_>,
        phase: &dyn Fn(&str),
    ) -> Result<RunReport, RunError> {
        let Watch {
            monitor,
            series,
            last_sample,
            caught,
        } = self;
        let Run {
            cfg,
            scenario,
            resolved,
            thresholds,
            start,
            running,
        } = *run;
        let frozen_ns = series.frozen_ns();
        let dumps_over_budget = series.over_budget;
        let mut taken = series.taken.into_iter();
        let first = taken.next();
        let more_dumps: Vec<TimedDump> = taken.collect();
        let pause = first.as_ref().and_then(|d| d.pause);
        let (mut dump, mut dump_reason) = match first {
            Some(d) => (Some(d.report), Some(d.reason)),
            None => (None, None),
        };
        let release = session.release.clone();
        let nr_cpus = session.nr_cpus;
        let scheduler = session.attached.as_ref().map(|a| a.ops.clone());
        let backend = session.backend();
        let start_phases = session.phases;
        phase("collecting results");
        let finished_at = Instant::now();
        let mut done = session.finish()?;
        let phases = Phases {
            start: start_phases,
            workload_ms: finished_at.duration_since(running).as_millis() as u64,
            teardown_ms: finished_at.elapsed().as_millis() as u64,
        };
        done.workers
            .sort_by(|a, b| (&a.cgroup, &a.name, a.pid).cmp(&(&b.cgroup, &b.name, b.pid)));
        let workload_ns = running.elapsed().as_nanos().max(1) as f64;
        let survived = done.sched_ext.state == ScxState::Enabled && done.scheduler_exit.is_none();
        let outcome = Outcome {
            scheduler: scheduler.is_some(),
            survived,
            scheduler_end: scheduler_end(&done),
            workers: &done.workers,
            resolved,
            nr_cpus,
            monitor: caught.map(|t| t.to_string()),
            cpu_busy: &done.cpu_busy,
            topology: Some(&cfg.topology),
        };
        let checks = evaluate(&outcome, thresholds);
        if dump.is_none()
            && let Some((sample, reason)) = last_look(&checks, last_sample, finished_at)
        {
            (dump, dump_reason) = (Some(sample), Some(reason));
        }
        Ok(RunReport {
            schema_version: RUN_SCHEMA_VERSION,
            test_name: None,
            kernel_release: release,
            topology: cfg.topology.to_string(),
            scenario: scenario.name.clone(),
            scheduler_survived: survived,
            checks,
            scheduler,
            scheduler_exit: done.scheduler_exit,
            sched_ext: done.sched_ext,
            workers: done.workers,
            dump,
            dump_reason,
            monitor_samples: monitor.samples,
            wall_ms: start.elapsed().as_millis() as u64,
            frozen_ratio: frozen_ns as f64 / workload_ns,
            backend: backend.to_string(),
            pause,
            more_dumps,
            dumps_over_budget,
            phases,
        })
    }
}

/// How the scheduler ended, for a failed survival check: sched_ext's state,
/// the exit the scheduler reported, and the end of its output.
fn scheduler_end(done: &crate::session::Finished) -> String {
    format!(
        "sched_ext is {} (scheduler exit: {}); its output ends:\n{}",
        done.sched_ext.state,
        done.scheduler_exit.as_deref().unwrap_or("still running"),
        done.scheduler_output
    )
}

/// A check failed with no dump taken: the monitor's last look at the
/// guest is the closest to a dump there is (the guest is gone by now).
fn last_look(
    checks: &[Check],
    last_sample: Option<(Report, Instant)>,
    finished_at: Instant,
) -> Option<(Report, String)> {
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect();
    let (sample, at) = last_sample.filter(|_| !failed.is_empty())?;
    let reason = format!(
        "checks failed ({}): the monitor's last live sample, {} ms before the end, not frozen",
        failed.join(", "),
        finished_at.duration_since(at).as_millis()
    );
    Some((sample, reason))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A report written by hand: one worker, one failing check.
    pub(crate) fn report() -> RunReport {
        RunReport {
            schema_version: RUN_SCHEMA_VERSION,
            test_name: None,
            kernel_release: "7.3.4".into(),
            topology: "1n1l2c1t".into(),
            scenario: "steady".into(),
            scheduler: Some("bpfland".into()),
            scheduler_survived: false,
            scheduler_exit: Some("exit status: 1".into()),
            sched_ext: SchedExtState {
                state: ScxState::Disabled,
                ops: None,
            },
            workers: vec![WorkerResult {
                name: "ktstr-duty".into(),
                cgroup: "duty".into(),
                pid: 42,
                iterations: 7,
                cpu_ms: 30,
                wall_ms: 3000,
                max_gap_us: 1500,
                wake_max_us: Some(900),
                wake_avg_us: Some(100),
                wake_pct_us: Some(crate::agent::proto::Percentiles {
                    p50: 80,
                    p99: 700,
                    p999: 880,
                    samples: 1000,
                }),
                remote_permille: None,
                migrations: 2,
                cpus: vec![1],
                error: None,
            }],
            checks: vec![
                Check {
                    kind: CheckKind::SchedulerSurvived,
                    name: "scheduler attached to the end".into(),
                    passed: false,
                    detail: "sched_ext is disabled".into(),
                },
                Check {
                    kind: CheckKind::EveryWorkerRan,
                    name: "every worker ran".into(),
                    passed: true,
                    detail: "1 workers".into(),
                },
            ],
            dump: None,
            dump_reason: None,
            monitor_samples: 5,
            wall_ms: 12_345,
            frozen_ratio: 0.0,
            backend: "qemu".into(),
            pause: None,
            more_dumps: Vec::new(),
            dumps_over_budget: 0,
            phases: Phases {
                start: StartPhases {
                    prepare_ms: 410,
                    boot_ms: 3200,
                    attach_ms: 750,
                    start_workers_ms: 90,
                    restored: false,
                },
                workload_ms: 3010,
                teardown_ms: 800,
            },
        }
    }

    #[test]
    fn the_summary_reads_top_down_and_says_what_failed() {
        let r = report();
        assert!(!r.passed());
        let text = r.to_text();
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"))
        };
        assert!(at("scenario steady on 1n1l2c1t") < at("cgroup duty"));
        assert!(at("ktstr-duty[42]: 7 iterations, 30 ms CPU of 3000 ms") > at("cgroup duty"));
        assert!(
            text.contains("wakeup avg 100 us max 900 us (p50 80 p99 700 p99.9 880 us)"),
            "{text}"
        );
        assert!(text.contains("FAIL scheduler attached to the end: sched_ext is disabled"));
        assert!(text.contains("ok   every worker ran"));
        assert!(
            text.contains("phases: prepare 0.41 s, boot 3.20 s, attach 0.75 s, start workers 0.09 s, workload 3.01 s, teardown 0.80 s"),
            "{text}"
        );
        assert!(
            text.trim_end()
                .ends_with("FAILED in 12.3 s (guest frozen 0.00% of the workload)")
        );
        let json = serde_json::to_string(&r).unwrap();
        let back: RunReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_text(), text, "JSON round trip");
    }
}

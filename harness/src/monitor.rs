//! The host-side monitor: while the guest runs, read every CPU's runqueue
//! and the scheduler's state from guest memory without freezing (a read
//! may catch a half-written update; the walker is bounded and a stall must
//! persist across samples), and say when something is wrong enough to
//! freeze and dump: a scheduler that is exiting or went away, a task left
//! runnable past the threshold, or a busy CPU whose clock stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ktstr_walker::render::{Placement, Report, SchedClass};

/// What the monitor watches for.
#[derive(Debug, Clone, Copy)]
pub struct MonitorConfig {
    /// How often to sample.
    pub interval: Duration,
    /// A runnable task waiting longer than this is stalled.
    pub stall: Duration,
    /// Whether a BPF scheduler is expected to be attached.
    pub scheduler: bool,
}

/// Why the monitor wants a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// `scx_root` went from set to NULL.
    SchedulerDetached,
    /// The scheduler's exit kind is set.
    SchedulerExiting {
        /// Exit kind name.
        kind: String,
        /// Its reason and message.
        reason: String,
    },
    /// A task waited too long.
    Stall {
        /// pid.
        pid: i32,
        /// comm.
        comm: String,
        /// How long.
        waited_ms: u64,
        /// Where it waited.
        placement: String,
    },
    /// A CPU with runnable tasks did not advance its rq clock.
    ClockStopped {
        /// Which CPU.
        cpu: u32,
        /// For how long.
        for_ms: u64,
    },
}

impl Trigger {
    /// The trigger as the frozen dump `frozen` shows it. A live sample can
    /// catch an exit between the kernel setting its kind and writing its
    /// reason and message (`scx_claim_exit` comes first); the dump taken
    /// at once afterwards has them, so an exit is restated from it.
    pub fn restated(&self, frozen: &Report) -> Trigger {
        let s = &frozen.scheduler;
        match self {
            Trigger::SchedulerExiting { .. } if s.exit_kind != 0 => Trigger::SchedulerExiting {
                kind: s.exit_kind_name.clone(),
                reason: format!("{} {}", s.exit_reason, s.exit_msg)
                    .trim()
                    .to_string(),
            },
            other => other.clone(),
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::SchedulerDetached => write!(f, "the scheduler detached"),
            Trigger::SchedulerExiting { kind, reason } => {
                write!(f, "the scheduler is exiting: {kind} {reason}")
            }
            Trigger::Stall {
                pid,
                comm,
                waited_ms,
                placement,
            } => write!(
                f,
                "stall: {comm}[{pid}] runnable for {waited_ms} ms ({placement})"
            ),
            Trigger::ClockStopped { cpu, for_ms } => {
                write!(
                    f,
                    "cpu {cpu} has runnable tasks but its clock stopped for {for_ms} ms"
                )
            }
        }
    }
}

/// What a trigger is about: the monitor keeps sampling after a dump and
/// says each once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Subject {
    Detached,
    Exiting,
    Task(i32),
    Clock(u32),
}

impl Trigger {
    fn subject(&self) -> Subject {
        match self {
            Trigger::SchedulerDetached => Subject::Detached,
            Trigger::SchedulerExiting { .. } => Subject::Exiting,
            Trigger::Stall { pid, .. } => Subject::Task(*pid),
            Trigger::ClockStopped { cpu, .. } => Subject::Clock(*cpu),
        }
    }
}

/// State kept across samples.
pub struct Monitor {
    cfg: MonitorConfig,
    seen_attached: bool,
    /// What was already said.
    said: BTreeSet<Subject>,
    /// Per CPU: the clock, and since when it has not moved while busy.
    clocks: BTreeMap<u32, (u64, Instant)>,
    /// Samples taken.
    pub samples: u64,
}

impl Monitor {
    /// A monitor with `cfg`. A run confirms its scheduler attached before
    /// the workload starts, so one gone by the first sample detached in
    /// between (while the workers started) and is said.
    pub fn new(cfg: MonitorConfig) -> Monitor {
        Monitor {
            cfg,
            seen_attached: cfg.scheduler,
            said: BTreeSet::new(),
            clocks: BTreeMap::new(),
            samples: 0,
        }
    }

    /// How often to sample.
    pub fn interval(&self) -> Duration {
        self.cfg.interval
    }

    /// Look at one sample taken at `now`: the first problem not said
    /// before (a stall of the same task, the same CPU's clock, the exit
    /// or the detach are said once).
    pub fn observe(&mut self, r: &Report, now: Instant) -> Option<Trigger> {
        self.samples += 1;
        let t = self.problem(r, now)?;
        self.said.insert(t.subject());
        Some(t)
    }

    fn unsaid(&self, s: Subject) -> bool {
        !self.said.contains(&s)
    }

    fn problem(&mut self, r: &Report, now: Instant) -> Option<Trigger> {
        let s = &r.scheduler;
        if self.cfg.scheduler {
            if s.attached {
                self.seen_attached = true;
                if s.exit_kind != 0 && self.unsaid(Subject::Exiting) {
                    return Some(Trigger::SchedulerExiting {
                        kind: s.exit_kind_name.clone(),
                        reason: format!("{} {}", s.exit_reason, s.exit_msg)
                            .trim()
                            .to_string(),
                    });
                }
            } else if self.seen_attached && self.unsaid(Subject::Detached) {
                return Some(Trigger::SchedulerDetached);
            }
        }
        let stall_ms = self.cfg.stall.as_millis() as u64;
        if let Some(t) = r
            .tasks
            .iter()
            // runnable_at is kept by sched_ext only: other classes' (and
            // the idle tasks') ages mean nothing.
            .filter(|t| t.class == SchedClass::Ext && t.pid > 0)
            .filter(|t| self.unsaid(Subject::Task(t.pid)))
            .filter(|t| {
                matches!(
                    t.placement,
                    Placement::Queued { .. } | Placement::HeldByBpf | Placement::Runnable
                )
            })
            .filter(|t| t.runnable_for_ms.is_some_and(|w| w > stall_ms))
            .max_by_key(|t| t.runnable_for_ms)
        {
            return Some(Trigger::Stall {
                pid: t.pid,
                comm: t.comm.clone(),
                waited_ms: t.runnable_for_ms.unwrap_or(0),
                placement: t.placement.to_string(),
            });
        }
        for c in &r.cpus {
            if c.fault.is_some() || !self.unsaid(Subject::Clock(c.cpu)) {
                continue;
            }
            let busy = c.nr_running > 0 && !c.curr_is_idle;
            let entry = self.clocks.entry(c.cpu).or_insert((c.clock_ns, now));
            if c.clock_ns != entry.0 || !busy {
                *entry = (c.clock_ns, now);
            } else if now.duration_since(entry.1) > self.cfg.stall {
                return Some(Trigger::ClockStopped {
                    cpu: c.cpu,
                    for_ms: now.duration_since(entry.1).as_millis() as u64,
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktstr_walker::render::SCHEMA_VERSION;

    /// A report as the walker would render it, built by hand: two CPUs and
    /// one task whose placement and wait the tests set.
    fn report(attached: bool, exit_kind: u32, wait_ms: Option<u64>, clock: u64) -> Report {
        let json = serde_json::json!({
            "schema_version": SCHEMA_VERSION,
            "scheduler": {
                "attached": attached, "root": 1, "ops_name": "x", "exit_kind": exit_kind,
                "exit_kind_name": if exit_kind == 0 { "SCX_EXIT_NONE" } else { "SCX_EXIT_ERROR" },
                "exit_code": null, "exit_reason": "", "exit_msg": "boom",
                "bypass_depth": 0, "aborting": false, "watchdog_timeout_ms": 5000
            },
            "cpus": [{
                "cpu": 0, "rq": 1, "nr_running": 2, "scx_nr_running": 2, "clock_ns": clock,
                "curr": {"addr": 2, "pid": 10, "comm": "spin"}, "curr_is_idle": false,
                "scx_flags": [], "cpu_released": null, "local_dsq": [], "runnable": [],
                "fault": null
            }],
            "dsqs": [],
            "tasks": [{
                "addr": 3, "pid": 11, "tgid": 11, "comm": "starved", "class": "ext",
                "state": 0, "on_rq": 1, "on_cpu": 0, "cpu": 0, "scx_flags": [],
                "ops_state": "", "dsq": "user 0x1", "weight": 100, "slice_ns": 0,
                "dsq_vtime": 0, "sticky_cpu": null, "holding_cpu": null,
                "runnable_for_ms": wait_ms,
                "placement": {"kind": "queued", "dsq": "user 0x1"}
            }],
            "health": {
                "reads": 1, "bytes": 1, "pause_ns": null, "missing_groups": [],
                "faults": [], "truncated": [], "dropped": [], "inconsistencies": []
            }
        });
        serde_json::from_value(json).expect("report fixture matches the schema")
    }

    fn monitor() -> Monitor {
        Monitor::new(MonitorConfig {
            interval: Duration::from_millis(100),
            stall: Duration::from_secs(2),
            scheduler: true,
        })
    }

    #[test]
    fn a_task_waiting_past_the_threshold_is_a_stall() {
        let mut m = monitor();
        let t0 = Instant::now();
        assert_eq!(m.observe(&report(true, 0, Some(1500), 1), t0), None);
        let trig = m
            .observe(
                &report(true, 0, Some(2500), 2),
                t0 + Duration::from_millis(100),
            )
            .unwrap();
        assert_eq!(
            trig.to_string(),
            "stall: starved[11] runnable for 2500 ms (queued on user 0x1)"
        );
    }

    #[test]
    fn sampling_goes_on_after_a_trigger_and_says_each_problem_once() {
        let mut m = monitor();
        let t0 = Instant::now();
        assert!(matches!(
            m.observe(&report(true, 0, Some(2500), 1), t0),
            Some(Trigger::Stall { pid: 11, .. })
        ));
        // The same task still waiting: said already.
        assert_eq!(m.observe(&report(true, 0, Some(3500), 2), t0), None);
        // Then the scheduler exits: a new problem.
        assert!(matches!(
            m.observe(&report(true, 1024, Some(4500), 3), t0),
            Some(Trigger::SchedulerExiting { .. })
        ));
        assert_eq!(m.observe(&report(true, 1024, Some(5500), 4), t0), None);
        assert_eq!(m.samples, 4);
    }

    #[test]
    fn ages_of_tasks_outside_sched_ext_are_ignored() {
        let mut m = monitor();
        let mut r = report(true, 0, Some(9000), 1);
        r.tasks[0].class = SchedClass::Fair;
        assert_eq!(m.observe(&r, Instant::now()), None);
    }

    #[test]
    fn exiting_and_detached_schedulers_trigger() {
        let t0 = Instant::now();
        let mut m = monitor();
        let trig = m.observe(&report(true, 1024, None, 1), t0).unwrap();
        assert!(trig.to_string().contains("SCX_EXIT_ERROR") && trig.to_string().contains("boom"));
        // Caught before the kernel wrote the message: the frozen dump,
        // which has it, restates the exit.
        let early = Trigger::SchedulerExiting {
            kind: "SCX_EXIT_ERROR".into(),
            reason: String::new(),
        };
        assert_eq!(early.restated(&report(true, 1024, None, 1)), trig);
        let stall = Trigger::SchedulerDetached;
        assert_eq!(stall.restated(&report(true, 1024, None, 1)), stall);
        let mut m = monitor();
        assert_eq!(m.observe(&report(true, 0, None, 2), t0), None);
        assert_eq!(
            m.observe(&report(false, 0, None, 3), t0),
            Some(Trigger::SchedulerDetached)
        );
        assert_eq!(m.observe(&report(false, 0, None, 4), t0), None, "said once");
        // Attached before the workload (the run confirmed it), gone by
        // the first sample: it detached while the workers started.
        let mut m = monitor();
        assert_eq!(
            m.observe(&report(false, 0, None, 1), t0),
            Some(Trigger::SchedulerDetached)
        );
    }

    #[test]
    fn a_busy_cpu_whose_clock_stops_triggers_after_the_threshold() {
        let t0 = Instant::now();
        let mut m = monitor();
        assert_eq!(m.observe(&report(true, 0, None, 7), t0), None);
        assert_eq!(
            m.observe(&report(true, 0, None, 7), t0 + Duration::from_secs(1)),
            None
        );
        let trig = m.observe(&report(true, 0, None, 7), t0 + Duration::from_secs(3));
        assert!(
            matches!(trig, Some(Trigger::ClockStopped { cpu: 0, .. })),
            "{trig:?}"
        );
        // A moving clock resets it.
        let mut m = monitor();
        for i in 0..50u64 {
            assert_eq!(
                m.observe(&report(true, 0, None, i), t0 + Duration::from_secs(i)),
                None
            );
        }
    }
}

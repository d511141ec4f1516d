//! Dumps over a run: when to freeze and dump (`--dump-at` times, a
//! `--dump-every` series, a follow-up an interval after each monitor
//! trigger, so a stall or an exit comes as a pair that shows what moved),
//! within a byte budget, and the record of what was taken.

use std::time::Duration;

use ktstr_walker::render::Report;
use serde::{Deserialize, Serialize};

use crate::vm::PauseWindow;

/// Default follow-up after a monitor trigger.
pub const FOLLOW_UP: Duration = Duration::from_secs(1);
/// How soon a dump whose kernel exit dump was unfinished is taken again
/// (the kernel writes it in an irq_work, well within this).
pub const UNFINISHED_AGAIN: Duration = Duration::from_millis(100);
/// Default byte budget of a run's dumps (their JSON).
pub const BUDGET_BYTES: u64 = 16 << 20;

/// When a run dumps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpPlan {
    /// Times after the workers start (`--dump-at`, any number).
    pub at: Vec<Duration>,
    /// A dump every this long (`--dump-every`).
    pub every: Option<Duration>,
    /// A second dump this long after each monitor trigger (`None`: none).
    pub follow_up: Option<Duration>,
    /// JSON bytes all dumps of the run may take; a dump past it is not
    /// kept (and counted).
    pub budget_bytes: u64,
}

impl Default for DumpPlan {
    fn default() -> Self {
        Self {
            at: Vec::new(),
            every: None,
            follow_up: Some(FOLLOW_UP),
            budget_bytes: BUDGET_BYTES,
        }
    }
}

impl DumpPlan {
    /// The plan of the older `dump_at` argument: at most one timed dump,
    /// monitor pairs as by default.
    pub fn at(dump_at: Option<Duration>) -> Self {
        Self {
            at: dump_at.into_iter().collect(),
            ..Self::default()
        }
    }

    /// Refuse times past the run's `duration`, naming the flag.
    pub fn check(&self, duration: Duration) -> Result<(), PlanError> {
        if let Some(at) = self.at.iter().find(|at| **at >= duration) {
            return Err(PlanError::PastTheEnd { at: *at, duration });
        }
        if self.every.is_some_and(|e| e.is_zero()) {
            return Err(PlanError::ZeroInterval);
        }
        Ok(())
    }
}

/// A dump plan that cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A `--dump-at` time at or past the end of the run.
    #[error("--dump-at {at:?} is not within the run's {duration:?} duration")]
    PastTheEnd {
        /// The time asked for.
        at: Duration,
        /// The run's duration.
        duration: Duration,
    },
    /// `--dump-every 0`.
    #[error("--dump-every must be longer than 0")]
    ZeroInterval,
}

/// One dump of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimedDump {
    /// When, in ms after the workers started.
    pub at_ms: u64,
    /// Why it was taken.
    pub reason: String,
    /// The dump.
    pub report: Report,
    /// Where its pause went (none for a live sample).
    pub pause: Option<PauseWindow>,
    /// Its JSON size, counted against the budget.
    pub bytes: u64,
}

/// Why a dump is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// A `--dump-at` time.
    At(Duration),
    /// The `--dump-every` series.
    Every(Duration),
    /// The follow-up of a monitor trigger.
    FollowUp {
        /// The trigger, as the first dump's reason said it.
        of: String,
        /// The interval.
        after: Duration,
    },
    /// Again, soon: the kernel was still writing its exit dump.
    Unfinished,
}

impl std::fmt::Display for Due {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Due::At(at) => write!(f, "--dump-at {at:?}"),
            Due::Every(e) => write!(f, "--dump-every {e:?}"),
            Due::FollowUp { of, after } => write!(f, "{after:?} after {of}"),
            Due::Unfinished => write!(
                f,
                "again: the kernel was still writing its exit dump at the one before"
            ),
        }
    }
}

/// The run's dumps: what is due, what was taken, the budget.
#[derive(Debug)]
pub struct Series {
    plan: DumpPlan,
    /// Due times (after the workers started), with why.
    pending: Vec<(Duration, Due)>,
    next_every: Option<Duration>,
    /// Taken and kept, in time order.
    pub taken: Vec<TimedDump>,
    /// Dumps taken but not kept: over the budget.
    pub over_budget: u32,
    bytes: u64,
    /// Whether an unfinished exit dump was already asked for again.
    asked_again: bool,
}

impl Series {
    /// A series following `plan`.
    pub fn new(plan: DumpPlan) -> Self {
        let pending = plan.at.iter().map(|&at| (at, Due::At(at))).collect();
        Self {
            next_every: plan.every,
            plan,
            pending,
            taken: Vec::new(),
            over_budget: 0,
            bytes: 0,
            asked_again: false,
        }
    }

    /// Whether the budget is spent (no more dumps are worth taking).
    pub fn spent(&self) -> bool {
        self.bytes >= self.plan.budget_bytes
    }

    /// The first dump due at `elapsed` (after the workers started), if any.
    pub fn due(&mut self, elapsed: Duration) -> Option<Due> {
        if let Some(i) = self.pending.iter().position(|(at, _)| *at <= elapsed) {
            return Some(self.pending.remove(i).1);
        }
        let every = self.plan.every?;
        let next = self.next_every.filter(|n| *n <= elapsed)?;
        self.next_every = Some(next + every);
        Some(Due::Every(every))
    }

    /// A monitor trigger at `elapsed`, described as `what`: schedules its
    /// follow-up.
    pub fn triggered(&mut self, elapsed: Duration, what: &str) {
        if let Some(after) = self.plan.follow_up {
            let due = Due::FollowUp {
                of: what.to_string(),
                after,
            };
            self.pending.push((elapsed + after, due));
        }
    }

    /// A dump just taken at `elapsed` caught the kernel writing its exit
    /// dump: take one more soon, once a run.
    pub fn unfinished(&mut self, elapsed: Duration) {
        if !self.asked_again {
            self.asked_again = true;
            self.pending
                .push((elapsed + UNFINISHED_AGAIN, Due::Unfinished));
        }
    }

    /// Keep `report` taken at `elapsed` for `reason`, unless it would pass
    /// the budget (the first dump is always kept).
    pub fn record(
        &mut self,
        elapsed: Duration,
        reason: String,
        report: Report,
        pause: Option<PauseWindow>,
    ) {
        let bytes = serde_json::to_vec(&report).map_or(0, |v| v.len() as u64);
        if !self.taken.is_empty() && self.bytes.saturating_add(bytes) > self.plan.budget_bytes {
            self.over_budget += 1;
            return;
        }
        self.bytes = self.bytes.saturating_add(bytes);
        self.taken.push(TimedDump {
            at_ms: elapsed.as_millis() as u64,
            reason,
            report,
            pause,
            bytes,
        });
    }

    /// Guest time frozen for the kept dumps (ns).
    pub fn frozen_ns(&self) -> u64 {
        self.taken
            .iter()
            .filter_map(|d| d.report.health.pause_ns)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn times_series_and_follow_ups_come_due_in_order() {
        let mut series = Series::new(DumpPlan {
            at: vec![s(500), s(1500)],
            every: Some(s(1000)),
            follow_up: Some(s(300)),
            budget_bytes: BUDGET_BYTES,
        });
        assert_eq!(series.due(s(100)), None);
        assert_eq!(series.due(s(600)), Some(Due::At(s(500))));
        assert_eq!(series.due(s(600)), None);
        series.triggered(s(700), "stall");
        assert_eq!(series.due(s(900)), None);
        assert_eq!(
            series.due(s(1000)),
            Some(Due::FollowUp {
                of: "stall".into(),
                after: s(300)
            })
        );
        assert_eq!(series.due(s(1000)), Some(Due::Every(s(1000))));
        assert_eq!(series.due(s(1600)), Some(Due::At(s(1500))));
        assert_eq!(series.due(s(1600)), None);
        assert_eq!(series.due(s(2000)), Some(Due::Every(s(1000))));
    }

    #[test]
    fn an_unfinished_exit_dump_is_taken_again_soon_once() {
        let mut series = Series::new(DumpPlan {
            follow_up: None,
            ..DumpPlan::default()
        });
        series.unfinished(s(700));
        series.unfinished(s(750));
        assert_eq!(series.due(s(799)), None);
        assert_eq!(series.due(s(800)), Some(Due::Unfinished));
        assert_eq!(series.due(s(2000)), None, "once a run");
    }

    #[test]
    fn a_plan_past_the_run_or_with_a_zero_interval_is_refused() {
        let past = DumpPlan::at(Some(s(5000)));
        assert_eq!(
            past.check(s(5000)),
            Err(PlanError::PastTheEnd {
                at: s(5000),
                duration: s(5000)
            })
        );
        let zero = DumpPlan {
            every: Some(s(0)),
            ..DumpPlan::default()
        };
        assert_eq!(zero.check(s(5000)), Err(PlanError::ZeroInterval));
        assert_eq!(DumpPlan::at(Some(s(10))).check(s(5000)), Ok(()));
    }
}

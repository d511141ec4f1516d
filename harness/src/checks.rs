//! Checks on a run's outcome. Each failing check says which worker or
//! cgroup, by how much, against what threshold.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::proto::{Work, WorkerResult};
use crate::scenario::Resolved;

/// Limits the checks hold a run to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Longest a worker may be kept from running.
    pub max_gap: Duration,
    /// Largest spread of CPU time among one cgroup's identical spinners,
    /// as a share of the largest: (max - min) / max.
    pub fairness_spread: f64,
    /// Largest spread of CPU time per unit of `cpu.weight` among
    /// competing weighted cgroups.
    #[serde(default = "default_weight_spread")]
    pub weight_spread: f64,
    /// Longest 99th-percentile wakeup latency allowed, when set.
    #[serde(default)]
    pub max_wake_p99: Option<Duration>,
    /// Largest difference in busy share between the busiest and the
    /// idlest CPU over a sustained window, when the workload can keep
    /// every CPU busy.
    #[serde(default = "default_load_imbalance")]
    pub load_imbalance: f64,
    /// Least units of work per second every worker must do, when set
    /// (a unit is the worker's own: a spin loop, a message, a fork).
    #[serde(default)]
    pub min_throughput: Option<f64>,
}

fn default_load_imbalance() -> f64 {
    0.5
}

fn default_weight_spread() -> f64 {
    0.5
}

impl Default for Thresholds {
    /// 2 s starvation, 25% spread: what a sound scheduler meets under TCG
    /// on a busy 2-core host (bare metal would allow tighter values).
    fn default() -> Thresholds {
        Thresholds {
            max_gap: Duration::from_secs(2),
            fairness_spread: 0.25,
            weight_spread: default_weight_spread(),
            max_wake_p99: None,
            load_imbalance: default_load_imbalance(),
            min_throughput: None,
        }
    }
}

/// Which check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// The host-side monitor caught no stall, stopped clock or scheduler
    /// exit while the guest ran.
    MonitorQuiet,
    /// The scheduler was still attached when the workload ended.
    SchedulerSurvived,
    /// Every worker did some work and reported it.
    EveryWorkerRan,
    /// No worker waited longer than the threshold to run.
    NoStarvation,
    /// Identical spinners of a cgroup got CPU time within the spread.
    FairShares,
    /// Every worker ran only on its cgroup's CPUs.
    CpusetIsolation,
    /// Competing weighted cgroups got CPU time in proportion to their
    /// `cpu.weight`.
    WeightedShares,
    /// Wakeup latency percentiles, within `max_wake_p99` when set.
    WakeupLatency,
    /// With enough spinners to keep every CPU busy, no CPU idled while
    /// others worked, over any sustained window.
    LoadBalance,
    /// Work done per second, at least `min_throughput` for every worker
    /// when set.
    Throughput,
}

impl CheckKind {
    /// What it is called in reports.
    pub fn title(self) -> &'static str {
        match self {
            CheckKind::MonitorQuiet => "monitor saw no failure",
            CheckKind::SchedulerSurvived => "scheduler attached to the end",
            CheckKind::EveryWorkerRan => "every worker ran",
            CheckKind::NoStarvation => "no worker starved",
            CheckKind::FairShares => "fair shares within each cgroup",
            CheckKind::CpusetIsolation => "workers stayed in their cpusets",
            CheckKind::WeightedShares => "CPU time follows cpu.weight",
            CheckKind::WakeupLatency => "wakeup latency",
            CheckKind::LoadBalance => "load spread over every CPU",
            CheckKind::Throughput => "throughput",
        }
    }
}

/// One check's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Which check.
    pub kind: CheckKind,
    /// Its title ([`CheckKind::title`]), for readers of the JSON.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// What was measured, and against what.
    pub detail: String,
}

fn check(kind: CheckKind, failures: Vec<String>, ok: String) -> Check {
    Check {
        kind,
        name: kind.title().to_string(),
        passed: failures.is_empty(),
        detail: if failures.is_empty() {
            ok
        } else {
            failures.join("; ")
        },
    }
}

/// What the checks look at.
pub struct Outcome<'a> {
    /// Whether a scheduler was asked for.
    pub scheduler: bool,
    /// Whether it was still attached at the end.
    pub survived: bool,
    /// How it ended, and its output, when it did not survive.
    pub scheduler_end: String,
    /// Per worker.
    pub workers: &'a [WorkerResult],
    /// The scenario as it ran.
    pub resolved: &'a Resolved,
    /// CPUs in the guest.
    pub nr_cpus: u32,
    /// What the host-side monitor caught while the guest ran, if anything.
    pub monitor: Option<String>,
    /// Each CPU's busy share per 500 ms window, in thousandths
    /// (`u16::MAX`: offline).
    pub cpu_busy: &'a [Vec<u16>],
    /// Where each CPU sits (LLC, node), for the load-balance detail.
    pub topology: Option<&'a ktstr_vmm::Topology>,
}

/// Every check, in a fixed order.
pub fn evaluate(o: &Outcome<'_>, t: &Thresholds) -> Vec<Check> {
    let mut out = vec![check(
        CheckKind::MonitorQuiet,
        o.monitor.iter().cloned().collect(),
        "no stall, stopped clock or scheduler exit while running".into(),
    )];
    if o.scheduler {
        out.push(check(
            CheckKind::SchedulerSurvived,
            if o.survived {
                vec![]
            } else {
                vec![o.scheduler_end.clone()]
            },
            "still attached when the workload ended".into(),
        ));
    }
    out.push(every_worker_ran(o));
    out.push(no_starvation(o, t));
    out.push(fair_shares(o, t));
    if let Some(c) = weighted_shares(o, t) {
        out.push(c);
    }
    if let Some(c) = wakeup_latency(o, t) {
        out.push(c);
    }
    out.push(cpuset_isolation(o));
    if let Some(c) = load_balance(o, t) {
        out.push(c);
    }
    if let Some(c) = throughput(o, t) {
        out.push(c);
    }
    out
}

/// Units of work per second of its wall time.
fn rate(w: &WorkerResult) -> f64 {
    w.iterations as f64 * 1000.0 / w.wall_ms.max(1) as f64
}

fn throughput(o: &Outcome<'_>, t: &Thresholds) -> Option<Check> {
    let slowest = o
        .workers
        .iter()
        .min_by(|a, b| rate(a).total_cmp(&rate(b)))?;
    let total: f64 = o.workers.iter().map(rate).sum();
    let failures = match t.min_throughput {
        Some(min) => o
            .workers
            .iter()
            .filter(|w| rate(w) < min)
            .map(|w| {
                format!(
                    "{}: {:.0} units/s ({} in {} ms) under the {min:.0}/s threshold",
                    who(w),
                    rate(w),
                    w.iterations,
                    w.wall_ms
                )
            })
            .collect(),
        None => vec![],
    };
    Some(check(
        CheckKind::Throughput,
        failures,
        format!(
            "{total:.0} units/s in all; slowest {} at {:.0}/s{}",
            who(slowest),
            rate(slowest),
            match t.min_throughput {
                Some(m) => format!(", threshold {m:.0}/s per worker"),
                None => ", no threshold set".into(),
            }
        ),
    ))
}

fn who(w: &WorkerResult) -> String {
    format!("worker {}[{}] in cgroup {}", w.name, w.pid, w.cgroup)
}

fn every_worker_ran(o: &Outcome<'_>) -> Check {
    check(
        CheckKind::EveryWorkerRan,
        o.workers
            .iter()
            .filter(|w| w.error.is_some() || w.iterations == 0)
            .map(|w| {
                format!(
                    "{} did no work: {}",
                    who(w),
                    w.error.as_deref().unwrap_or("0 iterations")
                )
            })
            .collect(),
        format!("{} workers", o.workers.len()),
    )
}

fn no_starvation(o: &Outcome<'_>, t: &Thresholds) -> Check {
    let worst = o.workers.iter().map(|w| w.max_gap_us).max().unwrap_or(0);
    check(
        CheckKind::NoStarvation,
        o.workers
            .iter()
            .filter(|w| Duration::from_micros(w.max_gap_us) > t.max_gap)
            .map(|w| {
                format!(
                    "{} waited {:.3} s to run, over the {:.3} s threshold",
                    who(w),
                    w.max_gap_us as f64 / 1e6,
                    t.max_gap.as_secs_f64()
                )
            })
            .collect(),
        format!(
            "longest wait {:.3} s, threshold {:.3} s",
            worst as f64 / 1e6,
            t.max_gap.as_secs_f64()
        ),
    )
}

/// Whether a step changes cgroup `cg`'s CPUs, members or weight (which
/// makes its shares unequal by design).
fn changed(o: &Outcome<'_>, cg: &str) -> bool {
    use crate::agent::proto::StepAction;
    o.resolved.steps.iter().any(|s| match &s.action {
        StepAction::SetCpus { cgroup, .. }
        | StepAction::SetAffinity { cgroup, .. }
        | StepAction::SetWeight { cgroup, .. } => cgroup == cg,
        StepAction::MoveWorkers { from, to } => from == cg || to == cg,
        StepAction::Hotplug { .. } => true,
        _ => false,
    })
}

/// `(max - min) / max`, 0 for nothing.
fn spread(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = values.clone().fold(0.0, f64::max);
    let min = values.fold(f64::INFINITY, f64::min);
    if max <= 0.0 { 0.0 } else { (max - min) / max }
}

/// Fairness among identical spinners of a cgroup that did not change
/// during the run.
fn fair_shares(o: &Outcome<'_>, t: &Thresholds) -> Check {
    let spinners: Vec<(&str, &str)> = o
        .resolved
        .cgroups
        .iter()
        .filter(|cg| !changed(o, &cg.name))
        .flat_map(|cg| {
            cg.workers
                .iter()
                .filter(|w| w.work == Work::Spin && w.affinity.is_none() && w.count > 1)
                .map(move |w| (cg.name.as_str(), w.name.as_str()))
        })
        .collect();
    let mut groups: BTreeMap<(&str, &str), Vec<&WorkerResult>> = BTreeMap::new();
    for w in o.workers {
        if spinners.contains(&(w.cgroup.as_str(), w.name.as_str())) {
            groups.entry((&w.cgroup, &w.name)).or_default().push(w);
        }
    }
    let mut failures = Vec::new();
    let mut spreads = Vec::new();
    for ((cg, name), ws) in &groups {
        let max = ws.iter().map(|w| w.cpu_ms).max().unwrap_or(0);
        let min = ws.iter().map(|w| w.cpu_ms).min().unwrap_or(0);
        let s = spread(ws.iter().map(|w| w.cpu_ms as f64));
        spreads.push(format!("{cg}/{name} {:.0}%", s * 100.0));
        if s > t.fairness_spread {
            failures.push(format!(
                "cgroup {cg}: {name} workers got {min}..{max} ms of CPU, a {:.0}% spread over the {:.0}% threshold",
                s * 100.0,
                t.fairness_spread * 100.0
            ));
        }
    }
    check(
        CheckKind::FairShares,
        failures,
        if spreads.is_empty() {
            "no group of identical spinners to compare".into()
        } else {
            format!("spread {}", spreads.join(", "))
        },
    )
}

/// Cgroups with a `cpu.weight` whose workers all spin on the same CPUs
/// compete for them: each cgroup's CPU time per unit of weight should be
/// the same. Only when at least two such cgroups ran unchanged.
fn weighted_shares(o: &Outcome<'_>, t: &Thresholds) -> Option<Check> {
    let competing: Vec<(&str, u32, Option<&Vec<u32>>)> = o
        .resolved
        .cgroups
        .iter()
        .filter(|cg| !changed(o, &cg.name))
        .filter(|cg| {
            !cg.workers.is_empty()
                && cg
                    .workers
                    .iter()
                    .all(|w| w.work == Work::Spin && w.affinity.is_none())
        })
        .filter_map(|cg| Some((cg.name.as_str(), cg.weight?, cg.cpus.as_ref())))
        .collect();
    let first_cpus = competing.first()?.2;
    if competing.len() < 2 || competing.iter().any(|c| c.2 != first_cpus) {
        return None;
    }
    let per_weight: Vec<(&str, u32, u64, f64)> = competing
        .iter()
        .map(|&(cg, weight, _)| {
            let ms: u64 = o
                .workers
                .iter()
                .filter(|w| w.cgroup == cg)
                .map(|w| w.cpu_ms)
                .sum();
            (cg, weight, ms, ms as f64 / f64::from(weight))
        })
        .collect();
    let s = spread(per_weight.iter().map(|p| p.3));
    let shares: Vec<String> = per_weight
        .iter()
        .map(|(cg, w, ms, _)| format!("{cg} (weight {w}) {ms} ms"))
        .collect();
    let detail = format!(
        "{}: CPU time per unit of weight spreads {:.0}% (threshold {:.0}%)",
        shares.join(", "),
        s * 100.0,
        t.weight_spread * 100.0
    );
    Some(check(
        CheckKind::WeightedShares,
        if s > t.weight_spread {
            vec![detail.clone()]
        } else {
            vec![]
        },
        detail,
    ))
}

/// Wakeup-latency percentiles of every worker that measured them, against
/// `max_wake_p99` when set (else reported only).
fn wakeup_latency(o: &Outcome<'_>, t: &Thresholds) -> Option<Check> {
    let measured: Vec<(&WorkerResult, crate::agent::proto::Percentiles)> = o
        .workers
        .iter()
        .filter_map(|w| Some((w, w.wake_pct_us?)))
        .collect();
    let (worst_w, worst) = measured.iter().max_by_key(|(_, p)| p.p99)?;
    let failures = match t.max_wake_p99 {
        Some(limit) => measured
            .iter()
            .filter(|(_, p)| Duration::from_micros(p.p99) > limit)
            .map(|(w, p)| {
                format!(
                    "{}: wakeup p99 {} us over the {} us threshold (p50 {} us, p99.9 {} us)",
                    who(w),
                    p.p99,
                    limit.as_micros(),
                    p.p50,
                    p.p999
                )
            })
            .collect(),
        None => vec![],
    };
    Some(check(
        CheckKind::WakeupLatency,
        failures,
        format!(
            "worst p99 {} us ({}; p50 {} us, p99.9 {} us, {} samples){}",
            worst.p99,
            who(worst_w),
            worst.p50,
            worst.p999,
            worst.samples,
            match t.max_wake_p99 {
                Some(l) => format!(", threshold {} us", l.as_micros()),
                None => ", no threshold set".into(),
            }
        ),
    ))
}

/// Samples (500 ms each) in a sustained window.
const LOAD_WINDOW: usize = 4;

/// Spinners free to run anywhere, at least one per CPU, and no step
/// changing anything: then every CPU should stay busy. Judged over
/// windows of [`LOAD_WINDOW`] samples after the first (workers starting).
fn load_balance(o: &Outcome<'_>, t: &Thresholds) -> Option<Check> {
    let free_spinners: u32 = o
        .resolved
        .cgroups
        .iter()
        .filter(|cg| cg.cpus.is_none() && cg.cpu_max.is_none())
        .flat_map(|cg| &cg.workers)
        .filter(|w| w.work == Work::Spin && w.affinity.is_none())
        .map(|w| w.count)
        .sum();
    let samples = o.cpu_busy.get(1..)?;
    if !o.resolved.steps.is_empty() || free_spinners < o.nr_cpus || samples.len() < LOAD_WINDOW {
        return None;
    }
    let mut worst: Option<(u16, usize, usize, usize)> = None;
    for (i, window) in samples.chunks_exact(LOAD_WINDOW).enumerate() {
        let avg = average(window);
        let busy = avg.iter().enumerate().filter_map(|(c, b)| Some((c, (*b)?)));
        let Some((max_cpu, max)) = busy.clone().max_by_key(|(_, b)| *b) else {
            continue;
        };
        let Some((min_cpu, min)) = busy.min_by_key(|(_, b)| *b) else {
            continue;
        };
        if worst.is_none_or(|w| max - min > w.0) {
            worst = Some((max - min, i, min_cpu, max_cpu));
        }
    }
    let (gap, window, idle_cpu, busy_cpu) = worst?;
    let all = average(samples);
    let per_cpu: Vec<String> = all
        .iter()
        .enumerate()
        .filter_map(|(c, b)| Some(format!("{c}: {}%", (*b)? / 10)))
        .collect();
    let detail = format!(
        "worst {:.1} s window from {:.1} s: CPU {idle_cpu} {} points below CPU {busy_cpu} (threshold {:.0}); busy over the run {}{}",
        LOAD_WINDOW as f64 * 0.5,
        0.5 + window as f64 * LOAD_WINDOW as f64 * 0.5,
        gap / 10,
        t.load_imbalance * 100.0,
        per_cpu.join(", "),
        groups_text(o.topology, &all)
    );
    Some(check(
        CheckKind::LoadBalance,
        if f64::from(gap) > t.load_imbalance * 1000.0 {
            vec![detail.clone()]
        } else {
            vec![]
        },
        detail,
    ))
}

/// Each CPU's mean busy share over `samples` (`None`: offline in any).
fn average(samples: &[Vec<u16>]) -> Vec<Option<u16>> {
    let cpus = samples.iter().map(Vec::len).max().unwrap_or(0);
    (0..cpus)
        .map(|c| {
            let v: Option<Vec<u32>> = samples
                .iter()
                .map(|w| w.get(c).copied().filter(|b| *b <= 1000).map(u32::from))
                .collect();
            let v = v?;
            Some((v.iter().sum::<u32>() / v.len().max(1) as u32) as u16)
        })
        .collect()
}

/// `; per LLC 0: 97%, 1: 60%` (and per node) where the topology has more
/// than one.
fn groups_text(topology: Option<&ktstr_vmm::Topology>, busy: &[Option<u16>]) -> String {
    let Some(t) = topology else {
        return String::new();
    };
    let mut out = String::new();
    for (what, count, of) in [
        (
            "LLC",
            t.llcs,
            (|p: ktstr_vmm::CpuPlace| p.llc) as fn(_) -> u32,
        ),
        ("node", t.numa_nodes, |p: ktstr_vmm::CpuPlace| p.node),
    ] {
        if count < 2 {
            continue;
        }
        let mut sums = vec![(0u32, 0u32); count as usize];
        for (c, b) in busy.iter().enumerate() {
            if let (Some(b), Some(p)) = (b, t.place(c as u32))
                && let Some(s) = sums.get_mut(of(p) as usize)
            {
                s.0 += u32::from(*b);
                s.1 += 1;
            }
        }
        let parts: Vec<String> = sums
            .iter()
            .enumerate()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(i, (sum, n))| format!("{i}: {}%", sum / n / 10))
            .collect();
        out += &format!("; per {what} {}", parts.join(", "));
    }
    out
}

fn cpuset_isolation(o: &Outcome<'_>) -> Check {
    check(
        CheckKind::CpusetIsolation,
        o.workers
            .iter()
            .filter_map(|w| {
                let allowed = o.resolved.allowed_cpus(&w.cgroup, o.nr_cpus);
                let outside: Vec<u32> = w
                    .cpus
                    .iter()
                    .copied()
                    .filter(|c| !allowed.contains(c))
                    .collect();
                (!outside.is_empty()).then(|| {
                    format!(
                        "{} ran on CPUs {outside:?}, outside {:?}",
                        who(w),
                        allowed.iter().collect::<Vec<_>>()
                    )
                })
            })
            .collect(),
        "no worker seen outside its cgroup's CPUs".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::catalogue;

    /// Recorded-looking worker stats, written by hand for the checks.
    fn worker(cgroup: &str, name: &str, pid: i32, cpu_ms: u64, cpus: &[u32]) -> WorkerResult {
        WorkerResult {
            name: name.into(),
            cgroup: cgroup.into(),
            pid,
            iterations: 1000,
            cpu_ms,
            wall_ms: 1000,
            max_gap_us: 30_000,
            cpus: cpus.to_vec(),
            ..WorkerResult::default()
        }
    }

    fn outcome<'a>(workers: &'a [WorkerResult], resolved: &'a Resolved) -> Outcome<'a> {
        Outcome {
            scheduler: true,
            survived: true,
            scheduler_end: String::new(),
            workers,
            resolved,
            nr_cpus: 4,
            monitor: None,
            cpu_busy: &[],
            topology: None,
        }
    }

    fn steady() -> Resolved {
        catalogue::find("steady")
            .unwrap()
            .resolve(&"1n1l4c1t".parse().unwrap(), Duration::from_secs(10))
            .unwrap()
    }

    #[test]
    fn a_good_run_passes_every_check() {
        let r = steady();
        let ws = [
            worker("spin", "ktstr-spin", 1, 500, &[0, 1]),
            worker("spin", "ktstr-spin", 2, 450, &[1]),
            worker("duty", "ktstr-duty", 3, 200, &[2, 3]),
        ];
        let checks = evaluate(&outcome(&ws, &r), &Thresholds::default());
        assert_eq!(checks.len(), 7);
        assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
    }

    #[test]
    fn a_worker_below_the_throughput_threshold_fails_with_its_rate() {
        let r = steady();
        let mut slow = worker("spin", "ktstr-spin", 2, 450, &[1]);
        slow.iterations = 40;
        slow.wall_ms = 2000;
        let ws = [worker("spin", "ktstr-spin", 1, 500, &[0]), slow];
        let t = Thresholds {
            min_throughput: Some(100.0),
            ..Thresholds::default()
        };
        let checks = evaluate(&outcome(&ws, &r), &t);
        let c = checks
            .iter()
            .find(|c| c.kind == CheckKind::Throughput)
            .unwrap();
        assert!(!c.passed);
        assert!(
            c.detail.contains("[2] in cgroup spin: 20 units/s") && !c.detail.contains("[1]"),
            "{c:#?}"
        );
        // Without a threshold it is measured, not judged.
        let checks = evaluate(&outcome(&ws, &r), &Thresholds::default());
        let c = checks
            .iter()
            .find(|c| c.kind == CheckKind::Throughput)
            .unwrap();
        assert!(c.passed, "{c:#?}");
        assert!(
            c.detail.contains("1020 units/s in all") && c.detail.contains("no threshold set"),
            "{c:#?}"
        );
    }

    #[test]
    fn failures_name_the_worker_the_amount_and_the_threshold() {
        let r = steady();
        let mut starved = worker("spin", "ktstr-spin", 7, 100, &[0, 3]);
        starved.max_gap_us = 2_500_000;
        let mut broken = worker("duty", "ktstr-duty", 8, 0, &[2]);
        broken.iterations = 0;
        broken.error = Some("sched_setscheduler: EPERM".into());
        let ws = [starved, worker("spin", "ktstr-spin", 9, 400, &[1]), broken];
        let mut o = outcome(&ws, &r);
        o.survived = false;
        o.scheduler_end = "sched_ext is disabled (exit: runnable task stall)".into();
        o.monitor = Some("stall: ktstr-spin[7] runnable for 2500 ms (queued on user 0x1)".into());
        let checks = evaluate(&o, &Thresholds::default());
        let by: BTreeMap<CheckKind, &Check> = checks.iter().map(|c| (c.kind, c)).collect();
        let caught = &by[&CheckKind::MonitorQuiet];
        assert!(
            !caught.passed && caught.detail.starts_with("stall: ktstr-spin[7]"),
            "{caught:?}"
        );
        assert!(!by[&CheckKind::SchedulerSurvived].passed);
        assert!(by[&CheckKind::SchedulerSurvived].detail.contains("stall"));
        let ran = &by[&CheckKind::EveryWorkerRan];
        assert!(
            !ran.passed && ran.detail.contains("ktstr-duty[8] in cgroup duty"),
            "{ran:?}"
        );
        let starve = &by[&CheckKind::NoStarvation];
        assert!(
            starve.detail.contains("ktstr-spin[7]")
                && starve.detail.contains("2.500 s")
                && starve.detail.contains("2.000 s"),
            "{starve:?}"
        );
        let fair = &by[&CheckKind::FairShares];
        assert!(
            !fair.passed && fair.detail.contains("100..400 ms") && fair.detail.contains("75%"),
            "{fair:?}"
        );
        let cpus = &by[&CheckKind::CpusetIsolation];
        assert!(
            !cpus.passed && cpus.detail.contains("ktstr-spin[7]") && cpus.detail.contains("[3]"),
            "{cpus:?}"
        );
    }

    #[test]
    fn changed_cgroups_are_not_held_to_equal_shares() {
        let r = catalogue::find("cpuset-churn")
            .unwrap()
            .resolve(&"1n1l4c1t".parse().unwrap(), Duration::from_secs(10))
            .unwrap();
        let ws = [
            worker("a", "ktstr-a", 1, 100, &[0, 3]),
            worker("a", "ktstr-a", 2, 900, &[1, 2]),
        ];
        let checks = evaluate(&outcome(&ws, &r), &Thresholds::default());
        assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
    }

    #[test]
    fn weighted_cgroups_are_held_to_their_weights_and_latency_to_its_limit() {
        let r = catalogue::find("weights")
            .unwrap()
            .resolve(&"1n1l4c1t".parse().unwrap(), Duration::from_secs(10))
            .unwrap();
        // weights 300 and 100 on the same CPUs: 3:1 is fair.
        let fair = [
            worker("heavy", "ktstr-heavy", 1, 3000, &[0]),
            worker("light", "ktstr-light", 2, 1000, &[1]),
        ];
        let t = Thresholds::default();
        let c = weighted_shares(&outcome(&fair, &r), &t).expect("two weighted cgroups");
        assert!(c.passed, "{c:?}");
        // 1:1 under 3:1 weights is not.
        let even = [
            worker("heavy", "ktstr-heavy", 1, 2000, &[0]),
            worker("light", "ktstr-light", 2, 2000, &[1]),
        ];
        let c = weighted_shares(&outcome(&even, &r), &t).unwrap();
        assert!(
            !c.passed && c.detail.contains("heavy (weight 300) 2000 ms"),
            "{c:?}"
        );
        // steady has no weights: no such check.
        assert!(weighted_shares(&outcome(&fair, &steady()), &t).is_none());

        let mut w = worker("wake", "ktstr-cyclic", 3, 10, &[0]);
        w.wake_pct_us = Some(crate::agent::proto::Percentiles {
            p50: 80,
            p99: 4000,
            p999: 9000,
            samples: 500,
        });
        let ws = [w];
        let lat = wakeup_latency(&outcome(&ws, &r), &t).unwrap();
        assert!(
            lat.passed && lat.detail.contains("no threshold set"),
            "{lat:?}"
        );
        let strict = Thresholds {
            max_wake_p99: Some(Duration::from_millis(2)),
            ..t
        };
        let lat = wakeup_latency(&outcome(&ws, &r), &strict).unwrap();
        assert!(
            !lat.passed && lat.detail.contains("p99 4000 us over the 2000 us"),
            "{lat:?}"
        );
        assert!(wakeup_latency(&outcome(&fair, &r), &t).is_none());
    }

    #[test]
    fn an_idle_cpu_beside_spinners_that_could_use_it_is_a_load_imbalance() {
        let r = catalogue::find("oversubscribe")
            .unwrap()
            .resolve(&"1n2l1c1t".parse().unwrap(), Duration::from_secs(5))
            .unwrap();
        let topo: ktstr_vmm::Topology = "1n2l1c1t".parse().unwrap();
        let ws = [worker("over", "ktstr-spin", 1, 100, &[0])];
        let mut o = outcome(&ws, &r);
        o.nr_cpus = 2;
        o.topology = Some(&topo);
        // Fixture windows: the first (workers starting) is skipped; then
        // CPU 1 idles through one 2 s window.
        let mut busy = vec![vec![100u16, 0]];
        busy.extend(std::iter::repeat_n(vec![990, 980], 4));
        busy.extend(std::iter::repeat_n(vec![990, 100], 4));
        o.cpu_busy = &busy;
        let t = Thresholds::default();
        let c = load_balance(&o, &t).expect("spinners on every CPU");
        assert!(!c.passed, "{c:?}");
        assert!(
            c.detail.contains("from 2.5 s: CPU 1 89 points below CPU 0"),
            "{c:?}"
        );
        assert!(c.detail.contains("per LLC 0: 99%, 1: 54%"), "{c:?}");
        let even = vec![vec![990u16, 985]; 9];
        o.cpu_busy = &even;
        assert!(load_balance(&o, &t).unwrap().passed);
        // steady pins its cgroups to halves: not judged.
        let s = steady();
        let mut o2 = outcome(&ws, &s);
        o2.cpu_busy = &busy;
        assert!(load_balance(&o2, &t).is_none());
    }
}

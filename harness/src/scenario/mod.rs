//! Scenarios as data: cgroups with cpusets given relative to the topology,
//! workers in them, and steps that change things over the run. A scenario
//! is resolved against a topology and a duration into the agent's job
//! ([`proto::CgroupJob`], [`proto::Step`]); everything a topology cannot
//! satisfy is an error that names the cgroup and what is wrong.

pub mod catalogue;

use std::collections::BTreeSet;
use std::time::Duration;

use ktstr_vmm::Topology;
use serde::{Deserialize, Serialize};

use crate::agent::proto::{self, Policy, Work};

/// CPUs of a cgroup, relative to the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cpuset {
    /// Every CPU (no cpuset restriction).
    All,
    /// Every CPU of LLC `n`.
    Llc(u32),
    /// Part `index` of the CPUs cut into `parts` disjoint, contiguous parts.
    Split {
        /// Which part.
        index: u32,
        /// Of how many.
        parts: u32,
    },
    /// [`Cpuset::Split`] widened by one CPU on each side, so neighbouring
    /// parts overlap.
    Overlap {
        /// Which part.
        index: u32,
        /// Of how many.
        parts: u32,
    },
    /// Exactly these CPUs.
    List(Vec<u32>),
}

/// How many workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Count {
    /// This many.
    Fixed(u32),
    /// This many per CPU of the cgroup's cpuset.
    PerCpu(u32),
}

/// A group of identical workers in a cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workers {
    /// Name and comm.
    pub name: String,
    /// How many.
    pub count: Count,
    /// What they do.
    pub work: Work,
    /// Policy.
    pub policy: Policy,
    /// Nice (normal policies) or priority (real-time ones).
    pub nice: i32,
    /// CPU affinity, within the cgroup's cpuset.
    pub affinity: Option<Cpuset>,
}

impl Workers {
    /// `count` workers doing `work` with the normal policy.
    pub fn new(name: &str, count: Count, work: Work) -> Workers {
        Workers {
            name: name.to_string(),
            count,
            work,
            policy: Policy::Normal,
            nice: 0,
            affinity: None,
        }
    }
}

/// A cgroup and its workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupSpec {
    /// Directory name under `/sys/fs/cgroup`.
    pub name: String,
    /// Its CPUs.
    pub cpuset: Cpuset,
    /// Its workers.
    pub workers: Vec<Workers>,
    /// `cpu.weight` (1..=10000, default 100): its share against siblings.
    #[serde(default)]
    pub weight: Option<u32>,
    /// `cpu.max`: a bandwidth limit.
    #[serde(default)]
    pub cpu_max: Option<proto::CpuMax>,
}

impl CgroupSpec {
    /// A cgroup on every CPU, without workers yet.
    pub fn new(name: &str) -> CgroupSpec {
        CgroupSpec {
            name: name.to_string(),
            cpuset: Cpuset::All,
            workers: Vec::new(),
            weight: None,
            cpu_max: None,
        }
    }

    /// Its `cpu.weight`.
    pub fn weight(&mut self, weight: u32) -> &mut CgroupSpec {
        self.weight = Some(weight);
        self
    }

    /// Restrict it to `cpuset`.
    pub fn cpuset(&mut self, cpuset: Cpuset) -> &mut CgroupSpec {
        self.cpuset = cpuset;
        self
    }

    /// Add a group of workers.
    pub fn workers(&mut self, workers: Workers) -> &mut CgroupSpec {
        self.workers.push(workers);
        self
    }

    /// Add `per_cpu` busy spinners per CPU of its cpuset, named after it.
    pub fn spinners(&mut self, per_cpu: u32) -> &mut CgroupSpec {
        let name = format!("ktstr-{}", self.name);
        self.workers(Workers::new(&name, Count::PerCpu(per_cpu), Work::Spin))
    }
}

/// When a step happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum At {
    /// This percentage of the run's duration.
    Percent(u32),
    /// This long after the workload starts.
    Millis(u64),
}

/// A change during the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Change a cgroup's cpuset.
    SetCpuset {
        /// The cgroup.
        cgroup: String,
        /// Its new CPUs.
        cpuset: Cpuset,
    },
    /// Add a cgroup with its workers.
    AddCgroup(CgroupSpec),
    /// Stop a cgroup's workers and remove it.
    RemoveCgroup(String),
    /// Move every worker of `from` into `to`.
    MoveWorkers {
        /// From.
        from: String,
        /// To.
        to: String,
    },
    /// Take CPU `cpu` offline (or bring it back).
    Hotplug {
        /// The CPU.
        cpu: u32,
        /// Back online.
        online: bool,
    },
    /// Change the affinity of a cgroup's workers.
    SetAffinity {
        /// The cgroup.
        cgroup: String,
        /// Their new CPUs.
        cpuset: Cpuset,
    },
    /// Change a cgroup's `cpu.weight`.
    SetWeight {
        /// The cgroup.
        cgroup: String,
        /// The weight.
        weight: u32,
    },
}

/// A step: an action at a time; the state it makes holds until the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// When.
    pub at: At,
    /// What.
    pub action: Action,
}

/// A workload to run under a scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    /// Short name (`ktstr run --scenario NAME`).
    pub name: String,
    /// One line on what it exercises.
    pub description: String,
    /// cgroups at the start.
    pub cgroups: Vec<CgroupSpec>,
    /// Changes over the run, in time order.
    pub steps: Vec<Step>,
}

/// What a topology cannot satisfy, or a malformed scenario.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// No such scenario in the catalogue.
    #[error("no scenario named {0:?}; `ktstr scenarios` lists them: {1}")]
    Unknown(String, String),
    /// A cgroup name that cannot be a directory.
    #[error("cgroup name {0:?} must be a non-empty name without '/', '.' or '..'")]
    BadName(String),
    /// Two cgroups of one name.
    #[error("cgroup {0} is declared twice")]
    Duplicate(String),
    /// A step names a cgroup that does not exist then.
    #[error("step at {at} names cgroup {cgroup}, which does not exist at that point")]
    NoSuchCgroup {
        /// When.
        at: String,
        /// Which.
        cgroup: String,
    },
    /// The cpuset is not possible on this topology.
    #[error("cgroup {cgroup}: cpuset {cpuset:?} on topology {topology}: {why}")]
    Cpuset {
        /// Which cgroup.
        cgroup: String,
        /// What was asked.
        cpuset: Cpuset,
        /// On what.
        topology: String,
        /// Why not.
        why: String,
    },
    /// Affinity outside the cgroup's CPUs.
    #[error(
        "cgroup {cgroup}, workers {workers}: affinity {affinity:?} has no CPU in the cgroup's cpuset {cpus:?}"
    )]
    Affinity {
        /// Which cgroup.
        cgroup: String,
        /// Which workers.
        workers: String,
        /// Their affinity.
        affinity: Vec<u32>,
        /// The cgroup's CPUs.
        cpus: Vec<u32>,
    },
    /// Steps out of order or past the end.
    #[error("step {0}: steps must be in time order and within the run (0..100%)")]
    StepTime(usize),
    /// Nothing to run.
    #[error("scenario {0} starts no worker")]
    Empty(String),
    /// A `cpu.weight` the kernel refuses.
    #[error("cgroup {cgroup}: cpu.weight {weight} is outside 1..=10000")]
    Weight {
        /// Which cgroup.
        cgroup: String,
        /// The weight.
        weight: u32,
    },
    /// CPU hotplug of a CPU the topology lacks, or of CPU 0 (which
    /// x86 cannot take offline).
    #[error(
        "step at {at}: CPU {cpu} cannot be hotplugged on topology {topology} (CPU 0 never can)"
    )]
    Hotplug {
        /// When.
        at: String,
        /// Which CPU.
        cpu: u32,
        /// The topology.
        topology: String,
    },
}

impl Cpuset {
    /// The CPUs on `t`, or why there are none.
    pub fn cpus(&self, t: &Topology) -> Result<Vec<u32>, String> {
        let n = t.nr_cpus();
        let split = |index: u32, parts: u32, widen: u32| {
            if parts == 0 || index >= parts {
                return Err(format!("part {index} of {parts} does not exist"));
            }
            if parts > n {
                return Err(format!("{parts} parts of {n} CPUs would leave some empty"));
            }
            let (lo, hi) = (index * n / parts, (index + 1) * n / parts);
            Ok((lo.saturating_sub(widen)..(hi + widen).min(n)).collect())
        };
        let cpus: Vec<u32> = match self {
            Cpuset::All => (0..n).collect(),
            Cpuset::Llc(l) => {
                if *l >= t.llcs {
                    return Err(format!("LLC {l} does not exist ({} LLCs)", t.llcs));
                }
                (0..n)
                    .filter(|&c| t.place(c).is_some_and(|p| p.llc == *l))
                    .collect()
            }
            Cpuset::Split { index, parts } => split(*index, *parts, 0)?,
            Cpuset::Overlap { index, parts } => split(*index, *parts, 1)?,
            Cpuset::List(list) => {
                if let Some(bad) = list.iter().find(|&&c| c >= n) {
                    return Err(format!("CPU {bad} does not exist ({n} CPUs)"));
                }
                list.iter()
                    .copied()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            }
        };
        if cpus.is_empty() {
            return Err("no CPU".into());
        }
        Ok(cpus)
    }
}

fn check_name(name: &str) -> Result<(), ScenarioError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(ScenarioError::BadName(name.to_string()));
    }
    Ok(())
}

fn resolve_cgroup(cg: &CgroupSpec, t: &Topology) -> Result<proto::CgroupJob, ScenarioError> {
    check_name(&cg.name)?;
    let cpuset_err = |cpuset: &Cpuset, why: String| ScenarioError::Cpuset {
        cgroup: cg.name.clone(),
        cpuset: cpuset.clone(),
        topology: t.to_string(),
        why,
    };
    let cpus = cg.cpuset.cpus(t).map_err(|w| cpuset_err(&cg.cpuset, w))?;
    let mut workers = Vec::new();
    for w in &cg.workers {
        let affinity = match &w.affinity {
            Some(a) => {
                let aff = a.cpus(t).map_err(|why| cpuset_err(a, why))?;
                if !aff.iter().any(|c| cpus.contains(c)) {
                    return Err(ScenarioError::Affinity {
                        cgroup: cg.name.clone(),
                        workers: w.name.clone(),
                        affinity: aff,
                        cpus,
                    });
                }
                Some(aff)
            }
            None => None,
        };
        workers.push(proto::WorkerSpec {
            name: w.name.clone(),
            count: match w.count {
                Count::Fixed(n) => n,
                Count::PerCpu(n) => n * cpus.len() as u32,
            },
            work: w.work,
            policy: w.policy,
            nice: w.nice,
            affinity,
        });
    }
    if let Some(w) = cg.weight.filter(|w| !(1..=10_000).contains(w)) {
        return Err(ScenarioError::Weight {
            cgroup: cg.name.clone(),
            weight: w,
        });
    }
    Ok(proto::CgroupJob {
        name: cg.name.clone(),
        cpus: (cg.cpuset != Cpuset::All).then_some(cpus),
        workers,
        weight: cg.weight,
        cpu_max: cg.cpu_max,
    })
}

/// A scenario made concrete for one topology and duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// cgroups at the start.
    pub cgroups: Vec<proto::CgroupJob>,
    /// Steps, with times in ms.
    pub steps: Vec<proto::Step>,
}

impl Resolved {
    /// Every CPU each cgroup may have had over the run (for the cpuset
    /// check): the union of its cpusets, all CPUs for `None`.
    pub fn allowed_cpus(&self, cgroup: &str, nr_cpus: u32) -> BTreeSet<u32> {
        let all = || (0..nr_cpus).collect::<BTreeSet<_>>();
        let of =
            |c: &Option<Vec<u32>>| c.as_ref().map_or_else(all, |v| v.iter().copied().collect());
        let mut set = BTreeSet::new();
        for cg in self.cgroups.iter().filter(|c| c.name == cgroup) {
            set.extend(of(&cg.cpus));
        }
        for s in &self.steps {
            match &s.action {
                proto::StepAction::SetCpus { cgroup: c, cpus } if c == cgroup => {
                    set.extend(of(cpus))
                }
                proto::StepAction::AddCgroup(cg) if cg.name == cgroup => set.extend(of(&cg.cpus)),
                // Moved workers run under the target's cpuset too.
                proto::StepAction::MoveWorkers { from, to } if from == cgroup => {
                    set.extend(self.allowed_cpus(to, nr_cpus))
                }
                _ => {}
            }
        }
        set
    }
}

impl Scenario {
    /// Resolve against `t`, with step times from `duration`.
    pub fn resolve(&self, t: &Topology, duration: Duration) -> Result<Resolved, ScenarioError> {
        let mut names = BTreeSet::new();
        let mut cgroups = Vec::new();
        for cg in &self.cgroups {
            if !names.insert(cg.name.clone()) {
                return Err(ScenarioError::Duplicate(cg.name.clone()));
            }
            cgroups.push(resolve_cgroup(cg, t)?);
        }
        let total_ms = duration.as_millis() as u64;
        let mut steps = Vec::new();
        let mut last = 0;
        for (i, s) in self.steps.iter().enumerate() {
            let at_ms = match s.at {
                At::Percent(p) if p <= 100 => total_ms * u64::from(p) / 100,
                At::Millis(ms) if ms <= total_ms => ms,
                _ => return Err(ScenarioError::StepTime(i)),
            };
            if at_ms < last {
                return Err(ScenarioError::StepTime(i));
            }
            last = at_ms;
            let missing = |c: &str| ScenarioError::NoSuchCgroup {
                at: format!("{at_ms} ms"),
                cgroup: c.to_string(),
            };
            let action = match &s.action {
                Action::SetCpuset { cgroup, cpuset } => {
                    if !names.contains(cgroup) {
                        return Err(missing(cgroup));
                    }
                    let spec = CgroupSpec {
                        name: cgroup.clone(),
                        cpuset: cpuset.clone(),
                        workers: vec![],
                        weight: None,
                        cpu_max: None,
                    };
                    proto::StepAction::SetCpus {
                        cgroup: cgroup.clone(),
                        cpus: resolve_cgroup(&spec, t)?.cpus,
                    }
                }
                Action::AddCgroup(cg) => {
                    if !names.insert(cg.name.clone()) {
                        return Err(ScenarioError::Duplicate(cg.name.clone()));
                    }
                    proto::StepAction::AddCgroup(resolve_cgroup(cg, t)?)
                }
                Action::RemoveCgroup(name) => {
                    if !names.remove(name) {
                        return Err(missing(name));
                    }
                    proto::StepAction::RemoveCgroup {
                        cgroup: name.clone(),
                    }
                }
                Action::MoveWorkers { from, to } => {
                    for c in [from, to] {
                        if !names.contains(c) {
                            return Err(missing(c));
                        }
                    }
                    proto::StepAction::MoveWorkers {
                        from: from.clone(),
                        to: to.clone(),
                    }
                }
                Action::Hotplug { cpu, online } => {
                    if *cpu == 0 || *cpu >= t.nr_cpus() {
                        return Err(ScenarioError::Hotplug {
                            at: format!("{at_ms} ms"),
                            cpu: *cpu,
                            topology: t.to_string(),
                        });
                    }
                    proto::StepAction::Hotplug {
                        cpu: *cpu,
                        online: *online,
                    }
                }
                Action::SetAffinity { cgroup, cpuset } => {
                    if !names.contains(cgroup) {
                        return Err(missing(cgroup));
                    }
                    let cpus = cpuset.cpus(t).map_err(|why| ScenarioError::Cpuset {
                        cgroup: cgroup.clone(),
                        cpuset: cpuset.clone(),
                        topology: t.to_string(),
                        why,
                    })?;
                    proto::StepAction::SetAffinity {
                        cgroup: cgroup.clone(),
                        cpus,
                    }
                }
                Action::SetWeight { cgroup, weight } => {
                    if !names.contains(cgroup) {
                        return Err(missing(cgroup));
                    }
                    if !(1..=10_000).contains(weight) {
                        return Err(ScenarioError::Weight {
                            cgroup: cgroup.clone(),
                            weight: *weight,
                        });
                    }
                    proto::StepAction::SetWeight {
                        cgroup: cgroup.clone(),
                        weight: *weight,
                    }
                }
            };
            steps.push(proto::Step { at_ms, action });
        }
        if cgroups
            .iter()
            .all(|c| c.workers.iter().all(|w| w.count == 0))
        {
            return Err(ScenarioError::Empty(self.name.clone()));
        }
        Ok(Resolved { cgroups, steps })
    }
}

#[cfg(test)]
mod tests;

//! Ready scenarios, by name.

use super::{Action, At, CgroupSpec, Count, Cpuset, Scenario, ScenarioError, Step, Workers};
use crate::agent::proto::Work;

fn cgroup(name: &str, cpuset: Cpuset, workers: Vec<Workers>) -> CgroupSpec {
    CgroupSpec {
        name: name.to_string(),
        cpuset,
        workers,
    }
}

fn half(index: u32) -> Cpuset {
    Cpuset::Split { index, parts: 2 }
}

/// Every ready scenario.
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "steady".into(),
            description: "two cgroups on two halves of the CPUs: spinners and a 50% duty cycle"
                .into(),
            cgroups: vec![
                cgroup(
                    "spin",
                    half(0),
                    vec![Workers::new("ktstr-spin", Count::PerCpu(2), Work::Spin)],
                ),
                cgroup(
                    "duty",
                    half(1),
                    vec![Workers::new(
                        "ktstr-duty",
                        Count::PerCpu(2),
                        Work::DutyCycle {
                            run_us: 2000,
                            sleep_us: 2000,
                        },
                    )],
                ),
            ],
            steps: vec![],
        },
        Scenario {
            name: "cpuset-churn".into(),
            description: "spinners in two cgroups whose cpusets widen, then swap halves".into(),
            cgroups: vec![
                cgroup(
                    "a",
                    half(0),
                    vec![Workers::new("ktstr-a", Count::PerCpu(1), Work::Spin)],
                ),
                cgroup(
                    "b",
                    half(1),
                    vec![Workers::new("ktstr-b", Count::PerCpu(1), Work::Spin)],
                ),
            ],
            steps: vec![
                Step {
                    at: At::Percent(30),
                    action: Action::SetCpuset {
                        cgroup: "a".into(),
                        cpuset: Cpuset::All,
                    },
                },
                Step {
                    at: At::Percent(60),
                    action: Action::SetCpuset {
                        cgroup: "a".into(),
                        cpuset: half(1),
                    },
                },
                Step {
                    at: At::Percent(60),
                    action: Action::SetCpuset {
                        cgroup: "b".into(),
                        cpuset: half(0),
                    },
                },
            ],
        },
        Scenario {
            name: "oversubscribe".into(),
            description: "three spinners per CPU in one cgroup".into(),
            cgroups: vec![cgroup(
                "over",
                Cpuset::All,
                vec![Workers::new("ktstr-spin", Count::PerCpu(3), Work::Spin)],
            )],
            steps: vec![],
        },
        Scenario {
            name: "ping-pong".into(),
            description: "thread pairs waking each other through pipes, next to spinners".into(),
            cgroups: vec![cgroup(
                "wake",
                Cpuset::All,
                vec![
                    Workers::new("ktstr-pingpong", Count::PerCpu(1), Work::PingPong),
                    Workers::new("ktstr-spin", Count::PerCpu(1), Work::Spin),
                ],
            )],
            steps: vec![],
        },
        Scenario {
            name: "fork-storm".into(),
            description: "processes forking short-lived children, next to spinners; a cgroup \
                          joins halfway"
                .into(),
            cgroups: vec![cgroup(
                "fork",
                Cpuset::All,
                vec![
                    Workers::new("ktstr-fork", Count::PerCpu(1), Work::ForkExit),
                    Workers::new("ktstr-spin", Count::Fixed(1), Work::Spin),
                ],
            )],
            steps: vec![Step {
                at: At::Percent(50),
                action: Action::AddCgroup(cgroup(
                    "late",
                    Cpuset::Llc(0),
                    vec![Workers::new("ktstr-late", Count::Fixed(2), Work::Yield)],
                )),
            }],
        },
    ]
}

/// The scenario called `name`.
pub fn find(name: &str) -> Result<Scenario, ScenarioError> {
    let all = all();
    let names = all
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    all.into_iter()
        .find(|s| s.name == name)
        .ok_or(ScenarioError::Unknown(name.to_string(), names))
}

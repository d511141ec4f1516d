//! Ready scenarios, by name.

use super::{Action, At, CgroupSpec, Count, Cpuset, Scenario, ScenarioError, Step, Workers};
use crate::agent::proto::{CpuMax, Policy, Work};

fn cgroup(name: &str, cpuset: Cpuset, workers: Vec<Workers>) -> CgroupSpec {
    CgroupSpec {
        name: name.to_string(),
        cpuset,
        workers,
        weight: None,
        cpu_max: None,
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
        weights(),
        throttled(),
        wakeup_latency(),
        hackbench(false),
        hackbench(true),
        fork_exec(),
        futex_herd(),
        producer_consumer(),
        nice_mix(),
        batch_idle(),
        hotplug(),
        affinity_churn(),
        numa_bind(),
        numa_preferred(),
        io_wait(),
        yield_storm(),
        duty_mix(),
        rt_mix(),
        cgroup_churn(),
    ]
}

fn scenario(name: &str, description: &str, cgroups: Vec<CgroupSpec>, steps: Vec<Step>) -> Scenario {
    Scenario {
        name: name.into(),
        description: description.into(),
        cgroups,
        steps,
    }
}

fn spinners(name: &str, per_cpu: u32) -> Workers {
    Workers::new(name, Count::PerCpu(per_cpu), Work::Spin)
}

fn step(percent: u32, action: Action) -> Step {
    Step {
        at: At::Percent(percent),
        action,
    }
}

fn weights() -> Scenario {
    let mut heavy = cgroup("heavy", Cpuset::All, vec![spinners("ktstr-heavy", 1)]);
    heavy.weight = Some(300);
    let mut light = cgroup("light", Cpuset::All, vec![spinners("ktstr-light", 1)]);
    light.weight = Some(100);
    scenario(
        "weights",
        "two cgroups of spinners on every CPU with cpu.weight 300 and 100: CPU time should split 3:1",
        vec![heavy, light],
        vec![],
    )
}

fn throttled() -> Scenario {
    let mut capped = cgroup("capped", Cpuset::All, vec![spinners("ktstr-capped", 1)]);
    capped.cpu_max = Some(CpuMax {
        quota_us: 20_000,
        period_us: 100_000,
    });
    scenario(
        "cpu-max",
        "spinners throttled by cpu.max to 20% of a CPU next to unthrottled ones: bandwidth control under the scheduler",
        vec![
            capped,
            cgroup("free", Cpuset::All, vec![spinners("ktstr-free", 1)]),
        ],
        vec![],
    )
}

fn wakeup_latency() -> Scenario {
    scenario(
        "wakeup-latency",
        "1 ms periodic timers on every CPU next to spinners (schbench/cyclictest-like): wakeup latency percentiles",
        vec![cgroup(
            "lat",
            Cpuset::All,
            vec![
                Workers::new(
                    "ktstr-cyclic",
                    Count::PerCpu(1),
                    Work::Cyclic { interval_us: 1000 },
                ),
                spinners("ktstr-spin", 1),
            ],
        )],
        vec![],
    )
}

fn hackbench(sockets: bool) -> Scenario {
    let (name, how) = if sockets {
        ("hackbench-socket", "Unix sockets")
    } else {
        ("hackbench-pipe", "pipes")
    };
    scenario(
        name,
        &format!(
            "sender/receiver thread pairs streaming 100-byte messages over {how} (hackbench-like): throughput and delivery latency"
        ),
        vec![cgroup(
            "msg",
            Cpuset::All,
            vec![Workers::new(
                "ktstr-msg",
                Count::PerCpu(1),
                Work::Messages { pairs: 2, sockets },
            )],
        )],
        vec![],
    )
}

fn fork_exec() -> Scenario {
    scenario(
        "fork-exec",
        "processes forking children that exec and exit, next to spinners: task creation and exit churn",
        vec![cgroup(
            "exec",
            Cpuset::All,
            vec![
                Workers::new("ktstr-exec", Count::PerCpu(1), Work::ForkExec),
                spinners("ktstr-spin", 1),
            ],
        )],
        vec![],
    )
}

fn futex_herd() -> Scenario {
    scenario(
        "futex-herd",
        "groups of 8 threads woken together on one futex (thundering herd), next to spinners: wakeup placement",
        vec![cgroup(
            "herd",
            Cpuset::All,
            vec![
                Workers::new(
                    "ktstr-herd",
                    Count::Fixed(2),
                    Work::FutexHerd { waiters: 8 },
                ),
                spinners("ktstr-spin", 1),
            ],
        )],
        vec![],
    )
}

fn producer_consumer() -> Scenario {
    scenario(
        "producer-consumer",
        "producer/consumer thread pairs over short queues: tightly coupled wakeups",
        vec![cgroup(
            "pc",
            Cpuset::All,
            vec![Workers::new(
                "ktstr-pc",
                Count::PerCpu(1),
                Work::ProducerConsumer { depth: 4 },
            )],
        )],
        vec![],
    )
}

fn nice_mix() -> Scenario {
    let at = |name: &str, nice: i32| Workers {
        nice,
        ..spinners(name, 1)
    };
    scenario(
        "nice-mix",
        "spinners at nice -10, 0 and 10 sharing every CPU: CPU time should follow nice",
        vec![cgroup(
            "nice",
            Cpuset::All,
            vec![
                at("ktstr-nice-10", -10),
                at("ktstr-nice0", 0),
                at("ktstr-nice10", 10),
            ],
        )],
        vec![],
    )
}

fn batch_idle() -> Scenario {
    let with = |name: &str, policy: Policy| Workers {
        policy,
        ..spinners(name, 1)
    };
    scenario(
        "batch-idle",
        "SCHED_BATCH and SCHED_IDLE spinners next to normal ones: policies the scheduler must still serve",
        vec![cgroup(
            "policies",
            Cpuset::All,
            vec![
                with("ktstr-normal", Policy::Normal),
                with("ktstr-batch", Policy::Batch),
                with("ktstr-idle", Policy::Idle),
            ],
        )],
        vec![],
    )
}

fn hotplug() -> Scenario {
    scenario(
        "hotplug",
        "spinners on every CPU while CPU 1 goes offline at 30% and comes back at 70%: CPU hotplug under load",
        vec![cgroup("hot", Cpuset::All, vec![spinners("ktstr-spin", 2)])],
        vec![
            step(
                30,
                Action::Hotplug {
                    cpu: 1,
                    online: false,
                },
            ),
            step(
                70,
                Action::Hotplug {
                    cpu: 1,
                    online: true,
                },
            ),
        ],
    )
}

fn affinity_churn() -> Scenario {
    let aff = |cpuset| Action::SetAffinity {
        cgroup: "aff".into(),
        cpuset,
    };
    scenario(
        "affinity-churn",
        "spinners whose CPU affinity narrows to one half, moves to the other, then widens: migrations on affinity changes",
        vec![cgroup("aff", Cpuset::All, vec![spinners("ktstr-aff", 1)])],
        vec![
            step(25, aff(half(0))),
            step(50, aff(half(1))),
            step(75, aff(Cpuset::All)),
        ],
    )
}

fn numa(name: &str, preferred: bool, description: &str) -> Scenario {
    scenario(
        name,
        description,
        vec![cgroup(
            "mem",
            half(1),
            vec![Workers::new(
                "ktstr-mem",
                Count::PerCpu(1),
                Work::MemTouch {
                    mib: 16,
                    node: Some(0),
                    preferred,
                },
            )],
        )],
        vec![],
    )
}

fn numa_bind() -> Scenario {
    numa(
        "numa-bind",
        false,
        "memory bound to node 0 touched from the second half of the CPUs (another node on multi-node topologies): the remote-access share",
    )
}

fn numa_preferred() -> Scenario {
    numa(
        "numa-preferred",
        true,
        "memory preferring node 0 touched from the second half of the CPUs: where the pages land and how often they are remote",
    )
}

fn io_wait() -> Scenario {
    scenario(
        "io-wait",
        "tasks blocking 2 ms at a time on a file descriptor (I/O-wait-like) next to spinners: wakeups of blocked tasks",
        vec![cgroup(
            "io",
            Cpuset::All,
            vec![
                Workers::new(
                    "ktstr-io",
                    Count::PerCpu(1),
                    Work::Blocking { block_us: 2000 },
                ),
                spinners("ktstr-spin", 1),
            ],
        )],
        vec![],
    )
}

fn yield_storm() -> Scenario {
    scenario(
        "yield-storm",
        "two sched_yield loops per CPU next to spinners: yield handling",
        vec![cgroup(
            "yield",
            Cpuset::All,
            vec![
                Workers::new("ktstr-yield", Count::PerCpu(2), Work::Yield),
                spinners("ktstr-spin", 1),
            ],
        )],
        vec![],
    )
}

fn duty_mix() -> Scenario {
    let duty = |name: &str, run_us: u64, sleep_us: u64| {
        Workers::new(name, Count::PerCpu(1), Work::DutyCycle { run_us, sleep_us })
    };
    scenario(
        "duty-mix",
        "duty cycles of 10%, 50% and 90% on every CPU: interactive and batch-like tasks together",
        vec![cgroup(
            "duty",
            Cpuset::All,
            vec![
                duty("ktstr-duty10", 500, 4500),
                duty("ktstr-duty50", 2500, 2500),
                duty("ktstr-duty90", 4500, 500),
            ],
        )],
        vec![],
    )
}

fn rt_mix() -> Scenario {
    scenario(
        "rt-mix",
        "a SCHED_FIFO duty cycle (2 ms of every 10) on every CPU above sched_ext spinners: RT preemption of ext tasks",
        vec![cgroup(
            "rt",
            Cpuset::All,
            vec![
                Workers {
                    policy: Policy::Fifo,
                    nice: 10,
                    ..Workers::new(
                        "ktstr-fifo",
                        Count::PerCpu(1),
                        Work::DutyCycle {
                            run_us: 2000,
                            sleep_us: 8000,
                        },
                    )
                },
                spinners("ktstr-spin", 1),
            ],
        )],
        vec![],
    )
}

fn cgroup_churn() -> Scenario {
    let add = |name: &str, cpuset| {
        Action::AddCgroup(cgroup(
            name,
            cpuset,
            vec![spinners(&format!("ktstr-{name}"), 1)],
        ))
    };
    scenario(
        "cgroup-churn",
        "cgroups of spinners created and removed through the run next to a steady one: cgroup init/exit under the scheduler",
        vec![cgroup("base", Cpuset::All, vec![spinners("ktstr-base", 1)])],
        vec![
            step(20, add("c1", half(0))),
            step(40, add("c2", half(1))),
            step(60, Action::RemoveCgroup("c1".into())),
            step(80, Action::RemoveCgroup("c2".into())),
        ],
    )
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

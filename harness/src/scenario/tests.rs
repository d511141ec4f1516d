use super::*;
use crate::agent::proto::StepAction;

fn topo(s: &str) -> Topology {
    s.parse().unwrap()
}

const RUN: Duration = Duration::from_secs(10);

#[test]
fn cpusets_follow_the_topology() {
    let t = topo("1n2l2c2t"); // 8 CPUs, LLC 0 = 0..4, LLC 1 = 4..8
    assert_eq!(Cpuset::Llc(1).cpus(&t).unwrap(), vec![4, 5, 6, 7]);
    assert_eq!(
        Cpuset::Split { index: 1, parts: 4 }.cpus(&t).unwrap(),
        vec![2, 3]
    );
    assert_eq!(
        Cpuset::Overlap { index: 1, parts: 4 }.cpus(&t).unwrap(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(Cpuset::List(vec![3, 1, 3]).cpus(&t).unwrap(), vec![1, 3]);
    assert_eq!(Cpuset::All.cpus(&t).unwrap().len(), 8);
}

#[test]
fn impossible_cpusets_say_why() {
    let t = topo("1n1l2c1t");
    for (cpuset, why) in [
        (Cpuset::Llc(1), "LLC 1 does not exist"),
        (Cpuset::Split { index: 0, parts: 3 }, "3 parts of 2 CPUs"),
        (
            Cpuset::Split { index: 2, parts: 2 },
            "part 2 of 2 does not exist",
        ),
        (Cpuset::List(vec![0, 5]), "CPU 5 does not exist"),
        (Cpuset::List(vec![]), "no CPU"),
    ] {
        let s = Scenario {
            name: "x".into(),
            description: String::new(),
            cgroups: vec![CgroupSpec {
                name: "g".into(),
                cpuset: cpuset.clone(),
                workers: vec![Workers::new("w", Count::Fixed(1), Work::Spin)],
                weight: None,
                cpu_max: None,
            }],
            steps: vec![],
        };
        let e = s.resolve(&t, RUN).unwrap_err().to_string();
        assert!(e.contains("cgroup g") && e.contains(why), "{cpuset:?}: {e}");
        assert!(e.contains("1n1l2c1t"), "{e}");
    }
}

#[test]
fn malformed_scenarios_are_refused() {
    let t = topo("1n1l4c1t");
    let base = catalogue::find("steady").unwrap();
    let mut dup = base.clone();
    dup.cgroups.push(dup.cgroups[0].clone());
    assert!(matches!(
        dup.resolve(&t, RUN),
        Err(ScenarioError::Duplicate(_))
    ));

    let mut bad_name = base.clone();
    bad_name.cgroups[0].name = "../escape".into();
    assert!(matches!(
        bad_name.resolve(&t, RUN),
        Err(ScenarioError::BadName(_))
    ));

    let mut ghost = base.clone();
    ghost.steps.push(Step {
        at: At::Percent(10),
        action: Action::RemoveCgroup("ghost".into()),
    });
    let e = ghost.resolve(&t, RUN).unwrap_err().to_string();
    assert!(e.contains("ghost") && e.contains("1000 ms"), "{e}");

    let mut late = base.clone();
    late.steps = vec![
        Step {
            at: At::Percent(50),
            action: Action::RemoveCgroup("spin".into()),
        },
        Step {
            at: At::Percent(20),
            action: Action::RemoveCgroup("duty".into()),
        },
    ];
    assert!(matches!(
        late.resolve(&t, RUN),
        Err(ScenarioError::StepTime(1))
    ));

    let mut aff = base.clone();
    aff.cgroups[0].workers[0].affinity = Some(Cpuset::List(vec![3]));
    let e = aff.resolve(&t, RUN).unwrap_err().to_string();
    assert!(e.contains("affinity [3]") && e.contains("[0, 1]"), "{e}");

    let mut empty = base;
    for cg in &mut empty.cgroups {
        cg.workers.clear();
    }
    assert!(matches!(
        empty.resolve(&t, RUN),
        Err(ScenarioError::Empty(_))
    ));

    let e = catalogue::find("nope").unwrap_err().to_string();
    assert!(e.contains("steady") && e.contains("fork-storm"), "{e}");
}

#[test]
fn every_catalogue_scenario_resolves_on_the_test_topologies() {
    for t in ["1n1l2c1t", "1n2l2c1t", "2n2l1c2t", "1n2l4c2t"] {
        for s in catalogue::all() {
            let r = s
                .resolve(&topo(t), RUN)
                .unwrap_or_else(|e| panic!("{} on {t}: {e}", s.name));
            assert!(!r.cgroups.is_empty());
        }
    }
}

#[test]
fn the_catalogue_has_twenty_documented_scenarios_with_distinct_names() {
    let all = catalogue::all();
    assert!(all.len() >= 20, "{} scenarios", all.len());
    let names: std::collections::BTreeSet<&str> = all.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), all.len(), "a name twice");
    for s in &all {
        assert!(s.description.len() > 30, "{}: {:?}", s.name, s.description);
    }
}

#[test]
fn new_actions_resolve_and_refuse_what_cannot_be() {
    let hot = catalogue::find("hotplug").unwrap();
    let r = hot.resolve(&topo("1n1l2c1t"), RUN).unwrap();
    assert!(matches!(
        r.steps[0].action,
        proto::StepAction::Hotplug {
            cpu: 1,
            online: false
        }
    ));
    // One CPU: nothing to take offline (CPU 0 never goes).
    assert!(matches!(
        hot.resolve(&topo("1n1l1c1t"), RUN),
        Err(ScenarioError::Hotplug { cpu: 1, .. })
    ));
    let aff = catalogue::find("affinity-churn").unwrap();
    let r = aff.resolve(&topo("1n1l4c1t"), RUN).unwrap();
    assert!(
        matches!(&r.steps[0].action, proto::StepAction::SetAffinity { cpus, .. } if cpus == &[0, 1])
    );
    let w = catalogue::find("weights").unwrap();
    let r = w.resolve(&topo("1n1l2c1t"), RUN).unwrap();
    assert_eq!(r.cgroups[0].weight, Some(300));
    let mut bad = w.clone();
    bad.cgroups[0].weight = Some(0);
    assert!(matches!(
        bad.resolve(&topo("1n1l2c1t"), RUN),
        Err(ScenarioError::Weight { weight: 0, .. })
    ));
}

#[test]
fn churn_resolves_to_concrete_cpus_and_times() {
    let t = topo("1n1l4c1t");
    let r = catalogue::find("cpuset-churn")
        .unwrap()
        .resolve(&t, RUN)
        .unwrap();
    assert_eq!(r.cgroups[0].cpus, Some(vec![0, 1]));
    assert_eq!(
        r.cgroups[0].workers[0].count, 2,
        "one per CPU of its cpuset"
    );
    assert_eq!(r.steps[0].at_ms, 3000);
    assert_eq!(
        r.steps[0].action,
        StepAction::SetCpus {
            cgroup: "a".into(),
            cpus: None
        }
    );
    assert_eq!(r.allowed_cpus("a", 4), (0..4).collect());
    assert_eq!(r.allowed_cpus("b", 4), (0..4).collect());
    let steady = catalogue::find("steady").unwrap().resolve(&t, RUN).unwrap();
    assert_eq!(steady.allowed_cpus("spin", 4), [0, 1].into());
}

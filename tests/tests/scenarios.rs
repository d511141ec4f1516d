//! Scenarios under real schedulers: scx_bpfland with the cpuset-churn
//! scenario on two LLCs, and the kernel's own scheduler as the baseline,
//! each must pass every check.

use std::time::Duration;

use ktstr::checks::Thresholds;
use ktstr::run::run;
use ktstr::scenario::catalogue;
use ktstr::session::{SchedulerConfig, SessionConfig};
use ktstr_tests::{Need, have_tool, skip};

fn run_scenario(test: &str, topology: &str, scenario: &str, bpfland: bool) {
    if !have_tool("qemu-system-x86_64") {
        return skip(
            test,
            Need::Tool,
            "qemu-system-x86_64 not installed (./setup.sh installs it)",
        );
    }
    let kernel = match ktstr_tests::cached_kernel_dir() {
        Ok(d) => d.display().to_string(),
        Err(e) => return skip(test, Need::Kernel, &e),
    };
    let mut cfg = SessionConfig::new(kernel, topology.parse().unwrap());
    cfg.duration = Duration::from_secs(6);
    if bpfland {
        match ktstr::scheduler::resolve("bpfland") {
            Ok(binary) => {
                cfg.scheduler = Some(SchedulerConfig {
                    binary,
                    args: vec![],
                })
            }
            Err(e) => return skip(test, Need::Tool, &e.to_string()),
        }
    }
    let scenario = catalogue::find(scenario).unwrap();
    let report = run(&cfg, &scenario, &Thresholds::default(), None)
        .unwrap_or_else(|e| panic!("{test}: {e:#}"));
    eprintln!("{test}:\n{}", report.to_text());
    assert!(report.passed(), "{:#?}", report.checks);
    // The monitor read the live guest all along and, the run being
    // healthy, never asked for a dump.
    assert!(report.monitor_samples > 10, "{}", report.monitor_samples);
    assert_eq!(report.dump, None, "{:?}", report.dump_reason);
    assert_eq!(report.scheduler.is_some(), bpfland);
    let resolved = scenario
        .resolve(&topology.parse().unwrap(), cfg.duration)
        .unwrap();
    let expected: u32 = resolved
        .cgroups
        .iter()
        .flat_map(|c| &c.workers)
        .map(|w| w.count)
        .sum();
    assert!(
        report.workers.len() as u32 >= expected,
        "{:?}",
        report.workers
    );
    ktstr_tests::assert_no_vm_left_behind();
}

#[test]
fn bpfland_cpuset_churn_on_two_llcs_passes_its_checks() {
    run_scenario(
        "bpfland_cpuset_churn_on_two_llcs_passes_its_checks",
        "1n2l2c1t",
        "cpuset-churn",
        true,
    );
}

#[test]
fn default_scheduler_steady_baseline_passes_its_checks() {
    run_scenario(
        "default_scheduler_steady_baseline_passes_its_checks",
        "1n1l2c1t",
        "steady",
        false,
    );
}

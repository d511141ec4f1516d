//! Scenarios under real schedulers, declared with the test-author API
//! (`ktstr::testing::KtstrTest`): scx_bpfland with the cpuset-churn
//! scenario on two LLCs, and the kernel's own scheduler as the baseline;
//! each must pass every check, and the monitor, reading the live guest
//! all along, must not have asked for a dump.

use ktstr::testing::KtstrTest;

fn healthy(report: Option<ktstr::run::RunReport>, workers_at_least: usize) {
    let Some(report) = report else {
        return; // skipped, loudly
    };
    assert!(report.monitor_samples > 10, "{}", report.monitor_samples);
    assert_eq!(report.dump, None, "{:?}", report.dump_reason);
    assert!(
        report.workers.len() >= workers_at_least,
        "{:?}",
        report.workers
    );
    ktstr_tests::assert_no_vm_left_behind();
}

#[test]
fn bpfland_cpuset_churn_on_two_llcs_passes_its_checks() {
    let report = KtstrTest::new("bpfland_cpuset_churn_on_two_llcs_passes_its_checks")
        .topology("1n2l2c1t")
        .scheduler("bpfland", &[])
        .scenario("cpuset-churn")
        .duration_secs(6)
        .check();
    if let Some(r) = &report {
        assert!(
            r.scheduler
                .as_deref()
                .is_some_and(|s| s.starts_with("bpfland"))
        );
    }
    // One spinner per CPU of each half: 2 + 2.
    healthy(report, 4);
}

#[test]
fn default_scheduler_steady_baseline_passes_its_checks() {
    let report = KtstrTest::new("default_scheduler_steady_baseline_passes_its_checks")
        .topology("1n1l2c1t")
        .scenario("steady")
        .duration_secs(6)
        .check();
    if let Some(r) = &report {
        assert_eq!(r.scheduler, None);
    }
    healthy(report, 4);
}

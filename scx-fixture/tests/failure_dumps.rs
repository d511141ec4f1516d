//! Failure dumps end to end: the real kernel under QEMU TCG runs
//! `scx_fixture` told to fail in a known way, and ktstr's report must show
//! that failure: the monitor's stall with the stalled task on the fixture's
//! DSQ, an error exit with its kind and message, and every user DSQ the
//! fixture created, a CPU the scheduler stops serving with its tasks
//! waiting on a vtime-ordered DSQ. Each report carries the share of the run
//! the guest spent frozen. Between them the tests run every mode of the
//! fixture: global, local, user and vtime.

mod common;

use std::time::Duration;

use ktstr::agent::proto::WorkerResult;
use ktstr::checks::{CheckKind, Thresholds};
use ktstr::run::RunReport;
use ktstr::testing::KtstrTest;
use ktstr_walker::render::{DsqReport, Placement, Report};
use scx_fixture::intf;

const FIXTURE: &str = env!("CARGO_BIN_EXE_scx_fixture");

fn fixture_test(name: &str, args: &[&str]) -> KtstrTest {
    KtstrTest::new(name)
        .topology("1n1l2c1t")
        .scheduler(FIXTURE, args)
}

/// A frozen dump was taken, and the report says what share of the workload
/// the guest spent frozen for it.
fn frozen_once(r: &RunReport) -> &Report {
    let dump = r.dump.as_ref().expect("a dump");
    let pause = dump
        .health
        .pause_ns
        .expect("a frozen capture has its pause");
    assert!(pause > 0, "{pause}");
    assert!(
        r.frozen_ratio > 0.0 && r.frozen_ratio < 0.05,
        "frozen {} of the run",
        r.frozen_ratio
    );
    dump
}

fn check(r: &RunReport, kind: CheckKind) -> &ktstr::checks::Check {
    r.checks
        .iter()
        .find(|c| c.kind == kind)
        .unwrap_or_else(|| panic!("no check {kind:?}: {:#?}", r.checks))
}

/// The fixture's DSQ `id` in the dump.
fn dsq(dump: &Report, id: u32) -> &DsqReport {
    dump.dsqs
        .iter()
        .find(|d| d.id == u64::from(id))
        .unwrap_or_else(|| panic!("no DSQ {id:#x} in the dump:\n{}", dump.to_text()))
}

/// The pids of the workers `which` picks.
fn pids(r: &RunReport, which: impl Fn(&WorkerResult) -> bool) -> Vec<i32> {
    r.workers
        .iter()
        .filter(|w| which(w))
        .map(|w| w.pid)
        .collect()
}

#[test]
fn a_task_the_scheduler_never_dispatches_is_caught_as_a_stall_on_its_dsq() {
    let scenario = common::stuck_next_to_spinners();
    let threshold = Duration::from_millis(1500);
    // The kernel's watchdog (6 s) ends the stall after the monitor (1.5 s).
    let report = fixture_test(
        "a_task_the_scheduler_never_dispatches_is_caught_as_a_stall_on_its_dsq",
        &["--mode=global", "--stall-comm=stuck", "--watchdog-ms=6000"],
    )
    .scenario_def(scenario)
    .duration_secs(5)
    .thresholds(Thresholds {
        max_gap: threshold,
        ..Thresholds::default()
    })
    .report();
    let Some(r) = report else { return };

    let caught = check(&r, CheckKind::MonitorQuiet);
    assert!(!caught.passed, "{caught:?}");
    let stuck = r
        .workers
        .iter()
        .find(|w| w.name == "stuck")
        .expect("the stuck worker reported");
    assert!(
        caught
            .detail
            .starts_with(&format!("stall: stuck[{}]", stuck.pid))
            && caught.detail.contains("queued on user 0xdead"),
        "{caught:?}"
    );
    let dump = frozen_once(&r);
    assert!(
        r.dump_reason
            .as_deref()
            .is_some_and(|d| d.contains("stall")),
        "{:?}",
        r.dump_reason
    );
    let task = dump
        .tasks
        .iter()
        .find(|t| t.pid == stuck.pid)
        .expect("the stuck task in the dump");
    assert_eq!(task.comm, "stuck");
    assert_eq!(
        task.placement,
        Placement::Queued {
            dsq: "user 0xdead".into()
        }
    );
    assert!(
        task.runnable_for_ms
            .is_some_and(|ms| ms > threshold.as_millis() as u64),
        "{task:?}"
    );
    let stall_dsq = dsq(dump, intf::FIXTURE_STALL_DSQ);
    assert!(
        stall_dsq.tasks.iter().any(|t| t.pid == Some(stuck.pid)),
        "{stall_dsq:?}"
    );
    // The fixture's own globals, named by its BTF: what its command line
    // put in `.rodata`.
    let bpf = dump.bpf.as_ref().expect("a bpf section");
    assert!(bpf.struct_ops.is_some(), "{bpf:?}");
    let rodata = bpf
        .maps
        .iter()
        .find(|m| m.name.ends_with(".rodata"))
        .unwrap_or_else(|| panic!("no .rodata map: {bpf:?}"));
    let global = |n: &str| {
        rodata
            .globals
            .iter()
            .find(|g| g.name == n)
            .map(|g| g.value.clone())
            .unwrap_or_else(|| panic!("{n} not in {rodata:?}"))
    };
    use ktstr_walker::render::bpf::Value;
    assert_eq!(global("stall_comm"), Value::Str("stuck".into()));
    assert_eq!(global("nr_user_dsqs"), Value::Uint(4));
    // Meanwhile the spinners run.
    let spinners = pids(&r, |w| w.name == "ktstr-spin");
    assert!(
        dump.tasks
            .iter()
            .any(|t| spinners.contains(&t.pid) && matches!(t.placement, Placement::Running { .. })),
        "no spinner running in the dump:\n{}",
        dump.to_text()
    );
    ktstr_tests::assert_no_vm_left_behind();
}

#[test]
fn an_injected_scx_bpf_error_is_reported_with_its_kind_and_message() {
    // The exit hold keeps the exiting scheduler reachable long enough for
    // the monitor's 100 ms samples to see it. The error's clock starts
    // with the workers: starting them took 6.5 s once in the nested tier,
    // and an error counted from attaching came and went before the
    // monitor's first sample.
    let report = fixture_test(
        "an_injected_scx_bpf_error_is_reported_with_its_kind_and_message",
        &[
            "--mode=local",
            "--error-after-ms=1500",
            "--error-clock-comm=ktstr-",
            "--exit-hold-ms=3000",
        ],
    )
    .scenario("steady")
    .duration_secs(5)
    .report();
    let Some(r) = report else { return };

    let dump = frozen_once(&r);
    let s = &dump.scheduler;
    assert!(s.attached, "{s:?}");
    assert_eq!(s.ops_name, "fixture");
    assert_eq!(s.exit_kind_name, "SCX_EXIT_ERROR_BPF", "{s:?}");
    assert_eq!(s.exit_reason, "scx_bpf_error");
    assert!(
        s.exit_msg
            .ends_with("fixture: injected error after 1500 ms"),
        "{s:?}"
    );
    let caught = check(&r, CheckKind::MonitorQuiet);
    assert!(
        !caught.passed
            && caught.detail.contains("SCX_EXIT_ERROR_BPF")
            && caught.detail.contains("injected error"),
        "{caught:?}"
    );
    assert!(!r.scheduler_survived);
    let end = check(&r, CheckKind::SchedulerSurvived);
    assert!(
        !end.passed && end.detail.contains("exited: SCX_EXIT_ERROR_BPF (1025)"),
        "{end:?}"
    );
    ktstr_tests::assert_no_vm_left_behind();
}

#[test]
fn every_user_dsq_the_fixture_creates_is_in_the_dump_with_its_tasks() {
    let nr_dsqs = 5;
    let report = fixture_test(
        "every_user_dsq_the_fixture_creates_is_in_the_dump_with_its_tasks",
        &["--mode=user", &format!("--user-dsqs={nr_dsqs}")],
    )
    .scenario("oversubscribe")
    .duration_secs(4)
    .dump_at(Duration::from_secs(2))
    .report();
    let Some(r) = report else { return };

    assert_eq!(r.dump_reason.as_deref(), Some("--dump-at 2s"));
    let dump = frozen_once(&r);
    let base = u64::from(intf::FIXTURE_USER_DSQ_BASE);
    let mut user: Vec<_> = dump
        .dsqs
        .iter()
        .filter(|d| d.name.starts_with("user "))
        .collect();
    user.sort_by_key(|d| d.id);
    assert_eq!(
        user.iter().map(|d| d.id).collect::<Vec<_>>(),
        (base..base + nr_dsqs).collect::<Vec<_>>(),
        "{}",
        dump.to_text()
    );
    for d in &user {
        assert_eq!(d.tasks.len(), d.nr as usize, "{d:?}");
        assert!(!d.walk.truncated, "{d:?}");
    }
    // Six spinners on two CPUs: some wait on the user DSQs.
    assert!(
        user.iter().map(|d| d.nr).sum::<u32>() > 0,
        "{}",
        dump.to_text()
    );
    assert!(r.scheduler_survived, "{:#?}", r.checks);
    ktstr_tests::assert_no_vm_left_behind();
}

#[test]
fn a_cpu_the_scheduler_stops_serving_leaves_its_tasks_on_the_vtime_dsq() {
    // steady on 2 CPUs: spinners on CPU 0, duty-cycle workers on CPU 1,
    // which ops.dispatch() stops serving after 1 s.
    let report = fixture_test(
        "a_cpu_the_scheduler_stops_serving_leaves_its_tasks_on_the_vtime_dsq",
        &[
            "--mode=vtime",
            "--stall-cpu=1",
            "--stall-after-ms=1000",
            "--watchdog-ms=7000",
        ],
    )
    .scenario("steady")
    .duration_secs(5)
    .thresholds(Thresholds {
        max_gap: Duration::from_millis(1500),
        ..Thresholds::default()
    })
    .report();
    let Some(r) = report else { return };

    let caught = check(&r, CheckKind::MonitorQuiet);
    assert!(
        !caught.passed && caught.detail.contains("queued on user 0x200"),
        "{caught:?}"
    );
    let dump = frozen_once(&r);
    let cpu1 = dump.cpus.iter().find(|c| c.cpu == 1).expect("cpu 1");
    assert!(cpu1.curr_is_idle, "{}", dump.to_text());
    let vtime = dsq(dump, intf::FIXTURE_VTIME_DSQ);
    let duty = pids(&r, |w| w.cgroup == "duty");
    assert!(
        vtime
            .tasks
            .iter()
            .any(|t| t.pid.is_some_and(|p| duty.contains(&p))),
        "{vtime:?}"
    );
    // The DSQ holds its tasks in vtime order.
    let vtimes: Vec<u64> = vtime
        .tasks
        .iter()
        .filter_map(|q| dump.tasks.iter().find(|t| t.addr == q.addr))
        .map(|t| t.dsq_vtime)
        .collect();
    assert_eq!(vtimes.len(), vtime.tasks.len());
    assert!(vtimes.is_sorted(), "{vtimes:?}");
    ktstr_tests::assert_no_vm_left_behind();
}

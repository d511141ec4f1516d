//! The fixture as a scheduler author declares tests for their own
//! scheduler: `#[ktstr_test]` with the binary cargo built, across its
//! queueing modes (a gauntlet over `args` would need profiles; modes are
//! separate tests here), and one that is broken on purpose.

use ktstr::ktstr_test;
use ktstr::testing::Case;

/// Every task through user DSQs on two LLCs: a sound scheduler passes
/// every check of the steady scenario.
#[ktstr_test(
    topology = "1n2l1c1t",
    scheduler = env!("CARGO_BIN_EXE_scx_fixture"),
    args = ["--mode=user"],
    scenario = "steady",
    duration = "3s"
)]
fn user_dsqs_pass_the_steady_checks() {}

/// An injected error fails the run: the test sees the failed checks and
/// the dump the monitor froze the guest for, without panicking.
#[ktstr_test(
    topology = "1n1l2c1t",
    scheduler = env!("CARGO_BIN_EXE_scx_fixture"),
    args = [
        "--mode=local",
        "--error-after-ms=1000",
        "--error-clock-comm=ktstr-",
        "--exit-hold-ms=3000"
    ],
    scenario = "steady",
    duration = "4s"
)]
fn an_error_exit_fails_the_run_with_a_dump(t: &mut Case) {
    let name = t.name().to_string();
    let r = t.run_allowing_failures();
    assert!(!r.passed(), "{}", r.to_text());
    assert!(!r.scheduler_survived);
    let dump = r
        .dump
        .as_ref()
        .expect("the monitor froze the guest for a dump");
    assert_eq!(
        dump.scheduler.exit_kind_name,
        "SCX_EXIT_ERROR_BPF",
        "{}",
        r.to_text()
    );
    let saved = ktstr::testing::report_path(&name);
    assert!(saved.is_file(), "{}", saved.display());
}

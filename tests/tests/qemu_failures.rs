//! What a user sees when a run goes wrong: a scheduler that dies before it
//! attaches, a guest that does not come up in time, a kernel that is not
//! a sched_ext kernel. Each error says what happened, and nothing (QEMU,
//! guest RAM files) is left behind.

use std::path::PathBuf;
use std::time::Duration;

use ktstr::kernel::ResolveError;
use ktstr::kernel::config::ConfigError;
use ktstr::session::{SchedulerConfig, Session, SessionConfig, SessionError};
use ktstr::vm::VmError;
use ktstr_tests::assert_no_vm_left_behind;

fn start_err(cfg: &SessionConfig) -> SessionError {
    match Session::start(cfg) {
        Ok(_) => panic!("the session started"),
        Err(e) => e,
    }
}

#[test]
fn scheduler_that_exits_before_attaching_is_reported_with_its_output() {
    const TEST: &str = "scheduler_that_exits_before_attaching_is_reported_with_its_output";
    let Some(dir) = ktstr_tests::qemu_kernel_or_skip(TEST) else {
        return;
    };
    let mut cfg = SessionConfig::new(dir.display().to_string(), "1n1l1c1t".parse().unwrap());
    // A real dynamic program (dash, with its libraries) standing in for a
    // scheduler that crashes at start.
    cfg.scheduler = Some(SchedulerConfig {
        binary: PathBuf::from("/bin/sh"),
        args: vec![
            "-c".into(),
            "echo boom-from-the-scheduler >&2; exit 3".into(),
        ],
    });
    let SessionError::SchedulerFailed { reason, output } = start_err(&cfg) else {
        panic!("not a scheduler failure");
    };
    assert!(reason.contains("exited before attaching"), "{reason}");
    assert!(reason.contains("exit status: 3"), "{reason}");
    assert!(
        output.contains("boom-from-the-scheduler"),
        "its output is in the error: {output}"
    );
    assert_no_vm_left_behind();
}

#[test]
fn guest_that_does_not_come_up_in_time_is_killed_with_its_console_tail() {
    const TEST: &str = "guest_that_does_not_come_up_in_time_is_killed_with_its_console_tail";
    let Some(dir) = ktstr_tests::qemu_kernel_or_skip(TEST) else {
        return;
    };
    let mut cfg = SessionConfig::new(dir.display().to_string(), "1n1l1c1t".parse().unwrap());
    // Under TCG the kernel needs seconds to reach /init; under KVM a few
    // hundred ms, so this is a timeout on both.
    cfg.boot_timeout = Duration::from_millis(50);
    let e = start_err(&cfg);
    let SessionError::Vm(VmError::Timeout { waiting, .. }) = &e else {
        panic!("not a timeout: {e}");
    };
    assert_eq!(waiting, "the guest agent's hello");
    assert!(e.to_string().contains("console tail"), "{e}");
    assert_no_vm_left_behind();
}

#[test]
fn kernel_without_sched_ext_is_refused_naming_the_option() {
    const TEST: &str = "kernel_without_sched_ext_is_refused_naming_the_option";
    let Some(dir) = ktstr_tests::qemu_kernel_or_skip(TEST) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(dir.join("vmlinux"), tmp.path().join("vmlinux")).unwrap();
    let config = std::fs::read_to_string(dir.join("config")).unwrap();
    let config = config.replace(
        "CONFIG_SCHED_CLASS_EXT=y",
        "# CONFIG_SCHED_CLASS_EXT is not set",
    );
    std::fs::write(tmp.path().join("config"), config).unwrap();
    let cfg = SessionConfig::new(
        tmp.path().join("vmlinux").display().to_string(),
        "1n1l1c1t".parse().unwrap(),
    );
    let e = start_err(&cfg);
    assert!(
        matches!(
            &e,
            SessionError::Config(ConfigError::Missing { option: "CONFIG_SCHED_CLASS_EXT", found, .. })
                if found == "# CONFIG_SCHED_CLASS_EXT is not set"
        ),
        "{e}"
    );
}

#[test]
fn unknown_kernel_says_what_to_pass() {
    let cfg = SessionConfig::new("no-such-kernel-9.9", "1n1l1c1t".parse().unwrap());
    let e = start_err(&cfg);
    assert!(
        matches!(&e, SessionError::Kernel(ResolveError::NotFound { spec, .. }) if spec == "no-such-kernel-9.9")
            || matches!(&e, SessionError::Kernel(ResolveError::Fetch { spec, .. }) if spec == "no-such-kernel-9.9"),
        "{e}"
    );
    assert!(e.to_string().contains("ktstr kernel fetch"), "{e}");
}

#[test]
fn kvm_backend_without_hardware_virtualization_says_so() {
    if ktstr_vmm::hardware_virt() {
        return ktstr_tests::skip(
            "kvm_backend_without_hardware_virtualization_says_so",
            ktstr_tests::Need::Tool,
            "this host has VT-x/AMD-V: the KVM backend works here",
        );
    }
    let mut cfg = SessionConfig::new("no-kernel-needed", "1n1l1c1t".parse().unwrap());
    cfg.backend = ktstr::vm::Backend::Kvm;
    let e = start_err(&cfg);
    assert!(matches!(e, SessionError::NoHardwareVirt), "{e}");
    assert!(e.to_string().contains("--backend qemu"), "{e}");
}

//! `ktstr run` as users run it: a real kernel under QEMU with scx_bpfland,
//! a mid-run dump, the JSON report; and Ctrl-C in the middle of a run.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ktstr::run::RunReport;
use ktstr_walker::render::SchedClass;

#[test]
fn run_with_a_mid_run_dump_reports_workers_and_scheduler() {
    const TEST: &str = "run_with_a_mid_run_dump_reports_workers_and_scheduler";
    let Some(kernel) = ktstr_tests::qemu_kernel_and_bpfland_or_skip(TEST) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("run.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ktstr"))
        .args(["run", "--kernel", &kernel, "--scheduler", "bpfland"])
        .args(["--topology", "1n1l2c1t", "--scenario", "steady"])
        .args([
            "--duration",
            "4s",
            "--dump-at",
            "2s",
            "--min-throughput",
            "1",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("--- dump (--dump-at 2s) ---") && stdout.contains("PASSED"),
        "{stdout}"
    );

    let report: RunReport = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(report.passed(), "{:#?}", report.checks);
    // The seven of every run, and wakeup latency: the duty-cycle workers
    // measure it.
    assert_eq!(report.checks.len(), 8, "{:#?}", report.checks);
    assert!(
        report
            .checks
            .iter()
            .any(|c| c.kind == ktstr::checks::CheckKind::Throughput
                && c.passed
                && c.detail.contains("threshold 1/s per worker")),
        "{:#?}",
        report.checks
    );
    assert!(
        report
            .checks
            .iter()
            .any(|c| c.kind == ktstr::checks::CheckKind::WakeupLatency && c.detail.contains("p99")),
        "{:#?}",
        report.checks
    );
    assert_eq!(report.scenario, "steady");
    assert!(
        report
            .scheduler
            .as_deref()
            .is_some_and(|s| s.starts_with("bpfland"))
    );
    // steady on 2 CPUs: 2 spinners on CPU 0, 2 duty-cycle workers on CPU 1.
    let in_cgroup = |cg: &str| report.workers.iter().filter(|w| w.cgroup == cg).count();
    assert_eq!(
        (in_cgroup("spin"), in_cgroup("duty")),
        (2, 2),
        "{:?}",
        report.workers
    );
    let dump = report.dump.expect("--dump-at gives a dump");
    assert_eq!(report.dump_reason.as_deref(), Some("--dump-at 2s"));
    assert!(dump.scheduler.attached);
    for w in &report.workers {
        assert!(w.iterations > 0, "{w:?}");
        let t = dump
            .tasks
            .iter()
            .find(|t| t.pid == w.pid)
            .unwrap_or_else(|| panic!("worker {} not in the dump", w.pid));
        assert_eq!(t.comm, w.name);
        assert_eq!(t.cgroup, Some(format!("/{}", w.cgroup)), "in its cgroup");
        assert_eq!(t.class, SchedClass::Ext);
        let home = if w.cgroup == "spin" { 0 } else { 1 };
        assert_eq!(w.cpus, vec![home], "{w:?} stays in its cpuset");
    }
    assert!(
        report.frozen_ratio > 0.0 && report.frozen_ratio < 1.0,
        "{}",
        report.frozen_ratio
    );
}

#[test]
fn ctrl_c_mid_run_leaves_no_qemu_or_files_behind() {
    const TEST: &str = "ctrl_c_mid_run_leaves_no_qemu_or_files_behind";
    let Some(kernel) = ktstr_tests::qemu_kernel_or_skip(TEST).map(|d| d.display().to_string())
    else {
        return;
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_ktstr"))
        .args(["run", "--kernel", &kernel, "--duration", "120s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Kept open to the end: ktstr still writes to it after the signal.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        seen.push(line.clone());
        if line.contains("workload running") {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.contains("workload running")),
        "{seen:?}"
    );
    let tag = format!("ktstr-{pid}-");
    let qemu_running = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&tag))
                .unwrap_or(false)
        })
    };
    assert!(qemu_running(), "QEMU of the run is up");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(status.code(), Some(130), "interrupted: {rest:?}");
    assert!(rest.iter().any(|l| l.contains("interrupted")), "{rest:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while qemu_running() {
        assert!(Instant::now() < deadline, "QEMU outlived ktstr");
        std::thread::sleep(Duration::from_millis(50));
    }
    let leftovers: Vec<String> = ["/dev/shm", &std::env::temp_dir().display().to_string()]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&tag))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

/// SIGTERM `child`, wait for it; its status and what it wrote to stderr.
fn sigterm(child: &mut std::process::Child) -> (std::process::ExitStatus, String) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr).unwrap();
    }
    (status, stderr)
}

/// SIGTERM at every phase of a run (reading the kernel, building the
/// initramfs, booting, starting the scheduler, running, dumping) leaves no
/// QEMU and no file behind.
#[test]
fn sigterm_at_any_phase_leaves_nothing_behind() {
    const TEST: &str = "sigterm_at_any_phase_leaves_nothing_behind";
    let Some(kernel) = ktstr_tests::qemu_kernel_or_skip(TEST) else {
        return;
    };
    for delay_ms in [30, 300, 1000, 2500, 5000] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ktstr"))
            .args(["run", "--duration", "20s", "--dump-at", "4s", "--kernel"])
            .arg(&kernel)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let tag = format!("ktstr-{}-", child.id());
        std::thread::sleep(Duration::from_millis(delay_ms));
        let (status, stderr) = sigterm(&mut child);
        // So early the handler may not be installed yet: then the signal
        // ends ktstr before it made anything.
        let early = std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGTERM);
        assert!(
            status.code() == Some(130) || early,
            "after {delay_ms} ms: {status}: {stderr}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let qemu = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&tag))
            });
            if !qemu {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "QEMU outlived ktstr ({delay_ms} ms)"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let left: Vec<String> = ["/dev/shm", &std::env::temp_dir().display().to_string()]
            .iter()
            .flat_map(|d| std::fs::read_dir(d).unwrap().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(&tag))
            .collect();
        assert!(
            left.is_empty(),
            "after {delay_ms} ms, left behind: {left:?}"
        );
    }
}

/// The KVM backend's VM is threads of ktstr itself: SIGTERM while it boots
/// must still remove its files. Needs only /dev/kvm: without VT-x/AMD-V
/// (KTSTR_KVM_ANYWAY) the guest gets through early boot, long enough.
#[test]
fn sigterm_during_a_kvm_boot_leaves_no_files_behind() {
    const TEST: &str = "sigterm_during_a_kvm_boot_leaves_no_files_behind";
    if !std::path::Path::new("/dev/kvm").exists() {
        ktstr_tests::skip(TEST, ktstr_tests::Need::HwVirt, "no /dev/kvm");
        return;
    }
    let Ok(kernel) = ktstr_tests::cached_kernel_dir() else {
        ktstr_tests::skip(TEST, ktstr_tests::Need::Kernel, "no fetched kernel");
        return;
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_ktstr"))
        .args(["run", "--backend", "kvm", "--duration", "60s", "--kernel"])
        .arg(&kernel)
        .env("KTSTR_KVM_ANYWAY", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tag = format!("ktstr-{}-", child.id());
    let leftovers = || -> Vec<std::path::PathBuf> {
        ["/dev/shm", &std::env::temp_dir().display().to_string()]
            .iter()
            .flat_map(|d| std::fs::read_dir(d).unwrap().flatten())
            .filter(|e| e.file_name().to_string_lossy().contains(&tag))
            .map(|e| e.path())
            .collect()
    };
    // The VM starts right after its initramfs is written.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !leftovers().iter().any(|d| d.join("initrd").exists()) {
        assert!(
            Instant::now() < deadline,
            "no VM directory with an initrd appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "ktstr ended before booting"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (status, stderr) = sigterm(&mut child);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(leftovers().is_empty(), "left behind: {:?}", leftovers());
}

#[test]
fn shell_runs_commands_in_the_guest_under_the_scheduler() {
    const TEST: &str = "shell_runs_commands_in_the_guest_under_the_scheduler";
    let Some(kernel) = ktstr_tests::qemu_kernel_and_bpfland_or_skip(TEST) else {
        return;
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_ktstr"))
        .args(["shell", "--kernel", &kernel, "--scheduler", "bpfland"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Type only once the prompt is there, as a user would.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("ktstr# ") {
        assert!(
            Instant::now() < deadline,
            "no prompt: {}",
            String::from_utf8_lossy(&seen)
        );
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "console closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    stdin
        .write_all(b"cat /sys/kernel/sched_ext/root/ops; echo sum=$((6*7)); ls /ktstr/bin; exit\n")
        .unwrap();
    drop(stdin);
    stdout.read_to_end(&mut seen).unwrap();
    let status = child.wait().unwrap();
    let out = String::from_utf8_lossy(&seen);
    assert!(status.success(), "{status}: {out}");
    assert!(out.contains("sum=42"), "{out}");
    assert!(
        out.contains("bpfland_"),
        "ops name read in the guest: {out}"
    );
    assert!(
        out.contains("scx_bpfland"),
        "the scheduler is in /ktstr/bin: {out}"
    );
}

#[test]
fn a_failed_check_exits_1_and_carries_the_monitors_last_look() {
    const TEST: &str = "a_failed_check_exits_1_and_carries_the_monitors_last_look";
    let Some(kernel) = ktstr_tests::qemu_kernel_or_skip(TEST).map(|d| d.display().to_string())
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("run.json");
    // No two spinners ever get exactly the same CPU time: a 0% fairness
    // threshold must fail.
    let out = Command::new(env!("CARGO_BIN_EXE_ktstr"))
        .args(["run", "--kernel", &kernel, "--scenario", "oversubscribe"])
        .args(["--duration", "3s", "--fairness-spread", "0", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL fair shares within each cgroup") && stdout.contains("FAILED in"),
        "{stdout}"
    );
    let report: RunReport = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(!report.passed());
    let fair = report
        .checks
        .iter()
        .find(|c| c.kind == ktstr::checks::CheckKind::FairShares)
        .unwrap();
    assert!(
        !fair.passed && fair.detail.contains("over the 0% threshold"),
        "{fair:?}"
    );
    let reason = report.dump_reason.as_deref().unwrap_or_default();
    assert!(reason.starts_with("checks failed (fair shares"), "{reason}");
    // The last live sample may come after the first workers exited at the
    // workload's end, and is read while the guest runs: only its shape is
    // checked, not every worker.
    let dump = report.dump.expect("the last live sample");
    assert_eq!(dump.cpus.len(), 2, "one rq per vCPU");
    assert!(dump.tasks.len() > 10, "{} tasks", dump.tasks.len());
    assert_eq!(dump.health.pause_ns, None, "not frozen");
}

//! A guest that stops talking mid-run: `ktstr run` ends by its own
//! deadline (the scenario's duration plus a grace, shortened here through
//! `KTSTR_FINISH_GRACE_SECS`) with an error saying what it waited for and
//! the console's tail, and leaves no QEMU and no file behind.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Pids of processes whose command line holds `tag`.
fn pids_with(tag: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmd).contains(tag).then_some(pid)
        })
        .collect()
}

/// `ktstr run` with `extra` arguments, its QEMU SIGSTOPped once the
/// workload runs: its exit status, stderr and how long it took after the
/// freeze; panics if it left QEMU or a file behind.
fn run_and_freeze(kernel: &std::path::Path, extra: &[&str]) -> (Option<i32>, String, Duration) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ktstr"))
        .args(["run", "--duration", "3s", "--kernel"])
        .arg(kernel)
        .args(extra)
        .env("KTSTR_FINISH_GRACE_SECS", GRACE.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tag = format!("ktstr-{}-", child.id());
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("workload running") {
            break;
        }
        line.clear();
    }
    assert!(seen.contains("workload running"), "{seen}");
    // The whole guest freezes: no message, no console line, no QMP
    // answer from now on.
    let qemu = pids_with(&tag);
    assert_eq!(qemu.len(), 1, "one QEMU for the run: {qemu:?}");
    let stopped = Instant::now();
    // SAFETY: signalling the QEMU our child started.
    unsafe { libc::kill(qemu[0], libc::SIGSTOP) };

    let status = child.wait().unwrap();
    let took = stopped.elapsed();
    stderr.read_to_string(&mut seen).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids_with(&tag).is_empty() {
        assert!(Instant::now() < deadline, "QEMU outlived ktstr");
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<String> = ["/dev/shm", &std::env::temp_dir().display().to_string()]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&tag))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    (status.code(), seen, took)
}

/// The run's grace past the scenario's duration, shortened.
const GRACE: u64 = 5;

/// With the monitor's stall trigger off (a threshold longer than the run),
/// the run loop's own deadline ends the wait for the guest's report. On
/// the way, each sample asks QEMU for the vCPU registers, which it no
/// longer answers: that wait is bounded too (10 s, not QMP's minute).
#[test]
fn guest_that_hangs_mid_run_ends_by_the_deadline_with_the_console_tail() {
    const TEST: &str = "guest_that_hangs_mid_run_ends_by_the_deadline_with_the_console_tail";
    let Some(kernel) = ktstr_tests::qemu_kernel_or_skip(TEST) else {
        return;
    };
    let (code, stderr, took) = run_and_freeze(&kernel, &["--max-gap", "1h"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("timed out") && stderr.contains("waiting for the workload to finish"),
        "{stderr}"
    );
    // The tail holds the kernel's own lines (timestamped), read back
    // from the console file.
    let tail = stderr
        .split("--- console tail ---")
        .nth(1)
        .unwrap_or_default();
    assert!(tail.contains("[    "), "{stderr}");
    // Duration 3 s + grace from the start of the workload, plus teardown:
    // far from the minute the default grace takes.
    assert!(
        took < Duration::from_secs(3 + GRACE + 20),
        "ended {took:?} after the guest froze"
    );
}

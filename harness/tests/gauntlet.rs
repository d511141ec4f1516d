//! `ktstr gauntlet` and `ktstr report merge` as a user runs them: a real
//! kernel under QEMU with scx_bpfland, a budget of one VM out of four
//! combinations, the JSON reports, and their merged summary.

use std::process::Command;

use ktstr::run::RunReport;

#[test]
fn a_gauntlet_within_its_budget_and_its_merged_reports() {
    const TEST: &str = "a_gauntlet_within_its_budget_and_its_merged_reports";
    let Some(kernel) = ktstr_tests::qemu_kernel_and_bpfland_or_skip(TEST) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let reports = tmp.path().join("reports");
    let out = Command::new(env!("CARGO_BIN_EXE_ktstr"))
        .args(["gauntlet", "--kernel", &kernel, "--scheduler", "bpfland"])
        .args(["--on", "1n1l2c1t", "--on", "1n2l1c1t"])
        .args(["--profile", "default", "--profile", "sticky"])
        .args(["--duration", "2s", "--max-vms", "1", "--json-dir"])
        .arg(&reports)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.ends_with("1 runs: 1 passed, 0 failed")
            || stdout.contains("1 runs: 1 passed, 0 failed"),
        "{stdout}"
    );
    let files: Vec<_> = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let r: RunReport = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    // Of four combinations, the one a budget of one keeps is the last:
    // 1n2l1c1t with the sticky profile.
    assert_eq!(r.test_name.as_deref(), Some("steady@1n2l1c1t+sticky"));
    assert_eq!(r.topology, "1n2l1c1t");
    assert!(r.passed(), "{}", r.to_text());

    let merged = Command::new(env!("CARGO_BIN_EXE_ktstr"))
        .args(["report", "merge", "--json"])
        .arg(&reports)
        .output()
        .unwrap();
    assert_eq!(merged.status.code(), Some(0));
    let s: ktstr::summary::Summary = serde_json::from_slice(&merged.stdout).unwrap();
    assert_eq!((s.passed, s.failed), (1, 0));
    assert_eq!(s.runs[0].name, "steady@1n2l1c1t+sticky");
    ktstr_tests::assert_no_vm_left_behind();
}

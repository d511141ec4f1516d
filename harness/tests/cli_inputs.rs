//! Bad `ktstr run` arguments get a clear error and exit code 2 before
//! anything boots: a scheduler that is not an ELF program, a topology
//! string that is not one, NUMA nodes without enough RAM.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use ktstr_tests::{Need, skip};

fn ktstr(args: &[&str]) -> (Option<i32>, String, Duration) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ktstr"))
        .args(args)
        .output()
        .expect("run ktstr");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t.elapsed(),
    )
}

#[test]
fn scheduler_that_is_not_an_elf_is_refused() {
    let Ok(kernel) = ktstr_tests::cached_kernel_dir() else {
        return skip(
            "scheduler_that_is_not_an_elf_is_refused",
            Need::Kernel,
            "no fetched kernel: run ./setup.sh",
        );
    };
    let kernel = kernel.display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("scx_script");
    std::fs::write(&script, "#!/bin/sh\nexec scx_bpfland\n").unwrap();
    let junk = tmp.path().join("scx_junk");
    std::fs::write(&junk, [0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0xff, 0xff]).unwrap();
    for f in [&script, &junk] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = f.display().to_string();
        let (code, err, took) = ktstr(&["run", "--kernel", &kernel, "--scheduler", &path]);
        assert_eq!(code, Some(2), "{path}: {err}");
        assert!(
            err.contains(&path) && err.contains("is not an x86-64 ELF"),
            "{path}: {err}"
        );
        // Refused while building the initramfs: no guest was booted.
        assert!(took < Duration::from_secs(60), "{path} took {took:?}");
    }
}

#[test]
fn wrong_topology_strings_are_refused() {
    for (topology, says) in [
        (
            "garbage",
            "is not of the form <nodes>n<llcs>l<cores>c<threads>t",
        ),
        ("1n1l", "is not of the form"),
        ("1n1l1c1t9", "is not of the form"),
        ("0n1l1c1t", "every count must be at least 1"),
        ("3n2l1c1t", "do not split evenly"),
        ("1n1l4096c2t", "more than the 1024 supported"),
    ] {
        let (code, err, _) = ktstr(&["run", "--topology", topology, "--kernel", "/nonexistent"]);
        assert_eq!(code, Some(2), "{topology}: {err}");
        assert!(err.contains(says), "{topology}: {err}");
    }
}

/// NUMA nodes with too little RAM each are refused before anything boots,
/// saying how much the topology needs.
#[test]
fn nodes_without_enough_memory_are_refused() {
    let (code, err, _) = ktstr(&[
        "run",
        "--topology",
        "16n16l1c1t",
        "--memory",
        "512",
        "--kernel",
        "/nonexistent",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("16 NUMA nodes") && err.contains("give at least 1024 MiB"),
        "{err}"
    );
}

//! The `ktstr` binary as users run it.

use std::process::Command;

use ktstr_tests::{Need, skip};

fn ktstr(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ktstr"))
        .args(args)
        .output()
        .expect("run ktstr")
}

#[test]
fn unknown_kernel_is_an_infrastructure_error_that_says_what_to_do() {
    let out = ktstr(&["kernel", "info", "/no/such/kernel"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/no/such/kernel") && err.contains("ktstr kernel fetch"),
        "{err}"
    );
}

#[test]
fn fetch_prints_the_release_dir_last_and_info_reads_it() {
    let Ok(_) = ktstr_tests::cached_kernel_dir() else {
        return skip(
            "fetch_prints_the_release_dir_last",
            Need::Kernel,
            "no fetched kernel: run ./setup.sh",
        );
    };
    // --offline: the cache already holds a kernel; this checks the CLI
    // contract (last stdout line = release dir), not the network.
    let out = ktstr(&["kernel", "fetch", "--offline"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().last().expect("a line");
    assert!(std::path::Path::new(dir).join("vmlinux").is_file(), "{dir}");

    let info = ktstr(&["kernel", "info", dir, "--json"]);
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    let release = v["release"].as_str().expect("release");
    assert!(dir.ends_with(release), "{dir} vs banner release {release}");
    assert!(v["pvh_entry"].as_u64().is_some());
    assert!(v["btf_error"].is_null(), "{}", v["btf_error"]);
    let groups = v["layout"].as_array().expect("layout groups");
    assert!(
        groups
            .iter()
            .any(|g| g["group"] == "scx_sched" && g["struct_found"] == true)
    );
}

#[test]
fn bad_run_arguments_say_what_is_wrong_before_any_vm_starts() {
    for (args, says) in [
        (
            &["run", "--topology", "2n3l1c1t"][..],
            "3 LLCs do not split evenly over 2 NUMA nodes",
        ),
        (&["run", "--topology", "four"][..], "is not of the form"),
        (
            &["run", "--scenario", "nope", "--kernel", "/dev/null"][..],
            "no scenario named \"nope\"",
        ),
        (&["run", "--duration", "soon"][..], "not a duration"),
        (&["run", "--backend", "xen"][..], "use auto, qemu or kvm"),
        (
            &[
                "run",
                "--dump-at",
                "9",
                "--duration",
                "2",
                "--kernel",
                "/dev/null",
            ][..],
            "not within",
        ),
    ] {
        let out = ktstr(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// `ktstr dump` on things that are not core files: each is refused at once
/// (a FIFO is not opened and waited on), with what it is and exit code 2.
#[test]
fn dump_refuses_what_is_not_a_core_file() {
    let Ok(kernel) = ktstr_tests::cached_kernel_dir() else {
        skip(
            "dump_refuses_what_is_not_a_core_file",
            Need::Kernel,
            "no fetched kernel",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let truncated = dir.path().join("truncated");
    std::fs::write(&truncated, b"\x7fELF\x02\x01\x01").unwrap();
    let kernel = kernel.display().to_string();
    for (core, says) in [
        (dir.path().to_path_buf(), "is a directory"),
        (fifo, "is a FIFO"),
        ("/dev/null".into(), "is a device"),
        (empty, "is empty"),
        (truncated, "malformed ELF core"),
    ] {
        let core = core.display().to_string();
        let started = std::time::Instant::now();
        let out = ktstr(&["dump", "--core", &core, "--vmlinux", &kernel]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{core}: {err}");
        assert!(err.contains(says), "{core}: {err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{core} took {:?}",
            started.elapsed()
        );
    }
}

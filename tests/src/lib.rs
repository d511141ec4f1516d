//! Support for the workspace-level tests: finding real artifacts (a fetched
//! kernel, host tools) and skipping loudly when they are not here.
//!
//! A test that cannot run calls [`skip`] (from `ktstr::testing`), which
//! prints `SKIPPED <test>: <reason>` to stderr. When the environment
//! variable `KTSTR_REQUIRE` names the skip's category (comma-separated, or
//! `all`), the skip panics instead: CI sets it for everything its machine
//! provides, so a missing kernel fails CI rather than passing silently.

use std::path::PathBuf;

pub mod qemu;

pub use ktstr::testing::{Need, have_tool, required, skip};

/// The kernel the real-kernel tests use: `KTSTR_KERNEL` (a release directory
/// or vmlinux path), else the newest complete release in the kernel cache.
pub fn cached_kernel_dir() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("KTSTR_KERNEL") {
        return Ok(PathBuf::from(p));
    }
    ktstr::kernel::store::newest_fetched().map_err(|e| e.to_string())
}

/// The layouts a synthetic-kernel test runs on: the testkit's compact one
/// and, when a kernel is cached, the one its BTF gives (otherwise `test`
/// reports that part skipped).
pub fn synthetic_layouts(test: &str) -> Vec<(&'static str, ktstr_walker::Layout)> {
    let mut out = vec![("compact", ktstr_walker::testkit::compact_layout())];
    match cached_kernel_dir() {
        Ok(dir) => {
            let btf = ktstr_walker::kernel::btf::KernelBtf::open(dir.join("vmlinux"))
                .expect("BTF of the fetched kernel");
            out.push(("real 7.x BTF", btf.layout()));
        }
        Err(e) => skip(&format!("{test} (real layout part)"), Need::Kernel, &e),
    }
    out
}

/// The kernel for a test that boots it under QEMU, or `None` after
/// reporting why the test is skipped.
pub fn qemu_kernel_or_skip(test: &str) -> Option<PathBuf> {
    if !have_tool("qemu-system-x86_64") {
        skip(
            test,
            Need::Tool,
            "qemu-system-x86_64 not installed (./setup.sh installs it)",
        );
        return None;
    }
    match cached_kernel_dir() {
        Ok(d) => Some(d),
        Err(e) => {
            skip(test, Need::Kernel, &e);
            None
        }
    }
}

/// The scx_bpfland binary (`./setup.sh` builds it), or `None` after
/// reporting why the test is skipped.
pub fn bpfland_or_skip(test: &str) -> Option<PathBuf> {
    scheduler_or_skip(test, "bpfland")
}

/// The scheduler `name` (`bpfland`, `lavd`: `./setup.sh` builds them), or
/// `None` after reporting why the test is skipped.
pub fn scheduler_or_skip(test: &str, name: &str) -> Option<PathBuf> {
    match ktstr::scheduler::resolve(name) {
        Ok(bin) => Some(bin),
        Err(e) => {
            skip(test, Need::Tool, &e.to_string());
            None
        }
    }
}

/// The kernel directory (as a `--kernel` argument) and scx_bpfland, both
/// needed by a CLI test that boots bpfland under QEMU; `None` after
/// reporting why the test is skipped.
pub fn qemu_kernel_and_bpfland_or_skip(test: &str) -> Option<String> {
    let kernel = qemu_kernel_or_skip(test)?.display().to_string();
    bpfland_or_skip(test)?;
    Some(kernel)
}

/// Panics if this process left a QEMU child, a guest RAM file or a VM
/// directory (logs, sockets, initramfs) behind.
pub fn assert_no_vm_left_behind() {
    let me = std::process::id();
    let tmp = std::env::temp_dir();
    let files: Vec<String> = [std::path::Path::new("/dev/shm"), tmp.as_path()]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|d| d.flatten())
        .map(|e| e.path().display().to_string())
        .filter(|p| p.contains(&format!("/ktstr-{me}-")))
        .collect();
    assert!(files.is_empty(), "left behind: {files:?}");
    let children: Vec<String> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
                .filter(|stat| {
                    // pid (comm) state ppid ...
                    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
                    rest.split_whitespace().nth(1) == Some(&me.to_string())
                        && stat.contains("(qemu-system-x86")
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        children.is_empty(),
        "QEMU children still running: {children:?}"
    );
}

/// A workspace target's executable: `(target name, whether it is a test
/// harness)` -> path.
pub type Executables = std::collections::BTreeMap<(String, bool), PathBuf>;

/// Every executable of the workspace's targets as cargo builds them for
/// `cargo build --workspace --all-targets` (what ./setup.sh ran; the same
/// features and hashes as nextest's build, so this is a freshness check,
/// not a rebuild). Test binaries are keyed `(name, true)`, programs
/// `(name, false)`.
pub fn workspace_executables() -> Result<Executables, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .ok_or("no workspace root")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(&cargo)
        .args([
            "build",
            "--workspace",
            "--all-targets",
            "--message-format=json",
        ])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| format!("running {}: {e}", cargo.to_string_lossy()))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build --workspace --all-targets failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut found = Executables::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let (Some(exe), Some(name)) = (v["executable"].as_str(), v["target"]["name"].as_str())
        else {
            continue;
        };
        let test = v["profile"]["test"].as_bool().unwrap_or(false);
        found.insert((name.to_string(), test), PathBuf::from(exe));
    }
    Ok(found)
}

//! Builds the guest agent as a static executable and hands its path to the
//! harness, which embeds it (`src/agent.rs`): the `ktstr` binary then
//! carries its own `/init`, and nothing has to be found at run time.
//!
//! A nested `cargo build` of the workspace's `ktstr-agent` package, for the
//! host's own gnu target with `crt-static` (glibc's static libc.a comes with
//! gcc's libc6-dev; no extra Rust target to install). Passing `--target`
//! keeps the static flag off build scripts and proc macros. Its own target
//! directory under the outer one avoids waiting on the outer build's lock.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest.parent().expect("harness/ sits in the workspace");
    let agent_dir = workspace.join("agent");
    println!("cargo:rerun-if-changed={}", agent_dir.display());
    println!("cargo:rerun-if-env-changed=KTSTR_AGENT_BIN");

    // An agent built elsewhere (e.g. cross builds) may be given directly.
    if let Some(bin) = std::env::var_os("KTSTR_AGENT_BIN") {
        println!(
            "cargo:rustc-env=KTSTR_AGENT_PATH={}",
            Path::new(&bin).display()
        );
        return;
    }

    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    // OUT_DIR = <target>/<profile>/build/<pkg>/out: share one agent build
    // per target directory across profiles and check/build/clippy.
    let target_dir = out
        .ancestors()
        .nth(4)
        .map(|t| t.join("ktstr-agent"))
        .unwrap_or_else(|| out.join("ktstr-agent"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--release",
            "-p",
            "ktstr-agent",
            "--bin",
            "ktstr-agent",
        ])
        .args(["--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        // Small: it is copied into every initramfs.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
    // The outer build's settings must not leak in (clippy's wrapper, its
    // flags, its target directory).
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("running cargo to build the guest agent");
    if !status.success() {
        panic!(
            "building the static guest agent failed ({status}); it needs glibc's static \
             libc.a (Debian/Ubuntu: libc6-dev), or set KTSTR_AGENT_BIN to a static ktstr-agent"
        );
    }
    let bin = target_dir.join(TARGET).join("release").join("ktstr-agent");
    println!("cargo:rustc-env=KTSTR_AGENT_PATH={}", bin.display());
}

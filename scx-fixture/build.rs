//! Compiles the BPF half (src/bpf/main.bpf.c) with clang, generates its
//! libbpf-rs skeleton, and turns src/bpf/intf.h into Rust constants. The clang is `BPF_CLANG`, else the newest versioned
//! clang on PATH (sched_ext BPF wants clang >= 17; Debian 12 installs
//! clang-19 as `clang-19` only), else `clang`.

use std::path::Path;

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(name).is_file()))
}

fn main() {
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    println!("cargo:rerun-if-env-changed=PATH");
    if std::env::var_os("BPF_CLANG").is_none() {
        let clang = (17..=30)
            .rev()
            .map(|v| format!("clang-{v}"))
            .find(|c| on_path(c))
            .or_else(|| on_path("clang").then(|| "clang".to_string()));
        let Some(clang) = clang else {
            eprintln!(
                "scx-fixture: no clang on PATH to compile the BPF scheduler; run ./setup.sh (it installs clang-19) or set BPF_CLANG"
            );
            std::process::exit(1);
        };
        // SAFETY: a build script is single-threaded; scx_cargo reads it below.
        unsafe { std::env::set_var("BPF_CLANG", clang) };
    }
    let built = scx_cargo::BpfBuilder::new().and_then(|mut b| {
        b.enable_intf("src/bpf/intf.h", "bpf_intf.rs")
            .enable_skel("src/bpf/main.bpf.c", "bpf")
            .build()
    });
    if let Err(e) = built {
        eprintln!("scx-fixture: building the BPF scheduler failed: {e:#}");
        std::process::exit(1);
    }
}

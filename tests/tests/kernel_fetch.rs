//! `ktstr kernel fetch` against the real Debian archive: the cache layout
//! and idempotence (a second fetch downloads nothing and rewrites nothing).

use std::time::SystemTime;

use ktstr::kernel::config::KernelConfig;
use ktstr::kernel::fetch::{FetchOptions, fetch, which};
use ktstr::kernel::store::COMPLETE_MARKER;
use ktstr_tests::{Need, skip};

fn mtime(p: &std::path::Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .expect("mtime")
}

#[test]
fn fetch_is_idempotent_and_leaves_a_complete_release() {
    if which("apt-get").is_none() {
        return skip(
            "fetch_is_idempotent",
            Need::Tool,
            "apt-get not found (not Debian/Ubuntu)",
        );
    }
    // The first call downloads when the cache is cold (./setup.sh already
    // ran it on a set-up machine); the second must find everything cached.
    let dir = match fetch(&FetchOptions::default()) {
        Ok(d) => d,
        Err(e) => {
            return skip(
                "fetch_is_idempotent",
                Need::Kernel,
                &format!("fetch failed: {e}"),
            );
        }
    };
    for f in ["vmlinuz", "vmlinux", "config", COMPLETE_MARKER] {
        assert!(dir.join(f).is_file(), "{} lacks {f}", dir.display());
    }
    let cfg = KernelConfig::open(&dir.join("config")).expect("config");
    assert_eq!(cfg.get("CONFIG_SCHED_CLASS_EXT"), Some("y"));
    cfg.check_required().expect("required options");

    let debs = ktstr::cache::root().expect("cache").join("apt/debs");
    let deb_times: Vec<_> = std::fs::read_dir(&debs)
        .expect("deb dir")
        .map(|e| {
            (
                e.as_ref().expect("entry").path(),
                mtime(&e.expect("entry").path()),
            )
        })
        .collect();
    let marker = mtime(&dir.join(COMPLETE_MARKER));

    let again = fetch(&FetchOptions::default()).expect("second fetch");
    assert_eq!(again, dir);
    assert_eq!(
        mtime(&dir.join(COMPLETE_MARKER)),
        marker,
        "release rewritten"
    );
    for (p, t) in deb_times {
        assert_eq!(mtime(&p), t, "{} downloaded again", p.display());
    }
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_string();
    let pinned = fetch(&FetchOptions {
        release: Some(name),
        offline: true,
    })
    .expect("pinned cached release");
    assert_eq!(pinned, dir);
}

#[test]
fn kvm_modules_of_the_fetched_kernel_are_decompressed_elf_modules_cached_once() {
    const TEST: &str = "kvm_modules_of_the_fetched_kernel_are_decompressed_elf_modules_cached_once";
    if which("apt-get").is_none() {
        return skip(TEST, Need::Tool, "apt-get not found (not Debian/Ubuntu)");
    }
    let dir = match ktstr_tests::cached_kernel_dir() {
        Ok(d) => d,
        Err(e) => return skip(TEST, Need::Kernel, &e),
    };
    // ./setup.sh fetched them (`ktstr kernel fetch --kvm-modules`); on a
    // cold cache this downloads the package once.
    let files = match ktstr::kernel::modules::fetch_kvm_modules(&dir, false) {
        Ok(f) => f,
        Err(e) => return skip(TEST, Need::Kernel, &format!("fetch failed: {e}")),
    };
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["irqbypass.ko", "kvm.ko", "kvm-amd.ko"]);
    let release = dir.file_name().unwrap().to_string_lossy().into_owned();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let elf =
            goblin::elf::Elf::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_eq!(
            elf.header.e_type,
            goblin::elf::header::ET_REL,
            "{}",
            f.display()
        );
        // The module's vermagic names the kernel it was built for.
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains(&format!("vermagic={release} ")),
            "{} is not for {release}",
            f.display()
        );
    }
    let marker = dir
        .join(ktstr::kernel::modules::KVM_MODULES_DIR)
        .join(COMPLETE_MARKER);
    let before = mtime(&marker);
    assert_eq!(
        ktstr::kernel::modules::fetch_kvm_modules(&dir, true).unwrap(),
        files
    );
    assert_eq!(mtime(&marker), before, "a second fetch rewrote the modules");
}

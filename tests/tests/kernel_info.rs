//! `ktstr kernel info` on every kernel in the cache (fetched 6.16, 6.19,
//! 7.3 and a built 6.12 on a machine ./setup.sh prepared): each is usable
//! (the CLI exits 0), and what the report calls absent is what the
//! kernel's own BTF lacks.

use ktstr::kernel::Kernel;
use ktstr::kernel::info::{KernelInfo, VERSION_GATED};
use ktstr_tests::{Need, skip};
use ktstr_walker::kernel::btf::KernelBtf;

#[test]
fn every_cached_kernel_is_usable_and_its_absent_groups_are_absent_from_its_btf() {
    let Ok(kernels) = ktstr::cache::kernels_dir() else {
        return skip("kernel_info", Need::Kernel, "no cache directory");
    };
    let cached = ktstr::kernel::store::list(&kernels);
    if cached.is_empty() {
        return skip(
            "kernel_info",
            Need::Kernel,
            "no kernel cached: `ktstr kernel fetch` (./setup.sh does it)",
        );
    }
    for c in cached.iter().filter(|c| c.sched_ext && c.btf) {
        let k = Kernel::resolve(&c.dir.display().to_string()).expect("cached kernel");
        let info = KernelInfo::gather(&k);
        let text = info.to_text();
        assert!(info.usable(), "{}:\n{text}", c.release);
        assert!(text.contains("usable:    yes"), "{text}");
        let layout = KernelBtf::from_elf(k.image.elf_bytes(), &c.release)
            .expect("BTF")
            .layout();
        let missing: Vec<&str> = layout.missing_groups().collect();
        for g in &info.layout {
            // The report and the walker's own layout agree on each group,
            // and only version-gated ones are ever absent.
            assert_eq!(g.resolved(), !missing.contains(&g.group), "{}", g.group);
            assert!(
                g.resolved() || VERSION_GATED.contains(&g.group),
                "{}: {}",
                c.release,
                g.group
            );
        }
        // No struct scx_sched: the report says the state is in globals.
        assert_eq!(
            layout.sched.is_none(),
            text.contains("in globals"),
            "{}",
            c.release
        );
    }
}

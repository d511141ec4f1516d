//! The multi-kernel tier: each sched_ext kernel layout a developer tests on
//! boots under QEMU with scx_bpfland, and one mid-run dump is checked
//! against that kernel's own BTF: what the kernel has is filled, what it
//! lacks is `None` (never 0). Kernels: 6.12 built from Debian's
//! linux-source (no `scx_root`: scheduler state in globals), 6.16.12
//! fetched (`scx_sched` without per-CPU/per-node parts), 7.3.x fetched
//! (the newest layout). A kernel not in the cache is a SKIP with
//! `Need::Kernel` (./setup.sh provides all three; CI requires them).
//! One short boot each (a few seconds of guest time under TCG).

use std::path::PathBuf;
use std::time::Duration;

use ktstr::testing::KtstrTest;
use ktstr_tests::{Need, skip};
use ktstr_walker::Layout;
use ktstr_walker::kernel::btf::KernelBtf;
use ktstr_walker::render::Report;

/// The cached kernel for `spec`, or `None` after a skip saying how to get it.
fn cached(test: &str, spec: &str, built: bool, how: &str) -> Option<PathBuf> {
    let kernels = ktstr::cache::kernels_dir().ok();
    let dir = kernels.as_deref().and_then(|k| {
        if built {
            ktstr::kernel::build::cached_build(k, spec)
        } else {
            ktstr::kernel::fetch::cached_match(k, spec)
        }
    });
    if dir.is_none() {
        skip(
            test,
            Need::Kernel,
            &format!("no {spec} kernel cached: {how}"),
        );
    }
    dir
}

/// Boot `dir` with bpfland, dump at 1.5 s, and check the dump against the
/// kernel's BTF.
/// bpfland's own state on every kernel layout: its struct_ops map found
/// by the attached scheduler's name (from `scx_root`, or the `scx_ops`
/// global before it), its programs, and `.bss`'s `nr_cpu_ids` named by
/// the program's BTF with the guest's CPU count.
fn check_bpf(test: &str, d: &Report) {
    use ktstr_walker::render::bpf::Value;
    let b = d.bpf.as_ref().expect("a bpf section");
    assert!(b.faults.is_empty(), "{test}: {:?}", b.faults);
    assert_eq!(
        b.struct_ops.as_ref().map(|m| m.name.as_str()),
        Some("bpfland_ops"),
        "{test}"
    );
    assert!(!b.programs.is_empty(), "{test}");
    let bss = b
        .maps
        .iter()
        .find(|m| m.name.ends_with(".bss"))
        .unwrap_or_else(|| panic!("{test}: no .bss in {:?}", b.maps));
    let cpus = bss.globals.iter().find(|g| g.name == "nr_cpu_ids");
    assert_eq!(
        cpus.map(|g| &g.value),
        Some(&Value::Uint(d.cpus.len() as u64)),
        "{test}: {:?}",
        bss.globals
    );
}

fn boot_and_check(test: &str, dir: PathBuf) {
    let Some(run) = KtstrTest::new(test)
        .kernel(&dir.display().to_string())
        .scheduler("bpfland", &[])
        .duration_secs(3)
        .dump_at(Duration::from_millis(1500))
        // The dump's fields are the point here, not how fair bpfland was
        // on a loaded host: checks are reported, not enforced.
        .report()
    else {
        return;
    };
    let layout = KernelBtf::open(dir.join("vmlinux"))
        .expect("the kernel's BTF")
        .layout();
    let dump = run.dump.as_ref().expect("a --dump-at dump");
    eprintln!(
        "{test}: kernel {}, dump:\n{}",
        run.kernel_release,
        dump.to_text()
    );
    check_dump(test, &layout, dump);
}

fn check_dump(test: &str, l: &Layout, d: &Report) {
    check_bpf(test, d);
    let s = &d.scheduler;
    assert!(s.attached, "{test}: bpfland attached");
    assert!(s.ops_name.contains("bpfland"), "{test}: {}", s.ops_name);
    assert_eq!(s.exit_kind, 0, "{test}: still running");
    assert!(d.health.faults.is_empty(), "{test}: {:?}", d.health.faults);
    // Before `struct scx_sched`, these live in globals every such kernel has.
    let in_sched = |m: fn(&ktstr_walker::layout::ScxSchedLayout) -> Option<u32>| {
        l.sched.is_none_or(|s| m(&s).is_some())
    };
    // Where `scx_sched` lacks it (6.16), the global `scx_bypass_depth`
    // stands in, and BTF does not list globals: only "present" is checked.
    if in_sched(|s| s.bypass_depth) {
        assert!(s.bypass_depth.is_some(), "{test}: bypass_depth missing");
    }
    assert_eq!(
        s.watchdog_timeout_ms.is_some(),
        in_sched(|s| s.watchdog_timeout),
        "{test}: watchdog {:?}",
        s.watchdog_timeout_ms
    );
    // No kernel before scx_sched had an `aborting` flag.
    assert_eq!(
        s.aborting.is_some(),
        l.sched.and_then(|s| s.aborting).is_some(),
        "{test}: aborting {:?}",
        s.aborting
    );
    // The exit info is allocated while a scheduler is attached.
    assert_eq!(
        s.exit_code.is_some(),
        l.exit_info.and_then(|e| e.exit_code).is_some(),
        "{test}: exit_code {:?}",
        s.exit_code
    );
    assert!(
        d.dsqs.iter().any(|q| q.name.starts_with("global")),
        "{test}: a global DSQ: {:?}",
        d.dsqs.iter().map(|q| &q.name).collect::<Vec<_>>()
    );
    let bypass = l.scx_rq.and_then(|r| r.bypass_dsq).is_some() || l.sched_pcpu.is_some();
    assert_eq!(
        d.dsqs.iter().any(|q| q.name.starts_with("bypass")),
        bypass,
        "{test}: bypass DSQs"
    );
    let scx_rq = l.scx_rq.expect("scx_rq");
    for c in &d.cpus {
        assert_eq!(
            c.cpu_released.is_some(),
            scx_rq.cpu_released.is_some(),
            "{test}: cpu {} cpu_released",
            c.cpu
        );
        assert!(c.fault.is_none(), "{test}: cpu {}: {:?}", c.cpu, c.fault);
    }
    let (task, entity) = (l.task.expect("task"), l.entity.expect("entity"));
    assert!(
        d.tasks
            .iter()
            .any(|t| t.class == ktstr_walker::render::SchedClass::Ext),
        "{test}: sched_ext tasks"
    );
    for t in &d.tasks {
        assert_eq!(t.on_cpu.is_some(), task.on_cpu.is_some(), "{test}: on_cpu");
        assert_eq!(t.cpu.is_some(), task.cpu.is_some(), "{test}: cpu");
        assert_eq!(
            t.sticky_cpu.is_some(),
            entity.sticky_cpu.is_some(),
            "{test}: sticky_cpu"
        );
        assert_eq!(
            t.holding_cpu.is_some(),
            entity.holding_cpu.is_some(),
            "{test}: holding_cpu"
        );
    }
}

#[test]
fn kernel_6_12_built_has_no_scx_root_and_its_globals_are_read() {
    let test = "kernels_matrix::6.12";
    let Some(dir) = cached(
        test,
        "6.12",
        true,
        "`ktstr kernel build 6.12` (./setup.sh does it)",
    ) else {
        return;
    };
    let l = KernelBtf::open(dir.join("vmlinux")).unwrap().layout();
    assert!(l.sched.is_none(), "6.12 has no struct scx_sched");
    // `--kernel 6.12` and `kernel build 6.12` both find this build: a hit,
    // with no download and no make.
    match ktstr::kernel::Kernel::locate("6.12").expect("--kernel 6.12") {
        ktstr::kernel::Resolved::Cached { dir: found, .. } => assert_eq!(found, dir),
        other => panic!("--kernel 6.12 resolved to {other}"),
    }
    let again = ktstr::kernel::build::build(&ktstr::kernel::build::BuildOptions::new(
        ktstr::kernel::build::BuildSource::Version("6.12".into()),
    ))
    .expect("kernel build 6.12");
    assert_eq!(
        (again.dir.as_path(), again.build_time),
        (dir.as_path(), None)
    );
    boot_and_check(test, dir);
}

#[test]
fn kernel_6_16_fetched_lacks_the_per_cpu_and_per_node_parts() {
    let test = "kernels_matrix::6.16";
    let Some(dir) = cached(
        test,
        "6.16.12",
        false,
        "`ktstr kernel fetch --release 6.16.12` (./setup.sh does it)",
    ) else {
        return;
    };
    let l = KernelBtf::open(dir.join("vmlinux")).unwrap().layout();
    assert!(l.sched.is_some() && l.sched_pcpu.is_none() && l.sched_pnode.is_none());
    boot_and_check(test, dir);
}

#[test]
fn kernel_7_3_fetched_has_the_newest_layout() {
    let test = "kernels_matrix::7.3";
    let Some(dir) = cached(
        test,
        "7.3",
        false,
        "`ktstr kernel fetch` (./setup.sh does it)",
    ) else {
        return;
    };
    let l = KernelBtf::open(dir.join("vmlinux")).unwrap().layout();
    assert!(l.sched_pnode.is_some(), "7.x has per-node scheduler parts");
    boot_and_check(test, dir);
}

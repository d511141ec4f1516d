//! Real sched_ext kernels end to end: the fetched kernel boots under QEMU
//! (TCG here) or the built-in KVM VMM (hosts with VT-x/AMD-V only; skipped,
//! loudly, elsewhere) with the guest agent as /init and scx_bpfland as the
//! scheduler; named CPU-bound workers run; the VM is frozen mid-run, its
//! sched_ext state captured from the shared RAM file and an ELF core
//! written; the VM thaws and the run finishes. The dump is checked against
//! what the guest itself reported just before the freeze, and `ktstr dump`
//! of the core must give the same report as the live capture.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use ktstr::agent::proto::{CgroupJob, ScxState, Work, WorkerSpec};
use ktstr::dump::{DumpOptions, dump};
use ktstr::session::{SchedulerConfig, Session, SessionConfig};
use ktstr::vm::Backend;
use ktstr_tests::{Need, have_tool, skip};
use ktstr_vmm::Topology;
use ktstr_walker::render::{Placement, Report, SchedClass};

const WORKER: &str = "ktstr-spin";

/// Everything a real-kernel run needs, or the reason it cannot run.
fn prerequisites(
    test: &str,
    scheduler: Option<&str>,
) -> Option<(String, Option<std::path::PathBuf>)> {
    if !have_tool("busybox") {
        skip(
            test,
            Need::Tool,
            "busybox not installed (./setup.sh installs it)",
        );
        return None;
    }
    let kernel = ktstr_tests::qemu_kernel_or_skip(test)?
        .display()
        .to_string();
    let Some(name) = scheduler else {
        return Some((kernel, None));
    };
    Some((kernel, Some(ktstr_tests::scheduler_or_skip(test, name)?)))
}

/// The parts of a report that must not differ between two reads of the same
/// frozen memory (and vCPU registers from QMP or the core's notes):
/// everything but how the read itself went.
fn state_of(r: &Report) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap();
    let h = v["health"].as_object_mut().unwrap();
    h.remove("pause_ns");
    h.remove("pause");
    // A BPF map read after the thaw holds the running guest's values in the
    // live report and the frozen ones in the core's: its contents differ.
    if let Some(maps) = v["bpf"]["maps"].as_array_mut() {
        for m in maps.iter_mut().filter(|m| m["read"] == "after_thaw") {
            for k in ["globals", "entries", "pairs", "more_pairs", "fault"] {
                m.as_object_mut().unwrap().remove(k);
            }
        }
    }
    v
}

/// How the guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boot {
    /// The vmlinux's PVH entry: no KASLR and 4-level paging (only the
    /// decompressor turns on KASLR and LA57).
    Pvh,
    /// The bzImage: its decompressor slides the kernel (KASLR) and, on a
    /// CPU with LA57 (`-cpu max` under TCG), turns on 5-level paging;
    /// page-table isolation forced on (`pti=on`).
    BzImageKaslrPti,
}

fn run(test: &str, backend: Backend, topology: &str, workers: u32, scheduler: Option<&str>) {
    run_booted(test, backend, topology, workers, scheduler, Boot::Pvh)
}

fn run_booted(
    test: &str,
    backend: Backend,
    topology: &str,
    workers: u32,
    scheduler: Option<&str>,
    boot: Boot,
) {
    if backend == Backend::Kvm && !ktstr_vmm::hardware_virt() {
        return skip(
            test,
            Need::HwVirt,
            "the KVM backend boots kernels only with VT-x/AMD-V (none here)",
        );
    }
    let Some((kernel, bin)) = prerequisites(test, scheduler) else {
        return;
    };
    let name = scheduler.unwrap_or_default();
    let scheduler = scheduler.is_some();
    let topology: Topology = topology.parse().unwrap();
    let kernel = match boot {
        Boot::Pvh => kernel,
        Boot::BzImageKaslrPti => std::path::Path::new(&kernel)
            .join("vmlinuz")
            .display()
            .to_string(),
    };
    let mut cfg = SessionConfig::new(kernel.clone(), topology);
    if boot == Boot::BzImageKaslrPti {
        cfg.boot_bzimage = true;
        cfg.kernel_args = vec!["pti=on".into()];
    }
    cfg.backend = backend;
    cfg.scheduler = bin.map(|binary| SchedulerConfig {
        binary,
        args: vec![],
    });
    cfg.cgroups = vec![CgroupJob {
        name: "work".into(),
        cpus: None,
        workers: vec![WorkerSpec::new(WORKER, workers, Work::Spin)],
        weight: None,
        cpu_max: None,
    }];
    cfg.duration = Duration::from_secs(6);
    let mut s = Session::start(&cfg).unwrap_or_else(|e| panic!("{test}: {e:#}"));
    assert_eq!(s.nr_cpus, topology.nr_cpus(), "guest CPUs");
    assert_eq!(s.numa_nodes, topology.numa_nodes, "guest NUMA nodes");
    // KASLR is on: the image moved by a multiple of its 2 MiB alignment.
    let offset = s.kernel_offset.expect("_text in the guest's kallsyms");
    assert_eq!(offset % (2 << 20), 0, "kernel offset {offset:#x}");

    // Let the workers run a moment so the freeze lands mid-work.
    std::thread::sleep(Duration::from_millis(500));
    let tmp = tempfile::tempdir().unwrap();
    let core = tmp.path().join("core");
    // Only QEMU writes ELF cores.
    let with_core = backend == Backend::Qemu;
    let (report, pause) = s.capture(with_core.then_some(core.as_path())).unwrap();
    assert_eq!(s.backend(), backend);
    eprintln!("{test}:\n{}\npause: {}", report.to_text(), pause.to_text());
    assert!(
        pause.stop_us + pause.capture_us + pause.resume_us <= pause.total_us,
        "the parts of the pause fit in the whole: {pause:?}"
    );

    // What the walker found without the guest's help, against what the
    // guest's own /proc/kallsyms says.
    let found = s.discovered().unwrap();
    eprintln!(
        "{test}: slide {:#x} phys_base {:#x} page_offset_base {:#x} root {:?} kernel root {} user PTI root {} ({} reads)",
        found.slide,
        found.phys_base,
        found.page_offset_base,
        found.root,
        found.kernel_root,
        found.user_pti_root,
        found.reads
    );
    assert_eq!(found.slide, offset, "KASLR slide vs the guest's _text");
    let told = s.kallsyms_symbols();
    let mut compared = 0;
    for name in ktstr_walker::Symbols::NAMES {
        if let Some(want) = told.get(name) {
            assert_eq!(found.symbols.get(name), Some(want), "{name}");
            compared += 1;
        }
    }
    assert!(compared >= 15, "only {compared} symbols to compare");
    assert_eq!(found.nr_cpu_ids, topology.nr_cpus());
    assert!(found.kernel_root, "walks start from init_top_pgt");
    use ktstr_walker::translate::Levels;
    match boot {
        Boot::Pvh => {
            assert_eq!(found.root.unwrap().levels, Levels::Four, "PVH entry");
            assert_eq!(found.slide, 0, "PVH entry");
        }
        Boot::BzImageKaslrPti => {
            // `-cpu max` under TCG has LA57, which the decompressor uses.
            if !ktstr_vmm::hardware_virt() {
                assert_eq!(
                    found.root.unwrap().levels,
                    Levels::Five,
                    "LA57 under -cpu max"
                );
            }
            if offset == 0 {
                eprintln!("{test}: KASLR chose slide 0 this boot (1 in ~500)");
            }
            // A vCPU frozen in user mode under PTI holds the user half of
            // a PGD pair, which maps no kernel data: discovery from it must
            // find the same kernel through the kernel half.
            let kernel_pgd = found.root.unwrap().cr3;
            let user = ktstr_walker::discover::VcpuRegs {
                cr3: kernel_pgd | 0x1000,
                cr4: ktstr_walker::discover::CR4_LA57,
            };
            let from_user = s
                .discover_with(user)
                .expect("discovery from a user PTI root");
            assert!(from_user.user_pti_root, "the user half was the one given");
            assert_eq!(
                (from_user.slide, from_user.phys_base, from_user.symbols),
                (found.slide, found.phys_base, found.symbols)
            );
        }
    }

    // What the guest said just before the freeze.
    match &s.attached {
        Some(a) => {
            assert!(report.scheduler.attached, "a scheduler was attached");
            assert_eq!(
                report.scheduler.ops_name, a.ops,
                "ops name vs /sys/kernel/sched_ext/root/ops"
            );
            assert_eq!(s.sched_ext.state, ScxState::Enabled);
        }
        None => assert!(!report.scheduler.attached, "no scheduler was loaded"),
    }
    let h = &report.health;
    assert!(
        h.faults.is_empty()
            && h.missing_groups.is_empty()
            && h.truncated.is_empty()
            && h.dropped.is_empty(),
        "{h:?}"
    );
    assert!(h.pause_ns.is_some_and(|p| p > 0), "pause window measured");
    assert_eq!(
        report.cpus.len() as u32,
        topology.nr_cpus(),
        "one rq per vCPU"
    );
    for c in &report.cpus {
        assert_eq!(c.fault, None, "cpu {} read in full", c.cpu);
    }
    // Every vCPU's registers from the backend; kernel RIPs are named,
    // user ones are not (the core's notes must agree: see below).
    let indices: Vec<u32> = report.vcpus.iter().map(|v| v.index).collect();
    assert_eq!(
        indices,
        (0..topology.nr_cpus()).collect::<Vec<_>>(),
        "vCPUs"
    );
    for v in &report.vcpus {
        assert!(v.cr3.is_some_and(|c| c != 0), "{v:?}");
        // Kernel RIPs in the image are named; the module area above it
        // (0xffffffffc0000000: modules and BPF programs' JIT code, where
        // a vCPU running the scheduler's BPF was once frozen) is not.
        const MODULES_VADDR: u64 = 0xffff_ffff_c000_0000;
        let named = v.rip.symbol.is_some();
        assert!(
            if v.in_kernel {
                named || v.rip.addr >= MODULES_VADDR
            } else {
                !named
            },
            "{v:?}"
        );
    }
    if scheduler {
        // Every CPU's bypass DSQ sits in per-CPU memory of the scheduler
        // (vmalloc'ed: read through the page tables).
        let bypass = report
            .dsqs
            .iter()
            .filter(|d| d.name.starts_with("bypass"))
            .count();
        assert_eq!(bypass as u32, topology.nr_cpus(), "a bypass DSQ per CPU");
        let global = report
            .dsqs
            .iter()
            .filter(|d| d.name.starts_with("global"))
            .count();
        assert_eq!(global as u32, topology.numa_nodes, "a global DSQ per node");
        // sched_ext's counters, named from BTF, and its global state.
        let s = &report.scheduler;
        assert!(
            s.events
                .iter()
                .flatten()
                .any(|e| e.name == "SCX_EV_SELECT_CPU_FALLBACK"),
            "{s:?}"
        );
        assert_eq!(s.globals.enable_state.as_deref(), Some("SCX_ENABLED"));
        // Each CPU's kick masks are readable bitmaps (pointers to
        // off-stack cpumasks on Debian's kernels).
        for c in &report.cpus {
            let k = c.kicks.as_ref().expect("kick masks");
            assert!(
                k.kick.is_some() && k.preempt.is_some() && k.wait.is_some(),
                "cpu {}: {k:?}",
                c.cpu
            );
        }
        assert!(
            s.exit_dump.is_none() && s.exit_backtrace.is_empty(),
            "running"
        );
        check_bpf(&report, name, topology.nr_cpus());
    }

    let by_pid: BTreeMap<i32, _> = report.tasks.iter().map(|t| (t.pid, t)).collect();
    assert_eq!(s.workers.len() as u32, workers);
    for w in &s.workers {
        let t = by_pid
            .get(&w.pid)
            .unwrap_or_else(|| panic!("worker {} ({}) not in the dump", w.pid, w.comm));
        assert_eq!(t.comm, w.comm, "comm of pid {}", w.pid);
        assert_eq!(t.comm, WORKER);
        assert_eq!(t.cgroup.as_deref(), Some("/work"), "the agent's cgroup");
        let every_cpu: Vec<u32> = (0..topology.nr_cpus()).collect();
        assert_eq!(t.cpus_allowed.as_ref(), Some(&every_cpu), "no cpuset");
        assert_eq!(t.prio.static_prio, Some(120), "nice 0");
        // Read; non-zero only while frozen inside a migrate_disable()
        // section (a BPF program runs in one).
        assert!(
            t.migration_disabled.is_some_and(|n| n <= 2),
            "{:?}",
            t.migration_disabled
        );
        assert_eq!(
            t.class,
            if scheduler {
                SchedClass::Ext
            } else {
                SchedClass::Fair
            }
        );
        assert!(
            !matches!(t.placement, Placement::NotRunnable),
            "a spinning worker is runnable: {:?}",
            t.placement
        );
    }
    let addrs: HashSet<u64> = report.tasks.iter().map(|t| t.addr).collect();
    for c in &report.cpus {
        assert!(
            c.curr_is_idle || addrs.contains(&c.curr.addr),
            "cpu {} runs an unknown task {:#x}",
            c.cpu,
            c.curr.addr
        );
        for t in c.local_dsq.iter().chain(&c.runnable) {
            assert!(
                addrs.contains(&t.addr),
                "cpu {} holds unknown task {:#x}",
                c.cpu,
                t.addr
            );
        }
    }
    for d in &report.dsqs {
        for t in &d.tasks {
            assert!(
                addrs.contains(&t.addr),
                "dsq {} holds unknown task {:#x}",
                d.name,
                t.addr
            );
        }
    }
    assert!(
        report
            .tasks
            .iter()
            .any(|t| matches!(t.placement, Placement::Running { .. })),
        "busy workers: someone runs"
    );

    // The same frozen memory, read back from QEMU's ELF core.
    let ksyms = tmp.path().join("kallsyms");
    if with_core {
        std::fs::write(&ksyms, s.kallsyms_text()).unwrap();
        // With the guest's kallsyms, and with the vmlinux alone.
        for kallsyms in [Some(ksyms), None] {
            let from_core = dump(&DumpOptions {
                core: core.clone(),
                vmlinux: kernel.clone(),
                kallsyms: kallsyms.clone(),
                system_map: None,
                cr3: None,
            })
            .expect("ktstr dump of the core");
            assert_eq!(
                state_of(&from_core),
                state_of(&report),
                "core dump (kallsyms file: {}) vs live capture",
                kallsyms.is_some()
            );
        }
    }

    // Thawed, the run goes on to its end.
    let attached = s.attached.is_some();
    let done = s.finish().unwrap_or_else(|e| panic!("{test}: {e:#}"));
    assert_eq!(done.workers.len() as u32, workers);
    for w in &done.workers {
        assert!(w.error.is_none() && w.iterations > 0, "{w:?}");
    }
    if attached {
        assert_eq!(
            done.sched_ext.state,
            ScxState::Enabled,
            "scheduler survived the freeze; output:\n{}",
            done.scheduler_output
        );
        assert_eq!(done.scheduler_exit, None);
    }
    ktstr_tests::assert_no_vm_left_behind();
}

/// The scheduler's own state, from guest memory alone: its struct_ops map
/// (libbpf names it after the ops variable, `<name>_ops` in bpfland and
/// lavd) and programs, a `.bss` with its globals named.
/// For bpfland, its maps by type and globals whose values the run fixes
/// (its user space writes the CPU count into `.bss` at init; `slice_max`
/// is its default 1 ms in `.rodata`).
fn check_bpf(report: &Report, name: &str, nr_cpus: u32) {
    use ktstr_walker::render::bpf::{MapRead, Value};
    let b = report.bpf.as_ref().expect("a bpf section");
    assert!(b.faults.is_empty(), "{:?}", b.faults);
    let ops = format!("{name}_ops");
    assert_eq!(
        b.struct_ops.as_ref().map(|m| m.name.as_str()),
        Some(ops.as_str())
    );
    assert!(
        b.programs
            .iter()
            .any(|p| p.name.starts_with(name) && p.prog_type == 27),
        "{:?}",
        b.programs
    );
    let bss = b
        .maps
        .iter()
        .find(|m| m.name.ends_with(".bss"))
        .unwrap_or_else(|| panic!("no .bss in {:?}", b.maps));
    // bpfland's is small enough to read while paused; lavd's (256 KiB) is
    // read after the thaw.
    assert!(!matches!(bss.read, MapRead::Skipped(_)), "{bss:?}");
    assert!(!bss.globals.is_empty(), "{bss:?}");
    if name != "bpfland" {
        return;
    }
    let by_name = |n: &str| {
        b.maps
            .iter()
            .find(|m| m.name == n)
            .unwrap_or_else(|| panic!("map {n} not in {:?}", b.maps))
    };
    assert_eq!(by_name("bpfland_ops").map_type, "struct_ops");
    assert_eq!(by_name("cpu_ctx_stor").map_type, "percpu_array");
    assert_eq!(by_name("task_ctx_stor").map_type, "task_storage");
    let bss = by_name("bpf_bpf.bss");
    assert_eq!(
        (bss.map_type.as_str(), &bss.read),
        ("array", &MapRead::Paused)
    );
    let global = |m: &ktstr_walker::render::bpf::MapReport, n: &str| {
        m.globals
            .iter()
            .find(|g| g.name == n)
            .map(|g| g.value.clone())
            .unwrap_or_else(|| panic!("{n} not in {}: {:?}", m.name, m.globals))
    };
    assert_eq!(global(bss, "nr_cpu_ids"), Value::Uint(u64::from(nr_cpus)));
    assert_eq!(
        global(bss, "nr_online_cpus"),
        Value::Uint(u64::from(nr_cpus))
    );
    let rodata = by_name("bpf_bpf.rodata");
    assert_eq!(global(rodata, "slice_max"), Value::Uint(1_000_000));
    // Per-CPU values: one per CPU.
    match by_name("cpu_ctx_stor").entries.first() {
        Some(Value::Array { items, .. }) => assert_eq!(items.len() as u32, nr_cpus),
        other => panic!("cpu_ctx_stor entries: {other:?}"),
    }
}

#[test]
fn bpfland_on_2_cpus_frozen_mid_run() {
    run(
        "bpfland_on_2_cpus_frozen_mid_run",
        Backend::Qemu,
        "1n1l2c1t",
        3,
        Some("bpfland"),
    );
}

#[test]
fn kvm_backend_bpfland_on_2_cpus_frozen_mid_run() {
    run(
        "kvm_backend_bpfland_on_2_cpus_frozen_mid_run",
        Backend::Kvm,
        "1n1l2c1t",
        3,
        Some("bpfland"),
    );
}

#[test]
fn kvm_backend_bpfland_on_4_cpus_in_2_numa_nodes_frozen_mid_run() {
    run(
        "kvm_backend_bpfland_on_4_cpus_in_2_numa_nodes_frozen_mid_run",
        Backend::Kvm,
        "2n2l1c2t",
        6,
        Some("bpfland"),
    );
}

#[test]
fn bpfland_on_4_cpus_in_2_numa_nodes_frozen_mid_run() {
    run(
        "bpfland_on_4_cpus_in_2_numa_nodes_frozen_mid_run",
        Backend::Qemu,
        "2n2l1c2t",
        6,
        Some("bpfland"),
    );
}

/// A scheduler of another design (scx_lavd: deadline-based, per-LLC
/// domains), on 4 CPUs over 2 LLCs.
#[test]
fn lavd_on_4_cpus_in_2_llcs_frozen_mid_run() {
    run(
        "lavd_on_4_cpus_in_2_llcs_frozen_mid_run",
        Backend::Qemu,
        "1n2l2c1t",
        6,
        Some("lavd"),
    );
}

#[test]
fn default_scheduler_baseline_frozen_mid_run() {
    run(
        "default_scheduler_baseline_frozen_mid_run",
        Backend::Qemu,
        "1n1l2c1t",
        3,
        None,
    );
}

#[test]
fn bpfland_kaslr_5_level_pti_frozen_mid_run() {
    run_booted(
        "bpfland_kaslr_5_level_pti_frozen_mid_run",
        Backend::Qemu,
        "1n1l2c1t",
        3,
        Some("bpfland"),
        Boot::BzImageKaslrPti,
    );
}

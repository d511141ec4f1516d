//! Capture of a kernel before 6.16 (no `scx_root`; the scheduler's state in
//! globals of kernel/sched/ext.c) over walker-core's synthetic kernel: the
//! fixture lays out `scx_ops`, the enable state, exit kind and info, the
//! per-node `global_dsqs` and the `dsq_hash` table as 6.12 has them, and
//! the capture must read back what it put there. Runs with the compact
//! layout without the `scx_sched` groups and, when a built 6.12 is cached,
//! with the layout of its real BTF.

use ktstr_tests::{Need, skip};
use ktstr_walker::Layout;
use ktstr_walker::capture::storage::{Capacity, CaptureStorage};
use ktstr_walker::capture::{DsqOrigin, Fault, Limits, capture, kernel_str};
use ktstr_walker::kernel::btf::KernelBtf;
use ktstr_walker::testkit::{PerCpuStyle, SCX_OPS_DISABLED, SyntheticKernel, compact_layout};
use ktstr_walker::translate::Translator;

/// `SCX_EXIT_ERROR_STALL`.
const EXIT_STALL: u32 = 1026;

fn layouts() -> Vec<(String, Layout)> {
    let mut compact = compact_layout();
    (compact.sched, compact.sched_pcpu, compact.sched_pnode) = (None, None, None);
    let mut out = vec![("compact without scx_sched".to_string(), compact)];
    let built = ktstr::cache::kernels_dir()
        .ok()
        .and_then(|k| ktstr::kernel::build::cached_build(&k, "6.12"));
    match built {
        Some(dir) => {
            let btf = KernelBtf::open(dir.join("vmlinux")).expect("BTF of the built 6.12");
            let l = btf.layout();
            assert!(l.sched.is_none(), "6.12 has no struct scx_sched");
            out.push((format!("real BTF of {}", dir.display()), l));
        }
        None => skip(
            "capture_pre_root (real 6.12 layout part)",
            Need::Kernel,
            "no built 6.12 in the cache: `ktstr kernel build 6.12` (./setup.sh does it)",
        ),
    }
    out
}

#[test]
fn a_pre_root_scheduler_its_exit_and_its_shared_dsqs_are_read_from_globals() {
    for (name, layout) in layouts() {
        let mut k = SyntheticKernel::new(layout, 2, PerCpuStyle::ZeroBased).unwrap();
        let ops = k.pre_root().unwrap();
        let mut store = CaptureStorage::new(Capacity::for_guest(2, 64));

        // Nothing attached: the ops table exists but is no scheduler.
        let mut buf = store.buf();
        capture(
            &k.mem(),
            &mut Translator::default(),
            &k.target(),
            &Limits::default(),
            &mut buf,
        );
        assert_eq!(buf.sched.root, 0, "{name}");
        assert_eq!(buf.health.sched, Fault::None, "{name}");
        assert!(
            buf.dsqs
                .as_slice()
                .iter()
                .all(|d| d.origin != DsqOrigin::User)
        );

        k.attach_scheduler_pre_root("bpfland", 4).unwrap();
        let t = k.add_task(1000, "worker");
        let global = k.global_dsq_pre_root();
        k.enqueue(global, t);
        let user = k.add_user_dsq_pre_root(0x10);
        let t2 = k.add_task(1001, "worker2");
        k.enqueue(user, t2);
        k.set_exit_pre_root(
            EXIT_STALL,
            "runnable task stall",
            "worker[1000] failed to run",
        );

        let mut buf = store.buf();
        capture(
            &k.mem(),
            &mut Translator::default(),
            &k.target(),
            &Limits::default(),
            &mut buf,
        );
        let h = buf.health;
        assert_eq!((h.sched, h.dsqs), (Fault::None, Fault::None), "{name}");
        let s = &buf.sched;
        assert_eq!(s.root, ops, "{name}");
        assert_eq!(kernel_str(&s.ops_name).unwrap(), "bpfland", "{name}");
        assert_eq!(s.exit_kind, EXIT_STALL, "{name}");
        assert_eq!(
            kernel_str(&s.exit_reason).unwrap(),
            "runnable task stall",
            "{name}"
        );
        assert_eq!(
            kernel_str(&s.exit_msg).unwrap(),
            "worker[1000] failed to run",
            "{name}"
        );
        assert_eq!(s.bypass_depth, Some(0), "{name}");
        assert_eq!(s.watchdog_timeout, Some(30 * 250), "{name}");
        // 6.12 has no such flag: absent, not false.
        assert_eq!(s.aborting, None, "{name}");
        let dsqs = buf.dsqs.as_slice();
        let g = dsqs
            .iter()
            .find(|d| d.origin == DsqOrigin::Global(0))
            .unwrap_or_else(|| panic!("{name}: no global DSQ in {dsqs:?}"));
        assert_eq!((g.addr, g.nr), (global, 1), "{name}");
        let u = dsqs
            .iter()
            .find(|d| d.origin == DsqOrigin::User)
            .unwrap_or_else(|| panic!("{name}: no user DSQ"));
        assert_eq!((u.addr, u.id, u.nr), (user, 0x10, 1), "{name}");
        let queued = buf.queued.as_slice();
        assert_eq!(queued[u.tasks.start as usize], t2, "{name}");

        // Disabled again: the state decides, whatever the other globals hold.
        k.set_enable_state_pre_root(SCX_OPS_DISABLED);
        let mut buf = store.buf();
        capture(
            &k.mem(),
            &mut Translator::default(),
            &k.target(),
            &Limits::default(),
            &mut buf,
        );
        assert_eq!(buf.sched.root, 0, "{name}");
        assert!(
            !buf.dsqs
                .as_slice()
                .iter()
                .any(|d| matches!(d.origin, DsqOrigin::User | DsqOrigin::Global(_))),
            "{name}"
        );
    }
}

#[test]
fn an_unreadable_enable_state_is_a_fault_not_a_detached_scheduler() {
    let mut k = SyntheticKernel::new(compact_layout(), 1, PerCpuStyle::ZeroBased).unwrap();
    k.pre_root().unwrap();
    k.attach_scheduler_pre_root("bpfland", 4).unwrap();
    // Point the symbol outside guest memory.
    k.symbols.scx_ops_enable_state_var = Some(0xffff_ffff_bfff_0000);
    let mut store = CaptureStorage::new(Capacity::for_guest(1, 8));
    let mut buf = store.buf();
    capture(
        &k.mem(),
        &mut Translator::default(),
        &k.target(),
        &Limits::default(),
        &mut buf,
    );
    assert_eq!(buf.health.sched, Fault::Unreadable(0xffff_ffff_bfff_0000));
}

/// xorshift64: a fixed sequence, so a failure replays.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn scribbled_globals_give_faults_or_data_never_a_panic_or_an_unbounded_read() {
    let mut k = SyntheticKernel::new(compact_layout(), 2, PerCpuStyle::ZeroBased).unwrap();
    k.pre_root().unwrap();
    k.attach_scheduler_pre_root("bpfland", 4).unwrap();
    for id in 0..8 {
        k.add_user_dsq_pre_root(id);
    }
    let globals = [
        "scx_ops_enable_state_var",
        "scx_exit_kind",
        "scx_exit_info",
        "global_dsqs",
        "dsq_hash",
    ];
    let limits = Limits {
        max_bytes: 1 << 20,
        ..Limits::default()
    };
    let mut store = CaptureStorage::new(Capacity::for_guest(2, 64));
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..2000 {
        let mut scribbled = k.clone();
        for _ in 0..4 {
            let at = scribbled.sym(globals[(next(&mut rng) % 5) as usize]);
            let off = next(&mut rng) % 64;
            // Small values, pointers into the kit's memory, or anything.
            let v = match next(&mut rng) % 3 {
                0 => next(&mut rng) % 8,
                1 => scribbled.sym("scx_ops").wrapping_add(next(&mut rng) % 4096),
                _ => next(&mut rng),
            };
            scribbled.write_u64(at + off, v);
        }
        let mut buf = store.buf();
        capture(
            &scribbled.mem(),
            &mut Translator::default(),
            &scribbled.target(),
            &limits,
            &mut buf,
        );
        assert!(buf.health.bytes <= limits.max_bytes);
    }
}

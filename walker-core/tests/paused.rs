//! What the paused part of a capture does and does not do, through the
//! public embedding API ([`Dumper`]) over a synthetic kernel: no heap
//! allocation, reads within the budget, the current task of every CPU,
//! faults for roots that cannot be read, and the whole task list counted
//! when the buffer is too small.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;

use ktstr_walker::capture::storage::Capacity;
use ktstr_walker::capture::{Consts, Fault, Health, kernel_str};
use ktstr_walker::discover::Discovered;
use ktstr_walker::embed::{Dumper, Kernel};
use ktstr_walker::render::{Names, SchedClass};
use ktstr_walker::testkit::{PerCpuStyle, SyntheticKernel, compact_layout};
use ktstr_walker::translate::{DEFAULT_PAGE_OFFSET_BASE, DIRECT_MAP_SIZE_L4};

/// Counts this thread's allocations (tests run on several threads).
struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: AllocLayout) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: AllocLayout) {
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: AllocLayout, n: usize) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

/// What discovery would find in the synthetic kernel: its image at
/// `phys_base` 0, the direct map at the default base (no walks needed).
fn found(k: &SyntheticKernel, symbols: ktstr_walker::Symbols) -> Discovered {
    Discovered {
        slide: 0,
        phys_base: 0,
        page_offset_base: DEFAULT_PAGE_OFFSET_BASE,
        root: None,
        kernel_root: false,
        user_pti_root: false,
        symbols,
        nr_cpu_ids: k.nr_cpus() as u32,
        nr_node_ids: 1,
        direct_map_size: DIRECT_MAP_SIZE_L4,
        reads: 0,
    }
}

fn dumper_with(k: &SyntheticKernel, symbols: ktstr_walker::Symbols) -> Dumper {
    let kernel = Kernel::new(
        k.layout,
        Consts::default(),
        Names::default(),
        symbols,
        b"Linux version synthetic".to_vec(),
    );
    Dumper::new(kernel, found(k, symbols))
}

fn dumper(k: &SyntheticKernel) -> Dumper {
    dumper_with(k, k.symbols)
}

fn busy_kernel(tasks: i32) -> (SyntheticKernel, Vec<u64>) {
    let mut k = SyntheticKernel::new(compact_layout(), 2, PerCpuStyle::Absolute).unwrap();
    let sched = k.attach_scheduler("paused_test", 4).unwrap();
    let t: Vec<u64> = (0..tasks)
        .map(|i| k.add_task(500 + i, &format!("worker-{i}")))
        .collect();
    k.make_runnable(t[0], 0, 10);
    k.run_on(t[0], 0);
    let user = k.add_user_dsq(sched, 7);
    k.enqueue(user, t[1]);
    (k, t)
}

#[test]
fn the_paused_part_allocates_nothing_and_reads_within_its_budget() {
    let (k, t) = busy_kernel(20);
    let mut d = dumper(&k);
    let mem = k.mem();
    d.limits_mut().max_bytes = 1 << 20;
    let before = allocs();
    let c = d.capture(&mem);
    let during = allocs() - before;
    assert_eq!(during, 0, "heap allocations while paused");
    let h = *c.health();
    assert!(h.reads > 0 && h.bytes > 0 && h.bytes <= 1 << 20);
    assert_eq!(
        (h.sched, h.cpus, h.tasks),
        (Fault::None, Fault::None, Fault::None)
    );
    assert_eq!(c.buf().tasks.len(), t.len());
    // A budget smaller than the capture: reads stop, and it shows.
    d.limits_mut().max_bytes = 256;
    let c = d.capture(&mem);
    assert!(c.health().bytes <= 256);
    let r = c.report(None);
    assert!(
        !r.health.faults.is_empty() || !r.health.truncated.is_empty(),
        "{:?}",
        r.health
    );
}

#[test]
fn each_cpu_carries_its_current_task_read_while_paused() {
    let (k, t) = busy_kernel(3);
    let mut d = dumper(&k);
    let mem = k.mem();
    let c = d.capture(&mem);
    let cpus = c.buf().cpus.as_slice();
    // CPU 0 runs worker-0; CPU 1 its idle task, which is not on scx_tasks.
    // (`curr` itself is decoded after the thaw; its pid, comm and class
    // are read while paused.)
    assert_eq!(cpus[0].curr_pid, Some(500));
    assert_eq!(kernel_str(&cpus[0].curr_comm), Ok("worker-0"));
    assert_eq!(cpus[0].curr_class, k.sym("ext_sched_class"));
    assert_eq!(cpus[1].curr_pid, Some(0));
    assert_eq!(kernel_str(&cpus[1].curr_comm), Ok("swapper/1"));
    assert_eq!(cpus[1].curr_class, k.sym("idle_sched_class"));
    let r = c.report(None);
    assert_eq!(
        (r.cpus[0].curr.addr, r.cpus[1].curr.addr),
        (t[0], k.idle_task(1))
    );
    assert_eq!(r.cpus[1].curr.comm.as_deref(), Some("swapper/1"));
    assert_eq!(r.cpus[0].curr_class, Some(SchedClass::Ext));
    let p = r.health.pause.expect("the capture times itself");
    assert!(p.capture_ns > 0);
    assert_eq!(
        (p.stop_ns, p.resume_ns, r.health.pause_ns),
        (None, None, None)
    );
}

#[test]
fn an_undersized_buffer_still_counts_the_whole_list() {
    let (k, t) = busy_kernel(40);
    let mut d = dumper(&k);
    let small = Capacity {
        tasks: 8,
        ..d.capacity()
    };
    d.reserve(small);
    let mem = k.mem();
    let c = d.capture(&mem);
    assert_eq!(c.buf().tasks.len(), 8);
    let needed = c.needed();
    assert_eq!(needed.tasks, t.len(), "kept + dropped = every task");
    d.reserve(needed);
    let c = d.capture(&mem);
    assert_eq!((c.buf().tasks.len(), c.buf().tasks.dropped()), (t.len(), 0));
}

#[test]
fn null_or_unreadable_roots_are_faults_not_empty_states() {
    let (k, _) = busy_kernel(3);
    let mem = k.mem();
    // Far past the synthetic kernel's memory.
    let nowhere = 0xffff_ffff_bfff_0000;
    type Pass = fn(&Health) -> Fault;
    let cases: [(&str, u64, Pass); 5] = [
        ("scx_tasks", 0, |h| h.tasks),
        ("scx_tasks", nowhere, |h| h.tasks),
        ("scx_root", nowhere, |h| h.sched),
        ("__per_cpu_offset", nowhere, |h| h.cpus),
        ("runqueues", nowhere, |h| h.cpus),
    ];
    for (name, addr, pass) in cases {
        let mut bad = k.symbols;
        bad.set(name, addr);
        let mut d = dumper_with(&k, bad);
        let c = d.capture(&mem);
        assert!(
            pass(c.health()).is_fault(),
            "{name} = {addr:#x}: {:?}",
            c.health()
        );
        let r = c.report(None);
        assert!(!r.health.faults.is_empty(), "{name}: in the report too");
    }
}

#[test]
fn discover_once_then_capture_through_the_public_entry_point() {
    let (mut k, t) = busy_kernel(5);
    let (regs, banner) = k.discoverable();
    let kernel = Kernel::new(
        k.layout,
        Consts::default(),
        Names::default(),
        k.symbols,
        banner,
    );
    let mem = k.mem();
    let mut d = Dumper::discover(kernel, &mem, regs).unwrap();
    let found = *d.discovered();
    assert_eq!((found.slide, found.phys_base), (0, 0));
    assert!(found.kernel_root);
    assert_eq!(found.nr_cpu_ids as usize, k.nr_cpus());
    d.check(&mem).unwrap();
    let r = d.capture(&mem).report(None);
    assert!(r.health.faults.is_empty(), "{:?}", r.health);
    assert_eq!(r.tasks.len(), t.len());
    // Another kernel's banner: discovery refuses rather than guess.
    let other = Kernel::new(
        k.layout,
        Consts::default(),
        Names::default(),
        k.symbols,
        b"Linux version 9.9.9-other".to_vec(),
    );
    assert!(Dumper::discover(other, &mem, regs).is_err());
}

#[test]
fn a_target_with_another_layout_is_refused_not_misread() {
    use ktstr_walker::capture::storage::CaptureStorage;
    use ktstr_walker::capture::{Capturer, Limits};
    use ktstr_walker::translate::Translator;
    let (k, _) = busy_kernel(3);
    let mut other = k.layout;
    if let Some(t) = other.task.as_mut() {
        t.pid += 8;
    }
    let capturer = Capturer::new(&other);
    let mut storage = CaptureStorage::new(Capacity::for_guest(k.nr_cpus(), 16));
    let mut buf = storage.buf();
    let mut tr = Translator::default();
    capturer.capture_raw(&k.mem(), &mut tr, &k.target(), &Limits::default(), &mut buf);
    let h = buf.health;
    assert_eq!(h.reads, 0);
    for f in [h.sched, h.cpus, h.dsqs, h.tasks, h.cgroups] {
        assert_eq!(f, Fault::LayoutMismatch);
    }
    // The capturer of the target's own layout reads it.
    Capturer::new(&k.layout).capture_raw(
        &k.mem(),
        &mut tr,
        &k.target(),
        &Limits::default(),
        &mut buf,
    );
    assert_eq!(buf.health.tasks, Fault::None);
}

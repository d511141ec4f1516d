//! Capture over a synthetic kernel (walker-core's testkit): the fixture lays
//! out rqs, DSQs, tasks, the DSQ hash table and scx_sched in memory with a
//! `Layout`, and the capture must find exactly what the fixture put there.
//! Each scenario runs with the synthetic compact layout and, when the
//! fetched kernel is here, with the layout resolved from its real BTF.

use ktstr_walker::Layout;
use ktstr_walker::capture::storage::{Capacity, CaptureStorage};
use ktstr_walker::capture::vcpus::VcpuState;
use ktstr_walker::capture::{
    CaptureBuf, Capturer, DsqOrigin, DsqRecord, Fault, Limits, TaskRecord, capture,
};
use ktstr_walker::render::findings::{FaultFinding, Inconsistency};
use ktstr_walker::render::{Names, RenderContext, Report, SchedClass, Symbolizer, TextSymbols};
use ktstr_walker::testkit::{DIRECT_MAP, PerCpuStyle, SyntheticKernel, compact_layout};
use ktstr_walker::translate::Translator;

/// Storage with room for `tasks` tasks.
struct Store(CaptureStorage);

impl Store {
    fn new(tasks: usize) -> Self {
        Self(CaptureStorage::new(Capacity {
            tasks,
            ..Capacity::for_guest(64, 4096)
        }))
    }
    fn buf(&mut self) -> CaptureBuf<'_> {
        self.0.buf()
    }
}

fn run<'s>(k: &SyntheticKernel, store: &'s mut Store) -> CaptureBuf<'s> {
    let target = k.target();
    let mut buf = store.buf();
    let mut tr = Translator::default();
    capture(&k.mem(), &mut tr, &target, &Limits::default(), &mut buf);
    buf
}

fn layouts() -> Vec<(&'static str, Layout)> {
    ktstr_tests::synthetic_layouts("capture_synthetic")
}

fn comm(t: &TaskRecord) -> &str {
    let end = t.comm.iter().position(|&b| b == 0).unwrap_or(16);
    std::str::from_utf8(&t.comm[..end]).unwrap()
}

/// The report of `buf`, a capture of `k`, with default names.
fn report(k: &SyntheticKernel, buf: &CaptureBuf<'_>, pause_ns: Option<u64>) -> Report {
    let names = Names::default();
    let ctx = RenderContext {
        layout: &k.layout,
        symbols: &k.symbols,
        names: &names,
        pause_ns,
        pause: None,
        symbolizer: None,
    };
    Report::from_capture(buf, &ctx)
}

/// The report of `buf`, a capture of `k`, with `names` and text symbols
/// `text` (no KASLR slide).
fn report_named(
    k: &SyntheticKernel,
    buf: &CaptureBuf<'_>,
    names: &Names,
    text: &TextSymbols,
) -> Report {
    let ctx = RenderContext {
        layout: &k.layout,
        symbols: &k.symbols,
        names,
        pause_ns: None,
        pause: None,
        symbolizer: Some(Symbolizer {
            table: text,
            slide: 0,
        }),
    };
    Report::from_capture(buf, &ctx)
}

fn dsq_tasks<'a>(buf: &'a CaptureBuf<'_>, d: &DsqRecord) -> &'a [u64] {
    &buf.queued.as_slice()[d.tasks.start as usize..(d.tasks.start + d.tasks.len) as usize]
}

#[test]
fn a_busy_scheduler_is_captured_as_laid_out() {
    for (name, layout) in layouts() {
        for style in [PerCpuStyle::Absolute, PerCpuStyle::ZeroBased] {
            let mut k = SyntheticKernel::new(layout, 2, style).unwrap();
            let sched = k.attach_scheduler("fixture_sched", 4).unwrap();
            let t: Vec<u64> = (0..6)
                .map(|i| k.add_task(1000 + i, &format!("worker-{i}")))
                .collect();
            k.make_runnable(t[0], 0, 900);
            k.run_on(t[0], 0);
            k.make_runnable(t[1], 1, 901);
            let local1 = k.local_dsq(1);
            k.enqueue(local1, t[1]);
            let user = k.add_user_dsq(sched, 0x10);
            let other = k.add_user_dsq(sched, 0x14); // same bucket as 0x10
            let third = k.add_user_dsq(sched, 0x3);
            k.enqueue(user, t[2]);
            k.insert_cursor(user);
            k.enqueue(user, t[3]);
            let global = k.global_dsq(sched, 0);
            k.enqueue(global, t[4]);

            let mut store = Store::new(64);
            let buf = run(&k, &mut store);
            let ctx = format!("{name} {style:?}");
            let h = buf.health;
            assert_eq!(
                (h.sched, h.cpus, h.dsqs, h.tasks),
                (Fault::None, Fault::None, Fault::None, Fault::None),
                "{ctx}"
            );
            assert!(h.reads > 0 && h.bytes > 0);

            assert_eq!(buf.sched.root, sched, "{ctx}");
            assert!(buf.sched.ops_name.starts_with(b"fixture_sched\0"), "{ctx}");
            assert_eq!(buf.sched.exit_kind, 0);

            let cpus = buf.cpus.as_slice();
            assert_eq!(cpus.len(), 2, "{ctx}");
            assert_eq!((cpus[0].rq, cpus[1].rq), (k.rq(0), k.rq(1)), "{ctx}");
            assert_eq!(cpus[0].curr, t[0], "{ctx}");
            assert_eq!(cpus[1].curr, k.idle_task(1), "{ctx}");
            assert_eq!(
                (cpus[0].scx_nr_running, cpus[1].scx_nr_running),
                (1, 1),
                "{ctx}"
            );
            // The running task is off its runnable list (set_next_task_scx).
            assert_eq!(cpus[0].runnable.len, 0, "{ctx}");

            let dsqs = buf.dsqs.as_slice();
            let by_origin = |o: DsqOrigin| {
                dsqs.iter()
                    .find(|d| d.origin == o)
                    .unwrap_or_else(|| panic!("{ctx}: no {o:?}"))
            };
            let l1 = by_origin(DsqOrigin::Local(1));
            assert_eq!(
                (l1.addr, l1.nr, dsq_tasks(&buf, l1)),
                (local1, 1, &[t[1]][..]),
                "{ctx}"
            );
            assert!(dsq_tasks(&buf, by_origin(DsqOrigin::Local(0))).is_empty());
            assert_eq!(
                dsq_tasks(&buf, by_origin(DsqOrigin::Global(0))),
                [t[4]],
                "{ctx}"
            );
            assert_eq!(
                by_origin(DsqOrigin::Bypass(1)).addr,
                k.bypass_dsq(sched, 1),
                "{ctx}"
            );
            let users: Vec<&DsqRecord> = dsqs
                .iter()
                .filter(|d| d.origin == DsqOrigin::User)
                .collect();
            let mut ids: Vec<u64> = users.iter().map(|d| d.id).collect();
            ids.sort();
            assert_eq!(
                ids,
                [0x3, 0x10, 0x14],
                "{ctx} {:?}",
                buf.health.dsq_hash_walk
            );
            let u = users.iter().find(|d| d.id == 0x10).unwrap();
            assert_eq!((u.addr, u.nr, u.walk.cursors), (user, 2, 1), "{ctx}");
            assert_eq!(dsq_tasks(&buf, u), [t[2], t[3]], "{ctx}");
            assert!(users.iter().any(|d| d.addr == other) && users.iter().any(|d| d.addr == third));
            assert_eq!(buf.health.dsq_hash_walk.entries, 3);

            let tasks = buf.tasks.as_slice();
            assert_eq!(tasks.len(), 6, "{ctx}");
            for (i, rec) in tasks.iter().enumerate() {
                assert_eq!(
                    (rec.addr, rec.pid, rec.tgid),
                    (t[i], 1000 + i as i32, 1000 + i as i32),
                    "{ctx}"
                );
                assert_eq!(comm(rec), format!("worker-{i}"), "{ctx}");
                assert_eq!(rec.sched_class, k.sym("ext_sched_class"));
            }
            assert_eq!(
                (tasks[1].dsq, tasks[1].on_rq, tasks[1].runnable_at),
                (local1, 1, 901),
                "{ctx}"
            );
            assert_eq!(
                (tasks[5].dsq, tasks[5].on_rq, tasks[5].state),
                (0, 0, 1),
                "{ctx}"
            );
            assert!(buf.health.tasks_walk.fault == Fault::None && !buf.health.tasks_walk.truncated);
        }
    }
}

/// Everything a capture recorded, for comparing two captures whole.
fn dump(buf: &CaptureBuf<'_>) -> String {
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        buf.cpus.as_slice(),
        buf.dsqs.as_slice(),
        buf.queued.as_slice(),
        buf.runnable.as_slice(),
        buf.tasks.as_slice(),
        buf.cgroups.as_slice(),
        buf.sched,
        buf.jiffies,
        buf.health
    )
}

/// A kernel of 3 CPUs with a scheduler whose user DSQ 0x10 holds task
/// 100, runnable on CPU 1: the kernel, the DSQ and the task.
fn one_queued_task(layout: Layout) -> (SyntheticKernel, u64, u64) {
    let mut k = SyntheticKernel::new(layout, 3, PerCpuStyle::Absolute).unwrap();
    let sched = k.attach_scheduler("fixture_sched", 4).unwrap();
    let user = k.add_user_dsq(sched, 0x10);
    let task = k.add_task(100, "first");
    k.make_runnable(task, 1, 5);
    k.enqueue(user, task);
    (k, user, task)
}

#[test]
fn a_capturer_planned_once_reads_what_memory_holds_at_each_capture() {
    for (name, layout) in layouts() {
        let (mut k, user, _) = one_queued_task(layout);
        // Planned once, before the memory changes.
        let capturer = Capturer::new(&k.layout);
        let (mut planned, mut fresh) = (Store::new(8), Store::new(8));
        for round in 0..2 {
            let mut buf = planned.buf();
            let mut tr = Translator::default();
            let limits = Limits::default();
            capturer.capture(&k.mem(), &mut tr, &k.target(), &limits, &mut buf);
            // The same as a capture that plans anew, round after round.
            assert_eq!(
                dump(&buf),
                dump(&run(&k, &mut fresh)),
                "{name} round {round}"
            );
            let user_dsq = buf.dsqs.as_slice().iter().find(|d| d.id == 0x10).unwrap();
            assert_eq!(user_dsq.nr as usize, round + 1, "{name} round {round}");
            assert_eq!(
                dsq_tasks(&buf, user_dsq).len(),
                round + 1,
                "{name} round {round}"
            );
            let second = k.add_task(200, "second");
            k.make_runnable(second, 2, 6);
            k.enqueue(user, second);
        }
    }
}

#[test]
fn values_decoded_after_the_thaw_are_those_of_the_pause() {
    for (name, layout) in layouts() {
        let (mut k, _, task) = one_queued_task(layout);
        let capturer = Capturer::new(&k.layout);
        let mut whole = Store::new(8);
        let expected = dump(&run(&k, &mut whole));
        let mut store = Store::new(8);
        let mut buf = store.buf();
        let (mut tr, limits) = (Translator::default(), Limits::default());
        capturer.capture_raw(&k.mem(), &mut tr, &k.target(), &limits, &mut buf);
        assert!(!buf.is_decoded(), "{name}");
        // Not yet decoded: a report says so instead of showing zeros.
        let undecoded = report(&k, &buf, None);
        assert!(
            undecoded
                .health
                .faults
                .iter()
                .any(|f| f.what == FaultFinding::NotDecoded),
            "{name}: {:?}",
            undecoded.health.faults
        );
        // The guest runs on: its task and rq change before the decode.
        let t = k.layout.task.unwrap();
        let rq = k.layout.rq.unwrap();
        k.write_u32(task + u64::from(t.pid), 999);
        k.write_u32(k.rq(1) + u64::from(rq.nr_running), 77);
        capturer.decode(&mut buf);
        assert!(buf.is_decoded(), "{name}");
        assert_eq!(buf.tasks.as_slice()[0].pid, 100, "{name}");
        assert_ne!(buf.cpus.as_slice()[1].nr_running, 77, "{name}");
        // Exactly what a capture in one go records; decoding twice changes
        // nothing.
        assert_eq!(dump(&buf), expected, "{name}");
        capturer.decode(&mut buf);
        assert_eq!(dump(&buf), expected, "{name}");
    }
}

#[test]
fn records_beyond_the_bytes_kept_for_them_are_dropped_and_counted() {
    use ktstr_walker::capture::{CPU_BYTES, CgroupRecord, CpuRecord, TASK_BYTES};
    let mut k = SyntheticKernel::new(compact_layout(), 3, PerCpuStyle::Absolute).unwrap();
    k.attach_scheduler("s", 2).unwrap();
    for pid in 1..=5 {
        k.add_task(pid, "w");
    }
    // Room for 3 CPU and 5 task records, but bytes for 2 and 3 of them.
    let (mut cpus, mut dsqs) = ([CpuRecord::default(); 3], [DsqRecord::default(); 16]);
    let (mut queued, mut runnable) = ([0u64; 16], [0u64; 16]);
    let (mut tasks, mut cgroups) = ([TaskRecord::default(); 5], [CgroupRecord::default(); 4]);
    let (mut cpu_bytes, mut task_bytes) = (vec![0u8; 2 * CPU_BYTES], vec![0u8; 3 * TASK_BYTES]);
    let mut buf = CaptureBuf::new(
        &mut cpus,
        &mut cpu_bytes,
        &mut dsqs,
        &mut queued,
        &mut runnable,
        &mut tasks,
        &mut task_bytes,
        &mut cgroups,
    );
    let mut tr = Translator::default();
    capture(&k.mem(), &mut tr, &k.target(), &Limits::default(), &mut buf);
    assert_eq!((buf.cpus.len(), buf.cpus.dropped()), (2, 1));
    // The walk goes on past the last slot, counting: 5 tasks, 3 kept.
    assert_eq!((buf.tasks.len(), buf.tasks.dropped()), (3, 2));
    assert!(!buf.health.tasks_walk.truncated);
    assert_eq!(buf.health.tasks_walk.entries, 5);
    let pids: Vec<i32> = buf.tasks.as_slice().iter().map(|t| t.pid).collect();
    assert_eq!(pids, [1, 2, 3]);
}

#[test]
fn no_scheduler_attached_is_a_state_not_an_error() {
    for (name, layout) in layouts() {
        let mut k = SyntheticKernel::new(layout, 3, PerCpuStyle::Absolute).unwrap();
        k.add_task(7, "lonely");
        let mut store = Store::new(8);
        let buf = run(&k, &mut store);
        assert_eq!(buf.sched.root, 0, "{name}");
        assert_eq!(buf.health.sched, Fault::None, "{name}");
        assert_eq!(buf.cpus.len(), 3);
        // No global or user DSQs without a scheduler (per-rq bypass DSQs
        // exist where the layout has `scx_rq.bypass_dsq`).
        let dsqs = buf.dsqs.as_slice();
        assert!(
            dsqs.iter()
                .all(|d| matches!(d.origin, DsqOrigin::Local(_) | DsqOrigin::Bypass(_))),
            "{name}"
        );
        assert_eq!(
            dsqs.iter()
                .filter(|d| matches!(d.origin, DsqOrigin::Local(_)))
                .count(),
            3
        );
        assert!(dsqs.iter().all(|d| d.walk.fault == Fault::None), "{name}");
        assert_eq!(buf.tasks.len(), 1);
    }
}

#[test]
fn an_exit_the_disable_work_took_reports_the_kind_from_its_exit_info() {
    // Kernel 7.x: scx_bpf_error() sets exit_kind (SCX_EXIT_ERROR_BPF) and
    // fills exit_info; the disable work then marks exit_kind SCX_EXIT_DONE
    // while ops.exit() and the rest of the teardown run.
    for (name, layout) in layouts() {
        let mut k = SyntheticKernel::new(layout, 2, PerCpuStyle::Absolute).unwrap();
        let sched = k.attach_scheduler("erring", 2).unwrap();
        k.set_exit(sched, 1025, "scx_bpf_error", "injected");
        let s = k.layout.sched.unwrap();
        k.write_u32(sched + s.exit_kind as u64, 1); // SCX_EXIT_DONE
        let mut store = Store::new(8);
        let buf = run(&k, &mut store);
        assert_eq!(buf.health.sched, Fault::None, "{name}");
        assert_eq!(buf.sched.exit_kind, 1025, "{name}");
        // Still running: nothing in exit_info, exit_kind as it is.
        let mut k = SyntheticKernel::new(k.layout, 2, PerCpuStyle::Absolute).unwrap();
        let sched = k.attach_scheduler("fine", 2).unwrap();
        k.write_u32(sched + s.exit_kind as u64, 64);
        let buf = run(&k, &mut store);
        assert_eq!(buf.sched.exit_kind, 64, "{name}");
    }
}

#[test]
fn capacity_truncation_cycles_and_missing_groups_are_reported() {
    let mut k = SyntheticKernel::new(compact_layout(), 1, PerCpuStyle::Absolute).unwrap();
    let sched = k.attach_scheduler("s", 2).unwrap();
    let t: Vec<u64> = (0..5).map(|i| k.add_task(i + 1, "w")).collect();
    let user = k.add_user_dsq(sched, 1);
    for &x in &t {
        k.enqueue(user, x);
    }
    // Too few task slots: 3 recorded, the other 2 counted as dropped (the
    // caller learns the room it needs), no panic.
    let mut store = Store::new(3);
    let buf = run(&k, &mut store);
    assert_eq!((buf.tasks.len(), buf.tasks.dropped()), (3, 2));
    assert!(!buf.health.tasks_walk.truncated);

    // A cycle inside the user DSQ's list (node 3 -> node 1).
    let l = k.layout;
    let node_of = |task: u64| {
        k.entity(task) + (l.entity.unwrap().dsq_list + l.dsq_list_node.unwrap().node) as u64
    };
    let (n1, n3) = (node_of(t[1]), node_of(t[3]));
    k.write_u64(n3 + l.list_head.unwrap().next as u64, n1);
    let mut store = Store::new(16);
    let buf = run(&k, &mut store);
    let u = buf
        .dsqs
        .as_slice()
        .iter()
        .find(|d| d.origin == DsqOrigin::User)
        .unwrap();
    assert!(u.walk.cycle, "{:?}", u.walk);
    assert_eq!(buf.tasks.len(), 5, "other passes are unaffected");

    // No scx_sched group: the scheduler pass names it, the rest still runs.
    let mut layout = compact_layout();
    layout.sched = None;
    let mut k2 = SyntheticKernel::new(compact_layout(), 1, PerCpuStyle::Absolute).unwrap();
    k2.attach_scheduler("s", 2).unwrap();
    k2.layout = layout;
    let mut store = Store::new(16);
    let buf = run(&k2, &mut store);
    assert_eq!(buf.health.sched, Fault::MissingGroup("scx_sched"));
    assert_eq!(buf.cpus.len(), 1);

    // No scx_tasks symbol.
    let mut k3 = SyntheticKernel::new(compact_layout(), 1, PerCpuStyle::Absolute).unwrap();
    k3.symbols.scx_tasks = None;
    let mut store = Store::new(16);
    let buf = run(&k3, &mut store);
    assert_eq!(buf.health.tasks, Fault::MissingSymbol("scx_tasks"));
    assert_eq!(buf.cpus.len(), 1);
}

#[test]
fn render_places_every_task_decodes_exit_and_round_trips_through_json() {
    use ktstr_walker::render::Placement;
    for (name, layout) in layouts() {
        let mut k = SyntheticKernel::new(layout, 2, PerCpuStyle::Absolute).unwrap();
        let sched = k.attach_scheduler("fixture_sched", 4).unwrap();
        let t: Vec<u64> = (0..7)
            .map(|i| k.add_task(2000 + i, &format!("w{i}")))
            .collect();
        let jiffies = k.read_u64(k.sym("jiffies_64"));
        k.make_runnable(t[0], 0, jiffies);
        k.run_on(t[0], 0);
        k.make_runnable(t[1], 1, jiffies - 250 * 3); // runnable for 3 s at HZ=250
        let local1 = k.local_dsq(1);
        k.enqueue(local1, t[1]);
        let user = k.add_user_dsq(sched, 0x42);
        k.make_runnable(t[2], 1, jiffies - 25);
        k.enqueue(user, t[2]);
        // Held by the BPF scheduler: runnable, ops_state QUEUED, on no DSQ.
        k.make_runnable(t[3], 0, jiffies - 50);
        let e = k.layout.entity.unwrap();
        k.write_u64(k.entity(t[3]) + e.ops_state as u64, 2 | (7 << 2));
        // Caught mid-migration: on_rq == TASK_ON_RQ_MIGRATING.
        let on_rq = k.layout.task.unwrap().on_rq as u64;
        k.write_u8(t[4] + on_rq, 2);
        k.set_exit(sched, 1024, "runtime error", "fixture says boom");

        let mut store = Store::new(64);
        let buf = run(&k, &mut store);
        let report = report(&k, &buf, Some(123_000));

        let place = |i: usize| {
            report
                .tasks
                .iter()
                .find(|r| r.addr == t[i])
                .unwrap()
                .placement
                .clone()
        };
        assert_eq!(place(0), Placement::Running { cpu: 0 }, "{name}");
        assert_eq!(
            place(1),
            Placement::Queued {
                dsq: "local[cpu 1]".into()
            },
            "{name}"
        );
        assert_eq!(
            place(2),
            Placement::Queued {
                dsq: "user 0x42".into()
            },
            "{name}"
        );
        assert_eq!(place(3), Placement::HeldByBpf, "{name}");
        assert_eq!(place(4), Placement::Migrating, "{name}");
        assert_eq!(place(5), Placement::NotRunnable, "{name}");
        let t1 = report.tasks.iter().find(|r| r.addr == t[1]).unwrap();
        assert_eq!(t1.runnable_for_ms, Some(3000), "{name}");
        assert_eq!(t1.dsq.as_deref(), Some("local[cpu 1]"));
        assert_eq!(t1.class, SchedClass::Ext);
        let t3 = report.tasks.iter().find(|r| r.addr == t[3]).unwrap();
        assert_eq!(t3.ops_state, "SCX_OPSS_QUEUED qseq=7");

        let s = &report.scheduler;
        assert!(s.attached && s.ops_name == "fixture_sched", "{name}");
        assert_eq!(
            (
                s.exit_kind_name.as_str(),
                s.exit_reason.as_str(),
                s.exit_msg.as_str()
            ),
            ("SCX_EXIT_ERROR", "runtime error", "fixture says boom")
        );
        assert_eq!(report.cpus[0].curr.comm.as_deref(), Some("w0"));
        assert!(report.cpus[1].curr_is_idle);
        // cpu 0 runs t0 (off the list) with t3 on its runnable list, cpu 1
        // has t1 and t2 there: consistent.
        assert!(
            report.health.inconsistencies.is_empty(),
            "{:?}",
            report.health.inconsistencies
        );
        assert_eq!(report.health.pause_ns, Some(123_000));

        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report, "{name}: JSON round trip");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["schema_version"], 2);
        assert_eq!(v["tasks"][3]["placement"]["kind"], "held_by_bpf");

        let text = report.to_text();
        assert!(
            text.starts_with("scheduler: fixture_sched (SCX_EXIT_ERROR)"),
            "{text}"
        );
        assert!(
            text.contains("exit: runtime error") && text.contains("user 0x42"),
            "{text}"
        );
        // Longest waiting first: w1 (3 s) before w3 and w2.
        let order: Vec<usize> = ["w1[", "w3[", "w2["]
            .iter()
            .map(|w| text.rfind(w).unwrap())
            .collect();
        assert!(order[0] < order[1] && order[1] < order[2], "{text}");
    }
}

#[test]
fn counters_that_disagree_with_queues_are_reported_not_asserted() {
    let mut k = SyntheticKernel::new(compact_layout(), 1, PerCpuStyle::Absolute).unwrap();
    let t = k.add_task(1, "w");
    k.make_runnable(t, 0, 0);
    // As if frozen mid-enqueue: the counter is bumped, the list not yet.
    let (rq, scx_rq) = (k.layout.rq.unwrap(), k.layout.scx_rq.unwrap());
    let nr = k.rq(0) + (rq.scx + scx_rq.nr_running) as u64;
    k.write_u32(nr, 2);
    let mut store = Store::new(8);
    let buf = run(&k, &mut store);
    let report = report(&k, &buf, None);
    assert_eq!(
        report.health.inconsistencies.len(),
        1,
        "{:?}",
        report.health
    );
    let finding = &report.health.inconsistencies[0];
    assert_eq!(
        finding.what,
        Inconsistency::RunnableList {
            cpu: 0,
            nr_running: 2,
            curr_queued_ext: false,
            expected: 2,
            listed: 1
        }
    );
    assert_eq!(finding.kept_by, finding.what.kept_by());
    assert!(finding.kept_by.contains("set_next_task_scx"), "{finding:?}");
}

#[test]
fn the_running_task_off_its_runnable_list_is_consistent_and_counted() {
    let mut k = SyntheticKernel::new(compact_layout(), 1, PerCpuStyle::Absolute).unwrap();
    let (a, b) = (k.add_task(1, "runs"), k.add_task(2, "waits"));
    k.make_runnable(a, 0, 0);
    k.make_runnable(b, 0, 0);
    k.run_on(a, 0);
    let mut store = Store::new(8);
    let buf = run(&k, &mut store);
    let consistent = report(&k, &buf, None);
    assert_eq!(consistent.cpus[0].scx_nr_running, 2);
    assert_eq!(consistent.cpus[0].runnable.len(), 1);
    assert!(
        consistent.health.inconsistencies.is_empty(),
        "{:?}",
        consistent.health.inconsistencies
    );
    // The same CPU with the running task still on the list (as the old
    // rule expected): one task too many.
    let (rq, scx_rq) = (k.layout.rq.unwrap(), k.layout.scx_rq.unwrap());
    let e = k.layout.entity.unwrap();
    let head = k.rq(0) + (rq.scx + scx_rq.runnable_list) as u64;
    k.list_add_tail(head, k.entity(a) + e.runnable_node as u64);
    let buf = run(&k, &mut store);
    let report = report(&k, &buf, None);
    assert_eq!(
        report.health.inconsistencies.len(),
        1,
        "{:?}",
        report.health
    );
    assert_eq!(
        report.health.inconsistencies[0].what,
        Inconsistency::RunnableList {
            cpu: 0,
            nr_running: 2,
            curr_queued_ext: true,
            expected: 1,
            listed: 2
        }
    );
}

#[test]
fn a_vtime_dsq_is_captured_in_vtime_order_with_its_vtimes() {
    for (name, layout) in layouts() {
        let mut k = SyntheticKernel::new(layout, 1, PerCpuStyle::Absolute).unwrap();
        let sched = k.attach_scheduler("vtime", 4).unwrap();
        let dsq = k.add_user_dsq(sched, 9);
        let t: Vec<u64> = (0..4).map(|i| k.add_task(i + 1, "v")).collect();
        for (task, vtime) in t.iter().zip([300u64, 100, 400, 200]) {
            k.enqueue_vtime(dsq, *task, vtime);
        }
        let mut store = Store::new(16);
        let buf = run(&k, &mut store);
        let d = buf.dsqs.as_slice().iter().find(|d| d.id == 9).unwrap();
        assert_eq!(dsq_tasks(&buf, d), [t[1], t[3], t[0], t[2]], "{name}");
        let vt = |a: u64| {
            buf.tasks
                .as_slice()
                .iter()
                .find(|r| r.addr == a)
                .unwrap()
                .dsq_vtime
        };
        let order: Vec<u64> = dsq_tasks(&buf, d).iter().map(|&a| vt(a)).collect();
        assert_eq!(order, [100, 200, 300, 400], "{name}");
    }
}

#[test]
fn cgroup_paths_are_read_once_per_css_set_and_rendered_per_task() {
    for (name, layout) in layouts() {
        let mut k = SyntheticKernel::new(layout, 2, PerCpuStyle::Absolute).unwrap();
        k.attach_scheduler("fixture_sched", 4).unwrap();
        let root = k.cgroup("/");
        let spin = k.cgroup("/spin");
        let deep = k.cgroup("/a/b/c");
        let long = k.cgroup(&"/x".repeat(20)); // deeper than the walker follows
        let css = [root, spin, spin, deep, spin, long];
        let tasks: Vec<u64> = css
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let t = k.add_task(100 + i as i32, "w");
                k.set_cgroup(t, c);
                t
            })
            .collect();
        let unset = k.add_task(200, "nocg");

        let mut store = Store::new(64);
        let buf = run(&k, &mut store);
        let recs = buf.cgroups.as_slice();
        // /spin appears twice in a row and once later: still one record.
        assert_eq!(recs.len(), 4, "{name}: {recs:?}");
        let path = |c: u64| {
            let r = recs.iter().find(|r| r.css_set == c).unwrap();
            (
                String::from_utf8_lossy(&r.path[..r.len as usize]).into_owned(),
                r.fault,
            )
        };
        assert_eq!(path(root), ("/".into(), Fault::None), "{name}");
        assert_eq!(path(spin), ("/spin".into(), Fault::None), "{name}");
        assert_eq!(path(deep), ("/a/b/c".into(), Fault::None), "{name}");
        let (p, f) = path(long);
        assert!(
            matches!(f, Fault::Corrupt(_)),
            "{name}: too deep is reported: {f:?}"
        );
        assert_eq!(p, "/x".repeat(16), "{name}: the innermost 16 levels kept");

        let report = report(&k, &buf, None);
        let of = |t: u64| {
            report
                .tasks
                .iter()
                .find(|r| r.addr == t)
                .unwrap()
                .cgroup
                .clone()
        };
        assert_eq!(of(tasks[1]).as_deref(), Some("/spin"), "{name}");
        assert_eq!(of(tasks[3]).as_deref(), Some("/a/b/c"), "{name}");
        assert_eq!(of(unset), None, "{name}: a task without css_set");
        assert!(
            report
                .health
                .faults
                .iter()
                .any(|f| matches!(f.what, FaultFinding::Cgroup { .. })),
            "{name}: {:?}",
            report.health.faults
        );
    }
}

#[test]
fn an_unreadable_per_cpu_offset_faults_only_its_cpu() {
    // The per-CPU offsets are read in batches; when a batch runs off the
    // end of memory, the CPUs whose entries are readable are still read.
    let k = SyntheticKernel::new(compact_layout(), 4, PerCpuStyle::Absolute).unwrap();
    let mut moved = k.clone();
    let copy_at = |cpu: u64| moved.symbols.per_cpu_offset.unwrap() + 8 * cpu;
    // Copy the first two entries to the last 16 bytes of memory and point
    // __per_cpu_offset there: entries 2 and 3 lie past the end.
    let end = DIRECT_MAP + k.bytes().len() as u64;
    let (e0, e1) = (k.read_u64(copy_at(0)), k.read_u64(copy_at(1)));
    moved.write_u64(end - 16, e0);
    moved.write_u64(end - 8, e1);
    moved.symbols.per_cpu_offset = Some(end - 16);
    let mut store = Store::new(16);
    let buf = run(&moved, &mut store);
    let cpus = buf.cpus.as_slice();
    assert_eq!(cpus.len(), 4);
    for c in &cpus[..2] {
        assert_eq!(
            (c.fault, c.rq),
            (Fault::None, k.rq(c.cpu as usize)),
            "{c:?}"
        );
    }
    for c in &cpus[2..] {
        assert_eq!(c.fault, Fault::Unreadable(end - 16 + 8 * u64::from(c.cpu)));
    }
}

#[test]
fn a_task_on_a_dsq_that_breaks_the_kernels_invariants_is_named_with_who_keeps_them() {
    let mut k = SyntheticKernel::new(compact_layout(), 1, PerCpuStyle::Absolute).unwrap();
    let sched = k.attach_scheduler("inv", 4).unwrap();
    let dsq = k.add_user_dsq(sched, 0x7);
    let t: Vec<u64> = (0..4).map(|i| k.add_task(10 + i, "q")).collect();
    for &task in &t {
        k.enqueue(dsq, task);
    }
    let mut store = Store::new(16);
    let buf = run(&k, &mut store);
    let consistent = report(&k, &buf, None);
    assert!(
        consistent.health.inconsistencies.is_empty(),
        "as dispatch_enqueue leaves them: {:?}",
        consistent.health.inconsistencies
    );
    // Break one invariant per task, as a freeze mid-update could find them.
    let e = k.layout.entity.unwrap();
    k.write_u32(k.entity(t[0]) + e.flags as u64, 0);
    k.write_u64(k.entity(t[1]) + e.dsq as u64, 0);
    k.write_u64(k.entity(t[2]) + e.ops_state as u64, (3 << 2) | 2);
    k.run_on(t[3], 0);
    let buf = run(&k, &mut store);
    let r = report(&k, &buf, None);
    let got: Vec<&Inconsistency> = r.health.inconsistencies.iter().map(|f| &f.what).collect();
    let dsq = || "user 0x7".to_string();
    assert_eq!(
        got,
        [
            &Inconsistency::QueuedFlag {
                pid: 10,
                dsq: dsq()
            },
            &Inconsistency::DsqPointer {
                pid: 11,
                dsq: dsq(),
                points_at: None
            },
            &Inconsistency::OpsState {
                pid: 12,
                dsq: dsq(),
                ops_state: "SCX_OPSS_QUEUED qseq=3".into()
            },
            &Inconsistency::RunningOnDsq {
                cpu: 0,
                pid: 13,
                dsq: dsq()
            },
        ]
    );
    let v = serde_json::to_value(&r.health.inconsistencies[1]).unwrap();
    assert_eq!(v["kind"], "dsq_pointer");
    assert_eq!(v["kept_by"], "dispatch_enqueue, task_unlink_from_dsq");
    assert_eq!(
        v["invariant"],
        "a task on a DSQ has scx.dsq pointing at that DSQ"
    );
    assert!(
        r.to_text()
            .contains("task 11 is on user 0x7 but its scx.dsq is NULL")
    );
}

#[test]
fn an_error_exit_comes_with_its_backtrace_dump_text_events_and_state() {
    for (name, layout) in layouts() {
        let mut k = SyntheticKernel::new(layout, 2, PerCpuStyle::Absolute).unwrap();
        let sched = k.attach_scheduler("exits", 4).unwrap();
        let t = k.add_task(77, "victim");
        k.make_runnable(t, 1, 0);
        k.set_exit(sched, 1024, "runtime error", "scx_bpf_error called");
        // A fixture's text: the kernel's own dump starts like this.
        let dump = "Error: runtime error\nCPU 1: nr_run=1 flags=0x1\n";
        k.set_exit_detail(
            sched,
            1,
            &[0xffff_ffff_8100_1010, 0xffff_ffff_8100_2004],
            dump,
        );
        let fallback = k.layout.event_stats.unwrap().select_cpu_fallback;
        k.set_event(sched, 0, fallback, 5);
        k.set_event(sched, 1, fallback, 7);
        k.write_u64(k.sym("scx_enable_seq"), 3);
        k.write_u32(k.sym("scx_enable_state_var"), 1);
        let mut store = Store::new(16);
        let buf = run(&k, &mut store);
        assert_eq!(
            buf.exit_bt.as_slice(),
            [0xffff_ffff_8100_1010, 0xffff_ffff_8100_2004]
        );
        assert_eq!(buf.exit_dump(), dump.as_bytes(), "{name}");
        // What Names::from_btf finds in struct scx_event_stats.
        let names = Names {
            events: vec![("SCX_EV_SELECT_CPU_FALLBACK".into(), fallback)],
            ..Names::default()
        };
        let text = TextSymbols::from_pairs([
            (0xffff_ffff_8100_1000, "scx_vexit"),
            (0xffff_ffff_8100_2000, "scx_bpf_error_bstr"),
            (0xffff_ffff_8100_3000, "next"),
        ]);
        let r = report_named(&k, &buf, &names, &text);
        let s = &r.scheduler;
        assert_eq!(s.exit_cpu, Some(1), "{name}");
        let frames: Vec<Option<&str>> = s
            .exit_backtrace
            .iter()
            .map(|f| f.symbol.as_deref())
            .collect();
        assert_eq!(
            frames,
            [
                Some("scx_vexit+0x10/0x1000"),
                Some("scx_bpf_error_bstr+0x4/0x1000")
            ]
        );
        assert_eq!(s.exit_dump.as_deref(), Some(dump), "{name}");
        let sum = s.events.as_ref().expect("event counters");
        assert_eq!(
            (sum[0].name.as_str(), sum[0].value),
            ("SCX_EV_SELECT_CPU_FALLBACK", 12)
        );
        assert_eq!(r.cpus[1].events.as_ref().unwrap()[0].value, 7);
        assert_eq!(s.globals.enable_seq, Some(3));
        assert_eq!(s.globals.enable_state.as_deref(), Some("SCX_ENABLED"));
        assert!(
            s.exit_dump_unfinished,
            "{name}: an error exit while still SCX_ENABLED: the disable work has not begun"
        );
        assert!(text_has_unfinished(&r.to_text()), "{name}");
        assert_eq!(s.globals.breather_depth, None, "no such global here");
        let task = r.tasks.iter().find(|x| x.pid == 77).unwrap();
        assert_eq!(task.prio.static_prio, Some(120), "{name}");
        assert_eq!(task.cpus_allowed.as_deref(), Some(&[0, 1][..]), "{name}");
        assert_eq!(task.nr_cpus_allowed, Some(2));
        let shown = r.to_text();
        assert!(shown.contains("    scx_vexit+0x10/0x1000\n"), "{shown}");
        assert!(
            shown.contains("    | CPU 1: nr_run=1 flags=0x1\n"),
            "{shown}"
        );
        assert!(shown.contains("events: SELECT_CPU_FALLBACK=12"), "{shown}");
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r, "{name}: JSON round trip");
        // The disable work has begun (SCX_DISABLING): the dump is whole.
        k.write_u32(k.sym("scx_enable_state_var"), 2);
        let r = report_named(&k, &run(&k, &mut store), &names, &text);
        assert!(!r.scheduler.exit_dump_unfinished, "{name}");
        assert!(!text_has_unfinished(&r.to_text()), "{name}");
    }
}

fn text_has_unfinished(text: &str) -> bool {
    text.contains("kernel dump: unfinished at the freeze")
}

#[test]
fn consecutive_dumps_say_what_moved() {
    let mut k = SyntheticKernel::new(compact_layout(), 1, PerCpuStyle::Absolute).unwrap();
    let sched = k.attach_scheduler("moves", 4).unwrap();
    let dsq = k.add_user_dsq(sched, 0x5);
    let t = k.add_task(21, "mover");
    k.make_runnable(t, 0, 0);
    k.enqueue(dsq, t);
    let mut store = Store::new(8);
    let before = report(&k, &run(&k, &mut store), None);
    assert_eq!(
        before.changes_since(&before),
        ["cpu 0: clock did not move"],
        "a busy CPU against itself"
    );
    // Dispatched: off the DSQ (as dispatch_dequeue leaves it), running.
    let e = k.layout.entity.unwrap();
    let node = k.layout.dsq_list_node.unwrap().node;
    k.list_del_init(k.entity(t) + (e.dsq_list + node) as u64);
    k.write_u64(k.entity(t) + e.dsq as u64, 0);
    let nr = dsq + k.layout.dsq.unwrap().nr as u64;
    k.write_u32(nr, 0);
    k.run_on(t, 0);
    let clock = k.rq(0) + k.layout.rq.unwrap().clock as u64;
    k.write_u64(clock, k.read_u64(clock) + 1_000_000);
    let after = report(&k, &run(&k, &mut store), None);
    let changes = after.changes_since(&before);
    assert_eq!(
        changes,
        [
            "cpu 0: curr idle -> mover[21]",
            "user 0x5: nr 1 -> 0",
            "mover[21]: queued on user 0x5 -> running on cpu 0",
        ],
        "{changes:#?}"
    );
}

#[test]
fn each_vcpu_shows_its_rip_and_the_return_addresses_on_its_kernel_stack() {
    let mut k = SyntheticKernel::new(compact_layout(), 2, PerCpuStyle::Absolute).unwrap();
    let text = TextSymbols::from_pairs([
        (0xffff_ffff_8100_0000, "do_idle"),
        (0xffff_ffff_8100_1000, "cpu_startup_entry"),
        (0xffff_ffff_8100_2000, "end_of_text"),
    ]);
    // A kernel stack: a data word, two return addresses, a heap pointer.
    let stack = k.alloc(4096);
    for (i, w) in [
        7u64,
        0xffff_ffff_8100_0040,
        0xffff_8880_0000_1000,
        0xffff_ffff_8100_1008,
    ]
    .iter()
    .enumerate()
    {
        k.write_u64(stack + 8 * i as u64, *w);
    }
    let regs = [
        VcpuState {
            index: 0,
            rip: 0xffff_ffff_8100_0010,
            rsp: stack,
            rflags: 0x246,
            cr3: Some(0x1000),
            cs: Some(0x10),
        },
        VcpuState {
            index: 1,
            rip: 0x40_1000,
            rsp: 0x7fff_0000,
            rflags: 0x202,
            cr3: None,
            cs: Some(0x33),
        },
    ];
    let mut store = Store::new(8);
    let mut buf = store.buf();
    let mut tr = Translator::default();
    capture(&k.mem(), &mut tr, &k.target(), &Limits::default(), &mut buf);
    ktstr_walker::capture::vcpus::capture(&k.mem(), &mut tr, &regs, &mut buf.vcpus);
    let r = report_named(&k, &buf, &Names::default(), &text);
    let v0 = &r.vcpus[0];
    assert_eq!(v0.rip.symbol.as_deref(), Some("do_idle+0x10/0x1000"));
    let frames: Vec<&str> = v0
        .stack
        .iter()
        .filter_map(|f| f.symbol.as_deref())
        .collect();
    assert_eq!(
        frames,
        ["do_idle+0x40/0x1000", "cpu_startup_entry+0x8/0x1000"]
    );
    let v1 = &r.vcpus[1];
    assert!(
        !v1.in_kernel && v1.stack.is_empty() && v1.rip.symbol.is_none(),
        "{v1:?}"
    );
    let text = r.to_text();
    assert!(text.contains("vcpu 0   rip=do_idle+0x10/0x1000"), "{text}");
    assert!(text.contains("(user)"), "{text}");
}

/// Kicks a CPU requested and has not delivered, read where the layout's
/// kernel keeps them (the scheduler's per-CPU part on 7.x, `rq->scx`
/// before), and a task pinned by `migrate_disable()`.
#[test]
fn pending_kicks_and_migration_disabled_tasks_are_shown() {
    use ktstr_walker::capture::kick::KickMask;
    for (name, layout) in layouts() {
        let mut k = SyntheticKernel::new(layout, 4, PerCpuStyle::Absolute).unwrap();
        let sched = k.attach_scheduler("kicks", 4).unwrap();
        k.set_kick(sched, 0, KickMask::Preempt, &[1, 3]);
        k.set_kick(sched, 0, KickMask::Wait, &[1]);
        k.set_kick(sched, 2, KickMask::KickIfIdle, &[0]);
        let t = k.add_task(31, "pinned");
        k.make_runnable(t, 1, 0);
        let md = k.layout.task.unwrap().migration_disabled.unwrap();
        k.write(t + u64::from(md), &2u16.to_le_bytes());
        let mut store = Store::new(8);
        let r = report(&k, &run(&k, &mut store), None);
        let kicks = |cpu: usize| r.cpus[cpu].kicks.clone().unwrap_or_default();
        assert_eq!(kicks(0).preempt, Some(vec![1, 3]), "{name}");
        assert_eq!(kicks(0).wait, Some(vec![1]), "{name}");
        assert_eq!(kicks(2).kick_if_idle, Some(vec![0]), "{name}");
        // A null cpumask pointer is not a mask.
        assert_eq!(kicks(1).preempt, None, "{name}");
        let text = r.to_text();
        assert!(
            text.contains("pending kicks: preempt {1,3} wait {1}"),
            "{name}:\n{text}"
        );
        let pinned = r.tasks.iter().find(|x| x.pid == 31).unwrap();
        assert_eq!(pinned.migration_disabled, Some(2), "{name}");
        assert!(text.contains("migration-disabled(2)"), "{name}:\n{text}");
    }
}

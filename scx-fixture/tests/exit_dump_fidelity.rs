//! The kernel's own dump of an error exit against ours, on a real kernel
//! under QEMU TCG: `scx_fixture` never dispatches one task, the kernel's
//! watchdog ends the scheduler (SCX_EXIT_ERROR_STALL) and writes its dump
//! (`scx_dump_state`) into `exit_info->dump`; ops.exit() holds the exiting
//! scheduler so the monitor's dumps find it. The kernel's text is parsed
//! here and compared with what the walker read: the backtrace, named the
//! same way; every task the kernel listed, with its comm and weight; the
//! stalled task's DSQ, flags and ops state; the CPUs.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use ktstr::checks::Thresholds;
use ktstr::run::RunReport;
use ktstr::testing::KtstrTest;
use ktstr_walker::render::{Placement, Report};

const FIXTURE: &str = env!("CARGO_BIN_EXE_scx_fixture");

/// A task as the kernel's dump shows it (`scx_dump_task`).
#[derive(Debug, Default)]
struct KernelTask {
    comm: String,
    pid: i32,
    flags: u32,
    ops_state: u32,
    dsq_id: String,
    weight: u32,
}

/// What the kernel's dump text says, as far as this test reads it.
#[derive(Debug, Default)]
struct KernelDump {
    backtrace: Vec<String>,
    /// Per CPU: `nr_run`.
    cpus: BTreeMap<u32, u32>,
    tasks: Vec<KernelTask>,
    /// `SCX_EV_*` counters.
    events: BTreeMap<String, i64>,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(key)? + key.len();
    line[at..].split_whitespace().next()
}

fn parse(text: &str) -> KernelDump {
    let mut d = KernelDump::default();
    let mut in_bt = false;
    for line in text.lines() {
        let t = line.trim();
        if t == "Backtrace:" {
            in_bt = true;
            continue;
        }
        if in_bt {
            if t.is_empty() {
                in_bt = false;
            } else {
                d.backtrace.push(t.to_string());
            }
            continue;
        }
        if let Some((name, v)) = t.split_once(':')
            && name.starts_with("SCX_EV_")
            && let Ok(v) = v.trim().parse()
        {
            d.events.insert(name.to_string(), v);
            continue;
        }
        if let Some(rest) = t.strip_prefix("CPU ")
            && let Some((cpu, tail)) = rest.split_once(':')
            && let (Ok(cpu), Some(nr)) = (cpu.trim().parse(), field(tail, "nr_run="))
        {
            d.cpus.insert(cpu, nr.parse().unwrap_or(u32::MAX));
            continue;
        }
        // " *R comm[pid] +12ms": a task's first line.
        if let Some(open) = t.rfind('[')
            && t.ends_with("ms")
            && let Some(close) = t[open..].find(']')
            && let Ok(pid) = t[open + 1..open + close].parse::<i32>()
        {
            let comm = t[..open]
                .split_whitespace()
                .last()
                .unwrap_or("")
                .to_string();
            d.tasks.push(KernelTask {
                comm,
                pid,
                ..KernelTask::default()
            });
            continue;
        }
        let Some(task) = d.tasks.last_mut() else {
            continue;
        };
        if let Some(v) = field(t, "scx_state/flags=") {
            let flags = v.split('/').nth(1).unwrap_or("");
            task.flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap_or(!0);
        }
        if let Some(v) = field(t, "ops_state/qseq=") {
            task.ops_state = v
                .split('/')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(!0);
        }
        if let Some(v) = field(t, "dsq_id=") {
            task.dsq_id = v.to_string();
        }
        if let Some(v) = field(t, "weight=") {
            task.weight = v.parse().unwrap_or(0);
        }
    }
    d
}

/// Every dump of the run, in time order.
fn dumps(r: &RunReport) -> Vec<&Report> {
    r.dump
        .iter()
        .chain(r.more_dumps.iter().map(|d| &d.report))
        .collect()
}

#[test]
fn the_kernels_own_dump_of_an_error_exit_agrees_with_the_walkers() {
    let scenario = common::stuck_next_to_spinners();
    // The monitor's stall (1.5 s) and its follow-up (2.5 s) come before
    // the kernel's watchdog (4 s); ops.exit() then holds for 3 s.
    let report = KtstrTest::new("the_kernels_own_dump_of_an_error_exit_agrees_with_the_walkers")
        .topology("1n1l2c1t")
        .scheduler(
            FIXTURE,
            &[
                "--mode=global",
                "--stall-comm=stuck",
                "--watchdog-ms=4000",
                "--exit-hold-ms=3000",
            ],
        )
        .scenario_def(scenario)
        .duration_secs(7)
        .thresholds(Thresholds {
            max_gap: Duration::from_millis(1500),
            ..Thresholds::default()
        })
        .report();
    let Some(r) = report else { return };
    let all = dumps(&r);
    let exit = all
        .iter()
        // A dump can catch the kernel writing its own (it comes in an
        // irq_work after the exit is claimed); the run then dumps again.
        .find(|d| d.scheduler.exit_dump.is_some() && !d.scheduler.exit_dump_unfinished)
        .unwrap_or_else(|| {
            panic!(
                "no dump holds the kernel's exit dump; reasons: {:?} {:?}",
                r.dump_reason,
                r.more_dumps.iter().map(|d| &d.reason).collect::<Vec<_>>()
            )
        });
    let s = &exit.scheduler;
    assert_eq!(s.exit_kind_name, "SCX_EXIT_ERROR_STALL", "{s:?}");
    let text = s.exit_dump.as_deref().unwrap_or_default();
    let kernel = parse(text);
    eprintln!("the kernel's dump:\n{text}");

    // The same bt array, named by the kernel (%pS) and by us.
    let ours: Vec<&str> = s
        .exit_backtrace
        .iter()
        .map(|f| f.symbol.as_deref().unwrap_or("?"))
        .collect();
    assert!(!ours.is_empty(), "{s:?}");
    assert_eq!(kernel.backtrace, ours, "backtrace: kernel vs walker");
    assert!(s.exit_cpu.is_some(), "{s:?}");

    // Every task the kernel listed is in our dump with its comm and weight.
    assert!(!kernel.tasks.is_empty(), "no task parsed from:\n{text}");
    for kt in &kernel.tasks {
        let t = exit
            .tasks
            .iter()
            .find(|t| t.pid == kt.pid)
            .unwrap_or_else(|| panic!("{kt:?} not in our dump:\n{}", exit.to_text()));
        assert_eq!(
            (t.comm.as_str(), t.weight),
            (kt.comm.as_str(), kt.weight),
            "{kt:?}"
        );
    }
    // The same counters by the same names; ours, read later, cannot be
    // lower (they only grow).
    let events: BTreeMap<&str, i64> = s
        .events
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value))
        .collect();
    assert_eq!(
        kernel.events.keys().map(String::as_str).collect::<Vec<_>>(),
        events.keys().copied().collect::<Vec<_>>(),
        "event names"
    );
    for (name, v) in &kernel.events {
        assert!(
            events[name.as_str()] >= *v,
            "{name}: ours {events:?}, kernel {v}"
        );
    }
    // The CPUs the kernel dumped exist in ours.
    for cpu in kernel.cpus.keys() {
        assert!(exit.cpus.iter().any(|c| c.cpu == *cpu), "cpu {cpu}");
    }

    // The stalled task sat on the fixture's DSQ from the stall to the
    // error: the kernel's dump and our last dump before the exit agree.
    let stuck = kernel
        .tasks
        .iter()
        .find(|t| t.comm == "stuck")
        .unwrap_or_else(|| panic!("the kernel's dump lists no stuck task:\n{text}"));
    assert_eq!(stuck.dsq_id, "0xdead", "{stuck:?}");
    let before = all
        .iter()
        .rev()
        .find(|d| d.scheduler.exit_kind == 0)
        .expect("a dump before the exit");
    let ours = before
        .tasks
        .iter()
        .find(|t| t.pid == stuck.pid)
        .expect("the stuck task in the dump before the exit");
    assert_eq!(
        ours.placement,
        Placement::Queued {
            dsq: "user 0xdead".into()
        }
    );
    assert_eq!(ours.dsq.as_deref(), Some("user 0xdead"));
    // Sitting there for seconds, it keeps every invariant of a queued task
    // (a freeze lands mid-update only for tasks that move).
    let about_stuck: Vec<_> = before
        .health
        .inconsistencies
        .iter()
        .filter(|f| f.what.pid() == Some(stuck.pid))
        .collect();
    assert!(about_stuck.is_empty(), "{about_stuck:#?}");
    let queued = ours.scx_flags.iter().any(|f| f == "SCX_TASK_QUEUED");
    assert_eq!(queued, stuck.flags & 1 != 0, "{ours:?} vs {stuck:?}");
    assert_eq!(
        ours.ops_state.starts_with("SCX_OPSS_NONE"),
        stuck.ops_state == 0,
        "{ours:?} vs {stuck:?}"
    );
    ktstr_tests::assert_no_vm_left_behind();
}

//! The nested-virtualization tier: ktstr's KVM VMM on a real `/dev/kvm`,
//! on hosts without VT-x/AMD-V. One L1 guest (the fetched kernel under
//! QEMU TCG with an emulated AMD CPU: SVM + nested paging, kvm_amd loaded)
//! runs, one after the other:
//!
//! - `vmm-full-boot`: the VMM's full-boot tests (vmm/tests/vmm_full_boot.rs),
//!   where a skip is a failure (`KTSTR_REQUIRE=all`);
//! - `bpfland-kvm`: `ktstr run --backend kvm` with scx_bpfland and a dump;
//! - `fixture-stall`, `fixture-error`: scx-fixture's stall and error dumps
//!   (scx-fixture/tests/failure_dumps.rs) with `KTSTR_BACKEND=kvm`.
//!
//! Meanwhile the host runs the `bpfland-kvm` scenario on QEMU; the two
//! reports must have the same shape (sections and fields filled, the
//! scenario's workers in both dumps, the same checks passing), and both
//! pause windows are printed. Every job's failure is reported with the
//! guest's own output; all are checked before the test fails.

use std::time::{Duration, Instant};

use ktstr::checks::Thresholds;
use ktstr::nested::{self, GUEST_CACHE, Job, L1Config, L1Run};
use ktstr::run::RunReport;
use ktstr::session::{SchedulerConfig, SessionConfig};
use ktstr::vm::Backend;
use ktstr_tests::{Need, have_tool, skip};
use serde_json::Value;

const TEST: &str = "nested_kvm_tier";
/// The scenario both backends run (job `bpfland-kvm` and the host's run).
const TOPOLOGY: &str = "1n1l2c1t";
const DURATION: Duration = Duration::from_secs(4);
const DUMP_AT: Duration = Duration::from_secs(2);
/// The VMM's full-boot test's topology in L1.
const FULL_BOOT_TOPOLOGY: &str = "2n2l1c1t";
/// Fresh L1 guests after hangs, at most: the time budget is the bound
/// that matters (a hang costs about 40 s; one CI run needed all of ten).
const MAX_RETRIES: usize = 20;
/// No fresh L1 is started this long after the tier began.
const RETRY_BUDGET: Duration = Duration::from_secs(16 * 60);
/// The job that runs ktstr-vmm's freeze_dump example.
const EXAMPLE_JOB: &str = "vmm-example-freeze-dump";
/// The failure-dump tests run inside L1, one L2 boot each.
const FIXTURE_TESTS: [(&str, &str); 2] = [
    (
        "fixture-stall",
        "a_task_the_scheduler_never_dispatches_is_caught_as_a_stall_on_its_dsq",
    ),
    (
        "fixture-error",
        "an_injected_scx_bpf_error_is_reported_with_its_kind_and_message",
    ),
];

/// Everything the tier needs from the host, or the reason it cannot run.
struct Inputs {
    kernel_dir: std::path::PathBuf,
    bpfland: std::path::PathBuf,
    exes: ktstr_tests::Executables,
}

fn inputs() -> Result<Inputs, (Need, String)> {
    for tool in ["qemu-system-x86_64", "busybox"] {
        if !have_tool(tool) {
            return Err((
                Need::Tool,
                format!("{tool} not installed (./setup.sh installs it)"),
            ));
        }
    }
    let kernel_dir = ktstr_tests::cached_kernel_dir().map_err(|e| (Need::Kernel, e))?;
    if ktstr::kernel::modules::cached_kvm_modules(&kernel_dir).is_none() {
        return Err((
            Need::Kernel,
            format!(
                "{} has no KVM modules for the L1 guest: run `ktstr kernel fetch --kvm-modules` (./setup.sh does)",
                kernel_dir.display()
            ),
        ));
    }
    let bpfland = ktstr::scheduler::resolve("bpfland").map_err(|e| (Need::Tool, e.to_string()))?;
    let exes = ktstr_tests::workspace_executables().map_err(|e| (Need::Tool, e))?;
    Ok(Inputs {
        kernel_dir,
        bpfland,
        exes,
    })
}

fn exe(exes: &ktstr_tests::Executables, name: &str, test: bool) -> std::path::PathBuf {
    exes.get(&(name.to_string(), test))
        .unwrap_or_else(|| panic!("cargo built no {name} (test harness: {test}): {exes:#?}"))
        .clone()
}

/// The L1 guest: programs at their host paths (the fixture's path is
/// compiled into its tests), scx_bpfland in L1's tool cache, four jobs.
fn l1_config(inp: &Inputs) -> L1Config {
    let mut cfg = L1Config::new(&inp.kernel_dir);
    let ktstr = exe(&inp.exes, "ktstr", false);
    let full_boot = exe(&inp.exes, "vmm_full_boot", true);
    let failure_dumps = exe(&inp.exes, "failure_dumps", true);
    let freeze_dump = exe(&inp.exes, "freeze_dump", false);
    for p in [
        &ktstr,
        &full_boot,
        &failure_dumps,
        &freeze_dump,
        &exe(&inp.exes, "scx_fixture", false),
    ] {
        cfg.program(p);
    }
    cfg.programs.push((
        format!("{GUEST_CACHE}/tools/bin/scx_bpfland"),
        inp.bpfland.clone(),
    ));
    let s = |p: &std::path::Path| p.display().to_string();
    cfg.jobs.push(
        Job::new(
            "vmm-full-boot",
            &[
                &s(&full_boot),
                "--exact",
                "full_boot_to_init_with_numa_and_smt",
                "an_elf_without_a_pvh_note_is_refused",
                "--test-threads=1",
                "--nocapture",
            ],
        )
        .env("KTSTR_REQUIRE", "all")
        .timeout(Duration::from_secs(240)),
    );
    // Two NUMA nodes on two vCPUs, unless the host names another topology:
    // the test's own (2 nodes, SMT, 8 vCPUs) hung L1 in six boots out of
    // six in one CI run (README: L1 hangs).
    let topology = std::env::var("KTSTR_FULL_BOOT_TOPOLOGY")
        .unwrap_or_else(|_| FULL_BOOT_TOPOLOGY.to_string());
    if let Some(job) = cfg.jobs.last_mut() {
        job.env.push(("KTSTR_FULL_BOOT_TOPOLOGY".into(), topology));
    }
    // The embedding example on ktstr-vmm (public API only): boots the
    // kernel with no initramfs, finds it from vCPU 0 and dumps from the
    // freeze hook.
    let release = inp
        .kernel_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let vmlinux = format!("{GUEST_CACHE}/kernels/{release}/vmlinux");
    cfg.jobs.push(
        Job::new(EXAMPLE_JOB, &[&s(&freeze_dump), &vmlinux]).timeout(Duration::from_secs(120)),
    );
    let run = Job::new("bpfland-kvm", &[]).timeout(Duration::from_secs(240));
    let json = format!("{}/report.json", run.out_dir());
    let (duration, dump_at) = (
        format!("{}s", DURATION.as_secs()),
        format!("{}s", DUMP_AT.as_secs()),
    );
    let ktstr = s(&ktstr);
    cfg.jobs.push(Job {
        argv: [
            ktstr.as_str(),
            "run",
            "--backend",
            "kvm",
            "--scheduler",
            "bpfland",
            "--topology",
            TOPOLOGY,
            "--duration",
            duration.as_str(),
            "--dump-at",
            dump_at.as_str(),
            "--json",
            json.as_str(),
        ]
        .map(str::to_string)
        .to_vec(),
        ..run
    });
    for (name, test) in FIXTURE_TESTS {
        cfg.jobs.push(
            Job::new(name, &[&s(&failure_dumps), "--exact", test, "--nocapture"])
                .env("KTSTR_BACKEND", "kvm")
                .env("KTSTR_REQUIRE", "all")
                .timeout(Duration::from_secs(240)),
        );
    }
    // KTSTR_NESTED_JOBS=a,b runs only those (while working on one).
    if let Ok(only) = std::env::var("KTSTR_NESTED_JOBS") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        cfg.jobs.retain(|j| only.contains(&j.name.as_str()));
    }
    cfg
}

/// The same scenario as job `bpfland-kvm`, on the host under QEMU.
fn qemu_run(inp: &Inputs) -> Result<RunReport, String> {
    let mut cfg = SessionConfig::new(
        inp.kernel_dir.display().to_string(),
        TOPOLOGY.parse().map_err(|e| format!("{e}"))?,
    );
    cfg.backend = Backend::Qemu;
    cfg.duration = DURATION;
    cfg.scheduler = Some(SchedulerConfig {
        binary: inp.bpfland.clone(),
        args: Vec::new(),
    });
    let scenario = ktstr::scenario::catalogue::find("steady").map_err(|e| e.to_string())?;
    ktstr::run::run(&cfg, &scenario, &Thresholds::default(), Some(DUMP_AT))
        .map_err(|e| format!("{e:#}"))
}

/// A job's failure, with what the guest said.
fn job_failure(run: &L1Run, name: &str) -> Option<String> {
    let Some(j) = run.job(name) else {
        return Some(format!("job {name}: never started in L1 ({:?})", run.end));
    };
    if j.passed() {
        return None;
    }
    if j.exit_code.is_none() {
        // Cut off: what it said so far is on L1's console.
        return Some(format!(
            "job {name}: L1 ended mid-job ({:?}); L1 console (the job's output streams there), end:\n{}",
            run.end,
            nested::indent(&run.console_tail(60), "  | ")
        ));
    }
    Some(format!(
        "job {name}: exit {} after {} s; its output (end):\n{}",
        j.exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "none (L1 ended mid-job)".into()),
        j.secs
            .map(|s| format!("{s:.1}"))
            .unwrap_or_else(|| "?".into()),
        nested::indent(&last_lines(&j.output, 60), "  | ")
    ))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Which fields of a JSON value are filled, as paths: objects by key,
/// arrays as `[]` (what they hold is the guest's state at the freeze: a
/// CPU's pending kicks or queued tasks, empty on one backend and not on
/// the other), `null` marked as such.
fn shape(v: &Value, path: &str, out: &mut std::collections::BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                shape(v, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(_) => {
            out.insert(format!("{path}[]"));
        }
        Value::Null => {
            out.insert(format!("{path}=null"));
        }
        _ => {
            out.insert(path.to_string());
        }
    }
}

/// Differences in shape between the QEMU and the KVM report: the
/// sections, the dump's scheduler and health, its first CPU.
fn shape_differences(qemu: &RunReport, kvm: &RunReport) -> Vec<String> {
    let section = |r: &RunReport, key: &str| {
        let v = serde_json::to_value(r).expect("a report serializes");
        let mut s = std::collections::BTreeSet::new();
        let mut part = v.clone();
        for k in key.split('.').filter(|k| !k.is_empty()) {
            part = match k.parse::<usize>() {
                Ok(i) => part.get(i).cloned().unwrap_or(Value::Null),
                Err(_) => part.get(k).cloned().unwrap_or(Value::Null),
            };
        }
        match &part {
            // The top level and the dump: which sections are there and
            // filled, not their contents.
            Value::Object(m) if key.is_empty() || key == "dump" => {
                for (k, v) in m {
                    s.insert(format!("{k}{}", if v.is_null() { "=null" } else { "" }));
                }
            }
            other => shape(other, key, &mut s),
        }
        s
    };
    let mut diffs = Vec::new();
    for key in ["", "dump", "dump.scheduler", "dump.health", "dump.cpus.0"] {
        let (q, k) = (section(qemu, key), section(kvm, key));
        for only in q.symmetric_difference(&k) {
            let side = if q.contains(only) { "QEMU" } else { "KVM" };
            diffs.push(format!("{key:>12}: only on {side}: {only}"));
        }
    }
    diffs
}

/// Job `bpfland-kvm`'s report against the host's QEMU run of the same
/// scenario (issue parts 3 and 4).
fn compare(run: &L1Run, qemu: &Result<RunReport, String>) -> Vec<String> {
    let mut failures = Vec::new();
    let qemu = match qemu {
        Ok(r) => r,
        Err(e) => return vec![format!("the host's QEMU run of the scenario failed: {e}")],
    };
    let kvm: RunReport = match run
        .job("bpfland-kvm")
        .and_then(|j| j.files.get("report.json"))
        .map(|b| serde_json::from_slice(b))
    {
        Some(Ok(r)) => r,
        Some(Err(e)) => return vec![format!("bpfland-kvm's report.json does not parse: {e}")],
        None => {
            return vec![
                "no report.json from bpfland-kvm: QEMU and KVM reports cannot be compared".into(),
            ];
        }
    };
    let pause = |r: &RunReport| {
        r.pause
            .map(|p| p.to_text())
            .unwrap_or_else(|| "none".into())
    };
    eprintln!(
        "pause window of the dump of `{} {TOPOLOGY}` at {DUMP_AT:?}:\n  QEMU ({}, TCG on the host): {}\n  KVM  ({}, ktstr's VMM in L1): {}\n  frozen share of the workload: QEMU {:.3}%, KVM {:.3}%\n  whole run (boot to power-off): QEMU {:.1} s, KVM {:.1} s",
        qemu.scenario,
        qemu.backend,
        pause(qemu),
        kvm.backend,
        pause(&kvm),
        qemu.frozen_ratio * 100.0,
        kvm.frozen_ratio * 100.0,
        qemu.wall_ms as f64 / 1000.0,
        kvm.wall_ms as f64 / 1000.0
    );
    if kvm.backend != "kvm" || qemu.backend != "qemu" {
        failures.push(format!(
            "backends: the L1 run says {:?}, the host's {:?}",
            kvm.backend, qemu.backend
        ));
    }
    if kvm.pause.is_none() {
        failures.push("the KVM report has no pause window".into());
    }
    for d in shape_differences(qemu, &kvm) {
        failures.push(format!("report shape: {d}"));
    }
    let checks = |r: &RunReport| {
        r.checks
            .iter()
            .map(|c| (c.name.clone(), c.passed))
            .collect::<Vec<_>>()
    };
    if checks(qemu) != checks(&kvm) {
        failures.push(format!(
            "checks differ: QEMU {:?}, KVM {:?}",
            checks(qemu),
            checks(&kvm)
        ));
    }
    for (side, r) in [("QEMU", qemu), ("KVM", &kvm)] {
        let Some(dump) = &r.dump else {
            failures.push(format!("{side}: no dump"));
            continue;
        };
        let missing: Vec<i32> = r
            .workers
            .iter()
            .map(|w| w.pid)
            .filter(|pid| !dump.tasks.iter().any(|t| t.pid == *pid))
            .collect();
        if r.workers.is_empty() || !missing.is_empty() {
            failures.push(format!(
                "{side}: workers {:?} missing from its dump (of {} workers)",
                missing,
                r.workers.len()
            ));
        }
    }
    failures
}

/// L1 stopped taking interrupts (its heartbeat went silent: a TCG
/// nested-SVM problem, README): say so loudly and run the jobs it did not
/// finish once more in a fresh L1.
fn retry_after_hang(cfg: &L1Config, first: L1Run, silent: Duration) -> L1Run {
    let finished: Vec<String> = first
        .jobs
        .iter()
        .filter(|j| j.exit_code.is_some())
        .map(|j| j.name.clone())
        .collect();
    let mut again = cfg.clone();
    again.jobs.retain(|j| !finished.contains(&j.name));
    eprintln!(
        "{TEST}: L1 HUNG (no heartbeat for {:.0} s) after {:.1} s, in job {:?}, finished jobs {finished:?}; \
         running the others in a fresh L1. Its CPU (samples {:?} apart):\n{}\nIts local APIC: {}\nIts console's end:\n{}",
        silent.as_secs_f64(),
        first.wall.as_secs_f64(),
        first.unfinished_job(),
        nested::HUNG_SAMPLE_GAP,
        nested::indent(&first.hang_cpu().join("\n"), "  | "),
        first.hang_interrupts(),
        nested::indent(&first.console_tail(30), "  | ")
    );
    let second = nested::run(&again)
        .unwrap_or_else(|e| panic!("{TEST}: the second L1 guest could not be run: {e}"));
    let mut run = first;
    run.jobs.retain(|j| j.exit_code.is_some());
    run.jobs.extend(second.jobs);
    run.end = second.end;
    run.done_at = second.done_at;
    run.wall += second.wall;
    run.console = second.console;
    run.qemu_stderr = second.qemu_stderr;
    run
}

#[test]
fn nested_kvm_tier() {
    let inp = match inputs() {
        Ok(i) => i,
        Err((need, why)) => return skip(TEST, need, &why),
    };
    let cfg = l1_config(&inp);
    let t = Instant::now();
    // The host's QEMU run goes beside L1 (one TCG vCPU each on a 2-core
    // host); L1's QEMU stays on this thread, which outlives it.
    let compare_with_qemu = cfg.jobs.iter().any(|j| j.name == "bpfland-kvm");
    let (l1, qemu) = std::thread::scope(|s| {
        let qemu = s.spawn(|| {
            if compare_with_qemu {
                qemu_run(&inp)
            } else {
                Err("not run".into())
            }
        });
        let l1 = nested::run(&cfg);
        (l1, qemu.join().expect("the QEMU run panicked"))
    });
    let mut run = l1.unwrap_or_else(|e| panic!("{TEST}: the L1 guest could not be run: {e}"));
    // After a hang, fresh L1s for the jobs not yet finished (an L1 hung
    // in one L2 boot of three to one of two here, more under load;
    // README): none started past the time budget, so the tier stays
    // within its share of CI.
    for _ in 0..MAX_RETRIES {
        let nested::L1End::Hung(silent) = run.end else {
            break;
        };
        if t.elapsed() > RETRY_BUDGET {
            eprintln!(
                "{TEST}: L1 hung again after {:.0} s; no more fresh L1s",
                t.elapsed().as_secs_f64()
            );
            break;
        }
        run = retry_after_hang(&cfg, run, silent);
    }
    eprintln!(
        "{TEST}: {:.1} s in all\n{}",
        t.elapsed().as_secs_f64(),
        run.summary()
    );
    if let Ok(q) = &qemu {
        eprintln!(
            "host QEMU run of the scenario: {:.1} s",
            q.wall_ms as f64 / 1000.0
        );
    }
    let mut failures = Vec::new();
    for (fact, want) in [
        ("module-irqbypass", "ok"),
        ("module-kvm", "ok"),
        ("module-kvm-amd", "ok"),
        ("svm", "yes"),
        ("dev-kvm", "yes"),
    ] {
        let got = run.facts.get(fact).map(String::as_str);
        if got != Some(want) {
            failures.push(format!("L1: {fact} is {got:?}, not {want:?}"));
        }
    }
    for job in &cfg.jobs {
        failures.extend(job_failure(&run, &job.name));
    }
    // The example's dump names what it found: no scheduler (there is no
    // userspace to start one), every CPU, and the pause it took.
    if let Some(j) = run.job(EXAMPLE_JOB).filter(|j| j.passed()) {
        for want in ["scheduler: none attached", "cpu 0", "cpu 1", "pause split"] {
            if !j.output.contains(want) {
                failures.push(format!(
                    "job {EXAMPLE_JOB}: no {want:?} in its dump:\n{}",
                    nested::indent(&last_lines(&j.output, 40), "  | ")
                ));
            }
        }
    }
    if compare_with_qemu {
        failures.extend(compare(&run, &qemu));
    }
    if run.end != nested::L1End::Finished {
        failures.push(format!(
            "L1 did not finish: {:?}; QEMU stderr: {}\nL1 console tail:\n{}",
            run.end,
            run.qemu_stderr.trim(),
            nested::indent(&run.console_tail(40), "  | ")
        ));
    }
    ktstr_tests::assert_no_vm_left_behind();
    assert!(
        failures.is_empty(),
        "{TEST}: {} failure(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

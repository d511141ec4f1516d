//! PID 1: mount, report, start the scheduler and the workers, report the
//! results, power off. Every failure is reported over the channel before
//! the machine powers off, so the host never waits for a message that
//! will not come.

mod cgroup;
mod channel;
mod job;
mod load;
mod mounts;
mod scheduler;
mod work;
pub mod worker;

use std::time::{Duration, Instant};

use ktstr_agent::proto::{self, Job, Msg, SchedExtState, ScxState, StepAction};

use channel::Channel;

/// The agent's own flow; any error ends the run.
fn run(ch: &Channel) -> Result<(), String> {
    let job = match job::from_initramfs()? {
        Some(job) => {
            hello(ch)?;
            job
        }
        None => {
            let port = job::JobPort::open()?;
            hello(ch)?;
            ch.send(&Msg::Ready);
            port.read()?
        }
    };
    if job.version != proto::VERSION {
        return Err(format!(
            "job version {} but this agent speaks {}",
            job.version,
            proto::VERSION
        ));
    }

    let mut sched = match &job.scheduler {
        Some(s) => match scheduler::Scheduler::start(s) {
            Ok((sched, msg)) => {
                ch.send(&msg);
                Some(sched)
            }
            Err(msg) => {
                ch.send(&msg);
                return Ok(());
            }
        },
        None => None,
    };

    let (results, cpu_busy) = if job.shell {
        shell(ch, &job)?;
        (Vec::new(), Vec::new())
    } else {
        let sampler = load::Sampler::start(Duration::from_millis(500));
        let results = workload(ch, &job);
        (results?, sampler.finish())
    };
    let sched_ext = sched_ext_state();
    let (scheduler_exit, scheduler_output) = match sched.as_mut() {
        Some(s) => (s.exited(), s.output_tail()),
        None => (None, String::new()),
    };
    ch.send(&Msg::Finished {
        workers: results,
        sched_ext,
        scheduler_exit,
        scheduler_output,
        cpu_busy,
    });
    if let Some(s) = sched {
        s.stop();
    }
    Ok(())
}

/// Who is talking, the machine as the guest sees it, and the kernel
/// symbols the host asked for (the same for every job, so a snapshot
/// taken while the agent waits for its job has them).
fn hello(ch: &Channel) -> Result<(), String> {
    ch.send(&Msg::Hello {
        agent: env!("CARGO_PKG_VERSION").into(),
        release: read_trimmed("/proc/sys/kernel/osrelease"),
        nr_cpus: std::thread::available_parallelism().map_or(0, |n| n.get() as u32),
        numa_nodes: numa_nodes(),
        cmdline: read_trimmed("/proc/cmdline"),
    });
    let wanted = std::fs::read_to_string(proto::KALLSYMS_PATH).unwrap_or_default();
    let wanted: Vec<&str> = wanted.split_whitespace().collect();
    ch.send(&Msg::Kallsyms {
        text: kallsyms(&wanted)?,
    });
    Ok(())
}

/// Start the cgroups and their workers, apply the steps at their times,
/// and collect every worker's result.
fn workload(ch: &Channel, job: &Job) -> Result<Vec<proto::WorkerResult>, String> {
    let start = Instant::now();
    let end = start + Duration::from_millis(job.duration_ms);
    let mut groups: Vec<(String, Vec<worker::Worker>)> = Vec::new();
    for cg in &job.cgroups {
        cgroup::create(cg)?;
        groups.push((cg.name.clone(), worker::start(cg, end - Instant::now())?));
    }
    ch.send(&Msg::Running {
        workers: groups
            .iter()
            .flat_map(|(_, ws)| ws.iter().map(|w| w.info.clone()))
            .collect(),
        sched_ext: sched_ext_state(),
    });
    let mut results = Vec::new();
    for step in &job.steps {
        let at = start + Duration::from_millis(step.at_ms);
        if at >= end {
            break;
        }
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        match &step.action {
            StepAction::SetCpus { cgroup: name, cpus } => cgroup::set_cpus(name, cpus)?,
            StepAction::AddCgroup(cg) => {
                cgroup::create(cg)?;
                let ws = worker::start(cg, end.saturating_duration_since(Instant::now()))?;
                groups.push((cg.name.clone(), ws));
            }
            StepAction::RemoveCgroup { cgroup: name } => {
                let i = groups
                    .iter()
                    .position(|(n, _)| n == name)
                    .ok_or_else(|| format!("step removes cgroup {name}, which does not exist"))?;
                let (_, ws) = groups.remove(i);
                worker::stop(&ws);
                results.extend(worker::finish(ws, Instant::now() + worker::FINISH_GRACE));
                cgroup::remove(name)?;
            }
            StepAction::MoveWorkers { from, to } => {
                for (_, ws) in groups.iter().filter(|(n, _)| n == from) {
                    for w in ws {
                        cgroup::join(to, w.info.pid)?;
                    }
                }
            }
            StepAction::Hotplug { cpu, online } => cgroup::hotplug(*cpu, *online)?,
            StepAction::SetAffinity { cgroup: name, cpus } => {
                for (_, ws) in groups.iter().filter(|(n, _)| n == name) {
                    for w in ws {
                        cgroup::set_affinity(w.info.pid, cpus)?;
                    }
                }
            }
            StepAction::SetWeight {
                cgroup: name,
                weight,
            } => cgroup::set_weight(name, *weight)?,
        }
    }
    for (_, ws) in groups {
        results.extend(worker::finish(ws, end + worker::FINISH_GRACE));
    }
    Ok(results)
}

/// An interactive busybox shell on the console, with the scheduler's
/// libraries on the path; returns when it exits.
fn shell(ch: &Channel, job: &Job) -> Result<(), String> {
    let _ = std::process::Command::new("/bin/busybox")
        .args(["--install", "-s", "/bin"])
        .status();
    ch.send(&Msg::Running {
        workers: Vec::new(),
        sched_ext: sched_ext_state(),
    });
    let mut cmd = std::process::Command::new("/bin/busybox");
    // setsid -c: a session with the console as controlling tty, so job
    // control and Ctrl-C work.
    cmd.args(["setsid", "-c", "/bin/sh", "-l"])
        .env("PATH", "/ktstr/bin:/bin")
        .env("PS1", "ktstr# ")
        .env("HOME", "/");
    if let Some(s) = &job.scheduler {
        cmd.envs(s.env.iter().map(|(k, v)| (k, v)));
    }
    cmd.status()
        .map(|_| ())
        .map_err(|e| format!("starting the shell: {e}"))
}

/// PID 1's entry point.
pub fn main() {
    let pid1 = std::process::id() == 1;
    if pid1 {
        mounts::mount_all();
    }
    let ch = Channel::open();
    let panic_ch = ch.clone();
    std::panic::set_hook(Box::new(move |info| {
        panic_ch.send(&Msg::Error {
            message: format!("agent panicked: {info}"),
        });
        power_off();
    }));
    if let Err(message) = run(&ch) {
        ch.send(&Msg::Error { message });
    }
    if pid1 {
        power_off();
    }
}

/// `/sys/kernel/sched_ext` now.
pub fn sched_ext_state() -> SchedExtState {
    SchedExtState {
        state: std::fs::read_to_string("/sys/kernel/sched_ext/state")
            .map(|s| ScxState::parse(&s))
            .unwrap_or_else(|e| ScxState::Other(format!("unreadable: {e}"))),
        ops: std::fs::read_to_string("/sys/kernel/sched_ext/root/ops")
            .ok()
            .map(|s| s.trim().to_string()),
    }
}

fn numa_nodes() -> u32 {
    std::fs::read_dir("/sys/devices/system/node")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.strip_prefix("node")
                        .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
                })
                .count() as u32
        })
        .unwrap_or(0)
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The `/proc/kallsyms` lines naming `wanted` symbols.
fn kallsyms(wanted: &[&str]) -> Result<String, String> {
    let all = std::fs::read_to_string("/proc/kallsyms")
        .map_err(|e| format!("reading /proc/kallsyms: {e}"))?;
    Ok(all
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|name| wanted.contains(&name))
        })
        .flat_map(|l| [l, "\n"])
        .collect())
}

fn power_off() {
    // SAFETY: plain syscalls; as PID 1 reboot() does not return on success.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // Not PID 1, or reboot failed: PID 1 exiting makes the kernel panic,
    // and ktstr boots with panic=-1 and -no-reboot, so QEMU exits either way.
    std::process::exit(1);
}

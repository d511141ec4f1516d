//! Workers: the agent binary re-run with [`proto::WORKER_ARG`] and its
//! arguments as JSON. A worker joins its cgroup, takes its policy, nice
//! and affinity, names itself, works until its deadline (or SIGTERM), and
//! prints what it measured as JSON on stdout.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ktstr_agent::proto::{self, CgroupJob, Policy, WorkerInfo, WorkerResult, WorkerSpec};
use serde::{Deserialize, Serialize};

use super::cgroup;
use super::work::{self, Meter, STOP};

/// What a worker process is told.
#[derive(Debug, Serialize, Deserialize)]
struct Args {
    spec: WorkerSpec,
    cgroup: String,
    run_ms: u64,
}

/// A started worker.
#[derive(Debug)]
pub struct Worker {
    /// Who it is.
    pub info: WorkerInfo,
    child: Child,
}

/// Start `cg`'s workers, each running for `run`.
pub fn start(cg: &CgroupJob, run: Duration) -> Result<Vec<Worker>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("agent's own path: {e}"))?;
    let mut workers = Vec::new();
    for spec in &cg.workers {
        let args = serde_json::to_string(&Args {
            spec: spec.clone(),
            cgroup: cg.name.clone(),
            run_ms: run.as_millis() as u64,
        })
        .map_err(|e| e.to_string())?;
        for _ in 0..spec.count {
            let child = Command::new(&exe)
                .arg(proto::WORKER_ARG)
                .arg(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("starting worker {}: {e}", spec.name))?;
            workers.push(Worker {
                info: WorkerInfo {
                    name: spec.name.clone(),
                    cgroup: cg.name.clone(),
                    pid: child.id() as i32,
                    comm: String::new(),
                },
                child,
            });
        }
    }
    // A worker names itself once set up; read its comm once it has.
    for w in &mut workers {
        let want: String = w.info.name.chars().take(15).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            w.info.comm = std::fs::read_to_string(format!("/proc/{}/comm", w.info.pid))
                .map(|s| s.trim_end().to_string())
                .unwrap_or_default();
            if w.info.comm == want || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(workers)
}

/// Ask workers to stop now.
pub fn stop(workers: &[Worker]) {
    for w in workers {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(w.info.pid, libc::SIGTERM) };
    }
}

/// How long past its deadline a worker may take to report: longer than
/// the sched_ext watchdog (30 s at most), which frees a worker a broken
/// scheduler never runs; past it the worker is killed.
pub const FINISH_GRACE: Duration = Duration::from_secs(35);
/// How long killed workers get to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// One worker's report: its stdout's JSON, or why there is none.
fn collect(mut w: Worker) -> WorkerResult {
    let mut out = String::new();
    if let Some(mut s) = w.child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    let status = w.child.wait();
    serde_json::from_str(out.trim())
        .unwrap_or_else(|_| failed(&w.info, format!("no result ({status:?}): {out:?}")))
}

fn failed(info: &WorkerInfo, error: String) -> WorkerResult {
    WorkerResult {
        name: info.name.clone(),
        cgroup: info.cgroup.clone(),
        pid: info.pid,
        error: Some(error),
        ..WorkerResult::default()
    }
}

/// Wait for every worker, at most until `deadline`, and collect what each
/// reported; a worker still running then is killed and reported so.
pub fn finish(workers: Vec<Worker>, deadline: Instant) -> Vec<WorkerResult> {
    let infos: Vec<WorkerInfo> = workers.iter().map(|w| w.info.clone()).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, w) in workers.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send((i, collect(w)));
        });
    }
    drop(tx);
    let mut results: Vec<Option<WorkerResult>> = vec![None; infos.len()];
    let mut killed = vec![false; infos.len()];
    let mut kill_deadline = None;
    while results.iter().any(Option::is_none) {
        let until = kill_deadline.unwrap_or(deadline);
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok((i, r)) => results[i] = Some(r),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if kill_deadline.is_none() => {
                for ((info, r), k) in infos.iter().zip(&results).zip(&mut killed) {
                    if r.is_none() {
                        // SAFETY: signalling our own child, not yet reaped
                        // (its collector is still waiting for it).
                        unsafe { libc::kill(info.pid, libc::SIGKILL) };
                        *k = true;
                    }
                }
                kill_deadline = Some(Instant::now() + KILL_WAIT);
            }
            Err(_) => break,
        }
    }
    infos
        .iter()
        .zip(results)
        .zip(killed)
        .map(|((info, r), killed)| match (r, killed) {
            (Some(r), false) => r,
            (Some(_), true) => failed(info, "still running past its end; killed".into()),
            (None, _) => failed(
                info,
                "still running past its end, and did not die when killed".into(),
            ),
        })
        .collect()
}

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn setup(a: &Args) -> Result<(), String> {
    cgroup::join(&a.cgroup, 0)?;
    // SAFETY: plain syscalls on the calling process with valid arguments.
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
        let (policy, prio) = match a.spec.policy {
            Policy::Normal => (libc::SCHED_OTHER, 0),
            Policy::Batch => (libc::SCHED_BATCH, 0),
            Policy::Idle => (libc::SCHED_IDLE, 0),
            Policy::Fifo => (libc::SCHED_FIFO, a.spec.nice),
            Policy::RoundRobin => (libc::SCHED_RR, a.spec.nice),
        };
        let param = libc::sched_param {
            sched_priority: prio,
        };
        if libc::sched_setscheduler(0, policy, &param) != 0 {
            return Err(format!(
                "sched_setscheduler {:?}: {}",
                a.spec.policy,
                std::io::Error::last_os_error()
            ));
        }
        if matches!(a.spec.policy, Policy::Normal | Policy::Batch)
            && libc::setpriority(libc::PRIO_PROCESS, 0, a.spec.nice) != 0
        {
            return Err(format!(
                "nice {}: {}",
                a.spec.nice,
                std::io::Error::last_os_error()
            ));
        }
        if let Some(cpus) = &a.spec.affinity {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in cpus {
                libc::CPU_SET(c as usize, &mut set);
            }
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(format!(
                    "affinity {cpus:?}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    // Named last: a scheduler that picks tasks by comm (the fixture's
    // --stall-comm) then only meets the worker once its setup, which takes
    // cgroup locks the whole guest needs, is done.
    let _ = std::fs::write("/proc/self/comm", &a.spec.name);
    Ok(())
}

/// A worker process: `args` is its JSON.
pub fn main(args: &[String]) {
    let started = Instant::now();
    let parsed: Result<Args, String> = args
        .first()
        .ok_or_else(|| "no worker arguments".to_string())
        .and_then(|a| serde_json::from_str(a).map_err(|e| e.to_string()));
    let mut m = Meter::new();
    let (name, cgroup, outcome) = match parsed {
        Ok(a) => {
            let outcome = setup(&a).and_then(|()| {
                m = Meter::new();
                let deadline = Instant::now() + Duration::from_millis(a.run_ms);
                work::run(a.spec.work, deadline, &mut m)
            });
            (a.spec.name, a.cgroup, outcome)
        }
        Err(e) => ("worker".into(), String::new(), Err(e)),
    };
    let wake_pct_us = m.percentiles();
    let (iterations, error) = match outcome {
        Ok(n) => (n, None),
        Err(e) => (0, Some(e)),
    };
    let us = |d: Duration| d.as_micros() as u64;
    let result = WorkerResult {
        name,
        cgroup,
        pid: std::process::id() as i32,
        iterations,
        cpu_ms: cpu_ms().unwrap_or(0),
        wall_ms: started.elapsed().as_millis() as u64,
        max_gap_us: us(m.max_gap),
        wake_max_us: (m.wakes > 0).then(|| us(m.wake_max)),
        wake_avg_us: m.wake_avg().map(us),
        wake_pct_us,
        remote_permille: m
            .remote
            .filter(|(_, checked)| *checked > 0)
            .map(|(remote, checked)| (remote * 1000 / checked) as u32),
        migrations: m.migrations,
        cpus: m.cpus.into_iter().collect(),
        error,
    };
    println!("{}", serde_json::to_string(&result).unwrap_or_default());
}

/// utime + stime of this process, from /proc/self/stat (USER_HZ = 100).
fn cpu_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised comm, which may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(cmd: &str) -> Worker {
        let child = Command::new("sh")
            .args(["-c", cmd])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Worker {
            info: WorkerInfo {
                name: cmd.into(),
                cgroup: "t".into(),
                pid: child.id() as i32,
                comm: String::new(),
            },
            child,
        }
    }

    #[test]
    fn a_worker_that_never_ends_is_killed_at_the_deadline() {
        let result = WorkerResult {
            name: "ok".into(),
            iterations: 3,
            ..WorkerResult::default()
        };
        let json = serde_json::to_string(&result).unwrap();
        let t = Instant::now();
        let results = finish(
            vec![worker(&format!("echo '{json}'")), worker("exec sleep 1000")],
            Instant::now() + Duration::from_millis(300),
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(results[0], result);
        let err = results[1].error.as_deref().unwrap_or("");
        assert!(err.contains("killed"), "{err}");
    }
}

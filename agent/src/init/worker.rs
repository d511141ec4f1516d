//! Workers: the agent binary re-run with [`proto::WORKER_ARG`], named by
//! its comm, doing its work until a deadline, then printing its result.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ktstr_agent::proto::{self, WorkerInfo, WorkerResult, WorkerSpec};

/// A started worker.
pub struct Worker {
    /// Who it is.
    pub info: WorkerInfo,
    child: Child,
}

/// Start every worker of `specs`, each running for `duration`.
pub fn start(specs: &[WorkerSpec], duration: Duration) -> Result<Vec<Worker>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("agent's own path: {e}"))?;
    let mut workers = Vec::new();
    for spec in specs {
        for _ in 0..spec.count {
            let child = Command::new(&exe)
                .arg(proto::WORKER_ARG)
                .arg(&spec.name)
                .arg(duration.as_millis().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("starting worker {}: {e}", spec.name))?;
            let pid = child.id() as i32;
            workers.push(Worker {
                info: WorkerInfo {
                    name: spec.name.clone(),
                    pid,
                    comm: String::new(),
                },
                child,
            });
        }
    }
    // A worker names itself first thing; read its comm once it has.
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

/// Wait for every worker and collect what each reported.
pub fn finish(workers: Vec<Worker>) -> Vec<WorkerResult> {
    workers
        .into_iter()
        .map(|mut w| {
            let mut out = String::new();
            if let Some(mut s) = w.child.stdout.take() {
                let _ = s.read_to_string(&mut out);
            }
            let status = w.child.wait();
            let parsed: Option<WorkerResult> = serde_json::from_str(out.trim()).ok();
            parsed.unwrap_or_else(|| WorkerResult {
                name: w.info.name.clone(),
                pid: w.info.pid,
                iterations: 0,
                cpu_ms: 0,
                error: Some(format!("no result ({status:?}): {out:?}")),
            })
        })
        .collect()
}

/// A worker process: `args` are its name and run time in ms.
pub fn main(args: &[String]) {
    let name = args.first().cloned().unwrap_or_else(|| "worker".into());
    let ms: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let _ = std::fs::write("/proc/self/comm", &name);
    let deadline = Instant::now() + Duration::from_millis(ms);
    let mut iterations = 0u64;
    let mut x = 1u64;
    'work: loop {
        for _ in 0..1024 {
            for _ in 0..256 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            iterations += 1;
        }
        if Instant::now() >= deadline {
            break 'work;
        }
    }
    let result = WorkerResult {
        name,
        pid: std::process::id() as i32,
        iterations,
        cpu_ms: cpu_ms().unwrap_or(0),
        error: None,
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

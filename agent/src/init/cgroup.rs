//! cgroup v2 directories for the workload, under `/sys/fs/cgroup`.

use std::path::PathBuf;

use ktstr_agent::proto::CgroupJob;

const ROOT: &str = "/sys/fs/cgroup";

fn path(name: &str) -> PathBuf {
    PathBuf::from(ROOT).join(name)
}

fn write(file: PathBuf, value: &str) -> Result<(), String> {
    std::fs::write(&file, value)
        .map_err(|e| format!("writing {value:?} to {}: {e}", file.display()))
}

/// `0,1,5` for `cpuset.cpus`; empty means every CPU.
pub fn cpu_list(cpus: &Option<Vec<u32>>) -> String {
    cpus.as_ref()
        .map(|c| c.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// Create the cgroup with its cpuset, `cpu.weight` and `cpu.max`.
pub fn create(cg: &CgroupJob) -> Result<(), String> {
    create_dir(&cg.name, &cg.cpus)?;
    if let Some(w) = cg.weight {
        set_weight(&cg.name, w)?;
    }
    if let Some(m) = cg.cpu_max {
        write(
            path(&cg.name).join("cpu.max"),
            &format!("{} {}", m.quota_us, m.period_us),
        )?;
    }
    Ok(())
}

/// Rewrite `cpu.weight` (the cpu controller must be there: a kernel
/// without CONFIG_CGROUP_SCHED has none).
pub fn set_weight(name: &str, weight: u32) -> Result<(), String> {
    write(path(name).join("cpu.weight"), &weight.to_string())
}

/// Create cgroup `name` with the cpuset and cpu controllers and `cpus`.
fn create_dir(name: &str, cpus: &Option<Vec<u32>>) -> Result<(), String> {
    // Controllers for children; `cpu` may be absent, cpuset may not.
    let control = PathBuf::from(ROOT).join("cgroup.subtree_control");
    if write(control.clone(), "+cpuset +cpu").is_err() {
        write(control, "+cpuset")?;
    }
    std::fs::create_dir_all(path(name))
        .map_err(|e| format!("creating cgroup {}: {e}", path(name).display()))?;
    set_cpus(name, cpus)
}

/// Rewrite `cpuset.cpus` (every CPU when `None`).
pub fn set_cpus(name: &str, cpus: &Option<Vec<u32>>) -> Result<(), String> {
    let list = match cpus {
        Some(_) => cpu_list(cpus),
        // An empty cpuset.cpus inherits the parent's CPUs.
        None => String::new(),
    };
    write(path(name).join("cpuset.cpus"), &format!("{list}\n"))
}

/// Move process `pid` into cgroup `name` (0: the caller).
pub fn join(name: &str, pid: i32) -> Result<(), String> {
    write(path(name).join("cgroup.procs"), &pid.to_string())
}

/// Remove an empty cgroup (retried briefly: exited tasks leave it lazily).
pub fn remove(name: &str) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..50 {
        match std::fs::remove_dir(path(name)) {
            Ok(()) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(format!("removing cgroup {name}: {last}"))
}

/// Set the CPU affinity of every thread of process `pid`.
pub fn set_affinity(pid: i32, cpus: &[u32]) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays in bounds
    // for CPUs below CPU_SETSIZE, which the scenario's topology bounds.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if (c as usize) < libc::CPU_SETSIZE as usize {
            // SAFETY: in bounds, checked above.
            unsafe { libc::CPU_SET(c as usize, &mut set) };
        }
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("threads of {pid}: {e}"))?;
    for t in tasks.flatten() {
        let Ok(tid) = t.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: a valid set for a thread id; a thread that exited is ESRCH.
        if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) }
            != 0
        {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(format!("affinity {cpus:?} for thread {tid}: {e}"));
            }
        }
    }
    Ok(())
}

/// Take `cpu` offline or bring it online.
pub fn hotplug(cpu: u32, online: bool) -> Result<(), String> {
    write(
        PathBuf::from(format!("/sys/devices/system/cpu/cpu{cpu}/online")),
        if online { "1" } else { "0" },
    )
}

//! cgroup v2 directories for the workload, under `/sys/fs/cgroup`.

use std::path::PathBuf;

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

/// Create cgroup `name` with the cpuset and cpu controllers and `cpus`.
pub fn create(name: &str, cpus: &Option<Vec<u32>>) -> Result<(), String> {
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

//! Snapshots of booted guests (QEMU, the fetched kernel, scx_bpfland): the
//! first VM of a kernel, initramfs and machine saves the guest at the
//! moment its agent waits for a job; later VMs start from there instead of
//! booting, run their own jobs, and read from the host like a booted
//! guest; a snapshot QEMU cannot load is removed and the kernel booted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ktstr::agent::proto::{CgroupJob, ScxState, Work, WorkerSpec};
use ktstr::session::{SchedulerConfig, Session, SessionConfig};
use ktstr::vm::Backend;
use ktstr_vmm::Topology;

fn config(kernel: &Path, bpfland: &Path, snapshots: &Path, worker: &str, n: u32) -> SessionConfig {
    let mut cfg = SessionConfig::new(
        kernel.display().to_string(),
        Topology::new(1, 1, 2, 1).unwrap(),
    );
    cfg.backend = Backend::Qemu;
    cfg.snapshots = Some(snapshots.to_path_buf());
    cfg.scheduler = Some(SchedulerConfig {
        binary: bpfland.to_path_buf(),
        args: vec![],
    });
    cfg.cgroups = vec![CgroupJob {
        name: "work".into(),
        cpus: None,
        workers: vec![WorkerSpec::new(worker, n, Work::Spin)],
        weight: None,
        cpu_max: None,
    }];
    cfg.duration = Duration::from_secs(2);
    cfg
}

/// The saved snapshots' state files.
fn snapshots(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'));
    v.into_iter().map(|p| p.join("state")).collect()
}

/// Run `cfg` to its end; whether it started from a snapshot.
fn run_through(cfg: &SessionConfig, worker: &str) -> bool {
    let s = Session::start(cfg).unwrap_or_else(|e| panic!("{e:#}"));
    let restored = s.phases.restored;
    let fin = s.finish().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        fin.workers
            .iter()
            .all(|w| w.name == worker && w.iterations > 0),
        "{:?}",
        fin.workers
    );
    restored
}

#[test]
fn later_vms_start_from_the_snapshot_of_the_first() {
    const TEST: &str = "later_vms_start_from_the_snapshot_of_the_first";
    let Some(kernel) = ktstr_tests::qemu_kernel_or_skip(TEST) else {
        return;
    };
    let Some(bpfland) = ktstr_tests::bpfland_or_skip(TEST) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // The first VM boots the kernel and saves it.
    assert!(!run_through(
        &config(&kernel, &bpfland, dir, "ktstr-first", 2),
        "ktstr-first"
    ));
    let saved = snapshots(dir);
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(saved[0].is_file());

    // The second starts from it with a job of its own (other workers: the
    // job is not the snapshot's), and the host reads it as a booted guest.
    let cfg = config(&kernel, &bpfland, dir, "ktstr-second", 3);
    let mut s = Session::start(&cfg).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(s.phases.restored, "{:?}", s.phases);
    assert_eq!(s.nr_cpus, 2);
    assert!(s.attached.is_some());
    assert_eq!(s.sched_ext.state, ScxState::Enabled);
    let pids: Vec<i32> = s.workers.iter().map(|w| w.pid).collect();
    assert_eq!(pids.len(), 3, "{:?}", s.workers);
    std::thread::sleep(Duration::from_millis(300));
    let (report, _) = s.capture(None).unwrap_or_else(|e| panic!("{e:#}"));
    for pid in &pids {
        let task = report.tasks.iter().find(|t| t.pid == *pid);
        assert!(
            task.is_some_and(|t| t.comm == "ktstr-second"),
            "worker {pid} in guest memory: {task:?}"
        );
    }
    assert!(report.scheduler.attached);
    let console = s.console();
    assert!(
        console.contains("Linux version") && console.contains("[ktstr] restored from the snapshot"),
        "{console}"
    );
    let fin = s.finish().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        fin.workers.iter().all(|w| w.iterations > 0),
        "{:?}",
        fin.workers
    );
    assert_eq!(snapshots(dir), saved, "nothing new saved");

    // A snapshot QEMU cannot load: removed, the kernel booted, and a good
    // one saved in its place.
    let garbage = vec![0x5a; 1 << 20];
    std::fs::write(&saved[0], &garbage).unwrap();
    let cfg = config(&kernel, &bpfland, dir, "ktstr-third", 1);
    assert!(!run_through(&cfg, "ktstr-third"));
    let again = snapshots(dir);
    assert_eq!(again, saved, "saved again under the same key");
    assert_ne!(std::fs::read(&again[0]).unwrap(), garbage);
    ktstr_tests::assert_no_vm_left_behind();
}

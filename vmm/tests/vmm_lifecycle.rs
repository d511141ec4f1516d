//! A VM leaves no thread or file descriptor behind. Alone in its test
//! binary so that nothing else opens fds or threads meanwhile.

use std::time::Duration;

use ktstr_tests::{Need, skip};
use ktstr_vmm::{ExitReason, Topology, Vm, VmConfig};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

#[test]
fn no_thread_or_fd_left_behind() {
    if let Err(e) = std::fs::File::open("/dev/kvm") {
        skip(
            "no_thread_or_fd_left_behind",
            Need::HwVirt,
            &format!("/dev/kvm: {e}"),
        );
        return;
    }
    let topo: Topology = "1n2l2c1t".parse().unwrap();
    // One VM first, so lazily created process-wide state is not counted.
    drop(Vm::boot(VmConfig::code(topo, &[0xeb, 0xfe])).unwrap());
    let (fds, tasks) = (count("/proc/self/fd"), count("/proc/self/task"));
    for round in 0..3 {
        let vm = Vm::boot(VmConfig::code(topo, &[0xeb, 0xfe])).unwrap();
        // KVM may add a worker of its own to the process (e.g. the NX huge
        // page recovery task); it goes with the VM fd.
        // A new thread takes its name once it runs: poll, bounded.
        let vcpus = || {
            thread_names()
                .iter()
                .filter(|n| n.starts_with("vcpu"))
                .count()
        };
        let t = std::time::Instant::now();
        while vcpus() < 4 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(vcpus(), 4, "one thread per vCPU: {:?}", thread_names());
        assert!(count("/proc/self/fd") > fds + 4, "KVM, VM and vCPU fds");
        let (report, ()) = vm.freeze(|_| ()).unwrap();
        assert!(!report.degraded());
        match round {
            0 => assert_eq!(vm.stop(), ExitReason::HostRequest),
            1 => assert_eq!(vm.wait(Duration::from_millis(100)), ExitReason::Timeout),
            _ => {} // dropped while running
        }
        drop(vm);
        assert_eq!(count("/proc/self/fd"), fds, "round {round}: fds left open");
        assert_eq!(
            count("/proc/self/task"),
            tasks,
            "round {round}: threads left"
        );
    }
}
